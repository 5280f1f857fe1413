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
use herald_wire::{Envelope, SharedStr};
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
    let mut next: HashMap<SharedStr, u64> = HashMap::new();
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

/// Entry point of the `local_transport` `cargo fuzz` target (also replayed over its seed
/// corpus by `tests/local_fuzz_corpus.rs`).
///
/// Reads `data` as a script of operations on a small-limit [`LocalTransport`] with a
/// [`ManualClock`]: deliveries to arbitrary target strings and to a few known paths,
/// register (bounded, unbounded and re-entrant callback handlers), unregister with
/// arbitrary paths, dropped receivers, clock moves, sweeps and shutdown. It panics only
/// if a rule breaks: state over its bounds, or an accepted message that is neither
/// received exactly once, in order, at its own path, nor reported exactly once as a dead
/// letter.
///
/// [`LocalTransport`]: crate::LocalTransport
/// [`ManualClock`]: crate::ManualClock
pub fn fuzz_local_transport(data: &[u8]) {
    fuzz::run(data);
}

mod fuzz {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use herald_wire::Envelope;
    use tokio::sync::mpsc;

    use crate::{DeadLetters, LocalTransport, ManualClock, MessageTransport, target_path};

    const PATHS: [&str; 4] = ["/a", "/b/c", "/_ask/00ff", "/"];
    const PER_PATH: usize = 4;
    const TOTAL: usize = 6;
    const MAX_TOMBSTONES: usize = 3;

    enum Inbox {
        Bounded(mpsc::Receiver<Envelope>),
        Unbounded(mpsc::UnboundedReceiver<Envelope>),
        Callback(Arc<Mutex<Vec<Envelope>>>),
    }

    impl Inbox {
        fn drain(&mut self, out: &mut Vec<Envelope>) {
            match self {
                Inbox::Bounded(rx) => {
                    while let Ok(e) = rx.try_recv() {
                        out.push(e);
                    }
                }
                Inbox::Unbounded(rx) => {
                    while let Ok(e) = rx.try_recv() {
                        out.push(e);
                    }
                }
                Inbox::Callback(seen) => {
                    if let Ok(mut v) = seen.lock() {
                        out.append(&mut v);
                    }
                }
            }
        }
    }

    struct Cursor<'a>(&'a [u8]);

    impl Cursor<'_> {
        fn byte(&mut self) -> Option<u8> {
            let (b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(*b)
        }
        fn text(&mut self) -> String {
            let len = usize::from(self.byte().unwrap_or(0) % 48).min(self.0.len());
            let (t, rest) = self.0.split_at(len);
            self.0 = rest;
            String::from_utf8_lossy(t).into_owned()
        }
    }

    fn id_of(e: &Envelope) -> Option<u64> {
        e.payload.get(..8)?.try_into().ok().map(u64::from_be_bytes)
    }

    pub(super) fn run(data: &[u8]) {
        let clock = ManualClock::new();
        // At most one dead letter per input byte: the stream never lags.
        let sink = DeadLetters::new(data.len() + 16);
        let mut letters = sink.subscribe();
        let local = LocalTransport::builder()
            .clock(clock.clone())
            .dead_letters(sink.clone())
            .max_pending_per_path(PER_PATH)
            .max_pending_total(TOTAL)
            .pending_ttl(Duration::from_secs(10))
            .tombstone_ttl(Duration::from_secs(7))
            .max_tombstones(MAX_TOMBSTONES)
            .build();
        let mut inboxes: HashMap<String, Inbox> = HashMap::new();
        let mut accepted: BTreeMap<u64, String> = BTreeMap::new();
        let mut received: Vec<Envelope> = Vec::new();
        let mut next_id = 0u64;
        let mut cur = Cursor(data);

        while let Some(op) = cur.byte() {
            let arg = cur.byte().unwrap_or(0);
            let known = PATHS[usize::from(arg) % PATHS.len()];
            match op % 9 {
                0 | 1 => {
                    let target = if op % 9 == 0 {
                        cur.text()
                    } else {
                        format!("casty://fuzz@127.0.0.1:1{known}")
                    };
                    let id = next_id;
                    next_id += 1;
                    let env = Envelope::new(target.clone(), "s", "f.M", id.to_be_bytes().to_vec());
                    match local.deliver(env) {
                        Ok(()) => {
                            let Some(path) = target_path(&target) else {
                                panic!("accepted a target without a path: {target:?}");
                            };
                            accepted.insert(id, path.to_string());
                        }
                        Err(_) => {
                            // Refused messages are dead letters too (never received).
                            accepted.insert(id, String::new());
                        }
                    }
                }
                2 => {
                    if let Ok(rx) = local.register_unbounded(known) {
                        inboxes.insert(known.to_string(), Inbox::Unbounded(rx));
                    }
                }
                3 => {
                    if let Ok(rx) = local.register_channel(known, 2) {
                        inboxes.insert(known.to_string(), Inbox::Bounded(rx));
                    }
                }
                4 => {
                    let seen = Arc::new(Mutex::new(Vec::new()));
                    let s = seen.clone();
                    let registered = local.register_fn(known, move |e| {
                        if let Ok(mut v) = s.lock() {
                            v.push(e);
                        }
                    });
                    if registered.is_ok() {
                        inboxes.insert(known.to_string(), Inbox::Callback(seen));
                    }
                }
                5 => {
                    let path = if arg % 2 == 0 {
                        known.to_string()
                    } else {
                        cur.text()
                    };
                    local.unregister(&path);
                }
                6 => {
                    if let Some(mut inbox) = inboxes.remove(known) {
                        if matches!(inbox, Inbox::Callback(_)) {
                            // A callback has no receiver to drop: stop it instead.
                            local.unregister(known);
                        }
                        inbox.drain(&mut received);
                    }
                }
                7 => clock.advance(Duration::from_secs(u64::from(arg % 16))),
                _ => local.sweep(),
            }
            for inbox in inboxes.values_mut() {
                inbox.drain(&mut received);
            }
            let stats = local.stats();
            assert!(stats.pending_messages <= TOTAL, "{stats:?}");
            assert!(stats.tombstones <= MAX_TOMBSTONES, "{stats:?}");
        }

        local.close();
        for inbox in inboxes.values_mut() {
            inbox.drain(&mut received);
        }

        let mut dead: BTreeMap<u64, ()> = BTreeMap::new();
        while let Ok(letter) = letters.try_recv() {
            let Some(id) = id_of(&letter.envelope) else {
                panic!("dead letter with a foreign payload");
            };
            assert!(
                dead.insert(id, ()).is_none(),
                "message {id} dead-lettered twice"
            );
        }
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut seen: BTreeMap<u64, ()> = BTreeMap::new();
        for e in &received {
            let Some(id) = id_of(e) else {
                panic!("received a foreign payload");
            };
            let Some(path) = accepted.get(&id) else {
                panic!("received message {id} that was never accepted");
            };
            assert_eq!(
                target_path(&e.target),
                Some(path.as_str()),
                "message {id} reached the wrong path"
            );
            assert!(seen.insert(id, ()).is_none(), "message {id} received twice");
            assert!(
                !dead.contains_key(&id),
                "message {id} received and dead-lettered"
            );
            if let Some(prev) = last.insert(path.clone(), id) {
                assert!(prev < id, "path {path}: message {id} after {prev}");
            }
        }
        for id in accepted.keys() {
            assert!(
                seen.contains_key(id) || dead.contains_key(id),
                "message {id} vanished"
            );
        }
    }
}
