//! `herald envelope` / `herald frame` end to end, against casty's vectors.

use std::process::{Command, Output};

use serde_json::Value;

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running herald: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn vectors(name: &str) -> Value {
    let path = herald_pyenv::shared_dir().join("vectors").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn envelope_encode_matches_every_casty_vector() {
    let v = vectors("casty_envelopes.json");
    for e in v["envelopes"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or_default();
        if e["payload_len"].as_u64().unwrap_or(0) > 10_000 {
            continue; // keep the command line short
        }
        let o = herald(&[
            "envelope",
            "encode",
            "--target",
            e["target"].as_str().unwrap_or_default(),
            "--sender",
            e["sender"].as_str().unwrap_or_default(),
            "--type-hint",
            e["type_hint"].as_str().unwrap_or_default(),
            "--payload-hex",
            e["payload_hex"].as_str().unwrap_or_default(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(
            stdout(&o).trim(),
            e["envelope_hex"].as_str().unwrap_or_default(),
            "{name}"
        );
    }
}

#[test]
fn envelope_encode_from_file_and_as_frame() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let o = herald(&[
        "envelope",
        "encode",
        "--target",
        "casty://bench@127.0.0.1:25520/sink",
        "--sender",
        "casty://bench@127.0.0.1:25521/",
        "--type-hint",
        "casty_vec_msgs.Ping",
        "--payload-file",
        file.to_str().unwrap_or_default(),
        "--frame",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = vectors("casty_payloads.json");
    let expected = v["wire_examples"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["serializer"] == "json"))
        .and_then(|x| x["tcp_frame_hex"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(stdout(&o).trim(), expected);
}

#[test]
fn envelope_decode_prints_fields_and_json() {
    let v = vectors("casty_envelopes.json");
    let e = v["envelopes"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "json_dataclass_payload"))
        .cloned()
        .unwrap_or_default();
    let hex = e["envelope_hex"].as_str().unwrap_or_default();
    let o = herald(&[
        "envelope",
        "decode",
        hex,
        "--json",
        "--payload-format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value =
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(out["target"], e["target"]);
    assert_eq!(out["sender"], e["sender"]);
    assert_eq!(out["type_hint"], e["type_hint"]);
    assert_eq!(out["payload_hex"], e["payload_hex"]);
    assert_eq!(out["payload_tree"]["value"], 42);
    let o = herald(&["envelope", "decode", hex]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("type_hint:   casty_vec_msgs.Ping"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn frame_decode_lists_a_capture() {
    let cap = vectors("casty_wire_capture.json");
    let mut stream = Vec::new();
    let frames = cap["client_side_json"]["frames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for f in &frames {
        stream.extend(hex::decode(f["hex"].as_str().unwrap_or_default()).unwrap_or_default());
    }
    stream.extend_from_slice(&[0, 0, 0, 2, 0x07, 0x00]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("capture.bin");
    std::fs::write(&file, &stream).unwrap_or_else(|e| panic!("{e}"));
    let o = herald(&[
        "frame",
        "decode",
        "--file",
        file.to_str().unwrap_or_default(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}"));
    let list = list.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), frames.len() + 1);
    assert_eq!(list[0]["kind"], "handshake");
    assert_eq!(list[1]["envelope"]["type_hint"], "casty_vec_msgs.Ping");
    assert_eq!(list[1]["offset"], 41);
    assert_eq!(list[frames.len()]["kind"], "other");
    let o = herald(&[
        "frame",
        "decode",
        "--file",
        file.to_str().unwrap_or_default(),
    ]);
    assert!(stdout(&o).contains(&format!(
        "{} frame(s), {} of {} bytes",
        frames.len() + 1,
        stream.len(),
        stream.len()
    )));
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    for args in [
        vec!["envelope", "decode", "zz"],
        vec!["envelope", "decode", "00"],
        vec!["envelope", "decode", "0000ffff00"],
        vec![
            "envelope",
            "encode",
            "--target",
            "a",
            "--sender",
            "b",
            "--type-hint",
            "c",
            "--payload-hex",
            "abc",
        ],
        vec!["frame", "decode", "ffffffff01"],
        vec!["frame", "decode", "00000009010203"],
        vec!["frame", "decode", "--file", "/nonexistent/capture.bin"],
        vec!["envelope", "decode", "00000000", "--payload-format", "xml"],
    ] {
        let o = herald(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("herald: error: "), "{err}");
    }
    let o = herald(&["frame", "decode", "ffffffff01"]);
    assert!(
        stderr(&o).contains("exceeds the maximum frame size"),
        "{}",
        stderr(&o)
    );
}
