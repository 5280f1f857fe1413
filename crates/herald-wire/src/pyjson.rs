//! A writer that reproduces Python's `json.dumps` default output byte for byte.
//!
//! Python's defaults are `ensure_ascii=True`, separators `", "` and `": "`,
//! `allow_nan=True` and `float.__repr__` for floats. casty writes every JSON
//! document (envelope header, handshake, tagged payload tree) this way, so a
//! byte-exact encoder needs exactly these rules:
//!
//! - `"` → `\"`, `\` → `\\`, and `\n \r \t \b \f` use their short escapes;
//! - every other byte outside `0x20..=0x7e` (C0 controls and DEL) → `\u00XX`
//!   with lowercase hex;
//! - every non-ASCII code point → `\uXXXX` (lowercase), code points above
//!   U+FFFF as a UTF-16 surrogate pair;
//! - `/` is not escaped.

use bytes::BufMut;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `true` when the byte is written verbatim inside a JSON string.
#[inline]
fn is_plain(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// `true` if any byte of `w` is zero (exact as a yes/no answer).
#[inline]
fn has_zero(w: u64) -> bool {
    (w.wrapping_sub(LO) & !w & HI) != 0
}

/// `true` if any byte of `w` is `"`, `\\`, below 0x20 or above 0x7e, i.e.
/// anything that is not copied verbatim into (or out of) a JSON string.
#[inline]
fn word_needs_attention(w: u64) -> bool {
    has_zero(w ^ (LO * u64::from(b'"')))
        || has_zero(w ^ (LO * u64::from(b'\\')))
        || has_zero(w ^ (LO * 0x7f))
        || (w.wrapping_sub(LO * 0x20) & !w & HI) != 0
        || (w & HI) != 0
}

/// Length of the longest prefix of `bytes`, in whole 8-byte words, made only
/// of bytes that are copied verbatim into a JSON string (printable ASCII other
/// than `"` and `\\`). The caller finishes byte by byte.
#[inline]
pub(crate) fn plain_prefix_words(bytes: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if word_needs_attention(u64::from_le_bytes(word)) {
            break;
        }
        i += 8;
    }
    i
}

/// Length in bytes of `s` once escaped and quoted the `json.dumps` way.
pub fn escaped_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let words = plain_prefix_words(bytes);
    if bytes[words..].iter().all(|&b| is_plain(b)) {
        return bytes.len() + 2;
    }
    let mut n = 2;
    for c in s.chars() {
        n += match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            ' '..='~' => 1,
            c if (c as u32) > 0xffff => 12,
            _ => 6,
        };
    }
    n
}

#[inline]
fn put_u_escape<B: BufMut>(dst: &mut B, unit: u16) {
    dst.put_slice(&[
        b'\\',
        b'u',
        HEX[(unit >> 12) as usize & 0xf],
        HEX[(unit >> 8) as usize & 0xf],
        HEX[(unit >> 4) as usize & 0xf],
        HEX[unit as usize & 0xf],
    ]);
}

/// Writes `s` as a quoted, escaped JSON string the way `json.dumps` does.
pub fn write_str<B: BufMut>(dst: &mut B, s: &str) {
    dst.put_u8(b'"');
    let bytes = s.as_bytes();
    // Copy maximal runs of plain ASCII in one go.
    let mut start = 0;
    let mut i = plain_prefix_words(bytes);
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            i += 1;
            continue;
        }
        dst.put_slice(&bytes[start..i]);
        if b < 0x80 {
            match b {
                b'"' => dst.put_slice(b"\\\""),
                b'\\' => dst.put_slice(b"\\\\"),
                b'\n' => dst.put_slice(b"\\n"),
                b'\r' => dst.put_slice(b"\\r"),
                b'\t' => dst.put_slice(b"\\t"),
                0x08 => dst.put_slice(b"\\b"),
                0x0c => dst.put_slice(b"\\f"),
                other => put_u_escape(dst, u16::from(other)),
            }
            i += 1;
        } else {
            // Decode one UTF-8 scalar starting at i; `s` is valid UTF-8.
            let width = match b {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let c = s[i..i + width].chars().next().unwrap_or('\u{fffd}');
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                put_u_escape(dst, *unit);
            }
            i += width;
        }
        start = i;
    }
    dst.put_slice(&bytes[start..]);
    dst.put_u8(b'"');
}

/// Appends Python's `repr(float)` of `f` (as `json.dumps` writes floats).
///
/// Python uses the shortest round-tripping digits, fixed notation when the
/// decimal exponent is in `-4..16` (always with a fractional part, `1.0`), and
/// otherwise scientific notation with a signed exponent of at least two digits
/// (`1e+16`, `1.5e-05`). NaN and infinities are written `NaN`, `Infinity`,
/// `-Infinity` (Python's `allow_nan=True` default).
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    // decpt: position of the decimal point relative to the digit string.
    let decpt = exp + 1;
    if (-3..=16).contains(&decpt) {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let d = decpt as usize;
            if digits.len() <= d {
                out.push_str(&digits);
                for _ in digits.len()..d {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..d]);
                out.push('.');
                out.push_str(&digits[d..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let a = exp.unsigned_abs();
        if a < 10 {
            out.push('0');
        }
        out.push_str(&a.to_string());
    }
}

/// Writes a `serde_json::Value` the way `json.dumps` would (keys in the map's
/// order, which is sorted for `serde_json::Map` without `preserve_order`).
pub fn write_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                let mut s = String::new();
                write_float(&mut s, n.as_f64().unwrap_or(f64::NAN));
                out.extend_from_slice(s.as_bytes());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_str(out, k);
                out.extend_from_slice(b": ");
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut v = Vec::new();
        write_str(&mut v, s);
        assert_eq!(v.len(), escaped_len(s), "escaped_len disagrees for {s:?}");
        String::from_utf8(v).unwrap_or_default()
    }

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn escapes_like_python() {
        assert_eq!(esc("a/b"), "\"a/b\"");
        assert_eq!(esc("\"\\\n\r\t\u{8}\u{c}"), r#""\"\\\n\r\t\b\f""#);
        assert_eq!(esc("\u{1}\u{1f}\u{7f}"), r#""\u0001\u001f\u007f""#);
        assert_eq!(esc("é計"), r#""\u00e9\u8a08""#);
        assert_eq!(esc("🚀"), r#""\ud83d\ude80""#);
        assert_eq!(esc(""), "\"\"");
    }

    #[test]
    fn floats_like_python_repr() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(-0.0), "-0.0");
        assert_eq!(float(2.75), "2.75");
        assert_eq!(float(0.1), "0.1");
        assert_eq!(float(1e15), "1000000000000000.0");
        assert_eq!(float(1e16), "1e+16");
        assert_eq!(float(1.5e16), "1.5e+16");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(0.00001), "1e-05");
        assert_eq!(float(1.25e-7), "1.25e-07");
        assert_eq!(float(1e300), "1e+300");
        assert_eq!(float(123456.789), "123456.789");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
    }
}
