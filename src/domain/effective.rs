//! Effective status: a mandate combined with all its ancestors and the clock.
//!
//! If any mandate on the chain is terminal (by an event, or because its
//! `not_after` has passed), the mandate is terminal with that kind, and the
//! cause names the mandate that ended first. Otherwise, if any is paused, it is
//! paused. Otherwise it is its own status. Resuming an ancestor does not resume
//! a descendant paused on its own, because each mandate keeps its own status.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::DomainError;
use super::ids::MandateId;
use super::model::{Actor, Tree};
use super::status::Status;

/// Which mandate's own transition set the effective status, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cause {
    /// The mandate whose own status is the cause (may be the mandate itself).
    pub mandate: MandateId,
    pub status: Status,
    pub at: DateTime<Utc>,
    /// Who ended or paused it; `None` when only the clock did (not_after passed
    /// and no expiry event is written yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A mandate's effective status at some moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Effective {
    pub status: Status,
    /// Set whenever `status` is not active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl Effective {
    /// True when checks under the mandate may be allowed.
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }
}

impl Tree {
    /// The effective status of `mandate` at `now` (see the module docs).
    pub fn effective(
        &self,
        mandate: MandateId,
        now: DateTime<Utc>,
    ) -> Result<Effective, DomainError> {
        let chain = self.chain(mandate);
        if chain.is_empty() {
            return Err(DomainError::MandateNotFound { mandate });
        }
        let mut terminal: Option<Cause> = None;
        let mut paused: Option<Cause> = None;
        // Root first, so on equal times the cause nearest the root wins.
        for m in &chain {
            let own = m.transition.as_ref().map(|t| Cause {
                mandate: m.id,
                status: t.status,
                at: t.at,
                by: Some(t.by.clone()),
                reason: t.reason.clone(),
            });
            let candidate = match own {
                Some(c) if c.status.is_terminal() => Some(c),
                _ if m.not_after <= now => Some(Cause {
                    mandate: m.id,
                    status: Status::Expired,
                    at: m.not_after,
                    by: None,
                    reason: Some("not_after passed".into()),
                }),
                Some(c) => {
                    if paused.as_ref().is_none_or(|p| c.at < p.at) {
                        paused = Some(c);
                    }
                    None
                }
                None => None,
            };
            if let Some(c) = candidate {
                if terminal.as_ref().is_none_or(|t| c.at < t.at) {
                    terminal = Some(c);
                }
            }
        }
        Ok(match (terminal, paused) {
            (Some(c), _) | (None, Some(c)) => Effective {
                status: c.status,
                cause: Some(c),
            },
            (None, None) => Effective {
                status: Status::Active,
                cause: None,
            },
        })
    }
}
