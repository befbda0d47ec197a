//! Folding commits of the log into the projection's parts: a commit reads
//! its tree's head and the mandates its events name, and writes only what
//! they change (the head, those mandates, a child entry per delegation, its
//! command id, its events, the index entries), so its cost follows the work,
//! not the size of the tree or the length of its history.
//!
//! Commits are applied in batches ([`Store::apply_commits`]): one sled batch
//! (atomic across crashes) for many commits, through an overlay that lets a
//! commit see what the ones before it in the batch wrote. A single commit is
//! a batch of one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::domain::{
    apply_hashed, AppliedCommand, CommandId, DomainError, Event, EventBody, Mandate, MandateId,
    Quarantine, TenantId, Tree, TreeId,
};

use crate::domain::approval::Approval;

use super::keys::{
    self, of_tenant, of_tree, APPLIED, APPROVAL, CHECKPOINT, CHILD, COMPLETED, EVENT, GRANTED_BY,
    HELD_BY, MANDATE, NODE, QUARANTINE, SERVES_MISSION, SNAPSHOT, TOO_NEW,
};
use super::projection::{Applied, TreeSnapshot, Unsupported};
use super::{Store, StoreError};

/// One commit to apply: a record of the log, or one the log could not decode.
pub struct Commit<'a> {
    pub tenant: &'a TenantId,
    pub tree: TreeId,
    pub position: u64,
    /// The payload, or why the log could not decode the record.
    pub payload: Result<&'a [u8], String>,
}

type TreeKey = (TenantId, TreeId);
type NodeKey = (TenantId, TreeId, MandateId);

/// What a batch has written so far, read before the store.
pub(super) struct Pending<'s> {
    store: &'s Store,
    batch: sled::Batch,
    checkpoint: Option<u64>,
    heads: HashMap<TreeKey, Arc<TreeSnapshot>>,
    nodes: HashMap<NodeKey, Arc<Mandate>>,
    commands: HashMap<(TenantId, TreeId, CommandId), AppliedCommand>,
    approvals: HashMap<(TenantId, TreeId, uuid::Uuid), Approval>,
    too_new: HashMap<TreeKey, Option<Unsupported>>,
    /// Which applied commits go into the outbox (see `outbox.rs`); none
    /// without it.
    note: Option<Note<'s>>,
}

/// Whether an applied commit's events go into the outbox.
pub type Note<'a> = &'a (dyn Fn(&[Event]) -> bool + Sync);

/// A commit's events with the hash of each, or why it cannot be read.
pub(super) type Decoded = Result<(Vec<Event>, Vec<String>), Bad>;

/// Decodes a commit and hashes its events: pure, and most of what applying
/// a commit costs, so a batch does it for many commits at once
/// ([`decode_all`]) before folding them in order.
pub(super) fn decode(c: &Commit<'_>) -> Decoded {
    match &c.payload {
        Err(reason) => Err(Bad::Corrupt(reason.clone())),
        Ok(bytes) => match Event::decode_commit(bytes) {
            Err(DomainError::UnknownVersion {
                actual, supported, ..
            }) if actual > u64::from(supported) => Err(Bad::TooNew(actual)),
            Err(e) => Err(Bad::Corrupt(e.to_string())),
            Ok(evs) => {
                let hashes = evs.iter().map(Event::hash).collect();
                Ok((evs, hashes))
            }
        },
    }
}

/// Fewest commits worth spreading over threads.
const PARALLEL_FROM: usize = 64;

/// [`decode`] for each commit, on every core for a large batch.
pub(super) fn decode_all(commits: &[Commit<'_>]) -> Vec<Decoded> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if commits.len() < PARALLEL_FROM || threads < 2 {
        return commits.iter().map(decode).collect();
    }
    let chunk = commits.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = commits
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(decode).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("decoding a commit does not panic"))
            .collect()
    })
}

/// Why a commit was not applied.
pub(super) enum Bad {
    Corrupt(String),
    TooNew(u64),
}

impl<'s> Pending<'s> {
    pub(super) fn new(store: &'s Store) -> Self {
        Self {
            store,
            batch: sled::Batch::default(),
            checkpoint: None,
            heads: HashMap::new(),
            nodes: HashMap::new(),
            commands: HashMap::new(),
            approvals: HashMap::new(),
            too_new: HashMap::new(),
            note: None,
        }
    }

    /// Puts the applied commits `note` accepts into the outbox, in the same
    /// batch as their apply.
    pub(super) fn noting(mut self, note: Option<Note<'s>>) -> Self {
        self.note = note;
        self
    }

    /// Moves the checkpoint to `position` (never backwards).
    pub(super) fn advance(&mut self, position: u64) -> Result<(), StoreError> {
        let current = match self.checkpoint {
            Some(c) => c,
            None => self.store.checkpoint()?,
        };
        if position > current {
            self.checkpoint = Some(position);
            self.batch
                .insert(CHECKPOINT, position.to_be_bytes().to_vec());
        }
        Ok(())
    }

    fn head(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Arc<TreeSnapshot>>, StoreError> {
        match self.heads.get(&(tenant.clone(), tree)) {
            Some(h) => Ok(Some(h.clone())),
            None => self.store.load_head(tenant, tree),
        }
    }

    fn node(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        id: MandateId,
    ) -> Result<Option<Arc<Mandate>>, StoreError> {
        match self.nodes.get(&(tenant.clone(), tree, id)) {
            Some(m) => Ok(Some(m.clone())),
            None => self.store.load_node(tenant, tree, id),
        }
    }

    fn command(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        id: CommandId,
    ) -> Result<Option<AppliedCommand>, StoreError> {
        match self.commands.get(&(tenant.clone(), tree, id)) {
            Some(c) => Ok(Some(c.clone())),
            None => self.store.applied_command(tenant, tree, id),
        }
    }

    fn approval(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        id: uuid::Uuid,
    ) -> Result<Option<Approval>, StoreError> {
        match self.approvals.get(&(tenant.clone(), tree, id)) {
            Some(a) => Ok(Some(a.clone())),
            None => self.store.load_approval(tenant, tree, id),
        }
    }

    fn unsupported(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> Result<Option<Unsupported>, StoreError> {
        match self.too_new.get(&(tenant.clone(), tree)) {
            Some(u) => Ok(u.clone()),
            None => self.store.unsupported(tenant, tree),
        }
    }

    fn set_unsupported(&mut self, tenant: &TenantId, tree: TreeId, mark: Option<Unsupported>) {
        let k = keys::key(TOO_NEW, &tree_parts(tenant, tree).refs());
        match &mark {
            Some(m) => self
                .batch
                .insert(k, serde_json::to_vec(m).expect("marks serialize")),
            None => self.batch.remove(k),
        }
        self.too_new.insert((tenant.clone(), tree), mark);
    }

    /// Writes a tree's head: its snapshot with its root (children left
    /// out) and no other mandate and no command. The root lives in the head
    /// and nowhere else: every command and check on the tree reads the head
    /// anyway, so the root's page is the head's, which they keep in sled's
    /// cache, and ending a root writes the head and its event, not a page of
    /// the tree's mandates that a large tree's growth has long pushed out.
    fn write_head(&mut self, position: u64, tree: &Tree) {
        let mut head = Tree::empty(tree.tenant.clone(), tree.id);
        head.version = tree.version;
        head.head_hash = tree.head_hash.clone();
        head.root = tree.root;
        if let Some(root) = tree.root.and_then(|r| tree.mandates.get(&r)) {
            let mut stored = root.clone();
            stored.children.clear();
            head.mandates.insert(stored.id, stored);
        }
        head.mission = tree.mission.clone();
        head.principal = tree.principal.clone();
        head.quarantine = tree.quarantine.clone();
        head.registry = tree.registry.clone();
        let snap = TreeSnapshot {
            position,
            tree: head,
        };
        // Encoded once, at commit: a batch may move a head many times.
        self.heads
            .insert((tree.tenant.clone(), tree.id), Arc::new(snap));
    }

    fn write_node(&mut self, m: &Mandate) {
        let mut stored = m.clone();
        stored.children.clear();
        // Encoded once, at commit.
        self.nodes
            .insert((m.tenant.clone(), m.tree, m.id), Arc::new(stored));
    }

    /// Applies the batch, then makes what it wrote visible to readers.
    pub(super) fn commit(mut self) -> Result<(), StoreError> {
        for ((tenant, tree), head) in &self.heads {
            self.batch.insert(
                of_tenant(SNAPSHOT, tenant, *tree),
                serde_json::to_vec(&**head).expect("snapshots serialize"),
            );
        }
        for ((tenant, tree, id), m) in &self.nodes {
            self.batch.insert(
                of_tree(NODE, tenant, *tree, id),
                serde_json::to_vec(&**m).expect("mandates serialize"),
            );
        }
        self.store.projection.apply_batch(self.batch)?;
        let mut cache = self.store.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (k, h) in self.heads {
            cache.put_head(k, h);
        }
        for (k, m) in self.nodes {
            cache.put_node(k, m);
        }
        Ok(())
    }

    /// Applies one commit (see [`Store::apply_commit`]), decoded by
    /// [`decode`].
    pub(super) fn apply(
        &mut self,
        c: &Commit<'_>,
        decoded: Decoded,
        advance: bool,
    ) -> Result<Applied, StoreError> {
        let (tenant, tree_id, position) = (c.tenant, c.tree, c.position);
        if advance {
            self.advance(position)?;
        }
        let head = self.head(tenant, tree_id)?;
        if head.as_ref().is_some_and(|s| s.position >= position) {
            return Ok(Applied::AlreadyApplied);
        }
        let too_new = self.unsupported(tenant, tree_id)?;
        if too_new.as_ref().is_some_and(|u| position > u.position) {
            // Nothing past an unreadable record can be applied in order.
            return Ok(Applied::Unsupported(
                too_new.map(|u| u.reason).unwrap_or_default(),
            ));
        }
        let mut tree = head
            .map(|s| s.tree.clone())
            .unwrap_or_else(|| Tree::empty(tenant.clone(), tree_id));
        let decoded = decoded.and_then(|(evs, hashes)| {
            check_commit(&tree, tenant, tree_id, &evs, &hashes)
                .map(|()| (evs, hashes))
                .map_err(Bad::Corrupt)
        });
        if let Some(q) = &tree.quarantine {
            let resolves = matches!(&decoded, Ok((evs, _)) if matches!(
                evs.first().map(|e| &e.body),
                Some(EventBody::QuarantineResolved(r)) if r.position == q.position
            ));
            if !resolves {
                // Passed over, not applied: the head moves so that reads and
                // the resolution's append see the log as it is.
                self.write_head(position, &tree);
                return Ok(Applied::PassedOver);
            }
        }
        let (events, hashes) = match decoded {
            Ok(checked) => checked,
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
                let reason = mark.reason.clone();
                self.set_unsupported(tenant, tree_id, Some(mark));
                return Ok(Applied::Unsupported(reason));
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
                self.batch.insert(
                    keys::key(QUARANTINE, &tree_parts(tenant, tree_id).refs()),
                    serde_json::to_vec(&q).expect("marks serialize"),
                );
                if too_new.is_some() {
                    self.set_unsupported(tenant, tree_id, None);
                }
                tree.quarantine = Some(q.clone());
                self.write_head(position, &tree);
                return Ok(Applied::Quarantined(q));
            }
        };
        if too_new.is_some() {
            self.set_unsupported(tenant, tree_id, None);
        }
        self.fold(tree, position, &events, hashes)?;
        if let (Some(note), Some(first)) = (self.note, events.first()) {
            if note(&events) {
                self.batch.insert(
                    super::outbox::outbox_key(tenant, tree_id, position),
                    first.command_id.to_string().as_bytes(),
                );
            }
        }
        Ok(Applied::Applied(events))
    }

    /// Folds good events into the parts of their tree they touch.
    fn fold(
        &mut self,
        mut tree: Tree,
        position: u64,
        events: &[Event],
        hashes: Vec<String>,
    ) -> Result<(), StoreError> {
        let (tenant, tree_id) = (tree.tenant.clone(), tree.id);
        // The mandates the events name (and a delegation's parent), and the
        // command ids they carry, as they stand: `apply` reads nothing else.
        for e in events {
            let mut ids = vec![e.body.mandate()];
            if let EventBody::MandateIssued(m) = &e.body {
                ids.extend(m.parent);
            }
            for id in ids {
                if tree.mandates.contains_key(&id) {
                    continue;
                }
                if let Some(m) = self.node(&tenant, tree_id, id)? {
                    tree.mandates.insert(id, (*m).clone());
                }
            }
            if let Some(id) = e.body.approval() {
                if let std::collections::btree_map::Entry::Vacant(slot) = tree.approvals.entry(id) {
                    if let Some(a) = self.approval(&tenant, tree_id, id)? {
                        slot.insert(a);
                    }
                }
            }
            if let std::collections::btree_map::Entry::Vacant(slot) =
                tree.commands.entry(e.command_id)
            {
                if let Some(c) = self.command(&tenant, tree_id, e.command_id)? {
                    slot.insert(c);
                }
            }
        }
        let before_mandates: BTreeMap<MandateId, Mandate> = tree.mandates.clone();
        let before_commands: Vec<CommandId> = tree.commands.keys().copied().collect();
        let before_approvals = tree.approvals.clone();
        let was_quarantined = tree.quarantine.is_some();
        let parts = tree_parts(&tenant, tree_id);
        for (e, hash) in events.iter().zip(hashes) {
            let issued_new = matches!(&e.body, EventBody::MandateIssued(m) if !tree.mandates.contains_key(&m.mandate));
            apply_hashed(&mut tree, e, hash);
            if let EventBody::MandateIssued(m) = &e.body {
                if let (true, Some(parent), true) =
                    (issued_new, m.parent, tree.mandates.contains_key(&m.mandate))
                {
                    let parent_s = parent.to_string();
                    let k = keys::key(
                        CHILD,
                        &[
                            parts.0.as_bytes(),
                            parts.1.as_bytes(),
                            parent_s.as_bytes(),
                            &e.seq.to_be_bytes(),
                        ],
                    );
                    self.batch.insert(k, m.mandate.to_string().as_bytes());
                }
            }
            let ek = keys::key(
                EVENT,
                &[parts.0.as_bytes(), parts.1.as_bytes(), &e.seq.to_be_bytes()],
            );
            self.batch
                .insert(ek, serde_json::to_vec(e).expect("events serialize"));
        }
        if was_quarantined && tree.quarantine.is_none() {
            self.batch.remove(keys::key(QUARANTINE, &parts.refs()));
        }
        index_changes(&mut self.batch, &before_mandates, &tree, events);
        for (id, m) in &tree.mandates {
            let changed = match before_mandates.get(id) {
                None => true,
                Some(old) => !same_but_children(old, m),
            };
            // The root is written with the head (`write_head`).
            if changed && tree.root != Some(*id) {
                self.write_node(m);
            }
        }
        for (id, c) in &tree.commands {
            if !before_commands.contains(id) {
                self.batch.insert(
                    of_tree(APPLIED, &tenant, tree_id, id),
                    serde_json::to_vec(c).expect("applied commands serialize"),
                );
                self.commands
                    .insert((tenant.clone(), tree_id, *id), c.clone());
            }
        }
        for (id, a) in &tree.approvals {
            if before_approvals.get(id) != Some(a) {
                self.batch.insert(
                    of_tree(APPROVAL, &tenant, tree_id, id),
                    serde_json::to_vec(a).expect("approvals serialize"),
                );
                self.approvals
                    .insert((tenant.clone(), tree_id, *id), a.clone());
            }
        }
        self.write_head(position, &tree);
        Ok(())
    }
}

/// Equal but for the children (which live in entries of their own).
fn same_but_children(a: &Mandate, b: &Mandate) -> bool {
    let strip = |m: &Mandate| Mandate {
        children: Vec::new(),
        ..m.clone()
    };
    strip(a) == strip(b)
}

/// A tree's tenant and id as key parts.
struct TreeParts(String, String);

impl TreeParts {
    fn refs(&self) -> [&[u8]; 2] {
        [self.0.as_bytes(), self.1.as_bytes()]
    }
}

fn tree_parts(tenant: &TenantId, tree: TreeId) -> TreeParts {
    TreeParts(tenant.as_str().to_string(), tree.to_string())
}

/// The checks a commit must pass before it touches a tree, given the hash
/// of each of its events.
fn check_commit(
    tree: &Tree,
    tenant: &TenantId,
    tree_id: TreeId,
    events: &[Event],
    hashes: &[String],
) -> Result<(), String> {
    if events.is_empty() {
        return Err("empty commit".into());
    }
    let (mut version, mut head) = (tree.version, tree.head_hash.as_deref());
    for (e, hash) in events.iter().zip(hashes) {
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
        if e.prev_hash.as_deref() != head {
            return Err(format!(
                "event seq {} does not chain to the previous event's hash",
                e.seq
            ));
        }
        version = e.seq;
        head = Some(hash);
    }
    Ok(())
}

/// Index updates for the mandates `events` touched, from `before` (as they
/// stood) to `after`.
///
/// A mandate ended by an event ends everything below it, and none of its
/// descendants gets an `expired` event of its own. Their expiry entries are
/// left in the queue, so that ending a root costs one write whatever hangs
/// below it: when one comes due, the scheduler finds the mandate ended and
/// drops the entry without writing anything ([`Store::remove_expiry`]).
/// The entry of the mandate a revoke or a completion ends is left the same
/// way: it sits where its `not_after` sorts, on a page the queue's newer
/// entries have long pushed out of sled's cache, and removing it would read
/// that page back first (the root of a large tree, revoked). An expiry
/// removes its own entry: the scheduler has just read that page, and the
/// entry is due.
fn index_changes(
    batch: &mut sled::Batch,
    before: &BTreeMap<MandateId, Mandate>,
    after: &Tree,
    events: &[Event],
) {
    let t = after.tenant.as_str().as_bytes();
    let tree_s = after.id.to_string();
    for e in events {
        let id = e.body.mandate();
        let id_s = id.to_string();
        let (Some(old), Some(new)) = (
            before.get(&id).or(after.mandates.get(&id)),
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
            }
            EventBody::MandateExpired(_) => {
                batch.remove(keys::expiry(new.not_after, &after.tenant, id));
            }
            _ => {}
        }
    }
}
