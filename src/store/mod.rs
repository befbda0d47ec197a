//! The projection in sled: every tree's current state (its snapshot), the
//! indexes queries read, each tree's history, and a checkpoint — the last log
//! position applied in order — written atomically with the state it covers.
//!
//! Everything here can be rebuilt from the log: the stream is the source of
//! truth. One sled tree holds all keys, prefixed by kind, so that one
//! `apply_batch` (atomic across crashes) covers a commit's whole effect.
//!
//! Key layout (`/` stands for a 0 byte; ids are subject-safe, so never contain it):
//! - `t/<tenant>/<tree>` → [`TreeSnapshot`] JSON
//! - `e/<tenant>/<tree>/<seq be64>` → event JSON (history)
//! - `m/<tenant>/<mandate>` → tree id
//! - `a/<tenant>/<agent>/<mandate>` → tree id (mandates held by an agent)
//! - `p/<tenant>/<principal>/<tree>` → () (roots granted by a principal)
//! - `r/<tenant>/<mission_ref>/<tree>` → () (trees serving a mission)
//! - `c/<tenant>/<mission_ref>` → () (missions completed)
//! - `x/<not_after ms be64>/<tenant>/<mandate>` → tree id (expiry queue)
//! - `z/<tenant>/<tree>` → [`Quarantine`] JSON (a tree whose stream is corrupt)
//! - `v/<tenant>/<tree>` → [`Unsupported`] JSON (a tree with events newer than this build)
//! - `k` → checkpoint (be64)

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

mod continuity;
pub use continuity::LogLoss;

use crate::domain::{
    apply, AgentId, DomainError, Event, EventBody, MandateId, MissionRef, PrincipalId, Quarantine,
    TenantId, Tree, TreeId,
};

/// Failures of the projection.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption of the database file).
    #[error("projection storage failed: {0}")]
    Storage(#[from] sled::Error),
    /// A record of the log cannot be decoded or breaks its tree's chain. The
    /// tree is quarantined; other trees go on.
    #[error("tree {tree} of tenant {tenant} is corrupt at log position {position}: {reason}")]
    Corrupt {
        tenant: TenantId,
        tree: TreeId,
        position: u64,
        reason: String,
    },
    /// A stored value does not decode (written by an incompatible build).
    #[error("projection value under {key} does not decode: {reason}")]
    Decode { key: String, reason: String },
}

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

const SEP: u8 = 0;

fn key(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![kind];
    for p in parts {
        k.push(SEP);
        k.extend_from_slice(p);
    }
    k
}

fn prefix(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(kind, parts);
    k.push(SEP);
    k
}

fn ms(t: DateTime<Utc>) -> [u8; 8] {
    // Times before 1970 sort first; not_after is always in the future anyway.
    (t.timestamp_millis().max(0) as u64).to_be_bytes()
}

/// A due expiry: the mandate whose `not_after` has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueExpiry {
    pub tenant: TenantId,
    pub tree: TreeId,
    pub mandate: MandateId,
    pub not_after: DateTime<Utc>,
}

/// The sled projection.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    kv: sled::Tree,
    /// Missions completed by the intake, whether or not a tree serves them
    /// (kept apart from the projection: nothing in the log records them).
    missions: sled::Tree,
    /// Recorded check decisions of the embedded engine (not a projection:
    /// decisions are not events, so this is kept as it is written).
    audit: sled::Tree,
    /// Serializes [`Store::apply_commit`]: it reads a tree's snapshot and
    /// writes the next one, and the writer, a conflict catch-up and the
    /// follower may apply commits of one tree at once. Unserialized, one of
    /// them could write a snapshot older than another had just written; the
    /// next commit then seemed to skip a sequence number and a healthy tree
    /// was quarantined as corrupt.
    apply_lock: Arc<Mutex<()>>,
    /// Decoded snapshots by tree, kept equal to the stored ones: every write
    /// of a snapshot (in `apply_commit`, under `apply_lock`) replaces its entry.
    cache: Arc<Mutex<SnapshotCache>>,
}

/// Decoded snapshots by tenant and tree.
type SnapshotCache = HashMap<(TenantId, TreeId), Arc<TreeSnapshot>>;

/// Most decoded snapshots kept in memory.
const SNAPSHOT_CACHE: usize = 4096;

impl Store {
    /// Opens (or creates) the projection at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::with_db(sled::open(path)?)
    }

    /// A projection that lives only as long as the process (tests, rebuild checks).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::with_db(sled::Config::new().temporary(true).open()?)
    }

    fn with_db(db: sled::Db) -> Result<Self, StoreError> {
        let kv = db.open_tree("projection")?;
        let audit = db.open_tree("audit")?;
        let missions = db.open_tree("missions")?;
        Ok(Self {
            db,
            kv,
            missions,
            audit,
            apply_lock: Arc::new(Mutex::new(())),
            cache: Default::default(),
        })
    }

    /// Empties the projection (not the audit or intake records), for a rebuild.
    pub fn clear(&self) -> Result<(), StoreError> {
        let _serialized = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.kv.clear()?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Records a check decision (embedded engine).
    pub fn record_audit<T: Serialize>(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        record: &T,
    ) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        let k = key(
            b'u',
            &[
                tenant.as_str().as_bytes(),
                mandate.to_string().as_bytes(),
                &id.to_be_bytes(),
            ],
        );
        self.audit.insert(
            k,
            serde_json::to_vec(record).expect("audit records serialize"),
        )?;
        Ok(())
    }

    /// Recorded decisions of a mandate, oldest first.
    pub fn audit_records<T: for<'de> Deserialize<'de>>(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<Vec<T>, StoreError> {
        let p = prefix(
            b'u',
            &[tenant.as_str().as_bytes(), mandate.to_string().as_bytes()],
        );
        self.audit
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The last log position applied in order.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self.kv.get(b"k")?.map(|v| be64(&v)).unwrap_or(0))
    }

    /// Durably writes everything applied so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
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
        let k = key(
            b't',
            &[tenant.as_str().as_bytes(), tree.to_string().as_bytes()],
        );
        let snap: Option<TreeSnapshot> = self.kv.get(&k)?.map(|v| decode(&k, &v)).transpose()?;
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

    /// The tree a mandate lives in, within one tenant.
    pub fn tree_of(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<Option<TreeId>, StoreError> {
        let k = key(
            b'm',
            &[tenant.as_str().as_bytes(), mandate.to_string().as_bytes()],
        );
        self.kv.get(&k)?.map(|v| decode_tree_id(&k, &v)).transpose()
    }

    /// Why a tree is quarantined, if it is.
    pub fn quarantined(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Quarantine>, StoreError> {
        let k = key(
            b'z',
            &[tenant.as_str().as_bytes(), tree.to_string().as_bytes()],
        );
        self.kv.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// A tenant's quarantined trees.
    pub fn quarantined_trees(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(TreeId, Quarantine)>, StoreError> {
        self.kv
            .scan_prefix(prefix(b'z', &[tenant.as_str().as_bytes()]))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((TreeId(parse_last(&k)?), decode(&k, &v)?))
            })
            .collect()
    }

    /// Every tree marked as holding events newer than the build that marked
    /// it could read, with its tenant.
    pub fn unsupported_trees(&self) -> Result<Vec<(TenantId, TreeId)>, StoreError> {
        self.kv
            .scan_prefix([b'v', SEP])
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

    /// Whether the tree holds an event newer than this build reads, and where.
    pub fn unsupported(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Unsupported>, StoreError> {
        let k = key(
            b'v',
            &[tenant.as_str().as_bytes(), tree.to_string().as_bytes()],
        );
        self.kv.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// A tree's events in order.
    pub fn history(&self, tenant: &TenantId, tree: TreeId) -> Result<Vec<Event>, StoreError> {
        let p = prefix(
            b'e',
            &[tenant.as_str().as_bytes(), tree.to_string().as_bytes()],
        );
        self.kv
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Trees serving a mission.
    pub fn trees_for_mission(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<Vec<TreeId>, StoreError> {
        self.last_parts(prefix(
            b'r',
            &[tenant.as_str().as_bytes(), mission.as_str().as_bytes()],
        ))
    }

    /// Whether a mission was completed.
    pub fn mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<bool, StoreError> {
        let k = key(
            b'c',
            &[tenant.as_str().as_bytes(), mission.as_str().as_bytes()],
        );
        Ok(self.kv.contains_key(&k)? || self.missions.contains_key(&k)?)
    }

    /// Records a mission as completed even where no tree serves it yet, so a
    /// later issue for it is refused.
    pub fn mark_mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<(), StoreError> {
        self.missions.insert(
            key(
                b'c',
                &[tenant.as_str().as_bytes(), mission.as_str().as_bytes()],
            ),
            &[],
        )?;
        Ok(())
    }

    /// Withdraws a mark of [`Store::mark_mission_completed`] whose completion
    /// was refused or failed. A completion recorded by an event stays.
    pub fn unmark_mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<(), StoreError> {
        self.missions.remove(key(
            b'c',
            &[tenant.as_str().as_bytes(), mission.as_str().as_bytes()],
        ))?;
        Ok(())
    }

    /// Trees whose root a principal granted.
    pub fn trees_granted_by(
        &self,
        tenant: &TenantId,
        principal: &PrincipalId,
    ) -> Result<Vec<TreeId>, StoreError> {
        self.last_parts(prefix(
            b'p',
            &[tenant.as_str().as_bytes(), principal.as_str().as_bytes()],
        ))
    }

    /// Mandates an agent holds (any status), with their trees.
    pub fn mandates_held_by(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Vec<(TreeId, MandateId)>, StoreError> {
        let p = prefix(
            b'a',
            &[tenant.as_str().as_bytes(), agent.as_str().as_bytes()],
        );
        self.kv
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv?;
                let mandate = parse_last(&k)?;
                Ok((decode_tree_id(&k, &v)?, MandateId(mandate)))
            })
            .collect()
    }

    /// All trees of a tenant.
    pub fn trees_of_tenant(&self, tenant: &TenantId) -> Result<Vec<TreeId>, StoreError> {
        self.last_parts(prefix(b't', &[tenant.as_str().as_bytes()]))
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
                let mut k = expiry_key(e.not_after, &e.tenant, e.mandate);
                k.push(0);
                k
            }
            None => vec![b'x', SEP],
        };
        let end = {
            let mut k = vec![b'x', SEP];
            k.extend_from_slice(&ms(now));
            k.push(0xff);
            k
        };
        let mut out = Vec::new();
        for kv in self.kv.range(start..end).take(limit) {
            let (k, v) = kv?;
            out.push(self.decode_expiry(&k, &v)?);
        }
        Ok(out)
    }

    /// The earliest pending expiry, if any.
    pub fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.kv.scan_prefix([b'x', SEP]).next() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some(self.decode_expiry(&k, &v)?.not_after))
            }
            None => Ok(None),
        }
    }

    /// Drops a pending expiry (one that no longer needs its own event).
    pub fn remove_expiry(&self, e: &DueExpiry) -> Result<(), StoreError> {
        self.kv
            .remove(expiry_key(e.not_after, &e.tenant, e.mandate))?;
        Ok(())
    }

    fn decode_expiry(&self, k: &[u8], v: &[u8]) -> Result<DueExpiry, StoreError> {
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
        let tenant_s =
            std::str::from_utf8(&rest[..tenant_end]).map_err(|_| bad("tenant not utf-8"))?;
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

    fn last_parts(&self, p: Vec<u8>) -> Result<Vec<TreeId>, StoreError> {
        self.kv
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
            self.kv.insert(b"k", position.to_be_bytes().to_vec())?;
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
            batch.insert(b"k".to_vec(), position.to_be_bytes().to_vec());
        }
        let snapshot = self.load_snapshot_locked(tenant, tree_id)?;
        if snapshot.as_ref().is_some_and(|s| s.position >= position) {
            self.kv.apply_batch(batch)?;
            return Ok(Applied::AlreadyApplied);
        }
        let tree_s = tree_id.to_string();
        let tree_key = [tenant.as_str().as_bytes(), tree_s.as_bytes()];
        let too_new = self.unsupported(tenant, tree_id)?;
        if too_new.as_ref().is_some_and(|u| position > u.position) {
            // Nothing past an unreadable record can be applied in order.
            self.kv.apply_batch(batch)?;
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
                    key(b'v', &tree_key),
                    serde_json::to_vec(&mark).expect("marks serialize"),
                );
                self.kv.apply_batch(batch)?;
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
                    key(b'z', &tree_key),
                    serde_json::to_vec(&q).expect("marks serialize"),
                );
                batch.remove(key(b'v', &tree_key));
                tree.quarantine = Some(q.clone());
                self.write_snapshot(batch, TreeSnapshot { position, tree })?;
                return Ok(Applied::Quarantined(q));
            }
        };
        if too_new.is_some() {
            batch.remove(key(b'v', &tree_key));
        }
        let before = tree.clone();
        for e in &events {
            apply(&mut tree, e);
            let ek = key(
                b'e',
                &[
                    tenant.as_str().as_bytes(),
                    tree_id.to_string().as_bytes(),
                    &e.seq.to_be_bytes(),
                ],
            );
            batch.insert(ek, serde_json::to_vec(e).expect("events serialize"));
        }
        if before.quarantine.is_some() && tree.quarantine.is_none() {
            batch.remove(key(b'z', &tree_key));
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
            key(
                b't',
                &[tenant.as_str().as_bytes(), tree_id.to_string().as_bytes()],
            ),
            serde_json::to_vec(&snap).expect("snapshots serialize"),
        );
        self.kv.apply_batch(batch)?;
        self.cache_put((tenant, tree_id), Arc::new(snap));
        Ok(())
    }

    /// Every key and value, for comparing a live projection with a rebuild.
    /// The checkpoint is left out: a writer-applied projection and a rebuild
    /// agree on state, not on how far their follower has read.
    pub fn dump(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        self.kv
            .iter()
            .filter(|kv| !matches!(kv, Ok((k, _)) if k.as_ref() == b"k"))
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

fn expiry_key(not_after: DateTime<Utc>, tenant: &TenantId, mandate: MandateId) -> Vec<u8> {
    key(
        b'x',
        &[
            &ms(not_after),
            tenant.as_str().as_bytes(),
            mandate.to_string().as_bytes(),
        ],
    )
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
                batch.insert(key(b'm', &[t, id_s.as_bytes()]), tree_s.as_bytes());
                batch.insert(
                    key(b'a', &[t, m.grantee.as_str().as_bytes(), id_s.as_bytes()]),
                    tree_s.as_bytes(),
                );
                if m.parent.is_none() {
                    batch.insert(
                        key(
                            b'p',
                            &[t, m.principal.as_str().as_bytes(), tree_s.as_bytes()],
                        ),
                        &[],
                    );
                    if let Some(r) = m.mission.as_ref().and_then(|m| m.mission_ref.as_ref()) {
                        batch.insert(
                            key(b'r', &[t, r.as_str().as_bytes(), tree_s.as_bytes()]),
                            &[],
                        );
                    }
                }
                batch.insert(
                    expiry_key(m.not_after, &after.tenant, id),
                    tree_s.as_bytes(),
                );
            }
            EventBody::MandateRenewed(_) => {
                batch.remove(expiry_key(old.not_after, &after.tenant, id));
                if !new.status.is_terminal() {
                    batch.insert(
                        expiry_key(new.not_after, &after.tenant, id),
                        tree_s.as_bytes(),
                    );
                }
            }
            EventBody::MissionCompleted(m) => {
                batch.insert(key(b'c', &[t, m.mission_ref.as_str().as_bytes()]), &[]);
                batch.remove(expiry_key(new.not_after, &after.tenant, id));
                remove_expiries_below(batch, after, id);
            }
            _ if new.status.is_terminal() => {
                batch.remove(expiry_key(new.not_after, &after.tenant, id));
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
            batch.remove(expiry_key(m.not_after, &after.tenant, d));
        }
    }
}

fn be64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[8 - n..].copy_from_slice(&v[v.len() - n..]);
    u64::from_be_bytes(b)
}

fn decode<T: for<'de> Deserialize<'de>>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: e.to_string(),
    })
}

fn decode_tree_id(k: &[u8], v: &[u8]) -> Result<TreeId, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| TreeId::parse(s).ok())
        .ok_or_else(|| StoreError::Decode {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "not a tree id".into(),
        })
}

fn parse_last(k: &[u8]) -> Result<uuid::Uuid, StoreError> {
    let last = k.rsplit(|b| *b == SEP).next().unwrap_or_default();
    std::str::from_utf8(last)
        .ok()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| StoreError::Decode {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "last key part is not a UUID".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        decide, root_tree_id, Actor, Command, CommandEnvelope, CommandId, Mission, Scope,
    };

    fn issue_commit(tenant: &TenantId) -> (TreeId, Vec<u8>) {
        let cmd = CommandEnvelope {
            command_id: CommandId::generate(),
            tenant: tenant.clone(),
            actor: Actor::Principal(PrincipalId::new("cfo").unwrap()),
            correlation_id: None,
            schema_version: 1,
            command: Command::Issue(crate::domain::command::Issue {
                principal: PrincipalId::new("cfo").unwrap(),
                grantee: AgentId::new("lead").unwrap(),
                mission: Mission {
                    purpose: "p".into(),
                    mission_ref: None,
                },
                scope: Scope::parse(["a:b on c"]).unwrap(),
                not_after: chrono::Utc::now() + chrono::Duration::hours(1),
                depth: 1,
                step_up: vec![],
                supervisors: vec![],
            }),
        };
        let tree = root_tree_id(&cmd.tenant, cmd.command_id);
        let events = decide(
            &Tree::empty(tenant.clone(), tree),
            &cmd,
            &crate::domain::Facts::default(),
            chrono::Utc::now(),
        )
        .unwrap();
        (tree, Event::encode_commit(&events))
    }

    #[test]
    fn a_corrupt_commit_quarantines_its_tree_only_and_names_it() {
        let store = Store::temporary().unwrap();
        let acme = TenantId::new("acme").unwrap();
        let globex = TenantId::new("globex").unwrap();
        let (bad_tree, good) = issue_commit(&acme);
        assert!(matches!(
            store.apply_commit(&acme, bad_tree, 1, &good, true).unwrap(),
            Applied::Applied(_)
        ));
        // Garbage is quarantined, naming tree and position.
        let applied = store
            .apply_commit(&acme, bad_tree, 2, b"not json", true)
            .unwrap();
        let Applied::Quarantined(q) = applied else {
            panic!("{applied:?}")
        };
        assert_eq!(q.position, 2);
        assert!(
            q.reason.contains(&bad_tree.to_string()) && q.reason.contains("position 2"),
            "{q:?}"
        );
        assert_eq!(store.quarantined(&acme, bad_tree).unwrap(), Some(q.clone()));
        // Once quarantined, the tree takes nothing but its resolution: other
        // records are passed over (the head moves, the state does not).
        assert_eq!(
            store.apply_commit(&acme, bad_tree, 3, &good, true).unwrap(),
            Applied::PassedOver
        );
        let snap = store.tree(&acme, bad_tree).unwrap().unwrap();
        assert_eq!((snap.position, snap.tree.version), (3, 1));
        assert_eq!(snap.tree.quarantine, Some(q));
        // A commit that breaks a healthy tree's chain (seq 1 again) is caught too.
        let (chain_tree, first) = issue_commit(&acme);
        store
            .apply_commit(&acme, chain_tree, 4, &first, true)
            .unwrap();
        let applied = store
            .apply_commit(&acme, chain_tree, 5, &first, true)
            .unwrap();
        let Applied::Quarantined(q) = applied else {
            panic!("{applied:?}")
        };
        assert!(q.reason.contains("seq 1"), "{q:?}");
        // Other tenants' trees go on, and the checkpoint moved past the bad record.
        let (other, commit) = issue_commit(&globex);
        assert!(matches!(
            store
                .apply_commit(&globex, other, 6, &commit, true)
                .unwrap(),
            Applied::Applied(_)
        ));
        assert!(store.quarantined(&globex, other).unwrap().is_none());
        assert_eq!(store.checkpoint().unwrap(), 6);
        // The quarantined tree kept its last good state.
        assert_eq!(
            store.tree(&acme, bad_tree).unwrap().unwrap().tree.version,
            1
        );
    }

    #[test]
    fn a_newer_schema_version_holds_the_tree_without_quarantine_until_it_can_be_read() {
        let store = Store::temporary().unwrap();
        let acme = TenantId::new("acme").unwrap();
        let (tree, good) = issue_commit(&acme);
        let newer = br#"[{"schema_version": 2, "type": "mandate_issued"}]"#;
        // A commit this build cannot read yet is not corruption,
        let applied = store.apply_commit(&acme, tree, 1, newer, true).unwrap();
        assert!(matches!(applied, Applied::Unsupported(_)), "{applied:?}");
        assert!(store.quarantined(&acme, tree).unwrap().is_none());
        assert_eq!(store.unsupported(&acme, tree).unwrap().unwrap().version, 2);
        assert_eq!(
            store.unsupported_trees().unwrap(),
            vec![(acme.clone(), tree)]
        );
        // nothing after it is applied out of order,
        let applied = store.apply_commit(&acme, tree, 2, &good, true).unwrap();
        assert!(matches!(applied, Applied::Unsupported(_)), "{applied:?}");
        assert!(store.tree(&acme, tree).unwrap().is_none());
        // and once the record at that position reads (as it does for a newer
        // build), the mark goes and the tree moves on.
        let applied = store.apply_commit(&acme, tree, 1, &good, true).unwrap();
        assert!(matches!(applied, Applied::Applied(_)), "{applied:?}");
        assert!(store.unsupported(&acme, tree).unwrap().is_none());
        assert!(store.unsupported_trees().unwrap().is_empty());
    }
}
