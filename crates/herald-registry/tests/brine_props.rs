//! Property tests of the brine codec: round trips, shortest forms, and no panics on
//! arbitrary input.

use herald_registry::brine::{self, BrineError, Value};
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::NotImplemented),
        Just(Value::Ellipsis),
        any::<i64>().prop_map(Value::Int),
        (-1000i64..1000).prop_map(Value::Int),
        (-1e300f64..1e300).prop_map(Value::Float),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
        ".{0,300}".prop_map(Value::Str),
        ((-1e9f64..1e9), (-1e9f64..1e9)).prop_map(|(a, b)| Value::Complex(a, b)),
        "[1-9][0-9]{19,60}".prop_map(|s| Value::BigInt(s.into())),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::FrozenSet),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(a, b, c)| Value::Slice(Box::new([a, b, c]))),
        ]
    })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(v in value()) {
        let bytes = brine::encode(&v);
        let (back, used) = brine::decode(&bytes).expect("own encoding decodes");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, v);
    }

    #[test]
    fn every_strict_prefix_is_reported_truncated(v in value()) {
        let bytes = brine::encode(&v);
        for cut in 0..bytes.len() {
            match brine::decode(&bytes[..cut]) {
                Err(e) => prop_assert!(e.is_truncated(), "cut {}: {}", cut, e),
                Ok((_, used)) => prop_assert!(false, "prefix of {} bytes decoded ({} used)", cut, used),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        match brine::decode(&data) {
            Ok((_, used)) => prop_assert!(used >= 1 && used <= data.len()),
            Err(e) => prop_assert!(e.offset() <= data.len(), "{}", e),
        }
        herald_registry::fuzz_entry::registry_datagram(&data);
    }
}

#[test]
fn large_ints_pick_the_long_form_at_256_digits() {
    let v = Value::BigInt(format!("1{}", "0".repeat(255)).into());
    let bytes = brine::encode(&v);
    assert_eq!(&bytes[..5], &[0x17, 0, 0, 1, 0]);
    assert!(matches!(
        brine::decode(&[0x17, 0, 0, 0, 2, b'1']),
        Err(BrineError::Truncated { .. })
    ));
}
