//! Commands the engine writes itself: expiries, mission completions, and
//! the end of trees a completed mission leaves behind. Their command ids are
//! derived, so instances racing on them write each one once.

use crate::domain::{
    decide, Actor, Command, CommandEnvelope, CommandId, DomainError, Facts, MissionRef, TenantId,
    Tree, TreeId,
};
use crate::protocol::CommandResult;
use crate::store::DueExpiry;

use super::write::{engine_command, Held};
use super::{Engine, EngineError};

impl Engine {
    /// Completes every tree serving `mission`; remembers the mission as
    /// completed so later issues for it are refused.
    /// Crate-private: `actor` may be the engine's own mission intake, so only
    /// the engine's paths (a checked command, the intake) call this.
    /// `signature`, a signed command's, is recorded in the events this call
    /// writes.
    #[tracing::instrument(skip(self, actor, command), fields(tenant = %tenant, mission = %mission))]
    pub(crate) async fn complete_mission(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: Actor,
        command: Option<CommandId>,
        signature: Option<crate::domain::CommandSignature>,
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
            self.now(),
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
            .complete_mission_trees(tenant, mission, &actor, cmd.command_id, signature)
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
    pub(super) async fn end_if_mission_completed(
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
            Ok(_) => {}
            Err(e) if matches!(e.rejection(), Some(DomainError::Terminal { .. })) => {}
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
        let Some(snap) = self.inner.store.view(tenant, tree, &[], None)? else {
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
            .effective(root, self.now())
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
            let done = me.execute_on(tree, &cmd, &Facts::default()).await;
            match done.map_err(|e| match e.rejection() {
                Some(DomainError::Terminal { .. }) => None,
                _ => Some(e),
            }) {
                Ok(_) | Err(None) => {
                    tracing::info!(%tenant, %mission, %tree, "tree of a completed mission ended");
                }
                // The projector or the marks follower sees the tree again on
                // its next commit or at the next start.
                Err(Some(e)) => {
                    tracing::error!(%tenant, %mission, %tree, error = %e, "cannot end a tree of a completed mission")
                }
            }
        });
        Ok(())
    }

    /// The completion `base` of `mission` on every tree serving it, as
    /// the log has them now, each under an id derived from `base`.
    async fn complete_mission_trees(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: &Actor,
        base: CommandId,
        signature: Option<crate::domain::CommandSignature>,
    ) -> Result<CommandResult, EngineError> {
        self.catch_up_to_log_head().await?;
        let trees = self.inner.store.trees_for_mission(tenant, mission)?;
        let completions = trees
            .into_iter()
            .map(|tree| (tree, tree_command(tenant, mission, actor, base, tree)));
        let (commits, duplicate) = self
            .execute_each(
                completions,
                &Facts {
                    signature: signature.map(Box::new),
                    ..Facts::default()
                },
            )
            .await?;
        Ok(CommandResult {
            command_id: base,
            duplicate: duplicate && !commits.is_empty(),
            mandate: None,
            commits,
        })
    }

    /// Writes the `expired` event of a due mandate (command id derived from
    /// the mandate and its `not_after`, so instances racing write one event).
    /// It is decided at the engine clock's now.
    pub(crate) async fn expire(&self, due: &DueExpiry) -> Result<(), EngineError> {
        if self.ended_by_an_event(due)? {
            // An ancestor's end left this entry behind (ending a root writes
            // nothing below it): nothing to write.
            self.inner.store.remove_expiry(due)?;
            return Ok(());
        }
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
            Err(e)
                if matches!(
                    e.rejection(),
                    Some(DomainError::Terminal { .. } | DomainError::NotYetExpired { .. },)
                ) =>
            {
                self.inner.store.remove_expiry(due)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Engine {
    /// Whether the due mandate is already ended by an event (its own or an
    /// ancestor's), as this instance knows it. Terminal is absorbing, so
    /// what this instance knows ended stays ended, however far behind it is.
    fn ended_by_an_event(&self, due: &DueExpiry) -> Result<bool, EngineError> {
        let Some(view) = self
            .inner
            .store
            .view(&due.tenant, due.tree, &[due.mandate], None)?
        else {
            return Ok(false);
        };
        Ok(view
            .tree
            .effective(due.mandate, due.not_after)
            .ok()
            .and_then(|e| e.cause)
            .is_some_and(|c| c.status.is_terminal() && c.by.is_some()))
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
