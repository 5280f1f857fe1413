//! Two TCP nodes in native mode with a shared cookie: one sends, the other prints, then
//! a third node with the wrong cookie is refused and its message shows up as a dead
//! letter with the reason.
//!
//! ```text
//! cargo run -p herald-transport --example tcp_nodes
//! ```

use std::time::Duration;

use herald_transport::DeadLetters;
use herald_transport::tcp::{Backoff, PeerKey, TcpConfig, TcpNode, WireMode};
use herald_wire::Envelope;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = |cookie: &str| {
        let mut c = TcpConfig::loopback().with_mode(WireMode::native_with_cookie("demo", cookie));
        c.backoff = Backoff {
            breaker_threshold: 1,
            ..Backoff::default()
        };
        c
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = TcpNode::builder(cfg("s3cret"))
        .on_message(move |from: &PeerKey, env: Envelope| {
            let _ = tx.send((from.clone(), env));
        })
        .start()
        .await?;
    let to = server.advertised().clone();
    println!("server listening on {to}, node id {}", server.node_id());

    let client = TcpNode::builder(cfg("s3cret")).start().await?;
    for n in 0..3 {
        client.send(
            &to,
            Envelope::new(
                format!("casty://demo@{to}/inbox"),
                "",
                "demo.Count",
                format!("{{\"n\": {n}}}").into_bytes(),
            ),
        )?;
    }
    for _ in 0..3 {
        let (from, env) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or("channel closed")?;
        println!(
            "server got {} {} from {from}",
            env.type_hint,
            String::from_utf8_lossy(&env.payload)
        );
    }

    let dead = DeadLetters::default();
    let mut letters = dead.subscribe();
    let intruder = TcpNode::builder(cfg("guess"))
        .dead_letters(dead)
        .start()
        .await?;
    intruder.send(
        &to,
        Envelope::new(
            format!("casty://demo@{to}/inbox"),
            "",
            "demo.Evil",
            &b"{}"[..],
        ),
    )?;
    let letter = tokio::time::timeout(Duration::from_secs(10), letters.recv()).await??;
    println!(
        "intruder's message dropped: {} ({})",
        letter.reason,
        letter.detail.as_deref().unwrap_or("")
    );

    for node in [client, intruder, server] {
        node.shutdown().await;
    }
    Ok(())
}
