//! The command line: global options and commands, as clap reads them. The
//! doc comments are the `--help` texts.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::protocol::Consistency;

/// `--consistency` of the reads.
const CONSISTENCY_HELP: &str = "How fresh the answer must be.\n\
  fresh: everything acknowledged anywhere (the engine reads the tree's head \
  from the log first; the default).\n\
  local: the answering instance's state as it is, without that read; it may \
  lag behind a change another instance made.\n\
  at-least=<position>: at least the state after the commit at that log \
  position (a command's JSON output gives it in `commits[].position`); no \
  extra read once the instance has applied it, and an error, never an older answer, \
  when the log has not reached it.";

/// Mandate: the authority of AI agents, held as event streams.
#[derive(Parser, Debug)]
#[command(name = "mandate", version, about, next_help_heading = "Global options")]
pub struct Cli {
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
    /// The actor's Ed25519 signing key (PKCS#8 PEM, as `mandate keys
    /// keygen` writes it): every command is signed with it
    /// (`Mandate-Signature`), under --key-id.
    #[arg(
        long,
        global = true,
        env = "MANDATE_SIGNING_KEY",
        value_name = "FILE",
        requires = "key_id"
    )]
    pub signing_key: Option<PathBuf>,
    /// The id under which --signing-key is registered in the tenant (or
    /// configured by the operator).
    #[arg(
        long,
        global = true,
        env = "MANDATE_KEY_ID",
        value_name = "ID",
        requires = "signing_key"
    )]
    pub key_id: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// NATS URL, credentials, TLS and inbox prefix (under their own
    /// heading, so last).
    #[command(flatten)]
    pub connection: super::connect::ConnectArgs,
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
        /// How often the engine publishes a beacon for each tenant it
        /// serves, into the signal stream: milliseconds (`250ms`) or a
        /// duration (`1s`, `2m`). Guards deny once they hear none for
        /// their lease, which must be several times longer.
        #[arg(long, value_name = "DURATION", default_value = "1s")]
        beacon_interval: String,
        /// Serve this instance's metrics in the Prometheus text format on
        /// `http://ADDR/metrics` (e.g. 127.0.0.1:9464): commands, checks and
        /// queries with their latency, cascade fan-out, projection lag,
        /// expiry backlog, mission intake backlog. Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// An Ed25519 private key (PKCS#8 PEM, from `mandate token-keygen`)
        /// that signs mandate tokens. Repeatable: the first signs, every one
        /// listed verifies and is published in the JWK set (to rotate, put
        /// the new key first and keep the old one until its tokens expired).
        /// Every instance loads the same files. Without one, tokens are
        /// refused.
        #[arg(long = "token-key", value_name = "FILE")]
        token_keys: Vec<PathBuf>,
        /// Longest lifetime of a mandate token.
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        token_max_ttl: String,
        /// The tokens' issuer: their `iss` is `<ISSUER>/<tenant>`.
        #[arg(long, value_name = "ISSUER", default_value = crate::engine::tokens::DEFAULT_ISSUER)]
        token_issuer: String,
        /// Serve the token verification keys (JWK set) over HTTP at
        /// `http://ADDR/.well-known/jwks.json` (e.g. 127.0.0.1:8443), for
        /// services that verify tokens with an ordinary JWT library.
        #[arg(long, value_name = "ADDR")]
        jwks_http: Option<String>,
        /// Push the security events (SETs, signed with the first
        /// --token-key) to this RFC 8935 receiver: an http or https URL,
        /// optionally followed by `#aud=AUDIENCE` (the SETs' `aud`; the URL
        /// by default) and `&tenant=TENANT` (that tenant's only).
        /// Repeatable. Needs --token-key.
        #[arg(long = "set-push", value_name = "URL")]
        set_push: Vec<String>,
        /// Attempts at pushing one SET before it is given up on (retries
        /// wait 1 s, doubling up to 60 s).
        #[arg(long, value_name = "N", default_value_t = crate::engine::sets::DEFAULT_MAX_DELIVERIES)]
        set_push_max_deliveries: i64,
        /// Replicas of every stream the engine creates or opens (events,
        /// signals, missions, dead letters, audit, security events): 1 on a single server, 3
        /// on a JetStream cluster. A stream with another number is changed
        /// if the server allows, else serve refuses to start, naming it.
        #[arg(long, value_name = "N", default_value_t = 1)]
        replicas: usize,
    },
    /// The ghost-execution story on the real engine, with a timeline.
    Demo,
    /// Issue a root mandate: principal → agent for a mission.
    Issue(IssueArgs),
    /// Delegate a narrower mandate (act as the parent's grantee: --actor agent:<id>).
    Delegate(DelegateArgs),
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
    /// Ask for step-up approval of one request under a mandate (as its
    /// grantee: --actor agent:<id>). Prints the approval's id.
    RequestApproval {
        /// The mandate's id (a UUID).
        mandate: String,
        #[command(flatten)]
        request: ApprovalRequestArgs,
        /// How long the approval stays usable, e.g. 10m, 1h (default 15m,
        /// at most 1d; never past the mandate's end).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Why, shown to the approver.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Grant a pending approval (as the tree's principal: --actor principal:<id>).
    Approve {
        /// The approval's id (a UUID).
        approval: String,
        /// The mandate it was requested under.
        #[arg(long, value_name = "ID")]
        mandate: String,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Deny a pending approval (as the tree's principal).
    DenyApproval {
        /// The approval's id (a UUID).
        approval: String,
        /// The mandate it was requested under.
        #[arg(long, value_name = "ID")]
        mandate: String,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Use a granted approval, once, for exactly the request it was granted
    /// for (as the mandate's grantee). Exit 0 is the one allow it gives;
    /// any further use is refused.
    UseApproval {
        /// The approval's id (a UUID).
        approval: String,
        /// The mandate it was requested under.
        #[arg(long, value_name = "ID")]
        mandate: String,
        #[command(flatten)]
        request: ApprovalRequestArgs,
    },
    /// A mandate's own and effective status.
    Status {
        /// The mandate's id (a UUID).
        mandate: String,
        /// Answer for this moment instead of now, RFC 3339 (e.g.
        /// 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00).
        #[arg(long, value_name = "TIME")]
        at: Option<DateTime<Utc>>,
        /// How fresh the answer must be: fresh, local or at-least=<position>.
        #[arg(long, value_name = "LEVEL", default_value = "fresh", long_help = CONSISTENCY_HELP)]
        consistency: Consistency,
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
        /// How fresh the answer must be: fresh, local or at-least=<position>.
        #[arg(long, value_name = "LEVEL", default_value = "fresh", long_help = CONSISTENCY_HELP)]
        consistency: Consistency,
    },
    /// The tree a mandate belongs to, drawn as a tree.
    Tree {
        /// Any mandate of the tree (its id, a UUID).
        mandate: String,
        /// Answer for this moment instead of now, RFC 3339 (e.g.
        /// 2026-11-26T09:30:00Z or 2026-11-26T10:30:00+01:00).
        #[arg(long, value_name = "TIME")]
        at: Option<DateTime<Utc>>,
        /// How fresh the answer must be: fresh, local or at-least=<position>.
        #[arg(long, value_name = "LEVEL", default_value = "fresh", long_help = CONSISTENCY_HELP)]
        consistency: Consistency,
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
        /// How fresh the answer must be: fresh, local or at-least=<position>.
        #[arg(long, value_name = "LEVEL", default_value = "fresh", long_help = CONSISTENCY_HELP)]
        consistency: Consistency,
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
        /// How fresh the answer must be: fresh, local or at-least=<position>.
        #[arg(long, value_name = "LEVEL", default_value = "fresh", long_help = CONSISTENCY_HELP)]
        consistency: Consistency,
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
    /// A short-lived signed token (JWT, EdDSA) for a live mandate, for its
    /// grantee, its principal or an administrator (--actor). A service
    /// verifies it offline with the engine's JWK set; offline it cannot
    /// learn of a revoke before the token's `exp`.
    Token {
        /// The mandate.
        mandate: String,
        /// Wanted lifetime (e.g. 60s); the engine's maximum caps it, and the
        /// chain's earliest not_after always does.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// The audience (`aud`): the service the token is for.
        #[arg(long, value_name = "AUD")]
        aud: Option<String>,
    },
    /// The engine's token verification keys, as a JWK set.
    Jwks,
    /// Write a new Ed25519 token signing key (PKCS#8 PEM, owner-readable
    /// only) for `mandate serve --token-key`; prints its key id.
    TokenKeygen {
        /// The file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Signing keys of the tenant: list the ring, register, revoke or rotate
    /// a key, or write a new one.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Guard an MCP server: a proxy between an agent and the server's
    /// command (after `--`) that checks every tool call, resource read and
    /// prompt against --mandate.
    McpGateway(super::mcp::GatewayArgs),
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

/// `mandate keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// The tenant's key ring: configured and registered keys, with status.
    List,
    /// Register a signing key (administrators for anyone, any other actor
    /// for itself).
    Register {
        /// The key's id, never reused in the tenant: [A-Za-z0-9._-], 1 to 64.
        #[arg(value_name = "KEY_ID")]
        id: String,
        /// Who signs with it: principal:<id>, agent:<id> or admin:<id>.
        #[arg(long, value_name = "ACTOR")]
        owner: String,
        #[command(flatten)]
        public_key: PublicKeyArgs,
        /// After this moment the key signs nothing, RFC 3339.
        #[arg(long, value_name = "TIME")]
        not_after: Option<DateTime<Utc>>,
    },
    /// Revoke a registered key for good.
    Revoke {
        /// The key's id.
        #[arg(value_name = "KEY_ID")]
        id: String,
        /// Why, recorded in the event.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Register a new key for the owner of KEY_ID and revoke KEY_ID, in one
    /// commit.
    Rotate {
        /// The key's id.
        #[arg(value_name = "KEY_ID")]
        id: String,
        /// The new key's id.
        #[arg(long, value_name = "ID")]
        new_key_id: String,
        #[command(flatten)]
        public_key: PublicKeyArgs,
        /// After this moment the new key signs nothing, RFC 3339.
        #[arg(long, value_name = "TIME")]
        not_after: Option<DateTime<Utc>>,
    },
    /// Write a new Ed25519 signing key (PKCS#8 PEM, owner-readable only,
    /// the format of `token-keygen`); prints its public key (base64url),
    /// for `keys register`.
    Keygen {
        /// The file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// The public key of `keys register` and `keys rotate`.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PublicKeyArgs {
    /// The Ed25519 public key, base64url without padding.
    #[arg(long, value_name = "B64")]
    pub public_key: Option<String>,
    /// Or the private key file (PKCS#8 PEM) whose public key it is.
    #[arg(long, value_name = "FILE")]
    pub public_key_of: Option<PathBuf>,
}

/// The arguments of `issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The principal (a person) on whose authority the agent acts; the
    /// actor must be this principal or a tenant administrator.
    #[arg(long, value_name = "ID")]
    pub principal: String,
    /// The agent that receives the mandate.
    #[arg(long, value_name = "ID")]
    pub agent: String,
    /// What the mission is for, in words (shown in `tree` and audits).
    #[arg(long, value_name = "TEXT")]
    pub purpose: String,
    /// External mission reference whose completion ends it (e.g.
    /// jira:FIN-42). A completed mission takes no new mandates: a new
    /// piece of work needs a new ref.
    #[arg(long, value_name = "REF")]
    pub mission_ref: Option<String>,
    /// A grant, 'ACTION on RESOURCE' (repeat).
    #[arg(long = "grant", required = true, value_name = "GRANT")]
    pub grants: Vec<String>,
    /// Lifetime, e.g. 30m, 8h, 2d.
    #[arg(long, default_value = "8h", value_name = "DURATION")]
    pub ttl: String,
    /// How many levels of delegation may follow below this mandate (0:
    /// it may not be delegated).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub depth: u32,
    /// Actions needing step-up approval (repeat).
    #[arg(long, value_name = "ACTION")]
    pub step_up: Vec<String>,
}

/// The arguments of `delegate`.
#[derive(Args, Debug)]
pub struct DelegateArgs {
    /// The mandate to delegate from (its id, a UUID).
    #[arg(value_name = "PARENT")]
    pub parent: String,
    /// The agent that receives the new mandate.
    #[arg(long, value_name = "ID")]
    pub agent: String,
    /// A grant, 'ACTION on RESOURCE' (repeat); each must be covered by
    /// the scope of the parent and of every mandate above it.
    #[arg(long = "grant", required = true, value_name = "GRANT")]
    pub grants: Vec<String>,
    /// Lifetime from now, e.g. 30m, 8h, 2d (default: the parent's end, or
    /// an earlier end above it).
    #[arg(long, value_name = "DURATION", conflicts_with = "not_after")]
    pub ttl: Option<String>,
    /// End at this moment, RFC 3339 (e.g. 2026-11-26T17:00:00Z); no
    /// later than the parent's end, nor than any end above it.
    #[arg(long, value_name = "TIME")]
    pub not_after: Option<DateTime<Utc>>,
    /// Levels of delegation that may follow below the new mandate
    /// (default: one less than the parent's).
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,
}

/// The request an approval is bound to.
#[derive(Args, Debug)]
pub struct ApprovalRequestArgs {
    /// The action, e.g. payments:refund.
    #[arg(long, value_name = "ACTION")]
    pub action: String,
    /// The resource, e.g. tickets/T-1042.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: String,
    /// The action's parameters as JSON; the approval is bound to the SHA-256
    /// of their canonical form (keys sorted, no whitespace).
    #[arg(long, value_name = "JSON", conflicts_with = "params_hash")]
    pub params: Option<String>,
    /// The parameters' hash as is: 64 lowercase hex digits.
    #[arg(long, value_name = "HEX")]
    pub params_hash: Option<String>,
}

impl Cmd {
    /// The name of a command that changes authority (and so must name its
    /// actor); `None` for queries, `serve`, `rebuild` and the self-contained
    /// demo.
    pub(crate) fn changes_authority(&self) -> Option<&'static str> {
        match self {
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
            Cmd::RequestApproval { .. } => Some("request-approval"),
            Cmd::Approve { .. } => Some("approve"),
            Cmd::DenyApproval { .. } => Some("deny-approval"),
            Cmd::UseApproval { .. } => Some("use-approval"),
            Cmd::Keys(KeysCmd::Register { .. }) => Some("keys register"),
            Cmd::Keys(KeysCmd::Revoke { .. }) => Some("keys revoke"),
            Cmd::Keys(KeysCmd::Rotate { .. }) => Some("keys rotate"),
            Cmd::Keys(KeysCmd::List | KeysCmd::Keygen { .. }) => None,
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
            | Cmd::Health
            | Cmd::Token { .. }
            | Cmd::Jwks
            | Cmd::TokenKeygen { .. }
            | Cmd::McpGateway(_) => None,
        }
    }
}
