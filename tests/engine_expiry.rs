//! Expiry against a real nats-server: an expiry that passed while the engine
//! was down is written at restart; two instances write each expiry once.
//! Time is the engines' shared manual clock, moved by the test: the server
//! and the engines are real, the wait for a mandate to fall due is not.

mod common;

use chrono::Utc;
use common::prelude::*;
use mandate::domain::EventBody;
use mandate::engine::{Clock, EngineConfig};

/// The settings of [`Instance::start`] (open tenants), on `clock`, whose
/// moves alone wake the expiry scheduler in time.
fn on_clock(clock: &Clock) -> EngineConfig {
    EngineConfig {
        allow_open_tenants: true,
        clock: clock.clone(),
        expiry_tick: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

// ---------------------------------------------------------------------------
// 4. Expiry
// ---------------------------------------------------------------------------

fn expired_events(events: &[mandate::domain::Event], m: MandateId) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.body, EventBody::MandateExpired(c) if c.mandate == m))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_that_passed_while_the_engine_was_down_is_written_at_restart() {
    let clock = Clock::manual(Utc::now());
    let (server, dir, first, nc) = serve_one_with("acme", on_clock(&clock)).await;
    let not_after = clock.now() + chrono::Duration::minutes(30);
    let root = issue(
        &nc,
        Issue {
            not_after,
            ..root_issue("hr", "onboarder", None, &["hr:read on people/**"])
        },
    )
    .await;
    let hr = client(&nc, "acme", principal("hr"));
    assert_eq!(own(&hr, root).await, Status::Active);
    first.stop().await;

    // The mandate falls due while no engine runs.
    let restarted_at = clock.advance(chrono::Duration::hours(1));
    let second = Instance::start_with(&server.url(), dir.path(), on_clock(&clock)).await;
    serving(&nc, "acme").await;
    eventually("the expiry is written after the restart", || {
        let hr = hr.clone();
        async move { own(&hr, root).await == Status::Expired }
    })
    .await;
    let s = hr.status(root, None).await.unwrap();
    let transition = s
        .mandate
        .transition()
        .expect("an expired mandate has a transition");
    assert_eq!(transition.by, Actor::expiry());
    assert_eq!(s.effective.cause.and_then(|c| c.by), Some(Actor::expiry()));
    let history = hr.history(of_mandate(root)).await.unwrap();
    assert_eq!(expired_events(&history.events, root), 1);
    let event = history
        .events
        .iter()
        .find(|e| matches!(e.body, EventBody::MandateExpired(_)))
        .unwrap();
    assert!(
        event.time >= restarted_at,
        "written by the restarted engine ({} < {restarted_at})",
        event.time
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_write_each_expiry_once() {
    let clock = Clock::manual(Utc::now());
    let server = NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start_with(&server.url(), dir_a.path(), on_clock(&clock)).await;
    let b = Instance::start_with(&server.url(), dir_b.path(), on_clock(&clock)).await;
    let nc = connect(&server).await;
    all_serving(&nc, "acme", &[&a, &b]).await;

    // Several trees, all due at the same moment, each with a child due with it.
    let not_after = clock.now() + chrono::Duration::minutes(30);
    let mut roots = Vec::new();
    let mut children = Vec::new();
    for i in 0..5 {
        let root = issue(
            &nc,
            Issue {
                not_after,
                ..root_issue(
                    "sec",
                    &format!("scanner-{i}"),
                    None,
                    &["scan:run on hosts/**"],
                )
            },
        )
        .await;
        children.push(
            delegate(
                &nc,
                &format!("scanner-{i}"),
                root,
                &format!("probe-{i}"),
                &["scan:run on hosts/**"],
            )
            .await,
        );
        roots.push(root);
    }
    let sec = client(&nc, "acme", principal("sec"));
    // And a short-lived child whose long-lived root is revoked first: its
    // expiry is due on both instances, but it was already ended by the revoke.
    let long_root = issue(
        &nc,
        root_issue("sec", "auditor", None, &["scan:run on hosts/**"]),
    )
    .await;
    let orphan = client(&nc, "acme", agent("auditor"))
        .delegate(Delegate {
            not_after: Some(not_after),
            ..delegation(long_root, "temp-auditor", &["scan:run on hosts/**"])
        })
        .await
        .unwrap()
        .mandate
        .unwrap();
    sec.revoke(long_root, None).await.unwrap();
    // Both schedulers see them all fall due at once.
    clock.advance(chrono::Duration::hours(1));
    for root in &roots {
        let root = *root;
        eventually("each root is expired by an event", || {
            let sec = sec.clone();
            async move { own(&sec, root).await == Status::Expired }
        })
        .await;
    }
    // Both instances have seen every expiry and their schedulers have nothing
    // left to do for these trees.
    a.caught_up().await;
    b.caught_up().await;
    let t = tenant("acme");
    for inst in [&a, &b] {
        for root in &roots {
            let s = inst.engine.status(&t, *root, None).await.unwrap();
            assert_eq!(s.mandate.status(), Status::Expired);
        }
        for child in &children {
            let s = inst.engine.status(&t, *child, None).await.unwrap();
            assert_eq!(s.effective.status, Status::Expired);
        }
    }
    // (The revoked long-lived root's entry is not due yet: it stays in
    // the queue until it is, and is dropped then.)
    eventually("no due expiry is pending on either instance", || async {
        [&a, &b].iter().all(|i| {
            i.engine
                .store()
                .due_expiries(clock.now(), None, 10)
                .unwrap()
                .is_empty()
        })
    })
    .await;

    let counts = commits_per_command(&a.engine).await;
    for (root, child) in roots.iter().zip(&children) {
        let history = sec.history(of_tree(TreeId(root.0))).await.unwrap();
        assert_eq!(expired_events(&history.events, *root), 1, "root {root}");
        assert!(
            expired_events(&history.events, *child) <= 1,
            "child {child}"
        );
        let id = CommandId::derived(
            "expire",
            &format!("{root}/{}", not_after.timestamp_millis()),
        );
        assert_eq!(
            counts.get(&id),
            Some(&1),
            "log records of root {root}'s expiry"
        );
    }
    let history = sec.history(of_tree(TreeId(long_root.0))).await.unwrap();
    assert_eq!(
        expired_events(&history.events, orphan),
        0,
        "ended by the revoke"
    );
    assert_eq!(effective(&sec, orphan).await, Status::Revoked);
    // Whatever each scheduler did, both projections are what the log says.
    for inst in [&a, &b] {
        let report = inst.engine.rebuild_check().await.unwrap();
        assert!(
            report.equal,
            "{} differs from a rebuild",
            inst.engine.instance()
        );
    }
    a.stop().await;
    b.stop().await;
}
