//! Narrowing a scope and renewing a `not_after`: changes that keep invariant 1.

use chrono::{DateTime, Utc};

use super::command::{Narrow, Renew};
use super::decide::{changeable, grants_above, Ruling};
use super::error::DomainError;
use super::event::{EventBody, MandateRenewed, ScopeNarrowed};
use super::model::{Actor, Tree};

/// The new scope must lie within the current one. Children keep their own
/// scope, but every check under them also needs this mandate's scope, so
/// they are narrowed effectively.
pub(crate) fn narrow(tree: &Tree, actor: &Actor, c: &Narrow, now: DateTime<Utc>) -> Ruling {
    let m = changeable(tree, actor, c.mandate, "narrow", false, now)?;
    if let Some(g) = m.scope.first_uncovered(&c.scope) {
        return Err(DomainError::NarrowWidens {
            mandate: m.id,
            grant: g.to_string(),
        });
    }
    Ok(vec![EventBody::ScopeNarrowed(ScopeNarrowed {
        mandate: m.id,
        scope: c.scope.clone(),
    })])
}

/// A new `not_after`: in the future, never past any ancestor's. Moving it
/// later grants time, so only one who could have granted the mandate may: a
/// supervisor may bring it forward, never push it back.
pub(crate) fn renew(tree: &Tree, actor: &Actor, c: &Renew, now: DateTime<Utc>) -> Ruling {
    let m = changeable(tree, actor, c.mandate, "renew", false, now)?;
    if c.not_after > m.not_after && !grants_above(tree, m, actor) {
        return Err(DomainError::NotAuthorized {
            mandate: m.id,
            actor: actor.to_string(),
            verb: "extend",
        });
    }
    if c.not_after <= now {
        return Err(DomainError::NotAfterInPast {
            requested: c.not_after,
            now,
        });
    }
    // Every ancestor's, not the parent's alone: one shortened after the
    // parent was delegated ends everything below it.
    if let Some((ends_first, chain_end)) =
        m.parent.and_then(|p| tree.earliest_not_after_on_chain(p))
    {
        if c.not_after > chain_end {
            return Err(DomainError::NotAfterWidens {
                parent: ends_first,
                requested: c.not_after,
                parent_not_after: chain_end,
            });
        }
    }
    Ok(vec![EventBody::MandateRenewed(MandateRenewed {
        mandate: m.id,
        not_after: c.not_after,
    })])
}
