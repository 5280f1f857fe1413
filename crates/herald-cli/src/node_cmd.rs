//! `herald tell` and the transport part of `herald up` ([`NodeArgs`], [`start_node`]).
//!
//! * `herald tell URI --type-hint H --json '{..}'` sends one message, with the JSON
//!   turned into casty's tagged JSON payload (`{"_type": H, ...}` written the way
//!   Python's `json.dumps` writes it), and exits 0 once the frame was written and the
//!   connection closed gracefully.
//! * [`start_node`] starts a node (a [`RemoteTransport`]) and prints its URI, then one
//!   line per message received on a path nobody registered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use herald_transport::remote::RemoteTransport;
use herald_transport::tcp::{PeerAddr, TcpConfig, TcpNode, WireMode};
use herald_transport::tls::TlsConfig;
use herald_transport::{DeadLetters, Handler, MessageTransport, PathMatcher};
use herald_wire::payload::CastyValue;
use herald_wire::{ActorAddress, Envelope};

use crate::{bad_input, values};

/// Connection options shared by `herald tell` and `herald up` (TLS flags differ:
/// [`TellTlsArgs`], [`NodeTlsArgs`]).
#[derive(Debug, Clone, Args)]
pub struct WireArgs {
    /// Speak casty 0.21's `{"host","port"}` handshake (to talk to casty nodes) instead of
    /// Herald's native handshake.
    #[arg(long)]
    pub casty_compat: bool,
    /// Cluster name checked by the native handshake.
    #[arg(long, default_value = "herald")]
    pub cluster: String,
    /// Shared-secret cookie of the native handshake (also `HERALD_COOKIE`).
    #[arg(long, env = "HERALD_COOKIE", hide_env_values = true)]
    pub cookie: Option<String>,
}

impl WireArgs {
    fn mode(&self) -> WireMode {
        if self.casty_compat {
            return WireMode::CastyV1;
        }
        match &self.cookie {
            Some(c) => WireMode::native_with_cookie(self.cluster.clone(), c.as_bytes().to_vec()),
            None => WireMode::native(self.cluster.clone()),
        }
    }
}

/// Reads a PEM file named by `flag`; a failure is the user's (exit status 2).
fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .with_context(|| format!("reading {flag} {}", path.display()))
        .map_err(bad_input)
}

/// TLS flags of `herald tell` (a dial-only node).
#[derive(Debug, Clone, Default, Args)]
pub struct TellTlsArgs {
    /// Dial with TLS: PEM CA certificate(s) that must have signed the target node's
    /// certificate, which must also name the URI's host. Alone: no client certificate
    /// is presented (enough for nodes run with `--tls-no-client-auth`).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain presented as the client certificate, for nodes that require
    /// one (mutual TLS, the default of `herald up`). Needs --tls-key and --tls-ca.
    #[arg(long, value_name = "PEM", requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TellTlsArgs {
    /// The TLS flags given, for error messages.
    fn describe(&self) -> String {
        let flags = [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ];
        let given: Vec<String> = flags
            .iter()
            .filter_map(|(f, p)| p.as_ref().map(|p| format!("{f} {}", p.display())))
            .collect();
        format!("TLS from {}", given.join(", "))
    }

    fn config(&self) -> anyhow::Result<Option<TlsConfig>> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => Ok(None),
            (Some(ca), cert, key) => {
                let ca = read_pem("--tls-ca", ca)?;
                let identity = match (cert, key) {
                    (Some(c), Some(k)) => {
                        Some((read_pem("--tls-cert", c)?, read_pem("--tls-key", k)?))
                    }
                    (None, None) => None,
                    _ => return Err(bad_input(anyhow!("--tls-cert and --tls-key go together"))),
                };
                let identity = identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
                let tls = TlsConfig::client_from_pem(&ca, identity)
                    .map_err(|e| bad_input(anyhow::Error::new(e).context(self.describe())))?;
                Ok(Some(tls))
            }
            (None, _, _) => Err(bad_input(anyhow!(
                "--tls-cert/--tls-key need --tls-ca (the CA that verifies the target node)"
            ))),
        }
    }
}

/// TLS flags of `herald up` (a node that accepts and dials connections).
#[derive(Debug, Clone, Default, Args)]
pub struct NodeTlsArgs {
    /// Serve and dial over TLS with this PEM certificate chain of the node; it must name
    /// the host peers dial (the advertised host). Needs --tls-key and --tls-ca. Default
    /// is mutual TLS: every connecting peer must present a certificate signed by
    /// --tls-ca, and this node presents its own when dialing (see --tls-no-client-auth).
    #[arg(long, value_name = "PEM", requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that verify peers: the certificate of every node this one
    /// dials (it must also name the dialed host) and, unless --tls-no-client-auth, the
    /// client certificate of every peer that connects. Needs --tls-cert and --tls-key: a
    /// node asked for TLS never listens in plain TCP.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Server-side TLS only: accept TLS connections from peers without a client
    /// certificate (e.g. `herald tell --tls-ca`), and present none when dialing. The
    /// connection is still encrypted and peers this node dials are still verified
    /// against --tls-ca; connecting peers are not authenticated (use --cookie for that).
    #[arg(long, requires = "tls_cert")]
    pub tls_no_client_auth: bool,
}

impl NodeTlsArgs {
    /// The TLS configuration and its description for the `node ...` line (`tls=...`).
    fn config(&self) -> anyhow::Result<(Option<TlsConfig>, &'static str)> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) if !self.tls_no_client_auth => Ok((None, "off")),
            (Some(cert), Some(key), Some(ca)) => {
                let mutual = !self.tls_no_client_auth;
                let tls = TlsConfig::from_pem(
                    &read_pem("--tls-cert", cert)?,
                    &read_pem("--tls-key", key)?,
                    &read_pem("--tls-ca", ca)?,
                    mutual,
                )
                .map_err(|e| {
                    bad_input(anyhow::Error::new(e).context(format!(
                        "TLS from --tls-cert {}, --tls-key {}, --tls-ca {}",
                        cert.display(),
                        key.display(),
                        ca.display()
                    )))
                })?;
                Ok((Some(tls), if mutual { "mutual" } else { "no-client-auth" }))
            }
            _ => Err(bad_input(anyhow!(
                "TLS needs --tls-cert, --tls-key and --tls-ca together (--tls-no-client-auth: only with them)"
            ))),
        }
    }
}

/// `herald tell`: send one message and exit.
#[derive(Debug, Args)]
pub struct TellArgs {
    /// Target actor URI, e.g. `casty://herald@127.0.0.1:25520/inbox`.
    pub uri: String,
    /// The message's type hint (casty: `<module>.<QualName>`), e.g. `demo.Ping`.
    #[arg(long)]
    pub type_hint: String,
    /// The message as JSON; an object without `_type` gets the type hint as its tag.
    #[arg(long)]
    pub json: String,
    /// Sender URI written in the envelope (casty receivers ignore it).
    #[arg(long, default_value = "")]
    pub sender: String,
    /// Give up after this many seconds (connect + write); more than 0, at most a year,
    /// fractions allowed.
    #[arg(
        long,
        default_value = "10",
        value_name = "S",
        value_parser = values::seconds,
        allow_negative_numbers = true,
    )]
    pub timeout: Duration,
    #[command(flatten)]
    pub wire: WireArgs,
    #[command(flatten)]
    pub tls: TellTlsArgs,
}

/// Turns user JSON into casty's tagged JSON payload bytes.
pub fn casty_payload(type_hint: &str, json: &str) -> anyhow::Result<Vec<u8>> {
    let value = CastyValue::from_json_bytes(json.as_bytes())
        .with_context(|| format!("--json is not valid JSON: {json}"))?;
    let value = match value {
        CastyValue::Map(fields) => CastyValue::Object {
            type_name: type_hint.to_owned(),
            fields,
        },
        other => other,
    };
    Ok(value.to_json_bytes()?)
}

pub async fn run_tell(args: TellArgs) -> anyhow::Result<()> {
    let address = ActorAddress::parse(&args.uri).map_err(bad_input)?;
    let (Some(host), Some(port)) = (address.host(), address.port()) else {
        return Err(bad_input(anyhow!(
            "{} has no host:port; use casty://system@host:port/path",
            args.uri
        )));
    };
    let payload = casty_payload(&args.type_hint, &args.json).map_err(bad_input)?;
    // `values::seconds` keeps it positive and small enough for `Instant + timeout`.
    let timeout = args.timeout;
    let mut cfg = TcpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))).with_mode(args.wire.mode());
    cfg.client_only = true;
    cfg.connect_timeout = timeout;
    cfg.backoff.breaker_threshold = 1;
    cfg.tls = args.tls.config()?;
    let dead = DeadLetters::default();
    let mut drops = dead.subscribe();
    let node = TcpNode::builder(cfg).dead_letters(dead).start().await?;
    let to = PeerAddr::new(host, port);
    let envelope = Envelope::new(args.uri.clone(), args.sender, args.type_hint, payload);
    node.send(&to, envelope)
        .with_context(|| format!("sending to {to}"))?;
    let written = node.flush(timeout).await;
    let dropped = drops.try_recv().ok();
    node.shutdown().await;
    if let Some(letter) = dropped {
        return Err(anyhow!(
            "message to {} not delivered ({}): {}",
            args.uri,
            letter.reason,
            letter.detail.as_deref().unwrap_or("")
        ));
    }
    if !written {
        return Err(anyhow!(
            "message to {} not written within {timeout:?}",
            args.uri
        ));
    }
    tracing::info!(uri = %args.uri, "message written");
    Ok(())
}

/// Transport options of `herald up` (flattened into its arguments).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Address to listen on, `ip:port` (port 0: one the OS picks).
    #[arg(long, default_value = herald_transport::tcp::DEFAULT_BIND)]
    pub bind: SocketAddr,
    /// Address advertised to peers, `host:port` (port 0: the bound port). Default: the
    /// bound address.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Actor system name of this node.
    #[arg(long, default_value = "herald")]
    pub system: String,
    #[command(flatten)]
    pub wire: WireArgs,
    #[command(flatten)]
    pub tls: NodeTlsArgs,
}

/// A running node started by [`start_node`].
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's transport (register actors on `transport.local()`).
    pub transport: RemoteTransport,
    /// The node's URI root, `casty://system@host:port` (already printed by [`start_node`]).
    #[allow(dead_code)] // for callers of `start_node`; `herald up` only needs the transport
    pub uri: String,
}

impl NodeHandle {
    /// Stops the node (connections closed gracefully).
    pub async fn shutdown(&self) {
        self.transport.shutdown().await;
    }
}

fn parse_advertise(s: &str) -> anyhow::Result<PeerAddr> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("--advertise {s:?}: expected [ipv6]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| anyhow!("--advertise {s:?}: expected host:port"))?
    };
    if host.is_empty() {
        return Err(anyhow!("--advertise {s:?}: empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("--advertise {s:?}: port {port:?} is not a number in 0..=65535"))?;
    Ok(PeerAddr::new(host, port))
}

/// Formats a payload for a log line: UTF-8 text as is, anything else as hex.
fn show_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("hex:{}", hex::encode(payload)),
    }
}

/// Starts a node: binds, prints `node <uri> ...`, and prints one `message ...` line per
/// message received on a path no actor registered.
pub async fn start_node(args: &NodeArgs) -> anyhow::Result<NodeHandle> {
    let mut cfg = TcpConfig::new(args.bind).with_mode(args.wire.mode());
    if let Some(a) = &args.advertise {
        cfg.advertise = Some(parse_advertise(a).map_err(bad_input)?);
    }
    let (tls, tls_mode) = args.tls.config()?;
    cfg.tls = tls;
    let mode = if args.wire.casty_compat {
        "casty-v1"
    } else {
        "native"
    };
    let transport = RemoteTransport::builder(args.system.clone(), cfg)
        .start()
        .await
        .with_context(|| format!("starting the node on {}", args.bind))?;
    transport
        .local()
        .add_path_factory(PathMatcher::prefix("/"), |path: &str| {
            let path = path.to_owned();
            Some(Handler::from_fn(move |env: Envelope| {
                outln!(
                    "message path={path} type_hint={} sender={} payload={}",
                    env.type_hint,
                    if env.sender.is_empty() {
                        "-"
                    } else {
                        &env.sender
                    },
                    show_payload(&env.payload)
                );
            }))
        });
    let uri = transport.root().to_owned();
    outln!(
        "node {uri} node-id={} mode={mode} tls={tls_mode}",
        transport.node_id(),
    );
    Ok(NodeHandle { transport, uri })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_gets_the_type_tag_and_python_formatting() {
        let p = casty_payload("casty_vec_msgs.Ping", r#"{"value":42}"#).expect("valid");
        assert_eq!(p, br#"{"_type": "casty_vec_msgs.Ping", "value": 42}"#);
        let p = casty_payload("x.Y", r#"{"_type": "a.B", "v": "zoë"}"#).expect("valid");
        assert_eq!(p, br#"{"_type": "a.B", "v": "zo\u00eb"}"#);
        assert!(casty_payload("x", "{nope").is_err());
    }

    #[test]
    fn advertise_parsing() {
        assert_eq!(
            parse_advertise("node-a:25520").ok(),
            Some(PeerAddr::new("node-a", 25520))
        );
        assert_eq!(
            parse_advertise("[::1]:7").ok(),
            Some(PeerAddr::new("::1", 7))
        );
        assert!(parse_advertise("nope").is_err());
        assert!(parse_advertise("h:70000").is_err());
        assert!(parse_advertise(":1").is_err());
    }

    #[tokio::test]
    async fn started_node_receives_a_tell() {
        let args = NodeArgs {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            system: "t".into(),
            wire: WireArgs {
                casty_compat: false,
                cluster: "herald".into(),
                cookie: None,
            },
            tls: NodeTlsArgs::default(),
        };
        let node = start_node(&args).await.expect("starts");
        let mut inbox = node
            .transport
            .local()
            .register_unbounded("/inbox")
            .expect("register");
        run_tell(TellArgs {
            uri: format!("{}/inbox", node.uri),
            type_hint: "demo.Ping".into(),
            json: r#"{"value": 1}"#.into(),
            sender: String::new(),
            timeout: Duration::from_secs(10),
            wire: args.wire.clone(),
            tls: TellTlsArgs::default(),
        })
        .await
        .expect("tell succeeds");
        let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(
            got.payload.as_ref(),
            br#"{"_type": "demo.Ping", "value": 1}"#
        );
        node.shutdown().await;
    }
}
