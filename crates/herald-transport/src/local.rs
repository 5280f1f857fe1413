//! [`LocalTransport`]: in-process routing of envelopes by actor path.
//!
//! Semantics follow casty 0.21's `LocalTransport`, with its leaks fixed:
//!
//! | situation | what happens |
//! |---|---|
//! | path registered | the handler gets the message (in order per sender/target pair) |
//! | path unregistered recently (tombstone) | dropped, dead letter [`DeadPath`](DeadLetterReason::DeadPath) |
//! | unknown path, a [path factory](LocalTransport::add_path_factory) matches | the first matching factory (registration order) is called once; its handler is registered and gets the message |
//! | unknown path, no factory | buffered, up to `max_pending_per_path` (default 64); beyond that the newest is dropped ([`BufferFull`](DeadLetterReason::BufferFull)) |
//! | all pending buffers together hold `max_pending_total` | the newest is dropped ([`PendingCapReached`](DeadLetterReason::PendingCapReached)) |
//! | a buffered message is older than `pending_ttl` | dropped ([`UnknownPathExpired`](DeadLetterReason::UnknownPathExpired)) |
//! | `register(path)` | tombstone removed, buffered messages flushed in arrival order, `wait_for_path` waiters woken |
//! | `unregister(path)` | handler removed, its buffer dropped ([`DeadPath`](DeadLetterReason::DeadPath)), tombstone added |
//! | tombstones | expire after `tombstone_ttl`; at most `max_tombstones`, the oldest is forgotten first |
//! | after `shutdown` | `deliver`/`register` fail with [`TransportError::Shutdown`]; pending messages become dead letters ([`Shutdown`](DeadLetterReason::Shutdown)) |
//!
//! Time comes from a [`Clock`] (the system clock by default; [`ManualClock`] in tests),
//! so the TTL rules are testable without sleeping. Expired entries are reclaimed lazily
//! by operations that touch unregistered paths, `register` and `unregister` (at most
//! every `sweep_interval`; delivery to a registered mailbox skips this to stay
//! allocation- and clock-free), on demand with [`LocalTransport::sweep`], or
//! periodically by [`LocalTransport::spawn_sweeper`]. The TTL rules are applied exactly
//! whenever an entry is looked at, whatever the sweep schedule, and the caps bound the
//! memory in any case.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herald_wire::Envelope;
use tokio::sync::{mpsc, oneshot};

use crate::dead_letter::{DeadLetterReason, DeadLetters};
use crate::error::TransportError;
use crate::transport::{BoxFuture, LocalEndpoint, MessageTransport, target_path};

/// casty's default for the number of messages buffered for a path nobody registered yet.
pub const DEFAULT_MAX_PENDING_PER_PATH: usize = 64;
/// Default cap on buffered messages over all unknown paths.
pub const DEFAULT_MAX_PENDING_TOTAL: usize = 16 * 1024;
/// Default time a message may wait for its path to be registered.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(30);
/// Default lifetime of a dead-path tombstone.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Default cap on the number of tombstones.
pub const DEFAULT_MAX_TOMBSTONES: usize = 16 * 1024;
/// Default system name used for the local address form `casty://<system>/<path>`.
pub const DEFAULT_SYSTEM_NAME: &str = "herald";

// ---------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------

/// A source of monotonic time, injectable so TTL rules can be tested without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock ([`Instant::now`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use herald_transport::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - t0, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    base: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A manual clock starting at the current instant.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

// ---------------------------------------------------------------------------------
// Handlers and factories
// ---------------------------------------------------------------------------------

type Callback = Arc<dyn Fn(Envelope) + Send + Sync>;

/// What a registered path does with its messages.
///
/// * [`Handler::from_sender`]: push into a bounded tokio mailbox (`try_send`; a full
///   mailbox drops with [`MailboxFull`](DeadLetterReason::MailboxFull));
/// * [`Handler::from_unbounded`]: push into an unbounded tokio mailbox;
/// * [`Handler::from_fn`]: call a function. It runs on the delivering thread, so keep
///   it short and non-blocking; it may call back into the transport (even deliver to its
///   own path: that message is queued and handled right after). A panic is caught and
///   reported as a [`HandlerPanicked`](DeadLetterReason::HandlerPanicked) dead letter.
///
/// When a mailbox's receiver is dropped, messages become
/// [`MailboxClosed`](DeadLetterReason::MailboxClosed) dead letters and the path is
/// unregistered (it gets a tombstone).
#[derive(Clone)]
pub struct Handler(HandlerKind);

#[derive(Clone)]
enum HandlerKind {
    Fn(Callback),
    Bounded(mpsc::Sender<Envelope>),
    Unbounded(mpsc::UnboundedSender<Envelope>),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            HandlerKind::Fn(_) => "fn",
            HandlerKind::Bounded(_) => "bounded mailbox",
            HandlerKind::Unbounded(_) => "unbounded mailbox",
        };
        f.debug_tuple("Handler").field(&kind).finish()
    }
}

/// Outcome of handing one message to a handler.
enum Handed {
    Ok,
    Dropped(Envelope, DeadLetterReason),
    /// The mailbox is gone: drop and unregister the path.
    Closed(Envelope),
}

impl Handler {
    /// A handler that calls `f` for every message.
    pub fn from_fn(f: impl Fn(Envelope) + Send + Sync + 'static) -> Self {
        Self(HandlerKind::Fn(Arc::new(f)))
    }

    /// A handler that pushes into a bounded mailbox without waiting.
    pub fn from_sender(tx: mpsc::Sender<Envelope>) -> Self {
        Self(HandlerKind::Bounded(tx))
    }

    /// A handler that pushes into an unbounded mailbox.
    pub fn from_unbounded(tx: mpsc::UnboundedSender<Envelope>) -> Self {
        Self(HandlerKind::Unbounded(tx))
    }

    fn is_callback(&self) -> bool {
        matches!(self.0, HandlerKind::Fn(_))
    }

    fn hand(&self, envelope: Envelope) -> Handed {
        match &self.0 {
            HandlerKind::Fn(f) => {
                let f = Arc::clone(f);
                // Keep a cheap copy for the dead letter in case the callback panics.
                let copy = envelope.clone();
                match catch_unwind(AssertUnwindSafe(move || f(envelope))) {
                    Ok(()) => Handed::Ok,
                    Err(_) => {
                        tracing::error!(
                            target_address = %copy.target,
                            type_hint = %copy.type_hint,
                            "local transport handler panicked; message dropped"
                        );
                        Handed::Dropped(copy, DeadLetterReason::HandlerPanicked)
                    }
                }
            }
            HandlerKind::Bounded(tx) => match tx.try_send(envelope) {
                Ok(()) => Handed::Ok,
                Err(mpsc::error::TrySendError::Full(e)) => {
                    Handed::Dropped(e, DeadLetterReason::MailboxFull)
                }
                Err(mpsc::error::TrySendError::Closed(e)) => Handed::Closed(e),
            },
            HandlerKind::Unbounded(tx) => match tx.send(envelope) {
                Ok(()) => Handed::Ok,
                Err(mpsc::error::SendError(e)) => Handed::Closed(e),
            },
        }
    }
}

/// Which unknown paths a [path factory](LocalTransport::add_path_factory) serves.
#[derive(Clone)]
pub enum PathMatcher {
    /// Paths starting with this prefix (for example `/_coord-`).
    Prefix(String),
    /// Paths for which the predicate returns `true`.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl PathMatcher {
    /// Matches paths starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::Prefix(prefix.into())
    }

    /// Matches paths accepted by `f`.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::Predicate(Arc::new(f))
    }

    /// Whether `path` is matched.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Predicate(f) => f(path),
        }
    }
}

impl fmt::Debug for PathMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

type FactoryFn = Arc<dyn Fn(&str) -> Option<Handler> + Send + Sync>;

struct Factory {
    matcher: PathMatcher,
    make: FactoryFn,
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

/// Limits and settings of a [`LocalTransport`]; build one with [`LocalTransport::builder`].
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Messages buffered per unknown path before the newest are dropped (default 64).
    pub max_pending_per_path: usize,
    /// Messages buffered over all unknown paths (default 16384).
    pub max_pending_total: usize,
    /// How long a buffered message waits for its path (default 30 s).
    pub pending_ttl: Duration,
    /// How long an unregistered path stays dead (default 60 s).
    pub tombstone_ttl: Duration,
    /// Maximum number of tombstones; the oldest is forgotten first (default 16384).
    pub max_tombstones: usize,
    /// How often operations reclaim expired entries (default: a tenth of the shorter TTL,
    /// at least 1 ms).
    pub sweep_interval: Duration,
    /// System name for the local address form `casty://<system>/path` (default `herald`).
    pub system: String,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            max_pending_per_path: DEFAULT_MAX_PENDING_PER_PATH,
            max_pending_total: DEFAULT_MAX_PENDING_TOTAL,
            pending_ttl: DEFAULT_PENDING_TTL,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            max_tombstones: DEFAULT_MAX_TOMBSTONES,
            sweep_interval: default_sweep_interval(DEFAULT_PENDING_TTL, DEFAULT_TOMBSTONE_TTL),
            system: DEFAULT_SYSTEM_NAME.to_string(),
        }
    }
}

fn default_sweep_interval(pending_ttl: Duration, tombstone_ttl: Duration) -> Duration {
    (pending_ttl.min(tombstone_ttl) / 10).max(Duration::from_millis(1))
}

/// Builder for [`LocalTransport`].
///
/// ```
/// use std::time::Duration;
/// use herald_transport::{DeadLetters, LocalTransport};
/// let dead = DeadLetters::default();
/// let local = LocalTransport::builder()
///     .system("orders")
///     .max_pending_per_path(8)
///     .pending_ttl(Duration::from_secs(5))
///     .dead_letters(dead.clone())
///     .build();
/// assert!(local.dead_letters().same_sink(&dead));
/// assert_eq!(local.root(), "casty://orders");
/// ```
#[derive(Debug, Default)]
pub struct LocalTransportBuilder {
    config: LocalConfig,
    sweep_set: bool,
    dead_letters: Option<DeadLetters>,
    clock: Option<Arc<dyn Clock>>,
}

impl LocalTransportBuilder {
    /// Messages buffered per unknown path (default 64). 0 disables buffering.
    pub fn max_pending_per_path(mut self, n: usize) -> Self {
        self.config.max_pending_per_path = n;
        self
    }
    /// Messages buffered over all unknown paths (default 16384).
    pub fn max_pending_total(mut self, n: usize) -> Self {
        self.config.max_pending_total = n;
        self
    }
    /// How long a buffered message waits for its path (default 30 s).
    pub fn pending_ttl(mut self, ttl: Duration) -> Self {
        self.config.pending_ttl = ttl;
        self
    }
    /// How long an unregistered path stays dead (default 60 s).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.config.tombstone_ttl = ttl;
        self
    }
    /// Maximum number of tombstones (default 16384).
    pub fn max_tombstones(mut self, n: usize) -> Self {
        self.config.max_tombstones = n;
        self
    }
    /// How often operations reclaim expired entries.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.config.sweep_interval = every;
        self.sweep_set = true;
        self
    }
    /// System name for the local address form (default `herald`).
    pub fn system(mut self, name: impl Into<String>) -> Self {
        self.config.system = name.into();
        self
    }
    /// Reports drops to this (possibly shared) sink instead of a new one.
    pub fn dead_letters(mut self, sink: DeadLetters) -> Self {
        self.dead_letters = Some(sink);
        self
    }
    /// Uses this clock for TTLs (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: LocalConfig) -> Self {
        self.config = config;
        self.sweep_set = true;
        self
    }

    /// Builds the transport.
    pub fn build(self) -> LocalTransport {
        let mut config = self.config;
        if !self.sweep_set {
            config.sweep_interval =
                default_sweep_interval(config.pending_ttl, config.tombstone_ttl);
        }
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let now = clock.now();
        let root = format!("casty://{}", config.system);
        LocalTransport {
            inner: Arc::new(Inner {
                dead_letters: self.dead_letters.unwrap_or_default(),
                root,
                state: Mutex::new(State {
                    shut_down: false,
                    routes: HashMap::new(),
                    tombstones: HashMap::new(),
                    tombstone_order: VecDeque::new(),
                    pending: HashMap::new(),
                    pending_total: 0,
                    waiters: HashMap::new(),
                    spawning: HashSet::new(),
                    factories: Vec::new(),
                    next_generation: 0,
                    next_sweep: now + config.sweep_interval,
                }),
                config,
                clock,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------

struct Route {
    handler: Handler,
    /// Messages accepted but not yet handed to the handler (see `drain`).
    queue: VecDeque<Envelope>,
    /// Whether some thread is currently handing this route's queue to the handler.
    draining: bool,
    generation: u64,
}

/// A dead path's marker; `seq` tells a current tombstone from a stale queue entry for
/// the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tombstone {
    expiry: Instant,
    seq: u64,
}

struct State {
    shut_down: bool,
    routes: HashMap<String, Route>,
    /// path -> its tombstone.
    tombstones: HashMap<String, Tombstone>,
    /// (path, expiry) in insertion (= expiry) order; may hold stale entries that no
    /// longer match `tombstones`, they are skipped.
    tombstone_order: VecDeque<(String, Tombstone)>,
    /// path -> buffered (arrival time, message), oldest first.
    pending: HashMap<String, VecDeque<(Instant, Envelope)>>,
    pending_total: usize,
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Paths whose factory is running right now (a factory runs once per path at a time).
    spawning: HashSet<String>,
    factories: Vec<Arc<Factory>>,
    next_generation: u64,
    next_sweep: Instant,
}

type Drops = Vec<(Envelope, DeadLetterReason)>;

struct Inner {
    config: LocalConfig,
    dead_letters: DeadLetters,
    clock: Arc<dyn Clock>,
    root: String,
    state: Mutex<State>,
}

/// Routes envelopes to handlers registered by actor path, inside one process.
///
/// Cheap to clone (an `Arc` inside); clones are the same transport. See the
/// [module documentation](self) for the rules.
///
/// ```
/// use herald_transport::{LocalTransport, MessageTransport};
/// use herald_wire::Envelope;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herald_transport::TransportError> {
/// let local = LocalTransport::new();
/// // A message to a path nobody registered yet is buffered ...
/// local.deliver(Envelope::new("casty://herald/user/a", "", "demo.Ping", &b"1"[..]))?;
/// // ... and flushed, in order, when the path is registered.
/// let mut inbox = local.register_channel("/user/a", 8)?;
/// assert_eq!(&inbox.recv().await.unwrap().payload[..], b"1");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LocalTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("LocalTransport")
            .field("root", &self.inner.root)
            .field("registered", &st.routes.len())
            .field("pending", &st.pending_total)
            .field("tombstones", &st.tombstones.len())
            .field("shut_down", &st.shut_down)
            .finish()
    }
}

impl Default for LocalTransport {
    fn default() -> Self {
        Self::new()
    }
}

/// Normalises a path given by a user: non-empty, no whitespace or control characters,
/// leading `/` added if missing.
fn normalize_path(path: &str) -> Result<String, TransportError> {
    if path.is_empty() {
        return Err(TransportError::InvalidPath {
            path: path.to_string(),
            reason: "the path is empty",
        });
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(TransportError::InvalidPath {
            path: path.to_string(),
            reason: "the path contains a control character",
        });
    }
    if path.starts_with('/') {
        Ok(path.to_string())
    } else {
        Ok(format!("/{path}"))
    }
}

impl LocalTransport {
    /// A transport with the default configuration and a new dead-letter sink.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set limits, the clock, the system name or a shared dead-letter sink.
    pub fn builder() -> LocalTransportBuilder {
        LocalTransportBuilder::default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &LocalConfig {
        &self.inner.config
    }

    /// The dead-letter sink (shared by clones).
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dead_letters
    }

    /// The local URI prefix, `casty://<system>`.
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    /// The local address of `path`: `casty://<system>/path`.
    pub fn address_of(&self, path: &str) -> String {
        LocalEndpoint {
            transport: self.clone(),
            root: self.inner.root.clone(),
        }
        .address_of(path)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held cannot leave the state half-updated in a way
        // that matters more than refusing to route; recover the guard.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, drops: Drops) {
        for (envelope, reason) in drops {
            self.inner.dead_letters.publish(envelope, reason);
        }
    }

    // -----------------------------------------------------------------------------
    // Registration
    // -----------------------------------------------------------------------------

    /// Registers `handler` for `path` (a leading `/` is added if missing).
    ///
    /// Removes the path's tombstone, hands the messages buffered for it to the handler
    /// in arrival order (before this call returns), and wakes
    /// [`wait_for_path`](Self::wait_for_path) callers.
    ///
    /// Fails with [`TransportError::PathInUse`] if the path already has a handler,
    /// [`TransportError::InvalidPath`] for an empty path and
    /// [`TransportError::Shutdown`] after shutdown.
    pub fn register(&self, path: &str, handler: Handler) -> Result<(), TransportError> {
        let path = normalize_path(path)?;
        let mut drops = Drops::new();
        let mut st = self.lock();
        if st.shut_down {
            return Err(TransportError::Shutdown);
        }
        let now = self.inner.clock.now();
        self.maybe_sweep(&mut st, now, &mut drops);
        let result = self.register_locked(&mut st, &path, handler, now, &mut drops);
        drop(st);
        // Publish what the sweep collected even when the registration is refused.
        self.publish(drops);
        if let Some((handler, generation, batch)) = result? {
            self.drain(&path, handler, generation, batch);
        }
        Ok(())
    }

    /// Registers a new bounded mailbox of `capacity` messages for `path` and returns its
    /// receiver.
    pub fn register_channel(
        &self,
        path: &str,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Envelope>, TransportError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.register(path, Handler::from_sender(tx))?;
        Ok(rx)
    }

    /// Registers a new unbounded mailbox for `path` and returns its receiver.
    pub fn register_unbounded(
        &self,
        path: &str,
    ) -> Result<mpsc::UnboundedReceiver<Envelope>, TransportError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.register(path, Handler::from_unbounded(tx))?;
        Ok(rx)
    }

    /// Registers a callback for `path`.
    pub fn register_fn(
        &self,
        path: &str,
        f: impl Fn(Envelope) + Send + Sync + 'static,
    ) -> Result<(), TransportError> {
        self.register(path, Handler::from_fn(f))
    }

    /// Installs the route; returns what must be flushed (outside the lock).
    #[allow(clippy::type_complexity)]
    fn register_locked(
        &self,
        st: &mut State,
        path: &str,
        handler: Handler,
        now: Instant,
        drops: &mut Drops,
    ) -> Result<Option<(Handler, u64, VecDeque<Envelope>)>, TransportError> {
        if st.routes.contains_key(path) {
            return Err(TransportError::PathInUse {
                path: path.to_string(),
            });
        }
        st.tombstones.remove(path);
        let mut queue = VecDeque::new();
        if let Some(buffered) = st.pending.remove(path) {
            st.pending_total -= buffered.len();
            let ttl = self.inner.config.pending_ttl;
            for (at, env) in buffered {
                if now.saturating_duration_since(at) > ttl {
                    drops.push((env, DeadLetterReason::UnknownPathExpired));
                } else {
                    queue.push_back(env);
                }
            }
        }
        let generation = st.next_generation;
        st.next_generation += 1;
        let flush = !queue.is_empty();
        st.routes.insert(
            path.to_string(),
            Route {
                handler: handler.clone(),
                queue: VecDeque::new(),
                draining: flush,
                generation,
            },
        );
        if let Some(waiters) = st.waiters.remove(path) {
            for w in waiters {
                let _ = w.send(());
            }
        }
        tracing::trace!(path, flushed = queue.len(), "path registered");
        Ok(flush.then_some((handler, generation, queue)))
    }

    /// Unregisters `path`: removes its handler, drops its queued and buffered messages
    /// as [`DeadPath`](DeadLetterReason::DeadPath) dead letters and marks it dead for
    /// `tombstone_ttl`. Returns whether a handler was registered.
    pub fn unregister(&self, path: &str) -> bool {
        let Ok(path) = normalize_path(path) else {
            return false;
        };
        let mut drops = Drops::new();
        let mut st = self.lock();
        if st.shut_down {
            return false;
        }
        let now = self.inner.clock.now();
        self.maybe_sweep(&mut st, now, &mut drops);
        let was = self.unregister_locked(&mut st, &path, now, &mut drops);
        drop(st);
        self.publish(drops);
        was
    }

    fn unregister_locked(
        &self,
        st: &mut State,
        path: &str,
        now: Instant,
        drops: &mut Drops,
    ) -> bool {
        let was = match st.routes.remove(path) {
            Some(route) => {
                drops.extend(
                    route
                        .queue
                        .into_iter()
                        .map(|e| (e, DeadLetterReason::DeadPath)),
                );
                true
            }
            None => false,
        };
        if let Some(buffered) = st.pending.remove(path) {
            st.pending_total -= buffered.len();
            drops.extend(
                buffered
                    .into_iter()
                    .map(|(_, e)| (e, DeadLetterReason::DeadPath)),
            );
        }
        self.add_tombstone(st, path, now);
        tracing::trace!(path, was_registered = was, "path unregistered");
        was
    }

    fn add_tombstone(&self, st: &mut State, path: &str, now: Instant) {
        let cfg = &self.inner.config;
        if cfg.max_tombstones == 0 || cfg.tombstone_ttl.is_zero() {
            return;
        }
        let stone = Tombstone {
            expiry: now + cfg.tombstone_ttl,
            seq: st.next_generation,
        };
        st.next_generation += 1;
        st.tombstones.insert(path.to_string(), stone);
        st.tombstone_order.push_back((path.to_string(), stone));
        while st.tombstones.len() > cfg.max_tombstones {
            let Some((old, at)) = st.tombstone_order.pop_front() else {
                break;
            };
            if st.tombstones.get(&old) == Some(&at) {
                st.tombstones.remove(&old);
                tracing::debug!(path = %old, "tombstone cap reached; forgetting the oldest dead path");
            }
        }
        // Stale order entries (re-registered paths) are bounded by compaction.
        if st.tombstone_order.len() > 2 * st.tombstones.len() + 64 {
            let State {
                tombstones,
                tombstone_order,
                ..
            } = st;
            tombstone_order.retain(|(p, at)| tombstones.get(p) == Some(at));
        }
    }

    /// Adds a path factory: when a message arrives for an unknown path (not registered,
    /// not dead) that `matcher` accepts, `factory(path)` is called and the handler it
    /// returns is registered for that path before the message is delivered. Factories
    /// are tried in the order they were added; the first match wins. If it returns
    /// `None`, the message is buffered as for any unknown path.
    ///
    /// The factory runs outside the transport's lock (it may spawn tasks, register
    /// other paths, deliver messages) and at most once at a time per path: messages that
    /// arrive for the path while it runs are buffered and flushed after it.
    pub fn add_path_factory(
        &self,
        matcher: PathMatcher,
        factory: impl Fn(&str) -> Option<Handler> + Send + Sync + 'static,
    ) {
        self.lock().factories.push(Arc::new(Factory {
            matcher,
            make: Arc::new(factory),
        }));
    }

    // -----------------------------------------------------------------------------
    // Delivery
    // -----------------------------------------------------------------------------

    /// Delivers `envelope` to the handler of `path`, applying the routing rules. The
    /// envelope's `target` is not looked at (use [`MessageTransport::deliver`] to route by
    /// target).
    pub fn deliver_to_path(&self, path: &str, envelope: Envelope) -> Result<(), TransportError> {
        let mut drops = Drops::new();
        let result = self.route(path, envelope, &mut drops);
        self.publish(drops);
        result
    }

    /// The hot path: when the target path (`envelope.target[start..]`) is registered
    /// with a mailbox handler and nothing is queued for it, push into the mailbox under
    /// the lock (a non-blocking, non-reentrant `try_send`), with no allocation. Gives the
    /// envelope back for the general path otherwise.
    // The envelope is handed back by value: boxing it would cost the allocation this
    // path exists to avoid.
    #[allow(clippy::result_large_err)]
    fn try_direct(
        &self,
        envelope: Envelope,
        start: usize,
    ) -> Result<Result<(), TransportError>, Envelope> {
        let mut st = self.lock();
        if st.shut_down {
            return Err(envelope);
        }
        let Some(route) = st.routes.get_mut(&envelope.target[start..]) else {
            return Err(envelope);
        };
        if route.draining || route.handler.is_callback() {
            return Err(envelope);
        }
        match route.handler.hand(envelope) {
            Handed::Ok => Ok(Ok(())),
            Handed::Dropped(e, reason) => {
                drop(st);
                self.inner.dead_letters.publish(e, reason);
                Ok(Ok(()))
            }
            Handed::Closed(e) => {
                let path = e.target[start..].to_string();
                tracing::debug!(path, "mailbox receiver dropped; unregistering the path");
                let mut drops = vec![(e, DeadLetterReason::MailboxClosed)];
                let now = self.inner.clock.now();
                self.unregister_locked(&mut st, &path, now, &mut drops);
                drop(st);
                self.publish(drops);
                Ok(Ok(()))
            }
        }
    }

    fn route(
        &self,
        path: &str,
        envelope: Envelope,
        drops: &mut Drops,
    ) -> Result<(), TransportError> {
        // At most two rounds: the second one after a factory ran.
        let mut factory_tried = false;
        loop {
            let mut st = self.lock();
            if st.shut_down {
                drops.push((envelope, DeadLetterReason::Shutdown));
                return Err(TransportError::Shutdown);
            }
            let now = self.inner.clock.now();
            self.maybe_sweep(&mut st, now, drops);

            if let Some(route) = st.routes.get_mut(path) {
                route.queue.push_back(envelope);
                if route.draining {
                    // Another thread hands this route's queue over; it will see ours.
                    return Ok(());
                }
                route.draining = true;
                let batch = std::mem::take(&mut route.queue);
                let handler = route.handler.clone();
                let generation = route.generation;
                drop(st);
                self.drain(path, handler, generation, batch);
                return Ok(());
            }

            if let Some(stone) = st.tombstones.get(path).copied() {
                if now < stone.expiry {
                    drop(st);
                    tracing::debug!(path, "message to a dead path dropped");
                    drops.push((envelope, DeadLetterReason::DeadPath));
                    return Ok(());
                }
                st.tombstones.remove(path);
            }

            if !factory_tried && !st.spawning.contains(path) {
                let factory = st
                    .factories
                    .iter()
                    .find(|f| f.matcher.matches(path))
                    .cloned();
                if let Some(factory) = factory {
                    factory_tried = true;
                    st.spawning.insert(path.to_string());
                    drop(st);
                    let made = catch_unwind(AssertUnwindSafe(|| (factory.make)(path)));
                    let mut st = self.lock();
                    st.spawning.remove(path);
                    let handler = match made {
                        Ok(h) => h,
                        Err(_) => {
                            tracing::error!(path, "path factory panicked; message buffered");
                            None
                        }
                    };
                    if let Some(handler) = handler {
                        if st.shut_down {
                            continue;
                        }
                        if st.routes.contains_key(path) {
                            tracing::warn!(
                                path,
                                "path factory registered the path itself; its returned handler is ignored"
                            );
                        } else {
                            tracing::debug!(path, "path factory spawned a handler");
                            let now = self.inner.clock.now();
                            if let Some((h, generation, batch)) =
                                self.register_locked(&mut st, path, handler, now, drops)?
                            {
                                drop(st);
                                self.drain(path, h, generation, batch);
                            }
                        }
                    }
                    // Re-route: the path now has a handler, or the message is buffered.
                    continue;
                }
            }

            self.buffer_locked(&mut st, path, envelope, now, drops);
            return Ok(());
        }
    }

    fn buffer_locked(
        &self,
        st: &mut State,
        path: &str,
        envelope: Envelope,
        now: Instant,
        drops: &mut Drops,
    ) {
        let cfg = &self.inner.config;
        let ttl = cfg.pending_ttl;
        let per_path = cfg.max_pending_per_path;
        let total_cap = cfg.max_pending_total;
        // Expire this path's stale messages first so they do not count against the cap.
        let mut expired = 0;
        if let Some(buf) = st.pending.get_mut(path) {
            while let Some((at, _)) = buf.front() {
                if now.saturating_duration_since(*at) > ttl {
                    if let Some((_, e)) = buf.pop_front() {
                        drops.push((e, DeadLetterReason::UnknownPathExpired));
                        expired += 1;
                    }
                } else {
                    break;
                }
            }
        }
        st.pending_total -= expired;
        let len = st.pending.get(path).map_or(0, VecDeque::len);
        if len >= per_path {
            tracing::warn!(
                path,
                limit = per_path,
                "pending buffer full; newest message dropped"
            );
            drops.push((envelope, DeadLetterReason::BufferFull));
            return;
        }
        if st.pending_total >= total_cap {
            tracing::warn!(
                path,
                limit = total_cap,
                "pending cap reached; newest message dropped"
            );
            drops.push((envelope, DeadLetterReason::PendingCapReached));
            return;
        }
        st.pending
            .entry(path.to_string())
            .or_default()
            .push_back((now, envelope));
        st.pending_total += 1;
        tracing::trace!(path, "message buffered for an unknown path");
    }

    /// Hands `batch` and whatever queues up meanwhile to `handler`, outside the lock,
    /// until the route's queue is empty. Only one thread drains a route at a time, which
    /// keeps arrival order.
    fn drain(&self, path: &str, handler: Handler, generation: u64, batch: VecDeque<Envelope>) {
        let mut batch = batch;
        loop {
            let mut drops = Drops::new();
            let mut closed = false;
            while let Some(env) = batch.pop_front() {
                if closed {
                    drops.push((env, DeadLetterReason::MailboxClosed));
                    continue;
                }
                match handler.hand(env) {
                    Handed::Ok => {}
                    Handed::Dropped(e, reason) => drops.push((e, reason)),
                    Handed::Closed(e) => {
                        closed = true;
                        drops.push((e, DeadLetterReason::MailboxClosed));
                    }
                }
            }
            let mut st = self.lock();
            let current = st
                .routes
                .get(path)
                .is_some_and(|r| r.generation == generation);
            if !current {
                // Unregistered (or replaced) meanwhile: its queue was already handled.
                drop(st);
                self.publish(drops);
                return;
            }
            if closed {
                tracing::debug!(path, "mailbox receiver dropped; unregistering the path");
                let now = self.inner.clock.now();
                if let Some(route) = st.routes.get_mut(path) {
                    drops.extend(
                        std::mem::take(&mut route.queue)
                            .into_iter()
                            .map(|e| (e, DeadLetterReason::MailboxClosed)),
                    );
                }
                self.unregister_locked(&mut st, path, now, &mut drops);
                drop(st);
                self.publish(drops);
                return;
            }
            let Some(route) = st.routes.get_mut(path) else {
                return;
            };
            if route.queue.is_empty() {
                route.draining = false;
                drop(st);
                self.publish(drops);
                return;
            }
            batch = std::mem::take(&mut route.queue);
            drop(st);
            self.publish(drops);
        }
    }

    // -----------------------------------------------------------------------------
    // Waiting and inspection
    // -----------------------------------------------------------------------------

    /// Waits until `path` is registered; returns at once if it already is.
    ///
    /// With `timeout`, fails with [`TransportError::WaitTimeout`] naming the path and
    /// the timeout. Fails with [`TransportError::Shutdown`] if the transport shuts down
    /// meanwhile. Dropping the future cancels the wait and releases its slot.
    pub async fn wait_for_path(
        &self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<(), TransportError> {
        let path = normalize_path(path)?;
        let rx = {
            let mut st = self.lock();
            if st.shut_down {
                return Err(TransportError::Shutdown);
            }
            if st.routes.contains_key(&path) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            let waiters = st.waiters.entry(path.clone()).or_default();
            // Forget waiters that gave up.
            waiters.retain(|w| !w.is_closed());
            waiters.push(tx);
            rx
        };
        let outcome = match timeout {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(r) => r.map_err(|_| TransportError::Shutdown),
                Err(_) => Err(TransportError::WaitTimeout {
                    path: path.clone(),
                    timeout: t,
                }),
            },
            None => rx.await.map_err(|_| TransportError::Shutdown),
        };
        if outcome.is_err() {
            let mut st = self.lock();
            if let Some(waiters) = st.waiters.get_mut(&path) {
                waiters.retain(|w| !w.is_closed());
                if waiters.is_empty() {
                    st.waiters.remove(&path);
                }
            }
        }
        outcome
    }

    /// Whether `path` has a handler.
    pub fn is_registered(&self, path: &str) -> bool {
        normalize_path(path).is_ok_and(|p| self.lock().routes.contains_key(&p))
    }

    /// Whether `path` is currently dead (unregistered less than `tombstone_ttl` ago).
    pub fn is_dead(&self, path: &str) -> bool {
        let Ok(p) = normalize_path(path) else {
            return false;
        };
        let now = self.inner.clock.now();
        self.lock()
            .tombstones
            .get(&p)
            .is_some_and(|stone| now < stone.expiry)
    }

    /// Registered paths, sorted.
    pub fn registered_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().routes.keys().cloned().collect();
        v.sort();
        v
    }

    /// Counters describing the transport's memory use.
    pub fn stats(&self) -> LocalStats {
        let st = self.lock();
        LocalStats {
            registered: st.routes.len(),
            pending_paths: st.pending.len(),
            pending_messages: st.pending_total,
            tombstones: st.tombstones.len(),
            waiters: st.waiters.values().map(Vec::len).sum(),
        }
    }

    /// Number of messages buffered for `path`.
    pub fn pending_len(&self, path: &str) -> usize {
        normalize_path(path).map_or(0, |p| self.lock().pending.get(&p).map_or(0, VecDeque::len))
    }

    /// Reclaims expired tombstones and pending messages now (expired messages become
    /// [`UnknownPathExpired`](DeadLetterReason::UnknownPathExpired) dead letters).
    pub fn sweep(&self) {
        let mut drops = Drops::new();
        {
            let mut st = self.lock();
            let now = self.inner.clock.now();
            self.sweep_locked(&mut st, now, &mut drops);
        }
        self.publish(drops);
    }

    /// Spawns a tokio task that calls [`sweep`](Self::sweep) every `sweep_interval`,
    /// so expired buffered messages become dead letters on time even when no operation
    /// touches the transport. The task ends when the transport is shut down or dropped.
    /// Must be called inside a tokio runtime.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        // A zero period would make `interval` panic; a millisecond is as often as useful.
        let every = self
            .inner
            .config
            .sweep_interval
            .max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let local = LocalTransport { inner };
                if local.is_shut_down() {
                    break;
                }
                local.sweep();
            }
        })
    }

    fn maybe_sweep(&self, st: &mut State, now: Instant, drops: &mut Drops) {
        if now >= st.next_sweep {
            self.sweep_locked(st, now, drops);
        }
    }

    fn sweep_locked(&self, st: &mut State, now: Instant, drops: &mut Drops) {
        st.next_sweep = now + self.inner.config.sweep_interval;
        // Tombstones: the order queue is sorted by expiry.
        while let Some((path, at)) = st.tombstone_order.front() {
            if at.expiry > now {
                break;
            }
            if st.tombstones.get(path) == Some(at) {
                st.tombstones.remove(path);
            }
            st.tombstone_order.pop_front();
        }
        // Pending buffers: each is sorted by arrival.
        let ttl = self.inner.config.pending_ttl;
        let mut removed = 0;
        st.pending.retain(|_, buf| {
            while let Some((at, _)) = buf.front() {
                if now.saturating_duration_since(*at) > ttl {
                    if let Some((_, e)) = buf.pop_front() {
                        drops.push((e, DeadLetterReason::UnknownPathExpired));
                        removed += 1;
                    }
                } else {
                    break;
                }
            }
            !buf.is_empty()
        });
        st.pending_total -= removed;
        // Waiters whose futures were dropped.
        st.waiters.retain(|_, w| {
            w.retain(|tx| !tx.is_closed());
            !w.is_empty()
        });
    }

    /// Shuts the transport down now: refuses further messages and registrations, drops
    /// every handler (closing mailboxes), reports queued and buffered messages as
    /// [`Shutdown`](DeadLetterReason::Shutdown) dead letters and fails pending
    /// [`wait_for_path`](Self::wait_for_path) calls. Idempotent.
    pub fn close(&self) {
        let mut drops = Drops::new();
        {
            let mut st = self.lock();
            if st.shut_down {
                return;
            }
            st.shut_down = true;
            for (_, route) in st.routes.drain() {
                drops.extend(
                    route
                        .queue
                        .into_iter()
                        .map(|e| (e, DeadLetterReason::Shutdown)),
                );
            }
            for (_, buf) in st.pending.drain() {
                drops.extend(
                    buf.into_iter()
                        .map(|(_, e)| (e, DeadLetterReason::Shutdown)),
                );
            }
            st.pending_total = 0;
            st.tombstones.clear();
            st.tombstone_order.clear();
            st.waiters.clear();
            st.factories.clear();
        }
        tracing::debug!(root = %self.inner.root, dropped = drops.len(), "local transport shut down");
        self.publish(drops);
    }

    /// Whether [`close`](Self::close) (or `shutdown`) was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }
}

/// A snapshot of a [`LocalTransport`]'s sizes (see [`LocalTransport::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalStats {
    /// Paths with a handler.
    pub registered: usize,
    /// Unknown paths with buffered messages.
    pub pending_paths: usize,
    /// Buffered messages over all unknown paths.
    pub pending_messages: usize,
    /// Dead-path tombstones held.
    pub tombstones: usize,
    /// Pending `wait_for_path` calls.
    pub waiters: usize,
}

impl MessageTransport for LocalTransport {
    /// Routes by the path of `envelope.target` (see [`target_path`]); the system name,
    /// host and port of the target are ignored, as in casty. A target without a path
    /// is refused with [`TransportError::InvalidTarget`] and reported as a
    /// [`NoRoute`](DeadLetterReason::NoRoute) dead letter.
    fn deliver(&self, envelope: Envelope) -> Result<(), TransportError> {
        let Some(path) = target_path(&envelope.target) else {
            let target = envelope.target.clone();
            self.inner
                .dead_letters
                .publish(envelope, DeadLetterReason::NoRoute);
            return Err(TransportError::InvalidTarget {
                target,
                reason: "expected scheme://authority/path or /path",
            });
        };
        let start = envelope.target.len() - path.len();
        match self.try_direct(envelope, start) {
            Ok(result) => result,
            Err(envelope) => {
                // `path` borrows from the envelope, which is moved into the route.
                let path = envelope.target[start..].to_string();
                self.deliver_to_path(&path, envelope)
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.close();
        Box::pin(std::future::ready(()))
    }

    fn dead_letters(&self) -> Option<&DeadLetters> {
        Some(&self.inner.dead_letters)
    }

    fn local_endpoint(&self) -> Option<LocalEndpoint> {
        Some(LocalEndpoint {
            transport: self.clone(),
            root: self.inner.root.clone(),
        })
    }
}
