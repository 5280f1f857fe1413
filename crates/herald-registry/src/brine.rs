//! Brine, rpyc's value encoding, as far as the registry needs it.
//!
//! [`encode`] writes the shortest form byte for byte like rpyc 6.0.2; [`decode`] is a
//! strict, bounded decoder: it never allocates from a declared length or count before
//! checking that many bytes are actually present, limits nesting depth, and reports
//! every problem ([`BrineError`]) with the byte offset where it was found.
//!
//! ```
//! use herald_registry::brine::{decode, encode, Value};
//!
//! let ok = Value::str("OK");
//! assert_eq!(encode(&ok), [0x08, 0x0b, b'O', b'K']);
//! let (back, used) = decode(&[0x08, 0x0b, b'O', b'K']).unwrap();
//! assert_eq!((back, used), (ok, 4));
//! ```

use std::fmt;

/// Default nesting limit of [`decode`] (registry messages nest at most 4 deep).
pub const DEFAULT_MAX_DEPTH: usize = 32;

// Tags (see `specs/rpyc-registry.md` §2).
const TAG_NONE: u8 = 0x00;
const TAG_EMPTY_BYTES: u8 = 0x01;
const TAG_EMPTY_TUPLE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_FALSE: u8 = 0x04;
const TAG_NOT_IMPLEMENTED: u8 = 0x05;
const TAG_ELLIPSIS: u8 = 0x06;
const TAG_STR: u8 = 0x08;
const TAG_BYTES1: u8 = 0x0a; // ..= 0x0d for lengths 1..=4
const TAG_BYTES_L8: u8 = 0x0e;
const TAG_BYTES_L32: u8 = 0x0f;
const TAG_TUP1: u8 = 0x10; // ..= 0x13 for 1..=4 items
const TAG_TUP_L8: u8 = 0x14;
const TAG_TUP_L32: u8 = 0x15;
const TAG_INT_L8: u8 = 0x16;
const TAG_INT_L32: u8 = 0x17;
const TAG_FLOAT: u8 = 0x18;
const TAG_SLICE: u8 = 0x19;
const TAG_FROZENSET: u8 = 0x1a;
const TAG_COMPLEX: u8 = 0x1b;
const IMM_FIRST: u8 = 0x20;
const IMM_LAST: u8 = 0xef;
const IMM_BIAS: i64 = 0x50;

/// A brine value (the subset of Python values brine can carry without rpyc's
/// object proxying).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// `NotImplemented`.
    NotImplemented,
    /// `Ellipsis`.
    Ellipsis,
    /// An int that fits in an `i64`.
    Int(i64),
    /// An int outside the `i64` range, as canonical decimal text (`-?[1-9][0-9]*`).
    BigInt(Box<str>),
    /// A float.
    Float(f64),
    /// A Python `bytes`.
    Bytes(Vec<u8>),
    /// A Python `str`.
    Str(String),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A slice `(start, stop, step)`.
    Slice(Box<[Value; 3]>),
    /// A frozenset, in wire order.
    FrozenSet(Vec<Value>),
    /// A complex number `(real, imag)`.
    Complex(f64, f64),
}

impl Value {
    /// A `str` value.
    pub fn str(s: impl Into<String>) -> Self {
        Value::Str(s.into())
    }

    /// A tuple value.
    pub fn tuple(items: impl IntoIterator<Item = Value>) -> Self {
        Value::Tuple(items.into_iter().collect())
    }

    /// The text when this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items when this is a tuple.
    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// The value when this is an `i64`-sized int.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Python's name of the value's type (used in log and error messages).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::NotImplemented => "NotImplementedType",
            Value::Ellipsis => "ellipsis",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::Slice(_) => "slice",
            Value::FrozenSet(_) => "frozenset",
            Value::Complex(..) => "complex",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

fn write_py_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    f.write_fmt(format_args!("{quote}"))?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c == quote => write!(f, "\\{c}")?,
            c if (c as u32) < 0x20 || c as u32 == 0x7f => write!(f, "\\x{:02x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    write!(f, "{quote}")
}

fn write_py_bytes(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    write!(f, "b{}", quote as char)?;
    for &c in b {
        match c {
            b'\\' => f.write_str("\\\\")?,
            b'\n' => f.write_str("\\n")?,
            b'\r' => f.write_str("\\r")?,
            b'\t' => f.write_str("\\t")?,
            c if c == quote => write!(f, "\\{}", c as char)?,
            0x20..=0x7e => write!(f, "{}", c as char)?,
            c => write!(f, "\\x{c:02x}")?,
        }
    }
    write!(f, "{}", quote as char)
}

fn write_py_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    if x.is_nan() {
        f.write_str("nan")
    } else if x.is_infinite() {
        f.write_str(if x > 0.0 { "inf" } else { "-inf" })
    } else if x.fract() == 0.0 && x.abs() < 1e16 {
        write!(f, "{x:.1}")
    } else {
        write!(f, "{x}")
    }
}

/// Formats the value the way Python's `repr()` does for the common cases (str quoting,
/// bytes escapes, one-item tuples), so that decoded values can be compared with the
/// `*_decoded` fields of the captured vectors and shown to users.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::NotImplemented => f.write_str("NotImplemented"),
            Value::Ellipsis => f.write_str("Ellipsis"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(s) => f.write_str(s),
            Value::Float(x) => write_py_float(f, *x),
            Value::Bytes(b) => write_py_bytes(f, b),
            Value::Str(s) => write_py_str(f, s),
            Value::Tuple(items) => {
                f.write_str("(")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if items.len() == 1 {
                    f.write_str(",")?;
                }
                f.write_str(")")
            }
            Value::Slice(parts) => write!(f, "slice({}, {}, {})", parts[0], parts[1], parts[2]),
            Value::FrozenSet(items) => {
                if items.is_empty() {
                    return f.write_str("frozenset()");
                }
                f.write_str("frozenset({")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("})")
            }
            Value::Complex(re, im) => {
                f.write_str("(")?;
                write_py_float(f, *re)?;
                f.write_str(if *im < 0.0 { "-" } else { "+" })?;
                write_py_float(f, im.abs())?;
                f.write_str("j)")
            }
        }
    }
}

/// What went wrong while decoding, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrineError {
    /// The input ended inside a value (more bytes are needed).
    #[error(
        "truncated brine input at offset {offset}: {what} needs {needed} more byte(s), {available} available"
    )]
    Truncated {
        /// Offset where the missing bytes should start.
        offset: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: usize,
    },
    /// A tag byte that brine does not define.
    #[error("unknown brine tag 0x{tag:02x} at offset {offset}")]
    UnknownTag {
        /// Offset of the tag.
        offset: usize,
        /// The tag byte.
        tag: u8,
    },
    /// A str whose body is not a bytes value.
    #[error("brine str at offset {offset} is followed by a {found} instead of bytes")]
    StrNotBytes {
        /// Offset of the str tag.
        offset: usize,
        /// Python type name of what followed.
        found: &'static str,
    },
    /// A str whose bytes are not UTF-8.
    #[error(
        "brine str at offset {offset} is not valid UTF-8 (bad byte at text position {valid_up_to})"
    )]
    InvalidUtf8 {
        /// Offset of the str tag.
        offset: usize,
        /// Number of valid bytes before the bad one.
        valid_up_to: usize,
    },
    /// Int text that is not canonical decimal.
    #[error("brine int at offset {offset} has invalid decimal text {text:?}")]
    BadIntText {
        /// Offset of the int tag.
        offset: usize,
        /// The text (lossy, at most 40 chars shown).
        text: String,
    },
    /// A slice or frozenset whose body is not a tuple of the right shape.
    #[error("brine {what} at offset {offset} has a malformed body: {found}")]
    BadCompound {
        /// Offset of the tag.
        offset: usize,
        /// `"slice"` or `"frozenset"`.
        what: &'static str,
        /// What was found.
        found: String,
    },
    /// Nesting deeper than allowed.
    #[error("brine value nested deeper than {limit} levels at offset {offset}")]
    TooDeep {
        /// Offset where the limit was crossed.
        offset: usize,
        /// The limit.
        limit: usize,
    },
}

impl BrineError {
    /// True when the input was a valid prefix that ran out: reading more bytes may help
    /// (used by the TCP server to read until one complete value has arrived).
    pub fn is_truncated(&self) -> bool {
        matches!(self, BrineError::Truncated { .. })
    }

    /// For truncated input, the least total input length that could get past the point
    /// where it stopped (`offset + needed`; for items, one byte each); for other errors,
    /// the offset of the problem.
    pub fn needed_end(&self) -> u64 {
        match self {
            BrineError::Truncated { offset, needed, .. } => {
                (*offset as u64).saturating_add(*needed)
            }
            other => other.offset() as u64,
        }
    }

    /// Byte offset of the problem.
    pub fn offset(&self) -> usize {
        match self {
            BrineError::Truncated { offset, .. }
            | BrineError::UnknownTag { offset, .. }
            | BrineError::StrNotBytes { offset, .. }
            | BrineError::InvalidUtf8 { offset, .. }
            | BrineError::BadIntText { offset, .. }
            | BrineError::BadCompound { offset, .. }
            | BrineError::TooDeep { offset, .. } => *offset,
        }
    }
}

/// Encodes `value` in rpyc's shortest form.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::None => out.push(TAG_NONE),
        Value::Bool(true) => out.push(TAG_TRUE),
        Value::Bool(false) => out.push(TAG_FALSE),
        Value::NotImplemented => out.push(TAG_NOT_IMPLEMENTED),
        Value::Ellipsis => out.push(TAG_ELLIPSIS),
        Value::Int(i) => encode_int(*i, out),
        Value::BigInt(text) => encode_int_text(text.as_bytes(), out),
        Value::Float(x) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&x.to_be_bytes());
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::Str(s) => encode_str(s, out),
        Value::Tuple(items) => {
            encode_tuple_header(items.len(), out);
            for v in items {
                encode_into(v, out);
            }
        }
        Value::Slice(parts) => {
            out.push(TAG_SLICE);
            encode_tuple_header(3, out);
            for v in parts.iter() {
                encode_into(v, out);
            }
        }
        Value::FrozenSet(items) => {
            out.push(TAG_FROZENSET);
            encode_tuple_header(items.len(), out);
            for v in items {
                encode_into(v, out);
            }
        }
        Value::Complex(re, im) => {
            out.push(TAG_COMPLEX);
            out.extend_from_slice(&re.to_be_bytes());
            out.extend_from_slice(&im.to_be_bytes());
        }
    }
}

/// Appends an int in shortest form (immediate byte for -48..=159, else decimal text).
pub fn encode_int(i: i64, out: &mut Vec<u8>) {
    if (-48..=159).contains(&i) {
        // In range, so the cast cannot truncate.
        out.push((i + IMM_BIAS) as u8);
    } else {
        let text = itoa_buf(i);
        encode_int_text(text.as_bytes(), out);
    }
}

struct IntText {
    buf: [u8; 20],
    start: usize,
}

impl IntText {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(i: i64) -> IntText {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    let neg = i < 0;
    let mut n = i.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        pos -= 1;
        buf[pos] = b'-';
    }
    IntText { buf, start: pos }
}

fn encode_int_text(text: &[u8], out: &mut Vec<u8>) {
    if text.len() < 256 {
        out.push(TAG_INT_L8);
        out.push(text.len() as u8);
    } else {
        out.push(TAG_INT_L32);
        out.extend_from_slice(&len_u32(text.len()).to_be_bytes());
    }
    out.extend_from_slice(text);
}

fn len_u32(n: usize) -> u32 {
    // Brine cannot express more; values that large never come near the registry.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends a `bytes` value in shortest form.
pub fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    match b.len() {
        0 => out.push(TAG_EMPTY_BYTES),
        n @ 1..=4 => out.push(TAG_BYTES1 + (n as u8 - 1)),
        n @ 5..=255 => {
            out.push(TAG_BYTES_L8);
            out.push(n as u8);
        }
        n => {
            out.push(TAG_BYTES_L32);
            out.extend_from_slice(&len_u32(n).to_be_bytes());
        }
    }
    out.extend_from_slice(b);
}

/// Appends a `str` value (`08` + its UTF-8 as bytes).
pub fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(TAG_STR);
    encode_bytes(s.as_bytes(), out);
}

/// Appends the header of a tuple of `n` items (the items follow).
pub fn encode_tuple_header(n: usize, out: &mut Vec<u8>) {
    match n {
        0 => out.push(TAG_EMPTY_TUPLE),
        1..=4 => out.push(TAG_TUP1 + (n as u8 - 1)),
        5..=255 => {
            out.push(TAG_TUP_L8);
            out.push(n as u8);
        }
        n => {
            out.push(TAG_TUP_L32);
            out.extend_from_slice(&len_u32(n).to_be_bytes());
        }
    }
}

/// Tag and length bytes in front of `n` bytes or `n` tuple items (shortest form).
fn header_len(n: usize) -> usize {
    match n {
        0..=4 => 1,
        5..=255 => 2,
        _ => 5,
    }
}

/// How many bytes [`encode_str`] appends for `s`, without encoding it.
pub fn encoded_str_len(s: &str) -> usize {
    1 + header_len(s.len()) + s.len()
}

/// How many bytes [`encode_int`] appends for `i`, without encoding it.
pub fn encoded_int_len(i: i64) -> usize {
    if (-48..=159).contains(&i) {
        1
    } else {
        // The text of an i64 is at most 20 bytes: always the 1-byte length form.
        2 + itoa_buf(i).as_bytes().len()
    }
}

/// How many bytes [`encode_tuple_header`] appends for `n` items.
pub fn tuple_header_len(n: usize) -> usize {
    header_len(n)
}

/// Decodes the first value of `input` with the default depth limit; returns it and the
/// number of bytes it used (trailing bytes are left to the caller).
pub fn decode(input: &[u8]) -> Result<(Value, usize), BrineError> {
    decode_with_limit(input, DEFAULT_MAX_DEPTH)
}

/// Like [`decode`] with an explicit nesting limit.
pub fn decode_with_limit(input: &[u8], max_depth: usize) -> Result<(Value, usize), BrineError> {
    let mut r = Reader {
        buf: input,
        pos: 0,
        max_depth,
    };
    let v = r.value(0)?;
    Ok((v, r.pos))
}

/// Decodes `input`, which must hold exactly one value.
pub fn decode_exact(input: &[u8]) -> Result<Value, BrineError> {
    let (v, used) = decode(input)?;
    if used != input.len() {
        return Err(BrineError::BadCompound {
            offset: used,
            what: "message",
            found: format!("{} trailing byte(s) after the value", input.len() - used),
        });
    }
    Ok(v)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], BrineError> {
        let available = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= available => {
                let s = &self.buf[self.pos..self.pos + n];
                self.pos += n;
                Ok(s)
            }
            _ => Err(BrineError::Truncated {
                offset: self.pos,
                what,
                needed: n,
                available,
            }),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, BrineError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BrineError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, BrineError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn items(&mut self, count: u64, depth: usize) -> Result<Vec<Value>, BrineError> {
        // Each item takes at least one byte: refuse counts the input cannot hold
        // before allocating anything.
        let available = self.remaining();
        if count > available as u64 {
            return Err(BrineError::Truncated {
                offset: self.pos,
                what: "tuple items",
                needed: count,
                available,
            });
        }
        // Grow as items actually decode rather than trusting the declared count.
        let mut items = Vec::with_capacity(count.min(16) as usize);
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }

    fn value(&mut self, depth: usize) -> Result<Value, BrineError> {
        if depth >= self.max_depth {
            return Err(BrineError::TooDeep {
                offset: self.pos,
                limit: self.max_depth,
            });
        }
        let start = self.pos;
        let tag = self.u8("tag")?;
        Ok(match tag {
            TAG_NONE => Value::None,
            TAG_EMPTY_BYTES => Value::Bytes(Vec::new()),
            TAG_EMPTY_TUPLE => Value::Tuple(Vec::new()),
            TAG_TRUE => Value::Bool(true),
            TAG_FALSE => Value::Bool(false),
            TAG_NOT_IMPLEMENTED => Value::NotImplemented,
            TAG_ELLIPSIS => Value::Ellipsis,
            TAG_STR => {
                let inner = self.value(depth + 1)?;
                match inner {
                    Value::Bytes(b) => match String::from_utf8(b) {
                        Ok(s) => Value::Str(s),
                        Err(e) => {
                            return Err(BrineError::InvalidUtf8 {
                                offset: start,
                                valid_up_to: e.utf8_error().valid_up_to(),
                            });
                        }
                    },
                    other => {
                        return Err(BrineError::StrNotBytes {
                            offset: start,
                            found: other.type_name(),
                        });
                    }
                }
            }
            0x0a..=0x0d => {
                let n = u64::from(tag - TAG_BYTES1 + 1);
                Value::Bytes(self.take(n, "bytes body")?.to_vec())
            }
            TAG_BYTES_L8 => {
                let n = self.u8("bytes length")?;
                Value::Bytes(self.take(u64::from(n), "bytes body")?.to_vec())
            }
            TAG_BYTES_L32 => {
                let n = self.u32("bytes length")?;
                Value::Bytes(self.take(u64::from(n), "bytes body")?.to_vec())
            }
            0x10..=0x13 => Value::Tuple(self.items(u64::from(tag - TAG_TUP1 + 1), depth)?),
            TAG_TUP_L8 => {
                let n = self.u8("tuple count")?;
                Value::Tuple(self.items(u64::from(n), depth)?)
            }
            TAG_TUP_L32 => {
                let n = self.u32("tuple count")?;
                Value::Tuple(self.items(u64::from(n), depth)?)
            }
            TAG_INT_L8 => {
                let n = self.u8("int length")?;
                let text = self.take(u64::from(n), "int text")?;
                parse_int(text, start)?
            }
            TAG_INT_L32 => {
                let n = self.u32("int length")?;
                let text = self.take(u64::from(n), "int text")?;
                parse_int(text, start)?
            }
            TAG_FLOAT => Value::Float(self.f64("float body")?),
            TAG_SLICE => {
                let inner = self.value(depth + 1)?;
                match inner {
                    Value::Tuple(t) if t.len() == 3 => match <[Value; 3]>::try_from(t) {
                        Ok(parts) => Value::Slice(Box::new(parts)),
                        Err(t) => {
                            return Err(BrineError::BadCompound {
                                offset: start,
                                what: "slice",
                                found: format!("expected a 3-tuple, found a {}-tuple", t.len()),
                            });
                        }
                    },
                    other => {
                        return Err(BrineError::BadCompound {
                            offset: start,
                            what: "slice",
                            found: format!("expected a 3-tuple, found {}", describe(&other)),
                        });
                    }
                }
            }
            TAG_FROZENSET => match self.value(depth + 1)? {
                Value::Tuple(t) => Value::FrozenSet(t),
                other => {
                    return Err(BrineError::BadCompound {
                        offset: start,
                        what: "frozenset",
                        found: format!("expected a tuple, found {}", describe(&other)),
                    });
                }
            },
            TAG_COMPLEX => {
                let re = self.f64("complex real part")?;
                let im = self.f64("complex imaginary part")?;
                Value::Complex(re, im)
            }
            IMM_FIRST..=IMM_LAST => Value::Int(i64::from(tag) - IMM_BIAS),
            tag => return Err(BrineError::UnknownTag { offset: start, tag }),
        })
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Tuple(t) => format!("a {}-tuple", t.len()),
        other => format!("a {}", other.type_name()),
    }
}

/// Parses canonical decimal int text (`0` or `-?[1-9][0-9]*`). Python's `int()` is more
/// lenient (spaces, `+`, `_`), but rpyc's encoder never produces those.
fn parse_int(text: &[u8], offset: usize) -> Result<Value, BrineError> {
    let bad = || BrineError::BadIntText {
        offset,
        text: String::from_utf8_lossy(&text[..text.len().min(40)]).into_owned(),
    };
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && !(digits == b"0" && text.len() != digits.len());
    if !canonical {
        return Err(bad());
    }
    // Safe: all bytes are ASCII digits or '-'.
    let s = std::str::from_utf8(text).map_err(|_| bad())?;
    match s.parse::<i64>() {
        Ok(i) => Ok(Value::Int(i)),
        Err(_) => Ok(Value::BigInt(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_lengths_match_the_encoders() {
        for i in [i64::MIN, -1_000_000, -49, -48, 0, 159, 160, 18812, i64::MAX] {
            let mut out = Vec::new();
            encode_int(i, &mut out);
            assert_eq!(encoded_int_len(i), out.len(), "int {i}");
        }
        for n in [0usize, 1, 4, 5, 255, 256, 70_000] {
            let s = "\u{e9}".repeat(n / 2) + &"x".repeat(n % 2);
            let mut out = Vec::new();
            encode_str(&s, &mut out);
            assert_eq!(encoded_str_len(&s), out.len(), "str of {} bytes", s.len());
            let mut out = Vec::new();
            encode_tuple_header(n, &mut out);
            assert_eq!(tuple_header_len(n), out.len(), "tuple of {n}");
        }
    }

    #[test]
    fn immediate_int_range() {
        assert_eq!(encode(&Value::Int(0)), [0x50]);
        assert_eq!(encode(&Value::Int(-48)), [0x20]);
        assert_eq!(encode(&Value::Int(159)), [0xef]);
        assert_eq!(encode(&Value::Int(160)), b"\x16\x03160");
        assert_eq!(
            encode(&Value::Int(i64::MIN)),
            b"\x16\x14-9223372036854775808"
        );
    }

    #[test]
    fn big_int_round_trips_as_text() {
        let text = "9223372036854775808";
        let enc = encode(&Value::BigInt(text.into()));
        assert_eq!(decode(&enc).map(|x| x.0), Ok(Value::BigInt(text.into())));
    }

    #[test]
    fn int_text_must_be_canonical() {
        for bad in [
            &b"\x16\x02+1"[..],
            b"\x16\x0201",
            b"\x16\x02-0",
            b"\x16\x00",
            b"\x16\x021_",
        ] {
            let err = decode(bad).expect_err("non-canonical int text");
            assert!(
                matches!(err, BrineError::BadIntText { offset: 0, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn huge_declared_count_is_an_error_without_allocation() {
        let err = decode(&[0x15, 0xff, 0xff, 0xff, 0xff, 0x00]).expect_err("count too big");
        assert!(err.is_truncated());
        assert_eq!(err.offset(), 5);
        let err = decode(&[0x0f, 0xff, 0xff, 0xff, 0xff]).expect_err("length too big");
        assert!(err.to_string().contains("4294967295"), "{err}");
    }

    #[test]
    fn depth_limit() {
        let deep = vec![0x10u8; 100];
        let err = decode(&deep).expect_err("too deep");
        assert!(
            matches!(
                err,
                BrineError::TooDeep {
                    limit: 32,
                    offset: 32
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn str_errors_name_offset() {
        let err = decode(&[0x10, 0x08, 0x0a, 0xff]).expect_err("bad utf8");
        assert_eq!(
            err,
            BrineError::InvalidUtf8 {
                offset: 1,
                valid_up_to: 0
            }
        );
        let err = decode(&[0x08, 0x50]).expect_err("str of int");
        assert_eq!(
            err,
            BrineError::StrNotBytes {
                offset: 0,
                found: "int"
            }
        );
    }

    #[test]
    fn repr_matches_python() {
        let v = Value::tuple([
            Value::str("it's"),
            Value::Bytes(b"a\x00'".to_vec()),
            Value::Float(1.0),
        ]);
        assert_eq!(v.to_string(), r#"("it's", b"a\x00'", 1.0)"#);
        assert_eq!(Value::tuple([Value::Int(1)]).to_string(), "(1,)");
    }
}
