//! casty's tagged value tree (`JsonSerializer.to_dict`), in JSON and MessagePack.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::WireError;
use crate::pyjson;

/// Maximum nesting depth accepted by the tree decoders (JSON and MessagePack).
pub const MAX_DEPTH: usize = 128;

/// Codec name used in errors for the JSON tree.
pub(crate) const JSON_TREE: &str = "casty-json";
/// Codec name used in errors for the MessagePack tree.
pub(crate) const MSGPACK_TREE: &str = "casty-msgpack";

/// A value of casty's tagged tree, the data model of its `json` and `msgpack`
/// serializers.
///
/// | Python | tree (JSON form) | variant |
/// |---|---|---|
/// | dataclass | `{"_type": "mod.Qual", field: value, ..}` | [`CastyValue::Object`] |
/// | ActorRef | `{"__ref__": "casty://.."}` | [`CastyValue::Ref`] |
/// | Enum | `{"__enum__": "mod.Qual", "value": "NAME"}` | [`CastyValue::Enum`] |
/// | tuple | `{"__tuple__": [..]}` | [`CastyValue::Tuple`] |
/// | frozenset | `{"__frozenset__": [..]}` | [`CastyValue::FrozenSet`] |
/// | dict | `{"__dict__": [[k, v], ..]}` | [`CastyValue::Dict`] |
/// | list | `[..]` | [`CastyValue::List`] |
/// | str, int, float, bool, None | scalars | `Str`, `Int`, `Float`, `Bool`, `None` |
/// | bytes (msgpack only) | bin | [`CastyValue::Bytes`] |
///
/// An object without any tag decodes as [`CastyValue::Map`] (casty never writes
/// one, but a hand-written peer might).
///
/// Field order is preserved so that re-encoding is byte-exact.
#[derive(Debug, Clone, PartialEq)]
pub enum CastyValue {
    /// Python `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int`, within `i64::MIN..=u64::MAX`.
    Int(i128),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes` (MessagePack only; the JSON serializer rejects bytes as casty does).
    Bytes(Vec<u8>),
    /// `list`.
    List(Vec<CastyValue>),
    /// `tuple`.
    Tuple(Vec<CastyValue>),
    /// `frozenset` (element order as written; not canonical in casty).
    FrozenSet(Vec<CastyValue>),
    /// `dict` (any key type), as ordered pairs.
    Dict(Vec<(CastyValue, CastyValue)>),
    /// A dataclass instance.
    Object {
        /// `<module>.<qualname>`, e.g. `casty_vec_msgs.Ping`.
        type_name: String,
        /// Fields in declaration order (without `_type`).
        fields: Vec<(String, CastyValue)>,
    },
    /// An actor reference, by URI.
    Ref(String),
    /// An Enum member: class and member **name**.
    Enum {
        /// `<module>.<qualname>` of the enum class.
        type_name: String,
        /// Member name, e.g. `GREEN`.
        member: String,
    },
    /// An untagged JSON object / MessagePack map with string keys.
    Map(Vec<(String, CastyValue)>),
}

impl CastyValue {
    /// Builds an [`CastyValue::Object`].
    pub fn object(
        type_name: impl Into<String>,
        fields: impl IntoIterator<Item = (impl Into<String>, CastyValue)>,
    ) -> Self {
        CastyValue::Object {
            type_name: type_name.into(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    /// Looks up a field of an [`CastyValue::Object`] or [`CastyValue::Map`].
    pub fn field(&self, name: &str) -> Option<&CastyValue> {
        match self {
            CastyValue::Object { fields, .. } | CastyValue::Map(fields) => {
                fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The `_type` of an object (or `__enum__` class of an enum).
    pub fn type_name(&self) -> Option<&str> {
        match self {
            CastyValue::Object { type_name, .. } | CastyValue::Enum { type_name, .. } => {
                Some(type_name)
            }
            _ => None,
        }
    }

    /// Rewrites the tree into its untagged form: what casty's JSON shows, with
    /// dataclasses, refs, enums, tuples, frozensets and dicts as plain maps
    /// carrying their tags. Only `None`, scalars, `Bytes`, `List` and `Map` remain.
    pub fn into_untagged(self) -> CastyValue {
        fn list(items: Vec<CastyValue>) -> CastyValue {
            CastyValue::List(items.into_iter().map(CastyValue::into_untagged).collect())
        }
        fn tag(name: &str, value: CastyValue) -> CastyValue {
            CastyValue::Map(vec![(name.to_owned(), value)])
        }
        match self {
            CastyValue::List(items) => list(items),
            CastyValue::Tuple(items) => tag("__tuple__", list(items)),
            CastyValue::FrozenSet(items) => tag("__frozenset__", list(items)),
            CastyValue::Dict(pairs) => tag(
                "__dict__",
                CastyValue::List(
                    pairs
                        .into_iter()
                        .map(|(k, v)| CastyValue::List(vec![k.into_untagged(), v.into_untagged()]))
                        .collect(),
                ),
            ),
            CastyValue::Object { type_name, fields } => {
                let mut out = Vec::with_capacity(fields.len() + 1);
                out.push(("_type".to_owned(), CastyValue::Str(type_name)));
                out.extend(fields.into_iter().map(|(k, v)| (k, v.into_untagged())));
                CastyValue::Map(out)
            }
            CastyValue::Ref(uri) => tag("__ref__", CastyValue::Str(uri)),
            CastyValue::Enum { type_name, member } => CastyValue::Map(vec![
                ("__enum__".to_owned(), CastyValue::Str(type_name)),
                ("value".to_owned(), CastyValue::Str(member)),
            ]),
            CastyValue::Map(fields) => CastyValue::Map(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, v.into_untagged()))
                    .collect(),
            ),
            scalar => scalar,
        }
    }

    /// Short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            CastyValue::None => "None",
            CastyValue::Bool(_) => "bool",
            CastyValue::Int(_) => "int",
            CastyValue::Float(_) => "float",
            CastyValue::Str(_) => "str",
            CastyValue::Bytes(_) => "bytes",
            CastyValue::List(_) => "list",
            CastyValue::Tuple(_) => "tuple",
            CastyValue::FrozenSet(_) => "frozenset",
            CastyValue::Dict(_) => "dict",
            CastyValue::Object { .. } => "dataclass",
            CastyValue::Ref(_) => "ActorRef",
            CastyValue::Enum { .. } => "Enum",
            CastyValue::Map(_) => "untagged object",
        }
    }

    // ----------------------------------------------------------------- JSON

    /// Encodes as casty's `json` serializer does (`json.dumps` defaults), byte-exact.
    ///
    /// # Errors
    /// [`WireError::Payload`] for [`CastyValue::Bytes`] (casty raises `TypeError`)
    /// and for integers outside `i64::MIN..=u64::MAX`.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        self.write_json(&mut out)?;
        Ok(out)
    }

    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            CastyValue::None => out.extend_from_slice(b"null"),
            CastyValue::Bool(true) => out.extend_from_slice(b"true"),
            CastyValue::Bool(false) => out.extend_from_slice(b"false"),
            CastyValue::Int(i) => {
                check_int(*i, JSON_TREE)?;
                out.extend_from_slice(i.to_string().as_bytes());
            }
            CastyValue::Float(f) => {
                let mut s = String::new();
                pyjson::write_float(&mut s, *f);
                out.extend_from_slice(s.as_bytes());
            }
            CastyValue::Str(s) => pyjson::write_str(out, s),
            CastyValue::Bytes(b) => {
                return Err(WireError::Payload {
                    codec: JSON_TREE,
                    message: format!(
                        "bytes value of {} bytes is not JSON serializable (use the msgpack tree)",
                        b.len()
                    ),
                });
            }
            CastyValue::List(items) => write_json_array(out, items)?,
            CastyValue::Tuple(items) => {
                out.extend_from_slice(br#"{"__tuple__": "#);
                write_json_array(out, items)?;
                out.push(b'}');
            }
            CastyValue::FrozenSet(items) => {
                out.extend_from_slice(br#"{"__frozenset__": "#);
                write_json_array(out, items)?;
                out.push(b'}');
            }
            CastyValue::Dict(pairs) => {
                out.extend_from_slice(br#"{"__dict__": ["#);
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.push(b'[');
                    k.write_json(out)?;
                    out.extend_from_slice(b", ");
                    v.write_json(out)?;
                    out.push(b']');
                }
                out.extend_from_slice(b"]}");
            }
            CastyValue::Object { type_name, fields } => {
                out.extend_from_slice(br#"{"_type": "#);
                pyjson::write_str(out, type_name);
                for (k, v) in fields {
                    out.extend_from_slice(b", ");
                    pyjson::write_str(out, k);
                    out.extend_from_slice(b": ");
                    v.write_json(out)?;
                }
                out.push(b'}');
            }
            CastyValue::Ref(uri) => {
                out.extend_from_slice(br#"{"__ref__": "#);
                pyjson::write_str(out, uri);
                out.push(b'}');
            }
            CastyValue::Enum { type_name, member } => {
                out.extend_from_slice(br#"{"__enum__": "#);
                pyjson::write_str(out, type_name);
                out.extend_from_slice(br#", "value": "#);
                pyjson::write_str(out, member);
                out.push(b'}');
            }
            CastyValue::Map(fields) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    pyjson::write_str(out, k);
                    out.extend_from_slice(b": ");
                    v.write_json(out)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// Decodes a JSON tree (any whitespace and key order, raw UTF-8 accepted).
    ///
    /// # Errors
    /// [`WireError::Payload`] naming the problem: invalid JSON, a malformed tag
    /// (e.g. `__tuple__` not holding a list), nesting deeper than [`MAX_DEPTH`].
    pub fn from_json_bytes(bytes: &[u8]) -> Result<CastyValue, WireError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw = RawJson::deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| WireError::Payload {
                codec: JSON_TREE,
                message: format!("invalid JSON: {e}"),
            })?;
        raw.into_casty(JSON_TREE)
    }

    // ------------------------------------------------------------ MessagePack

    /// Encodes as casty's `msgpack` serializer does (`msgpack.packb(tree,
    /// use_bin_type=True)`): smallest int/str/array/map forms, floats as float64.
    ///
    /// # Errors
    /// [`WireError::Payload`] for integers outside `i64::MIN..=u64::MAX` or
    /// containers longer than `u32::MAX`.
    pub fn to_msgpack_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        self.write_msgpack(&mut out)?;
        Ok(out)
    }

    fn write_msgpack(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        use rmp::encode as enc;
        fn e<E: std::fmt::Display>(err: E) -> WireError {
            mp_err(err.to_string())
        }
        match self {
            CastyValue::None => enc::write_nil(out).map_err(e)?,
            CastyValue::Bool(b) => enc::write_bool(out, *b).map_err(e)?,
            CastyValue::Int(i) => {
                check_int(*i, MSGPACK_TREE)?;
                if *i < 0 {
                    enc::write_sint(out, *i as i64).map_err(e)?;
                } else {
                    enc::write_uint(out, *i as u64).map_err(e)?;
                }
            }
            CastyValue::Float(f) => enc::write_f64(out, *f).map_err(e)?,
            CastyValue::Str(s) => enc::write_str(out, s).map_err(e)?,
            CastyValue::Bytes(b) => enc::write_bin(out, b).map_err(e)?,
            CastyValue::List(items) => write_msgpack_array(out, items)?,
            CastyValue::Tuple(items) => {
                enc::write_map_len(out, 1).map_err(e)?;
                enc::write_str(out, "__tuple__").map_err(e)?;
                write_msgpack_array(out, items)?;
            }
            CastyValue::FrozenSet(items) => {
                enc::write_map_len(out, 1).map_err(e)?;
                enc::write_str(out, "__frozenset__").map_err(e)?;
                write_msgpack_array(out, items)?;
            }
            CastyValue::Dict(pairs) => {
                enc::write_map_len(out, 1).map_err(e)?;
                enc::write_str(out, "__dict__").map_err(e)?;
                enc::write_array_len(out, len_u32(pairs.len())?).map_err(e)?;
                for (k, v) in pairs {
                    enc::write_array_len(out, 2).map_err(e)?;
                    k.write_msgpack(out)?;
                    v.write_msgpack(out)?;
                }
            }
            CastyValue::Object { type_name, fields } => {
                enc::write_map_len(out, len_u32(fields.len() + 1)?).map_err(e)?;
                enc::write_str(out, "_type").map_err(e)?;
                enc::write_str(out, type_name).map_err(e)?;
                for (k, v) in fields {
                    enc::write_str(out, k).map_err(e)?;
                    v.write_msgpack(out)?;
                }
            }
            CastyValue::Ref(uri) => {
                enc::write_map_len(out, 1).map_err(e)?;
                enc::write_str(out, "__ref__").map_err(e)?;
                enc::write_str(out, uri).map_err(e)?;
            }
            CastyValue::Enum { type_name, member } => {
                enc::write_map_len(out, 2).map_err(e)?;
                enc::write_str(out, "__enum__").map_err(e)?;
                enc::write_str(out, type_name).map_err(e)?;
                enc::write_str(out, "value").map_err(e)?;
                enc::write_str(out, member).map_err(e)?;
            }
            CastyValue::Map(fields) => {
                enc::write_map_len(out, len_u32(fields.len())?).map_err(e)?;
                for (k, v) in fields {
                    enc::write_str(out, k).map_err(e)?;
                    v.write_msgpack(out)?;
                }
            }
        }
        Ok(())
    }

    /// Decodes a MessagePack tree.
    ///
    /// # Errors
    /// [`WireError::Payload`] naming the problem: truncated data, an
    /// unsupported marker (ext types), invalid UTF-8 in a str, a malformed tag,
    /// trailing bytes, nesting deeper than [`MAX_DEPTH`].
    pub fn from_msgpack_bytes(bytes: &[u8]) -> Result<CastyValue, WireError> {
        let mut rd = MsgpackReader { buf: bytes, pos: 0 };
        let raw = rd.read(0)?;
        if rd.pos != bytes.len() {
            return Err(mp_err(format!(
                "{} trailing bytes after the value at offset {}",
                bytes.len() - rd.pos,
                rd.pos
            )));
        }
        raw.into_casty(MSGPACK_TREE)
    }
}

fn len_u32(n: usize) -> Result<u32, WireError> {
    u32::try_from(n).map_err(|_| mp_err(format!("container of {n} items exceeds u32::MAX")))
}

fn check_int(i: i128, codec: &'static str) -> Result<(), WireError> {
    if i < i128::from(i64::MIN) || i > i128::from(u64::MAX) {
        return Err(WireError::Payload {
            codec,
            message: format!("integer {i} is outside i64::MIN..=u64::MAX"),
        });
    }
    Ok(())
}

fn write_json_array(out: &mut Vec<u8>, items: &[CastyValue]) -> Result<(), WireError> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        item.write_json(out)?;
    }
    out.push(b']');
    Ok(())
}

fn write_msgpack_array(out: &mut Vec<u8>, items: &[CastyValue]) -> Result<(), WireError> {
    rmp::encode::write_array_len(out, len_u32(items.len())?).map_err(|e| mp_err(e.to_string()))?;
    for item in items {
        item.write_msgpack(out)?;
    }
    Ok(())
}

fn mp_err(message: String) -> WireError {
    WireError::Payload {
        codec: MSGPACK_TREE,
        message,
    }
}

/// An untagged document (JSON or MessagePack) before tag interpretation.
#[derive(Debug)]
pub(crate) enum Raw {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Raw>),
    /// Map with keys of any kind, in order.
    Map(Vec<(Raw, Raw)>),
}

impl Raw {
    fn describe(&self) -> &'static str {
        match self {
            Raw::Nil => "null",
            Raw::Bool(_) => "a boolean",
            Raw::Int(_) => "an integer",
            Raw::Float(_) => "a float",
            Raw::Str(_) => "a string",
            Raw::Bin(_) => "bytes",
            Raw::Array(_) => "an array",
            Raw::Map(_) => "an object",
        }
    }

    pub(crate) fn into_casty(self, codec: &'static str) -> Result<CastyValue, WireError> {
        let err = |message: String| WireError::Payload { codec, message };
        Ok(match self {
            Raw::Nil => CastyValue::None,
            Raw::Bool(b) => CastyValue::Bool(b),
            Raw::Int(i) => CastyValue::Int(i),
            Raw::Float(f) => CastyValue::Float(f),
            Raw::Str(s) => CastyValue::Str(s),
            Raw::Bin(b) => CastyValue::Bytes(b),
            Raw::Array(items) => CastyValue::List(into_list(items, codec)?),
            Raw::Map(pairs) => {
                let tag = |name: &str| {
                    pairs
                        .iter()
                        .position(|(k, _)| matches!(k, Raw::Str(s) if s == name))
                };
                if let Some(i) = tag("_type") {
                    let mut pairs = pairs;
                    let (_, type_name) = pairs.remove(i);
                    let Raw::Str(type_name) = type_name else {
                        return Err(err(format!(
                            "\"_type\" must be a string, got {}",
                            type_name.describe()
                        )));
                    };
                    let mut fields = Vec::with_capacity(pairs.len());
                    for (k, v) in pairs {
                        let Raw::Str(k) = k else {
                            return Err(err(format!(
                                "field name of dataclass {type_name:?} must be a string, got {}",
                                k.describe()
                            )));
                        };
                        fields.push((k, v.into_casty(codec)?));
                    }
                    CastyValue::Object { type_name, fields }
                } else if let Some(i) = tag("__ref__") {
                    match pairs.into_iter().nth(i).map(|(_, v)| v) {
                        Some(Raw::Str(uri)) => CastyValue::Ref(uri),
                        other => {
                            return Err(err(format!(
                                "\"__ref__\" must be a URI string, got {}",
                                other.map_or("nothing", |v| v.describe())
                            )));
                        }
                    }
                } else if let Some(i) = tag("__enum__") {
                    let member = pairs
                        .iter()
                        .find(|(k, _)| matches!(k, Raw::Str(s) if s == "value"))
                        .map(|(_, v)| v);
                    match (&pairs[i].1, member) {
                        (Raw::Str(type_name), Some(Raw::Str(member))) => CastyValue::Enum {
                            type_name: type_name.clone(),
                            member: member.clone(),
                        },
                        (Raw::Str(type_name), other) => {
                            return Err(err(format!(
                                "enum {type_name:?} needs a string \"value\" (member name), got {}",
                                other.map_or("nothing", |v| v.describe())
                            )));
                        }
                        (other, _) => {
                            return Err(err(format!(
                                "\"__enum__\" must be a class name string, got {}",
                                other.describe()
                            )));
                        }
                    }
                } else if let Some(i) = tag("__tuple__") {
                    CastyValue::Tuple(tagged_list(pairs, i, "__tuple__", codec)?)
                } else if let Some(i) = tag("__frozenset__") {
                    CastyValue::FrozenSet(tagged_list(pairs, i, "__frozenset__", codec)?)
                } else if let Some(i) = tag("__dict__") {
                    let Some((_, Raw::Array(items))) = pairs.into_iter().nth(i) else {
                        return Err(err(
                            "\"__dict__\" must be a list of [key, value] pairs".into()
                        ));
                    };
                    let mut out = Vec::with_capacity(items.len());
                    for (n, item) in items.into_iter().enumerate() {
                        match item {
                            Raw::Array(kv) if kv.len() == 2 => {
                                let mut kv = kv.into_iter();
                                if let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                                    out.push((k.into_casty(codec)?, v.into_casty(codec)?));
                                }
                            }
                            other => {
                                return Err(err(format!(
                                    "\"__dict__\" entry {n} must be a [key, value] pair, got {}",
                                    other.describe()
                                )));
                            }
                        }
                    }
                    CastyValue::Dict(out)
                } else {
                    let mut fields = Vec::with_capacity(pairs.len());
                    for (k, v) in pairs {
                        let Raw::Str(k) = k else {
                            return Err(err(format!(
                                "untagged map key must be a string, got {}",
                                k.describe()
                            )));
                        };
                        fields.push((k, v.into_casty(codec)?));
                    }
                    CastyValue::Map(fields)
                }
            }
        })
    }
}

fn into_list(items: Vec<Raw>, codec: &'static str) -> Result<Vec<CastyValue>, WireError> {
    items.into_iter().map(|v| v.into_casty(codec)).collect()
}

fn tagged_list(
    pairs: Vec<(Raw, Raw)>,
    i: usize,
    tag: &str,
    codec: &'static str,
) -> Result<Vec<CastyValue>, WireError> {
    match pairs.into_iter().nth(i).map(|(_, v)| v) {
        Some(Raw::Array(items)) => into_list(items, codec),
        other => Err(WireError::Payload {
            codec,
            message: format!(
                "{tag:?} must hold a list, got {}",
                other.map_or("nothing", |v| v.describe())
            ),
        }),
    }
}

// ------------------------------------------------------------- JSON -> Raw

struct RawJson;

impl RawJson {
    fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Raw, D::Error> {
        de.deserialize_any(RawVisitor)
    }
}

pub(crate) struct RawVisitor;

struct RawSeed;

impl<'de> de::DeserializeSeed<'de> for RawSeed {
    type Value = Raw;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Raw, D::Error> {
        de.deserialize_any(RawVisitor)
    }
}

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Nil)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(i128::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        i128::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom(format_args!("integer {v} is too large")))
    }
    fn visit_f32<E>(self, v: f32) -> Result<Raw, E> {
        Ok(Raw::Float(v.into()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Bin(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Raw, E> {
        Ok(Raw::Bin(v))
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(RawSeed)? {
            items.push(item);
        }
        Ok(Raw::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut pairs: Vec<(Raw, Raw)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(RawSeed)?;
            if pairs
                .iter()
                .any(|(k, _)| matches!(k, Raw::Str(s) if *s == key))
            {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            pairs.push((Raw::Str(key), value));
        }
        Ok(Raw::Map(pairs))
    }
}

// ------------------------------------------------------- MessagePack -> Raw

struct MsgpackReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> MsgpackReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(mp_err(format!(
                "truncated {what} at offset {}: need {n} bytes, {} left",
                self.pos,
                self.buf.len() - self.pos
            ))),
        }
    }

    fn be(&mut self, n: usize, what: &str) -> Result<u64, WireError> {
        Ok(self
            .take(n, what)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn read(&mut self, depth: usize) -> Result<Raw, WireError> {
        if depth > MAX_DEPTH {
            return Err(mp_err(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let at = self.pos;
        let m = self.take(1, "marker")?[0];
        Ok(match m {
            0x00..=0x7f => Raw::Int(i128::from(m)),
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth)?,
            0xa0..=0xbf => self.str(usize::from(m & 0x1f))?,
            0xc0 => Raw::Nil,
            0xc2 => Raw::Bool(false),
            0xc3 => Raw::Bool(true),
            0xc4..=0xc6 => {
                let n = self.be(1 << (m - 0xc4), "bin length")? as usize;
                Raw::Bin(self.take(n, "bin data")?.to_vec())
            }
            0xca => Raw::Float(f64::from(f32::from_bits(self.be(4, "float32")? as u32))),
            0xcb => Raw::Float(f64::from_bits(self.be(8, "float64")?)),
            0xcc..=0xcf => Raw::Int(i128::from(self.be(1 << (m - 0xcc), "uint")?)),
            0xd0 => Raw::Int(i128::from(self.be(1, "int8")? as u8 as i8)),
            0xd1 => Raw::Int(i128::from(self.be(2, "int16")? as u16 as i16)),
            0xd2 => Raw::Int(i128::from(self.be(4, "int32")? as u32 as i32)),
            0xd3 => Raw::Int(i128::from(self.be(8, "int64")? as i64)),
            0xd9..=0xdb => {
                let n = self.be(1 << (m - 0xd9), "str length")? as usize;
                self.str(n)?
            }
            0xdc => {
                let n = self.be(2, "array length")? as usize;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.be(4, "array length")? as usize;
                self.array(n, depth)?
            }
            0xde => {
                let n = self.be(2, "map length")? as usize;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.be(4, "map length")? as usize;
                self.map(n, depth)?
            }
            0xe0..=0xff => Raw::Int(i128::from(m as i8)),
            other => {
                return Err(mp_err(format!(
                    "unsupported marker 0x{other:02x} at offset {at} (ext types and 0xc1 are not part of casty's tree)"
                )));
            }
        })
    }

    fn str(&mut self, n: usize) -> Result<Raw, WireError> {
        let at = self.pos;
        let bytes = self.take(n, "str data")?;
        let s = std::str::from_utf8(bytes)
            .map_err(|e| mp_err(format!("str at offset {at} is not valid UTF-8: {e}")))?;
        Ok(Raw::Str(s.to_owned()))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Raw, WireError> {
        // Each element takes at least one byte: never pre-allocate beyond the input.
        let mut items = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            items.push(self.read(depth + 1)?);
        }
        Ok(Raw::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Raw, WireError> {
        let mut pairs: Vec<(Raw, Raw)> = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            let at = self.pos;
            let k = self.read(depth + 1)?;
            let v = self.read(depth + 1)?;
            if let Raw::Str(s) = &k
                && pairs
                    .iter()
                    .any(|(pk, _)| matches!(pk, Raw::Str(p) if p == s))
            {
                return Err(mp_err(format!("duplicate map key {s:?} at offset {at}")));
            }
            pairs.push((k, v));
        }
        Ok(Raw::Map(pairs))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn ping_is_byte_exact_in_both_forms() {
        let ping = CastyValue::object("casty_vec_msgs.Ping", [("value", CastyValue::Int(42))]);
        assert_eq!(
            ping.to_json_bytes().unwrap_or_default(),
            br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#
        );
        let mp = ping.to_msgpack_bytes().unwrap_or_default();
        assert_eq!(mp.len(), 34);
        assert_eq!(CastyValue::from_msgpack_bytes(&mp), Ok(ping.clone()));
        assert_eq!(
            CastyValue::from_json_bytes(br#"{"value":42,"_type":"casty_vec_msgs.Ping"}"#),
            Ok(ping)
        );
    }

    #[test]
    fn bytes_are_rejected_by_json_like_casty() {
        let e = CastyValue::Bytes(vec![0, 255]).to_json_bytes().unwrap_err();
        assert_eq!(
            e.to_string(),
            "casty-json payload codec failed: bytes value of 2 bytes is not JSON serializable (use the msgpack tree)"
        );
    }

    #[test]
    fn malformed_tags_are_named() {
        let e = CastyValue::from_json_bytes(br#"{"__tuple__": 5}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"__tuple__\" must hold a list, got an integer"),
            "{e}"
        );
        let e = CastyValue::from_json_bytes(br#"{"__dict__": [[1]]}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("entry 0 must be a [key, value] pair"),
            "{e}"
        );
        let e = CastyValue::from_json_bytes(br#"{"__enum__": "m.C"}"#).unwrap_err();
        assert!(e.to_string().contains("needs a string \"value\""), "{e}");
        let e = CastyValue::from_json_bytes(br#"{"a": 1, "a": 2}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key"), "{e}");
    }

    #[test]
    fn msgpack_rejects_garbage_without_allocating() {
        // Array announcing 2^32-1 elements with no data.
        let e = CastyValue::from_msgpack_bytes(&[0xdd, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("truncated marker"), "{e}");
        let e = CastyValue::from_msgpack_bytes(&[0xc1]).unwrap_err();
        assert!(e.to_string().contains("unsupported marker 0xc1"), "{e}");
        let e = CastyValue::from_msgpack_bytes(&[0x01, 0x02]).unwrap_err();
        assert!(e.to_string().contains("1 trailing bytes"), "{e}");
        let deep = vec![0x91u8; 10_000];
        let e = CastyValue::from_msgpack_bytes(&deep).unwrap_err();
        assert!(e.to_string().contains("nesting deeper"), "{e}");
        let e = CastyValue::from_msgpack_bytes(&[0xa2, 0xff, 0xfe]).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn deep_json_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(CastyValue::from_json_bytes(deep.as_bytes()).is_err());
    }
}
