//! Property tests: random sequences of register / unregister / deliver / clock moves on a
//! small-limit LocalTransport. Whatever the sequence, every accepted message is either
//! received exactly once by the handler of its own path, in order, or reported exactly
//! once as a dead letter; and the state never exceeds its bounds.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herald_transport::{
    DeadLetterReason, DeadLetters, LocalTransport, ManualClock, MessageTransport,
};
use herald_wire::Envelope;
use proptest::prelude::*;
use tokio::sync::mpsc;

const PATHS: [&str; 4] = ["/a", "/b", "/c/d", "/_ask/0123"];
const PER_PATH: usize = 3;
const TOTAL: usize = 5;
const MAX_TOMBSTONES: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Deliver { path: usize, form: u8 },
    Register(usize),
    Unregister(usize),
    DropReceiver(usize),
    Advance(u64),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PATHS.len(), 0u8..3).prop_map(|(path, form)| Op::Deliver { path, form }),
        2 => (0..PATHS.len()).prop_map(Op::Register),
        2 => (0..PATHS.len()).prop_map(Op::Unregister),
        1 => (0..PATHS.len()).prop_map(Op::DropReceiver),
        1 => (0u64..40).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

fn target(path: &str, form: u8) -> String {
    match form {
        0 => format!("casty://prop@127.0.0.1:25520{path}"),
        1 => format!("casty://prop{path}"),
        _ => path.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_is_received_once_in_order_or_dead_lettered(ops in prop::collection::vec(op(), 1..120)) {
        let clock = ManualClock::new();
        let sink = DeadLetters::new(1 << 16);
        let mut letters = sink.subscribe();
        let local = LocalTransport::builder()
            .clock(clock.clone())
            .dead_letters(sink.clone())
            .max_pending_per_path(PER_PATH)
            .max_pending_total(TOTAL)
            .pending_ttl(Duration::from_secs(30))
            .tombstone_ttl(Duration::from_secs(20))
            .max_tombstones(MAX_TOMBSTONES)
            .build();

        let mut receivers: HashMap<usize, mpsc::UnboundedReceiver<Envelope>> = HashMap::new();
        // id -> path index of every accepted message
        let mut accepted: BTreeMap<u64, usize> = BTreeMap::new();
        // path index -> ids received, in order
        let mut received: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut next_id = 0u64;

        let collect = |receivers: &mut HashMap<usize, mpsc::UnboundedReceiver<Envelope>>,
                           received: &mut HashMap<usize, Vec<u64>>| {
            for (p, rx) in receivers.iter_mut() {
                while let Ok(e) = rx.try_recv() {
                    let id = u64::from_be_bytes(e.payload[..].try_into().unwrap());
                    received.entry(*p).or_default().push(id);
                }
            }
        };

        for op in ops {
            match op {
                Op::Deliver { path, form } => {
                    let id = next_id;
                    next_id += 1;
                    let registered_before = local.is_registered(PATHS[path]);
                    local
                        .deliver(Envelope::new(target(PATHS[path], form), "casty://prop/s", "p.Msg", id.to_be_bytes().to_vec()))
                        .unwrap();
                    accepted.insert(id, path);
                    match (registered_before, receivers.get_mut(&path)) {
                        (true, Some(rx)) => {
                            // Delivery to a registered unbounded mailbox is immediate.
                            let got = rx.try_recv().unwrap();
                            let got_id = u64::from_be_bytes(got.payload[..].try_into().unwrap());
                            prop_assert_eq!(got_id, id);
                            received.entry(path).or_default().push(got_id);
                        }
                        (true, None) => {
                            // The receiver was dropped: the path unregisters itself.
                            prop_assert!(!local.is_registered(PATHS[path]));
                            prop_assert!(local.is_dead(PATHS[path]));
                        }
                        (false, _) => {}
                    }
                }
                Op::Register(p) => {
                    if let Ok(rx) = local.register_unbounded(PATHS[p]) {
                        // A dropped receiver may still be registered until the next
                        // message notices; collect before replacing.
                        collect(&mut receivers, &mut received);
                        receivers.insert(p, rx);
                    } else {
                        prop_assert!(local.is_registered(PATHS[p]));
                    }
                }
                Op::Unregister(p) => {
                    local.unregister(PATHS[p]);
                    prop_assert!(!local.is_registered(PATHS[p]));
                    prop_assert_eq!(local.pending_len(PATHS[p]), 0);
                }
                Op::DropReceiver(p) => {
                    collect(&mut receivers, &mut received);
                    receivers.remove(&p);
                }
                Op::Advance(s) => clock.advance(Duration::from_secs(s)),
                Op::Sweep => local.sweep(),
            }
            collect(&mut receivers, &mut received);
            let stats = local.stats();
            prop_assert!(stats.pending_messages <= TOTAL, "{:?}", stats);
            prop_assert!(stats.tombstones <= MAX_TOMBSTONES, "{:?}", stats);
            for p in PATHS {
                prop_assert!(local.pending_len(p) <= PER_PATH);
            }
        }

        // Shutdown turns whatever is still buffered into dead letters.
        futures_lite_block_on(local.shutdown());
        collect(&mut receivers, &mut received);

        let mut dead: BTreeMap<u64, DeadLetterReason> = BTreeMap::new();
        while let Ok(letter) = letters.try_recv() {
            let id = u64::from_be_bytes(letter.envelope.payload[..].try_into().unwrap());
            prop_assert!(dead.insert(id, letter.reason).is_none(), "message {} dead-lettered twice", id);
        }
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for (p, ids) in &received {
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "path {} out of order: {:?}", PATHS[*p], ids);
            for id in ids {
                prop_assert_eq!(accepted.get(id), Some(p), "message {} reached the wrong path", id);
                prop_assert!(seen.insert(*id, *p).is_none(), "message {} received twice", id);
                prop_assert!(!dead.contains_key(id), "message {} both received and dead-lettered", id);
            }
        }
        for id in accepted.keys() {
            prop_assert!(seen.contains_key(id) || dead.contains_key(id), "message {} vanished", id);
        }
        prop_assert_eq!(sink.total(), dead.len() as u64);
    }
}

/// `shutdown` of a LocalTransport completes immediately; poll it once without a runtime.
fn futures_lite_block_on<F: std::future::Future<Output = ()>>(f: F) {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(f.as_mut().poll(&mut cx), Poll::Ready(())));
}
