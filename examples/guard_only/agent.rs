//! An agent that depends on the SDK alone: built with
//! `--no-default-features --features client`, so without the engine, sled or
//! clap (what `mandate = { default-features = false, features = ["client"] }`
//! gives an agent's own crate).
//!
//! ```text
//! guard_only <nats-url> <tenant> <mandate> <action> <resource>
//! ```
//!
//! Starts a [`Guard`] on the mandate, prints `guarding` with its first
//! answer for the action, then waits for the mandate to end. Exits 0 when a
//! revoke cancelled it (printing the answer again, now a denial); 1 on
//! anything else. `scripts/test.sh` runs it against `mandate serve`.

use std::process::ExitCode;
use std::time::Duration;

use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig, GuardState};
use mandate::domain::{Actor, AgentId, MandateId, Status, TenantId};

/// How long to wait for the revoke before giving up.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("guard_only: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, tenant, mandate, action, resource] = args.as_slice() else {
        return Err("usage: guard_only <nats-url> <tenant> <mandate> <action> <resource>".into());
    };
    let tenant = TenantId::new(tenant.as_str()).map_err(|e| e.to_string())?;
    let mandate = MandateId::parse(mandate).map_err(|e| e.to_string())?;
    let actor = Actor::Agent(AgentId::new("guard-only").map_err(|e| e.to_string())?);
    let nats = async_nats::connect(url.as_str())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let client = Client::nats(nats, tenant, actor);
    let guard = Guard::start(client, &GuardHub::new(), mandate, GuardConfig::default())
        .await
        .map_err(|e| format!("cannot start the guard on {mandate}: {e}"))?;
    let decision = guard.check(action, resource);
    println!(
        "guarding {mandate}: {:?}, {action} on {resource}: {:?}",
        guard.state(),
        decision.outcome
    );

    if tokio::time::timeout(WAIT, guard.cancellation().cancelled())
        .await
        .is_err()
    {
        return Err(format!("{mandate} was not ended within {WAIT:?}"));
    }
    let decision = guard.check(action, resource);
    println!(
        "cancelled {mandate}: {:?}, {action} on {resource}: {:?}",
        guard.state(),
        decision.outcome
    );
    Ok(
        if guard.state() == GuardState::Terminated(Status::Revoked) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
