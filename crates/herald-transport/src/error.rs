//! The crate's error type.

use std::time::Duration;

use crate::dead_letter::DeadLetterReason;
use herald_wire::SharedStr;

/// Everything that can go wrong in herald-transport.
///
/// Every message names the offending value (path, address, timeout, ...), so a log line
/// is enough to find the cause. New variants may be added in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport was shut down; it no longer accepts messages or registrations.
    #[error("transport is shut down")]
    Shutdown,

    /// A path given to `register`/`wait_for_path` is not a valid actor path.
    #[error("invalid actor path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An envelope's `target` could not be turned into an actor path.
    #[error("invalid target address {target:?}: {reason}")]
    InvalidTarget {
        /// The target as found in the envelope.
        target: SharedStr,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// `register` was called for a path that already has a handler.
    #[error("actor path {path:?} is already registered")]
    PathInUse {
        /// The path that is taken.
        path: String,
    },

    /// `wait_for_path` gave up before the path was registered.
    #[error("actor path {path:?} was not registered within {timeout:?}")]
    WaitTimeout {
        /// The awaited path.
        path: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },

    /// An `ask` got no reply in time.
    #[error("no reply from {target} within {timeout:?}")]
    AskTimeout {
        /// The asked actor's address.
        target: SharedStr,
        /// The timeout that elapsed.
        timeout: Duration,
    },

    /// An `ask` was made through a transport that cannot receive replies (it has no
    /// local endpoint, see [`MessageTransport::local_endpoint`](crate::MessageTransport::local_endpoint)).
    #[error("cannot ask {target}: the transport has no local endpoint to receive the reply")]
    NoReplyEndpoint {
        /// The address that was asked.
        target: SharedStr,
    },

    /// The temporary reply path of an `ask` was removed before a reply arrived
    /// (usually because the transport shut down).
    #[error("the reply path {reply_to} for the ask to {target} closed before a reply arrived")]
    ReplyPathClosed {
        /// The asked actor's address.
        target: SharedStr,
        /// The temporary reply address.
        reply_to: SharedStr,
    },

    /// The transport refused the message; it was also reported as a dead letter with
    /// this reason.
    #[error("message to {target} refused: {reason}")]
    Refused {
        /// The target of the refused message.
        target: SharedStr,
        /// Why it was refused.
        reason: DeadLetterReason,
    },

    /// A received message could not be turned into the expected type.
    #[error("cannot decode a message of type hint {type_hint:?}: {reason}")]
    Decode {
        /// The type hint of the received envelope.
        type_hint: SharedStr,
        /// What was wrong.
        reason: String,
    },

    /// A payload could not be encoded or decoded, or a frame was malformed.
    #[error(transparent)]
    Wire(#[from] herald_wire::WireError),
}
