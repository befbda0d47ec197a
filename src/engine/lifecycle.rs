//! The instance's life: opening an engine (over NATS or embedded), its
//! accessors, running and stopping its background tasks, catching up and
//! rebuilding its projection.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::domain::TenantId;
use crate::log::{AnyLog, EventLog, LogError};
use crate::store::Store;

use super::{audit, missions, Clock, Engine, EngineConfig, EngineError, Inner, SignalBus};

impl Engine {
    /// An engine over a log, a projection and a signal bus. Call
    /// [`Engine::start`] to run its background tasks. Over NATS, `dir` is
    /// where the audit outbox is kept (the data directory).
    pub async fn new(
        log: AnyLog,
        store: Store,
        bus: SignalBus,
        nats: Option<async_nats::Client>,
        dir: Option<&std::path::Path>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        if config.republish_delay >= super::signals::DUPLICATE_WINDOW / 2 {
            return Err(EngineError::invalid(format!(
                "republish delay {:?} must be under {:?} (half the signal stream's duplicate window)",
                config.republish_delay,
                super::signals::DUPLICATE_WINDOW / 2
            )));
        }
        if !config.set_push.is_empty() && config.tokens.is_none() {
            return Err(EngineError::invalid(
                "security events are pushed only signed: a receiver needs a token signing key",
            ));
        }
        if config.beacon_interval.is_zero() {
            return Err(EngineError::invalid("beacon interval must be above zero"));
        }
        crate::log::check_replicas(config.replicas)?;
        bus.setup(config.signal_retention, config.replicas).await?;
        let mission_state = match &nats {
            Some(client) => {
                audit::setup_stream(client, config.audit_retention, config.replicas).await?;
                missions::setup_streams(client, config.replicas).await?
            }
            None => missions::MissionState::default(),
        };
        let audit = match (&nats, dir) {
            (Some(client), Some(dir)) => audit::AuditSink::new(Some((client, dir)))?,
            (Some(_), None) => {
                return Err(EngineError::invalid(
                    "over NATS the engine needs a data directory (for its audit outbox)",
                ))
            }
            (None, _) => audit::AuditSink::new(None)?,
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
                writers: Default::default(),
                conflicts: Default::default(),
                audit,
                delivery: Default::default(),
                metrics: Default::default(),
                sets: Default::default(),
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
            EngineError::unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let log = crate::log::EmbeddedLog::open(dir.join("log"))?;
        let store = Store::open(dir.join("projection"))?;
        Self::new(
            AnyLog::Embedded(log),
            store,
            SignalBus::local(),
            None,
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
        if log_config.replicas != config.replicas {
            return Err(EngineError::invalid(format!(
                "the event stream is configured with {} replica(s) and the engine's other streams with {}: give both the same number",
                log_config.replicas, config.replicas
            )));
        }
        let js = async_nats::jetstream::new(client.clone());
        let log = crate::log::JetStreamLog::open(client.clone(), log_config).await?;
        std::fs::create_dir_all(dir).map_err(|e| {
            EngineError::unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let store = Store::open(dir.join("projection"))?;
        let bus = SignalBus::Nats {
            client: client.clone(),
            js: Box::new(js),
        };
        Self::new(
            AnyLog::Nats(log),
            store,
            bus,
            Some(client),
            Some(dir),
            config,
        )
        .await
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

    /// How many appends of this instance the log refused because another
    /// instance had written the tree first (each was decided again on fresh
    /// state). Commands of one instance on one tree take turns, so only
    /// other instances cause them.
    pub fn append_conflicts(&self) -> u64 {
        self.inner
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Beacons this instance published and the stream acknowledged, and
    /// those that failed (always none in process, which publishes none).
    pub fn beacons_sent(&self) -> (u64, u64) {
        let d = &self.inner.delivery;
        (
            d.beacons_sent.load(std::sync::atomic::Ordering::Relaxed),
            d.beacons_failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.inner.config.instance
    }

    /// The clock this instance reads the time from.
    pub fn clock(&self) -> &Clock {
        &self.inner.config.clock
    }

    /// The time now, on this instance's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.config.clock.now()
    }

    /// Whether this instance serves `tenant`.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        let t = &self.inner.config.tenants;
        t.is_empty() || t.contains(tenant)
    }

    /// Catches the projection up with the log once (used at start and by
    /// tests). Returns the new checkpoint.
    pub async fn catch_up(&self) -> Result<u64, EngineError> {
        self.catch_up_until(None).await?;
        Ok(self.inner.store.checkpoint()?)
    }

    /// Runs the background tasks — the in-order projector, the expiry
    /// scheduler and (over NATS) the mission-complete intake, the follower
    /// of completed missions, the republisher of signals and the beacons —
    /// until
    /// `shutdown` resolves.
    pub async fn run_background(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), EngineError> {
        // A log that lost what the projection applied is loss, not news:
        // the trees it affects are held before anything is read from it.
        // A log that cannot be reached yet (a reconnect, a server starting)
        // is waited for: these tasks end only on an error no retry mends.
        self.until_reachable("check the log's continuity", || {
            self.check_continuity(true, false)
        })
        .await?;
        self.until_reachable("catch up with the log", || self.catch_up())
            .await?;
        // Trees an older build could not read past a newer event: this build
        // may read them now (a rolling upgrade), so try them again at once
        // rather than on their next read.
        for (tenant, tree) in self.inner.store.unsupported_trees()? {
            let position = self
                .inner
                .store
                .head(&tenant, tree)?
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
            r = self.republisher() => r,
            r = self.beacons() => r,
            r = self.security_events() => r,
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

    /// Rebuilds a fresh projection from the whole log and compares it with
    /// this instance's (after catching up). If they differ, the live
    /// projection is replaced by the rebuild; the store's mission marks and
    /// audit records, which the log does not hold, are kept (see [`Store`]).
    pub async fn rebuild_check(&self) -> Result<RebuildReport, EngineError> {
        // Never over a projection newer than the log without an operator's
        // word (`accept_log_loss`).
        self.refuse_if_log_lost().await?;
        self.catch_up().await?;
        let fresh = Store::temporary()?;
        let records = replay_log(&self.inner.log, &fresh).await?;
        let now = self.now();
        let equal = fresh.dump_at(now)? == self.inner.store.dump_at(now)?;
        if !equal {
            tracing::warn!("projection differs from a rebuild; rebuilding in place");
            self.inner.store.clear_projection()?;
            replay_log(&self.inner.log, &self.inner.store).await?;
            self.inner.store.flush().await?;
        }
        Ok(RebuildReport { records, equal })
    }
}

impl Engine {
    /// The time used for a query: `at` if given, else now.
    pub(crate) fn moment(&self, at: Option<DateTime<Utc>>) -> DateTime<Utc> {
        at.unwrap_or_else(|| self.now())
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
        // One atomic batch per read: many commits, one sled batch.
        store.apply_commits(&commits_of(&records), true)?;
        after = records.last().map_or(after, |r| r.position);
        n += records.len() as u64;
    }
}

/// Log records as commits to apply.
pub(crate) fn commits_of(records: &[crate::log::Record]) -> Vec<crate::store::Commit<'_>> {
    records
        .iter()
        .map(|r| crate::store::Commit {
            tenant: &r.tenant,
            tree: r.tree,
            position: r.position,
            payload: Ok(&r.payload),
        })
        .collect()
}

/// Stops the background tasks when told to or dropped.
pub struct BackgroundGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
}

impl Engine {
    /// Runs `step` until it succeeds or fails with an error other than
    /// unavailable, pausing between attempts.
    async fn until_reachable<T, F, Fut>(&self, what: &str, mut step: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match step().await {
                Err(e) if e.kind() == super::EngineErrorKind::Unavailable => {
                    tracing::warn!(error = %e, "cannot {what} yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }
}

impl BackgroundGuard {
    /// Resolves when the background tasks have ended on their own (they
    /// only do on an error): whoever serves requests must stop then, since
    /// without them no commit of another instance, no expiry and no mission
    /// completion reaches this instance's projection. Pending forever once
    /// the tasks were stopped or taken.
    pub async fn ended(&mut self) -> Result<(), EngineError> {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let result = handle
            .await
            .map_err(|e| EngineError::unavailable(format!("background task panicked: {e}")))
            .and_then(|r| r);
        self.handle = None;
        result
    }

    /// Stops the tasks and waits for them (the projection is flushed).
    pub async fn stop(mut self) -> Result<(), EngineError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h
                .await
                .map_err(|e| EngineError::unavailable(format!("background task panicked: {e}")))?,
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
