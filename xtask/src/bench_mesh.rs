//! `cargo xtask bench mesh`: RPC requests per second and latency of herald-mesh.
//!
//! In-process rows: a Herald client calling the example service's `add` through the
//! in-process broker, beside the floor of any in-process RPC (a tokio mpsc request
//! channel, a task per request, a oneshot reply) measured in the same run by the same
//! helper (`herald-mesh`'s `mesh_bench` example, current-thread tokio runtime), with 1
//! and 32 requests in flight, plus the 300 k req/s target. Requests per CPU-second
//! (the helper's user + system time) are reported beside requests per wall-clock
//! second because the latter mostly measures how much CPU other processes leave on a
//! shared machine. Each figure is the median of several runs.
//!
//! RabbitMQ rows (Herald over RabbitMQ beside raw lapin and nuropb) are appended to
//! the same report by the RabbitMQ section of [`run`].

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::common::{self, BenchRow, progress};

/// The in-process target of the issue.
const INPROC_TARGET: f64 = 300_000.0;

struct Plan {
    runs: usize,
    secs: f64,
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan { runs: 1, secs: 1.0 }
    } else {
        Plan { runs: 3, secs: 3.0 }
    }
}

/// One measurement of the helper.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    req_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    req_per_cpu_sec: f64,
}

/// Runs `mesh_bench <stack> --conc <conc>` `runs` times; returns the median of each
/// figure.
fn measure(helper: &PathBuf, stack: &str, conc: usize, plan: &Plan) -> anyhow::Result<Sample> {
    let mut samples = Vec::new();
    for run in 0..plan.runs {
        progress(format!(
            "mesh {stack}, {conc} in flight, run {}/{}",
            run + 1,
            plan.runs
        ));
        let out = Command::new(helper)
            .args([
                stack,
                "--secs",
                &plan.secs.to_string(),
                "--conc",
                &conc.to_string(),
                "--threads",
                "1",
            ])
            .output()
            .with_context(|| format!("running {}", helper.display()))?;
        if !out.status.success() {
            bail!(
                "mesh_bench {stack} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().context("mesh_bench printed nothing")?;
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
        let get = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("{k} missing in {line}"))
        };
        samples.push(Sample {
            req_per_sec: get("req_per_sec")?,
            p50_us: get("p50_us")?,
            p99_us: get("p99_us")?,
            req_per_cpu_sec: v["req_per_cpu_sec"].as_f64().unwrap_or(0.0),
        });
    }
    let median = |f: fn(&Sample) -> f64| common::median(samples.iter().map(f).collect());
    Ok(Sample {
        req_per_sec: median(|s| s.req_per_sec),
        p50_us: median(|s| s.p50_us),
        p99_us: median(|s| s.p99_us),
        req_per_cpu_sec: median(|s| s.req_per_cpu_sec),
    })
}

fn per_sec(us: f64) -> f64 {
    if us > 0.0 { 1e6 / us } else { 0.0 }
}

/// The in-process rows.
pub fn inproc_rows(quick: bool) -> anyhow::Result<Vec<BenchRow>> {
    let plan = plan(quick);
    let helper = common::build_example("herald-mesh", "mesh_bench")?;
    let mut rows = Vec::new();
    for conc in [1usize, 32] {
        let herald = measure(&helper, "inproc", conc, &plan)?;
        let base = measure(&helper, "channels", conc, &plan)?;
        let baseline = format!("tokio mpsc+oneshot RPC, {conc} in flight");
        for (what, h, b) in [
            ("req/s", herald.req_per_sec, base.req_per_sec),
            (
                "req per CPU-second",
                herald.req_per_cpu_sec,
                base.req_per_cpu_sec,
            ),
            (
                "1/p50 latency",
                per_sec(herald.p50_us),
                per_sec(base.p50_us),
            ),
            (
                "1/p99 latency",
                per_sec(herald.p99_us),
                per_sec(base.p99_us),
            ),
        ] {
            rows.push(BenchRow::new(
                format!("mesh in-process {what}, {conc} in flight"),
                h,
                baseline.clone(),
                b,
            ));
        }
        if conc == 32 {
            rows.push(BenchRow::new(
                "mesh in-process req/s, 32 in flight (target)",
                herald.req_per_sec,
                "issue target 300 k req/s",
                INPROC_TARGET,
            ));
            rows.push(BenchRow::new(
                "mesh in-process req per CPU-second, 32 in flight (target)",
                herald.req_per_cpu_sec,
                "issue target 300 k req/s",
                INPROC_TARGET,
            ));
        }
    }
    Ok(rows)
}

/// `cargo xtask bench mesh [--quick]`.
pub fn run(quick: bool) -> anyhow::Result<()> {
    let mut rows = inproc_rows(quick)?;
    rows.extend(amqp_rows(quick)?);
    common::report("mesh", &rows)?;
    Ok(())
}

// ---------------------------------------------------------------- RabbitMQ ---
//
// Herald over RabbitMQ (client and service on their own connections) beside a raw
// lapin RPC (both measured by `herald-mesh`'s `amqp_bench` example, runs interleaved)
// and the real nuropb 0.1.8 (`../shared/peers/nuropb_bench.py`, service and client in
// separate Python processes), same broker, same run. Service prefetch 64 for all three
// (nuropb's best setting). Twice: with nuropb's reply queues (`herald` vs `lapin`),
// and with RabbitMQ's direct reply-to on both Rust clients (`herald-drt`, Herald's
// opt-in `MeshConfig::direct_reply_to`, vs `lapin+drt`); nuropb has no such option.
// The broker is `HERALD_AMQP_URL`, else the local default.

const AMQP_DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn amqp_url() -> Option<String> {
    let url = std::env::var("HERALD_AMQP_URL").unwrap_or_else(|_| AMQP_DEFAULT_URL.into());
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|r| r.rsplit('@').next())
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_string();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next())?;
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).ok()?;
    Some(url)
}

/// One `{"stack", "concurrency", "median_rps", "p50_ms", "p99_ms"}` line.
#[derive(Clone, Debug)]
struct AmqpSample {
    stack: String,
    conc: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_samples(text: &str) -> anyhow::Result<Vec<AmqpSample>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
        let num = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("{k} missing in {line}"))
        };
        out.push(AmqpSample {
            stack: v["stack"].as_str().unwrap_or_default().to_string(),
            conc: v["concurrency"].as_u64().unwrap_or_default(),
            rps: num("median_rps")?,
            p50_ms: num("p50_ms")?,
            p99_ms: num("p99_ms")?,
        });
    }
    Ok(out)
}

fn run_capture(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The RabbitMQ rows (empty, with a note, when no broker answers).
pub fn amqp_rows(quick: bool) -> anyhow::Result<Vec<BenchRow>> {
    let Some(url) = amqp_url() else {
        progress("SKIPPED RabbitMQ rows: no broker answers at HERALD_AMQP_URL / 127.0.0.1:5672");
        return Ok(Vec::new());
    };
    let (secs, runs) = if quick { ("1", "1") } else { ("5", "3") };
    let helper = common::build_example("herald-mesh", "amqp_bench")?;
    progress(format!(
        "mesh over RabbitMQ: herald and raw lapin, with reply queues and with direct reply-to, {runs} run(s) of {secs} s each"
    ));
    let text = run_capture(
        Command::new(&helper).args([
            "run",
            "--url",
            &url,
            "--stack",
            "herald,lapin,herald-drt,lapin+drt",
            "--secs",
            secs,
            "--runs",
            runs,
            "--conc",
            "1,32",
            "--prefetch",
            "64",
        ]),
        "amqp_bench",
    )?;
    let mut samples = parse_samples(&text)?;

    progress("nuropb 0.1.8 client -> nuropb service (Python venv)");
    let python = herald_pyenv::ensure_venv(&herald_pyenv::NUROPB)
        .map_err(|e| anyhow::anyhow!("the nuropb venv is needed for the baseline: {e}"))?;
    let script = herald_pyenv::shared_dir().join("peers/nuropb_bench.py");
    let nuropb = run_capture(
        Command::new(&python).arg(&script).args([
            "run",
            "--stack",
            "nuropb",
            "--url",
            &url,
            "--secs",
            secs,
            "--runs",
            runs,
            "--conc",
            "1,32",
            "--prefetch",
            "64",
        ]),
        "nuropb_bench.py",
    );
    // nuropb's bench leaves its durable service queue and its dead-letter queue behind.
    let _ = run_capture(
        Command::new(&helper).args([
            "cleanup",
            "--url",
            &url,
            "nuropb-bench-calc-sq",
            "nuropb-bench-calc-dl",
        ]),
        "amqp_bench cleanup",
    );
    samples.extend(parse_samples(&nuropb?)?);

    let find = |stack: &str, conc: u64| {
        samples
            .iter()
            .find(|s| s.stack == stack && s.conc == conc)
            .cloned()
            .with_context(|| format!("no {stack} sample with {conc} in flight"))
    };
    let per_ms = |ms: f64| if ms > 0.0 { 1000.0 / ms } else { 0.0 };
    let mut rows = Vec::new();
    for (herald, lapin, label, mode) in [
        ("herald", "lapin", "raw lapin RPC", ""),
        (
            "herald-drt",
            "lapin+drt",
            "raw lapin RPC with direct reply-to",
            " (direct reply-to)",
        ),
    ] {
        for conc in [1u64, 32] {
            let h = find(herald, conc)?;
            for (stack, label) in [(lapin, label), ("nuropb", "nuropb 0.1.8 -> nuropb")] {
                let b = find(stack, conc)?;
                let base = format!("{label}, {conc} in flight");
                for (what, hv, bv) in [
                    ("req/s", h.rps, b.rps),
                    ("1/p50 latency", per_ms(h.p50_ms), per_ms(b.p50_ms)),
                    ("1/p99 latency", per_ms(h.p99_ms), per_ms(b.p99_ms)),
                ] {
                    rows.push(BenchRow::new(
                        format!("mesh RabbitMQ{mode} {what}, {conc} in flight"),
                        hv,
                        base.clone(),
                        bv,
                    ));
                }
            }
        }
    }
    // The baseline client library itself against nuropb (what a 3x target above it
    // would need).
    for conc in [1u64, 32] {
        let n = find("nuropb", conc)?;
        for (stack, what) in [
            ("lapin", "raw lapin RPC"),
            ("lapin+drt", "raw lapin RPC with direct reply-to"),
        ] {
            let l = find(stack, conc)?;
            rows.push(BenchRow::new(
                format!("{what} req/s, {conc} in flight (reference)"),
                l.rps,
                format!("nuropb 0.1.8 -> nuropb, {conc} in flight"),
                n.rps,
            ));
        }
    }
    Ok(rows)
}
