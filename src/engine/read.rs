//! The read path behind the queries: resolving trees and mandates, the
//! holds that refuse a read, summaries, and recording checks for audit.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::{Decision, DomainError, MandateId, TenantId, Tree, TreeId, SCHEMA_VERSION};
use serde::Serialize;
use serde_json::value::RawValue;

#[cfg(doc)]
use crate::protocol::AuditRecord;
use crate::protocol::{Consistency, MandateSummary, TreeQuery};
use crate::store::TreeSnapshot;

use super::{Engine, EngineError};

impl Engine {
    pub(super) fn tree_id_of(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<TreeId, EngineError> {
        self.inner
            .store
            .tree_of(tenant, mandate)?
            .ok_or_else(|| EngineError::from(DomainError::MandateNotFound { mandate }))
    }

    /// Why this instance may not grant from a tree now, if it may not: the
    /// tree is quarantined, or holds events newer than this build reads.
    /// Holds whatever `at` a read names: a quarantined tree's past is an
    /// auditor's question (`history`), not a grant.
    pub(super) fn hold(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<DomainError>, EngineError> {
        if let Some(held) = self.log_hold(tenant, tree)? {
            return Ok(Some(held));
        }
        if let Some(u) = self.inner.store.unsupported(tenant, tree)? {
            return Ok(Some(DomainError::TreeTooNew {
                tree,
                position: u.position,
                version: u.version,
                supported: SCHEMA_VERSION,
            }));
        }
        let quarantine = self
            .inner
            .store
            .head(tenant, tree)?
            .and_then(|s| s.tree.quarantine.clone());
        Ok(quarantine.map(|q| DomainError::Quarantined {
            tree,
            position: q.position,
        }))
    }

    /// The tree of `mandate` for a read that grants (`status`, `chain`),
    /// brought up to the log first as `level` asks, as of `at`, and the
    /// moment `at` stands for: refused while the tree is held (see
    /// [`Engine::hold`]), at every level, or if the mandate did not exist
    /// yet at that moment.
    pub(super) async fn mandate_tree(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
        level: Consistency,
    ) -> Result<(Arc<TreeSnapshot>, DateTime<Utc>), EngineError> {
        self.freshen(tenant, None, Some(mandate), level).await?;
        let tree_id = self.tree_id_of(tenant, mandate)?;
        if let Some(refusal) = self.hold(tenant, tree_id)? {
            return Err(refusal.into());
        }
        let snap = self.tree_at(tenant, tree_id, Some(mandate), at)?;
        // As of `at` the mandate may not have been issued yet.
        snap.tree.get(mandate)?;
        Ok((snap, self.moment(at)))
    }

    pub(super) fn resolve_tree(
        &self,
        tenant: &TenantId,
        q: &TreeQuery,
    ) -> Result<TreeId, EngineError> {
        match (q.tree, q.mandate) {
            (Some(t), None) => Ok(t),
            // Both named: they must agree, or the answer would be about the
            // tree while the caller asked about a mandate outside it (a
            // history of no events, for one).
            (Some(t), Some(m)) => {
                if self.tree_id_of(tenant, m)? != t {
                    return Err(EngineError::invalid(format!(
                        "mandate {m} is not in tree {t}: name the tree, the mandate, or both of one tree"
                    )));
                }
                Ok(t)
            }
            (None, Some(m)) => self.tree_id_of(tenant, m),
            (None, None) => Err(EngineError::invalid("name a tree or a mandate")),
        }
    }

    /// Records a check's decision in the audit, `json` being the decision
    /// as [`decision_json`] wrote it: over NATS in the outbox, before the
    /// answer; in process in the store.
    pub(super) fn record_audit(
        &self,
        tenant: &TenantId,
        decision: &Decision,
        json: &RawValue,
        actor: Option<&crate::domain::Actor>,
    ) {
        let record = AuditRecordOut {
            schema_version: SCHEMA_VERSION,
            decision: json,
            actor,
            principal: decision.chain.first().map(|l| &l.on_behalf_of),
            recorded_at: self.now(),
            instance: &self.inner.config.instance,
        };
        let result = match &self.inner.nats {
            // In the outbox before the reply; the stream stores it off
            // the reply path.
            Some(_) => self.inner.audit.send(tenant, decision.mandate, &record),
            None => self
                .inner
                .store
                .record_audit(tenant, decision.mandate, &record)
                .map_err(EngineError::from),
        };
        if let Err(e) = result {
            self.inner.audit.lost(decision.mandate, &e);
        }
    }
}

/// An [`AuditRecord`] as it is written: the same fields in the same order,
/// with the decision already encoded (the reply to the check carries the
/// same bytes).
#[derive(Serialize)]
pub(super) struct AuditRecordOut<'a> {
    schema_version: u32,
    decision: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a crate::domain::Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a crate::domain::PrincipalId>,
    #[serde(serialize_with = "crate::domain::authorize::rfc3339::serialize")]
    recorded_at: DateTime<Utc>,
    instance: &'a str,
}

/// A decision's JSON, once, for both its audit record and its reply.
pub(super) fn decision_json(decision: &Decision) -> Box<RawValue> {
    // A `Decision` is plain data: encoding it cannot fail.
    serde_json::value::to_raw_value(decision).expect("decisions serialize")
}

/// One mandate as a list or a tree shows it, effective at `now`.
pub(super) fn summary(
    tree: &Tree,
    mandate: MandateId,
    now: DateTime<Utc>,
) -> Result<MandateSummary, EngineError> {
    let m = tree.get(mandate)?;
    Ok(MandateSummary {
        mandate,
        tree: tree.id,
        parent: m.parent,
        grantee: m.grantee.clone(),
        principal: m.principal.clone(),
        status: m.status,
        effective: tree.effective(mandate, now)?,
        not_after: m.not_after,
        quarantined: tree.quarantine.as_ref().map(|q| q.position),
    })
}
