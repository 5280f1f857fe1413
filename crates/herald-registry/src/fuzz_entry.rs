//! Entry points shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/brine.rs`,
//! `registry_datagram.rs`) and the corpus replay test; each panics only when an
//! invariant is broken.
//!
//! ```
//! herald_registry::fuzz_entry::brine(&[0x12, 0x50, 0x51, 0x52]);
//! herald_registry::fuzz_entry::registry_datagram(b"\x00\xff\xfe");
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::brine;
use crate::core::{CoreConfig, MAX_UDP_LIST_READ, RegistryCore, Transport};

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
