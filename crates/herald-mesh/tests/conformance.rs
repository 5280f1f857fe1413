//! The shared conformance suite of herald-mesh backends.
//!
//! Every function takes a backend (a connection factory) and checks one behaviour of
//! the mesh through the public API only, so the same suite runs against the
//! in-process broker (`tests/inproc_conformance.rs`) and RabbitMQ (mesh-B's amqp
//! tests). Use it from another test file with
//!
//! ```ignore
//! #[path = "conformance.rs"]
//! #[macro_use]
//! mod conformance;
//! conformance_tests!(my_backend_or_skip());   // an expression yielding Option<Arc<dyn Backend>>
//! ```
//!
//! Service names are unique per test (a random suffix), so tests can share one broker.
//! Every wait is bounded ([`WAIT`]) and polls; no timing assertions.
//!
//! This file compiled on its own is an empty test target.

// Test code: an unwrap that fails is the test's failure report.
#![allow(clippy::unwrap_used)]
#![allow(dead_code, unused_macros)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use herald_mesh::backend::{Backend, Connection, ConsumeOptions};
use herald_mesh::crypto::{NuropbCipher, ServiceKey};
use herald_mesh::example::ExampleService;
use herald_mesh::message::{
    self, DeathReason, Envelope, Headers, Message, MessageType, Payload, Properties, RPC_EXCHANGE,
};
use herald_mesh::service::{MethodInfo, RequestContext, ServiceRouter};
use herald_mesh::{
    EventBody, EventSubscription, Mesh, MeshConfig, MeshError, RequestOptions, ServiceError,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Upper bound of every wait in the suite.
pub const WAIT: Duration = Duration::from_secs(30);

/// A unique service name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Polls `cond` every 20 ms until it holds; panics after [`WAIT`] naming `what`.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One RSA key shared by the whole test binary (key generation is slow in debug).
pub fn service_key() -> Arc<ServiceKey> {
    static KEY: OnceLock<Arc<ServiceKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(ServiceKey::generate(1024).expect("generate RSA key")))
        .clone()
}

/// A second RSA key, unlike [`service_key`] (a service that restarted with a new key).
pub fn other_service_key() -> Arc<ServiceKey> {
    static KEY: OnceLock<Arc<ServiceKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(ServiceKey::generate(1024).expect("generate RSA key")))
        .clone()
}

async fn example(b: &Arc<dyn Backend>, name: &str) -> Mesh {
    Mesh::connect(b.clone(), MeshConfig::service(name, ExampleService::new()))
        .await
        .expect("connect example service")
}

async fn client(b: &Arc<dyn Backend>) -> Mesh {
    Mesh::connect(b.clone(), MeshConfig::client())
        .await
        .expect("connect client")
}

/// Connects an example service under a fresh name (`prefix-…`) and a client.
async fn example_and_client(b: &Arc<dyn Backend>, prefix: &str) -> (String, Mesh, Mesh) {
    let svc = unique(prefix);
    let s = example(b, &svc).await;
    let c = client(b).await;
    (svc, s, c)
}

/// Disconnects every handle, in order.
async fn disconnect_all(handles: impl IntoIterator<Item = Mesh>) {
    for m in handles {
        m.disconnect().await.unwrap();
    }
}

async fn call(c: &Mesh, svc: &str, method: &str, params: Value) -> Result<Value, MeshError> {
    c.request(svc, method, params, json!({}), Some(WAIT), None)
        .await
}

/// [`call`] that must succeed.
async fn call_ok(c: &Mesh, svc: &str, method: &str, params: Value) -> Value {
    call(c, svc, method, params)
        .await
        .unwrap_or_else(|e| panic!("{svc}.{method} failed: {e:?}"))
}

/// The next event of `sub`, within [`WAIT`].
async fn next_event(sub: &mut EventSubscription) -> EventBody {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event within WAIT")
        .expect("subscription open")
}

/// Takes dead letters of `service` from its dead-letter queue until `n` are seen
/// (other services' dead letters are skipped: the DLX is a fanout).
pub async fn dead_letters(conn: &Arc<dyn Connection>, service: &str, n: usize) -> Vec<Message> {
    let mut stream = conn
        .consume(
            &message::dead_letter_queue(service),
            ConsumeOptions::manual(100),
        )
        .await
        .expect("consume dead-letter queue");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        let d = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {n} dead letters of {service} arrived",
                    out.len()
                )
            })
            .expect("dead-letter stream ended");
        let (m, settle) = d.into_parts();
        settle.ack().await.expect("ack dead letter");
        let ours = m
            .death
            .as_ref()
            .is_some_and(|death| death.queue == message::service_queue(service));
        if ours {
            out.push(*m);
        }
    }
    out
}

fn raw_request(service: &str, body: &[u8], protocol: &'static str, kind: &'static str) -> Message {
    let mut headers = Headers::new(MessageType::Request, None);
    headers.nuropb_protocol = protocol.into();
    headers.nuropb_type = kind.into();
    let mut properties = Properties::new(format!("poison-{service}"));
    properties.mandatory = true;
    Message {
        properties,
        headers,
        payload: Payload::Bytes(bytes::Bytes::copy_from_slice(body)),
        death: None,
    }
}

/// A well-formed response message (correlation id set by the caller).
fn stray_response() -> Message {
    Message::from_envelope(Envelope::Response(herald_mesh::ResponseBody {
        result: json!("stray"),
        error: None,
        correlation_id: "stray".into(),
        trace_id: None,
        context: json!({}),
        warning: None,
        reply_to: None,
    }))
}

/// request/response: results, echo of params and context, trace id, correlation ids.
pub async fn request_response(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "rr").await;
    assert!(c.client_only());
    assert!(!s.client_only());
    assert_eq!(s.service_name(), svc);
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 2, "b": 3})).await,
        json!(5)
    );
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 1.5, "b": 2})).await,
        json!(3.5)
    );
    let echoed = c
        .request(
            &svc,
            "echo",
            json!({"x": [1, 2], "y": "z"}),
            json!({"user": "u1"}),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        echoed,
        json!({"params": {"x": [1, 2], "y": "z"}, "context": {"user": "u1"}})
    );
    let opts = RequestOptions {
        context: json!({"k": 1}),
        trace_id: Some("trace-abc".into()),
        ..RequestOptions::default()
    };
    let raw = c
        .request_raw(&svc, "add", json!({"a": 1, "b": 1}), opts)
        .await
        .unwrap();
    assert_eq!(raw.result, json!(2));
    assert_eq!(raw.error, None);
    assert_eq!(raw.trace_id.as_deref(), Some("trace-abc"));
    assert_eq!(raw.context, json!({"k": 1}));
    assert_eq!(raw.correlation_id.len(), 32);
    assert_eq!(raw.reply_to.as_deref(), Some(c.response_queue()));
    // Many concurrent requests all pair with their own replies.
    let calls = (0..50i64).map(|i| {
        let c = c.clone();
        let svc = svc.clone();
        async move { (i, call(&c, &svc, "add", json!({"a": i, "b": 1000})).await) }
    });
    for (i, r) in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap(), json!(i + 1000));
    }
    disconnect_all([c, s]).await;
}

/// Errors: handler errors keep their class, unknown and private methods, bad
/// parameters, unknown services, invalid arguments; the service keeps serving.
pub async fn errors(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "err").await;
    match call(
        &c,
        &svc,
        "fail",
        json!({"message": "boom", "kind": "handling"}),
    )
    .await
    {
        Err(MeshError::Handling {
            service,
            method,
            description,
        }) => {
            assert_eq!(
                (service.as_str(), method.as_str(), description.as_str()),
                (svc.as_str(), "fail", "boom")
            );
        }
        other => panic!("expected Handling, got {other:?}"),
    }
    match call(
        &c,
        &svc,
        "fail",
        json!({"message": "nope", "kind": "validation"}),
    )
    .await
    {
        Err(MeshError::Remote { error, description }) => {
            assert_eq!(error, "NuropbValidationError");
            assert_eq!(description, "nope");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    match call(&c, &svc, "fail", json!({"message": "x"})).await {
        Err(MeshError::Remote { error, description }) => {
            assert_eq!(error, "NuropbException");
            assert!(
                description.contains("Runtime exception calling"),
                "{description}"
            );
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    for m in ["no_such_method", "_private"] {
        match call(&c, &svc, m, json!({})).await {
            Err(MeshError::Handling { description, .. }) => {
                assert_eq!(description, format!("Unknown method {m}"))
            }
            other => panic!("expected Handling for {m}, got {other:?}"),
        }
    }
    match call(&c, &svc, "add", json!({"a": 1})).await {
        Err(MeshError::Remote { error, description }) => {
            assert_eq!(error, "NuropbValidationError");
            assert!(description.contains("invalid parameters"), "{description}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    match call(&c, &unique("absent"), "add", json!({})).await {
        Err(MeshError::NotFound { method, .. }) => assert_eq!(method, "add"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        call(&c, &svc, "add", json!([1, 2])).await,
        Err(MeshError::InvalidArgument { what: "params", .. })
    ));
    assert!(matches!(
        call(&c, "bad name!", "add", json!({})).await,
        Err(MeshError::InvalidArgument { .. })
    ));
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 4, "b": 4})).await,
        json!(8)
    );
    disconnect_all([c, s]).await;
}

/// A client-side deadline: a reply slower than the deadline gives `Timeout`, never a
/// hang, and the late reply is ignored.
pub async fn deadline(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "dl").await;
    let opts = RequestOptions {
        timeout: Some(Duration::from_millis(300)),
        ..RequestOptions::default()
    };
    let r = tokio::time::timeout(
        WAIT,
        c.request_with(&svc, "slow", json!({"seconds": 1.5}), opts),
    )
    .await
    .expect("request must resolve by its deadline");
    assert!(matches!(r, Err(MeshError::Timeout { .. })), "got {r:?}");
    wait_until("the late reply to be dropped as unpaired", || {
        c.unpaired_replies() >= 1
    })
    .await;
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 1, "b": 2})).await,
        json!(3)
    );
    disconnect_all([c, s]).await;
}

/// A ttl beyond what an AMQP `expiration` may portably carry (2^32 - 1 ms; RabbitMQ
/// answers one beyond its limit with a channel error that closes the handle's publish
/// channel) is refused before anything is sent, and the handle's other calls are not
/// disturbed; the largest allowed ttl works.
pub async fn ttl_out_of_range(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "bigttl").await;
    let too_long = Duration::from_millis(1 << 33);
    // Beyond every RabbitMQ's limit (current ones allow up to 10 years).
    let far_too_long = Duration::from_millis(u64::MAX);
    let (refused, refused_far, added) = tokio::join!(
        c.request(
            &svc,
            "add",
            json!({"a": 1, "b": 1}),
            json!({}),
            Some(too_long),
            None
        ),
        c.request(
            &svc,
            "add",
            json!({"a": 1, "b": 1}),
            json!({}),
            Some(far_too_long),
            None
        ),
        call(&c, &svc, "add", json!({"a": 2, "b": 3})),
    );
    match refused {
        Err(MeshError::InvalidArgument { what, value, .. }) => {
            assert_eq!((what, value.as_str()), ("ttl", "8589934592 ms"));
        }
        other => panic!("expected InvalidArgument for a 2^33 ms ttl, got {other:?}"),
    }
    assert!(
        matches!(
            refused_far,
            Err(MeshError::InvalidArgument { what: "ttl", .. })
        ),
        "got {refused_far:?}"
    );
    assert_eq!(added.unwrap(), json!(5));
    let opts = RequestOptions {
        ttl: Some(too_long),
        ..RequestOptions::default()
    };
    assert!(matches!(
        c.command(&svc, "add", json!({"a": 1, "b": 1}), opts).await,
        Err(MeshError::InvalidArgument { what: "ttl", .. })
    ));
    let max = herald_mesh::mesh::MAX_TTL;
    assert_eq!(
        c.request(
            &svc,
            "add",
            json!({"a": 4, "b": 4}),
            json!({}),
            Some(max),
            None
        )
        .await
        .unwrap(),
        json!(8)
    );
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 1, "b": 2})).await,
        json!(3)
    );
    match Mesh::connect(b.clone(), MeshConfig::client().default_ttl(too_long)).await {
        Err(MeshError::InvalidArgument { what, .. }) => assert_eq!(what, "default ttl"),
        other => panic!("expected InvalidArgument for a 2^33 ms default ttl, got {other:?}"),
    }
    disconnect_all([c, s]).await;
}

/// ttl expiry: a request whose ttl passes while queued behind a busy service is
/// dead-lettered with reason `expired` and the caller gets an error.
pub async fn ttl_expiry(b: Arc<dyn Backend>) {
    let svc = unique("ttl");
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let router = ServiceRouter::new("1", "busy")
        .method(
            MethodInfo::new("block", "signals, then holds the only prefetch slot")
                .param("ms", "int", ""),
            move |p: WorkParams, _ctx: Arc<RequestContext>| {
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(());
                    tokio::time::sleep(Duration::from_millis(p.ms)).await;
                    Ok::<_, ServiceError>(json!(p.ms))
                }
            },
        )
        .method(
            MethodInfo::new("add", "a + b")
                .param("a", "int", "")
                .param("b", "int", ""),
            |p: AddParams, _ctx: Arc<RequestContext>| async move {
                Ok::<_, ServiceError>(json!(p.a + p.b))
            },
        );
    let s = Mesh::connect(b.clone(), MeshConfig::service(&svc, router).prefetch(1))
        .await
        .unwrap();
    let c = client(&b).await;
    let busy = {
        let c = c.clone();
        let svc = svc.clone();
        tokio::spawn(async move { call(&c, &svc, "block", json!({"ms": 2000})).await })
    };
    // The only prefetch slot is taken once the handler has started.
    tokio::time::timeout(WAIT, started.recv())
        .await
        .expect("block started")
        .expect("handler alive");
    let r = tokio::time::timeout(
        WAIT,
        c.request(
            &svc,
            "add",
            json!({"a": 40, "b": 2}),
            json!({}),
            Some(Duration::from_millis(200)),
            None,
        ),
    )
    .await
    .expect("an expiring request must resolve");
    assert!(
        matches!(
            r,
            Err(MeshError::Timeout { .. }) | Err(MeshError::Expired { .. })
        ),
        "got {r:?}"
    );
    let probe = b.connect("dlq-probe").await.unwrap();
    let dead = dead_letters(&probe, &svc, 1).await;
    let death = dead[0].death.clone().unwrap();
    assert_eq!(death.reason, DeathReason::Expired);
    assert_eq!(death.exchange, RPC_EXCHANGE);
    assert_eq!(death.routing_key, svc);
    match dead[0].payload.envelope().unwrap().as_ref() {
        Envelope::Request(body) => assert_eq!(body.params.get("a"), Some(&json!(40))),
        other => panic!("expected the request in the DLQ, got {other:?}"),
    }
    assert_eq!(busy.await.unwrap().unwrap(), json!(2000));
    probe.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// Poison messages (bad JSON, wrong protocol, unknown type, a list body, a stray
/// response) are dead-lettered once each with reason `rejected` and, in words, the
/// error that decoding them gave (`DeathInfo::detail`, header `x-herald-reason`),
/// keeping their body, headers and routing key; the caller of a decodable-but-bad
/// request gets an error reply, and the service keeps serving.
pub async fn poison_messages(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "poison").await;
    let conn = b.connect("poison-probe").await.unwrap();
    // Each with a fragment of the decode error its dead letter must carry.
    let poison = [
        (
            raw_request(&svc, b"not json at all", "0.1.1", "request"),
            "invalid nuropb JSON body",
        ),
        (
            raw_request(&svc, br#"{"tag":"request"}"#, "9.9.9", "request"),
            "unsupported nuropb_protocol \"9.9.9\"",
        ),
        (
            raw_request(&svc, br#"{"tag":"request"}"#, "0.1.1", "bogus"),
            "unknown nuropb_type \"bogus\"",
        ),
        (
            raw_request(&svc, b"[1,2,3]", "0.1.1", "request"),
            "invalid nuropb JSON body",
        ),
        (
            raw_request(&svc, b"\xff\xfe\x00garbage", "0.1.1", "command"),
            "invalid nuropb JSON body",
        ),
        // Well formed, but a response has no business on a service queue.
        (stray_response(), "stray response"),
    ];
    let n = poison.len();
    let mut sent = Vec::new();
    for (i, (mut m, error)) in poison.into_iter().enumerate() {
        m.properties.correlation_id = format!("poison-{i}");
        if i == 0 {
            // A request with a reply_to gets an error reply (unpaired here).
            m.properties.reply_to = Some(c.response_queue().to_owned());
        }
        sent.push((m.clone(), error));
        conn.publish(RPC_EXCHANGE, &svc, m).await.unwrap();
    }
    let dead = dead_letters(&conn, &svc, n).await;
    assert_eq!(dead.len(), n);
    for m in &dead {
        let death = m.death.as_ref().unwrap();
        assert_eq!(death.reason, DeathReason::Rejected);
        assert_eq!(death.exchange, RPC_EXCHANGE);
        assert_eq!(death.routing_key, svc, "the original routing key");
        let (original, error) = sent
            .iter()
            .find(|(o, _)| o.properties.correlation_id == m.properties.correlation_id)
            .unwrap_or_else(|| panic!("an unexpected dead letter {m:?}"));
        let detail = death.detail.as_deref().unwrap_or_else(|| {
            panic!(
                "dead letter {} carries no reason",
                m.properties.correlation_id
            )
        });
        assert!(
            detail.contains(error),
            "dead letter {}: reason {detail:?} does not name {error:?}",
            m.properties.correlation_id
        );
        assert_eq!(
            m.payload.to_bytes().unwrap(),
            original.payload.to_bytes().unwrap(),
            "the original body"
        );
        assert_eq!(m.headers.nuropb_protocol, original.headers.nuropb_protocol);
        assert_eq!(m.headers.nuropb_type, original.headers.nuropb_type);
        assert_eq!(m.properties.reply_to, original.properties.reply_to);
    }
    wait_until("the error reply to the poison request", || {
        c.unpaired_replies() >= 1
    })
    .await;
    for i in 0..10 {
        assert_eq!(
            call_ok(&c, &svc, "add", json!({"a": i, "b": 1})).await,
            json!(i + 1)
        );
    }
    conn.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// A request whose `herald_deadline` passed before the service took it is not run: it
/// is dead-lettered (reason `rejected`) with a reason naming the deadline
/// (`DeathInfo::detail`, header `x-herald-reason`), keeping its body and routing key,
/// and its caller gets an error reply.
pub async fn past_deadline(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "late").await;
    let conn = b.connect("late-probe").await.unwrap();
    let mut m = Message::from_envelope(Envelope::Request(message::RequestBody {
        service: svc.clone(),
        method: "add".into(),
        params: json!({"a": 20, "b": 22}).as_object().unwrap().clone(),
        correlation_id: "late-1".into(),
        context: json!({}),
        trace_id: None,
    }));
    m.properties.correlation_id = "late-1".into();
    m.properties.reply_to = Some(c.response_queue().to_owned());
    m.headers.deadline_ms = Some(1_000);
    conn.publish(RPC_EXCHANGE, &svc, m).await.unwrap();
    let dead = dead_letters(&conn, &svc, 1).await;
    let death = dead[0].death.as_ref().unwrap();
    assert_eq!(death.reason, DeathReason::Rejected);
    assert_eq!(death.exchange, RPC_EXCHANGE);
    assert_eq!(death.routing_key, svc);
    let detail = death
        .detail
        .as_deref()
        .expect("the dead letter of an expired request carries its reason");
    assert!(
        detail.contains("deadline passed") && detail.contains("herald_deadline 1000"),
        "reason {detail:?} does not name the deadline"
    );
    assert_eq!(dead[0].properties.correlation_id, "late-1");
    match dead[0].payload.envelope().unwrap().as_ref() {
        Envelope::Request(body) => assert_eq!(body.params.get("a"), Some(&json!(20))),
        other => panic!("expected the request in the DLQ, got {other:?}"),
    }
    wait_until("the error reply to the expired request", || {
        c.unpaired_replies() >= 1
    })
    .await;
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 1, "b": 1})).await,
        json!(2)
    );
    conn.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// Exactly one settlement per delivery: after a mix of successes, handler errors,
/// commands and poison, exactly the poison messages are in the DLQ (no duplicates)
/// and the service still answers (a double ack would kill a RabbitMQ channel).
pub async fn exactly_one_ack(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "ack").await;
    let conn = b.connect("ack-probe").await.unwrap();
    for i in 0..20i64 {
        assert_eq!(
            call_ok(&c, &svc, "add", json!({"a": i, "b": i})).await,
            json!(2 * i)
        );
        assert!(
            call(
                &c,
                &svc,
                "fail",
                json!({"message": "x", "kind": "handling"})
            )
            .await
            .is_err()
        );
        c.command(
            &svc,
            "add",
            json!({"a": 1, "b": 2}),
            RequestOptions::default(),
        )
        .await
        .unwrap();
        if i % 5 == 0 {
            let mut m = raw_request(&svc, b"{broken", "0.1.1", "request");
            m.properties.correlation_id = format!("ack-poison-{i}");
            conn.publish(RPC_EXCHANGE, &svc, m).await.unwrap();
        }
    }
    let dead = dead_letters(&conn, &svc, 4).await;
    assert_eq!(dead.len(), 4);
    // Nothing else is dead-lettered: a marker poison message is the next one seen.
    let mut m = raw_request(&svc, b"{marker", "0.1.1", "request");
    m.properties.correlation_id = "ack-marker".into();
    conn.publish(RPC_EXCHANGE, &svc, m).await.unwrap();
    let next = dead_letters(&conn, &svc, 1).await;
    assert_eq!(next[0].properties.correlation_id, "ack-marker");
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 7, "b": 7})).await,
        json!(14)
    );
    conn.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// Commands: no reply, executed (observed through an emitted event); unknown service
/// is an error.
pub async fn command(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "cmd").await;
    let topic = format!("cmd.{}", unique("t"));
    let mut sub = c.subscribe(&topic).await.unwrap();
    c.command(
        &svc,
        "emit",
        json!({"topic": topic, "payload": {"n": 1}}),
        RequestOptions::default(),
    )
    .await
    .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.topic, topic);
    assert_eq!(ev.event, json!({"n": 1}));
    assert!(matches!(
        c.command(&unique("absent"), "x", json!({}), RequestOptions::default())
            .await,
        Err(MeshError::NotFound { .. })
    ));
    disconnect_all([c, s]).await;
}

/// Confirmed commands (`Mesh::command_confirmed`, and `Mesh::command` on a handle with
/// `MeshConfig::confirm_commands(true)`): `Ok` once the broker took the command into
/// the service's queue (the command then runs), `NotFound` when no queue is bound for
/// the service, and each of many concurrent ones, half of them to missing services,
/// gets its own outcome.
pub async fn command_confirmed(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "cmdc").await;
    let topic = format!("cmdc.{}", unique("t"));
    let mut sub = c.subscribe(&topic).await.unwrap();
    c.command_confirmed(
        &svc,
        "emit",
        json!({"topic": topic, "payload": {"n": 1}}),
        RequestOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut sub).await.event, json!({"n": 1}));
    let absent = unique("absent");
    let err = c
        .command_confirmed(&absent, "x", json!({}), RequestOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MeshError::NotFound { service, method } if *service == absent && method == "x"),
        "{err:?}"
    );

    // The switch on the handle makes every command a confirmed one.
    let confirming = Mesh::connect(b.clone(), MeshConfig::client().confirm_commands(true))
        .await
        .unwrap();
    confirming
        .command(
            &svc,
            "emit",
            json!({"topic": topic, "payload": {"n": 2}}),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await.event, json!({"n": 2}));
    assert!(matches!(
        confirming
            .command(&absent, "x", json!({}), RequestOptions::default())
            .await,
        Err(MeshError::NotFound { .. })
    ));
    let commands = (0..20i64).map(|i| {
        let target = if i % 2 == 0 {
            svc.clone()
        } else {
            unique("absent")
        };
        let confirming = confirming.clone();
        async move {
            let r = confirming
                .command_confirmed(
                    &target,
                    "add",
                    json!({"a": i, "b": 1}),
                    RequestOptions::default(),
                )
                .await;
            (i, target, r)
        }
    });
    for (i, target, r) in futures::future::join_all(commands).await {
        if i % 2 == 0 {
            assert!(r.is_ok(), "command {i} to {target}: {r:?}");
        } else {
            assert!(
                matches!(&r, Err(MeshError::NotFound { service, .. }) if *service == target),
                "command {i} to {target}: {r:?}"
            );
        }
    }
    // The service is still fine after all of them.
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 1, "b": 1})).await,
        json!(2)
    );
    disconnect_all([confirming, c, s]).await;
}

/// Events by topic pattern: `*` and `#` subscriptions, service event bindings
/// (`interop.#` on the example service), emitted events carry the call's ids.
pub async fn events(b: Arc<dyn Backend>) {
    let (svc, s, c) = example_and_client(&b, "ev").await;
    let root = unique("orders").replace('-', "_");
    let mut star = c.subscribe(&format!("{root}.*")).await.unwrap();
    let mut hash = c.subscribe(&format!("{root}.#")).await.unwrap();
    c.publish_event(&format!("{root}.item.created"), json!(1), json!({}), None)
        .await
        .unwrap();
    c.publish_event(
        &format!("{root}.created"),
        json!(2),
        json!({"who": "me"}),
        Some("tr".into()),
    )
    .await
    .unwrap();
    let e = next_event(&mut star).await;
    assert_eq!(
        (e.topic.as_str(), &e.event),
        (format!("{root}.created").as_str(), &json!(2))
    );
    assert_eq!(e.context, json!({"who": "me"}));
    assert_eq!(e.trace_id.as_deref(), Some("tr"));
    let e1 = next_event(&mut hash).await;
    let e2 = next_event(&mut hash).await;
    assert_eq!((e1.event, e2.event), (json!(1), json!(2)));
    // The service's own binding on interop.#.
    let topic = format!("interop.{}", unique("x").replace('-', "_"));
    c.publish_event(&topic, json!({"hello": "svc"}), json!({}), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = call_ok(&c, &svc, "events_seen", json!({})).await;
        if seen
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["topic"] == json!(topic))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service never saw {topic}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An emitted event carries the request's trace id.
    let etopic = format!("{root}.emitted");
    let opts = RequestOptions {
        trace_id: Some("trace-emit".into()),
        ..RequestOptions::default()
    };
    c.request_with(&svc, "emit", json!({"topic": etopic, "payload": [1]}), opts)
        .await
        .unwrap();
    let e = next_event(&mut star).await;
    assert_eq!(e.topic, etopic);
    assert_eq!(e.trace_id.as_deref(), Some("trace-emit"));
    assert!(matches!(
        c.publish_event("a.*", json!(1), json!({}), None).await,
        Err(MeshError::InvalidArgument { .. })
    ));
    assert!(matches!(
        c.subscribe("a..b").await,
        Err(MeshError::InvalidArgument { .. })
    ));
    disconnect_all([c, s]).await;
}

fn leaders(ms: &[Mesh]) -> usize {
    ms.iter().filter(|m| m.is_leader()).count()
}

/// Leader uniqueness and failover: exactly one live instance leads; leadership moves
/// when the leader disconnects, and when it dies without disconnecting.
pub async fn leader(b: Arc<dyn Backend>) {
    let svc = unique("lead");
    let mut ms = Vec::new();
    for _ in 0..3 {
        let cfg = MeshConfig::service(&svc, ExampleService::new())
            .leader_interval(Duration::from_millis(50));
        ms.push(Mesh::connect(b.clone(), cfg).await.unwrap());
    }
    let c = client(&b).await;
    assert!(!c.is_leader());
    wait_until("one leader among three", || leaders(&ms) == 1).await;
    // Stays unique over several retry rounds.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(leaders(&ms), 1);
    }
    let i = ms.iter().position(|m| m.is_leader()).unwrap();
    let old = ms.remove(i);
    let mut watch = old.leader_watch();
    old.disconnect().await.unwrap();
    assert!(watch.wait_for(false).await);
    assert!(!old.is_leader());
    wait_until("a new leader after a graceful disconnect", || {
        leaders(&ms) == 1
    })
    .await;
    let i = ms.iter().position(|m| m.is_leader()).unwrap();
    let crashed = ms.remove(i);
    drop(crashed);
    wait_until("a new leader after a crash", || leaders(&ms) == 1).await;
    assert!(ms[0].is_leader());
    c.disconnect().await.unwrap();
    disconnect_all(ms).await;
}

/// describe: the nuropb document shape; requires_encryption and has_public_key.
pub async fn describe(b: Arc<dyn Backend>) {
    let svc = unique("desc");
    let key = service_key();
    let s = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, ExampleService::new()).service_keys(key.clone()),
    )
    .await
    .unwrap();
    let c = client(&b).await;
    let d = c.describe_service(&svc, false).await.unwrap();
    assert_eq!(d.service_name, svc);
    assert!(d.encrypted_methods);
    assert!(
        d.public_key
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    for m in [
        "add",
        "echo",
        "fail",
        "slow",
        "emit",
        "events_seen",
        "secret_echo",
    ] {
        assert!(d.methods.contains_key(m), "describe lacks {m}");
    }
    let add = d.methods["add"].parameters.clone().unwrap();
    assert_eq!(add.type_name, "object");
    assert_eq!(
        add.properties
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(add.required, ["a", "b"]);
    // A required parameter's default is "", as nuropb's map_default gives it.
    for (name, schema) in &add.properties {
        assert_eq!(schema.default, json!(""), "default of required {name}");
    }
    let fail = d.methods["fail"].parameters.clone().unwrap();
    let kind = fail.properties.iter().find(|p| p.0 == "kind").unwrap();
    assert_eq!(kind.1.default, json!("runtime"));
    assert!(!fail.required.contains(&"kind".to_owned()));
    // The raw document has nuropb's shapes: properties as a list of pairs, a bool.
    let raw = call_ok(&c, &svc, "nuropb_describe", json!({})).await;
    assert!(raw["methods"]["add"]["parameters"]["properties"][0].is_array());
    assert_eq!(
        raw["methods"]["add"]["parameters"]["properties"][0][1]["default"],
        json!("")
    );
    assert_eq!(raw["encrypted_methods"], json!(true));
    assert!(c.requires_encryption(&svc, "secret_echo").await.unwrap());
    assert!(!c.requires_encryption(&svc, "add").await.unwrap());
    assert!(c.has_public_key(&svc).await.unwrap());
    // Without keys: no public key published.
    let svc2 = unique("desc");
    let s2 = example(&b, &svc2).await;
    assert!(!c.has_public_key(&svc2).await.unwrap());
    assert!(matches!(
        c.describe_service(&unique("absent"), false).await,
        Err(MeshError::NotFound { .. })
    ));
    disconnect_all([c, s, s2]).await;
}

/// Encryption: `requires_encryption` is enforced; encrypted calls work against every
/// instance of a service sharing one key; encrypted errors come back decrypted.
pub async fn encryption(b: Arc<dyn Backend>) {
    use std::sync::atomic::Ordering;
    let svc = unique("enc");
    let key = service_key();
    let mut instances = Vec::new();
    let mut served = Vec::new();
    for _ in 0..2 {
        let counted = CountsEncrypted::default();
        served.push(counted.encrypted.clone());
        let cfg = MeshConfig::service(&svc, counted).service_keys(key.clone());
        instances.push(Mesh::connect(b.clone(), cfg).await.unwrap());
    }
    let c = Mesh::connect(
        b.clone(),
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await
    .unwrap();
    match call(&c, &svc, "secret_echo", json!({"text": "hi"})).await {
        Err(MeshError::EncryptionRequired { service, method }) => {
            assert_eq!(
                (service.as_str(), method.as_str()),
                (svc.as_str(), "secret_echo")
            );
        }
        other => panic!("expected EncryptionRequired, got {other:?}"),
    }
    let enc = || RequestOptions {
        encrypted: true,
        context: json!({"c": 1}),
        ..RequestOptions::default()
    };
    for i in 0..8 {
        let text = format!("secret {i}");
        let r = c
            .request_with(&svc, "secret_echo", json!({"text": text}), enc())
            .await
            .unwrap();
        assert_eq!(r, json!(text));
    }
    // Both instances (sharing the key) decrypt and answer. Which one a call reaches is
    // the broker's choice (one call at a time may all go to the same one), so the one
    // that served is stopped and the next calls can only reach the other.
    let counts = || {
        served
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };
    assert_eq!(counts().iter().sum::<usize>(), 8, "{:?}", counts());
    let busy = usize::from(counts()[1] > counts()[0]);
    let stopped = instances.remove(busy);
    stopped.disconnect().await.unwrap();
    let before = counts()[1 - busy];
    for _ in 0..2 {
        let r = c
            .request_with(&svc, "secret_echo", json!({"text": "more"}), enc())
            .await
            .unwrap();
        assert_eq!(r, json!("more"));
    }
    assert_eq!(
        counts()[1 - busy],
        before + 2,
        "the other instance decrypted and served: {:?}",
        counts()
    );
    assert_eq!(
        c.request_with(&svc, "add", json!({"a": 1, "b": 2}), enc())
            .await
            .unwrap(),
        json!(3)
    );
    assert!(matches!(
        c.request_with(
            &svc,
            "fail",
            json!({"message": "m", "kind": "handling"}),
            enc()
        )
        .await,
        Err(MeshError::Handling { .. })
    ));
    // A client without a cipher cannot encrypt.
    let plain = client(&b).await;
    assert!(matches!(
        plain
            .request_with(&svc, "secret_echo", json!({"text": "x"}), enc())
            .await,
        Err(MeshError::Encryption(_))
    ));
    // A service without keys refuses encrypted traffic with an error reply.
    let svc2 = unique("enc");
    let s2 = example(&b, &svc2).await;
    let conn = b.connect("enc-probe").await.unwrap();
    let mut m = raw_request(&svc2, b"AAAA.BBBB", "0.1.1", "request");
    m.headers.encrypted = true;
    conn.publish(RPC_EXCHANGE, &svc2, m).await.unwrap();
    let dead = dead_letters(&conn, &svc2, 1).await;
    assert_eq!(
        dead[0].death.as_ref().unwrap().reason,
        DeathReason::Rejected
    );
    assert_eq!(
        call_ok(&c, &svc2, "add", json!({"a": 1, "b": 1})).await,
        json!(2)
    );
    conn.close().await.unwrap();
    disconnect_all(instances).await;
    disconnect_all([s2, plain, c]).await;
}

/// A service that restarts with a new key: the client's cached describe document (and
/// the key in it) is stale; the call the service cannot decrypt makes the client fetch
/// the document again and retry once, so the call succeeds.
pub async fn encryption_key_change(b: Arc<dyn Backend>) {
    use herald_mesh::service::ServiceKeys;
    let svc = unique("rekey");
    let connect = |key: Arc<ServiceKey>| {
        let cfg = MeshConfig::service(&svc, ExampleService::new()).service_keys(key);
        Mesh::connect(b.clone(), cfg)
    };
    let old_key = service_key();
    let new_key = other_service_key();
    assert_ne!(old_key.public_key_pem(), new_key.public_key_pem());
    let s1 = connect(old_key.clone()).await.unwrap();
    let c = Mesh::connect(
        b.clone(),
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await
    .unwrap();
    let enc = || RequestOptions {
        encrypted: true,
        ttl: Some(WAIT),
        ..RequestOptions::default()
    };
    let r = c
        .request_with(&svc, "secret_echo", json!({"text": "one"}), enc())
        .await
        .unwrap();
    assert_eq!(r, json!("one"));
    let cached = c.describe_service(&svc, false).await.unwrap();
    assert_eq!(cached.public_key, Some(old_key.public_key_pem()));
    // The service is replaced by one with another key.
    s1.disconnect().await.unwrap();
    let s2 = connect(new_key.clone()).await.unwrap();
    for text in ["two", "three"] {
        let r = c
            .request_with(&svc, "secret_echo", json!({"text": text}), enc())
            .await
            .unwrap_or_else(|e| panic!("encrypted call after the key change: {e:?}"));
        assert_eq!(r, json!(text));
    }
    let fresh = c.describe_service(&svc, false).await.unwrap();
    assert_eq!(fresh.public_key, Some(new_key.public_key_pem()));
    disconnect_all([c, s2]).await;
}

/// An encrypted call's key lookup (describe) runs within the caller's deadline: to a
/// service whose queue exists but that nobody consumes, a call with a 300 ms deadline
/// ends with `Timeout` for that call, not after describe's own 60 s.
pub async fn encryption_key_lookup_deadline(b: Arc<dyn Backend>) {
    let svc = unique("nokey");
    let conn = b.connect("idle-service-queue").await.unwrap();
    for ex in herald_mesh::backend::nuropb_exchanges() {
        conn.declare_exchange(&ex).await.unwrap();
    }
    let queue = herald_mesh::backend::QueueSpec::service(&svc, &[]);
    conn.declare_queue(&queue).await.unwrap();
    let c = Mesh::connect(
        b.clone(),
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await
    .unwrap();
    let opts = RequestOptions {
        encrypted: true,
        timeout: Some(Duration::from_millis(300)),
        ..RequestOptions::default()
    };
    // Generous: the old behaviour waited a minute.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        c.request_with(&svc, "secret_echo", json!({"text": "x"}), opts),
    )
    .await
    .expect("an encrypted call must resolve by its deadline, key lookup included");
    match r {
        Err(MeshError::Timeout {
            service,
            method,
            after,
        }) => {
            assert_eq!(
                (service.as_str(), method.as_str()),
                (svc.as_str(), "secret_echo")
            );
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    conn.close().await.unwrap();
    disconnect_all([c]).await;
}

/// The example service, counting the encrypted calls it handled.
#[derive(Debug, Default)]
struct CountsEncrypted {
    inner: ExampleService,
    encrypted: Arc<std::sync::atomic::AtomicUsize>,
}

impl herald_mesh::service::Service for CountsEncrypted {
    fn info(&self) -> herald_mesh::service::ServiceInfo {
        self.inner.info()
    }
    fn call(
        &self,
        method: &str,
        params: &serde_json::Map<String, Value>,
        ctx: Arc<RequestContext>,
    ) -> futures::future::BoxFuture<'static, Result<Value, ServiceError>> {
        if ctx.encrypted {
            self.encrypted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.call(method, params, ctx)
    }
    fn event_bindings(&self) -> Vec<String> {
        self.inner.event_bindings()
    }
    fn on_event(
        &self,
        event: EventBody,
    ) -> futures::future::BoxFuture<'static, Result<(), ServiceError>> {
        self.inner.on_event(event)
    }
}

#[derive(Deserialize)]
struct WorkParams {
    ms: u64,
}

#[derive(Deserialize)]
struct AddParams {
    a: i64,
    b: i64,
}

/// Graceful shutdown: requests in flight when `disconnect` starts are finished,
/// answered and settled exactly once: none of them is handed back to the broker, so a
/// second instance started afterwards does not run them again.
pub async fn graceful_shutdown(b: Arc<dyn Backend>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let svc = unique("grace");
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let runs = Arc::new(AtomicUsize::new(0));
    let make_router = || {
        let tx = tx.clone();
        let runs = runs.clone();
        ServiceRouter::new("1", "work").method(
            MethodInfo::new("work", "signals, sleeps, answers").param("ms", "int", ""),
            move |p: WorkParams, _ctx: Arc<RequestContext>| {
                runs.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                    tokio::time::sleep(Duration::from_millis(p.ms)).await;
                    Ok::<_, ServiceError>(json!(p.ms))
                }
            },
        )
    };
    let s = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, make_router()).prefetch(8),
    )
    .await
    .unwrap();
    let c = client(&b).await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            let svc = svc.clone();
            tokio::spawn(async move { call(&c, &svc, "work", json!({"ms": 500})).await })
        })
        .collect();
    for _ in 0..4 {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("handler started")
            .unwrap();
    }
    s.disconnect().await.unwrap();
    assert!(!s.connected());
    for h in calls {
        assert_eq!(h.await.unwrap().unwrap(), json!(500));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4, "each request ran once");
    assert!(matches!(
        s.request(&svc, "work", json!({"ms": 1}), json!({}), None, None)
            .await,
        Err(MeshError::Disconnected)
    ));
    // A new instance on the same queue: anything the first one handed back would be
    // ahead of this marker call (and run, and answered unpaired).
    let s2 = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, make_router()).prefetch(8),
    )
    .await
    .unwrap();
    assert_eq!(call_ok(&c, &svc, "work", json!({"ms": 0})).await, json!(0));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "requests finished during the graceful shutdown were redelivered"
    );
    assert_eq!(c.unpaired_replies(), 0);
    disconnect_all([s2, c]).await;
}

#[derive(Deserialize)]
struct IdWork {
    id: u64,
    ms: u64,
}

/// Holds back the delivery of one call (`work` with id [`Gate::hold_id`]) on a service
/// queue until the instance consuming it has begun to disconnect (its handle reports
/// itself disconnected), then hands it over at once: a delivery that arrives just as
/// `disconnect` stops consuming. Until then the instance takes no other delivery.
struct Gate {
    queue: String,
    hold_id: u64,
    /// Set once the call is held.
    holding: std::sync::atomic::AtomicBool,
    /// Set once it was handed over.
    released: std::sync::atomic::AtomicBool,
    /// The instance whose disconnect releases the call (taken out at the end of the
    /// test: the instance's connection holds the gate).
    instance: std::sync::Mutex<Option<Mesh>>,
}

impl Gate {
    fn is_held_call(&self, d: &herald_mesh::Delivery) -> bool {
        match d.message.payload.envelope() {
            Ok(env) => match env.as_ref() {
                Envelope::Request(b) => {
                    b.method == "work" && b.params.get("id") == Some(&json!(self.hold_id))
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    fn instance_disconnecting(&self) -> bool {
        self.instance
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|m| !m.connected())
    }
}

struct GatedStream {
    inner: herald_mesh::backend::DeliveryStream,
    gate: Arc<Gate>,
    held: Option<herald_mesh::Delivery>,
}

impl futures::Stream for GatedStream {
    type Item = herald_mesh::Delivery;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<herald_mesh::Delivery>> {
        use std::sync::atomic::Ordering;
        use std::task::Poll;
        let this = self.get_mut();
        if this.held.is_some() {
            if this.gate.instance_disconnecting() {
                this.gate.released.store(true, Ordering::SeqCst);
                return Poll::Ready(this.held.take());
            }
            // No wake-up is registered: the consumer is polled again when it is woken
            // for something else (its stop signal).
            return Poll::Pending;
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(d))
                if !this.gate.holding.load(Ordering::SeqCst) && this.gate.is_held_call(&d) =>
            {
                this.held = Some(d);
                this.gate.holding.store(true, Ordering::SeqCst);
                Poll::Pending
            }
            other => other,
        }
    }
}

/// A backend whose connections gate the consumers of [`Gate::queue`].
#[derive(Debug)]
struct GateBackend {
    inner: Arc<dyn Backend>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("queue", &self.queue).finish()
    }
}

#[derive(Debug)]
struct GateConn {
    inner: Arc<dyn Connection>,
    gate: Arc<Gate>,
}

impl Connection for GateConn {
    fn declare_exchange<'a>(
        &'a self,
        spec: &'a herald_mesh::backend::ExchangeSpec,
    ) -> futures::future::BoxFuture<'a, Result<(), MeshError>> {
        self.inner.declare_exchange(spec)
    }
    fn declare_queue<'a>(
        &'a self,
        spec: &'a herald_mesh::backend::QueueSpec,
    ) -> futures::future::BoxFuture<'a, Result<(), MeshError>> {
        self.inner.declare_queue(spec)
    }
    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        message: Message,
    ) -> herald_mesh::backend::BackendFuture<'a, Result<(), MeshError>> {
        self.inner.publish(exchange, routing_key, message)
    }
    fn consume<'a>(
        &'a self,
        queue: &'a str,
        options: ConsumeOptions,
    ) -> futures::future::BoxFuture<'a, Result<herald_mesh::backend::DeliveryStream, MeshError>>
    {
        Box::pin(async move {
            let inner = self.inner.consume(queue, options).await?;
            if queue != self.gate.queue {
                return Ok(inner);
            }
            let gated = GatedStream {
                inner,
                gate: self.gate.clone(),
                held: None,
            };
            Ok(Box::pin(gated) as herald_mesh::backend::DeliveryStream)
        })
    }
    fn consume_direct_replies(
        &self,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Option<(String, herald_mesh::backend::DeliveryStream)>, MeshError>,
    > {
        self.inner.consume_direct_replies()
    }
    fn try_lead<'a>(
        &'a self,
        service: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<bool, MeshError>> {
        self.inner.try_lead(service)
    }
    fn trim_queue<'a>(
        &'a self,
        queue: &'a str,
        max_len: usize,
        max_drop: usize,
    ) -> futures::future::BoxFuture<'a, Result<herald_mesh::backend::Trimmed, MeshError>> {
        self.inner.trim_queue(queue, max_len, max_drop)
    }
    fn close(&self) -> futures::future::BoxFuture<'_, Result<(), MeshError>> {
        self.inner.close()
    }
    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    fn link_losses(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.link_losses()
    }
    fn forget_queue(&self, queue: &str) {
        self.inner.forget_queue(queue)
    }
}

impl Backend for GateBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn mesh_name(&self) -> &str {
        self.inner.mesh_name()
    }
    fn connect<'a>(
        &'a self,
        client_name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Arc<dyn Connection>, MeshError>> {
        Box::pin(async move {
            let inner = self.inner.connect(client_name).await?;
            Ok(Arc::new(GateConn {
                inner,
                gate: self.gate.clone(),
            }) as Arc<dyn Connection>)
        })
    }
}

/// Graceful shutdown under load: while a client keeps calls flowing and a second
/// instance serves them too, `disconnect` of the first instance starts no delivery it
/// takes once it stopped consuming (that delivery goes back to the queue unstarted and
/// the second instance runs it): every call is answered and each ran exactly once.
///
/// The first instance is handed a long call at the very moment it stops consuming (a
/// [`Gate`]); had it started that call, the call would outlast the grace, its reply and
/// ack would fail with the closing connection and it would run again elsewhere.
pub async fn shutdown_under_load(b: Arc<dyn Backend>) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    const HELD: u64 = 0;
    let svc = unique("drain");
    let runs: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let second_runs = Arc::new(AtomicUsize::new(0));
    let make_router = |second: bool| {
        let runs = runs.clone();
        let second_runs = second_runs.clone();
        ServiceRouter::new("1", "work").method(
            MethodInfo::new("work", "counts its runs per id, sleeps, answers the id")
                .param("id", "int", "")
                .param("ms", "int", ""),
            move |p: IdWork, _ctx: Arc<RequestContext>| {
                *runs.lock().unwrap().entry(p.id).or_default() += 1;
                if second {
                    second_runs.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if p.ms > 0 {
                        tokio::time::sleep(Duration::from_millis(p.ms)).await;
                    }
                    Ok::<_, ServiceError>(json!(p.id))
                }
            },
        )
    };
    let gate = Arc::new(Gate {
        queue: message::service_queue(&svc),
        hold_id: HELD,
        holding: AtomicBool::new(false),
        released: AtomicBool::new(false),
        instance: Mutex::new(None),
    });
    let gated: Arc<dyn Backend> = Arc::new(GateBackend {
        inner: b.clone(),
        gate: gate.clone(),
    });
    let grace = Duration::from_secs(2);
    // Prefetch 1: while the gate holds the long call, no other delivery waits in the
    // first instance's consumer (the second instance gets them all).
    let s1 = Mesh::connect(
        gated,
        MeshConfig::service(&svc, make_router(false))
            .prefetch(1)
            .shutdown_grace(grace),
    )
    .await
    .unwrap();
    *gate.instance.lock().unwrap() = Some(s1.clone());
    let c = client(&b).await;
    // The flow: 4 callers, one call at a time each, ids from 1 up, until told to stop.
    let next_id = Arc::new(AtomicU64::new(HELD + 1));
    let stop_flow = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (c, svc) = (c.clone(), svc.clone());
            let (next_id, stop_flow) = (next_id.clone(), stop_flow.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                while !stop_flow.load(Ordering::SeqCst) {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let r = call(&c, &svc, "work", json!({"id": id, "ms": 0})).await;
                    assert_eq!(r.unwrap(), json!(id), "call {id}");
                    answered.push(id);
                }
                answered
            })
        })
        .collect();
    wait_until("the first instance to serve calls", || {
        runs.lock().unwrap().len() >= 8
    })
    .await;
    // Longer than the grace: started on the first instance, it would be cut off.
    let held_ms = 2 * grace.as_millis() as u64;
    let held_call = {
        let (c, svc) = (c.clone(), svc.clone());
        tokio::spawn(
            async move { call(&c, &svc, "work", json!({"id": HELD, "ms": held_ms})).await },
        )
    };
    wait_until("the gate to hold the long call", || {
        gate.holding.load(Ordering::SeqCst)
    })
    .await;
    let s2 = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, make_router(true)).prefetch(8),
    )
    .await
    .unwrap();
    wait_until("the second instance to serve calls", || {
        second_runs.load(Ordering::SeqCst) >= 8
    })
    .await;
    s1.disconnect().await.unwrap();
    wait_until(
        "the held call to be handed to the instance as it stopped",
        || gate.released.load(Ordering::SeqCst),
    )
    .await;
    let before = second_runs.load(Ordering::SeqCst);
    wait_until("calls to keep flowing after the disconnect", || {
        second_runs.load(Ordering::SeqCst) >= before + 8
    })
    .await;
    stop_flow.store(true, Ordering::SeqCst);
    let mut answered = vec![HELD];
    for caller in callers {
        answered.extend(caller.await.unwrap());
    }
    assert_eq!(held_call.await.unwrap().unwrap(), json!(HELD));
    let runs_now = runs.lock().unwrap().clone();
    for id in &answered {
        assert_eq!(
            runs_now.get(id).copied().unwrap_or(0),
            1,
            "call {id} must have run exactly once"
        );
    }
    assert_eq!(c.unpaired_replies(), 0);
    gate.instance.lock().unwrap().take();
    disconnect_all([s2, c]).await;
}

/// Replies for untracked correlation ids are ignored; a fixed instance id is single
/// instance (a second handle with it is refused).
pub async fn unpaired_and_single_instance(b: Arc<dyn Backend>) {
    let svc = unique("single");
    let s = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, ExampleService::new()).instance_id("fixed"),
    )
    .await
    .unwrap();
    assert_eq!(s.instance_id(), "fixed");
    assert_eq!(s.response_queue(), format!("nuropb-{svc}-fixed-rq"));
    let second = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, ExampleService::new()).instance_id("fixed"),
    )
    .await;
    assert!(
        second.is_err(),
        "a second instance with the same id must be refused"
    );
    let c = client(&b).await;
    let conn = b.connect("stray").await.unwrap();
    let body = herald_mesh::ResponseBody {
        result: json!("stray"),
        error: None,
        correlation_id: "0".repeat(32),
        trace_id: None,
        context: json!({}),
        warning: None,
        reply_to: None,
    };
    let mut m = Message::from_envelope(Envelope::Response(body));
    m.properties.correlation_id = "0".repeat(32);
    conn.publish(message::DEFAULT_EXCHANGE, c.response_queue(), m)
        .await
        .unwrap();
    wait_until("the stray reply to be counted", || {
        c.unpaired_replies() == 1
    })
    .await;
    assert_eq!(
        call_ok(&c, &svc, "add", json!({"a": 2, "b": 2})).await,
        json!(4)
    );
    conn.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// A handler that panics (on the inline fast path or on its own task) loses only its
/// own attempt: the delivery is requeued and redelivered, and the service keeps serving.
pub async fn handler_panic(b: Arc<dyn Backend>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Deserialize)]
    struct NoParams {}
    let svc = unique("panic");
    let inline_calls = Arc::new(AtomicUsize::new(0));
    let later_calls = Arc::new(AtomicUsize::new(0));
    let (i, l) = (inline_calls.clone(), later_calls.clone());
    let router = ServiceRouter::new("1.0", "panics once per method")
        .method(
            MethodInfo::new("flaky", "panics on its first call, before any await"),
            move |_: NoParams, _ctx: Arc<RequestContext>| {
                let first = i.fetch_add(1, Ordering::SeqCst) == 0;
                assert!(!first, "deliberate panic of the handler_panic test");
                async move { Ok::<_, ServiceError>("recovered") }
            },
        )
        .method(
            MethodInfo::new("flaky_later", "panics on its first call, after an await"),
            move |_: NoParams, _ctx: Arc<RequestContext>| {
                let first = l.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    tokio::task::yield_now().await;
                    assert!(!first, "deliberate panic of the handler_panic test");
                    Ok::<_, ServiceError>("recovered later")
                }
            },
        );
    let s = Mesh::connect(b.clone(), MeshConfig::service(&svc, router))
        .await
        .unwrap();
    let c = client(&b).await;
    assert_eq!(
        call_ok(&c, &svc, "flaky", json!({})).await,
        json!("recovered")
    );
    assert_eq!(inline_calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        call_ok(&c, &svc, "flaky_later", json!({})).await,
        json!("recovered later")
    );
    assert_eq!(later_calls.load(Ordering::SeqCst), 2);
    // The service still serves new calls.
    assert_eq!(
        call_ok(&c, &svc, "flaky", json!({})).await,
        json!("recovered")
    );
    disconnect_all([c, s]).await;
}

/// A handler that panics on every run does not loop: its delivery is requeued once,
/// then (panicking again as a redelivery) dead-lettered with a reason naming the
/// service and the method (or the event's topic); the caller gets an error reply
/// rather than a timeout, and the service keeps serving.
pub async fn handler_always_panics(b: Arc<dyn Backend>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Deserialize)]
    struct NoParams {}
    let svc = unique("doom");
    let inline_runs = Arc::new(AtomicUsize::new(0));
    let later_runs = Arc::new(AtomicUsize::new(0));
    let event_runs = Arc::new(AtomicUsize::new(0));
    let (i, l, e) = (inline_runs.clone(), later_runs.clone(), event_runs.clone());
    let router = ServiceRouter::new("1.0", "always panics")
        .on_event(format!("{svc}.doom"), move |_ev: EventBody| {
            let n = e.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::task::yield_now().await;
                assert!(
                    n == usize::MAX,
                    "deliberate panic of the handler_always_panics test"
                );
                Ok::<_, ServiceError>(())
            }
        })
        .method(
            MethodInfo::new("doom", "panics before any await"),
            move |_: NoParams, _ctx: Arc<RequestContext>| {
                let n = i.fetch_add(1, Ordering::SeqCst);
                assert!(
                    n == usize::MAX,
                    "deliberate panic of the handler_always_panics test"
                );
                async move { Ok::<_, ServiceError>("never") }
            },
        )
        .method(
            MethodInfo::new("doom_later", "panics after an await"),
            move |_: NoParams, _ctx: Arc<RequestContext>| {
                let n = l.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::task::yield_now().await;
                    assert!(
                        n == usize::MAX,
                        "deliberate panic of the handler_always_panics test"
                    );
                    Ok::<_, ServiceError>("never")
                }
            },
        )
        .method(
            MethodInfo::new("add", "adds")
                .param("a", "int", "")
                .param("b", "int", ""),
            |p: AddParams, _ctx: Arc<RequestContext>| async move {
                Ok::<_, ServiceError>(json!(p.a + p.b))
            },
        );
    let s = Mesh::connect(b.clone(), MeshConfig::service(&svc, router))
        .await
        .unwrap();
    let c = client(&b).await;
    let conn = b.connect("doom-probe").await.unwrap();
    for method in ["doom", "doom_later"] {
        match call(&c, &svc, method, json!({})).await {
            Err(MeshError::Handling { .. }) => {}
            other => panic!("{method}: expected an error reply, got {other:?}"),
        }
    }
    c.publish_event(&format!("{svc}.doom"), json!(1), json!({}), None)
        .await
        .unwrap();
    let dead = dead_letters(&conn, &svc, 3).await;
    assert_eq!(dead.len(), 3);
    // One dead letter per message, each saying why: the handler (named) panicked.
    let mut seen = Vec::new();
    for m in &dead {
        let death = m.death.as_ref().unwrap();
        assert_eq!(death.reason, DeathReason::Rejected);
        let (what, named) = match m.payload.envelope().unwrap().as_ref() {
            Envelope::Request(body) => (body.method.clone(), format!("{svc}.{}", body.method)),
            Envelope::Event(ev) => (ev.topic.clone(), ev.topic.clone()),
            other => panic!("unexpected dead letter {other:?}"),
        };
        let detail = death
            .detail
            .as_deref()
            .unwrap_or_else(|| panic!("the dead letter of {what} carries no reason"));
        assert!(
            detail.contains("panicked") && detail.contains(&svc) && detail.contains(&named),
            "the reason {detail:?} of {what}'s dead letter does not say that the handler \
             of {named} in {svc} panicked"
        );
        seen.push(what);
    }
    seen.sort();
    let mut expected = vec![
        "doom".to_owned(),
        "doom_later".to_owned(),
        format!("{svc}.doom"),
    ];
    expected.sort();
    assert_eq!(seen, expected, "exactly one dead letter per message");
    assert_eq!(inline_runs.load(Ordering::SeqCst), 2);
    assert_eq!(later_runs.load(Ordering::SeqCst), 2);
    assert_eq!(event_runs.load(Ordering::SeqCst), 2);
    for i in 0..5 {
        assert_eq!(
            call_ok(&c, &svc, "add", json!({"a": i, "b": 1})).await,
            json!(i + 1)
        );
    }
    assert_eq!(inline_runs.load(Ordering::SeqCst), 2, "no further runs");
    assert_eq!(later_runs.load(Ordering::SeqCst), 2, "no further runs");
    assert_eq!(event_runs.load(Ordering::SeqCst), 2, "no further runs");
    conn.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// A failed event handler, and a failed call of a service with `dead_letter_failed`,
/// dead-letter their message once, with a reason that names the service, the method
/// or topic, and what the handler answered; each handler runs once.
pub async fn failed_handlers_dead_letter_with_reason(b: Arc<dyn Backend>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let svc = unique("failing");
    let event_runs = Arc::new(AtomicUsize::new(0));
    let call_runs = Arc::new(AtomicUsize::new(0));
    let (e, r) = (event_runs.clone(), call_runs.clone());
    let router = ServiceRouter::new("1.0", "fails")
        .on_event(format!("{svc}.bad"), move |_ev: EventBody| {
            e.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(ServiceError::handling("event refused on purpose")) }
        })
        .method(
            MethodInfo::new("refuse", "always fails").param("why", "str", ""),
            move |p: Value, _ctx: Arc<RequestContext>| {
                r.fetch_add(1, Ordering::SeqCst);
                async move {
                    Err::<Value, _>(ServiceError::handling(format!(
                        "refused on purpose: {}",
                        p["why"].as_str().unwrap_or_default()
                    )))
                }
            },
        );
    let s = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, router).dead_letter_failed(true),
    )
    .await
    .unwrap();
    let c = client(&b).await;
    let conn = b.connect("failing-probe").await.unwrap();
    match call(&c, &svc, "refuse", json!({"why": "test-42"})).await {
        Err(MeshError::Handling { .. }) => {}
        other => panic!("expected the handler's error, got {other:?}"),
    }
    c.publish_event(&format!("{svc}.bad"), json!(1), json!({}), None)
        .await
        .unwrap();
    let dead = dead_letters(&conn, &svc, 2).await;
    let mut seen = Vec::new();
    for m in &dead {
        let death = m.death.as_ref().unwrap();
        assert_eq!(death.reason, DeathReason::Rejected);
        let (what, must_say) = match m.payload.envelope().unwrap().as_ref() {
            Envelope::Request(body) => (
                body.method.clone(),
                vec![
                    format!("{svc}.refuse"),
                    "refused on purpose: test-42".to_owned(),
                ],
            ),
            Envelope::Event(ev) => (
                ev.topic.clone(),
                vec![
                    svc.clone(),
                    ev.topic.clone(),
                    "event refused on purpose".to_owned(),
                ],
            ),
            other => panic!("unexpected dead letter {other:?}"),
        };
        let detail = death
            .detail
            .as_deref()
            .unwrap_or_else(|| panic!("the dead letter of {what} carries no reason"));
        for part in must_say {
            assert!(
                detail.contains(&part),
                "the reason {detail:?} of {what}'s dead letter does not say {part:?}"
            );
        }
        seen.push(what);
    }
    seen.sort();
    let mut expected = vec!["refuse".to_owned(), format!("{svc}.bad")];
    expected.sort();
    assert_eq!(seen, expected, "exactly one dead letter per message");
    assert_eq!(
        event_runs.load(Ordering::SeqCst),
        1,
        "a failed event is not retried"
    );
    assert_eq!(
        call_runs.load(Ordering::SeqCst),
        1,
        "a failed call is not retried"
    );
    conn.close().await.unwrap();
    disconnect_all([c, s]).await;
}

/// A dead letter (an event) with the correlation id `<tag>-<i>`, published straight to
/// a queue through the default exchange, confirmed.
fn dead_letter_like(tag: &str, i: usize) -> Message {
    let mut m = Message::from_envelope(Envelope::Event(EventBody {
        topic: "dead.letter".into(),
        event: json!({"i": i}),
        context: json!({}),
        trace_id: None,
        correlation_id: format!("{tag}-{i}"),
        target: Value::Null,
    }));
    m.properties.correlation_id = format!("{tag}-{i}");
    m.properties.confirm = true;
    m
}

/// Ready messages in `queue` (a trim that may drop nothing only counts).
async fn ready_in(conn: &Arc<dyn Connection>, queue: &str) -> usize {
    conn.trim_queue(queue, usize::MAX, 0)
        .await
        .unwrap_or_else(|e| panic!("count {queue}: {e}"))
        .found
}

/// `Connection::trim_queue`, below the mesh: drops the oldest ready messages beyond
/// the length, never more than the batch per call, only counts with a batch of 0, and
/// names a missing queue.
pub async fn trim_queue_drops_the_oldest_a_batch_at_a_time(b: Arc<dyn Backend>) {
    let conn = b.connect("trim").await.unwrap();
    let queue = unique("trim");
    conn.declare_queue(&herald_mesh::backend::QueueSpec {
        name: queue.clone(),
        durable: false,
        auto_delete: false,
        dead_letter_exchange: None,
        max_length: None,
        bindings: Vec::new(),
    })
    .await
    .unwrap();
    let tag = unique("t");
    for i in 0..10 {
        conn.publish(message::DEFAULT_EXCHANGE, &queue, dead_letter_like(&tag, i))
            .await
            .unwrap();
    }
    let trim = |max_len, max_drop| {
        let conn = conn.clone();
        let queue = queue.clone();
        async move { conn.trim_queue(&queue, max_len, max_drop).await.unwrap() }
    };
    let t = trim(3, 4).await;
    assert_eq!((t.found, t.dropped), (10, 4), "a batch of 4 at most");
    let t = trim(3, 0).await;
    assert_eq!((t.found, t.dropped), (6, 0), "a batch of 0 only counts");
    let t = trim(3, 100).await;
    assert_eq!((t.found, t.dropped), (6, 3));
    let t = trim(3, 100).await;
    assert_eq!((t.found, t.dropped), (3, 0), "nothing beyond the bound");
    let mut stream = conn
        .consume(&queue, ConsumeOptions::manual(10))
        .await
        .unwrap();
    for want in 7..10 {
        let d = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a message within WAIT")
            .expect("stream open");
        assert_eq!(
            d.message.properties.correlation_id,
            format!("{tag}-{want}"),
            "the newest are kept, in order"
        );
        d.ack().await.unwrap();
    }
    drop(stream);
    let missing = unique("missing");
    let err = conn.trim_queue(&missing, 1, 1).await.unwrap_err();
    assert!(
        matches!(&err, MeshError::NoSuchQueue { queue } if *queue == missing),
        "{err:?}"
    );
    conn.close().await.unwrap();
}

/// Bounded dead-letter queues: the dead-letter queue is declared as nuropb declares it
/// (no length bound) and the service's leader trims it back to `dead_letter_max`,
/// oldest first, a bounded batch per tick; the other instance never trims.
pub async fn dead_letter_queue_is_trimmed_to_its_bound(b: Arc<dyn Backend>) {
    const MAX: usize = 5;
    const OVERFILL: usize = 23;
    let svc = unique("dlbound");
    let cfg = || {
        MeshConfig::service(&svc, ExampleService::new())
            .leader_interval(Duration::from_millis(50))
            .dead_letter_max(MAX)
            .dead_letter_trim_interval(Duration::from_millis(50))
            .dead_letter_trim_batch(4)
    };
    let s1 = Mesh::connect(b.clone(), cfg()).await.unwrap();
    let s2 = Mesh::connect(b.clone(), cfg()).await.unwrap();
    let conn = b.connect("dl-filler").await.unwrap();
    let dlq = message::dead_letter_queue(&svc);
    let tag = unique("dl");
    for i in 0..OVERFILL {
        conn.publish(message::DEFAULT_EXCHANGE, &dlq, dead_letter_like(&tag, i))
            .await
            .unwrap();
    }
    // Trimmed back to the bound (the DLX is a fanout: other tests' dead letters may
    // arrive too, and are trimmed as well).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = ready_in(&conn, &dlq).await;
        let trimmed = s1.dead_letters_trimmed() + s2.dead_letters_trimmed();
        if n <= MAX && trimmed >= (OVERFILL - MAX) as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{dlq} holds {n} (bound {MAX}) after {trimmed} trimmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only the leader trims.
    let (leader, other) = if s1.is_leader() {
        (&s1, &s2)
    } else {
        (&s2, &s1)
    };
    assert!(leader.is_leader() && !other.is_leader());
    assert_eq!(other.dead_letters_trimmed(), 0, "a non-leader trimmed");
    disconnect_all([s1, s2]).await;

    // The oldest were dropped: what is left of ours is among the newest MAX.
    let left = ready_in(&conn, &dlq).await;
    let mut stream = conn
        .consume(&dlq, ConsumeOptions::manual(100))
        .await
        .unwrap();
    for _ in 0..left {
        let d = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a dead letter within WAIT")
            .expect("dead-letter stream open");
        let (m, settle) = d.into_parts();
        settle.ack().await.unwrap();
        if let Some(i) = m.properties.correlation_id.strip_prefix(&format!("{tag}-")) {
            let i: usize = i.parse().unwrap();
            assert!(
                i >= OVERFILL - MAX,
                "dead letter {i} of {OVERFILL} was kept"
            );
        }
    }
    drop(stream);
    conn.close().await.unwrap();
}

/// A handler that itself returns nuropb's encryption error class (say, passing on a
/// downstream failure) has run: the client must not take it for a call the service
/// could not decrypt and run it a second time.
pub async fn encryption_error_from_a_handler_is_not_retried(b: Arc<dyn Backend>) {
    use herald_mesh::error::class;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let svc = unique("encfail");
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let router = ServiceRouter::new("1", "encfail").method(
        MethodInfo::new("relay", "fails like a downstream decryption would").requires_encryption(),
        move |_p: Value, _ctx: Arc<RequestContext>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<Value, _>(ServiceError::new(
                    class::ENCRYPTION,
                    "the downstream service could not decrypt",
                ))
            }
        },
    );
    let s = Mesh::connect(
        b.clone(),
        MeshConfig::service(&svc, router).service_keys(service_key()),
    )
    .await
    .unwrap();
    let c = Mesh::connect(
        b.clone(),
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await
    .unwrap();
    let r = c
        .request_with(
            &svc,
            "relay",
            json!({}),
            RequestOptions {
                encrypted: true,
                ttl: Some(WAIT),
                ..RequestOptions::default()
            },
        )
        .await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler ran once: {r:?}"
    );
    assert!(matches!(r, Err(MeshError::Encryption(_))), "{r:?}");
    disconnect_all([c, s]).await;
}

/// Generates one `#[tokio::test]` per suite function; `$backend` is an expression of
/// type `Option<Arc<dyn Backend>>` evaluated per test (`None` skips).
macro_rules! conformance_tests {
    ($backend:expr) => {
        conformance_tests!(@each $backend;
            request_response, errors, deadline, ttl_out_of_range, ttl_expiry, poison_messages,
            past_deadline, exactly_one_ack, command, command_confirmed, events, leader, describe,
            encryption, encryption_key_change, encryption_key_lookup_deadline, graceful_shutdown,
            shutdown_under_load, unpaired_and_single_instance, handler_panic, handler_always_panics,
            failed_handlers_dead_letter_with_reason, encryption_error_from_a_handler_is_not_retried,
            dead_letter_queue_is_trimmed_to_its_bound,
            trim_queue_drops_the_oldest_a_batch_at_a_time);
    };
    (@each $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend: Option<std::sync::Arc<dyn herald_mesh::Backend>> = $backend;
                let Some(backend) = backend else { return };
                conformance::$name(backend).await;
            }
        )*
    };
}
