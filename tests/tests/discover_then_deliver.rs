//! Cross-crate: a node announces itself in the registry (a `Registrar`), a second
//! node discovers it by name through the rpyc-compatible protocol, then sends it a
//! casty envelope over TCP and gets an answer back through the same connection.

use std::net::SocketAddr;
use std::time::Duration;

use herald::registry::{
    Port, Registrar, RegistrarConfig, RegistryClient, RegistryConfig, RegistryServer,
    UdpRegistryClient,
};
use herald::transport::{MessageTransport, RemoteTransport, TcpConfig};
use herald::wire::Envelope;

const WAIT: Duration = Duration::from_secs(30);

async fn node(system: &str) -> RemoteTransport {
    RemoteTransport::builder(system, TcpConfig::loopback())
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_found_in_the_registry_receives_and_answers_a_message() {
    let registry = RegistryServer::bind(RegistryConfig::localhost_ephemeral())
        .await
        .expect("registry binds");
    let registry_addr: SocketAddr = registry.local_addr();

    // Node A serves /user/echo and keeps itself registered as ECHO.
    let a = node("alpha").await;
    let a_port = a.tcp().local_addr().expect("node A listens").port();
    let mut echo_inbox = a
        .local()
        .register_unbounded("/user/echo")
        .expect("register");
    let registrar = Registrar::spawn(
        RegistryClient::Udp(UdpRegistryClient::unicast(registry_addr)),
        RegistrarConfig::new(["echo"], a_port)
            .with_interval(Duration::from_millis(200))
            .with_retry(Duration::from_millis(100)),
    );

    // Node B discovers ECHO (polling: the registrar runs in the background).
    let client = UdpRegistryClient::unicast(registry_addr).with_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + WAIT;
    let found = loop {
        let found = client.discover("ECHO").await.unwrap_or_default();
        if !found.is_empty() {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ECHO never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].port, Port::Num(i64::from(a_port)));

    let b = node("beta").await;
    let mut reply_inbox = b
        .local()
        .register_unbounded("/user/client")
        .expect("register");
    let target = format!("casty://alpha@{}:{}/user/echo", found[0].host, a_port);
    b.deliver(Envelope::new(
        target.clone(),
        b.address_of("/user/client"),
        "demo.Ping",
        &br#"{"_type": "demo.Ping", "seq": 1}"#[..],
    ))
    .expect("deliver to A");

    let got = tokio::time::timeout(WAIT, echo_inbox.recv())
        .await
        .expect("A receives in time")
        .expect("inbox open");
    assert_eq!(got.target, target);
    assert_eq!(got.type_hint, "demo.Ping");

    // A answers to the sender address carried in the envelope.
    a.deliver(Envelope::new(
        got.sender.clone(),
        a.address_of("/user/echo"),
        "demo.Pong",
        got.payload.clone(),
    ))
    .expect("deliver reply");
    let reply = tokio::time::timeout(WAIT, reply_inbox.recv())
        .await
        .expect("B receives the reply in time")
        .expect("inbox open");
    assert_eq!(reply.type_hint, "demo.Pong");
    assert_eq!(reply.payload, got.payload);

    // Shutting the registrar down unregisters the service.
    registrar.shutdown().await.expect("registrar shutdown");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !client.discover("ECHO").await.unwrap_or_default().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ECHO never unregistered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.shutdown().await;
    b.shutdown().await;
    registry.shutdown().await;
}
