//! Services: the [`Service`] trait, the typed [`ServiceRouter`] builder, the request
//! context handlers receive, the describe document, and the encryption hooks.
//!
//! ```
//! use std::sync::Arc;
//! use herald_mesh::service::{MethodInfo, ServiceRouter, RequestContext};
//! use herald_mesh::ServiceError;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! let calc = ServiceRouter::new("1.0", "A calculator")
//!     .method(
//!         MethodInfo::new("add", "a + b").param("a", "int", "").param("b", "int", ""),
//!         |p: Add, _ctx: Arc<RequestContext>| async move { Ok::<_, ServiceError>(p.a + p.b) },
//!     );
//! assert!(calc.method_info("add").is_some());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{MeshError, ServiceError};
use crate::fasthash::FastMap;
use crate::message::EventBody;

/// What a handler learns about the call it serves.
#[derive(Debug)]
pub struct RequestContext {
    /// This service's name.
    pub service: String,
    /// The called method.
    pub method: String,
    /// The call's correlation id.
    pub correlation_id: String,
    /// The call's trace id.
    pub trace_id: Option<String>,
    /// The caller's context object.
    pub context: Value,
    /// The call arrived encrypted.
    pub encrypted: bool,
    /// A command (no reply will be sent).
    pub is_command: bool,
    /// The caller's deadline, if it sent one.
    pub deadline: Option<SystemTime>,
    events: Mutex<Vec<(String, Value)>>,
}

impl RequestContext {
    /// A context (used by the mesh; public for testing handlers directly).
    pub fn new(service: impl Into<String>, method: impl Into<String>, context: Value) -> Self {
        Self {
            service: service.into(),
            method: method.into(),
            correlation_id: String::new(),
            trace_id: None,
            context,
            encrypted: false,
            is_command: false,
            deadline: None,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Queues an event to publish once the call has been answered, with the call's
    /// correlation and trace ids (nuropb's `NuropbSuccess(events=...)`).
    pub fn emit(&self, topic: impl Into<String>, event: Value) {
        if let Ok(mut events) = self.events.lock() {
            events.push((topic.into(), event));
        }
    }

    /// Takes the queued events.
    pub fn take_events(&self) -> Vec<(String, Value)> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

/// Metadata of one parameter (for describe).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Name.
    pub name: String,
    /// Type name (free text, nuropb uses the Python annotation).
    pub type_name: String,
    /// Description.
    pub description: String,
    /// Default value; a parameter without one is required.
    pub default: Option<Value>,
}

/// Metadata of one method (for describe and enforcement).
#[derive(Clone, Debug, PartialEq)]
pub struct MethodInfo {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Calls must be encrypted (enforced by the mesh).
    pub requires_encryption: bool,
    /// Not listed by describe, still callable (as nuropb's `hide_method`).
    pub hidden: bool,
    /// Parameters.
    pub params: Vec<ParamInfo>,
}

impl MethodInfo {
    /// A visible, unencrypted method without parameters.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            requires_encryption: false,
            hidden: false,
            params: Vec::new(),
        }
    }

    /// Adds a required parameter.
    pub fn param(mut self, name: &str, type_name: &str, description: &str) -> Self {
        self.params.push(ParamInfo {
            name: name.into(),
            type_name: type_name.into(),
            description: description.into(),
            default: None,
        });
        self
    }

    /// Adds an optional parameter with a default.
    pub fn param_default(
        mut self,
        name: &str,
        type_name: &str,
        description: &str,
        default: Value,
    ) -> Self {
        self.params.push(ParamInfo {
            name: name.into(),
            type_name: type_name.into(),
            description: description.into(),
            default: Some(default),
        });
        self
    }

    /// Marks the method as requiring encryption.
    pub fn requires_encryption(mut self) -> Self {
        self.requires_encryption = true;
        self
    }

    /// Hides the method from describe.
    pub fn hidden(mut self) -> Self {
        self.hidden = true;
        self
    }
}

/// Service-level metadata (for describe).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServiceInfo {
    /// Version string.
    pub version: String,
    /// Description.
    pub description: String,
    /// Methods (hidden ones included).
    pub methods: Vec<MethodInfo>,
}

/// One property of a method's parameter schema: `{type, description, default}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct PropertySchema {
    /// Type name or `""`.
    #[serde(rename = "type", default)]
    pub type_name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Default value; `""` when the parameter is required (nuropb's `map_default`
    /// returns `""` for a parameter without a default, and lists it in `required`).
    #[serde(default)]
    pub default: Value,
}

/// nuropb's parameter schema: `properties` is a **list of `[name, schema]` pairs**.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParametersSchema {
    /// Always `"object"`.
    #[serde(rename = "type", default)]
    pub type_name: String,
    /// `[[name, {type, description, default}], ...]`.
    #[serde(default)]
    pub properties: Vec<(String, PropertySchema)>,
    /// Required parameter names.
    #[serde(default)]
    pub required: Vec<String>,
}

/// One method in the describe document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodDescription {
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Calls must be encrypted.
    #[serde(default)]
    pub requires_encryption: bool,
    /// Parameter schema.
    #[serde(default)]
    pub parameters: Option<ParametersSchema>,
}

/// The document `nuropb_describe` returns (nuropb §4.8 shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceDescription {
    /// Service name. nuropb sends null when the service class has no `_service_name`;
    /// [`ServiceDescription::from_document`] then fills in the name it was asked for.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub service_name: String,
    /// Version.
    #[serde(default)]
    pub service_version: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// At least one method requires encryption (a bool, as nuropb sends it).
    #[serde(default)]
    pub encrypted_methods: bool,
    /// PEM SubjectPublicKeyInfo of the service key (only if a method requires
    /// encryption).
    #[serde(default)]
    pub public_key: Option<String>,
    /// Visible methods.
    #[serde(default)]
    pub methods: BTreeMap<String, MethodDescription>,
}

/// A string that may be null (null reads as `""`).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl ServiceDescription {
    /// Reads the describe document `doc` that `service` answered. A null or missing
    /// `service_name` (nuropb sends null when the class has no `_service_name`) is
    /// filled with `service`.
    pub fn from_document(service: &str, doc: Value) -> Result<Self, MeshError> {
        let mut desc: Self = serde_json::from_value(doc)
            .map_err(|e| MeshError::Malformed(format!("describe document of {service:?}: {e}")))?;
        if desc.service_name.is_empty() {
            service.clone_into(&mut desc.service_name);
        }
        Ok(desc)
    }

    /// Builds the document for `service_name` from `info` (hidden methods left out).
    pub fn build(service_name: &str, info: &ServiceInfo, public_key: Option<String>) -> Self {
        let encrypted_methods = info.methods.iter().any(|m| m.requires_encryption);
        let methods = info
            .methods
            .iter()
            .filter(|m| !m.hidden)
            .map(|m| {
                let properties = m
                    .params
                    .iter()
                    .map(|p| {
                        (
                            p.name.clone(),
                            PropertySchema {
                                type_name: p.type_name.clone(),
                                description: p.description.clone(),
                                // nuropb's map_default: "" for a required one.
                                default: p
                                    .default
                                    .clone()
                                    .unwrap_or_else(|| Value::String(String::new())),
                            },
                        )
                    })
                    .collect();
                let required = m
                    .params
                    .iter()
                    .filter(|p| p.default.is_none())
                    .map(|p| p.name.clone())
                    .collect();
                (
                    m.name.clone(),
                    MethodDescription {
                        description: Some(m.description.clone()),
                        requires_encryption: m.requires_encryption,
                        parameters: Some(ParametersSchema {
                            type_name: "object".into(),
                            properties,
                            required,
                        }),
                    },
                )
            })
            .collect();
        Self {
            service_name: service_name.to_owned(),
            service_version: Some(info.version.clone()),
            description: Some(info.description.clone()),
            warnings: Vec::new(),
            encrypted_methods,
            public_key: if encrypted_methods { public_key } else { None },
            methods,
        }
    }
}

/// A service: methods callable through the mesh, plus optional event handling.
///
/// Implement it directly, or build one with [`ServiceRouter`]. The mesh handles
/// `nuropb_describe`, unknown methods and encryption enforcement before calling
/// [`Service::call`].
pub trait Service: Send + Sync + fmt::Debug + 'static {
    /// Metadata: version, description, methods.
    fn info(&self) -> ServiceInfo;

    /// Calls `method` with keyword `params`. The parameters are lent (they belong to
    /// the delivery, which the mesh keeps until the call is settled): read or
    /// deserialize them before the returned future, which must not borrow them.
    fn call(
        &self,
        method: &str,
        params: &Map<String, Value>,
        ctx: Arc<RequestContext>,
    ) -> BoxFuture<'static, Result<Value, ServiceError>>;

    /// Topic patterns whose events this service receives on its service queue.
    fn event_bindings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Handles one event (awaited, unlike nuropb). An error dead-letters the event.
    fn on_event(&self, event: EventBody) -> BoxFuture<'static, Result<(), ServiceError>> {
        let _ = event;
        futures::future::ready(Ok(())).boxed()
    }
}

type Handler = Arc<
    dyn Fn(
            &Map<String, Value>,
            Arc<RequestContext>,
        ) -> BoxFuture<'static, Result<Value, ServiceError>>
        + Send
        + Sync,
>;
type EventHandler =
    Arc<dyn Fn(EventBody) -> BoxFuture<'static, Result<(), ServiceError>> + Send + Sync>;

/// A [`Service`] built from typed closures.
///
/// Parameters are deserialised from the call's keyword arguments into the closure's
/// parameter type (a failure is a `NuropbValidationError`), results are serialised.
#[derive(Clone)]
pub struct ServiceRouter {
    info: ServiceInfo,
    handlers: FastMap<String, Handler>,
    events: Vec<(String, EventHandler)>,
}

impl fmt::Debug for ServiceRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRouter")
            .field("info", &self.info)
            .field(
                "event_patterns",
                &self.events.iter().map(|e| &e.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ServiceRouter {
    /// An empty service.
    pub fn new(version: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            info: ServiceInfo {
                version: version.into(),
                description: description.into(),
                methods: Vec::new(),
            },
            handlers: FastMap::default(),
            events: Vec::new(),
        }
    }

    /// Registers a method with typed parameters `P` and result `R`.
    pub fn method<P, R, F, Fut>(mut self, info: MethodInfo, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(P, Arc<RequestContext>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ServiceError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let name = info.name.clone();
        let boxed: Handler = Arc::new(move |params, ctx| {
            let parsed = P::deserialize(params);
            match parsed {
                Err(e) => {
                    let err = ServiceError::validation(format!(
                        "invalid parameters for {}.{}: {e}",
                        ctx.service, ctx.method
                    ));
                    futures::future::ready(Err(err)).boxed()
                }
                Ok(p) => {
                    let fut = handler(p, ctx);
                    async move {
                        let r = fut.await?;
                        serde_json::to_value(r).map_err(|e| {
                            ServiceError::exception(format!("cannot encode result: {e}"))
                        })
                    }
                    .boxed()
                }
            }
        });
        self.info.methods.retain(|m| m.name != name);
        self.info.methods.push(info);
        self.handlers.insert(name, boxed);
        self
    }

    /// Registers an event handler for a topic pattern (`*`, `#`).
    pub fn on_event<F, Fut>(mut self, pattern: impl Into<String>, handler: F) -> Self
    where
        F: Fn(EventBody) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.events
            .push((pattern.into(), Arc::new(move |ev| handler(ev).boxed())));
        self
    }

    /// Metadata of a registered method.
    pub fn method_info(&self, name: &str) -> Option<&MethodInfo> {
        self.info.methods.iter().find(|m| m.name == name)
    }
}

impl Service for ServiceRouter {
    fn info(&self) -> ServiceInfo {
        self.info.clone()
    }

    fn call(
        &self,
        method: &str,
        params: &Map<String, Value>,
        ctx: Arc<RequestContext>,
    ) -> BoxFuture<'static, Result<Value, ServiceError>> {
        match self.handlers.get(method) {
            Some(h) => h(params, ctx),
            None => futures::future::ready(Err(ServiceError::handling(format!(
                "Unknown method {method}"
            ))))
            .boxed(),
        }
    }

    fn event_bindings(&self) -> Vec<String> {
        self.events.iter().map(|(p, _)| p.clone()).collect()
    }

    fn on_event(&self, event: EventBody) -> BoxFuture<'static, Result<(), ServiceError>> {
        let handlers: Vec<EventHandler> = self
            .events
            .iter()
            .filter(|(p, _)| crate::message::topic_matches(p, &event.topic))
            .map(|(_, h)| h.clone())
            .collect();
        async move {
            for h in handlers {
                h(event.clone()).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

/// Per-call symmetric session (nuropb: one Fernet key per correlation id).
pub trait SessionKey: Send + Sync + fmt::Debug {
    /// Encrypts a body with this session's key.
    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, MeshError>;
    /// Decrypts a body sealed with this session's key.
    fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, MeshError>;
}

/// A service's key pair, shared by all instances of the service (configure every
/// instance with the same keys so any of them can decrypt).
pub trait ServiceKeys: Send + Sync + fmt::Debug {
    /// PEM SubjectPublicKeyInfo published in the describe document.
    fn public_key_pem(&self) -> String;
    /// Decrypts a request body; returns the plaintext and the session used to seal
    /// the reply.
    fn open_request(&self, body: &[u8]) -> Result<(Vec<u8>, Box<dyn SessionKey>), MeshError>;
}

/// Client side of encryption: seals a request for a service's public key.
pub trait ClientCipher: Send + Sync + fmt::Debug {
    /// Encrypts a request body for the service owning `public_key_pem`; returns the
    /// wire body and the session that opens the reply.
    fn seal_request(
        &self,
        public_key_pem: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Box<dyn SessionKey>), MeshError>;
}

/// Builds a [`ServiceRouter`] from function-like method definitions.
///
/// Each method lists the request context's name first, then its parameters with their
/// types (they become a serde-typed parameter struct, so the calling crate needs
/// `serde` with `derive`), an optional `requires_encryption` marker, and a body
/// returning `Result<impl Serialize, ServiceError>`. Doc comments become the method
/// descriptions of the describe document.
///
/// ```
/// use herald_mesh::{ServiceError, service_router};
///
/// let calc = service_router! {
///     version: "1.0", description: "A calculator";
///
///     /// Returns a + b.
///     fn add(_ctx, a: i64, b: i64) {
///         Ok::<_, ServiceError>(a + b)
///     }
///
///     /// Echoes a secret; calls must be encrypted.
///     fn reveal(ctx, text: String) requires_encryption {
///         Ok::<_, ServiceError>(format!("{text} (trace {:?})", ctx.trace_id))
///     }
/// };
/// let add = calc.method_info("add").unwrap();
/// assert_eq!(add.description, " Returns a + b.");
/// assert_eq!(add.params.len(), 2);
/// assert!(calc.method_info("reveal").unwrap().requires_encryption);
/// ```
#[macro_export]
macro_rules! service_router {
    (
        version: $version:expr, description: $description:expr;
        $(
            $(#[doc = $doc:expr])*
            fn $name:ident ( $ctx:ident $(, $param:ident : $ty:ty)* $(,)? ) $($marker:ident)? $body:block
        )*
    ) => {{
        let router = $crate::service::ServiceRouter::new($version, $description);
        $(
            let router = {
                #[derive(::serde::Deserialize)]
                #[allow(non_camel_case_types)]
                struct $name {
                    $($param: $ty,)*
                }
                let info = $crate::service::MethodInfo::new(stringify!($name), concat!("" $(, $doc)*))
                    $(.param(stringify!($param), stringify!($ty), ""))*;
                $(let info = $crate::__service_router_marker!(info, $marker);)?
                router.method(
                    info,
                    |params: $name, $ctx: ::std::sync::Arc<$crate::service::RequestContext>| async move {
                        let $name { $($param,)* } = params;
                        $body
                    },
                )
            };
        )*
        router
    }};
}

/// Implementation detail of [`service_router!`]: applies a method marker.
#[doc(hidden)]
#[macro_export]
macro_rules! __service_router_marker {
    ($info:ident, requires_encryption) => {
        $info.requires_encryption()
    };
    ($info:ident, hidden) => {
        $info.hidden()
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What nuropb 0.1.8's `describe_service` sends for a class without
    /// `_service_name`, `_version` or docstrings.
    fn nuropb_document(service_name: Value) -> Value {
        json!({
            "service_name": service_name,
            "service_version": null,
            "description": null,
            "warnings": [],
            "encrypted_methods": false,
            "public_key": null,
            "methods": {
                "add": {
                    "description": null,
                    "requires_encryption": false,
                    "parameters": {
                        "type": "object",
                        "properties": [
                            ["a", {"type": "int", "description": "", "default": ""}],
                            ["b", {"type": "", "description": "", "default": 1}]
                        ],
                        "required": ["a"]
                    }
                }
            }
        })
    }

    #[test]
    fn a_null_service_name_is_filled_from_the_requested_name() {
        let d = ServiceDescription::from_document("calc", nuropb_document(Value::Null)).unwrap();
        assert_eq!(d.service_name, "calc");
        assert_eq!(d.service_version, None);
        assert!(!d.encrypted_methods);
        let add = d.methods["add"].parameters.clone().unwrap();
        assert_eq!(add.required, ["a"]);
        assert_eq!(add.properties[0].1.default, json!(""));
        assert_eq!(add.properties[1].1.default, json!(1));
        let mut missing = nuropb_document(Value::Null);
        missing.as_object_mut().unwrap().remove("service_name");
        let d = ServiceDescription::from_document("calc", missing).unwrap();
        assert_eq!(d.service_name, "calc");
    }

    #[test]
    fn a_named_document_keeps_its_name_and_a_bad_one_is_malformed() {
        let d =
            ServiceDescription::from_document("calc", nuropb_document(json!("calc-v2"))).unwrap();
        assert_eq!(d.service_name, "calc-v2");
        match ServiceDescription::from_document("calc", nuropb_document(json!(7))) {
            Err(MeshError::Malformed(m)) => assert!(m.contains("\"calc\""), "{m}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_required_parameter_defaults_to_an_empty_string_as_in_nuropb() {
        let info = ServiceInfo {
            version: "1".into(),
            description: String::new(),
            methods: vec![
                MethodInfo::new("m", "")
                    .param("a", "int", "")
                    .param_default("b", "int", "", json!(null)),
            ],
        };
        let d = ServiceDescription::build("svc", &info, None);
        let p = d.methods["m"].parameters.clone().unwrap();
        assert_eq!(p.properties[0].1.default, json!(""));
        assert_eq!(p.properties[1].1.default, Value::Null);
        assert_eq!(p.required, ["a"]);
    }
}
