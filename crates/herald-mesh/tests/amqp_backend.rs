//! The RabbitMQ backend against a real broker (`HERALD_AMQP_URL`): topology exactly as
//! nuropb declares it, publisher confirms and unroutable requests, exclusive consumers,
//! leadership, dead-lettering with a reason, requeue of unsettled deliveries, and
//! reconnect with re-declared topology and restarted consumers.
//!
//! Skipped (with the reason printed) when no broker is configured.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_mesh::amqp::{AmqpBackend, AmqpConnection, AmqpOptions};
use herald_mesh::backend::{
    Backend, Connection, ConsumeOptions, DeliveryStream, QueueSpec, nuropb_exchanges,
};
use herald_mesh::example::ExampleService;
use herald_mesh::message::{
    DL_EXCHANGE, DeathReason, Envelope, Headers, Message, MessageType, Payload, Properties,
    RPC_EXCHANGE, RequestBody, ResponseBody, dead_letter_queue, service_queue,
};
use herald_mesh::{Delivery, Mesh, MeshConfig, MeshError};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};

const WAIT: Duration = Duration::from_secs(20);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A client-only mesh handle on its own connection.
async fn amqp_client(url: &str) -> Mesh {
    Mesh::connect(
        Arc::new(AmqpBackend::new(url).expect("url")),
        MeshConfig::client(),
    )
    .await
    .expect("client")
}

/// `add(a, 1)` on `service` through `client`.
async fn add_on(client: &Mesh, service: &str, a: i64) -> Result<serde_json::Value, MeshError> {
    client
        .request(
            service,
            "add",
            serde_json::json!({"a": a, "b": 1}),
            serde_json::json!({}),
            Some(WAIT),
            None,
        )
        .await
}

async fn connect(url: &str) -> AmqpConnection {
    AmqpConnection::open(url, "herald-test", AmqpOptions::default())
        .await
        .expect("connect to RabbitMQ")
}

fn request(service: &str, cid: &str) -> Message {
    let mut m = Message::from_envelope(Envelope::Request(RequestBody {
        service: service.into(),
        method: "add".into(),
        params: serde_json::Map::new(),
        correlation_id: cid.into(),
        context: serde_json::json!({}),
        trace_id: None,
    }));
    m.properties.mandatory = true;
    m
}

async fn next(stream: &mut DeliveryStream) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a delivery within the wait")
        .expect("stream still open")
}

/// The next `n` dead letters from `queue` read (and acked) from the dead-letter queue
/// stream `dl`, as (correlation id, reason); each must be a reject (`x-death` reason
/// `rejected`). Dead letters of other queues are skipped: the dead-letter exchange is a
/// fanout shared by every service.
async fn dead_letters_from(
    dl: &mut DeliveryStream,
    queue: &str,
    n: usize,
) -> Vec<(String, Option<String>)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (m, settle) = next(dl).await.into_parts();
        settle.ack().await.expect("ack dead letter");
        let Some(death) = m.death.filter(|d| d.queue == queue) else {
            continue;
        };
        assert_eq!(death.reason, DeathReason::Rejected);
        out.push((m.properties.correlation_id, death.detail));
    }
    out
}

async fn service_topology(conn: &AmqpConnection, service: &str) -> QueueSpec {
    for x in nuropb_exchanges() {
        conn.declare_exchange(&x).await.expect("declare exchange");
    }
    let sq = QueueSpec::service(service, &[]);
    conn.declare_queue(&sq)
        .await
        .expect("declare service queue");
    sq
}

#[tokio::test]
async fn topology_matches_nuropb_declarations_exactly() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    let service = unique("topo");
    let sq = service_topology(&conn, &service).await;
    // Declaring twice is idempotent.
    conn.declare_queue(&sq).await.expect("re-declare");

    // nuropb's own declaration (pika: durable, x-dead-letter-exchange as a long string)
    // must be accepted by the broker, i.e. Herald's arguments are equivalent (no 406).
    let raw = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("raw connect");
    let ch = raw.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("nuropb-dl-exchange")),
    );
    ch.queue_declare(
        service_queue(&service).as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("nuropb's exact declaration matches Herald's");
    // A different argument set is refused, proving the check is real.
    let ch2 = raw.create_channel().await.expect("channel");
    let err = ch2
        .queue_declare(
            service_queue(&service).as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("missing x-dead-letter-exchange must be a 406");
    assert!(err.to_string().contains("PRECONDITION"), "{err}");
    let _ = raw.close(200, "bye".into()).await;

    conn.delete_queue(&service_queue(&service))
        .await
        .expect("cleanup");
    conn.close().await.expect("close");
}

/// Unroutable mandatory publishes are `Unroutable` errors and routed ones succeed
/// (published unconfirmed: returns matched by correlation id, else a channel round trip).
#[tokio::test]
async fn unroutable_mandatory_publish_is_an_error_and_routed_one_is_confirmed() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    let service = unique("route");
    for x in nuropb_exchanges() {
        conn.declare_exchange(&x).await.expect("declare exchange");
    }
    // As Herald's requests: a reply_to and a correlation id (no reply ever comes here,
    // so the publish must decide without one).
    let with_reply_to = |cid: &str| {
        let mut m = request(&service, cid);
        m.properties.reply_to = Some("nuropb-nobody-rq".into());
        m
    };
    let err = conn
        .publish(RPC_EXCHANGE, &service, request(&service, "c1"))
        .await
        .expect_err("no queue is bound");
    assert!(
        matches!(&err, MeshError::Unroutable { routing_key, .. } if *routing_key == service),
        "{err:?}"
    );
    let err = conn
        .publish(RPC_EXCHANGE, &service, with_reply_to("c1b"))
        .await
        .expect_err("no queue is bound");
    assert!(matches!(&err, MeshError::Unroutable { .. }), "{err:?}");
    // Without a correlation id to match the return with.
    let err = conn
        .publish(RPC_EXCHANGE, &service, request(&service, ""))
        .await
        .expect_err("no queue is bound");
    assert!(matches!(&err, MeshError::Unroutable { .. }), "{err:?}");
    let sq = service_topology(&conn, &service).await;
    conn.publish(RPC_EXCHANGE, &service, request(&service, "c2"))
        .await
        .expect("routed");
    conn.publish(RPC_EXCHANGE, &service, with_reply_to("c3"))
        .await
        .expect("routed, without a reply");
    let mut stream = conn
        .consume(&sq.name, ConsumeOptions::manual(4))
        .await
        .expect("consume");
    for cid in ["c2", "c3"] {
        let d = next(&mut stream).await;
        assert_eq!(d.message.properties.correlation_id, cid);
        assert_eq!(
            d.message.payload.envelope().expect("json").correlation_id(),
            cid
        );
        d.ack().await.expect("ack");
    }
    conn.delete_queue(&sq.name).await.expect("cleanup");
    conn.close().await.expect("close");
}

/// Many requests at once, half of them to services that do not exist: each caller
/// gets its own outcome (the broker's returns are matched to their requests by
/// correlation id; lapin's publisher confirms attach a return to whichever confirm
/// they complete next, which failed this test when Herald relied on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_outcome() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    for round in 0..2 {
        let backend = Arc::new(AmqpBackend::new(&url).expect("url"));
        let name = unique("many");
        let service = Mesh::connect(
            backend.clone(),
            MeshConfig::service(&name, ExampleService::new()),
        )
        .await
        .expect("service");
        let client = Mesh::connect(backend, MeshConfig::client())
            .await
            .expect("client");
        let calls = (0..40u64).map(|i| {
            let client = client.clone();
            let target = if i % 2 == 0 {
                name.clone()
            } else {
                unique("missing")
            };
            async move {
                let r = client
                    .request(
                        &target,
                        "add",
                        serde_json::json!({"a": i, "b": 1}),
                        serde_json::json!({}),
                        Some(WAIT),
                        None,
                    )
                    .await;
                (i, r)
            }
        });
        for (i, r) in futures::future::join_all(calls).await {
            if i % 2 == 0 {
                match r {
                    Ok(v) => assert_eq!(v, serde_json::json!(i + 1)),
                    Err(e) => panic!("call {i} (round {round}): {e:?}"),
                }
            } else {
                assert!(
                    matches!(&r, Err(MeshError::NotFound { method, .. }) if method == "add"),
                    "call {i} (round {round}): {r:?}"
                );
            }
        }
        service.disconnect().await.expect("disconnect");
        client.disconnect().await.expect("disconnect");
        let conn = connect(&url).await;
        for q in [service_queue(&name), dead_letter_queue(&name)] {
            conn.delete_queue(&q).await.expect("cleanup");
        }
        conn.close().await.expect("close");
    }
}

#[tokio::test]
async fn exclusive_consumer_refuses_a_second_one() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let a = connect(&url).await;
    let b = connect(&url).await;
    let rq = unique("nuropb-excl") + "-rq";
    a.declare_queue(&QueueSpec::response(rq.clone()))
        .await
        .expect("declare");
    let _first = a
        .consume(&rq, ConsumeOptions::exclusive_auto_ack())
        .await
        .expect("first consumer");
    b.declare_queue(&QueueSpec::response(rq.clone()))
        .await
        .expect("declare again");
    let Err(err) = b.consume(&rq, ConsumeOptions::exclusive_auto_ack()).await else {
        panic!("a second exclusive consumer was accepted");
    };
    assert!(
        matches!(&err, MeshError::ExclusiveInUse { queue } if *queue == rq),
        "{err:?}"
    );
    // b's connection is still usable after the refused consume.
    b.declare_queue(&QueueSpec::response(rq.clone()))
        .await
        .expect("b still works");
    a.close().await.expect("close");
    b.close().await.expect("close");
}

#[tokio::test]
async fn leadership_is_held_by_one_connection_and_moves_when_it_closes() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let backend = Arc::new(AmqpBackend::new(&url).expect("url"));
    let service = unique("lead");
    let a = backend.connect("a").await.expect("a");
    let b = backend.connect("b").await.expect("b");
    assert!(a.try_lead(&service).await.expect("a tries"));
    assert!(
        a.try_lead(&service).await.expect("a confirms"),
        "re-check keeps it"
    );
    assert!(!b.try_lead(&service).await.expect("b tries"));
    assert!(!b.try_lead(&service).await.expect("b tries again"));
    a.close().await.expect("close a");
    let mut took = false;
    for _ in 0..100 {
        if b.try_lead(&service).await.expect("b polls") {
            took = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(took, "leadership moved to b after a closed");
    b.close().await.expect("close b");
}

#[tokio::test]
async fn rejected_and_expired_messages_are_dead_lettered_with_a_reason() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    let service = unique("dlx");
    let sq = service_topology(&conn, &service).await;
    let dlq = QueueSpec::dead_letter(dead_letter_queue(&service));
    conn.declare_queue(&dlq).await.expect("declare DLQ");
    let mut dl = conn
        .consume(&dlq.name, ConsumeOptions::manual(10))
        .await
        .expect("consume DLQ");

    // Rejected.
    conn.publish(RPC_EXCHANGE, &service, request(&service, "rej"))
        .await
        .expect("publish");
    let mut sq_stream = conn
        .consume(&sq.name, ConsumeOptions::manual(1))
        .await
        .expect("consume sq");
    next(&mut sq_stream)
        .await
        .reject(false)
        .await
        .expect("reject");
    // The DLX is a fanout shared by every service: skip other services' dead letters.
    let dead = loop {
        let d = next(&mut dl).await;
        let mine = d.message.properties.correlation_id == "rej";
        let msg = d.message.clone();
        d.ack().await.expect("ack");
        if mine {
            break msg;
        }
    };
    let death = dead.death.expect("x-death headers");
    assert_eq!(death.reason, DeathReason::Rejected);
    assert_eq!(death.queue, sq.name);
    assert_eq!(death.exchange, RPC_EXCHANGE);
    assert_eq!(death.routing_key, service);
    drop(sq_stream);

    // Expired while queued (no consumer on the service queue any more).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut m = request(&service, "exp");
    m.properties.expiration_ms = Some(50);
    conn.publish(RPC_EXCHANGE, &service, m)
        .await
        .expect("publish");
    let dead = loop {
        let d = next(&mut dl).await;
        let mine = d.message.properties.correlation_id == "exp";
        let msg = d.message.clone();
        d.ack().await.expect("ack");
        if mine {
            break msg;
        }
    };
    assert_eq!(dead.death.expect("death").reason, DeathReason::Expired);
    assert_eq!(DL_EXCHANGE, "nuropb-dl-exchange");

    conn.delete_queue(&sq.name).await.expect("cleanup");
    conn.delete_queue(&dlq.name).await.expect("cleanup");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn dropped_unsettled_delivery_is_requeued_and_redelivered() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    let service = unique("requeue");
    let sq = service_topology(&conn, &service).await;
    conn.publish(RPC_EXCHANGE, &service, request(&service, "r1"))
        .await
        .expect("publish");
    let mut stream = conn
        .consume(&sq.name, ConsumeOptions::manual(1))
        .await
        .expect("consume");
    let first = next(&mut stream).await;
    assert!(!first.redelivered);
    drop(first);
    let again = next(&mut stream).await;
    assert_eq!(again.message.properties.correlation_id, "r1");
    assert!(again.redelivered, "the broker marks it redelivered");
    again.ack().await.expect("ack");
    conn.delete_queue(&sq.name).await.expect("cleanup");
    conn.close().await.expect("close");
}

/// An ack that returned `Ok` is never undone by closing its channel or connection right
/// after: lapin runs acks and closes as tasks of their own, so a close could overtake
/// acks handed over before it and the broker would redeliver those messages. Each
/// round acks a burst of deliveries and drops the stream at once (or closes the whole
/// connection), then counts what the queue still holds: exactly the unacked ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_deliveries_stay_acked_when_the_stream_or_connection_closes_right_after() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let admin = connect(&url).await;
    let service = unique("ackclose");
    let sq = service_topology(&admin, &service).await;
    const SENT: usize = 200;
    const ACKED: usize = 120;
    for round in 0..6 {
        for i in 0..SENT {
            admin
                .publish(
                    RPC_EXCHANGE,
                    &service,
                    request(&service, &format!("m{round}-{i}")),
                )
                .await
                .expect("publish");
        }
        // Odd rounds close the whole connection instead of only the stream.
        let conn = connect(&url).await;
        let mut stream = conn
            .consume(&sq.name, ConsumeOptions::manual(SENT as u16))
            .await
            .expect("consume");
        for _ in 0..ACKED {
            next(&mut stream).await.ack().await.expect("ack");
        }
        drop(stream);
        if round % 2 == 1 {
            conn.close().await.expect("close");
        }
        // What is left: every message not acked, none of the acked ones.
        let mut rest = admin
            .consume(&sq.name, ConsumeOptions::manual(SENT as u16))
            .await
            .expect("consume the rest");
        let mut left = 0;
        while left < SENT - ACKED {
            next(&mut rest).await.ack().await.expect("ack the rest");
            left += 1;
        }
        // Then any acked one that came back.
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), rest.next()).await {
            left += 1;
            d.ack().await.expect("ack the rest");
        }
        drop(rest);
        assert_eq!(
            left,
            SENT - ACKED,
            "round {round}: {} acked deliveries came back",
            left.saturating_sub(SENT - ACKED)
        );
        if round % 2 == 0 {
            conn.close().await.expect("close");
        }
    }
    admin.delete_queue(&sq.name).await.expect("cleanup");
    admin.close().await.expect("close");
}

#[tokio::test]
async fn a_forgotten_queue_is_not_re_declared_after_a_reconnect() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    // Two auto-delete subscription queues; the consumer of the first is dropped and
    // the queue forgotten (what dropping an `EventSubscription` does).
    let gone = unique("nuropb-forget") + "-ev0";
    let kept = unique("nuropb-forget") + "-ev1";
    for x in nuropb_exchanges() {
        conn.declare_exchange(&x).await.expect("declare exchange");
    }
    for q in [&gone, &kept] {
        conn.declare_queue(&QueueSpec::subscription(q.clone(), "forget.#"))
            .await
            .expect("declare");
    }
    let dropped = conn
        .consume(&gone, ConsumeOptions::exclusive_auto_ack())
        .await
        .expect("consume");
    let mut kept_stream = conn
        .consume(&kept, ConsumeOptions::exclusive_auto_ack())
        .await
        .expect("consume");
    drop(dropped);
    conn.forget_queue(&gone);
    conn.simulate_connection_loss().await;
    // After the reconnect, the kept queue is back (its consumer restarted) and the
    // forgotten one is not: a mandatory message to it is unroutable.
    let routed = |q: String| {
        let conn = &conn;
        async move {
            let mut m = request("forget", "probe");
            m.properties.mandatory = true;
            match conn.publish("", &q, m).await {
                Ok(()) => true,
                Err(MeshError::Unroutable { .. }) => false,
                Err(e) => panic!("publish to {q}: {e}"),
            }
        }
    };
    let mut kept_back = false;
    for _ in 0..50 {
        if routed(kept.clone()).await {
            kept_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kept_back, "the kept queue was re-declared");
    assert!(conn.generation() >= 2, "a new connection was made");
    let got = tokio::time::timeout(Duration::from_secs(10), kept_stream.next())
        .await
        .expect("the kept consumer restarted");
    assert!(got.is_some());
    assert!(!routed(gone.clone()).await, "the forgotten queue came back");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn reconnect_redeclares_topology_and_restarts_consumers() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    let service = unique("reconnect");
    let sq = service_topology(&conn, &service).await;
    let rq = unique("nuropb-reconnect") + "-rq";
    conn.declare_queue(&QueueSpec::response(rq.clone()))
        .await
        .expect("declare rq");
    let mut replies = conn
        .consume(&rq, ConsumeOptions::exclusive_auto_ack())
        .await
        .expect("consume rq");
    let mut requests = conn
        .consume(&sq.name, ConsumeOptions::manual(4))
        .await
        .expect("consume sq");
    assert_eq!(conn.generation(), 1);

    conn.simulate_connection_loss().await;
    // The auto-delete response queue died with the connection; the next operation
    // reconnects, re-declares it and the consumers come back.
    conn.publish(RPC_EXCHANGE, &service, request(&service, "after"))
        .await
        .expect("publish after reconnect");
    assert!(conn.generation() >= 2, "a new connection was made");
    let d = next(&mut requests).await;
    assert_eq!(d.message.properties.correlation_id, "after");
    d.ack().await.expect("ack on the new channel");

    // The re-created response queue receives through the restarted exclusive consumer.
    let mut got = None;
    for _ in 0..50 {
        let mut m = request(&service, "reply");
        m.properties.mandatory = true;
        match conn.publish("", &rq, m).await {
            Ok(()) => {
                if let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(500), replies.next()).await
                {
                    got = Some(d);
                    break;
                }
            }
            Err(MeshError::Unroutable { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("publish to response queue: {e}"),
        }
    }
    let got = got.expect("a reply through the restarted consumer");
    assert_eq!(got.message.properties.correlation_id, "reply");

    conn.delete_queue(&sq.name).await.expect("cleanup");
    conn.close().await.expect("close");
    assert!(!conn.is_open());
    assert!(matches!(
        conn.publish(RPC_EXCHANGE, &service, request(&service, "x"))
            .await,
        Err(MeshError::Disconnected)
    ));
}

#[tokio::test]
async fn unreachable_broker_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let backend = AmqpBackend::new("amqp://guest:secret@127.0.0.1:1/%2f").expect("valid url");
    let err = backend.connect("x").await.expect_err("nothing listens");
    let text = err.to_string();
    assert!(
        text.contains("cannot connect to amqp://guest:***@127.0.0.1:1"),
        "{text}"
    );
    assert!(!text.contains("secret"), "password leaked: {text}");
}

/// Hands out `AmqpConnection`s and keeps a handle on each, so a test can cut them.
#[derive(Debug)]
struct Recording {
    inner: AmqpBackend,
    made: std::sync::Mutex<Vec<AmqpConnection>>,
}

impl Backend for Recording {
    fn name(&self) -> &'static str {
        "amqp"
    }
    fn mesh_name(&self) -> &str {
        self.inner.mesh_name()
    }
    fn connect<'a>(
        &'a self,
        client_name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Arc<dyn Connection>, MeshError>> {
        Box::pin(async move {
            let conn =
                AmqpConnection::open(self.inner.url(), client_name, AmqpOptions::default()).await?;
            self.made.lock().expect("lock").push(conn.clone());
            Ok(Arc::new(conn) as Arc<dyn Connection>)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_keeps_serving_and_leading_across_a_connection_loss() {
    use herald_mesh::example::ExampleService;
    use herald_mesh::{Mesh, MeshConfig};
    use serde_json::json;

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let recording = Arc::new(Recording {
        inner: AmqpBackend::new(&url).expect("url"),
        made: std::sync::Mutex::new(Vec::new()),
    });
    let name = unique("survive");
    let service = Mesh::connect(
        recording.clone(),
        MeshConfig::service(&name, ExampleService::new()),
    )
    .await
    .expect("service");
    let client = amqp_client(&url).await;
    let add = |a: i64| add_on(&client, &name, a);
    assert_eq!(add(1).await.expect("before"), json!(2));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !service.is_leader() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let conn = recording.made.lock().expect("lock")[0].clone();
    conn.simulate_connection_loss().await;
    // The request waits in the durable service queue until the service is back.
    assert_eq!(add(41).await.expect("after the loss"), json!(42));
    assert!(conn.generation() >= 2, "the service reconnected");
    // Leadership is re-acquired on the new connection (the old exclusive queue died).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if service.is_leader() && conn.try_lead(&name).await.expect("try_lead") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership not regained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    client.disconnect().await.expect("disconnect");
    service.disconnect().await.expect("disconnect");
    let admin = connect(&url).await;
    admin
        .delete_queue(&service_queue(&name))
        .await
        .expect("cleanup");
    admin
        .delete_queue(&dead_letter_queue(&name))
        .await
        .expect("cleanup");
    admin.close().await.expect("close");
}

/// Upgrading: a dead-letter queue left by an older Herald, declared with
/// `x-max-length` (which nuropb's declaration, and now Herald's, do not have), does not
/// stop a service from starting, serving, or coming back after a connection loss (its
/// declaration is refused with 406, and the queue is used as it is, with a warning);
/// the leader still trims it to the service's own bound, below the queue's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_bounded_dead_letter_queue_does_not_break_a_service_and_is_still_trimmed() {
    use herald_mesh::example::ExampleService;
    use herald_mesh::{Mesh, MeshConfig};
    use serde_json::json;

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let admin = connect(&url).await;
    for x in nuropb_exchanges() {
        admin.declare_exchange(&x).await.expect("declare exchange");
    }
    let name = unique("olddl");
    let dlq = dead_letter_queue(&name);
    // What an older Herald declared.
    admin
        .declare_queue(&QueueSpec {
            max_length: Some(50),
            ..QueueSpec::dead_letter(dlq.clone())
        })
        .await
        .expect("declare the old dead-letter queue");

    let recording = Arc::new(Recording {
        inner: AmqpBackend::new(&url).expect("url"),
        made: std::sync::Mutex::new(Vec::new()),
    });
    let service = Mesh::connect(
        recording.clone(),
        MeshConfig::service(&name, ExampleService::new())
            .leader_interval(Duration::from_millis(50))
            .dead_letter_max(3)
            .dead_letter_trim_interval(Duration::from_millis(50)),
    )
    .await
    .expect("the service starts with the old dead-letter queue");
    let client = amqp_client(&url).await;
    let add = |a: i64| add_on(&client, &name, a);
    assert_eq!(add(1).await.expect("served"), json!(2));

    for i in 0..12 {
        let mut m = request(&name, &format!("dead-{i}"));
        m.properties.mandatory = false;
        m.properties.confirm = true;
        admin
            .publish("", &dlq, m)
            .await
            .expect("publish to the DLQ");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = admin.queue_len(&dlq).await.expect("queue_len");
        if n <= 3 && service.dead_letters_trimmed() >= 9 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{dlq} holds {n}, not trimmed to 3 ({} trimmed)",
            service.dead_letters_trimmed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The re-declaration after a reconnect meets the old queue again.
    let conn = recording.made.lock().expect("lock")[0].clone();
    conn.simulate_connection_loss().await;
    assert_eq!(add(41).await.expect("served after the loss"), json!(42));
    assert!(conn.generation() >= 2, "the service reconnected");

    client.disconnect().await.expect("disconnect");
    service.disconnect().await.expect("disconnect");
    admin
        .delete_queue(&service_queue(&name))
        .await
        .expect("cleanup");
    admin.delete_queue(&dlq).await.expect("cleanup");
    admin.close().await.expect("close");
}

#[tokio::test]
async fn wrong_credentials_and_unknown_vhost_are_clear_errors() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let hostport = url
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("host:port in HERALD_AMQP_URL")
        .to_owned();
    let bad = format!("amqp://guest:not-the-password@{hostport}/%2f");
    let err = AmqpBackend::new(&bad)
        .expect("valid url")
        .connect("x")
        .await
        .expect_err("wrong password");
    let text = err.to_string();
    assert!(
        text.contains("cannot connect to amqp://guest:***@"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "password leaked: {text}"
    );
    assert!(
        text.contains("ACCESS_REFUSED"),
        "the broker's reason is kept: {text}"
    );

    let novhost = url.rsplit_once('/').expect("vhost").0.to_owned() + "/no-such-vhost-herald";
    let err = AmqpBackend::new(&novhost)
        .expect("valid url")
        .connect("x")
        .await
        .expect_err("unknown vhost");
    assert!(
        err.to_string()
            .contains("vhost no-such-vhost-herald not found"),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_publish_does_not_break_the_connection() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    let service = unique("refused");
    let sq = service_topology(&conn, &service).await;

    // The broker closes the publishing channel (404) for a missing exchange.
    let err = conn
        .publish("herald-no-such-exchange", "x", request(&service, "lost"))
        .await
        .expect_err("missing exchange");
    assert!(
        matches!(&err, MeshError::NoSuchExchange { exchange } if exchange == "herald-no-such-exchange"),
        "{err:?}"
    );
    // An oversized body is refused before it reaches the broker.
    let mut big = request(&service, "big");
    big.payload = herald_mesh::message::Payload::Bytes(bytes::Bytes::from(vec![
        b' ';
        AmqpOptions::default().max_message_bytes
            + 1
    ]));
    let err = conn
        .publish(RPC_EXCHANGE, &service, big)
        .await
        .expect_err("too big");
    assert!(
        matches!(
            &err,
            MeshError::InvalidArgument {
                what: "message body",
                ..
            }
        ),
        "{err:?}"
    );

    // The channels are reopened on the same connection; nothing else is disturbed.
    conn.publish(RPC_EXCHANGE, &service, request(&service, "fine"))
        .await
        .expect("publish after the refusals");
    assert_eq!(conn.generation(), 1, "no reconnect was needed");
    let mut stream = conn
        .consume(&sq.name, ConsumeOptions::manual(4))
        .await
        .expect("consume");
    let d = next(&mut stream).await;
    assert_eq!(d.message.properties.correlation_id, "fine");
    d.ack().await.expect("ack");
    conn.delete_queue(&sq.name).await.expect("cleanup");
    conn.close().await.expect("close");
}

/// A client with direct reply-to (`MeshConfig::direct_reply_to`): calls, errors,
/// `NotFound` for a missing service (many at once, beside served calls), the client
/// deadline, and calls again after its connection was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_calls_errors_not_found_deadline_and_reconnect() {
    use serde_json::json;

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let name = unique("direct");
    let service = Mesh::connect(
        Arc::new(AmqpBackend::new(&url).expect("url")),
        MeshConfig::service(&name, ExampleService::new()),
    )
    .await
    .expect("service");
    let recording = Arc::new(Recording {
        inner: AmqpBackend::new(&url).expect("url"),
        made: std::sync::Mutex::new(Vec::new()),
    });
    let client = Mesh::connect(
        recording.clone(),
        MeshConfig::client().direct_reply_to(true),
    )
    .await
    .expect("client");
    let call = |service: String, method: &'static str, params: serde_json::Value, ttl: Duration| {
        let client = client.clone();
        async move {
            client
                .request(&service, method, params, json!({}), Some(ttl), None)
                .await
        }
    };

    assert_eq!(
        call(name.clone(), "add", json!({"a": 2, "b": 3}), WAIT)
            .await
            .expect("add"),
        json!(5)
    );
    let err = call(
        name.clone(),
        "fail",
        json!({"message": "boom", "kind": "handling"}),
        WAIT,
    )
    .await
    .expect_err("fail");
    assert!(
        matches!(&err, MeshError::Handling { description, .. } if description == "boom"),
        "{err:?}"
    );
    let calls = (0..20u64).map(|i| {
        let target = if i % 2 == 0 {
            name.clone()
        } else {
            unique("missing")
        };
        let c = call(target, "add", json!({"a": i, "b": 1}), WAIT);
        async move { (i, c.await) }
    });
    for (i, r) in futures::future::join_all(calls).await {
        if i % 2 == 0 {
            assert_eq!(r.expect("served"), json!(i + 1), "call {i}");
        } else {
            assert!(
                matches!(&r, Err(MeshError::NotFound { .. })),
                "call {i}: {r:?}"
            );
        }
    }
    // The client deadline: the handler sleeps longer than the caller waits.
    let err = call(
        name.clone(),
        "slow",
        json!({"seconds": 2.0}),
        Duration::from_millis(300),
    )
    .await
    .expect_err("deadline");
    assert!(matches!(err, MeshError::Timeout { .. }), "{err:?}");

    // On the wire: the request's reply_to is the broker's direct reply-to address,
    // and a reply published to it through the default exchange (as any service
    // answers) reaches the caller.
    let raw_name = unique("direct-raw");
    let admin = connect(&url).await;
    let sq = service_topology(&admin, &raw_name).await;
    let mut requests = admin
        .consume(&sq.name, ConsumeOptions::manual(4))
        .await
        .expect("consume");
    let pending = tokio::spawn(call(raw_name.clone(), "add", json!({"a": 1, "b": 2}), WAIT));
    let d = next(&mut requests).await;
    let reply_to = d.message.properties.reply_to.clone().expect("reply_to");
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "reply_to {reply_to:?}"
    );
    let cid = d.message.properties.correlation_id.clone();
    let reply = Message {
        properties: Properties::new(cid.clone()),
        headers: Headers::new(MessageType::Response, None),
        payload: Payload::Envelope(Arc::new(Envelope::Response(ResponseBody {
            result: json!(3),
            error: None,
            correlation_id: cid,
            trace_id: None,
            context: json!({}),
            warning: None,
            reply_to: Some(reply_to.clone()),
        }))),
        death: None,
    };
    admin.publish("", &reply_to, reply).await.expect("reply");
    d.ack().await.expect("ack");
    assert_eq!(pending.await.expect("join").expect("answered"), json!(3));
    admin.delete_queue(&sq.name).await.expect("cleanup");
    admin.close().await.expect("close");

    // The direct reply-to consumer comes back with the connection.
    let conn = recording.made.lock().expect("lock")[0].clone();
    conn.simulate_connection_loss().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match call(
            name.clone(),
            "add",
            json!({"a": 41, "b": 1}),
            Duration::from_secs(2),
        )
        .await
        {
            Ok(v) => {
                assert_eq!(v, json!(42));
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no reply after the reconnect: {e:?}"
            ),
        }
    }
    assert!(conn.generation() >= 2, "the client reconnected");
    // The late reply of the slow call above was dropped as unpaired, or lost with the
    // old channel; either way the handle still works.
    assert_eq!(
        call(name.clone(), "add", json!({"a": 1, "b": 1}), WAIT)
            .await
            .expect("add"),
        json!(2)
    );

    client.disconnect().await.expect("disconnect");
    service.disconnect().await.expect("disconnect");
    let admin = connect(&url).await;
    for q in [service_queue(&name), dead_letter_queue(&name)] {
        admin.delete_queue(&q).await.expect("cleanup");
    }
    admin.close().await.expect("close");
}

/// A TCP proxy to the broker that a test can cut (its connections dropped, new ones
/// closed at once) for as long as it likes, which `simulate_connection_loss` cannot do
/// (the next operation reconnects at once), or freeze (nothing relayed any more, both
/// sockets kept open: a broker that stopped answering).
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    freeze: tokio::sync::watch::Sender<bool>,
}

async fn cuttable_proxy(upstream: String) -> CuttableProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    let (cut, rx) = tokio::sync::watch::channel(false);
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            if *rx.borrow() {
                continue;
            }
            let mut rx = rx.clone();
            let mut frozen = frozen.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let held = tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut down, &mut up) => false,
                    _ = rx.wait_for(|c| *c) => false,
                    _ = frozen.wait_for(|f| *f) => true,
                };
                if held {
                    // Silent but open until cut (or the test ends).
                    let _ = rx.wait_for(|c| *c).await;
                }
                drop((down, up));
            });
        }
    });
    CuttableProxy { addr, cut, freeze }
}

/// `url`'s `host:port` and the same URL pointing at `proxy` instead.
fn through_proxy(url: &str, proxy: std::net::SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("an amqp:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let upstream = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    };
    (upstream, format!("{scheme}://{userinfo}{proxy}/{path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_dropped_as_soon_as_the_connection_is_lost() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let name = unique("lead-loss");
    let cfg = || {
        MeshConfig::service(&name, ExampleService::new()).leader_interval(Duration::from_millis(50))
    };
    let first = Mesh::connect(Arc::new(AmqpBackend::new(&proxied).expect("url")), cfg())
        .await
        .expect("first instance (through the proxy)");
    let mut w1 = first.leader_watch();
    assert!(
        tokio::time::timeout(WAIT, w1.wait_for(true))
            .await
            .expect("the first instance leads")
    );
    let second = Mesh::connect(Arc::new(AmqpBackend::new(&url).expect("url")), cfg())
        .await
        .expect("second instance");
    let mut w2 = second.leader_watch();

    // A lasting outage of the first instance: the broker drops its connection and with
    // it the leader lock, and the second instance takes the lead.
    proxy.cut.send_replace(true);
    assert!(
        tokio::time::timeout(WAIT, w2.wait_for(true))
            .await
            .expect("the second instance leads once the first one's connection is gone")
    );
    // The first is still trying to reconnect (for up to `reconnect_wait`, 30 s) and must
    // not claim leadership meanwhile.
    let dropped = tokio::time::timeout(Duration::from_secs(5), w1.wait_for(false)).await;
    assert!(
        matches!(dropped, Ok(true)),
        "both instances report is_leader during the outage"
    );
    assert!(second.is_leader() && !first.is_leader());

    proxy.cut.send_replace(false);
    second.disconnect().await.expect("disconnect second");
    first.disconnect().await.expect("disconnect first");
    let admin = connect(&url).await;
    for q in [service_queue(&name), dead_letter_queue(&name)] {
        admin.delete_queue(&q).await.expect("cleanup");
    }
    admin.close().await.expect("close");
}

/// Calls waiting for their replies when the client's broker connection is lost end at
/// once with `ConnectionLost` (naming the service and method), not at their deadline,
/// through the response queue and through direct reply-to alike; calls made once the
/// connection is back work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_fail_with_connection_lost_when_the_connection_is_lost() {
    use herald_mesh::RequestOptions;
    use herald_mesh::ServiceError;
    use herald_mesh::service::{MethodInfo, RequestContext, ServiceRouter};
    use serde_json::json;

    #[derive(serde::Deserialize)]
    struct Hold {
        ms: u64,
    }

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let name = unique("lost-calls");
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let router = ServiceRouter::new("1", "slow calls").method(
        MethodInfo::new("slow", "signals, then sleeps ms").param("ms", "int", ""),
        move |p: Hold, _ctx: Arc<RequestContext>| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(p.ms)).await;
                Ok::<_, ServiceError>(json!(p.ms))
            }
        },
    );
    // The service talks to the broker directly; only the clients go through the proxy.
    let service = Mesh::connect(
        Arc::new(AmqpBackend::new(&url).expect("url")),
        MeshConfig::service(&name, router).shutdown_grace(Duration::from_millis(200)),
    )
    .await
    .expect("service");
    let mut clients = Vec::new();
    for direct in [false, true] {
        let client = Mesh::connect(
            Arc::new(AmqpBackend::new(&proxied).expect("url")),
            MeshConfig::client().direct_reply_to(direct),
        )
        .await
        .expect("client through the proxy");
        clients.push(client);
    }
    // A ttl far beyond the test's waits: only the connection loss can end these calls.
    let long = Duration::from_secs(600);
    let slow_call = |client: &Mesh, ms: u64, ttl: Duration| {
        let client = client.clone();
        let name = name.clone();
        async move {
            let opts = RequestOptions {
                ttl: Some(ttl),
                ..RequestOptions::default()
            };
            client
                .request_with(&name, "slow", json!({ "ms": ms }), opts)
                .await
        }
    };
    let in_flight: Vec<_> = clients
        .iter()
        .map(|c| tokio::spawn(slow_call(c, 3_600_000, long)))
        .collect();
    for _ in 0..in_flight.len() {
        tokio::time::timeout(WAIT, started.recv())
            .await
            .expect("the service started handling the call")
            .expect("service alive");
    }

    proxy.cut.send_replace(true);
    for (i, call) in in_flight.into_iter().enumerate() {
        let outcome = tokio::time::timeout(WAIT, call)
            .await
            .unwrap_or_else(|_| {
                panic!("client {i}: a call in flight did not end within {WAIT:?} of the connection loss (its ttl is {long:?})")
            })
            .expect("join");
        let err = outcome.expect_err("the reply cannot arrive");
        assert!(
            matches!(&err, MeshError::ConnectionLost { service, method } if *service == name && method == "slow"),
            "client {i}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&name) && text.contains("slow"), "{text}");
    }

    // Once the broker is reachable again, new calls are answered.
    proxy.cut.send_replace(false);
    for (i, client) in clients.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match slow_call(client, 0, Duration::from_secs(2)).await {
                Ok(v) => {
                    assert_eq!(v, json!(0));
                    break;
                }
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "client {i}: no answer after the connection came back: {e:?}"
                ),
            }
        }
    }

    for client in clients {
        client.disconnect().await.expect("disconnect client");
    }
    service.disconnect().await.expect("disconnect service");
    let admin = connect(&url).await;
    for q in [service_queue(&name), dead_letter_queue(&name)] {
        admin.delete_queue(&q).await.expect("cleanup");
    }
    admin.close().await.expect("close");
}

/// `command_confirmed` waits for the broker's publisher confirm: a command routed to a
/// queue that refuses it (full, `x-overflow: reject-publish`) is `Ok` as a plain
/// fire-and-forget command (it was routed; the broker drops it afterwards) but an error
/// when confirmed (the broker nacks it). Events, also confirmed, are not disturbed.
#[tokio::test]
async fn a_confirmed_command_is_ok_only_once_the_broker_confirmed_it() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use serde_json::json;

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let name = unique("refusing");
    let admin = connect(&url).await;
    for x in nuropb_exchanges() {
        admin.declare_exchange(&x).await.expect("declare exchange");
    }
    // A queue that takes no message, bound as the service's queue would be. Exclusive:
    // it goes away with this connection.
    let raw = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = raw.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let full = format!("herald-test-{name}-full");
    ch.queue_declare(
        full.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("declare the full queue");
    ch.queue_bind(
        full.as_str().into(),
        RPC_EXCHANGE.into(),
        name.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind it to the service name");

    let client = Mesh::connect(
        Arc::new(AmqpBackend::new(&url).expect("url")),
        MeshConfig::client(),
    )
    .await
    .expect("client");
    let opts = herald_mesh::RequestOptions::default;
    client
        .command(&name, "add", json!({"a": 1, "b": 2}), opts())
        .await
        .expect("a plain command is done once routed");
    let err = client
        .command_confirmed(&name, "add", json!({"a": 1, "b": 2}), opts())
        .await
        .expect_err("the broker refuses the confirmed one");
    assert!(
        matches!(&err, MeshError::Backend { reason, .. } if reason.contains("nack") && reason.contains(&name)),
        "{err:?}"
    );
    // The refusal leaves the handle working: events (confirmed too) and another
    // confirmed command.
    client
        .publish_event("refusing.done", json!({}), json!({}), None)
        .await
        .expect("event");
    assert!(matches!(
        client
            .command_confirmed(&unique("absent"), "x", json!({}), opts())
            .await,
        Err(MeshError::NotFound { .. })
    ));

    client.disconnect().await.expect("disconnect");
    raw.close(200, "done".into()).await.expect("close raw");
    admin.close().await.expect("close");
}

/// A poison message (here: a body that is not JSON) is dead-lettered the way the
/// broker dead-letters a rejected message (same body, properties, headers and routing
/// key, `x-death` and `x-first-death-*` saying `rejected` in the service queue), plus
/// `x-herald-reason`: the decode error, in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_decode_error() {
    use lapin::BasicProperties;
    use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let name = unique("poison-raw");
    let service = Mesh::connect(
        Arc::new(AmqpBackend::new(&url).expect("url")),
        MeshConfig::service(&name, ExampleService::new()),
    )
    .await
    .expect("service");
    let raw = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = raw.create_channel().await.expect("channel");
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("nuropb_protocol", "0.1.1"),
        ("nuropb_version", "0.1.8"),
        ("nuropb_type", "request"),
        ("x-custom", "kept"),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    }
    let body = b"{not json".to_vec();
    let props = BasicProperties::default()
        .with_correlation_id("raw-poison".into())
        .with_content_type("application/json".into())
        .with_expiration("60000".into())
        .with_headers(headers);
    ch.basic_publish(
        RPC_EXCHANGE.into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("published");

    // The dead-letter exchange is a fanout: skip other services' dead letters.
    let dlq = dead_letter_queue(&name);
    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letter of the poison message in {dlq}"
        );
        let got = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get");
        let Some(got) = got else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        got.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        let mine = got
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .is_some_and(|c| c.as_str() == "raw-poison");
        if mine {
            break got.delivery;
        }
    };
    let text = |v: Option<&AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    assert_eq!(dead.exchange.as_str(), DL_EXCHANGE);
    assert_eq!(dead.routing_key.as_str(), name, "the original routing key");
    assert_eq!(dead.data, body, "the original body");
    let p = &dead.properties;
    assert_eq!(
        p.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert!(p.expiration().is_none(), "expiration moves into x-death");
    let h = p.headers().as_ref().expect("headers").inner();
    for (k, v) in [
        ("nuropb_protocol", "0.1.1"),
        ("nuropb_version", "0.1.8"),
        ("nuropb_type", "request"),
        ("x-custom", "kept"),
    ] {
        assert_eq!(text(h.get(k)).as_deref(), Some(v), "original header {k}");
    }
    let sq = service_queue(&name);
    assert_eq!(
        text(h.get("x-first-death-reason")).as_deref(),
        Some("rejected")
    );
    assert_eq!(text(h.get("x-first-death-queue")), Some(sq.clone()));
    assert_eq!(
        text(h.get("x-first-death-exchange")).as_deref(),
        Some(RPC_EXCHANGE)
    );
    let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
        panic!("no x-death array: {h:?}");
    };
    let [AMQPValue::FieldTable(death)] = deaths.as_slice() else {
        panic!("expected one x-death entry: {deaths:?}");
    };
    let d = death.inner();
    assert_eq!(d.get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(text(d.get("reason")).as_deref(), Some("rejected"));
    assert_eq!(text(d.get("queue")), Some(sq));
    assert_eq!(text(d.get("exchange")).as_deref(), Some(RPC_EXCHANGE));
    assert_eq!(text(d.get("original-expiration")).as_deref(), Some("60000"));
    assert!(
        matches!(d.get("time"), Some(AMQPValue::Timestamp(_))),
        "{d:?}"
    );
    assert_eq!(
        d.get("routing-keys"),
        Some(&AMQPValue::FieldArray(
            vec![AMQPValue::LongString(LongString::from(name.as_str()))].into()
        ))
    );
    let reason = text(h.get("x-herald-reason")).expect("an x-herald-reason header (long string)");
    assert!(
        reason.contains("invalid nuropb JSON body"),
        "x-herald-reason {reason:?}"
    );
    service.disconnect().await.expect("disconnect");
    raw.close(200, "done".into()).await.expect("close raw");
    let admin = connect(&url).await;
    for q in [service_queue(&name), dlq] {
        admin.delete_queue(&q).await.expect("cleanup");
    }
    admin.close().await.expect("close");
}

/// A delivery that arrived on a connection since lost is not copied to the dead-letter
/// exchange over the new connection: its ack could not go out on the new one, so the
/// broker redelivers it, and a copy would make two dead letters of one message. Only
/// the redelivery's dead letter arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_of_a_lost_connection_is_not_dead_lettered_over_the_next_one() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let admin = connect(&url).await;
    let service = unique("dl-lost");
    let sq = service_topology(&admin, &service).await;
    let dlq = QueueSpec::dead_letter(dead_letter_queue(&service));
    admin.declare_queue(&dlq).await.expect("declare DLQ");
    let conn = connect(&proxied).await;
    // Declared on this connection too, so that it knows the queue's dead-letter exchange.
    conn.declare_queue(&sq)
        .await
        .expect("declare through the proxy");
    let mut stream = conn
        .consume(&sq.name, ConsumeOptions::manual(1))
        .await
        .expect("consume through the proxy");
    admin
        .publish(RPC_EXCHANGE, &service, request(&service, "lost-1"))
        .await
        .expect("publish");
    let first = next(&mut stream).await;
    assert!(!first.redelivered);

    // The link drops and comes back before the delivery is settled.
    proxy.cut.send_replace(true);
    let deadline = tokio::time::Instant::now() + WAIT;
    while conn.declare_queue(&sq).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut.send_replace(false);
    while conn.declare_queue(&sq).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reconnected after the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (message, settle) = first.into_parts();
    // Settling on the lost channel may report an error; what counts is what follows.
    let _ = settle
        .dead_letter(message, "dead-lettered over a lost connection".into())
        .await;

    let again = next(&mut stream).await;
    assert_eq!(again.message.properties.correlation_id, "lost-1");
    assert!(
        again.redelivered,
        "the broker redelivers what was never settled"
    );
    again
        .dead_letter("dead-lettered on its redelivery")
        .await
        .expect("dead letter of the redelivery");
    let mut dl = admin
        .consume(&dlq.name, ConsumeOptions::manual(10))
        .await
        .expect("consume DLQ");
    let first = dead_letters_from(&mut dl, &sq.name, 1).await;
    assert_eq!(
        first,
        [(
            "lost-1".to_owned(),
            Some("dead-lettered on its redelivery".to_owned())
        )],
        "the first dead letter of the message must be its redelivery's (one dead letter)"
    );
    drop((stream, dl));
    conn.close().await.expect("close");
    admin.delete_queue(&sq.name).await.expect("cleanup");
    admin.delete_queue(&dlq.name).await.expect("cleanup");
    admin.close().await.expect("close");
}

/// `Delivery::dead_letter` settles a delivery exactly once even when its copy with the
/// reason cannot be published (here the queue's dead-letter exchange does not exist,
/// so the broker refuses the copy): the delivery is rejected instead, not requeued,
/// the next copy goes out on a reopened channel, and the connection's confirmed
/// publishes keep working.
#[tokio::test]
async fn a_dead_letter_falls_back_to_a_reject_when_its_copy_is_refused() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let conn = connect(&url).await;
    for x in nuropb_exchanges() {
        conn.declare_exchange(&x).await.expect("declare exchange");
    }
    let queue = unique("nuropb-fallback");
    let spec = QueueSpec {
        dead_letter_exchange: Some(unique("herald-no-such-dlx")),
        ..QueueSpec::response(queue.clone())
    };
    conn.declare_queue(&spec).await.expect("declare");
    let mut stream = conn
        .consume(&queue, ConsumeOptions::manual(1))
        .await
        .expect("consume");
    // Twice: the refusal closes the channel of dead-letter copies, so the second copy
    // goes out on a new one (and is refused the same way, so its delivery falls back
    // likewise).
    for (dead, next_id) in [("fb-1", "fb-2"), ("fb-3", "fb-4")] {
        conn.publish("", &queue, request("fallback", dead))
            .await
            .expect("publish");
        let d = next(&mut stream).await;
        assert_eq!(d.message.properties.correlation_id, dead);
        d.dead_letter("cannot be handled")
            .await
            .expect("settled by the fallback reject");
        // Settled, not requeued: the next delivery is the next message.
        conn.publish("", &queue, request("fallback", next_id))
            .await
            .expect("publish");
        let d = next(&mut stream).await;
        assert_eq!(d.message.properties.correlation_id, next_id);
        assert!(!d.redelivered);
        d.ack().await.expect("ack");
    }
    // Confirmed publishes keep working.
    let mut confirmed = request(&unique("absent"), "fb-5");
    confirmed.properties.confirm = true;
    let err = conn
        .publish(RPC_EXCHANGE, "no-queue-bound", confirmed)
        .await
        .expect_err("unroutable");
    assert!(matches!(err, MeshError::Unroutable { .. }), "{err:?}");
    drop(stream);
    conn.delete_queue(&queue).await.expect("cleanup");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_bounded_when_the_broker_stops_answering() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let conn = connect(&proxied).await;
    let queue = unique("herald-close-bound");
    conn.declare_queue(&QueueSpec::response(&queue))
        .await
        .expect("declare through the proxy");
    // The broker goes silent: no close-ok will ever come back. lapin waits for it
    // without a bound (and with the default 60 s heartbeat, nothing notices for
    // minutes); Herald gives it a few seconds, then gives the handle up locally.
    proxy.freeze.send_replace(true);
    let closed = tokio::time::timeout(Duration::from_secs(45), conn.close()).await;
    assert!(
        closed.is_ok(),
        "close() of a connection whose broker stopped answering did not return within 45 s"
    );
    assert!(!conn.is_open(), "the handle is closed after close()");
    proxy.cut.send_replace(true);
}

/// The `operation_timeout` of the tests of a broker that stops answering: short, but
/// far above what a handshake or a declaration takes on a loaded machine (a working
/// broker answers in milliseconds).
const SHORT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Options for the tests of a broker that stops answering: a short
/// `operation_timeout`, and reconnects that may take a few attempts.
fn short_operation_timeout() -> AmqpOptions {
    AmqpOptions {
        operation_timeout: SHORT_OPERATION_TIMEOUT,
        reconnect_wait: 3 * SHORT_OPERATION_TIMEOUT,
        ..AmqpOptions::default()
    }
}

/// The generous outer bound of the tests below: far above their 5 s
/// `operation_timeout`, far below what lapin takes (without Herald's bound, a connect
/// whose handshake gets no answer waits forever, and an established connection waits
/// for two missed 60 s heartbeats).
const SILENT_BROKER_WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_zero_operation_timeout_is_refused() {
    let zero = AmqpOptions {
        operation_timeout: Duration::ZERO,
        ..AmqpOptions::default()
    };
    let err = AmqpBackend::with_options("amqp://guest:guest@127.0.0.1:5672/%2f", zero)
        .expect_err("a zero bound is refused");
    assert!(
        matches!(&err, MeshError::InvalidArgument { what, .. } if what.contains("operation_timeout")),
        "{err:?}"
    );
}

/// A broker that accepts TCP but never answers the handshake (here: a proxy frozen from
/// the start): the connect fails with `BackendTimeout` after `operation_timeout`
/// instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_bounded_when_the_broker_never_answers() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    proxy.freeze.send_replace(true);
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let backend = AmqpBackend::with_options(&proxied, short_operation_timeout()).expect("url");
    let opened = tokio::time::timeout(SILENT_BROKER_WAIT, backend.connect("herald-test"))
        .await
        .expect("connect to a broker that never answers returned within 30 s");
    match opened {
        Err(MeshError::BackendTimeout {
            operation, after, ..
        }) => {
            assert_eq!(operation, "connect");
            assert_eq!(after, SHORT_OPERATION_TIMEOUT);
        }
        Err(other) => panic!("expected BackendTimeout, got {other:?}"),
        Ok(_) => panic!("connected through a frozen proxy"),
    }
    let text = tokio::time::timeout(SILENT_BROKER_WAIT, backend.connect("herald-test"))
        .await
        .expect("a second connect is bounded too")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        text.contains(&proxy.addr.to_string()) && text.contains("5s"),
        "names the broker and the bound: {text}"
    );
    assert!(
        !text.contains(&proxied),
        "the password is redacted from the error: {text}"
    );
    proxy.cut.send_replace(true);
}

/// An established connection whose broker stops answering (the proxy freezes): a
/// declaration fails with `BackendTimeout` naming `queue.declare`, the queue and the
/// bound; the connection counts as lost (`is_connected`, `link_losses`), and once the
/// broker answers again the next operation reconnects and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declare_is_bounded_when_the_broker_stops_answering_and_the_next_one_reconnects() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let conn = AmqpConnection::open(&proxied, "herald-test", short_operation_timeout())
        .await
        .expect("connect through the proxy");
    let losses = conn
        .link_losses()
        .expect("the amqp backend counts link losses");
    let before = unique("herald-optimeout-before");
    conn.declare_queue(&QueueSpec::response(&before))
        .await
        .expect("declare while the broker answers");
    assert_eq!(*losses.borrow(), 0);

    proxy.freeze.send_replace(true);
    let queue = unique("herald-optimeout");
    let declared = tokio::time::timeout(
        SILENT_BROKER_WAIT,
        conn.declare_queue(&QueueSpec::response(&queue)),
    )
    .await
    .expect("declare_queue on a broker that stopped answering returned within 30 s");
    match &declared {
        Err(MeshError::BackendTimeout {
            operation,
            object,
            after,
            ..
        }) => {
            assert_eq!(*operation, "queue.declare");
            assert!(object.contains(&queue), "{object}");
            assert_eq!(*after, SHORT_OPERATION_TIMEOUT);
        }
        other => panic!("expected BackendTimeout, got {other:?}"),
    }
    assert!(
        !conn.is_connected(),
        "a connection whose broker stopped answering is not reported connected"
    );
    assert!(*losses.borrow() >= 1, "the loss is counted");

    // The broker answers again: the next operation reconnects (new connections through
    // the proxy are relayed again) instead of waiting on the dead one.
    proxy.freeze.send_replace(false);
    let generation = conn.generation();
    tokio::time::timeout(
        SILENT_BROKER_WAIT,
        conn.declare_queue(&QueueSpec::response(&queue)),
    )
    .await
    .expect("declare_queue after the broker came back returned within 30 s")
    .expect("declared on a new connection");
    assert!(conn.generation() > generation, "reconnected");
    assert!(conn.is_connected());
    for q in [&before, &queue] {
        conn.delete_queue(q).await.expect("cleanup");
    }
    conn.close().await.expect("close");
    proxy.cut.send_replace(true);
}

/// An event published with a publisher confirm (the confirmed path) to a broker that
/// stopped answering fails with `BackendTimeout` instead of waiting for a confirm that
/// never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_event_publish_is_bounded_when_the_broker_stops_answering() {
    use herald_mesh::message::EVENTS_EXCHANGE;
    use serde_json::json;

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let proxy = cuttable_proxy(upstream).await;
    let (_, proxied) = through_proxy(&url, proxy.addr);
    let backend = AmqpBackend::with_options(&proxied, short_operation_timeout()).expect("url");
    assert!(backend.options().publisher_confirms);
    let client = Mesh::connect(Arc::new(backend), MeshConfig::client())
        .await
        .expect("client through the proxy");
    client
        .publish_event("optimeout.before", json!({"n": 1}), json!({}), None)
        .await
        .expect("confirmed while the broker answers");

    proxy.freeze.send_replace(true);
    let published = tokio::time::timeout(
        SILENT_BROKER_WAIT,
        client.publish_event("optimeout.frozen", json!({"n": 2}), json!({}), None),
    )
    .await
    .expect("publish_event to a broker that stopped answering returned within 30 s");
    match &published {
        Err(MeshError::BackendTimeout {
            operation, object, ..
        }) => {
            // The publish itself is written to the socket; its confirm never comes.
            assert_eq!(*operation, "publisher confirm");
            assert!(object.contains(EVENTS_EXCHANGE), "{object}");
        }
        other => panic!("expected BackendTimeout, got {other:?}"),
    }
    let _ = tokio::time::timeout(SILENT_BROKER_WAIT, client.disconnect()).await;
    proxy.cut.send_replace(true);
}

/// What a [`ConfirmGate`] saw in the AMQP frames it relayed.
#[derive(Debug, Default)]
struct GateSeen {
    /// The client's channel of dead-letter copies: the first to publish to the
    /// dead-letter exchange.
    dl_channel: Option<u16>,
    /// Channels whose next content header is that of a copy the client published.
    copy_header_due: std::collections::HashSet<u16>,
    /// The correlation ids of the copies, in publish order (the confirm sequence
    /// number of `copies[i]` is `i + 1`).
    copies: Vec<String>,
    /// Publisher confirms (`basic.ack` / `basic.nack` from the broker) on the copies'
    /// channel: received, and released to the client.
    confirms_held: usize,
    confirms_released: usize,
    /// The correlation ids of the copies whose confirm reached the client.
    confirmed: std::collections::HashSet<String>,
    /// Deliveries to the client whose content header is due: channel → delivery tag.
    deliver_due: std::collections::HashMap<u16, u64>,
    /// (channel, delivery tag) → correlation id of each delivery to the client.
    delivered: std::collections::HashMap<(u16, u64), String>,
    /// The deliveries the client acked, in order: correlation id, and whether its copy's
    /// confirm had reached the client before the ack.
    acked: Vec<(String, bool)>,
    /// Acks with the `multiple` flag, or of tags the gate never saw delivered.
    odd_acks: Vec<String>,
}

/// A TCP proxy to the broker that reads the AMQP frames it relays: it records the
/// dead-letter copies the client publishes (`basic.publish` to the dead-letter
/// exchange) and the deliveries it acks, and holds back the broker's publisher
/// confirms on the copies' channel until the test releases them (`release`: how many
/// confirm frames may pass). Other channels flow freely.
struct ConfirmGate {
    addr: std::net::SocketAddr,
    seen: Arc<std::sync::Mutex<GateSeen>>,
    release: tokio::sync::watch::Sender<usize>,
}

/// One AMQP frame: type, channel, payload.
struct Frame {
    kind: u8,
    channel: u16,
    payload: Vec<u8>,
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 8);
        out.push(self.kind);
        out.extend_from_slice(&self.channel.to_be_bytes());
        let size = u32::try_from(self.payload.len()).expect("frame size");
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out.push(0xCE);
        out
    }

    /// `(class, method, arguments)` of a method frame.
    fn method(&self) -> Option<(u16, u16, &[u8])> {
        if self.kind != 1 || self.payload.len() < 4 {
            return None;
        }
        let class = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let method = u16::from_be_bytes([self.payload[2], self.payload[3]]);
        Some((class, method, &self.payload[4..]))
    }

    /// The correlation id of a content header frame.
    fn correlation_id(&self) -> Option<String> {
        let p = self.payload.get(12..)?;
        let flags = u16::from_be_bytes([*p.first()?, *p.get(1)?]);
        let mut at = 2;
        let short = |at: &mut usize| -> Option<String> {
            let len = usize::from(*p.get(*at)?);
            let s = String::from_utf8_lossy(p.get(*at + 1..*at + 1 + len)?).into_owned();
            *at += 1 + len;
            Some(s)
        };
        if flags & 1 << 15 != 0 {
            short(&mut at)?; // content-type
        }
        if flags & 1 << 14 != 0 {
            short(&mut at)?; // content-encoding
        }
        if flags & 1 << 13 != 0 {
            let len = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?);
            at += 4 + usize::try_from(len).ok()?; // headers
        }
        if flags & 1 << 12 != 0 {
            at += 1; // delivery-mode
        }
        if flags & 1 << 11 != 0 {
            at += 1; // priority
        }
        if flags & 1 << 10 == 0 {
            return None;
        }
        short(&mut at)
    }
}

/// A short string at the start of `args`, and what follows it.
fn shortstr(args: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(*args.first()?);
    let s = String::from_utf8_lossy(args.get(1..1 + len)?).into_owned();
    Some((s, &args[1 + len..]))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

async fn read_frame(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 7];
    r.read_exact(&mut head).await?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
    let mut payload = vec![0u8; usize::try_from(size).expect("size") + 1];
    r.read_exact(&mut payload).await?;
    payload.pop(); // frame-end
    Ok(Frame {
        kind: head[0],
        channel: u16::from_be_bytes([head[1], head[2]]),
        payload,
    })
}

const BASIC: u16 = 60;
const BASIC_PUBLISH: u16 = 40;
const BASIC_DELIVER: u16 = 60;
const BASIC_ACK: u16 = 80;
const BASIC_NACK: u16 = 120;

/// Client to broker: records the copies published and the deliveries acked.
fn client_frame(seen: &mut GateSeen, f: &Frame) {
    match f.method() {
        Some((BASIC, BASIC_PUBLISH, args)) => {
            let exchange = args.get(2..).and_then(shortstr).map(|(x, _)| x);
            if exchange.as_deref() == Some(DL_EXCHANGE) {
                seen.dl_channel.get_or_insert(f.channel);
                seen.copy_header_due.insert(f.channel);
            }
        }
        Some((BASIC, BASIC_ACK, args)) if Some(f.channel) != seen.dl_channel => {
            let tag = be_u64(args).expect("delivery tag");
            let multiple = args.get(8).is_some_and(|b| b & 1 != 0);
            match seen.delivered.get(&(f.channel, tag)).cloned() {
                Some(cid) if !multiple => {
                    let confirmed = seen.confirmed.contains(&cid);
                    seen.acked.push((cid, confirmed));
                }
                _ => seen.odd_acks.push(format!(
                    "channel {} tag {tag} multiple {multiple}",
                    f.channel
                )),
            }
        }
        _ => {}
    }
    if f.kind == 2 && seen.copy_header_due.remove(&f.channel) {
        let cid = f.correlation_id().unwrap_or_default();
        seen.copies.push(cid);
    }
}

/// Broker to client: records the deliveries; `true` for a publisher confirm on the
/// copies' channel (to be held back).
fn broker_frame(seen: &mut GateSeen, f: &Frame) -> bool {
    match f.method() {
        Some((BASIC, BASIC_DELIVER, args)) => {
            let (_consumer_tag, rest) = shortstr(args).expect("consumer tag");
            seen.deliver_due
                .insert(f.channel, be_u64(rest).expect("delivery tag"));
            false
        }
        Some((BASIC, BASIC_ACK | BASIC_NACK, _)) => Some(f.channel) == seen.dl_channel,
        _ => {
            if f.kind == 2
                && let Some(tag) = seen.deliver_due.remove(&f.channel)
            {
                let cid = f.correlation_id().unwrap_or_default();
                seen.delivered.insert((f.channel, tag), cid);
            }
            false
        }
    }
}

/// Marks the copies a released confirm covers as confirmed.
fn confirm_released(seen: &mut GateSeen, f: &Frame) {
    let Some((_, _, args)) = f.method() else {
        return;
    };
    let tag = be_u64(args).expect("confirm tag");
    let multiple = args.get(8).is_some_and(|b| b & 1 != 0);
    let first = if multiple { 1 } else { tag };
    for seq in first..=tag {
        if let Some(cid) = usize::try_from(seq - 1)
            .ok()
            .and_then(|i| seen.copies.get(i))
        {
            let cid = cid.clone();
            seen.confirmed.insert(cid);
        }
    }
    seen.confirms_released += 1;
}

async fn confirm_gate(upstream: String) -> ConfirmGate {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gate");
    let addr = listener.local_addr().expect("gate address");
    let seen = Arc::new(std::sync::Mutex::new(GateSeen::default()));
    let (release, released) = tokio::sync::watch::channel(0usize);
    let gate_seen = seen.clone();
    tokio::spawn(async move {
        // One client connection is gated.
        let Ok((down, _)) = listener.accept().await else {
            return;
        };
        let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
            return;
        };
        let (mut down_r, mut down_w) = down.into_split();
        let (mut up_r, mut up_w) = up.into_split();
        let seen = gate_seen.clone();
        tokio::spawn(async move {
            let mut protocol = [0u8; 8];
            if down_r.read_exact(&mut protocol).await.is_err()
                || up_w.write_all(&protocol).await.is_err()
            {
                return;
            }
            while let Ok(f) = read_frame(&mut down_r).await {
                client_frame(&mut seen.lock().expect("gate state"), &f);
                if up_w.write_all(&f.bytes()).await.is_err() {
                    return;
                }
            }
        });
        // Frames are read on a task of their own, so that waiting for a release never
        // cuts a read short.
        let (tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(f) = read_frame(&mut up_r).await {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        let seen = gate_seen;
        let mut released = released;
        // Frames of the copies' channel wait behind a held confirm (order within a
        // channel is kept).
        let mut held: std::collections::VecDeque<(Frame, bool)> = Default::default();
        loop {
            loop {
                let next = {
                    let mut s = seen.lock().expect("gate state");
                    let allowed = *released.borrow();
                    match held.front() {
                        Some((_, true)) if s.confirms_released >= allowed => None,
                        Some(_) => held.pop_front().inspect(|(f, confirm)| {
                            if *confirm {
                                confirm_released(&mut s, f);
                            }
                        }),
                        None => None,
                    }
                };
                let Some((f, _)) = next else { break };
                if down_w.write_all(&f.bytes()).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                f = frames.recv() => {
                    let Some(f) = f else { return };
                    let hold = {
                        let mut s = seen.lock().expect("gate state");
                        let confirm = broker_frame(&mut s, &f);
                        if confirm {
                            s.confirms_held += 1;
                        }
                        let queued = !held.is_empty() && Some(f.channel) == s.dl_channel;
                        (confirm || queued).then_some(confirm)
                    };
                    match hold {
                        Some(confirm) => held.push_back((f, confirm)),
                        None => {
                            if down_w.write_all(&f.bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                changed = released.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    });
    ConfirmGate {
        addr,
        seen,
        release,
    }
}

/// Polls `cond` on what the gate saw until it holds; panics after [`WAIT`] with
/// `what` and the gate's counts.
async fn gate_until(gate: &ConfirmGate, what: &str, cond: impl Fn(&GateSeen) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        {
            let s = gate.seen.lock().expect("gate state");
            if cond(&s) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {} copies published, {} confirms received \
                 and {} released, {} originals acked",
                s.copies.len(),
                s.confirms_held,
                s.confirms_released,
                s.acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Dead-letter copies are pipelined: with every publisher confirm held back by a gate
/// between the connection and the broker, `DEAD_LETTER_WINDOW` copies (of more
/// deliveries than that) are published before the first confirm is released, no more,
/// and no original is acked yet; released one confirm frame at a time, each original
/// is acked exactly once, only after its own copy's confirm, and every delivery ends
/// dead-lettered with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_copies_are_pipelined_and_each_original_acked_after_its_confirm() {
    use herald_mesh::amqp::DEAD_LETTER_WINDOW;

    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let admin = connect(&url).await;
    let service = unique("dl-window");
    let sq = service_topology(&admin, &service).await;
    let dlq = QueueSpec::dead_letter(dead_letter_queue(&service));
    admin.declare_queue(&dlq).await.expect("declare DLQ");
    let n = DEAD_LETTER_WINDOW + 6;
    for i in 0..n {
        admin
            .publish(RPC_EXCHANGE, &service, request(&service, &format!("w-{i}")))
            .await
            .expect("publish");
    }

    let (upstream, _) = through_proxy(&url, "127.0.0.1:1".parse().expect("addr"));
    let gate = confirm_gate(upstream).await;
    let (_, gated_url) = through_proxy(&url, gate.addr);
    let gated = AmqpConnection::open(&gated_url, "herald-test-gated", AmqpOptions::default())
        .await
        .expect("connect through the gate");
    gated
        .declare_queue(&sq)
        .await
        .expect("declare through the gate");
    let mut stream = gated
        .consume(
            &sq.name,
            ConsumeOptions::manual(u16::try_from(n).expect("n")),
        )
        .await
        .expect("consume");
    let mut settles = Vec::new();
    for _ in 0..n {
        let d = next(&mut stream).await;
        let reason = format!("test reason for {}", d.message.properties.correlation_id);
        settles.push(tokio::spawn(d.dead_letter(reason)));
    }

    gate_until(
        &gate,
        "a full window of dead-letter copies published before any confirm is released",
        |s| s.copies.len() >= DEAD_LETTER_WINDOW,
    )
    .await;
    // The window bounds them: with no confirm released, no further copy goes out
    // (checked after a pause, which can only make this pass wrongly, never fail).
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let s = gate.seen.lock().expect("gate state");
        assert_eq!(
            s.copies.len(),
            DEAD_LETTER_WINDOW,
            "the window bounds the copies in flight"
        );
        assert_eq!(s.confirms_released, 0);
        assert!(
            s.acked.is_empty(),
            "originals acked before any confirm: {:?}",
            s.acked
        );
    }

    // One confirm frame at a time (the broker may confirm several copies in one).
    loop {
        gate_until(&gate, "the originals of the released confirms acked", |s| {
            s.acked.len() == s.confirmed.len()
        })
        .await;
        let released = {
            let s = gate.seen.lock().expect("gate state");
            if s.acked.len() == n {
                break;
            }
            s.confirms_released
        };
        gate_until(&gate, "another confirm from the broker", |s| {
            s.confirms_held > released
        })
        .await;
        gate.release.send_replace(released + 1);
    }
    for settle in settles {
        settle
            .await
            .expect("dead_letter task")
            .expect("dead-lettered with its reason");
    }
    {
        let s = gate.seen.lock().expect("gate state");
        assert_eq!(s.copies.len(), n, "one copy per delivery");
        assert!(s.odd_acks.is_empty(), "unexpected acks: {:?}", s.odd_acks);
        let mut acked: Vec<&str> = s.acked.iter().map(|(c, _)| c.as_str()).collect();
        for (cid, confirmed) in &s.acked {
            assert!(confirmed, "{cid} was acked before its copy was confirmed");
        }
        acked.sort_unstable();
        acked.dedup();
        assert_eq!(acked.len(), n, "every original acked exactly once");
    }

    // The copies carry their reasons; nothing is left in the service queue.
    let mut dl = admin
        .consume(&dlq.name, ConsumeOptions::manual(100))
        .await
        .expect("consume DLQ");
    let mut reasons = std::collections::BTreeSet::new();
    for (cid, detail) in dead_letters_from(&mut dl, &sq.name, n).await {
        assert_eq!(
            detail.as_deref(),
            Some(format!("test reason for {cid}").as_str())
        );
        assert!(reasons.insert(cid.clone()), "{cid} dead-lettered twice");
    }
    assert_eq!(admin.queue_len(&sq.name).await.expect("length"), 0);
    drop((dl, stream));
    gated.close().await.expect("close gated");
    for q in [&sq.name, &dlq.name] {
        admin.delete_queue(q).await.expect("cleanup");
    }
    admin.close().await.expect("close");
}

/// A backlog of requests whose deadline passed while their service was down (here: 500,
/// published with a short `herald_deadline` and no broker expiration, so that the
/// broker keeps them for the service to refuse) is dead-lettered in full once the
/// service starts, each with its reason; the service queue ends empty and the service
/// answers calls made afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_expired_requests_is_dead_lettered_with_reasons() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    const BACKLOG: usize = 500;
    let admin = connect(&url).await;
    let name = unique("backlog");
    let sq = service_topology(&admin, &name).await;
    let dlq = QueueSpec::dead_letter(dead_letter_queue(&name));
    admin.declare_queue(&dlq).await.expect("declare DLQ");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    let deadline = now_ms() + 50;
    for i in 0..BACKLOG {
        let mut m = request(&name, &format!("late-{i}"));
        m.headers.deadline_ms = Some(deadline);
        admin
            .publish(RPC_EXCHANGE, &name, m)
            .await
            .expect("publish");
    }
    while now_ms() <= deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        admin.queue_len(&sq.name).await.expect("length") as usize,
        BACKLOG,
        "the backlog waits in the service queue"
    );

    let service = Mesh::connect(
        Arc::new(AmqpBackend::new(&url).expect("url")),
        MeshConfig::service(&name, ExampleService::new()),
    )
    .await
    .expect("service");
    let mut dl = admin
        .consume(&dlq.name, ConsumeOptions::manual(200))
        .await
        .expect("consume DLQ");
    let mut dead = std::collections::BTreeSet::new();
    for (cid, detail) in dead_letters_from(&mut dl, &sq.name, BACKLOG).await {
        let detail = detail.unwrap_or_default();
        assert!(
            detail.contains("deadline passed") && detail.contains(&format!("{name}.add")),
            "the reason {detail:?} does not say that the deadline of {name}.add passed"
        );
        assert!(dead.insert(cid.clone()), "{cid} dead-lettered twice");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while admin.queue_len(&sq.name).await.expect("length") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service queue still holds messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = amqp_client(&url).await;
    for a in 0..5 {
        assert_eq!(
            add_on(&client, &name, a)
                .await
                .expect("a call after the backlog"),
            serde_json::json!(a + 1)
        );
    }
    drop(dl);
    client.disconnect().await.expect("disconnect client");
    service.disconnect().await.expect("disconnect service");
    for q in [&sq.name, &dlq.name] {
        admin.delete_queue(q).await.expect("cleanup");
    }
    admin.close().await.expect("close");
}
