//! A custom `MessageTransport`, checked with the testkit.
//!
//! `SimNet` simulates a network of nodes inside one process: each node is a
//! `LocalTransport`, and messages travel to a node through that node's queue, drained by
//! one task per node (so delivery is asynchronous, like a network's, and FIFO per node,
//! which gives the per sender/target ordering the contract asks for). Messages for an
//! unknown node are refused and reported as `NoRoute` dead letters.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p herald-transport --example custom_transport
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_transport::testkit::{Binding, ContractConfig, TransportHarness, run_contract};
use herald_transport::{
    ActorRef, BoxFuture, DeadLetterReason, DeadLetters, LocalEndpoint, LocalTransport,
    MessageTransport, RawMessage, TransportError, reply,
};
use herald_wire::{ActorAddress, Envelope};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One simulated node: its paths and the queue feeding them.
struct Node {
    local: LocalTransport,
    queue: mpsc::UnboundedSender<Envelope>,
}

/// The simulated network, as seen from one node (`me`).
struct SimNet {
    me: String,
    nodes: Mutex<HashMap<String, Node>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    dead_letters: DeadLetters,
}

impl SimNet {
    /// A network of nodes named `names`; the first one is "this" node.
    fn new(names: &[&str]) -> Arc<Self> {
        let dead_letters = DeadLetters::default();
        let mut nodes = HashMap::new();
        let mut tasks = Vec::new();
        for name in names {
            let local = LocalTransport::builder()
                .system(*name)
                .dead_letters(dead_letters.clone())
                .build();
            let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
            let l = local.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(envelope) = rx.recv().await {
                    // Refusals (after shutdown) are already dead letters.
                    let _ = l.deliver(envelope);
                }
            }));
            nodes.insert(name.to_string(), Node { local, queue: tx });
        }
        Arc::new(Self {
            me: names[0].to_string(),
            nodes: Mutex::new(nodes),
            tasks: Mutex::new(tasks),
            dead_letters,
        })
    }

    fn node_local(&self, name: &str) -> Option<LocalTransport> {
        self.nodes.lock().ok()?.get(name).map(|n| n.local.clone())
    }
}

impl MessageTransport for SimNet {
    fn deliver(&self, envelope: Envelope) -> Result<(), TransportError> {
        // Route by the system name of the target: casty://<node>/path.
        let node = match ActorAddress::parse(&envelope.target) {
            Ok(address) => address.system().to_string(),
            Err(e) => {
                let target = envelope.target.clone();
                self.dead_letters.publish_with_detail(
                    envelope,
                    DeadLetterReason::NoRoute,
                    e.to_string(),
                );
                return Err(TransportError::InvalidTarget {
                    target,
                    reason: "not an actor address",
                });
            }
        };
        let nodes = self.nodes.lock().map_err(|_| TransportError::Shutdown)?;
        if nodes.is_empty() {
            drop(nodes);
            self.dead_letters
                .publish(envelope, DeadLetterReason::Shutdown);
            return Err(TransportError::Shutdown);
        }
        match nodes.get(&node) {
            Some(n) => n.queue.send(envelope).map_err(|_| TransportError::Shutdown),
            None => {
                drop(nodes);
                let target = envelope.target.clone();
                self.dead_letters
                    .publish(envelope, DeadLetterReason::NoRoute);
                Err(TransportError::Refused {
                    target,
                    reason: DeadLetterReason::NoRoute,
                })
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        // Close every queue; the node tasks drain what is queued and stop.
        let nodes: Vec<Node> = self
            .nodes
            .lock()
            .map(|mut n| n.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        Box::pin(async move {
            let locals: Vec<LocalTransport> = nodes.into_iter().map(|n| n.local).collect();
            for task in tasks {
                let _ = task.await;
            }
            for local in locals {
                local.close();
            }
        })
    }

    fn dead_letters(&self) -> Option<&DeadLetters> {
        Some(&self.dead_letters)
    }

    fn local_endpoint(&self) -> Option<LocalEndpoint> {
        let local = self.node_local(&self.me)?;
        Some(LocalEndpoint {
            root: local.root().to_string(),
            transport: local,
        })
    }
}

/// Lets the testkit drive SimNet: bound paths live on the second node, so every checked
/// message crosses the simulated network.
struct SimNetHarness {
    net: Arc<SimNet>,
}

impl TransportHarness for SimNetHarness {
    fn transport(&self) -> Arc<dyn MessageTransport> {
        self.net.clone()
    }
    fn address(&self, path: &str) -> String {
        format!("casty://node-b{path}")
    }
    async fn bind(&mut self, path: &str) -> Result<Binding, TransportError> {
        let local = self
            .net
            .node_local("node-b")
            .ok_or(TransportError::Shutdown)?;
        let inbox = local.register_unbounded(path)?;
        Ok(Binding {
            address: self.address(path),
            inbox,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Check the contract.
    run_contract(
        || async {
            SimNetHarness {
                net: SimNet::new(&["node-a", "node-b"]),
            }
        },
        &ContractConfig::default(),
    )
    .await?;
    println!("SimNet honours the MessageTransport contract");

    // 2. Use it: an echo actor on node-b, asked from node-a.
    let net = SimNet::new(&["node-a", "node-b"]);
    let b = net.node_local("node-b").ok_or("node-b exists")?;
    let transport: Arc<dyn MessageTransport> = net.clone();
    let t = transport.clone();
    b.register_fn("/echo", move |request| {
        let answer = RawMessage::new("demo.Echo", request.payload.clone());
        if let Err(e) = reply(&*t, &request, &answer) {
            eprintln!("reply failed: {e}");
        }
    })?;
    let echo: ActorRef<RawMessage> = ActorRef::new("casty://node-b/echo", transport.clone());
    let answer: RawMessage = echo
        .ask(
            &RawMessage::new("demo.Say", &b"hello"[..]),
            Duration::from_secs(5),
        )
        .await?;
    println!(
        "node-a asked casty://node-b/echo and got {:?}",
        String::from_utf8_lossy(&answer.payload)
    );

    // 3. An unknown node is refused and counted.
    let nowhere: ActorRef<RawMessage> = ActorRef::new("casty://node-z/x", transport.clone());
    let err = nowhere
        .tell(&RawMessage::new("demo.Lost", &b""[..]))
        .expect_err("node-z does not exist");
    println!("tell to an unknown node: {err}");
    println!(
        "dead letters (no_route): {}",
        net.dead_letters.count(DeadLetterReason::NoRoute)
    );
    transport.shutdown().await;
    Ok(())
}
