//! Encryption interop with the real Python `nuropb` (its `Encryptor` and `cryptography`):
//! Python encrypts → Herald decrypts, and back, for requests and replies.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use herald_mesh::crypto::{self, PublicKey, ServiceKey};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/crypto_peer.py")
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(python: &Path, args: &[&str]) -> Peer {
        let mut child = Command::new(python)
            .arg(script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read peer line");
        assert!(n > 0, "python peer closed its stdout early");
        line.trim_end().to_string()
    }

    fn write_line(&mut self, line: &[u8]) {
        self.stdin.write_all(line).expect("write to peer");
        self.stdin.write_all(b"\n").expect("write to peer");
        self.stdin.flush().expect("flush");
    }

    fn finish(mut self) {
        let status = self.child.wait().expect("wait python peer");
        assert!(status.success(), "python peer failed: {status}");
    }
}

/// A key made by Python `cryptography` (as a nuropb service would hold it), loaded by Herald.
fn python_key(python: &Path, dir: &Path) -> (PathBuf, String) {
    let pem = dir.join("service.pem");
    let out = Command::new(python)
        .arg(script())
        .arg("keygen")
        .arg(&pem)
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "keygen failed: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("keygen json");
    let public_pem = v["public_pem"].as_str().expect("public_pem").to_string();
    (pem, public_pem)
}

#[test]
fn python_nuropb_client_to_herald_service() {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::NUROPB) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, python_public_pem) = python_key(&python, dir.path());
    let key = ServiceKey::from_pem_file(&pem).expect("herald loads the python PKCS#8 key");
    // Herald publishes the public key exactly as nuropb's describe does.
    assert_eq!(key.public_key().to_pem(), python_public_pem);

    let pub_file = dir.path().join("service.pub.pem");
    std::fs::write(&pub_file, key.public_key().to_pem()).expect("write public pem");
    let body = r#"{"tag":"request","service":"herald-svc","method":"secret_echo","params":{"text":"s3cr3t"}}"#;
    let mut peer = Peer::spawn(&python, &["client", pub_file.to_str().expect("utf8"), body]);
    let wire = peer.read_line();
    let (plain, fernet) =
        crypto::open_request(wire.as_bytes(), &key).expect("herald opens request");
    assert_eq!(plain, body.as_bytes());

    let reply = r#"{"tag":"response","result":"s3cr3t","error":null}"#;
    let reply_wire =
        crypto::seal_reply(reply.as_bytes(), &fernet, key.public_key()).expect("seal reply");
    peer.write_line(&reply_wire);
    assert_eq!(peer.read_line(), reply, "python decrypts Herald's reply");
    peer.finish();
}

#[test]
fn herald_client_to_python_nuropb_service() {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::NUROPB) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, public_pem) = python_key(&python, dir.path());
    let public = PublicKey::from_pem(&public_pem).expect("parse describe public_key");

    let reply = r#"{"tag":"response","result":{"ok":true},"error":null}"#;
    let mut peer = Peer::spawn(&python, &["service", pem.to_str().expect("utf8"), reply]);
    let body = r#"{"tag":"request","params":{"text":"ünïcödé"}}"#;
    let (wire, fernet) = crypto::seal_request(body.as_bytes(), &public).expect("seal request");
    peer.write_line(&wire);
    assert_eq!(peer.read_line(), body, "python decrypts Herald's request");
    let reply_wire = peer.read_line();
    let opened = crypto::open_reply(reply_wire.as_bytes(), &fernet).expect("open python reply");
    assert_eq!(opened, reply.as_bytes());
    // A different call's key cannot open it.
    assert!(crypto::open_reply(reply_wire.as_bytes(), &crypto::FernetKey::generate()).is_err());
    peer.finish();
}

#[test]
fn wrong_private_key_is_an_error() {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::NUROPB) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_pem_a, public_a) = python_key(&python, dir.path());
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).expect("mkdir");
    let (pem_b, _) = python_key(&python, &b_dir);
    let key_b = ServiceKey::from_pem_file(pem_b).expect("load b");
    let (wire, _) =
        crypto::seal_request(b"{}", &PublicKey::from_pem(&public_a).expect("pem")).expect("seal");
    let err = crypto::open_request(&wire, &key_b).expect_err("wrong key must fail");
    assert!(err.to_string().contains("RSA-OAEP decrypt"), "{err}");
}
