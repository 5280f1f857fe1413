//! TLS between TCP nodes with certificates generated at run time (rcgen): mutual TLS and
//! the host-name check against the dialed (address-mapped) host. The refusal of peers
//! without a valid certificate is in `tls_refusal.rs` (it captures logs, so it runs in a
//! test binary of its own).

mod tls_support;

use herald_transport::DeadLetters;
use herald_transport::tcp::{PeerAddr, PeerKey, TcpConfig, TcpNode};
use herald_transport::tls::TlsConfig;
use herald_wire::Envelope;
use tls_support::*;
use tokio::sync::mpsc;

#[tokio::test]
async fn mutual_tls_nodes_exchange_messages() {
    let pki = Pki::new("a");
    let (b, mut rx) = server(pki.tls(&["127.0.0.1", "localhost"], true)).await;
    let a = TcpNode::builder(TcpConfig::loopback().with_tls(pki.tls(&["127.0.0.1"], true)))
        .start()
        .await
        .expect("start");
    let to = b.advertised().clone();
    a.send(&to, env(&to, 1)).expect("queued");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(got.payload.as_ref(), b"1");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn host_name_is_checked_against_the_mapped_dial_address() {
    let pki = Pki::new("a");
    let mut cfg = TcpConfig::loopback().with_tls(pki.tls(&["localhost"], false));
    cfg.advertise = Some(PeerAddr::new("node-b.test", 0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let b = TcpNode::builder(cfg)
        .on_message(move |_: &PeerKey, e: Envelope| {
            let _ = tx.send(e);
        })
        .start()
        .await
        .expect("start");
    let logical = b.advertised().clone();
    let port = b.local_addr().expect("bound").port();
    let client_tls = || TlsConfig::client_from_pem(pki.ca_pem.as_bytes(), None).expect("client");

    // Mapped to "localhost", which the certificate names: accepted.
    let good = TcpNode::builder(
        TcpConfig::loopback()
            .with_tls(client_tls())
            .with_address_map(move |_: &PeerAddr| PeerAddr::new("localhost", port)),
    )
    .start()
    .await
    .expect("start");
    good.send(&logical, env(&logical, 1)).expect("queued");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(got.payload.as_ref(), b"1");

    // Mapped to 127.0.0.1, which the certificate does not name: refused by the client.
    let dead = DeadLetters::default();
    let bad = TcpNode::builder(one_shot(
        TcpConfig::loopback()
            .with_tls(client_tls())
            .with_address_map(move |_: &PeerAddr| PeerAddr::new("127.0.0.1", port)),
    ))
    .dead_letters(dead.clone())
    .start()
    .await
    .expect("start");
    let waiter = first_unreachable_detail(&dead);
    bad.send(&logical, env(&logical, 2)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("TLS handshake"), "{detail}");
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");
    for n in [good, bad, b] {
        n.shutdown().await;
    }
}
