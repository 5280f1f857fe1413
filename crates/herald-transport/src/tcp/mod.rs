//! The TCP transport: casty-v1 compatible framing with a casty-v1 or a native handshake,
//! optional TLS, one connection per peer pair, one task per peer.
//!
//! A [`TcpNode`] listens (unless `client_only`), dials peers on demand and hands every
//! received message envelope to an [`InboundHandler`]. Sending never blocks and never
//! waits for the network: [`TcpNode::send`] puts the envelope in the peer's bounded
//! queue, and the peer's task writes queued envelopes in batches (one `write` for many
//! frames). A dead or slow peer only fills its own queue.
//!
//! Failure handling, per peer:
//! * dial failures back off exponentially with jitter ([`Backoff`]); after
//!   `breaker_threshold` consecutive failures the circuit opens: queued messages become
//!   dead letters (`PeerUnreachable`) and new ones are refused (`Blacklisted`) until the
//!   delay passes or [`TcpNode::clear_blacklist`] is called;
//! * a lost connection is redialled when there is something to send; messages queued
//!   meanwhile are kept (bounded by `queue_capacity`) and sent in order;
//! * every dropped message goes to the [`DeadLetters`] sink with its reason and to the
//!   optional `on_send_failure` hook.
//!
//! ```
//! use herald_transport::tcp::{PeerAddr, TcpConfig, TcpNode};
//! use herald_wire::Envelope;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let server = TcpNode::builder(TcpConfig::loopback())
//!     .on_message(move |_from: &_, env: Envelope| { let _ = tx.send(env); })
//!     .start()
//!     .await?;
//! let client = TcpNode::builder(TcpConfig::loopback()).start().await?;
//! let to: PeerAddr = server.advertised().clone();
//! client.send(&to, Envelope::new(format!("casty://sys@{to}/inbox"), "", "demo.Ping", &b"{}"[..]))?;
//! let got = rx.recv().await.unwrap();
//! assert_eq!(got.type_hint, "demo.Ping");
//! client.shutdown().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod codec;
mod config;
mod conn;
mod error;
mod peer;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_wire::Envelope;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use codec::{FramingError, RawFrame, fuzz_frame_reader, fuzz_tcp_stream, split_frame};
pub use config::{
    AddressMap, Backoff, DEFAULT_BIND, Keepalive, OverflowPolicy, PeerAddr, TcpConfig, WireMode,
};
pub use conn::{PeerIdentity, PeerKey};
pub use error::{ConnectionError, SendAllError, TcpError};

use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters};
use crate::error::TransportError;
use crate::native::{HandshakeConfig, NodeId, PeerInfo, RejectReason};
use peer::{Enqueue, Peer, lock};

/// Receives every message envelope that arrives on any connection.
///
/// It runs on the connection's read task: keep it short (hand the message to a queue or
/// a local transport). Closures `Fn(&PeerKey, Envelope)` implement it.
pub trait InboundHandler: Send + Sync + 'static {
    /// Called once per received message, in arrival order per connection.
    fn on_message(&self, from: &PeerKey, envelope: Envelope);
}

impl<F> InboundHandler for F
where
    F: Fn(&PeerKey, Envelope) + Send + Sync + 'static,
{
    fn on_message(&self, from: &PeerKey, envelope: Envelope) {
        self(from, envelope)
    }
}

/// Called for every outbound message the transport drops, with the reason.
pub type SendFailureHook = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// Counters of a [`TcpNode`] (monotonic since start).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written to sockets.
    pub messages_out: AtomicU64,
    /// Bytes written to sockets (message batches).
    pub bytes_out: AtomicU64,
    /// Runs of queued messages the peer tasks wrote, one write each.
    pub batches_out: AtomicU64,
    /// Messages the sending thread wrote to an idle plain-TCP connection itself
    /// (no hop through the peer task); included in `messages_out` once complete.
    pub direct_writes: AtomicU64,
    /// Of those, messages the socket took only in part (the peer task wrote the rest).
    pub direct_partial: AtomicU64,
    /// Writes of queued messages made by a sending thread itself, once the queue held
    /// enough bytes before the peer task took it (see `docs/transport.md`).
    pub sender_flushes: AtomicU64,
    /// Messages received and decoded.
    pub messages_in: AtomicU64,
    /// Frames or envelopes that failed to decode.
    pub decode_failures: AtomicU64,
    /// Connections that completed a handshake (both directions).
    pub connections_established: AtomicU64,
    /// Inbound connections refused (TLS, handshake, timeout).
    pub handshake_failures: AtomicU64,
    /// Failed dial attempts.
    pub dial_failures: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Messages written to sockets.
    pub messages_out: u64,
    /// Messages the sending thread started writing itself (idle plain connection).
    pub direct_writes: u64,
    /// Of those, messages the socket took only in part.
    pub direct_partial: u64,
    /// Writes of queued messages made by a sending thread (queue past 256 KiB before
    /// the peer task took it).
    pub sender_flushes: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Runs of queued messages the peer tasks wrote, one write (of up to
    /// `max_batch_bytes`) each: write batching shows as `messages_out` much larger than
    /// `batches_out + direct_writes + ` the messages of `sender_flushes`.
    pub batches_out: u64,
    /// Messages received and decoded.
    pub messages_in: u64,
    /// Frames or envelopes that failed to decode.
    pub decode_failures: u64,
    /// Connections that completed a handshake.
    pub connections_established: u64,
    /// Inbound connections refused.
    pub handshake_failures: u64,
    /// Failed dial attempts.
    pub dial_failures: u64,
}

#[derive(Default)]
struct Peers {
    by_key: HashMap<PeerKey, Arc<Peer>>,
    aliases: HashMap<PeerAddr, PeerKey>,
    /// Where each native node was last connected.
    nodes: HashMap<NodeId, PeerKey>,
    /// The native node last connected under each key (the reverse of `nodes`, kept
    /// while the key's entry comes and goes).
    owners: HashMap<PeerKey, NodeId>,
}

pub(crate) struct Shared {
    cfg: TcpConfig,
    self_addr: PeerAddr,
    node_id: NodeId,
    hs: Option<HandshakeConfig>,
    dead: DeadLetters,
    inbound: Arc<dyn InboundHandler>,
    on_send_failure: Option<SendFailureHook>,
    peers: Mutex<Peers>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// The runtime the node was started on: tasks are spawned there, so `send` works
    /// from any thread (inside a runtime or not).
    runtime: tokio::runtime::Handle,
    stats: Counters,
    tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    tls_connector: Option<tokio_rustls::TlsConnector>,
}

impl Shared {
    fn fail(&self, envelope: Envelope, reason: DeadLetterReason, detail: String) {
        debug!(target_uri = %envelope.target, %reason, %detail, "outbound message dropped");
        let letter = DeadLetter {
            envelope,
            reason,
            detail: Some(Arc::from(detail)),
        };
        if let Some(hook) = &self.on_send_failure {
            hook(&letter);
        }
        self.dead.publish_letter(letter);
    }

    fn admit(&self, info: &PeerInfo) -> Option<(RejectReason, String)> {
        if self.cancel.is_cancelled() {
            return Some((RejectReason::ShuttingDown, "node is shutting down".into()));
        }
        let key = PeerIdentity {
            addr: PeerAddr::new(info.host.clone(), info.port),
            node: Some(info.clone()),
        }
        .key();
        let peer = {
            let peers = lock(&self.peers);
            let key = match &key {
                PeerKey::Addr(a) => peers.aliases.get(a).cloned().unwrap_or(key),
                other => other.clone(),
            };
            peers.by_key.get(&key).cloned()
        };
        let current = peer?.connected()?.node?;
        if current.node_id != info.node_id {
            return Some((
                RejectReason::AddressInUse,
                format!(
                    "{}:{} is held by node {}, not {}",
                    info.host, info.port, current.node_id, info.node_id
                ),
            ));
        }
        if info.incarnation < current.incarnation {
            return Some((
                RejectReason::StaleIncarnation,
                format!(
                    "node {} incarnation {} is older than the connected {}",
                    info.node_id, info.incarnation, current.incarnation
                ),
            ));
        }
        None
    }

    /// Records that `key` now leads to the native node `node`; returns the node that
    /// was last connected under `key` when it is another one. That node's route is
    /// forgotten then (its messages must not go to whoever now answers at its address):
    /// `send_to_node` refuses it with `NoRoute` until it connects again.
    fn claim_key(&self, key: &PeerKey, node: NodeId) -> Option<NodeId> {
        let mut peers = lock(&self.peers);
        let previous = peers.owners.insert(key.clone(), node)?;
        if previous == node {
            return None;
        }
        if peers.nodes.get(&previous) == Some(key) {
            peers.nodes.remove(&previous);
        }
        Some(previous)
    }

    fn register_connection(&self, key: &PeerKey, identity: &PeerIdentity) {
        let mut peers = lock(&self.peers);
        if let Some(info) = &identity.node {
            peers.nodes.insert(info.node_id, key.clone());
        }
        if let PeerKey::Addr(dialed) = key
            && identity.addr != *dialed
            && identity.addr.port != 0
            && !peers
                .by_key
                .contains_key(&PeerKey::Addr(identity.addr.clone()))
        {
            debug!(dialed = %dialed, canonical = %identity.addr, "remembering address alias");
            peers.aliases.insert(identity.addr.clone(), key.clone());
        }
    }

    fn unregister_connection(&self, key: &PeerKey, identity: &PeerIdentity) {
        let mut peers = lock(&self.peers);
        peers.aliases.retain(|_, k| k != key);
        if let Some(info) = &identity.node
            && peers.nodes.get(&info.node_id) == Some(key)
            && !matches!(key, PeerKey::Addr(_))
        {
            peers.nodes.remove(&info.node_id);
        }
    }

    /// Removes `peer` from the table if it is still the entry for its key and has
    /// nothing pending; returns whether it was removed.
    fn forget_peer(&self, peer: &Arc<Peer>) -> bool {
        let mut peers = lock(&self.peers);
        let same = peers
            .by_key
            .get(&peer.key)
            .is_some_and(|p| Arc::ptr_eq(p, peer));
        if !same || !peer.try_retire() {
            return false;
        }
        peers.by_key.remove(&peer.key);
        if let PeerKey::Node(id) = &peer.key {
            peers.nodes.remove(id);
        }
        true
    }

    /// The peer for `key`, created (with its task) if needed.
    fn peer(self: &Arc<Self>, key: PeerKey) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        let key = match &key {
            PeerKey::Addr(a) => peers.aliases.get(a).cloned().unwrap_or(key),
            other => other.clone(),
        };
        if let Some(p) = peers.by_key.get(&key) {
            return p.clone();
        }
        let dial_addr = match &key {
            PeerKey::Addr(a) if a.port != 0 => Some(a.clone()),
            _ => None,
        };
        let peer = Arc::new(Peer::new(key.clone(), dial_addr));
        peers.by_key.insert(key, peer.clone());
        drop(peers);
        let task_peer = peer.clone();
        let shared = self.clone();
        self.tasks
            .spawn_on(async move { task_peer.run(shared).await }, &self.runtime);
        peer
    }
}

/// Builder of a [`TcpNode`].
pub struct TcpNodeBuilder {
    cfg: TcpConfig,
    dead: DeadLetters,
    inbound: Arc<dyn InboundHandler>,
    on_send_failure: Option<SendFailureHook>,
}

impl fmt::Debug for TcpNodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpNodeBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl TcpNodeBuilder {
    /// Where dropped messages are reported (default: a private sink).
    pub fn dead_letters(mut self, dead: DeadLetters) -> Self {
        self.dead = dead;
        self
    }

    /// The handler of received messages (default: log and drop).
    pub fn on_message(mut self, handler: impl InboundHandler) -> Self {
        self.inbound = Arc::new(handler);
        self
    }

    /// Same as [`on_message`](Self::on_message) with a shared handler.
    pub fn inbound(mut self, handler: Arc<dyn InboundHandler>) -> Self {
        self.inbound = handler;
        self
    }

    /// A hook called for every outbound message that is dropped.
    pub fn on_send_failure(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.on_send_failure = Some(Arc::new(hook));
        self
    }

    /// Binds (unless client-only) and starts accepting. Must run inside a tokio runtime.
    pub async fn start(self) -> Result<TcpNode, TcpError> {
        TcpNode::start_inner(self).await
    }
}

/// A running TCP transport node. Cheap to share behind an `Arc`; stops on
/// [`shutdown`](TcpNode::shutdown) or when dropped.
pub struct TcpNode {
    shared: Arc<Shared>,
    local_addr: Option<SocketAddr>,
}

impl fmt::Debug for TcpNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpNode")
            .field("advertised", &self.shared.self_addr)
            .field("local_addr", &self.local_addr)
            .field("node_id", &self.shared.node_id)
            .field("mode", &self.shared.cfg.mode)
            .finish()
    }
}

/// A handle on one peer (to send without looking the peer up each time).
#[derive(Clone)]
pub struct PeerHandle {
    peer: Arc<Peer>,
    shared: Arc<Shared>,
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerHandle")
            .field("key", &self.peer.key)
            .finish()
    }
}

impl PeerHandle {
    /// Queues a message for this peer (see [`TcpNode::send`]).
    pub fn send(&self, envelope: Envelope) -> Result<(), TransportError> {
        self.send_cow(Cow::Owned(envelope))
    }

    /// Queues a copy of `envelope` for this peer without taking it: the message is
    /// encoded straight from the caller's envelope (the frame is the same as
    /// [`send`](PeerHandle::send)'s), and the envelope is cloned only if it becomes a
    /// dead letter.
    ///
    /// For a caller that sends one message to several peers, or sends the same message
    /// again and again, this saves cloning and dropping the envelope per send (an atomic
    /// increment and decrement for each of its shared fields).
    ///
    /// ```no_run
    /// # fn demo(peers: &[herald_transport::tcp::PeerHandle], m: &herald_wire::Envelope) {
    /// for peer in peers {
    ///     let _ = peer.send_ref(m);
    /// }
    /// # }
    /// ```
    pub fn send_ref(&self, envelope: &Envelope) -> Result<(), TransportError> {
        self.send_cow(Cow::Borrowed(envelope))
    }

    /// Queues several messages for this peer, in order, each as
    /// [`send_ref`](PeerHandle::send_ref) would, taking the peer's lock once per run of
    /// messages instead of once per message. Returns how many were queued (a message
    /// dropped by the overflow policy or too large for a frame counts, as `send`
    /// returns `Ok` for it, and becomes a dead letter). Stops at the first message
    /// refused: the error says why and how many were queued before it; that one and
    /// the rest are not sent.
    ///
    /// For a producer that has a batch at hand (a forwarder, a replay, a bulk
    /// transfer); the frames on the wire are the same as those of one `send` per
    /// message.
    ///
    /// ```no_run
    /// # fn demo(peer: &herald_transport::tcp::PeerHandle, batch: &[herald_wire::Envelope]) {
    /// match peer.send_all(batch) {
    ///     Ok(n) => assert_eq!(n, batch.len()),
    ///     Err(e) => eprintln!("{} left unsent: {}", batch.len() - e.queued, e.error),
    /// }
    /// # }
    /// ```
    pub fn send_all<'e, I>(&self, envelopes: I) -> Result<usize, SendAllError>
    where
        I: IntoIterator<Item = &'e Envelope>,
    {
        /// Messages queued per acquisition of the lock, so that the peer task (or a
        /// concurrent producer) is not kept waiting through a long batch.
        const RUN: usize = 64;
        let mut envs = envelopes.into_iter().peekable();
        let mut queued = 0;
        loop {
            queued += self.peer.enqueue_run(&self.shared, &mut envs, RUN);
            // Whatever the run stopped at (an empty queue, a full one, a closed or
            // blacklisted peer, an oversized message, a retired entry, or the end of
            // the run) goes through the general path.
            let Some(env) = envs.next() else {
                return Ok(queued);
            };
            if let Err(error) = self.send_ref(env) {
                return Err(SendAllError { queued, error });
            }
            queued += 1;
        }
    }

    fn send_cow(&self, envelope: Cow<'_, Envelope>) -> Result<(), TransportError> {
        let mut env = match self.peer.enqueue(&self.shared, envelope) {
            Ok(()) => return Ok(()),
            Err(Enqueue::Refused(e)) => return Err(e),
            Err(Enqueue::Retry(env)) => *env,
        };
        // The entry this handle points to was retired after its connection closed: use
        // the current one (created if needed). Retirement needs an idle peer, so this
        // settles within a couple of rounds.
        loop {
            let current = self.shared.peer(self.peer.key.clone());
            match current.enqueue(&self.shared, env) {
                Ok(()) => return Ok(()),
                Err(Enqueue::Refused(e)) => return Err(e),
                Err(Enqueue::Retry(back)) => env = *back,
            }
        }
    }

    /// The peer's key.
    pub fn key(&self) -> &PeerKey {
        &self.peer.key
    }

    /// The identity of the current connection, if connected.
    pub fn connected(&self) -> Option<PeerIdentity> {
        self.peer.connected()
    }

    /// Messages waiting to be written.
    pub fn queued(&self) -> usize {
        self.peer.queued()
    }

    /// Waits until everything queued so far was written (or dropped); `false` on timeout.
    pub async fn flushed(&self, timeout: Duration) -> bool {
        self.peer.flushed(timeout).await
    }

    /// Waits until at most `limit` messages are queued for this peer; `false` on timeout.
    ///
    /// The sender-side backpressure for producers that must not overflow the queue:
    /// it sleeps (no polling) until the peer task has written enough, waking each time
    /// a batch was written or dropped.
    ///
    /// ```no_run
    /// # async fn demo(peer: herald_transport::tcp::PeerHandle, msgs: Vec<herald_wire::Envelope>) {
    /// use std::time::Duration;
    /// for m in msgs {
    ///     if !peer.queued_at_most(1024, Duration::from_secs(5)).await {
    ///         break; // the peer is not draining its queue
    ///     }
    ///     let _ = peer.send(m);
    /// }
    /// # }
    /// ```
    pub async fn queued_at_most(&self, limit: usize, timeout: Duration) -> bool {
        self.peer.queued_at_most(limit, timeout).await
    }

    /// Lifts this peer's circuit breaker and retries at once.
    pub fn clear_blacklist(&self) {
        self.peer.clear_blacklist()
    }
}

impl TcpNode {
    /// A builder with the given configuration.
    pub fn builder(cfg: TcpConfig) -> TcpNodeBuilder {
        TcpNodeBuilder {
            cfg,
            dead: DeadLetters::default(),
            inbound: Arc::new(|from: &PeerKey, env: Envelope| {
                debug!(%from, target_uri = %env.target, "message received but no handler is installed");
            }),
            on_send_failure: None,
        }
    }

    async fn start_inner(b: TcpNodeBuilder) -> Result<TcpNode, TcpError> {
        let cfg = b.cfg;
        if cfg.queue_capacity == 0 {
            return Err(TcpError::Config("queue_capacity must be at least 1".into()));
        }
        if cfg.max_frame_size < 64 {
            return Err(TcpError::Config(format!(
                "max_frame_size {} is too small (minimum 64)",
                cfg.max_frame_size
            )));
        }
        if let Some(k) = cfg.keepalive
            && (k.interval.is_zero() || k.timeout < k.interval)
        {
            return Err(TcpError::Config(format!(
                "keepalive interval {:?} must be above zero and at most the timeout {:?}",
                k.interval, k.timeout
            )));
        }
        let listener = if cfg.client_only {
            None
        } else {
            Some(
                TcpListener::bind(cfg.bind)
                    .await
                    .map_err(|source| TcpError::Bind {
                        addr: cfg.bind,
                        source,
                    })?,
            )
        };
        let local_addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(|source| TcpError::Bind {
                addr: cfg.bind,
                source,
            })?),
            None => None,
        };
        let self_addr = match (&cfg.advertise, local_addr) {
            (Some(a), Some(local)) if a.port == 0 => PeerAddr::new(a.host.clone(), local.port()),
            (Some(a), _) => a.clone(),
            (None, Some(local)) => PeerAddr::from(local),
            (None, None) => PeerAddr::new(cfg.bind.ip().to_string(), 0),
        };
        let self_addr = if cfg.client_only {
            PeerAddr::new(self_addr.host, 0)
        } else {
            self_addr
        };
        let hs = match &cfg.mode {
            WireMode::CastyV1 => None,
            WireMode::Native { cluster, cookie } => {
                let mut h = HandshakeConfig::new(cluster.clone(), cfg.node_id, cfg.incarnation)
                    .with_advertised(self_addr.host.clone(), self_addr.port);
                h.cookie = cookie.clone();
                if cfg.client_only {
                    h.capabilities |= crate::native::CAP_CLIENT_ONLY;
                }
                Some(h)
            }
        };
        let (tls_acceptor, tls_connector) = match &cfg.tls {
            Some(t) => (
                t.server.clone().map(tokio_rustls::TlsAcceptor::from),
                t.client.clone().map(tokio_rustls::TlsConnector::from),
            ),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            node_id: cfg.node_id,
            cfg,
            self_addr,
            hs,
            dead: b.dead,
            inbound: b.inbound,
            on_send_failure: b.on_send_failure,
            peers: Mutex::new(Peers::default()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            stats: Counters::default(),
            tls_acceptor,
            tls_connector,
        });
        if let Some(listener) = listener {
            let s = shared.clone();
            shared.tasks.spawn(accept_loop(s, listener));
        }
        info!(
            advertised = %shared.self_addr,
            local = ?local_addr,
            node_id = %shared.node_id,
            mode = ?shared.cfg.mode,
            tls = shared.cfg.tls.is_some(),
            "TCP transport started"
        );
        Ok(TcpNode { shared, local_addr })
    }

    /// The socket address actually bound (`None` when client-only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The advertised address (port 0 when client-only).
    pub fn advertised(&self) -> &PeerAddr {
        &self.shared.self_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The configuration in use.
    pub fn config(&self) -> &TcpConfig {
        &self.shared.cfg
    }

    /// The dead-letter sink.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.shared.dead
    }

    /// A handle on the peer at `addr` (created, not yet dialed, if unknown).
    pub fn peer(&self, addr: &PeerAddr) -> PeerHandle {
        PeerHandle {
            peer: self.shared.peer(PeerKey::Addr(addr.clone())),
            shared: self.shared.clone(),
        }
    }

    /// Queues `envelope` for the node at `to` and returns at once.
    ///
    /// `Ok` means queued (or, with [`OverflowPolicy::DropNewest`], dropped as a dead
    /// letter because the queue was full). `Err(Refused)` means the message was refused
    /// up front (circuit open, shut down, unreachable inbound-only peer, full queue with
    /// [`OverflowPolicy::Fail`]); it was also published as a dead letter.
    pub fn send(&self, to: &PeerAddr, envelope: Envelope) -> Result<(), TransportError> {
        if self.shared.cancel.is_cancelled() {
            let target = envelope.target.clone();
            self.shared.fail(
                envelope,
                DeadLetterReason::Shutdown,
                "transport is shut down".into(),
            );
            return Err(TransportError::Refused {
                target,
                reason: DeadLetterReason::Shutdown,
            });
        }
        self.peer(to).send(envelope)
    }

    /// Queues `envelope` for the node with id `node` (native mode), wherever it is
    /// connected or was last seen.
    pub fn send_to_node(&self, node: NodeId, envelope: Envelope) -> Result<(), TransportError> {
        match self.node_key(node) {
            Some(key) => PeerHandle {
                peer: self.shared.peer(key),
                shared: self.shared.clone(),
            }
            .send(envelope),
            None => {
                let target = envelope.target.clone();
                self.shared.fail(
                    envelope,
                    DeadLetterReason::NoRoute,
                    format!("node {node} is not known to this node"),
                );
                Err(TransportError::Refused {
                    target,
                    reason: DeadLetterReason::NoRoute,
                })
            }
        }
    }

    /// Where the node with id `node` was seen (native mode).
    pub fn node_key(&self, node: NodeId) -> Option<PeerKey> {
        lock(&self.shared.peers).nodes.get(&node).cloned()
    }

    /// Lifts the circuit breaker for `addr` (casty's `clear_blacklist`).
    pub fn clear_blacklist(&self, addr: &PeerAddr) {
        let key = {
            let peers = lock(&self.shared.peers);
            peers
                .aliases
                .get(addr)
                .cloned()
                .unwrap_or_else(|| PeerKey::Addr(addr.clone()))
        };
        let peer = lock(&self.shared.peers).by_key.get(&key).cloned();
        if let Some(p) = peer {
            p.clear_blacklist();
        }
    }

    /// Peer entries currently held (connected, dialing, or with queued messages). Idle
    /// peers whose connection closed are forgotten, so this stays bounded.
    pub fn known_peers(&self) -> usize {
        lock(&self.shared.peers).by_key.len()
    }

    /// Peers with a live connection, with their identity.
    pub fn connected_peers(&self) -> Vec<(PeerKey, PeerIdentity)> {
        let peers: Vec<Arc<Peer>> = lock(&self.shared.peers).by_key.values().cloned().collect();
        peers
            .into_iter()
            .filter_map(|p| p.connected().map(|id| (p.key.clone(), id)))
            .collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            messages_out: l(&c.messages_out),
            direct_writes: l(&c.direct_writes),
            direct_partial: l(&c.direct_partial),
            sender_flushes: l(&c.sender_flushes),
            bytes_out: l(&c.bytes_out),
            batches_out: l(&c.batches_out),
            messages_in: l(&c.messages_in),
            decode_failures: l(&c.decode_failures),
            connections_established: l(&c.connections_established),
            handshake_failures: l(&c.handshake_failures),
            dial_failures: l(&c.dial_failures),
        }
    }

    /// Waits until every message queued so far on every peer was written or dropped.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let peers: Vec<Arc<Peer>> = lock(&self.shared.peers).by_key.values().cloned().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for p in peers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !p.flushed(left).await {
                return false;
            }
        }
        true
    }

    /// Stops accepting, closes every connection gracefully, reports still-queued
    /// messages as dead letters (`Shutdown`) and waits (up to 5 s) for the tasks.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.shared.tasks.wait())
            .await
            .is_err()
        {
            warn!("TCP transport tasks did not stop within 5 s");
        }
    }
}

impl Drop for TcpNode {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let pending = Arc::new(tokio::sync::Semaphore::new(
        shared.cfg.max_pending_handshakes.max(1),
    ));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.cancel.cancelled() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    // Too many sockets are still in their handshake (a flood of silent
                    // clients, for instance): refuse this one at once.
                    shared
                        .stats
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %remote, limit = shared.cfg.max_pending_handshakes, "refused inbound connection: too many pending handshakes");
                    drop(tcp);
                    continue;
                };
                let s = shared.clone();
                shared.tasks.spawn(async move {
                    let result = conn::accept(&s, tcp, remote).await;
                    drop(permit);
                    match result {
                        Ok(est) => {
                            let key = est.identity.key();
                            s.peer(key).adopt(est);
                        }
                        Err(e) => {
                            s.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                            conn::log_accept_failure(&e);
                        }
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
