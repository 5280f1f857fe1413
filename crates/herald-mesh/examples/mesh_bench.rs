//! Request/reply throughput and latency of the mesh, used by `cargo xtask bench mesh`.
//!
//! ```text
//! cargo run --release -p herald-mesh --example mesh_bench -- inproc --secs 3 --conc 1,32
//! cargo run --release -p herald-mesh --example mesh_bench -- channels --secs 3 --conc 1,32 --threads 2
//! ```
//!
//! Stacks:
//! * `inproc`: a Herald client calling the example service's `add` through the
//!   in-process broker;
//! * `channels`: the floor of any in-process RPC: a tokio mpsc request channel to a
//!   server task that spawns a task per request and answers through a oneshot.
//!
//! `--threads 1` (the default) runs a current-thread tokio runtime, `--threads N` a
//! multi-thread one with N workers.
//!
//! Prints one JSON line per (stack, concurrency):
//! `{"stack", "conc", "requests", "secs", "req_per_sec", "p50_us", "p99_us",
//! "cpu_secs", "req_per_cpu_sec"}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_mesh::example::ExampleService;
use herald_mesh::{InProcBroker, Mesh, MeshConfig, RequestOptions};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

struct Args {
    stack: String,
    secs: f64,
    conc: Vec<usize>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let stack = it
        .next()
        .ok_or("usage: mesh_bench <inproc|channels> [--secs S] [--conc 1,32]")?;
    let mut secs = 3.0;
    let mut conc = vec![1, 32];
    let mut threads = 1;
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => secs = value.parse().map_err(|e| format!("--secs {value}: {e}"))?,
            "--conc" => {
                conc = value
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--conc {value}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--threads" => {
                threads = value
                    .parse()
                    .map_err(|e| format!("--threads {value}: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        stack,
        secs,
        conc,
        threads,
    })
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux;
/// 0 elsewhere). Requests per CPU-second do not depend on how much of the machine
/// other processes take, unlike requests per wall-clock second.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with ')'): utime is field 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 are at indexes 11 and 12 after the state field (3).
    (ticks(11) + ticks(12)) / 100.0
}

fn report(stack: &str, conc: usize, mut lat_ns: Vec<u64>, elapsed: Duration, cpu: f64) {
    lat_ns.sort_unstable();
    let n = lat_ns.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        lat_ns[i] as f64 / 1000.0
    };
    let line = json!({
        "stack": stack,
        "conc": conc,
        "requests": n,
        "secs": elapsed.as_secs_f64(),
        "req_per_sec": n as f64 / elapsed.as_secs_f64(),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "cpu_secs": cpu,
        "req_per_cpu_sec": if cpu > 0.0 { n as f64 / cpu } else { 0.0 },
    });
    println!("{line}");
}

/// Runs `conc` workers calling `call` until `secs` pass; returns latencies.
async fn drive<F, Fut>(conc: usize, secs: f64, call: F) -> (Vec<u64>, Duration, f64)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    // Warm-up.
    for _ in 0..1000 {
        call().await;
    }
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                loop {
                    let t = Instant::now();
                    if t >= stop {
                        break;
                    }
                    if !call().await {
                        break;
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        if let Ok(l) = w.await {
            all.extend(l);
        }
    }
    let elapsed = start.elapsed();
    (all, elapsed, cpu_secs() - cpu0)
}

async fn bench_inproc(conc: usize, secs: f64) -> Result<(), Box<dyn std::error::Error>> {
    let broker = Arc::new(InProcBroker::new());
    let service = Mesh::connect(
        broker.clone(),
        MeshConfig::service("bench-calc", ExampleService::new()).prefetch(256),
    )
    .await?;
    let client = Mesh::connect(broker, MeshConfig::client()).await?;
    let c = client.clone();
    let (lat, elapsed, cpu) = drive(conc, secs, move || {
        let c = c.clone();
        async move {
            c.request_with(
                "bench-calc",
                "add",
                json!({"a": 1, "b": 2}),
                RequestOptions::default(),
            )
            .await
            .is_ok()
        }
    })
    .await;
    report("inproc", conc, lat, elapsed, cpu);
    client.disconnect().await?;
    service.disconnect().await?;
    Ok(())
}

type Req = (serde_json::Value, oneshot::Sender<serde_json::Value>);

async fn bench_channels(conc: usize, secs: f64) -> Result<(), Box<dyn std::error::Error>> {
    let (tx, mut rx) = mpsc::channel::<Req>(1024);
    tokio::spawn(async move {
        while let Some((params, reply)) = rx.recv().await {
            tokio::spawn(async move {
                let a = params["a"].as_i64().unwrap_or(0);
                let b = params["b"].as_i64().unwrap_or(0);
                let _ = reply.send(json!(a + b));
            });
        }
    });
    let (lat, elapsed, cpu) = drive(conc, secs, move || {
        let tx = tx.clone();
        async move {
            let (rtx, rrx) = oneshot::channel();
            if tx.send((json!({"a": 1, "b": 2}), rtx)).await.is_err() {
                return false;
            }
            rrx.await.is_ok()
        }
    })
    .await;
    report("channels", conc, lat, elapsed, cpu);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        for &conc in &args.conc {
            match args.stack.as_str() {
                "inproc" => bench_inproc(conc, args.secs).await?,
                "channels" => bench_channels(conc, args.secs).await?,
                other => return Err(format!("unknown stack {other}").into()),
            }
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
