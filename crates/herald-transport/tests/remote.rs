//! RemoteTransport: the local-versus-remote decision, node index, make_ref tell/ask
//! across two nodes, wrong-system frames, and the MessageTransport contract over TCP.

use std::sync::Arc;
use std::time::Duration;

use herald_transport::remote::{RemoteTransport, Route};
use herald_transport::tcp::{PeerAddr, TcpConfig, WireMode};
use herald_transport::testkit::{Binding, ContractConfig, TransportHarness, run_contract};
use herald_transport::{
    DeadLetterReason, DeadLetters, MessageTransport, RawMessage, TransportError, reply,
};
use herald_wire::{ActorAddress, Envelope};

const WAIT: Duration = Duration::from_secs(15);

async fn node(system: &str) -> RemoteTransport {
    RemoteTransport::builder(system, TcpConfig::loopback())
        .start()
        .await
        .expect("start")
}

fn addr(s: &str) -> ActorAddress {
    ActorAddress::parse(s).expect("valid address")
}

#[tokio::test]
async fn local_versus_remote_decision() {
    let mut cfg = TcpConfig::loopback().with_mode(WireMode::native("c"));
    cfg.advertise = Some(PeerAddr::new("public.example", 0));
    let a = RemoteTransport::builder("sys", cfg)
        .start()
        .await
        .expect("start");
    let bound = a.tcp().local_addr().expect("bound");
    let port = bound.port();
    assert_eq!(a.root(), format!("casty://sys@public.example:{port}"));
    // No host: local.
    assert_eq!(a.route(&addr("casty://sys/user/a")), Route::Local);
    // Own advertised address and own bound address: local.
    assert_eq!(
        a.route(&addr(&format!("casty://sys@public.example:{port}/a"))),
        Route::Local
    );
    assert_eq!(
        a.route(&addr(&format!("casty://sys@127.0.0.1:{port}/a"))),
        Route::Local
    );
    // Own node id, whatever the host: local.
    let own = format!("casty://sys@10.9.9.9:1/a?node={}", a.node_id());
    assert_eq!(a.route(&addr(&own)), Route::Local);
    // Another host: remote.
    assert_eq!(
        a.route(&addr("casty://sys@10.0.0.2:25520/a")),
        Route::Remote(PeerAddr::new("10.0.0.2", 25520))
    );
    // Node id only, unknown: unresolved (casty would have delivered it locally).
    let other = addr("casty://sys/a?node=00000000000000ff");
    assert!(matches!(a.route(&other), Route::Unresolved(_)));
    let dead = a.dead_letter_sink().clone();
    let r = a.deliver(Envelope::new(
        "casty://sys/a?node=00000000000000ff",
        "",
        "t.T",
        &b""[..],
    ));
    assert!(matches!(
        r,
        Err(TransportError::Refused {
            reason: DeadLetterReason::NoRoute,
            ..
        })
    ));
    assert_eq!(dead.count(DeadLetterReason::NoRoute), 1);
    // The node index resolves it.
    a.set_node_address("00000000000000ff", PeerAddr::new("10.0.0.3", 7));
    assert_eq!(a.route(&other), Route::Remote(PeerAddr::new("10.0.0.3", 7)));
    a.remove_node("00000000000000ff");
    assert!(matches!(a.route(&other), Route::Unresolved(_)));
    a.shutdown().await;
}

#[tokio::test]
async fn node_id_only_addresses_route_through_native_handshakes() {
    let cfg = || TcpConfig::loopback().with_mode(WireMode::native("c"));
    let a = RemoteTransport::builder("sys", cfg())
        .start()
        .await
        .expect("a");
    let b = RemoteTransport::builder("sys", cfg())
        .start()
        .await
        .expect("b");
    let mut inbox_a = a.local().register_unbounded("/inbox").expect("register");
    let mut inbox_b = b.local().register_unbounded("/inbox").expect("register");
    a.make_ref::<RawMessage>(&b.address_of("/inbox"))
        .tell(&RawMessage::new("t.Hello", &b"1"[..]))
        .expect("tell");
    tokio::time::timeout(WAIT, inbox_b.recv())
        .await
        .expect("in time")
        .expect("open");
    // B now knows A by node id: a node-id-only address reaches it.
    let by_id = format!("casty://sys/inbox?node={}", a.node_id());
    assert!(matches!(b.route(&addr(&by_id)), Route::Node(_)));
    b.deliver(Envelope::new(by_id, "", "t.Back", &b"2"[..]))
        .expect("routed");
    let got = tokio::time::timeout(WAIT, inbox_a.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(got.type_hint, "t.Back");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn ask_across_two_nodes() {
    let a = node("sys").await;
    let b = node("sys").await;
    // An echo actor on B that replies through B's transport.
    let b2 = b.clone();
    b.local()
        .register_fn("/echo", move |req: Envelope| {
            let answer = RawMessage::new("t.Pong", req.payload.clone());
            let _ = reply(&b2, &req, &answer);
        })
        .expect("register");
    let echo = a.make_ref::<RawMessage>(&b.address_of("/echo"));
    let answer: RawMessage = echo
        .ask(&RawMessage::new("t.Ping", &b"42"[..]), WAIT)
        .await
        .expect("reply");
    assert_eq!(answer.type_hint, "t.Pong");
    assert_eq!(answer.payload.as_ref(), b"42");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn frames_for_another_system_become_dead_letters() {
    let a = node("alpha").await;
    let b = node("beta").await;
    let mut inbox = b.local().register_unbounded("/inbox").expect("register");
    let dead: DeadLetters = b.dead_letter_sink().clone();
    let port = b.tcp().advertised().port;
    // Same host:port and path, wrong system name.
    a.deliver(Envelope::new(
        format!("casty://alpha@127.0.0.1:{port}/inbox"),
        "",
        "t.Wrong",
        &b""[..],
    ))
    .expect("sent");
    a.deliver(Envelope::new(
        format!("casty://beta@127.0.0.1:{port}/inbox"),
        "",
        "t.Right",
        &b""[..],
    ))
    .expect("sent");
    let got = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(got.type_hint, "t.Right");
    assert_eq!(dead.count(DeadLetterReason::WrongSystem), 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// The testkit's contract, checked over TCP: the transport under test is node A; paths
/// are bound on node B.
struct TwoNodes {
    a: RemoteTransport,
    b: RemoteTransport,
}

impl TransportHarness for TwoNodes {
    fn transport(&self) -> Arc<dyn MessageTransport> {
        Arc::new(self.a.clone())
    }
    fn address(&self, path: &str) -> String {
        self.b.address_of(path)
    }
    async fn bind(&mut self, path: &str) -> Result<Binding, TransportError> {
        let inbox = self.b.local().register_unbounded(path)?;
        Ok(Binding {
            address: self.b.address_of(path),
            inbox,
        })
    }
    fn dead_letters(&self) -> Option<DeadLetters> {
        Some(self.b.dead_letter_sink().clone())
    }
}

#[tokio::test]
async fn remote_transport_honours_the_contract() {
    for mode in [WireMode::CastyV1, WireMode::native("contract")] {
        run_contract(
            || {
                let mode = mode.clone();
                async move {
                    let mk = || {
                        RemoteTransport::builder(
                            "contract",
                            TcpConfig::loopback().with_mode(mode.clone()),
                        )
                        .start()
                    };
                    TwoNodes {
                        a: mk().await.expect("a"),
                        b: mk().await.expect("b"),
                    }
                }
            },
            &ContractConfig::quick(),
        )
        .await
        .unwrap_or_else(|v| panic!("{mode:?}: {v}"));
    }
}
