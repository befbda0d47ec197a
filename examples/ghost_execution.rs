//! The ghost-execution story on the embedded engine: a research agent's
//! sub-agents stop the moment the board approves the deal and the ticket is
//! resolved, instead of pulling financials for minutes more.
//!
//! Run: `cargo run --example ghost_execution` (the same story as `mandate demo`).

use mandate::client::{Client, MissionPublisher};
use mandate::domain::{Actor, PrincipalId, TenantId};
use mandate::engine::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::embedded(dir.path(), EngineConfig::default()).await?;
    let background = engine.start();
    let client = Client::local(
        engine.clone(),
        TenantId::new("acme")?,
        Actor::Admin(PrincipalId::new("auditor")?),
    );
    mandate::cli::demo::run(client, MissionPublisher::Local(engine)).await?;
    background.stop().await?;
    Ok(())
}
