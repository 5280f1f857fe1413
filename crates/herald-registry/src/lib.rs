//! herald-registry: an rpyc-compatible service registry (rpyc 6.0.2 wire protocol).
//!
//! Drop-in replacement for `rpyc_registry`: every rpyc client, `ThreadedServer`
//! registrar and `rpyc.discover` / `rpyc.connect_by_service` call keeps working, and
//! the registry serves UDP and TCP on one port with one table, prunes stale entries
//! on a timer, never blocks on a slow TCP client and drops malformed input with a
//! log line instead of dying.
//!
//! Layers, from the bottom:
//! - [`brine`]: rpyc's value encoding (strict, bounded decoder; byte-exact encoder);
//! - [`proto`]: requests and replies;
//! - [`core`]: the table and dispatch, pure, with an injected clock;
//! - [`server`]: the tokio UDP + TCP server around the core;
//! - [`events`]: the receiver of table changes the server hands out;
//! - [`client`]: UDP (broadcast or unicast) and TCP clients;
//! - [`registrar`]: a task that keeps a Rust service registered.
//!
//! ```
//! use herald_registry::{RegistryConfig, RegistryServer, client::TcpRegistryClient};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RegistryServer::bind(RegistryConfig::localhost_ephemeral()).await?;
//! let client = TcpRegistryClient::new(server.local_addr());
//! client.register(&["echo"], 18812u16).await?;
//! let found = client.discover("ECHO").await?;
//! assert_eq!(found[0].to_string(), "127.0.0.1:18812");
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod brine;
pub mod client;
pub mod core;
pub mod events;
pub mod fuzz_entry;
pub mod proto;
pub mod registrar;
pub mod server;
#[cfg(target_os = "linux")]
mod udp_batch;

pub use crate::core::{CommandKind, CoreConfig, RegistryEvent, RemoveReason, Stats, Transport};
pub use crate::proto::{Command, Port, ServiceAddr};
pub use client::{ClientError, RegistryClient, TcpRegistryClient, UdpRegistryClient};
pub use events::{EventRecvError, RegistryEvents};
/// CIDR network type of the allow-lists (re-exported from `ipnet`).
pub use ipnet::IpNet;
pub use registrar::{Registrar, RegistrarConfig};
pub use server::{RegistryConfig, RegistryServer, ServerError};

/// The default registry port (UDP and TCP), as in rpyc.
pub const REGISTRY_PORT: u16 = 18811;
