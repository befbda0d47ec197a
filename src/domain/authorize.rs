//! `authorize`: may this agent do this action on this resource now, under
//! this mandate? Denies by default; every denial carries its reason, and every
//! decision carries the authority chain back to the human grant.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::effective::{Cause, Effective};
use super::ids::{AgentId, MandateId, PrincipalId, TenantId, TreeId};
use super::model::{Grantor, Mandate, Tree};
use super::scope::{is_concrete_request, ActionPattern, ResourcePattern, Scope, ScopeMatcher};
use super::status::Status;

/// The answer to a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    /// In scope, but the action needs step-up approval first. Not an allow.
    NeedsApproval,
}

/// Why a check was denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyReason {
    /// No such mandate (in this tenant).
    UnknownMandate,
    /// The mandate is not effectively active (paused or terminal); the cause
    /// names which mandate on the chain and how.
    NotActive {
        status: Status,
        cause: Option<Cause>,
    },
    /// Some link of the chain does not allow this action on this resource.
    OutOfScope { mandate: MandateId },
    /// The request itself is not a concrete action and resource.
    InvalidRequest { reason: String },
    /// A guard could not confirm the state (it has not heard the engine
    /// within its lease): it fails closed.
    Unverified { reason: String },
    /// The tree's stream holds a corrupt record at `position`: it grants
    /// nothing until an administrator restores or ends it.
    Quarantined { tree: TreeId, position: u64 },
    /// The tree holds an event of a schema version newer than the answering
    /// instance reads; a newer instance can answer. Not a quarantine.
    UnsupportedVersion {
        tree: TreeId,
        position: u64,
        version: u64,
        supported: u32,
    },
    /// The event log lost acknowledged records of the tree (its head there
    /// is older than the one the projection recorded): it grants nothing
    /// until an operator accepts the loss.
    LogWentBackwards {
        tree: TreeId,
        recorded: u64,
        found: u64,
    },
}

/// One link of the authority chain, root first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChainLink {
    pub mandate: MandateId,
    pub grantor: Grantor,
    pub grantee: AgentId,
    pub on_behalf_of: PrincipalId,
    pub scope: Scope,
    #[serde(serialize_with = "rfc3339::serialize")]
    pub not_after: DateTime<Utc>,
    /// The link's own status.
    pub status: Status,
}

impl From<&Mandate> for ChainLink {
    fn from(m: &Mandate) -> Self {
        Self {
            mandate: m.id,
            grantor: m.grantor.clone(),
            grantee: m.grantee.clone(),
            on_behalf_of: m.principal.clone(),
            scope: m.scope.clone(),
            not_after: m.not_after,
            status: m.status,
        }
    }
}

/// A check's decision with everything an auditor needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
    /// Step-up patterns that matched, for `needs_approval`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval: Vec<ActionPattern>,
    pub tenant: TenantId,
    /// The mandate's tree; absent when the mandate is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeId>,
    pub mandate: MandateId,
    pub action: String,
    pub resource: String,
    /// The moment the decision is for.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<Effective>,
    /// Root → mandate; empty when the mandate is unknown.
    // Shared, so that many decisions on one chain (a guard's checks) do not
    // copy it; on the wire it is the plain list.
    #[serde(with = "shared_chain")]
    #[schemars(with = "Vec<ChainLink>")]
    pub chain: Arc<[ChainLink]>,
}

/// A moment written as chrono writes it (RFC 3339, `Z`, the fraction of a
/// second as its precision needs), in one string: chrono's own `Serialize`
/// goes through the formatter a character at a time, and a decision writes
/// one moment per link of its chain.
pub(crate) mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    #[cfg(test)]
    mod tests {
        use chrono::{DateTime, TimeZone, Utc};
        use proptest::prelude::*;

        #[derive(serde::Serialize)]
        struct Ours(#[serde(serialize_with = "super::serialize")] DateTime<Utc>);

        proptest! {
            /// Byte for byte what chrono's own `Serialize` writes, at every
            /// precision of the fraction (none, milli, micro, nano).
            #[test]
            fn writes_what_chrono_writes(
                secs in -62_135_596_800i64..253_402_300_799,
                nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|m| m * 1_000_000),
                    (0u32..1_000_000).prop_map(|u| u * 1000), 0u32..1_000_000_000],
            ) {
                let t = Utc.timestamp_opt(secs, nanos).single().expect("in range");
                prop_assert_eq!(
                    serde_json::to_string(&Ours(t)).unwrap(),
                    serde_json::to_string(&t).unwrap()
                );
            }
        }
    }
}

/// A shared chain reads and writes as the plain list it is.
mod shared_chain {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ChainLink;

    pub(super) fn serialize<S: Serializer>(
        chain: &Arc<[ChainLink]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        chain[..].serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<[ChainLink]>, D::Error> {
        Vec::<ChainLink>::deserialize(d).map(Arc::from)
    }
}

impl Decision {
    /// True only for a plain allow.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }
}

/// Parses a concrete request (no wildcards).
pub fn parse_request(
    action: &str,
    resource: &str,
) -> Result<(ActionPattern, ResourcePattern), String> {
    let a = ActionPattern::parse(action).map_err(|e| e.to_string())?;
    let r = ResourcePattern::parse(resource).map_err(|e| e.to_string())?;
    if !a.is_concrete() || !r.is_concrete() {
        return Err(format!(
            "a checked request must be concrete: action {action:?} on resource {resource:?} contains a wildcard"
        ));
    }
    Ok((a, r))
}

/// Decides whether `action` on `resource` is allowed under `mandate` at `now`.
///
/// Allowed only if the mandate is effectively active at `now` (no link
/// terminal, paused or past its `not_after`) and *every* link of the chain
/// allows the request, so a narrowed ancestor narrows every descendant. If a
/// step-up pattern on any link matches the action, the answer is
/// `needs_approval`, never `allow`.
pub fn authorize(
    tree: &Tree,
    mandate: MandateId,
    action: &str,
    resource: &str,
    now: DateTime<Utc>,
) -> Decision {
    let chain = tree.chain(mandate);
    let mut d = Decision {
        outcome: Outcome::Deny,
        reason: None,
        approval: Vec::new(),
        tenant: tree.tenant.clone(),
        tree: Some(tree.id),
        mandate,
        action: action.to_string(),
        resource: resource.to_string(),
        at: now,
        effective: None,
        chain: chain.iter().map(|m| ChainLink::from(*m)).collect(),
    };
    let effective = match tree.effective(mandate, now) {
        Ok(e) => e,
        Err(_) => {
            d.reason = Some(DenyReason::UnknownMandate);
            d.tree = None;
            return d;
        }
    };
    d.effective = Some(effective.clone());
    if let Some(q) = &tree.quarantine {
        d.reason = Some(DenyReason::Quarantined {
            tree: tree.id,
            position: q.position,
        });
        return d;
    }
    let (a, r) = match parse_request(action, resource) {
        Ok(x) => x,
        Err(reason) => {
            d.reason = Some(DenyReason::InvalidRequest { reason });
            return d;
        }
    };
    if !effective.is_active() {
        d.reason = Some(DenyReason::NotActive {
            status: effective.status,
            cause: effective.cause,
        });
        return d;
    }
    if let Some(link) = chain.iter().find(|m| !m.scope.allows(&a, &r)) {
        d.reason = Some(DenyReason::OutOfScope { mandate: link.id });
        return d;
    }
    in_scope(
        d,
        chain
            .iter()
            .flat_map(|m| m.step_up.iter())
            .filter(|p| p.covers(&a))
            .cloned()
            .collect(),
    )
}

/// A request within every link's scope: allowed, or, where step-up patterns
/// cover it, allowed once those approve it.
fn in_scope(mut d: Decision, approval: Vec<ActionPattern>) -> Decision {
    d.outcome = if approval.is_empty() {
        Outcome::Allow
    } else {
        Outcome::NeedsApproval
    };
    d.approval = approval;
    d
}

/// A mandate's chain made ready for many checks, as a guard holds it: what
/// [`authorize`] works out on every call that depends on neither the request
/// nor the clock (the chain, its links, its effective status) is worked out
/// once, when the state changes.
///
/// The clock matters only through the chain's earliest `not_after`: before
/// it, no link has expired by the clock, so the effective status is the one
/// worked out here; from it on, the mandate is expired. While the chain is
/// effectively active, a check is then a clock comparison and pattern
/// matching on the request as written, with no parse and no copy of the
/// chain. Every other case (unknown mandate, quarantined tree, not active,
/// a request that is not concrete) is answered by [`authorize`] itself.
/// Either way the answer is exactly [`authorize`]'s on the same tree.
#[derive(Clone, Debug)]
pub struct PreparedChain {
    tree: Tree,
    mandate: MandateId,
    active: Option<ActiveChain>,
}

/// What a check needs while the chain is effectively active.
#[derive(Clone, Debug)]
struct ActiveChain {
    /// The chain's earliest `not_after`: active strictly before it.
    until: DateTime<Utc>,
    /// The effective status before `until`.
    effective: Effective,
    /// Root → mandate, shared by every decision.
    links: Arc<[ChainLink]>,
    /// Each link's scope, root first, ready to match requests as written.
    scopes: Vec<ScopeMatcher>,
    /// The chain's step-up patterns, root first.
    step_up: Vec<ActionPattern>,
}

impl PreparedChain {
    /// Works out what every check of `mandate` on `tree` needs.
    pub fn new(tree: Tree, mandate: MandateId) -> Self {
        let active = ActiveChain::of(&tree, mandate);
        Self {
            tree,
            mandate,
            active,
        }
    }

    /// The tree held.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The mandate checked.
    pub fn mandate(&self) -> MandateId {
        self.mandate
    }

    /// Exactly `authorize(self.tree(), self.mandate(), action, resource, now)`.
    pub fn authorize(&self, action: &str, resource: &str, now: DateTime<Utc>) -> Decision {
        let Some(active) = self
            .active
            .as_ref()
            .filter(|a| now < a.until && is_concrete_request(action, resource))
        else {
            return authorize(&self.tree, self.mandate, action, resource, now);
        };
        let mut d = Decision {
            outcome: Outcome::Deny,
            reason: None,
            approval: Vec::new(),
            tenant: self.tree.tenant.clone(),
            tree: Some(self.tree.id),
            mandate: self.mandate,
            action: action.to_string(),
            resource: resource.to_string(),
            at: now,
            effective: Some(active.effective.clone()),
            chain: active.links.clone(),
        };
        if let Some(link) = active.first_out_of_scope(action, resource) {
            d.reason = Some(DenyReason::OutOfScope {
                mandate: link.mandate,
            });
            return d;
        }
        in_scope(
            d,
            active
                .step_up
                .iter()
                .filter(|p| p.covers_concrete(action))
                .cloned()
                .collect(),
        )
    }

    /// Exactly `self.authorize(action, resource, now).is_allowed()`, without
    /// building the decision: no allocation at all.
    pub fn allows(&self, action: &str, resource: &str, now: DateTime<Utc>) -> bool {
        // Without an active chain, `authorize` never allows: the mandate is
        // unknown, its tree quarantined, or it is not effectively active
        // before its earliest `not_after` (and expired from it on).
        self.active.as_ref().is_some_and(|a| {
            now < a.until
                && is_concrete_request(action, resource)
                && a.first_out_of_scope(action, resource).is_none()
                && !a.step_up.iter().any(|p| p.covers_concrete(action))
        })
    }
}

impl ActiveChain {
    /// The chain's check data, when it is effectively active at some moment
    /// (before its earliest `not_after`) in a tree that is not quarantined.
    fn of(tree: &Tree, mandate: MandateId) -> Option<Self> {
        if tree.quarantine.is_some() {
            return None;
        }
        let chain = tree.chain(mandate);
        let until = chain.iter().map(|m| m.not_after).min()?;
        // The last moment before `until`: no link has expired by the clock.
        let before = until.checked_sub_signed(chrono::Duration::nanoseconds(1))?;
        let effective = tree.effective(mandate, before).ok()?;
        if !effective.is_active() {
            return None;
        }
        Some(Self {
            until,
            effective,
            links: chain.iter().map(|m| ChainLink::from(*m)).collect(),
            scopes: chain.iter().map(|m| m.scope.matcher()).collect(),
            step_up: chain
                .iter()
                .flat_map(|m| m.step_up.iter())
                .cloned()
                .collect(),
        })
    }

    /// The first link, root first, whose scope does not allow the request.
    fn first_out_of_scope(&self, action: &str, resource: &str) -> Option<&ChainLink> {
        self.scopes
            .iter()
            .position(|s| !s.allows(action, resource))
            .map(|i| &self.links[i])
    }
}
