//! Registry protocol core, no I/O: the user-space work behind one reply.
//!
//! `cargo bench -p herald-benches --bench registry`. The end-to-end figures (server CPU
//! per reply over real sockets, beside rpyc's server) come from
//! `cargo xtask bench registry`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use herald_registry::brine;
use herald_registry::core::{CoreConfig, RegistryCore, Transport};
use herald_registry::proto::{Command, Port, encode_request};

fn bench(c: &mut Criterion) {
    let query = encode_request(&Command::Query {
        name: "BENCH".into(),
    });
    let register = encode_request(&Command::Register {
        aliases: vec!["BENCH".into(), "OTHER".into()],
        port: Port::Num(18812),
    });
    let src = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut core = RegistryCore::new(CoreConfig::default());
    let now = Instant::now();
    let mut reply = Vec::with_capacity(1500);
    for port in [18812, 18813] {
        let req = encode_request(&Command::Register {
            aliases: vec!["BENCH".into()],
            port: Port::Num(port),
        });
        core.handle(now, src, Transport::Udp, &req, &mut reply)
            .expect("register");
    }

    let mut g = c.benchmark_group("registry");
    g.bench_function("brine decode QUERY request (21 B)", |b| {
        b.iter(|| brine::decode(black_box(&query)))
    });
    g.bench_function("core QUERY -> 2-entry reply (41 B)", |b| {
        b.iter(|| {
            core.handle(now, src, Transport::Udp, black_box(&query), &mut reply)
                .map(|_| reply.len())
        })
    });
    g.bench_function("core REGISTER keep-alive, 2 names", |b| {
        b.iter(|| {
            core.handle(now, src, Transport::Udp, black_box(&register), &mut reply)
                .map(|_| reply.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
