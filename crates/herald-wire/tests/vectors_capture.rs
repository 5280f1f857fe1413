//! Ground truth: `../shared/vectors/casty_wire_capture.json`, frames casty 0.21.0
//! wrote to and accepted from real sockets. Every frame given in full hex is
//! decoded, checked against the recorded fields, and re-encoded byte-exact.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use herald_wire::payload::{CastyValue, TreeFormat};
use herald_wire::{Envelope, Frame, FrameCodec, Handshake};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, FramedRead};

fn capture() -> Value {
    let path = herald_pyenv::shared_dir().join("vectors/casty_wire_capture.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// All recorded frame objects that carry their complete bytes.
fn full_frames(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if let (Some(hex), Some(raw_len)) = (
                map.get("hex").and_then(Value::as_str),
                map.get("raw_len").and_then(Value::as_u64),
            ) && hex.len() as u64 == raw_len * 2
            {
                out.push(v.clone());
            }
            map.values().for_each(|c| full_frames(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| full_frames(c, out)),
        _ => {}
    }
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameCodec::new()
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("incomplete frame"));
    assert!(buf.is_empty(), "frame left {} bytes", buf.len());
    frame
}

#[test]
fn every_captured_frame_decodes_and_reencodes_exactly() {
    let cap = capture();
    let mut frames = Vec::new();
    full_frames(&cap, &mut frames);
    assert!(
        frames.len() >= 10,
        "only {} full frames found",
        frames.len()
    );
    let mut json_payloads = 0;
    for f in &frames {
        let bytes =
            hex::decode(f["hex"].as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        let frame = decode_one(&bytes);
        assert_eq!(
            u64::from(frame.kind()),
            f["frame_type"].as_u64().unwrap_or(99)
        );
        match &frame {
            Frame::Handshake(h) => {
                assert_eq!(
                    h.encode(),
                    Bytes::from(f["json"].as_str().unwrap_or_default().to_owned())
                );
            }
            Frame::Message(env) => {
                assert_eq!(env.target, f["target"].as_str().unwrap_or_default());
                assert_eq!(env.sender, f["sender"].as_str().unwrap_or_default());
                assert_eq!(env.type_hint, f["type_hint"].as_str().unwrap_or_default());
                assert_eq!(
                    env.payload.len() as u64,
                    f["payload_len"].as_u64().unwrap_or(0)
                );
                if env.payload.first() == Some(&b'{') {
                    let tree = TreeFormat::Json
                        .decode(&env.payload)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(tree.type_name(), Some(env.type_hint.as_str()));
                    assert_eq!(tree.to_json_bytes().ok().as_deref(), Some(&env.payload[..]));
                    json_payloads += 1;
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
        assert_eq!(frame.encode(), Bytes::from(bytes), "re-encode");
    }
    assert!(json_payloads >= 3, "json payloads seen: {json_payloads}");
}

#[test]
fn server_side_exchange_matches() {
    let cap = capture();
    let s = &cap["server_side"];
    let hs =
        |k: &str| decode_one(&hex::decode(s[k].as_str().unwrap_or_default()).unwrap_or_default());
    assert_eq!(
        hs("client_sent_handshake_hex"),
        Frame::Handshake(Handshake::new("127.0.0.1", 40001))
    );
    assert_eq!(
        hs("casty_handshake_reply_hex"),
        Frame::Handshake(Handshake::new("127.0.0.1", 39411))
    );
    let Frame::Message(sent) = hs("client_sent_message_frame_hex") else {
        panic!("not a message")
    };
    let tree = CastyValue::from_json_bytes(&sent.payload).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree.field("value"), Some(&CastyValue::Int(99)));
    let reply = &s["casty_reply_over_same_connection"];
    let expected = Envelope::new(
        reply["target"].as_str().unwrap_or_default(),
        reply["sender"].as_str().unwrap_or_default(),
        reply["type_hint"].as_str().unwrap_or_default(),
        Bytes::from(
            reply["payload_utf8"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
    );
    let bytes = hex::decode(reply["hex"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        Frame::Message(expected.clone()).encode(),
        Bytes::from(bytes.clone())
    );
    assert_eq!(decode_one(&bytes), Frame::Message(expected));
}

/// The whole client-side stream through `FramedRead` over a pipe, written in
/// small chunks with an unknown frame type (0x07) and a malformed message in the
/// middle: every good frame still arrives, in order.
#[tokio::test]
async fn framed_read_over_a_pipe_keeps_sync_across_bad_frames() {
    let cap = capture();
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for f in cap["client_side_json"]["frames"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let bytes = hex::decode(f["hex"].as_str().unwrap_or_default()).unwrap_or_default();
        expected.push(decode_one(&bytes));
        stream.extend_from_slice(&bytes);
        // After each real frame: an unknown type and a bad envelope.
        stream.extend_from_slice(&[0, 0, 0, 3, 0x07, b'h', b'i']);
        stream.extend_from_slice(&[0, 0, 0, 3, 0x01, 0xff, 0xff]);
    }
    let (mut tx, rx) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for chunk in stream.chunks(7) {
            tx.write_all(chunk).await?;
        }
        tx.shutdown().await
    });
    let mut framed = FramedRead::new(rx, FrameCodec::new());
    let mut good = Vec::new();
    let (mut other, mut malformed) = (0, 0);
    while let Some(item) = framed.next().await {
        match item.unwrap_or_else(|e| panic!("fatal error: {e}")) {
            Frame::Other { kind: 7, body } => {
                assert_eq!(&body[..], b"hi");
                other += 1;
            }
            Frame::Malformed { kind: 1, .. } => malformed += 1,
            frame => good.push(frame),
        }
    }
    writer
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(good, expected);
    assert_eq!((other, malformed), (4, 4));
}
