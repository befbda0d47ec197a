//! Replies an outside client reads, over a real nats-server and raw NATS: a
//! body of another tenant than its subject is refused naming both tenants
//! (also for an issue, whose tree does not exist yet), and a check of an
//! unknown mandate names no tree.

mod common;

use common::served::Instance;
use common::NatsServer;
use mandate::domain::command::Issue;
use mandate::domain::{
    Actor, AgentId, Command, CommandEnvelope, CommandId, Mission, PrincipalId, Scope, TenantId,
    SCHEMA_VERSION,
};
use mandate::protocol::{command_subject, query_subject};
use serde_json::Value;
use std::time::Duration;

async fn request(nc: &async_nats::Client, subject: String, body: Vec<u8>) -> Value {
    // The engine may still be subscribing: ask again until it answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            nc.request(subject.clone(), body.clone().into()),
        )
        .await
        {
            Ok(Ok(msg)) => return serde_json::from_slice(&msg.payload).expect("a JSON reply"),
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no reply on {subject}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_mismatch_names_both_tenants_and_an_unknown_check_names_no_tree() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let instance = Instance::start(&server.url(), dir.path()).await;
    let nc = async_nats::connect(server.url()).await.unwrap();

    // An issue whose body says globex, sent on acme's subject.
    let issue = CommandEnvelope {
        command_id: CommandId::generate(),
        tenant: TenantId::new("globex").unwrap(),
        actor: Actor::Principal(PrincipalId::new("cfo").unwrap()),
        correlation_id: None,
        schema_version: SCHEMA_VERSION,
        command: Command::Issue(Issue {
            principal: PrincipalId::new("cfo").unwrap(),
            grantee: AgentId::new("lead").unwrap(),
            mission: Mission {
                purpose: "mismatch".into(),
                mission_ref: None,
            },
            scope: Scope::parse(["finance:read on reports/**"]).unwrap(),
            not_after: chrono::Utc::now() + chrono::Duration::hours(1),
            depth: 1,
            step_up: vec![],
            supervisors: vec![],
        }),
    };
    let acme = TenantId::new("acme").unwrap();
    let reply = request(
        &nc,
        command_subject(&acme, "issue"),
        serde_json::to_vec(&issue).unwrap(),
    )
    .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    assert_eq!(reply["error"]["reason"], "tenant_mismatch", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "the command names tenant globex but was sent on a subject of tenant acme"
    );

    // A check of a mandate that does not exist: a deny naming no tree.
    let unknown = "0190f5e2-7c1a-7b3e-9d2a-4f6b8c0d1e2f";
    let reply = request(
        &nc,
        query_subject(&acme, "check"),
        serde_json::to_vec(&serde_json::json!({
            "mandate": unknown,
            "action": "finance:read",
            "resource": "reports/q3",
        }))
        .unwrap(),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let decision = &reply["result"];
    assert_eq!(decision["outcome"], "deny", "{reply}");
    assert_eq!(decision["reason"]["kind"], "unknown_mandate", "{reply}");
    assert_eq!(decision["mandate"], unknown, "{reply}");
    assert!(decision.get("tree").is_none(), "{reply}");
    instance.stop().await;
}
