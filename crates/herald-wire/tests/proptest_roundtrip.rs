//! Property tests: encode/decode round trips for envelopes, frames, addresses
//! and payload codecs, with arbitrary Unicode (astral characters, controls).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use bytes::{Bytes, BytesMut};
use herald_wire::payload::{
    CastyJson, CastyMsgpack, CastyValue, Json, MessagePack, PayloadCodec, Protobuf,
};
use herald_wire::{ActorAddress, Envelope, Frame, FrameCodec, Handshake, type_hint};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::of(("[a-z_]{1,8}", any::<String>())),
    )
        .prop_map(|(t, s, h, p, extra)| {
            let env = Envelope::new(t, s, h, p);
            match extra {
                Some((k, v)) if !matches!(k.as_str(), "target" | "sender" | "type_hint") => {
                    env.clone().with_extra_header(k, v).unwrap_or(env)
                }
                _ => env,
            }
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<String>(), any::<u16>()).prop_map(|(h, p)| Frame::Handshake(Handshake::new(h, p))),
        envelope().prop_map(Frame::Message),
        (2u8..=255, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(kind, body)| {
            Frame::Other {
                kind,
                body: Bytes::from(body),
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelope_round_trips(env in envelope()) {
        let bytes = env.encode();
        prop_assert_eq!(bytes.len(), env.encoded_len());
        let header = &bytes[4..4 + env.header_len()];
        // casty's header is pure ASCII and is valid JSON naming the same strings.
        prop_assert!(header.is_ascii());
        let parsed: serde_json::Value = serde_json::from_slice(header)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed["target"].as_str(), Some(env.target.as_str()));
        prop_assert_eq!(parsed["type_hint"].as_str(), Some(env.type_hint.as_str()));
        let back = Envelope::decode(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, env);
    }

    #[test]
    fn envelope_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Envelope::decode(Bytes::from(data));
    }

    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(frame(), 0..8),
        chunk in 1usize..64,
    ) {
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&f.encode());
        }
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn frame_stream_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let codec = FrameCodec::new().with_max_frame_size(1024);
        for item in herald_wire::FrameIter::new(codec, data) {
            let _ = item;
        }
    }

    #[test]
    fn addresses_round_trip(
        system in "[^@/?:]{1,12}",
        host in prop_oneof!["[a-z0-9.-]{1,20}", "[0-9a-f:]{2,20}".prop_filter("ipv6-ish", |h| h.contains(':'))],
        port in any::<u16>(),
        path in "[^?]{0,30}",
        local in any::<bool>(),
        node in proptest::option::of(".{1,12}"),
    ) {
        let addr = if local {
            ActorAddress::local(system, path.clone())
        } else {
            ActorAddress::remote(system, host, port, path.clone())
        };
        let mut addr = addr.map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Some(n) = node {
            addr = addr.with_node_id(n);
        }
        let text = addr.to_string();
        let back = ActorAddress::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, addr);
    }

    #[test]
    fn address_parse_never_panics(s in "casty://.{0,40}") {
        if let Ok(a) = ActorAddress::parse(&s) {
            // Whatever parses, re-parses to the same address.
            prop_assert_eq!(ActorAddress::parse(&a.to_string()).ok(), Some(a));
        }
    }
}

const RESERVED: [&str; 6] = [
    "_type",
    "__ref__",
    "__enum__",
    "__tuple__",
    "__frozenset__",
    "__dict__",
];

fn key() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("not a tag", |k| !RESERVED.contains(&k.as_str()))
}

fn tree(with_bytes: bool) -> impl Strategy<Value = CastyValue> {
    let leaf = prop_oneof![
        Just(CastyValue::None),
        any::<bool>().prop_map(CastyValue::Bool),
        any::<i64>().prop_map(|i| CastyValue::Int(i.into())),
        any::<u64>().prop_map(|i| CastyValue::Int(i.into())),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(CastyValue::Float),
        any::<String>().prop_map(CastyValue::Str),
        any::<String>().prop_map(CastyValue::Ref),
        (any::<String>(), any::<String>()).prop_map(|(t, m)| CastyValue::Enum {
            type_name: t,
            member: m
        }),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(move |b| if with_bytes {
            CastyValue::Bytes(b)
        } else {
            CastyValue::None
        }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(CastyValue::List),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(CastyValue::Tuple),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(CastyValue::FrozenSet),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4)
                .prop_map(CastyValue::Dict),
            (
                any::<String>(),
                proptest::collection::btree_map(key(), inner.clone(), 0..5)
            )
                .prop_map(|(t, f)| CastyValue::Object {
                    type_name: t,
                    fields: f.into_iter().collect()
                }),
            proptest::collection::btree_map(key(), inner, 0..5)
                .prop_map(|f| CastyValue::Map(f.into_iter().collect())),
        ]
    })
}

#[derive(Clone, PartialEq, Serialize, Deserialize, prost::Message)]
struct Sample {
    #[prost(int64, tag = "1")]
    seq: i64,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(double, tag = "3")]
    ratio: f64,
    #[prost(bool, tag = "4")]
    flag: bool,
    #[prost(int64, repeated, tag = "5")]
    items: Vec<i64>,
}

type_hint!(Sample => "herald_tests.Sample");

fn sample() -> impl Strategy<Value = Sample> {
    (
        any::<i64>(),
        any::<String>(),
        -1e300f64..1e300,
        any::<bool>(),
        proptest::collection::vec(any::<i64>(), 0..8),
    )
        .prop_map(|(seq, name, ratio, flag, items)| Sample {
            seq,
            name,
            ratio,
            flag,
            items,
        })
}

fn roundtrip<C: PayloadCodec<Sample>>(codec: C, s: &Sample) -> Result<(), TestCaseError> {
    let bytes = codec
        .encode(s)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Sample = codec
        .decode(&bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, s, "codec {}", codec.name());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn casty_json_tree_round_trips(v in tree(false)) {
        let bytes = v.to_json_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(bytes.is_ascii());
        let back = CastyValue::from_json_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, v);
    }

    #[test]
    fn casty_msgpack_tree_round_trips(v in tree(true)) {
        let bytes = v.to_msgpack_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = CastyValue::from_msgpack_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, v);
    }

    #[test]
    fn tree_decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = CastyValue::from_json_bytes(&data);
        let _ = CastyValue::from_msgpack_bytes(&data);
    }

    #[test]
    fn every_codec_round_trips_structs(s in sample()) {
        roundtrip(CastyJson, &s)?;
        roundtrip(CastyMsgpack, &s)?;
        roundtrip(Json, &s)?;
        roundtrip(MessagePack, &s)?;
        roundtrip(Protobuf, &s)?;
    }

    #[test]
    fn embedded_trees_survive_struct_round_trips(v in tree(false)) {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Holder { any: CastyValue }
        type_hint!(Holder => "m.Holder");
        let h = Holder { any: v };
        let bytes = CastyJson.encode(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Holder = CastyJson.decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, h);
    }
}
