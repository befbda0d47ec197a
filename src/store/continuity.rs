//! What the projection remembers about the log it was built from, to tell
//! when that log went backwards: marks on the trees whose acknowledged
//! records the log no longer holds, and the identity of the log (a JetStream
//! stream's creation time) so that a stream deleted and created again is not
//! taken for the same log.
//!
//! Kept in a sled tree of its own, apart from the projection: nothing in the
//! log records them, a rebuild must not drop them, and only an operator's
//! explicit acceptance of the loss (`Engine::accept_log_loss`) clears them.
//!
//! Their keys are in `keys.rs`, with the rest of the layout.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{self, decode, key, parse_last, prefix, LOG_IDENTITY, LOG_LOSS, SEP};
use super::{Store, StoreError};
use crate::domain::{TenantId, TreeId};

/// A tree whose head in the log is older than the head the projection
/// recorded: the log lost acknowledged records of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLoss {
    /// The tree's head as the projection recorded it (its last applied commit).
    pub recorded: u64,
    /// The tree's head the log showed (0: the log holds nothing of it).
    pub found: u64,
    /// When this instance found it.
    pub detected_at: DateTime<Utc>,
}

impl Store {
    /// Marks a tree as behind in the log. The first mark stays (it names the
    /// head the projection held when the loss was found); returns whether
    /// this mark is new.
    pub fn mark_log_loss(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        loss: &LogLoss,
    ) -> Result<bool, StoreError> {
        let k = key(
            LOG_LOSS,
            &[tenant.as_str().as_bytes(), tree.to_string().as_bytes()],
        );
        let value = serde_json::to_vec(loss).expect("marks serialize");
        let swapped = self
            .continuity
            .compare_and_swap(k, None as Option<&[u8]>, Some(value))?;
        Ok(swapped.is_ok())
    }

    /// Whether the log lost records of this tree, and what was found.
    pub fn log_loss(&self, tenant: &TenantId, tree: TreeId) -> Result<Option<LogLoss>, StoreError> {
        let k = key(
            LOG_LOSS,
            &[tenant.as_str().as_bytes(), tree.to_string().as_bytes()],
        );
        self.continuity.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// Every tree marked as behind in the log, of one tenant or of all.
    pub fn log_losses(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<(TenantId, TreeId, LogLoss)>, StoreError> {
        let p = match tenant {
            Some(t) => prefix(LOG_LOSS, &[t.as_str().as_bytes()]),
            None => vec![LOG_LOSS, SEP],
        };
        self.continuity
            .scan_prefix(p)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((tenant_of(&k)?, TreeId(parse_last(&k)?), decode(&k, &v)?))
            })
            .collect()
    }

    /// Drops every mark of [`Store::mark_log_loss`]; returns how many.
    pub fn clear_log_losses(&self) -> Result<usize, StoreError> {
        let tree = &self.continuity;
        let mut n = 0;
        for kv in tree.scan_prefix([LOG_LOSS, SEP]) {
            let (k, _) = kv?;
            tree.remove(k)?;
            n += 1;
        }
        Ok(n)
    }

    /// The identity of the log this projection was built from, if recorded.
    pub fn log_identity(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .continuity
            .get(LOG_IDENTITY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the identity of the log this projection follows.
    pub fn set_log_identity(&self, identity: &str) -> Result<(), StoreError> {
        self.continuity.insert(LOG_IDENTITY, identity.as_bytes())?;
        Ok(())
    }

    /// Moves the checkpoint back to `position` if it is past it: for a log
    /// that went backwards, whose new records at positions the projection
    /// already passed would otherwise never be applied in order. Tree
    /// snapshots stay as they are.
    pub fn rewind_checkpoint(&self, position: u64) -> Result<(), StoreError> {
        let _serialized = self.write_lock();
        if self.checkpoint()? > position {
            self.projection
                .insert(keys::CHECKPOINT, position.to_be_bytes().to_vec())?;
        }
        Ok(())
    }

    /// Every tree in the projection with its tenant and its recorded head.
    pub fn tree_heads(&self) -> Result<Vec<(TenantId, TreeId, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.projection.scan_prefix([keys::SNAPSHOT, SEP]) {
            let (k, _) = kv?;
            let (tenant, tree) = (tenant_of(&k)?, TreeId(parse_last(&k)?));
            if let Some(snap) = self.head(&tenant, tree)? {
                out.push((tenant, tree, snap.position));
            }
        }
        Ok(out)
    }
}

/// The tenant part of a `<kind>/<tenant>/…` key.
fn tenant_of(k: &[u8]) -> Result<TenantId, StoreError> {
    k.split(|b| *b == SEP)
        .nth(1)
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| TenantId::new(t).ok())
        .ok_or_else(|| StoreError::Decode {
            key: String::from_utf8_lossy(k).into_owned(),
            reason: "no tenant in the key".into(),
        })
}
