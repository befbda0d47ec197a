//! Command handling: find the tree, decide on its snapshot, append with the
//! head we decided on, and on a conflict catch the tree up and decide again.

use std::sync::Arc;

use chrono::Utc;

use crate::domain::{
    decide, delegated_id, root_tree_id, Actor, Command, CommandEnvelope, CommandId, DomainError,
    Event, Facts, MandateId, MissionRef, TenantId, Tree, TreeId,
};
use crate::log::{EventLog, LogError};
use crate::protocol::{Bulk, BulkEnvelope, CommandResult, CommitInfo};
use crate::store::{Applied, DueExpiry, TreeSnapshot};

use super::{signal_for, Engine, EngineError};

/// Longest wait for this instance's projection to reach the log before a
/// command answers that its mandate is not found.
const LAG_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Engine {
    /// Handles one command. Idempotent by command id: a retry returns the
    /// original result with `duplicate: true` and writes nothing.
    #[tracing::instrument(skip_all, fields(tenant = %cmd.tenant, command_id = %cmd.command_id, verb = cmd.command.verb()))]
    pub async fn execute(&self, cmd: CommandEnvelope) -> Result<CommandResult, EngineError> {
        cmd.validate()?;
        if let Command::CompleteMission(c) = &cmd.command {
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
        if let Command::Issue(i) = &cmd.command {
            if let Some(r) = &i.mission.mission_ref {
                self.end_if_mission_completed(&cmd.tenant, r, tree).await?;
            }
        }
        let mandate = match &cmd.command {
            Command::Issue(_) => Some(MandateId(tree.0)),
            Command::Delegate(_) => Some(delegated_id(cmd.command_id)),
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
            return Ok(root_tree_id(cmd.command_id));
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
            let facts = self.facts_for(cmd).await?;
            let now = Utc::now();
            let events = match decide(&snap.tree, cmd, &facts, now) {
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
                    // or on another tree (the log deduplicates ids globally).
                    self.catch_up_tree(tenant, tree, snap.position).await?;
                    let snap = self.snapshot(tenant, tree)?;
                    return match decide(&snap.tree, cmd, &facts, now) {
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

    /// What `decide` needs to know beyond the tree for `cmd`, read fresh.
    async fn facts_for(&self, cmd: &CommandEnvelope) -> Result<Facts, EngineError> {
        let mut facts = Facts::default();
        if let Command::Issue(i) = &cmd.command {
            if let Some(r) = &i.mission.mission_ref {
                facts.mission_completed = self.mission_completed(&cmd.tenant, r).await?;
            }
        }
        Ok(facts)
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
    #[tracing::instrument(skip(self, actor, command), fields(tenant = %tenant, mission = %mission))]
    pub async fn complete_mission(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: Actor,
        command: Option<CommandId>,
    ) -> Result<CommandResult, EngineError> {
        let cmd = mission_command(tenant, mission, &actor, command);
        // Whether the actor may close the mission ahead of any tree: the
        // domain decides it on the empty tree. With no tree serving the
        // mission, no tree's rules judge the actor, yet the completion closes
        // the mission for every later issue, so a refusal stands.
        let ahead = decide(
            &Tree::empty(tenant.clone(), mission_tree(tenant, mission)),
            &cmd,
            &Facts::default(),
            Utc::now(),
        );
        if self
            .inner
            .store
            .trees_for_mission(tenant, mission)?
            .is_empty()
        {
            ahead.clone()?;
        }
        // A completion the domain accepts ahead of any tree (an
        // administrator's or the intake's) is marked before the trees are
        // looked up, so that an issue racing it on this instance is refused.
        // Anyone else's is marked only once every tree accepted it: a refused
        // completion must never leave a mark, which closes the mission and
        // ends its trees (`end_if_orphaned`). A failure withdraws a mark this
        // call made.
        let early = ahead.is_ok();
        let was_completed = self.inner.store.mission_completed(tenant, mission)?;
        if early {
            self.inner.store.mark_mission_completed(tenant, mission)?;
        }
        let mut result = self
            .complete_mission_trees(tenant, mission, actor.clone(), command)
            .await;
        // Such a completion is also recorded on the mission stream, which
        // every instance reads (the intake's came from there): the mark alone
        // is this instance's, and a mission no tree serves yet has no tree
        // event to carry it.
        if result.is_ok() && early && actor != Actor::mission_intake() {
            if let Err(e) = self
                .record_completion(tenant, mission, &actor, cmd.command_id)
                .await
            {
                result = Err(e);
            }
        }
        match &result {
            Ok(_) => self.inner.store.mark_mission_completed(tenant, mission)?,
            Err(_) if early && !was_completed => {
                self.inner.store.unmark_mission_completed(tenant, mission)?
            }
            Err(_) => {}
        }
        result
    }

    /// The second read of an `issue`'s mission, after its append: if the
    /// mission was completed meanwhile (on any instance), the new mandate
    /// ends at once, as the mission intake would end it (same command id,
    /// so the two write one event), and the issue is refused.
    async fn end_if_mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        tree: TreeId,
    ) -> Result<(), EngineError> {
        if !self.mission_completed(tenant, mission).await? {
            return Ok(());
        }
        let base = mission_command(tenant, mission, &Actor::mission_intake(), None).command_id;
        let cmd = tree_command(tenant, mission, &Actor::mission_intake(), base, tree);
        match self.execute_on(tree, &cmd).await {
            // Already ended (by the intake, or otherwise): nothing to do.
            Ok(_) | Err(EngineError::Rejected(DomainError::Terminal { .. })) => {}
            Err(e) => return Err(e),
        }
        Err(DomainError::MissionCompleted {
            mission_ref: mission.to_string(),
        }
        .into())
    }

    /// Ends `tree` if its mission is completed and its root is not: the
    /// mandate of an issue whose writer died between its append and its
    /// second read of the mission, after the intake had already completed
    /// the mission's trees. Called for every tree a commit changes (the
    /// projector) and for every tree of a mission whose completion is read
    /// (the marks follower), so whichever of the two an instance learns
    /// last, it ends the tree; instances racing write one event (same
    /// command id as the intake's). The end runs in its own task.
    pub(crate) fn end_if_orphaned(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<(), EngineError> {
        if !self.serves(tenant) {
            return Ok(());
        }
        let Some(snap) = self.inner.store.tree_shared(tenant, tree)? else {
            return Ok(());
        };
        let Some(mission) = snap
            .tree
            .mission
            .as_ref()
            .and_then(|m| m.mission_ref.clone())
        else {
            return Ok(());
        };
        let Some(root) = snap.tree.root else {
            return Ok(());
        };
        let live = snap
            .tree
            .effective(root, Utc::now())
            .is_ok_and(|e| !e.status.is_terminal());
        if !live || !self.inner.store.mission_completed(tenant, &mission)? {
            return Ok(());
        }
        let me = self.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let intake = Actor::mission_intake();
            let base = mission_command(&tenant, &mission, &intake, None).command_id;
            let cmd = tree_command(&tenant, &mission, &intake, base, tree);
            match me.execute_on(tree, &cmd).await {
                Ok(_) | Err(EngineError::Rejected(DomainError::Terminal { .. })) => {
                    tracing::info!(%tenant, %mission, %tree, "tree of a completed mission ended");
                }
                // The projector or the marks follower sees the tree again on
                // its next commit or at the next start.
                Err(e) => {
                    tracing::error!(%tenant, %mission, %tree, error = %e, "cannot end a tree of a completed mission")
                }
            }
        });
        Ok(())
    }

    async fn complete_mission_trees(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: Actor,
        command: Option<CommandId>,
    ) -> Result<CommandResult, EngineError> {
        let base = mission_command(tenant, mission, &actor, command).command_id;
        let mut commits = Vec::new();
        let mut duplicate = true;
        for tree in self.inner.store.trees_for_mission(tenant, mission)? {
            let cmd = tree_command(tenant, mission, &actor, base, tree);
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
    pub async fn execute_bulk(&self, bulk: BulkEnvelope) -> Result<CommandResult, EngineError> {
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

/// A mission's completion as one command: `command`, or (from the intake and
/// the engine) an id derived from the tenant and mission, so every instance
/// writes the same one.
fn mission_command(
    tenant: &TenantId,
    mission: &MissionRef,
    actor: &Actor,
    command: Option<CommandId>,
) -> CommandEnvelope {
    let command_id = command
        .unwrap_or_else(|| CommandId::derived("complete-mission", &format!("{tenant}/{mission}")));
    CommandEnvelope {
        command_id,
        tenant: tenant.clone(),
        actor: actor.clone(),
        correlation_id: None,
        schema_version: crate::domain::SCHEMA_VERSION,
        command: Command::CompleteMission(crate::domain::command::CompleteMission {
            mission_ref: mission.clone(),
        }),
    }
}

/// The completion of one tree of a mission, its id derived from the
/// mission's command id and the tree.
fn tree_command(
    tenant: &TenantId,
    mission: &MissionRef,
    actor: &Actor,
    base: CommandId,
    tree: TreeId,
) -> CommandEnvelope {
    let mut cmd = mission_command(
        tenant,
        mission,
        actor,
        Some(CommandId::derived(&base.to_string(), &tree.to_string())),
    );
    cmd.correlation_id = Some(base.to_string());
    cmd
}

/// The id of the empty tree a completion of a mission no tree serves is
/// decided on (it is never written).
fn mission_tree(tenant: &TenantId, mission: &MissionRef) -> TreeId {
    TreeId(CommandId::derived("mission-tree", &format!("{tenant}/{mission}")).0)
}
