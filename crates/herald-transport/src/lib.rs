//! # herald-transport
//!
//! How Herald moves messages ([`herald_wire::Envelope`]s) to actor addresses.
//!
//! * [`MessageTransport`]: the small, object-safe extension point every transport
//!   implements (`deliver` an envelope, `shutdown`), with a [`testkit`] that checks any
//!   implementation against the contract (ordering per sender/target pair, unknown
//!   paths, shutdown, integrity).
//! * [`LocalTransport`]: in-process routing by actor path with casty's semantics
//!   (buffering for paths not registered yet, dead paths, lazy path factories,
//!   `wait_for_path`) and without its leaks (bounded tombstones and buffers, TTLs).
//! * [`ActorRef`]: a typed handle (address + `Arc<dyn MessageTransport>`) with
//!   `tell` and `ask` (temporary reply path, timeout); messages implement [`Message`].
//! * [`DeadLetters`]: every dropped message with its [`DeadLetterReason`], on a
//!   broadcast stream, with exact counters; one sink can be shared by several
//!   transports.
//! * Networking: [`tcp`] (the TCP transport, casty-v1 and native handshakes, one task
//!   and one bounded queue per peer), [`tls`] (rustls configuration), [`native`] (the
//!   native handshake protocol core, without I/O) and [`RemoteTransport`] (one
//!   `MessageTransport` for a whole node: local paths plus remote peers).
//!
//! The user guide is `docs/transport.md` in the repository.
//!
//! ```
//! use herald_transport::{LocalTransport, MessageTransport, DeadLetterReason};
//! use herald_wire::Envelope;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald_transport::TransportError> {
//! let local = LocalTransport::new();
//! let mut inbox = local.register_channel("/user/echo", 64)?;
//!
//! local.deliver(Envelope::new("casty://herald/user/echo", "casty://herald/me", "demo.Ping", &b"{}"[..]))?;
//! let got = inbox.recv().await.expect("delivered");
//! assert_eq!(got.type_hint, "demo.Ping");
//!
//! // Unregistered paths are dead for a while: messages to them become dead letters.
//! local.unregister("/user/echo");
//! local.deliver(Envelope::new("casty://herald/user/echo", "", "demo.Ping", &b"{}"[..]))?;
//! assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 1);
//! # Ok(())
//! # }
//! ```

pub mod actor_ref;
pub mod dead_letter;
pub mod error;
pub mod local;
pub mod native;
pub mod remote;
pub mod tcp;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod transport;

pub use actor_ref::{ASK_PATH_PREFIX, ActorRef, Message, RawMessage, reply};
pub use dead_letter::{DeadLetter, DeadLetterReason, DeadLetters, UNDECODABLE_KEPT};
pub use error::TransportError;
pub use local::{
    Clock, Handler, LocalConfig, LocalStats, LocalTransport, LocalTransportBuilder, ManualClock,
    PathMatcher, SystemClock,
};
pub use remote::RemoteTransport;
pub use transport::{BoxFuture, LocalEndpoint, MessageTransport, target_path};
