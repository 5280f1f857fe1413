//! The in-process broker: the default backend, no external broker needed.
//!
//! It emulates the RabbitMQ semantics the mesh relies on:
//!
//! * direct, topic (`*`, `#`) and fanout exchanges, and the default exchange routing
//!   to a queue by name; a `mandatory` publish matching no queue fails with
//!   [`MeshError::Unroutable`];
//! * competing consumers on a queue with per-consumer prefetch, exclusive consumers
//!   (a second one is refused with [`MeshError::ExclusiveInUse`]), auto-ack
//!   consumers;
//! * per-message ttl (`expiration`): an expired message is dead-lettered with reason
//!   `expired` (checked when a consumer takes it and by a background sweeper, so
//!   unlike RabbitMQ a message stuck behind others still expires on time);
//! * reject without requeue dead-letters with reason `rejected`
//!   ([`Acker::dead_letter`] too, with its reason in [`DeathInfo::detail`]); requeue
//!   sets the `redelivered` flag; an unsettled delivery that is dropped is requeued;
//!   a requeued message keeps its expiry (its ttl counts from its publish);
//! * length-bounded queues (`max_length`, oldest dropped, dead-lettered with reason
//!   `maxlen` if the queue has a DLX), and trimming a queue on demand
//!   ([`Connection::trim_queue`], how the mesh bounds dead-letter queues on every
//!   backend);
//! * auto-delete queues removed with their last consumer;
//! * the leader lock: one holder per service, released when the connection closes
//!   or is dropped.
//!
//! Messages travel as decoded envelopes ([`Payload::Envelope`](crate::message::Payload)):
//! no JSON is written or parsed. Each queue has its own lock; the routing table is
//! behind a read-mostly lock.
//!
//! ```
//! use herald_mesh::InProcBroker;
//! let broker = InProcBroker::new();
//! assert_eq!(broker.stats().published, 0);
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, PollSemaphore, WaitForCancellationFutureOwned};
use tracing::{debug, trace, warn};

use crate::backend::{
    Acker, Backend, BackendFuture, Connection, ConsumeOptions, Delivery, DeliveryStream,
    ExchangeKind, ExchangeSpec, QueueSpec, Trimmed, done,
};
use crate::error::MeshError;
use crate::fasthash::FastMap;
use crate::message::{DEFAULT_EXCHANGE, DeathInfo, DeathReason, Message, topic_matches};

const BACKEND: &str = "inproc";
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Counters of the in-process broker (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Messages published (routed or not).
    pub published: u64,
    /// Publishes that matched no queue.
    pub unroutable: u64,
    /// Deliveries handed to consumers.
    pub delivered: u64,
    /// Deliveries acknowledged (manual ack).
    pub acked: u64,
    /// Deliveries rejected without requeue.
    pub rejected: u64,
    /// Deliveries requeued (reject with requeue, dropped unsettled, closed connection).
    pub requeued: u64,
    /// Messages dead-lettered (any reason).
    pub dead_lettered: u64,
    /// Messages whose ttl passed while queued.
    pub expired: u64,
    /// Messages dropped because a queue was full.
    pub overflowed: u64,
    /// Messages dropped by [`Connection::trim_queue`].
    pub trimmed: u64,
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    unroutable: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    requeued: AtomicU64,
    dead_lettered: AtomicU64,
    expired: AtomicU64,
    overflowed: AtomicU64,
    trimmed: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The exchange and routing key a message was published with.
type Origin = Arc<(String, String)>;

enum Targets {
    One(Arc<Queue>),
    Many(Vec<Arc<Queue>>),
}

struct Entry {
    /// Boxed: an entry moves through the queue, the consumer and the delivery by
    /// pointer, not as a few hundred bytes each time.
    message: Box<Message>,
    expires: Option<Instant>,
    redelivered: bool,
    /// Exchange and routing key it was published with (only kept for queues with a
    /// dead-letter exchange).
    origin: Option<Arc<(String, String)>>,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Entry>,
    consumers: usize,
    exclusive: bool,
}

struct Queue {
    spec: QueueSpec,
    state: Mutex<QueueState>,
    /// Signals consumers that an entry is ready (shared so that a consumer can keep
    /// one owned wait registered across polls).
    notify: Arc<Notify>,
    unacked: AtomicUsize,
    has_ttl: AtomicBool,
    deleted: AtomicBool,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.spec.name)
            .finish()
    }
}

// Transient return value; boxing the entry would allocate per delivery.
#[allow(clippy::large_enum_variant)]
enum Pop {
    Entry(Entry),
    Empty,
    Deleted,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A poisoned lock only means another thread panicked while holding it; the
        // queue data stays consistent (every mutation is a single push or pop).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pops the next live entry; expired ones are returned in `dead`.
    fn pop(&self, dead: &mut Vec<Entry>) -> Pop {
        if self.deleted.load(Ordering::Acquire) {
            return Pop::Deleted;
        }
        // The clock is read only for messages that carry a ttl.
        let mut now: Option<Instant> = None;
        let mut st = self.lock();
        while let Some(e) = st.ready.pop_front() {
            if e.expires
                .is_some_and(|t| t <= *now.get_or_insert_with(Instant::now))
            {
                dead.push(e);
                continue;
            }
            let more = !st.ready.is_empty();
            drop(st);
            if more {
                self.notify.notify_one();
            }
            return Pop::Entry(e);
        }
        Pop::Empty
    }
}

#[derive(Debug)]
struct Exchange {
    spec: ExchangeSpec,
    /// Routing key -> bound queues, and the shared dead-letter origin of the key.
    direct: FastMap<String, (Vec<Arc<Queue>>, Origin)>,
    patterns: Vec<(String, Arc<Queue>)>,
}

#[derive(Default)]
struct Topology {
    exchanges: FastMap<String, Exchange>,
    queues: FastMap<String, Arc<Queue>>,
}

struct Broker {
    mesh_name: String,
    topo: RwLock<Topology>,
    next_conn: AtomicU64,
    leaders: Mutex<HashMap<String, u64>>,
    stats: Stats,
    sweeper: AtomicBool,
}

impl Broker {
    fn topo_read(&self) -> std::sync::RwLockReadGuard<'_, Topology> {
        self.topo.read().unwrap_or_else(|p| p.into_inner())
    }
    fn topo_write(&self) -> std::sync::RwLockWriteGuard<'_, Topology> {
        self.topo.write().unwrap_or_else(|p| p.into_inner())
    }
    /// The queue named `name`, or `NoSuchQueue`.
    fn queue(&self, name: &str) -> Result<Arc<Queue>, MeshError> {
        self.topo_read()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| MeshError::NoSuchQueue {
                queue: name.to_owned(),
            })
    }

    /// The queues `routing_key` reaches on `exchange`, and the (exchange, routing key)
    /// origin to remember for dead-lettering (shared, not allocated, on direct
    /// bindings: the hot request path).
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(Targets, Option<Origin>), MeshError> {
        let topo = self.topo_read();
        if exchange == DEFAULT_EXCHANGE {
            return Ok(match topo.queues.get(routing_key) {
                Some(q) => (Targets::One(q.clone()), None),
                None => (Targets::Many(Vec::new()), None),
            });
        }
        let ex = topo
            .exchanges
            .get(exchange)
            .ok_or_else(|| MeshError::NoSuchExchange {
                exchange: exchange.to_owned(),
            })?;
        let mut out: Vec<Arc<Queue>> = Vec::new();
        match ex.spec.kind {
            ExchangeKind::Direct => {
                if let Some((qs, origin)) = ex.direct.get(routing_key) {
                    if let [q] = qs.as_slice() {
                        return Ok((Targets::One(q.clone()), Some(origin.clone())));
                    }
                    return Ok((Targets::Many(qs.clone()), Some(origin.clone())));
                }
            }
            ExchangeKind::Topic => {
                for (p, q) in &ex.patterns {
                    if topic_matches(p, routing_key) && !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                        out.push(q.clone());
                    }
                }
            }
            ExchangeKind::Fanout => {
                for (_, q) in &ex.patterns {
                    if !out.iter().any(|o| Arc::ptr_eq(o, q)) {
                        out.push(q.clone());
                    }
                }
            }
        }
        Ok((Targets::Many(out), None))
    }

    fn publish(
        self: &Arc<Self>,
        exchange: &str,
        routing_key: &str,
        message: Box<Message>,
    ) -> Result<(), MeshError> {
        inc(&self.stats.published);
        let (targets, origin) = self.route(exchange, routing_key)?;
        let targets: &[Arc<Queue>] = match &targets {
            Targets::One(q) => std::slice::from_ref(q),
            Targets::Many(v) => v,
        };
        if targets.is_empty() {
            inc(&self.stats.unroutable);
            if message.properties.mandatory {
                return Err(MeshError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                });
            }
            trace!(exchange, routing_key, "unroutable message dropped");
            return Ok(());
        }
        let expires = message
            .properties
            .expiration_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let origin = match origin {
            Some(o) => Some(o),
            None if targets
                .iter()
                .any(|q| q.spec.dead_letter_exchange.is_some()) =>
            {
                Some(Arc::new((exchange.to_owned(), routing_key.to_owned())))
            }
            None => None,
        };
        let n = targets.len();
        let mut message = Some(message);
        for (i, q) in targets.iter().enumerate() {
            let m = if i + 1 == n {
                message.take()
            } else {
                message.clone()
            };
            let Some(m) = m else { break };
            self.push(
                q,
                Entry {
                    message: m,
                    expires,
                    redelivered: false,
                    origin: origin.clone(),
                },
            );
        }
        Ok(())
    }

    fn push(self: &Arc<Self>, q: &Arc<Queue>, entry: Entry) {
        if q.deleted.load(Ordering::Acquire) {
            return;
        }
        if entry.expires.is_some() && !q.has_ttl.swap(true, Ordering::Relaxed) {
            self.ensure_sweeper();
        }
        let overflow = {
            let mut st = q.lock();
            let overflow = match q.spec.max_length {
                Some(max) if st.ready.len() >= max => st.ready.pop_front(),
                _ => None,
            };
            st.ready.push_back(entry);
            overflow
        };
        q.notify.notify_one();
        if let Some(old) = overflow {
            inc(&self.stats.overflowed);
            debug!(queue = %q.spec.name, "queue full: oldest message dropped");
            self.dead_letter(q, old, DeathReason::MaxLen, None);
        }
    }

    /// Puts a delivered message back at the head of `q`, keeping its expiry (as
    /// RabbitMQ does: a requeued message's ttl still counts from its publish).
    fn requeue(
        self: &Arc<Self>,
        q: &Arc<Queue>,
        message: Box<Message>,
        expires: Option<Instant>,
        origin: Option<Arc<(String, String)>>,
    ) {
        inc(&self.stats.requeued);
        if q.deleted.load(Ordering::Acquire) {
            return;
        }
        if expires.is_some() && !q.has_ttl.swap(true, Ordering::Relaxed) {
            self.ensure_sweeper();
        }
        q.lock().ready.push_front(Entry {
            message,
            expires,
            redelivered: true,
            origin,
        });
        q.notify.notify_one();
    }

    /// Dead-letters `entry` from `q` for `reason`, with Herald's reason in words
    /// (`detail`) if any.
    fn dead_letter(
        self: &Arc<Self>,
        q: &Queue,
        entry: Entry,
        reason: DeathReason,
        detail: Option<String>,
    ) {
        let Some(dlx) = &q.spec.dead_letter_exchange else {
            trace!(queue = %q.spec.name, %reason, "message dropped (no dead-letter exchange)");
            return;
        };
        inc(&self.stats.dead_lettered);
        let mut message = entry.message;
        let (exchange, routing_key) = match &entry.origin {
            Some(o) => (o.0.clone(), o.1.clone()),
            None => (String::new(), q.spec.name.clone()),
        };
        match &mut message.death {
            None => {
                message.death = Some(DeathInfo {
                    reason,
                    queue: q.spec.name.clone(),
                    exchange,
                    routing_key: routing_key.clone(),
                    detail,
                });
            }
            // The first death is kept (as RabbitMQ's `x-first-death-*`); the reason in
            // words is the latest (as the `x-herald-reason` header of a copy).
            Some(death) => {
                if detail.is_some() {
                    death.detail = detail;
                }
            }
        }
        message.properties.expiration_ms = None;
        message.properties.mandatory = false;
        debug!(queue = %q.spec.name, %reason, correlation_id = %message.properties.correlation_id, "dead-lettered");
        if let Err(e) = self.publish(dlx, &routing_key, message) {
            warn!(queue = %q.spec.name, dlx = %dlx, error = %e, "dead-lettering failed; message dropped");
        }
    }

    fn expire_all(self: &Arc<Self>, dead: Vec<Entry>, q: &Queue) {
        for e in dead {
            inc(&self.stats.expired);
            self.dead_letter(q, e, DeathReason::Expired, None);
        }
    }

    fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.sweeper.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Broker> = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(broker) = weak.upgrade() else { break };
                broker.sweep();
            }
        });
    }

    fn sweep(self: &Arc<Self>) {
        let queues: Vec<Arc<Queue>> = self
            .topo_read()
            .queues
            .values()
            .filter(|q| q.has_ttl.load(Ordering::Relaxed))
            .cloned()
            .collect();
        let now = Instant::now();
        for q in queues {
            let dead: Vec<Entry> = {
                let mut st = q.lock();
                if !st.ready.iter().any(|e| e.expires.is_some_and(|t| t <= now)) {
                    continue;
                }
                let (dead, live): (VecDeque<Entry>, VecDeque<Entry>) =
                    std::mem::take(&mut st.ready)
                        .into_iter()
                        .partition(|e| e.expires.is_some_and(|t| t <= now));
                st.ready = live;
                dead.into_iter().collect()
            };
            self.expire_all(dead, &q);
        }
    }

    fn delete_queue(&self, q: &Arc<Queue>) {
        let mut topo = self.topo_write();
        if topo
            .queues
            .get(&q.spec.name)
            .is_some_and(|x| Arc::ptr_eq(x, q))
        {
            topo.queues.remove(&q.spec.name);
        }
        for ex in topo.exchanges.values_mut() {
            for (qs, _) in ex.direct.values_mut() {
                qs.retain(|x| !Arc::ptr_eq(x, q));
            }
            ex.direct.retain(|_, (qs, _)| !qs.is_empty());
            ex.patterns.retain(|(_, x)| !Arc::ptr_eq(x, q));
        }
        q.deleted.store(true, Ordering::Release);
        q.lock().ready.clear();
        q.notify.notify_waiters();
        debug!(queue = %q.spec.name, "auto-delete queue removed");
    }

    fn release_leadership(&self, conn: u64) {
        if let Ok(mut l) = self.leaders.lock() {
            l.retain(|_, holder| *holder != conn);
        }
    }
}

/// The in-process broker. Cheap to clone (clones share the broker).
#[derive(Clone)]
pub struct InProcBroker {
    inner: Arc<Broker>,
}

impl fmt::Debug for InProcBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcBroker")
            .field("mesh_name", &self.inner.mesh_name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for InProcBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcBroker {
    /// A new, empty broker named `herald`.
    pub fn new() -> Self {
        Self::with_mesh_name("herald")
    }

    /// A new broker with a mesh name (used for client-only service names).
    pub fn with_mesh_name(name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Broker {
                mesh_name: name.into(),
                topo: RwLock::new(Topology::default()),
                next_conn: AtomicU64::new(1),
                leaders: Mutex::new(HashMap::new()),
                stats: Stats::default(),
                sweeper: AtomicBool::new(false),
            }),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> BrokerStats {
        let s = &self.inner.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BrokerStats {
            published: l(&s.published),
            unroutable: l(&s.unroutable),
            delivered: l(&s.delivered),
            acked: l(&s.acked),
            rejected: l(&s.rejected),
            requeued: l(&s.requeued),
            dead_lettered: l(&s.dead_lettered),
            expired: l(&s.expired),
            overflowed: l(&s.overflowed),
            trimmed: l(&s.trimmed),
        }
    }

    /// Messages ready in `queue`, or `None` if it does not exist.
    pub fn queue_len(&self, queue: &str) -> Option<usize> {
        let q = self.inner.topo_read().queues.get(queue).cloned()?;
        let n = q.lock().ready.len();
        Some(n)
    }

    /// Deliveries of `queue` not yet settled.
    pub fn unacked(&self, queue: &str) -> Option<usize> {
        let q = self.inner.topo_read().queues.get(queue).cloned()?;
        Some(q.unacked.load(Ordering::Relaxed))
    }

    /// Consumers of `queue`.
    pub fn consumer_count(&self, queue: &str) -> Option<usize> {
        let q = self.inner.topo_read().queues.get(queue).cloned()?;
        let n = q.lock().consumers;
        Some(n)
    }

    /// Names of all queues.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.topo_read().queues.keys().cloned().collect();
        v.sort();
        v
    }

    /// Opens a connection (same as [`Backend::connect`], typed).
    pub fn open(&self, client_name: &str) -> InProcConnection {
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        debug!(connection = id, client_name, "inproc connection opened");
        InProcConnection {
            shared: Arc::new(ConnShared {
                id,
                cancel: CancellationToken::new(),
                closed: AtomicBool::new(false),
            }),
            broker: self.inner.clone(),
        }
    }
}

impl Backend for InProcBroker {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn mesh_name(&self) -> &str {
        &self.inner.mesh_name
    }

    fn connect<'a>(
        &'a self,
        client_name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn Connection>, MeshError>> {
        let c: Arc<dyn Connection> = Arc::new(self.open(client_name));
        futures::future::ready(Ok(c)).boxed()
    }
}

#[derive(Debug)]
struct ConnShared {
    id: u64,
    cancel: CancellationToken,
    closed: AtomicBool,
}

/// A connection to the in-process broker. Dropping it closes it.
pub struct InProcConnection {
    shared: Arc<ConnShared>,
    broker: Arc<Broker>,
}

impl fmt::Debug for InProcConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcConnection")
            .field("id", &self.shared.id)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl InProcConnection {
    fn check_open(&self) -> Result<(), MeshError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(MeshError::Disconnected)
        } else {
            Ok(())
        }
    }

    fn close_now(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            self.shared.cancel.cancel();
            self.broker.release_leadership(self.shared.id);
            debug!(connection = self.shared.id, "inproc connection closed");
        }
    }

    fn declare_exchange_now(&self, spec: &ExchangeSpec) -> Result<(), MeshError> {
        self.check_open()?;
        let mut topo = self.broker.topo_write();
        match topo.exchanges.get(&spec.name) {
            Some(ex) if ex.spec.kind != spec.kind || ex.spec.durable != spec.durable => {
                Err(MeshError::PreconditionFailed {
                    object: "exchange",
                    name: spec.name.clone(),
                    reason: format!(
                        "declared as {:?} (durable {}), asked for {:?} (durable {})",
                        ex.spec.kind, ex.spec.durable, spec.kind, spec.durable
                    ),
                })
            }
            Some(_) => Ok(()),
            None => {
                topo.exchanges.insert(
                    spec.name.clone(),
                    Exchange {
                        spec: spec.clone(),
                        direct: FastMap::default(),
                        patterns: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    fn declare_queue_now(&self, spec: &QueueSpec) -> Result<(), MeshError> {
        self.check_open()?;
        if spec.name.is_empty() {
            return Err(MeshError::InvalidArgument {
                what: "queue name",
                value: String::new(),
                reason: "must not be empty".into(),
            });
        }
        let mut topo = self.broker.topo_write();
        for b in &spec.bindings {
            if !topo.exchanges.contains_key(&b.exchange) {
                return Err(MeshError::NoSuchExchange {
                    exchange: b.exchange.clone(),
                });
            }
        }
        let q = match topo.queues.get(&spec.name) {
            Some(q) => {
                let s = &q.spec;
                if s.durable != spec.durable
                    || s.auto_delete != spec.auto_delete
                    || s.dead_letter_exchange != spec.dead_letter_exchange
                    || s.max_length != spec.max_length
                {
                    return Err(MeshError::PreconditionFailed {
                        object: "queue",
                        name: spec.name.clone(),
                        reason: format!(
                            "existing durable={} auto_delete={} dlx={:?} max_length={:?}",
                            s.durable, s.auto_delete, s.dead_letter_exchange, s.max_length
                        ),
                    });
                }
                q.clone()
            }
            None => {
                let q = Arc::new(Queue {
                    spec: QueueSpec {
                        bindings: Vec::new(),
                        ..spec.clone()
                    },
                    state: Mutex::new(QueueState::default()),
                    notify: Arc::new(Notify::new()),
                    unacked: AtomicUsize::new(0),
                    has_ttl: AtomicBool::new(false),
                    deleted: AtomicBool::new(false),
                });
                topo.queues.insert(spec.name.clone(), q.clone());
                q
            }
        };
        for b in &spec.bindings {
            let Some(ex) = topo.exchanges.get_mut(&b.exchange) else {
                continue;
            };
            match ex.spec.kind {
                ExchangeKind::Direct => {
                    let exchange = ex.spec.name.clone();
                    let (v, _) = ex.direct.entry(b.routing_key.clone()).or_insert_with(|| {
                        (Vec::new(), Arc::new((exchange, b.routing_key.clone())))
                    });
                    if !v.iter().any(|x| Arc::ptr_eq(x, &q)) {
                        v.push(q.clone());
                    }
                }
                ExchangeKind::Topic | ExchangeKind::Fanout => {
                    if !ex
                        .patterns
                        .iter()
                        .any(|(p, x)| p == &b.routing_key && Arc::ptr_eq(x, &q))
                    {
                        ex.patterns.push((b.routing_key.clone(), q.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    fn consume_now(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<DeliveryStream, MeshError> {
        self.check_open()?;
        let q = self.broker.queue(queue)?;
        {
            let mut st = q.lock();
            if st.exclusive || (options.exclusive && st.consumers > 0) {
                return Err(MeshError::ExclusiveInUse {
                    queue: queue.to_owned(),
                });
            }
            st.consumers += 1;
            st.exclusive = options.exclusive;
        }
        let sem = if options.auto_ack || options.prefetch == 0 {
            None
        } else {
            Some(Arc::new(Semaphore::new(usize::from(options.prefetch))))
        };
        let notified = Box::pin(q.notify.clone().notified_owned());
        let cancel = self.shared.cancel.child_token();
        let consumer = Consumer {
            cancelled: Box::pin(cancel.clone().cancelled_owned()),
            cancel,
            queue: q,
            broker: self.broker.clone(),
            conn: self.shared.clone(),
            sem: sem.map(PollSemaphore::new),
            permit: None,
            notified,
            waiting: false,
            auto_ack: options.auto_ack,
            exclusive: options.exclusive,
            dead: Vec::new(),
        };
        Ok(Box::pin(consumer))
    }
}

impl InProcConnection {
    fn trim_queue_now(
        &self,
        queue: &str,
        max_len: usize,
        max_drop: usize,
    ) -> Result<Trimmed, MeshError> {
        self.check_open()?;
        let q = self.broker.queue(queue)?;
        let (found, dropped) = {
            let mut st = q.lock();
            let found = st.ready.len();
            let n = found.saturating_sub(max_len).min(max_drop);
            let dropped: Vec<Entry> = st.ready.drain(..n).collect();
            (found, dropped)
        };
        let n = dropped.len();
        // Dropped outside the queue's lock.
        drop(dropped);
        self.broker
            .stats
            .trimmed
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(Trimmed { found, dropped: n })
    }
}

impl Drop for InProcConnection {
    fn drop(&mut self) {
        self.close_now();
    }
}

impl Connection for InProcConnection {
    fn declare_exchange<'a>(
        &'a self,
        spec: &'a ExchangeSpec,
    ) -> BoxFuture<'a, Result<(), MeshError>> {
        futures::future::ready(self.declare_exchange_now(spec)).boxed()
    }

    fn declare_queue<'a>(&'a self, spec: &'a QueueSpec) -> BoxFuture<'a, Result<(), MeshError>> {
        futures::future::ready(self.declare_queue_now(spec)).boxed()
    }

    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        message: Message,
    ) -> BackendFuture<'a, Result<(), MeshError>> {
        done(self.check_open().and_then(|()| {
            self.broker
                .publish(exchange, routing_key, Box::new(message))
        }))
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, MeshError>> {
        futures::future::ready(self.consume_now(queue, options)).boxed()
    }

    fn try_lead<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<bool, MeshError>> {
        let r = self
            .check_open()
            .map(|()| match self.broker.leaders.lock() {
                Ok(mut l) => {
                    let holder = *l.entry(service.to_owned()).or_insert(self.shared.id);
                    holder == self.shared.id
                }
                Err(_) => false,
            });
        futures::future::ready(r).boxed()
    }

    fn trim_queue<'a>(
        &'a self,
        queue: &'a str,
        max_len: usize,
        max_drop: usize,
    ) -> BoxFuture<'a, Result<Trimmed, MeshError>> {
        futures::future::ready(self.trim_queue_now(queue, max_len, max_drop)).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), MeshError>> {
        self.close_now();
        futures::future::ready(Ok(())).boxed()
    }

    fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }
}

/// One consumer of a queue: a stream of deliveries, written as a hand-made poll (not
/// an `async` loop) so that taking a delivery moves no future state around and the
/// waits (prefetch permit, queue notification, cancellation) are registered once and
/// reused.
struct Consumer {
    queue: Arc<Queue>,
    broker: Arc<Broker>,
    conn: Arc<ConnShared>,
    cancel: CancellationToken,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Prefetch (manual-ack consumers only).
    sem: Option<PollSemaphore>,
    /// The permit for the next delivery, taken before the queue is looked at.
    permit: Option<OwnedSemaphorePermit>,
    /// The wait for the queue's next notification.
    notified: Pin<Box<OwnedNotified>>,
    /// `notified` has been polled (is registered with the queue).
    waiting: bool,
    auto_ack: bool,
    exclusive: bool,
    /// Expired entries found while popping (reused buffer).
    dead: Vec<Entry>,
}

impl Consumer {
    /// Replaces a registered wait with a fresh one. Dropping the registered one passes
    /// on a notification it may hold, so another consumer of the queue gets it.
    fn rearm(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.notified
                .set(self.queue.notify.clone().notified_owned());
        }
    }

    fn poll_delivery(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Delivery>> {
        if self.cancel.is_cancelled() {
            return Poll::Ready(None);
        }
        if self.permit.is_none()
            && let Some(sem) = &mut self.sem
        {
            match sem.poll_acquire(cx) {
                Poll::Ready(Some(p)) => self.permit = Some(p),
                Poll::Ready(None) => return Poll::Ready(None),
                // Never registered with the queue here: the queue is only waited on
                // while a permit is held, and a delivery re-arms the wait.
                Poll::Pending => return self.pending_unless_cancelled(cx),
            }
        }
        loop {
            let popped = self.queue.pop(&mut self.dead);
            if !self.dead.is_empty() {
                self.broker
                    .expire_all(std::mem::take(&mut self.dead), &self.queue);
            }
            match popped {
                Pop::Entry(e) => {
                    self.rearm();
                    let permit = self.permit.take();
                    return Poll::Ready(Some(self.deliver(e, permit)));
                }
                Pop::Deleted => return Poll::Ready(None),
                Pop::Empty => match self.notified.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.waiting = true;
                        self.rearm();
                    }
                    Poll::Pending => {
                        self.waiting = true;
                        return self.pending_unless_cancelled(cx);
                    }
                },
            }
        }
    }

    fn pending_unless_cancelled(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Delivery>> {
        match self.cancelled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn deliver(&self, e: Entry, permit: Option<OwnedSemaphorePermit>) -> Delivery {
        inc(&self.broker.stats.delivered);
        if self.auto_ack {
            return Delivery::new(e.message, e.redelivered, None);
        }
        self.queue.unacked.fetch_add(1, Ordering::Relaxed);
        let acker = InProcAcker {
            settled: false,
            message: Some(Message::clone(&e.message)),
            expires: e.expires,
            origin: e.origin,
            queue: self.queue.clone(),
            broker: self.broker.clone(),
            conn: self.conn.clone(),
            _permit: permit,
        };
        Delivery::new(e.message, e.redelivered, Some(Box::new(acker)))
    }
}

impl futures::Stream for Consumer {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_delivery(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let remove = {
            let mut st = self.queue.lock();
            st.consumers = st.consumers.saturating_sub(1);
            if self.exclusive {
                st.exclusive = false;
            }
            st.consumers == 0 && self.queue.spec.auto_delete
        };
        // Wake another consumer that may be waiting for a notification we consumed.
        self.queue.notify.notify_one();
        if remove {
            self.broker.delete_queue(&self.queue);
        }
    }
}

struct InProcAcker {
    settled: bool,
    message: Option<Message>,
    /// When the message's ttl passes (kept if it is requeued).
    expires: Option<Instant>,
    origin: Option<Arc<(String, String)>>,
    queue: Arc<Queue>,
    broker: Arc<Broker>,
    conn: Arc<ConnShared>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for InProcAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcAcker")
            .field("queue", &self.queue.spec.name)
            .field("settled", &self.settled)
            .finish()
    }
}

impl InProcAcker {
    fn finish(&mut self) -> Option<Message> {
        // Settling twice is impossible by construction (`ack` and `reject` consume the
        // acker, and its drop only requeues what is still unsettled).
        if self.settled {
            return None;
        }
        self.settled = true;
        self.queue.unacked.fetch_sub(1, Ordering::Relaxed);
        self.message.take()
    }

    fn requeue_now(&mut self) {
        if let Some(m) = self.finish() {
            let origin = self.origin.take();
            self.broker
                .requeue(&self.queue, Box::new(m), self.expires, origin);
        }
    }

    fn closed(&self) -> bool {
        self.conn.closed.load(Ordering::Acquire)
    }
}

impl Acker for InProcAcker {
    fn ack(mut self: Box<Self>) -> BackendFuture<'static, Result<(), MeshError>> {
        let r = if self.closed() {
            self.requeue_now();
            Err(MeshError::Disconnected)
        } else {
            if self.finish().is_some() {
                inc(&self.broker.stats.acked);
            }
            Ok(())
        };
        done(r)
    }

    fn reject(self: Box<Self>, requeue: bool) -> BackendFuture<'static, Result<(), MeshError>> {
        done(self.reject_now(requeue, None))
    }

    /// Dead-letters the broker's own copy of the message (the one given is the same).
    fn dead_letter(
        self: Box<Self>,
        message: Box<Message>,
        reason: String,
    ) -> BackendFuture<'static, Result<(), MeshError>> {
        drop(message);
        done(self.reject_now(false, Some(reason)))
    }
}

impl InProcAcker {
    /// Requeues, or dead-letters with reason `rejected` and `detail`.
    fn reject_now(
        mut self: Box<Self>,
        requeue: bool,
        detail: Option<String>,
    ) -> Result<(), MeshError> {
        if self.closed() {
            self.requeue_now();
            return Err(MeshError::Disconnected);
        }
        if requeue {
            self.requeue_now();
            return Ok(());
        }
        if let Some(m) = self.finish() {
            inc(&self.broker.stats.rejected);
            let entry = Entry {
                message: Box::new(m),
                expires: None,
                redelivered: false,
                origin: self.origin.take(),
            };
            self.broker
                .dead_letter(&self.queue, entry, DeathReason::Rejected, detail);
        }
        Ok(())
    }
}

impl Drop for InProcAcker {
    fn drop(&mut self) {
        if !self.settled {
            debug!(queue = %self.queue.spec.name, "unsettled delivery dropped: requeued");
            self.requeue_now();
        }
    }
}
