//! Quarantine against a real nats-server and real engine instances: a bad
//! record on a tree's event subject freezes nothing live.
//!
//! - a garbage record published straight on `mandate.evt.<tenant>.<tree>`
//!   makes `check` deny on every instance and stops the tree's guards;
//!   `status` and `chain` refuse, `health`, `list` and `history` show it;
//! - an administrator restores it through another instance: every instance
//!   and the guard allow again, and a rebuild agrees;
//! - or ends it: every check denies for good and the guard is cancelled,
//!   also on an instance started afterwards;
//! - an event of a newer schema version denies with its own reason and is
//!   no quarantine;
//! - a guard cut off while the signal went out denies once its re-read is
//!   refused;
//! - the CLI: `check` exits 1 (denied), `status` 5 (refused), `history`
//!   marks the bad position, and `seal` / `restore` are for administrators.

mod common;

use std::time::Duration;

use common::fixtures::*;
use common::relay::Relay;
use common::served::Instance;
use common::wire::{client_at as client, start_two};
use common::NatsServer;
use mandate::client::guard::GuardHub;
use mandate::client::{ClientError, Guard, GuardConfig, GuardState};
use mandate::domain::command::{Issue, Resolution};
use mandate::domain::{
    Actor, CommandId, Decision, DenyReason, ErrorCode, MandateId, Status, TreeId,
};
use mandate::engine::Engine;
use mandate::log::EventLog;
use mandate::protocol::{CheckQuery, ListQuery};

/// A server and two instances following it, both answering.
struct World {
    server: NatsServer,
    url: String,
    a: Instance,
    b: Instance,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    /// The hub of the guards the tests start.
    hub: GuardHub,
}

impl World {
    async fn start() -> Self {
        let server = NatsServer::start();
        let url = server.url();
        let (dirs, a, b) = start_two(&url, None).await;
        let probe = client(&url, agent("probe")).await;
        eventually("an engine answers requests", || {
            let probe = probe.clone();
            async move { probe.health().await.is_ok() }
        })
        .await;
        Self {
            server,
            url,
            a,
            b,
            _dirs: dirs,
            hub: GuardHub::new(),
        }
    }

    /// A world with the tree root (lead) → worker in it.
    async fn with_tree() -> (Self, MandateId, MandateId) {
        let w = Self::start().await;
        let (root, worker) = root_and_worker(w.url()).await;
        (w, root, worker)
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// A guard of the worker on `worker`, over a connection of its own.
    async fn guard(&self, worker: MandateId) -> Guard {
        Guard::start(
            client(self.url(), agent("worker")).await,
            &self.hub,
            worker,
            steady_guard(),
        )
        .await
        .unwrap()
    }

    /// Asserts that `by` may not restore `root`'s tree at `position`, for
    /// `why`.
    async fn assert_restore_refused(
        &self,
        by: Actor,
        root: MandateId,
        position: u64,
        why: ErrorCode,
    ) {
        let e = client(self.url(), by)
            .await
            .resolve_quarantine(root, position, Resolution::Restore, None)
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(why), "{e}");
    }

    /// Publishes garbage on `tree` and waits until both instances deny
    /// `worker` as quarantined at its position; returns the position.
    async fn quarantine(&self, tree: TreeId, worker: MandateId) -> u64 {
        quarantine(self.url(), &self.a, &self.b, tree, worker).await
    }
}

/// Issues root (lead) → worker; returns (root, worker).
async fn root_and_worker(url: &str) -> (MandateId, MandateId) {
    let cfo = client(url, principal("cfo")).await;
    let grants = ["fin:read on ledger/*"];
    let root = cfo
        .issue(with_depth(3, root_issue("cfo", "lead", None, &grants)))
        .await
        .expect("issue")
        .mandate
        .unwrap();
    let worker = client(url, agent("lead"))
        .await
        .delegate(delegation(root, "worker", &["fin:read on ledger/q3"]))
        .await
        .expect("delegate")
        .mandate
        .unwrap();
    (root, worker)
}

/// Publishes `payload` straight on the tree's event subject, as anyone
/// allowed to publish there could: no engine, no expected head, no msg id.
async fn publish_garbage(url: &str, tree: TreeId, payload: &'static [u8]) -> u64 {
    let nc = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    js.publish(format!("mandate.evt.acme.{tree}"), payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

fn steady_guard() -> GuardConfig {
    guard_config(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_record_makes_check_deny_everywhere_and_stops_the_guard() {
    let (w, root, worker) = World::with_tree().await;
    let guard = w.guard(worker).await;
    assert!(guard.check("fin:read", "ledger/q3").is_allowed());
    let tree = TreeId(root.0);

    // Given a garbage record on the tree's event subject,
    publish_garbage(w.url(), tree, b"{ not a commit").await;

    // then every instance denies checks under the tree,
    for (name, engine) in [("a", &w.a.engine), ("b", &w.b.engine)] {
        let d = check(engine, worker).await;
        assert!(!d.is_allowed(), "instance {name} still allows: {d:?}");
    }
    // and the guard stops allowing, well before its heartbeat.
    eventually("the guard denies", || async {
        !guard.check("fin:read", "ledger/q3").is_allowed()
    })
    .await;
}

fn check_query(mandate: MandateId) -> CheckQuery {
    CheckQuery {
        mandate,
        action: "fin:read".into(),
        resource: "ledger/q3".into(),
        at: None,
        actor: None,
        consistency: Default::default(),
    }
}

async fn check(engine: &Engine, mandate: MandateId) -> Decision {
    engine
        .check(&acme(), &check_query(mandate))
        .await
        .expect("check answers")
}

fn quarantined_at(d: &Decision) -> Option<u64> {
    match d.reason {
        Some(DenyReason::Quarantined { position, .. }) if !d.is_allowed() => Some(position),
        _ => None,
    }
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// Publishes garbage on the tree and waits until both instances deny with
/// `quarantined` naming its position; returns the position.
async fn quarantine(url: &str, a: &Instance, b: &Instance, tree: TreeId, worker: MandateId) -> u64 {
    let position = publish_garbage(url, tree, b"{ not a commit").await;
    for engine in [&a.engine, &b.engine] {
        let d = check(engine, worker).await;
        assert_eq!(quarantined_at(&d), Some(position), "{d:?}");
    }
    position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_tree_refuses_grants_shows_itself_and_is_restored_by_another_instance() {
    let (w, root, worker) = World::with_tree().await;
    let tree = TreeId(root.0);
    let guard = w.guard(worker).await;
    assert!(guard.check("fin:read", "ledger/q3").is_allowed());

    // Given a garbage record on the tree's subject, checks deny on both,
    let position = w.quarantine(tree, worker).await;
    // the guard hears of it without waiting for its heartbeat,
    eventually("the guard is quarantined", || async {
        guard.state() == GuardState::Quarantined
            && quarantined_at(&guard.check("fin:read", "ledger/q3")) == Some(position)
    })
    .await;
    assert!(
        !guard.cancellation().is_cancelled(),
        "a quarantine is not a termination"
    );
    // status and chain refuse with their own code, and so do commands,
    let lead = client(w.url(), agent("lead")).await;
    for e in [
        lead.status(worker, None).await.map(|_| ()).unwrap_err(),
        lead.chain(worker, None).await.map(|_| ()).unwrap_err(),
        lead.pause(worker, None).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(code(&e), Some(ErrorCode::Quarantined), "{e}");
        assert!(
            e.to_string().contains(&format!("position {position}")),
            "{e}"
        );
    }
    // health and list show it, history keeps answering and marks it.
    let health = client(w.url(), admin("ops")).await.health().await.unwrap();
    assert!(
        health
            .quarantined
            .iter()
            .any(|q| q.tree == tree && q.position == position),
        "{health:?}"
    );
    let listed = lead
        .list(ListQuery {
            agent: Some(agent_id("lead")),
            principal: None,
            mission_ref: None,
            consistency: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(listed.mandates[0].quarantined, Some(position), "{listed:?}");
    let history = lead.history(of_tree(tree)).await.unwrap();
    assert_eq!(history.events.len(), 2);
    assert_eq!(history.quarantine.map(|q| q.position), Some(position));

    // Only an administrator resolves it, and only at the bad position.
    w.assert_restore_refused(principal("cfo"), root, position, ErrorCode::Forbidden)
        .await;
    w.assert_restore_refused(admin("ops"), root, position + 1, ErrorCode::InvalidState)
        .await;

    // When an administrator restores it through instance B,
    let restored =
        w.b.engine
            .execute(ext(envelope(
                "acme",
                admin("ops"),
                mandate::domain::Command::ResolveQuarantine(
                    mandate::domain::command::ResolveQuarantine {
                        mandate: root,
                        position,
                        action: Resolution::Restore,
                        reason: Some("the record was injected; state verified".into()),
                    },
                ),
            )))
            .await
            .expect("restore");
    // its event continues the chain from the last good event,
    let event = &restored.commits[0].events[0];
    assert_eq!(event.seq, 3);
    assert_eq!(event.prev_hash, Some(history.events[1].hash()));
    // and instance A allows again, as does the guard.
    assert!(check(&w.a.engine, worker).await.is_allowed());
    eventually("the guard allows again", || async {
        guard.check("fin:read", "ledger/q3").is_allowed()
    })
    .await;
    let verify = lead.verify(of_tree(tree)).await.unwrap();
    assert!(verify.intact, "{verify:?}");
    // and verify marks the bad record, still in the log, as skipped.
    assert_eq!(verify.skipped, vec![position], "{verify:?}");
    // The tree takes commands again.
    lead.pause(worker, None).await.expect("pause after restore");
    assert_eq!(
        lead.status(worker, None).await.unwrap().effective.status,
        Status::Paused
    );

    // A rebuild from the log gives the same state, the bad record included.
    w.b.caught_up().await;
    let report = w.b.engine.rebuild_check().await.unwrap();
    assert!(report.equal, "{report:?}");
    w.b.stop().await;
    let fresh = tempfile::tempdir().unwrap();
    let c = Instance::start(&w.url, fresh.path()).await;
    c.caught_up().await;
    let d = check(&c.engine, worker).await;
    assert_denied_as(&d, Status::Paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_ends_a_quarantined_tree_for_good() {
    let (w, root, worker) = World::with_tree().await;
    let tree = TreeId(root.0);
    let guard = w.guard(worker).await;
    let position = w.quarantine(tree, worker).await;

    // When an administrator ends it (through whichever instance answers),
    let ended = client(w.url(), admin("ops"))
        .await
        .resolve_quarantine(root, position, Resolution::End, Some("compromised".into()))
        .await
        .expect("end");
    assert_eq!(ended.commits[0].events[0].seq, 3);
    // every check denies on both instances, as revoked at the root,
    for engine in [&w.a.engine, &w.b.engine] {
        let d = check(engine, worker).await;
        assert_denied_as(&d, Status::Revoked);
    }
    // the guard is cancelled,
    tokio::time::timeout(PATIENCE, guard.cancellation().cancelled())
        .await
        .expect("the guard is cancelled");
    assert_eq!(guard.state(), GuardState::Terminated(Status::Revoked));
    // nothing revives it,
    w.assert_restore_refused(admin("ops"), root, position, ErrorCode::InvalidState)
        .await;
    // and an instance started afterwards, replaying the log, agrees.
    let fresh = tempfile::tempdir().unwrap();
    let c = Instance::start(w.url(), fresh.path()).await;
    c.caught_up().await;
    let d = check(&c.engine, worker).await;
    assert_denied_as(&d, Status::Revoked);
    let report = c.engine.rebuild_check().await.unwrap();
    assert!(report.equal, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_newer_schema_version_denies_but_is_no_quarantine() {
    let (w, root, worker) = World::with_tree().await;
    let tree = TreeId(root.0);
    let guard = w.guard(worker).await;

    // Given a commit written by a newer build (schema version 2), appended
    // as a newer instance would: at the head, with a command id,
    let head = w.a.engine.log().tree_head(&acme(), tree).await.unwrap();
    let nc = async_nats::connect(w.url()).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", CommandId::generate().to_string().as_str());
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        head.to_string().as_str(),
    );
    let position = js
        .publish_with_headers(
            format!("mandate.evt.acme.{tree}"),
            headers,
            br#"[{"schema_version": 2, "type": "mandate_paused"}]"#
                .as_slice()
                .into(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;

    // then this instance denies with its own reason,
    let d = check(&w.a.engine, worker).await;
    assert!(
        matches!(d.reason, Some(DenyReason::UnsupportedVersion { position: p, version: 2, .. }) if p == position),
        "{d:?}"
    );
    let lead = client(w.url(), agent("lead")).await;
    let e = lead.status(worker, None).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Unavailable), "{e}");
    // but it is no quarantine: none is listed, and guards are not told to stop.
    let health = client(w.url(), admin("ops")).await.health().await.unwrap();
    assert!(health.quarantined.is_empty(), "{health:?}");
    assert!(w
        .a
        .engine
        .store()
        .quarantined(&acme(), tree)
        .unwrap()
        .is_none());
    assert!(guard.check("fin:read", "ledger/q3").is_allowed());
}

/// Runs the `mandate` binary against the server as `actor`, in tenant acme.
fn cli(url: &str, actor: &str, args: &[&str]) -> std::process::Output {
    let data = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args([
            "--nats", url, "--tenant", "acme", "--actor", actor, "--data",
        ])
        .arg(data.path())
        .args(args)
        .env_remove("MANDATE_SECRET")
        .output()
        .expect("run the mandate binary")
}

fn exit_code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_denies_refuses_and_an_administrator_seals_a_quarantined_tree() {
    let (w, root, worker) = World::with_tree().await;
    let position = w.quarantine(TreeId(root.0), worker).await;
    let (worker_s, root_s, pos_s) = (worker.to_string(), root.to_string(), position.to_string());

    // A check is a deny (1); status is refused (5); history still answers
    // and marks the bad position.
    let denied = cli(
        w.url(),
        "agent:worker",
        &["check", &worker_s, "fin:read", "ledger/q3"],
    );
    assert_eq!(exit_code(&denied), Some(1), "{denied:?}");
    let status = cli(w.url(), "agent:lead", &["status", &worker_s]);
    assert_eq!(exit_code(&status), Some(5), "{status:?}");
    let history = cli(w.url(), "agent:lead", &["history", &worker_s]);
    assert_eq!(exit_code(&history), Some(0), "{history:?}");
    assert!(
        String::from_utf8_lossy(&history.stdout)
            .contains(&format!("QUARANTINED at log position {position}")),
        "{history:?}"
    );
    // Only an administrator seals it.
    let refused = cli(
        w.url(),
        "principal:cfo",
        &["seal", &root_s, "--position", &pos_s],
    );
    assert_eq!(exit_code(&refused), Some(5), "{refused:?}");
    let sealed = cli(
        w.url(),
        "admin:ops",
        &["seal", &root_s, "--position", &pos_s],
    );
    assert_eq!(exit_code(&sealed), Some(0), "{sealed:?}");
    let d = check(&w.a.engine, worker).await;
    assert_denied_as(&d, Status::Revoked);
    let restore = cli(
        w.url(),
        "admin:ops",
        &["restore", &root_s, "--position", &pos_s],
    );
    assert_eq!(
        exit_code(&restore),
        Some(5),
        "a sealed tree stays ended: {restore:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_quarantined_tree_does_not_keep_a_deprovisioning_from_the_others() {
    let w = World::start().await;
    // The worker holds a mandate in each of two trees.
    let (root1, worker1) = root_and_worker(w.url()).await;
    let (root2, worker2) = root_and_worker(w.url()).await;
    // Quarantine the tree that a deprovisioning reaches first (mandates are
    // taken in the order of their ids).
    let (bad_root, bad, good) = if worker1.to_string() < worker2.to_string() {
        (root1, worker1, worker2)
    } else {
        (root2, worker2, worker1)
    };
    w.quarantine(TreeId(bad_root.0), bad).await;

    // When an administrator deprovisions the worker,
    let result = client(w.url(), admin("ops"))
        .await
        .revoke_agent(agent_id("worker"), None)
        .await;
    // it says that a tree could not be reached,
    let e = result.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Quarantined), "{e}");
    // but the healthy tree's mandate is revoked all the same.
    let d = check(&w.a.engine, good).await;
    assert_denied_as(&d, Status::Revoked);
}

fn mission_issue(grantee: &str) -> Issue {
    let grants = ["fin:read on ledger/*"];
    with_depth(3, root_issue("cfo", grantee, Some("jira:FIN-7"), &grants))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mission_completed_while_its_tree_is_quarantined_stays_closed_and_ends_the_tree_once_restored(
) {
    let w = World::start().await;
    let cfo = client(w.url(), principal("cfo")).await;
    let root = cfo
        .issue(mission_issue("lead"))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let position = w.quarantine(TreeId(root.0), root).await;
    let mission = mandate::domain::MissionRef::new("jira:FIN-7").unwrap();

    // When the intake completes the mission while its only tree is
    // quarantined (an administrator, on instance A: which instances learn of a completion
    // with no event behind it is the mission stream's business),
    let e = w
        .a
        .engine
        .execute(ext(envelope(
            "acme",
            admin("ops"),
            mandate::domain::Command::CompleteMission(mandate::domain::command::CompleteMission {
                mission_ref: mission.clone(),
            }),
        )))
        .await
        .unwrap_err();
    assert_eq!(e.to_body().code, ErrorCode::Quarantined, "{e}");
    // the mission is closed all the same: no new tree may serve it,
    let e =
        w.a.engine
            .execute(ext(envelope(
                "acme",
                principal("cfo"),
                mandate::domain::Command::Issue(mission_issue("other")),
            )))
            .await
            .unwrap_err();
    assert_eq!(e.to_body().code, ErrorCode::InvalidState, "{e}");
    let ops = client(w.url(), admin("ops")).await;
    // and once the tree is restored, completing again ends it.
    ops.resolve_quarantine(root, position, Resolution::Restore, None)
        .await
        .unwrap();
    ops.complete_mission(mission).await.unwrap();
    let d = check(&w.a.engine, root).await;
    assert_denied_as(&d, Status::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_missed_the_signal_denies_once_its_re_read_is_refused() {
    let (w, root, worker) = World::with_tree().await;
    let relay = Relay::start(w.server.port()).await;
    let guard_client = client(&relay.url(), agent("worker")).await;
    let connection = guard_client.nats_client().unwrap().clone();
    let guard = Guard::start(guard_client, &w.hub, worker, steady_guard())
        .await
        .unwrap();
    assert!(guard.check("fin:read", "ledger/q3").is_allowed());

    // Given a guard cut off while its tree is quarantined (it misses the
    // signal; its lease has not run out, so it still allows),
    relay.sever();
    eventually("the guard's connection is down", || async {
        connection.connection_state() != async_nats::connection::State::Connected
    })
    .await;
    w.quarantine(TreeId(root.0), worker).await;
    assert!(guard.check("fin:read", "ledger/q3").is_allowed());
    // when it is back and re-reads, the refusal makes it deny,
    relay.restore();
    eventually("the guard's connection is back", || async {
        connection.connection_state() == async_nats::connection::State::Connected
    })
    .await;
    // when it re-reads, the engine refuses, and the guard denies.
    let e = guard.refresh().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Quarantined), "{e}");
    assert_eq!(guard.state(), GuardState::Quarantined);
    let d = guard.check("fin:read", "ledger/q3");
    assert!(!d.is_allowed(), "{d:?}");
    // without ending it: a quarantine is not a termination.
    assert!(!guard.cancellation().is_cancelled());
}
