//! Fuzz target `frame_reader`: see `herald_transport::tcp::fuzz_frame_reader` (the
//! connection reader fed in input-chosen reads, checked against `split_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_transport::tcp::fuzz_frame_reader(data);
});
