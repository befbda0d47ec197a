//! The embedded event log on sled, for a single process.
//!
//! # On-disk layout
//! One sled tree, `mandate-log`, with one key family per prefix byte. All
//! numbers are big-endian so that keys sort by position.
//!
//! | key | value |
//! | --- | --- |
//! | `r` position | the record: version 1, tenant length, tenant, tree (16 bytes), command id (16 bytes), payload |
//! | `h` tenant length, tenant, tree (16 bytes), position | empty: per-tree index, scanned by `read_tree` |
//! | `n` tenant length, tenant, position | empty: per-tenant index, scanned by `read_all` |
//! | `c` tenant length, tenant, command id (16 bytes) | position: idempotency per tenant, kept forever |
//!
//! The last position is the last `r` key, so no separate counter can drift
//! from the records.
//!
//! # Writes: group commit
//! Appends are serialized under one lock only while they check and write:
//! check the command id, check the head, write all four keys in one atomic
//! batch. Each then waits until a flush that began after its batch has
//! finished, and only then is acknowledged. One waiter at a time flushes
//! (the leader), for every batch written so far; the others wait for it and
//! find themselves covered, or lead the next flush. So many concurrent
//! appends share one flush, and none is acknowledged before it is durable.
//!
//! Readers see only what is durable: `read_tree`, `read_all`, `follow`,
//! `tree_head` and `last_position` stop at the last flushed position, as a
//! JetStream reader sees only what the server acknowledged. The checks of
//! an append see everything written, so the conflict check and the
//! command-id dedupe stay exact; a conflict or a duplicate is answered only
//! once the record it names is durable, so the caller can read it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Mutex;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::{Appended, Cursor, EventLog, LogError, Record, DEFAULT_MAX_MESSAGE_SIZE};
use crate::domain::{CommandId, TenantId, TreeId};

const TREE_NAME: &str = "mandate-log";
const RECORD: u8 = b'r';
const TREE_INDEX: u8 = b'h';
const TENANT_INDEX: u8 = b'n';
const COMMAND: u8 = b'c';
const FORMAT_VERSION: u8 = 1;
/// How many records `follow` reads from sled at a time.
const FOLLOW_BATCH: usize = 256;
/// How long `open` waits for the database's file lock (see `open_db`).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Settings of the embedded log.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// Largest commit payload accepted, in bytes; larger appends fail with
    /// [`LogError::TooLarge`]. Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// The event log in a sled database of its own. Cloning is cheap and shares
/// the database.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    config: EmbeddedConfig,
    /// Held while an append checks and writes; holds the last position
    /// written (durable or not yet).
    writer: Mutex<u64>,
    /// The last durable position, for readers and followers.
    last: watch::Sender<u64>,
    /// Who flushes, and how flushes went.
    flush: Mutex<FlushState>,
    /// Woken when a flush ends.
    flushed: Notify,
}

/// The group commit's bookkeeping.
#[derive(Default)]
struct FlushState {
    /// A flush is under way; whoever waits for durability waits for it.
    flushing: bool,
    /// Flushes finished (or failed) so far.
    flushes: u64,
    /// The last failed flush: its number, the position it was to make
    /// durable, and why it failed.
    failed: Option<(u64, u64, String)>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log at `path` with default settings. Blocks
    /// for up to two seconds while a handle dropped in this process still
    /// holds the database's lock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path, EmbeddedConfig::default())
    }

    /// Opens (or creates) the log at `path`.
    pub fn open_with(path: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, LogError> {
        let path = path.as_ref();
        let db = open_db(path)?;
        let tree = db.open_tree(TREE_NAME).map_err(sled_error)?;
        let last = match tree.scan_prefix([RECORD]).next_back() {
            None => 0,
            Some(entry) => {
                let (key, _) = entry.map_err(sled_error)?;
                position_from_key(&key)?
            }
        };
        let (tx, _) = watch::channel(last);
        Ok(EmbeddedLog {
            inner: Arc::new(Inner {
                db,
                tree,
                config,
                writer: Mutex::new(last),
                last: tx,
                flush: Mutex::new(FlushState::default()),
                flushed: Notify::new(),
            }),
        })
    }

    /// How many flushes the log has made (or tried) since it was opened:
    /// with appends in flight at once, fewer than the appends.
    #[doc(hidden)]
    pub fn flushes(&self) -> u64 {
        self.inner.flush_state().flushes
    }
}

/// The flush a waiter leads. Ending it on drop means a leader whose append
/// was cancelled mid-flush still hands the lead on, so no waiter is left
/// waiting for a flush nobody makes.
struct Lead<'a> {
    inner: &'a Inner,
    target: u64,
    outcome: Option<Result<(), String>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.inner.end_flush(self.target, self.outcome.take());
    }
}

/// What an append's checks and write came to, before it is durable.
enum Written {
    New(u64),
    Duplicate(u64),
    Conflict(u64),
}

impl EventLog for EmbeddedLog {
    #[tracing::instrument(level = "debug", skip(self, payload), fields(%tenant, %tree))]
    async fn append(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        expected: u64,
        command_id: CommandId,
        payload: Bytes,
    ) -> Result<Appended, LogError> {
        let inner = &self.inner;
        super::check_size(&payload, inner.config.max_message_size)?;
        let written = inner.write(tenant, tree, expected, command_id, &payload)?;
        match written {
            Written::New(position) => {
                inner.durable(position).await?;
                Ok(Appended {
                    position,
                    duplicate: false,
                })
            }
            Written::Duplicate(position) => {
                inner.durable(position).await?;
                Ok(Appended {
                    position,
                    duplicate: true,
                })
            }
            Written::Conflict(actual) => {
                inner.durable(actual).await?;
                Err(LogError::Conflict {
                    tenant: tenant.clone(),
                    tree,
                    expected,
                    actual: Some(actual),
                })
            }
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%tenant, %tree))]
    async fn read_tree_items(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> Result<Vec<Result<Record, LogError>>, LogError> {
        let inner = &self.inner;
        let prefix = tree_prefix(tenant, tree);
        let durable = inner.durable_position();
        let mut items = Vec::new();
        for entry in inner.tree.range(index_range(&prefix, after)) {
            let (key, _) = entry.map_err(sled_error)?;
            let position = index_position(&key)?;
            if position > durable {
                break;
            }
            match inner.record(position) {
                Ok(record) => items.push(Ok(record)),
                Err(corrupt @ LogError::Corrupt { .. }) => items.push(Err(corrupt)),
                Err(other) => return Err(other),
            }
        }
        Ok(items)
    }

    async fn read_all(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        self.inner.read_all(tenant, after, limit)
    }

    async fn follow(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Record, LogError>>, LogError> {
        let follow = Follow {
            inner: self.inner.clone(),
            // Subscribed before the first read: every append from here on
            // marks the receiver changed, so none can fall between the backlog
            // and the live part.
            changes: self.inner.last.subscribe(),
            tenant: tenant.cloned(),
            cursor: after,
            buffer: VecDeque::new(),
        };
        Ok(follow.into_stream())
    }

    async fn last_position(&self) -> Result<u64, LogError> {
        Ok(*self.inner.last.borrow())
    }

    async fn tree_head(&self, tenant: &TenantId, tree: TreeId) -> Result<u64, LogError> {
        let inner = &self.inner;
        inner.head(tenant, tree, inner.durable_position())
    }

    async fn first_position_after(&self, after: u64) -> Result<Option<u64>, LogError> {
        // One store, no replica to lag: what a read returns is the log.
        match self.inner.read_all(None, after, 1) {
            Ok(records) => Ok(records.first().map(|r| r.position)),
            Err(LogError::Corrupt { position, .. }) => Ok(Some(position)),
            Err(e) => Err(e),
        }
    }
}

impl Inner {
    /// The tree's last position at or below `through` (0 for none).
    fn head(&self, tenant: &TenantId, tree: TreeId, through: u64) -> Result<u64, LogError> {
        for entry in self.tree.scan_prefix(tree_prefix(tenant, tree)).rev() {
            let (key, _) = entry.map_err(sled_error)?;
            let position = index_position(&key)?;
            if position <= through {
                return Ok(position);
            }
        }
        Ok(0)
    }

    fn durable_position(&self) -> u64 {
        *self.last.borrow()
    }

    fn flush_state(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.flush.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An append's checks and write, under the writer lock: the command id
    /// first (a retry whose expected head went stale because its first
    /// attempt was written is a duplicate, not a conflict), then the head,
    /// then all four keys in one atomic batch.
    fn write(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        expected: u64,
        command_id: CommandId,
        payload: &[u8],
    ) -> Result<Written, LogError> {
        let mut last = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let command_key = command_key(tenant, command_id);
        if let Some(original) = self.tree.get(&command_key).map_err(sled_error)? {
            let position = u64_from_slice(&original).ok_or_else(|| LogError::Corrupt {
                position: 0,
                subject_or_key: format!("c/{tenant}/{command_id}"),
                reason: "command index entry is not an 8-byte position".to_string(),
            })?;
            return Ok(Written::Duplicate(position));
        }
        // Every record written counts here, durable or not: the check is
        // exact however many appends are waiting for their flush.
        let head = self.head(tenant, tree, u64::MAX)?;
        if head != expected {
            return Ok(Written::Conflict(head));
        }
        let position = *last + 1;
        let mut batch = sled::Batch::default();
        batch.insert(
            record_key(position).as_slice(),
            encode_record(tenant, tree, command_id, payload),
        );
        batch.insert(tree_index_key(tenant, tree, position), &[] as &[u8]);
        batch.insert(tenant_index_key(tenant, position), &[] as &[u8]);
        batch.insert(command_key.as_slice(), &position.to_be_bytes());
        self.tree.apply_batch(batch).map_err(sled_error)?;
        // The batch is applied: even if its flush fails, this position is
        // taken (a retry of the command finds it through its id).
        *last = position;
        Ok(Written::New(position))
    }

    /// Returns once `position` is durable: leads a flush when none is under
    /// way, else waits for the one that is and looks again. Fails when a
    /// flush meant to cover `position` failed while this call waited.
    async fn durable(&self, position: u64) -> Result<(), LogError> {
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            let waited_from = {
                let mut state = self.flush_state();
                if self.durable_position() >= position {
                    return Ok(());
                }
                if !state.flushing {
                    state.flushing = true;
                    None
                } else {
                    // Registered before the lock is let go, so the flush's
                    // end cannot slip between the look and the wait.
                    flushed.as_mut().enable();
                    Some(state.flushes)
                }
            };
            match waited_from {
                None => self.lead_flush().await?,
                Some(from) => {
                    flushed.await;
                    let state = self.flush_state();
                    if let Some((number, target, reason)) = &state.failed {
                        if *number > from && *target >= position {
                            return Err(LogError::Backend(format!("sled: flush failed: {reason}")));
                        }
                    }
                }
            }
        }
    }

    /// Flushes every batch written so far and makes it durable for readers
    /// and followers; wakes whoever waits.
    async fn lead_flush(&self) -> Result<(), LogError> {
        let target = *self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut lead = Lead {
            inner: self,
            target,
            outcome: None,
        };
        let result = self.db.flush_async().await;
        lead.outcome = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        drop(lead);
        result.map(|_| ()).map_err(sled_error)
    }

    /// Ends a flush: `Some(Ok)` made `target` durable, `Some(Err)` failed,
    /// `None` was given up (its caller went away) and proves nothing.
    fn end_flush(&self, target: u64, outcome: Option<Result<(), String>>) {
        {
            let mut state = self.flush_state();
            state.flushing = false;
            state.flushes += 1;
            match outcome {
                Some(Ok(())) => {
                    self.last.send_if_modified(|last| {
                        let newer = target > *last;
                        if newer {
                            *last = target;
                        }
                        newer
                    });
                }
                Some(Err(reason)) => state.failed = Some((state.flushes, target, reason)),
                None => {}
            }
        }
        self.flushed.notify_waiters();
    }

    fn record(&self, position: u64) -> Result<Record, LogError> {
        let key = record_key(position);
        let corrupt = |reason: &str| LogError::Corrupt {
            position,
            subject_or_key: format!("r/{position}"),
            reason: reason.to_string(),
        };
        let value = self
            .tree
            .get(key)
            .map_err(sled_error)?
            .ok_or_else(|| corrupt("indexed, but the record is missing"))?;
        decode_record(position, &value).map_err(|reason| corrupt(&reason))
    }

    fn read_all(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        let positions: Box<dyn Iterator<Item = Result<u64, LogError>>> = match tenant {
            None => Box::new(
                self.tree
                    .range(index_range(&[RECORD], after))
                    .map(|entry| position_from_key(&entry.map_err(sled_error)?.0)),
            ),
            Some(tenant) => Box::new(
                self.tree
                    .range(index_range(&tenant_prefix(tenant), after))
                    .map(|entry| index_position(&entry.map_err(sled_error)?.0)),
            ),
        };
        let durable = self.durable_position();
        for position in positions.take(limit) {
            let position = position?;
            if position > durable {
                break;
            }
            match self.record(position) {
                Ok(record) => records.push(record),
                // Stop in front of it: the caller gets what came before, and
                // the next read (starting here) names it.
                Err(corrupt @ LogError::Corrupt { .. }) if records.is_empty() => {
                    return Err(corrupt)
                }
                Err(LogError::Corrupt { .. }) => break,
                Err(other) => return Err(other),
            }
        }
        Ok(records)
    }
}

/// The state of one `follow` stream.
struct Follow {
    inner: Arc<Inner>,
    changes: watch::Receiver<u64>,
    tenant: Option<TenantId>,
    /// Position of the last record (or corrupt record) handed out.
    cursor: u64,
    buffer: VecDeque<Record>,
}

impl Cursor for Follow {
    async fn next(&mut self) -> Result<Record, LogError> {
        loop {
            if let Some(record) = self.buffer.pop_front() {
                self.cursor = record.position;
                return Ok(record);
            }
            // Mark the current value seen *before* reading, so an append that
            // lands after the read still wakes us below.
            self.changes.borrow_and_update();
            match self
                .inner
                .read_all(self.tenant.as_ref(), self.cursor, FOLLOW_BATCH)
            {
                Ok(records) if records.is_empty() => {
                    if self.changes.changed().await.is_err() {
                        // The log was dropped while we wait; nothing more can
                        // come, but the stream is documented never to end.
                        std::future::pending::<()>().await;
                    }
                }
                Ok(records) => self.buffer.extend(records),
                Err(LogError::Corrupt {
                    position,
                    subject_or_key,
                    reason,
                }) => {
                    self.cursor = position;
                    return Err(LogError::Corrupt {
                        position,
                        subject_or_key,
                        reason,
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }
}

/// Opens the database, waiting a little for its file lock. sled releases the
/// lock only when its background threads let go of a dropped database, a
/// moment after the last handle is gone, so a process that closes and reopens
/// the log would otherwise fail at random.
fn open_db(path: &Path) -> Result<sled::Db, LogError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if is_lock_error(&e) => {
                return Err(LogError::Locked {
                    path: path.display().to_string(),
                })
            }
            Err(e) => {
                return Err(LogError::Unavailable(format!(
                    "cannot open embedded log at {}: {e}",
                    path.display()
                )));
            }
        }
    }
}

/// sled 0.34 reports a held lock only as an `Other` I/O error with this text.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn sled_error(e: sled::Error) -> LogError {
    LogError::Backend(format!("sled: {e}"))
}

fn record_key(position: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = RECORD;
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// Scoped by tenant: two tenants that use the same command id each write.
/// (Keys of an older layout, `c` and the command id alone, are 17 bytes long
/// and so never equal one of these, which are at least 19.)
fn command_key(tenant: &TenantId, command_id: CommandId) -> Vec<u8> {
    let name = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + 16);
    key.push(COMMAND);
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key.extend_from_slice(command_id.0.as_bytes());
    key
}

fn tenant_prefix(tenant: &TenantId) -> Vec<u8> {
    let name = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + 8);
    key.push(TENANT_INDEX);
    // Tenant ids are at most 64 bytes (validated by `TenantId`), so the
    // length fits a byte; the length keeps "ab" from being a prefix of "abc".
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key
}

fn tree_prefix(tenant: &TenantId, tree: TreeId) -> Vec<u8> {
    let name = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + 16 + 8);
    key.push(TREE_INDEX);
    key.push(name.len() as u8);
    key.extend_from_slice(name);
    key.extend_from_slice(tree.0.as_bytes());
    key
}

fn tree_index_key(tenant: &TenantId, tree: TreeId, position: u64) -> Vec<u8> {
    let mut key = tree_prefix(tenant, tree);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

fn tenant_index_key(tenant: &TenantId, position: u64) -> Vec<u8> {
    let mut key = tenant_prefix(tenant);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// Keys of `prefix` followed by a position > `after`.
fn index_range(prefix: &[u8], after: u64) -> std::ops::RangeInclusive<Vec<u8>> {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
    let mut end = prefix.to_vec();
    end.extend_from_slice(&u64::MAX.to_be_bytes());
    start..=end
}

fn u64_from_slice(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// The position at the end of an index or record key.
fn index_position(key: &[u8]) -> Result<u64, LogError> {
    key.len()
        .checked_sub(8)
        .and_then(|start| u64_from_slice(&key[start..]))
        .ok_or_else(|| LogError::Backend(format!("malformed index key {key:?}")))
}

fn position_from_key(key: &[u8]) -> Result<u64, LogError> {
    match key {
        [RECORD, rest @ ..] if rest.len() == 8 => index_position(key),
        _ => Err(LogError::Backend(format!("malformed record key {key:?}"))),
    }
}

fn encode_record(
    tenant: &TenantId,
    tree: TreeId,
    command_id: CommandId,
    payload: &[u8],
) -> Vec<u8> {
    let name = tenant.as_str().as_bytes();
    let mut value = Vec::with_capacity(2 + name.len() + 32 + payload.len());
    value.push(FORMAT_VERSION);
    value.push(name.len() as u8);
    value.extend_from_slice(name);
    value.extend_from_slice(tree.0.as_bytes());
    value.extend_from_slice(command_id.0.as_bytes());
    value.extend_from_slice(payload);
    value
}

fn decode_record(position: u64, value: &[u8]) -> Result<Record, String> {
    let (&version, rest) = value.split_first().ok_or("empty record")?;
    if version != FORMAT_VERSION {
        return Err(format!("unknown record format version {version}"));
    }
    let (&len, rest) = rest.split_first().ok_or("record ends before the tenant")?;
    let len = usize::from(len);
    if rest.len() < len + 32 {
        return Err(format!("record of {} bytes is truncated", value.len()));
    }
    let (name, rest) = rest.split_at(len);
    let name = std::str::from_utf8(name).map_err(|_| "tenant is not UTF-8".to_string())?;
    let tenant = TenantId::new(name).map_err(|e| e.to_string())?;
    let (tree, rest) = rest.split_at(16);
    let (command, payload) = rest.split_at(16);
    // Both slices are exactly 16 bytes by construction above.
    let uuid = |bytes: &[u8]| Uuid::from_slice(bytes).map_err(|e| e.to_string());
    Ok(Record {
        tenant,
        tree: TreeId(uuid(tree)?),
        position,
        command_id: CommandId(uuid(command)?),
        payload: Bytes::copy_from_slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let tenant = TenantId::new("acme").unwrap();
        let (tree, command) = (TreeId::generate(), CommandId::generate());
        let value = encode_record(&tenant, tree, command, b"[1,2]");
        let record = decode_record(7, &value).unwrap();
        assert_eq!(record.tenant, tenant);
        assert_eq!(record.tree, tree);
        assert_eq!(record.command_id, command);
        assert_eq!(record.position, 7);
        assert_eq!(&record.payload[..], b"[1,2]");
    }

    #[test]
    fn truncated_or_foreign_records_are_refused_with_a_reason() {
        let tenant = TenantId::new("acme").unwrap();
        let value = encode_record(&tenant, TreeId::generate(), CommandId::generate(), b"");
        for bad in [
            &[][..],
            &[9u8][..],
            &value[..10],
            &[1, 4, b'a', b'.', b'c', b'd'][..],
        ] {
            assert!(decode_record(1, bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn tenant_prefixes_do_not_overlap() {
        let ab = tenant_prefix(&TenantId::new("ab").unwrap());
        let abc = tenant_prefix(&TenantId::new("abc").unwrap());
        assert!(!abc.starts_with(&ab));
    }
}
