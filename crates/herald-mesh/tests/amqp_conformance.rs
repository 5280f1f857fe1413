//! The shared conformance suite run against RabbitMQ (`HERALD_AMQP_URL`), so that the
//! in-process broker and the RabbitMQ backend cannot drift apart. Skipped, with the
//! reason printed, when no broker is configured.

use std::sync::Arc;

use herald_mesh::Backend;
use herald_mesh::amqp::AmqpBackend;

#[path = "conformance.rs"]
#[macro_use]
mod conformance;

fn rabbitmq() -> Option<Arc<dyn Backend>> {
    let url = herald_pyenv::amqp_url_or_skip()?;
    let backend = AmqpBackend::new(&url).expect("HERALD_AMQP_URL is a valid AMQP URL");
    Some(Arc::new(backend))
}

conformance_tests!(rabbitmq());
