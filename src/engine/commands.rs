//! Command handling: find the tree, decide on its snapshot, append with the
//! head we decided on, and on a conflict catch the tree up and decide again.

use std::sync::Arc;

use chrono::Utc;

use crate::domain::{
    decide, delegated_id, root_tree_id, Actor, Command, CommandEnvelope, CommandId, DomainError,
    Event, EventBody, ExternalCommand, MandateId, MissionRef, TenantId, Tree, TreeId,
};
use crate::log::{EventLog, LogError};
use crate::protocol::{Bulk, BulkEnvelope, CommandResult, CommitInfo};
use crate::store::{Applied, DueExpiry, TreeSnapshot};

use super::{signal_for, Engine, EngineError};

/// Longest wait for this instance's projection to reach the log before a
/// command answers that its mandate is not found.
const LAG_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Engine {
    /// Handles one command from outside the engine (which, by its type,
    /// cannot act as the engine itself). Idempotent by command id: a retry
    /// returns the original result with `duplicate: true` and writes nothing.
    #[tracing::instrument(skip_all, fields(tenant = %cmd.envelope().tenant, command_id = %cmd.envelope().command_id, verb = cmd.envelope().command.verb()))]
    pub async fn execute(&self, cmd: ExternalCommand) -> Result<CommandResult, EngineError> {
        let cmd = cmd.into_envelope();
        cmd.validate()?;
        match &cmd.command {
            Command::CompleteMission(c) => {
                let mission = c.mission_ref.clone();
                return self
                    .complete_mission(
                        &cmd.tenant,
                        &mission,
                        cmd.actor.clone(),
                        Some(cmd.command_id),
                    )
                    .await;
            }
            Command::Issue(i) => {
                if let Some(r) = &i.mission.mission_ref {
                    if self.inner.store.mission_completed(&cmd.tenant, r)? {
                        return Err(DomainError::MissionCompleted {
                            mission_ref: r.to_string(),
                        }
                        .into());
                    }
                }
            }
            _ => {}
        }
        let tree = match self.tree_for(&cmd) {
            // Another instance may have acknowledged the command that created
            // this mandate, and our follower not have applied it yet: a caller
            // must not be told "not found" for a mandate it was just given.
            Err(EngineError::Rejected(DomainError::MandateNotFound { .. })) => {
                self.wait_for_log().await?;
                self.tree_for(&cmd)?
            }
            other => other?,
        };
        let commit = self.execute_on(tree, &cmd).await?;
        let mandate = match &cmd.command {
            Command::Issue(_) => Some(MandateId(tree.0)),
            // The mandate the commit issued: for a retry, the one first
            // written, whatever the id derivation was then.
            Command::Delegate(_) => commit
                .0
                .events
                .iter()
                .find_map(|e| match &e.body {
                    EventBody::MandateIssued(i) => Some(i.mandate),
                    _ => None,
                })
                .or(Some(delegated_id(&cmd.tenant, tree, cmd.command_id))),
            other => other.target(),
        };
        Ok(CommandResult {
            command_id: cmd.command_id,
            duplicate: commit.1,
            mandate,
            commits: vec![commit.0],
        })
    }

    /// The tree a command acts on. Another tenant's mandate is simply not found.
    fn tree_for(&self, cmd: &CommandEnvelope) -> Result<TreeId, EngineError> {
        if let Command::Issue(_) = cmd.command {
            // The root's id is derived from the command id, so a retried issue
            // lands on the same tree and the log deduplicates it.
            return Ok(root_tree_id(&cmd.tenant, cmd.command_id));
        }
        let mandate = cmd.command.target().ok_or_else(|| {
            EngineError::Invalid(format!("command {} names no mandate", cmd.command.verb()))
        })?;
        self.inner
            .store
            .tree_of(&cmd.tenant, mandate)?
            .ok_or(EngineError::Rejected(DomainError::MandateNotFound {
                mandate,
            }))
    }

    /// Waits until the projection has applied everything the log held when
    /// called (in-order follower), for at most [`LAG_WAIT`]; after that the
    /// caller answers from what it has.
    async fn wait_for_log(&self) -> Result<(), EngineError> {
        let target = self.inner.log.last_position().await?;
        let deadline = tokio::time::Instant::now() + LAG_WAIT;
        loop {
            // Registered before the check, so no wake-up falls in between.
            let changed = self.inner.changed.notified();
            if self.inner.store.checkpoint()? >= target {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Brings the projection up to the log for one tree before a read, so an
    /// instance never answers from a state older than what another instance
    /// has acknowledged: a check right after a revoke elsewhere must deny.
    /// Names the tree directly or through one of its mandates; an unknown
    /// mandate waits (briefly) for the follower in case it is new.
    pub(crate) async fn freshen(
        &self,
        tenant: &TenantId,
        tree: Option<TreeId>,
        mandate: Option<MandateId>,
    ) -> Result<(), EngineError> {
        if !self.inner.config.fresh_reads {
            return Ok(());
        }
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
        // Shared, not copied: this runs before every read.
        let position = self
            .inner
            .store
            .tree_shared(tenant, tree)?
            .map(|s| s.position)
            .unwrap_or(0);
        if self.inner.log.tree_head(tenant, tree).await? > position {
            self.catch_up_tree(tenant, tree, position).await?;
        }
        Ok(())
    }

    fn snapshot(&self, tenant: &TenantId, tree: TreeId) -> Result<Arc<TreeSnapshot>, EngineError> {
        if let Some(reason) = self.inner.store.quarantined(tenant, tree)? {
            return Err(EngineError::Quarantined(reason));
        }
        Ok(self
            .inner
            .store
            .tree_shared(tenant, tree)?
            .unwrap_or_else(|| {
                Arc::new(TreeSnapshot {
                    position: 0,
                    tree: Tree::empty(tenant.clone(), tree),
                })
            }))
    }

    /// Applies to the projection every commit of the tree past our snapshot.
    async fn catch_up_tree(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> Result<(), EngineError> {
        for r in self.inner.log.read_tree(tenant, tree, after).await? {
            if let Applied::Quarantined(reason) = self.apply_record(&r, false)? {
                return Err(EngineError::Quarantined(reason));
            }
        }
        Ok(())
    }

    /// Decide-append-apply on one tree, retrying conflicts from fresh state.
    /// Returns the commit and whether it was a duplicate.
    pub(crate) async fn execute_on(
        &self,
        tree: TreeId,
        cmd: &CommandEnvelope,
    ) -> Result<(CommitInfo, bool), EngineError> {
        let tenant = &cmd.tenant;
        for _attempt in 0..self.inner.config.max_attempts {
            let snap = self.snapshot(tenant, tree)?;
            let now = Utc::now();
            let events = match decide(&snap.tree, cmd, now) {
                Ok(events) => events,
                Err(refusal) => {
                    // A refusal is never checked by an append, so it must not
                    // rest on a stale snapshot: another instance may have
                    // written this tree (e.g. the pause a resume needs) and
                    // our follower not have applied it yet.
                    if self.inner.log.tree_head(tenant, tree).await? > snap.position {
                        self.catch_up_tree(tenant, tree, snap.position).await?;
                        continue;
                    }
                    return Err(refusal.into());
                }
            };
            if events.is_empty() {
                return Ok((self.original(tenant, &snap, cmd.command_id)?, true));
            }
            let payload = Event::encode_commit(&events);
            match self
                .inner
                .log
                .append(
                    tenant,
                    tree,
                    snap.position,
                    cmd.command_id,
                    payload.clone().into(),
                )
                .await
            {
                Ok(appended) if appended.duplicate => {
                    // Written before: a retry after a lost ack (reply with the
                    // original), or the id was used for something else, here
                    // or on another tree of this tenant (the log deduplicates
                    // ids per tenant).
                    self.catch_up_tree(tenant, tree, snap.position).await?;
                    let snap = self.snapshot(tenant, tree)?;
                    return match decide(&snap.tree, cmd, now) {
                        Ok(again) if again.is_empty() => {
                            Ok((self.original(tenant, &snap, cmd.command_id)?, true))
                        }
                        Ok(_) => Err(DomainError::CommandIdReused {
                            command_id: cmd.command_id,
                        }
                        .into()),
                        Err(e) => Err(e.into()),
                    };
                }
                Ok(appended) => {
                    let _ = self.apply_record(
                        &crate::log::Record {
                            tenant: tenant.clone(),
                            tree,
                            position: appended.position,
                            command_id: cmd.command_id,
                            payload: payload.into(),
                        },
                        false,
                    )?;
                    // Whoever applied it (this call, or the follower that saw the
                    // commit first), the writer publishes its signals: only it
                    // knows the commit is new.
                    self.publish_signals(tenant, tree, &events).await;
                    return Ok((
                        CommitInfo {
                            tree,
                            position: appended.position,
                            events,
                        },
                        false,
                    ));
                }
                Err(LogError::Conflict { .. }) => {
                    tracing::debug!(%tree, "append conflict; catching up and deciding again");
                    self.catch_up_tree(tenant, tree, snap.position).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Contended(self.inner.config.max_attempts))
    }

    /// The commit a command id wrote earlier, from the tree's history.
    fn original(
        &self,
        tenant: &TenantId,
        snap: &TreeSnapshot,
        command: CommandId,
    ) -> Result<CommitInfo, EngineError> {
        let events: Vec<Event> = self
            .inner
            .store
            .history(tenant, snap.tree.id)?
            .into_iter()
            .filter(|e| e.command_id == command)
            .collect();
        Ok(CommitInfo {
            tree: snap.tree.id,
            // The position is not kept per event; the tree's head is reported.
            position: snap.position,
            events,
        })
    }

    /// One publish per event on the subject of the mandate it is about.
    async fn publish_signals(&self, tenant: &TenantId, tree: TreeId, events: &[Event]) {
        let snap = match self.inner.store.tree_shared(tenant, tree) {
            Ok(Some(snap)) => snap,
            other => {
                // Not expected after an acknowledged append; guards re-read
                // within a heartbeat, but say so loudly.
                tracing::error!(%tenant, %tree, result = ?other.map(|_| ()), "no snapshot to publish signals from");
                return;
            }
        };
        for e in events {
            if let Some(signal) = signal_for(e, &snap.tree) {
                if let Err(err) = self.inner.bus.publish(&signal).await {
                    // The event is stored; guards re-read state within their
                    // lease, so a lost signal delays, never cancels, a stop.
                    tracing::error!(error = %err, mandate = %signal.mandate, "signal publish failed");
                }
            }
        }
    }

    /// Completes every tree serving `mission`; remembers the mission as
    /// completed so later issues for it are refused.
    /// Crate-private: `actor` may be the engine's own mission intake, so only
    /// the engine's paths (a checked command, the intake) call this.
    #[tracing::instrument(skip(self, actor, command), fields(tenant = %tenant, mission = %mission))]
    pub(crate) async fn complete_mission(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: Actor,
        command: Option<CommandId>,
    ) -> Result<CommandResult, EngineError> {
        // Marked before the trees are looked up, so that an issue racing this
        // completion is refused; but a completion that is refused (e.g. an
        // actor without authority over the mission's trees) or fails must not
        // leave the mark behind, or it would close the mission for good.
        // With no tree serving the mission there is no tree whose rules could
        // refuse the actor, yet the mark closes the mission for every future
        // issue: only an administrator or the mission intake may do that.
        let privileged = matches!(actor, Actor::Admin(_)) || actor == Actor::mission_intake();
        if !privileged
            && self
                .inner
                .store
                .trees_for_mission(tenant, mission)?
                .is_empty()
        {
            return Err(DomainError::MissionForbidden {
                mission_ref: mission.to_string(),
                actor: actor.to_string(),
            }
            .into());
        }
        let was_completed = self.inner.store.mission_completed(tenant, mission)?;
        self.inner.store.mark_mission_completed(tenant, mission)?;
        let result = self
            .complete_mission_trees(tenant, mission, actor, command)
            .await;
        if result.is_err() && !was_completed {
            self.inner.store.unmark_mission_completed(tenant, mission)?;
        }
        result
    }

    async fn complete_mission_trees(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: Actor,
        command: Option<CommandId>,
    ) -> Result<CommandResult, EngineError> {
        let base = command.unwrap_or_else(|| {
            CommandId::derived("complete-mission", &format!("{tenant}/{mission}"))
        });
        let mut commits = Vec::new();
        let mut duplicate = true;
        for tree in self.inner.store.trees_for_mission(tenant, mission)? {
            let cmd = CommandEnvelope {
                command_id: CommandId::derived(&base.to_string(), &tree.to_string()),
                tenant: tenant.clone(),
                actor: actor.clone(),
                correlation_id: Some(base.to_string()),
                schema_version: crate::domain::SCHEMA_VERSION,
                command: Command::CompleteMission(crate::domain::command::CompleteMission {
                    mission_ref: mission.clone(),
                }),
            };
            match self.execute_on(tree, &cmd).await {
                Ok((commit, dup)) => {
                    duplicate &= dup;
                    commits.push(commit);
                }
                // Already ended another way: nothing to complete there.
                Err(EngineError::Rejected(DomainError::Terminal { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(CommandResult {
            command_id: base,
            duplicate: duplicate && !commits.is_empty(),
            mandate: None,
            commits,
        })
    }

    /// Writes the `expired` event of a due mandate (command id derived from
    /// the mandate and its `not_after`, so instances racing write one event).
    pub(crate) async fn expire(
        &self,
        due: &DueExpiry,
        _now: chrono::DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let cmd = CommandEnvelope {
            command_id: CommandId::derived(
                "expire",
                &format!("{}/{}", due.mandate, due.not_after.timestamp_millis()),
            ),
            tenant: due.tenant.clone(),
            actor: Actor::expiry(),
            correlation_id: None,
            schema_version: crate::domain::SCHEMA_VERSION,
            command: Command::Expire(crate::domain::command::Target {
                mandate: due.mandate,
            }),
        };
        match self.execute_on(due.tree, &cmd).await {
            Ok(_) => Ok(()),
            // Ended otherwise (itself, or an ancestor by an event), or renewed:
            // the queue entry is stale.
            Err(EngineError::Rejected(
                DomainError::Terminal { .. } | DomainError::NotYetExpired { .. },
            )) => {
                self.inner.store.remove_expiry(due)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes every live mandate an agent holds (deprovisioning), or every
    /// live root a principal granted (offboarding), each as an ordinary
    /// revoke with a command id derived from the bulk one.
    #[tracing::instrument(skip_all, fields(tenant = %bulk.tenant, command_id = %bulk.command_id))]
    /// A bulk command only ever comes from outside the engine, so it may
    /// not name an actor reserved for the engine itself.
    pub async fn execute_bulk(&self, bulk: BulkEnvelope) -> Result<CommandResult, EngineError> {
        crate::domain::command::refuse_reserved_actor(&bulk.actor)?;
        crate::domain::command::refuse_reserved_command_id(bulk.command_id)?;
        let (targets, reason): (Vec<(TreeId, MandateId)>, Option<String>) = match &bulk.bulk {
            Bulk::RevokeAgent { agent, reason } => (
                self.inner.store.mandates_held_by(&bulk.tenant, agent)?,
                reason.clone(),
            ),
            Bulk::RevokePrincipal { principal, reason } => (
                self.inner
                    .store
                    .trees_granted_by(&bulk.tenant, principal)?
                    .into_iter()
                    .map(|t| (t, MandateId(t.0)))
                    .collect(),
                reason.clone(),
            ),
        };
        if let Some(r) = &reason {
            crate::domain::model::check_text("reason", r, false)?;
        }
        let now = Utc::now();
        let mut commits = Vec::new();
        let mut duplicate = true;
        for (tree, mandate) in targets {
            // Skip what is already effectively ended (e.g. below another target).
            if let Some(s) = self.inner.store.tree_shared(&bulk.tenant, tree)? {
                if s.tree
                    .effective(mandate, now)
                    .map(|e| e.status.is_terminal())
                    .unwrap_or(true)
                {
                    continue;
                }
            }
            let cmd = CommandEnvelope {
                command_id: CommandId::derived(&bulk.command_id.to_string(), &mandate.to_string()),
                tenant: bulk.tenant.clone(),
                actor: bulk.actor.clone(),
                correlation_id: Some(bulk.command_id.to_string()),
                schema_version: crate::domain::SCHEMA_VERSION,
                command: Command::Revoke(crate::domain::command::Change {
                    mandate,
                    reason: reason.clone(),
                }),
            };
            match self.execute_on(tree, &cmd).await {
                Ok((commit, dup)) => {
                    duplicate &= dup;
                    commits.push(commit);
                }
                Err(EngineError::Rejected(DomainError::Terminal { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(CommandResult {
            command_id: bulk.command_id,
            duplicate: duplicate && !commits.is_empty(),
            mandate: None,
            commits,
        })
    }
}
