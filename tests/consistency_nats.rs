//! Read consistency levels (`fresh`, `local`, `at_least`) against a real
//! nats-server: a lagging instance never allows on authority ended at a
//! position the caller names, an instance that has applied a position
//! answers without the log, signals name the position to re-read at, and
//! check decisions are still recorded once their storage is confirmed off
//! the reply path.

mod common;

use common::cli::{cfo_changes, issue_root, mandate, ok_json, says};
use common::prelude::*;
use mandate::engine::{Engine, EngineConfig, EngineErrorKind};
use mandate::log::JetStreamConfig;
use mandate::protocol::{Consistency, MandateQuery, Signal, SignalKind};
use serde_json::{json, Value};

/// An engine over its own connection that reads only what its follower
/// applied (`fresh_reads` off), opened but not serving.
async fn lagging_engine(server: &NatsServer, dir: &std::path::Path) -> Engine {
    let nc = async_nats::connect(server.url()).await.unwrap();
    let config = EngineConfig {
        fresh_reads: false,
        allow_open_tenants: true,
        ..EngineConfig::default()
    };
    Engine::nats(nc, dir, JetStreamConfig::default(), config)
        .await
        .expect("open the engine")
}

/// Sends `body` to query `verb` of tenant acme on `engine`, as JSON.
async fn ask(engine: &Engine, verb: &str, body: Value) -> Value {
    let reply = engine
        .handle(
            &format!("mandate.q.acme.{verb}"),
            body.to_string().as_bytes(),
        )
        .await;
    serde_json::from_slice(&reply).unwrap()
}

fn check_body(m: MandateId, consistency: Value) -> Value {
    json!({"mandate": m, "action": "finance:read", "resource": "reports/q3/x", "consistency": consistency})
}

/// A nats-server, one instance serving acme, and cfo's root for lead with
/// `grants`.
struct OneRoot {
    server: NatsServer,
    nc: async_nats::Client,
    a: Instance,
    root: MandateId,
    _dir: tempfile::TempDir,
}

async fn one_instance_with_a_root(grants: &[&str]) -> OneRoot {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    let root = issue(&nc, root_issue("cfo", "lead", None, grants)).await;
    OneRoot {
        server,
        nc,
        a,
        root,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_instance_denies_at_least_the_position_of_a_revoke_it_has_not_applied() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dirs.0.path()).await;
    serving(&nc, "acme").await;
    let root = issue(
        &nc,
        root_issue("cfo", "lead", None, &["finance:read on reports/**"]),
    )
    .await;
    let kid = delegate(
        &nc,
        "lead",
        root,
        "analyst",
        &["finance:read on reports/q3/*"],
    )
    .await;
    // B follows until it has the tree, then its follower stops.
    let b = lagging_engine(&server, dirs.1.path()).await;
    let follower = b.start();
    let probe = b.clone();
    eventually("B's projection has the tree", || {
        let probe = probe.clone();
        async move { probe.health().await.map(|h| h.lag == 0).unwrap_or(false) }
    })
    .await;
    follower.stop().await.unwrap();

    let revoked = client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    let position = revoked.commits[0].position;
    assert!(position > 0, "{revoked:?}");

    // B's own state still allows: `local` says so, and so does the default
    // on an instance configured without fresh reads.
    let local = ask(&b, "check", check_body(kid, json!("local"))).await;
    assert_eq!(local["result"]["outcome"], "allow", "{local}");
    // At least the revoke's position: denied, from the same stale B.
    let at_least = ask(&b, "check", check_body(kid, json!({"at_least": position}))).await;
    assert_eq!(at_least["result"]["outcome"], "deny", "{at_least}");
    assert_eq!(
        at_least["result"]["reason"]["kind"], "not_active",
        "{at_least}"
    );

    for verb in ["status", "chain"] {
        let r = ask(
            &b,
            verb,
            json!({"mandate": kid, "consistency": {"at_least": position}}),
        )
        .await;
        assert_eq!(r["result"]["effective"]["status"], "revoked", "{verb}: {r}");
        assert!(
            r["result"]["position"].as_u64() >= Some(position),
            "{verb}: {r}"
        );
    }
    let tree = ask(
        &b,
        "tree",
        json!({"mandate": kid, "consistency": {"at_least": position}}),
    )
    .await;
    assert!(
        tree["result"]["position"].as_u64() >= Some(position),
        "{tree}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_at_least_a_position_catches_a_stopped_follower_up_to_it() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dirs.0.path()).await;
    serving(&nc, "acme").await;
    let b = lagging_engine(&server, dirs.1.path()).await;
    // B never follows: the mandate is unknown to it.
    let issued = client(&nc, "acme", principal("cfo"))
        .issue(root_issue("cfo", "lister", None, &["a:b on c"]))
        .await
        .unwrap();
    let position = issued.commits[0].position;
    let by_agent = |consistency: Value| json!({"agent": "lister", "consistency": consistency});
    let local = ask(&b, "list", by_agent(json!("local"))).await;
    assert_eq!(local["result"]["mandates"], json!([]), "{local}");
    let listed = ask(&b, "list", by_agent(json!({"at_least": position}))).await;
    assert_eq!(
        listed["result"]["mandates"][0]["mandate"],
        json!(issued.mandate.unwrap()),
        "{listed}"
    );
    assert!(
        listed["result"]["position"].as_u64() >= Some(position),
        "{listed}"
    );
    // A mandate B has never seen, read at its issue's position.
    let status = ask(
        &b,
        "status",
        json!({"mandate": issued.mandate, "consistency": {"at_least": position}}),
    )
    .await;
    assert_eq!(
        status["result"]["effective"]["status"], "active",
        "{status}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_log_has_not_reached_is_refused_not_answered_from_older_state() {
    let OneRoot {
        server: _server,
        nc: _nc,
        a,
        root,
        _dir,
    } = one_instance_with_a_root(&["finance:read on reports/**"]).await;
    let beyond = a.log_position().await + 1_000;
    for (verb, body) in [
        ("check", check_body(root, json!({"at_least": beyond}))),
        (
            "status",
            json!({"mandate": root, "consistency": {"at_least": beyond}}),
        ),
        (
            "list",
            json!({"agent": "lead", "consistency": {"at_least": beyond}}),
        ),
    ] {
        let r = ask(&a.engine, verb, body).await;
        assert_eq!(r["ok"], false, "{verb}: {r}");
        assert_eq!(r["error"]["code"], "unavailable", "{verb}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("has not reached"), "{verb}: {message}");
    }
    let err = a
        .engine
        .status_of(
            &acme(),
            &MandateQuery {
                mandate: root,
                at: None,
                consistency: Consistency::AtLeast(beyond),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), EngineErrorKind::Unavailable, "{err}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_this_instance_applied_is_answered_without_the_log() {
    let mut server = NatsServer::start();
    let nc = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    let issued = client(&nc, "acme", principal("cfo"))
        .issue(root_issue("cfo", "lead", None, &["a:b on c"]))
        .await
        .unwrap();
    let (root, position) = (issued.mandate.unwrap(), issued.commits[0].position);
    a.caught_up().await;
    // No server at all: a read that went to the log could not answer.
    server.stop();
    let read = |consistency| MandateQuery {
        mandate: root,
        at: None,
        consistency,
    };
    let within = Duration::from_secs(30);
    for level in [Consistency::AtLeast(position), Consistency::Local] {
        let status = tokio::time::timeout(within, a.engine.status_of(&acme(), &read(level)))
            .await
            .unwrap_or_else(|_| panic!("{level}: no answer"))
            .unwrap_or_else(|e| panic!("{level}: {e}"));
        assert_eq!(status.effective.status, Status::Active, "{level}");
        assert_eq!(status.position, position, "{level}");
    }
    let fresh = tokio::time::timeout(
        within,
        a.engine.status_of(&acme(), &read(Consistency::Fresh)),
    )
    .await;
    assert!(
        !matches!(fresh, Ok(Ok(_))),
        "a fresh read answered without the log: {fresh:?}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_names_the_position_its_holders_re_read_at() {
    let OneRoot {
        server: _server,
        nc,
        a,
        root,
        _dir,
    } = one_instance_with_a_root(&["a:b on c"]).await;
    let mut signals = nc
        .subscribe(mandate::protocol::signal_subject(&acme(), root))
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let paused = client(&nc, "acme", principal("cfo"))
        .pause(root, None)
        .await
        .unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut signals),
    )
    .await
    .expect("a signal")
    .unwrap();
    let signal: Signal = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(signal.kind, SignalKind::Suspended);
    assert_eq!(
        signal.head_position,
        Some(paused.commits[0].position),
        "{signal:?}"
    );
    a.stop().await;
}

/// A check's audit record is on disk, in the instance's outbox, before its
/// answer: with the audit stream gone (nothing can be shipped), the record
/// of every answered check is in the outbox file when the answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checks_audit_record_is_in_the_outbox_before_its_answer() {
    let OneRoot {
        server: _server,
        nc,
        a,
        root,
        _dir,
    } = one_instance_with_a_root(&["finance:read on reports/**"]).await;
    async_nats::jetstream::new(nc.clone())
        .delete_stream(mandate::engine::audit::AUDIT_STREAM)
        .await
        .unwrap();
    let outbox = _dir.path().join(mandate::engine::audit::OUTBOX_FILE);
    let subject = format!("mandate.audit.acme.{root} ");
    for (n, consistency) in [Consistency::Local, Consistency::Fresh]
        .into_iter()
        .enumerate()
    {
        // The second asks as someone: the record names them.
        let actor = (n == 1).then(|| principal("auditor"));
        let query = mandate::protocol::CheckQuery {
            mandate: root,
            action: "finance:read".into(),
            resource: "reports/q3".into(),
            at: None,
            actor: actor.clone(),
            consistency,
        };
        let reply = nc
            .request(
                "mandate.q.acme.check",
                serde_json::to_vec(&query).unwrap().into(),
            )
            .await
            .unwrap()
            .payload;
        let answer: mandate::protocol::Reply<mandate::domain::Decision> =
            serde_json::from_slice(&reply).unwrap();
        let d = answer.result.clone().expect("a decision");
        assert!(d.is_allowed(), "{d:?}");
        // The reply is exactly what the typed reply encodes to.
        assert_eq!(
            String::from_utf8_lossy(&reply),
            serde_json::to_string(&answer).unwrap()
        );
        let text = std::fs::read_to_string(&outbox).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&subject)).collect();
        assert_eq!(lines.len(), n + 1, "{text}");
        let line = &lines[n][subject.len()..];
        let record: mandate::protocol::AuditRecord = serde_json::from_str(line).unwrap();
        // The record holds the decision answered, the one who asked and the
        // root's principal, and is exactly what the typed record encodes to.
        assert_eq!(record.decision, d);
        assert_eq!(record.actor, actor);
        assert_eq!(record.principal, Some(principal_id("cfo")));
        assert_eq!(line, serde_json::to_string(&record).unwrap());
    }
    a.stop().await;
}

/// A record the audit stream cannot take waits in the outbox, counted as
/// pending, and is stored once the stream can take it: nothing answered is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_whose_audit_record_cannot_be_stored_waits_and_is_stored_later() {
    let OneRoot {
        server: _server,
        nc,
        a,
        root,
        _dir,
    } = one_instance_with_a_root(&["finance:read on reports/**"]).await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let d = cfo
        .check(root, "finance:read", "reports/q3", None)
        .await
        .unwrap();
    assert!(d.is_allowed(), "{d:?}");
    eventually("the check is in the audit", || {
        let cfo = cfo.clone();
        async move {
            cfo.audit(root, 10)
                .await
                .is_ok_and(|a| a.records.len() == 1)
        }
    })
    .await;
    let h = cfo.health().await.unwrap();
    assert_eq!((h.audit_failures, h.audit_pending), (0, 0), "{h:?}");
    // Without the audit stream, records cannot be stored: checks are still
    // answered, the records wait, and the failed attempts are counted.
    let js = async_nats::jetstream::new(nc.clone());
    let config = js
        .get_stream(mandate::engine::audit::AUDIT_STREAM)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    js.delete_stream(mandate::engine::audit::AUDIT_STREAM)
        .await
        .unwrap();
    for _ in 0..3 {
        let d = cfo
            .check(root, "finance:read", "reports/q3", None)
            .await
            .unwrap();
        assert!(d.is_allowed(), "{d:?}");
    }
    eventually(
        "the failed attempts are counted, the records pending",
        || {
            let cfo = cfo.clone();
            async move {
                cfo.health()
                    .await
                    .is_ok_and(|h| h.audit_failures >= 1 && h.audit_pending == 3)
            }
        },
    )
    .await;
    // The stream back: the waiting records are stored, each once.
    js.create_stream(config).await.unwrap();
    eventually("the waiting records are stored", || {
        let cfo = cfo.clone();
        async move { cfo.health().await.is_ok_and(|h| h.audit_pending == 0) }
    })
    .await;
    let records = cfo.audit(root, 100).await.unwrap().records;
    assert_eq!(records.len(), 3, "{records:?}");
    a.stop().await;
}

#[test]
fn the_cli_reads_at_the_level_it_is_given() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let root = issue_root(d, &[]);
    let revoked = ok_json(&cfo_changes(d, "revoke", &root, &["--json"]));
    let position = revoked["commits"][0]["position"].as_u64().unwrap();
    let at_least = format!("at-least={position}");
    for level in ["fresh", "local", at_least.as_str()] {
        let status = ok_json(&mandate(
            d,
            &["--json", "status", &root, "--consistency", level],
        ));
        assert_eq!(
            status["effective"]["status"], "revoked",
            "{level}: {status}"
        );
    }
    let beyond = format!("at-least={}", position + 1_000);
    says(
        &mandate(d, &["check", &root, "a:b", "c", "--consistency", &beyond]),
        4,
        &["has not reached"],
    );
    says(
        &mandate(d, &["status", &root, "--consistency", "soon"]),
        2,
        &["consistency \"soon\" is not fresh, local or at-least=<log position>"],
    );
}
