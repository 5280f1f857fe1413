//! The shared conformance suite run against the in-process broker.

use std::sync::Arc;

use herald_mesh::{Backend, InProcBroker};

#[path = "conformance.rs"]
#[macro_use]
mod conformance;

fn inproc() -> Option<Arc<dyn Backend>> {
    Some(Arc::new(InProcBroker::new()))
}

conformance_tests!(inproc());
