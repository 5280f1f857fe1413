//! The in-process mesh in a few lines: the example service, a client, an event
//! subscription.
//!
//! ```text
//! cargo run -p herald-mesh --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use herald_mesh::example::ExampleService;
use herald_mesh::{InProcBroker, Mesh, MeshConfig, MeshError};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), MeshError> {
    let broker = Arc::new(InProcBroker::new());
    let service = Mesh::connect(
        broker.clone(),
        MeshConfig::service("calc", ExampleService::new()),
    )
    .await?;
    let client = Mesh::connect(broker, MeshConfig::client()).await?;

    let sum = client
        .request(
            "calc",
            "add",
            json!({"a": 2, "b": 3}),
            json!({"user": "me"}),
            None,
            None,
        )
        .await?;
    println!("calc.add(2, 3) = {sum}");

    match client
        .request(
            "calc",
            "fail",
            json!({"message": "no", "kind": "handling"}),
            json!({}),
            None,
            None,
        )
        .await
    {
        Err(MeshError::Handling { description, .. }) => {
            println!("calc.fail -> handling error: {description}")
        }
        other => println!("calc.fail -> {other:?}"),
    }

    let mut events = client.subscribe("orders.*").await?;
    client
        .publish_event("orders.created", json!({"id": 7}), json!({}), None)
        .await?;
    if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        println!("event {}: {}", ev.topic, ev.event);
    }

    let described = client.describe_service("calc", false).await?;
    println!(
        "calc methods: {:?}",
        described.methods.keys().collect::<Vec<_>>()
    );
    println!("service is leader: {}", service.is_leader());

    client.disconnect().await?;
    service.disconnect().await?;
    Ok(())
}
