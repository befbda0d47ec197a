//! Bulk revokes and tenant-level blocks, against a real `nats-server` and
//! real engine instances:
//! - a bulk revoke or a mission completion on a lagging instance ends a
//!   mandate another instance acknowledged a moment earlier;
//! - a deprovisioned agent or offboarded principal stays blocked on every
//!   instance until an administrator lifts the block, also when a grant
//!   races the block.

mod common;

use chrono::Utc;
use common::cli::{cfo_issues, mandate, text};
use common::fixtures::*;
use common::served::Instance;
use common::wire::{connect, effective, open_engine, serve_one};
use common::NatsServer;
use mandate::client::{Client, ClientError};
use mandate::domain::command::Delegate;

use mandate::domain::{
    delegated_id, Actor, Command, CommandEnvelope, ErrorCode, MandateId, MissionRef, Status, TreeId,
};
use mandate::engine::Engine;
use mandate::log::EventLog;
use mandate::protocol::CommandResult;

/// What every mandate of these tests grants.
const GRANTS: &[&str] = &["tickets:* on queue/**"];

fn admin() -> Actor {
    common::fixtures::admin("it-admin")
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
        let (server, dir_a, a, nc) = serve_one("acme").await;
        let dir_b = tempfile::tempdir().unwrap();
        let b = open_engine(connect(&server).await, dir_b.path()).await;
        Self {
            _server: server,
            _dirs: (dir_a, dir_b),
            a,
            b,
            nc,
        }
    }

    /// A pair, and a root that `by` grants the lead through A, optionally
    /// for the mission `mission_ref`.
    async fn with_root(by: &str, mission_ref: Option<&str>) -> (Self, MandateId) {
        let p = Self::start().await;
        let root = p.root(by, mission_ref).await;
        (p, root)
    }

    /// A root that `by` grants the lead through A, optionally for the
    /// mission `mission_ref`.
    async fn root(&self, by: &str, mission_ref: Option<&str>) -> MandateId {
        self.on_a(principal(by))
            .issue(root_issue(by, "lead", mission_ref, GRANTS))
            .await
            .unwrap()
            .mandate
            .unwrap()
    }

    /// A client served by A over NATS.
    fn on_a(&self, actor: Actor) -> Client {
        Client::nats(self.nc.clone(), acme(), actor)
    }

    /// The lead, served by A.
    fn a_lead(&self) -> Client {
        self.on_a(agent("lead"))
    }

    /// The lead, on the lagging instance B.
    fn b_lead(&self) -> Client {
        self.on_b(agent("lead"))
    }

    /// The administrator, served by A.
    fn a_admin(&self) -> Client {
        self.on_a(admin())
    }

    /// The administrator, on the lagging instance B.
    fn b_admin(&self) -> Client {
        self.on_b(admin())
    }

    /// A client of the lagging instance B, in process.
    fn on_b(&self, actor: Actor) -> Client {
        Client::local(self.b.clone(), acme(), actor)
    }

    /// Asserts that A reads `m` as `status` (effective), saying `why` not.
    async fn assert_reads(&self, m: MandateId, status: Status, why: &str) {
        assert_eq!(effective(&self.a_admin(), m).await, status, "{why}");
    }

    async fn stop(self) {
        self.a.stop().await;
    }

    /// Asserts the bulk command `done` (sent to the lagging B) succeeded and
    /// that A then reads `m` as `status`, saying `why` not; stops the pair.
    async fn finish(
        self,
        done: Result<CommandResult, ClientError>,
        m: MandateId,
        status: Status,
        why: &str,
    ) {
        done.expect("the bulk command on B succeeds");
        self.assert_reads(m, status, why).await;
        self.stop().await;
    }
}

/// Deprovisions agent `who` through `admin`, which must succeed.
async fn deprovision(admin: &Client, who: &str, reason: Option<&str>) {
    let done = admin.revoke_agent(agent_id(who), reason.map(Into::into));
    done.await.expect("the deprovisioning succeeds");
}

/// Offboards principal `who` through `admin`, which must succeed.
async fn offboard(admin: &Client, who: &str, reason: Option<&str>) {
    let done = admin.revoke_principal(principal_id(who), reason.map(Into::into));
    done.await.expect("the offboarding succeeds");
}

/// A delegation of [`GRANTS`] under `root` to `grantee`.
fn grant(root: MandateId, grantee: &str) -> Delegate {
    delegation(root, grantee, GRANTS)
}

/// The lead's delegation under `root` to `grantee`, as a command whose id
/// the test knows.
fn lead_grants(root: MandateId, grantee: &str) -> CommandEnvelope {
    envelope(
        "acme",
        agent("lead"),
        Command::Delegate(grant(root, grantee)),
    )
}

/// A block on `who` alone, without the sweep a `revoke_agent` runs.
fn bare_block(who: &str) -> CommandEnvelope {
    envelope(
        "acme",
        admin(),
        Command::BlockAgent(mandate::domain::command::AgentBlock {
            agent: agent_id(who),
            reason: None,
        }),
    )
}

/// The mandate `grant` (a delegation under `root`) writes, by its id.
fn delegated(root: MandateId, grant: &CommandEnvelope) -> MandateId {
    delegated_id(&acme(), TreeId(root.0), grant.command_id)
}

// ---------------------------------------------------------------------------
// Bulk commands and mission completion catch up to the log first
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_agent_on_a_lagging_instance_ends_a_delegation_acknowledged_elsewhere() {
    // Given a tree that B has seen, and a delegation to the contractor that
    // only A has acknowledged
    let (p, root) = Pair::with_root("alice", None).await;
    p.b.catch_up().await.unwrap();
    let contractor = p
        .a_lead()
        .delegate(grant(root, "contractor"))
        .await
        .unwrap()
        .mandate
        .unwrap();
    // When B deprovisions the contractor
    let done = p.b_admin().revoke_agent(agent_id("contractor"), None).await;
    // Then the new mandate is ended, as every instance reads it
    let why = "the delegation acknowledged on A survived a deprovisioning on B";
    p.finish(done, contractor, Status::Revoked, why).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_principal_on_a_lagging_instance_ends_a_root_acknowledged_elsewhere() {
    // Given a root that only A has acknowledged
    let (p, root) = Pair::with_root("alice", None).await;
    // When B offboards its principal
    let admin = p.b_admin();
    let done = admin.revoke_principal(principal_id("alice"), None).await;
    // Then the root is ended
    let why = "the root acknowledged on A survived an offboarding on B";
    p.finish(done, root, Status::Revoked, why).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mission_completion_on_a_lagging_instance_ends_a_tree_acknowledged_elsewhere() {
    // Given a tree for a mission that only A has acknowledged
    let (p, root) = Pair::with_root("alice", Some("jira:FIN-42")).await;
    // When B completes the mission
    let mission = MissionRef::new("jira:FIN-42").unwrap();
    let done = p.b_admin().complete_mission(mission).await;
    // Then the tree is completed
    let why = "the tree acknowledged on A survived a mission completion on B";
    p.finish(done, root, Status::Completed, why).await;
}

// ---------------------------------------------------------------------------
// Deprovisioning and offboarding last
// ---------------------------------------------------------------------------

/// Asserts a refusal with code `forbidden` whose message names `who`.
fn assert_blocked(result: Result<CommandResult, ClientError>, who: &str) {
    let err = result.expect_err("a grant involving a blocked agent or principal was accepted");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(
        err.to_string().contains(who) && err.to_string().contains("blocked"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprovisioned_agent_receives_no_mandate_a_moment_later_on_any_instance() {
    // Given a root, and the contractor deprovisioned on instance B
    let (p, root) = Pair::with_root("alice", None).await;
    deprovision(&p.b_admin(), "contractor", Some("contract ended")).await;
    // When the lead delegates to the contractor again, through A
    let again = p.a_lead().delegate(grant(root, "contractor")).await;
    // Then it is refused, naming the agent
    assert_blocked(again, "contractor");
    // And a new root for the contractor is refused as well
    assert_blocked(
        p.on_a(principal("alice"))
            .issue(root_issue("alice", "contractor", None, GRANTS))
            .await,
        "contractor",
    );
    // And the lagging instance, which never ran its follower, refuses too
    assert_blocked(
        p.b_lead().delegate(grant(root, "contractor")).await,
        "contractor",
    );
    // While other agents still receive mandates
    p.a_lead()
        .delegate(grant(root, "employee"))
        .await
        .expect("an unblocked agent receives a mandate");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offboarded_principal_grants_no_root_a_moment_later_on_any_instance() {
    // Given alice offboarded on instance A
    let p = Pair::start().await;
    offboard(&p.a_admin(), "alice", Some("left the company")).await;
    // When she (or an administrator for her) issues a root, on B
    for actor in [principal("alice"), admin()] {
        let again = p
            .on_b(actor)
            .issue(root_issue("alice", "lead", None, GRANTS))
            .await;
        // Then it is refused, naming her
        assert_blocked(again, "alice");
    }
    // And bob is not affected
    p.on_b(principal("bob"))
        .issue(root_issue("bob", "lead", None, GRANTS))
        .await
        .expect("another principal still grants");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_racing_a_deprovisioning_never_survives_it() {
    // Given a root held by the lead
    let (p, root) = Pair::with_root("alice", None).await;
    p.b.catch_up().await.unwrap();
    let reader = p.a_admin();
    for round in 0..12 {
        let temp = format!("temp-{round}");
        // When the lead delegates to an agent on A while B deprovisions it
        let grant = lead_grants(root, &temp);
        let lead = p.a_lead();
        let b_admin = p.b_admin();
        let (granted, bulk) = tokio::join!(
            lead.send(&grant),
            b_admin.revoke_agent(agent_id(&temp), None)
        );
        bulk.expect("the deprovisioning succeeds");
        // Then whichever came first, the agent holds nothing live: either
        // the grant was refused before it was written, or the mandate it
        // wrote is ended (by the sweep, or by the grant's own re-check)
        let mandate = delegated(root, &grant);
        match reader.status(mandate, None).await {
            Ok(s) => assert!(
                s.effective.status.is_terminal(),
                "round {round}: the racing delegation to {temp} is {:?} after the deprovisioning (grant answered {granted:?})",
                s.effective.status
            ),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::NotFound), "round {round}: {e}");
                assert!(granted.is_err(), "round {round}: granted but not found");
            }
        }
        if let Err(e) = &granted {
            assert_eq!(e.code(), Some(ErrorCode::Forbidden), "round {round}: {e}");
        }
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_administrator_lifts_a_block_and_then_grants_succeed_again() {
    // Given the contractor deprovisioned and alice offboarded
    let (p, root) = Pair::with_root("carol", None).await;
    deprovision(&p.b_admin(), "contractor", None).await;
    offboard(&p.a_admin(), "alice", None).await;
    // When anyone but an administrator tries to lift them, it is refused
    for actor in [principal("carol"), agent("contractor")] {
        let err = p
            .on_a(actor.clone())
            .unblock_agent(agent_id("contractor"), None)
            .await
            .expect_err("a non-administrator lifted a block");
        assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    }
    let err = p
        .on_a(principal("alice"))
        .unblock_principal(principal_id("alice"), None)
        .await
        .expect_err("a principal lifted its own block");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert_blocked(
        p.b_lead().delegate(grant(root, "contractor")).await,
        "contractor",
    );
    // When an administrator lifts them on A
    p.a_admin()
        .unblock_agent(agent_id("contractor"), Some("rehired".into()))
        .await
        .unwrap();
    p.a_admin()
        .unblock_principal(principal_id("alice"), None)
        .await
        .unwrap();
    // Then the lagging instance B grants again
    p.b_lead()
        .delegate(grant(root, "contractor"))
        .await
        .expect("a delegation to the rehired contractor");
    p.on_b(principal("alice"))
        .issue(root_issue("alice", "lead", None, GRANTS))
        .await
        .expect("a root of the returning principal");
    // And a block that is not in place cannot be lifted
    let err = p
        .a_admin()
        .unblock_agent(agent_id("contractor"), None)
        .await
        .expect_err("lifted a block that was not in place");
    assert_eq!(err.code(), Some(ErrorCode::InvalidState), "{err}");
    // And the registry is part of the projection a rebuild reproduces
    assert!(
        p.b.rebuild_check().await.unwrap().equal,
        "B differs from a rebuild"
    );
    assert!(
        p.a.engine.rebuild_check().await.unwrap().equal,
        "A differs from a rebuild"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_reads_a_block_after_its_append_ends_its_mandate_and_is_refused() {
    // Given a delegation written before any block, and then a block on its
    // grantee written without a sweep (a bare `block_agent`)
    let (p, root) = Pair::with_root("alice", None).await;
    let grant = lead_grants(root, "contractor");
    let lead = p.a_lead();
    lead.send(&grant).await.unwrap();
    let mandate = delegated(root, &grant);
    p.b_admin().send(&bare_block("contractor")).await.unwrap();
    assert_eq!(effective(&p.a_admin(), mandate).await, Status::Active);
    // When the grant is retried (its answer lost), so that its append is
    // already in the log and the block is found only after it
    let retried = lead.send(&grant).await;
    // Then the mandate is revoked on the administrator's authority, and the
    // grant is refused
    assert_blocked(retried, "contractor");
    let reader = p.a_admin();
    assert_eq!(effective(&reader, mandate).await, Status::Revoked);
    let s = reader.status(mandate, None).await.unwrap();
    assert_eq!(
        s.mandate.transition().map(|t| t.by.clone()),
        Some(admin()),
        "revoked on the blocking administrator's authority"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_writer_died_before_its_recheck_is_ended_by_every_follower() {
    // Given a root, and a bare block on the contractor written on A
    let (p, root) = Pair::with_root("alice", None).await;
    p.a_admin().send(&bare_block("contractor")).await.unwrap();
    // When a writer that read no block appends a delegation to the
    // contractor and dies before it reads the registry again
    p.b.catch_up().await.unwrap();
    let tree = TreeId(root.0);
    let snap = p.b.store().tree(&acme(), tree).unwrap().unwrap();
    let grant = lead_grants(root, "contractor");
    let events = mandate::domain::decide(
        &snap.tree,
        &grant,
        &mandate::domain::Facts::default(),
        Utc::now(),
    )
    .unwrap();
    p.b.log()
        .append(
            &acme(),
            tree,
            snap.position,
            grant.command_id,
            mandate::domain::Event::encode_commit(&events).into(),
        )
        .await
        .unwrap();
    // Then the instances that follow the log end the new mandate
    let mandate = delegated(root, &grant);
    let reader = p.a_admin();
    eventually(
        "the orphaned delegation to a blocked agent is revoked",
        || {
            let reader = reader.clone();
            async move {
                reader
                    .status(mandate, None)
                    .await
                    .map(|s| s.effective.status == Status::Revoked)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    p.stop().await;
}

// ---------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------

#[test]
fn the_cli_lifts_a_block_that_revoke_agent_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let grant = "finance:read on reports/**";
    let issue_to_contractor =
        || cfo_issues(d, false, "contractor", "audit", grant, &["--ttl", "1h"]);
    let revoked = mandate(d, &["--actor", "admin:it", "revoke-agent", "contractor"]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    // Refused by the rules while blocked: exit code 5, naming the agent.
    let refused = issue_to_contractor();
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(text(&refused).contains("contractor"), "{}", text(&refused));
    // Only an administrator lifts it.
    let not_admin = mandate(
        d,
        &["--actor", "principal:cfo", "unblock-agent", "contractor"],
    );
    assert_eq!(not_admin.status.code(), Some(5), "{}", text(&not_admin));
    let lifted = mandate(d, &["--actor", "admin:it", "unblock-agent", "contractor"]);
    assert!(lifted.status.success(), "{}", text(&lifted));
    let issued = issue_to_contractor();
    assert!(issued.status.success(), "{}", text(&issued));
    // The same for a principal.
    let offboarded = mandate(d, &["--actor", "admin:it", "revoke-principal", "cfo"]);
    assert!(offboarded.status.success(), "{}", text(&offboarded));
    assert_eq!(issue_to_contractor().status.code(), Some(5));
    let lifted = mandate(d, &["--actor", "admin:it", "unblock-principal", "cfo"]);
    assert!(lifted.status.success(), "{}", text(&lifted));
    assert!(issue_to_contractor().status.success());
}
