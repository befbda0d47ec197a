//! Servers that check who connects and what each user may do, and
//! connections that prove who they are: the harness of `security_nats` and
//! `tls_nats`. Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandate::client::{NatsAuth, NatsConnect};
use mandate::engine::{Engine, EngineConfig, EngineError};
use mandate::log::JetStreamConfig;

use super::fixtures::PATIENCE;
use super::server_binary;

/// A user of `examples/nats-server.conf`: name, password, inbox prefix.
pub struct User(pub &'static str, pub &'static str, pub &'static str);

pub const ENGINE: User = User("engine", "engine-secret", "_INBOX_engine");
pub const ORCH_ACME: User = User("orchestrator-acme", "orch-acme-secret", "_INBOX_orch_acme");
pub const ORCH_GLOBEX: User = User(
    "orchestrator-globex",
    "orch-globex-secret",
    "_INBOX_orch_globex",
);
pub const AGENT_ACME: User = User("agent-acme", "agent-acme-secret", "_INBOX_agent_acme");
pub const AGENT_GLOBEX: User = User("agent-globex", "agent-globex-secret", "_INBOX_agent_globex");
pub const TICKETING_ACME: User = User("ticketing-acme", "ticket-acme-secret", "_INBOX_ticket_acme");

/// The settings of a connection to `url` (one or more, comma-separated)
/// as `user`, with its inbox prefix.
pub fn settings_for(url: &str, user: &User) -> NatsConnect {
    NatsConnect::new(url)
        .name(user.0)
        .auth(NatsAuth::UserPassword {
            user: user.0.into(),
            password: user.1.into(),
        })
        .inbox_prefix(user.2)
}

/// The minor version of the nats-server under test (`9` for 2.9.10).
pub fn server_minor() -> u32 {
    let out = Command::new(server_binary())
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "nats-server: v2.9.10"
    let version = text
        .rsplit('v')
        .next()
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or_else(|| panic!("no minor version in {text:?}"))
}

/// The server configuration a deployment runs: `examples/nats-server.conf`
/// on servers before 2.10, `examples/nats-server-2.10.conf` (which includes
/// it and adds `sync_interval: always`) from 2.10 on. Both are copied into
/// `store`, with JetStream's store directory moved under it; `extra` is
/// appended to the file returned. Returns that file.
pub fn example_config(store: &Path, extra: &str) -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let js = store.join("js");
    for name in ["nats-server.conf", "nats-server-2.10.conf"] {
        let text = std::fs::read_to_string(examples.join(name))
            .unwrap_or_else(|e| panic!("read examples/{name}: {e}"));
        assert!(
            text.contains("\"/var/lib/mandate/nats\""),
            "examples/{name} no longer sets store_dir where this harness expects it"
        );
        let text = text.replace("/var/lib/mandate/nats", &js.display().to_string());
        std::fs::write(store.join(name), text).expect("write the server configuration");
    }
    let top = if server_minor() >= 10 {
        "nats-server-2.10.conf"
    } else {
        "nats-server.conf"
    };
    let path = store.join(top);
    if !extra.is_empty() {
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push('\n');
        text.push_str(extra);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    path
}

/// The errors a server sent one connection (permissions violations, for
/// one), as they arrived.
#[derive(Clone, Default)]
pub struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The permissions violations among them (a server 2.10 and later also
    /// sends `Invalid Publish Subject` for a request whose subject holds a
    /// wildcard, as the named consumer create form's does, and serves it
    /// all the same).
    pub fn violations(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|e| e.contains("Permissions Violation"))
            .collect()
    }

    /// Waits until the server has sent an error containing every one of
    /// `parts`, and returns it.
    pub async fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self
                .all()
                .into_iter()
                .find(|e| parts.iter().all(|p| e.contains(p)))
            {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never sent an error with {parts:?}; it sent {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the server refused a publish on `subject`.
    pub async fn publish_refused(&self, subject: &str) -> String {
        self.wait_for(&[
            "Permissions Violation for Publish",
            &format!("\"{subject}\""),
        ])
        .await
    }

    /// Waits until the server refused a subscription to `subject`.
    pub async fn subscription_refused(&self, subject: &str) -> String {
        self.wait_for(&[
            "Permissions Violation for Subscription",
            &format!("\"{subject}\""),
        ])
        .await
    }
}

/// Connects with `settings`, recording every error the server sends.
pub async fn connect_recording(settings: &NatsConnect) -> (async_nats::Client, ServerErrors) {
    let errors = ServerErrors::default();
    let sink = errors.clone();
    let options = settings
        .options()
        .await
        .expect("usable connection settings")
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.0.lock().unwrap().push(e.to_string());
                }
            }
        });
    let nc = settings
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("connect with {settings:?}: {e}"));
    (nc, errors)
}

/// An engine serving (all tenants, open: these suites test the transport,
/// not `Mandate-Auth`) on the connection it is given, until dropped.
pub struct ServedOn {
    pub engine: Engine,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
}

impl ServedOn {
    pub async fn start(nc: async_nats::Client) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            allow_open_tenants: true,
            ..EngineConfig::default()
        };
        let engine = Engine::nats(nc, dir.path(), JetStreamConfig::default(), config)
            .await
            .expect("open the engine with its own user");
        let (tx, task) = super::served::serve_in_task(&engine);
        Self {
            engine,
            _dir: dir,
            stop: Some(tx),
            task,
        }
    }

    /// Stops serving and says how the engine ended.
    pub async fn stop(mut self) -> Result<(), EngineError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("the engine stops within 15 s")
            .expect("the engine task does not panic")
    }
}

impl Drop for ServedOn {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The signal stream's name, as the engine creates it.
pub const SIGNAL_STREAM: &str = "MANDATE_SIGNALS";

/// The consumer a process's guard hub follows a tenant's signals with:
/// ordered (push, flow control, idle heartbeats), named so that the create
/// request names its filter in the subject (the only form a server 2.9 can
/// restrict by permission), on `filter`, from new signals on. Returns it
/// with its name, or the client's error (a refused request times out).
pub async fn ordered_signal_consumer(
    nc: &async_nats::Client,
    filter: &str,
) -> (
    String,
    Result<
        async_nats::jetstream::consumer::Consumer<
            async_nats::jetstream::consumer::push::OrderedConfig,
        >,
        async_nats::jetstream::stream::ConsumerError,
    >,
) {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let name = format!("mandate_hub_{}", uuid::Uuid::new_v4().simple());
    let mut js = async_nats::jetstream::new(nc.clone());
    js.set_timeout(Duration::from_secs(2));
    let made = js
        .create_consumer_on_stream(
            OrderedConfig {
                name: Some(name.clone()),
                filter_subject: filter.to_string(),
                deliver_subject: nc.new_inbox(),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            },
            SIGNAL_STREAM,
        )
        .await;
    (name, made)
}

/// Asks, on `nc`, for a consumer on the signal stream filtered to `filter`
/// (named, in the create form an agent's permission admits) that delivers
/// to `deliver` from `deliver_policy` on, without acks. The deliver subject
/// is in the request's body, which permissions do not read. Returns whether
/// the server took it, and its answer.
pub async fn redirect_signals(
    nc: &async_nats::Client,
    filter: &str,
    deliver: &str,
    deliver_policy: &str,
) -> (bool, serde_json::Value) {
    let name = format!("mandate_hub_{}", uuid::Uuid::new_v4().simple());
    let config = serde_json::json!({
        "name": name,
        "filter_subject": filter,
        "deliver_subject": deliver,
        "deliver_policy": deliver_policy,
        "ack_policy": "none",
    });
    let reply = nc
        .request(
            format!("$JS.API.CONSUMER.CREATE.{SIGNAL_STREAM}.{name}.{filter}"),
            serde_json::json!({"stream_name": SIGNAL_STREAM, "config": config})
                .to_string()
                .into(),
        )
        .await
        .expect("the server answers the create");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    (!reply["error"].is_object(), reply)
}
