//! Shared result format of every `cargo xtask bench <layer>`.
//!
//! Each layer writes `target/herald-bench/<layer>.json`: a list of [`BenchRow`]s, and
//! prints the same rows as a table. A row compares Herald's figure with a baseline
//! measured in the same run; `ratio = herald_per_sec / baseline_per_sec` (so > 1 means
//! Herald is faster). Latencies are reported as their inverse (operations per second
//! at that latency) so that every row reads the same way; the row name says so.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub name: String,
    pub herald_per_sec: f64,
    pub baseline_name: String,
    pub baseline_per_sec: f64,
    pub ratio: f64,
}

impl BenchRow {
    /// Builds a row; the ratio is computed here (NaN-free: 0 when the baseline is 0).
    pub fn new(
        name: impl Into<String>,
        herald_per_sec: f64,
        baseline_name: impl Into<String>,
        baseline_per_sec: f64,
    ) -> Self {
        let ratio = if baseline_per_sec > 0.0 {
            herald_per_sec / baseline_per_sec
        } else {
            0.0
        };
        Self {
            name: name.into(),
            herald_per_sec,
            baseline_name: baseline_name.into(),
            baseline_per_sec,
            ratio,
        }
    }
}

/// `target/herald-bench/`.
pub fn bench_dir() -> PathBuf {
    herald_pyenv::target_dir().join("herald-bench")
}

/// Prints `rows` as a table and writes them to `target/herald-bench/<layer>.json`.
pub fn report(layer: &str, rows: &[BenchRow]) -> anyhow::Result<PathBuf> {
    // Columns as wide as their longest entry, so that no row shifts the ones after it.
    let name_w = rows
        .iter()
        .map(|r| r.name.len())
        .fold("benchmark".len(), usize::max);
    let base_w = rows
        .iter()
        .map(|r| r.baseline_name.len())
        .fold("baseline".len(), usize::max);
    println!();
    println!(
        "{:<name_w$} {:>16} {:<base_w$} {:>16} {:>9}",
        "benchmark", "herald/s", "baseline", "baseline/s", "ratio"
    );
    for r in rows {
        println!(
            "{:<name_w$} {:>16} {:<base_w$} {:>16} {:>8.2}x",
            r.name,
            human(r.herald_per_sec),
            r.baseline_name,
            human(r.baseline_per_sec),
            r.ratio
        );
    }
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{layer}.json"));
    let json = serde_json::to_string_pretty(rows)?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(path)
}

/// Formats a rate with thousands separators.
pub fn human(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Builds `package`'s example `example` in release mode (a benchmark's helper
/// process) and returns the path of its binary.
pub fn build_example(package: &str, example: &str) -> anyhow::Result<PathBuf> {
    progress(format!("building {package}'s {example} helper (release)"));
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "-q",
                "-p",
                package,
                "--example",
                example,
            ])
            .status()
            .context("running cargo build")?;
    if !status.success() {
        bail!("building the {example} helper failed ({status})");
    }
    let path = herald_pyenv::target_dir()
        .join("release/examples")
        .join(example);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// The median of `v` (the upper one for an even count; 0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Progress line on stderr (long benchmarks say what they are doing).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[xtask] {}", msg.as_ref());
}
