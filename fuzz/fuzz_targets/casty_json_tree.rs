//! Fuzz target `casty_json_tree`: see `herald_wire::fuzz::casty_json_tree`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_wire::fuzz::casty_json_tree(data);
});
