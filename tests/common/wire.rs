//! Talking to engines served over a real nats-server: connections, clients,
//! waits until instances answer, raw requests and the assertions on their
//! replies. Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandate::client::{Client, ClientError};
use mandate::domain::command::Issue;
use mandate::domain::{Actor, CommandId, ErrorCode, MandateId, Status};
use mandate::engine::{Engine, EngineConfig};
use mandate::log::{EventLog, JetStreamConfig};
use mandate::protocol::mission_subject;
use serde_json::{json, Value};

use super::fixtures::{delegation, eventually, principal, tenant, ticket_issue, PATIENCE};
use super::served::Instance;
use super::NatsServer;

pub async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.expect("connect")
}

/// A server, its temporary data directory, one instance serving tenant `t`
/// over it (already answering), and a connection to it.
pub async fn serve_one(t: &str) -> (NatsServer, tempfile::TempDir, Instance, async_nats::Client) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, t).await;
    (server, dir, instance, nc)
}

/// As [`serve_one`], with the instance's settings exactly `config` (see
/// [`Instance::start_with`]).
pub async fn serve_one_with(
    t: &str,
    config: EngineConfig,
) -> (NatsServer, tempfile::TempDir, Instance, async_nats::Client) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start_with(&server.url(), dir.path(), config).await;
    let nc = connect(&server).await;
    serving(&nc, t).await;
    (server, dir, instance, nc)
}

/// A client of tenant `t` acting as `actor` over `nc`.
pub fn client(nc: &async_nats::Client, t: &str, actor: Actor) -> Client {
    Client::nats(nc.clone(), tenant(t), actor)
}

/// Waits until some instance answers on the tenant's subjects.
pub async fn serving(nc: &async_nats::Client, t: &str) {
    let c = client(nc, t, principal("probe")).with_timeout(Duration::from_millis(500));
    eventually("an engine answers requests", || {
        let c = c.clone();
        async move { c.health().await.is_ok() }
    })
    .await;
}

/// Waits until each of `instances` has answered a request through the queue
/// group, so that all of them really serve.
pub async fn all_serving(nc: &async_nats::Client, t: &str, instances: &[&Instance]) {
    let want: BTreeSet<String> = instances
        .iter()
        .map(|i| i.engine.instance().to_string())
        .collect();
    let c = client(nc, t, principal("probe")).with_timeout(Duration::from_millis(500));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    eventually("every instance answers through the queue group", || {
        let (c, seen, want) = (c.clone(), seen.clone(), want.clone());
        async move {
            if let Ok(h) = c.health().await {
                seen.lock().unwrap().insert(h.instance);
            }
            *seen.lock().unwrap() == want
        }
    })
    .await;
}

/// Issues a root in acme as its principal and returns its id.
pub async fn issue(nc: &async_nats::Client, i: Issue) -> MandateId {
    let by = Actor::Principal(i.principal.clone());
    issued(&client(nc, "acme", by), i).await
}

/// Issues `i` through `c` and returns the new root's id.
pub async fn issued(c: &Client, i: Issue) -> MandateId {
    c.issue(i)
        .await
        .expect("issue")
        .mandate
        .expect("an issue names its mandate")
}

/// Issues, through `c`, the cfo's [`ticket_issue`] for each of `refs`, in
/// order; returns their ids.
pub async fn tickets<const N: usize>(c: &Client, refs: [&str; N]) -> [MandateId; N] {
    let mut ids = [MandateId::generate(); N];
    for (id, r) in ids.iter_mut().zip(refs) {
        *id = issued(c, ticket_issue(r)).await;
    }
    ids
}

/// Asserts the mission of `i` is still open: `c` is granted a root for it.
pub async fn assert_mission_open(c: &Client, i: Issue) {
    let mission = i.mission.mission_ref.clone();
    if let Err(e) = c.issue(i).await {
        panic!("no root for the mission {mission:?}, which should be open: {e}");
    }
}

/// Delegates `parent` (held by `holder`) to `grantee`, in acme; returns the
/// new id.
pub async fn delegate(
    nc: &async_nats::Client,
    holder: &str,
    parent: MandateId,
    grantee: &str,
    grants: &[&str],
) -> MandateId {
    client(nc, "acme", super::fixtures::agent(holder))
        .delegate(delegation(parent, grantee, grants))
        .await
        .expect("delegate")
        .mandate
        .expect("a delegation names its mandate")
}

pub async fn effective(c: &Client, m: MandateId) -> Status {
    c.status(m, None).await.expect("status").effective.status
}

/// Waits (see [`eventually`]) until `c` reads `m` as `status` (effective).
pub async fn eventually_effective(c: &Client, m: MandateId, status: Status) {
    eventually(&format!("{m} is {status:?}"), || async move {
        c.status(m, None)
            .await
            .is_ok_and(|s| s.effective.status == status)
    })
    .await;
}

pub async fn own(c: &Client, m: MandateId) -> Status {
    c.status(m, None).await.expect("status").mandate.status()
}

/// A guard of `m` for `client`, on a hub of its own, with the given lease.
pub async fn start_guard(client: Client, m: MandateId, lease: Duration) -> mandate::client::Guard {
    mandate::client::Guard::start(
        client,
        &mandate::client::guard::GuardHub::new(),
        m,
        super::fixtures::guard_config(lease),
    )
    .await
    .expect("start the guard")
}

/// Asserts the engine refused with `invalid_state` (`context` says what was
/// refused).
pub fn assert_invalid_state(err: &mandate::engine::EngineError, context: &str) {
    let body = err.to_body();
    assert_eq!(
        body.code,
        ErrorCode::InvalidState,
        "{context}: {}",
        body.message
    );
}

pub fn code_of(e: &ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected an engine error, got {e:?}"))
}

/// Sends raw bytes to a subject and returns the reply's JSON.
pub async fn raw(nc: &async_nats::Client, subject: String, body: Vec<u8>) -> Value {
    let msg = tokio::time::timeout(PATIENCE, nc.request(subject.clone(), body.into()))
        .await
        .unwrap_or_else(|_| panic!("no reply on {subject} in time"))
        .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("reply on {subject} is not JSON ({e}): {:?}", msg.payload))
}

/// As [`raw`], `body` sent with the headers given (name, value).
pub async fn raw_with_headers(
    nc: &async_nats::Client,
    subject: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Value {
    let mut h = async_nats::HeaderMap::new();
    for (name, value) in headers {
        h.insert(*name, *value);
    }
    let msg = tokio::time::timeout(
        PATIENCE,
        nc.request_with_headers(
            subject.to_string(),
            h,
            serde_json::to_vec(body).unwrap().into(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} in time"))
    .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("reply on {subject} is not JSON ({e}): {:?}", msg.payload))
}

/// Asserts a raw reply to `what` is `{"ok":false,"error":{"code":<code>,..}}`
/// whose message contains every one of `mentions`; returns the message.
pub fn assert_refused(what: &str, reply: &Value, code: &str, mentions: &[&str]) -> String {
    assert_eq!(reply["ok"], json!(false), "{what}: {reply}");
    assert!(reply.get("result").is_none(), "{what}: {reply}");
    assert_eq!(reply["error"]["code"], json!(code), "{what}: {reply}");
    let message = reply["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message in {reply}"))
        .to_string();
    for m in mentions {
        assert!(
            message.contains(m),
            "{what}: message {message:?} should mention {m:?}"
        );
    }
    message
}

/// Every command id in the log with how many records carry it.
pub async fn commits_per_command(engine: &Engine) -> HashMap<CommandId, usize> {
    let records = engine.log().read_all(None, 0, 100_000).await.unwrap();
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry(r.command_id).or_insert(0) += 1;
    }
    counts
}

/// A server, two instances serving tenant `t` over it (both already
/// answering through the queue group), their data directories, and a
/// connection.
pub async fn serve_two(
    t: &str,
) -> (
    NatsServer,
    (tempfile::TempDir, tempfile::TempDir),
    Instance,
    Instance,
    async_nats::Client,
) {
    let server = NatsServer::start();
    let (dirs, a, b) = start_two(&server.url(), None).await;
    let nc = connect(&server).await;
    all_serving(&nc, t, &[&a, &b]).await;
    (server, dirs, a, b, nc)
}

/// Two instances following the server at `url`, each with its own data directory: with
/// `config`, or else the settings of [`Instance::start`]. Returns at once,
/// without waiting until they answer.
pub async fn start_two(
    url: &str,
    config: Option<EngineConfig>,
) -> ((tempfile::TempDir, tempfile::TempDir), Instance, Instance) {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = match config {
        Some(config) => (
            Instance::start_with(url, dirs.0.path(), config.clone()).await,
            Instance::start_with(url, dirs.1.path(), config).await,
        ),
        None => (
            Instance::start(url, dirs.0.path()).await,
            Instance::start(url, dirs.1.path()).await,
        ),
    };
    (dirs, a, b)
}

/// A client of acme acting as `actor` on a connection of its own to `url`,
/// giving up on a request after 700 ms.
pub async fn client_at(url: &str, actor: Actor) -> Client {
    let nc = async_nats::connect(url).await.unwrap();
    Client::nats(nc, super::fixtures::acme(), actor).with_timeout(Duration::from_millis(700))
}

/// Publishes `body` on the mission stream of `mission_ref` in tenant `t`, as
/// a ticketing system does (a plain JetStream publish, no Mandate code), and
/// waits until the stream stores it.
pub async fn publish_mission(nc: &async_nats::Client, t: &str, mission_ref: &str, body: &str) {
    let subject = mission_subject(&tenant(t), &super::fixtures::mission(mission_ref));
    async_nats::jetstream::new(nc.clone())
        .publish(subject, body.to_string().into())
        .await
        .expect("publish a completion")
        .await
        .expect("the mission stream stores the completion");
}

/// Starts an instance again on `dir` (left by one that stopped) and waits
/// until acme is served.
pub async fn serve_again(
    server: &NatsServer,
    dir: &tempfile::TempDir,
    nc: &async_nats::Client,
) -> Instance {
    let instance = Instance::start(&server.url(), dir.path()).await;
    serving(nc, "acme").await;
    instance
}

/// An engine over `nc` with the default settings and its projection under
/// `dir`, opened but not serving: no follower, no intake, so its projection
/// holds only what it writes or catches up itself.
pub async fn open_engine(nc: async_nats::Client, dir: &std::path::Path) -> Engine {
    Engine::nats(nc, dir, JetStreamConfig::default(), EngineConfig::default())
        .await
        .expect("open the engine")
}

/// The newest dead letter of the mission stream, as a reader of its headers
/// (a missing header reads as empty).
pub async fn last_dead_letter(nc: &async_nats::Client) -> impl Fn(&str) -> String {
    use mandate::engine::missions::{DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT};
    let dead = async_nats::jetstream::new(nc.clone())
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .expect("the dead-letter stream")
        .get_last_raw_message_by_subject(DEAD_LETTER_SUBJECT)
        .await
        .expect("a dead letter");
    move |name: &str| {
        dead.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    }
}

/// A raw protocol connection to `server`, for bytes the client library will
/// not send (subjects that are not UTF-8): `CONNECT` and then `wire` are
/// written on it.
pub async fn raw_protocol(server: &NatsServer, wire: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("a raw connection");
    let mut bytes = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n".to_vec();
    bytes.extend_from_slice(wire);
    sock.write_all(&bytes).await.expect("raw bytes written");
    sock
}
