//! Bad input and faults: every case closes the offending connection or drops the bad
//! message with a logged reason, and the node keeps serving its other peers.

use std::time::Duration;

use herald_transport::native::{self, Dialer, HandshakeConfig, NativeFrame, NodeId, Step};
use herald_transport::tcp::{Backoff, Keepalive, PeerKey, TcpConfig, TcpNode, WireMode};
use herald_transport::{DeadLetterReason, DeadLetters};
use herald_wire::Envelope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

struct Node {
    node: TcpNode,
    rx: mpsc::UnboundedReceiver<Envelope>,
    dead: DeadLetters,
}

async fn start(cfg: TcpConfig) -> Node {
    let (tx, rx) = mpsc::unbounded_channel();
    let dead = DeadLetters::default();
    let node = TcpNode::builder(cfg)
        .dead_letters(dead.clone())
        .on_message(move |_: &PeerKey, e: Envelope| {
            let _ = tx.send(e);
        })
        .start()
        .await
        .expect("start");
    Node { node, rx, dead }
}

fn env(n: u32) -> Envelope {
    Envelope::new(
        "casty://sys@127.0.0.1:1/inbox",
        "casty://other@127.0.0.1:40001/",
        "test.Msg",
        format!("{n}").into_bytes(),
    )
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(body);
    v
}

fn casty_handshake(port: u16) -> Vec<u8> {
    frame(
        0,
        format!("{{\"host\": \"127.0.0.1\", \"port\": {port}}}").as_bytes(),
    )
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Envelope>) -> Envelope {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("message in time")
        .expect("open")
}

/// Reads one frame; `None` on EOF.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .expect("read in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .expect("read in time")
        .ok()?;
    let kind = body.remove(0);
    Some((kind, body))
}

/// Waits until the node closes the connection; returns the bytes it sent before.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut all)).await;
    assert!(r.is_ok(), "the node did not close the connection in time");
    all
}

/// A well-behaved peer can still talk to `node` (it keeps serving).
async fn still_serving(node: &mut Node) {
    let sender = TcpNode::builder(TcpConfig::loopback().with_mode(node.node.config().mode.clone()))
        .start()
        .await
        .expect("start");
    let to = node.node.advertised().clone();
    sender.send(&to, env(4242)).expect("queued");
    assert_eq!(recv(&mut node.rx).await.payload.as_ref(), b"4242");
    sender.shutdown().await;
}

async fn connect(node: &Node) -> TcpStream {
    TcpStream::connect(node.node.local_addr().expect("bound"))
        .await
        .expect("connect")
}

async fn casty_connected(node: &Node) -> TcpStream {
    let mut s = connect(node).await;
    s.write_all(&casty_handshake(40001)).await.expect("write");
    let (kind, body) = read_frame(&mut s).await.expect("handshake reply");
    assert_eq!(kind, 0);
    assert!(String::from_utf8_lossy(&body).contains("\"port\""));
    s
}

#[tokio::test]
async fn garbage_bytes_close_the_connection() {
    let mut b = start(TcpConfig::loopback()).await;
    let mut s = connect(&b).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let sent = read_until_closed(&mut s).await;
    assert!(sent.is_empty(), "nothing is written to a garbage peer");
    assert_eq!(b.node.stats().handshake_failures, 1);
    still_serving(&mut b).await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn message_before_handshake_is_refused() {
    // casty-v1 mode: closed without writing anything, as casty does.
    let mut b = start(TcpConfig::loopback()).await;
    let mut s = connect(&b).await;
    s.write_all(&frame(1, &env(1).encode()))
        .await
        .expect("write");
    assert!(read_until_closed(&mut s).await.is_empty());
    still_serving(&mut b).await;
    assert!(
        b.rx.try_recv().is_err(),
        "the early message was not delivered"
    );
    b.node.shutdown().await;

    // native mode: an explicit reject, then close.
    let mut n = start(TcpConfig::loopback().with_mode(WireMode::native("c"))).await;
    let mut s = connect(&n).await;
    s.write_all(&frame(1, &env(1).encode()))
        .await
        .expect("write");
    let (kind, body) = read_frame(&mut s).await.expect("a reject frame");
    match NativeFrame::decode(kind, &body) {
        Ok(NativeFrame::Reject { reason, detail }) => {
            assert_eq!(reason, native::RejectReason::Malformed);
            assert!(detail.contains("0x01"), "{detail}");
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    read_until_closed(&mut s).await;
    still_serving(&mut n).await;
    n.node.shutdown().await;
}

#[tokio::test]
async fn oversized_length_closes_the_connection() {
    let mut cfg = TcpConfig::loopback();
    cfg.max_frame_size = 64 * 1024;
    let mut b = start(cfg).await;
    let mut s = casty_connected(&b).await;
    s.write_all(&0x7fff_ffffu32.to_be_bytes())
        .await
        .expect("write");
    read_until_closed(&mut s).await;
    assert_eq!(b.node.stats().decode_failures, 1);
    still_serving(&mut b).await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn truncated_frame_delivers_what_was_complete() {
    let mut b = start(TcpConfig::loopback()).await;
    let mut s = casty_connected(&b).await;
    s.write_all(&frame(1, &env(1).encode()))
        .await
        .expect("write");
    let second = frame(1, &env(2).encode());
    s.write_all(&second[..second.len() / 2])
        .await
        .expect("write");
    s.shutdown().await.expect("half close");
    assert_eq!(recv(&mut b.rx).await.payload.as_ref(), b"1");
    read_until_closed(&mut s).await;
    still_serving(&mut b).await;
    assert!(
        b.rx.try_recv().is_err(),
        "the truncated message was not delivered"
    );
    b.node.shutdown().await;
}

#[tokio::test]
async fn invalid_headers() {
    let mut b = start(TcpConfig::loopback()).await;
    let mut letters = b.dead.subscribe();
    // A frame whose envelope header is not JSON: that message is dropped (dead letter
    // DecodeFailed), the connection stays up and the next message is delivered.
    let mut s = casty_connected(&b).await;
    let mut bad = 7u32.to_be_bytes().to_vec();
    bad.extend_from_slice(b"{nope!!");
    s.write_all(&frame(1, &bad)).await.expect("write");
    // A header length that overruns the frame: dropped too.
    let mut overrun = 500u32.to_be_bytes().to_vec();
    overrun.extend_from_slice(b"{}");
    s.write_all(&frame(1, &overrun)).await.expect("write");
    // An unknown frame kind is ignored, as casty does.
    s.write_all(&frame(0x07, b"whatever")).await.expect("write");
    s.write_all(&frame(1, &env(3).encode()))
        .await
        .expect("write");
    assert_eq!(recv(&mut b.rx).await.payload.as_ref(), b"3");
    assert_eq!(b.dead.count(DeadLetterReason::DecodeFailed), 2);
    assert_eq!(b.node.stats().decode_failures, 2);
    // Subscribers see both, with the bytes that did not decode.
    for sent in [&bad, &overrun] {
        let letter = letters
            .try_recv()
            .expect("a dead letter for each bad frame");
        assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(letter.envelope.payload.as_ref(), sent.as_slice());
        assert!(letter.envelope.target.is_empty() && letter.envelope.type_hint.is_empty());
        let detail = letter.detail.expect("detail");
        assert!(detail.contains("undecodable envelope"), "{detail}");
    }

    // A frame length of 0 (no kind byte) is a framing error: connection closed.
    s.write_all(&0u32.to_be_bytes()).await.expect("write");
    read_until_closed(&mut s).await;
    still_serving(&mut b).await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let mut cfg = TcpConfig::loopback();
    cfg.handshake_timeout = Duration::from_millis(300);
    let mut b = start(cfg).await;
    let mut silent = connect(&b).await;
    // Meanwhile the node serves others.
    still_serving(&mut b).await;
    assert!(read_until_closed(&mut silent).await.is_empty());
    assert_eq!(b.node.stats().handshake_failures, 1);
    b.node.shutdown().await;
}

#[tokio::test]
async fn native_peer_that_stops_answering_is_dropped_by_keepalive() {
    let mut cfg = TcpConfig::loopback().with_mode(WireMode::native("c"));
    cfg.keepalive = Some(Keepalive {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
    });
    let mut b = start(cfg).await;
    // A hand-driven native client: completes the handshake, then goes silent.
    let mut s = connect(&b).await;
    let (mut dialer, hello) =
        Dialer::start(HandshakeConfig::new("c", NodeId(99), 1).with_advertised("127.0.0.1", 40009));
    let mut out = bytes::BytesMut::new();
    hello.encode_frame(&mut out);
    s.write_all(&out).await.expect("write");
    let (kind, body) = read_frame(&mut s).await.expect("welcome");
    let frame = NativeFrame::decode(kind, &body).expect("decodes");
    let Step::SendAndDone(confirm, info) = dialer.on_frame(frame) else {
        panic!("handshake did not complete");
    };
    assert_eq!(info.node_id, b.node.node_id());
    let mut out = bytes::BytesMut::new();
    confirm.encode_frame(&mut out);
    s.write_all(&out).await.expect("write");
    // The node pings; we never answer; it must close the connection.
    let mut pings = 0;
    while let Some((kind, _)) = read_frame(&mut s).await {
        if kind == native::FRAME_PING {
            pings += 1;
        }
    }
    assert!(pings >= 1, "the node sent keepalive pings");
    still_serving(&mut b).await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn killed_peer_is_detected_and_queued_messages_follow_in_order_after_reconnect() {
    let mut b = start(TcpConfig::loopback()).await;
    let b_port = b.node.local_addr().expect("bound").port();
    let to = b.node.advertised().clone();
    let mut c = start(TcpConfig::loopback()).await;
    let to_c = c.node.advertised().clone();

    let mut cfg = TcpConfig::loopback();
    cfg.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        factor: 2.0,
        breaker_threshold: 10_000,
    };
    let a = start(cfg).await;
    a.node.send(&to, env(0)).expect("queued");
    assert_eq!(recv(&mut b.rx).await.payload.as_ref(), b"0");

    // Kill B. A notices the connection is gone.
    b.node.shutdown().await;
    drop(b.node);
    let deadline = tokio::time::Instant::now() + WAIT;
    while a
        .node
        .connected_peers()
        .iter()
        .any(|(k, _)| *k == PeerKey::Addr(to.clone()))
    {
        assert!(tokio::time::Instant::now() < deadline, "loss not detected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While B is down, messages to it queue up; C is served without delay.
    for n in 1..=50 {
        a.node.send(&to, env(n)).expect("queued");
    }
    a.node.send(&to_c, env(7)).expect("queued");
    assert_eq!(recv(&mut c.rx).await.payload.as_ref(), b"7");
    tokio::time::sleep(Duration::from_millis(150)).await; // a few failed redials

    // B comes back on the same port: the queue drains in order.
    let mut cfg = TcpConfig::loopback();
    cfg.bind = format!("127.0.0.1:{b_port}").parse().expect("addr");
    let mut b2 = start(cfg).await;
    for n in 1..=50 {
        let got = recv(&mut b2.rx).await;
        assert_eq!(got.payload, format!("{n}").into_bytes(), "message {n}");
    }
    assert!(a.node.stats().dial_failures >= 1);
    assert_eq!(a.dead.total(), 0, "nothing was dropped");
    for n in [a.node, b2.node, c.node] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn unknown_type_hint_is_dropped_with_a_reason_and_others_flow() {
    use herald_transport::MessageTransport;
    use herald_transport::remote::RemoteTransport;
    let b = RemoteTransport::builder("sys", TcpConfig::loopback())
        .accept_type_hints(|hint| hint.starts_with("shop."))
        .start()
        .await
        .expect("start");
    let mut inbox = b.local().register_unbounded("/inbox").expect("register");
    let a = RemoteTransport::builder("sys", TcpConfig::loopback())
        .start()
        .await
        .expect("start");
    let to = b.address_of("/inbox");
    a.deliver(Envelope::new(to.clone(), "", "evil.Unknown", &b"{}"[..]))
        .expect("sent");
    a.deliver(Envelope::new(to, "", "shop.Order", &b"{}"[..]))
        .expect("sent");
    let got = recv(&mut inbox).await;
    assert_eq!(got.type_hint, "shop.Order");
    assert_eq!(
        b.dead_letter_sink().count(DeadLetterReason::DecodeFailed),
        1
    );
    assert!(inbox.try_recv().is_err());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_does_not_delay_the_others() {
    // A casty-speaking peer that completes the handshake, then never reads again.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stuck_port = stuck.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = stuck.accept().await {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                continue;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if s.read_exact(&mut body).await.is_err() {
                continue;
            }
            let _ = s.write_all(&casty_handshake(stuck_port)).await;
            held.push(s); // never read from again
        }
    });
    let mut c = start(TcpConfig::loopback()).await;
    let to_c = c.node.advertised().clone();
    let mut cfg = TcpConfig::loopback();
    cfg.queue_capacity = 64;
    cfg.write_timeout = Duration::from_millis(500);
    let a = start(cfg).await;
    let mut letters = a.dead.subscribe();
    let to_stuck = herald_transport::tcp::PeerAddr::new("127.0.0.1", stuck_port);
    // Far more than the socket buffers hold: the stuck peer's writer blocks, its queue
    // fills and overflows (dead letters), and `send` never waits.
    let big = Envelope::new(
        "casty://sys@127.0.0.1:1/x",
        "",
        "t.Big",
        vec![b'x'; 64 * 1024],
    );
    let started = std::time::Instant::now();
    for _ in 0..400 {
        a.node
            .send(&to_stuck, big.clone())
            .expect("send never blocks");
    }
    assert!(
        started.elapsed() < WAIT,
        "send must not wait for the network"
    );
    // Meanwhile another peer is served (50 messages fit its own queue of 64).
    for n in 0..50 {
        a.node.send(&to_c, env(n)).expect("queued");
    }
    for n in 0..50 {
        assert_eq!(recv(&mut c.rx).await.payload, format!("{n}").into_bytes());
    }
    assert!(a.dead.count(DeadLetterReason::QueueOverflow) > 0);
    // The stalled write is detected: the connection is dropped with a clear reason.
    let stalled = loop {
        let l = match tokio::time::timeout(WAIT, letters.recv())
            .await
            .expect("a dead letter in time")
        {
            Ok(l) => l,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(e) => panic!("dead-letter stream: {e}"),
        };
        if l.reason == DeadLetterReason::PeerUnreachable {
            break l.detail.map(|d| d.to_string()).unwrap_or_default();
        }
    };
    assert!(stalled.contains("write stalled"), "{stalled}");
    a.node.shutdown().await;
    c.node.shutdown().await;
    holder.abort();
}

#[tokio::test]
async fn a_flood_of_silent_clients_is_capped() {
    let mut cfg = TcpConfig::loopback();
    cfg.handshake_timeout = Duration::from_secs(600);
    cfg.max_pending_handshakes = 2;
    let mut b = start(cfg).await;
    let silent1 = connect(&b).await;
    let silent2 = connect(&b).await;
    // Make sure the node has accepted both before the third arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut third = loop {
        let mut s = connect(&b).await;
        // Closed at once (long before the 600 s handshake timeout): over the cap.
        if tokio::time::timeout(Duration::from_millis(500), s.read_u8())
            .await
            .is_ok()
        {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cap never applied"
        );
    };
    assert!(read_until_closed(&mut third).await.is_empty());
    assert!(b.node.stats().handshake_failures >= 1);
    // Once the silent clients leave, the node accepts handshakes again.
    drop((silent1, silent2));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sender = TcpNode::builder(TcpConfig::loopback())
            .start()
            .await
            .expect("start");
        let to = b.node.advertised().clone();
        sender.send(&to, env(77)).expect("queued");
        let got = tokio::time::timeout(Duration::from_millis(500), b.rx.recv()).await;
        sender.shutdown().await;
        if let Ok(Some(e)) = got {
            assert_eq!(e.payload.as_ref(), b"77");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never recovered"
        );
    }
    b.node.shutdown().await;
}

#[tokio::test]
async fn claimed_addresses_of_departed_clients_do_not_accumulate() {
    let mut b = start(TcpConfig::loopback()).await;
    for i in 0..50u16 {
        let mut s = connect(&b).await;
        s.write_all(&casty_handshake(30_000 + i))
            .await
            .expect("write");
        read_frame(&mut s).await.expect("handshake reply");
        drop(s);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.node.known_peers() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} peer entries left",
            b.node.known_peers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    still_serving(&mut b).await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn a_peer_handle_survives_its_peer_restarting() {
    let mut b = start(TcpConfig::loopback()).await;
    let port = b.node.local_addr().expect("bound").port();
    let to = b.node.advertised().clone();
    let a = start(TcpConfig::loopback()).await;
    let handle = a.node.peer(&to);
    handle.send(env(1)).expect("queued");
    assert_eq!(recv(&mut b.rx).await.payload.as_ref(), b"1");
    b.node.shutdown().await;
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    while handle.connected().is_some() || a.node.known_peers() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "loss not detected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut cfg = TcpConfig::loopback();
    cfg.bind = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut b2 = start(cfg).await;
    handle.send(env(2)).expect("the old handle still sends");
    assert_eq!(recv(&mut b2.rx).await.payload.as_ref(), b"2");
    a.node.shutdown().await;
    b2.node.shutdown().await;
}
