//! The [`Mesh`] handle: one API instance (a service or a client) on a backend.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::backend::{
    Backend, Connection, ConsumeOptions, DeliveryStream, QueueSpec, Settle, nuropb_exchanges,
};
use crate::dead_letters::{Trim, spawn_trim};
use crate::error::{MeshError, ServiceError, class};
use crate::fasthash::FastMap;
use crate::leader::{LeaderWatch, spawn_election};
use crate::message::{
    DEFAULT_EXCHANGE, DESCRIBE_METHOD, EVENTS_EXCHANGE, Envelope, EventBody, Headers, Message,
    MessageType, Payload, Properties, RPC_EXCHANGE, RequestBody, ResponseBody, dead_letter_queue,
    response_queue, validate_topic_pattern,
};
use crate::service::{
    ClientCipher, MethodInfo, RequestContext, Service, ServiceDescription, ServiceKeys, SessionKey,
};

/// Default request ttl and client deadline (nuropb's is 1 hour; Herald's is shorter
/// because the caller waits for it).
/// How the description of a Herald service's error reply to a call it could not
/// decrypt begins (class `NuropbEncryptionError`): a client retries such a call once
/// with the service's key fetched again, and only such a call (its handler never ran).
const UNDECRYPTABLE: &str = "the request could not be decrypted: ";

pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The largest request or command ttl, in milliseconds: 2^32 - 1 (about 49.7 days).
/// The ttl travels as the AMQP `expiration`, and RabbitMQ answers one beyond its limit
/// with a channel error that closes the channel the handle publishes on (losing the
/// other calls in flight on it). That limit is 2^32 - 1 ms on RabbitMQ versions with
/// 32-bit expiry timers (also what other AMQP clients cap at) and 10 years on current
/// ones (3.10 refuses 315,360,000,001 ms), so a ttl above the lower, portable bound is
/// refused with [`MeshError::InvalidArgument`] before anything is sent.
pub const MAX_TTL_MS: u64 = u32::MAX as u64;
/// [`MAX_TTL_MS`] as a duration.
pub const MAX_TTL: Duration = Duration::from_millis(MAX_TTL_MS);
/// The longest a describe request (and so an encrypted call's key lookup) waits for
/// its reply (nuropb's describe ttl).
const DESCRIBE_TTL: Duration = Duration::from_secs(60);
/// Default service prefetch (nuropb's is 1).
pub const DEFAULT_PREFETCH: u16 = 64;
/// How long a request waits for its reply before it also waits for the outcome of
/// its publish (see [`publish_and_wait`]): an unroutable request is reported as
/// [`MeshError::NotFound`] this much later than the broker returns it.
const PUBLISH_GRACE: Duration = Duration::from_millis(5);
/// Default bound of a service's dead-letter queue.
pub const DEFAULT_DEAD_LETTER_MAX: usize = 10_000;
/// Default pause between two trims of the dead-letter queue by the service's leader.
pub const DEFAULT_DEAD_LETTER_TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// Default most dead letters one trim drops.
pub const DEFAULT_DEAD_LETTER_TRIM_BATCH: usize = 1_000;

/// Configuration of one mesh handle. Start from [`MeshConfig::client`] or
/// [`MeshConfig::service`] and adjust with the builder methods.
#[derive(Clone)]
pub struct MeshConfig {
    service_name: Option<String>,
    service: Option<Arc<dyn Service>>,
    instance_id: Option<String>,
    prefetch: u16,
    default_ttl: Duration,
    event_bindings: Vec<String>,
    dead_letter_max: usize,
    dead_letter_trim_interval: Duration,
    dead_letter_trim_batch: usize,
    leader_interval: Duration,
    shutdown_grace: Duration,
    dead_letter_failed: bool,
    service_keys: Option<Arc<dyn ServiceKeys>>,
    client_cipher: Option<Arc<dyn ClientCipher>>,
    direct_reply_to: bool,
    confirm_commands: bool,
}

impl fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshConfig")
            .field("service_name", &self.service_name)
            .field("instance_id", &self.instance_id)
            .field("prefetch", &self.prefetch)
            .field("default_ttl", &self.default_ttl)
            .field("event_bindings", &self.event_bindings)
            .field("dead_letter_max", &self.dead_letter_max)
            .field("dead_letter_trim_interval", &self.dead_letter_trim_interval)
            .field("dead_letter_trim_batch", &self.dead_letter_trim_batch)
            .field("leader_interval", &self.leader_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("dead_letter_failed", &self.dead_letter_failed)
            .field("service_keys", &self.service_keys.is_some())
            .field("client_cipher", &self.client_cipher.is_some())
            .field("direct_reply_to", &self.direct_reply_to)
            .field("confirm_commands", &self.confirm_commands)
            .finish()
    }
}

impl MeshConfig {
    /// A client-only handle (no service queue, never leader).
    pub fn client() -> Self {
        Self {
            service_name: None,
            service: None,
            instance_id: None,
            prefetch: DEFAULT_PREFETCH,
            default_ttl: DEFAULT_TTL,
            event_bindings: Vec::new(),
            dead_letter_max: DEFAULT_DEAD_LETTER_MAX,
            dead_letter_trim_interval: DEFAULT_DEAD_LETTER_TRIM_INTERVAL,
            dead_letter_trim_batch: DEFAULT_DEAD_LETTER_TRIM_BATCH,
            leader_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(30),
            dead_letter_failed: false,
            service_keys: None,
            client_cipher: None,
            direct_reply_to: false,
            confirm_commands: false,
        }
    }

    /// A handle serving `service` under `name`.
    pub fn service(name: impl Into<String>, service: impl Service) -> Self {
        Self::service_arc(name, Arc::new(service))
    }

    /// A handle serving a shared service object under `name`.
    pub fn service_arc(name: impl Into<String>, service: Arc<dyn Service>) -> Self {
        let mut c = Self::client();
        c.service_name = Some(name.into());
        c.service = Some(service);
        c
    }

    /// Fixes the instance id (default: a fresh uuid4 hex). A second live handle with
    /// the same service name and instance id is refused (single-instance mode).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Replies to this handle's requests through the backend's direct reply-to
    /// (RabbitMQ's `amq.rabbitmq.reply-to`) instead of its response queue (default
    /// false). A reply then goes from the service's channel straight to the channel
    /// that published the request, without passing through a queue: less work for
    /// the broker and a lower round-trip time. Services answer it as they answer a
    /// response queue (through the default exchange, routing key = `reply_to`), so
    /// nuropb services work unchanged. The response queue is still declared and
    /// consumed (nuropb's topology and the single-instance check stay as they are).
    /// Without such a thing (the in-process broker) the response queue is used.
    pub fn direct_reply_to(mut self, yes: bool) -> Self {
        self.direct_reply_to = yes;
        self
    }

    /// Makes every [`Mesh::command`] of this handle a [`Mesh::command_confirmed`]
    /// (default false: nuropb's fire-and-forget, resolved once the command is handed to
    /// the connection and routed, without waiting for a broker confirm).
    pub fn confirm_commands(mut self, yes: bool) -> Self {
        self.confirm_commands = yes;
        self
    }

    /// Service prefetch: requests handled concurrently by this instance.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Default request ttl (also the default client deadline). At most [`MAX_TTL`]:
    /// [`Mesh::connect`] refuses a larger one with [`MeshError::InvalidArgument`].
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Extra topic patterns bound to the service queue (besides the service's own).
    pub fn event_bindings(mut self, patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.event_bindings = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Bound of the service's dead-letter queue (default
    /// [`DEFAULT_DEAD_LETTER_MAX`]): the service's elected leader drops the oldest dead
    /// letters beyond it, every [`dead_letter_trim_interval`](Self::dead_letter_trim_interval).
    /// The queue is declared as nuropb declares it, without `x-max-length`, so between
    /// two trims it may hold more (up to what arrives in one interval).
    pub fn dead_letter_max(mut self, max: usize) -> Self {
        self.dead_letter_max = max.max(1);
        self
    }

    /// How often the service's leader trims the dead-letter queue to
    /// [`dead_letter_max`](Self::dead_letter_max) (default
    /// [`DEFAULT_DEAD_LETTER_TRIM_INTERVAL`], at least 1 ms).
    pub fn dead_letter_trim_interval(mut self, interval: Duration) -> Self {
        self.dead_letter_trim_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Most dead letters one trim drops (default [`DEFAULT_DEAD_LETTER_TRIM_BATCH`],
    /// at least 1): bounds the work of a tick; a larger surplus is dropped over the
    /// next ticks.
    pub fn dead_letter_trim_batch(mut self, batch: usize) -> Self {
        self.dead_letter_trim_batch = batch.max(1);
        self
    }

    /// How often a non-leader retries the leader lock.
    pub fn leader_interval(mut self, interval: Duration) -> Self {
        self.leader_interval = interval;
        self
    }

    /// How long [`Mesh::disconnect`] waits for in-flight requests.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Also dead-letter requests whose handler failed (nuropb parity; default: they
    /// are acked, since the caller got the error reply). The dead letter goes after the
    /// error reply and carries the handler's error as its reason
    /// (`x-herald-reason`, [`DeathInfo::detail`](crate::message::DeathInfo::detail)).
    pub fn dead_letter_failed(mut self, yes: bool) -> Self {
        self.dead_letter_failed = yes;
        self
    }

    /// The service's key pair (share the same keys between all instances). A service
    /// with a method that requires encryption needs one: without it the description
    /// publishes no public key, so no caller can encrypt to the service (connect logs a
    /// warning naming those methods).
    pub fn service_keys(mut self, keys: Arc<dyn ServiceKeys>) -> Self {
        self.service_keys = Some(keys);
        self
    }

    /// The cipher used for encrypted calls made by this handle.
    pub fn client_cipher(mut self, cipher: Arc<dyn ClientCipher>) -> Self {
        self.client_cipher = Some(cipher);
        self
    }
}

/// Options of one request or command.
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    /// Caller context (an object; echoed in the reply). Null becomes `{}`.
    pub context: Value,
    /// Message ttl (default: the handle's default ttl); at most [`MAX_TTL`], a larger
    /// one is refused with [`MeshError::InvalidArgument`].
    pub ttl: Option<Duration>,
    /// Client-side deadline (default: the ttl).
    pub timeout: Option<Duration>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Encrypt the call (needs a client cipher and the service's public key).
    pub encrypted: bool,
}

impl RequestOptions {
    /// Options with a context.
    pub fn with_context(context: Value) -> Self {
        Self {
            context,
            ..Self::default()
        }
    }
}

type Reply = Result<(ResponseBody, Headers), MeshError>;

/// What ends a pending call: its reply, or the loss of the connection its reply had
/// to come back on.
// As large as the reply it carries (which went through the same channel before);
// boxing it would allocate once per call.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Reply(Reply),
    ConnectionLost,
}

/// A request or command ready to publish.
struct Call {
    msg: Message,
    /// The session key of an encrypted call (decrypts its reply).
    session: Option<Box<dyn SessionKey>>,
    /// The counter part of its correlation id (its key among the pending calls).
    counter: u64,
    ttl: Duration,
}

struct Pending {
    tx: oneshot::Sender<Answer>,
    session: Option<Box<dyn SessionKey>>,
    /// The connection's count of link losses when the call was registered: a later
    /// loss fails it ([`PendingMap::fail_lost`]).
    losses: u64,
}

/// Calls waiting for a reply, keyed by the counter part of their correlation id
/// (`<16 hex prefix><16 hex counter>`); ids with another prefix are never ours.
struct PendingMap {
    prefix: String,
    map: Mutex<FastMap<u64, Pending>>,
    unpaired: AtomicU64,
}

impl PendingMap {
    fn new(prefix: u64) -> Self {
        Self {
            prefix: format!("{prefix:016x}"),
            map: Mutex::new(FastMap::default()),
            unpaired: AtomicU64::new(0),
        }
    }
    fn key(&self, id: &str) -> Option<u64> {
        let counter = id.strip_prefix(self.prefix.as_str())?;
        if counter.len() != 16 {
            return None;
        }
        u64::from_str_radix(counter, 16).ok()
    }
    /// Registers the call with counter `n` (its id is `correlation_id(prefix, n)`),
    /// stamped with the link-loss count read under the map's lock, so that a loss is
    /// either seen by the stamp or fails the call ([`PendingMap::fail_lost`]).
    fn insert(
        &self,
        n: u64,
        tx: oneshot::Sender<Answer>,
        session: Option<Box<dyn SessionKey>>,
        losses: Option<&tokio::sync::watch::Receiver<u64>>,
    ) -> u64 {
        let Ok(mut m) = self.map.lock() else {
            return 0;
        };
        let losses = losses.map_or(0, |rx| *rx.borrow());
        m.insert(
            n,
            Pending {
                tx,
                session,
                losses,
            },
        );
        losses
    }
    fn remove_counter(&self, n: u64) -> Option<Pending> {
        self.map.lock().ok().and_then(|mut m| m.remove(&n))
    }
    /// Takes the call a reply's correlation id names, if it is one of ours.
    fn remove(&self, id: &str) -> Option<Pending> {
        self.remove_counter(self.key(id)?)
    }
    fn fail_all(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
    /// Ends every call registered before the connection's `losses`-th link loss with
    /// [`Answer::ConnectionLost`]; returns how many.
    fn fail_lost(&self, losses: u64) -> usize {
        let Ok(mut m) = self.map.lock() else {
            return 0;
        };
        let lost: Vec<u64> = m
            .iter()
            .filter(|(_, p)| p.losses < losses)
            .map(|(n, _)| *n)
            .collect();
        for n in &lost {
            if let Some(p) = m.remove(n) {
                let _ = p.tx.send(Answer::ConnectionLost);
            }
        }
        lost.len()
    }
}

/// Removes a pending entry when the request future ends or is dropped.
struct PendingGuard<'a> {
    pending: &'a PendingMap,
    counter: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.remove_counter(self.counter);
    }
}

struct ServingState {
    service: Arc<dyn Service>,
    methods: FastMap<String, MethodInfo>,
    describe: Value,
}

struct Inner {
    backend_name: &'static str,
    conn: Arc<dyn Connection>,
    service_name: String,
    instance_id: String,
    response_queue: String,
    /// The `reply_to` of this handle's requests: the response queue, or the direct
    /// reply-to address.
    reply_to: String,
    client_only: bool,
    config: MeshConfig,
    serving: Option<ServingState>,
    pending: Arc<PendingMap>,
    /// The connection's link-loss count ([`Connection::link_losses`]), if it can lose
    /// its link.
    link_losses: Option<tokio::sync::watch::Receiver<u64>>,
    id_prefix: u64,
    counter: AtomicU64,
    sub_counter: AtomicU64,
    describe_cache: Mutex<HashMap<String, Arc<ServiceDescription>>>,
    leader: LeaderWatch,
    /// Dead letters the leader's trim dropped ([`Mesh::dead_letters_trimmed`]).
    dead_letters_trimmed: Arc<AtomicU64>,
    stop_consuming: CancellationToken,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The service consumer's task ([`dispatch_loop`]), awaited by a graceful
    /// disconnect so that nothing is started once it stopped waiting.
    dispatch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_consuming.cancel();
        self.shutdown.cancel();
    }
}

/// A mesh API instance: a service (serving requests, commands and events on its
/// service queue) or a client-only handle. Cheap to clone.
///
/// Dropping the last clone stops everything abruptly (like a crash: unsettled
/// deliveries are requeued by the backend); [`Mesh::disconnect`] shuts down
/// gracefully.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
    _handles: Arc<HandleGuard>,
}

/// Dropped with the last user-held [`Mesh`] clone: stops consuming, the election and
/// the reply consumer. Handler tasks in flight hold the [`Inner`] (not this guard), so
/// they still finish and settle; the connection closes when the last of them ends.
struct HandleGuard {
    stop_consuming: CancellationToken,
    shutdown: CancellationToken,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.stop_consuming.cancel();
        self.shutdown.cancel();
    }
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("backend", &self.inner.backend_name)
            .field("service_name", &self.inner.service_name)
            .field("instance_id", &self.inner.instance_id)
            .field("client_only", &self.inner.client_only)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `<16 hex digits of prefix><16 hex digits of n>` (what `format!("{:016x}{:016x}")`
/// gives, without the formatting machinery: this runs once per call).
fn correlation_id(prefix: u64, n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, v) in [prefix, n].into_iter().enumerate() {
        for (j, slot) in out[i * 16..(i + 1) * 16].iter_mut().enumerate() {
            *slot = HEX[((v >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    // Hex digits are ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

fn random_u64() -> u64 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_le_bytes(x)
}

fn validate_name(what: &'static str, value: &str) -> Result<(), MeshError> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(MeshError::InvalidArgument {
            what,
            value: value.to_owned(),
            reason: "expected 1 to 200 characters of A-Z, a-z, 0-9, '-', '_' or '.'".into(),
        })
    }
}

/// The ttl in whole milliseconds, if it fits the AMQP `expiration` (see [`MAX_TTL_MS`]).
fn ttl_millis(what: &'static str, ttl: Duration) -> Result<u64, MeshError> {
    let ms = ttl.as_millis();
    match u64::try_from(ms) {
        Ok(ms) if ms <= MAX_TTL_MS => Ok(ms),
        _ => Err(MeshError::InvalidArgument {
            what,
            value: format!("{ms} ms"),
            reason: format!(
                "a ttl is at most {MAX_TTL_MS} ms (2^32 - 1, about 49.7 days), the largest message expiration every RabbitMQ version accepts; a larger one can make the broker close the publishing channel"
            ),
        }),
    }
}

fn params_object(params: Value) -> Result<Map<String, Value>, MeshError> {
    match params {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(MeshError::InvalidArgument {
            what: "params",
            value: other.to_string(),
            reason: "params must be a JSON object of keyword arguments".into(),
        }),
    }
}

fn context_object(context: Value) -> Value {
    if context.is_null() {
        Value::Object(Map::new())
    } else {
        context
    }
}

impl Mesh {
    /// Connects: declares the nuropb exchanges, the response queue and (services) the
    /// service queue with its bindings and the dead-letter queue (as nuropb declares
    /// it), starts the consumers and (services) the leader election and the leader's
    /// trim of the dead-letter queue to [`MeshConfig::dead_letter_max`].
    pub async fn connect(backend: Arc<dyn Backend>, config: MeshConfig) -> Result<Mesh, MeshError> {
        let client_only = config.service.is_none();
        let service_name = match &config.service_name {
            Some(n) => {
                validate_name("service name", n)?;
                n.clone()
            }
            None => format!("{}-client", backend.mesh_name()),
        };
        let instance_id = match &config.instance_id {
            Some(id) => {
                validate_name("instance id", id)?;
                id.clone()
            }
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        for p in &config.event_bindings {
            validate_topic_pattern(p)?;
        }
        ttl_millis("default ttl", config.default_ttl)?;
        let conn = backend.connect(&service_name).await?;
        for ex in nuropb_exchanges() {
            conn.declare_exchange(&ex).await?;
        }
        let rq = response_queue(&service_name, &instance_id);
        conn.declare_queue(&QueueSpec::response(rq.clone())).await?;
        let replies = conn
            .consume(&rq, ConsumeOptions::exclusive_auto_ack())
            .await?;

        let serving = match &config.service {
            None => None,
            Some(svc) => {
                let info = svc.info();
                if config.service_keys.is_none() {
                    let sealed: Vec<&str> = info
                        .methods
                        .iter()
                        .filter(|m| m.requires_encryption)
                        .map(|m| m.name.as_str())
                        .collect();
                    if !sealed.is_empty() {
                        warn!(service = %service_name, methods = ?sealed, "methods require encryption but the service has no keys (MeshConfig::service_keys): its description publishes no public key, so no caller can encrypt to them");
                    }
                }
                let public_key = config.service_keys.as_ref().map(|k| k.public_key_pem());
                let describe = ServiceDescription::build(&service_name, &info, public_key);
                let describe = serde_json::to_value(&describe).map_err(|e| MeshError::Encode {
                    what: "describe document",
                    reason: e.to_string(),
                })?;
                let methods = info
                    .methods
                    .into_iter()
                    .map(|m| (m.name.clone(), m))
                    .collect();
                Some(ServingState {
                    service: svc.clone(),
                    methods,
                    describe,
                })
            }
        };

        let stop_consuming = CancellationToken::new();
        let shutdown = CancellationToken::new();
        // Stops the tasks started below if a later step of connect fails.
        let stop_on_error = shutdown.clone().drop_guard();
        let id_prefix = random_u64();
        let pending = Arc::new(PendingMap::new(id_prefix));
        tokio::spawn(reply_loop(replies, pending.clone(), shutdown.clone()));
        let link_losses = conn.link_losses();
        if let Some(losses) = &link_losses {
            tokio::spawn(loss_loop(
                losses.clone(),
                pending.clone(),
                service_name.clone(),
                shutdown.clone(),
            ));
        }
        let mut reply_to = rq.clone();
        if config.direct_reply_to
            && let Some((address, direct)) = conn.consume_direct_replies().await?
        {
            tokio::spawn(reply_loop(direct, pending.clone(), shutdown.clone()));
            reply_to = address;
        }

        let mut service_stream = None;
        let dead_letters_trimmed = Arc::new(AtomicU64::new(0));
        let leader = if let Some(s) = &serving {
            let mut patterns = config.event_bindings.clone();
            for p in s.service.event_bindings() {
                validate_topic_pattern(&p)?;
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
            let dlq = QueueSpec::dead_letter(dead_letter_queue(&service_name));
            conn.declare_queue(&dlq).await?;
            let sq = QueueSpec::service(&service_name, &patterns);
            conn.declare_queue(&sq).await?;
            service_stream = Some(
                conn.consume(&sq.name, ConsumeOptions::manual(config.prefetch))
                    .await?,
            );
            let leader = spawn_election(
                conn.clone(),
                service_name.clone(),
                instance_id.clone(),
                config.leader_interval,
                shutdown.clone(),
            );
            spawn_trim(
                Trim {
                    conn: conn.clone(),
                    leader: leader.clone(),
                    service: service_name.clone(),
                    queue: dlq.name,
                    max: config.dead_letter_max,
                    batch: config.dead_letter_trim_batch,
                    interval: config.dead_letter_trim_interval,
                    dropped: dead_letters_trimmed.clone(),
                },
                shutdown.clone(),
            );
            leader
        } else {
            LeaderWatch::never()
        };

        stop_on_error.disarm();
        let inner = Arc::new(Inner {
            backend_name: backend.name(),
            conn,
            service_name,
            instance_id,
            response_queue: rq,
            reply_to,
            client_only,
            config,
            serving,
            pending,
            link_losses,
            id_prefix,
            counter: AtomicU64::new(0),
            sub_counter: AtomicU64::new(0),
            describe_cache: Mutex::new(HashMap::new()),
            leader,
            dead_letters_trimmed,
            stop_consuming,
            shutdown,
            tracker: TaskTracker::new(),
            dispatch: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        if let Some(stream) = service_stream {
            let task = tokio::spawn(dispatch_loop(
                Arc::downgrade(&inner),
                stream,
                inner.stop_consuming.clone(),
                inner.tracker.clone(),
            ));
            if let Ok(mut slot) = inner.dispatch.lock() {
                *slot = Some(task);
            }
        }
        debug!(
            backend = inner.backend_name,
            service = %inner.service_name,
            instance = %inner.instance_id,
            client_only,
            "mesh connected"
        );
        let guard = HandleGuard {
            stop_consuming: inner.stop_consuming.clone(),
            shutdown: inner.shutdown.clone(),
        };
        Ok(Mesh {
            inner,
            _handles: Arc::new(guard),
        })
    }

    /// Graceful shutdown: stops taking new deliveries (and waits for the service
    /// consumer to stop: a delivery it takes from then on is not started but handed
    /// back to the broker, for another instance), waits (up to the configured grace)
    /// for in-flight requests to finish and be answered, then fails pending calls with
    /// [`MeshError::Disconnected`] and closes the connection.
    pub async fn disconnect(&self) -> Result<(), MeshError> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        inner.stop_consuming.cancel();
        inner.tracker.close();
        let dispatch = inner.dispatch.lock().ok().and_then(|mut slot| slot.take());
        let drained = async {
            // Once the consumer's task has ended nothing new is tracked, so the wait
            // below covers every request that was started.
            if let Some(task) = dispatch
                && let Err(e) = task.await
            {
                warn!(service = %inner.service_name, error = %e, "the service consumer task failed");
            }
            inner.tracker.wait().await;
        };
        if tokio::time::timeout(inner.config.shutdown_grace, drained)
            .await
            .is_err()
        {
            warn!(
                service = %inner.service_name,
                in_flight = inner.tracker.len(),
                "shutdown grace passed with requests still in flight; they will be redelivered"
            );
        }
        inner.shutdown.cancel();
        inner.pending.fail_all();
        let r = inner.conn.close().await;
        debug!(service = %inner.service_name, instance = %inner.instance_id, "mesh disconnected");
        r
    }

    /// This handle's service name (`<mesh>-client` for client-only handles).
    pub fn service_name(&self) -> &str {
        &self.inner.service_name
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Whether the handle serves no service.
    pub fn client_only(&self) -> bool {
        self.inner.client_only
    }

    /// Whether this instance is the elected leader among the instances of its
    /// service (always false for client-only handles).
    pub fn is_leader(&self) -> bool {
        self.inner.leader.is_leader()
    }

    /// A watch on leadership changes.
    pub fn leader_watch(&self) -> LeaderWatch {
        self.inner.leader.clone()
    }

    /// Whether the handle is connected.
    pub fn connected(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst) && self.inner.conn.is_open()
    }

    /// The backend connection (for tools and tests).
    pub fn connection(&self) -> Arc<dyn Connection> {
        self.inner.conn.clone()
    }

    /// Name of this instance's response queue.
    pub fn response_queue(&self) -> &str {
        &self.inner.response_queue
    }

    /// Replies received for correlation ids no longer tracked (late, duplicate).
    pub fn unpaired_replies(&self) -> u64 {
        self.inner.pending.unpaired.load(Ordering::Relaxed)
    }

    /// Dead letters this instance dropped from its service's dead-letter queue while
    /// leader, to keep it within [`MeshConfig::dead_letter_max`] (always 0 for
    /// client-only handles and instances that never led).
    pub fn dead_letters_trimmed(&self) -> u64 {
        self.inner.dead_letters_trimmed.load(Ordering::Relaxed)
    }

    /// A fresh correlation id and its counter.
    fn next_id(&self) -> (String, u64) {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        (correlation_id(self.inner.id_prefix, n), n)
    }

    fn ensure_open(&self) -> Result<(), MeshError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(MeshError::Disconnected)
        } else {
            Ok(())
        }
    }

    /// Calls `service.method(**params)` and returns its result, as nuropb's
    /// `request(service, method, params, context, ttl, trace_id)`.
    ///
    /// Resolves by the deadline (the ttl): never hangs. If the backend loses its
    /// connection to the broker while the call is in flight, it ends at once with
    /// [`MeshError::ConnectionLost`] (the reply cannot come back; whether the service
    /// ran the call is unknown). The in-process broker never loses its connection.
    pub async fn request(
        &self,
        service: &str,
        method: &str,
        params: Value,
        context: Value,
        ttl: Option<Duration>,
        trace_id: Option<String>,
    ) -> Result<Value, MeshError> {
        let opts = RequestOptions {
            context,
            ttl,
            timeout: None,
            trace_id,
            encrypted: false,
        };
        self.request_with(service, method, params, opts).await
    }

    /// [`Mesh::request`] with all options.
    pub async fn request_with(
        &self,
        service: &str,
        method: &str,
        params: Value,
        opts: RequestOptions,
    ) -> Result<Value, MeshError> {
        let reply = self.request_raw(service, method, params, opts).await?;
        match reply.error {
            Some(err) => Err(err.into_mesh_error(service, method)),
            None => Ok(reply.result),
        }
    }

    /// Sends a request and returns the whole response body (nuropb's
    /// `rpc_response=False`).
    ///
    /// An encrypted request first needs the service's public key, from its describe
    /// document (cached, see [`Mesh::describe_service`]); fetching it counts against
    /// the request's deadline, so the request still resolves by it. If the service
    /// answers that it cannot decrypt the request (`NuropbEncryptionError`: its key
    /// changed since the document was cached, e.g. it restarted with a new key), the
    /// cached document is dropped, fetched again and the request sent once more
    /// (the service did not run it), within the same deadline.
    pub async fn request_raw(
        &self,
        service: &str,
        method: &str,
        params: Value,
        opts: RequestOptions,
    ) -> Result<ResponseBody, MeshError> {
        if opts.encrypted {
            // Boxed: keeps the common (clear) path's future small.
            return Box::pin(self.request_encrypted(service, method, params, &opts)).await;
        }
        let call = self.build_call(MessageType::Request, service, method, params, &opts)?;
        let deadline = opts.timeout.unwrap_or(call.ttl);
        self.send_request(service, method, call, deadline).await
    }

    /// [`Mesh::request_raw`] of an encrypted request: the key lookup and one retry
    /// with a fresh key, all within the caller's deadline.
    async fn request_encrypted(
        &self,
        service: &str,
        method: &str,
        params: Value,
        opts: &RequestOptions,
    ) -> Result<ResponseBody, MeshError> {
        let started = tokio::time::Instant::now();
        let mut params = params;
        let mut retried = false;
        loop {
            // The first attempt sends a copy; the retry (at most one) the original.
            let attempt = if retried {
                std::mem::take(&mut params)
            } else {
                params.clone()
            };
            let mut call = self.build_call(MessageType::Request, service, method, attempt, opts)?;
            let deadline = opts.timeout.unwrap_or(call.ttl);
            // Whichever step the deadline passed in, it is the call's own.
            let timed_out = |e| caller_timeout(e, service, method, deadline);
            let left = deadline.saturating_sub(started.elapsed());
            let sealed = self.encrypt_call(service, &mut call.msg, left).await;
            let (session, used) = sealed.map_err(timed_out)?;
            call.session = Some(session);
            let left = deadline.saturating_sub(started.elapsed());
            let body = self
                .send_request(service, method, call, left)
                .await
                .map_err(timed_out)?;
            // Only the reply a Herald service sends when it could not decrypt the call
            // (it did not run it): a handler may return the same error class itself,
            // after it ran, and that call must not run twice.
            let undecryptable = body.error.as_ref().is_some_and(|e| {
                e.error == class::ENCRYPTION && e.description.starts_with(UNDECRYPTABLE)
            });
            if !undecryptable || retried {
                return Ok(body);
            }
            retried = true;
            debug!(service = %service, method = %method, "the service could not decrypt the call: fetching its key again and retrying once");
            self.forget_description(service, &used);
        }
    }

    /// Publishes a request built by [`Mesh::build_call`] (sealed if encrypted) and
    /// waits up to `deadline` for its reply.
    async fn send_request(
        &self,
        service: &str,
        method: &str,
        call: Call,
        deadline: Duration,
    ) -> Result<ResponseBody, MeshError> {
        let Call {
            msg,
            session,
            counter,
            ttl: _,
        } = call;
        let (tx, rx) = oneshot::channel();
        let losses =
            self.inner
                .pending
                .insert(counter, tx, session, self.inner.link_losses.as_ref());
        let _guard = PendingGuard {
            pending: &self.inner.pending,
            counter,
        };
        let publish = self.inner.conn.publish(RPC_EXCHANGE, service, msg);
        let reply = tokio::time::timeout(deadline, rx);
        let outcome = match publish {
            // Decided at once (the in-process broker): only the reply to wait for.
            futures::future::Either::Left(published) => {
                call_published(published.into_inner(), service, method)?;
                reply.await
            }
            // Boxed: the selects of a broker's publish stay out of the state of every
            // call.
            futures::future::Either::Right(publishing) => {
                let publish = async move {
                    let published = call_published(publishing.await, service, method);
                    self.lost_if_cut(published, losses, service, method)
                };
                Box::pin(publish_and_wait(publish, reply, PUBLISH_GRACE)).await?
            }
        };
        match outcome {
            Ok(Ok(Answer::Reply(Ok((body, _headers))))) => Ok(body),
            Ok(Ok(Answer::Reply(Err(e)))) => Err(e),
            Ok(Ok(Answer::ConnectionLost)) => Err(MeshError::ConnectionLost {
                service: service.to_owned(),
                method: method.to_owned(),
            }),
            Ok(Err(_)) => Err(MeshError::Disconnected),
            Err(_) => Err(MeshError::Timeout {
                service: service.to_owned(),
                method: method.to_owned(),
                after: deadline,
            }),
        }
    }

    /// Fire-and-forget call. Resolves once published; an unknown service is an error
    /// ([`MeshError::NotFound`]), unlike nuropb which only logs it. A publish cut off
    /// by the loss of the broker connection is [`MeshError::ConnectionLost`] (whether
    /// the broker took the command is unknown). With
    /// [`MeshConfig::confirm_commands`] it is a [`Mesh::command_confirmed`].
    pub async fn command(
        &self,
        service: &str,
        method: &str,
        params: Value,
        opts: RequestOptions,
    ) -> Result<(), MeshError> {
        let confirm = self.inner.config.confirm_commands;
        self.send_command(service, method, params, opts, confirm)
            .await
    }

    /// A command that must not be lost: `Ok` only once the broker has confirmed it and
    /// routed it to a queue of the service (on RabbitMQ a `mandatory` publish with a
    /// publisher confirm; the confirm means that the broker holds the message, which
    /// like every nuropb message is transient, not that it is on disk).
    /// [`MeshError::NotFound`] when no queue is bound for the service; a broker that
    /// refuses it (`nack`, e.g. a bound queue that is full and rejects publishes) is a
    /// [`MeshError::Backend`] error naming the exchange and routing key;
    /// [`MeshError::ConnectionLost`] when the connection breaks before the confirm
    /// (whether the broker took it is then unknown). Either way the command itself
    /// still gets no reply.
    ///
    /// Slower than [`Mesh::command`]: the caller waits for a broker round trip, and a
    /// handle's confirmed publishes go to the broker one at a time (see
    /// [`crate::amqp`]). The in-process broker routes synchronously, so it gives the
    /// same answers as for [`Mesh::command`].
    pub async fn command_confirmed(
        &self,
        service: &str,
        method: &str,
        params: Value,
        opts: RequestOptions,
    ) -> Result<(), MeshError> {
        self.send_command(service, method, params, opts, true).await
    }

    /// [`Mesh::command`], asking the backend for a confirm or not.
    async fn send_command(
        &self,
        service: &str,
        method: &str,
        params: Value,
        opts: RequestOptions,
        confirm: bool,
    ) -> Result<(), MeshError> {
        let mut call = self
            .prepare_call(MessageType::Command, service, method, params, &opts)
            .await?;
        call.msg.properties.confirm = confirm;
        let losses = self.link_losses();
        let published = self
            .inner
            .conn
            .publish(RPC_EXCHANGE, service, call.msg)
            .await;
        self.lost_if_cut(
            call_published(published, service, method),
            losses,
            service,
            method,
        )
    }

    /// How many times the connection has lost its link so far.
    fn link_losses(&self) -> u64 {
        self.inner.link_losses.as_ref().map_or(0, |rx| *rx.borrow())
    }

    /// A backend failure of a publish that a link loss cut off (one counted after
    /// `losses`) is [`MeshError::ConnectionLost`]: whether the broker took the message
    /// is unknown. (A backend counts the loss before it fails the publishes it cut.)
    fn lost_if_cut(
        &self,
        published: Result<(), MeshError>,
        losses: u64,
        service: &str,
        method: &str,
    ) -> Result<(), MeshError> {
        match published {
            Err(MeshError::Backend { .. }) if self.link_losses() > losses => {
                Err(MeshError::ConnectionLost {
                    service: service.to_owned(),
                    method: method.to_owned(),
                })
            }
            other => other,
        }
    }

    /// [`Mesh::build_call`], then sealing it when `opts` asks for encryption (the
    /// only step that waits, kept out of the clear path's future).
    async fn prepare_call(
        &self,
        kind: MessageType,
        service: &str,
        method: &str,
        params: Value,
        opts: &RequestOptions,
    ) -> Result<Call, MeshError> {
        let mut call = self.build_call(kind, service, method, params, opts)?;
        if opts.encrypted {
            // The key lookup waits no longer than the call's ttl (or deadline).
            let wait = opts.timeout.unwrap_or(call.ttl);
            // Boxed: keeps the common (clear) path's future small.
            let sealed = Box::pin(self.encrypt_call(service, &mut call.msg, wait)).await;
            let (session, _) = sealed.map_err(|e| caller_timeout(e, service, method, wait))?;
            call.session = Some(session);
        }
        Ok(call)
    }

    /// Checks the handle and the call's arguments and builds the request or command
    /// message, with a fresh correlation id and the ttl from `opts` (or the default).
    fn build_call(
        &self,
        kind: MessageType,
        service: &str,
        method: &str,
        params: Value,
        opts: &RequestOptions,
    ) -> Result<Call, MeshError> {
        self.ensure_open()?;
        validate_name("service name", service)?;
        let params = params_object(params)?;
        let ttl = opts.ttl.unwrap_or(self.inner.config.default_ttl);
        let ttl_ms = ttl_millis("ttl", ttl)?;
        let (id, counter) = self.next_id();
        let body = RequestBody {
            service: service.to_owned(),
            method: method.to_owned(),
            params,
            correlation_id: id,
            context: context_object(opts.context.clone()),
            trace_id: opts.trace_id.clone(),
        };
        let env = match kind {
            MessageType::Command => Envelope::Command(body),
            _ => Envelope::Request(body),
        };
        let mut msg = Message::from_envelope(env);
        msg.properties.reply_to = Some(self.inner.reply_to.clone());
        msg.properties.expiration_ms = Some(ttl_ms);
        msg.properties.mandatory = true;
        msg.headers.deadline_ms = Some(now_ms().saturating_add(ttl_ms));
        Ok(Call {
            msg,
            session: None,
            counter,
            ttl,
        })
    }

    /// Seals a call for `service`'s public key, from its describe document (cached;
    /// fetching it waits at most `wait`, and never more than [`DESCRIBE_TTL`]).
    /// Returns the call's session and the document whose key it used.
    async fn encrypt_call(
        &self,
        service: &str,
        msg: &mut Message,
        wait: Duration,
    ) -> Result<(Box<dyn SessionKey>, Arc<ServiceDescription>), MeshError> {
        let cipher = self.inner.config.client_cipher.clone().ok_or_else(|| {
            MeshError::Encryption("no client cipher configured for encrypted calls".into())
        })?;
        let desc = Box::pin(self.describe_within(service, false, wait.min(DESCRIBE_TTL))).await?;
        let key = desc.public_key.clone().ok_or_else(|| {
            MeshError::Encryption(format!("service {service:?} publishes no public key"))
        })?;
        let plain = msg.payload.to_bytes()?;
        let (sealed, s) = cipher.seal_request(&key, &plain)?;
        msg.payload = Payload::Bytes(Bytes::from(sealed));
        msg.headers.encrypted = true;
        Ok((s, desc))
    }

    /// Publishes an event on the events exchange with routing key `topic`.
    pub async fn publish_event(
        &self,
        topic: &str,
        event: Value,
        context: Value,
        trace_id: Option<String>,
    ) -> Result<(), MeshError> {
        self.ensure_open()?;
        validate_topic_pattern(topic)?;
        if topic.split('.').any(|w| w == "*" || w == "#") {
            return Err(MeshError::InvalidArgument {
                what: "topic",
                value: topic.to_owned(),
                reason: "an event topic cannot contain the wildcards '*' or '#'".into(),
            });
        }
        publish_event_on(
            &self.inner.conn,
            topic,
            event,
            context,
            trace_id,
            self.next_id().0,
        )
        .await
    }

    /// Subscribes to events whose topic matches `pattern` (`*` one word, `#` any
    /// number of words) on a private auto-delete queue. Works for client-only handles
    /// too.
    pub async fn subscribe(&self, pattern: &str) -> Result<EventSubscription, MeshError> {
        self.ensure_open()?;
        validate_topic_pattern(pattern)?;
        let n = self.inner.sub_counter.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "nuropb-{}-{}-ev{n}",
            self.inner.service_name, self.inner.instance_id
        );
        let spec = QueueSpec::subscription(name.clone(), pattern);
        self.inner.conn.declare_queue(&spec).await?;
        let stream = self
            .inner
            .conn
            .consume(&name, ConsumeOptions::exclusive_auto_ack())
            .await?;
        Ok(EventSubscription {
            pattern: pattern.to_owned(),
            queue: name,
            stream,
            conn: self.inner.conn.clone(),
        })
    }

    /// The describe document of `service` (cached; `refresh` asks again). An
    /// encrypted call whose service cannot decrypt it drops the cached document (see
    /// [`Mesh::request_raw`]).
    pub async fn describe_service(
        &self,
        service: &str,
        refresh: bool,
    ) -> Result<Arc<ServiceDescription>, MeshError> {
        let ttl = DESCRIBE_TTL.min(self.inner.config.default_ttl);
        self.describe_within(service, refresh, ttl).await
    }

    /// Drops the cached describe document of `service` if it is still `stale` (not
    /// if another call already replaced it).
    fn forget_description(&self, service: &str, stale: &Arc<ServiceDescription>) {
        if let Ok(mut c) = self.inner.describe_cache.lock()
            && c.get(service).is_some_and(|d| Arc::ptr_eq(d, stale))
        {
            c.remove(service);
        }
    }

    /// [`Mesh::describe_service`] with the describe request's ttl and deadline.
    async fn describe_within(
        &self,
        service: &str,
        refresh: bool,
        ttl: Duration,
    ) -> Result<Arc<ServiceDescription>, MeshError> {
        if !refresh
            && let Some(d) = self
                .inner
                .describe_cache
                .lock()
                .ok()
                .and_then(|c| c.get(service).cloned())
        {
            return Ok(d);
        }
        let opts = RequestOptions {
            ttl: Some(ttl),
            ..RequestOptions::default()
        };
        let params = Value::Object(Map::new());
        let call = self.build_call(
            MessageType::Request,
            service,
            DESCRIBE_METHOD,
            params,
            &opts,
        )?;
        let reply = self
            .send_request(service, DESCRIBE_METHOD, call, ttl)
            .await?;
        if let Some(err) = reply.error {
            return Err(err.into_mesh_error(service, DESCRIBE_METHOD));
        }
        let desc = Arc::new(ServiceDescription::from_document(service, reply.result)?);
        if let Ok(mut c) = self.inner.describe_cache.lock() {
            c.insert(service.to_owned(), desc.clone());
        }
        Ok(desc)
    }

    /// Whether `service.method` requires encryption (from the describe document;
    /// methods it does not list answer false).
    pub async fn requires_encryption(
        &self,
        service: &str,
        method: &str,
    ) -> Result<bool, MeshError> {
        let d = self.describe_service(service, false).await?;
        Ok(d.methods.get(method).is_some_and(|m| m.requires_encryption))
    }

    /// Whether `service` publishes a public key.
    pub async fn has_public_key(&self, service: &str) -> Result<bool, MeshError> {
        let d = self.describe_service(service, false).await?;
        Ok(d.public_key.is_some())
    }
}

async fn publish_event_on(
    conn: &Arc<dyn Connection>,
    topic: &str,
    event: Value,
    context: Value,
    trace_id: Option<String>,
    correlation_id: String,
) -> Result<(), MeshError> {
    let body = EventBody {
        topic: topic.to_owned(),
        event,
        context: context_object(context),
        trace_id,
        correlation_id,
        target: Value::Null,
    };
    let msg = Message::from_envelope(Envelope::Event(body));
    conn.publish(EVENTS_EXCHANGE, topic, msg).await
}

/// A stream of events matching a pattern; see [`Mesh::subscribe`].
pub struct EventSubscription {
    pattern: String,
    queue: String,
    stream: DeliveryStream,
    /// Told when the subscription is dropped, so its (auto-delete) queue is not
    /// re-declared after a reconnect.
    conn: Arc<dyn Connection>,
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        self.conn.forget_queue(&self.queue);
    }
}

impl fmt::Debug for EventSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSubscription")
            .field("pattern", &self.pattern)
            .field("queue", &self.queue)
            .finish()
    }
}

impl EventSubscription {
    /// The subscribed pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The next event, or `None` once the mesh disconnected. Malformed messages are
    /// logged and skipped.
    pub async fn next(&mut self) -> Option<EventBody> {
        while let Some(d) = self.stream.next().await {
            let (msg, _settle) = d.into_parts();
            match msg.payload.into_envelope() {
                Ok(Envelope::Event(ev)) => return Some(ev),
                Ok(other) => warn!(
                    pattern = %self.pattern,
                    tag = %other.message_type(),
                    "dropped non-event message on an event subscription"
                ),
                Err(e) => warn!(pattern = %self.pattern, error = %e, "dropped malformed event"),
            }
        }
        None
    }
}

/// A [`MeshError::Timeout`] of a step of a call (its key lookup, its request) as the
/// call's own: `service.method` timed out after the caller's deadline `after`.
fn caller_timeout(e: MeshError, service: &str, method: &str, after: Duration) -> MeshError {
    match e {
        MeshError::Timeout { .. } => MeshError::Timeout {
            service: service.to_owned(),
            method: method.to_owned(),
            after,
        },
        other => other,
    }
}

/// The outcome of publishing a call: one that no queue takes is
/// [`MeshError::NotFound`].
fn call_published(
    published: Result<(), MeshError>,
    service: &str,
    method: &str,
) -> Result<(), MeshError> {
    match published {
        Err(MeshError::Unroutable { .. }) => Err(MeshError::NotFound {
            service: service.to_owned(),
            method: method.to_owned(),
        }),
        other => other,
    }
}

/// Polls `fut` once without a waker: whatever it waits for will not wake this task.
fn poll_quiet<F: Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// Publishes a request and waits for its reply, without waking the caller for the
/// publish itself when the reply comes first (the usual case).
///
/// A broker backend's publish finishes in steps after handing the message to its
/// connection: the write to the socket, then learning whether the broker routed it
/// (on RabbitMQ a `basic.return` makes an unroutable request
/// [`MeshError::NotFound`]). Awaiting them costs the caller wake-ups (thread switches
/// on RabbitMQ) before it even starts waiting for the reply, which for a fast
/// service arrives soon after; and a reply proves that the request was written and
/// routed. So the publish is
/// polled once without a waker (the message is queued for writing), then the reply
/// alone is awaited for `grace`; only after that is the publish awaited beside the
/// reply, so a request that nobody takes still fails with its publish error
/// (`grace` later). The reply future carries the client deadline, which thus also
/// bounds a publish that never completes. Once a reply is in, the publish is polled
/// once more without a waker, which normally finishes it (the reply decided it), so
/// that a backend can release what it holds for it.
async fn publish_and_wait<P, R>(
    publish: P,
    reply: R,
    grace: Duration,
) -> Result<R::Output, MeshError>
where
    P: Future<Output = Result<(), MeshError>>,
    R: Future,
{
    let mut publish = std::pin::pin!(publish);
    let reply = std::pin::pin!(reply);
    match poll_quiet(publish.as_mut()) {
        std::task::Poll::Ready(r) => {
            r?;
            Ok(reply.await)
        }
        std::task::Poll::Pending => reply_then_publish(publish, reply, grace).await,
    }
}

/// The rest of [`publish_and_wait`] when the publish did not finish at once.
async fn reply_then_publish<P, R>(
    mut publish: std::pin::Pin<&mut P>,
    mut reply: std::pin::Pin<&mut R>,
    grace: Duration,
) -> Result<R::Output, MeshError>
where
    P: Future<Output = Result<(), MeshError>>,
    R: Future,
{
    let reply_first = tokio::select! {
        biased;
        r = &mut reply => Some(r),
        () = tokio::time::sleep(grace) => None,
    };
    let r = match reply_first {
        Some(r) => r,
        None => tokio::select! {
            biased;
            r = &mut reply => r,
            p = &mut publish => {
                p?;
                return Ok(reply.await);
            }
        },
    };
    // Its outcome no longer matters: the reply is in (or the deadline passed, and
    // then the call must not wait any longer for a publish that is stuck).
    let _ = poll_quiet(publish.as_mut());
    Ok(r)
}

async fn reply_loop(
    mut stream: DeliveryStream,
    pending: Arc<PendingMap>,
    shutdown: CancellationToken,
) {
    // One registration of the stop wait for the whole loop; a ready reply is taken
    // without polling it (the flag is checked on each turn instead).
    let mut stopped = std::pin::pin!(shutdown.cancelled());
    while !shutdown.is_cancelled() {
        let d = tokio::select! {
            biased;
            d = stream.next() => d,
            () = &mut stopped => None,
        };
        let Some(d) = d else { break };
        let (msg, _settle) = d.into_parts();
        let id = &msg.properties.correlation_id;
        let Some(p) = pending.remove(id) else {
            pending.unpaired.fetch_add(1, Ordering::Relaxed);
            debug!(correlation_id = %id, "unpaired response dropped");
            continue;
        };
        let reply = decode_reply(msg, p.session.as_deref());
        let _ = p.tx.send(Answer::Reply(reply));
    }
    debug!("reply consumer stopped");
}

/// Fails the calls waiting for a reply when the connection loses its link to the
/// broker: their replies cannot come back on a new connection.
async fn loss_loop(
    mut losses: tokio::sync::watch::Receiver<u64>,
    pending: Arc<PendingMap>,
    service_name: String,
    shutdown: CancellationToken,
) {
    loop {
        let changed = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            changed = losses.changed() => changed,
        };
        if changed.is_err() {
            break;
        }
        let count = *losses.borrow_and_update();
        let failed = pending.fail_lost(count);
        if failed > 0 {
            warn!(service = %service_name, calls = failed, "broker connection lost: calls waiting for a reply fail with ConnectionLost");
        }
    }
}

fn decode_reply(msg: Box<Message>, session: Option<&dyn SessionKey>) -> Reply {
    let kind = msg.headers.message_type()?;
    if kind != MessageType::Response {
        return Err(MeshError::Malformed(format!(
            "expected a response on the response queue, got {kind}"
        )));
    }
    let env = if msg.headers.encrypted {
        let s = session.ok_or_else(|| {
            MeshError::Encryption("encrypted reply to a call that was not encrypted".into())
        })?;
        let plain = s.open(&msg.payload.to_bytes()?)?;
        Envelope::from_slice(&plain)?
    } else {
        msg.payload.into_envelope()?
    };
    match env {
        Envelope::Response(body) => Ok((body, msg.headers)),
        other => Err(MeshError::Malformed(format!(
            "response header with a {} body",
            other.message_type()
        ))),
    }
}

async fn dispatch_loop(
    inner: std::sync::Weak<Inner>,
    mut stream: DeliveryStream,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut stopped = std::pin::pin!(stop.cancelled());
    while !stop.is_cancelled() {
        let d = tokio::select! {
            biased;
            d = stream.next() => d,
            () = &mut stopped => None,
        };
        let Some(d) = d else { break };
        if stop.is_cancelled() {
            // Taken as a graceful disconnect stopped consuming (the select prefers a
            // ready delivery): not started, so it is dropped unsettled, which hands it
            // back to the broker for another instance. Started now, it could run while
            // the connection closes, fail to answer and be run again elsewhere.
            drop(d);
            break;
        }
        let Some(inner) = inner.upgrade() else { break };
        // Encrypted calls start with an RSA decryption (milliseconds of CPU): they go
        // to their own task at once so that they can run in parallel.
        let heavy = d.message.headers.encrypted;
        let mut fut = tracker.track_future(Box::pin(handle_work(inner, d)));
        // Everything else runs inline up to its first suspension: a handler that does
        // not wait (like most) is decoded, answered and settled without a task spawn
        // and its scheduling hop; one that waits continues on its own task.
        // A panicking handler is contained as it would be on its own task: its
        // delivery is dropped unsettled (requeued) and the service keeps consuming.
        let done = !heavy
            && std::future::poll_fn(|cx| {
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    std::pin::Pin::new(&mut fut).poll(cx)
                }));
                std::task::Poll::Ready(match polled {
                    Ok(p) => p.is_ready(),
                    Err(_) => {
                        warn!(
                            "a service failed outside its handler (panic); its delivery is requeued"
                        );
                        true
                    }
                })
            })
            .await;
        if !done {
            tokio::spawn(fut);
        }
    }
    debug!("service consumer stopped");
}

struct Incoming {
    env: Arc<Envelope>,
    encrypted: bool,
    session: Option<Box<dyn SessionKey>>,
    deadline_ms: Option<u64>,
}

fn decode_incoming(inner: &Inner, msg: &Message) -> Result<Incoming, MeshError> {
    let kind = msg.headers.message_type()?;
    let (env, session) = if msg.headers.encrypted {
        let keys = inner.config.service_keys.as_ref().ok_or_else(|| {
            MeshError::Encryption("encrypted message but this service has no keys".into())
        })?;
        let (plain, s) = keys.open_request(&msg.payload.to_bytes()?)?;
        (Arc::new(Envelope::from_slice(&plain)?), Some(s))
    } else {
        // In-process payloads are shared, not cloned: handlers read them by reference.
        (msg.payload.envelope()?, None)
    };
    if env.message_type() != kind {
        return Err(MeshError::Malformed(format!(
            "nuropb_type header {kind} does not match body tag {}",
            env.message_type()
        )));
    }
    Ok(Incoming {
        env,
        encrypted: msg.headers.encrypted,
        session,
        deadline_ms: msg.headers.deadline_ms,
    })
}

/// Settles a delivery (ack, or reject without requeue); a failure is logged. The
/// backend is told before the returned future exists.
fn settle(settle: Settle, ack: bool, what: &'static str) -> impl Future<Output = ()> + Send {
    let answer = if ack {
        futures::future::Either::Left(settle.ack())
    } else {
        futures::future::Either::Right(settle.reject(false))
    };
    async move {
        if let Err(e) = answer.await {
            warn!(error = %e, what, "settling a delivery failed");
        }
    }
}

/// Handles one delivery to the service queue. Everything up to the handler's own
/// future is done before the first wait, so that what this future keeps across its
/// waits (and what boxing it moves) stays small.
async fn handle_work(inner: Arc<Inner>, d: crate::backend::Delivery) {
    match start_work(&inner, d) {
        Step::Done => {}
        Step::Finish(finish, outcome) => finish_call(&inner, finish, outcome, None).await,
        Step::Handler(handler, ctx, finish) => {
            match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
                Ok(outcome) => finish_call(&inner, finish, outcome, Some(ctx)).await,
                Err(_) => call_panicked(&inner, finish).await,
            }
        }
        Step::Panicked(finish) => call_panicked(&inner, finish).await,
        Step::Poison(dead, reply) => {
            let Poison {
                settle: settle_handle,
                dead_letter,
            } = *dead;
            dead_letter.settle(settle_handle).await;
            if let Some(reply) = reply {
                let (rt, msg) = *reply;
                publish_reply(&inner, &rt, msg).await;
            }
        }
        Step::Event(handler, work) => {
            match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
                Ok(Ok(())) => settle(work.settle, true, "event").await,
                Ok(Err(e)) => {
                    warn!(service = %inner.service_name, topic = %work.topic, error = %e, "event handler failed; event dead-lettered");
                    let EventWork {
                        settle: settle_handle,
                        topic,
                        message,
                    } = *work;
                    let dead_letter = DeadLetter {
                        what: "failed event",
                        message,
                        reason: format!(
                            "the event handler of {} failed on an event of topic {topic:?}: {e}",
                            inner.service_name
                        ),
                    };
                    dead_letter.settle(settle_handle).await;
                }
                Err(_) => event_panicked(&inner, *work).await,
            }
        }
        Step::EventPanicked(work) => event_panicked(&inner, *work).await,
    }
}

/// A call whose handler panicked. The first time its delivery is requeued (the panic
/// may have been transient); a delivery that was already redelivered (its message was
/// kept for this) is dead-lettered with a reason naming the service and method, and
/// the caller of a request gets an error reply, so a handler that always panics runs
/// at most twice per message instead of forever.
async fn call_panicked(inner: &Inner, mut finish: FinishCall) {
    let method = match finish.env.as_ref() {
        Envelope::Request(b) | Envelope::Command(b) => b.method.clone(),
        _ => String::new(),
    };
    let kept = finish.kept.take();
    let Some(message) = kept.filter(|_| finish.settle.redelivered()) else {
        warn!(service = %inner.service_name, method = %method, correlation_id = %finish.correlation_id, "a service handler panicked; its delivery is requeued once");
        // Dropping the unsettled delivery requeues it (marked redelivered).
        drop(finish);
        return;
    };
    warn!(service = %inner.service_name, method = %method, correlation_id = %finish.correlation_id, "a service handler panicked on a redelivered message; dead-lettered");
    let panicked = format!(
        "{}.{method} panicked while handling the request",
        inner.service_name
    );
    finish.dead_letter = Some(DeadLetter {
        what: "handler panicked",
        message,
        reason: format!("{panicked}, on its first delivery and again on its redelivery"),
    });
    finish_call(inner, finish, Err(ServiceError::handling(panicked)), None).await;
}

/// An event whose handler panicked: requeued once, dead-lettered with a reason naming
/// the service and the topic when redelivered (see [`call_panicked`]).
async fn event_panicked(inner: &Inner, work: EventWork) {
    let EventWork {
        settle: settle_handle,
        topic,
        message,
    } = work;
    if !settle_handle.redelivered() {
        warn!(service = %inner.service_name, topic = %topic, "an event handler panicked; the event is requeued once");
        drop(settle_handle);
        return;
    }
    warn!(service = %inner.service_name, topic = %topic, "an event handler panicked on a redelivered event; dead-lettered");
    let dead_letter = DeadLetter {
        what: "event handler panicked",
        message,
        reason: format!(
            "the event handler of {} panicked while handling an event of topic {topic:?}, \
             on its first delivery and again on its redelivery",
            inner.service_name
        ),
    };
    dead_letter.settle(settle_handle).await;
}

/// What is left of a delivery once [`start_work`] has run.
enum Step {
    /// Nothing (settled and answered as far as the backend needs waiting for).
    Done,
    /// A call decided without its handler (describe, unknown method, expired,
    /// encryption required).
    Finish(FinishCall, Result<Value, ServiceError>),
    /// A call whose handler is running.
    Handler(
        BoxFuture<'static, Result<Value, ServiceError>>,
        Arc<RequestContext>,
        FinishCall,
    ),
    /// A message that cannot be handled: dead-letter it (with the reason), then send
    /// the error reply (destination and message) if it was a request.
    Poison(Box<Poison>, Option<Box<(String, Message)>>),
    /// An event whose handler is running.
    Event(BoxFuture<'static, Result<(), ServiceError>>, Box<EventWork>),
    /// A call whose handler panicked before returning its future.
    Panicked(FinishCall),
    /// An event whose handler panicked before returning its future.
    EventPanicked(Box<EventWork>),
}

/// What settling an event needs once its handler is done.
struct EventWork {
    settle: Settle,
    topic: String,
    /// The delivered message (moved here, not copied): what its dead letter needs
    /// should its handler fail, or panic on a redelivery (see [`event_panicked`]).
    message: Box<Message>,
}

/// A delivery to dead-letter because it cannot be handled (why: the decode error).
struct Poison {
    settle: Settle,
    dead_letter: DeadLetter,
}

/// What answering a call needs once its outcome is known.
struct FinishCall {
    /// The decoded body (for the method name and the caller's context).
    env: Arc<Envelope>,
    is_command: bool,
    reply_to: Option<String>,
    correlation_id: String,
    trace_id: Option<String>,
    session: Option<Box<dyn SessionKey>>,
    settle: Settle,
    /// Dead-letter it (before any reply) whatever the outcome: an expired call, a
    /// response on a service queue, a handler that panicked on a redelivery.
    dead_letter: Option<DeadLetter>,
    /// The delivered message (moved here, not copied), kept only when its handler's
    /// outcome may dead-letter it: a redelivery (whose handler, should it panic again,
    /// is dead-lettered, see [`call_panicked`]; a first delivery whose handler panics
    /// is requeued) or any call of a service that dead-letters failed calls
    /// ([`MeshConfig::dead_letter_failed`]). Every other call drops its message before
    /// its handler runs.
    kept: Option<Box<Message>>,
}

/// A dead letter with its reason: a delivery that is dead-lettered whatever the
/// outcome of its handling.
struct DeadLetter {
    /// What it is, for the log.
    what: &'static str,
    /// The delivered message (what a backend republishing the dead letter needs).
    message: Box<Message>,
    /// Why, in words: what the dead letter carries ([`Settle::dead_letter`]).
    reason: String,
}

impl DeadLetter {
    /// Dead-letters the delivery with its reason; a failure is logged.
    async fn settle(self, settle_handle: Settle) {
        let Self {
            what,
            message,
            reason,
        } = self;
        if let Err(e) = settle_handle.dead_letter(message, reason).await {
            warn!(error = %e, what, "dead-lettering a delivery failed");
        }
    }
}

/// Decodes and checks a delivery and starts its handler (without waiting for it).
fn start_work(inner: &Arc<Inner>, d: crate::backend::Delivery) -> Step {
    // The call's addressing is moved out of the message, not copied.
    let (mut msg, settle_handle) = d.into_parts();
    let reply_to = msg.properties.reply_to.take();
    let correlation_id = std::mem::take(&mut msg.properties.correlation_id);
    let header_trace = msg.headers.trace_id.take();
    let is_request = msg.headers.nuropb_type == "request";
    let incoming = match decode_incoming(inner, &msg) {
        Ok(i) => i,
        Err(error) => {
            warn!(
                service = %inner.service_name,
                correlation_id = %correlation_id,
                error = %error,
                "poison message dead-lettered"
            );
            let reply = match (is_request, reply_to) {
                (true, Some(rt)) => {
                    let class = if matches!(error, MeshError::Encryption(_)) {
                        class::ENCRYPTION
                    } else {
                        class::MESSAGE
                    };
                    let meta = ReplyMeta {
                        correlation_id,
                        trace_id: header_trace,
                        context: Value::Null,
                        session: None,
                    };
                    let description = if class == class::ENCRYPTION {
                        format!("{UNDECRYPTABLE}{error}")
                    } else {
                        error.to_string()
                    };
                    let err = ServiceError::new(class, description);
                    reply_message(inner, &rt, meta, Err(err)).map(|msg| Box::new((rt, msg)))
                }
                _ => None,
            };
            let dead = Box::new(Poison {
                settle: settle_handle,
                dead_letter: DeadLetter {
                    what: "poison message",
                    message: msg,
                    reason: error.to_string(),
                },
            });
            return Step::Poison(dead, reply);
        }
    };
    let (is_command, body) = match incoming.env.as_ref() {
        Envelope::Request(b) => (false, b),
        Envelope::Command(b) => (true, b),
        Envelope::Event(ev) => {
            let Some(s) = &inner.serving else {
                return Step::Done;
            };
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.service.on_event(ev.clone())
            }));
            let work = Box::new(EventWork {
                settle: settle_handle,
                topic: ev.topic.clone(),
                message: msg,
            });
            return match started {
                Ok(handler) => Step::Event(handler, work),
                Err(_) => Step::EventPanicked(work),
            };
        }
        Envelope::Response(_) => {
            warn!(service = %inner.service_name, correlation_id = %correlation_id, "response on a service queue dead-lettered");
            let reason = format!(
                "stray response (correlation id {correlation_id:?}) on the service queue of \
                 {}: responses go to a caller's response queue",
                inner.service_name
            );
            return Step::Finish(
                FinishCall {
                    env: incoming.env.clone(),
                    is_command: true,
                    reply_to: None,
                    correlation_id,
                    trace_id: None,
                    session: None,
                    settle: settle_handle,
                    dead_letter: Some(DeadLetter {
                        what: "stray response",
                        message: msg,
                        reason,
                    }),
                    kept: None,
                },
                Ok(Value::Null),
            );
        }
    };
    let Some(serving) = &inner.serving else {
        return Step::Done;
    };
    let method = body.method.as_str();
    let trace_id = header_trace.or_else(|| body.trace_id.clone());
    let now = incoming.deadline_ms.map(|_| now_ms());
    let (expired, kept) = match (incoming.deadline_ms, now) {
        (Some(deadline), Some(now)) if now > deadline => (
            Some(DeadLetter {
                what: "expired request",
                message: msg,
                reason: format!(
                    "deadline passed before {}.{method} was handled: {} {deadline} (Unix ms) \
                     is {} ms before now ({now})",
                    inner.service_name,
                    crate::message::header::DEADLINE,
                    now - deadline
                ),
            }),
            None,
        ),
        // Moved, not copied, and only when the outcome may dead-letter it.
        _ => (
            None,
            (settle_handle.redelivered() || inner.config.dead_letter_failed).then_some(msg),
        ),
    };
    let is_expired = expired.is_some();
    let finish = FinishCall {
        env: incoming.env.clone(),
        is_command,
        reply_to,
        correlation_id,
        trace_id,
        session: incoming.session,
        settle: settle_handle,
        dead_letter: expired,
        kept,
    };
    let info = serving.methods.get(method);
    let outcome = if is_expired {
        warn!(service = %inner.service_name, method = %method, correlation_id = %finish.correlation_id, "request past its deadline dead-lettered");
        Err(ServiceError::new(
            class::TIMEOUT,
            format!(
                "deadline passed before {}.{method} was handled",
                inner.service_name
            ),
        ))
    } else if method == DESCRIBE_METHOD {
        Ok(serving.describe.clone())
    } else if method.starts_with('_') || info.is_none() {
        Err(ServiceError::handling(format!("Unknown method {method}")))
    } else if info.is_some_and(|m| m.requires_encryption) && !incoming.encrypted {
        Err(ServiceError::new(
            class::ENCRYPTION_REQUIRED,
            format!("{}.{method} requires encryption", inner.service_name),
        ))
    } else {
        let mut c = RequestContext::new(inner.service_name.clone(), method, body.context.clone());
        c.correlation_id = finish.correlation_id.clone();
        c.trace_id = finish.trace_id.clone();
        c.encrypted = incoming.encrypted;
        c.is_command = is_command;
        c.deadline = incoming
            .deadline_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        let ctx = Arc::new(c);
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serving.service.call(method, &body.params, ctx.clone())
        }));
        return match started {
            Ok(handler) => Step::Handler(handler, ctx, finish),
            Err(_) => Step::Panicked(finish),
        };
    };
    Step::Finish(finish, outcome)
}

/// Answers a call (unless it is a command), settles it, then publishes the events
/// its handler emitted.
async fn finish_call(
    inner: &Inner,
    finish: FinishCall,
    outcome: Result<Value, ServiceError>,
    ctx: Option<Arc<RequestContext>>,
) {
    let FinishCall {
        env,
        is_command,
        reply_to,
        correlation_id,
        trace_id,
        session,
        settle: settle_handle,
        dead_letter,
        kept,
    } = finish;
    let method = match env.as_ref() {
        Envelope::Request(b) | Envelope::Command(b) => b.method.as_str(),
        _ => "",
    };
    let failed = outcome.is_err();
    let dead = dead_letter.is_some();
    if let Err(e) = &outcome
        && !dead
    {
        debug!(service = %inner.service_name, method = %method, error = %e, "handler returned an error");
    }
    // The handler's context object (it may have changed it) and emitted events.
    let (context, events) = match ctx {
        Some(ctx) => {
            let events = ctx.take_events();
            let context = match Arc::try_unwrap(ctx) {
                Ok(c) => c.context,
                Err(shared) => shared.context.clone(),
            };
            (context, events)
        }
        None => (
            match env.as_ref() {
                Envelope::Request(b) | Envelope::Command(b) => b.context.clone(),
                _ => Value::Null,
            },
            Vec::new(),
        ),
    };
    let event_ids = if events.is_empty() {
        None
    } else {
        Some((trace_id.clone(), correlation_id.clone()))
    };
    let ack = !(failed && inner.config.dead_letter_failed);
    // A failed call of a service that dead-letters failed calls: its dead letter says
    // what the handler answered (the message was kept for this; the reply goes first).
    let failed_dead_letter = match (&outcome, kept) {
        (Err(e), Some(message)) if !ack && !dead => Some(DeadLetter {
            what: "failed call",
            message,
            reason: format!("{}.{method} failed: {e}", inner.service_name),
        }),
        _ => None,
    };
    // An expired call is dead-lettered before it is answered; any other is settled
    // after its reply went out (a crash in between redelivers it rather than lose it).
    let mut settle_handle = Some(settle_handle);
    if let Some(dl) = dead_letter
        && let Some(h) = settle_handle.take()
    {
        dl.settle(h).await;
    }
    match (&reply_to, is_command) {
        (Some(rt), false) => {
            let meta = ReplyMeta {
                correlation_id,
                trace_id,
                context,
                session,
            };
            if let Some(msg) = reply_message(inner, rt, meta, outcome) {
                publish_reply(inner, rt, msg).await;
            }
        }
        (None, false) if !dead => {
            warn!(service = %inner.service_name, method = %method, "request without reply_to; reply dropped");
        }
        _ => {}
    }
    match (settle_handle, failed_dead_letter) {
        (Some(h), Some(dl)) => dl.settle(h).await,
        (Some(h), None) => settle(h, ack, "call").await,
        (None, _) => {}
    }
    if let Some((trace_id, correlation_id)) = event_ids {
        publish_emitted(inner, events, trace_id, correlation_id).await;
    }
}

/// Publishes the events a handler emitted, after its call was answered.
async fn publish_emitted(
    inner: &Inner,
    events: Vec<(String, Value)>,
    trace_id: Option<String>,
    correlation_id: String,
) {
    for (topic, event) in events {
        if let Err(e) = publish_event_on(
            &inner.conn,
            &topic,
            event,
            Value::Object(Map::new()),
            trace_id.clone(),
            correlation_id.clone(),
        )
        .await
        {
            warn!(service = %inner.service_name, topic = %topic, error = %e, "publishing an emitted event failed");
        }
    }
}

/// The addressing of a reply besides its destination.
struct ReplyMeta {
    correlation_id: String,
    trace_id: Option<String>,
    context: Value,
    /// The session key of an encrypted call (the reply is sealed with it).
    session: Option<Box<dyn SessionKey>>,
}

/// Publishes a reply; a failure is logged. The message is handed to the backend
/// before the returned future exists (which thus does not hold it).
fn publish_reply<'a>(
    inner: &'a Inner,
    reply_to: &'a str,
    msg: Message,
) -> impl Future<Output = ()> + Send + 'a {
    let publish = inner.conn.publish(DEFAULT_EXCHANGE, reply_to, msg);
    async move {
        if let Err(e) = publish.await {
            warn!(service = %inner.service_name, reply_to = %reply_to, error = %e, "publishing a reply failed");
        }
    }
}

/// The response message of a call, or `None` (logged) when it cannot be sealed.
fn reply_message(
    inner: &Inner,
    reply_to: &str,
    reply: ReplyMeta,
    outcome: Result<Value, ServiceError>,
) -> Option<Message> {
    let (result, error) = match outcome {
        Ok(v) => (v, None),
        Err(e) => (Value::Null, Some(e)),
    };
    let ReplyMeta {
        correlation_id,
        trace_id,
        context,
        session,
    } = reply;
    let body = ResponseBody {
        result,
        error,
        correlation_id: correlation_id.clone(),
        trace_id: trace_id.clone(),
        context,
        warning: None,
        reply_to: Some(reply_to.to_owned()),
    };
    let mut msg = Message {
        properties: Properties::new(correlation_id),
        headers: Headers::new(MessageType::Response, trace_id),
        payload: Payload::Envelope(Arc::new(Envelope::Response(body))),
        death: None,
    };
    if let Some(s) = session {
        let sealed = msg.payload.to_bytes().and_then(|plain| s.seal(&plain));
        match sealed {
            Ok(b) => {
                msg.payload = Payload::Bytes(Bytes::from(b));
                msg.headers.encrypted = true;
            }
            Err(e) => {
                warn!(service = %inner.service_name, error = %e, "cannot encrypt reply; dropped");
                return None;
            }
        }
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_match_the_formatted_layout() {
        for (p, n) in [
            (0, 0),
            (0x0123_4567_89ab_cdef, 42),
            (u64::MAX, u64::MAX),
            (7, 1 << 63),
        ] {
            assert_eq!(correlation_id(p, n), format!("{p:016x}{n:016x}"));
        }
        let pending = PendingMap::new(0x0123_4567_89ab_cdef);
        assert_eq!(
            pending.key(&correlation_id(0x0123_4567_89ab_cdef, 99)),
            Some(99)
        );
        assert_eq!(pending.key(&correlation_id(1, 99)), None);
    }
}
