//! sled's key layout: the one place that knows it.
//!
//! A key is a kind byte followed by its parts, each after a 0 byte (`/`
//! below). Ids are subject-safe, so a part never contains a 0 byte; only the
//! fixed-width numbers (positions, times) may, and they are read by position.
//!
//! The projection (sled tree `projection`, rebuilt from the event log). A
//! tree is kept in parts, so that a command reads its chain and writes only
//! what it changes, whatever the size of its tree:
//! - `t/<tenant>/<tree>` → the tree's head: `TreeSnapshot` JSON whose tree
//!   holds its root mandate (children left out) and no other mandate and no
//!   command (position, version, head hash, root, mission, principal,
//!   quarantine, registry)
//! - `n/<tenant>/<tree>/<mandate>` → `Mandate` JSON, children left out;
//!   every mandate but the root, which its head holds
//! - `h/<tenant>/<tree>/<parent>/<seq be64>` → child mandate id (a parent's
//!   children in the order they were issued; `seq` is the issuing event's)
//! - `d/<tenant>/<tree>/<command>` → `AppliedCommand` JSON (command ids applied)
//! - `g/<tenant>/<tree>/<approval>` → `Approval` JSON (step-up approvals)
//! - `e/<tenant>/<tree>/<seq be64>` → event JSON (history)
//! - `m/<tenant>/<mandate>` → tree id
//! - `a/<tenant>/<agent>/<mandate>` → tree id (mandates held by an agent)
//! - `p/<tenant>/<principal>/<tree>` → () (roots granted by a principal)
//! - `r/<tenant>/<mission_ref>/<tree>` → () (trees serving a mission)
//! - `c/<tenant>/<mission_ref>` → () (missions a tree's event completed)
//! - `x/<not_after ms be64>/<tenant>/<mandate>` → tree id (expiry queue;
//!   an ended mandate's entry stays until it comes due, when the scheduler
//!   drops it)
//! - `z/<tenant>/<tree>` → `Quarantine` JSON (a tree whose stream is corrupt)
//! - `v/<tenant>/<tree>` → `Unsupported` JSON (a tree with events newer than this build)
//! - `o/<tenant>/<tree>/<position be64>` → command id (UTF-8): a commit
//!   whose signals are not yet known to be in the signal stream (the
//!   outbox). Not a fold of the log: written in the same batch as the
//!   commit's apply by the instance that applied it, removed once its
//!   signals are stored; left out of rebuild comparisons, kept by a rebuild
//! - `k` → checkpoint (be64)
//! - `V` → the layout's version (be64): a projection written in another
//!   layout is cleared and rebuilt from the log when the store opens
//!
//! Mission marks (sled tree `missions`):
//! - `c/<tenant>/<mission_ref>` → () (missions completed, with or without a tree)
//!
//! Audit records of the embedded engine (sled tree `audit`):
//! - `u/<tenant>/<mandate>/<id be64>` → `AuditRecord` JSON
//!
//! What the projection remembers of its log (sled tree `continuity`, kept
//! by a rebuild; cleared only by an operator's acceptance of a loss):
//! - `l/<tenant>/<tree>` → `LogLoss` JSON (a tree the log went backwards on)
//! - `i` → the log's identity (UTF-8)

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::domain::{TenantId, TreeId};

use super::StoreError;

/// A tree's head (its snapshot without mandates and commands).
pub(super) const SNAPSHOT: u8 = b't';
/// One mandate of a tree.
pub(super) const NODE: u8 = b'n';
/// One child of a mandate.
pub(super) const CHILD: u8 = b'h';
/// One command id a tree applied.
pub(super) const APPLIED: u8 = b'd';
/// One step-up approval of a tree.
pub(super) const APPROVAL: u8 = b'g';
/// One event of a tree's history.
pub(super) const EVENT: u8 = b'e';
/// A mandate's tree.
pub(super) const MANDATE: u8 = b'm';
/// A mandate an agent holds.
pub(super) const HELD_BY: u8 = b'a';
/// A root a principal granted.
pub(super) const GRANTED_BY: u8 = b'p';
/// A tree serving a mission.
pub(super) const SERVES_MISSION: u8 = b'r';
/// A completed mission (in the projection and among the marks alike).
pub(super) const COMPLETED: u8 = b'c';
/// A pending expiry.
pub(super) const EXPIRY: u8 = b'x';
/// A quarantined tree.
pub(super) const QUARANTINE: u8 = b'z';
/// A tree with events newer than this build reads.
pub(super) const TOO_NEW: u8 = b'v';
/// A commit whose signals are not yet known to be stored (the outbox).
pub(super) const OUTBOX: u8 = b'o';
/// One recorded check decision.
pub(super) const AUDIT: u8 = b'u';
/// A tree whose acknowledged records the log lost.
pub(super) const LOG_LOSS: u8 = b'l';
/// The identity of the log the projection follows (a key of its own).
pub(super) const LOG_IDENTITY: &[u8] = b"i";
/// The checkpoint (a key of its own, no parts).
pub(super) const CHECKPOINT: &[u8] = b"k";
/// The projection layout's version (a key of its own, no parts).
pub(super) const LAYOUT: &[u8] = b"V";

pub(super) const SEP: u8 = 0;

pub(super) fn key(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![kind];
    for p in parts {
        k.push(SEP);
        k.extend_from_slice(p);
    }
    k
}

/// The prefix of every key of `kind` whose parts start with `parts`.
pub(super) fn prefix(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(kind, parts);
    k.push(SEP);
    k
}

/// `<kind>/<tenant>/<name>`: the key of one thing of a tenant, named as it
/// displays (an id, a mission ref).
pub(super) fn of_tenant(kind: u8, tenant: &TenantId, name: impl fmt::Display) -> Vec<u8> {
    let name = name.to_string();
    key(kind, &[tenant.as_str().as_bytes(), name.as_bytes()])
}

/// `<kind>/<tenant>/<name>/`: the prefix of the things listed under one
/// thing of a tenant.
pub(super) fn under_tenant(kind: u8, tenant: &TenantId, name: impl fmt::Display) -> Vec<u8> {
    let name = name.to_string();
    prefix(kind, &[tenant.as_str().as_bytes(), name.as_bytes()])
}

/// `<kind>/<tenant>/<tree>/<name>`: the key of one part of a tree.
pub(super) fn of_tree(
    kind: u8,
    tenant: &TenantId,
    tree: TreeId,
    name: impl fmt::Display,
) -> Vec<u8> {
    let (tree, name) = (tree.to_string(), name.to_string());
    key(
        kind,
        &[tenant.as_str().as_bytes(), tree.as_bytes(), name.as_bytes()],
    )
}

/// The key of a pending expiry: ordered by time first.
pub(super) fn expiry(
    not_after: DateTime<Utc>,
    tenant: &TenantId,
    mandate: crate::domain::MandateId,
) -> Vec<u8> {
    key(
        EXPIRY,
        &[
            &ms(not_after),
            tenant.as_str().as_bytes(),
            mandate.to_string().as_bytes(),
        ],
    )
}

pub(super) fn ms(t: DateTime<Utc>) -> [u8; 8] {
    // Times before 1970 sort first; not_after is always in the future anyway.
    (t.timestamp_millis().max(0) as u64).to_be_bytes()
}

pub(super) fn be64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[8 - n..].copy_from_slice(&v[v.len() - n..]);
    u64::from_be_bytes(b)
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: e.to_string(),
    })
}

pub(super) fn decode_tree_id(k: &[u8], v: &[u8]) -> Result<TreeId, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| TreeId::parse(s).ok())
        .ok_or_else(|| StoreError::Decode {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "not a tree id".into(),
        })
}

/// The key's last part, a UUID.
pub(super) fn parse_last(k: &[u8]) -> Result<uuid::Uuid, StoreError> {
    let last = k.rsplit(|b| *b == SEP).next().unwrap_or_default();
    std::str::from_utf8(last)
        .ok()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| StoreError::Decode {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "last key part is not a UUID".into(),
        })
}

/// The value under `k` in `tree`, decoded.
pub(super) fn read<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    k: &[u8],
) -> Result<Option<T>, StoreError> {
    tree.get(k)?.map(|v| decode(k, &v)).transpose()
}

/// Every value under `prefix` in `tree`, decoded, in key order.
pub(super) fn read_all<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    prefix: &[u8],
) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix(prefix)
        .map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        })
        .collect()
}
