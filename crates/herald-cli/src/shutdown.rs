//! The stop signals of the long-running commands.

use anyhow::Context;

/// Ctrl-C, or SIGTERM on Unix (how service managers stop a service), listened for from
/// the moment this is created.
///
/// A command creates it before it prints that it is ready, so a signal sent right after
/// that line is neither lost nor fatal: without a handler installed, SIGTERM would kill
/// the process before it could shut down cleanly.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers.
    pub(crate) fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Shutdown {
                interrupt: signal(SignalKind::interrupt())
                    .context("installing the Ctrl-C (SIGINT) handler")?,
                terminate: signal(SignalKind::terminate())
                    .context("installing the SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Shutdown {})
        }
    }

    /// Waits for the next stop signal (cancel-safe: usable in a `select!` loop).
    pub(crate) async fn wait(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
