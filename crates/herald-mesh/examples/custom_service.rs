//! A service of your own: typed parameters, the caller's context in the handler,
//! an event handler, a method that requires encryption, and events emitted after the
//! reply.
//!
//! ```text
//! cargo run -p herald-mesh --example custom_service
//! ```

use std::sync::Arc;

use herald_mesh::service::{MethodInfo, RequestContext, ServiceRouter};
use herald_mesh::{InProcBroker, Mesh, MeshConfig, MeshError, ServiceError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct Greet {
    name: String,
    #[serde(default)]
    shout: bool,
}

#[derive(Serialize)]
struct Greeting {
    text: String,
    for_user: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), MeshError> {
    let greeter = ServiceRouter::new("1.0.0", "Says hello")
        .method(
            MethodInfo::new("greet", "Greets someone")
                .param("name", "str", "who to greet")
                .param_default("shout", "bool", "upper case", json!(false)),
            |p: Greet, ctx: Arc<RequestContext>| async move {
                if p.name.is_empty() {
                    return Err(ServiceError::validation("name must not be empty"));
                }
                let mut text = format!("hello, {}", p.name);
                if p.shout {
                    text = text.to_uppercase();
                }
                // Published once the reply is sent, with this call's trace id.
                ctx.emit("greetings.sent", json!({"name": p.name}));
                let for_user = ctx
                    .context
                    .get("user")
                    .and_then(|u| u.as_str())
                    .map(str::to_owned);
                Ok(Greeting { text, for_user })
            },
        )
        .on_event("greetings.*", |ev| async move {
            println!("greeter saw event {} {}", ev.topic, ev.event);
            Ok(())
        });

    let broker = Arc::new(InProcBroker::new());
    let service = Mesh::connect(broker.clone(), MeshConfig::service("greeter", greeter)).await?;
    let client = Mesh::connect(broker, MeshConfig::client()).await?;
    let r = client
        .request(
            "greeter",
            "greet",
            json!({"name": "mesh", "shout": true}),
            json!({"user": "ada"}),
            None,
            Some("trace-1".into()),
        )
        .await?;
    println!("greet -> {r}");
    let bad = client
        .request(
            "greeter",
            "greet",
            json!({"name": ""}),
            json!({}),
            None,
            None,
        )
        .await;
    println!("greet with an empty name -> {bad:?}");
    // Give the emitted event a moment to reach the greeter's own event handler.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    client.disconnect().await?;
    service.disconnect().await?;
    Ok(())
}
