//! Mutual TLS between two nodes, with a throw-away CA made at run time (rcgen), and a
//! third node without a client certificate being refused.
//!
//! ```text
//! cargo run -p herald-transport --example tls_nodes
//! ```

use std::time::Duration;

use herald_transport::DeadLetters;
use herald_transport::tcp::{Backoff, PeerKey, TcpConfig, TcpNode};
use herald_transport::tls::TlsConfig;
use herald_wire::Envelope;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A CA and a function issuing node certificates for 127.0.0.1.
fn pki() -> Result<(String, impl Fn() -> Result<TlsConfig, BoxError>), BoxError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let ca_pem = ca.pem();
    let ca_for_nodes = ca_pem.clone();
    let issue = move || -> Result<TlsConfig, BoxError> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
        Ok(TlsConfig::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            ca_for_nodes.as_bytes(),
            true,
        )?)
    };
    Ok((ca_pem, issue))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (ca_pem, issue) = pki()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = TcpNode::builder(TcpConfig::loopback().with_tls(issue()?))
        .on_message(move |_: &PeerKey, env: Envelope| {
            let _ = tx.send(env);
        })
        .start()
        .await?;
    let to = server.advertised().clone();

    let client = TcpNode::builder(TcpConfig::loopback().with_tls(issue()?))
        .start()
        .await?;
    client.send(
        &to,
        Envelope::new(
            format!("casty://sys@{to}/inbox"),
            "",
            "demo.Secret",
            &b"{}"[..],
        ),
    )?;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or("closed")?;
    println!("over mutual TLS: {}", got.type_hint);

    // Trusts the CA but has no certificate of its own: the server refuses it.
    let mut cfg =
        TcpConfig::loopback().with_tls(TlsConfig::client_from_pem(ca_pem.as_bytes(), None)?);
    cfg.backoff = Backoff {
        breaker_threshold: 1,
        ..Backoff::default()
    };
    let dead = DeadLetters::default();
    let mut letters = dead.subscribe();
    let anonymous = TcpNode::builder(cfg).dead_letters(dead).start().await?;
    anonymous.send(
        &to,
        Envelope::new(
            format!("casty://sys@{to}/inbox"),
            "",
            "demo.Anon",
            &b"{}"[..],
        ),
    )?;
    let letter = tokio::time::timeout(Duration::from_secs(10), letters.recv()).await??;
    println!(
        "without a certificate: {} ({})",
        letter.reason,
        letter.detail.as_deref().unwrap_or("")
    );
    for n in [client, anonymous, server] {
        n.shutdown().await;
    }
    Ok(())
}
