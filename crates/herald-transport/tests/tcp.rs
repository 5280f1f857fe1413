//! TCP transport behaviour between real sockets on loopback: both modes, one connection
//! per pair, ordering, overflow policies, circuit breaker, address map, client-only,
//! simultaneous connect, reject reasons.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_transport::tcp::{
    Backoff, OverflowPolicy, PeerAddr, PeerKey, TcpConfig, TcpNode, WireMode,
};
use herald_transport::{DeadLetterReason, DeadLetters, TransportError};
use herald_wire::Envelope;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;

mod tcp_support;
use tcp_support::{WAIT, next, wait_until};

struct Node {
    node: TcpNode,
    rx: mpsc::UnboundedReceiver<(PeerKey, Envelope)>,
}

async fn start(cfg: TcpConfig) -> Node {
    start_with(cfg, DeadLetters::default()).await
}

async fn start_with(cfg: TcpConfig, dead: DeadLetters) -> Node {
    let (tx, rx) = mpsc::unbounded_channel();
    let node = TcpNode::builder(cfg)
        .dead_letters(dead)
        .on_message(move |from: &PeerKey, env: Envelope| {
            let _ = tx.send((from.clone(), env));
        })
        .start()
        .await
        .expect("node starts");
    Node { node, rx }
}

fn env(to: &PeerAddr, n: usize) -> Envelope {
    Envelope::new(
        format!("casty://sys@{to}/inbox"),
        "casty://sys@127.0.0.1:1/",
        "test.Msg",
        format!("{{\"n\": {n}}}").into_bytes(),
    )
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<(PeerKey, Envelope)>) -> (PeerKey, Envelope) {
    next(rx).await
}

fn native(cluster: &str) -> TcpConfig {
    TcpConfig::loopback().with_mode(WireMode::native(cluster))
}

fn fast_fail(mut cfg: TcpConfig, threshold: u32) -> TcpConfig {
    cfg.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        factor: 2.0,
        breaker_threshold: threshold,
    };
    cfg
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn casty_mode_replies_reuse_the_inbound_connection() {
    let mut a = start(TcpConfig::loopback()).await;
    let mut b = start(TcpConfig::loopback()).await;
    let b_addr = b.node.advertised().clone();
    a.node.send(&b_addr, env(&b_addr, 1)).expect("queued");
    let (from, got) = recv(&mut b.rx).await;
    assert_eq!(got.payload.as_ref(), b"{\"n\": 1}");
    // B files A under the address A advertised in its handshake…
    assert_eq!(from, PeerKey::Addr(a.node.advertised().clone()));
    // …and its reply travels back over the same connection: nobody dials twice.
    let a_addr = a.node.advertised().clone();
    b.node.send(&a_addr, env(&a_addr, 2)).expect("queued");
    let (_, reply) = recv(&mut a.rx).await;
    assert_eq!(reply.payload.as_ref(), b"{\"n\": 2}");
    assert_eq!(a.node.stats().connections_established, 1);
    assert_eq!(b.node.stats().connections_established, 1);
    assert_eq!(a.node.stats().dial_failures, 0);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_order() {
    let mut cfg = TcpConfig::loopback();
    cfg.queue_capacity = 16_384; // everything is queued before the connection is up
    let a = start(cfg).await;
    let mut b = start(TcpConfig::loopback()).await;
    let to = b.node.advertised().clone();
    let peer = a.node.peer(&to);
    for n in 0..10_000 {
        peer.send(env(&to, n)).expect("queued");
    }
    for n in 0..10_000 {
        let (_, e) = recv(&mut b.rx).await;
        assert_eq!(
            e.payload,
            format!("{{\"n\": {n}}}").into_bytes(),
            "message {n}"
        );
    }
    assert!(peer.flushed(WAIT).await);
    assert_eq!(a.node.stats().messages_out, 10_000);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn native_mode_identifies_peers_by_node_id() {
    let mut a = start(native("prod")).await;
    let mut b = start(native("prod")).await;
    let to = b.node.advertised().clone();
    a.node.send(&to, env(&to, 1)).expect("queued");
    recv(&mut b.rx).await;
    let peers = b.node.connected_peers();
    assert_eq!(peers.len(), 1);
    let info = peers[0].1.node.clone().expect("native identity");
    assert_eq!(info.node_id, a.node.node_id());
    // Node-id routing: B answers A by node id only.
    let a_addr = a.node.advertised().clone();
    b.node
        .send_to_node(a.node.node_id(), env(&a_addr, 2))
        .expect("routed by node id");
    let (_, e) = recv(&mut a.rx).await;
    assert_eq!(e.payload.as_ref(), b"{\"n\": 2}");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

async fn first_dead_letter_detail(dead: &DeadLetters, reason: DeadLetterReason) -> String {
    let mut sub = dead.subscribe();
    loop {
        let l = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("dead letter in time")
            .expect("stream open");
        if l.reason == reason {
            return l.detail.map(|d| d.to_string()).unwrap_or_default();
        }
    }
}

#[tokio::test]
async fn native_rejects_wrong_cluster_and_bad_cookie_with_reasons() {
    let b = start(native("blue")).await;
    let to = b.node.advertised().clone();
    let dead = DeadLetters::default();
    let a = start_with(fast_fail(native("green"), 1), dead.clone()).await;
    let waiter = first_dead_letter_detail(&dead, DeadLetterReason::PeerUnreachable);
    a.node.send(&to, env(&to, 1)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("wrong cluster"), "{detail}");

    let c =
        start(TcpConfig::loopback().with_mode(WireMode::native_with_cookie("blue", "one"))).await;
    let to_c = c.node.advertised().clone();
    let dead = DeadLetters::default();
    let d = start_with(
        fast_fail(
            TcpConfig::loopback().with_mode(WireMode::native_with_cookie("blue", "two")),
            1,
        ),
        dead.clone(),
    )
    .await;
    let waiter = first_dead_letter_detail(&dead, DeadLetterReason::PeerUnreachable);
    d.node.send(&to_c, env(&to_c, 1)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("cookie"), "{detail}");
    for n in [a, b, c, d] {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn matching_cookies_connect() {
    let cfg = || TcpConfig::loopback().with_mode(WireMode::native_with_cookie("c", "s3cret"));
    let a = start(cfg()).await;
    let mut b = start(cfg()).await;
    let to = b.node.advertised().clone();
    a.node.send(&to, env(&to, 7)).expect("queued");
    let (_, e) = recv(&mut b.rx).await;
    assert_eq!(e.payload.as_ref(), b"{\"n\": 7}");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn overflow_policies() {
    let port = free_port().await; // nothing listens: dials fail, messages stay queued
    let to = PeerAddr::new("127.0.0.1", port);
    for policy in [
        OverflowPolicy::DropNewest,
        OverflowPolicy::DropOldest,
        OverflowPolicy::Fail,
    ] {
        let dead = DeadLetters::default();
        let mut sub = dead.subscribe();
        let mut cfg = fast_fail(TcpConfig::loopback(), 1_000);
        cfg.queue_capacity = 3;
        cfg.overflow = policy;
        let a = start_with(cfg, dead.clone()).await;
        let mut refused = 0;
        for n in 0..5 {
            match a.node.send(&to, env(&to, n)) {
                Ok(()) => {}
                Err(TransportError::Refused {
                    reason: DeadLetterReason::QueueOverflow,
                    ..
                }) => refused += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(dead.count(DeadLetterReason::QueueOverflow), 2, "{policy:?}");
        let mut dropped = Vec::new();
        while let Ok(l) = sub.try_recv() {
            dropped.push(String::from_utf8_lossy(&l.envelope.payload).into_owned());
        }
        match policy {
            OverflowPolicy::DropNewest => {
                assert_eq!(refused, 0);
                assert_eq!(dropped, vec!["{\"n\": 3}", "{\"n\": 4}"]);
            }
            OverflowPolicy::DropOldest => {
                assert_eq!(refused, 0);
                assert_eq!(dropped, vec!["{\"n\": 0}", "{\"n\": 1}"]);
            }
            OverflowPolicy::Fail => {
                assert_eq!(refused, 2);
                assert_eq!(dropped, vec!["{\"n\": 3}", "{\"n\": 4}"]);
            }
        }
        a.node.shutdown().await;
    }
}

#[tokio::test]
async fn the_queue_is_also_bounded_in_bytes() {
    let port = free_port().await; // nothing listens: dials fail, messages stay queued
    let to = PeerAddr::new("127.0.0.1", port);
    let dead = DeadLetters::default();
    let mut cfg = fast_fail(TcpConfig::loopback(), 1_000);
    cfg.max_queue_bytes = 10 * 1024;
    let a = start_with(cfg, dead.clone()).await;
    let big = |n: usize| {
        let mut e = env(&to, n);
        e.payload = vec![b'x'; 4096].into();
        e
    };
    // Three 4 KiB messages reach 10 KiB; the next ones overflow (drop-newest), while the
    // message count is far below `queue_capacity`.
    for n in 0..5 {
        a.node.send(&to, big(n)).expect("queued or dropped");
    }
    assert_eq!(a.node.peer(&to).queued(), 3);
    assert_eq!(dead.count(DeadLetterReason::QueueOverflow), 2);
    // Small messages are refused too until the queue drains: the bound is in bytes.
    a.node.send(&to, env(&to, 9)).expect("dropped");
    assert_eq!(dead.count(DeadLetterReason::QueueOverflow), 3);
    a.node.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_opens_and_clear_blacklist_lifts_it() {
    let port = free_port().await;
    let to = PeerAddr::new("127.0.0.1", port);
    let dead = DeadLetters::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let f2 = failures.clone();
    let mut cfg = fast_fail(TcpConfig::loopback(), 1);
    cfg.backoff.initial = Duration::from_secs(30);
    cfg.backoff.max = Duration::from_secs(60);
    let (tx, _rx) = mpsc::unbounded_channel::<Envelope>();
    let a = TcpNode::builder(cfg)
        .dead_letters(dead.clone())
        .on_message(move |_: &PeerKey, e: Envelope| {
            let _ = tx.send(e);
        })
        .on_send_failure(move |_| {
            f2.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .await
        .expect("start");
    let peer = a.peer(&to);
    peer.send(env(&to, 0)).expect("queued");
    // The dial fails and (threshold 1) opens the breaker for 30 s, dropping the queue.
    wait_until("queued message dropped as unreachable", || {
        dead.count(DeadLetterReason::PeerUnreachable) == 1
    })
    .await;
    assert!(matches!(
        peer.send(env(&to, 1)),
        Err(TransportError::Refused {
            reason: DeadLetterReason::Blacklisted,
            ..
        })
    ));
    assert_eq!(dead.count(DeadLetterReason::Blacklisted), 1);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        2,
        "on_send_failure called per drop"
    );
    // Lifting the breaker makes the peer usable again: start a server there now.
    let mut cfg_b = TcpConfig::loopback();
    cfg_b.bind = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut b = start(cfg_b).await;
    a.clear_blacklist(&to);
    peer.send(env(&to, 2)).expect("accepted again");
    let (_, e) = recv(&mut b.rx).await;
    assert_eq!(e.payload.as_ref(), b"{\"n\": 2}");
    a.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn address_map_applies_to_dialing_only() {
    let mut b_cfg = TcpConfig::loopback();
    b_cfg.advertise = Some(PeerAddr::new("node-b.internal", 0));
    let mut b = start(b_cfg).await;
    let logical = b.node.advertised().clone();
    assert_eq!(logical.host, "node-b.internal");
    let real = b.node.local_addr().expect("bound");
    let a = start(
        TcpConfig::loopback().with_address_map(move |addr: &PeerAddr| {
            if addr.host == "node-b.internal" {
                PeerAddr::from(real)
            } else {
                addr.clone()
            }
        }),
    )
    .await;
    a.node.send(&logical, env(&logical, 5)).expect("queued");
    let (_, e) = recv(&mut b.rx).await;
    // The target URI keeps the logical address.
    assert_eq!(e.target, format!("casty://sys@{logical}/inbox"));
    let peers = a.node.connected_peers();
    assert_eq!(
        peers[0].1.addr, logical,
        "handshake carries the logical address"
    );
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn client_only_node_gets_replies_over_its_own_connection() {
    for mode in [WireMode::CastyV1, WireMode::native("c")] {
        let mut server = start(TcpConfig::loopback().with_mode(mode.clone())).await;
        let mut ccfg = TcpConfig::loopback().with_mode(mode.clone());
        ccfg.client_only = true;
        let mut client = start(ccfg).await;
        assert!(client.node.local_addr().is_none());
        assert_eq!(client.node.advertised().port, 0);
        let to = server.node.advertised().clone();
        client.node.send(&to, env(&to, 1)).expect("queued");
        let (from, _) = recv(&mut server.rx).await;
        // Reply to whoever sent it, over the inbound connection.
        let reply_to = match &from {
            PeerKey::Addr(a) => a.clone(),
            PeerKey::Node(_) => PeerAddr::new("127.0.0.1", 0),
        };
        let e = env(&reply_to, 2);
        match &from {
            PeerKey::Node(id) => server.node.send_to_node(*id, e).expect("reply queued"),
            PeerKey::Addr(a) => server.node.send(a, e).expect("reply queued"),
        }
        let (_, got) = recv(&mut client.rx).await;
        assert_eq!(got.payload.as_ref(), b"{\"n\": 2}", "{mode:?}");
        client.node.shutdown().await;
        server.node.shutdown().await;
    }
}

/// A race decision a node logged: its peer task for `peer` had two connections to it
/// and kept one. Connections are named by their log labels: the dialed address for a
/// connection this node dialed, the remote socket address for one it accepted.
#[derive(Debug, Clone)]
struct RaceDecision {
    peer: String,
    kept: String,
    closed: String,
}

/// Captures the transport's connection-race log lines ("switching to the newer
/// connection", "duplicate connection closed"): the public API does not say which
/// socket a peer's connection uses, the log labels do.
#[derive(Clone, Default)]
struct RaceLog(Arc<Mutex<Vec<RaceDecision>>>);

impl RaceLog {
    fn take(&self) -> Vec<RaceDecision> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or_default()
    }
}

#[derive(Default)]
struct Fields(HashMap<&'static str, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RaceLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("herald_transport") {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let msg = f.0.get("message").map(String::as_str).unwrap_or_default();
        let (kept, closed) = if msg.starts_with("switching to the newer connection") {
            ("new", "old")
        } else if msg.starts_with("duplicate connection closed") {
            ("kept", "closed")
        } else {
            return;
        };
        let field = |name| f.0.get(name).cloned().unwrap_or_default();
        if let Ok(mut v) = self.0.lock() {
            v.push(RaceDecision {
                peer: field("peer"),
                kept: field(kept),
                closed: field(closed),
            });
        }
    }
}

/// Both nodes send before either peer task has run (this runtime has one thread and
/// `send` does not yield), so both dial: every round is a simultaneous connect. Each
/// side must then keep the same connection, the one dialed by the smaller node id
/// (native) or address (casty-v1), and close the other without losing, duplicating or
/// reordering a message. Which connection each side kept is read from the race log
/// lines (see `RaceLog`); that no connection was lost afterwards (which a split
/// decision causes: each side closes the connection the other kept) from the stats.
#[tokio::test(flavor = "current_thread")]
async fn simultaneous_connect_settles_on_one_connection_without_losses() {
    let races = RaceLog::default();
    let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(races.clone()));
    for round in 0..5 {
        for mode in [WireMode::CastyV1, WireMode::native("race")] {
            let at = format!("round {round}, {mode:?}");
            let mut a = start(TcpConfig::loopback().with_mode(mode.clone())).await;
            let mut b = start(TcpConfig::loopback().with_mode(mode.clone())).await;
            let (a_addr, b_addr) = (a.node.advertised().clone(), b.node.advertised().clone());
            races.take();
            for n in 0..200 {
                a.node.send(&b_addr, env(&b_addr, n)).expect("queued");
                b.node.send(&a_addr, env(&a_addr, n)).expect("queued");
            }
            for n in 0..200 {
                let (_, e) = recv(&mut b.rx).await;
                assert_eq!(
                    e.payload,
                    format!("{{\"n\": {n}}}").into_bytes(),
                    "{at}: a→b {n}"
                );
                let (_, e) = recv(&mut a.rx).await;
                assert_eq!(
                    e.payload,
                    format!("{{\"n\": {n}}}").into_bytes(),
                    "{at}: b→a {n}"
                );
            }
            // The race happened: each side had both connections and kept one.
            wait_until("both sides settled the race", || races.len() >= 2).await;
            let decisions = races.take();
            let decided = |by: &PeerAddr, peer: &PeerAddr| {
                let d: Vec<&RaceDecision> = decisions
                    .iter()
                    .filter(|d| d.peer == peer.to_string())
                    .collect();
                assert_eq!(d.len(), 1, "{at}: {by}'s decisions: {decisions:?}");
                d[0].clone()
            };
            let (on_a, on_b) = (decided(&a_addr, &b_addr), decided(&b_addr, &a_addr));
            // A connection a side dialed is labelled with the other's address there.
            let a_kept_own = on_a.kept == b_addr.to_string();
            let b_kept_own = on_b.kept == a_addr.to_string();
            assert!(
                a_kept_own != (on_a.closed == b_addr.to_string())
                    && b_kept_own != (on_b.closed == a_addr.to_string()),
                "{at}: not one dialed and one accepted connection: {on_a:?} {on_b:?}"
            );
            let a_dial_wins = match mode {
                WireMode::CastyV1 => a_addr < b_addr,
                _ => a.node.node_id() < b.node.node_id(),
            };
            assert_eq!(
                (a_kept_own, b_kept_own),
                (a_dial_wins, !a_dial_wins),
                "{at}: the sides kept different connections, or not the one the rule picks \
                 (A {a_addr}: {on_a:?}, B {b_addr}: {on_b:?})"
            );
            // Closing the duplicate did not take the kept connection down (a split
            // decision would: each side closes the connection the other kept).
            tokio::time::sleep(Duration::from_millis(50)).await;
            for (n, other) in [(&a.node, &b_addr), (&b.node, &a_addr)] {
                assert_eq!(n.stats().connections_established, 1, "{at}");
                let peers = n.connected_peers();
                assert_eq!(peers.len(), 1, "{at}");
                assert_eq!(peers[0].1.addr, *other, "{at}");
            }
            // Still usable both ways after the race; nothing duplicated or dead-lettered.
            a.node.send(&b_addr, env(&b_addr, 999)).expect("queued");
            b.node.send(&a_addr, env(&a_addr, 999)).expect("queued");
            assert_eq!(recv(&mut b.rx).await.1.payload.as_ref(), b"{\"n\": 999}");
            assert_eq!(recv(&mut a.rx).await.1.payload.as_ref(), b"{\"n\": 999}");
            assert!(a.rx.try_recv().is_err() && b.rx.try_recv().is_err(), "{at}");
            assert_eq!(a.node.dead_letters().total(), 0, "{at}");
            assert_eq!(b.node.dead_letters().total(), 0, "{at}");
            assert_eq!(races.len(), 0, "{at}: another race after the first");
            a.node.shutdown().await;
            b.node.shutdown().await;
        }
    }
}

/// A sender whose frames may not exceed 1 KiB (with `dead` as its dead letters) and a
/// receiver; returns them and the receiver's address.
async fn small_frames_pair(dead: &DeadLetters) -> (Node, Node, PeerAddr) {
    let mut cfg = TcpConfig::loopback();
    cfg.max_frame_size = 1024;
    let a = start_with(cfg, dead.clone()).await;
    let b = start(TcpConfig::loopback()).await;
    let to = b.node.advertised().clone();
    (a, b, to)
}

/// Message `n` with a 4 KiB payload: too large for `small_frames_pair`'s sender.
fn oversized(to: &PeerAddr, n: usize) -> Envelope {
    let mut e = env(to, n);
    e.payload = vec![b'x'; 4096].into();
    e
}

#[tokio::test]
async fn frames_over_the_limit_become_dead_letters() {
    let dead = DeadLetters::default();
    let (a, mut b, to) = small_frames_pair(&dead).await;
    a.node.send(&to, oversized(&to, 0)).expect("queued");
    a.node.send(&to, env(&to, 1)).expect("queued");
    let (_, e) = recv(&mut b.rx).await;
    assert_eq!(e.payload.as_ref(), b"{\"n\": 1}");
    assert_eq!(dead.count(DeadLetterReason::FrameTooLarge), 1);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn send_ref_sends_the_callers_envelope_to_each_peer_and_dead_letters_a_copy() {
    let dead = DeadLetters::default();
    let (a, mut b, to_b) = small_frames_pair(&dead).await;
    let mut c = start(TcpConfig::loopback()).await;
    let to_c = c.node.advertised().clone();
    let m = env(&to_b, 7);
    let (pb, pc) = (a.node.peer(&to_b), a.node.peer(&to_c));
    for _ in 0..3 {
        pb.send_ref(&m).expect("queued for b");
        pc.send_ref(&m).expect("queued for c");
    }
    for rx in [&mut b.rx, &mut c.rx] {
        for _ in 0..3 {
            let (_, got) = recv(rx).await;
            assert_eq!(got, m);
        }
    }
    // A borrowed envelope that cannot be sent becomes a dead letter of its own (a copy);
    // the caller's envelope is untouched.
    let mut sub = dead.subscribe();
    let big = oversized(&to_b, 8);
    pb.send_ref(&big)
        .expect("dropped as a dead letter, not refused");
    let letter = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("dead letter in time")
        .expect("stream open");
    assert_eq!(letter.reason, DeadLetterReason::FrameTooLarge);
    assert_eq!(letter.envelope, big);
    assert_eq!(big.payload.len(), 4096);
    // The connection still carries the next message.
    pb.send_ref(&m).expect("queued");
    assert_eq!(recv(&mut b.rx).await.1, m);
    a.node.shutdown().await;
    b.node.shutdown().await;
    c.node.shutdown().await;
}

#[tokio::test]
async fn send_all_keeps_order_with_single_sends_and_dead_letters_what_does_not_fit() {
    let dead = DeadLetters::default();
    let (a, mut b, to) = small_frames_pair(&dead).await;
    let peer = a.node.peer(&to);
    let too_large = 700;
    let batch: Vec<Envelope> = (10..2010)
        .map(|n| {
            if n == too_large {
                oversized(&to, n)
            } else {
                env(&to, n)
            }
        })
        .collect();
    for n in 0..10 {
        peer.send(env(&to, n)).expect("queued");
    }
    assert_eq!(peer.send_all(&batch).expect("all queued"), batch.len());
    for n in 2010..2020 {
        peer.send(env(&to, n)).expect("queued");
    }
    for n in (0..2020).filter(|&n| n != too_large) {
        let (_, got) = recv(&mut b.rx).await;
        assert_eq!(
            got.payload,
            format!("{{\"n\": {n}}}").as_bytes(),
            "message {n}"
        );
    }
    assert_eq!(dead.count(DeadLetterReason::FrameTooLarge), 1);
    assert!(peer.flushed(WAIT).await);
    assert_eq!(a.node.stats().messages_out, 2019);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn send_all_stops_at_the_first_refused_message() {
    let port = free_port().await; // nothing listens: dials fail, messages stay queued
    let to = PeerAddr::new("127.0.0.1", port);
    let dead = DeadLetters::default();
    let mut cfg = fast_fail(TcpConfig::loopback(), 1_000);
    cfg.queue_capacity = 100;
    cfg.overflow = OverflowPolicy::Fail;
    let a = start_with(cfg, dead.clone()).await;
    let batch: Vec<Envelope> = (0..250).map(|n| env(&to, n)).collect();
    let err = a
        .node
        .peer(&to)
        .send_all(&batch)
        .expect_err("the queue fills");
    assert_eq!(err.queued, 100);
    assert!(matches!(
        err.error,
        TransportError::Refused {
            reason: DeadLetterReason::QueueOverflow,
            ..
        }
    ));
    assert!(err.to_string().contains("after 100 messages"), "{err}");
    // Only the refused message became a dead letter; the rest were not sent at all.
    assert_eq!(dead.count(DeadLetterReason::QueueOverflow), 1);
    assert_eq!(a.node.peer(&to).queued(), 100);
    a.node.shutdown().await;
}

#[tokio::test]
async fn a_keepalive_without_a_period_is_refused_at_start() {
    use herald_transport::tcp::{Keepalive, TcpError};
    for (interval, timeout) in [(0, 15), (10, 5)] {
        let mut cfg = native("c");
        cfg.keepalive = Some(Keepalive {
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(timeout),
        });
        match TcpNode::builder(cfg).start().await {
            Err(TcpError::Config(why)) => assert!(why.contains("keepalive interval"), "{why}"),
            other => panic!(
                "expected a configuration error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[tokio::test]
async fn messages_queued_together_go_out_in_few_writes() {
    let a = start(fast_fail(TcpConfig::loopback(), 1_000)).await;
    // Queued while nothing listens at the address yet (dials fail and are retried):
    // nothing can be written directly, and the peer task writes the queue once the
    // receiver is up and the connection is made.
    let port = free_port().await;
    let to = PeerAddr::new("127.0.0.1", port);
    let peer = a.node.peer(&to);
    let count = 2000;
    for n in 0..count {
        peer.send(env(&to, n)).expect("queued");
    }
    let mut cfg = TcpConfig::loopback();
    cfg.bind = ([127, 0, 0, 1], port).into();
    let mut b = start(cfg).await;
    for n in 0..count {
        let (_, got) = recv(&mut b.rx).await;
        assert_eq!(got.payload, format!("{{\"n\": {n}}}").as_bytes());
    }
    assert!(peer.flushed(WAIT).await);
    let stats = a.node.stats();
    assert_eq!(stats.messages_out, count as u64, "{stats:?}");
    assert_eq!(stats.direct_writes, 0, "{stats:?}");
    // About 220 KB of frames: one or two runs of up to 256 KiB, not a write per message.
    assert!(
        (1..=4).contains(&stats.batches_out),
        "frames were not coalesced: {stats:?}"
    );
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn send_after_shutdown_is_refused() {
    let a = start(TcpConfig::loopback()).await;
    a.node.shutdown().await;
    let to = PeerAddr::new("127.0.0.1", 9);
    assert!(matches!(
        a.node.send(&to, env(&to, 0)),
        Err(TransportError::Refused {
            reason: DeadLetterReason::Shutdown,
            ..
        })
    ));
}

#[test]
fn send_works_from_a_thread_outside_the_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (a, mut b) = rt.block_on(async {
        (
            start(TcpConfig::loopback()).await,
            start(TcpConfig::loopback()).await,
        )
    });
    let to = b.node.advertised().clone();
    // Plain thread, no runtime context: creating the peer and sending must not panic.
    std::thread::scope(|s| {
        s.spawn(|| a.node.send(&to, env(&to, 1)).expect("queued"));
    });
    let (_, e) = rt.block_on(recv(&mut b.rx));
    assert_eq!(e.payload.as_ref(), b"{\"n\": 1}");
    rt.block_on(async {
        a.node.shutdown().await;
        b.node.shutdown().await;
    });
}

#[tokio::test]
async fn departed_client_only_peers_are_forgotten() {
    let mut server = start(native("c")).await;
    let mut ccfg = native("c");
    ccfg.client_only = true;
    let client = start(ccfg).await;
    let to = server.node.advertised().clone();
    client.node.send(&to, env(&to, 1)).expect("queued");
    let (from, _) = recv(&mut server.rx).await;
    assert_eq!(from, PeerKey::Node(client.node.node_id()));
    client.node.shutdown().await;
    let id = client.node.node_id();
    wait_until("the departed client is forgotten", || {
        server.node.node_key(id).is_none()
    })
    .await;
    assert!(server.node.connected_peers().is_empty());
    assert!(matches!(
        server.node.send_to_node(id, env(&to, 2)),
        Err(TransportError::Refused {
            reason: DeadLetterReason::NoRoute,
            ..
        })
    ));
    server.node.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_bounds_a_dial_to_a_silent_listener() {
    // Accepts TCP but never answers the handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dead = DeadLetters::default();
    let mut cfg = fast_fail(TcpConfig::loopback(), 1);
    cfg.connect_timeout = Duration::from_millis(200);
    let a = start_with(cfg, dead.clone()).await;
    let to = PeerAddr::new("127.0.0.1", port);
    let waiter = first_dead_letter_detail(&dead, DeadLetterReason::PeerUnreachable);
    a.node.send(&to, env(&to, 1)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("timed out after 200ms"), "{detail}");
    a.node.shutdown().await;
    holder.abort();
}

#[tokio::test]
async fn native_identity_is_the_node_id_not_the_claimed_address() {
    use herald_transport::native::NodeId;
    let mut server = start(native("c")).await;
    let to = server.node.advertised().clone();
    let claimed = PeerAddr::new("10.9.9.9", 7000);
    let client = |id: u64, incarnation: u64, dead: DeadLetters| {
        let mut cfg = fast_fail(native("c"), 1);
        cfg.advertise = Some(claimed.clone());
        cfg.node_id = NodeId(id);
        cfg.incarnation = incarnation;
        start_with(cfg, dead)
    };
    // The first node claiming 10.9.9.9:7000 gets it.
    let first = client(1, 10, DeadLetters::default()).await;
    first.node.send(&to, env(&to, 1)).expect("queued");
    recv(&mut server.rx).await;
    // Another node id claiming the same address is refused while the first is connected.
    let dead = DeadLetters::default();
    let spoofer = client(2, 10, dead.clone()).await;
    let waiter = first_dead_letter_detail(&dead, DeadLetterReason::PeerUnreachable);
    spoofer.node.send(&to, env(&to, 2)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("address in use"), "{detail}");
    // An older incarnation of the same node id is refused too.
    let dead = DeadLetters::default();
    let stale = client(1, 9, dead.clone()).await;
    let waiter = first_dead_letter_detail(&dead, DeadLetterReason::PeerUnreachable);
    stale.node.send(&to, env(&to, 3)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("stale incarnation"), "{detail}");
    // The legitimate node is still served.
    first.node.send(&to, env(&to, 4)).expect("queued");
    assert_eq!(recv(&mut server.rx).await.1.payload.as_ref(), b"{\"n\": 4}");
    for n in [first, spoofer, stale, server] {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn messages_queued_for_a_node_that_left_never_reach_the_node_that_took_its_address() {
    use herald_transport::native::NodeId;
    let port = free_port().await;
    let node_at = |id: u64, incarnation: u64| {
        let mut cfg = native("c");
        cfg.bind = ([127, 0, 0, 1], port).into();
        cfg.node_id = NodeId(id);
        cfg.incarnation = incarnation;
        start(cfg)
    };
    let dead = DeadLetters::default();
    let mut sub = dead.subscribe();
    let a = start_with(fast_fail(native("c"), 1_000), dead.clone()).await;
    let mut first = node_at(1, 1).await;
    let to = first.node.advertised().clone();
    a.node.send(&to, env(&to, 0)).expect("queued");
    assert_eq!(recv(&mut first.rx).await.1.payload.as_ref(), b"{\"n\": 0}");
    first.node.shutdown().await;
    wait_until("the connection to node 1 is gone", || {
        a.node.connected_peers().is_empty()
    })
    .await;
    // Queued while nobody is at the address: meant for node 1.
    for n in 1..=3 {
        a.node.send(&to, env(&to, n)).expect("queued");
    }
    // Node 2 takes the address; the sender redials and meets it.
    let mut second = node_at(2, 1).await;
    for n in 1..=3 {
        let letter = loop {
            let l = tokio::time::timeout(WAIT, sub.recv())
                .await
                .expect("dead letter in time")
                .expect("stream open");
            if l.reason == DeadLetterReason::NodeReplaced {
                break l;
            }
        };
        assert_eq!(
            letter.envelope.payload,
            format!("{{\"n\": {n}}}").as_bytes()
        );
        let detail = letter.detail.map(|d| d.to_string()).unwrap_or_default();
        let (gone, now) = (NodeId(1).to_string(), NodeId(2).to_string());
        assert!(
            detail.contains(&format!("node {gone} is no longer at"))
                && detail.contains(&format!("node {now} answered")),
            "{detail}"
        );
    }
    // Node 1's route is gone: a message for it is not handed to node 2 either.
    assert!(matches!(
        a.node.send_to_node(NodeId(1), env(&to, 4)),
        Err(TransportError::Refused {
            reason: DeadLetterReason::NoRoute,
            ..
        })
    ));
    // What is sent to the address from now on goes to node 2, and only that arrives.
    a.node.send(&to, env(&to, 5)).expect("queued");
    assert_eq!(recv(&mut second.rx).await.1.payload.as_ref(), b"{\"n\": 5}");
    assert!(
        second.rx.try_recv().is_err(),
        "node 2 got a message meant for node 1"
    );
    // A restart of the same node id (a newer incarnation) keeps what was queued.
    second.node.shutdown().await;
    wait_until("the connection to node 2 is gone", || {
        a.node.connected_peers().is_empty()
    })
    .await;
    for n in 6..=7 {
        a.node.send(&to, env(&to, n)).expect("queued");
    }
    let mut restarted = node_at(2, 2).await;
    for n in 6..=7 {
        let (_, got) = recv(&mut restarted.rx).await;
        assert_eq!(got.payload, format!("{{\"n\": {n}}}").as_bytes());
    }
    assert_eq!(dead.count(DeadLetterReason::NodeReplaced), 3);
    a.node.shutdown().await;
    restarted.node.shutdown().await;
}

#[tokio::test]
async fn queued_messages_become_dead_letters_unchanged() {
    // Nothing listens and the breaker opens on the 2nd failed dial: the queue is drained
    // to dead letters. The queue holds encoded frames; each dead letter must carry the
    // very envelope that was sent (fields, extra header keys, payload), in order.
    let port = free_port().await;
    let to = PeerAddr::new("127.0.0.1", port);
    let dead = DeadLetters::default();
    let mut sub = dead.subscribe();
    let a = start_with(fast_fail(TcpConfig::loopback(), 2), dead.clone()).await;
    let peer = a.node.peer(&to);
    let sent: Vec<Envelope> = (0..3)
        .map(|n| {
            env(&to, n)
                .with_extra_header("trace_id", format!("t-{n}"))
                .expect("not a standard key")
        })
        .chain([Envelope::new(
            "casty://s@h:1/ü \"q\"",
            "",
            "x.Y",
            &b"\x00\xff"[..],
        )])
        .collect();
    for e in &sent {
        peer.send(e.clone()).expect("queued");
    }
    assert!(peer.queued_at_most(0, WAIT).await, "the queue drains");
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let l = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("dead letter within the wait bound")
            .expect("subscription open");
        assert_eq!(l.reason, DeadLetterReason::PeerUnreachable);
        got.push(l.envelope);
    }
    assert_eq!(got, sent);
    a.node.shutdown().await;
}

#[tokio::test]
async fn queued_at_most_waits_for_the_writer() {
    let mut cfg = TcpConfig::loopback();
    cfg.queue_capacity = 16_384;
    let a = start(cfg).await;
    let mut b = start(TcpConfig::loopback()).await;
    let to = b.node.advertised().clone();
    let peer = a.node.peer(&to);
    for n in 0..5_000 {
        peer.send(env(&to, n)).expect("queued");
    }
    assert!(peer.queued_at_most(0, WAIT).await);
    assert_eq!(peer.queued(), 0);
    for n in 0..5_000 {
        let (_, e) = recv(&mut b.rx).await;
        assert_eq!(e.payload, format!("{{\"n\": {n}}}").into_bytes());
    }
    a.node.shutdown().await;
    b.node.shutdown().await;
}
