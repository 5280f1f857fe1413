//! # herald-wire
//!
//! Wire formats of Herald, compatible byte for byte with casty 0.21.0 (the
//! Python actor framework's v1 TCP transport):
//!
//! - [`Envelope`]: `u32 BE header_len | JSON header | payload`, header written
//!   exactly as Python's `json.dumps` would, payload zero-copy;
//! - [`Frame`] and [`FrameCodec`]: `u32 BE len | u8 type | body` stream frames
//!   (handshake `0x00`, message `0x01`, others surfaced) as a
//!   [`tokio_util::codec`] codec with a maximum frame size;
//! - [`ActorAddress`]: `casty://system@host:port/path` URIs;
//! - [`payload`]: casty's tagged JSON / MessagePack trees ([`payload::CastyValue`]),
//!   plain JSON, MessagePack and Protobuf behind one trait, [`payload::PayloadCodec`],
//!   casty's zlib wrapper ([`payload::Zlib`]), type hints ([`payload::TypeHint`]) and a
//!   hint-to-decoder registry ([`payload::TypeRegistry`]);
//! - [`WireError`]: the one error type; every message names the bad value.
//!
//! Decoders never panic on untrusted input; each has a `cargo fuzz` target
//! (entry points in [`fuzz`]). There is no I/O here: `herald-transport` runs
//! [`FrameCodec`] on sockets. A frame whose body is bad is yielded as
//! [`Frame::Malformed`] so the connection keeps going; see [`FrameCodec`].
//!
//! ```
//! use bytes::Bytes;
//! use herald_wire::{ActorAddress, Envelope};
//!
//! let target: ActorAddress = "casty://my-sys@127.0.0.1:25520/user/counter".parse()?;
//! let env = Envelope::new(
//!     target.to_string(),
//!     "casty://my-sys@127.0.0.1:25521/",
//!     "casty_vec_msgs.Ping",
//!     Bytes::from_static(br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#),
//! );
//! let bytes = env.encode();
//! assert_eq!(&bytes[..4], &[0, 0, 0, 0x8a]); // header length 138, as casty writes it
//! assert_eq!(Envelope::decode(bytes)?, env);
//! # Ok::<(), herald_wire::WireError>(())
//! ```

pub mod address;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod payload;
pub mod pyjson;
pub mod shared_str;

pub use address::ActorAddress;
pub use codec::{FrameCodec, FrameIter};
pub use envelope::{Envelope, EnvelopeDecoder};
pub use error::WireError;
pub use frame::{DEFAULT_MAX_FRAME_SIZE, FRAME_HANDSHAKE, FRAME_MESSAGE, Frame, Handshake};
pub use shared_str::SharedStr;
