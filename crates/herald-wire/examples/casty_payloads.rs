//! Typed casty messages: the tagged JSON / MessagePack trees casty's `json` and
//! `msgpack` serializers use, a registry from type hints to decoders, and the
//! envelope around them.
//!
//! `cargo run -p herald-wire --example casty_payloads`

use herald_wire::payload::{
    CastyJson, CastyMsgpack, CastyRef, FrozenSet, PayloadCodec, TypeRegistry, envelope_for,
};
use herald_wire::{WireError, type_hint};
use serde::{Deserialize, Serialize};

/// `casty_vec_msgs.Ping(value: int)` on the Python side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    value: i64,
}

/// A message carrying an actor ref and a frozenset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Subscribe {
    reply_to: CastyRef,
    topics: FrozenSet<String>,
}

type_hint!(Ping => "casty_vec_msgs.Ping", Subscribe => "app.Subscribe");

/// What the application receives.
#[derive(Debug)]
#[allow(dead_code)] // the fields are shown through `Debug`
enum Inbox {
    Ping(Ping),
    Subscribe(Subscribe),
}

fn main() -> Result<(), WireError> {
    let ping = Ping { value: 42 };
    let json = CastyJson.encode(&ping)?;
    println!("casty json    : {}", String::from_utf8_lossy(&json));
    let mp = CastyMsgpack.encode(&ping)?;
    println!("casty msgpack : {} bytes", mp.len());

    let sub = Subscribe {
        reply_to: CastyRef("casty://app@127.0.0.1:25521/_ask/feedface".into()),
        topics: FrozenSet(vec!["orders".into()]),
    };
    let env = envelope_for(
        &CastyJson,
        "casty://app@127.0.0.1:25520/bus",
        "casty://app@127.0.0.1:25521/",
        &sub,
    )?;
    println!(
        "envelope      : {} bytes, type_hint {}",
        env.encoded_len(),
        env.type_hint
    );

    let mut registry = TypeRegistry::new();
    registry
        .register(CastyJson, Inbox::Ping)
        .register(CastyJson, Inbox::Subscribe);
    println!("decoded       : {:?}", registry.decode_envelope(&env)?);
    println!(
        "decoded       : {:?}",
        registry.decode("casty_vec_msgs.Ping", &json)?
    );
    match registry.decode("casty_vec_msgs.Unknown", &json) {
        Err(e) => println!("unknown hint  : {e}"),
        Ok(m) => println!("unexpected    : {m:?}"),
    }
    Ok(())
}
