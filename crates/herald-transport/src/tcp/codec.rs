//! Splitting a byte stream into raw `u32 BE LEN | u8 KIND | BODY` frames.
//!
//! The body is decoded by the caller (herald-wire for handshakes and envelopes,
//! [`crate::native`] for native control frames), so one bad body costs one frame, not
//! the connection. Only errors of the framing itself (a length of 0, a length above the
//! limit, a stream that ends inside a frame) end the connection.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Framing errors; each one ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A frame announced a length of 0 (no room for the kind byte).
    #[error("invalid frame header: length 0 (a frame holds at least its kind byte)")]
    ZeroLength,
    /// A frame announced more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needs (prefix included).
        need: usize,
    },
}

/// One raw frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The kind byte.
    pub kind: u8,
    /// The body (zero-copy slice of the read buffer).
    pub body: Bytes,
}

/// Tries to split one frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. This is the decoder the fuzz target
/// and the connection reader share.
pub fn split_frame(
    buf: &mut BytesMut,
    max_frame_size: usize,
) -> Result<Option<RawFrame>, FramingError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(FramingError::ZeroLength);
    }
    if len > max_frame_size {
        return Err(FramingError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len);
    let kind = frame[0];
    frame.advance(1);
    Ok(Some(RawFrame {
        kind,
        body: frame.freeze(),
    }))
}

/// Fuzzing entry point for the TCP read path: splits `data` into frames (64 KiB limit)
/// and decodes each body as the connection reader would (casty handshake, envelope,
/// native control frame). Must never panic, whatever the input.
pub fn fuzz_tcp_stream(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut frames = 0usize;
    while let Ok(Some(frame)) = split_frame(&mut buf, 64 * 1024) {
        frames += 1;
        // Invariant: a split frame never exceeds what was buffered.
        assert!(frame.body.len() < data.len());
        match frame.kind {
            herald_wire::FRAME_HANDSHAKE => {
                let _ = herald_wire::Handshake::decode(&frame.body);
            }
            herald_wire::FRAME_MESSAGE => {
                let _ = herald_wire::Envelope::decode(frame.body);
            }
            k => {
                let _ = crate::native::NativeFrame::decode(k, &frame.body);
            }
        }
    }
    assert!(frames <= data.len() / 5 + 1);
}

/// Read side of a connection: a reader plus its buffers.
///
/// Once the first frame of the read buffer is complete, everything read is moved out
/// in one piece (`ready`) and frames are handed out as zero-copy slices of it, each
/// header checked as its frame is taken, so a read of many small frames costs one
/// split and one pass. An incomplete frame at the end of `ready` goes back to the read
/// buffer (a copy of less than one frame, once per read). The read size adapts: it
/// doubles up to 256 KiB while reads fill the buffer and halves back toward 4 KiB after
/// short reads, so an idle connection holds at most a few KiB.
pub(crate) struct FrameReader<R> {
    rd: R,
    /// Bytes read and not yet moved to `ready`; starts at a frame boundary.
    buf: BytesMut,
    /// Frames not handed out yet, possibly ending inside a frame; starts at a frame
    /// boundary.
    ready: Bytes,
    chunk: usize,
    max: usize,
}

/// Errors of [`FrameReader::next`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

const MIN_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 256 * 1024;

/// The length announced by the frame header at the front of `buf` (`None`: fewer than
/// 4 bytes), checked: zero and oversized lengths are errors.
fn front_len(buf: &[u8], max: usize) -> Result<Option<usize>, FramingError> {
    let Some(p) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*p) as usize;
    if len == 0 {
        return Err(FramingError::ZeroLength);
    }
    if len > max {
        return Err(FramingError::TooLarge { len, max });
    }
    Ok(Some(len))
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(rd: R, max: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::new(),
            ready: Bytes::new(),
            chunk: MIN_CHUNK,
            max,
        }
    }

    /// `true` when a complete frame is waiting in `ready` ([`FrameReader::try_next`]
    /// returns it, or its header's error, without reading).
    pub(crate) fn has_ready(&self) -> bool {
        self.ready
            .first_chunk::<4>()
            .is_some_and(|p| self.ready.len() - 4 >= u32::from_be_bytes(*p) as usize)
    }

    /// The next complete frame already buffered, without reading; `Ok(None)` when more
    /// bytes are needed ([`FrameReader::fill`]).
    #[inline]
    pub(crate) fn try_next(&mut self) -> Result<Option<RawFrame>, FramingError> {
        if let Some(f) = self.take_front() {
            return Ok(Some(f));
        }
        self.split_ready()
    }

    /// The frame at the front of `ready` when it is complete and its header valid.
    #[inline]
    fn take_front(&mut self) -> Option<RawFrame> {
        let r = self.ready.first_chunk::<5>()?;
        let len = u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize;
        if len == 0 || len > self.max || self.ready.len() - 4 < len {
            return None;
        }
        let kind = r[4];
        if self.ready.len() == 4 + len {
            // The last frame takes the handle itself (no reference-count traffic) and
            // leaves `ready` empty, so it does not keep the read allocation alive.
            let mut body = std::mem::take(&mut self.ready);
            body.advance(5);
            return Some(RawFrame { kind, body });
        }
        let body = self.ready.slice(5..4 + len);
        self.ready.advance(4 + len);
        Some(RawFrame { kind, body })
    }

    /// What [`FrameReader::take_front`] did not take: a bad header (an error), an
    /// incomplete frame at the end of `ready` (moved back to `buf`), or `ready` empty;
    /// then moves `buf` to `ready` if its first frame is complete, and takes that.
    #[inline(never)]
    fn split_ready(&mut self) -> Result<Option<RawFrame>, FramingError> {
        if !self.ready.is_empty() {
            front_len(&self.ready, self.max)?;
            let tail = std::mem::take(&mut self.ready);
            if self.buf.is_empty() {
                self.buf.extend_from_slice(&tail);
            } else {
                let mut joined = BytesMut::with_capacity(tail.len() + self.buf.len());
                joined.extend_from_slice(&tail);
                joined.extend_from_slice(&self.buf);
                self.buf = joined;
            }
        }
        match front_len(&self.buf, self.max)? {
            Some(len) if self.buf.len() - 4 >= len => {
                self.ready = self.buf.split().freeze();
                Ok(self.take_front())
            }
            _ => Ok(None),
        }
    }

    /// Reads more bytes. `Ok(false)` on a clean end of stream (between frames).
    pub(crate) async fn fill(&mut self) -> Result<bool, ReadError> {
        let need = if self.buf.len() >= 4 {
            4 + u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
        } else {
            4
        };
        if self.buf.is_empty() && self.buf.capacity() > self.chunk {
            // Give back a large (or shared) buffer between bursts.
            self.buf = BytesMut::new();
        }
        self.buf.reserve((need - self.buf.len()).max(self.chunk));
        let room = self.buf.capacity() - self.buf.len();
        let read = self.rd.read_buf(&mut self.buf).await?;
        if read == 0 {
            if self.buf.is_empty() {
                return Ok(false);
            }
            return Err(FramingError::Truncated {
                have: self.buf.len(),
                need,
            }
            .into());
        }
        if read * 4 >= room * 3 {
            self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        } else if read * 4 < room {
            self.chunk = (self.chunk / 2).max(MIN_CHUNK);
        }
        Ok(true)
    }

    /// The next frame; `Ok(None)` on a clean end of stream (between frames).
    pub(crate) async fn next(&mut self) -> Result<Option<RawFrame>, ReadError> {
        loop {
            if let Some(f) = self.try_next()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_frames_incrementally() {
        let mut all = frame(1, b"abc");
        all.extend(frame(0x10, b""));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in all {
            buf.extend_from_slice(&[b]);
            while let Some(f) = split_frame(&mut buf, 100).unwrap_or(None) {
                out.push(f);
            }
        }
        assert_eq!(
            out,
            vec![
                RawFrame {
                    kind: 1,
                    body: Bytes::from_static(b"abc")
                },
                RawFrame {
                    kind: 0x10,
                    body: Bytes::new()
                }
            ]
        );
    }

    #[test]
    fn rejects_zero_and_oversized_lengths() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 1][..]);
        assert_eq!(split_frame(&mut buf, 10), Err(FramingError::ZeroLength));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 11][..]);
        assert_eq!(
            split_frame(&mut buf, 10),
            Err(FramingError::TooLarge { len: 11, max: 10 })
        );
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut buf, 16 << 20),
            Err(FramingError::TooLarge { .. })
        ));
    }

    /// Hands out its data at most `step` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn read_all(
        data: Vec<u8>,
        step: usize,
        max: usize,
    ) -> (Vec<RawFrame>, Option<ReadError>) {
        let mut r = FrameReader::new(Trickle { data, at: 0, step }, max);
        let mut out = Vec::new();
        loop {
            match r.next().await {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn frames_arrive_whole_whatever_the_read_boundaries() {
        let bodies: Vec<Vec<u8>> = (0..40usize)
            .map(|i| (0..(i * 37 % 300)).map(|b| (b + i) as u8).collect())
            .chain([vec![9u8; 200_000]])
            .chain((0..5usize).map(|i| vec![i as u8; 3]))
            .collect();
        let mut data = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            data.extend(frame(i as u8, b));
        }
        for step in [1, 3, 4, 5, 7, 64, 1000, 70_000, usize::MAX] {
            let (got, err) = read_all(data.clone(), step, 1 << 20).await;
            assert!(err.is_none(), "step {step}: {err:?}");
            assert_eq!(got.len(), bodies.len(), "step {step}");
            for (i, (f, b)) in got.iter().zip(&bodies).enumerate() {
                assert_eq!(
                    (f.kind, f.body.as_ref()),
                    (i as u8, b.as_slice()),
                    "step {step}"
                );
            }
        }
    }

    #[tokio::test]
    async fn frames_before_a_bad_length_are_handed_out_then_the_error() {
        for (bad, want_zero) in [
            (vec![0u8, 0, 0, 0, 1], true),
            (vec![0u8, 0, 1, 0, 1], false),
        ] {
            let mut data = frame(1, b"first");
            data.extend(frame(2, b"second"));
            data.extend(&bad);
            data.extend(frame(3, b"never"));
            for step in [2, 5, usize::MAX] {
                let (got, err) = read_all(data.clone(), step, 100).await;
                let kinds: Vec<u8> = got.iter().map(|f| f.kind).collect();
                assert_eq!(kinds, vec![1, 2], "step {step}");
                match err {
                    Some(ReadError::Framing(FramingError::ZeroLength)) => assert!(want_zero),
                    Some(ReadError::Framing(FramingError::TooLarge { len: 256, max: 100 })) => {
                        assert!(!want_zero)
                    }
                    other => panic!("step {step}: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error_clean_end_is_not() {
        let mut data = frame(1, b"abcdef");
        data.truncate(6);
        let mut r = FrameReader::new(&data[..], 100);
        assert!(matches!(
            r.next().await,
            Err(ReadError::Framing(FramingError::Truncated {
                have: 6,
                need: 11
            }))
        ));
        let data = frame(1, b"x");
        let mut r = FrameReader::new(&data[..], 100);
        assert!(matches!(r.next().await, Ok(Some(_))));
        assert!(matches!(r.next().await, Ok(None)));
    }
}
