//! Resolving a quarantine: an administrator restores a quarantined tree or
//! ends it for good. Either way the decision is an event in the tree's own
//! stream, chained from the last good event, naming the bad record it skips.

use super::command::ResolveQuarantine;
use super::decide::{target, Ruling};
use super::error::DomainError;
use super::event::{EventBody, QuarantineResolved};
use super::model::{Actor, Tree};

pub(crate) fn resolve(tree: &Tree, actor: &Actor, c: &ResolveQuarantine) -> Ruling {
    let m = target(tree, c.mandate)?;
    if !matches!(actor, Actor::Admin(_)) {
        return Err(DomainError::NotAuthorized {
            mandate: m.id,
            actor: actor.to_string(),
            verb: "resolve the quarantine of",
        });
    }
    match &tree.quarantine {
        Some(q) if q.position == c.position => {}
        _ => {
            return Err(DomainError::NotQuarantined {
                tree: tree.id,
                position: c.position,
            })
        }
    }
    // `target` found a mandate, so the tree has a root.
    let root = tree.root.unwrap_or(m.id);
    Ok(vec![EventBody::QuarantineResolved(QuarantineResolved {
        mandate: root,
        position: c.position,
        action: c.action,
        reason: c.reason.clone(),
    })])
}
