//! Mission completion against a real nats-server, with one or two engine
//! instances serving over NATS:
//!
//! - an administrator's completion of a mission no tree serves yet is known
//!   to every instance, at once: no instance issues for it afterwards;
//! - an issue racing a completion on another instance does not survive;
//! - on a tenant that requires authentication, a completion published
//!   without a valid `Mandate-Auth` from a ticketing (or administrator) key
//!   is never applied — it neither ends a mission nor blocks a future one —
//!   and is recorded on the dead-letter stream and counted in `health`.

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::fixtures::*;
use common::served::Instance;
use common::wire::{assert_invalid_state, connect, issued, serving, start_two};
use common::NatsServer;
use hmac::{Hmac, Mac};
use mandate::client::{Client, MissionPublisher};
use mandate::domain::command::{CompleteMission, Issue};
use mandate::domain::{
    decide, root_tree_id, Actor, Command, CommandEnvelope, Event, ExternalCommand, Facts,
    MandateId, Status, Tree,
};
use mandate::engine::auth::AuthConfig;
use mandate::engine::{EngineConfig, EngineErrorKind};
use mandate::log::EventLog;
use mandate::protocol::{mission_subject, query_subject, MissionCompletedNotice};
use serde_json::Value;
use sha2::Sha256;

/// cfo grants lead a root for `mission_ref`, depth 2.
fn mission_issue(mission_ref: &str) -> Issue {
    let grants = ["finance:read on reports/**"];
    with_depth(2, root_issue("cfo", "lead", Some(mission_ref), &grants))
}

/// The cfo's [`mission_issue`] for `mission_ref`, in acme, sent from outside.
fn cfo_issues_for(mission_ref: &str) -> ExternalCommand {
    ext(envelope(
        "acme",
        principal("cfo"),
        Command::Issue(mission_issue(mission_ref)),
    ))
}

fn complete(t: &str, actor: Actor, mission_ref: &str) -> CommandEnvelope {
    envelope(
        t,
        actor,
        Command::CompleteMission(CompleteMission {
            mission_ref: mission(mission_ref),
        }),
    )
}

/// The effective status of `m` as `instance` sees it (fresh read).
async fn effective(instance: &Instance, t: &str, m: MandateId) -> Option<Status> {
    match instance.engine.status(&tenant(t), m, None).await {
        Ok(s) => Some(s.effective.status),
        Err(e)
            if matches!(
                e.kind(),
                EngineErrorKind::Rejected | EngineErrorKind::NotFound
            ) =>
        {
            None
        }
        Err(e) => panic!("status of {m}: {e}"),
    }
}

/// `Mandate-Auth: v1 <key> <hex HMAC-SHA256(secret, subject "\n" body)>`,
/// computed here from the documented format.
fn mandate_auth(key: &str, secret: &str, subject: &str, body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(subject.as_bytes());
    m.update(b"\n");
    m.update(body);
    let hex: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1 {key} {hex}")
}

/// Waits until each of `instances` has marked acme's mission `mission_ref`
/// as completed.
async fn marked_by_each(instances: &[&Instance], mission_ref: &str) {
    for inst in instances {
        eventually(&format!("every instance marks {mission_ref}"), || async {
            inst.engine
                .store()
                .mission_completed(&tenant("acme"), &mission(mission_ref))
                .unwrap()
        })
        .await;
    }
}

/// Publishes a completion on the mission stream and waits for JetStream's
/// acknowledgement; with `auth`, signed with that key and secret.
async fn publish_completion(
    nc: &async_nats::Client,
    t: &str,
    mission_ref: &str,
    auth: Option<(&str, &str)>,
) {
    let subject = mission_subject(&tenant(t), &mission(mission_ref));
    let body = b"{}".to_vec();
    let mut headers = async_nats::HeaderMap::new();
    if let Some((key, secret)) = auth {
        headers.insert(
            "Mandate-Auth",
            mandate_auth(key, secret, &subject, &body).as_str(),
        );
    }
    async_nats::jetstream::new(nc.clone())
        .publish_with_headers(subject, headers, body.into())
        .await
        .expect("publish a completion")
        .await
        .expect("the mission stream stores the completion");
}

/// The raw `health` reply of whichever instance answers.
async fn health(nc: &async_nats::Client, t: &str) -> Value {
    let msg = nc
        .request(query_subject(&tenant(t), "health"), "{}".into())
        .await
        .expect("health");
    serde_json::from_slice(&msg.payload).expect("health is JSON")
}

/// A nats-server and two instances following it, made by [`start_two`]
/// with `config`.
async fn two_instances(
    config: Option<EngineConfig>,
) -> (
    NatsServer,
    (tempfile::TempDir, tempfile::TempDir),
    Instance,
    Instance,
) {
    let server = NatsServer::start();
    let (dirs, a, b) = start_two(&server.url(), config).await;
    (server, dirs, a, b)
}

/// Stops both instances, each cleanly.
async fn stop_both(a: Instance, b: Instance) {
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Item: a tree-less completion is known to every instance
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrators_completion_of_a_mission_no_tree_serves_is_refused_on_every_instance() {
    let (_server, _dirs, a, b) = two_instances(None).await;
    // The administrator closes the ticket on A before any tree serves it.
    a.engine
        .execute(ext(complete("acme", admin("ops"), "jira:GONE-1")))
        .await
        .expect("an administrator may close a mission no tree serves");
    // Right after A acknowledged, B refuses an issue for it.
    let err = b
        .engine
        .execute(cfo_issues_for("jira:GONE-1"))
        .await
        .expect_err("B must not issue for a mission A completed");
    assert_invalid_state(&err, "an issue for a completed mission");
    let message = err.to_body().message;
    assert!(message.contains("jira:GONE-1"), "{message}");
    stop_both(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_racing_a_completion_on_another_instance_does_not_survive() {
    let (_server, _dirs, a, b) = two_instances(None).await;
    let rounds = 24;
    let mut issued = Vec::new();
    for i in 0..rounds {
        let r = format!("jira:RACE-{i}");
        let issue = envelope("acme", principal("cfo"), Command::Issue(mission_issue(&r)));
        let tree = root_tree_id(&issue.tenant, issue.command_id);
        let (on_b, on_a) = tokio::join!(
            b.engine.execute(ext(issue)),
            a.engine.execute(ext(complete("acme", admin("ops"), &r))),
        );
        on_a.unwrap_or_else(|e| panic!("round {i}: the completion failed: {e}"));
        match on_b {
            Ok(_) => issued.push((i, MandateId(tree.0))),
            Err(e) => {
                assert_invalid_state(&e, &format!("round {i}"));
                // Refused: if the mandate was written, it has already ended.
                for inst in [&a, &b] {
                    let s = effective(inst, "acme", MandateId(tree.0)).await;
                    assert!(
                        s.is_none() || s == Some(Status::Completed),
                        "round {i}: a refused issue left a {s:?} mandate"
                    );
                }
            }
        }
    }
    // An issue acknowledged before the completion is ended by it.
    for (i, m) in issued {
        for inst in [&a, &b] {
            eventually(&format!("round {i}: the mandate is completed"), || async {
                effective(inst, "acme", m).await == Some(Status::Completed)
            })
            .await;
        }
    }
    stop_both(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_whose_writer_died_before_its_second_read_is_ended_by_every_instance() {
    let (server, _dirs, a, b) = two_instances(None).await;
    let nc = connect(&server).await;
    publish_completion(&nc, "acme", "jira:CRASH-1", None).await;
    // Every instance has read the completion, and the intake is done with it.
    marked_by_each(&[&a, &b], "jira:CRASH-1").await;
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream("MANDATE_MISSIONS").await.unwrap();
    eventually("the intake acknowledged the completion", || {
        let stream = stream.clone();
        async move {
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("mandate-engine").await.unwrap();
            let info = c.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
    // An instance that had read the mission as open decided an issue for it,
    // appended it, and died before its second read.
    let cmd = envelope(
        "acme",
        principal("cfo"),
        Command::Issue(mission_issue("jira:CRASH-1")),
    );
    let tree = root_tree_id(&cmd.tenant, cmd.command_id);
    let events = decide(
        &Tree::empty(tenant("acme"), tree),
        &cmd,
        &Facts::default(),
        Utc::now(),
    )
    .unwrap();
    a.engine
        .log()
        .append(
            &tenant("acme"),
            tree,
            0,
            cmd.command_id,
            Event::encode_commit(&events).into(),
        )
        .await
        .unwrap();
    // The mandate does not survive: every instance sees it completed.
    for inst in [&a, &b] {
        eventually("the orphaned mandate is completed", || async {
            effective(inst, "acme", MandateId(tree.0)).await == Some(Status::Completed)
        })
        .await;
    }
    stop_both(a, b).await;
}

// ---------------------------------------------------------------------------
// Item: mission completion is authenticated where the tenant requires it
// ---------------------------------------------------------------------------

fn auth_config() -> EngineConfig {
    let auth: AuthConfig = serde_json::from_str(
        r#"{"tenants": {"acme": {"keys": {
            "principal:cfo": "cfo-secret",
            "admin:ops": "ops-secret",
            "ticketing:jira": "jira-secret"
        }}}}"#,
    )
    .unwrap();
    EngineConfig {
        auth: Some(Arc::new(auth)),
        ..EngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_completion_is_never_applied_and_is_dead_lettered() {
    let (server, _dirs, a, b) = two_instances(Some(auth_config())).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let cfo = Client::nats(nc.clone(), tenant("acme"), principal("cfo")).with_secret("cfo-secret");
    let live = issued(&cfo, mission_issue("jira:LIVE-1")).await;
    let marker = issued(&cfo, mission_issue("jira:MARK-1")).await;

    // Anyone who can publish on the mission subject tries to end a live
    // mission and to block one that no tree serves yet: without a header,
    // with a forged one, and with a principal's (not a ticketing) key.
    publish_completion(&nc, "acme", "jira:LIVE-1", None).await;
    publish_completion(
        &nc,
        "acme",
        "jira:FUTURE-1",
        Some(("ticketing:jira", "guess")),
    )
    .await;
    publish_completion(
        &nc,
        "acme",
        "jira:FUTURE-1",
        Some(("principal:cfo", "cfo-secret")),
    )
    .await;
    // Then the ticketing system closes another ticket, properly signed.
    MissionPublisher::Nats(Box::new(async_nats::jetstream::new(nc.clone())))
        .completed_signed(
            &tenant("acme"),
            &mission("jira:MARK-1"),
            &MissionCompletedNotice::default(),
            "ticketing:jira",
            b"jira-secret",
        )
        .await
        .expect("the ticketing system publishes a signed completion");

    // The signed one is applied, and every instance knows it; each
    // instance's marks follower reads the stream in order, so by then it has
    // judged the three before it.
    for inst in [&a, &b] {
        eventually("the signed completion is applied", || async {
            effective(inst, "acme", marker).await == Some(Status::Completed)
        })
        .await;
    }
    marked_by_each(&[&a, &b], "jira:MARK-1").await;
    for inst in [&a, &b] {
        inst.engine
            .execute(cfo_issues_for("jira:FUTURE-1"))
            .await
            .expect("an unauthenticated completion must not block a future mission");
    }
    // The intake moved each refused one to the dead-letter stream.
    eventually("the rejected completions are counted in health", || async {
        health(&nc, "acme").await["result"]["rejected_mission_completions"] == 3
    })
    .await;
    for inst in [&a, &b] {
        assert_eq!(
            effective(inst, "acme", live).await,
            Some(Status::Active),
            "an unauthenticated completion ended a live mission"
        );
    }
    let js = async_nats::jetstream::new(nc.clone());
    let dead = js
        .get_stream("MANDATE_DEAD_LETTERS")
        .await
        .expect("the dead-letter stream exists");
    let mut subjects = Vec::new();
    for seq in 1..=3 {
        let letter = dead.get_raw_message(seq).await.expect("a dead letter");
        let header = |name: &str| {
            letter
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| panic!("dead letter {seq} has no {name}"))
        };
        assert!(
            header("Mandate-Rejected-Reason").contains("Mandate-Auth")
                || header("Mandate-Rejected-Reason").contains("ticketing"),
            "{}",
            header("Mandate-Rejected-Reason")
        );
        subjects.push(header("Mandate-Rejected-Subject"));
    }
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "mission.acme.jira:FUTURE-1.completed",
            "mission.acme.jira:FUTURE-1.completed",
            "mission.acme.jira:LIVE-1.completed",
        ]
    );
    stop_both(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_administrators_tree_less_completion_reaches_every_instance() {
    let (server, _dirs, a, b) = two_instances(Some(auth_config())).await;
    // Through A's request handler, proven with the administrator's key.
    let cmd = complete("acme", admin("ops"), "jira:GONE-2");
    let subject = "mandate.cmd.acme.complete_mission";
    let body = serde_json::to_vec(&cmd).unwrap();
    let header = mandate_auth("admin:ops", "ops-secret", subject, &body);
    let reply: Value =
        serde_json::from_slice(&a.engine.handle_remote(subject, Some(&header), &body).await)
            .unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    // The completion A recorded passes every instance's check: B refuses.
    let issue = envelope(
        "acme",
        principal("cfo"),
        Command::Issue(mission_issue("jira:GONE-2")),
    );
    let err = b
        .engine
        .execute(ext(issue))
        .await
        .expect_err("B must refuse");
    assert_invalid_state(&err, "B refuses");
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    assert_eq!(
        health(&nc, "acme").await["result"]["rejected_mission_completions"],
        0
    );
    stop_both(a, b).await;
}
