//! Errors of the mesh: [`MeshError`] for callers and backends, [`ServiceError`] for
//! service handlers (it travels on the wire as nuropb's `{"error", "description"}`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything that can go wrong when using the mesh or a backend.
///
/// Every message names what was wrong and with which value (service, method, queue,
/// routing key, ...).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum MeshError {
    /// No reply arrived before the client-side deadline.
    #[error("request {service}.{method} timed out after {after:?} without a reply")]
    Timeout {
        /// Called service.
        service: String,
        /// Called method.
        method: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The request was not handled because its deadline (ttl) had passed when the
    /// service received it.
    #[error("request {service}.{method} expired before it was handled: {description}")]
    Expired {
        /// Called service.
        service: String,
        /// Called method.
        method: String,
        /// What the service reported.
        description: String,
    },
    /// The service's handler failed with nuropb's `NuropbHandlingError`.
    #[error("service {service} failed handling {method}: {description}")]
    Handling {
        /// Called service.
        service: String,
        /// Called method.
        method: String,
        /// The handler's description of the failure.
        description: String,
    },
    /// No queue is bound for the service (the broker could not route the request).
    #[error("service {service:?} is not available: unable to call method {method:?}")]
    NotFound {
        /// Called service.
        service: String,
        /// Called method.
        method: String,
    },
    /// The method requires encryption and the call was sent in clear.
    #[error("{service}.{method} requires encryption but the call was sent unencrypted")]
    EncryptionRequired {
        /// Called service.
        service: String,
        /// Called method.
        method: String,
    },
    /// Encrypting or decrypting a body failed, or no key is available.
    #[error("encryption error: {0}")]
    Encryption(String),
    /// Any other error reported by the remote service, as nuropb's error class and
    /// description.
    #[error("remote error {error}: {description}")]
    Remote {
        /// nuropb error class, e.g. `NuropbValidationError`.
        error: String,
        /// Human readable description.
        description: String,
    },
    /// A message could not be decoded (bad headers, protocol, JSON, ...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A mandatory publish matched no queue.
    #[error(
        "publish to exchange {exchange:?} with routing key {routing_key:?} was not routed to any queue"
    )]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// A queue is consumed exclusively by another consumer (or the exclusive consume
    /// found other consumers).
    #[error("queue {queue:?} is in exclusive use by another consumer")]
    ExclusiveInUse {
        /// The queue.
        queue: String,
    },
    /// The queue does not exist.
    #[error("queue {queue:?} does not exist")]
    NoSuchQueue {
        /// The queue.
        queue: String,
    },
    /// The exchange does not exist.
    #[error("exchange {exchange:?} does not exist")]
    NoSuchExchange {
        /// The exchange.
        exchange: String,
    },
    /// An object was re-declared with different arguments.
    #[error("{object} {name:?} already exists with different arguments: {reason}")]
    PreconditionFailed {
        /// `queue` or `exchange`.
        object: &'static str,
        /// Its name.
        name: String,
        /// What differs.
        reason: String,
    },
    /// The connection to the broker was lost while a call was in flight: a request
    /// waiting for its reply (which can no longer arrive: the response queue, or the
    /// direct reply-to channel, went away with the connection), or a request or
    /// command whose publish the loss cut off. The call ends at once instead of at its
    /// deadline. Whether the service ran it is unknown: it may have been handled, may
    /// still be, or may never be.
    #[error(
        "call {service}.{method} failed: the broker connection was lost before its outcome was known (it may or may not have been handled)"
    )]
    ConnectionLost {
        /// Called service.
        service: String,
        /// Called method.
        method: String,
    },
    /// The connection (or the mesh handle) is closed.
    #[error("the mesh connection is closed")]
    Disconnected,
    /// The operation needs a service but the handle is client-only.
    #[error("{operation} needs a service, but this mesh handle is client-only")]
    ClientOnly {
        /// What was attempted.
        operation: &'static str,
    },
    /// An argument given by the caller is invalid.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Parameters or results could not be serialised.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serde error.
        reason: String,
    },
    /// The broker did not answer one of its round trips (connect and handshake,
    /// channel open, declare, bind, consume, publisher confirm, ...) within the
    /// backend's bound (for RabbitMQ, `AmqpOptions::operation_timeout`): a broker that
    /// accepts TCP but stopped answering (frozen network, a broker stuck under a
    /// resource alarm). The backend treats the connection as lost (the next operation
    /// reconnects). Whether the broker acted on what was sent (a publish, a
    /// declaration) is unknown.
    #[error(
        "{backend} backend: no answer from the broker to {operation} ({object}) within {after:?}; the connection is treated as lost"
    )]
    BackendTimeout {
        /// Backend name (`amqp`).
        backend: &'static str,
        /// The protocol operation that got no answer, e.g. `queue.declare`,
        /// `publisher confirm`, `connect`.
        operation: &'static str,
        /// What it was about, e.g. `queue "nuropb-x-sq"`, `exchange "nuropb-rpc-exchange"`.
        object: String,
        /// The bound that passed.
        after: Duration,
    },
    /// A failure inside a backend (broker I/O, protocol error, ...).
    #[error("{backend} backend: {reason}")]
    Backend {
        /// Backend name (`inproc`, `amqp`).
        backend: &'static str,
        /// What failed.
        reason: String,
    },
}

/// nuropb error classes used by Herald (the `error` field of an error reply).
pub mod class {
    /// Handler failure (`raise NuropbHandlingError(...)`, unknown method).
    pub const HANDLING: &str = "NuropbHandlingError";
    /// Invalid parameters.
    pub const VALIDATION: &str = "NuropbValidationError";
    /// Authentication failure.
    pub const AUTHENTICATION: &str = "NuropbAuthenticationError";
    /// Authorisation failure.
    pub const AUTHORIZATION: &str = "NuropbAuthorizationError";
    /// Undecodable message.
    pub const MESSAGE: &str = "NuropbMessageError";
    /// Generic runtime failure.
    pub const EXCEPTION: &str = "NuropbException";
    /// The request could not be delivered.
    pub const NOT_DELIVERED: &str = "NuropbNotDeliveredError";
    /// The request's deadline passed before it was handled.
    pub const TIMEOUT: &str = "NuropbTimeoutError";
    /// Herald: the method requires encryption and the call was in clear.
    pub const ENCRYPTION_REQUIRED: &str = "NuropbEncryptionRequiredError";
    /// Herald: the request could not be decrypted.
    pub const ENCRYPTION: &str = "NuropbEncryptionError";
}

/// The error a service handler returns; sent to the caller as
/// `{"error": class, "description": description}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{error}: {description}")]
pub struct ServiceError {
    /// nuropb error class (see [`class`]).
    pub error: String,
    /// Human readable description.
    #[serde(default)]
    pub description: String,
}

impl ServiceError {
    /// An error with an explicit class.
    pub fn new(error: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            description: description.into(),
        }
    }
    /// `NuropbHandlingError`.
    pub fn handling(description: impl fmt::Display) -> Self {
        Self::new(class::HANDLING, description.to_string())
    }
    /// `NuropbValidationError`.
    pub fn validation(description: impl fmt::Display) -> Self {
        Self::new(class::VALIDATION, description.to_string())
    }
    /// `NuropbAuthorizationError`.
    pub fn authorization(description: impl fmt::Display) -> Self {
        Self::new(class::AUTHORIZATION, description.to_string())
    }
    /// `NuropbException` (generic runtime failure).
    pub fn exception(description: impl fmt::Display) -> Self {
        Self::new(class::EXCEPTION, description.to_string())
    }

    /// Converts an error reply into the typed [`MeshError`] a caller sees.
    pub fn into_mesh_error(self, service: &str, method: &str) -> MeshError {
        match self.error.as_str() {
            class::HANDLING => MeshError::Handling {
                service: service.to_owned(),
                method: method.to_owned(),
                description: self.description,
            },
            class::NOT_DELIVERED => MeshError::NotFound {
                service: service.to_owned(),
                method: method.to_owned(),
            },
            class::TIMEOUT => MeshError::Expired {
                service: service.to_owned(),
                method: method.to_owned(),
                description: self.description,
            },
            class::ENCRYPTION_REQUIRED => MeshError::EncryptionRequired {
                service: service.to_owned(),
                method: method.to_owned(),
            },
            class::ENCRYPTION => MeshError::Encryption(self.description),
            _ => MeshError::Remote {
                error: self.error,
                description: self.description,
            },
        }
    }
}
