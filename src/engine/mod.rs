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
//! answer. The instance that wrote a commit applies it to its projection at
//! once (read-your-writes) and publishes its signals; the follower applies
//! everyone's commits in log order and moves the checkpoint.

pub mod auth;
mod commands;
mod continuity;
pub mod missions;
mod queries;
pub mod service;
pub mod signals;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::domain::{DomainError, ErrorCode, TenantId, TreeId};
use crate::log::{AnyLog, EventLog, LogError};
use crate::protocol::{ErrorBody, Health, QuarantinedTree};
use crate::store::{Applied, DueExpiry, Store, StoreError};

pub use continuity::ContinuityReport;
pub use signals::{quarantine_signal, signal_for, SignalBus};

/// Engine failures. Rejections ([`EngineError::Rejected`]) are the caller's
/// to fix; the others are the infrastructure's.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The command or query was understood and refused.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Not found in this tenant (another tenant's ids are not found either).
    #[error("{0}")]
    NotFound(String),
    /// Invalid request outside the domain's own checks (subject, body size).
    #[error("{0}")]
    Invalid(String),
    /// Too many concurrent writers on one tree; retry.
    #[error("gave up after {0} conflicting attempts on one tree; retry")]
    Contended(u32),
    /// The log, NATS or storage cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(LogError),
}

impl From<LogError> for EngineError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Unavailable(m) => EngineError::Unavailable(m),
            LogError::TimedOut => {
                EngineError::Unavailable("event log did not acknowledge in time".into())
            }
            other => EngineError::Log(other),
        }
    }
}

impl EngineError {
    /// The wire form.
    pub fn to_body(&self) -> ErrorBody {
        let code = match self {
            EngineError::Rejected(d) => d.code(),
            EngineError::NotFound(_) => ErrorCode::NotFound,
            EngineError::Invalid(_) => ErrorCode::InvalidInput,
            EngineError::Contended(_) => ErrorCode::Conflict,
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
            EngineError::Log(LogError::TooLarge { .. }) => ErrorCode::InvalidInput,
            EngineError::Log(LogError::Locked { .. }) => ErrorCode::Unavailable,
            EngineError::Store(_) | EngineError::Log(_) => ErrorCode::Internal,
        };
        ErrorBody {
            code,
            message: self.to_string(),
            reason: match self {
                EngineError::Rejected(d) => Some(d.reason().to_string()),
                _ => None,
            },
        }
    }
}

/// Engine settings. Every field has a default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This instance's id (reported by `health`, recorded in audits).
    pub instance: String,
    /// Attempts at a command when other writers keep winning the tree.
    pub max_attempts: u32,
    /// How long signals stay in the catch-up stream (NATS).
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            instance: format!("engine-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            max_attempts: 32,
            signal_retention: Duration::from_secs(24 * 3600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            audit: true,
            expiry_tick: Duration::from_secs(1),
            fresh_reads: true,
            auth: None,
            tenants: Vec::new(),
            allow_open_tenants: false,
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
}

/// One engine instance. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl Engine {
    /// An engine over a log, a projection and a signal bus. Call
    /// [`Engine::start`] to run its background tasks.
    pub async fn new(
        log: AnyLog,
        store: Store,
        bus: SignalBus,
        nats: Option<async_nats::Client>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        bus.setup(config.signal_retention).await?;
        let mission_state = match &nats {
            Some(client) => missions::setup_streams(client, &config).await?,
            None => missions::MissionState::default(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                store,
                bus,
                config,
                changed: Notify::new(),
                nats,
                missions: mission_state,
                continuity: Default::default(),
            }),
        })
    }

    /// The embedded engine: sled log and projection under `dir`, in-process
    /// signals.
    pub async fn embedded(
        dir: &std::path::Path,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            EngineError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let log = crate::log::EmbeddedLog::open(dir.join("log"))?;
        let store = Store::open(dir.join("projection"))?;
        Self::new(
            AnyLog::Embedded(log),
            store,
            SignalBus::local(),
            None,
            config,
        )
        .await
    }

    /// The engine over NATS: JetStream log and signals; projection under `dir`.
    pub async fn nats(
        client: async_nats::Client,
        dir: &std::path::Path,
        log_config: crate::log::JetStreamConfig,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let js = async_nats::jetstream::new(client.clone());
        let log = crate::log::JetStreamLog::open(client.clone(), log_config).await?;
        std::fs::create_dir_all(dir).map_err(|e| {
            EngineError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let store = Store::open(dir.join("projection"))?;
        let bus = SignalBus::Nats {
            client: client.clone(),
            js: Box::new(js),
        };
        Self::new(AnyLog::Nats(log), store, bus, Some(client), config).await
    }

    /// The projection this instance reads.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The log this instance writes.
    pub fn log(&self) -> &AnyLog {
        &self.inner.log
    }

    /// The signal bus (guards subscribe through it in-process).
    pub fn bus(&self) -> &SignalBus {
        &self.inner.bus
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.inner.config.instance
    }

    /// Catches the projection up with the log once (used at start and by
    /// tests). Returns the new checkpoint.
    pub async fn catch_up(&self) -> Result<u64, EngineError> {
        loop {
            let after = self.inner.store.checkpoint()?;
            let records = match self.inner.log.read_all(None, after, 1024).await {
                Ok(records) => records,
                Err(LogError::Corrupt {
                    position,
                    subject_or_key,
                    reason,
                }) => {
                    self.apply_corrupt_record(position, &subject_or_key, &reason, true)
                        .await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if records.is_empty() {
                return Ok(after);
            }
            for r in records {
                self.apply_logged(&r, true).await?;
            }
        }
    }

    /// [`Engine::apply_record`], and if the record quarantined its tree, the
    /// `quarantined` signal on the tree's root.
    pub(crate) async fn apply_logged(
        &self,
        r: &crate::log::Record,
        advance: bool,
    ) -> Result<Applied, EngineError> {
        let applied = self.apply_record(r, advance)?;
        self.signal_quarantine(&r.tenant, r.tree, &applied).await;
        Ok(applied)
    }

    /// A record the log could not decode: it quarantines the tree its subject
    /// names. One that names no tree is reported and passed.
    pub(crate) async fn apply_corrupt_record(
        &self,
        position: u64,
        subject: &str,
        reason: &str,
        advance: bool,
    ) -> Result<Applied, EngineError> {
        let Some((tenant, tree)) = crate::log::tree_of_subject(subject) else {
            tracing::error!(position, %subject, %reason, "corrupt record in the log names no tree");
            if advance {
                self.inner.store.advance_checkpoint(position)?;
            }
            return Ok(Applied::AlreadyApplied);
        };
        let applied = self
            .inner
            .store
            .apply_corrupt(&tenant, tree, position, reason, advance)?;
        self.inner.changed.notify_waiters();
        self.signal_quarantine(&tenant, tree, &applied).await;
        Ok(applied)
    }

    /// Tells the tree's guards that it is quarantined (idempotent: every
    /// instance that finds the bad record publishes the same message id).
    async fn signal_quarantine(&self, tenant: &TenantId, tree: TreeId, applied: &Applied) {
        let Applied::Quarantined(q) = applied else {
            return;
        };
        tracing::error!(%tenant, %tree, position = q.position, reason = %q.reason, "tree quarantined");
        let Ok(Some(snap)) = self.inner.store.tree_shared(tenant, tree) else {
            return;
        };
        if let Some(signal) = quarantine_signal(&snap.tree, q) {
            if let Err(e) = self.inner.bus.publish(&signal).await {
                // Guards still learn it on their next re-read.
                tracing::error!(%tenant, %tree, error = %e, "quarantine signal not published");
            }
        }
    }

    pub(crate) fn apply_record(
        &self,
        r: &crate::log::Record,
        advance: bool,
    ) -> Result<Applied, EngineError> {
        let applied = self
            .inner
            .store
            .apply_commit(&r.tenant, r.tree, r.position, &r.payload, advance)?;
        self.inner.changed.notify_waiters();
        if let Applied::Applied(events) = &applied {
            self.end_blocked_grants(&r.tenant, r.tree, events);
        }
        Ok(applied)
    }

    /// Runs the background tasks — the in-order projector, the expiry
    /// scheduler and (over NATS) the mission-complete intake and the follower
    /// of completed missions — until
    /// `shutdown` resolves.
    pub async fn run_background(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), EngineError> {
        // A log that lost what the projection applied is loss, not news:
        // the trees it affects are held before anything is read from it.
        self.check_continuity(true, false).await?;
        self.catch_up().await?;
        // Trees an older build could not read past a newer event: this build
        // may read them now (a rolling upgrade), so try them again at once
        // rather than on their next read.
        for (tenant, tree) in self.inner.store.unsupported_trees()? {
            let position = self
                .inner
                .store
                .tree_shared(&tenant, tree)?
                .map_or(0, |s| s.position);
            if let Err(e) = self.catch_up_tree(&tenant, tree, position).await {
                tracing::warn!(%tenant, %tree, error = %e, "cannot re-read a tree marked as too new");
            }
        }
        let projector = self.projector();
        let expiry = self.expiry_scheduler();
        let intake = missions::intake(self.clone());
        let marks = missions::follow_marks(self.clone());
        tokio::select! {
            r = projector => r,
            r = expiry => r,
            r = intake => r,
            r = marks => r,
            r = self.watch_continuity() => r,
            _ = shutdown => {
                self.inner.store.flush().await?;
                Ok(())
            }
        }
    }

    /// Starts the background tasks on the runtime; they stop with the
    /// returned guard's `stop` (or when it is dropped).
    pub fn start(&self) -> BackgroundGuard {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let me = self.clone();
        let handle = tokio::spawn(async move {
            let res = me
                .run_background(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = &res {
                tracing::error!(error = %e, "engine background task failed");
            }
            res
        });
        BackgroundGuard {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    async fn projector(&self) -> Result<(), EngineError> {
        loop {
            let after = self.inner.store.checkpoint()?;
            let mut stream = match self.inner.log.follow(None, after).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the log; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(item) = self.next_unless_rewound(&mut stream).await? {
                match item {
                    Ok(r) => {
                        self.apply_logged(&r, true).await?;
                        self.end_if_orphaned(&r.tenant, r.tree)?;
                    }
                    Err(LogError::Corrupt {
                        position,
                        subject_or_key,
                        reason,
                    }) => {
                        // Quarantines the tree its subject names; no other
                        // tree is held up by it.
                        self.apply_corrupt_record(position, &subject_or_key, &reason, true)
                            .await?;
                    }
                    Err(e) => tracing::warn!(error = %e, "log follow interrupted; it recovers"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn expiry_scheduler(&self) -> Result<(), EngineError> {
        const PAGE: usize = 256;
        loop {
            let now = Utc::now();
            // One pass over everything due, page by page: entries this
            // instance does not serve, or cannot expire yet (a quarantined
            // tree), stay in the queue but never keep the others waiting.
            let mut after: Option<DueExpiry> = None;
            loop {
                let due = self.inner.store.due_expiries(now, after.as_ref(), PAGE)?;
                for e in &due {
                    if !self.serves(&e.tenant) {
                        continue;
                    }
                    if let Err(err) = self.expire(e, now).await {
                        tracing::warn!(tenant = %e.tenant, mandate = %e.mandate, error = %err, "expiry failed; will retry");
                    }
                }
                match due.last() {
                    Some(last) if due.len() == PAGE => after = Some(last.clone()),
                    _ => break,
                }
            }
            // What is still due after a full pass waits for the next tick
            // (or a change), not a busy loop.
            let wait = match self.inner.store.next_expiry()? {
                Some(t) if t > now => (t - now)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(self.inner.config.expiry_tick),
                _ => self.inner.config.expiry_tick,
            };
            let changed = self.inner.changed.notified();
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                _ = changed => {}
            }
        }
    }

    /// Rebuilds a fresh projection from the whole log and compares it with
    /// this instance's (after catching up). If they differ, the live
    /// projection is replaced by the rebuild.
    pub async fn rebuild_check(&self) -> Result<RebuildReport, EngineError> {
        // Never over a projection newer than the log without an operator's
        // word (`accept_log_loss`).
        self.refuse_if_log_lost().await?;
        self.catch_up().await?;
        let fresh = Store::temporary()?;
        let records = replay_log(&self.inner.log, &fresh).await?;
        let equal = fresh.dump()? == self.inner.store.dump()?;
        if !equal {
            tracing::warn!("projection differs from a rebuild; rebuilding in place");
            self.inner.store.clear()?;
            replay_log(&self.inner.log, &self.inner.store).await?;
            self.inner.store.flush().await?;
        }
        Ok(RebuildReport { records, equal })
    }

    /// Whether this instance serves `tenant`.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        let t = &self.inner.config.tenants;
        t.is_empty() || t.contains(tenant)
    }

    /// The instance's health.
    pub async fn health(&self) -> Result<Health, EngineError> {
        let position = self.inner.store.checkpoint()?;
        let log_position = self.inner.log.last_position().await?;
        Ok(Health {
            instance: self.inner.config.instance.clone(),
            backend: match self.inner.log {
                AnyLog::Nats(_) => "nats".into(),
                AnyLog::Embedded(_) => "embedded".into(),
            },
            position,
            log_position,
            lag: log_position.saturating_sub(position),
            time: Utc::now(),
            quarantined: Vec::new(),
            log_went_backwards: Vec::new(),
            rejected_mission_completions: self.rejected_completions().await?,
        })
    }

    /// The instance's health as one tenant sees it: with that tenant's
    /// quarantined trees (another tenant's are not its business).
    pub async fn health_of(&self, tenant: &TenantId) -> Result<Health, EngineError> {
        let mut health = self.health().await?;
        health.quarantined = self
            .inner
            .store
            .quarantined_trees(tenant)?
            .into_iter()
            .map(|(tree, q)| QuarantinedTree {
                tree,
                position: q.position,
                reason: q.reason,
            })
            .collect();
        health.log_went_backwards = self.lost_trees(tenant)?;
        Ok(health)
    }
}

/// What a rebuild found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// Log records replayed.
    pub records: u64,
    /// Whether the live projection equalled the rebuild.
    pub equal: bool,
}

/// Applies every record of `log` to `store`, in order; returns how many.
pub async fn replay_log(log: &AnyLog, store: &Store) -> Result<u64, EngineError> {
    let mut after = store.checkpoint()?;
    let mut n = 0;
    loop {
        let records = match log.read_all(None, after, 4096).await {
            Ok(records) => records,
            Err(LogError::Corrupt {
                position,
                subject_or_key,
                reason,
            }) => {
                // As the follower does: the tree its subject names is
                // quarantined, so a rebuild equals the live projection.
                match crate::log::tree_of_subject(&subject_or_key) {
                    Some((tenant, tree)) => {
                        store.apply_corrupt(&tenant, tree, position, &reason, true)?;
                    }
                    None => store.advance_checkpoint(position)?,
                }
                after = position;
                n += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            return Ok(n);
        }
        for r in records {
            store.apply_commit(&r.tenant, r.tree, r.position, &r.payload, true)?;
            after = r.position;
            n += 1;
        }
    }
}

/// Stops the background tasks when told to or dropped.
pub struct BackgroundGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
}

impl BackgroundGuard {
    /// Stops the tasks and waits for them (the projection is flushed).
    pub async fn stop(mut self) -> Result<(), EngineError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h
                .await
                .map_err(|e| EngineError::Unavailable(format!("background task panicked: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The time used for a query: `at` if given, else now.
pub(crate) fn moment(at: Option<DateTime<Utc>>) -> DateTime<Utc> {
    at.unwrap_or_else(Utc::now)
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
