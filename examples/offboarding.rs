//! Offboarding: Alice leaves the company. Every agent acting on her authority,
//! across all her missions, stops; agents acting for Bob carry on.
//!
//! Run: `cargo run --example offboarding`.

use chrono::Utc;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig};
use mandate::domain::command::Issue;
use mandate::domain::{Actor, AgentId, Mission, PrincipalId, Scope, TenantId};
use mandate::engine::{Engine, EngineConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::embedded(dir.path(), EngineConfig::default()).await?;
    let background = engine.start();
    let tenant = TenantId::new("acme")?;
    let hub = GuardHub::new();
    let mut guards = Vec::new();
    for (principal, agent, purpose) in [
        ("alice", "mail-triage", "Triage Alice's inbox"),
        ("alice", "expense-bot", "File Alice's expenses"),
        ("alice", "calendar-bot", "Schedule Alice's Q4 reviews"),
        ("bob", "report-writer", "Draft Bob's board report"),
    ] {
        let client = Client::local(
            engine.clone(),
            tenant.clone(),
            Actor::Principal(PrincipalId::new(principal)?),
        );
        let m = client
            .issue(Issue {
                principal: PrincipalId::new(principal)?,
                grantee: AgentId::new(agent)?,
                mission: Mission {
                    purpose: purpose.into(),
                    mission_ref: None,
                },
                scope: Scope::parse(["workspace:* on users/**"])?,
                not_after: Utc::now() + chrono::Duration::days(30),
                depth: 1,
                step_up: vec![],
                supervisors: vec![],
            })
            .await?
            .mandate
            .ok_or("no mandate")?;
        let agent_client = Client::local(
            engine.clone(),
            tenant.clone(),
            Actor::Agent(AgentId::new(agent)?),
        );
        guards.push((
            principal,
            agent,
            Guard::start(agent_client, &hub, m, GuardConfig::default()).await?,
        ));
    }

    let hr = Client::local(
        engine.clone(),
        tenant.clone(),
        Actor::Admin(PrincipalId::new("hr-system")?),
    );
    let result = hr
        .revoke_principal(
            PrincipalId::new("alice")?,
            Some("Alice left the company".into()),
        )
        .await?;
    println!(
        "offboarded alice: {} mandates revoked",
        result.commits.len()
    );

    let mut wrong = Vec::new();
    for (principal, agent, guard) in &guards {
        let cancelled = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            guard.cancellation().cancelled(),
        )
        .await
        .is_ok();
        println!(
            "  {agent:<14} (for {principal}): {}",
            if cancelled {
                "stopped"
            } else {
                "still working"
            }
        );
        if cancelled != (*principal == "alice") {
            wrong.push(*agent);
        }
    }
    if !wrong.is_empty() {
        return Err(format!("wrong outcome for {wrong:?}").into());
    }
    background.stop().await?;
    Ok(())
}
