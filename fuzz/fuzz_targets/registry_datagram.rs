#![no_main]
//! One registry request through the protocol core (UDP and TCP paths).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_registry::fuzz_entry::registry_datagram(data);
});
