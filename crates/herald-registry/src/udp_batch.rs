//! Batched UDP I/O for the registry server on Linux: one `recvmmsg` reads up to
//! [`BATCH`] datagrams, [`answer`] runs them all through the table under one lock, and
//! one `sendmmsg` sends all their replies, each to its own source, from the registry's
//! own socket. `nix` provides the safe wrappers around the system calls.
//!
//! Per-datagram behaviour is the same as the portable one-datagram-at-a-time loop:
//! oversized datagrams are counted and dropped with a log line, undecodable or
//! rate-limited ones get no reply, and the source address is handed to the table as
//! received (the table normalises `::ffff:a.b.c.d`) while the reply goes back to it
//! unchanged.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use std::io::{IoSlice, IoSliceMut};

use crate::core::{HandleError, RegistryCore, Transport};

/// Datagrams read (and replies sent) per system call.
pub(crate) const BATCH: usize = 32;

/// Largest UDP payload there can be, plus one.
const MAX_SLOT: usize = 65_536;

/// One received datagram: its source and its real length (which may exceed what was
/// kept of it; see [`RecvBatch::payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) from: SocketAddr,
    pub(crate) len: usize,
    truncated: bool,
}

/// Buffers for one `recvmmsg` of up to `capacity` datagrams of up to `max_request`
/// bytes each; longer ones are seen as such (their real length) but not kept.
#[derive(Debug)]
pub(crate) struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    max_request: usize,
    got: Vec<Received>,
}

impl RecvBatch {
    pub(crate) fn new(capacity: usize, max_request: usize) -> Self {
        let capacity = capacity.max(1);
        // One byte more than accepted, so that a datagram of exactly `max_request + 1`
        // bytes shows as oversized even without MSG_TRUNC.
        let slot = max_request.saturating_add(1).min(MAX_SLOT);
        Self {
            buf: vec![0u8; slot * capacity],
            slot,
            max_request,
            got: Vec::with_capacity(capacity),
        }
    }

    /// Datagrams of the last [`Self::recv`].
    pub(crate) fn received(&self) -> &[Received] {
        &self.got
    }

    /// The payload of `self.received()[i]`, or `None` when it is over `max_request`
    /// bytes (and so was not kept whole).
    pub(crate) fn payload(&self, i: usize) -> Option<&[u8]> {
        let r = self.got.get(i)?;
        if r.truncated || r.len > self.max_request {
            return None;
        }
        let start = i * self.slot;
        self.buf.get(start..start + r.len)
    }

    /// One non-blocking `recvmmsg` on `fd`: returns how many datagrams were read (at
    /// least one), or `WouldBlock` when none was waiting. Earlier results are
    /// forgotten first.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buf
            .chunks_exact_mut(self.slot)
            .map(|c| [IoSliceMut::new(c)])
            .collect();
        // MSG_TRUNC as an input flag makes the kernel report each datagram's real
        // length, so an oversized one is logged with its size.
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        // nix's headers hold raw pointers (not `Send`, so they cannot live in the
        // server's task across an await) and are built per call: a small allocation
        // per batch, not per datagram.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
        let results =
            recvmmsg(fd, &mut headers, slices.iter_mut(), flags, None).map_err(io::Error::from)?;
        for msg in results {
            let Some(from) = msg.address.as_ref().and_then(to_socket_addr) else {
                // Not an IP source: cannot happen on a UDP socket; keep the slot so
                // that indices still match buffer slots.
                self.got.push(Received {
                    from: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0),
                    len: usize::MAX,
                    truncated: true,
                });
                continue;
            };
            self.got.push(Received {
                from,
                len: msg.bytes,
                truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(self.got.len())
    }
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Most datagrams one GSO send carries (the kernel's limit is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;

/// Replies up to this size may be sent as segments of one GSO send: small enough for
/// any path MTU a registry reply meets (the kernel refuses a segment over the MTU).
const GSO_MAX_SEGMENT: usize = 1200;

/// Most bytes one GSO send carries (one IP packet before segmentation).
const GSO_MAX_BYTES: usize = 60_000;

/// Replies to the same destination with the same length, sent as one message: one
/// UDP GSO send (`UDP_SEGMENT`) that the kernel splits into `count` datagrams, or a
/// plain datagram when `count` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// First reply of the run in [`SendBatch::order`].
    start: usize,
    count: usize,
    /// How many runs to the same destination go before this one.
    wave: usize,
}

/// Replies waiting to go out, each with its destination, sent by `sendmmsg`.
///
/// Replies to one destination that have the same length (a pipelining client asking
/// the same question again and again) go out as one UDP GSO message: one pass through
/// the kernel's send path for the whole run instead of one per datagram, and the
/// client still receives separate datagrams. Everything else is one plain datagram
/// per reply, as before. When the kernel or the route refuses GSO, the run is sent as
/// plain datagrams and, if GSO is not supported at all, it is not tried again.
#[derive(Debug)]
pub(crate) struct SendBatch {
    replies: Vec<Vec<u8>>,
    dests: Vec<SockaddrStorage>,
    to: Vec<SocketAddr>,
    /// Replies filled in (`replies[..len]`).
    len: usize,
    /// Send order: reply indices grouped by destination, each in arrival order.
    order: Vec<usize>,
    /// Messages to send, in order; `runs[next_run..]` are pending.
    runs: Vec<Run>,
    next_run: usize,
    /// Replies in the pending runs.
    pending: usize,
    /// Whether `order` and `runs` describe `replies[..len]`.
    planned: bool,
    gso: bool,
}

impl SendBatch {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            replies: (0..capacity).map(|_| Vec::with_capacity(1500)).collect(),
            dests: Vec::with_capacity(capacity),
            to: Vec::with_capacity(capacity),
            len: 0,
            order: Vec::with_capacity(capacity),
            runs: Vec::with_capacity(capacity),
            next_run: 0,
            pending: 0,
            planned: true,
            gso: true,
        }
    }

    /// The same batch that never tries GSO (for tests of the plain path).
    #[cfg(test)]
    fn without_gso(capacity: usize) -> Self {
        Self {
            gso: false,
            ..Self::new(capacity)
        }
    }

    /// Whether replies to one destination may still go out as one GSO send.
    #[cfg(test)]
    fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Empties the batch.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.dests.clear();
        self.to.clear();
        self.order.clear();
        self.runs.clear();
        self.next_run = 0;
        self.pending = 0;
        self.planned = true;
    }

    /// The buffer for the next reply, or `None` when the batch is full.
    pub(crate) fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        self.replies.get_mut(self.len)
    }

    /// Queues what [`Self::next_buf`] holds as a reply to `to`.
    pub(crate) fn commit(&mut self, to: SocketAddr) {
        if self.len < self.replies.len() {
            self.len += 1;
            self.pending += 1;
            self.planned = false;
            self.dests.push(SockaddrStorage::from(to));
            self.to.push(to);
        }
    }

    /// Replies neither sent nor given up yet.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Destination of the first pending message.
    pub(crate) fn first_pending(&mut self) -> Option<SocketAddr> {
        self.plan();
        let run = self.runs.get(self.next_run)?;
        let i = *self.order.get(run.start)?;
        self.to.get(i).copied()
    }

    /// Gives up the first pending message (after an error sending it): one reply, or
    /// every reply of a run to the same destination.
    pub(crate) fn skip_one(&mut self) {
        self.plan();
        if let Some(run) = self.runs.get(self.next_run) {
            self.pending -= run.count;
            self.next_run += 1;
        }
    }

    /// Gives up every pending reply.
    pub(crate) fn skip_all(&mut self) {
        self.plan();
        self.next_run = self.runs.len();
        self.pending = 0;
    }

    /// Groups the queued replies into messages (called once per filled batch, before
    /// the first send). Each destination's replies keep their order: its consecutive
    /// replies of one length form a run, and its runs go out one after the other. The
    /// `k`-th runs of all destinations form wave `k`; within a wave plain datagrams
    /// come first, then the GSO runs by segment size, so that each `sendmmsg` carries
    /// messages of one kind and the usual batch (one run per client) takes one or two
    /// system calls.
    fn plan(&mut self) {
        if self.planned {
            return;
        }
        self.planned = true;
        self.order.clear();
        self.order.extend(0..self.len);
        self.runs.clear();
        self.next_run = 0;
        if !self.gso {
            self.runs.extend((0..self.len).map(|start| Run {
                start,
                count: 1,
                wave: 0,
            }));
            return;
        }
        let (replies, to) = (&self.replies, &self.to);
        // Stable: each destination's replies stay in arrival order.
        self.order.sort_by_key(|&i| to[i]);
        let mut start = 0;
        let mut wave = 0;
        while start < self.order.len() {
            let first = self.order[start];
            if start > 0 && to[self.order[start - 1]] != to[first] {
                wave = 0;
            }
            let seg = replies[first].len();
            let mut count = 1;
            if seg > 0 && seg <= GSO_MAX_SEGMENT {
                while start + count < self.order.len()
                    && count < GSO_MAX_SEGMENTS
                    && (count + 1) * seg <= GSO_MAX_BYTES
                {
                    let next = self.order[start + count];
                    if replies[next].len() != seg || to[next] != to[first] {
                        break;
                    }
                    count += 1;
                }
            }
            self.runs.push(Run { start, count, wave });
            wave += 1;
            start += count;
        }
        let order = &self.order;
        // Stable, and a destination's runs are in different waves: its order holds.
        self.runs.sort_by_key(|r| {
            let seg = if r.count > 1 {
                replies[order[r.start]].len()
            } else {
                0
            };
            (r.wave, seg)
        });
    }

    /// The segment size of a pending run sent with GSO, `None` for a plain datagram.
    fn segment(&self, run: &Run) -> Option<u16> {
        if run.count < 2 {
            return None;
        }
        let first = *self.order.get(run.start)?;
        u16::try_from(self.replies.get(first)?.len()).ok()
    }

    /// Sends the pending run `next_run` as plain datagrams from now on.
    fn split_first_run(&mut self) {
        if let Some(run) = self.runs.get(self.next_run).copied() {
            let singles = (run.start..run.start + run.count).map(|start| Run {
                start,
                count: 1,
                wave: run.wave,
            });
            self.runs.splice(self.next_run..=self.next_run, singles);
        }
    }

    /// One non-blocking `sendmmsg` of pending messages of one kind (plain datagrams,
    /// or GSO runs of one segment size): returns how many replies went out (the rest
    /// stay pending), or the error of the first message (`WouldBlock` when the send
    /// buffer is full). A GSO run the kernel refuses is turned into plain datagrams
    /// and `Ok(0)` is returned, so the caller simply sends again.
    pub(crate) fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        self.plan();
        let Some(first) = self.runs.get(self.next_run) else {
            return Ok(0);
        };
        let seg = self.segment(first);
        let batch: Vec<Run> = self.runs[self.next_run..]
            .iter()
            .take_while(|r| self.segment(r) == seg)
            .copied()
            .collect();
        let slices: Vec<Vec<IoSlice<'_>>> = batch
            .iter()
            .map(|r| {
                self.order[r.start..r.start + r.count]
                    .iter()
                    .map(|&i| IoSlice::new(&self.replies[i]))
                    .collect()
            })
            .collect();
        let dests: Vec<Option<SockaddrStorage>> = batch
            .iter()
            .map(|r| Some(self.dests[self.order[r.start]]))
            .collect();
        let result = match seg {
            None => {
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
                sendmmsg(
                    fd,
                    &mut headers,
                    slices.iter(),
                    &dests,
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )
                .map(|r| r.count())
            }
            Some(seg) => {
                let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                    slices.len(),
                    Some(nix::cmsg_space!(u16)),
                );
                sendmmsg(
                    fd,
                    &mut headers,
                    slices.iter(),
                    &dests,
                    cmsg,
                    MsgFlags::MSG_DONTWAIT,
                )
                .map(|r| r.count())
            }
        };
        drop(slices);
        match result {
            Ok(sent) => {
                let replies: usize = batch.iter().take(sent).map(|r| r.count).sum();
                self.next_run += sent;
                self.pending -= replies;
                Ok(replies)
            }
            Err(errno) if seg.is_some() && gso_refused(errno) => {
                if gso_unsupported(errno) {
                    tracing::debug!(error = %errno, "UDP GSO not available; replies go out one datagram each");
                    self.gso = false;
                }
                self.split_first_run();
                Ok(0)
            }
            Err(errno) => Err(io::Error::from(errno)),
        }
    }
}

/// Errors with which the kernel refuses a GSO send itself (not its destination).
fn gso_refused(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EINVAL | Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP | Errno::EMSGSIZE
    )
}

/// Errors that mean GSO does not work on this socket at all: no kernel support, or
/// no checksum offload on the way out.
fn gso_unsupported(errno: Errno) -> bool {
    matches!(errno, Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)
}

/// What happened to one datagram of a batch, for the caller's log.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A reply was queued.
    Answered,
    /// Over the size limit; counted as dropped.
    Oversized { from: SocketAddr, len: usize },
    /// The table refused it (bad request, denied, rate-limited); no reply.
    Refused {
        from: SocketAddr,
        error: HandleError,
    },
}

/// Runs every datagram of `rx` through `core` and queues the replies in `tx` (cleared
/// first). `on_outcome` is called for each datagram that got no reply.
pub(crate) fn answer(
    core: &mut RegistryCore,
    now: Instant,
    local: Option<IpAddr>,
    rx: &RecvBatch,
    tx: &mut SendBatch,
    mut on_outcome: impl FnMut(Outcome),
) {
    tx.clear();
    for (i, d) in rx.received().iter().enumerate() {
        let Some(request) = rx.payload(i) else {
            core.record_dropped();
            on_outcome(Outcome::Oversized {
                from: d.from,
                len: d.len,
            });
            continue;
        };
        let Some(reply) = tx.next_buf() else {
            // Cannot happen: both batches have the same capacity.
            continue;
        };
        match core.handle_via(now, d.from.ip(), local, Transport::Udp, request, reply) {
            Ok(_) => {
                tx.commit(d.from);
                on_outcome(Outcome::Answered);
            }
            Err(error) => on_outcome(Outcome::Refused {
                from: d.from,
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreConfig;
    use crate::proto::{Command, Port, encode_request};
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    fn bound(addr: &str) -> UdpSocket {
        let s = UdpSocket::bind(addr).expect("bind");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s
    }

    fn server_socket(addr: &str) -> UdpSocket {
        let s = UdpSocket::bind(addr).expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        s
    }

    /// Reads until `n` datagrams have been seen (over as many calls as it takes),
    /// answering each batch through `core`; returns what was not answered.
    fn serve_n(
        core: &mut RegistryCore,
        sock: &UdpSocket,
        n: usize,
        max_request: usize,
    ) -> Vec<String> {
        serve_n_through(core, sock, n, max_request, &mut SendBatch::new(BATCH))
    }

    /// [`serve_n`] sending the replies through `tx` (whose last batch the caller can
    /// then look at).
    fn serve_n_through(
        core: &mut RegistryCore,
        sock: &UdpSocket,
        n: usize,
        max_request: usize,
        tx: &mut SendBatch,
    ) -> Vec<String> {
        let mut rx = RecvBatch::new(BATCH, max_request);
        let mut seen = 0;
        let mut refused = Vec::new();
        let deadline = Instant::now() + WAIT;
        while seen < n {
            assert!(
                Instant::now() < deadline,
                "only {seen} of {n} datagrams arrived"
            );
            match rx.recv(sock.as_raw_fd()) {
                Ok(k) => seen += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
            answer(core, Instant::now(), None, &rx, tx, |o| match o {
                Outcome::Answered => {}
                Outcome::Oversized { from, len } => refused.push(format!("oversized {from} {len}")),
                Outcome::Refused { from, error } => refused.push(format!("refused {from} {error}")),
            });
            while tx.pending() > 0 {
                match tx.send(sock.as_raw_fd()) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("sendmmsg: {e}"),
                }
            }
        }
        refused
    }

    fn query(name: &str) -> Vec<u8> {
        encode_request(&Command::Query { name: name.into() })
    }

    fn core_with(names: &[(&str, &str, u16)]) -> RegistryCore {
        let mut core = RegistryCore::new(CoreConfig::default());
        for (name, host, port) in names {
            let ip: IpAddr = host.parse().expect("ip");
            core.register(
                Instant::now(),
                ip,
                &[(*name).to_string()],
                &Port::Num((*port).into()),
            )
            .expect("register");
        }
        core
    }

    fn expected_reply(core: &mut RegistryCore, request: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        core.handle(
            Instant::now(),
            IpAddr::from([127, 0, 0, 1]),
            Transport::Udp,
            request,
            &mut reply,
        )
        .expect("reference reply");
        reply
    }

    fn recv_one(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).expect("reply");
        (buf[..n].to_vec(), from)
    }

    #[test]
    fn several_sources_in_one_batch_each_get_their_own_reply() {
        let mut core = core_with(&[("ALPHA", "10.0.0.1", 1000), ("BETA", "10.0.0.2", 2000)]);
        let server = server_socket("127.0.0.1:0");
        let addr = server.local_addr().expect("addr");
        let clients: Vec<UdpSocket> = (0..3).map(|_| bound("127.0.0.1:0")).collect();
        let names = ["ALPHA", "BETA", "GAMMA"];
        // Every request is queued before the server reads any.
        for (c, name) in clients.iter().zip(names) {
            c.send_to(&query(name), addr).expect("send");
            c.send_to(&query(name), addr).expect("send");
        }
        let refused = serve_n(&mut core, &server, 6, 1500);
        assert!(refused.is_empty(), "{refused:?}");
        for (c, name) in clients.iter().zip(names) {
            let want = expected_reply(&mut core, &query(name));
            for _ in 0..2 {
                let (got, from) = recv_one(c);
                assert_eq!(got, want, "reply to the {name} client");
                assert_eq!(from, addr, "replies leave from the registry's port");
            }
        }
        assert_eq!(core.stats().replies, 6 + 3);
    }

    #[test]
    fn oversized_datagram_among_good_ones_is_dropped_and_counted() {
        let mut core = core_with(&[("ALPHA", "10.0.0.1", 1000)]);
        let server = server_socket("127.0.0.1:0");
        let addr = server.local_addr().expect("addr");
        let good = bound("127.0.0.1:0");
        let big = bound("127.0.0.1:0");
        let max = 100;
        // A well-formed QUERY padded past the limit: only its size is wrong.
        let mut oversized = query("ALPHA");
        oversized.resize(max + 1, b' ');
        good.send_to(&query("ALPHA"), addr).expect("send");
        big.send_to(&oversized, addr).expect("send");
        big.send_to(&vec![0u8; 3000], addr).expect("send");
        good.send_to(&query("ALPHA"), addr).expect("send");
        let refused = serve_n(&mut core, &server, 4, max);
        let big_addr = big.local_addr().expect("addr");
        assert_eq!(
            refused,
            vec![
                format!("oversized {big_addr} {}", max + 1),
                format!("oversized {big_addr} 3000"),
            ]
        );
        let want = expected_reply(&mut core, &query("ALPHA"));
        assert_eq!(recv_one(&good).0, want);
        assert_eq!(recv_one(&good).0, want);
        big.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        assert!(
            big.recv_from(&mut buf).is_err(),
            "oversized datagrams get no reply"
        );
        let stats = core.stats();
        assert_eq!(stats.dropped, 2);
        assert_eq!(stats.requests, 4 + 1);
    }

    #[test]
    fn garbage_in_a_batch_does_not_affect_the_rest() {
        let mut core = core_with(&[("ALPHA", "10.0.0.1", 1000)]);
        let server = server_socket("127.0.0.1:0");
        let addr = server.local_addr().expect("addr");
        let a = bound("127.0.0.1:0");
        let b = bound("127.0.0.1:0");
        a.send_to(&query("ALPHA"), addr).expect("send");
        b.send_to(b"\xff\x00garbage", addr).expect("send");
        b.send_to(&[], addr).expect("send");
        a.send_to(&query("ALPHA"), addr).expect("send");
        b.send_to(&query("ALPHA"), addr).expect("send");
        let refused = serve_n(&mut core, &server, 5, 1500);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused.iter().all(|r| r.starts_with("refused ")),
            "{refused:?}"
        );
        let want = expected_reply(&mut core, &query("ALPHA"));
        assert_eq!(recv_one(&a).0, want);
        assert_eq!(recv_one(&a).0, want);
        assert_eq!(
            recv_one(&b).0,
            want,
            "b's good request after its garbage is answered"
        );
    }

    #[test]
    fn dual_stack_socket_sees_v4_mapped_sources_and_the_table_normalises_them() {
        use socket2::{Domain, Protocol, Socket, Type};
        let Ok(sock) = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) else {
            return; // no IPv6 on this host
        };
        sock.set_only_v6(false).expect("dual stack");
        let any: SocketAddr = "[::]:0".parse().expect("addr");
        if sock.bind(&any.into()).is_err() {
            return;
        }
        sock.set_nonblocking(true).expect("nonblocking");
        let server: UdpSocket = sock.into();
        let port = server.local_addr().expect("addr").port();
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut core = RegistryCore::new(CoreConfig::default());
        let c = bound("127.0.0.1:0");
        let register = encode_request(&Command::Register {
            aliases: vec!["ALPHA".into()],
            port: Port::Num(4242),
        });
        c.send_to(&register, to).expect("send");
        c.send_to(&query("ALPHA"), to).expect("send");

        let mut rx = RecvBatch::new(BATCH, 1500);
        let deadline = Instant::now() + WAIT;
        let mut sources = Vec::new();
        let mut tx = SendBatch::new(BATCH);
        while sources.len() < 2 {
            assert!(Instant::now() < deadline, "datagrams did not arrive");
            match rx.recv(server.as_raw_fd()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
            sources.extend(rx.received().iter().map(|r| r.from));
            answer(&mut core, Instant::now(), None, &rx, &mut tx, |_| {});
            while tx.pending() > 0 {
                tx.send(server.as_raw_fd()).expect("sendmmsg");
            }
        }
        let client = c.local_addr().expect("addr");
        let mapped = SocketAddr::new(
            IpAddr::V6(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            client.port(),
        );
        assert_eq!(sources, vec![mapped, mapped]);
        // Replies reach the IPv4 client, from the registry's port.
        let (ok, from) = recv_one(&c);
        assert_eq!(ok, crate::proto::REPLY_OK);
        assert_eq!(from.port(), port);
        let (found, _) = recv_one(&c);
        let want = {
            let mut reference = RegistryCore::new(CoreConfig::default());
            reference
                .register(
                    Instant::now(),
                    IpAddr::from([127, 0, 0, 1]),
                    &["ALPHA".to_string()],
                    &Port::Num(4242),
                )
                .expect("register");
            expected_reply(&mut reference, &query("ALPHA"))
        };
        assert_eq!(
            found, want,
            "the table recorded 127.0.0.1, not ::ffff:127.0.0.1"
        );
    }

    #[test]
    fn empty_socket_would_block_and_partial_sends_stay_pending() {
        let server = server_socket("127.0.0.1:0");
        let mut rx = RecvBatch::new(4, 1500);
        let e = rx.recv(server.as_raw_fd()).expect_err("nothing queued");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(rx.received().is_empty());

        let c = bound("127.0.0.1:0");
        let to = c.local_addr().expect("addr");
        let mut tx = SendBatch::new(2);
        for body in [&b"one"[..], b"two", b"three"] {
            if let Some(buf) = tx.next_buf() {
                buf.clear();
                buf.extend_from_slice(body);
                tx.commit(to);
            }
        }
        assert_eq!(tx.pending(), 2, "a full batch takes no more");
        assert_eq!(tx.first_pending(), Some(to));
        assert_eq!(tx.send(server.as_raw_fd()).expect("send"), 2);
        assert_eq!(tx.pending(), 0);
        assert_eq!(recv_one(&c).0, b"one");
        assert_eq!(recv_one(&c).0, b"two");
        tx.clear();
        assert_eq!(tx.send(server.as_raw_fd()).expect("nothing to send"), 0);
    }

    #[test]
    fn a_pipelining_client_gets_separate_datagrams_from_one_gso_send() {
        let mut core = core_with(&[("ALPHA", "10.0.0.1", 1000), ("BETA", "10.0.0.22", 2000)]);
        let server = server_socket("127.0.0.1:0");
        let addr = server.local_addr().expect("addr");
        let piped = bound("127.0.0.1:0");
        let single = bound("127.0.0.1:0");
        // Five ALPHA queries and a BETA one (a longer reply) from one client, one
        // from another client; all queued before the server reads.
        for _ in 0..5 {
            piped.send_to(&query("ALPHA"), addr).expect("send");
        }
        piped.send_to(&query("BETA"), addr).expect("send");
        single.send_to(&query("ALPHA"), addr).expect("send");
        let alpha = expected_reply(&mut core, &query("ALPHA"));
        let beta = expected_reply(&mut core, &query("BETA"));
        assert_ne!(
            alpha.len(),
            beta.len(),
            "the test needs replies of two sizes"
        );

        let mut tx = SendBatch::new(BATCH);
        let refused = serve_n_through(&mut core, &server, 7, 1500, &mut tx);
        assert!(refused.is_empty(), "{refused:?}");
        assert!(tx.gso_enabled(), "loopback takes UDP GSO sends");
        // All seven arrived before the server read, so they were one batch; the five
        // ALPHA replies went out as one GSO message the kernel did not refuse.
        let mut runs: Vec<usize> = tx.runs.iter().map(|r| r.count).collect();
        runs.sort_unstable();
        assert_eq!(runs, vec![1, 1, 5], "messages of the last batch");

        let mut got = Vec::new();
        for _ in 0..6 {
            let (reply, from) = recv_one(&piped);
            assert_eq!(from, addr, "replies leave from the registry's port");
            got.push(reply);
        }
        let mut want = vec![alpha.clone(); 5];
        want.push(beta);
        assert_eq!(
            got, want,
            "one datagram per reply, in request order, none merged or cut"
        );
        assert_eq!(recv_one(&single).0, alpha);
        piped
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        assert!(piped.recv_from(&mut buf).is_err(), "no extra datagram");
    }

    #[test]
    fn equal_length_neighbours_to_one_destination_form_one_run_in_order() {
        let a: SocketAddr = "127.0.0.1:1001".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:1002".parse().expect("addr");
        let mut tx = SendBatch::new(8);
        for (body, to) in [
            (&b"a1"[..], a),
            (b"b1", b),
            (b"a2", a),
            (b"long", a),
            (b"a3", a),
            (b"b2", b),
            (b"c", a),
        ] {
            let buf = tx.next_buf().expect("room");
            buf.clear();
            buf.extend_from_slice(body);
            tx.commit(to);
        }
        tx.plan();
        let messages: Vec<Vec<&[u8]>> = tx
            .runs
            .iter()
            .map(|r| {
                tx.order[r.start..r.start + r.count]
                    .iter()
                    .map(|&i| tx.replies[i].as_slice())
                    .collect()
            })
            .collect();
        assert_eq!(
            messages,
            vec![
                vec![&b"a1"[..], b"a2"],
                vec![b"b1", b"b2"],
                vec![b"long"],
                vec![b"a3"],
                vec![b"c"],
            ],
            "each destination's replies in arrival order, equal-length neighbours as one run"
        );
        assert_eq!(tx.pending(), 7);
        assert_eq!(tx.first_pending(), Some(a));
        // A refused GSO run goes out as plain datagrams, still in order.
        tx.split_first_run();
        assert_eq!(tx.runs.len(), 2 + 4);
        tx.skip_one();
        assert_eq!(tx.pending(), 6);
        assert_eq!(tx.first_pending(), Some(a));
        tx.skip_one();
        assert_eq!(tx.first_pending(), Some(b));
        tx.skip_one();
        assert_eq!(tx.pending(), 3);
        assert_eq!(tx.first_pending(), Some(a));
        tx.skip_all();
        assert_eq!(tx.pending(), 0);
        assert_eq!(tx.first_pending(), None);
    }

    #[test]
    fn gso_errors_are_told_apart_from_destination_errors() {
        assert!(gso_refused(Errno::EIO) && gso_unsupported(Errno::EIO));
        assert!(gso_refused(Errno::EINVAL) && !gso_unsupported(Errno::EINVAL));
        assert!(!gso_refused(Errno::ECONNREFUSED));
        assert!(
            !gso_refused(Errno::EAGAIN),
            "a full buffer is waited for, not split"
        );
    }

    #[test]
    fn without_gso_every_reply_is_its_own_datagram() {
        let mut core = core_with(&[("ALPHA", "10.0.0.1", 1000)]);
        let server = server_socket("127.0.0.1:0");
        let addr = server.local_addr().expect("addr");
        let c = bound("127.0.0.1:0");
        for _ in 0..4 {
            c.send_to(&query("ALPHA"), addr).expect("send");
        }
        let mut tx = SendBatch::without_gso(BATCH);
        let refused = serve_n_through(&mut core, &server, 4, 1500, &mut tx);
        assert!(refused.is_empty(), "{refused:?}");
        let want = expected_reply(&mut core, &query("ALPHA"));
        for _ in 0..4 {
            assert_eq!(recv_one(&c).0, want);
        }
    }
}
