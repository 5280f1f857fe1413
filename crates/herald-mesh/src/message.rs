//! The message model both backends carry: nuropb 0.1.1 JSON bodies, headers and
//! AMQP-like properties.
//!
//! A [`Message`] is what a backend publishes and delivers: [`Properties`] (AMQP basic
//! properties plus the `mandatory` publish flag), [`Headers`] (nuropb's header table)
//! and a [`Payload`]. The payload is either raw bytes (what a broker carries: UTF-8
//! JSON, or an encrypted body) or an already decoded [`Envelope`], so that the
//! in-process backend never serialises or re-parses JSON. [`Payload::to_bytes`] and
//! [`Payload::envelope`] convert on demand.
//!
//! The JSON shapes are exactly nuropb's (§3.2 of the spec), key order included:
//!
//! ```
//! use herald_mesh::message::{Envelope, RequestBody};
//! use serde_json::json;
//! let body = Envelope::Request(RequestBody {
//!     service: "probe-svc".into(),
//!     method: "add".into(),
//!     params: json!({"a": 2, "b": 3}).as_object().cloned().unwrap_or_default(),
//!     correlation_id: "f9a2".into(),
//!     context: json!({"user": "probe"}),
//!     trace_id: Some("trace-f9a2bc".into()),
//! });
//! assert_eq!(
//!     serde_json::to_string(&body).unwrap(),
//!     r#"{"tag":"request","service":"probe-svc","method":"add","params":{"a":2,"b":3},"correlation_id":"f9a2","context":{"user":"probe"},"trace_id":"trace-f9a2bc"}"#
//! );
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{MeshError, ServiceError};

/// Direct exchange carrying requests and commands (routing key = service name).
pub const RPC_EXCHANGE: &str = "nuropb-rpc-exchange";
/// Topic exchange carrying events (routing key = topic).
pub const EVENTS_EXCHANGE: &str = "nuropb-events-exchange";
/// Fanout dead-letter exchange.
pub const DL_EXCHANGE: &str = "nuropb-dl-exchange";
/// The default exchange: routes to the queue named by the routing key (replies).
pub const DEFAULT_EXCHANGE: &str = "";
/// Wire protocol version (`nuropb_protocol` header).
pub const NUROPB_PROTOCOL: &str = "0.1.1";
/// nuropb package version Herald announces (`nuropb_version` header).
pub const NUROPB_VERSION: &str = "0.1.8";
/// `content_type` of every message (also for encrypted bodies, as nuropb does).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The method every service answers with its describe document.
pub const DESCRIBE_METHOD: &str = "nuropb_describe";

/// Header names.
pub mod header {
    /// `"0.1.1"`.
    pub const NUROPB_PROTOCOL: &str = "nuropb_protocol";
    /// nuropb package version.
    pub const NUROPB_VERSION: &str = "nuropb_version";
    /// `request`, `command`, `event` or `response`.
    pub const NUROPB_TYPE: &str = "nuropb_type";
    /// Trace id, a string or AMQP void.
    pub const TRACE_ID: &str = "trace_id";
    /// `"yes"` or `""`.
    pub const ENCRYPTED: &str = "encrypted";
    /// Herald extension: absolute deadline of a request, Unix epoch milliseconds.
    /// nuropb ignores it.
    pub const DEADLINE: &str = "herald_deadline";
    /// Herald extension on a dead letter that Herald dead-lettered itself (a poison
    /// message, a stray response, a request past its deadline): why, in words (the
    /// decode error, …). See
    /// [`DeathInfo::detail`](super::DeathInfo::detail).
    pub const HERALD_REASON: &str = "x-herald-reason";
}

/// Service queue of `service`: `nuropb-<service>-sq`.
pub fn service_queue(service: &str) -> String {
    format!("nuropb-{service}-sq")
}

/// Response queue of one API instance: `nuropb-<service>-<instance>-rq`.
pub fn response_queue(service: &str, instance_id: &str) -> String {
    format!("nuropb-{service}-{instance_id}-rq")
}

/// Dead-letter queue of `service`: `nuropb-<service>-dl`.
pub fn dead_letter_queue(service: &str) -> String {
    format!("nuropb-{service}-dl")
}

/// Leader lock of `service`: `nuropb-<service>-leader` (Herald extension).
pub fn leader_queue(service: &str) -> String {
    format!("nuropb-{service}-leader")
}

/// The four nuropb message types (`tag` in the body, `nuropb_type` in the headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// An RPC request expecting a response.
    Request,
    /// A fire-and-forget call.
    Command,
    /// A published event.
    Event,
    /// A reply to a request.
    Response,
}

impl MessageType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Request => "request",
            MessageType::Command => "command",
            MessageType::Event => "event",
            MessageType::Response => "response",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Result<Self, MeshError> {
        match s {
            "request" => Ok(MessageType::Request),
            "command" => Ok(MessageType::Command),
            "event" => Ok(MessageType::Event),
            "response" => Ok(MessageType::Response),
            other => Err(MeshError::Malformed(format!(
                "unknown nuropb_type {other:?} (expected request, command, event or response)"
            ))),
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// nuropb's header table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers {
    /// `nuropb_protocol`; must be `"0.1.1"`.
    pub nuropb_protocol: Cow<'static, str>,
    /// `nuropb_version`.
    pub nuropb_version: Cow<'static, str>,
    /// `nuropb_type`, kept as received so that bad values can be reported.
    pub nuropb_type: Cow<'static, str>,
    /// `trace_id` (`None` = AMQP void / JSON null).
    pub trace_id: Option<String>,
    /// `encrypted == "yes"`.
    pub encrypted: bool,
    /// Herald extension `herald_deadline`: absolute deadline, Unix epoch ms.
    pub deadline_ms: Option<u64>,
}

impl Headers {
    /// Headers for a message of type `kind` as Herald sends it.
    pub fn new(kind: MessageType, trace_id: Option<String>) -> Self {
        Self {
            nuropb_protocol: Cow::Borrowed(NUROPB_PROTOCOL),
            nuropb_version: Cow::Borrowed(NUROPB_VERSION),
            nuropb_type: Cow::Borrowed(kind.as_str()),
            trace_id,
            encrypted: false,
            deadline_ms: None,
        }
    }

    /// Validates the protocol version and returns the message type.
    pub fn message_type(&self) -> Result<MessageType, MeshError> {
        if self.nuropb_protocol != NUROPB_PROTOCOL {
            return Err(MeshError::Malformed(format!(
                "unsupported nuropb_protocol {:?} (expected {NUROPB_PROTOCOL:?})",
                self.nuropb_protocol
            )));
        }
        MessageType::parse(&self.nuropb_type)
    }
}

/// AMQP basic properties Herald uses, plus the `mandatory` and `confirm` publish flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Properties {
    /// Always `application/json`.
    pub content_type: Cow<'static, str>,
    /// 32 hex characters; a reply copies the request's.
    pub correlation_id: String,
    /// The sender's response queue (requests and commands).
    pub reply_to: Option<String>,
    /// Per-message ttl in milliseconds (AMQP `expiration`).
    pub expiration_ms: Option<u64>,
    /// Publish flag: an unroutable message is an error, not a silent drop.
    pub mandatory: bool,
    /// Publish flag: the publish resolves only once the broker has confirmed that it
    /// took the message (RabbitMQ: a publisher confirm, and a `nack` is an error),
    /// whatever the backend does for other messages. A backend that routes
    /// synchronously (the in-process broker) has its answer at once either way.
    pub confirm: bool,
}

impl Properties {
    /// JSON content type, no reply_to, no expiration, not mandatory, no confirm asked.
    pub fn new(correlation_id: String) -> Self {
        Self {
            content_type: Cow::Borrowed(CONTENT_TYPE_JSON),
            correlation_id,
            reply_to: None,
            expiration_ms: None,
            mandatory: false,
            confirm: false,
        }
    }
}

/// Why a message was dead-lettered (RabbitMQ's `x-first-death-reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeathReason {
    /// Its ttl passed while queued.
    Expired,
    /// A consumer rejected it without requeue.
    Rejected,
    /// The queue overflowed its length limit.
    MaxLen,
}

impl DeathReason {
    /// RabbitMQ's name: `expired`, `rejected`, `maxlen`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Expired => "expired",
            DeathReason::Rejected => "rejected",
            DeathReason::MaxLen => "maxlen",
        }
    }

    /// Parses RabbitMQ's name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "expired" => Some(DeathReason::Expired),
            "rejected" => Some(DeathReason::Rejected),
            "maxlen" => Some(DeathReason::MaxLen),
            _ => None,
        }
    }
}

impl fmt::Display for DeathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and why a message died (first death, as RabbitMQ's `x-death` headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeathInfo {
    /// Why.
    pub reason: DeathReason,
    /// The queue it died in.
    pub queue: String,
    /// The exchange it had been published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Why, in words, when Herald dead-lettered it itself (header
    /// [`x-herald-reason`](header::HERALD_REASON)): for a poison message, the error
    /// that decoding it gave; for a response on a service queue or a request whose
    /// `herald_deadline` had passed, what was wrong and with which value. `None` for the broker's own dead letters (expired,
    /// overflowed) and for rejections that carry no reason.
    pub detail: Option<String>,
}

/// A message body: raw bytes or an already decoded envelope.
#[derive(Clone, Debug)]
pub enum Payload {
    /// UTF-8 JSON, or an encrypted body (`encrypted` header set).
    Bytes(Bytes),
    /// A decoded envelope (in-process fast path; never encrypted).
    Envelope(Arc<Envelope>),
}

impl Payload {
    /// The body as bytes (serialises an envelope).
    pub fn to_bytes(&self) -> Result<Bytes, MeshError> {
        match self {
            Payload::Bytes(b) => Ok(b.clone()),
            Payload::Envelope(env) => {
                serde_json::to_vec(env.as_ref())
                    .map(Bytes::from)
                    .map_err(|e| MeshError::Encode {
                        what: "message body",
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// The body as an envelope (parses bytes).
    pub fn envelope(&self) -> Result<Arc<Envelope>, MeshError> {
        match self {
            Payload::Envelope(env) => Ok(env.clone()),
            Payload::Bytes(b) => Envelope::from_slice(b).map(Arc::new),
        }
    }

    /// Consumes the payload into an owned envelope, avoiding a clone when possible.
    pub fn into_envelope(self) -> Result<Envelope, MeshError> {
        match self {
            Payload::Envelope(env) => Ok(Arc::try_unwrap(env).unwrap_or_else(|a| (*a).clone())),
            Payload::Bytes(b) => Envelope::from_slice(&b),
        }
    }
}

/// One message as published and delivered.
#[derive(Clone, Debug)]
pub struct Message {
    /// AMQP properties.
    pub properties: Properties,
    /// nuropb headers.
    pub headers: Headers,
    /// The body.
    pub payload: Payload,
    /// Set on messages read from a dead-letter queue.
    pub death: Option<DeathInfo>,
}

impl Message {
    /// A message carrying a decoded envelope, with headers and properties derived from
    /// it (type, trace id, correlation id).
    pub fn from_envelope(envelope: Envelope) -> Self {
        let kind = envelope.message_type();
        let headers = Headers::new(kind, envelope.trace_id().map(str::to_owned));
        let properties = Properties::new(envelope.correlation_id().to_owned());
        Self {
            properties,
            headers,
            payload: Payload::Envelope(Arc::new(envelope)),
            death: None,
        }
    }
}

/// The JSON body of an error reply: `{"error": <class>, "description": <text>}`.
pub type ErrorInfo = ServiceError;

/// A nuropb message body, discriminated by `tag`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tag", rename_all = "lowercase")]
pub enum Envelope {
    /// A request.
    Request(RequestBody),
    /// A command (same fields as a request).
    Command(RequestBody),
    /// An event.
    Event(EventBody),
    /// A response.
    Response(ResponseBody),
}

impl Envelope {
    /// Parses a JSON body; it must be an object with a known `tag`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, MeshError> {
        serde_json::from_slice(bytes)
            .map_err(|e| MeshError::Malformed(format!("invalid nuropb JSON body: {e}")))
    }

    /// The message type of the body.
    pub fn message_type(&self) -> MessageType {
        match self {
            Envelope::Request(_) => MessageType::Request,
            Envelope::Command(_) => MessageType::Command,
            Envelope::Event(_) => MessageType::Event,
            Envelope::Response(_) => MessageType::Response,
        }
    }

    /// The body's correlation id.
    pub fn correlation_id(&self) -> &str {
        match self {
            Envelope::Request(b) | Envelope::Command(b) => &b.correlation_id,
            Envelope::Event(b) => &b.correlation_id,
            Envelope::Response(b) => &b.correlation_id,
        }
    }

    /// The body's trace id.
    pub fn trace_id(&self) -> Option<&str> {
        match self {
            Envelope::Request(b) | Envelope::Command(b) => b.trace_id.as_deref(),
            Envelope::Event(b) => b.trace_id.as_deref(),
            Envelope::Response(b) => b.trace_id.as_deref(),
        }
    }
}

/// Body of a request or command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestBody {
    /// Target service.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Keyword arguments (always an object).
    pub params: Map<String, Value>,
    /// Correlation id (repeats the property).
    pub correlation_id: String,
    /// Caller context (an object, echoed in the reply).
    #[serde(default)]
    pub context: Value,
    /// Trace id.
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// Body of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    /// Topic (routing key on the events exchange).
    pub topic: String,
    /// The event payload (any JSON).
    #[serde(default)]
    pub event: Value,
    /// Publisher context.
    #[serde(default)]
    pub context: Value,
    /// Trace id.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Correlation id.
    #[serde(default)]
    pub correlation_id: String,
    /// Always null from `publish_event`.
    #[serde(default)]
    pub target: Value,
}

/// Body of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseBody {
    /// The result (null on error).
    #[serde(default)]
    pub result: Value,
    /// The error, if the call failed.
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    /// The request's correlation id.
    #[serde(default)]
    pub correlation_id: String,
    /// The request's trace id.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The request's context, echoed.
    #[serde(default)]
    pub context: Value,
    /// Always null.
    #[serde(default)]
    pub warning: Option<String>,
    /// The request's reply_to.
    #[serde(default)]
    pub reply_to: Option<String>,
}

/// Matches an AMQP topic `pattern` (`*` = one word, `#` = zero or more words,
/// words separated by `.`) against a routing key.
///
/// ```
/// use herald_mesh::message::topic_matches;
/// assert!(topic_matches("interop.#", "interop.a.b"));
/// assert!(topic_matches("interop.#", "interop"));
/// assert!(topic_matches("*.created", "order.created"));
/// assert!(!topic_matches("*.created", "order.item.created"));
/// ```
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    // Dynamic programming over (pattern words, key words): linear in the product of
    // the two lengths, so hostile patterns like `#.#.#.#` cannot blow up.
    let words: Vec<&str> = key.split('.').collect();
    let n = words.len();
    // row[j]: the pattern words seen so far match the first j key words.
    let mut row = vec![false; n + 1];
    row[0] = true;
    let mut next = vec![false; n + 1];
    for p in pattern.split('.') {
        match p {
            "#" => {
                let mut any = false;
                for j in 0..=n {
                    any |= row[j];
                    next[j] = any;
                }
            }
            _ => {
                next[0] = false;
                for j in 0..n {
                    next[j + 1] = row[j] && (p == "*" || p == words[j]);
                }
            }
        }
        std::mem::swap(&mut row, &mut next);
    }
    row[n]
}

/// Checks that `pattern` is a usable topic pattern (non-empty words).
pub fn validate_topic_pattern(pattern: &str) -> Result<(), MeshError> {
    if pattern.is_empty() || pattern.split('.').any(str::is_empty) || pattern.len() > 255 {
        return Err(MeshError::InvalidArgument {
            what: "topic pattern",
            value: pattern.to_owned(),
            reason: "expected 1 to 255 bytes of dot-separated non-empty words".into(),
        });
    }
    Ok(())
}

/// Fuzzing entry point (target `mesh_envelope`): decodes arbitrary bytes as a nuropb
/// body and as a describe document, checks that whatever decodes re-encodes and
/// decodes to the same value, and runs the topic matcher on the input split at the
/// first space. Must never panic; used by the fuzz target and by the corpus replay
/// test.
pub fn fuzz_envelope(data: &[u8]) {
    if let Ok(env) = Envelope::from_slice(data) {
        let payload = Payload::Envelope(Arc::new(env.clone()));
        if let Ok(bytes) = payload.to_bytes() {
            let again = Envelope::from_slice(&bytes);
            assert!(again.is_ok(), "re-encoded envelope does not decode");
            if let Ok(again) = again {
                let _ = again.message_type() == env.message_type();
                assert_eq!(again.correlation_id(), env.correlation_id());
            }
        }
    }
    if let Ok(desc) = serde_json::from_slice::<crate::service::ServiceDescription>(data) {
        let _ = serde_json::to_vec(&desc);
    }
    // A describe reply's result as `describe_service` reads it (a null or missing
    // `service_name` filled in with the name asked for).
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(desc) = crate::service::ServiceDescription::from_document("fuzz", doc)
    {
        assert!(
            !desc.service_name.is_empty(),
            "a describe document without a name"
        );
    }
    let text = String::from_utf8_lossy(data);
    let (pattern, key) = text.split_once(' ').unwrap_or((&text, ""));
    let matched = topic_matches(pattern, key);
    if pattern == key && !pattern.contains(['*', '#']) {
        assert!(matched, "a literal pattern must match itself");
    }
    let _ = validate_topic_pattern(pattern);
}
