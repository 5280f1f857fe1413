//! Request/reply throughput and latency over RabbitMQ: Herald's mesh (client and
//! service on their own connections) beside a raw lapin RPC written here, both on the
//! same broker. Used by `cargo xtask bench mesh`; prints one JSON line per
//! (stack, concurrency) with the median of `--runs` runs.
//!
//! ```text
//! cargo run --release -p herald-mesh --example amqp_bench -- run \
//!     --url amqp://guest:guest@127.0.0.1:5672/%2f --stack herald,lapin \
//!     --secs 5 --runs 3 --conc 1,32 --prefetch 64
//! cargo run --release -p herald-mesh --example amqp_bench -- cleanup --url URL QUEUE...
//! ```
//!
//! Stacks: `herald` (response queue, nuropb's topology), `herald-drt` (a client with
//! `MeshConfig::direct_reply_to`), `lapin` (reply queue) and `lapin+EXTRA+...` with any
//! of `drt` (direct reply-to, the baseline of `herald-drt`), `mandatory`, `ttl`,
//! `headers`, `confirm` and `durable` (what each of nuropb's message features costs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_mesh::amqp::{AmqpBackend, AmqpConnection, AmqpOptions};
use herald_mesh::example::ExampleService;
use herald_mesh::{Connection, Mesh, MeshConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ConnectionProperties};
use serde_json::json;
use tokio::sync::oneshot;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone)]
struct Args {
    cmd: String,
    url: String,
    stacks: Vec<String>,
    secs: f64,
    runs: usize,
    conc: Vec<usize>,
    prefetch: u16,
    threads: usize,
    rest: Vec<String>,
}

fn parse_args() -> AnyResult<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        cmd: it.next().unwrap_or_else(|| "run".into()),
        url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        stacks: vec!["herald".into(), "lapin".into()],
        secs: 5.0,
        runs: 3,
        conc: vec![1, 32],
        prefetch: 64,
        threads: 2,
        rest: Vec::new(),
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => a.url = value()?,
            "--stack" => a.stacks = value()?.split(',').map(str::to_owned).collect(),
            "--secs" => a.secs = value()?.parse()?,
            "--runs" => a.runs = value()?.parse::<usize>()?.max(1),
            "--conc" => {
                a.conc = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--prefetch" => a.prefetch = value()?.parse()?,
            "--threads" => a.threads = value()?.parse()?,
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}").into());
            }
            other => a.rest.push(other.to_owned()),
        }
    }
    Ok(a)
}

#[derive(Debug, Clone, Copy)]
struct RunResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Drives `call` with `conc` concurrent callers for `secs` seconds.
async fn drive<F, Fut>(call: F, secs: f64, conc: usize) -> AnyResult<RunResult>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = AnyResult<()>> + Send,
{
    // Warm-up.
    for i in 0..20 {
        call(i).await?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            let mut i = (w as u64) * 1_000_000;
            while Instant::now() < deadline {
                let s = Instant::now();
                call(i).await?;
                lats.push(s.elapsed());
                i += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lats)
        }));
    }
    let mut lats = Vec::new();
    for t in tasks {
        lats.extend(t.await??);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lats.sort();
    if lats.is_empty() {
        return Err("no call completed".into());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(RunResult {
        rps: lats.len() as f64 / elapsed,
        p50_ms: ms(lats[lats.len() / 2]),
        p99_ms: ms(lats[(lats.len() * 99 / 100).min(lats.len() - 1)]),
    })
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn herald_run(a: &Args, conc: usize, direct_reply_to: bool) -> AnyResult<RunResult> {
    let backend = Arc::new(AmqpBackend::new(&a.url)?);
    let name = unique("bench-herald");
    let service = Mesh::connect(
        backend.clone(),
        MeshConfig::service(&name, ExampleService::new()).prefetch(a.prefetch),
    )
    .await?;
    let client = Arc::new(
        Mesh::connect(
            backend,
            MeshConfig::client().direct_reply_to(direct_reply_to),
        )
        .await?,
    );
    let svc = Arc::new(name.clone());
    let res = drive(
        move |i| {
            let client = client.clone();
            let svc = svc.clone();
            async move {
                let r = client
                    .request(
                        &svc,
                        "add",
                        json!({"a": i, "b": 1}),
                        json!({}),
                        Some(Duration::from_secs(30)),
                        None,
                    )
                    .await?;
                if r != json!(i + 1) {
                    return Err(format!("add returned {r}").into());
                }
                Ok(())
            }
        },
        a.secs,
        conc,
    )
    .await;
    service.disconnect().await?;
    cleanup(
        &a.url,
        &[format!("nuropb-{name}-sq"), format!("nuropb-{name}-dl")],
    )
    .await?;
    res
}

type PendingMap = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// What the raw lapin RPC adds of Herald's (nuropb's) message handling, to see what
/// each costs: `lapin+mandatory+ttl+headers+confirm+durable` and any subset.
#[derive(Debug, Clone, Copy, Default)]
struct LapinExtras {
    /// Requests are `mandatory`.
    mandatory: bool,
    /// Requests carry an `expiration` (per-message ttl, as nuropb's ttl).
    ttl: bool,
    /// Requests and replies carry nuropb's five headers.
    headers: bool,
    /// Requests go through a confirm-mode channel; the confirm is awaited beside the
    /// reply.
    confirm: bool,
    /// The work queue is durable with a dead-letter exchange argument (like a nuropb
    /// service queue) instead of auto-delete.
    durable: bool,
    /// Replies through RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`, consumed
    /// no-ack on the channel that publishes the requests) instead of a reply queue.
    drt: bool,
    /// Requests go through a named direct exchange bound to the work queue (as
    /// nuropb's `nuropb-rpc-exchange`) instead of the default exchange.
    exchange: bool,
    /// Bodies the size of nuropb's request and response envelopes (padded JSON).
    envelope: bool,
}

impl LapinExtras {
    fn parse(stack: &str) -> Result<Self, String> {
        let mut x = Self::default();
        for part in stack.split('+').skip(1) {
            match part {
                "mandatory" => x.mandatory = true,
                "ttl" => x.ttl = true,
                "headers" => x.headers = true,
                "confirm" => x.confirm = true,
                "durable" => x.durable = true,
                "drt" => x.drt = true,
                "exchange" => x.exchange = true,
                "envelope" => x.envelope = true,
                other => return Err(format!("unknown lapin extra {other:?}")),
            }
        }
        Ok(x)
    }
}

fn nuropb_like_headers(kind: &str) -> FieldTable {
    let mut h = FieldTable::default();
    let text = |s: &str| lapin::types::AMQPValue::LongString(s.into());
    h.insert("nuropb_protocol".into(), text("0.1.1"));
    h.insert("nuropb_version".into(), text("0.1.8"));
    h.insert("nuropb_type".into(), text(kind));
    h.insert("trace_id".into(), lapin::types::AMQPValue::Void);
    h.insert("encrypted".into(), text(""));
    h
}

/// Plain lapin RPC: a server consuming a work queue (manual ack, prefetch) that replies
/// through the default exchange, and a client with an exclusive server-named reply
/// queue consumed with auto-ack and a correlation-id map. No confirms (like nuropb).
async fn lapin_run(a: &Args, conc: usize, x: LapinExtras) -> AnyResult<RunResult> {
    let queue = unique("bench-lapin");
    let server_conn = lapin::Connection::connect(&a.url, ConnectionProperties::default()).await?;
    let sch = server_conn.create_channel().await?;
    let mut qargs = FieldTable::default();
    if x.durable {
        qargs.insert(
            "x-dead-letter-exchange".into(),
            lapin::types::AMQPValue::LongString("bench-lapin-dlx".into()),
        );
    }
    sch.queue_declare(
        ShortString::from(queue.as_str()),
        QueueDeclareOptions {
            auto_delete: !x.durable,
            durable: x.durable,
            ..QueueDeclareOptions::default()
        },
        qargs,
    )
    .await?;
    let exchange = if x.exchange {
        let name = format!("{queue}-x");
        sch.exchange_declare(
            ShortString::from(name.as_str()),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        sch.queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(name.as_str()),
            ShortString::from(queue.as_str()),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        name
    } else {
        String::new()
    };
    let exchange = Arc::new(exchange);
    sch.basic_qos(a.prefetch, BasicQosOptions::default())
        .await?;
    let mut work = sch
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("srv"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let server = tokio::spawn(async move {
        while let Some(Ok(d)) = work.next().await {
            let Some(reply_to) = d.properties.reply_to().clone() else {
                continue;
            };
            let req: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let sum = req["a"].as_u64().unwrap_or(0) + req["b"].as_u64().unwrap_or(0);
            let body = if x.envelope {
                // nuropb's response fields, with the request's context echoed.
                serde_json::to_vec(&json!({"tag": "response", "result": sum, "error": null,
                    "correlation_id": req["correlation_id"], "trace_id": null,
                    "context": req["context"], "warning": null, "reply_to": req["reply_to"]}))
                .unwrap_or_default()
            } else {
                serde_json::to_vec(&json!({"result": sum})).unwrap_or_default()
            };
            let mut props =
                BasicProperties::default().with_content_type(ShortString::from("application/json"));
            if x.headers {
                props = props.with_headers(nuropb_like_headers("response"));
            }
            if let Some(cid) = d.properties.correlation_id().clone() {
                props = props.with_correlation_id(cid);
            }
            let _ = sch
                .basic_publish(
                    ShortString::from(""),
                    reply_to,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await;
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });

    let client_conn = lapin::Connection::connect(&a.url, ConnectionProperties::default()).await?;
    let cch = client_conn.create_channel().await?;
    if x.confirm {
        cch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
    }
    let rq_name = if x.drt {
        ShortString::from(herald_mesh::amqp::DIRECT_REPLY_TO)
    } else {
        let rq = cch
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        rq.name().clone()
    };
    let mut replies = cch
        .basic_consume(
            rq_name.clone(),
            ShortString::from("cli"),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: !x.drt,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
    let p2 = pending.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(d)) = replies.next().await {
            let Some(cid) = d.properties.correlation_id().clone() else {
                continue;
            };
            let tx = p2.lock().ok().and_then(|mut m| m.remove(cid.as_str()));
            if let Some(tx) = tx {
                let _ = tx.send(d.data);
            }
        }
    });
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let queue_s = Arc::new(queue.clone());
    let res = drive(
        move |i| {
            let cch = cch.clone();
            let pending = pending.clone();
            let rq_name = rq_name.clone();
            let queue_s = queue_s.clone();
            let counter = counter.clone();
            let exchange = exchange.clone();
            async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let cid = format!("{n:032x}");
                let (tx, rx) = oneshot::channel();
                pending
                    .lock()
                    .map_err(|_| "poisoned")?
                    .insert(cid.clone(), tx);
                let body = if x.envelope {
                    // nuropb's request fields around the same two numbers.
                    serde_json::to_vec(&json!({"a": i, "b": 1, "tag": "request",
                        "service": "bench-service-name", "method": "add",
                        "correlation_id": cid, "context": {}, "trace_id": null,
                        "reply_to": rq_name.as_str()}))?
                } else {
                    serde_json::to_vec(&json!({"a": i, "b": 1}))?
                };
                let mut props = BasicProperties::default()
                    .with_content_type(ShortString::from("application/json"))
                    .with_correlation_id(ShortString::from(cid))
                    .with_reply_to(rq_name);
                if x.ttl {
                    props = props.with_expiration(ShortString::from("30000"));
                }
                if x.headers {
                    props = props.with_headers(nuropb_like_headers("request"));
                }
                let confirm = cch
                    .basic_publish(
                        ShortString::from(exchange.as_str()),
                        ShortString::from(queue_s.as_str()),
                        BasicPublishOptions {
                            mandatory: x.mandatory,
                            immediate: false,
                        },
                        &body,
                        props,
                    )
                    .await?;
                let reply = tokio::time::timeout(Duration::from_secs(30), rx);
                let data = if x.confirm {
                    let (c, r) = futures::join!(confirm, reply);
                    if let lapin::Confirmation::Ack(Some(_)) = c? {
                        return Err("request returned unroutable".into());
                    }
                    r??
                } else {
                    drop(confirm);
                    reply.await??
                };
                let v: serde_json::Value = serde_json::from_slice(&data)?;
                if v["result"] != json!(i + 1) {
                    return Err(format!("lapin server returned {v}").into());
                }
                Ok(())
            }
        },
        a.secs,
        conc,
    )
    .await;
    reader.abort();
    server.abort();
    // lapin waits for close-ok without a bound, and a close that never finished was
    // seen to stall a whole benchmark run: give each a few seconds.
    for conn in [&client_conn, &server_conn] {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            conn.close(200, ShortString::from("bye")),
        )
        .await;
    }
    if x.durable {
        cleanup(&a.url, &[queue]).await?;
    }
    res
}

async fn cleanup(url: &str, queues: &[String]) -> AnyResult<()> {
    let conn = AmqpConnection::open(url, "herald-bench-cleanup", AmqpOptions::default()).await?;
    for q in queues {
        conn.delete_queue(q).await?;
    }
    conn.close().await?;
    Ok(())
}

fn main() -> AnyResult<()> {
    let a = parse_args()?;
    // A watchdog: a run that stalls (a broker that stopped answering, a lost wake-up)
    // ends the process with an error instead of hanging `cargo xtask bench` forever.
    let planned = a.secs * (a.runs * a.stacks.len() * a.conc.len()) as f64;
    let bound = Duration::from_secs_f64(planned * 3.0 + 120.0);
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!("amqp_bench: no result within {bound:?}; giving up");
        std::process::exit(3);
    });
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(a))
}

async fn run(a: Args) -> AnyResult<()> {
    match a.cmd.as_str() {
        "cleanup" => cleanup(&a.url, &a.rest).await,
        "run" => {
            // Runs of the stacks are interleaved so that load from other processes on the
            // machine hits them alike; each line reports the median run.
            for &conc in &a.conc {
                let mut runs: HashMap<&str, Vec<RunResult>> = HashMap::new();
                for _ in 0..a.runs {
                    for stack in &a.stacks {
                        let r = match stack.as_str() {
                            "herald" => herald_run(&a, conc, false).await?,
                            // The client with `MeshConfig::direct_reply_to`.
                            "herald-drt" => herald_run(&a, conc, true).await?,
                            lapin if lapin.split('+').next() == Some("lapin") => {
                                lapin_run(&a, conc, LapinExtras::parse(lapin)?).await?
                            }
                            other => return Err(format!("unknown stack {other}").into()),
                        };
                        runs.entry(stack.as_str()).or_default().push(r);
                    }
                }
                for stack in &a.stacks {
                    let Some(runs) = runs.get_mut(stack.as_str()) else {
                        continue;
                    };
                    runs.sort_by(|x, y| x.rps.total_cmp(&y.rps));
                    let med = runs[runs.len() / 2];
                    println!(
                        "{}",
                        json!({
                            "stack": stack, "prefetch": a.prefetch, "concurrency": conc,
                            "median_rps": (med.rps * 10.0).round() / 10.0,
                            "p50_ms": (med.p50_ms * 1000.0).round() / 1000.0,
                            "p99_ms": (med.p99_ms * 1000.0).round() / 1000.0,
                            "all_rps": runs.iter().map(|r| (r.rps * 10.0).round() / 10.0).collect::<Vec<_>>(),
                        })
                    );
                }
            }
            Ok(())
        }
        other => Err(format!("unknown command {other} (run or cleanup)").into()),
    }
}
