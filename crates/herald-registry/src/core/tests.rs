//! Tests of the table's indexes, which need the private state: the host index must
//! always agree with the table, and UNREGISTER must visit only the sender's names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{CoreConfig, HandleError, RegistryCore, RegistryEvent, RemoveReason, Transport};
use crate::proto::{self, Command, Port, ServiceAddr, encode_request};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

/// Rebuilds the indexes from the table and compares them with the ones kept up to
/// date: the creation-order index holds exactly the table's names under their `seq`;
/// the host index has the same hosts (none without entries), the same names with the
/// same counts, and entry counts that add up; the index by oldest refresh holds
/// exactly the table's names, each under the tick of its first server, and the
/// table's servers taken in tick order (across names) were refreshed in that order,
/// which is what lets the pruning timer stop at the first fresh name.
pub(super) fn check_index(core: &RegistryCore) -> Result<(), String> {
    check_front_index(core)?;
    if core.by_seq.len() != core.names.len() {
        return Err(format!(
            "{} names in creation order, {} in the table",
            core.by_seq.len(),
            core.names.len()
        ));
    }
    for (seq, name) in &core.by_seq {
        match core.names.get(&**name) {
            Some(entry) if entry.seq == *seq => {}
            Some(entry) => {
                return Err(format!("{name} indexed at {seq}, created at {}", entry.seq));
            }
            None => return Err(format!("{name} indexed at {seq}, not in the table")),
        }
        if *seq >= core.next_seq {
            return Err(format!(
                "{name} indexed at {seq}, next is {}",
                core.next_seq
            ));
        }
    }
    let mut expected: HashMap<IpAddr, HashMap<&str, usize>> = HashMap::new();
    let mut total = 0;
    for (name, entry) in &core.names {
        if entry.servers.is_empty() {
            return Err(format!("name {name} without servers is still in the table"));
        }
        check_name_index(name, entry, core.next_tick)?;
        for s in entry.servers.values() {
            *expected.entry(s.ip).or_default().entry(name).or_insert(0) += 1;
            total += 1;
        }
    }
    if total != core.entries {
        return Err(format!(
            "{} entries counted, {total} in the table",
            core.entries
        ));
    }
    if core.per_host.len() != expected.len() {
        return Err(format!(
            "{} hosts indexed, {} have entries",
            core.per_host.len(),
            expected.len()
        ));
    }
    for (ip, want) in &expected {
        let Some(record) = core.per_host.get(ip) else {
            return Err(format!("host {ip} has entries but no index record"));
        };
        let got: HashMap<&str, usize> = record.names.iter().map(|(n, c)| (&**n, *c)).collect();
        if &got != want {
            return Err(format!("host {ip}: index {got:?}, table {want:?}"));
        }
        if record.entries != want.values().sum::<usize>() {
            return Err(format!(
                "host {ip}: {} entries counted, {} in the table",
                record.entries,
                want.values().sum::<usize>()
            ));
        }
    }
    Ok(())
}

/// One name's (host, port) index against its servers: there when the name has more
/// than `INDEX_ABOVE` servers and not when it has fewer than `UNINDEX_BELOW`; when
/// there, the same entries, each under the tick it has in the refresh order. Every
/// tick is below the next one, and the servers are in refresh order (`last_seen`
/// never decreasing; the tests' clocks never go back).
fn check_name_index(name: &str, entry: &super::Name, next_tick: u64) -> Result<(), String> {
    let len = entry.servers.len();
    match &entry.ticks {
        None if len > super::INDEX_ABOVE => {
            return Err(format!("{name}: {len} servers without an index"));
        }
        Some(_) if len < super::UNINDEX_BELOW => {
            return Err(format!("{name}: {len} servers still indexed"));
        }
        Some(ticks) if ticks.len() != len => {
            return Err(format!(
                "{name}: {} servers indexed, {len} in refresh order",
                ticks.len()
            ));
        }
        _ => {}
    }
    let mut last_seen = None;
    for (tick, s) in &entry.servers {
        match entry.ticks.as_ref().map(|t| t.get(&(s.ip, s.port.clone()))) {
            None => {}
            Some(Some(t)) if t == tick => {}
            Some(Some(t)) => {
                return Err(format!(
                    "{name}: {}:{} at tick {tick}, indexed at {t}",
                    s.host, s.port
                ));
            }
            Some(None) => return Err(format!("{name}: {}:{} not indexed", s.host, s.port)),
        }
        if entry.find(s.ip, &s.port) != Some(*tick) {
            return Err(format!(
                "{name}: {}:{} not found at its tick",
                s.host, s.port
            ));
        }
        if *tick >= next_tick {
            return Err(format!("{name}: tick {tick}, next is {next_tick}"));
        }
        if s.host.as_ref() != s.ip.to_string() {
            return Err(format!("{name}: host {} recorded for {}", s.host, s.ip));
        }
        if last_seen.is_some_and(|l| l > s.last_seen) {
            return Err(format!(
                "{name}: {}:{} refreshed before the server in front of it",
                s.host, s.port
            ));
        }
        last_seen = Some(s.last_seen);
    }
    Ok(())
}

/// The index of names by oldest refresh against the table (see [`check_index`]).
fn check_front_index(core: &RegistryCore) -> Result<(), String> {
    if core.by_front.len() != core.names.len() {
        return Err(format!(
            "{} names by oldest refresh, {} in the table",
            core.by_front.len(),
            core.names.len()
        ));
    }
    for (tick, name) in &core.by_front {
        match core.names.get(&**name).map(|e| e.front()) {
            Some(Some(front)) if front == *tick => {}
            Some(front) => {
                return Err(format!("{name} indexed at {tick}, its front is {front:?}"));
            }
            None => return Err(format!("{name} indexed at {tick}, not in the table")),
        }
    }
    let mut all: Vec<(u64, Instant)> = core
        .names
        .values()
        .flat_map(|e| e.servers.iter().map(|(tick, s)| (*tick, s.last_seen)))
        .collect();
    all.sort_unstable_by_key(|(tick, _)| *tick);
    if let Some(w) = all.windows(2).find(|w| w[0].1 > w[1].1) {
        return Err(format!(
            "tick {} refreshed after tick {}, which comes later",
            w[0].0, w[1].0
        ));
    }
    Ok(())
}

#[test]
fn indexes_follow_register_keepalive_unregister_and_both_prunings() {
    let mut core = RegistryCore::new(CoreConfig {
        prune_timeout: Duration::from_secs(10),
        ..CoreConfig::default()
    });
    let t0 = Instant::now();
    let a = ip("10.0.0.1");
    let b = ip("10.0.0.2");
    let step = |core: &RegistryCore, what: &str| {
        if let Err(e) = check_index(core) {
            panic!("after {what}: {e}");
        }
    };
    core.register(t0, a, &["x".into(), "y".into()], &Port::Num(1))
        .expect("ok");
    core.register(t0, a, &["x".into()], &Port::Num(2))
        .expect("ok");
    core.register(t0, ip("::ffff:10.0.0.2"), &["x".into()], &Port::Num(1))
        .expect("ok");
    step(&core, "registers");
    assert_eq!(core.per_host[&a].names["X"], 2, "two ports under X");
    assert!(
        core.per_host.contains_key(&b),
        "mapped address indexed as IPv4"
    );
    core.register(t0 + Duration::from_secs(6), a, &["x".into()], &Port::Num(1))
        .expect("keep-alive");
    step(&core, "keep-alive");
    assert_eq!(core.unregister(a, &Port::Num(2)), 1);
    step(&core, "unregister");
    // At 11 s, a:1 under Y and b:1 under X are stale; a:1 under X was refreshed at 6 s.
    let mut reply = Vec::new();
    let query = encode_request(&Command::Query { name: "x".into() });
    core.handle(
        t0 + Duration::from_secs(11),
        a,
        Transport::Udp,
        &query,
        &mut reply,
    )
    .expect("answered");
    step(&core, "query-time pruning");
    assert!(!core.per_host.contains_key(&b), "b's last entry went");
    assert_eq!(core.prune(t0 + Duration::from_secs(11)), 1, "Y");
    step(&core, "prune");
    assert_eq!(core.prune(t0 + Duration::from_secs(17)), 1, "X");
    step(&core, "prune of the rest");
    assert!(core.per_host.is_empty() && core.names.is_empty());

    // A name that went and comes back is created again: last in LIST order.
    core.register(t0, a, &["x".into(), "y".into(), "z".into()], &Port::Num(1))
        .expect("ok");
    core.unregister(a, &Port::Num(1));
    core.register(t0, a, &["y".into(), "x".into()], &Port::Num(1))
        .expect("ok");
    core.register(t0, b, &["z".into()], &Port::Num(1))
        .expect("ok");
    step(&core, "re-created names");
    let names: Vec<&str> = core.by_seq.values().map(|n| &**n).collect();
    assert_eq!(names, ["Y", "X", "Z"]);
    let rows: Vec<String> = core.entries(t0).into_iter().map(|r| r.name).collect();
    assert_eq!(rows, ["Y", "X", "Z"]);
}

#[test]
fn unregister_visits_only_the_senders_names_in_a_big_table() {
    let mut core = RegistryCore::new(CoreConfig::default());
    let t0 = Instant::now();
    // 50 000 entries from ten other hosts (5 000 each, under the per-host cap), on
    // 25 000 names with two servers each.
    for h in 0..10u32 {
        let host = IpAddr::from([10, 1, 0, h as u8 + 1]);
        for k in 0..5_000u32 {
            let name = format!("SVC{}", (h * 2_500 + k) % 25_000);
            core.register(t0, host, &[name], &Port::Num(1)).expect("ok");
        }
    }
    let me = ip("192.168.7.7");
    core.register(t0, me, &["svc42".into()], &Port::Num(9000))
        .expect("ok");
    assert_eq!(core.len(), 50_001);
    assert_eq!(core.names.len(), 25_000);
    check_index(&core).expect("index");
    core.drain_events();

    // Through the request path, as a client sends it.
    core.names_visited = 0;
    let unreg = encode_request(&Command::Unregister {
        port: Port::Num(9000),
    });
    let mut reply = Vec::new();
    core.handle(t0, me, Transport::Udp, &unreg, &mut reply)
        .expect("answered");
    assert_eq!(reply, proto::REPLY_OK);
    assert_eq!(core.names_visited, 1, "only SVC42 was looked at");
    assert_eq!(
        core.drain_events(),
        [RegistryEvent::Removed {
            name: "SVC42".into(),
            addr: ServiceAddr {
                host: "192.168.7.7".into(),
                port: Port::Num(9000),
            },
            reason: RemoveReason::Unregistered,
        }]
    );
    assert_eq!(core.len(), 50_000);
    assert_eq!(core.stats().unregistered, 1);
    assert_eq!(
        core.names["SVC42"]
            .servers
            .values()
            .map(|s| &*s.host)
            .collect::<Vec<_>>(),
        ["10.1.0.1", "10.1.0.10"],
        "the other servers of SVC42 keep their order"
    );
    assert!(!core.per_host.contains_key(&me));
    check_index(&core).expect("index");

    // Again (the entry is gone) and from a host with nothing: no name is visited.
    core.names_visited = 0;
    assert_eq!(core.unregister(me, &Port::Num(9000)), 0);
    assert_eq!(core.unregister(ip("172.16.0.1"), &Port::Num(1)), 0);
    assert_eq!(core.names_visited, 0);

    // A host with 5 000 entries: its 5 000 names, not the table's 25 000.
    let full = ip("10.1.0.3");
    core.names_visited = 0;
    assert_eq!(core.unregister(full, &Port::Num(2)), 0, "wrong port");
    assert_eq!(core.names_visited, 5_000);
    core.names_visited = 0;
    assert_eq!(core.unregister(full, &Port::Num(1)), 5_000);
    assert_eq!(core.names_visited, 5_000);
    assert_eq!(core.len(), 45_000);
    assert_eq!(core.drain_events().len(), 5_000);
    check_index(&core).expect("index");
}

#[test]
fn a_register_with_20000_aliases_is_refused_after_bounded_work() {
    let t0 = Instant::now();
    let src = ip("10.0.0.1");
    let aliases: Vec<String> = (0..20_000).map(|i| format!("A{i}")).collect();
    let req = encode_request(&Command::Register {
        aliases: aliases.clone(),
        port: Port::Num(1),
    });
    let mut reply = Vec::new();

    // Default: over the per-REGISTER alias limit, refused before any alias is looked at.
    let mut core = RegistryCore::new(CoreConfig::default());
    let err = core
        .handle(t0, src, Transport::Tcp, &req, &mut reply)
        .expect_err("refused");
    assert_eq!(
        err,
        HandleError::TooManyAliases {
            source_ip: src,
            count: 20_000,
            max: 512
        }
    );
    assert_eq!(core.aliases_compared, 0);
    assert!(core.is_empty());

    // Without that limit, de-duplication stops once more distinct names than one host
    // may hold have been seen.
    let mut core = RegistryCore::new(CoreConfig {
        max_aliases_per_register: usize::MAX,
        max_entries_per_host: 1_000,
        ..CoreConfig::default()
    });
    let err = core
        .handle(t0, src, Transport::Tcp, &req, &mut reply)
        .expect_err("refused");
    assert_eq!(
        err,
        HandleError::TooManyEntries {
            source_ip: src,
            what: "per-host",
            max: 1_000
        }
    );
    assert!(
        core.aliases_compared <= 1_001,
        "{} alias comparisons for a refused REGISTER",
        core.aliases_compared
    );
    assert!(core.is_empty() && core.drain_events().is_empty());

    // Duplicates (case-insensitive) do not count against the caps, and the order sent is
    // kept.
    core.aliases_compared = 0;
    let mut dup: Vec<String> = Vec::new();
    for i in 0..5_000 {
        dup.push(format!("b{}", i % 3));
        dup.push(format!("B{}", i % 3));
    }
    core.register(t0, src, &dup, &Port::Num(2))
        .expect("three names");
    assert_eq!(core.aliases_compared, 10_000, "one look per alias");
    let names: Vec<String> = core.entries(t0).into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["B0", "B1", "B2"]);
}

#[test]
fn query_of_a_name_with_10000_servers_looks_at_what_fits_in_the_reply() {
    let mut core = RegistryCore::new(CoreConfig::default());
    let mut now = Instant::now();
    let host = ip("10.0.0.1");
    for port in 0..10_000i64 {
        now += Duration::from_millis(1);
        core.register(now, host, &["crowd".into()], &Port::Num(20_000 + port))
            .expect("ok");
    }
    // Each entry takes this many bytes (ports of five digits).
    let mut one = Vec::new();
    proto::encode_addr("10.0.0.1", &Port::Num(20_000), &mut one);
    let bound = super::MAX_CLIENT_READ / one.len() + 2;
    let query = encode_request(&Command::Query {
        name: "crowd".into(),
    });
    let mut reply = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        core.servers_visited = 0;
        core.handle(now, ip("10.9.9.9"), transport, &query, &mut reply)
            .expect("answered");
        assert!(
            core.servers_visited <= bound,
            "{} servers looked at, at most {bound} fit",
            core.servers_visited
        );
        assert!(reply.len() <= 1500, "{} bytes", reply.len());
        let got = proto::parse_query_reply(&reply).expect("a QUERY reply");
        assert!(got.len() > 50, "{} servers", got.len());
        assert_eq!(
            got.last().map(ToString::to_string).as_deref(),
            Some("10.0.0.1:29999"),
            "ends with the freshest"
        );
        assert_eq!(
            got.first().map(ToString::to_string),
            Some(format!("10.0.0.1:{}", 30_000 - got.len())),
            "the freshest that fit, oldest first"
        );
    }
    assert_eq!(core.stats().capped_replies, 2);
    // Once all are stale, QUERY prunes them all (it has to look at each).
    core.servers_visited = 0;
    core.handle(
        now + Duration::from_secs(241),
        ip("10.9.9.9"),
        Transport::Udp,
        &query,
        &mut reply,
    )
    .expect("answered");
    assert_eq!(reply, proto::REPLY_EMPTY);
    assert_eq!(core.servers_visited, 10_000);
    assert!(core.is_empty());
    check_index(&core).expect("indexes");
}

/// One name with 50 000 servers (five hosts, 10 000 ports each, the default per-host
/// cap): a keep-alive REGISTER, a new REGISTER and an UNREGISTER of one of them each
/// look at a few entries through the name's index, not at the name's 50 000 servers
/// (counted, not timed), and the refresh order comes out as a scan would leave it.
#[test]
fn one_entry_of_a_name_with_50000_servers_is_found_through_its_index() {
    const BOUND: usize = 64;
    let mut core = RegistryCore::new(CoreConfig::default());
    let mut now = Instant::now();
    let hosts: Vec<IpAddr> = (1..=5u8).map(|h| IpAddr::from([10, 3, 0, h])).collect();
    for host in &hosts {
        for port in 20_000..30_000i64 {
            now += Duration::from_millis(1);
            core.register(now, *host, &["crowd".into()], &Port::Num(port))
                .expect("ok");
        }
    }
    assert_eq!(core.len(), 50_000);
    core.drain_events();
    let pairs = |core: &RegistryCore| -> Vec<(String, String)> {
        core.entries(Instant::now())
            .into_iter()
            .map(|r| (r.host, r.port))
            .collect()
    };
    let mut want = pairs(&core);
    let mut reply = Vec::new();

    // A keep-alive of a server in the middle, as a client sends it: moved to the end.
    now += Duration::from_secs(1);
    let keepalive = encode_request(&Command::Register {
        aliases: vec!["crowd".into()],
        port: Port::Num(25_000),
    });
    core.servers_searched = 0;
    core.handle(now, hosts[2], Transport::Udp, &keepalive, &mut reply)
        .expect("answered");
    assert_eq!(reply, proto::REPLY_OK);
    assert!(
        core.servers_searched < BOUND,
        "keep-alive looked at {} servers",
        core.servers_searched
    );
    assert!(core.drain_events().is_empty(), "a keep-alive is no event");
    let moved = want.remove(2 * 10_000 + 5_000);
    assert_eq!(moved, ("10.3.0.3".into(), "25000".into()));
    want.push(moved);
    assert_eq!(
        pairs(&core),
        want,
        "refreshed entry last, the others in order"
    );

    // A new server under the name: appended, after looking at a few entries.
    let newcomer = ip("10.3.0.9");
    core.servers_searched = 0;
    core.register(now, newcomer, &["crowd".into()], &Port::Num(1))
        .expect("ok");
    assert!(
        core.servers_searched < BOUND,
        "new REGISTER looked at {} servers",
        core.servers_searched
    );
    assert_eq!(core.drain_events().len(), 1);
    want.push(("10.3.0.9".into(), "1".into()));
    assert_eq!(pairs(&core), want);

    // UNREGISTER of one of host 2's 10 000 ports, as a client sends it.
    let unreg = encode_request(&Command::Unregister {
        port: Port::Num(22_000),
    });
    core.servers_searched = 0;
    core.names_visited = 0;
    core.handle(now, hosts[1], Transport::Tcp, &unreg, &mut reply)
        .expect("answered");
    assert_eq!(reply, proto::REPLY_OK);
    assert!(
        core.servers_searched < BOUND,
        "UNREGISTER looked at {} servers",
        core.servers_searched
    );
    assert_eq!(core.names_visited, 1);
    assert_eq!(
        core.drain_events(),
        [RegistryEvent::Removed {
            name: "CROWD".into(),
            addr: ServiceAddr {
                host: "10.3.0.2".into(),
                port: Port::Num(22_000),
            },
            reason: RemoveReason::Unregistered,
        }]
    );
    let gone = want.remove(10_000 + 2_000);
    assert_eq!(gone, ("10.3.0.2".into(), "22000".into()));
    assert_eq!(pairs(&core), want, "the others keep their order");
    assert_eq!(core.len(), 50_000);

    // The QUERY reply ends with the freshest: the newcomer, after the refreshed one.
    let query = encode_request(&Command::Query {
        name: "crowd".into(),
    });
    core.handle(now, ip("10.9.9.9"), Transport::Udp, &query, &mut reply)
        .expect("answered");
    let got = proto::parse_query_reply(&reply).expect("a QUERY reply");
    let tail: Vec<String> = got.iter().rev().take(2).map(ToString::to_string).collect();
    assert_eq!(tail, ["10.3.0.9:1", "10.3.0.3:25000"]);
    check_index(&core).expect("indexes");
}

/// The QUERY cap keeps exactly what encoding everything and then cutting it kept (the
/// former algorithm), at every reply size around the cap, including whole replies that
/// fit only because their tuple header is short.
#[test]
fn capped_query_keeps_what_encoding_everything_would() {
    use crate::brine::{self, Value};
    let query = encode_request(&Command::Query { name: "n".into() });
    let mut reply = Vec::new();
    for path_len in 1..40 {
        let mut core = RegistryCore::new(CoreConfig::default());
        let now = Instant::now();
        let mut sent: Vec<Value> = Vec::new();
        for i in 0..(1600 / (path_len + 14) + 3) {
            let path = format!("{i:0>path_len$}");
            core.register(
                now,
                ip("10.0.0.1"),
                &["n".into()],
                &Port::Path(path.clone()),
            )
            .expect("ok");
            sent.push(Value::tuple([Value::str("10.0.0.1"), Value::str(path)]));
            let mut want = brine::encode(&Value::Tuple(sent.clone()));
            if want.len() > super::MAX_CLIENT_READ {
                let mut keep = 0;
                let mut total = 0;
                for v in sent.iter().rev() {
                    let size = brine::encode(v).len();
                    if total + size + 5 > super::MAX_CLIENT_READ {
                        break;
                    }
                    total += size;
                    keep += 1;
                }
                want = brine::encode(&Value::Tuple(sent[sent.len() - keep..].to_vec()));
            }
            core.handle(now, ip("10.9.9.9"), Transport::Udp, &query, &mut reply)
                .expect("answered");
            assert_eq!(reply, want, "{} servers, paths of {path_len}", sent.len());
        }
    }
}

/// A reference model of the table, written for clarity rather than speed, after
/// rpyc's own registry: names in a list in creation order (rpyc's dict insertion
/// order), each with its servers oldest refresh first. Every lookup is a scan.
mod model {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use crate::brine::{self, Value};
    use crate::core::{
        HandleError, MAX_CLIENT_READ, MAX_UDP_LIST_READ, RegistryEvent, RemoveReason, Stats,
        TableRow, Transport,
    };
    use crate::proto::{Port, ServiceAddr};

    struct Server {
        ip: IpAddr,
        host: String,
        port: Port,
        last_seen: Instant,
    }

    pub(super) struct Model {
        pub(super) prune_timeout: Duration,
        pub(super) max_entries: usize,
        pub(super) max_entries_per_host: usize,
        pub(super) max_name_len: usize,
        names: Vec<(String, Vec<Server>)>,
        pub(super) events: Vec<RegistryEvent>,
        pub(super) stats: Stats,
    }

    impl Model {
        pub(super) fn new(
            prune_timeout: Duration,
            max_entries: usize,
            max_entries_per_host: usize,
            max_name_len: usize,
        ) -> Self {
            Self {
                prune_timeout,
                max_entries,
                max_entries_per_host,
                max_name_len,
                names: Vec::new(),
                events: Vec::new(),
                stats: Stats::default(),
            }
        }

        fn count(&self, pick: impl Fn(&Server) -> bool) -> usize {
            self.names
                .iter()
                .flat_map(|(_, servers)| servers)
                .filter(|s| pick(s))
                .count()
        }

        fn has(&self, name: &str, ip: IpAddr, port: &Port) -> bool {
            self.names.iter().any(|(n, servers)| {
                n == name && servers.iter().any(|s| s.ip == ip && s.port == *port)
            })
        }

        /// REGISTER from `ip` (already normalised; `host` is how it is recorded).
        pub(super) fn register(
            &mut self,
            now: Instant,
            ip: IpAddr,
            host: &str,
            aliases: &[String],
            port: &Port,
        ) -> Result<(), HandleError> {
            let mut upper: Vec<String> = Vec::new();
            for a in aliases {
                if a.len() > self.max_name_len {
                    return Err(HandleError::NameTooLong {
                        len: a.len(),
                        max: self.max_name_len,
                    });
                }
                if !upper.contains(&a.to_uppercase()) {
                    upper.push(a.to_uppercase());
                }
            }
            // More distinct names than one host may hold: refused whatever the table.
            if upper.len() > self.max_entries_per_host {
                return Err(HandleError::TooManyEntries {
                    source_ip: ip,
                    what: "per-host",
                    max: self.max_entries_per_host,
                });
            }
            let new = upper.iter().filter(|n| !self.has(n, ip, port)).count();
            if self.count(|_| true) + new > self.max_entries {
                return Err(HandleError::TooManyEntries {
                    source_ip: ip,
                    what: "table",
                    max: self.max_entries,
                });
            }
            if self.count(|s| s.ip == ip) + new > self.max_entries_per_host {
                return Err(HandleError::TooManyEntries {
                    source_ip: ip,
                    what: "per-host",
                    max: self.max_entries_per_host,
                });
            }
            for name in upper {
                if !self.names.iter().any(|(n, _)| *n == name) {
                    self.names.push((name.clone(), Vec::new()));
                }
                let Some((_, servers)) = self.names.iter_mut().find(|(n, _)| *n == name) else {
                    unreachable!("just added");
                };
                if let Some(i) = servers.iter().position(|s| s.ip == ip && s.port == *port) {
                    let mut s = servers.remove(i);
                    s.last_seen = now;
                    servers.push(s);
                } else {
                    servers.push(Server {
                        ip,
                        host: host.to_owned(),
                        port: port.clone(),
                        last_seen: now,
                    });
                    self.stats.added += 1;
                    self.events.push(RegistryEvent::Added {
                        name,
                        addr: ServiceAddr {
                            host: host.to_owned(),
                            port: port.clone(),
                        },
                    });
                }
            }
            self.stats.registers += 1;
            Ok(())
        }

        /// Removes the servers `gone` picks from the names `which` picks.
        fn remove(
            &mut self,
            which: impl Fn(&str) -> bool,
            gone: impl Fn(&Server) -> bool,
            reason: RemoveReason,
        ) -> usize {
            let mut n = 0;
            for (name, servers) in &mut self.names {
                if !which(name) {
                    continue;
                }
                let mut kept = Vec::new();
                for s in servers.drain(..) {
                    if gone(&s) {
                        n += 1;
                        self.events.push(RegistryEvent::Removed {
                            name: name.clone(),
                            addr: ServiceAddr {
                                host: s.host.clone(),
                                port: s.port.clone(),
                            },
                            reason,
                        });
                    } else {
                        kept.push(s);
                    }
                }
                *servers = kept;
            }
            self.names.retain(|(_, servers)| !servers.is_empty());
            match reason {
                RemoveReason::Unregistered => self.stats.unregistered += n as u64,
                RemoveReason::Pruned => self.stats.pruned += n as u64,
            }
            n
        }

        pub(super) fn unregister(&mut self, ip: IpAddr, port: &Port) {
            self.remove(
                |_| true,
                |s| s.ip == ip && s.port == *port,
                RemoveReason::Unregistered,
            );
            self.stats.unregisters += 1;
        }

        pub(super) fn prune(&mut self, now: Instant) -> usize {
            let timeout = self.prune_timeout;
            self.remove(
                |_| true,
                |s| now.saturating_duration_since(s.last_seen) > timeout,
                RemoveReason::Pruned,
            )
        }

        /// The QUERY reply (prunes the name first, like rpyc).
        pub(super) fn query(&mut self, now: Instant, name: &str) -> Vec<u8> {
            let key = name.to_uppercase();
            let timeout = self.prune_timeout;
            self.remove(
                |n| n == key,
                |s| now.saturating_duration_since(s.last_seen) > timeout,
                RemoveReason::Pruned,
            );
            self.stats.queries += 1;
            let servers = self
                .names
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, servers)| {
                    servers
                        .iter()
                        .map(|s| Value::tuple([Value::str(s.host.clone()), s.port.to_value()]))
                        .collect()
                })
                .unwrap_or_default();
            brine::encode(&Value::Tuple(servers))
        }

        /// The LIST reply (listing on, no allow-list); `legacy`: the rpyc 5.1.0 form,
        /// whose client reads 1500 bytes over UDP too.
        pub(super) fn list(
            &mut self,
            filter: Option<&str>,
            transport: Transport,
            legacy: bool,
        ) -> Vec<u8> {
            let cap = match transport {
                Transport::Udp if !legacy => MAX_UDP_LIST_READ,
                _ => MAX_CLIENT_READ,
            };
            let filter = filter.filter(|h| !h.is_empty());
            let mut kept = Vec::new();
            let mut size = 0;
            for (name, servers) in &self.names {
                if filter.is_some_and(|h| !servers.iter().any(|s| s.host == h)) {
                    continue;
                }
                let len = brine::encode(&Value::str(name.clone())).len();
                if size + len + 5 > cap {
                    self.stats.capped_replies += 1;
                    break;
                }
                size += len;
                kept.push(Value::str(name.clone()));
            }
            self.stats.lists += 1;
            brine::encode(&Value::Tuple(kept))
        }

        pub(super) fn rows(&self, now: Instant) -> Vec<TableRow> {
            let mut rows = Vec::new();
            for (name, servers) in &self.names {
                for s in servers {
                    rows.push(TableRow {
                        name: name.clone(),
                        host: s.host.clone(),
                        port: s.port.to_string(),
                        age_ms: now.saturating_duration_since(s.last_seen).as_millis() as u64,
                    });
                }
            }
            rows
        }

        pub(super) fn len(&self) -> usize {
            self.count(|_| true)
        }
    }
}

mod model_test {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::check_index;
    use super::model::Model;
    use crate::core::{CoreConfig, HandleError, RegistryCore, RegistryEvent, Transport};
    use crate::proto::{self, Command, Port, encode_request};

    /// Source addresses and how each is recorded: two spellings of one IPv4 host, so
    /// the index has to key on the normalised address.
    const SOURCES: [(&str, &str); 5] = [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("10.0.0.2", "10.0.0.2"),
        ("fe80::1", "fe80::1"),
        ("127.0.0.1", "127.0.0.1"),
    ];
    /// LIST filters: recorded hosts, a spelling never recorded, nobody, and `""` (all).
    const FILTERS: [&str; 6] = [
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "10.0.0.2",
        "fe80::1",
        "nobody",
        "",
    ];
    const MAX_NAME_LEN: usize = 400;

    /// Aliases: short ones that upper-case onto each other, long ones (six of them
    /// overflow a TCP LIST reply) and one over the name length limit.
    fn alias(i: usize) -> String {
        const SHORT: [&str; 6] = ["a", "A", "b", "svc", "Svc", "ß"];
        match i {
            0..6 => SHORT[i].to_owned(),
            6..12 => format!("long{i}-{}", "x".repeat(300)),
            _ => "y".repeat(MAX_NAME_LEN + 1),
        }
    }

    fn port(i: usize) -> Port {
        match i {
            0 => Port::Num(1),
            1 => Port::Num(18812),
            _ => Port::Path("/run/svc.sock".into()),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register {
            source: usize,
            aliases: Vec<usize>,
            port: usize,
        },
        Unregister {
            source: usize,
            port: usize,
        },
        Prune,
        Query {
            name: usize,
        },
        List {
            filter: Option<usize>,
            tcp: bool,
            /// The rpyc 5.1.0 form (no filter).
            legacy: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..SOURCES.len(), proptest::collection::vec(0..13usize, 0..4), 0..3usize)
                .prop_map(|(source, aliases, port)| Op::Register { source, aliases, port }),
            2 => (0..SOURCES.len(), 0..3usize)
                .prop_map(|(source, port)| Op::Unregister { source, port }),
            1 => Just(Op::Prune),
            2 => (0..13usize).prop_map(|name| Op::Query { name }),
            2 => (proptest::option::of(0..FILTERS.len()), any::<bool>(), any::<bool>())
                .prop_map(|(filter, tcp, legacy)| Op::List {
                    filter: filter.filter(|_| !legacy),
                    tcp,
                    legacy,
                }),
        ]
    }

    /// Events of one step, in a canonical order: the table reports the removals of
    /// one request name by name in hash order, which is unspecified.
    fn sorted(mut events: Vec<RegistryEvent>) -> Vec<RegistryEvent> {
        events.sort_by_key(|e| format!("{e:?}"));
        events
    }

    /// Runs `steps` (each an operation and the seconds the clock moves first) against
    /// the table and the model, comparing after every step.
    fn run_against_model(steps: Vec<(Op, u64)>) -> Result<(), TestCaseError> {
        let prune_timeout = Duration::from_secs(10);
        let (max_entries, max_entries_per_host) = (14, 8);
        let mut core = RegistryCore::new(CoreConfig {
            prune_timeout,
            allow_listing: true,
            max_entries,
            max_entries_per_host,
            max_name_len: MAX_NAME_LEN,
            ..CoreConfig::default()
        });
        let mut model = Model::new(
            prune_timeout,
            max_entries,
            max_entries_per_host,
            MAX_NAME_LEN,
        );
        let mut now = Instant::now();
        let mut reply = Vec::new();
        for (i, (op, dt)) in steps.into_iter().enumerate() {
            now += Duration::from_secs(dt);
            let mut handle = |core: &mut RegistryCore, source: &str, transport, cmd: &Command| {
                let source: IpAddr = source.parse().expect("source literal");
                core.handle(now, source, transport, &encode_request(cmd), &mut reply)
                    .map(|_| reply.clone())
            };
            match &op {
                Op::Register {
                    source,
                    aliases,
                    port: p,
                } => {
                    let (src, host) = SOURCES[*source];
                    let aliases: Vec<String> = aliases.iter().map(|&a| alias(a)).collect();
                    let got = handle(
                        &mut core,
                        src,
                        Transport::Udp,
                        &Command::Register {
                            aliases: aliases.clone(),
                            port: port(*p),
                        },
                    );
                    let ip: IpAddr = host.parse().expect("host literal");
                    let want = model.register(now, ip, host, &aliases, &port(*p));
                    model.stats.requests += 1;
                    match want {
                        Ok(()) => model.stats.replies += 1,
                        Err(_) => model.stats.dropped += 1,
                    }
                    prop_assert_eq!(
                        got,
                        want.map(|()| proto::REPLY_OK.to_vec()),
                        "step {} {:?}",
                        i,
                        op
                    );
                }
                Op::Unregister { source, port: p } => {
                    let (src, host) = SOURCES[*source];
                    let got = handle(
                        &mut core,
                        src,
                        Transport::Tcp,
                        &Command::Unregister { port: port(*p) },
                    );
                    model.unregister(host.parse().expect("host literal"), &port(*p));
                    model.stats.requests += 1;
                    model.stats.replies += 1;
                    prop_assert_eq!(
                        got,
                        Ok::<_, HandleError>(proto::REPLY_OK.to_vec()),
                        "step {} {:?}",
                        i,
                        op
                    );
                }
                Op::Prune => {
                    prop_assert_eq!(core.prune(now), model.prune(now), "step {} {:?}", i, op);
                }
                Op::Query { name } => {
                    let name = alias(*name);
                    let got = handle(
                        &mut core,
                        "10.9.9.9",
                        Transport::Udp,
                        &Command::Query { name: name.clone() },
                    );
                    let want = model.query(now, &name);
                    model.stats.requests += 1;
                    model.stats.replies += 1;
                    prop_assert_eq!(got, Ok(want), "step {} {:?}", i, op);
                }
                Op::List {
                    filter,
                    tcp,
                    legacy,
                } => {
                    let filter = filter.map(|f| FILTERS[f].to_owned());
                    let transport = if *tcp { Transport::Tcp } else { Transport::Udp };
                    let got = handle(
                        &mut core,
                        "10.9.9.9",
                        transport,
                        &Command::List {
                            filter: filter.clone(),
                            legacy: *legacy,
                        },
                    );
                    let want = model.list(filter.as_deref(), transport, *legacy);
                    model.stats.requests += 1;
                    model.stats.replies += 1;
                    prop_assert_eq!(got, Ok(want), "step {} {:?}", i, op);
                }
            }
            prop_assert_eq!(
                sorted(core.drain_events()),
                sorted(std::mem::take(&mut model.events)),
                "events of step {} {:?}",
                i,
                op
            );
            let mut stats = model.stats;
            stats.entries = model.len() as u64;
            prop_assert_eq!(core.stats(), stats, "counters after step {} {:?}", i, op);
            prop_assert_eq!(
                core.entries(now),
                model.rows(now),
                "table after step {} {:?}",
                i,
                op
            );
            if let Err(e) = check_index(&core) {
                return Err(TestCaseError::fail(format!(
                    "indexes after step {i} {op:?}: {e}"
                )));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random REGISTER / UNREGISTER / timer prune / QUERY / LIST sequences against
        /// the reference model: after every step the same reply bytes (or the same
        /// error), the same events, the same counters, the same table dump (names in
        /// creation order, servers oldest refresh first, same ages), and indexes that
        /// agree with the table.
        #[test]
        fn table_matches_the_reference_model(
            steps in proptest::collection::vec((op(), 0..5u64), 1..80)
        ) {
            run_against_model(steps)?;
        }
    }
}

#[test]
fn filtered_list_visits_only_that_hosts_names_in_a_big_table() {
    let mut core = RegistryCore::new(CoreConfig {
        allow_listing: true,
        ..CoreConfig::default()
    });
    let t0 = Instant::now();
    for h in 0..4u32 {
        let host = IpAddr::from([10, 2, 0, h as u8 + 1]);
        for k in 0..5_000u32 {
            core.register(t0, host, &[format!("N{h}-{k}")], &Port::Num(1))
                .expect("ok");
        }
    }
    let me = ip("192.168.7.8");
    // Registered in this order: LIST answers in creation order, not in index order.
    for name in ["zeta", "alpha", "mid"] {
        core.register(t0, me, &[name.into()], &Port::Num(9000))
            .expect("ok");
    }
    let list = |core: &mut RegistryCore, filter: Option<&str>| {
        core.names_visited = 0;
        let req = encode_request(&Command::List {
            filter: filter.map(str::to_owned),
            legacy: false,
        });
        let mut reply = Vec::new();
        core.handle(t0, me, Transport::Udp, &req, &mut reply)
            .expect("answered");
        let names = proto::parse_list_reply(&reply)
            .expect("a LIST reply")
            .expect("listing is on");
        (names, core.names_visited)
    };
    let (names, visited) = list(&mut core, Some("192.168.7.8"));
    assert_eq!(names, ["ZETA", "ALPHA", "MID"]);
    assert_eq!(visited, 3, "only that host's names were looked at");
    // Spellings the table never shows, and a host with nothing, visit no name.
    for other in [
        "::ffff:192.168.7.8",
        "192.168.007.008",
        "nobody",
        "172.16.0.1",
    ] {
        let (names, visited) = list(&mut core, Some(other));
        assert!(names.is_empty(), "{other}: {names:?}");
        assert_eq!(visited, 0, "{other}");
    }
    // Unfiltered: as many names as fit in the reply, and a few more at most.
    let (names, visited) = list(&mut core, None);
    assert!(!names.is_empty() && names.len() < 20_003, "{}", names.len());
    assert_eq!(
        visited,
        names.len() + 1,
        "stops at the first name that does not fit"
    );
}

/// A prune tick over a table of 60 000 entries of which three are stale looks only at
/// the names holding those three and at the first fresh name (counted, not timed), and
/// removes exactly them with the same events and counters as before; a tick with
/// nothing stale looks at one name.
#[test]
fn a_prune_tick_looks_only_at_the_stale_entries_of_a_big_table() {
    let timeout = Duration::from_secs(240);
    let mut core = RegistryCore::new(CoreConfig::default());
    let t0 = Instant::now();
    let old = ip("192.168.9.9");
    // The stale ones: registered first, two names (one with two old servers).
    core.register(t0, old, &["gone1".into(), "gone2".into()], &Port::Num(1))
        .expect("ok");
    core.register(t0, old, &["gone1".into()], &Port::Num(2))
        .expect("ok");
    // 60 000 fresh entries on 30 000 names, some sharing a name with a stale one.
    let fresh_at = t0 + Duration::from_secs(100);
    for h in 0..6u8 {
        let host = IpAddr::from([10, 4, 0, h + 1]);
        for k in 0..10_000u32 {
            let name = format!("SVC{}", (u32::from(h) * 5_000 + k) % 30_000);
            core.register(fresh_at, host, &[name], &Port::Num(1))
                .expect("ok");
        }
    }
    core.register(fresh_at, ip("10.4.0.99"), &["gone1".into()], &Port::Num(7))
        .expect("ok");
    assert_eq!(core.len(), 60_004);
    core.drain_events();
    let stats_before = core.stats();

    // Nothing stale yet: one name looked at.
    core.names_visited = 0;
    core.servers_visited = 0;
    assert_eq!(core.prune(t0 + timeout), 0);
    assert_eq!(core.names_visited, 1, "names looked at with nothing stale");
    assert!(core.servers_visited <= 1, "{}", core.servers_visited);

    core.names_visited = 0;
    core.servers_visited = 0;
    assert_eq!(core.prune(t0 + timeout + Duration::from_secs(1)), 3);
    assert!(
        core.names_visited <= 3,
        "{} names looked at to prune two",
        core.names_visited
    );
    assert!(
        core.servers_visited <= 5,
        "{} servers looked at to prune three",
        core.servers_visited
    );
    let removed = |name: &str, port| RegistryEvent::Removed {
        name: name.into(),
        addr: ServiceAddr {
            host: "192.168.9.9".into(),
            port: Port::Num(port),
        },
        reason: RemoveReason::Pruned,
    };
    let mut events = core.drain_events();
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        events,
        [
            removed("GONE1", 1),
            removed("GONE1", 2),
            removed("GONE2", 1)
        ]
    );
    let stats = core.stats();
    assert_eq!(stats.pruned, stats_before.pruned + 3);
    assert_eq!(stats.entries, 60_001);
    assert!(core.names.contains_key("GONE1") && !core.names.contains_key("GONE2"));
    check_index(&core).expect("indexes");
}

/// A REGISTER whose clock went back is recorded at the latest time already recorded:
/// the table's refresh order stays the order of refresh times, so the pruning timer
/// (which stops at the first fresh name) and QUERY (which prunes a name's front) miss
/// no stale entry.
#[test]
fn a_register_whose_clock_went_back_keeps_the_refresh_order() {
    let mut core = RegistryCore::new(CoreConfig {
        prune_timeout: Duration::from_secs(10),
        ..CoreConfig::default()
    });
    let t0 = Instant::now();
    let a = ip("10.0.0.1");
    core.register(t0 + Duration::from_secs(5), a, &["x".into()], &Port::Num(1))
        .expect("ok");
    core.register(t0, a, &["y".into()], &Port::Num(1))
        .expect("ok");
    check_index(&core).expect("indexes");
    let ages: Vec<u64> = core
        .entries(t0 + Duration::from_secs(5))
        .into_iter()
        .map(|r| r.age_ms)
        .collect();
    assert_eq!(ages, [0, 0], "Y recorded at X's time");
    assert_eq!(core.prune(t0 + Duration::from_secs(15)), 0);
    assert_eq!(core.prune(t0 + Duration::from_secs(16)), 2);
    check_index(&core).expect("indexes");
}

/// A prune index entry that does not match the table (none should exist; a panic under
/// the server's lock could leave one) is dropped by the next tick and its name indexed
/// where it belongs, so the tick goes on to prune what is stale instead of stopping at
/// it, or never seeing the name again.
#[test]
fn a_prune_index_entry_that_does_not_match_the_table_does_not_stop_pruning() {
    let timeout = Duration::from_secs(240);
    let mut core = RegistryCore::new(CoreConfig::default());
    // Leaves ticks 0 and 1 free for the bad entries below.
    core.next_tick = 2;
    let t0 = Instant::now();
    core.register(t0, ip("10.5.0.1"), &["old".into()], &Port::Num(1))
        .expect("ok");
    core.register(
        t0 + Duration::from_secs(100),
        ip("10.5.0.2"),
        &["fresh".into()],
        &Port::Num(1),
    )
    .expect("ok");
    core.drain_events();
    // Before every real entry: one for a name the table does not have, and the stale
    // name's own entry moved to a tick that is not its oldest server's (its real one
    // gone), so that only re-indexing it gets it pruned.
    let (old_tick, old) = core.by_front.pop_first().expect("OLD indexed");
    assert_eq!(&*old, "OLD");
    core.by_front.insert(0, std::sync::Arc::from("GHOST"));
    core.by_front.insert(1, old);
    assert_eq!(core.prune(t0 + timeout + Duration::from_secs(1)), 1);
    assert_eq!(core.len(), 1);
    assert_eq!(core.by_front.len(), 1, "only FRESH's real entry is left");
    assert!(!core.by_front.contains_key(&old_tick));
    let events = core.drain_events();
    assert!(
        matches!(&events[..], [RegistryEvent::Removed { name, reason: RemoveReason::Pruned, .. }] if name == "OLD"),
        "{events:?}"
    );
}
