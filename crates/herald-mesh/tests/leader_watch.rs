//! Leadership changes are reported through `LeaderWatch`, and client-only handles never
//! lead.

// Test code: an unwrap that fails is the test's failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use herald_mesh::example::ExampleService;
use herald_mesh::{Backend, InProcBroker, LeaderWatch, Mesh, MeshConfig};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn watch_reports_gaining_and_losing_leadership() {
    let broker: Arc<dyn Backend> = Arc::new(InProcBroker::new());
    let cfg = || {
        MeshConfig::service("watched", ExampleService::new())
            .leader_interval(Duration::from_millis(20))
    };
    let first = Mesh::connect(broker.clone(), cfg()).await.unwrap();
    let mut w1 = first.leader_watch();
    assert!(tokio::time::timeout(WAIT, w1.wait_for(true)).await.unwrap());
    assert!(first.is_leader());

    let second = Mesh::connect(broker.clone(), cfg()).await.unwrap();
    let mut w2 = second.leader_watch();
    // The second instance cannot lead while the first lives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_leader());

    first.disconnect().await.unwrap();
    assert!(
        tokio::time::timeout(WAIT, w1.wait_for(false))
            .await
            .unwrap()
    );
    assert_eq!(
        tokio::time::timeout(WAIT, w2.changed()).await.unwrap(),
        Some(true)
    );
    assert!(second.is_leader());

    second.disconnect().await.unwrap();
    // The election stopped: the watch ends not leading.
    let _ = tokio::time::timeout(WAIT, w2.wait_for(false))
        .await
        .unwrap();
    assert!(!w2.is_leader());
}

#[tokio::test]
async fn clients_never_lead() {
    let broker: Arc<dyn Backend> = Arc::new(InProcBroker::new());
    let c = Mesh::connect(broker, MeshConfig::client()).await.unwrap();
    assert!(!c.is_leader());
    assert!(!c.leader_watch().is_leader());
    assert!(!LeaderWatch::never().is_leader());
    c.disconnect().await.unwrap();
}
