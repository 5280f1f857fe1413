//! Leader election among the instances of a service.
//!
//! nuropb's `is_leader` is hard-coded to `true`. Herald elects a real leader through
//! the backend's leadership primitive ([`Connection::try_lead`]): a per-service lock
//! that at most one live connection holds and that is released when the holder
//! disconnects or dies. Every service instance retries the lock periodically, so
//! leadership moves to a surviving instance within one retry interval after the
//! leader goes away. Client-only handles never lead.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::Connection;

/// Observes this instance's leadership.
#[derive(Clone, Debug)]
pub struct LeaderWatch {
    rx: watch::Receiver<bool>,
}

impl LeaderWatch {
    /// A watch that is never leader (client-only handles).
    pub fn never() -> Self {
        let (_tx, rx) = watch::channel(false);
        Self { rx }
    }

    /// Whether this instance is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until leadership changes; returns the new state, or `None` once the
    /// election has stopped (the mesh disconnected).
    pub async fn changed(&mut self) -> Option<bool> {
        self.rx.changed().await.ok()?;
        Some(*self.rx.borrow_and_update())
    }

    /// Waits until leadership equals `leader`, or the election stops (`false`).
    pub async fn wait_for(&mut self, leader: bool) -> bool {
        self.rx.wait_for(|v| *v == leader).await.is_ok()
    }
}

/// How often a leader checks its connection while it waits (for the next attempt, or
/// for an attempt that is blocked reconnecting).
const LOSS_CHECK: Duration = Duration::from_millis(20);

/// Starts the election task for `service` on `conn`: it calls
/// [`Connection::try_lead`] every `interval` until `stop` is cancelled.
///
/// Leadership is dropped as soon as the connection is known to be lost
/// ([`Connection::is_connected`]), not when the next attempt returns: the broker
/// releases the lock with the connection, so another instance may lead while this one
/// waits (up to the backend's reconnect wait) to reconnect.
pub fn spawn_election(
    conn: Arc<dyn Connection>,
    service: String,
    instance_id: String,
    interval: Duration,
    stop: CancellationToken,
) -> LeaderWatch {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let who = Who {
            conn: conn.as_ref(),
            tx: &tx,
            service: &service,
            instance_id: &instance_id,
        };
        loop {
            let now = if conn.is_open() {
                match who.clear_on_loss(conn.try_lead(&service)).await {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(service = %service, error = %e, "leader lock attempt failed");
                        false
                    }
                }
            } else {
                false
            };
            let was = *tx.borrow();
            if now != was {
                if now {
                    info!(service = %service, instance = %instance_id, "became leader");
                } else {
                    info!(service = %service, instance = %instance_id, "lost leadership");
                }
                tx.send_replace(now);
            }
            let pause = async {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(interval) => {}
                }
            };
            who.clear_on_loss(pause).await;
            if stop.is_cancelled() {
                break;
            }
        }
        tx.send_replace(false);
        debug!(service = %service, instance = %instance_id, "leader election stopped");
    });
    LeaderWatch { rx }
}

/// One instance's election state, for [`Who::clear_on_loss`].
struct Who<'a> {
    conn: &'a dyn Connection,
    tx: &'a watch::Sender<bool>,
    service: &'a str,
    instance_id: &'a str,
}

impl Who<'_> {
    /// Runs `fut`, clearing leadership as soon as the connection is lost meanwhile.
    async fn clear_on_loss<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            if *self.tx.borrow() && !self.conn.is_connected() {
                warn!(service = %self.service, instance = %self.instance_id, "connection lost; leadership dropped");
                self.tx.send_replace(false);
            }
            tokio::select! {
                out = fut.as_mut() => return out,
                () = tokio::time::sleep(LOSS_CHECK) => {}
            }
        }
    }
}
