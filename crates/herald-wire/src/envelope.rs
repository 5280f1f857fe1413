//! casty's `MessageEnvelope`: `u32 BE header_len | JSON header | payload`.
//!
//! Encoding is byte-exact with casty 0.21.0 (Python `json.dumps` defaults, key
//! order `target`, `sender`, `type_hint`). Decoding accepts any valid JSON
//! header (any key order, whitespace, raw UTF-8, extra keys, which are kept),
//! and is stricter than casty where casty is unsafe: a header length that
//! overruns the buffer, missing keys, duplicate keys and non-string values are
//! errors. The payload is a zero-copy slice of the input [`Bytes`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::error::WireError;
use crate::pyjson;
use crate::shared_str::SharedStr;

/// Size of the header-length prefix.
pub const HEADER_LEN_PREFIX: usize = 4;

/// Fixed bytes of the casty header: `{"target": , "sender": , "type_hint": }`.
const HEADER_FIXED: usize = br#"{"target": , "sender": , "type_hint": }"#.len();

const WHAT: &str = "envelope header";

/// One message as casty frames it: target and sender actor URIs, the
/// message's type name and the serialized payload.
///
/// Extra header keys found when decoding (forward compatibility, e.g. a
/// `trace_id`) are kept in order and exposed by [`Envelope::extra_headers`];
/// they are written back after `type_hint` when encoding.
#[derive(Clone, PartialEq)]
pub struct Envelope {
    /// Target actor URI, e.g. `casty://sys@127.0.0.1:25520/user/counter`.
    pub target: SharedStr,
    /// Sender URI; casty always writes the system root, e.g. `casty://sys@127.0.0.1:25521/`.
    pub sender: SharedStr,
    /// `<module>.<qualname>` of the message class, e.g. `casty_vec_msgs.Ping`.
    pub type_hint: SharedStr,
    /// Serialized message bytes (no own length: runs to the end of the envelope).
    pub payload: Bytes,
    /// Extra header keys; `None` when there are none (the usual case: nothing to
    /// allocate, copy or free), never `Some` of an empty list.
    extra: Option<Arc<Vec<(String, Value)>>>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Envelope");
        d.field("target", &self.target)
            .field("sender", &self.sender)
            .field("type_hint", &self.type_hint)
            .field("payload_len", &self.payload.len());
        if let Some(extra) = &self.extra {
            d.field("extra", extra);
        }
        d.finish()
    }
}

impl Envelope {
    /// Builds an envelope with no extra header keys.
    pub fn new(
        target: impl Into<SharedStr>,
        sender: impl Into<SharedStr>,
        type_hint: impl Into<SharedStr>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Envelope {
            target: target.into(),
            sender: sender.into(),
            type_hint: type_hint.into(),
            payload: payload.into(),
            extra: None,
        }
    }

    /// Extra header keys (beyond `target`, `sender`, `type_hint`), in wire order.
    #[inline]
    pub fn extra_headers(&self) -> &[(String, Value)] {
        self.extra.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Looks up one extra header key.
    pub fn extra_header(&self, key: &str) -> Option<&Value> {
        self.extra_headers()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Adds (or replaces) an extra header key. casty v1 peers ignore unknown keys.
    ///
    /// # Errors
    /// [`WireError::DuplicateField`] if `key` is one of the three standard keys.
    pub fn with_extra_header(
        mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<Self, WireError> {
        let key = key.into();
        if matches!(key.as_str(), "target" | "sender" | "type_hint") {
            return Err(WireError::DuplicateField { what: WHAT, key });
        }
        let value = value.into();
        let extra = Arc::make_mut(self.extra.get_or_insert_with(Default::default));
        match extra.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => extra.push((key, value)),
        }
        Ok(self)
    }

    /// Length of the JSON header as [`Envelope::encode_into`] writes it.
    pub fn header_len(&self) -> usize {
        let mut n = HEADER_FIXED
            + pyjson::escaped_len(&self.target)
            + pyjson::escaped_len(&self.sender)
            + pyjson::escaped_len(&self.type_hint);
        if self.extra.is_some() {
            n += self.extra_json().len();
        }
        n
    }

    /// Total encoded length: prefix + header + payload.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN_PREFIX + self.header_len() + self.payload.len()
    }

    fn extra_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in self.extra_headers() {
            out.extend_from_slice(b", ");
            pyjson::write_str(&mut out, k);
            out.extend_from_slice(b": ");
            pyjson::write_value(&mut out, v);
        }
        out
    }

    /// Appends the envelope to `dst`, byte-exact with casty's `MessageEnvelope.to_bytes()`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        // Reserve for the common case (no escapes), write the header, then
        // patch its length: the strings are scanned once, not twice.
        dst.reserve(
            HEADER_LEN_PREFIX
                + HEADER_FIXED
                + 6
                + self.target.len()
                + self.sender.len()
                + self.type_hint.len()
                + self.payload.len(),
        );
        let start = dst.len();
        dst.put_u32(0);
        dst.put_slice(br#"{"target": "#);
        pyjson::write_str(dst, &self.target);
        dst.put_slice(br#", "sender": "#);
        pyjson::write_str(dst, &self.sender);
        dst.put_slice(br#", "type_hint": "#);
        pyjson::write_str(dst, &self.type_hint);
        if self.extra.is_some() {
            dst.put_slice(&self.extra_json());
        }
        dst.put_u8(b'}');
        let header_len = dst.len() - start - HEADER_LEN_PREFIX;
        // Header lengths above u32::MAX cannot be represented; saturate so the
        // decoder reports an overrun rather than silently wrapping.
        let prefix = u32::try_from(header_len).unwrap_or(u32::MAX).to_be_bytes();
        dst[start..start + HEADER_LEN_PREFIX].copy_from_slice(&prefix);
        dst.put_slice(&self.payload);
    }

    /// Encodes into a fresh buffer.
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut dst);
        dst.freeze()
    }

    /// Decodes an envelope. The payload is a zero-copy slice of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] for fewer than 4 bytes, [`WireError::HeaderOverrun`]
    /// when the header length exceeds the buffer, [`WireError::InvalidJson`],
    /// [`WireError::NotAnObject`], [`WireError::MissingField`],
    /// [`WireError::DuplicateField`] or [`WireError::WrongFieldType`] for a bad header.
    pub fn decode(buf: Bytes) -> Result<Envelope, WireError> {
        Self::decode_with_limit(buf, usize::MAX)
    }

    /// Like [`Envelope::decode`], rejecting headers longer than `max_header_len`
    /// ([`WireError::HeaderTooLarge`]) before parsing them.
    pub fn decode_with_limit(buf: Bytes, max_header_len: usize) -> Result<Envelope, WireError> {
        Self::decode_or_return(buf, max_header_len).map_err(|(e, _)| e)
    }

    /// Decodes, handing the input back with the error so that a caller (the
    /// frame codec) can keep the raw bytes without cloning them up front.
    pub(crate) fn decode_or_return(
        buf: Bytes,
        max_header_len: usize,
    ) -> Result<Envelope, (WireError, Bytes)> {
        let header_len = match Self::peek_header_len(&buf) {
            Ok(n) => n,
            Err(e) => return Err((e, buf)),
        };
        if header_len > max_header_len {
            let e = WireError::HeaderTooLarge {
                header_len,
                max: max_header_len,
            };
            return Err((e, buf));
        }
        let end = HEADER_LEN_PREFIX + header_len;
        let header = match parse_header(&buf[HEADER_LEN_PREFIX..end]) {
            Ok(h) => h,
            Err(e) => return Err((e, buf)),
        };
        Ok(Self::assemble(buf, end, header))
    }

    /// The envelope of `header` whose payload is `buf` after `end`.
    fn assemble(buf: Bytes, end: usize, header: Header) -> Envelope {
        // Advance the owned handle instead of slicing it: no reference-count traffic.
        let mut payload = buf;
        bytes::Buf::advance(&mut payload, end);
        Envelope {
            target: header.target,
            sender: header.sender,
            type_hint: header.type_hint,
            payload,
            extra: if header.extra.is_empty() {
                None
            } else {
                Some(Arc::new(header.extra))
            },
        }
    }

    /// Reads and checks the header length prefix.
    fn peek_header_len(buf: &[u8]) -> Result<usize, WireError> {
        let Some(prefix) = buf.first_chunk::<HEADER_LEN_PREFIX>() else {
            return Err(WireError::Truncated {
                what: "envelope header length",
                needed: HEADER_LEN_PREFIX,
                available: buf.len(),
            });
        };
        let header_len = u32::from_be_bytes(*prefix) as usize;
        let available = buf.len() - HEADER_LEN_PREFIX;
        if header_len > available {
            return Err(WireError::HeaderOverrun {
                header_len,
                available,
            });
        }
        Ok(header_len)
    }
}

/// Longest header [`EnvelopeDecoder`] remembers.
const CACHED_HEADER_MAX: usize = 1024;

/// A decoder for a stream of envelopes (one connection's, say) that remembers the last
/// header it parsed: when the next envelope's header is byte-for-byte the same (a
/// sender repeats its target, sender and type hint), its fields are copied from the
/// previous result instead of being parsed and validated again. A header seen twice in
/// a row is a sender's steady state: its three strings are then interned
/// ([`SharedStr::interned`]), so the envelopes that follow share them without reference
/// counting.
///
/// The results, errors included, are exactly those of [`Envelope::decode`] and
/// [`Envelope::decode_with_limit`]; only the work differs. Headers with extra keys
/// and headers over 1 KiB are always parsed.
///
/// ```
/// use herald_wire::{Envelope, EnvelopeDecoder};
///
/// let env = Envelope::new("casty://a@h:1/x", "casty://b@h:2/", "m.Ping", &b"{}"[..]);
/// let mut decoder = EnvelopeDecoder::new();
/// for _ in 0..3 {
///     assert_eq!(decoder.decode(env.encode()), Ok(env.clone()));
/// }
/// ```
#[derive(Debug, Default, Clone)]
pub struct EnvelopeDecoder {
    /// The header bytes of `fields` (empty: nothing cached).
    raw: Vec<u8>,
    target: SharedStr,
    sender: SharedStr,
    type_hint: SharedStr,
    /// The cached fields were interned (the header repeated); `raw` is then not
    /// empty, and a header equal to it is decoded by `decode_with_limit`'s inlined
    /// path.
    interned: bool,
}

impl EnvelopeDecoder {
    /// A decoder with nothing remembered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Like [`Envelope::decode`].
    ///
    /// # Errors
    /// Those of [`Envelope::decode`].
    #[inline]
    pub fn decode(&mut self, buf: Bytes) -> Result<Envelope, WireError> {
        self.decode_with_limit(buf, usize::MAX)
    }

    /// Like [`Envelope::decode_with_limit`].
    ///
    /// # Errors
    /// Those of [`Envelope::decode_with_limit`].
    #[inline]
    pub fn decode_with_limit(
        &mut self,
        buf: Bytes,
        max_header_len: usize,
    ) -> Result<Envelope, WireError> {
        self.decode_or_return(buf, max_header_len)
            .map_err(|(e, _)| e)
    }

    /// Like [`decode_with_limit`](Self::decode_with_limit), but an input that does not
    /// decode comes back with the error, so the caller can report the bytes without
    /// having kept a second reference to them (which would cost every message a
    /// reference-count update).
    ///
    /// # Errors
    /// Those of [`Envelope::decode_with_limit`], each with `buf`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use herald_wire::EnvelopeDecoder;
    ///
    /// let garbage = Bytes::from_static(b"\0\0\0\x07{nope!!");
    /// let (err, back) = EnvelopeDecoder::new()
    ///     .decode_or_return(garbage.clone(), usize::MAX)
    ///     .unwrap_err();
    /// assert_eq!(back, garbage);
    /// assert!(err.to_string().contains("header"), "{err}");
    /// ```
    #[inline]
    pub fn decode_or_return(
        &mut self,
        buf: Bytes,
        max_header_len: usize,
    ) -> Result<Envelope, (WireError, Bytes)> {
        // The cached-header case is small enough to inline into the caller's loop;
        // everything else is `decode_uncached`.
        if let Some(prefix) = buf.first_chunk::<HEADER_LEN_PREFIX>() {
            let header_len = u32::from_be_bytes(*prefix) as usize;
            let end = HEADER_LEN_PREFIX + header_len;
            if header_len <= max_header_len
                && self.interned
                && !self.raw.is_empty()
                && buf.get(HEADER_LEN_PREFIX..end) == Some(self.raw.as_slice())
            {
                return Ok(self.repeated(buf, end));
            }
        }
        self.decode_uncached(buf, max_header_len)
    }

    /// The envelope of a frame whose header is the cached one: its strings shared, its
    /// payload the bytes after the header (`header_end` into `buf`).
    #[inline(always)]
    fn repeated(&self, mut buf: Bytes, header_end: usize) -> Envelope {
        bytes::Buf::advance(&mut buf, header_end);
        Envelope {
            target: self.target.clone(),
            sender: self.sender.clone(),
            type_hint: self.type_hint.clone(),
            payload: buf,
            extra: None,
        }
    }

    #[inline(never)]
    fn decode_uncached(
        &mut self,
        buf: Bytes,
        max_header_len: usize,
    ) -> Result<Envelope, (WireError, Bytes)> {
        let header_len = match Envelope::peek_header_len(&buf) {
            Ok(n) => n,
            Err(e) => return Err((e, buf)),
        };
        if header_len > max_header_len {
            let e = WireError::HeaderTooLarge {
                header_len,
                max: max_header_len,
            };
            return Err((e, buf));
        }
        let end = HEADER_LEN_PREFIX + header_len;
        let raw = &buf[HEADER_LEN_PREFIX..end];
        if !self.raw.is_empty() && raw == self.raw.as_slice() {
            // The previous message's header, repeated: its strings are interned
            // now, and later repeats take the inlined path of `decode_with_limit`.
            if !self.interned {
                self.interned = true;
                self.target = self.target.interned();
                self.sender = self.sender.interned();
                self.type_hint = self.type_hint.interned();
            }
            return Ok(self.repeated(buf, end));
        }
        let header = match parse_header(raw) {
            Ok(h) => h,
            Err(e) => return Err((e, buf)),
        };
        self.raw.clear();
        self.interned = false;
        if header.extra.is_empty() && raw.len() <= CACHED_HEADER_MAX {
            self.raw.extend_from_slice(raw);
            self.target = header.target.clone();
            self.sender = header.sender.clone();
            self.type_hint = header.type_hint.clone();
        }
        Ok(Envelope::assemble(buf, end, header))
    }
}

/// Decoded header fields.
struct Header {
    target: SharedStr,
    sender: SharedStr,
    type_hint: SharedStr,
    extra: Vec<(String, Value)>,
}

/// Result of the serde visitor: either the header or a precise error (serde's
/// own error type can't carry our structured variants).
enum HeaderParse {
    Ok(Header),
    Err(WireError),
}

struct HeaderVisitor;

fn take_string(key: &'static str, value: Value) -> Result<SharedStr, WireError> {
    match value {
        Value::String(s) => Ok(SharedStr::from(s)),
        other => Err(WireError::wrong_field_type(WHAT, key, "a string", &other)),
    }
}

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = HeaderParse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderParse, A::Error> {
        let mut target = None;
        let mut sender = None;
        let mut type_hint = None;
        let mut extra: Vec<(String, Value)> = Vec::new();
        let mut first_error = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "target" => Some((&mut target, "target")),
                "sender" => Some((&mut sender, "sender")),
                "type_hint" => Some((&mut type_hint, "type_hint")),
                _ => None,
            };
            match slot {
                Some((slot, name)) => {
                    let value: Value = map.next_value()?;
                    if slot.is_some() {
                        first_error.get_or_insert(WireError::DuplicateField {
                            what: WHAT,
                            key: name.to_owned(),
                        });
                        continue;
                    }
                    match take_string(name, value) {
                        Ok(s) => *slot = Some(s),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                None => {
                    let value: Value = map.next_value()?;
                    if extra.iter().any(|(k, _)| k == key.as_ref()) {
                        first_error.get_or_insert(WireError::DuplicateField {
                            what: WHAT,
                            key: key.into_owned(),
                        });
                        continue;
                    }
                    extra.push((key.into_owned(), value));
                }
            }
        }
        if let Some(e) = first_error {
            return Ok(HeaderParse::Err(e));
        }
        let missing = |key| WireError::MissingField { what: WHAT, key };
        Ok(match (target, sender, type_hint) {
            (Some(target), Some(sender), Some(type_hint)) => HeaderParse::Ok(Header {
                target,
                sender,
                type_hint,
                extra,
            }),
            (None, _, _) => HeaderParse::Err(missing("target")),
            (_, None, _) => HeaderParse::Err(missing("sender")),
            (_, _, None) => HeaderParse::Err(missing("type_hint")),
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderParse, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(HeaderParse::Err(not_object("an array")))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<HeaderParse, E> {
        Ok(HeaderParse::Err(not_object("a string")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<HeaderParse, E> {
        Ok(HeaderParse::Err(not_object("a boolean")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<HeaderParse, E> {
        Ok(HeaderParse::Err(not_object("a number")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<HeaderParse, E> {
        Ok(HeaderParse::Err(not_object("a number")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<HeaderParse, E> {
        Ok(HeaderParse::Err(not_object("a number")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<HeaderParse, E> {
        Ok(HeaderParse::Err(not_object("null")))
    }
}

fn not_object(found: &str) -> WireError {
    WireError::NotAnObject {
        what: WHAT,
        found: found.to_owned(),
    }
}

/// Reads a JSON string body up to its closing quote when it needs no
/// unescaping (printable ASCII only, as casty writes plain ASCII values).
/// Returns `None` when the general parser must handle it.
#[inline]
fn plain_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let i = pyjson::plain_prefix_words(bytes);
    let end = i + bytes[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b))?;
    if bytes[end] != b'"' {
        return None;
    }
    // Printable ASCII is valid UTF-8.
    let s = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((s, &bytes[end + 1..]))
}

/// Fast path for the exact layout casty writes with ASCII-only values:
/// `{"target": "..", "sender": "..", "type_hint": ".."}`.
fn parse_header_fast(bytes: &[u8]) -> Option<Header> {
    let rest = bytes.strip_prefix(br#"{"target": ""#)?;
    let (target, rest) = plain_str(rest)?;
    let rest = rest.strip_prefix(br#", "sender": ""#)?;
    let (sender, rest) = plain_str(rest)?;
    let rest = rest.strip_prefix(br#", "type_hint": ""#)?;
    let (type_hint, rest) = plain_str(rest)?;
    if rest != b"}" {
        return None;
    }
    Some(Header {
        target: SharedStr::from(target),
        sender: SharedStr::from(sender),
        type_hint: SharedStr::from(type_hint),
        extra: Vec::new(),
    })
}

fn parse_header(bytes: &[u8]) -> Result<Header, WireError> {
    if let Some(h) = parse_header_fast(bytes) {
        return Ok(h);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = de
        .deserialize_any(HeaderVisitor)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|e| WireError::InvalidJson {
            what: WHAT,
            message: e.to_string(),
        })?;
    match parsed {
        HeaderParse::Ok(h) => Ok(h),
        HeaderParse::Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn envelope_decoder_shares_the_fields_of_a_repeated_header() {
        let a = Envelope::new(
            "casty://a@h:1/shared",
            "casty://b@h:2/",
            "m.Ping",
            &b"1"[..],
        );
        let mut decoder = EnvelopeDecoder::new();
        let first = decoder.decode(a.encode()).unwrap();
        let second = decoder.decode(a.encode()).unwrap();
        let third = decoder.decode(a.encode()).unwrap();
        assert_eq!((&first, &second), (&a, &a));
        assert_eq!(third, a);
        // From the repeat on, the fields are one shared (interned) copy.
        assert!(SharedStr::ptr_eq(&second.target, &third.target));
        assert!(SharedStr::ptr_eq(&second.type_hint, &third.type_hint));
        assert!(SharedStr::ptr_eq(&second.target, &second.target.interned()));
    }

    #[test]
    fn envelope_decoder_agrees_with_decode_and_follows_header_changes() {
        let a = Envelope::new("casty://a@h:1/x", "casty://b@h:2/", "m.Ping", &b"{}"[..]);
        let b = Envelope::new("casty://a@h:1/y", "casty://b@h:2/", "m.Ping", &b"[1]"[..]);
        let with_extra = a.clone().with_extra_header("trace_id", "t").unwrap();
        let spaced = Bytes::from_static(
            b"\0\0\0\x2c{ \"type_hint\":\"t\",\"sender\":\"s\",\"target\":\"x\"}p",
        );
        let inputs = [
            a.encode(),
            a.encode(),
            b.encode(),
            a.encode(),
            with_extra.encode(),
            with_extra.encode(),
            Bytes::from_static(b"\0\0\0\x02{}"),
            Bytes::from_static(b"\0\0"),
            spaced.clone(),
            spaced,
            Bytes::from_static(b"\0\0\0\x09{\"target\"}"),
            a.encode(),
        ];
        let mut decoder = EnvelopeDecoder::new();
        decodes_as_envelope_decode(&mut decoder, &inputs);
        assert_eq!(decoder.decode(a.encode()), Ok(a.clone()));
        assert_eq!(decoder.decode(b.encode()), Ok(b));
        assert_eq!(
            decoder.decode_with_limit(a.encode(), 10),
            Envelope::decode_with_limit(a.encode(), 10)
        );
        assert!(matches!(
            decoder.decode_with_limit(a.encode(), 10),
            Err(WireError::HeaderTooLarge { .. })
        ));
    }

    /// Feeds `inputs` to `decoder` in order; each must decode as `Envelope::decode` does.
    fn decodes_as_envelope_decode(decoder: &mut EnvelopeDecoder, inputs: &[Bytes]) {
        for (i, input) in inputs.iter().enumerate() {
            assert_eq!(
                decoder.decode(input.clone()),
                Envelope::decode(input.clone()),
                "input {i}"
            );
        }
    }

    #[test]
    fn envelope_decoder_inlined_repeat_path_agrees_with_decode() {
        // After a header repeats, its next repeats take the inlined path; anything
        // else there (a header dropped from the cache, a zero-length or overrunning
        // header, a header over the limit) must decode as `Envelope::decode` does.
        let a = Envelope::new("casty://a@h:1/x", "casty://b@h:2/", "m.Ping", &b"{}"[..]);
        let with_extra = a.clone().with_extra_header("trace_id", "t").unwrap();
        let encoded = a.encode();
        let header_len = encoded.len() - 2 - 4;
        let mut overrun = encoded[..4].to_vec();
        overrun.extend_from_slice(&encoded[4..4 + header_len - 1]);
        let inputs = [
            a.encode(),
            a.encode(),
            a.encode(),
            Bytes::from(overrun.clone()),
            a.encode(),
            Bytes::from_static(b"\0\0\0\0{}"),
            a.encode(),
            with_extra.encode(),
            Bytes::from_static(b"\0\0\0\0{}"),
            Bytes::from_static(b"\0\0\0"),
            a.encode(),
            a.encode(),
            a.encode(),
        ];
        let mut decoder = EnvelopeDecoder::new();
        decodes_as_envelope_decode(&mut decoder, &inputs);
        assert!(matches!(
            decoder.decode_with_limit(a.encode(), header_len - 1),
            Err(WireError::HeaderTooLarge { .. })
        ));
        assert_eq!(decoder.decode_with_limit(a.encode(), header_len), Ok(a));
    }

    #[test]
    fn smallest_envelope_is_49_bytes() {
        let env = Envelope::new("", "", "", Bytes::new());
        let bytes = env.encode();
        assert_eq!(bytes.len(), 49);
        assert_eq!(env.encoded_len(), 49);
        assert_eq!(&bytes[..4], &[0, 0, 0, 0x2d]);
        assert_eq!(
            &bytes[4..],
            br#"{"target": "", "sender": "", "type_hint": ""}"#
        );
        assert_eq!(Envelope::decode(bytes), Ok(env));
    }

    #[test]
    fn extra_headers_round_trip() {
        let env = Envelope::new("a", "b", "c", &b"xy"[..])
            .with_extra_header("trace_id", "abc")
            .and_then(|e| e.with_extra_header("n", 5))
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = env.encode();
        assert_eq!(env.encoded_len(), bytes.len());
        let header = &bytes[4..bytes.len() - 2];
        assert_eq!(
            header,
            br#"{"target": "a", "sender": "b", "type_hint": "c", "trace_id": "abc", "n": 5}"#
        );
        let back = Envelope::decode(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.extra_header("trace_id"), Some(&Value::from("abc")));
        assert_eq!(back, env);
    }

    #[test]
    fn reserved_extra_key_is_rejected() {
        let err = Envelope::new("a", "b", "c", Bytes::new()).with_extra_header("target", "x");
        assert!(matches!(err, Err(WireError::DuplicateField { ref key, .. }) if key == "target"));
    }

    /// Decodes an envelope made of `hdr` (no payload), expecting an error.
    fn decode_header_err(hdr: &[u8]) -> WireError {
        let mut buf = (hdr.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(hdr);
        Envelope::decode(Bytes::from(buf)).unwrap_err()
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Envelope::decode(Bytes::from_static(b"\x00\x00")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "truncated envelope header length: need 4 bytes, only 2 available"
        );
        let e = Envelope::decode(Bytes::from_static(b"\x00\x00\x00\x10{}")).unwrap_err();
        assert_eq!(
            e,
            WireError::HeaderOverrun {
                header_len: 16,
                available: 2
            }
        );
        let e = Envelope::decode(Bytes::from_static(b"\x00\x00\x00\x02[]")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "envelope header must be a JSON object, got an array"
        );
        let hdr = br#"{"target": "a", "sender": "b"}"#;
        let e = decode_header_err(hdr);
        assert_eq!(
            e.to_string(),
            "envelope header is missing required key `type_hint`"
        );
        let hdr = br#"{"target": 5, "sender": "b", "type_hint": "c"}"#;
        let e = decode_header_err(hdr);
        assert_eq!(
            e.to_string(),
            "envelope header key `target` must be a string, got a number 5"
        );
        let hdr = br#"{"target": "a", "target": "b", "sender": "b", "type_hint": "c"}"#;
        let e = decode_header_err(hdr);
        assert_eq!(e.to_string(), "envelope header has duplicate key `target`");
        let hdr = br#"{"target": "a", "sender": "b", "type_hint": "c"} x"#;
        let e = decode_header_err(hdr);
        assert!(matches!(e, WireError::InvalidJson { .. }), "{e:?}");
    }

    #[test]
    fn header_limit_is_enforced_before_parsing() {
        let env = Envelope::new("abc", "def", "ghi", Bytes::new());
        let e = Envelope::decode_with_limit(env.encode(), 10).unwrap_err();
        assert!(
            matches!(e, WireError::HeaderTooLarge { max: 10, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        // Every special byte at every position of a value longer than a word.
        for special in [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, b'/'] {
            for pos in 0..20 {
                let mut target = vec![b'a'; 20];
                target[pos] = special;
                let target = String::from_utf8_lossy(&target).into_owned();
                let env = Envelope::new(target, "s", "h", Bytes::new());
                let back = Envelope::decode(env.encode()).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(back, env, "special {special:#x} at {pos}");
            }
        }
        assert!(
            parse_header_fast(
                br#"{"target": "abcdefghijklmnop", "sender": "s", "type_hint": "h"}"#
            )
            .is_some()
        );
        assert!(
            parse_header_fast(br#"{"target": "abcdefgh\u00e9", "sender": "s", "type_hint": "h"}"#)
                .is_none()
        );
        assert!(
            parse_header_fast(br#"{"target": "a", "sender": "s", "type_hint": "h", "x": 1}"#)
                .is_none()
        );
    }

    #[test]
    fn payload_is_zero_copy() {
        let env = Envelope::new("t", "s", "h", vec![7u8; 1000]);
        let bytes = env.encode();
        let back = Envelope::decode(bytes.clone()).unwrap_or_else(|e| panic!("{e}"));
        let off = bytes.len() - 1000;
        assert_eq!(back.payload.as_ptr(), bytes[off..].as_ptr());
    }
}
