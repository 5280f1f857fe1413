//! The registry's protocol core: the table and request dispatch, with no I/O and an
//! injected clock (every call takes `now`), in the style of quinn-proto.
//!
//! The tokio servers in [`crate::server`] feed it datagrams and TCP requests; tests
//! drive it directly with a fake clock.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use herald_registry::core::{CoreConfig, RegistryCore, Transport};
//! use herald_registry::proto::{encode_request, Command, Port};
//!
//! let mut core = RegistryCore::new(CoreConfig::default());
//! let t0 = Instant::now();
//! let src = "127.0.0.1".parse().unwrap();
//! let mut reply = Vec::new();
//! let reg = encode_request(&Command::Register { aliases: vec!["echo".into()], port: Port::Num(18812) });
//! core.handle(t0, src, Transport::Udp, &reg, &mut reply).unwrap();
//! assert_eq!(reply, b"\x08\x0bOK");
//! let query = encode_request(&Command::Query { name: "ECHO".into() });
//! core.handle(t0, src, Transport::Udp, &query, &mut reply).unwrap();
//! assert_eq!(herald_registry::proto::parse_query_reply(&reply).unwrap()[0].to_string(), "127.0.0.1:18812");
//! // 240 s later without keep-alive the entry is pruned.
//! assert_eq!(core.prune(t0 + Duration::from_secs(241)), 1);
//! ```

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::brine;
use crate::proto::{self, Command, Port, RequestError, ServiceAddr};

/// rpyc's default pruning timeout.
pub const DEFAULT_PRUNE_TIMEOUT: Duration = Duration::from_secs(240);
/// What rpyc clients read for QUERY and REGISTER replies and for LIST over TCP.
pub const MAX_CLIENT_READ: usize = 1500;
/// What rpyc's UDP client reads for a LIST reply (since 5.2.1; the 5.1.0 client, which
/// sends LIST with args `()`, reads [`MAX_CLIENT_READ`]).
pub const MAX_UDP_LIST_READ: usize = 15000;

/// Which transport a request came over (decides how large a LIST reply may be).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP datagram.
    Udp,
    /// TCP connection.
    Tcp,
}

impl Transport {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Most sources whose rate-limit bucket is tracked at once.
pub const MAX_RATE_BUCKETS: usize = 65_536;

/// A per-source token bucket: `per_second` requests on average, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second per source IP.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

/// Behaviour of the table and the guard rails.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Entries not refreshed for this long are stale (rpyc: 240 s).
    pub prune_timeout: Duration,
    /// Answer LIST (rpyc's `allow_listing`; off by default: listing exposes inventory).
    pub allow_listing: bool,
    /// Sources allowed to REGISTER / UNREGISTER (empty = everyone).
    pub register_allow: Vec<IpNet>,
    /// Sources allowed to LIST (empty = everyone); others get `None`.
    pub list_allow: Vec<IpNet>,
    /// Per-source rate limit of all requests (`None` = unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Maximum number of (name, host, port) entries in the table.
    pub max_entries: usize,
    /// Maximum number of entries registered from one host.
    pub max_entries_per_host: usize,
    /// Maximum length of a service name in bytes.
    pub max_name_len: usize,
    /// Maximum length in bytes of a str "port" (the socket path of a unix-socket
    /// server; real ones are at most 108 bytes). The path is stored once per alias, so
    /// without a limit one REGISTER could store its size many times over.
    pub max_port_path_len: usize,
    /// Maximum number of aliases in one REGISTER (as sent, before duplicates are
    /// dropped). rpyc's server reads 1500 bytes, which hold at most about 490 aliases;
    /// services send a handful.
    pub max_aliases_per_register: usize,
    /// Opt-in answer to rpyc issue #568: when a QUERY comes from another host, report
    /// servers registered over loopback at the registry's own address the query
    /// arrived on (when the I/O layer knows it), instead of `127.0.0.1`, which would
    /// point the client at itself. Changes replies, so off by default.
    pub rewrite_loopback: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            prune_timeout: DEFAULT_PRUNE_TIMEOUT,
            allow_listing: false,
            register_allow: Vec::new(),
            list_allow: Vec::new(),
            rate_limit: None,
            max_entries: 100_000,
            max_entries_per_host: 10_000,
            max_name_len: 255,
            max_port_path_len: 255,
            max_aliases_per_register: 512,
            rewrite_loopback: false,
        }
    }
}

/// Which command a request was (what [`RegistryCore::handle`] answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// REGISTER.
    Register,
    /// UNREGISTER.
    Unregister,
    /// QUERY.
    Query,
    /// LIST.
    List,
}

impl CommandKind {
    fn of(cmd: &Command) -> Self {
        match cmd {
            Command::Register { .. } => CommandKind::Register,
            Command::Unregister { .. } => CommandKind::Unregister,
            Command::Query { .. } => CommandKind::Query,
            Command::List { .. } => CommandKind::List,
        }
    }
}

/// Why an entry left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoveReason {
    /// The service sent UNREGISTER.
    Unregistered,
    /// It was not refreshed within the pruning timeout.
    Pruned,
}

/// A change of the table; each real addition and removal is reported exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A new (name, host, port) entry (keep-alives of an existing one are not events).
    Added {
        /// Upper-cased name.
        name: String,
        /// The server.
        addr: ServiceAddr,
    },
    /// An entry was removed.
    Removed {
        /// Upper-cased name.
        name: String,
        /// The server.
        addr: ServiceAddr,
        /// Why.
        reason: RemoveReason,
    },
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Requests received (including dropped ones).
    pub requests: u64,
    /// Replies produced.
    pub replies: u64,
    /// Requests dropped without a reply (malformed, denied, rate-limited, over caps).
    pub dropped: u64,
    /// Of those, dropped by the rate limit.
    pub rate_limited: u64,
    /// Of those, dropped by an allow-list.
    pub denied: u64,
    /// REGISTER requests answered.
    pub registers: u64,
    /// UNREGISTER requests answered.
    pub unregisters: u64,
    /// QUERY requests answered.
    pub queries: u64,
    /// LIST requests answered.
    pub lists: u64,
    /// Replies shortened to fit what rpyc clients read.
    pub capped_replies: u64,
    /// Entries added.
    pub added: u64,
    /// Entries removed by UNREGISTER.
    pub unregistered: u64,
    /// Entries removed as stale.
    pub pruned: u64,
    /// Entries in the table now.
    pub entries: u64,
    /// Sources whose rate-limit bucket is tracked now (at most [`MAX_RATE_BUCKETS`]).
    pub rate_tracked: u64,
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandleError {
    /// The request was malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The source exceeded its rate limit.
    #[error("rate limit exceeded by {source_ip}")]
    RateLimited {
        /// The source.
        source_ip: IpAddr,
    },
    /// The source is not in the allow-list for this command.
    #[error("{command} from {source_ip} denied by the allow-list")]
    Denied {
        /// The command.
        command: &'static str,
        /// The source.
        source_ip: IpAddr,
    },
    /// A service name longer than allowed.
    #[error("service name of {len} bytes exceeds the limit of {max}")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A str port (unix-socket path) longer than allowed.
    #[error("REGISTER port path of {len} bytes exceeds the limit of {max}: {start:?}...")]
    PortPathTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
        /// Its first characters (at most 64 bytes).
        start: String,
    },
    /// A REGISTER with more aliases than allowed.
    #[error("REGISTER from {source_ip} refused: {count} aliases exceed the limit of {max}")]
    TooManyAliases {
        /// The source.
        source_ip: IpAddr,
        /// How many aliases it sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Registering would exceed an entry cap.
    #[error("REGISTER from {source_ip} refused: {what} limit of {max} entries reached")]
    TooManyEntries {
        /// The source.
        source_ip: IpAddr,
        /// `"table"` or `"per-host"`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

/// One row of [`RegistryCore::entries`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableRow {
    /// Upper-cased service name.
    pub name: String,
    /// Recorded host.
    pub host: String,
    /// Port (number or socket path).
    pub port: String,
    /// Time since the last REGISTER of this entry.
    pub age_ms: u64,
}

#[derive(Debug)]
struct Server {
    ip: IpAddr,
    host: Box<str>,
    port: Port,
    last_seen: Instant,
}

impl Server {
    /// Not refreshed for longer than `timeout` at `now`.
    fn is_stale(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.last_seen) > timeout
    }
}

/// A name gets an index of its servers by (host, port) once it has more than this
/// many (fewer are searched one by one, which costs less memory than an index)...
const INDEX_ABOVE: usize = if cfg!(test) { 3 } else { 16 };
/// ...and loses it once it has fewer than this many (not at once: a name going up and
/// down around one size does not build and drop its index each time).
const UNINDEX_BELOW: usize = if cfg!(test) { 2 } else { 8 };

#[derive(Debug)]
struct Name {
    seq: u64,
    /// The servers by refresh tick (from the table-wide [`RegistryCore::next_tick`]):
    /// oldest refresh first. A refresh gives the entry the next tick, which moves it to
    /// the end. Boxed, so that the B-tree's nodes (room for 11 entries each) stay small
    /// for the many names with one or two servers.
    servers: BTreeMap<u64, Box<Server>>,
    /// Each server's tick by (host, port), when there are more than [`INDEX_ABOVE`]
    /// servers: how REGISTER and UNREGISTER find the sender's own entry without
    /// scanning `servers`. Same entries as `servers`.
    ticks: Option<HashMap<(IpAddr, Port), u64>>,
}

impl Name {
    fn new(seq: u64) -> Self {
        Self {
            seq,
            servers: BTreeMap::new(),
            ticks: None,
        }
    }

    /// The tick of the oldest refresh (the key of the name in
    /// [`RegistryCore::by_front`]), `None` when it has no servers.
    fn front(&self) -> Option<u64> {
        self.servers.first_key_value().map(|(tick, _)| *tick)
    }

    fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// How many servers a search for one looks at, at most (what the tests count).
    #[cfg(test)]
    fn search_cost(&self) -> usize {
        if self.ticks.is_some() {
            1
        } else {
            self.servers.len()
        }
    }

    /// The tick of `ip:port`, if it is one of the servers.
    fn find(&self, ip: IpAddr, port: &Port) -> Option<u64> {
        match &self.ticks {
            Some(ticks) => ticks.get(&(ip, port.clone())).copied(),
            None => self
                .servers
                .iter()
                .find(|(_, s)| s.ip == ip && s.port == *port)
                .map(|(tick, _)| *tick),
        }
    }

    /// Whether `ip:port` is one of the servers.
    fn contains(&self, ip: IpAddr, port: &Port) -> bool {
        self.find(ip, port).is_some()
    }

    /// Puts `s` at the end under `tick`, newer than every tick the name holds (and in
    /// the index).
    fn append(&mut self, s: Box<Server>, tick: u64) {
        if let Some(ticks) = &mut self.ticks {
            ticks.insert((s.ip, s.port.clone()), tick);
        }
        self.servers.insert(tick, s);
        if self.ticks.is_none() && self.servers.len() > INDEX_ABOVE {
            self.ticks = Some(
                self.servers
                    .iter()
                    .map(|(tick, s)| ((s.ip, s.port.clone()), *tick))
                    .collect(),
            );
        }
    }

    /// Adds `s` as the freshest server under `tick` (the caller checked that it is not
    /// there yet).
    fn push(&mut self, s: Server, tick: u64) {
        self.append(Box::new(s), tick);
    }

    /// Marks `ip:port` refreshed at `now` and moves it to the end under `tick`; false
    /// if it is not one of the servers.
    fn refresh(&mut self, ip: IpAddr, port: &Port, now: Instant, tick: u64) -> bool {
        let Some(mut s) = self.find(ip, port).and_then(|t| self.servers.remove(&t)) else {
            return false;
        };
        s.last_seen = now;
        // `append` gives it its new tick in the index too.
        self.append(s, tick);
        true
    }

    /// Takes `ip:port` out; the others keep their order.
    fn remove(&mut self, ip: IpAddr, port: &Port) -> Option<Server> {
        let tick = self.find(ip, port)?;
        let s = self.servers.remove(&tick)?;
        Some(*self.unindex(s))
    }

    /// Drops `s`, already taken out of `servers`, from the index; drops the index when
    /// few servers are left, and gives back what it no longer needs.
    fn unindex(&mut self, mut s: Box<Server>) -> Box<Server> {
        if self.servers.len() < UNINDEX_BELOW {
            self.ticks = None;
        }
        if let Some(ticks) = &mut self.ticks {
            let key = (s.ip, s.port);
            ticks.remove(&key);
            s.port = key.1;
            if ticks.capacity() > 64 && ticks.len() < ticks.capacity() / 4 {
                ticks.shrink_to(ticks.len() * 2);
            }
        }
        s
    }

    /// Takes out the stale servers at the front (the oldest refreshes), stopping at the
    /// first fresh one.
    fn take_stale_front(&mut self, now: Instant, timeout: Duration) -> Vec<Server> {
        let mut gone = Vec::new();
        while let Some(first) = self.servers.first_entry() {
            if !first.get().is_stale(now, timeout) {
                break;
            }
            let s = first.remove();
            gone.push(*self.unindex(s));
        }
        gone
    }
}

/// What one host has registered: the index UNREGISTER walks instead of the table.
#[derive(Debug, Default)]
struct HostRecord {
    /// Its entries in the table (what `max_entries_per_host` caps).
    entries: usize,
    /// The names where it has entries, each with how many (one per port); the counts
    /// add up to `entries`.
    names: HashMap<Arc<str>, usize>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The registry table and dispatcher.
#[derive(Debug)]
pub struct RegistryCore {
    config: CoreConfig,
    names: HashMap<Arc<str>, Name>,
    /// Index of `names` by creation order (`Name::seq`): what LIST and `entries` walk.
    by_seq: BTreeMap<u64, Arc<str>>,
    /// Index of `names` by recorded host (only hosts with entries).
    per_host: HashMap<IpAddr, HostRecord>,
    /// Index of `names` by the tick of their oldest refresh (`Name::front`): what the
    /// pruning timer walks, oldest first, stopping at the first name whose oldest
    /// server is fresh. Exact because ticks are table-wide and handed out in the order
    /// of `last_seen` (see `refresh_time`), so every stale server of the table is in a
    /// name whose front is stale.
    by_front: BTreeMap<u64, Arc<str>>,
    entries: usize,
    next_seq: u64,
    /// The refresh tick the next new or refreshed server gets (under any name).
    next_tick: u64,
    /// The latest time a server was recorded as refreshed (see `refresh_time`).
    last_refresh: Option<Instant>,
    buckets: HashMap<IpAddr, Bucket>,
    /// When refilled buckets were last forgotten (see `check_rate`).
    buckets_swept: Option<Instant>,
    events: Vec<RegistryEvent>,
    stats: Stats,
    /// Names looked at by UNREGISTER, LIST and the pruning timer (what the tests assert
    /// on to show that UNREGISTER and LIST visit only the names they answer with, and
    /// the timer only the names with stale servers).
    #[cfg(test)]
    names_visited: usize,
    /// Aliases REGISTER looked at to drop duplicates (what the tests assert on to show
    /// that an oversized REGISTER is refused after bounded work).
    #[cfg(test)]
    aliases_compared: usize,
    /// Servers QUERY and the pruning timer looked at (pruning and sizing), to show that
    /// QUERY's work is bounded by the reply size and the timer's by what it removes.
    #[cfg(test)]
    servers_visited: usize,
    /// Servers REGISTER and UNREGISTER looked at to find the sender's own entry under a
    /// name.
    #[cfg(test)]
    servers_searched: usize,
}

/// A request as the I/O layer hands it over.
enum Input<'a> {
    /// Raw bytes, decoded here.
    Bytes(&'a [u8]),
    /// Already decoded and interpreted.
    Parsed(Result<Command, RequestError>),
}

/// Text from the network (a name, a LIST filter) as it goes into a log line: control
/// characters escaped, so that it cannot forge log lines (a newline) or send terminal
/// escapes.
fn logged(text: &str) -> std::str::EscapeDebug<'_> {
    text.escape_debug()
}

/// A port from the network (a str port is a socket path) as it goes into a log line.
fn logged_port(port: &Port) -> String {
    port.to_string().escape_debug().to_string()
}

/// Normalises a source address: `::ffff:a.b.c.d` becomes `a.b.c.d`.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The host a QUERY reply shows for `s`: `loopback_as` replaces a loopback address.
fn shown_host<'a>(s: &'a Server, loopback_as: Option<&'a str>) -> &'a str {
    match loopback_as {
        Some(h) if s.ip.is_loopback() => h,
        _ => &s.host,
    }
}

/// Moves `name` in the index of names by their oldest refresh from `before` to
/// `after` (its front tick before and after a change of its servers; `None`: it has no
/// servers).
fn refront(
    by_front: &mut BTreeMap<u64, Arc<str>>,
    name: &Arc<str>,
    before: Option<u64>,
    after: Option<u64>,
) {
    if before == after {
        return;
    }
    if let Some(tick) = before {
        by_front.remove(&tick);
    }
    if let Some(tick) = after {
        by_front.insert(tick, Arc::clone(name));
    }
}

fn allowed(list: &[IpNet], ip: IpAddr) -> bool {
    list.is_empty() || list.iter().any(|net| net.contains(&ip))
}

impl RegistryCore {
    /// An empty table.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            names: HashMap::new(),
            by_seq: BTreeMap::new(),
            per_host: HashMap::new(),
            by_front: BTreeMap::new(),
            entries: 0,
            next_seq: 0,
            next_tick: 0,
            last_refresh: None,
            buckets: HashMap::new(),
            buckets_swept: None,
            events: Vec::new(),
            stats: Stats::default(),
            #[cfg(test)]
            names_visited: 0,
            #[cfg(test)]
            aliases_compared: 0,
            #[cfg(test)]
            servers_visited: 0,
            #[cfg(test)]
            servers_searched: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.entries as u64,
            rate_tracked: self.buckets.len() as u64,
            ..self.stats
        }
    }

    /// Counts a request that the I/O layer dropped before it reached [`Self::handle`]
    /// (oversized datagram, incomplete TCP request).
    pub fn record_dropped(&mut self) {
        self.stats.requests += 1;
        self.stats.dropped += 1;
    }

    /// Takes the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<RegistryEvent> {
        std::mem::take(&mut self.events)
    }

    /// Handles one request from `source` received at `now`. On success the reply is in
    /// `reply` (cleared first); on error nothing must be sent.
    ///
    /// `now` should not go back from one call to the next (as [`Instant::now`] does
    /// not): a REGISTER at a `now` earlier than one an earlier REGISTER used is
    /// recorded at that later time, so that the table's refresh order stays the order
    /// of refresh times, which QUERY and [`Self::prune`] rely on to look only at the
    /// stale servers.
    pub fn handle(
        &mut self,
        now: Instant,
        source: IpAddr,
        transport: Transport,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<CommandKind, HandleError> {
        self.handle_via(now, source, None, transport, request, reply)
    }

    /// Like [`Self::handle`], also told the registry's own address the request arrived
    /// on (`local`), which [`CoreConfig::rewrite_loopback`] uses.
    pub fn handle_via(
        &mut self,
        now: Instant,
        source: IpAddr,
        local: Option<IpAddr>,
        transport: Transport,
        request: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<CommandKind, HandleError> {
        self.handle_input(now, source, local, transport, Input::Bytes(request), reply)
    }

    /// Like [`Self::handle_via`] for a request already decoded and interpreted by the
    /// caller ([`proto::parse_request`] or [`proto::parse_request_value`]), so that this
    /// work need not be done again while the table is locked (the TCP server decodes
    /// each request anyway to find where it ends). Answers exactly as `handle_via`
    /// answers the same bytes.
    pub fn handle_parsed_via(
        &mut self,
        now: Instant,
        source: IpAddr,
        local: Option<IpAddr>,
        transport: Transport,
        request: Result<Command, RequestError>,
        reply: &mut Vec<u8>,
    ) -> Result<CommandKind, HandleError> {
        self.handle_input(now, source, local, transport, Input::Parsed(request), reply)
    }

    fn handle_input(
        &mut self,
        now: Instant,
        source: IpAddr,
        local: Option<IpAddr>,
        transport: Transport,
        request: Input<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<CommandKind, HandleError> {
        reply.clear();
        self.stats.requests += 1;
        let source = normalize_ip(source);
        let loopback_as = local
            .map(normalize_ip)
            .filter(|l| {
                self.config.rewrite_loopback
                    && !source.is_loopback()
                    && !l.is_loopback()
                    && !l.is_unspecified()
            })
            .map(|l| l.to_string());
        let result = self.dispatch(
            now,
            source,
            loopback_as.as_deref(),
            transport,
            request,
            reply,
        );
        match &result {
            Ok(_) => self.stats.replies += 1,
            Err(e) => {
                reply.clear();
                self.stats.dropped += 1;
                match e {
                    HandleError::RateLimited { .. } => self.stats.rate_limited += 1,
                    HandleError::Denied { .. } => self.stats.denied += 1,
                    _ => {}
                }
            }
        }
        result
    }

    fn dispatch(
        &mut self,
        now: Instant,
        source: IpAddr,
        loopback_as: Option<&str>,
        transport: Transport,
        request: Input<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<CommandKind, HandleError> {
        self.check_rate(now, source)?;
        let parsed = match request {
            Input::Bytes(request) => {
                // Fast path for the common case: a QUERY exactly as rpyc clients encode
                // it, read in place without building a value tree.
                if let Some(name) = proto::canonical_query_name(request) {
                    self.query(now, name, loopback_as, reply);
                    self.stats.queries += 1;
                    return Ok(CommandKind::Query);
                }
                proto::parse_request(request).map(|(cmd, _trailing_ignored)| cmd)
            }
            Input::Parsed(parsed) => parsed,
        };
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(RequestError::BytesName(_)) => {
                // rpyc upper-cases a bytes name, which never matches a str key.
                self.stats.queries += 1;
                reply.extend_from_slice(&proto::REPLY_EMPTY);
                return Ok(CommandKind::Query);
            }
            Err(e) => return Err(e.into()),
        };
        match &cmd {
            Command::Register { aliases, port } => {
                self.register(now, source, aliases, port)?;
                self.stats.registers += 1;
                reply.extend_from_slice(&proto::REPLY_OK);
            }
            Command::Unregister { port } => {
                if !allowed(&self.config.register_allow, source) {
                    return Err(HandleError::Denied {
                        command: "UNREGISTER",
                        source_ip: source,
                    });
                }
                self.unregister(source, port);
                self.stats.unregisters += 1;
                reply.extend_from_slice(&proto::REPLY_OK);
            }
            Command::Query { name } => {
                self.query(now, name, loopback_as, reply);
                self.stats.queries += 1;
            }
            Command::List { filter, legacy } => {
                self.list(source, transport, *legacy, filter.as_deref(), reply);
                self.stats.lists += 1;
            }
        }
        Ok(CommandKind::of(&cmd))
    }

    fn check_rate(&mut self, now: Instant, source: IpAddr) -> Result<(), HandleError> {
        let Some(limit) = self.config.rate_limit else {
            return Ok(());
        };
        if self.buckets.len() >= MAX_RATE_BUCKETS && !self.buckets.contains_key(&source) {
            // Forget sources whose bucket has refilled (they lose nothing), at most once a
            // second: under a flood from more sources than that, a scan per request
            // would cost more than the limiter saves.
            let sweep_due = self
                .buckets_swept
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if sweep_due {
                self.buckets_swept = Some(now);
                let refill = Duration::try_from_secs_f64(limit.burst / limit.per_second.max(1e-9))
                    .unwrap_or(Duration::MAX);
                self.buckets
                    .retain(|_, b| now.saturating_duration_since(b.last) < refill);
            }
            // Still full: one tracked source gives way (its next request starts with a
            // full bucket), so the table stays bounded.
            if self.buckets.len() >= MAX_RATE_BUCKETS
                && let Some(evicted) = self.buckets.keys().next().copied()
            {
                self.buckets.remove(&evicted);
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(HandleError::RateLimited { source_ip: source })
        }
    }

    /// Registers (or refreshes) `source:port` under every alias. Under each name the
    /// existing entry is found through the name's index of its servers (a name with
    /// few servers is searched one by one), so a keep-alive costs the same under a
    /// name with 50 000 servers as under one with a handful.
    pub fn register(
        &mut self,
        now: Instant,
        source: IpAddr,
        aliases: &[String],
        port: &Port,
    ) -> Result<(), HandleError> {
        let source = normalize_ip(source);
        if !allowed(&self.config.register_allow, source) {
            return Err(HandleError::Denied {
                command: "REGISTER",
                source_ip: source,
            });
        }
        let max_aliases = self.config.max_aliases_per_register;
        if aliases.len() > max_aliases {
            return Err(HandleError::TooManyAliases {
                source_ip: source,
                count: aliases.len(),
                max: max_aliases,
            });
        }
        if let Port::Path(path) = port
            && path.len() > self.config.max_port_path_len
        {
            let mut cut = path.len().min(64);
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            return Err(HandleError::PortPathTooLong {
                len: path.len(),
                max: self.config.max_port_path_len,
                start: path[..cut].to_owned(),
            });
        }
        if let Some(a) = aliases.iter().find(|a| a.len() > self.config.max_name_len) {
            return Err(HandleError::NameTooLong {
                len: a.len(),
                max: self.config.max_name_len,
            });
        }
        // Upper-cased, duplicates dropped, in the order sent. Each distinct name is an
        // entry of this host unless it already holds it, so more distinct names than
        // one host may hold can never be accepted: stop there.
        let max_per_host = self.config.max_entries_per_host;
        let mut upper: Vec<String> = Vec::with_capacity(aliases.len().min(max_per_host + 1));
        let mut seen: HashSet<String> = HashSet::with_capacity(upper.capacity());
        for a in aliases {
            #[cfg(test)]
            {
                self.aliases_compared += 1;
            }
            let u = a.to_uppercase();
            if !seen.contains(&u) {
                seen.insert(u.clone());
                upper.push(u);
                if upper.len() > max_per_host {
                    return Err(HandleError::TooManyEntries {
                        source_ip: source,
                        what: "per-host",
                        max: max_per_host,
                    });
                }
            }
        }
        let new = upper
            .iter()
            .filter(|n| {
                !self
                    .names
                    .get(n.as_str())
                    .is_some_and(|e| e.contains(source, port))
            })
            .count();
        #[cfg(test)]
        {
            self.servers_searched += upper
                .iter()
                .filter_map(|n| self.names.get(n.as_str()))
                .map(Name::search_cost)
                .sum::<usize>();
        }
        if self.entries + new > self.config.max_entries {
            return Err(HandleError::TooManyEntries {
                source_ip: source,
                what: "table",
                max: self.config.max_entries,
            });
        }
        let host_count = self.per_host.get(&source).map_or(0, |h| h.entries);
        if host_count + new > self.config.max_entries_per_host {
            return Err(HandleError::TooManyEntries {
                source_ip: source,
                what: "per-host",
                max: self.config.max_entries_per_host,
            });
        }
        let now = self.refresh_time(now);
        for name in upper {
            let tick = self.next_tick;
            self.next_tick += 1;
            let (key, entry) = match self.names.entry(Arc::from(name.as_str())) {
                Entry::Occupied(o) => (Arc::clone(o.key()), o.into_mut()),
                Entry::Vacant(v) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.by_seq.insert(seq, Arc::clone(v.key()));
                    (Arc::clone(v.key()), v.insert(Name::new(seq)))
                }
            };
            #[cfg(test)]
            {
                self.servers_searched += entry.search_cost();
            }
            let before = entry.front();
            let refreshed = entry.refresh(source, port, now, tick);
            if !refreshed {
                entry.push(
                    Server {
                        ip: source,
                        host: source.to_string().into(),
                        port: port.clone(),
                        last_seen: now,
                    },
                    tick,
                );
            }
            refront(&mut self.by_front, &key, before, entry.front());
            if refreshed {
                tracing::trace!(name = %logged(&name), host = %source, port = %logged_port(port), "keep-alive");
            } else {
                self.entries += 1;
                let host_record = self.per_host.entry(source).or_default();
                host_record.entries += 1;
                *host_record.names.entry(key).or_insert(0) += 1;
                self.stats.added += 1;
                // Names and socket paths come from the network: escaped, so that one
                // cannot forge log lines (a newline) or send terminal escapes.
                tracing::info!(
                    name = %logged(&name),
                    host = %source,
                    port = %logged_port(port),
                    "service registered"
                );
                self.events.push(RegistryEvent::Added {
                    name,
                    addr: ServiceAddr {
                        host: source.to_string(),
                        port: port.clone(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Accounts for `s`, already taken out of `name`'s servers: counters, the host
    /// index, the log and the event.
    fn forget(&mut self, name: &str, s: &Server, reason: RemoveReason) {
        self.entries -= 1;
        if let Some(h) = self.per_host.get_mut(&s.ip) {
            h.entries -= 1;
            if let Some(n) = h.names.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    h.names.remove(name);
                }
            }
            if h.entries == 0 {
                self.per_host.remove(&s.ip);
            }
        }
        match reason {
            RemoveReason::Unregistered => self.stats.unregistered += 1,
            RemoveReason::Pruned => self.stats.pruned += 1,
        }
        tracing::info!(
            name = %logged(name),
            host = %s.host,
            port = %logged_port(&s.port),
            ?reason,
            "service removed"
        );
        self.events.push(RegistryEvent::Removed {
            name: name.to_owned(),
            addr: ServiceAddr {
                host: s.host.to_string(),
                port: s.port.clone(),
            },
            reason,
        });
    }

    /// Removes `source:port` from every name; returns how many entries went. Only the
    /// names where `source` has entries are looked at (at most
    /// [`CoreConfig::max_entries_per_host`]), found through the host index, and in
    /// each the entry is found through the name's index of its servers.
    pub fn unregister(&mut self, source: IpAddr, port: &Port) -> usize {
        let source = normalize_ip(source);
        let Some(host_record) = self.per_host.get(&source) else {
            return 0;
        };
        let mut removed = Vec::new();
        for name in host_record.names.keys() {
            #[cfg(test)]
            {
                self.names_visited += 1;
            }
            let Some(entry) = self.names.get_mut(&**name) else {
                continue;
            };
            #[cfg(test)]
            {
                self.servers_searched += entry.search_cost();
            }
            let before = entry.front();
            let Some(s) = entry.remove(source, port) else {
                continue;
            };
            refront(&mut self.by_front, name, before, entry.front());
            if entry.is_empty() {
                self.by_seq.remove(&entry.seq);
                self.names.remove(&**name);
            }
            removed.push((Arc::clone(name), s));
        }
        let n = removed.len();
        for (name, s) in removed {
            self.forget(&name, &s, RemoveReason::Unregistered);
        }
        n
    }

    /// Removes every stale entry (and names left empty); returns how many went.
    ///
    /// Looks only at the names with stale servers, oldest refresh first, and in each
    /// only at its stale servers and the first fresh one, through the index of names by
    /// their oldest refresh; the first name whose oldest server is fresh ends the walk.
    /// The work is O(log n) per entry removed, and O(1) when none is stale, whatever
    /// the size of the table.
    pub fn prune(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some((tick, name)) = self
            .by_front
            .first_key_value()
            .map(|(tick, n)| (*tick, Arc::clone(n)))
        {
            #[cfg(test)]
            {
                self.names_visited += 1;
            }
            // Every path keeps the indexes exact (the model test checks them after each
            // step), but an entry that does not match the table (left by a panic under
            // the server's lock, which keeps serving after one) would otherwise stay
            // first and stop every later tick: drop it, index the name where it
            // belongs, and go on.
            let indexed = self.names.get(&*name).is_some_and(|entry| {
                entry.front() == Some(tick) && self.by_seq.contains_key(&entry.seq)
            });
            if !indexed {
                tracing::error!(name = %logged(&name), tick, "registry prune index entry does not match the table; re-indexed");
                self.by_front.remove(&tick);
                if let Some(entry) = self.names.get(&*name) {
                    self.by_seq
                        .entry(entry.seq)
                        .or_insert_with(|| Arc::clone(&name));
                    if let Some(front) = entry.front() {
                        self.by_front
                            .entry(front)
                            .or_insert_with(|| Arc::clone(&name));
                    }
                }
                continue;
            }
            match self.prune_name(&name, now) {
                0 => break,
                n => removed += n,
            }
        }
        removed
    }

    /// Removes the stale servers of `name` (a prefix of its refresh order), and the
    /// name once it has none left; returns how many went.
    fn prune_name(&mut self, name: &str, now: Instant) -> usize {
        let timeout = self.config.prune_timeout;
        let Some(entry) = self.names.get_mut(name) else {
            return 0;
        };
        // The name as the table keys it (shared, not copied), found by creation order.
        let Some(key) = self.by_seq.get(&entry.seq) else {
            return 0;
        };
        let before = entry.front();
        let removed = entry.take_stale_front(now, timeout);
        #[cfg(test)]
        {
            self.servers_visited += removed.len() + usize::from(!entry.is_empty());
        }
        if removed.is_empty() {
            return 0;
        }
        let key = Arc::clone(key);
        refront(&mut self.by_front, &key, before, entry.front());
        if entry.is_empty() {
            self.by_seq.remove(&entry.seq);
            self.names.remove(name);
        }
        let n = removed.len();
        for s in removed {
            self.forget(&key, &s, RemoveReason::Pruned);
        }
        n
    }

    /// The time a REGISTER at `now` records: `now`, or the latest time recorded before
    /// if `now` is earlier (a clock that went back). Refresh ticks are handed out in
    /// call order, so this keeps `last_seen` from ever decreasing in tick order.
    fn refresh_time(&mut self, now: Instant) -> Instant {
        let now = self.last_refresh.map_or(now, |last| last.max(now));
        self.last_refresh = Some(now);
        now
    }

    /// Answers QUERY into `reply`: stale entries of the name are pruned first (like
    /// rpyc), then the rest are encoded oldest refresh first, keeping the freshest ones
    /// if they do not all fit in [`MAX_CLIENT_READ`] bytes.
    ///
    /// The work is bounded by the reply size, not by the number of servers under the
    /// name: servers are kept oldest refresh first, so the stale ones are a prefix (the
    /// clock passed in never goes back), and the sizes are summed arithmetically from
    /// the freshest end until the reply is full.
    fn query(&mut self, now: Instant, name: &str, loopback_as: Option<&str>, reply: &mut Vec<u8>) {
        let key = if name
            .bytes()
            .all(|b| !b.is_ascii_lowercase() && b.is_ascii())
        {
            std::borrow::Cow::Borrowed(name)
        } else {
            std::borrow::Cow::Owned(name.to_uppercase())
        };
        self.prune_name(&key, now);
        let Some(entry) = self.names.get(key.as_ref()) else {
            reply.extend_from_slice(&proto::REPLY_EMPTY);
            return;
        };
        let servers = &entry.servers;
        // From the freshest: `keep` counts those that fit with room for the largest
        // tuple header (5 bytes); the walk ends once the sizes add up to more than the
        // cap, since then the whole reply cannot fit.
        let mut total = 0;
        let mut keep = 0;
        // The tick of the oldest server kept.
        let mut first_kept = 0;
        let mut keeping = true;
        let mut walked_all = true;
        for (tick, s) in servers.iter().rev() {
            #[cfg(test)]
            {
                self.servers_visited += 1;
            }
            let size = proto::encoded_addr_len(shown_host(s, loopback_as), &s.port);
            if keeping && total + size + 5 <= MAX_CLIENT_READ {
                keep += 1;
                first_kept = *tick;
            } else {
                keeping = false;
            }
            total += size;
            if total > MAX_CLIENT_READ {
                walked_all = false;
                break;
            }
        }
        let whole = walked_all && brine::tuple_header_len(servers.len()) + total <= MAX_CLIENT_READ;
        let (shown, from) = if whole {
            (servers.len(), 0)
        } else {
            (keep, first_kept)
        };
        brine::encode_tuple_header(shown, reply);
        for s in servers.range(from..).map(|(_, s)| s).take(shown) {
            proto::encode_addr(shown_host(s, loopback_as), &s.port, reply);
        }
        if !whole {
            self.stats.capped_replies += 1;
            tracing::warn!(
                name = %logged(&key),
                servers = servers.len(),
                kept = keep,
                "QUERY reply capped to {MAX_CLIENT_READ} bytes (what rpyc clients read); oldest entries left out"
            );
        }
    }

    fn list(
        &mut self,
        source: IpAddr,
        transport: Transport,
        legacy: bool,
        filter: Option<&str>,
        reply: &mut Vec<u8>,
    ) {
        if !self.config.allow_listing || !allowed(&self.config.list_allow, source) {
            reply.extend_from_slice(&proto::REPLY_NONE);
            return;
        }
        // rpyc 5.1.0's UDP client (the `()` form) read 1500 bytes; 15000 came in 5.2.1.
        let cap = match (transport, legacy) {
            (Transport::Udp, false) => MAX_UDP_LIST_READ,
            (Transport::Udp, true) | (Transport::Tcp, _) => MAX_CLIENT_READ,
        };
        // Names in creation order, until the reply is full: without a filter the work
        // is bounded by the reply size, not by the table. A filter names a host as the
        // table shows it (the canonical text of a normalised address), so its names
        // are those of that host's index record, sorted by creation; any other
        // spelling matches nothing. Either way no name outside the answer is visited.
        let of_host: Option<Vec<&Arc<str>>> = filter.map(|h| {
            let ip = h.parse::<IpAddr>().ok().filter(|ip| ip.to_string() == h);
            let mut named: Vec<(u64, &Arc<str>)> = ip
                .and_then(|ip| self.per_host.get(&ip))
                .map(|record| {
                    record
                        .names
                        .keys()
                        .filter_map(|n| self.names.get(&**n).map(|e| (e.seq, n)))
                        .collect()
                })
                .unwrap_or_default();
            named.sort_unstable_by_key(|(seq, _)| *seq);
            named.into_iter().map(|(_, n)| n).collect()
        });
        let in_order: Box<dyn Iterator<Item = &Arc<str>> + '_> = match &of_host {
            Some(names) => Box::new(names.iter().copied()),
            None => Box::new(self.by_seq.values()),
        };
        let mut body = Vec::new();
        let mut count = 0;
        for name in in_order {
            #[cfg(test)]
            {
                self.names_visited += 1;
            }
            let before = body.len();
            brine::encode_str(name, &mut body);
            if body.len() + 5 > cap {
                body.truncate(before);
                self.stats.capped_replies += 1;
                match filter {
                    None => tracing::warn!(
                        names = self.names.len(),
                        kept = count,
                        transport = transport.as_str(),
                        "LIST reply capped to {cap} bytes (what rpyc clients read)"
                    ),
                    // The names of that host past the cap are not counted.
                    Some(h) => tracing::warn!(
                        filter = %logged(h),
                        kept = count,
                        transport = transport.as_str(),
                        "LIST reply capped to {cap} bytes (what rpyc clients read)"
                    ),
                }
                break;
            }
            count += 1;
        }
        brine::encode_tuple_header(count, reply);
        reply.extend_from_slice(&body);
    }

    /// A copy of the table, names in creation order, servers oldest refresh first.
    pub fn entries(&self, now: Instant) -> Vec<TableRow> {
        self.by_seq
            .values()
            .filter_map(|name| Some((name, self.names.get(&**name)?)))
            .flat_map(|(name, e)| {
                e.servers.values().map(move |s| TableRow {
                    name: name.to_string(),
                    host: s.host.to_string(),
                    port: s.port.to_string(),
                    age_ms: u64::try_from(now.saturating_duration_since(s.last_seen).as_millis())
                        .unwrap_or(u64::MAX),
                })
            })
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests;
