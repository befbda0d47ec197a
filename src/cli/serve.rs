//! `mandate serve` (on the server of `--nats`, or on a private one: see
//! `bootstrap`), `mandate rebuild`, and the shutdown signal both wait for.

use std::path::Path;

use super::args::{Cli, Cmd};
use super::bootstrap::{self, PrivateServer};
use super::exit::{invalid, Exit, Failure};
use super::parse;
use super::render;
use crate::domain::TenantId;
use crate::engine::auth::AuthConfig;
use crate::engine::{Engine, EngineConfig};

/// Serves the engine on `nc` until Ctrl-C or SIGTERM: on the server of
/// `--nats`, or on `private` (which then also ends it when it dies).
/// `tenant` is the tenant the private server's readiness probe asks, unless
/// `--tenant` lists the tenants to serve.
pub(super) async fn serve(
    cli: &Cli,
    nc: async_nats::Client,
    private: Option<PrivateServer>,
    tenant: TenantId,
    auth: Option<&Path>,
    allow_open_tenants: bool,
) -> Result<Exit, Failure> {
    let tenants = cli
        .tenant
        .as_deref()
        .map(parse::tenants)
        .transpose()?
        .unwrap_or_default();
    let beacon_interval = match &cli.command {
        Cmd::Serve {
            beacon_interval, ..
        } => parse::parse_interval(beacon_interval)
            .map_err(|e| invalid(format!("--beacon-interval: {}", e.message)))?,
        _ => EngineConfig::default().beacon_interval,
    };
    let config = EngineConfig {
        tenants,
        beacon_interval,
        auth: auth
            .map(AuthConfig::load)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?
            .map(std::sync::Arc::new),
        // A private server is one user's, on loopback: its tenants are open
        // (and `serve` says so loudly).
        allow_open_tenants: allow_open_tenants || private.is_some(),
        ..EngineConfig::default()
    };
    let Some(server) = private else {
        let engine = Engine::nats(nc, &cli.data, Default::default(), config).await?;
        tracing::info!(data = %cli.data.display(), "engine starting");
        engine.serve(shutdown_signal()).await?;
        return Ok(Exit::Ok);
    };
    let probe = config.tenants.first().cloned().unwrap_or(tenant);
    let dir = bootstrap::engine_dir(&cli.data);
    let engine = Engine::nats(nc.clone(), &dir, Default::default(), config).await?;
    tracing::info!(data = %dir.display(), url = %server.url(), "engine starting");
    server.run(&engine, nc, probe).await?;
    Ok(Exit::Ok)
}

/// Rebuilds the projection from the log and compares it with the live one:
/// internal (6) when they differ.
pub(super) async fn rebuild(
    engine: &Engine,
    accept_log_loss: bool,
    json: bool,
) -> Result<Exit, Failure> {
    let started = std::time::Instant::now();
    if accept_log_loss {
        let (records, held) = engine.accept_log_loss().await?;
        say!("log loss accepted: {held} held trees released; rebuilt {records} log records from the log as it is");
        return Ok(Exit::Ok);
    }
    let report = engine.rebuild_check().await?;
    render::rebuild(&report, started.elapsed().as_secs_f64(), json);
    Ok(if report.equal {
        Exit::Ok
    } else {
        Exit::Internal
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
