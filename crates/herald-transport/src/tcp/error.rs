//! Errors of the TCP transport.

use std::time::Duration;

use super::codec::FramingError;
use crate::native::HandshakeError;
use crate::tls::TlsError;

/// Errors starting a [`TcpNode`](super::TcpNode).
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The bind address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material was invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration is inconsistent.
    #[error("invalid TCP transport configuration: {0}")]
    Config(String),
}

/// [`PeerHandle::send_all`](super::PeerHandle::send_all) stopped at a refused message.
#[derive(Debug, thiserror::Error)]
#[error("{error} (after {queued} messages of the batch were queued)")]
pub struct SendAllError {
    /// Messages of the batch queued before the refused one (the refused one and those
    /// after it were not).
    pub queued: usize,
    /// Why the message was refused (it was also published as a dead letter).
    pub error: crate::TransportError,
}

/// Why one connection (dialed or accepted) failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The address dialed (after the address map).
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("{what} with {peer} timed out after {after:?}")]
    Timeout {
        /// Which step.
        what: &'static str,
        /// The peer (address dialed or remote socket address).
        peer: String,
        /// The budget that elapsed.
        after: Duration,
    },
    /// The TLS handshake failed (bad or missing certificate, wrong host name, ...).
    #[error("TLS handshake with {peer} failed: {message}")]
    Tls {
        /// The peer.
        peer: String,
        /// rustls' reason.
        message: String,
    },
    /// The host name cannot be used for the TLS name check.
    #[error("cannot verify TLS host name {host:?}: {message}")]
    TlsName {
        /// The dialed host.
        host: String,
        /// Why.
        message: String,
    },
    /// Reading or writing failed.
    #[error("i/o error with {peer}: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The byte stream broke the framing rules.
    #[error("framing error from {peer}: {source}")]
    Framing {
        /// The peer.
        peer: String,
        /// What was wrong.
        source: FramingError,
    },
    /// The native handshake failed.
    #[error("native handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer.
        peer: String,
        /// What was wrong.
        source: HandshakeError,
    },
    /// A casty handshake body did not decode.
    #[error("bad casty handshake from {peer}: {source}")]
    BadHandshake {
        /// The peer.
        peer: String,
        /// The decode error.
        source: herald_wire::WireError,
    },
    /// The first frame was not a handshake of this node's mode.
    #[error("{peer} sent frame kind 0x{kind:02x} before the handshake (expected 0x{expected:02x})")]
    NotAHandshake {
        /// The peer.
        peer: String,
        /// Kind received.
        kind: u8,
        /// Kind expected.
        expected: u8,
    },
    /// The peer closed the connection during the handshake.
    #[error("{peer} closed the connection during the handshake")]
    ClosedDuringHandshake {
        /// The peer.
        peer: String,
    },
    /// No keepalive answer (or any frame) within the timeout.
    #[error("no frame from {peer} for {after:?} (keepalive timeout)")]
    KeepaliveTimeout {
        /// The peer.
        peer: String,
        /// The timeout.
        after: Duration,
    },
    /// The peer sent a native reject after the handshake.
    #[error("{peer} closed the connection: {reason}")]
    RejectedLater {
        /// The peer.
        peer: String,
        /// Its reason.
        reason: String,
    },
}
