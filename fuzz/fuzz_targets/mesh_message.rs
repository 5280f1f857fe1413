//! Fuzzes the decoding of an incoming mesh message as the RabbitMQ backend receives it:
//! AMQP basic properties (with the nuropb header table) and a body, then header
//! validation, JSON envelope parsing and, for `encrypted: yes`, the encrypted-body parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_mesh::amqp::fuzz_decode(data);
});
