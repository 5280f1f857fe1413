//! Shared helpers of the TLS tests: a run-time PKI (rcgen) and node helpers.
#![allow(dead_code)]

use std::time::Duration;

use herald_transport::tcp::{Backoff, PeerAddr, PeerKey, TcpConfig, TcpNode};
use herald_transport::tls::TlsConfig;
use herald_transport::{DeadLetterReason, DeadLetters};
use herald_wire::Envelope;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(15);

pub struct Pki {
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// (certificate PEM, key PEM) for the given SANs.
    pub fn node(&self, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    pub fn tls(&self, sans: &[&str], mutual: bool) -> TlsConfig {
        let (cert, key) = self.node(sans);
        TlsConfig::from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            self.ca_pem.as_bytes(),
            mutual,
        )
        .expect("tls config")
    }
}

pub fn env(to: &PeerAddr, n: u32) -> Envelope {
    Envelope::new(
        format!("casty://sys@{to}/inbox"),
        "",
        "test.Msg",
        format!("{n}").into_bytes(),
    )
}

pub async fn server(tls: TlsConfig) -> (TcpNode, mpsc::UnboundedReceiver<Envelope>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let node = TcpNode::builder(TcpConfig::loopback().with_tls(tls))
        .on_message(move |_: &PeerKey, e: Envelope| {
            let _ = tx.send(e);
        })
        .start()
        .await
        .expect("start");
    (node, rx)
}

pub fn one_shot(cfg: TcpConfig) -> TcpConfig {
    let mut cfg = cfg;
    cfg.backoff = Backoff {
        breaker_threshold: 1,
        ..Backoff::default()
    };
    cfg
}

pub async fn first_unreachable_detail(dead: &DeadLetters) -> String {
    let mut sub = dead.subscribe();
    loop {
        let l = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("dead letter in time")
            .expect("open");
        if l.reason == DeadLetterReason::PeerUnreachable {
            return l.detail.map(|d| d.to_string()).unwrap_or_default();
        }
    }
}
