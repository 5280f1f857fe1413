//! # Herald
//!
//! Messaging and service discovery between distributed services, as separate layers
//! you pick with Cargo features (all on by default):
//!
//! | feature | module | what |
//! |---|---|---|
//! | `wire` | [`wire`] | casty-compatible envelopes, frames, addresses, payload codecs |
//! | `transport` | [`transport`] | `MessageTransport`, `LocalTransport`, TCP (casty-v1 / native, TLS), `RemoteTransport`, `ActorRef` |
//! | `registry` | [`registry`] | rpyc-compatible name registry: server, clients, `Registrar` |
//! | `mesh` | [`mesh`] | nuropb-style RPC mesh: in-process broker and RabbitMQ |
//!
//! Each module re-exports the stable surface of its crate; the whole crate stays
//! reachable as `herald::<layer>::full` for what is not (yet) part of that surface.
//!
//! ```
//! # #[cfg(all(feature = "wire", feature = "transport", feature = "mesh"))]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use herald::mesh::{InProcBroker, Mesh, MeshConfig, example::ExampleService};
//! use herald::transport::{LocalTransport, MessageTransport};
//! use herald::wire::Envelope;
//!
//! // In-process delivery by actor path.
//! let local = LocalTransport::new();
//! let mut inbox = local.register_channel("/user/greeter", 16)?;
//! local.deliver(Envelope::new("casty://app/user/greeter", "", "app.Hello", &b"{}"[..]))?;
//! assert_eq!(inbox.recv().await.map(|e| e.type_hint), Some("app.Hello".into()));
//!
//! // An RPC over the in-process mesh.
//! let broker = Arc::new(InProcBroker::new());
//! let svc = Mesh::connect(broker.clone(), MeshConfig::service("calc", ExampleService::new())).await?;
//! let client = Mesh::connect(broker, MeshConfig::client()).await?;
//! let sum = client.request("calc", "add", serde_json::json!({"a": 1, "b": 2}), serde_json::json!({}), None, None).await?;
//! assert_eq!(sum, serde_json::json!(3));
//! client.disconnect().await?;
//! svc.disconnect().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

/// Wire formats: casty 0.21.0 envelopes and frames, actor addresses, payload codecs.
#[cfg(feature = "wire")]
pub mod wire {
    pub use herald_wire::payload::{
        CastyJson, CastyMsgpack, CastyValue, Json, MessagePack, PayloadCodec, Protobuf, TypeHint,
        TypeRegistry,
    };
    pub use herald_wire::{
        ActorAddress, DEFAULT_MAX_FRAME_SIZE, Envelope, FRAME_HANDSHAKE, FRAME_MESSAGE, Frame,
        FrameCodec, Handshake, SharedStr, WireError, type_hint,
    };

    /// The whole `herald-wire` crate.
    pub use herald_wire as full;
}

/// Message delivery: the transport trait, in-process and TCP transports, actor refs.
#[cfg(feature = "transport")]
pub mod transport {
    pub use herald_transport::tcp::{
        AddressMap, Backoff, Keepalive, OverflowPolicy, PeerAddr, TcpConfig, TcpError, WireMode,
    };
    pub use herald_transport::tls::{TlsConfig, TlsError};
    pub use herald_transport::{
        ActorRef, DeadLetter, DeadLetterReason, DeadLetters, LocalConfig, LocalTransport, Message,
        MessageTransport, RemoteTransport, TransportError,
    };

    /// The whole `herald-transport` crate (includes the `testkit` for implementers).
    pub use herald_transport as full;
}

/// Name registry compatible with rpyc's `UDPRegistryServer` / `TCPRegistryServer`.
#[cfg(feature = "registry")]
pub mod registry {
    pub use herald_registry::{
        ClientError, CoreConfig, EventRecvError, Port, REGISTRY_PORT, Registrar, RegistrarConfig,
        RegistryClient, RegistryConfig, RegistryEvent, RegistryEvents, RegistryServer, ServerError,
        ServiceAddr, TcpRegistryClient, UdpRegistryClient,
    };

    /// The whole `herald-registry` crate.
    pub use herald_registry as full;
}

/// RPC service mesh compatible with nuropb 0.1.8 over RabbitMQ.
#[cfg(feature = "mesh")]
pub mod mesh {
    pub use herald_mesh::amqp::AmqpBackend;
    pub use herald_mesh::{
        Backend, InProcBroker, Mesh, MeshConfig, MeshError, RequestContext, Service, ServiceError,
        ServiceKeys, ServiceRouter, example,
    };

    /// The whole `herald-mesh` crate.
    pub use herald_mesh as full;
}
