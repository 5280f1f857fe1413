//! Entry points of the `cargo fuzz` targets (`fuzz/fuzz_targets/*.rs`).
//!
//! Each takes arbitrary bytes, runs one decoder and checks its invariants
//! (whatever decodes re-encodes and decodes to the same value). They must never
//! panic except on a real bug; the committed seed corpora are replayed through
//! them by `tests/fuzz_corpus.rs` in ordinary `cargo test` runs.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::payload::{CastyValue, zlib_decompress};
use crate::{ActorAddress, Envelope, EnvelopeDecoder, FrameCodec, FrameIter};

/// `envelope` target: [`Envelope::decode`], and [`EnvelopeDecoder`] agreeing with it
/// (the same input three times, so the second decode can come from its header cache
/// and the third from its inlined repeat path, then a different header through the
/// same decoder).
pub fn envelope(data: &[u8]) {
    let plain = Envelope::decode(Bytes::copy_from_slice(data));
    let mut decoder = EnvelopeDecoder::new();
    for round in 0..3 {
        let cached = decoder.decode(Bytes::copy_from_slice(data));
        assert_eq!(cached, plain, "EnvelopeDecoder, round {round}");
    }
    let other = Envelope::new("casty://o@h:1/x", "", "o.T", &b"p"[..]);
    assert_eq!(
        decoder.decode(other.encode()),
        Ok(other),
        "EnvelopeDecoder, other"
    );
    assert_eq!(
        decoder.decode(Bytes::copy_from_slice(data)),
        plain,
        "EnvelopeDecoder, after another header"
    );
    if let Ok(env) = plain {
        let bytes = env.encode();
        assert_eq!(bytes.len(), env.encoded_len(), "encoded_len");
        let again = Envelope::decode(bytes);
        assert_eq!(again.as_ref(), Ok(&env), "re-decode");
    }
}

/// `frame_stream` target: [`FrameCodec`] over a byte stream (limit 64 KiB).
pub fn frame_stream(data: &[u8]) {
    let codec = FrameCodec::new().with_max_frame_size(64 * 1024);
    for item in FrameIter::new(codec, Bytes::copy_from_slice(data)) {
        let Ok(frame) = item else { break };
        let bytes = frame.encode();
        assert_eq!(bytes.len(), frame.encoded_len(), "encoded_len");
        let mut buf = BytesMut::from(&bytes[..]);
        let again = FrameCodec::new().decode(&mut buf);
        assert_eq!(again, Ok(Some(frame)), "re-decode");
        assert!(buf.is_empty());
    }
}

/// `address` target: [`ActorAddress::parse`].
pub fn address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(addr) = ActorAddress::parse(text) {
        let shown = addr.to_string();
        assert_eq!(
            ActorAddress::parse(&shown),
            Ok(addr),
            "re-parse of {shown:?}"
        );
    }
}

/// Fuzz-time bound on inflated payloads.
const FUZZ_MAX_INFLATE: usize = 1 << 20;

/// `casty_json_tree` target: [`CastyValue::from_json_bytes`], also behind
/// casty's zlib wrapper ([`zlib_decompress`]).
pub fn casty_json_tree(data: &[u8]) {
    raw_and_inflated(data, json_tree_invariants);
}

/// Checks `invariants` on `data` as inflated by casty's zlib wrapper (when it
/// inflates) and on `data` itself.
fn raw_and_inflated(data: &[u8], invariants: fn(&[u8])) {
    if let Ok(inflated) = zlib_decompress(data, FUZZ_MAX_INFLATE) {
        assert!(inflated.len() <= FUZZ_MAX_INFLATE);
        invariants(&inflated);
    }
    invariants(data);
}

fn json_tree_invariants(data: &[u8]) {
    if let Ok(tree) = CastyValue::from_json_bytes(data)
        && let Ok(bytes) = tree.to_json_bytes()
    {
        let again = CastyValue::from_json_bytes(&bytes);
        let again = again.and_then(|t| t.to_json_bytes());
        assert_eq!(again.as_deref(), Ok(&bytes[..]), "re-encode");
    }
}

/// `casty_msgpack_tree` target: [`CastyValue::from_msgpack_bytes`], also
/// behind casty's zlib wrapper.
pub fn casty_msgpack_tree(data: &[u8]) {
    raw_and_inflated(data, msgpack_tree_invariants);
}

fn msgpack_tree_invariants(data: &[u8]) {
    if let Ok(tree) = CastyValue::from_msgpack_bytes(data) {
        let bytes = tree.to_msgpack_bytes();
        assert!(bytes.is_ok(), "a decoded tree must re-encode: {bytes:?}");
        if let Ok(bytes) = bytes {
            let again = CastyValue::from_msgpack_bytes(&bytes).and_then(|t| t.to_msgpack_bytes());
            assert_eq!(again.as_deref(), Ok(&bytes[..]), "re-encode");
        }
    }
}
