//! Direct writes: a message sent to an idle plain-TCP connection is written by the
//! sending thread itself; bursts still go through the peer task's queue; a frame the
//! socket takes only in part is finished by the peer task, ahead of later messages.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use herald_transport::tcp::{PeerAddr, PeerKey, TcpConfig, TcpNode};
use herald_transport::{DeadLetterReason, DeadLetters};
use herald_wire::{Envelope, FRAME_HANDSHAKE, FRAME_MESSAGE, Handshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

mod tcp_support;
use tcp_support::{WAIT, next, wait_until};

fn env(to: &PeerAddr, payload: Vec<u8>) -> Envelope {
    Envelope::new(
        format!("casty://sys@{to}/inbox"),
        "casty://sys@127.0.0.1:1/",
        "test.Msg",
        payload,
    )
}

fn numbered(to: &PeerAddr, n: usize) -> Envelope {
    env(to, format!("{{\"n\": {n}}}").into_bytes())
}

/// Receives the messages numbered `range` (see [`numbered`]), in that order.
async fn expect_numbered(
    rx: &mut mpsc::UnboundedReceiver<Envelope>,
    range: impl IntoIterator<Item = usize>,
) {
    for i in range {
        let got = next(rx).await;
        assert_eq!(
            got.payload,
            format!("{{\"n\": {i}}}").into_bytes(),
            "message {i}"
        );
    }
}

/// A payload of `len` bytes whose content depends on `seed` and the position.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn receiver() -> (TcpNode, mpsc::UnboundedReceiver<Envelope>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let node = TcpNode::builder(TcpConfig::loopback())
        .on_message(move |_: &PeerKey, e: Envelope| {
            let _ = tx.send(e);
        })
        .start()
        .await
        .expect("receiver starts");
    (node, rx)
}

/// A sender node, a receiver node with its inbox, and the receiver's address.
async fn sender_and_receiver() -> (
    TcpNode,
    TcpNode,
    mpsc::UnboundedReceiver<Envelope>,
    PeerAddr,
) {
    let sender = TcpNode::builder(TcpConfig::loopback())
        .start()
        .await
        .expect("sender starts");
    let (recv_node, rx) = receiver().await;
    let to = recv_node.advertised().clone();
    (sender, recv_node, rx, to)
}

#[tokio::test]
async fn a_message_after_a_pause_skips_the_peer_task() {
    let (sender, recv_node, mut rx, to) = sender_and_receiver().await;
    let peer = sender.peer(&to);
    // The first message is queued while the connection is being made.
    peer.send(numbered(&to, 0)).expect("queued");
    assert_eq!(next(&mut rx).await.payload.as_ref(), b"{\"n\": 0}");
    assert_eq!(sender.stats().direct_writes, 0);
    for n in 1..=3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peer.send(numbered(&to, n)).expect("sent");
        let got = next(&mut rx).await;
        assert_eq!(got.payload, format!("{{\"n\": {n}}}").into_bytes());
    }
    let stats = sender.stats();
    assert_eq!(stats.direct_writes, 3, "{stats:?}");
    assert_eq!(stats.direct_partial, 0, "{stats:?}");
    assert_eq!(stats.messages_out, 4, "{stats:?}");
    assert!(peer.flushed(WAIT).await);
    sender.shutdown().await;
    recv_node.shutdown().await;
}

#[tokio::test]
async fn bursts_and_pauses_keep_the_order() {
    let (sender, recv_node, mut rx, to) = sender_and_receiver().await;
    let peer = sender.peer(&to);
    let mut n = 0;
    for round in 0..30usize {
        // Bursts of 1 to 200 messages, then a pause: the first of each burst may be
        // written directly, the others are queued behind it.
        for _ in 0..(1 + round * 37 % 200) {
            peer.send(numbered(&to, n)).expect("sent");
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    expect_numbered(&mut rx, 0..n).await;
    assert!(peer.flushed(WAIT).await);
    let stats = sender.stats();
    assert_eq!(stats.messages_out, n as u64, "{stats:?}");
    assert!(stats.direct_writes > 0, "{stats:?}");
    assert!(
        stats.direct_writes < n as u64,
        "bursts are queued: {stats:?}"
    );
    sender.shutdown().await;
    recv_node.shutdown().await;
}

/// A casty-v1 peer under the test's control: answers the handshake, then reads only
/// when told to.
struct SlowPeer {
    stream: TcpStream,
    buf: BytesMut,
}

impl SlowPeer {
    async fn accept(listener: &TcpListener) -> SlowPeer {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("dialed within the wait bound")
            .expect("accept");
        let mut peer = SlowPeer {
            stream,
            buf: BytesMut::new(),
        };
        let (kind, _) = peer.frame().await;
        assert_eq!(kind, FRAME_HANDSHAKE);
        let port = listener.local_addr().expect("addr").port();
        let body = Handshake::new("127.0.0.1".to_owned(), port).encode();
        let mut reply = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        reply.push(FRAME_HANDSHAKE);
        reply.extend_from_slice(&body);
        peer.stream.write_all(&reply).await.expect("handshake");
        peer
    }

    /// The next frame (kind, body).
    async fn frame(&mut self) -> (u8, BytesMut) {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let mut f = self.buf.split_to(len);
                    let kind = f[0];
                    f.advance(1);
                    return (kind, f);
                }
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("data within the wait bound")
                .expect("read");
            assert!(n > 0, "connection closed inside a frame or before one");
        }
    }

    async fn message(&mut self) -> Envelope {
        let (kind, body) = self.frame().await;
        assert_eq!(kind, FRAME_MESSAGE);
        Envelope::decode(body.freeze()).expect("a whole, valid envelope")
    }
}

/// A sender connected to a [`SlowPeer`] (one message exchanged), idle long enough for
/// the next message to be written directly.
async fn connected_to_slow_peer(dead: DeadLetters) -> (TcpNode, TcpListener, SlowPeer, PeerAddr) {
    let sender = TcpNode::builder(TcpConfig::loopback())
        .dead_letters(dead)
        .start()
        .await
        .expect("sender starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let to = PeerAddr::new("127.0.0.1", listener.local_addr().expect("addr").port());
    sender.peer(&to).send(numbered(&to, 0)).expect("queued");
    let mut slow = SlowPeer::accept(&listener).await;
    assert_eq!(slow.message().await.payload.as_ref(), b"{\"n\": 0}");
    wait_until("the connection is idle", || {
        sender.stats().messages_out == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    (sender, listener, slow, to)
}

#[tokio::test]
async fn a_frame_the_socket_takes_in_part_is_finished_before_later_messages() {
    let (sender, _listener, mut slow, to) = connected_to_slow_peer(DeadLetters::default()).await;
    let peer = sender.peer(&to);
    // 8 MiB is more than loopback socket buffers take at once while nobody reads.
    let big = pattern(8 * 1024 * 1024, 7);
    peer.send(env(&to, big.clone())).expect("sent");
    for n in 1..=3 {
        peer.send(numbered(&to, n)).expect("queued");
    }
    let stats = sender.stats();
    assert_eq!(stats.direct_writes, 1, "{stats:?}");
    assert_eq!(stats.direct_partial, 1, "{stats:?}");
    // The peer reads only now: the big frame arrives whole, then the others in order.
    let got = slow.message().await;
    assert_eq!(got.payload.len(), big.len());
    assert!(
        got.payload == big,
        "payload of the partly written frame changed"
    );
    for n in 1..=3 {
        assert_eq!(
            slow.message().await.payload,
            format!("{{\"n\": {n}}}").into_bytes()
        );
    }
    assert!(peer.flushed(WAIT).await);
    assert_eq!(sender.stats().messages_out, 5);
    sender.shutdown().await;
}

#[tokio::test]
async fn a_partly_written_frame_on_a_lost_connection_becomes_a_dead_letter() {
    let dead = DeadLetters::default();
    let mut letters = dead.subscribe();
    let (sender, listener, slow, to) = connected_to_slow_peer(dead).await;
    let peer = sender.peer(&to);
    let big = pattern(8 * 1024 * 1024, 3);
    peer.send(env(&to, big.clone())).expect("sent");
    assert_eq!(sender.stats().direct_partial, 1);
    // The peer goes away without reading the rest.
    drop(slow);
    drop(listener);
    let letter = tokio::time::timeout(WAIT, letters.recv())
        .await
        .expect("a dead letter within the wait bound")
        .expect("dead letters open");
    assert_eq!(letter.reason, DeadLetterReason::PeerUnreachable);
    assert!(
        letter.envelope.payload == big,
        "dead letter payload changed"
    );
    assert_eq!(sender.stats().messages_out, 1);
    sender.shutdown().await;
}

#[tokio::test]
async fn a_burst_the_peer_task_cannot_take_is_flushed_by_the_sender() {
    // Single-threaded runtime: while this test sends without awaiting, the peer task
    // cannot run, so the queue past 256 KiB is written by the sending thread itself.
    let (sender, recv_node, mut rx, to) = sender_and_receiver().await;
    let peer = sender.peer(&to);
    peer.send(numbered(&to, 0)).expect("queued");
    assert_eq!(next(&mut rx).await.payload.as_ref(), b"{\"n\": 0}");
    let n = 8000;
    for i in 1..=n {
        peer.send(numbered(&to, i)).expect("queued");
    }
    let stats = sender.stats();
    assert!(stats.sender_flushes > 0, "{stats:?}");
    assert!(stats.messages_out > 1, "{stats:?}");
    expect_numbered(&mut rx, 1..=n).await;
    assert!(peer.flushed(WAIT).await);
    let stats = sender.stats();
    assert_eq!(stats.messages_out, n as u64 + 1, "{stats:?}");
    sender.shutdown().await;
    recv_node.shutdown().await;
}

#[tokio::test]
async fn a_sender_flush_the_socket_takes_in_part_keeps_every_message_in_order() {
    let (sender, _listener, mut slow, to) = connected_to_slow_peer(DeadLetters::default()).await;
    let peer = sender.peer(&to);
    // 2000 messages of 4 KiB (8 MiB) while nobody reads: the sender's flushes fill the
    // socket, one of them part-way through a frame; the peer task writes the rest.
    let count = 2000;
    let msg = |i: usize| env(&to, pattern(4096, (i % 251) as u8));
    // Built first, so the sends follow each other closely (a message after a pause of
    // 10 µs would be written directly instead).
    let msgs: Vec<Envelope> = (0..count).map(msg).collect();
    for m in msgs {
        peer.send(m).expect("queued");
    }
    let stats = sender.stats();
    assert!(stats.sender_flushes > 0, "{stats:?}");
    for i in 0..count {
        let got = slow.message().await;
        assert!(
            got.payload == msg(i).payload,
            "message {i} changed or out of order"
        );
    }
    assert!(peer.flushed(WAIT).await);
    assert_eq!(sender.stats().messages_out, count as u64 + 1);
    sender.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_keep_each_ones_order_through_flushes() {
    // Two OS threads send bursts to one peer at once (a sole producer flushes the
    // queue itself; with both, the peer task writes): every message arrives, each
    // producer's in order.
    let (sender, recv_node, mut rx, to) = sender_and_receiver().await;
    let peer = sender.peer(&to);
    peer.send(numbered(&to, 0)).expect("queued");
    assert_eq!(next(&mut rx).await.payload.as_ref(), b"{\"n\": 0}");
    let per = 4000;
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let peer = peer.clone();
            let to = to.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let body = format!("{{\"p\": {p}, \"i\": {i}}}").into_bytes();
                    peer.send(env(&to, body)).expect("queued");
                }
            })
        })
        .collect();
    for t in producers {
        t.join().expect("producer thread");
    }
    let mut seen = [0usize; 2];
    for _ in 0..2 * per {
        let got = next(&mut rx).await;
        let text = String::from_utf8(got.payload.to_vec()).expect("utf-8");
        let p = usize::from(text.contains("\"p\": 1"));
        assert_eq!(
            text,
            format!("{{\"p\": {p}, \"i\": {}}}", seen[p]),
            "producer {p} out of order"
        );
        seen[p] += 1;
    }
    assert_eq!(seen, [per, per]);
    assert!(peer.flushed(WAIT).await);
    sender.shutdown().await;
    recv_node.shutdown().await;
}
