//! Interop with the real casty 0.21.0 codecs (Python peer in a venv made by
//! herald-pyenv; skipped with a message if Python 3.12 is unavailable, a failure
//! with `HERALD_REQUIRE_PEERS=1`).
//!
//! Hundreds of envelopes with hostile strings (quotes, backslashes, controls,
//! DEL, BMP and astral characters) and payloads with random Unicode names and
//! floats go both ways: casty must decode what Herald encodes, and Herald's
//! bytes must equal casty's own for the same values.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_wire::Envelope;
use herald_wire::payload::{CastyJson, CastyMsgpack, PayloadCodec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greet {
    name: String,
    times: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    x: f64,
    flag: bool,
}

herald_wire::type_hint!(Greet => "casty_vec_msgs.Greet", Inner => "casty_vec_msgs.Inner");

/// Small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn string(&mut self, max: usize) -> String {
        const POOL: &[char] = &[
            'a', 'Z', '0', ' ', '/', ':', '@', '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}',
            '\u{1}', '\u{1f}', '\u{7f}', 'é', 'ü', 'ç', '計', '算', '\u{2028}', '\u{feff}', '🚀',
            '𝄞', '😀',
        ];
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len)
            .map(|_| POOL[(self.next() % POOL.len() as u64) as usize])
            .collect()
    }

    fn float(&mut self) -> f64 {
        match self.next() % 4 {
            0 => (self.next() % 1000) as f64 / 8.0,
            1 => {
                f64::from_bits(self.next() >> 2)
                    * if self.next().is_multiple_of(2) {
                        1.0
                    } else {
                        -1.0
                    }
            }
            2 => (self.next() as f64) * 1e-12,
            _ => (self.next() % 100_000) as f64 * 1e10,
        }
        .clamp(-1e300, 1e300)
    }
}

fn python_repr_float(f: f64) -> String {
    // The Python side compares repr(obj); build it from Herald's own writer.
    let mut s = String::new();
    herald_wire::pyjson::write_float(&mut s, f);
    s
}

#[test]
fn casty_and_herald_agree_byte_for_byte() {
    let Some(python) = herald_pyenv::peer_or_skip(&herald_pyenv::CASTY) else {
        return;
    };
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let envelopes: Vec<Envelope> = (0..300)
        .map(|_| {
            let payload: Vec<u8> = (0..rng.next() % 64).map(|_| rng.next() as u8).collect();
            Envelope::new(rng.string(40), rng.string(30), rng.string(20), payload)
        })
        .collect();
    let greets: Vec<Greet> = (0..200)
        .map(|_| Greet {
            name: rng.string(24),
            times: (rng.next() as i64) >> (rng.next() % 64),
        })
        .collect();
    let inners: Vec<Inner> = (0..300)
        .map(|_| Inner {
            x: rng.float(),
            flag: rng.next().is_multiple_of(2),
        })
        .collect();
    // Rust-encoded payloads that casty must decode to the same object. Only
    // Inner here: its repr is fully determined by Python's float repr.
    let mut rust_payloads = Vec::new();
    for inner in inners.iter().take(100) {
        let repr = format!(
            "Inner(x={}, flag={})",
            python_repr_float(inner.x),
            if inner.flag { "True" } else { "False" }
        );
        for (ser, bytes) in [
            ("json", PayloadCodec::encode(&CastyJson, inner)),
            ("msgpack", PayloadCodec::encode(&CastyMsgpack, inner)),
        ] {
            let bytes = bytes.unwrap_or_else(|e| panic!("{e}"));
            rust_payloads
                .push(json!({"serializer": ser, "hex": hex::encode(&bytes), "repr": repr}));
        }
    }
    let request = json!({
        "envelopes": envelopes.iter().map(|e| json!({
            "hex": hex::encode(e.encode()),
            "target": e.target, "sender": e.sender, "type_hint": e.type_hint,
            "payload_hex": hex::encode(&e.payload),
        })).collect::<Vec<_>>(),
        "greets": greets.iter().map(|g| json!({"name": g.name, "times": g.times})).collect::<Vec<_>>(),
        "inners": inners.iter().map(|i| json!({"x": i.x, "flag": i.flag})).collect::<Vec<_>>(),
        "rust_payloads": rust_payloads,
    });

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/casty_codec_peer.py"
    );
    let mut child = Command::new(&python)
        .arg(script)
        .env("PYTHONPATH", herald_pyenv::shared_dir().join("peers"))
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    stdin
        .write_all(request.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    drop(stdin);
    // Drain stdout/stderr on threads (the pipe would fill up otherwise) and
    // bound the wait: the peer does a few thousand codec calls.
    let mut stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("casty peer did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader
        .join()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let stderr = err_reader
        .join()
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(
        status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    let reply: Value = serde_json::from_slice(&stdout).unwrap_or_else(|e| panic!("{e}"));

    // 1. casty decodes every Herald envelope, and writes the same bytes.
    let got = reply["envelopes"].as_array().cloned().unwrap_or_default();
    assert_eq!(got.len(), envelopes.len());
    for (env, r) in envelopes.iter().zip(&got) {
        assert_eq!(
            r["decoded_equal"], true,
            "casty decoded {env:?} differently"
        );
        assert_eq!(
            r["casty_hex"].as_str(),
            Some(hex::encode(env.encode()).as_str()),
            "{env:?}"
        );
    }
    // 2. Herald's payload bytes equal casty's for the same values.
    for (i, g) in greets.iter().enumerate() {
        let json = PayloadCodec::encode(&CastyJson, g).unwrap_or_else(|e| panic!("{e}"));
        let mp = PayloadCodec::encode(&CastyMsgpack, g).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            reply["json_greets"][i].as_str(),
            Some(hex::encode(&json).as_str()),
            "{g:?}"
        );
        assert_eq!(
            reply["msgpack_greets"][i].as_str(),
            Some(hex::encode(&mp).as_str()),
            "{g:?}"
        );
        // And Herald decodes casty's bytes back.
        let back: Greet = CastyJson.decode(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&back, g);
    }
    for (i, inner) in inners.iter().enumerate() {
        let json = PayloadCodec::encode(&CastyJson, inner).unwrap_or_else(|e| panic!("{e}"));
        let casty = reply["json_inners"][i].as_str().unwrap_or_default();
        assert_eq!(casty, hex::encode(&json), "x = {:e}", inner.x);
        let casty_bytes = hex::decode(casty).unwrap_or_default();
        let back: Inner = CastyJson
            .decode(&casty_bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            back.x.to_bits(),
            inner.x.to_bits(),
            "float must survive exactly"
        );
    }
    // 3. casty decodes Herald's payloads to the same objects.
    for (i, r) in reply["rust_payloads"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        assert_eq!(r, &Value::Bool(true), "payload {i}: {}", rust_payloads[i]);
    }
}
