//! The event log: the source of truth, behind one trait with two backends.
//!
//! # Layout
//! - [`EventLog`]: what the engine needs from a log: conditional appends per
//!   tree, reads per tree or overall, a live follow, heads.
//! - [`JetStreamLog`] (`jetstream.rs`): NATS JetStream, one stream, one subject
//!   per tree (`mandate.evt.<tenant>.<tree>`). Several engine instances can
//!   share it.
//! - [`EmbeddedLog`] (`embedded.rs`): sled, for one process (the quickstart,
//!   single-process users, most tests).
//! - [`AnyLog`]: either of them, chosen at run time.
//!
//! The log stores opaque *commit payloads*: it never looks inside them.
//!
//! # Positions
//! A record's position is global and strictly increasing across all trees:
//! the stream sequence on JetStream, a counter starting at 1 in the embedded
//! log. A tree's *head* is the position of its last record, 0 when it has none.
//! Positions of one tree are therefore increasing but not contiguous.
//!
//! # Command ids
//! Every record carries the command id that wrote it; an append whose command
//! id was already written writes nothing and returns the original position
//! (`duplicate: true`). Command ids are scoped by tenant, not by tree: two
//! tenants that use the same command id each write, and neither is told of
//! the other's. The embedded log remembers them forever; JetStream within its
//! duplicate window and, past it, for retries whose expected head is stale
//! (see `jetstream.rs`).
//!
//! # Records that cannot be decoded
//! Are never skipped silently. Reads stop in front of one: the records before
//! it are returned, and a read that starts at it fails with
//! [`LogError::Corrupt`] naming its position, so a caller that wants to go on
//! reads again after that position. [`EventLog::read_tree`] is stricter: a tree
//! with a corrupt record in the range fails as a whole, because a partial tree
//! would look complete. [`EventLog::follow`] yields the error as an item and
//! goes on.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::domain::{CommandId, TenantId, TreeId};

mod embedded;
mod jetstream;

pub use embedded::{EmbeddedConfig, EmbeddedLog};
pub use jetstream::{
    check_replicas, check_server_for_replicas, ensure_replicas, get_or_create_stream,
    JetStreamConfig, JetStreamLog, LeaderStalls, MAX_REPLICAS, MIN_CLUSTER_SERVER,
};

/// The tenant and tree a record's subject names, when it is a tree's event
/// subject (`mandate.evt.<tenant>.<tree>`): lets a record the log cannot
/// decode still be laid at its tree's door.
pub fn tree_of_subject(subject: &str) -> Option<(TenantId, TreeId)> {
    jetstream::parse_subject(subject).ok()
}

/// Default largest commit payload, in bytes, for both backends. Well below
/// NATS' default `max_payload` of 1 MiB so that headers always fit beside it.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 512 * 1024;

/// One stored commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The tenant the tree belongs to.
    pub tenant: TenantId,
    /// The tree the commit was appended to.
    pub tree: TreeId,
    /// Global position (see the module docs).
    pub position: u64,
    /// The command that wrote it.
    pub command_id: CommandId,
    /// The commit payload, exactly as appended.
    pub payload: Bytes,
}

/// The outcome of a successful [`EventLog::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Position of the record: the new one, or for a duplicate the original.
    pub position: u64,
    /// The command id was already written; nothing new was stored.
    pub duplicate: bool,
}

/// Everything that can go wrong in the log layer.
///
/// [`LogError::is_retryable`] tells which errors a caller may retry; when
/// retrying an append, keep the same command id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Someone else appended to the tree first. Handling: re-read the tree,
    /// decide again, append with the new head.
    #[error("conflict on tree {tree} of tenant {tenant}: expected head {expected}, found {}", Head(*.actual))]
    Conflict {
        tenant: TenantId,
        tree: TreeId,
        /// The head the caller expected.
        expected: u64,
        /// The head the store found (read after the refusal, so it may have
        /// moved on since); `None` when it could not be read.
        actual: Option<u64>,
    },
    /// The payload is larger than the configured maximum; nothing was written.
    #[error("commit payload of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// The store cannot be reached. Handling: retry later.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The append was sent but never acknowledged: it may or may not be
    /// stored. Handling: retry with the same command id.
    #[error("timed out waiting for the event log to acknowledge an append")]
    TimedOut,
    /// A stored record cannot be decoded. It is reported, never skipped.
    #[error("corrupt record at position {position} ({subject_or_key}): {reason}")]
    Corrupt {
        position: u64,
        /// The NATS subject or the sled key of the record.
        subject_or_key: String,
        reason: String,
    },
    /// Any other failure of the store, with its message.
    #[error("event log backend error: {0}")]
    Backend(String),
    /// The log's configuration cannot work with this store (settings out of
    /// range, more replicas than the server can keep): nothing was changed.
    /// Handling: change the configuration or the server; retrying the same
    /// is refused the same way.
    #[error("event log configuration refused: {0}")]
    Config(String),
    /// The embedded log's directory is held by another process (sled keeps
    /// one process per database). Handling: stop that process, or reach the
    /// engine it serves instead.
    #[error("embedded log at {path} is in use by another process")]
    Locked { path: String },
}

/// What kind of failure a [`LogError`] is, for callers that branch without
/// needing the variant's data (as `async_nats` errors expose `kind()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogErrorKind {
    /// [`LogError::Conflict`].
    Conflict,
    /// [`LogError::TooLarge`].
    TooLarge,
    /// [`LogError::Unavailable`].
    Unavailable,
    /// [`LogError::TimedOut`].
    TimedOut,
    /// [`LogError::Corrupt`].
    Corrupt,
    /// [`LogError::Backend`].
    Backend,
    /// [`LogError::Config`].
    Config,
    /// [`LogError::Locked`].
    Locked,
}

impl LogError {
    /// What kind of failure this is.
    pub fn kind(&self) -> LogErrorKind {
        match self {
            LogError::Conflict { .. } => LogErrorKind::Conflict,
            LogError::TooLarge { .. } => LogErrorKind::TooLarge,
            LogError::Unavailable(_) => LogErrorKind::Unavailable,
            LogError::TimedOut => LogErrorKind::TimedOut,
            LogError::Corrupt { .. } => LogErrorKind::Corrupt,
            LogError::Backend(_) => LogErrorKind::Backend,
            LogError::Config(_) => LogErrorKind::Config,
            LogError::Locked { .. } => LogErrorKind::Locked,
        }
    }

    /// Whether the same call may succeed if tried again (for an append:
    /// after re-reading the head in the case of a conflict).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            LogErrorKind::Conflict
                | LogErrorKind::Unavailable
                | LogErrorKind::TimedOut
                | LogErrorKind::Locked
        )
    }
}

/// Refuses a payload larger than `max` before it reaches a backend.
/// A backend's `follow` cursor: the next record after the last one it
/// handed out, waiting for it if need be.
trait Cursor: Send + Sized + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Record, LogError>> + Send;

    /// The endless stream of this cursor's records.
    fn into_stream(self) -> BoxStream<'static, Result<Record, LogError>> {
        futures::stream::unfold(self, |mut cursor| async move {
            let item = cursor.next().await;
            Some((item, cursor))
        })
        .boxed()
    }
}

pub(crate) fn check_size(payload: &Bytes, max: usize) -> Result<(), LogError> {
    if payload.len() > max {
        return Err(LogError::TooLarge {
            size: payload.len(),
            max,
        });
    }
    Ok(())
}

/// Formats a head that may be unknown.
struct Head(Option<u64>);

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(head) => write!(f, "{head}"),
            None => f.write_str("another head"),
        }
    }
}

/// The event log. See the module docs for positions, command ids and
/// corrupt records.
pub trait EventLog: Send + Sync + 'static {
    /// Appends one commit to a tree iff the tree's head is `expected` (0: the
    /// tree must have no record yet). A command id that was already written
    /// in this tenant returns `Appended { duplicate: true, position: original }` and writes
    /// nothing, whatever `expected` says.
    fn append(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        expected: u64,
        command_id: CommandId,
        payload: Bytes,
    ) -> impl Future<Output = Result<Appended, LogError>> + Send;

    /// Every record of one tree with position > `after`, in order. Fails with
    /// [`LogError::Corrupt`] if any of them cannot be decoded: the first one,
    /// of the records [`EventLog::read_tree_items`] reads.
    fn read_tree(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> impl Future<Output = Result<Vec<Record>, LogError>> + Send {
        async move {
            let items = self.read_tree_items(tenant, tree, after).await?;
            items.into_iter().collect()
        }
    }

    /// Every record of one tree with position > `after`, in order, each one
    /// decoded or the [`LogError::Corrupt`] that names it in its place: for
    /// checks (`verify`) that must see past a corrupt record.
    fn read_tree_items(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> impl Future<Output = Result<Vec<Result<Record, LogError>>, LogError>> + Send;

    /// Up to `limit` records of all trees (or of one tenant's) with a
    /// position after `after`, in order. Stops in front of a corrupt record; fails with
    /// [`LogError::Corrupt`] when that is the first one.
    fn read_all(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>, LogError>> + Send;

    /// Every record (or one tenant's) with position > `after`: first the
    /// backlog, then new appends as they happen, each exactly once and in
    /// order, across reconnects. Fails if the log cannot be read when called.
    /// Error items do not end the stream: a [`LogError::Corrupt`] item stands
    /// for one record, any other is a transient failure the stream is
    /// already recovering from.
    fn follow(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<Record, LogError>>, LogError>> + Send;

    /// Position of the last record overall, 0 if there is none.
    fn last_position(&self) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// Head of one tree: the position of its last record, 0 if it has none.
    fn tree_head(
        &self,
        tenant: &TenantId,
        tree: TreeId,
    ) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// The position of the first record past `after`, as the log's leader
    /// holds it (`None` when there is none: the records up to the last
    /// position were deleted). Tells a read that stopped short (a replica
    /// behind the leader answered it) from a tail that is gone.
    fn first_position_after(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<Option<u64>, LogError>> + Send;
}

/// Either backend, chosen at run time; every call is delegated.
#[derive(Clone)]
pub enum AnyLog {
    /// NATS JetStream.
    Nats(JetStreamLog),
    /// The embedded sled log.
    Embedded(EmbeddedLog),
}

impl From<JetStreamLog> for AnyLog {
    fn from(log: JetStreamLog) -> Self {
        AnyLog::Nats(log)
    }
}

impl From<EmbeddedLog> for AnyLog {
    fn from(log: EmbeddedLog) -> Self {
        AnyLog::Embedded(log)
    }
}

/// Implements [`EventLog`] for [`AnyLog`] by calling the same method on
/// whichever backend it is: every signature is the trait's, written once.
macro_rules! delegate_to_backend {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        impl EventLog for AnyLog {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        AnyLog::Nats(log) => log.$name($($arg),*).await,
                        AnyLog::Embedded(log) => log.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

delegate_to_backend! {
    fn append(&self, tenant: &TenantId, tree: TreeId, expected: u64, command_id: CommandId, payload: Bytes) -> Result<Appended, LogError>;
    fn read_tree_items(&self, tenant: &TenantId, tree: TreeId, after: u64) -> Result<Vec<Result<Record, LogError>>, LogError>;
    fn read_all(&self, tenant: Option<&TenantId>, after: u64, limit: usize) -> Result<Vec<Record>, LogError>;
    fn follow(&self, tenant: Option<&TenantId>, after: u64) -> Result<BoxStream<'static, Result<Record, LogError>>, LogError>;
    fn last_position(&self) -> Result<u64, LogError>;
    fn tree_head(&self, tenant: &TenantId, tree: TreeId) -> Result<u64, LogError>;
    fn first_position_after(&self, after: u64) -> Result<Option<u64>, LogError>;
}
