//! `herald tell` against a Herald node running in the test process.

use std::process::Command;
use std::time::Duration;

use herald_transport::MessageTransport;
use herald_transport::remote::RemoteTransport;
use herald_transport::tcp::{TcpConfig, WireMode};

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

async fn node(mode: WireMode) -> RemoteTransport {
    RemoteTransport::builder("herald", TcpConfig::loopback().with_mode(mode))
        .start()
        .await
        .expect("node starts")
}

async fn tell(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || herald().args(args).output().expect("run herald"))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tell_delivers_one_casty_json_message_and_exits_0() {
    for (mode, flags) in [
        (WireMode::native("herald"), vec![]),
        (WireMode::CastyV1, vec!["--casty-compat".to_string()]),
    ] {
        let n = node(mode).await;
        let mut inbox = n.local().register_unbounded("/inbox").expect("register");
        let mut args = vec![
            "tell".to_string(),
            n.address_of("/inbox"),
            "--type-hint".into(),
            "casty_vec_msgs.Ping".into(),
            "--json".into(),
            r#"{"value": 42}"#.into(),
        ];
        args.extend(flags.clone());
        let out = tell(args).await;
        assert!(
            out.status.success(),
            "{flags:?}: exit {:?}, stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let got = tokio::time::timeout(Duration::from_secs(15), inbox.recv())
            .await
            .expect("message in time")
            .expect("open");
        assert_eq!(got.type_hint, "casty_vec_msgs.Ping");
        assert_eq!(
            got.payload.as_ref(),
            br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#
        );
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tell_bad_input_exits_2_and_unreachable_exits_1() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "tell",
                "casty://h@127.0.0.1:1/x",
                "--type-hint",
                "a.B",
                "--json",
                "{nope",
            ],
            "not valid JSON",
        ),
        (
            vec!["tell", "http://x/y", "--type-hint", "a.B", "--json", "{}"],
            "casty://",
        ),
        (
            vec![
                "tell",
                "casty://sys/x",
                "--type-hint",
                "a.B",
                "--json",
                "{}",
            ],
            "no host:port",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let out = tell(args.clone()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Nothing listens there: a clear failure, exit 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = tell(vec![
        "tell".into(),
        format!("casty://h@127.0.0.1:{port}/x"),
        "--type-hint".into(),
        "a.B".into(),
        "--json".into(),
        "{}".into(),
        "--timeout".into(),
        "5".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not delivered"), "{stderr}");
}

/// Out-of-range, negative and NaN timeouts are refused before anything is dialed: exit 2
/// and a message naming the flag and the value (`1e20` used to panic in
/// `Duration::from_secs_f64`).
#[test]
fn tell_refuses_bad_timeouts_with_exit_2() {
    for (value, why) in [
        ("1e20", "more than 31536000 seconds"),
        ("-1", "more than 0 seconds"),
        ("nan", "not a number"),
        ("inf", "more than 31536000 seconds"),
        ("0", "more than 0 seconds"),
        ("ten", "not a number"),
    ] {
        let out = herald()
            .args([
                "tell",
                "casty://h@127.0.0.1:1/x",
                "--type-hint",
                "a.B",
                "--json",
                "{}",
                "--timeout",
                value,
            ])
            .output()
            .expect("run herald");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--timeout {value}: {stderr}");
        assert!(
            stderr.contains(&format!("'{value}'")) && stderr.contains("--timeout"),
            "--timeout {value}: {stderr}"
        );
        assert!(stderr.contains(why), "--timeout {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "--timeout {value}: {stderr}");
    }
}

/// `herald tell --casty-compat` to a real casty 0.21.0 node (json serializer): casty
/// decodes the tagged JSON payload into its dataclass.
#[test]
fn tell_reaches_a_real_casty_node() {
    use std::io::{BufRead, BufReader};
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::CASTY) else {
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../herald-transport/tests/py/casty_peer.py");
    let mut child = Command::new(python)
        .arg(script)
        .env("PYTHONPATH", herald_pyenv::shared_dir().join("peers"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start casty");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = Duration::from_secs(30);
    let port = loop {
        let line = rx.recv_timeout(wait).expect("casty prints its port");
        if let Some(p) = line.strip_prefix("PORT ") {
            break p.trim().to_string();
        }
    };
    let out = herald()
        .args([
            "tell",
            &format!("casty://casty@127.0.0.1:{port}/sink"),
            "--casty-compat",
            "--type-hint",
            "casty_vec_msgs.Ping",
            "--json",
            r#"{"value": 5}"#,
        ])
        .output()
        .expect("run herald");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = loop {
        let line = rx.recv_timeout(wait).expect("casty received the message");
        if line.starts_with("GOT /sink") {
            break line;
        }
    };
    assert!(got.contains("Ping(value=5)"), "{got}");
}
