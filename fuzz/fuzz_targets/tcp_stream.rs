//! Fuzz target `tcp_stream`: see `herald_transport::tcp::fuzz_tcp_stream` (frame
//! splitting with a size limit, then the per-kind body decoders).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_transport::tcp::fuzz_tcp_stream(data);
});
