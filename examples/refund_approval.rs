//! Support refunds with step-up approval: a support agent may read tickets
//! and draft replies on its own, but a refund needs a person's approval. The
//! approval is bound to the one refund (ticket and parameters), works once,
//! and a replay is refused.
//!
//! Run: `cargo run --example refund_approval`.

#[path = "shared/mod.rs"]
mod shared;

use chrono::Duration;
use mandate::domain::{ActionPattern, Actor, AgentId, Outcome, PrincipalId};
use serde_json::json;
use shared::{issued, root, Embedded, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let acme = Embedded::start().await?;
    let carol = acme.client(Actor::Principal(PrincipalId::new("carol")?));
    let agent = acme.client(Actor::Agent(AgentId::new("support-bot")?));

    let mut issue = root(
        "carol",
        "support-bot",
        "Answer support tickets",
        None,
        "tickets:read on tickets/**",
        Duration::hours(8),
    )?;
    issue.scope = mandate::domain::Scope::parse([
        "tickets:read on tickets/**",
        "tickets:reply on tickets/**",
        "payments:refund on tickets/**",
    ])?;
    issue.step_up = vec![ActionPattern::parse("payments:refund")?];
    let m = issued(&carol, issue).await?;

    // Reading and drafting need no one.
    for action in ["tickets:read", "tickets:reply"] {
        let d = agent.check(m, action, "tickets/T-1042", None).await?;
        assert_eq!(d.outcome, Outcome::Allow, "{action} is allowed on its own");
        println!("{action:<16} tickets/T-1042: allow");
    }

    // A refund without approval is not allowed.
    let refund = json!({"amount_cents": 4999, "currency": "EUR", "order": "O-77"});
    let d = agent
        .check(m, "payments:refund", "tickets/T-1042", None)
        .await?;
    assert_eq!(d.outcome, Outcome::NeedsApproval, "a refund needs approval");
    println!("payments:refund  tickets/T-1042: needs approval");
    let err = agent
        .use_approval(
            m,
            uuid::Uuid::now_v7(),
            "payments:refund",
            "tickets/T-1042",
            &refund,
        )
        .await
        .expect_err("a refund without an approval is denied");
    assert_eq!(err.reason(), Some("unknown_approval"));
    println!("  refund without approval: denied ({err})");

    // The agent asks; Carol approves this one refund.
    let (approval, _) = agent
        .request_approval(
            m,
            "payments:refund",
            "tickets/T-1042",
            &refund,
            None,
            Some("customer was charged twice".into()),
        )
        .await?;
    println!("  approval {approval} requested");
    let err = agent
        .use_approval(m, approval, "payments:refund", "tickets/T-1042", &refund)
        .await
        .expect_err("a pending approval allows nothing");
    assert_eq!(err.reason(), Some("approval_pending"));
    carol
        .approve(m, approval, Some("refund approved".into()))
        .await?;
    println!("  approval {approval} granted by carol");

    // Another amount is not what Carol approved.
    let bigger = json!({"amount_cents": 49990, "currency": "EUR", "order": "O-77"});
    let err = agent
        .use_approval(m, approval, "payments:refund", "tickets/T-1042", &bigger)
        .await
        .expect_err("other parameters are refused");
    assert_eq!(err.reason(), Some("approval_mismatch"));
    println!("  refund of another amount: denied ({err})");

    // Allowed once...
    agent
        .use_approval(m, approval, "payments:refund", "tickets/T-1042", &refund)
        .await?;
    println!("  refund with approval: allowed (approval used)");

    // ...and denied on replay.
    let err = agent
        .use_approval(m, approval, "payments:refund", "tickets/T-1042", &refund)
        .await
        .expect_err("a replayed approval is refused");
    assert_eq!(err.reason(), Some("approval_used"));
    println!("  replay of the approval: denied ({err})");

    // A check stays `needs_approval`: only the engine's use allows.
    let d = agent
        .check(m, "payments:refund", "tickets/T-1042", None)
        .await?;
    assert_eq!(d.outcome, Outcome::NeedsApproval);

    acme.stop().await?;
    Ok(())
}
