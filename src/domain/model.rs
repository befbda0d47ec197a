//! The state a tree's events fold into: actors, missions, mandates and the tree.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
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
/// Exactly `kind` and `id`: any other field is refused, not dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    content = "id",
    rename_all = "snake_case",
    deny_unknown_fields
)]
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
        Self::system("expiry")
    }
    /// The engine's mission-complete intake.
    pub fn mission_intake() -> Self {
        Self::system("mission-intake")
    }
    /// The engine's projector (it finds corrupt records).
    pub fn projector() -> Self {
        Self::system("projector")
    }
    fn system(name: &'static str) -> Self {
        Actor::System(AgentId::new(name).expect("static id is valid"))
    }
}

/// Who granted a mandate: the principal for a root, the parent's grantee for a
/// delegation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    content = "id",
    rename_all = "snake_case",
    deny_unknown_fields
)]
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

/// An external reference to the mission (e.g. `jira:FIN-42`,
/// `gh:org/repo#12`, `FIN-42.1` or a ticket URL) whose completion ends it:
/// 1 to 128 bytes of printable ASCII without spaces (`!` to `~`). On the
/// mission subject it is one token: letters, digits, `_`, `:` and `-` as
/// they are, every other byte as `%` and two uppercase hex digits (so
/// `gh:org/repo#12` is `gh:org%2Frepo%2312`); a reference whose token would
/// be longer than 256 bytes is refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct MissionRef(
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[!-~]{1,128}$"))] String,
);

/// Longest subject token of a mission reference, in bytes (see
/// [`MissionRef::subject_token`]).
pub const MAX_MISSION_TOKEN_LEN: usize = 256;

/// The escape marker of a mission subject token; itself always escaped.
const TOKEN_ESCAPE: u8 = b'%';

/// Bytes a mission subject token carries as they are.
fn token_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':')
}

/// Length of the subject token of `value`.
fn token_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| if token_plain(b) { 1 } else { 3 })
        .sum()
}

impl MissionRef {
    /// Validates and wraps a mission reference.
    pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
        let value = value.into();
        let refuse = |reason: String| DomainError::InvalidId {
            field: "mission_ref",
            value: truncate_for_error(&value),
            reason,
        };
        if value.is_empty() {
            return Err(refuse("must not be empty".into()));
        }
        if value.len() > MAX_MISSION_REF_LEN {
            return Err(refuse(format!(
                "is {} bytes, longer than {MAX_MISSION_REF_LEN}",
                value.len()
            )));
        }
        if let Some((at, c)) = value.char_indices().find(|(_, c)| !matches!(c, '!'..='~')) {
            return Err(refuse(format!(
                "contains {c:?} at byte {at}: only printable ASCII without spaces ('!' to '~') is allowed"
            )));
        }
        let len = token_len(&value);
        if len > MAX_MISSION_TOKEN_LEN {
            return Err(refuse(format!(
                "its subject token would be {len} bytes (each byte other than a letter, digit, '_', ':' or '-' takes 3), longer than {MAX_MISSION_TOKEN_LEN}"
            )));
        }
        Ok(Self(value))
    }

    /// The reference as given (the JSON value).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reference as one NATS subject token, reversibly: letters, digits,
    /// `_`, `:` and `-` stay; every other byte (`%` included) becomes `%` and
    /// two uppercase hex digits. So `gh:org/repo#12` is
    /// `gh:org%2Frepo%2312`, `FIN-42.1` is `FIN-42%2E1`, and a reference made
    /// of letters, digits, `_`, `:` and `-` only is its own token. The token
    /// never holds `.`, `*`, `>` or whitespace, and is at most
    /// [`MAX_MISSION_TOKEN_LEN`] bytes.
    pub fn subject_token(&self) -> std::borrow::Cow<'_, str> {
        if self.0.bytes().all(token_plain) {
            return std::borrow::Cow::Borrowed(&self.0);
        }
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = String::with_capacity(token_len(&self.0));
        for b in self.0.bytes() {
            if token_plain(b) {
                out.push(char::from(b));
            } else {
                out.push(char::from(TOKEN_ESCAPE));
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// The reference a subject token encodes. Only the token
    /// [`MissionRef::subject_token`] writes is accepted (uppercase hex, no
    /// escaped letter or digit, no bare byte that should be escaped), so one
    /// mission has exactly one subject.
    pub fn from_subject_token(token: &str) -> Result<Self, DomainError> {
        let refuse = |reason: String| DomainError::InvalidId {
            field: "mission subject token",
            value: truncate_for_error(token),
            reason,
        };
        let bytes = token.as_bytes();
        let mut raw = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if token_plain(b) {
                raw.push(b);
                i += 1;
            } else if b == TOKEN_ESCAPE {
                let hex = |j: usize| {
                    bytes.get(j).and_then(|&h| match h {
                        b'0'..=b'9' => Some(h - b'0'),
                        b'A'..=b'F' => Some(h - b'A' + 10),
                        _ => None,
                    })
                };
                match (hex(i + 1), hex(i + 2)) {
                    (Some(hi), Some(lo)) => raw.push(hi << 4 | lo),
                    _ => {
                        return Err(refuse(format!(
                            "'%' at byte {i} is not followed by two uppercase hex digits"
                        )))
                    }
                }
                i += 3;
            } else {
                return Err(refuse(format!(
                    "byte {b:#04x} at {i} must be escaped: a token holds only letters, digits, '_', ':', '-' and '%XX'"
                )));
            }
        }
        let value =
            String::from_utf8(raw).map_err(|_| refuse("does not decode to UTF-8 text".into()))?;
        let mission = MissionRef::new(value).map_err(|e| match e {
            DomainError::InvalidId { reason, .. } => {
                refuse(format!("decodes to a refused mission_ref: {reason}"))
            }
            other => other,
        })?;
        if mission.subject_token() != token {
            return Err(refuse(format!(
                "is not the canonical token of {:?}, which is {:?}",
                mission.as_str(),
                mission.subject_token()
            )));
        }
        Ok(mission)
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

/// Checks that a time given from outside can be written back as RFC 3339,
/// whose years have four digits (0000 to 9999). The JSON decoder also reads
/// signed and longer years (`+10000-01-01T00:00:00Z`, `-0001-…`) and writes
/// them back the same way: kept, such a time would reach the log, replies and
/// signals in a form the schemas' `date-time` and readers in other languages
/// refuse.
pub fn check_time(field: &'static str, t: DateTime<Utc>) -> Result<(), DomainError> {
    if (0..=9999).contains(&t.year()) {
        return Ok(());
    }
    Err(DomainError::InvalidField {
        field,
        reason: format!(
            "{} (UTC) is not an RFC 3339 date-time: its year must be 0000 to 9999",
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        ),
    })
}

/// Refuses a control character, line breaks and tabs included, in an
/// identifier that is free text (a token's audience, a correlation id): it
/// is printed and logged on one line.
pub(crate) fn refuse_control(field: &'static str, value: &str) -> Result<(), DomainError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(DomainError::InvalidField {
            field,
            reason: format!("holds the control character {c:?}"),
        }),
        None => Ok(()),
    }
}

/// Checks a free-text field's length, and that it holds no control
/// character but line breaks and tabs: a reason is printed by the CLI and
/// shown to people, so it may not carry terminal escapes.
pub(crate) fn check_text(
    field: &'static str,
    value: &str,
    required: bool,
) -> Result<(), DomainError> {
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(DomainError::InvalidField {
            field,
            reason: format!("holds the control character {c:?}"),
        });
    }
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
    pub(crate) id: MandateId,
    pub(crate) tree: TreeId,
    pub(crate) tenant: TenantId,
    /// `None` for the root.
    pub(crate) parent: Option<MandateId>,
    pub(crate) grantor: Grantor,
    pub(crate) grantee: AgentId,
    /// On whose behalf: the principal of the root.
    pub(crate) principal: PrincipalId,
    pub(crate) scope: Scope,
    pub(crate) not_after: DateTime<Utc>,
    /// How many more levels this mandate may be delegated.
    pub(crate) depth: u32,
    /// Actions that need step-up approval under this mandate.
    pub(crate) step_up: Vec<ActionPattern>,
    /// Agents named to supervise this mandate and everything below it.
    pub(crate) supervisors: Vec<AgentId>,
    /// Its own status (see [`Tree::effective`] for the chain's).
    pub(crate) status: Status,
    pub(crate) issued_at: DateTime<Utc>,
    /// The last pause or terminal transition, when not active.
    pub(crate) transition: Option<Transition>,
    pub(crate) children: Vec<MandateId>,
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
    pub(crate) tenant: TenantId,
    pub(crate) id: TreeId,
    /// Number of events applied (the last event's per-tree sequence).
    pub(crate) version: u64,
    /// SHA-256 (hex) of the last event's canonical encoding.
    pub(crate) head_hash: Option<String>,
    pub(crate) root: Option<MandateId>,
    pub(crate) mission: Option<Mission>,
    pub(crate) principal: Option<PrincipalId>,
    pub(crate) mandates: BTreeMap<MandateId, Mandate>,
    /// Command ids applied: a command id is applied at most once, and one
    /// reused for different content is refused.
    pub(crate) commands: BTreeMap<CommandId, AppliedCommand>,
    /// Set when a record of the tree's stream did not decode or broke its
    /// chain: the state is the last good one, and it grants nothing until an
    /// administrator restores or ends the tree (`quarantine_resolved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) quarantine: Option<Quarantine>,
    /// Tenant-level records; non-empty only in the tenant's registry (see
    /// [`TreeId::registry`]), which holds no mandate.
    #[serde(default, skip_serializing_if = "Registry::is_empty")]
    pub(crate) registry: Registry,
    /// Step-up approvals requested under the tree's mandates, by id. A view
    /// holds only those its command names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) approvals: BTreeMap<uuid::Uuid, super::approval::Approval>,
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
    /// The tenant's registered signing keys, revoked ones included (their
    /// ids are never reused).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<super::keys::KeyId, super::keys::RegisteredKey>,
}

impl Registry {
    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.blocked_agents.is_empty() && self.blocked_principals.is_empty() && self.keys.is_empty()
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

/// Read access. Outside this crate a mandate comes only from its tree's
/// events ([`crate::domain::apply`]) or from the wire (deserialized, and
/// checked again by [`Tree::from_chain`] where a reader builds a view of its
/// own from it).
impl Mandate {
    pub fn id(&self) -> MandateId {
        self.id
    }
    pub fn tree(&self) -> TreeId {
        self.tree
    }
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    /// `None` for the root.
    pub fn parent(&self) -> Option<MandateId> {
        self.parent
    }
    pub fn grantor(&self) -> &Grantor {
        &self.grantor
    }
    pub fn grantee(&self) -> &AgentId {
        &self.grantee
    }
    /// On whose behalf: the principal of the root.
    pub fn principal(&self) -> &PrincipalId {
        &self.principal
    }
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }
    /// How many more levels this mandate may be delegated.
    pub fn depth(&self) -> u32 {
        self.depth
    }
    /// Actions that need step-up approval under this mandate.
    pub fn step_up(&self) -> &[ActionPattern] {
        &self.step_up
    }
    /// Agents named to supervise this mandate and everything below it.
    pub fn supervisors(&self) -> &[AgentId] {
        &self.supervisors
    }
    /// Its own status (see [`Tree::effective`] for the chain's).
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn issued_at(&self) -> DateTime<Utc> {
        self.issued_at
    }
    /// The last pause or terminal transition, when not active.
    pub fn transition(&self) -> Option<&Transition> {
        self.transition.as_ref()
    }
    /// The mandates delegated from this one, in the order they were issued.
    pub fn children(&self) -> &[MandateId] {
        &self.children
    }
}

/// Read access, and the one checked constructor outside `apply`. A tree is
/// built only by folding its events into [`Tree::empty`] with
/// [`crate::domain::apply`], or, for a reader that holds one chain, by
/// [`Tree::from_chain`]. Deserializing one trusts its input: that is for the
/// engine's own snapshots and replies.
impl Tree {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    pub fn id(&self) -> TreeId {
        self.id
    }
    /// Number of events applied (the last event's per-tree sequence).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// SHA-256 (hex) of the last event's canonical encoding.
    pub fn head_hash(&self) -> Option<&str> {
        self.head_hash.as_deref()
    }
    pub fn root(&self) -> Option<MandateId> {
        self.root
    }
    pub fn mission(&self) -> Option<&Mission> {
        self.mission.as_ref()
    }
    /// The root's principal, once there is a root.
    pub fn principal(&self) -> Option<&PrincipalId> {
        self.principal.as_ref()
    }
    pub fn mandates(&self) -> &BTreeMap<MandateId, Mandate> {
        &self.mandates
    }
    /// Command ids applied, with the sequence and digest of each.
    pub fn commands(&self) -> &BTreeMap<CommandId, AppliedCommand> {
        &self.commands
    }
    /// The bad record, while the tree is quarantined.
    pub fn quarantine(&self) -> Option<&Quarantine> {
        self.quarantine.as_ref()
    }
    /// Tenant-level blocks (the registry tree only).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    /// Step-up approvals of the tree, by id.
    pub fn approvals(&self) -> &BTreeMap<uuid::Uuid, super::approval::Approval> {
        &self.approvals
    }

    /// A tree holding one chain, root first, as a `chain` reply carries it:
    /// what a guard holds. Effective status and `authorize` look only at a
    /// mandate's chain, so they answer on it as on the whole tree.
    ///
    /// Refused unless the chain is one the engine could have written: not
    /// empty; every link of `tenant` and tree `id`, with distinct ids; the
    /// first a root and every other delegated from the link before it; one
    /// principal throughout; and every delegation's depth strictly below its
    /// parent's. A link's own scope or `not_after` may exceed an ancestor's
    /// (narrowed or shortened after the delegation): every link counts in
    /// `authorize` and the effective status. Each link's children are set to
    /// the next link alone.
    pub fn from_chain(
        tenant: TenantId,
        id: TreeId,
        version: u64,
        chain: Vec<Mandate>,
    ) -> Result<Self, DomainError> {
        let refuse = |reason: String| DomainError::Malformed {
            what: "chain",
            reason,
        };
        let Some(root) = chain.first() else {
            return Err(refuse("holds no mandate".into()));
        };
        if let Some(parent) = root.parent {
            return Err(refuse(format!(
                "its first mandate {} is not a root: it names parent {parent}",
                root.id
            )));
        }
        let (root_id, principal) = (root.id, root.principal.clone());
        let mut previous: Option<&Mandate> = None;
        for m in &chain {
            if m.tenant != tenant || m.tree != id {
                return Err(refuse(format!(
                    "mandate {} is of tree {} of tenant {}, not of tree {id} of tenant {tenant}",
                    m.id, m.tree, m.tenant
                )));
            }
            if m.principal != principal {
                return Err(refuse(format!(
                    "mandate {} is on behalf of {}, not of the root's principal {principal}",
                    m.id, m.principal
                )));
            }
            if let Some(parent) = previous {
                check_delegation(parent, m).map_err(refuse)?;
            }
            previous = Some(m);
        }
        let mut tree = Tree::empty(tenant, id);
        tree.version = version;
        tree.root = Some(root_id);
        tree.principal = Some(principal);
        let ids: Vec<MandateId> = chain.iter().map(|m| m.id).collect();
        for (i, mut m) in chain.into_iter().enumerate() {
            m.children = ids.get(i + 1).copied().into_iter().collect();
            if tree.mandates.insert(m.id, m).is_some() {
                return Err(refuse("names one mandate twice".into()));
            }
        }
        Ok(tree)
    }

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
            approvals: BTreeMap::new(),
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

/// Why `child` cannot be the delegation of `parent` that the engine wrote:
/// it must name `parent`, and may be delegated fewer levels (invariant 1).
///
/// Its own scope and `not_after` are not compared with the parent's: a
/// delegation lay within its parent when it was written, but a later
/// `narrow` or a shortening `renew` of an ancestor changes the ancestor
/// alone, so the engine's chains legitimately hold links whose own grants or
/// end exceed an ancestor's. That is sound, because every link counts:
/// `authorize` requires every link's scope, and the effective status every
/// link's `not_after`. Refusing such a chain would leave a reader on the
/// state from before the narrowing.
fn check_delegation(parent: &Mandate, child: &Mandate) -> Result<(), String> {
    let id = child.id;
    if child.parent != Some(parent.id) {
        return Err(format!(
            "mandate {id} does not follow from the mandate before it, {}",
            parent.id
        ));
    }
    if child.depth >= parent.depth {
        return Err(format!(
            "mandate {id} may be delegated {} more levels, not fewer than its parent {} ({})",
            child.depth, parent.id, parent.depth
        ));
    }
    Ok(())
}
