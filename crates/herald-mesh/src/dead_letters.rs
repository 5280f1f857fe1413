//! The bound of a service's dead-letter queue, enforced by its leader.
//!
//! nuropb declares `nuropb-<service>-dl` with no arguments, and RabbitMQ refuses a
//! redeclaration with other arguments (406), so Herald cannot bound the queue with
//! `x-max-length` without locking nuropb instances of the same service out. Instead
//! the elected leader of the service trims it: every `interval` it drops the oldest
//! ready messages beyond `max`, at most `batch` per tick
//! ([`Connection::trim_queue`]). Only the leader trims, so several instances do not
//! each drop a surplus (over-trimming); during a leadership handover (the old leader's
//! link just lost, the new one already leading) two may each trim once. Between ticks the queue may exceed the bound
//! by what arrives in one interval (by more if over `batch` arrive per interval: the
//! rest of the surplus is dropped on the next ticks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::Connection;
use crate::leader::LeaderWatch;

/// What the trim task needs.
pub(crate) struct Trim {
    pub conn: Arc<dyn Connection>,
    pub leader: LeaderWatch,
    pub service: String,
    pub queue: String,
    pub max: usize,
    pub batch: usize,
    pub interval: Duration,
    /// Messages dropped so far (see `Mesh::dead_letters_trimmed`).
    pub dropped: Arc<AtomicU64>,
}

/// Starts the trim task; it ends when `stop` is cancelled.
pub(crate) fn spawn_trim(trim: Trim, stop: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = trim_loop(&trim) => {}
        }
        debug!(service = %trim.service, queue = %trim.queue, "dead-letter trim stopped");
    });
}

async fn trim_loop(trim: &Trim) {
    // A failure is logged once, not on every tick until it clears.
    let mut failing = false;
    loop {
        tokio::time::sleep(trim.interval).await;
        if !trim.leader.is_leader() {
            continue;
        }
        match trim
            .conn
            .trim_queue(&trim.queue, trim.max, trim.batch)
            .await
        {
            Ok(t) => {
                if failing {
                    info!(service = %trim.service, queue = %trim.queue, "dead-letter queue trimming works again");
                }
                failing = false;
                if t.dropped > 0 {
                    trim.dropped.fetch_add(
                        u64::try_from(t.dropped).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    info!(
                        service = %trim.service,
                        queue = %trim.queue,
                        dropped = t.dropped,
                        found = t.found,
                        max = trim.max,
                        "dead-letter queue over its bound: oldest dead letters dropped"
                    );
                }
            }
            Err(e) => {
                if !failing {
                    warn!(service = %trim.service, queue = %trim.queue, error = %e, "trimming the dead-letter queue to its bound failed; retrying every interval");
                }
                failing = true;
            }
        }
    }
}
