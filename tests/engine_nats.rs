//! The engine against a real nats-server: every test starts its own server
//! (see `common`), one or more engine instances serving over NATS, each with
//! its own data directory, and talks to them through `Client::nats` or raw
//! NATS, exactly as users and ticketing systems do.
//!
//! - the ghost-execution story: a ticket closes, the whole tree is completed,
//!   guards are told, and the mission cannot be reopened by a new root; a
//!   refused completion leaves the mission open;
//! - a completion published while the engine is down is applied at restart;
//! - pause and resume cascade, and a descendant paused on its own stays so;
//! - expiry while the engine is down is written at restart; two instances
//!   write it once;
//! - two instances under concurrent conflicting commands: every acknowledged
//!   command is in the log exactly once, and both projections equal a rebuild;
//!   a command sees what an earlier acknowledged one did, whichever instance
//!   serves each;
//! - bulk revoke by agent and by principal across many trees;
//! - checks `at` a past moment;
//! - tenant isolation;
//! - bad input over the wire is refused, typed, and changes nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::served::Instance;
use common::NatsServer;
use futures::StreamExt;
use mandate::client::{Client, ClientError};
use mandate::domain::command::{Change, Delegate, Issue, Narrow};
use mandate::domain::{
    Actor, AgentId, Command, CommandEnvelope, CommandId, Decision, DenyReason, ErrorCode,
    EventBody, MandateId, Mission, MissionRef, Outcome, PrincipalId, Scope, Status, TenantId,
    TreeId, SCHEMA_VERSION,
};
use mandate::engine::{Engine, EngineConfig};
use mandate::log::{EventLog, JetStreamConfig};
use mandate::protocol::{
    command_subject, mission_subject, query_subject, signal_subject, Reply, Signal, SignalKind,
    TreeQuery,
};
use serde_json::{json, Value};

/// How long anything asynchronous may take before a test gives up.
const PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

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

async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url()).await.expect("connect")
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}
fn agent_id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}
fn principal_id(s: &str) -> PrincipalId {
    PrincipalId::new(s).unwrap()
}
fn agent(s: &str) -> Actor {
    Actor::Agent(agent_id(s))
}
fn principal(s: &str) -> Actor {
    Actor::Principal(principal_id(s))
}
fn scope(grants: &[&str]) -> Scope {
    Scope::parse(grants.iter().copied()).unwrap()
}

/// A client of `tenant` acting as `actor` over `nc`.
fn client(nc: &async_nats::Client, t: &str, actor: Actor) -> Client {
    Client::nats(nc.clone(), tenant(t), actor)
}

/// Waits until some instance answers on the tenant's subjects.
async fn serving(nc: &async_nats::Client, t: &str) {
    let c = client(nc, t, principal("probe")).with_timeout(Duration::from_millis(500));
    eventually("an engine answers requests", || {
        let c = c.clone();
        async move { c.health().await.is_ok() }
    })
    .await;
}

/// Waits until each of `instances` has answered a request through the queue
/// group, so that all of them really serve.
async fn all_serving(nc: &async_nats::Client, t: &str, instances: &[&Instance]) {
    let want: BTreeSet<String> = instances
        .iter()
        .map(|i| i.engine.instance().to_string())
        .collect();
    let c = client(nc, t, principal("probe")).with_timeout(Duration::from_millis(500));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    eventually("every instance answers through the queue group", || {
        let (c, seen, want) = (c.clone(), seen.clone(), want.clone());
        async move {
            if let Ok(h) = c.health().await {
                seen.lock().unwrap().insert(h.instance);
            }
            *seen.lock().unwrap() == want
        }
    })
    .await;
}

fn root_issue(
    by: &str,
    grantee: &str,
    mission_ref: Option<&str>,
    grants: &[&str],
    not_after: DateTime<Utc>,
) -> Issue {
    Issue {
        principal: principal_id(by),
        grantee: agent_id(grantee),
        mission: Mission {
            purpose: "integration test".into(),
            mission_ref: mission_ref.map(|r| MissionRef::new(r).unwrap()),
        },
        scope: scope(grants),
        not_after,
        depth: 4,
        step_up: vec![],
        supervisors: vec![],
    }
}

fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

/// Issues a root as `by` and returns its id.
async fn issue(nc: &async_nats::Client, t: &str, i: Issue) -> MandateId {
    let by = i.principal.clone();
    client(nc, t, Actor::Principal(by))
        .issue(i)
        .await
        .expect("issue")
        .mandate
        .expect("an issue names its mandate")
}

/// Delegates `parent` (held by `holder`) to `grantee`; returns the new id.
async fn delegate(
    nc: &async_nats::Client,
    t: &str,
    holder: &str,
    parent: MandateId,
    grantee: &str,
    grants: &[&str],
) -> MandateId {
    client(nc, t, agent(holder))
        .delegate(Delegate {
            parent,
            grantee: agent_id(grantee),
            scope: scope(grants),
            not_after: None,
            depth: None,
            step_up: vec![],
            supervisors: vec![],
        })
        .await
        .expect("delegate")
        .mandate
        .expect("a delegation names its mandate")
}

async fn effective(c: &Client, m: MandateId) -> Status {
    c.status(m, None).await.expect("status").effective.status
}

async fn own(c: &Client, m: MandateId) -> Status {
    c.status(m, None).await.expect("status").mandate.status
}

fn assert_denied_as(d: &Decision, status: Status) {
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    match &d.reason {
        Some(DenyReason::NotActive { status: s, .. }) => assert_eq!(*s, status, "{d:?}"),
        other => panic!("expected a deny as {status}, got {other:?}"),
    }
}

fn code_of(e: &ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected an engine error, got {e:?}"))
}

/// Sends raw bytes to a subject and returns the reply's JSON.
async fn raw(nc: &async_nats::Client, subject: String, body: Vec<u8>) -> Value {
    let msg = tokio::time::timeout(PATIENCE, nc.request(subject.clone(), body.into()))
        .await
        .unwrap_or_else(|_| panic!("no reply on {subject} in time"))
        .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("reply on {subject} is not JSON ({e}): {:?}", msg.payload))
}

/// Asserts a raw reply to `what` is `{"ok":false,"error":{"code":<code>,..}}`
/// whose message contains every one of `mentions`; returns the message.
fn assert_refused(what: &str, reply: &Value, code: &str, mentions: &[&str]) -> String {
    assert_eq!(reply["ok"], json!(false), "{what}: {reply}");
    assert!(reply.get("result").is_none(), "{what}: {reply}");
    assert_eq!(reply["error"]["code"], json!(code), "{what}: {reply}");
    let message = reply["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message in {reply}"))
        .to_string();
    for m in mentions {
        assert!(
            message.contains(m),
            "{what}: message {message:?} should mention {m:?}"
        );
    }
    message
}

fn envelope(t: &str, actor: Actor, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: tenant(t),
        actor,
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command,
    }
}

/// Every command id in the log with how many records carry it.
async fn commits_per_command(engine: &Engine) -> HashMap<CommandId, usize> {
    let records = engine.log().read_all(None, 0, 100_000).await.unwrap();
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry(r.command_id).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------
// 1. The ghost-execution story
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_ticket_ends_the_whole_tree_and_tells_its_guards() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    let root = issue(
        &nc,
        "acme",
        root_issue(
            "cfo",
            "planner",
            Some("jira:FIN-42"),
            &["finance:read on reports/**", "finance:write on drafts/**"],
            in_an_hour(),
        ),
    )
    .await;
    let child = delegate(
        &nc,
        "acme",
        "planner",
        root,
        "analyst",
        &["finance:read on reports/**"],
    )
    .await;
    let grandchild = delegate(
        &nc,
        "acme",
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
    let js = async_nats::jetstream::new(connect(&server).await);
    js.publish(
        mission_subject(&tenant("acme"), &MissionRef::new("jira:FIN-42").unwrap()),
        r#"{"source":"https://jira.example/browse/FIN-42"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .expect("the mission stream stores the completion");

    eventually("the root is completed", || {
        let cfo = cfo.clone();
        async move { effective(&cfo, root).await == Status::Completed }
    })
    .await;
    let root_status = cfo.status(root, None).await.unwrap();
    assert_eq!(root_status.mandate.status, Status::Completed);
    for m in [child, grandchild] {
        let s = cfo.status(m, None).await.unwrap();
        assert_eq!(s.effective.status, Status::Completed, "{m}");
        assert_eq!(
            s.effective.cause.as_ref().map(|c| c.mandate),
            Some(root),
            "the cause names the root: {s:?}"
        );
        // Only the root's own status changed: the cascade is computed.
        assert_eq!(s.mandate.status, Status::Active);
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
    let err = cfo
        .issue(root_issue(
            "cfo",
            "planner",
            Some("jira:FIN-42"),
            &["finance:read on reports/**"],
            in_an_hour(),
        ))
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::InvalidState, "{err}");
    assert!(err.to_string().contains("jira:FIN-42"), "{err}");
    cfo.issue(root_issue(
        "cfo",
        "planner",
        Some("jira:FIN-43"),
        &["finance:read on reports/**"],
        in_an_hour(),
    ))
    .await
    .expect("another mission is still open");
    instance.stop().await;
}

/// A `complete_mission` that is refused must not leave the mission marked as
/// completed behind it (refused commands change nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mission_completion_changes_nothing() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "cfo",
            "planner",
            Some("jira:FIN-77"),
            &["finance:read on reports/**"],
            in_an_hour(),
        ),
    )
    .await;
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
    cfo.issue(root_issue(
        "cfo",
        "reviewer",
        Some("jira:FIN-77"),
        &["finance:read on reports/**"],
        in_an_hour(),
    ))
    .await
    .expect("a refused completion leaves the mission open");
    instance.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Completion while the engine is down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_sent_while_the_engine_is_down_is_applied_when_it_returns() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;
    let first = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "ops-lead",
            "deployer",
            Some("chg:CHG-1001"),
            &["deploy:* on services/**"],
            in_an_hour(),
        ),
    )
    .await;
    let child = delegate(
        &nc,
        "acme",
        "deployer",
        root,
        "canary",
        &["deploy:run on services/web/*"],
    )
    .await;
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
    let js = async_nats::jetstream::new(nc.clone());
    js.publish(
        mission_subject(&tenant("acme"), &MissionRef::new("chg:CHG-1001").unwrap()),
        "".into(),
    )
    .await
    .unwrap()
    .await
    .expect("stored while the engine is down");

    let second = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    eventually("the completion sent while down is applied", || {
        let lead = lead.clone();
        async move { effective(&lead, child).await == Status::Completed }
    })
    .await;
    assert_eq!(own(&lead, root).await, Status::Completed);
    let history = lead
        .history(TreeQuery {
            tree: None,
            mandate: Some(root),
            at: None,
        })
        .await
        .unwrap();
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
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let grants = ["crm:read on accounts/**"];
    let root = issue(
        &nc,
        "acme",
        root_issue("sales-vp", "a0", None, &grants, in_an_hour()),
    )
    .await;
    let child = delegate(&nc, "acme", "a0", root, "a1", &grants).await;
    let grandchild = delegate(&nc, "acme", "a1", child, "a2", &grants).await;
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
    assert_eq!(s.mandate.status, Status::Paused);
    assert_eq!(s.effective.status, Status::Paused);
    assert_eq!(s.effective.cause.map(|c| c.mandate), Some(grandchild));
    assert_denied_as(&check(grandchild).await, Status::Paused);

    // And its own resume brings it back.
    vp.resume(grandchild, None).await.unwrap();
    assert!(check(grandchild).await.is_allowed());
    instance.stop().await;
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
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;
    let first = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    let not_after = Utc::now() + chrono::Duration::milliseconds(1500);
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "hr",
            "onboarder",
            None,
            &["hr:read on people/**"],
            not_after,
        ),
    )
    .await;
    let hr = client(&nc, "acme", principal("hr"));
    assert_eq!(own(&hr, root).await, Status::Active);
    first.stop().await;

    let wait = (not_after - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;

    let restarted_at = Utc::now();
    let second = Instance::start(&server.url(), dir.path()).await;
    serving(&nc, "acme").await;
    eventually("the expiry is written after the restart", || {
        let hr = hr.clone();
        async move { own(&hr, root).await == Status::Expired }
    })
    .await;
    let s = hr.status(root, None).await.unwrap();
    let transition = s
        .mandate
        .transition
        .expect("an expired mandate has a transition");
    assert_eq!(transition.by, Actor::expiry());
    assert_eq!(s.effective.cause.and_then(|c| c.by), Some(Actor::expiry()));
    let history = hr
        .history(TreeQuery {
            tree: None,
            mandate: Some(root),
            at: None,
        })
        .await
        .unwrap();
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
    let server = NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dir_a.path()).await;
    let b = Instance::start(&server.url(), dir_b.path()).await;
    let nc = connect(&server).await;
    all_serving(&nc, "acme", &[&a, &b]).await;

    // Several trees, all due at the same moment, each with a child due with it.
    let not_after = Utc::now() + chrono::Duration::milliseconds(1500);
    let mut roots = Vec::new();
    let mut children = Vec::new();
    for i in 0..5 {
        let root = issue(
            &nc,
            "acme",
            root_issue(
                "sec",
                &format!("scanner-{i}"),
                None,
                &["scan:run on hosts/**"],
                not_after,
            ),
        )
        .await;
        children.push(
            delegate(
                &nc,
                "acme",
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
        "acme",
        root_issue(
            "sec",
            "auditor",
            None,
            &["scan:run on hosts/**"],
            in_an_hour(),
        ),
    )
    .await;
    let orphan = client(&nc, "acme", agent("auditor"))
        .delegate(Delegate {
            parent: long_root,
            grantee: agent_id("temp-auditor"),
            scope: scope(&["scan:run on hosts/**"]),
            not_after: Some(not_after),
            depth: None,
            step_up: vec![],
            supervisors: vec![],
        })
        .await
        .unwrap()
        .mandate
        .unwrap();
    sec.revoke(long_root, None).await.unwrap();
    let wait = (not_after - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
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
            assert_eq!(s.mandate.status, Status::Expired);
        }
        for child in &children {
            let s = inst.engine.status(&t, *child, None).await.unwrap();
            assert_eq!(s.effective.status, Status::Expired);
        }
    }
    eventually("no expiry is pending on either instance", || async {
        a.engine.store().next_expiry().unwrap().is_none()
            && b.engine.store().next_expiry().unwrap().is_none()
    })
    .await;

    let counts = commits_per_command(&a.engine).await;
    for (root, child) in roots.iter().zip(&children) {
        let history = sec
            .history(TreeQuery {
                tree: Some(TreeId(root.0)),
                mandate: None,
                at: None,
            })
            .await
            .unwrap();
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
    let history = sec
        .history(TreeQuery {
            tree: Some(TreeId(long_root.0)),
            mandate: None,
            at: None,
        })
        .await
        .unwrap();
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

// ---------------------------------------------------------------------------
// 5. Two instances, concurrent conflicting commands
// ---------------------------------------------------------------------------

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default)]
struct Ledger {
    /// Per tree: (mandate, its grantee); index 0 is the root.
    trees: Vec<Vec<(MandateId, String)>>,
    acknowledged: BTreeSet<CommandId>,
    refused: BTreeMap<CommandId, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_apply_every_acknowledged_command_exactly_once() {
    let server = NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dir_a.path()).await;
    let b = Instance::start(&server.url(), dir_b.path()).await;
    let nc = connect(&server).await;
    all_serving(&nc, "acme", &[&a, &b]).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let wide = ["ops:* on systems/**"];
    for i in 0..3 {
        let lead = format!("lead-{i}");
        let c = client(&nc, "acme", principal("boss"));
        let r = c
            .issue(root_issue("boss", &lead, None, &wide, in_an_hour()))
            .await
            .unwrap();
        let root = r.mandate.unwrap();
        let helper = format!("helper-{i}");
        let d = client(&nc, "acme", agent(&lead))
            .delegate(Delegate {
                parent: root,
                grantee: agent_id(&helper),
                scope: scope(&wide),
                not_after: None,
                depth: None,
                step_up: vec![],
                supervisors: vec![],
            })
            .await
            .unwrap();
        let mut l = ledger.lock().unwrap();
        l.acknowledged.insert(r.command_id);
        l.acknowledged.insert(d.command_id);
        l.trees
            .push(vec![(root, lead), (d.mandate.unwrap(), helper)]);
    }

    let narrower = [
        "ops:* on systems/**",
        "ops:read on systems/**",
        "ops:read on systems/db/**",
    ];
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let ledger = ledger.clone();
        // Each task on its own connection, as separate orchestrators would be.
        let nc = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task + 1).wrapping_mul(0x2545_F491));
            for step in 0..25 {
                let (target, holder, tree) = {
                    let l = ledger.lock().unwrap();
                    let tree = rng.below(l.trees.len());
                    let (m, g) = l.trees[tree][rng.below(l.trees[tree].len())].clone();
                    (m, g, tree)
                };
                let boss = principal("boss");
                let (actor, command, delegated_to) = match rng.below(6) {
                    0 => (
                        boss,
                        Command::Pause(Change {
                            mandate: target,
                            reason: None,
                        }),
                        None,
                    ),
                    1 => (
                        boss,
                        Command::Resume(Change {
                            mandate: target,
                            reason: None,
                        }),
                        None,
                    ),
                    2 => (
                        boss,
                        Command::Narrow(Narrow {
                            mandate: target,
                            scope: scope(&[narrower[rng.below(narrower.len())]]),
                        }),
                        None,
                    ),
                    3 | 4 => {
                        let grantee = format!("w-{task}-{step}");
                        (
                            agent(&holder),
                            Command::Delegate(Delegate {
                                parent: target,
                                grantee: agent_id(&grantee),
                                scope: scope(&["ops:read on systems/db/**"]),
                                not_after: None,
                                depth: None,
                                step_up: vec![],
                                supervisors: vec![],
                            }),
                            Some(grantee),
                        )
                    }
                    _ => {
                        // Revoke below the root, so the trees stay contested.
                        let l = ledger.lock().unwrap();
                        let below = &l.trees[tree][1..];
                        let (m, _) = below[rng.below(below.len())].clone();
                        (
                            boss,
                            Command::Revoke(Change {
                                mandate: m,
                                reason: None,
                            }),
                            None,
                        )
                    }
                };
                let env = envelope("acme", actor.clone(), command);
                let c = Client::nats(nc.clone(), tenant("acme"), actor);
                match c.send(&env).await {
                    Ok(r) => {
                        assert_eq!(r.command_id, env.command_id);
                        let mut l = ledger.lock().unwrap();
                        l.acknowledged.insert(env.command_id);
                        if let (Some(g), Some(m)) = (delegated_to, r.mandate) {
                            l.trees[tree].push((m, g));
                        }
                    }
                    Err(ClientError::Engine(e)) => {
                        assert!(
                            matches!(
                                e.code,
                                ErrorCode::InvalidState
                                    | ErrorCode::Terminal
                                    | ErrorCode::InvalidInput
                                    | ErrorCode::Widens
                                    | ErrorCode::Conflict
                            ),
                            "unexpected refusal of {}: {e:?}",
                            env.command.verb()
                        );
                        ledger
                            .lock()
                            .unwrap()
                            .refused
                            .insert(env.command_id, e.message);
                    }
                    Err(other) => panic!("{} failed: {other:?}", env.command.verb()),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client task panicked");
    }

    let (acknowledged, refused) = {
        let l = ledger.lock().unwrap();
        (l.acknowledged.clone(), l.refused.clone())
    };
    assert!(
        acknowledged.len() > 40,
        "too few commands went through: {}",
        acknowledged.len()
    );
    assert!(!refused.is_empty(), "the commands did not conflict at all");

    let counts = commits_per_command(&a.engine).await;
    for id in &acknowledged {
        assert_eq!(counts.get(id), Some(&1), "acknowledged command {id}");
    }
    for (id, why) in &refused {
        assert_eq!(
            counts.get(id),
            None,
            "refused command {id} ({why}) is in the log"
        );
    }
    let unknown: Vec<_> = counts
        .keys()
        .filter(|id| !acknowledged.contains(id))
        .collect();
    assert!(
        unknown.is_empty(),
        "records of commands nobody acknowledged: {unknown:?}"
    );

    a.caught_up().await;
    b.caught_up().await;
    for inst in [&a, &b] {
        let report = inst.engine.rebuild_check().await.unwrap();
        assert_eq!(report.records as usize, counts.values().sum::<usize>());
        assert!(
            report.equal,
            "{} differs from a rebuild",
            inst.engine.instance()
        );
    }
    assert_eq!(
        a.engine.store().dump().unwrap(),
        b.engine.store().dump().unwrap(),
        "the two instances' projections differ"
    );
    a.stop().await;
    b.stop().await;
}

/// With several instances in the queue group, a client's next request may
/// be served by an instance other than the one that acknowledged its last
/// command: it must still see that command (no "not found" for a mandate it
/// was just given, no "not paused" right after its pause was acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sees_what_an_earlier_acknowledged_command_did_on_any_instance() {
    let server = NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dir_a.path()).await;
    let b = Instance::start(&server.url(), dir_b.path()).await;
    let nc = connect(&server).await;
    all_serving(&nc, "acme", &[&a, &b]).await;
    let boss = client(&nc, "acme", principal("boss"));
    let grants = ["ops:read on systems/**"];
    for i in 0..20 {
        let lead = format!("lead-{i}");
        let root = issue(
            &nc,
            "acme",
            root_issue("boss", &lead, None, &grants, in_an_hour()),
        )
        .await;
        let child = delegate(&nc, "acme", &lead, root, &format!("helper-{i}"), &grants).await;
        boss.pause(child, None)
            .await
            .unwrap_or_else(|e| panic!("pause right after the delegation: {e:?}"));
        boss.resume(child, None)
            .await
            .unwrap_or_else(|e| panic!("resume right after the pause: {e:?}"));
        boss.revoke(child, None)
            .await
            .unwrap_or_else(|e| panic!("revoke right after the resume: {e:?}"));
    }
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Bulk revoke
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_revoke_by_agent_and_by_principal_across_many_trees() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
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
        let root = issue(
            &nc,
            "acme",
            root_issue(principal, &lead, None, &grants, in_an_hour()),
        )
        .await;
        let employee = delegate(&nc, "acme", &lead, root, &format!("employee-{i}"), &grants).await;
        // Every other tree also employs the shared contractor, some of whom
        // delegate further.
        let contractor = if i % 2 == 0 {
            let c = delegate(&nc, "acme", &lead, root, "contractor", &grants).await;
            let sub = if i % 4 == 0 {
                Some(delegate(&nc, "acme", "contractor", c, &format!("sub-{i}"), &grants).await)
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
                .history(TreeQuery {
                    tree: Some(TreeId(root.0)),
                    mandate: None,
                    at: None,
                })
                .await
                .unwrap()
                .events
                .len()
        }
    };

    // Deprovisioning the contractor.
    let mut before = Vec::new();
    for t in &trees {
        before.push(history_len(t.root).await);
    }
    let r = admin
        .revoke_agent(agent_id("contractor"), Some("contract ended".into()))
        .await
        .unwrap();
    assert_eq!(
        r.commits.len(),
        11,
        "the block, then one revoke per contractor mandate"
    );
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
    let mut before = Vec::new();
    for t in &trees {
        before.push(history_len(t.root).await);
    }
    let r = admin
        .revoke_principal(principal_id("alice"), Some("left the company".into()))
        .await
        .unwrap();
    assert_eq!(
        r.commits.len(),
        15,
        "the block, then one revoke per root alice granted"
    );
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
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let before_issue = Utc::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "cfo",
            "planner",
            None,
            &["finance:read on reports/**"],
            in_an_hour(),
        ),
    )
    .await;
    let child = delegate(
        &nc,
        "acme",
        "planner",
        root,
        "analyst",
        &["finance:read on reports/q3/*"],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let while_live = Utc::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let revoked = cfo.revoke(root, Some("deal closed".into())).await.unwrap();
    let revoked_at = revoked.commits[0].events[0].time;
    assert!(revoked_at > while_live);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after = Utc::now();

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

// ---------------------------------------------------------------------------
// 8. Tenant isolation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_a_tenant() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let secret_agent = "secret-agent-007";
    let secret_scope = "payroll:read on salaries/**";
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "acme-ceo",
            secret_agent,
            Some("jira:PAY-1"),
            &[secret_scope],
            in_an_hour(),
        ),
    )
    .await;
    let before = instance.log_position().await;
    let leaks = |reply: &Value| {
        let text = reply.to_string();
        for secret in [
            secret_agent,
            "payroll",
            "salaries",
            "acme-ceo",
            "acme",
            "PAY-1",
        ] {
            assert!(!text.contains(secret), "reply reveals {secret:?}: {text}");
        }
    };

    // Queries of another tenant's mandate: not found, and nothing in the reply.
    let globex = tenant("globex");
    let mq = json!({ "mandate": root }).to_string().into_bytes();
    for verb in ["status", "chain", "tree", "history"] {
        let reply = raw(&nc, query_subject(&globex, verb), mq.clone()).await;
        assert_refused(verb, &reply, "not_found", &[&root.to_string()]);
        leaks(&reply);
    }
    // A check is answered as for a mandate that does not exist: a deny that
    // says nothing about it, identical to one for a made-up id.
    let check = |m: MandateId| {
        json!({ "mandate": m, "action": "files:read", "resource": "docs/plan" })
            .to_string()
            .into_bytes()
    };
    let reply = raw(&nc, query_subject(&globex, "check"), check(root)).await;
    leaks(&reply);
    let decision: Decision = result_of(&reply);
    assert_eq!(decision.outcome, Outcome::Deny);
    assert!(
        matches!(decision.reason, Some(DenyReason::UnknownMandate)),
        "{decision:?}"
    );
    assert!(decision.chain.is_empty() && decision.effective.is_none());
    let made_up = MandateId::generate();
    let other = raw(&nc, query_subject(&globex, "check"), check(made_up)).await;
    let normalize = |v: &Value, m: MandateId| {
        let mut v = v.clone();
        v["result"]["at"] = Value::Null;
        v.to_string().replace(&m.to_string(), "<mandate>")
    };
    assert_eq!(normalize(&reply, root), normalize(&other, made_up));
    let reply = raw(
        &nc,
        query_subject(&globex, "list"),
        json!({ "agent": secret_agent }).to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert_eq!(reply["result"]["mandates"], json!([]), "{reply}");

    // Commands on it from the other tenant: not found either.
    let intruder = client(&nc, "globex", Actor::Admin(principal_id("globex-admin")));
    for (verb, result) in [
        ("revoke", intruder.revoke(root, None).await),
        ("pause", intruder.pause(root, None).await),
        (
            "delegate",
            client(&nc, "globex", agent(secret_agent))
                .delegate(Delegate {
                    parent: root,
                    grantee: agent_id("mole"),
                    scope: scope(&[secret_scope]),
                    not_after: None,
                    depth: None,
                    step_up: vec![],
                    supervisors: vec![],
                })
                .await,
        ),
    ] {
        let err = result.unwrap_err();
        assert_eq!(code_of(&err), ErrorCode::NotFound, "{verb}: {err}");
        assert!(!err.to_string().contains(secret_agent), "{err}");
    }
    let r = intruder
        .revoke_agent(agent_id(secret_agent), None)
        .await
        .unwrap();
    // Only the block in globex's own registry.
    assert!(
        r.commits
            .iter()
            .all(|c| c.tree == TreeId::registry(&tenant("globex"))),
        "{r:?}"
    );
    let r = intruder
        .complete_mission(MissionRef::new("jira:PAY-1").unwrap())
        .await
        .unwrap();
    assert!(r.commits.is_empty(), "{r:?}");

    // A body naming another tenant than its subject is refused, both ways.
    let revoke_as = |body_tenant: &str| {
        let env = envelope(
            body_tenant,
            Actor::Admin(principal_id("x-admin")),
            Command::Revoke(Change {
                mandate: root,
                reason: None,
            }),
        );
        serde_json::to_vec(&env).unwrap()
    };
    let reply = raw(&nc, command_subject(&globex, "revoke"), revoke_as("acme")).await;
    assert_refused(
        "acme body on a globex subject",
        &reply,
        "forbidden",
        &["tenant"],
    );
    let reply = raw(
        &nc,
        command_subject(&tenant("acme"), "revoke"),
        revoke_as("globex"),
    )
    .await;
    assert_refused(
        "globex body on an acme subject",
        &reply,
        "forbidden",
        &["tenant"],
    );

    // The one write is the block in globex's own registry.
    assert_eq!(
        instance.log_position().await,
        before + 1,
        "something was written"
    );
    let ceo = client(&nc, "acme", principal("acme-ceo"));
    assert_eq!(own(&ceo, root).await, Status::Active);
    assert!(ceo
        .check(root, "payroll:read", "salaries/ceo", None)
        .await
        .unwrap()
        .is_allowed());
    instance.stop().await;
}

/// The result of a raw reply that must be `ok`.
fn result_of<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value::<Reply<T>>(v.clone())
        .unwrap_or_else(|e| panic!("reply does not decode ({e}): {v}"))
        .into_result()
        .unwrap_or_else(|e| panic!("expected a result, got {e:?}"))
}

// ---------------------------------------------------------------------------
// 9. Bad input over the wire
// ---------------------------------------------------------------------------

type BadInput = (&'static str, String, Vec<u8>, &'static str, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_the_wire_is_refused_typed_and_changes_nothing() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "cfo",
            "planner",
            Some("jira:FIN-9"),
            &["finance:read on reports/**"],
            in_an_hour(),
        ),
    )
    .await;
    let before = instance.log_position().await;
    assert!(before > 0);
    let acme = tenant("acme");

    // A valid command, as JSON, to spoil one way at a time.
    let valid = |command: Command| {
        serde_json::to_value(envelope("acme", principal("cfo"), command)).unwrap()
    };
    let revoke = valid(Command::Revoke(Change {
        mandate: root,
        reason: None,
    }));
    let bytes = |v: &Value| serde_json::to_vec(v).unwrap();

    // (what, subject, body, expected code, what the message must mention)
    let cases: Vec<BadInput> = vec![
        (
            "malformed JSON",
            command_subject(&acme, "revoke"),
            br#"{"command_id": "#.to_vec(),
            "invalid_input",
            vec!["malformed command".into()],
        ),
        (
            "not an object",
            command_subject(&acme, "revoke"),
            b"[1,2,3]".to_vec(),
            "invalid_input",
            vec!["malformed command".into(), "object".into()],
        ),
        (
            "unknown type",
            command_subject(&acme, "frobnicate"),
            bytes(&{
                let mut v = revoke.clone();
                v["type"] = json!("frobnicate");
                v
            }),
            "invalid_input",
            vec!["unknown command type".into(), "frobnicate".into()],
        ),
        (
            "subject verb differs from the body type",
            command_subject(&acme, "pause"),
            bytes(&revoke),
            "invalid_input",
            vec![
                "\"pause\"".into(),
                "\"revoke\"".into(),
                "does not match".into(),
            ],
        ),
        (
            "body over 64 KiB",
            command_subject(&acme, "revoke"),
            bytes(&{
                let mut v = revoke.clone();
                v["reason"] = json!("x".repeat(70 * 1024));
                v
            }),
            "invalid_input",
            vec!["exceeds the limit of 65536 bytes".into()],
        ),
        (
            "hostile tenant in the body",
            command_subject(&tenant("a-b"), "revoke"),
            bytes(&{
                let mut v = revoke.clone();
                v["tenant"] = json!("a.b");
                v
            }),
            "invalid_input",
            vec!["tenant".into(), "\"a.b\"".into()],
        ),
        (
            "wildcard tenant in the body",
            command_subject(&acme, "revoke"),
            bytes(&{
                let mut v = revoke.clone();
                v["tenant"] = json!(">");
                v
            }),
            "invalid_input",
            vec!["tenant".into(), "\">\"".into()],
        ),
        (
            "hostile tenant in the subject",
            "mandate.cmd.a$b.revoke".to_string(),
            bytes(&revoke),
            "invalid_input",
            vec!["tenant".into(), "a$b".into()],
        ),
        (
            "over-long tenant in the subject",
            format!("mandate.q.{}.status", "t".repeat(65)),
            json!({ "mandate": root }).to_string().into_bytes(),
            "invalid_input",
            vec!["tenant".into(), "longer than 64 bytes".into()],
        ),
        (
            "the engine's own actor in the body",
            command_subject(&acme, "complete_mission"),
            bytes(&{
                let mut v = valid(Command::CompleteMission(
                    mandate::domain::command::CompleteMission {
                        mission_ref: MissionRef::new("jira:FIN-9").unwrap(),
                    },
                ));
                v["actor"] = json!({ "kind": "system", "id": "mission-intake" });
                v
            }),
            "invalid_input",
            vec!["system mission-intake".into(), "reserved".into()],
        ),
        (
            "an expiry sent from outside",
            command_subject(&acme, "expire"),
            bytes(&{
                let mut v = valid(Command::Expire(mandate::domain::command::Target {
                    mandate: root,
                }));
                v["actor"] = json!({ "kind": "system", "id": "expiry" });
                v
            }),
            "invalid_input",
            vec!["system expiry".into(), "reserved".into()],
        ),
        (
            "unknown schema version",
            command_subject(&acme, "revoke"),
            bytes(&{
                let mut v = revoke.clone();
                v["schema_version"] = json!(2);
                v
            }),
            "invalid_input",
            vec!["unknown schema version 2".into()],
        ),
        (
            "invalid scope pattern",
            command_subject(&acme, "narrow"),
            bytes(&{
                let mut v = valid(Command::Narrow(Narrow {
                    mandate: root,
                    scope: scope(&["finance:read on reports/q3/*"]),
                }));
                v["scope"] = json!([{ "action": "finance:re*d", "resource": "reports/**" }]);
                v
            }),
            "invalid_input",
            vec!["finance:re*d".into()],
        ),
        (
            "a bulk command of the wrong verb",
            command_subject(&acme, "revoke_principal"),
            bytes(&json!({
                "command_id": CommandId::generate(),
                "tenant": "acme",
                "actor": { "kind": "admin", "id": "it" },
                "type": "revoke_agent",
                "agent": "planner",
            })),
            "invalid_input",
            vec!["does not match".into(), "revoke_agent".into()],
        ),
        (
            "a malformed query",
            query_subject(&acme, "status"),
            br#"{"mandate":"not-a-uuid"}"#.to_vec(),
            "invalid_input",
            vec!["malformed status query".into()],
        ),
        (
            "a query with an unknown field",
            query_subject(&acme, "status"),
            json!({ "mandate": root, "as_admin": true })
                .to_string()
                .into_bytes(),
            "invalid_input",
            vec!["as_admin".into()],
        ),
        (
            "an unknown query verb",
            query_subject(&acme, "dump"),
            b"{}".to_vec(),
            "invalid_input",
            vec!["unknown query verb".into(), "dump".into()],
        ),
    ];
    for (what, subject, body, code, mentions) in &cases {
        let reply = raw(&nc, subject.clone(), body.clone()).await;
        let mentions: Vec<&str> = mentions.iter().map(String::as_str).collect();
        let message = assert_refused(what, &reply, code, &mentions);
        assert!(
            message.len() < 1024,
            "{what}: an unbounded message: {message}"
        );
    }

    assert_eq!(
        instance.log_position().await,
        before,
        "bad input wrote something"
    );
    let cfo = client(&nc, "acme", principal("cfo"));
    assert_eq!(own(&cfo, root).await, Status::Active);
    // The mission was not completed by the forged intake actor either.
    cfo.issue(root_issue(
        "cfo",
        "planner",
        Some("jira:FIN-9"),
        &["finance:read on reports/**"],
        in_an_hour(),
    ))
    .await
    .expect("the mission is still open");
    instance.stop().await;
}

// ---------------------------------------------------------------------------
// Missions without trees, and reads from a lagging instance
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_administrator_closes_a_mission_no_tree_serves() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let mission = MissionRef::new("jira:NOPE-1").unwrap();
    for actor in [agent("mallory"), principal("mallory")] {
        let err = client(&nc, "acme", actor.clone())
            .complete_mission(mission.clone())
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), ErrorCode::Forbidden, "{actor}: {err}");
        assert_eq!(err.reason(), Some("mission_forbidden"), "{actor}: {err}");
    }
    // The mission is still open: a root may be issued for it.
    issue(
        &nc,
        "acme",
        root_issue(
            "cfo",
            "lead",
            Some("jira:NOPE-1"),
            &["a:b on c"],
            in_an_hour(),
        ),
    )
    .await;
    // An administrator may close a mission ahead of any tree.
    let admin = client(&nc, "acme", Actor::Admin(principal_id("ops")));
    admin
        .complete_mission(MissionRef::new("jira:LATER-2").unwrap())
        .await
        .expect("admin closes it");
    let err = client(&nc, "acme", principal("cfo"))
        .issue(root_issue(
            "cfo",
            "lead",
            Some("jira:LATER-2"),
            &["a:b on c"],
            in_an_hour(),
        ))
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::InvalidState, "{err}");
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_instance_never_answers_from_stale_authority() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    // Instance B follows the log until it has the tree, then its follower is
    // stopped: from then on it lags behind everything A writes.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dir_a.path()).await;
    serving(&nc, "acme").await;
    let b_nc = async_nats::connect(server.url()).await.unwrap();
    let b = Engine::nats(
        b_nc,
        dir_b.path(),
        JetStreamConfig::default(),
        EngineConfig::default(),
    )
    .await
    .unwrap();
    let root = issue(
        &nc,
        "acme",
        root_issue(
            "cfo",
            "lead",
            None,
            &["finance:read on reports/**"],
            in_an_hour(),
        ),
    )
    .await;
    let kid = delegate(
        &nc,
        "acme",
        "lead",
        root,
        "analyst",
        &["finance:read on reports/q3/*"],
    )
    .await;
    let follower = b.start();
    let probe = b.clone();
    eventually("B's projection has the tree", || {
        let probe = probe.clone();
        async move { probe.health().await.map(|h| h.lag == 0).unwrap_or(false) }
    })
    .await;
    follower.stop().await.unwrap();
    let ask = |m: MandateId| {
        serde_json::to_vec(&serde_json::json!({"mandate": m, "action": "finance:read", "resource": "reports/q3/x"})).unwrap()
    };
    let answer = |bytes: Vec<u8>| -> Value { serde_json::from_slice(&bytes).unwrap() };
    let first = answer(b.handle("mandate.q.acme.check", &ask(kid)).await);
    assert_eq!(first["result"]["outcome"], "allow", "{first}");
    client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .unwrap();
    // Right after the revoke acknowledged by A, B must not allow.
    let after = answer(b.handle("mandate.q.acme.check", &ask(kid)).await);
    assert_eq!(after["result"]["outcome"], "deny", "{after}");
    let status = answer(
        b.handle(
            "mandate.q.acme.status",
            &serde_json::to_vec(&serde_json::json!({"mandate": kid})).unwrap(),
        )
        .await,
    );
    assert_eq!(
        status["result"]["effective"]["status"], "revoked",
        "{status}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_only_the_tenants_it_was_given() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;
    let instance = Instance::start_with(
        &server.url(),
        dir.path(),
        EngineConfig {
            tenants: vec![tenant("acme")],
            allow_open_tenants: true,
            ..EngineConfig::default()
        },
    )
    .await;
    serving(&nc, "acme").await;
    issue(
        &nc,
        "acme",
        root_issue("cfo", "lead", None, &["a:b on c"], in_an_hour()),
    )
    .await;
    let other = client(&nc, "globex", principal("cfo")).with_timeout(Duration::from_millis(500));
    let err = other
        .issue(root_issue("cfo", "lead", None, &["a:b on c"], in_an_hour()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoEngine(_)), "{err:?}");
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_reused_for_other_content_is_refused_by_name() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = connect(&server).await;
    serving(&nc, "acme").await;
    let cfo = client(&nc, "acme", principal("cfo"));
    let first = issue(
        &nc,
        "acme",
        root_issue("cfo", "lead", None, &["a:b on c"], in_an_hour()),
    )
    .await;
    let second = issue(
        &nc,
        "acme",
        root_issue("cfo", "lead", None, &["a:b on c"], in_an_hour()),
    )
    .await;
    let pause = envelope(
        "acme",
        principal("cfo"),
        Command::Pause(mandate::domain::command::Change {
            mandate: first,
            reason: None,
        }),
    );
    cfo.send(&pause).await.expect("the first use is applied");
    let before = instance.log_position().await;
    // The same id for a different command on the same tree…
    let mut revoke = pause.clone();
    revoke.command = Command::Revoke(mandate::domain::command::Change {
        mandate: first,
        reason: None,
    });
    let err = cfo.send(&revoke).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::Conflict, "{err}");
    assert!(
        err.to_string().contains(&pause.command_id.to_string()),
        "{err}"
    );
    // …or on another tree (the log deduplicates ids across trees).
    let mut elsewhere = pause.clone();
    elsewhere.command = Command::Pause(mandate::domain::command::Change {
        mandate: second,
        reason: None,
    });
    let err = cfo.send(&elsewhere).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::Conflict, "{err}");
    assert_eq!(instance.log_position().await, before, "nothing was written");
    assert_eq!(effective(&cfo, second).await, Status::Active);
    // A faithful retry is still a duplicate, not an error.
    assert!(cfo.send(&pause).await.unwrap().duplicate);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_refuses_a_mission_completed_before_any_tree_served_it() {
    let server = NatsServer::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(&server.url(), dir_a.path()).await;
    let b = Instance::start(&server.url(), dir_b.path()).await;
    let nc = connect(&server).await;
    all_serving(&nc, "acme", &[&a, &b]).await;
    let mission = MissionRef::new("jira:EARLY-1").unwrap();
    // The ticket closes before anyone issued a mandate for it; one instance
    // takes the message from the shared intake consumer.
    async_nats::jetstream::new(nc.clone())
        .publish(
            mandate::protocol::mission_subject(&tenant("acme"), &mission),
            "{}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    for inst in [&a, &b] {
        let e = inst.engine.clone();
        let m = mission.clone();
        eventually("each instance knows the mission is completed", || {
            let (e, m) = (e.clone(), m.clone());
            async move { e.store().mission_completed(&tenant("acme"), &m).unwrap() }
        })
        .await;
    }
    // Whichever instance a request reaches, the issue is refused.
    for inst in [&a, &b] {
        let cmd = envelope(
            "acme",
            principal("cfo"),
            Command::Issue(root_issue(
                "cfo",
                "lead",
                Some("jira:EARLY-1"),
                &["a:b on c"],
                in_an_hour(),
            )),
        );
        let reply: Value = serde_json::from_slice(
            &inst
                .engine
                .handle("mandate.cmd.acme.issue", &serde_json::to_vec(&cmd).unwrap())
                .await,
        )
        .unwrap();
        assert_eq!(reply["error"]["code"], "invalid_state", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("jira:EARLY-1"),
            "{reply}"
        );
    }
    a.stop().await;
    b.stop().await;
}
