//! The RabbitMQ backend, over lapin 4, speaking nuropb 0.1.1 on the wire.
//!
//! [`AmqpBackend`] implements [`Backend`]; each [`AmqpConnection`] is one AMQP connection
//! with:
//!
//! * one **unconfirmed publish channel** for requests, commands and replies. Requests
//!   and commands are `mandatory`: one that matches no queue comes back as
//!   [`MeshError::Unroutable`] (nuropb's `basic.return` 312 NO_ROUTE; the mesh turns
//!   it into [`MeshError::NotFound`]). The broker's returns are matched to their
//!   publishes by correlation id. A request's reply proves that it was routed; a call
//!   neither answered nor returned soon is decided by one synchronous round trip on
//!   the channel (`basic.qos`), whose answer the broker sends after the return of any
//!   earlier publish on it. No publisher confirms: they cost the broker a
//!   tracking-and-ack per call and the client a wake-up of lapin's I/O thread, and
//!   lapin attaches a returned message to whichever confirm it completes next (with
//!   several calls in flight, the wrong one: a routed call failed as unroutable while
//!   the unroutable one waited for its deadline). A lost reply is reported by the
//!   caller's deadline (see [`AmqpOptions::confirm_replies`]);
//! * one **confirmed publish channel** for events: each waits for the broker's confirm,
//!   so it is either routed or reported as an error;
//! * one **channel for the messages that ask for a confirm** ([`Properties::confirm`]:
//!   confirmed commands), opened on first use, in confirm mode, and used by **one
//!   publish at a time**: a `mandatory` message that no queue takes comes back as a
//!   `basic.return` before its confirm, and lapin hands a returned message to whichever
//!   confirm it completes next, so only with a single publish in flight is the return
//!   certainly that publish's. (Events need no such care: they are not mandatory, so
//!   nothing on their channel is ever returned.) The outcome of a confirm is read by the
//!   same code for every confirmed channel;
//! * one **channel for dead-letter copies** ([`Acker::dead_letter`]), opened on first
//!   use, in confirm mode. Copies are not mandatory either, so they are **pipelined**:
//!   up to [`DEAD_LETTER_WINDOW`] are published and awaiting their confirms at once,
//!   each delivery acked once its own copy is confirmed;
//! * one **channel per consumer**, so each consumer has its own prefetch (`basic.qos`) and a
//!   refused exclusive consume (403, "in exclusive use") closes only that channel;
//! * a **topology channel** for declarations. Exchanges and queues are declared by Herald
//!   itself, idempotently, with nuropb's exact flags and arguments (a mismatch would be a 406);
//!   every declaration is remembered and replayed after a reconnect, but for queues
//!   forgotten with [`Connection::forget_queue`] (a dropped event subscription's);
//! * a **channel per [`Connection::trim_queue`]** (opened for it and closed after it):
//!   a passive `queue.declare` for the count, `basic.get` of the oldest surplus and one
//!   `basic.ack` for all of it; it is how the mesh's leader bounds a dead-letter queue
//!   that nuropb declares without `x-max-length`;
//! * a **leader channel**: the leader lock of a service is the exclusive queue
//!   `nuropb-<service>-leader`. Exactly one connection can own it; the broker deletes it
//!   when that connection closes or dies, and the next [`Connection::try_lead`] of another
//!   instance takes it over.
//!
//! **Reconnect.** When the broker connection is lost, the next operation (or a consumer)
//! reconnects with exponential backoff ([`AmqpOptions::reconnect_initial`] doubling up to
//! [`AmqpOptions::reconnect_max`]), replays the remembered topology and restarts every
//! consumer on the new connection, so the [`DeliveryStream`]s handed out keep flowing.
//! Operations give up with an error after [`AmqpOptions::reconnect_wait`]. Publishes are
//! never silently retried (a publish cut off by the loss might have been routed). Each
//! loss is counted ([`Connection::link_losses`]) as soon as lapin reports it and before
//! the reconnect, so the mesh can fail the calls whose replies died with the connection
//! ([`MeshError::ConnectionLost`]).
//!
//! **Bounded waits.** Every broker round trip Herald awaits (connect and handshake
//! included) waits at most [`AmqpOptions::operation_timeout`]; lapin bounds none. An
//! overrun is [`MeshError::BackendTimeout`] and gives the connection up as lost (counted
//! in [`Connection::link_losses`], closed in the background, consumers re-consume, the
//! next operation reconnects): a broker that stopped answering is otherwise noticed only
//! through missed heartbeats.
//!
//! **Decoding** never fails: whatever arrives becomes a [`Message`]; missing or bad nuropb
//! headers are left for [`Headers::message_type`] to report, so that the service can
//! dead-letter a poison message once and keep serving ([`message_from_amqp`]).
//!
//! **Dead letters with a reason.** A broker `reject` cannot say why. So
//! [`Acker::dead_letter`] publishes a copy of the delivery to its queue's dead-letter
//! exchange itself, as the broker would dead-letter it (same body, properties, headers
//! and routing key; `x-death` and `x-first-death-*` for reason `rejected` in that
//! queue; the expiration moved into the `x-death` entry), plus the header
//! `x-herald-reason`, waits for the broker's confirm, and only then acks the delivery.
//! Copies of different deliveries do not wait for one another's confirms (up to
//! [`DEAD_LETTER_WINDOW`] in flight), so a backlog of dead letters drains at the
//! broker's pace rather than at one confirm round trip per message.
//! If the copy cannot be published (no known dead-letter exchange, connection lost,
//! refused), the delivery is rejected instead: settled once either way. A delivery whose
//! connection or channel was lost (even if a new one is up) gets no copy: the broker
//! redelivers it anyway, and it is dead-lettered then. A refused copy makes the broker close the
//! channel of copies, so the other copies in flight on it fall back to a reject without
//! their reason too (each still settled once). A connection lost between the confirm and
//! the ack makes the broker redeliver the delivery, which is then dead-lettered again
//! (two dead letters for one message, never none).
//!
//! ```no_run
//! use herald_mesh::amqp::AmqpBackend;
//! use herald_mesh::backend::{Backend, nuropb_exchanges};
//! # async fn demo() -> Result<(), herald_mesh::MeshError> {
//! let backend = AmqpBackend::new("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! let conn = backend.connect("example").await?;
//! for exchange in nuropb_exchanges() {
//!     conn.declare_exchange(&exchange).await?;
//! }
//! conn.close().await?;
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ConnectionProperties, ErrorKind};
use tokio::sync::{Mutex, oneshot};

use crate::backend::{
    Acker, Backend, BackendFuture, Connection, ConsumeOptions, Delivery, DeliveryStream,
    ExchangeKind, ExchangeSpec, QueueSpec, Trimmed, later,
};
use crate::error::MeshError;
use crate::message::{
    CONTENT_TYPE_JSON, DL_EXCHANGE, DeathInfo, DeathReason, Headers, Message, Payload, Properties,
    header, leader_queue,
};

const BACKEND: &str = "amqp";

/// RabbitMQ's direct reply-to pseudo-queue: consumed (no-ack) on the channel that
/// publishes the requests, and used as their `reply_to`; the broker rewrites it to
/// `amq.rabbitmq.reply-to.<token>`, which a service (Herald or nuropb) answers through
/// the default exchange like any reply queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Tuning of the RabbitMQ backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpOptions {
    /// First delay between reconnect attempts (doubles each attempt).
    pub reconnect_initial: Duration,
    /// Largest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// How long an operation waits for a lost connection to come back before failing.
    pub reconnect_wait: Duration,
    /// Wait for the broker's publisher confirm on events and other non-mandatory
    /// messages published to an exchange (default true). Requests and commands
    /// (`mandatory`) are never confirmed: see the [module docs](self).
    pub publisher_confirms: bool,
    /// Also confirm replies (publishes to the default exchange that are not mandatory).
    /// Off by default: a lost reply is reported by the caller's deadline, and nuropb
    /// does not confirm replies either.
    pub confirm_replies: bool,
    /// Largest message body published (bigger ones are refused before they reach the
    /// broker, which would close the channel). Default 16 MiB (RabbitMQ 4's default
    /// `max_message_size`).
    pub max_message_bytes: usize,
    /// The longest Herald waits for the broker's answer to any one round trip: the TCP
    /// connect and AMQP handshake, `channel.open`, a declare or bind, `basic.qos`,
    /// `basic.consume`, `basic.cancel`, `basic.get`, `queue.delete`, `confirm.select`,
    /// a publisher confirm. lapin waits for each without a bound, so a broker that
    /// accepts TCP but stopped answering (a frozen network, a broker stuck under a
    /// resource alarm) would otherwise hold the operation until the missed heartbeats
    /// are noticed (two heartbeat intervals, minutes by default) or forever (before
    /// the handshake, there are no heartbeats). An overrun is
    /// [`MeshError::BackendTimeout`], and the connection is treated as lost: the loss is
    /// counted ([`Connection::link_losses`]), the connection is closed locally, its
    /// consumers re-consume and the next operation reconnects.
    ///
    /// Default 30 s: a healthy broker answers in milliseconds, and even a loaded one
    /// (a busy queue declared, a confirm behind a burst of persistent messages) well
    /// within seconds, so 30 s does not fail a slow-but-working broker; and it is well
    /// under the 2 minutes lapin takes to notice a silent link with RabbitMQ's default
    /// 60 s heartbeat. It is also the default of [`AmqpOptions::reconnect_wait`]. Must
    /// be greater than zero.
    pub operation_timeout: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            reconnect_wait: Duration::from_secs(30),
            publisher_confirms: true,
            confirm_replies: false,
            max_message_bytes: 16 * 1024 * 1024,
            operation_timeout: Duration::from_secs(30),
        }
    }
}

impl AmqpOptions {
    /// Checks the options that have a valid range.
    fn validate(&self) -> Result<(), MeshError> {
        if self.operation_timeout.is_zero() {
            return Err(MeshError::InvalidArgument {
                what: "AmqpOptions::operation_timeout",
                value: format!("{:?}", self.operation_timeout),
                reason: "must be greater than zero (it bounds every wait for the broker)".into(),
            });
        }
        Ok(())
    }
}

/// The most dead-letter copies ([`Acker::dead_letter`]) one connection has published
/// and not yet seen confirmed: a backlog of dead letters (expired requests after an
/// outage) is published this many at a time, each original acked once its own copy is
/// confirmed (see the [module docs](self)).
pub const DEAD_LETTER_WINDOW: usize = 64;

/// A RabbitMQ broker reached through an AMQP URL.
#[derive(Clone)]
pub struct AmqpBackend {
    url: String,
    mesh_name: String,
    options: AmqpOptions,
}

impl fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("url", &redact(&self.url))
            .field("mesh_name", &self.mesh_name)
            .field("options", &self.options)
            .finish()
    }
}

/// The URL with its password replaced by `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((creds, host)) => match creds.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{creds}@{host}"),
        },
        None => url.to_owned(),
    }
}

/// The mesh name of an AMQP URL as nuropb computes it: the raw last path segment
/// (`amqp://h/%2f` → `%2f`, `amqp://h/nuropb` → `nuropb`).
pub fn mesh_name_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    match rest.split_once('/') {
        Some((_, path)) => path.rsplit('/').next().unwrap_or(path).to_owned(),
        None => String::new(),
    }
}

impl AmqpBackend {
    /// A backend for `url` (`amqp://user:pass@host:port/vhost`) with default options.
    pub fn new(url: &str) -> Result<Self, MeshError> {
        Self::with_options(url, AmqpOptions::default())
    }

    /// A backend with explicit options.
    pub fn with_options(url: &str, options: AmqpOptions) -> Result<Self, MeshError> {
        lapin::uri::AMQPUri::from_str(url).map_err(|reason| MeshError::InvalidArgument {
            what: "AMQP URL",
            value: redact(url),
            reason,
        })?;
        options.validate()?;
        Ok(Self {
            url: url.to_owned(),
            mesh_name: mesh_name_of(url),
            options,
        })
    }

    /// The broker URL (with its password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The options in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.options
    }
}

impl Backend for AmqpBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn mesh_name(&self) -> &str {
        &self.mesh_name
    }

    fn connect<'a>(
        &'a self,
        client_name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn Connection>, MeshError>> {
        Box::pin(async move {
            let conn = AmqpConnection::open(&self.url, client_name, self.options.clone()).await?;
            Ok(Arc::new(conn) as Arc<dyn Connection>)
        })
    }
}

/// What was declared, replayed in order after a reconnect.
#[derive(Clone, Debug)]
enum Declared {
    Exchange(ExchangeSpec),
    Queue(QueueSpec),
}

/// One live broker connection and its long-lived channels.
struct Live {
    generation: u64,
    /// Shared with the task that closes it when it is abandoned ([`Live::abandon`]).
    conn: Arc<lapin::Connection>,
    /// The connection this one belongs to, to count its loss when abandoned.
    inner: std::sync::Weak<Inner>,
    /// [`AmqpOptions::operation_timeout`].
    operation_timeout: Duration,
    /// Set when a round trip on it overran [`AmqpOptions::operation_timeout`]: the
    /// broker is taken for gone even though lapin still reports the link up. Consumers
    /// on it watch this to re-consume on the next connection.
    abandoned: tokio::sync::watch::Sender<bool>,
    /// Reopened on the same connection when the broker closes one of them (a publish
    /// to a missing exchange closes its channel with 404).
    /// Behind an `Arc`: a publish takes a reference count, not a clone of two lapin
    /// channels (each a dozen reference counts shared with the I/O thread).
    channels: RwLock<Arc<PublishChannels>>,
    topology: Mutex<Option<Channel>>,
    leader: Mutex<Option<Channel>>,
    /// The channel for messages that ask for a confirm, opened on first use; its lock
    /// is held from a publish until its confirm is in (one publish at a time).
    confirmed: Arc<Mutex<Option<Channel>>>,
    /// The channel for the dead-letter copies of [`Acker::dead_letter`], opened on first
    /// use, in confirm mode; its lock is held only while it is (re)opened. Nothing
    /// published on it is `mandatory`, so nothing on it comes back as a return, and
    /// several copies are in flight on it at once, each acked after its own confirm.
    dead_letters: Mutex<Option<Channel>>,
    /// The [`DEAD_LETTER_WINDOW`] permits of the copies on `dead_letters`: one is held
    /// from a copy's publish until its confirm is in.
    dead_letter_window: tokio::sync::Semaphore,
}

/// The publishing channels of a connection.
#[derive(Clone)]
struct PublishChannels {
    /// Confirm mode: events.
    publish: Channel,
    /// Unconfirmed: replies, requests and commands.
    unconfirmed: Channel,
    /// The direct reply-to consumer on `unconfirmed`, once asked for
    /// ([`Connection::consume_direct_replies`]): opened with the channel, so that no
    /// request can be published on a channel without it (the broker would close the
    /// channel).
    direct: Option<lapin::Consumer>,
}

impl PublishChannels {
    /// Opens them on `conn`, each round trip bounded by `limit`.
    async fn open(
        conn: &lapin::Connection,
        limit: Duration,
        confirms: bool,
        direct: bool,
    ) -> Result<Self, MeshError> {
        let about = About::Other("publish channel");
        let publish = bounded(limit, "channel.open", about, conn.create_channel())
            .await?
            .map_err(|e| map_err("channel.open", about, &e))?;
        if confirms {
            let select = publish.confirm_select(ConfirmSelectOptions::default());
            bounded(limit, "confirm.select", about, select)
                .await?
                .map_err(|e| map_err("confirm.select", about, &e))?;
        }
        let about = About::Other("unconfirmed channel");
        let unconfirmed = bounded(limit, "channel.open", about, conn.create_channel())
            .await?
            .map_err(|e| map_err("channel.open", about, &e))?;
        let direct = if direct {
            Some(consume_direct(&unconfirmed, limit).await?)
        } else {
            None
        };
        Ok(Self {
            publish,
            unconfirmed,
            direct,
        })
    }

    fn usable(&self) -> bool {
        self.publish.status().connected() && self.unconfirmed.status().connected()
    }
}

/// Starts the direct reply-to consumer on `channel` (no-ack, as RabbitMQ requires),
/// waiting at most `limit` for the broker.
async fn consume_direct(channel: &Channel, limit: Duration) -> Result<lapin::Consumer, MeshError> {
    let about = About::Queue(DIRECT_REPLY_TO);
    bounded(
        limit,
        "basic.consume",
        about,
        channel.basic_consume(
            ShortString::from(DIRECT_REPLY_TO),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?
    .map_err(|e| map_err("basic.consume", about, &e))
}

impl Live {
    fn channels(&self) -> Option<Arc<PublishChannels>> {
        self.channels.read().ok().map(|c| Arc::clone(&c))
    }

    fn is_connected(&self) -> bool {
        self.link_up() && self.channels.read().is_ok_and(|c| c.usable())
    }

    /// lapin reports the link up and no round trip on it overran its bound.
    fn link_up(&self) -> bool {
        self.conn.status().connected() && !self.is_abandoned()
    }

    fn is_abandoned(&self) -> bool {
        *self.abandoned.borrow()
    }

    /// [`bounded`] by [`AmqpOptions::operation_timeout`]; an overrun abandons the
    /// connection ([`Live::abandon`]).
    async fn within<F: Future>(
        &self,
        operation: &'static str,
        about: About<'_>,
        fut: F,
    ) -> Result<F::Output, MeshError> {
        let out = bounded(self.operation_timeout, operation, about, fut).await;
        if let Err(timeout) = &out {
            self.abandon(timeout);
        }
        out
    }

    /// [`Live::within`], mapping a lapin error with [`map_err`].
    async fn round_trip<T>(
        &self,
        operation: &'static str,
        about: About<'_>,
        fut: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, MeshError> {
        self.within(operation, about, fut)
            .await?
            .map_err(|e| map_err(operation, about, &e))
    }

    /// Gives the connection up after a round trip on it overran its bound (`why`): the
    /// broker stopped answering, though lapin, which notices a silent link only through
    /// missed heartbeats, still reports it up. Its loss is counted at once, so that the
    /// mesh fails the calls whose replies cannot come back; [`Inner::live`] then
    /// reconnects instead of handing it out, its consumers re-consume on the new
    /// connection, and it is closed in the background (within [`CLOSE_WAIT`]).
    fn abandon(&self, why: &MeshError) {
        if self.abandoned.send_replace(true) {
            return;
        }
        tracing::warn!(generation = self.generation, error = %why, "the broker stopped answering; connection given up");
        // A loss is counted only for the connection in use: one given up while being
        // set up (its topology replay overran) carried no call, and failing the calls
        // waiting for the reconnect would pre-empt the next attempt.
        if let Some(inner) = self.inner.upgrade()
            && inner.current().is_some_and(|c| std::ptr::eq(&*c, self))
        {
            inner.note_loss(self.generation);
        }
        close_unanswering(Arc::clone(&self.conn));
    }

    /// The topology channel, opened on demand (a failed declaration closes it).
    async fn channel<'a>(
        &'a self,
        slot: &'a Mutex<Option<Channel>>,
        about: About<'_>,
    ) -> Result<Channel, MeshError> {
        let mut guard = slot.lock().await;
        if let Some(ch) = guard.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = self
            .round_trip("channel.open", about, self.conn.create_channel())
            .await?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// A new channel of its own (closed by the caller).
    async fn open_channel(&self, about: About<'_>) -> Result<Channel, MeshError> {
        self.round_trip("channel.open", about, self.conn.create_channel())
            .await
    }

    /// The channel in `slot` if it is still open, else a new one in confirm mode, put
    /// in `slot` (a refused publish makes the broker close its channel).
    async fn confirm_channel(
        &self,
        slot: &mut Option<Channel>,
        about: About<'_>,
    ) -> Result<Channel, MeshError> {
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let c = self.open_channel(about).await?;
        let select = c.confirm_select(ConfirmSelectOptions::default());
        self.round_trip("confirm.select", about, select).await?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

struct Inner {
    url: String,
    client_name: String,
    options: AmqpOptions,
    current: RwLock<Option<Arc<Live>>>,
    reconnecting: Mutex<()>,
    generation: AtomicU64,
    declared: StdMutex<Vec<Declared>>,
    /// Requests whose publish waits to learn whether they were routed, by correlation
    /// id: a reply proves it (so the publish need not wait for a round trip), a
    /// `basic.return` refutes it.
    awaiting_confirm: StdMutex<HashMap<String, oneshot::Sender<Proof>>>,
    awaiting_count: AtomicUsize,
    /// Direct reply-to is in use: reopened publishing channels get its consumer.
    direct_replies: AtomicBool,
    closed: AtomicBool,
    /// How many times the link to the broker was lost ([`Connection::link_losses`]).
    losses: tokio::sync::watch::Sender<u64>,
    /// The newest connection generation whose loss was counted (each counts once,
    /// whether its watcher or a reconnect notices it first).
    lost_generation: AtomicU64,
    /// Acks handed to lapin that it has not finished yet. lapin runs each ack, and each
    /// channel or connection close, as a task of its own, so a close can overtake an
    /// ack handed over before it (the broker then redelivers a message whose ack
    /// returned `Ok`): closes wait for these first.
    acks_in_flight: StdMutex<Vec<PendingAck>>,
}

/// An ack lapin has been given but not finished.
type PendingAck = BoxFuture<'static, lapin::Result<bool>>;

/// Kept acks (finished or not) at which the finished ones are dropped.
const ACKS_KEPT_BEFORE_SWEEP: usize = 64;

/// Longest a close waits for lapin to finish the acks handed to it (it finishes them
/// within a write, or fails them with their channel).
const ACKS_FINISH_WAIT: Duration = Duration::from_secs(5);

/// How long a `connection.close` or `channel.close` may wait for the broker's
/// close-ok. lapin waits for it without a bound; a close that never completed was seen
/// to stall a whole program (and, with the link silent, it would wait for the
/// missed-heartbeat detection at best). Past this the handle is given up locally: the
/// broker drops the channel or connection, and requeues what it held, when the socket
/// goes.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Awaits a lapin close for at most [`CLOSE_WAIT`]; a failure or an overrun is logged
/// (what: "connection" or the channel's purpose), never returned: a close is best effort.
async fn close_bounded(what: &str, close: impl Future<Output = lapin::Result<()>>) {
    match tokio::time::timeout(CLOSE_WAIT, close).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(what, error = %e, "amqp close"),
        Err(_) => tracing::warn!(
            what,
            waited_ms = CLOSE_WAIT.as_millis() as u64,
            "the broker did not confirm a close in time; given up locally"
        ),
    }
}

/// Closes, in the background and bounded, a connection whose broker stopped answering
/// (nothing waits for it; outside a tokio runtime it is just dropped).
fn close_unanswering(conn: Arc<lapin::Connection>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            close_bounded(
                "connection",
                conn.close(
                    320,
                    ShortString::from("herald: the broker stopped answering"),
                ),
            )
            .await;
        });
    }
}

/// Awaits `fut`, the broker's answer to `operation` about `about`, for at most `limit`
/// ([`AmqpOptions::operation_timeout`]): every broker round trip Herald awaits goes
/// through here (closes through [`close_bounded`]), since lapin bounds none of them.
/// An overrun is [`MeshError::BackendTimeout`] naming the operation, its object and the
/// bound; on an established connection, [`Live::round_trip`] also abandons the
/// connection.
async fn bounded<F: Future>(
    limit: Duration,
    operation: &'static str,
    about: About<'_>,
    fut: F,
) -> Result<F::Output, MeshError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| MeshError::BackendTimeout {
            backend: BACKEND,
            operation,
            object: match about {
                About::Exchange(x) => format!("exchange {x:?}"),
                About::Queue(q) => format!("queue {q:?}"),
                About::Other(what) => what.to_owned(),
            },
            after: limit,
        })
}

/// Polls `ack` once without a waker: `true` when lapin has finished it.
fn ack_done(ack: &mut PendingAck) -> bool {
    ack.as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        .is_ready()
}

/// One connection to RabbitMQ (see the [module docs](self)).
#[derive(Clone)]
pub struct AmqpConnection {
    inner: Arc<Inner>,
}

impl fmt::Debug for AmqpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConnection")
            .field("url", &redact(&self.inner.url))
            .field("client_name", &self.inner.client_name)
            .field("generation", &self.inner.generation.load(Ordering::Relaxed))
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn short(what: &'static str, value: &str) -> Result<ShortString, MeshError> {
    ShortString::try_new(value).map_err(|_| MeshError::InvalidArgument {
        what,
        value: value.chars().take(64).collect::<String>() + "…",
        reason: format!("{} bytes; AMQP short strings hold at most 255", value.len()),
    })
}

/// The operation and object an AMQP error is about, for error mapping.
#[derive(Clone, Copy)]
enum About<'a> {
    Exchange(&'a str),
    Queue(&'a str),
    Other(&'a str),
}

fn map_err(op: &str, about: About<'_>, err: &lapin::Error) -> MeshError {
    if let ErrorKind::ProtocolError(amqp) = err.kind() {
        let text = amqp.get_message().as_str().to_owned();
        if let AMQPErrorKind::Soft(soft) = amqp.kind() {
            match (soft, about) {
                (AMQPSoftError::RESOURCELOCKED, About::Queue(q)) => {
                    return MeshError::ExclusiveInUse {
                        queue: q.to_owned(),
                    };
                }
                (AMQPSoftError::ACCESSREFUSED, About::Queue(q)) if text.contains("exclusive") => {
                    return MeshError::ExclusiveInUse {
                        queue: q.to_owned(),
                    };
                }
                (AMQPSoftError::NOTFOUND, About::Queue(q)) if text.contains("queue") => {
                    return MeshError::NoSuchQueue {
                        queue: q.to_owned(),
                    };
                }
                (AMQPSoftError::NOTFOUND, About::Exchange(x))
                | (AMQPSoftError::NOTFOUND, About::Other(x)) => {
                    return MeshError::NoSuchExchange {
                        exchange: exchange_in(&text).unwrap_or(x).to_owned(),
                    };
                }
                (AMQPSoftError::NOTFOUND, About::Queue(_)) => {
                    return MeshError::NoSuchExchange {
                        exchange: exchange_in(&text).unwrap_or("?").to_owned(),
                    };
                }
                (AMQPSoftError::PRECONDITIONFAILED, About::Queue(q)) => {
                    return MeshError::PreconditionFailed {
                        object: "queue",
                        name: q.to_owned(),
                        reason: text,
                    };
                }
                (AMQPSoftError::PRECONDITIONFAILED, About::Exchange(x)) => {
                    return MeshError::PreconditionFailed {
                        object: "exchange",
                        name: x.to_owned(),
                        reason: text,
                    };
                }
                _ => {}
            }
        }
    }
    let name = match about {
        About::Exchange(n) | About::Queue(n) | About::Other(n) => n,
    };
    MeshError::Backend {
        backend: BACKEND,
        reason: format!("{op} {name:?}: {err}"),
    }
}

/// Extracts `'name'` from a broker message like "no exchange 'x' in vhost '/'".
fn exchange_in(text: &str) -> Option<&str> {
    let start = text.find("exchange '")? + "exchange '".len();
    let len = text[start..].find('\'')?;
    Some(&text[start..start + len])
}

impl AmqpConnection {
    /// Connects to `url`; fails at once (no retry) if the broker does not answer.
    pub async fn open(
        url: &str,
        client_name: &str,
        options: AmqpOptions,
    ) -> Result<Self, MeshError> {
        options.validate()?;
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            client_name: client_name.to_owned(),
            options,
            current: RwLock::new(None),
            reconnecting: Mutex::new(()),
            generation: AtomicU64::new(0),
            declared: StdMutex::new(Vec::new()),
            awaiting_confirm: StdMutex::new(HashMap::new()),
            awaiting_count: AtomicUsize::new(0),
            direct_replies: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            losses: tokio::sync::watch::Sender::new(0),
            lost_generation: AtomicU64::new(0),
            acks_in_flight: StdMutex::new(Vec::new()),
        });
        let live = Inner::dial(&inner).await?;
        if let Ok(mut cur) = inner.current.write() {
            *cur = Some(live);
        }
        tracing::debug!(url = %redact(url), client = client_name, "amqp connected");
        Ok(Self { inner })
    }

    /// How many times the connection was (re)established (1 after [`AmqpConnection::open`]).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Closes the underlying broker connection abruptly **without** closing this handle,
    /// as a network failure would; the next operation reconnects. For tests of the
    /// reconnect path.
    pub async fn simulate_connection_loss(&self) {
        let live = self.inner.current.read().ok().and_then(|c| c.clone());
        if let Some(live) = live {
            close_bounded(
                "connection",
                live.conn
                    .close(320, ShortString::from("herald: simulated connection loss")),
            )
            .await;
        }
    }

    /// Deletes a queue (test and tooling helper). Missing queues are not an error.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), MeshError> {
        self.on_queue_channel(queue, |live, ch| async move {
            let delete = ch.queue_delete(
                short("queue name", queue)?,
                lapin::options::QueueDeleteOptions::default(),
            );
            match live
                .round_trip("queue.delete", About::Queue(queue), delete)
                .await
            {
                Ok(_) | Err(MeshError::NoSuchQueue { .. }) => Ok(()),
                Err(other) => Err(other),
            }
        })
        .await
    }

    /// Number of ready messages in `queue` (passive declare).
    pub async fn queue_len(&self, queue: &str) -> Result<u32, MeshError> {
        self.on_queue_channel(queue, |live, ch| async move {
            declare_passive(&live, &ch, short("queue name", queue)?, About::Queue(queue)).await
        })
        .await
    }

    /// [`Connection::trim_queue`]: a passive declare for the count of ready messages,
    /// then `basic.get` of the oldest surplus (at most `max_drop`) and one `basic.ack`
    /// (multiple) for all of them, confirmed by a round trip before the channel
    /// closes. A channel of its own, so that a missing queue (404) closes nothing else.
    async fn trim(
        &self,
        queue: &str,
        max_len: usize,
        max_drop: usize,
    ) -> Result<Trimmed, MeshError> {
        self.on_queue_channel(queue, |live, ch| async move {
            let about = About::Queue(queue);
            let name = short("queue name", queue)?;
            let found = usize::try_from(declare_passive(&live, &ch, name.clone(), about).await?)
                .unwrap_or(usize::MAX);
            let surplus = found.saturating_sub(max_len).min(max_drop);
            let mut last = None;
            let mut dropped = 0;
            while dropped < surplus {
                let get = ch.basic_get(name.clone(), BasicGetOptions { no_ack: false });
                let got = live.round_trip("basic.get", about, get).await?;
                // Emptier than counted (a consumer took some meanwhile).
                let Some(got) = got else { break };
                last = Some(got.delivery.delivery_tag);
                dropped += 1;
            }
            if let Some(tag) = last {
                let ack = ch.basic_ack(tag, BasicAckOptions { multiple: true });
                live.round_trip("basic.ack", about, ack).await?;
                live.round_trip("basic.qos", about, sync_channel(&ch))
                    .await?;
            }
            Ok(Trimmed { found, dropped })
        })
        .await
    }

    /// Runs `op` on a channel opened for it (a tool's operation on `queue`), then
    /// closes the channel.
    async fn on_queue_channel<T, Fut>(
        &self,
        queue: &str,
        op: impl FnOnce(Arc<Live>, lapin::Channel) -> Fut,
    ) -> Result<T, MeshError>
    where
        Fut: Future<Output = Result<T, MeshError>>,
    {
        let live = self.inner.live().await?;
        let ch = live.open_channel(About::Queue(queue)).await?;
        let res = op(live.clone(), ch.clone()).await;
        if !live.is_abandoned() {
            close_bounded("queue channel", ch.close(200, ShortString::from("done"))).await;
        }
        res
    }
}

/// What became of a published request before its publish learnt it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proof {
    /// A reply came back: it was routed.
    Replied,
    /// The broker returned it: no queue took it.
    Returned,
}

/// A registration in [`Inner::awaiting_confirm`], removed when dropped.
struct ReplyProof {
    inner: Arc<Inner>,
    id: String,
    rx: oneshot::Receiver<Proof>,
}

impl ReplyProof {
    fn register(inner: &Arc<Inner>, id: &str) -> Self {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = inner.awaiting_confirm.lock() {
            map.insert(id.to_owned(), tx);
            inner.awaiting_count.fetch_add(1, Ordering::SeqCst);
        }
        Self {
            inner: inner.clone(),
            id: id.to_owned(),
            rx,
        }
    }
}

impl Drop for ReplyProof {
    fn drop(&mut self) {
        if let Ok(mut map) = self.inner.awaiting_confirm.lock()
            && map.remove(&self.id).is_some()
        {
            self.inner.awaiting_count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Inner {
    /// Keeps an unfinished ack until it is done. Finished ones are dropped whenever
    /// the list reaches [`ACKS_KEPT_BEFORE_SWEEP`] (not on every ack: that would poll
    /// every kept ack per request), so it stays about as short as the acks lapin is
    /// still working on plus that many.
    fn keep_ack(&self, ack: PendingAck) {
        let mut acks = self
            .acks_in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if acks.len() >= ACKS_KEPT_BEFORE_SWEEP {
            acks.retain_mut(|a| !ack_done(a));
        }
        acks.push(ack);
    }

    /// Resolves once lapin has finished every ack handed to it (written, or failed with
    /// its channel), or after [`ACKS_FINISH_WAIT`]. The acks stay in the shared list
    /// until they are done, so that every close waiting here (a consumer's channel, the
    /// connection) waits for all of them, not only the first one to ask; lapin resolves
    /// them on its own thread, so they are checked every millisecond.
    async fn acks_finished(&self) {
        let deadline = tokio::time::Instant::now() + ACKS_FINISH_WAIT;
        loop {
            let left = {
                let mut acks = self
                    .acks_in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                acks.retain_mut(|a| !ack_done(a));
                acks.len()
            };
            if left == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    left,
                    "acks handed to the connection did not finish before the close"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A reply arrived: tell the publish of its request, if still waiting, that it was
    /// routed.
    fn reply_seen(&self, d: &LapinDelivery) {
        if self.awaiting_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let Some(cid) = d.properties.correlation_id() else {
            return;
        };
        self.prove(cid.as_str(), Proof::Replied);
    }

    /// Tells the publish waiting for `correlation_id`, if any, what became of its
    /// message; returns whether one was waiting.
    fn prove(&self, correlation_id: &str, proof: Proof) -> bool {
        let tx = self
            .awaiting_confirm
            .lock()
            .ok()
            .and_then(|mut m| m.remove(correlation_id));
        let Some(tx) = tx else {
            return false;
        };
        self.awaiting_count.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send(proof);
        true
    }

    /// Takes the messages the broker returned on the unconfirmed `channel` and tells
    /// the publishes waiting for them; returns how many had no correlation id. lapin
    /// only collects the returns of an unconfirmed channel (`wait_for_confirms` hands
    /// them over at once when no confirm is pending).
    fn collect_returns(&self, channel: &Channel) -> usize {
        let Some(Ok(returned)) = channel.wait_for_confirms().now_or_never() else {
            return 0;
        };
        let mut anonymous = 0;
        for r in returned {
            let Some(cid) = r
                .delivery
                .properties
                .correlation_id()
                .as_ref()
                .filter(|c| !c.as_str().is_empty())
            else {
                anonymous += 1;
                continue;
            };
            if !self.prove(cid.as_str(), Proof::Returned) {
                tracing::debug!(correlation_id = %cid.as_str(), "returned message no longer awaited");
            }
        }
        anonymous
    }

    /// Opens a broker connection with its publish channel.
    async fn dial(this: &Arc<Self>) -> Result<Arc<Live>, MeshError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(this.client_name.clone()))
            .with_client_property(ShortString::from("product"), LongString::from("Herald"))
            .with_client_property(
                ShortString::from("version"),
                LongString::from(env!("CARGO_PKG_VERSION")),
            )
            .with_client_property(
                ShortString::from("protocol"),
                LongString::from(crate::message::NUROPB_PROTOCOL),
            );
        let limit = this.options.operation_timeout;
        // The TCP connect and the handshake (lapin has no bound of its own for either).
        let broker = format!("broker {}", redact(&this.url));
        let connect = lapin::Connection::connect(&this.url, props);
        let conn = bounded(limit, "connect", About::Other(&broker), connect)
            .await?
            .map_err(|e| MeshError::Backend {
                backend: BACKEND,
                reason: format!("cannot connect to {}: {e}", redact(&this.url)),
            })?;
        let channels = match PublishChannels::open(
            &conn,
            limit,
            this.options.publisher_confirms,
            this.direct_replies.load(Ordering::SeqCst),
        )
        .await
        {
            Ok(channels) => channels,
            Err(e) => {
                if matches!(e, MeshError::BackendTimeout { .. }) {
                    close_unanswering(Arc::new(conn));
                }
                return Err(e);
            }
        };
        let generation = this.generation.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::spawn(watch_link(
            Arc::downgrade(this),
            generation,
            conn.status().clone(),
            conn.events_listener(),
        ));
        Ok(Arc::new(Live {
            generation,
            conn: Arc::new(conn),
            inner: Arc::downgrade(this),
            operation_timeout: limit,
            abandoned: tokio::sync::watch::Sender::new(false),
            channels: RwLock::new(Arc::new(channels)),
            topology: Mutex::new(None),
            leader: Mutex::new(None),
            confirmed: Arc::new(Mutex::new(None)),
            dead_letters: Mutex::new(None),
            dead_letter_window: tokio::sync::Semaphore::new(DEAD_LETTER_WINDOW),
        }))
    }

    /// Counts the loss of connection `generation` (once, and not after [`close`]).
    ///
    /// [`close`]: Connection::close
    fn note_loss(&self, generation: u64) {
        if self.is_closed()
            || self.lost_generation.fetch_max(generation, Ordering::SeqCst) >= generation
        {
            return;
        }
        tracing::warn!(url = %redact(&self.url), generation, "amqp connection lost");
        self.losses.send_modify(|n| *n += 1);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The live connection, reconnecting (with backoff, bounded by `reconnect_wait`) if
    /// it was lost.
    async fn live(self: &Arc<Self>) -> Result<Arc<Live>, MeshError> {
        if self.is_closed() {
            return Err(MeshError::Disconnected);
        }
        if let Some(live) = self.current()
            && live.is_connected()
        {
            return Ok(live);
        }
        let _guard = self.reconnecting.lock().await;
        if let Some(live) = self.current() {
            if live.is_connected() {
                return Ok(live);
            }
            // Counted before any new connection exists, so that a call registered on
            // the new one is never failed for the loss of the old one.
            if !live.link_up() {
                self.note_loss(live.generation);
            }
            // The connection is fine but the broker closed a publishing channel:
            // reopen the channels rather than the connection.
            if live.link_up() {
                let direct = self.direct_replies.load(Ordering::SeqCst);
                let limit = self.options.operation_timeout;
                let opts = &self.options;
                match PublishChannels::open(&live.conn, limit, opts.publisher_confirms, direct)
                    .await
                {
                    Ok(fresh) => {
                        if let Ok(mut c) = live.channels.write() {
                            *c = Arc::new(fresh);
                        }
                        tracing::info!("amqp publishing channels reopened");
                        return Ok(live);
                    }
                    Err(e) => {
                        if matches!(e, MeshError::BackendTimeout { .. }) {
                            live.abandon(&e);
                        }
                        tracing::warn!(error = %e, "reopening publishing channels failed");
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.options.reconnect_wait;
        let mut delay = self.options.reconnect_initial;
        let mut attempt = 0u32;
        loop {
            if self.is_closed() {
                return Err(MeshError::Disconnected);
            }
            attempt += 1;
            let dialed = match Self::dial(self).await {
                Ok(live) => self.replay(&live).await.map(|()| live),
                Err(e) => Err(e),
            };
            match dialed {
                Ok(live) => {
                    if let Ok(mut cur) = self.current.write() {
                        *cur = Some(live.clone());
                    }
                    tracing::info!(
                        url = %redact(&self.url),
                        attempt,
                        generation = live.generation,
                        "amqp reconnected; topology re-declared"
                    );
                    return Ok(live);
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, ?delay, "amqp reconnect failed");
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(MeshError::Backend {
                            backend: BACKEND,
                            reason: format!(
                                "connection to {} lost and not re-established after {attempt} attempts ({:?}): {e}",
                                redact(&self.url),
                                self.options.reconnect_wait
                            ),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.reconnect_max);
                }
            }
        }
    }

    /// Re-declares everything declared so far on a fresh connection. A declaration
    /// the broker refuses is logged; one it does not answer fails the replay (the
    /// connection is abandoned then, see [`Live::round_trip`]).
    async fn replay(&self, live: &Live) -> Result<(), MeshError> {
        let declared = self.declared.lock().map(|d| d.clone()).unwrap_or_default();
        for item in &declared {
            let res = match item {
                Declared::Exchange(spec) => declare_exchange_on(live, spec).await,
                Declared::Queue(spec) => declare_queue_on(live, spec).await,
            };
            match res {
                Err(e @ MeshError::BackendTimeout { .. }) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "re-declaring after reconnect failed"),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// The dead-letter exchange of `queue`, if it was declared on this connection with
    /// one.
    fn dead_letter_exchange(&self, queue: &str) -> Option<String> {
        let declared = self.declared.lock().ok()?;
        declared.iter().find_map(|d| match d {
            Declared::Queue(q) if q.name == queue => q.dead_letter_exchange.clone(),
            _ => None,
        })
    }

    fn forget_queue(&self, queue: &str) {
        if let Ok(mut declared) = self.declared.lock() {
            declared.retain(|d| !matches!(d, Declared::Queue(q) if q.name == queue));
        }
    }

    fn remember(&self, item: Declared) {
        let Ok(mut declared) = self.declared.lock() else {
            return;
        };
        let same = |d: &Declared| match (d, &item) {
            (Declared::Exchange(a), Declared::Exchange(b)) => a.name == b.name,
            (Declared::Queue(a), Declared::Queue(b)) => a.name == b.name,
            _ => false,
        };
        if let Some(slot) = declared.iter_mut().find(|d| same(d)) {
            *slot = item;
        } else {
            declared.push(item);
        }
    }
}

/// How often [`watch_link`] looks at a connection's state between its events (a
/// connection closed by the broker, or by [`AmqpConnection::simulate_connection_loss`],
/// changes its state without an event).
const LINK_CHECK: Duration = Duration::from_millis(100);

/// Watches one broker connection (generation `generation`) and counts its loss
/// ([`Inner::note_loss`]) as soon as lapin reports it: at once on a connection error
/// (socket closed or reset, missed heartbeats), within [`LINK_CHECK`] otherwise. Ends
/// with the connection, or when the [`AmqpConnection`] is gone.
async fn watch_link(
    inner: std::sync::Weak<Inner>,
    generation: u64,
    status: lapin::ConnectionStatus,
    events: impl futures::Stream<Item = lapin::Event>,
) {
    let mut events = std::pin::pin!(events);
    let mut events_open = true;
    loop {
        tokio::select! {
            event = events.next(), if events_open => events_open = event.is_some(),
            () = tokio::time::sleep(LINK_CHECK) => {}
        }
        let Some(this) = inner.upgrade() else { return };
        if this.is_closed() {
            return;
        }
        if !status.connected() {
            this.note_loss(generation);
            return;
        }
    }
}

fn lapin_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
    }
}

async fn declare_exchange_on(live: &Live, spec: &ExchangeSpec) -> Result<(), MeshError> {
    let about = About::Exchange(&spec.name);
    let ch = live.channel(&live.topology, about).await?;
    let declare = ch.exchange_declare(
        short("exchange name", &spec.name)?,
        lapin_kind(spec.kind),
        ExchangeDeclareOptions {
            durable: spec.durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    );
    live.round_trip("exchange.declare", about, declare).await
}

/// nuropb's queue arguments: `x-dead-letter-exchange` as a long string (what pika
/// sends), plus `x-max-length` for a queue spec with a length bound (the mesh's own
/// queues have none: dead-letter queues are bounded by the leader's trim, see
/// [`Connection::trim_queue`]).
pub fn queue_arguments(spec: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(dlx) = &spec.dead_letter_exchange {
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(dlx.as_str())),
        );
    }
    if let Some(max) = spec.max_length {
        args.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongLongInt(i64::try_from(max).unwrap_or(i64::MAX)),
        );
    }
    args
}

/// Declares the queue `name` passively (it must exist); returns its count of ready
/// messages.
async fn declare_passive(
    live: &Live,
    ch: &lapin::Channel,
    name: ShortString,
    about: About<'_>,
) -> Result<u32, MeshError> {
    let declare = ch.queue_declare(
        name,
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    );
    live.round_trip("queue.declare(passive)", about, declare)
        .await
        .map(|q| q.message_count())
}

async fn declare_queue_on(live: &Live, spec: &QueueSpec) -> Result<(), MeshError> {
    let about = About::Queue(&spec.name);
    let name = short("queue name", &spec.name)?;
    let ch = live.channel(&live.topology, about).await?;
    let declare = ch.queue_declare(
        name.clone(),
        QueueDeclareOptions {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            ..QueueDeclareOptions::default()
        },
        queue_arguments(spec),
    );
    let declared = live.round_trip("queue.declare", about, declare).await;
    if let Err(err) = declared {
        // A dead-letter queue declared with other arguments (an older Herald declared
        // it with `x-max-length`) is used as it is rather than failing the whole
        // connect; the leader's trim still bounds it. nuropb's own declaration of it
        // (no arguments) is refused until it is deleted, hence a warning.
        // (Only a queue bound to the DLX and nothing else: a queue without bindings,
        // such as a response queue, is not one.)
        let is_dl =
            !spec.bindings.is_empty() && spec.bindings.iter().all(|b| b.exchange == DL_EXCHANGE);
        if matches!(err, MeshError::PreconditionFailed { .. }) && is_dl {
            tracing::warn!(
                queue = %spec.name,
                error = %err,
                "the dead-letter queue exists with other arguments (left by an older Herald?); \
                 using it as declared (the leader still trims it). nuropb instances of this \
                 service cannot declare it until it is deleted; once deleted, the next \
                 instance to start re-creates it as nuropb declares it"
            );
            let ch = live.channel(&live.topology, about).await?;
            declare_passive(live, &ch, name.clone(), about).await?;
        } else {
            return Err(err);
        }
    }
    for binding in &spec.bindings {
        let ch = live.channel(&live.topology, about).await?;
        let bind = ch.queue_bind(
            name.clone(),
            short("exchange name", &binding.exchange)?,
            short("routing key", &binding.routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        // A missing exchange is still `NoSuchExchange`: its name comes from the
        // broker's message.
        let what = format!("queue {:?} to exchange {:?}", spec.name, binding.exchange);
        live.round_trip("queue.bind", About::Other(&what), bind)
            .await?;
    }
    Ok(())
}

/// Builds the AMQP properties and header table of `message`, exactly as nuropb 0.1.8
/// publishes them (§3.1 of the spec): `content_type`, `correlation_id`, `reply_to`
/// (empty when none), `expiration` as a decimal string, transient delivery, and the
/// headers `nuropb_protocol`, `nuropb_version`, `nuropb_type`, `trace_id` (void when
/// none) and `encrypted` (`"yes"` or `""`), plus Herald's `herald_deadline` when set.
pub fn amqp_properties(message: &Message) -> Result<BasicProperties, MeshError> {
    let p = &message.properties;
    let h = &message.headers;
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert(
        ShortString::from(header::NUROPB_PROTOCOL),
        text(&h.nuropb_protocol),
    );
    headers.insert(
        ShortString::from(header::NUROPB_VERSION),
        text(&h.nuropb_version),
    );
    headers.insert(ShortString::from(header::NUROPB_TYPE), text(&h.nuropb_type));
    headers.insert(
        ShortString::from(header::TRACE_ID),
        match &h.trace_id {
            Some(t) => text(t),
            None => AMQPValue::Void,
        },
    );
    headers.insert(
        ShortString::from(header::ENCRYPTED),
        text(if h.encrypted { "yes" } else { "" }),
    );
    if let Some(deadline) = h.deadline_ms {
        headers.insert(
            ShortString::from(header::DEADLINE),
            AMQPValue::LongLongInt(i64::try_from(deadline).unwrap_or(i64::MAX)),
        );
    }
    let mut props = BasicProperties::default()
        .with_content_type(short("content_type", &p.content_type)?)
        .with_correlation_id(short("correlation_id", &p.correlation_id)?)
        .with_reply_to(short("reply_to", p.reply_to.as_deref().unwrap_or(""))?)
        .with_headers(headers);
    if let Some(ttl) = p.expiration_ms {
        props = props.with_expiration(ShortString::from(ttl.to_string()));
    }
    Ok(props)
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

fn value_u64(v: &AMQPValue) -> Option<u64> {
    match *v {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

fn first_death(headers: &FieldTable) -> Option<DeathInfo> {
    let map = headers.inner();
    let reason = map
        .get("x-first-death-reason")
        .and_then(value_text)
        .and_then(|r| DeathReason::parse(&r))?;
    let queue = map
        .get("x-first-death-queue")
        .and_then(value_text)
        .unwrap_or_default();
    let exchange = map
        .get("x-first-death-exchange")
        .and_then(value_text)
        .unwrap_or_default();
    let routing_key = match map.get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths
            .as_slice()
            .iter()
            .find_map(|d| match d {
                AMQPValue::FieldTable(t) => match t.inner().get("routing-keys") {
                    Some(AMQPValue::FieldArray(keys)) => {
                        keys.as_slice().first().and_then(value_text)
                    }
                    _ => None,
                },
                _ => None,
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    Some(DeathInfo {
        reason,
        queue,
        exchange,
        routing_key,
        detail: None,
    })
}

/// The longest `x-herald-reason` written (longer reasons are cut at a character
/// boundary): a decode error may quote a header value of any length.
const MAX_REASON_BYTES: usize = 1024;

/// The properties of the copy of a message that Herald dead-letters itself from
/// `queue` (into which it had been published to `exchange` with `routing_key`): those
/// of the original, changed as RabbitMQ's own dead-lettering for reason `rejected`
/// changes them, plus `x-herald-reason: reason`. That is: the `x-death` entry for
/// (`queue`, `rejected`) is counted up and moved first, or a new one is put first
/// (`count` 1, `reason`, `queue`, `time` = `now_secs`, `exchange`, `routing-keys`, and
/// the message's expiration as `original-expiration`); `x-first-death-reason`,
/// `-queue` and `-exchange` are set unless present; the expiration property is
/// removed (a dead letter must not expire again in the dead-letter queue).
fn dead_letter_properties(
    original: &BasicProperties,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    reason: &str,
    now_secs: u64,
) -> BasicProperties {
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut headers = original.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let is_this_death = |d: &AMQPValue| match d {
        AMQPValue::FieldTable(t) => {
            let t = t.inner();
            t.get("queue").and_then(value_text).as_deref() == Some(queue)
                && t.get("reason").and_then(value_text).as_deref() == Some("rejected")
        }
        _ => false,
    };
    let entry = match deaths.iter().position(is_this_death) {
        Some(i) => {
            let mut entry = deaths.remove(i);
            if let AMQPValue::FieldTable(t) = &mut entry {
                let count = t.inner().get("count").and_then(value_u64).unwrap_or(0);
                t.insert(
                    ShortString::from("count"),
                    AMQPValue::LongLongInt(
                        i64::try_from(count.saturating_add(1)).unwrap_or(i64::MAX),
                    ),
                );
            }
            entry
        }
        None => {
            let mut t = FieldTable::default();
            t.insert(ShortString::from("count"), AMQPValue::LongLongInt(1));
            t.insert(ShortString::from("reason"), text("rejected"));
            t.insert(ShortString::from("queue"), text(queue));
            t.insert(ShortString::from("time"), AMQPValue::Timestamp(now_secs));
            t.insert(ShortString::from("exchange"), text(exchange));
            t.insert(
                ShortString::from("routing-keys"),
                AMQPValue::FieldArray(vec![text(routing_key)].into()),
            );
            if let Some(expiration) = original.expiration() {
                t.insert(
                    ShortString::from("original-expiration"),
                    text(expiration.as_str()),
                );
            }
            AMQPValue::FieldTable(t)
        }
    };
    deaths.insert(0, entry);
    headers.insert(
        ShortString::from("x-death"),
        AMQPValue::FieldArray(deaths.into()),
    );
    for (key, value) in [
        ("x-first-death-reason", "rejected"),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", exchange),
    ] {
        if !headers.inner().contains_key(key) {
            headers.insert(ShortString::from(key), text(value));
        }
    }
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    headers.insert(
        ShortString::from(header::HERALD_REASON),
        text(&reason[..end]),
    );
    // Every property of the original but the expiration (the builder cannot unset one).
    type Set = fn(BasicProperties, ShortString) -> BasicProperties;
    let o = original;
    let mut props = BasicProperties::default().with_headers(headers);
    let short_props: [(&Option<ShortString>, Set); 9] = [
        (o.content_type(), BasicProperties::with_content_type),
        (o.content_encoding(), BasicProperties::with_content_encoding),
        (o.correlation_id(), BasicProperties::with_correlation_id),
        (o.reply_to(), BasicProperties::with_reply_to),
        (o.message_id(), BasicProperties::with_message_id),
        (o.kind(), BasicProperties::with_type),
        (o.user_id(), BasicProperties::with_user_id),
        (o.app_id(), BasicProperties::with_app_id),
        (o.cluster_id(), BasicProperties::with_cluster_id),
    ];
    for (value, set) in short_props {
        if let Some(v) = value {
            props = set(props, v.clone());
        }
    }
    if let Some(v) = *o.delivery_mode() {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = *o.priority() {
        props = props.with_priority(v);
    }
    if let Some(v) = *o.timestamp() {
        props = props.with_timestamp(v);
    }
    props
}

/// Turns an AMQP delivery (properties + body) into a [`Message`]. Never fails: missing
/// headers become empty strings so that [`Headers::message_type`] reports them, a
/// `trace_id` may be void, a non-numeric `expiration` is ignored, and dead-lettered
/// messages get their [`DeathInfo`] from RabbitMQ's `x-first-death-*` / `x-death` headers.
pub fn message_from_amqp(props: &BasicProperties, body: Vec<u8>) -> Message {
    let empty = FieldTable::default();
    let table = props.headers().as_ref().unwrap_or(&empty);
    let map = table.inner();
    let get = |k: &str| map.get(k).and_then(value_text).unwrap_or_default();
    let headers = Headers {
        nuropb_protocol: Cow::Owned(get(header::NUROPB_PROTOCOL)),
        nuropb_version: Cow::Owned(get(header::NUROPB_VERSION)),
        nuropb_type: Cow::Owned(get(header::NUROPB_TYPE)),
        trace_id: map.get(header::TRACE_ID).and_then(value_text),
        encrypted: map
            .get(header::ENCRYPTED)
            .and_then(value_text)
            .is_some_and(|v| v == "yes"),
        deadline_ms: map.get(header::DEADLINE).and_then(value_u64),
    };
    let properties = Properties {
        content_type: Cow::Owned(
            props
                .content_type()
                .as_ref()
                .map_or(CONTENT_TYPE_JSON, |c| c.as_str())
                .to_owned(),
        ),
        correlation_id: props
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        reply_to: props
            .reply_to()
            .as_ref()
            .map(|r| r.as_str())
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        expiration_ms: props
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok()),
        mandatory: false,
        confirm: false,
    };
    let death = first_death(table).map(|mut death| {
        death.detail = map.get(header::HERALD_REASON).and_then(value_text);
        death
    });
    Message {
        properties,
        headers,
        payload: Payload::Bytes(Bytes::from(body)),
        death,
    }
}

/// Fuzzing entry point: `data` is a big-endian `u16` length, that many bytes of an AMQP
/// basic-properties encoding (as in a content header frame), then the body. Decodes it
/// the way an incoming delivery is decoded, then validates the headers and parses the
/// JSON body. Must never panic.
pub fn fuzz_decode(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (props_bytes, body) = rest.split_at(len.min(rest.len()));
    let Ok((_, props)) = lapin::protocol::basic::parse_properties(props_bytes) else {
        return;
    };
    let message = message_from_amqp(&props, body.to_vec());
    let _ = message.headers.message_type();
    if message.headers.encrypted {
        let key = crate::crypto::FernetKey::from_bytes([7; 32]);
        let _ = crate::crypto::open_reply(body, &key);
    } else if let Ok(env) = message.payload.envelope() {
        let _ = env.correlation_id();
    }
    // Round trip what was decoded.
    if let Ok(props) = amqp_properties(&message) {
        let again = message_from_amqp(&props, body.to_vec());
        debug_assert_eq!(
            again.properties.correlation_id,
            message.properties.correlation_id
        );
    }
}

/// Encodes `message`'s properties in the AMQP basic-properties wire format, prefixed
/// with their `u16` length and followed by `body`: the input format of [`fuzz_decode`]
/// (used to build the fuzz seed corpus).
pub fn fuzz_seed(message: &Message, body: &[u8]) -> Result<Vec<u8>, MeshError> {
    fn shortstr(out: &mut Vec<u8>, s: &str) {
        let b = &s.as_bytes()[..s.len().min(255)];
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }
    fn value(out: &mut Vec<u8>, v: &AMQPValue) {
        match v {
            AMQPValue::LongString(s) => {
                out.push(b'S');
                out.extend_from_slice(&(s.as_bytes().len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            AMQPValue::LongLongInt(n) => {
                out.push(b'l');
                out.extend_from_slice(&n.to_be_bytes());
            }
            _ => out.push(b'V'),
        }
    }
    let props = amqp_properties(message)?;
    let mut flags: u16 = 0;
    let mut fields = Vec::new();
    if let Some(ct) = props.content_type() {
        flags |= 1 << 15;
        shortstr(&mut fields, ct.as_str());
    }
    if let Some(headers) = props.headers() {
        flags |= 1 << 13;
        let mut table = Vec::new();
        for (k, v) in headers.inner() {
            shortstr(&mut table, k.as_str());
            value(&mut table, v);
        }
        fields.extend_from_slice(&(table.len() as u32).to_be_bytes());
        fields.extend_from_slice(&table);
    }
    if let Some(c) = props.correlation_id() {
        flags |= 1 << 10;
        shortstr(&mut fields, c.as_str());
    }
    if let Some(r) = props.reply_to() {
        flags |= 1 << 9;
        shortstr(&mut fields, r.as_str());
    }
    if let Some(e) = props.expiration() {
        flags |= 1 << 8;
        shortstr(&mut fields, e.as_str());
    }
    let len = fields.len() + 2;
    let len = u16::try_from(len).map_err(|_| MeshError::Encode {
        what: "AMQP properties",
        reason: format!("{len} bytes do not fit the u16 length prefix"),
    })?;
    let mut out = Vec::with_capacity(2 + usize::from(len) + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&fields);
    out.extend_from_slice(body);
    Ok(out)
}

/// The deliveries of one consumer channel that are not settled yet. A stopped consumer
/// keeps its channel open until they are: closing it would make the broker requeue
/// them, and the requests still being finished would then run a second time.
#[derive(Debug, Default)]
struct Unsettled {
    /// The generation of the connection the channel is on ([`Live::generation`]).
    generation: u64,
    /// The consumer's channel (`None` for the direct reply-to consumer, which settles
    /// nothing): a delivery whose channel closed cannot be acked any more.
    channel: Option<Channel>,
    count: AtomicUsize,
    settled: tokio::sync::Notify,
    /// The consumer was stopped and its channel is to be closed: acks wait until lapin
    /// has sent them (its close would otherwise overtake them).
    closing: AtomicBool,
}

impl Unsettled {
    /// The (still empty) count of `channel`, on the connection of `generation`.
    fn on(generation: u64, channel: &Channel) -> Arc<Self> {
        Arc::new(Self {
            generation,
            channel: Some(channel.clone()),
            ..Self::default()
        })
    }

    /// Whether a delivery of this channel can still be acked: its connection is the
    /// live one (`live_generation`) and the channel itself is open.
    fn can_settle_on(&self, live_generation: u64) -> bool {
        self.generation == live_generation
            && self
                .channel
                .as_ref()
                .is_some_and(|c| c.status().connected())
    }

    /// Resolves once no delivery of the channel is unsettled.
    async fn drained(&self) {
        loop {
            let mut notified = std::pin::pin!(self.settled.notified());
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One unsettled delivery's share of an [`Unsettled`] count, released when the
/// delivery is settled (or handed back).
#[derive(Debug)]
struct UnsettledGuard(Arc<Unsettled>);

impl UnsettledGuard {
    fn new(unsettled: &Arc<Unsettled>) -> Self {
        unsettled.count.fetch_add(1, Ordering::SeqCst);
        Self(unsettled.clone())
    }
}

impl Drop for UnsettledGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// Settles one lapin delivery exactly once; dropping it unsettled requeues it.
struct AmqpAcker {
    acker: Option<lapin::Acker>,
    queue: String,
    unsettled: Option<UnsettledGuard>,
    /// The connection, and what the delivery arrived with besides its body: what
    /// [`Acker::dead_letter`] needs to publish the dead-letter copy.
    inner: Arc<Inner>,
    original: Original,
}

/// What a delivery arrived with, besides its body.
struct Original {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
}

impl fmt::Debug for AmqpAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpAcker")
            .field("queue", &self.queue)
            .field("settled", &self.acker.is_none())
            .finish()
    }
}

fn settle_err(op: &str, queue: &str, e: &dyn fmt::Display) -> MeshError {
    MeshError::Backend {
        backend: BACKEND,
        reason: format!("{op} on a delivery from {queue:?} failed (it will be redelivered): {e}"),
    }
}

/// lapin's answer to a settlement: `Ok(false)` means that it was not sent (the channel
/// is closed or failed), so the broker redelivers the message: not a success.
fn settled(op: &str, queue: &str, r: lapin::Result<bool>) -> Result<(), MeshError> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(settle_err(op, queue, &"its channel is closed")),
        Err(e) => Err(settle_err(op, queue, &e)),
    }
}

impl Acker for AmqpAcker {
    /// Publishes a copy of the message with `reason` to the queue's dead-letter
    /// exchange (see the [module docs](self)), then acks the delivery; rejects it
    /// instead when the copy is not confirmed.
    fn dead_letter(
        self: Box<Self>,
        message: Box<Message>,
        reason: String,
    ) -> BackendFuture<'static, Result<(), MeshError>> {
        let dlx = self.inner.dead_letter_exchange(&self.queue);
        // On a lost connection or channel the delivery is redelivered whatever is done
        // here: no copy (there would be two dead letters), also when the link is already
        // up again (a new connection or channel, on which this delivery's ack cannot go).
        let live = self.inner.current().filter(|live| {
            live.is_connected()
                && self
                    .unsettled
                    .as_ref()
                    .is_some_and(|u| u.0.can_settle_on(live.generation))
        });
        let (Some(dlx), Some(live), Some(_)) = (dlx, live, self.acker.as_ref()) else {
            tracing::debug!(queue = %self.queue, reason = %reason, "dead-lettered without its reason (no dead-letter exchange known, or no connection)");
            return self.reject(false);
        };
        later(async move {
            let copy = dead_letter_copy(&self, &message, &dlx, &reason);
            drop(message);
            let published = match copy {
                Ok(outgoing) => publish_dead_letter(&live, outgoing).await,
                Err(e) => Err(e),
            };
            match published {
                Ok(()) => self.ack().await,
                Err(e) => {
                    tracing::warn!(queue = %self.queue, dead_letter_exchange = %dlx, error = %e, "publishing a dead letter with its reason failed; rejected without it");
                    self.reject(false).await
                }
            }
        })
    }

    /// Resolves once the ack is handed to the connection, without waiting for lapin's
    /// I/O thread to write it: that wait only woke the settling task (a thread switch
    /// per request) to learn that the write went out. An ack refused at once (its
    /// channel is gone) is still an error; one lost later with the connection is not
    /// reported, and the broker redelivers that message either way.
    fn ack(mut self: Box<Self>) -> BackendFuture<'static, Result<(), MeshError>> {
        let acker = self.acker.take();
        let queue = std::mem::take(&mut self.queue);
        let unsettled = self.unsettled.take();
        let inner = self.inner.clone();
        later(async move {
            if let Some(a) = acker {
                let mut ack: PendingAck =
                    Box::pin(async move { a.ack(BasicAckOptions::default()).await });
                let closing = unsettled
                    .as_ref()
                    .is_some_and(|u| u.0.closing.load(Ordering::SeqCst));
                if closing {
                    let limit = inner.options.operation_timeout;
                    let done = bounded(limit, "basic.ack", About::Queue(&queue), ack).await?;
                    settled("basic.ack", &queue, done)?;
                } else {
                    let polled = ack
                        .as_mut()
                        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                    match polled {
                        std::task::Poll::Ready(r) => settled("basic.ack", &queue, r)?,
                        // Handed to lapin; closes wait for it.
                        std::task::Poll::Pending => inner.keep_ack(ack),
                    }
                }
            }
            drop(unsettled);
            Ok(())
        })
    }

    fn reject(mut self: Box<Self>, requeue: bool) -> BackendFuture<'static, Result<(), MeshError>> {
        let acker = self.acker.take();
        let queue = std::mem::take(&mut self.queue);
        let unsettled = self.unsettled.take();
        let limit = self.inner.options.operation_timeout;
        later(async move {
            if let Some(a) = acker {
                let reject = a.reject(BasicRejectOptions { requeue });
                let r = bounded(limit, "basic.reject", About::Queue(&queue), reject).await?;
                settled("basic.reject", &queue, r)?;
            }
            drop(unsettled);
            Ok(())
        })
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        tracing::debug!(queue = %self.queue, "unsettled delivery dropped; requeueing it");
        let unsettled = self.unsettled.take();
        let limit = self.inner.options.operation_timeout;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let nack = acker.nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                });
                let _ = bounded(
                    limit,
                    "basic.nack",
                    About::Other("a dropped delivery"),
                    nack,
                )
                .await;
                drop(unsettled);
            });
        }
        // Without a runtime the channel close requeues it.
    }
}

/// The dead-letter copy of `message`, delivered from `acker`'s queue, for exchange
/// `dlx` (not mandatory: the broker's own dead-lettering is not either).
fn dead_letter_copy(
    acker: &AmqpAcker,
    message: &Message,
    dlx: &str,
    reason: &str,
) -> Result<Outgoing, MeshError> {
    let original = &acker.original;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let props = dead_letter_properties(
        &original.properties,
        &acker.queue,
        original.exchange.as_str(),
        original.routing_key.as_str(),
        reason,
        now_secs,
    );
    Ok(Outgoing {
        exchange: (dlx.to_owned(), short("exchange name", dlx)?),
        routing_key: (
            original.routing_key.as_str().to_owned(),
            original.routing_key.clone(),
        ),
        mandatory: false,
        body: message.payload.to_bytes()?,
        props,
    })
}

fn to_delivery(
    inner: &Arc<Inner>,
    queue: &str,
    d: LapinDelivery,
    auto_ack: bool,
    unsettled: &Arc<Unsettled>,
) -> Delivery {
    let LapinDelivery {
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        acker,
        ..
    } = d;
    let message = message_from_amqp(&properties, data);
    let acker: Option<Box<dyn Acker>> = if auto_ack {
        None
    } else {
        Some(Box::new(AmqpAcker {
            acker: Some(acker),
            queue: queue.to_owned(),
            unsettled: Some(UnsettledGuard::new(unsettled)),
            inner: inner.clone(),
            original: Original {
                exchange,
                routing_key,
                properties,
            },
        }))
    };
    Delivery::new(message, redelivered, acker)
}

/// Opens a consumer channel and starts consuming.
async fn start_consumer(
    live: &Live,
    queue: &str,
    options: ConsumeOptions,
) -> Result<(Channel, lapin::Consumer), MeshError> {
    let about = About::Queue(queue);
    let ch = live.open_channel(about).await?;
    if !options.auto_ack {
        let qos = ch.basic_qos(options.prefetch, BasicQosOptions::default());
        live.round_trip("basic.qos", about, qos).await?;
    }
    let consume = ch.basic_consume(
        short("queue name", queue)?,
        ShortString::from(""),
        BasicConsumeOptions {
            no_ack: options.auto_ack,
            exclusive: options.exclusive,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    );
    let consumer = live.round_trip("basic.consume", about, consume).await?;
    Ok((ch, consumer))
}

/// The state behind one [`DeliveryStream`]: the current lapin consumer, restarted on a
/// new connection after a loss. Polling the stream polls the lapin consumer directly (no
/// forwarding task in between).
struct ConsumerState {
    inner: Arc<Inner>,
    queue: String,
    options: ConsumeOptions,
    /// The direct reply-to consumer of the publishing channels (which it must neither
    /// cancel nor close), not a consumer on a channel of its own.
    direct: bool,
    current: Option<(Channel, lapin::Consumer)>,
    /// Whether the connection of the current consumer was abandoned ([`Live::abandon`]):
    /// lapin would keep the consumer open, and silent, until it noticed the loss.
    abandoned: tokio::sync::watch::Receiver<bool>,
    /// The unsettled deliveries of the current consumer's channel.
    unsettled: Arc<Unsettled>,
}

impl Drop for ConsumerState {
    fn drop(&mut self) {
        let Some((ch, consumer)) = self.current.take() else {
            return;
        };
        if self.inner.is_closed() || self.direct {
            return;
        }
        // The stream was dropped: cancel the consumer (no new deliveries), let the
        // deliveries still being handled be settled on the channel they came on, then
        // close it, which requeues only what was never handed out (still buffered in the
        // consumer). Closing it at once would requeue the in-flight ones too, and a
        // graceful shutdown would have them run twice.
        let unsettled = self.unsettled.clone();
        let inner = self.inner.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                // From now on acks are sent before they count as settled; those handed
                // over before are awaited below, before the close.
                unsettled.closing.store(true, Ordering::SeqCst);
                let cancel = ch.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                let limit = inner.options.operation_timeout;
                let about = About::Other("a dropped consumer");
                let _ = bounded(limit, "basic.cancel", about, cancel).await;
                drop(consumer);
                // Bounded by the connection: once it is closed or lost, the channel is
                // gone and there is nothing left to wait for.
                while !inner.is_closed() && ch.status().connected() {
                    let drained = unsettled.drained();
                    if tokio::time::timeout(Duration::from_millis(200), drained)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                inner.acks_finished().await;
                close_bounded(
                    "consumer channel",
                    ch.close(200, ShortString::from("consumer dropped")),
                )
                .await;
            });
        }
    }
}

impl ConsumerState {
    /// The next delivery, re-consuming (with backoff) after the connection or channel was
    /// lost; `None` once the connection is closed.
    async fn next(&mut self) -> Option<Delivery> {
        let mut delay = self.inner.options.reconnect_initial;
        loop {
            if self.inner.is_closed() {
                self.current = None;
                return None;
            }
            if let Some((_, consumer)) = self.current.as_mut() {
                let next = tokio::select! {
                    biased;
                    next = consumer.next() => next,
                    // Abandoned, or gone (replaced after a loss, or closed): re-consume
                    // (or end, once closed).
                    gone = self.abandoned.wait_for(|gone| *gone) => {
                        if gone.is_ok() {
                            tracing::warn!(queue = %self.queue, "the consumer's connection was given up; re-consuming");
                        }
                        None
                    }
                };
                match next {
                    Some(Ok(d)) => {
                        if self.options.auto_ack {
                            self.inner.reply_seen(&d);
                        }
                        return Some(to_delivery(
                            &self.inner,
                            &self.queue,
                            d,
                            self.options.auto_ack,
                            &self.unsettled,
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(queue = %self.queue, error = %e, "consumer error");
                        self.current = None;
                    }
                    None => self.current = None,
                }
                continue;
            }
            // The consumer ended: connection or channel lost, or cancelled by the broker.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.inner.options.reconnect_max);
            if self.direct {
                match self.inner.live().await {
                    Ok(live) => {
                        let direct = live
                            .channels()
                            .and_then(|c| Some((c.unconfirmed.clone(), c.direct.clone()?)));
                        if direct.is_some() {
                            tracing::info!(
                                generation = live.generation,
                                "direct reply-to consumer restarted"
                            );
                            self.current = direct;
                            self.abandoned = live.abandoned.subscribe();
                            delay = self.inner.options.reconnect_initial;
                        }
                    }
                    Err(MeshError::Disconnected) => return None,
                    Err(e) => tracing::warn!(error = %e, "still reconnecting"),
                }
                continue;
            }
            match self.inner.live().await {
                Ok(live) => match start_consumer(&live, &self.queue, self.options).await {
                    Ok(c) => {
                        tracing::info!(queue = %self.queue, generation = live.generation, "consumer restarted");
                        self.unsettled = Unsettled::on(live.generation, &c.0);
                        self.current = Some(c);
                        self.abandoned = live.abandoned.subscribe();
                        delay = self.inner.options.reconnect_initial;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "re-consuming failed")
                    }
                },
                Err(MeshError::Disconnected) => return None,
                Err(e) => tracing::warn!(queue = %self.queue, error = %e, "still reconnecting"),
            }
        }
    }
}

fn consumer_stream(state: ConsumerState) -> DeliveryStream {
    let stream =
        futures::stream::unfold(
            state,
            |mut st| async move { st.next().await.map(|d| (d, st)) },
        );
    Box::pin(stream)
}

impl AmqpConnection {
    /// Whether a `mandatory` message published unconfirmed on `channel` was routed:
    /// yes once its reply is seen (`proof`), no once the broker returned it. If neither
    /// has happened yet, a `basic.qos` round trip on the same channel decides: the
    /// broker sends a message's `basic.return` while routing it, so before it answers
    /// any later method on that channel.
    async fn routed_unconfirmed(
        &self,
        live: &Live,
        channel: &Channel,
        proof: Option<ReplyProof>,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), MeshError> {
        let unroutable = || MeshError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        };
        let decided = |p: Result<Proof, oneshot::error::RecvError>| match p {
            Ok(Proof::Returned) => Err(unroutable()),
            // Replied, or nobody can tell any more (the registration is gone).
            _ => Ok(()),
        };
        let Some(mut proof) = proof else {
            // No correlation id to match a return with: the round trip, then any
            // return without one is taken as this message's.
            self.sync_after_publish(live, channel, exchange).await?;
            return match self.inner.collect_returns(channel) {
                0 => Ok(()),
                _ => Err(unroutable()),
            };
        };
        if let Some(p) = (&mut proof.rx).now_or_never() {
            return decided(p);
        }
        self.inner.collect_returns(channel);
        if let Some(p) = (&mut proof.rx).now_or_never() {
            return decided(p);
        }
        tokio::select! {
            biased;
            p = &mut proof.rx => return decided(p),
            r = self.sync_after_publish(live, channel, exchange) => r?,
        }
        self.inner.collect_returns(channel);
        match (&mut proof.rx).now_or_never() {
            Some(p) => decided(p),
            None => Ok(()),
        }
    }
}

/// What the broker's publisher confirm says about a message published to `exchange`
/// with `routing_key`: taken (`Ok`), returned unroutable ([`MeshError::Unroutable`]), or
/// refused (`nack`); or the error of waiting for it.
fn confirmed_outcome(
    confirmation: Result<Confirmation, MeshError>,
    exchange: &str,
    routing_key: &str,
) -> Result<(), MeshError> {
    match confirmation? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_returned)) | Confirmation::Nack(Some(_returned)) => {
            Err(MeshError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            })
        }
        Confirmation::Nack(None) => Err(MeshError::Backend {
            backend: BACKEND,
            reason: format!(
                "the broker refused (nack) a message to exchange {exchange:?} with routing key {routing_key:?}"
            ),
        }),
    }
}

/// A message ready to publish: where to (names for errors, and as AMQP strings), the
/// `mandatory` flag, the body and the AMQP properties.
struct Outgoing {
    exchange: (String, ShortString),
    routing_key: (String, ShortString),
    mandatory: bool,
    body: Bytes,
    props: BasicProperties,
}

/// `basic.publish` of one message on `channel` (never `immediate`, which RabbitMQ
/// refuses); resolves once lapin wrote it, with the confirm to await if the channel
/// is in confirm mode.
#[allow(clippy::too_many_arguments)]
async fn basic_publish(
    live: &Live,
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    body: &[u8],
    props: BasicProperties,
    about: About<'_>,
) -> Result<lapin::PublisherConfirm, MeshError> {
    let publish = channel.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions {
            mandatory,
            immediate: false,
        },
        body,
        props,
    );
    live.round_trip("basic.publish", about, publish).await
}

/// Publishes a message that asks for a confirm ([`Properties::confirm`]) on `live`'s
/// channel for them, alone (see the [module docs](self)), and waits for the confirm.
/// Once its turn has come, the publish and the wait run on a task of their own, so a
/// caller that gives up does not end the turn before the confirm is in (the next
/// publish could otherwise be handed this one's returned message).
async fn publish_alone(live: Arc<Live>, outgoing: Outgoing) -> Result<(), MeshError> {
    let mut turn = live.confirmed.clone().lock_owned().await;
    let publish = tokio::spawn(async move {
        let channel = live
            .confirm_channel(&mut turn, About::Other("confirmed channel"))
            .await?;
        publish_confirmed(&live, &channel, outgoing).await
    });
    publish.await.unwrap_or_else(|e| {
        Err(MeshError::Backend {
            backend: BACKEND,
            reason: format!("a confirmed publish ended without an outcome: {e}"),
        })
    })
}

/// Publishes the dead-letter copy of a delivery ([`Acker::dead_letter`]) on `live`'s
/// channel for them and waits for its confirm. Copies are not `mandatory` (nothing
/// comes back as a return whose publish could be mistaken), so they are pipelined:
/// up to [`DEAD_LETTER_WINDOW`] are published and awaiting their confirms at once
/// (each waits for a permit before its publish and holds it until its confirm is in),
/// and a backlog of dead letters drains without a confirm round trip per message.
async fn publish_dead_letter(live: &Live, outgoing: Outgoing) -> Result<(), MeshError> {
    let _in_flight = live
        .dead_letter_window
        .acquire()
        .await
        .map_err(|e| MeshError::Backend {
            backend: BACKEND,
            reason: format!("the window of dead-letter copies is closed: {e}"),
        })?;
    let channel = {
        let mut slot = live.dead_letters.lock().await;
        live.confirm_channel(&mut slot, About::Other("dead-letter channel"))
            .await?
    };
    publish_confirmed(live, &channel, outgoing).await
}

/// Publishes `outgoing` on `channel` (in confirm mode) and reads its confirm.
async fn publish_confirmed(
    live: &Live,
    channel: &Channel,
    outgoing: Outgoing,
) -> Result<(), MeshError> {
    let Outgoing {
        exchange: (exchange, exchange_s),
        routing_key: (routing_key, key_s),
        mandatory,
        body,
        props,
    } = outgoing;
    let about = About::Exchange(&exchange);
    let confirm = basic_publish(
        live, channel, exchange_s, key_s, mandatory, &body, props, about,
    )
    .await?;
    let confirmation = live.round_trip("publisher confirm", about, confirm).await;
    confirmed_outcome(confirmation, &exchange, &routing_key)
}

/// One synchronous round trip on a publishing channel (`basic.qos` with no limit;
/// there is no consumer on it to limit).
async fn sync_channel(channel: &Channel) -> Result<(), lapin::Error> {
    channel.basic_qos(0, BasicQosOptions::default()).await
}

impl AmqpConnection {
    /// [`sync_channel`] after a publish to `exchange`, with the broker's reason when
    /// the publish made it close the channel.
    async fn sync_after_publish(
        &self,
        live: &Live,
        channel: &Channel,
        exchange: &str,
    ) -> Result<(), MeshError> {
        let about = About::Exchange(exchange);
        let Err(e) = live
            .within("basic.qos", about, sync_channel(channel))
            .await?
        else {
            return Ok(());
        };
        if !matches!(e.kind(), ErrorKind::InvalidChannelState(..)) {
            return Err(map_err("basic.qos", about, &e));
        }
        // The broker closed the channel after the publish and before the round trip
        // was sent: lapin keeps the broker's reason to itself then, so ask the broker
        // again, on a channel of its own, whether the exchange exists (the usual
        // reason).
        match self.exchange_missing(exchange).await {
            Some(missing) => Err(missing),
            None => Err(map_err("basic.qos", about, &e)),
        }
    }

    /// [`MeshError::NoSuchExchange`] if the broker says that `exchange` does not
    /// exist; `None` when it does, or when asking fails.
    async fn exchange_missing(&self, exchange: &str) -> Option<MeshError> {
        if exchange.is_empty() {
            return None;
        }
        let live = self.inner.live().await.ok()?;
        let about = About::Exchange(exchange);
        let probe = live.open_channel(about).await.ok()?;
        let declare = probe.exchange_declare(
            ShortString::from(exchange),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        );
        match live
            .round_trip("exchange.declare(passive)", about, declare)
            .await
        {
            Ok(()) => {
                close_bounded("probe channel", probe.close(200, ShortString::from("done"))).await;
                None
            }
            Err(missing @ MeshError::NoSuchExchange { .. }) => Some(missing),
            Err(_) => None,
        }
    }
}

impl Connection for AmqpConnection {
    fn declare_exchange<'a>(
        &'a self,
        spec: &'a ExchangeSpec,
    ) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            let live = self.inner.live().await?;
            declare_exchange_on(&live, spec).await?;
            self.inner.remember(Declared::Exchange(spec.clone()));
            Ok(())
        })
    }

    fn declare_queue<'a>(&'a self, spec: &'a QueueSpec) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            let live = self.inner.live().await?;
            declare_queue_on(&live, spec).await?;
            self.inner.remember(Declared::Queue(spec.clone()));
            Ok(())
        })
    }

    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        message: Message,
    ) -> BackendFuture<'a, Result<(), MeshError>> {
        later(async move {
            let body = message.payload.to_bytes()?;
            let max = self.inner.options.max_message_bytes;
            if body.len() > max {
                return Err(MeshError::InvalidArgument {
                    what: "message body",
                    value: format!("{} bytes", body.len()),
                    reason: format!(
                        "exceeds the {max}-byte limit (AmqpOptions::max_message_bytes)"
                    ),
                });
            }
            let props = amqp_properties(&message)?;
            let exchange_s = short("exchange name", exchange)?;
            let key_s = short("routing key", routing_key)?;
            let live = self.inner.live().await?;
            let outcome = async {
                if message.properties.confirm {
                    let outgoing = Outgoing {
                        exchange: (exchange.to_owned(), exchange_s),
                        routing_key: (routing_key.to_owned(), key_s),
                        mandatory: message.properties.mandatory,
                        body,
                        props,
                    };
                    return publish_alone(live.clone(), outgoing).await;
                }
                let about = About::Exchange(exchange);
                let opts = &self.inner.options;
                let mandatory = message.properties.mandatory;
                let confirmed = !mandatory
                    && opts.publisher_confirms
                    && (opts.confirm_replies || !exchange.is_empty());
                // A call's reply proves that it was routed, its return that it was not.
                let reply_proof = (mandatory && !message.properties.correlation_id.is_empty())
                    .then(|| ReplyProof::register(&self.inner, &message.properties.correlation_id));
                let channels = live.channels().ok_or(MeshError::Disconnected)?;
                let channel = if confirmed {
                    &channels.publish
                } else {
                    &channels.unconfirmed
                };
                let confirm = basic_publish(
                    &live, channel, exchange_s, key_s, mandatory, &body, props, about,
                )
                .await?;
                if !confirmed {
                    drop(confirm);
                    if !mandatory {
                        return Ok(());
                    }
                    return self
                        .routed_unconfirmed(
                            &live,
                            &channels.unconfirmed,
                            reply_proof,
                            exchange,
                            routing_key,
                        )
                        .await;
                }
                let confirmation = live.round_trip("publisher confirm", about, confirm).await;
                confirmed_outcome(confirmation, exchange, routing_key)
            }
            .await;
            // A publish that fails because the link broke: the loss is counted before
            // the caller hears of the failure (see `Mesh`'s `ConnectionLost`).
            if outcome.is_err() && !live.conn.status().connected() {
                self.inner.note_loss(live.generation);
            }
            outcome
        })
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, MeshError>> {
        Box::pin(async move {
            let live = self.inner.live().await?;
            let current = start_consumer(&live, queue, options).await?;
            let unsettled = Unsettled::on(live.generation, &current.0);
            let state = ConsumerState {
                inner: self.inner.clone(),
                queue: queue.to_owned(),
                options,
                direct: false,
                current: Some(current),
                abandoned: live.abandoned.subscribe(),
                unsettled,
            };
            Ok(consumer_stream(state))
        })
    }

    fn consume_direct_replies(
        &self,
    ) -> BoxFuture<'_, Result<Option<(String, DeliveryStream)>, MeshError>> {
        Box::pin(async move {
            let live = self.inner.live().await?;
            let current = {
                // Under the reconnect lock: nothing reopens the channels meanwhile.
                let _guard = self.inner.reconnecting.lock().await;
                self.inner.direct_replies.store(true, Ordering::SeqCst);
                let channels = live.channels().ok_or(MeshError::Disconnected)?;
                let consumer = match &channels.direct {
                    Some(c) => c.clone(),
                    None => {
                        let limit = self.inner.options.operation_timeout;
                        let consumer = match consume_direct(&channels.unconfirmed, limit).await {
                            Ok(consumer) => consumer,
                            Err(e) => {
                                if matches!(e, MeshError::BackendTimeout { .. }) {
                                    live.abandon(&e);
                                }
                                return Err(e);
                            }
                        };
                        let with = PublishChannels {
                            direct: Some(consumer.clone()),
                            ..(*channels).clone()
                        };
                        if let Ok(mut c) = live.channels.write() {
                            *c = Arc::new(with);
                        }
                        consumer
                    }
                };
                (channels.unconfirmed.clone(), consumer)
            };
            let state = ConsumerState {
                inner: self.inner.clone(),
                queue: DIRECT_REPLY_TO.to_owned(),
                options: ConsumeOptions::exclusive_auto_ack(),
                direct: true,
                current: Some(current),
                abandoned: live.abandoned.subscribe(),
                unsettled: Arc::default(),
            };
            Ok(Some((DIRECT_REPLY_TO.to_owned(), consumer_stream(state))))
        })
    }

    fn try_lead<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<bool, MeshError>> {
        Box::pin(async move {
            let live = self.inner.live().await?;
            let queue = leader_queue(service);
            let about = About::Queue(&queue);
            let ch = live.channel(&live.leader, about).await?;
            let declare = ch.queue_declare(
                short("queue name", &queue)?,
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            );
            match live
                .round_trip("queue.declare(exclusive)", about, declare)
                .await
            {
                Ok(_) => Ok(true),
                Err(MeshError::ExclusiveInUse { .. }) => Ok(false),
                Err(other) => Err(other),
            }
        })
    }

    fn trim_queue<'a>(
        &'a self,
        queue: &'a str,
        max_len: usize,
        max_drop: usize,
    ) -> BoxFuture<'a, Result<Trimmed, MeshError>> {
        Box::pin(self.trim(queue, max_len, max_drop))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), MeshError>> {
        Box::pin(async move {
            if self.inner.closed.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            // Acks already handed over go out before the close.
            self.inner.acks_finished().await;
            let live = self.inner.current.write().ok().and_then(|mut c| c.take());
            // Best effort: the broker drops our channels, requeues unsettled deliveries
            // and deletes auto-delete/exclusive queues either way.
            if let Some(live) = live
                && live.conn.status().connected()
            {
                close_bounded(
                    "connection",
                    live.conn.close(200, ShortString::from("herald: closing")),
                )
                .await;
            }
            Ok(())
        })
    }

    fn is_open(&self) -> bool {
        !self.inner.is_closed()
    }

    fn forget_queue(&self, queue: &str) {
        self.inner.forget_queue(queue);
    }

    fn is_connected(&self) -> bool {
        !self.inner.is_closed() && self.inner.current().is_some_and(|live| live.link_up())
    }

    fn link_losses(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.losses.subscribe())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::{Envelope, MessageType, RequestBody};

    fn request() -> Message {
        let mut m = Message::from_envelope(Envelope::Request(RequestBody {
            service: "svc".into(),
            method: "add".into(),
            params: serde_json::Map::new(),
            correlation_id: "c0ffee".into(),
            context: serde_json::json!({}),
            trace_id: None,
        }));
        m.properties.reply_to = Some("nuropb-x-1-rq".into());
        m.properties.expiration_ms = Some(1500);
        m.properties.mandatory = true;
        m
    }

    #[test]
    fn properties_match_nuropb_and_round_trip() {
        let m = request();
        let props = amqp_properties(&m).unwrap();
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "1500");
        assert!(
            props.delivery_mode().is_none(),
            "nuropb messages are transient"
        );
        let h = props.headers().as_ref().unwrap().inner();
        assert_eq!(h.get("trace_id"), Some(&AMQPValue::Void));
        assert_eq!(
            h.get("nuropb_protocol"),
            Some(&AMQPValue::LongString("0.1.1".into()))
        );
        assert_eq!(h.get("encrypted"), Some(&AMQPValue::LongString("".into())));
        let back = message_from_amqp(&props, b"{}".to_vec());
        assert_eq!(back.headers.message_type().unwrap(), MessageType::Request);
        assert_eq!(back.properties.correlation_id, "c0ffee");
        assert_eq!(back.properties.reply_to.as_deref(), Some("nuropb-x-1-rq"));
        assert_eq!(back.properties.expiration_ms, Some(1500));
        assert_eq!(back.headers.trace_id, None);
    }

    #[test]
    fn missing_headers_decode_to_a_reportable_error() {
        let m = message_from_amqp(&BasicProperties::default(), b"garbage".to_vec());
        let err = m.headers.message_type().unwrap_err();
        assert!(err.to_string().contains("nuropb_protocol"), "{err}");
        assert!(m.payload.envelope().is_err());
    }

    #[test]
    fn long_strings_are_errors_not_panics() {
        let mut m = request();
        m.properties.correlation_id = "x".repeat(300);
        assert!(matches!(
            amqp_properties(&m),
            Err(MeshError::InvalidArgument {
                what: "correlation_id",
                ..
            })
        ));
    }

    #[test]
    fn dead_letter_headers_become_death_info() {
        let mut death = FieldTable::default();
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("svc".into())].into()),
        );
        let mut h = FieldTable::default();
        h.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("expired".into()),
        );
        h.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("nuropb-svc-sq".into()),
        );
        h.insert(
            "x-first-death-exchange".into(),
            AMQPValue::LongString("nuropb-rpc-exchange".into()),
        );
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let m = message_from_amqp(&BasicProperties::default().with_headers(h), Vec::new());
        let d = m.death.unwrap();
        assert_eq!(d.reason, DeathReason::Expired);
        assert_eq!(d.queue, "nuropb-svc-sq");
        assert_eq!(d.exchange, "nuropb-rpc-exchange");
        assert_eq!(d.routing_key, "svc");
    }

    #[test]
    fn dead_letter_copies_look_like_the_brokers_and_carry_the_reason() {
        let text = |s: &str| AMQPValue::LongString(s.into());
        let m = request();
        let mut original = amqp_properties(&m).unwrap();
        let mut h = original.headers().clone().unwrap();
        h.insert("x-custom".into(), text("kept"));
        original = original.with_headers(h).with_priority(3);
        let copy = dead_letter_properties(
            &original,
            "nuropb-svc-sq",
            "nuropb-rpc-exchange",
            "svc",
            "malformed message: bad",
            1_700_000_000,
        );
        assert!(copy.expiration().is_none());
        assert_eq!(copy.correlation_id(), original.correlation_id());
        assert_eq!(copy.reply_to(), original.reply_to());
        assert_eq!(copy.content_type(), original.content_type());
        assert_eq!(*copy.priority(), Some(3));
        let h = copy.headers().as_ref().unwrap().inner();
        assert_eq!(h.get("x-custom"), Some(&text("kept")));
        assert_eq!(h.get("nuropb_protocol"), Some(&text("0.1.1")));
        assert_eq!(
            h.get("x-herald-reason"),
            Some(&text("malformed message: bad"))
        );
        assert_eq!(h.get("x-first-death-reason"), Some(&text("rejected")));
        assert_eq!(h.get("x-first-death-queue"), Some(&text("nuropb-svc-sq")));
        let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
            panic!("no x-death");
        };
        let [AMQPValue::FieldTable(d)] = deaths.as_slice() else {
            panic!("one entry expected: {deaths:?}");
        };
        let d = d.inner();
        assert_eq!(d.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(d.get("original-expiration"), Some(&text("1500")));
        assert_eq!(d.get("time"), Some(&AMQPValue::Timestamp(1_700_000_000)));
        let back = message_from_amqp(&copy, Vec::new()).death.unwrap();
        assert_eq!(back.reason, DeathReason::Rejected);
        assert_eq!(back.routing_key, "svc");
        assert_eq!(back.detail.as_deref(), Some("malformed message: bad"));

        // Dead-lettered again from the same queue: the entry is counted up, the first
        // death kept, the reason replaced; a long reason is cut at a char boundary.
        let long = "é".repeat(MAX_REASON_BYTES);
        let again = dead_letter_properties(&copy, "nuropb-svc-sq", "x", "y", &long, 1);
        let h = again.headers().as_ref().unwrap().inner();
        let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
            panic!("no x-death");
        };
        let [AMQPValue::FieldTable(d)] = deaths.as_slice() else {
            panic!("one entry expected: {deaths:?}");
        };
        assert_eq!(d.inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(
            h.get("x-first-death-exchange"),
            Some(&text("nuropb-rpc-exchange"))
        );
        let Some(AMQPValue::LongString(reason)) = h.get("x-herald-reason") else {
            panic!("no reason");
        };
        assert_eq!(reason.as_bytes().len(), MAX_REASON_BYTES);
        assert!(std::str::from_utf8(reason.as_bytes()).is_ok());
        // From another queue: a new entry in front.
        let other = dead_letter_properties(&again, "nuropb-other-sq", "x", "y", "r", 2);
        let h = other.headers().as_ref().unwrap().inner();
        let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
            panic!("no x-death");
        };
        assert_eq!(deaths.as_slice().len(), 2);
    }

    #[test]
    fn fuzz_seed_round_trips_through_fuzz_decode() {
        let seed = fuzz_seed(&request(), br#"{"tag":"request"}"#).unwrap();
        let len = usize::from(u16::from_be_bytes([seed[0], seed[1]]));
        let (_, props) = lapin::protocol::basic::parse_properties(&seed[2..2 + len]).unwrap();
        let m = message_from_amqp(&props, Vec::new());
        assert_eq!(m.properties.correlation_id, "c0ffee");
        assert_eq!(m.properties.expiration_ms, Some(1500));
        assert_eq!(m.headers.message_type().unwrap(), MessageType::Request);
        fuzz_decode(&seed);
        fuzz_decode(&seed[..seed.len() / 2]);
        fuzz_decode(&[]);
        fuzz_decode(&[0xff, 0xff, 1, 2, 3]);
    }

    #[test]
    fn urls_are_redacted_and_mesh_named_like_nuropb() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(mesh_name_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "%2f");
        assert_eq!(mesh_name_of("amqp://h:5672/nuropb"), "nuropb");
        assert!(AmqpBackend::new("http://nope").is_err());
    }
}
