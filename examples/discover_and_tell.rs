//! Two Herald nodes and a registry in one process: node `alpha` keeps itself
//! registered as `ECHO` with the rpyc-compatible registry, node `beta` discovers it
//! by name and sends it a casty envelope over TCP; `alpha` answers back.
//!
//! ```text
//! cargo run -p herald --example discover_and_tell
//! ```

use std::time::Duration;

use herald::registry::{
    Registrar, RegistrarConfig, RegistryClient, RegistryConfig, RegistryServer, UdpRegistryClient,
};
use herald::transport::{MessageTransport, RemoteTransport, TcpConfig};
use herald::wire::Envelope;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A registry on 127.0.0.1 and a port the OS picks (UDP and TCP).
    let registry = RegistryServer::bind(RegistryConfig::localhost_ephemeral()).await?;
    println!("registry on {}", registry.local_addr());

    // Node alpha serves /user/echo and registers itself as ECHO.
    let alpha = RemoteTransport::builder("alpha", TcpConfig::loopback())
        .start()
        .await?;
    let alpha_port = alpha
        .tcp()
        .local_addr()
        .ok_or("alpha is not listening")?
        .port();
    let mut echo = alpha.local().register_unbounded("/user/echo")?;
    let registrar = Registrar::spawn(
        RegistryClient::Udp(UdpRegistryClient::unicast(registry.local_addr())),
        RegistrarConfig::new(["echo"], alpha_port).with_interval(Duration::from_secs(5)),
    );
    println!("alpha at {}", alpha.root());

    // Node beta looks ECHO up (the registrar may need a moment) and tells it.
    let beta = RemoteTransport::builder("beta", TcpConfig::loopback())
        .start()
        .await?;
    let mut inbox = beta.local().register_unbounded("/user/client")?;
    let client = UdpRegistryClient::unicast(registry.local_addr());
    let found = loop {
        let found = client.discover("ECHO").await?;
        if let Some(first) = found.into_iter().next() {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("discovered ECHO at {found}");
    let target = format!("casty://alpha@{}:{}/user/echo", found.host, alpha_port);
    beta.deliver(Envelope::new(
        target,
        beta.address_of("/user/client"),
        "demo.Ping",
        &br#"{"_type": "demo.Ping", "seq": 1}"#[..],
    ))?;

    // alpha answers to the sender address carried in the envelope.
    let ping = echo.recv().await.ok_or("alpha's inbox closed")?;
    println!("alpha got {} from {}", ping.type_hint, ping.sender);
    alpha.deliver(Envelope::new(
        ping.sender.clone(),
        alpha.address_of("/user/echo"),
        "demo.Pong",
        ping.payload.clone(),
    ))?;
    let pong = inbox.recv().await.ok_or("beta's inbox closed")?;
    println!(
        "beta got {} {}",
        pong.type_hint,
        String::from_utf8_lossy(&pong.payload)
    );

    registrar.shutdown().await?;
    alpha.shutdown().await;
    beta.shutdown().await;
    registry.shutdown().await;
    Ok(())
}
