//! `herald up` end to end: the node, the registry and the in-process mesh start on
//! free ports, a message told to the node is printed, a service registered with the
//! registry is announced and discoverable, and SIGTERM stops everything cleanly.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(registry_port: u16) -> Self {
        let mut child = herald_up(registry_port)
            .args(["--mesh-service", "calc"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        Up {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `needle` and returns it.
    fn expect_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "herald up never printed a line with {needle:?}; it printed: {:#?}",
                    self.seen
                ),
            }
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
    let registry_port = free_port_for_tcp_and_udp();
    let mut up = Up::start(registry_port);

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
    let out = herald()
        .args([
            "tell",
            &format!("{uri}/user/inbox"),
            "--type-hint",
            "demo.Ping",
            "--json",
            r#"{"seq": 7}"#,
        ])
        .output()
        .expect("run herald tell");
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
