//! Two nodes with `RemoteTransport`: an echo actor on node B, a typed `ask` from node A
//! through an `ActorRef`, and a message for another actor system sent to dead letters.
//!
//! ```text
//! cargo run -p herald-transport --example remote_nodes
//! ```

use std::time::Duration;

use herald_transport::remote::RemoteTransport;
use herald_transport::tcp::TcpConfig;
use herald_transport::{DeadLetterReason, MessageTransport, RawMessage, reply};
use herald_wire::Envelope;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = RemoteTransport::builder("shop", TcpConfig::loopback())
        .start()
        .await?;
    let b = RemoteTransport::builder("shop", TcpConfig::loopback())
        .start()
        .await?;
    println!("node a: {}  node b: {}", a.root(), b.root());

    // An echo actor on B: answers every request through B's transport.
    let b2 = b.clone();
    b.local().register_fn("/echo", move |req: Envelope| {
        let _ = reply(
            &b2,
            &req,
            &RawMessage::new("shop.Pong", req.payload.clone()),
        );
    })?;

    let echo = a.make_ref::<RawMessage>(&b.address_of("/echo"));
    let answer: RawMessage = echo
        .ask(
            &RawMessage::new("shop.Ping", &b"hello"[..]),
            Duration::from_secs(5),
        )
        .await?;
    println!(
        "a asked b: {} {:?}",
        answer.type_hint,
        String::from_utf8_lossy(&answer.payload)
    );

    // Same host:port and path but another system name: B refuses it.
    let port = b.tcp().advertised().port;
    a.deliver(Envelope::new(
        format!("casty://warehouse@127.0.0.1:{port}/echo"),
        "",
        "shop.Ping",
        &b""[..],
    ))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "b's wrong-system dead letters: {}",
        b.dead_letter_sink().count(DeadLetterReason::WrongSystem)
    );

    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
