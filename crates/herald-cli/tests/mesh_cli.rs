//! `herald mesh` end to end: the real binary on the in-process mesh, and on RabbitMQ
//! when `HERALD_AMQP_URL` is set.

// Test code: an unwrap that fails is the test's failure report.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one `herald` command may take before the test kills it and fails.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// Runs `herald ARGS` to completion, bounded by [`RUN_WAIT`].
fn herald(args: &[&str]) -> Output {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run herald"),
    );
    // Read while it runs, so that a full pipe cannot stall it.
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read_all(child.0.stdout.take().map(|p| Box::new(p) as _));
    let err = read_all(child.0.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_bounded(&mut child, RUN_WAIT, &format!("herald {args:?}"));
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` to exit; after `within` kills it and fails the test naming `what`.
fn wait_bounded(child: &mut KillOnDrop, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            panic!("{what} did not finish within {within:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `herald mesh call example add` of 2 and 40, with `extra` flags.
fn call_add(extra: &[&str]) -> Output {
    let mut args = vec![
        "mesh",
        "call",
        "example",
        "add",
        "--params",
        r#"{"a": 2, "b": 40}"#,
    ];
    args.extend(extra);
    herald(&args)
}

#[test]
fn call_add_prints_the_result() {
    let o = call_add(&[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "42");
}

#[test]
fn call_json_output_and_context_reach_the_handler() {
    let o = herald(&[
        "mesh",
        "call",
        "example",
        "echo",
        "--params",
        r#"{"x": 1}"#,
        "--context",
        r#"{"user": "u"}"#,
        "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v,
        json!({"result": {"params": {"x": 1}, "context": {"user": "u"}}})
    );
}

#[test]
fn handler_error_exits_1_with_the_nuropb_class() {
    let o = herald(&[
        "mesh",
        "call",
        "example",
        "fail",
        "--params",
        r#"{"message": "boom", "kind": "handling"}"#,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v,
        json!({"error": "NuropbHandlingError", "description": "boom"})
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("boom"));
}

#[test]
fn bad_user_input_exits_2() {
    for args in [
        vec!["mesh", "call", "example", "add", "--params", "{not json"],
        vec!["mesh", "call", "example", "add", "--params", "[1, 2]"],
        vec!["mesh", "call", "example", "add", "--ttl", "0"],
        vec!["mesh", "call", "bad name!", "add"],
        vec!["mesh", "listen", "a..b"],
        vec!["mesh", "call", "example", "add", "--amqp", "not-a-url"],
    ] {
        let o = herald(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("herald: error:"),
            "{args:?}"
        );
    }
}

#[test]
fn a_ttl_beyond_the_amqp_expiration_range_exits_2() {
    // 2^32 - 1 ms is the portable limit of an AMQP expiration (older RabbitMQ versions
    // close the channel above it; 3.10 only above ten years).
    let o = herald(&["mesh", "call", "example", "add", "--ttl", "5000000000"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("5000000000") && stderr.contains("4294967295"),
        "{stderr}"
    );
    let o = call_add(&["--ttl", "4294967295"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "42");
}

#[test]
fn unknown_service_and_timeout_are_runtime_errors() {
    let o = herald(&["mesh", "call", "nobody", "add"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not available"));
    let o = herald(&[
        "mesh",
        "call",
        "example",
        "slow",
        "--params",
        r#"{"seconds": 5}"#,
        "--ttl",
        "200",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["error"], json!("Timeout"));
}

#[test]
fn describe_lists_the_example_methods() {
    let o = herald(&["mesh", "describe", "example", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["service_name"], json!("example"));
    for m in [
        "add",
        "echo",
        "fail",
        "slow",
        "emit",
        "events_seen",
        "secret_echo",
    ] {
        assert!(v["methods"].get(m).is_some(), "missing {m}");
    }
    assert_eq!(
        v["methods"]["secret_echo"]["requires_encryption"],
        json!(true)
    );
    // A method requires encryption, so (as with nuropb) the description publishes the
    // service's public key, the one callers encrypt to.
    assert_eq!(v["encrypted_methods"], json!(true));
    let key = v["public_key"].as_str().unwrap_or_default();
    assert!(key.contains("BEGIN PUBLIC KEY"), "no public key: {v}");
    let o = herald(&["mesh", "describe", "example"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("secret_echo(text: str)  [requires encryption]"));
}

#[test]
fn encrypted_call_on_the_inprocess_example() {
    let o = herald(&[
        "mesh",
        "call",
        "example",
        "secret_echo",
        "--params",
        r#"{"text": "psst"}"#,
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("requires encryption"));
    let o = herald(&[
        "mesh",
        "call",
        "example",
        "secret_echo",
        "--params",
        r#"{"text": "psst"}"#,
        "--encrypted",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), r#""psst""#);
}

#[test]
fn demo_prints_each_call() {
    let o = herald(&["mesh", "demo", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l["call"].as_str().is_some_and(|c| c.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no line for {prefix}: {lines:?}"))
            .clone()
    };
    assert_eq!(find("example.add")["result"], json!(5));
    assert_eq!(
        find("example.fail")["error"]["error"],
        json!("NuropbHandlingError")
    );
    assert_eq!(
        find("listen interop.#")["result"]["topic"],
        json!("interop.demo")
    );
    assert_eq!(
        find("example.secret_echo(text) unencrypted")["error"]["error"],
        json!("EncryptionRequired")
    );
    assert_eq!(
        find("example.secret_echo(text) encrypted")["result"],
        json!("psst")
    );
    assert_eq!(find("example.slow")["error"]["error"], json!("Timeout"));
    assert_eq!(find("example instance is leader")["result"], json!(true));
}

/// A child process, killed (and reaped) on drop: a failing test leaves none behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// serve-example, call, describe and listen across processes through RabbitMQ.
#[test]
fn across_processes_over_rabbitmq() {
    let Some(url) = herald_pyenv::amqp_url_or_skip() else {
        return;
    };
    let name = format!("cli-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "mesh",
            "serve-example",
            "--name",
            &name,
            "--amqp",
            &url,
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn serve-example");
    let out = child.stdout.take().expect("stdout");
    let server = KillOnDrop(child);
    // Bounded: the line is read on a thread and waited for with a timeout.
    let (tx, ready_line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = ready_line
        .recv_timeout(Duration::from_secs(60))
        .expect("serve-example printed its ready line within 60 s");
    let ready: Value = serde_json::from_str(line.trim()).expect("ready json");
    assert_eq!(ready["service"], json!(name));

    let mut listener = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "mesh",
                "listen",
                "interop.cli.#",
                "--amqp",
                &url,
                "--json",
                "--count",
                "1",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn listen"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let o = loop {
        let o = herald(&[
            "mesh",
            "call",
            &name,
            "add",
            "--params",
            r#"{"a": 2, "b": 3}"#,
            "--amqp",
            &url,
        ]);
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "5");
    let o = herald(&["mesh", "describe", &name, "--amqp", &url, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let d: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(
        d["public_key"]
            .as_str()
            .is_some_and(|k| k.contains("PUBLIC KEY"))
    );
    let o = herald(&[
        "mesh",
        "call",
        &name,
        "secret_echo",
        "--params",
        r#"{"text": "t"}"#,
        "--encrypted",
        "--amqp",
        &url,
    ]);
    assert!(o.status.success(), "{o:?}");
    // The listener subscribes asynchronously: emit until it has seen one event.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = herald(&[
            "mesh",
            "call",
            &name,
            "emit",
            "--params",
            r#"{"topic": "interop.cli.x", "payload": 7}"#,
            "--amqp",
            &url,
        ]);
        assert!(o.status.success(), "{o:?}");
        if listener.0.try_wait().expect("poll listener").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Bounded: a listener that never got its event is killed and the test fails.
    let status = wait_bounded(
        &mut listener,
        Duration::from_secs(10),
        "mesh listen --count 1 (no event on interop.cli.# within 60 s of emitting)",
    );
    let mut stdout = String::new();
    listener
        .0
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)
        .expect("listener output");
    assert!(status.success(), "{status:?}: {stdout}");
    let ev: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(ev["topic"], json!("interop.cli.x"));
    assert_eq!(ev["event"], json!(7));
    drop(server);
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `herald mesh demo | head -1`: once the reader is gone, the next line of output
    // must end the program with status 0, not a panic about a broken pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["mesh", "demo"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herald");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "the demo printed nothing");
    // The reader (and the pipe's only read end) is dropped here.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "herald kept running without a reader"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
