//! LocalTransport: one test per routing rule (casty semantics, bounded state, dead
//! letters). TTL rules use a `ManualClock`, so nothing here depends on timing.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_transport::{
    DeadLetterReason, DeadLetters, Handler, LocalTransport, ManualClock, MessageTransport,
    PathMatcher, TransportError,
};
use herald_wire::Envelope;
use tokio::sync::mpsc;

fn env(path: &str, seq: u64) -> Envelope {
    Envelope::new(
        format!("casty://test{path}"),
        "casty://test/sender",
        "test.Seq",
        seq.to_be_bytes().to_vec(),
    )
}

fn seq_of(e: &Envelope) -> u64 {
    u64::from_be_bytes(e.payload[..].try_into().expect("8-byte payload in tests"))
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Envelope>) -> Vec<u64> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(seq_of(&e));
    }
    v
}

#[test]
fn registered_path_receives_messages() {
    let local = LocalTransport::new();
    let mut rx = local.register_unbounded("/a").unwrap();
    for i in 0..3 {
        local.deliver(env("/a", i)).unwrap();
    }
    assert_eq!(drain(&mut rx), vec![0, 1, 2]);
    assert_eq!(local.dead_letters().total(), 0);
}

#[test]
fn routing_uses_only_the_path_of_the_target() {
    let local = LocalTransport::new();
    let mut rx = local.register_unbounded("/user/x").unwrap();
    local
        .deliver(Envelope::new(
            "casty://other@10.0.0.1:9/user/x",
            "",
            "t",
            &b""[..],
        ))
        .unwrap();
    local
        .deliver(Envelope::new("casty://another/user/x", "", "t", &b""[..]))
        .unwrap();
    local
        .deliver(Envelope::new("/user/x", "", "t", &b""[..]))
        .unwrap();
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn path_without_leading_slash_is_normalised() {
    let local = LocalTransport::new();
    let mut rx = local.register_unbounded("plain").unwrap();
    assert!(local.is_registered("/plain"));
    local.deliver(env("/plain", 1)).unwrap();
    assert_eq!(drain(&mut rx), vec![1]);
}

#[test]
fn buffered_messages_are_flushed_in_order_on_register() {
    let local = LocalTransport::new();
    for i in 0..10 {
        local.deliver(env("/later", i)).unwrap();
    }
    assert_eq!(local.pending_len("/later"), 10);
    let mut rx = local.register_unbounded("/later").unwrap();
    // Flushed before register returned, then new messages follow.
    assert_eq!(drain(&mut rx), (0..10).collect::<Vec<_>>());
    local.deliver(env("/later", 10)).unwrap();
    assert_eq!(drain(&mut rx), vec![10]);
    assert_eq!(local.stats().pending_messages, 0);
}

#[test]
fn full_buffer_drops_the_newest_with_a_dead_letter() {
    let local = LocalTransport::new(); // default max_pending_per_path = 64
    for i in 0..70 {
        local.deliver(env("/busy", i)).unwrap();
    }
    assert_eq!(local.pending_len("/busy"), 64);
    assert_eq!(local.dead_letters().count(DeadLetterReason::BufferFull), 6);
    let mut rx = local.register_unbounded("/busy").unwrap();
    assert_eq!(drain(&mut rx), (0..64).collect::<Vec<_>>());
}

#[test]
fn global_pending_cap_bounds_all_buffers() {
    let local = LocalTransport::builder()
        .max_pending_per_path(10)
        .max_pending_total(25)
        .build();
    for p in 0..5 {
        for i in 0..10 {
            local.deliver(env(&format!("/p{p}"), i)).unwrap();
        }
    }
    let stats = local.stats();
    assert_eq!(stats.pending_messages, 25);
    assert_eq!(
        local
            .dead_letters()
            .count(DeadLetterReason::PendingCapReached),
        25
    );
    // Registering one path frees its share of the cap.
    let mut rx = local.register_unbounded("/p0").unwrap();
    assert_eq!(drain(&mut rx).len(), 10);
    local.deliver(env("/p4", 99)).unwrap();
    assert_eq!(local.stats().pending_messages, 16);
}

#[test]
fn pending_messages_expire_after_the_ttl() {
    let clock = ManualClock::new();
    let local = LocalTransport::builder()
        .clock(clock.clone())
        .pending_ttl(Duration::from_secs(30))
        .build();
    local.deliver(env("/typo", 1)).unwrap();
    clock.advance(Duration::from_secs(20));
    local.deliver(env("/typo", 2)).unwrap();
    clock.advance(Duration::from_secs(11)); // message 1 is 31 s old, message 2 is 11 s old
    local.sweep();
    assert_eq!(
        local
            .dead_letters()
            .count(DeadLetterReason::UnknownPathExpired),
        1
    );
    assert_eq!(local.pending_len("/typo"), 1);
    let mut rx = local.register_unbounded("/typo").unwrap();
    assert_eq!(drain(&mut rx), vec![2]);
}

#[test]
fn expired_messages_are_not_flushed_even_before_a_sweep() {
    let clock = ManualClock::new();
    let local = LocalTransport::builder()
        .clock(clock.clone())
        .pending_ttl(Duration::from_secs(5))
        .sweep_interval(Duration::from_secs(3600))
        .build();
    local.deliver(env("/slow", 1)).unwrap();
    clock.advance(Duration::from_secs(6));
    let mut rx = local.register_unbounded("/slow").unwrap();
    assert!(drain(&mut rx).is_empty());
    assert_eq!(
        local
            .dead_letters()
            .count(DeadLetterReason::UnknownPathExpired),
        1
    );
}

#[test]
fn operations_sweep_expired_buffers_of_other_paths() {
    let clock = ManualClock::new();
    let local = LocalTransport::builder()
        .clock(clock.clone())
        .pending_ttl(Duration::from_secs(10))
        .build();
    for p in 0..20 {
        local.deliver(env(&format!("/gone{p}"), 0)).unwrap();
    }
    assert_eq!(local.stats().pending_paths, 20);
    clock.advance(Duration::from_secs(11));
    // Any operation reclaims memory once the sweep interval passed.
    local.deliver(env("/other", 0)).unwrap();
    let stats = local.stats();
    assert_eq!(stats.pending_paths, 1);
    assert_eq!(stats.pending_messages, 1);
    assert_eq!(
        local
            .dead_letters()
            .count(DeadLetterReason::UnknownPathExpired),
        20
    );
}

#[test]
fn unregister_marks_the_path_dead_and_drops_messages_to_it() {
    let local = LocalTransport::new();
    let _rx = local.register_unbounded("/actor").unwrap();
    assert!(local.unregister("/actor"));
    assert!(local.is_dead("/actor"));
    local.deliver(env("/actor", 1)).unwrap();
    assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 1);
    assert_eq!(local.pending_len("/actor"), 0, "dead paths do not buffer");
}

#[test]
fn unregister_drops_the_buffer_of_an_unknown_path() {
    let local = LocalTransport::new();
    local.deliver(env("/never", 1)).unwrap();
    local.deliver(env("/never", 2)).unwrap();
    assert!(!local.unregister("/never"));
    assert_eq!(local.pending_len("/never"), 0);
    assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 2);
    assert!(local.is_dead("/never"));
}

#[test]
fn register_revives_a_dead_path() {
    let local = LocalTransport::new();
    let _old = local.register_unbounded("/r").unwrap();
    local.unregister("/r");
    let mut rx = local.register_unbounded("/r").unwrap();
    assert!(!local.is_dead("/r"));
    local.deliver(env("/r", 5)).unwrap();
    assert_eq!(drain(&mut rx), vec![5]);
}

#[test]
fn tombstones_expire_after_their_ttl() {
    let clock = ManualClock::new();
    let local = LocalTransport::builder()
        .clock(clock.clone())
        .tombstone_ttl(Duration::from_secs(60))
        .build();
    local.unregister("/t");
    assert!(local.is_dead("/t"));
    clock.advance(Duration::from_secs(61));
    assert!(!local.is_dead("/t"));
    // No longer dead: the message is buffered like any unknown path's.
    local.deliver(env("/t", 1)).unwrap();
    assert_eq!(local.pending_len("/t"), 1);
    assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 0);
    local.sweep();
    assert_eq!(local.stats().tombstones, 0);
}

#[test]
fn tombstone_cap_forgets_the_oldest_first() {
    let local = LocalTransport::builder().max_tombstones(3).build();
    for p in ["/d0", "/d1", "/d2", "/d3", "/d4"] {
        local.unregister(p);
    }
    assert_eq!(local.stats().tombstones, 3);
    assert!(!local.is_dead("/d0"));
    assert!(!local.is_dead("/d1"));
    assert!(local.is_dead("/d2") && local.is_dead("/d3") && local.is_dead("/d4"));
}

#[test]
fn ask_style_churn_keeps_state_bounded() {
    // casty leaks one dead-set entry per ask; here the tombstones stay under the cap.
    let local = LocalTransport::builder().max_tombstones(100).build();
    for i in 0..20_000 {
        let path = format!("/_ask/{i:032x}");
        let _rx = local.register_unbounded(&path).unwrap();
        local.unregister(&path);
    }
    let stats = local.stats();
    assert_eq!(stats.tombstones, 100);
    assert_eq!(stats.registered, 0);
    assert_eq!(stats.pending_messages, 0);
}

#[test]
fn first_matching_path_factory_spawns_lazily_once() {
    let local = LocalTransport::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let second_calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = calls.clone();
    local.add_path_factory(PathMatcher::prefix("/_coord-"), move |path| {
        assert_eq!(path, "/_coord-orders");
        c.fetch_add(1, Ordering::SeqCst);
        Some(Handler::from_unbounded(tx.clone()))
    });
    let c2 = second_calls.clone();
    local.add_path_factory(PathMatcher::prefix("/_coord"), move |_| {
        c2.fetch_add(1, Ordering::SeqCst);
        None
    });
    for i in 0..5 {
        local.deliver(env("/_coord-orders", i)).unwrap();
    }
    assert_eq!(drain(&mut rx), vec![0, 1, 2, 3, 4]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(second_calls.load(Ordering::SeqCst), 0);
    assert!(local.is_registered("/_coord-orders"));
}

#[test]
fn predicate_factory_returning_none_leaves_the_message_buffered() {
    let local = LocalTransport::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    local.add_path_factory(
        PathMatcher::predicate(|p| p.ends_with("-lazy")),
        move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            None
        },
    );
    local.deliver(env("/x-lazy", 1)).unwrap();
    local.deliver(env("/not-matching", 1)).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(local.pending_len("/x-lazy"), 1);
    assert_eq!(local.pending_len("/not-matching"), 1);
}

#[test]
fn factories_are_not_consulted_for_dead_paths() {
    let local = LocalTransport::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    local.add_path_factory(PathMatcher::prefix("/"), move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        None
    });
    local.unregister("/dead");
    local.deliver(env("/dead", 1)).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 1);
}

#[test]
fn a_panicking_factory_does_not_poison_the_transport() {
    let local = LocalTransport::new();
    local.add_path_factory(PathMatcher::prefix("/boom"), |_| panic!("factory bug"));
    local.deliver(env("/boom", 1)).unwrap();
    assert_eq!(local.pending_len("/boom"), 1);
    let mut rx = local.register_unbounded("/boom").unwrap();
    assert_eq!(drain(&mut rx), vec![1]);
}

#[test]
fn factory_may_use_the_transport_without_deadlock() {
    let local = LocalTransport::new();
    let inner = local.clone();
    let (tx, mut rx) = mpsc::unbounded_channel();
    local.add_path_factory(PathMatcher::prefix("/spawn/"), move |path| {
        // Re-entrant use: a message to itself while being spawned is buffered and
        // flushed right after the returned handler is installed.
        inner.deliver(env(path, 100)).expect("deliver from factory");
        Some(Handler::from_unbounded(tx.clone()))
    });
    local.deliver(env("/spawn/a", 1)).unwrap();
    assert_eq!(drain(&mut rx), vec![100, 1]);
}

#[test]
fn duplicate_and_invalid_registrations_are_errors() {
    let local = LocalTransport::new();
    let _rx = local.register_unbounded("/dup").unwrap();
    match local.register_unbounded("/dup") {
        Err(TransportError::PathInUse { path }) => assert_eq!(path, "/dup"),
        other => panic!("expected PathInUse, got {other:?}"),
    }
    match local.register_unbounded("") {
        Err(e @ TransportError::InvalidPath { .. }) => {
            assert!(e.to_string().contains("empty"), "{e}")
        }
        other => panic!("expected InvalidPath, got {other:?}"),
    }
    assert!(matches!(
        local.register_unbounded("/bad\npath"),
        Err(TransportError::InvalidPath { .. })
    ));
}

#[test]
fn unroutable_target_is_refused_and_reported() {
    let local = LocalTransport::new();
    let err = local
        .deliver(Envelope::new("garbage-without-scheme", "", "t", &b""[..]))
        .unwrap_err();
    assert!(matches!(err, TransportError::InvalidTarget { .. }));
    assert!(err.to_string().contains("garbage-without-scheme"), "{err}");
    assert_eq!(local.dead_letters().count(DeadLetterReason::NoRoute), 1);
    // Still serving other paths.
    let mut rx = local.register_unbounded("/ok").unwrap();
    local.deliver(env("/ok", 1)).unwrap();
    assert_eq!(drain(&mut rx), vec![1]);
}

#[test]
fn full_mailbox_drops_with_a_dead_letter_and_recovers() {
    let local = LocalTransport::new();
    let mut rx = local.register_channel("/small", 2).unwrap();
    for i in 0..5 {
        local.deliver(env("/small", i)).unwrap();
    }
    assert_eq!(local.dead_letters().count(DeadLetterReason::MailboxFull), 3);
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(seq_of(&e));
    }
    assert_eq!(got, vec![0, 1]);
    local.deliver(env("/small", 5)).unwrap();
    assert_eq!(rx.try_recv().map(|e| seq_of(&e)).ok(), Some(5));
}

#[test]
fn dropped_receiver_unregisters_the_path() {
    let local = LocalTransport::new();
    let rx = local.register_channel("/gone", 4).unwrap();
    drop(rx);
    local.deliver(env("/gone", 1)).unwrap();
    assert_eq!(
        local.dead_letters().count(DeadLetterReason::MailboxClosed),
        1
    );
    assert!(!local.is_registered("/gone"));
    assert!(local.is_dead("/gone"));
    local.deliver(env("/gone", 2)).unwrap();
    assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 1);
}

#[test]
fn callback_handler_may_deliver_to_itself_in_order() {
    let local = LocalTransport::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, l) = (seen.clone(), local.clone());
    local
        .register_fn("/loop", move |e| {
            let n = seq_of(&e);
            s.lock().unwrap().push(n);
            if n < 5 {
                // Re-entrant delivery is queued and handled after this call returns.
                l.deliver(env("/loop", n + 1)).unwrap();
            }
        })
        .unwrap();
    local.deliver(env("/loop", 0)).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn panicking_callback_becomes_a_dead_letter_and_the_path_keeps_working() {
    let local = LocalTransport::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    local
        .register_fn("/fragile", move |e| {
            let n = seq_of(&e);
            if n == 1 {
                panic!("handler bug on message 1");
            }
            s.lock().unwrap().push(n);
        })
        .unwrap();
    for i in 0..3 {
        local.deliver(env("/fragile", i)).unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![0, 2]);
    assert_eq!(
        local
            .dead_letters()
            .count(DeadLetterReason::HandlerPanicked),
        1
    );
}

#[test]
fn concurrent_senders_racing_with_register_keep_per_sender_order() {
    let local = LocalTransport::builder()
        .max_pending_per_path(100_000)
        .max_pending_total(100_000)
        .build();
    const N: u64 = 5_000;
    let mut rx = None;
    std::thread::scope(|scope| {
        for s in 0..3u64 {
            let local = local.clone();
            scope.spawn(move || {
                for i in 0..N {
                    let e = Envelope::new(
                        "casty://t/race",
                        format!("sender-{s}"),
                        "t",
                        i.to_be_bytes().to_vec(),
                    );
                    local.deliver(e).unwrap();
                }
            });
        }
        // Register while the senders run: the flush must not be overtaken.
        rx = Some(local.register_unbounded("/race").unwrap());
    });
    let mut rx = rx.unwrap();
    let mut next = [0u64; 3];
    let mut total = 0;
    while let Ok(e) = rx.try_recv() {
        let s: usize = e.sender["sender-".len()..].parse().unwrap();
        assert_eq!(seq_of(&e), next[s], "sender {s} out of order");
        next[s] += 1;
        total += 1;
    }
    assert_eq!(total, 3 * N);
    assert_eq!(local.dead_letters().total(), 0);
}

#[tokio::test]
async fn wait_for_path_returns_at_once_when_registered() {
    let local = LocalTransport::new();
    let _rx = local.register_unbounded("/here").unwrap();
    local
        .wait_for_path("/here", Some(Duration::from_secs(5)))
        .await
        .unwrap();
}

#[tokio::test]
async fn wait_for_path_wakes_on_register() {
    let local = LocalTransport::new();
    let waiter = {
        let local = local.clone();
        tokio::spawn(async move { local.wait_for_path("/soon", None).await })
    };
    // Let the waiter park, then register.
    while local.stats().waiters == 0 {
        tokio::task::yield_now().await;
    }
    let _rx = local.register_unbounded("/soon").unwrap();
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("waiter woken")
        .unwrap()
        .unwrap();
    assert_eq!(local.stats().waiters, 0);
}

#[tokio::test]
async fn wait_for_path_timeout_names_the_path() {
    let local = LocalTransport::new();
    let err = local
        .wait_for_path("/never", Some(Duration::from_millis(20)))
        .await
        .unwrap_err();
    match &err {
        TransportError::WaitTimeout { path, timeout } => {
            assert_eq!(path, "/never");
            assert_eq!(*timeout, Duration::from_millis(20));
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(err.to_string().contains("/never"));
    assert_eq!(local.stats().waiters, 0, "timed-out waiter released");
}

#[tokio::test]
async fn wait_for_path_fails_on_shutdown() {
    let local = LocalTransport::new();
    let waiter = {
        let local = local.clone();
        tokio::spawn(async move { local.wait_for_path("/x", None).await })
    };
    while local.stats().waiters == 0 {
        tokio::task::yield_now().await;
    }
    local.shutdown().await;
    let res = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("waiter released")
        .unwrap();
    assert!(matches!(res, Err(TransportError::Shutdown)));
}

#[tokio::test]
async fn shutdown_refuses_messages_and_reports_pending_ones() {
    let local = LocalTransport::new();
    let mut rx = local.register_unbounded("/live").unwrap();
    local.deliver(env("/pending", 1)).unwrap();
    local.deliver(env("/pending", 2)).unwrap();
    local.shutdown().await;
    assert!(local.is_shut_down());
    assert_eq!(local.dead_letters().count(DeadLetterReason::Shutdown), 2);
    assert!(matches!(
        local.deliver(env("/live", 3)),
        Err(TransportError::Shutdown)
    ));
    assert_eq!(local.dead_letters().count(DeadLetterReason::Shutdown), 3);
    assert!(matches!(
        local.register_unbounded("/new"),
        Err(TransportError::Shutdown)
    ));
    // The handler was dropped: the mailbox is closed.
    assert!(rx.recv().await.is_none());
    // Idempotent.
    local.shutdown().await;
    assert_eq!(local.stats(), Default::default());
}

#[tokio::test]
async fn dead_letter_stream_reports_reason_and_envelope() {
    let local = LocalTransport::builder().max_pending_per_path(1).build();
    let mut stream = local.dead_letters().subscribe();
    local.deliver(env("/x", 1)).unwrap();
    local.deliver(env("/x", 2)).unwrap(); // buffer full
    local.unregister("/x"); // drops message 1
    local.deliver(env("/x", 3)).unwrap(); // dead path
    let mut got = Vec::new();
    for _ in 0..3 {
        let letter = stream.recv().await.unwrap();
        got.push((letter.reason, seq_of(&letter.envelope)));
    }
    assert_eq!(
        got,
        vec![
            (DeadLetterReason::BufferFull, 2),
            (DeadLetterReason::DeadPath, 1),
            (DeadLetterReason::DeadPath, 3)
        ]
    );
    let counts = local.dead_letters().counts();
    assert!(counts.contains(&(DeadLetterReason::DeadPath, 2)));
    assert!(counts.contains(&(DeadLetterReason::BufferFull, 1)));
    assert_eq!(local.dead_letters().total(), 3);
}

#[test]
fn transports_can_share_one_dead_letter_sink() {
    let sink = DeadLetters::new(8);
    let a = LocalTransport::builder().dead_letters(sink.clone()).build();
    let b = LocalTransport::builder().dead_letters(sink.clone()).build();
    a.unregister("/p");
    b.unregister("/p");
    a.deliver(env("/p", 1)).unwrap();
    b.deliver(env("/p", 1)).unwrap();
    assert_eq!(sink.count(DeadLetterReason::DeadPath), 2);
    assert!(a.dead_letters().same_sink(b.dead_letters()));
}

#[test]
fn dead_letter_reasons_have_stable_distinct_names() {
    let names: std::collections::HashSet<_> =
        DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), DeadLetterReason::ALL.len());
    assert_eq!(DeadLetterReason::BufferFull.to_string(), "buffer_full");
}

#[test]
fn counters_index_every_reason_separately() {
    let sink = DeadLetters::new(1);
    for (i, reason) in DeadLetterReason::ALL.iter().enumerate() {
        for _ in 0..=i {
            sink.publish(env("/c", 0), *reason);
        }
    }
    for (i, (reason, count)) in sink.counts().into_iter().enumerate() {
        assert_eq!(reason, DeadLetterReason::ALL[i]);
        assert_eq!(count, i as u64 + 1, "{reason}");
    }
    sink.record_without_envelope(DeadLetterReason::DecodeFailed, "garbage");
    assert_eq!(
        sink.count(DeadLetterReason::DecodeFailed),
        DeadLetterReason::ALL
            .iter()
            .position(|r| *r == DeadLetterReason::DecodeFailed)
            .unwrap() as u64
            + 2
    );
}

#[test]
fn undecodable_input_reaches_subscribers_with_its_bytes_bounded() {
    use herald_transport::UNDECODABLE_KEPT;
    let sink = DeadLetters::new(8);
    // Without subscribers it is only counted.
    sink.publish_undecodable(DeadLetterReason::DecodeFailed, b"xyz", "bad header");
    let mut sub = sink.subscribe();
    sink.publish_undecodable(DeadLetterReason::DecodeFailed, b"{nope", "bad header");
    let big = vec![7u8; UNDECODABLE_KEPT + 100];
    sink.publish_undecodable(DeadLetterReason::DecodeFailed, &big, "bad header");
    let small = sub.try_recv().expect("letter");
    assert_eq!(small.envelope.payload.as_ref(), b"{nope");
    assert!(small.envelope.target.is_empty());
    assert_eq!(small.detail.as_deref(), Some("bad header"));
    let cut = sub.try_recv().expect("letter");
    assert_eq!(cut.envelope.payload.len(), UNDECODABLE_KEPT);
    let detail = cut.detail.expect("detail");
    assert!(
        detail.contains(&format!("first {UNDECODABLE_KEPT} of {} bytes", big.len())),
        "{detail}"
    );
    assert_eq!(sink.count(DeadLetterReason::DecodeFailed), 3);
}

#[tokio::test]
async fn sweeper_task_expires_buffers_without_other_operations_and_stops_at_shutdown() {
    // A zero period is taken as the shortest one (it must not panic the sweeper).
    for every in [Duration::from_millis(1), Duration::ZERO] {
        let clock = ManualClock::new();
        let local = LocalTransport::builder()
            .clock(clock.clone())
            .pending_ttl(Duration::from_secs(10))
            .sweep_interval(every)
            .build();
        local.deliver(env("/forgotten", 1)).unwrap();
        let sweeper = local.spawn_sweeper();
        clock.advance(Duration::from_secs(11));
        // Bounded wait for the background sweep (no timing assertion).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while local
            .dead_letters()
            .count(DeadLetterReason::UnknownPathExpired)
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "sweeper never ran ({every:?})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(local.stats().pending_messages, 0);
        local.shutdown().await;
        tokio::time::timeout(Duration::from_secs(30), sweeper)
            .await
            .expect("sweeper stops after shutdown")
            .unwrap();
    }
}

#[test]
fn direct_mailbox_path_handles_full_and_closed_mailboxes() {
    // The allocation-free path of `deliver` (registered mailbox, nothing queued).
    let local = LocalTransport::new();
    let mut rx = local.register_channel("/direct", 1).unwrap();
    local.deliver(env("/direct", 1)).unwrap();
    local.deliver(env("/direct", 2)).unwrap();
    assert_eq!(local.dead_letters().count(DeadLetterReason::MailboxFull), 1);
    assert_eq!(rx.try_recv().map(|e| seq_of(&e)).ok(), Some(1));
    drop(rx);
    local.deliver(env("/direct", 3)).unwrap();
    assert_eq!(
        local.dead_letters().count(DeadLetterReason::MailboxClosed),
        1
    );
    assert!(local.is_dead("/direct"));
}
