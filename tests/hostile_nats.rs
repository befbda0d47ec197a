//! The engine against a real nats-server, driven by a hostile caller: one
//! that has read the engine's code and the schemas, and uses everything the
//! wire lets it send to keep authority alive that should end, or to pass
//! itself off as someone it is not.
//!
//! - the command ids the engine derives for its own writes (mission
//!   completion, expiry, bulk steps) cannot be spent in advance by a caller,
//!   so a completed mission ends every tree it serves;
//! - a check cannot record the engine itself as the one who asked;
//! - a command id reused in another tree once the log has forgotten it (past
//!   JetStream's duplicate window) cannot take over a mandate of the first.

mod common;

use std::time::Duration;

use common::fixtures::*;
use common::wire::{
    client, connect, eventually_effective, issue, publish_mission, serve_one, serving,
};
use common::NatsServer;

use mandate::domain::{Actor, Command, CommandEnvelope, CommandId, MandateId, Status};
use mandate::engine::{Engine, EngineConfig};
use mandate::log::JetStreamConfig;

/// Issues a root for `mission_ref` from `cfo` to `planner`.
async fn issue_for_mission(nc: &async_nats::Client, mission_ref: &str) -> MandateId {
    let grants = ["finance:read on reports/**"];
    issue(nc, root_issue("cfo", "planner", Some(mission_ref), &grants)).await
}

/// The holder of a tree knows (the code is public) which command id the
/// mission intake will use to complete its tree, and spends it first on a
/// harmless delegation. The completion must still end the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cannot_spend_the_mission_completion_id_in_advance() {
    let (server, _dir, instance, nc) = serve_one("acme").await;

    let root = issue_for_mission(&nc, "jira:FIN-66").await;
    // What the intake derives for this mission and this tree.
    let base = CommandId::derived("complete-mission", "acme/jira:FIN-66");
    let per_tree = CommandId::derived(&base.to_string(), &root.to_string());
    let harmless = delegation(root, "helper", &["finance:read on reports/q3/*"]);
    let spend = CommandEnvelope {
        command_id: per_tree,
        ..envelope("acme", agent("planner"), Command::Delegate(harmless))
    };
    let refused = client(&nc, "acme", agent("planner"))
        .send(&spend)
        .await
        .expect_err("an id the engine derives is not accepted from outside");
    assert_eq!(refused.reason(), Some("reserved_command_id"), "{refused}");

    publish_mission(&connect(&server).await, "acme", "jira:FIN-66", "{}").await;

    let cfo = client(&nc, "acme", principal("cfo"));
    eventually_effective(&cfo, root, Status::Completed).await;
    instance.stop().await;
}

/// A check names who asked, and that name goes into the audit: a caller may
/// not put the engine itself there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_cannot_record_the_engine_as_the_one_who_asked() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let root = issue_for_mission(&nc, "jira:FIN-67").await;

    for forged in [Actor::expiry(), Actor::mission_intake()] {
        // Allowed or refused, it must not be recorded as the engine's.
        let _ = client(&nc, "acme", forged)
            .check(root, "finance:read", "reports/q3", None)
            .await;
    }
    // A sentinel after them: once it is recorded, so is anything before it.
    let cfo = client(&nc, "acme", principal("cfo"));
    cfo.check(root, "finance:read", "reports/q4", None)
        .await
        .expect("an honest check is answered");
    eventually("the sentinel check is in the audit", || {
        let cfo = cfo.clone();
        async move {
            cfo.audit(root, 100).await.is_ok_and(|a| {
                a.records
                    .iter()
                    .any(|r| r.decision.resource == "reports/q4")
            })
        }
    })
    .await;
    let audit = cfo.audit(root, 100).await.unwrap();
    for r in &audit.records {
        assert!(
            !matches!(r.actor, Some(Actor::System(_))),
            "the audit names the engine as the one who asked: {:?}",
            r.actor
        );
    }
    instance.stop().await;
}

/// An engine serving over NATS whose log forgets command ids after a short
/// duplicate window, so a test can get past it.
async fn serve_with_short_window(
    url: &str,
    dir: &std::path::Path,
) -> (Engine, tokio::sync::oneshot::Sender<()>) {
    let nc = async_nats::connect(url).await.expect("connect the engine");
    let log = JetStreamConfig {
        duplicate_window: Duration::from_secs(1),
        ..JetStreamConfig::default()
    };
    let config = EngineConfig {
        allow_open_tenants: true,
        ..EngineConfig::default()
    };
    let engine = Engine::nats(nc, dir, log, config)
        .await
        .expect("open the engine");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = engine.clone();
    tokio::spawn(async move {
        serving
            .serve(async move {
                let _ = rx.await;
            })
            .await
    });
    (engine, tx)
}

/// A holder in another tree of the tenant replays a delegation's command id
/// once the log's duplicate window has passed. Whatever it gets, the first
/// tree's mandate stays its principal's to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_reused_in_another_tree_cannot_take_over_a_mandate() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (_engine, stop) = serve_with_short_window(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    let root = issue_for_mission(&nc, "jira:FIN-68").await;
    let id = CommandId::generate();
    let delegation = |parent: MandateId, actor: &str| {
        let d = delegation(parent, "researcher", &["finance:read on reports/q3/*"]);
        CommandEnvelope {
            command_id: id,
            ..envelope("acme", agent(actor), Command::Delegate(d))
        }
    };
    let mandate = client(&nc, "acme", agent("planner"))
        .send(&delegation(root, "planner"))
        .await
        .expect("delegate")
        .mandate
        .expect("a delegation names its mandate");

    // Another principal's tree, held by the hostile agent.
    let other = client(&nc, "acme", principal("eve"))
        .issue(root_issue(
            "eve",
            "mallory",
            None,
            &["finance:read on reports/**"],
        ))
        .await
        .expect("issue")
        .mandate
        .expect("an issue names its mandate");
    // Refused while the log remembers the id; tried again until it forgets.
    let mallory = client(&nc, "acme", agent("mallory"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match mallory.send(&delegation(other, "mallory")).await {
            Ok(_) => break,
            Err(e) if e.reason() == Some("command_id_reused") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the log never forgot the command id"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }

    // The first tree's principal still ends its mandate, and it is ended.
    let cfo = client(&nc, "acme", principal("cfo"));
    cfo.revoke(mandate, None)
        .await
        .expect("the principal revokes a mandate of its own tree");
    let status = cfo.status(mandate, None).await.expect("status");
    assert_eq!(status.mandate.tree(), mandate_tree(root), "{status:?}");
    assert_eq!(status.effective.status, Status::Revoked, "{status:?}");
    let d = cfo
        .check(mandate, "finance:read", "reports/q3/summary", None)
        .await
        .unwrap();
    assert!(!d.is_allowed(), "{d:?}");
    let _ = stop.send(());
}

fn mandate_tree(root: MandateId) -> mandate::domain::TreeId {
    mandate::domain::TreeId(root.0)
}
