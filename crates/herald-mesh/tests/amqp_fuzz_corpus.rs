//! Replays the `mesh_message` fuzz corpus (`fuzz/corpus/mesh_message/*`, seeds encoded by
//! Python pika exactly as nuropb publishes) through the same entry point the fuzz target
//! calls, and checks that the seeds decode to what pika meant.

use std::path::PathBuf;

use herald_mesh::amqp::{fuzz_decode, message_from_amqp};
use herald_mesh::message::{DeathReason, Message, MessageType};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mesh_message");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = std::fs::read(e.path()).expect("read seed");
            (name, data)
        })
        .collect();
    out.sort();
    out
}

fn decode(data: &[u8]) -> Message {
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let (_, props) = lapin::protocol::basic::parse_properties(&data[2..2 + len])
        .expect("pika-encoded properties parse");
    message_from_amqp(&props, data[2 + len..].to_vec())
}

fn seed(name: &str) -> Message {
    let all = corpus();
    let (_, data) = all
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("seed {name} missing"));
    decode(data)
}

#[test]
fn every_corpus_entry_replays_without_panicking() {
    let all = corpus();
    assert!(all.len() >= 10, "seed corpus too small: {}", all.len());
    for (name, data) in &all {
        fuzz_decode(data);
        // Truncations and bit flips of real seeds must not panic either.
        for cut in [
            0,
            1,
            2,
            data.len() / 3,
            data.len() / 2,
            data.len().saturating_sub(1),
        ] {
            fuzz_decode(&data[..cut.min(data.len())]);
        }
        for i in (0..data.len()).step_by(7) {
            let mut flipped = data.clone();
            flipped[i] ^= 0x5a;
            fuzz_decode(&flipped);
        }
        eprintln!("replayed {name}");
    }
}

#[test]
fn pika_encoded_request_decodes_like_nuropb_meant() {
    let m = seed("request");
    assert_eq!(
        m.headers.message_type().expect("valid"),
        MessageType::Request
    );
    assert_eq!(
        m.properties.correlation_id,
        "f9a2bc0011223344556677889900aabb"
    );
    assert_eq!(m.properties.reply_to.as_deref(), Some("nuropb-c-1-rq"));
    assert_eq!(m.properties.expiration_ms, Some(3_600_000));
    assert_eq!(m.headers.trace_id.as_deref(), Some("trace-f9a2bc"));
    let env = m.payload.envelope().expect("json");
    assert_eq!(env.correlation_id(), m.properties.correlation_id);

    let m = seed("request_void_trace");
    assert_eq!(m.headers.trace_id, None, "a void trace_id is None");
    assert!(seed("encrypted").headers.encrypted);
    assert_eq!(seed("response").properties.reply_to, None, "empty reply_to");
}

#[test]
fn bad_seeds_decode_to_reportable_errors() {
    for name in ["bad_protocol", "bad_type", "no_headers"] {
        assert!(seed(name).headers.message_type().is_err(), "{name}");
    }
    for name in ["not_json", "json_not_object"] {
        assert!(seed(name).payload.envelope().is_err(), "{name}");
    }
    let m = seed("deadline");
    assert_eq!(
        m.properties.expiration_ms, None,
        "non-numeric expiration ignored"
    );
    assert_eq!(m.headers.deadline_ms, Some(1_763_700_000_000));
    let d = seed("dead_letter").death.expect("x-death");
    assert_eq!(d.reason, DeathReason::Expired);
    assert_eq!(d.queue, "nuropb-s-sq");
    assert_eq!(d.routing_key, "s");
}
