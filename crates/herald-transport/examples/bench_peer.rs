//! Helper process of `cargo xtask bench transport` (one side of a two-process benchmark).
//!
//! ```text
//! bench_peer recv  <herald|raw> <count>          # prints "READY <port>", then "RATE <msgs/s>"
//! bench_peer send  <herald|herald-ref|herald-clone|raw> <port> <count>   # sends count casty-shaped frames
//! bench_peer echo  <herald|raw>                  # prints "READY <port>", echoes every frame
//! bench_peer ping  <herald|raw> <port> <count>   # sequential round trips; prints "RTT <p50_ns> <p99_ns>"
//! bench_peer idle-server <herald|raw>            # prints "READY <port>", then "RSS <kib>" on each stdin line
//! bench_peer idle-clients <port> <count>         # opens count connections (casty handshake), holds them
//! ```
//!
//! Frames are casty-shaped: a 180-byte frame (`Ping(value=42)` JSON payload, header with
//! a `casty://bench@127.0.0.1:25520/sink` target), as in casty's own benchmark. The raw
//! baseline sends the very same bytes, length-prefixed, and the receiver only splits
//! frames (no decoding). The `herald` sender hands each batch of 4096 messages (one
//! envelope, by reference) to `PeerHandle::send_all`, as the raw sender hands its frames
//! to a buffered writer; `herald-ref` calls `PeerHandle::send_ref` per message (encoded
//! per message, never cloned); `herald-clone` clones the envelope and passes the clone
//! by value (`PeerHandle::send`), as a caller that builds a new envelope per message
//! does. Every message is encoded into its own frame in all three. The receiver's rate is measured inside the receiving process,
//! from the first to the last timed message (a warm-up of 1000 messages is excluded).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use herald_transport::tcp::{PeerAddr, PeerKey, TcpConfig, TcpNode};
use herald_wire::Envelope;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

const WARMUP: u64 = 1_000;
const TARGET: &str = "casty://bench@127.0.0.1:25520/sink";
const SENDER: &str = "casty://bench@127.0.0.1:25521/";
const HINT: &str = "casty_vec_msgs.Ping";
const PAYLOAD: &[u8] = br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn envelope() -> Envelope {
    Envelope::new(TARGET, SENDER, HINT, PAYLOAD)
}

/// The casty frame of `envelope()` (u32 len | 0x01 | envelope).
fn raw_frame() -> Vec<u8> {
    let body = envelope().encode();
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(1);
    v.extend_from_slice(&body);
    v
}

fn arg(args: &[String], i: usize, what: &str) -> Result<String, BoxError> {
    args.get(i)
        .cloned()
        .ok_or_else(|| format!("missing argument {i}: {what}").into())
}

fn num(args: &[String], i: usize, what: &str) -> Result<u64, BoxError> {
    Ok(arg(args, i, what)?.parse()?)
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn bench_config() -> TcpConfig {
    let mut cfg = TcpConfig::loopback();
    cfg.queue_capacity = 1 << 16;
    cfg
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Counts messages; reports the rate over the messages after the warm-up.
struct Counter {
    n: AtomicU64,
    total: u64,
    start: std::sync::Mutex<Option<Instant>>,
    done: Notify,
}

impl Counter {
    fn hit(&self) {
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        if n == WARMUP
            && let Ok(mut s) = self.start.lock()
        {
            *s = Some(Instant::now());
        }
        if n == self.total {
            let started = self.start.lock().ok().and_then(|s| *s);
            if let Some(t0) = started {
                let secs = t0.elapsed().as_secs_f64();
                say(format!("RATE {:.0}", (self.total - WARMUP) as f64 / secs));
            }
            self.done.notify_one();
        }
    }
}

async fn recv_herald(total: u64) -> Result<(), BoxError> {
    let counter = Arc::new(Counter {
        n: AtomicU64::new(0),
        total,
        start: std::sync::Mutex::new(None),
        done: Notify::new(),
    });
    let c = counter.clone();
    let node = TcpNode::builder(bench_config())
        .on_message(move |_: &PeerKey, _e: Envelope| c.hit())
        .start()
        .await?;
    say(format!("READY {}", node.advertised().port));
    counter.done.notified().await;
    node.shutdown().await;
    Ok(())
}

async fn recv_raw(total: u64) -> Result<(), BoxError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    say(format!("READY {}", l.local_addr()?.port()));
    let (s, _) = l.accept().await?;
    s.set_nodelay(true)?;
    let counter = Counter {
        n: AtomicU64::new(0),
        total,
        start: std::sync::Mutex::new(None),
        done: Notify::new(),
    };
    let mut rd = s;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.advance(4 + len);
            counter.hit();
            if counter.n.load(Ordering::Relaxed) == total {
                return Ok(());
            }
        }
        buf.reserve(64 * 1024);
        if rd.read_buf(&mut buf).await? == 0 {
            return Err("sender closed early".into());
        }
    }
}

/// How the sending loop hands its messages to the transport.
#[derive(Clone, Copy, PartialEq)]
enum SendStyle {
    /// `PeerHandle::send_all` over each batch (one envelope, by reference).
    All,
    /// `PeerHandle::send_ref` per message.
    Ref,
    /// `PeerHandle::send` of a clone per message.
    Clone,
}

async fn send_herald(port: u16, total: u64, style: SendStyle) -> Result<(), BoxError> {
    let node = TcpNode::builder(bench_config()).start().await?;
    let peer = node.peer(&PeerAddr::new("127.0.0.1", port));
    let template = envelope();
    let mut sent = 0u64;
    while sent < total {
        let batch = (total - sent).min(4096);
        match style {
            SendStyle::All => {
                peer.send_all(std::iter::repeat_n(&template, batch as usize))?;
            }
            SendStyle::Ref => {
                for _ in 0..batch {
                    peer.send_ref(&template)?;
                }
            }
            SendStyle::Clone => {
                for _ in 0..batch {
                    peer.send(template.clone())?;
                }
            }
        }
        sent += batch;
        // Backpressure for the benchmark: keep the queue under half its capacity
        // (sleeps until the peer task has written enough; no polling).
        if !peer.queued_at_most(1 << 15, Duration::from_secs(60)).await {
            return Err("the queue did not drain within 60 s".into());
        }
    }
    peer.flushed(Duration::from_secs(300)).await;
    if std::env::var_os("BENCH_STATS").is_some() {
        eprintln!("{:?}", node.stats());
    }
    // Stay connected until the receiver is done counting.
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

async fn send_raw(port: u16, total: u64) -> Result<(), BoxError> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let frame = raw_frame();
    let mut w = BufWriter::with_capacity(256 * 1024, s);
    for _ in 0..total {
        w.write_all(&frame).await?;
    }
    w.flush().await?;
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

async fn echo_herald() -> Result<(), BoxError> {
    // The reply is sent from the read task itself (no hop through a channel).
    let cell: Arc<std::sync::OnceLock<TcpNode>> = Arc::new(std::sync::OnceLock::new());
    let c = cell.clone();
    let node = TcpNode::builder(bench_config())
        .on_message(move |from: &PeerKey, e: Envelope| {
            if let (Some(node), PeerKey::Addr(a)) = (c.get(), from) {
                let _ = node.send(a, Envelope::new(e.sender, e.target, e.type_hint, e.payload));
            }
        })
        .start()
        .await?;
    say(format!("READY {}", node.advertised().port));
    if cell.set(node).is_err() {
        return Err("node already set".into());
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn echo_raw() -> Result<(), BoxError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    say(format!("READY {}", l.local_addr()?.port()));
    let (s, _) = l.accept().await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut frame = Vec::new();
    loop {
        let len = match r.read_u32().await {
            Ok(l) => l as usize,
            Err(_) => return Ok(()),
        };
        frame.resize(4 + len, 0);
        frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
        r.read_exact(&mut frame[4..]).await?;
        w.write_all(&frame).await?;
    }
}

fn report_rtt(samples: &mut [u64]) {
    let mut h = match hdrhistogram::Histogram::<u64>::new(3) {
        Ok(h) => h,
        Err(e) => {
            say(format!("ERROR histogram: {e}"));
            return;
        }
    };
    for s in samples.iter() {
        let _ = h.record(*s);
    }
    say(format!(
        "RTT {} {}",
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99)
    ));
}

async fn ping_herald(port: u16, total: u64) -> Result<(), BoxError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
    let node = TcpNode::builder(bench_config())
        .on_message(move |_: &PeerKey, e: Envelope| {
            let _ = tx.send(e);
        })
        .start()
        .await?;
    let peer = node.peer(&PeerAddr::new("127.0.0.1", port));
    let me = format!("casty://bench@{}/reply", node.advertised());
    let mut samples = Vec::with_capacity(total as usize);
    for i in 0..(total + WARMUP) {
        let t = Instant::now();
        peer.send(Envelope::new(TARGET, me.clone(), HINT, PAYLOAD))?;
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?;
        if got.is_none() {
            return Err("reply channel closed".into());
        }
        if i >= WARMUP {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    report_rtt(&mut samples);
    node.shutdown().await;
    Ok(())
}

async fn ping_raw(port: u16, total: u64) -> Result<(), BoxError> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let frame = raw_frame();
    let mut back = vec![0u8; frame.len()];
    let mut samples = Vec::with_capacity(total as usize);
    for i in 0..(total + WARMUP) {
        let t = Instant::now();
        w.write_all(&frame).await?;
        r.read_exact(&mut back).await?;
        if i >= WARMUP {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    report_rtt(&mut samples);
    Ok(())
}

/// Holds idle connections; prints its RSS whenever a line arrives on stdin.
async fn idle_server(kind: &str) -> Result<(), BoxError> {
    let _node;
    let port = if kind == "herald" {
        let node = TcpNode::builder(bench_config()).start().await?;
        let p = node.advertised().port;
        _node = Some(node);
        p
    } else {
        _node = None;
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let p = l.local_addr()?.port();
        tokio::spawn(async move {
            // The raw baseline: one task and an 8 KiB read buffer per connection, and the
            // casty handshake answered, as a minimal casty-compatible server would.
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8 * 1024];
                    let reply = handshake_frame(0);
                    let mut answered = false;
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !answered {
                            answered = true;
                            if s.write_all(&reply).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        p
    };
    say(format!("READY {port}"));
    let stdin = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::stdin().lock().lines();
        while let Some(Ok(_)) = lines.next() {
            say(format!("RSS {}", rss_kib()));
        }
    });
    stdin.await?;
    Ok(())
}

fn handshake_frame(port: u16) -> Vec<u8> {
    let body = format!("{{\"host\": \"127.0.0.1\", \"port\": {port}}}");
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(body.as_bytes());
    v
}

async fn idle_clients(port: u16, count: u64) -> Result<(), BoxError> {
    let mut held = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        // Distinct claimed addresses, so each is its own peer on the server.
        s.write_all(&handshake_frame(20_000 + i as u16)).await?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await?;
        held.push(s);
    }
    say(format!("CONNECTED {}", held.len()));
    // Hold them until stdin closes.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await?;
    drop(held);
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cmd = arg(&args, 0, "command")?;
    let kind = args.get(1).cloned().unwrap_or_default();
    // Each role runs as a task on the runtime's workers (as application code does), not
    // on the thread that called `block_on`.
    let role = async move {
        match (cmd.as_str(), kind.as_str()) {
            ("recv", "herald") => recv_herald(num(&args, 2, "count")?).await,
            ("recv", "raw") => recv_raw(num(&args, 2, "count")?).await,
            ("send", "herald" | "herald-ref" | "herald-clone") => {
                let style = match kind.as_str() {
                    "herald" => SendStyle::All,
                    "herald-ref" => SendStyle::Ref,
                    _ => SendStyle::Clone,
                };
                send_herald(
                    num(&args, 2, "port")? as u16,
                    num(&args, 3, "count")?,
                    style,
                )
                .await
            }
            ("send", "raw") => {
                send_raw(num(&args, 2, "port")? as u16, num(&args, 3, "count")?).await
            }
            ("echo", "herald") => echo_herald().await,
            ("echo", "raw") => echo_raw().await,
            ("ping", "herald") => {
                ping_herald(num(&args, 2, "port")? as u16, num(&args, 3, "count")?).await
            }
            ("ping", "raw") => {
                ping_raw(num(&args, 2, "port")? as u16, num(&args, 3, "count")?).await
            }
            ("idle-server", k) => idle_server(k).await,
            ("idle-clients", _) => {
                idle_clients(num(&args, 1, "port")? as u16, num(&args, 2, "count")?).await
            }
            _ => Err(format!("unknown command {args:?}; see the file's documentation").into()),
        }
    };
    rt.block_on(async move { tokio::spawn(role).await? })
}
