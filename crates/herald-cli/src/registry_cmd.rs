//! `herald registry`: an rpyc-compatible registry server and client.
//!
//! `serve` replaces `rpyc_registry`; `register`, `discover`, `list` and `unregister`
//! talk to any rpyc-compatible registry (Herald's or rpyc's) over UDP (broadcast by
//! default) or TCP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use herald_registry::core::{CoreConfig, RateLimit, RemoveReason};
use herald_registry::{
    EventRecvError, Port, Registrar, RegistrarConfig, RegistryClient, RegistryConfig,
    RegistryEvent, RegistryServer, ServiceAddr, TcpRegistryClient, UdpRegistryClient,
};
use serde_json::json;

use crate::shutdown::stop_signal;
use crate::text::Escaped;
use crate::{bad_input, values};

/// `herald registry ...`
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry (UDP and TCP on one port, like `rpyc_registry` but both at once).
    Serve(ServeArgs),
    /// Register a service's port under one or more names.
    Register(RegisterArgs),
    /// Show the servers registered under a name.
    Discover(DiscoverArgs),
    /// List registered names (the registry must allow listing).
    List(ListArgs),
    /// Remove this host's registrations of a port.
    Unregister(UnregisterArgs),
}

/// Options of `herald registry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind (`::` for dual-stack).
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port for both UDP and TCP.
    #[arg(long, default_value_t = herald_registry::REGISTRY_PORT)]
    port: u16,
    /// Serve UDP only.
    #[arg(long, conflicts_with = "tcp_only")]
    udp_only: bool,
    /// Serve TCP only.
    #[arg(long)]
    tcp_only: bool,
    /// Seconds after which an entry that was not refreshed is removed (more than 0, at
    /// most a year; fractions allowed).
    #[arg(
        long,
        default_value = "240",
        value_name = "S",
        value_parser = values::seconds,
        allow_negative_numbers = true,
    )]
    prune_timeout: Duration,
    /// Answer LIST requests (off by default: listing exposes the service inventory).
    #[arg(long)]
    listing: bool,
    /// Only these networks may REGISTER / UNREGISTER (repeatable; default: anyone).
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<String>,
    /// Only these networks may LIST (repeatable; default: anyone, when --listing).
    #[arg(long = "list-allow", value_name = "CIDR")]
    list_allow: Vec<String>,
    /// Per-source limit of requests per second (burst: twice that, at least 1); more
    /// than 0, at most 1e9, fractions allowed.
    #[arg(long, value_name = "N", value_parser = values::per_second, allow_negative_numbers = true)]
    rate_limit: Option<f64>,
    /// Maximum number of entries in the table.
    #[arg(long, default_value_t = 100_000)]
    max_entries: usize,
    /// Answer remote QUERYs for services registered over loopback with the registry's
    /// own address instead of 127.0.0.1 (rpyc issue #568; changes replies, so opt-in;
    /// over UDP only when --host is a specific address).
    #[arg(long)]
    rewrite_loopback: bool,
    /// Print events as JSON lines.
    #[arg(long)]
    json: bool,
}

/// Where the registry is and how to reach it.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Registry address, HOST or HOST:PORT (default: UDP broadcast to
    /// 255.255.255.255:18811; with --tcp, 127.0.0.1:18811).
    #[arg(long, value_name = "HOST[:PORT]")]
    registry: Option<String>,
    /// Use TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Seconds to wait for the reply (more than 0, at most a year; fractions allowed).
    #[arg(
        long,
        default_value = "2",
        value_name = "S",
        value_parser = values::seconds,
        allow_negative_numbers = true,
    )]
    timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `herald registry register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Service names (upper-cased by the registry).
    #[arg(required = true, value_name = "ALIAS")]
    aliases: Vec<String>,
    /// The service's TCP port (or a unix socket path, like rpyc's unix-socket servers).
    #[arg(long)]
    port: String,
    /// Keep the registration alive (re-register every --interval) until Ctrl-C, then
    /// unregister; a failed first REGISTER is reported and retried every second.
    #[arg(long)]
    keepalive: bool,
    /// Keep-alive interval in seconds (more than 0, at most a year; fractions allowed).
    #[arg(
        long,
        default_value = "60",
        value_name = "S",
        value_parser = values::seconds,
        allow_negative_numbers = true,
    )]
    interval: Duration,
    #[command(flatten)]
    target: TargetArgs,
}

/// Options of `herald registry discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Service name (any case).
    name: String,
    #[command(flatten)]
    target: TargetArgs,
}

/// Options of `herald registry list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only names with a server on this host.
    #[arg(long, value_name = "HOST")]
    filter: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

/// Options of `herald registry unregister`.
#[derive(Debug, Args)]
pub struct UnregisterArgs {
    /// The port to remove (number or unix socket path).
    #[arg(long)]
    port: String,
    #[command(flatten)]
    target: TargetArgs,
}

/// Runs a `herald registry` subcommand.
///
/// With `--json`, a failure is also printed on stdout as
/// `{"error": KIND, "description": TEXT}` (as the mesh subcommands do), so that a
/// script reading JSON lines sees it; the message still goes to stderr and the exit
/// status is the same.
pub async fn run(cmd: RegistryCommand) -> anyhow::Result<()> {
    let json = match &cmd {
        RegistryCommand::Serve(a) => a.json,
        RegistryCommand::Register(RegisterArgs { target, .. })
        | RegistryCommand::Discover(DiscoverArgs { target, .. })
        | RegistryCommand::List(ListArgs { target, .. })
        | RegistryCommand::Unregister(UnregisterArgs { target, .. }) => target.json,
    };
    let result = match cmd {
        RegistryCommand::Serve(args) => serve(args).await,
        RegistryCommand::Register(args) => register(args).await,
        RegistryCommand::Discover(args) => discover(args).await,
        RegistryCommand::List(args) => list(args).await,
        RegistryCommand::Unregister(args) => unregister(args).await,
    };
    if json && let Err(e) = &result {
        crate::print_failure_line(error_json(e));
    }
    result
}

/// `{"error": KIND, "description": TEXT}` for a failed registry subcommand: KIND names
/// what went wrong (`BadInput`, `Timeout`, `Io`, `BadReply`, `NotOk`, `Bind`,
/// `NothingToServe`, `NoCommonPort`, or `Error`), TEXT is the one-line message.
fn error_json(e: &anyhow::Error) -> serde_json::Value {
    use herald_registry::{ClientError, ServerError};
    let kind = if e.downcast_ref::<crate::BadInput>().is_some() {
        "BadInput"
    } else if let Some(c) = e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
        match c {
            ClientError::Io { .. } => "Io",
            ClientError::Timeout { .. } => "Timeout",
            ClientError::BadReply { .. } => "BadReply",
            ClientError::NotOk { .. } => "NotOk",
        }
    } else if let Some(s) = e.chain().find_map(|c| c.downcast_ref::<ServerError>()) {
        match s {
            ServerError::Bind { .. } => "Bind",
            ServerError::NothingToServe => "NothingToServe",
            ServerError::NoCommonPort { .. } => "NoCommonPort",
        }
    } else {
        "Error"
    };
    json!({ "error": kind, "description": crate::error::one_line(e) })
}

fn parse_cidrs(list: &[String], flag: &str) -> anyhow::Result<Vec<herald_registry::IpNet>> {
    list.iter()
        .map(|s| {
            s.parse::<herald_registry::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(herald_registry::IpNet::from))
                .map_err(|_| {
                    bad_input(anyhow!("{flag}: {s:?} is not a CIDR network or IP address"))
                })
        })
        .collect()
}

fn parse_port(s: &str) -> anyhow::Result<Port> {
    if let Ok(n) = s.parse::<u16>() {
        return Ok(Port::from(n));
    }
    if s.contains('/') {
        return Ok(Port::Path(s.to_owned()));
    }
    Err(bad_input(anyhow!(
        "--port: {s:?} is neither a port number (0-65535) nor a unix socket path"
    )))
}

fn port_json(p: &Port) -> serde_json::Value {
    match p {
        Port::Num(n) => json!(n),
        Port::Path(s) => json!(s),
    }
}

fn addr_json(a: &ServiceAddr) -> serde_json::Value {
    json!({ "host": a.host, "port": port_json(&a.port) })
}

fn unregistered_json(port: &Port, registry: SocketAddr) -> serde_json::Value {
    json!({ "unregistered": port_json(port), "registry": registry.to_string() })
}

/// Prints one result: `json` with `--json`, else the human-readable `text`.
fn print_result(as_json: bool, json: serde_json::Value, text: std::fmt::Arguments<'_>) {
    if as_json {
        outln!("{json}");
    } else {
        outln!("{text}");
    }
}

/// Resolves `HOST`, `HOST:PORT` or `[V6]:PORT`.
async fn resolve(spec: &str) -> anyhow::Result<SocketAddr> {
    let default_port = herald_registry::REGISTRY_PORT;
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = spec.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match spec.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| bad_input(anyhow!("--registry: bad port {p:?} in {spec:?}")))?;
            (h, port)
        }
        None => (spec, default_port),
    };
    if host.is_empty() {
        return Err(bad_input(anyhow!("--registry: empty host in {spec:?}")));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| bad_input(anyhow!("--registry: cannot resolve {host:?}: {e}")))?;
    addrs
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| bad_input(anyhow!("--registry: {host:?} has no IPv4 address")))
}

async fn client(t: &TargetArgs) -> anyhow::Result<RegistryClient> {
    let addr = match &t.registry {
        Some(spec) => resolve(spec).await?,
        None => {
            let ip = if t.tcp {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::BROADCAST
            };
            SocketAddr::new(IpAddr::V4(ip), herald_registry::REGISTRY_PORT)
        }
    };
    Ok(if t.tcp {
        TcpRegistryClient::new(addr).with_timeout(t.timeout).into()
    } else {
        UdpRegistryClient::new(addr).with_timeout(t.timeout).into()
    })
}

fn print_event(ev: &RegistryEvent, as_json: bool) {
    let (kind, name, addr, reason) = match ev {
        RegistryEvent::Added { name, addr } => ("added", name, addr, None),
        RegistryEvent::Removed { name, addr, reason } => (
            "removed",
            name,
            addr,
            Some(match reason {
                RemoveReason::Unregistered => "unregistered",
                RemoveReason::Pruned => "pruned",
            }),
        ),
    };
    if as_json {
        let mut v = json!({ "event": kind, "name": name, "host": addr.host, "port": port_json(&addr.port) });
        if let (Some(r), Some(obj)) = (reason, v.as_object_mut()) {
            obj.insert("reason".into(), json!(r));
        }
        outln!("{v}");
    } else {
        // Names and str ports come from whoever sent REGISTER: escaped, so that they
        // cannot forge lines or reach the terminal.
        let (name, addr) = (Escaped(name), Escaped(addr));
        match reason {
            Some(r) => outln!("removed {name} {addr} ({r})"),
            None => outln!("added {name} {addr}"),
        }
    }
}

/// Reports events lost because the output fell behind (the channel holds 1024 batches
/// of up to 128 events, so this takes a reader that stalls, e.g. a full pipe).
fn print_lag(missed: u64, as_json: bool) {
    print_result(
        as_json,
        json!({ "event": "lagged", "missed": missed }),
        format_args!(
            "lagged: missed {missed} events; the lines above no longer show every table change"
        ),
    );
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // `values::per_second` bounds the rate, so the burst stays finite.
    let rate_limit = args.rate_limit.map(|r| RateLimit {
        per_second: r,
        burst: (2.0 * r).max(1.0),
    });
    let config = RegistryConfig {
        host: args.host,
        port: args.port,
        udp: !args.tcp_only,
        tcp: !args.udp_only,
        core: CoreConfig {
            prune_timeout: args.prune_timeout,
            allow_listing: args.listing,
            register_allow: parse_cidrs(&args.allow, "--allow")?,
            list_allow: parse_cidrs(&args.list_allow, "--list-allow")?,
            rate_limit,
            max_entries: args.max_entries,
            rewrite_loopback: args.rewrite_loopback,
            ..CoreConfig::default()
        },
        ..RegistryConfig::default()
    };
    // Before "listening" is printed: a SIGTERM right after it still stops gracefully.
    let stop = stop_signal()?;
    let server = RegistryServer::bind(config)
        .await
        .context("starting the registry")?;
    let mut events = server.events();
    let show = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    let (udp, tcp) = (show(server.udp_addr()), show(server.tcp_addr()));
    print_result(
        args.json,
        json!({ "event": "listening", "udp": udp, "tcp": tcp, "listing": args.listing }),
        format_args!(
            "registry listening on udp {} tcp {} (listing {})",
            udp.as_deref().unwrap_or("off"),
            tcp.as_deref().unwrap_or("off"),
            if args.listing { "on" } else { "off" }
        ),
    );
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => print_event(&ev, args.json),
                Err(EventRecvError::Lagged { missed }) => print_lag(missed, args.json),
                Err(EventRecvError::Closed) => break,
            },
            () = &mut stop => break,
        }
    }
    let stats = server.stats();
    server.shutdown().await;
    if args.json {
        outln!("{}", json!({ "event": "stopped", "stats": stats }));
    }
    Ok(())
}

async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let port = parse_port(&args.port)?;
    // With --keepalive, Ctrl-C is handled from before the first REGISTER: whenever it
    // comes, the registration is removed (the registry may have it before we see a reply).
    let mut stop = if args.keepalive {
        Some(Box::pin(stop_signal()?))
    } else {
        None
    };
    let client = client(&args.target).await?;
    let target = client.target();
    let first = client.register(&args.aliases, port.clone());
    let first = match stop.as_mut() {
        Some(stop) => tokio::select! {
            r = first => Some(r),
            () = stop => None,
        },
        None => Some(first.await),
    };
    let Some(first) = first else {
        client
            .unregister(port.clone())
            .await
            .with_context(|| format!("interrupted; unregistering from {target}"))?;
        print_result(
            args.target.json,
            unregistered_json(&port, target),
            format_args!("interrupted; unregistered port {port} from {target}"),
        );
        return Ok(());
    };
    let registered = || {
        print_result(
            args.target.json,
            json!({ "registered": true, "aliases": args.aliases, "port": port_json(&port), "registry": target.to_string() }),
            format_args!(
                "registered {} port {port} with {target}",
                args.aliases.join(" ")
            ),
        );
    };
    let Some(mut stop) = stop else {
        first.with_context(|| format!("registering with {target}"))?;
        registered();
        return Ok(());
    };
    // With --keepalive a failed first REGISTER is not the end: the registry may not be
    // up yet, and the registrar retries until it answers (as rpyc's ThreadedServer and
    // Herald's Registrar do). "registered" is printed once a REGISTER succeeded.
    let first_ok = match first {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "herald: warning: registering with {target} failed: {}; retrying until it answers",
                crate::error::one_line(&anyhow::Error::new(e))
            );
            false
        }
    };
    if first_ok {
        registered();
    }
    let registrar = Registrar::spawn(
        client,
        RegistrarConfig::new(args.aliases.clone(), port.clone()).with_interval(args.interval),
    );
    let stopped = !first_ok && {
        let became_registered = async {
            while !registrar.wait_registered(Duration::from_secs(3600)).await {
                if !registrar.is_running() {
                    // Nothing will register any more (the task ended): wait for the
                    // stop signal instead of spinning on a closed state channel.
                    tracing::warn!("the registrar stopped before a REGISTER succeeded");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = became_registered => {
                registered();
                false
            }
            () = &mut stop => true,
        }
    };
    if !stopped {
        stop.await;
    }
    registrar
        .shutdown()
        .await
        .with_context(|| format!("unregistering from {target}"))?;
    print_result(
        args.target.json,
        unregistered_json(&port, target),
        format_args!("unregistered port {port} from {target}"),
    );
    Ok(())
}

async fn discover(args: DiscoverArgs) -> anyhow::Result<()> {
    let client = client(&args.target).await?;
    let target = client.target();
    let found = client
        .discover(&args.name)
        .await
        .with_context(|| format!("querying {target}"))?;
    if args.target.json {
        outln!(
            "{}",
            serde_json::Value::Array(found.iter().map(addr_json).collect())
        );
    } else if found.is_empty() {
        eprintln!("no servers registered under {:?}", args.name.to_uppercase());
    } else {
        for a in &found {
            outln!("{}", Escaped(a));
        }
    }
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let client = client(&args.target).await?;
    let target = client.target();
    let names = client
        .list(args.filter.as_deref())
        .await
        .with_context(|| format!("listing {target}"))?
        .ok_or_else(|| {
            anyhow!("registry {target} does not allow listing (serve it with --listing)")
        })?;
    if args.target.json {
        outln!("{}", json!(names));
    } else {
        for n in &names {
            outln!("{}", Escaped(n));
        }
    }
    Ok(())
}

async fn unregister(args: UnregisterArgs) -> anyhow::Result<()> {
    let port = parse_port(&args.port)?;
    let client = client(&args.target).await?;
    let target = client.target();
    client
        .unregister(port.clone())
        .await
        .with_context(|| format!("unregistering from {target}"))?;
    print_result(
        args.target.json,
        unregistered_json(&port, target),
        format_args!("sent UNREGISTER for port {port} to {target}"),
    );
    Ok(())
}
