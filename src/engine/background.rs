//! The background tasks' machinery: applying log records to the
//! projection (and the signals a quarantine sends), the in-order projector
//! and the expiry scheduler.

use std::time::Duration;

use crate::domain::{TenantId, TreeId};
use crate::log::{EventLog, LogErrorKind};
use crate::store::{Applied, DueExpiry};

use super::{quarantine_signal, Engine, EngineError};

impl Engine {
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
    pub(super) async fn signal_quarantine(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        applied: &Applied,
    ) {
        let Applied::Quarantined(q) = applied else {
            return;
        };
        tracing::error!(%tenant, %tree, position = q.position, reason = %q.reason, "tree quarantined");
        let Ok(Some(snap)) = self.inner.store.view(tenant, tree, &[], None) else {
            return;
        };
        if let Some(signal) = quarantine_signal(&snap.tree, q, self.now()) {
            if let Err(e) = self.inner.bus.publish(&signal).await {
                // Guards still learn it on their next re-read.
                tracing::error!(%tenant, %tree, error = %e, "quarantine signal not published");
            }
        }
    }

    /// Many records as one atomic batch ([`crate::store::Store::apply_commits`]),
    /// then for each what [`Engine::apply_logged`] does after applying it.
    /// A tree caught up from far behind moves from its old state to its
    /// new one at once: no read sees it halfway.
    pub(crate) async fn apply_all_logged(
        &self,
        records: &[crate::log::Record],
        advance: bool,
    ) -> Result<(), EngineError> {
        if records.is_empty() {
            return Ok(());
        }
        let applied = self
            .inner
            .store
            .apply_commits(&super::lifecycle::commits_of(records), advance)?;
        self.inner.changed.notify_waiters();
        for (r, a) in records.iter().zip(&applied) {
            if let Applied::Applied(events) = a {
                self.end_blocked_grants(&r.tenant, r.tree, events);
            }
            self.signal_quarantine(&r.tenant, r.tree, a).await;
        }
        Ok(())
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

    pub(super) async fn projector(&self) -> Result<(), EngineError> {
        loop {
            let after = self.inner.store.checkpoint()?;
            let follow = self.inner.log.follow(None, after).await;
            let pause = Duration::from_millis(500);
            let Some(mut stream) =
                super::missions::or_pause(follow, "cannot follow the log", pause).await
            else {
                continue;
            };
            while let Some(item) = self.next_unless_rewound(&mut stream).await? {
                match item {
                    Ok(r) => {
                        self.apply_logged(&r, true).await?;
                        self.end_if_orphaned(&r.tenant, r.tree)?;
                    }
                    // Quarantines the tree its subject names; no other tree
                    // is held up by it.
                    Err(e) if e.kind() == LogErrorKind::Corrupt => {
                        self.pass_corrupt(e, 0).await?;
                    }
                    Err(e) => tracing::warn!(error = %e, "log follow interrupted; it recovers"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) async fn expiry_scheduler(&self) -> Result<(), EngineError> {
        const PAGE: usize = 256;
        loop {
            // Registered before the time is read, so no change or move of
            // the clock falls between the look and the wait.
            let changed = self.inner.changed.notified();
            let moved = self.inner.config.clock.moved();
            let now = self.now();
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
                    if let Err(err) = self.expire(e).await {
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
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                _ = changed => {}
                _ = moved => {}
            }
        }
    }
}
