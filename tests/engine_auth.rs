//! Invariant 9, second half: where a tenant requires it, the actor of a
//! command is authenticated (a `Mandate-Auth` HMAC over subject and body),
//! never taken on the body's word. Against a real nats-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::served::Instance;
use common::NatsServer;
use mandate::client::Client;
use mandate::domain::command::Issue;
use mandate::domain::{Actor, AgentId, ErrorCode, Mission, PrincipalId, Scope, TenantId};
use mandate::engine::auth::{sign, AuthConfig, AUTH_HEADER};
use mandate::engine::EngineConfig;
use mandate::log::EventLog;

fn issue() -> Issue {
    Issue {
        principal: PrincipalId::new("cfo").unwrap(),
        grantee: AgentId::new("lead").unwrap(),
        mission: Mission {
            purpose: "auth test".into(),
            mission_ref: None,
        },
        scope: Scope::parse(["finance:read on reports/**"]).unwrap(),
        not_after: Utc::now() + chrono::Duration::hours(1),
        depth: 2,
        step_up: vec![],
        supervisors: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_a_tenant_that_requires_it_must_prove_their_actor() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let auth: AuthConfig = serde_json::from_str(
        r#"{"tenants": {"acme": {"keys": {"principal:cfo": "cfo-secret", "agent:lead": "lead-secret"}}}}"#,
    )
    .unwrap();
    let nc = async_nats::connect(server.url()).await.unwrap();
    let instance = Instance::start_with(
        &server.url(),
        dir.path(),
        EngineConfig {
            auth: Some(Arc::new(auth)),
            ..EngineConfig::default()
        },
    )
    .await;
    let engine = instance.engine.clone();
    let acme = TenantId::new("acme").unwrap();
    let cfo = Actor::Principal(PrincipalId::new("cfo").unwrap());
    let unsigned = Client::nats(nc.clone(), acme.clone(), cfo.clone())
        .with_timeout(Duration::from_millis(500));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while unsigned.health().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = engine.log().last_position().await.unwrap();

    // No proof: refused, nothing written.
    let err = unsigned.issue(issue()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert_eq!(err.reason(), Some("not_authenticated"), "{err}");
    assert!(err.to_string().contains(AUTH_HEADER), "{err}");
    // A wrong secret, or the right secret claimed for another actor: refused.
    let wrong = unsigned.clone().with_secret("guess");
    assert_eq!(
        wrong.issue(issue()).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    let lead_as_cfo = unsigned.clone().with_secret("lead-secret");
    assert_eq!(
        lead_as_cfo.issue(issue()).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        engine.log().last_position().await.unwrap(),
        before,
        "a refused command wrote something"
    );

    // A body changed after signing is refused (the MAC covers the exact bytes).
    let body = serde_json::json!({
        "command_id": uuid::Uuid::new_v4(), "tenant": "acme", "actor": {"kind": "principal", "id": "cfo"},
        "type": "revoke", "mandate": uuid::Uuid::new_v4()
    });
    let signed_for = serde_json::to_vec(&body).unwrap();
    let header = sign(b"cfo-secret", &cfo, "mandate.cmd.acme.revoke", &signed_for).unwrap();
    let mut tampered = body.clone();
    tampered["type"] = "pause".into();
    let mut h = async_nats::HeaderMap::new();
    h.insert(AUTH_HEADER, header.as_str());
    let reply = nc
        .request_with_headers(
            "mandate.cmd.acme.pause",
            h,
            serde_json::to_vec(&tampered).unwrap().into(),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["error"]["code"], "forbidden", "{v}");

    // The proven actor is served; a replay of the same signed command is a
    // duplicate and writes nothing more.
    let signed = unsigned.clone().with_secret("cfo-secret");
    let cmd = mandate::domain::CommandEnvelope {
        command_id: mandate::domain::CommandId::generate(),
        tenant: acme.clone(),
        actor: cfo.clone(),
        correlation_id: None,
        schema_version: 1,
        command: mandate::domain::Command::Issue(issue()),
    };
    let first = signed.send(&cmd).await.expect("a proven actor is served");
    assert!(!first.duplicate);
    let after_first = engine.log().last_position().await.unwrap();
    let again = signed.send(&cmd).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.mandate, first.mandate);
    assert_eq!(engine.log().last_position().await.unwrap(), after_first);

    // Another tenant that the configuration does not list is not open
    // unless the operator allowed open tenants.
    let unlisted = Client::nats(nc.clone(), TenantId::new("globex").unwrap(), cfo.clone());
    let err = unlisted.issue(issue()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");

    instance.stop().await;
}
