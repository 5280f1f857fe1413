//! A [`tokio_util::codec`] framing codec for casty TCP streams.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::envelope::Envelope;
use crate::error::WireError;
use crate::frame::{
    DEFAULT_MAX_FRAME_SIZE, FRAME_HANDSHAKE, FRAME_LEN_PREFIX, FRAME_MESSAGE, Frame, Handshake,
};

/// Encoder/decoder of `u32 BE len | u8 type | body` frames.
///
/// # Errors and stream sync
///
/// The decoder distinguishes two kinds of bad input:
///
/// - **Fatal** (the stream can't be trusted any more): a length above the
///   configured maximum ([`WireError::FrameTooLarge`], checked *before* any
///   buffer is grown), a zero length ([`WireError::EmptyFrame`]), or the stream
///   ending mid-frame ([`WireError::TruncatedFrame`]). These are returned as
///   `Err`; `FramedRead` ends the stream after yielding them, and the
///   connection should be closed.
/// - **Per frame** (the length was fine, only the body is bad): an invalid
///   envelope or handshake is yielded as `Ok(Some(Frame::Malformed { .. }))`
///   after consuming exactly that frame. A transport logs it and keeps reading;
///   the following frames decode normally.
///
/// Unknown frame types are yielded as [`Frame::Other`].
///
/// ```
/// use bytes::BytesMut;
/// use herald_wire::{Envelope, Frame, FrameCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut buf = BytesMut::new();
/// let env = Envelope::new("casty://s@h:1/a", "casty://s@h:2/", "m.T", &b"hi"[..]);
/// codec.encode(&env, &mut buf)?;
/// buf.extend_from_slice(&[0, 0, 0, 2, 0x01, 0xff]); // a message frame with a bad envelope
/// codec.encode(&env, &mut buf)?;
///
/// assert_eq!(codec.decode(&mut buf)?, Some(Frame::Message(env.clone())));
/// assert!(matches!(codec.decode(&mut buf)?, Some(Frame::Malformed { kind: 1, .. })));
/// assert_eq!(codec.decode(&mut buf)?, Some(Frame::Message(env)));
/// assert_eq!(codec.decode(&mut buf)?, None);
/// # Ok::<(), herald_wire::WireError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the default limit ([`DEFAULT_MAX_FRAME_SIZE`], 16 MiB).
    pub fn new() -> Self {
        FrameCodec {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }

    /// Sets the maximum value of the length field (type byte + body), for both
    /// decoding and encoding.
    pub fn with_max_frame_size(mut self, max_frame_size: usize) -> Self {
        self.max_frame_size = max_frame_size;
        self
    }

    /// The configured maximum.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn check_len(&self, len: usize) -> Result<(), WireError> {
        if len > self.max_frame_size {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        Ok(())
    }

    fn put(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.check_len(frame.body_len() + 1)?;
        frame.encode_into(dst);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some(prefix) = src.first_chunk::<FRAME_LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len == 0 {
            tracing::debug!("frame with length 0: stream out of sync");
            return Err(WireError::EmptyFrame);
        }
        if let Err(e) = self.check_len(len) {
            tracing::debug!(
                len,
                max = self.max_frame_size,
                "oversized frame rejected before buffering"
            );
            return Err(e);
        }
        let total = FRAME_LEN_PREFIX + len;
        if src.len() < total {
            // Safe to reserve: `len` is within the configured limit.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(FRAME_LEN_PREFIX);
        let mut body: Bytes = src.split_to(len).freeze();
        let kind = body[0];
        body.advance(1);
        let frame = Frame::from_parts(kind, body);
        if let Frame::Malformed { kind, error, .. } = &frame {
            tracing::debug!(kind, %error, "malformed frame body");
        }
        Ok(Some(frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = match src.first_chunk::<FRAME_LEN_PREFIX>() {
                    Some(p) => FRAME_LEN_PREFIX + u32::from_be_bytes(*p) as usize,
                    None => FRAME_LEN_PREFIX,
                };
                Err(WireError::TruncatedFrame {
                    expected,
                    available: src.len(),
                })
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.put(&item, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.put(item, dst)
    }
}

impl Encoder<&Envelope> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: &Envelope, dst: &mut BytesMut) -> Result<(), WireError> {
        // Write the envelope after a placeholder prefix, then check the size and
        // patch the length: one pass over the strings instead of two.
        let start = dst.len();
        bytes::BufMut::put_u32(dst, 0);
        bytes::BufMut::put_u8(dst, FRAME_MESSAGE);
        item.encode_into(dst);
        let len = dst.len() - start - FRAME_LEN_PREFIX;
        if let Err(e) = self.check_len(len) {
            dst.truncate(start);
            return Err(e);
        }
        // `len` <= max_frame_size; a max above u32::MAX can't be honoured on the wire.
        let Ok(len32) = u32::try_from(len) else {
            dst.truncate(start);
            return Err(WireError::FrameTooLarge {
                len,
                max: u32::MAX as usize,
            });
        };
        dst[start..start + FRAME_LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }
}

impl Encoder<Envelope> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: Envelope, dst: &mut BytesMut) -> Result<(), WireError> {
        Encoder::<&Envelope>::encode(self, &item, dst)
    }
}

impl Encoder<&Handshake> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: &Handshake, dst: &mut BytesMut) -> Result<(), WireError> {
        let body_len = item.encoded_len();
        self.check_len(body_len + 1)?;
        dst.reserve(FRAME_LEN_PREFIX + 1 + body_len);
        bytes::BufMut::put_u32(dst, (body_len + 1) as u32);
        bytes::BufMut::put_u8(dst, FRAME_HANDSHAKE);
        item.encode_into(dst);
        Ok(())
    }
}

/// Iterates over the frames of a complete byte stream (e.g. a capture file).
///
/// Yields `Ok(frame)` for every whole frame (including [`Frame::Malformed`]
/// and [`Frame::Other`]), then at most one `Err` for a fatal problem (oversized
/// or zero length, trailing partial frame), after which it stops.
#[derive(Debug)]
pub struct FrameIter {
    codec: FrameCodec,
    buf: BytesMut,
    done: bool,
}

impl FrameIter {
    /// Starts iterating over `data` with `codec`'s limits.
    pub fn new(codec: FrameCodec, data: impl Into<Bytes>) -> Self {
        let bytes: Bytes = data.into();
        FrameIter {
            codec,
            buf: BytesMut::from(&bytes[..]),
            done: false,
        }
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

impl Iterator for FrameIter {
    type Item = Result<Frame, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.codec.decode_eof(&mut self.buf) {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut codec = FrameCodec::new().with_max_frame_size(100);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        let cap = buf.capacity();
        assert_eq!(
            codec.decode(&mut buf),
            Err(WireError::FrameTooLarge {
                len: 0xffff_ffff,
                max: 100
            })
        );
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn zero_length_is_fatal() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(
            FrameCodec::new().decode(&mut buf),
            Err(WireError::EmptyFrame)
        );
    }

    #[test]
    fn partial_frames_wait_then_complete() {
        let mut codec = FrameCodec::new();
        let full = Frame::Handshake(Handshake::new("h", 1)).encode();
        let mut buf = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = codec.decode(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            if i + 1 < full.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(Frame::Handshake(Handshake::new("h", 1))));
            }
        }
    }

    #[test]
    fn eof_inside_a_frame_is_reported() {
        let mut buf = BytesMut::from(&[0, 0, 0, 9, 1, 2][..]);
        assert_eq!(
            FrameCodec::new().decode_eof(&mut buf),
            Err(WireError::TruncatedFrame {
                expected: 13,
                available: 6
            })
        );
    }

    #[test]
    fn encoder_enforces_the_limit() {
        let mut codec = FrameCodec::new().with_max_frame_size(10);
        let env = Envelope::new("t", "s", "h", Bytes::new());
        let mut dst = BytesMut::new();
        let err = codec.encode(&env, &mut dst).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { max: 10, .. }));
        assert!(dst.is_empty());
    }

    #[test]
    fn iter_lists_frames_then_fatal_error() {
        let mut data = Frame::Other {
            kind: 0x10,
            body: Bytes::from_static(b"n"),
        }
        .encode()
        .to_vec();
        data.extend_from_slice(&[0, 0, 0, 5, 1]);
        let frames: Vec<_> = FrameIter::new(FrameCodec::new(), data).collect();
        assert_eq!(frames.len(), 2);
        assert!(matches!(frames[0], Ok(Frame::Other { kind: 0x10, .. })));
        assert!(matches!(frames[1], Err(WireError::TruncatedFrame { .. })));
    }
}
