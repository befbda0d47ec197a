//! The wire contract: subjects, request and reply bodies, signals. Every type
//! here has a JSON Schema in `schemas/`; a client in any language needs only
//! those files and a NATS library.
//!
//! - `mandate.cmd.<tenant>.<verb>`: a
//!   [`CommandEnvelope`](crate::domain::CommandEnvelope) (its `type` equals
//!   the verb) or a [`BulkEnvelope`]; reply [`Reply`] of [`CommandResult`].
//! - `mandate.q.<tenant>.<verb>`: a query body; reply [`Reply`] of its result.
//! - `mandate.sig.<tenant>.<mandate>`: [`Signal`]s about one mandate.
//! - `mission.<tenant>.<ref>.completed`: a [`MissionCompletedNotice`] (any body);
//!   `<ref>` is the reference's subject token ([`MissionRef::subject_token`]);
//!   on a tenant that requires authentication, with a `Mandate-Auth` header
//!   from a ticketing or administrator key (format in [`auth`]).
//!   Refused ones are moved to `mandate.dead.mission` (stream
//!   `MANDATE_DEAD_LETTERS`, original body, headers naming the subject and
//!   the reason) and counted in [`Health`].
//! - `mandate.audit.<tenant>.<mandate>`: [`AuditRecord`]s of answered checks.
//!
//! Request signing (the `Mandate-Auth` header) is in [`auth`]; signed
//! commands (the `Mandate-Signature` header) in [`signature`].

pub mod auth;
pub mod set;
pub mod signature;
pub mod token;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::command::EXTERNAL_COMMAND_ID_PATTERN;
use crate::domain::{
    Actor, AgentId, ChainFault, ChainLink, CommandId, Decision, DomainError, Effective, ErrorCode,
    Event, KeyId, KeyOwner, Mandate, MandateId, MissionRef, PrincipalId, Quarantine, RegisteredKey,
    Status, TenantId, Tree, TreeId, SCHEMA_VERSION,
};

/// Subject of a command verb.
pub fn command_subject(tenant: &TenantId, verb: &str) -> String {
    format!("mandate.cmd.{tenant}.{verb}")
}
/// Subject of a query verb.
pub fn query_subject(tenant: &TenantId, verb: &str) -> String {
    format!("mandate.q.{tenant}.{verb}")
}
/// Subject of one mandate's signals.
pub fn signal_subject(tenant: &TenantId, mandate: MandateId) -> String {
    format!("mandate.sig.{tenant}.{mandate}")
}
/// Subject of a tenant's beacon: every engine instance publishes one there
/// at a fixed interval, into the signal stream, so a process following the
/// tenant's signals hears the engines (and knows how far it has caught up)
/// with one message per interval, whatever its number of guards. `beacon`
/// is never a mandate id, so it shares no subject with a mandate's signals.
pub fn beacon_subject(tenant: &TenantId) -> String {
    format!("mandate.sig.{tenant}.beacon")
}
/// Every signal subject of a tenant, beacons included: what a process's
/// hub follows with one consumer.
pub fn tenant_signals_subject(tenant: &TenantId) -> String {
    format!("mandate.sig.{tenant}.>")
}
/// Subject a ticketing system publishes a mission's completion on: the
/// reference is one token, [`MissionRef::subject_token`] (`gh:org/repo#12`
/// is `mission.<tenant>.gh:org%2Frepo%2312.completed`).
pub fn mission_subject(tenant: &TenantId, mission: &MissionRef) -> String {
    format!("mission.{tenant}.{}.completed", mission.subject_token())
}
/// Subject of a mandate's recorded check decisions.
pub fn audit_subject(tenant: &TenantId, mandate: MandateId) -> String {
    format!("mandate.audit.{tenant}.{mandate}")
}

/// Largest request body the engine reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Query verbs.
pub const QUERY_VERBS: &[&str] = &[
    "status", "tree", "chain", "history", "verify", "list", "check", "audit", "health", "token",
    "jwks", "keys",
];
/// Bulk command verbs.
pub const BULK_VERBS: &[&str] = &["revoke_agent", "revoke_principal"];

/// Every reply: `ok` with a `result`, or not `ok` with an `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
#[schemars(extend("oneOf" = [
    {"properties": {"ok": {"const": true}}, "required": ["result"], "not": {"required": ["error"]}},
    {"properties": {"ok": {"const": false}}, "required": ["error"], "not": {"required": ["result"]}}
]))]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl<T> Reply<T> {
    pub fn ok(result: T) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(error: ErrorBody) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(error),
        }
    }
    /// The result, or the error.
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match (self.ok, self.result, self.error) {
            (true, Some(r), _) => Ok(r),
            (_, _, Some(e)) => Err(e),
            _ => Err(ErrorBody {
                code: ErrorCode::Internal,
                message: "reply has neither result nor error".into(),
                reason: None,
            }),
        }
    }
}

/// An error on the wire: a stable code, a message naming what was wrong for
/// people, and for every domain refusal a stable reason for programs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The kind of refusal, snake_case and stable, set for every refusal by
    /// the domain's rules (e.g. `not_authorized`, `not_grantee`,
    /// `mission_forbidden`, `not_authenticated`, `scope_widens`): several
    /// kinds share one `code`, and clients tell them apart by this field,
    /// never by the message. Absent for failures outside those rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&DomainError> for ErrorBody {
    fn from(e: &DomainError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
            reason: Some(e.reason().to_string()),
        }
    }
}

/// One commit the command wrote (or, for a duplicate, the one it answers
/// with).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommitInfo {
    pub tree: TreeId,
    /// Log position of the commit.
    pub position: u64,
    pub events: Vec<Event>,
}

/// The result of a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandResult {
    pub command_id: CommandId,
    /// True when nothing new was written: this command id had already been
    /// applied, and the commits are the original ones; or, for
    /// `request_approval`, an equal request (same mandate, action, resource
    /// and parameters hash) is still pending, and the commit is that
    /// request's, naming the approval to wait for and use.
    pub duplicate: bool,
    /// The mandate issued or delegated, or the one acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mandate: Option<MandateId>,
    pub commits: Vec<CommitInfo>,
}

/// A bulk command with its envelope. No other field is accepted (the
/// decoder refuses unknown fields), and the schema says so.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("unevaluatedProperties" = false))]
pub struct BulkEnvelope {
    /// Idempotency key of the bulk command; each revoke it writes gets an id
    /// derived from it. Any UUID but version 8, which is reserved for the ids
    /// the engine derives.
    #[schemars(extend("pattern" = EXTERNAL_COMMAND_ID_PATTERN))]
    pub command_id: CommandId,
    pub tenant: TenantId,
    pub actor: Actor,
    /// Free correlation id, for tracing: at most 128 bytes, no control
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub correlation_id: Option<String>,
    #[serde(default = "schema_version")]
    #[schemars(range(min = 1, max = 1))]
    pub schema_version: u32,
    #[serde(flatten)]
    pub bulk: Bulk,
}

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

impl BulkEnvelope {
    /// Decodes a bulk command from JSON: unknown fields are refused (by the
    /// decoder), and so is a schema version this build does not read.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DomainError> {
        let bulk: BulkEnvelope =
            serde_json::from_slice(bytes).map_err(|e| DomainError::Malformed {
                what: "bulk command",
                reason: e.to_string(),
            })?;
        if bulk.schema_version != SCHEMA_VERSION {
            return Err(DomainError::UnknownVersion {
                what: "bulk command",
                actual: u64::from(bulk.schema_version),
                supported: SCHEMA_VERSION,
            });
        }
        Ok(bulk)
    }
}

/// Operations over many trees, expressed as ordinary revoke events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Bulk {
    /// Deprovisioning: revoke every live mandate an agent holds.
    RevokeAgent {
        agent: AgentId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Offboarding: revoke every live root a principal granted.
    RevokePrincipal {
        principal: PrincipalId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// How fresh a read's answer must be, after the manner of Zanzibar's
/// zookies: on the wire `"fresh"` (the default when absent), `"local"`, or
/// `{"at_least": <log position>}`.
///
/// - `fresh`: sees everything acknowledged anywhere (the tree's head is read
///   from the log first, one round trip).
/// - `at_least`: sees at least the commit at that log position, taken from
///   a command's reply ([`CommitInfo::position`]) or a read's; no round trip
///   once this instance has applied it. An instance that cannot reach it
///   answers `unavailable`, never from older state.
/// - `local`: this instance's state as it is, without any round trip.
///
/// Holds (quarantine, a tree too new, a log that went backwards) refuse at
/// every level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Everything acknowledged anywhere.
    #[default]
    Fresh,
    /// This instance's state, without a round trip.
    Local,
    /// At least the state after the commit at this log position.
    AtLeast(u64),
}

impl Consistency {
    /// Whether this is the default level (and so left out on the wire).
    pub fn is_fresh(&self) -> bool {
        *self == Consistency::Fresh
    }
}

/// The wire forms of [`Consistency`], decoded first so that a bad value is
/// refused with a message naming the field.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ConsistencyWire {
    Fresh,
    Local,
    AtLeast(u64),
}

impl<'de> Deserialize<'de> for Consistency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ConsistencyWire::deserialize(d) {
            Ok(ConsistencyWire::Fresh) => Ok(Consistency::Fresh),
            Ok(ConsistencyWire::Local) => Ok(Consistency::Local),
            Ok(ConsistencyWire::AtLeast(p)) => Ok(Consistency::AtLeast(p)),
            Err(e) => Err(serde::de::Error::custom(format!(
                "consistency must be \"fresh\", \"local\" or {{\"at_least\": <log position>}}: {e}"
            ))),
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consistency::Fresh => f.write_str("fresh"),
            Consistency::Local => f.write_str("local"),
            Consistency::AtLeast(p) => write!(f, "at-least={p}"),
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    /// `fresh`, `local` or `at-least=<log position>` (as the CLI takes it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wrong = || format!("consistency {s:?} is not fresh, local or at-least=<log position>");
        match s {
            "fresh" => Ok(Consistency::Fresh),
            "local" => Ok(Consistency::Local),
            _ => match s.split_once('=') {
                Some(("at-least" | "at_least", p)) => {
                    p.parse().map(Consistency::AtLeast).map_err(|_| wrong())
                }
                _ => Err(wrong()),
            },
        }
    }
}

/// `status`, `chain`: one mandate, optionally as of a past moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MandateQuery {
    pub mandate: MandateId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// How fresh the answer must be (`"fresh"` when absent).
    #[serde(default, skip_serializing_if = "Consistency::is_fresh")]
    pub consistency: Consistency,
}

/// `tree`, `history`, `verify`: a tree named by its id or by any of its
/// mandates. For `history`, naming only a mandate returns that mandate's own
/// events; name the tree for all of them. A query naming both names a
/// mandate of that tree, or is refused (`invalid_input`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TreeQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mandate: Option<MandateId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// How fresh the answer must be (`"fresh"` when absent).
    #[serde(default, skip_serializing_if = "Consistency::is_fresh")]
    pub consistency: Consistency,
}

/// `list`: exactly one of agent, principal, mission_ref.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mission_ref: Option<MissionRef>,
    /// How fresh the answer must be (`"fresh"` when absent). The list spans
    /// trees, so `at_least` is met by this instance's in-order checkpoint.
    #[serde(default, skip_serializing_if = "Consistency::is_fresh")]
    pub consistency: Consistency,
}

/// `check`: may the holder do `action` on `resource` under `mandate`?
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    pub mandate: MandateId,
    pub action: String,
    pub resource: String,
    /// Answer as of this moment (replaying the tree's events up to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// Who asks (recorded in the audit). Never a `system` actor: a check
    /// naming one is refused (`reserved_actor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// How fresh the answer must be (`"fresh"` when absent).
    #[serde(default, skip_serializing_if = "Consistency::is_fresh")]
    pub consistency: Consistency,
}

/// `health`: no fields (an empty object, or an empty body).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {}

/// `audit`: recorded decisions for a mandate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub mandate: MandateId,
    #[serde(default = "default_audit_limit")]
    pub limit: usize,
}

fn default_audit_limit() -> usize {
    100
}

/// Reply to `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusReply {
    pub mandate: Mandate,
    pub effective: Effective,
    pub at: DateTime<Utc>,
    /// Log position of the tree's last commit in this answer (0 for a past
    /// state read with `at`): a later read may ask for `{"at_least": position}`.
    #[serde(default)]
    pub position: u64,
}

/// Reply to `tree`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TreeReply {
    pub tree: Tree,
    pub at: DateTime<Utc>,
    /// Effective status of every mandate at `at`.
    pub effective: Vec<MandateSummary>,
    /// Log position of the tree's last commit in this answer (0 for a past
    /// state read with `at`): a later read may ask for `{"at_least": position}`.
    #[serde(default)]
    pub position: u64,
}

/// Reply to `chain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChainReply {
    pub tree: TreeId,
    pub chain: Vec<ChainLink>,
    /// The full records of the chain's mandates, root first: enough to decide
    /// any check under the mandate (a guard holds exactly this).
    pub mandates: Vec<Mandate>,
    pub effective: Effective,
    pub at: DateTime<Utc>,
    /// The tree's version (events applied) in this answer: a reader keeps
    /// the highest it has seen and ignores an answer that is older.
    pub version: u64,
    /// Log position of the tree's last commit in this answer (0 for a past
    /// state read with `at`).
    pub position: u64,
    /// The engine's clock when it answered: a reader compares it with its
    /// own to find out how far behind its clock is.
    pub engine_time: DateTime<Utc>,
}

/// Reply to `history`: events in order; `actor` (who did it) and
/// `on_behalf_of` (whose authority) are kept apart in each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryReply {
    pub tree: TreeId,
    pub events: Vec<Event>,
    /// Set while the tree is quarantined: the bad record's log position and
    /// why (it is not among `events`). A resolved quarantine shows as a
    /// `quarantine_resolved` event naming the position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// Reply to `verify`: whether a tree's records, re-read from the log, form an
/// unbroken hash chain that ends in the head the projection recorded; if not,
/// the first record that does not match and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyReply {
    pub tree: TreeId,
    pub events: u64,
    pub head_hash: Option<String>,
    pub intact: bool,
    /// Where and why the chain breaks, when it does: the seq of the first
    /// event that does not match (for missing events, the first missing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The log position of the first record that does not match (for a
    /// missing tail, the head position the projection recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_position: Option<u64>,
    /// What is wrong at `broken_position`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<ChainFault>,
    /// Position of the tree's last record in the log, 0 if it has none.
    #[serde(default)]
    pub log_head: u64,
    /// Position of the tree's head as the projection recorded it, 0 if none.
    #[serde(default)]
    pub projection_head: u64,
    /// Log positions of bad records kept in the log as evidence, which an
    /// administrator's resolution of a quarantine skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<u64>,
    /// Events of the log that record a command signature: each was
    /// re-verified against the key ring as of the event (the key configured,
    /// or registered before it and not revoked before it).
    #[serde(default)]
    pub signatures: u64,
    /// The recorded signatures that do not verify, by event. `intact` is
    /// about the chain; an auditor reads both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signature_failures: Vec<SignatureFailure>,
}

/// A recorded signature that does not verify.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SignatureFailure {
    pub seq: u64,
    pub key_id: KeyId,
    pub reason: String,
}

/// `keys`: no fields (an empty object, or an empty body).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {}

/// Reply to `keys`: the tenant's key ring, the operator's configured keys
/// first, then the registered ones (revoked ones included), by key id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeysReply {
    pub tenant: TenantId,
    /// Whether every command of the tenant must be signed.
    pub require_signatures: bool,
    pub keys: Vec<KeyInfo>,
}

/// Where a key of the ring comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The operator's auth configuration: valid while it lists the key.
    Configured,
    /// A `key_registered` event of the tenant's registry.
    Registered,
}

/// Whether a key signs commands now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Revoked,
    /// Past its `not_after`.
    Expired,
}

/// One key of a tenant's ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub owner: KeyOwner,
    /// Ed25519, base64url without padding.
    pub public_key: String,
    pub source: KeySource,
    pub status: KeyStatus,
    /// Registration, revocation and expiry, for a registered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<RegisteredKey>,
}

/// One mandate in a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MandateSummary {
    pub mandate: MandateId,
    pub tree: TreeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<MandateId>,
    pub grantee: AgentId,
    pub principal: PrincipalId,
    pub status: Status,
    pub effective: Effective,
    pub not_after: DateTime<Utc>,
    /// The log position of the bad record, while the tree is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
}

/// Reply to `list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    pub mandates: Vec<MandateSummary>,
    /// This instance's in-order checkpoint when it answered: every commit
    /// up to it is in the answer.
    #[serde(default)]
    pub position: u64,
}

/// Reply to `health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// This engine instance.
    pub instance: String,
    /// `nats` or `embedded`.
    pub backend: String,
    /// Last log position applied in order by this instance's projection.
    pub position: u64,
    /// Last position of the log.
    pub log_position: u64,
    /// `log_position - position`.
    pub lag: u64,
    /// Over NATS: attempts of this instance to store audit records that
    /// the audit stream did not take, since it started (each is logged;
    /// the records wait in the instance's outbox and are sent again). In
    /// process: records the store did not take.
    #[serde(default)]
    pub audit_failures: u64,
    /// Check decisions this instance answered whose audit record the audit
    /// stream has not stored yet: they wait in the instance's outbox (on
    /// disk, kept across restarts). A few while checks flow; a number that
    /// grows means the audit stream cannot take them.
    #[serde(default)]
    pub audit_pending: u64,
    pub time: DateTime<Utc>,
    /// Mission completions refused (unauthenticated on a tenant that
    /// requires authentication, or on a malformed subject) and moved to the
    /// dead-letter stream, by all instances.
    #[serde(default)]
    pub rejected_mission_completions: u64,
    /// What this instance's event log met of a stream without a leader
    /// (on a cluster: its leader node lost, an election under way), since
    /// the instance started. Always zero on the embedded log.
    #[serde(default)]
    pub elections: Elections,
    /// The asking tenant's quarantined trees on this instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedTree>,
    /// The asking tenant's trees whose acknowledged records the event log
    /// no longer holds, as this instance found them: held (every check
    /// denies, every command refuses) until an operator accepts the loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_went_backwards: Vec<LostTree>,
}

/// Stream leader elections as one instance met them, in `health`: each
/// was retried (an append sent again with its message id) or answered
/// `unavailable` (for its client to retry with the same command id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Elections {
    /// Appends sent again, with the same message id, after their
    /// acknowledgement timed out (a stream without a leader).
    pub append_retries: u64,
    /// Appends given up and leader reads (a tree's head, the log's last
    /// position) not answered: each failed `unavailable`.
    pub unavailable: u64,
    /// When the last of either happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<DateTime<Utc>>,
}

/// A tree the event log went backwards on, as `health` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LostTree {
    pub tree: TreeId,
    /// The tree's head as the projection recorded it.
    pub recorded: u64,
    /// The tree's head in the log when the loss was found (0: none left).
    pub found: u64,
    pub detected_at: DateTime<Utc>,
}

/// A quarantined tree, as `health` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuarantinedTree {
    pub tree: TreeId,
    /// Log position of the bad record (the one a resolution names).
    pub position: u64,
    pub reason: String,
}

/// A recorded check decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    pub schema_version: u32,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// On whose authority the mandate was held (the root's principal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalId>,
    /// When the check was answered (the decision's `at` may be in the past).
    pub recorded_at: DateTime<Utc>,
    /// The engine instance that answered.
    pub instance: String,
}

/// Reply to `audit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditReply {
    pub records: Vec<AuditRecord>,
}

/// What a signal tells holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Revoked, expired or completed: stop for good.
    Terminated,
    /// Paused: stop until resumed.
    Suspended,
    /// Resumed: re-read state (a descendant paused on its own stays paused).
    Resumed,
    /// Scope narrowed or `not_after` changed: re-read state.
    Narrowed,
    /// The tree's stream holds a corrupt record: deny while it holds. Not a
    /// termination: a restored tree's guards may allow again.
    Quarantined,
    /// An administrator restored a quarantined tree: re-read state.
    Restored,
}

/// A notice that authority changed, published once on the subject of the
/// mandate it is about; NATS fans it out to every guard below.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Signal {
    pub schema_version: u32,
    pub kind: SignalKind,
    pub tenant: TenantId,
    pub tree: TreeId,
    pub mandate: MandateId,
    /// The mandate's own status after the event.
    pub status: Status,
    /// The event behind the signal.
    pub event_id: crate::domain::EventId,
    pub event_type: String,
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `quarantined`: the log position of the bad record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// The tree's head log position once the event was applied (the
    /// commit holding it, or a later one): a holder re-reads with
    /// `{"at_least": head_position}` and costs the engine no round trip
    /// to the log. Absent on a `quarantined` signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_position: Option<u64>,
}

/// An engine instance's periodic word that it is alive and serving a
/// tenant, published on [`beacon_subject`] into the signal stream. A guard's
/// lease is kept by hearing beacons in order with the signals: a beacon
/// heard means every signal stored before it has been heard too. When it
/// was stored (the stream's own timestamp) is what counts, so a beacon
/// replayed late after a cut-off does not count as hearing the engine now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Beacon {
    pub schema_version: u32,
    pub tenant: TenantId,
    /// The publishing engine instance.
    pub instance: String,
    /// The engine's clock when it published.
    pub time: DateTime<Utc>,
    /// How often this instance publishes a beacon, in milliseconds: a
    /// guard's lease must be several times longer.
    pub interval_ms: u64,
}

/// The optional body of a mission-complete message; the subject alone is enough.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MissionCompletedNotice {
    /// Where the completion came from (e.g. the ticket URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every wire document's JSON Schema, by file name (without `.json`). The
/// files in `schemas/` are these, committed; a test keeps them in step.
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    use crate::domain::CommandEnvelope;
    use schemars::schema_for;
    vec![
        ("command", schema_for!(CommandEnvelope)),
        ("bulk-command", schema_for!(BulkEnvelope)),
        ("event", schema_for!(Event)),
        ("commit", schema_for!(Vec<Event>)),
        ("signal", schema_for!(Signal)),
        ("beacon", schema_for!(Beacon)),
        ("decision", schema_for!(Decision)),
        ("mission-completed", schema_for!(MissionCompletedNotice)),
        ("audit-record", schema_for!(AuditRecord)),
        ("query-status", schema_for!(MandateQuery)),
        ("query-chain", schema_for!(MandateQuery)),
        ("query-tree", schema_for!(TreeQuery)),
        ("query-history", schema_for!(TreeQuery)),
        ("query-verify", schema_for!(TreeQuery)),
        ("query-list", schema_for!(ListQuery)),
        ("query-check", schema_for!(CheckQuery)),
        ("query-audit", schema_for!(AuditQuery)),
        ("query-health", schema_for!(HealthQuery)),
        ("query-token", schema_for!(token::TokenQuery)),
        ("query-jwks", schema_for!(token::JwksQuery)),
        ("query-keys", schema_for!(KeysQuery)),
        ("reply-command", schema_for!(Reply<CommandResult>)),
        ("reply-status", schema_for!(Reply<StatusReply>)),
        ("reply-chain", schema_for!(Reply<ChainReply>)),
        ("reply-tree", schema_for!(Reply<TreeReply>)),
        ("reply-history", schema_for!(Reply<HistoryReply>)),
        ("reply-verify", schema_for!(Reply<VerifyReply>)),
        ("reply-list", schema_for!(Reply<ListReply>)),
        ("reply-check", schema_for!(Reply<Decision>)),
        ("reply-audit", schema_for!(Reply<AuditReply>)),
        ("reply-health", schema_for!(Reply<Health>)),
        ("reply-token", schema_for!(Reply<token::TokenReply>)),
        ("reply-jwks", schema_for!(Reply<token::Jwks>)),
        ("reply-keys", schema_for!(Reply<KeysReply>)),
        ("token-claims", schema_for!(token::TokenClaims)),
        ("jwks", schema_for!(token::Jwks)),
        ("set", schema_for!(set::SetClaims)),
    ]
}
