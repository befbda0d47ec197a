//! The outbox: commits whose signals are not yet known to be in the signal
//! stream, and the list of tenants the projection holds.
//!
//! An instance that applies a commit with signals (its own, or another
//! instance's) notes it here in the same atomic batch as the apply
//! ([`Store::apply_commits_noting`]), so a process killed between an apply
//! and the publish of its signals finds the commit here when it starts
//! again. The entry goes once the signals are stored (published and
//! acknowledged, or found in the stream already). Entries are few: only
//! the commits of the last moments, whatever the size of the projection.
//!
//! The outbox is not a fold of the log: a rebuild comparison leaves it out
//! and a rebuild keeps it (see `projection.rs`).

use crate::domain::{CommandId, TenantId, TreeId};

use super::keys::{self, be64, prefix, OUTBOX, SEP, SNAPSHOT};
use super::{Store, StoreError};

/// One commit in the outbox: where it is in the log, and the command whose
/// events it holds (its tree's history gives them back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub tenant: TenantId,
    pub tree: TreeId,
    pub position: u64,
    pub command: CommandId,
}

/// The key of a commit in the outbox.
pub(super) fn outbox_key(tenant: &TenantId, tree: TreeId, position: u64) -> Vec<u8> {
    let tree = tree.to_string();
    keys::key(
        OUTBOX,
        &[
            tenant.as_str().as_bytes(),
            tree.as_bytes(),
            &position.to_be_bytes(),
        ],
    )
}

impl Store {
    /// The commits in the outbox, at most `limit`, in key order (by tenant,
    /// tree and position).
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.projection
            .scan_prefix([OUTBOX, SEP])
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode_entry(&k, &v)
            })
            .collect()
    }

    /// How many commits are in the outbox, counted up to `limit` (keys
    /// only: nothing is decoded).
    pub fn outbox_len(&self, limit: usize) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self
            .projection
            .scan_prefix([OUTBOX, SEP])
            .keys()
            .take(limit)
        {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes a commit from the outbox: its signals are stored.
    pub fn outbox_done(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        position: u64,
    ) -> Result<(), StoreError> {
        self.projection.remove(outbox_key(tenant, tree, position))?;
        Ok(())
    }

    /// Every tenant with at least one tree in the projection, in order.
    ///
    /// Its cost is one seek per tenant, whatever the number of trees: each
    /// step jumps past the current tenant's heads (`t/<tenant>/…`) to the
    /// first head of the next one. Tenant ids hold only `[A-Za-z0-9_-]`,
    /// so `t/<tenant>` followed by byte 1 sorts after every head of
    /// `<tenant>` and before those of any longer id it prefixes.
    pub fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let all = prefix(SNAPSHOT, &[]);
        let mut from = all.clone();
        let mut out = Vec::new();
        loop {
            let Some(kv) = self.projection.range(from.clone()..).next() else {
                return Ok(out);
            };
            let (k, _) = kv?;
            if !k.starts_with(&all) {
                return Ok(out);
            }
            let rest = &k[all.len()..];
            let end = rest.iter().position(|b| *b == SEP).unwrap_or(rest.len());
            let name = &rest[..end];
            let tenant = std::str::from_utf8(name)
                .ok()
                .and_then(|t| TenantId::new(t).ok())
                .ok_or_else(|| StoreError::Decode {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "malformed tree head key".into(),
                })?;
            out.push(tenant);
            from = all.clone();
            from.extend_from_slice(name);
            from.push(SEP + 1);
        }
    }
}

/// An outbox entry from its key and value.
fn decode_entry(k: &[u8], v: &[u8]) -> Result<OutboxEntry, StoreError> {
    let bad = |reason: &str| StoreError::Decode {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: reason.into(),
    };
    // `o` SEP <tenant> SEP <tree> SEP <8 bytes of position>: the position
    // may hold SEP bytes, so it is read by position from the end.
    if k.len() < 2 + 8 + 1 || k[k.len() - 9] != SEP {
        return Err(bad("malformed outbox key"));
    }
    let position = be64(&k[k.len() - 8..]);
    let mut parts = k[2..k.len() - 9].split(|b| *b == SEP);
    let tenant = parts
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| TenantId::new(t).ok())
        .ok_or_else(|| bad("no tenant"))?;
    let tree = parts
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| TreeId::parse(t).ok())
        .ok_or_else(|| bad("no tree"))?;
    let command = std::str::from_utf8(v)
        .ok()
        .and_then(|c| uuid::Uuid::parse_str(c).ok())
        .map(CommandId)
        .ok_or_else(|| bad("no command id"))?;
    Ok(OutboxEntry {
        tenant,
        tree,
        position,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::of_tenant;

    fn head(store: &Store, tenant: &str) {
        let tenant = TenantId::new(tenant).unwrap();
        store
            .projection
            .insert(of_tenant(SNAPSHOT, &tenant, TreeId::generate()), b"{}")
            .unwrap();
    }

    #[test]
    fn tenants_are_listed_once_each_whatever_their_trees_and_names() {
        let store = Store::temporary().unwrap();
        assert!(store.tenants().unwrap().is_empty());
        for t in ["b", "a", "ab", "a", "a-1", "b", "A"] {
            head(&store, t);
        }
        let names: Vec<String> = store
            .tenants()
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(names, ["A", "a", "a-1", "ab", "b"]);
    }

    #[test]
    fn an_outbox_entry_reads_back_and_goes_when_done() {
        let store = Store::temporary().unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let tree = TreeId::generate();
        let command = CommandId::generate();
        // A position whose bytes hold the separator.
        let position = 0x0100_0000_0000_0001;
        store
            .projection
            .insert(
                outbox_key(&tenant, tree, position),
                command.to_string().as_bytes(),
            )
            .unwrap();
        let entry = OutboxEntry {
            tenant: tenant.clone(),
            tree,
            position,
            command,
        };
        assert_eq!(store.outbox(10).unwrap(), [entry]);
        assert!(
            !store
                .dump()
                .unwrap()
                .keys()
                .any(|k| k.first() == Some(&OUTBOX)),
            "a rebuild comparison leaves the outbox out"
        );
        store.clear_projection().unwrap();
        assert_eq!(store.outbox(10).unwrap().len(), 1, "a rebuild keeps it");
        store.outbox_done(&tenant, tree, position).unwrap();
        assert!(store.outbox(10).unwrap().is_empty());
    }
}
