//! Encode a casty envelope byte-exact, decode it back, and inspect errors.
//!
//! `cargo run -p herald-wire --example envelope_roundtrip`

use bytes::Bytes;
use herald_wire::{ActorAddress, Envelope, WireError};

fn main() -> Result<(), WireError> {
    let target: ActorAddress = "casty://my-sys@127.0.0.1:25520/user/counter".parse()?;
    let sender = target.with_path("")?; // casty's sender: the system root
    let env = Envelope::new(
        target.to_string(),
        sender.to_string(),
        "casty_vec_msgs.Ping",
        Bytes::from_static(br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#),
    )
    .with_extra_header("trace_id", "4bf92f35")?; // casty ignores extra keys

    let bytes = env.encode();
    println!("{} bytes: {}", bytes.len(), hex_preview(&bytes));

    let back = Envelope::decode(bytes)?;
    println!("target    = {}", back.target);
    println!("sender    = {}", back.sender);
    println!("type_hint = {}", back.type_hint);
    println!("trace_id  = {:?}", back.extra_header("trace_id"));
    assert_eq!(back, env);

    // Bad input is an error that names the problem, never a panic.
    let bad = Bytes::from_static(b"\x00\x00\x03\xe8{\"target\": \"a\"}");
    match Envelope::decode(bad) {
        Err(e) => println!("rejected: {e}"),
        Ok(env) => println!("unexpectedly accepted {env:?}"),
    }
    Ok(())
}

fn hex_preview(b: &[u8]) -> String {
    let shown: String = b.iter().take(24).map(|x| format!("{x:02x}")).collect();
    format!("{shown}…")
}
