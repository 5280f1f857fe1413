//! In-process broker semantics (below the mesh) and in-process-only proofs (broker
//! counters for exactly-once settlement).

// Test code: an unwrap that fails is the test's failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_mesh::backend::{
    Binding, Connection, ConsumeOptions, DeliveryStream, ExchangeKind, ExchangeSpec, QueueSpec,
    nuropb_exchanges,
};
use herald_mesh::example::ExampleService;
use herald_mesh::message::{
    DL_EXCHANGE, DeathReason, EVENTS_EXCHANGE, Envelope, EventBody, Headers, Message, MessageType,
    Payload, Properties, RPC_EXCHANGE, service_queue,
};
use herald_mesh::{InProcBroker, Mesh, MeshConfig, MeshError, RequestOptions};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn event(topic: &str, n: i64) -> Message {
    Message::from_envelope(Envelope::Event(EventBody {
        topic: topic.into(),
        event: json!(n),
        context: json!({}),
        trace_id: None,
        correlation_id: format!("c{n}"),
        target: serde_json::Value::Null,
    }))
}

fn raw(id: &str, body: &[u8]) -> Message {
    Message {
        properties: Properties::new(id.into()),
        headers: Headers::new(MessageType::Request, None),
        payload: Payload::Bytes(bytes::Bytes::copy_from_slice(body)),
        death: None,
    }
}

async fn setup(broker: &InProcBroker) -> herald_mesh::inproc::InProcConnection {
    let c = broker.open("test");
    for ex in nuropb_exchanges() {
        c.declare_exchange(&ex).await.unwrap();
    }
    c
}

async fn next(s: &mut DeliveryStream) -> herald_mesh::Delivery {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("delivery in time")
        .expect("stream open")
}

async fn nothing(s: &mut DeliveryStream) {
    assert!(
        tokio::time::timeout(Duration::from_millis(100), s.next())
            .await
            .is_err(),
        "unexpected delivery"
    );
}

fn q(name: &str, bindings: Vec<Binding>) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        durable: false,
        auto_delete: false,
        dead_letter_exchange: None,
        max_length: None,
        bindings,
    }
}

fn value_of(d: &herald_mesh::Delivery) -> serde_json::Value {
    match d.message.payload.envelope().unwrap().as_ref() {
        Envelope::Event(e) => e.event.clone(),
        other => panic!("not an event: {other:?}"),
    }
}

#[tokio::test]
async fn topic_fanout_direct_and_default_routing() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("star", vec![Binding::new(EVENTS_EXCHANGE, "a.*")]))
        .await
        .unwrap();
    c.declare_queue(&q(
        "hash",
        vec![
            Binding::new(EVENTS_EXCHANGE, "a.#"),
            Binding::new(EVENTS_EXCHANGE, "#"),
        ],
    ))
    .await
    .unwrap();
    c.declare_queue(&q("fan", vec![Binding::new(DL_EXCHANGE, "")]))
        .await
        .unwrap();
    c.declare_queue(&q("direct", vec![Binding::new(RPC_EXCHANGE, "svc")]))
        .await
        .unwrap();
    let mut star = c
        .consume("star", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    let mut hash = c
        .consume("hash", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    let mut fan = c
        .consume("fan", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    let mut direct = c
        .consume("direct", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    c.publish(EVENTS_EXCHANGE, "a.b.c", event("a.b.c", 1))
        .await
        .unwrap();
    c.publish(EVENTS_EXCHANGE, "a.b", event("a.b", 2))
        .await
        .unwrap();
    assert_eq!(value_of(&next(&mut star).await), json!(2));
    nothing(&mut star).await;
    // Bound twice (a.# and #): delivered once per message.
    assert_eq!(value_of(&next(&mut hash).await), json!(1));
    assert_eq!(value_of(&next(&mut hash).await), json!(2));
    nothing(&mut hash).await;
    c.publish(DL_EXCHANGE, "anything", event("x", 3))
        .await
        .unwrap();
    assert_eq!(value_of(&next(&mut fan).await), json!(3));
    c.publish(RPC_EXCHANGE, "other", event("x", 4))
        .await
        .unwrap();
    c.publish(RPC_EXCHANGE, "svc", event("x", 5)).await.unwrap();
    assert_eq!(value_of(&next(&mut direct).await), json!(5));
    nothing(&mut direct).await;
    c.publish("", "direct", event("x", 6)).await.unwrap();
    assert_eq!(value_of(&next(&mut direct).await), json!(6));
    assert!(matches!(
        c.publish("no-such-exchange", "k", event("x", 7)).await,
        Err(MeshError::NoSuchExchange { .. })
    ));
}

#[tokio::test]
async fn mandatory_unroutable_fails_and_plain_unroutable_is_dropped() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    let mut m = raw("m", b"{}");
    m.properties.mandatory = true;
    match c.publish(RPC_EXCHANGE, "nobody", m).await {
        Err(MeshError::Unroutable {
            exchange,
            routing_key,
        }) => {
            assert_eq!(
                (exchange.as_str(), routing_key.as_str()),
                (RPC_EXCHANGE, "nobody")
            );
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    c.publish(RPC_EXCHANGE, "nobody", raw("n", b"{}"))
        .await
        .unwrap();
    assert_eq!(broker.stats().unroutable, 2);
}

#[tokio::test]
async fn exclusive_consumers_are_refused_and_released() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("x", vec![])).await.unwrap();
    let first = c
        .consume("x", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    let other = broker.open("other");
    assert!(matches!(
        other
            .consume("x", ConsumeOptions::exclusive_auto_ack())
            .await,
        Err(MeshError::ExclusiveInUse { .. })
    ));
    assert!(matches!(
        other.consume("x", ConsumeOptions::manual(1)).await,
        Err(MeshError::ExclusiveInUse { .. })
    ));
    drop(first);
    assert_eq!(broker.consumer_count("x"), Some(0));
    let _again = other
        .consume("x", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    assert!(matches!(
        other.consume("nope", ConsumeOptions::manual(1)).await,
        Err(MeshError::NoSuchQueue { .. })
    ));
}

#[tokio::test]
async fn prefetch_limits_unsettled_deliveries() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("p", vec![])).await.unwrap();
    for i in 0..4 {
        c.publish("", "p", event("t", i)).await.unwrap();
    }
    let mut s = c.consume("p", ConsumeOptions::manual(2)).await.unwrap();
    let d0 = next(&mut s).await;
    let d1 = next(&mut s).await;
    nothing(&mut s).await;
    assert_eq!(broker.unacked("p"), Some(2));
    d0.ack().await.unwrap();
    let d2 = next(&mut s).await;
    assert_eq!(value_of(&d2), json!(2));
    d1.ack().await.unwrap();
    d2.ack().await.unwrap();
    let d3 = next(&mut s).await;
    d3.ack().await.unwrap();
    assert_eq!(broker.unacked("p"), Some(0));
    assert_eq!(broker.stats().acked, 4);
}

/// Records whether a waker was woken.
struct Woken(std::sync::atomic::AtomicBool);

impl futures::task::ArcWake for Woken {
    fn wake_by_ref(w: &Arc<Self>) {
        w.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Woken {
    fn new() -> Arc<Self> {
        Arc::new(Self(std::sync::atomic::AtomicBool::new(false)))
    }
    /// Whether it was woken since the last call.
    fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
    /// Polls `s` once with this waker.
    fn poll(
        self: &Arc<Self>,
        s: &mut DeliveryStream,
    ) -> std::task::Poll<Option<herald_mesh::Delivery>> {
        let waker = futures::task::waker(self.clone());
        s.poll_next_unpin(&mut std::task::Context::from_waker(&waker))
    }
}

/// A consumer that takes a message it was not woken for must give up its place among
/// the queue's waiters: the next message's wake-up goes to a consumer that waits,
/// not to one that sits at its prefetch limit.
#[tokio::test]
async fn a_consumer_that_took_a_message_does_not_swallow_the_next_wake_up() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("compete", vec![])).await.unwrap();
    let mut a = c
        .consume("compete", ConsumeOptions::manual(1))
        .await
        .unwrap();
    let mut b = c
        .consume("compete", ConsumeOptions::manual(1))
        .await
        .unwrap();
    let (wa, wb) = (Woken::new(), Woken::new());
    // Both wait on the empty queue, b first (so b is woken first).
    assert!(wb.poll(&mut b).is_pending());
    assert!(wa.poll(&mut a).is_pending());
    c.publish("", "compete", event("t", 1)).await.unwrap();
    assert!(wb.take(), "the oldest waiter is woken");
    // a takes the message anyway (it was polled for another reason); b finds nothing.
    let std::task::Poll::Ready(Some(d1)) = wa.poll(&mut a) else {
        panic!("a takes the first message")
    };
    assert_eq!(value_of(&d1), json!(1));
    assert!(wb.poll(&mut b).is_pending());
    // a is at its limit; the next message must wake b.
    c.publish("", "compete", event("t", 2)).await.unwrap();
    assert!(
        wb.take(),
        "the waiting consumer is woken for the next message"
    );
    assert!(!wa.take(), "the consumer at its limit is not");
    let std::task::Poll::Ready(Some(d2)) = wb.poll(&mut b) else {
        panic!("b takes the second message")
    };
    assert_eq!(value_of(&d2), json!(2));
    assert!(wa.poll(&mut a).is_pending(), "a is at its prefetch limit");
    d1.ack().await.unwrap();
    d2.ack().await.unwrap();
    assert_eq!(broker.unacked("compete"), Some(0));
}

/// Closing the connection ends a consumer that is waiting on an empty queue.
#[tokio::test]
async fn closing_the_connection_ends_a_waiting_consumer() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("idle", vec![])).await.unwrap();
    let mut s = c.consume("idle", ConsumeOptions::manual(4)).await.unwrap();
    let waiting = tokio::spawn(async move { s.next().await.is_none() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.close().await.unwrap();
    let ended = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("ends in time")
        .unwrap();
    assert!(ended, "a closed connection's consumer yields no delivery");
}

#[tokio::test]
async fn requeue_and_dropped_deliveries_come_back_redelivered() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("r", vec![])).await.unwrap();
    c.publish("", "r", event("t", 1)).await.unwrap();
    let mut s = c.consume("r", ConsumeOptions::manual(1)).await.unwrap();
    let d = next(&mut s).await;
    assert!(!d.redelivered);
    d.reject(true).await.unwrap();
    let d = next(&mut s).await;
    assert!(d.redelivered);
    assert_eq!(value_of(&d), json!(1));
    drop(d);
    let d = next(&mut s).await;
    assert!(d.redelivered);
    d.ack().await.unwrap();
    assert_eq!(broker.stats().requeued, 2);
    assert_eq!(broker.queue_len("r"), Some(0));
}

#[tokio::test]
async fn settling_after_the_connection_closed_requeues() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    c.declare_queue(&q("closed", vec![])).await.unwrap();
    c.publish("", "closed", event("t", 9)).await.unwrap();
    let worker = broker.open("worker");
    let mut s = worker
        .consume("closed", ConsumeOptions::manual(1))
        .await
        .unwrap();
    let d = next(&mut s).await;
    worker.close().await.unwrap();
    assert!(
        s.next().await.is_none(),
        "consumer ends with its connection"
    );
    assert!(matches!(d.ack().await, Err(MeshError::Disconnected)));
    assert_eq!(broker.queue_len("closed"), Some(1));
    assert!(matches!(
        worker.publish("", "closed", event("t", 1)).await,
        Err(MeshError::Disconnected)
    ));
}

#[tokio::test]
async fn reject_dead_letters_and_dead_letter_queues_are_bounded() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    let mut src = q("src", vec![Binding::new(RPC_EXCHANGE, "src")]);
    src.dead_letter_exchange = Some(DL_EXCHANGE.into());
    c.declare_queue(&src).await.unwrap();
    // A length bound of the broker itself (`max_length`); the mesh's dead-letter queues
    // have none and are trimmed by their service's leader instead.
    c.declare_queue(&QueueSpec {
        max_length: Some(3),
        ..QueueSpec::dead_letter("dlq")
    })
    .await
    .unwrap();
    for i in 0..5 {
        c.publish(RPC_EXCHANGE, "src", event("t", i)).await.unwrap();
    }
    let mut s = c.consume("src", ConsumeOptions::manual(10)).await.unwrap();
    for _ in 0..5 {
        next(&mut s).await.reject(false).await.unwrap();
    }
    assert_eq!(broker.queue_len("dlq"), Some(3));
    let st = broker.stats();
    assert_eq!((st.rejected, st.dead_lettered, st.overflowed), (5, 5, 2));
    let mut dl = c.consume("dlq", ConsumeOptions::manual(10)).await.unwrap();
    for want in 2..5 {
        let d = next(&mut dl).await;
        assert_eq!(
            value_of(&d),
            json!(want),
            "the newest dead letters are kept"
        );
        let death = d.message.death.clone().unwrap();
        assert_eq!(death.reason, DeathReason::Rejected);
        assert_eq!(
            (
                death.queue.as_str(),
                death.exchange.as_str(),
                death.routing_key.as_str()
            ),
            ("src", RPC_EXCHANGE, "src")
        );
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn ttl_expires_queued_messages_without_a_consumer() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    let mut src = q("ttl", vec![]);
    src.dead_letter_exchange = Some(DL_EXCHANGE.into());
    c.declare_queue(&src).await.unwrap();
    c.declare_queue(&QueueSpec::dead_letter("ttl-dl"))
        .await
        .unwrap();
    let mut m = event("t", 1);
    m.properties.expiration_ms = Some(30);
    c.publish("", "ttl", m).await.unwrap();
    c.publish("", "ttl", event("t", 2)).await.unwrap();
    let mut dl = c
        .consume("ttl-dl", ConsumeOptions::manual(10))
        .await
        .unwrap();
    let d = next(&mut dl).await;
    assert_eq!(
        d.message.death.as_ref().unwrap().reason,
        DeathReason::Expired
    );
    assert_eq!(d.message.properties.expiration_ms, None);
    assert_eq!(value_of(&d), json!(1));
    assert_eq!(
        broker.queue_len("ttl"),
        Some(1),
        "the message without ttl stays"
    );
    assert_eq!(broker.stats().expired, 1);
}

/// A requeued message keeps its expiry (as on RabbitMQ): a delivery taken and dropped
/// unsettled still expires and is dead-lettered with reason `expired`, rather than
/// living on without a ttl.
#[tokio::test]
async fn a_requeued_message_keeps_its_expiry() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    let mut src = q("requeue-ttl", vec![]);
    src.dead_letter_exchange = Some(DL_EXCHANGE.into());
    c.declare_queue(&src).await.unwrap();
    c.declare_queue(&QueueSpec::dead_letter("requeue-ttl-dl"))
        .await
        .unwrap();
    let mut m = event("t", 7);
    // Long enough for the first delivery to arrive before it expires on a loaded
    // machine; the requeued copy must then expire at the same instant.
    m.properties.expiration_ms = Some(1000);
    c.publish("", "requeue-ttl", m).await.unwrap();
    let mut s = c
        .consume("requeue-ttl", ConsumeOptions::manual(1))
        .await
        .unwrap();
    let d = next(&mut s).await;
    assert!(!d.redelivered);
    // No consumer is left to take it again; the dropped delivery is requeued.
    drop(s);
    drop(d);
    assert_eq!(broker.stats().requeued, 1);
    let mut dl = c
        .consume("requeue-ttl-dl", ConsumeOptions::manual(10))
        .await
        .unwrap();
    let d = next(&mut dl).await;
    assert_eq!(
        d.message.death.as_ref().unwrap().reason,
        DeathReason::Expired,
        "the requeued message expired"
    );
    assert_eq!(value_of(&d), json!(7));
    d.ack().await.unwrap();
    assert_eq!(broker.queue_len("requeue-ttl"), Some(0));
    assert_eq!(broker.stats().expired, 1);
}

#[tokio::test]
async fn auto_delete_queues_go_with_their_last_consumer() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    let spec = QueueSpec::subscription("sub", "a.#");
    c.declare_queue(&spec).await.unwrap();
    let s = c
        .consume("sub", ConsumeOptions::exclusive_auto_ack())
        .await
        .unwrap();
    assert!(broker.queue_names().contains(&"sub".to_string()));
    drop(s);
    assert!(!broker.queue_names().contains(&"sub".to_string()));
    // Its binding went with it: nothing routes there any more.
    c.publish(EVENTS_EXCHANGE, "a.b", event("a.b", 1))
        .await
        .unwrap();
    assert_eq!(broker.stats().unroutable, 1);
}

#[tokio::test]
async fn redeclaring_with_different_arguments_fails() {
    let broker = InProcBroker::new();
    let c = setup(&broker).await;
    let bad = ExchangeSpec {
        name: RPC_EXCHANGE.into(),
        kind: ExchangeKind::Topic,
        durable: true,
    };
    assert!(matches!(
        c.declare_exchange(&bad).await,
        Err(MeshError::PreconditionFailed {
            object: "exchange",
            ..
        })
    ));
    c.declare_queue(&QueueSpec::service("svc", &[]))
        .await
        .unwrap();
    c.declare_queue(&QueueSpec::service("svc", &["x.#".into()]))
        .await
        .unwrap();
    let mut other = QueueSpec::service("svc", &[]);
    other.durable = false;
    assert!(matches!(
        c.declare_queue(&other).await,
        Err(MeshError::PreconditionFailed {
            object: "queue",
            ..
        })
    ));
    assert!(matches!(
        c.declare_queue(&q("y", vec![Binding::new("missing", "k")]))
            .await,
        Err(MeshError::NoSuchExchange { .. })
    ));
}

#[tokio::test]
async fn leader_lock_is_released_with_the_connection() {
    let broker = InProcBroker::new();
    let a = broker.open("a");
    let b = broker.open("b");
    assert!(a.try_lead("svc").await.unwrap());
    assert!(a.try_lead("svc").await.unwrap());
    assert!(!b.try_lead("svc").await.unwrap());
    assert!(b.try_lead("other").await.unwrap());
    drop(a);
    assert!(b.try_lead("svc").await.unwrap());
    b.close().await.unwrap();
    assert!(matches!(
        b.try_lead("svc").await,
        Err(MeshError::Disconnected)
    ));
}

/// Broker counters prove exactly one settlement per delivery through the mesh (a second
/// settlement cannot be expressed: `ack` and `reject` consume the delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_settles_every_delivery_exactly_once() {
    let broker = InProcBroker::new();
    let b: Arc<dyn herald_mesh::Backend> = Arc::new(broker.clone());
    let svc = Mesh::connect(
        b.clone(),
        MeshConfig::service("once", ExampleService::new()),
    )
    .await
    .unwrap();
    let client = Mesh::connect(b.clone(), MeshConfig::client())
        .await
        .unwrap();
    let probe = broker.open("probe");
    let before = broker.stats();
    let (mut ok, mut failed, mut commands, mut poison) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..30i64 {
        client
            .request(
                "once",
                "add",
                json!({"a": i, "b": 1}),
                json!({}),
                None,
                None,
            )
            .await
            .unwrap();
        ok += 1;
        assert!(
            client
                .request(
                    "once",
                    "fail",
                    json!({"message": "m"}),
                    json!({}),
                    None,
                    None
                )
                .await
                .is_err()
        );
        failed += 1;
        client
            .command("once", "echo", json!({}), RequestOptions::default())
            .await
            .unwrap();
        commands += 1;
        if i % 10 == 0 {
            probe
                .publish(RPC_EXCHANGE, "once", raw("bad", b"\x00not json"))
                .await
                .unwrap();
            poison += 1;
        }
    }
    let q = service_queue("once");
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.queue_len(&q) != Some(0) || broker.unacked(&q) != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "service queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = broker.stats();
    assert_eq!(after.acked - before.acked, ok + failed + commands);
    assert_eq!(after.rejected - before.rejected, poison);
    assert_eq!(after.requeued, 0);
    assert_eq!(broker.queue_len("nuropb-once-dl"), Some(poison as usize));
    client.disconnect().await.unwrap();
    svc.disconnect().await.unwrap();
}

/// nuropb parity option: failed requests are dead-lettered too (reason rejected).
#[tokio::test]
async fn dead_letter_failed_option() {
    let broker = InProcBroker::new();
    let b: Arc<dyn herald_mesh::Backend> = Arc::new(broker.clone());
    let svc = Mesh::connect(
        b.clone(),
        MeshConfig::service("parity", ExampleService::new()).dead_letter_failed(true),
    )
    .await
    .unwrap();
    let client = Mesh::connect(b, MeshConfig::client()).await.unwrap();
    assert!(matches!(
        client
            .request(
                "parity",
                "fail",
                json!({"message": "m", "kind": "handling"}),
                json!({}),
                None,
                None
            )
            .await,
        Err(MeshError::Handling { .. })
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.queue_len("nuropb-parity-dl") != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failed request never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.disconnect().await.unwrap();
    svc.disconnect().await.unwrap();
}

/// Dropping every handle (without disconnect) stops the instance: leadership and the
/// service's consumer go away.
#[tokio::test]
async fn dropping_the_last_handle_stops_the_instance() {
    let broker = InProcBroker::new();
    let b: Arc<dyn herald_mesh::Backend> = Arc::new(broker.clone());
    let cfg = || {
        MeshConfig::service("dropper", ExampleService::new())
            .leader_interval(Duration::from_millis(20))
    };
    let first = Mesh::connect(b.clone(), cfg()).await.unwrap();
    let second = Mesh::connect(b.clone(), cfg()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(first.is_leader() ^ second.is_leader()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (leader, follower) = if first.is_leader() {
        (first, second)
    } else {
        (second, first)
    };
    let copy = leader.clone();
    drop(leader);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!follower.is_leader(), "a clone still holds the instance");
    drop(copy);
    while !follower.is_leader() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership never moved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while broker.consumer_count(&service_queue("dropper")) != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dropped consumer still registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    follower.disconnect().await.unwrap();
}

/// Event handlers are awaited; a failing one dead-letters its event (reason
/// `rejected`) and the service keeps handling events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_event_handlers_dead_letter_the_event() {
    use herald_mesh::ServiceError;
    use herald_mesh::service::ServiceRouter;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let broker = InProcBroker::new();
    let b: Arc<dyn herald_mesh::Backend> = Arc::new(broker.clone());
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let router = ServiceRouter::new("1", "events").on_event("jobs.*", move |ev| {
        let h = h.clone();
        async move {
            // Awaited: the counter moves only after the await.
            tokio::task::yield_now().await;
            h.fetch_add(1, Ordering::SeqCst);
            if ev.event == json!("bad") {
                Err(ServiceError::handling("cannot handle a bad job"))
            } else {
                Ok(())
            }
        }
    });
    let svc = Mesh::connect(b.clone(), MeshConfig::service("evsvc", router))
        .await
        .unwrap();
    let client = Mesh::connect(b, MeshConfig::client()).await.unwrap();
    for e in [json!("ok"), json!("bad"), json!("ok")] {
        client
            .publish_event("jobs.run", e, json!({}), None)
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while handled.load(Ordering::SeqCst) < 3 || broker.queue_len("nuropb-evsvc-dl") != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not all handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probe = broker.open("probe");
    let mut dl = probe
        .consume("nuropb-evsvc-dl", ConsumeOptions::manual(1))
        .await
        .unwrap();
    let d = next(&mut dl).await;
    assert_eq!(
        d.message.death.as_ref().unwrap().reason,
        DeathReason::Rejected
    );
    assert_eq!(value_of(&d), json!("bad"));
    d.ack().await.unwrap();
    client.disconnect().await.unwrap();
    svc.disconnect().await.unwrap();
}
