//! Every public query of the engine. Each takes an optional `at`: the answer
//! is then computed on the tree as it was at that moment, by replaying its
//! events up to it (the auditor's "at 14:05, was this agent still allowed?").
//! The machinery behind them is in `read.rs` and `catch_up.rs`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::{
    authorize, replay, verify_log, ChainLink, Decision, DenyReason, DomainError, Event, KeyId,
    LoggedCommit, MandateId, Outcome, RecordedHead, TenantId, Tree, TreeId,
};
use crate::log::{AnyLog, EventLog, LogError};
use crate::protocol::signature::verify_event;
use crate::protocol::{
    AuditReply, ChainReply, CheckQuery, Consistency, Health, HistoryReply, KeyInfo, KeySource,
    KeyStatus, KeysReply, ListQuery, ListReply, MandateQuery, QuarantinedTree, SignatureFailure,
    StatusReply, TreeQuery, TreeReply, VerifyReply,
};
use crate::store::TreeSnapshot;

use super::read::summary;
use super::{Engine, EngineError, EngineErrorKind};

impl Engine {
    /// The tree as it is now, or as it was at `at`: with `mandate`, its
    /// view of that mandate's chain (what a check or a status needs, at the
    /// chain's cost); without, all of it.
    pub fn tree_at(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        mandate: Option<MandateId>,
        at: Option<DateTime<Utc>>,
    ) -> Result<Arc<TreeSnapshot>, EngineError> {
        let not_found = || EngineError::from(DomainError::TreeNotFound { tree });
        match (at, mandate) {
            (None, Some(m)) => self
                .inner
                .store
                .view(tenant, tree, &[m], None)?
                .ok_or_else(not_found),
            (None, None) => self
                .inner
                .store
                .tree(tenant, tree)?
                .map(Arc::new)
                .ok_or_else(not_found),
            (Some(at), _) => {
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

    /// Own status, effective status and its cause, read `fresh`.
    pub async fn status(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<StatusReply, EngineError> {
        self.status_of(tenant, &fresh_query(mandate, at)).await
    }

    /// Own status, effective status and its cause, at the query's
    /// consistency level.
    pub async fn status_of(
        &self,
        tenant: &TenantId,
        q: &MandateQuery,
    ) -> Result<StatusReply, EngineError> {
        let (mandate, at) = (q.mandate, q.at);
        let (snap, now) = self
            .mandate_tree(tenant, mandate, at, q.consistency)
            .await?;
        let tree = &snap.tree;
        Ok(StatusReply {
            mandate: tree.get(mandate)?.clone(),
            effective: tree.effective(mandate, now)?,
            at: now,
            position: snap.position,
        })
    }

    /// The chain root → mandate, read `fresh`.
    pub async fn chain(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        at: Option<DateTime<Utc>>,
    ) -> Result<ChainReply, EngineError> {
        self.chain_of(tenant, &fresh_query(mandate, at)).await
    }

    /// The chain root → mandate, at the query's consistency level.
    pub async fn chain_of(
        &self,
        tenant: &TenantId,
        q: &MandateQuery,
    ) -> Result<ChainReply, EngineError> {
        let (mandate, at) = (q.mandate, q.at);
        let (snap, now) = self
            .mandate_tree(tenant, mandate, at, q.consistency)
            .await?;
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
            engine_time: self.now(),
        })
    }

    /// The whole tree with every mandate's effective status.
    pub async fn tree(&self, tenant: &TenantId, q: &TreeQuery) -> Result<TreeReply, EngineError> {
        self.freshen(tenant, q.tree, q.mandate, q.consistency)
            .await?;
        let now = self.moment(q.at);
        let snap = self.tree_at(tenant, self.resolve_tree(tenant, q)?, None, q.at)?;
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
            position: snap.position,
        })
    }

    /// A tree's events.
    pub async fn history(
        &self,
        tenant: &TenantId,
        q: &TreeQuery,
    ) -> Result<HistoryReply, EngineError> {
        self.freshen(tenant, q.tree, q.mandate, q.consistency)
            .await?;
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
            .head(tenant, tree)?
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
        match self.freshen(tenant, q.tree, q.mandate, q.consistency).await {
            // The tree broke while catching up: the log is read below anyway,
            // and the break named.
            Ok(()) => {}
            Err(e)
                if e.kind() == EngineErrorKind::Corrupt
                    || matches!(e.rejection(), Some(DomainError::Quarantined { .. })) => {}
            Err(e) => return Err(e),
        }
        let tree = self.resolve_tree(tenant, q)?;
        let snap = self.inner.store.head(tenant, tree)?;
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
        let (signatures, signature_failures) = self.verify_signatures(tenant, &commits)?;
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
            signatures,
            signature_failures,
        })
    }

    /// Re-verifies every signature the log's `commits` record against the
    /// tenant's key ring (configured keys and the registry as this instance
    /// holds it, with each key's registration and revocation times): the
    /// number of signed events, and those whose signature fails.
    fn verify_signatures(
        &self,
        tenant: &TenantId,
        commits: &[LoggedCommit],
    ) -> Result<(u64, Vec<SignatureFailure>), EngineError> {
        let signed = || {
            commits
                .iter()
                .filter_map(|c| c.events.as_ref().ok())
                .flatten()
                .filter(|e| e.signature.is_some())
        };
        if signed().next().is_none() {
            return Ok((0, Vec::new()));
        }
        let registry = self
            .inner
            .store
            .head(tenant, TreeId::registry(tenant))?
            .map(|s| s.tree.registry().clone())
            .unwrap_or_default();
        let auth = self.inner.config.auth.as_ref();
        let configured = |id: &KeyId| {
            auth.and_then(|a| a.configured_key(tenant, id))
                .map(|k| (k.owner.clone(), k.public_key.clone()))
        };
        let mut count = 0;
        let mut failures = Vec::new();
        for e in signed() {
            count += 1;
            if let Err(reason) = verify_event(e, &registry, &configured) {
                failures.push(SignatureFailure {
                    seq: e.seq,
                    key_id: e
                        .signature
                        .as_ref()
                        .map(|s| s.key_id.clone())
                        .expect("signed"),
                    reason,
                });
            }
        }
        Ok((count, failures))
    }

    /// The tenant's key ring: the keys the operator configures for it, then
    /// those its registry holds (read fresh), each with its status now.
    pub async fn keys(&self, tenant: &TenantId) -> Result<KeysReply, EngineError> {
        let auth = self.inner.config.auth.as_ref();
        let tenant_keys = auth.and_then(|a| a.tenants.get(tenant.as_str()));
        let mut keys: Vec<KeyInfo> = tenant_keys
            .map(|t| {
                t.signing_keys
                    .iter()
                    .map(|(id, k)| KeyInfo {
                        key_id: id.clone(),
                        owner: k.owner.clone(),
                        public_key: k.public_key.clone(),
                        source: KeySource::Configured,
                        status: KeyStatus::Active,
                        registered: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now = self.now();
        if let Some(registry) = self.fresh_registry(tenant).await? {
            for (id, k) in &registry.tree.registry().keys {
                let status = if k.revoked.is_some() {
                    KeyStatus::Revoked
                } else if k.not_after.is_some_and(|n| n < now) {
                    KeyStatus::Expired
                } else {
                    KeyStatus::Active
                };
                keys.push(KeyInfo {
                    key_id: id.clone(),
                    owner: k.owner.clone(),
                    public_key: k.public_key.clone(),
                    source: KeySource::Registered,
                    status,
                    registered: Some(k.clone()),
                });
            }
        }
        Ok(KeysReply {
            tenant: tenant.clone(),
            require_signatures: tenant_keys.is_some_and(|t| t.require_signatures),
            keys,
        })
    }

    /// Mandates by agent, principal or mission, at the query's consistency
    /// level (`fresh` brings the whole projection up to the log's head).
    pub async fn list(&self, tenant: &TenantId, q: &ListQuery) -> Result<ListReply, EngineError> {
        self.freshen_all(tenant, q.consistency).await?;
        let store = &self.inner.store;
        // Read before the indexes: every commit up to it is in the answer.
        let position = store.checkpoint()?;
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
                return Err(EngineError::invalid(
                    "list takes exactly one of agent, principal, mission_ref",
                ))
            }
        };
        let now = self.now();
        let mut mandates = Vec::new();
        for (tree_id, mandate) in pairs {
            let Some(snap) = store.view(tenant, tree_id, &Vec::from_iter(mandate), None)? else {
                continue;
            };
            let m = mandate.or(snap.tree.root);
            if let Some(m) = m {
                let mut s = summary(&snap.tree, m, now)?;
                s.quarantined = snap.tree.quarantine.as_ref().map(|q| q.position);
                mandates.push(s);
            }
        }
        Ok(ListReply { mandates, position })
    }

    /// Answers a check and records it in the audit. A check that names the
    /// engine itself as the one who asks is refused: the audit would say the
    /// engine asked.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, mandate = %q.mandate))]
    pub async fn check(&self, tenant: &TenantId, q: &CheckQuery) -> Result<Decision, EngineError> {
        let decision = self.decide(tenant, q).await?;
        if self.inner.config.audit {
            let json = super::read::decision_json(&decision);
            self.record_audit(tenant, &decision, &json, q.actor.as_ref());
        }
        Ok(decision)
    }

    /// [`Engine::check`] for a reply on the wire: the decision, and its
    /// JSON, which its audit record holds too (the decision is written
    /// once, not twice).
    pub(super) async fn check_for_reply(
        &self,
        tenant: &TenantId,
        q: &CheckQuery,
    ) -> Result<(Decision, Box<serde_json::value::RawValue>), EngineError> {
        let decision = self.decide(tenant, q).await?;
        let json = super::read::decision_json(&decision);
        if self.inner.config.audit {
            self.record_audit(tenant, &decision, &json, q.actor.as_ref());
        }
        Ok((decision, json))
    }

    /// A check's decision, not yet recorded.
    async fn decide(&self, tenant: &TenantId, q: &CheckQuery) -> Result<Decision, EngineError> {
        if let Some(actor) = &q.actor {
            crate::domain::command::refuse_reserved_actor(actor)?;
        }
        let now = self.moment(q.at);
        self.freshen(tenant, None, Some(q.mandate), q.consistency)
            .await?;
        let decision = match self.inner.store.tree_of(tenant, q.mandate)? {
            Some(tree_id) => {
                let snap = self.tree_at(tenant, tree_id, Some(q.mandate), q.at)?;
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
        Ok(decision)
    }

    /// Recorded decisions for a mandate, oldest first (at most `limit`, newest kept).
    pub async fn audit(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        limit: usize,
    ) -> Result<AuditReply, EngineError> {
        let mut records = match &self.inner.nats {
            Some(client) => super::audit::read_audit(client, tenant, mandate).await?,
            None => self.inner.store.audit_records(tenant, mandate)?,
        };
        if records.len() > limit {
            records.drain(..records.len() - limit);
        }
        Ok(AuditReply { records })
    }
}

impl Engine {
    /// The instance's health.
    pub async fn health(&self) -> Result<Health, EngineError> {
        let position = self.inner.store.checkpoint()?;
        let log_position = self.inner.log.last_position().await?;
        Ok(Health {
            instance: self.inner.config.instance.clone(),
            backend: match self.inner.log {
                AnyLog::Nats(_) => "nats".into(),
                AnyLog::Embedded(_) => "embedded".into(),
            },
            position,
            log_position,
            lag: log_position.saturating_sub(position),
            audit_failures: self.inner.audit.failures(),
            audit_pending: self.inner.audit.pending(),
            time: self.now(),
            elections: self.elections(),
            quarantined: Vec::new(),
            log_went_backwards: Vec::new(),
            rejected_mission_completions: self.rejected_completions().await?,
        })
    }

    /// What the event log met of a stream without a leader since this
    /// instance opened it (zero on the embedded log, which has none).
    pub fn elections(&self) -> crate::protocol::Elections {
        let stalls = match &self.inner.log {
            AnyLog::Nats(log) => log.leader_stalls(),
            AnyLog::Embedded(_) => crate::log::LeaderStalls::default(),
        };
        crate::protocol::Elections {
            append_retries: stalls.append_retries,
            unavailable: stalls.unavailable,
            last_at: stalls
                .last_at_ms
                .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis),
        }
    }

    /// The instance's health as one tenant sees it: with that tenant's
    /// quarantined trees (another tenant's are not its business).
    pub async fn health_of(&self, tenant: &TenantId) -> Result<Health, EngineError> {
        let mut health = self.health().await?;
        health.quarantined = self
            .inner
            .store
            .quarantined_trees(tenant)?
            .into_iter()
            .map(|(tree, q)| QuarantinedTree {
                tree,
                position: q.position,
                reason: q.reason,
            })
            .collect();
        health.log_went_backwards = self.lost_trees(tenant)?;
        Ok(health)
    }
}

/// A `status` or `chain` query read `fresh`, as the methods without a level
/// ask.
fn fresh_query(mandate: MandateId, at: Option<DateTime<Utc>>) -> MandateQuery {
    MandateQuery {
        mandate,
        at,
        consistency: Consistency::Fresh,
    }
}
