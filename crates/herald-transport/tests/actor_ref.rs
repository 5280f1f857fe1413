//! ActorRef: typed tell, ask with a temporary reply path, timeouts and cleanup.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use herald_transport::{
    ASK_PATH_PREFIX, ActorRef, BoxFuture, DeadLetterReason, LocalTransport, Message,
    MessageTransport, RawMessage, TransportError, reply,
};
use herald_wire::Envelope;
use herald_wire::payload::{Json, TypeHint};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pong {
    value: i64,
}

herald_wire::type_hint!(Ping => "casty_vec_msgs.Ping", Pong => "casty_vec_msgs.Pong");

fn setup() -> (LocalTransport, Arc<dyn MessageTransport>) {
    let local = LocalTransport::builder().system("refs").build();
    let transport: Arc<dyn MessageTransport> = Arc::new(local.clone());
    (local, transport)
}

/// Spawns an actor at `path` answering every Ping with Pong(value + 1).
fn spawn_ponger(local: &LocalTransport, transport: Arc<dyn MessageTransport>, path: &str) {
    let mut inbox = local.register_unbounded(path).unwrap();
    tokio::spawn(async move {
        while let Some(request) = inbox.recv().await {
            let Ok(ping) = Ping::from_envelope(request.clone()) else {
                continue;
            };
            let _ = reply(
                &*transport,
                &request,
                &Pong {
                    value: ping.value + 1,
                },
            );
        }
    });
}

fn ask_paths(local: &LocalTransport) -> Vec<String> {
    local
        .registered_paths()
        .into_iter()
        .filter(|p| p.starts_with(ASK_PATH_PREFIX))
        .collect()
}

#[tokio::test]
async fn tell_sends_casty_tagged_json_with_the_type_hint() {
    let (local, transport) = setup();
    let mut inbox = local.register_unbounded("/sink").unwrap();
    let sink: ActorRef<Ping> = ActorRef::new("casty://refs@127.0.0.1:25520/sink", transport);
    sink.tell(&Ping { value: 42 }).unwrap();
    let env = inbox.recv().await.unwrap();
    assert_eq!(env.target, "casty://refs@127.0.0.1:25520/sink");
    assert_eq!(env.type_hint, "casty_vec_msgs.Ping");
    assert_eq!(
        env.sender, "casty://refs/",
        "casty writes the system root as sender"
    );
    assert_eq!(
        std::str::from_utf8(&env.payload).unwrap(),
        r#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#
    );
    assert_eq!(Ping::from_envelope(env).unwrap(), Ping { value: 42 });
}

#[tokio::test]
async fn tell_uses_an_explicit_sender() {
    let (local, transport) = setup();
    let mut inbox = local.register_unbounded("/sink").unwrap();
    let sink: ActorRef<Ping> =
        ActorRef::new(local.address_of("/sink"), transport).with_sender("casty://refs/me");
    sink.tell(&Ping { value: 1 }).unwrap();
    assert_eq!(inbox.recv().await.unwrap().sender, "casty://refs/me");
}

#[tokio::test]
async fn ask_gets_the_reply_and_removes_the_reply_path() {
    let (local, transport) = setup();
    spawn_ponger(&local, transport.clone(), "/ponger");
    let ponger: ActorRef<Ping> = ActorRef::new(local.address_of("/ponger"), transport);
    let pong: Pong = ponger
        .ask(&Ping { value: 41 }, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(pong, Pong { value: 42 });
    assert!(ask_paths(&local).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_asks_each_get_their_own_reply() {
    let (local, transport) = setup();
    spawn_ponger(&local, transport.clone(), "/ponger");
    let ponger: ActorRef<Ping> = ActorRef::new(local.address_of("/ponger"), transport);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let p = ponger.clone();
        tasks.push(tokio::spawn(async move {
            let pong: Pong = p.ask(&Ping { value: i }, Duration::from_secs(60)).await?;
            Ok::<_, TransportError>((i, pong.value))
        }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap().unwrap();
        assert_eq!(v, i + 1);
    }
    assert!(ask_paths(&local).is_empty());
}

#[tokio::test]
async fn ask_timeout_names_the_address_and_the_late_reply_is_a_dead_letter() {
    let (local, transport) = setup();
    let mut inbox = local.register_unbounded("/silent").unwrap();
    let silent: ActorRef<Ping> = ActorRef::new(local.address_of("/silent"), transport.clone());
    let err = silent
        .ask::<Pong>(&Ping { value: 1 }, Duration::from_millis(50))
        .await
        .unwrap_err();
    match &err {
        TransportError::AskTimeout { target, timeout } => {
            assert_eq!(target, "casty://refs/silent");
            assert_eq!(*timeout, Duration::from_millis(50));
        }
        other => panic!("expected AskTimeout, got {other:?}"),
    }
    assert!(err.to_string().contains("casty://refs/silent"), "{err}");
    assert!(ask_paths(&local).is_empty());

    // The request arrived; answering now is too late.
    let request = inbox.recv().await.unwrap();
    assert!(
        request.sender.starts_with("casty://refs/_ask/"),
        "{}",
        request.sender
    );
    reply(&*transport, &request, &Pong { value: 2 }).unwrap();
    assert_eq!(local.dead_letters().count(DeadLetterReason::DeadPath), 1);
}

#[tokio::test]
async fn cancelled_ask_removes_its_reply_path() {
    let (local, transport) = setup();
    let _inbox = local.register_unbounded("/silent").unwrap();
    let silent: ActorRef<Ping> = ActorRef::new(local.address_of("/silent"), transport);
    let outer = tokio::time::timeout(
        Duration::from_millis(20),
        silent.ask::<Pong>(&Ping { value: 1 }, Duration::from_secs(3600)),
    )
    .await;
    assert!(outer.is_err(), "the outer timeout cancels the ask");
    assert!(ask_paths(&local).is_empty());
}

#[tokio::test]
async fn only_the_first_reply_counts() {
    let (local, transport) = setup();
    let t = transport.clone();
    local
        .register_fn("/twice", move |request| {
            let _ = reply(&*t, &request, &Pong { value: 1 });
            let _ = reply(&*t, &request, &Pong { value: 2 });
        })
        .unwrap();
    let twice: ActorRef<Ping> = ActorRef::new(local.address_of("/twice"), transport);
    let pong: Pong = twice
        .ask(&Ping { value: 0 }, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(pong.value, 1);
    // The second reply reached the path before it was unregistered and was ignored.
    assert!(ask_paths(&local).is_empty());
}

#[tokio::test]
async fn a_reply_of_the_wrong_type_is_a_decode_error() {
    let (local, transport) = setup();
    let t = transport.clone();
    local
        .register_fn("/confused", move |request| {
            let _ = reply(&*t, &request, &Ping { value: 7 });
        })
        .unwrap();
    let confused: ActorRef<Ping> = ActorRef::new(local.address_of("/confused"), transport);
    let err = confused
        .ask::<Pong>(&Ping { value: 0 }, Duration::from_secs(30))
        .await
        .unwrap_err();
    match err {
        TransportError::Decode { type_hint, reason } => {
            assert_eq!(type_hint, "casty_vec_msgs.Ping");
            assert!(reason.contains("casty_vec_msgs.Pong"), "{reason}");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[tokio::test]
async fn a_malformed_payload_is_a_wire_error_not_a_panic() {
    let (local, transport) = setup();
    let t = transport.clone();
    local
        .register_fn("/garbage", move |request| {
            let _ = reply(
                &*t,
                &request,
                &RawMessage::new("casty_vec_msgs.Pong", &b"\xff{not json"[..]),
            );
        })
        .unwrap();
    let garbage: ActorRef<Ping> = ActorRef::new(local.address_of("/garbage"), transport);
    let err = garbage
        .ask::<Pong>(&Ping { value: 0 }, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Wire(_)), "{err:?}");
}

#[derive(Debug)]
struct SendOnly;

impl MessageTransport for SendOnly {
    fn deliver(&self, _envelope: Envelope) -> Result<(), TransportError> {
        Ok(())
    }
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn ask_without_a_local_endpoint_is_refused() {
    let r: ActorRef<Ping> = ActorRef::new("casty://x@h:1/a", Arc::new(SendOnly));
    let err = r
        .ask::<Pong>(&Ping { value: 0 }, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::NoReplyEndpoint { .. }),
        "{err:?}"
    );
    // tell still works, with an empty sender.
    r.tell(&Ping { value: 0 }).unwrap();
}

#[tokio::test]
async fn explicit_reply_endpoint_is_used_by_a_send_only_transport() {
    let (local, transport) = setup();
    spawn_ponger(&local, transport, "/ponger");
    // A transport that delivers through `local` but does not advertise an endpoint.
    #[derive(Debug)]
    struct Forward(LocalTransport);
    impl MessageTransport for Forward {
        fn deliver(&self, e: Envelope) -> Result<(), TransportError> {
            self.0.deliver(e)
        }
        fn shutdown(&self) -> BoxFuture<'static, ()> {
            self.0.shutdown()
        }
    }
    let endpoint = local.local_endpoint().unwrap();
    let r: ActorRef<Ping> = ActorRef::new(local.address_of("/ponger"), Arc::new(Forward(local)))
        .with_reply_endpoint(endpoint);
    let pong: Pong = r
        .ask(&Ping { value: 9 }, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(pong.value, 10);
}

#[tokio::test]
async fn ask_after_shutdown_fails_cleanly() {
    let (local, transport) = setup();
    transport.shutdown().await;
    let r: ActorRef<Ping> = ActorRef::new(local.address_of("/a"), transport);
    let err = r
        .ask::<Pong>(&Ping { value: 0 }, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Shutdown), "{err:?}");
    assert!(matches!(
        r.tell(&Ping { value: 0 }),
        Err(TransportError::Shutdown)
    ));
}

#[tokio::test]
async fn reply_needs_a_sender() {
    let (_, transport) = setup();
    let request = Envelope::new("casty://refs/a", "", "t", &b""[..]);
    let err = reply(&*transport, &request, &Pong { value: 0 }).unwrap_err();
    assert!(matches!(err, TransportError::InvalidTarget { .. }));
}

#[test]
fn refs_compare_display_and_retype_by_address() {
    let (local, transport) = setup();
    let a: ActorRef<Ping> = ActorRef::new(local.address_of("/a"), transport.clone());
    let b: ActorRef<Ping> = ActorRef::new("casty://refs/a", transport);
    assert_eq!(a, b);
    assert_eq!(a.to_string(), "casty://refs/a");
    let raw: ActorRef<RawMessage> = a.retype();
    assert_eq!(raw.address(), a.address());
    assert!(format!("{a:?}").contains("casty://refs/a"));
}

#[test]
fn raw_messages_can_use_any_payload_codec() {
    let raw = RawMessage::encode_with(&Json, &Ping { value: 5 }).unwrap();
    assert_eq!(raw.type_hint, Ping::TYPE_HINT);
    assert_eq!(&raw.payload[..], br#"{"value":5}"#);
    assert_eq!(
        raw.decode_with::<Ping, _>(&Json).unwrap(),
        Ping { value: 5 }
    );
    let err = raw.decode_with::<Pong, _>(&Json).unwrap_err();
    assert!(matches!(err, TransportError::Decode { .. }));
}
