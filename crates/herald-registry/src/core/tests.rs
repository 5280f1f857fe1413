//! Tests of the table's indexes, which need the private state: the host index must
//! always agree with the table, and UNREGISTER must visit only the sender's names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{CoreConfig, RegistryCore, RegistryEvent, RemoveReason, Transport};
use crate::proto::{self, Command, Port, ServiceAddr, encode_request};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

/// Rebuilds the indexes from the table and compares them with the ones kept up to
/// date: the creation-order index holds exactly the table's names under their `seq`;
/// the host index has the same hosts (none without entries), the same names with the
/// same counts, and entry counts that add up.
pub(super) fn check_index(core: &RegistryCore) -> Result<(), String> {
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
        for s in &entry.servers {
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
            .iter()
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
