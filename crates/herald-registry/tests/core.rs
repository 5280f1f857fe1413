//! The protocol core with an injected clock: pruning, ordering, events, guard rails,
//! reply caps, bad input.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use herald_registry::brine::{self, BrineError, Value};
use herald_registry::core::{
    CoreConfig, HandleError, RateLimit, RegistryCore, RegistryEvent, RemoveReason, Transport,
};
use herald_registry::proto::{
    self, Command, Port, RequestError, encode_request, parse_list_reply, parse_query_reply,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn reg(aliases: &[&str], port: i64) -> Vec<u8> {
    encode_request(&Command::Register {
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        port: Port::Num(port),
    })
}

fn query(name: &str) -> Vec<u8> {
    encode_request(&Command::Query { name: name.into() })
}

fn list(filter: Option<&str>) -> Vec<u8> {
    encode_request(&Command::List {
        filter: filter.map(str::to_owned),
        legacy: false,
    })
}

struct Harness {
    core: RegistryCore,
    now: Instant,
    reply: Vec<u8>,
}

impl Harness {
    fn new(config: CoreConfig) -> Self {
        Self {
            core: RegistryCore::new(config),
            now: Instant::now(),
            reply: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn send(&mut self, src: &str, req: &[u8]) -> Result<Vec<u8>, HandleError> {
        self.core
            .handle(self.now, ip(src), Transport::Udp, req, &mut self.reply)
            .map(|_| self.reply.clone())
    }

    fn servers(&mut self, name: &str) -> Vec<String> {
        let r = self
            .send("127.0.0.1", &query(name))
            .expect("query answered");
        parse_query_reply(&r)
            .expect("query reply")
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

#[test]
fn query_orders_oldest_refresh_first_and_keepalive_moves_to_end() {
    let mut h = Harness::new(CoreConfig::default());
    h.send("10.0.0.1", &reg(&["svc"], 1)).expect("ok");
    h.advance(Duration::from_secs(1));
    h.send("10.0.0.2", &reg(&["svc"], 2)).expect("ok");
    assert_eq!(h.servers("SVC"), ["10.0.0.1:1", "10.0.0.2:2"]);
    h.advance(Duration::from_secs(1));
    h.send("10.0.0.1", &reg(&["svc"], 1)).expect("keep-alive");
    assert_eq!(h.servers("svc"), ["10.0.0.2:2", "10.0.0.1:1"]);
    assert_eq!(h.core.len(), 2);
}

#[test]
fn prune_removes_only_stale_entries_with_events_once() {
    let mut h = Harness::new(CoreConfig {
        prune_timeout: Duration::from_secs(10),
        ..CoreConfig::default()
    });
    h.send("10.0.0.1", &reg(&["a", "b"], 1)).expect("ok");
    h.advance(Duration::from_secs(6));
    h.send("10.0.0.2", &reg(&["a"], 2)).expect("ok");
    h.core.drain_events();
    h.advance(Duration::from_secs(5)); // first entries 11 s old, second 5 s
    assert_eq!(h.core.prune(h.now), 2);
    assert_eq!(h.core.prune(h.now), 0, "nothing twice");
    let events = h.core.drain_events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| matches!(
        e,
        RegistryEvent::Removed { reason: RemoveReason::Pruned, addr, .. } if addr.host == "10.0.0.1"
    )));
    assert_eq!(h.servers("A"), ["10.0.0.2:2"]);
    assert_eq!(h.servers("B"), Vec::<String>::new());
    assert_eq!(h.core.stats().pruned, 2);
}

#[test]
fn query_prunes_lazily_like_rpyc() {
    let mut h = Harness::new(CoreConfig {
        prune_timeout: Duration::from_secs(10),
        ..CoreConfig::default()
    });
    h.send("10.0.0.1", &reg(&["a"], 1)).expect("ok");
    h.advance(Duration::from_secs(11));
    assert!(h.servers("a").is_empty());
    assert!(h.core.is_empty());
    let events = h.core.drain_events();
    assert!(matches!(
        events.last(),
        Some(RegistryEvent::Removed {
            reason: RemoveReason::Pruned,
            ..
        })
    ));
}

#[test]
fn unregister_affects_only_the_senders_ip_and_emits_real_removals_only() {
    let mut h = Harness::new(CoreConfig::default());
    h.send("10.0.0.1", &reg(&["a", "b"], 7)).expect("ok");
    h.send("10.0.0.2", &reg(&["a"], 7)).expect("ok");
    h.core.drain_events();
    let unreg = encode_request(&Command::Unregister { port: Port::Num(7) });
    assert_eq!(h.send("10.0.0.1", &unreg).expect("ok"), proto::REPLY_OK);
    assert_eq!(h.servers("a"), ["10.0.0.2:7"]);
    assert!(h.servers("b").is_empty());
    assert_eq!(
        h.core.drain_events().len(),
        2,
        "a and b lost 10.0.0.1:7, nothing else"
    );
    assert_eq!(h.send("10.0.0.1", &unreg).expect("ok"), proto::REPLY_OK);
    assert!(
        h.core.drain_events().is_empty(),
        "unknown port: OK, no events"
    );
}

#[test]
fn ipv4_mapped_sources_are_normalised() {
    let mut h = Harness::new(CoreConfig::default());
    h.send("::ffff:192.168.1.5", &reg(&["a"], 1)).expect("ok");
    assert_eq!(h.servers("a"), ["192.168.1.5:1"]);
    h.send("fe80::1", &reg(&["a"], 2)).expect("ok");
    assert_eq!(h.servers("a"), ["192.168.1.5:1", "[fe80::1]:2"]);
}

#[test]
fn list_disabled_forbidden_filtered_and_both_forms() {
    let mut h = Harness::new(CoreConfig::default());
    h.send("10.0.0.1", &reg(&["a"], 1)).expect("ok");
    assert_eq!(
        h.send("10.0.0.1", &list(None)).expect("answered"),
        proto::REPLY_NONE
    );

    let mut h = Harness::new(CoreConfig {
        allow_listing: true,
        list_allow: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..CoreConfig::default()
    });
    h.send("10.0.0.1", &reg(&["b", "a"], 1)).expect("ok");
    h.send("10.0.0.2", &reg(&["c"], 1)).expect("ok");
    let names = |r: Vec<u8>| parse_list_reply(&r).expect("list reply");
    assert_eq!(
        names(h.send("10.9.9.9", &list(None)).expect("ok")),
        Some(vec!["B".into(), "A".into(), "C".into()])
    );
    assert_eq!(
        names(h.send("10.9.9.9", &list(Some("10.0.0.2"))).expect("ok")),
        Some(vec!["C".into()])
    );
    // rpyc 5.1 form: ("RPYC", "LIST", ())
    let legacy = brine::encode(&Value::tuple([
        Value::str("RPYC"),
        Value::str("LIST"),
        Value::Tuple(vec![]),
    ]));
    assert_eq!(
        names(h.send("10.9.9.9", &legacy).expect("ok")).map(|n| n.len()),
        Some(3)
    );
    // Outside the allow-list: None, like a registry with listing off.
    assert_eq!(
        h.send("192.168.0.1", &list(None)).expect("answered"),
        proto::REPLY_NONE
    );
}

#[test]
fn register_allow_list_denies_others() {
    let mut h = Harness::new(CoreConfig {
        register_allow: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..CoreConfig::default()
    });
    let err = h.send("10.0.0.1", &reg(&["a"], 1)).expect_err("denied");
    assert!(
        matches!(
            err,
            HandleError::Denied {
                command: "REGISTER",
                ..
            }
        ),
        "{err}"
    );
    let unreg = encode_request(&Command::Unregister { port: Port::Num(1) });
    assert!(matches!(
        h.send("10.0.0.1", &unreg),
        Err(HandleError::Denied {
            command: "UNREGISTER",
            ..
        })
    ));
    h.send("127.0.0.5", &reg(&["a"], 1)).expect("allowed");
    assert_eq!(h.core.stats().denied, 2);
    assert_eq!(h.core.len(), 1);
}

#[test]
fn rate_limit_refills_with_the_clock() {
    let mut h = Harness::new(CoreConfig {
        rate_limit: Some(RateLimit {
            per_second: 2.0,
            burst: 3.0,
        }),
        ..CoreConfig::default()
    });
    for _ in 0..3 {
        h.send("10.0.0.1", &query("x")).expect("within burst");
    }
    let err = h.send("10.0.0.1", &query("x")).expect_err("limited");
    assert!(err.to_string().contains("10.0.0.1"), "{err}");
    h.send("10.0.0.2", &query("x"))
        .expect("other sources unaffected");
    h.advance(Duration::from_millis(500));
    h.send("10.0.0.1", &query("x")).expect("one token back");
    assert!(h.send("10.0.0.1", &query("x")).is_err());
    assert_eq!(h.core.stats().rate_limited, 2);
}

#[test]
fn rate_limit_tracks_a_bounded_number_of_sources() {
    use herald_registry::core::MAX_RATE_BUCKETS;
    let mut h = Harness::new(CoreConfig {
        rate_limit: Some(RateLimit {
            per_second: 1.0,
            burst: 1.0,
        }),
        ..CoreConfig::default()
    });
    // A flood from more sources than are tracked (none of their buckets refills
    // within the test: the clock does not move).
    for i in 0..(MAX_RATE_BUCKETS as u32 + 5_000) {
        let ip =
            std::net::Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
        h.send(&ip.to_string(), &query("x"))
            .expect("first request of each source");
    }
    let stats = h.core.stats();
    assert!(stats.rate_tracked <= MAX_RATE_BUCKETS as u64, "{stats:?}");
    assert!(stats.rate_tracked > 0);
    // The limiter still works for a tracked source.
    h.send("10.0.0.9", &query("x")).expect("first");
    assert!(
        h.send("10.0.0.9", &query("x")).is_err(),
        "second within the second is limited"
    );
}

#[test]
fn entry_caps_and_name_length() {
    let mut h = Harness::new(CoreConfig {
        max_entries: 3,
        max_entries_per_host: 2,
        max_name_len: 8,
        ..CoreConfig::default()
    });
    h.send("10.0.0.1", &reg(&["a", "b"], 1)).expect("ok");
    let err = h
        .send("10.0.0.1", &reg(&["c"], 1))
        .expect_err("per-host cap");
    assert!(err.to_string().contains("per-host limit of 2"), "{err}");
    h.send("10.0.0.1", &reg(&["a", "b"], 1))
        .expect("keep-alive is not a new entry");
    h.send("10.0.0.2", &reg(&["c"], 1)).expect("ok");
    let err = h.send("10.0.0.3", &reg(&["d"], 1)).expect_err("table cap");
    assert!(err.to_string().contains("table limit of 3"), "{err}");
    let err = h
        .send("10.0.0.3", &reg(&["much-too-long"], 1))
        .expect_err("long name");
    assert_eq!(err, HandleError::NameTooLong { len: 13, max: 8 });
    assert_eq!(h.core.len(), 3);
}

#[test]
fn query_reply_is_capped_to_1500_bytes_keeping_the_freshest() {
    let mut h = Harness::new(CoreConfig::default());
    for i in 0..120 {
        h.advance(Duration::from_millis(1));
        h.send(
            &format!("10.0.{}.{}", i / 200, i % 200 + 1),
            &reg(&["big"], 40000 + i),
        )
        .expect("ok");
    }
    let r = h.send("127.0.0.1", &query("big")).expect("answered");
    assert!(r.len() <= 1500, "{} bytes", r.len());
    let got = parse_query_reply(&r).expect("decodes");
    assert!(got.len() > 50 && got.len() < 120, "{}", got.len());
    assert_eq!(
        got.last().map(ToString::to_string).as_deref(),
        Some("10.0.0.120:40119")
    );
    assert_eq!(h.core.stats().capped_replies, 1);
}

#[test]
fn list_reply_caps_differ_by_transport() {
    let mut h = Harness::new(CoreConfig {
        allow_listing: true,
        ..CoreConfig::default()
    });
    let names: Vec<String> = (0..400).map(|i| format!("SERVICE{i:05}")).collect();
    for chunk in names.chunks(50) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        h.send("10.0.0.1", &reg(&refs, 1)).expect("ok");
    }
    let mut reply = Vec::new();
    h.core
        .handle(
            h.now,
            ip("10.0.0.1"),
            Transport::Tcp,
            &list(None),
            &mut reply,
        )
        .expect("tcp");
    assert!(reply.len() <= 1500);
    let tcp = parse_list_reply(&reply)
        .expect("decodes")
        .expect("listing on");
    h.core
        .handle(
            h.now,
            ip("10.0.0.1"),
            Transport::Udp,
            &list(None),
            &mut reply,
        )
        .expect("udp");
    let udp = parse_list_reply(&reply)
        .expect("decodes")
        .expect("listing on");
    assert_eq!(udp.len(), 400, "{} bytes fit in 15000", reply.len());
    assert!(tcp.len() < 400 && tcp.len() > 50);
    assert_eq!(tcp[..], udp[..tcp.len()]);
    // rpyc 5.1.0's LIST, args `()`: its UDP client reads only 1500 bytes.
    let legacy = encode_request(&Command::List {
        filter: None,
        legacy: true,
    });
    assert_eq!(&legacy[legacy.len() - 1..], [0x02], "args ()");
    for transport in [Transport::Udp, Transport::Tcp] {
        h.core
            .handle(h.now, ip("10.0.0.1"), transport, &legacy, &mut reply)
            .expect("5.1 form answered");
        assert!(reply.len() <= 1500, "{transport:?}: {} bytes", reply.len());
        let names = parse_list_reply(&reply)
            .expect("decodes")
            .expect("listing on");
        assert_eq!(names, tcp, "{transport:?}: the names that fit, in order");
    }
}

#[test]
fn str_port_and_str_aliases_like_rpyc() {
    let mut h = Harness::new(CoreConfig::default());
    let unix = encode_request(&Command::Register {
        aliases: vec!["sock".into()],
        port: Port::Path("/run/svc.sock".into()),
    });
    h.send("127.0.0.1", &unix).expect("ok");
    let r = h.send("127.0.0.1", &query("SOCK")).expect("answered");
    assert_eq!(
        brine::decode(&r).expect("decodes").0.to_string(),
        "(('127.0.0.1', '/run/svc.sock'),)"
    );
}

#[test]
fn long_port_paths_are_refused_and_leave_the_table_unchanged() {
    let mut h = Harness::new(CoreConfig::default());
    h.send("10.0.0.1", &reg(&["keep"], 1)).expect("ok");
    h.core.drain_events();
    let before = (h.core.entries(h.now), h.core.stats());
    let aliases: Vec<String> = (0..50).map(|i| format!("svc{i}")).collect();
    let long = "/".to_owned() + &"p".repeat(299);
    let err = h
        .send(
            "10.0.0.2",
            &encode_request(&Command::Register {
                aliases: aliases.clone(),
                port: Port::Path(long.clone()),
            }),
        )
        .expect_err("a 300-byte path is refused");
    assert_eq!(
        err,
        HandleError::PortPathTooLong {
            len: 300,
            max: 255,
            start: long[..64].to_owned(),
        }
    );
    assert!(err.to_string().contains("300 bytes"), "{err}");
    assert_eq!(h.core.entries(h.now), before.0, "table unchanged");
    let stats = h.core.stats();
    assert_eq!(
        (stats.entries, stats.added, stats.registers),
        (before.1.entries, before.1.added, before.1.registers)
    );
    assert_eq!(stats.dropped, before.1.dropped + 1);
    assert!(h.core.drain_events().is_empty(), "no events");
    // A path of a realistic length is stored and returned as given.
    let ok = "/run/".to_owned() + &"s".repeat(95);
    h.send(
        "10.0.0.2",
        &encode_request(&Command::Register {
            aliases,
            port: Port::Path(ok.clone()),
        }),
    )
    .expect("a 100-byte path is accepted");
    assert_eq!(h.servers("svc7"), [format!("10.0.0.2:{ok}")]);
    assert_eq!(h.core.len(), 51);
}

#[test]
fn malformed_requests_are_dropped_and_leave_the_table_intact() {
    let mut h = Harness::new(CoreConfig::default());
    h.send("10.0.0.1", &reg(&["keep"], 1)).expect("ok");
    let t = |items: Vec<Value>| brine::encode(&Value::Tuple(items));
    let magic = || Value::str("RPYC");
    let mut deep = vec![0x10u8; 5000];
    deep.push(0x00);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", vec![0xff, 0xfe, 0xfd]),
        ("truncated", query("BAR")[..18].to_vec()),
        (
            "bad magic",
            t(vec![
                Value::str("RPYX"),
                Value::str("QUERY"),
                Value::tuple([Value::str("a")]),
            ]),
        ),
        ("not a triple", t(vec![magic(), Value::str("QUERY")])),
        (
            "int command",
            t(vec![magic(), Value::Int(5), Value::Tuple(vec![])]),
        ),
        (
            "None command",
            t(vec![magic(), Value::None, Value::Tuple(vec![])]),
        ),
        (
            "tuple command",
            t(vec![
                magic(),
                Value::tuple([Value::str("QUERY")]),
                Value::Tuple(vec![]),
            ]),
        ),
        (
            "unknown command",
            t(vec![magic(), Value::str("PING"), Value::Tuple(vec![])]),
        ),
        (
            "wrong arity",
            t(vec![
                magic(),
                Value::str("QUERY"),
                Value::tuple([Value::str("a"), Value::str("b")]),
            ]),
        ),
        (
            "args not a tuple",
            t(vec![magic(), Value::str("QUERY"), Value::str("a")]),
        ),
        (
            "int name",
            t(vec![
                magic(),
                Value::str("QUERY"),
                Value::tuple([Value::Int(5)]),
            ]),
        ),
        (
            "float port",
            t(vec![
                magic(),
                Value::str("REGISTER"),
                Value::tuple([Value::tuple([Value::str("x")]), Value::Float(1.0)]),
            ]),
        ),
        (
            "int alias",
            t(vec![
                magic(),
                Value::str("REGISTER"),
                Value::tuple([Value::tuple([Value::Int(1)]), Value::Int(1)]),
            ]),
        ),
        (
            "huge length",
            vec![0x12, 0x08, 0x0f, 0xff, 0xff, 0xff, 0xff],
        ),
        ("huge count", vec![0x15, 0x7f, 0xff, 0xff, 0xff, 0x00]),
        ("deep nesting", deep),
        (
            "bad utf-8",
            vec![0x12, 0x08, 0x0d, b'R', b'P', b'Y', 0xff, 0x00, 0x02],
        ),
        ("bad int text", vec![0x16, 0x02, b'1', b'x']),
    ];
    for (what, bytes) in cases {
        let err = h.send("10.0.0.9", &bytes).expect_err(what);
        assert!(!err.to_string().is_empty());
        if what == "int command" {
            assert_eq!(
                err,
                HandleError::Request(RequestError::CommandNotStr { found: "int" })
            );
        }
        if what == "deep nesting" {
            // Refused by the decoder's depth limit (without it, 5000 nested 1-tuples
            // decode and fail only as "not a 3-tuple").
            assert_eq!(
                err,
                HandleError::Request(RequestError::Decode(BrineError::TooDeep {
                    offset: brine::DEFAULT_MAX_DEPTH,
                    limit: brine::DEFAULT_MAX_DEPTH
                }))
            );
        }
    }
    assert_eq!(h.servers("keep"), ["10.0.0.1:1"]);
    assert_eq!(h.core.stats().dropped, 19);
}

/// The TCP server hands the core requests it has decoded already; the answers, errors
/// and counters are those of the same bytes.
#[test]
fn a_request_parsed_outside_the_core_is_answered_as_its_bytes() {
    let config = CoreConfig {
        allow_listing: true,
        ..CoreConfig::default()
    };
    let mut by_bytes = RegistryCore::new(config.clone());
    let mut by_parsed = RegistryCore::new(config);
    let t = |items: Vec<Value>| brine::encode(&Value::Tuple(items));
    let mut deep = vec![0x10u8; 100];
    deep.push(0x00);
    let requests: Vec<Vec<u8>> = vec![
        reg(&["a", "B", "a"], 1),
        reg(&["c"], 2),
        query("a"),
        query("nothing"),
        list(None),
        list(Some("10.0.0.1")),
        encode_request(&Command::List {
            filter: None,
            legacy: true,
        }),
        t(vec![
            Value::str("RPYC"),
            Value::str("QUERY"),
            Value::tuple([Value::Bytes(b"A".to_vec())]),
        ]),
        encode_request(&Command::Register {
            aliases: vec!["p".into()],
            port: Port::Path("x".repeat(300)),
        }),
        encode_request(&Command::Unregister { port: Port::Num(2) }),
        query("C"),
        vec![0xff],
        deep,
        t(vec![
            Value::str("RPYC"),
            Value::Int(5),
            Value::Tuple(vec![]),
        ]),
    ];
    let now = Instant::now();
    let (mut r1, mut r2) = (Vec::new(), Vec::new());
    for req in &requests {
        let a = by_bytes.handle_via(now, ip("10.0.0.1"), None, Transport::Tcp, req, &mut r1);
        let parsed = proto::parse_request(req).map(|(cmd, _)| cmd);
        let b =
            by_parsed.handle_parsed_via(now, ip("10.0.0.1"), None, Transport::Tcp, parsed, &mut r2);
        assert_eq!(a, b, "{req:02x?}");
        assert_eq!(r1, r2, "{req:02x?}");
    }
    assert_eq!(by_bytes.stats(), by_parsed.stats());
    assert_eq!(by_bytes.entries(now), by_parsed.entries(now));
    assert_eq!(by_bytes.drain_events(), by_parsed.drain_events());
}

#[test]
fn opt_in_loopback_rewrite_answers_remote_clients_with_the_registry_address() {
    for enabled in [false, true] {
        let mut core = RegistryCore::new(CoreConfig {
            rewrite_loopback: enabled,
            ..CoreConfig::default()
        });
        let now = Instant::now();
        let mut reply = Vec::new();
        let local = Some(ip("192.168.1.10"));
        core.handle_via(
            now,
            ip("127.0.0.1"),
            local,
            Transport::Tcp,
            &reg(&["svc"], 1),
            &mut reply,
        )
        .expect("ok");
        core.handle_via(
            now,
            ip("10.0.0.7"),
            local,
            Transport::Tcp,
            &reg(&["svc"], 2),
            &mut reply,
        )
        .expect("ok");
        let hosts = |core: &mut RegistryCore, src: &str, local: Option<IpAddr>| {
            let mut reply = Vec::new();
            core.handle_via(
                now,
                ip(src),
                local,
                Transport::Tcp,
                &query("svc"),
                &mut reply,
            )
            .expect("answered");
            parse_query_reply(&reply)
                .expect("reply")
                .into_iter()
                .map(|a| a.host)
                .collect::<Vec<_>>()
        };
        let remote = hosts(&mut core, "10.0.0.9", local);
        if enabled {
            assert_eq!(remote, ["192.168.1.10", "10.0.0.7"]);
        } else {
            assert_eq!(remote, ["127.0.0.1", "10.0.0.7"]);
        }
        // Local clients and unknown local addresses always see what was recorded.
        assert_eq!(
            hosts(&mut core, "127.0.0.1", local),
            ["127.0.0.1", "10.0.0.7"]
        );
        assert_eq!(
            hosts(&mut core, "10.0.0.9", None),
            ["127.0.0.1", "10.0.0.7"]
        );
        assert_eq!(
            core.entries(now)[0].host,
            "127.0.0.1",
            "the table is unchanged"
        );
    }
}

/// What the log says about a name or socket path that came from the network is escaped:
/// a newline in it cannot start a forged log line, nor an escape reach a terminal.
#[test]
fn names_and_paths_from_the_network_are_escaped_in_the_log() {
    let log = capture_log(|| {
        let mut h = Harness::new(CoreConfig::default());
        let forged = encode_request(&Command::Register {
            aliases: vec!["a\nb \u{1b}[2J".into()],
            port: Port::Path("/tmp/s\nservice registered".into()),
        });
        h.send("10.0.0.1", &forged).expect("registered");
        h.send(
            "10.0.0.1",
            &encode_request(&Command::Unregister {
                port: Port::Path("/tmp/s\nservice registered".into()),
            }),
        )
        .expect("unregistered");
    });
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "one line per event, none forged:\n{log}");
    assert!(lines[0].contains("service registered"), "{log}");
    assert!(lines[1].contains("service removed"), "{log}");
    assert!(lines[0].contains(r"A\nB \u{1b}[2J"), "{log}");
    assert!(lines[0].contains(r"/tmp/s\nservice registered"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "an escape reached the log: {log:?}"
    );
}

/// The QUERY reply-cap warning names the name it capped, escaped as well.
#[test]
fn a_capped_query_logs_its_name_escaped() {
    let mut h = Harness::new(CoreConfig::default());
    let ports: Vec<i64> = (0..150).map(|p| 20_000 + p).collect();
    for p in &ports {
        h.send("10.0.0.1", &reg(&["q\nforged line"], *p))
            .expect("registered");
    }
    let log = capture_log(|| {
        let reply = h.send("10.0.0.1", &query("Q\nFORGED LINE")).expect("query");
        assert!(reply.len() <= 1500, "capped reply of {} bytes", reply.len());
    });
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "one warning line, none forged:\n{log}");
    assert!(lines[0].contains("QUERY reply capped"), "{log}");
    assert!(lines[0].contains(r"Q\nFORGED LINE"), "{log}");
}

/// Runs `f` with INFO-level logs going to a buffer, and returns what was logged.
fn capture_log(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // Tests of this binary run in parallel, and an event site first reached by one
        // without a subscriber can keep that "nobody listens" answer cached: ask again.
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let bytes = buf.0.lock().expect("log buffer").clone();
    String::from_utf8(bytes).expect("utf-8 log")
}
