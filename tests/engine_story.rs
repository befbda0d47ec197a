//! The engine against a real nats-server (see `common`): the ghost-execution
//! story and the cascade, each test with its own server and engine serving
//! over NATS, driven through `Client::nats` or raw NATS as users and
//! ticketing systems do.
//!
//! - a ticket closes, the whole tree is completed, guards are told, and the
//!   mission cannot be reopened by a new root; a refused completion leaves
//!   the mission open;
//! - a completion published while the engine is down is applied at restart;
//! - pause and resume cascade, and a descendant paused on its own stays so.

mod common;

use common::prelude::*;
use futures::StreamExt;
use mandate::domain::{EventBody, MissionRef};
use mandate::protocol::{signal_subject, Signal, SignalKind};

// ---------------------------------------------------------------------------
// 1. The ghost-execution story
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_ticket_ends_the_whole_tree_and_tells_its_guards() {
    let (server, _dir, instance, nc) = serve_one("acme").await;

    let grants = ["finance:read on reports/**", "finance:write on drafts/**"];
    let root = issue(
        &nc,
        root_issue("cfo", "planner", Some("jira:FIN-42"), &grants),
    )
    .await;
    let child = delegate(
        &nc,
        "planner",
        root,
        "analyst",
        &["finance:read on reports/**"],
    )
    .await;
    let grandchild = delegate(
        &nc,
        "analyst",
        child,
        "fetcher",
        &["finance:read on reports/q3/*"],
    )
    .await;
    let tree = [root, child, grandchild];
    let cfo = client(&nc, "acme", principal("cfo"));
    for m in tree {
        let d = cfo
            .check(m, "finance:read", "reports/q3/summary", None)
            .await
            .unwrap();
        assert!(d.is_allowed(), "before the ticket closes: {d:?}");
    }

    // A guard's view: a plain subscriber on the root's signal subject, made
    // before the completion and confirmed by a round trip on its connection.
    let guard_nc = connect(&server).await;
    let mut signals = guard_nc
        .subscribe(signal_subject(&tenant("acme"), root))
        .await
        .unwrap();
    client(&guard_nc, "acme", agent("fetcher"))
        .status(grandchild, None)
        .await
        .unwrap();

    // The ticketing system: a plain JetStream publish, no Mandate code.
    let ticketing = connect(&server).await;
    let body = r#"{"source":"https://jira.example/browse/FIN-42"}"#;
    publish_mission(&ticketing, "acme", "jira:FIN-42", body).await;

    eventually("the root is completed", || {
        let cfo = cfo.clone();
        async move { effective(&cfo, root).await == Status::Completed }
    })
    .await;
    let root_status = cfo.status(root, None).await.unwrap();
    assert_eq!(root_status.mandate.status(), Status::Completed);
    for m in [child, grandchild] {
        let s = cfo.status(m, None).await.unwrap();
        assert_eq!(s.effective.status, Status::Completed, "{m}");
        assert_eq!(
            s.effective.cause.as_ref().map(|c| c.mandate),
            Some(root),
            "the cause names the root: {s:?}"
        );
        // Only the root's own status changed: the cascade is computed.
        assert_eq!(s.mandate.status(), Status::Active);
    }
    for m in tree {
        let d = cfo
            .check(m, "finance:read", "reports/q3/summary", None)
            .await
            .unwrap();
        assert_denied_as(&d, Status::Completed);
    }

    let msg = tokio::time::timeout(PATIENCE, signals.next())
        .await
        .expect("a signal on the root's subject in time")
        .expect("the subscription is open");
    let signal: Signal = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(signal.kind, SignalKind::Terminated);
    assert_eq!(signal.mandate, root);
    assert_eq!(signal.status, Status::Completed);
    assert_eq!(signal.event_type, "mission_completed");
    assert_eq!(signal.actor, Actor::mission_intake());

    // The mission is over: no new root may serve it; another mission may.
    let err = cfo.issue(planner_root("jira:FIN-42")).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::InvalidState, "{err}");
    assert!(err.to_string().contains("jira:FIN-42"), "{err}");
    assert_mission_open(&cfo, planner_root("jira:FIN-43")).await;
    instance.stop().await;
}

/// A `complete_mission` that is refused must not leave the mission marked as
/// completed behind it (refused commands change nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mission_completion_changes_nothing() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let root = issue(&nc, planner_root("jira:FIN-77")).await;
    let before = instance.log_position().await;

    // An agent (even the root's holder) may not complete a mission.
    let err = client(&nc, "acme", agent("planner"))
        .complete_mission(MissionRef::new("jira:FIN-77").unwrap())
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::Forbidden, "{err}");
    assert_eq!(err.reason(), Some("not_authorized"), "{err}");
    assert_eq!(instance.log_position().await, before);

    let cfo = client(&nc, "acme", principal("cfo"));
    assert_eq!(effective(&cfo, root).await, Status::Active);
    // The mission is still open: another root may serve it.
    let reviewer = Issue {
        grantee: agent_id("reviewer"),
        ..planner_root("jira:FIN-77")
    };
    assert_mission_open(&cfo, reviewer).await;
    instance.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Completion while the engine is down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_sent_while_the_engine_is_down_is_applied_when_it_returns() {
    let (server, dir, first, nc) = serve_one("acme").await;
    let change = root_issue(
        "ops-lead",
        "deployer",
        Some("chg:CHG-1001"),
        &["deploy:* on services/**"],
    );
    let root = issue(&nc, change).await;
    let grants = ["deploy:run on services/web/*"];
    let child = delegate(&nc, "deployer", root, "canary", &grants).await;
    let lead = client(&nc, "acme", principal("ops-lead"));
    assert_eq!(effective(&lead, child).await, Status::Active);
    first.stop().await;

    // Nobody serves now.
    let err = lead
        .clone()
        .with_timeout(Duration::from_millis(300))
        .status(root, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::NoEngine(_) | ClientError::TimedOut(_)),
        "{err:?}"
    );
    publish_mission(&nc, "acme", "chg:CHG-1001", "").await;

    let second = serve_again(&server, &dir, &nc).await;
    eventually("the completion sent while down is applied", || {
        let lead = lead.clone();
        async move { effective(&lead, child).await == Status::Completed }
    })
    .await;
    assert_eq!(own(&lead, root).await, Status::Completed);
    let history = lead.history(of_mandate(root)).await.unwrap();
    let completions: Vec<_> = history
        .events
        .iter()
        .filter(|e| matches!(e.body, EventBody::MissionCompleted(_)))
        .collect();
    assert_eq!(completions.len(), 1, "{:?}", history.events);
    assert_eq!(completions[0].actor, Actor::mission_intake());
    second.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Pause and resume cascade
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_cascade_but_an_own_pause_stays() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let grants = ["crm:read on accounts/**"];
    let root = issue(&nc, root_issue("sales-vp", "a0", None, &grants)).await;
    let child = delegate(&nc, "a0", root, "a1", &grants).await;
    let grandchild = delegate(&nc, "a1", child, "a2", &grants).await;
    let vp = client(&nc, "acme", principal("sales-vp"));
    let check = |m: MandateId| {
        let vp = vp.clone();
        async move {
            vp.check(m, "crm:read", "accounts/initech", None)
                .await
                .unwrap()
        }
    };

    vp.pause(root, Some("audit".into())).await.unwrap();
    for m in [root, child, grandchild] {
        let s = vp.status(m, None).await.unwrap();
        assert_eq!(s.effective.status, Status::Paused, "{m}");
        assert_eq!(s.effective.cause.map(|c| c.mandate), Some(root));
        assert_denied_as(&check(m).await, Status::Paused);
    }
    assert_eq!(own(&vp, child).await, Status::Active);

    // The grandchild is paused on its own, by the holder above it.
    client(&nc, "acme", agent("a1"))
        .pause(grandchild, Some("its own reason".into()))
        .await
        .unwrap();
    vp.resume(root, None).await.unwrap();

    for m in [root, child] {
        assert_eq!(effective(&vp, m).await, Status::Active, "{m}");
        assert!(check(m).await.is_allowed());
    }
    let s = vp.status(grandchild, None).await.unwrap();
    assert_eq!(s.mandate.status(), Status::Paused);
    assert_eq!(s.effective.status, Status::Paused);
    assert_eq!(s.effective.cause.map(|c| c.mandate), Some(grandchild));
    assert_denied_as(&check(grandchild).await, Status::Paused);

    // And its own resume brings it back.
    vp.resume(grandchild, None).await.unwrap();
    assert!(check(grandchild).await.is_allowed());
    instance.stop().await;
}
