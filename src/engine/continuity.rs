//! The log that went backwards: detecting it, holding the trees it affects,
//! and the operator's word that accepts it.
//!
//! The projection is built from acknowledged records. If the log later holds
//! less than the projection applied (a stream deleted and created again, a
//! tree's subject purged, a server that lost acknowledged writes in a crash),
//! the log is not news: it is loss. A lost revoke read as the truth would be
//! authority coming back to life. So the engine never believes it silently:
//!
//! - **Detection.** On start, every tree's head in the log is compared with
//!   the head the projection recorded. While following, each tick compares
//!   the log's last position and identity (a JetStream stream's creation
//!   time) with the projection's checkpoint and recorded identity; either
//!   going backwards triggers the same sweep of every tree. Every fresh read
//!   and command compares the one tree's head anyway ([`Engine::checked_head`]),
//!   so a purge of one tree is caught on its next use.
//! - **Fail closed.** A tree whose log head is below its recorded head is
//!   marked (`store::LogLoss`): checks deny (`log_went_backwards`), reads
//!   that grant (`status`, `chain`) and commands refuse with the same typed
//!   reason (code `unavailable`), and `health` lists it. Other trees go on.
//! - **No rebuild over the newer projection.** `rebuild_check` refuses while
//!   any tree is held, or any would be. Only
//!   [`Engine::accept_log_loss`] (`mandate rebuild --accept-log-loss`)
//!   drops the marks and rebuilds the projection from the log as it is: the
//!   operator accepts that what the log lost is lost.
//! - **The follower goes on.** When the log's last position fell below the
//!   checkpoint, or the stream was replaced, the checkpoint is moved back
//!   (to the log's last position, or to 0 for a new stream) and the follower
//!   restarts there, so records appended to the shorter log are applied in
//!   order; a held tree's records at or below its recorded head are already
//!   applied and pass by.

use std::sync::Mutex;
use std::time::Duration;

/// Tree heads the start sweep asks the log for at once.
const SWEEP_IN_FLIGHT: usize = 64;

use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::Notify;

use super::{Engine, EngineError};
use crate::domain::{DomainError, TenantId, TreeId};
use crate::log::{AnyLog, EventLog, LogError, Record};
use crate::protocol::LostTree;
use crate::store::LogLoss;

/// How often the follower compares the log's last position and identity
/// with the projection's.
const TICK: Duration = Duration::from_millis(500);

/// This instance's view of the log's continuity.
#[derive(Default)]
pub(crate) struct Continuity {
    /// Set (with [`Continuity::rewind_to`]) when the follower must move the
    /// checkpoint back and start again.
    rewind: Notify,
    rewind_to: Mutex<Option<u64>>,
}

/// What one comparison of the log with the projection found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContinuityReport {
    /// The log's last position is below the projection's checkpoint.
    pub behind_checkpoint: bool,
    /// The log is another one than the projection was built from (a
    /// JetStream stream deleted and created again).
    pub replaced: bool,
    /// Trees newly found behind in the log by this comparison.
    pub newly_held: Vec<(TenantId, TreeId)>,
    /// Every tree held, this comparison's and earlier ones'.
    pub held: usize,
}

impl Engine {
    /// The log's last position and, over JetStream, its identity (the
    /// stream's creation time), in one request.
    async fn log_state(&self) -> Result<(u64, Option<String>), EngineError> {
        match (&self.inner.log, &self.inner.nats) {
            (AnyLog::Nats(log), Some(nc)) => {
                let js = async_nats::jetstream::new(nc.clone());
                let unavailable = |e: String| {
                    EngineError::unavailable(format!("stream {}: {e}", log.stream_name()))
                };
                let mut stream = js
                    .get_stream(log.stream_name())
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let info = stream
                    .info()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                Ok((
                    info.state.last_sequence,
                    Some(info.created.unix_timestamp_nanos().to_string()),
                ))
            }
            (log, _) => Ok((log.last_position().await?, None)),
        }
    }

    /// Compares the log with the projection (see the module docs); with
    /// `sweep`, every tree's head whatever the overall comparison says.
    /// Marks the trees found behind, and when the log as a whole went
    /// backwards, moves the checkpoint back: at once when `follower_running`
    /// is false, else through the follower.
    pub async fn check_continuity(
        &self,
        sweep: bool,
        follower_running: bool,
    ) -> Result<ContinuityReport, EngineError> {
        let store = &self.inner.store;
        let checkpoint = store.checkpoint()?;
        let (last, identity) = self.log_state().await?;
        let recorded = store.log_identity()?;
        let mut report = ContinuityReport {
            behind_checkpoint: last < checkpoint,
            replaced: matches!((&recorded, &identity), (Some(r), Some(i)) if r != i),
            ..ContinuityReport::default()
        };
        if sweep || report.behind_checkpoint || report.replaced {
            // Many heads in flight at once: a restart over many trees
            // waits for the slowest of a few rounds, not for one per tree.
            let log = &self.inner.log;
            let mut found = futures::stream::iter(store.tree_heads()?)
                .map(|(tenant, tree, head)| async move {
                    let found = log.tree_head(&tenant, tree).await;
                    (tenant, tree, head, found)
                })
                .buffer_unordered(SWEEP_IN_FLIGHT);
            while let Some((tenant, tree, head, found)) = found.next().await {
                let found = found?;
                if found < head && self.mark_lost(&tenant, tree, head, found)? {
                    report.newly_held.push((tenant, tree));
                }
            }
        }
        if report.behind_checkpoint || report.replaced {
            let to = if report.replaced { 0 } else { last };
            tracing::error!(
                checkpoint,
                log_last = last,
                replaced = report.replaced,
                held = report.newly_held.len(),
                "the event log went backwards; affected trees are held, the follower restarts at {to}"
            );
            if follower_running {
                *self
                    .inner
                    .continuity
                    .rewind_to
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(to);
                self.inner.continuity.rewind.notify_one();
            } else {
                store.rewind_checkpoint(to)?;
            }
        }
        if let Some(identity) = identity.filter(|i| recorded.as_ref() != Some(i)) {
            store.set_log_identity(&identity)?;
        }
        report.held = store.log_losses(None)?.len();
        Ok(report)
    }

    /// Marks one tree as behind in the log; returns whether the mark is new.
    fn mark_lost(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        recorded: u64,
        found: u64,
    ) -> Result<bool, EngineError> {
        let loss = LogLoss {
            recorded,
            found,
            detected_at: Utc::now(),
        };
        let new = self.inner.store.mark_log_loss(tenant, tree, &loss)?;
        if new {
            tracing::error!(%tenant, %tree, recorded, found, "the event log lost acknowledged records of this tree; it is held");
            self.inner.changed.notify_waiters();
            self.signal_log_loss(tenant, tree, recorded, found);
        }
        Ok(new)
    }

    /// Tells the tree's guards that it is held: a `quarantined` signal on
    /// its root, without a position (the log's positions may start again),
    /// so a guard denies until a re-read succeeds, which the engine refuses
    /// while the tree is held. Guards read their chains only when told to,
    /// so this is how they learn it. Published on a task of its own: the
    /// mark is what holds the tree, and the signal is idempotent (one
    /// message id per tree).
    fn signal_log_loss(&self, tenant: &TenantId, tree: TreeId, recorded: u64, found: u64) {
        let Ok(Some(snap)) = self.inner.store.view(tenant, tree, &[], None) else {
            return;
        };
        let q = crate::domain::Quarantine {
            position: 0,
            reason: format!(
                "the event log went backwards on this tree (it held position {recorded}, the log now {found}); it is held until an operator accepts the loss"
            ),
        };
        let Some(mut signal) = super::quarantine_signal(&snap.tree, &q, self.now()) else {
            return;
        };
        signal.position = None;
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.inner.bus.publish(&signal).await {
                tracing::error!(tree = %signal.tree, error = %e, "log-loss signal not published");
            }
        });
    }

    /// The tree's head in the log, compared with `recorded` (the head this
    /// instance's projection holds, read before this call): a head below it
    /// marks the tree as behind in the log, which the read or command that
    /// asked then refuses (see [`Engine::log_hold`]).
    pub(crate) async fn checked_head(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        recorded: u64,
    ) -> Result<u64, EngineError> {
        let found = self.inner.log.tree_head(tenant, tree).await?;
        if found < recorded {
            self.mark_lost(tenant, tree, recorded, found)?;
        }
        Ok(found)
    }

    /// Why this tree is held because the log went backwards, if it is.
    pub(crate) fn log_hold(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<DomainError>, EngineError> {
        Ok(self
            .inner
            .store
            .log_loss(tenant, tree)?
            .map(|l| DomainError::LogWentBackwards {
                tree,
                recorded: l.recorded,
                found: l.found,
            }))
    }

    /// The tenant's trees held because the log went backwards, for `health`.
    pub(crate) fn lost_trees(&self, tenant: &TenantId) -> Result<Vec<LostTree>, EngineError> {
        Ok(self
            .inner
            .store
            .log_losses(Some(tenant))?
            .into_iter()
            .map(|(_, tree, l)| LostTree {
                tree,
                recorded: l.recorded,
                found: l.found,
                detected_at: l.detected_at,
            })
            .collect())
    }

    /// Refuses to go on while the log is behind the projection anywhere:
    /// compares every tree first.
    pub(crate) async fn refuse_if_log_lost(&self) -> Result<(), EngineError> {
        // A follower, if one runs, moves the checkpoint back itself.
        self.check_continuity(true, true).await?;
        match self.inner.store.log_losses(None)?.into_iter().next() {
            Some((_, tree, l)) => Err(DomainError::LogWentBackwards {
                tree,
                recorded: l.recorded,
                found: l.found,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The operator's word: accepts that the log lost what it lost. Drops
    /// every hold, empties the projection and rebuilds it from the log as it
    /// is now (the trees come back as the log has them: a lost revoke is
    /// lost). Run it on a stopped engine. Returns the records replayed and
    /// the trees that had been held.
    pub async fn accept_log_loss(&self) -> Result<(u64, usize), EngineError> {
        self.check_continuity(true, false).await?;
        let held = self.inner.store.log_losses(None)?.len();
        tracing::warn!(held, "an operator accepts the loss of the event log's records; rebuilding from the log as it is");
        self.inner.store.clear_projection()?;
        let records = super::replay_log(&self.inner.log, &self.inner.store).await?;
        self.inner.store.clear_log_losses()?;
        if let (_, Some(identity)) = self.log_state().await? {
            self.inner.store.set_log_identity(&identity)?;
        }
        self.inner.store.flush().await?;
        Ok((records, held))
    }

    /// The follower's next record, or `None` when the log went backwards and
    /// the checkpoint was moved back: the follower then opens again from it.
    pub(crate) async fn next_unless_rewound(
        &self,
        stream: &mut BoxStream<'static, Result<Record, LogError>>,
    ) -> Result<Option<Result<Record, LogError>>, EngineError> {
        tokio::select! {
            item = stream.next() => Ok(item),
            _ = self.inner.continuity.rewind.notified() => {
                let to = self
                    .inner
                    .continuity
                    .rewind_to
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(to) = to {
                    self.inner.store.rewind_checkpoint(to)?;
                }
                Ok(None)
            }
        }
    }

    /// Compares the log with the projection every tick while the engine
    /// runs. A comparison that fails (the log unreachable) is tried again.
    pub(crate) async fn watch_continuity(&self) -> Result<(), EngineError> {
        loop {
            tokio::time::sleep(TICK).await;
            if let Err(e) = self.check_continuity(false, true).await {
                tracing::warn!(error = %e, "cannot compare the log with the projection; trying again");
            }
        }
    }
}
