//! Criterion benchmarks of herald-mesh's RabbitMQ wire path and nuropb encryption, no
//! broker needed: building the AMQP properties and nuropb header table of a request,
//! decoding an incoming delivery's properties, Fernet encrypt/decrypt of a 1 KiB body,
//! and a full encrypted call's crypto (RSA-OAEP-wrapped Fernet key: seal + open of a
//! request and of its reply).
//!
//! `cargo bench -p herald-benches --bench mesh_amqp`. Round trips through a real broker,
//! beside raw lapin and nuropb, are `cargo xtask bench mesh`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_mesh::amqp::{amqp_properties, message_from_amqp};
use herald_mesh::crypto::{self, FernetKey, ServiceKey};
use herald_mesh::message::{Envelope, Message, RequestBody};
use serde_json::json;

fn request() -> Message {
    let mut m = Message::from_envelope(Envelope::Request(RequestBody {
        service: "calc".into(),
        method: "add".into(),
        params: json!({"a": 2, "b": 3})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        correlation_id: "f9a2bc0011223344556677889900aabb".into(),
        context: json!({"user": "bench"}),
        trace_id: Some("trace-f9a2bc".into()),
    }));
    m.properties.reply_to = Some("nuropb-calc-0123456789abcdef-rq".into());
    m.properties.expiration_ms = Some(60_000);
    m.properties.mandatory = true;
    m
}

fn wire(c: &mut Criterion) {
    let m = request();
    let props = amqp_properties(&m).expect("properties");
    let body = m.payload.to_bytes().expect("body").to_vec();
    let mut g = c.benchmark_group("mesh_amqp_wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_properties_and_headers", |b| {
        b.iter(|| amqp_properties(std::hint::black_box(&m)).expect("properties"))
    });
    g.bench_function("decode_delivery", |b| {
        b.iter(|| {
            let msg = message_from_amqp(std::hint::black_box(&props), body.clone());
            msg.headers.message_type().expect("valid")
        })
    });
    g.finish();
}

fn encryption(c: &mut Criterion) {
    let body = vec![b'x'; 1024];
    let fernet = FernetKey::generate();
    let token = fernet.encrypt(&body);
    let mut g = c.benchmark_group("mesh_crypto");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("fernet_encrypt_1k", |b| b.iter(|| fernet.encrypt(&body)));
    g.bench_function("fernet_decrypt_1k", |b| {
        b.iter(|| fernet.decrypt(token.as_bytes()).expect("decrypt"))
    });
    g.finish();

    let key = ServiceKey::generate(2048).expect("RSA key");
    let public = key.public_key().clone();
    let mut g = c.benchmark_group("mesh_crypto_call");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("encrypted_call_rsa2048_1k", |b| {
        b.iter(|| {
            let (wire, client_key) = crypto::seal_request(&body, &public).expect("seal");
            let (plain, service_key) = crypto::open_request(&wire, &key).expect("open");
            let reply = crypto::seal_reply(&plain, &service_key, &public).expect("seal reply");
            crypto::open_reply(&reply, &client_key).expect("open reply")
        })
    });
    g.finish();
}

criterion_group!(benches, wire, encryption);
criterion_main!(benches);
