//! The tokio registry server: UDP and TCP on the same port, one shared table, a
//! pruning timer, events (see [`crate::events`]).
//!
//! ```
//! use herald_registry::{RegistryConfig, RegistryServer, RegistryEvent};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RegistryServer::bind(RegistryConfig::localhost_ephemeral()).await?;
//! let mut events = server.events();
//! let client = herald_registry::UdpRegistryClient::unicast(server.local_addr());
//! client.register(&["echo"], 18812u16).await?;
//! assert!(matches!(events.recv().await?, RegistryEvent::Added { .. }));
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::brine;
use crate::core::{CoreConfig, HandleError, RegistryCore, Stats, TableRow, Transport};
use crate::events::{EventPublisher, RegistryEvents};
use crate::proto;

/// Server settings. `Default` is rpyc's: `0.0.0.0:18811`, UDP and TCP, 240 s pruning,
/// listing off.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Address to bind (`0.0.0.0`, `::` for dual-stack, or one interface).
    pub host: IpAddr,
    /// Port for both UDP and TCP (0 = a port the OS picks, free for both).
    pub port: u16,
    /// Serve UDP.
    pub udp: bool,
    /// Serve TCP.
    pub tcp: bool,
    /// Table behaviour and guard rails.
    pub core: CoreConfig,
    /// How often the timer prunes (`None` = a quarter of the pruning timeout, at most
    /// 30 s).
    pub prune_interval: Option<Duration>,
    /// Time a TCP client has to send one complete request.
    pub tcp_deadline: Duration,
    /// Largest TCP request accepted. It also sets how much decoding one connection may
    /// cost while its request is incomplete: [`DECODE_WORK_FACTOR`] times this many bytes.
    pub tcp_max_request: usize,
    /// Largest UDP datagram accepted (rpyc reads 1500 bytes, so larger ones never
    /// worked with it).
    pub udp_max_request: usize,
    /// Concurrent TCP connections; more are closed at once with a log line.
    pub max_tcp_connections: usize,
    /// Concurrent TCP connections from one source address (IPv4, or IPv6 with
    /// v4-mapped addresses taken as IPv4): one host cannot take every slot.
    pub max_tcp_connections_per_source: usize,
    /// Batches of events the event channel holds (at least one; tokio rounds it up to a
    /// power of two). The events of one update (one request, one UDP batch of up to 32
    /// datagrams, one prune tick) travel as batches of up to
    /// [`EVENTS_PER_BATCH`](crate::events::EVENTS_PER_BATCH) (128), so a receiver that
    /// reads everything between updates lags only on an update of more than this many
    /// times 128 events (the default, 1024, covers a prune tick that empties a full
    /// default table); one that falls more than this many batches behind gets
    /// [`EventRecvError::Lagged`](crate::EventRecvError::Lagged) with the number of
    /// events it missed. The slots (a few words each) are allocated at start; the
    /// events are freed once every receiver has read them or the channel has moved
    /// past them, so a receiver that stops reading holds back at most this many times
    /// 128 events (about 131 k by default).
    pub event_capacity: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: crate::REGISTRY_PORT,
            udp: true,
            tcp: true,
            core: CoreConfig::default(),
            prune_interval: None,
            tcp_deadline: Duration::from_secs(3),
            tcp_max_request: 64 * 1024,
            udp_max_request: crate::core::MAX_CLIENT_READ,
            max_tcp_connections: 1024,
            max_tcp_connections_per_source: 64,
            event_capacity: 1024,
        }
    }
}

impl RegistryConfig {
    /// `127.0.0.1`, a free port picked by the OS, otherwise defaults (for tests and
    /// embedding).
    pub fn localhost_ephemeral() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            ..Self::default()
        }
    }

    fn prune_every(&self) -> Duration {
        self.prune_interval
            .unwrap_or_else(|| (self.core.prune_timeout / 4).min(Duration::from_secs(30)))
            .max(Duration::from_millis(10))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding a socket failed.
    #[error("cannot bind registry {transport} socket to {addr}: {source}")]
    Bind {
        /// `"udp"` or `"tcp"`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Neither UDP nor TCP was enabled.
    #[error("registry configured with neither UDP nor TCP")]
    NothingToServe,
    /// Port 0 was asked for and no port free for both UDP and TCP was found.
    #[error("no port free for both UDP and TCP on {host} after {tries} tries")]
    NoCommonPort {
        /// The host.
        host: IpAddr,
        /// Attempts made.
        tries: u32,
    },
}

/// The table and the publisher of its events, under one lock: the events of each
/// update are numbered and published in the order of the updates.
#[derive(Debug)]
struct Table {
    core: RegistryCore,
    events: EventPublisher,
}

#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters more than stopping service; keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the table, then publishes the events it raised as one batch.
    fn update<R>(&self, f: impl FnOnce(&mut RegistryCore) -> R) -> R {
        let mut table = self.lock();
        let r = f(&mut table.core);
        let events = table.core.drain_events();
        table.events.publish(events);
        r
    }
}

/// A running registry. Dropping it stops the server tasks; [`RegistryServer::shutdown`]
/// does so and waits for them.
#[derive(Debug)]
pub struct RegistryServer {
    shared: Arc<Shared>,
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_broadcast(true)?;
    sock.set_nonblocking(true)?;
    // Large buffers absorb bursts of registrations.
    let _ = sock.set_recv_buffer_size(1 << 20);
    sock.bind(&SockAddr::from(addr))?;
    Ok(sock.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    #[cfg(not(windows))]
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&SockAddr::from(addr))?;
    sock.listen(1024)?;
    Ok(sock.into())
}

type Sockets = (Option<std::net::UdpSocket>, Option<std::net::TcpListener>);

fn bind_sockets(config: &RegistryConfig) -> Result<Sockets, ServerError> {
    let addr = SocketAddr::new(config.host, config.port);
    let bind_udp = |addr| {
        udp_socket(addr).map_err(|source| ServerError::Bind {
            transport: "udp",
            addr,
            source,
        })
    };
    let bind_tcp = |addr| {
        tcp_listener(addr).map_err(|source| ServerError::Bind {
            transport: "tcp",
            addr,
            source,
        })
    };
    match (config.udp, config.tcp) {
        (false, false) => Err(ServerError::NothingToServe),
        (true, false) => Ok((Some(bind_udp(addr)?), None)),
        (false, true) => Ok((None, Some(bind_tcp(addr)?))),
        (true, true) if config.port != 0 => Ok((Some(bind_udp(addr)?), Some(bind_tcp(addr)?))),
        (true, true) => {
            // Let the OS pick a UDP port, then take the same number for TCP; retry
            // when that TCP port is busy.
            const TRIES: u32 = 50;
            for _ in 0..TRIES {
                let udp = bind_udp(addr)?;
                let port = udp
                    .local_addr()
                    .map_err(|source| ServerError::Bind {
                        transport: "udp",
                        addr,
                        source,
                    })?
                    .port();
                if let Ok(tcp) = tcp_listener(SocketAddr::new(config.host, port)) {
                    return Ok((Some(udp), Some(tcp)));
                }
            }
            Err(ServerError::NoCommonPort {
                host: config.host,
                tries: TRIES,
            })
        }
    }
}

impl RegistryServer {
    /// Binds the sockets and starts serving (must be called inside a tokio runtime).
    pub async fn bind(config: RegistryConfig) -> Result<Self, ServerError> {
        let (udp, tcp) = bind_sockets(&config)?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                core: RegistryCore::new(config.core.clone()),
                events: EventPublisher::new(config.event_capacity),
            }),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut udp_addr = None;
        let mut tcp_addr = None;
        if let Some(std_sock) = udp {
            let addr = SocketAddr::new(config.host, config.port);
            let sock = UdpSocket::from_std(std_sock).map_err(|source| ServerError::Bind {
                transport: "udp",
                addr,
                source,
            })?;
            udp_addr = sock.local_addr().ok();
            // Without IP_PKTINFO a wildcard-bound UDP socket does not know which of the
            // host's addresses a datagram arrived on.
            let local = Some(config.host).filter(|h| !h.is_unspecified());
            tasks.push(tokio::spawn(serve_udp(
                sock,
                local,
                shared.clone(),
                config.udp_max_request,
                stop_rx.clone(),
            )));
        }
        if let Some(std_listener) = tcp {
            let addr = SocketAddr::new(config.host, config.port);
            let listener =
                TcpListener::from_std(std_listener).map_err(|source| ServerError::Bind {
                    transport: "tcp",
                    addr,
                    source,
                })?;
            tcp_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(serve_tcp(
                listener,
                shared.clone(),
                config.clone(),
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(prune_timer(
            shared.clone(),
            config.prune_every(),
            stop_rx,
        )));
        tracing::info!(
            udp = ?udp_addr,
            tcp = ?tcp_addr,
            prune_timeout_s = config.core.prune_timeout.as_secs_f64(),
            listing = config.core.allow_listing,
            "registry serving"
        );
        Ok(Self {
            shared,
            udp_addr,
            tcp_addr,
            stop,
            tasks,
        })
    }

    /// The bound address (UDP and TCP share the port number).
    pub fn local_addr(&self) -> SocketAddr {
        self.udp_addr
            .or(self.tcp_addr)
            .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
    }

    /// The UDP address, when serving UDP.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The TCP address, when serving TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// A receiver of table changes from now on, one event at a time (see
    /// [`RegistryEvents::recv`]).
    pub fn events(&self) -> RegistryEvents {
        self.shared.lock().events.subscribe()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().core.stats()
    }

    /// A copy of the table.
    pub fn entries(&self) -> Vec<TableRow> {
        self.shared.lock().core.entries(Instant::now())
    }

    /// Stops serving and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        tracing::info!(addr = %self.local_addr(), "registry stopped");
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How long a UDP reply may wait for room in the send buffer.
const UDP_SEND_WAIT: Duration = Duration::from_millis(20);

/// Linux: batched system calls (see [`crate::udp_batch`]); otherwise one datagram at a
/// time, with the same behaviour per datagram.
#[cfg(target_os = "linux")]
async fn serve_udp(
    sock: UdpSocket,
    local: Option<IpAddr>,
    shared: Arc<Shared>,
    max_request: usize,
    mut stop: watch::Receiver<bool>,
) {
    use crate::udp_batch::{self, Outcome, RecvBatch, SendBatch};
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    let fd = sock.as_raw_fd();
    let mut rx = RecvBatch::new(udp_batch::BATCH, max_request);
    let mut tx = SendBatch::new(udp_batch::BATCH);
    loop {
        let ready = tokio::select! {
            r = sock.readable() => r,
            _ = stop.changed() => return,
        };
        let got = ready.and_then(|()| sock.try_io(Interest::READABLE, || rx.recv(fd)));
        match got {
            Ok(_) => {}
            // Spurious readiness; tokio has cleared it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // Transient (e.g. an ICMP error queued by an earlier reply): the
                // socket is still fine. Pause a moment so that a persistent error
                // cannot spin the loop.
                tracing::debug!(error = %e, "udp recv error");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        }
        shared.update(|core| {
            udp_batch::answer(core, Instant::now(), local, &rx, &mut tx, |o| match o {
                Outcome::Answered => {}
                Outcome::Oversized { from, len } => {
                    tracing::info!(%from, len, max = max_request, "dropped oversized registry datagram")
                }
                // A flooding source would flood the log too: rate-limit drops are debug.
                Outcome::Refused {
                    from,
                    error: e @ HandleError::RateLimited { .. },
                } => tracing::debug!(%from, error = %e, "dropped registry datagram"),
                Outcome::Refused { from, error } => {
                    tracing::info!(%from, error = %error, "dropped registry datagram")
                }
            })
        });
        send_batch(&sock, fd, &mut tx).await;
    }
}

/// Sends the replies of one batch. When the send buffer is full, waits for room at
/// most [`UDP_SEND_WAIT`] for the whole batch, then drops what is left (the clients
/// retry on their timeout).
#[cfg(target_os = "linux")]
async fn send_batch(
    sock: &UdpSocket,
    fd: std::os::fd::RawFd,
    tx: &mut crate::udp_batch::SendBatch,
) {
    use tokio::io::Interest;

    let mut deadline = None;
    while tx.pending() > 0 {
        match sock.try_io(Interest::WRITABLE, || tx.send(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let until =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + UDP_SEND_WAIT);
                if !matches!(
                    tokio::time::timeout_at(until, sock.writable()).await,
                    Ok(Ok(()))
                ) {
                    tracing::debug!(
                        dropped = tx.pending(),
                        "udp replies dropped: send buffer full"
                    );
                    tx.skip_all();
                }
            }
            Err(e) => {
                // This reply's destination is unreachable (or similar); the others
                // may still go out.
                if let Some(to) = tx.first_pending() {
                    tracing::debug!(%to, error = %e, "udp reply not sent");
                }
                tx.skip_one();
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
async fn serve_udp(
    sock: UdpSocket,
    local: Option<IpAddr>,
    shared: Arc<Shared>,
    max_request: usize,
    mut stop: watch::Receiver<bool>,
) {
    // Read more than we accept so that oversized datagrams are seen as such.
    let mut buf = vec![0u8; 65_536];
    let mut reply = Vec::with_capacity(1500);
    loop {
        let (len, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // Transient (e.g. an ICMP error queued by an earlier reply): the
                    // socket is still fine. Pause a moment so that a persistent error
                    // cannot spin the loop.
                    tracing::debug!(error = %e, "udp recv error");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if len > max_request {
            shared.lock().core.record_dropped();
            tracing::info!(%from, len, max = max_request, "dropped oversized registry datagram");
            continue;
        }
        let result = shared.update(|core| {
            core.handle_via(
                Instant::now(),
                from.ip(),
                local,
                Transport::Udp,
                &buf[..len],
                &mut reply,
            )
        });
        match result {
            Ok(_) => match sock.try_send_to(&reply, from) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Send buffer full: wait briefly, never stall the loop for long
                    // (the client retries on its timeout).
                    let wait = tokio::time::timeout(UDP_SEND_WAIT, sock.send_to(&reply, from));
                    if !matches!(wait.await, Ok(Ok(_))) {
                        tracing::debug!(%from, "udp reply dropped: send buffer full");
                    }
                }
                Err(e) => tracing::debug!(%from, error = %e, "udp reply not sent"),
            },
            // A flooding source would flood the log too: rate-limit drops are debug.
            Err(e @ HandleError::RateLimited { .. }) => {
                tracing::debug!(%from, error = %e, "dropped registry datagram")
            }
            Err(e) => tracing::info!(%from, error = %e, "dropped registry datagram"),
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: RegistryConfig,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(config.max_tcp_connections.max(1)));
    let per_source = Arc::new(Mutex::new(HashMap::new()));
    let mut conns = JoinSet::new();
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stop.changed() => {
                conns.abort_all();
                return;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%from, max = config.max_tcp_connections, "too many registry connections; closing");
            drop(stream);
            continue;
        };
        let Some(slot) = SourceSlot::take(
            &per_source,
            from.ip(),
            config.max_tcp_connections_per_source,
        ) else {
            tracing::warn!(%from, max = config.max_tcp_connections_per_source, "too many registry connections from this source; closing");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let deadline = config.tcp_deadline;
        let max = config.tcp_max_request;
        let want_local = config.core.rewrite_loopback;
        conns.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            handle_tcp(stream, from, &shared, deadline, max, want_local).await;
        });
    }
}

/// Open TCP connections per source address.
type PerSource = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One source's hold on a TCP connection slot, given back when dropped (the entry of a
/// source with no connection left is removed, so the map holds at most
/// `max_tcp_connections` entries).
struct SourceSlot {
    map: PerSource,
    ip: IpAddr,
}

impl SourceSlot {
    fn take(map: &PerSource, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let ip = ip.to_canonical();
        let mut held = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// How much decoding one TCP connection may cost, in multiples of its size cap
/// (`tcp_max_request`): the lengths of the buffers decoded while its request is still
/// incomplete add up to at most this many times the cap (4 MiB with the default 64 KiB).
/// A request arriving in many segments is decoded once per segment that completes what
/// the last attempt found missing; a 20 KB request in 60 segments costs about 600 KB, a
/// 64 KiB one read in 2 KiB pieces about 1 MiB. A client trickling a byte at a time
/// across item boundaries would cost a decode per byte, quadratic in its size: it is
/// dropped once the budget is spent.
pub const DECODE_WORK_FACTOR: usize = 64;

/// Why a TCP connection was closed before it delivered one complete request.
#[derive(Debug, thiserror::Error)]
enum TcpReadError {
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    #[error("closed without sending anything")]
    ClosedEmpty,
    #[error("closed after an incomplete request of {len} bytes")]
    ClosedIncomplete { len: usize },
    #[error("request exceeds {max} bytes ({cause}, so at least {end} bytes)")]
    TooLarge {
        max: usize,
        end: u64,
        cause: brine::BrineError,
    },
    #[error(
        "request still incomplete at {len} bytes after decoding {decoded} bytes in {attempts} attempts; decoding it again would pass the budget of {budget} bytes"
    )]
    DecodeBudgetSpent {
        len: usize,
        decoded: usize,
        attempts: u32,
        budget: usize,
    },
    #[error(transparent)]
    Malformed(brine::BrineError),
}

/// Most bytes one read of a TCP request takes.
const READ_CHUNK: usize = 16 * 1024;

/// Reads until one complete brine value, a malformed one, the size cap or EOF; returns
/// the value (decoded here, outside the table's lock, and not again).
///
/// The buffer is decoded again only once it holds the bytes the last attempt said were
/// missing (a declared length, or one byte per declared item), and the buffers decoded
/// add up to at most [`DECODE_WORK_FACTOR`] times `max` bytes, so a client trickling
/// bytes costs a bounded amount of work instead of a decode per byte, while a request
/// split over many segments still works; a declaration that cannot fit in `max` bytes
/// is refused at once.
async fn read_request(stream: &mut TcpStream, max: usize) -> Result<brine::Value, TcpReadError> {
    let mut buf = Vec::with_capacity(256);
    // Length the buffer must reach before the next decode is worth trying.
    let mut wanted = 1usize;
    let budget = max.saturating_mul(DECODE_WORK_FACTOR);
    let mut decoded = 0usize;
    let mut attempts = 0u32;
    loop {
        // Whatever has arrived, up to READ_CHUNK bytes and never more than one byte
        // past the cap, straight into the buffer: a large request sent in one write is
        // decoded a few times, not once per 2 KiB.
        // (`reserve` may leave more room than asked for: the read itself is limited.)
        let limit = READ_CHUNK.min((max + 1).saturating_sub(buf.len())).max(1);
        buf.reserve(limit);
        let n = (&mut *stream).take(limit as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                TcpReadError::ClosedEmpty
            } else {
                TcpReadError::ClosedIncomplete { len: buf.len() }
            });
        }
        if buf.len() < wanted {
            continue;
        }
        if decoded.saturating_add(buf.len()) > budget {
            return Err(TcpReadError::DecodeBudgetSpent {
                len: buf.len(),
                decoded,
                attempts,
                budget,
            });
        }
        decoded += buf.len();
        attempts += 1;
        match brine::decode(&buf) {
            Ok((value, _trailing_ignored)) => return Ok(value),
            Err(e) if e.is_truncated() => {
                let end = e.needed_end();
                if end > max as u64 || buf.len() >= max {
                    return Err(TcpReadError::TooLarge { max, end, cause: e });
                }
                wanted = usize::try_from(end)
                    .unwrap_or(usize::MAX)
                    .max(buf.len() + 1);
            }
            Err(e) => return Err(TcpReadError::Malformed(e)),
        }
    }
}

async fn handle_tcp(
    mut stream: TcpStream,
    from: SocketAddr,
    shared: &Shared,
    deadline: Duration,
    max: usize,
    want_local: bool,
) {
    let request = match tokio::time::timeout(deadline, read_request(&mut stream, max)).await {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => {
            shared.lock().core.record_dropped();
            tracing::info!(%from, reason = %why, "dropped registry connection");
            return;
        }
        Err(_) => {
            shared.lock().core.record_dropped();
            tracing::info!(%from, deadline_ms = deadline.as_millis() as u64, "registry connection sent no complete request in time; closed");
            return;
        }
    };
    let request = proto::parse_request_value(request);
    let mut reply = Vec::with_capacity(256);
    // The address the client reached: only loopback rewriting uses it (one system call
    // per connection saved otherwise).
    let local = want_local
        .then(|| stream.local_addr().ok().map(|a| a.ip()))
        .flatten();
    let result = shared.update(|core| {
        core.handle_parsed_via(
            Instant::now(),
            from.ip(),
            local,
            Transport::Tcp,
            request,
            &mut reply,
        )
    });
    match result {
        Ok(_) => {
            // Dropping the stream afterwards closes it (FIN after the reply), which is
            // all rpyc's client waits for; no separate shutdown call needed.
            let write = stream.write_all(&reply);
            match tokio::time::timeout(deadline, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "tcp reply not sent"),
                Err(_) => tracing::info!(%from, "tcp reply not taken in time; closed"),
            }
        }
        Err(e @ HandleError::RateLimited { .. }) => {
            tracing::debug!(%from, error = %e, "dropped registry request")
        }
        Err(e) => tracing::info!(%from, error = %e, "dropped registry request"),
    }
}

async fn prune_timer(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let n = shared.update(|core| core.prune(Instant::now()));
        if n > 0 {
            tracing::info!(removed = n, "pruned stale registry entries");
        }
    }
}
