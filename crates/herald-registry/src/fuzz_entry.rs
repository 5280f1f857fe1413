//! Entry points shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/brine.rs`,
//! `registry_datagram.rs`, `registry_reply.rs`) and the corpus replay test; each
//! panics only when an invariant is broken.
//!
//! ```
//! herald_registry::fuzz_entry::brine(&[0x12, 0x50, 0x51, 0x52]);
//! herald_registry::fuzz_entry::registry_datagram(b"\x00\xff\xfe");
//! herald_registry::fuzz_entry::registry_reply(b"\x0e\x02OK");
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::brine;
use crate::core::{CoreConfig, MAX_UDP_LIST_READ, RegistryCore, Transport};
use crate::proto;

/// Decodes `data`; a decoded value must re-encode to bytes that decode to a value
/// encoding identically (a fixed point), and must print.
pub fn brine(data: &[u8]) {
    let Ok((value, used)) = brine::decode(data) else {
        return;
    };
    assert!(used <= data.len() && used > 0);
    let once = brine::encode(&value);
    let (again, used_again) = match brine::decode(&once) {
        Ok(x) => x,
        Err(e) => panic!("re-encoded value does not decode: {e}"),
    };
    assert_eq!(used_again, once.len());
    assert_eq!(brine::encode(&again), once);
    let _ = value.to_string();
}

/// Feeds `data` to a registry core as one request over both transports (the first
/// byte picks the source address) and checks the reply is valid brine of bounded
/// size and the table stays consistent.
pub fn registry_datagram(data: &[u8]) {
    let Some((&selector, request)) = data.split_first() else {
        return;
    };
    let mut core = RegistryCore::new(CoreConfig {
        allow_listing: selector & 0x80 == 0,
        rewrite_loopback: selector & 0x40 != 0,
        max_entries: 64,
        max_entries_per_host: 16,
        prune_timeout: Duration::from_secs(1),
        ..CoreConfig::default()
    });
    let now = Instant::now();
    // Bit 4 picks a loopback or a remote source, bit 3 whether the local address is known.
    let source = if selector & 0x10 == 0 {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, selector & 0x07))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, selector & 0x07))
    };
    let local = (selector & 0x08 != 0).then_some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)));
    let mut reply = Vec::new();
    for (i, transport) in [Transport::Udp, Transport::Tcp, Transport::Udp]
        .into_iter()
        .enumerate()
    {
        let at = now + Duration::from_millis(700 * i as u64);
        if core
            .handle_via(at, source, local, transport, request, &mut reply)
            .is_ok()
        {
            assert!(
                reply.len() <= MAX_UDP_LIST_READ,
                "reply of {} bytes",
                reply.len()
            );
            if let Err(e) = brine::decode(&reply) {
                panic!("reply does not decode: {e}");
            }
        } else {
            assert!(reply.is_empty(), "no reply bytes on a dropped request");
        }
    }
    let rows = core.entries(now + Duration::from_secs(5)).len();
    assert_eq!(rows, core.len());
    core.prune(now + Duration::from_secs(10));
    assert!(core.is_empty());
}

/// Feeds `data` to the client's reply parsers (what a registry, or anyone answering
/// from its port, sends back): a QUERY or LIST reply that parses must come out the
/// same after being encoded again, and the `"OK"` check must agree with the decoder.
pub fn registry_reply(data: &[u8]) {
    if let Ok(addrs) = proto::parse_query_reply(data) {
        let mut again = Vec::new();
        brine::encode_tuple_header(addrs.len(), &mut again);
        for a in &addrs {
            proto::encode_addr(&a.host, &a.port, &mut again);
        }
        match proto::parse_query_reply(&again) {
            Ok(back) => assert_eq!(back, addrs),
            Err(e) => panic!("re-encoded QUERY reply does not parse: {e}"),
        }
    }
    if let Ok(Some(names)) = proto::parse_list_reply(data) {
        let mut again = Vec::new();
        brine::encode_tuple_header(names.len(), &mut again);
        for n in &names {
            brine::encode_str(n, &mut again);
        }
        match proto::parse_list_reply(&again) {
            Ok(back) => assert_eq!(back, Some(names)),
            Err(e) => panic!("re-encoded LIST reply does not parse: {e}"),
        }
    }
    let ok = proto::is_ok_reply(data);
    let decoded_ok = matches!(brine::decode(data), Ok((brine::Value::Str(s), _)) if s == "OK");
    assert_eq!(ok, decoded_ok);
}
