//! Replays the committed fuzz corpora (`fuzz/corpus/{brine,registry_datagram,registry_reply}`)
//! through the same entry points the `cargo fuzz` targets call; none may panic.

use std::path::Path;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.expect("dir entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        entry(&data);
        n += 1;
    }
    assert!(n >= 10, "{target}: only {n} corpus files");
}

#[test]
fn brine_corpus() {
    replay("brine", herald_registry::fuzz_entry::brine);
}

#[test]
fn registry_datagram_corpus() {
    replay(
        "registry_datagram",
        herald_registry::fuzz_entry::registry_datagram,
    );
}

#[test]
fn registry_reply_corpus() {
    replay(
        "registry_reply",
        herald_registry::fuzz_entry::registry_reply,
    );
}
