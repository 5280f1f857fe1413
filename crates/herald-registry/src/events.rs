//! Table changes as the server publishes them: the events of one update of the table
//! (one request, one UDP batch, one prune tick) travel together in numbered batches of
//! up to [`EVENTS_PER_BATCH`], so the channel needs a slot per batch, not per event, a
//! burst of thousands of events reaches a receiver that reads between updates, and a
//! receiver that stops reading holds back a bounded number of events.
//!
//! ```
//! use herald_registry::{EventRecvError, RegistryConfig, RegistryEvent, RegistryServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = RegistryServer::bind(RegistryConfig::localhost_ephemeral()).await?;
//! let mut events = server.events();
//! let client = herald_registry::TcpRegistryClient::new(server.local_addr());
//! client.register(&["echo", "calc"], 18812u16).await?;
//! for _ in 0..2 {
//!     match events.recv().await {
//!         Ok(RegistryEvent::Added { name, .. }) => println!("added {name}"),
//!         Ok(other) => println!("{other:?}"),
//!         Err(EventRecvError::Lagged { missed }) => println!("missed {missed} events"),
//!         Err(EventRecvError::Closed) => break,
//!     }
//! }
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::core::RegistryEvent;

/// The events of one update of the table.
#[derive(Debug, Clone)]
pub(crate) struct EventBatch {
    /// Number of the first event (the server numbers its events from 0 in the order it
    /// publishes them).
    first: u64,
    events: Arc<[RegistryEvent]>,
}

/// Most events one batch carries: an update with more goes out as several batches, so
/// that what a receiver that stopped reading holds back is bounded by the channel's
/// slots times this (about 131 k events with the default 1024 slots), not by the size of
/// the largest updates. An update of up to `event_capacity` × this many events (the
/// default allows a prune tick that empties a full default table of 100 000 entries)
/// never makes a receiver that reads between updates lag.
pub const EVENTS_PER_BATCH: usize = 128;

/// The sending side: numbers the events and publishes the events of each update as
/// batches of at most [`EVENTS_PER_BATCH`]. Used under the table's lock, so batches go
/// out in the order of the updates.
#[derive(Debug)]
pub(crate) struct EventPublisher {
    tx: broadcast::Sender<EventBatch>,
    /// Number of the next event published.
    next: u64,
}

impl EventPublisher {
    /// A channel that holds the last `batches` batches (at least one; tokio rounds it
    /// up to a power of two).
    pub(crate) fn new(batches: usize) -> Self {
        let (tx, _) = broadcast::channel(batches.max(1));
        Self { tx, next: 0 }
    }

    /// Publishes the events of one update (nothing when there are none).
    pub(crate) fn publish(&mut self, events: Vec<RegistryEvent>) {
        if events.len() <= EVENTS_PER_BATCH {
            self.send(events.into());
            return;
        }
        for chunk in events.chunks(EVENTS_PER_BATCH) {
            self.send(chunk.into());
        }
    }

    /// Sends one batch (none when it is empty) and numbers its events.
    fn send(&mut self, events: Arc<[RegistryEvent]>) {
        if events.is_empty() {
            return;
        }
        let batch = EventBatch {
            first: self.next,
            events,
        };
        self.next += batch.events.len() as u64;
        // No receivers is fine.
        let _ = self.tx.send(batch);
    }

    /// A receiver of the events published from now on.
    pub(crate) fn subscribe(&self) -> RegistryEvents {
        RegistryEvents {
            rx: self.tx.subscribe(),
            next: self.next,
            batch: None,
        }
    }
}

/// Why [`RegistryEvents::recv`] returned no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventRecvError {
    /// The receiver fell more than [`RegistryConfig::event_capacity`] batches (rounded
    /// up to a power of two) behind: `missed` events were dropped for it. The next call returns the oldest event it
    /// still has.
    ///
    /// [`RegistryConfig::event_capacity`]: crate::RegistryConfig::event_capacity
    #[error("registry event receiver fell behind and missed {missed} events")]
    Lagged {
        /// How many events (not updates) it missed.
        missed: u64,
    },
    /// The server stopped: no more events will come.
    #[error("registry server stopped: no more events")]
    Closed,
}

/// A receiver of table changes, from [`RegistryServer::events`]: every event once, in
/// the order the table raised them, one at a time.
///
/// [`RegistryServer::events`]: crate::RegistryServer::events
#[derive(Debug)]
pub struct RegistryEvents {
    rx: broadcast::Receiver<EventBatch>,
    /// Number of the next event this receiver is due.
    next: u64,
    /// The batch being read and the position of its next event (`None` once read).
    batch: Option<(Arc<[RegistryEvent]>, usize)>,
}

impl RegistryEvents {
    /// The next event. A receiver that fell more than
    /// [`RegistryConfig::event_capacity`] batches behind gets
    /// [`EventRecvError::Lagged`] with the exact number of events it missed, then the
    /// events that follow them, in order.
    ///
    /// Cancel safe: a `recv` dropped before it completes (in `tokio::select!`, say)
    /// loses no event.
    ///
    /// [`RegistryConfig::event_capacity`]: crate::RegistryConfig::event_capacity
    pub async fn recv(&mut self) -> Result<RegistryEvent, EventRecvError> {
        loop {
            if let Some(event) = self.next_of_batch() {
                return Ok(event);
            }
            let batch = match self.rx.recv().await {
                Ok(batch) => batch,
                // Whole batches were dropped; the oldest one left, which the next call
                // returns, says by its number how many events they held.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Err(EventRecvError::Closed),
            };
            let missed = batch.first.saturating_sub(self.next);
            self.next = batch.first;
            self.batch = Some((batch.events, 0));
            if missed > 0 {
                return Err(EventRecvError::Lagged { missed });
            }
        }
    }

    /// The next event of the batch being read; lets go of the batch once it is read.
    fn next_of_batch(&mut self) -> Option<RegistryEvent> {
        let (events, pos) = self.batch.as_mut()?;
        let event = events.get(*pos).cloned();
        *pos += 1;
        if *pos >= events.len() {
            self.batch = None;
        }
        if event.is_some() {
            self.next += 1;
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RemoveReason;
    use crate::proto::{Port, ServiceAddr};

    fn added(i: u64) -> RegistryEvent {
        RegistryEvent::Added {
            name: format!("S{i}"),
            addr: ServiceAddr {
                host: "10.0.0.1".into(),
                port: Port::Num(1),
            },
        }
    }

    /// Updates of 1, 2, ... 10 events into a channel of 4 updates: a receiver that read
    /// nothing is told it missed the first six updates' 21 events, then gets the other
    /// 34 in order; an update without events takes no slot.
    #[tokio::test]
    async fn a_lagging_receiver_is_told_the_events_it_missed_and_continues_in_order() {
        let mut publisher = EventPublisher::new(4);
        let mut events = publisher.subscribe();
        let mut n = 0;
        for size in 1..=10u64 {
            publisher.publish((n..n + size).map(added).collect());
            publisher.publish(Vec::new());
            n += size;
        }
        assert_eq!(
            events.recv().await,
            Err(EventRecvError::Lagged { missed: 21 })
        );
        for i in 21..55 {
            assert_eq!(events.recv().await, Ok(added(i)));
        }
        // Caught up: one more is received as is.
        let removed = RegistryEvent::Removed {
            name: "S0".into(),
            addr: ServiceAddr {
                host: "10.0.0.1".into(),
                port: Port::Num(1),
            },
            reason: RemoveReason::Pruned,
        };
        publisher.publish(vec![removed.clone()]);
        assert_eq!(events.recv().await, Ok(removed));
        drop(publisher);
        assert_eq!(events.recv().await, Err(EventRecvError::Closed));
    }

    /// One update of 1 000 events goes out as batches of at most [`EVENTS_PER_BATCH`]:
    /// a channel of 4 batches keeps only the last 4 batches (3 × 128 + the 104 left
    /// over) for a receiver that read nothing: it is told it missed the first 512 and
    /// gets the last 488 in order,
    /// so a stalled receiver holds back a bounded number of events; an update of 300
    /// events (3 batches) reaches a receiver that keeps up in full.
    #[tokio::test]
    async fn a_large_update_is_split_so_a_stalled_receiver_holds_back_a_bounded_number() {
        let mut publisher = EventPublisher::new(4);
        let mut events = publisher.subscribe();
        publisher.publish((0..1000).map(added).collect());
        assert_eq!(
            events.recv().await,
            Err(EventRecvError::Lagged { missed: 512 })
        );
        for i in 512..1000 {
            assert_eq!(events.recv().await, Ok(added(i)));
        }
        publisher.publish((1000..1300).map(added).collect());
        for i in 1000..1300 {
            assert_eq!(events.recv().await, Ok(added(i)));
        }
    }

    /// A receiver that lags in the middle of a batch keeps that batch: only later
    /// updates can be missed, and the count is theirs.
    #[tokio::test]
    async fn a_receiver_lagging_inside_a_batch_misses_only_later_updates() {
        let mut publisher = EventPublisher::new(2);
        let mut events = publisher.subscribe();
        publisher.publish((0..3).map(added).collect());
        assert_eq!(events.recv().await, Ok(added(0)));
        for i in 3..7 {
            publisher.publish(vec![added(i)]);
        }
        assert_eq!(events.recv().await, Ok(added(1)));
        assert_eq!(events.recv().await, Ok(added(2)));
        assert_eq!(
            events.recv().await,
            Err(EventRecvError::Lagged { missed: 2 })
        );
        assert_eq!(events.recv().await, Ok(added(5)));
        assert_eq!(events.recv().await, Ok(added(6)));
    }
}
