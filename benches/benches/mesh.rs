//! Criterion benchmarks of herald-mesh: in-process request/reply (sequential and 32 in
//! flight), nuropb envelope JSON encode/decode (what a broker backend pays per message)
//! and topic matching.
//!
//! `cargo bench -p herald-benches --bench mesh`. The comparison with baselines is
//! `cargo xtask bench mesh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_mesh::example::ExampleService;
use herald_mesh::message::{Envelope, RequestBody, topic_matches};
use herald_mesh::{InProcBroker, Mesh, MeshConfig, RequestOptions};
use serde_json::json;

/// One `add(1, 2)` request of the example service; a failed call aborts the bench.
async fn add(client: &Mesh) {
    let r = client
        .request_with(
            "bench",
            "add",
            json!({"a": 1, "b": 2}),
            RequestOptions::default(),
        )
        .await;
    assert!(r.is_ok(), "bench request failed: {r:?}");
}

fn inproc(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (service, client) = rt.block_on(async {
        let broker = Arc::new(InProcBroker::new());
        let service = Mesh::connect(
            broker.clone(),
            MeshConfig::service("bench", ExampleService::new()).prefetch(256),
        )
        .await
        .expect("service");
        let client = Mesh::connect(broker, MeshConfig::client())
            .await
            .expect("client");
        (service, client)
    });
    let mut g = c.benchmark_group("mesh_inproc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("request_add_sequential", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    add(&client).await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("request_add_32_in_flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let per = iters.div_ceil(32);
                let tasks: Vec<_> = (0..32)
                    .map(|_| {
                        let client = client.clone();
                        tokio::spawn(async move {
                            for _ in 0..per {
                                add(&client).await;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                // Normalise to `iters` requests.
                start.elapsed().mul_f64(iters as f64 / (per * 32) as f64)
            })
        })
    });
    g.finish();
    rt.block_on(async {
        let _ = client.disconnect().await;
        let _ = service.disconnect().await;
    });
}

fn envelope(c: &mut Criterion) {
    let env = Envelope::Request(RequestBody {
        service: "probe-svc".into(),
        method: "add".into(),
        params: json!({"a": 2, "b": 3})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        correlation_id: "f9a2bc1d2e3f40516273849506a7b8c9".into(),
        context: json!({"user": "probe"}),
        trace_id: Some("trace-f9a2bc".into()),
    });
    let bytes = serde_json::to_vec(&env).expect("encode");
    let mut g = c.benchmark_group("mesh_envelope");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode_request", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&env)))
    });
    g.bench_function("decode_request", |b| {
        b.iter(|| Envelope::from_slice(std::hint::black_box(&bytes)))
    });
    g.finish();
    let mut g = c.benchmark_group("mesh_topic");
    g.bench_function("match_hash_pattern", |b| {
        b.iter(|| {
            topic_matches(
                std::hint::black_box("orders.#.created"),
                std::hint::black_box("orders.eu.item.created"),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = inproc, envelope
}
criterion_main!(benches);
