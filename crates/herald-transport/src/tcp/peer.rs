//! One task per peer: a bounded outbound queue, dialing with backoff and a circuit
//! breaker, batched writes, the read loop, keepalive and the simultaneous-connect rule.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use herald_wire::{Envelope, EnvelopeDecoder, FRAME_HANDSHAKE, FRAME_MESSAGE, SharedStr};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use super::codec::{FrameReader, ReadError};
use super::config::{OverflowPolicy, PeerAddr};
use super::conn::{self, BoxRead, ConnWrite, Established, PeerIdentity, PeerKey};
use super::error::ConnectionError;
use crate::dead_letter::DeadLetterReason;
use crate::error::TransportError;
use crate::native::NativeFrame;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data inconsistent
    // (every critical section is a few field updates), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct PeerState {
    msgs: OutQueue,
    /// Header bytes of the last envelope queued (senders repeat their headers).
    headers: HeaderCache,
    control: Vec<NativeFrame>,
    adopt: Vec<Established>,
    enqueued: u64,
    connected: Option<PeerIdentity>,
    breaker_until: Option<Instant>,
    failures: u32,
    closed: bool,
    forgotten: bool,
    /// The current connection's plain TCP half, for direct writes (`None`: TLS, not
    /// connected, or being switched).
    direct: Option<Arc<OwnedWriteHalf>>,
    /// The peer task has taken work (messages, control frames, a partial frame or a
    /// new connection) and may be writing: senders must queue.
    busy: bool,
    /// Since when nothing has been in flight on the connection (the task went idle,
    /// or the last direct write).
    idle_since: Option<Instant>,
    /// A directly written frame of which only the first bytes went out: the task
    /// writes the rest before anything else.
    partial: Option<Partial>,
    /// Encoding buffer of direct writes.
    scratch: BytesMut,
    /// Queue size (bytes) at which a sender next tries to flush the queue itself
    /// ([`Peer::try_flush`]); 0 means [`FLUSH_BYTES`].
    flush_at: usize,
    /// [`thread_token`] of the thread that queued every message in `msgs` since the
    /// peer task last took the queue (0: none yet; [`SEVERAL`]: more than one thread).
    /// Only a sole producer flushes: with several, the one flushing would hold the
    /// lock through a write while the others wait for it.
    producer: usize,
}

impl PeerState {
    /// Counts a message just queued by the thread `me` (see `producer`).
    fn count_queued(&mut self, me: usize) {
        self.enqueued += 1;
        self.producer = match self.producer {
            0 => me,
            p if p == me => p,
            _ => SEVERAL,
        };
    }
}

/// [`PeerState::producer`] when messages came from more than one thread.
const SEVERAL: usize = usize::MAX;

/// Identifies the calling thread (the address of a thread-local; no reference count
/// touched, unlike `std::thread::current()`).
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| std::ptr::from_ref(t) as usize)
}

/// What [`Peer::try_direct`] did with a message.
enum Direct {
    /// Not written: queue it.
    NotTaken,
    /// Written completely.
    Written,
    /// Partly written; the rest is in `PeerState::partial` for the peer task.
    Partial,
    /// Too large for a frame.
    TooLarge(TooLarge),
}

/// Direct-write buffers larger than this are not kept between messages.
const MAX_SCRATCH: usize = 64 * 1024;

/// A frame whose first `written` bytes are on the wire.
struct Partial {
    frame: BytesMut,
    written: usize,
}

/// How long a connection must have been idle before a sender writes a message to it
/// directly instead of queueing it for the peer task. A sender in a burst finds the
/// connection busy (or idle for less than this) and queues, so bursts are still
/// written in batches; a message after a pause (a request, a reply) skips the hop to
/// the peer task.
const DIRECT_AFTER_IDLE: Duration = Duration::from_micros(10);

/// Queued bytes at which a sender writes the queue to the socket itself when the
/// peer task has not taken it yet (plain TCP, non-blocking; see [`Peer::try_flush`]).
///
/// A producer in a burst keeps its thread busy, so the woken peer task often cannot
/// run until it yields; meanwhile the queue would grow to megabytes that are cold in
/// the cache by the time they are written. Flushing every `FLUSH_BYTES` from the
/// sending thread writes bytes that are still in its cache, in runs as large as a
/// buffered writer's, and keeps the queue buffer small and hot.
const FLUSH_BYTES: usize = 256 * 1024;

/// A peer: its queue and the state its task shares with senders.
pub(crate) struct Peer {
    pub key: PeerKey,
    /// Where to dial it (`None`: inbound-only peer, e.g. a native client-only node).
    pub dial_addr: Option<PeerAddr>,
    state: Mutex<PeerState>,
    msg_ready: Notify,
    wake: Notify,
    settled: watch::Sender<u64>,
}

/// Why [`Peer::enqueue`] did not queue a message.
pub(crate) enum Enqueue<'e> {
    /// Refused (and reported as a dead letter).
    Refused(TransportError),
    /// The peer entry was retired; look the peer up again and retry.
    Retry(Box<Cow<'e, Envelope>>),
}

enum ConnEnd {
    Lost,
    Shutdown,
}

impl Peer {
    pub(crate) fn new(key: PeerKey, dial_addr: Option<PeerAddr>) -> Self {
        Peer {
            key,
            dial_addr,
            state: Mutex::new(PeerState::default()),
            msg_ready: Notify::new(),
            wake: Notify::new(),
            settled: watch::Sender::new(0),
        }
    }

    fn settle(&self, n: u64) {
        if n > 0 {
            self.settled.send_modify(|s| *s += n);
        }
    }

    /// The identity of the current connection, if any.
    pub(crate) fn connected(&self) -> Option<PeerIdentity> {
        lock(&self.state).connected.clone()
    }

    /// Messages waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state).msgs.len()
    }

    /// Queues `env`, applying the breaker and the overflow policy.
    ///
    /// `Err(Retry(env))`: this peer entry was retired (its connection closed with nothing
    /// queued) and the caller should look the peer up again.
    ///
    /// A borrowed `env` is encoded from the caller's envelope; it is cloned only when it
    /// becomes a dead letter.
    pub(crate) fn enqueue<'e>(
        &self,
        shared: &Shared,
        env: Cow<'e, Envelope>,
    ) -> Result<(), Enqueue<'e>> {
        let st = lock(&self.state);
        if st.closed && st.forgotten && self.dial_addr.is_some() {
            return Err(Enqueue::Retry(Box::new(env)));
        }
        self.enqueue_locked(shared, st, env)
            .map_err(Enqueue::Refused)
    }

    fn enqueue_locked(
        &self,
        shared: &Shared,
        mut st: MutexGuard<'_, PeerState>,
        env: Cow<'_, Envelope>,
    ) -> Result<(), TransportError> {
        let refuse =
            |st: MutexGuard<'_, PeerState>, env: Cow<'_, Envelope>, reason, detail: String| {
                drop(st);
                let target = env.target.clone();
                shared.fail(env.into_owned(), reason, detail);
                Err(TransportError::Refused { target, reason })
            };
        if st.closed {
            let (reason, detail) = if st.forgotten {
                (
                    DeadLetterReason::PeerUnreachable,
                    format!("{} disconnected and cannot be dialed", self.key),
                )
            } else {
                (
                    DeadLetterReason::Shutdown,
                    format!("transport to {} is shut down", self.key),
                )
            };
            return refuse(st, env, reason, detail);
        }
        if let Some(until) = st.breaker_until {
            let now = Instant::now();
            if now < until {
                let detail = format!(
                    "peer {} is blacklisted for {:?} more after {} failed dials",
                    self.key,
                    until - now,
                    st.failures
                );
                return refuse(st, env, DeadLetterReason::Blacklisted, detail);
            }
            // Half-open: let the next dial try.
            st.breaker_until = None;
        }
        if self.dial_addr.is_none() && st.connected.is_none() {
            return refuse(
                st,
                env,
                DeadLetterReason::PeerUnreachable,
                format!("{} is not connected and cannot be dialed", self.key),
            );
        }
        let max_frame = shared.cfg.max_frame_size;
        // Drop-oldest overflow: why the oldest message gives way to this one.
        let mut evict = None;
        if st.msgs.len() >= shared.cfg.queue_capacity
            || st.msgs.bytes.len() >= shared.cfg.max_queue_bytes
        {
            let detail = format!(
                "outbound queue of {} is full ({} messages, {} bytes; at most {} messages or {} bytes)",
                self.key,
                st.msgs.len(),
                st.msgs.bytes.len(),
                shared.cfg.queue_capacity,
                shared.cfg.max_queue_bytes
            );
            match shared.cfg.overflow {
                OverflowPolicy::DropNewest => {
                    drop(st);
                    shared.fail(env.into_owned(), DeadLetterReason::QueueOverflow, detail);
                    return Ok(());
                }
                OverflowPolicy::Fail => {
                    return refuse(st, env, DeadLetterReason::QueueOverflow, detail);
                }
                OverflowPolicy::DropOldest => evict = Some(detail),
            }
        }
        if evict.is_none() {
            match self.try_direct(shared, &mut st, &env, max_frame) {
                Direct::NotTaken => {}
                Direct::Written => {
                    drop(st);
                    self.settle(1);
                    return Ok(());
                }
                Direct::Partial => {
                    drop(st);
                    self.msg_ready.notify_one();
                    return Ok(());
                }
                Direct::TooLarge(too_large) => {
                    drop(st);
                    fail_too_large(shared, env, too_large);
                    return Ok(());
                }
            }
        }
        let pushed = {
            let PeerState { msgs, headers, .. } = &mut *st;
            msgs.push(headers, &env, max_frame)
        };
        if let Err(too_large) = pushed {
            drop(st);
            fail_too_large(shared, env, too_large);
            return Ok(());
        }
        st.count_queued(thread_token());
        if let Some(detail) = evict {
            let oldest = st.msgs.pop_front();
            drop(st);
            if let Some(old) = oldest {
                self.settle(1);
                fail_frame(shared, &old, DeadLetterReason::QueueOverflow, detail);
            }
            self.msg_ready.notify_one();
            return Ok(());
        }
        // Only the first message wakes the peer task: it checks the queue under this
        // lock before it waits, and takes everything queued each time it wakes.
        let first = st.msgs.len() == 1;
        let (settled, partial) = self.flush_if_due(shared, &mut st);
        drop(st);
        if settled > 0 {
            self.settle(settled);
        }
        if first || partial {
            self.msg_ready.notify_one();
        }
        // `env` is dropped on return, on the sender's thread, where its memory was
        // allocated (in place: an explicit `drop(env)` would first copy it).
        Ok(())
    }

    /// Queues the next envelopes of `envs` under one acquisition of the peer's lock, at
    /// most `max` of them, while each is an ordinary append: the queue already holds
    /// messages (so no direct write and no wake-up is due), the peer is open, not
    /// blacklisted, has room, and the message fits in a frame. Stops before the first
    /// envelope that needs more than that, leaving it in `envs` for
    /// [`Peer::enqueue`], which decides it (and reports it) as for a single send.
    /// Returns how many were queued.
    pub(crate) fn enqueue_run<'e, I>(
        &self,
        shared: &Shared,
        envs: &mut std::iter::Peekable<I>,
        max: usize,
    ) -> usize
    where
        I: Iterator<Item = &'e Envelope>,
    {
        let max_frame = shared.cfg.max_frame_size;
        let mut st = lock(&self.state);
        let ordinary = |st: &PeerState| {
            !st.closed
                && st.breaker_until.is_none()
                && !st.msgs.is_empty()
                && st.msgs.len() < shared.cfg.queue_capacity
                && st.msgs.bytes.len() < shared.cfg.max_queue_bytes
                && (self.dial_addr.is_some() || st.connected.is_some())
        };
        let (mut queued, mut settled, mut partial) = (0, 0, false);
        let me = thread_token();
        while queued < max && ordinary(&st) {
            let Some(env) = envs.peek() else { break };
            let pushed = {
                let PeerState { msgs, headers, .. } = &mut *st;
                msgs.push(headers, env, max_frame)
            };
            if pushed.is_err() {
                // Too large: the general path makes it a dead letter.
                break;
            }
            envs.next();
            queued += 1;
            st.count_queued(me);
            let (n, p) = self.flush_if_due(shared, &mut st);
            settled += n;
            partial |= p;
        }
        drop(st);
        self.settle(settled);
        if partial {
            self.msg_ready.notify_one();
        }
        queued
    }

    /// Writes `env` straight to the socket when the connection has been idle for
    /// [`DIRECT_AFTER_IDLE`]: plain TCP, nothing queued or in the peer task's hands.
    /// Runs under the state lock, which keeps other direct writers out; the task only
    /// writes while `busy`, and only the task clears `busy`.
    fn try_direct(
        &self,
        shared: &Shared,
        st: &mut PeerState,
        env: &Envelope,
        max_frame: usize,
    ) -> Direct {
        if st.busy
            || !st.msgs.is_empty()
            || st.partial.is_some()
            || !st.control.is_empty()
            || !st.adopt.is_empty()
        {
            return Direct::NotTaken;
        }
        let Some(idle_since) = st.idle_since else {
            return Direct::NotTaken;
        };
        if st.direct.is_none() {
            return Direct::NotTaken;
        }
        let now = Instant::now();
        if now.saturating_duration_since(idle_since) < DIRECT_AFTER_IDLE {
            return Direct::NotTaken;
        }
        let written = {
            let PeerState {
                scratch,
                headers,
                direct: Some(sock),
                ..
            } = &mut *st
            else {
                return Direct::NotTaken;
            };
            scratch.clear();
            if let Err(too_large) = put_message_frame(scratch, headers, env, max_frame) {
                return Direct::TooLarge(too_large);
            }
            sock.try_write(scratch)
        };
        let scratch = &mut st.scratch;
        let outcome = match written {
            // WouldBlock (send buffer full) or an error the peer task will meet too:
            // queue it as usual.
            Err(_) => Direct::NotTaken,
            Ok(n) => {
                shared
                    .stats
                    .bytes_out
                    .fetch_add(n as u64, Ordering::Relaxed);
                shared.stats.direct_writes.fetch_add(1, Ordering::Relaxed);
                if n == scratch.len() {
                    shared.stats.messages_out.fetch_add(1, Ordering::Relaxed);
                    // Idle from the end of this write: a sender whose messages follow
                    // each other closely queues them, however long a write takes.
                    st.idle_since = Some(Instant::now());
                    Direct::Written
                } else {
                    shared.stats.direct_partial.fetch_add(1, Ordering::Relaxed);
                    let frame = scratch.split();
                    st.partial = Some(Partial { frame, written: n });
                    Direct::Partial
                }
            }
        };
        if !matches!(outcome, Direct::NotTaken) {
            st.enqueued += 1;
        }
        if st.scratch.capacity() > MAX_SCRATCH {
            st.scratch = BytesMut::new();
        } else {
            st.scratch.clear();
        }
        outcome
    }

    /// Writes the front of the queue (whole frames, up to `max_batch_bytes`) with one
    /// non-blocking write on the sending thread, when the peer task has not taken the
    /// queue yet and nothing must go before it: plain TCP, connected, the task not
    /// busy, no partial frame, control frame or connection to adopt waiting. Runs under
    /// the state lock (the task only writes while `busy`, which it sets under it).
    ///
    /// Returns the messages written completely and whether a frame was written only in
    /// part (then moved to `partial`, for the task to finish before anything else). A
    /// write that takes nothing (`WouldBlock`: the socket is full) or fails leaves the
    /// queue to the task; the next try waits for another [`FLUSH_BYTES`].
    /// [`Peer::try_flush`] once the queue holds `FLUSH_BYTES` (or what the last failed
    /// flush asked for) from a single producer; `(0, false)` otherwise.
    fn flush_if_due(&self, shared: &Shared, st: &mut PeerState) -> (u64, bool) {
        if st.msgs.bytes.len() >= st.flush_at.max(FLUSH_BYTES) && st.producer != SEVERAL {
            self.try_flush(shared, st)
        } else {
            (0, false)
        }
    }

    fn try_flush(&self, shared: &Shared, st: &mut PeerState) -> (u64, bool) {
        let next = st.msgs.bytes.len() + FLUSH_BYTES;
        if st.busy || st.partial.is_some() || !st.control.is_empty() || !st.adopt.is_empty() {
            st.flush_at = next;
            return (0, false);
        }
        let Some(sock) = st.direct.as_ref() else {
            st.flush_at = next;
            return (0, false);
        };
        let (_, bytes) = st.msgs.prefix(shared.cfg.max_batch_bytes.max(1));
        let written = match sock.try_write(&st.msgs.bytes[..bytes]) {
            Ok(n) if n > 0 => n,
            // WouldBlock, or an error the peer task will meet too.
            _ => {
                st.flush_at = next;
                return (0, false);
            }
        };
        let (n, whole) = st.msgs.whole_within(written);
        st.msgs.consume(n, whole);
        let mut partial = false;
        if written > whole
            && let Some(frame) = st.msgs.pop_front_copy()
        {
            st.partial = Some(Partial {
                frame,
                written: written - whole,
            });
            partial = true;
        }
        st.msgs.rewind();
        if st.msgs.is_empty() {
            st.producer = 0;
        }
        st.flush_at = st.msgs.bytes.len() + FLUSH_BYTES;
        st.idle_since = Some(Instant::now());
        let stats = &shared.stats;
        stats.bytes_out.fetch_add(written as u64, Ordering::Relaxed);
        stats.messages_out.fetch_add(n as u64, Ordering::Relaxed);
        stats.sender_flushes.fetch_add(1, Ordering::Relaxed);
        (n as u64, partial)
    }

    /// Waits until every message queued before this call was written or dropped.
    pub(crate) async fn flushed(&self, timeout: Duration) -> bool {
        let target = lock(&self.state).enqueued;
        let mut rx = self.settled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until at most `limit` messages are queued (checked each time messages
    /// settle, i.e. were written or dropped).
    pub(crate) async fn queued_at_most(&self, limit: usize, timeout: Duration) -> bool {
        let mut rx = self.settled.subscribe();
        tokio::time::timeout(
            timeout,
            rx.wait_for(|_| lock(&self.state).msgs.len() <= limit),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Hands an established inbound connection to this peer's task.
    pub(crate) fn adopt(&self, conn: Established) {
        lock(&self.state).adopt.push(conn);
        self.wake.notify_one();
    }

    /// Lifts the circuit breaker and retries at once.
    pub(crate) fn clear_blacklist(&self) {
        let mut st = lock(&self.state);
        st.breaker_until = None;
        st.failures = 0;
        drop(st);
        self.wake.notify_one();
    }

    fn push_control(&self, f: NativeFrame) {
        lock(&self.state).control.push(f);
        self.msg_ready.notify_one();
    }

    fn drain_to_dead_letters(&self, shared: &Shared, reason: DeadLetterReason, detail: &str) {
        let mut msgs = std::mem::take(&mut lock(&self.state).msgs);
        let n = msgs.len() as u64;
        while let Some(frame) = msgs.pop_front() {
            fail_frame(shared, &frame, reason, detail.to_owned());
        }
        self.settle(n);
    }

    /// Identity is the node id, not the address: when a native connection under this
    /// key leads to another node than the one last connected under it (that node left
    /// and another took its address, whether we dialed or it did), the messages queued
    /// meanwhile were meant for the node that left. They become dead letters
    /// (`NodeReplaced`) instead of reaching the newcomer. A restart of the same node
    /// id (a newer incarnation) keeps them.
    fn check_node(&self, shared: &Shared, identity: &PeerIdentity) {
        let Some(info) = &identity.node else {
            return;
        };
        let Some(previous) = shared.claim_key(&self.key, info.node_id) else {
            return;
        };
        let detail = format!(
            "node {previous} is no longer at {}: node {} answered there",
            self.key, info.node_id
        );
        let queued = self.queued();
        warn!(peer = %self.key, previous = %previous, now = %info.node_id, queued, "another node took this address; messages queued for the previous one become dead letters");
        self.drain_to_dead_letters(shared, DeadLetterReason::NodeReplaced, &detail);
    }

    /// The peer task.
    pub(crate) async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let mut forgotten = false;
        loop {
            let Some(conn) = self.obtain(&shared).await else {
                break;
            };
            match self.run_conn(&shared, conn).await {
                ConnEnd::Shutdown => break,
                // A peer whose connection is gone and that has nothing queued is
                // forgotten, so peers (for instance addresses claimed by inbound clients)
                // do not accumulate; the next send to it makes a fresh entry and dials.
                ConnEnd::Lost => {
                    if shared.forget_peer(&self) {
                        forgotten = true;
                        break;
                    }
                }
            }
        }
        let adopt = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.forgotten |= forgotten;
            st.connected = None;
            std::mem::take(&mut st.adopt)
        };
        for c in adopt {
            retire(c.writer, None);
        }
        let (reason, detail) = if forgotten {
            (
                DeadLetterReason::PeerUnreachable,
                "the peer disconnected and cannot be dialed",
            )
        } else {
            (
                DeadLetterReason::Shutdown,
                "transport shut down before the message was written",
            )
        };
        self.drain_to_dead_letters(&shared, reason, detail);
        debug!(peer = %self.key, forgotten, "peer task ended");
    }

    /// Marks the peer retired if it is idle: no connection, nothing to adopt, and (for a
    /// dialable peer) nothing queued. Done under the state lock, so no message can slip
    /// in between the check and the mark.
    pub(crate) fn try_retire(&self) -> bool {
        let mut st = lock(&self.state);
        let idle = st.adopt.is_empty()
            && st.connected.is_none()
            && (self.dial_addr.is_none() || st.msgs.is_empty());
        if idle {
            st.closed = true;
            st.forgotten = true;
        }
        idle
    }

    /// Waits for an adopted connection, or dials when there is something to send.
    async fn obtain(&self, shared: &Arc<Shared>) -> Option<Established> {
        loop {
            if shared.cancel.is_cancelled() {
                return None;
            }
            let dial_to = {
                let mut st = lock(&self.state);
                if let Some(c) = st.adopt.pop() {
                    for extra in st.adopt.drain(..) {
                        retire(extra.writer, None);
                    }
                    return Some(c);
                }
                let open = st.breaker_until.is_some_and(|u| Instant::now() < u);
                match &self.dial_addr {
                    Some(a) if !st.msgs.is_empty() && !open => Some(a.clone()),
                    _ => None,
                }
            };
            let Some(addr) = dial_to else {
                tokio::select! {
                    _ = self.msg_ready.notified() => {}
                    _ = self.wake.notified() => {}
                    _ = shared.cancel.cancelled() => return None,
                }
                continue;
            };
            match conn::dial(shared, &addr).await {
                Ok(c) => {
                    let mut st = lock(&self.state);
                    st.failures = 0;
                    st.breaker_until = None;
                    return Some(c);
                }
                Err(e) => {
                    shared.stats.dial_failures.fetch_add(1, Ordering::Relaxed);
                    let (failures, delay, opened) = {
                        let mut st = lock(&self.state);
                        st.failures += 1;
                        let delay = shared.cfg.backoff.jittered(st.failures);
                        let opened = st.failures >= shared.cfg.backoff.breaker_threshold;
                        if opened {
                            st.breaker_until = Some(Instant::now() + delay);
                        }
                        (st.failures, delay, opened)
                    };
                    warn!(peer = %self.key, attempt = failures, retry_in = ?delay, error = %e, "dial failed");
                    if opened {
                        warn!(peer = %self.key, open_for = ?delay, "circuit breaker open: dropping queued messages");
                        self.drain_to_dead_letters(
                            shared,
                            DeadLetterReason::PeerUnreachable,
                            &format!("{failures} dials to {} failed: {e}", self.key),
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.wake.notified() => {}
                        _ = shared.cancel.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Does `new` win the simultaneous-connect race against the current connection?
    fn prefer_new(&self, shared: &Shared, cur: &Current, new: &Established) -> bool {
        match (&cur.identity.node, &new.identity.node) {
            (Some(c), Some(n)) => {
                if n.node_id != c.node_id {
                    // The handshake's admission check refuses a different node id while
                    // a connection is up, so the old connection is gone: take the new one.
                    return true;
                }
                if n.incarnation != c.incarnation {
                    return n.incarnation > c.incarnation;
                }
                let dialer = |by_us: bool| if by_us { shared.node_id } else { c.node_id };
                let (dc, dn) = (dialer(cur.dialed_by_us), dialer(new.dialed_by_us));
                if dc == dn { true } else { dn < dc }
            }
            _ => {
                let dialer = |by_us: bool, id: &PeerIdentity| {
                    if by_us {
                        shared.self_addr.clone()
                    } else {
                        id.addr.clone()
                    }
                };
                let dc = dialer(cur.dialed_by_us, &cur.identity);
                let dn = dialer(new.dialed_by_us, &new.identity);
                if dc == dn { true } else { dn < dc }
            }
        }
    }

    fn start_reader(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        reader: FrameReader<BoxRead>,
        label: String,
        rx_count: Arc<AtomicU64>,
    ) -> ReaderHandle {
        let (tx, rx) = oneshot::channel();
        let peer = self.clone();
        let shared2 = shared.clone();
        let stop = shared.cancel.child_token();
        let stop2 = stop.clone();
        shared.tasks.spawn_on(
            async move {
                let r = tokio::select! {
                    r = read_loop(reader, &shared2, &peer, &label, &rx_count) => r,
                    _ = stop2.cancelled() => Ok(()),
                };
                let _ = tx.send(r);
            },
            &shared.runtime,
        );
        ReaderHandle { done: rx, stop }
    }

    async fn run_conn(self: &Arc<Self>, shared: &Arc<Shared>, conn: Established) -> ConnEnd {
        let Established {
            reader,
            writer,
            identity,
            dialed_by_us,
            label,
        } = conn;
        self.check_node(shared, &identity);
        shared.register_connection(&self.key, &identity);
        shared
            .stats
            .connections_established
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut st = lock(&self.state);
            st.connected = Some(identity.clone());
            st.direct = writer.direct();
        }
        info!(peer = %self.key, via = %label, dialed = dialed_by_us, "peer connected");
        let rx_count = Arc::new(AtomicU64::new(0));
        let reader = self.start_reader(shared, reader, label.clone(), rx_count.clone());
        let mut cur = Current {
            identity,
            dialed_by_us,
            label,
            writer,
            reader,
            rx_count,
        };
        // Keepalive only with native peers that said they answer pings.
        let answers_pings = cur
            .identity
            .node
            .as_ref()
            .is_some_and(|n| n.capabilities & crate::native::CAP_KEEPALIVE != 0);
        let keepalive = match (&shared.hs, shared.cfg.keepalive) {
            (Some(_), Some(k)) if answers_pings => Some(k),
            _ => None,
        };
        let mut ka = keepalive.map(|k| {
            let mut i = tokio::time::interval(k.interval);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut ka_seen = 0u64;
        let mut ka_idle = Duration::ZERO;
        let mut ka_seq = 0u64;
        let mut batch = OutQueue::default();
        let mut buf = BytesMut::new();
        let mut release_at: Option<tokio::time::Instant> = None;

        let end = loop {
            let (ctrl, adopt, partial) = {
                let mut st = lock(&self.state);
                std::mem::swap(&mut st.msgs, &mut batch);
                st.flush_at = 0;
                st.producer = 0;
                let ctrl = std::mem::take(&mut st.control);
                let adopt = std::mem::take(&mut st.adopt);
                let partial = st.partial.take();
                st.busy =
                    !batch.is_empty() || !ctrl.is_empty() || !adopt.is_empty() || partial.is_some();
                if !st.busy {
                    st.idle_since = Some(Instant::now());
                }
                (ctrl, adopt, partial)
            };
            let mut switched = false;
            for new in adopt {
                if self.prefer_new(shared, &cur, &new) {
                    info!(peer = %self.key, old = %cur.label, new = %new.label, "switching to the newer connection (connection race or reconnect)");
                    let rx_count = Arc::new(AtomicU64::new(0));
                    let reader =
                        self.start_reader(shared, new.reader, new.label.clone(), rx_count.clone());
                    let old = std::mem::replace(
                        &mut cur,
                        Current {
                            identity: new.identity,
                            dialed_by_us: new.dialed_by_us,
                            label: new.label,
                            writer: new.writer,
                            reader,
                            rx_count,
                        },
                    );
                    self.check_node(shared, &cur.identity);
                    shared.register_connection(&self.key, &cur.identity);
                    {
                        let mut st = lock(&self.state);
                        st.connected = Some(cur.identity.clone());
                        st.direct = cur.writer.direct();
                    }
                    switched = true;
                    // Keep reading what the peer already sent on the old one until it closes.
                    retire(old.writer, Some(old.reader));
                } else {
                    debug!(peer = %self.key, kept = %cur.label, closed = %new.label, "duplicate connection closed (connection race)");
                    let rx_count = Arc::new(AtomicU64::new(0));
                    // Keep reading what the peer already sent on it until it closes.
                    let reader = self.start_reader(shared, new.reader, new.label, rx_count);
                    retire(new.writer, Some(reader));
                }
            }
            if let Some(p) = partial {
                // The rest of a directly written frame goes first; after a switch to a
                // new connection, the whole frame (the old one never completed it).
                let from = if switched { 0 } else { p.written };
                if let Err(e) = self.finish_partial(shared, &mut cur, p, from).await {
                    warn!(peer = %self.key, error = %e, "connection lost while writing");
                    break ConnEnd::Lost;
                }
            }
            if !ctrl.is_empty() || !batch.is_empty() {
                release_at = None;
                if let Err(e) = self
                    .write_batch(shared, &mut cur, ctrl, &mut batch, &mut buf)
                    .await
                {
                    warn!(peer = %self.key, error = %e, "connection lost while writing");
                    break ConnEnd::Lost;
                }
                continue;
            }
            // Idle for a second after a burst: give back the queue buffers it grew.
            // (Between bursts they keep their capacity, so a busy stream does not regrow
            // and copy its queue every time the writer catches up.)
            if release_at.is_none() && batch.is_large() {
                release_at = Some(tokio::time::Instant::now() + IDLE_RELEASE);
            }
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => {
                    lock(&self.state).direct = None;
                    let _ = cur.writer.shutdown().await;
                    break ConnEnd::Shutdown;
                }
                r = &mut cur.reader.done => {
                    match r {
                        Ok(Ok(())) => info!(peer = %self.key, via = %cur.label, "peer closed the connection"),
                        Ok(Err(e)) => warn!(peer = %self.key, error = %e, "connection closed"),
                        Err(_) => warn!(peer = %self.key, "connection reader ended"),
                    }
                    break ConnEnd::Lost;
                }
                _ = self.msg_ready.notified() => {}
                _ = self.wake.notified() => {}
                _ = release(release_at) => {
                    release_at = None;
                    batch = OutQueue::default();
                    let mut st = lock(&self.state);
                    if st.msgs.is_empty() && st.msgs.is_large() {
                        st.msgs = OutQueue::default();
                    }
                }
                _ = tick(&mut ka) => {
                    if let Some(k) = keepalive {
                        let seen = cur.rx_count.load(Ordering::Relaxed);
                        if seen != ka_seen {
                            ka_seen = seen;
                            ka_idle = Duration::ZERO;
                        } else {
                            ka_idle += k.interval;
                            if ka_idle >= k.timeout {
                                let e = ConnectionError::KeepaliveTimeout { peer: cur.label.clone(), after: k.timeout };
                                warn!(peer = %self.key, error = %e, "closing silent connection");
                                break ConnEnd::Lost;
                            }
                        }
                        ka_seq += 1;
                        lock(&self.state).control.push(NativeFrame::Ping(ka_seq));
                    }
                }
            }
        };
        // Anything taken out of the queue but not written goes back in front, in order,
        // behind a directly written frame the connection did not complete (sent whole
        // on the next connection).
        {
            let mut st = lock(&self.state);
            let mut front = OutQueue::default();
            if let Some(p) = st.partial.take() {
                front.push_encoded(&p.frame);
            }
            if !front.is_empty() || !batch.is_empty() {
                front.append(batch);
                let behind = std::mem::take(&mut st.msgs);
                front.append(behind);
                st.msgs = front;
            }
            st.connected = None;
            st.direct = None;
            st.busy = false;
            st.idle_since = None;
        }
        shared.unregister_connection(&self.key, &cur.identity);
        if let ConnEnd::Lost = end {
            cur.reader.stop.cancel();
            retire(cur.writer, None);
            if self.dial_addr.is_none() {
                self.drain_to_dead_letters(
                    shared,
                    DeadLetterReason::PeerUnreachable,
                    &format!("connection to {} lost and it cannot be dialed", self.key),
                );
            }
        }
        end
    }

    /// Writes `p.frame[from..]`, the rest of a directly written frame.
    async fn finish_partial(
        &self,
        shared: &Shared,
        cur: &mut Current,
        p: Partial,
        from: usize,
    ) -> Result<(), ConnectionError> {
        let rest = p.frame.get(from..).unwrap_or_default();
        if let Err(source) = write_timed(shared, cur, rest).await {
            let err = ConnectionError::Io {
                peer: cur.label.clone(),
                source,
            };
            let detail = format!("connection to {} failed while writing: {err}", self.key);
            fail_frame(shared, &p.frame, DeadLetterReason::PeerUnreachable, detail);
            self.settle(1);
            return Err(err);
        }
        shared.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .bytes_out
            .fetch_add(rest.len() as u64, Ordering::Relaxed);
        self.settle(1);
        Ok(())
    }

    /// Writes the control frames, then the queued messages in pieces of about
    /// `max_batch_bytes` (whole frames), settling each piece once it is written.
    async fn write_batch(
        &self,
        shared: &Shared,
        cur: &mut Current,
        ctrl: Vec<NativeFrame>,
        batch: &mut OutQueue,
        buf: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        let max_batch = shared.cfg.max_batch_bytes.max(1);
        if !ctrl.is_empty() {
            for f in &ctrl {
                f.encode_frame(buf);
            }
            let r = write_timed(shared, cur, buf).await;
            let bytes = buf.len() as u64;
            buf.clear();
            if let Err(source) = r {
                return Err(ConnectionError::Io {
                    peer: cur.label.clone(),
                    source,
                });
            }
            shared.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
        while !batch.is_empty() {
            let (n, bytes) = batch.prefix(max_batch);
            let r = write_timed(shared, cur, &batch.bytes[..bytes]).await;
            if let Err(source) = r {
                let err = ConnectionError::Io {
                    peer: cur.label.clone(),
                    source,
                };
                let detail = format!("connection to {} failed while writing: {err}", self.key);
                for _ in 0..n {
                    if let Some(frame) = batch.pop_front() {
                        fail_frame(
                            shared,
                            &frame,
                            DeadLetterReason::PeerUnreachable,
                            detail.clone(),
                        );
                    }
                }
                self.settle(n as u64);
                return Err(err);
            }
            batch.consume(n, bytes);
            shared.stats.batches_out.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .messages_out
                .fetch_add(n as u64, Ordering::Relaxed);
            shared
                .stats
                .bytes_out
                .fetch_add(bytes as u64, Ordering::Relaxed);
            self.settle(n as u64);
        }
        batch.clear();
        if buf.capacity() > 2 * max_batch {
            *buf = BytesMut::new();
        }
        Ok(())
    }
}

/// Writes `bytes` and flushes, within the write timeout and until shutdown.
async fn write_timed(shared: &Shared, cur: &mut Current, bytes: &[u8]) -> std::io::Result<()> {
    let write_timeout = shared.cfg.write_timeout;
    tokio::select! {
        r = async {
            cur.writer.write_all(bytes).await?;
            cur.writer.flush().await
        } => r,
        _ = tokio::time::sleep(write_timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("write stalled for {write_timeout:?} (the peer is not reading)"),
        )),
        _ = shared.cancel.cancelled() => Err(std::io::Error::other(
            "transport shut down while writing",
        )),
    }
}

/// A message too large for one frame.
struct TooLarge {
    /// Frame length (kind byte included).
    len: usize,
    max: usize,
}

fn fail_too_large(shared: &Shared, env: Cow<'_, Envelope>, t: TooLarge) {
    shared.fail(
        env.into_owned(),
        DeadLetterReason::FrameTooLarge,
        format!("frame of {} bytes exceeds the maximum of {}", t.len, t.max),
    );
}

/// Reports a queued (already encoded) message as a dead letter, decoding it back into
/// the envelope it was made from (the encoding round-trips exactly).
fn fail_frame(shared: &Shared, frame: &[u8], reason: DeadLetterReason, detail: String) {
    // A copy, so the dead letter does not pin the queue's buffer.
    let body = Bytes::copy_from_slice(frame.get(5..).unwrap_or_default());
    match Envelope::decode(body) {
        Ok(env) => shared.fail(env, reason, detail),
        Err(e) => {
            warn!(error = %e, "queued message could not be decoded for its dead letter");
            let raw = frame.get(5..).unwrap_or_default();
            shared.dead.publish_undecodable(reason, raw, &detail);
        }
    }
}

/// Appends `env` to `dst` as a message frame (`u32 BE len | 0x01 | envelope`) and
/// returns the frame's size, prefix included; a frame over `max_frame` is not written.
fn put_message_frame(
    dst: &mut BytesMut,
    headers: &mut HeaderCache,
    env: &Envelope,
    max_frame: usize,
) -> Result<u32, TooLarge> {
    if env.payload.len() >= max_frame {
        // Too large whatever its header: do not encode it at all.
        return Err(TooLarge {
            len: env.encoded_len() + 1,
            max: max_frame,
        });
    }
    if headers.matches(env) {
        // The usual case: the same header as the last message, already encoded with
        // its frame head: two copies, then the length patched in.
        let framed = &headers.framed;
        let len = framed.len() - 4 + env.payload.len();
        return match u32::try_from(len) {
            Ok(l) if len <= max_frame => {
                let at = dst.len();
                dst.reserve(4 + len);
                dst.extend_from_slice(framed);
                dst[at..at + 4].copy_from_slice(&l.to_be_bytes());
                dst.extend_from_slice(&env.payload);
                Ok(l + 4)
            }
            _ => Err(TooLarge {
                len,
                max: max_frame,
            }),
        };
    }
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(FRAME_MESSAGE);
    headers.encode_and_remember(env, dst);
    let len = dst.len() - start - 4;
    match u32::try_from(len) {
        Ok(l) if len <= max_frame => {
            dst[start..start + 4].copy_from_slice(&l.to_be_bytes());
            Ok(l + 4)
        }
        _ => {
            dst.truncate(start);
            Err(TooLarge {
                len,
                max: max_frame,
            })
        }
    }
}

/// The outbound queue: messages already encoded as complete frames
/// (`u32 BE len | 0x01 | envelope`), back to back in one buffer, with each frame's size.
///
/// Encoding happens in [`Peer::enqueue`], on the sender's thread, while the envelope's
/// fields are still in its cache; the peer task then writes runs of bytes with no
/// per-message work, and the envelope is freed where it was allocated.
#[derive(Default)]
pub(crate) struct OutQueue {
    bytes: BytesMut,
    /// Size of each queued frame, prefix included.
    lens: VecDeque<u32>,
}

impl OutQueue {
    /// Messages queued.
    pub(crate) fn len(&self) -> usize {
        self.lens.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Encodes `env` as a message frame at the back of the queue.
    fn push(
        &mut self,
        headers: &mut HeaderCache,
        env: &Envelope,
        max_frame: usize,
    ) -> Result<(), TooLarge> {
        if env.payload.len() >= max_frame {
            // Too large whatever its header: do not encode it at all.
            return Err(TooLarge {
                len: env.encoded_len() + 1,
                max: max_frame,
            });
        }
        let size = put_message_frame(&mut self.bytes, headers, env, max_frame)?;
        self.lens.push_back(size);
        Ok(())
    }

    /// Appends one already encoded frame.
    fn push_encoded(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.lens
            .push_back(u32::try_from(frame.len()).unwrap_or(u32::MAX));
    }

    /// Removes the oldest frame.
    fn pop_front(&mut self) -> Option<BytesMut> {
        let len = self.lens.pop_front()? as usize;
        Some(self.bytes.split_to(len))
    }

    /// Removes the oldest frame as a copy, leaving the queue's buffer unshared (a
    /// split-off frame would pin it, and the next frames would go to a new buffer).
    fn pop_front_copy(&mut self) -> Option<BytesMut> {
        let len = self.lens.pop_front()? as usize;
        let frame = BytesMut::from(self.bytes.get(..len).unwrap_or_default());
        bytes::Buf::advance(&mut self.bytes, frame.len());
        Some(frame)
    }

    /// The first frames making at least `max_bytes` (or all): (count, bytes).
    fn prefix(&self, max_bytes: usize) -> (usize, usize) {
        let mut n = 0;
        let mut bytes = 0;
        for &l in &self.lens {
            n += 1;
            bytes += l as usize;
            if bytes >= max_bytes {
                break;
            }
        }
        (n, bytes)
    }

    /// The frames wholly inside the first `written` bytes: (count, bytes).
    fn whole_within(&self, written: usize) -> (usize, usize) {
        let mut n = 0;
        let mut bytes = 0;
        for &l in &self.lens {
            if bytes + l as usize > written {
                break;
            }
            n += 1;
            bytes += l as usize;
        }
        (n, bytes)
    }

    /// Drops the first `n` frames (`bytes` long), once written.
    fn consume(&mut self, n: usize, bytes: usize) {
        self.lens.drain(..n);
        bytes::Buf::advance(&mut self.bytes, bytes);
    }

    /// When empty, moves the write position back to the start of the buffer, so the
    /// next frames reuse the same (cache-warm) memory instead of walking on through it.
    fn rewind(&mut self) {
        if self.bytes.is_empty() {
            // Only reclaims (never allocates); `false` when already at the start.
            let _ = self.bytes.try_reclaim(self.bytes.capacity() + 1);
        }
    }

    fn clear(&mut self) {
        self.lens.clear();
        self.bytes.clear();
        self.rewind();
    }

    /// Moves `behind` after this queue's frames.
    fn append(&mut self, behind: OutQueue) {
        self.bytes.extend_from_slice(&behind.bytes);
        self.lens.extend(behind.lens);
    }

    /// Holds buffers worth giving back when idle.
    fn is_large(&self) -> bool {
        self.bytes.capacity() > 64 * 1024 || self.lens.capacity() > 1024
    }
}

/// The encoded header (`u32 BE len | JSON`) of the last envelope written on a
/// connection, behind a message frame head, with the fields it was made from.
///
/// Senders usually repeat the same target, sender and type hint, so an envelope whose
/// three fields equal the cached ones (and that has no extra header keys) gets the
/// cached bytes instead of escaping its strings again. The bytes are exactly what
/// [`Envelope::encode_into`] writes.
#[derive(Default)]
struct HeaderCache {
    target: SharedStr,
    sender: SharedStr,
    type_hint: SharedStr,
    /// `[0, 0, 0, 0, FRAME_MESSAGE]` (the frame length is patched in when copied)
    /// followed by the encoded header; empty when nothing is cached.
    framed: Vec<u8>,
}

impl HeaderCache {
    /// `true` when `env`'s header is the cached one.
    #[inline]
    fn matches(&self, env: &Envelope) -> bool {
        !self.framed.is_empty()
            && env.type_hint == self.type_hint
            && env.target == self.target
            && env.sender == self.sender
            && env.extra_headers().is_empty()
    }

    /// Appends `env` to `dst` as [`Envelope::encode_into`] does and remembers its
    /// header (unless it has extra keys). The cached case is [`put_message_frame`]'s.
    fn encode_and_remember(&mut self, env: &Envelope, dst: &mut BytesMut) {
        if !env.extra_headers().is_empty() {
            env.encode_into(dst);
            return;
        }
        let start = dst.len();
        env.encode_into(dst);
        let header_end = dst.len() - env.payload.len();
        self.framed.clear();
        self.framed.extend_from_slice(&[0, 0, 0, 0, FRAME_MESSAGE]);
        self.framed.extend_from_slice(&dst[start..header_end]);
        self.target = env.target.clone();
        self.sender = env.sender.clone();
        self.type_hint = env.type_hint.clone();
    }
}

struct Current {
    identity: PeerIdentity,
    dialed_by_us: bool,
    label: String,
    writer: ConnWrite,
    reader: ReaderHandle,
    rx_count: Arc<AtomicU64>,
}

/// A running read loop: its result, and a token that stops it.
struct ReaderHandle {
    done: oneshot::Receiver<Result<(), ConnectionError>>,
    stop: CancellationToken,
}

/// How long a peer task stays idle before it frees queue buffers grown by a burst.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

async fn release(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending::<()>().await,
    }
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Closes our sending side of a connection gracefully (FIN / TLS close_notify); if a
/// reader is still running on it, it drains the peer's remaining frames until EOF (at
/// most 30 s, then it is stopped).
fn retire(mut writer: ConnWrite, reader: Option<ReaderHandle>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
        if let Some(r) = reader
            && tokio::time::timeout(Duration::from_secs(30), r.done)
                .await
                .is_err()
        {
            r.stop.cancel();
        }
    });
}

async fn read_loop(
    mut reader: FrameReader<BoxRead>,
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    label: &str,
    rx_count: &AtomicU64,
) -> Result<(), ConnectionError> {
    let native = shared.hs.is_some();
    // Remembers the last header: a peer usually repeats target, sender and type hint.
    let mut decoder = EnvelopeDecoder::new();
    // Counted locally and published once per read's worth of frames (before the
    // handler of the last one runs), not with two atomic operations per frame.
    let mut frames = 0u64;
    let mut decoded = 0u64;
    let publish = |frames: &mut u64, decoded: &mut u64| {
        rx_count.fetch_add(std::mem::take(frames), Ordering::Relaxed);
        let n = std::mem::take(decoded);
        if n > 0 {
            shared.stats.messages_in.fetch_add(n, Ordering::Relaxed);
        }
    };
    let framing = |source| {
        shared.stats.decode_failures.fetch_add(1, Ordering::Relaxed);
        ConnectionError::Framing {
            peer: label.to_owned(),
            source,
        }
    };
    loop {
        // Handle every complete frame buffered (no await between them), then read.
        let frame = match reader.try_next() {
            Ok(Some(f)) => f,
            Ok(None) => {
                if frames > 0 {
                    publish(&mut frames, &mut decoded);
                }
                match reader.fill().await {
                    Ok(true) => continue,
                    Ok(false) => return Ok(()),
                    Err(ReadError::Io(source)) => {
                        return Err(ConnectionError::Io {
                            peer: label.to_owned(),
                            source,
                        });
                    }
                    Err(ReadError::Framing(source)) => return Err(framing(source)),
                }
            }
            Err(source) => return Err(framing(source)),
        };
        frames += 1;
        match frame.kind {
            FRAME_MESSAGE => match decoder.decode_or_return(frame.body, usize::MAX) {
                Ok(env) => {
                    decoded += 1;
                    if !reader.has_ready() {
                        publish(&mut frames, &mut decoded);
                    }
                    shared.inbound.on_message(&peer.key, env);
                }
                Err((e, body)) => {
                    shared.stats.decode_failures.fetch_add(1, Ordering::Relaxed);
                    let detail = format!("undecodable envelope from {label}: {e}");
                    warn!(peer = %peer.key, error = %e, "dropping undecodable message");
                    shared
                        .dead
                        .publish_undecodable(DeadLetterReason::DecodeFailed, &body, &detail);
                }
            },
            FRAME_HANDSHAKE => {
                debug!(peer = %peer.key, "ignoring a handshake frame after the handshake")
            }
            k if native && NativeFrame::is_native_kind(k) => {
                match NativeFrame::decode(k, &frame.body) {
                    Ok(NativeFrame::Ping(v)) => peer.push_control(NativeFrame::Pong(v)),
                    Ok(NativeFrame::Pong(_)) => {}
                    Ok(NativeFrame::Reject { reason, detail }) => {
                        return Err(ConnectionError::RejectedLater {
                            peer: label.to_owned(),
                            reason: format!("{reason}: {detail}"),
                        });
                    }
                    Ok(other) => {
                        debug!(peer = %peer.key, kind = other.kind(), "ignoring handshake frame after the handshake")
                    }
                    Err(e) => {
                        warn!(peer = %peer.key, error = %e, "ignoring malformed native frame")
                    }
                }
            }
            other => {
                debug!(peer = %peer.key, kind = other, "ignoring frame of unknown kind (casty does the same)")
            }
        }
    }
}
