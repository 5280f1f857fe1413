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
/// Returns `Ok(None)` when more bytes are needed.
///
/// Connections do not read through this function: their reader (`FrameReader`) checks
/// headers and slices frames itself. `split_frame` is the simple reference it is
/// checked against ([`fuzz_frame_reader`] and the unit tests compare the two on the same
/// bytes), and what [`fuzz_tcp_stream`] splits its input with.
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
        // Saturating: `need` is only a frame's size when `try_next` found the front
        // incomplete; the read loop calls `fill` only then, but it must not underflow.
        self.buf
            .reserve(need.saturating_sub(self.buf.len()).max(self.chunk));
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

/// Fuzzing entry point for the connection reader: feeds a byte stream to the
/// `FrameReader` connections read through, in reads whose sizes (and pauses) the input
/// chooses, and checks that it yields exactly what [`split_frame`] yields on the whole
/// stream at once. Must never panic, whatever the input; a panic is either a bug of the
/// reader or a difference from `split_frame`.
///
/// Input: byte 0 sets the maximum frame size, `1 + 4 * b` (1 to 1021 bytes, so
/// oversized lengths are common); the low 3 bits of byte 1 give the number `n` (1 to 8)
/// of read-plan bytes that follow; the rest is the stream. Read `i` follows plan byte
/// `i % n`: bit 7 makes it return `Pending` once first (the reader is polled again at
/// once), the low 7 bits `s` cap its size: 0 none (as much as the reader has room for),
/// 1 to 95 that many bytes, 96 to 127 `(s - 95) * 128` bytes. Missing bytes mean a
/// maximum of 61 bytes and reads without a cap.
///
/// The reader is driven as a connection drives it: `try_next` until it needs bytes,
/// then `fill`, until an error or the end of the stream. What must hold:
/// - the frames (kind and body) are those `split_frame` splits off, in order;
/// - then the same end: the `ZeroLength` or `TooLarge` error (same fields) that
///   `split_frame` returns next; where `split_frame` wants more bytes but the stream is
///   over, `Truncated { have, need }` with `have` the bytes it left and `need` 4 (no
///   whole header left) or 4 plus the announced length; a clean end where it left none;
/// - no I/O error (the in-memory source cannot fail);
/// - when `has_ready` says a frame is waiting, `try_next` does not ask for more bytes.
pub fn fuzz_frame_reader(data: &[u8]) {
    let (max_sel, rest) = data.split_first().map_or((15, data), |(b, r)| (*b, r));
    let (n_sel, rest) = rest.split_first().map_or((0, rest), |(b, r)| (*b, r));
    let (plan, stream) = rest.split_at((usize::from(n_sel & 7) + 1).min(rest.len()));
    let plan: Vec<ReadStep> = plan.iter().map(|&b| ReadStep::from_byte(b)).collect();
    check_reader_against_split_frame(stream, &plan, 1 + 4 * usize::from(max_sel));
}

/// How a stream of frames ended: cleanly, or with the framing error that ends a
/// connection.
type StreamEnd = Result<(), FramingError>;

/// The oracle of [`fuzz_frame_reader`] (see there): panics if a `FrameReader` reading
/// `stream` in reads planned by `plan` disagrees with [`split_frame`] on it.
fn check_reader_against_split_frame(stream: &[u8], plan: &[ReadStep], max: usize) {
    let (want, want_end) = split_all(stream, max);
    let (got, got_end) = read_planned(stream, plan, max);
    if let Some(i) = (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
        panic!(
            "frame {i} differs (max {max}, plan {plan:?}): reader {:?}, split_frame {:?}",
            got.get(i),
            want.get(i)
        );
    }
    assert_eq!(
        got_end,
        want_end,
        "end after {} frames (max {max}, plan {plan:?})",
        got.len()
    );
}

/// Everything [`split_frame`] splits off `stream`, and how it ends.
fn split_all(stream: &[u8], max: usize) -> (Vec<RawFrame>, StreamEnd) {
    let mut buf = BytesMut::from(stream);
    let mut frames = Vec::new();
    loop {
        match split_frame(&mut buf, max) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) if buf.is_empty() => return (frames, Ok(())),
            Ok(None) => {
                let need = buf
                    .first_chunk::<4>()
                    .map_or(4, |p| 4 + u32::from_be_bytes(*p) as usize);
                let have = buf.len();
                return (frames, Err(FramingError::Truncated { have, need }));
            }
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Everything a `FrameReader` reads from `stream` in reads planned by `plan`, and how
/// it ends, driven like a connection's read loop drives it.
fn read_planned(stream: &[u8], plan: &[ReadStep], max: usize) -> (Vec<RawFrame>, StreamEnd) {
    let source = Planned {
        rest: stream,
        plan,
        reads: 0,
        paused: false,
    };
    let mut reader = FrameReader::new(source, max);
    let mut frames = Vec::new();
    loop {
        let ready = reader.has_ready();
        match reader.try_next() {
            Ok(Some(f)) => {
                frames.push(f);
                continue;
            }
            Ok(None) => assert!(!ready, "has_ready(), but try_next() needs more bytes"),
            Err(e) => return (frames, Err(e)),
        }
        match poll_until_ready(reader.fill()) {
            Ok(true) => {}
            Ok(false) => return (frames, Ok(())),
            Err(ReadError::Framing(e)) => return (frames, Err(e)),
            Err(ReadError::Io(e)) => panic!("the in-memory source cannot fail: {e}"),
        }
    }
}

/// Polls `fut` with a no-op waker until it completes. Only for futures whose
/// `Pending`s resolve by polling again ([`Planned`] returns at most one in a row).
fn poll_until_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// One read of [`Planned`]: at most `max` bytes (at least 1), after one `Pending` if
/// `pause`.
#[derive(Debug, Clone, Copy)]
struct ReadStep {
    max: usize,
    pause: bool,
}

impl ReadStep {
    const UNCAPPED: ReadStep = ReadStep {
        max: usize::MAX,
        pause: false,
    };

    /// A plan byte of [`fuzz_frame_reader`]'s input.
    fn from_byte(b: u8) -> Self {
        let s = usize::from(b & 0x7f);
        let max = match s {
            0 => usize::MAX,
            1..=95 => s,
            _ => (s - 95) * 128,
        };
        ReadStep {
            max,
            pause: b & 0x80 != 0,
        }
    }
}

/// An in-memory stream handing out `rest` in reads that follow `plan` (cycled; an
/// empty plan does not cap reads), then the end of the stream.
struct Planned<'a> {
    rest: &'a [u8],
    plan: &'a [ReadStep],
    reads: usize,
    /// The last poll returned `Pending` (the next one reads).
    paused: bool,
}

impl AsyncRead for Planned<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let step = this
            .plan
            .get(this.reads % this.plan.len().max(1))
            .copied()
            .unwrap_or(ReadStep::UNCAPPED);
        if step.pause && !this.paused {
            this.paused = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        this.paused = false;
        this.reads += 1;
        let n = step.max.min(buf.remaining()).min(this.rest.len());
        let (now, later) = this.rest.split_at(n);
        buf.put_slice(now);
        this.rest = later;
        std::task::Poll::Ready(Ok(()))
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

    fn reads(sizes: &[usize], pause: bool) -> Vec<ReadStep> {
        sizes.iter().map(|&max| ReadStep { max, pause }).collect()
    }

    const MAX: usize = 40;

    /// Frames of every shape the limit `MAX` allows (empty body, one byte under the
    /// limit, at the limit).
    fn good_frames() -> Vec<u8> {
        let mut v = frame(1, b"abc");
        v.extend(frame(0x10, b""));
        v.extend(frame(2, &[7; MAX - 1]));
        v.extend(frame(3, &[8; MAX - 2]));
        v.extend(frame(4, b"z"));
        v
    }

    /// `good_frames` followed by each way a stream can end, with what `split_frame`
    /// makes of it.
    fn streams() -> Vec<(Vec<u8>, StreamEnd)> {
        let tails: Vec<(Vec<u8>, StreamEnd)> = vec![
            (vec![], Ok(())),
            (vec![0, 0, 0, 0, 1, 2], Err(FramingError::ZeroLength)),
            (
                vec![0, 0, 0, MAX as u8 + 1, 1, 2, 3],
                Err(FramingError::TooLarge {
                    len: MAX + 1,
                    max: MAX,
                }),
            ),
            (
                // Complete, so a reader that took it would have it all.
                [frame(9, &[1; MAX]), frame(4, b"z")].concat(),
                Err(FramingError::TooLarge {
                    len: MAX + 1,
                    max: MAX,
                }),
            ),
            (
                vec![0xff; 4],
                Err(FramingError::TooLarge {
                    len: u32::MAX as usize,
                    max: MAX,
                }),
            ),
            (
                vec![0, 0],
                Err(FramingError::Truncated { have: 2, need: 4 }),
            ),
            (
                frame(5, b"xyz")[..6].to_vec(),
                Err(FramingError::Truncated { have: 6, need: 8 }),
            ),
        ];
        tails
            .into_iter()
            .map(|(tail, end)| {
                let mut s = good_frames();
                s.extend(tail);
                (s, end)
            })
            .collect()
    }

    #[test]
    fn the_reference_splits_the_sample_streams_as_intended() {
        for (stream, end) in streams() {
            let (frames, got) = split_all(&stream, MAX);
            let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, vec![1, 0x10, 2, 3, 4]);
            assert_eq!(got, end);
        }
        let (frames, end) = split_all(&good_frames()[..10], MAX);
        assert_eq!(
            (frames.len(), end),
            (1, Err(FramingError::Truncated { have: 2, need: 4 }))
        );
    }

    #[test]
    fn reader_matches_split_frame_with_one_byte_reads() {
        for (stream, _) in streams() {
            for pause in [false, true] {
                check_reader_against_split_frame(&stream, &reads(&[1], pause), MAX);
            }
        }
        // Cut after every byte: ends inside every header and every body.
        let good = good_frames();
        for cut in 0..=good.len() {
            for plan in [reads(&[1], false), reads(&[1, 2, 3], true), vec![]] {
                check_reader_against_split_frame(&good[..cut], &plan, MAX);
            }
        }
    }

    #[test]
    fn reader_matches_split_frame_split_at_every_byte() {
        for (stream, _) in streams() {
            for at in 1..=stream.len() {
                for pause in [false, true] {
                    check_reader_against_split_frame(
                        &stream,
                        &reads(&[at, usize::MAX], pause),
                        MAX,
                    );
                }
            }
        }
    }

    #[test]
    fn reader_matches_split_frame_split_at_every_pair_of_bytes() {
        for (stream, _) in streams() {
            for a in 1..stream.len() {
                for b in 1..=stream.len() - a {
                    check_reader_against_split_frame(
                        &stream,
                        &reads(&[a, b, usize::MAX], false),
                        MAX,
                    );
                }
            }
        }
    }

    #[test]
    fn reader_matches_split_frame_on_frames_larger_than_a_read() {
        // Bodies around the reader's initial and largest read sizes.
        let mut stream = Vec::new();
        for (i, len) in [0, 4090, 4091, 4092, 9000, 300_000, 5, 262_144]
            .into_iter()
            .enumerate()
        {
            stream.extend(frame(i as u8, &vec![i as u8; len]));
        }
        let max = 300_001;
        for sizes in [
            &[usize::MAX][..],
            &[1000],
            &[4095, 4096, 4097],
            &[70_000, 3],
            &[262_144, 1],
        ] {
            check_reader_against_split_frame(&stream, &reads(sizes, false), max);
            check_reader_against_split_frame(&stream[..stream.len() - 1], &reads(sizes, true), max);
        }
    }

    #[test]
    fn fuzz_frame_reader_accepts_any_short_input() {
        for len in 0..6 {
            fuzz_frame_reader(&[0x83, 0xff, 0x81, 0, 0, 1][..len]);
        }
        // Maximum 9, read plan [3 bytes, then paused 1 byte], a frame then an oversized one.
        let mut input = vec![2, 1, 3, 0x81];
        input.extend(frame(1, b"12345678"));
        input.extend(frame(2, b"123456789"));
        fuzz_frame_reader(&input);
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
