//! [`Registrar`]: keeps a Rust service registered, like rpyc's `ThreadedServer`
//! auto-registration (re-register every interval, retry soon after a failure,
//! unregister on shutdown).
//!
//! ```
//! use std::time::Duration;
//! use herald_registry::{Registrar, RegistrarConfig, RegistryConfig, RegistryServer, TcpRegistryClient};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RegistryServer::bind(RegistryConfig::localhost_ephemeral()).await?;
//! let client = TcpRegistryClient::new(server.local_addr());
//! let registrar = Registrar::spawn(client.clone().into(), RegistrarConfig::new(["calc"], 4000u16));
//! assert!(registrar.wait_registered(Duration::from_secs(5)).await);
//! assert_eq!(client.discover("CALC").await?.len(), 1);
//! registrar.shutdown().await?; // sends UNREGISTER
//! # server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{ClientError, RegistryClient};
use crate::proto::Port;

/// What to register and how often.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Service names.
    pub aliases: Vec<String>,
    /// The service's port.
    pub port: Port,
    /// Keep-alive period after a successful registration (rpyc: 60 s).
    pub interval: Duration,
    /// Delay before retrying after a failed registration (rpyc: about 1 s).
    pub retry: Duration,
}

impl RegistrarConfig {
    /// rpyc's timing: every 60 s, retry after 1 s.
    pub fn new<S: Into<String>>(
        aliases: impl IntoIterator<Item = S>,
        port: impl Into<Port>,
    ) -> Self {
        Self {
            aliases: aliases.into_iter().map(Into::into).collect(),
            port: port.into(),
            interval: Duration::from_secs(60),
            retry: Duration::from_secs(1),
        }
    }

    /// Sets the keep-alive interval.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the retry delay.
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }
}

/// Where the registrar stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrarState {
    /// No registration has succeeded yet.
    Pending,
    /// The last registration succeeded.
    Registered,
    /// The last registration failed; retrying.
    Retrying,
}

/// A background task that keeps a service registered. Dropping it stops the task
/// without unregistering; call [`Registrar::shutdown`] to unregister.
#[derive(Debug)]
pub struct Registrar {
    client: RegistryClient,
    port: Port,
    stop: watch::Sender<bool>,
    state: watch::Receiver<RegistrarState>,
    task: Option<JoinHandle<()>>,
}

impl Registrar {
    /// Starts the task (inside a tokio runtime).
    pub fn spawn(client: RegistryClient, config: RegistrarConfig) -> Self {
        let (stop, mut stop_rx) = watch::channel(false);
        let (state_tx, state) = watch::channel(RegistrarState::Pending);
        let task_client = client.clone();
        let port = config.port.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = match task_client
                    .register(&config.aliases, config.port.clone())
                    .await
                {
                    Ok(()) => {
                        tracing::debug!(aliases = ?config.aliases, port = %config.port, registry = %task_client.target(), "registered");
                        let _ = state_tx.send(RegistrarState::Registered);
                        config.interval
                    }
                    Err(e) => {
                        tracing::warn!(aliases = ?config.aliases, port = %config.port, error = %e, "registration failed; retrying");
                        let _ = state_tx.send(RegistrarState::Retrying);
                        config.retry
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(next) => {}
                    _ = stop_rx.changed() => return,
                }
            }
        });
        Self {
            client,
            port,
            stop,
            state,
            task: Some(task),
        }
    }

    /// The current state.
    pub fn state(&self) -> RegistrarState {
        *self.state.borrow()
    }

    /// Whether the background task is still running (it ends only on
    /// [`Registrar::shutdown`], or if it panicked).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Waits until a registration has succeeded (true) or `timeout` passed (false);
    /// false at once if the task is no longer running.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(
            timeout,
            state.wait_for(|s| *s == RegistrarState::Registered),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Stops the task and sends UNREGISTER.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.client.unregister(self.port.clone()).await
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
