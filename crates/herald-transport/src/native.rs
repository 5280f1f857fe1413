//! Herald's native handshake and keepalive: a pure protocol core (no sockets).
//!
//! The native mode keeps casty's outer framing (`u32 BE LEN | u8 KIND | BODY`) but uses
//! frame kinds `>= 0x10`, which casty v1 ignores, for a versioned handshake and for
//! keepalive pings. Everything here is plain data in, plain data out, in the style of
//! quinn's protocol core: the TCP layer feeds received frames to a [`Dialer`] or an
//! [`Acceptor`] and writes back what they return, and enforces the timeouts.
//!
//! The handshake has three messages:
//!
//! 1. dialer → acceptor: [`NativeFrame::Hello`] (magic, protocol version, cluster name,
//!    node id + incarnation, advertised address, capabilities, a random nonce);
//! 2. acceptor → dialer: [`NativeFrame::Welcome`] (the same for the acceptor, plus, when
//!    a shared-secret cookie is configured, an HMAC-SHA256 proof over both nonces) or a
//!    [`NativeFrame::Reject`] with a [`RejectReason`];
//! 3. dialer → acceptor: [`NativeFrame::Confirm`] (the dialer's proof) or a reject.
//!
//! Identity is the node id (plus incarnation), never the claimed address.
//!
//! ```
//! use herald_transport::native::{Acceptor, Dialer, HandshakeConfig, NodeId, Step};
//!
//! let a = HandshakeConfig::new("prod", NodeId(1), 1).with_cookie(b"s3cret".to_vec());
//! let b = HandshakeConfig::new("prod", NodeId(2), 1).with_cookie(b"s3cret".to_vec());
//! let (mut dialer, hello) = Dialer::start(a);
//! let mut acceptor = Acceptor::new(b);
//! // Frames normally travel over TCP; here we pass them by hand (encoded and decoded).
//! let wire = |f: herald_transport::native::NativeFrame| {
//!     let (kind, body) = f.encode();
//!     herald_transport::native::NativeFrame::decode(kind, &body).unwrap()
//! };
//! let Step::Send(welcome) = acceptor.on_frame(wire(hello), &|_| None) else { panic!() };
//! let Step::SendAndDone(confirm, peer_b) = dialer.on_frame(wire(welcome)) else { panic!() };
//! let Step::Done(peer_a) = acceptor.on_frame(wire(confirm), &|_| None) else { panic!() };
//! assert_eq!(peer_b.node_id, NodeId(2));
//! assert_eq!(peer_a.node_id, NodeId(1));
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Magic bytes opening every native greeting.
pub const NATIVE_MAGIC: [u8; 4] = *b"HRLD";
/// The native protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Frame kind of [`NativeFrame::Hello`].
pub const FRAME_HELLO: u8 = 0x10;
/// Frame kind of [`NativeFrame::Welcome`].
pub const FRAME_WELCOME: u8 = 0x11;
/// Frame kind of [`NativeFrame::Confirm`].
pub const FRAME_CONFIRM: u8 = 0x12;
/// Frame kind of [`NativeFrame::Reject`].
pub const FRAME_REJECT: u8 = 0x13;
/// Frame kind of [`NativeFrame::Ping`].
pub const FRAME_PING: u8 = 0x14;
/// Frame kind of [`NativeFrame::Pong`].
pub const FRAME_PONG: u8 = 0x15;

/// Longest cluster name or host name accepted in a greeting, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest reject detail accepted, in bytes.
pub const MAX_DETAIL_LEN: usize = 1024;

/// Capability bit: this node has a shared-secret cookie configured.
pub const CAP_COOKIE: u32 = 1 << 0;
/// Capability bit: this node answers keepalive pings.
pub const CAP_KEEPALIVE: u32 = 1 << 1;
/// Capability bit: this node never listens (client only).
pub const CAP_CLIENT_ONLY: u32 = 1 << 2;

/// A node's unique id, drawn at random when the node starts unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        NodeId(rand::random())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a decoded native frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeError {
    /// The frame kind is not a native kind.
    #[error("frame kind 0x{0:02x} is not a native handshake or keepalive frame")]
    UnknownKind(u8),
    /// The body ended before a field could be read.
    #[error("native frame 0x{kind:02x} truncated: needed {needed} more bytes for {field}")]
    Truncated {
        /// Frame kind.
        kind: u8,
        /// The field being read.
        field: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The greeting did not start with [`NATIVE_MAGIC`].
    #[error("bad magic {0:02x?}: not a Herald native greeting")]
    BadMagic([u8; 4]),
    /// The greeting announced a protocol version this node does not speak.
    #[error("unsupported native protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// A string field was not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A length-prefixed field was longer than allowed.
    #[error("field {field} is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A proof had a length other than 0 or 32.
    #[error("proof length {0} is neither 0 nor 32")]
    BadProofLength(usize),
    /// Unread bytes followed the last field.
    #[error("{0} trailing bytes after native frame 0x{1:02x}")]
    TrailingBytes(usize, u8),
}

/// Why a handshake was refused, sent in a [`NativeFrame::Reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The peer belongs to another cluster.
    WrongCluster,
    /// The peer speaks an incompatible protocol version.
    BadVersion,
    /// The peer is this very node (same node id).
    SelfConnect,
    /// The shared-secret cookie check failed (or only one side has a cookie).
    BadCookie,
    /// A newer incarnation of this node id is already connected.
    StaleIncarnation,
    /// Another node id already holds the claimed address.
    AddressInUse,
    /// The simultaneous-connect race was lost; the other connection is kept.
    Duplicate,
    /// The peer sent something that is not a valid handshake message.
    Malformed,
    /// The node is shutting down.
    ShuttingDown,
    /// A code this version does not know.
    Unknown(u8),
}

impl RejectReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            RejectReason::WrongCluster => 1,
            RejectReason::BadVersion => 2,
            RejectReason::SelfConnect => 3,
            RejectReason::BadCookie => 4,
            RejectReason::StaleIncarnation => 5,
            RejectReason::AddressInUse => 6,
            RejectReason::Duplicate => 7,
            RejectReason::Malformed => 8,
            RejectReason::ShuttingDown => 9,
            RejectReason::Unknown(c) => c,
        }
    }

    /// The reason for a wire code.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => RejectReason::WrongCluster,
            2 => RejectReason::BadVersion,
            3 => RejectReason::SelfConnect,
            4 => RejectReason::BadCookie,
            5 => RejectReason::StaleIncarnation,
            6 => RejectReason::AddressInUse,
            7 => RejectReason::Duplicate,
            8 => RejectReason::Malformed,
            9 => RejectReason::ShuttingDown,
            c => RejectReason::Unknown(c),
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::WrongCluster => f.write_str("wrong cluster"),
            RejectReason::BadVersion => f.write_str("incompatible protocol version"),
            RejectReason::SelfConnect => f.write_str("self-connect"),
            RejectReason::BadCookie => f.write_str("bad cookie"),
            RejectReason::StaleIncarnation => f.write_str("stale incarnation"),
            RejectReason::AddressInUse => f.write_str("address in use by another node"),
            RejectReason::Duplicate => f.write_str("duplicate connection"),
            RejectReason::Malformed => f.write_str("malformed handshake"),
            RejectReason::ShuttingDown => f.write_str("shutting down"),
            RejectReason::Unknown(c) => write!(f, "unknown reason {c}"),
        }
    }
}

/// One side's self-description, sent in `Hello` and `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Protocol version.
    pub version: u16,
    /// Capability bits (`CAP_*`).
    pub capabilities: u32,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The sender's incarnation (bumped on every restart).
    pub incarnation: u64,
    /// A fresh random nonce for the cookie challenge.
    pub nonce: [u8; 16],
    /// Cluster name.
    pub cluster: String,
    /// Advertised `(host, port)`; port 0 means "client only, do not dial me".
    pub host: String,
    /// Advertised port.
    pub port: u16,
}

/// A native control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeFrame {
    /// Dialer's greeting.
    Hello(Greeting),
    /// Acceptor's greeting with its cookie proof (empty when no cookie).
    Welcome {
        /// The acceptor's greeting.
        greeting: Greeting,
        /// HMAC-SHA256 proof, when a cookie is configured.
        proof: Option<[u8; 32]>,
    },
    /// Dialer's cookie proof (empty when no cookie); completes the handshake.
    Confirm {
        /// HMAC-SHA256 proof, when a cookie is configured.
        proof: Option<[u8; 32]>,
    },
    /// A refusal, after which the sender closes the connection.
    Reject {
        /// Why.
        reason: RejectReason,
        /// Human-readable detail.
        detail: String,
    },
    /// Keepalive request carrying an opaque value echoed by the pong.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
}

impl NativeFrame {
    /// Is `kind` one of the native frame kinds?
    pub fn is_native_kind(kind: u8) -> bool {
        (FRAME_HELLO..=FRAME_PONG).contains(&kind)
    }

    /// The frame kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            NativeFrame::Hello(_) => FRAME_HELLO,
            NativeFrame::Welcome { .. } => FRAME_WELCOME,
            NativeFrame::Confirm { .. } => FRAME_CONFIRM,
            NativeFrame::Reject { .. } => FRAME_REJECT,
            NativeFrame::Ping(_) => FRAME_PING,
            NativeFrame::Pong(_) => FRAME_PONG,
        }
    }

    /// Encodes the body; returns `(kind, body)`.
    pub fn encode(&self) -> (u8, Bytes) {
        let mut b = BytesMut::with_capacity(96);
        match self {
            NativeFrame::Hello(g) => put_greeting(&mut b, g),
            NativeFrame::Welcome { greeting, proof } => {
                put_greeting(&mut b, greeting);
                put_proof(&mut b, proof);
            }
            NativeFrame::Confirm { proof } => put_proof(&mut b, proof),
            NativeFrame::Reject { reason, detail } => {
                b.put_u8(reason.code());
                put_str(&mut b, truncate_utf8(detail, MAX_DETAIL_LEN));
            }
            NativeFrame::Ping(v) | NativeFrame::Pong(v) => b.put_u64(*v),
        }
        (self.kind(), b.freeze())
    }

    /// Appends the whole frame (`u32 LEN | u8 KIND | BODY`) to `dst`.
    pub fn encode_frame(&self, dst: &mut BytesMut) {
        let (kind, body) = self.encode();
        dst.reserve(5 + body.len());
        dst.put_u32(u32::try_from(body.len() + 1).unwrap_or(u32::MAX));
        dst.put_u8(kind);
        dst.extend_from_slice(&body);
    }

    /// Decodes a frame body of the given kind. Never panics, whatever the bytes.
    pub fn decode(kind: u8, body: &[u8]) -> Result<NativeFrame, NativeError> {
        let mut r = Reader { kind, buf: body };
        let frame = match kind {
            FRAME_HELLO => NativeFrame::Hello(r.greeting()?),
            FRAME_WELCOME => {
                let greeting = r.greeting()?;
                let proof = r.proof()?;
                NativeFrame::Welcome { greeting, proof }
            }
            FRAME_CONFIRM => NativeFrame::Confirm { proof: r.proof()? },
            FRAME_REJECT => {
                let reason = RejectReason::from_code(r.u8("reason")?);
                let detail = r.string("detail", MAX_DETAIL_LEN)?;
                NativeFrame::Reject { reason, detail }
            }
            FRAME_PING => NativeFrame::Ping(r.u64("ping")?),
            FRAME_PONG => NativeFrame::Pong(r.u64("pong")?),
            other => return Err(NativeError::UnknownKind(other)),
        };
        if !r.buf.is_empty() {
            return Err(NativeError::TrailingBytes(r.buf.len(), kind));
        }
        Ok(frame)
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(b: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    b.put_u16(len);
    b.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_greeting(b: &mut BytesMut, g: &Greeting) {
    b.extend_from_slice(&NATIVE_MAGIC);
    b.put_u16(g.version);
    b.put_u32(g.capabilities);
    b.put_u64(g.node_id.0);
    b.put_u64(g.incarnation);
    b.extend_from_slice(&g.nonce);
    put_str(b, truncate_utf8(&g.cluster, MAX_NAME_LEN));
    put_str(b, truncate_utf8(&g.host, MAX_NAME_LEN));
    b.put_u16(g.port);
}

fn put_proof(b: &mut BytesMut, proof: &Option<[u8; 32]>) {
    match proof {
        Some(p) => {
            b.put_u8(32);
            b.extend_from_slice(p);
        }
        None => b.put_u8(0),
    }
}

struct Reader<'a> {
    kind: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn need(&self, field: &'static str, n: usize) -> Result<(), NativeError> {
        if self.buf.len() < n {
            return Err(NativeError::Truncated {
                kind: self.kind,
                field,
                needed: n - self.buf.len(),
            });
        }
        Ok(())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, NativeError> {
        self.need(field, 1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, NativeError> {
        self.need(field, 2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, NativeError> {
        self.need(field, 4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, NativeError> {
        self.need(field, 8)?;
        Ok(self.buf.get_u64())
    }
    fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], NativeError> {
        self.need(field, n)?;
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn string(&mut self, field: &'static str, max: usize) -> Result<String, NativeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(NativeError::TooLong { field, len, max });
        }
        let raw = self.bytes(field, len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| NativeError::NotUtf8(field))
    }
    fn greeting(&mut self) -> Result<Greeting, NativeError> {
        let magic = self.bytes("magic", 4)?;
        let magic: [u8; 4] = [magic[0], magic[1], magic[2], magic[3]];
        if magic != NATIVE_MAGIC {
            return Err(NativeError::BadMagic(magic));
        }
        let version = self.u16("version")?;
        if version != PROTOCOL_VERSION {
            return Err(NativeError::UnsupportedVersion(version));
        }
        let capabilities = self.u32("capabilities")?;
        let node_id = NodeId(self.u64("node_id")?);
        let incarnation = self.u64("incarnation")?;
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(self.bytes("nonce", 16)?);
        let cluster = self.string("cluster", MAX_NAME_LEN)?;
        let host = self.string("host", MAX_NAME_LEN)?;
        let port = self.u16("port")?;
        Ok(Greeting {
            version,
            capabilities,
            node_id,
            incarnation,
            nonce,
            cluster,
            host,
            port,
        })
    }
    fn proof(&mut self) -> Result<Option<[u8; 32]>, NativeError> {
        match usize::from(self.u8("proof length")?) {
            0 => Ok(None),
            32 => {
                let mut p = [0u8; 32];
                p.copy_from_slice(self.bytes("proof", 32)?);
                Ok(Some(p))
            }
            n => Err(NativeError::BadProofLength(n)),
        }
    }
}

/// What one side of the handshake knows about itself.
#[derive(Clone)]
pub struct HandshakeConfig {
    /// Cluster name; peers of another cluster are rejected.
    pub cluster: String,
    /// This node's id.
    pub node_id: NodeId,
    /// This node's incarnation.
    pub incarnation: u64,
    /// Advertised host.
    pub host: String,
    /// Advertised port (0 for client-only nodes).
    pub port: u16,
    /// Extra capability bits (the cookie bit is set automatically).
    pub capabilities: u32,
    /// Optional shared secret; when set, the peer must prove it knows it.
    pub cookie: Option<Arc<[u8]>>,
}

impl fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .field("incarnation", &self.incarnation)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("capabilities", &self.capabilities)
            .field("cookie", &self.cookie.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HandshakeConfig {
    /// A configuration with no advertised address and no cookie.
    pub fn new(cluster: impl Into<String>, node_id: NodeId, incarnation: u64) -> Self {
        HandshakeConfig {
            cluster: cluster.into(),
            node_id,
            incarnation,
            host: String::new(),
            port: 0,
            capabilities: CAP_KEEPALIVE,
            cookie: None,
        }
    }

    /// Sets the advertised address.
    pub fn with_advertised(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host = host.into();
        self.port = port;
        self
    }

    /// Sets the shared-secret cookie.
    pub fn with_cookie(mut self, cookie: impl Into<Vec<u8>>) -> Self {
        self.cookie = Some(Arc::from(cookie.into()));
        self
    }

    fn greeting(&self, nonce: [u8; 16]) -> Greeting {
        let mut capabilities = self.capabilities;
        if self.cookie.is_some() {
            capabilities |= CAP_COOKIE;
        }
        Greeting {
            version: PROTOCOL_VERSION,
            capabilities,
            node_id: self.node_id,
            incarnation: self.incarnation,
            nonce,
            cluster: self.cluster.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// What the handshake established about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id (its identity).
    pub node_id: NodeId,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's advertised host.
    pub host: String,
    /// The peer's advertised port (0: client only).
    pub port: u16,
    /// The peer's capability bits.
    pub capabilities: u32,
}

impl PeerInfo {
    fn from_greeting(g: &Greeting) -> Self {
        PeerInfo {
            node_id: g.node_id,
            incarnation: g.incarnation,
            host: g.host.clone(),
            port: g.port,
            capabilities: g.capabilities,
        }
    }
}

/// Why a handshake failed on this side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer refused us.
    #[error("peer rejected the handshake: {reason} ({detail})")]
    RejectedByPeer {
        /// Its reason.
        reason: RejectReason,
        /// Its detail text.
        detail: String,
    },
    /// We refused the peer.
    #[error("handshake refused: {reason}: {detail}")]
    Refused {
        /// Our reason.
        reason: RejectReason,
        /// Why, with the offending values.
        detail: String,
    },
    /// The peer sent a frame that does not fit this point of the handshake.
    #[error("unexpected frame 0x{kind:02x} during the handshake (expected {expected})")]
    Unexpected {
        /// The frame kind received.
        kind: u8,
        /// What was expected.
        expected: &'static str,
    },
}

/// The result of feeding one frame to a handshake state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this frame and wait for the next one.
    Send(NativeFrame),
    /// Send this frame; the handshake is complete.
    SendAndDone(NativeFrame, PeerInfo),
    /// The handshake is complete.
    Done(PeerInfo),
    /// The handshake failed: send `reply` (if any), then close.
    Fail {
        /// A reject to send before closing.
        reply: Option<NativeFrame>,
        /// Why.
        error: HandshakeError,
    },
}

fn refuse(reason: RejectReason, detail: String) -> Step {
    Step::Fail {
        reply: Some(NativeFrame::Reject {
            reason,
            detail: detail.clone(),
        }),
        error: HandshakeError::Refused { reason, detail },
    }
}

type HmacSha256 = Hmac<Sha256>;

fn proof(
    cookie: &[u8],
    role: &[u8],
    first: &[u8; 16],
    second: &[u8; 16],
    ids: (NodeId, NodeId),
) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(cookie) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(b"herald-native-v1 ");
    mac.update(role);
    mac.update(first);
    mac.update(second);
    mac.update(&ids.0.0.to_be_bytes());
    mac.update(&ids.1.0.to_be_bytes());
    mac.finalize().into_bytes().into()
}

fn verify(
    cookie: &[u8],
    role: &[u8],
    first: &[u8; 16],
    second: &[u8; 16],
    ids: (NodeId, NodeId),
    given: &[u8; 32],
) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(cookie) else {
        return false;
    };
    mac.update(b"herald-native-v1 ");
    mac.update(role);
    mac.update(first);
    mac.update(second);
    mac.update(&ids.0.0.to_be_bytes());
    mac.update(&ids.1.0.to_be_bytes());
    mac.verify_slice(given).is_ok()
}

/// Checks a peer greeting against our configuration (cluster, self-connect, cookie presence).
fn check_greeting(cfg: &HandshakeConfig, g: &Greeting) -> Result<(), (RejectReason, String)> {
    if g.cluster != cfg.cluster {
        return Err((
            RejectReason::WrongCluster,
            format!(
                "peer is in cluster {:?}, this node is in {:?}",
                g.cluster, cfg.cluster
            ),
        ));
    }
    if g.node_id == cfg.node_id {
        return Err((
            RejectReason::SelfConnect,
            format!("peer has this node's own id {}", g.node_id),
        ));
    }
    let peer_has_cookie = g.capabilities & CAP_COOKIE != 0;
    match (cfg.cookie.is_some(), peer_has_cookie) {
        (true, false) => Err((
            RejectReason::BadCookie,
            format!(
                "node {} has no cookie but this node requires one",
                g.node_id
            ),
        )),
        (false, true) => Err((
            RejectReason::BadCookie,
            format!(
                "node {} uses a cookie but this node has none configured",
                g.node_id
            ),
        )),
        _ => Ok(()),
    }
}

fn version_reject(kind: u8, err: &NativeError) -> Step {
    match err {
        NativeError::UnsupportedVersion(v) => refuse(
            RejectReason::BadVersion,
            format!("peer speaks native protocol version {v}, this node speaks {PROTOCOL_VERSION}"),
        ),
        other => refuse(
            RejectReason::Malformed,
            format!("bad frame 0x{kind:02x}: {other}"),
        ),
    }
}

/// Decodes a raw handshake frame and feeds it to a state machine, turning decode
/// errors into the right reject (bad version or malformed).
pub fn decode_for_handshake(kind: u8, body: &[u8]) -> Result<NativeFrame, Box<Step>> {
    NativeFrame::decode(kind, body).map_err(|e| Box::new(version_reject(kind, &e)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialerState {
    AwaitWelcome,
    Finished,
}

/// The dialing side of a native handshake.
#[derive(Debug)]
pub struct Dialer {
    cfg: HandshakeConfig,
    nonce: [u8; 16],
    state: DialerState,
}

impl Dialer {
    /// Starts a handshake with a fresh random nonce; returns the machine and the `Hello` to send.
    pub fn start(cfg: HandshakeConfig) -> (Self, NativeFrame) {
        Self::start_with_nonce(cfg, rand::random())
    }

    /// Starts a handshake with the given nonce (deterministic tests).
    pub fn start_with_nonce(cfg: HandshakeConfig, nonce: [u8; 16]) -> (Self, NativeFrame) {
        let hello = NativeFrame::Hello(cfg.greeting(nonce));
        (
            Dialer {
                cfg,
                nonce,
                state: DialerState::AwaitWelcome,
            },
            hello,
        )
    }

    /// Feeds the acceptor's answer.
    pub fn on_frame(&mut self, frame: NativeFrame) -> Step {
        if self.state == DialerState::Finished {
            return Step::Fail {
                reply: None,
                error: HandshakeError::Unexpected {
                    kind: frame.kind(),
                    expected: "nothing (handshake finished)",
                },
            };
        }
        self.state = DialerState::Finished;
        match frame {
            NativeFrame::Welcome { greeting, proof: p } => {
                if let Err((reason, detail)) = check_greeting(&self.cfg, &greeting) {
                    return refuse(reason, detail);
                }
                let ids = (self.cfg.node_id, greeting.node_id);
                let confirm = match &self.cfg.cookie {
                    Some(cookie) => {
                        let ok = p.as_ref().is_some_and(|given| {
                            verify(
                                cookie,
                                b"acceptor",
                                &self.nonce,
                                &greeting.nonce,
                                ids,
                                given,
                            )
                        });
                        if !ok {
                            return refuse(
                                RejectReason::BadCookie,
                                format!(
                                    "node {} did not prove it knows the cookie",
                                    greeting.node_id
                                ),
                            );
                        }
                        Some(proof(cookie, b"dialer", &greeting.nonce, &self.nonce, ids))
                    }
                    None => None,
                };
                Step::SendAndDone(
                    NativeFrame::Confirm { proof: confirm },
                    PeerInfo::from_greeting(&greeting),
                )
            }
            NativeFrame::Reject { reason, detail } => Step::Fail {
                reply: None,
                error: HandshakeError::RejectedByPeer { reason, detail },
            },
            other => {
                let kind = other.kind();
                Step::Fail {
                    reply: Some(NativeFrame::Reject {
                        reason: RejectReason::Malformed,
                        detail: format!("expected welcome, got frame 0x{kind:02x}"),
                    }),
                    error: HandshakeError::Unexpected {
                        kind,
                        expected: "welcome or reject",
                    },
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum AcceptorState {
    AwaitHello,
    AwaitConfirm { peer: Greeting },
    Finished,
}

/// The accepting side of a native handshake.
#[derive(Debug)]
pub struct Acceptor {
    cfg: HandshakeConfig,
    nonce: [u8; 16],
    state: AcceptorState,
}

impl Acceptor {
    /// A new acceptor with a fresh random nonce.
    pub fn new(cfg: HandshakeConfig) -> Self {
        Self::with_nonce(cfg, rand::random())
    }

    /// A new acceptor with the given nonce (deterministic tests).
    pub fn with_nonce(cfg: HandshakeConfig, nonce: [u8; 16]) -> Self {
        Acceptor {
            cfg,
            nonce,
            state: AcceptorState::AwaitHello,
        }
    }

    /// Feeds one frame. `admit` is asked, once the greeting is valid, whether the node
    /// accepts this peer (stale incarnation, address taken, …); `Some` rejects it.
    pub fn on_frame(
        &mut self,
        frame: NativeFrame,
        admit: &dyn Fn(&PeerInfo) -> Option<(RejectReason, String)>,
    ) -> Step {
        let state = std::mem::replace(&mut self.state, AcceptorState::Finished);
        match (state, frame) {
            (AcceptorState::AwaitHello, NativeFrame::Hello(greeting)) => {
                if let Err((reason, detail)) = check_greeting(&self.cfg, &greeting) {
                    return refuse(reason, detail);
                }
                if let Some((reason, detail)) = admit(&PeerInfo::from_greeting(&greeting)) {
                    return refuse(reason, detail);
                }
                let p = self.cfg.cookie.as_ref().map(|cookie| {
                    proof(
                        cookie,
                        b"acceptor",
                        &greeting.nonce,
                        &self.nonce,
                        (greeting.node_id, self.cfg.node_id),
                    )
                });
                let welcome = NativeFrame::Welcome {
                    greeting: self.cfg.greeting(self.nonce),
                    proof: p,
                };
                self.state = AcceptorState::AwaitConfirm { peer: greeting };
                Step::Send(welcome)
            }
            (AcceptorState::AwaitConfirm { peer }, NativeFrame::Confirm { proof: p }) => {
                if let Some(cookie) = &self.cfg.cookie {
                    let ok = p.as_ref().is_some_and(|given| {
                        verify(
                            cookie,
                            b"dialer",
                            &self.nonce,
                            &peer.nonce,
                            (peer.node_id, self.cfg.node_id),
                            given,
                        )
                    });
                    if !ok {
                        return refuse(
                            RejectReason::BadCookie,
                            format!("node {} did not prove it knows the cookie", peer.node_id),
                        );
                    }
                }
                Step::Done(PeerInfo::from_greeting(&peer))
            }
            (_, NativeFrame::Reject { reason, detail }) => Step::Fail {
                reply: None,
                error: HandshakeError::RejectedByPeer { reason, detail },
            },
            (state, other) => {
                let expected = match state {
                    AcceptorState::AwaitHello => "hello",
                    AcceptorState::AwaitConfirm { .. } => "confirm",
                    AcceptorState::Finished => "nothing (handshake finished)",
                };
                let kind = other.kind();
                Step::Fail {
                    reply: Some(NativeFrame::Reject {
                        reason: RejectReason::Malformed,
                        detail: format!("expected {expected}, got frame 0x{kind:02x}"),
                    }),
                    error: HandshakeError::Unexpected { kind, expected },
                }
            }
        }
    }
}

/// Fuzzing entry point: decodes `data` as `[kind, body..]` and drives an acceptor with it.
/// Must never panic, whatever the input.
pub fn fuzz_native_handshake(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let cfg = HandshakeConfig::new("fuzz", NodeId(7), 1).with_cookie(b"k".to_vec());
    let mut acceptor = Acceptor::with_nonce(cfg.clone(), [1; 16]);
    // Feed successive chunks: the first is one frame, the rest another.
    let split = rest.len() / 2;
    for (k, body) in [(kind, &rest[..split]), (kind ^ 0x02, &rest[split..])] {
        match NativeFrame::decode(k, body) {
            Ok(frame) => {
                let (k2, b2) = frame.encode();
                // Re-encoding a decoded frame must decode to the same frame.
                if NativeFrame::decode(k2, &b2).as_ref() != Ok(&frame) {
                    panic!("native frame did not round-trip");
                }
                let _ = acceptor.on_frame(frame.clone(), &|_| None);
                let (mut dialer, _) = Dialer::start_with_nonce(cfg.clone(), [2; 16]);
                let _ = dialer.on_frame(frame);
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(f: NativeFrame) -> NativeFrame {
        let (k, b) = f.encode();
        match NativeFrame::decode(k, &b) {
            Ok(f) => f,
            Err(e) => panic!("round trip failed: {e}"),
        }
    }

    fn pair(a: HandshakeConfig, b: HandshakeConfig) -> (Step, Option<Step>) {
        let (mut d, hello) = Dialer::start(a);
        let mut acc = Acceptor::new(b);
        let welcome = match acc.on_frame(wire(hello), &|_| None) {
            Step::Send(w) => w,
            other => return (other, None),
        };
        match d.on_frame(wire(welcome)) {
            Step::SendAndDone(confirm, _) => {
                let s = acc.on_frame(wire(confirm), &|_| None);
                (s, None)
            }
            other => (other, None),
        }
    }

    fn reason_of(step: &Step) -> Option<RejectReason> {
        match step {
            Step::Fail {
                error: HandshakeError::Refused { reason, .. },
                ..
            } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn happy_path_without_cookie() {
        let (s, _) = pair(
            HandshakeConfig::new("c", NodeId(1), 3).with_advertised("10.0.0.1", 25520),
            HandshakeConfig::new("c", NodeId(2), 4),
        );
        match s {
            Step::Done(p) => {
                assert_eq!(p.node_id, NodeId(1));
                assert_eq!(p.incarnation, 3);
                assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 25520));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn happy_path_with_cookie() {
        let (s, _) = pair(
            HandshakeConfig::new("c", NodeId(1), 1).with_cookie(b"abc".to_vec()),
            HandshakeConfig::new("c", NodeId(2), 1).with_cookie(b"abc".to_vec()),
        );
        assert!(
            matches!(s, Step::Done(ref p) if p.node_id == NodeId(1)),
            "{s:?}"
        );
    }

    #[test]
    fn wrong_cookie_is_rejected_by_the_dialer() {
        // The acceptor's proof fails first, on the dialer side.
        let (s, _) = pair(
            HandshakeConfig::new("c", NodeId(1), 1).with_cookie(b"abc".to_vec()),
            HandshakeConfig::new("c", NodeId(2), 1).with_cookie(b"xyz".to_vec()),
        );
        assert_eq!(reason_of(&s), Some(RejectReason::BadCookie));
    }

    #[test]
    fn forged_confirm_is_rejected_by_the_acceptor() {
        let b = HandshakeConfig::new("c", NodeId(2), 1).with_cookie(b"abc".to_vec());
        let a = HandshakeConfig::new("c", NodeId(1), 1).with_cookie(b"abc".to_vec());
        let (_, hello) = Dialer::start(a);
        let mut acc = Acceptor::new(b);
        assert!(matches!(acc.on_frame(hello, &|_| None), Step::Send(_)));
        let s = acc.on_frame(
            NativeFrame::Confirm {
                proof: Some([9; 32]),
            },
            &|_| None,
        );
        assert_eq!(reason_of(&s), Some(RejectReason::BadCookie));
    }

    #[test]
    fn cookie_on_one_side_only_is_rejected() {
        let (s, _) = pair(
            HandshakeConfig::new("c", NodeId(1), 1),
            HandshakeConfig::new("c", NodeId(2), 1).with_cookie(b"abc".to_vec()),
        );
        assert_eq!(reason_of(&s), Some(RejectReason::BadCookie));
    }

    #[test]
    fn wrong_cluster_and_self_connect_are_rejected() {
        let (s, _) = pair(
            HandshakeConfig::new("a", NodeId(1), 1),
            HandshakeConfig::new("b", NodeId(2), 1),
        );
        assert_eq!(reason_of(&s), Some(RejectReason::WrongCluster));
        let (s, _) = pair(
            HandshakeConfig::new("a", NodeId(5), 1),
            HandshakeConfig::new("a", NodeId(5), 1),
        );
        assert_eq!(reason_of(&s), Some(RejectReason::SelfConnect));
    }

    #[test]
    fn admit_hook_can_refuse() {
        let (_, hello) = Dialer::start(HandshakeConfig::new("c", NodeId(1), 1));
        let mut acc = Acceptor::new(HandshakeConfig::new("c", NodeId(2), 1));
        let s = acc.on_frame(hello, &|p| {
            Some((RejectReason::StaleIncarnation, format!("{}", p.incarnation)))
        });
        assert_eq!(reason_of(&s), Some(RejectReason::StaleIncarnation));
    }

    #[test]
    fn bad_version_maps_to_bad_version_reject() {
        let (_, hello) = Dialer::start(HandshakeConfig::new("c", NodeId(1), 1));
        let (kind, body) = hello.encode();
        let mut raw = body.to_vec();
        raw[4] = 0;
        raw[5] = 9; // version 9
        match decode_for_handshake(kind, &raw) {
            Err(step) => assert_eq!(reason_of(&step), Some(RejectReason::BadVersion)),
            Ok(f) => panic!("decoded {f:?}"),
        }
        raw[0] = b'X';
        match decode_for_handshake(kind, &raw) {
            Err(step) => assert_eq!(reason_of(&step), Some(RejectReason::Malformed)),
            Ok(f) => panic!("decoded {f:?}"),
        }
    }

    #[test]
    fn unexpected_frames_fail() {
        let mut acc = Acceptor::new(HandshakeConfig::new("c", NodeId(2), 1));
        let s = acc.on_frame(NativeFrame::Ping(1), &|_| None);
        assert!(matches!(
            s,
            Step::Fail {
                error: HandshakeError::Unexpected {
                    kind: FRAME_PING,
                    ..
                },
                ..
            }
        ));
        let (mut d, _) = Dialer::start(HandshakeConfig::new("c", NodeId(1), 1));
        let s = d.on_frame(NativeFrame::Reject {
            reason: RejectReason::ShuttingDown,
            detail: "bye".into(),
        });
        assert!(matches!(
            s,
            Step::Fail {
                error: HandshakeError::RejectedByPeer {
                    reason: RejectReason::ShuttingDown,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn every_frame_round_trips_and_truncations_error() {
        let g = HandshakeConfig::new("clu", NodeId(9), 2)
            .with_advertised("h", 1)
            .greeting([3; 16]);
        let frames = vec![
            NativeFrame::Hello(g.clone()),
            NativeFrame::Welcome {
                greeting: g,
                proof: Some([4; 32]),
            },
            NativeFrame::Confirm { proof: None },
            NativeFrame::Reject {
                reason: RejectReason::Unknown(77),
                detail: "zoë".into(),
            },
            NativeFrame::Ping(5),
            NativeFrame::Pong(6),
        ];
        for f in frames {
            let (k, b) = f.encode();
            assert_eq!(NativeFrame::decode(k, &b), Ok(f.clone()));
            for cut in 0..b.len() {
                assert!(
                    NativeFrame::decode(k, &b[..cut]).is_err(),
                    "{f:?} cut {cut}"
                );
            }
            let mut longer = b.to_vec();
            longer.push(0);
            assert_eq!(
                NativeFrame::decode(k, &longer),
                Err(NativeError::TrailingBytes(1, k))
            );
        }
        assert_eq!(
            NativeFrame::decode(0x01, b""),
            Err(NativeError::UnknownKind(1))
        );
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        for seed in 0u8..=255 {
            let data: Vec<u8> = (0..64u8)
                .map(|i| i.wrapping_mul(seed).wrapping_add(seed))
                .collect();
            fuzz_native_handshake(&data);
        }
    }
}
