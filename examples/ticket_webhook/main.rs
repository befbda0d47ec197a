//! The ticketing webhook adapter, run against the embedded engine: a mandate
//! for `jira:FIN-42` is issued, the tracker posts "FIN-42 is Done", and the
//! mandate is completed.
//!
//! Run: `cargo run --example ticket_webhook`.

mod adapter;

use chrono::Utc;
use mandate::client::{Client, MissionPublisher};
use mandate::domain::command::Issue;
use mandate::domain::{Actor, AgentId, Mission, MissionRef, PrincipalId, Scope, Status, TenantId};
use mandate::engine::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::embedded(dir.path(), EngineConfig::default()).await?;
    let background = engine.start();
    let tenant = TenantId::new("acme")?;
    let cfo = Client::local(
        engine.clone(),
        tenant.clone(),
        Actor::Principal(PrincipalId::new("cfo")?),
    );
    let m = cfo
        .issue(Issue {
            principal: PrincipalId::new("cfo")?,
            grantee: AgentId::new("research-lead")?,
            mission: Mission {
                purpose: "Evaluate Acme".into(),
                mission_ref: Some(MissionRef::new("jira:FIN-42")?),
            },
            scope: Scope::parse(["finance:read on reports/**"])?,
            not_after: Utc::now() + chrono::Duration::hours(8),
            depth: 2,
            step_up: vec![],
            supervisors: vec![],
        })
        .await?
        .mandate
        .ok_or("no mandate")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(adapter::serve(
        listener,
        MissionPublisher::Local(engine.clone()),
        tenant.clone(),
    ));
    println!("webhook adapter listening on http://{addr}/webhook");

    let (code, body) = adapter::post(
        addr,
        "/webhook",
        r#"{"issue":{"key":"FIN-42","fields":{"status":{"name":"In Progress"}}}}"#,
    )
    .await?;
    println!("tracker: FIN-42 In Progress → {code} {body}");
    let (code, body) = adapter::post(
        addr,
        "/webhook",
        r#"{"issue":{"key":"FIN-42","fields":{"status":{"name":"Done"}}}}"#,
    )
    .await?;
    println!("tracker: FIN-42 Done → {code} {body}");
    let status = cfo.status(m, None).await?;
    println!("mandate {m} is now {}", status.effective.status);
    if code != 202 || status.effective.status != Status::Completed {
        return Err("the resolved ticket did not complete the mission".into());
    }
    background.stop().await?;
    Ok(())
}
