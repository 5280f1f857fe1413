//! `herald up` end to end: the node, the registry and the in-process mesh start on
//! free ports, a message told to the node is printed, a service registered with the
//! registry is announced and discoverable, and SIGTERM stops everything cleanly; the
//! node's flags (`--bind`, `--advertise`, `--system`, the default bind) and TLS (mutual
//! and `--tls-no-client-auth`, with a PKI generated at run time) through the binary.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use herald_registry::UdpRegistryClient;

const WAIT: Duration = Duration::from_secs(60);

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

/// `herald up` on loopback: the node on a port the OS picks, the registry on
/// `registry_port`.
fn herald_up(registry_port: u16) -> Command {
    let mut cmd = herald();
    cmd.args([
        "up",
        "--bind",
        "127.0.0.1:0",
        "--registry-host",
        "127.0.0.1",
        "--registry-port",
        &registry_port.to_string(),
    ]);
    cmd
}

/// A port free for both TCP and UDP on 127.0.0.1 (the registry needs both).
fn free_port_for_tcp_and_udp() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP after 50 tries");
}

/// A running `herald up`, killed on drop, with its stdout lines (and stderr kept for
/// failure messages).
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Up {
    fn start(registry_port: u16) -> Self {
        Self::spawn(herald_up(registry_port).args(["--mesh-service", "calc"]))
    }

    /// `herald up ARGS --no-registry --no-mesh`: the node alone.
    fn node(args: &[&str]) -> Self {
        Self::spawn(
            herald()
                .arg("up")
                .args(args)
                .args(["--no-registry", "--no-mesh"]),
        )
    }

    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald up");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Up {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (bounded) for a line containing `needle`; `None` if herald up exited first.
    fn try_line(&mut self, needle: &str) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "herald up printed no line with {needle:?} within {WAIT:?}; it printed: {:#?}\nstderr: {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// The URI of the `node casty://... ` line.
    fn uri(&mut self) -> String {
        let line = self.expect_line("node casty://");
        line.split_whitespace()
            .nth(1)
            .expect("node line has a URI")
            .to_owned()
    }

    /// Waits (bounded) for a line containing `needle` and returns it.
    fn expect_line(&mut self, needle: &str) -> String {
        match self.try_line(needle) {
            Some(line) => line,
            None => panic!(
                "herald up exited without printing a line with {needle:?}; it printed: {:#?}\nstderr: {}",
                self.seen,
                self.stderr()
            ),
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_node_registry_and_mesh_then_stops_on_sigterm() {
    // The port is free when picked, but another test's socket (a node bound to port 0,
    // a tell's outgoing connection) may take it before herald binds it: retried.
    let mut attempt = 0;
    let (mut up, registry_port) = loop {
        attempt += 1;
        let registry_port = free_port_for_tcp_and_udp();
        let mut up = Up::start(registry_port);
        if up.try_line("registry ").is_some() {
            break (up, registry_port);
        }
        let err = up.stderr();
        assert!(
            attempt < 5 && err.contains("starting the registry"),
            "herald up --registry-port {registry_port} failed: {err}"
        );
    };

    let node_line = up.expect_line("node casty://");
    let uri = node_line
        .split_whitespace()
        .nth(1)
        .expect("node line has a URI")
        .to_owned();
    assert!(uri.starts_with("casty://herald@127.0.0.1:"), "{node_line}");
    let registry_line = up.expect_line("registry ");
    assert!(
        registry_line.contains(&format!(":{registry_port}")),
        "{registry_line}"
    );
    up.expect_line("mesh in-process, service calc");
    up.expect_line("mesh self-check: calc.add(2, 3) = 5");
    up.expect_line("ready");

    // A message told to the node is printed with its path and payload.
    let out = tell(&format!("{uri}/user/inbox"), 7, &[]);
    assert!(
        out.status.success(),
        "tell failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = up.expect_line("message path=/user/inbox");
    assert!(msg.contains("type_hint=demo.Ping"), "{msg}");
    assert!(msg.contains(r#""seq": 7"#), "{msg}");

    // The registry answers rpyc's protocol: register, announce, discover.
    let registry: SocketAddr = ([127, 0, 0, 1], registry_port).into();
    let client = UdpRegistryClient::unicast(registry).with_timeout(Duration::from_secs(5));
    client
        .register(&["UPTEST"], 18861u16)
        .await
        .expect("register");
    let added = up.expect_line("registry added UPTEST");
    assert!(added.contains("18861"), "{added}");
    let found = client.discover("uptest").await.expect("discover");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].port.to_string(), "18861");
    // Names come from whoever can REGISTER: a newline in one cannot forge a line.
    client
        .register(&["UP\nregistry added FORGED"], 18862u16)
        .await
        .expect("register");
    let added = up.expect_line(":18862");
    assert_eq!(
        added,
        r"registry added UP\nREGISTRY ADDED FORGED at 127.0.0.1:18862"
    );

    // SIGTERM: graceful shutdown, exit status 0.
    let pid = up.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    up.expect_line("shutting down");
    let deadline = std::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = up.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "herald up did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "herald up exited with {exit}");
}

#[test]
fn up_refuses_a_taken_registry_port_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = herald_up(port).output().expect("run herald up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("starting the registry") && err.contains(&port.to_string()),
        "{err}"
    );
}

/// Runs `herald ARGS` to completion, bounded: killed and failed after [`WAIT`].
fn run(args: &[&str]) -> Output {
    let mut child = herald()
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `herald tell URI --type-hint demo.Ping --json {"seq": SEQ} EXTRA...`.
fn tell(uri: &str, seq: u32, extra: &[&str]) -> Output {
    let json = format!(r#"{{"seq": {seq}}}"#);
    let mut args = vec![
        "tell",
        uri,
        "--type-hint",
        "demo.Ping",
        "--json",
        &json,
        "--timeout",
        "10",
    ];
    args.extend(extra);
    run(&args)
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn up_prints_the_advertised_uri_and_a_tell_to_it_is_received() {
    // The port is free when picked; another test may take it before herald binds it,
    // so a failed bind is retried on another port.
    let mut attempt = 0;
    let (mut up, port) = loop {
        attempt += 1;
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let advertise = format!("localhost:{port}");
        let mut up = Up::node(&[
            "--bind",
            &bind,
            "--advertise",
            &advertise,
            "--system",
            "shop",
        ]);
        if up.try_line("node casty://").is_some() {
            break (up, port);
        }
        let err = up.stderr();
        assert!(
            attempt < 5 && err.contains("starting the node"),
            "herald up --bind {bind} failed: {err}"
        );
    };
    let uri = up.uri();
    assert_eq!(uri, format!("casty://shop@localhost:{port}"));
    let node_line = up.expect_line("node casty://");
    assert!(
        node_line.contains("mode=native") && node_line.contains("tls=off"),
        "{node_line}"
    );
    up.expect_line("herald up: ready");

    let out = tell(&format!("{uri}/user/inbox"), 11, &[]);
    assert!(out.status.success(), "tell failed: {}", stderr_of(&out));
    let msg = up.expect_line("message path=/user/inbox");
    assert!(msg.contains("type_hint=demo.Ping"), "{msg}");
    assert!(msg.contains(r#""seq": 11"#), "{msg}");

    // A message to another actor system is not this node's: not printed, and the node
    // keeps running (a second tell to the right system arrives after it).
    let _ = tell(
        &format!("casty://other@localhost:{port}/user/inbox"),
        12,
        &[],
    );
    let out = tell(&format!("{uri}/user/second"), 13, &[]);
    assert!(out.status.success(), "tell failed: {}", stderr_of(&out));
    up.expect_line("message path=/user/second");
    assert!(
        !up.seen.iter().any(|l| l.contains(r#""seq": 12"#)),
        "{:#?}",
        up.seen
    );
}

#[test]
fn up_help_documents_the_default_bind_and_every_node_flag() {
    let out = run(&["up", "--help"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:25520]"), "{help}");
    for flag in [
        "--bind",
        "--advertise",
        "--system",
        "--tls-cert",
        "--tls-key",
        "--tls-ca",
        "--tls-no-client-auth",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from --help: {help}"));
        // Every flag line carries an explanation after the flag (and its value name).
        assert!(line.split_whitespace().count() > 3, "{line}");
    }
}

/// A CA, and certificates signed by it, written as PEM files into a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
                .expect("CA");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).expect("write CA");
        Pki { dir, issuer }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `<name>.pem` and `<name>.key` for the given SANs; returns their paths.
    fn cert(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("sign");
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `herald up` on 127.0.0.1 with the node certificate of `pki` (plus `extra` flags).
fn tls_node(pki: &Pki, extra: &[&str]) -> Up {
    let (cert, key) = pki.cert("node", &["127.0.0.1", "localhost"]);
    let ca = pki.ca();
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--tls-ca",
        s(&ca),
    ];
    args.extend(extra);
    Up::node(&args)
}

#[test]
fn up_with_tls_is_mutual_by_default() {
    let pki = Pki::new("mutual");
    let mut up = tls_node(&pki, &[]);
    let node_line = up.expect_line("node casty://");
    assert!(node_line.contains("tls=mutual"), "{node_line}");
    let uri = up.uri();
    up.expect_line("herald up: ready");
    let ca = pki.ca();
    let target = format!("{uri}/user/inbox");

    // No client certificate: refused by the node, exit 1.
    let out = tell(&target, 1, &["--tls-ca", s(&ca)]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not delivered"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Plain TCP to a TLS node: refused as well.
    let out = tell(&target, 2, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));

    // A client certificate signed by the CA: delivered.
    let (cert, key) = pki.cert("client", &["client.test"]);
    let out = tell(
        &target,
        3,
        &[
            "--tls-ca",
            s(&ca),
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
        ],
    );
    assert!(out.status.success(), "tell failed: {}", stderr_of(&out));
    let msg = up.expect_line("message path=/user/inbox");
    assert!(msg.contains(r#""seq": 3"#), "{msg}");
    assert!(
        !up.seen
            .iter()
            .any(|l| l.contains(r#""seq": 1"#) || l.contains(r#""seq": 2"#)),
        "{:#?}",
        up.seen
    );
}

#[test]
fn up_with_tls_no_client_auth_accepts_peers_without_a_certificate() {
    let pki = Pki::new("server-only");
    let mut up = tls_node(&pki, &["--tls-no-client-auth"]);
    let node_line = up.expect_line("node casty://");
    assert!(node_line.contains("tls=no-client-auth"), "{node_line}");
    let uri = up.uri();
    up.expect_line("herald up: ready");
    let target = format!("{uri}/user/inbox");

    // The server is still verified: a CA that did not sign it is refused, exit 1.
    let other = Pki::new("other");
    let out = tell(&target, 1, &["--tls-ca", s(&other.ca())]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not delivered"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Only the CA, no client certificate: delivered.
    let out = tell(&target, 2, &["--tls-ca", s(&pki.ca())]);
    assert!(out.status.success(), "tell failed: {}", stderr_of(&out));
    let msg = up.expect_line("message path=/user/inbox");
    assert!(msg.contains(r#""seq": 2"#), "{msg}");
    assert!(
        !up.seen.iter().any(|l| l.contains(r#""seq": 1"#)),
        "{:#?}",
        up.seen
    );
}

#[test]
fn tls_flag_mistakes_exit_2_with_a_clear_message() {
    let pki = Pki::new("flags");
    let (cert, key) = pki.cert("node", &["127.0.0.1"]);
    let ca = pki.ca();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM").expect("write");
    let missing = pki.dir.path().join("missing.pem");
    let node = ["up", "--bind", "127.0.0.1:0", "--no-registry", "--no-mesh"];
    let with = |extra: &[&str]| -> Vec<String> {
        node.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    let tell_args = |extra: &[&str]| -> Vec<String> {
        [
            "tell",
            "casty://h@127.0.0.1:1/x",
            "--type-hint",
            "a.B",
            "--json",
            "{}",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        // Flags that need each other: clap names the missing ones.
        (
            with(&["--tls-cert", s(&cert)]),
            vec!["--tls-key", "--tls-ca"],
        ),
        (
            with(&["--tls-cert", s(&cert), "--tls-key", s(&key)]),
            vec!["--tls-ca"],
        ),
        (with(&["--tls-key", s(&key)]), vec!["--tls-cert"]),
        (with(&["--tls-ca", s(&ca)]), vec!["--tls-cert", "--tls-key"]),
        (with(&["--tls-no-client-auth"]), vec!["--tls-cert"]),
        (
            tell_args(&["--tls-cert", s(&cert), "--tls-key", s(&key)]),
            vec!["--tls-ca"],
        ),
        (tell_args(&["--tls-key", s(&key)]), vec!["--tls-cert"]),
        // Unreadable or unusable files: the flag and the path, or what was wrong.
        (
            with(&[
                "--tls-cert",
                s(&missing),
                "--tls-key",
                s(&key),
                "--tls-ca",
                s(&ca),
            ]),
            vec!["--tls-cert", "missing.pem"],
        ),
        (
            with(&[
                "--tls-cert",
                s(&cert),
                "--tls-key",
                s(&key),
                "--tls-ca",
                s(&garbage),
            ]),
            vec!["--tls-ca", "no certificate"],
        ),
        (
            tell_args(&["--tls-ca", s(&missing)]),
            vec!["--tls-ca", "missing.pem"],
        ),
    ];
    for (args, needles) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&argv);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{argv:?}: {n:?} not in {err}");
        }
    }
}
