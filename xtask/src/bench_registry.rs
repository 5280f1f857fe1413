//! `cargo xtask bench registry`: QUERY replies per second and server CPU per reply of
//! Herald's registry over UDP and TCP, beside rpyc 6.0.2's own `UDPRegistryServer` /
//! `TCPRegistryServer` measured in the same run by `../shared/peers/rpyc_registry_bench.py`.
//!
//! Herald's server runs in its own process (`herald-registry`'s `registry_bench`
//! example, single-threaded tokio runtime) so that its CPU time (utime + stime from
//! `/proc/<pid>/stat`) can be read; a Rust load generator in another process keeps
//! QUERYs in flight (UDP: 4 sockets x 32; TCP: 8 connections, one QUERY each, as the
//! protocol allows). The name has two servers (41-byte reply), as in the rpyc script.
//! Each figure is the median of several runs. A second UDP shape is reported too: 128
//! sockets with one QUERY in flight each (rpyc's own clients: no two replies of a batch
//! share a destination, so none share a GSO send).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::common::{self, BenchRow, median, progress};

struct Plan {
    runs: usize,
    secs: f64,
    warmup: f64,
}

/// The helper process, killed on drop.
struct ServerProc {
    child: Child,
    port: u16,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (utime, stime) of `pid`, in seconds.
fn cpu_seconds(pid: u32, tck: f64) -> anyhow::Result<(f64, f64)> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => Ok((u / tck, s / tck)),
        _ => bail!("unexpected /proc/{pid}/stat format"),
    }
}

fn start_server(bin: &PathBuf) -> anyhow::Result<ServerProc> {
    let mut child = Command::new(bin)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the registry_bench server")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the server port")?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("bad port line {line:?}"))?;
    Ok(ServerProc { child, port })
}

/// Median (replies/s, server CPU µs per reply) of Herald's server under `mode` load.
fn herald_mode(
    bin: &PathBuf,
    server: &ServerProc,
    mode: &str,
    parallel: usize,
    window: usize,
    plan: &Plan,
) -> anyhow::Result<(f64, f64)> {
    let tck = clk_tck();
    let pid = server.child.id();
    let mut rates = Vec::new();
    let mut costs = Vec::new();
    for run in 0..plan.runs {
        let c0 = cpu_seconds(pid, tck)?;
        let out = Command::new(bin)
            .args([
                "load",
                mode,
                &server.port.to_string(),
                &plan.secs.to_string(),
                &plan.warmup.to_string(),
                &parallel.to_string(),
                &window.to_string(),
            ])
            .output()
            .context("running the load generator")?;
        let c1 = cpu_seconds(pid, tck)?;
        if !out.status.success() {
            bail!(
                "load generator failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("load generator output")?;
        let rate = v["rate"].as_f64().unwrap_or(0.0);
        let total = v["total_replies"].as_f64().unwrap_or(0.0);
        let bad = v["bad_replies"].as_u64().unwrap_or(0);
        let per = |secs: f64| if total > 0.0 { secs / total * 1e6 } else { 0.0 };
        let cost = per((c1.0 + c1.1) - (c0.0 + c0.1));
        let user = per(c1.0 - c0.0);
        progress(format!(
            "herald {mode} {parallel}x{window} run {}: {rate:.0} replies/s, {cost:.2} us server CPU per reply ({user:.2} us user space), {bad} bad",
            run + 1
        ));
        // Over UDP a bad reply is a wrong one (a lost datagram is not counted); over
        // TCP it also counts connections that timed out under load.
        if bad > 0 && mode.starts_with("udp") {
            bail!("{bad} wrong replies from Herald's registry under UDP load: a bug, not a figure");
        }
        rates.push(rate);
        costs.push(cost);
    }
    Ok((median(rates), median(costs)))
}

/// rpyc's figures from the peer script: mode -> (replies/s, CPU µs per reply).
fn rpyc_baseline(plan: &Plan) -> anyhow::Result<Option<Value>> {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::RPYC) else {
        return Ok(None);
    };
    let script = herald_pyenv::shared_dir().join("peers/rpyc_registry_bench.py");
    let out_file = common::bench_dir().join("rpyc_registry_baseline.json");
    std::fs::create_dir_all(common::bench_dir())?;
    progress("running rpyc's own registry servers (peers/rpyc_registry_bench.py)");
    let status = Command::new(python)
        .arg(&script)
        .args(["--modes", "udp-pipelined,tcp-concurrent"])
        .args([
            "--duration",
            &plan.secs.to_string(),
            "--warmup",
            &plan.warmup.to_string(),
        ])
        .args(["--runs", &plan.runs.to_string(), "--json"])
        .arg(&out_file)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_file)?)?;
    Ok(Some(v))
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let plan = if quick {
        Plan {
            runs: 1,
            secs: 1.0,
            warmup: 0.3,
        }
    } else {
        Plan {
            runs: 3,
            secs: 3.0,
            warmup: 0.5,
        }
    };
    let bin = common::build_example("herald-registry", "registry_bench")?;
    let server = start_server(&bin)?;
    let (udp_rate, udp_cost) = herald_mode(&bin, &server, "udp", 4, 32, &plan)?;
    // Clients as rpyc's: one QUERY in flight each, so every reply goes to another
    // address and none can share a GSO send.
    let (many_rate, many_cost) = herald_mode(&bin, &server, "udp", 128, 1, &plan)?;
    let (tcp_rate, tcp_cost) = herald_mode(&bin, &server, "tcp", 8, 1, &plan)?;
    drop(server);
    let baseline = rpyc_baseline(&plan)?;
    let get = |mode: &str, key: &str| {
        baseline
            .as_ref()
            .and_then(|b| b["results"][mode][key].as_f64())
            .unwrap_or(0.0)
    };
    let per_cpu_second = |us: f64| if us > 0.0 { 1e6 / us } else { 0.0 };
    let (r_udp_rate, r_udp_cost) = (
        get("udp-pipelined", "median_rate"),
        get("udp-pipelined", "median_server_cpu_us_per_reply"),
    );
    let (r_tcp_rate, r_tcp_cost) = (
        get("tcp-concurrent", "median_rate"),
        get("tcp-concurrent", "median_server_cpu_us_per_reply"),
    );
    println!();
    println!(
        "server CPU per reply: herald UDP {udp_cost:.2} us (rpyc {r_udp_cost:.1} us), herald TCP {tcp_cost:.2} us (rpyc {r_tcp_cost:.1} us)"
    );
    println!(
        "herald UDP server CPU per reply by load shape: 4 sockets x 32 {udp_cost:.2} us, 128 sockets x 1 {many_cost:.2} us"
    );
    let rows = vec![
        BenchRow::new(
            "UDP QUERY replies/s (pipelined)",
            udp_rate,
            "rpyc UDPRegistryServer",
            r_udp_rate,
        ),
        BenchRow::new(
            "UDP replies per server CPU-second",
            per_cpu_second(udp_cost),
            "rpyc UDPRegistryServer",
            per_cpu_second(r_udp_cost),
        ),
        BenchRow::new(
            "UDP QUERY replies/s (128 clients x 1)",
            many_rate,
            "rpyc UDPRegistryServer",
            r_udp_rate,
        ),
        BenchRow::new(
            "UDP replies per server CPU-second (128 clients x 1)",
            per_cpu_second(many_cost),
            "rpyc UDPRegistryServer",
            per_cpu_second(r_udp_cost),
        ),
        BenchRow::new(
            "TCP QUERY replies/s (8 in flight)",
            tcp_rate,
            "rpyc TCPRegistryServer",
            r_tcp_rate,
        ),
        BenchRow::new(
            "TCP replies per server CPU-second",
            per_cpu_second(tcp_cost),
            "rpyc TCPRegistryServer",
            per_cpu_second(r_tcp_cost),
        ),
    ];
    common::report("registry", &rows)?;
    Ok(())
}
