//! One task per peer: a bounded outbound queue, dialing with backoff and a circuit
//! breaker, batched writes, the read loop, keepalive and the simultaneous-connect rule.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use herald_wire::{Envelope, FRAME_HANDSHAKE, FRAME_MESSAGE};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use super::codec::{FrameReader, ReadError};
use super::config::{OverflowPolicy, PeerAddr};
use super::conn::{self, BoxRead, BoxWrite, Established, PeerIdentity, PeerKey};
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
    msgs: VecDeque<Envelope>,
    control: Vec<NativeFrame>,
    adopt: Vec<Established>,
    enqueued: u64,
    connected: Option<PeerIdentity>,
    breaker_until: Option<Instant>,
    failures: u32,
    closed: bool,
    forgotten: bool,
}

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
pub(crate) enum Enqueue {
    /// Refused (and reported as a dead letter).
    Refused(TransportError),
    /// The peer entry was retired; look the peer up again and retry.
    Retry(Box<Envelope>),
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
    pub(crate) fn enqueue(&self, shared: &Shared, env: Envelope) -> Result<(), Enqueue> {
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
        env: Envelope,
    ) -> Result<(), TransportError> {
        let refuse = |st: MutexGuard<'_, PeerState>, env: Envelope, reason, detail: String| {
            drop(st);
            let target = env.target.clone();
            shared.fail(env, reason, detail);
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
        if st.msgs.len() >= shared.cfg.queue_capacity {
            let detail = format!(
                "outbound queue of {} is full ({} messages)",
                self.key, shared.cfg.queue_capacity
            );
            match shared.cfg.overflow {
                OverflowPolicy::DropNewest => {
                    drop(st);
                    shared.fail(env, DeadLetterReason::QueueOverflow, detail);
                    return Ok(());
                }
                OverflowPolicy::Fail => {
                    return refuse(st, env, DeadLetterReason::QueueOverflow, detail);
                }
                OverflowPolicy::DropOldest => {
                    let oldest = st.msgs.pop_front();
                    st.msgs.push_back(env);
                    st.enqueued += 1;
                    drop(st);
                    if let Some(old) = oldest {
                        self.settle(1);
                        shared.fail(old, DeadLetterReason::QueueOverflow, detail);
                    }
                    self.msg_ready.notify_one();
                    return Ok(());
                }
            }
        }
        st.msgs.push_back(env);
        st.enqueued += 1;
        drop(st);
        self.msg_ready.notify_one();
        Ok(())
    }

    /// Waits until every message queued before this call was written or dropped.
    pub(crate) async fn flushed(&self, timeout: Duration) -> bool {
        let target = lock(&self.state).enqueued;
        let mut rx = self.settled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= target))
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
        let msgs = std::mem::take(&mut lock(&self.state).msgs);
        let n = msgs.len() as u64;
        for m in msgs {
            shared.fail(m, reason, detail.to_owned());
        }
        self.settle(n);
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
        shared.register_connection(&self.key, &identity);
        shared
            .stats
            .connections_established
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.state).connected = Some(identity.clone());
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
        let mut batch: VecDeque<Envelope> = VecDeque::new();
        let mut chunk: Vec<Envelope> = Vec::new();
        let mut buf = BytesMut::new();

        let end = loop {
            let (ctrl, adopt) = {
                let mut st = lock(&self.state);
                std::mem::swap(&mut st.msgs, &mut batch);
                (
                    std::mem::take(&mut st.control),
                    std::mem::take(&mut st.adopt),
                )
            };
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
                    shared.register_connection(&self.key, &cur.identity);
                    lock(&self.state).connected = Some(cur.identity.clone());
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
            if !ctrl.is_empty() || !batch.is_empty() {
                if let Err(e) = self
                    .write_batch(shared, &mut cur, ctrl, &mut batch, &mut chunk, &mut buf)
                    .await
                {
                    warn!(peer = %self.key, error = %e, "connection lost while writing");
                    break ConnEnd::Lost;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => {
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
        // Anything taken out of the queue but not written goes back in front, in order.
        if !batch.is_empty() {
            let mut st = lock(&self.state);
            while let Some(m) = batch.pop_back() {
                st.msgs.push_front(m);
            }
        }
        lock(&self.state).connected = None;
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

    async fn write_batch(
        &self,
        shared: &Shared,
        cur: &mut Current,
        ctrl: Vec<NativeFrame>,
        batch: &mut VecDeque<Envelope>,
        chunk: &mut Vec<Envelope>,
        buf: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        for f in &ctrl {
            f.encode_frame(buf);
        }
        let max_frame = shared.cfg.max_frame_size;
        let max_batch = shared.cfg.max_batch_bytes;
        let mut dropped = 0u64;
        loop {
            let env = batch.pop_front();
            if let Some(env) = env {
                let len = env.encoded_len() + 1;
                if len > max_frame {
                    dropped += 1;
                    shared.fail(
                        env,
                        DeadLetterReason::FrameTooLarge,
                        format!("frame of {len} bytes exceeds the maximum of {max_frame}"),
                    );
                    continue;
                }
                buf.reserve(4 + len);
                buf.put_u32(len as u32);
                buf.put_u8(FRAME_MESSAGE);
                env.encode_into(buf);
                chunk.push(env);
                if buf.len() < max_batch {
                    continue;
                }
            }
            if buf.is_empty() {
                break;
            }
            let write_timeout = shared.cfg.write_timeout;
            let r = tokio::select! {
                r = async {
                    cur.writer.write_all(buf).await?;
                    cur.writer.flush().await
                } => r,
                _ = tokio::time::sleep(write_timeout) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("write stalled for {write_timeout:?} (the peer is not reading)"),
                )),
                _ = shared.cancel.cancelled() => Err(std::io::Error::other(
                    "transport shut down while writing",
                )),
            };
            let n = chunk.len() as u64;
            let bytes = buf.len() as u64;
            buf.clear();
            if let Err(source) = r {
                let err = ConnectionError::Io {
                    peer: cur.label.clone(),
                    source,
                };
                for m in chunk.drain(..) {
                    shared.fail(
                        m,
                        DeadLetterReason::PeerUnreachable,
                        format!("connection to {} failed while writing: {err}", self.key),
                    );
                }
                self.settle(n + dropped);
                return Err(err);
            }
            chunk.clear();
            shared.stats.messages_out.fetch_add(n, Ordering::Relaxed);
            shared.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            self.settle(n + dropped);
            dropped = 0;
            if batch.is_empty() {
                break;
            }
        }
        self.settle(dropped);
        if buf.capacity() > 2 * max_batch {
            *buf = BytesMut::new();
        }
        if batch.capacity() > 4 * 1024 && batch.is_empty() {
            *batch = VecDeque::new();
        }
        Ok(())
    }
}

struct Current {
    identity: PeerIdentity,
    dialed_by_us: bool,
    label: String,
    writer: BoxWrite,
    reader: ReaderHandle,
    rx_count: Arc<AtomicU64>,
}

/// A running read loop: its result, and a token that stops it.
struct ReaderHandle {
    done: oneshot::Receiver<Result<(), ConnectionError>>,
    stop: CancellationToken,
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
fn retire(mut writer: BoxWrite, reader: Option<ReaderHandle>) {
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
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ReadError::Io(source)) => {
                return Err(ConnectionError::Io {
                    peer: label.to_owned(),
                    source,
                });
            }
            Err(ReadError::Framing(source)) => {
                shared.stats.decode_failures.fetch_add(1, Ordering::Relaxed);
                return Err(ConnectionError::Framing {
                    peer: label.to_owned(),
                    source,
                });
            }
        };
        rx_count.fetch_add(1, Ordering::Relaxed);
        match frame.kind {
            FRAME_MESSAGE => match Envelope::decode(frame.body) {
                Ok(env) => {
                    shared.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    shared.inbound.on_message(&peer.key, env);
                }
                Err(e) => {
                    shared.stats.decode_failures.fetch_add(1, Ordering::Relaxed);
                    let detail = format!("undecodable envelope from {label}: {e}");
                    warn!(peer = %peer.key, error = %e, "dropping undecodable message");
                    shared
                        .dead
                        .record_without_envelope(DeadLetterReason::DecodeFailed, &detail);
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
