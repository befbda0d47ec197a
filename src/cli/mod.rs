//! The `mandate` binary: serve, issue, delegate, pause, resume, revoke,
//! complete, status, tree, history, check, watch, rebuild, demo.
//!
//! With `--nats` commands talk to `mandate serve` on that server. Without
//! it, `serve` runs a private nats-server and announces it in `--data`;
//! other commands use the engine announced there, else the embedded engine
//! in `--data` (one process at a time); see `bootstrap`.
//! Exit codes: 0 ok, 1 denied, 2 invalid input, 3 not found, 4 unavailable,
//! 5 refused (forbidden, terminal, wrong state, conflict, quarantined), 6
//! internal. A `check` on a quarantined tree is a deny (1); `status`, `chain`
//! and commands on it are refused (5).
//!
//! Not API. This module is public only because the binary (`src/main.rs`, a
//! crate of its own) calls [`Cli`], [`Cmd`] and [`run`]; its Rust items may
//! change in any release. What is stable is the command line: the commands,
//! their flags, their output (`--json` included) and their exit codes.
//! Programs use [`crate::client`] instead.

/// Prints a line on stdout. A reader gone away (`mandate status X | head
/// -1`) is not an error of the command: the rest of the output is dropped
/// and the command still ends with its own exit code (a denied check still
/// exits 1).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::say_line(format_args!($($arg)*))
    };
}

pub mod bootstrap;
pub mod demo;

/// Set once stdout can no longer be written (its reader has gone away).
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether stdout's reader has gone away: a command that would only go on
/// printing (`watch`) stops.
fn stdout_gone() -> bool {
    STDOUT_GONE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes one line on stdout; see `say!`.
pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write to stdout: {e}");
        }
    }
}

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use clap::{Parser, Subcommand};
use futures::StreamExt;

use crate::client::{Client, ClientError, MissionPublisher};
use crate::domain::command::{Delegate, Issue, Resolution};
use crate::domain::{
    Actor, AgentId, Cause, Decision, DenyReason, ErrorCode, MandateId, Mission, MissionRef,
    Outcome, PrincipalId, Scope, TenantId, Tree,
};
use crate::engine::auth::AuthConfig;
use crate::engine::{Engine, EngineConfig};
use crate::protocol::{ListQuery, TreeQuery};

/// Mandate: the authority of AI agents, held as event streams.
#[derive(Parser, Debug)]
#[command(name = "mandate", version, about, next_help_heading = "Global options")]
pub struct Cli {
    /// NATS server URL. Without it: the engine a `mandate serve` announced
    /// in --data, else the embedded engine there (one process at a time).
    #[arg(long, global = true, env = "MANDATE_NATS")]
    pub nats: Option<String>,
    /// NATS credentials file.
    #[arg(long, global = true, env = "MANDATE_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// Data directory (embedded log and projection, or the serving
    /// instance's projection).
    #[arg(
        long,
        global = true,
        env = "MANDATE_DATA",
        default_value = "mandate-data"
    )]
    pub data: PathBuf,
    /// Tenant to act in (default: `default`). With `serve`: the tenants to
    /// serve, comma-separated (default: all).
    #[arg(long, global = true, env = "MANDATE_TENANT")]
    pub tenant: Option<String>,
    /// Who acts: principal:<id>, agent:<id> or admin:<id>. Required by
    /// every command that changes authority; queries work without it.
    #[arg(long, global = true, env = "MANDATE_ACTOR")]
    pub actor: Option<String>,
    /// The actor's secret, for tenants whose engine requires authenticated
    /// actors (signs every request).
    #[arg(long, global = true, env = "MANDATE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the engine service on NATS (request-reply, queue group).
    Serve {
        /// JSON file naming the tenants that require authenticated actors
        /// and their actors' secrets.
        #[arg(long, env = "MANDATE_AUTH")]
        auth: Option<PathBuf>,
        /// Serve the commands of tenants not listed in --auth without any
        /// proof of their actor (anyone may act as anyone there). Off by
        /// default: such commands are refused.
        #[arg(long)]
        allow_open_tenants: bool,
    },
    /// The ghost-execution story on the real engine, with a timeline.
    Demo,
    /// Issue a root mandate: principal → agent for a mission.
    Issue {
        /// The principal (a person) on whose authority the agent acts; the
        /// actor must be this principal or a tenant administrator.
        #[arg(long, value_name = "ID")]
        principal: String,
        /// The agent that receives the mandate.
        #[arg(long, value_name = "ID")]
        agent: String,
        /// What the mission is for, in words (shown in `tree` and audits).
        #[arg(long, value_name = "TEXT")]
        purpose: String,
        /// External mission reference whose completion ends it (e.g.
        /// jira:FIN-42). A completed mission takes no new mandates: a new
        /// piece of work needs a new ref.
        #[arg(long, value_name = "REF")]
        mission_ref: Option<String>,
        /// A grant, 'ACTION on RESOURCE' (repeat).
        #[arg(long = "grant", required = true, value_name = "GRANT")]
        grants: Vec<String>,
        /// Lifetime, e.g. 30m, 8h, 2d.
        #[arg(long, default_value = "8h", value_name = "DURATION")]
        ttl: String,
        /// How many levels of delegation may follow below this mandate (0:
        /// it may not be delegated).
        #[arg(long, default_value_t = 3, value_name = "N")]
        depth: u32,
        /// Actions needing step-up approval (repeat).
        #[arg(long, value_name = "ACTION")]
        step_up: Vec<String>,
    },
    /// Delegate a narrower mandate (act as the parent's grantee: --actor agent:<id>).
    Delegate {
        /// The mandate to delegate from (its id, a UUID).
        #[arg(value_name = "PARENT")]
        parent: String,
        /// The agent that receives the new mandate.
        #[arg(long, value_name = "ID")]
        agent: String,
        /// A grant, 'ACTION on RESOURCE' (repeat); each must be covered by
        /// the parent's scope.
        #[arg(long = "grant", required = true, value_name = "GRANT")]
        grants: Vec<String>,
        /// Lifetime from now, e.g. 30m, 8h, 2d (default: the parent's end).
        #[arg(long, value_name = "DURATION", conflicts_with = "not_after")]
        ttl: Option<String>,
        /// End at this moment, RFC 3339 (e.g. 2026-11-26T17:00:00Z); no
        /// later than the parent's end.
        #[arg(long, value_name = "TIME")]
        not_after: Option<DateTime<Utc>>,
        /// Levels of delegation that may follow below the new mandate
        /// (default: one less than the parent's).
        #[arg(long, value_name = "N")]
        depth: Option<u32>,
    },
    /// Pause a mandate (and, effectively, everything below it).
    Pause {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Why, recorded in the event and shown to the guards below.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Resume a paused mandate.
    Resume {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Why, recorded in the event and shown to the guards below.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Revoke a mandate for good.
    Revoke {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Why, recorded in the event and shown to the guards below.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Complete a mandate, or with --mission every tree serving a mission.
    Complete {
        /// The mandate's id (a UUID); or give --mission instead.
        mandate: Option<String>,
        /// The mission ref whose trees all complete (e.g. jira:FIN-42).
        #[arg(long, value_name = "REF")]
        mission: Option<String>,
    },
    /// Revoke everything an agent holds (deprovisioning).
    RevokeAgent {
        /// The agent's id.
        agent: String,
        /// Why, recorded in the events.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Revoke everything a principal granted (offboarding).
    RevokePrincipal {
        /// The principal's id.
        principal: String,
        /// Why, recorded in the events.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Lift the block revoke-agent left, so the agent may receive mandates
    /// again (as a tenant administrator: --actor admin:<id>).
    UnblockAgent {
        /// The agent's id.
        agent: String,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Lift the block revoke-principal left, so the principal may grant
    /// mandates again (as a tenant administrator: --actor admin:<id>).
    UnblockPrincipal {
        /// The principal's id.
        principal: String,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// A mandate's own and effective status.
    Status {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Answer for this moment instead of now, RFC 3339 (e.g.
        /// 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00).
        #[arg(long, value_name = "TIME")]
        at: Option<DateTime<Utc>>,
    },
    /// The authority chain of a mandate, from the principal's grant down.
    ///
    /// Every link with its grantor, grantee, status and end, and the
    /// mandate's effective status (naming the ancestor that ended it).
    Chain {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Answer for this moment instead of now, RFC 3339 (e.g.
        /// 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00).
        #[arg(long, value_name = "TIME")]
        at: Option<DateTime<Utc>>,
    },
    /// The tree a mandate belongs to, drawn as a tree.
    Tree {
        /// Any mandate of the tree (its id, a UUID).
        mandate: String,
        /// Answer for this moment instead of now, RFC 3339 (e.g.
        /// 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00).
        #[arg(long, value_name = "TIME")]
        at: Option<DateTime<Utc>>,
    },
    /// The events of a mandate's tree (actor and on-behalf-of apart).
    History {
        /// Any mandate of the tree (its id, a UUID).
        mandate: String,
        /// Only the mandate's own events.
        #[arg(long)]
        only: bool,
    },
    /// Verify the hash chain of a mandate's tree (tamper check).
    Verify {
        /// Any mandate of the tree (its id, a UUID).
        mandate: String,
    },
    /// Mandates held by an agent, granted by a principal, or serving a mission.
    List {
        /// Mandates this agent holds.
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
        /// Mandates this principal granted (directly or through delegation).
        #[arg(long, value_name = "ID")]
        principal: Option<String>,
        /// Mandates serving this mission ref.
        #[arg(long, value_name = "REF")]
        mission: Option<String>,
    },
    /// May the holder do ACTION on RESOURCE under MANDATE (now or --at)?
    ///
    /// Exits 0 on allow, 1 on deny or needs-approval, 3 when the mandate
    /// does not exist.
    Check {
        /// The mandate's id (a UUID).
        mandate: String,
        /// A concrete action, e.g. finance:read.
        action: String,
        /// A concrete resource, e.g. reports/q3/financials.
        resource: String,
        /// Answer for this moment instead of now, RFC 3339 (e.g.
        /// 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00).
        #[arg(long, value_name = "TIME")]
        at: Option<DateTime<Utc>>,
    },
    /// Live signals that reach a mandate, through its chain (Ctrl-C to stop).
    ///
    /// Its own signals, those of every mandate on its chain above it (an
    /// ancestor's end ends it) and those of its descendants.
    Watch {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Exit 0 once the mandate has effectively ended (revoked, expired
        /// or completed, itself or through an ancestor), printing why; at
        /// once if it already has.
        #[arg(long)]
        until_ended: bool,
    },
    /// Rebuild the projection from the log and compare it with the live one.
    /// Refused while the log holds less than the projection applied (it
    /// went backwards), unless the loss is accepted.
    Rebuild {
        /// The operator's word: the log lost acknowledged records, and the
        /// projection is rebuilt from the log as it is (what was lost, a
        /// revoke included, is lost). Run it with no engine serving.
        #[arg(long)]
        accept_log_loss: bool,
    },
    /// Engine health.
    Health,
    /// Restore a quarantined tree (administrators): the bad record at
    /// --position (as `health` lists it) is skipped, stays in the log, and
    /// the tree grants again from its last good state.
    Restore {
        /// Any mandate of the tree.
        mandate: String,
        /// Log position of the bad record, as `health` lists it.
        #[arg(long, value_name = "N")]
        position: u64,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// End a quarantined tree for good (administrators): the bad record at
    /// --position is skipped, stays in the log, and the root is revoked.
    Seal {
        /// Any mandate of the tree.
        mandate: String,
        /// Log position of the bad record, as `health` lists it.
        #[arg(long, value_name = "N")]
        position: u64,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

/// A CLI failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 6,
            message: e.to_string(),
        }
    }
}

/// Why the embedded engine in `dir` could not open: held by another process
/// or otherwise unreachable is unavailable (4), saying what to do.
fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

fn client_failure(e: ClientError) -> Failure {
    let code = match &e {
        ClientError::Engine(b) => match b.code {
            ErrorCode::InvalidInput => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::Unavailable => 4,
            ErrorCode::Forbidden
            | ErrorCode::Widens
            | ErrorCode::Terminal
            | ErrorCode::InvalidState
            | ErrorCode::Conflict
            | ErrorCode::Quarantined => 5,
            ErrorCode::Internal => 6,
        },
        ClientError::NoEngine(_) | ClientError::TimedOut(_) | ClientError::Nats(_) => 4,
        ClientError::Decode(_) => 6,
        ClientError::Invalid(_) => 2,
    };
    Failure {
        code,
        message: e.to_string(),
    }
}

/// Parses `principal:<id>`, `agent:<id>` or `admin:<id>`.
pub fn parse_actor(s: &str) -> Result<Actor, Failure> {
    let bad = || {
        invalid(format!(
            "actor {s:?} must be principal:<id>, agent:<id> or admin:<id>"
        ))
    };
    let (kind, id) = s.split_once(':').ok_or_else(bad)?;
    let e = |e: crate::domain::DomainError| invalid(format!("actor {s:?}: {e}"));
    match kind {
        "principal" => Ok(Actor::Principal(PrincipalId::new(id).map_err(e)?)),
        "agent" => Ok(Actor::Agent(AgentId::new(id).map_err(e)?)),
        "admin" => Ok(Actor::Admin(PrincipalId::new(id).map_err(e)?)),
        _ => Err(bad()),
    }
}

/// The moment `ttl` from now, refused (not overflowed) when it is past the
/// latest representable date.
pub fn deadline(ttl: &str) -> Result<DateTime<Utc>, Failure> {
    Utc::now()
        .checked_add_signed(parse_ttl(ttl)?)
        .ok_or_else(|| {
            invalid(format!(
                "duration {ttl:?} reaches past the latest date there is"
            ))
        })
}

/// Parses a duration like `90s`, `30m`, `8h`, `2d`.
pub fn parse_ttl(s: &str) -> Result<chrono::Duration, Failure> {
    let bad = || {
        invalid(format!(
            "duration {s:?} must be a number followed by s, m, h or d (e.g. 8h)"
        ))
    };
    let (num, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad());
    }
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(bad()),
    };
    d.ok_or_else(|| invalid(format!("duration {s:?} is too long")))
}

/// A tree query naming the tree through one of its mandates.
fn by_mandate(s: &str) -> Result<TreeQuery, Failure> {
    Ok(TreeQuery {
        tree: None,
        mandate: Some(mandate_id(s)?),
        at: None,
    })
}

fn mandate_id(s: &str) -> Result<MandateId, Failure> {
    MandateId::parse(s).map_err(|e| invalid(e.to_string()))
}

fn scope(grants: &[String]) -> Result<Scope, Failure> {
    Scope::parse(grants.iter().map(String::as_str)).map_err(|e| {
        invalid(format!(
            "{e} (write a grant as 'ACTION on RESOURCE', e.g. 'finance:read on reports/q3/*')"
        ))
    })
}

fn local_and_utc(t: DateTime<Utc>) -> String {
    format!(
        "{} ({} UTC)",
        t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z"),
        t.format("%H:%M:%S")
    )
}

async fn connect(cli: &Cli) -> Result<Option<async_nats::Client>, Failure> {
    let Some(url) = &cli.nats else {
        return Ok(None);
    };
    let mut opts = async_nats::ConnectOptions::new().name("mandate");
    if let Some(creds) = &cli.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| invalid(format!("cannot read credentials {}: {e}", creds.display())))?;
    }
    let client = opts.connect(url.as_str()).await.map_err(|e| Failure {
        code: 4,
        message: format!("cannot connect to NATS at {url}: {e}"),
    })?;
    Ok(Some(client))
}

/// The actor a query without `--actor` is sent as; never used for a command.
const UNNAMED_CALLER: &str = "unnamed-caller";

/// The name of a command that changes authority (and so must name its
/// actor); `None` for queries, `serve`, `rebuild` and the self-contained demo.
fn changes_authority(cmd: &Cmd) -> Option<&'static str> {
    match cmd {
        Cmd::Issue { .. } => Some("issue"),
        Cmd::Delegate { .. } => Some("delegate"),
        Cmd::Pause { .. } => Some("pause"),
        Cmd::Resume { .. } => Some("resume"),
        Cmd::Revoke { .. } => Some("revoke"),
        Cmd::Complete { .. } => Some("complete"),
        Cmd::RevokeAgent { .. } => Some("revoke-agent"),
        Cmd::RevokePrincipal { .. } => Some("revoke-principal"),
        Cmd::UnblockAgent { .. } => Some("unblock-agent"),
        Cmd::UnblockPrincipal { .. } => Some("unblock-principal"),
        Cmd::Restore { .. } => Some("restore"),
        Cmd::Seal { .. } => Some("seal"),
        Cmd::Serve { .. }
        | Cmd::Demo
        | Cmd::Status { .. }
        | Cmd::Chain { .. }
        | Cmd::Tree { .. }
        | Cmd::History { .. }
        | Cmd::Verify { .. }
        | Cmd::List { .. }
        | Cmd::Check { .. }
        | Cmd::Watch { .. }
        | Cmd::Rebuild { .. }
        | Cmd::Health => None,
    }
}

/// Runs the CLI; returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    match run_inner(cli).await {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.code
        }
    }
}

async fn run_inner(cli: Cli) -> Result<i32, Failure> {
    // `serve` reads --tenant as a list of tenants to serve (below).
    let acting_tenant = match cli.command {
        Cmd::Serve { .. } => None,
        _ => cli.tenant.as_deref(),
    };
    let tenant =
        TenantId::new(acting_tenant.unwrap_or("default")).map_err(|e| invalid(e.to_string()))?;
    let actor = match (&cli.actor, changes_authority(&cli.command)) {
        (Some(a), _) => parse_actor(a)?,
        (None, Some(name)) => {
            return Err(invalid(format!(
                "{name} changes authority: say who acts with --actor <principal|agent|admin>:<id> or set MANDATE_ACTOR"
            )))
        }
        // A query without an actor: it reads, and never acts, as this
        // caller. The demo's steps each act as their own party.
        (None, None) => Actor::Agent(AgentId::new(UNNAMED_CALLER).map_err(|e| invalid(e.to_string()))?),
    };
    // Without --nats: `serve` runs a private nats-server; another command
    // uses the engine a running `serve` announced in --data, else the
    // in-process one (see `bootstrap`). The demo keeps its own data.
    let mut private = None;
    let nats = match (&cli.command, &cli.nats) {
        (_, Some(_)) | (Cmd::Demo, None) => connect(&cli).await?,
        (Cmd::Serve { .. }, None) => {
            let server = bootstrap::PrivateServer::start(&cli.data)
                .await
                .map_err(bootstrap::BootstrapError::failure)?;
            let nc = server
                .connect()
                .await
                .map_err(bootstrap::BootstrapError::failure)?;
            private = Some(server);
            Some(nc)
        }
        (_, None) => match bootstrap::discover(&cli.data)
            .await
            .map_err(bootstrap::BootstrapError::failure)?
        {
            bootstrap::Discovered::Served(_) if matches!(cli.command, Cmd::Rebuild { .. }) => {
                return Err(
                    bootstrap::BootstrapError::RebuildWhileServed(cli.data.clone()).failure(),
                );
            }
            bootstrap::Discovered::Served(nc) => Some(nc),
            bootstrap::Discovered::InProcess => None,
        },
    };
    let mut background = None;
    let mut demo_dir = None;
    let (client, missions) = match &nats {
        Some(nc) => {
            if let Cmd::Serve {
                auth,
                allow_open_tenants,
            } = &cli.command
            {
                let tenants = cli
                    .tenant
                    .as_deref()
                    .map(|list| {
                        list.split(',')
                            .map(|t| TenantId::new(t.trim()))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()
                    .map_err(|e| invalid(e.to_string()))?
                    .unwrap_or_default();
                let config = EngineConfig {
                    tenants,
                    auth: auth
                        .as_deref()
                        .map(AuthConfig::load)
                        .transpose()
                        .map_err(|e| invalid(e.to_string()))?
                        .map(std::sync::Arc::new),
                    // A private server is one user's, on loopback: its
                    // tenants are open (and `serve` says so loudly).
                    allow_open_tenants: *allow_open_tenants || private.is_some(),
                    ..EngineConfig::default()
                };
                let Some(server) = private else {
                    let engine =
                        Engine::nats(nc.clone(), &cli.data, Default::default(), config).await?;
                    tracing::info!(data = %cli.data.display(), "engine starting");
                    engine.serve(shutdown_signal()).await?;
                    return Ok(0);
                };
                let probe = config.tenants.first().cloned().unwrap_or(tenant.clone());
                let dir = bootstrap::engine_dir(&cli.data);
                let engine = Engine::nats(nc.clone(), &dir, Default::default(), config).await?;
                tracing::info!(data = %dir.display(), url = %server.url(), "engine starting");
                return server.run(&engine, nc.clone(), probe).await.map(|()| 0);
            }
            if let Cmd::Rebuild { .. } = cli.command {
                let engine = Engine::nats(
                    nc.clone(),
                    &cli.data,
                    Default::default(),
                    EngineConfig::default(),
                )
                .await?;
                return rebuild(&engine, &cli.command, cli.json).await;
            }
            let client = Client::nats(nc.clone(), tenant.clone(), actor.clone());
            let client = match &cli.secret {
                Some(secret) => client.with_secret(secret.as_bytes()),
                None => client,
            };
            (
                client,
                MissionPublisher::Nats(Box::new(async_nats::jetstream::new(nc.clone()))),
            )
        }
        None => {
            let dir = if let Cmd::Demo = cli.command {
                // The demo keeps its own throwaway data.
                let d = std::env::temp_dir()
                    .join(format!("mandate-demo-{}", uuid::Uuid::new_v4().simple()));
                demo_dir = Some(d.clone());
                d
            } else {
                cli.data.clone()
            };
            let engine = Engine::embedded(&dir, EngineConfig::default())
                .await
                .map_err(|e| bootstrap::explain_open_error(&dir, e))?;
            if let Cmd::Rebuild { .. } = cli.command {
                return rebuild(&engine, &cli.command, cli.json).await;
            }
            background = Some(engine.start());
            (
                Client::local(engine.clone(), tenant.clone(), actor.clone()),
                MissionPublisher::Local(engine),
            )
        }
    };
    let code = command(&cli, &tenant, client, missions).await;
    if let Some(bg) = background {
        bg.stop().await?;
    }
    if let (Cmd::Demo, None) = (&cli.command, &nats) {
        if let Some(dir) = demo_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    code
}

async fn command(
    cli: &Cli,
    tenant: &TenantId,
    client: Client,
    missions: MissionPublisher,
) -> Result<i32, Failure> {
    let json = cli.json;
    let out = |v: &dyn erased::Show| v.show(json);
    match &cli.command {
        Cmd::Serve { .. } | Cmd::Rebuild { .. } => unreachable!("handled before"),
        Cmd::Demo => {
            // The engine's answers keep their exit codes (no engine serving
            // is unavailable, 4); the demo's own failures are internal.
            demo::run(client, missions)
                .await
                .map_err(|e| match e.downcast::<ClientError>() {
                    Ok(e) => client_failure(*e),
                    Err(e) => Failure {
                        code: 6,
                        message: e.to_string(),
                    },
                })?;
        }
        Cmd::Issue {
            principal,
            agent,
            purpose,
            mission_ref,
            grants,
            ttl,
            depth,
            step_up,
        } => {
            let issue = Issue {
                principal: PrincipalId::new(principal).map_err(|e| invalid(e.to_string()))?,
                grantee: AgentId::new(agent).map_err(|e| invalid(e.to_string()))?,
                mission: Mission {
                    purpose: purpose.clone(),
                    mission_ref: mission_ref
                        .as_deref()
                        .map(MissionRef::new)
                        .transpose()
                        .map_err(|e| invalid(e.to_string()))?,
                },
                scope: scope(grants)?,
                not_after: deadline(ttl)?,
                depth: *depth,
                step_up: step_up
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e: crate::domain::DomainError| invalid(e.to_string()))?,
                supervisors: vec![],
            };
            out(&client.issue(issue).await.map_err(client_failure)?);
        }
        Cmd::Delegate {
            parent,
            agent,
            grants,
            ttl,
            not_after,
            depth,
        } => {
            let d = Delegate {
                parent: mandate_id(parent)?,
                grantee: AgentId::new(agent).map_err(|e| invalid(e.to_string()))?,
                scope: scope(grants)?,
                not_after: match (ttl, not_after) {
                    (Some(ttl), _) => Some(deadline(ttl)?),
                    (None, at) => *at,
                },
                depth: *depth,
                step_up: vec![],
                supervisors: vec![],
            };
            out(&client.delegate(d).await.map_err(client_failure)?);
        }
        Cmd::Pause { mandate, reason } => out(&client
            .pause(mandate_id(mandate)?, reason.clone())
            .await
            .map_err(client_failure)?),
        Cmd::Resume { mandate, reason } => out(&client
            .resume(mandate_id(mandate)?, reason.clone())
            .await
            .map_err(client_failure)?),
        Cmd::Revoke { mandate, reason } => out(&client
            .revoke(mandate_id(mandate)?, reason.clone())
            .await
            .map_err(client_failure)?),
        Cmd::Complete { mandate, mission } => match (mandate, mission) {
            (Some(m), None) => out(&client
                .complete(mandate_id(m)?, None)
                .await
                .map_err(client_failure)?),
            (None, Some(r)) => {
                let r = MissionRef::new(r.as_str()).map_err(|e| invalid(e.to_string()))?;
                out(&client.complete_mission(r).await.map_err(client_failure)?)
            }
            _ => return Err(invalid("give a mandate id or --mission REF (not both)")),
        },
        Cmd::RevokeAgent { agent, reason } => out(&client
            .revoke_agent(
                AgentId::new(agent).map_err(|e| invalid(e.to_string()))?,
                reason.clone(),
            )
            .await
            .map_err(client_failure)?),
        Cmd::RevokePrincipal { principal, reason } => out(&client
            .revoke_principal(
                PrincipalId::new(principal).map_err(|e| invalid(e.to_string()))?,
                reason.clone(),
            )
            .await
            .map_err(client_failure)?),
        Cmd::UnblockAgent { agent, reason } => out(&client
            .unblock_agent(
                AgentId::new(agent).map_err(|e| invalid(e.to_string()))?,
                reason.clone(),
            )
            .await
            .map_err(client_failure)?),
        Cmd::UnblockPrincipal { principal, reason } => out(&client
            .unblock_principal(
                PrincipalId::new(principal).map_err(|e| invalid(e.to_string()))?,
                reason.clone(),
            )
            .await
            .map_err(client_failure)?),
        Cmd::Status { mandate, at } => {
            let s = client
                .status(mandate_id(mandate)?, *at)
                .await
                .map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                say!("mandate   {}", s.mandate.id);
                say!(
                    "grantee   agent {} (granted by {}, on behalf of {})",
                    s.mandate.grantee,
                    s.mandate.grantor,
                    s.mandate.principal
                );
                say!("own       {}", s.mandate.status);
                say!("effective {}", s.effective.status);
                if let Some(c) = &s.effective.cause {
                    say!(
                        "cause     {} {} at {}{}",
                        if c.mandate == s.mandate.id {
                            "itself".to_string()
                        } else {
                            format!("ancestor {}", c.mandate)
                        },
                        c.status,
                        local_and_utc(c.at),
                        c.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                }
                say!("not after {}", local_and_utc(s.mandate.not_after));
                say!(
                    "scope     {}",
                    s.mandate
                        .scope
                        .grants()
                        .iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Cmd::Chain { mandate, at } => {
            let c = client
                .chain(mandate_id(mandate)?, *at)
                .await
                .map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                say!("tree      {}", c.tree);
                say!(
                    "effective {}{}",
                    c.effective.status,
                    cause_text(
                        c.effective.cause.as_ref(),
                        c.chain.last().map(|l| l.mandate)
                    )
                );
                say!("at        {}", local_and_utc(c.at));
                for (i, l) in c.chain.iter().enumerate() {
                    say!(
                        "{:indent$}{} {} → agent {} (on behalf of {}; own status {}; until {}) {}",
                        "",
                        l.mandate,
                        l.grantor,
                        l.grantee,
                        l.on_behalf_of,
                        l.status,
                        local_and_utc(l.not_after),
                        grants_text(&l.scope),
                        indent = 2 * i
                    );
                }
            }
        }
        Cmd::Tree { mandate, at } => {
            let t = client
                .tree(TreeQuery {
                    at: *at,
                    ..by_mandate(mandate)?
                })
                .await
                .map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                draw_tree(&t.tree, &t.effective);
            }
        }
        Cmd::History { mandate, only } => {
            // The whole tree's history, found through the mandate; with
            // --only, the mandate's own events.
            let mut q = by_mandate(mandate)?;
            if !*only {
                // Through `tree`, not `chain`: `chain` grants, so it refuses a
                // quarantined tree, and history is what an auditor reads then.
                // The query names the tree alone: with a mandate as well, it
                // keeps only that mandate's events.
                q.tree = Some(
                    client
                        .tree(by_mandate(mandate)?)
                        .await
                        .map_err(client_failure)?
                        .tree
                        .id,
                );
                q.mandate = None;
            }
            let h = client.history(q).await.map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                for e in &h.events {
                    say!(
                        "#{:<3} {}  {:<18} mandate {}  by {} on behalf of principal {}",
                        e.seq,
                        local_and_utc(e.time),
                        e.body.type_name(),
                        e.body.mandate(),
                        e.actor,
                        e.on_behalf_of
                    );
                }
                if let Some(q) = &h.quarantine {
                    say!(
                        "QUARANTINED at log position {}: {} (an administrator may `restore` or `seal` it)",
                        q.position, q.reason
                    );
                }
            }
        }
        Cmd::Verify { mandate } => {
            let v = client
                .verify(by_mandate(mandate)?)
                .await
                .map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&v)?);
            } else if v.intact {
                say!("tree {}: {} events, hash chain intact", v.tree, v.events);
                for position in &v.skipped {
                    say!("  record at log position {position}: bad, kept as evidence, skipped by an administrator's resolution");
                }
            } else {
                let fault = v
                    .fault
                    .and_then(|f| serde_json::to_value(f).ok())
                    .and_then(|f| f.as_str().map(str::to_string))
                    .unwrap_or_default();
                say!(
                    "tree {}: BROKEN at log position {} (event seq {}, {fault}): {}",
                    v.tree,
                    v.broken_position.unwrap_or_default(),
                    v.broken_at.unwrap_or_default(),
                    v.reason.clone().unwrap_or_default()
                );
            }
            return Ok(if v.intact { 0 } else { 6 });
        }
        Cmd::List {
            agent,
            principal,
            mission,
        } => {
            let q = ListQuery {
                agent: agent
                    .as_deref()
                    .map(AgentId::new)
                    .transpose()
                    .map_err(|e| invalid(e.to_string()))?,
                principal: principal
                    .as_deref()
                    .map(PrincipalId::new)
                    .transpose()
                    .map_err(|e| invalid(e.to_string()))?,
                mission_ref: mission
                    .as_deref()
                    .map(MissionRef::new)
                    .transpose()
                    .map_err(|e| invalid(e.to_string()))?,
            };
            let l = client.list(q).await.map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                for m in &l.mandates {
                    say!(
                        "{}  agent {:<16} {:<9} (own {})  until {}",
                        m.mandate,
                        m.grantee,
                        m.effective.status,
                        m.status,
                        local_and_utc(m.not_after)
                    );
                }
            }
        }
        Cmd::Check {
            mandate,
            action,
            resource,
            at,
        } => {
            let mandate = mandate_id(mandate)?;
            let d = if cli.actor.is_some() {
                client.check(mandate, action, resource, *at).await
            } else {
                client
                    .check_unattributed(mandate, action, resource, *at)
                    .await
            }
            .map_err(client_failure)?;
            print_decision(&d, json)?;
            return Ok(check_exit_code(&d));
        }
        Cmd::Watch {
            mandate,
            until_ended,
        } => watch(&client, tenant, mandate_id(mandate)?, json, *until_ended).await?,
        Cmd::Health => {
            let h = client.health().await.map_err(client_failure)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                say!("instance  {} ({})", h.instance, h.backend);
                say!(
                    "position  {} of {} in the log (lag {})",
                    h.position,
                    h.log_position,
                    h.lag
                );
                say!("time      {}", local_and_utc(h.time));
                say!(
                    "rejected mission completions: {}",
                    h.rejected_mission_completions
                );
                if h.quarantined.is_empty() {
                    say!("quarantined trees: none");
                }
                for q in &h.quarantined {
                    say!(
                        "QUARANTINED tree {} at log position {}: {} (an administrator may `restore` or `seal` it)",
                        q.tree, q.position, q.reason
                    );
                }
                for l in &h.log_went_backwards {
                    say!(
                        "LOG WENT BACKWARDS on tree {}: recorded head {}, log head {} (held; an operator may `rebuild --accept-log-loss`)",
                        l.tree, l.recorded, l.found
                    );
                }
            }
        }
        Cmd::Restore {
            mandate,
            position,
            reason,
        } => out(&client
            .resolve_quarantine(
                mandate_id(mandate)?,
                *position,
                Resolution::Restore,
                reason.clone(),
            )
            .await
            .map_err(client_failure)?),
        Cmd::Seal {
            mandate,
            position,
            reason,
        } => out(&client
            .resolve_quarantine(
                mandate_id(mandate)?,
                *position,
                Resolution::End,
                reason.clone(),
            )
            .await
            .map_err(client_failure)?),
    }
    Ok(0)
}

/// The exit code of a check: 0 allow; 3 when the mandate does not exist (as
/// `status` says of it), so a mistyped id is told apart from a refusal; 1
/// for every other deny and for needs-approval.
fn check_exit_code(d: &Decision) -> i32 {
    match (&d.outcome, &d.reason) {
        (Outcome::Allow, _) => 0,
        (_, Some(DenyReason::UnknownMandate)) => 3,
        _ => 1,
    }
}

fn grants_text(scope: &Scope) -> String {
    scope
        .grants()
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `: itself revoked (reason)` or `: ancestor <id> completed (reason)`: which
/// mandate of the chain made `mandate` what it is, and why; empty without a
/// cause.
fn cause_text(cause: Option<&Cause>, mandate: Option<MandateId>) -> String {
    let Some(c) = cause else {
        return String::new();
    };
    format!(
        ": {} {}{}",
        if Some(c.mandate) == mandate {
            "itself".to_string()
        } else {
            format!("ancestor {}", c.mandate)
        },
        c.status,
        c.reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// A decision's reason in words, e.g. `mandate is completed: ancestor <id>
/// completed (mission jira:FIN-42 completed)`; `--json` keeps the structure.
pub(crate) fn deny_text(d: &Decision) -> String {
    match &d.reason {
        None if d.outcome == Outcome::NeedsApproval => format!(
            "in scope, but needs step-up approval first ({})",
            d.approval
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "allowed".into(),
        Some(DenyReason::UnknownMandate) => {
            format!("mandate {} not found in tenant {}", d.mandate, d.tenant)
        }
        Some(DenyReason::NotActive { status, cause }) => format!(
            "mandate is {status}{}",
            cause_text(cause.as_ref(), Some(d.mandate))
        ),
        Some(DenyReason::OutOfScope { mandate }) => format!(
            "{} on {} is outside the scope of {}",
            d.action,
            d.resource,
            if *mandate == d.mandate {
                format!("mandate {mandate}")
            } else {
                format!("ancestor {mandate}")
            }
        ),
        Some(DenyReason::InvalidRequest { reason }) => format!("invalid request: {reason}"),
        Some(DenyReason::Unverified { reason }) => {
            format!("state could not be confirmed: {reason}")
        }
        Some(DenyReason::Quarantined { tree, position }) => format!(
            "tree {tree} is quarantined at log position {position} (an administrator may `restore` or `seal` it)"
        ),
        Some(DenyReason::UnsupportedVersion {
            tree,
            position,
            version,
            supported,
        }) => format!(
            "tree {tree} holds an event of schema version {version} at log position {position}; this instance reads up to version {supported}: ask a newer one"
        ),
        Some(DenyReason::LogWentBackwards { tree, recorded, found }) => format!(
            "the event log lost records of tree {tree} (recorded head {recorded}, log head {found}): held until an operator accepts the loss"
        ),
    }
}

fn print_decision(d: &Decision, json: bool) -> Result<(), Failure> {
    if json {
        say!("{}", serde_json::to_string_pretty(d)?);
        return Ok(());
    }
    let verdict = match d.outcome {
        Outcome::Allow => "ALLOW",
        Outcome::Deny => "DENY",
        Outcome::NeedsApproval => "NEEDS APPROVAL",
    };
    say!(
        "{verdict}: {} on {} under mandate {} at {}",
        d.action,
        d.resource,
        d.mandate,
        local_and_utc(d.at)
    );
    if d.reason.is_some() {
        say!("reason: {}", deny_text(d));
    }
    for (i, l) in d.chain.iter().enumerate() {
        say!(
            "{:indent$}{} → agent {} (on behalf of {}; own status {})",
            "",
            l.grantor,
            l.grantee,
            l.on_behalf_of,
            l.status,
            indent = 2 + 2 * i
        );
    }
    Ok(())
}

fn draw_tree(tree: &Tree, eff: &[crate::protocol::MandateSummary]) {
    if let Some(m) = &tree.mission {
        say!(
            "mission: {}{}",
            m.purpose,
            m.mission_ref
                .as_ref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default()
        );
    }
    fn walk(
        tree: &Tree,
        eff: &[crate::protocol::MandateSummary],
        id: MandateId,
        prefix: &str,
        last: bool,
        root: bool,
    ) {
        let Some(m) = tree.mandates.get(&id) else {
            return;
        };
        let status = eff
            .iter()
            .find(|s| s.mandate == id)
            .map(|s| s.effective.status.to_string())
            .unwrap_or_default();
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        say!(
            "{prefix}{branch}{} agent {} [{status}] {}",
            m.id,
            m.grantee,
            m.scope
                .grants()
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let child_prefix = if root {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, c) in m.children.iter().enumerate() {
            walk(
                tree,
                eff,
                *c,
                &child_prefix,
                i + 1 == m.children.len(),
                false,
            );
        }
    }
    if let Some(root) = tree.root {
        walk(tree, eff, root, "", true, true);
    }
}

/// With `--until-ended`: `Some(line)` saying why, once `mandate` has
/// effectively ended; `None` while it may still act (or is paused); also
/// when it next could end by the clock alone.
async fn ended(
    client: &Client,
    mandate: MandateId,
) -> Result<(Option<String>, DateTime<Utc>), Failure> {
    let s = client.status(mandate, None).await.map_err(client_failure)?;
    let why = s.effective.status.is_terminal().then(|| {
        format!(
            "mandate {mandate} has ended: it is {}{}",
            s.effective.status,
            cause_text(s.effective.cause.as_ref(), Some(mandate))
        )
    });
    Ok((why, s.mandate.not_after))
}

async fn watch(
    client: &Client,
    tenant: &TenantId,
    mandate: MandateId,
    json: bool,
    until_ended: bool,
) -> Result<(), Failure> {
    let tree = client
        .tree(TreeQuery {
            tree: None,
            mandate: Some(mandate),
            at: None,
        })
        .await
        .map_err(client_failure)?
        .tree;
    let mut ids = vec![mandate];
    ids.extend(tree.descendants(mandate));
    // Also the chain above: an ancestor's end reaches this subtree.
    ids.extend(
        tree.chain(mandate)
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != mandate),
    );
    let mut streams = Vec::new();
    for id in ids {
        let s = match client.engine() {
            Some(e) => e.bus().subscribe(tenant, id).await.map_err(|e| Failure {
                code: 4,
                message: e.to_string(),
            })?,
            None => {
                let nc = client
                    .nats_client()
                    .ok_or_else(|| invalid("no transport"))?;
                nc.subscribe(crate::protocol::signal_subject(tenant, id))
                    .await
                    .map_err(|e| Failure {
                        code: 4,
                        message: e.to_string(),
                    })?
                    .filter_map(|m| async move { serde_json::from_slice(&m.payload).ok() })
                    .boxed()
            }
        };
        streams.push(s);
    }
    eprintln!("watching {} mandates; Ctrl-C to stop", streams.len());
    // Subscribed first, then read: an end between the two is still heard.
    let mut not_after = None;
    if until_ended {
        let (why, end) = ended(client, mandate).await?;
        if let Some(why) = why {
            say!("{why}");
            return Ok(());
        }
        not_after = Some(end);
    }
    let mut all = futures::stream::select_all(streams);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        // With --until-ended, look again when the clock alone would end the
        // mandate (no signal may come before the expiry event is written),
        // and at least every half minute, so a lost signal delays the exit
        // but never prevents it.
        let wake = match not_after {
            Some(end) => {
                (end - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(UNTIL_ENDED_RECHECK)
                    + Duration::from_millis(10)
            }
            None => Duration::from_secs(3600),
        };
        let recheck = tokio::select! {
            s = all.next() => match s {
                Some(s) => {
                    if json { say!("{}", serde_json::to_string(&s)?); }
                    else { say!("{}  {:?} mandate {} → {} ({}) by {}{}", local_and_utc(s.time), s.kind, s.mandate, s.status, s.event_type, s.actor, s.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()); }
                    if stdout_gone() { return Ok(()); }
                    true
                }
                None => return Ok(()),
            },
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(wake) => true,
        };
        if until_ended && recheck {
            let (why, end) = ended(client, mandate).await?;
            if let Some(why) = why {
                say!("{why}");
                return Ok(());
            }
            not_after = Some(end);
        }
    }
}

/// The longest `watch --until-ended` waits without looking at the
/// mandate's status.
const UNTIL_ENDED_RECHECK: Duration = Duration::from_secs(30);

async fn rebuild(engine: &Engine, cmd: &Cmd, json: bool) -> Result<i32, Failure> {
    let started = std::time::Instant::now();
    if let Cmd::Rebuild {
        accept_log_loss: true,
    } = cmd
    {
        let (records, held) = engine.accept_log_loss().await?;
        say!("log loss accepted: {held} held trees released; rebuilt {records} log records from the log as it is");
        return Ok(0);
    }
    let report = engine.rebuild_check().await?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        say!(
            "{}",
            serde_json::json!({"records": report.records, "equal": report.equal, "seconds": secs})
        );
    } else {
        say!(
            "rebuilt {} log records in {secs:.3}s; projection {}",
            report.records,
            if report.equal {
                "matches the rebuild"
            } else {
                "DIFFERS from the rebuild"
            }
        );
    }
    Ok(if report.equal { 0 } else { 6 })
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

mod erased {
    use crate::protocol::CommandResult;

    /// Prints a command result as text or JSON.
    pub(super) trait Show {
        fn show(&self, json: bool);
    }

    impl Show for CommandResult {
        fn show(&self, json: bool) {
            if json {
                say!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
                return;
            }
            if let Some(m) = self.mandate {
                say!("mandate {m}");
            }
            for c in &self.commits {
                for e in &c.events {
                    say!(
                        "  {} #{} {} (position {}){}",
                        e.body.type_name(),
                        e.seq,
                        e.body.mandate(),
                        c.position,
                        if self.duplicate {
                            " [already applied]"
                        } else {
                            ""
                        }
                    );
                }
            }
            if self.commits.is_empty() {
                say!("nothing to do");
            }
        }
    }
}
