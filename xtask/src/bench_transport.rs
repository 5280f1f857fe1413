//! `cargo xtask bench transport`: Herald's TCP transport between two processes on
//! loopback, beside a raw tokio TCP loop (same frames, length-prefixed, no decoding)
//! and, when its venv exists, casty 0.21.0's own transport, all in the same run.
//!
//! Measured (each the median of the runs):
//! * one-way throughput: ≥ 1 M casty-shaped 180-byte frames from one process to another
//!   over one connection, rate counted by the receiver after a 1000-message warm-up;
//!   Herald's sender hands each batch of messages to `PeerHandle::send_all` (as the raw
//!   sender hands its frames to a buffered writer), and two more Herald rows send one
//!   message per call: by reference (`PeerHandle::send_ref`) and as a clone passed by
//!   value (`PeerHandle::send`); every message is encoded into its own frame in all three;
//! * request/reply latency: sequential round trips, p50 and p99 (hdrhistogram), shown
//!   as round trips per second at that latency;
//! * memory per idle connection: server RSS delta over 1000 idle connections that
//!   completed the casty handshake, shown as idle connections per MiB.
//!
//! The helper processes are `crates/herald-transport/examples/bench_peer.rs` (built in
//! release mode here) and `crates/herald-transport/tests/py/casty_transport_bench.py`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::common::{BenchRow, build_example, median, progress, report};

const LINE_WAIT: Duration = Duration::from_secs(300);

/// A helper process whose stdout lines are read by a thread; killed on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Proc {
    fn spawn(mut cmd: Command, name: &str) -> anyhow::Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            stdin,
            lines,
            name: name.to_owned(),
        })
    }

    /// The next line starting with `prefix` (other lines are skipped), without the prefix.
    fn expect(&self, prefix: &str) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => {
                    return Ok(l[prefix.len()..].trim().to_owned());
                }
                Ok(_) => continue,
                Err(e) => bail!("{} printed no {prefix:?} line: {e}", self.name),
            }
        }
    }

    fn poke(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("no stdin"))?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer(bin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args);
    c
}

/// `kind`: the sender's (`herald`, `herald-ref`, `herald-clone` or `raw`); a Herald
/// sender talks to a Herald receiver.
fn one_way(bin: &Path, kind: &str, n: u64) -> anyhow::Result<f64> {
    let total = (n + 1_000).to_string();
    let receiver = if kind == "raw" { "raw" } else { "herald" };
    let rx = Proc::spawn(peer(bin, &["recv", receiver, &total]), "receiver")?;
    let port = rx.expect("READY")?;
    let _tx = Proc::spawn(peer(bin, &["send", kind, &port, &total]), "sender")?;
    let rate: f64 = rx.expect("RATE")?.parse()?;
    Ok(rate)
}

/// Returns (p50, p99) in nanoseconds.
fn rtt(bin: &Path, kind: &str, pings: u64) -> anyhow::Result<(f64, f64)> {
    let echo = Proc::spawn(peer(bin, &["echo", kind]), "echo")?;
    let port = echo.expect("READY")?;
    let ping = Proc::spawn(
        peer(bin, &["ping", kind, &port, &pings.to_string()]),
        "ping",
    )?;
    let line = ping.expect("RTT")?;
    let mut it = line.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(p50)), Some(Ok(p99))) => Ok((p50, p99)),
        _ => bail!("bad RTT line {line:?}"),
    }
}

/// Bytes of server RSS per idle connection (1000 connections).
fn idle_memory(bin: &Path, kind: &str, conns: u64) -> anyhow::Result<f64> {
    let mut server = Proc::spawn(peer(bin, &["idle-server", kind]), "idle server")?;
    let port = server.expect("READY")?;
    std::thread::sleep(Duration::from_millis(300));
    server.poke()?;
    let before: f64 = server.expect("RSS")?.parse()?;
    let clients = Proc::spawn(
        peer(bin, &["idle-clients", &port, &conns.to_string()]),
        "idle clients",
    )?;
    clients.expect("CONNECTED")?;
    std::thread::sleep(Duration::from_secs(1));
    server.poke()?;
    let after: f64 = server.expect("RSS")?.parse()?;
    Ok(((after - before).max(0.0) * 1024.0) / conns as f64)
}

#[derive(Debug, Default)]
struct Casty {
    one_way: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn casty(root: &Path, n: u64, runs: u64, pings: u64) -> anyhow::Result<Option<Casty>> {
    let python = herald_pyenv::target_dir().join("herald-pyenv/casty/bin/python");
    if !python.exists() {
        progress(format!(
            "casty venv not found at {} (run `cargo run -p herald-pyenv --example prepare`); skipping casty",
            python.display()
        ));
        return Ok(None);
    }
    let script = root.join("crates/herald-transport/tests/py/casty_transport_bench.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args([
            "json",
            &n.to_string(),
            &runs.to_string(),
            &pings.to_string(),
        ])
        .env("PYTHONPATH", herald_pyenv::shared_dir().join("peers"));
    let p = Proc::spawn(cmd, "casty bench")?;
    let json = p.expect("CASTY")?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    Ok(Some(Casty {
        one_way: f("one_way_msgs_per_s_median"),
        p50_ms: f("pingpong_p50_ms_median"),
        p99_ms: f("pingpong_p99_ms_median"),
    }))
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let root = herald_pyenv::workspace_root();
    let bin = build_example("herald-transport", "bench_peer")?;
    let (n, runs, pings, conns) = if quick {
        (300_000u64, 1usize, 2_000u64, 500u64)
    } else {
        (1_000_000, 3, 20_000, 1_000)
    };
    let (casty_n, casty_runs, casty_pings) = if quick {
        (3_000, 1, 300)
    } else {
        (20_000, 3, 2_000)
    };

    let mut herald_rate = Vec::new();
    let mut ref_rate = Vec::new();
    let mut clone_rate = Vec::new();
    let mut raw_rate = Vec::new();
    for run in 1..=runs {
        let h = one_way(&bin, "herald", n)?;
        let r = one_way(&bin, "raw", n)?;
        let s = one_way(&bin, "herald-ref", n)?;
        let c = one_way(&bin, "herald-clone", n)?;
        progress(format!(
            "one-way {n} frames, run {run}/{runs}: herald {h:.0}/s, raw tokio {r:.0}/s; one message per call: by reference {s:.0}/s, a cloned envelope {c:.0}/s"
        ));
        herald_rate.push(h);
        raw_rate.push(r);
        ref_rate.push(s);
        clone_rate.push(c);
    }
    let (mut h50, mut h99, mut r50, mut r99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (a, b) = rtt(&bin, "herald", pings)?;
        let (c, d) = rtt(&bin, "raw", pings)?;
        progress(format!(
            "request/reply {pings} round trips, run {run}/{runs}: herald p50 {:.1} µs p99 {:.1} µs, raw p50 {:.1} µs p99 {:.1} µs",
            a / 1e3,
            b / 1e3,
            c / 1e3,
            d / 1e3
        ));
        h50.push(a);
        h99.push(b);
        r50.push(c);
        r99.push(d);
    }
    progress(format!("memory of {conns} idle connections"));
    let herald_idle = idle_memory(&bin, "herald", conns)?;
    let raw_idle = idle_memory(&bin, "raw", conns)?;
    progress("casty 0.21 transport (json serializer), if its venv exists");
    let casty = casty(&root, casty_n, casty_runs as u64, casty_pings)?;

    let (hr, rr) = (median(herald_rate), median(raw_rate));
    let (sr, cr) = (median(ref_rate), median(clone_rate));
    let (h50, h99, r50, r99) = (median(h50), median(h99), median(r50), median(r99));
    let per_mib = |bytes: f64| {
        if bytes > 0.0 {
            1_048_576.0 / bytes
        } else {
            0.0
        }
    };
    progress(format!(
        "one-way: herald {hr:.0}/s (one per call: by reference {sr:.0}/s, cloned {cr:.0}/s), raw {rr:.0}/s; RTT p50 herald {:.1} µs raw {:.1} µs, p99 herald {:.1} µs raw {:.1} µs; idle conn herald {:.1} KiB raw {:.1} KiB",
        h50 / 1e3,
        r50 / 1e3,
        h99 / 1e3,
        r99 / 1e3,
        herald_idle / 1024.0,
        raw_idle / 1024.0
    ));
    let mut rows = vec![
        BenchRow::new(
            "tcp one-way 180 B frames, msgs/s",
            hr,
            "raw tokio TCP, length-prefixed, no decode",
            rr,
        ),
        BenchRow::new(
            "tcp one-way 180 B frames, msgs/s, send_ref per message",
            sr,
            "raw tokio TCP, length-prefixed, no decode",
            rr,
        ),
        BenchRow::new(
            "tcp one-way 180 B frames, msgs/s, a cloned envelope per send",
            cr,
            "raw tokio TCP, length-prefixed, no decode",
            rr,
        ),
        BenchRow::new(
            "tcp request/reply, round trips/s at p50",
            1e9 / h50.max(1.0),
            "raw tokio TCP ping-pong",
            1e9 / r50.max(1.0),
        ),
        BenchRow::new(
            "tcp request/reply, round trips/s at p99",
            1e9 / h99.max(1.0),
            "raw tokio TCP ping-pong",
            1e9 / r99.max(1.0),
        ),
        BenchRow::new(
            "idle connections per MiB of RSS",
            per_mib(herald_idle),
            "raw tokio task + 8 KiB buffer",
            per_mib(raw_idle),
        ),
    ];
    if let Some(c) = casty {
        progress(format!(
            "casty: one-way {:.0}/s, p50 {:.3} ms, p99 {:.3} ms",
            c.one_way, c.p50_ms, c.p99_ms
        ));
        rows.push(BenchRow::new(
            "tcp one-way msgs/s vs casty",
            hr,
            "casty 0.21 tcp_transport (json)",
            c.one_way,
        ));
        rows.push(BenchRow::new(
            "tcp round trips/s at p50 vs casty",
            1e9 / h50.max(1.0),
            "casty 0.21 tcp_transport (json)",
            1e3 / c.p50_ms.max(1e-6),
        ));
        rows.push(BenchRow::new(
            "tcp round trips/s at p99 vs casty",
            1e9 / h99.max(1.0),
            "casty 0.21 tcp_transport (json)",
            1e3 / c.p99_ms.max(1e-6),
        ));
    }
    report("transport", &rows)?;
    Ok(())
}
