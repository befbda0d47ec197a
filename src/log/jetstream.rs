//! The event log on NATS JetStream.
//!
//! One stream (default `MANDATE_EVENTS`, file storage) holds every tree; each
//! tree has its own subject, `mandate.evt.<tenant>.<tree>`, and a record's
//! position is its stream sequence.
//!
//! # Appends
//! A publish on the tree's subject with two headers:
//! `Nats-Expected-Last-Subject-Sequence` = the expected head (optimistic
//! concurrency), and `Nats-Msg-Id` = `<tenant>:<command id>` (deduplication,
//! see below). What the
//! servers do with them, measured on 2.9.10 and 2.15.1 (the conformance suite
//! checks it on every run):
//! - expected `0` means "no message on this subject yet", on both: a second
//!   create is refused with error 10071 ("wrong last sequence"). The actual
//!   head in a conflict is read from the stream (the conflict scan below, or
//!   the subject's last message), never parsed from the server's text.
//! - The order of the two checks differs. 2.9.10 deduplicates first, so a
//!   retry carrying a now-stale expected head gets a duplicate ack. 2.15.1
//!   checks the expected head first and answers 10071. Either server also
//!   forgets message ids after the duplicate window (2 minutes by default).
//!
//! So a conflict is not trusted as is: before reporting it, the tree's records
//! after the expected head are scanned for the command id, and if it is there
//! the append is reported as a duplicate at the original position. That makes
//! a retry with a stale head idempotent on every server version and past the
//! duplicate window. What it cannot catch is a retry past the window whose
//! expected head happens to be current; the engine guards against that by
//! checking command ids in the tree it folded.
//!
//! Message ids are deduplicated stream-wide, so the message id carries the
//! tenant: two tenants that use the same command id never meet, as in the
//! embedded backend. Records written before the tenant was part of the id
//! carry the bare command id and are still read.
//!
//! Appends are pipelined: each caller publishes and waits for its own ack, and
//! only a semaphore (`max_in_flight`) bounds how many are outstanding. A
//! publish whose ack times out may still have been stored; it is retried with
//! the same message id, which the checks above turn into a duplicate.
//!
//! # Reads
//! Server 2.9 has no cheap read by subject, so reads create an ephemeral pull
//! consumer filtered on the subject(s) from `after + 1`, take the number of
//! pending messages at creation as the end, and fetch until they have it.
//! `follow` keeps such a consumer open, checks that consumer sequences are
//! contiguous, and recreates it from the last position it handed out whenever
//! anything goes wrong (a missed heartbeat, a server restart), so nothing is
//! lost or repeated.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{
    ContextBuilder, CreateStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    self, ConsumerErrorKind, LastRawMessageError, LastRawMessageErrorKind, StorageType,
};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{Appended, Cursor, EventLog, LogError, Record, DEFAULT_MAX_MESSAGE_SIZE};
use crate::domain::{CommandId, TenantId, TreeId};

/// The subjects of the event stream; a tree's subject adds tenant and tree.
const SUBJECT_PREFIX: &str = "mandate.evt";
/// Room for the headers Mandate adds (message id, expected sequence) on top of
/// the payload, when sizing the stream's and the server's message limits.
const HEADER_ROOM: usize = 1024;
/// Messages asked for in one fetch while reading.
const READ_BATCH: usize = 1000;
/// Messages asked for in one pull while following.
const FOLLOW_BATCH: usize = 500;
/// Idle heartbeat of a follow's pull requests: two missed ones (a dead server
/// or a consumer lost in a restart) make the follow recreate its consumer.
const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(1);
/// Lifetime of one pull request of a follow.
const FOLLOW_EXPIRES: Duration = Duration::from_secs(10);
/// A follow that has received nothing for this long looks (message-get
/// API) whether the next record is one the client cannot take: its
/// delivery dropped the connection, and nothing may come after it to show a
/// gap.
const FOLLOW_IDLE_PROBE: Duration = Duration::from_secs(1);
/// Longest pause between attempts to recreate a follow's consumer.
const FOLLOW_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the server keeps a read's consumer if the client vanishes
/// without deleting it.
const CONSUMER_INACTIVE: Duration = Duration::from_secs(30);

/// Settings of the JetStream log.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// Name of the stream that holds every tree. Created on first use.
    /// Default `MANDATE_EVENTS`.
    pub stream_name: String,
    /// Replicas of the stream: 1 on a single server, usually 3 in a
    /// cluster (at most 5). An existing stream with another number is
    /// changed to it if the server allows, else opening fails naming both
    /// numbers (see [`ensure_replicas`]). Default 1.
    pub replicas: usize,
    /// How long the server remembers a command id to deduplicate retries.
    /// Default 2 minutes (the server's own default).
    pub duplicate_window: Duration,
    /// Largest commit payload accepted, in bytes; larger appends fail with
    /// [`LogError::TooLarge`] before anything is sent. Must leave room for
    /// headers under the server's `max_payload`. Default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
    /// How long to wait for any answer from the server: the ack of one
    /// publish, an API request, one batch of a read. Default 5 seconds.
    pub ack_timeout: Duration,
    /// Most appends waiting for their ack at once; more wait for a slot. The
    /// client itself holds at most ~5,000. Default 4,096.
    pub max_in_flight: usize,
    /// How many times one append is sent when its ack times out (same
    /// message id each time) before it fails with [`LogError::TimedOut`].
    /// Default 3.
    pub publish_attempts: u32,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream_name: "MANDATE_EVENTS".to_string(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ack_timeout: Duration::from_secs(5),
            max_in_flight: 4096,
            publish_attempts: 3,
        }
    }
}

/// The event log on a JetStream stream. Cloning is cheap and shares the
/// connection.
#[derive(Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    stream: stream::Stream,
    config: JetStreamConfig,
    in_flight: Semaphore,
    stalls: Stalls,
}

/// What the log met of a stream without a leader (an election under way,
/// or too few nodes to hold one), since it was opened: see [`LeaderStalls`].
#[derive(Default)]
struct Stalls {
    append_retries: AtomicU64,
    unavailable: AtomicU64,
    /// Milliseconds since the Unix epoch of the last one; 0 for none.
    last_ms: AtomicI64,
}

impl Stalls {
    fn note(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    fn retry(&self) {
        self.note(&self.append_retries);
    }

    /// Counts `e` if it says the stream did not answer; passes it on.
    fn unavailable(&self, e: LogError) -> LogError {
        if matches!(e, LogError::Unavailable(_) | LogError::TimedOut) {
            self.note(&self.unavailable);
        }
        e
    }
}

/// What a log met of a stream without a leader since it was opened: on a
/// cluster, the stream's leader node lost and an election under way (or
/// too few nodes to hold one). The engine retries across it (an append is
/// sent again with the same message id; a command or read given up is
/// answered `unavailable`, retried by its client with the same command
/// id); these are the counts an operator sees in `health` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderStalls {
    /// Appends sent again, with the same message id, after their
    /// acknowledgement timed out (what a stream without a leader does).
    pub append_retries: u64,
    /// Appends given up (every attempt timed out, or no stream answered)
    /// and the leader's reads (a tree's head, the last position) that no
    /// leader answered: each failed `unavailable`.
    pub unavailable: u64,
    /// When the last of either happened, in milliseconds since the Unix
    /// epoch.
    pub last_at_ms: Option<i64>,
}

impl JetStreamLog {
    /// Opens the log over a connected client, creating the stream if it is
    /// missing and checking what the server stored.
    pub async fn open(
        client: async_nats::Client,
        config: JetStreamConfig,
    ) -> Result<Self, LogError> {
        validate(&config, client.server_info().max_payload)?;
        check_server_for_replicas(&client.server_info().version, config.replicas)?;
        let js = ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client);
        let wanted = stream::Config {
            name: config.stream_name.clone(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            max_message_size: stream_message_limit(config.max_message_size)?,
            ..Default::default()
        };
        let stream = match get_or_create_stream(&js, wanted.clone()).await {
            Ok(stream) => stream,
            // Another instance created it between our lookup and our create.
            Err(e)
                if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NAME_EXIST) =>
            {
                js.get_stream(&config.stream_name).await.map_err(|e| {
                    LogError::Unavailable(format!("stream {}: {e}", config.stream_name))
                })?
            }
            // A server outside a cluster (2.10 and later) refuses replicas.
            Err(e)
                if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED) =>
            {
                return Err(LogError::Config(format!(
                    "stream {} with {} replicas: this server is not in a cluster ({e})",
                    config.stream_name, config.replicas
                )));
            }
            Err(e) => {
                let message = format!("cannot get or create stream {}: {e}", config.stream_name);
                return Err(match e.kind() {
                    CreateStreamErrorKind::TimedOut
                    | CreateStreamErrorKind::JetStreamUnavailable => LogError::Unavailable(message),
                    _ => LogError::Backend(message),
                });
            }
        };
        check_stored(&wanted, &stream.cached_info().config)?;
        ensure_replicas(&js, &config.stream_name, config.replicas).await?;
        Ok(JetStreamLog {
            inner: Arc::new(Inner {
                js,
                stream,
                in_flight: Semaphore::new(config.max_in_flight),
                config,
                stalls: Stalls::default(),
            }),
        })
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.config.stream_name
    }

    /// What this log met of a stream without a leader since it was opened.
    pub fn leader_stalls(&self) -> LeaderStalls {
        let stalls = &self.inner.stalls;
        let last = stalls.last_ms.load(Ordering::Relaxed);
        LeaderStalls {
            append_retries: stalls.append_retries.load(Ordering::Relaxed),
            unavailable: stalls.unavailable.load(Ordering::Relaxed),
            last_at_ms: (last != 0).then_some(last),
        }
    }
}

/// Refuses settings that could never work, before touching the server.
fn validate(config: &JetStreamConfig, server_max_payload: usize) -> Result<(), LogError> {
    let bad = |reason: String| {
        Err(LogError::Config(format!(
            "invalid JetStream config: {reason}"
        )))
    };
    let name = &config.stream_name;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad(format!(
            "stream_name {name:?} may contain only ASCII letters, digits, '-' and '_'"
        ));
    }
    check_replicas(config.replicas)?;
    if config.max_in_flight == 0 {
        return bad("max_in_flight must be at least 1".to_string());
    }
    if config.publish_attempts == 0 {
        return bad("publish_attempts must be at least 1".to_string());
    }
    if config.max_message_size.saturating_add(HEADER_ROOM) > server_max_payload {
        return bad(format!(
            "max_message_size {} plus {HEADER_ROOM} bytes for headers exceeds the server's max_payload {server_max_payload}",
            config.max_message_size
        ));
    }
    Ok(())
}

fn stream_message_limit(max_message_size: usize) -> Result<i32, LogError> {
    let limit = max_message_size.saturating_add(HEADER_ROOM);
    i32::try_from(limit).map_err(|_| {
        LogError::Config(format!(
            "invalid JetStream config: max_message_size {max_message_size} does not fit a stream limit"
        ))
    })
}

/// Servers silently ignore options they do not know (2.9 does), and an
/// existing stream keeps its own settings: compare what matters for
/// correctness and refuse, or warn where it only matters for tuning.
fn check_stored(wanted: &stream::Config, stored: &stream::Config) -> Result<(), LogError> {
    let name = &wanted.name;
    let subject = format!("{SUBJECT_PREFIX}.>");
    if !stored.subjects.contains(&subject) {
        return Err(LogError::Backend(format!(
            "stream {name} stores subjects {:?}, not {subject}",
            stored.subjects
        )));
    }
    if stored.storage != StorageType::File {
        return Err(LogError::Backend(format!(
            "stream {name} uses {:?} storage: acknowledged events would not survive a restart",
            stored.storage
        )));
    }
    // -1 (or 0 from old servers) means no limit of the stream's own.
    if stored.max_message_size > 0 && stored.max_message_size < wanted.max_message_size {
        return Err(LogError::Backend(format!(
            "stream {name} accepts messages of at most {} bytes, {} are needed",
            stored.max_message_size, wanted.max_message_size
        )));
    }
    if stored.duplicate_window != wanted.duplicate_window {
        tracing::warn!(
            stream = %name,
            stored = ?stored.duplicate_window,
            wanted = ?wanted.duplicate_window,
            "stream keeps a different duplicate window than configured"
        );
    }
    Ok(())
}

/// `get_or_create_stream`, asked again while the cluster times out: on a
/// cluster, instances starting together create the same replicated stream
/// at once, and while one creation (or a change of replicas) is under way
/// the others' requests can time out, and a stream just made by another
/// may not answer its info yet. Other errors, and the last attempt's, are
/// the caller's.
pub async fn get_or_create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    let mut attempt = 1;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Err(e)
                if attempt < REPLICA_ATTEMPTS
                    && matches!(
                        e.kind(),
                        CreateStreamErrorKind::TimedOut
                            | CreateStreamErrorKind::JetStreamUnavailable
                    ) =>
            {
                tracing::warn!(stream = %config.name, "cannot get or create the stream yet; retrying: {e}");
                attempt += 1;
                tokio::time::sleep(REPLICA_RETRY_PAUSE).await;
            }
            // Made a moment ago by another instance, the stream may not be
            // found yet through this node (the cluster test saw 10059
            // "stream not found" on the next info request): asked again
            // until its info answers, as callers read it next.
            Ok(mut stream) if attempt < REPLICA_ATTEMPTS => match stream.info().await {
                Ok(_) => return Ok(stream),
                Err(e) => {
                    tracing::warn!(stream = %config.name, "the stream does not answer yet; retrying: {e}");
                    attempt += 1;
                    tokio::time::sleep(REPLICA_RETRY_PAUSE).await;
                }
            },
            other => return other,
        }
    }
}

/// Most replicas a JetStream stream may have.
pub const MAX_REPLICAS: usize = 5;

/// Refuses a number of replicas no stream can have (0, or above
/// [`MAX_REPLICAS`]).
pub fn check_replicas(replicas: usize) -> Result<(), LogError> {
    if (1..=MAX_REPLICAS).contains(&replicas) {
        Ok(())
    } else {
        Err(LogError::Config(format!(
            "invalid JetStream config: replicas must be 1 to {MAX_REPLICAS}, not {replicas}"
        )))
    }
}

/// Makes the existing stream `name` have `replicas` replicas, whoever made
/// it and however: unchanged if it has them; else updated to them, if the
/// server allows (a cluster moves a stream between R1 and R3 online);
/// else an error naming the stream and both numbers, so that an engine
/// configured for replicated streams never runs on a single copy unawares,
/// nor one configured for a single server on a stream it cannot shrink.
/// What the server stored is read back, not trusted from the request, and
/// more than one replica is refused outright on a server that is not in a
/// cluster (2.9 would store the number and keep one copy).
pub async fn ensure_replicas(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(), LogError> {
    check_replicas(replicas)?;
    let unavailable =
        |e: &dyn std::fmt::Display| LogError::Unavailable(format!("stream {name}: {e}"));
    let mut last_refusal = String::new();
    for attempt in 1..=REPLICA_ATTEMPTS {
        // A stream another instance made a moment ago may not be found yet
        // through this node (the cluster test saw 10059 "stream not found"
        // right after the create): looked up again before giving up.
        let stored = match js.get_stream(name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .map(|i| i.config.clone())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) if attempt < REPLICA_ATTEMPTS => {
                tracing::warn!(stream = %name, "cannot read the stream yet; retrying: {e}");
                tokio::time::sleep(REPLICA_RETRY_PAUSE).await;
                continue;
            }
            Err(e) => return Err(unavailable(&e)),
        };
        let had = stored.num_replicas;
        let refused = |why: &str| {
            LogError::Backend(format!(
                "stream {name} has {had} replica(s), {replicas} configured, and the server cannot give them ({why}); change the stream or the setting"
            ))
        };
        // 2.9 outside a cluster accepts the update and stores the number,
        // yet keeps one copy: more than one replica needs a cluster.
        if replicas > 1 && js.client().server_info().cluster.is_none() {
            return Err(LogError::Config(format!(
                "stream {name} has {had} replica(s), {replicas} configured, and the server cannot give them \
                 (the server is not in a cluster, so it keeps one copy); change the stream or the setting"
            )));
        }
        check_server_for_replicas(&js.client().server_info().version, replicas)?;
        if had == replicas {
            return Ok(());
        }
        if attempt == REPLICA_ATTEMPTS {
            return Err(refused(&last_refusal));
        }
        tracing::warn!(stream = %name, had, wanted = replicas, "changing the stream's replicas");
        let update = stream::Config {
            num_replicas: replicas,
            ..stored
        };
        // Instances starting together may each ask for the change; while
        // one is under way another's request can time out. So the stream
        // is read again (and the change asked again) before giving up.
        match js.update_stream(update).await {
            Ok(info) if info.config.num_replicas == replicas => return Ok(()),
            Ok(info) => last_refusal = format!("it stored {} replica(s)", info.config.num_replicas),
            Err(e) => last_refusal = e.to_string(),
        }
        tokio::time::sleep(REPLICA_RETRY_PAUSE).await;
    }
    unreachable!("the last attempt returns")
}

/// Looks at a stream whose replicas are being changed before giving up.
const REPLICA_ATTEMPTS: u32 = 6;
/// Pause between them.
const REPLICA_RETRY_PAUSE: Duration = Duration::from_secs(1);

impl EventLog for JetStreamLog {
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
        let max = inner.config.max_message_size;
        super::check_size(&payload, max)?;
        let subject = tree_subject(tenant, tree);
        {
            // Held only while this publish is outstanding, so that many
            // appends are in flight at once up to the bound.
            let _slot = inner
                .in_flight
                .acquire()
                .await
                .map_err(|e| LogError::Backend(format!("append slots closed: {e}")))?;
            let mut attempt = 1;
            loop {
                let publish = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(message_id(tenant, command_id))
                    .expected_last_subject_sequence(expected);
                let acked = match inner.js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(ack) => {
                        return Ok(Appended {
                            position: ack.sequence,
                            duplicate: ack.duplicate,
                        })
                    }
                    // Error code 10071: the tree's head is not `expected`;
                    // on a cluster (2.10+) also 10164 (another append on
                    // the subject is in flight) and 10163 (the check is not
                    // ready yet): decided again on a fresh head either way.
                    Err(e) if refused_on_head(&e) => break,
                    Err(e) if e.kind() == PublishErrorKind::TimedOut => {
                        if attempt >= inner.config.publish_attempts {
                            return Err(inner.stalls.unavailable(LogError::TimedOut));
                        }
                        tracing::debug!(attempt, %command_id, "publish ack timed out, sending again");
                        inner.stalls.retry();
                        attempt += 1;
                    }
                    // Error code 10158: an earlier attempt with this message
                    // id is proposed and not yet committed (a leader cut off
                    // from its peers holds it until it steps down): its
                    // outcome is not known yet, so this is no failure of the
                    // command. Sent again after a pause; still so, the append
                    // is given up `unavailable`, and the client's retry with
                    // the same command id finds it stored or not.
                    Err(e) if earlier_attempt_in_process(&e) => {
                        if attempt >= inner.config.publish_attempts {
                            return Err(inner.stalls.unavailable(LogError::Unavailable(format!(
                                "publishing on {subject}: {e}"
                            ))));
                        }
                        tracing::debug!(attempt, %command_id, "an earlier attempt is in process, sending again");
                        inner.stalls.retry();
                        attempt += 1;
                        tokio::time::sleep(IN_PROCESS_PAUSE).await;
                    }
                    Err(e) => {
                        return Err(inner.stalls.unavailable(publish_error(
                            &subject,
                            e,
                            payload.len(),
                            max,
                        )))
                    }
                }
            }
        }
        // See the module docs: a stale retry may be refused on the expected
        // head although its first attempt was stored.
        let records = inner.scan(&subject, expected, usize::MAX).await?;
        let original = records
            .iter()
            .flatten()
            .find(|r| r.command_id == command_id);
        if let Some(record) = original {
            return Ok(Appended {
                position: record.position,
                duplicate: true,
            });
        }
        // The actual head, read rather than taken from the refusal's text:
        // the last record the scan saw, or (when the head is below
        // `expected`, so the scan saw nothing) the subject's last message.
        let actual = match records.last() {
            Some(Ok(record)) => Some(record.position),
            Some(Err(LogError::Corrupt { position, .. })) => Some(*position),
            _ => self.tree_head(tenant, tree).await.ok(),
        };
        Err(LogError::Conflict {
            tenant: tenant.clone(),
            tree,
            expected,
            actual,
        })
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%tenant, %tree))]
    async fn read_tree_items(
        &self,
        tenant: &TenantId,
        tree: TreeId,
        after: u64,
    ) -> Result<Vec<Result<Record, LogError>>, LogError> {
        self.inner
            .scan(&tree_subject(tenant, tree), after, usize::MAX)
            .await
    }

    async fn read_all(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        let items = self.inner.scan(&filter(tenant), after, limit).await?;
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Ok(record) => records.push(record),
                // Stop in front of it; a read starting here names it.
                Err(corrupt) if records.is_empty() => return Err(corrupt),
                Err(_) => break,
            }
        }
        Ok(records)
    }

    async fn follow(
        &self,
        tenant: Option<&TenantId>,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Record, LogError>>, LogError> {
        let mut follow = Follow {
            inner: self.inner.clone(),
            filter: filter(tenant),
            last: after,
            messages: None,
            consumer_sequence: 0,
            failures: 0,
        };
        // The first consumer is made here, so that a log that cannot be read
        // at all says so to the caller instead of as a stream item.
        follow.messages = Some(follow.open().await?);
        Ok(follow.into_stream())
    }

    async fn last_position(&self) -> Result<u64, LogError> {
        let info = self.inner.info().await?;
        self.inner.leader_in_contact(&info)?;
        Ok(info.state.last_sequence)
    }

    async fn first_position_after(&self, after: u64) -> Result<Option<u64>, LogError> {
        // The non-direct message get: only the stream's leader answers.
        match self
            .inner
            .stream
            .get_first_raw_message_by_subject(filter(None), after + 1)
            .await
        {
            Ok(message) => Ok(Some(message.sequence)),
            Err(e) => self
                .inner
                .message_get_failure(&format!("first record after {after}"), &e)
                .map_or(Ok(None), Err),
        }
    }

    async fn tree_head(&self, tenant: &TenantId, tree: TreeId) -> Result<u64, LogError> {
        let subject = tree_subject(tenant, tree);
        let head = self.inner.stream.get_last_raw_message_by_subject(&subject);
        let head = if self.inner.config.replicas > 1 {
            // Asked together: the head counts only from a leader in
            // contact with its majority at that moment.
            let (info, head) = tokio::join!(self.inner.info(), head);
            self.inner.leader_in_contact(&info?)?;
            head
        } else {
            head.await
        };
        match head {
            Ok(message) => Ok(message.sequence),
            Err(e) => self
                .inner
                .message_get_failure(&format!("head of {subject}"), &e)
                .map_or(Ok(0), Err),
        }
    }
}

/// How long the leader of a replicated stream may go without hearing from
/// a majority of its replicas and still be taken for the leader. NATS has
/// no leader lease: a leader cut off from its peers answers as leader until
/// it notices. Its followers elect another only after an election timeout
/// without its heartbeats (at least 4 s in nats-server 2.10 to 2.15), and
/// a healthy leader hears from each follower about once a second, so a
/// leader that has not heard from a majority for this long is not trusted
/// (its answer may be older than a commit of the new leader).
const LEADER_CONTACT: Duration = Duration::from_millis(2500);

impl Inner {
    async fn info(&self) -> Result<stream::Info, LogError> {
        self.stream.get_info().await.map_err(|e| {
            self.stalls.unavailable(LogError::Unavailable(format!(
                "stream {}: {e}",
                self.config.stream_name
            )))
        })
    }

    /// On a replicated stream, unavailable unless `info` comes from a
    /// leader that heard from a majority of the stream's replicas (itself
    /// included) within [`LEADER_CONTACT`]. While a stream has no leader,
    /// each replica answers its info with its own state, which may lag: an
    /// answer that names no leader is refused too.
    fn leader_in_contact(&self, info: &stream::Info) -> Result<(), LogError> {
        majority_heard(info.cluster.as_ref(), self.config.replicas).map_err(|why| {
            self.stalls.unavailable(LogError::Unavailable(format!(
                "stream {}: {why}",
                self.config.stream_name
            )))
        })
    }

    /// What a failed message get (`what`, for the message) means: `None`
    /// when the stream holds no such message; a backend failure when
    /// JetStream refused the request itself (or the client its subject);
    /// otherwise unavailable (a 503 while a leader is elected, no answer in
    /// time), counted as a leader stall.
    fn message_get_failure(&self, what: &str, e: &LastRawMessageError) -> Option<LogError> {
        match e.kind() {
            LastRawMessageErrorKind::NoMessageFound => None,
            LastRawMessageErrorKind::JetStream(j) if !at_server_unavailable(&j) => {
                Some(LogError::Backend(format!("{what}: {e}")))
            }
            LastRawMessageErrorKind::InvalidSubject => {
                Some(LogError::Backend(format!("{what}: {e}")))
            }
            LastRawMessageErrorKind::JetStream(_) | LastRawMessageErrorKind::Other => Some(
                self.stalls
                    .unavailable(LogError::Unavailable(format!("{what}: {e}"))),
            ),
        }
    }

    /// What follows `after` on `filter`, read through the message-get API:
    /// a record the client can take, or one it cannot (as a corrupt record,
    /// with its position) because its subject is not UTF-8: the NATS client
    /// drops its connection on such a delivery, so no consumer gets past it
    /// (the server's JSON answer shows the bad bytes as U+FFFD).
    /// [`After::Nothing`] when there is none, or it cannot be read now.
    async fn after(&self, filter: &str, after: u64) -> After {
        let Ok(next) = self
            .stream
            .get_first_raw_message_by_subject(filter, after + 1)
            .await
        else {
            return After::Nothing;
        };
        let subject = next.subject.as_str();
        if !subject.contains(char::REPLACEMENT_CHARACTER) {
            return After::Deliverable(next.sequence);
        }
        let corrupt = LogError::Corrupt {
            position: next.sequence,
            subject_or_key: subject.escape_default().collect(),
            reason: "its subject is not UTF-8 (the NATS client cannot take it)".into(),
        };
        After::Undeliverable(next.sequence, corrupt)
    }

    /// Everything on `filter` after `after`, up to `max` messages, decoded
    /// one by one: a message that cannot be decoded is an `Err` item in place.
    ///
    /// A read consumer that stops answering part-way (seen on 2.9 under
    /// concurrent readers: a fetch that is never answered) is replaced by a
    /// fresh one from the last message read, a few times, before the read
    /// fails as unavailable. Never returns a silently shortened read.
    async fn scan(
        &self,
        filter: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<Result<Record, LogError>>, LogError> {
        let mut items = Vec::new();
        let mut from = after;
        let mut stalls = 0;
        while items.len() < max {
            let consumer = self.consumer(filter, from, CONSUMER_INACTIVE).await?;
            let pending = consumer.cached_info().num_pending;
            let target = usize::try_from(pending)
                .unwrap_or(usize::MAX)
                .min(max - items.len());
            let drained = if target == 0 {
                Ok(Drained::Complete)
            } else {
                self.drain(&consumer, filter, target, &mut items).await
            };
            // Not awaited: the reader should not pay a round trip for cleanup,
            // and a consumer left behind expires after `CONSUMER_INACTIVE`.
            let js = self.js.clone();
            let (stream, name) = (
                self.config.stream_name.clone(),
                consumer.cached_info().name.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = js.delete_consumer_from_stream(&name, &stream).await {
                    tracing::debug!(consumer = %name, "could not delete read consumer: {e}");
                }
            });
            if !matches!(drained, Ok(Drained::Complete)) {
                let at = items.last().and_then(item_position).unwrap_or(from);
                if let After::Undeliverable(position, passed) = self.after(filter, at).await {
                    from = position;
                    items.push(Err(passed));
                    continue;
                }
            }
            match drained? {
                Drained::Complete => break,
                Drained::Stalled => {
                    stalls += 1;
                    if stalls > MAX_STALLS {
                        return Err(LogError::Unavailable(format!(
                            "reading {filter}: timed out waiting for records"
                        )));
                    }
                    tracing::debug!(
                        filter,
                        from,
                        read = items.len(),
                        "read consumer stalled; reading on with a fresh one"
                    );
                    from = items.last().and_then(item_position).unwrap_or(from);
                }
            }
        }
        Ok(items)
    }

    /// Reads up to `target` messages from `consumer` into `items`.
    async fn drain(
        &self,
        consumer: &PullConsumer,
        filter: &str,
        target: usize,
        items: &mut Vec<Result<Record, LogError>>,
    ) -> Result<Drained, LogError> {
        let mut read = 0;
        // A healthy server answers a fetch at once; one that has not within
        // this is taken for stalled, and the read goes on with a new consumer.
        let timeout = self.config.ack_timeout / (MAX_STALLS + 1);
        while read < target {
            let want = (target - read).min(READ_BATCH);
            let Ok(batch) =
                tokio::time::timeout(timeout, consumer.fetch().max_messages(want).messages()).await
            else {
                return Ok(Drained::Stalled);
            };
            // On a cluster a fetch from a consumer just made can be answered
            // 503 (its replica is not ready yet): a stall, read on with a
            // fresh consumer, like a fetch never answered.
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(filter, "read fetch failed: {e}");
                    return Ok(Drained::Stalled);
                }
            };
            let mut received = 0;
            loop {
                let Ok(next) = tokio::time::timeout(timeout, batch.next()).await else {
                    return Ok(Drained::Stalled);
                };
                let Some(message) = next else { break };
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::debug!(filter, "read message failed: {e}");
                        return Ok(Drained::Stalled);
                    }
                };
                received += 1;
                read += 1;
                let info = message
                    .info()
                    .map_err(|e| LogError::Backend(format!("reading {filter}: {e}")))?;
                let last = info.pending == 0;
                items.push(decode(
                    info.stream_sequence,
                    message.subject.as_str(),
                    message.headers.as_ref(),
                    message.payload.clone(),
                ));
                if last {
                    return Ok(Drained::Complete);
                }
            }
            // Fewer messages than counted at creation (some were deleted):
            // what is there has been read.
            if received == 0 {
                break;
            }
        }
        Ok(Drained::Complete)
    }

    /// An ephemeral consumer delivering `filter` from `after + 1`, without
    /// acks, on one replica in memory: it only exists for one reader.
    async fn consumer(
        &self,
        filter: &str,
        after: u64,
        inactive: Duration,
    ) -> Result<PullConsumer, LogError> {
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            filter_subject: filter.to_string(),
            ack_policy: AckPolicy::None,
            inactive_threshold: inactive,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(config, &self.config.stream_name)
            .await
            .map_err(|e| {
                let message = format!("cannot read {filter}: {e}");
                match e.kind() {
                    ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => {
                        LogError::Unavailable(message)
                    }
                    ConsumerErrorKind::JetStream(j) if at_server_unavailable(&j) => {
                        LogError::Unavailable(message)
                    }
                    _ => LogError::Backend(message),
                }
            })
    }
}

/// How a read consumer ended.
enum Drained {
    /// Everything it counted (or all that is left) was read.
    Complete,
    /// It stopped answering part-way.
    Stalled,
}

/// Fresh consumers one read may take after stalls before it fails.
const MAX_STALLS: u32 = 4;

/// The log position of a scanned item, readable or not.
fn item_position(item: &Result<Record, LogError>) -> Option<u64> {
    match item {
        Ok(r) => Some(r.position),
        Err(LogError::Corrupt { position, .. }) => Some(*position),
        Err(_) => None,
    }
}

/// What the log holds after a follower's last record ([`Inner::after`]).
enum After {
    /// Nothing, or nothing readable now.
    Nothing,
    /// A record the client can take, at this position.
    Deliverable(u64),
    /// A record no consumer can deliver to this client, as a corrupt one.
    Undeliverable(u64, LogError),
}

/// The state of one `follow` stream.
struct Follow {
    inner: Arc<Inner>,
    filter: String,
    /// Position of the last record (or corrupt record) handed out.
    last: u64,
    messages: Option<pull::Stream>,
    /// Consumer sequence of the last message of the current consumer; a jump
    /// means the client dropped something, so the consumer is recreated.
    consumer_sequence: u64,
    /// Consecutive failures, for the backoff.
    failures: u32,
}

impl Cursor for Follow {
    async fn next(&mut self) -> Result<Record, LogError> {
        loop {
            let messages = match self.messages.as_mut() {
                Some(messages) => messages,
                None => {
                    self.backoff().await;
                    // A record the client cannot take would end the new
                    // consumer as it did the last one: passed over here.
                    if let After::Undeliverable(position, passed) =
                        self.inner.after(&self.filter, self.last).await
                    {
                        self.last = position;
                        return Err(passed);
                    }
                    match self.open().await {
                        Ok(messages) => {
                            self.consumer_sequence = 0;
                            self.messages.insert(messages)
                        }
                        Err(e) => {
                            self.failures += 1;
                            return Err(e);
                        }
                    }
                }
            };
            let next = match tokio::time::timeout(FOLLOW_IDLE_PROBE, messages.next()).await {
                Ok(next) => next,
                Err(_idle) => {
                    match self.inner.after(&self.filter, self.last).await {
                        After::Undeliverable(position, passed) => {
                            self.last = position;
                            self.reset();
                            return Err(passed);
                        }
                        // Quiet with a record after the last one handed out:
                        // the consumer counts it delivered and the client
                        // never had it (lost with a dropped connection, or
                        // a slow consumer's), and nothing would bring it:
                        // a fresh consumer from the last record reads it.
                        After::Deliverable(position) => {
                            tracing::warn!(
                                filter = %self.filter,
                                last = self.last,
                                next = position,
                                "the log's follower went quiet with a record after its last; following again from its last"
                            );
                            self.reset();
                            self.failures += 1;
                        }
                        After::Nothing => {}
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let info = match message.info() {
                        Ok(info) => info,
                        Err(e) => {
                            tracing::warn!(filter = %self.filter, "follow got a message without JetStream info: {e}");
                            self.reset();
                            continue;
                        }
                    };
                    if info.consumer_sequence != self.consumer_sequence + 1 {
                        tracing::debug!(
                            filter = %self.filter,
                            expected = self.consumer_sequence + 1,
                            got = info.consumer_sequence,
                            "follow saw a gap, recreating its consumer"
                        );
                        self.reset();
                        continue;
                    }
                    self.consumer_sequence = info.consumer_sequence;
                    self.failures = 0;
                    let position = info.stream_sequence;
                    if position <= self.last {
                        continue;
                    }
                    self.last = position;
                    return decode(
                        position,
                        message.subject.as_str(),
                        message.headers.as_ref(),
                        message.payload.clone(),
                    );
                }
                Some(Err(e)) => {
                    tracing::debug!(filter = %self.filter, "follow recreates its consumer after: {e}");
                    self.reset();
                    self.failures += 1;
                }
                None => {
                    self.reset();
                    self.failures += 1;
                }
            }
        }
    }
}

impl Follow {
    fn reset(&mut self) {
        self.messages = None;
    }

    async fn backoff(&self) {
        if self.failures == 0 {
            return;
        }
        let exponent = self.failures.min(6);
        let pause = Duration::from_millis(50 * 2u64.pow(exponent)).min(FOLLOW_MAX_BACKOFF);
        tokio::time::sleep(pause).await;
    }

    async fn open(&self) -> Result<pull::Stream, LogError> {
        // Shorter-lived than a read's: a dead follower's consumer should not
        // linger, and a live one is recreated after a restart anyway.
        let consumer = self
            .inner
            .consumer(&self.filter, self.last, FOLLOW_EXPIRES * 3)
            .await?;
        consumer
            .stream()
            .max_messages_per_batch(FOLLOW_BATCH)
            .heartbeat(FOLLOW_HEARTBEAT)
            .expires(FOLLOW_EXPIRES)
            .messages()
            .await
            .map_err(|e| LogError::Unavailable(format!("cannot follow {}: {e}", self.filter)))
    }
}

fn tree_subject(tenant: &TenantId, tree: TreeId) -> String {
    // TenantId is a validated subject token and TreeId displays as a
    // hyphenated lowercase UUID, so this is always one valid subject.
    format!("{SUBJECT_PREFIX}.{tenant}.{tree}")
}

fn filter(tenant: Option<&TenantId>) -> String {
    match tenant {
        Some(tenant) => format!("{SUBJECT_PREFIX}.{tenant}.>"),
        None => format!("{SUBJECT_PREFIX}.>"),
    }
}

/// Tenant and tree of a record's subject. The tree must be spelled exactly as
/// Mandate spells it: another spelling of the same UUID would be a subject
/// that `read_tree` never reads.
pub(crate) fn parse_subject(subject: &str) -> Result<(TenantId, TreeId), String> {
    let mut tokens = subject.split('.');
    let (Some("mandate"), Some("evt"), Some(tenant), Some(tree), None) = (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) else {
        return Err("subject is not mandate.evt.<tenant>.<tree>".to_string());
    };
    let tenant = TenantId::new(tenant).map_err(|e| e.to_string())?;
    let parsed = TreeId::parse(tree).map_err(|e| e.to_string())?;
    if parsed.to_string() != tree {
        return Err(format!("tree {tree:?} is not a lowercase hyphenated UUID"));
    }
    Ok((tenant, parsed))
}

/// The `Nats-Msg-Id` of an append: the tenant and the command id. Tenant ids
/// never contain `:`, so the two parts are always told apart.
fn message_id(tenant: &TenantId, command_id: CommandId) -> String {
    format!("{tenant}:{command_id}")
}

/// The command id in a record's `Nats-Msg-Id`, which must name the tenant of
/// the record's subject. A bare command id is a record written before message
/// ids carried the tenant.
fn parse_message_id(tenant: &TenantId, id: &str) -> Result<CommandId, String> {
    let command = match id.split_once(':') {
        Some((named, command)) if named == tenant.as_str() => command,
        Some((named, _)) => {
            return Err(format!(
                "Nats-Msg-Id {:?} names tenant {:?}, not {tenant}",
                crate::domain::ids::truncate_for_error(id),
                crate::domain::ids::truncate_for_error(named)
            ))
        }
        None => id,
    };
    CommandId::parse(command).map_err(|_| {
        format!(
            "Nats-Msg-Id {:?} is not a command id",
            crate::domain::ids::truncate_for_error(id)
        )
    })
}

fn decode(
    position: u64,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Record, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        position,
        subject_or_key: subject.to_string(),
        reason,
    };
    let (tenant, tree) = parse_subject(subject).map_err(corrupt)?;
    let id = headers
        .and_then(|h| h.get(NATS_MESSAGE_ID))
        .ok_or_else(|| corrupt("no Nats-Msg-Id header".to_string()))?;
    let command_id = parse_message_id(&tenant, id.as_str()).map_err(corrupt)?;
    Ok(Record {
        tenant,
        tree,
        position,
        command_id,
        payload,
    })
}

/// Whether the JetStream API answered "temporarily unavailable" (status
/// 503: no stream or meta leader while a cluster elects one, or JetStream
/// not ready): worth the same request again shortly, never a failure of the
/// request itself.
/// Whether a stream of `replicas` replicas answered through a leader that
/// heard from a majority of them (itself included) within
/// [`LEADER_CONTACT`]; if not, why.
fn majority_heard(cluster: Option<&stream::ClusterInfo>, replicas: usize) -> Result<(), String> {
    if replicas <= 1 {
        return Ok(());
    }
    let Some(cluster) = cluster.filter(|c| c.leader.is_some()) else {
        return Err("no leader answered its info (an election under way?)".into());
    };
    let heard = 1 + cluster
        .replicas
        .iter()
        .filter(|p| !p.offline && p.active <= LEADER_CONTACT)
        .count();
    if heard * 2 > replicas {
        return Ok(());
    }
    Err(format!(
        "its leader {} has heard from {heard} of its {replicas} replicas (itself included) within {LEADER_CONTACT:?}: cut off from the others, it may no longer lead",
        cluster.leader.as_deref().unwrap_or("?")
    ))
}

fn at_server_unavailable(error: &jetstream::Error) -> bool {
    error.code() == 503
}

/// How long an append waits before sending again a message whose earlier
/// attempt the leader holds in process (error 10158).
const IN_PROCESS_PAUSE: Duration = Duration::from_millis(500);

/// Whether a publish was refused because an earlier publish with the same
/// message id is proposed and not yet committed (409, error code 10158,
/// "duplicate message id is in process"): its outcome is undecided.
fn earlier_attempt_in_process(error: &PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(in_process_code)
}

fn in_process_code(error: &jetstream::Error) -> bool {
    error.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
}

/// Whether a publish was refused because of its expected head (see
/// `append`), as opposed to failing.
fn refused_on_head(error: &PublishError) -> bool {
    let server_code = std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    error.kind() == PublishErrorKind::WrongLastSequence
        || server_code == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
        || server_code == Some(ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY)
}

/// The oldest server trusted with replicated streams: before it, a
/// clustered stream checks the expected last subject sequence only before
/// proposing, so appends racing on one tree head can all be stored
/// (measured on 2.9.10 by the cluster tests: up to six of six), forking a
/// tree. 2.10 is also the first with `sync_interval: always`.
pub const MIN_CLUSTER_SERVER: (u64, u64) = (2, 10);

/// Refuses more than one replica on a server older than
/// [`MIN_CLUSTER_SERVER`], naming its version and why.
pub fn check_server_for_replicas(version: &str, replicas: usize) -> Result<(), LogError> {
    if replicas <= 1 {
        return Ok(());
    }
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_CLUSTER_SERVER => Ok(()),
        _ => Err(LogError::Config(format!(
            "{replicas} replicas need nats-server {}.{} or later, this server is {version:?}: older clustered streams can store two appends made on one tree head, so two instances could both write a tree at once",
            MIN_CLUSTER_SERVER.0, MIN_CLUSTER_SERVER.1
        ))),
    }
}

fn publish_error(subject: &str, error: PublishError, size: usize, max: usize) -> LogError {
    let server_code = std::error::Error::source(&error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => LogError::TooLarge { size, max },
        _ if server_code == Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => {
            LogError::TooLarge { size, max }
        }
        PublishErrorKind::StreamNotFound => {
            LogError::Unavailable(format!("no stream answers for {subject}: {error}"))
        }
        PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
            LogError::Unavailable(format!("publishing on {subject}: {error}"))
        }
        _ if std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(at_server_unavailable) =>
        {
            LogError::Unavailable(format!("publishing on {subject}: {error}"))
        }
        _ => LogError::Backend(format!("publishing on {subject}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_that_has_not_heard_from_a_majority_lately_is_not_trusted() {
        let cluster = |leader: Option<&str>, active_ms: [u64; 2], offline: [bool; 2]| {
            let peer = |i: usize| {
                serde_json::json!({
                    "name": format!("n{}", i + 1), "current": true,
                    "active": active_ms[i] * 1_000_000, "offline": offline[i]
                })
            };
            serde_json::from_value::<stream::ClusterInfo>(serde_json::json!({
                "name": "c", "leader": leader, "replicas": [peer(0), peer(1)]
            }))
            .unwrap()
        };
        let heard = |c: &stream::ClusterInfo| majority_heard(Some(c), 3);
        assert_eq!(
            heard(&cluster(Some("n0"), [900, 60_000], [false; 2])),
            Ok(())
        );
        assert_eq!(
            heard(&cluster(Some("n0"), [2_500, 3_000], [false; 2])),
            Ok(())
        );
        // Cut off: neither follower heard from for longer than the bound.
        let cut = heard(&cluster(Some("n0"), [2_600, 9_000], [false; 2])).unwrap_err();
        assert!(cut.contains("heard from 1 of its 3"), "{cut}");
        // An offline follower does not count, however recent.
        assert!(heard(&cluster(Some("n0"), [10, 9_000], [true, false])).is_err());
        // No leader named: a replica's own, possibly lagging, state.
        assert!(heard(&cluster(None, [10, 10], [false; 2])).is_err());
        assert!(majority_heard(None, 3).is_err());
        // One replica: nothing to ask.
        assert_eq!(majority_heard(None, 1), Ok(()));
    }

    #[test]
    fn a_jetstream_answer_of_503_is_unavailable_and_others_are_not() {
        let answer = |code: u64, err_code: u64| -> jetstream::Error {
            serde_json::from_value(serde_json::json!({
                "code": code, "err_code": err_code, "description": "as the server says"
            }))
            .unwrap()
        };
        // During an election: "JetStream system temporarily unavailable".
        assert!(at_server_unavailable(&answer(503, 10008)));
        assert!(!at_server_unavailable(&answer(400, 10071)), "a wrong head");
        assert!(!at_server_unavailable(&answer(404, 10059)), "no stream");
        // An earlier attempt with the message id not yet committed (a
        // leader cut off from its peers): undecided, not a failure.
        assert!(in_process_code(&answer(409, 10158)));
        assert!(!in_process_code(&answer(400, 10071)), "a wrong head");
        assert!(!in_process_code(&answer(503, 10008)));
    }

    #[test]
    fn replicated_streams_need_a_server_that_serializes_appends() {
        for ok in ["2.10.0", "2.15.1", "v2.11.3", "3.0.0-beta"] {
            assert!(check_server_for_replicas(ok, 3).is_ok(), "{ok}");
        }
        for old in ["2.9.10", "2.9.25", "1.4.0", "", "garbage"] {
            let e = check_server_for_replicas(old, 3).unwrap_err().to_string();
            assert!(e.contains("2.10") && e.contains("3 replicas"), "{old}: {e}");
        }
        assert!(check_server_for_replicas("2.9.10", 1).is_ok());
    }

    #[test]
    fn subjects_round_trip() {
        let tenant = TenantId::new("acme").unwrap();
        let tree = TreeId::generate();
        let (t, r) = parse_subject(&tree_subject(&tenant, tree)).unwrap();
        assert_eq!((t, r), (tenant, tree));
    }

    #[test]
    fn foreign_subjects_are_refused_with_a_reason() {
        let tree = TreeId::generate().to_string();
        for bad in [
            "mandate.evt.acme.not-a-uuid".to_string(),
            "mandate.evt.acme".to_string(),
            format!("mandate.evt.acme.{tree}.extra"),
            format!("mandate.evt.acme.{}", tree.to_uppercase()),
            format!("other.evt.acme.{tree}"),
        ] {
            assert!(parse_subject(&bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn message_ids_carry_the_tenant_of_their_subject() {
        let (acme, globex) = (
            TenantId::new("acme").unwrap(),
            TenantId::new("globex").unwrap(),
        );
        let command = CommandId::generate();
        let id = message_id(&acme, command);
        assert_eq!(parse_message_id(&acme, &id), Ok(command));
        // Written before the tenant was part of the id.
        assert_eq!(parse_message_id(&acme, &command.to_string()), Ok(command));
        let err = parse_message_id(&globex, &id).unwrap_err();
        assert!(err.contains("globex") && err.contains("acme"), "{err}");
        assert!(parse_message_id(&acme, "acme:nope").is_err());
    }

    #[test]
    fn messages_without_id_are_corrupt_and_named() {
        let subject = tree_subject(&TenantId::new("acme").unwrap(), TreeId::generate());
        let err = decode(9, &subject, None, Bytes::new()).unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { position: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&subject), "{err}");
    }

    #[test]
    fn config_that_cannot_work_is_refused() {
        let too_big = JetStreamConfig {
            max_message_size: 1024 * 1024,
            ..Default::default()
        };
        let err = validate(&too_big, 1024 * 1024).unwrap_err();
        assert!(err.to_string().contains("max_payload"), "{err}");
        let bad_name = JetStreamConfig {
            stream_name: "a.b".to_string(),
            ..Default::default()
        };
        let err = validate(&bad_name, 1024 * 1024).unwrap_err();
        assert!(err.to_string().contains("\"a.b\""), "{err}");
        assert!(validate(&JetStreamConfig::default(), 1024 * 1024).is_ok());
    }
}
