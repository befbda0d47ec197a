//! The tenant's registry: blocks on agents and principals that outlive any
//! one tree. Only a tenant administrator writes them.

use std::collections::BTreeMap;
use std::fmt;

use super::command::{AgentBlock, Command, PrincipalBlock};
use super::error::DomainError;
use super::event::{AgentBlockChanged, EventBody, PrincipalBlockChanged};
use super::ids::PrincipalId;
use super::model::{Actor, Block, Tree};

/// Decides a registry command on the registry `tree`; `None` for any other
/// command. Returns the bodies and the principal the events are on behalf of
/// (the administrator: the registry serves no principal's root).
pub(crate) fn decide(
    tree: &Tree,
    actor: &Actor,
    command: &Command,
) -> Option<Result<(Vec<EventBody>, PrincipalId), DomainError>> {
    let reg = &tree.registry;
    // Blocking again writes again: the latest reason and blocker count.
    let body = match command {
        Command::BlockAgent(b) => Ok(EventBody::AgentBlocked(b.into())),
        Command::UnblockAgent(b) => must_be_blocked(&reg.blocked_agents, &b.agent, "agent")
            .map(|()| EventBody::AgentUnblocked(b.into())),
        Command::BlockPrincipal(b) => Ok(EventBody::PrincipalBlocked(b.into())),
        Command::UnblockPrincipal(b) => {
            must_be_blocked(&reg.blocked_principals, &b.principal, "principal")
                .map(|()| EventBody::PrincipalUnblocked(b.into()))
        }
        _ => return None,
    };
    let Actor::Admin(admin) = actor else {
        return Some(Err(DomainError::RegistryForbidden {
            actor: actor.to_string(),
            verb: command.verb(),
        }));
    };
    Some(body.map(|body| (vec![body], admin.clone())))
}

/// Refuses to lift the block of `id` (an agent or principal: `kind`) when
/// there is none.
fn must_be_blocked<K: Ord + fmt::Display>(
    blocks: &BTreeMap<K, Block>,
    id: &K,
    kind: &'static str,
) -> Result<(), DomainError> {
    if blocks.contains_key(id) {
        Ok(())
    } else {
        Err(DomainError::NotBlocked {
            kind,
            id: id.to_string(),
        })
    }
}

impl From<&AgentBlock> for AgentBlockChanged {
    fn from(b: &AgentBlock) -> Self {
        Self {
            agent: b.agent.clone(),
            reason: b.reason.clone(),
        }
    }
}

impl From<&PrincipalBlock> for PrincipalBlockChanged {
    fn from(b: &PrincipalBlock) -> Self {
        Self {
            principal: b.principal.clone(),
            reason: b.reason.clone(),
        }
    }
}
