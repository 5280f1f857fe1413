//! [`ActorRef`]: a typed handle to an actor address, with `tell` and `ask`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use herald_wire::payload::{CastyJson, PayloadCodec, TypeHint};
use herald_wire::{Envelope, SharedStr};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::TransportError;
use crate::local::{Handler, LocalTransport};
use crate::transport::{LocalEndpoint, MessageTransport};

/// Prefix of the temporary reply paths used by [`ActorRef::ask`] (casty's convention).
pub const ASK_PATH_PREFIX: &str = "/_ask/";

/// A message an [`ActorRef`] can send or receive: how it becomes a type hint plus
/// payload bytes, and back.
///
/// Implement it for your message types, or use [`RawMessage`] to work with bytes
/// directly.
///
/// ```
/// use bytes::Bytes;
/// use herald_transport::{Message, TransportError};
/// use herald_wire::{Envelope, SharedStr};
///
/// #[derive(Debug, PartialEq)]
/// struct Ping(u32);
///
/// impl Message for Ping {
///     fn type_hint(&self) -> SharedStr {
///         SharedStr::from_static("demo.Ping")
///     }
///     fn to_payload(&self) -> Result<Bytes, TransportError> {
///         Ok(Bytes::copy_from_slice(&self.0.to_be_bytes()))
///     }
///     fn from_envelope(envelope: Envelope) -> Result<Self, TransportError> {
///         let bytes: [u8; 4] = envelope.payload[..].try_into().map_err(|_| TransportError::Decode {
///             type_hint: envelope.type_hint.clone(),
///             reason: format!("expected 4 bytes, got {}", envelope.payload.len()),
///         })?;
///         Ok(Ping(u32::from_be_bytes(bytes)))
///     }
/// }
/// # let env = Envelope::new("/x", "", "demo.Ping", Ping(7).to_payload().unwrap());
/// # assert_eq!(Ping::from_envelope(env).unwrap(), Ping(7));
/// ```
pub trait Message: Sized {
    /// The type hint written in the envelope (casty: `<module>.<QualName>`); a
    /// [`SharedStr::from_static`] literal costs no allocation per message.
    fn type_hint(&self) -> SharedStr;
    /// The payload bytes.
    fn to_payload(&self) -> Result<Bytes, TransportError>;
    /// Rebuilds the message from a received envelope (check the type hint here).
    fn from_envelope(envelope: Envelope) -> Result<Self, TransportError>;
}

/// An untyped message: a type hint and payload bytes, passed through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The type hint.
    pub type_hint: SharedStr,
    /// The payload bytes.
    pub payload: Bytes,
}

impl RawMessage {
    /// A raw message.
    pub fn new(type_hint: impl Into<SharedStr>, payload: impl Into<Bytes>) -> Self {
        Self {
            type_hint: type_hint.into(),
            payload: payload.into(),
        }
    }
}

impl Message for RawMessage {
    fn type_hint(&self) -> SharedStr {
        self.type_hint.clone()
    }
    fn to_payload(&self) -> Result<Bytes, TransportError> {
        Ok(self.payload.clone())
    }
    fn from_envelope(envelope: Envelope) -> Result<Self, TransportError> {
        Ok(Self {
            type_hint: envelope.type_hint,
            payload: envelope.payload,
        })
    }
}

/// Every type with a casty type hint that serde can (de)serialize is a [`Message`],
/// encoded with casty's tagged JSON tree ([`CastyJson`]), the payload format casty
/// nodes set to the `json` serializer exchange. The envelope's type hint is
/// `T::TYPE_HINT`; decoding checks it.
///
/// For another payload codec, use [`RawMessage::encode_with`] and
/// [`RawMessage::decode_with`].
impl<T> Message for T
where
    T: TypeHint + Serialize + DeserializeOwned,
{
    fn type_hint(&self) -> SharedStr {
        SharedStr::from_static(T::TYPE_HINT)
    }
    fn to_payload(&self) -> Result<Bytes, TransportError> {
        Ok(PayloadCodec::<T>::encode(&CastyJson, self)?)
    }
    fn from_envelope(envelope: Envelope) -> Result<Self, TransportError> {
        if envelope.type_hint != T::TYPE_HINT {
            return Err(TransportError::Decode {
                type_hint: envelope.type_hint,
                reason: format!("expected a message of type hint {:?}", T::TYPE_HINT),
            });
        }
        Ok(PayloadCodec::<T>::decode(&CastyJson, &envelope.payload)?)
    }
}

impl RawMessage {
    /// Encodes `value` with `codec` under `T`'s type hint.
    pub fn encode_with<T: TypeHint, C: PayloadCodec<T>>(
        codec: &C,
        value: &T,
    ) -> Result<Self, TransportError> {
        Ok(Self::new(T::TYPE_HINT, codec.encode(value)?))
    }

    /// Decodes the payload with `codec`, after checking the type hint is `T`'s.
    pub fn decode_with<T: TypeHint, C: PayloadCodec<T>>(
        &self,
        codec: &C,
    ) -> Result<T, TransportError> {
        if self.type_hint != T::TYPE_HINT {
            return Err(TransportError::Decode {
                type_hint: self.type_hint.clone(),
                reason: format!("expected a message of type hint {:?}", T::TYPE_HINT),
            });
        }
        Ok(codec.decode(&self.payload)?)
    }
}

/// A typed handle to an actor: its address plus the transport that reaches it.
///
/// * [`tell`](Self::tell) sends and returns at once (fire and forget);
/// * [`ask`](Self::ask) sends with a temporary reply address
///   (`<root>/_ask/<32 hex digits>`, registered on the transport's
///   [local endpoint](MessageTransport::local_endpoint)), waits for the first reply
///   or the timeout, and always unregisters the reply path (also when the future is
///   dropped). A late reply becomes a [`DeadPath`](crate::DeadLetterReason::DeadPath)
///   dead letter.
///
/// The receiving actor replies by sending to the request's `sender` (see
/// [`reply`]).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use herald_transport::{reply, ActorRef, LocalTransport, MessageTransport, RawMessage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herald_transport::TransportError> {
/// let local = LocalTransport::new();
/// let transport: Arc<dyn MessageTransport> = Arc::new(local.clone());
///
/// // An echo actor: replies to each request with the same payload.
/// let for_echo = transport.clone();
/// local.register_fn("/echo", move |request| {
///     let answer = RawMessage::new("demo.Echoed", request.payload.clone());
///     let _ = reply(&*for_echo, &request, &answer);
/// })?;
///
/// let echo: ActorRef<RawMessage> = ActorRef::new(local.address_of("/echo"), transport);
/// echo.tell(&RawMessage::new("demo.Note", &b"fire and forget"[..]))?;
/// let answer: RawMessage = echo
///     .ask(&RawMessage::new("demo.Say", &b"hi"[..]), Duration::from_secs(5))
///     .await?;
/// assert_eq!(&answer.payload[..], b"hi");
/// # Ok(())
/// # }
/// ```
pub struct ActorRef<M> {
    address: SharedStr,
    /// The sender written in envelopes, when set by `with_sender`.
    sender: Option<SharedStr>,
    /// Otherwise the one derived from the reply endpoint (on first use).
    derived_sender: OnceLock<SharedStr>,
    transport: Arc<dyn MessageTransport>,
    endpoint: Option<LocalEndpoint>,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for ActorRef<M> {
    fn clone(&self) -> Self {
        Self {
            address: self.address.clone(),
            sender: self.sender.clone(),
            derived_sender: self.derived_sender.clone(),
            transport: Arc::clone(&self.transport),
            endpoint: self.endpoint.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> fmt::Debug for ActorRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorRef")
            .field("address", &self.address)
            .field("message", &std::any::type_name::<M>())
            .finish()
    }
}

impl<M> fmt::Display for ActorRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl<M> PartialEq for ActorRef<M> {
    /// Two refs are equal when they name the same address.
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address
    }
}

impl<M> Eq for ActorRef<M> {}

impl<M> ActorRef<M> {
    /// A handle to `address` (an actor URI such as `casty://sys@host:port/path`)
    /// reached through `transport`.
    pub fn new(address: impl Into<SharedStr>, transport: Arc<dyn MessageTransport>) -> Self {
        Self {
            address: address.into(),
            sender: None,
            derived_sender: OnceLock::new(),
            transport,
            endpoint: None,
            _message: PhantomData,
        }
    }

    /// Uses `sender` as the `sender` of the envelopes [`tell`](Self::tell) writes
    /// (default: the root of the transport's local endpoint plus `/`, as casty writes
    /// it, or an empty string without an endpoint).
    pub fn with_sender(mut self, sender: impl Into<SharedStr>) -> Self {
        self.sender = Some(sender.into());
        self
    }

    /// Receives [`ask`](Self::ask) replies on `endpoint` instead of the transport's own
    /// [local endpoint](MessageTransport::local_endpoint).
    pub fn with_reply_endpoint(mut self, endpoint: LocalEndpoint) -> Self {
        self.endpoint = Some(endpoint);
        self.derived_sender = OnceLock::new();
        self
    }

    /// The actor's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The transport used to reach it.
    pub fn transport(&self) -> &Arc<dyn MessageTransport> {
        &self.transport
    }

    /// The same address and transport, for another message type.
    pub fn retype<N>(&self) -> ActorRef<N> {
        ActorRef {
            address: self.address.clone(),
            sender: self.sender.clone(),
            derived_sender: self.derived_sender.clone(),
            transport: Arc::clone(&self.transport),
            endpoint: self.endpoint.clone(),
            _message: PhantomData,
        }
    }

    fn endpoint(&self) -> Option<LocalEndpoint> {
        self.endpoint
            .clone()
            .or_else(|| self.transport.local_endpoint())
    }

    fn default_sender(&self) -> SharedStr {
        match &self.sender {
            Some(s) => s.clone(),
            None => self
                .derived_sender
                .get_or_init(|| {
                    self.endpoint()
                        .map(|ep| SharedStr::from(format!("{}/", ep.root)))
                        .unwrap_or_default()
                })
                .clone(),
        }
    }
}

impl<M: Message> ActorRef<M> {
    /// Sends `message` and returns once the transport accepted it.
    pub fn tell(&self, message: &M) -> Result<(), TransportError> {
        let envelope = Envelope::new(
            self.address.clone(),
            self.default_sender(),
            message.type_hint(),
            message.to_payload()?,
        );
        self.transport.deliver(envelope)
    }

    /// Sends `message` with a temporary reply address and waits up to `timeout` for the
    /// first reply, decoded as `R`.
    ///
    /// Errors: [`TransportError::AskTimeout`] (naming the address and the timeout),
    /// [`TransportError::NoReplyEndpoint`] when the transport cannot receive replies,
    /// [`TransportError::ReplyPathClosed`] if the reply path is removed meanwhile
    /// (shutdown), the transport's error if it refuses the request, or `R`'s decoding
    /// error.
    pub async fn ask<R: Message>(
        &self,
        message: &M,
        timeout: Duration,
    ) -> Result<R, TransportError> {
        let endpoint = self
            .endpoint()
            .ok_or_else(|| TransportError::NoReplyEndpoint {
                target: self.address.clone(),
            })?;
        let type_hint = message.type_hint();
        let payload = message.to_payload()?;

        let (guard, rx) = loop {
            let path = format!("{ASK_PATH_PREFIX}{:032x}", rand::random::<u128>());
            let (tx, rx) = oneshot::channel::<Envelope>();
            // Only the first reply is kept; the guard unregisters the path after it.
            let slot = Mutex::new(Some(tx));
            let handler = Handler::from_fn(move |reply| {
                let tx = slot
                    .lock()
                    .map(|mut s| s.take())
                    .unwrap_or_else(|poisoned| poisoned.into_inner().take());
                match tx {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => {
                        tracing::debug!(reply_to = %reply.target, "extra reply to an ask ignored")
                    }
                }
            });
            match endpoint.transport.register(&path, handler) {
                Ok(()) => {
                    let guard = ReplyGuard {
                        local: endpoint.transport.clone(),
                        path,
                    };
                    break (guard, rx);
                }
                // A 128-bit collision with a pending ask: draw again.
                Err(TransportError::PathInUse { .. }) => continue,
                Err(e) => return Err(e),
            }
        };
        let reply_to = SharedStr::from(endpoint.address_of(&guard.path));
        let request = Envelope::new(self.address.clone(), reply_to.clone(), type_hint, payload);
        self.transport.deliver(request)?;

        let outcome = tokio::time::timeout(timeout, rx).await;
        drop(guard);
        match outcome {
            Ok(Ok(reply)) => R::from_envelope(reply),
            Ok(Err(_)) => Err(TransportError::ReplyPathClosed {
                target: self.address.clone(),
                reply_to,
            }),
            Err(_) => Err(TransportError::AskTimeout {
                target: self.address.clone(),
                timeout,
            }),
        }
    }
}

/// Unregisters an ask's reply path when dropped (reply, timeout, error or cancel).
struct ReplyGuard {
    local: LocalTransport,
    path: String,
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        self.local.unregister(&self.path);
    }
}

/// Sends `message` as the reply to `request` (to its `sender` address) through
/// `transport`. The reply's own `sender` is the request's target.
///
/// Fails with [`TransportError::InvalidTarget`] when the request has no sender.
pub fn reply<M: Message>(
    transport: &dyn MessageTransport,
    request: &Envelope,
    message: &M,
) -> Result<(), TransportError> {
    if request.sender.is_empty() {
        return Err(TransportError::InvalidTarget {
            target: SharedStr::empty(),
            reason: "the request has no sender to reply to",
        });
    }
    transport.deliver(Envelope::new(
        request.sender.clone(),
        request.target.clone(),
        message.type_hint(),
        message.to_payload()?,
    ))
}
