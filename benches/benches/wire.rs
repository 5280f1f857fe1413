//! Criterion benches of herald-wire: envelope encode/decode at 0 B .. 1 MiB with
//! casty-shaped headers, the frame codec, and the casty payload trees.
//!
//! `cargo bench -p herald-benches --bench wire`. The side-by-side comparison with
//! casty and memcpy is `cargo xtask bench wire`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_wire::payload::{CastyJson, CastyMsgpack, CastyValue, PayloadCodec};
use herald_wire::{Envelope, FrameCodec};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

const TARGET: &str = "casty://bench@127.0.0.1:25520/sink";
const SENDER: &str = "casty://bench@127.0.0.1:25521/";
const SIZES: [usize; 5] = [0, 64, 1024, 64 * 1024, 1024 * 1024];

fn envelope(size: usize) -> Envelope {
    let payload: Vec<u8> = (0..size).map(|i| (i & 0xff) as u8).collect();
    Envelope::new(TARGET, SENDER, "bench.Ping", payload)
}

fn bench_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for size in SIZES {
        let env = envelope(size);
        let data = env.encode();
        g.throughput(Throughput::Elements(1));
        let mut buf = BytesMut::with_capacity(data.len());
        g.bench_with_input(BenchmarkId::new("encode_into", size), &env, |b, env| {
            b.iter(|| {
                buf.clear();
                env.encode_into(&mut buf);
                black_box(&buf);
            })
        });
        g.bench_with_input(BenchmarkId::new("encode", size), &env, |b, env| {
            b.iter(|| black_box(env.encode()))
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &data, |b, data| {
            b.iter(|| black_box(Envelope::decode(data.clone())))
        });
        let mut dst = vec![0u8; data.len()];
        g.bench_with_input(BenchmarkId::new("memcpy", size), &data, |b, data| {
            b.iter(|| {
                dst.copy_from_slice(&data[..]);
                black_box(&dst);
            })
        });
    }
    // A header the fast path does not take (non-ASCII, escaped by casty).
    let env = Envelope::new(
        "casty://sistema@127.0.0.1:25520/usuário/計算/🚀",
        SENDER,
        "módulo.Mensagem",
        vec![0u8; 64],
    );
    let data = env.encode();
    g.bench_function("decode_escaped_header_64", |b| {
        b.iter(|| black_box(Envelope::decode(data.clone())))
    });
    g.finish();
}

fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_codec");
    let env = envelope(64);
    let mut stream = BytesMut::new();
    let mut codec = FrameCodec::new();
    for _ in 0..1000 {
        let _ = codec.encode(&env, &mut stream);
    }
    let stream: Bytes = stream.freeze();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_1000_frames_64B", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&stream[..]);
            let mut n = 0;
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                black_box(f);
                n += 1;
            }
            assert_eq!(n, 1000);
        })
    });
    g.bench_function("encode_1000_frames_64B", |b| {
        let mut buf = BytesMut::with_capacity(stream.len());
        b.iter(|| {
            buf.clear();
            for _ in 0..1000 {
                let _ = codec.encode(&env, &mut buf);
            }
            black_box(&buf);
        })
    });
    g.finish();
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Ping {
    value: i64,
}
herald_wire::type_hint!(Ping => "casty_vec_msgs.Ping");

fn bench_payloads(c: &mut Criterion) {
    let mut g = c.benchmark_group("payload_ping");
    g.throughput(Throughput::Elements(1));
    let ping = Ping { value: 42 };
    let json = PayloadCodec::<Ping>::encode(&CastyJson, &ping).unwrap_or_default();
    let mp = PayloadCodec::<Ping>::encode(&CastyMsgpack, &ping).unwrap_or_default();
    g.bench_function("casty_json_encode", |b| {
        b.iter(|| black_box(CastyJson.encode(&ping)))
    });
    g.bench_function("casty_json_decode", |b| {
        b.iter(|| black_box(PayloadCodec::<Ping>::decode(&CastyJson, &json)))
    });
    g.bench_function("casty_msgpack_encode", |b| {
        b.iter(|| black_box(CastyMsgpack.encode(&ping)))
    });
    g.bench_function("casty_msgpack_decode", |b| {
        b.iter(|| black_box(PayloadCodec::<Ping>::decode(&CastyMsgpack, &mp)))
    });
    g.bench_function("tree_json_decode", |b| {
        b.iter(|| black_box(CastyValue::from_json_bytes(&json)))
    });
    g.finish();
}

criterion_group!(benches, bench_envelope, bench_frames, bench_payloads);
criterion_main!(benches);
