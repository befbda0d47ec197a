//! How one command line runs: who acts and in which tenant, which engine
//! answers (the server of `--nats`, the engine a running `serve` announced
//! in `--data`, or the in-process one), then the command.

use super::args::{Cli, Cmd};
use super::bootstrap::{self, BootstrapError, Discovered, PrivateServer};
use super::exit::{invalid, Exit, Failure};
use super::parse::{self, mandate_id, parse_actor};
use super::{commands, demo, mcp, queries, serve, watch};
use crate::client::{Client, ClientError, MissionPublisher};
use crate::domain::{Actor, AgentId, TenantId};
use crate::engine::{Engine, EngineConfig};

/// The actor a query without `--actor` is sent as; never used for a command.
const UNNAMED_CALLER: &str = "unnamed-caller";

/// Runs the CLI; returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    match run_inner(cli).await {
        Ok(exit) => exit.code(),
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.code
        }
    }
}

async fn run_inner(cli: Cli) -> Result<Exit, Failure> {
    if let Cmd::Keys(super::args::KeysCmd::Keygen { out }) = &cli.command {
        let public_key = commands::keygen(out)?;
        if cli.json {
            say!(
                "{}",
                serde_json::json!({"file": out, "public_key": public_key})
            );
        } else {
            say!("{public_key}");
        }
        return Ok(Exit::Ok);
    }
    if let Cmd::TokenKeygen { out } = &cli.command {
        let kid = crate::engine::tokens::write_new_key(out).map_err(|e| invalid(e.to_string()))?;
        if cli.json {
            say!("{}", serde_json::json!({"file": out, "kid": kid}));
        } else {
            say!("{kid}");
        }
        return Ok(Exit::Ok);
    }
    let tenant = acting_tenant(&cli)?;
    let actor = actor(&cli)?;
    match reach(&cli).await? {
        Reach::Private(server, nc) => over_nats(&cli, nc, Some(server), tenant, actor).await,
        Reach::Nats(nc) => over_nats(&cli, nc, None, tenant, actor).await,
        Reach::InProcess => in_process(&cli, tenant, actor).await,
    }
}

/// The tenant a command acts in; `serve` reads --tenant as a list of tenants
/// to serve instead (see `serve`).
fn acting_tenant(cli: &Cli) -> Result<TenantId, Failure> {
    let acting = match cli.command {
        Cmd::Serve { .. } => None,
        _ => cli.tenant.as_deref(),
    };
    parse::tenant(acting.unwrap_or("default"))
}

/// Who acts: `--actor`, required by every command that changes authority.
fn actor(cli: &Cli) -> Result<Actor, Failure> {
    match (&cli.actor, cli.command.changes_authority()) {
        (Some(a), _) => parse_actor(a),
        (None, Some(name)) => Err(invalid(format!(
            "{name} changes authority: say who acts with --actor <principal|agent|admin>:<id> or set MANDATE_ACTOR"
        ))),
        (None, None) if matches!(cli.command, Cmd::Token { .. }) => Err(invalid(
            "a token goes to the mandate's grantee, its principal or an administrator: say who asks with --actor <agent|principal|admin>:<id> or set MANDATE_ACTOR",
        )),
        // A query without an actor: it reads, and never acts, as this
        // caller. The demo's steps each act as their own party.
        (None, None) => Ok(Actor::Agent(parse::valid(AgentId::new(UNNAMED_CALLER))?)),
    }
}

/// Where a command runs.
enum Reach {
    /// A NATS server: `--nats`, or the one a running `serve` announced.
    Nats(async_nats::Client),
    /// `serve` without `--nats`: its own private server.
    Private(PrivateServer, async_nats::Client),
    /// The in-process engine: the one in `--data`, or the demo's own.
    InProcess,
}

/// Without --nats: `serve` runs a private nats-server; another command uses
/// the engine a running `serve` announced in --data, else the in-process
/// one (see `bootstrap`). The demo keeps its own data.
async fn reach(cli: &Cli) -> Result<Reach, Failure> {
    match (&cli.command, &cli.connection.nats) {
        (_, Some(_)) => Ok(Reach::Nats(connect(cli).await?)),
        (Cmd::Demo, None) => Ok(Reach::InProcess),
        (Cmd::Serve { .. }, None) => {
            let server = PrivateServer::start(&cli.data).await?;
            let nc = server.connect().await?;
            Ok(Reach::Private(server, nc))
        }
        (_, None) => match bootstrap::discover(&cli.data).await? {
            Discovered::Served(_) if matches!(cli.command, Cmd::Rebuild { .. }) => {
                Err(BootstrapError::RebuildWhileServed(cli.data.clone()).into())
            }
            Discovered::Served(nc) => Ok(Reach::Nats(nc)),
            Discovered::InProcess => Ok(Reach::InProcess),
        },
    }
}

/// A connection to the server of `--nats`, with the connection flags
/// (credentials, TLS, inbox prefix).
async fn connect(cli: &Cli) -> Result<async_nats::Client, Failure> {
    let refused = |e: crate::client::ConnectError| match e {
        crate::client::ConnectError::Connect { .. } => {
            Failure::new(Exit::Unavailable, e.to_string())
        }
        _ => invalid(e.to_string()),
    };
    match cli.connection.to_connect().map_err(refused)? {
        Some(settings) => settings.connect().await.map_err(refused),
        None => Err(invalid("no NATS URL given (--nats)".to_string())),
    }
}

/// A command on an engine served over NATS, or `serve` itself (on
/// `private`, the server it started, if any).
async fn over_nats(
    cli: &Cli,
    nc: async_nats::Client,
    private: Option<PrivateServer>,
    tenant: TenantId,
    actor: Actor,
) -> Result<Exit, Failure> {
    match &cli.command {
        Cmd::Serve {
            auth,
            allow_open_tenants,
            ..
        } => {
            let (auth, open) = (auth.as_deref(), *allow_open_tenants);
            return serve::serve(cli, nc, private, tenant, auth, open).await;
        }
        Cmd::Rebuild { accept_log_loss } => {
            let config = EngineConfig::default();
            let engine = Engine::nats(nc, &cli.data, Default::default(), config)
                .await
                .map_err(|e| bootstrap::explain_serve_open_error(&cli.data, e))?;
            return serve::rebuild(&engine, *accept_log_loss, cli.json).await;
        }
        _ => {}
    }
    let client = Client::nats(nc.clone(), tenant.clone(), actor);
    let client = match &cli.secret {
        Some(secret) => client.with_secret(secret.as_bytes()),
        None => client,
    };
    let client = match (&cli.signing_key, &cli.key_id) {
        (Some(file), Some(id)) => client.with_signing_key(
            parse::valid(crate::domain::KeyId::new(id.as_str()))?,
            commands::read_signing_key(file)?,
        ),
        _ => client,
    };
    let missions = MissionPublisher::Nats(Box::new(async_nats::jetstream::new(nc)));
    command(cli, &tenant, client, missions).await
}

/// A command on the in-process engine, which runs only as long as it does.
async fn in_process(cli: &Cli, tenant: TenantId, actor: Actor) -> Result<Exit, Failure> {
    // The demo keeps its own throwaway data.
    let demo_dir = matches!(cli.command, Cmd::Demo).then(|| {
        std::env::temp_dir().join(format!("mandate-demo-{}", uuid::Uuid::new_v4().simple()))
    });
    let dir = demo_dir.clone().unwrap_or_else(|| cli.data.clone());
    // The demo signs its tokens with a key that dies with it.
    let config = match cli.command {
        Cmd::Demo => EngineConfig {
            tokens: Some(std::sync::Arc::new(
                crate::engine::tokens::TokenKeys::ephemeral()?,
            )),
            ..EngineConfig::default()
        },
        _ => EngineConfig::default(),
    };
    let engine = Engine::embedded(&dir, config)
        .await
        .map_err(|e| bootstrap::explain_open_error(&dir, e))?;
    if let Cmd::Rebuild { accept_log_loss } = cli.command {
        return serve::rebuild(&engine, accept_log_loss, cli.json).await;
    }
    let background = engine.start();
    let client = Client::local(engine.clone(), tenant.clone(), actor);
    let exit = command(cli, &tenant, client, MissionPublisher::Local(engine)).await;
    background.stop().await?;
    if let Some(dir) = demo_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    exit
}

/// Runs the command through `client`.
async fn command(
    cli: &Cli,
    tenant: &TenantId,
    client: Client,
    missions: MissionPublisher,
) -> Result<Exit, Failure> {
    match &cli.command {
        // They need the engine itself (see `over_nats`, `in_process`).
        Cmd::Serve { .. } | Cmd::Rebuild { .. } => unreachable!("handled before"),
        Cmd::Demo => {
            // The engine's answers keep their exit codes (no engine serving
            // is unavailable, 4); the demo's own failures are internal.
            demo::run(client, missions)
                .await
                .map_err(|e| match e.downcast::<ClientError>() {
                    Ok(e) => Failure::from(*e),
                    Err(e) => Failure::new(Exit::Internal, e.to_string()),
                })?;
            Ok(Exit::Ok)
        }
        Cmd::Watch {
            mandate,
            until_ended,
        } => {
            watch::watch(
                &client,
                tenant,
                mandate_id(mandate)?,
                cli.json,
                *until_ended,
            )
            .await
        }
        Cmd::McpGateway(args) => mcp::gateway(client, args, cli.actor.is_some()).await,
        Cmd::Issue(args) => commands::issue(&client, args, cli.json).await,
        Cmd::Delegate(args) => commands::delegate(&client, args, cli.json).await,
        cmd if cmd.changes_authority().is_some() => commands::change(&client, cmd, cli.json).await,
        cmd => queries::query(&client, cmd, cli.actor.is_some(), cli.json).await,
    }
}
