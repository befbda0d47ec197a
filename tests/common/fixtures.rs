//! Builders of ids, actors, scopes and commands, and the polling wait, shared
//! by the integration tests. Not every test binary uses every helper.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mandate::client::GuardConfig;
use mandate::domain::command::{Change, Delegate, Issue};
use mandate::domain::{
    Actor, AgentId, Command, CommandEnvelope, CommandId, Decision, DenyReason, ExternalCommand,
    MandateId, Mission, MissionRef, Outcome, PrincipalId, Scope, Status, TenantId, TreeId,
    SCHEMA_VERSION,
};
use mandate::protocol::TreeQuery;

/// How long anything asynchronous may take before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `f` until it holds, for at most [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, PATIENCE, f).await;
}

/// Polls `f` until it holds, for at most `patience`.
pub async fn eventually_within<F, Fut>(what: &str, patience: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}
/// The tenant most tests act in.
pub fn acme() -> TenantId {
    tenant("acme")
}
pub fn agent_id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}
pub fn principal_id(s: &str) -> PrincipalId {
    PrincipalId::new(s).unwrap()
}
pub fn agent(s: &str) -> Actor {
    Actor::Agent(agent_id(s))
}
pub fn principal(s: &str) -> Actor {
    Actor::Principal(principal_id(s))
}
pub fn admin(s: &str) -> Actor {
    Actor::Admin(principal_id(s))
}
pub fn scope(grants: &[&str]) -> Scope {
    Scope::parse(grants.iter().copied()).unwrap()
}
pub fn mission(s: &str) -> MissionRef {
    MissionRef::new(s).unwrap()
}
pub fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

/// `by` grants `grants` to `grantee` for an hour, depth 4, optionally for
/// the mission `mission_ref`.
pub fn root_issue(by: &str, grantee: &str, mission_ref: Option<&str>, grants: &[&str]) -> Issue {
    Issue {
        principal: principal_id(by),
        grantee: agent_id(grantee),
        mission: Mission {
            purpose: "integration test".into(),
            mission_ref: mission_ref.map(mission),
        },
        scope: scope(grants),
        not_after: in_an_hour(),
        depth: 4,
        step_up: vec![],
        supervisors: vec![],
    }
}

/// The cfo grants the lead `finance:read on reports/**` for the mission
/// `mission_ref`, with no delegation below the lead's own.
pub fn ticket_issue(mission_ref: &str) -> Issue {
    with_depth(
        1,
        root_issue(
            "cfo",
            "lead",
            Some(mission_ref),
            &["finance:read on reports/**"],
        ),
    )
}

/// The cfo grants the planner `finance:read on reports/**` for an hour,
/// for the mission `mission_ref`.
pub fn planner_root(mission_ref: &str) -> Issue {
    root_issue(
        "cfo",
        "planner",
        Some(mission_ref),
        &["finance:read on reports/**"],
    )
}

/// `issue`, with `depth` levels below its root.
pub fn with_depth(depth: u32, issue: Issue) -> Issue {
    Issue { depth, ..issue }
}

/// A delegation of `grants` under `parent` to `grantee`, no other limits.
pub fn delegation(parent: MandateId, grantee: &str, grants: &[&str]) -> Delegate {
    Delegate {
        parent,
        grantee: agent_id(grantee),
        scope: scope(grants),
        not_after: None,
        depth: None,
        step_up: vec![],
        supervisors: vec![],
    }
}

/// A status change of `mandate`, without a reason.
pub fn change(mandate: MandateId) -> Change {
    Change {
        mandate,
        reason: None,
    }
}

/// A command with a fresh id, as `actor` in tenant `t`.
pub fn envelope(t: &str, actor: Actor, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: tenant(t),
        actor,
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command,
    }
}

/// A command as it arrives from outside the engine.
pub fn ext(cmd: CommandEnvelope) -> ExternalCommand {
    ExternalCommand::new(cmd).expect("no engine actor")
}

/// A read of the tree that holds `m`, as of now.
pub fn of_mandate(m: MandateId) -> TreeQuery {
    TreeQuery {
        tree: None,
        mandate: Some(m),
        at: None,
        consistency: Default::default(),
    }
}

/// A read of tree `t`, as of now.
pub fn of_tree(t: TreeId) -> TreeQuery {
    TreeQuery {
        tree: Some(t),
        mandate: None,
        at: None,
        consistency: Default::default(),
    }
}

/// Asserts `d` denies because its mandate (or one above it) is `status`.
pub fn assert_denied_as(d: &Decision, status: Status) {
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    match &d.reason {
        Some(DenyReason::NotActive { status: s, .. }) => assert_eq!(*s, status, "{d:?}"),
        other => panic!("expected a deny as {status}, got {other:?}"),
    }
}

/// A guard's settings: fail closed after `lease` without hearing the
/// engine; the rest as by default.
pub fn guard_config(lease: Duration) -> GuardConfig {
    GuardConfig {
        lease,
        ..GuardConfig::default()
    }
}
