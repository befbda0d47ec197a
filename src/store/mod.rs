//! What an engine instance keeps on its disk, in one sled database, in three
//! parts that differ in where they come from:
//!
//! - **The projection** (`projection.rs`, sled tree `projection`): every
//!   tree's current state, kept in parts (its head, each mandate, each
//!   child entry, each command id: `apply.rs` writes only the parts a commit
//!   changes), the indexes queries read, each tree's history, and a
//!   checkpoint — the last log position applied in order — written
//!   atomically with the state it covers. Its layout has a version; a
//!   projection in another layout is cleared and rebuilt from the log when
//!   the store opens. Rebuilt from the
//!   event log: `Engine::rebuild_check` (`mandate rebuild`) replays the log
//!   into a fresh projection, compares, and if they differ replaces this
//!   part only ([`Store::clear_projection`]).
//! - **Mission marks** (`missions.rs`, sled tree `missions`): missions known
//!   to be completed whether or not a tree serves them, so that a later
//!   issue for one is refused. Over NATS they are re-derived from the
//!   mission stream: each instance's marks follower reads it whole at every
//!   start, and an issue reads the mission's last completion there when no
//!   mark is found. In process there is no mission stream, and the mark of
//!   a completion no tree recorded is its only record.
//! - **Audit records** (`audit.rs`, sled tree `audit`): the check decisions
//!   of the in-process engine, which are not events and are kept as
//!   written. Over NATS the audit stream is their record and this part
//!   stays empty.
//!
//! A rebuild keeps the marks and the audit records: only the projection is
//! replaced. So the database is not disposable: deleting it loses, in
//! process, the marks and audit records nothing else holds.
//!
//! Only this module knows sled's key layout (`keys.rs`). One sled tree per
//! part; one `apply_batch` (atomic across crashes) covers a commit's whole
//! effect on the projection (or a batch of commits').

mod apply;
mod audit;
mod continuity;
mod keys;
mod missions;
mod outbox;
mod projection;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::{TenantId, TreeId};

pub use apply::{Commit, Note};
pub use continuity::LogLoss;
pub use outbox::OutboxEntry;
pub use projection::{Applied, DueExpiry, TreeSnapshot, Unsupported, CASCADE_COUNT_LIMIT};

/// sled's page cache, in bytes (its default is 1 GiB): the engine's memory
/// stays bounded whatever the number of mandates on disk. A command on a
/// tree whose pages are not in it reads them from disk first: at 128 MiB, a
/// revoke of a cold root took up to twice as long once the projection held
/// some 67,000 mandates (`mandate-bench growth`); at 192 MiB it did not, and
/// an engine holding 1,000,000 live mandates stays under 1 GiB (at 256 MiB
/// it came within 60 MiB of it). BENCHMARKS.md has the runs.
const SLED_CACHE_BYTES: u64 = 192 * 1024 * 1024;

/// Failures of the store.
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

/// The sled store: the projection, the mission marks and the audit records.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// The projection: rebuilt from the event log (`projection.rs`).
    projection: sled::Tree,
    /// Mission marks: re-derived from the mission stream over NATS; their
    /// only record in process (`missions.rs`).
    marks: sled::Tree,
    /// Check decisions of the in-process engine: their only record
    /// (`audit.rs`).
    audit: sled::Tree,
    /// What the projection knows of its log: trees it went backwards on,
    /// its identity (`continuity.rs`). Kept by a rebuild.
    continuity: sled::Tree,
    /// Serializes the projection's writes ([`Store::apply_commits`]) and
    /// keeps reads of a tree in parts consistent: a write takes it alone,
    /// a read of a head, a view or a whole tree takes it shared. The writer,
    /// a conflict catch-up and the follower may apply commits of one tree at
    /// once; unserialized, one of them could write a head older than another
    /// had just written, and the next commit then seemed to skip a sequence
    /// number (a healthy tree quarantined as corrupt). Shared, a read never
    /// sees a mandate from one commit with a head from another.
    apply_lock: Arc<RwLock<()>>,
    /// Decoded heads and mandates (`projection.rs`), kept equal to the
    /// stored ones.
    cache: Arc<Mutex<projection::Cache>>,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::with_db(
            sled::Config::new()
                .path(path)
                .cache_capacity(SLED_CACHE_BYTES)
                .open()?,
        )
    }

    /// A store that lives only as long as the process (tests, rebuild checks).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::with_db(
            sled::Config::new()
                .temporary(true)
                .cache_capacity(SLED_CACHE_BYTES)
                .open()?,
        )
    }

    fn with_db(db: sled::Db) -> Result<Self, StoreError> {
        // The sled trees' names are those of the first layout, which kept
        // the three parts in one file: existing databases open as they are.
        let projection = db.open_tree("projection")?;
        let marks = db.open_tree("missions")?;
        let audit = db.open_tree("audit")?;
        let continuity = db.open_tree("continuity")?;
        let store = Self {
            db,
            projection,
            marks,
            audit,
            continuity,
            apply_lock: Arc::new(RwLock::new(())),
            cache: Default::default(),
        };
        store.check_layout()?;
        Ok(store)
    }

    /// Taken by every write of the projection.
    fn write_lock(&self) -> RwLockWriteGuard<'_, ()> {
        // A poisoned lock only means another applier panicked; the database
        // itself is consistent (each batch is atomic).
        self.apply_lock.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken by a read of a tree in parts.
    fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.apply_lock.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Durably writes everything written so far, in all three parts.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
