//! casty's TCP stream frames: `u32 BE len | u8 type | body`, `len` = 1 + body length.
//!
//! - type [`FRAME_HANDSHAKE`] (0x00): body is `{"host": "..", "port": N}` ([`Handshake`]);
//! - type [`FRAME_MESSAGE`] (0x01): body is an [`Envelope`];
//! - any other type is surfaced as [`Frame::Other`] so a transport can skip it
//!   (casty ignores them) or use it (Herald's native mode uses kinds `>= 0x10`).
//!
//! A frame whose body fails to decode is returned as [`Frame::Malformed`]: the
//! stream stays in sync (the frame's length was valid), so a transport logs the
//! error and keeps reading. See [`FrameCodec`](crate::FrameCodec).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use crate::envelope::Envelope;
use crate::error::{WireError, json_kind};
use crate::pyjson;

/// Frame type of a handshake.
pub const FRAME_HANDSHAKE: u8 = 0x00;
/// Frame type of a message envelope.
pub const FRAME_MESSAGE: u8 = 0x01;
/// Default maximum of the frame length field (16 MiB, as casty's `d703fc9`).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
/// Bytes of the frame length prefix.
pub const FRAME_LEN_PREFIX: usize = 4;

const HS: &str = "handshake";

/// The handshake body: the address the sender *claims* (casty trusts it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
}

impl Handshake {
    /// Builds a handshake.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Handshake {
            host: host.into(),
            port,
        }
    }

    /// Length of the JSON body.
    pub fn encoded_len(&self) -> usize {
        br#"{"host": , "port": }"#.len() + pyjson::escaped_len(&self.host) + decimal_len(self.port)
    }

    /// Writes the JSON body, byte-exact with casty: `{"host": "127.0.0.1", "port": 25520}`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_slice(br#"{"host": "#);
        pyjson::write_str(dst, &self.host);
        dst.put_slice(br#", "port": "#);
        dst.put_slice(self.port.to_string().as_bytes());
        dst.put_u8(b'}');
    }

    /// Encodes the JSON body into a fresh buffer.
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut dst);
        dst.freeze()
    }

    /// Decodes a JSON body (any key order and whitespace; extra keys ignored as casty does).
    ///
    /// # Errors
    /// [`WireError::InvalidJson`], [`WireError::NotAnObject`], [`WireError::MissingField`],
    /// [`WireError::WrongFieldType`] or [`WireError::PortOutOfRange`].
    pub fn decode(body: &[u8]) -> Result<Handshake, WireError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| WireError::InvalidJson {
            what: HS,
            message: e.to_string(),
        })?;
        let Value::Object(mut map) = value else {
            return Err(WireError::NotAnObject {
                what: HS,
                found: json_kind(&value).to_owned(),
            });
        };
        let mut field = |key| {
            map.remove(key)
                .ok_or(WireError::MissingField { what: HS, key })
        };
        let host = match field("host")? {
            Value::String(s) => s,
            other => return Err(WireError::wrong_field_type(HS, "host", "a string", &other)),
        };
        let port = match field("port")? {
            Value::Number(n) if n.is_u64() || n.is_i64() => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| WireError::PortOutOfRange {
                    port: n.to_string(),
                })?,
            other => {
                return Err(WireError::wrong_field_type(
                    HS,
                    "port",
                    "an integer",
                    &other,
                ));
            }
        };
        Ok(Handshake { host, port })
    }
}

fn decimal_len(mut n: u16) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// One frame of a casty TCP stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Type 0x00.
    Handshake(Handshake),
    /// Type 0x01.
    Message(Envelope),
    /// Any other type: surfaced, not an error (casty ignores them).
    Other {
        /// The type byte.
        kind: u8,
        /// The body (zero-copy).
        body: Bytes,
    },
    /// A handshake or message frame whose body did not decode. The frame was
    /// consumed whole, so the stream is still in sync: log and skip it.
    Malformed {
        /// The type byte.
        kind: u8,
        /// The raw body.
        body: Bytes,
        /// Why the body was rejected.
        error: WireError,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Handshake(_) => FRAME_HANDSHAKE,
            Frame::Message(_) => FRAME_MESSAGE,
            Frame::Other { kind, .. } | Frame::Malformed { kind, .. } => *kind,
        }
    }

    /// Length of the body (what follows the type byte).
    pub fn body_len(&self) -> usize {
        match self {
            Frame::Handshake(h) => h.encoded_len(),
            Frame::Message(e) => e.encoded_len(),
            Frame::Other { body, .. } | Frame::Malformed { body, .. } => body.len(),
        }
    }

    /// Full encoded length: prefix + type byte + body.
    pub fn encoded_len(&self) -> usize {
        FRAME_LEN_PREFIX + 1 + self.body_len()
    }

    /// Builds a frame from its type byte and body. Never fails: a bad body
    /// becomes [`Frame::Malformed`].
    pub fn from_parts(kind: u8, body: Bytes) -> Frame {
        match kind {
            FRAME_HANDSHAKE => match Handshake::decode(&body) {
                Ok(h) => Frame::Handshake(h),
                Err(error) => Frame::Malformed { kind, body, error },
            },
            FRAME_MESSAGE => match Envelope::decode_or_return(body, usize::MAX) {
                Ok(env) => Frame::Message(env),
                Err((error, body)) => Frame::Malformed { kind, body, error },
            },
            _ => Frame::Other { kind, body },
        }
    }

    /// Appends the frame (length prefix, type, body) without a size check.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        let body_len = self.body_len();
        dst.reserve(FRAME_LEN_PREFIX + 1 + body_len);
        dst.put_u32(u32::try_from(body_len + 1).unwrap_or(u32::MAX));
        dst.put_u8(self.kind());
        match self {
            Frame::Handshake(h) => h.encode_into(dst),
            Frame::Message(e) => e.encode_into(dst),
            Frame::Other { body, .. } | Frame::Malformed { body, .. } => dst.put_slice(body),
        }
    }

    /// Encodes into a fresh buffer.
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut dst);
        dst.freeze()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn handshake_is_byte_exact() {
        let h = Handshake::new("127.0.0.1", 25520);
        assert_eq!(&h.encode()[..], br#"{"host": "127.0.0.1", "port": 25520}"#);
        assert_eq!(h.encoded_len(), h.encode().len());
        let f = Frame::Handshake(h.clone()).encode();
        assert_eq!(&f[..5], &[0, 0, 0, 0x25, 0]);
        assert_eq!(Handshake::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn handshake_errors() {
        assert_eq!(
            Handshake::decode(br#"{"host": "h", "port": 70000}"#),
            Err(WireError::PortOutOfRange {
                port: "70000".into()
            })
        );
        assert_eq!(
            Handshake::decode(br#"{"host": "h", "port": -1}"#),
            Err(WireError::PortOutOfRange { port: "-1".into() })
        );
        assert!(matches!(
            Handshake::decode(br#"{"host": "h", "port": "1"}"#),
            Err(WireError::WrongFieldType { .. })
        ));
        assert_eq!(
            Handshake::decode(br#"{"port": 1}"#),
            Err(WireError::MissingField {
                what: "handshake",
                key: "host"
            })
        );
        assert!(matches!(
            Handshake::decode(b"nope"),
            Err(WireError::InvalidJson { .. })
        ));
        assert!(matches!(
            Handshake::decode(b"[1]"),
            Err(WireError::NotAnObject { .. })
        ));
    }

    #[test]
    fn unknown_and_bad_bodies_are_surfaced() {
        assert_eq!(
            Frame::from_parts(7, Bytes::from_static(b"xyz")),
            Frame::Other {
                kind: 7,
                body: Bytes::from_static(b"xyz")
            }
        );
        let f = Frame::from_parts(FRAME_MESSAGE, Bytes::from_static(b"\x00"));
        assert!(matches!(f, Frame::Malformed { kind: 1, .. }), "{f:?}");
        assert_eq!(f.kind(), 1);
    }
}
