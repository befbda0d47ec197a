//! Issuing root mandates and delegating narrower ones (invariant 1).

use chrono::{DateTime, Utc};

use super::command::{Delegate, Issue};
use super::decide::{refuse_terminal, target, Facts, Ruling};
use super::error::DomainError;
use super::event::{EventBody, MandateIssued};
use super::ids::{CommandId, MandateId, TenantId, TreeId};
use super::model::{Actor, Grantor, Tree};

/// A root mandate: principal → agent, for a mission. The root's id is the
/// tree's id, so a retried issue lands on the same tree. No mandate serves a
/// mission that is already completed (`facts.mission_completed`).
pub(crate) fn issue(
    tree: &Tree,
    actor: &Actor,
    c: &Issue,
    facts: &Facts,
    now: DateTime<Utc>,
) -> Ruling {
    let mandate = MandateId(tree.id.0);
    if tree.exists() {
        return Err(DomainError::TreeExists { tree: tree.id });
    }
    let allowed = match actor {
        Actor::Principal(p) => *p == c.principal,
        Actor::Admin(_) => true,
        Actor::Agent(_) | Actor::System(_) => false,
    };
    if !allowed {
        return Err(DomainError::NotAuthorized {
            mandate,
            actor: actor.to_string(),
            verb: "issue",
        });
    }
    if let Some(r) = c
        .mission
        .mission_ref
        .as_ref()
        .filter(|_| facts.mission_completed)
    {
        return Err(DomainError::MissionCompleted {
            mission_ref: r.to_string(),
        });
    }
    if c.not_after <= now {
        return Err(DomainError::NotAfterInPast {
            requested: c.not_after,
            now,
        });
    }
    // Authority comes strictly from above (invariant 9): the grantee may not
    // supervise its own mandate.
    if c.supervisors.contains(&c.grantee) {
        return Err(DomainError::SupervisorBelow {
            agent: c.grantee.clone(),
            supervised: mandate,
            held: mandate,
        });
    }
    Ok(vec![EventBody::MandateIssued(Box::new(MandateIssued {
        mandate,
        parent: None,
        grantor: Grantor::Principal(c.principal.clone()),
        grantee: c.grantee.clone(),
        principal: c.principal.clone(),
        mission: Some(c.mission.clone()),
        scope: c.scope.clone(),
        not_after: c.not_after,
        depth: c.depth,
        step_up: c.step_up.clone(),
        supervisors: c.supervisors.clone(),
    }))])
}

/// The tree (and root mandate) id an issue gets: derived from the tenant and
/// the command id, so a retried issue lands on the same tree and the log
/// deduplicates it, while two tenants using one command id never share a tree.
pub fn root_tree_id(tenant: &TenantId, command: CommandId) -> TreeId {
    TreeId(uuid::Uuid::new_v5(
        &command.0,
        format!("root-mandate/{tenant}").as_bytes(),
    ))
}

/// The id a delegation gets: derived from the tenant, the tree and the command
/// id, so a retry lands on the same mandate, and neither two tenants nor two
/// trees ever share one, even when one command id is used in both (the log
/// forgets command ids across trees after its duplicate window, and a mandate
/// id shared by two trees would send commands on one to the other).
pub fn delegated_id(tenant: &TenantId, tree: TreeId, command: CommandId) -> MandateId {
    MandateId(uuid::Uuid::new_v5(
        &command.0,
        format!("delegated-mandate/{tenant}/{tree}").as_bytes(),
    ))
}

/// A delegation never widens: scope ⊆ the scope of every mandate on the
/// parent's chain, `not_after` ≤ the earliest `not_after` on it (its default),
/// depth strictly below, same tenant and mission (it lives in the parent's
/// tree), parent effectively active, delegator the parent's grantee.
pub(crate) fn delegate(
    tree: &Tree,
    actor: &Actor,
    command: CommandId,
    c: &Delegate,
    now: DateTime<Utc>,
) -> Ruling {
    let parent = target(tree, c.parent)?;
    match actor {
        Actor::Agent(a) if *a == parent.grantee => {}
        _ => {
            return Err(DomainError::NotGrantee {
                mandate: parent.id,
                actor: actor.to_string(),
                grantee: parent.grantee.clone(),
            })
        }
    }
    // Terminal is absorbing (invariant 2): a delegation from an ended parent
    // is refused as `Terminal`, naming the ancestor that ended it, like every
    // other command on that parent; `ParentNotActive` is left for a pause.
    refuse_terminal(tree, parent, now)?;
    let eff = tree.effective(parent.id, now)?;
    if !eff.is_active() {
        return Err(DomainError::ParentNotActive {
            parent: parent.id,
            status: eff.status,
        });
    }
    if parent.depth == 0 {
        return Err(DomainError::DepthExhausted { parent: parent.id });
    }
    let depth = c.depth.unwrap_or(parent.depth - 1);
    if depth >= parent.depth {
        return Err(DomainError::DepthWidens {
            parent: parent.id,
            requested: depth,
            parent_depth: parent.depth,
        });
    }
    // Every link of the parent's chain, not the parent alone: an ancestor
    // narrowed or shortened after the parent was delegated limits what the
    // parent may pass on, as it limits every check under it.
    if let Some((holder, g)) = tree.first_uncovered_on_chain(parent.id, &c.scope) {
        return Err(DomainError::ScopeWidens {
            parent: holder,
            grant: g.to_string(),
        });
    }
    let (ends_first, chain_end) = tree
        .earliest_not_after_on_chain(parent.id)
        .unwrap_or((parent.id, parent.not_after));
    let not_after = c.not_after.unwrap_or(chain_end);
    if not_after > chain_end {
        return Err(DomainError::NotAfterWidens {
            parent: ends_first,
            requested: not_after,
            parent_not_after: chain_end,
        });
    }
    if not_after <= now {
        return Err(DomainError::NotAfterInPast {
            requested: not_after,
            now,
        });
    }
    let mandate = delegated_id(&tree.tenant, tree.id, command);
    // Authority comes strictly from above (invariant 9): the new grantee may
    // not be a supervisor of any mandate above it (a supervisor named on a
    // link watches everything below it), nor of its own mandate.
    let supervised = tree
        .chain(parent.id)
        .into_iter()
        .find(|link| link.supervisors.contains(&c.grantee))
        .map(|link| link.id)
        .or_else(|| c.supervisors.contains(&c.grantee).then_some(mandate));
    if let Some(supervised) = supervised {
        return Err(DomainError::SupervisorBelow {
            agent: c.grantee.clone(),
            supervised,
            held: mandate,
        });
    }
    Ok(vec![EventBody::MandateIssued(Box::new(MandateIssued {
        mandate,
        parent: Some(parent.id),
        grantor: Grantor::Agent(parent.grantee.clone()),
        grantee: c.grantee.clone(),
        principal: parent.principal.clone(),
        mission: None,
        scope: c.scope.clone(),
        not_after,
        depth,
        step_up: c.step_up.clone(),
        supervisors: c.supervisors.clone(),
    }))])
}
