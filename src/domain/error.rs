//! Every refusal the domain can give, each naming what was wrong.
//!
//! These are *rejections*: the command was understood and refused, nothing was
//! written. Infrastructure failures live in the other layers' error types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AgentId, CommandId, MandateId, PrincipalId, TenantId, TreeId};
use super::keys::{KeyId, KeyOwner};
use super::status::Status;

/// A refused command or invalid input. `Clone + PartialEq` so tests can
/// compare them; each has a stable [`DomainError::code`] for the wire.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// An id is not acceptable (bad characters, empty, too long, not a UUID).
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidId {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A scope pattern does not follow the grammar.
    #[error("invalid scope pattern {pattern:?}: {reason}")]
    InvalidScope { pattern: String, reason: String },
    /// Some other field is out of bounds.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The mandate is not in this tree (or not visible to this tenant).
    #[error("mandate {mandate} not found")]
    MandateNotFound { mandate: MandateId },
    /// The tree does not exist (yet).
    #[error("tree {tree} not found")]
    TreeNotFound { tree: TreeId },
    /// A root issue for a tree that already exists.
    #[error("tree {tree} already exists")]
    TreeExists { tree: TreeId },
    /// The command names a tenant other than the tree's.
    #[error("tenant {command_tenant} may not act on a tree of another tenant")]
    CrossTenant { command_tenant: TenantId },
    /// A delegation from a parent that is not effectively active.
    #[error("parent mandate {parent} is {status}, not active")]
    ParentNotActive { parent: MandateId, status: Status },
    /// A delegation whose scope asks for more than the parent holds, or
    /// than an ancestor of the parent still grants: `parent` names the
    /// mandate of the chain that does not grant it.
    #[error("delegated grant {grant:?} is not covered by the scope of mandate {parent} on the parent's chain")]
    ScopeWidens { parent: MandateId, grant: String },
    /// A narrowing that is not a narrowing.
    #[error("new grant {grant:?} is not covered by the current scope of mandate {mandate}")]
    NarrowWidens { mandate: MandateId, grant: String },
    /// A `not_after` later than the parent's, or than an ancestor's:
    /// `parent` names the mandate of the chain that ends first.
    #[error("not_after {requested} is later than the not_after {parent_not_after} of mandate {parent} on the parent's chain")]
    NotAfterWidens {
        parent: MandateId,
        requested: DateTime<Utc>,
        parent_not_after: DateTime<Utc>,
    },
    /// A `not_after` that is already past.
    #[error("not_after {requested} is not in the future (now {now})")]
    NotAfterInPast {
        requested: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// The parent has no delegation depth left.
    #[error("parent mandate {parent} may not be delegated further (depth exhausted)")]
    DepthExhausted { parent: MandateId },
    /// The requested depth is not strictly below the parent's.
    #[error("requested delegation depth {requested} must be below parent {parent}'s remaining depth {parent_depth}")]
    DepthWidens {
        parent: MandateId,
        requested: u32,
        parent_depth: u32,
    },
    /// Only the parent's grantee may delegate it.
    #[error("{actor} is not the grantee of mandate {mandate} (held by agent {grantee})")]
    NotGrantee {
        mandate: MandateId,
        actor: String,
        grantee: AgentId,
    },
    /// The actor holds no authority over this mandate for this command.
    #[error("{actor} may not {verb} mandate {mandate}: only authority above it may")]
    NotAuthorized {
        mandate: MandateId,
        actor: String,
        verb: &'static str,
    },
    /// Completing a mission needs authority over it: an administrator, the
    /// mission intake, or the principal of a tree serving it.
    #[error("{actor} may not complete mission {mission_ref:?}: no tree it granted serves it")]
    MissionForbidden { mission_ref: String, actor: String },
    /// The tenant requires authenticated actors and this request's proof is
    /// missing or wrong.
    #[error("not authenticated: {reason}")]
    NotAuthenticated { reason: String },
    /// Terminal is absorbing: nothing changes a revoked, expired or completed mandate.
    #[error("mandate {mandate} is already {status}{}", cause_suffix(*mandate, *cause))]
    Terminal {
        mandate: MandateId,
        status: Status,
        /// The ancestor whose end made this one terminal, when not itself.
        cause: Option<MandateId>,
    },
    /// The mandate is not effectively active: a token asked for one that is
    /// paused (here or above), or an approval requested, decided or used
    /// under one that is paused or ended.
    #[error("mandate {mandate} is {status}, not active{}", cause_suffix(*mandate, *cause))]
    NotActive {
        mandate: MandateId,
        status: Status,
        /// The ancestor whose status makes this one inactive, when not itself.
        cause: Option<MandateId>,
    },
    /// A token asked for a mandate none of whose grants every mandate above
    /// it still grants (an ancestor was narrowed): it holds no authority.
    #[error("mandate {mandate} holds no authority: none of its grants is still granted by every mandate above it")]
    NoAuthority { mandate: MandateId },
    /// Pause of a mandate that is already paused.
    #[error("mandate {mandate} is already paused")]
    AlreadyPaused { mandate: MandateId },
    /// Resume of a mandate that is not paused on its own.
    #[error("mandate {mandate} is not paused (its own status is {status})")]
    NotPaused { mandate: MandateId, status: Status },
    /// Expiry before `not_after`.
    #[error("mandate {mandate} does not expire before {not_after}")]
    NotYetExpired {
        mandate: MandateId,
        not_after: DateTime<Utc>,
    },
    /// A mission-complete for a tree of another mission.
    #[error("tree {tree} does not serve mission {mission_ref:?}")]
    MissionMismatch { tree: TreeId, mission_ref: String },
    /// Issuing for a mission that was already completed.
    #[error("mission {mission_ref:?} is already completed")]
    MissionCompleted { mission_ref: String },
    /// An event or command of a schema version this build does not know.
    #[error("unknown schema version {actual} of {what} (this build reads {supported})")]
    UnknownVersion {
        what: &'static str,
        actual: u64,
        supported: u32,
    },
    /// An event or command type this build does not know.
    #[error("unknown {what} type {actual:?}")]
    UnknownType { what: &'static str, actual: String },
    /// A document that does not parse. The message quotes the decoder's
    /// reason bounded (a hostile value in it is cut in the middle).
    #[error("malformed {what}: {}", super::ids::bound_message(.reason))]
    Malformed { what: &'static str, reason: String },
    /// A command id this tree has seen, with different content.
    #[error("command id {command_id} was already used for another command")]
    CommandIdReused { command_id: CommandId },
    /// Authority over a mandate comes strictly from above it: an agent may
    /// not supervise a mandate and also hold that mandate or one below it.
    #[error("agent {agent} may not supervise mandate {supervised} and hold mandate {held} at or below it")]
    SupervisorBelow {
        agent: AgentId,
        supervised: MandateId,
        held: MandateId,
    },
    /// A pause is lifted only by the actor that set it or by authority above
    /// that actor.
    #[error("{actor} may not lift the pause on mandate {mandate}: it was set by {paused_by}, and only that actor or authority above it may lift it")]
    PausedFromAbove {
        mandate: MandateId,
        actor: String,
        paused_by: String,
    },
    /// A command from outside the engine names an actor only the engine
    /// itself may use (expiry scheduler, mission intake).
    #[error("actor {actor} is reserved for the engine itself and is not accepted from outside it")]
    ReservedActor { actor: String },
    /// A grant to an agent that is blocked (deprovisioned) in the tenant.
    #[error("agent {agent} is blocked in this tenant: no mandate may be granted to it until an administrator lifts the block")]
    AgentBlocked { agent: AgentId },
    /// A root granted by a principal that is blocked (offboarded) in the tenant.
    #[error("principal {principal} is blocked in this tenant: it may grant no mandate until an administrator lifts the block")]
    PrincipalBlocked { principal: PrincipalId },
    /// A registry command (block or unblock) by an actor other than a tenant
    /// administrator.
    #[error("{actor} may not {verb}: only a tenant administrator may")]
    RegistryForbidden { actor: String, verb: &'static str },
    /// A key command on a key the actor does not own, by an actor who is
    /// not a tenant administrator.
    #[error("{actor} may not {verb} key {key_id} of {owner}: only its owner or a tenant administrator may")]
    KeyForbidden {
        actor: String,
        verb: &'static str,
        key_id: KeyId,
        owner: KeyOwner,
    },
    /// A key id already registered in the tenant (even if since revoked),
    /// or configured by the operator: key ids are never reused.
    #[error("key id {key_id} is already taken in this tenant (key ids are never reused)")]
    KeyIdTaken { key_id: KeyId },
    /// No key of that id is registered in the tenant.
    #[error("no key {key_id} is registered in this tenant")]
    KeyNotFound { key_id: KeyId },
    /// The key is configured by the operator (the auth file), not
    /// registered: it is retired by removing it from the configuration.
    #[error("key {key_id} is configured by the operator, not registered: remove it from the auth configuration to retire it")]
    KeyConfigured { key_id: KeyId },
    /// Revoking (or rotating) a key that is already revoked.
    #[error("key {key_id} is already revoked")]
    KeyAlreadyRevoked { key_id: KeyId },
    /// Lifting a block that is not in place.
    #[error("{kind} {id} is not blocked")]
    NotBlocked { kind: &'static str, id: String },
    /// The tree's stream holds a record that does not decode or breaks its
    /// chain: nothing is granted or changed until an administrator resolves it.
    #[error("tree {tree} is quarantined: the record at log position {position} is corrupt")]
    Quarantined { tree: TreeId, position: u64 },
    /// A quarantine resolution for a tree that is not quarantined, or that
    /// names another position than the quarantine's.
    #[error("tree {tree} is not quarantined at log position {position}")]
    NotQuarantined { tree: TreeId, position: u64 },
    /// The tree holds an event of a newer schema version than this instance
    /// reads: it cannot answer for the tree (a newer instance can). Not a
    /// quarantine.
    #[error("tree {tree} has an event of schema version {version} at log position {position}; this instance reads {supported}")]
    TreeTooNew {
        tree: TreeId,
        position: u64,
        version: u64,
        supported: u32,
    },
    /// The event log no longer holds acknowledged records of the tree: its
    /// head in the log is older than the one this instance's projection
    /// recorded (a stream deleted and created again, a purge, a server that
    /// lost writes). Nothing is granted or changed on the tree until an
    /// operator accepts the loss.
    #[error("the event log went backwards for tree {tree}: the projection recorded its head at log position {recorded}, the log holds it only up to {found}; nothing is granted or changed on it until an operator accepts the loss (`mandate rebuild --accept-log-loss`)")]
    LogWentBackwards {
        tree: TreeId,
        recorded: u64,
        found: u64,
    },
    /// A command from outside uses a command id of the kind only the engine
    /// derives for its own writes (UUID version 8).
    #[error("command id {command_id} is a version 8 UUID, reserved for ids the engine derives; use a random (v4) or time-ordered (v7) UUID")]
    ReservedCommandId { command_id: CommandId },
    /// The body names another tenant than the subject it was sent on
    /// (whether or not the command's tree exists yet).
    #[error("the command names tenant {body_tenant} but was sent on a subject of tenant {subject_tenant}")]
    TenantMismatch {
        subject_tenant: TenantId,
        body_tenant: TenantId,
    },
    /// An approval request for an action that needs none: the check allows it.
    #[error("action {action:?} under mandate {mandate} needs no approval: no step-up pattern of its chain covers it")]
    ApprovalNotRequired { mandate: MandateId, action: String },
    /// A request some link of the chain does not allow.
    #[error(
        "action {action:?} on resource {resource:?} is outside the scope of mandate {mandate}"
    )]
    OutOfScope {
        mandate: MandateId,
        action: String,
        resource: String,
    },
    /// No such approval under this mandate.
    #[error("approval {approval} not found under this mandate")]
    UnknownApproval { approval: uuid::Uuid },
    /// An approval id already requested in this tree.
    #[error("approval {approval} already exists")]
    ApprovalExists { approval: uuid::Uuid },
    /// A decision on an approval that is already decided.
    #[error("approval {approval} is already {state}")]
    ApprovalDecided {
        approval: uuid::Uuid,
        state: &'static str,
    },
    /// The approval has not been granted (yet).
    #[error("approval {approval} is pending: the approver has not granted it")]
    ApprovalPending { approval: uuid::Uuid },
    /// The approver denied the approval: it can never be used.
    #[error("approval {approval} was denied")]
    ApprovalDenied { approval: uuid::Uuid },
    /// The approval was used once already: it is single-use.
    #[error("approval {approval} was already used: an approval is single-use")]
    ApprovalUsed { approval: uuid::Uuid },
    /// The approval's lifetime is over.
    #[error("approval {approval} expired at {expires_at}")]
    ApprovalExpired {
        approval: uuid::Uuid,
        expires_at: DateTime<Utc>,
    },
    /// The approval was granted for another request.
    #[error("approval {approval} was granted for another {field}")]
    ApprovalMismatch {
        approval: uuid::Uuid,
        field: &'static str,
    },
}

fn cause_suffix(mandate: MandateId, cause: Option<MandateId>) -> String {
    match cause {
        Some(c) if c != mandate => format!(" (because ancestor {c} ended)"),
        _ => String::new(),
    }
}

/// The wire code of an error: stable, snake_case, one per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidInput,
    NotFound,
    Conflict,
    Forbidden,
    Terminal,
    InvalidState,
    Unavailable,
    Internal,
    /// A policy refusal: the command asks for more authority than its
    /// source holds (scope, `not_after` or depth). Not a syntax error.
    Widens,
    /// The tree is quarantined (see `DomainError::Quarantined`).
    Quarantined,
}

impl DomainError {
    /// The stable code for this error on the wire.
    pub fn code(&self) -> ErrorCode {
        use DomainError::*;
        match self {
            ScopeWidens { .. }
            | NarrowWidens { .. }
            | NotAfterWidens { .. }
            | DepthWidens { .. } => ErrorCode::Widens,
            InvalidId { .. }
            | InvalidScope { .. }
            | InvalidField { .. }
            | NotAfterInPast { .. }
            | UnknownVersion { .. }
            | UnknownType { .. }
            | Malformed { .. }
            | ReservedActor { .. }
            | ReservedCommandId { .. } => ErrorCode::InvalidInput,
            MandateNotFound { .. } | TreeNotFound { .. } => ErrorCode::NotFound,
            TreeExists { .. } | CommandIdReused { .. } => ErrorCode::Conflict,
            CrossTenant { .. }
            | NotGrantee { .. }
            | NotAuthorized { .. }
            | MissionForbidden { .. }
            | NotAuthenticated { .. }
            | SupervisorBelow { .. }
            | PausedFromAbove { .. } => ErrorCode::Forbidden,
            Terminal { .. } => ErrorCode::Terminal,
            ParentNotActive { .. }
            | DepthExhausted { .. }
            | AlreadyPaused { .. }
            | NotPaused { .. }
            | NotActive { .. }
            | NoAuthority { .. }
            | NotYetExpired { .. }
            | MissionMismatch { .. }
            | MissionCompleted { .. }
            | NotQuarantined { .. } => ErrorCode::InvalidState,
            Quarantined { .. } => ErrorCode::Quarantined,
            TreeTooNew { .. } | LogWentBackwards { .. } => ErrorCode::Unavailable,
            AgentBlocked { .. } | PrincipalBlocked { .. } | RegistryForbidden { .. } => {
                ErrorCode::Forbidden
            }
            NotBlocked { .. } => ErrorCode::InvalidState,
            KeyForbidden { .. } => ErrorCode::Forbidden,
            KeyIdTaken { .. } => ErrorCode::Conflict,
            KeyNotFound { .. } => ErrorCode::NotFound,
            KeyConfigured { .. } | KeyAlreadyRevoked { .. } => ErrorCode::InvalidState,
            TenantMismatch { .. } => ErrorCode::Forbidden,
            OutOfScope { .. } | ApprovalMismatch { .. } => ErrorCode::Forbidden,
            UnknownApproval { .. } => ErrorCode::NotFound,
            ApprovalExists { .. } => ErrorCode::Conflict,
            ApprovalNotRequired { .. }
            | ApprovalDecided { .. }
            | ApprovalPending { .. }
            | ApprovalDenied { .. }
            | ApprovalUsed { .. }
            | ApprovalExpired { .. } => ErrorCode::InvalidState,
        }
    }

    /// The machine-readable kind of this refusal: the snake_case name of the
    /// variant, stable on the wire (`ErrorBody::reason`), so clients tell
    /// refusals that share a code apart without parsing messages.
    pub fn reason(&self) -> &'static str {
        use DomainError::*;
        match self {
            InvalidId { .. } => "invalid_id",
            InvalidScope { .. } => "invalid_scope",
            InvalidField { .. } => "invalid_field",
            MandateNotFound { .. } => "mandate_not_found",
            TreeNotFound { .. } => "tree_not_found",
            TreeExists { .. } => "tree_exists",
            CrossTenant { .. } => "cross_tenant",
            ParentNotActive { .. } => "parent_not_active",
            ScopeWidens { .. } => "scope_widens",
            NarrowWidens { .. } => "narrow_widens",
            NotAfterWidens { .. } => "not_after_widens",
            NotAfterInPast { .. } => "not_after_in_past",
            DepthExhausted { .. } => "depth_exhausted",
            DepthWidens { .. } => "depth_widens",
            NotGrantee { .. } => "not_grantee",
            NotAuthorized { .. } => "not_authorized",
            MissionForbidden { .. } => "mission_forbidden",
            NotAuthenticated { .. } => "not_authenticated",
            Terminal { .. } => "terminal",
            AlreadyPaused { .. } => "already_paused",
            NotPaused { .. } => "not_paused",
            NotActive { .. } => "not_active",
            NoAuthority { .. } => "no_authority",
            NotYetExpired { .. } => "not_yet_expired",
            MissionMismatch { .. } => "mission_mismatch",
            MissionCompleted { .. } => "mission_completed",
            UnknownVersion { .. } => "unknown_version",
            UnknownType { .. } => "unknown_type",
            Malformed { .. } => "malformed",
            CommandIdReused { .. } => "command_id_reused",
            SupervisorBelow { .. } => "supervisor_below",
            PausedFromAbove { .. } => "paused_from_above",
            ReservedActor { .. } => "reserved_actor",
            AgentBlocked { .. } => "agent_blocked",
            PrincipalBlocked { .. } => "principal_blocked",
            RegistryForbidden { .. } => "registry_forbidden",
            NotBlocked { .. } => "not_blocked",
            KeyForbidden { .. } => "key_forbidden",
            KeyIdTaken { .. } => "key_id_taken",
            KeyNotFound { .. } => "key_not_found",
            KeyConfigured { .. } => "key_configured",
            KeyAlreadyRevoked { .. } => "key_already_revoked",
            Quarantined { .. } => "quarantined",
            NotQuarantined { .. } => "not_quarantined",
            TreeTooNew { .. } => "tree_too_new",
            LogWentBackwards { .. } => "log_went_backwards",
            ReservedCommandId { .. } => "reserved_command_id",
            TenantMismatch { .. } => "tenant_mismatch",
            ApprovalNotRequired { .. } => "approval_not_required",
            OutOfScope { .. } => "out_of_scope",
            UnknownApproval { .. } => "unknown_approval",
            ApprovalExists { .. } => "approval_exists",
            ApprovalDecided { .. } => "approval_decided",
            ApprovalPending { .. } => "approval_pending",
            ApprovalDenied { .. } => "approval_denied",
            ApprovalUsed { .. } => "approval_used",
            ApprovalExpired { .. } => "approval_expired",
            ApprovalMismatch { .. } => "approval_mismatch",
        }
    }
}
