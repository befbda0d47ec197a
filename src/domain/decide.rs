//! `decide`: the only place business rules live. Given a tree's state, a
//! command and the time, it returns the events to append or a refusal. Pure.

use chrono::{DateTime, Utc};

use super::command::{Command, CommandEnvelope};
use super::error::DomainError;
use super::event::{Event, EventBody, SCHEMA_VERSION};
use super::ids::{EventId, PrincipalId, TreeId};
use super::keys::CommandSignature;
use super::model::{Actor, Mandate, Tree};
use super::{amend, approval, issue, keys, lifecycle, quarantine, registry};

/// What a per-command rule returns: the event bodies to write, or why not.
pub(crate) type Ruling = Result<Vec<EventBody>, DomainError>;

/// What the engine knows beyond the tree, read fresh before deciding.
///
/// `decide` stays pure: the engine reads these facts (from its projection or
/// the log) just before it decides, and passes them in. Every field defaults
/// to "nothing known", which is what a caller without such facts passes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// The mission an `issue` names (by its `mission_ref`) is already
    /// completed.
    pub mission_completed: bool,
    /// The grantee of an `issue` or `delegate` is a blocked (deprovisioned)
    /// agent of the tenant.
    pub grantee_blocked: bool,
    /// The principal of an `issue` is blocked (offboarded) in the tenant.
    pub principal_blocked: bool,
    /// The key id a key command registers (`register_key`'s, `rotate_key`'s
    /// new one) or revokes is one the operator configured: it may not be
    /// registered, nor revoked through the registry.
    pub key_id_configured: bool,
    /// The verified signature of the command, recorded in every event it
    /// writes.
    pub signature: Option<Box<CommandSignature>>,
}

/// Decides what `cmd` means for `tree` at `now`, given `facts`.
///
/// - A command of another tenant is refused with `CrossTenant`.
/// - A command id the tree has already applied yields no events (idempotent:
///   the caller answers with the original result).
/// - So does a `request_approval` equal to one still pending (see
///   `approval::pending_equal`): the caller answers with that one.
/// - Otherwise the events returned, applied in order, take the tree to the
///   new state; every refusal is a typed [`DomainError`] and nothing changes.
/// - Registry commands act only on the tenant's registry
///   ([`TreeId::registry`](super::ids::TreeId::registry)), and no other
///   command acts on it.
/// - A grant to a blocked agent, or a root of a blocked principal
///   (`facts`), is refused once every other rule has passed.
///
/// Each command currently yields exactly one event; the log appends a
/// command's events as one commit either way.
pub fn decide(
    tree: &Tree,
    cmd: &CommandEnvelope,
    facts: &Facts,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if cmd.tenant != tree.tenant {
        return Err(DomainError::CrossTenant {
            command_tenant: cmd.tenant.clone(),
        });
    }
    if let Some(applied) = tree.commands.get(&cmd.command_id) {
        if applied.digest != cmd.digest() {
            return Err(DomainError::CommandIdReused {
                command_id: cmd.command_id,
            });
        }
        return Ok(Vec::new());
    }
    cmd.validate()?;
    // A quarantined tree changes only by an administrator's resolution.
    if let Some(q) = &tree.quarantine {
        if !matches!(cmd.command, Command::ResolveQuarantine(_)) {
            return Err(DomainError::Quarantined {
                tree: tree.id,
                position: q.position,
            });
        }
    }
    let is_registry = tree.id == TreeId::registry(&tree.tenant);
    let decided = registry::decide(tree, &cmd.actor, &cmd.command)
        .or_else(|| keys::decide(tree, &cmd.actor, &cmd.command, facts.key_id_configured, now));
    if let Some(decided) = decided {
        if !is_registry {
            return Err(DomainError::TreeNotFound { tree: tree.id });
        }
        let (bodies, admin) = decided?;
        return Ok(envelop(tree, cmd, facts, now, bodies, Some(admin)));
    }
    if tree.id.is_registry_of(&tree.tenant) {
        // The registry holds no mandate: no mandate command addresses it.
        return Err(DomainError::TreeNotFound { tree: tree.id });
    }
    let bodies = match &cmd.command {
        Command::Issue(c) => issue::issue(tree, &cmd.actor, c, facts, now)?,
        Command::Delegate(c) => issue::delegate(tree, &cmd.actor, cmd.command_id, c, now)?,
        Command::Pause(c) => lifecycle::pause(tree, &cmd.actor, c, now)?,
        Command::Resume(c) => lifecycle::resume(tree, &cmd.actor, c, now)?,
        Command::Revoke(c) => lifecycle::revoke(tree, &cmd.actor, c, now)?,
        Command::Complete(c) => lifecycle::complete(tree, &cmd.actor, c, now)?,
        Command::Expire(c) => lifecycle::expire(tree, c, now)?,
        Command::CompleteMission(c) => lifecycle::complete_mission(tree, &cmd.actor, c, now)?,
        Command::Narrow(c) => amend::narrow(tree, &cmd.actor, c, now)?,
        Command::Renew(c) => amend::renew(tree, &cmd.actor, c, now)?,
        Command::BlockAgent(_)
        | Command::UnblockAgent(_)
        | Command::BlockPrincipal(_)
        | Command::UnblockPrincipal(_)
        | Command::RegisterKey(_)
        | Command::RevokeKey(_)
        | Command::RotateKey(_) => unreachable_registry(),
        Command::ResolveQuarantine(c) => quarantine::resolve(tree, &cmd.actor, c)?,
        Command::RequestApproval(c) => approval::request(tree, &cmd.actor, c, now)?,
        Command::Approve(c) => approval::decide_approval(tree, &cmd.actor, c, true, now)?,
        Command::DenyApproval(c) => approval::decide_approval(tree, &cmd.actor, c, false, now)?,
        Command::UseApproval(c) => approval::use_approval(tree, &cmd.actor, c, now)?,
    };
    match &cmd.command {
        Command::Issue(c) if facts.principal_blocked => {
            return Err(DomainError::PrincipalBlocked {
                principal: c.principal.clone(),
            })
        }
        Command::Issue(c) if facts.grantee_blocked => {
            return Err(DomainError::AgentBlocked {
                agent: c.grantee.clone(),
            })
        }
        Command::Delegate(c) if facts.grantee_blocked => {
            return Err(DomainError::AgentBlocked {
                agent: c.grantee.clone(),
            })
        }
        _ => {}
    }
    Ok(envelop(tree, cmd, facts, now, bodies, None))
}

/// Wraps bodies in envelopes: sequence numbers and the hash chain continue
/// from the tree's head. (No copy of the tree: seq and prev_hash are all an
/// event needs from the ones before it in the same commit.)
fn envelop(
    tree: &Tree,
    cmd: &CommandEnvelope,
    facts: &Facts,
    now: DateTime<Utc>,
    bodies: Vec<EventBody>,
    on_behalf_of: Option<PrincipalId>,
) -> Vec<Event> {
    let digest = cmd.digest();
    let mut events: Vec<Event> = Vec::with_capacity(bodies.len());
    let mut principal = on_behalf_of.or_else(|| tree.principal.clone());
    for (i, body) in bodies.into_iter().enumerate() {
        if principal.is_none() {
            if let EventBody::MandateIssued(e) = &body {
                principal = Some(e.principal.clone());
            }
        }
        // Every command but `issue` needs an existing tree (checked before
        // any body is produced), `issue` names its principal, and registry
        // commands name their administrator.
        let on_behalf_of = principal.clone().unwrap_or_else(|| unreachable_principal());
        let (seq, prev_hash) = match events.last() {
            Some(prev) => (prev.seq + 1, Some(prev.hash())),
            None => (tree.version + 1, tree.head_hash.clone()),
        };
        events.push(Event {
            event_id: EventId::for_command(&tree.tenant, cmd.command_id, i),
            tenant: tree.tenant.clone(),
            tree: tree.id,
            seq,
            schema_version: SCHEMA_VERSION,
            time: now,
            actor: cmd.actor.clone(),
            on_behalf_of,
            command_id: cmd.command_id,
            command_digest: digest.clone(),
            correlation_id: cmd.correlation_id.clone(),
            prev_hash,
            signature: facts.signature.clone(),
            body,
        });
    }
    events
}

#[cold]
fn unreachable_registry() -> ! {
    // `registry::decide` answers every registry command before this match.
    unreachable!("a registry command outside the registry")
}

#[cold]
fn unreachable_principal() -> ! {
    // The per-command functions refuse every command on a tree without a root
    // (`TreeNotFound`) before any body is produced.
    unreachable!("an event for a tree without a principal")
}

/// The mandate a command targets, refusing commands on an absent tree.
pub(crate) fn target(tree: &Tree, mandate: super::ids::MandateId) -> Result<&Mandate, DomainError> {
    if !tree.exists() {
        return Err(DomainError::MandateNotFound { mandate });
    }
    tree.get(mandate)
}

/// Terminal is absorbing: refuses any change to a mandate that is effectively
/// terminal, naming the ancestor that ended it.
pub(crate) fn refuse_terminal(
    tree: &Tree,
    m: &Mandate,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let eff = tree.effective(m.id, now)?;
    if eff.status.is_terminal() {
        return Err(DomainError::Terminal {
            mandate: m.id,
            status: eff.status,
            // `cause` names an *ancestor* (see `DomainError::Terminal`): `None`
            // when the mandate ended on its own, as `expire` already reports.
            cause: eff.cause.map(|c| c.mandate).filter(|c| *c != m.id),
        });
    }
    Ok(())
}

/// The mandate a change targets, once the change may be made at all: the
/// mandate is in the tree, `actor` has authority over it
/// ([`require_authority`]: `grantee_may` lets its own grantee act too), and
/// it is not effectively terminal ([`refuse_terminal`]). In that order, so a
/// refusal names the first rule broken.
pub(crate) fn changeable<'t>(
    tree: &'t Tree,
    actor: &Actor,
    mandate: super::ids::MandateId,
    verb: &'static str,
    grantee_may: bool,
    now: DateTime<Utc>,
) -> Result<&'t Mandate, DomainError> {
    let m = target(tree, mandate)?;
    require_authority(tree, m, actor, verb, grantee_may)?;
    refuse_terminal(tree, m, now)?;
    Ok(m)
}

/// Invariant 9: only authority above a mandate changes it — its grantor, the
/// holders of its ancestors, the principal, a supervisor named on its chain,
/// or a tenant administrator. Its own grantee is *not* above it.
pub(crate) fn has_authority_above(tree: &Tree, m: &Mandate, actor: &Actor) -> bool {
    authority_rank(tree, m, actor).is_some()
}

/// How high `actor`'s authority over `m` reaches, or `None` if it has none
/// from above `m`. Smaller ranks are higher:
///
/// - 0: a tenant administrator;
/// - 2k + 2: the grantor of the chain's link k (the principal for the root,
///   k = 0; the holder of link k − 1 otherwise);
/// - 2k + 3: a supervisor named on link k, who watches that link's holder
///   and everything below, and so ranks just below the grantor who named it.
///
/// A supervisor named on link k counts only if it holds no mandate at or
/// below link k: an agent never gains authority over its own mandate, or
/// over one above it, by being named its supervisor. `issue` and `delegate`
/// refuse such names; checking again here keeps trees written before that
/// rule safe. The check looks at the tree's other mandates only when the
/// actor is a named supervisor on the chain.
pub(crate) fn authority_rank(tree: &Tree, m: &Mandate, actor: &Actor) -> Option<usize> {
    match actor {
        Actor::Admin(_) => Some(0),
        Actor::Principal(p) => (tree.principal.as_ref() == Some(p)).then_some(2),
        Actor::System(_) => None,
        Actor::Agent(a) => {
            let chain = tree.chain(m.id);
            let above = &chain[..chain.len().saturating_sub(1)];
            // The holder of link i is the grantor of link i + 1.
            let as_holder = above
                .iter()
                .position(|link| &link.grantee == a)
                .map(|i| 2 * (i + 1) + 2);
            let as_supervisor = chain
                .iter()
                .enumerate()
                .find(|(_, link)| link.supervisors.contains(a) && !holds_at_or_below(tree, a, link))
                .map(|(k, _)| 2 * k + 3);
            match (as_holder, as_supervisor) {
                (Some(h), Some(s)) => Some(h.min(s)),
                (h, s) => h.or(s),
            }
        }
    }
}

/// Does `actor` hold authority over `m` as one who could have granted it: an
/// administrator, the tree's principal, or the holder of a link above `m`?
/// Supervisors watch and restrain; they do not grant, so a change that gives
/// a mandate more than its grantor gave (a later `not_after`) needs this.
pub(crate) fn grants_above(tree: &Tree, m: &Mandate, actor: &Actor) -> bool {
    match actor {
        Actor::Admin(_) => true,
        Actor::Principal(p) => tree.principal.as_ref() == Some(p),
        Actor::System(_) => false,
        Actor::Agent(a) => {
            let chain = tree.chain(m.id);
            chain[..chain.len().saturating_sub(1)]
                .iter()
                .any(|link| &link.grantee == a)
        }
    }
}

/// Does `agent` hold `top` or any mandate below it?
fn holds_at_or_below(tree: &Tree, agent: &super::ids::AgentId, top: &Mandate) -> bool {
    if &top.grantee == agent {
        return true;
    }
    tree.mandates
        .values()
        .filter(|n| &n.grantee == agent)
        .any(|n| {
            let mut cur = n.parent.and_then(|p| tree.mandates.get(&p));
            while let Some(link) = cur {
                if link.id == top.id {
                    return true;
                }
                cur = link.parent.and_then(|p| tree.mandates.get(&p));
            }
            false
        })
}

/// Refuses an actor without authority above `m` for `verb`.
pub(crate) fn require_authority(
    tree: &Tree,
    m: &Mandate,
    actor: &Actor,
    verb: &'static str,
    grantee_may: bool,
) -> Result<(), DomainError> {
    let own_grantee = matches!(actor, Actor::Agent(a) if *a == m.grantee);
    if has_authority_above(tree, m, actor) || (grantee_may && own_grantee) {
        Ok(())
    } else {
        Err(DomainError::NotAuthorized {
            mandate: m.id,
            actor: actor.to_string(),
            verb,
        })
    }
}
