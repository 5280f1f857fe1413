//! Fuzz target `envelope`: see `herald_wire::fuzz::envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_wire::fuzz::envelope(data);
});
