//! Events: immutable, versioned facts about one tree, in one envelope, hash
//! chained. `apply` folds them into a [`Tree`]; it cannot fail and holds no
//! logic, because `decide` already checked everything.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{wire_names, Resolution};
use super::error::DomainError;
use super::ids::{AgentId, CommandId, EventId, MandateId, PrincipalId, TenantId, TreeId};
use super::keys::{CommandSignature, KeyRegistered, KeyRevoked};
use super::model::{Actor, Block, Grantor, Mandate, Mission, MissionRef, Transition, Tree};
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

/// Checks that a document's `type` field is a string naming one of `known`:
/// another name is an unknown type; no name (or not a string) is malformed.
pub(crate) fn check_type(
    what: &'static str,
    ty: Option<&serde_json::Value>,
    known: &[&str],
) -> Result<(), DomainError> {
    match ty.and_then(|t| t.as_str()) {
        Some(t) if known.contains(&t) => Ok(()),
        Some(t) => Err(DomainError::UnknownType {
            what,
            actual: super::ids::truncate_for_error(t),
        }),
        None => Err(DomainError::Malformed {
            what,
            reason: "missing string field `type`".into(),
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
    /// The signature of the command that wrote the event, when it was
    /// signed with a key of the tenant's ring; absent (never null) for an
    /// unsigned command, so events written before signatures hash the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Box<CommandSignature>>,
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
    /// Registry: no new mandate may be granted to the agent.
    AgentBlocked(AgentBlockChanged),
    /// Registry: the agent's block was lifted.
    AgentUnblocked(AgentBlockChanged),
    /// Registry: the principal may grant no new root.
    PrincipalBlocked(PrincipalBlockChanged),
    /// Registry: the principal's block was lifted.
    PrincipalUnblocked(PrincipalBlockChanged),
    /// Registry: a signing key was registered.
    KeyRegistered(KeyRegistered),
    /// Registry: a signing key was revoked for good.
    KeyRevoked(KeyRevoked),
    /// A mandate's grantee asked for step-up approval of one request.
    ApprovalRequested(Box<ApprovalRequested>),
    /// The approver granted a pending approval.
    ApprovalGranted(ApprovalDecided),
    /// The approver denied a pending approval.
    ApprovalDenied(ApprovalDecided),
    /// The grantee used a granted approval: its one allow.
    ApprovalUsed(ApprovalUsed),
}

/// An approval request: bound to one mandate, action, resource and
/// parameters hash, usable until `expires_at`. Who asked is the event's
/// actor, named again as `requested_by`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalRequested {
    /// The approval's id (a version 7 UUID).
    pub approval: uuid::Uuid,
    pub mandate: MandateId,
    pub action: String,
    pub resource: String,
    /// Lowercase hex SHA-256 of the canonical JSON of the parameters.
    pub params_hash: String,
    pub requested_by: AgentId,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The approver's decision (who decided is the event's actor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalDecided {
    pub approval: uuid::Uuid,
    pub mandate: MandateId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The one use of an approval (who used it is the event's actor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalUsed {
    pub approval: uuid::Uuid,
    pub mandate: MandateId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentBlockChanged {
    pub agent: AgentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrincipalBlockChanged {
    pub principal: PrincipalId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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

wire_names! {
    /// The names of event types this build knows, as on the wire.
    EVENT_TYPES,
    /// The wire name of the event type.
    EventBody::type_name {
        MandateIssued => "mandate_issued",
        MandatePaused => "mandate_paused",
        MandateResumed => "mandate_resumed",
        MandateRevoked => "mandate_revoked",
        MandateExpired => "mandate_expired",
        MandateCompleted => "mandate_completed",
        MissionCompleted => "mission_completed",
        ScopeNarrowed => "scope_narrowed",
        MandateRenewed => "mandate_renewed",
        AgentBlocked => "agent_blocked",
        AgentUnblocked => "agent_unblocked",
        PrincipalBlocked => "principal_blocked",
        PrincipalUnblocked => "principal_unblocked",
        KeyRegistered => "key_registered",
        KeyRevoked => "key_revoked",
        QuarantineResolved => "quarantine_resolved",
        ApprovalRequested => "approval_requested",
        ApprovalGranted => "approval_granted",
        ApprovalDenied => "approval_denied",
        ApprovalUsed => "approval_used",
    }
}

impl EventBody {
    /// The mandate the event is about. Registry events are about no mandate:
    /// they answer the nil id, which no mandate has (mandate ids are v5 or v7).
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
            EventBody::AgentBlocked(_)
            | EventBody::AgentUnblocked(_)
            | EventBody::PrincipalBlocked(_)
            | EventBody::PrincipalUnblocked(_)
            | EventBody::KeyRegistered(_)
            | EventBody::KeyRevoked(_) => MandateId(uuid::Uuid::nil()),
            EventBody::QuarantineResolved(q) => q.mandate,
            EventBody::ApprovalRequested(r) => r.mandate,
            EventBody::ApprovalGranted(d) | EventBody::ApprovalDenied(d) => d.mandate,
            EventBody::ApprovalUsed(u) => u.mandate,
        }
    }

    /// The approval the event is about, if it is an approval event.
    pub fn approval(&self) -> Option<uuid::Uuid> {
        match self {
            EventBody::ApprovalRequested(r) => Some(r.approval),
            EventBody::ApprovalGranted(d) | EventBody::ApprovalDenied(d) => Some(d.approval),
            EventBody::ApprovalUsed(u) => Some(u.approval),
            _ => None,
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
        check_type("event", obj.get("type"), EVENT_TYPES)?;
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
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

/// [`verify_chain`] of tree `tree`, and the last event's hash equals `head`
/// (the head hash kept by the projection), so an edit to the last event is
/// caught too. An empty history with a recorded head is broken at seq 1: its
/// events are missing.
pub fn verify_chain_with_head(
    tree: TreeId,
    events: &[Event],
    head: Option<&str>,
) -> Result<(), ChainError> {
    verify_chain(events)?;
    match (events.last(), head) {
        (None, Some(h)) => Err(ChainError {
            tree,
            seq: 1,
            reason: format!(
                "the history is empty, but the head {h:?} is recorded: its events are missing"
            ),
        }),
        (Some(last), Some(h)) if last.hash() != h => Err(ChainError {
            tree: last.tree,
            seq: last.seq,
            reason: format!("its hash is not the recorded head {h:?}: it was altered"),
        }),
        _ => Ok(()),
    }
}

/// What is wrong where a tree's log and its projection part ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChainFault {
    /// A record cannot be read or decoded.
    Corrupt,
    /// A record's content does not fit the chain: edited, or forged.
    Tampered,
    /// Records are missing: a gap in the sequence, or the log ends before
    /// the head the projection recorded.
    Missing,
    /// The log's chain is whole, but the projection recorded something else.
    ProjectionDiffers,
}

/// One commit as the log holds it, for [`verify_log`]: its position and its
/// events, or why they cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedCommit {
    pub position: u64,
    pub events: Result<Vec<Event>, String>,
}

/// The head a projection recorded for a tree: the position of its last
/// commit, the seq of its last event and that event's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedHead {
    pub position: u64,
    pub seq: u64,
    pub hash: Option<String>,
}

/// A tree's log that matched its chain and its projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedLog {
    /// Events in the chain (skipped records not counted).
    pub events: u64,
    /// Log positions of bad records that an administrator's
    /// `quarantine_resolved` skipped: kept in the log as evidence.
    pub skipped: Vec<u64>,
}

/// The first place where a tree's log does not match its chain or its
/// projection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tree {tree}: {fault:?} at log position {position} (event seq {seq}): {reason}")]
pub struct LogBreak {
    pub tree: TreeId,
    pub fault: ChainFault,
    /// Log position of the record named.
    pub position: u64,
    /// Seq of the event named (for missing events, the first missing one).
    pub seq: u64,
    pub reason: String,
}

/// Checks a tree's records, as re-read from the log, against the hash chain
/// and against the projection: `projected` is the projection's history of
/// the tree and `head` the head it recorded (`None`: it has none). Returns
/// the events in the chain and the bad records a resolved quarantine
/// skipped, or the first record that does not match.
///
/// Where a link breaks, the projection's copy of the earlier event tells
/// which side was altered: if it agrees with the log, the later record does
/// not name its predecessor (forged or edited); otherwise the earlier one was
/// edited.
pub fn verify_log(
    tenant: &TenantId,
    tree: TreeId,
    commits: &[LoggedCommit],
    projected: &[Event],
    head: Option<&RecordedHead>,
) -> Result<VerifiedLog, LogBreak> {
    let fail = |fault, position, seq, reason: String| {
        Err(LogBreak {
            tree,
            fault,
            position,
            seq,
            reason,
        })
    };
    let projected_hash = |seq: u64| {
        usize::try_from(seq)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|i| projected.get(i))
            .filter(|e| e.seq == seq)
            .map(Event::hash)
    };
    // (position, seq, hash) of the last event that fit the chain.
    let mut last: Option<(u64, u64, String)> = None;
    // Log position of each event, by seq - 1.
    let mut logged: Vec<(u64, &Event)> = Vec::new();
    // Bad records an administrator's resolution skipped.
    let mut skipped = Vec::new();
    let mut next = 0;
    while let Some(commit) = commits.get(next) {
        let (before, fitted) = (last.clone(), logged.len());
        match check_commit(
            tenant,
            tree,
            commit,
            &mut last,
            &mut logged,
            &projected_hash,
        ) {
            Ok(()) => next += 1,
            Err(broken) => {
                // A quarantine an administrator resolved: the bad record (and
                // whatever came after it) stays in the log as evidence, and the
                // chain goes on from the last good event with the resolution
                // that names it.
                last = before;
                logged.truncate(fitted);
                let last_hash = last.as_ref().map(|(_, _, h)| h.as_str());
                let resumes = commits[next + 1..]
                    .iter()
                    .position(|c| resolves(c, commit.position, last_hash));
                match resumes {
                    Some(k) => {
                        skipped.push(commit.position);
                        next += 1 + k;
                    }
                    None => return Err(broken),
                }
            }
        }
    }
    let Some(head) = head else {
        return match logged.first() {
            None => Ok(VerifiedLog { events: 0, skipped }),
            Some((position, _)) => fail(
                ChainFault::ProjectionDiffers,
                *position,
                1,
                format!(
                    "the projection holds nothing of this tree, but the log holds {} events",
                    logged.len()
                ),
            ),
        };
    };
    let Some((last_position, last_seq, last_hash)) = last else {
        return fail(
            ChainFault::Missing,
            head.position,
            1,
            format!(
                "the log holds no record of this tree, but the projection recorded its head at position {} (seq {})",
                head.position, head.seq
            ),
        );
    };
    if last_position < head.position || last_seq < head.seq {
        return fail(
            ChainFault::Missing,
            head.position,
            last_seq + 1,
            format!(
                "the log ends at position {last_position} (seq {last_seq}), before the head the projection recorded at position {} (seq {}): records are missing",
                head.position, head.seq
            ),
        );
    }
    if last_position > head.position || last_seq > head.seq {
        // The first event past the projection's head (the last one at worst).
        let (position, seq) = logged
            .iter()
            .find(|(p, e)| *p > head.position || e.seq > head.seq)
            .map_or((last_position, last_seq), |(p, e)| (*p, e.seq));
        return fail(
            ChainFault::ProjectionDiffers,
            position,
            seq,
            format!(
                "the projection stops at position {} (seq {}), the log goes on to position {last_position} (seq {last_seq})",
                head.position, head.seq
            ),
        );
    }
    if head.hash.as_deref() != Some(last_hash.as_str()) {
        // Two witnesses in the projection (its head and its copy of the last
        // event) against the log's record: the record was altered.
        let fault = if projected_hash(last_seq).as_ref() == head.hash.as_ref() {
            ChainFault::Tampered
        } else {
            ChainFault::ProjectionDiffers
        };
        return fail(
            fault,
            last_position,
            last_seq,
            format!(
                "its hash {last_hash:?} is not the head {:?} the projection recorded",
                head.hash
            ),
        );
    }
    for (position, e) in &logged {
        if projected_hash(e.seq).as_deref() != Some(e.hash().as_str()) {
            return fail(
                ChainFault::ProjectionDiffers,
                *position,
                e.seq,
                "the projection's copy of this event differs from the log's".into(),
            );
        }
    }
    Ok(VerifiedLog {
        events: logged.len() as u64,
        skipped,
    })
}

/// Checks one commit of a tree's log against the chain so far, moving `last`
/// and `logged` past its events.
fn check_commit<'a>(
    tenant: &TenantId,
    tree: TreeId,
    commit: &'a LoggedCommit,
    last: &mut Option<(u64, u64, String)>,
    logged: &mut Vec<(u64, &'a Event)>,
    projected_hash: &dyn Fn(u64) -> Option<String>,
) -> Result<(), LogBreak> {
    let fail = |fault, position, seq, reason: String| {
        Err(LogBreak {
            tree,
            fault,
            position,
            seq,
            reason,
        })
    };
    let position = commit.position;
    let expected = last.as_ref().map_or(1, |(_, seq, _)| seq + 1);
    let events = match &commit.events {
        Ok(events) => events,
        Err(reason) => {
            return fail(
                ChainFault::Corrupt,
                position,
                expected,
                format!("the record cannot be read: {reason}"),
            )
        }
    };
    if events.is_empty() {
        return fail(
            ChainFault::Tampered,
            position,
            expected,
            "the commit holds no event".into(),
        );
    }
    for e in events {
        let expected = last.as_ref().map_or(1, |(_, seq, _)| seq + 1);
        if &e.tenant != tenant || e.tree != tree {
            return fail(
                ChainFault::Tampered,
                position,
                e.seq,
                format!(
                    "event seq {} names tree {} of tenant {}, not this tree",
                    e.seq, e.tree, e.tenant
                ),
            );
        }
        if e.seq > expected {
            return fail(
                ChainFault::Missing,
                position,
                expected,
                format!(
                    "events seq {expected} to {} are missing before this record (seq {})",
                    e.seq - 1,
                    e.seq
                ),
            );
        }
        if e.seq < expected {
            return fail(
                ChainFault::Tampered,
                position,
                e.seq,
                format!(
                    "event seq {} repeats or goes back: seq {expected} was next",
                    e.seq
                ),
            );
        }
        let prev_hash = last.as_ref().map(|(_, _, h)| h);
        if e.prev_hash.as_ref() != prev_hash {
            return match &*last {
                None => fail(
                    ChainFault::Tampered,
                    position,
                    e.seq,
                    "the first event must have no prev_hash".into(),
                ),
                Some((_, prev_seq, hash))
                    if projected_hash(*prev_seq).as_ref() == Some(hash) =>
                {
                    fail(
                        ChainFault::Tampered,
                        position,
                        e.seq,
                        format!(
                            "its prev_hash {:?} does not name seq {prev_seq} (hash {hash:?}), which the projection confirms: this record was altered or forged",
                            e.prev_hash
                        ),
                    )
                }
                Some((prev_position, prev_seq, hash)) => fail(
                    ChainFault::Tampered,
                    *prev_position,
                    *prev_seq,
                    format!(
                        "its hash {hash:?} is not the prev_hash {:?} that seq {} recorded at position {position}: it was altered",
                        e.prev_hash, e.seq
                    ),
                ),
            };
        }
        *last = Some((position, e.seq, e.hash()));
        logged.push((position, e));
    }
    Ok(())
}

/// Whether `commit` is an administrator's resolution of the quarantine at
/// `position`, chained from the last good event.
fn resolves(commit: &LoggedCommit, position: u64, last_hash: Option<&str>) -> bool {
    let Ok(events) = &commit.events else {
        return false;
    };
    events.first().is_some_and(|e| {
        matches!(&e.body, EventBody::QuarantineResolved(q) if q.position == position)
            && e.prev_hash.as_deref() == last_hash
    })
}

/// Folds one event into the tree. Never fails and decides nothing: an event
/// naming a mandate the tree lacks (only possible in a corrupt stream, which
/// the log reports) changes only the version. Likewise a `mandate_issued`
/// for a mandate the tree already holds, or under a parent it does not hold
/// (yet): so every mandate's parent was folded in before it, and no walk up
/// a chain can meet a cycle, whatever a forged record says.
pub fn apply(tree: &mut Tree, event: &Event) {
    apply_hashed(tree, event, event.hash());
}

/// [`apply`], for a caller that has just computed the event's hash (the
/// projection, which checks the chain first): hashing an event is most of
/// what folding it costs.
pub fn apply_hashed(tree: &mut Tree, event: &Event, hash: String) {
    let transition = |status: Status, reason: &Option<String>| Transition {
        status,
        seq: event.seq,
        at: event.time,
        by: event.actor.clone(),
        reason: reason.clone(),
    };
    match &event.body {
        EventBody::MandateIssued(e)
            if tree.mandates.contains_key(&e.mandate)
                || e.parent.is_some_and(|p| !tree.mandates.contains_key(&p)) => {}
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
        EventBody::AgentBlocked(b) => set_block(
            &mut tree.registry.blocked_agents,
            &b.agent,
            Some(block(event, &b.reason)),
        ),
        EventBody::AgentUnblocked(b) => {
            set_block(&mut tree.registry.blocked_agents, &b.agent, None)
        }
        EventBody::PrincipalBlocked(b) => set_block(
            &mut tree.registry.blocked_principals,
            &b.principal,
            Some(block(event, &b.reason)),
        ),
        EventBody::PrincipalUnblocked(b) => {
            set_block(&mut tree.registry.blocked_principals, &b.principal, None)
        }
        EventBody::KeyRegistered(_) | EventBody::KeyRevoked(_) => super::keys::fold(
            &mut tree.registry,
            event.seq,
            event.time,
            &event.actor,
            &event.body,
        ),
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
        EventBody::ApprovalRequested(_)
        | EventBody::ApprovalGranted(_)
        | EventBody::ApprovalDenied(_)
        | EventBody::ApprovalUsed(_) => {
            super::approval::fold(tree, event.seq, event.time, &event.actor, &event.body)
        }
    }
    tree.version = event.seq;
    tree.head_hash = Some(hash);
    tree.commands
        .entry(event.command_id)
        .or_insert_with(|| super::model::AppliedCommand {
            seq: event.seq,
            digest: event.command_digest.clone(),
        });
}

fn block(event: &Event, reason: &Option<String>) -> Block {
    Block {
        by: event.actor.clone(),
        seq: event.seq,
        at: event.time,
        reason: reason.clone(),
    }
}

/// Records the block of `id`, or lifts it (`None`).
fn set_block<K: Ord + Clone>(blocks: &mut BTreeMap<K, Block>, id: &K, block: Option<Block>) {
    match block {
        Some(b) => {
            blocks.insert(id.clone(), b);
        }
        None => {
            blocks.remove(id);
        }
    }
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
