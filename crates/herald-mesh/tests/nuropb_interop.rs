//! Interop with the real Python nuropb 0.1.8 through one RabbitMQ, in both directions:
//!
//! * a Herald client calls a Python nuropb service (`tests/py/nuropb_service.py`):
//!   results, context echo, both error kinds (and nuropb's duplicate error replies),
//!   unknown service, the client-side deadline, describe and public key, an encrypted
//!   call, and events both ways;
//! * a Python nuropb `RMQAPI` client (`tests/py/nuropb_client.py`) calls Herald's
//!   `ExampleService`: results, errors (class and description), describe, an encrypted
//!   call, `requires_encryption` enforced, commands and events both ways.
//!
//! Needs `HERALD_AMQP_URL` and the nuropb venv (created on first use); skipped with the
//! reason printed otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use herald_mesh::amqp::{AmqpBackend, AmqpConnection, AmqpOptions};
use herald_mesh::crypto::{NuropbCipher, ServiceKey};
use herald_mesh::example::ExampleService;
use herald_mesh::message::{dead_letter_queue, service_queue};
use herald_mesh::{Mesh, MeshConfig, MeshError, RequestOptions};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A Python process speaking a line protocol; killed when dropped.
struct PyProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std_mpsc::Receiver<String>,
    what: String,
}

impl PyProc {
    fn spawn(python: &Path, script: &str, args: &[&str]) -> PyProc {
        let mut child = Command::new(python)
            .arg(py_dir().join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PyProc {
            child,
            stdin,
            lines,
            what: script.to_owned(),
        }
    }

    /// The next stdout line, waiting at most [`WAIT`] (on a blocking thread).
    async fn line(&mut self) -> String {
        let rx = &self.lines;
        let what = self.what.clone();
        tokio::task::block_in_place(|| {
            rx.recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("no output from {what} within {WAIT:?}: {e}"))
        })
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write to python");
        stdin.write_all(b"\n").expect("write to python");
        stdin.flush().expect("flush");
    }

    /// Sends one JSON command and returns the JSON answer.
    async fn ask(&mut self, cmd: Value) -> Value {
        self.send(&cmd.to_string());
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }
}

impl Drop for PyProc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // Give it a moment to disconnect cleanly, then make sure it is gone.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RSA key made by Python `cryptography` (PKCS#8 PEM file).
fn python_key(python: &Path, dir: &Path) -> PathBuf {
    let pem = dir.join("service.pem");
    let out = Command::new(python)
        .arg(py_dir().join("crypto_peer.py"))
        .arg("keygen")
        .arg(&pem)
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "keygen failed: {out:?}");
    pem
}

fn peers() -> Option<(PathBuf, String)> {
    let url = herald_pyenv::amqp_url_or_skip()?;
    let python = herald_pyenv::peer_or_skip(&herald_pyenv::NUROPB)?;
    Some((python, url))
}

async fn cleanup(url: &str, queues: &[String]) {
    let conn = AmqpConnection::open(url, "herald-test-cleanup", AmqpOptions::default())
        .await
        .expect("cleanup connection");
    for q in queues {
        let _ = conn.delete_queue(q).await;
    }
    let _ = herald_mesh::Connection::close(&conn).await;
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the real nuropb example service (`tests/py/nuropb_service.py`) under a unique
/// name starting with `prefix`, its key in `dir`, and waits until it is ready.
async fn python_service(python: &Path, url: &str, dir: &Path, prefix: &str) -> (String, PyProc) {
    let svc = unique(prefix);
    let service = python_service_named(python, url, dir, &svc).await;
    (svc, service)
}

/// Starts the real nuropb example service as `svc` (after nuropb's own setup step,
/// `configure_nuropb_rmq`), its key in `dir`, and waits until it is ready.
async fn python_service_named(python: &Path, url: &str, dir: &Path, svc: &str) -> PyProc {
    let pem = python_key(python, dir);
    let mut service = PyProc::spawn(
        python,
        "nuropb_service.py",
        &[url, svc, pem.to_str().expect("utf8 path"), "interop.#"],
    );
    let ready = service.line().await;
    assert!(ready.starts_with("READY "), "{ready}");
    service
}

/// An encrypted call of `svc.secret_echo(text)` returns `text`.
async fn encrypted_echo(client: &Mesh, svc: &str, text: &str) {
    let secret = client
        .request_with(
            svc,
            "secret_echo",
            json!({ "text": text }),
            RequestOptions {
                encrypted: true,
                timeout: Some(WAIT),
                ..RequestOptions::default()
            },
        )
        .await
        .expect("encrypted call");
    assert_eq!(secret, json!(text));
}

/// `add` and `echo` answer (the context `{"user": user}` reaches the handler) and
/// `fail` with kind `handling` is nuropb's handling error.
async fn results_and_handling_error(client: &Mesh, svc: &str, user: &str) {
    let call = |method: &'static str, params: Value| call_as(client, svc, user, method, params);
    assert_eq!(
        call("add", json!({"a": 2, "b": 3})).await.expect("add"),
        json!(5)
    );
    assert_eq!(
        call("echo", json!({"x": [1, "two"]})).await.expect("echo"),
        json!({"params": {"x": [1, "two"]}, "context": {"user": user}})
    );
    let err = call("fail", json!({"message": "boom", "kind": "handling"}))
        .await
        .expect_err("fail");
    assert!(
        matches!(&err, MeshError::Handling { description, .. } if description == "boom"),
        "{err:?}"
    );
}

/// `client` calls `svc.method(params)` with the context `{"user": user}`.
async fn call_as(
    client: &Mesh,
    svc: &str,
    user: &str,
    method: &str,
    params: Value,
) -> Result<Value, MeshError> {
    client
        .request(
            svc,
            method,
            params,
            json!({ "user": user }),
            Some(WAIT),
            None,
        )
        .await
}

/// A request to a service nobody serves is `NotFound`; a call to `svc`'s `slow` method
/// past its 300 ms deadline is `Timeout`.
async fn not_found_and_deadline(client: &Mesh, svc: &str) {
    let err = client
        .request(
            &unique("nobody"),
            "x",
            json!({}),
            json!({}),
            Some(WAIT),
            None,
        )
        .await
        .expect_err("not routed");
    assert!(matches!(err, MeshError::NotFound { .. }), "{err:?}");
    let err = client
        .request_with(
            svc,
            "slow",
            json!({"seconds": 2.0}),
            RequestOptions {
                timeout: Some(Duration::from_millis(300)),
                ..RequestOptions::default()
            },
        )
        .await
        .expect_err("deadline");
    assert!(matches!(err, MeshError::Timeout { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_client_calls_python_nuropb_service() {
    let Some((python, url)) = peers() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (svc, service) = python_service(&python, &url, dir.path(), "py-svc").await;

    let backend = Arc::new(AmqpBackend::new(&url).expect("url"));
    let client = Mesh::connect(
        backend.clone(),
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await
    .expect("herald client connects");
    let call =
        |method: &'static str, params: Value| call_as(&client, &svc, "herald", method, params);

    // Results, the context reaching the handler, nuropb's handling error, then a plain
    // Python exception wrapped by nuropb.
    results_and_handling_error(&client, &svc, "herald").await;
    let err = call("fail", json!({"message": "kaput", "kind": "value"}))
        .await
        .expect_err("fail");
    match &err {
        MeshError::Remote { error, description } => {
            assert_eq!(error, "NuropbException");
            assert!(description.contains("ValueError: kaput"), "{description}");
        }
        other => panic!("expected a remote NuropbException, got {other:?}"),
    }
    // nuropb answers every error twice; Herald drops the copy as unpaired.
    wait_for("nuropb's duplicate error replies to be dropped", || {
        let n = client.unpaired_replies();
        async move { n >= 2 }
    })
    .await;
    // Still fine after the duplicates.
    assert_eq!(
        call("add", json!({"a": 1, "b": 1})).await.expect("add"),
        json!(2)
    );

    // Unknown method and unknown service.
    let err = call("no_such_method", json!({}))
        .await
        .expect_err("unknown");
    assert!(
        matches!(&err, MeshError::Handling { description, .. } if description.contains("Unknown method")),
        "{err:?}"
    );
    // Not routed, and the client-side deadline (nuropb's own client would wait forever).
    not_found_and_deadline(&client, &svc).await;

    // Describe, public key and an encrypted call.
    let info = client
        .describe_service(&svc, false)
        .await
        .expect("describe");
    assert_eq!(info.service_name, svc);
    assert_eq!(info.service_version.as_deref(), Some("1.0.0"));
    assert!(info.encrypted_methods);
    assert!(info.methods["secret_echo"].requires_encryption);
    assert!(info.methods.contains_key("add"));
    assert!(
        info.public_key
            .as_deref()
            .is_some_and(|k| k.starts_with("-----BEGIN PUBLIC KEY-----"))
    );
    assert!(
        client
            .requires_encryption(&svc, "secret_echo")
            .await
            .expect("re")
    );
    assert!(!client.requires_encryption(&svc, "add").await.expect("re"));
    assert!(client.has_public_key(&svc).await.expect("pk"));
    encrypted_echo(&client, &svc, "s3cr3t ünïcode").await;

    // Events: Herald → Python (the service's `interop.#` binding).
    client
        .publish_event(
            "interop.from-herald",
            json!({"n": 1}),
            json!({"who": "herald"}),
            None,
        )
        .await
        .expect("publish");
    wait_for("the python service to see Herald's event", || async {
        let seen = call("events_seen", json!({})).await.expect("events_seen");
        seen.as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["topic"] == "interop.from-herald"
                    && e["event"] == json!({"n": 1})
                    && e["context"] == json!({"who": "herald"})
            })
        })
    })
    .await;

    // Events: Python → Herald (nuropb publishes events raised with NuropbSuccess).
    let mut sub = client.subscribe("interop.#").await.expect("subscribe");
    let topic = unique("interop.from-python");
    assert_eq!(
        call("emit", json!({"topic": topic, "payload": {"k": "v"}}))
            .await
            .expect("emit"),
        json!({"emitted": topic})
    );
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            let ev = sub.next().await.expect("subscription open");
            if ev.topic == topic {
                return ev;
            }
        }
    })
    .await
    .expect("the python event within the wait");
    assert_eq!(ev.event, json!({"k": "v"}));

    client.disconnect().await.expect("disconnect");
    drop(service);
    cleanup(&url, &[service_queue(&svc), dead_letter_queue(&svc)]).await;
}

/// A Herald client using direct reply-to against the real nuropb service: nuropb
/// answers through the default exchange with routing key = `reply_to`, so the
/// broker's direct reply-to address works with it unchanged (results, errors and
/// their duplicate replies, encrypted calls, NotFound, the client deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_direct_reply_to_client_calls_python_nuropb_service() {
    let Some((python, url)) = peers() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (svc, service) = python_service(&python, &url, dir.path(), "py-drt").await;

    let backend = Arc::new(AmqpBackend::new(&url).expect("url"));
    let client = Mesh::connect(
        backend,
        MeshConfig::client()
            .client_cipher(Arc::new(NuropbCipher))
            .direct_reply_to(true),
    )
    .await
    .expect("herald client connects");
    let call = |method: &'static str, params: Value| call_as(&client, &svc, "drt", method, params);
    results_and_handling_error(&client, &svc, "drt").await;
    // nuropb's duplicate error reply also comes back through direct reply-to.
    wait_for("nuropb's duplicate error reply to be dropped", || {
        let n = client.unpaired_replies();
        async move { n >= 1 }
    })
    .await;
    let calls = (0..10i64).map(|i| call("add", json!({"a": i, "b": 1})));
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.expect("add"), json!(i + 1));
    }
    encrypted_echo(&client, &svc, "direct").await;
    not_found_and_deadline(&client, &svc).await;

    client.disconnect().await.expect("disconnect");
    drop(service);
    cleanup(&url, &[service_queue(&svc), dead_letter_queue(&svc)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_nuropb_client_calls_herald_service() {
    let Some((python, url)) = peers() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = python_key(&python, dir.path());
    let key = ServiceKey::from_pem_file(&pem).expect("load key");
    let svc = unique("herald-svc");
    let backend = Arc::new(AmqpBackend::new(&url).expect("url"));
    let example = ExampleService::new();
    let service = Mesh::connect(
        backend.clone(),
        MeshConfig::service(&svc, example.clone()).service_keys(Arc::new(key)),
    )
    .await
    .expect("herald service connects");
    let watcher = Mesh::connect(backend.clone(), MeshConfig::client())
        .await
        .expect("watcher");
    let mut sub = watcher.subscribe("interop.#").await.expect("subscribe");

    let mut py = PyProc::spawn(&python, "nuropb_client.py", &[&url]);
    let ready: Value = serde_json::from_str(&py.line().await).expect("ready json");
    assert_eq!(ready["ready"], json!(true));
    let req = |method: &str, params: Value| {
        json!({"op": "request", "service": svc, "method": method, "params": params,
               "context": {"user": "python"}, "ttl": 30_000, "trace_id": "trace-py"})
    };

    assert_eq!(
        py.ask(req("add", json!({"a": 2, "b": 3}))).await,
        json!({"ok": 5})
    );
    assert_eq!(
        py.ask(req("echo", json!({"x": 1}))).await,
        json!({"ok": {"params": {"x": 1}, "context": {"user": "python"}}})
    );

    // Errors as nuropb's client sees them: it raises NuropbMessageError(description)...
    let ans = py
        .ask(req("fail", json!({"message": "boom", "kind": "handling"})))
        .await;
    assert_eq!(
        ans,
        json!({"error": {"type": "NuropbMessageError", "description": "boom"}})
    );
    // ...and with rpc_response=False gets the whole reply, error class included, with
    // the request's correlation and trace ids and context echoed.
    let mut raw = req("fail", json!({"message": "boom", "kind": "handling"}));
    raw["rpc_response"] = json!(false);
    let reply = py.ask(raw).await;
    let reply = &reply["ok"];
    assert_eq!(reply["tag"], "response");
    assert_eq!(
        reply["error"],
        json!({"error": "NuropbHandlingError", "description": "boom"})
    );
    assert_eq!(reply["trace_id"], "trace-py");
    assert_eq!(reply["context"], json!({"user": "python"}));
    assert_eq!(reply["result"], Value::Null);
    let ans = py.ask(req("no_such_method", json!({}))).await;
    assert_eq!(ans["error"]["type"], "NuropbMessageError", "{ans}");

    // Describe as nuropb reads it, and nuropb's helpers built on it.
    let info = py.ask(json!({"op": "describe", "service": svc})).await;
    let info = &info["ok"];
    assert_eq!(info["service_name"], json!(svc));
    assert_eq!(info["encrypted_methods"], json!(true));
    assert!(
        info["public_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("-----BEGIN PUBLIC KEY-----")),
        "{info}"
    );
    assert_eq!(
        py.ask(json!({"op": "requires_encryption", "service": svc, "method": "secret_echo"}))
            .await,
        json!({"ok": true})
    );
    assert_eq!(
        py.ask(json!({"op": "has_public_key", "service": svc}))
            .await,
        json!({"ok": true})
    );

    // Encrypted call from nuropb, decrypted by Herald, reply encrypted back.
    let mut enc = req("secret_echo", json!({"text": "top secret"}));
    enc["encrypted"] = json!(true);
    assert_eq!(py.ask(enc).await, json!({"ok": "top secret"}));
    // requires_encryption is enforced (nuropb itself does not).
    let ans = py.ask(req("secret_echo", json!({"text": "clear"}))).await;
    let desc = ans["error"]["description"].as_str().unwrap_or_default();
    assert!(
        ans["error"]["type"] == "NuropbMessageError" && desc.contains("encrypt"),
        "{ans}"
    );

    // Events: Python → Herald service (`interop.#`).
    let ans = py
        .ask(
            json!({"op": "publish_event", "topic": "interop.from-python",
                    "event": {"k": 1}, "context": {"by": "py"}}),
        )
        .await;
    assert_eq!(ans, json!({"ok": null}));
    wait_for("the herald service to see the python event", || {
        let seen = example.events_seen();
        async move {
            seen.iter()
                .any(|e| e.to_string().contains("interop.from-python"))
        }
    })
    .await;
    let seen = py.ask(req("events_seen", json!({}))).await;
    assert!(
        seen["ok"].to_string().contains("interop.from-python"),
        "{seen}"
    );

    // Events: Herald service → anyone, triggered by a python request and a python command.
    let ans = py
        .ask(req(
            "emit",
            json!({"topic": "interop.by-request", "payload": {"r": 1}}),
        ))
        .await;
    assert!(ans.get("ok").is_some(), "{ans}");
    let ans = py
        .ask(json!({"op": "command", "service": svc, "method": "emit",
                    "params": {"topic": "interop.by-command", "payload": {"c": 1}},
                    "context": {}, "ttl": 30_000}))
        .await;
    assert_eq!(ans, json!({"ok": null}));
    let mut want = vec!["interop.by-request", "interop.by-command"];
    tokio::time::timeout(WAIT, async {
        while !want.is_empty() {
            let ev = sub.next().await.expect("subscription open");
            want.retain(|t| *t != ev.topic);
        }
    })
    .await
    .expect("both events within the wait");

    drop(py);
    watcher.disconnect().await.expect("disconnect");
    service.disconnect().await.expect("disconnect");
    cleanup(&url, &[service_queue(&svc), dead_letter_queue(&svc)]).await;
}

/// A nuropb instance of a service can join a Herald instance of the same service that
/// started first: Herald declares the dead-letter queue `nuropb-<svc>-dl` exactly as
/// nuropb's `configure_nuropb_rmq` does (no arguments), so nuropb's setup step is not
/// refused with 406 PRECONDITION_FAILED, and the nuropb instance starts and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nuropb_instance_starts_next_to_a_herald_instance_of_the_same_service() {
    let Some((python, url)) = peers() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = unique("mixed");
    let backend = Arc::new(AmqpBackend::new(&url).expect("url"));
    let herald = Mesh::connect(
        backend.clone(),
        MeshConfig::service(&svc, ExampleService::new()),
    )
    .await
    .expect("herald service connects");
    let client = Mesh::connect(backend.clone(), MeshConfig::client())
        .await
        .expect("herald client connects");

    // nuropb's setup step and a nuropb instance of the same service, after Herald's.
    let nuropb = python_service_named(&python, &url, dir.path(), &svc).await;
    // Only the nuropb instance is left to serve: its answers prove it is serving.
    herald
        .disconnect()
        .await
        .expect("disconnect herald service");
    for i in 0..3 {
        assert_eq!(
            call_as(&client, &svc, "mixed", "add", json!({"a": i, "b": 10}))
                .await
                .expect("the nuropb instance answers"),
            json!(i + 10)
        );
    }
    let err = call_as(
        &client,
        &svc,
        "mixed",
        "fail",
        json!({"message": "py", "kind": "value"}),
    )
    .await
    .expect_err("fail");
    assert!(
        matches!(&err, MeshError::Remote { error, .. } if error == "NuropbException"),
        "answered by nuropb, not Herald: {err:?}"
    );

    // And a Herald instance can (re)join the service next to the nuropb one.
    let again = Mesh::connect(backend, MeshConfig::service(&svc, ExampleService::new()))
        .await
        .expect("herald service reconnects next to nuropb");
    again.disconnect().await.expect("disconnect");
    client.disconnect().await.expect("disconnect");
    drop(nuropb);
    cleanup(&url, &[service_queue(&svc), dead_letter_queue(&svc)]).await;
}
