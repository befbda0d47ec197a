//! Bringing the projection up to the log before a command or a read decides:
//! one tree, or every tree up to the log's head, past corrupt records.

use std::sync::Arc;

use crate::domain::{Actor, CommandEnvelope, DomainError, MandateId, TenantId, Tree, TreeId};
use crate::log::{EventLog, LogError};
use crate::protocol::Consistency;
use crate::store::TreeSnapshot;

use super::{Engine, EngineError};

impl Engine {
    /// Brings this instance's whole projection up to the log's last position
    /// as of this call, across every tree and tenant, before a command reads
    /// an index that spans trees (the agent, principal and mission indexes):
    /// a mandate another instance acknowledged a moment ago must not escape a
    /// bulk revoke or a mission completion here. Unlike [`Engine::wait_for_log`]
    /// it does not wait for the follower (which may lag or be stopped), it
    /// reads and applies itself, and it never gives up silently.
    pub(crate) async fn catch_up_to_log_head(&self) -> Result<(), EngineError> {
        let target = self.inner.log.last_position().await?;
        self.catch_up_until(Some(target)).await
    }

    /// Applies the log's records past the checkpoint, in order, until the
    /// checkpoint reaches `target` or (without one, or when the tail was
    /// deleted) the log has nothing more to read.
    ///
    /// On a cluster the records come through a consumer that may run on a
    /// replica behind the leader, so a read that returns nothing short of
    /// `target` is checked with the leader: if it holds a record there, the
    /// log is read again after a pause ([`SHORT_READ_ATTEMPTS`] reads in
    /// all), and still short the catch-up is `unavailable`, never taken as
    /// the end of the log (a command would then answer "not found" for a
    /// mandate another instance acknowledged).
    pub(super) async fn catch_up_until(&self, target: Option<u64>) -> Result<(), EngineError> {
        let mut after = self.inner.store.checkpoint()?;
        let mut short = 0;
        while target.is_none_or(|t| after < t) {
            match self.inner.log.read_all(None, after, 1024).await {
                Ok(records) => {
                    let Some(last) = records.last().map(|r| r.position) else {
                        let Some(target) = target else { break };
                        match self.inner.log.first_position_after(after).await? {
                            Some(next) if next <= target => {}
                            // The tail up to `target` was deleted.
                            _ => break,
                        }
                        short += 1;
                        if short >= SHORT_READ_ATTEMPTS {
                            return Err(EngineError::unavailable(format!(
                                "the event log's leader holds records past position {after} up \
                                 to {target}, but {short} reads of the log stopped at {after} (a \
                                 replica behind the leader?); not answered from that; retry"
                            )));
                        }
                        tracing::warn!(
                            after, target, attempt = short,
                            "a read of the log stopped short of a record the leader holds; reading again"
                        );
                        tokio::time::sleep(SHORT_READ_PAUSE * (1 << (short - 1))).await;
                        continue;
                    };
                    self.apply_all_logged(&records, true).await?;
                    after = last;
                }
                Err(e) => after = self.pass_corrupt(e, after).await?,
            }
        }
        Ok(())
    }

    /// A read of the whole log that failed on a record it cannot decode
    /// (past `after`): the record quarantines the tree its subject names, as
    /// the follower does, and no other tree is held up by it. Returns its
    /// position, to read on from. Any other error is returned.
    pub(super) async fn pass_corrupt(&self, e: LogError, after: u64) -> Result<u64, EngineError> {
        match e {
            LogError::Corrupt {
                position,
                subject_or_key,
                reason,
            } if position > after => {
                self.apply_corrupt_record(position, &subject_or_key, &reason, true)
                    .await?;
                Ok(position)
            }
            e => Err(e.into()),
        }
    }

    /// Brings the projection up to what a read's consistency level asks
    /// for, for one tree (named directly or through one of its mandates):
    /// - `fresh`: up to the log, so an instance never answers from a state
    ///   older than what another instance has acknowledged (a check right
    ///   after a revoke elsewhere must deny); an unknown mandate waits
    ///   (briefly) for the follower in case it is new. Skipped when the
    ///   instance is configured without fresh reads.
    /// - `local`: nothing, no round trip.
    /// - `at_least(p)`: see [`Engine::reach`]; always applied, since the
    ///   caller named authority it knows ended.
    pub(crate) async fn freshen(
        &self,
        tenant: &TenantId,
        tree: Option<TreeId>,
        mandate: Option<MandateId>,
        level: Consistency,
    ) -> Result<(), EngineError> {
        match level {
            Consistency::Local => Ok(()),
            Consistency::AtLeast(position) => self.reach(tenant, tree, mandate, position).await,
            Consistency::Fresh if !self.inner.config.fresh_reads => Ok(()),
            Consistency::Fresh => {
                let tree = match (tree, mandate) {
                    (Some(t), _) => Some(t),
                    (None, Some(m)) => match self.inner.store.tree_of(tenant, m)? {
                        Some(t) => Some(t),
                        None => {
                            self.wait_for_log().await?;
                            self.inner.store.tree_of(tenant, m)?
                        }
                    },
                    (None, None) => None,
                };
                let Some(tree) = tree else { return Ok(()) };
                self.catch_up_tree_to_head(tenant, tree).await
            }
        }
    }

    /// Brings the projection up to `level` before a read that spans trees
    /// (`list`): `fresh` catches the whole projection up to the log's head,
    /// `at_least(p)` up to `p`, `local` does nothing.
    pub(crate) async fn freshen_all(
        &self,
        tenant: &TenantId,
        level: Consistency,
    ) -> Result<(), EngineError> {
        match level {
            Consistency::Local => Ok(()),
            Consistency::AtLeast(position) => self.reach(tenant, None, None, position).await,
            Consistency::Fresh if !self.inner.config.fresh_reads => Ok(()),
            Consistency::Fresh => self.catch_up_to_log_head().await,
        }
    }

    /// Makes sure the read sees at least the commit at log `position`.
    /// Without a round trip when this instance has applied it: its in-order
    /// checkpoint is at or past it, or the tree's own head is (a tree's
    /// commits are applied in order, so its head covers every earlier commit
    /// of that tree, and a chain's authority lives in one tree). Otherwise it
    /// waits briefly for the follower, then reads the log itself: the tree
    /// caught up to the log's head (a tree the read names) or the whole
    /// projection up to `position` (a mandate it does not know yet, or a
    /// read of no one tree). A log that has not reached `position` is an
    /// `unavailable` error, never an answer from older state.
    pub(crate) async fn reach(
        &self,
        tenant: &TenantId,
        tree: Option<TreeId>,
        mandate: Option<MandateId>,
        position: u64,
    ) -> Result<(), EngineError> {
        let tree_of = |this: &Self| -> Result<Option<TreeId>, EngineError> {
            Ok(match (tree, mandate) {
                (Some(t), _) => Some(t),
                (None, Some(m)) => this.inner.store.tree_of(tenant, m)?,
                (None, None) => None,
            })
        };
        let reached = |this: &Self| -> Result<bool, EngineError> {
            if this.inner.store.checkpoint()? >= position {
                return Ok(true);
            }
            Ok(match tree_of(this)? {
                Some(t) => this
                    .inner
                    .store
                    .head(tenant, t)?
                    .is_some_and(|s| s.position >= position),
                None => false,
            })
        };
        // Already applied (the common case): no clock read, no waiter.
        if reached(self)? {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + AT_LEAST_WAIT;
        loop {
            // Registered before the look, so no wake-up falls in between.
            let changed = self.inner.changed.notified();
            if reached(self)? {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        // The follower has not applied it: read the log. Its last position
        // is read first: a commit at or before `position` that it holds was
        // acknowledged before this read began, so the catch-up below sees it.
        let last = self.inner.log.last_position().await?;
        if last < position {
            return Err(EngineError::unavailable(format!(
                "consistency at_least {position}: the event log has not reached that position yet \
                 (its last position is {last}); retry, or read with \"fresh\""
            )));
        }
        match tree_of(self)? {
            Some(t) => self.catch_up_tree_to_head(tenant, t).await,
            None => self.catch_up_until(Some(position)).await,
        }
    }

    /// Catches one tree up if the log's head for it is past this instance's
    /// snapshot (one cheap log read when it is not), and makes sure it got
    /// there: the head is the stream leader's answer, while the tree's
    /// records come through a consumer the cluster may place on a replica
    /// that lags. A read that stops short is read again
    /// ([`read_until_head`]); one that stays short is `unavailable`, never
    /// an answer from the short state.
    pub(super) async fn catch_up_tree_to_head(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<(), EngineError> {
        // Shared, not copied: this runs before every read.
        let position = self
            .inner
            .store
            .head(tenant, tree)?
            .map_or(0, |s| s.position);
        let head = self.checked_head(tenant, tree, position).await?;
        if head <= position {
            return Ok(());
        }
        let applied = || -> Result<Option<u64>, EngineError> {
            // A held tree (quarantined, too new, the log went backwards) is
            // refused by the read that follows: nothing more to reach.
            if self.hold(tenant, tree)?.is_some() {
                return Ok(None);
            }
            Ok(Some(
                self.inner
                    .store
                    .head(tenant, tree)?
                    .map_or(0, |s| s.position),
            ))
        };
        read_until_head(tree, head, applied, |after| {
            self.catch_up_tree(tenant, tree, after)
        })
        .await
    }

    /// What `decide` reads of a tree for `cmd`: the tree's head, the chain
    /// of the mandate the command names (with the root's), the record of
    /// its command id, and, where the actor is an agent named supervisor on
    /// that chain, the chains of the mandates it holds in the tree (a
    /// supervisor has no authority over a mandate at or above one it
    /// holds). Never the rest of the tree: a command costs its chain.
    pub(super) fn command_view(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        cmd: &CommandEnvelope,
    ) -> Result<Arc<TreeSnapshot>, EngineError> {
        // A quarantined tree is refused by `decide` (only its resolution
        // passes); a tree this build cannot read, or one the log went
        // backwards on, is refused here.
        match self.hold(tenant, tree)? {
            None | Some(DomainError::Quarantined { .. }) => {}
            Some(held) => return Err(held.into()),
        }
        let store = &self.inner.store;
        let mut mandates: Vec<MandateId> = cmd.command.target().into_iter().collect();
        let view = store.view(tenant, tree, &mandates, Some(cmd.command_id))?;
        let supervising = match (&cmd.actor, &view) {
            (Actor::Agent(a), Some(v)) => v
                .tree
                .mandates
                .values()
                .any(|m| m.supervisors.contains(a))
                .then_some(a),
            _ => None,
        };
        let view = match supervising {
            Some(agent) => {
                mandates.extend(
                    store
                        .mandates_held_by(tenant, agent)?
                        .into_iter()
                        .filter(|(t, _)| *t == tree)
                        .map(|(_, m)| m),
                );
                store.view(tenant, tree, &mandates, Some(cmd.command_id))?
            }
            None => view,
        };
        let mut view = view.unwrap_or_else(|| {
            Arc::new(TreeSnapshot {
                position: 0,
                tree: Tree::empty(tenant.clone(), tree),
            })
        });
        // An approval command reads the one approval it names, as stored.
        if let Some(id) = cmd.command.approval() {
            if let Some(a) = store.load_approval(tenant, tree, id)? {
                Arc::make_mut(&mut view).tree.approvals.insert(id, a);
            }
        }
        // A request reads the pending approvals it may repeat: an approval
        // lives a day at most, so none older than that by its id.
        if let crate::domain::Command::RequestApproval(r) = &cmd.command {
            let since = self.now()
                - chrono::Duration::seconds(i64::from(
                    crate::domain::approval::MAX_APPROVAL_TTL_SECS,
                ));
            let since = uuid::Uuid::from_u128(
                u128::from(u64::try_from(since.timestamp_millis()).unwrap_or(0)) << 80,
            );
            for a in store.pending_approvals_since(tenant, tree, r.mandate, since)? {
                Arc::make_mut(&mut view).tree.approvals.insert(a.id, a);
            }
        }
        Ok(view)
    }

    /// Applies to the projection every commit of the tree past our snapshot.
    /// A corrupt record quarantines the tree (the read that follows refuses
    /// it); it is not an error of the catch-up.
    pub(crate) async fn catch_up_tree(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> Result<(), EngineError> {
        match self.inner.log.read_tree(tenant, tree, after).await {
            Ok(records) => self.apply_all_logged(&records, false).await,
            Err(LogError::Corrupt { .. }) => {
                self.catch_up_tree_past_corrupt(tenant, tree, after).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The slow path of [`Engine::catch_up_tree`] when the log cannot decode
    /// a record of the tree (a tree read fails as a whole): walks the
    /// tenant's records up to the tree's head, applying the tree's good ones
    /// in order and quarantining it at the bad one. Only taken on corruption.
    pub(super) async fn catch_up_tree_past_corrupt(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> Result<(), EngineError> {
        let head = self.inner.log.tree_head(tenant, tree).await?;
        let mut cursor = after;
        while cursor < head {
            match self.inner.log.read_all(Some(tenant), cursor, 1024).await {
                Ok(records) if records.is_empty() => break,
                Ok(records) => {
                    for r in records
                        .iter()
                        .filter(|r| r.tree == tree && r.position <= head)
                    {
                        self.apply_logged(r, false).await?;
                    }
                    cursor = records.last().map_or(head, |r| r.position);
                }
                Err(LogError::Corrupt {
                    position,
                    subject_or_key,
                    reason,
                }) => {
                    if crate::log::tree_of_subject(&subject_or_key) == Some((tenant.clone(), tree))
                    {
                        self.apply_corrupt_record(position, &subject_or_key, &reason, false)
                            .await?;
                    }
                    cursor = position;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Reads of one tree before a fresh read gives up on reaching the head
/// the log's leader answered.
const SHORT_READ_ATTEMPTS: u32 = 5;
/// The pause before the second read of a tree that stopped short (then
/// twice as long, and so on): a lagging replica catches up in moments.
const SHORT_READ_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads a tree (`read`, from the position `applied` says this instance
/// has reached) until the applied head is at or past `head`, the head the
/// log's leader answered. A read can stop short of it on a cluster: the
/// records come through a consumer that may run on a replica that has not
/// applied all the leader committed. Then the tree is read again, after a
/// pause, up to [`SHORT_READ_ATTEMPTS`] reads; still short, the read is
/// `unavailable` (retryable), never answered from what it has. `applied`
/// returning `None` (a held tree, which the read refuses anyway) ends it.
pub(super) async fn read_until_head<A, R, F>(
    tree: TreeId,
    head: u64,
    mut applied: A,
    mut read: R,
) -> Result<(), EngineError>
where
    A: FnMut() -> Result<Option<u64>, EngineError>,
    R: FnMut(u64) -> F,
    F: std::future::Future<Output = Result<(), EngineError>>,
{
    for attempt in 0..SHORT_READ_ATTEMPTS {
        let Some(at) = applied()? else { return Ok(()) };
        if at >= head {
            return Ok(());
        }
        if attempt > 0 {
            tracing::warn!(
                %tree, head, at, attempt,
                "a read of the tree stopped short of the head the log's leader gave; reading again"
            );
            tokio::time::sleep(SHORT_READ_PAUSE * (1 << (attempt - 1))).await;
        }
        read(at).await?;
    }
    match applied()? {
        Some(at) if at < head => Err(EngineError::unavailable(format!(
            "tree {tree}: the event log's leader has the tree's head at position {head}, but \
             {SHORT_READ_ATTEMPTS} reads of the tree stopped at {at} (a replica behind the \
             leader?); not answered from that; retry"
        ))),
        _ => Ok(()),
    }
}

/// How long a read at `at_least` waits for the follower to apply the
/// position it names before reading the log itself.
const AT_LEAST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::engine::EngineErrorKind;

    /// A read that stops short of the leader's head once (a lagging
    /// replica) is read again, and answered only once it got there.
    #[tokio::test]
    async fn a_short_read_is_read_again_until_it_reaches_the_head() {
        let at = Cell::new(3u64);
        let reads = Cell::new(Vec::new());
        // The first read stops at 5 (the replica's end), the second gets
        // to the leader's head, 7.
        let served = [5u64, 7];
        read_until_head(
            TreeId::generate(),
            7,
            || Ok(Some(at.get())),
            |after| {
                let mut r = reads.take();
                r.push(after);
                at.set(served[r.len() - 1]);
                reads.set(r);
                async { Ok(()) }
            },
        )
        .await
        .expect("reached on the second read");
        assert_eq!(reads.take(), vec![3, 5], "read again from where it stopped");
        assert_eq!(at.get(), 7);
    }

    /// A read that stays short is `unavailable`, naming both positions:
    /// never an answer from the short state.
    #[tokio::test]
    async fn a_read_that_stays_short_is_unavailable() {
        let reads = Cell::new(0);
        let tree = TreeId::generate();
        let e = read_until_head(
            tree,
            9,
            || Ok(Some(4)),
            |_| {
                reads.set(reads.get() + 1);
                async { Ok(()) }
            },
        )
        .await
        .expect_err("a read short of the leader's head is not answered");
        assert_eq!(e.kind(), EngineErrorKind::Unavailable, "{e}");
        let text = e.to_string();
        for needle in [tree.to_string(), "position 9".into(), "stopped at 4".into()] {
            assert!(text.contains(&needle), "{needle:?} in {text}");
        }
        assert_eq!(reads.get(), SHORT_READ_ATTEMPTS);
    }

    /// Nothing to read when the tree is already at the head, and a held
    /// tree (refused by the read itself) ends the reading.
    #[tokio::test]
    async fn at_the_head_or_held_nothing_more_is_read() {
        for applied in [Some(7u64), Some(8), None] {
            let reads = Cell::new(0);
            read_until_head(
                TreeId::generate(),
                7,
                || Ok(applied),
                |_| {
                    reads.set(reads.get() + 1);
                    async { Ok(()) }
                },
            )
            .await
            .expect("nothing to reach");
            assert_eq!(reads.get(), 0, "{applied:?}");
        }
    }
}
