//! Pause, resume, revoke, expire, complete: moves through the status machine.
//! Terminal is absorbing (invariant 2): every command here refuses a mandate
//! that is effectively terminal.

use chrono::{DateTime, Utc};

use super::command::{Change, CompleteMission, Target};
use super::decide::{authority_rank, changeable, refuse_terminal, target, Ruling};
use super::error::DomainError;
use super::event::{Changed, EventBody, MissionCompleted};
use super::model::{Actor, Tree};
use super::status::Status;

fn changed(c: &Change) -> Changed {
    Changed {
        mandate: c.mandate,
        reason: c.reason.clone(),
    }
}

pub(crate) fn pause(tree: &Tree, actor: &Actor, c: &Change, now: DateTime<Utc>) -> Ruling {
    let m = changeable(tree, actor, c.mandate, "pause", false, now)?;
    if m.status == Status::Paused {
        // A pause is taken over by authority strictly above the one that set
        // it, which then holds it: otherwise making a pause set below hold
        // would mean lifting it and pausing again, with the mandate live in
        // between.
        let paused_by = m.transition.as_ref().map(|t| &t.by);
        let takes_over = paused_by.is_some_and(|by| outranks(tree, m, actor, by));
        if !takes_over {
            return Err(DomainError::AlreadyPaused { mandate: m.id });
        }
    }
    Ok(vec![EventBody::MandatePaused(changed(c))])
}

/// Does `actor` rank strictly above `other` over `m`? An actor without
/// authority over `m` (any more) ranks below everyone who has some.
fn outranks(tree: &Tree, m: &super::model::Mandate, actor: &Actor, other: &Actor) -> bool {
    match (
        authority_rank(tree, m, actor),
        authority_rank(tree, m, other),
    ) {
        (Some(mine), Some(theirs)) => mine < theirs,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

pub(crate) fn resume(tree: &Tree, actor: &Actor, c: &Change, now: DateTime<Utc>) -> Ruling {
    let m = changeable(tree, actor, c.mandate, "resume", false, now)?;
    if m.status != Status::Paused {
        return Err(DomainError::NotPaused {
            mandate: m.id,
            status: m.status,
        });
    }
    // A pause is lifted by the actor that set it, by authority above that
    // actor, or by an administrator; a grantor cannot undo its principal's
    // pause. A pauser that no longer has authority over the mandate holds
    // the pause for no one.
    if let Some(paused_by) = m.transition.as_ref().map(|t| &t.by) {
        let lifts = actor == paused_by
            || matches!(actor, Actor::Admin(_))
            || outranks(tree, m, actor, paused_by);
        if !lifts {
            return Err(DomainError::PausedFromAbove {
                mandate: m.id,
                actor: actor.to_string(),
                paused_by: paused_by.to_string(),
            });
        }
    }
    Ok(vec![EventBody::MandateResumed(changed(c))])
}

/// Revoke: by authority above, or by the grantee relinquishing it.
pub(crate) fn revoke(tree: &Tree, actor: &Actor, c: &Change, now: DateTime<Utc>) -> Ruling {
    end(tree, actor, c, now, "revoke", EventBody::MandateRevoked)
}

/// Complete one mandate's task: by authority above, or by its grantee.
pub(crate) fn complete(tree: &Tree, actor: &Actor, c: &Change, now: DateTime<Utc>) -> Ruling {
    end(tree, actor, c, now, "complete", EventBody::MandateCompleted)
}

/// Ends a mandate that is not already (effectively) ended: by authority
/// above it, or by its own grantee giving it up.
fn end(
    tree: &Tree,
    actor: &Actor,
    c: &Change,
    now: DateTime<Utc>,
    verb: &'static str,
    event: fn(Changed) -> EventBody,
) -> Ruling {
    changeable(tree, actor, c.mandate, verb, true, now)?;
    Ok(vec![event(changed(c))])
}

/// Expire: gated by the clock, not by the actor, so any engine instance's
/// scheduler may write it (and the log keeps one, by command id).
pub(crate) fn expire(tree: &Tree, c: &Target, now: DateTime<Utc>) -> Ruling {
    let m = target(tree, c.mandate)?;
    if m.status.is_terminal() {
        return Err(DomainError::Terminal {
            mandate: m.id,
            status: m.status,
            cause: None,
        });
    }
    // An ancestor ended by an event already ends this one by cascade. Checked
    // before the clock so that an expiry on a mandate under a revoked ancestor
    // is refused as `Terminal` naming that ancestor (invariant 2), whether or
    // not its own `not_after` has passed yet.
    let eff = tree.effective(m.id, now)?;
    if let Some(cause) = eff
        .cause
        .filter(|c| c.status.is_terminal() && c.by.is_some())
    {
        return Err(DomainError::Terminal {
            mandate: m.id,
            status: cause.status,
            cause: Some(cause.mandate),
        });
    }
    if now < m.not_after {
        return Err(DomainError::NotYetExpired {
            mandate: m.id,
            not_after: m.not_after,
        });
    }
    Ok(vec![EventBody::MandateExpired(super::event::Changed {
        mandate: m.id,
        reason: Some(format!("not_after {} passed", m.not_after.to_rfc3339())),
    })])
}

/// The mission is complete: the root is completed, and the whole tree with it.
/// By the mission intake, the tree's principal or an administrator.
///
/// Decided on an empty tree, it is the completion of a mission no tree
/// serves (yet): it writes nothing on a tree, but closes the mission for
/// every later issue, so only an administrator or the mission intake may
/// make it; anyone else is refused with `MissionForbidden`.
pub(crate) fn complete_mission(
    tree: &Tree,
    actor: &Actor,
    c: &CompleteMission,
    now: DateTime<Utc>,
) -> Ruling {
    let root = match tree.root {
        Some(r) => target(tree, r)?,
        None => {
            let privileged = matches!(actor, Actor::Admin(_)) || *actor == Actor::mission_intake();
            if privileged {
                return Ok(Vec::new());
            }
            return Err(DomainError::MissionForbidden {
                mission_ref: c.mission_ref.to_string(),
                actor: actor.to_string(),
            });
        }
    };
    let serves = tree
        .mission
        .as_ref()
        .and_then(|m| m.mission_ref.as_ref())
        .is_some_and(|r| *r == c.mission_ref);
    if !serves {
        return Err(DomainError::MissionMismatch {
            tree: tree.id,
            mission_ref: c.mission_ref.to_string(),
        });
    }
    let allowed = match actor {
        Actor::System(_) => *actor == Actor::mission_intake(),
        Actor::Principal(p) => tree.principal.as_ref() == Some(p),
        Actor::Admin(_) => true,
        Actor::Agent(_) => false,
    };
    if !allowed {
        return Err(DomainError::NotAuthorized {
            mandate: root.id,
            actor: actor.to_string(),
            verb: "complete the mission of",
        });
    }
    refuse_terminal(tree, root, now)?;
    Ok(vec![EventBody::MissionCompleted(MissionCompleted {
        mandate: root.id,
        mission_ref: c.mission_ref.clone(),
    })])
}
