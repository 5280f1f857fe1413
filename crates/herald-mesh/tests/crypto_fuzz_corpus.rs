//! Replays the committed seed corpus of the `mesh_crypto` fuzz target through the same
//! entry point (`herald_mesh::crypto::fuzz_crypto`): none may panic, and the round-trip
//! seeds check the Fernet layer.

use std::path::PathBuf;

use herald_mesh::crypto::fuzz_crypto;

#[test]
fn mesh_crypto_corpus_replays_without_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mesh_crypto");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read seed");
        fuzz_crypto(&data);
        n += 1;
    }
    assert!(n >= 8, "corpus too small: {n}");
}
