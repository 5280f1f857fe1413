//! The mesh over RabbitMQ: an example service with a shared RSA key, a client calling it
//! (plain, failing, encrypted), an event round trip, and the leader flag.
//!
//! ```text
//! cargo run -p herald-mesh --example amqp_quickstart -- amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//! (the URL defaults to `HERALD_AMQP_URL`, then to the local broker above).

use std::sync::Arc;
use std::time::Duration;

use herald_mesh::amqp::{AmqpBackend, AmqpConnection, AmqpOptions};
use herald_mesh::crypto::{NuropbCipher, ServiceKey};
use herald_mesh::example::ExampleService;
use herald_mesh::message::{dead_letter_queue, service_queue};
use herald_mesh::{Connection, Mesh, MeshConfig, MeshError, RequestOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("HERALD_AMQP_URL").ok())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let backend = Arc::new(AmqpBackend::new(&url)?);
    let name = format!("quickstart-{}", std::process::id());

    // Every instance of a service should load the same key (ServiceKey::from_pem_file);
    // a generated one is fine for a single instance.
    let key = ServiceKey::generate(2048)?;
    let service = Mesh::connect(
        backend.clone(),
        MeshConfig::service(&name, ExampleService::new()).service_keys(Arc::new(key)),
    )
    .await?;
    let client = Mesh::connect(
        backend,
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await?;

    let sum = client
        .request(
            &name,
            "add",
            json!({"a": 2, "b": 3}),
            json!({"user": "me"}),
            None,
            None,
        )
        .await?;
    println!("add(2, 3) = {sum}");

    match client
        .request(
            &name,
            "fail",
            json!({"message": "boom", "kind": "handling"}),
            json!({}),
            None,
            None,
        )
        .await
    {
        Err(MeshError::Handling { description, .. }) => {
            println!("fail -> handling error: {description}")
        }
        other => println!("fail -> unexpected {other:?}"),
    }

    let secret = client
        .request_with(
            &name,
            "secret_echo",
            json!({"text": "psst"}),
            RequestOptions {
                encrypted: true,
                ..RequestOptions::default()
            },
        )
        .await?;
    println!("secret_echo over RSA-OAEP + Fernet = {secret}");

    let mut sub = client.subscribe("interop.#").await?;
    client
        .request(
            &name,
            "emit",
            json!({"topic": "interop.hello", "payload": 42}),
            json!({}),
            None,
            None,
        )
        .await?;
    if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        println!("event {} = {}", ev.topic, ev.event);
    }

    // The leader lock is taken within one leader interval.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("service is leader: {}", service.is_leader());

    client.disconnect().await?;
    service.disconnect().await?;

    // The service queue is durable (as nuropb's); remove this demo's queues.
    let admin = AmqpConnection::open(&url, "quickstart-cleanup", AmqpOptions::default()).await?;
    admin.delete_queue(&service_queue(&name)).await?;
    admin.delete_queue(&dead_letter_queue(&name)).await?;
    admin.close().await?;
    Ok(())
}
