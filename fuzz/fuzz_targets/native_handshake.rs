//! Fuzz target `native_handshake`: see `herald_transport::native::fuzz_native_handshake`
//! (decode native control frames, re-encode them, drive the acceptor and dialer state
//! machines with them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_transport::native::fuzz_native_handshake(data);
});
