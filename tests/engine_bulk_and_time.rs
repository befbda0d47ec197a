//! Bulk revoke by agent and by principal across many trees, and checks `at`
//! a past moment, against a real nats-server.

mod common;

use chrono::{DateTime, Utc};
use common::prelude::*;
use mandate::domain::{DenyReason, Outcome};
use mandate::engine::{Clock, EngineConfig};
use mandate::protocol::CommandResult;

// ---------------------------------------------------------------------------
// 6. Bulk revoke
// ---------------------------------------------------------------------------

/// Asserts a bulk revoke was accepted and wrote `n` commits (`why`).
fn wrote(r: Result<CommandResult, ClientError>, n: usize, why: &str) -> CommandResult {
    let r = r.expect("the bulk revoke is accepted");
    assert_eq!(r.commits.len(), n, "{why}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_revoke_by_agent_and_by_principal_across_many_trees() {
    let (_server, _dir, instance, nc) = serve_one("acme").await;
    let grants = ["tickets:* on queue/**"];

    struct Tree {
        principal: &'static str,
        root: MandateId,
        employee: MandateId,
        contractor: Option<(MandateId, Option<MandateId>)>,
    }
    let mut trees = Vec::new();
    for i in 0..20 {
        let principal = if i < 14 { "alice" } else { "bob" };
        let lead = format!("lead-{i}");
        let root = issue(&nc, root_issue(principal, &lead, None, &grants)).await;
        let employee = delegate(&nc, &lead, root, &format!("employee-{i}"), &grants).await;
        // Every other tree also employs the shared contractor, some of whom
        // delegate further.
        let contractor = if i % 2 == 0 {
            let c = delegate(&nc, &lead, root, "contractor", &grants).await;
            let sub = if i % 4 == 0 {
                Some(delegate(&nc, "contractor", c, &format!("sub-{i}"), &grants).await)
            } else {
                None
            };
            Some((c, sub))
        } else {
            None
        };
        trees.push(Tree {
            principal,
            root,
            employee,
            contractor,
        });
    }
    let admin = client(&nc, "acme", Actor::Admin(principal_id("it-admin")));
    let history_len = |root: MandateId| {
        let admin = admin.clone();
        async move {
            admin
                .history(of_tree(TreeId(root.0)))
                .await
                .unwrap()
                .events
                .len()
        }
    };

    // The length of each tree's history, in the order of `trees`.
    let histories = || async {
        let mut lens = Vec::new();
        for t in &trees {
            lens.push(history_len(t.root).await);
        }
        lens
    };

    // Deprovisioning the contractor.
    let before = histories().await;
    let reason = Some("contract ended".into());
    let r = admin.revoke_agent(agent_id("contractor"), reason).await;
    let r = wrote(r, 11, "the block, then one revoke per contractor mandate");
    assert_eq!(r.commits[0].tree, TreeId::registry(&tenant("acme")));
    for (t, len) in trees.iter().zip(&before) {
        assert_eq!(effective(&admin, t.root).await, Status::Active);
        assert_eq!(effective(&admin, t.employee).await, Status::Active);
        match t.contractor {
            Some((c, sub)) => {
                assert_eq!(own(&admin, c).await, Status::Revoked);
                if let Some(sub) = sub {
                    let s = admin.status(sub, None).await.unwrap();
                    assert_eq!(s.effective.status, Status::Revoked);
                    assert_eq!(s.effective.cause.map(|c| c.mandate), Some(c));
                }
                assert_eq!(history_len(t.root).await, len + 1);
            }
            None => assert_eq!(history_len(t.root).await, *len, "an unrelated tree changed"),
        }
    }

    // Offboarding alice: every tree she granted ends; bob's do not.
    let before = histories().await;
    let reason = Some("left the company".into());
    let r = admin.revoke_principal(principal_id("alice"), reason).await;
    wrote(r, 15, "the block, then one revoke per root alice granted");
    for (t, len) in trees.iter().zip(&before) {
        let mut all = vec![t.root, t.employee];
        if let Some((c, sub)) = t.contractor {
            all.push(c);
            all.extend(sub);
        }
        if t.principal == "alice" {
            assert_eq!(own(&admin, t.root).await, Status::Revoked);
            for m in all {
                assert_eq!(effective(&admin, m).await, Status::Revoked, "{m}");
            }
            let d = admin
                .check(t.employee, "tickets:close", "queue/42", None)
                .await
                .unwrap();
            assert_denied_as(&d, Status::Revoked);
        } else {
            assert_eq!(effective(&admin, t.root).await, Status::Active);
            assert_eq!(effective(&admin, t.employee).await, Status::Active);
            assert_eq!(history_len(t.root).await, *len, "bob's tree changed");
            let d = admin
                .check(t.employee, "tickets:close", "queue/42", None)
                .await
                .unwrap();
            assert!(d.is_allowed(), "{d:?}");
        }
    }
    instance.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Time travel
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_at_a_past_moment_answers_as_of_that_moment() {
    // The engine's clock is moved by the test: each step is a second apart.
    let clock = Clock::manual(Utc::now());
    let config = EngineConfig {
        allow_open_tenants: true,
        clock: clock.clone(),
        ..EngineConfig::default()
    };
    let (_server, _dir, instance, nc) = serve_one_with("acme", config).await;
    let step = || clock.advance(chrono::Duration::seconds(1));
    let before_issue = clock.now();
    step();
    let (reports, q3) = (
        ["finance:read on reports/**"],
        ["finance:read on reports/q3/*"],
    );
    let root = issue(&nc, root_issue("cfo", "planner", None, &reports)).await;
    let child = delegate(&nc, "planner", root, "analyst", &q3).await;
    let while_live = step();
    step();
    let cfo = client(&nc, "acme", principal("cfo"));
    let revoked = cfo.revoke(root, Some("deal closed".into())).await.unwrap();
    let revoked_at = revoked.commits[0].events[0].time;
    assert!(revoked_at > while_live);
    let after = step();

    let ask = |at: Option<DateTime<Utc>>| {
        let cfo = cfo.clone();
        async move {
            cfo.check(child, "finance:read", "reports/q3/summary", at)
                .await
                .unwrap()
        }
    };
    let then = ask(Some(while_live)).await;
    assert!(then.is_allowed(), "at {while_live}: {then:?}");
    assert_eq!(then.at, while_live);
    assert_denied_as(&ask(Some(after)).await, Status::Revoked);
    assert_denied_as(&ask(None).await, Status::Revoked);
    // Before the mandate existed there was nothing to allow.
    let earlier = ask(Some(before_issue)).await;
    assert_eq!(earlier.outcome, Outcome::Deny);
    assert!(
        matches!(earlier.reason, Some(DenyReason::UnknownMandate)),
        "{earlier:?}"
    );
    // Status `at` agrees.
    let s = cfo.status(child, Some(while_live)).await.unwrap();
    assert_eq!(s.effective.status, Status::Active);
    let s = cfo.status(child, Some(after)).await.unwrap();
    assert_eq!(s.effective.status, Status::Revoked);
    instance.stop().await;
}
