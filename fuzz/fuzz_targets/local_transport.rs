//! Fuzz target `local_transport`: see `herald_transport::testkit::fuzz_local_transport`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_transport::testkit::fuzz_local_transport(data);
});
