//! The state a tree's events fold into: actors, missions, mandates and the tree.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::DomainError;
use super::ids::{
    truncate_for_error, AgentId, CommandId, MandateId, PrincipalId, TenantId, TreeId,
};
use super::scope::{ActionPattern, Scope};
use super::status::Status;

/// Longest free text (purpose, reason), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Longest mission reference, in bytes.
pub const MAX_MISSION_REF_LEN: usize = 128;
/// Most supervisors or step-up patterns on one mandate.
pub const MAX_LIST_LEN: usize = 32;
/// Deepest delegation a root may allow.
pub const MAX_DEPTH: u32 = 32;

/// Who did something. The engine fills it from the authenticated connection
/// where the tenant requires it; otherwise it is the caller's declaration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    /// A human or system principal acting for itself.
    Principal(PrincipalId),
    /// An agent.
    Agent(AgentId),
    /// A tenant administrator: may change any mandate of the tenant.
    Admin(PrincipalId),
    /// The engine itself (expiry scheduler, mission intake). Never accepted
    /// from the wire.
    System(AgentId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Principal(p) => write!(f, "principal {p}"),
            Actor::Agent(a) => write!(f, "agent {a}"),
            Actor::Admin(p) => write!(f, "admin {p}"),
            Actor::System(s) => write!(f, "system {s}"),
        }
    }
}

impl Actor {
    /// The engine's expiry scheduler.
    pub fn expiry() -> Self {
        Actor::System(AgentId::new("expiry").expect("static id is valid"))
    }
    /// The engine's mission-complete intake.
    pub fn mission_intake() -> Self {
        Actor::System(AgentId::new("mission-intake").expect("static id is valid"))
    }
    /// The engine's projector (it finds corrupt records).
    pub fn projector() -> Self {
        Actor::System(AgentId::new("projector").expect("static id is valid"))
    }
}

/// Who granted a mandate: the principal for a root, the parent's grantee for a
/// delegation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Grantor {
    Principal(PrincipalId),
    Agent(AgentId),
}

impl fmt::Display for Grantor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grantor::Principal(p) => write!(f, "principal {p}"),
            Grantor::Agent(a) => write!(f, "agent {a}"),
        }
    }
}

/// An external reference to the mission (e.g. `jira:FIN-42`) whose completion
/// ends it. One NATS subject token: letters, digits, `-_:`; 1 to 128 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct MissionRef(
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_:-]{1,128}$")
    )]
    String,
);

impl MissionRef {
    /// Validates and wraps a mission reference.
    pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= MAX_MISSION_REF_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'));
        if ok {
            Ok(Self(value))
        } else {
            Err(DomainError::InvalidId {
                field: "mission_ref",
                value: truncate_for_error(&value),
                reason: "must be 1 to 128 ASCII letters, digits, '-', '_' or ':'".into(),
            })
        }
    }
    /// The reference (a valid NATS subject token).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MissionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MissionRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MissionRef::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The purpose a root mandate serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mission {
    /// Human-readable purpose, 1 to 1024 bytes.
    #[schemars(length(min = 1, max = 1024))]
    pub purpose: String,
    /// External reference whose completion ends the mission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mission_ref: Option<MissionRef>,
}

/// Checks a free-text field's length.
pub(crate) fn check_text(
    field: &'static str,
    value: &str,
    required: bool,
) -> Result<(), DomainError> {
    if required && value.trim().is_empty() {
        return Err(DomainError::InvalidField {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > MAX_TEXT_LEN {
        return Err(DomainError::InvalidField {
            field,
            reason: format!("is {} bytes, at most {MAX_TEXT_LEN} allowed", value.len()),
        });
    }
    Ok(())
}

/// Why and when a mandate left `active` on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Transition {
    /// The status entered.
    pub status: Status,
    /// Per-tree sequence of the event that entered it.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub by: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One mandate's current state.
///
/// Invariants (enforced by `decide`, never by `apply`): a delegated scope never
/// exceeds its parent's, its `not_after` is never later than its parent's, its
/// remaining depth is strictly below its parent's; terminal is absorbing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Mandate {
    pub id: MandateId,
    pub tree: TreeId,
    pub tenant: TenantId,
    /// `None` for the root.
    pub parent: Option<MandateId>,
    pub grantor: Grantor,
    pub grantee: AgentId,
    /// On whose behalf: the principal of the root.
    pub principal: PrincipalId,
    pub scope: Scope,
    pub not_after: DateTime<Utc>,
    /// How many more levels this mandate may be delegated.
    pub depth: u32,
    /// Actions that need step-up approval under this mandate.
    pub step_up: Vec<ActionPattern>,
    /// Agents named to supervise this mandate and everything below it.
    pub supervisors: Vec<AgentId>,
    /// Its own status (see [`Tree::effective`] for the chain's).
    pub status: Status,
    pub issued_at: DateTime<Utc>,
    /// The last pause or terminal transition, when not active.
    pub transition: Option<Transition>,
    pub children: Vec<MandateId>,
}

/// A command a tree has applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppliedCommand {
    /// Per-tree sequence of its first event.
    pub seq: u64,
    /// [`crate::domain::CommandEnvelope::digest`] of the command.
    pub digest: String,
}

/// One delegation tree: the aggregate, and the unit of consistency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tree {
    pub tenant: TenantId,
    pub id: TreeId,
    /// Number of events applied (the last event's per-tree sequence).
    pub version: u64,
    /// SHA-256 (hex) of the last event's canonical encoding.
    pub head_hash: Option<String>,
    pub root: Option<MandateId>,
    pub mission: Option<Mission>,
    pub principal: Option<PrincipalId>,
    pub mandates: BTreeMap<MandateId, Mandate>,
    /// Command ids applied: a command id is applied at most once, and one
    /// reused for different content is refused.
    pub commands: BTreeMap<CommandId, AppliedCommand>,
    /// Set when a record of the tree's stream did not decode or broke its
    /// chain: the state is the last good one, and it grants nothing until an
    /// administrator restores or ends the tree (`quarantine_resolved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Tenant-level records; non-empty only in the tenant's registry (see
    /// [`TreeId::registry`]), which holds no mandate.
    #[serde(default, skip_serializing_if = "Registry::is_empty")]
    pub registry: Registry,
}

/// A tenant's registry: blocks that outlive any one tree. A blocked agent may
/// receive no new mandate and a blocked principal may grant no new root,
/// until an administrator lifts the block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Registry {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_agents: BTreeMap<AgentId, Block>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_principals: BTreeMap<PrincipalId, Block>,
}

impl Registry {
    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.blocked_agents.is_empty() && self.blocked_principals.is_empty()
    }
}

/// Who blocked an agent or principal, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Block {
    /// The administrator who wrote the block: the engine revokes, on this
    /// authority, a mandate that raced the block.
    pub by: Actor,
    /// Registry sequence of the block event.
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a tree is quarantined: the first bad record of its stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quarantine {
    /// Log position of the bad record (kept in the log as evidence).
    pub position: u64,
    /// What was wrong with it.
    pub reason: String,
}

impl Tree {
    /// The state of a tree with no events yet.
    pub fn empty(tenant: TenantId, id: TreeId) -> Self {
        Self {
            tenant,
            id,
            version: 0,
            head_hash: None,
            root: None,
            mission: None,
            principal: None,
            mandates: BTreeMap::new(),
            commands: BTreeMap::new(),
            registry: Registry::default(),
            quarantine: None,
        }
    }

    /// True when the tree has a root.
    pub fn exists(&self) -> bool {
        self.root.is_some()
    }

    /// A mandate of this tree.
    pub fn get(&self, mandate: MandateId) -> Result<&Mandate, DomainError> {
        self.mandates
            .get(&mandate)
            .ok_or(DomainError::MandateNotFound { mandate })
    }

    /// The chain root → `mandate` (inclusive). Empty if the mandate is unknown.
    pub fn chain(&self, mandate: MandateId) -> Vec<&Mandate> {
        let mut chain = Vec::new();
        let mut cur = self.mandates.get(&mandate);
        while let Some(m) = cur {
            chain.push(m);
            cur = m.parent.and_then(|p| self.mandates.get(&p));
        }
        chain.reverse();
        chain
    }

    /// Every mandate below `mandate` (not itself), parents before children.
    pub fn descendants(&self, mandate: MandateId) -> Vec<MandateId> {
        let mut out = Vec::new();
        let mut stack: Vec<MandateId> = self
            .mandates
            .get(&mandate)
            .map(|m| m.children.iter().rev().copied().collect())
            .unwrap_or_default();
        while let Some(id) = stack.pop() {
            out.push(id);
            if let Some(m) = self.mandates.get(&id) {
                stack.extend(m.children.iter().rev().copied());
            }
        }
        out
    }
}
