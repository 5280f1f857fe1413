//! Ground truth: `../shared/vectors/casty_payloads.json` (casty 0.21.0's json and
//! msgpack serializers). Encode equality and decode equality for every
//! deterministic vector; pickle and zlib variants are out of scope (see docs/wire.md).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use herald_wire::payload::{
    ByteBuf, CastyJson, CastyMsgpack, CastyRef, CastyValue, FrozenSet, PayloadCodec, TreeFormat,
    TypeHint, TypeRegistry,
};
use herald_wire::{WireError, type_hint};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    value: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greet {
    name: String,
    #[serde(default = "one")]
    times: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "casty_vec_msgs.Color")]
#[allow(clippy::upper_case_acronyms)]
enum Color {
    RED,
    GREEN,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "casty_vec_msgs.Inner")]
struct Inner {
    x: f64,
    flag: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rich {
    text: String,
    maybe: Option<i64>,
    items: Vec<i64>,
    pair: (i64, String),
    tags: FrozenSet<i64>,
    mapping: CastyValue,
    color: Color,
    inner: Inner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Nested {
    n: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WithRef {
    reply_to: CastyRef,
    value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WithBytes {
    data: ByteBuf,
}

type_hint!(
    Ping => "casty_vec_msgs.Ping",
    Greet => "casty_vec_msgs.Greet",
    Rich => "casty_vec_msgs.Rich",
    Nested => "casty_vec_msgs.Outer.Nested",
    WithRef => "casty_vec_msgs.WithRef",
    WithBytes => "casty_vec_msgs.WithBytes",
);

fn rich() -> Rich {
    Rich {
        text: "hi".into(),
        maybe: None,
        items: vec![1, 2, 3],
        pair: (7, "seven".into()),
        tags: FrozenSet(vec![1, 2]),
        mapping: CastyValue::Dict(vec![
            (CastyValue::Int(1), CastyValue::Str("one".into())),
            (
                CastyValue::Str("k".into()),
                CastyValue::List(vec![CastyValue::Bool(true), CastyValue::None]),
            ),
        ]),
        color: Color::GREEN,
        inner: Inner { x: 1.5, flag: true },
    }
}

fn vectors() -> Vec<Value> {
    let path = herald_pyenv::shared_dir().join("vectors/casty_payloads.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    v["payloads"].as_array().cloned().unwrap_or_default()
}

fn check<T>(vector: &Value, msg: &T, counted: &mut usize)
where
    T: Serialize + DeserializeOwned + TypeHint + PartialEq + std::fmt::Debug,
{
    let serializer = vector["serializer"].as_str().unwrap_or_default();
    let name = vector["message"].as_str().unwrap_or_default();
    assert_eq!(vector["type_hint"].as_str(), Some(T::TYPE_HINT), "{name}");
    type Decode<T> = fn(&[u8]) -> Result<T, WireError>;
    let (enc, dec): (Result<bytes::Bytes, WireError>, Decode<T>) = match serializer {
        "json" => (CastyJson.encode(msg), |b| CastyJson.decode(b)),
        "msgpack" => (CastyMsgpack.encode(msg), |b| CastyMsgpack.decode(b)),
        _ => return,
    };
    match vector["payload_hex"].as_str() {
        Some(hex_str) => {
            let expected = hex::decode(hex_str).unwrap_or_else(|e| panic!("{e}"));
            let got = enc.unwrap_or_else(|e| panic!("{serializer}/{name}: {e}"));
            assert_eq!(hex::encode(&got), hex_str, "encode {serializer}/{name}");
            let back = dec(&expected).unwrap_or_else(|e| panic!("decode {serializer}/{name}: {e}"));
            assert_eq!(&back, msg, "decode {serializer}/{name}");
            // The dynamic tree re-encodes byte-exact too.
            let format: TreeFormat = serializer.parse().unwrap_or_else(|e| panic!("{e}"));
            let tree = format.decode(&expected).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                format.encode(&tree).ok(),
                Some(expected),
                "tree {serializer}/{name}"
            );
        }
        None => {
            // casty raised TypeError (bytes in JSON): so do we, with a clear message.
            let err = enc.expect_err(name);
            assert!(err.to_string().contains("not JSON serializable"), "{err}");
        }
    }
    *counted += 1;
}

#[test]
fn every_json_and_msgpack_payload_vector_matches() {
    let all = vectors();
    assert_eq!(all.len(), 40);
    let mut counted = 0;
    for v in &all {
        match v["message"].as_str().unwrap_or_default() {
            "ping" => check(v, &Ping { value: 42 }, &mut counted),
            "greet_unicode" => check(
                v,
                &Greet {
                    name: "Zoë 🚀".into(),
                    times: 3,
                },
                &mut counted,
            ),
            "rich" => check(v, &rich(), &mut counted),
            "nested_qualname" => check(v, &Nested { n: 5 }, &mut counted),
            "with_actor_ref" => check(
                v,
                &WithRef {
                    reply_to: CastyRef("casty://app@127.0.0.1:25521/_ask/abc123".into()),
                    value: 1,
                },
                &mut counted,
            ),
            "plain_int" => check(v, &7i64, &mut counted),
            "plain_str" => check(v, &"hello".to_owned(), &mut counted),
            "bytes_field" => check(
                v,
                &WithBytes {
                    data: ByteBuf(vec![0, 0xff]),
                },
                &mut counted,
            ),
            other => panic!("unexpected vector {other}"),
        }
    }
    // 8 json (one of them the bytes TypeError) + 8 msgpack.
    assert_eq!(counted, 16);
}

#[test]
fn wrong_dataclass_and_unknown_hint_are_clear_errors() {
    let payload = CastyJson
        .encode(&Ping { value: 1 })
        .unwrap_or_else(|e| panic!("{e}"));
    let err = PayloadCodec::<Nested>::decode(&CastyJson, &payload).unwrap_err();
    assert_eq!(
        err.to_string(),
        "casty-json payload codec failed: payload is a \"casty_vec_msgs.Ping\" dataclass, expected \"casty_vec_msgs.Outer.Nested\""
    );
    let err = PayloadCodec::<Ping>::decode(
        &CastyJson,
        br#"{"_type": "casty_vec_msgs.Ping", "value": "x"}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid type: string \"x\", expected i64"),
        "{err}"
    );
    let mut reg: TypeRegistry<Ping> = TypeRegistry::new();
    reg.register(CastyMsgpack, |p: Ping| p);
    assert_eq!(
        reg.decode("casty_vec_msgs.Nope", b""),
        Err(WireError::UnknownTypeHint {
            hint: "casty_vec_msgs.Nope".into()
        })
    );
    assert_eq!(reg.hints(), vec!["casty_vec_msgs.Ping"]);
}

#[test]
fn missing_fields_use_serde_defaults_like_casty() {
    let g: Greet = CastyJson
        .decode(br#"{"_type": "casty_vec_msgs.Greet", "name": "a", "extra": 1}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        g,
        Greet {
            name: "a".into(),
            times: 1
        }
    );
}

/// casty's `json` serializer inside its zlib wrapper (`json+zlib6` vectors):
/// Herald inflates them to the same values; its own level-6 output inflates back.
#[test]
fn json_zlib_vectors_decode() {
    use herald_wire::payload::Zlib;
    let all = vectors();
    let mut n = 0;
    for v in all.iter().filter(|v| v["serializer"] == "json+zlib6") {
        let name = v["message"].as_str().unwrap_or_default();
        let Some(hex_str) = v["payload_hex"].as_str() else {
            continue; // the bytes TypeError vector
        };
        let bytes = hex::decode(hex_str).unwrap_or_else(|e| panic!("{e}"));
        let plain = all
            .iter()
            .find(|p| p["serializer"] == "json" && p["message"] == name)
            .and_then(|p| p["payload_hex"].as_str())
            .map(|h| hex::decode(h).unwrap_or_default())
            .unwrap_or_else(|| panic!("no json vector for {name}"));
        let tree = TreeFormat::JsonZlib
            .decode(&bytes)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tree.to_json_bytes().ok(), Some(plain.clone()), "{name}");
        let again = TreeFormat::JsonZlib
            .encode(&tree)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            TreeFormat::JsonZlib.decode(&again).ok(),
            Some(tree),
            "{name}"
        );
        n += 1;
    }
    assert_eq!(n, 7);
    let ping = all
        .iter()
        .find(|v| v["serializer"] == "json+zlib6" && v["message"] == "ping")
        .and_then(|v| v["payload_hex"].as_str())
        .map(|h| hex::decode(h).unwrap_or_default())
        .unwrap_or_default();
    let p: Ping = Zlib::new(CastyJson)
        .decode(&ping)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p, Ping { value: 42 });
}

#[test]
fn zlib_bombs_and_garbage_are_errors() {
    use herald_wire::payload::{Zlib, zlib_compress, zlib_decompress};
    let bomb = zlib_compress(&vec![b' '; 4 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let e = zlib_decompress(&bomb, 1024 * 1024).unwrap_err();
    assert_eq!(
        e.to_string(),
        "zlib payload codec failed: decompressed payload exceeds the limit of 1048576 bytes"
    );
    let e = PayloadCodec::<Ping>::decode(&Zlib::new(CastyJson).with_max_decompressed(10), &bomb)
        .unwrap_err();
    assert!(
        e.to_string().contains("exceeds the limit of 10 bytes"),
        "{e}"
    );
    let e = zlib_decompress(b"\x78\x9cnot deflate", 1024).unwrap_err();
    assert!(
        e.to_string().contains("invalid zlib stream of 13 bytes"),
        "{e}"
    );
    let truncated = &zlib_compress(b"hello hello hello")[..6];
    assert!(zlib_decompress(truncated, 1024).is_err());
}
