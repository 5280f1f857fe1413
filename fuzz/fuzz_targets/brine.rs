#![no_main]
//! Brine decoder: strict and bounded; decoded values re-encode to a fixed point.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_registry::fuzz_entry::brine(data);
});
