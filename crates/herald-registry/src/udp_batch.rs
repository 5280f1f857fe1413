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

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
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

/// Replies waiting to go out, each with its destination, sent by `sendmmsg`.
#[derive(Debug)]
pub(crate) struct SendBatch {
    replies: Vec<Vec<u8>>,
    dests: Vec<Option<SockaddrStorage>>,
    to: Vec<SocketAddr>,
    /// Replies filled in (`replies[..len]`).
    len: usize,
    /// Replies already sent or given up (`replies[..done]`).
    done: usize,
}

impl SendBatch {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            replies: (0..capacity).map(|_| Vec::with_capacity(1500)).collect(),
            dests: Vec::with_capacity(capacity),
            to: Vec::with_capacity(capacity),
            len: 0,
            done: 0,
        }
    }

    /// Empties the batch.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.done = 0;
        self.dests.clear();
        self.to.clear();
    }

    /// The buffer for the next reply, or `None` when the batch is full.
    pub(crate) fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        self.replies.get_mut(self.len)
    }

    /// Queues what [`Self::next_buf`] holds as a reply to `to`.
    pub(crate) fn commit(&mut self, to: SocketAddr) {
        if self.len < self.replies.len() {
            self.len += 1;
            self.dests.push(Some(SockaddrStorage::from(to)));
            self.to.push(to);
        }
    }

    /// Replies neither sent nor given up yet.
    pub(crate) fn pending(&self) -> usize {
        self.len - self.done
    }

    /// Destination of the first pending reply.
    pub(crate) fn first_pending(&self) -> Option<SocketAddr> {
        self.to
            .get(self.done)
            .copied()
            .filter(|_| self.pending() > 0)
    }

    /// Gives up the first pending reply (after an error sending it).
    pub(crate) fn skip_one(&mut self) {
        if self.pending() > 0 {
            self.done += 1;
        }
    }

    /// Gives up every pending reply.
    pub(crate) fn skip_all(&mut self) {
        self.done = self.len;
    }

    /// One non-blocking `sendmmsg` of the pending replies: returns how many went out
    /// (at least one; the rest stay pending), or the error of the first one
    /// (`WouldBlock` when the send buffer is full).
    pub(crate) fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        if self.pending() == 0 {
            return Ok(0);
        }
        let slices: Vec<[IoSlice<'_>; 1]> = self.replies[self.done..self.len]
            .iter()
            .map(|r| [IoSlice::new(r)])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
        let results = sendmmsg(
            fd,
            &mut headers,
            slices.iter(),
            &self.dests[self.done..self.len],
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let sent = results.count();
        self.done += sent;
        Ok(sent)
    }
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
        let mut rx = RecvBatch::new(BATCH, max_request);
        let mut tx = SendBatch::new(BATCH);
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
            answer(core, Instant::now(), None, &rx, &mut tx, |o| match o {
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
}
