//! In-process actors on a `LocalTransport`: mailbox actors, a lazily spawned actor
//! (path factory), `wait_for_path`, `ask`, and the dead-letter stream.
//!
//! ```text
//! cargo run -p herald-transport --example local_actors
//! ```

use std::sync::Arc;
use std::time::Duration;

use herald_transport::{
    ActorRef, DeadLetterReason, Handler, LocalTransport, Message, MessageTransport, PathMatcher,
    reply,
};
use herald_wire::Envelope;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    amount: i64,
}

/// Asks for the running total (answered with `Total`).
#[derive(Debug, Serialize, Deserialize)]
struct Get {}

#[derive(Debug, Serialize, Deserialize)]
struct Total {
    value: i64,
}

herald_wire::type_hint!(Add => "demo.Add", Get => "demo.Get", Total => "demo.Total");

/// A counter actor: adds every `Add`, answers `Get` with the running total.
fn spawn_counter(transport: Arc<dyn MessageTransport>) -> Handler {
    let (tx, mut rx) = mpsc::channel::<Envelope>(1024);
    tokio::spawn(async move {
        let mut total = 0;
        while let Some(envelope) = rx.recv().await {
            match envelope.type_hint.as_str() {
                "demo.Add" => match Add::from_envelope(envelope) {
                    Ok(add) => total += add.amount,
                    Err(e) => eprintln!("counter: bad Add: {e}"),
                },
                "demo.Get" => {
                    if let Err(e) = reply(&*transport, &envelope, &Total { value: total }) {
                        eprintln!("counter: cannot reply: {e}");
                    }
                }
                other => eprintln!("counter: ignored a {other} message"),
            }
        }
    });
    Handler::from_sender(tx)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = LocalTransport::builder().system("demo").build();
    let transport: Arc<dyn MessageTransport> = Arc::new(local.clone());

    // Print every dead letter as it happens.
    let mut dead = local.dead_letters().subscribe();
    tokio::spawn(async move {
        while let Ok(letter) = dead.recv().await {
            println!(
                "  dead letter: {} -> {} ({})",
                letter.envelope.type_hint, letter.envelope.target, letter.reason
            );
        }
    });

    // Counters are spawned on first use under /counter/<name>.
    let t = transport.clone();
    local.add_path_factory(PathMatcher::prefix("/counter/"), move |path| {
        println!("spawning {path}");
        Some(spawn_counter(t.clone()))
    });

    let apples: ActorRef<Add> =
        ActorRef::new(local.address_of("/counter/apples"), transport.clone());
    apples.tell(&Add { amount: 3 })?;
    apples.tell(&Add { amount: 4 })?;
    let total: Total = apples
        .retype::<Get>()
        .ask(&Get {}, Duration::from_secs(5))
        .await?;
    println!("apples total: {}", total.value);

    // An actor that registers later: messages sent before are buffered, then flushed.
    let late: ActorRef<Add> = ActorRef::new(local.address_of("/late"), transport.clone());
    late.tell(&Add { amount: 1 })?;
    println!("buffered for /late: {}", local.pending_len("/late"));
    let waiter = {
        let local = local.clone();
        tokio::spawn(async move {
            local
                .wait_for_path("/late", Some(Duration::from_secs(5)))
                .await
        })
    };
    local.register("/late", spawn_counter(transport.clone()))?;
    waiter.await??;
    println!(
        "/late registered, buffer flushed: {}",
        local.pending_len("/late")
    );

    // A stopped actor's path is dead for a while: messages to it become dead letters.
    local.unregister("/counter/apples");
    apples.tell(&Add { amount: 1 })?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "dead letters so far: dead_path={} total={}",
        local.dead_letters().count(DeadLetterReason::DeadPath),
        local.dead_letters().total()
    );
    println!("stats: {:?}", local.stats());
    transport.shutdown().await;
    Ok(())
}
