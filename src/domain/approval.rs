//! Step-up approvals: an action that a chain's `step_up` patterns cover is
//! never allowed by a check alone. The mandate's grantee requests an
//! approval for exactly one (action, resource, hash of parameters); the
//! approver (the root's principal) grants or denies it; the grantee then
//! uses it once, and the engine writes that use as an event of the tree, so
//! a second use on any instance is refused.
//!
//! Who approves: the principal on whose behalf the tree acts, and no one
//! else. Supervisors are agents, and step-up asks for a person; tenant
//! administrators change mandates but do not approve their actions.

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::authorize::{authorize, DenyReason, Outcome};
use super::decide::{target, Ruling};
use super::error::DomainError;
use super::event::{ApprovalDecided, ApprovalRequested, ApprovalUsed, EventBody};
use super::ids::{AgentId, MandateId};
use super::model::{check_text, Actor, Tree};

/// How long an approval stays usable when the request names no lifetime.
pub const DEFAULT_APPROVAL_TTL_SECS: u32 = 15 * 60;
/// The longest lifetime a request may ask for (one day).
pub const MAX_APPROVAL_TTL_SECS: u32 = 24 * 60 * 60;

/// The JSON Schema pattern of a parameters hash: lowercase hex SHA-256.
pub(crate) const PARAMS_HASH_PATTERN: &str = r"^[0-9a-f]{64}$";

/// The JSON Schema pattern of a new approval's id: a version 7 UUID.
pub(crate) const APPROVAL_ID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Where an approval stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApprovalState {
    /// Requested, not yet decided.
    Pending,
    /// Granted, not yet used.
    Granted { by: Actor, at: DateTime<Utc> },
    /// Denied: it can never be used.
    Denied {
        by: Actor,
        at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Used once: it can never be used again.
    Used { by: Actor, at: DateTime<Utc> },
}

/// One approval of a tree, as its events fold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Approval {
    pub id: Uuid,
    pub mandate: MandateId,
    pub action: String,
    pub resource: String,
    /// Lowercase hex SHA-256 of the action's parameters (see [`params_hash`]).
    pub params_hash: String,
    pub requested_by: AgentId,
    pub requested_at: DateTime<Utc>,
    /// Unusable from this moment on.
    pub expires_at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: ApprovalState,
    /// Per-tree sequence of the last event about it.
    pub seq: u64,
}

/// The grantee asks for an approval of one action on one resource with one
/// set of parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestApproval {
    pub mandate: MandateId,
    /// The approval's id, chosen by the requester: a time-ordered (v7) UUID.
    #[schemars(extend("pattern" = APPROVAL_ID_PATTERN))]
    pub approval: Uuid,
    pub action: String,
    pub resource: String,
    /// Lowercase hex SHA-256 of the canonical JSON of the parameters
    /// (object keys sorted, no whitespace, non-ASCII as is; numbers as
    /// sent: an integer as an integer, any number with a fraction or an
    /// exponent as the shortest float text, `1.0` not `1`).
    #[schemars(regex(pattern = PARAMS_HASH_PATTERN))]
    pub params_hash: String,
    /// Lifetime in seconds (default 900, at most 86400); never past the
    /// chain's earliest `not_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// The approver's decision on a pending approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideApproval {
    pub mandate: MandateId,
    pub approval: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// The grantee uses a granted approval for exactly the request it was given
/// for. Written as an `approval_used` event: the answer to this command is
/// the only allow a step-up action gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UseApproval {
    pub mandate: MandateId,
    pub approval: Uuid,
    pub action: String,
    pub resource: String,
    #[schemars(regex(pattern = PARAMS_HASH_PATTERN))]
    pub params_hash: String,
}

/// Lowercase hex SHA-256 of the canonical JSON (object keys sorted, no
/// whitespace, non-ASCII as is) of an action's parameters: what an approval
/// is bound to.
///
/// Numbers hash as sent, not by value: an integer (no fraction, no
/// exponent) is written as one, any other number as the shortest text that
/// reads back as the same double, with `.0` when whole. So `1` and `1.0`
/// (or `1e0`) hash apart: an approval binds the request the tool will
/// receive, and a tool may take an integer and a float differently. A
/// caller hashing its own parameters writes them the same way.
pub fn params_hash(params: &serde_json::Value) -> String {
    // `Value`'s map is a BTreeMap: keys come out sorted.
    super::event::hex_sha256(&serde_json::to_vec(params).expect("values serialize"))
}

/// Checks a parameters hash's form.
pub(crate) fn check_params_hash(value: &str) -> Result<(), DomainError> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(DomainError::InvalidField {
            field: "params_hash",
            reason: format!(
                "{:?} is not 64 lowercase hex digits (a SHA-256)",
                super::ids::truncate_for_error(value)
            ),
        })
    }
}

/// Checks an approval id's form: a version 7 UUID.
pub(crate) fn check_approval_id(id: &Uuid) -> Result<(), DomainError> {
    if id.get_version_num() == 7 {
        Ok(())
    } else {
        Err(DomainError::InvalidId {
            field: "approval",
            value: id.to_string(),
            reason: "must be a time-ordered (version 7) UUID".into(),
        })
    }
}

/// Bounds serde does not check.
pub(crate) fn validate_request(c: &RequestApproval) -> Result<(), DomainError> {
    check_approval_id(&c.approval)?;
    check_params_hash(&c.params_hash)?;
    if let Some(t) = c.ttl_seconds {
        if t == 0 || t > MAX_APPROVAL_TTL_SECS {
            return Err(DomainError::InvalidField {
                field: "ttl_seconds",
                reason: format!("is {t}, must be 1 to {MAX_APPROVAL_TTL_SECS}"),
            });
        }
    }
    if let Some(r) = &c.reason {
        check_text("reason", r, false)?;
    }
    Ok(())
}

pub(crate) fn validate_decision(c: &DecideApproval) -> Result<(), DomainError> {
    if let Some(r) = &c.reason {
        check_text("reason", r, false)?;
    }
    Ok(())
}

pub(crate) fn validate_use(c: &UseApproval) -> Result<(), DomainError> {
    check_params_hash(&c.params_hash)
}

/// The grantee's own mandate, refusing anyone else.
fn own_mandate(
    tree: &Tree,
    actor: &Actor,
    mandate: MandateId,
    verb: &'static str,
) -> Result<(), DomainError> {
    let m = target(tree, mandate)?;
    match actor {
        Actor::Agent(a) if *a == m.grantee => Ok(()),
        _ => Err(DomainError::NotAuthorized {
            mandate,
            actor: actor.to_string(),
            verb,
        }),
    }
}

/// What a check of the request says, as a refusal unless it is
/// `needs_approval`: an approval is only for a step-up action that is
/// otherwise allowed, now.
fn require_step_up(
    tree: &Tree,
    mandate: MandateId,
    action: &str,
    resource: &str,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let d = authorize(tree, mandate, action, resource, now);
    match d.outcome {
        Outcome::NeedsApproval => Ok(()),
        Outcome::Allow => Err(DomainError::ApprovalNotRequired {
            mandate,
            action: action.to_string(),
        }),
        Outcome::Deny => Err(match d.reason {
            Some(DenyReason::NotActive { status, cause }) => DomainError::NotActive {
                mandate,
                status,
                cause: cause.map(|c| c.mandate).filter(|c| *c != mandate),
            },
            Some(DenyReason::OutOfScope { mandate: link }) => DomainError::OutOfScope {
                mandate: link,
                action: action.to_string(),
                resource: resource.to_string(),
            },
            Some(DenyReason::InvalidRequest { reason }) => DomainError::InvalidField {
                field: "action",
                reason,
            },
            Some(DenyReason::Quarantined { tree, position }) => {
                DomainError::Quarantined { tree, position }
            }
            _ => DomainError::MandateNotFound { mandate },
        }),
    }
}

/// An approval of the tree, or `unknown_approval`.
fn find(tree: &Tree, mandate: MandateId, id: Uuid) -> Result<&Approval, DomainError> {
    tree.approvals
        .get(&id)
        .filter(|a| a.mandate == mandate)
        .ok_or(DomainError::UnknownApproval { approval: id })
}

/// An approval still pending at `now` (undecided, unexpired) for the same
/// mandate, action, resource and parameters hash as `c`, the earliest
/// requested if several: what a repeated request answers with instead of
/// writing another. Its lifetime and reason are the first request's.
pub(crate) fn pending_equal<'a>(
    tree: &'a Tree,
    c: &RequestApproval,
    now: DateTime<Utc>,
) -> Option<&'a Approval> {
    tree.approvals
        .values()
        .filter(|a| {
            a.state == ApprovalState::Pending
                && now < a.expires_at
                && a.mandate == c.mandate
                && a.action == c.action
                && a.resource == c.resource
                && a.params_hash == c.params_hash
        })
        .min_by_key(|a| (a.requested_at, a.id))
}

/// `request_approval`: by the mandate's grantee, for a request its chain
/// allows but for step-up. Expires after its lifetime, and never after the
/// chain's earliest `not_after`. While an equal request is still pending
/// ([`pending_equal`]) nothing is written: the engine answers with that one.
pub(crate) fn request(
    tree: &Tree,
    actor: &Actor,
    c: &RequestApproval,
    now: DateTime<Utc>,
) -> Ruling {
    own_mandate(tree, actor, c.mandate, "request an approval under")?;
    if tree.approvals.contains_key(&c.approval) {
        return Err(DomainError::ApprovalExists {
            approval: c.approval,
        });
    }
    require_step_up(tree, c.mandate, &c.action, &c.resource, now)?;
    if pending_equal(tree, c, now).is_some() {
        return Ok(Vec::new());
    }
    let ttl = c.ttl_seconds.unwrap_or(DEFAULT_APPROVAL_TTL_SECS);
    let chain_end = tree
        .chain(c.mandate)
        .iter()
        .map(|m| m.not_after)
        .min()
        .unwrap_or(now);
    let expires_at = (now + Duration::seconds(i64::from(ttl))).min(chain_end);
    let Actor::Agent(requested_by) = actor else {
        unreachable!("own_mandate admits only the grantee agent")
    };
    Ok(vec![EventBody::ApprovalRequested(Box::new(
        ApprovalRequested {
            approval: c.approval,
            mandate: c.mandate,
            action: c.action.clone(),
            resource: c.resource.clone(),
            params_hash: c.params_hash.clone(),
            requested_by: requested_by.clone(),
            expires_at,
            reason: c.reason.clone(),
        },
    ))])
}

/// `approve` and `deny_approval`: by the tree's principal, on a pending,
/// unexpired approval of a mandate that is still effectively active.
pub(crate) fn decide_approval(
    tree: &Tree,
    actor: &Actor,
    c: &DecideApproval,
    grant: bool,
    now: DateTime<Utc>,
) -> Ruling {
    let verb = if grant {
        "approve"
    } else {
        "deny approvals of"
    };
    let m = target(tree, c.mandate)?;
    let approver = matches!(actor, Actor::Principal(p) if tree.principal.as_ref() == Some(p));
    if !approver {
        return Err(DomainError::NotAuthorized {
            mandate: m.id,
            actor: actor.to_string(),
            verb,
        });
    }
    let a = find(tree, c.mandate, c.approval)?;
    refuse_unusable(a, now)?;
    if grant {
        // A grant is only worth giving while the request still stands.
        require_step_up(tree, a.mandate, &a.action, &a.resource, now)?;
    }
    let body = ApprovalDecided {
        approval: a.id,
        mandate: a.mandate,
        reason: c.reason.clone(),
    };
    Ok(vec![if grant {
        EventBody::ApprovalGranted(body)
    } else {
        EventBody::ApprovalDenied(body)
    }])
}

/// Refuses an approval that can no longer be decided: decided already,
/// or expired.
fn refuse_unusable(a: &Approval, now: DateTime<Utc>) -> Result<(), DomainError> {
    match &a.state {
        ApprovalState::Pending => {}
        ApprovalState::Granted { .. } => {
            return Err(DomainError::ApprovalDecided {
                approval: a.id,
                state: "granted",
            })
        }
        ApprovalState::Denied { .. } => return Err(DomainError::ApprovalDenied { approval: a.id }),
        ApprovalState::Used { .. } => return Err(DomainError::ApprovalUsed { approval: a.id }),
    }
    if now >= a.expires_at {
        return Err(DomainError::ApprovalExpired {
            approval: a.id,
            expires_at: a.expires_at,
        });
    }
    Ok(())
}

/// `use_approval`: by the mandate's grantee, once, for exactly the request
/// the approval was granted for, while the request still needs it (the
/// mandate effectively active, the action in scope and covered by step-up).
pub(crate) fn use_approval(
    tree: &Tree,
    actor: &Actor,
    c: &UseApproval,
    now: DateTime<Utc>,
) -> Ruling {
    own_mandate(tree, actor, c.mandate, "use an approval under")?;
    let a = find(tree, c.mandate, c.approval)?;
    match &a.state {
        ApprovalState::Granted { .. } => {}
        ApprovalState::Pending => return Err(DomainError::ApprovalPending { approval: a.id }),
        ApprovalState::Denied { .. } => return Err(DomainError::ApprovalDenied { approval: a.id }),
        ApprovalState::Used { .. } => return Err(DomainError::ApprovalUsed { approval: a.id }),
    }
    if a.action != c.action || a.resource != c.resource || a.params_hash != c.params_hash {
        return Err(DomainError::ApprovalMismatch {
            approval: a.id,
            field: if a.action != c.action {
                "action"
            } else if a.resource != c.resource {
                "resource"
            } else {
                "params_hash"
            },
        });
    }
    if now >= a.expires_at {
        return Err(DomainError::ApprovalExpired {
            approval: a.id,
            expires_at: a.expires_at,
        });
    }
    require_step_up(tree, c.mandate, &c.action, &c.resource, now)?;
    Ok(vec![EventBody::ApprovalUsed(ApprovalUsed {
        approval: a.id,
        mandate: a.mandate,
    })])
}

/// Folds an approval event into the tree (see [`super::event::apply`]).
pub(crate) fn fold(tree: &mut Tree, seq: u64, at: DateTime<Utc>, by: &Actor, body: &EventBody) {
    match body {
        EventBody::ApprovalRequested(r) => {
            if tree.approvals.contains_key(&r.approval) {
                return;
            }
            tree.approvals.insert(
                r.approval,
                Approval {
                    id: r.approval,
                    mandate: r.mandate,
                    action: r.action.clone(),
                    resource: r.resource.clone(),
                    params_hash: r.params_hash.clone(),
                    requested_by: r.requested_by.clone(),
                    requested_at: at,
                    expires_at: r.expires_at,
                    state: ApprovalState::Pending,
                    seq,
                },
            );
        }
        EventBody::ApprovalGranted(d) | EventBody::ApprovalDenied(d) => {
            if let Some(a) = tree
                .approvals
                .get_mut(&d.approval)
                .filter(|a| a.state == ApprovalState::Pending)
            {
                a.state = if matches!(body, EventBody::ApprovalGranted(_)) {
                    ApprovalState::Granted { by: by.clone(), at }
                } else {
                    ApprovalState::Denied {
                        by: by.clone(),
                        at,
                        reason: d.reason.clone(),
                    }
                };
                a.seq = seq;
            }
        }
        EventBody::ApprovalUsed(u) => {
            if let Some(a) = tree
                .approvals
                .get_mut(&u.approval)
                .filter(|a| matches!(a.state, ApprovalState::Granted { .. }))
            {
                a.state = ApprovalState::Used { by: by.clone(), at };
                a.seq = seq;
            }
        }
        _ => {}
    }
}
