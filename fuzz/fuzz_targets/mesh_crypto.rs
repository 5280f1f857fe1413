//! Fuzzes the decoders of encrypted mesh traffic: PEM public keys from describe
//! documents, encrypted request bodies (RSA-OAEP-wrapped Fernet key + token), reply
//! bodies, and a seal/open round trip of the Fernet layer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_mesh::crypto::fuzz_crypto(data);
});
