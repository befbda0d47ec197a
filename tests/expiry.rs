//! The expiry scheduler on the embedded engine: expired events are written
//! for every due mandate this instance serves, however many due entries it
//! cannot act on stand before them in the queue. Time is the engine's manual
//! clock, moved by the test: nothing sleeps until a mandate is due.

use std::time::Duration;

use chrono::Utc;
use mandate::domain::command::Issue;
use mandate::domain::{
    Actor, AgentId, Command, CommandEnvelope, CommandId, ExternalCommand, MandateId, Mission,
    PrincipalId, Scope, Status, TenantId, SCHEMA_VERSION,
};
use mandate::engine::{Clock, Engine, EngineConfig};

fn issue(tenant: &TenantId, not_after: chrono::DateTime<Utc>) -> ExternalCommand {
    let cfo = PrincipalId::new("cfo").unwrap();
    ExternalCommand::new(CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: tenant.clone(),
        actor: Actor::Principal(cfo.clone()),
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command: Command::Issue(Issue {
            principal: cfo,
            grantee: AgentId::new("lead").unwrap(),
            mission: Mission {
                purpose: "expire soon".into(),
                mission_ref: None,
            },
            scope: Scope::parse(["reports:read on reports/**"]).unwrap(),
            not_after,
            depth: 1,
            step_up: Vec::new(),
            supervisors: Vec::new(),
        }),
    })
    .expect("no engine actor")
}

async fn own_status(engine: &Engine, tenant: &TenantId, mandate: MandateId) -> Status {
    engine
        .status(tenant, mandate, None)
        .await
        .expect("status")
        .mandate
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_entries_this_instance_does_not_serve_never_starve_the_ones_it_does() {
    // Given an instance serving only globex, whose expiry queue holds more
    // due entries of another tenant (acme) than one page, all due before
    // globex's one,
    let dir = tempfile::tempdir().unwrap();
    let globex = TenantId::new("globex").unwrap();
    let acme = TenantId::new("acme").unwrap();
    let clock = Clock::manual(Utc::now());
    let engine = Engine::embedded(
        dir.path(),
        EngineConfig {
            tenants: vec![globex.clone()],
            clock: clock.clone(),
            // Only the move of the clock can wake the scheduler in time.
            expiry_tick: Duration::from_secs(3600),
            ..EngineConfig::default()
        },
    )
    .await
    .unwrap();
    // (all of them end in half an hour of the engine's clock, which stands
    // still while they are issued; real time never gets there),
    let soon = clock.now() + chrono::Duration::minutes(30);
    for _ in 0..300 {
        engine.execute(issue(&acme, soon)).await.unwrap();
    }
    let ours = engine
        .execute(issue(&globex, soon))
        .await
        .unwrap()
        .mandate
        .unwrap();
    let background = engine.start();
    assert_eq!(own_status(&engine, &globex, ours).await, Status::Active);
    // when the clock passes them all and the scheduler runs,
    clock.advance(chrono::Duration::hours(1));
    // then globex's mandate gets its `expired` event (the move wakes the
    // scheduler; the deadline only bounds a broken run).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = own_status(&engine, &globex, ours).await;
        if status == Status::Expired {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "globex's due mandate was never expired (its own status is {status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // and acme's entries, which this instance does not serve, were left alone.
    let theirs = engine
        .store()
        .due_expiries(clock.now(), None, 1000)
        .unwrap();
    assert_eq!(theirs.len(), 300);
    assert!(theirs.iter().all(|e| e.tenant == acme));
    background.stop().await.unwrap();
}
