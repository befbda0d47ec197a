//! The projection: every tree kept in parts (its head, each mandate, each
//! child entry, each command id applied, each event), the indexes queries
//! read (mandate → tree, agent, principal, mission, missions a tree's event
//! completed, expiry queue), quarantine and too-new marks, and the
//! checkpoint. The key layout is in `keys.rs`; the fold that writes the
//! parts is in `apply.rs`.
//!
//! Its source is the event log: everything here is a fold of the log's
//! records in order ([`Store::apply_commit`]), so a replay of the log into an
//! empty projection equals it (invariant 6), and `Engine::rebuild_check`
//! replaces it by such a replay ([`Store::clear_projection`]). Nothing that
//! the log does not record is written here: mission marks and audit records
//! have parts of their own.
//!
//! Readers get a tree as a [`TreeSnapshot`] of one of three sizes: its head
//! alone ([`Store::head`]), its head with the chains of some of its mandates
//! ([`Store::view`]: what a command decides on and a check authorizes on,
//! at most 32 mandates a chain), or all of it ([`Store::tree`]: the `tree`
//! query, whose cost is the tree's size by nature).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::approval::Approval;
use crate::domain::{
    AgentId, AppliedCommand, CommandId, Event, Mandate, MandateId, MissionRef, PrincipalId,
    Quarantine, TenantId, Tree, TreeId,
};

use super::apply::{decode_all, Commit, Pending};
use super::keys::{
    self, be64, decode_tree_id, of_tenant, of_tree, parse_last, prefix, read, read_all,
    under_tenant, APPLIED, APPROVAL, CHECKPOINT, CHILD, COMPLETED, EVENT, EXPIRY, GRANTED_BY,
    HELD_BY, LAYOUT, MANDATE, NODE, OUTBOX, QUARANTINE, SEP, SERVES_MISSION, SNAPSHOT, TOO_NEW,
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

/// The version of the projection's key layout this build writes. A store
/// whose projection holds another (or none, with data in it: the layout that
/// kept a whole tree in one snapshot) is cleared and rebuilt from the log.
pub(super) const LAYOUT_VERSION: u64 = 3;

/// Most tree heads kept decoded in memory.
const HEAD_CACHE: usize = 16_384;
/// Most mandates kept decoded in memory.
const NODE_CACHE: usize = 65_536;

/// The most mandates [`Store::descendants_ended_by`] reads for one end.
pub const CASCADE_COUNT_LIMIT: u64 = 100;

/// Decoded heads and mandates, kept equal to the stored ones: only a
/// committed batch ([`Pending::commit`]) and a read under the read lock put
/// entries in. Bounded: full, a map starts over rather than track recency.
#[derive(Default)]
pub(super) struct Cache {
    heads: HashMap<(TenantId, TreeId), Arc<TreeSnapshot>>,
    nodes: HashMap<(TenantId, TreeId, MandateId), Arc<Mandate>>,
}

impl Cache {
    pub(super) fn put_head(&mut self, k: (TenantId, TreeId), v: Arc<TreeSnapshot>) {
        if self.heads.len() >= HEAD_CACHE && !self.heads.contains_key(&k) {
            self.heads.clear();
        }
        self.heads.insert(k, v);
    }

    pub(super) fn put_node(&mut self, k: (TenantId, TreeId, MandateId), v: Arc<Mandate>) {
        if self.nodes.len() >= NODE_CACHE && !self.nodes.contains_key(&k) {
            self.nodes.clear();
        }
        self.nodes.insert(k, v);
    }

    fn clear(&mut self) {
        self.heads.clear();
        self.nodes.clear();
    }
}

impl Store {
    /// Empties the projection, for a rebuild from the log. The mission
    /// marks and the audit records are kept: the log does not hold them.
    pub fn clear_projection(&self) -> Result<(), StoreError> {
        let _serialized = self.write_lock();
        // The outbox is not a fold of the log: what it holds still waits
        // for its signals to be stored.
        let outbox = self
            .projection
            .scan_prefix([OUTBOX, SEP])
            .collect::<Result<Vec<_>, _>>()?;
        self.projection.clear()?;
        for (k, v) in outbox {
            self.projection.insert(k, v)?;
        }
        self.projection
            .insert(LAYOUT, LAYOUT_VERSION.to_be_bytes().to_vec())?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Clears a projection written in another layout, so that it is
    /// rebuilt from the log and never read wrongly; marks a new one with
    /// this layout. Returns whether it cleared one.
    pub(super) fn check_layout(&self) -> Result<bool, StoreError> {
        let found = self.projection.get(LAYOUT)?.map(|v| be64(&v));
        match found {
            Some(v) if v == LAYOUT_VERSION => Ok(false),
            None if self.projection.is_empty() => {
                self.projection
                    .insert(LAYOUT, LAYOUT_VERSION.to_be_bytes().to_vec())?;
                Ok(false)
            }
            other => {
                tracing::warn!(
                    found = ?other,
                    expected = LAYOUT_VERSION,
                    "the projection was written in another layout; it is cleared and rebuilt from the log"
                );
                self.clear_projection()?;
                Ok(true)
            }
        }
    }

    /// The last log position applied in order.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self
            .projection
            .get(CHECKPOINT)?
            .map(|v| be64(&v))
            .unwrap_or(0))
    }

    /// A tree's head: its snapshot with no mandate and no command in it
    /// (position, version, root, mission, principal, quarantine, registry).
    pub fn head(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Arc<TreeSnapshot>>, StoreError> {
        let _consistent = self.read_lock();
        self.load_head(tenant, tree)
    }

    /// A tree's head with the chains (root to mandate) of `mandates` and the
    /// root, and the record of `command` if the tree applied it: what a
    /// command decides on and a check authorizes on. Its cost is that of the
    /// chains (at most 32 mandates each), whatever the size of the tree. A
    /// mandate not in the tree is left out. Mandates hold no children here.
    pub fn view(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        mandates: &[MandateId],
        command: Option<CommandId>,
    ) -> Result<Option<Arc<TreeSnapshot>>, StoreError> {
        let _consistent = self.read_lock();
        let Some(head) = self.load_head(tenant, tree)? else {
            return Ok(None);
        };
        let mut snap = (*head).clone();
        let start = snap.tree.root.into_iter().chain(mandates.iter().copied());
        for id in start {
            let mut next = Some(id);
            // Up the chain until a mandate already in the view (its chain is
            // too) or the root; a parent is always issued before its child,
            // so the walk ends, and the depth bound caps it besides.
            let mut steps = 0;
            while let Some(id) = next.filter(|id| !snap.tree.mandates.contains_key(id)) {
                let Some(m) = self.load_node(tenant, tree, id)? else {
                    break;
                };
                next = m.parent;
                snap.tree.mandates.insert(id, (*m).clone());
                steps += 1;
                if steps > crate::domain::model::MAX_DEPTH as usize + 1 {
                    break;
                }
            }
        }
        if let Some(c) = command {
            if let Some(applied) = self.applied_command(tenant, tree, c)? {
                snap.tree.commands.insert(c, applied);
            }
        }
        Ok(Some(Arc::new(snap)))
    }

    /// A whole tree: every mandate with its children, every command id.
    /// Its cost is the tree's size: for the `tree` query and tools, never
    /// on a command's or a check's path.
    pub fn tree(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<TreeSnapshot>, StoreError> {
        let _consistent = self.read_lock();
        let Some(head) = self.load_head(tenant, tree)? else {
            return Ok(None);
        };
        let mut snap = (*head).clone();
        let tree_s = tree.to_string();
        let parts = [tenant.as_str().as_bytes(), tree_s.as_bytes()];
        for kv in self.projection.scan_prefix(prefix(NODE, &parts)) {
            let (k, v) = kv?;
            let m: Mandate = keys::decode(&k, &v)?;
            snap.tree.mandates.insert(m.id, m);
        }
        // Keys sort by parent, then by the issuing event's seq.
        for kv in self.projection.scan_prefix(prefix(CHILD, &parts)) {
            let (k, v) = kv?;
            let (parent, child) = child_entry(&k, &v)?;
            if let Some(p) = snap.tree.mandates.get_mut(&parent) {
                p.children.push(child);
            }
        }
        for kv in self.projection.scan_prefix(prefix(APPLIED, &parts)) {
            let (k, v) = kv?;
            let c: AppliedCommand = keys::decode(&k, &v)?;
            snap.tree.commands.insert(CommandId(parse_last(&k)?), c);
        }
        for kv in self.projection.scan_prefix(prefix(APPROVAL, &parts)) {
            let (k, v) = kv?;
            let a: Approval = keys::decode(&k, &v)?;
            snap.tree.approvals.insert(a.id, a);
        }
        Ok(Some(snap))
    }

    /// The events one command wrote to a tree, from its history.
    pub fn events_of_command(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        command: CommandId,
    ) -> Result<Vec<Event>, StoreError> {
        let Some(applied) = self.applied_command(tenant, tree, command)? else {
            return Ok(Vec::new());
        };
        let tree_s = tree.to_string();
        let parts = [tenant.as_str().as_bytes(), tree_s.as_bytes()];
        let from = keys::key(EVENT, &[parts[0], parts[1], &applied.seq.to_be_bytes()]);
        let end = prefix(EVENT, &parts);
        let mut out = Vec::new();
        for kv in self.projection.range(from..) {
            let (k, v) = kv?;
            if !k.starts_with(&end) {
                break;
            }
            let e: Event = keys::decode(&k, &v)?;
            if e.command_id != command {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// The event of a tree at per-tree sequence `seq`, from its history.
    pub fn event_at(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        seq: u64,
    ) -> Result<Option<Event>, StoreError> {
        let tree_s = tree.to_string();
        let k = keys::key(
            EVENT,
            &[
                tenant.as_str().as_bytes(),
                tree_s.as_bytes(),
                &seq.to_be_bytes(),
            ],
        );
        read(&self.projection, &k)
    }

    /// The record of a command id a tree applied.
    pub(super) fn applied_command(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        command: CommandId,
    ) -> Result<Option<AppliedCommand>, StoreError> {
        read(&self.projection, &of_tree(APPLIED, tenant, tree, command))
    }

    /// One step-up approval of a tree, as stored.
    pub fn load_approval(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        id: uuid::Uuid,
    ) -> Result<Option<Approval>, StoreError> {
        read(&self.projection, &of_tree(APPROVAL, tenant, tree, id))
    }

    /// The pending approvals of `mandate` in a tree whose ids (time-ordered
    /// UUIDs, by key order) are no older than `since`: the ones a new
    /// request may repeat, read without going over the tree's older ones.
    pub fn pending_approvals_since(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        mandate: crate::domain::MandateId,
        since: uuid::Uuid,
    ) -> Result<Vec<Approval>, StoreError> {
        let _consistent = self.read_lock();
        let tree_s = tree.to_string();
        let end = prefix(APPROVAL, &[tenant.as_str().as_bytes(), tree_s.as_bytes()]);
        let mut out = Vec::new();
        for kv in self
            .projection
            .range(of_tree(APPROVAL, tenant, tree, since)..)
        {
            let (k, v) = kv?;
            if !k.starts_with(&end) {
                break;
            }
            let a: Approval = keys::decode(&k, &v)?;
            if a.mandate == mandate && a.state == crate::domain::approval::ApprovalState::Pending {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The cached or stored head of a tree.
    pub(super) fn load_head(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Arc<TreeSnapshot>>, StoreError> {
        let k = (tenant.clone(), tree);
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heads
            .get(&k)
        {
            return Ok(Some(hit.clone()));
        }
        let stored: Option<TreeSnapshot> = self.of_tree(SNAPSHOT, tenant, tree)?;
        Ok(stored.map(|s| {
            let s = Arc::new(s);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put_head(k, s.clone());
            s
        }))
    }

    /// The cached or stored mandate of a tree.
    pub(super) fn load_node(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        id: MandateId,
    ) -> Result<Option<Arc<Mandate>>, StoreError> {
        let k = (tenant.clone(), tree, id);
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(&k)
        {
            return Ok(Some(hit.clone()));
        }
        let stored: Option<Mandate> = read(&self.projection, &of_tree(NODE, tenant, tree, id))?;
        Ok(stored.map(|m| {
            let m = Arc::new(m);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put_node(k, m.clone());
            m
        }))
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
    ///
    /// A root's id is its tree's (both are the derived id): when
    /// the decoded heads hold a tree of that id whose root is `mandate`,
    /// that is the answer, without the index. The index entry of a root
    /// issued long ago is on a page sled's cache may no longer hold, and a
    /// command on a root (its revoke) would read it from disk first. Only
    /// the cached heads are asked: reading a stored head for every mandate
    /// id would cost a child's check a lookup of a key that is not there.
    pub fn tree_of(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<Option<TreeId>, StoreError> {
        let own = TreeId(mandate.0);
        let rooted_here = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heads
            .get(&(tenant.clone(), own))
            .is_some_and(|h| h.tree.root == Some(mandate));
        if rooted_here {
            return Ok(Some(own));
        }
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

    /// How many mandates below `mandate` (not itself) an end of `mandate`
    /// at `now` ends: every descendant not already ended on its own (its
    /// status terminal, or its `not_after` passed), and nothing below one
    /// that is (that one ended them before). Paused ones count: an end is
    /// more than a pause. Reads the child entries and mandates straight from
    /// sled, past the caches, so a walk evicts nothing a command or a check
    /// needs.
    ///
    /// The walk reads at most [`CASCADE_COUNT_LIMIT`] mandates, so what it
    /// costs does not grow with the tree: ending the root of a tree of
    /// 100,000 costs the count no more than ending one of 101. Where more
    /// than that hang below `mandate`, it stops there and answers
    /// `CASCADE_COUNT_LIMIT + 1`, "more than the limit".
    pub fn descendants_ended_by(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        mandate: MandateId,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.descendants_ended_by_pausing(tenant, tree, mandate, now, || {})
    }

    /// [`Store::descendants_ended_by`], calling `pause` before each read,
    /// outside any read of sled: a caller of low priority waits there for
    /// the writes it must not hold up (sled's reads and batches share one
    /// lock, and a reader preempted inside a read holds a batch up).
    pub fn descendants_ended_by_pausing(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        mandate: MandateId,
        now: DateTime<Utc>,
        mut pause: impl FnMut(),
    ) -> Result<u64, StoreError> {
        let mut ended = 0;
        let mut visited = 0;
        let mut stack = vec![mandate];
        while let Some(parent) = stack.pop() {
            let mut children = of_tree(CHILD, tenant, tree, parent);
            children.push(SEP);
            pause();
            for kv in self.projection.scan_prefix(&children) {
                if visited == CASCADE_COUNT_LIMIT {
                    return Ok(CASCADE_COUNT_LIMIT + 1);
                }
                visited += 1;
                let (k, v) = kv?;
                let (_, child) = child_entry(&k, &v)?;
                pause();
                let node: Option<Mandate> =
                    read(&self.projection, &of_tree(NODE, tenant, tree, child))?;
                match node {
                    Some(m) if !m.status().is_terminal() && m.not_after() > now => {
                        ended += 1;
                        stack.push(child);
                    }
                    _ => {}
                }
            }
        }
        Ok(ended)
    }

    /// How many expiries are due at `now` in tenants `serves` accepts,
    /// counted up to `limit` (the queue's first entries; past the limit, the
    /// count stops there).
    pub fn due_expiry_count(
        &self,
        now: DateTime<Utc>,
        serves: impl Fn(&TenantId) -> bool,
        limit: usize,
    ) -> Result<u64, StoreError> {
        const PAGE: usize = 1024;
        let mut count = 0;
        let mut seen = 0;
        let mut after: Option<DueExpiry> = None;
        while seen < limit {
            let due = self.due_expiries(now, after.as_ref(), PAGE.min(limit - seen))?;
            seen += due.len();
            count += due.iter().filter(|e| serves(&e.tenant)).count() as u64;
            match due.last() {
                Some(last) if due.len() == PAGE => after = Some(last.clone()),
                _ => break,
            }
        }
        Ok(count)
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
        let commit = Commit {
            tenant,
            tree: tree_id,
            position,
            payload: Ok(payload),
        };
        Ok(self
            .apply_commits(std::slice::from_ref(&commit), advance_checkpoint)?
            .remove(0))
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
        let commit = Commit {
            tenant,
            tree: tree_id,
            position,
            payload: Err(reason.to_string()),
        };
        Ok(self
            .apply_commits(std::slice::from_ref(&commit), advance_checkpoint)?
            .remove(0))
    }

    /// Applies many commits in log order as one atomic sled batch, each as
    /// [`Store::apply_commit`] would: a rebuild or a catch-up pays one
    /// batch, not one per commit. Returns what each commit did, in order.
    pub fn apply_commits(
        &self,
        commits: &[Commit<'_>],
        advance_checkpoint: bool,
    ) -> Result<Vec<Applied>, StoreError> {
        self.apply_commits_noting(commits, advance_checkpoint, None)
    }

    /// [`Store::apply_commits`], and each applied commit whose events `note`
    /// accepts goes into the outbox (`outbox.rs`) in the same atomic batch:
    /// a process that dies before publishing the commit's signals finds it
    /// there when it starts again.
    pub fn apply_commits_noting(
        &self,
        commits: &[Commit<'_>],
        advance_checkpoint: bool,
        note: Option<super::apply::Note<'_>>,
    ) -> Result<Vec<Applied>, StoreError> {
        // Decoded and hashed before the lock: readers and other writers
        // wait only for the fold.
        let decoded = decode_all(commits);
        let _serialized = self.write_lock();
        let mut pending = Pending::new(self).noting(note);
        let applied = commits
            .iter()
            .zip(decoded)
            .map(|(c, d)| pending.apply(c, d, advance_checkpoint))
            .collect::<Result<Vec<_>, _>>()?;
        pending.commit()?;
        Ok(applied)
    }

    /// Moves the checkpoint past a record that belongs to no tree.
    pub fn advance_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        let _serialized = self.write_lock();
        let mut pending = Pending::new(self);
        pending.advance(position)?;
        pending.commit()
    }

    /// Every key and value, for comparing a live projection with a rebuild.
    /// Left out: the outbox (not a fold of the log: `outbox.rs`), the
    /// checkpoint (a writer-applied projection and a rebuild
    /// agree on state, not on how far their follower has read), and the
    /// expiry entries due at `now` (the scheduler drops those of mandates
    /// ended by an ancestor when it finds them, which a rebuild has not done
    /// yet; see `apply.rs`).
    pub fn dump_at(&self, now: DateTime<Utc>) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        let due_end = {
            let mut k = vec![EXPIRY, SEP];
            k.extend_from_slice(&keys::ms(now));
            k.push(0xff);
            k
        };
        self.projection
            .iter()
            .filter(|kv| match kv {
                Ok((k, _)) => {
                    k.as_ref() != CHECKPOINT
                        && !k.starts_with(&[OUTBOX, SEP])
                        && !(k.starts_with(&[EXPIRY, SEP]) && k.as_ref() < due_end.as_slice())
                }
                Err(_) => true,
            })
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// [`Store::dump_at`] the system clock's now.
    pub fn dump(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        self.dump_at(Utc::now())
    }
}

/// The parent and child of a child entry (`h/<tenant>/<tree>/<parent>/<seq be64>`):
/// the parent part is read by position from the end, since the seq may hold
/// separator bytes.
fn child_entry(k: &[u8], v: &[u8]) -> Result<(MandateId, MandateId), StoreError> {
    let bad = || StoreError::Decode {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: "malformed child entry".into(),
    };
    const UUID_LEN: usize = 36;
    let end = k.len().checked_sub(8 + 1).ok_or_else(bad)?;
    let start = end.checked_sub(UUID_LEN).ok_or_else(bad)?;
    let parent = std::str::from_utf8(&k[start..end])
        .ok()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(bad)?;
    let child = std::str::from_utf8(v)
        .ok()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(bad)?;
    Ok((MandateId(parent), MandateId(child)))
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
