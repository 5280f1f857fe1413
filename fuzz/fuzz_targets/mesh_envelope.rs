//! Fuzzes herald-mesh's JSON side: nuropb envelopes (decode, re-encode, decode),
//! describe documents, and the topic-pattern matcher (which must stay linear on
//! hostile patterns).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_mesh::message::fuzz_envelope(data);
});
