//! Criterion micro-benchmarks of herald-transport's protocol core and an in-process
//! TCP loopback. The two-process figures (beside raw tokio and casty) come from
//! `cargo xtask bench transport`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_transport::native::{Acceptor, Dialer, HandshakeConfig, NodeId, Step};
use herald_transport::tcp::{self, PeerKey, TcpConfig, TcpNode};
use herald_wire::Envelope;

fn casty_envelope() -> Envelope {
    Envelope::new(
        "casty://bench@127.0.0.1:25520/sink",
        "casty://bench@127.0.0.1:25521/",
        "casty_vec_msgs.Ping",
        &br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#[..],
    )
}

fn handshake(c: &mut Criterion) {
    let a = HandshakeConfig::new("bench", NodeId(1), 1).with_cookie(b"cookie".to_vec());
    let b = HandshakeConfig::new("bench", NodeId(2), 1).with_cookie(b"cookie".to_vec());
    c.bench_function(
        "native handshake with cookie (3 messages, encode+decode)",
        |bench| {
            bench.iter(|| {
                let wire = |f: herald_transport::native::NativeFrame| {
                    let (k, body) = f.encode();
                    herald_transport::native::NativeFrame::decode(k, &body)
                };
                let (mut d, hello) = Dialer::start(a.clone());
                let mut acc = Acceptor::new(b.clone());
                let Ok(hello) = wire(hello) else { return };
                let Step::Send(welcome) = acc.on_frame(hello, &|_| None) else {
                    return;
                };
                let Ok(welcome) = wire(welcome) else { return };
                let Step::SendAndDone(confirm, _) = d.on_frame(welcome) else {
                    return;
                };
                let Ok(confirm) = wire(confirm) else { return };
                black_box(acc.on_frame(confirm, &|_| None));
            })
        },
    );
}

fn decode(c: &mut Criterion) {
    let mut stream = BytesMut::new();
    for _ in 0..1000 {
        let body = casty_envelope().encode();
        stream.put_u32(body.len() as u32 + 1);
        stream.put_u8(1);
        stream.extend_from_slice(&body);
    }
    let stream: Bytes = stream.freeze();
    let mut g = c.benchmark_group("frame split");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("split 1000 frames", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&stream[..]);
            let mut n = 0;
            while let Ok(Some(f)) = tcp::split_frame(&mut buf, 1 << 20) {
                n += f.body.len();
            }
            black_box(n)
        })
    });
    g.finish();
}

fn loopback(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let nodes = rt.block_on(async move {
        let mut cfg = TcpConfig::loopback();
        cfg.queue_capacity = 1 << 16;
        let b = TcpNode::builder(cfg.clone())
            .on_message(move |_: &PeerKey, _e: Envelope| {
                r.fetch_add(1, Ordering::Relaxed);
            })
            .start()
            .await
            .ok()?;
        let a = TcpNode::builder(cfg).start().await.ok()?;
        Some((a, b))
    });
    let Some((a, b)) = nodes else { return };
    let peer = a.peer(b.advertised());
    let env = casty_envelope();
    const N: u64 = 10_000;
    let mut g = c.benchmark_group("tcp loopback, one process");
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.bench_function("10k casty frames one-way", |bench| {
        bench.iter(|| {
            let start = received.load(Ordering::Relaxed);
            for _ in 0..N {
                let _ = peer.send(env.clone());
            }
            while received.load(Ordering::Relaxed) < start + N {
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    });
    g.finish();
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
}

criterion_group!(benches, handshake, decode, loopback);
criterion_main!(benches);
