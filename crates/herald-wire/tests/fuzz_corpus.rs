//! Replays the committed seed corpora of the `cargo fuzz` targets
//! (`fuzz/corpus/<target>/*`) through the same entry functions the fuzz targets
//! call, so every `cargo test` run exercises them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_file() {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run(&data);
            n += 1;
        }
    }
    assert!(n >= 5, "corpus {target} has only {n} seeds");
}

#[test]
fn envelope_corpus() {
    replay("envelope", herald_wire::fuzz::envelope);
}

#[test]
fn frame_stream_corpus() {
    replay("frame_stream", herald_wire::fuzz::frame_stream);
}

#[test]
fn address_corpus() {
    replay("address", herald_wire::fuzz::address);
}

#[test]
fn casty_json_tree_corpus() {
    replay("casty_json_tree", herald_wire::fuzz::casty_json_tree);
}

#[test]
fn casty_msgpack_tree_corpus() {
    replay("casty_msgpack_tree", herald_wire::fuzz::casty_msgpack_tree);
}
