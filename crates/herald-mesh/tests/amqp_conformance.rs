//! The shared conformance suite run against RabbitMQ (`HERALD_AMQP_URL`), so that the
//! in-process broker and the RabbitMQ backend cannot drift apart. Skipped, with the
//! reason printed, when no broker is configured.
//!
//! The suite's services declare durable service queues and dead-letter queues (as
//! nuropb does); the backend used here remembers them and deletes them when the test is
//! over, so repeated runs do not pile queues up on the broker.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use herald_mesh::amqp::{AmqpBackend, AmqpConnection, AmqpOptions};
use herald_mesh::backend::{
    BackendFuture, Connection, ConsumeOptions, DeliveryStream, ExchangeSpec, QueueSpec, Trimmed,
};
use herald_mesh::{Backend, MeshError, Message};

#[path = "conformance.rs"]
#[macro_use]
mod conformance;

/// An [`AmqpBackend`] that deletes the lasting queues its connections declared once the
/// last handle on it is gone.
#[derive(Debug)]
struct Tidy {
    inner: AmqpBackend,
    lasting: Arc<Mutex<BTreeSet<String>>>,
}

#[derive(Debug)]
struct TidyConn {
    inner: Arc<dyn Connection>,
    lasting: Arc<Mutex<BTreeSet<String>>>,
}

impl Connection for TidyConn {
    fn declare_exchange<'a>(
        &'a self,
        spec: &'a ExchangeSpec,
    ) -> BoxFuture<'a, Result<(), MeshError>> {
        self.inner.declare_exchange(spec)
    }
    fn declare_queue<'a>(&'a self, spec: &'a QueueSpec) -> BoxFuture<'a, Result<(), MeshError>> {
        if !spec.auto_delete
            && let Ok(mut set) = self.lasting.lock()
        {
            set.insert(spec.name.clone());
        }
        self.inner.declare_queue(spec)
    }
    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        message: Message,
    ) -> BackendFuture<'a, Result<(), MeshError>> {
        self.inner.publish(exchange, routing_key, message)
    }
    fn consume<'a>(
        &'a self,
        queue: &'a str,
        options: ConsumeOptions,
    ) -> BoxFuture<'a, Result<DeliveryStream, MeshError>> {
        self.inner.consume(queue, options)
    }
    fn try_lead<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<bool, MeshError>> {
        self.inner.try_lead(service)
    }
    fn trim_queue<'a>(
        &'a self,
        queue: &'a str,
        max_len: usize,
        max_drop: usize,
    ) -> BoxFuture<'a, Result<Trimmed, MeshError>> {
        self.inner.trim_queue(queue, max_len, max_drop)
    }
    fn close(&self) -> BoxFuture<'_, Result<(), MeshError>> {
        self.inner.close()
    }
    fn is_open(&self) -> bool {
        self.inner.is_open()
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    fn forget_queue(&self, queue: &str) {
        self.inner.forget_queue(queue)
    }
    fn link_losses(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.link_losses()
    }
}

impl Backend for Tidy {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn mesh_name(&self) -> &str {
        self.inner.mesh_name()
    }
    fn connect<'a>(
        &'a self,
        client_name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn Connection>, MeshError>> {
        Box::pin(async move {
            let inner = self.inner.connect(client_name).await?;
            Ok(Arc::new(TidyConn {
                inner,
                lasting: self.lasting.clone(),
            }) as Arc<dyn Connection>)
        })
    }
}

impl Drop for Tidy {
    fn drop(&mut self) {
        let queues: Vec<String> = self
            .lasting
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if queues.is_empty() {
            return;
        }
        let url = self.inner.url().to_owned();
        // Runs on its own thread and runtime: this may be dropped while the test's
        // runtime shuts down.
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) =
                    AmqpConnection::open(&url, "herald-test-cleanup", AmqpOptions::default()).await
                else {
                    return;
                };
                for q in &queues {
                    if let Err(e) = conn.delete_queue(q).await {
                        eprintln!("cleanup of queue {q} failed: {e}");
                    }
                }
                let _ = conn.close().await;
            });
        });
        let _ = cleaner.join();
    }
}

fn rabbitmq() -> Option<Arc<dyn Backend>> {
    let url = herald_pyenv::amqp_url_or_skip()?;
    let inner = AmqpBackend::new(&url).expect("HERALD_AMQP_URL is a valid AMQP URL");
    Some(Arc::new(Tidy {
        inner,
        lasting: Arc::new(Mutex::new(BTreeSet::new())),
    }))
}

conformance_tests!(rabbitmq());
