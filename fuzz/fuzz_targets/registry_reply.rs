#![no_main]
//! One reply through the registry client's parsers (QUERY, LIST, "OK").
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_registry::fuzz_entry::registry_reply(data);
});
