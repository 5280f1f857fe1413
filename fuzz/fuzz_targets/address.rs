//! Fuzz target `address`: see `herald_wire::fuzz::address`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_wire::fuzz::address(data);
});
