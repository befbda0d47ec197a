//! Offboarding: Alice leaves the company. Every agent acting on her authority,
//! across all her missions, stops; agents acting for Bob carry on.
//!
//! Run: `cargo run --example offboarding`.

#[path = "shared/mod.rs"]
mod shared;

use chrono::Duration;
use mandate::client::guard::GuardHub;
use mandate::client::{Guard, GuardConfig};
use mandate::domain::{Actor, AgentId, PrincipalId};
use shared::{issued, root, Embedded, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let acme = Embedded::start().await?;
    let hub = GuardHub::new();
    let mut guards = Vec::new();
    for (principal, agent, purpose) in [
        ("alice", "mail-triage", "Triage Alice's inbox"),
        ("alice", "expense-bot", "File Alice's expenses"),
        ("alice", "calendar-bot", "Schedule Alice's Q4 reviews"),
        ("bob", "report-writer", "Draft Bob's board report"),
    ] {
        let client = acme.client(Actor::Principal(PrincipalId::new(principal)?));
        let grant = "workspace:* on users/**";
        let issue = root(principal, agent, purpose, None, grant, Duration::days(30))?;
        let m = issued(&client, issue).await?;
        let agent_client = acme.client(Actor::Agent(AgentId::new(agent)?));
        guards.push((
            principal,
            agent,
            Guard::start(agent_client, &hub, m, GuardConfig::default()).await?,
        ));
    }

    let hr = acme.client(Actor::Admin(PrincipalId::new("hr-system")?));
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
    acme.stop().await?;
    Ok(())
}
