//! Bulk revokes and tenant-level blocks, against a real `nats-server` and
//! real engine instances:
//! - a bulk revoke or a mission completion on a lagging instance ends a
//!   mandate another instance acknowledged a moment earlier;
//! - a deprovisioned agent or offboarded principal stays blocked on every
//!   instance until an administrator lifts the block, also when a grant
//!   races the block.

mod common;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::served::Instance;
use common::NatsServer;
use mandate::client::Client;
use mandate::domain::command::{Delegate, Issue};
use mandate::domain::{
    Actor, AgentId, MandateId, Mission, MissionRef, PrincipalId, Scope, Status, TenantId,
};
use mandate::engine::{Engine, EngineConfig};
use mandate::log::JetStreamConfig;

/// How long anything asynchronous may take before a test gives up.
const PATIENCE: Duration = Duration::from_secs(5);

/// Polls `f` until it holds, for at most [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}
fn agent_id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}
fn principal_id(s: &str) -> PrincipalId {
    PrincipalId::new(s).unwrap()
}
fn admin() -> Actor {
    Actor::Admin(principal_id("it-admin"))
}
fn grants() -> Scope {
    Scope::parse(["tickets:* on queue/**"]).unwrap()
}
fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

fn root_issue(by: &str, grantee: &str, mission_ref: Option<&str>) -> Issue {
    Issue {
        principal: principal_id(by),
        grantee: agent_id(grantee),
        mission: Mission {
            purpose: "bulk test".into(),
            mission_ref: mission_ref.map(|r| MissionRef::new(r).unwrap()),
        },
        scope: grants(),
        not_after: in_an_hour(),
        depth: 4,
        step_up: vec![],
        supervisors: vec![],
    }
}

fn delegation(parent: MandateId, grantee: &str) -> Delegate {
    Delegate {
        parent,
        grantee: agent_id(grantee),
        scope: grants(),
        not_after: None,
        depth: None,
        step_up: vec![],
        supervisors: vec![],
    }
}

/// Two engines on one server: `a` serves requests over NATS, `b` is opened
/// without its background tasks, so its projection holds only what it
/// catches up itself (a deterministically lagging instance).
struct Pair {
    _server: NatsServer,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    a: Instance,
    b: Engine,
    nc: async_nats::Client,
}

impl Pair {
    async fn start() -> Self {
        let server = NatsServer::start();
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Instance::start(&server.url(), dirs.0.path()).await;
        let nc = async_nats::connect(server.url()).await.unwrap();
        let b = Engine::nats(
            async_nats::connect(server.url()).await.unwrap(),
            dirs.1.path(),
            JetStreamConfig::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let probe = Client::nats(nc.clone(), tenant(), admin()).with_timeout(PATIENCE / 10);
        eventually("instance A answers requests", || {
            let probe = probe.clone();
            async move { probe.health().await.is_ok() }
        })
        .await;
        Self {
            _server: server,
            _dirs: dirs,
            a,
            b,
            nc,
        }
    }

    /// A client served by A over NATS.
    fn on_a(&self, actor: Actor) -> Client {
        Client::nats(self.nc.clone(), tenant(), actor)
    }

    /// A client of the lagging instance B, in process.
    fn on_b(&self, actor: Actor) -> Client {
        Client::local(self.b.clone(), tenant(), actor)
    }

    async fn stop(self) {
        self.a.stop().await;
    }
}

async fn status(c: &Client, m: MandateId) -> Status {
    c.status(m, None).await.expect("status").effective.status
}

// ---------------------------------------------------------------------------
// Bulk commands and mission completion catch up to the log first
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_agent_on_a_lagging_instance_ends_a_delegation_acknowledged_elsewhere() {
    // Given a tree that B has seen, and a delegation to the contractor that
    // only A has acknowledged
    let p = Pair::start().await;
    let root = p
        .on_a(Actor::Principal(principal_id("alice")))
        .issue(root_issue("alice", "lead", None))
        .await
        .unwrap()
        .mandate
        .unwrap();
    p.b.catch_up().await.unwrap();
    let contractor = p
        .on_a(Actor::Agent(agent_id("lead")))
        .delegate(delegation(root, "contractor"))
        .await
        .unwrap()
        .mandate
        .unwrap();
    // When B deprovisions the contractor
    p.on_b(admin())
        .revoke_agent(agent_id("contractor"), None)
        .await
        .unwrap();
    // Then the new mandate is ended, as every instance reads it
    assert_eq!(
        status(&p.on_a(admin()), contractor).await,
        Status::Revoked,
        "the delegation acknowledged on A survived a deprovisioning on B"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_principal_on_a_lagging_instance_ends_a_root_acknowledged_elsewhere() {
    // Given a root that only A has acknowledged
    let p = Pair::start().await;
    let root = p
        .on_a(Actor::Principal(principal_id("alice")))
        .issue(root_issue("alice", "lead", None))
        .await
        .unwrap()
        .mandate
        .unwrap();
    // When B offboards its principal
    p.on_b(admin())
        .revoke_principal(principal_id("alice"), None)
        .await
        .unwrap();
    // Then the root is ended
    assert_eq!(
        status(&p.on_a(admin()), root).await,
        Status::Revoked,
        "the root acknowledged on A survived an offboarding on B"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mission_completion_on_a_lagging_instance_ends_a_tree_acknowledged_elsewhere() {
    // Given a tree for a mission that only A has acknowledged
    let p = Pair::start().await;
    let root = p
        .on_a(Actor::Principal(principal_id("alice")))
        .issue(root_issue("alice", "lead", Some("jira:FIN-42")))
        .await
        .unwrap()
        .mandate
        .unwrap();
    // When B completes the mission
    p.b.complete_mission(
        &tenant(),
        &MissionRef::new("jira:FIN-42").unwrap(),
        admin(),
        None,
    )
    .await
    .unwrap();
    // Then the tree is completed
    assert_eq!(
        status(&p.on_a(admin()), root).await,
        Status::Completed,
        "the tree acknowledged on A survived a mission completion on B"
    );
    p.stop().await;
}
