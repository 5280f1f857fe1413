//! herald-mesh: a nuropb-style RPC service mesh.
//!
//! Services expose methods (requests with replies, fire-and-forget commands) and
//! handle events; clients call them by service name through a broker. The wire model
//! is nuropb 0.1.1's (exchanges, queues, headers, JSON bodies), so that through
//! RabbitMQ Herald and Python nuropb interoperate.
//!
//! * [`Mesh`]: the API handle (connect, request, command, publish_event, subscribe,
//!   describe_service, is_leader, disconnect).
//! * [`Service`] / [`ServiceRouter`]: how a service exposes methods with serde-typed
//!   parameters; the [`RequestContext`] reaches the handler.
//! * [`Backend`]: the broker abstraction;
//!   [`InProcBroker`] is the default (no broker needed).
//! * [`example::ExampleService`]: the example service of `herald mesh serve-example`.
//!
//! ```
//! use std::sync::Arc;
//! use herald_mesh::{InProcBroker, Mesh, MeshConfig, example::ExampleService};
//! use serde_json::json;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let broker = Arc::new(InProcBroker::new());
//! let service = Mesh::connect(broker.clone(), MeshConfig::service("calc", ExampleService::new())).await?;
//! let client = Mesh::connect(broker.clone(), MeshConfig::client()).await?;
//! let sum = client.request("calc", "add", json!({"a": 2, "b": 3}), json!({}), None, None).await?;
//! assert_eq!(sum, json!(5));
//! client.disconnect().await?;
//! service.disconnect().await?;
//! # Ok::<(), herald_mesh::MeshError>(())
//! # }).unwrap();
//! ```

pub mod amqp;
pub mod backend;
pub mod crypto;
mod dead_letters;
pub mod error;
pub mod example;
mod fasthash;
pub mod inproc;
pub mod leader;
pub mod mesh;
pub mod message;
pub mod service;

pub use backend::{Backend, Connection, Delivery};
pub use error::{MeshError, ServiceError};
pub use inproc::InProcBroker;
pub use leader::LeaderWatch;
pub use mesh::{EventSubscription, Mesh, MeshConfig, RequestOptions};
pub use message::{Envelope, EventBody, Message, ResponseBody};
pub use service::{
    ClientCipher, MethodInfo, RequestContext, Service, ServiceDescription, ServiceKeys,
    ServiceRouter, SessionKey,
};
