//! Creates the Python peers' venvs ahead of the tests (CI calls this so that a missing
//! peer fails loudly and early instead of inside a test).
//!
//! ```text
//! cargo run -p herald-pyenv --example prepare -- [rpyc|nuropb|casty|pyzmq|all]...
//! ```

use std::process::ExitCode;

use herald_pyenv::{CASTY, NUROPB, PYZMQ, RPYC, VenvSpec, ensure_venv};

fn main() -> ExitCode {
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    if wanted.is_empty() || wanted.iter().any(|w| w == "all") {
        wanted = ["rpyc", "nuropb", "casty"].map(String::from).to_vec();
    }
    let mut failed = false;
    for name in wanted {
        let spec: &VenvSpec = match name.as_str() {
            "rpyc" => &RPYC,
            "nuropb" => &NUROPB,
            "casty" => &CASTY,
            "pyzmq" => &PYZMQ,
            other => {
                eprintln!("unknown peer `{other}` (expected rpyc, nuropb, casty, pyzmq or all)");
                return ExitCode::from(2);
            }
        };
        eprintln!("preparing Python peer `{}` ...", spec.name);
        match ensure_venv(spec) {
            Ok(python) => println!("{}: {}", spec.name, python.display()),
            Err(e) => {
                eprintln!("{}: FAILED: {e}", spec.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
