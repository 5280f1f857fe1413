//! The single error type of herald-wire.

use std::io;

/// Everything that can go wrong while encoding or decoding Herald / casty wire data.
///
/// Every message names what was wrong and the offending value, so that a log
/// line is enough to diagnose a bad peer. The enum is `#[non_exhaustive]`: new
/// variants may be added in minor releases.
///
/// `WireError` is `Clone` and `PartialEq` so it can be carried inside
/// [`Frame::Malformed`](crate::Frame::Malformed) and compared in tests; I/O errors
/// are therefore kept as their [`io::ErrorKind`] plus message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer ended before a fixed-size field could be read.
    #[error("truncated {what}: need {needed} bytes, only {available} available")]
    Truncated {
        /// Which field was being read (e.g. `"envelope header length"`).
        what: &'static str,
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The envelope's header length points past the end of the buffer.
    #[error(
        "envelope header length {header_len} overruns the buffer ({available} bytes after the length prefix)"
    )]
    HeaderOverrun {
        /// Header length announced by the prefix.
        header_len: usize,
        /// Bytes actually available after the 4-byte prefix.
        available: usize,
    },
    /// The envelope header is larger than the configured limit.
    #[error("envelope header length {header_len} exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Header length announced by the prefix.
        header_len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A JSON document (envelope header, handshake, payload) did not parse.
    #[error("invalid JSON in {what}: {message}")]
    InvalidJson {
        /// Which document (e.g. `"envelope header"`).
        what: &'static str,
        /// The parser's message, with line/column.
        message: String,
    },
    /// The JSON document was valid but not an object.
    #[error("{what} must be a JSON object, got {found}")]
    NotAnObject {
        /// Which document.
        what: &'static str,
        /// Short description of what was found (e.g. `array`).
        found: String,
    },
    /// A required key is missing.
    #[error("{what} is missing required key `{key}`")]
    MissingField {
        /// Which document.
        what: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// A key appears twice in a JSON object.
    #[error("{what} has duplicate key `{key}`")]
    DuplicateField {
        /// Which document.
        what: &'static str,
        /// The repeated key.
        key: String,
    },
    /// A key has a value of the wrong JSON type.
    #[error("{what} key `{key}` must be {expected}, got {found}")]
    WrongFieldType {
        /// Which document.
        what: &'static str,
        /// The key.
        key: String,
        /// What was expected (e.g. `"a string"`).
        expected: &'static str,
        /// The value found, rendered as JSON (truncated).
        found: String,
    },
    /// A port number outside 0..=65535.
    #[error("port {port} is out of range 0..=65535")]
    PortOutOfRange {
        /// The value found.
        port: String,
    },
    /// A frame announced a length above the configured maximum.
    #[error("frame length {len} exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// Announced (or, when encoding, required) length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A frame announced length 0 (a frame needs at least its type byte).
    #[error("frame length 0 is invalid: a frame carries at least its type byte")]
    EmptyFrame,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {available} of {expected} bytes received")]
    TruncatedFrame {
        /// Bytes the frame (prefix included) needed.
        expected: usize,
        /// Bytes received before the end of the stream.
        available: usize,
    },
    /// An actor address (URI) could not be parsed.
    #[error("invalid actor address {input:?}: {reason}")]
    InvalidAddress {
        /// The text that was parsed (truncated to 200 characters).
        input: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A payload carried a type hint no decoder is registered for.
    #[error("unknown type hint {hint:?}: no decoder registered for it")]
    UnknownTypeHint {
        /// The hint.
        hint: String,
    },
    /// A payload could not be encoded or decoded with the chosen codec.
    #[error("{codec} payload codec failed: {message}")]
    Payload {
        /// Codec name (e.g. `"casty-json"`).
        codec: &'static str,
        /// What went wrong, naming the offending value.
        message: String,
    },
    /// An I/O error from the underlying stream (kept as kind + message).
    #[error("I/O error ({kind:?}): {message}")]
    Io {
        /// The error kind.
        kind: io::ErrorKind,
        /// The error's message.
        message: String,
    },
}

impl From<io::Error> for WireError {
    fn from(err: io::Error) -> Self {
        WireError::Io {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// Renders a short, log-safe preview of an input string (at most `max` chars).
pub(crate) fn preview(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

impl WireError {
    /// [`WireError::WrongFieldType`] for `key` of `what`, naming the JSON type and
    /// value found.
    pub(crate) fn wrong_field_type(
        what: &'static str,
        key: &str,
        expected: &'static str,
        found: &serde_json::Value,
    ) -> Self {
        WireError::WrongFieldType {
            what,
            key: key.to_owned(),
            expected,
            found: format!("{} {}", json_kind(found), preview_json(found)),
        }
    }
}

/// Renders a JSON value for an error message (truncated).
pub(crate) fn preview_json(v: &serde_json::Value) -> String {
    let s = v.to_string();
    preview(&s, 80)
}

/// Names the JSON type of a value.
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
