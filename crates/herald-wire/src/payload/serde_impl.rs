//! serde mapping between Rust types and [`CastyValue`].
//!
//! | Rust (serde) | tree |
//! |---|---|
//! | struct (serde name, e.g. `#[serde(rename = "casty_vec_msgs.Inner")]`) | dataclass `{"_type": name, ..}` |
//! | unit struct | dataclass without fields |
//! | unit enum variant | Enum `{"__enum__": enum name, "value": variant}` |
//! | struct variant | dataclass named after the variant |
//! | newtype variant | the inner value (e.g. an enum of message structs) |
//! | `Vec`, sequences | list |
//! | tuples, tuple structs | `{"__tuple__": [..]}` |
//! | maps | `{"__dict__": [[k, v], ..]}` |
//! | `Option` | `None` or the value |
//! | [`FrozenSet`] | `{"__frozenset__": [..]}` |
//! | [`CastyRef`] | `{"__ref__": uri}` |
//! | `serde_bytes`-style bytes | bytes (MessagePack only) |

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};
use serde::{Deserialize, Deserializer, Serializer};

use super::value::{CastyValue, Raw, RawVisitor};

/// serde name that marks a [`CastyRef`].
pub(crate) const REF_NAME: &str = "$casty::Ref";
/// serde name that marks a [`FrozenSet`].
pub(crate) const FROZENSET_NAME: &str = "$casty::FrozenSet";
/// serde name that marks an embedded [`CastyValue`] (e.g. a field typed `Any` in Python).
pub(crate) const VALUE_NAME: &str = "$casty::Value";

/// Serializes a tree in its untagged form (casty's JSON shape), so that it can
/// be embedded in a Rust struct (a Python field typed `Any`) and also written by
/// plain serde formats.
impl Serialize for CastyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(VALUE_NAME, &Untagged(self))
    }
}

struct Untagged<'a>(&'a CastyValue);

impl Serialize for Untagged<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeSeq};
        fn seq<S: Serializer>(s: S, items: &[CastyValue]) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(&Untagged(item))?;
            }
            seq.end()
        }
        struct Seq<'a>(&'a [CastyValue]);
        impl Serialize for Seq<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                seq(s, self.0)
            }
        }
        /// casty's one-key tagged form, e.g. `{"__tuple__": [..]}`.
        fn tagged<S: Serializer, V: Serialize + ?Sized>(
            s: S,
            tag: &str,
            value: &V,
        ) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(tag, value)?;
            m.end()
        }
        /// A dict item as a two-element list `[k, v]`.
        struct Pair<'a>(&'a CastyValue, &'a CastyValue);
        impl Serialize for Pair<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(2))?;
                seq.serialize_element(&Untagged(self.0))?;
                seq.serialize_element(&Untagged(self.1))?;
                seq.end()
            }
        }
        struct Pairs<'a>(&'a [(CastyValue, CastyValue)]);
        impl Serialize for Pairs<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    seq.serialize_element(&Pair(k, v))?;
                }
                seq.end()
            }
        }
        match self.0 {
            CastyValue::None => s.serialize_none(),
            CastyValue::Bool(b) => s.serialize_bool(*b),
            CastyValue::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
                (Ok(v), _) => s.serialize_i64(v),
                (_, Ok(v)) => s.serialize_u64(v),
                _ => s.serialize_i128(*i),
            },
            CastyValue::Float(f) => s.serialize_f64(*f),
            CastyValue::Str(v) => s.serialize_str(v),
            CastyValue::Bytes(b) => s.serialize_bytes(b),
            CastyValue::List(items) => seq(s, items),
            CastyValue::Tuple(items) => tagged(s, "__tuple__", &Seq(items)),
            CastyValue::FrozenSet(items) => tagged(s, "__frozenset__", &Seq(items)),
            CastyValue::Dict(pairs) => tagged(s, "__dict__", &Pairs(pairs)),
            CastyValue::Object { type_name, fields } => {
                let mut m = s.serialize_map(Some(fields.len() + 1))?;
                m.serialize_entry("_type", type_name)?;
                for (k, v) in fields {
                    m.serialize_entry(k, &Untagged(v))?;
                }
                m.end()
            }
            CastyValue::Ref(uri) => tagged(s, "__ref__", uri),
            CastyValue::Enum { type_name, member } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("__enum__", type_name)?;
                m.serialize_entry("value", member)?;
                m.end()
            }
            CastyValue::Map(fields) => {
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, &Untagged(v))?;
                }
                m.end()
            }
        }
    }
}

/// Deserializes a tree from its untagged form (from any self-describing format).
impl<'de> Deserialize<'de> for CastyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CastyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a casty tagged value")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<CastyValue, D::Error> {
                let raw = d.deserialize_any(RawVisitor)?;
                raw.into_casty("tree").map_err(de::Error::custom)
            }
        }
        d.deserialize_newtype_struct(VALUE_NAME, V)
    }
}

/// Converts an untagged tree (only scalars, bytes, lists and maps) back into a
/// tagged one, as the decoders do.
fn retag(v: CastyValue) -> Result<CastyValue, TreeError> {
    fn raw(v: CastyValue) -> Raw {
        match v {
            CastyValue::None => Raw::Nil,
            CastyValue::Bool(b) => Raw::Bool(b),
            CastyValue::Int(i) => Raw::Int(i),
            CastyValue::Float(f) => Raw::Float(f),
            CastyValue::Str(s) | CastyValue::Ref(s) => Raw::Str(s),
            CastyValue::Bytes(b) => Raw::Bin(b),
            CastyValue::Dict(pairs) => {
                Raw::Map(pairs.into_iter().map(|(k, v)| (raw(k), raw(v))).collect())
            }
            CastyValue::List(items) => Raw::Array(items.into_iter().map(raw).collect()),
            CastyValue::Map(fields) => Raw::Map(
                fields
                    .into_iter()
                    .map(|(k, v)| (Raw::Str(k), raw(v)))
                    .collect(),
            ),
            // Not produced by `Untagged`, but keep their meaning if they appear.
            tagged @ (CastyValue::Tuple(_)
            | CastyValue::FrozenSet(_)
            | CastyValue::Object { .. }
            | CastyValue::Enum { .. }) => raw(tagged.into_untagged()),
        }
    }
    raw(v)
        .into_casty("tree")
        .map_err(|e| TreeError(e.to_string()))
}

/// An actor reference inside a message: `{"__ref__": "casty://.."}`.
///
/// With plain serde formats (JSON, MessagePack) it is just the URI string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CastyRef(pub String);

impl Serialize for CastyRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(REF_NAME, &self.0)
    }
}

impl<'de> Deserialize<'de> for CastyRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CastyRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an actor reference URI")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<CastyRef, D::Error> {
                String::deserialize(d).map(CastyRef)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CastyRef, E> {
                Ok(CastyRef(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<CastyRef, E> {
                Ok(CastyRef(v))
            }
        }
        d.deserialize_newtype_struct(REF_NAME, V)
    }
}

/// A Python `frozenset`: `{"__frozenset__": [..]}` (a plain list in other formats).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FrozenSet<T>(pub Vec<T>);

impl<T: Serialize> Serialize for FrozenSet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(FROZENSET_NAME, &self.0)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FrozenSet<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = FrozenSet<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frozenset")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                Vec::<T>::deserialize(d).map(FrozenSet)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(FrozenSet(out))
            }
        }
        d.deserialize_newtype_struct(FROZENSET_NAME, V(std::marker::PhantomData))
    }
}

/// Error of the serde mapping (converted into [`WireError::Payload`](crate::WireError::Payload)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeError(pub String);

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TreeError {}

impl ser::Error for TreeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TreeError(msg.to_string())
    }
}

impl de::Error for TreeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TreeError(msg.to_string())
    }
}

/// Converts any `Serialize` value into a tree.
///
/// # Errors
/// [`TreeError`] for shapes casty has no form for (tuple variants).
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<CastyValue, TreeError> {
    value.serialize(ValueSerializer)
}

/// Converts a tree into any `Deserialize` type.
///
/// # Errors
/// [`TreeError`] naming the mismatch (e.g. "invalid type: str, expected i64").
pub fn from_value<T: de::DeserializeOwned>(value: CastyValue) -> Result<T, TreeError> {
    T::deserialize(value)
}

// ============================================================ Serializer

struct ValueSerializer;

/// Collects a sequence-like container.
#[doc(hidden)]
pub struct SeqBuilder {
    kind: SeqKind,
    items: Vec<CastyValue>,
}

enum SeqKind {
    List,
    Tuple,
}

/// Pre-allocation cap: a length hint is not trusted beyond this.
const MAX_PREALLOC: usize = 4096;

impl SeqBuilder {
    fn new(kind: SeqKind, len: usize) -> Self {
        SeqBuilder {
            kind,
            items: Vec::with_capacity(len.min(MAX_PREALLOC)),
        }
    }
}

/// Collects a map into a `dict`.
#[doc(hidden)]
pub struct MapBuilder {
    pairs: Vec<(CastyValue, CastyValue)>,
    key: Option<CastyValue>,
}

/// Collects a struct into a dataclass.
#[doc(hidden)]
pub struct StructBuilder {
    type_name: String,
    fields: Vec<(String, CastyValue)>,
}

impl StructBuilder {
    fn new(type_name: &str, len: usize) -> Self {
        StructBuilder {
            type_name: type_name.to_owned(),
            fields: Vec::with_capacity(len),
        }
    }
}

/// `Serializer` methods for integer types that fit a Python int (`i128`).
macro_rules! serialize_ints {
    ($($method:ident: $ty:ty,)*) => {$(
        fn $method(self, v: $ty) -> Result<CastyValue, TreeError> {
            Ok(CastyValue::Int(v.into()))
        }
    )*};
}

impl Serializer for ValueSerializer {
    type Ok = CastyValue;
    type Error = TreeError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = ser::Impossible<CastyValue, TreeError>;
    type SerializeMap = MapBuilder;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructBuilder;

    fn serialize_bool(self, v: bool) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Bool(v))
    }
    serialize_ints! {
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
    }
    fn serialize_f32(self, v: f32) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<CastyValue, TreeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::None)
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Object {
            type_name: name.to_owned(),
            fields: Vec::new(),
        })
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Enum {
            type_name: name.to_owned(),
            member: variant.to_owned(),
        })
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<CastyValue, TreeError> {
        let inner = value.serialize(ValueSerializer)?;
        match name {
            REF_NAME => match inner {
                CastyValue::Str(uri) => Ok(CastyValue::Ref(uri)),
                other => Err(TreeError(format!(
                    "an actor reference must be a URI string, got {}",
                    other.kind()
                ))),
            },
            VALUE_NAME => retag(inner),
            FROZENSET_NAME => match inner {
                CastyValue::List(items) => Ok(CastyValue::FrozenSet(items)),
                other => Err(TreeError(format!(
                    "a frozenset must be a sequence, got {}",
                    other.kind()
                ))),
            },
            _ => Ok(inner),
        }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<CastyValue, TreeError> {
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder::new(SeqKind::List, len.unwrap_or(0)))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder::new(SeqKind::Tuple, len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, TreeError> {
        self.serialize_tuple(len)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, TreeError> {
        Err(TreeError(format!(
            "tuple variant {name}::{variant} has no casty form (use a struct variant or a newtype variant)"
        )))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, TreeError> {
        Ok(MapBuilder {
            pairs: Vec::with_capacity(len.unwrap_or(0).min(MAX_PREALLOC)),
            key: None,
        })
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder::new(name, len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder::new(variant, len))
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = CastyValue;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<CastyValue, TreeError> {
        Ok(match self.kind {
            SeqKind::List => CastyValue::List(self.items),
            SeqKind::Tuple => CastyValue::Tuple(self.items),
        })
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = CastyValue;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<CastyValue, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = CastyValue;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<CastyValue, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = CastyValue;
    type Error = TreeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), TreeError> {
        self.key = Some(key.serialize(ValueSerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| TreeError("map value serialized before its key".into()))?;
        self.pairs.push((key, value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Dict(self.pairs))
    }
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = CastyValue;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        self.fields
            .push((key.to_owned(), value.serialize(ValueSerializer)?));
        Ok(())
    }
    fn end(self) -> Result<CastyValue, TreeError> {
        Ok(CastyValue::Object {
            type_name: self.type_name,
            fields: self.fields,
        })
    }
}

impl ser::SerializeStructVariant for StructBuilder {
    type Ok = CastyValue;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<CastyValue, TreeError> {
        ser::SerializeStruct::end(self)
    }
}

// ========================================================== Deserializer

fn unexpected(v: &CastyValue) -> de::Unexpected<'_> {
    match v {
        CastyValue::None => de::Unexpected::Unit,
        CastyValue::Bool(b) => de::Unexpected::Bool(*b),
        CastyValue::Int(i) => match i64::try_from(*i) {
            Ok(i) => de::Unexpected::Signed(i),
            Err(_) => de::Unexpected::Other("a large int"),
        },
        CastyValue::Float(f) => de::Unexpected::Float(*f),
        CastyValue::Str(s) => de::Unexpected::Str(s),
        CastyValue::Bytes(b) => de::Unexpected::Bytes(b),
        other => de::Unexpected::Other(other.kind()),
    }
}

fn visit_int<'de, V: Visitor<'de>>(i: i128, visitor: V) -> Result<V::Value, TreeError> {
    if let Ok(v) = i64::try_from(i) {
        visitor.visit_i64(v)
    } else if let Ok(v) = u64::try_from(i) {
        visitor.visit_u64(v)
    } else {
        visitor.visit_i128(i)
    }
}

impl<'de> Deserializer<'de> for CastyValue {
    type Error = TreeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self {
            CastyValue::None => visitor.visit_unit(),
            CastyValue::Bool(b) => visitor.visit_bool(b),
            CastyValue::Int(i) => visit_int(i, visitor),
            CastyValue::Float(f) => visitor.visit_f64(f),
            CastyValue::Str(s) | CastyValue::Ref(s) => visitor.visit_string(s),
            CastyValue::Bytes(b) => visitor.visit_byte_buf(b),
            CastyValue::List(items) | CastyValue::Tuple(items) | CastyValue::FrozenSet(items) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(items.into_iter()))
            }
            CastyValue::Dict(pairs) => {
                visitor.visit_map(de::value::MapDeserializer::new(pairs.into_iter()))
            }
            CastyValue::Object { fields, .. } | CastyValue::Map(fields) => {
                visitor.visit_map(de::value::MapDeserializer::new(
                    fields.into_iter().map(|(k, v)| (CastyValue::Str(k), v)),
                ))
            }
            CastyValue::Enum { member, .. } => visitor.visit_string(member),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        match self {
            CastyValue::None => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match (name, self) {
            (REF_NAME, CastyValue::Ref(uri)) => visitor.visit_newtype_struct(CastyValue::Str(uri)),
            (REF_NAME, other) => Err(de::Error::invalid_type(
                unexpected(&other),
                &"an ActorRef ({\"__ref__\": uri})",
            )),
            (FROZENSET_NAME, CastyValue::FrozenSet(items) | CastyValue::List(items)) => {
                visitor.visit_newtype_struct(CastyValue::List(items))
            }
            (FROZENSET_NAME, other) => {
                Err(de::Error::invalid_type(unexpected(&other), &"a frozenset"))
            }
            (VALUE_NAME, value) => visitor.visit_newtype_struct(value.into_untagged()),
            (_, value) => visitor.visit_newtype_struct(value),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match self {
            CastyValue::None | CastyValue::Object { .. } | CastyValue::Map(_) => {
                visitor.visit_unit()
            }
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &format!("dataclass {name} without fields").as_str(),
            )),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        match self {
            CastyValue::Enum { member, .. } | CastyValue::Str(member) => {
                visitor.visit_enum(member.into_deserializer())
            }
            obj @ CastyValue::Object { .. } => {
                let variant = obj.type_name().unwrap_or_default().to_owned();
                visitor.visit_enum(ObjectEnum {
                    variant,
                    value: obj,
                })
            }
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &format!("enum {name} (an Enum member or a dataclass)").as_str(),
            )),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TreeError> {
        self.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, TreeError> for CastyValue {
    type Deserializer = CastyValue;
    fn into_deserializer(self) -> CastyValue {
        self
    }
}

/// Enum access for a dataclass used as an enum variant (variant = `_type`).
struct ObjectEnum {
    variant: String,
    value: CastyValue,
}

impl<'de> de::EnumAccess<'de> for ObjectEnum {
    type Error = TreeError;
    type Variant = ObjectVariant;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, ObjectVariant), TreeError> {
        let v = seed.deserialize(CastyValue::Str(self.variant))?;
        Ok((v, ObjectVariant(self.value)))
    }
}

struct ObjectVariant(CastyValue);

impl<'de> de::VariantAccess<'de> for ObjectVariant {
    type Error = TreeError;
    fn unit_variant(self) -> Result<(), TreeError> {
        Ok(())
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, TreeError> {
        seed.deserialize(self.0)
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, TreeError> {
        Err(TreeError("tuple variants have no casty form".into()))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TreeError> {
        self.0.deserialize_any(visitor)
    }
}

/// A Python `bytes` value: MessagePack `bin` in casty's msgpack tree (the JSON
/// tree rejects bytes, as casty does).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ByteBuf(pub Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ByteBuf(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
