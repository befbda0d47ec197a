//! Command handling: find the tree, decide on its snapshot, append with the
//! head we decided on, and on a conflict catch the tree up and decide again.

use std::sync::Arc;

use chrono::Utc;

use crate::domain::command::{AgentBlock, PrincipalBlock};
use crate::domain::{
    decide, delegated_id, root_tree_id, Actor, Block, Command, CommandEnvelope, CommandId,
    DomainError, Event, EventBody, ExternalCommand, Facts, MandateId, MissionRef, TenantId, Tree,
    TreeId,
};
use crate::log::{EventLog, LogError};
use crate::protocol::{Bulk, BulkEnvelope, CommandResult, CommitInfo};
use crate::store::{DueExpiry, TreeSnapshot};

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
        // A grant reads the tenant's blocks fresh before deciding...
        let facts = self.grant_facts(&cmd).await?.0;
        let commit = self.execute_on(tree, &cmd, &facts).await?;
        if let Command::Issue(i) = &cmd.command {
            if let Some(r) = &i.mission.mission_ref {
                self.end_if_mission_completed(&cmd.tenant, r, tree).await?;
            }
        }
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
        // ...and again after appending: a block written in between (by a bulk
        // command on another instance, whose sweep may have read the log
        // before this grant was in it) ends the new mandate at once.
        if let (Some(m), (after, Some(block))) = (mandate, self.grant_facts(&cmd).await?) {
            let refusal = blocked_refusal(&cmd, &after);
            self.revoke_blocked_grant(&cmd.tenant, tree, m, &block, &refusal, cmd.command_id)
                .await?;
            return Err(refusal.into());
        }
        Ok(CommandResult {
            command_id: cmd.command_id,
            duplicate: commit.1,
            mandate,
            commits: vec![commit.0],
        })
    }

    /// The tree a command acts on. Another tenant's mandate is simply not found.
    fn tree_for(&self, cmd: &CommandEnvelope) -> Result<TreeId, EngineError> {
        match cmd.command {
            // The root's id is derived from the command id, so a retried issue
            // lands on the same tree and the log deduplicates it.
            Command::Issue(_) => return Ok(root_tree_id(&cmd.tenant, cmd.command_id)),
            Command::BlockAgent(_)
            | Command::UnblockAgent(_)
            | Command::BlockPrincipal(_)
            | Command::UnblockPrincipal(_) => return Ok(TreeId::registry(&cmd.tenant)),
            _ => {}
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

    /// The tenant's registry, caught up to the log's head for it: blocks
    /// are read fresh, never from a lagging follower.
    pub(crate) async fn fresh_registry(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Arc<TreeSnapshot>>, EngineError> {
        let id = TreeId::registry(tenant);
        if let Some(q) = self.inner.store.quarantined(tenant, id)? {
            return Err(DomainError::Quarantined {
                tree: id,
                position: q.position,
            }
            .into());
        }
        let position = self
            .inner
            .store
            .tree_shared(tenant, id)?
            .map(|s| s.position)
            .unwrap_or(0);
        if self.checked_head(tenant, id, position).await? > position {
            self.catch_up_tree(tenant, id, position).await?;
        }
        if let Some(held) = self.log_hold(tenant, id)? {
            return Err(held.into());
        }
        Ok(self.inner.store.tree_shared(tenant, id)?)
    }

    /// What the registry says about a grant (`issue`, `delegate`), read
    /// fresh, with the block that refuses it, if any. Other commands read
    /// nothing and get the default facts.
    async fn grant_facts(
        &self,
        cmd: &CommandEnvelope,
    ) -> Result<(Facts, Option<Block>), EngineError> {
        let (grantee, principal) = match &cmd.command {
            Command::Issue(i) => (&i.grantee, Some(&i.principal)),
            Command::Delegate(d) => (&d.grantee, None),
            _ => return Ok((Facts::default(), None)),
        };
        let Some(reg) = self.fresh_registry(&cmd.tenant).await? else {
            return Ok((Facts::default(), None));
        };
        let r = &reg.tree.registry;
        let by_principal = principal.and_then(|p| r.blocked_principals.get(p));
        let by_agent = r.blocked_agents.get(grantee);
        let facts = Facts {
            grantee_blocked: by_agent.is_some(),
            principal_blocked: by_principal.is_some(),
            ..Facts::default()
        };
        Ok((facts, by_principal.or(by_agent).cloned()))
    }

    /// Revokes a mandate granted while a block on its grantee or principal
    /// was being written, on the authority of the administrator who wrote
    /// the block. The command id is derived from the mandate, so the grant's
    /// own re-check and every instance's follower (see
    /// [`Engine::end_blocked_grants`]) write one revoke between them.
    async fn revoke_blocked_grant(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        mandate: MandateId,
        block: &Block,
        refusal: &DomainError,
        grant: CommandId,
    ) -> Result<(), EngineError> {
        let cmd = engine_command(
            CommandId::derived("blocked-grant", &format!("{tenant}/{mandate}")),
            tenant,
            block.by.clone(),
            Some(grant),
            Command::Revoke(crate::domain::command::Change {
                mandate,
                reason: Some(refusal.to_string()),
            }),
        );
        match self.execute_on(tree, &cmd, &Facts::default()).await {
            // Ended already, or revoked under this id by another instance
            // that read the registry a moment apart (another reason).
            Ok(_)
            | Err(EngineError::Rejected(
                DomainError::Terminal { .. } | DomainError::CommandIdReused { .. },
            )) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The second line behind a grant's own re-check, for a writer that
    /// died between its append and that re-check: every instance, as it
    /// applies a commit, ends each mandate the commit granted to a blocked
    /// agent or as a root of a blocked principal (as the registry stands in
    /// its projection). In log order the block is applied before any grant
    /// that came after it, so none escapes while some instance follows the
    /// log. Runs in the background; a failure is logged, and the next
    /// instance to apply the commit tries again.
    pub(crate) fn end_blocked_grants(&self, tenant: &TenantId, tree: TreeId, events: &[Event]) {
        if !self.serves(tenant) || tree.is_registry_of(tenant) {
            return;
        }
        let mut grants = events.iter().filter_map(|e| match &e.body {
            EventBody::MandateIssued(m) => Some((e.command_id, m)),
            _ => None,
        });
        let Some(first) = grants.next() else { return };
        let registry = match self
            .inner
            .store
            .tree_shared(tenant, TreeId::registry(tenant))
        {
            Ok(Some(snap)) => snap,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(%tenant, error = %e, "cannot read the registry to check a grant");
                return;
            }
        };
        for (grant, m) in std::iter::once(first).chain(grants) {
            let r = &registry.tree.registry;
            let by_principal = r
                .blocked_principals
                .get(&m.principal)
                .filter(|_| m.parent.is_none())
                .map(|b| {
                    (
                        DomainError::PrincipalBlocked {
                            principal: m.principal.clone(),
                        },
                        b,
                    )
                });
            let by_agent = r.blocked_agents.get(&m.grantee).map(|b| {
                (
                    DomainError::AgentBlocked {
                        agent: m.grantee.clone(),
                    },
                    b,
                )
            });
            let Some((refusal, block)) = by_principal.or(by_agent) else {
                continue;
            };
            let (me, tenant, mandate, block) =
                (self.clone(), tenant.clone(), m.mandate, block.clone());
            tokio::spawn(async move {
                if let Err(e) = me
                    .revoke_blocked_grant(&tenant, tree, mandate, &block, &refusal, grant)
                    .await
                {
                    tracing::warn!(%tenant, %mandate, error = %e, "could not end a grant to a blocked agent or principal; another instance applying it tries again");
                }
            });
        }
    }

    /// Brings this instance's whole projection up to the log's last position
    /// as of this call, across every tree and tenant, before a command reads
    /// an index that spans trees (the agent, principal and mission indexes):
    /// a mandate another instance acknowledged a moment ago must not escape a
    /// bulk revoke or a mission completion here. Unlike [`Engine::wait_for_log`]
    /// it does not wait for the follower (which may lag or be stopped), it
    /// reads and applies itself, and it never gives up silently.
    pub(crate) async fn catch_up_to_log_head(&self) -> Result<(), EngineError> {
        let target = self.inner.log.last_position().await?;
        let mut after = self.inner.store.checkpoint()?;
        while after < target {
            let records = match self.inner.log.read_all(None, after, 1024).await {
                Ok(records) => records,
                // A record that does not decode: it quarantines the tree its
                // subject names (as the follower does), and no other tree is
                // held up by it.
                Err(LogError::Corrupt {
                    position,
                    subject_or_key,
                    reason,
                }) if position > after => {
                    self.apply_corrupt_record(position, &subject_or_key, &reason, true)
                        .await?;
                    after = position;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(last) = records.last().map(|r| r.position) else {
                // Nothing readable past `after` (the tail was deleted).
                break;
            };
            for r in &records {
                self.apply_logged(r, true).await?;
            }
            after = last;
        }
        Ok(())
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
        if self.checked_head(tenant, tree, position).await? > position {
            self.catch_up_tree(tenant, tree, position).await?;
        }
        Ok(())
    }

    fn snapshot(&self, tenant: &TenantId, tree: TreeId) -> Result<Arc<TreeSnapshot>, EngineError> {
        // A quarantined tree is refused by `decide` (only its resolution
        // passes); a tree this build cannot read, or one the log went
        // backwards on, is refused here.
        if let Some(held) = self.log_hold(tenant, tree)? {
            return Err(held.into());
        }
        if let Some(u) = self.inner.store.unsupported(tenant, tree)? {
            return Err(DomainError::TreeTooNew {
                tree,
                position: u.position,
                version: u.version,
                supported: crate::domain::SCHEMA_VERSION,
            }
            .into());
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
    /// A corrupt record quarantines the tree (the read that follows refuses
    /// it); it is not an error of the catch-up.
    pub(crate) async fn catch_up_tree(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> Result<(), EngineError> {
        match self.inner.log.read_tree(tenant, tree, after).await {
            Ok(records) => {
                for r in records {
                    self.apply_logged(&r, false).await?;
                }
                Ok(())
            }
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
    async fn catch_up_tree_past_corrupt(
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

    /// Decide-append-apply on one tree, retrying conflicts from fresh state.
    /// Returns the commit and whether it was a duplicate.
    pub(crate) async fn execute_on(
        &self,
        tree: TreeId,
        cmd: &CommandEnvelope,
        facts: &Facts,
    ) -> Result<(CommitInfo, bool), EngineError> {
        let tenant = &cmd.tenant;
        for _attempt in 0..self.inner.config.max_attempts {
            let snap = self.snapshot(tenant, tree)?;
            // The caller's facts (a grant's blocks), and the mission's, read
            // fresh on every attempt.
            let facts = Facts {
                mission_completed: self.facts_for(cmd).await?.mission_completed,
                ..facts.clone()
            };
            let now = Utc::now();
            let events = match decide(&snap.tree, cmd, &facts, now) {
                Ok(events) => events,
                Err(refusal) => {
                    // A refusal is never checked by an append, so it must not
                    // rest on a stale snapshot: another instance may have
                    // written this tree (e.g. the pause a resume needs) and
                    // our follower not have applied it yet.
                    if self.checked_head(tenant, tree, snap.position).await? > snap.position {
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
        // A completion by the intake or an administrator that only a held
        // (e.g. quarantined) tree kept from finishing is still a completion:
        // the mission stays closed to new issues while it is retried.
        let held_only = early && result.as_ref().is_err_and(Held::is_held);
        match &result {
            Ok(_) => self.inner.store.mark_mission_completed(tenant, mission)?,
            Err(_) if held_only => {}
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
        match self.execute_on(tree, &cmd, &Facts::default()).await {
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
            match me.execute_on(tree, &cmd, &Facts::default()).await {
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
        self.catch_up_to_log_head().await?;
        let base = mission_command(tenant, mission, &actor, command).command_id;
        let mut commits = Vec::new();
        let mut duplicate = true;
        let mut held = Held::default();
        for tree in self.inner.store.trees_for_mission(tenant, mission)? {
            let cmd = tree_command(tenant, mission, &actor, base, tree);
            match self.execute_on(tree, &cmd, &Facts::default()).await {
                Ok((commit, dup)) => {
                    duplicate &= dup;
                    commits.push(commit);
                }
                // Already ended another way: nothing to complete there.
                Err(EngineError::Rejected(DomainError::Terminal { .. })) => {}
                Err(e) => held.hold(e)?,
            }
        }
        held.result()?;
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
        let cmd = engine_command(
            CommandId::derived(
                "expire",
                &format!("{}/{}", due.mandate, due.not_after.timestamp_millis()),
            ),
            &due.tenant,
            Actor::expiry(),
            None,
            Command::Expire(crate::domain::command::Target {
                mandate: due.mandate,
            }),
        );
        match self.execute_on(due.tree, &cmd, &Facts::default()).await {
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

    /// Deprovisions an agent or offboards a principal: first records a block
    /// in the tenant's registry (every instance then refuses new mandates to
    /// the agent, or new roots of the principal, until an administrator
    /// lifts it), then catches the projection up to the log's head, then
    /// revokes every live mandate the agent holds, or every live root the
    /// principal granted, each as an ordinary revoke with a command id
    /// derived from the bulk one. Only a tenant administrator may: the block
    /// is tenant-wide.
    #[tracing::instrument(skip_all, fields(tenant = %bulk.tenant, command_id = %bulk.command_id))]
    /// A bulk command only ever comes from outside the engine, so it may
    /// not name an actor reserved for the engine itself.
    pub async fn execute_bulk(&self, bulk: BulkEnvelope) -> Result<CommandResult, EngineError> {
        crate::domain::command::refuse_reserved_actor(&bulk.actor)?;
        crate::domain::command::refuse_reserved_command_id(bulk.command_id)?;
        let (block, reason) = match &bulk.bulk {
            Bulk::RevokeAgent { agent, reason } => (
                Command::BlockAgent(AgentBlock {
                    agent: agent.clone(),
                    reason: reason.clone(),
                }),
                reason.clone(),
            ),
            Bulk::RevokePrincipal { principal, reason } => (
                Command::BlockPrincipal(PrincipalBlock {
                    principal: principal.clone(),
                    reason: reason.clone(),
                }),
                reason.clone(),
            ),
        };
        if let Some(r) = &reason {
            crate::domain::model::check_text("reason", r, false)?;
        }
        let block = engine_command(
            CommandId::derived(&bulk.command_id.to_string(), "registry-block"),
            &bulk.tenant,
            bulk.actor.clone(),
            Some(bulk.command_id),
            block,
        );
        // The block first: a grant racing this command either lands before
        // it (and is in the log the sweep reads) or reads the block after its
        // own append and revokes itself (see `execute`).
        let blocked = match self
            .execute_on(TreeId::registry(&bulk.tenant), &block, &Facts::default())
            .await
        {
            Ok(commit) => Ok(commit),
            // A quarantined registry already refuses every grant (fail
            // closed); the sweep must still end what is live, and the
            // quarantine is reported after it.
            Err(e) if Held::is_held(&e) => Err(e),
            Err(e) => return Err(e),
        };
        // The agent and principal indexes span trees: bring all of them up
        // to the log before reading them.
        self.catch_up_to_log_head().await?;
        let targets: Vec<(TreeId, MandateId)> = match &bulk.bulk {
            Bulk::RevokeAgent { agent, .. } => {
                self.inner.store.mandates_held_by(&bulk.tenant, agent)?
            }
            Bulk::RevokePrincipal { principal, .. } => self
                .inner
                .store
                .trees_granted_by(&bulk.tenant, principal)?
                .into_iter()
                .map(|t| (t, MandateId(t.0)))
                .collect(),
        };
        let now = Utc::now();
        let mut commits = Vec::new();
        let mut duplicate = true;
        let mut held = Held::default();
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
            let cmd = engine_command(
                CommandId::derived(&bulk.command_id.to_string(), &mandate.to_string()),
                &bulk.tenant,
                bulk.actor.clone(),
                Some(bulk.command_id),
                Command::Revoke(crate::domain::command::Change {
                    mandate,
                    reason: reason.clone(),
                }),
            );
            match self.execute_on(tree, &cmd, &Facts::default()).await {
                Ok((commit, dup)) => {
                    duplicate &= dup;
                    commits.push(commit);
                }
                Err(EngineError::Rejected(DomainError::Terminal { .. })) => {}
                Err(e) => held.hold(e)?,
            }
        }
        held.result()?;
        let (block_commit, block_duplicate) = blocked?;
        commits.insert(0, block_commit);
        Ok(CommandResult {
            command_id: bulk.command_id,
            duplicate: duplicate && block_duplicate,
            mandate: None,
            commits,
        })
    }
}

/// The refusal of a grant that `facts` say is blocked.
fn blocked_refusal(cmd: &CommandEnvelope, facts: &Facts) -> DomainError {
    match &cmd.command {
        Command::Issue(i) if facts.principal_blocked => DomainError::PrincipalBlocked {
            principal: i.principal.clone(),
        },
        Command::Issue(i) => DomainError::AgentBlocked {
            agent: i.grantee.clone(),
        },
        Command::Delegate(d) => DomainError::AgentBlocked {
            agent: d.grantee.clone(),
        },
        other => DomainError::InvalidField {
            field: "type",
            reason: format!("{} grants no mandate", other.verb()),
        },
    }
}

/// Trees a command over many trees could not change because they are held
/// (quarantined, or newer than this build reads). They must not keep the
/// command from the other trees: a corrupt record on one tree would otherwise
/// keep an agent's deprovisioning or a mission's completion from all the
/// trees after it. The first is reported once every other tree is done, so
/// the caller (or the mission intake, which retries) knows to come back.
#[derive(Default)]
struct Held(Option<EngineError>);

impl Held {
    /// Keeps a held tree's refusal; any other error ends the command at once.
    fn hold(&mut self, e: EngineError) -> Result<(), EngineError> {
        if Self::is_held(&e) {
            self.0.get_or_insert(e);
            Ok(())
        } else {
            Err(e)
        }
    }

    fn is_held(e: &EngineError) -> bool {
        matches!(
            e,
            EngineError::Rejected(
                DomainError::Quarantined { .. }
                    | DomainError::TreeTooNew { .. }
                    | DomainError::LogWentBackwards { .. }
            )
        )
    }

    fn result(self) -> Result<(), EngineError> {
        self.0.map_or(Ok(()), Err)
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
    engine_command(
        command_id,
        tenant,
        actor.clone(),
        None,
        Command::CompleteMission(crate::domain::command::CompleteMission {
            mission_ref: mission.clone(),
        }),
    )
}

/// A command the engine writes itself (a revoke of a blocked grant, an
/// expiry, the steps of a bulk command, a mission's completion): its id is
/// derived by the caller so that every instance writes the same one, and it
/// names the command it serves, if any, as its correlation.
fn engine_command(
    command_id: CommandId,
    tenant: &TenantId,
    actor: Actor,
    serves: Option<CommandId>,
    command: Command,
) -> CommandEnvelope {
    CommandEnvelope {
        command_id,
        tenant: tenant.clone(),
        actor,
        correlation_id: serves.map(|c| c.to_string()),
        schema_version: crate::domain::SCHEMA_VERSION,
        command,
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
    // A name-based (v5) id like a root's, never the tenant's registry.
    TreeId(uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("mandate.mission-tree/{tenant}/{mission}").as_bytes(),
    ))
}
