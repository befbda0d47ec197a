//! Commands: what callers ask the tree to do. Decoding validates every field,
//! so a command that decodes is well-formed; `decide` checks it against state.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::approval::{DecideApproval, RequestApproval, UseApproval};
use super::error::DomainError;
use super::event::{check_type, check_version, SCHEMA_VERSION};
use super::ids::{AgentId, CommandId, MandateId, PrincipalId, TenantId};
use super::keys::{RegisterKey, RevokeKey, RotateKey};
use super::model::{
    check_text, check_time, refuse_control, Actor, Mission, MissionRef, MAX_DEPTH, MAX_LIST_LEN,
};
use super::scope::{ActionPattern, Scope};

fn default_version() -> u32 {
    SCHEMA_VERSION
}

fn default_depth() -> u32 {
    3
}

/// The JSON Schema pattern of a command id from outside the engine: any
/// UUID but version 8, which is reserved for the ids the engine derives.
pub(crate) const EXTERNAL_COMMAND_ID_PATTERN: &str =
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-79a-fA-F][0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// A command with its envelope.
// No field beyond the envelope's and the command's is accepted (the decoder
// refuses unknown fields), and the schema says so.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("unevaluatedProperties" = false))]
pub struct CommandEnvelope {
    /// Idempotency key: a command id is applied at most once, and a retry
    /// with the same id returns the original result. Any UUID but version 8,
    /// which is reserved for the ids the engine derives for its own writes.
    #[schemars(extend("pattern" = EXTERNAL_COMMAND_ID_PATTERN))]
    pub command_id: CommandId,
    pub tenant: TenantId,
    /// Who asks. Taken from the authenticated connection where the tenant
    /// requires it.
    pub actor: Actor,
    /// Free correlation id carried into the events, for tracing: at most
    /// 128 bytes, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub correlation_id: Option<String>,
    /// Version of this document's schema; this build reads 1.
    #[serde(default = "default_version")]
    #[schemars(range(min = 1, max = 1))]
    pub schema_version: u32,
    #[serde(flatten)]
    pub command: Command,
}

/// Every command the tree aggregate handles (the registry commands act on
/// the tenant's registry, see [`crate::domain::TreeId::registry`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A principal grants a root mandate to an agent for a mission.
    Issue(Issue),
    /// The holder of a mandate grants a narrower one to another agent.
    Delegate(Delegate),
    /// Suspend a mandate and, effectively, everything below it.
    Pause(Change),
    /// Lift a pause on a mandate.
    Resume(Change),
    /// End a mandate for good; its grantee may relinquish it this way.
    Revoke(Change),
    /// End a mandate whose `not_after` has passed.
    Expire(Target),
    /// Mark a mandate's task done: ends it like a revoke, as `completed`.
    Complete(Change),
    /// A mission is complete: its root (and so the tree) is completed.
    CompleteMission(CompleteMission),
    /// Replace a mandate's scope by a narrower one.
    Narrow(Narrow),
    /// Set a new `not_after`, never past any ancestor's.
    Renew(Renew),
    /// An administrator's decision on a quarantined tree: restore it or end
    /// it for good, skipping the bad record (which stays in the log).
    ResolveQuarantine(ResolveQuarantine),
    /// Tenant registry: refuse every new mandate to this agent (written by
    /// `revoke_agent` before its sweep). Administrators only.
    BlockAgent(AgentBlock),
    /// Tenant registry: lift an agent's block. Administrators only.
    UnblockAgent(AgentBlock),
    /// Tenant registry: refuse every new root granted by this principal
    /// (written by `revoke_principal` before its sweep). Administrators only.
    BlockPrincipal(PrincipalBlock),
    /// Tenant registry: lift a principal's block. Administrators only.
    UnblockPrincipal(PrincipalBlock),
    /// Tenant registry: register a signing key. An administrator registers
    /// any actor's key; any other actor only its own.
    RegisterKey(RegisterKey),
    /// Tenant registry: revoke a signing key for good (its owner or an
    /// administrator).
    RevokeKey(RevokeKey),
    /// Tenant registry: register a new key for the owner of a key and revoke
    /// the old one, in one commit (its owner or an administrator).
    RotateKey(RotateKey),
    /// A mandate's grantee asks for step-up approval of one request.
    RequestApproval(RequestApproval),
    /// The tree's principal grants a pending approval.
    Approve(DecideApproval),
    /// The tree's principal denies a pending approval.
    DenyApproval(DecideApproval),
    /// The grantee uses a granted approval, once: the engine writes the use.
    UseApproval(UseApproval),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentBlock {
    pub agent: AgentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalBlock {
    pub principal: PrincipalId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Issue {
    pub principal: PrincipalId,
    pub grantee: AgentId,
    pub mission: Mission,
    pub scope: Scope,
    pub not_after: DateTime<Utc>,
    /// How many levels below this mandate may still be delegated (default 3, at most 32).
    #[serde(default = "default_depth")]
    #[schemars(range(max = 32))]
    pub depth: u32,
    /// Actions that need step-up approval.
    #[serde(default)]
    pub step_up: Vec<ActionPattern>,
    /// Agents that may pause, resume or revoke anything in this tree.
    #[serde(default)]
    pub supervisors: Vec<AgentId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    pub parent: MandateId,
    pub grantee: AgentId,
    pub scope: Scope,
    /// Defaults to the earliest `not_after` on the parent's chain (the
    /// parent's, unless an ancestor of it ends sooner), never past it.
    #[serde(default)]
    pub not_after: Option<DateTime<Utc>>,
    /// Defaults to one less than the parent's remaining depth.
    #[serde(default)]
    pub depth: Option<u32>,
    #[serde(default)]
    pub step_up: Vec<ActionPattern>,
    #[serde(default)]
    pub supervisors: Vec<AgentId>,
}

/// A status change on one mandate, with an optional reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub mandate: MandateId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub mandate: MandateId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteMission {
    pub mission_ref: MissionRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Narrow {
    pub mandate: MandateId,
    pub scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    pub mandate: MandateId,
    pub not_after: DateTime<Utc>,
}

/// What an administrator does with a quarantined tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The bad record is skipped and the tree grants again from its last
    /// good state.
    Restore,
    /// The bad record is skipped and the tree ends for good (its root is
    /// revoked, so every mandate in it is terminal).
    End,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveQuarantine {
    /// Any mandate of the tree (usually the root, whose id is the tree's).
    pub mandate: MandateId,
    /// The log position of the bad record, as the quarantine names it.
    pub position: u64,
    pub action: Resolution,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Declares, from one table of an enum's variants and their wire names, the
/// list of names a decoder accepts and the method that names a value, so the
/// two cannot disagree: the method's match is exhaustive, so a variant left
/// out of the table does not compile.
macro_rules! wire_names {
    (
        $(#[$list_doc:meta])* $list:ident,
        $(#[$fn_doc:meta])* $ty:ident::$method:ident {
            $($variant:ident => $name:literal,)+
        }
    ) => {
        $(#[$list_doc])*
        pub const $list: &[&str] = &[$($name),+];

        impl $ty {
            $(#[$fn_doc])*
            pub fn $method(&self) -> &'static str {
                match self {
                    $($ty::$variant(_) => $name,)+
                }
            }
        }
    };
}
pub(crate) use wire_names;

wire_names! {
    /// The names of command types this build knows, as on the wire.
    COMMAND_TYPES,
    /// The wire name of this command (also the `<verb>` of its subject).
    Command::verb {
        Issue => "issue",
        Delegate => "delegate",
        Pause => "pause",
        Resume => "resume",
        Revoke => "revoke",
        Expire => "expire",
        Complete => "complete",
        CompleteMission => "complete_mission",
        Narrow => "narrow",
        Renew => "renew",
        BlockAgent => "block_agent",
        UnblockAgent => "unblock_agent",
        BlockPrincipal => "block_principal",
        UnblockPrincipal => "unblock_principal",
        RegisterKey => "register_key",
        RevokeKey => "revoke_key",
        RotateKey => "rotate_key",
        ResolveQuarantine => "resolve_quarantine",
        RequestApproval => "request_approval",
        Approve => "approve",
        DenyApproval => "deny_approval",
        UseApproval => "use_approval",
    }
}

impl Command {
    /// The mandate this command acts on, if it names one (the parent for a
    /// delegation). Registry commands name none.
    pub fn target(&self) -> Option<MandateId> {
        match self {
            Command::Issue(_) | Command::CompleteMission(_) => None,
            Command::Delegate(d) => Some(d.parent),
            Command::Pause(c) | Command::Resume(c) | Command::Revoke(c) | Command::Complete(c) => {
                Some(c.mandate)
            }
            Command::Expire(t) => Some(t.mandate),
            Command::Narrow(n) => Some(n.mandate),
            Command::Renew(r) => Some(r.mandate),
            Command::BlockAgent(_)
            | Command::UnblockAgent(_)
            | Command::BlockPrincipal(_)
            | Command::UnblockPrincipal(_)
            | Command::RegisterKey(_)
            | Command::RevokeKey(_)
            | Command::RotateKey(_) => None,
            Command::ResolveQuarantine(r) => Some(r.mandate),
            Command::RequestApproval(r) => Some(r.mandate),
            Command::Approve(d) | Command::DenyApproval(d) => Some(d.mandate),
            Command::UseApproval(u) => Some(u.mandate),
        }
    }

    /// The approval this command names, if it is an approval command.
    pub fn approval(&self) -> Option<uuid::Uuid> {
        match self {
            Command::RequestApproval(r) => Some(r.approval),
            Command::Approve(d) | Command::DenyApproval(d) => Some(d.approval),
            Command::UseApproval(u) => Some(u.approval),
            _ => None,
        }
    }
}

fn check_list<T>(field: &'static str, list: &[T]) -> Result<(), DomainError> {
    if list.len() > MAX_LIST_LEN {
        return Err(DomainError::InvalidField {
            field,
            reason: format!(
                "holds {} entries, at most {MAX_LIST_LEN} allowed",
                list.len()
            ),
        });
    }
    Ok(())
}

impl CommandEnvelope {
    /// Hex SHA-256 over the canonical JSON (sorted keys, no whitespace) of
    /// what the command asks: tenant, actor and command. The command id,
    /// correlation id and schema version are left out, so a faithful retry
    /// has the same digest and a reused id with other content does not.
    pub fn digest(&self) -> String {
        let value = serde_json::json!({
            "tenant": self.tenant,
            "actor": self.actor,
            "command": self.command,
        });
        super::event::hex_sha256(&serde_json::to_vec(&value).expect("commands serialize"))
    }

    /// Decodes a command from JSON, refusing unknown versions and types with
    /// their own errors, and anything malformed with a message naming it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DomainError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| DomainError::Malformed {
                what: "command",
                reason: e.to_string(),
            })?;
        let obj = value.as_object().ok_or_else(|| DomainError::Malformed {
            what: "command",
            reason: "expected a JSON object".into(),
        })?;
        if let Some(v) = obj.get("schema_version") {
            check_version("command", v)?;
        }
        check_type("command", obj.get("type"), COMMAND_TYPES)?;
        // Decoded from the bytes, not from `value`: a JSON object keeps only
        // the last of two equal keys, while the typed decoder refuses the
        // second, so a body that names a field twice (read one way by a proxy
        // and another by the engine) is malformed.
        let cmd: CommandEnvelope =
            serde_json::from_slice(bytes).map_err(|e| DomainError::Malformed {
                what: "command",
                reason: e.to_string(),
            })?;
        cmd.validate()?;
        Ok(cmd)
    }

    /// Checks bounds that serde does not: text lengths and list sizes.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(DomainError::UnknownVersion {
                what: "command",
                actual: u64::from(self.schema_version),
                supported: SCHEMA_VERSION,
            });
        }
        check_correlation_id(self.correlation_id.as_deref())?;
        match &self.command {
            Command::Issue(i) => {
                check_text("mission.purpose", &i.mission.purpose, true)?;
                check_time("not_after", i.not_after)?;
                if i.depth > MAX_DEPTH {
                    return Err(DomainError::InvalidField {
                        field: "depth",
                        reason: format!("is {}, at most {MAX_DEPTH} allowed", i.depth),
                    });
                }
                check_list("step_up", &i.step_up)?;
                check_list("supervisors", &i.supervisors)?;
            }
            Command::Delegate(d) => {
                if let Some(t) = d.not_after {
                    check_time("not_after", t)?;
                }
                check_list("step_up", &d.step_up)?;
                check_list("supervisors", &d.supervisors)?;
            }
            Command::Pause(c) | Command::Resume(c) | Command::Revoke(c) | Command::Complete(c) => {
                if let Some(r) = &c.reason {
                    check_text("reason", r, false)?;
                }
            }
            Command::BlockAgent(AgentBlock { reason, .. })
            | Command::UnblockAgent(AgentBlock { reason, .. })
            | Command::BlockPrincipal(PrincipalBlock { reason, .. })
            | Command::UnblockPrincipal(PrincipalBlock { reason, .. }) => {
                if let Some(r) = reason {
                    check_text("reason", r, false)?;
                }
            }
            Command::ResolveQuarantine(r) => {
                if let Some(reason) = &r.reason {
                    check_text("reason", reason, false)?;
                }
            }
            Command::RequestApproval(c) => super::approval::validate_request(c)?,
            Command::Approve(c) | Command::DenyApproval(c) => {
                super::approval::validate_decision(c)?
            }
            Command::UseApproval(c) => super::approval::validate_use(c)?,
            Command::RegisterKey(_) | Command::RevokeKey(_) | Command::RotateKey(_) => {
                super::keys::validate(&self.command)?
            }
            Command::Renew(r) => check_time("not_after", r.not_after)?,
            Command::Expire(_) | Command::CompleteMission(_) | Command::Narrow(_) => {}
        }
        Ok(())
    }
}

/// A command from outside the engine: the wire, an in-process client or any
/// library caller. It never carries an [`Actor::System`] actor, nor a command
/// id of the kind the engine derives for its own writes: both constructors
/// refuse them, so only the engine's own paths (expiry, mission intake) act
/// as the engine or write under its ids, and no caller can get past that by
/// calling the library instead of the service.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalCommand(CommandEnvelope);

impl ExternalCommand {
    /// Accepts a command from outside, refusing an actor reserved for the
    /// engine itself.
    pub fn new(cmd: CommandEnvelope) -> Result<Self, DomainError> {
        refuse_reserved_actor(&cmd.actor)?;
        refuse_reserved_command_id(cmd.command_id)?;
        Ok(Self(cmd))
    }

    /// Decodes a command from outside (see [`CommandEnvelope::from_json`]),
    /// refusing an actor reserved for the engine itself.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DomainError> {
        Self::new(CommandEnvelope::from_json(bytes)?)
    }

    /// The command.
    pub fn envelope(&self) -> &CommandEnvelope {
        &self.0
    }

    /// The command, for the engine to execute.
    pub fn into_envelope(self) -> CommandEnvelope {
        self.0
    }
}

impl TryFrom<CommandEnvelope> for ExternalCommand {
    type Error = DomainError;
    fn try_from(cmd: CommandEnvelope) -> Result<Self, DomainError> {
        Self::new(cmd)
    }
}

/// Longest accepted correlation id, in bytes.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// Checks a command's or bulk command's correlation id: at most
/// [`MAX_CORRELATION_ID_LEN`] bytes, no control characters.
pub fn check_correlation_id(correlation_id: Option<&str>) -> Result<(), DomainError> {
    let Some(c) = correlation_id else {
        return Ok(());
    };
    if c.len() > MAX_CORRELATION_ID_LEN {
        return Err(DomainError::InvalidField {
            field: "correlation_id",
            reason: format!("longer than {MAX_CORRELATION_ID_LEN} bytes"),
        });
    }
    refuse_control("correlation_id", c)
}

/// Refuses an actor only the engine itself may use, in anything that comes
/// from outside it (commands and bulk commands).
pub fn refuse_reserved_actor(actor: &Actor) -> Result<(), DomainError> {
    match actor {
        Actor::System(_) => Err(DomainError::ReservedActor {
            actor: actor.to_string(),
        }),
        Actor::Principal(_) | Actor::Agent(_) | Actor::Admin(_) => Ok(()),
    }
}

/// Refuses a command id only the engine itself derives (see
/// [`CommandId::derived`]), in anything that comes from outside it: such an
/// id, spent in advance, would block the engine's own write under it.
pub fn refuse_reserved_command_id(command_id: CommandId) -> Result<(), DomainError> {
    if command_id.is_reserved() {
        return Err(DomainError::ReservedCommandId { command_id });
    }
    Ok(())
}
