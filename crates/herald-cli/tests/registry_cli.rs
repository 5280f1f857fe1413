//! `herald registry ...` end to end: a `serve` process and client subcommands, JSON
//! output, exit codes (2 for bad input, 1 for failures).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env("RUST_LOG", "warn");
    c
}

/// A running `herald registry serve`, killed on drop, with its stdout lines.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl Serve {
    fn start(extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1", extra)
    }

    /// `herald registry serve ARGS...` with its stdout read line by line (port unknown).
    fn spawn(args: &[&str]) -> Self {
        let mut child = herald()
            .args(["registry", "serve"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald registry serve");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            port: 0,
        }
    }

    fn start_on(host: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--host", host, "--port", "0", "--json"];
        args.extend(extra);
        let mut serve = Self::spawn(&args);
        let first = serve.next_json();
        assert_eq!(first["event"], "listening", "{first}");
        if extra.contains(&"--tcp-only") {
            assert!(first["udp"].is_null(), "{first}");
        }
        let bound = first["udp"]
            .as_str()
            .or_else(|| first["tcp"].as_str())
            .expect("a listening address");
        serve.port = bound
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let udp = first["udp"].as_str().unwrap_or(bound);
        if extra.contains(&"--udp-only") {
            assert!(first["tcp"].is_null(), "{first}");
        } else {
            assert_eq!(
                first["tcp"].as_str(),
                Some(udp),
                "same port for UDP and TCP"
            );
        }
        serve
    }

    fn next_json(&self) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .expect("serve printed a line in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A running `herald registry serve --host 127.0.0.1 --port 0` printing text (no
/// `--json`), killed on drop.
fn serve_text(extra: &[&str]) -> Serve {
    let mut args = vec!["--host", "127.0.0.1", "--port", "0"];
    args.extend(extra);
    let mut serve = Serve::spawn(&args);
    // "registry listening on udp 127.0.0.1:P tcp 127.0.0.1:P (listing ...)"
    let first = serve.next_line();
    serve.port = first
        .split_whitespace()
        .skip_while(|w| *w != "udp")
        .nth(1)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no udp address in {first:?}"));
    serve
}

impl Serve {
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("serve printed a line in time")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> Output {
    let mut child = herald()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    // Bounded: poll for exit.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json_out(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn serve_register_discover_list_unregister_over_udp_and_tcp() {
    let serve = Serve::start(&["--listing"]);
    let reg = serve.registry();
    for (transport, extra) in [("udp", None), ("tcp", Some("--tcp"))] {
        let with = |args: &[&str]| {
            let mut v: Vec<&str> = args.to_vec();
            v.extend(["--registry", &reg, "--json"]);
            v.extend(extra);
            json_out(&run(&v))
        };
        let port = if transport == "udp" { "7001" } else { "7002" };
        let r = with(&["registry", "register", "calc", "Math", "--port", port]);
        assert_eq!(r["registered"], true);
        let added = [serve.next_json(), serve.next_json()];
        assert!(
            added
                .iter()
                .all(|e| e["event"] == "added" && e["host"] == "127.0.0.1")
        );
        let found = with(&["registry", "discover", "CALC"]);
        assert!(
            found
                .as_array()
                .expect("array")
                .iter()
                .any(|a| a["port"].as_u64() == port.parse::<u64>().ok()),
            "{found}"
        );
        let names = with(&["registry", "list"]);
        assert_eq!(names, serde_json::json!(["CALC", "MATH"]));
        let filtered = with(&["registry", "list", "--filter", "10.0.0.1"]);
        assert_eq!(filtered, serde_json::json!([]));
        let u = with(&["registry", "unregister", "--port", port]);
        assert_eq!(u["unregistered"].to_string(), port);
        let removed = [serve.next_json(), serve.next_json()];
        assert!(
            removed
                .iter()
                .all(|e| e["event"] == "removed" && e["reason"] == "unregistered"),
            "{removed:?}"
        );
    }
}

#[test]
fn register_keepalive_unregisters_on_interrupt() {
    let serve = Serve::start(&[]);
    let mut child = herald()
        .args([
            "registry",
            "register",
            "keeper",
            "--port",
            "7100",
            "--keepalive",
            "--interval",
            "0.2",
        ])
        .args(["--registry", &serve.registry(), "--tcp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let added = serve.next_json();
    assert_eq!(
        (added["event"].as_str(), added["name"].as_str()),
        (Some("added"), Some("KEEPER"))
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let removed = serve.next_json();
    assert_eq!(removed["event"], "removed");
    assert_eq!(removed["reason"], "unregistered");
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "register --keepalive exits after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn listing_off_is_a_clear_failure() {
    let serve = Serve::start(&[]);
    let out = run(&["registry", "list", "--registry", &serve.registry()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not allow listing"), "{err}");
}

/// A loopback TCP address where nothing listens.
fn closed_tcp_addr() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    closed.local_addr().expect("addr").to_string()
}

/// `registry discover x --tcp --json` against `addr`.
fn discover_json_at(addr: &str) -> [&str; 7] {
    [
        "registry",
        "discover",
        "x",
        "--tcp",
        "--json",
        "--registry",
        addr,
    ]
}

/// With `--json`, a failure is a JSON line on stdout naming its kind, beside the
/// message on stderr and the same exit status; the OS error in the message is named
/// once, not once per level of the error chain.
#[test]
fn json_failures_are_json_and_name_the_os_error_once() {
    let serve = Serve::start(&[]);
    let out = run(&[
        "registry",
        "list",
        "--json",
        "--registry",
        &serve.registry(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON {:?}: {e}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["error"], "Error", "{v}");
    let text = v["description"].as_str().unwrap_or_default();
    assert!(text.contains("does not allow listing"), "{v}");

    // A TCP registry address where nothing listens.
    let addr = closed_tcp_addr();
    let out = run(&discover_json_at(&addr));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON {:?}: {e}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["error"], "Io", "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the OS error named once: {err}"
    );
    assert!(err.contains(&addr), "{err}");

    // Bad input: exit 2, kind BadInput.
    let out = run(&[
        "registry",
        "discover",
        "x",
        "--json",
        "--registry",
        "no:such:port",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["error"], "BadInput", "{v}");
}

/// A failure's JSON line is not the output a reader may stop reading: with stdout
/// already closed, a failed `--json` command still exits 1 and says why on stderr
/// (a closed stdout ends ordinary output with status 0).
#[test]
fn a_json_failure_with_stdout_closed_still_exits_1() {
    let addr = closed_tcp_addr();
    let mut child = herald()
        .args(discover_json_at(&addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    // The pipe's only read end goes away before anything is written.
    drop(child.stdout.take());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "herald did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("herald: error:"), "{err}");
}

#[test]
fn silent_registry_times_out_with_exit_1() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let out = run(&[
        "registry",
        "discover",
        "x",
        "--registry",
        &addr,
        "--timeout",
        "0.3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply to QUERY"));
}

#[test]
fn bad_input_exits_2_and_names_the_value() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["registry", "serve", "--allow", "10.0.0.0/99"],
            "10.0.0.0/99",
        ),
        (&["registry", "serve", "--prune-timeout", "-1"], "-1"),
        (&["registry", "register", "a", "--port", "eighty"], "eighty"),
        (
            &[
                "registry",
                "discover",
                "a",
                "--registry",
                "127.0.0.1:notaport",
            ],
            "notaport",
        ),
        (&["registry", "unregister", "--port", "70000"], "70000"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Every seconds flag goes through one parser: out-of-range, negative and NaN values
/// exit 2 naming the flag and the value, never a panic (`--timeout 1e19` used to
/// overflow `Instant + timeout` in the client).
#[test]
fn bad_seconds_and_rates_exit_2_naming_flag_and_value() {
    let mut cases: Vec<(Vec<&str>, &str, &str)> = Vec::new();
    for value in ["1e20", "1e19", "-1", "nan", "0"] {
        cases.push((
            vec!["registry", "discover", "a", "--registry", "127.0.0.1:9"],
            "--timeout",
            value,
        ));
        cases.push((
            vec!["registry", "register", "a", "--port", "7000"],
            "--interval",
            value,
        ));
        cases.push((
            vec!["registry", "serve", "--port", "0"],
            "--prune-timeout",
            value,
        ));
    }
    for value in ["1e308", "-2", "nan", "0"] {
        cases.push((
            vec!["registry", "serve", "--port", "0"],
            "--rate-limit",
            value,
        ));
    }
    for (args, flag, value) in cases {
        let mut args = args;
        args.extend([flag, value]);
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("'{value}'")) && err.contains(flag),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let mut serve = Serve::start(&["--udp-only"]);
    let status = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let stopped = serve.next_json();
    assert_eq!(stopped["event"], "stopped");
    assert!(stopped["stats"]["requests"].is_u64(), "{stopped}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(code) = serve.child.try_wait().expect("wait") {
            assert!(code.success(), "{code:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve exits after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `herald registry CMD... --registry REGISTRY EXTRA...`.
fn client(cmd: &[&str], registry: &str, extra: &[&str]) -> Output {
    let mut args = vec!["registry"];
    args.extend_from_slice(cmd);
    args.extend(["--registry", registry]);
    args.extend_from_slice(extra);
    run(&args)
}

/// Registers CALC at `port` through `registry` and checks the JSON answer.
fn register_calc(registry: &str, port: &str, extra: &[&str]) {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(extra);
    let r = json_out(&client(
        &["register", "calc", "--port", port],
        registry,
        &with_json,
    ));
    assert_eq!(r["registered"], true, "{r}");
}

/// Exit 1 and rpyc's "no reply" after a short timeout: the registry stayed silent.
fn assert_no_reply(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn tcp_only_and_udp_only_serve_just_that_transport() {
    let serve = Serve::start(&["--tcp-only"]);
    let reg = serve.registry();
    register_calc(&reg, "7101", &["--tcp"]);
    let found = json_out(&client(&["discover", "calc"], &reg, &["--tcp", "--json"]));
    assert_eq!(found[0]["port"], 7101, "{found}");
    // Nothing answers UDP on that port number.
    let out = client(&["discover", "calc"], &reg, &["--timeout", "0.5"]);
    assert_no_reply(&out, "UDP QUERY to a --tcp-only registry");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply to QUERY"));
    drop(serve);

    let serve = Serve::start(&["--udp-only"]);
    let reg = serve.registry();
    register_calc(&reg, "7102", &[]);
    let out = client(&["discover", "calc"], &reg, &["--tcp", "--timeout", "2"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "TCP QUERY to a --udp-only registry"
    );
}

#[test]
fn allow_list_decides_who_may_register() {
    // 127.0.0.1 is outside the allowed network: its REGISTER gets no reply and no entry.
    let serve = Serve::start(&["--allow", "10.0.0.0/8", "--allow", "192.168.0.0/16"]);
    let reg = serve.registry();
    let out = client(
        &["register", "calc", "--port", "7201"],
        &reg,
        &["--timeout", "0.5"],
    );
    assert_no_reply(&out, "REGISTER from outside --allow");
    // QUERY is not restricted by --allow, and the table stayed empty.
    let found = json_out(&client(&["discover", "calc"], &reg, &["--json"]));
    assert_eq!(found, serde_json::json!([]));
    drop(serve);

    let serve = Serve::start(&["--allow", "127.0.0.0/8"]);
    register_calc(&serve.registry(), "7202", &[]);
    let added = serve.next_json();
    assert_eq!(added["event"], "added", "{added}");
}

#[test]
fn broadcast_register_reaches_a_registry_on_the_wildcard_address() {
    // --host 0.0.0.0 receives datagrams sent to the loopback broadcast address (never
    // 255.255.255.255 in tests); a registry address with a 255 component is broadcast,
    // as in rpyc.
    let serve = Serve::start_on("0.0.0.0", &[]);
    let port = serve.port.to_string();
    register_calc(&format!("127.255.255.255:{port}"), "7301", &[]);
    let added = serve.next_json();
    assert_eq!(added["event"], "added", "{added}");
    assert_eq!(added["host"], "127.0.0.1", "{added}");
    let unicast = format!("127.0.0.1:{port}");
    let found = json_out(&client(&["discover", "calc"], &unicast, &["--json"]));
    assert_eq!(found[0]["port"], 7301, "{found}");
}

/// Names and str ports come from whoever can REGISTER: in text mode a newline or an
/// escape sequence in them is printed escaped, so each event stays one line and
/// nothing reaches the terminal (serve, discover and list).
#[test]
fn text_output_escapes_control_characters_from_the_network() {
    let serve = serve_text(&["--listing"]);
    let reg = serve.registry();
    let name = "A\nremoved B \u{1b}[2J";
    let port = "/tmp/s\nadded C";
    let out = client(&["register", name, "--port", port], &reg, &["--tcp"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        serve.next_line(),
        r"added A\nREMOVED B \u{1b}[2J 127.0.0.1:/tmp/s\nadded C"
    );
    let out = client(&["discover", name], &reg, &["--tcp"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "127.0.0.1:/tmp/s\\nadded C\n"
    );
    let out = client(&["list"], &reg, &["--tcp"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "A\\nREMOVED B \\u{1b}[2J\n"
    );
    let out = client(&["unregister", "--port", port], &reg, &["--tcp"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        serve.next_line(),
        r"removed A\nREMOVED B \u{1b}[2J 127.0.0.1:/tmp/s\nadded C (unregistered)"
    );
}

/// A child process, killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With --keepalive a first REGISTER that fails (nothing listens yet) is reported and
/// retried: once a registry comes up on that port the name becomes discoverable.
#[test]
fn register_keepalive_retries_until_the_registry_comes_up() {
    // A port free for TCP when picked, released for the registry started later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let reg = format!("127.0.0.1:{port}");
    let mut keeper = Kill(
        herald()
            .args([
                "registry",
                "register",
                "early",
                "--port",
                "7400",
                "--keepalive",
            ])
            .args(["--registry", &reg, "--tcp", "--timeout", "0.5", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn register --keepalive"),
    );
    let (tx, stdout_lines) = mpsc::channel();
    let stdout = keeper.0.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (tx, stderr_lines) = mpsc::channel();
    let stderr = keeper.0.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = stderr_lines
        .recv_timeout(WAIT)
        .expect("the failed first REGISTER is reported on stderr");
    assert!(
        first.contains(&format!("registering with {reg} failed")) && first.contains("retrying"),
        "{first:?}"
    );
    assert!(
        keeper.0.try_wait().expect("try_wait").is_none(),
        "register --keepalive exited after the first failure"
    );

    let mut serve = Kill(
        herald()
            .args(["registry", "serve", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--tcp-only"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn herald registry serve"),
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            serve.0.try_wait().expect("try_wait").is_none(),
            "serve on port {port} exited (port taken meanwhile?)"
        );
        let out = client(&["discover", "early"], &reg, &["--tcp", "--json"]);
        if out.status.success()
            && json_out(&out)
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["port"] == 7400))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "EARLY never became discoverable: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let registered = stdout_lines
        .recv_timeout(WAIT)
        .expect("\"registered\" printed once a REGISTER succeeded");
    let registered: serde_json::Value = serde_json::from_str(&registered).expect("JSON");
    assert_eq!(registered["registered"], true, "{registered}");
}

/// Events lost because serve's output fell behind (nobody reads its stdout while the
/// table changes) are reported on stdout, in --json too, not only in a log line, with
/// the exact number lost: the events printed and the events reported missed add up to
/// the events the table raised.
#[test]
fn serve_reports_events_lost_to_a_stalled_output() {
    use herald_registry::proto::{self, Command as Request, Port, encode_request};
    use std::io::{Read, Write};

    let mut serve = Kill(
        herald()
            .args(["registry", "serve", "--host", "127.0.0.1", "--port", "0"])
            .args(["--tcp-only", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn herald registry serve"),
    );
    let mut stdout = BufReader::new(serve.0.stdout.take().expect("piped"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("listening line");
    let first: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    let reg: std::net::SocketAddr = first["tcp"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("tcp address");
    // Nobody reads stdout now: once the pipe is full (about 1 000 lines of 60 bytes),
    // serve's output stalls, and the event channel (1024 updates) fills behind it.
    // Each REGISTER of one new name is one update of one event.
    const N: u64 = 4_000;
    for i in 0..N {
        let mut conn = std::net::TcpStream::connect(reg).expect("connect");
        let request = encode_request(&Request::Register {
            aliases: vec![format!("s{i}")],
            port: Port::Num(7500),
        });
        conn.write_all(&request).expect("send REGISTER");
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).expect("read the reply");
        assert_eq!(reply, proto::REPLY_OK, "REGISTER {i}");
    }
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let (mut printed, mut missed, mut lags) = (0, 0, 0);
    while printed + missed < N {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!("output ran dry after {printed} events and {missed} reported missed")
        });
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        match v["event"].as_str() {
            Some("added") => printed += 1,
            Some("lagged") => {
                missed += v["missed"].as_u64().filter(|&n| n > 0).expect("missed > 0");
                lags += 1;
            }
            _ => panic!("unexpected line {line}"),
        }
    }
    assert!(lags > 0, "no \"lagged\" line: every event was printed");
    assert_eq!(printed + missed, N, "{lags} lagged lines");
}
