//! Dead letters: every message a transport drops, with the reason, on an observable
//! stream, plus exact counters per reason.
//!
//! [`DeadLetters`] is a cheap-to-clone handle (an `Arc` inside). One sink can be shared
//! by several transports (for example a [`LocalTransport`](crate::LocalTransport) and the
//! TCP transport of the same node) so a single subscriber sees every drop of the node.
//!
//! * The **stream** ([`DeadLetters::subscribe`]) is a `tokio::sync::broadcast` channel: a
//!   subscriber that falls more than `capacity` events behind loses the oldest events
//!   (it gets `RecvError::Lagged(n)`), publishers never block.
//! * The **counters** ([`DeadLetters::count`], [`DeadLetters::counts`]) are exact and
//!   never lose an event.
//! * Every drop is also logged through `tracing` at `debug` level (target
//!   `herald_transport::dead_letter`), with the reason, the target and the type hint.
//!
//! ```
//! use herald_transport::{DeadLetterReason, DeadLetters};
//! use herald_wire::Envelope;
//!
//! let dead = DeadLetters::new(16);
//! let mut stream = dead.subscribe();
//! dead.publish(Envelope::new("casty://sys/nobody", "", "demo.Ping", &b"{}"[..]), DeadLetterReason::DeadPath);
//! assert_eq!(dead.count(DeadLetterReason::DeadPath), 1);
//! let letter = stream.try_recv().unwrap();
//! assert_eq!(letter.reason, DeadLetterReason::DeadPath);
//! assert_eq!(letter.envelope.target, "casty://sys/nobody");
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use herald_wire::Envelope;
use tokio::sync::broadcast;

/// Why a message was dropped.
///
/// The set is shared by every transport of the crate; each variant documents who uses it.
/// New reasons may be added in minor releases (add them to [`DeadLetterReason::ALL`] too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The target path was unregistered recently (it has a tombstone): local delivery
    /// drops instead of buffering. Also used for a path's queued messages when it is
    /// unregistered.
    DeadPath,
    /// The target path is unknown and its pending buffer already holds
    /// `max_pending_per_path` messages: the newest message is dropped.
    BufferFull,
    /// The target path is unknown and the transport-wide pending cap
    /// (`max_pending_total`) is reached: the newest message is dropped.
    PendingCapReached,
    /// A message waited in a pending buffer for longer than `pending_ttl` and nobody
    /// registered its path.
    UnknownPathExpired,
    /// The handler's bounded mailbox (an `mpsc::Sender`) was full.
    MailboxFull,
    /// The handler's mailbox receiver was dropped (the actor is gone); the path is then
    /// unregistered.
    MailboxClosed,
    /// A callback handler panicked while handling the message.
    HandlerPanicked,
    /// The transport is shut down (or shutting down).
    Shutdown,
    /// No route to the target: the address cannot be resolved (unknown node id, no
    /// host, unparseable target).
    NoRoute,
    /// The peer is unreachable (connect failed, connection lost and not re-established).
    PeerUnreachable,
    /// The peer is temporarily blacklisted by the circuit breaker.
    Blacklisted,
    /// A bounded outbound (per-peer) queue overflowed.
    QueueOverflow,
    /// The message could not be encoded (serialization error).
    EncodeFailed,
    /// An inbound message could not be decoded (bad header, unknown type hint, ...).
    DecodeFailed,
    /// An inbound message targets another actor system name than this node's.
    WrongSystem,
    /// The message is larger than the configured maximum frame size.
    FrameTooLarge,
    /// The message was queued for the native node last connected at an address, and
    /// another node (another node id) answered there: it is not handed to the newcomer.
    NodeReplaced,
}

impl DeadLetterReason {
    /// Every reason, in declaration order (the order of [`DeadLetters::counts`]).
    pub const ALL: [DeadLetterReason; 17] = [
        Self::DeadPath,
        Self::BufferFull,
        Self::PendingCapReached,
        Self::UnknownPathExpired,
        Self::MailboxFull,
        Self::MailboxClosed,
        Self::HandlerPanicked,
        Self::Shutdown,
        Self::NoRoute,
        Self::PeerUnreachable,
        Self::Blacklisted,
        Self::QueueOverflow,
        Self::EncodeFailed,
        Self::DecodeFailed,
        Self::WrongSystem,
        Self::FrameTooLarge,
        Self::NodeReplaced,
    ];

    /// A stable snake_case name, used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DeadPath => "dead_path",
            Self::BufferFull => "buffer_full",
            Self::PendingCapReached => "pending_cap_reached",
            Self::UnknownPathExpired => "unknown_path_expired",
            Self::MailboxFull => "mailbox_full",
            Self::MailboxClosed => "mailbox_closed",
            Self::HandlerPanicked => "handler_panicked",
            Self::Shutdown => "shutdown",
            Self::NoRoute => "no_route",
            Self::PeerUnreachable => "peer_unreachable",
            Self::Blacklisted => "blacklisted",
            Self::QueueOverflow => "queue_overflow",
            Self::EncodeFailed => "encode_failed",
            Self::DecodeFailed => "decode_failed",
            Self::WrongSystem => "wrong_system",
            Self::FrameTooLarge => "frame_too_large",
            Self::NodeReplaced => "node_replaced",
        }
    }

    /// Position in [`ALL`](Self::ALL) (variants are declared in that order; the test
    /// `counters_index_every_reason_separately` checks it).
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dropped message and why it was dropped.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message, unchanged; for input that was not an envelope at all,
    /// [`DeadLetter::undecodable`]'s envelope holding those bytes.
    pub envelope: Envelope,
    /// Why it was dropped.
    pub reason: DeadLetterReason,
    /// Optional context (for example the peer address for
    /// [`DeadLetterReason::PeerUnreachable`]).
    pub detail: Option<Arc<str>>,
}

impl DeadLetter {
    /// The envelope of a dead letter for bytes that were not an envelope: empty
    /// target, sender and type hint, the bytes as the payload.
    pub fn undecodable(bytes: &[u8]) -> Envelope {
        Envelope::new("", "", "", Bytes::copy_from_slice(bytes))
    }
}

/// Most bytes of undecodable input a [`DeadLetter`] keeps
/// ([`DeadLetters::publish_undecodable`]).
pub const UNDECODABLE_KEPT: usize = 64 * 1024;

/// Default capacity of the dead-letter broadcast stream.
pub const DEFAULT_DEAD_LETTER_CAPACITY: usize = 1024;

/// The dead-letter sink: a broadcast stream of [`DeadLetter`]s plus counters per reason.
///
/// Cloning gives another handle to the same sink.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    tx: broadcast::Sender<DeadLetter>,
    counters: [AtomicU64; DeadLetterReason::ALL.len()],
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("total", &self.total())
            .field("subscribers", &self.inner.tx.receiver_count())
            .finish()
    }
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self::new(DEFAULT_DEAD_LETTER_CAPACITY)
    }
}

impl DeadLetters {
    /// A new sink whose stream keeps up to `capacity` events per lagging subscriber
    /// (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                tx,
                counters: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    /// Records a dropped message: counts it, logs it and sends it to the subscribers.
    pub fn publish(&self, envelope: Envelope, reason: DeadLetterReason) {
        self.publish_letter(DeadLetter {
            envelope,
            reason,
            detail: None,
        });
    }

    /// Like [`publish`](Self::publish), with a context string (peer address, error, ...).
    pub fn publish_with_detail(
        &self,
        envelope: Envelope,
        reason: DeadLetterReason,
        detail: impl Into<Arc<str>>,
    ) {
        self.publish_letter(DeadLetter {
            envelope,
            reason,
            detail: Some(detail.into()),
        });
    }

    /// Records a [`DeadLetter`] built by the caller.
    pub fn publish_letter(&self, letter: DeadLetter) {
        self.inner.counters[letter.reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "herald_transport::dead_letter",
            reason = letter.reason.as_str(),
            target_address = %letter.envelope.target,
            type_hint = %letter.envelope.type_hint,
            detail = letter.detail.as_deref().unwrap_or(""),
            "dead letter"
        );
        if self.inner.tx.receiver_count() > 0 {
            // An error only means every subscriber went away meanwhile.
            let _ = self.inner.tx.send(letter);
        }
    }

    /// Records input that could not be decoded into an envelope at all (for example a
    /// frame from a socket whose header is not JSON): counts and logs it, and sends
    /// subscribers a [`DeadLetter`] whose envelope is [`DeadLetter::undecodable`]'s: no
    /// target, sender or type hint, and the bytes as its payload (a copy of at most
    /// [`UNDECODABLE_KEPT`] bytes; the detail says when it was cut).
    pub fn publish_undecodable(&self, reason: DeadLetterReason, bytes: &[u8], detail: &str) {
        if self.inner.tx.receiver_count() == 0 {
            self.record_without_envelope(reason, detail);
            return;
        }
        let kept = &bytes[..bytes.len().min(UNDECODABLE_KEPT)];
        let detail: Arc<str> = if kept.len() < bytes.len() {
            format!(
                "{detail} (first {} of {} bytes kept)",
                kept.len(),
                bytes.len()
            )
            .into()
        } else {
            detail.into()
        };
        self.publish_letter(DeadLetter {
            envelope: DeadLetter::undecodable(kept),
            reason,
            detail: Some(detail),
        });
    }

    /// Counts (and logs) a drop for which no envelope exists, for example bytes that
    /// could not be decoded into an envelope at all, without notifying subscribers
    /// (see [`publish_undecodable`](Self::publish_undecodable), which does).
    pub fn record_without_envelope(&self, reason: DeadLetterReason, detail: &str) {
        self.inner.counters[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "herald_transport::dead_letter",
            reason = reason.as_str(),
            detail,
            "dropped undecodable input"
        );
    }

    /// A new subscriber to the stream; it sees the dead letters published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DeadLetter> {
        self.inner.tx.subscribe()
    }

    /// How many drops were recorded with this reason.
    pub fn count(&self, reason: DeadLetterReason) -> u64 {
        self.inner.counters[reason.index()].load(Ordering::Relaxed)
    }

    /// How many drops were recorded in total.
    pub fn total(&self) -> u64 {
        self.inner
            .counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Every reason with its count, in [`DeadLetterReason::ALL`] order (zeros included).
    pub fn counts(&self) -> Vec<(DeadLetterReason, u64)> {
        DeadLetterReason::ALL
            .iter()
            .map(|r| (*r, self.count(*r)))
            .collect()
    }

    /// Whether two handles point to the same sink.
    pub fn same_sink(&self, other: &DeadLetters) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
