//! Interop with the real rpyc 6.0.2 (venv made by herald-pyenv): rpyc's clients
//! against Herald's server, Herald's clients against rpyc's servers, and a real rpyc
//! `ThreadedServer` registering with Herald's registry and reached through
//! `rpyc.connect_by_service`. Skips (or fails with `HERALD_REQUIRE_PEERS=1`) when the
//! venv cannot be made.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_registry::core::{CoreConfig, RegistryEvent, RemoveReason};
use herald_registry::{Port, RegistryConfig, RegistryServer, TcpRegistryClient, UdpRegistryClient};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Runs the Python script `name` with `args` to completion (bounded by [`WAIT`]).
async fn run_script(python: &Path, name: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(python)
        .arg(script(name))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, out)
        .await
        .expect("python script finished in time")
        .expect("run python")
}

/// Polls `check` up to `tries` times, `every` apart; whether it ever held.
async fn eventually(tries: usize, every: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    false
}

/// Runs `rpyc_call.py` and returns its JSON output.
async fn rpyc_call(python: &Path, mode: &str, host: &str, port: u16, args: &[&str]) -> Json {
    let port = port.to_string();
    let out = run_script(
        python,
        "rpyc_call.py",
        &[&[mode, host, &port], args].concat(),
    )
    .await;
    assert!(
        out.status.success(),
        "rpyc_call {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad output {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// A child process killed when dropped, with its stdout lines.
struct Peer {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Peer {
    fn spawn(python: &Path, script_name: &str, args: &[String]) -> Self {
        let mut child = Command::new(python)
            .arg(script(script_name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python peer");
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("peer output in time")
            .expect("read peer output")
            .expect("peer still running")
    }

    async fn say(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .await
            .expect("write to peer");
        stdin.flush().await.expect("flush");
    }
}

fn server_config(prune: Duration) -> RegistryConfig {
    RegistryConfig {
        core: CoreConfig {
            allow_listing: true,
            prune_timeout: prune,
            ..CoreConfig::default()
        },
        prune_interval: Some(Duration::from_millis(100)),
        ..RegistryConfig::localhost_ephemeral()
    }
}

/// A Herald registry with `config`, and its port.
async fn herald_registry(config: RegistryConfig) -> (RegistryServer, u16) {
    let server = RegistryServer::bind(config).await.expect("bind");
    let port = server.local_addr().port();
    (server, port)
}

async fn rpyc_clients_against_herald(mode: &str) {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::RPYC) else {
        return;
    };
    let (server, port) = herald_registry(server_config(Duration::from_secs(240))).await;
    let call = |args: &'static [&'static str]| rpyc_call(&python, mode, "127.0.0.1", port, args);
    assert_eq!(
        call(&["register", "18812", "foo", "Bar"]).await,
        json!(true)
    );
    assert_eq!(call(&["register", "18813", "FOO"]).await, json!(true));
    assert_eq!(
        call(&["discover", "foo"]).await,
        json!([["127.0.0.1", 18812], ["127.0.0.1", 18813]]),
        "oldest refresh first"
    );
    assert_eq!(
        call(&["rpyc_discover", "bar"]).await,
        json!([["127.0.0.1", 18812]])
    );
    assert_eq!(call(&["discover", "nosuch"]).await, json!([]));
    assert_eq!(
        call(&["rpyc_discover", "nosuch"]).await,
        json!("DiscoveryError")
    );
    assert_eq!(call(&["list"]).await, json!(["FOO", "BAR"]));
    assert_eq!(
        call(&["list_services", "127.0.0.1"]).await,
        json!(["BAR", "FOO"])
    );
    assert_eq!(call(&["list", "10.9.9.9"]).await, json!([]));
    assert_eq!(call(&["unregister", "18813"]).await, json!(null));
    // UNREGISTER is fire-and-forget: poll.
    let gone = eventually(100, Duration::from_millis(50), async || {
        call(&["discover", "FOO"]).await == json!([["127.0.0.1", 18812]])
    })
    .await;
    assert!(gone, "18813 unregistered");
    server.shutdown().await;

    // Listing off (the default): rpyc sees None / ForbiddenError.
    let (server, port) = herald_registry(RegistryConfig::localhost_ephemeral()).await;
    assert_eq!(
        rpyc_call(&python, mode, "127.0.0.1", port, &["list"]).await,
        json!(null)
    );
    assert_eq!(
        rpyc_call(&python, mode, "127.0.0.1", port, &["list_services"]).await,
        json!("ForbiddenError")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc_udp_client_against_herald() {
    rpyc_clients_against_herald("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc_tcp_client_against_herald() {
    rpyc_clients_against_herald("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc_broadcast_client_against_herald_and_pruning() {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::RPYC) else {
        return;
    };
    let (server, port) = herald_registry(RegistryConfig {
        host: "0.0.0.0".parse().expect("ip"),
        ..server_config(Duration::from_secs(1))
    })
    .await;
    let mut events = server.events();
    let bcast = |args| rpyc_call(&python, "bcast", "127.255.255.255", port, args);
    assert_eq!(bcast(&["register", "4000", "bcast"]).await, json!(true));
    assert_eq!(
        bcast(&["discover", "BCAST"]).await,
        json!([["127.0.0.1", 4000]])
    );
    // Without keep-alive the timer prunes it; rpyc then sees it gone from LIST too.
    let removed = tokio::time::timeout(WAIT, async {
        loop {
            if let RegistryEvent::Removed { reason, .. } = events.recv().await.expect("event") {
                return reason;
            }
        }
    })
    .await
    .expect("pruned in time");
    assert_eq!(removed, RemoveReason::Pruned);
    assert_eq!(
        rpyc_call(&python, "udp", "127.0.0.1", port, &["list"]).await,
        json!([])
    );
    assert_eq!(
        rpyc_call(&python, "tcp", "127.0.0.1", port, &["discover", "bcast"]).await,
        json!([])
    );
    server.shutdown().await;
}

/// A port free for UDP and TCP (the OS picks it; released before use).
async fn free_port() -> u16 {
    let (probe, port) = herald_registry(RegistryConfig::localhost_ephemeral()).await;
    probe.shutdown().await;
    port
}

async fn herald_client_against_rpyc_server(mode: &str) {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::RPYC) else {
        return;
    };
    let port = free_port().await;
    let mut peer = Peer::spawn(
        &python,
        "rpyc_server.py",
        &[mode.into(), port.to_string(), "240".into(), "1".into()],
    );
    assert_eq!(peer.line().await, "READY");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let client: herald_registry::RegistryClient = if mode == "udp" {
        UdpRegistryClient::unicast(addr).into()
    } else {
        TcpRegistryClient::new(addr).into()
    };
    // The server starts listening just after READY: retry the first call.
    let ok = eventually(50, Duration::from_millis(100), async || {
        client.register(&["herald", "Other"], 9001u16).await.is_ok()
    })
    .await;
    assert!(ok, "rpyc's {mode} server answered REGISTER");
    client
        .register(&["HERALD"], Port::Path("/tmp/herald.sock".into()))
        .await
        .expect("str port");
    let found = client.discover("herald").await.expect("query");
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["127.0.0.1:9001", "127.0.0.1:/tmp/herald.sock"]);
    assert_eq!(
        client.list(None).await.expect("list"),
        Some(vec!["HERALD".to_string(), "OTHER".to_string()])
    );
    assert_eq!(
        client.list(Some("10.1.1.1")).await.expect("list"),
        Some(vec![])
    );
    client.unregister(9001u16).await.expect("unregister");
    let gone = eventually(100, Duration::from_millis(50), async || {
        client.discover("other").await.expect("query").is_empty()
    })
    .await;
    assert!(gone, "rpyc's server processed Herald's UNREGISTER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_udp_client_against_rpyc_server() {
    herald_client_against_rpyc_server("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_tcp_client_against_rpyc_server() {
    herald_client_against_rpyc_server("tcp").await;
}

async fn threaded_server_with_herald_registry(mode: &str) {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::RPYC) else {
        return;
    };
    let (server, port) = herald_registry(server_config(Duration::from_secs(240))).await;
    let mut events = server.events();
    let mut service = Peer::spawn(&python, "rpyc_service.py", &[mode.into(), port.to_string()]);
    let line = service.line().await;
    let service_port: i64 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected peer output {line:?}"));
    let mut added = Vec::new();
    tokio::time::timeout(WAIT, async {
        while added.len() < 2 {
            if let RegistryEvent::Added { name, addr } = events.recv().await.expect("event") {
                assert_eq!(addr.port, Port::Num(service_port));
                assert_eq!(addr.host, "127.0.0.1");
                added.push(name);
            }
        }
    })
    .await
    .expect("ThreadedServer registered");
    added.sort();
    assert_eq!(added, ["ECHO", "PARROT"]);

    let out = run_script(
        &python,
        "rpyc_connect.py",
        &[mode, &port.to_string(), "parrot", "hello from herald"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"hello from herald\""
    );

    service.say("close").await;
    assert_eq!(service.line().await, "CLOSED");
    let mut removed = Vec::new();
    tokio::time::timeout(WAIT, async {
        while removed.len() < 2 {
            if let RegistryEvent::Removed { name, reason, .. } = events.recv().await.expect("event")
            {
                assert_eq!(reason, RemoveReason::Unregistered);
                removed.push(name);
            }
        }
    })
    .await
    .expect("ThreadedServer unregistered on close");
    removed.sort();
    assert_eq!(removed, ["ECHO", "PARROT"]);
    assert!(server.entries().is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc_threaded_server_udp_registrar_with_herald() {
    threaded_server_with_herald_registry("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpyc_threaded_server_tcp_registrar_with_herald() {
    threaded_server_with_herald_registry("tcp").await;
}
