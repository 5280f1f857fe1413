//! `herald up`: Herald's main job on embedded defaults.
//!
//! Starts, in one process and without any external service:
//! - a transport node (default `127.0.0.1:25520`, native handshake or `--casty-compat`),
//!   printing its URI and one line per received message;
//! - the rpyc-compatible registry on port 18811, UDP and TCP, printing a line per
//!   service added or removed;
//! - the in-process RPC mesh hosting the example service.
//!
//! Ctrl-C (or SIGTERM) shuts everything down gracefully.

use std::net::IpAddr;

use anyhow::Context;
use clap::Args;
use herald_registry::{CoreConfig, EventRecvError, RegistryConfig, RegistryEvent, RegistryServer};

use crate::text::Escaped;
use crate::{mesh_cmd, node_cmd};

/// Flags of `herald up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    node: node_cmd::NodeArgs,

    /// Address the registry binds (UDP and TCP); rpyc's registry binds all interfaces.
    #[arg(long, default_value = "0.0.0.0")]
    registry_host: IpAddr,

    /// Port of the registry, for both UDP and TCP (rpyc's default is 18811).
    #[arg(long, default_value_t = herald_registry::REGISTRY_PORT)]
    registry_port: u16,

    /// Answer registry LIST requests (off by default: listing exposes the inventory).
    #[arg(long)]
    registry_listing: bool,

    /// Do not start the registry.
    #[arg(long)]
    no_registry: bool,

    /// Name under which the in-process mesh serves the example service.
    #[arg(long, default_value = mesh_cmd::EXAMPLE_NAME)]
    mesh_service: String,

    /// Do not start the in-process mesh.
    #[arg(long)]
    no_mesh: bool,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Installed first: a signal during start-up (or right after "ready") shuts down
    // gracefully once everything is up, instead of killing the process half-started.
    let stop = crate::shutdown::stop_signal()?;
    let node = node_cmd::start_node(&args.node).await?;

    let registry = if args.no_registry {
        None
    } else {
        let config = RegistryConfig {
            host: args.registry_host,
            port: args.registry_port,
            core: CoreConfig {
                allow_listing: args.registry_listing,
                ..CoreConfig::default()
            },
            ..RegistryConfig::default()
        };
        let server = RegistryServer::bind(config).await.with_context(|| {
            format!(
                "starting the registry on {}:{} (another registry running? use --registry-port or --no-registry)",
                args.registry_host, args.registry_port
            )
        })?;
        outln!(
            "registry {} (udp+tcp, listing {})",
            server.local_addr(),
            if args.registry_listing { "on" } else { "off" }
        );
        let mut events = server.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    // Names and str ports come from whoever sent REGISTER.
                    Ok(RegistryEvent::Added { name, addr }) => {
                        outln!("registry added {} at {}", Escaped(name), Escaped(addr));
                    }
                    Ok(RegistryEvent::Removed { name, addr, reason }) => {
                        outln!(
                            "registry removed {} at {} ({reason:?})",
                            Escaped(name),
                            Escaped(addr)
                        );
                    }
                    Err(EventRecvError::Lagged { missed }) => {
                        tracing::warn!(missed, "registry event printer lagged");
                    }
                    Err(EventRecvError::Closed) => break,
                }
            }
        });
        Some(server)
    };

    let mesh = if args.no_mesh {
        None
    } else {
        let host = mesh_cmd::start_inprocess_example(&args.mesh_service).await?;
        outln!(
            "mesh in-process, service {} (instance {})",
            args.mesh_service,
            host.service.instance_id()
        );
        // One real call through the broker, so "ready" means the mesh answers.
        let client = host.client().await?;
        let sum = client
            .request(
                &args.mesh_service,
                "add",
                serde_json::json!({"a": 2, "b": 3}),
                serde_json::json!({}),
                None,
                None,
            )
            .await
            .context("mesh self-check call add(2, 3)")?;
        outln!("mesh self-check: {}.add(2, 3) = {sum}", args.mesh_service);
        client.disconnect().await?;
        Some(host)
    };

    outln!("herald up: ready (Ctrl-C to stop)");
    stop.await;
    outln!("herald up: shutting down");

    if let Some(mesh) = mesh
        && let Err(e) = mesh.shutdown().await
    {
        tracing::warn!(error = %e, "mesh shutdown");
    }
    if let Some(registry) = registry {
        registry.shutdown().await;
    }
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::Parser;

    use super::UpArgs;

    #[derive(Debug, Parser)]
    struct Up {
        #[command(flatten)]
        args: UpArgs,
    }

    #[test]
    fn defaults_bind_loopback_25520_as_system_herald_with_registry_and_mesh() {
        let up = Up::try_parse_from(["up"]).expect("no flag is required");
        let a = up.args;
        assert_eq!(a.node.bind, SocketAddr::from(([127, 0, 0, 1], 25520)));
        assert_eq!(a.node.advertise, None);
        assert_eq!(a.node.system, "herald");
        assert!(!a.node.wire.casty_compat);
        assert_eq!(a.node.wire.cluster, "herald");
        assert_eq!(a.node.tls.tls_cert, None);
        assert!(!a.node.tls.tls_no_client_auth);
        assert_eq!(a.registry_host.to_string(), "0.0.0.0");
        assert_eq!(a.registry_port, 18811);
        assert!(!a.registry_listing && !a.no_registry && !a.no_mesh);
        assert_eq!(a.mesh_service, "example");
    }

    #[test]
    fn tls_flags_come_as_a_set() {
        let tls = [
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-ca",
            "ca.pem",
        ];
        let ok = Up::try_parse_from(["up"].iter().chain(&tls)).expect("all three");
        assert!(!ok.args.node.tls.tls_no_client_auth);
        let ok = Up::try_parse_from(["up", "--tls-no-client-auth"].iter().chain(&tls))
            .expect("with --tls-no-client-auth");
        assert!(ok.args.node.tls.tls_no_client_auth);
        for partial in [
            &["up", "--tls-cert", "c.pem"][..],
            &["up", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
            &["up", "--tls-key", "k.pem"],
            &["up", "--tls-ca", "ca.pem"],
            &["up", "--tls-no-client-auth"],
        ] {
            assert!(Up::try_parse_from(partial).is_err(), "{partial:?}");
        }
    }
}
