//! Configuration of the TCP transport.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::native::NodeId;
use crate::tls::TlsConfig;

/// A logical peer address: the `(host, port)` a node advertises and that URIs carry.
///
/// Ordered as casty orders addresses (`(host string, port)` tuples), which settles the
/// casty-v1 simultaneous-connect race.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// Host name or IP literal, as written in URIs.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl PeerAddr {
    /// Builds an address.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        PeerAddr {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        PeerAddr::new(a.ip().to_string(), a.port())
    }
}

/// Which handshake and control frames the node speaks.
#[derive(Clone, Default)]
pub enum WireMode {
    /// casty 0.21.0 compatible: `{"host","port"}` JSON handshake both ways, no keepalive
    /// frames, identity by claimed address (casty's rule). Talks to real casty nodes.
    #[default]
    CastyV1,
    /// Herald's native handshake (see [`crate::native`]): cluster name, node id and
    /// incarnation, capabilities, optional cookie challenge, reject reasons, keepalive.
    Native {
        /// Cluster name; peers of other clusters are rejected.
        cluster: String,
        /// Optional shared secret every node of the cluster must know.
        cookie: Option<Arc<[u8]>>,
    },
}

impl fmt::Debug for WireMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireMode::CastyV1 => f.write_str("CastyV1"),
            WireMode::Native { cluster, cookie } => f
                .debug_struct("Native")
                .field("cluster", cluster)
                .field("cookie", &cookie.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl WireMode {
    /// Native mode without a cookie.
    pub fn native(cluster: impl Into<String>) -> Self {
        WireMode::Native {
            cluster: cluster.into(),
            cookie: None,
        }
    }

    /// Native mode with a shared-secret cookie.
    pub fn native_with_cookie(cluster: impl Into<String>, cookie: impl Into<Vec<u8>>) -> Self {
        WireMode::Native {
            cluster: cluster.into(),
            cookie: Some(Arc::from(cookie.into())),
        }
    }

    /// Is this the native mode?
    pub fn is_native(&self) -> bool {
        matches!(self, WireMode::Native { .. })
    }
}

/// What to do when a peer's bounded outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Drop the message being sent (dead letter `QueueOverflow`); `send` returns `Ok`.
    #[default]
    DropNewest,
    /// Drop the oldest queued message (dead letter `QueueOverflow`) to make room.
    DropOldest,
    /// Refuse the message: `send` returns `TransportError::Refused` (also a dead letter).
    Fail,
}

/// Reconnect backoff and circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed dial.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Growth factor per consecutive failure.
    pub factor: f64,
    /// Consecutive failed dials after which the circuit opens: queued messages go to dead
    /// letters (`PeerUnreachable`) and new ones are dropped (`Blacklisted`) until the
    /// current delay has passed or `clear_blacklist` is called.
    pub breaker_threshold: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            breaker_threshold: 5,
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures, before jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64);
        let secs = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The delay with "equal jitter": uniformly in `[delay/2, delay]`.
    pub fn jittered(&self, failures: u32) -> Duration {
        let d = self.delay(failures);
        let r: f64 = rand::random();
        d.mul_f64(0.5 + r / 2.0)
    }
}

/// Keepalive of every connection.
///
/// Native peers that announce it get a ping frame every `interval`, and a connection
/// that receives nothing for `timeout` is closed (this finds a hung peer process too).
/// Every connection, casty-v1 ones included (casty ignores unknown frames but does not
/// answer them), also gets the kernel's TCP keepalive: probes after `interval` of
/// silence, every `interval` (whole seconds, at least 1 s), and a reset once about
/// `timeout` has passed without an answer, which finds a peer whose host or network is
/// gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Native ping period, and TCP keepalive idle time and probe interval.
    pub interval: Duration,
    /// The connection is closed after this long without receiving anything (native),
    /// or without an answer to TCP keepalive probes.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    }
}

/// Maps a logical address to the address actually dialed (SSH tunnels, NAT, Docker port
/// maps). Applied to dialing only: URIs and handshakes keep the logical address, and the
/// TLS hostname check uses the mapped host.
pub type AddressMap = Arc<dyn Fn(&PeerAddr) -> PeerAddr + Send + Sync>;

/// Configuration of a [`TcpNode`](super::TcpNode).
#[derive(Clone)]
pub struct TcpConfig {
    /// Address to listen on (port 0: any free port, which then becomes the advertised port).
    pub bind: SocketAddr,
    /// Address advertised in handshakes and sender URIs (default: the bound address).
    pub advertise: Option<PeerAddr>,
    /// Do not listen at all; peers answer over the connections this node dials.
    pub client_only: bool,
    /// Handshake flavour.
    pub mode: WireMode,
    /// This node's id (native mode identity; random by default).
    pub node_id: NodeId,
    /// This node's incarnation (default: start time in milliseconds since the epoch).
    pub incarnation: u64,
    /// TLS (server and/or client side).
    pub tls: Option<TlsConfig>,
    /// Budget for TCP connect + TLS + handshake when dialing.
    pub connect_timeout: Duration,
    /// Budget for an inbound connection to complete its handshake.
    pub handshake_timeout: Duration,
    /// Inbound connections allowed in their handshake at the same time; more are closed
    /// at once (bounds what a flood of silent clients can hold).
    pub max_pending_handshakes: usize,
    /// Largest accepted frame (`LEN` field), both directions.
    pub max_frame_size: usize,
    /// Capacity of each peer's outbound queue, in messages.
    pub queue_capacity: usize,
    /// Capacity of each peer's outbound queue, in encoded bytes (default 64 MiB): the
    /// queue is full when it holds `queue_capacity` messages or at least this many
    /// bytes, whichever comes first, so large messages cannot pile up to
    /// `queue_capacity` × `max_frame_size` (the last message may overshoot by one frame).
    pub max_queue_bytes: usize,
    /// What to do when that queue is full.
    pub overflow: OverflowPolicy,
    /// Reconnect backoff and circuit breaker.
    pub backoff: Backoff,
    /// Keepalive: native pings, and TCP keepalive on every connection (`None`: neither).
    pub keepalive: Option<Keepalive>,
    /// Dial-only address translation.
    pub address_map: Option<AddressMap>,
    /// Largest batch written at once, in bytes (frames are coalesced up to this size).
    pub max_batch_bytes: usize,
    /// A write that makes no progress for this long closes the connection (the peer
    /// stopped reading); the batch becomes dead letters and the peer is redialled.
    pub write_timeout: Duration,
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("client_only", &self.client_only)
            .field("mode", &self.mode)
            .field("node_id", &self.node_id)
            .field("incarnation", &self.incarnation)
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field("max_frame_size", &self.max_frame_size)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("overflow", &self.overflow)
            .field("backoff", &self.backoff)
            .field("keepalive", &self.keepalive)
            .field("address_map", &self.address_map.is_some())
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

/// Default listening address of a Herald node.
pub const DEFAULT_BIND: &str = "127.0.0.1:25520";

impl TcpConfig {
    /// Defaults (casty-v1 mode, casty's 2 s connect timeout, 16 MiB frames, 8192-message
    /// queues dropping the newest, 100 ms → 10 s backoff) listening on `bind`.
    pub fn new(bind: SocketAddr) -> Self {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        TcpConfig {
            bind,
            advertise: None,
            client_only: false,
            mode: WireMode::CastyV1,
            node_id: NodeId::random(),
            incarnation,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 1024,
            max_frame_size: herald_wire::DEFAULT_MAX_FRAME_SIZE,
            queue_capacity: 8192,
            max_queue_bytes: 64 * 1024 * 1024,
            overflow: OverflowPolicy::DropNewest,
            backoff: Backoff::default(),
            keepalive: Some(Keepalive::default()),
            address_map: None,
            max_batch_bytes: 256 * 1024,
            write_timeout: Duration::from_secs(30),
        }
    }

    /// Defaults listening on `127.0.0.1:0` (any free port).
    pub fn loopback() -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Sets the wire mode.
    pub fn with_mode(mut self, mode: WireMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the advertised address.
    pub fn with_advertise(mut self, addr: PeerAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Sets TLS.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the dial-only address map.
    pub fn with_address_map(
        mut self,
        map: impl Fn(&PeerAddr) -> PeerAddr + Send + Sync + 'static,
    ) -> Self {
        self.address_map = Some(Arc::new(map));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            breaker_threshold: 3,
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
        for n in 1..10 {
            let j = b.jittered(n);
            assert!(j <= b.delay(n) && j >= b.delay(n) / 2, "{j:?}");
        }
    }

    #[test]
    fn peer_addr_orders_like_casty_and_prints_ipv6() {
        assert!(PeerAddr::new("127.0.0.1", 9) < PeerAddr::new("127.0.0.2", 1));
        assert!(PeerAddr::new("a", 1) < PeerAddr::new("a", 2));
        assert_eq!(PeerAddr::new("::1", 5).to_string(), "[::1]:5");
    }
}
