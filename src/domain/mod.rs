//! The pure domain: ids, scopes, the mandate tree aggregate, the status
//! machine, effective status and `authorize`. No I/O, no async, no NATS, no
//! sled: everything here is a function of its inputs.
//!
//! The aggregate follows decide/apply: [`decide`] holds every business rule
//! and returns events or a typed refusal; [`apply`] folds an event into the
//! [`Tree`] and can't fail.

mod amend;
pub mod approval;
pub mod authorize;
pub mod command;
mod decide;
pub mod effective;
pub mod error;
pub mod event;
pub mod ids;
mod issue;
pub mod keys;
mod lifecycle;
pub mod model;
mod quarantine;
mod registry;
pub mod scope;
pub mod status;

pub use authorize::{authorize, ChainLink, Decision, DenyReason, Outcome};
pub use command::{Command, CommandEnvelope, ExternalCommand};
pub use decide::{decide, Facts};
pub use effective::{Cause, Effective};
pub use error::{DomainError, ErrorCode};
pub use event::{
    apply, apply_hashed, replay, verify_chain, verify_chain_with_head, verify_log, ChainFault,
    Event, EventBody, LogBreak, LoggedCommit, RecordedHead, VerifiedLog, SCHEMA_VERSION,
};
pub use ids::{AgentId, CommandId, EventId, MandateId, PrincipalId, TenantId, TreeId};
pub use issue::{delegated_id, root_tree_id};
pub use keys::{CommandSignature, KeyId, KeyOwner, RegisteredKey};
pub use model::{
    Actor, AppliedCommand, Block, Grantor, Mandate, Mission, MissionRef, Quarantine, Registry, Tree,
};
pub use scope::{covers, ActionPattern, Grant, ResourcePattern, Scope};
pub use status::Status;
