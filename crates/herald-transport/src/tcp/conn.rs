//! Establishing connections: TCP connect or accept, TLS, then the casty-v1 or native
//! handshake. The handshake logic itself lives in [`crate::native`] (native) or is the
//! two-frame casty exchange; this module only moves its frames over the socket and
//! enforces the time budgets.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use herald_wire::{FRAME_HANDSHAKE, Handshake};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tracing::{debug, warn};

use super::Shared;
use super::codec::{FrameReader, RawFrame, ReadError};
use super::config::{Keepalive, PeerAddr};
use super::error::ConnectionError;
use crate::native::{
    self, Acceptor, Dialer, FRAME_HELLO, NativeFrame, NodeId, PeerInfo, RejectReason, Step,
};

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The sending half of a connection.
///
/// A plain TCP half is shared (`Arc`) with the peer's state so that a sender can write
/// one message straight to the socket when the connection is idle (no task hop; see
/// `Peer::enqueue_locked`); every write through it happens under the peer's state lock
/// or while the peer task holds the connection busy, never both. TLS streams are
/// written by the peer task only.
pub(crate) enum ConnWrite {
    /// Plain TCP.
    Plain(Arc<OwnedWriteHalf>),
    /// TLS (or any other stream).
    Boxed(BoxWrite),
}

impl ConnWrite {
    /// Writes all of `buf`.
    pub(crate) async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        match self {
            ConnWrite::Boxed(w) => w.write_all(buf).await,
            ConnWrite::Plain(w) => {
                while !buf.is_empty() {
                    match w.try_write(buf) {
                        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => buf = &buf[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            w.writable().await?
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Flushes buffered bytes (TLS); plain sockets have none.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ConnWrite::Boxed(w) => w.flush().await,
            ConnWrite::Plain(_) => Ok(()),
        }
    }

    /// Closes the sending side (FIN, or TLS close_notify). A plain half still shared
    /// is closed when its last holder drops it (tokio shuts the write side down on
    /// drop), so callers release the shared handle first.
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            ConnWrite::Boxed(w) => w.shutdown().await,
            ConnWrite::Plain(w) => match Arc::get_mut(w) {
                Some(owned) => owned.shutdown().await,
                None => Ok(()),
            },
        }
    }

    /// The shared plain half, for direct writes.
    pub(crate) fn direct(&self) -> Option<Arc<OwnedWriteHalf>> {
        match self {
            ConnWrite::Plain(w) => Some(w.clone()),
            ConnWrite::Boxed(_) => None,
        }
    }
}

/// How the transport keys a peer: by its advertised address, or (native client-only
/// peers, which advertise port 0) by node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// A peer reachable at an advertised address.
    Addr(PeerAddr),
    /// A native client-only peer, known by its node id.
    Node(NodeId),
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerKey::Addr(a) => a.fmt(f),
            PeerKey::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// Who is at the other end of an established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The address the peer advertised in its handshake.
    pub addr: PeerAddr,
    /// Native mode: what the native handshake established (node id, incarnation, ...).
    pub node: Option<PeerInfo>,
}

impl PeerIdentity {
    /// The key the transport files this peer under.
    pub fn key(&self) -> PeerKey {
        match &self.node {
            Some(info) if info.port == 0 => PeerKey::Node(info.node_id),
            _ => PeerKey::Addr(self.addr.clone()),
        }
    }
}

/// A connection that completed its handshake.
pub(crate) struct Established {
    pub reader: FrameReader<BoxRead>,
    pub writer: ConnWrite,
    pub identity: PeerIdentity,
    pub dialed_by_us: bool,
    /// Socket-level peer for log lines.
    pub label: String,
}

pub(crate) fn put_frame(dst: &mut BytesMut, kind: u8, body: &[u8]) {
    dst.reserve(5 + body.len());
    dst.put_u32(u32::try_from(body.len() + 1).unwrap_or(u32::MAX));
    dst.put_u8(kind);
    dst.extend_from_slice(body);
}

async fn write_raw(w: &mut ConnWrite, buf: &[u8], label: &str) -> Result<(), ConnectionError> {
    let io = |source| ConnectionError::Io {
        peer: label.to_owned(),
        source,
    };
    w.write_all(buf).await.map_err(io)?;
    w.flush().await.map_err(io)
}

async fn write_native(
    w: &mut ConnWrite,
    frame: &NativeFrame,
    label: &str,
) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::new();
    frame.encode_frame(&mut buf);
    write_raw(w, &buf, label).await
}

async fn read_one(r: &mut FrameReader<BoxRead>, label: &str) -> Result<RawFrame, ConnectionError> {
    match r.next().await {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(ConnectionError::ClosedDuringHandshake {
            peer: label.to_owned(),
        }),
        Err(ReadError::Io(source)) => Err(ConnectionError::Io {
            peer: label.to_owned(),
            source,
        }),
        Err(ReadError::Framing(source)) => Err(ConnectionError::Framing {
            peer: label.to_owned(),
            source,
        }),
    }
}

fn split_plain(tcp: TcpStream) -> (BoxRead, ConnWrite) {
    let (r, w) = tcp.into_split();
    (Box::new(r), ConnWrite::Plain(Arc::new(w)))
}

fn tune(tcp: &TcpStream, keepalive: Option<Keepalive>) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    if let Some(k) = keepalive
        && let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&tcp_keepalive(k))
    {
        debug!(error = %e, "could not enable TCP keepalive");
    }
}

/// The kernel's keepalive for `k`: probes after `interval` of silence, every `interval`,
/// and the connection is reset once `timeout` has passed without an answer. It finds
/// a peer whose host or network is gone in both modes (casty-v1 peers do not answer
/// native pings; native peers also get pings, which find a hung process too).
pub(crate) fn tcp_keepalive(k: Keepalive) -> socket2::TcpKeepalive {
    // The kernel counts in whole seconds.
    let interval = k.interval.max(Duration::from_secs(1));
    let probes = socket2::TcpKeepalive::new()
        .with_time(interval)
        .with_interval(interval);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "macos"
    ))]
    let probes = {
        let retries = k
            .timeout
            .as_secs()
            .div_ceil(interval.as_secs())
            .clamp(1, 127);
        probes.with_retries(u32::try_from(retries).unwrap_or(127))
    };
    probes
}

/// Runs `step` (connect or accept, then the handshake) within `budget`; a timeout
/// is reported as `what` with `label`'s peer.
async fn within<T>(
    budget: Duration,
    what: &'static str,
    label: String,
    step: impl Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    match tokio::time::timeout(budget, step).await {
        Ok(r) => r,
        Err(_) => Err(ConnectionError::Timeout {
            what,
            peer: label,
            after: budget,
        }),
    }
}

/// Splits the result of a TLS handshake with `label`'s peer into boxed halves.
fn split_tls<S>(
    tls: std::io::Result<S>,
    label: &str,
) -> Result<(BoxRead, ConnWrite), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let tls = tls.map_err(|e| ConnectionError::Tls {
        peer: label.to_owned(),
        message: e.to_string(),
    })?;
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), ConnWrite::Boxed(Box::new(w))))
}

/// Writes our own casty-v1 handshake frame.
async fn write_casty_handshake(
    shared: &Shared,
    writer: &mut ConnWrite,
    label: &str,
) -> Result<(), ConnectionError> {
    let mut buf = BytesMut::new();
    let hs = Handshake::new(shared.self_addr.host.clone(), shared.self_addr.port);
    put_frame(&mut buf, FRAME_HANDSHAKE, &hs.encode());
    write_raw(writer, &buf, label).await
}

/// The identity in the peer's casty-v1 handshake frame `f`.
fn casty_identity(f: &RawFrame, label: &str) -> Result<PeerIdentity, ConnectionError> {
    if f.kind != FRAME_HANDSHAKE {
        return Err(ConnectionError::NotAHandshake {
            peer: label.to_owned(),
            kind: f.kind,
            expected: FRAME_HANDSHAKE,
        });
    }
    let theirs = Handshake::decode(&f.body).map_err(|source| ConnectionError::BadHandshake {
        peer: label.to_owned(),
        source,
    })?;
    Ok(PeerIdentity {
        addr: PeerAddr::new(theirs.host, theirs.port),
        node: None,
    })
}

/// The identity the native handshake established.
fn native_identity(info: PeerInfo) -> PeerIdentity {
    PeerIdentity {
        addr: PeerAddr::new(info.host.clone(), info.port),
        node: Some(info),
    }
}

/// A failed native handshake: sends the handshake's last word (if any, best effort)
/// and returns the error.
async fn native_failure(
    writer: &mut ConnWrite,
    reply: Option<NativeFrame>,
    error: native::HandshakeError,
    label: String,
) -> ConnectionError {
    if let Some(reply) = reply {
        let _ = write_native(writer, &reply, &label).await;
    }
    ConnectionError::Handshake {
        peer: label,
        source: error,
    }
}

/// Dials `target` (after the address map), with TLS if configured, and runs the
/// handshake, all within `connect_timeout`.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    target: &PeerAddr,
) -> Result<Established, ConnectionError> {
    let mapped = match &shared.cfg.address_map {
        Some(map) => map(target),
        None => target.clone(),
    };
    let label = mapped.to_string();
    within(
        shared.cfg.connect_timeout,
        "connect and handshake",
        label.clone(),
        dial_inner(shared, &mapped, label),
    )
    .await
}

async fn dial_inner(
    shared: &Arc<Shared>,
    mapped: &PeerAddr,
    label: String,
) -> Result<Established, ConnectionError> {
    let tcp = TcpStream::connect((mapped.host.as_str(), mapped.port))
        .await
        .map_err(|source| ConnectionError::Connect {
            addr: label.clone(),
            source,
        })?;
    tune(&tcp, shared.cfg.keepalive);
    let (rd, wr) = match &shared.tls_connector {
        Some(connector) => {
            let name = ServerName::try_from(mapped.host.clone()).map_err(|e| {
                ConnectionError::TlsName {
                    host: mapped.host.clone(),
                    message: e.to_string(),
                }
            })?;
            split_tls(connector.connect(name, tcp).await, &label)?
        }
        None => split_plain(tcp),
    };
    let mut reader = FrameReader::new(rd, shared.cfg.max_frame_size);
    let mut writer = wr;
    let identity = match &shared.hs {
        None => {
            write_casty_handshake(shared, &mut writer, &label).await?;
            let f = read_one(&mut reader, &label).await?;
            casty_identity(&f, &label)?
        }
        Some(cfg) => {
            let (mut dialer, hello) = Dialer::start(cfg.clone());
            write_native(&mut writer, &hello, &label).await?;
            let f = read_one(&mut reader, &label).await?;
            let step = match native::decode_for_handshake(f.kind, &f.body) {
                Ok(frame) => dialer.on_frame(frame),
                Err(step) => *step,
            };
            match step {
                Step::SendAndDone(confirm, info) => {
                    write_native(&mut writer, &confirm, &label).await?;
                    native_identity(info)
                }
                Step::Fail { reply, error } => {
                    return Err(native_failure(&mut writer, reply, error, label).await);
                }
                Step::Send(_) | Step::Done(_) => {
                    return Err(ConnectionError::Handshake {
                        peer: label,
                        source: native::HandshakeError::Unexpected {
                            kind: f.kind,
                            expected: "welcome",
                        },
                    });
                }
            }
        }
    };
    debug!(peer = %label, identity = ?identity, "dialed connection established");
    Ok(Established {
        reader,
        writer,
        identity,
        dialed_by_us: true,
        label,
    })
}

/// Runs TLS (if configured) and the acceptor side of the handshake on an accepted
/// socket, within `handshake_timeout`.
pub(crate) async fn accept(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<Established, ConnectionError> {
    let label = remote.to_string();
    within(
        shared.cfg.handshake_timeout,
        "inbound handshake",
        label.clone(),
        accept_inner(shared, tcp, label),
    )
    .await
}

async fn accept_inner(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    label: String,
) -> Result<Established, ConnectionError> {
    tune(&tcp, shared.cfg.keepalive);
    let (rd, wr) = match &shared.tls_acceptor {
        Some(acceptor) => split_tls(acceptor.accept(tcp).await, &label)?,
        None => split_plain(tcp),
    };
    let mut reader = FrameReader::new(rd, shared.cfg.max_frame_size);
    let mut writer = wr;
    let first = read_one(&mut reader, &label).await?;
    let identity = match &shared.hs {
        None => {
            // Not a handshake: casty closes without writing anything; so do we.
            let identity = casty_identity(&first, &label)?;
            write_casty_handshake(shared, &mut writer, &label).await?;
            identity
        }
        Some(cfg) => {
            if first.kind != FRAME_HELLO {
                let reject = NativeFrame::Reject {
                    reason: RejectReason::Malformed,
                    detail: format!(
                        "expected a native hello (0x{FRAME_HELLO:02x}), got frame 0x{:02x}",
                        first.kind
                    ),
                };
                let _ = write_native(&mut writer, &reject, &label).await;
                return Err(ConnectionError::NotAHandshake {
                    peer: label,
                    kind: first.kind,
                    expected: FRAME_HELLO,
                });
            }
            let mut acceptor = Acceptor::new(cfg.clone());
            let admit = |info: &PeerInfo| shared.admit(info);
            let mut frame = first;
            loop {
                let step = match native::decode_for_handshake(frame.kind, &frame.body) {
                    Ok(f) => acceptor.on_frame(f, &admit),
                    Err(step) => *step,
                };
                match step {
                    Step::Send(reply) => {
                        write_native(&mut writer, &reply, &label).await?;
                        frame = read_one(&mut reader, &label).await?;
                    }
                    Step::Done(info) | Step::SendAndDone(_, info) => {
                        break native_identity(info);
                    }
                    Step::Fail { reply, error } => {
                        return Err(native_failure(&mut writer, reply, error, label).await);
                    }
                }
            }
        }
    };
    debug!(peer = %label, identity = ?identity, "inbound connection established");
    Ok(Established {
        reader,
        writer,
        identity,
        dialed_by_us: false,
        label,
    })
}

/// Logs a failed inbound connection at the right level.
pub(crate) fn log_accept_failure(err: &ConnectionError) {
    match err {
        ConnectionError::Tls { .. } => {
            warn!(error = %err, "refused inbound connection: TLS handshake failed")
        }
        _ => warn!(error = %err, "refused inbound connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_get_the_kernels_keepalive_from_the_config() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let sock = socket2::SockRef::from(&tcp);
        tune(&tcp, None);
        assert!(!sock.keepalive().expect("SO_KEEPALIVE"));
        tune(
            &tcp,
            Some(Keepalive {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(7),
            }),
        );
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert!(tcp.nodelay().expect("TCP_NODELAY"));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                sock.tcp_keepalive_time().expect("idle"),
                Duration::from_secs(2)
            );
            assert_eq!(
                sock.tcp_keepalive_interval().expect("interval"),
                Duration::from_secs(2)
            );
            // 7 s of unanswered probes at 2 s apart: 4 probes.
            assert_eq!(sock.tcp_keepalive_retries().expect("retries"), 4);
        }
        // Sub-second periods are rounded up to the kernel's one-second unit.
        let k = tcp_keepalive(Keepalive {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
        });
        sock.set_tcp_keepalive(&k).expect("set");
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(1)
        );
    }
}
