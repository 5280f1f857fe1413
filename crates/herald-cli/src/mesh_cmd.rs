//! `herald mesh`: serve the example service, call, describe, listen, demo.
//!
//! Without `--amqp` every command runs on the in-process broker inside this process:
//! `call` and `describe` then talk to an example service hosted in-process under the
//! name `example`, `serve-example` and `listen` only see this process. With
//! `--amqp URL` they use RabbitMQ and interoperate with other processes and with
//! Python nuropb.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_mesh::amqp::AmqpBackend;
use herald_mesh::crypto::{NuropbCipher, ServiceKey};
use herald_mesh::example::ExampleService;
use herald_mesh::{
    Backend, InProcBroker, Mesh, MeshConfig, MeshError, RequestOptions, ServiceDescription,
};
use serde_json::{Value, json};

/// Name of the example service hosted in-process by `call`, `describe`, `demo` and
/// `herald up`.
pub const EXAMPLE_NAME: &str = "example";

/// RSA key size of the example service when no `--key` is given.
const KEY_BITS: usize = 2048;

#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Run the example service (add, echo, fail, slow, emit, events_seen, secret_echo)
    /// until Ctrl-C, then shut down gracefully.
    ServeExample(ServeArgs),
    /// Call a method and print its result.
    Call(CallArgs),
    /// Print a service's describe document.
    Describe(DescribeArgs),
    /// Print events whose topic matches a pattern (`*` one word, `#` any words).
    Listen(ListenArgs),
    /// Run the example service and a client in this process, printing each call.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f (default: in-process).
    #[arg(long, value_name = "URL")]
    amqp: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Service name.
    #[arg(long, default_value = EXAMPLE_NAME)]
    name: String,
    /// Fixed instance id (default: random).
    #[arg(long)]
    instance_id: Option<String>,
    /// PEM file with the service's RSA private key; give every instance the same
    /// file so that any of them can decrypt. A file that does not exist yet is created
    /// with a new key (by the first instance that gets there; the others read it).
    /// Default: a fresh key for this instance alone.
    #[arg(long, value_name = "PEM")]
    key: Option<std::path::PathBuf>,
    /// Requests handled concurrently.
    #[arg(long, default_value_t = herald_mesh::mesh::DEFAULT_PREFETCH)]
    prefetch: u16,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Service name.
    service: String,
    /// Method name.
    method: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Caller context as a JSON object.
    #[arg(long, default_value = "{}")]
    context: String,
    /// Request ttl and deadline in milliseconds (1 to 4294967295: RabbitMQ refuses a
    /// larger message expiration).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(..=herald_mesh::mesh::MAX_TTL_MS)
    )]
    ttl: u64,
    /// Trace id.
    #[arg(long)]
    trace_id: Option<String>,
    /// Encrypt the call with the service's public key.
    #[arg(long)]
    encrypted: bool,
    /// Send as a command (no reply).
    #[arg(long)]
    command: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Service name.
    service: String,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Topic pattern.
    topic: String,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print each call as a JSON line.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: MeshCommand) -> anyhow::Result<()> {
    match cmd {
        MeshCommand::ServeExample(a) => serve_example(a).await,
        MeshCommand::Call(a) => call(a).await,
        MeshCommand::Describe(a) => describe(a).await,
        MeshCommand::Listen(a) => listen(a).await,
        MeshCommand::Demo(a) => demo(a).await,
    }
}

/// The in-process mesh hosting the example service (for `herald up`).
#[derive(Debug)]
pub struct ExampleHost {
    /// The broker; connect more handles to it with `Mesh::connect(Arc::new(broker.clone()), ..)`.
    pub broker: InProcBroker,
    /// The example service's handle.
    pub service: Mesh,
}

impl ExampleHost {
    /// A client handle on the same in-process broker.
    pub async fn client(&self) -> anyhow::Result<Mesh> {
        Ok(Mesh::connect(Arc::new(self.broker.clone()), MeshConfig::client()).await?)
    }

    /// Graceful shutdown of the example service.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.service.disconnect().await?;
        Ok(())
    }
}

/// Starts the in-process broker with the example service under `name`, with a key pair
/// of its own (see [`example_config`]). Used by `herald up`.
pub async fn start_inprocess_example(name: &str) -> anyhow::Result<ExampleHost> {
    let broker = InProcBroker::new();
    let service = Mesh::connect(Arc::new(broker.clone()), example_config(name).await?)
        .await
        .map_err(user_or_runtime)?;
    tracing::info!(
        service = name,
        instance = service.instance_id(),
        "in-process mesh with the example service started"
    );
    Ok(ExampleHost { broker, service })
}

/// The example service's configuration with a key pair of its own, as every in-process
/// host of it needs: `secret_echo` requires encryption, so its description publishes a
/// public key (as nuropb does for a service with an encrypted method) and callers can
/// encrypt to it.
async fn example_config(name: &str) -> anyhow::Result<MeshConfig> {
    let key = tokio::task::spawn_blocking(|| ServiceKey::generate(KEY_BITS)).await??;
    Ok(MeshConfig::service(name, ExampleService::new()).service_keys(Arc::new(key)))
}

/// Maps mesh errors caused by user input to exit status 2.
fn user_or_runtime(e: MeshError) -> anyhow::Error {
    match e {
        MeshError::InvalidArgument { .. } => crate::bad_input(e),
        other => anyhow::Error::new(other),
    }
}

fn backend_of(amqp: Option<&str>) -> anyhow::Result<Option<Arc<dyn Backend>>> {
    match amqp {
        None => Ok(None),
        Some(url) => {
            let b = AmqpBackend::new(url).map_err(|e| {
                crate::bad_input(
                    anyhow::Error::new(e)
                        .context(format!("--amqp {}", herald_mesh::amqp::redact(url))),
                )
            })?;
            Ok(Some(Arc::new(b)))
        }
    }
}

fn parse_object(flag: &str, text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        crate::bad_input(anyhow::anyhow!("--{flag} is not valid JSON ({e}): {text}"))
    })?;
    if !v.is_object() {
        return Err(crate::bad_input(anyhow::anyhow!(
            "--{flag} must be a JSON object, got: {text}"
        )));
    }
    Ok(v)
}

fn error_json(e: &MeshError) -> Value {
    let (kind, extra) = match e {
        MeshError::Remote { error, description } => (error.clone(), json!(description)),
        MeshError::Handling { description, .. } => {
            ("NuropbHandlingError".into(), json!(description))
        }
        other => (error_kind(other).into(), json!(other.to_string())),
    };
    json!({"error": kind, "description": extra})
}

fn error_kind(e: &MeshError) -> &'static str {
    match e {
        MeshError::Timeout { .. } => "Timeout",
        MeshError::Expired { .. } => "Expired",
        MeshError::Handling { .. } => "Handling",
        MeshError::NotFound { .. } => "NotFound",
        MeshError::EncryptionRequired { .. } => "EncryptionRequired",
        MeshError::Encryption(_) => "Encryption",
        MeshError::Remote { .. } => "Remote",
        MeshError::Malformed(_) => "Malformed",
        MeshError::Disconnected => "Disconnected",
        MeshError::ConnectionLost { .. } => "ConnectionLost",
        MeshError::Unroutable { .. } => "Unroutable",
        MeshError::ClientOnly { .. } => "ClientOnly",
        MeshError::InvalidArgument { .. } => "InvalidArgument",
        MeshError::BackendTimeout { .. } => "BackendTimeout",
        _ => "Error",
    }
}

/// A mesh to run a client command on: RabbitMQ, or in-process with the example
/// service hosted alongside.
struct Session {
    client: Mesh,
    host: Option<Mesh>,
}

impl Session {
    async fn open(amqp: Option<&str>) -> anyhow::Result<Self> {
        let cipher = MeshConfig::client().client_cipher(Arc::new(NuropbCipher));
        match backend_of(amqp)? {
            Some(b) => {
                let client = Mesh::connect(b, cipher)
                    .await
                    .context("connecting to RabbitMQ")?;
                Ok(Self { client, host: None })
            }
            None => {
                let broker: Arc<dyn Backend> = Arc::new(InProcBroker::new());
                let host =
                    Mesh::connect(broker.clone(), example_config(EXAMPLE_NAME).await?).await?;
                let client = Mesh::connect(broker, cipher).await?;
                Ok(Self {
                    client,
                    host: Some(host),
                })
            }
        }
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        if let Some(h) = self.host {
            let _ = h.disconnect().await;
        }
    }
}

async fn call(a: CallArgs) -> anyhow::Result<()> {
    let params = parse_object("params", &a.params)?;
    let context = parse_object("context", &a.context)?;
    if a.ttl == 0 {
        return Err(crate::bad_input(anyhow::anyhow!(
            "--ttl must be at least 1 ms"
        )));
    }
    let session = Session::open(a.backend.amqp.as_deref()).await?;
    let opts = RequestOptions {
        context,
        ttl: Some(Duration::from_millis(a.ttl)),
        timeout: None,
        trace_id: a.trace_id.clone(),
        encrypted: a.encrypted,
    };
    let result = if a.command {
        session
            .client
            .command(&a.service, &a.method, params, opts)
            .await
            .map(|()| json!(null))
    } else {
        session
            .client
            .request_with(&a.service, &a.method, params, opts)
            .await
    };
    session.close().await;
    match result {
        Ok(v) => {
            if a.backend.json {
                outln!("{}", json!({"result": v}));
            } else {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(())
        }
        Err(e) => {
            if a.backend.json {
                crate::print_failure_line(error_json(&e));
            }
            Err(user_or_runtime(e)).with_context(|| format!("{}.{} failed", a.service, a.method))
        }
    }
}

fn print_description(d: &ServiceDescription) {
    outln!(
        "service {} {}",
        d.service_name,
        d.service_version.as_deref().unwrap_or("")
    );
    if let Some(desc) = d.description.as_deref().filter(|s| !s.is_empty()) {
        outln!("  {desc}");
    }
    outln!(
        "  public key: {}",
        if d.public_key.is_some() { "yes" } else { "no" }
    );
    for (name, m) in &d.methods {
        let params: Vec<String> = m
            .parameters
            .as_ref()
            .map(|p| {
                p.properties
                    .iter()
                    .map(|(n, s)| {
                        if s.type_name.is_empty() {
                            n.clone()
                        } else {
                            format!("{n}: {}", s.type_name)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let enc = if m.requires_encryption {
            "  [requires encryption]"
        } else {
            ""
        };
        outln!(
            "  {name}({}){enc}  {}",
            params.join(", "),
            m.description.as_deref().unwrap_or("")
        );
    }
}

async fn describe(a: DescribeArgs) -> anyhow::Result<()> {
    let session = Session::open(a.backend.amqp.as_deref()).await?;
    let r = session.client.describe_service(&a.service, true).await;
    session.close().await;
    match r {
        Ok(d) => {
            if a.backend.json {
                outln!("{}", serde_json::to_string(d.as_ref())?);
            } else {
                print_description(&d);
            }
            Ok(())
        }
        Err(e) => {
            if a.backend.json {
                crate::print_failure_line(error_json(&e));
            }
            Err(user_or_runtime(e)).with_context(|| format!("describing {}", a.service))
        }
    }
}

async fn listen(a: ListenArgs) -> anyhow::Result<()> {
    herald_mesh::message::validate_topic_pattern(&a.topic).map_err(crate::bad_input)?;
    let backend: Arc<dyn Backend> = match backend_of(a.backend.amqp.as_deref())? {
        Some(b) => b,
        None => {
            eprintln!(
                "herald: listening on the in-process mesh of this process only (use --amqp URL for a broker)"
            );
            Arc::new(InProcBroker::new())
        }
    };
    let mesh = Mesh::connect(backend, MeshConfig::client()).await?;
    let mut sub = mesh.subscribe(&a.topic).await.map_err(user_or_runtime)?;
    let stop = crate::shutdown::stop_signal()?;
    tokio::pin!(stop);
    if !a.backend.json {
        eprintln!("herald: listening for {}", a.topic);
    }
    let mut seen = 0u64;
    loop {
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
        let ev = tokio::select! {
            ev = sub.next() => ev,
            () = &mut stop => None,
        };
        let Some(ev) = ev else { break };
        seen += 1;
        if a.backend.json {
            outln!("{}", serde_json::to_string(&ev)?);
        } else {
            outln!("{}: {}", ev.topic, ev.event);
        }
    }
    mesh.disconnect().await?;
    Ok(())
}

/// The service key in `path`, or a new one written there when the file does not exist.
/// Several instances started at once with the same path end up with the same key: the
/// new key is written to a file of its own and linked into place only if nothing is
/// there yet (an atomic create-if-absent), so a reader never sees half a key.
fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<ServiceKey> {
    let bad = |e: anyhow::Error| crate::bad_input(e.context(format!("--key {}", path.display())));
    // (`try_exists`: a file that cannot be looked at is an error, not a reason to make
    // a new key.)
    if path
        .try_exists()
        .map_err(|e| bad(anyhow::Error::new(e).context("looking for the key file")))?
    {
        return ServiceKey::from_pem_file(path).map_err(|e| bad(e.into()));
    }
    let key = ServiceKey::generate(KEY_BITS)?;
    let pem = key.to_pkcs8_pem()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    // A name of its own for this attempt (process, thread, time), removed afterwards.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".herald-key-{}-{:?}-{nanos}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        // A private key: readable by its owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        std::io::Write::write_all(&mut f, pem.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            eprintln!(
                "herald: wrote a new service key to {} (give every instance of the service this file)",
                path.display()
            );
            Ok(key)
        }
        // Another instance got there first: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            ServiceKey::from_pem_file(path).map_err(|e| bad(e.into()))
        }
        Err(e) => Err(bad(anyhow::Error::new(e).context("writing a new key"))),
    }
}

async fn serve_example(a: ServeArgs) -> anyhow::Result<()> {
    let key = match a.key.clone() {
        Some(path) => tokio::task::spawn_blocking(move || load_or_create_key(&path)).await??,
        None => {
            if a.backend.amqp.is_some() {
                eprintln!(
                    "herald: note: no --key, so this instance's key is its own; encrypted calls \
                     that reach another instance of {} fail there (give every instance the same --key file)",
                    a.name
                );
            }
            tokio::task::spawn_blocking(|| ServiceKey::generate(KEY_BITS)).await??
        }
    };
    let backend: Arc<dyn Backend> = match backend_of(a.backend.amqp.as_deref())? {
        Some(b) => b,
        None => Arc::new(InProcBroker::new()),
    };
    let mut cfg = MeshConfig::service(&a.name, ExampleService::new())
        .service_keys(Arc::new(key))
        .prefetch(a.prefetch);
    if let Some(id) = &a.instance_id {
        cfg = cfg.instance_id(id);
    }
    let mesh = Mesh::connect(backend.clone(), cfg)
        .await
        .map_err(user_or_runtime)?;
    // Installed before the ready line: a signal right after it still shuts down gracefully.
    let stop = crate::shutdown::stop_signal()?;
    tokio::pin!(stop);
    if a.backend.json {
        outln!(
            "{}",
            json!({"service": mesh.service_name(), "instance_id": mesh.instance_id(), "backend": backend.name(), "ready": true})
        );
    } else {
        outln!(
            "serving example service {} (instance {}) on the {} backend; Ctrl-C to stop",
            mesh.service_name(),
            mesh.instance_id(),
            backend.name()
        );
    }
    let mut leader = mesh.leader_watch();
    loop {
        tokio::select! {
            () = &mut stop => break,
            changed = leader.changed() => match changed {
                Some(now) => tracing::info!(leader = now, "leadership changed"),
                None => break,
            },
        }
    }
    eprintln!("herald: shutting down, finishing in-flight requests");
    mesh.disconnect().await?;
    Ok(())
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let broker: Arc<dyn Backend> = Arc::new(InProcBroker::new());
    let service = Mesh::connect(broker.clone(), example_config(EXAMPLE_NAME).await?).await?;
    let client = Mesh::connect(
        broker.clone(),
        MeshConfig::client().client_cipher(Arc::new(NuropbCipher)),
    )
    .await?;
    let mut events = client.subscribe("interop.#").await?;
    let show = |what: &str, r: &Result<Value, MeshError>| {
        if a.json {
            let line = match r {
                Ok(v) => json!({"call": what, "result": v}),
                Err(e) => json!({"call": what, "error": error_json(e)}),
            };
            outln!("{line}");
        } else {
            match r {
                Ok(v) => outln!("{what:<48} -> {v}"),
                Err(e) => outln!("{what:<48} -> error: {e}"),
            }
        }
    };
    let plain = |ctx: Value| RequestOptions::with_context(ctx);
    let r = client
        .request_with(
            EXAMPLE_NAME,
            "add",
            json!({"a": 2, "b": 3}),
            plain(json!({})),
        )
        .await;
    show("example.add(a=2, b=3)", &r);
    let r = client
        .request_with(
            EXAMPLE_NAME,
            "echo",
            json!({"hello": "mesh"}),
            plain(json!({"user": "demo"})),
        )
        .await;
    show("example.echo(hello=\"mesh\") context={user:demo}", &r);
    let r = client
        .request_with(
            EXAMPLE_NAME,
            "fail",
            json!({"message": "as asked", "kind": "handling"}),
            plain(json!({})),
        )
        .await;
    show("example.fail(message, kind=\"handling\")", &r);
    let r = client
        .request_with(
            EXAMPLE_NAME,
            "emit",
            json!({"topic": "interop.demo", "payload": {"n": 1}}),
            plain(json!({})),
        )
        .await;
    show("example.emit(topic=\"interop.demo\")", &r);
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    let r = match ev {
        Ok(Some(ev)) => Ok(json!({"topic": ev.topic, "event": ev.event})),
        Ok(None) => Err(MeshError::Disconnected),
        Err(_) => Err(MeshError::Timeout {
            service: "events".into(),
            method: "interop.#".into(),
            after: Duration::from_secs(10),
        }),
    };
    show("listen interop.#", &r);
    let mut seen = Ok(json!([]));
    for _ in 0..50 {
        seen = client
            .request_with(EXAMPLE_NAME, "events_seen", json!({}), plain(json!({})))
            .await;
        if seen
            .as_ref()
            .is_ok_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    show("example.events_seen()", &seen);
    let r = client
        .request_with(
            EXAMPLE_NAME,
            "secret_echo",
            json!({"text": "psst"}),
            plain(json!({})),
        )
        .await;
    show("example.secret_echo(text) unencrypted", &r);
    let enc = RequestOptions {
        encrypted: true,
        ..RequestOptions::default()
    };
    let r = client
        .request_with(EXAMPLE_NAME, "secret_echo", json!({"text": "psst"}), enc)
        .await;
    show("example.secret_echo(text) encrypted", &r);
    let quick = RequestOptions {
        timeout: Some(Duration::from_millis(200)),
        ..RequestOptions::default()
    };
    let r = client
        .request_with(EXAMPLE_NAME, "slow", json!({"seconds": 1.0}), quick)
        .await;
    show("example.slow(seconds=1) with a 200 ms deadline", &r);
    let d = client.describe_service(EXAMPLE_NAME, false).await;
    let r = d.map(|d| json!(d.methods.keys().collect::<Vec<_>>()));
    show("describe example (methods)", &r);
    let r = Ok(json!(service.is_leader()));
    show("example instance is leader", &r);
    client.disconnect().await?;
    service.disconnect().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_file_is_created_once_and_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("calc.pem");
        // Four instances starting at once with the same new path: one writes the key,
        // all use it.
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| load_or_create_key(&path).expect("key")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").public_key().to_pem())
                .collect()
        });
        assert!(
            keys.iter().all(|k| k == &keys[0]),
            "instances got different keys"
        );
        let again = load_or_create_key(&path).expect("existing key");
        assert_eq!(
            again.public_key().to_pem(),
            keys[0],
            "the file's key is reused"
        );
        let on_disk = std::fs::read_to_string(&path).expect("key file");
        assert!(on_disk.contains("BEGIN PRIVATE KEY"), "{on_disk}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
        }
        // Only the key file is left behind (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        // A file that is not a key is a clear input error, not a new key.
        std::fs::write(&path, "not a key").expect("write");
        let err = load_or_create_key(&path).expect_err("garbage key file");
        assert!(format!("{err:#}").contains("calc.pem"), "{err:#}");
    }

    #[test]
    fn error_json_names_the_kind_and_keeps_the_message() {
        let lost = MeshError::ConnectionLost {
            service: "calc".into(),
            method: "add".into(),
        };
        let v = error_json(&lost);
        assert_eq!(v["error"], "ConnectionLost");
        let text = v["description"].as_str().unwrap_or_default();
        assert!(text.contains("calc.add"), "{text}");
        assert_eq!(
            error_json(&MeshError::Remote {
                error: "ValueError".into(),
                description: "bad".into(),
            }),
            json!({"error": "ValueError", "description": "bad"})
        );
        assert_eq!(
            error_json(&MeshError::Disconnected)["error"],
            "Disconnected"
        );
        let silent = error_json(&MeshError::BackendTimeout {
            backend: "amqp",
            operation: "queue.declare",
            object: "queue \"q1\"".into(),
            after: Duration::from_secs(30),
        });
        assert_eq!(silent["error"], "BackendTimeout");
        let text = silent["description"].as_str().unwrap_or_default();
        assert!(
            text.contains("queue.declare") && text.contains("q1") && text.contains("30s"),
            "{text}"
        );
    }
}
