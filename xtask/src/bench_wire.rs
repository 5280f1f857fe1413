//! `cargo xtask bench wire`: envelope encode/decode per second at payload 0 B,
//! 64 B, 1 KiB, 64 KiB and 1 MiB, with casty-shaped headers, beside two
//! baselines measured in the same run:
//!
//! - casty 0.21.0's own codec (`MessageEnvelope.to_bytes` / `from_bytes`),
//!   through `../shared/peers/casty_bench.py`'s micro-bench (`bench_envelope`)
//!   for 0 B..64 KiB and the same loop inline for 1 MiB (the script stops at
//!   64 KiB); the venv is created by `herald_pyenv::ensure_venv(&CASTY)`;
//! - a plain `memcpy` of the same envelope bytes into a reused buffer.
//!
//! Herald's encode is `Envelope::encode_into` a reused `BytesMut` (what a
//! `FramedWrite` does); decode is `Envelope::decode` of a `Bytes` (zero-copy
//! payload). Single thread. Each figure is the median of several timed runs.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use herald_wire::Envelope;
use serde_json::Value;

use crate::common::{self, BenchRow, progress};

const TARGET: &str = "casty://bench@127.0.0.1:25520/sink";
const SENDER: &str = "casty://bench@127.0.0.1:25521/";
const TYPE_HINT: &str = "bench.Ping";
const SIZES: [usize; 5] = [0, 64, 1024, 64 * 1024, 1024 * 1024];

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1024 * 1024 => format!("{} MiB", s / (1024 * 1024)),
        s if s >= 1024 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

struct Plan {
    runs: usize,
    run_time: Duration,
}

/// Operations per second of `op`, median of `plan.runs` timed runs of about
/// `plan.run_time` each (iteration count calibrated first).
fn rate(plan: &Plan, mut op: impl FnMut()) -> f64 {
    // Calibrate: grow the batch until it takes >= 10 ms.
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        let el = t.elapsed();
        if el >= Duration::from_millis(10) || batch >= 1 << 30 {
            let per = el.as_secs_f64() / batch as f64;
            batch = ((plan.run_time.as_secs_f64() / per.max(1e-12)) as u64).max(1);
            break;
        }
        batch *= 4;
    }
    let rates = (0..plan.runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                op();
            }
            batch as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    common::median(rates)
}

struct HeraldFigures {
    encode: f64,
    decode: f64,
    memcpy: f64,
}

fn measure_herald(plan: &Plan, size: usize) -> anyhow::Result<HeraldFigures> {
    let payload: Bytes = (0..size)
        .map(|i| (i & 0xff) as u8)
        .collect::<Vec<u8>>()
        .into();
    let env = Envelope::new(TARGET, SENDER, TYPE_HINT, payload);
    let data = env.encode();
    // Correctness gate before timing.
    if Envelope::decode(data.clone()).ok().as_ref() != Some(&env) {
        bail!("envelope of {size} B does not round-trip");
    }
    let mut buf = BytesMut::with_capacity(data.len());
    let encode = rate(plan, || {
        buf.clear();
        black_box(&env).encode_into(&mut buf);
        black_box(&buf);
    });
    let decode = rate(plan, || {
        let e = Envelope::decode(black_box(data.clone()));
        black_box(&e);
    });
    let mut dst = vec![0u8; data.len()];
    let memcpy = rate(plan, || {
        dst.copy_from_slice(black_box(&data[..]));
        black_box(&dst);
    });
    Ok(HeraldFigures {
        encode,
        decode,
        memcpy,
    })
}

/// casty's figures per payload size: (encode/s, decode/s).
fn measure_casty(quick: bool) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let python = herald_pyenv::ensure_venv(&herald_pyenv::CASTY)
        .context("creating the casty 0.21.0 venv for the baseline")?;
    let peers = herald_pyenv::shared_dir().join("peers");
    let runs = if quick { 1 } else { 5 };
    let big_n = if quick { 300 } else { 2000 };
    // Import the reference script and run only its envelope micro-bench, then
    // the same loop at 1 MiB (the script itself stops at 64 KiB).
    let code = format!(
        r#"
import json, sys, time, statistics
sys.path.insert(0, {peers:?})
import casty_bench
res = casty_bench.bench_envelope({runs})
from casty.remote.tcp_transport import MessageEnvelope
size = 1024 * 1024
env = MessageEnvelope(target={TARGET:?}, sender={SENDER:?}, payload=bytes(i & 0xFF for i in range(size)), type_hint={TYPE_HINT:?})
data = env.to_bytes()
n = {big_n}
enc, dec = [], []
for _ in range({runs}):
    t = time.perf_counter()
    for _ in range(n):
        env.to_bytes()
    enc.append(n / (time.perf_counter() - t))
    t = time.perf_counter()
    for _ in range(n):
        MessageEnvelope.from_bytes(data)
    dec.append(n / (time.perf_counter() - t))
res["payload_1048576B"] = {{"envelope_bytes": len(data), "encode_per_s_median": round(statistics.median(enc)), "decode_per_s_median": round(statistics.median(dec))}}
print(json.dumps(res))
"#,
        peers = peers.display().to_string(),
    );
    progress(format!(
        "casty 0.21.0 baseline: {} -c <casty_bench.bench_envelope({runs}) + 1 MiB>",
        python.display()
    ));
    let out = Command::new(&python)
        .arg("-c")
        .arg(&code)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "casty baseline failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("casty baseline printed no JSON")?;
    let v: Value = serde_json::from_str(line).context("parsing casty baseline JSON")?;
    let mut figures = Vec::new();
    for size in SIZES {
        let entry = &v[format!("payload_{size}B")];
        let enc = entry["encode_per_s_median"].as_f64();
        let dec = entry["decode_per_s_median"].as_f64();
        match (enc, dec) {
            (Some(e), Some(d)) => figures.push((size, e, d)),
            _ => bail!("casty baseline has no figures for {size} B: {line}"),
        }
    }
    Ok(figures)
}

/// Runs the wire benchmark and writes `target/herald-bench/wire.json`.
pub fn run(quick: bool) -> anyhow::Result<()> {
    let plan = if quick {
        Plan {
            runs: 3,
            run_time: Duration::from_millis(100),
        }
    } else {
        Plan {
            runs: 5,
            run_time: Duration::from_millis(300),
        }
    };
    let casty = measure_casty(quick)?;
    let mut rows = Vec::new();
    for (size, casty_enc, casty_dec) in casty {
        progress(format!("herald-wire at payload {}", size_name(size)));
        let h = measure_herald(&plan, size)?;
        let sz = size_name(size);
        rows.push(BenchRow::new(
            format!("envelope encode {sz}"),
            h.encode,
            "casty 0.21.0 MessageEnvelope.to_bytes",
            casty_enc,
        ));
        rows.push(BenchRow::new(
            format!("envelope decode {sz}"),
            h.decode,
            "casty 0.21.0 MessageEnvelope.from_bytes",
            casty_dec,
        ));
        rows.push(BenchRow::new(
            format!("envelope encode {sz} (vs memcpy)"),
            h.encode,
            "memcpy of the envelope bytes",
            h.memcpy,
        ));
        rows.push(BenchRow::new(
            format!("envelope decode {sz} (vs memcpy)"),
            h.decode,
            "memcpy of the envelope bytes",
            h.memcpy,
        ));
    }
    common::report("wire", &rows)?;
    Ok(())
}
