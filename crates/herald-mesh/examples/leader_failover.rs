//! Three instances of one service elect exactly one leader; when it goes away,
//! another instance takes over.
//!
//! ```text
//! cargo run -p herald-mesh --example leader_failover
//! ```

use std::sync::Arc;
use std::time::Duration;

use herald_mesh::example::ExampleService;
use herald_mesh::{InProcBroker, Mesh, MeshConfig, MeshError};

fn show(instances: &[Mesh]) {
    for m in instances {
        println!("  {} leader={}", m.instance_id(), m.is_leader());
    }
}

async fn settle(instances: &[Mesh]) {
    for _ in 0..200 {
        if instances.iter().filter(|m| m.is_leader()).count() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), MeshError> {
    let broker = Arc::new(InProcBroker::new());
    let mut instances = Vec::new();
    for _ in 0..3 {
        let cfg = MeshConfig::service("jobs", ExampleService::new())
            .leader_interval(Duration::from_millis(50));
        instances.push(Mesh::connect(broker.clone(), cfg).await?);
    }
    settle(&instances).await;
    println!("three instances:");
    show(&instances);
    let i = instances.iter().position(|m| m.is_leader()).unwrap_or(0);
    let leader = instances.remove(i);
    println!("leader {} disconnects", leader.instance_id());
    leader.disconnect().await?;
    settle(&instances).await;
    show(&instances);
    for m in instances {
        m.disconnect().await?;
    }
    Ok(())
}
