//! Stop signals for the long-running commands (`up`, `registry serve`, `registry register
//! --keepalive`, `mesh serve-example`, `mesh listen`).
//!
//! The handlers are installed when [`stop_signal`] is called, not when its future is
//! first polled: a SIGTERM or Ctrl-C that arrives between "ready" being printed and the
//! first poll would otherwise hit the default action and kill the process without the
//! graceful shutdown (a supervisor or test that signals right after "ready" saw that).

use std::future::Future;

use anyhow::Context;

/// Installs the Ctrl-C (SIGINT) and, on Unix, SIGTERM handlers now; the returned future
/// completes on the first of them.
pub fn stop_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        // Installed on first poll here: tokio has no eager Ctrl-C listener off Unix.
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
