//! `mandate mcp-gateway`: an MCP proxy between an agent and an MCP server
//! that checks every tool call, resource read and prompt against a mandate
//! with the agent guard ([`crate::client::Guard`]).
//!
//! The gateway starts the server's command as its child, speaks MCP to it
//! over the child's stdio as a client (the official Rust SDK, `rmcp`), and
//! serves MCP to the agent over its own stdio, or over streamable HTTP with
//! `--http`. It lives in the `cli` module because only the binary needs it:
//! the SDK alone (`client` feature) pulls in no MCP crate.
//!
//! # Layout
//! - `mapping`: requests as actions and resources (pure, unit-tested).
//! - `refusal`: the structured errors the agent gets instead.
//! - `proxy`: the MCP server toward the agent, the guard, and the requests
//!   in flight toward the server.

mod mapping;
mod proxy;
mod refusal;

use std::net::SocketAddr;

use clap::Args;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService, TokioChildProcess};
use rmcp::ServiceExt;

use super::exit::{invalid, Exit, Failure};
use super::parse::{mandate_id, parse_interval};
use super::serve::shutdown_signal;
use crate::client::guard::GuardHub;
use crate::client::{Client, Guard, GuardConfig};
use crate::domain::Actor;
use mapping::{derive_server_name, Mapping};
use proxy::Gateway;

/// The arguments of `mcp-gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// The mandate the agent acts under (its id, a UUID).
    #[arg(long, value_name = "ID")]
    pub mandate: String,
    /// The `<server>` segment of the actions (`mcp:<server>:<tool>`).
    /// Default: the command's program name without extension, or for a
    /// runner such as python3, node, npx or uvx, that of its first
    /// argument that is not a flag (`python3 files.py` → `files`).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Which tool argument names the resource a call acts on: `ARG` for
    /// every tool without its own (default `path`), `TOOL=ARG` for one tool
    /// (repeat). Its value must be a canonical relative path
    /// (`reports/q3.txt`); a call without it is refused.
    #[arg(long = "resource-arg", value_name = "[TOOL=]ARG")]
    pub resource_args: Vec<String>,
    /// Serve the agent over streamable HTTP on this address (e.g.
    /// 127.0.0.1:8931, endpoint `/mcp`) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// How long the guard may go without hearing the engine before it
    /// refuses every call (several times the engine's beacon interval).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub lease: String,
    /// The MCP server's command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs the gateway until the agent goes away (stdio) or Ctrl-C / SIGTERM
/// (HTTP). A mandate that ends does not stop it: from then on it refuses
/// every request, so the agent learns why.
///
/// `actor_named` says whether the caller named an actor (`--actor`): the
/// gateway requests and uses step-up approvals as that actor, else as the
/// mandate's grantee (the agent it serves).
pub(super) async fn gateway(
    client: Client,
    args: &GatewayArgs,
    actor_named: bool,
) -> Result<Exit, Failure> {
    let mandate = mandate_id(&args.mandate)?;
    let server = match &args.server_name {
        Some(name) => name.clone(),
        None => derive_server_name(&args.command).ok_or_else(|| {
            invalid(format!(
                "cannot derive a server name from the command {:?}: give --server-name",
                args.command.join(" ")
            ))
        })?,
    };
    let mapping = Mapping::new(&server, &args.resource_args).map_err(invalid)?;
    let lease = parse_interval(&args.lease)?;

    // The chain first: an unknown mandate is refused before any server runs.
    let mandates = client.chain(mandate, None).await?.mandates;
    let chain: Vec<String> = mandates.iter().map(|m| m.id().to_string()).collect();
    // Approvals are requested and used by the mandate's grantee.
    let approvals = match mandates.last() {
        Some(held) if !actor_named => client.as_actor(Actor::Agent(held.grantee().clone())),
        _ => client.clone(),
    };
    let hub = GuardHub::new();
    let config = GuardConfig {
        lease,
        ..GuardConfig::default()
    };
    let guard = Guard::start(client, &hub, mandate, config).await?;

    let mut command = tokio::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]).kill_on_drop(true);
    let transport = TokioChildProcess::new(command).map_err(|e| {
        Failure::new(
            Exit::Unavailable,
            format!("cannot start the MCP server {:?}: {e}", args.command[0]),
        )
    })?;
    let upstream = ().serve(transport).await.map_err(|e| {
        Failure::new(
            Exit::Unavailable,
            format!(
                "the MCP server {:?} did not complete the MCP handshake: {e}",
                args.command.join(" ")
            ),
        )
    })?;
    let gateway = Gateway::new(guard, approvals, chain, mapping, upstream.peer().clone());
    tracing::info!(%mandate, server = %server, "MCP gateway ready");

    // Say once, on stderr, when the mandate ends.
    let watcher = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway.ended().cancelled().await;
            eprintln!(
                "mandate {mandate} has ended ({}): every call in flight is cancelled, and every request is refused from now on",
                gateway.end_text()
            );
        })
    };
    let served = match args.http {
        None => serve_stdio(gateway).await,
        Some(addr) => serve_http(gateway, addr).await,
    };
    watcher.abort();
    let _ = upstream.cancel().await;
    served
}

/// Serves one agent on this process's stdio until it closes.
async fn serve_stdio(gateway: Gateway) -> Result<Exit, Failure> {
    let running = gateway
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| invalid(format!("the agent did not complete the MCP handshake: {e}")))?;
    let stop = shutdown_signal();
    tokio::select! {
        r = running.waiting() => {
            r.map_err(|e| Failure::new(Exit::Internal, format!("the agent session failed: {e}")))?;
        }
        _ = stop => {}
    }
    Ok(Exit::Ok)
}

/// Serves agents over streamable HTTP on `addr` (endpoint `/mcp`) until
/// Ctrl-C or SIGTERM.
async fn serve_http(gateway: Gateway, addr: SocketAddr) -> Result<Exit, Failure> {
    let config = StreamableHttpServerConfig::default();
    let stopping = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        move || Ok(gateway.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    let router = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new(Exit::Unavailable, format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    // The address actually bound (port 0 picks one), for whoever started us.
    eprintln!("mcp-gateway listening on http://{bound}/mcp");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stopping.cancel();
        })
        .await
        .map_err(|e| Failure::new(Exit::Internal, format!("the HTTP server failed: {e}")))?;
    Ok(Exit::Ok)
}
