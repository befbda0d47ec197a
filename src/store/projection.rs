//! The projection: every tree's snapshot (state and head), its history, the
//! indexes queries read (mandate → tree, agent, principal, mission,
//! missions a tree's event completed, expiry queue), quarantine and
//! too-new marks, and the checkpoint.
//!
//! Its source is the event log: everything here is a fold of the log's
//! records in order ([`Store::apply_commit`]), so a replay of the log into an
//! empty projection equals it (invariant 6), and `Engine::rebuild_check`
//! replaces it by such a replay ([`Store::clear_projection`]). Nothing that
//! the log does not record is written here: mission marks and audit records
//! have parts of their own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    apply, AgentId, DomainError, Event, EventBody, MandateId, MissionRef, PrincipalId, Quarantine,
    TenantId, Tree, TreeId,
};

use super::keys::{
    self, be64, decode_tree_id, of_tenant, parse_last, prefix, read, read_all, under_tenant,
    CHECKPOINT, COMPLETED, EVENT, EXPIRY, GRANTED_BY, HELD_BY, MANDATE, QUARANTINE, SEP,
    SERVES_MISSION, SNAPSHOT, TOO_NEW,
};
use super::{Store, StoreError};

/// A tree's state with the log position of its last commit (its head).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeSnapshot {
    pub position: u64,
    pub tree: Tree,
}

/// What applying one commit did.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// The events were new and are now in the projection.
    Applied(Vec<Event>),
    /// The tree was already at or past this position.
    AlreadyApplied,
    /// The commit was corrupt; the tree is now quarantined.
    Quarantined(Quarantine),
    /// The tree was already quarantined and this record is not its
    /// resolution: passed over (the head moves, the state does not).
    PassedOver,
    /// The commit (or one before it) has an event of a newer schema version
    /// than this build reads: not applied, tried again on the next read.
    Unsupported(String),
}

/// Why a commit was not applied.
enum Bad {
    Corrupt(String),
    TooNew(u64),
}

/// A tree this build cannot read past `position` (a newer schema version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsupported {
    pub position: u64,
    pub version: u64,
    pub reason: String,
}

/// A due expiry: the mandate whose `not_after` has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueExpiry {
    pub tenant: TenantId,
    pub tree: TreeId,
    pub mandate: MandateId,
    pub not_after: DateTime<Utc>,
}

/// Decoded snapshots by tenant and tree.
pub(super) type SnapshotCache = HashMap<(TenantId, TreeId), Arc<TreeSnapshot>>;

/// Most decoded snapshots kept in memory.
const SNAPSHOT_CACHE: usize = 4096;

impl Store {
    /// Empties the projection, for a rebuild from the log. The mission
    /// marks and the audit records are kept: the log does not hold them.
    pub fn clear_projection(&self) -> Result<(), StoreError> {
        let _serialized = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.projection.clear()?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// The last log position applied in order.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self
            .projection
            .get(CHECKPOINT)?
            .map(|v| be64(&v))
            .unwrap_or(0))
    }

    /// A tree's snapshot.
    pub fn tree(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<TreeSnapshot>, StoreError> {
        Ok(self.tree_shared(tenant, tree)?.map(|s| (*s).clone()))
    }

    /// A tree's snapshot, shared: served from the in-memory cache of decoded
    /// snapshots when it is there (no JSON decoding, no copy), so a read or a
    /// command on a large tree does not decode the whole tree each time.
    pub fn tree_shared(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Arc<TreeSnapshot>>, StoreError> {
        if let Some(hit) = self.cache_get(&(tenant.clone(), tree)) {
            return Ok(Some(hit));
        }
        // Read under the apply lock, so a concurrent apply cannot slip a newer
        // snapshot into the cache between our read and our insert.
        let _serialized = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.load_snapshot_locked(tenant, tree)
    }

    /// The cached or stored snapshot; the caller holds `apply_lock`.
    fn load_snapshot_locked(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Arc<TreeSnapshot>>, StoreError> {
        let cache_key = (tenant.clone(), tree);
        if let Some(hit) = self.cache_get(&cache_key) {
            return Ok(Some(hit));
        }
        let snap: Option<TreeSnapshot> = self.of_tree(SNAPSHOT, tenant, tree)?;
        Ok(snap.map(|snap| {
            let snap = Arc::new(snap);
            self.cache_put(cache_key, snap.clone());
            snap
        }))
    }

    fn cache_get(&self, k: &(TenantId, TreeId)) -> Option<Arc<TreeSnapshot>> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(k)
            .cloned()
    }

    fn cache_put(&self, k: (TenantId, TreeId), snap: Arc<TreeSnapshot>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= SNAPSHOT_CACHE && !cache.contains_key(&k) {
            // Crude but bounded: start over rather than track recency.
            cache.clear();
        }
        cache.insert(k, snap);
    }

    /// The value of `kind` stored for one tree of a tenant, decoded.
    fn of_tree<T: for<'de> Deserialize<'de>>(
        &self,
        kind: u8,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<T>, StoreError> {
        read(&self.projection, &of_tenant(kind, tenant, tree))
    }

    /// The tree a mandate lives in, within one tenant.
    pub fn tree_of(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<Option<TreeId>, StoreError> {
        let k = of_tenant(MANDATE, tenant, mandate);
        self.projection
            .get(&k)?
            .map(|v| decode_tree_id(&k, &v))
            .transpose()
    }

    /// Why a tree is quarantined, if it is.
    pub fn quarantined(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Quarantine>, StoreError> {
        self.of_tree(QUARANTINE, tenant, tree)
    }

    /// Whether the tree holds an event newer than this build reads, and where.
    pub fn unsupported(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Unsupported>, StoreError> {
        self.of_tree(TOO_NEW, tenant, tree)
    }

    /// A tenant's quarantined trees.
    pub fn quarantined_trees(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(TreeId, Quarantine)>, StoreError> {
        self.projection
            .scan_prefix(prefix(QUARANTINE, &[tenant.as_str().as_bytes()]))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((TreeId(parse_last(&k)?), keys::decode(&k, &v)?))
            })
            .collect()
    }

    /// Every tree marked as holding events newer than the build that marked
    /// it could read, with its tenant.
    pub fn unsupported_trees(&self) -> Result<Vec<(TenantId, TreeId)>, StoreError> {
        self.projection
            .scan_prefix([TOO_NEW, SEP])
            .map(|kv| {
                let (k, _) = kv?;
                let bad = || StoreError::Decode {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "malformed unsupported-version key".into(),
                };
                let tenant = k
                    .split(|b| *b == SEP)
                    .nth(1)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| TenantId::new(t).ok())
                    .ok_or_else(bad)?;
                Ok((tenant, TreeId(parse_last(&k)?)))
            })
            .collect()
    }

    /// A tree's events in order.
    pub fn history(&self, tenant: &TenantId, tree: TreeId) -> Result<Vec<Event>, StoreError> {
        read_all(&self.projection, &under_tenant(EVENT, tenant, tree))
    }

    /// Trees serving a mission.
    pub fn trees_for_mission(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<Vec<TreeId>, StoreError> {
        self.last_parts(under_tenant(SERVES_MISSION, tenant, mission.as_str()))
    }

    /// Whether an event of a tree completed `mission` (the projection's half
    /// of [`Store::mission_completed`]).
    pub(super) fn completed_by_a_tree(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<bool, StoreError> {
        Ok(self
            .projection
            .contains_key(of_tenant(COMPLETED, tenant, mission.as_str()))?)
    }

    /// Trees whose root a principal granted.
    pub fn trees_granted_by(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Vec<TreeId>, StoreError> {
        self.last_parts(under_tenant(GRANTED_BY, tenant, principal.as_str()))
    }

    /// Mandates an agent holds (any status), with their trees.
    pub fn mandates_held_by(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<(TreeId, MandateId)>, StoreError> {
        self.projection
            .scan_prefix(under_tenant(HELD_BY, tenant, agent.as_str()))
            .map(|kv| {
                let (k, v) = kv?;
                let mandate = parse_last(&k)?;
                Ok((decode_tree_id(&k, &v)?, MandateId(mandate)))
            })
            .collect()
    }

    /// All trees of a tenant.
    pub fn trees_of_tenant(&self, tenant: &TenantId) -> Result<Vec<TreeId>, StoreError> {
        self.last_parts(prefix(SNAPSHOT, &[tenant.as_str().as_bytes()]))
    }

    /// Expiries due at `now`, oldest first, at most `limit`, after `after`
    /// (exclusive) when given: a caller pages past entries it cannot act on.
    pub fn due_expiries(
        &self,
        now: DateTime<Utc>,
        after: Option<&DueExpiry>,
        limit: usize,
    ) -> Result<Vec<DueExpiry>, StoreError> {
        let start = match after {
            Some(e) => {
                let mut k = keys::expiry(e.not_after, &e.tenant, e.mandate);
                k.push(0);
                k
            }
            None => vec![EXPIRY, SEP],
        };
        let end = {
            let mut k = vec![EXPIRY, SEP];
            k.extend_from_slice(&keys::ms(now));
            k.push(0xff);
            k
        };
        let mut out = Vec::new();
        for kv in self.projection.range(start..end).take(limit) {
            let (k, v) = kv?;
            out.push(decode_expiry(&k, &v)?);
        }
        Ok(out)
    }

    /// The earliest pending expiry, if any.
    pub fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.projection.scan_prefix([EXPIRY, SEP]).next() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some(decode_expiry(&k, &v)?.not_after))
            }
            None => Ok(None),
        }
    }

    /// Drops a pending expiry (one that no longer needs its own event).
    pub fn remove_expiry(&self, e: &DueExpiry) -> Result<(), StoreError> {
        self.projection
            .remove(keys::expiry(e.not_after, &e.tenant, e.mandate))?;
        Ok(())
    }

    fn last_parts(&self, p: Vec<u8>) -> Result<Vec<TreeId>, StoreError> {
        self.projection
            .scan_prefix(&p)
            .map(|kv| {
                let (k, _) = kv?;
                Ok(TreeId(parse_last(&k)?))
            })
            .collect()
    }

    /// Applies one commit of the log: the events one command wrote to a tree,
    /// at log `position`. Idempotent per tree (a commit at or below the tree's
    /// head is skipped). With `advance_checkpoint`, the checkpoint moves to
    /// `position` in the same atomic batch: only the in-order follower does
    /// that; the writer applies its own commits early for read-your-writes.
    ///
    /// A commit that does not decode, belongs to another tree, or breaks the
    /// tree's sequence or hash chain quarantines that tree (never skipped
    /// silently) and leaves all other trees untouched: the tree keeps its last
    /// good state, marked with the bad position, and its head moves past the
    /// bad record. While quarantined, only an administrator's resolution
    /// naming that position and chained from the last good event is applied;
    /// every other record is passed over. A commit with an event of a newer
    /// schema version is not corruption: the tree is marked as unreadable by
    /// this build, stays where it was, and is tried again on the next read.
    pub fn apply_commit(
        &self,
        tenant: &TenantId,
        tree_id: TreeId,
        position: u64,
        payload: &[u8],
        advance_checkpoint: bool,
    ) -> Result<Applied, StoreError> {
        self.apply_record(tenant, tree_id, position, Ok(payload), advance_checkpoint)
    }

    /// A record of the tree's subject that the log itself could not decode
    /// (e.g. one published without a command id): it quarantines the tree
    /// like a commit that does not decode.
    pub fn apply_corrupt(
        &self,
        tenant: &TenantId,
        tree_id: TreeId,
        position: u64,
        reason: &str,
        advance_checkpoint: bool,
    ) -> Result<Applied, StoreError> {
        self.apply_record(
            tenant,
            tree_id,
            position,
            Err(reason.to_string()),
            advance_checkpoint,
        )
    }

    /// Moves the checkpoint past a record that belongs to no tree.
    pub fn advance_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        let _serialized = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        if position > self.checkpoint()? {
            self.projection
                .insert(CHECKPOINT, position.to_be_bytes().to_vec())?;
        }
        Ok(())
    }

    fn apply_record(
        &self,
        tenant: &TenantId,
        tree_id: TreeId,
        position: u64,
        payload: Result<&[u8], String>,
        advance_checkpoint: bool,
    ) -> Result<Applied, StoreError> {
        // A poisoned lock only means another applier panicked; the database
        // itself is consistent (each batch is atomic).
        let _serialized = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        // Never backwards: a catch-up (`Engine::catch_up`) may run beside the
        // follower, and a lower position must not undo a higher one.
        if advance_checkpoint && position > self.checkpoint()? {
            batch.insert(CHECKPOINT, position.to_be_bytes().to_vec());
        }
        let snapshot = self.load_snapshot_locked(tenant, tree_id)?;
        if snapshot.as_ref().is_some_and(|s| s.position >= position) {
            self.projection.apply_batch(batch)?;
            return Ok(Applied::AlreadyApplied);
        }
        let tree_s = tree_id.to_string();
        let tree_key = [tenant.as_str().as_bytes(), tree_s.as_bytes()];
        let too_new = self.unsupported(tenant, tree_id)?;
        if too_new.as_ref().is_some_and(|u| position > u.position) {
            // Nothing past an unreadable record can be applied in order.
            self.projection.apply_batch(batch)?;
            return Ok(Applied::Unsupported(
                too_new.map(|u| u.reason).unwrap_or_default(),
            ));
        }
        let mut tree = snapshot
            .map(|s| Arc::unwrap_or_clone(s).tree)
            .unwrap_or_else(|| Tree::empty(tenant.clone(), tree_id));
        let decoded = match payload {
            Err(reason) => Err(Bad::Corrupt(reason)),
            Ok(bytes) => match Event::decode_commit(bytes) {
                Err(DomainError::UnknownVersion {
                    actual, supported, ..
                }) if actual > u64::from(supported) => Err(Bad::TooNew(actual)),
                Err(e) => Err(Bad::Corrupt(e.to_string())),
                Ok(evs) => check_commit(&tree, tenant, tree_id, &evs)
                    .map(|()| evs)
                    .map_err(Bad::Corrupt),
            },
        };
        if let Some(q) = &tree.quarantine {
            let resolves = matches!(&decoded, Ok(evs) if matches!(
                evs.first().map(|e| &e.body),
                Some(EventBody::QuarantineResolved(r)) if r.position == q.position
            ));
            if !resolves {
                // Passed over, not applied: the head moves so that reads and
                // the resolution's append see the log as it is.
                self.write_snapshot(batch, TreeSnapshot { position, tree })?;
                return Ok(Applied::PassedOver);
            }
        }
        let events = match decoded {
            Ok(events) => events,
            Err(Bad::TooNew(version)) => {
                let mark = Unsupported {
                    position,
                    version,
                    reason: DomainError::TreeTooNew {
                        tree: tree_id,
                        position,
                        version,
                        supported: crate::domain::SCHEMA_VERSION,
                    }
                    .to_string(),
                };
                tracing::warn!(%tenant, tree = %tree_id, position, version, "tree has events newer than this build reads");
                batch.insert(
                    keys::key(TOO_NEW, &tree_key),
                    serde_json::to_vec(&mark).expect("marks serialize"),
                );
                self.projection.apply_batch(batch)?;
                return Ok(Applied::Unsupported(mark.reason));
            }
            Err(Bad::Corrupt(reason)) => {
                let err = StoreError::Corrupt {
                    tenant: tenant.clone(),
                    tree: tree_id,
                    position,
                    reason,
                };
                tracing::error!(%tenant, tree = %tree_id, position, error = %err, "quarantining tree");
                let q = Quarantine {
                    position,
                    reason: err.to_string(),
                };
                batch.insert(
                    keys::key(QUARANTINE, &tree_key),
                    serde_json::to_vec(&q).expect("marks serialize"),
                );
                batch.remove(keys::key(TOO_NEW, &tree_key));
                tree.quarantine = Some(q.clone());
                self.write_snapshot(batch, TreeSnapshot { position, tree })?;
                return Ok(Applied::Quarantined(q));
            }
        };
        if too_new.is_some() {
            batch.remove(keys::key(TOO_NEW, &tree_key));
        }
        let before = tree.clone();
        for e in &events {
            apply(&mut tree, e);
            let ek = keys::key(EVENT, &[tree_key[0], tree_key[1], &e.seq.to_be_bytes()]);
            batch.insert(ek, serde_json::to_vec(e).expect("events serialize"));
        }
        if before.quarantine.is_some() && tree.quarantine.is_none() {
            batch.remove(keys::key(QUARANTINE, &tree_key));
        }
        index_changes(&mut batch, &before, &tree, &events);
        self.write_snapshot(batch, TreeSnapshot { position, tree })?;
        Ok(Applied::Applied(events))
    }

    /// Adds a tree's snapshot to `batch`, applies the batch and caches the
    /// snapshot; the caller holds `apply_lock`.
    fn write_snapshot(&self, mut batch: sled::Batch, snap: TreeSnapshot) -> Result<(), StoreError> {
        let (tenant, tree_id) = (snap.tree.tenant.clone(), snap.tree.id);
        batch.insert(
            of_tenant(SNAPSHOT, &tenant, tree_id),
            serde_json::to_vec(&snap).expect("snapshots serialize"),
        );
        self.projection.apply_batch(batch)?;
        self.cache_put((tenant, tree_id), Arc::new(snap));
        Ok(())
    }

    /// Every key and value, for comparing a live projection with a rebuild.
    /// The checkpoint is left out: a writer-applied projection and a rebuild
    /// agree on state, not on how far their follower has read.
    pub fn dump(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        self.projection
            .iter()
            .filter(|kv| !matches!(kv, Ok((k, _)) if k.as_ref() == CHECKPOINT))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

/// The checks a commit must pass before it touches a tree.
fn check_commit(
    tree: &Tree,
    tenant: &TenantId,
    tree_id: TreeId,
    events: &[Event],
) -> Result<(), String> {
    if events.is_empty() {
        return Err("empty commit".into());
    }
    // Only the running seq and head hash are needed: no copy of the tree.
    let (mut version, mut head) = (tree.version, tree.head_hash.clone());
    for e in events {
        if &e.tenant != tenant || e.tree != tree_id {
            return Err(format!(
                "event {} names tenant {} tree {}, but is stored under tenant {tenant} tree {tree_id}",
                e.event_id, e.tenant, e.tree
            ));
        }
        if e.seq != version + 1 {
            return Err(format!(
                "event seq {} where {} was expected",
                e.seq,
                version + 1
            ));
        }
        if e.prev_hash != head {
            return Err(format!(
                "event seq {} does not chain to the previous event's hash",
                e.seq
            ));
        }
        version = e.seq;
        head = Some(e.hash());
    }
    Ok(())
}

/// Index updates for a tree going from `before` to `after`.
fn index_changes(batch: &mut sled::Batch, before: &Tree, after: &Tree, events: &[Event]) {
    let t = after.tenant.as_str().as_bytes();
    let tree_s = after.id.to_string();
    for e in events {
        let id = e.body.mandate();
        let id_s = id.to_string();
        let (Some(old), Some(new)) = (
            before.mandates.get(&id).or(after.mandates.get(&id)),
            after.mandates.get(&id),
        ) else {
            continue;
        };
        match &e.body {
            EventBody::MandateIssued(m) => {
                batch.insert(keys::key(MANDATE, &[t, id_s.as_bytes()]), tree_s.as_bytes());
                batch.insert(
                    keys::key(
                        HELD_BY,
                        &[t, m.grantee.as_str().as_bytes(), id_s.as_bytes()],
                    ),
                    tree_s.as_bytes(),
                );
                if m.parent.is_none() {
                    batch.insert(
                        keys::key(
                            GRANTED_BY,
                            &[t, m.principal.as_str().as_bytes(), tree_s.as_bytes()],
                        ),
                        &[],
                    );
                    if let Some(r) = m.mission.as_ref().and_then(|m| m.mission_ref.as_ref()) {
                        batch.insert(
                            keys::key(
                                SERVES_MISSION,
                                &[t, r.as_str().as_bytes(), tree_s.as_bytes()],
                            ),
                            &[],
                        );
                    }
                }
                batch.insert(
                    keys::expiry(m.not_after, &after.tenant, id),
                    tree_s.as_bytes(),
                );
            }
            EventBody::MandateRenewed(_) => {
                batch.remove(keys::expiry(old.not_after, &after.tenant, id));
                if !new.status.is_terminal() {
                    batch.insert(
                        keys::expiry(new.not_after, &after.tenant, id),
                        tree_s.as_bytes(),
                    );
                }
            }
            EventBody::MissionCompleted(m) => {
                batch.insert(
                    of_tenant(COMPLETED, &after.tenant, m.mission_ref.as_str()),
                    &[],
                );
                batch.remove(keys::expiry(new.not_after, &after.tenant, id));
                remove_expiries_below(batch, after, id);
            }
            _ if new.status.is_terminal() => {
                batch.remove(keys::expiry(new.not_after, &after.tenant, id));
                remove_expiries_below(batch, after, id);
            }
            _ => {}
        }
    }
}

/// A mandate ended by an event ends everything below it, and none of its
/// descendants will get an `expired` event of its own (`expire` refuses them
/// as terminal), so their expiry entries go with it. Done here in the fold,
/// not by the scheduler dropping them later, so that the expiry queue stays a
/// function of the log and a rebuild equals the live projection.
fn remove_expiries_below(batch: &mut sled::Batch, after: &Tree, mandate: MandateId) {
    for d in after.descendants(mandate) {
        if let Some(m) = after.mandates.get(&d) {
            batch.remove(keys::expiry(m.not_after, &after.tenant, d));
        }
    }
}

/// A pending expiry from its key and value.
fn decode_expiry(k: &[u8], v: &[u8]) -> Result<DueExpiry, StoreError> {
    let bad = |reason: &str| StoreError::Decode {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: reason.into(),
    };
    // `x` SEP <8 bytes of millis> SEP <tenant> SEP <mandate>; the millis may
    // contain SEP bytes, so they are read by position.
    if k.len() < 12 || k[1] != SEP || k[10] != SEP {
        return Err(bad("malformed expiry key"));
    }
    let millis = be64(&k[2..10]) as i64;
    let rest = &k[11..];
    let tenant_end = rest
        .iter()
        .position(|b| *b == SEP)
        .ok_or_else(|| bad("no tenant"))?;
    let tenant_s = std::str::from_utf8(&rest[..tenant_end]).map_err(|_| bad("tenant not utf-8"))?;
    let tenant = TenantId::new(tenant_s).map_err(|e| bad(&e.to_string()))?;
    let mandate = MandateId(parse_last(k)?);
    Ok(DueExpiry {
        tenant,
        tree: decode_tree_id(k, v)?,
        mandate,
        not_after: Utc
            .timestamp_millis_opt(millis)
            .single()
            .ok_or_else(|| bad("time out of range"))?,
    })
}
