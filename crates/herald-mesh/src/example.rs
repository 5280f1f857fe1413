//! The example service hosted by `herald mesh serve-example`, `herald mesh demo` and
//! `herald up`.
//!
//! Methods: `add(a, b)`, `echo(**params)` (returns `{"params": .., "context": ..}`),
//! `fail(message, kind)` (kind `handling` → `NuropbHandlingError`, `validation`,
//! `authorization`, anything else → `NuropbException`), `slow(seconds)` (at most
//! [`MAX_SLOW_SECONDS`], below RabbitMQ's consumer ack timeout),
//! `emit(topic, payload)` (publishes an event after replying), `events_seen()` (events
//! received on `interop.#`) and `secret_echo(text)` (requires encryption).
//!
//! ```
//! use std::sync::Arc;
//! use herald_mesh::{InProcBroker, Mesh, MeshConfig, MeshError, example::ExampleService};
//! use serde_json::json;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let broker = Arc::new(InProcBroker::new());
//! let _svc = Mesh::connect(broker.clone(), MeshConfig::service("example", ExampleService::new())).await?;
//! let client = Mesh::connect(broker, MeshConfig::client()).await?;
//! let err = client
//!     .request("example", "fail", json!({"message": "boom", "kind": "handling"}), json!({}), None, None)
//!     .await
//!     .unwrap_err();
//! assert!(matches!(err, MeshError::Handling { .. }));
//! # Ok::<(), MeshError>(())
//! # }).unwrap();
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{ServiceError, class};
use crate::message::EventBody;
use crate::service::{MethodInfo, RequestContext, Service, ServiceInfo, ServiceRouter};

/// Longest `slow` call accepted (seconds): 10 minutes, well below RabbitMQ's consumer
/// ack timeout (`consumer_timeout`, 30 minutes by default). A delivery left unacked
/// longer than that makes the broker close the consumer's channel and requeue all its
/// unacked deliveries, so a longer `slow` would be run again (and break the calls
/// in flight with it) instead of answered.
pub const MAX_SLOW_SECONDS: f64 = 600.0;
/// Events remembered by `events_seen` (oldest dropped beyond).
pub const MAX_EVENTS_SEEN: usize = 1000;
/// The pattern the example service subscribes to.
pub const EVENT_PATTERN: &str = "interop.#";

/// The example service. Cheap to clone (clones share the seen events).
#[derive(Debug, Clone)]
pub struct ExampleService {
    router: ServiceRouter,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Default for ExampleService {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Deserialize)]
struct AddParams {
    a: Value,
    b: Value,
}

#[derive(Deserialize)]
struct FailParams {
    #[serde(default = "default_fail_message")]
    message: String,
    #[serde(default)]
    kind: Option<String>,
}

fn default_fail_message() -> String {
    "failure requested".into()
}

#[derive(Deserialize)]
struct SlowParams {
    seconds: f64,
}

#[derive(Deserialize)]
struct EmitParams {
    topic: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
struct SecretParams {
    text: String,
}

#[derive(Deserialize)]
struct NoParams {}

fn add(a: &Value, b: &Value) -> Result<Value, ServiceError> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.checked_add(y).map(Value::from).ok_or_else(|| {
            ServiceError::validation(format!("add({x}, {y}) overflows a 64-bit integer"))
        });
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => Ok(json!(x + y)),
        _ => Err(ServiceError::validation(format!(
            "add expects two numbers, got a={a} and b={b}"
        ))),
    }
}

impl ExampleService {
    /// A new example service.
    pub fn new() -> Self {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let seen_read = seen.clone();
        let seen_write = seen.clone();
        let router = ServiceRouter::new("0.1.0", "Herald example service")
            .method(
                MethodInfo::new("add", "Returns a + b")
                    .param("a", "number", "")
                    .param("b", "number", ""),
                |p: AddParams, _ctx: Arc<RequestContext>| async move { add(&p.a, &p.b) },
            )
            .method(
                MethodInfo::new(
                    "echo",
                    "Returns the keyword arguments and the caller's context",
                ),
                |p: Map<String, Value>, ctx: Arc<RequestContext>| async move {
                    Ok(json!({"params": p, "context": ctx.context}))
                },
            )
            .method(
                MethodInfo::new(
                    "fail",
                    "Raises an error: kind handling, validation, authorization or runtime",
                )
                .param("message", "str", "error description")
                .param_default("kind", "str", "error kind", json!("runtime")),
                |p: FailParams, ctx: Arc<RequestContext>| async move {
                    let err = match p.kind.as_deref() {
                        Some("handling") => ServiceError::handling(&p.message),
                        Some("validation") => ServiceError::validation(&p.message),
                        Some("authorization") => ServiceError::authorization(&p.message),
                        _ => ServiceError::new(
                            class::EXCEPTION,
                            format!(
                                "Runtime exception calling {}.fail:RuntimeError: {}",
                                ctx.service, p.message
                            ),
                        ),
                    };
                    Err::<Value, _>(err)
                },
            )
            .method(
                MethodInfo::new(
                    "slow",
                    "Sleeps for the given number of seconds (at most 600) and returns it",
                )
                .param("seconds", "float", ""),
                |p: SlowParams, _ctx: Arc<RequestContext>| async move {
                    if !(0.0..=MAX_SLOW_SECONDS).contains(&p.seconds) {
                        return Err(ServiceError::validation(format!(
                            "seconds must be between 0 and {MAX_SLOW_SECONDS}, got {}",
                            p.seconds
                        )));
                    }
                    tokio::time::sleep(Duration::from_secs_f64(p.seconds)).await;
                    Ok(json!(p.seconds))
                },
            )
            .method(
                MethodInfo::new("emit", "Publishes an event on a topic after replying")
                    .param("topic", "str", "")
                    .param_default("payload", "any", "", Value::Null),
                |p: EmitParams, ctx: Arc<RequestContext>| async move {
                    crate::message::validate_topic_pattern(&p.topic)
                        .map_err(ServiceError::validation)?;
                    if p.topic.split('.').any(|w| w == "*" || w == "#") {
                        return Err(ServiceError::validation(format!(
                            "topic {:?} must not contain wildcards",
                            p.topic
                        )));
                    }
                    ctx.emit(p.topic.clone(), p.payload);
                    Ok(json!({"emitted": p.topic}))
                },
            )
            .method(
                MethodInfo::new("events_seen", "Events received on interop.#"),
                move |_p: NoParams, _ctx: Arc<RequestContext>| {
                    let seen = seen_read.clone();
                    async move {
                        let v = seen.lock().map(|s| s.clone()).unwrap_or_default();
                        Ok(Value::Array(v))
                    }
                },
            )
            .method(
                MethodInfo::new("secret_echo", "Returns the text; calls must be encrypted")
                    .param("text", "str", "")
                    .requires_encryption(),
                |p: SecretParams, _ctx: Arc<RequestContext>| async move { Ok(json!(p.text)) },
            )
            .on_event(EVENT_PATTERN, move |ev: EventBody| {
                let seen = seen_write.clone();
                async move {
                    if let Ok(mut s) = seen.lock() {
                        if s.len() >= MAX_EVENTS_SEEN {
                            s.remove(0);
                        }
                        s.push(
                            json!({"topic": ev.topic, "event": ev.event, "context": ev.context}),
                        );
                    }
                    Ok(())
                }
            });
        Self { router, seen }
    }

    /// Events received so far (`{"topic", "event", "context"}` objects).
    pub fn events_seen(&self) -> Vec<Value> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Service for ExampleService {
    fn info(&self) -> ServiceInfo {
        self.router.info()
    }

    fn call(
        &self,
        method: &str,
        params: &Map<String, Value>,
        ctx: Arc<RequestContext>,
    ) -> BoxFuture<'static, Result<Value, ServiceError>> {
        self.router.call(method, params, ctx)
    }

    fn event_bindings(&self) -> Vec<String> {
        self.router.event_bindings()
    }

    fn on_event(&self, event: EventBody) -> BoxFuture<'static, Result<(), ServiceError>> {
        Service::on_event(&self.router, event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `slow` refuses more than [`MAX_SLOW_SECONDS`] (it would outlast RabbitMQ's
    /// consumer ack timeout) with a validation error naming the value, at once.
    #[tokio::test]
    async fn slow_is_capped_below_the_consumer_ack_timeout() {
        const { assert!(MAX_SLOW_SECONDS < 30.0 * 60.0) };
        let svc = ExampleService::new();
        for seconds in [MAX_SLOW_SECONDS + 1.0, 1800.0, -1.0] {
            let params = json!({ "seconds": seconds });
            let ctx = Arc::new(RequestContext::new("example", "slow", json!({})));
            let call = svc.call("slow", params.as_object().unwrap(), ctx);
            let r = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .unwrap_or_else(|_| panic!("slow({seconds}) was accepted (still sleeping)"));
            let e = r.unwrap_err();
            assert_eq!(e.error, class::VALIDATION, "slow({seconds}): {e:?}");
            assert!(
                e.description.contains(&seconds.to_string()),
                "slow({seconds}): {e:?}"
            );
        }
    }
}
