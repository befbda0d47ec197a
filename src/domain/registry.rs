//! The tenant's registry: blocks on agents and principals that outlive any
//! one tree. Only a tenant administrator writes them.

use super::command::{AgentBlock, Command, PrincipalBlock};
use super::error::DomainError;
use super::event::{AgentBlockChanged, EventBody, PrincipalBlockChanged};
use super::ids::PrincipalId;
use super::model::{Actor, Tree};

/// Decides a registry command on the registry `tree`; `None` for any other
/// command. Returns the bodies and the principal the events are on behalf of
/// (the administrator: the registry serves no principal's root).
pub(crate) fn decide(
    tree: &Tree,
    actor: &Actor,
    command: &Command,
) -> Option<Result<(Vec<EventBody>, PrincipalId), DomainError>> {
    let verb = match command {
        Command::BlockAgent(_) => "block_agent",
        Command::UnblockAgent(_) => "unblock_agent",
        Command::BlockPrincipal(_) => "block_principal",
        Command::UnblockPrincipal(_) => "unblock_principal",
        _ => return None,
    };
    let admin = match actor {
        Actor::Admin(p) => p.clone(),
        other => {
            return Some(Err(DomainError::RegistryForbidden {
                actor: other.to_string(),
                verb,
            }))
        }
    };
    let reg = &tree.registry;
    let body = match command {
        // Blocking again writes again: the latest reason and blocker count.
        Command::BlockAgent(AgentBlock { agent, reason }) => {
            EventBody::AgentBlocked(AgentBlockChanged {
                agent: agent.clone(),
                reason: reason.clone(),
            })
        }
        Command::UnblockAgent(AgentBlock { agent, reason }) => {
            if !reg.blocked_agents.contains_key(agent) {
                return Some(Err(DomainError::NotBlocked {
                    kind: "agent",
                    id: agent.to_string(),
                }));
            }
            EventBody::AgentUnblocked(AgentBlockChanged {
                agent: agent.clone(),
                reason: reason.clone(),
            })
        }
        Command::BlockPrincipal(PrincipalBlock { principal, reason }) => {
            EventBody::PrincipalBlocked(PrincipalBlockChanged {
                principal: principal.clone(),
                reason: reason.clone(),
            })
        }
        Command::UnblockPrincipal(PrincipalBlock { principal, reason }) => {
            if !reg.blocked_principals.contains_key(principal) {
                return Some(Err(DomainError::NotBlocked {
                    kind: "principal",
                    id: principal.to_string(),
                }));
            }
            EventBody::PrincipalUnblocked(PrincipalBlockChanged {
                principal: principal.clone(),
                reason: reason.clone(),
            })
        }
        _ => return None,
    };
    Some(Ok((vec![body], admin)))
}
