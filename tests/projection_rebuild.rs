//! Invariant 6 against the real stores: random command sequences run through
//! the engine (embedded log, and JetStream on a real nats-server); then the
//! projection is rebuilt from the log and must equal the live one, and every
//! tree's hash chain must verify against its recorded head.

mod common;

use std::sync::OnceLock;

use chrono::Utc;
use mandate::domain::command::{Change, CompleteMission, Delegate, Issue, Narrow, Renew};
use mandate::domain::{
    verify_chain_with_head, Actor, AgentId, Command, CommandEnvelope, CommandId, MandateId,
    Mission, MissionRef, PrincipalId, Scope, TenantId, SCHEMA_VERSION,
};
use mandate::engine::{Engine, EngineConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Issue { mission: u8 },
    Delegate { parent: u8, agent: u8, narrow: bool },
    Pause(u8),
    Resume(u8),
    Revoke { target: u8, by_grantee: bool },
    Narrow(u8),
    Renew(u8),
    CompleteMission(u8),
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
    ]
}

/// Always opens with an issue, so every case has at least one tree.
fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..max).prop_map(|mut v| {
        v.insert(0, Step::Issue { mission: 0 });
        v
    })
}

fn envelope(tenant: &TenantId, actor: Actor, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: tenant.clone(),
        actor,
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command,
    }
}

fn admin() -> Actor {
    Actor::Admin(PrincipalId::new("admin").unwrap())
}

/// Runs the steps; refusals are expected and ignored (they change nothing).
async fn run(engine: &Engine, tenant: &TenantId, steps: &[Step]) {
    let mut mandates: Vec<(MandateId, AgentId)> = Vec::new();
    let pick = |i: u8, m: &Vec<(MandateId, AgentId)>| {
        (!m.is_empty()).then(|| m[i as usize % m.len()].clone())
    };
    for s in steps {
        let cmd = match s {
            Step::Issue { mission } => envelope(
                tenant,
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
                    scope: Scope::parse(["finance:* on reports/**", "deals:read on deals/*"])
                        .unwrap(),
                    not_after: Utc::now() + chrono::Duration::hours(1),
                    depth: 3,
                    step_up: vec![],
                    supervisors: vec![],
                }),
            ),
            Step::Delegate {
                parent,
                agent,
                narrow,
            } => {
                let Some((p, holder)) = pick(*parent, &mandates) else {
                    continue;
                };
                let grant = if *narrow {
                    "finance:read on reports/q3/*"
                } else {
                    "finance:* on reports/**"
                };
                envelope(
                    tenant,
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
                let Some((m, _)) = pick(*i, &mandates) else {
                    continue;
                };
                let c = Change {
                    mandate: m,
                    reason: None,
                };
                envelope(
                    tenant,
                    admin(),
                    if matches!(s, Step::Pause(_)) {
                        Command::Pause(c)
                    } else {
                        Command::Resume(c)
                    },
                )
            }
            Step::Revoke { target, by_grantee } => {
                let Some((m, holder)) = pick(*target, &mandates) else {
                    continue;
                };
                let actor = if *by_grantee {
                    Actor::Agent(holder)
                } else {
                    admin()
                };
                envelope(
                    tenant,
                    actor,
                    Command::Revoke(Change {
                        mandate: m,
                        reason: Some("prop".into()),
                    }),
                )
            }
            Step::Narrow(i) => {
                let Some((m, _)) = pick(*i, &mandates) else {
                    continue;
                };
                envelope(
                    tenant,
                    admin(),
                    Command::Narrow(Narrow {
                        mandate: m,
                        scope: Scope::parse(["finance:read on reports/q3/*"]).unwrap(),
                    }),
                )
            }
            Step::Renew(i) => {
                let Some((m, _)) = pick(*i, &mandates) else {
                    continue;
                };
                envelope(
                    tenant,
                    admin(),
                    Command::Renew(Renew {
                        mandate: m,
                        not_after: Utc::now() + chrono::Duration::minutes(30),
                    }),
                )
            }
            Step::CompleteMission(i) => envelope(
                tenant,
                admin(),
                Command::CompleteMission(CompleteMission {
                    mission_ref: MissionRef::new(format!("m:{tenant}-{i}")).unwrap(),
                }),
            ),
        };
        let grantee = match &cmd.command {
            Command::Issue(i) => Some(i.grantee.clone()),
            Command::Delegate(d) => Some(d.grantee.clone()),
            _ => None,
        };
        let cmd = mandate::domain::ExternalCommand::new(cmd).expect("no engine actor");
        if let Ok(r) = engine.execute(cmd).await {
            if let (Some(m), Some(g)) = (r.mandate, grantee) {
                mandates.push((m, g));
            }
        }
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
            verify_chain_with_head(snap.tree.id, &history, snap.tree.head_hash.as_deref()),
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn embedded_projection_equals_a_rebuild(steps in steps(40)) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::embedded(dir.path(), EngineConfig::default()).await.unwrap();
            let tenant = TenantId::new("prop").unwrap();
            run(&engine, &tenant, &steps).await;
            check_rebuild(&engine, &tenant).await
        })?;
    }
}

/// The server lives for this test only (a static would outlive the process's
/// cleanup and leave nats-server running).
#[test]
fn jetstream_projection_equals_a_rebuild() {
    let server = common::NatsServer::start();
    let client = runtime()
        .block_on(async_nats::connect(server.url()))
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let result = runner.run(&steps(30), |steps| {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::nats(
                client.clone(),
                dir.path(),
                Default::default(),
                EngineConfig::default(),
            )
            .await
            .unwrap();
            // One tenant per case: the log is shared, the check covers it all.
            let tenant = TenantId::new(format!(
                "p{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))
            .unwrap();
            run(&engine, &tenant, &steps).await;
            check_rebuild(&engine, &tenant).await
        })
    });
    drop(server);
    if let Err(e) = result {
        panic!("{e}");
    }
}
