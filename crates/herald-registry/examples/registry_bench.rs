//! Helper process of `cargo xtask bench registry` (kept here so xtask stays light).
//!
//! ```text
//! registry_bench serve                       # Herald's registry on 127.0.0.1:<port>, prints the port
//! registry_bench load udp|tcp PORT SECS WARMUP [PARALLEL [WINDOW]]
//!                                             # QUERY load, prints {"rate":..,"total_replies":..,"bad_replies":..}
//! ```
//!
//! The load mirrors `shared/peers/rpyc_registry_bench.py`: QUERY for `BENCH`, which has
//! two servers (a 41-byte reply). UDP keeps WINDOW requests (default 32) in flight on
//! each of PARALLEL sockets; TCP keeps PARALLEL connections in flight, one QUERY each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_registry::core::CoreConfig;
use herald_registry::proto::{Command, encode_request};
use herald_registry::{RegistryConfig, RegistryServer, UdpRegistryClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("load") if args.len() >= 5 => {
            let port: u16 = args[2].parse()?;
            let secs: f64 = args[3].parse()?;
            let warmup: f64 = args[4].parse()?;
            let parallel: usize = args.get(5).map(|p| p.parse()).transpose()?.unwrap_or(8);
            let window: usize = args.get(6).map(|p| p.parse()).transpose()?.unwrap_or(32);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(load(&args[1], port, secs, warmup, parallel, window))
        }
        _ => Err("usage: registry_bench serve | load udp|tcp PORT SECS WARMUP [PARALLEL]".into()),
    }
}

/// The server on a single-threaded runtime, as a deployment would run it.
fn serve() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = RegistryServer::bind(RegistryConfig {
            core: CoreConfig {
                prune_timeout: Duration::from_secs(3600),
                ..CoreConfig::default()
            },
            ..RegistryConfig::localhost_ephemeral()
        })
        .await?;
        let client = UdpRegistryClient::unicast(server.local_addr());
        client.register(&["BENCH"], 18812u16).await?;
        client.register(&["BENCH"], 18813u16).await?;
        println!("{}", server.local_addr().port());
        // Serve until stdin closes or the parent kills us.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = tx.send(());
        });
        let _ = rx.await;
        server.shutdown().await;
        Ok(())
    })
}

struct Counters {
    measuring: AtomicBool,
    done: AtomicBool,
    replies: AtomicU64,
    total: AtomicU64,
    bad: AtomicU64,
}

impl Counters {
    fn reply(&self, ok: bool) {
        if ok {
            self.total.fetch_add(1, Ordering::Relaxed);
            if self.measuring.load(Ordering::Relaxed) {
                self.replies.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn load(
    mode: &str,
    port: u16,
    secs: f64,
    warmup: f64,
    parallel: usize,
    window: usize,
) -> Result<(), BoxError> {
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let query = encode_request(&Command::Query {
        name: "BENCH".into(),
    });
    // The expected reply, fetched once.
    let expected = UdpRegistryClient::unicast(server).discover("BENCH").await?;
    if expected.len() != 2 {
        return Err(format!("unexpected BENCH entries {expected:?}").into());
    }
    let mut expected_bytes = vec![0x11];
    for a in &expected {
        let mut b = Vec::new();
        herald_registry::brine::encode_into(
            &herald_registry::brine::Value::tuple([
                herald_registry::brine::Value::str(a.host.clone()),
                a.port.to_value(),
            ]),
            &mut b,
        );
        expected_bytes.extend(b);
    }
    let expected_bytes = Arc::new(expected_bytes);
    let counters = Arc::new(Counters {
        measuring: AtomicBool::new(false),
        done: AtomicBool::new(false),
        replies: AtomicU64::new(0),
        total: AtomicU64::new(0),
        bad: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    match mode {
        "udp" => {
            let window = window.max(1);
            for _ in 0..parallel.max(1) {
                let sock = UdpSocket::bind("127.0.0.1:0").await?;
                sock.connect(server).await?;
                let (q, c, e) = (query.clone(), counters.clone(), expected_bytes.clone());
                tasks.push(tokio::spawn(udp_client(sock, q, c, e, window)));
            }
        }
        "tcp" => {
            for _ in 0..parallel.max(1) {
                let (q, c, e) = (query.clone(), counters.clone(), expected_bytes.clone());
                tasks.push(tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(64);
                    while !c.done.load(Ordering::Relaxed) {
                        buf.clear();
                        let one = async {
                            let mut s = TcpStream::connect(server).await?;
                            s.write_all(&q).await?;
                            s.read_to_end(&mut buf).await?;
                            Ok::<_, std::io::Error>(())
                        };
                        match tokio::time::timeout(Duration::from_secs(2), one).await {
                            Ok(Ok(())) => c.reply(buf[..] == e[..]),
                            _ => c.reply(false),
                        }
                    }
                }));
            }
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    counters.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    counters.measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    counters.done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
    let replies = counters.replies.load(Ordering::Relaxed);
    println!(
        "{{\"rate\": {:.1}, \"replies\": {replies}, \"total_replies\": {}, \"bad_replies\": {}}}",
        replies as f64 / elapsed,
        counters.total.load(Ordering::Relaxed),
        counters.bad.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One UDP socket keeping `window` QUERYs in flight. On Linux it reads every reply
/// waiting with one `recvmmsg` and sends the QUERYs that refill the window with one
/// `sendmmsg` (each QUERY still its own datagram), so that the load generator, not
/// the server, is not what limits the rate.
#[cfg(target_os = "linux")]
async fn udp_client(
    sock: UdpSocket,
    query: Vec<u8>,
    c: Arc<Counters>,
    expected: Arc<Vec<u8>>,
    window: usize,
) {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    const SLOT: usize = 2048;
    let fd = sock.as_raw_fd();
    let mut bufs = vec![0u8; SLOT * window];
    let mut out = 0usize;
    while !c.done.load(Ordering::Relaxed) {
        if out < window {
            let need = window - out;
            let sent = sock.try_io(Interest::WRITABLE, || {
                let slices: Vec<[IoSlice<'_>; 1]> =
                    (0..need).map(|_| [IoSlice::new(&query)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = vec![None; need];
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(need, None);
                sendmmsg(
                    fd,
                    &mut headers,
                    slices.iter(),
                    &addrs,
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )
                .map(|r| r.count())
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(k) => out += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = sock.writable().await;
                    continue;
                }
                Err(_) => {}
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), sock.readable()).await {
            Ok(Ok(())) => {}
            // Lost datagrams: assume the window is gone and refill.
            _ => {
                out = 0;
                continue;
            }
        }
        let got = sock.try_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                .chunks_exact_mut(SLOT)
                .map(|b| [IoSliceMut::new(b)])
                .collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
            let lens: Vec<usize> = recvmmsg(
                fd,
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(std::io::Error::from)?
            .map(|m| m.bytes)
            .collect();
            Ok(lens)
        });
        if let Ok(lens) = got {
            for (i, n) in lens.iter().enumerate() {
                out = out.saturating_sub(1);
                let reply = bufs.get(i * SLOT..i * SLOT + n).unwrap_or(&[]);
                c.reply(reply == &expected[..]);
            }
        }
    }
}

/// One UDP socket keeping `window` QUERYs in flight, one datagram per call.
#[cfg(not(target_os = "linux"))]
async fn udp_client(
    sock: UdpSocket,
    query: Vec<u8>,
    c: Arc<Counters>,
    expected: Arc<Vec<u8>>,
    window: usize,
) {
    let mut buf = [0u8; 2048];
    let mut out = 0usize;
    while !c.done.load(Ordering::Relaxed) {
        while out < window {
            if sock.send(&query).await.is_err() {
                break;
            }
            out += 1;
        }
        match tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                out -= 1;
                c.reply(buf[..n] == expected[..]);
            }
            // Lost datagrams: assume the window is gone and refill.
            _ => out = 0,
        }
    }
}
