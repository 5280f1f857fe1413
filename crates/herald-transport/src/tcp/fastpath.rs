//! A fast path for decoding envelopes in casty's canonical header form.
//!
//! casty (and Herald) write every header as exactly
//! `{"target": "…", "sender": "…", "type_hint": "…"}`. When a header is in that form
//! and its strings contain no escape (`\`) and no control character, the JSON parse
//! reduces to finding three closing quotes: this module does just that and builds the
//! [`Envelope`] from the slices. Anything else (other key order, whitespace, escapes,
//! extra keys, malformed input) falls back to [`Envelope::decode`], so the result is
//! always exactly what `Envelope::decode` returns (a property test checks it).
//!
//! On the benchmark's 180-byte frames the full JSON parse is most of the receive cost.

use bytes::Bytes;
use herald_wire::{Envelope, WireError};

/// Decodes an envelope: fast path for the canonical form, [`Envelope::decode`] otherwise.
pub fn decode_envelope(body: Bytes) -> Result<Envelope, WireError> {
    match canonical(&body) {
        Some(env) => Ok(env),
        None => Envelope::decode(body),
    }
}

fn canonical(body: &Bytes) -> Option<Envelope> {
    let prefix: [u8; 4] = body.get(..4)?.try_into().ok()?;
    let header_len = u32::from_be_bytes(prefix) as usize;
    let end = 4usize.checked_add(header_len)?;
    let header = body.get(4..end)?;
    let rest = header.strip_prefix(br#"{"target": ""#)?;
    let (target, rest) = plain_str(rest)?;
    let rest = rest.strip_prefix(br#", "sender": ""#)?;
    let (sender, rest) = plain_str(rest)?;
    let rest = rest.strip_prefix(br#", "type_hint": ""#)?;
    let (type_hint, rest) = plain_str(rest)?;
    if rest != b"}" {
        return None;
    }
    Some(Envelope::new(target, sender, type_hint, body.slice(end..)))
}

/// A JSON string body up to its closing quote, if it has no escapes and no control
/// characters (then its value is its bytes); returns it and what follows the quote.
fn plain_str(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == b'"')?;
    let raw = &b[..end];
    if raw.iter().any(|&c| c == b'\\' || c < 0x20) {
        return None;
    }
    let s = std::str::from_utf8(raw).ok()?;
    Some((s, &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(body: Bytes) {
        let fast = canonical(&body);
        let full = Envelope::decode(body.clone());
        if let Some(f) = fast {
            match full {
                Ok(e) => assert_eq!(f, e),
                Err(e) => panic!("fast path accepted what decode rejects ({e}): {body:?}"),
            }
        }
        match (decode_envelope(body.clone()), Envelope::decode(body)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("fast {a:?} vs full {b:?}"),
        }
    }

    #[test]
    fn canonical_headers_take_the_fast_path() {
        let e = Envelope::new("casty://a@h:1/x", "casty://b@h:2/", "m.Ping", &b"{}"[..]);
        let body = e.encode();
        assert_eq!(canonical(&body), Some(e));
        // Escapes and non-ASCII (written as \u escapes by the encoder) fall back.
        let e = Envelope::new("casty://a@h:1/zoë", "", "m.\"q\"", &b""[..]);
        let body = e.encode();
        assert_eq!(canonical(&body), None);
        assert_eq!(decode_envelope(body).ok(), Some(e));
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_envelope_decode(
            target in ".{0,40}", sender in "[ -~]{0,20}", hint in ".{0,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let e = Envelope::new(target, sender, hint, payload);
            same(e.encode());
        }

        #[test]
        fn mutated_bytes_agree_with_envelope_decode(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
            cut in 0usize..200,
        ) {
            let e = Envelope::new("casty://a@127.0.0.1:1/sink", "casty://a@127.0.0.1:2/", "m.Ping", &b"{\"v\": 1}"[..]);
            let mut raw = e.encode().to_vec();
            for (i, b) in flips {
                if i < raw.len() {
                    raw[i] = b;
                }
            }
            raw.truncate(cut.max(4).min(raw.len()));
            same(Bytes::from(raw));
        }
    }
}
