//! Keep a Rust service registered with a registry, find it the way an rpyc client
//! would, then unregister on the way out.
//!
//! Starts its own registry when none is given:
//!
//! ```text
//! cargo run -p herald-registry --example registrar            # self-contained
//! cargo run -p herald-registry --example registrar -- 127.0.0.1:18811
//! ```

use std::time::Duration;

use herald_registry::{
    Registrar, RegistrarConfig, RegistryConfig, RegistryServer, UdpRegistryClient,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (registry, _own_server) = match std::env::args().nth(1) {
        Some(addr) => (addr.parse()?, None),
        None => {
            let server = RegistryServer::bind(RegistryConfig::localhost_ephemeral()).await?;
            (server.local_addr(), Some(server))
        }
    };
    let client = UdpRegistryClient::unicast(registry);
    let registrar = Registrar::spawn(
        client.clone().into(),
        RegistrarConfig::new(["calculator", "calc"], 9000u16).with_interval(Duration::from_secs(5)),
    );
    if !registrar.wait_registered(Duration::from_secs(5)).await {
        return Err(format!("no registry answered at {registry}").into());
    }
    for addr in client.discover("CALC").await? {
        println!("CALC is served at {addr}");
    }
    registrar.shutdown().await?;
    println!("unregistered");
    Ok(())
}
