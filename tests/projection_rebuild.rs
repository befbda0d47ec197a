//! The projection against the real stores.
//!
//! - Invariant 6: random command sequences run through the engine (embedded
//!   log, and JetStream on a real nats-server); then the projection is
//!   rebuilt from the log and must equal the live one, and every tree's hash
//!   chain must verify against its recorded head.
//! - A rebuild replaces the projection only: the mission marks and audit
//!   records it does not hold are kept in process, and re-derived from the
//!   mission stream over NATS.
//! - Records the projection cannot apply: a corrupt one quarantines its tree
//!   only; one of a newer schema version holds its tree until it reads.

mod common;

use std::sync::OnceLock;

use chrono::Utc;
use common::fixtures::{admin, envelope, ext, mission, principal, root_issue};
use mandate::domain::approval::{DecideApproval, RequestApproval, UseApproval};
use mandate::domain::command::{Change, CompleteMission, Delegate, Issue, Narrow, Renew};
use mandate::domain::{
    decide, root_tree_id, verify_chain_with_head, Actor, AgentId, Command, Event, Facts, MandateId,
    Mission, MissionRef, PrincipalId, Scope, TenantId, Tree, TreeId,
};
use mandate::engine::missions::{MISSION_CONSUMER, MISSION_STREAM};
use mandate::engine::{Engine, EngineConfig, EngineError};
use mandate::log::EventLog;
use mandate::protocol::CheckQuery;
use mandate::store::{Applied, Store};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Issue {
        mission: u8,
    },
    Delegate {
        parent: u8,
        agent: u8,
        narrow: bool,
    },
    Pause(u8),
    Resume(u8),
    Revoke {
        target: u8,
        by_grantee: bool,
    },
    Narrow(u8),
    Renew(u8),
    CompleteMission(u8),
    /// A step-up approval under a live mandate: requested by its grantee,
    /// then granted (or denied) by the principal, then used (or not).
    Approval {
        target: u8,
        deny: bool,
        use_it: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u8..3).prop_map(|mission| Step::Issue { mission }),
        4 => (any::<u8>(), 0u8..4, any::<bool>()).prop_map(|(parent, agent, narrow)| Step::Delegate { parent, agent, narrow }),
        2 => any::<u8>().prop_map(Step::Pause),
        2 => any::<u8>().prop_map(Step::Resume),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(target, by_grantee)| Step::Revoke { target, by_grantee }),
        1 => any::<u8>().prop_map(Step::Narrow),
        1 => any::<u8>().prop_map(Step::Renew),
        1 => (0u8..3).prop_map(Step::CompleteMission),
        2 => (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(target, deny, use_it)| Step::Approval { target, deny, use_it }),
    ]
}

/// Always opens with an issue, so every case has at least one tree.
fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..max).prop_map(|mut v| {
        v.insert(0, Step::Issue { mission: 0 });
        v
    })
}

/// What a run of steps did to the engine.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    accepted: usize,
}

/// What the run knows of a mandate it created.
#[derive(Clone, Debug)]
struct Held {
    id: MandateId,
    grantee: AgentId,
    parent: Option<MandateId>,
    mission: u8,
}

/// The run's own model of what is live, so that it sends commands the
/// engine should accept: a target is picked among the mandates that are
/// neither ended (revoked here or above, or their mission completed) nor,
/// for a pause, already paused (and for a resume, among the paused).
#[derive(Default)]
struct Model {
    mandates: Vec<Held>,
    revoked: std::collections::HashSet<MandateId>,
    paused: std::collections::HashSet<MandateId>,
    completed: std::collections::HashSet<u8>,
}

impl Model {
    fn held(&self, id: MandateId) -> Option<&Held> {
        self.mandates.iter().find(|m| m.id == id)
    }

    /// Whether `m` or a mandate above it is in `set`.
    fn in_chain(&self, m: &Held, set: &std::collections::HashSet<MandateId>) -> bool {
        let mut at = Some(m.id);
        while let Some(id) = at {
            if set.contains(&id) {
                return true;
            }
            at = self.held(id).and_then(|h| h.parent);
        }
        false
    }

    fn ended(&self, m: &Held) -> bool {
        self.completed.contains(&m.mission) || self.in_chain(m, &self.revoked)
    }

    fn paused_above_or_here(&self, m: &Held) -> bool {
        self.in_chain(m, &self.paused)
    }

    fn pick(&self, i: u8, keep: impl Fn(&Held) -> bool) -> Option<Held> {
        let live: Vec<&Held> = self
            .mandates
            .iter()
            .filter(|m| !self.ended(m) && keep(m))
            .collect();
        (!live.is_empty()).then(|| live[i as usize % live.len()].clone())
    }

    /// The id of a live mandate, picked by `i`.
    fn any_live(&self, i: u8) -> Option<MandateId> {
        self.pick(i, |_| true).map(|m| m.id)
    }
}

/// Runs the steps against the run's model of what is live; returns how many
/// commands were sent and how many the engine accepted.
async fn run(engine: &Engine, tenant: &TenantId, steps: &[Step]) -> Tally {
    let mut tally = Tally::default();
    let mut model = Model::default();
    let by_admin = |command| envelope(tenant.as_str(), admin("admin"), command);
    for s in steps {
        let cmd = match s {
            Step::Issue { mission } if model.completed.contains(mission) => continue,
            Step::Issue { mission } => envelope(
                tenant.as_str(),
                Actor::Principal(PrincipalId::new("cfo").unwrap()),
                Command::Issue(Issue {
                    principal: PrincipalId::new("cfo").unwrap(),
                    grantee: AgentId::new("lead").unwrap(),
                    mission: Mission {
                        purpose: "prop".into(),
                        mission_ref: Some(
                            MissionRef::new(format!("m:{tenant}-{mission}")).unwrap(),
                        ),
                    },
                    scope: Scope::parse([
                        "finance:* on reports/**",
                        "deals:read on deals/*",
                        "finance:pay on reports/**",
                    ])
                    .unwrap(),
                    not_after: Utc::now() + chrono::Duration::hours(1),
                    depth: 3,
                    step_up: vec!["finance:pay".parse().unwrap()],
                    supervisors: vec![],
                }),
            ),
            Step::Delegate {
                parent,
                agent,
                narrow,
            } => {
                let Some(Held {
                    id: p,
                    grantee: holder,
                    ..
                }) = model.pick(*parent, |m| !model.paused_above_or_here(m))
                else {
                    continue;
                };
                let grant = if *narrow {
                    "finance:read on reports/q3/*"
                } else {
                    "finance:* on reports/**"
                };
                envelope(
                    tenant.as_str(),
                    Actor::Agent(holder),
                    Command::Delegate(Delegate {
                        parent: p,
                        grantee: AgentId::new(format!("agent{agent}")).unwrap(),
                        scope: Scope::parse([grant]).unwrap(),
                        not_after: None,
                        depth: None,
                        step_up: vec![],
                        supervisors: vec![],
                    }),
                )
            }
            Step::Pause(i) | Step::Resume(i) => {
                let pausing = matches!(s, Step::Pause(_));
                let Some(Held { id: m, .. }) =
                    model.pick(*i, |m| model.paused.contains(&m.id) != pausing)
                else {
                    continue;
                };
                let c = Change {
                    mandate: m,
                    reason: None,
                };
                by_admin(if pausing {
                    Command::Pause(c)
                } else {
                    Command::Resume(c)
                })
            }
            Step::Revoke { target, by_grantee } => {
                let Some(Held {
                    id: m,
                    grantee: holder,
                    ..
                }) = model.pick(*target, |_| true)
                else {
                    continue;
                };
                let actor = if *by_grantee {
                    Actor::Agent(holder)
                } else {
                    admin("admin")
                };
                envelope(
                    tenant.as_str(),
                    actor,
                    Command::Revoke(Change {
                        mandate: m,
                        reason: Some("prop".into()),
                    }),
                )
            }
            Step::Narrow(i) => {
                let Some(m) = model.any_live(*i) else {
                    continue;
                };
                by_admin(Command::Narrow(Narrow {
                    mandate: m,
                    scope: Scope::parse(["finance:read on reports/q3/*"]).unwrap(),
                }))
            }
            Step::Renew(i) => {
                let Some(m) = model.any_live(*i) else {
                    continue;
                };
                by_admin(Command::Renew(Renew {
                    mandate: m,
                    not_after: Utc::now() + chrono::Duration::minutes(30),
                }))
            }
            Step::CompleteMission(i) => by_admin(Command::CompleteMission(CompleteMission {
                mission_ref: MissionRef::new(format!("m:{tenant}-{i}")).unwrap(),
            })),
            Step::Approval {
                target,
                deny,
                use_it,
            } => {
                let Some(Held { id: m, grantee, .. }) =
                    model.pick(*target, |m| !model.paused_above_or_here(m))
                else {
                    continue;
                };
                let approval = uuid::Uuid::now_v7();
                let params_hash = "ab".repeat(32);
                let (action, resource) = ("finance:pay".to_string(), "reports/q3/x".to_string());
                let mut cmds = vec![
                    envelope(
                        tenant.as_str(),
                        Actor::Agent(grantee.clone()),
                        Command::RequestApproval(RequestApproval {
                            mandate: m,
                            approval,
                            action: action.clone(),
                            resource: resource.clone(),
                            params_hash: params_hash.clone(),
                            ttl_seconds: None,
                            reason: None,
                        }),
                    ),
                    envelope(tenant.as_str(), principal("cfo"), {
                        let d = DecideApproval {
                            mandate: m,
                            approval,
                            reason: None,
                        };
                        if *deny {
                            Command::DenyApproval(d)
                        } else {
                            Command::Approve(d)
                        }
                    }),
                ];
                if *use_it {
                    cmds.push(envelope(
                        tenant.as_str(),
                        Actor::Agent(grantee),
                        Command::UseApproval(UseApproval {
                            mandate: m,
                            approval,
                            action,
                            resource,
                            params_hash,
                        }),
                    ));
                }
                // A use after a denial is refused, as it must be: not counted.
                let expect_refused = usize::from(*deny && *use_it);
                for (i, c) in cmds.into_iter().enumerate() {
                    let c = mandate::domain::ExternalCommand::new(c).expect("no engine actor");
                    let ok = engine.execute(c).await.is_ok();
                    if i == 2 && expect_refused == 1 {
                        assert!(!ok, "a denied approval was used");
                        continue;
                    }
                    tally.sent += 1;
                    if !ok {
                        break;
                    }
                    tally.accepted += 1;
                }
                continue;
            }
        };
        let command = cmd.command.clone();
        tally.sent += 1;
        // Refusals the model does not foresee (a renew past a parent's
        // renewed end, a wide delegation under a narrowed parent) are
        // counted, not failed: the tally below must show most accepted.
        let cmd = mandate::domain::ExternalCommand::new(cmd).expect("no engine actor");
        let Ok(r) = engine.execute(cmd).await else {
            continue;
        };
        tally.accepted += 1;
        match (command, r.mandate) {
            (Command::Issue(_), Some(id)) => {
                if let Step::Issue { mission } = s {
                    model.mandates.push(Held {
                        id,
                        grantee: AgentId::new("lead").unwrap(),
                        parent: None,
                        mission: *mission,
                    });
                }
            }
            (Command::Delegate(d), Some(id)) => {
                let mission = model.held(d.parent).map(|p| p.mission).unwrap_or(0);
                model.mandates.push(Held {
                    id,
                    grantee: d.grantee,
                    parent: Some(d.parent),
                    mission,
                });
            }
            (Command::Revoke(c), _) => {
                model.revoked.insert(c.mandate);
            }
            (Command::Pause(c), _) => {
                model.paused.insert(c.mandate);
            }
            (Command::Resume(c), _) => {
                model.paused.remove(&c.mandate);
            }
            (Command::CompleteMission(c), _) => {
                if let Step::CompleteMission(i) = s {
                    model.completed.insert(*i);
                }
                let _ = c;
            }
            _ => {}
        }
    }
    tally
}

/// Adds up the tallies of a property's cases.
#[derive(Default)]
struct Totals(std::sync::Mutex<Tally>);

impl Totals {
    fn add(&self, t: &Tally) {
        let mut all = self.0.lock().unwrap();
        all.sent += t.sent;
        all.accepted += t.accepted;
    }

    /// An engine that refuses what it should accept (or everything) must
    /// not pass: at least three commands in four were accepted.
    fn assert_most_accepted(&self) {
        let all = self.0.lock().unwrap();
        assert!(all.sent > 0, "no command was sent");
        assert!(
            all.accepted * 4 >= all.sent * 3,
            "the engine accepted only {} of {} commands the model expected to be accepted",
            all.accepted,
            all.sent
        );
        eprintln!("accepted {} of {} commands", all.accepted, all.sent);
    }
}

async fn check_rebuild(engine: &Engine, tenant: &TenantId) -> Result<(), TestCaseError> {
    let report = engine
        .rebuild_check()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(
        report.equal,
        "the live projection differs from a rebuild from the log"
    );
    for tree in engine.store().trees_of_tenant(tenant).unwrap() {
        let snap = engine.store().tree(tenant, tree).unwrap().unwrap();
        let history = engine.store().history(tenant, tree).unwrap();
        prop_assert_eq!(
            verify_chain_with_head(snap.tree.id(), &history, snap.tree.head_hash()),
            Ok(())
        );
        let replayed = mandate::domain::replay(tenant.clone(), tree, &history);
        prop_assert_eq!(&replayed, &snap.tree);
    }
    Ok(())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs `cases` random sequences of up to `max_steps` steps, each on the
/// engine and tenant `open` gives for a fresh directory, and checks each
/// against a rebuild; most commands must have been accepted.
fn rebuild_property<Open, Opened>(cases: u32, max_steps: usize, open: Open)
where
    Open: Fn(std::path::PathBuf) -> Opened,
    Opened: std::future::Future<Output = (Engine, TenantId)>,
{
    let totals = Totals::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let result = runner.run(&steps(max_steps), |steps| {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (engine, tenant) = open(dir.path().to_path_buf()).await;
            let tally = run(&engine, &tenant, &steps).await;
            totals.add(&tally);
            // The opening issue at least must be accepted.
            prop_assert!(tally.accepted >= 1, "every command was refused: {tally:?}");
            check_rebuild(&engine, &tenant).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    totals.assert_most_accepted();
}

#[test]
fn embedded_projection_equals_a_rebuild() {
    rebuild_property(32, 40, |dir| async move {
        let engine = Engine::embedded(&dir, EngineConfig::default())
            .await
            .unwrap();
        (engine, TenantId::new("prop").unwrap())
    });
}

/// The server lives for this test only (a static would outlive the process's
/// cleanup and leave nats-server running).
#[test]
fn jetstream_projection_equals_a_rebuild() {
    let server = common::NatsServer::start();
    let client = runtime()
        .block_on(async_nats::connect(server.url()))
        .unwrap();
    rebuild_property(12, 30, |dir| {
        let client = client.clone();
        async move {
            let engine = Engine::nats(client, &dir, Default::default(), EngineConfig::default())
                .await
                .unwrap();
            // One tenant per case: the log is shared, the check covers it all.
            let tenant = TenantId::new(format!(
                "p{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))
            .unwrap();
            (engine, tenant)
        }
    });
}

// ---------------------------------------------------------------------------
// A rebuild replaces the projection only
// ---------------------------------------------------------------------------

/// An administrator's completion of `mission_ref`, in acme.
fn completion(mission_ref: &str) -> Command {
    Command::CompleteMission(CompleteMission {
        mission_ref: mission(mission_ref),
    })
}

/// cfo grants lead a root in acme, for `mission_ref` if given.
fn issue_for(mission_ref: Option<&str>) -> Command {
    Command::Issue(root_issue(
        "cfo",
        "lead",
        mission_ref,
        &["finance:read on reports/**"],
    ))
}

/// The cfo's issue of a root for the completed mission `mission_ref`: it is
/// refused as `invalid_state` (`why`), and the error returned.
async fn refused_issue(engine: &Engine, mission_ref: &str, why: &str) -> EngineError {
    let issue = envelope("acme", principal("cfo"), issue_for(Some(mission_ref)));
    let err = engine.execute(ext(issue)).await.expect_err(why);
    common::wire::assert_invalid_state(&err, why);
    err
}

/// A commit that issues a root in tenant `t`, with the tree it belongs to:
/// decided, encoded, but in no log.
fn issue_commit(t: &str) -> (TreeId, Vec<u8>) {
    let cmd = envelope(t, principal("cfo"), issue_for(None));
    let tree = root_tree_id(&cmd.tenant, cmd.command_id);
    let events = decide(
        &Tree::empty(cmd.tenant.clone(), tree),
        &cmd,
        &Facts::default(),
        Utc::now(),
    )
    .unwrap();
    (tree, Event::encode_commit(&events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_in_place_keeps_the_mission_marks_and_audit_records_the_log_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    let acme = TenantId::new("acme").unwrap();
    // A mission closed before any tree served it: in process, its mark is
    // the only record of that completion.
    engine
        .execute(ext(envelope(
            "acme",
            admin("ops"),
            completion("jira:GONE-1"),
        )))
        .await
        .expect("an administrator may close a mission no tree serves");
    // A check, recorded in the audit.
    let root = engine
        .execute(ext(envelope("acme", principal("cfo"), issue_for(None))))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let check = CheckQuery {
        mandate: root,
        action: "finance:read".into(),
        resource: "reports/q3".into(),
        at: None,
        actor: None,
        consistency: Default::default(),
    };
    engine.check(&acme, &check).await.unwrap();
    assert_eq!(
        engine.audit(&acme, root, 10).await.unwrap().records.len(),
        1
    );
    // The projection holds a tree no log record wrote: to the engine, the
    // log lost it, so a plain rebuild is refused, and the operator's
    // acceptance of the loss rebuilds the projection in place.
    let (stray, commit) = issue_commit("acme");
    let position = engine.log().last_position().await.unwrap() + 1;
    let applied = engine
        .store()
        .apply_commit(&acme, stray, position, &commit, false)
        .unwrap();
    assert!(matches!(applied, Applied::Applied(_)), "{applied:?}");
    let refused = engine
        .rebuild_check()
        .await
        .expect_err("a projection ahead of its log is not rebuilt without the operator's word");
    assert!(
        matches!(
            refused.rejection(),
            Some(mandate::domain::DomainError::LogWentBackwards { .. })
        ),
        "{refused}"
    );
    let (_, released) = engine.accept_log_loss().await.unwrap();
    assert_eq!(released, 1, "the stray tree was the one held");
    assert!(engine.store().tree(&acme, stray).unwrap().is_none());
    assert!(engine.rebuild_check().await.unwrap().equal);
    // The completed mission still refuses new grants,
    let err = refused_issue(&engine, "jira:GONE-1", "a rebuild must not reopen it").await;
    assert!(err.to_string().contains("jira:GONE-1"), "{err}");
    // and the recorded decision is still there.
    assert_eq!(
        engine.audit(&acme, root, 10).await.unwrap().records.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_directory_re_derives_the_mission_marks_from_the_mission_stream() {
    let server = common::NatsServer::start();
    let acme = TenantId::new("acme").unwrap();
    let first = tempfile::tempdir().unwrap();
    let a = common::served::Instance::start(&server.url(), first.path()).await;
    a.engine
        .execute(ext(envelope(
            "acme",
            admin("ops"),
            completion("jira:GONE-2"),
        )))
        .await
        .expect("an administrator may close a mission no tree serves");
    // A's intake is done with it, so the next instance's intake has nothing
    // to hand it: only its marks follower can tell it.
    let nc = async_nats::connect(server.url()).await.unwrap();
    let stream = async_nats::jetstream::new(nc)
        .get_stream(MISSION_STREAM)
        .await
        .unwrap();
    common::fixtures::eventually("the intake acknowledged the completion", || {
        let stream = stream.clone();
        async move {
            // The intake creates its consumer as it starts: not there yet
            // is not done yet.
            let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                stream.get_consumer(MISSION_CONSUMER).await;
            let Ok(mut c) = consumer else { return false };
            let Ok(info) = c.info().await else {
                return false;
            };
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
    a.stop().await;
    // An instance whose data directory is new: its projection is rebuilt
    // from the log, its marks from the mission stream.
    let second = tempfile::tempdir().unwrap();
    let b = common::served::Instance::start(&server.url(), second.path()).await;
    assert!(b.engine.rebuild_check().await.unwrap().equal);
    let e = b.engine.clone();
    common::fixtures::eventually("the marks follower re-derives the mark", || {
        let e = e.clone();
        let acme = acme.clone();
        async move {
            e.store()
                .mission_completed(&acme, &mission("jira:GONE-2"))
                .unwrap()
        }
    })
    .await;
    refused_issue(
        &b.engine,
        "jira:GONE-2",
        "a new instance must not reopen it",
    )
    .await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Records the projection cannot apply
// ---------------------------------------------------------------------------

#[test]
fn a_corrupt_commit_quarantines_its_tree_only_and_names_it() {
    let store = Store::temporary().unwrap();
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    let (bad_tree, good) = issue_commit("acme");
    assert!(matches!(
        store.apply_commit(&acme, bad_tree, 1, &good, true).unwrap(),
        Applied::Applied(_)
    ));
    // Garbage is quarantined, naming tree and position.
    let applied = store
        .apply_commit(&acme, bad_tree, 2, b"not json", true)
        .unwrap();
    let Applied::Quarantined(q) = applied else {
        panic!("{applied:?}")
    };
    assert_eq!(q.position, 2);
    assert!(
        q.reason.contains(&bad_tree.to_string()) && q.reason.contains("position 2"),
        "{q:?}"
    );
    assert_eq!(store.quarantined(&acme, bad_tree).unwrap(), Some(q.clone()));
    // Once quarantined, the tree takes nothing but its resolution: other
    // records are passed over (the head moves, the state does not).
    assert_eq!(
        store.apply_commit(&acme, bad_tree, 3, &good, true).unwrap(),
        Applied::PassedOver
    );
    let snap = store.tree(&acme, bad_tree).unwrap().unwrap();
    assert_eq!((snap.position, snap.tree.version()), (3, 1));
    assert_eq!(snap.tree.quarantine(), Some(&q));
    // A commit that breaks a healthy tree's chain (seq 1 again) is caught too.
    let (chain_tree, first) = issue_commit("acme");
    store
        .apply_commit(&acme, chain_tree, 4, &first, true)
        .unwrap();
    let applied = store
        .apply_commit(&acme, chain_tree, 5, &first, true)
        .unwrap();
    let Applied::Quarantined(q) = applied else {
        panic!("{applied:?}")
    };
    assert!(q.reason.contains("seq 1"), "{q:?}");
    // Other tenants' trees go on, and the checkpoint moved past the bad record.
    let (other, commit) = issue_commit("globex");
    assert!(matches!(
        store
            .apply_commit(&globex, other, 6, &commit, true)
            .unwrap(),
        Applied::Applied(_)
    ));
    assert!(store.quarantined(&globex, other).unwrap().is_none());
    assert_eq!(store.checkpoint().unwrap(), 6);
    // The quarantined tree kept its last good state.
    assert_eq!(
        store.tree(&acme, bad_tree).unwrap().unwrap().tree.version(),
        1
    );
}

#[test]
fn a_newer_schema_version_holds_the_tree_without_quarantine_until_it_can_be_read() {
    let store = Store::temporary().unwrap();
    let acme = TenantId::new("acme").unwrap();
    let (tree, good) = issue_commit("acme");
    let newer = br#"[{"schema_version": 2, "type": "mandate_issued"}]"#;
    // A commit this build cannot read yet is not corruption,
    let applied = store.apply_commit(&acme, tree, 1, newer, true).unwrap();
    assert!(matches!(applied, Applied::Unsupported(_)), "{applied:?}");
    assert!(store.quarantined(&acme, tree).unwrap().is_none());
    assert_eq!(store.unsupported(&acme, tree).unwrap().unwrap().version, 2);
    assert_eq!(
        store.unsupported_trees().unwrap(),
        vec![(acme.clone(), tree)]
    );
    // nothing after it is applied out of order,
    let applied = store.apply_commit(&acme, tree, 2, &good, true).unwrap();
    assert!(matches!(applied, Applied::Unsupported(_)), "{applied:?}");
    assert!(store.tree(&acme, tree).unwrap().is_none());
    // and once the record at that position reads (as it does for a newer
    // build), the mark goes and the tree moves on.
    let applied = store.apply_commit(&acme, tree, 1, &good, true).unwrap();
    assert!(matches!(applied, Applied::Applied(_)), "{applied:?}");
    assert!(store.unsupported(&acme, tree).unwrap().is_none());
    assert!(store.unsupported_trees().unwrap().is_empty());
}
