//! Ground truth: every vector of `../shared/vectors/casty_envelopes.json`
//! (bytes written by casty 0.21.0): encode equality and decode equality.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use bytes::Bytes;
use herald_wire::{Envelope, Frame, FrameCodec, Handshake, WireError};
use serde_json::Value;
use tokio_util::codec::Decoder;

fn vectors() -> Value {
    let path = herald_pyenv::shared_dir().join("vectors/casty_envelopes.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key} missing in {v}"))
}

/// The `count` cases listed under `key`.
fn cases<'a>(v: &'a Value, key: &str, count: usize) -> &'a [Value] {
    let list = v[key].as_array().unwrap_or_else(|| panic!("no {key}"));
    assert_eq!(list.len(), count);
    list
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex in vector: {e}"))
}

#[test]
fn every_envelope_vector_encodes_and_decodes_exactly() {
    let v = vectors();
    for vec in cases(&v, "envelopes", 12) {
        let name = s(vec, "name");
        let payload = unhex(s(vec, "payload_hex"));
        assert_eq!(
            payload.len() as u64,
            vec["payload_len"].as_u64().unwrap_or(u64::MAX),
            "{name}"
        );
        let env = Envelope::new(
            s(vec, "target"),
            s(vec, "sender"),
            s(vec, "type_hint"),
            payload,
        );
        let expected = unhex(s(vec, "envelope_hex"));
        let encoded = env.encode();
        assert_eq!(
            hex::encode(&encoded),
            hex::encode(&expected),
            "encode {name}"
        );
        assert_eq!(env.encoded_len(), expected.len(), "encoded_len {name}");
        assert_eq!(
            env.header_len() as u64,
            vec["header_len"].as_u64().unwrap_or(0),
            "{name}"
        );
        let decoded = Envelope::decode(Bytes::from(expected.clone()))
            .unwrap_or_else(|e| panic!("decode {name}: {e}"));
        assert_eq!(decoded, env, "decode {name}");
        // As a TCP frame.
        let mut frame = unhex(s(vec, "tcp_frame_prefix_hex"));
        frame.extend_from_slice(&expected);
        assert_eq!(
            Frame::Message(env.clone()).encode(),
            Bytes::from(frame.clone()),
            "frame {name}"
        );
        let mut buf = bytes::BytesMut::from(&frame[..]);
        let got = FrameCodec::new()
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, Some(Frame::Message(env)), "frame decode {name}");
        assert!(buf.is_empty());
    }
}

#[test]
fn decode_only_vectors_behave_as_documented() {
    let v = vectors();
    for case in cases(&v, "decode_only", 5) {
        let name = s(case, "name");
        let bytes = Bytes::from(unhex(s(case, "envelope_hex")));
        let got = Envelope::decode(bytes);
        match name {
            "compact_reordered_raw_utf8" | "extra_header_key" => {
                let env = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                let d = &case["decoded"];
                assert_eq!(env.target, s(d, "target"), "{name}");
                assert_eq!(env.sender, s(d, "sender"), "{name}");
                assert_eq!(env.type_hint, s(d, "type_hint"), "{name}");
                assert_eq!(hex::encode(&env.payload), s(d, "payload_hex"), "{name}");
                if name == "extra_header_key" {
                    assert_eq!(env.extra_header("trace_id"), Some(&Value::from("abc")));
                    // Re-encoding keeps the extra key, byte-exact with the input.
                    assert_eq!(hex::encode(env.encode()), s(case, "envelope_hex"));
                }
            }
            // casty raises KeyError: so do we, naming the key.
            "missing_type_hint" => assert_eq!(
                got,
                Err(WireError::MissingField {
                    what: "envelope header",
                    key: "type_hint"
                })
            ),
            // casty accepts and fails later; Herald is stricter.
            "non_string_values" => {
                let e = got.expect_err(name);
                assert!(
                    matches!(e, WireError::WrongFieldType { ref key, .. } if key == "target"),
                    "{e:?}"
                );
            }
            "header_len_overrun" => {
                assert_eq!(
                    got,
                    Err(WireError::HeaderOverrun {
                        header_len: 1000,
                        available: 48
                    })
                );
            }
            other => panic!("unexpected decode_only vector {other}"),
        }
    }
}

#[test]
fn handshake_vectors_are_byte_exact() {
    let v = vectors();
    for h in cases(&v, "handshake_frames", 4) {
        let port = h["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("port"));
        let hand = Handshake::new(s(h, "host"), port);
        assert_eq!(&hand.encode()[..], s(h, "json").as_bytes());
        let frame = Frame::Handshake(hand.clone());
        assert_eq!(hex::encode(frame.encode()), s(h, "frame_hex"));
        let mut buf = bytes::BytesMut::from(&unhex(s(h, "frame_hex"))[..]);
        assert_eq!(FrameCodec::new().decode(&mut buf), Ok(Some(frame)));
    }
}
