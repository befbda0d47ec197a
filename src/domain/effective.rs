//! Effective status: a mandate combined with all its ancestors and the clock.
//!
//! If any mandate on the chain is terminal (by an event, or because its
//! `not_after` has passed), the mandate is terminal with that kind, and the
//! cause names the mandate that ended first. Otherwise, if any is paused, it is
//! paused. Otherwise it is its own status. Resuming an ancestor does not resume
//! a descendant paused on its own, because each mandate keeps its own status.
//!
//! The same holds for authority: a mandate keeps its own scope and
//! `not_after`, but what it effectively holds is what every link of its
//! chain grants ([`Tree::effective_scope`], [`Tree::earliest_not_after_on_chain`]).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::DomainError;
use super::ids::MandateId;
use super::model::{Actor, Mandate, Tree};
use super::scope::{Grant, Scope};
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

impl Tree {
    /// The first grant of `scope` that some mandate on the chain ending at
    /// `link` does not cover, with that mandate: `link` itself first, then
    /// up to the root. `None` means every mandate on the chain covers every
    /// grant of `scope`, so a mandate below `link` holding `scope` states no
    /// more than the whole chain grants (an ancestor's narrowing counts).
    pub fn first_uncovered_on_chain<'a>(
        &self,
        link: MandateId,
        scope: &'a Scope,
    ) -> Option<(MandateId, &'a Grant)> {
        self.chain(link)
            .into_iter()
            .rev()
            .find_map(|m| m.scope.first_uncovered(scope).map(|g| (m.id, g)))
    }

    /// The earliest `not_after` on the chain ending at `link` and the mandate
    /// that sets it (the one nearest `link` on equal times): nothing below
    /// `link` may last longer. `None` for an unknown mandate.
    pub fn earliest_not_after_on_chain(
        &self,
        link: MandateId,
    ) -> Option<(MandateId, DateTime<Utc>)> {
        self.chain(link)
            .into_iter()
            .rev()
            .fold(None, |earliest, m| match earliest {
                Some((_, t)) if t <= m.not_after => earliest,
                _ => Some((m.id, m.not_after)),
            })
    }

    /// The grants `mandate` effectively holds ([`effective_grants`] of its
    /// chain); empty for an unknown mandate.
    pub fn effective_scope(&self, mandate: MandateId) -> Vec<Grant> {
        effective_grants(self.chain(mandate))
    }
}

/// The grants the last mandate of `chain` (root first) effectively holds:
/// each of its own grants kept only as far as every mandate above it
/// grants it. Conservative, never wider than what a check on the chain
/// allows: going up the chain, a grant covered by one of the ancestor's
/// grants is kept; otherwise the ancestor's grants it covers are kept in its
/// place (they are the narrower); otherwise it is dropped. Sorted, without
/// duplicates; empty when the chain grants nothing the mandate holds (or
/// `chain` is empty).
pub fn effective_grants<'a, I>(chain: I) -> Vec<Grant>
where
    I: IntoIterator<Item = &'a Mandate>,
    I::IntoIter: DoubleEndedIterator,
{
    let mut up = chain.into_iter().rev();
    let Some(own) = up.next() else {
        return Vec::new();
    };
    let mut grants: Vec<Grant> = own.scope.grants().to_vec();
    for ancestor in up {
        let held = ancestor.scope.grants();
        let mut kept = Vec::new();
        for g in &grants {
            if held.iter().any(|h| h.covers(g)) {
                kept.push(g.clone());
            } else {
                kept.extend(held.iter().filter(|h| g.covers(h)).cloned());
            }
        }
        kept.sort();
        kept.dedup();
        grants = kept;
    }
    grants
}
