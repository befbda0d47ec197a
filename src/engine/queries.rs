//! Queries and checks. Each takes an optional `at`: the answer is then
//! computed on the tree as it was at that moment, by replaying its events up
//! to it (the auditor's "at 14:05, was this agent still allowed?").

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::{
    authorize, replay, verify_log, ChainLink, Decision, DenyReason, DomainError, Event,
    LoggedCommit, MandateId, Outcome, RecordedHead, TenantId, Tree, TreeId, SCHEMA_VERSION,
};
use crate::protocol::{
    audit_subject, AuditRecord, AuditReply, ChainReply, CheckQuery, HistoryReply, ListQuery,
    ListReply, MandateSummary, StatusReply, TreeQuery, TreeReply, VerifyReply,
};

use super::{moment, Engine, EngineError};
use crate::log::{EventLog, LogError};
use crate::store::TreeSnapshot;

impl Engine {
    fn tree_id_of(&self, tenant: &TenantId, mandate: MandateId) -> Result<TreeId, EngineError> {
        self.inner
            .store
            .tree_of(tenant, mandate)?
            .ok_or(EngineError::Rejected(DomainError::MandateNotFound {
                mandate,
            }))
    }

    /// The tree as it is now, or as it was at `at`.
    pub fn tree_at(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        at: Option<DateTime<Utc>>,
    ) -> Result<Arc<TreeSnapshot>, EngineError> {
        let not_found = || EngineError::Rejected(DomainError::TreeNotFound { tree });
        match at {
            None => self
                .inner
                .store
                .tree_shared(tenant, tree)?
                .ok_or_else(not_found),
            Some(at) => {
                let history = self.inner.store.history(tenant, tree)?;
                if history.is_empty() {
                    return Err(not_found());
                }
                let past: Vec<_> = history.iter().take_while(|e| e.time <= at).collect();
                let position = 0; // not meaningful for a past state
                Ok(Arc::new(TreeSnapshot {
                    position,
                    tree: replay(tenant.clone(), tree, past),
                }))
            }
        }
    }

    /// Why this instance may not grant from a tree now, if it may not: the
    /// tree is quarantined, or holds events newer than this build reads.
    /// Holds whatever `at` a read names: a quarantined tree's past is an
    /// auditor's question (`history`), not a grant.
    fn hold(&self, tenant: &TenantId, tree: TreeId) -> Result<Option<DomainError>, EngineError> {
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
            .tree_shared(tenant, tree)?
            .and_then(|s| s.tree.quarantine.clone());
        Ok(quarantine.map(|q| DomainError::Quarantined {
            tree,
            position: q.position,
        }))
    }

    /// The tree of a mandate for a read that grants (`status`, `chain`):
    /// refused while the tree is held (see [`Engine::hold`]).
    fn mandate_tree(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<Arc<TreeSnapshot>, EngineError> {
        let tree_id = self.tree_id_of(tenant, mandate)?;
        if let Some(refusal) = self.hold(tenant, tree_id)? {
            return Err(refusal.into());
        }
        let snap = self.tree_at(tenant, tree_id, at)?;
        // As of `at` the mandate may not have been issued yet.
        snap.tree.get(mandate)?;
        Ok(snap)
    }

    /// Own status, effective status and its cause.
    pub async fn status(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<StatusReply, EngineError> {
        self.freshen(tenant, None, Some(mandate)).await?;
        let now = moment(at);
        let snap = self.mandate_tree(tenant, mandate, at)?;
        let tree = &snap.tree;
        Ok(StatusReply {
            mandate: tree.get(mandate)?.clone(),
            effective: tree.effective(mandate, now)?,
            at: now,
        })
    }

    /// The chain root → mandate.
    pub async fn chain(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<ChainReply, EngineError> {
        self.freshen(tenant, None, Some(mandate)).await?;
        let now = moment(at);
        let snap = self.mandate_tree(tenant, mandate, at)?;
        let tree = &snap.tree;
        let links = tree.chain(mandate);
        Ok(ChainReply {
            tree: tree.id,
            chain: links.iter().map(|m| ChainLink::from(*m)).collect(),
            mandates: links.into_iter().cloned().collect(),
            effective: tree.effective(mandate, now)?,
            at: now,
            version: tree.version,
            position: snap.position,
            engine_time: Utc::now(),
        })
    }

    fn resolve_tree(&self, tenant: &TenantId, q: &TreeQuery) -> Result<TreeId, EngineError> {
        match (q.tree, q.mandate) {
            (Some(t), _) => Ok(t),
            (None, Some(m)) => self.tree_id_of(tenant, m),
            (None, None) => Err(EngineError::Invalid("name a tree or a mandate".into())),
        }
    }

    /// The whole tree with every mandate's effective status.
    pub async fn tree(&self, tenant: &TenantId, q: &TreeQuery) -> Result<TreeReply, EngineError> {
        self.freshen(tenant, q.tree, q.mandate).await?;
        let now = moment(q.at);
        let snap = self.tree_at(tenant, self.resolve_tree(tenant, q)?, q.at)?;
        let tree = &snap.tree;
        let effective = tree
            .mandates
            .keys()
            .map(|m| summary(tree, *m, now))
            .collect::<Result<_, _>>()?;
        Ok(TreeReply {
            tree: tree.clone(),
            at: now,
            effective,
        })
    }

    /// A tree's events.
    pub async fn history(
        &self,
        tenant: &TenantId,
        q: &TreeQuery,
    ) -> Result<HistoryReply, EngineError> {
        self.freshen(tenant, q.tree, q.mandate).await?;
        let tree = self.resolve_tree(tenant, q)?;
        let mut events = self.inner.store.history(tenant, tree)?;
        if events.is_empty() {
            return Err(DomainError::TreeNotFound { tree }.into());
        }
        if let Some(m) = q.mandate {
            events.retain(|e| e.body.mandate() == m);
        }
        if let Some(at) = q.at {
            events.retain(|e| e.time <= at);
        }
        let quarantine = self
            .inner
            .store
            .tree_shared(tenant, tree)?
            .and_then(|s| s.tree.quarantine.clone());
        Ok(HistoryReply {
            tree,
            events,
            quarantine,
        })
    }

    /// Verifies a tree against its source: re-reads its records from the
    /// log, recomputes the hash chain and compares it with the head (and the
    /// history) the projection recorded, naming the first record that does
    /// not match. Answers for a quarantined tree too: saying where it broke
    /// is the point.
    pub async fn verify(
        &self,
        tenant: &TenantId,
        q: &TreeQuery,
    ) -> Result<VerifyReply, EngineError> {
        match self.freshen(tenant, q.tree, q.mandate).await {
            // The tree broke while catching up: the log is read below anyway,
            // and the break named.
            Ok(())
            | Err(EngineError::Rejected(DomainError::Quarantined { .. }))
            | Err(EngineError::Log(LogError::Corrupt { .. })) => {}
            Err(e) => return Err(e),
        }
        let tree = self.resolve_tree(tenant, q)?;
        let snap = self.inner.store.tree_shared(tenant, tree)?;
        let items = self.inner.log.read_tree_items(tenant, tree, 0).await?;
        if snap.is_none() && items.is_empty() {
            return Err(DomainError::TreeNotFound { tree }.into());
        }
        let mut commits = Vec::with_capacity(items.len());
        for item in items {
            commits.push(match item {
                Ok(r) => LoggedCommit {
                    position: r.position,
                    events: Event::decode_commit(&r.payload).map_err(|e| e.to_string()),
                },
                Err(LogError::Corrupt {
                    position, reason, ..
                }) => LoggedCommit {
                    position,
                    events: Err(reason),
                },
                Err(other) => return Err(other.into()),
            });
        }
        let log_head = commits.iter().map(|c| c.position).max().unwrap_or(0);
        let projected = self.inner.store.history(tenant, tree)?;
        let head = snap.as_ref().map(|s| RecordedHead {
            position: s.position,
            seq: s.tree.version,
            hash: s.tree.head_hash.clone(),
        });
        let result = verify_log(tenant, tree, &commits, &projected, head.as_ref());
        let broken = result.as_ref().err();
        Ok(VerifyReply {
            tree,
            events: commits
                .iter()
                .filter_map(|c| c.events.as_ref().ok())
                .map(|e| e.len() as u64)
                .sum(),
            head_hash: snap.as_ref().and_then(|s| s.tree.head_hash.clone()),
            intact: result.is_ok(),
            broken_at: broken.map(|b| b.seq),
            reason: broken.map(|b| b.reason.clone()),
            broken_position: broken.map(|b| b.position),
            fault: broken.map(|b| b.fault),
            log_head,
            projection_head: snap.as_ref().map_or(0, |s| s.position),
            skipped: result
                .as_ref()
                .map(|v| v.skipped.clone())
                .unwrap_or_default(),
        })
    }

    /// Mandates by agent, principal or mission.
    pub fn list(&self, tenant: &TenantId, q: &ListQuery) -> Result<ListReply, EngineError> {
        let store = &self.inner.store;
        let pairs: Vec<(TreeId, Option<MandateId>)> = match (&q.agent, &q.principal, &q.mission_ref)
        {
            (Some(a), None, None) => store
                .mandates_held_by(tenant, a)?
                .into_iter()
                .map(|(t, m)| (t, Some(m)))
                .collect(),
            (None, Some(p), None) => store
                .trees_granted_by(tenant, p)?
                .into_iter()
                .map(|t| (t, None))
                .collect(),
            (None, None, Some(r)) => store
                .trees_for_mission(tenant, r)?
                .into_iter()
                .map(|t| (t, None))
                .collect(),
            _ => {
                return Err(EngineError::Invalid(
                    "list takes exactly one of agent, principal, mission_ref".into(),
                ))
            }
        };
        let now = Utc::now();
        let mut mandates = Vec::new();
        for (tree_id, mandate) in pairs {
            let Some(snap) = store.tree_shared(tenant, tree_id)? else {
                continue;
            };
            let m = mandate.or(snap.tree.root);
            if let Some(m) = m {
                let mut s = summary(&snap.tree, m, now)?;
                s.quarantined = snap.tree.quarantine.as_ref().map(|q| q.position);
                mandates.push(s);
            }
        }
        Ok(ListReply { mandates })
    }

    /// Answers a check and records it in the audit. A check that names the
    /// engine itself as the one who asks is refused: the audit would say the
    /// engine asked.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, mandate = %q.mandate))]
    pub async fn check(&self, tenant: &TenantId, q: &CheckQuery) -> Result<Decision, EngineError> {
        if let Some(actor) = &q.actor {
            crate::domain::command::refuse_reserved_actor(actor)?;
        }
        let now = moment(q.at);
        self.freshen(tenant, None, Some(q.mandate)).await?;
        let decision = match self.inner.store.tree_of(tenant, q.mandate)? {
            Some(tree_id) => {
                let snap = self.tree_at(tenant, tree_id, q.at)?;
                let mut d = authorize(&snap.tree, q.mandate, &q.action, &q.resource, now);
                let held = match self.hold(tenant, tree_id)? {
                    Some(DomainError::Quarantined { tree, position }) => {
                        Some(DenyReason::Quarantined { tree, position })
                    }
                    Some(DomainError::TreeTooNew {
                        tree,
                        position,
                        version,
                        supported,
                    }) => Some(DenyReason::UnsupportedVersion {
                        tree,
                        position,
                        version,
                        supported,
                    }),
                    Some(DomainError::LogWentBackwards {
                        tree,
                        recorded,
                        found,
                    }) => Some(DenyReason::LogWentBackwards {
                        tree,
                        recorded,
                        found,
                    }),
                    _ => None,
                };
                if let Some(reason) = held {
                    d.outcome = Outcome::Deny;
                    d.reason = Some(reason);
                    d.approval.clear();
                }
                d
            }
            None => authorize(
                &Tree::empty(tenant.clone(), TreeId(q.mandate.0)),
                q.mandate,
                &q.action,
                &q.resource,
                now,
            ),
        };
        if self.inner.config.audit {
            self.record_audit(tenant, &decision, q.actor.clone()).await;
        }
        Ok(decision)
    }

    async fn record_audit(
        &self,
        tenant: &TenantId,
        decision: &Decision,
        actor: Option<crate::domain::Actor>,
    ) {
        let record = AuditRecord {
            schema_version: SCHEMA_VERSION,
            principal: decision.chain.first().map(|l| l.on_behalf_of.clone()),
            decision: decision.clone(),
            actor,
            recorded_at: Utc::now(),
            instance: self.inner.config.instance.clone(),
        };
        let result = match &self.inner.nats {
            Some(client) => {
                let js = async_nats::jetstream::new(client.clone());
                let payload = serde_json::to_vec(&record).expect("audit records serialize");
                match js
                    .publish(audit_subject(tenant, decision.mandate), payload.into())
                    .await
                {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            None => self
                .inner
                .store
                .record_audit(tenant, decision.mandate, &record)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "audit record not stored");
        }
    }

    /// Recorded decisions for a mandate, oldest first (at most `limit`, newest kept).
    pub async fn audit(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        limit: usize,
    ) -> Result<AuditReply, EngineError> {
        let mut records = match &self.inner.nats {
            Some(client) => super::missions::read_audit(client, tenant, mandate).await?,
            None => self.inner.store.audit_records(tenant, mandate)?,
        };
        if records.len() > limit {
            records.drain(..records.len() - limit);
        }
        Ok(AuditReply { records })
    }
}

fn summary(
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
