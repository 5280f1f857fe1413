//! Replays the committed seed corpus of the `local_transport` fuzz target
//! (`fuzz/corpus/local_transport/*`) through the entry function the target calls.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[test]
fn local_transport_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/local_transport");
    let mut n = 0;
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        if path.is_file() {
            herald_transport::testkit::fuzz_local_transport(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "corpus has only {n} seeds");
}

#[test]
fn random_scripts_keep_the_rules() {
    // A deterministic pseudo-random sweep over many scripts, beyond the seeds.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let mut data = Vec::with_capacity(len * 2);
        for _ in 0..len * 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push((x >> 24) as u8);
        }
        herald_transport::testkit::fuzz_local_transport(&data);
    }
}
