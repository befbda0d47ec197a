//! `mandate demo`: the ghost-execution story on the real engine.
//!
//! A CFO grants a research lead a mandate to evaluate an acquisition
//! (mission `jira:FIN-42`). The lead delegates to an analyst, the analyst to a
//! fetcher that pulls the Q3 financials. The board approves the deal and the
//! ticket is resolved. Without Mandate, the fetcher's token is still valid and
//! it keeps pulling financials minutes later: a ghost execution. With Mandate,
//! the completion ends the root, every guard below hears it at once, and the
//! fetcher is refused.

use std::time::{Duration, Instant};

use chrono::{DateTime, Local, Utc};

use crate::client::guard::GuardHub;
use crate::client::{Client, Guard, GuardConfig, MissionPublisher};
use crate::domain::command::{Delegate, Issue};
use crate::domain::{Actor, AgentId, MandateId, Mission, MissionRef, PrincipalId, Scope, TenantId};
use crate::protocol::MissionCompletedNotice;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    // Only called with the literals below, which are valid ids.
    s.parse().expect("demo ids are valid")
}

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        say!("{ms:>9.1} ms  {who:<16} {}", what.as_ref());
    }
}

fn both(t: DateTime<Utc>) -> String {
    format!(
        "{} local / {} UTC",
        t.with_timezone(&Local).format("%H:%M:%S%.3f"),
        t.format("%H:%M:%S%.3f")
    )
}

/// Runs the story against an engine reached through `client` (whose actor is
/// irrelevant: each step acts as its own party) and prints the timeline.
pub async fn run(client: Client, missions: MissionPublisher) -> Result<(), Error> {
    let tl = Timeline {
        start: Instant::now(),
    };
    let tenant: TenantId = client.tenant().clone();
    let mission: MissionRef = MissionRef::new(format!(
        "jira:FIN-42-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    ))?;
    let cfo = client.as_actor(Actor::Principal(id::<PrincipalId>("cfo")));
    let lead_id: AgentId = id("research-lead");
    let analyst_id: AgentId = id("analyst");
    let fetcher_id: AgentId = id("fetcher");

    say!("Mandate demo: the ghost-execution story (tenant {tenant}, mission {mission})\n");
    let root = cfo
        .issue(Issue {
            principal: id("cfo"),
            grantee: lead_id.clone(),
            mission: Mission {
                purpose: "Evaluate the acquisition of Acme Corp".into(),
                mission_ref: Some(mission.clone()),
            },
            scope: Scope::parse(["finance:read on reports/**", "deals:* on deals/acme/**"])?,
            not_after: Utc::now() + chrono::Duration::hours(8),
            depth: 3,
            step_up: vec!["deals:sign".parse()?],
            supervisors: vec![],
        })
        .await?;
    let root_id = root.mandate.ok_or("issue returned no mandate")?;
    tl.say(
        "cfo",
        format!("issues mandate {root_id} to research-lead for {mission} (8h)"),
    );

    let lead = client.as_actor(Actor::Agent(lead_id.clone()));
    let analyst_m = delegate(&lead, root_id, &analyst_id, "finance:read on reports/q3/*").await?;
    tl.say(
        "research-lead",
        format!("delegates {analyst_m} to analyst: finance:read on reports/q3/*"),
    );
    let analyst = client.as_actor(Actor::Agent(analyst_id.clone()));
    let fetcher_m = delegate(
        &analyst,
        analyst_m,
        &fetcher_id,
        "finance:read on reports/q3/financials",
    )
    .await?;
    tl.say(
        "analyst",
        format!("delegates {fetcher_m} to fetcher: finance:read on reports/q3/financials"),
    );

    let hub = GuardHub::new();
    let config = GuardConfig::default();
    let mut agents = Vec::new();
    for (name, mandate) in [
        ("research-lead", root_id),
        ("analyst", analyst_m),
        ("fetcher", fetcher_m),
    ] {
        let agent_client = client.as_actor(Actor::Agent(id(name)));
        let guard = Guard::start(agent_client, &hub, mandate, config.clone()).await?;
        tl.say(name, "guard started: subscribed to its chain, state read");
        agents.push((name, tokio::spawn(agent_work(guard))));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let pulled_at = Utc::now();
    let d = client
        .check(fetcher_m, "finance:read", "reports/q3/financials", None)
        .await?;
    tl.say(
        "fetcher",
        format!(
            "pulls reports/q3/financials: {:?} (engine check)",
            d.outcome
        ),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    tl.say(
        "ticket system",
        format!("the board approved the deal: {mission} resolved"),
    );
    let completed = Instant::now();
    let completed_at = Utc::now();
    missions
        .completed(
            &tenant,
            &mission,
            &MissionCompletedNotice {
                source: Some("https://tickets.example/FIN-42".into()),
                reason: Some("board approved the deal".into()),
            },
        )
        .await?;

    let mut last_stop = Duration::ZERO;
    for (name, task) in agents {
        let (steps, stopped_at) = task.await?;
        let after = stopped_at.saturating_duration_since(completed);
        last_stop = last_stop.max(after);
        tl.say(
            name,
            format!(
                "stopped after {steps} steps of work, {:.2} ms after the completion",
                after.as_secs_f64() * 1000.0
            ),
        );
    }
    tl.say(
        "engine",
        format!(
            "completion → last agent stopped: {:.2} ms",
            last_stop.as_secs_f64() * 1000.0
        ),
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = client
        .check(fetcher_m, "finance:read", "reports/q3/financials", None)
        .await?;
    tl.say(
        "fetcher",
        format!(
            "tries reports/q3/financials again: {:?} — {}",
            again.outcome,
            crate::cli::deny_text(&again)
        ),
    );

    say!("\nAuditor: on whose authority did the fetcher pull the Q3 financials, and was it still valid?");
    for (label, at) in [
        ("while the mission ran", pulled_at),
        (
            "after the deal closed",
            completed_at + chrono::Duration::milliseconds(50),
        ),
    ] {
        let d = client
            .check(fetcher_m, "finance:read", "reports/q3/financials", Some(at))
            .await?;
        say!(
            "  at {} ({label}): {:?} — {}",
            both(at),
            d.outcome,
            crate::cli::deny_text(&d)
        );
    }
    let chain = client.chain(fetcher_m, Some(pulled_at)).await?;
    say!("  authority chain:");
    for link in &chain.chain {
        say!(
            "    {} → agent {} (on behalf of {}), scope {}",
            link.grantor,
            link.grantee,
            link.on_behalf_of,
            link.scope
                .grants()
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let after = client
        .check(fetcher_m, "finance:read", "reports/q3/financials", None)
        .await?;
    if after.is_allowed() {
        return Err("the fetcher was still allowed after the mission completed".into());
    }
    say!("\nThe fetcher was refused after the mission completed.");
    Ok(())
}

async fn delegate(
    from: &Client,
    parent: MandateId,
    to: &AgentId,
    grant: &str,
) -> Result<MandateId, Error> {
    let r = from
        .delegate(Delegate {
            parent,
            grantee: to.clone(),
            scope: Scope::parse([grant])?,
            not_after: None,
            depth: None,
            step_up: vec![],
            supervisors: vec![],
        })
        .await?;
    Ok(r.mandate.ok_or("delegate returned no mandate")?)
}

/// Simulated work: a step every 20 ms while the guard allows, until the
/// cancellation fires. Returns the steps done and when it stopped.
async fn agent_work(guard: Guard) -> (u32, Instant) {
    let cancel = guard.cancellation();
    let mut steps = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return (steps, Instant::now()),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if guard.check("finance:read", "reports/q3/financials").is_allowed() {
                    steps += 1;
                }
            }
        }
    }
}
