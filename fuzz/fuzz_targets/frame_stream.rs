//! Fuzz target `frame_stream`: see `herald_wire::fuzz::frame_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_wire::fuzz::frame_stream(data);
});
