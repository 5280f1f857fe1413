//! Replays the committed seed corpus of the `mesh_envelope` fuzz target through the
//! same entry point (`herald_mesh::message::fuzz_envelope`): none may panic. Also
//! checks the topic matcher on the hostile-pattern seed directly.

use std::path::PathBuf;

use herald_mesh::message::{fuzz_envelope, topic_matches};

#[test]
fn mesh_envelope_corpus_replays_without_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mesh_envelope");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read seed");
        fuzz_envelope(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus too small: {n}");
}

#[test]
fn topic_matching_is_not_exponential() {
    let pattern = vec!["#"; 60].join(".") + ".x";
    let key = vec!["w"; 60].join(".");
    assert!(!topic_matches(&pattern, &key));
    assert!(topic_matches(&pattern, &(key + ".x")));
    assert!(topic_matches("#", ""));
    assert!(topic_matches("a.#.b", "a.b"));
    assert!(topic_matches("a.#.b", "a.x.y.b"));
    assert!(!topic_matches("a.*.b", "a.b"));
    assert!(topic_matches("*", "a"));
    assert!(!topic_matches("*", "a.b"));
}
