//! Every public command of the engine: [`Engine::execute`] for one command,
//! [`Engine::execute_bulk`] for a command over many trees. The machinery
//! behind them is in `write.rs`, `catch_up.rs` and `automatic.rs`.

use crate::domain::command::{AgentBlock, PrincipalBlock};
use crate::domain::{
    delegated_id, Command, CommandEnvelope, CommandId, CommandSignature, DomainError, EventBody,
    ExternalCommand, Facts, MandateId, TreeId,
};
use crate::protocol::{Bulk, BulkEnvelope, CommandResult};

use super::write::{engine_command, Held};
use super::{Engine, EngineError};

impl Engine {
    /// Handles one command from outside the engine (which, by its type,
    /// cannot act as the engine itself). Idempotent by command id: a retry
    /// returns the original result with `duplicate: true` and writes nothing.
    #[tracing::instrument(skip_all, fields(tenant = %cmd.envelope().tenant, command_id = %cmd.envelope().command_id, verb = cmd.envelope().command.verb()))]
    pub async fn execute(&self, cmd: ExternalCommand) -> Result<CommandResult, EngineError> {
        self.execute_signed(cmd, None).await
    }

    /// [`Engine::execute`] of a command whose signature was verified: it is
    /// recorded in every event the command writes.
    pub(crate) async fn execute_signed(
        &self,
        cmd: ExternalCommand,
        signature: Option<CommandSignature>,
    ) -> Result<CommandResult, EngineError> {
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
                    signature,
                )
                .await;
        }
        let tree = match self.tree_for(&cmd) {
            // Another instance may have acknowledged the command that created
            // this mandate, and our follower not have applied it yet: a caller
            // must not be told "not found" for a mandate it was just given.
            Err(e) if matches!(e.rejection(), Some(DomainError::MandateNotFound { .. })) => {
                self.wait_for_log().await?;
                self.tree_for(&cmd)?
            }
            other => other?,
        };
        // A grant reads the tenant's blocks fresh before deciding...
        let facts = Facts {
            key_id_configured: self.key_id_configured(&cmd),
            signature: signature.map(Box::new),
            ..self.grant_facts(&cmd).await?.0
        };
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
        self.execute_bulk_signed(bulk, None).await
    }

    /// [`Engine::execute_bulk`] of a command whose signature was verified:
    /// it is recorded in every event the command writes (its block and each
    /// of its revokes).
    pub(crate) async fn execute_bulk_signed(
        &self,
        bulk: BulkEnvelope,
        signature: Option<CommandSignature>,
    ) -> Result<CommandResult, EngineError> {
        let signed = Facts {
            signature: signature.map(Box::new),
            ..Facts::default()
        };
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
        crate::domain::command::check_correlation_id(bulk.correlation_id.as_deref())?;
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
            .execute_on(TreeId::registry(&bulk.tenant), &block, &signed)
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
        let now = self.now();
        let revokes = targets
            .into_iter()
            // Skip what is already effectively ended (e.g. below another
            // target), as the store stands when its turn comes.
            .filter(|(tree, mandate)| {
                !matches!(
                    self.inner.store.view(&bulk.tenant, *tree, &[*mandate], None),
                    Ok(Some(s)) if s.tree
                        .effective(*mandate, now)
                        .map(|e| e.status.is_terminal())
                        .unwrap_or(true)
                )
            })
            .map(|(tree, mandate)| {
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
                (tree, cmd)
            });
        let (mut commits, duplicate) = self.execute_each(revokes, &signed).await?;
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
