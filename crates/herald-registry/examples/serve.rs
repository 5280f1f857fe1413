//! Serve an rpyc-compatible registry on 127.0.0.1 (a free port, or the one given),
//! with listing on, and print every table change until Ctrl-C.
//!
//! ```text
//! cargo run -p herald-registry --example serve -- 18811
//! python -c "import rpyc; from rpyc.utils.registry import UDPRegistryClient as C; \
//!   print(C(ip='127.0.0.1').register(('echo',), 18812))"
//! ```

use herald_registry::core::CoreConfig;
use herald_registry::{EventRecvError, RegistryConfig, RegistryEvent, RegistryServer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(0);
    let server = RegistryServer::bind(RegistryConfig {
        port,
        core: CoreConfig {
            allow_listing: true,
            ..CoreConfig::default()
        },
        ..RegistryConfig::localhost_ephemeral()
    })
    .await?;
    println!("registry on {} (UDP and TCP)", server.local_addr());
    let mut events = server.events();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(RegistryEvent::Added { name, addr }) => println!("+ {name} {addr}"),
                Ok(RegistryEvent::Removed { name, addr, reason }) => println!("- {name} {addr} ({reason:?})"),
                Err(lag @ EventRecvError::Lagged { .. }) => println!("! {lag}"),
                Err(EventRecvError::Closed) => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("{:?}", server.stats());
    server.shutdown().await;
    Ok(())
}
