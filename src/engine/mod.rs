//! The engine: command handling, projection, cascade signals, expiry,
//! mission-complete intake, queries and audit.
//!
//! One [`Engine`] value is one instance. It runs over NATS (JetStream log,
//! NATS signals, [`service`] answering request-reply) or in-process (embedded
//! log, in-process signal hub) with the same API, so single-process users and
//! the quickstart get real behaviour.
//!
//! Consistency: each tree is one stream; an append names the head it decided
//! on (optimistic concurrency), so several instances serve one tenant without
//! a leader. A conflict is retried from fresh state; the caller sees one
//! answer. Within one instance, commands on one tree take turns (a lock per
//! tree in `write.rs`), so conflicts come only from other instances. The instance that wrote a commit applies it to its projection at
//! once (read-your-writes) and publishes its signals (which every other
//! instance publishes too, after a delay, if the stream does not hold them:
//! `signals.rs`); the follower applies everyone's commits in log order and
//! moves the checkpoint.
//!
//! # Public surface
//! Every public method of [`Engine`], and the file that defines it. Each of
//! these files holds public methods only; the machinery behind them lives in
//! private modules (below).
//!
//! | Concern | Methods | File |
//! |---|---|---|
//! | Open | [`Engine::new`], [`Engine::embedded`], [`Engine::nats`] | `lifecycle.rs` |
//! | Run and stop | [`Engine::start`] (→ [`BackgroundGuard::stop`]), [`Engine::run_background`] | `lifecycle.rs` |
//! | Projection | [`Engine::catch_up`], [`Engine::rebuild_check`] (and [`replay_log`]) | `lifecycle.rs` |
//! | The instance | [`Engine::store`], [`Engine::log`], [`Engine::bus`], [`Engine::instance`], [`Engine::clock`], [`Engine::now`], [`Engine::serves`], [`Engine::append_conflicts`], [`Engine::beacons_sent`] | `lifecycle.rs` |
//! | Commands | [`Engine::execute`], [`Engine::execute_bulk`] | `commands.rs` |
//! | Queries | [`Engine::status`], [`Engine::status_of`], [`Engine::chain`], [`Engine::chain_of`], [`Engine::tree`], [`Engine::tree_at`], [`Engine::history`], [`Engine::verify`], [`Engine::list`], [`Engine::check`], [`Engine::audit`], [`Engine::health`], [`Engine::health_of`], [`Engine::keys`] | `queries.rs` |
//! | Request-reply | [`Engine::serve`], [`Engine::handle`], [`Engine::handle_remote`], [`Engine::handle_remote_signed`] (and [`service::round_trip`]) | `service.rs` |
//! | Metrics | [`Engine::metrics`] (Prometheus text exposition) | `metrics.rs` |
//!
//! Errors are [`EngineError`]s: branch on [`EngineError::kind`] (and
//! [`EngineError::rejection`] for the domain's reason), never on the
//! message (`error.rs`). Time comes from [`EngineConfig::clock`]
//! (`clock.rs`).
//!
//! # Private machinery
//! - `write.rs`: the write path (decide, append with the expected head, retry
//!   conflicts, apply, signal) and grants that a block must end.
//! - `catch_up.rs`: bringing one tree, or the whole projection, up to the log
//!   before deciding or answering.
//! - `automatic.rs`: commands the engine writes itself (expiry, mission
//!   completion, trees a completed mission left behind).
//! - `background.rs`: applying log records, the projector, the expiry
//!   scheduler, the republisher of signals and the beacons.
//! - `read.rs`: resolving trees and mandates for queries, summaries, audit
//!   records of checks.
//! - `metrics.rs` also holds what the request path and the write path
//!   count (commands, checks, queries, cascades, signals), and the walk
//!   that counts a cascade, off the reply's path.
//! - [`missions`]: the mission-complete intake; [`audit`]: the audit stream;
//!   [`signals`]: the signal bus; [`auth`]: request signatures; [`sets`]:
//!   security event tokens, published and pushed.

pub mod audit;
pub mod auth;
mod automatic;
mod background;
mod catch_up;
mod clock;
mod commands;
mod continuity;
mod error;
mod lifecycle;
mod metrics;
pub mod missions;
mod queries;
mod read;
pub mod service;
pub mod sets;
pub mod signals;
pub mod tokens;
mod write;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::{DomainError, TenantId};
use crate::log::AnyLog;
use crate::store::Store;

pub use clock::Clock;
pub use continuity::ContinuityReport;
pub use error::{EngineError, EngineErrorKind};
pub use lifecycle::{replay_log, BackgroundGuard, RebuildReport};
pub use signals::{quarantine_signal, signal_for, SignalBus};

/// Engine settings. Every field has a default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This instance's id (reported by `health`, recorded in audits).
    pub instance: String,
    /// Attempts at a command when other writers keep winning the tree.
    pub max_attempts: u32,
    /// How long signals (and beacons) stay in the catch-up stream (NATS):
    /// a guard's process cut off for longer cannot have what it missed
    /// replayed, and re-reads every chain. Beacons stored over it: tenants
    /// × instances × retention / `beacon_interval` (3,600 a tenant and
    /// instance by default).
    pub signal_retention: Duration,
    /// How long recorded check decisions stay in the audit stream (NATS).
    pub audit_retention: Duration,
    /// Record every check answered by the engine.
    pub audit: bool,
    /// Longest sleep of the expiry scheduler between looks at the queue.
    pub expiry_tick: Duration,
    /// Before answering a read about a tree, compare its projection with the
    /// log's head for that tree (one cheap log read) and catch up if behind,
    /// so a lagging instance never answers from stale authority.
    pub fresh_reads: bool,
    /// Tenants whose actors must prove who they are (see [`auth`]); over
    /// NATS, a tenant it does not list is served only with
    /// `allow_open_tenants`.
    pub auth: Option<Arc<auth::AuthConfig>>,
    /// Serve only these tenants (requests, mission intake, expiry); empty:
    /// every tenant.
    pub tenants: Vec<TenantId>,
    /// Over NATS, serve the commands of tenants that `auth` does not list
    /// without any proof of their actor: anyone who can publish on their
    /// command subjects may act as any principal, agent or administrator.
    /// Off by default, and then such commands are refused (`forbidden`).
    /// In-process callers are trusted either way.
    pub allow_open_tenants: bool,
    /// Where the engine reads the time (the system clock by default; tests
    /// of expiry move a [`Clock::manual`] by hand).
    pub clock: Clock,
    /// Over NATS, how often this instance publishes a [`Beacon`] for each
    /// tenant it serves, into the signal stream (`mandate serve
    /// --beacon-interval`). A guard's lease must be several times longer.
    /// The embedded engine publishes none.
    ///
    /// [`Beacon`]: crate::protocol::Beacon
    pub beacon_interval: Duration,
    /// Over NATS, how long after applying another instance's commit this
    /// instance publishes that commit's signals itself, unless the signal
    /// stream holds them already: the net under a writer that died between
    /// its append and its publish. Under a minute (the signal stream
    /// deduplicates by event id over [`signals::DUPLICATE_WINDOW`]).
    pub republish_delay: Duration,
    /// The keys that sign mandate tokens (the first) and verify them (all):
    /// `mandate serve --token-key`. Without them, tokens are refused.
    pub tokens: Option<Arc<tokens::TokenKeys>>,
    /// Longest lifetime of a mandate token (`mandate serve --token-max-ttl`).
    pub token_max_ttl: Duration,
    /// The tokens' issuer, before `/<tenant>` (`mandate serve
    /// --token-issuer`).
    pub token_issuer: String,
    /// Receivers the security events are pushed to (RFC 8935, `mandate
    /// serve --set-push`); they need [`EngineConfig::tokens`] (see
    /// [`sets`]).
    pub set_push: Vec<sets::SetReceiver>,
    /// Over NATS, the replicas of every stream the engine creates or opens
    /// (events, signals, missions, dead letters, audit, security events): 1 on a single
    /// server, 3 on a cluster (`mandate serve --replicas`). A stream with
    /// another number is changed to it if the server allows, else the
    /// engine refuses to start, naming the stream and both numbers. Must
    /// equal the event log's [`JetStreamConfig::replicas`].
    ///
    /// [`JetStreamConfig::replicas`]: crate::log::JetStreamConfig::replicas
    pub replicas: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            instance: format!("engine-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            max_attempts: 32,
            signal_retention: Duration::from_secs(3600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            audit: true,
            expiry_tick: Duration::from_secs(1),
            fresh_reads: true,
            auth: None,
            tenants: Vec::new(),
            allow_open_tenants: false,
            clock: Clock::system(),
            beacon_interval: Duration::from_secs(1),
            republish_delay: Duration::from_millis(400),
            tokens: None,
            token_max_ttl: tokens::DEFAULT_MAX_TTL,
            token_issuer: tokens::DEFAULT_ISSUER.to_string(),
            set_push: Vec::new(),
            replicas: 1,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) log: AnyLog,
    pub(crate) store: Store,
    pub(crate) bus: SignalBus,
    pub(crate) config: EngineConfig,
    /// Woken whenever the projection changes, for the expiry scheduler.
    pub(crate) changed: Notify,
    pub(crate) nats: Option<async_nats::Client>,
    /// The mission stream as this instance reads it.
    pub(crate) missions: missions::MissionState,
    /// Whether the log went backwards under this instance (`continuity.rs`).
    pub(crate) continuity: continuity::Continuity,
    /// One writer per tree in this instance (`write.rs`).
    pub(crate) writers: write::TreeWriters,
    /// Appends refused because another instance wrote the tree first.
    pub(crate) conflicts: std::sync::atomic::AtomicU64,
    /// Where checks are recorded over NATS, and the count of records
    /// not stored (the audit stream refused them or never confirmed them).
    pub(crate) audit: audit::AuditSink,
    /// Commits whose signals wait to be published by this instance, and
    /// the beacons it sent (`signals.rs`).
    pub(crate) delivery: signals::Delivery,
    /// What this instance counts as it goes (`metrics.rs`).
    pub(crate) metrics: metrics::Metrics,
    /// The security events it published and pushed ([`sets`]).
    pub(crate) sets: sets::SetCounters,
}

/// One engine instance. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// Refuses a tenant mismatch between a subject and a body.
pub(crate) fn same_tenant(subject: &TenantId, body: &TenantId) -> Result<(), EngineError> {
    if subject != body {
        return Err(DomainError::TenantMismatch {
            subject_tenant: subject.clone(),
            body_tenant: body.clone(),
        }
        .into());
    }
    Ok(())
}
