//! The background tasks' machinery: applying log records to the
//! projection (and the signals a quarantine sends), the in-order projector,
//! the expiry scheduler, the republisher of other instances' signals and
//! the beacons.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;

use crate::domain::{Event, TenantId, TreeId, SCHEMA_VERSION};
use crate::log::{EventLog, LogErrorKind};
use crate::protocol::Beacon;
use crate::store::{Applied, DueExpiry, OutboxEntry};

use super::signals::{may_signal, Due};
use super::{quarantine_signal, Engine, EngineError};

/// How recent a commit another instance wrote must be for this instance to
/// take on publishing its signals: a follower catching up from far behind
/// (a start after a long stop) does not publish the past again. Every
/// instance that applied such a commit in its time has published it.
const RECENT: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Commits the republisher publishes at once, at most.
const REPUBLISH_AT_ONCE: usize = 32;

/// How often the republisher reads the outbox again after a commit could
/// not be queued or published.
const RETRY_EVERY: Duration = Duration::from_secs(2);

impl Engine {
    /// [`Engine::apply_record`], and if the record quarantined its tree, the
    /// `quarantined` signal on the tree's root.
    pub(crate) async fn apply_logged(
        &self,
        r: &crate::log::Record,
        advance: bool,
    ) -> Result<Applied, EngineError> {
        let applied = self.apply_record(r, advance)?;
        if let Applied::Applied(events) = &applied {
            self.republish_later(r, events, self.outbox_note().as_ref());
        }
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
            if let Err(e) = self.publish_counted(&signal).await {
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
        let note = self.outbox_note();
        let applied = self.inner.store.apply_commits_noting(
            &super::lifecycle::commits_of(records),
            advance,
            note.as_ref().map(|n| n as crate::store::Note),
        )?;
        self.inner.changed.notify_waiters();
        for (r, a) in records.iter().zip(&applied) {
            if let Applied::Applied(events) = a {
                self.end_blocked_grants(&r.tenant, r.tree, events);
                self.republish_later(r, events, note.as_ref());
            }
            self.signal_quarantine(&r.tenant, r.tree, a).await;
        }
        Ok(())
    }

    /// Applies one record; a commit with signals goes into the outbox in
    /// the same batch (over NATS). The writer calls it for its own commit
    /// (and publishes), the others through [`Engine::apply_logged`].
    pub(crate) fn apply_record(
        &self,
        r: &crate::log::Record,
        advance: bool,
    ) -> Result<Applied, EngineError> {
        let note = self.outbox_note();
        let commit = crate::store::Commit {
            tenant: &r.tenant,
            tree: r.tree,
            position: r.position,
            payload: Ok(&r.payload),
        };
        let applied = self
            .inner
            .store
            .apply_commits_noting(
                std::slice::from_ref(&commit),
                advance,
                note.as_ref().map(|n| n as crate::store::Note),
            )?
            .remove(0);
        self.inner.changed.notify_waiters();
        if let Applied::Applied(events) = &applied {
            self.end_blocked_grants(&r.tenant, r.tree, events);
        }
        Ok(applied)
    }

    /// Which applied commits go into the outbox: over NATS, those with
    /// signals, written within [`RECENT`]. None in process,
    /// where the writer's publish cannot be cut from its guards.
    fn outbox_note(&self) -> Option<impl Fn(&[Event]) -> bool + Sync> {
        if !self.inner.bus.is_nats() {
            return None;
        }
        let since = self.now() - RECENT;
        Some(move |events: &[Event]| {
            events.iter().any(may_signal) && events.iter().any(|e| e.time >= since)
        })
    }

    /// Queues a commit another instance wrote (or that this instance's
    /// follower applied before its writer did), noted by `note`, for
    /// publication after the republish delay. A full queue leaves it to the
    /// outbox, read again shortly.
    fn republish_later(
        &self,
        r: &crate::log::Record,
        events: &[Event],
        note: Option<&(impl Fn(&[Event]) -> bool + Sync)>,
    ) {
        let (Some(note), Some(first)) = (note, events.first()) else {
            return;
        };
        if !note(events) {
            return;
        }
        let due = Due {
            at: tokio::time::Instant::now() + self.inner.config.republish_delay,
            entry: OutboxEntry {
                tenant: r.tenant.clone(),
                tree: r.tree,
                position: r.position,
                command: first.command_id,
            },
        };
        if self.inner.delivery.queue.try_send(due).is_err() {
            self.inner.delivery.retry.store(true, Ordering::Relaxed);
        }
    }

    /// Publishes the signals of the commits other instances wrote, once
    /// their republish delay has passed, unless the signal stream holds
    /// them by then; at start, those of every commit in the outbox (this
    /// process, or its predecessor on this data directory, applied them and
    /// may have died before they were stored). Over NATS only.
    pub(super) async fn republisher(&self) -> Result<(), EngineError> {
        let receiver = match self.inner.bus.is_nats() {
            true => self.inner.delivery.take_receiver(),
            false => None,
        };
        let Some(mut queue) = receiver else {
            return std::future::pending().await;
        };
        self.publish_outbox().await;
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held: Option<Due> = None;
        loop {
            let first = match held.take() {
                Some(due) => due,
                None => tokio::select! {
                    due = queue.recv() => match due {
                        Some(due) => due,
                        None => return std::future::pending().await,
                    },
                    _ = retry.tick() => {
                        if self.inner.delivery.retry.swap(false, Ordering::Relaxed) {
                            self.publish_outbox().await;
                        }
                        continue;
                    }
                },
            };
            tokio::time::sleep_until(first.at).await;
            let now = tokio::time::Instant::now();
            let mut due = vec![first.entry];
            while due.len() < REPUBLISH_AT_ONCE {
                match queue.try_recv() {
                    Ok(next) if next.at <= now => due.push(next.entry),
                    Ok(next) => {
                        held = Some(next);
                        break;
                    }
                    Err(_) => break,
                }
            }
            futures::stream::iter(due)
                .for_each_concurrent(REPUBLISH_AT_ONCE, |entry| async move {
                    self.deliver(&entry).await;
                })
                .await;
        }
    }

    /// Publishes the signals of every commit in the outbox.
    async fn publish_outbox(&self) {
        let entries = match self.inner.store.outbox(usize::MAX) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox; will retry");
                self.inner.delivery.retry.store(true, Ordering::Relaxed);
                return;
            }
        };
        if !entries.is_empty() {
            tracing::info!(
                commits = entries.len(),
                "publishing the signals of commits in the outbox"
            );
        }
        futures::stream::iter(entries)
            .for_each_concurrent(REPUBLISH_AT_ONCE, |entry| async move {
                self.deliver(&entry).await;
            })
            .await;
    }

    /// Publishes one commit's signals unless the stream holds them, and
    /// takes it out of the outbox once they are stored.
    async fn deliver(&self, entry: &OutboxEntry) {
        match self.republish(entry).await {
            Ok(()) => {
                if let Err(e) =
                    self.inner
                        .store
                        .outbox_done(&entry.tenant, entry.tree, entry.position)
                {
                    tracing::error!(error = %e, "cannot take a commit out of the outbox");
                }
            }
            Err(e) => {
                tracing::warn!(tenant = %entry.tenant, tree = %entry.tree, position = entry.position, error = %e, "signals of a commit not published; will retry");
                self.inner.delivery.retry.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn republish(&self, entry: &OutboxEntry) -> Result<(), EngineError> {
        let events =
            self.inner
                .store
                .events_of_command(&entry.tenant, entry.tree, entry.command)?;
        let bus = &self.inner.bus;
        for signal in self.signals_of(&entry.tenant, entry.tree, &events)? {
            if bus.stored_already(&signal).await? {
                continue;
            }
            self.publish_counted(&signal).await?;
            tracing::info!(tenant = %signal.tenant, mandate = %signal.mandate, event = %signal.event_id, "published a signal its writer had not stored");
        }
        Ok(())
    }

    /// Publishes a [`Beacon`] for each tenant this instance serves, every
    /// [`super::EngineConfig::beacon_interval`], into the signal stream.
    /// Its cost per beacon is one publish, whatever the number of trees and
    /// guards. A failure is logged (once until beacons go through again)
    /// and counted, never fatal. Over NATS only.
    pub(super) async fn beacons(&self) -> Result<(), EngineError> {
        if !self.inner.bus.is_nats() {
            return std::future::pending().await;
        }
        let interval = self.inner.config.beacon_interval;
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let tenants = match self.beacon_tenants() {
                Ok(tenants) => tenants,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the tenants to send beacons for");
                    continue;
                }
            };
            let time = self.now();
            let beacons: Vec<Beacon> = tenants
                .into_iter()
                .map(|tenant| Beacon {
                    schema_version: SCHEMA_VERSION,
                    tenant,
                    instance: self.instance().to_string(),
                    time,
                    interval_ms,
                })
                .collect();
            let failed = self.inner.bus.publish_beacons(&beacons).await;
            let d = &self.inner.delivery;
            d.beacons_sent
                .fetch_add((beacons.len() - failed.len()) as u64, Ordering::Relaxed);
            d.beacons_failed
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
            match failed.first() {
                Some((beacon, e)) if !failing => {
                    tracing::warn!(tenant = %beacon.tenant, failed = failed.len(), error = %e, "beacons not published; guards that hear no engine deny when their lease runs out");
                    failing = true;
                }
                None if failing => {
                    tracing::info!("beacons published again");
                    failing = false;
                }
                _ => {}
            }
        }
    }

    /// The tenants this instance sends beacons for: those it serves when
    /// configured with a list; otherwise every tenant it knows, those of
    /// its authentication configuration and those with a tree in its
    /// projection (one seek per tenant, see [`crate::store::Store::tenants`]).
    fn beacon_tenants(&self) -> Result<Vec<TenantId>, EngineError> {
        let config = &self.inner.config;
        if !config.tenants.is_empty() {
            return Ok(config.tenants.clone());
        }
        let mut known: BTreeSet<TenantId> = self.inner.store.tenants()?.into_iter().collect();
        if let Some(auth) = &config.auth {
            known.extend(auth.tenants.keys().filter_map(|t| TenantId::new(t).ok()));
        }
        Ok(known.into_iter().collect())
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
