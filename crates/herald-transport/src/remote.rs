//! [`RemoteTransport`]: one [`MessageTransport`] for a whole node, local and remote.
//!
//! It owns a [`LocalTransport`] (this node's actor paths) and a [`TcpNode`], and decides
//! per message:
//!
//! * **local** when the target carries this node's id, or has no host (and no other
//!   node's id), or names this node's bound or advertised `host:port`; the message goes
//!   to the `LocalTransport`;
//! * **remote** otherwise: to the target's `host:port`, or, for a node-id-only address,
//!   to wherever the node index (filled by [`RemoteTransport::set_node_address`] or by
//!   native handshakes) says that node is. An unresolvable address is refused and
//!   reported as a `NoRoute` dead letter (casty silently treated it as local).
//!
//! Inbound messages are delivered to the `LocalTransport` after two checks casty does
//! not make: the target's **system name** must be this node's (else dead letter
//! `WrongSystem`), and, when a type-hint filter is installed, the **type hint** must be
//! known (else dead letter `DecodeFailed`, logged).
//!
//! ```
//! use std::time::Duration;
//! use herald_transport::remote::RemoteTransport;
//! use herald_transport::tcp::TcpConfig;
//! use herald_transport::{MessageTransport, RawMessage};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = RemoteTransport::builder("shop", TcpConfig::loopback()).start().await?;
//! let b = RemoteTransport::builder("shop", TcpConfig::loopback()).start().await?;
//! let mut inbox = b.local().register_unbounded("/orders")?;
//! // A ref to an actor on node b, used from node a.
//! let orders = a.make_ref::<RawMessage>(&b.address_of("/orders"));
//! orders.tell(&RawMessage::new("shop.Order", &b"{}"[..]))?;
//! let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await?.unwrap();
//! assert_eq!(got.type_hint, "shop.Order");
//! assert_eq!(got.sender, format!("{}/", a.root())); // casty's sender convention
//! a.shutdown().await;
//! b.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use herald_wire::{ActorAddress, Envelope};
use tracing::{info, warn};

use crate::actor_ref::ActorRef;
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters};
use crate::error::TransportError;
use crate::local::LocalTransport;
use crate::native::NodeId;
use crate::tcp::{PeerAddr, PeerKey, SendFailureHook, TcpConfig, TcpError, TcpNode};
use crate::transport::{BoxFuture, LocalEndpoint, MessageTransport};

/// Decides whether an inbound type hint is acceptable.
pub type TypeHintFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The system name of a `casty://system[@host:port]/path` target, without allocating.
pub fn target_system(target: &str) -> Option<&str> {
    let rest = target.strip_prefix(herald_wire::address::SCHEME)?;
    let end = rest.find(['@', '/', '?']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Builder of a [`RemoteTransport`].
pub struct RemoteTransportBuilder {
    system: String,
    tcp: TcpConfig,
    local: Option<LocalTransport>,
    type_filter: Option<TypeHintFilter>,
    on_send_failure: Option<SendFailureHook>,
}

impl fmt::Debug for RemoteTransportBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTransportBuilder")
            .field("system", &self.system)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl RemoteTransportBuilder {
    /// Uses this `LocalTransport` for the node's paths (default: a new one named after
    /// the system). Its dead-letter sink becomes the node's sink.
    pub fn local(mut self, local: LocalTransport) -> Self {
        self.local = Some(local);
        self
    }

    /// Only inbound messages whose type hint passes `filter` are delivered; others
    /// become `DecodeFailed` dead letters with a logged reason.
    pub fn accept_type_hints(
        mut self,
        filter: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.type_filter = Some(Arc::new(filter));
        self
    }

    /// Called for every outbound message the TCP layer drops (casty's
    /// `on_send_failure`, which casty 0.21 never calls).
    pub fn on_send_failure(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.on_send_failure = Some(Arc::new(hook));
        self
    }

    /// Starts the TCP node and returns the transport.
    pub async fn start(self) -> Result<RemoteTransport, TcpError> {
        let local = match self.local {
            Some(l) => l,
            None => LocalTransport::builder()
                .system(self.system.clone())
                .build(),
        };
        let dead = local.dead_letters().clone();
        let handler_local = local.clone();
        let handler_dead = dead.clone();
        let system = self.system.clone();
        let filter = self.type_filter.clone();
        let inbound = move |from: &PeerKey, env: Envelope| {
            deliver_inbound(
                &system,
                filter.as_ref(),
                &handler_local,
                &handler_dead,
                from,
                env,
            )
        };
        let mut b = TcpNode::builder(self.tcp)
            .dead_letters(dead.clone())
            .on_message(inbound);
        if let Some(hook) = self.on_send_failure {
            b = b.on_send_failure(move |l: &DeadLetter| hook(l));
        }
        let tcp = b.start().await?;
        let adv = tcp.advertised().clone();
        let root = format!("{}{}@{}", herald_wire::address::SCHEME, self.system, adv);
        info!(system = %self.system, root = %root, "remote transport started");
        Ok(RemoteTransport {
            inner: Arc::new(Inner {
                node_id: tcp.node_id().to_string(),
                system: self.system,
                root,
                local,
                tcp,
                dead,
                node_index: RwLock::new(HashMap::new()),
                shut_down: AtomicBool::new(false),
            }),
        })
    }
}

fn deliver_inbound(
    system: &str,
    filter: Option<&TypeHintFilter>,
    local: &LocalTransport,
    dead: &DeadLetters,
    from: &PeerKey,
    env: Envelope,
) {
    if let Some(target_sys) = target_system(&env.target)
        && target_sys != system
    {
        warn!(%from, target = %env.target, expected = system, "dropping message for another actor system");
        let detail =
            format!("message from {from} targets system {target_sys:?}, this node is {system:?}");
        dead.publish_with_detail(env, DeadLetterReason::WrongSystem, detail);
        return;
    }
    if let Some(f) = filter
        && !f(&env.type_hint)
    {
        warn!(%from, type_hint = %env.type_hint, target = %env.target, "dropping message with an unknown type hint");
        let detail = format!("unknown type hint {:?} from {from}", env.type_hint);
        dead.publish_with_detail(env, DeadLetterReason::DecodeFailed, detail);
        return;
    }
    // LocalTransport reports its own drops (dead path, buffer full, ...).
    let _ = deliver_local(local, env);
}

/// Local delivery by path, ignoring a `?node=` suffix of the target.
fn deliver_local(local: &LocalTransport, env: Envelope) -> Result<(), TransportError> {
    match crate::transport::target_path(&env.target)
        .map(|p| p.split_once('?').map_or(p, |(p, _)| p))
    {
        Some(path) => {
            let path = path.to_owned();
            local.deliver_to_path(&path, env)
        }
        None => local.deliver(env),
    }
}

struct Inner {
    system: String,
    node_id: String,
    root: String,
    local: LocalTransport,
    tcp: TcpNode,
    dead: DeadLetters,
    node_index: RwLock<HashMap<String, PeerAddr>>,
    shut_down: AtomicBool,
}

/// A node's transport: local delivery plus TCP to other nodes. Cheap to clone.
#[derive(Clone)]
pub struct RemoteTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTransport")
            .field("system", &self.inner.system)
            .field("root", &self.inner.root)
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

/// Where a target address leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node.
    Local,
    /// Another node at this address.
    Remote(PeerAddr),
    /// Another node known by id only (native mode), reachable through the TCP node.
    Node(NodeId),
    /// Nowhere: the address cannot be resolved.
    Unresolved(String),
}

impl RemoteTransport {
    /// A builder for actor system `system` with the TCP configuration `tcp`.
    pub fn builder(system: impl Into<String>, tcp: TcpConfig) -> RemoteTransportBuilder {
        RemoteTransportBuilder {
            system: system.into(),
            tcp,
            local: None,
            type_filter: None,
            on_send_failure: None,
        }
    }

    /// The actor system name.
    pub fn system(&self) -> &str {
        &self.inner.system
    }

    /// This node's id (hex), as written in `?node=` address suffixes.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// `casty://system@advertised-host:port`, the prefix of this node's addresses.
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    /// The reachable address of `path` on this node.
    pub fn address_of(&self, path: &str) -> String {
        let path = path.strip_prefix('/').unwrap_or(path);
        format!("{}/{}", self.inner.root, path)
    }

    /// This node's local transport (register actors here).
    pub fn local(&self) -> &LocalTransport {
        &self.inner.local
    }

    /// The TCP node.
    pub fn tcp(&self) -> &TcpNode {
        &self.inner.tcp
    }

    /// The node's dead-letter sink (shared by local and TCP).
    pub fn dead_letter_sink(&self) -> &DeadLetters {
        &self.inner.dead
    }

    /// Records where node `node_id` lives, for node-id-only addresses.
    pub fn set_node_address(&self, node_id: impl Into<String>, addr: PeerAddr) {
        if let Ok(mut idx) = self.inner.node_index.write() {
            idx.insert(node_id.into(), addr);
        }
    }

    /// Forgets node `node_id`.
    pub fn remove_node(&self, node_id: &str) {
        if let Ok(mut idx) = self.inner.node_index.write() {
            idx.remove(node_id);
        }
    }

    /// Lifts the circuit breaker for `addr`.
    pub fn clear_blacklist(&self, addr: &PeerAddr) {
        self.inner.tcp.clear_blacklist(addr)
    }

    fn is_self(&self, host: &str, port: u16) -> bool {
        let adv = self.inner.tcp.advertised();
        if adv.host == host && adv.port == port {
            return true;
        }
        self.inner
            .tcp
            .local_addr()
            .is_some_and(|a| a.port() == port && a.ip().to_string() == host)
    }

    /// Where `address` leads (the local-versus-remote decision).
    pub fn route(&self, address: &ActorAddress) -> Route {
        if let Some(id) = address.node_id()
            && id == self.inner.node_id
        {
            return Route::Local;
        }
        match (address.host(), address.port()) {
            (Some(host), Some(port)) => {
                if self.is_self(host, port) {
                    Route::Local
                } else {
                    Route::Remote(PeerAddr::new(host, port))
                }
            }
            _ => match address.node_id() {
                None => Route::Local,
                Some(id) => {
                    let known = self
                        .inner
                        .node_index
                        .read()
                        .ok()
                        .and_then(|idx| idx.get(id).cloned());
                    if let Some(addr) = known {
                        return Route::Remote(addr);
                    }
                    match u64::from_str_radix(id, 16).ok().map(NodeId) {
                        Some(n) if self.inner.tcp.node_key(n).is_some() => Route::Node(n),
                        _ => Route::Unresolved(format!("node {id} is not in the node index")),
                    }
                }
            },
        }
    }

    /// Is `address` on this node?
    pub fn is_local(&self, address: &ActorAddress) -> bool {
        self.route(address) == Route::Local
    }

    /// A typed handle to `address`, delivering locally or over TCP as needed, with this
    /// node as the reply endpoint of `ask`.
    pub fn make_ref<M>(&self, address: &str) -> ActorRef<M> {
        ActorRef::new(address, Arc::new(self.clone()))
    }

    fn no_route(&self, envelope: Envelope, detail: String) -> TransportError {
        let target = envelope.target.clone();
        warn!(target = %target, %detail, "no route for message");
        self.inner
            .dead
            .publish_with_detail(envelope, DeadLetterReason::NoRoute, detail);
        TransportError::Refused {
            target,
            reason: DeadLetterReason::NoRoute,
        }
    }
}

impl MessageTransport for RemoteTransport {
    fn deliver(&self, envelope: Envelope) -> Result<(), TransportError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            self.inner
                .dead
                .publish(envelope, DeadLetterReason::Shutdown);
            return Err(TransportError::Shutdown);
        }
        if envelope.target.starts_with('/') {
            return self.inner.local.deliver(envelope);
        }
        let address = match ActorAddress::parse(&envelope.target) {
            Ok(a) => a,
            Err(e) => {
                let detail = format!("unparseable target: {e}");
                return Err(self.no_route(envelope, detail));
            }
        };
        match self.route(&address) {
            Route::Local => deliver_local(&self.inner.local, envelope),
            Route::Remote(peer) => self.inner.tcp.send(&peer, envelope),
            Route::Node(n) => self.inner.tcp.send_to_node(n, envelope),
            Route::Unresolved(why) => Err(self.no_route(envelope, why)),
        }
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            this.inner.shut_down.store(true, Ordering::Release);
            this.inner.tcp.shutdown().await;
            this.inner.local.close();
        })
    }

    fn dead_letters(&self) -> Option<&DeadLetters> {
        Some(&self.inner.dead)
    }

    fn local_endpoint(&self) -> Option<LocalEndpoint> {
        Some(LocalEndpoint {
            transport: self.inner.local.clone(),
            root: self.inner.root.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_system_extracts_the_system_name() {
        assert_eq!(target_system("casty://a@h:1/p"), Some("a"));
        assert_eq!(target_system("casty://a/p"), Some("a"));
        assert_eq!(target_system("casty://a"), Some("a"));
        assert_eq!(target_system("casty://a?node=1"), Some("a"));
        assert_eq!(target_system("/p"), None);
        assert_eq!(target_system("http://a/p"), None);
    }
}
