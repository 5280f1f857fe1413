//! `cargo xtask bench <layer>`: Herald's benchmarks, each printed beside a baseline
//! measured in the same run and written to `target/herald-bench/<layer>.json`.

use anyhow::bail;

mod bench_mesh;
mod bench_registry;
mod bench_transport;
mod bench_wire;
mod common;

const USAGE: &str = "usage: cargo xtask bench <wire|transport|registry|mesh|all> [--quick]

  bench wire       envelope encode/decode vs casty's codec and memcpy
  bench transport  TCP one-way throughput and RTT vs a raw tokio loop (and casty)
  bench registry   registry QUERY replies/s and CPU per reply vs rpyc's server
  bench mesh       RPC requests/s and latency vs raw lapin and nuropb
  bench all        all of the above

  --quick          shorter runs (for smoke tests); figures are noisier";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let positional: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    match positional.as_slice() {
        ["bench", layer] => run_bench(layer, quick),
        _ => {
            println!("{USAGE}");
            if args.iter().any(|a| a == "--help" || a == "-h") {
                Ok(())
            } else {
                bail!("expected `bench <layer>`")
            }
        }
    }
}

fn run_bench(layer: &str, quick: bool) -> anyhow::Result<()> {
    let _ = quick;
    match layer {
        "wire" => bench_wire::run(quick),
        "transport" => bench_transport::run(quick),
        "registry" => bench_registry::run(quick),
        "mesh" => bench_mesh::run(quick),
        other => bail!("unknown benchmark layer `{other}`\n{USAGE}"),
    }
}
