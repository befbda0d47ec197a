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

use super::render::{deny_text, grants_text};
use crate::client::guard::GuardHub;
use crate::client::{Client, Guard, GuardConfig, MissionPublisher};
use crate::domain::command::{Delegate, Issue};
use crate::domain::{
    Actor, AgentId, Decision, MandateId, Mission, MissionRef, PrincipalId, Scope, TenantId,
};
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
    say!("Mandate demo: the ghost-execution story (tenant {tenant}, mission {mission})\n");
    let chain = grant(&client, &tl, &mission).await?;
    let agents = start_agents(&client, &tl, &chain).await?;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let pulled_at = Utc::now();
    let d = pull(&client, chain.fetcher, None).await?;
    tl.say(
        "fetcher",
        format!("pulls {FINANCIALS}: {:?} (engine check)", d.outcome),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let completed_at = complete(&tl, &missions, &tenant, &mission, agents).await?;

    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = pull(&client, chain.fetcher, None).await?;
    tl.say(
        "fetcher",
        format!(
            "tries {FINANCIALS} again: {:?} — {}",
            again.outcome,
            deny_text(&again)
        ),
    );

    audit(&client, chain.fetcher, pulled_at, completed_at).await?;
    if pull(&client, chain.fetcher, None).await?.is_allowed() {
        return Err("the fetcher was still allowed after the mission completed".into());
    }
    say!("\nThe fetcher was refused after the mission completed.");
    Ok(())
}

/// The story's mandates: the cfo's root to the research lead, and the two
/// delegations below it.
struct Chain {
    root: MandateId,
    analyst: MandateId,
    fetcher: MandateId,
}

/// The cfo grants the research lead a root for `mission`; the lead
/// delegates to the analyst, the analyst to the fetcher.
async fn grant(client: &Client, tl: &Timeline, mission: &MissionRef) -> Result<Chain, Error> {
    let cfo = client.as_actor(Actor::Principal(id::<PrincipalId>("cfo")));
    let lead_id: AgentId = id("research-lead");
    let analyst_id: AgentId = id("analyst");
    let fetcher_id: AgentId = id("fetcher");
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
    let root = root.mandate.ok_or("issue returned no mandate")?;
    tl.say(
        "cfo",
        format!("issues mandate {root} to research-lead for {mission} (8h)"),
    );

    let lead = client.as_actor(Actor::Agent(lead_id));
    let analyst = delegate(&lead, root, &analyst_id, "finance:read on reports/q3/*").await?;
    tl.say(
        "research-lead",
        format!("delegates {analyst} to analyst: finance:read on reports/q3/*"),
    );
    let analyst_client = client.as_actor(Actor::Agent(analyst_id));
    let fetcher = delegate(
        &analyst_client,
        analyst,
        &fetcher_id,
        "finance:read on reports/q3/financials",
    )
    .await?;
    tl.say(
        "analyst",
        format!("delegates {fetcher} to fetcher: finance:read on reports/q3/financials"),
    );
    Ok(Chain {
        root,
        analyst,
        fetcher,
    })
}

/// An agent at work under its guard: its name, and its task.
type Agent = (&'static str, tokio::task::JoinHandle<(u32, Instant)>);

/// Each holder of the chain starts its guard and goes to work.
async fn start_agents(client: &Client, tl: &Timeline, chain: &Chain) -> Result<Vec<Agent>, Error> {
    let hub = GuardHub::new();
    let config = GuardConfig::default();
    let mut agents = Vec::new();
    for (name, mandate) in [
        ("research-lead", chain.root),
        ("analyst", chain.analyst),
        ("fetcher", chain.fetcher),
    ] {
        let agent_client = client.as_actor(Actor::Agent(id(name)));
        let guard = Guard::start(agent_client, &hub, mandate, config.clone()).await?;
        tl.say(name, "guard started: subscribed to its chain, state read");
        agents.push((name, tokio::spawn(agent_work(guard))));
    }
    Ok(agents)
}

/// The ticket system completes `mission`; every agent stops. Returns when
/// the completion was published.
async fn complete(
    tl: &Timeline,
    missions: &MissionPublisher,
    tenant: &TenantId,
    mission: &MissionRef,
    agents: Vec<Agent>,
) -> Result<DateTime<Utc>, Error> {
    tl.say(
        "ticket system",
        format!("the board approved the deal: {mission} resolved"),
    );
    let completed = Instant::now();
    let completed_at = Utc::now();
    missions
        .completed(
            tenant,
            mission,
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
    Ok(completed_at)
}

/// The auditor's questions: was the fetcher's pull at `pulled_at` allowed,
/// and would it be after `completed_at`; on whose authority.
async fn audit(
    client: &Client,
    fetcher: MandateId,
    pulled_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
) -> Result<(), Error> {
    say!("\nAuditor: on whose authority did the fetcher pull the Q3 financials, and was it still valid?");
    for (label, at) in [
        ("while the mission ran", pulled_at),
        (
            "after the deal closed",
            completed_at + chrono::Duration::milliseconds(50),
        ),
    ] {
        let d = pull(client, fetcher, Some(at)).await?;
        say!(
            "  at {} ({label}): {:?} — {}",
            both(at),
            d.outcome,
            deny_text(&d)
        );
    }
    let chain = client.chain(fetcher, Some(pulled_at)).await?;
    say!("  authority chain:");
    for link in &chain.chain {
        say!(
            "    {} → agent {} (on behalf of {}), scope {}",
            link.grantor,
            link.grantee,
            link.on_behalf_of,
            grants_text(&link.scope)
        );
    }
    Ok(())
}

/// What the fetcher pulls.
const FINANCIALS: &str = "reports/q3/financials";

/// The engine's answer to the fetcher reading the Q3 financials under
/// `mandate`, now or `at` a past moment.
async fn pull(
    client: &Client,
    mandate: MandateId,
    at: Option<DateTime<Utc>>,
) -> Result<Decision, Error> {
    Ok(client
        .check(mandate, "finance:read", FINANCIALS, at)
        .await?)
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
                if guard.check("finance:read", FINANCIALS).is_allowed() {
                    steps += 1;
                }
            }
        }
    }
}
