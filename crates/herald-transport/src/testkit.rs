//! A conformance test suite for [`MessageTransport`] implementations.
//!
//! Any transport, in this crate or downstream, can be checked against the
//! [contract](crate::MessageTransport#contract) by implementing [`TransportHarness`]
//! (how to get the transport, how to make a path receive messages) and calling
//! [`run_contract`] from a test. Each check also exists on its own
//! ([`check_integrity`], [`check_ordering`], [`check_unknown_path`],
//! [`check_shutdown`]).
//!
//! The checks need a tokio runtime (multi-threaded or not); the senders of the ordering
//! check run on `spawn_blocking` threads so they really are concurrent. Every wait is
//! bounded by [`ContractConfig::timeout`]; no check asserts anything about timing.
//!
//! ```
//! use std::sync::Arc;
//! use herald_transport::testkit::{run_contract, Binding, ContractConfig, TransportHarness};
//! use herald_transport::{LocalTransport, MessageTransport, TransportError};
//!
//! struct LocalHarness(LocalTransport);
//!
//! impl TransportHarness for LocalHarness {
//!     fn transport(&self) -> Arc<dyn MessageTransport> {
//!         Arc::new(self.0.clone())
//!     }
//!     fn address(&self, path: &str) -> String {
//!         self.0.address_of(path)
//!     }
//!     async fn bind(&mut self, path: &str) -> Result<Binding, TransportError> {
//!         let inbox = self.0.register_unbounded(path)?;
//!         Ok(Binding { address: self.0.address_of(path), inbox })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! run_contract(|| async { LocalHarness(LocalTransport::new()) }, &ContractConfig::quick())
//!     .await
//!     .expect("LocalTransport honours the contract");
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_wire::Envelope;
use tokio::sync::mpsc;

use crate::dead_letter::DeadLetters;
use crate::error::TransportError;
use crate::transport::MessageTransport;

/// What a transport implementation provides so the contract can be checked.
///
/// A harness is created fresh for every check (see [`run_contract`]), so a check may
/// shut the transport down.
pub trait TransportHarness: Send {
    /// The transport under test (the sending side).
    fn transport(&self) -> Arc<dyn MessageTransport>;

    /// The address under which `path` is (or would be) reachable through
    /// [`transport`](Self::transport), whether bound or not.
    fn address(&self, path: &str) -> String;

    /// Makes `path` receive messages sent through [`transport`](Self::transport);
    /// returns its address and the receiver of the delivered envelopes.
    fn bind(&mut self, path: &str) -> impl Future<Output = Result<Binding, TransportError>> + Send;

    /// The dead-letter sink where drops of messages to unknown paths are reported, if
    /// any. Defaults to the transport's own [`MessageTransport::dead_letters`]; a
    /// network harness returns the receiving node's sink.
    fn dead_letters(&self) -> Option<DeadLetters> {
        self.transport().dead_letters().cloned()
    }
}

/// A path made to receive messages by [`TransportHarness::bind`].
#[derive(Debug)]
pub struct Binding {
    /// The address to use as envelope target.
    pub address: String,
    /// Every envelope delivered to the path.
    pub inbox: mpsc::UnboundedReceiver<Envelope>,
}

/// Sizes and bounds of the checks.
#[derive(Debug, Clone)]
pub struct ContractConfig {
    /// Messages per sender in the ordering check.
    pub messages_per_sender: usize,
    /// Concurrent senders in the ordering check.
    pub senders: usize,
    /// Upper bound of every wait (a message to arrive, shutdown to complete, ...).
    pub timeout: Duration,
    /// How long the unknown-path check waits for a message to be delivered or reported
    /// as a dead letter after the path is bound.
    pub settle: Duration,
}

impl Default for ContractConfig {
    fn default() -> Self {
        Self {
            messages_per_sender: 2_000,
            senders: 4,
            timeout: Duration::from_secs(30),
            settle: Duration::from_secs(5),
        }
    }
}

impl ContractConfig {
    /// Fewer messages, for doctests and quick runs.
    pub fn quick() -> Self {
        Self {
            messages_per_sender: 200,
            senders: 3,
            ..Self::default()
        }
    }
}

/// A broken rule of the contract: which check, and what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractViolation {
    /// The check's name (`integrity`, `ordering`, `unknown_path`, `shutdown`).
    pub check: &'static str,
    /// What went wrong, with the values seen.
    pub message: String,
}

impl fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transport contract check `{}` failed: {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for ContractViolation {}

fn violation(check: &'static str, message: impl Into<String>) -> ContractViolation {
    ContractViolation {
        check,
        message: message.into(),
    }
}

/// Runs every check, each on a fresh harness from `make`, and stops at the first
/// violation. The checks run in this order: integrity, ordering, unknown path, shutdown.
pub async fn run_contract<H, F, Fut>(
    mut make: F,
    config: &ContractConfig,
) -> Result<(), ContractViolation>
where
    H: TransportHarness,
    F: FnMut() -> Fut,
    Fut: Future<Output = H>,
{
    let mut h = make().await;
    check_integrity(&mut h, config).await?;
    finish(h, config).await;
    let mut h = make().await;
    check_ordering(&mut h, config).await?;
    finish(h, config).await;
    let mut h = make().await;
    check_unknown_path(&mut h, config).await?;
    finish(h, config).await;
    let mut h = make().await;
    check_shutdown(&mut h, config).await?;
    tracing::debug!("transport contract: all checks passed");
    Ok(())
}

/// Shuts a harness's transport down after a check, bounded by the timeout.
async fn finish<H: TransportHarness>(h: H, config: &ContractConfig) {
    let _ = tokio::time::timeout(config.timeout, h.transport().shutdown()).await;
}

async fn bind<H: TransportHarness>(
    h: &mut H,
    check: &'static str,
    path: &str,
) -> Result<Binding, ContractViolation> {
    h.bind(path)
        .await
        .map_err(|e| violation(check, format!("the harness could not bind {path:?}: {e}")))
}

async fn recv(
    check: &'static str,
    inbox: &mut mpsc::UnboundedReceiver<Envelope>,
    timeout: Duration,
    what: &str,
) -> Result<Envelope, ContractViolation> {
    match tokio::time::timeout(timeout, inbox.recv()).await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(violation(
            check,
            format!("the inbox closed while waiting for {what}"),
        )),
        Err(_) => Err(violation(
            check,
            format!("{what} did not arrive within {timeout:?}"),
        )),
    }
}

/// Integrity: envelopes arrive with `target`, `sender`, `type_hint` and payload
/// unchanged (empty, binary, 64 KiB and non-ASCII cases), one per delivery.
pub async fn check_integrity<H: TransportHarness>(
    h: &mut H,
    config: &ContractConfig,
) -> Result<(), ContractViolation> {
    const CHECK: &str = "integrity";
    let mut b = bind(h, CHECK, "/contract/integrity").await?;
    let transport = h.transport();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let cases: Vec<Envelope> = vec![
        Envelope::new(b.address.clone(), "", "contract.Empty", Bytes::new()),
        Envelope::new(
            b.address.clone(),
            "casty://contract@127.0.0.1:1/sender",
            "contract.Binary",
            all_bytes,
        ),
        Envelope::new(
            b.address.clone(),
            "casty://contract/snd",
            "contract.Big",
            big,
        ),
        Envelope::new(
            b.address.clone(),
            "casty://contract/zoë",
            "contract.Ünïcødé💡",
            "Zoë 💡 \u{0}".as_bytes().to_vec(),
        ),
    ];
    for (i, sent) in cases.into_iter().enumerate() {
        transport.deliver(sent.clone()).map_err(|e| {
            violation(
                CHECK,
                format!("deliver of case {i} to a bound path failed: {e}"),
            )
        })?;
        let got = recv(CHECK, &mut b.inbox, config.timeout, &format!("case {i}")).await?;
        if got.target != sent.target
            || got.sender != sent.sender
            || got.type_hint != sent.type_hint
            || got.payload != sent.payload
        {
            return Err(violation(
                CHECK,
                format!("case {i} changed in transit: sent {sent:?}, got {got:?}"),
            ));
        }
    }
    if let Ok(extra) = b.inbox.try_recv() {
        return Err(violation(
            CHECK,
            format!("an unexpected extra message arrived: {extra:?}"),
        ));
    }
    Ok(())
}

/// Ordering: `senders` concurrent callers each deliver `messages_per_sender` numbered
/// messages to one target, and one caller alternates between two targets; every
/// sender's messages arrive at each target in the order they were delivered, none lost
/// or duplicated.
pub async fn check_ordering<H: TransportHarness>(
    h: &mut H,
    config: &ContractConfig,
) -> Result<(), ContractViolation> {
    const CHECK: &str = "ordering";
    let mut a = bind(h, CHECK, "/contract/order-a").await?;
    let mut b = bind(h, CHECK, "/contract/order-b").await?;
    let n = config.messages_per_sender;

    // Concurrent senders to one target.
    let mut tasks = Vec::new();
    for s in 0..config.senders {
        let transport = h.transport();
        let target = a.address.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let sender = format!("casty://contract/sender-{s}");
            for seq in 0..n as u64 {
                let env = Envelope::new(
                    target.clone(),
                    sender.clone(),
                    "contract.Seq",
                    seq.to_be_bytes().to_vec(),
                );
                transport
                    .deliver(env)
                    .map_err(|e| format!("{sender}: deliver #{seq} failed: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(violation(CHECK, e)),
            Err(e) => return Err(violation(CHECK, format!("a sender task failed: {e}"))),
        }
    }
    let mut next: HashMap<String, u64> = HashMap::new();
    for i in 0..n * config.senders {
        let env = recv(
            CHECK,
            &mut a.inbox,
            config.timeout,
            &format!("message #{i}"),
        )
        .await?;
        let seq = decode_seq(CHECK, &env)?;
        let expected = next.entry(env.sender.clone()).or_insert(0);
        if seq != *expected {
            return Err(violation(
                CHECK,
                format!(
                    "from {}: expected message #{expected}, got #{seq} (reordered, lost or duplicated)",
                    env.sender
                ),
            ));
        }
        *expected += 1;
    }

    // One sender alternating between two targets.
    let transport = h.transport();
    for seq in 0..n as u64 {
        for addr in [&a.address, &b.address] {
            let env = Envelope::new(
                addr.clone(),
                "casty://contract/alternating",
                "contract.Seq",
                seq.to_be_bytes().to_vec(),
            );
            transport
                .deliver(env)
                .map_err(|e| violation(CHECK, format!("deliver #{seq} to {addr} failed: {e}")))?;
        }
    }
    for (name, inbox) in [("a", &mut a.inbox), ("b", &mut b.inbox)] {
        for expected in 0..n as u64 {
            let env = recv(
                CHECK,
                inbox,
                config.timeout,
                &format!("alternating message #{expected} at target {name}"),
            )
            .await?;
            let seq = decode_seq(CHECK, &env)?;
            if seq != expected {
                return Err(violation(
                    CHECK,
                    format!(
                        "at target {name}: expected alternating message #{expected}, got #{seq}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn decode_seq(check: &'static str, env: &Envelope) -> Result<u64, ContractViolation> {
    let bytes: [u8; 8] = env.payload[..].try_into().map_err(|_| {
        violation(
            check,
            format!(
                "payload of {} bytes is not a sequence number",
                env.payload.len()
            ),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Unknown paths: a message to a path nobody bound must not panic, block or disturb
/// other paths, and must be accounted for: refused with an error, or delivered once the
/// path is bound, or reported as a dead letter.
pub async fn check_unknown_path<H: TransportHarness>(
    h: &mut H,
    config: &ContractConfig,
) -> Result<(), ContractViolation> {
    const CHECK: &str = "unknown_path";
    let mut known = bind(h, CHECK, "/contract/known").await?;
    let transport = h.transport();
    let unknown_path = "/contract/unknown";
    let unknown = h.address(unknown_path);
    let dead = h.dead_letters();
    let dead_before = dead.as_ref().map_or(0, DeadLetters::total);

    let outcome = transport.deliver(Envelope::new(
        unknown.clone(),
        "casty://contract/s",
        "contract.Lost",
        &b"lost?"[..],
    ));

    // Other paths keep working.
    transport
        .deliver(Envelope::new(
            known.address.clone(),
            "casty://contract/s",
            "contract.Known",
            &b"ok"[..],
        ))
        .map_err(|e| {
            violation(
                CHECK,
                format!("deliver to a bound path failed after a message to an unknown path: {e}"),
            )
        })?;
    let got = recv(
        CHECK,
        &mut known.inbox,
        config.timeout,
        "the message to the bound path",
    )
    .await?;
    if got.type_hint != "contract.Known" {
        return Err(violation(
            CHECK,
            format!("the bound path received a message meant for the unknown path: {got:?}"),
        ));
    }

    if outcome.is_err() {
        return Ok(());
    }
    // Accepted: it must be delivered when the path appears, or be a dead letter.
    let mut late = bind(h, CHECK, unknown_path).await?;
    let deadline = tokio::time::Instant::now() + config.settle;
    loop {
        match late.inbox.try_recv() {
            Ok(env) if env.type_hint == "contract.Lost" => return Ok(()),
            Ok(other) => {
                return Err(violation(
                    CHECK,
                    format!("the late-bound path received an unexpected message: {other:?}"),
                ));
            }
            Err(_) => {}
        }
        if dead.as_ref().map_or(0, DeadLetters::total) > dead_before {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(violation(
                CHECK,
                format!(
                    "a message to the unknown address {unknown} was accepted, but it was neither delivered once the path was bound nor reported as a dead letter within {:?}",
                    config.settle
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Shutdown: the future completes within the timeout, a second shutdown completes too,
/// and afterwards `deliver` fails with [`TransportError::Shutdown`] and nothing more
/// arrives.
pub async fn check_shutdown<H: TransportHarness>(
    h: &mut H,
    config: &ContractConfig,
) -> Result<(), ContractViolation> {
    const CHECK: &str = "shutdown";
    let mut b = bind(h, CHECK, "/contract/shutdown").await?;
    let transport = h.transport();
    transport
        .deliver(Envelope::new(
            b.address.clone(),
            "",
            "contract.Before",
            &b"1"[..],
        ))
        .map_err(|e| violation(CHECK, format!("deliver before shutdown failed: {e}")))?;
    recv(
        CHECK,
        &mut b.inbox,
        config.timeout,
        "the message sent before shutdown",
    )
    .await?;

    if tokio::time::timeout(config.timeout, transport.shutdown())
        .await
        .is_err()
    {
        return Err(violation(
            CHECK,
            format!("shutdown did not complete within {:?}", config.timeout),
        ));
    }
    if tokio::time::timeout(config.timeout, transport.shutdown())
        .await
        .is_err()
    {
        return Err(violation(
            CHECK,
            format!(
                "a second shutdown did not complete within {:?}",
                config.timeout
            ),
        ));
    }
    match transport.deliver(Envelope::new(
        b.address.clone(),
        "",
        "contract.After",
        &b"2"[..],
    )) {
        Err(TransportError::Shutdown) => {}
        Ok(()) => {
            return Err(violation(CHECK, "deliver after shutdown returned Ok"));
        }
        Err(other) => {
            return Err(violation(
                CHECK,
                format!(
                    "deliver after shutdown must fail with TransportError::Shutdown, got: {other}"
                ),
            ));
        }
    }
    tokio::task::yield_now().await;
    if let Ok(env) = b.inbox.try_recv() {
        return Err(violation(
            CHECK,
            format!("a message arrived after shutdown: {env:?}"),
        ));
    }
    Ok(())
}
