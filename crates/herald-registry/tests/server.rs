//! The tokio server over real sockets: one table for UDP and TCP, replies from the
//! registry port, bad input, idle and split TCP clients, pruning, broadcast, events,
//! the registrar. Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use herald_registry::brine::{self, Value};
use herald_registry::core::{CoreConfig, RegistryEvent, RemoveReason};
use herald_registry::proto::{self, Command, Port, encode_request};
use herald_registry::registrar::RegistrarState;
use herald_registry::{
    Registrar, RegistrarConfig, RegistryConfig, RegistryServer, TcpRegistryClient,
    UdpRegistryClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(20);

fn config() -> RegistryConfig {
    RegistryConfig::localhost_ephemeral()
}

/// [`config`] with a TCP deadline far longer than any test: a connection that is
/// closed early was closed by the check under test, not by the deadline.
fn config_without_tcp_deadline() -> RegistryConfig {
    RegistryConfig {
        tcp_deadline: Duration::from_secs(60),
        ..config()
    }
}

fn query(name: &str) -> Vec<u8> {
    encode_request(&Command::Query { name: name.into() })
}

fn reg(aliases: &[&str], port: i64) -> Vec<u8> {
    encode_request(&Command::Register {
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        port: Port::Num(port),
    })
}

async fn udp_from(src: &str) -> UdpSocket {
    UdpSocket::bind((src.parse::<IpAddr>().expect("ip"), 0))
        .await
        .expect("bind client")
}

/// Sends `req` then a marker QUERY from the same socket; UDP on loopback keeps order
/// and the server answers in order, so the first datagram back tells whether `req`
/// got a reply, without sleeping.
async fn udp_reply(sock: &UdpSocket, server: SocketAddr, req: &[u8]) -> Option<Vec<u8>> {
    const MARKER: &str = "__MARKER__";
    sock.send_to(req, server).await.expect("send");
    sock.send_to(&query(MARKER), server)
        .await
        .expect("send marker");
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a reply within the wait")
        .expect("recv");
    assert_eq!(
        from, server,
        "reply from the registry's own address and port"
    );
    let first = buf[..n].to_vec();
    if first == proto::REPLY_EMPTY && req != query(MARKER).as_slice() {
        // Either the marker's reply or a real `()`: tell by checking for a second one.
        let second =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
        return match second {
            Ok(Ok((n, _))) => {
                assert_eq!(&buf[..n], proto::REPLY_EMPTY, "marker reply");
                Some(first)
            }
            _ => None,
        };
    }
    let (n2, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("marker reply within the wait")
        .expect("recv");
    assert_eq!(&buf[..n2], proto::REPLY_EMPTY, "marker reply follows");
    Some(first)
}

/// One TCP exchange: the reply bytes, or `None` when the server closed without one.
async fn tcp_reply(server: SocketAddr, req: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(server).await.expect("connect");
    s.write_all(req).await.expect("write");
    let out = read_until_closed(&mut s).await;
    (!out.is_empty()).then_some(out)
}

/// Reads until the server closes: its reply, empty when it sent none (a reset from a
/// server that closed with request bytes unread counts as no reply).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("server closes within the wait");
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => assert!(out.is_empty()),
        Err(e) => panic!("read: {e}"),
    }
    out
}

fn vectors() -> serde_json::Value {
    let path = herald_pyenv::shared_dir().join("vectors/rpyc_registry.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_exchanges_over_real_sockets() {
    let v = vectors();
    let all = v["vectors"].as_array().expect("vectors");
    for (transport, base) in [("udp", 0usize), ("tcp", 34usize)] {
        let server = RegistryServer::bind(RegistryConfig {
            core: CoreConfig {
                allow_listing: true,
                ..CoreConfig::default()
            },
            ..config()
        })
        .await
        .expect("bind");
        let addr = server.local_addr();
        let sock1 = udp_from("127.0.0.1").await;
        let sock2 = udp_from("127.0.0.2").await;
        // Steps that do not depend on the capture's clock, and Herald's deviations.
        let steps: Vec<usize> = (0..=11).chain(22..=27).chain(30..=33).collect();
        for step in steps {
            let index = if transport == "tcp" && step > 28 {
                base + step - 1
            } else {
                base + step
            };
            let vec = &all[index];
            assert_eq!(vec["transport"].as_str(), Some(transport));
            let req = hex::decode(vec["request_hex"].as_str().expect("hex")).expect("hex");
            let want = if step == 33 {
                None // strict decoder: truncated input is dropped
            } else {
                vec["response_hex"]
                    .as_str()
                    .map(|h| hex::decode(h).expect("hex"))
            };
            let got = if transport == "udp" {
                udp_reply(if step == 6 { &sock2 } else { &sock1 }, addr, &req).await
            } else if step == 6 {
                // Bind the TCP client to 127.0.0.2.
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind("127.0.0.2:0".parse().expect("addr"))
                    .expect("bind");
                let mut s = sock.connect(addr).await.expect("connect");
                s.write_all(&req).await.expect("write");
                let mut out = Vec::new();
                tokio::time::timeout(WAIT, s.read_to_end(&mut out))
                    .await
                    .expect("closed")
                    .expect("read");
                Some(out)
            } else {
                tcp_reply(addr, &req).await
            };
            assert_eq!(got, want, "{transport} step {step}: {}", vec["description"]);
        }
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_share_one_table() {
    let server = RegistryServer::bind(config()).await.expect("bind");
    let udp = UdpRegistryClient::unicast(server.local_addr());
    let tcp = TcpRegistryClient::new(server.local_addr());
    udp.register(&["by-udp"], 1000u16)
        .await
        .expect("udp register");
    tcp.register(&["by-tcp"], 2000u16)
        .await
        .expect("tcp register");
    assert_eq!(
        tcp.discover("BY-UDP").await.expect("tcp query")[0].to_string(),
        "127.0.0.1:1000"
    );
    assert_eq!(
        udp.discover("by-tcp").await.expect("udp query")[0].to_string(),
        "127.0.0.1:2000"
    );
    assert_eq!(
        udp.list(None).await.expect("list"),
        None,
        "listing is off by default"
    );
    tcp.unregister(1000u16).await.expect("unregister");
    // Fire-and-forget: poll until it took effect.
    tokio::time::timeout(WAIT, async {
        while !udp.discover("BY-UDP").await.expect("query").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("unregistered");
    server.shutdown().await;
}

/// What a TCP connection carrying one of [`bad_requests`] sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OverTcp {
    /// Bad as soon as it is read: the server closes the connection without a reply.
    ClosedAtOnce,
    /// Nothing, or a valid prefix: the server waits for the rest (until its deadline)
    /// and drops the request when the client closes.
    WaitsForMore,
    /// A datagram limit only (TCP's size cap is tested on its own).
    UdpOnly,
}

/// Bad input for both transports, each with how TCP treats it (the parse errors of
/// every shape are in tests/core.rs: UDP and TCP share that parser).
fn bad_requests() -> Vec<(&'static str, Vec<u8>, OverTcp)> {
    use OverTcp::*;
    let t = |items: Vec<Value>| brine::encode(&Value::Tuple(items));
    let oversized = reg(&["ALIAS"; 400], 1);
    assert!(oversized.len() > 1500);
    // Deeper than the decoder's limit, and small enough to be decoded (not dropped
    // as an oversized datagram first).
    let mut deep = vec![0x10u8; 40];
    deep.push(0x00);
    vec![
        ("garbage", vec![0xff, 0xfe, 0xfd], ClosedAtOnce),
        ("empty", vec![], WaitsForMore),
        ("truncated", query("BAR")[..19].to_vec(), WaitsForMore),
        (
            "bad magic",
            t(vec![
                Value::str("RPYX"),
                Value::str("QUERY"),
                Value::tuple([Value::str("a")]),
            ]),
            ClosedAtOnce,
        ),
        (
            "non-str command (kills rpyc)",
            t(vec![
                Value::str("RPYC"),
                Value::Int(5),
                Value::Tuple(vec![]),
            ]),
            ClosedAtOnce,
        ),
        (
            "unknown command",
            t(vec![
                Value::str("RPYC"),
                Value::str("PING"),
                Value::Tuple(vec![]),
            ]),
            ClosedAtOnce,
        ),
        (
            "wrong arity",
            t(vec![
                Value::str("RPYC"),
                Value::str("QUERY"),
                Value::Tuple(vec![]),
            ]),
            ClosedAtOnce,
        ),
        (
            "huge length",
            vec![0x0f, 0xff, 0xff, 0xff, 0xff, 0x41],
            ClosedAtOnce,
        ),
        (
            "huge count",
            vec![0x15, 0xff, 0xff, 0xff, 0xff, 0x50],
            ClosedAtOnce,
        ),
        ("deep nesting", deep, ClosedAtOnce),
        ("oversized", oversized, UdpOnly),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_dropped_and_the_server_keeps_serving() {
    let server = RegistryServer::bind(config()).await.expect("bind");
    let addr = server.local_addr();
    let sock = udp_from("127.0.0.1").await;
    assert_eq!(
        udp_reply(&sock, addr, &reg(&["keep"], 9)).await.as_deref(),
        Some(&proto::REPLY_OK[..])
    );
    let bad = bad_requests();
    let n = bad.len() as u64;
    for (what, bytes, _) in bad {
        assert_eq!(
            udp_reply(&sock, addr, &bytes).await,
            None,
            "{what}: no reply"
        );
    }
    let client = UdpRegistryClient::unicast(addr);
    assert_eq!(
        client.discover("KEEP").await.expect("still serving")[0].to_string(),
        "127.0.0.1:9"
    );
    let stats = server.stats();
    assert_eq!(stats.dropped, n);
    assert_eq!(stats.entries, 1);
    server.shutdown().await;
}

/// The bad input of [`bad_requests`] over real TCP connections, one at a time: while
/// each bad connection is open another client is answered, the bad one gets no reply
/// (closed at once, or once the client closes a request it left incomplete; the 60 s
/// deadline never fires within the wait), each is counted as dropped, and the entry
/// registered beforehand is still there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tcp_requests_are_dropped_and_the_server_keeps_serving() {
    let (server, addr) = serving_keep(config_without_tcp_deadline()).await;
    let mut dropped = 0;
    for (what, bytes, over_tcp) in bad_requests() {
        if over_tcp == OverTcp::UdpOnly {
            continue;
        }
        let mut bad = TcpStream::connect(addr).await.expect("connect");
        // A connection that sends nothing is closed at once by its client; every other
        // one stays open while another client is served.
        if !bytes.is_empty() {
            bad.write_all(&bytes).await.expect("write");
            assert_eq!(kept_entry(addr).await, "127.0.0.1:9", "{what}: meanwhile");
        }
        if over_tcp == OverTcp::WaitsForMore {
            if !bytes.is_empty() {
                let mut byte = [0u8; 1];
                let early = tokio::time::timeout(Duration::from_millis(200), bad.read(&mut byte));
                assert!(early.await.is_err(), "{what}: still waiting for the rest");
            }
            bad.shutdown().await.expect("close");
        }
        let reply = read_until_closed(&mut bad).await;
        assert!(reply.is_empty(), "{what}: no reply, got {reply:02x?}");
        dropped += 1;
        assert_eq!(
            server.stats().dropped,
            dropped,
            "{what}: counted as dropped"
        );
        assert_eq!(
            kept_entry(addr).await,
            "127.0.0.1:9",
            "{what}: table intact"
        );
    }
    assert_eq!(server.stats().entries, 1);
    server.shutdown().await;
}

/// The 40-deep datagram above fails to parse with or without the depth limit; with a
/// larger datagram size allowed, 60 000 nested 1-tuples would overflow the stack of a
/// decoder without one. Dropped, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60000_deep_datagram_is_dropped_and_the_server_keeps_serving() {
    let server = RegistryServer::bind(RegistryConfig {
        udp_max_request: 65_000,
        ..config()
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let sock = udp_from("127.0.0.1").await;
    assert_eq!(
        udp_reply(&sock, addr, &reg(&["keep"], 9)).await.as_deref(),
        Some(&proto::REPLY_OK[..])
    );
    let mut deep = vec![0x10u8; 60_000];
    deep.push(0x00);
    assert_eq!(udp_reply(&sock, addr, &deep).await, None, "no reply");
    assert_eq!(
        UdpRegistryClient::unicast(addr)
            .discover("KEEP")
            .await
            .expect("still serving")[0]
            .to_string(),
        "127.0.0.1:9"
    );
    assert_eq!(server.stats().dropped, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_client_blocks_nobody_and_is_closed_at_the_deadline() {
    let server = RegistryServer::bind(RegistryConfig {
        tcp_deadline: Duration::from_millis(500),
        ..config()
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let tcp = TcpRegistryClient::new(addr);
    tcp.register(&["busy"], 1u16)
        .await
        .expect("TCP answered while a client idles");
    let udp = UdpRegistryClient::unicast(addr);
    assert_eq!(udp.discover("busy").await.expect("UDP answered").len(), 1);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("idle connection closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_split_over_tcp_segments_is_reassembled() {
    let server = RegistryServer::bind(config()).await.expect("bind");
    let addr = server.local_addr();
    let req = reg(&["split"], 4242);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for chunk in req.chunks(5) {
        s.write_all(chunk).await.expect("write");
        s.flush().await.expect("flush");
        // Meanwhile others are served.
        let q = tcp_reply(addr, &query("split")).await;
        assert!(q.is_some(), "other clients answered meanwhile");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("reply")
        .expect("read");
    assert_eq!(out, proto::REPLY_OK);
    assert_eq!(
        tcp_reply(addr, &query("SPLIT"))
            .await
            .map(|r| proto::parse_query_reply(&r).expect("reply").len()),
        Some(1)
    );
    server.shutdown().await;
}

/// TCP input bad for its size or depth (the rest of the bad input is in
/// [`bad_tcp_requests_are_dropped_and_the_server_keeps_serving`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_deep_tcp_requests_are_closed_without_reply() {
    let (server, addr) = serving_keep(RegistryConfig {
        tcp_max_request: 4096,
        ..config_without_tcp_deadline()
    })
    .await;
    // A valid REGISTER (20 names of 250 bytes) of about 5 KB: every declared length fits
    // the 4 KiB cap, only the bytes read exceed it.
    let name = "N".repeat(250);
    let big = reg(&[name.as_str(); 20], 1);
    assert!(big.len() > 4096, "{} bytes", big.len());
    assert_eq!(tcp_reply(addr, &big).await, None);
    // Nesting deeper than the decoder's limit, left open: only the depth limit tells
    // that it is bad before more bytes arrive, and it is closed as soon as it is read
    // (`tcp_reply` fails if the server waits for the 60 s deadline).
    assert_eq!(tcp_reply(addr, &[0x10u8; 40]).await, None);
    assert_eq!(kept_entry(addr).await, "127.0.0.1:9");
    assert_eq!(server.stats().dropped, 2);
    server.shutdown().await;
}

/// 60 000 nested 1-tuples in one TCP request (within the 64 KiB cap): a decoder
/// without a depth limit would overflow the stack and take the process down. The
/// connection is closed without a reply, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60000_deep_tcp_request_is_closed_and_the_server_keeps_serving() {
    let (server, addr) = serving_keep(config_without_tcp_deadline()).await;
    let deep = vec![0x10u8; 60_000];
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may close (and reset) before it has read everything.
    let _ = s.write_all(&deep).await;
    let out = read_until_closed(&mut s).await;
    assert!(out.is_empty(), "no reply: {out:02x?}");
    assert_eq!(kept_entry(addr).await, "127.0.0.1:9");
    assert_eq!(server.stats().dropped, 1);
    server.shutdown().await;
}

/// Writes `req` in pieces of `piece` bytes, each flushed and followed by a short pause
/// so that it reaches the server as a segment of its own; false when the server closed
/// the connection before all of it was written.
async fn write_in_pieces(s: &mut TcpStream, req: &[u8], piece: usize) -> bool {
    s.set_nodelay(true).expect("nodelay");
    for chunk in req.chunks(piece) {
        if s.write_all(chunk).await.is_err() || s.flush().await.is_err() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// A REGISTER of two 55 KB aliases (names this long allowed, so only the TCP size cap
/// can refuse it) is 110 KB, over the 64 KiB cap; its declared lengths fit the cap one
/// at a time, so only the bytes read can show it is too large. Sent as 50 KB, a pause,
/// then the rest: the server reads at most one byte past the cap, whatever room its
/// buffer grew to, and drops the request without a reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_tcp_size_cap_is_dropped_when_it_arrives_in_pieces() {
    let (server, addr) = serving_keep(RegistryConfig {
        core: CoreConfig {
            max_name_len: 60_000,
            ..CoreConfig::default()
        },
        ..config_without_tcp_deadline()
    })
    .await;
    let long = "A".repeat(55_000);
    let req = reg(&[&long, &long.replace('A', "B")], 1);
    assert!(req.len() > 100_000, "{} bytes", req.len());
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(&req[..50_000]).await.expect("first part");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server may already have closed: the rest may not all go out.
    let _ = s.write_all(&req[50_000..]).await;
    assert!(read_until_closed(&mut s).await.is_empty(), "no reply");
    assert_eq!(server.stats().dropped, 1);
    assert_eq!(kept_entry(addr).await, "127.0.0.1:9");
    server.shutdown().await;
}

/// A ~20 KB REGISTER (500 aliases of 40 bytes, within the default 512 per REGISTER)
/// arriving in 60 segments, as it may over a real network: each segment is one more
/// decode of the growing buffer, well within the decoding budget, and the request is
/// answered and registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_kb_request_in_60_segments_is_answered() {
    let server = RegistryServer::bind(config_without_tcp_deadline())
        .await
        .expect("bind");
    let addr = server.local_addr();
    let aliases: Vec<String> = (0..500)
        .map(|i| format!("segmented-service-number-{i:04}-of-many"))
        .collect();
    let names: Vec<&str> = aliases.iter().map(String::as_str).collect();
    let req = reg(&names, 4242);
    assert!((19_000..24_000).contains(&req.len()), "{} bytes", req.len());
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert!(write_in_pieces(&mut s, &req, req.len().div_ceil(60)).await);
    assert_eq!(read_until_closed(&mut s).await, proto::REPLY_OK);
    for name in [names[0], names[499]] {
        let found = tcp_reply(addr, &query(name))
            .await
            .map(|r| proto::parse_query_reply(&r).expect("a QUERY reply").len());
        assert_eq!(found, Some(1), "{name}");
    }
    assert_eq!(server.stats().dropped, 0);
    server.shutdown().await;
}

/// A valid ~3 KB request trickled one byte at a time, with an item boundary every few
/// bytes: each boundary is a point where only a byte is known to be missing, so the
/// growing buffer would be decoded again and again. With a 4 KiB size cap the decoding
/// budget is 256 KiB, spent long before the request is complete: the connection is
/// closed without a reply, the server answers others meanwhile, and its table is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_request_trickled_byte_by_byte_is_dropped_once_its_decoding_budget_is_spent() {
    let (server, addr) = serving_keep(RegistryConfig {
        tcp_max_request: 4096,
        ..config_without_tcp_deadline()
    })
    .await;
    let req = reg(&["ALIAS"; 400], 1);
    assert!((2_500..4_096).contains(&req.len()), "{} bytes", req.len());
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // 200 bytes cost at most 200 decodes of at most 200 bytes: within the budget.
    assert!(write_in_pieces(&mut s, &req[..200], 1).await);
    assert_eq!(kept_entry(addr).await, "127.0.0.1:9", "answered meanwhile");
    write_in_pieces(&mut s, &req[200..], 1).await;
    assert!(
        read_until_closed(&mut s).await.is_empty(),
        "a trickled request got a reply"
    );
    assert_eq!(server.stats().dropped, 1);
    assert_eq!(kept_entry(addr).await, "127.0.0.1:9");
    // Sent whole, the same request is answered: it was dropped for its trickling alone.
    assert_eq!(
        tcp_reply(addr, &req).await.as_deref(),
        Some(&proto::REPLY_OK[..])
    );
    server.shutdown().await;
}

/// A server of `cfg` with KEEP registered at port 9 over TCP (what [`kept_entry`]
/// looks for afterwards), and its address.
async fn serving_keep(cfg: RegistryConfig) -> (RegistryServer, SocketAddr) {
    let server = RegistryServer::bind(cfg).await.expect("bind");
    let addr = server.local_addr();
    assert_eq!(
        tcp_reply(addr, &reg(&["keep"], 9)).await.as_deref(),
        Some(&proto::REPLY_OK[..])
    );
    (server, addr)
}

/// The address registered as "keep" beforehand, asked over TCP.
async fn kept_entry(addr: SocketAddr) -> String {
    let reply = tcp_reply(addr, &query("keep"))
        .await
        .expect("a QUERY reply");
    let found = proto::parse_query_reply(&reply).expect("a QUERY reply");
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_prunes_stale_entries_and_events_fire_once() {
    let server = RegistryServer::bind(RegistryConfig {
        core: CoreConfig {
            prune_timeout: Duration::from_millis(300),
            allow_listing: true,
            ..CoreConfig::default()
        },
        prune_interval: Some(Duration::from_millis(50)),
        ..config()
    })
    .await
    .expect("bind");
    let mut events = server.events();
    let client = UdpRegistryClient::unicast(server.local_addr());
    client.register(&["stale", "old"], 5u16).await.expect("ok");
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while seen.len() < 4 {
            seen.push(events.recv().await.expect("event"));
        }
    })
    .await
    .expect("added and removed events");
    let added = seen
        .iter()
        .filter(|e| matches!(e, RegistryEvent::Added { .. }))
        .count();
    let pruned = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                RegistryEvent::Removed {
                    reason: RemoveReason::Pruned,
                    ..
                }
            )
        })
        .count();
    assert_eq!((added, pruned), (2, 2));
    // LIST reflects reality without anyone QUERYing (rpyc would still list them).
    assert_eq!(client.list(None).await.expect("list"), Some(vec![]));
    assert!(server.entries().is_empty());
    // Nothing more is reported.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err()
    );
    server.shutdown().await;
}

/// One REGISTER of 5 000 aliases, and the prune tick that removes them, are each a burst
/// of 5 000 events (40 batches), into an event channel of 64 batches: a receiver that
/// reads between the two gets every event, each once, none lost to a lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_request_or_one_prune_tick_reaches_a_receiver_that_keeps_up() {
    const N: usize = 5_000;
    let cfg = RegistryConfig {
        core: CoreConfig {
            prune_timeout: Duration::from_secs(1),
            // One REGISTER of every alias (beyond the default cap of 512 per REGISTER).
            max_aliases_per_register: N,
            ..CoreConfig::default()
        },
        prune_interval: Some(Duration::from_millis(50)),
        // 5 000 events are 40 batches: a channel of 64 batches holds the whole update.
        event_capacity: 64,
        ..config()
    };
    let server = RegistryServer::bind(cfg).await.expect("bind");
    let mut events = server.events();
    let aliases: Vec<String> = (0..N).map(|i| format!("svc{i}")).collect();
    TcpRegistryClient::new(server.local_addr())
        .register(&aliases, 7000u16)
        .await
        .expect("one REGISTER of every alias");
    let mut added = std::collections::BTreeSet::new();
    let mut pruned = std::collections::BTreeSet::new();
    tokio::time::timeout(WAIT, async {
        while added.len() + pruned.len() < 2 * N {
            match events.recv().await {
                Ok(RegistryEvent::Added { name, .. }) => assert!(added.insert(name)),
                Ok(RegistryEvent::Removed {
                    name,
                    reason: RemoveReason::Pruned,
                    ..
                }) => assert!(pruned.insert(name)),
                Ok(other) => panic!("unexpected event {other:?}"),
                Err(e) => panic!(
                    "after {} added and {} pruned events: {e}",
                    added.len(),
                    pruned.len()
                ),
            }
        }
    })
    .await
    .expect("every added and pruned event in time");
    let expected: std::collections::BTreeSet<String> =
        aliases.iter().map(|a| a.to_uppercase()).collect();
    assert_eq!(added, expected);
    assert_eq!(pruned, expected);
    server.shutdown().await;
}

/// The next event or error, within [`WAIT`].
async fn next_event(
    events: &mut herald_registry::RegistryEvents,
) -> Result<RegistryEvent, herald_registry::EventRecvError> {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
}

/// Ten REGISTERs over TCP (ten updates, of 1, 2, ... 10 new entries) into an event
/// channel of 4 updates, read only afterwards: the receiver is told it missed exactly
/// the first six updates' 21 events, then gets the last four updates' 34 events in
/// order, then the next update's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_falls_behind_is_told_how_many_events_it_missed() {
    let server = RegistryServer::bind(RegistryConfig {
        event_capacity: 4,
        ..config()
    })
    .await
    .expect("bind");
    let mut events = server.events();
    let client = TcpRegistryClient::new(server.local_addr());
    let mut names = Vec::new();
    for k in 0..10 {
        let aliases: Vec<String> = (0..=k).map(|j| format!("u{k}-{j}")).collect();
        // Answered after its events were published: one update each.
        client
            .register(&aliases, 7000u16)
            .await
            .expect("registered");
        names.extend(aliases.iter().map(|a| a.to_uppercase()));
    }
    assert_eq!(names.len(), 55);
    assert_eq!(
        next_event(&mut events).await,
        Err(herald_registry::EventRecvError::Lagged { missed: 21 })
    );
    for want in &names[21..] {
        match next_event(&mut events).await {
            Ok(RegistryEvent::Added { name, .. }) => assert_eq!(&name, want),
            other => panic!("expected {want} added, got {other:?}"),
        }
    }
    client.unregister(7000u16).await.expect("unregistered");
    let mut removed = std::collections::BTreeSet::new();
    while removed.len() < names.len() {
        match next_event(&mut events).await {
            Ok(RegistryEvent::Removed {
                name,
                reason: RemoveReason::Unregistered,
                ..
            }) => assert!(removed.insert(name)),
            other => panic!("after {} removed: {other:?}", removed.len()),
        }
    }
    assert_eq!(removed, names.into_iter().collect());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_client_reaches_a_wildcard_server() {
    let server = RegistryServer::bind(RegistryConfig {
        host: "0.0.0.0".parse().expect("ip"),
        port: 0,
        ..RegistryConfig::default()
    })
    .await
    .expect("bind");
    let port = server.local_addr().port();
    let client = UdpRegistryClient::new(SocketAddr::new(
        "127.255.255.255".parse().expect("ip"),
        port,
    ))
    .with_interface("127.0.0.1".parse().expect("ip"));
    client
        .register(&["bcast"], 7000u16)
        .await
        .expect("broadcast register");
    let found = client.discover("BCAST").await.expect("broadcast query");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].port, Port::Num(7000));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_server_records_plain_ipv4_hosts() {
    let Ok(server) = RegistryServer::bind(RegistryConfig {
        host: "::".parse().expect("ip"),
        port: 0,
        ..RegistryConfig::default()
    })
    .await
    else {
        eprintln!("SKIPPED: no IPv6 on this host");
        return;
    };
    let port = server.local_addr().port();
    let v4 = SocketAddr::new("127.0.0.1".parse().expect("ip"), port);
    UdpRegistryClient::unicast(v4)
        .register(&["dual"], 1u16)
        .await
        .expect("udp via v4");
    TcpRegistryClient::new(v4)
        .register(&["dual"], 2u16)
        .await
        .expect("tcp via v4");
    let hosts: Vec<String> = server.entries().into_iter().map(|r| r.host).collect();
    assert_eq!(hosts, ["127.0.0.1", "127.0.0.1"], "not ::ffff:127.0.0.1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_client_ignores_replies_not_from_the_registry_port() {
    let fake = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let other = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let client = UdpRegistryClient::unicast(fake.local_addr().expect("addr"));
    let task = tokio::spawn(async move { client.register(&["x"], 1u16).await });
    let mut buf = [0u8; 2048];
    let (_, from) = tokio::time::timeout(WAIT, fake.recv_from(&mut buf))
        .await
        .expect("request")
        .expect("recv");
    other.send_to(&proto::REPLY_OK, from).await.expect("send");
    fake.send_to(&proto::REPLY_NONE, from).await.expect("send");
    // Neither the wrong port nor a non-"OK" reply completes the call; this one does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished());
    fake.send_to(&proto::REPLY_OK, from).await.expect("send");
    tokio::time::timeout(WAIT, task)
        .await
        .expect("done")
        .expect("join")
        .expect("registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeouts_are_errors() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let client = UdpRegistryClient::unicast(silent.local_addr().expect("addr"))
        .with_timeout(Duration::from_millis(200));
    let err = client.discover("x").await.expect_err("timeout");
    assert!(err.to_string().contains("no reply to QUERY"), "{err}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_keeps_alive_retries_and_unregisters() {
    // Find a port free for both, then start the registry only after the registrar.
    let probe = RegistryServer::bind(config()).await.expect("probe");
    let addr = probe.local_addr();
    probe.shutdown().await;
    let client = UdpRegistryClient::unicast(addr).with_timeout(Duration::from_millis(200));
    let registrar = Registrar::spawn(
        client.clone().into(),
        RegistrarConfig::new(["worker"], 5555u16)
            .with_interval(Duration::from_millis(100))
            .with_retry(Duration::from_millis(50)),
    );
    tokio::time::timeout(WAIT, async {
        while registrar.state() != RegistrarState::Retrying {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("retrying while no registry runs");
    let server = RegistryServer::bind(RegistryConfig {
        port: addr.port(),
        core: CoreConfig {
            prune_timeout: Duration::from_millis(400),
            ..CoreConfig::default()
        },
        prune_interval: Some(Duration::from_millis(50)),
        ..config()
    })
    .await
    .expect("bind the same port");
    let mut events = server.events();
    assert!(registrar.wait_registered(WAIT).await);
    // Kept alive across several prune timeouts: exactly one Added, never removed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(server.entries().len(), 1);
    registrar.shutdown().await.expect("unregister sent");
    let mut kinds = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.recv().await.expect("event");
            let removed = matches!(ev, RegistryEvent::Removed { .. });
            kinds.push(ev);
            if removed {
                break;
            }
        }
    })
    .await
    .expect("removed");
    assert!(
        matches!(
            kinds.as_slice(),
            [
                RegistryEvent::Added { .. },
                RegistryEvent::Removed {
                    reason: RemoveReason::Unregistered,
                    ..
                }
            ]
        ),
        "{kinds:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_tcp_slot() {
    let server = RegistryServer::bind(RegistryConfig {
        max_tcp_connections_per_source: 2,
        tcp_deadline: Duration::from_secs(60),
        ..config()
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let from = |ip: [u8; 4]| async move {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind((ip, 0).into())
            .expect("bind a loopback source address");
        sock.connect(addr).await.expect("connect")
    };
    // 127.0.0.2 holds two idle connections: its third is turned away.
    let idle = (from([127, 0, 0, 2]).await, from([127, 0, 0, 2]).await);
    let mut refused = false;
    for _ in 0..100 {
        let mut third = from([127, 0, 0, 2]).await;
        third.write_all(&query("x")).await.expect("write");
        let mut out = Vec::new();
        let closed = tokio::time::timeout(WAIT, third.read_to_end(&mut out)).await;
        if matches!(closed, Ok(Ok(_)) | Ok(Err(_))) && out.is_empty() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a third connection from the same source is closed");
    // Another source is served meanwhile.
    let mut other = from([127, 0, 0, 3]).await;
    other.write_all(&query("x")).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, other.read_to_end(&mut out))
        .await
        .expect("answered")
        .expect("read");
    assert_eq!(
        proto::parse_query_reply(&out).expect("a QUERY reply").len(),
        0
    );
    // Once the source's connections are gone, it is served again.
    drop(idle);
    let mut served = false;
    for _ in 0..250 {
        let mut again = from([127, 0, 0, 2]).await;
        again.write_all(&query("x")).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(WAIT, again.read_to_end(&mut out)).await;
        if !out.is_empty() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "the source is served again once its connections closed"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_udp_still_answers() {
    let server = RegistryServer::bind(RegistryConfig {
        max_tcp_connections: 2,
        tcp_deadline: Duration::from_secs(60),
        ..config()
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let idle1 = TcpStream::connect(addr).await.expect("connect");
    let idle2 = TcpStream::connect(addr).await.expect("connect");
    // A third is turned away (poll: it may reach the server before the first two).
    let mut refused = false;
    for _ in 0..100 {
        if tcp_reply(addr, &query("x")).await.is_none() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "a connection over the cap is closed without a reply"
    );
    let udp = UdpRegistryClient::unicast(addr);
    assert!(udp.discover("x").await.expect("UDP unaffected").is_empty());
    drop((idle1, idle2));
    let mut served = false;
    for _ in 0..250 {
        if tcp_reply(addr, &query("x")).await.is_some() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "TCP served again once the idle connections left");
    server.shutdown().await;
}
