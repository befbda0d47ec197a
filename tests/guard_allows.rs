//! `Guard::allows` is the agent's hot path: a yes or no that must be
//! exactly `Guard::check(..).is_allowed()` in every state the guard passes
//! through (active, paused above, resumed, revoked above), on an in-process
//! engine whose signals the guard hears.

use std::time::Duration;

use chrono::Utc;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig, GuardState};
use mandate::domain::command::{Delegate, Issue};
use mandate::domain::{Actor, AgentId, MandateId, Mission, PrincipalId, Scope, TenantId};
use mandate::engine::{BackgroundGuard, Engine, EngineConfig};

const REQUESTS: &[(&str, &str)] = &[
    ("finance:read", "reports/q3/summary"),
    ("finance:read", "reports/q4/summary"),
    ("finance:write", "reports/q3/summary"),
    ("deals:sign", "deals/7"),
    ("finance:read", "reports/../hr"),
    ("finance:*", "reports/q3/summary"),
];

fn agent(name: &str) -> Actor {
    Actor::Agent(AgentId::new(name).unwrap())
}

fn delegation(parent: MandateId, grantee: &str, scope: &[&str], step_up: &[&str]) -> Delegate {
    Delegate {
        parent,
        grantee: AgentId::new(grantee).unwrap(),
        scope: Scope::parse(scope.iter().copied()).unwrap(),
        not_after: None,
        depth: None,
        step_up: step_up.iter().map(|s| s.parse().unwrap()).collect(),
        supervisors: vec![],
    }
}

/// An embedded engine for tenant `acme` (running its background tasks),
/// principal `cfo`'s client on it, and a root mandate for the quarterly
/// close issued by `cfo` to agent `lead` for an hour.
async fn engine_with_lead(
    scope: &[&str],
    depth: u32,
) -> (tempfile::TempDir, BackgroundGuard, Client, MandateId) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    let background = engine.start();
    let tenant = TenantId::new("acme").unwrap();
    let cfo = PrincipalId::new("cfo").unwrap();
    let principal = Client::local(engine.clone(), tenant, Actor::Principal(cfo.clone()));
    let root = principal
        .issue(Issue {
            principal: cfo,
            grantee: AgentId::new("lead").unwrap(),
            mission: Mission {
                purpose: "quarterly close".into(),
                mission_ref: None,
            },
            scope: Scope::parse(scope.iter().copied()).unwrap(),
            not_after: Utc::now() + chrono::Duration::hours(1),
            depth,
            step_up: vec![],
            supervisors: vec![],
        })
        .await
        .unwrap()
        .mandate
        .unwrap();
    (dir, background, principal, root)
}

/// Every request: `allows` says what `check` says. Returns how many allow.
fn agree(guard: &Guard) -> usize {
    REQUESTS
        .iter()
        .filter(|(action, resource)| {
            let allowed = guard.check(action, resource).is_allowed();
            assert_eq!(
                guard.allows(action, resource),
                allowed,
                "{action} on {resource} in state {:?}",
                guard.state()
            );
            allowed
        })
        .count()
}

async fn until_state(guard: &Guard, want: impl Fn(GuardState) -> bool) {
    for _ in 0..500 {
        if want(guard.state()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the guard never reached the state; it is {:?}",
        guard.state()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allows_answers_what_check_answers_through_pause_resume_and_revoke() {
    let (_dir, background, principal, root) =
        engine_with_lead(&["finance:* on reports/**", "deals:* on deals/**"], 3).await;
    let mid = principal
        .as_actor(agent("lead"))
        .delegate(delegation(
            root,
            "mid",
            &["finance:* on reports/**", "deals:* on deals/**"],
            &["deals:sign"],
        ))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let leaf = principal
        .as_actor(agent("mid"))
        .delegate(delegation(
            mid,
            "leaf",
            &["finance:read on reports/q3/*", "deals:* on deals/*"],
            &[],
        ))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let guard = Guard::start(
        principal.as_actor(agent("leaf")),
        &GuardHub::new(),
        leaf,
        GuardConfig::default(),
    )
    .await
    .unwrap();

    // Active: only the one plain allow (deals:sign needs step-up approval).
    assert_eq!(agree(&guard), 1);

    principal.pause(root, None).await.unwrap();
    until_state(&guard, |s| s == GuardState::Paused).await;
    assert_eq!(agree(&guard), 0, "paused above, nothing is allowed");

    principal.resume(root, None).await.unwrap();
    until_state(&guard, |s| s == GuardState::Active).await;
    assert_eq!(agree(&guard), 1);

    principal.revoke(mid, None).await.unwrap();
    until_state(&guard, |s| matches!(s, GuardState::Terminated(_))).await;
    assert_eq!(agree(&guard), 0, "revoked above, nothing is allowed");

    drop(guard);
    background.stop().await.unwrap();
}

/// `wait_active` sits out a pause: it is waiting while the pause and the
/// resume arrive, returns `Ok` on the resume, and `Err` with the status when
/// the mandate is revoked while it waits. Every change wakes the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_active_sits_out_a_pause_and_returns_the_end() {
    let (_dir, background, principal, root) =
        engine_with_lead(&["finance:* on reports/**"], 1).await;
    let guard = Guard::start(
        principal.as_actor(agent("lead")),
        &GuardHub::new(),
        root,
        GuardConfig::default(),
    )
    .await
    .unwrap();
    let guard = std::sync::Arc::new(guard);
    assert_eq!(guard.wait_active().await, Ok(()), "active from the start");

    principal.pause(root, None).await.unwrap();
    until_state(&guard, |s| s == GuardState::Paused).await;
    let waiting = {
        let guard = guard.clone();
        tokio::spawn(async move { guard.wait_active().await })
    };
    // The waiter is waiting: a pause does not end by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "wait_active returned during the pause"
    );
    principal.resume(root, None).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("wait_active did not return after the resume")
        .expect("the waiting task failed");
    assert_eq!(woke, Ok(()));

    principal.pause(root, None).await.unwrap();
    until_state(&guard, |s| s == GuardState::Paused).await;
    let waiting = {
        let guard = guard.clone();
        tokio::spawn(async move { guard.wait_active().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    principal.revoke(root, None).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("wait_active did not return after the revoke")
        .expect("the waiting task failed");
    assert_eq!(ended, Err(mandate::domain::Status::Revoked));

    drop(guard);
    background.stop().await.unwrap();
}
