//! A peer without a valid certificate is refused, with a clear log line on the server.
//! Alone in its test binary because it installs a log-capturing tracing subscriber.

mod tls_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_transport::DeadLetters;
use herald_transport::tcp::TcpConfig;
use herald_transport::tcp::TcpNode;
use herald_transport::tls::TlsConfig;
use tls_support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn peer_without_a_certificate_is_refused_with_a_clear_log_line() {
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new("a");
    let (b, _rx) = server(pki.tls(&["127.0.0.1"], true)).await;
    let to = b.advertised().clone();
    // Trusts the CA but presents no client certificate.
    let dead = DeadLetters::default();
    let client_tls =
        TlsConfig::client_from_pem(pki.ca_pem.as_bytes(), None).expect("client config");
    let a = TcpNode::builder(one_shot(TcpConfig::loopback().with_tls(client_tls)))
        .dead_letters(dead.clone())
        .start()
        .await
        .expect("start");
    let waiter = first_unreachable_detail(&dead);
    a.send(&to, env(&to, 1)).expect("queued");
    waiter.await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.stats().handshake_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = logs.text();
    assert!(
        text.contains("refused inbound connection: TLS handshake failed"),
        "log was: {text}"
    );
    assert!(
        text.to_lowercase().contains("certificate"),
        "log was: {text}"
    );

    // A peer with a certificate from another CA is refused as well.
    let other = Pki::new("rogue");
    let c = TcpNode::builder(one_shot(
        TcpConfig::loopback().with_tls(other.tls(&["127.0.0.1"], true)),
    ))
    .dead_letters(dead.clone())
    .start()
    .await
    .expect("start");
    let waiter = first_unreachable_detail(&dead);
    c.send(&to, env(&to, 2)).expect("queued");
    let detail = waiter.await;
    assert!(detail.contains("TLS handshake"), "{detail}");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
