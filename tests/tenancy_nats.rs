//! Tenancy at the edges: command ids are scoped by tenant on both logs (the
//! JetStream stream on a real nats-server, and the embedded sled log).

mod common;

use chrono::Utc;
use common::NatsServer;
use mandate::domain::command::{Delegate, Issue};
use mandate::domain::{
    Actor, AgentId, Command, CommandEnvelope, CommandId, Mission, PrincipalId, Scope, TenantId,
    SCHEMA_VERSION,
};
use mandate::engine::{Engine, EngineConfig};
use mandate::log::JetStreamConfig;
use mandate::protocol::{CommandResult, TreeQuery};

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn envelope(t: &TenantId, id: CommandId, actor: Actor, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        command_id: id,
        tenant: t.clone(),
        actor,
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command,
    }
}

fn issue(t: &TenantId, id: CommandId, grantee: &str) -> CommandEnvelope {
    envelope(
        t,
        id,
        Actor::Principal(PrincipalId::new("cfo").unwrap()),
        Command::Issue(Issue {
            principal: PrincipalId::new("cfo").unwrap(),
            grantee: AgentId::new(grantee).unwrap(),
            mission: Mission {
                purpose: format!("work of {t}"),
                mission_ref: None,
            },
            scope: Scope::parse(["reports:read on reports/**"]).unwrap(),
            not_after: Utc::now() + chrono::Duration::hours(1),
            depth: 2,
            step_up: vec![],
            supervisors: vec![],
        }),
    )
}

fn delegate(
    t: &TenantId,
    id: CommandId,
    holder: &str,
    parent: mandate::domain::MandateId,
) -> CommandEnvelope {
    envelope(
        t,
        id,
        Actor::Agent(AgentId::new(holder).unwrap()),
        Command::Delegate(Delegate {
            parent,
            grantee: AgentId::new("helper").unwrap(),
            scope: Scope::parse(["reports:read on reports/q3/**"]).unwrap(),
            not_after: None,
            depth: None,
            step_up: vec![],
            supervisors: vec![],
        }),
    )
}

fn written(r: &CommandResult, who: &str) -> mandate::domain::MandateId {
    assert!(
        !r.duplicate,
        "{who}'s first command was reported a duplicate: {r:?}"
    );
    assert_eq!(r.commits.len(), 1, "{who} wrote no commit: {r:?}");
    r.mandate.expect("the command names its mandate")
}

/// Two tenants use the same command ids, for an issue and then for a
/// delegation: each writes its own commit, gets its own mandate, and neither
/// can see the other's.
async fn same_command_id_in_two_tenants(engine: &Engine) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    let root_id = CommandId::generate();
    let child_id = CommandId::generate();

    // Given tenant A has issued and delegated with these command ids,
    let ra = engine
        .execute(issue(&a, root_id, "lead-a"))
        .await
        .expect("tenant A issues");
    let root_a = written(&ra, "tenant A");
    let ca = engine
        .execute(delegate(&a, child_id, "lead-a", root_a))
        .await
        .expect("tenant A delegates");
    let child_a = written(&ca, "tenant A");

    // when tenant B sends other commands under the same ids,
    let issue_b = issue(&b, root_id, "lead-b");
    let rb = engine
        .execute(issue_b.clone())
        .await
        .expect("tenant B issues with a command id tenant A used");
    let root_b = written(&rb, "tenant B");
    let cb = engine
        .execute(delegate(&b, child_id, "lead-b", root_b))
        .await
        .expect("tenant B delegates with a command id tenant A used");
    let child_b = written(&cb, "tenant B");

    // then each got its own mandates and commits,
    assert_ne!(root_a, root_b, "two tenants share a root mandate id");
    assert_ne!(child_a, child_b, "two tenants share a delegated mandate id");
    assert_ne!(ra.commits[0].tree, rb.commits[0].tree);
    assert_ne!(ra.commits[0].position, rb.commits[0].position);
    assert_ne!(ca.commits[0].position, cb.commits[0].position);
    for (result, t) in [(&rb, &b), (&cb, &b), (&ra, &a), (&ca, &a)] {
        for e in &result.commits[0].events {
            assert_eq!(&e.tenant, t, "a commit carries another tenant's event");
        }
    }
    let status_b = engine
        .status(&b, root_b, None)
        .await
        .expect("tenant B reads its root");
    assert_eq!(status_b.mandate.grantee.as_str(), "lead-b");
    // and neither sees the other's.
    for (t, foreign) in [(&b, root_a), (&b, child_a), (&a, root_b), (&a, child_b)] {
        assert!(
            engine.status(t, foreign, None).await.is_err(),
            "tenant {t} sees mandate {foreign} of the other tenant"
        );
    }
    let history_b = engine
        .history(
            &b,
            &TreeQuery {
                tree: Some(rb.commits[0].tree),
                mandate: None,
                at: None,
            },
        )
        .await
        .expect("tenant B reads its history");
    assert_eq!(history_b.events.len(), 2);
    assert!(history_b.events.iter().all(|e| e.tenant == b));

    // A retry by either tenant is still a duplicate of its own command.
    let again = engine.execute(issue_b).await.expect("tenant B retries");
    assert!(again.duplicate, "a retry wrote again: {again:?}");
    assert_eq!(again.mandate, Some(root_b));
}

#[tokio::test]
async fn command_ids_are_scoped_by_tenant_on_jetstream() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = async_nats::connect(server.url()).await.unwrap();
    let engine = Engine::nats(
        nc,
        dir.path(),
        JetStreamConfig::default(),
        EngineConfig::default(),
    )
    .await
    .unwrap();
    same_command_id_in_two_tenants(&engine).await;
}

#[tokio::test]
async fn command_ids_are_scoped_by_tenant_on_the_embedded_log() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    same_command_id_in_two_tenants(&engine).await;
}
