//! The pure domain: ids, scopes, the mandate tree aggregate, the status
//! machine, effective status and `authorize`. No I/O, no async, no NATS, no
//! sled: everything here is a function of its inputs.

pub mod error;
pub mod ids;
pub mod status;

pub use error::{DomainError, ErrorCode};
pub use ids::{AgentId, CommandId, EventId, MandateId, PrincipalId, TenantId, TreeId};
pub use status::Status;
