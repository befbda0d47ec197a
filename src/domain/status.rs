//! The status machine (DESIGN.md, Status machine).
//!
//! ```text
//! active <-> paused ; active|paused -> revoked|expired|completed (terminal)
//! ```
//! Terminal is absorbing: nothing leaves revoked, expired or completed.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A mandate's status, its own or effective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Paused,
    Revoked,
    Expired,
    Completed,
}

impl Status {
    /// Revoked, expired and completed are terminal: nothing leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Revoked | Status::Expired | Status::Completed)
    }

    /// The lowercase name used on the wire and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
            Status::Completed => "completed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
