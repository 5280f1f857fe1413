//! The testkit passes for LocalTransport, and catches broken transports: each
//! deliberately faulty wrapper below must fail exactly the check it violates.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald_transport::testkit::{
    Binding, ContractConfig, TransportHarness, check_integrity, check_ordering, check_shutdown,
    check_unknown_path, run_contract,
};
use herald_transport::{BoxFuture, DeadLetters, LocalTransport, MessageTransport, TransportError};
use herald_wire::Envelope;

/// What the faulty wrapper does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Swaps every 7th message with the one after it.
    Reorder,
    /// Silently loses every 50th message.
    Lose,
    /// Cuts the last payload byte.
    Truncate,
    /// Keeps accepting messages after shutdown.
    IgnoreShutdown,
    /// Drops messages to unregistered paths without a trace.
    BlackHole,
}

#[derive(Debug)]
struct Faulty {
    local: LocalTransport,
    fault: Fault,
    count: AtomicU64,
    held: Mutex<Option<Envelope>>,
    closed: AtomicBool,
}

impl MessageTransport for Faulty {
    fn deliver(&self, mut envelope: Envelope) -> Result<(), TransportError> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        match self.fault {
            Fault::None => {}
            Fault::Reorder => {
                let mut held = self.held.lock().unwrap();
                if let Some(prev) = held.take() {
                    self.local.deliver(envelope)?;
                    return self.local.deliver(prev);
                }
                if n % 7 == 6 {
                    *held = Some(envelope);
                    return Ok(());
                }
            }
            Fault::Lose if n % 50 == 49 => return Ok(()),
            Fault::Lose => {}
            Fault::Truncate => {
                let len = envelope.payload.len();
                if len > 0 {
                    envelope.payload = envelope.payload.slice(..len - 1);
                }
            }
            Fault::IgnoreShutdown if self.closed.load(Ordering::SeqCst) => return Ok(()),
            Fault::IgnoreShutdown => {}
            Fault::BlackHole => {
                let path = herald_transport::target_path(&envelope.target).unwrap_or("");
                if !self.local.is_registered(path) {
                    return Ok(());
                }
            }
        }
        self.local.deliver(envelope)
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.closed.store(true, Ordering::SeqCst);
        self.local.shutdown()
    }

    fn dead_letters(&self) -> Option<&DeadLetters> {
        Some(self.local.dead_letters())
    }
}

struct Harness {
    transport: Arc<Faulty>,
}

impl Harness {
    fn new(fault: Fault) -> Self {
        Self {
            transport: Arc::new(Faulty {
                local: LocalTransport::new(),
                fault,
                count: AtomicU64::new(0),
                held: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        }
    }
}

impl TransportHarness for Harness {
    fn transport(&self) -> Arc<dyn MessageTransport> {
        self.transport.clone()
    }
    fn address(&self, path: &str) -> String {
        self.transport.local.address_of(path)
    }
    async fn bind(&mut self, path: &str) -> Result<Binding, TransportError> {
        let inbox = self.transport.local.register_unbounded(path)?;
        Ok(Binding {
            address: self.transport.local.address_of(path),
            inbox,
        })
    }
}

/// Short bounds: the faulty cases fail by timing out on a message that never comes.
fn config() -> ContractConfig {
    ContractConfig {
        messages_per_sender: 300,
        senders: 3,
        timeout: Duration::from_secs(2),
        settle: Duration::from_millis(300),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_transport_passes_the_contract() {
    run_contract(
        || async { Harness::new(Fault::None) },
        &ContractConfig::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn local_transport_passes_the_contract_on_a_current_thread_runtime() {
    run_contract(
        || async { Harness::new(Fault::None) },
        &ContractConfig::quick(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn reordering_is_caught() {
    let err = check_ordering(&mut Harness::new(Fault::Reorder), &config())
        .await
        .unwrap_err();
    assert_eq!(err.check, "ordering");
    let err = run_contract(|| async { Harness::new(Fault::Reorder) }, &config())
        .await
        .unwrap_err();
    assert_eq!(err.check, "ordering", "{err}");
}

#[tokio::test]
async fn message_loss_is_caught() {
    let err = check_ordering(&mut Harness::new(Fault::Lose), &config())
        .await
        .unwrap_err();
    assert_eq!(err.check, "ordering");
    assert!(err.message.contains("expected message"), "{err}");
}

#[tokio::test]
async fn corruption_is_caught() {
    let err = check_integrity(&mut Harness::new(Fault::Truncate), &config())
        .await
        .unwrap_err();
    assert_eq!(err.check, "integrity");
    assert!(err.to_string().contains("changed in transit"), "{err}");
}

#[tokio::test]
async fn accepting_messages_after_shutdown_is_caught() {
    let err = check_shutdown(&mut Harness::new(Fault::IgnoreShutdown), &config())
        .await
        .unwrap_err();
    assert_eq!(err.check, "shutdown");
    assert!(err.message.contains("returned Ok"), "{err}");
}

#[tokio::test]
async fn silently_dropping_unknown_paths_is_caught() {
    let err = check_unknown_path(&mut Harness::new(Fault::BlackHole), &config())
        .await
        .unwrap_err();
    assert_eq!(err.check, "unknown_path");
    assert!(err.message.contains("neither delivered"), "{err}");
}

#[tokio::test]
async fn each_check_passes_individually_for_local_transport() {
    let c = ContractConfig::quick();
    check_integrity(&mut Harness::new(Fault::None), &c)
        .await
        .unwrap();
    check_ordering(&mut Harness::new(Fault::None), &c)
        .await
        .unwrap();
    check_unknown_path(&mut Harness::new(Fault::None), &c)
        .await
        .unwrap();
    check_shutdown(&mut Harness::new(Fault::None), &c)
        .await
        .unwrap();
}
