//! Events: immutable, versioned facts about one tree, in one envelope, hash
//! chained. `apply` folds them into a [`Tree`]; it cannot fail and holds no
//! logic, because `decide` already checked everything.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::Resolution;
use super::error::DomainError;
use super::ids::{AgentId, CommandId, EventId, MandateId, PrincipalId, TenantId, TreeId};
use super::model::{Actor, Grantor, Mandate, Mission, MissionRef, Transition, Tree};
use super::scope::{ActionPattern, Scope};
use super::status::Status;

/// The schema version of every document this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) fn check_version(what: &'static str, v: &serde_json::Value) -> Result<(), DomainError> {
    match v.as_u64() {
        Some(n) if n == u64::from(SCHEMA_VERSION) => Ok(()),
        Some(n) => Err(DomainError::UnknownVersion {
            what,
            actual: n,
            supported: SCHEMA_VERSION,
        }),
        None => Err(DomainError::Malformed {
            what,
            reason: "schema_version must be a non-negative integer".into(),
        }),
    }
}

/// One event with its envelope.
///
/// `prev_hash` is the SHA-256 of the previous event of the same tree over its
/// canonical encoding ([`Event::canonical_bytes`]: JSON with object keys sorted
/// and no whitespace), so a tree's history is a hash chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub event_id: EventId,
    pub tenant: TenantId,
    pub tree: TreeId,
    /// Per-tree sequence, from 1.
    pub seq: u64,
    #[schemars(range(min = 1, max = 1))]
    pub schema_version: u32,
    pub time: DateTime<Utc>,
    /// Who did it.
    pub actor: Actor,
    /// On whose authority: the principal of the tree's root.
    pub on_behalf_of: PrincipalId,
    pub command_id: CommandId,
    /// Hex SHA-256 of the command that wrote it (tenant, actor and command,
    /// canonical JSON): a command id reused for other content is refused.
    pub command_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Hex SHA-256 of the previous event's canonical encoding; `None` for the first.
    pub prev_hash: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened. Names are past tense and stable on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A mandate was granted: a root (no parent, with the mission) or a delegation.
    MandateIssued(Box<MandateIssued>),
    MandatePaused(Changed),
    MandateResumed(Changed),
    MandateRevoked(Changed),
    MandateExpired(Changed),
    MandateCompleted(Changed),
    /// The tree's mission was completed: the root is completed.
    MissionCompleted(MissionCompleted),
    ScopeNarrowed(ScopeNarrowed),
    MandateRenewed(MandateRenewed),
    /// An administrator resolved a quarantine: the bad record at `position`
    /// is skipped, and the tree is restored or ended (root revoked).
    QuarantineResolved(QuarantineResolved),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MandateIssued {
    pub mandate: MandateId,
    #[serde(default)]
    pub parent: Option<MandateId>,
    pub grantor: Grantor,
    pub grantee: AgentId,
    pub principal: PrincipalId,
    /// Present on the root only: delegations serve the root's mission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mission: Option<Mission>,
    pub scope: Scope,
    pub not_after: DateTime<Utc>,
    pub depth: u32,
    #[serde(default)]
    pub step_up: Vec<ActionPattern>,
    #[serde(default)]
    pub supervisors: Vec<AgentId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Changed {
    pub mandate: MandateId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MissionCompleted {
    /// The root mandate.
    pub mandate: MandateId,
    pub mission_ref: MissionRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScopeNarrowed {
    pub mandate: MandateId,
    pub scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MandateRenewed {
    pub mandate: MandateId,
    pub not_after: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuarantineResolved {
    /// The root mandate.
    pub mandate: MandateId,
    /// The log position of the bad record that is skipped.
    pub position: u64,
    pub action: Resolution,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The names of event types this build knows, as on the wire.
pub const EVENT_TYPES: &[&str] = &[
    "mandate_issued",
    "mandate_paused",
    "mandate_resumed",
    "mandate_revoked",
    "mandate_expired",
    "mandate_completed",
    "mission_completed",
    "scope_narrowed",
    "mandate_renewed",
    "quarantine_resolved",
];

impl EventBody {
    /// The mandate the event is about.
    pub fn mandate(&self) -> MandateId {
        match self {
            EventBody::MandateIssued(e) => e.mandate,
            EventBody::MandatePaused(c)
            | EventBody::MandateResumed(c)
            | EventBody::MandateRevoked(c)
            | EventBody::MandateExpired(c)
            | EventBody::MandateCompleted(c) => c.mandate,
            EventBody::MissionCompleted(m) => m.mandate,
            EventBody::ScopeNarrowed(n) => n.mandate,
            EventBody::MandateRenewed(r) => r.mandate,
            EventBody::QuarantineResolved(q) => q.mandate,
        }
    }

    /// The wire name of the event type.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::MandateIssued(_) => "mandate_issued",
            EventBody::MandatePaused(_) => "mandate_paused",
            EventBody::MandateResumed(_) => "mandate_resumed",
            EventBody::MandateRevoked(_) => "mandate_revoked",
            EventBody::MandateExpired(_) => "mandate_expired",
            EventBody::MandateCompleted(_) => "mandate_completed",
            EventBody::MissionCompleted(_) => "mission_completed",
            EventBody::ScopeNarrowed(_) => "scope_narrowed",
            EventBody::MandateRenewed(_) => "mandate_renewed",
            EventBody::QuarantineResolved(_) => "quarantine_resolved",
        }
    }
}

impl Event {
    /// The canonical encoding the hash chain covers: JSON, object keys sorted,
    /// no insignificant whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Going through `Value` sorts keys (serde_json's map is a BTreeMap).
        let value = serde_json::to_value(self).expect("events always serialize");
        serde_json::to_vec(&value).expect("values always serialize")
    }

    /// Hex SHA-256 of [`Event::canonical_bytes`].
    pub fn hash(&self) -> String {
        hex_sha256(&self.canonical_bytes())
    }

    /// Decodes one event, refusing unknown versions and types with their own errors.
    pub fn from_value(value: serde_json::Value) -> Result<Self, DomainError> {
        let obj = value.as_object().ok_or_else(|| DomainError::Malformed {
            what: "event",
            reason: "expected a JSON object".into(),
        })?;
        check_version(
            "event",
            obj.get("schema_version")
                .unwrap_or(&serde_json::Value::Null),
        )?;
        match obj.get("type").and_then(|t| t.as_str()) {
            Some(t) if EVENT_TYPES.contains(&t) => {}
            Some(t) => {
                return Err(DomainError::UnknownType {
                    what: "event",
                    actual: super::ids::truncate_for_error(t),
                })
            }
            None => {
                return Err(DomainError::Malformed {
                    what: "event",
                    reason: "missing string field `type`".into(),
                })
            }
        }
        serde_json::from_value(value).map_err(|e| DomainError::Malformed {
            what: "event",
            reason: e.to_string(),
        })
    }

    /// Decodes a commit: the JSON array of events one command wrote.
    pub fn decode_commit(bytes: &[u8]) -> Result<Vec<Event>, DomainError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| DomainError::Malformed {
                what: "commit",
                reason: e.to_string(),
            })?;
        match value {
            serde_json::Value::Array(items) => items.into_iter().map(Event::from_value).collect(),
            _ => Err(DomainError::Malformed {
                what: "commit",
                reason: "expected a JSON array of events".into(),
            }),
        }
    }

    /// Encodes a commit (see [`Event::decode_commit`]).
    pub fn encode_commit(events: &[Event]) -> Vec<u8> {
        serde_json::to_vec(events).expect("events always serialize")
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A break in a tree's hash chain or sequence, at the first bad event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tree {tree}: event seq {seq} breaks the chain: {reason}")]
pub struct ChainError {
    pub tree: TreeId,
    pub seq: u64,
    pub reason: String,
}

/// Verifies that `events` (a tree's history from its first event) are
/// numbered 1, 2, … and that each names the hash of the one before. An edited
/// event is reported at its own position: its hash no longer matches the one
/// its successor recorded. The last event has no successor; see
/// [`verify_chain_with_head`].
pub fn verify_chain(events: &[Event]) -> Result<(), ChainError> {
    let mut prev: Option<String> = None;
    for (i, e) in events.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if e.seq != expected_seq {
            return Err(ChainError {
                tree: e.tree,
                seq: e.seq,
                reason: format!("expected seq {expected_seq}"),
            });
        }
        if e.prev_hash != prev {
            return Err(match i {
                0 => ChainError {
                    tree: e.tree,
                    seq: e.seq,
                    reason: "the first event must have no prev_hash".into(),
                },
                _ => ChainError {
                    tree: e.tree,
                    seq: e.seq - 1,
                    reason: format!(
                        "its hash {:?} is not the prev_hash {:?} that seq {} recorded: it was altered",
                        prev, e.prev_hash, e.seq
                    ),
                },
            });
        }
        prev = Some(e.hash());
    }
    Ok(())
}

/// [`verify_chain`], and the last event's hash equals `head` (the head hash
/// kept by the projection), so an edit to the last event is caught too.
pub fn verify_chain_with_head(events: &[Event], head: Option<&str>) -> Result<(), ChainError> {
    verify_chain(events)?;
    match (events.last(), head) {
        (Some(last), Some(h)) if last.hash() != h => Err(ChainError {
            tree: last.tree,
            seq: last.seq,
            reason: format!("its hash is not the recorded head {h:?}: it was altered"),
        }),
        _ => Ok(()),
    }
}

/// Folds one event into the tree. Never fails and decides nothing: an event
/// naming a mandate the tree lacks (only possible in a corrupt stream, which
/// the log reports) changes only the version.
pub fn apply(tree: &mut Tree, event: &Event) {
    let transition = |status: Status, reason: &Option<String>| Transition {
        status,
        seq: event.seq,
        at: event.time,
        by: event.actor.clone(),
        reason: reason.clone(),
    };
    match &event.body {
        EventBody::MandateIssued(e) => {
            let mandate = Mandate {
                id: e.mandate,
                tree: event.tree,
                tenant: event.tenant.clone(),
                parent: e.parent,
                grantor: e.grantor.clone(),
                grantee: e.grantee.clone(),
                principal: e.principal.clone(),
                scope: e.scope.clone(),
                not_after: e.not_after,
                depth: e.depth,
                step_up: e.step_up.clone(),
                supervisors: e.supervisors.clone(),
                status: Status::Active,
                issued_at: event.time,
                transition: None,
                children: Vec::new(),
            };
            match e.parent {
                Some(p) => {
                    if let Some(parent) = tree.mandates.get_mut(&p) {
                        parent.children.push(e.mandate);
                    }
                }
                None => {
                    tree.root = Some(e.mandate);
                    tree.mission = e.mission.clone();
                    tree.principal = Some(e.principal.clone());
                }
            }
            tree.mandates.insert(e.mandate, mandate);
        }
        EventBody::MandatePaused(c) => set(tree, c.mandate, transition(Status::Paused, &c.reason)),
        EventBody::MandateResumed(c) => {
            if let Some(m) = tree.mandates.get_mut(&c.mandate) {
                m.status = Status::Active;
                m.transition = None;
            }
        }
        EventBody::MandateRevoked(c) => {
            set(tree, c.mandate, transition(Status::Revoked, &c.reason))
        }
        EventBody::MandateExpired(c) => {
            set(tree, c.mandate, transition(Status::Expired, &c.reason))
        }
        EventBody::MandateCompleted(c) => {
            set(tree, c.mandate, transition(Status::Completed, &c.reason))
        }
        EventBody::MissionCompleted(m) => set(
            tree,
            m.mandate,
            transition(
                Status::Completed,
                &Some(format!("mission {} completed", m.mission_ref)),
            ),
        ),
        EventBody::ScopeNarrowed(n) => {
            if let Some(m) = tree.mandates.get_mut(&n.mandate) {
                m.scope = n.scope.clone();
            }
        }
        EventBody::MandateRenewed(r) => {
            if let Some(m) = tree.mandates.get_mut(&r.mandate) {
                m.not_after = r.not_after;
            }
        }
        EventBody::QuarantineResolved(q) => {
            tree.quarantine = None;
            // Terminal is absorbing: a root that already ended keeps its end.
            let live = tree
                .mandates
                .get(&q.mandate)
                .is_some_and(|m| !m.status.is_terminal());
            if q.action == Resolution::End && live {
                let reason = Some(format!(
                    "ended by an administrator after the bad record at log position {}",
                    q.position
                ));
                set(tree, q.mandate, transition(Status::Revoked, &reason));
            }
        }
    }
    tree.version = event.seq;
    tree.head_hash = Some(event.hash());
    tree.commands
        .entry(event.command_id)
        .or_insert_with(|| super::model::AppliedCommand {
            seq: event.seq,
            digest: event.command_digest.clone(),
        });
}

fn set(tree: &mut Tree, mandate: MandateId, t: Transition) {
    if let Some(m) = tree.mandates.get_mut(&mandate) {
        m.status = t.status;
        m.transition = Some(t);
    }
}

/// Folds a whole history from scratch.
pub fn replay<'a>(
    tenant: TenantId,
    id: TreeId,
    events: impl IntoIterator<Item = &'a Event>,
) -> Tree {
    let mut tree = Tree::empty(tenant, id);
    for e in events {
        apply(&mut tree, e);
    }
    tree
}
