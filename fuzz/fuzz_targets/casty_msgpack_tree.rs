//! Fuzz target `casty_msgpack_tree`: see `herald_wire::fuzz::casty_msgpack_tree`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_wire::fuzz::casty_msgpack_tree(data);
});
