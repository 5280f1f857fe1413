//! The backend trait: what the mesh needs from a message broker.
//!
//! A [`Backend`] opens [`Connection`]s; the [`Mesh`](crate::Mesh) handle opens one per
//! instance. A connection speaks AMQP 0-9-1 terms, reduced to what nuropb uses:
//!
//! * [`Connection::declare_exchange`] / [`Connection::declare_queue`] (idempotent;
//!   queues carry their bindings, dead-letter exchange and length bound);
//! * [`Connection::publish`] to an exchange with a routing key; a `mandatory` message
//!   that matches no queue fails with [`MeshError::Unroutable`];
//! * [`Connection::consume`] a queue with a prefetch, optionally exclusive, optionally
//!   auto-ack, as a stream of [`Delivery`]s;
//! * [`Connection::try_lead`], the leadership primitive: a per-service lock that at most
//!   one live connection holds, released when that connection closes or dies;
//! * [`Connection::trim_queue`]: drop the oldest messages of a queue beyond a length,
//!   a bounded number per call (how the mesh's leader keeps a dead-letter queue
//!   bounded without queue arguments, which nuropb's declaration of it does not have).
//!
//! The trait is object safe (`Arc<dyn Backend>`); futures are boxed.
//!
//! A [`Delivery`] is settled **exactly once** by construction: [`Delivery::ack`],
//! [`Delivery::reject`] and [`Delivery::dead_letter`] consume it. Dropping an unsettled
//! delivery hands it back to the backend, which requeues it (like a channel close in
//! AMQP).

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::error::MeshError;
use crate::message::{DL_EXCHANGE, EVENTS_EXCHANGE, Message, RPC_EXCHANGE};

/// A stream of deliveries from one consumer; it ends when the consumer is cancelled
/// or the connection closes.
pub type DeliveryStream = BoxStream<'static, Delivery>;

/// Exchange types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// `*` / `#` pattern match.
    Topic,
    /// Every bound queue.
    Fanout,
}

/// An exchange declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives broker restarts.
    pub durable: bool,
}

/// nuropb's three durable exchanges, with nuropb's exact types.
pub fn nuropb_exchanges() -> [ExchangeSpec; 3] {
    [
        ExchangeSpec {
            name: RPC_EXCHANGE.into(),
            kind: ExchangeKind::Direct,
            durable: true,
        },
        ExchangeSpec {
            name: EVENTS_EXCHANGE.into(),
            kind: ExchangeKind::Topic,
            durable: true,
        },
        ExchangeSpec {
            name: DL_EXCHANGE.into(),
            kind: ExchangeKind::Fanout,
            durable: true,
        },
    ]
}

/// A queue binding: messages published to `exchange` whose routing key matches
/// `routing_key` (a pattern for topic exchanges) go to the queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Exchange name.
    pub exchange: String,
    /// Routing key or topic pattern.
    pub routing_key: String,
}

impl Binding {
    /// A binding.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }
}

/// A queue declaration (idempotent) with its bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// Name.
    pub name: String,
    /// Survives broker restarts.
    pub durable: bool,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// `x-dead-letter-exchange`: where rejected and expired messages go.
    pub dead_letter_exchange: Option<String>,
    /// `x-max-length`: oldest messages are dropped (dead-lettered if a DLX is set)
    /// beyond this many.
    pub max_length: Option<usize>,
    /// Bindings to create (idempotently).
    pub bindings: Vec<Binding>,
}

impl QueueSpec {
    /// nuropb's service queue: durable, DLX = `nuropb-dl-exchange`, bound to the RPC
    /// exchange with the service name and to the events exchange with each pattern.
    pub fn service(service: &str, event_patterns: &[String]) -> Self {
        let mut bindings = vec![Binding::new(RPC_EXCHANGE, service)];
        bindings.extend(
            event_patterns
                .iter()
                .map(|p| Binding::new(EVENTS_EXCHANGE, p.clone())),
        );
        Self {
            name: crate::message::service_queue(service),
            durable: true,
            auto_delete: false,
            dead_letter_exchange: Some(DL_EXCHANGE.into()),
            max_length: None,
            bindings,
        }
    }

    /// A response queue: non-durable, auto-delete, no bindings (replies come through
    /// the default exchange).
    pub fn response(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: false,
            auto_delete: true,
            dead_letter_exchange: None,
            max_length: None,
            bindings: Vec::new(),
        }
    }

    /// A dead-letter queue bound to the DLX, declared exactly as nuropb's
    /// `configure_nuropb_rmq` declares it: non-durable, not auto-delete, **no
    /// arguments** (a length bound here would be an `x-max-length` argument, and
    /// RabbitMQ refuses a nuropb instance's declaration of the same queue with 406
    /// PRECONDITION_FAILED). The mesh bounds it instead: its service's leader trims it
    /// ([`Connection::trim_queue`]).
    pub fn dead_letter(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: false,
            auto_delete: false,
            dead_letter_exchange: None,
            max_length: None,
            bindings: vec![Binding::new(DL_EXCHANGE, "")],
        }
    }

    /// An event subscription queue: non-durable, auto-delete, bound to the events
    /// exchange with `pattern`.
    pub fn subscription(name: impl Into<String>, pattern: &str) -> Self {
        Self {
            name: name.into(),
            durable: false,
            auto_delete: true,
            dead_letter_exchange: None,
            max_length: None,
            bindings: vec![Binding::new(EVENTS_EXCHANGE, pattern)],
        }
    }
}

/// Consumer options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Unsettled deliveries in flight at once (0 = unlimited). Ignored with auto-ack.
    pub prefetch: u16,
    /// Refuse other consumers (and fail if one exists).
    pub exclusive: bool,
    /// Deliveries are settled on delivery; `ack`/`reject` are no-ops.
    pub auto_ack: bool,
}

impl ConsumeOptions {
    /// Manual ack with `prefetch`, not exclusive.
    pub fn manual(prefetch: u16) -> Self {
        Self {
            prefetch,
            exclusive: false,
            auto_ack: false,
        }
    }

    /// Exclusive auto-ack consumer (response and subscription queues).
    pub fn exclusive_auto_ack() -> Self {
        Self {
            prefetch: 0,
            exclusive: true,
            auto_ack: true,
        }
    }
}

/// What a backend's publish and settle operations return: an outcome known at once
/// ([`done`]: the in-process broker, no allocation) or a boxed future ([`later`]:
/// a round trip to a broker).
pub type BackendFuture<'a, T> =
    futures::future::Either<futures::future::Ready<T>, BoxFuture<'a, T>>;

/// A [`BackendFuture`] that is ready with `value`.
pub fn done<'a, T>(value: T) -> BackendFuture<'a, T> {
    futures::future::Either::Left(futures::future::ready(value))
}

/// A [`BackendFuture`] that waits for `fut`.
pub fn later<'a, T, F>(fut: F) -> BackendFuture<'a, T>
where
    F: Future<Output = T> + Send + 'a,
{
    futures::future::Either::Right(Box::pin(fut))
}

/// How a backend settles one delivery. Implemented by backends; used through
/// [`Delivery`].
pub trait Acker: Send + fmt::Debug {
    /// Positive acknowledgement.
    fn ack(self: Box<Self>) -> BackendFuture<'static, Result<(), MeshError>>;
    /// Negative acknowledgement: requeue, or dead-letter (reason `rejected`) when the
    /// queue has a DLX, else drop.
    fn reject(self: Box<Self>, requeue: bool) -> BackendFuture<'static, Result<(), MeshError>>;

    /// Dead-letters the delivery (reason `rejected`, as [`Acker::reject`] without
    /// requeue) with a human-readable `reason` that the dead letter carries
    /// ([`DeathInfo::detail`](crate::message::DeathInfo::detail), header
    /// `x-herald-reason`). `message` is the delivered message (its body is what a
    /// backend that must republish the dead letter itself needs). The delivery is still
    /// settled exactly once. The default rejects without the reason.
    fn dead_letter(
        self: Box<Self>,
        message: Box<Message>,
        reason: String,
    ) -> BackendFuture<'static, Result<(), MeshError>> {
        drop(message);
        let _ = reason;
        self.reject(false)
    }
}

/// One delivered message, to be settled exactly once.
#[derive(Debug)]
pub struct Delivery {
    /// The message (boxed: a delivery is moved through streams and tasks).
    pub message: Box<Message>,
    /// It was delivered before and requeued.
    pub redelivered: bool,
    acker: Option<Box<dyn Acker>>,
}

impl Delivery {
    /// A delivery; `acker` is `None` for auto-ack consumers.
    pub fn new(
        message: impl Into<Box<Message>>,
        redelivered: bool,
        acker: Option<Box<dyn Acker>>,
    ) -> Self {
        Self {
            message: message.into(),
            redelivered,
            acker,
        }
    }

    /// Splits into the message and a [`Settle`] handle, so the message can be consumed
    /// while the settlement is still owed.
    pub fn into_parts(self) -> (Box<Message>, Settle) {
        (
            self.message,
            Settle {
                acker: self.acker,
                redelivered: self.redelivered,
            },
        )
    }

    /// Acknowledges (no-op for auto-ack deliveries).
    pub async fn ack(self) -> Result<(), MeshError> {
        self.into_parts().1.ack().await
    }

    /// Rejects: requeue, or dead-letter with reason `rejected`.
    pub async fn reject(self, requeue: bool) -> Result<(), MeshError> {
        self.into_parts().1.reject(requeue).await
    }

    /// Dead-letters it (reason `rejected`) carrying `reason` (see
    /// [`Settle::dead_letter`]).
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), MeshError> {
        let (message, settle) = self.into_parts();
        settle.dead_letter(message, reason.into()).await
    }
}

/// The settlement still owed for a delivery whose message was taken out. Settled
/// exactly once by [`Settle::ack`] or [`Settle::reject`]; dropping it requeues.
#[derive(Debug)]
pub struct Settle {
    acker: Option<Box<dyn Acker>>,
    redelivered: bool,
}

impl Settle {
    /// Whether the delivery had been delivered before.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Acknowledges. The backend is told at once; the returned future waits for its
    /// answer.
    pub fn ack(self) -> impl Future<Output = Result<(), MeshError>> + Send + 'static {
        let answer = self.acker.map(|a| a.ack());
        async move {
            match answer {
                Some(a) => a.await,
                None => Ok(()),
            }
        }
    }

    /// Rejects (see [`Delivery::reject`]). The backend is told at once; the returned
    /// future waits for its answer.
    pub fn reject(
        self,
        requeue: bool,
    ) -> impl Future<Output = Result<(), MeshError>> + Send + 'static {
        let answer = self.acker.map(|a| a.reject(requeue));
        async move {
            match answer {
                Some(a) => a.await,
                None => Ok(()),
            }
        }
    }

    /// Dead-letters the delivery whose message is `message` (reason `rejected`), with
    /// `reason` in words on the dead letter ([`DeathInfo::detail`], header
    /// `x-herald-reason`), for a message that cannot be handled (the mesh gives the
    /// decode error of a poison message, and says why for a stray response on a service
    /// queue, for a request whose deadline passed before it was handled, for a message
    /// whose handler panicked on its redelivery too, for an event whose handler failed,
    /// and for a failed call of a service that dead-letters failed calls). Settles it exactly once:
    /// on RabbitMQ a copy with the reason (and the original's body, properties, headers
    /// and routing key) goes to the queue's dead-letter exchange, confirmed, and then
    /// the delivery is acked; if that copy cannot be published, the delivery is
    /// rejected instead (a dead letter without the reason). The in-process broker
    /// dead-letters it with the reason directly.
    ///
    /// [`DeathInfo::detail`]: crate::message::DeathInfo::detail
    pub fn dead_letter(
        self,
        message: Box<Message>,
        reason: String,
    ) -> impl Future<Output = Result<(), MeshError>> + Send + 'static {
        let answer = self.acker.map(|a| a.dead_letter(message, reason));
        async move {
            match answer {
                Some(a) => a.await,
                None => Ok(()),
            }
        }
    }
}

/// What [`Connection::trim_queue`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Ready messages in the queue before the trim.
    pub found: usize,
    /// Oldest messages dropped.
    pub dropped: usize,
}

/// One connection to the broker (AMQP: a connection with its channels).
pub trait Connection: Send + Sync + fmt::Debug {
    /// Declares an exchange (idempotent; a different type for an existing name fails
    /// with [`MeshError::PreconditionFailed`]).
    fn declare_exchange<'a>(
        &'a self,
        spec: &'a ExchangeSpec,
    ) -> BoxFuture<'a, Result<(), MeshError>>;

    /// Declares a queue and its bindings (idempotent).
    fn declare_queue<'a>(&'a self, spec: &'a QueueSpec) -> BoxFuture<'a, Result<(), MeshError>>;

    /// Publishes `message` to `exchange` with `routing_key`. A `mandatory` message that
    /// matches no queue fails with [`MeshError::Unroutable`].
    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        message: Message,
    ) -> BackendFuture<'a, Result<(), MeshError>>;

    /// Starts a consumer on `queue`.
    fn consume<'a>(
        &'a self,
        queue: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, MeshError>>;

    /// Starts consuming the replies sent to this connection's direct reply-to address
    /// (RabbitMQ's `amq.rabbitmq.reply-to`: replies go straight to the channel that
    /// publishes the requests, with no reply queue in between). Returns the address
    /// to put in a request's `reply_to` and the stream of replies (auto-acked), or
    /// `None` when the backend has no such thing (the default; the caller then uses
    /// its response queue). Called at most once per connection.
    fn consume_direct_replies(
        &self,
    ) -> BoxFuture<'_, Result<Option<(String, DeliveryStream)>, MeshError>> {
        Box::pin(async { Ok(None) })
    }

    /// Tries to take (or confirms holding) the leader lock of `service`. Returns
    /// whether this connection holds it now. The lock is released when the connection
    /// closes or dies.
    fn try_lead<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<bool, MeshError>>;

    /// Drops the oldest ready messages of `queue` while it holds more than `max_len`,
    /// at most `max_drop` of them (the work of one call is bounded; with `max_drop` 0 it
    /// only counts). Dropped messages are gone (not dead-lettered). Messages delivered
    /// to a consumer and not yet settled are neither counted nor dropped. Fails with
    /// [`MeshError::NoSuchQueue`] if the queue does not exist. The mesh's leader uses
    /// it to bound its service's dead-letter queue.
    fn trim_queue<'a>(
        &'a self,
        queue: &'a str,
        max_len: usize,
        max_drop: usize,
    ) -> BoxFuture<'a, Result<Trimmed, MeshError>>;

    /// Closes the connection: consumers end, unsettled deliveries are requeued, the
    /// leader lock and auto-delete queues go away.
    fn close(&self) -> BoxFuture<'_, Result<(), MeshError>>;

    /// Whether the connection is still usable.
    fn is_open(&self) -> bool;

    /// Whether the link to the broker is up right now: `false` while a lost connection
    /// is being re-established (when the broker has already released whatever this
    /// connection held, such as the leader lock). Defaults to [`is_open`](Self::is_open)
    /// for backends that cannot lose their link.
    fn is_connected(&self) -> bool {
        self.is_open()
    }

    /// A watch on how many times this connection has lost its link to the broker
    /// (it changes as soon as the backend knows of a loss, before any reconnect), or
    /// `None` for backends that cannot lose their link (the default; the in-process
    /// broker). Replies to requests published before a loss cannot arrive once the link
    /// is back (the response queue and the direct reply-to channel die with the
    /// connection), so the mesh fails those requests with
    /// [`MeshError::ConnectionLost`] when this changes.
    fn link_losses(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Says that nobody will consume `queue` from this connection again (its consumer
    /// was dropped): a backend that re-declares its topology after a reconnect leaves
    /// it out from now on, so an auto-delete queue that went away with its consumer does
    /// not come back with no one to empty it. The default does nothing (backends that
    /// never reconnect).
    fn forget_queue(&self, queue: &str) {
        let _ = queue;
    }
}

/// A broker: opens connections.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short name for logs and errors (`inproc`, `amqp`).
    fn name(&self) -> &'static str;

    /// The mesh name (AMQP: the vhost); used for client-only names
    /// (`<mesh>-client`).
    fn mesh_name(&self) -> &str;

    /// Opens a connection; `client_name` is informational (connection properties).
    fn connect<'a>(
        &'a self,
        client_name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn Connection>, MeshError>>;
}
