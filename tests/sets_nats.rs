//! Security Event Tokens against a real nats-server: a revoke, a pause, a
//! resume, a narrowing, a renewal, a delegated child's end, a quarantine
//! and its restoration each give one signed SET on `mandate.set.<tenant>`,
//! verifiable with the JWK set, its `jti` the event's id; two instances
//! still give one SET per event; a signal taken by an instance that died
//! unacknowledged still gives its one SET, through another; an engine
//! without a signing key gives none; the example NATS permissions let the
//! engine make them. RFC 8935 push to a receiver served by the test retries
//! a 503 with backoff and is acknowledged once, gives up after its last
//! attempt, reaches a receiver that was down across an engine's restart,
//! and does not retry a 400. `serve --set-push` is refused without
//! `--token-key` and for a URL that is not http(s).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::cli::{mandate, says};
use common::prelude::*;
use mandate::engine::sets::{SetReceiver, SET_CONSUMER, SET_STREAM};
use mandate::engine::tokens::TokenKeys;
use mandate::engine::EngineConfig;
use mandate::protocol::set::{SetClaims, SESSION_REVOKED, TOKEN_CLAIMS_CHANGE};
use mandate::protocol::token::Jwks;
use mandate::protocol::Signal;

fn config(keys: Option<TokenKeys>) -> EngineConfig {
    EngineConfig {
        allow_open_tenants: true,
        beacon_interval: Duration::from_millis(200),
        tokens: keys.map(Arc::new),
        ..EngineConfig::default()
    }
}

fn keyed() -> EngineConfig {
    config(Some(TokenKeys::ephemeral().unwrap()))
}

/// A receiver at `url` retried quickly (200 ms doubling to 1 s), `tries`
/// attempts at most.
fn receiver(url: &str, tries: i64) -> SetReceiver {
    SetReceiver {
        max_deliveries: tries,
        first_retry: Duration::from_millis(200),
        max_retry: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        ..SetReceiver::parse(url).unwrap()
    }
}

fn acme_as(nc: &async_nats::Client, actor: Actor) -> Client {
    client(nc, "acme", actor)
}

/// Every message of the SET stream, in order: its subject and the SET.
async fn stored_sets(nc: &async_nats::Client) -> Vec<(String, String)> {
    let js = async_nats::jetstream::new(nc.clone());
    let Ok(mut stream) = js.get_stream(SET_STREAM).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((
                m.subject.to_string(),
                String::from_utf8(m.payload.to_vec()).unwrap(),
            ));
        }
    }
    out
}

/// Every signal (beacons left out) the signal stream holds.
async fn stored_signals(nc: &async_nats::Client) -> Vec<Signal> {
    let js = async_nats::jetstream::new(nc.clone());
    let mut stream = js.get_stream("MANDATE_SIGNALS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if !m.subject.ends_with(".beacon") {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
    }
    out
}

/// Waits until the SET stream holds `n` SETs, then a little longer, and
/// returns them (so a duplicate arriving late is seen).
async fn sets_settled(nc: &async_nats::Client, n: usize) -> Vec<(String, String)> {
    eventually(&format!("{n} SETs are stored"), || async {
        stored_sets(nc).await.len() >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stored_sets(nc).await
}

fn part(jws: &str, i: usize) -> serde_json::Value {
    let p = jws.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// Verifies `jws` as a SET with a key of `jwks`: the header, the Ed25519
/// signature, the claims' schema. Returns the claims.
fn verified(jws: &str, jwks: &Jwks) -> SetClaims {
    use ed25519_dalek::Verifier;
    let header = part(jws, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "secevent+jwt");
    let jwk = jwks
        .keys
        .iter()
        .find(|k| header["kid"] == k.kid.as_str())
        .expect("the kid is in the JWK set");
    let x: [u8; 32] = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let (input, sig) = jws.rsplit_once('.').unwrap();
    let sig: [u8; 64] = URL_SAFE_NO_PAD.decode(sig).unwrap().try_into().unwrap();
    key.verify(
        input.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .expect("the signature verifies with the JWK set");
    let claims = part(jws, 1);
    conforms("set", &claims);
    serde_json::from_value(claims).unwrap()
}

/// Asserts `doc` validates against `schemas/<name>.json`.
fn conforms(name: &str, doc: &serde_json::Value) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.json"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::options().build(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name}: {errors:?} in {doc}");
}

async fn jwks_of(nc: &async_nats::Client) -> Jwks {
    let reply = raw(nc, "mandate.q.acme.jwks".into(), b"{}".to_vec()).await;
    serde_json::from_value(reply["result"].clone()).unwrap()
}

/// The one event type of a SET and its body.
fn event(c: &SetClaims) -> (&str, &mandate::protocol::set::CaepEvent) {
    assert_eq!(c.events.len(), 1, "one event per SET: {c:?}");
    let (k, v) = c.events.iter().next().unwrap();
    (k.as_str(), v)
}

/// The cfo's root for the lead, and the lead's delegation to the analyst.
async fn chain_of_two(nc: &async_nats::Client) -> (MandateId, MandateId) {
    let root = issue(
        nc,
        root_issue("cfo", "lead", None, &["finance:read on reports/**"]),
    )
    .await;
    let child = acme_as(nc, agent("lead"))
        .delegate(delegation(
            root,
            "analyst",
            &["finance:read on reports/q3/*"],
        ))
        .await
        .expect("delegate")
        .mandate
        .unwrap();
    (root, child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authority_change_gives_one_signed_set() {
    let (_server, _dir, _i, nc) = serve_one_with("acme", keyed()).await;
    let (root, child) = chain_of_two(&nc).await;
    let cfo = acme_as(&nc, principal("cfo"));
    let pause = cfo.pause(root, Some("audit".into())).await.unwrap();
    let resume = cfo.resume(root, None).await.unwrap();
    let narrow = cfo
        .narrow(child, scope(&["finance:read on reports/q3/summary"]))
        .await
        .unwrap();
    let shorter = chrono::Utc::now() + chrono::Duration::minutes(30);
    let renew = cfo.renew(child, shorter).await.unwrap();
    let end_child = acme_as(&nc, agent("lead"))
        .revoke(child, Some("no longer needed".into()))
        .await
        .unwrap();
    let revoke = acme_as(&nc, admin("security"))
        .revoke(root, Some("compromised".into()))
        .await
        .unwrap();

    let sets = sets_settled(&nc, 6).await;
    let signals = stored_signals(&nc).await;
    assert_eq!(signals.len(), 6, "{signals:?}");
    assert_eq!(sets.len(), 6, "one SET per signal, no more: {sets:?}");
    let jwks = jwks_of(&nc).await;
    let by_jti: BTreeMap<String, SetClaims> = sets
        .iter()
        .map(|(subject, jws)| {
            assert_eq!(subject, "mandate.set.acme");
            let c = verified(jws, &jwks);
            (c.jti.clone(), c)
        })
        .collect();
    assert_eq!(by_jti.len(), 6, "six distinct jti");
    // Each SET's jti is its signal's event id, and says the same thing.
    let of = |command: CommandId| -> (&Signal, &SetClaims) {
        let signal = signals
            .iter()
            .find(|s| {
                by_jti
                    .get(&s.event_id.to_string())
                    .is_some_and(|c| c.txn.as_deref() == Some(&command.to_string()))
            })
            .unwrap_or_else(|| panic!("a SET for command {command}: {by_jti:?}"));
        (signal, &by_jti[&signal.event_id.to_string()])
    };
    for (command, mandate, kind, status) in [
        (pause.command_id, root, TOKEN_CLAIMS_CHANGE, "paused"),
        (resume.command_id, root, TOKEN_CLAIMS_CHANGE, "active"),
        (narrow.command_id, child, TOKEN_CLAIMS_CHANGE, "active"),
        (renew.command_id, child, TOKEN_CLAIMS_CHANGE, "active"),
        (end_child.command_id, child, SESSION_REVOKED, "revoked"),
        (revoke.command_id, root, SESSION_REVOKED, "revoked"),
    ] {
        let (signal, c) = of(command);
        assert_eq!(c.jti, signal.event_id.to_string());
        assert_eq!(c.iss, "mandate/acme");
        assert_eq!(c.aud, None, "the stream's SETs name no audience");
        assert_eq!(c.sub_id.format, "complex");
        assert_eq!(c.sub_id.session.id, mandate.to_string());
        assert_eq!(c.sub_id.tenant.id, "acme");
        assert_eq!(c.mandate.id, mandate);
        assert_eq!(c.mandate.tree, signal.tree);
        assert!(c.mandate.includes_descendants);
        assert_eq!(serde_json::json!(c.mandate.status), status);
        let (event_type, body) = event(c);
        assert_eq!(event_type, kind, "{c:?}");
        assert_eq!(body.event_timestamp, signal.time.timestamp());
        if kind == TOKEN_CLAIMS_CHANGE {
            let claims = body.claims.as_ref().expect("claims");
            assert_eq!(claims["status"], status);
        } else {
            assert!(body.claims.is_none());
        }
    }
    let (_, narrowed) = of(narrow.command_id);
    assert_eq!(
        event(narrowed).1.claims.as_ref().unwrap()["scope"],
        serde_json::json!(["finance:read on reports/q3/summary"])
    );
    let (_, renewed) = of(renew.command_id);
    let not_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(event(renewed).1.claims.as_ref().unwrap()["not_after"].clone())
            .unwrap();
    assert_eq!(not_after, shorter);
    let (_, paused) = of(pause.command_id);
    assert_eq!(event(paused).1.initiating_entity, "user");
    assert_eq!(
        event(paused).1.reason_admin.as_ref().unwrap()["en"],
        "audit"
    );
    let (_, revoked) = of(revoke.command_id);
    assert_eq!(event(revoked).1.initiating_entity, "admin");
    assert_eq!(
        event(revoked).1.reason_admin.as_ref().unwrap()["en"],
        "compromised"
    );
    assert_eq!(revoked.mandate.event_type, "mandate_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_give_one_set_per_event() {
    let server = NatsServer::start();
    // One key file for both, as a deployment has; each its own instance id.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k.pem");
    mandate::engine::tokens::write_new_key(&key).unwrap();
    let each = || config(Some(TokenKeys::load(std::slice::from_ref(&key)).unwrap()));
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start_with(&server.url(), dirs.0.path(), each()).await;
    let b = Instance::start_with(&server.url(), dirs.1.path(), each()).await;
    let nc = connect(&server).await;
    all_serving(&nc, "acme", &[&a, &b]).await;
    let cfo = acme_as(&nc, principal("cfo"));
    let mut roots = Vec::new();
    for i in 0..12 {
        roots.push(
            issue(
                &nc,
                root_issue("cfo", &format!("agent-{i}"), None, &["x:read on y/*"]),
            )
            .await,
        );
    }
    for &root in &roots {
        cfo.revoke(root, None).await.unwrap();
    }
    let sets = sets_settled(&nc, 12).await;
    assert_eq!(sets.len(), 12, "one SET per revoke across two instances");
    let jwks = jwks_of(&nc).await;
    let mut ended: Vec<MandateId> = sets
        .iter()
        .map(|(_, jws)| verified(jws, &jwks).mandate.id)
        .collect();
    ended.sort();
    roots.sort();
    assert_eq!(ended, roots);
    // The shared consumer has nothing left unacknowledged.
    let js = async_nats::jetstream::new(nc.clone());
    eventually("the signal consumer acknowledged every signal", || {
        let js = js.clone();
        async move {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream(SET_CONSUMER, "MANDATE_SIGNALS")
                .await
                .unwrap();
            let i = consumer.info().await.unwrap();
            i.num_ack_pending == 0 && i.num_pending == 0
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_key_no_set_is_made() {
    let (_server, _dir, _i, nc) = serve_one_with("acme", config(None)).await;
    let root = issue(&nc, root_issue("cfo", "lead", None, &["x:read on y/*"])).await;
    acme_as(&nc, principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    eventually("the revoke's signal is stored", || async {
        !stored_signals(&nc).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(stored_sets(&nc).await.is_empty());
}

/// One request a receiver got: its headers (lower-case names) and body.
type Request = (BTreeMap<String, String>, String);

/// A push receiver in the test: it records each request and answers the
/// next of its answers (the last one again once they run out).
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Request>>>,
    answers: Arc<Vec<(u16, &'static str)>>,
}

impl Receiver {
    fn new(answers: Vec<(u16, &'static str)>) -> Self {
        Self {
            got: Default::default(),
            answers: Arc::new(answers),
        }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Serves on `listener` until the task is aborted.
    fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        use axum::http::{HeaderMap, StatusCode};
        let me = self.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let me = me.clone();
                async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    let n = {
                        let mut got = me.got.lock().unwrap();
                        got.push((headers, body));
                        got.len()
                    };
                    let (code, body) = me.answers[(n - 1).min(me.answers.len() - 1)];
                    (StatusCode::from_u16(code).unwrap(), body)
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }
}

async fn listener() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", l.local_addr().unwrap());
    (l, url)
}

/// The value of counter `name` in the engine's metrics.
async fn counter(engine: &mandate::engine::Engine, name: &str) -> u64 {
    let text = engine.metrics().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("mandate_{name}_total ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_retried_after_503_and_acknowledged_once() {
    let rx = Receiver::new(vec![(503, "busy"), (503, "busy"), (202, "")]);
    let (l, url) = listener().await;
    let _serving = rx.serve(l);
    let config = EngineConfig {
        set_push: vec![receiver(&format!("{url}#aud=urn:example:rx"), 10)],
        ..keyed()
    };
    let (_server, _dir, i, nc) = serve_one_with("acme", config).await;
    let root = issue(&nc, root_issue("cfo", "lead", None, &["x:read on y/*"])).await;
    acme_as(&nc, principal("cfo"))
        .revoke(root, Some("done".into()))
        .await
        .unwrap();
    eventually("the receiver accepts the SET", || async { rx.count() >= 3 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two 503s and one 202, then nothing more");
    let jwks = jwks_of(&nc).await;
    let stored = stored_sets(&nc).await;
    assert_eq!(stored.len(), 1);
    let on_nats = verified(&stored[0].1, &jwks);
    for (headers, body) in &got {
        assert_eq!(headers["content-type"], "application/secevent+jwt");
        assert_eq!(headers["accept"], "application/json");
        let c = verified(body, &jwks);
        assert_eq!(c.aud.as_deref(), Some("urn:example:rx"));
        assert_eq!(c.jti, on_nats.jti, "the same event, the same jti");
        assert_eq!(c.mandate.id, root);
        assert_eq!(event(&c).0, SESSION_REVOKED);
    }
    assert_eq!(counter(&i.engine, "sets_pushed").await, 1);
    assert_eq!(counter(&i.engine, "set_push_retries").await, 2);
    assert_eq!(counter(&i.engine, "sets_dropped").await, 0);
    assert!(counter(&i.engine, "sets_published").await >= 1);
    // The receiver's consumer acknowledged it: nothing pending, nothing
    // waiting to be redelivered.
    let js = async_nats::jetstream::new(nc.clone());
    let name = receiver(&format!("{url}#aud=urn:example:rx"), 10).consumer_name();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&name, SET_STREAM)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.ack_floor.stream_sequence
        ),
        (0, 0, 1),
        "{info:?}"
    );
}

/// An engine pushing SETs to a receiver, after a root was issued and
/// revoked through it.
struct Pushed {
    rx: Receiver,
    instance: Instance,
    /// Alive while the test runs: the server, the engine's directory, the
    /// receiver's server.
    _keep: (NatsServer, tempfile::TempDir, tokio::task::JoinHandle<()>),
}

/// [`Pushed`] to a receiver that answers `answers` in turn (the last one
/// from then on), at most `tries` times a SET.
async fn revoked_with_push(answers: Vec<(u16, &'static str)>, tries: i64) -> Pushed {
    let rx = Receiver::new(answers);
    let (l, url) = listener().await;
    let serving = rx.serve(l);
    let config = EngineConfig {
        set_push: vec![receiver(&url, tries)],
        ..keyed()
    };
    let (server, dir, instance, nc) = serve_one_with("acme", config).await;
    let root = issue(&nc, root_issue("cfo", "lead", None, &["x:read on y/*"])).await;
    acme_as(&nc, principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    Pushed {
        rx,
        instance,
        _keep: (server, dir, serving),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_with_400_is_not_retried() {
    let Pushed {
        rx,
        instance: i,
        _keep,
    } = revoked_with_push(
        vec![(
            400,
            r#"{"err":"invalid_request","description":"not for us"}"#,
        )],
        10,
    )
    .await;
    eventually("the receiver is asked", || async { rx.count() >= 1 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.count(), 1, "a 400 is not retried");
    assert_eq!(counter(&i.engine, "sets_dropped").await, 1);
    assert_eq!(counter(&i.engine, "set_push_retries").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_across_a_restart_gets_its_set_once_up() {
    // The receiver's address is known, but nothing listens there yet.
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}/events");
    let config = EngineConfig {
        set_push: vec![receiver(&url, 1000)],
        ..keyed()
    };
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let i = Instance::start_with(&server.url(), dir.path(), config.clone()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let root = issue(&nc, root_issue("cfo", "lead", None, &["x:read on y/*"])).await;
    acme_as(&nc, principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    eventually("a push failed", || async {
        counter(&i.engine, "set_push_retries").await >= 1
    })
    .await;
    i.stop().await;

    let rx = Receiver::new(vec![(202, "")]);
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let _serving = rx.serve(l);
    // Restarted with another bound on attempts: the receiver's consumer
    // is the same one, its settings updated.
    let config = EngineConfig {
        set_push: vec![receiver(&url, 500)],
        ..config
    };
    let i = Instance::start_with(&server.url(), dir.path(), config).await;
    eventually("the receiver gets the SET after the restart", || async {
        rx.count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.count(), 1);
    let jwks = jwks_of(&nc).await;
    let body = rx.got.lock().unwrap()[0].1.clone();
    let c = verified(&body, &jwks);
    assert_eq!(c.mandate.id, root);
    i.stop().await;
}

#[test]
fn set_push_is_refused_without_a_token_key_or_an_http_url() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = server.url();
    let out = mandate(
        &data,
        &[
            "--nats",
            &url,
            "serve",
            "--set-push",
            "https://rx.example/events",
        ],
    );
    says(&out, 2, &["--set-push", "--token-key"]);
    let key = dir.path().join("k.pem");
    mandate::engine::tokens::write_new_key(&key).unwrap();
    for bad in ["ftp://rx.example/events", "rx.example/events"] {
        let out = mandate(
            &data,
            &[
                "--nats",
                &url,
                "serve",
                "--token-key",
                key.to_str().unwrap(),
                "--set-push",
                bad,
            ],
        );
        says(&out, 2, &["--set-push", bad]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_permissions_let_the_engine_make_sets() {
    use common::secured::{connect_recording, example_config};
    use mandate::client::{NatsAuth, NatsConnect};
    let server = NatsServer::start_with_config(|store| example_config(store, ""));
    let user = |name: &str, password: &str, inbox: &str| {
        NatsConnect::new(server.url())
            .name(name)
            .auth(NatsAuth::UserPassword {
                user: name.into(),
                password: password.into(),
            })
            .inbox_prefix(inbox)
    };
    let (engine_nc, errors) =
        connect_recording(&user("engine", "engine-secret", "_INBOX_engine")).await;
    let dir = tempfile::tempdir().unwrap();
    let engine =
        mandate::engine::Engine::nats(engine_nc.clone(), dir.path(), Default::default(), keyed())
            .await
            .expect("open the engine with its own user");
    let (stop, task) = common::served::serve_in_task(&engine);
    let (orch, _) = connect_recording(&user(
        "orchestrator-acme",
        "orch-acme-secret",
        "_INBOX_orch_acme",
    ))
    .await;
    let cfo = Client::nats(orch, tenant("acme"), principal("cfo"));
    let mut root = None;
    for _ in 0..100 {
        match cfo
            .issue(root_issue("cfo", "lead", None, &["x:read on y/*"]))
            .await
        {
            Ok(r) => {
                root = r.mandate;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let root = root.expect("the engine answers");
    cfo.revoke(root, None).await.unwrap();
    let sets = sets_settled(&engine_nc, 1).await;
    assert_eq!(sets.len(), 1);
    assert_eq!(
        errors.all(),
        Vec::<String>::new(),
        "the engine was refused something"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
}

/// An instance that took a signal from the shared consumer and died before
/// acknowledging it (here: the test takes it and never answers) does not
/// cost its SET: the signal goes to another instance once its ack wait
/// (30 s) has passed, and that one makes the SET, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_taken_by_an_instance_that_died_still_gives_its_set() {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    // An instance without a key serves the commands; no SET is made yet.
    let (server, _dir, i, nc) = serve_one_with("acme", config(None)).await;
    let root = issue(&nc, root_issue("cfo", "lead", None, &["x:read on y/*"])).await;
    acme_as(&nc, principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    let signal = eventually_one_signal(&nc).await;
    // The "instance" that dies: binds the shared consumer as an engine
    // does, takes every signal up to the revoke's, and never acknowledges.
    let js = async_nats::jetstream::new(nc.clone());
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some(SET_CONSUMER.into()),
                filter_subject: "mandate.sig.>".into(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: mandate::engine::sets::ACK_WAIT,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            },
            "MANDATE_SIGNALS",
        )
        .await
        .unwrap();
    let mut taken = consumer
        .fetch()
        .max_messages(1000)
        .messages()
        .await
        .unwrap();
    let mut took_it = false;
    while let Some(m) = taken.next().await {
        if m.unwrap().subject.as_str() == format!("mandate.sig.acme.{}", signal.mandate) {
            took_it = true;
            break;
        }
    }
    assert!(took_it, "the dying instance took the revoke's signal");
    drop(taken);
    i.stop().await;

    // Another instance, with a key, binds the same consumer: the signal
    // comes to it once the dead one's ack wait has passed.
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let other = Instance::start_with(&server.url(), dir.path(), keyed()).await;
    let deadline = mandate::engine::sets::ACK_WAIT + Duration::from_secs(15);
    while stored_sets(&nc).await.is_empty() {
        assert!(started.elapsed() < deadline, "no SET within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sets = stored_sets(&nc).await;
    assert_eq!(sets.len(), 1, "one SET");
    let c = verified(&sets[0].1, &jwks_of(&nc).await);
    assert_eq!(c.jti, signal.event_id.to_string());
    assert_eq!(c.mandate.id, root);
    other.stop().await;
}

async fn eventually_one_signal(nc: &async_nats::Client) -> Signal {
    eventually("the revoke's signal is stored", || async {
        !stored_signals(nc).await.is_empty()
    })
    .await;
    stored_signals(nc).await.remove(0)
}

/// A quarantined tree is told as a claims change of its root, `status`
/// `quarantined`; its restoration as another, the root's status again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_and_its_restoration_give_claims_changes() {
    let (_server, _dir, _i, nc) = serve_one_with("acme", keyed()).await;
    let (root, _child) = chain_of_two(&nc).await;
    let tree = acme_as(&nc, principal("cfo"))
        .chain(root, None)
        .await
        .unwrap()
        .tree;
    let js = async_nats::jetstream::new(nc.clone());
    let position = js
        .publish(format!("mandate.evt.acme.{tree}"), "{ not a commit".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let sets = sets_settled(&nc, 1).await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    let jwks = jwks_of(&nc).await;
    let held = verified(&sets[0].1, &jwks);
    assert_eq!(held.mandate.id, root);
    assert_eq!(held.txn, None, "no command caused it");
    let (kind, body) = event(&held);
    assert_eq!(kind, TOKEN_CLAIMS_CHANGE);
    assert_eq!(body.claims.as_ref().unwrap()["status"], "quarantined");
    assert_eq!(body.initiating_entity, "system");

    acme_as(&nc, admin("security"))
        .resolve_quarantine(
            root,
            position,
            mandate::domain::command::Resolution::Restore,
            Some("checked".into()),
        )
        .await
        .unwrap();
    let sets = sets_settled(&nc, 2).await;
    assert_eq!(sets.len(), 2, "{sets:?}");
    let restored = verified(&sets[1].1, &jwks);
    assert_eq!(restored.mandate.id, root);
    let (kind, body) = event(&restored);
    assert_eq!(kind, TOKEN_CLAIMS_CHANGE);
    assert_eq!(body.claims.as_ref().unwrap()["status"], "active");
    assert_eq!(body.initiating_entity, "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_given_up_after_its_last_attempt() {
    let Pushed {
        rx,
        instance: i,
        _keep,
    } = revoked_with_push(vec![(503, "down for maintenance")], 3).await;
    eventually("three attempts", || async { rx.count() >= 3 }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.count(), 3, "no attempt after the last");
    assert_eq!(counter(&i.engine, "set_push_retries").await, 2);
    assert_eq!(counter(&i.engine, "sets_dropped").await, 1);
    assert_eq!(counter(&i.engine, "sets_pushed").await, 0);
}
