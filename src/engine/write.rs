//! The write path behind every command: find the tree, decide on its
//! snapshot, append with the head decided on, retry conflicts from fresh
//! state, apply, and publish the signals; and the grants that a block
//! written at the same moment must end.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use crate::domain::{
    decide, root_tree_id, Actor, Block, Command, CommandEnvelope, CommandId, DomainError, Event,
    EventBody, Facts, MandateId, TenantId, TreeId,
};
use crate::log::{EventLog, LogError};
use crate::protocol::CommitInfo;
use crate::store::TreeSnapshot;

use super::{signal_for, Engine, EngineError};

impl Engine {
    /// The tree a command acts on. Another tenant's mandate is simply not found.
    pub(super) fn tree_for(&self, cmd: &CommandEnvelope) -> Result<TreeId, EngineError> {
        match cmd.command {
            // The root's id is derived from the command id, so a retried issue
            // lands on the same tree and the log deduplicates it.
            Command::Issue(_) => return Ok(root_tree_id(&cmd.tenant, cmd.command_id)),
            Command::BlockAgent(_)
            | Command::UnblockAgent(_)
            | Command::BlockPrincipal(_)
            | Command::UnblockPrincipal(_)
            | Command::RegisterKey(_)
            | Command::RevokeKey(_)
            | Command::RotateKey(_) => return Ok(TreeId::registry(&cmd.tenant)),
            _ => {}
        }
        let mandate = cmd.command.target().ok_or_else(|| {
            EngineError::invalid(format!("command {} names no mandate", cmd.command.verb()))
        })?;
        self.inner
            .store
            .tree_of(&cmd.tenant, mandate)?
            .ok_or_else(|| EngineError::from(DomainError::MandateNotFound { mandate }))
    }

    /// Waits until the projection has applied everything the log held when
    /// called (in-order follower), for at most [`LAG_WAIT`]; after that it
    /// reads and applies the rest itself. A follower cut off for longer (its
    /// NATS node died and it is reconnecting) must not make a mandate
    /// another instance created look "not found": a revoke refused so would
    /// leave it live.
    pub(super) async fn wait_for_log(&self) -> Result<(), EngineError> {
        let target = self.inner.log.last_position().await?;
        let deadline = tokio::time::Instant::now() + LAG_WAIT;
        loop {
            // Registered before the check, so no wake-up falls in between.
            let changed = self.inner.changed.notified();
            if self.inner.store.checkpoint()? >= target {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.catch_up_until(Some(target)).await;
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
        self.catch_up_tree_to_head(tenant, id).await?;
        if let Some(held) = self.log_hold(tenant, id)? {
            return Err(held.into());
        }
        Ok(self.inner.store.head(tenant, id)?)
    }

    /// What the registry says about a grant (`issue`, `delegate`), read
    /// fresh, with the block that refuses it, if any. Other commands read
    /// nothing and get the default facts.
    pub(super) async fn grant_facts(
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
    pub(super) async fn revoke_blocked_grant(
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
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.rejection(),
                    Some(DomainError::Terminal { .. } | DomainError::CommandIdReused { .. })
                ) =>
            {
                Ok(())
            }
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
        let registry = match self.inner.store.head(tenant, TreeId::registry(tenant)) {
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

    /// Decide-append-apply on one tree, retrying conflicts from fresh state.
    /// Returns the commit and whether it was a duplicate.
    pub(crate) async fn execute_on(
        &self,
        tree: TreeId,
        cmd: &CommandEnvelope,
        facts: &Facts,
    ) -> Result<(CommitInfo, bool), EngineError> {
        let tenant = &cmd.tenant;
        // Commands on one tree take turns in this instance: a swarm writing
        // under one root would otherwise spend its appends refusing each
        // other. Conflicts remain only between instances.
        let _turn = self.inner.writers.turn(tenant, tree).await;
        for _attempt in 0..self.inner.config.max_attempts {
            let snap = self.command_view(tenant, tree, cmd)?;
            // The caller's facts (a grant's blocks), and the mission's, read
            // fresh on every attempt.
            let facts = Facts {
                mission_completed: self.facts_for(cmd).await?.mission_completed,
                ..facts.clone()
            };
            let now = self.now();
            let events = match decide(&snap.tree, cmd, &facts, now) {
                Ok(events) => events,
                Err(refusal) => {
                    // A refusal is never checked by an append, so it must not
                    // rest on a stale snapshot: another instance may have
                    // written this tree (e.g. the pause a resume needs) and
                    // our follower not have applied it yet.
                    if self
                        .caught_up_if_behind(tenant, tree, snap.position)
                        .await?
                    {
                        continue;
                    }
                    return Err(refusal.into());
                }
            };
            if events.is_empty() {
                // Nothing to write because of what the tree holds (a request
                // equal to one still pending), not because this command id
                // was applied before: like a refusal, that must not rest on
                // a stale snapshot (another instance may have granted that
                // approval, and our follower not have applied it yet).
                if !snap.tree.commands.contains_key(&cmd.command_id)
                    && self
                        .caught_up_if_behind(tenant, tree, snap.position)
                        .await?
                {
                    continue;
                }
                return Ok((self.unchanged(tenant, &snap, cmd, now)?, true));
            }
            let payload = Event::encode_commit(&events);
            // A write is coming: the cascade counts hold back their reads.
            self.inner.metrics.writing();
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
                    let snap = self.command_view(tenant, tree, cmd)?;
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
                    self.fault_point("append", &events).await;
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
                    self.fault_point("apply", &events).await;
                    // Whoever applied it (this call, or the follower that saw
                    // the commit first), the writer publishes its signals at
                    // once; the commit is in the outbox until they are
                    // stored, and other instances publish them after their
                    // republish delay if they are not.
                    self.publish_signals(tenant, tree, appended.position, &events)
                        .await;
                    self.count_cascade(tenant, tree, &events);
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
                    self.inner
                        .conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(%tree, "append conflict; catching up and deciding again");
                    self.catch_up_tree(tenant, tree, snap.position).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::contended(self.inner.config.max_attempts))
    }

    /// For an outcome no append checks (a refusal, or nothing to write):
    /// whether the log holds the tree past `position`, the snapshot's, in
    /// which case the tree is caught up and the command must be decided
    /// again.
    async fn caught_up_if_behind(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        position: u64,
    ) -> Result<bool, EngineError> {
        if self.checked_head(tenant, tree, position).await? > position {
            self.catch_up_tree(tenant, tree, position).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs one command on each of many trees (a bulk command's revokes, a
    /// mission's completions), in turn. A mandate already ended is passed; a
    /// held tree (see [`Held`]) does not keep the command from the others and
    /// is reported once they are done. Returns the commits and whether every
    /// one of them was a duplicate.
    pub(super) async fn execute_each(
        &self,
        cmds: impl IntoIterator<Item = (TreeId, CommandEnvelope)> + Send,
        facts: &Facts,
    ) -> Result<(Vec<CommitInfo>, bool), EngineError> {
        let mut commits = Vec::new();
        let mut duplicate = true;
        let mut held = Held::default();
        for (tree, cmd) in cmds {
            match self.execute_on(tree, &cmd, facts).await {
                Ok((commit, dup)) => {
                    duplicate &= dup;
                    commits.push(commit);
                }
                // Already ended another way: nothing to change there.
                Err(e) if matches!(e.rejection(), Some(DomainError::Terminal { .. })) => {}
                Err(e) => held.hold(e)?,
            }
        }
        held.result()?;
        Ok((commits, duplicate))
    }

    /// Whether the key id a key command registers (or revokes) is one the
    /// operator configured for the tenant.
    pub(super) fn key_id_configured(&self, cmd: &CommandEnvelope) -> bool {
        let id = match &cmd.command {
            Command::RegisterKey(c) => &c.key_id,
            Command::RotateKey(c) => &c.new_key_id,
            Command::RevokeKey(c) => &c.key_id,
            _ => return false,
        };
        self.inner
            .config
            .auth
            .as_ref()
            .is_some_and(|a| a.configured_key(&cmd.tenant, id).is_some())
    }

    /// What `decide` needs to know beyond the tree for `cmd`, read fresh.
    pub(super) async fn facts_for(&self, cmd: &CommandEnvelope) -> Result<Facts, EngineError> {
        let mut facts = Facts::default();
        if let Command::Issue(i) = &cmd.command {
            if let Some(r) = &i.mission.mission_ref {
                facts.mission_completed = self.mission_completed(&cmd.tenant, r).await?;
            }
        }
        Ok(facts)
    }

    /// The commit a command id wrote earlier, from the tree's history.
    /// The answer to a command that wrote nothing: the original commit of
    /// its id, or, for a request for approval equal to one still pending,
    /// the commit of that request (its `approval_requested` event).
    fn unchanged(
        &self,
        tenant: &TenantId,
        snap: &TreeSnapshot,
        cmd: &CommandEnvelope,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<CommitInfo, EngineError> {
        if let (false, Command::RequestApproval(r)) = (
            snap.tree.commands.contains_key(&cmd.command_id),
            &cmd.command,
        ) {
            if let Some(pending) = crate::domain::approval::pending_equal(&snap.tree, r, now) {
                let event = self
                    .inner
                    .store
                    .event_at(tenant, snap.tree.id, pending.seq)?
                    .ok_or_else(|| {
                        EngineError::unavailable(format!(
                            "the request of approval {} is not in the projection",
                            pending.id
                        ))
                    })?;
                return Ok(CommitInfo {
                    tree: snap.tree.id,
                    position: snap.position,
                    events: vec![event],
                });
            }
        }
        self.original(tenant, snap, cmd.command_id)
    }

    pub(super) fn original(
        &self,
        tenant: &TenantId,
        snap: &TreeSnapshot,
        command: CommandId,
    ) -> Result<CommitInfo, EngineError> {
        let events = self
            .inner
            .store
            .events_of_command(tenant, snap.tree.id, command)?;
        Ok(CommitInfo {
            tree: snap.tree.id,
            // The position is not kept per event; the tree's head is reported.
            position: snap.position,
            events,
        })
    }

    /// The signals of a commit's `events`, from its tree as it stands now
    /// (with the tree's head position, for a holder's re-read).
    pub(crate) fn signals_of(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        events: &[Event],
    ) -> Result<Vec<crate::protocol::Signal>, EngineError> {
        if !events.iter().any(super::signals::may_signal) {
            return Ok(Vec::new());
        }
        let mandates: Vec<MandateId> = events.iter().map(|e| e.body.mandate()).collect();
        let Some(snap) = self.inner.store.view(tenant, tree, &mandates, None)? else {
            return Err(EngineError::unavailable(format!(
                "tree {tree} of tenant {tenant} is not in the projection"
            )));
        };
        Ok(events
            .iter()
            .filter_map(|e| signal_for(e, &snap.tree))
            .map(|mut signal| {
                signal.head_position = Some(snap.position);
                signal
            })
            .collect())
    }

    /// One publish per event on the subject of the mandate it is about, the
    /// acknowledgements awaited together; then, if every one was stored,
    /// the commit (at `position`) leaves the outbox. One that was not stays
    /// there, and the republisher tries it again shortly.
    pub(super) async fn publish_signals(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        position: u64,
        events: &[Event],
    ) {
        let signals = match self.signals_of(tenant, tree, events) {
            Ok(signals) => signals,
            Err(e) => {
                // Not expected after an acknowledged append; the commit
                // stays in the outbox, for the republisher.
                tracing::error!(%tenant, %tree, error = %e, "no snapshot to publish signals from");
                self.inner
                    .delivery
                    .retry
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        };
        if signals.is_empty() {
            return;
        }
        let failed = self.inner.bus.publish_all(&signals).await;
        let failed_ids: Vec<_> = failed.iter().map(|(s, _)| s.event_id).collect();
        self.inner.metrics.signals(&signals, &failed_ids);
        for (signal, err) in &failed {
            tracing::error!(error = %err, mandate = %signal.mandate, "signal publish failed; the republisher tries again");
        }
        if !self.inner.bus.is_nats() {
            return;
        }
        if !failed.is_empty() {
            self.inner
                .delivery
                .retry
                .store(true, std::sync::atomic::Ordering::Relaxed);
        } else if let Err(e) = self.inner.store.outbox_done(tenant, tree, position) {
            tracing::error!(error = %e, "cannot take a commit out of the outbox");
        }
    }

    /// Fault injection for tests: with `MANDATE_TEST_ABORT_AT` set to
    /// `append` (or `apply`), the process aborts right after the append (or
    /// after the writer's apply, the projection flushed to disk) of a commit
    /// with signals, before publishing them. Compiled only into debug
    /// builds: a release build never reads the variable.
    #[cfg(debug_assertions)]
    async fn fault_point(&self, stage: &str, events: &[Event]) {
        static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let at = AT.get_or_init(|| std::env::var("MANDATE_TEST_ABORT_AT").ok());
        if at.as_deref() != Some(stage) || !events.iter().any(super::signals::may_signal) {
            return;
        }
        if stage == "apply" {
            let _ = self.inner.store.flush().await;
        }
        eprintln!("MANDATE_TEST_ABORT_AT={stage}: aborting before publishing signals");
        std::process::abort();
    }

    #[cfg(not(debug_assertions))]
    async fn fault_point(&self, _stage: &str, _events: &[Event]) {}
}

/// One lock per tree that a command is writing in this instance, held from
/// its decision to the application of its commit. Entries live as long as a
/// writer holds or waits for them; dead ones are swept as the map grows.
#[derive(Default)]
pub(crate) struct TreeWriters {
    locks: std::sync::Mutex<TreeLockMap>,
}

#[derive(Default)]
struct TreeLockMap {
    map: HashMap<(TenantId, TreeId), Weak<tokio::sync::Mutex<()>>>,
    sweep_at: usize,
}

impl TreeWriters {
    /// Waits for this instance's turn to write `tree`.
    pub(crate) async fn turn(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            let key = (tenant.clone(), tree);
            match locks.map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if locks.map.len() >= locks.sweep_at {
                        locks.map.retain(|_, w| w.strong_count() > 0);
                        locks.sweep_at = (locks.map.len() * 2).max(1024);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Longest wait for this instance's follower to reach the log before a
/// command that found no mandate catches up itself.
const LAG_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Trees a command over many trees could not change because they are held
/// (quarantined, or newer than this build reads). They must not keep the
/// command from the other trees: a corrupt record on one tree would otherwise
/// keep an agent's deprovisioning or a mission's completion from all the
/// trees after it. The first is reported once every other tree is done, so
/// the caller (or the mission intake, which retries) knows to come back.
#[derive(Default)]
pub(super) struct Held(Option<EngineError>);

impl Held {
    /// Keeps a held tree's refusal; any other error ends the command at once.
    pub(super) fn hold(&mut self, e: EngineError) -> Result<(), EngineError> {
        if Self::is_held(&e) {
            self.0.get_or_insert(e);
            Ok(())
        } else {
            Err(e)
        }
    }

    pub(super) fn is_held(e: &EngineError) -> bool {
        matches!(
            e.rejection(),
            Some(
                DomainError::Quarantined { .. }
                    | DomainError::TreeTooNew { .. }
                    | DomainError::LogWentBackwards { .. }
            )
        )
    }

    pub(super) fn result(self) -> Result<(), EngineError> {
        self.0.map_or(Ok(()), Err)
    }
}

/// A command the engine writes itself (a revoke of a blocked grant, an
/// expiry, the steps of a bulk command, a mission's completion): its id is
/// derived by the caller so that every instance writes the same one, and it
/// names the command it serves, if any, as its correlation.
pub(super) fn engine_command(
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
