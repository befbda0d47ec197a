//! What the embedded examples share: an engine of their own, and how a
//! principal grants a root mandate. Each example includes it with
//! `#[path = ...] mod shared;`; it is no example of its own.

use chrono::Utc;
use mandate::client::Client;
use mandate::domain::command::Issue;
use mandate::domain::{
    Actor, AgentId, MandateId, Mission, MissionRef, PrincipalId, Scope, TenantId,
};
use mandate::engine::{BackgroundGuard, Engine, EngineConfig};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// An embedded engine in a temporary directory, with its background tasks
/// (expiry, signals) running; the examples act in its tenant acme.
pub struct Embedded {
    pub engine: Engine,
    background: BackgroundGuard,
    _dir: tempfile::TempDir,
}

impl Embedded {
    pub async fn start() -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let engine = Engine::embedded(dir.path(), EngineConfig::default()).await?;
        let background = engine.start();
        Ok(Self {
            engine,
            background,
            _dir: dir,
        })
    }

    pub fn tenant(&self) -> TenantId {
        TenantId::new("acme").expect("a valid tenant")
    }

    /// A client in process, acting as `actor`.
    pub fn client(&self, actor: Actor) -> Client {
        Client::local(self.engine.clone(), self.tenant(), actor)
    }

    /// Stops the background tasks (the projection is flushed).
    pub async fn stop(self) -> Result<(), Error> {
        Ok(self.background.stop().await?)
    }
}

/// `principal` grants `grant` to `agent` for `purpose` (and for the ticket
/// `ticket`, if any) until `ttl` from now; the agent may delegate one level
/// below it. Set `depth` on the result for more.
pub fn root(
    principal: &str,
    agent: &str,
    purpose: &str,
    ticket: Option<&str>,
    grant: &str,
    ttl: chrono::Duration,
) -> Result<Issue, Error> {
    Ok(Issue {
        principal: PrincipalId::new(principal)?,
        grantee: AgentId::new(agent)?,
        mission: Mission {
            purpose: purpose.into(),
            mission_ref: ticket.map(MissionRef::new).transpose()?,
        },
        scope: Scope::parse([grant])?,
        not_after: Utc::now() + ttl,
        depth: 1,
        step_up: vec![],
        supervisors: vec![],
    })
}

/// Issues `issue` as `client`: the id of the new mandate.
pub async fn issued(client: &Client, issue: Issue) -> Result<MandateId, Error> {
    Ok(client.issue(issue).await?.mandate.ok_or("no mandate")?)
}
