//! Payload codecs behind one trait, [`PayloadCodec`].
//!
//! | codec | bytes | Rust bound |
//! |---|---|---|
//! | [`CastyJson`] | casty's `json` serializer: tagged tree, `json.dumps` formatting (byte-exact) | `Serialize + DeserializeOwned + TypeHint` |
//! | [`CastyMsgpack`] | casty's `msgpack` serializer: the same tree in MessagePack (byte-exact) | `Serialize + DeserializeOwned + TypeHint` |
//! | [`Json`] | plain `serde_json` | `Serialize + DeserializeOwned` |
//! | [`MessagePack`] | `rmp-serde` with named fields | `Serialize + DeserializeOwned` |
//! | [`Protobuf`] | `prost` | `prost::Message + Default` |
//! | [`Zlib`]`<C>` | casty's zlib compression wrapper around any of the above (bounded inflate) | as `C` |
//!
//! A Rust type declares the type hint casty puts in envelopes
//! (`<module>.<qualname>`) by implementing [`TypeHint`], by hand or with
//! [`type_hint!`](crate::type_hint). A [`TypeRegistry`] maps hints to decoders so
//! that receiving an unknown hint is [`WireError::UnknownTypeHint`], never a panic.
//!
//! ```
//! use herald_wire::payload::{CastyJson, CastyMsgpack, PayloadCodec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Ping {
//!     value: i64,
//! }
//! herald_wire::type_hint!(Ping => "casty_vec_msgs.Ping");
//!
//! let bytes = CastyJson.encode(&Ping { value: 42 })?;
//! assert_eq!(&bytes[..], br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#);
//! let back: Ping = CastyJson.decode(&bytes)?;
//! assert_eq!(back, Ping { value: 42 });
//! assert_eq!(CastyMsgpack.encode(&Ping { value: 42 })?.len(), 34);
//! # Ok::<(), herald_wire::WireError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::Envelope;
use crate::error::WireError;
use crate::shared_str::SharedStr;

mod serde_impl;
mod value;

pub use serde_impl::{ByteBuf, CastyRef, FrozenSet, TreeError, from_value, to_value};
pub use value::{CastyValue, MAX_DEPTH};

/// The type name casty sends in `type_hint` and `_type`: `<module>.<qualname>`.
pub trait TypeHint {
    /// e.g. `"casty_vec_msgs.Ping"`.
    const TYPE_HINT: &'static str;
}

/// Implements [`TypeHint`] for one or more types.
///
/// ```
/// struct Ping;
/// struct Nested;
/// herald_wire::type_hint!(Ping => "casty_vec_msgs.Ping", Nested => "casty_vec_msgs.Outer.Nested");
/// use herald_wire::payload::TypeHint;
/// assert_eq!(Nested::TYPE_HINT, "casty_vec_msgs.Outer.Nested");
/// ```
#[macro_export]
macro_rules! type_hint {
    ($($ty:ty => $hint:expr),+ $(,)?) => {
        $(impl $crate::payload::TypeHint for $ty {
            const TYPE_HINT: &'static str = $hint;
        })+
    };
}

type_hint!(
    i64 => "builtins.int",
    String => "builtins.str",
    f64 => "builtins.float",
    bool => "builtins.bool",
);

/// Encodes and decodes message payloads of type `T`.
pub trait PayloadCodec<T> {
    /// Short codec name used in errors and logs (e.g. `"casty-json"`).
    fn name(&self) -> &'static str;
    /// Serializes `value`.
    ///
    /// # Errors
    /// [`WireError::Payload`] when the value has no form in this codec.
    fn encode(&self, value: &T) -> Result<Bytes, WireError>;
    /// Deserializes a payload.
    ///
    /// # Errors
    /// [`WireError::Payload`] naming what did not match.
    fn decode(&self, payload: &[u8]) -> Result<T, WireError>;
}

/// Maps the error of a serde format crate to [`WireError::Payload`] of `codec`.
fn payload_err<E: std::fmt::Display>(codec: &'static str) -> impl FnOnce(E) -> WireError {
    move |e| WireError::Payload {
        codec,
        message: e.to_string(),
    }
}

fn tree_err(codec: &'static str, e: TreeError) -> WireError {
    WireError::Payload {
        codec,
        message: e.0,
    }
}

fn to_tree<T: Serialize + TypeHint>(
    value: &T,
    codec: &'static str,
) -> Result<CastyValue, WireError> {
    let mut tree = to_value(value).map_err(|e| tree_err(codec, e))?;
    // The top-level dataclass is named by the type's hint.
    if let CastyValue::Object { type_name, .. } = &mut tree {
        T::TYPE_HINT.clone_into(type_name);
    }
    Ok(tree)
}

fn from_tree<T: DeserializeOwned + TypeHint>(
    tree: CastyValue,
    codec: &'static str,
) -> Result<T, WireError> {
    if let CastyValue::Object { type_name, .. } = &tree
        && type_name != T::TYPE_HINT
    {
        return Err(WireError::Payload {
            codec,
            message: format!(
                "payload is a {type_name:?} dataclass, expected {:?}",
                T::TYPE_HINT
            ),
        });
    }
    from_value(tree).map_err(|e| {
        tree_err(
            codec,
            TreeError(format!("decoding {:?}: {}", T::TYPE_HINT, e.0)),
        )
    })
}

/// casty's `json` serializer (tagged tree, `json.dumps` formatting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CastyJson;

impl<T: Serialize + DeserializeOwned + TypeHint> PayloadCodec<T> for CastyJson {
    fn name(&self) -> &'static str {
        value::JSON_TREE
    }
    fn encode(&self, value: &T) -> Result<Bytes, WireError> {
        Ok(to_tree(value, value::JSON_TREE)?.to_json_bytes()?.into())
    }
    fn decode(&self, payload: &[u8]) -> Result<T, WireError> {
        from_tree(CastyValue::from_json_bytes(payload)?, value::JSON_TREE)
    }
}

/// casty's `msgpack` serializer (tagged tree in MessagePack, `use_bin_type=True`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CastyMsgpack;

impl<T: Serialize + DeserializeOwned + TypeHint> PayloadCodec<T> for CastyMsgpack {
    fn name(&self) -> &'static str {
        value::MSGPACK_TREE
    }
    fn encode(&self, value: &T) -> Result<Bytes, WireError> {
        Ok(to_tree(value, value::MSGPACK_TREE)?
            .to_msgpack_bytes()?
            .into())
    }
    fn decode(&self, payload: &[u8]) -> Result<T, WireError> {
        from_tree(
            CastyValue::from_msgpack_bytes(payload)?,
            value::MSGPACK_TREE,
        )
    }
}

/// Plain `serde_json` (compact, no tags). For Herald-to-Herald traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> PayloadCodec<T> for Json {
    fn name(&self) -> &'static str {
        "json"
    }
    fn encode(&self, value: &T) -> Result<Bytes, WireError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(payload_err("json"))
    }
    fn decode(&self, payload: &[u8]) -> Result<T, WireError> {
        serde_json::from_slice(payload).map_err(payload_err("json"))
    }
}

/// MessagePack via `rmp-serde`, structs as maps with named fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessagePack;

impl<T: Serialize + DeserializeOwned> PayloadCodec<T> for MessagePack {
    fn name(&self) -> &'static str {
        "msgpack"
    }
    fn encode(&self, value: &T) -> Result<Bytes, WireError> {
        rmp_serde::to_vec_named(value)
            .map(Bytes::from)
            .map_err(payload_err("msgpack"))
    }
    fn decode(&self, payload: &[u8]) -> Result<T, WireError> {
        rmp_serde::from_slice(payload).map_err(payload_err("msgpack"))
    }
}

/// Protocol Buffers via `prost` (derive `prost::Message`; no `protoc` needed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protobuf;

impl<T: prost::Message + Default> PayloadCodec<T> for Protobuf {
    fn name(&self) -> &'static str {
        "protobuf"
    }
    fn encode(&self, value: &T) -> Result<Bytes, WireError> {
        Ok(value.encode_to_vec().into())
    }
    fn decode(&self, payload: &[u8]) -> Result<T, WireError> {
        T::decode(payload).map_err(payload_err("protobuf"))
    }
}

/// Default bound on a decompressed payload (16 MiB, the default frame limit).
pub const DEFAULT_MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;

/// casty's zlib compression wrapper (`CompressedSerializer`, default level 6)
/// around another codec: `zlib(inner bytes)`, no marker byte, so both sides
/// must be configured alike.
///
/// Decoding inflates at most `max_decompressed` bytes (a decompression bomb is an
/// error, not an allocation). Encoding uses level 6 like casty; the compressed
/// bytes are valid zlib but not guaranteed identical to CPython's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zlib<C> {
    inner: C,
    max_decompressed: usize,
}

impl<C> Zlib<C> {
    /// Wraps `inner` with the default bound ([`DEFAULT_MAX_DECOMPRESSED`]).
    pub fn new(inner: C) -> Self {
        Zlib {
            inner,
            max_decompressed: DEFAULT_MAX_DECOMPRESSED,
        }
    }

    /// Sets the largest decompressed payload accepted.
    pub fn with_max_decompressed(mut self, max: usize) -> Self {
        self.max_decompressed = max;
        self
    }
}

/// Compresses with zlib at level 6 (casty's default).
pub fn zlib_compress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        flate2::Compression::new(6),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Inflates a zlib stream, refusing to produce more than `max` bytes.
///
/// # Errors
/// [`WireError::Payload`] (codec `"zlib"`) for a corrupt or truncated stream, or
/// when the output would exceed `max`.
pub fn zlib_decompress(data: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::ZlibDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| WireError::Payload {
            codec: "zlib",
            message: format!("invalid zlib stream of {} bytes: {e}", data.len()),
        })?;
    if out.len() > max {
        return Err(WireError::Payload {
            codec: "zlib",
            message: format!("decompressed payload exceeds the limit of {max} bytes"),
        });
    }
    Ok(out)
}

impl<T, C: PayloadCodec<T>> PayloadCodec<T> for Zlib<C> {
    fn name(&self) -> &'static str {
        "zlib"
    }
    fn encode(&self, value: &T) -> Result<Bytes, WireError> {
        Ok(zlib_compress(&self.inner.encode(value)?).into())
    }
    fn decode(&self, payload: &[u8]) -> Result<T, WireError> {
        self.inner
            .decode(&zlib_decompress(payload, self.max_decompressed)?)
    }
}

/// Builds an envelope for `msg`: type hint from [`TypeHint`], payload from `codec`.
///
/// # Errors
/// The codec's encoding error.
pub fn envelope_for<T: TypeHint, C: PayloadCodec<T>>(
    codec: &C,
    target: impl Into<SharedStr>,
    sender: impl Into<SharedStr>,
    msg: &T,
) -> Result<Envelope, WireError> {
    Ok(Envelope::new(
        target,
        sender,
        SharedStr::from_static(T::TYPE_HINT),
        codec.encode(msg)?,
    ))
}

/// The casty tree formats, selectable at run time (CLI, config files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeFormat {
    /// casty `json` serializer.
    Json,
    /// casty `msgpack` serializer.
    Msgpack,
    /// `json` inside casty's zlib wrapper (inflate bounded by [`DEFAULT_MAX_DECOMPRESSED`]).
    JsonZlib,
    /// `msgpack` inside casty's zlib wrapper.
    MsgpackZlib,
}

impl TreeFormat {
    /// Decodes a payload into a tree.
    ///
    /// # Errors
    /// [`WireError::Payload`].
    pub fn decode(self, payload: &[u8]) -> Result<CastyValue, WireError> {
        match self {
            TreeFormat::Json => CastyValue::from_json_bytes(payload),
            TreeFormat::Msgpack => CastyValue::from_msgpack_bytes(payload),
            TreeFormat::JsonZlib => {
                CastyValue::from_json_bytes(&zlib_decompress(payload, DEFAULT_MAX_DECOMPRESSED)?)
            }
            TreeFormat::MsgpackZlib => {
                CastyValue::from_msgpack_bytes(&zlib_decompress(payload, DEFAULT_MAX_DECOMPRESSED)?)
            }
        }
    }

    /// Encodes a tree.
    ///
    /// # Errors
    /// [`WireError::Payload`].
    pub fn encode(self, value: &CastyValue) -> Result<Vec<u8>, WireError> {
        match self {
            TreeFormat::Json => value.to_json_bytes(),
            TreeFormat::Msgpack => value.to_msgpack_bytes(),
            TreeFormat::JsonZlib => value.to_json_bytes().map(|b| zlib_compress(&b)),
            TreeFormat::MsgpackZlib => value.to_msgpack_bytes().map(|b| zlib_compress(&b)),
        }
    }
}

impl FromStr for TreeFormat {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        match s {
            "json" | "casty-json" => Ok(TreeFormat::Json),
            "msgpack" | "casty-msgpack" => Ok(TreeFormat::Msgpack),
            "json+zlib" | "casty-json+zlib" => Ok(TreeFormat::JsonZlib),
            "msgpack+zlib" | "casty-msgpack+zlib" => Ok(TreeFormat::MsgpackZlib),
            other => Err(WireError::Payload {
                codec: "tree",
                message: format!(
                    "unknown tree format {other:?} (expected json, msgpack, json+zlib or msgpack+zlib)"
                ),
            }),
        }
    }
}

impl fmt::Display for TreeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TreeFormat::Json => "json",
            TreeFormat::Msgpack => "msgpack",
            TreeFormat::JsonZlib => "json+zlib",
            TreeFormat::MsgpackZlib => "msgpack+zlib",
        })
    }
}

type DecodeFn<M> = Arc<dyn Fn(&[u8]) -> Result<M, WireError> + Send + Sync>;

/// Maps type hints to decoders producing an application message type `M`.
///
/// ```
/// use herald_wire::payload::{CastyJson, PayloadCodec, TypeRegistry};
/// use herald_wire::WireError;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Ping { value: i64 }
/// herald_wire::type_hint!(Ping => "casty_vec_msgs.Ping");
///
/// #[derive(Debug, PartialEq)]
/// enum Msg { Ping(Ping), Int(i64) }
///
/// let mut reg = TypeRegistry::new();
/// reg.register(CastyJson, Msg::Ping).register(CastyJson, Msg::Int);
/// let payload = CastyJson.encode(&Ping { value: 1 })?;
/// assert_eq!(reg.decode("casty_vec_msgs.Ping", &payload)?, Msg::Ping(Ping { value: 1 }));
/// assert_eq!(reg.decode("builtins.int", b"7")?, Msg::Int(7));
/// assert!(matches!(reg.decode("m.Unknown", b"{}"), Err(WireError::UnknownTypeHint { .. })));
/// # Ok::<(), WireError>(())
/// ```
pub struct TypeRegistry<M> {
    decoders: HashMap<String, DecodeFn<M>>,
}

impl<M> fmt::Debug for TypeRegistry<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hints: Vec<_> = self.decoders.keys().collect();
        hints.sort();
        f.debug_struct("TypeRegistry")
            .field("hints", &hints)
            .finish()
    }
}

impl<M: 'static> Default for TypeRegistry<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Clone for TypeRegistry<M> {
    fn clone(&self) -> Self {
        TypeRegistry {
            decoders: self.decoders.clone(),
        }
    }
}

impl<M: 'static> TypeRegistry<M> {
    /// An empty registry.
    pub fn new() -> Self {
        TypeRegistry {
            decoders: HashMap::new(),
        }
    }

    /// Registers `T` (under `T::TYPE_HINT`), decoded with `codec` and wrapped by `wrap`.
    /// A later registration for the same hint replaces the earlier one.
    pub fn register<T, C>(
        &mut self,
        codec: C,
        wrap: impl Fn(T) -> M + Send + Sync + 'static,
    ) -> &mut Self
    where
        T: TypeHint + 'static,
        C: PayloadCodec<T> + Send + Sync + 'static,
    {
        let f: DecodeFn<M> = Arc::new(move |payload: &[u8]| codec.decode(payload).map(&wrap));
        self.decoders.insert(T::TYPE_HINT.to_owned(), f);
        self
    }

    /// `true` if a decoder is registered for `hint`.
    pub fn contains(&self, hint: &str) -> bool {
        self.decoders.contains_key(hint)
    }

    /// Registered hints, sorted.
    pub fn hints(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.decoders.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Decodes `payload` with the decoder registered for `hint`.
    ///
    /// # Errors
    /// [`WireError::UnknownTypeHint`] if none is registered, else the codec's error.
    pub fn decode(&self, hint: &str, payload: &[u8]) -> Result<M, WireError> {
        let f = self
            .decoders
            .get(hint)
            .ok_or_else(|| WireError::UnknownTypeHint {
                hint: crate::error::preview(hint, 200),
            })?;
        f(payload)
    }

    /// Decodes an envelope's payload by its `type_hint`.
    ///
    /// # Errors
    /// As [`TypeRegistry::decode`].
    pub fn decode_envelope(&self, env: &Envelope) -> Result<M, WireError> {
        self.decode(&env.type_hint, &env.payload)
    }
}
