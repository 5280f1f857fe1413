//! Shared helpers of the TCP tests: bounded waits.
#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The next item of `rx`, within [`WAIT`].
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("message within the wait bound")
        .expect("channel open")
}

/// Polls `f` every few milliseconds until it holds, for at most [`WAIT`].
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
