//! Replays the committed fuzz corpora of `native_handshake`, `tcp_stream` and
//! `frame_reader` (`fuzz/corpus/<target>/*`) through the same entry points the fuzz
//! targets call; none of them may panic (for `frame_reader`, a panic is also a
//! difference between the connection reader and `split_frame`).

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("read corpus file");
            out.push((path.display().to_string(), data));
        }
    }
    assert!(!out.is_empty(), "empty corpus in {}", dir.display());
    out
}

#[test]
fn native_handshake_corpus_replays_without_panics() {
    for (name, data) in corpus("native_handshake") {
        let r = std::panic::catch_unwind(|| herald_transport::native::fuzz_native_handshake(&data));
        assert!(r.is_ok(), "panic on {name}");
    }
}

#[test]
fn tcp_stream_corpus_replays_without_panics() {
    for (name, data) in corpus("tcp_stream") {
        let r = std::panic::catch_unwind(|| herald_transport::tcp::fuzz_tcp_stream(&data));
        assert!(r.is_ok(), "panic on {name}");
    }
}

#[test]
fn frame_reader_corpus_replays_without_panics() {
    for (name, data) in corpus("frame_reader") {
        let r = std::panic::catch_unwind(|| herald_transport::tcp::fuzz_frame_reader(&data));
        assert!(r.is_ok(), "panic on {name}");
    }
}
