//! The [`MessageTransport`] trait: the extension point of Herald's messaging layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald_wire::Envelope;

use crate::dead_letter::DeadLetters;
use crate::error::TransportError;
use crate::local::LocalTransport;

/// A boxed, `Send` future, as returned by [`MessageTransport::shutdown`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Delivers messages ([`Envelope`]s) to actor addresses.
///
/// This is the one trait a messaging framework implements to plug a new way of moving
/// messages under Herald (in-process, TCP, a test double, a simulator, ...). It is
/// small on purpose (in the spirit of tower's `Service`), object-safe, and used as
/// `Arc<dyn MessageTransport>` by [`ActorRef`](crate::ActorRef) and the layers above.
///
/// # Contract
///
/// Implementations must uphold these rules; [`testkit::run_contract`](crate::testkit::run_contract)
/// checks them for any implementation:
///
/// 1. **Non-blocking.** [`deliver`](Self::deliver) enqueues or hands the message over
///    and returns; it never waits for the network or for the receiver.
/// 2. **Ordering per sender/target pair.** Messages delivered one after the other by the
///    same caller (same `sender`) to the same `target` arrive in that order. Nothing is
///    promised across different targets or concurrent callers.
/// 3. **Integrity.** `target`, `sender`, `type_hint` and the payload bytes arrive
///    unchanged.
/// 4. **Accounting.** `Ok(())` means the message was accepted: it will be delivered, or
///    reported as a dead letter (if the transport has a [`DeadLetters`] sink) with a
///    reason. `Err` means it was refused right away and not delivered; a message to an
///    unknown address must not panic, block, or disturb traffic to other addresses.
/// 5. **Shutdown.** After the future returned by [`shutdown`](Self::shutdown)
///    completes, `deliver` returns [`TransportError::Shutdown`] and nothing more is
///    delivered. Calling `shutdown` again is harmless.
///
/// # Example: a transport that forwards to another one and counts messages
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use herald_transport::{BoxFuture, LocalTransport, MessageTransport, TransportError};
/// use herald_wire::Envelope;
///
/// struct Counting {
///     inner: Arc<dyn MessageTransport>,
///     sent: AtomicU64,
/// }
///
/// impl MessageTransport for Counting {
///     fn deliver(&self, envelope: Envelope) -> Result<(), TransportError> {
///         self.sent.fetch_add(1, Ordering::Relaxed);
///         self.inner.deliver(envelope)
///     }
///     fn shutdown(&self) -> BoxFuture<'static, ()> {
///         self.inner.shutdown()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), TransportError> {
/// let local = LocalTransport::new();
/// let mut inbox = local.register_channel("/greeter", 16)?;
/// let transport: Arc<dyn MessageTransport> = Arc::new(Counting {
///     inner: Arc::new(local.clone()),
///     sent: AtomicU64::new(0),
/// });
/// transport.deliver(Envelope::new("casty://herald/greeter", "", "demo.Hello", &b"{}"[..]))?;
/// assert_eq!(inbox.recv().await.map(|e| e.type_hint), Some("demo.Hello".into()));
/// # Ok(())
/// # }
/// ```
pub trait MessageTransport: Send + Sync {
    /// Hands `envelope` to the transport for delivery to `envelope.target`.
    ///
    /// See the [trait documentation](MessageTransport#contract) for the rules.
    fn deliver(&self, envelope: Envelope) -> Result<(), TransportError>;

    /// Stops the transport: refuses new messages, releases handlers and connections.
    ///
    /// The returned future completes when the transport is fully stopped (for network
    /// transports: connections flushed and closed). It does not borrow `self`, so it can
    /// be spawned.
    fn shutdown(&self) -> BoxFuture<'static, ()>;

    /// The dead-letter sink of this transport, if it has one.
    fn dead_letters(&self) -> Option<&DeadLetters> {
        None
    }

    /// Where replies to this node can be received: the in-process transport that owns
    /// this node's paths and the URI prefix under which they are reachable.
    ///
    /// [`ActorRef::ask`](crate::ActorRef::ask) uses it to register a temporary reply
    /// path. `None` (the default) means this transport cannot receive replies.
    fn local_endpoint(&self) -> Option<LocalEndpoint> {
        None
    }
}

/// The in-process side of a node: where its actors' paths live, and the address
/// prefix others use to reach them.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    /// The transport holding the node's paths.
    pub transport: LocalTransport,
    /// The URI prefix without trailing `/`, for example `casty://herald` (local form)
    /// or `casty://sys@127.0.0.1:25520` (reachable from other nodes). A path `/p` is
    /// reachable at `format!("{root}{path}")`.
    pub root: String,
}

impl LocalEndpoint {
    /// The full address of `path` (which starts with `/`) on this endpoint.
    pub fn address_of(&self, path: &str) -> String {
        let mut s = String::with_capacity(self.root.len() + path.len() + 1);
        s.push_str(&self.root);
        if !path.starts_with('/') {
            s.push('/');
        }
        s.push_str(path);
        s
    }
}

impl<T: MessageTransport + ?Sized> MessageTransport for Arc<T> {
    fn deliver(&self, envelope: Envelope) -> Result<(), TransportError> {
        (**self).deliver(envelope)
    }
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        (**self).shutdown()
    }
    fn dead_letters(&self) -> Option<&DeadLetters> {
        (**self).dead_letters()
    }
    fn local_endpoint(&self) -> Option<LocalEndpoint> {
        (**self).local_endpoint()
    }
}

/// Extracts the actor path from a target address, without allocating.
///
/// * `casty://system@host:port/a/b` and `casty://system/a/b` give `/a/b` (the system,
///   host and port are ignored, as casty's local routing does);
/// * any other `scheme://authority/path` is handled the same way;
/// * a string that already starts with `/` is a path.
///
/// Returns `None` for anything else (no scheme, no path part). The root path `/` is
/// returned for `casty://sys@host:1/`.
///
/// ```
/// use herald_transport::target_path;
/// assert_eq!(target_path("casty://sys@127.0.0.1:25520/user/echo"), Some("/user/echo"));
/// assert_eq!(target_path("casty://sys/_ask/ab12"), Some("/_ask/ab12"));
/// assert_eq!(target_path("/local"), Some("/local"));
/// assert_eq!(target_path("no-scheme"), None);
/// ```
pub fn target_path(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let (_, rest) = target.split_once("://")?;
    let slash = rest.find('/')?;
    Some(&rest[slash..])
}
