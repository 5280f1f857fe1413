//! Test support for Herald's interoperability tests and benchmarks.
//!
//! Interop tests run the real Python library as the peer. This crate creates each
//! peer's virtual environment on first use under `target/herald-pyenv/<name>`,
//! guarded by a file lock so that tests running in parallel (threads or processes)
//! create it once, and hands back the path of its Python interpreter.
//!
//! When a peer cannot be made present (no suitable interpreter, no package index),
//! [`peer_or_skip`] prints why and returns `None` so the test can return early, unless
//! `HERALD_REQUIRE_PEERS=1` is set (as `.ci/run` does), in which case it panics with
//! the reason, so CI fails loudly instead of skipping.
//!
//! ```no_run
//! use herald_pyenv::{peer_or_skip, RPYC};
//! let Some(python) = peer_or_skip(&RPYC) else { return };
//! let out = std::process::Command::new(&python)
//!     .args(["-c", "import rpyc; print(rpyc.__version__)"])
//!     .output()
//!     .expect("run python");
//! assert!(out.status.success());
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Python peer: which interpreter and which pinned packages its venv holds.
#[derive(Debug, Clone, Copy)]
pub struct VenvSpec {
    /// Directory name under `target/herald-pyenv/`.
    pub name: &'static str,
    /// Python minor version, e.g. `"3.11"`.
    pub python: &'static str,
    /// Requirements passed to `pip install`.
    pub packages: &'static [&'static str],
}

/// rpyc 6.0.2 on Python 3.11 (registry interop).
pub const RPYC: VenvSpec = VenvSpec {
    name: "rpyc",
    python: "3.11",
    packages: &["rpyc==6.0.2"],
};

/// nuropb 0.1.8 on Python 3.11 (mesh interop), with aio-pika for the baseline bench.
pub const NUROPB: VenvSpec = VenvSpec {
    name: "nuropb",
    python: "3.11",
    packages: &["nuropb==0.1.8", "aio-pika"],
};

/// casty 0.21.0 on Python 3.12 (wire and transport interop), with msgpack.
pub const CASTY: VenvSpec = VenvSpec {
    name: "casty",
    python: "3.12",
    packages: &["casty==0.21.0", "msgpack"],
};

/// pyzmq on Python 3.11 (libzmq baseline for group benchmarks).
pub const PYZMQ: VenvSpec = VenvSpec {
    name: "pyzmq",
    python: "3.11",
    packages: &["pyzmq"],
};

/// Why a venv could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PyEnvError {
    /// No interpreter of the wanted version was found.
    #[error(
        "no Python {version} interpreter found (tried {tried}); set HERALD_PYTHON{env_suffix} to its path"
    )]
    NoInterpreter {
        /// The wanted version.
        version: String,
        /// Candidates that were tried.
        tried: String,
        /// Suffix of the override variable (e.g. `311`).
        env_suffix: String,
    },
    /// A command (venv creation or pip) failed.
    #[error("`{command}` failed with {status}: {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// File-system trouble under the target directory.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PyEnvError + '_ {
    move |source| PyEnvError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The workspace `target/` directory (or `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return dir;
        }
        return workspace_root().join(dir);
    }
    workspace_root().join("target")
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// The reference folder (vectors, specs, peers): `HERALD_SHARED_DIR` when set, else
/// `../shared` next to the repository, else `/work/shared` (where the development
/// machines keep it, so that a clone elsewhere still finds it).
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HERALD_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    let beside = workspace_root().join("..").join("shared");
    if beside.join("vectors").is_dir() {
        return beside;
    }
    let machine = PathBuf::from("/work/shared");
    if machine.join("vectors").is_dir() {
        return machine;
    }
    beside
}

/// Finds an interpreter for `version` (e.g. `"3.12"`).
pub fn find_python(version: &str) -> Result<PathBuf, PyEnvError> {
    let suffix = version.replace('.', "");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(format!("HERALD_PYTHON{suffix}")) {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(format!("python{version}")));
    if let Some(home) = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        && let Ok(entries) = fs::read_dir(home.join("versions"))
    {
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{version}.")))
            })
            .map(|p| p.join("bin").join(format!("python{version}")))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates.push(PathBuf::from("python3"));
    let mut tried = Vec::new();
    for cand in candidates {
        tried.push(cand.display().to_string());
        let out = Command::new(&cand)
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output();
        if let Ok(out) = out
            && out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == version
        {
            return Ok(cand);
        }
    }
    Err(PyEnvError::NoInterpreter {
        version: version.to_string(),
        tried: tried.join(", "),
        env_suffix: suffix,
    })
}

fn run(cmd: &mut Command) -> Result<(), PyEnvError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| PyEnvError::CommandFailed {
        command: shown.clone(),
        status: "spawn error".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Err(PyEnvError::CommandFailed {
        command: shown,
        status: out.status.to_string(),
        stderr: tail,
    })
}

/// Creates (once) the venv for `spec` and returns its Python interpreter.
///
/// Safe to call from many threads and processes at once: creation is guarded by an
/// exclusive lock on `target/herald-pyenv/<name>.lock`, and a marker file recording
/// the package list makes later calls cheap.
pub fn ensure_venv(spec: &VenvSpec) -> Result<PathBuf, PyEnvError> {
    let root = target_dir().join("herald-pyenv");
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let lock_path = root.join(format!("{}.lock", spec.name));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    let result = create_locked(spec, &root);
    // Dropping the file releases the lock.
    drop(lock);
    result
}

fn create_locked(spec: &VenvSpec, root: &Path) -> Result<PathBuf, PyEnvError> {
    let dir = root.join(spec.name);
    let python = dir.join("bin").join("python");
    let marker = dir.join(".herald-ready");
    let wanted = spec.packages.join("\n");
    if fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return Ok(python);
    }
    eprintln!(
        "herald-pyenv: creating venv {} (Python {}, {}) — first use only",
        dir.display(),
        spec.python,
        spec.packages.join(" ")
    );
    let base = find_python(spec.python)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    run(Command::new(&base).arg("-m").arg("venv").arg(&dir))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(spec.packages))?;
    let mut f = File::create(&marker).map_err(io_err(&marker))?;
    f.write_all(wanted.as_bytes()).map_err(io_err(&marker))?;
    Ok(python)
}

/// True when `HERALD_REQUIRE_PEERS` asks that missing peers fail rather than skip.
pub fn peers_required() -> bool {
    std::env::var("HERALD_REQUIRE_PEERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Returns the venv's interpreter, or prints why the peer is missing and returns
/// `None` (the caller returns early). Panics instead when `HERALD_REQUIRE_PEERS=1`.
pub fn peer_or_skip(spec: &VenvSpec) -> Option<PathBuf> {
    match ensure_venv(spec) {
        Ok(p) => Some(p),
        Err(e) => {
            let msg = format!(
                "SKIPPED: this test needs the Python peer `{}` ({}) and it could not be created: {e}",
                spec.name,
                spec.packages.join(" ")
            );
            if peers_required() {
                panic!("{msg} (HERALD_REQUIRE_PEERS=1, so this is a failure)");
            }
            eprintln!("{msg}");
            None
        }
    }
}

/// Returns the AMQP URL from `HERALD_AMQP_URL` if a broker answers there, or prints why
/// the broker test is skipped (panics instead when `HERALD_REQUIRE_PEERS=1`).
pub fn amqp_url_or_skip() -> Option<String> {
    let Ok(url) = std::env::var("HERALD_AMQP_URL") else {
        let msg = "SKIPPED: this test needs RabbitMQ; set HERALD_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672/%2f) — .ci/run does";
        if peers_required() {
            panic!("{msg} (HERALD_REQUIRE_PEERS=1, so this is a failure)");
        }
        eprintln!("{msg}");
        return None;
    };
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit('@').next())
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_string();
    let hostport = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:5672")
    };
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).is_ok()
        });
    if reachable {
        return Some(url);
    }
    let msg = format!("SKIPPED: HERALD_AMQP_URL={url} is set but no broker answers at {hostport}");
    if peers_required() {
        panic!("{msg} (HERALD_REQUIRE_PEERS=1, so this is a failure)");
    }
    eprintln!("{msg}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_is_inside_workspace_by_default() {
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            assert!(target_dir().ends_with("target"));
            assert!(workspace_root().join("Cargo.toml").exists());
        }
    }

    #[test]
    fn missing_interpreter_is_a_clear_error() {
        let err = find_python("2.1").expect_err("python 2.1 does not exist");
        let msg = err.to_string();
        assert!(msg.contains("no Python 2.1 interpreter"), "{msg}");
        assert!(msg.contains("HERALD_PYTHON21"), "{msg}");
    }
}
