//! Interop with a real casty 0.21.0 node (json serializer) in a venv: Herald tells a
//! casty actor, the casty actor replies to a Herald actor, over casty-v1 TCP.
//!
//! Skips (with a message) when the casty venv cannot be created, unless
//! `HERALD_REQUIRE_PEERS=1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use herald_transport::remote::RemoteTransport;
use herald_transport::tcp::{TcpConfig, WireMode};
use herald_transport::{MessageTransport, RawMessage};
use herald_wire::Envelope;

const WAIT: Duration = Duration::from_secs(30);

/// The casty child process; killed on drop.
struct CastyPeer {
    child: Child,
    port: u16,
    lines: std_mpsc::Receiver<String>,
}

impl Drop for CastyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CastyPeer {
    fn start(python: &std::path::Path) -> CastyPeer {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/casty_peer.py");
        let peers = herald_pyenv::shared_dir().join("peers");
        let mut child = Command::new(python)
            .arg(&script)
            .env("PYTHONPATH", &peers)
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the casty peer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = CastyPeer {
            child,
            port: 0,
            lines,
        };
        let first = peer.line("PORT");
        peer.port = first
            .trim_start_matches("PORT ")
            .trim()
            .parse()
            .expect("a port number");
        peer
    }

    /// The next output line starting with `prefix`, within the wait bound.
    fn line(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(e) => panic!("casty peer printed no {prefix:?} line: {e}"),
            }
        }
    }
}

async fn herald_node() -> RemoteTransport {
    RemoteTransport::builder("herald", TcpConfig::loopback().with_mode(WireMode::CastyV1))
        .start()
        .await
        .expect("herald node")
}

/// Tells casty's `/echo` actor a `WithRef`: it answers `Ping(value + 1)` to `reply_to`.
fn tell_echo(herald: &RemoteTransport, casty_port: u16, reply_to: &str, value: i64) {
    let payload = format!(
        r#"{{"_type": "casty_vec_msgs.WithRef", "reply_to": {{"__ref__": "{reply_to}"}}, "value": {value}}}"#
    );
    herald
        .make_ref::<RawMessage>(&format!("casty://casty@127.0.0.1:{casty_port}/echo"))
        .tell(&RawMessage::new(
            "casty_vec_msgs.WithRef",
            payload.into_bytes(),
        ))
        .expect("tell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_and_casty_exchange_messages_both_ways() {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::CASTY) else {
        return;
    };
    let peer = tokio::task::spawn_blocking(move || CastyPeer::start(&python))
        .await
        .expect("join");
    let casty_port = peer.port;
    let herald = herald_node().await;
    let mut inbox = herald
        .local()
        .register_unbounded("/inbox")
        .expect("register");

    // 1. Herald → casty: a plain Ping to /sink, decoded by casty's JSON serializer.
    let sink = herald.make_ref::<RawMessage>(&format!("casty://casty@127.0.0.1:{casty_port}/sink"));
    sink.tell(&RawMessage::new(
        "casty_vec_msgs.Ping",
        &br#"{"_type": "casty_vec_msgs.Ping", "value": 5}"#[..],
    ))
    .expect("tell");

    // 2. Herald → casty → Herald: WithRef carries a ref to a Herald actor; casty replies
    //    Ping(value + 1) to it.
    let reply_to = herald.address_of("/inbox");
    tell_echo(&herald, casty_port, &reply_to, 41);

    let (peer, sink_line, echo_line) = tokio::task::spawn_blocking(move || {
        let sink = peer.line("GOT /sink");
        let echo = peer.line("GOT /echo");
        (peer, sink, echo)
    })
    .await
    .expect("join");
    assert!(sink_line.contains("Ping(value=5)"), "{sink_line}");
    assert!(
        echo_line.contains("WithRef(") && echo_line.contains("value=41"),
        "{echo_line}"
    );

    let reply: Envelope = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("casty's reply in time")
        .expect("open");
    assert_eq!(reply.type_hint, "casty_vec_msgs.Ping");
    assert_eq!(
        reply.payload.as_ref(),
        br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#
    );
    assert_eq!(reply.target, reply_to);
    assert!(
        reply
            .sender
            .starts_with(&format!("casty://casty@127.0.0.1:{casty_port}")),
        "{}",
        reply.sender
    );
    // One connection, used both ways: casty answered over the connection Herald opened.
    assert_eq!(herald.tcp().stats().connections_established, 1);

    // 3. casty dials Herald: a ref to a second Herald node casty has never met.
    let other = herald_node().await;
    let mut other_inbox = other
        .local()
        .register_unbounded("/inbox")
        .expect("register");
    tell_echo(&herald, casty_port, &other.address_of("/inbox"), 1);
    let reply = tokio::time::timeout(WAIT, other_inbox.recv())
        .await
        .expect("reply to the second node in time")
        .expect("open");
    assert_eq!(
        reply.payload.as_ref(),
        br#"{"_type": "casty_vec_msgs.Ping", "value": 2}"#
    );
    assert_eq!(other.tcp().stats().connections_established, 1);

    herald.shutdown().await;
    other.shutdown().await;
    drop(peer);
}
