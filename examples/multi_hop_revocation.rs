//! Multi-hop revocation: A delegates to B, B to C. Revoking A's mandate stops
//! C: its guard denies and the task C had in flight is cancelled — without
//! anyone telling C directly.
//!
//! Run: `cargo run --example multi_hop_revocation`.

#[path = "shared/mod.rs"]
mod shared;

use std::time::{Duration, Instant};

use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig};
use mandate::domain::command::{Delegate, Issue};
use mandate::domain::{Actor, AgentId, PrincipalId, Scope};
use shared::{issued, root, Embedded, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let acme = Embedded::start().await?;
    let as_ = |actor: Actor| acme.client(actor);
    let owner = as_(Actor::Principal(PrincipalId::new("ops-lead")?));

    let a = issued(
        &owner,
        Issue {
            depth: 2,
            ..root(
                "ops-lead",
                "agent-a",
                "Rotate the staging certificates",
                None,
                "certs:* on staging/**",
                chrono::Duration::hours(2),
            )?
        },
    )
    .await?;
    let b = delegate(
        &as_(Actor::Agent(AgentId::new("agent-a")?)),
        a,
        "agent-b",
        "certs:* on staging/web/**",
    )
    .await?;
    let c = delegate(
        &as_(Actor::Agent(AgentId::new("agent-b")?)),
        b,
        "agent-c",
        "certs:rotate on staging/web/*",
    )
    .await?;
    println!("A {a}\n└─ B {b}\n   └─ C {c}");

    let guard = Guard::start(
        as_(Actor::Agent(AgentId::new("agent-c")?)),
        &GuardHub::new(),
        c,
        GuardConfig::default(),
    )
    .await?;
    assert!(guard.check("certs:rotate", "staging/web/api").is_allowed());
    let cancel = guard.cancellation();
    let in_flight = tokio::spawn(async move {
        // C's long-running rotation, which must stop when authority ends.
        tokio::select! {
            _ = cancel.cancelled() => "cancelled",
            _ = tokio::time::sleep(Duration::from_secs(30)) => "finished",
        }
    });

    let t = Instant::now();
    owner.revoke(a, Some("change window closed".into())).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(5), in_flight).await??;
    println!(
        "revoked A; C's in-flight task was {outcome} after {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let d = guard.check("certs:rotate", "staging/web/api");
    println!("C's guard now says {:?} ({:?})", d.outcome, d.reason);
    if outcome != "cancelled" || d.is_allowed() {
        return Err("C kept its authority after A was revoked".into());
    }
    acme.stop().await?;
    Ok(())
}

async fn delegate(
    from: &Client,
    parent: mandate::domain::MandateId,
    to: &str,
    grant: &str,
) -> Result<mandate::domain::MandateId, Error> {
    Ok(from
        .delegate(Delegate {
            parent,
            grantee: AgentId::new(to)?,
            scope: Scope::parse([grant])?,
            not_after: None,
            depth: None,
            step_up: vec![],
            supervisors: vec![],
        })
        .await?
        .mandate
        .ok_or("no mandate")?)
}
