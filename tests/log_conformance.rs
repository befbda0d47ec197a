//! One conformance suite for every `EventLog` backend.
//!
//! Each scenario is written once, generic over a [`Fixture`], and the
//! `conformance!` macro runs it against the embedded log (sled in a temporary
//! directory) and against JetStream (a real `nats-server` started per test;
//! choose the binary with `NATS_SERVER_BIN`). Tests that only make sense on
//! NATS (server behaviour the log relies on, a restart under a live follow)
//! are at the end.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use mandate::domain::{CommandId, TenantId, TreeId};
use mandate::log::{
    AnyLog, Appended, EmbeddedLog, EventLog, JetStreamConfig, JetStreamLog, LogError, Record,
    DEFAULT_MAX_MESSAGE_SIZE,
};

use common::NatsServer;

/// Longest wait for anything that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(15);

/// A backend under test, with the few things the suite cannot do through the
/// `EventLog` trait.
trait Fixture: Sized {
    type Log: EventLog + Clone + Into<AnyLog>;

    async fn start() -> Self;

    /// A handle on the log. Scenarios that call `restart` or `corrupt_*` drop
    /// their handles first (the embedded log is reopened in between).
    fn log(&self) -> Self::Log;

    /// A crash and a comeback: the sled log is dropped and reopened on the
    /// same path; nats-server is killed and restarted on the same store, and
    /// the same `JetStreamLog` is kept.
    async fn restart(&mut self);

    /// Stores a record of `tree` that cannot be decoded; returns its position.
    async fn corrupt_in_tree(&mut self, tenant: &TenantId, tree: TreeId) -> u64;

    /// Stores a record that belongs to no tree; returns its position.
    async fn corrupt_outside_trees(&mut self) -> u64;
}

struct Embedded {
    dir: tempfile::TempDir,
    log: Option<EmbeddedLog>,
}

impl Embedded {
    /// Writes raw entries next to a closed log, in the documented layout.
    fn write_raw(&mut self, entries: impl FnOnce(u64) -> Vec<(Vec<u8>, Vec<u8>)>) -> u64 {
        drop(self.log.take());
        // sled lets go of its lock a moment after the last handle is dropped.
        let deadline = Instant::now() + PATIENCE;
        let db = loop {
            match sled::open(self.dir.path()) {
                Ok(db) => break db,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("open the sled log directly: {e}"),
            }
        };
        let tree = db.open_tree("mandate-log").unwrap();
        let last = tree
            .scan_prefix(b"r")
            .next_back()
            .map(|e| u64::from_be_bytes(e.unwrap().0[1..9].try_into().unwrap()))
            .unwrap_or(0);
        let position = last + 1;
        for (key, value) in entries(position) {
            tree.insert(key, value).unwrap();
        }
        db.flush().unwrap();
        drop(tree);
        drop(db);
        self.log = Some(EmbeddedLog::open(self.dir.path()).expect("reopen the log"));
        position
    }
}

fn record_key(position: u64) -> Vec<u8> {
    let mut key = vec![b'r'];
    key.extend_from_slice(&position.to_be_bytes());
    key
}

impl Fixture for Embedded {
    type Log = EmbeddedLog;

    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path()).expect("open an empty embedded log");
        Embedded {
            dir,
            log: Some(log),
        }
    }

    fn log(&self) -> EmbeddedLog {
        self.log.clone().expect("log is open")
    }

    async fn restart(&mut self) {
        drop(self.log.take());
        self.log = Some(EmbeddedLog::open(self.dir.path()).expect("reopen the embedded log"));
    }

    async fn corrupt_in_tree(&mut self, tenant: &TenantId, tree: TreeId) -> u64 {
        let tenant = tenant.as_str().as_bytes().to_vec();
        self.write_raw(|position| {
            let mut tree_key = vec![b'h', tenant.len() as u8];
            tree_key.extend_from_slice(&tenant);
            tree_key.extend_from_slice(tree.0.as_bytes());
            tree_key.extend_from_slice(&position.to_be_bytes());
            let mut tenant_key = vec![b'n', tenant.len() as u8];
            tenant_key.extend_from_slice(&tenant);
            tenant_key.extend_from_slice(&position.to_be_bytes());
            vec![
                (record_key(position), b"\x01 not a record".to_vec()),
                (tree_key, Vec::new()),
                (tenant_key, Vec::new()),
            ]
        })
    }

    async fn corrupt_outside_trees(&mut self) -> u64 {
        self.write_raw(|position| vec![(record_key(position), vec![0xff])])
    }
}

struct JetStream {
    server: NatsServer,
    client: async_nats::Client,
    log: JetStreamLog,
}

impl JetStream {
    async fn with_config(config: JetStreamConfig) -> Self {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let log = JetStreamLog::open(client.clone(), config)
            .await
            .expect("open the JetStream log");
        JetStream {
            server,
            client,
            log,
        }
    }

    /// Publishes directly with the client, bypassing the log.
    async fn publish_raw(&self, subject: String, headers: async_nats::HeaderMap) -> u64 {
        let js = async_nats::jetstream::new(self.client.clone());
        js.publish_with_headers(subject, headers, Bytes::from_static(b"[]"))
            .await
            .expect("publish")
            .await
            .expect("publish ack")
            .sequence
    }
}

impl Fixture for JetStream {
    type Log = JetStreamLog;

    async fn start() -> Self {
        Self::with_config(JetStreamConfig::default()).await
    }

    fn log(&self) -> JetStreamLog {
        self.log.clone()
    }

    async fn restart(&mut self) {
        use std::sync::atomic::Ordering;
        let stats = self.client.statistics();
        let connects = stats.connects.load(Ordering::Relaxed);
        tokio::task::block_in_place(|| self.server.restart());
        // Proof that the restart really cut the connection (and that the
        // client is back): the client counts one more connect.
        let deadline = Instant::now() + PATIENCE;
        while stats.connects.load(Ordering::Relaxed) == connects {
            assert!(Instant::now() < deadline, "the client never reconnected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn corrupt_in_tree(&mut self, tenant: &TenantId, tree: TreeId) -> u64 {
        // A message on the tree's own subject, without Nats-Msg-Id.
        let subject = format!("mandate.evt.{tenant}.{tree}");
        self.publish_raw(subject, async_nats::HeaderMap::new())
            .await
    }

    async fn corrupt_outside_trees(&mut self) -> u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", CommandId::generate().to_string().as_str());
        self.publish_raw("mandate.evt.acme.not-a-uuid".to_string(), headers)
            .await
    }
}

// ---------------------------------------------------------------- helpers

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

/// What a scenario wrote, to compare reads against.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    tenant: TenantId,
    tree: TreeId,
    position: u64,
    command_id: CommandId,
    payload: Bytes,
}

impl Written {
    fn matches(&self, record: &Record) -> bool {
        record.tenant == self.tenant
            && record.tree == self.tree
            && record.position == self.position
            && record.command_id == self.command_id
            && record.payload == self.payload
    }
}

/// What a retry of the command written at `position` answers.
fn duplicate_of(position: u64) -> Appended {
    Appended {
        position,
        duplicate: true,
    }
}

fn assert_records(records: &[Record], expected: &[&Written], context: &str) {
    let got: Vec<u64> = records.iter().map(|r| r.position).collect();
    let want: Vec<u64> = expected.iter().map(|w| w.position).collect();
    assert_eq!(got, want, "{context}: positions");
    for (record, written) in records.iter().zip(expected) {
        assert!(
            written.matches(record),
            "{context}: {record:?} differs from {written:?}"
        );
    }
}

/// Appends a fresh commit at the tree's current head and remembers it.
async fn write<L: EventLog>(log: &L, tenant: &TenantId, tree: TreeId, text: &str) -> Written {
    let head = log.tree_head(tenant, tree).await.expect("tree head");
    let command_id = CommandId::generate();
    let payload = Bytes::from(format!("[{text:?}]"));
    let appended = log
        .append(tenant, tree, head, command_id, payload.clone())
        .await
        .expect("append");
    assert!(
        !appended.duplicate,
        "a fresh command id came back duplicate"
    );
    assert!(
        appended.position > head,
        "position {appended:?} not after head {head}"
    );
    Written {
        tenant: tenant.clone(),
        tree,
        position: appended.position,
        command_id,
        payload,
    }
}

/// Retries `op` on retryable errors (a server coming back) until it succeeds.
async fn eventually<T, Fut: Future<Output = Result<T, LogError>>>(
    what: &str,
    mut op: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

type Follow = BoxStream<'static, Result<Record, LogError>>;

/// The next item of a follow, within `PATIENCE`.
async fn next_item(follow: &mut Follow) -> Result<Record, LogError> {
    tokio::time::timeout(PATIENCE, follow.next())
        .await
        .expect("follow produced nothing in time")
        .expect("follow ended")
}

/// The next record of a follow, skipping transient errors (not corrupt ones).
async fn next_record(follow: &mut Follow) -> Record {
    loop {
        match next_item(follow).await {
            Ok(record) => return record,
            Err(e @ LogError::Corrupt { .. }) => panic!("unexpected {e}"),
            Err(e) => eprintln!("follow reported (and recovers from): {e}"),
        }
    }
}

async fn assert_quiet(follow: &mut Follow) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), follow.next()).await {
        panic!("follow produced an extra item: {item:?}");
    }
}

// ---------------------------------------------------------------- scenarios

async fn positions_are_global_and_ordered<F: Fixture>(f: &mut F) {
    let log = f.log();
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    let (t1, t2, t3) = (TreeId::generate(), TreeId::generate(), TreeId::generate());

    assert_eq!(log.last_position().await.unwrap(), 0);
    assert_eq!(log.tree_head(&acme, t1).await.unwrap(), 0);
    assert!(log.read_tree(&acme, t1, 0).await.unwrap().is_empty());
    assert!(log.read_all(None, 0, 100).await.unwrap().is_empty());

    let a = write(&log, &acme, t1, "a").await;
    let b = write(&log, &acme, t2, "b").await;
    let c = write(&log, &acme, t1, "c").await;
    let d = write(&log, &beta, t3, "d").await;
    let positions = [a.position, b.position, c.position, d.position];
    assert_eq!(
        positions,
        [1, 2, 3, 4],
        "positions are one global counter from 1"
    );

    assert_eq!(log.tree_head(&acme, t1).await.unwrap(), c.position);
    assert_eq!(log.tree_head(&acme, t2).await.unwrap(), b.position);
    assert_eq!(log.tree_head(&beta, t3).await.unwrap(), d.position);
    // Nothing crosses a tenant: the same tree id under another tenant is empty.
    assert_eq!(log.tree_head(&acme, t3).await.unwrap(), 0);
    assert!(log.read_tree(&beta, t1, 0).await.unwrap().is_empty());
    assert_eq!(log.last_position().await.unwrap(), d.position);
    assert_records(
        &log.read_tree(&acme, t1, 0).await.unwrap(),
        &[&a, &c],
        "tree t1",
    );

    // Many trees appended concurrently: every append gets its own position.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (log, acme) = (log.clone(), acme.clone());
            tokio::spawn(
                async move { write(&log, &acme, TreeId::generate(), &format!("p{i}")).await },
            )
        })
        .collect();
    let mut written = Vec::new();
    for task in tasks {
        written.push(task.await.unwrap());
    }
    written.sort_by_key(|w| w.position);
    let expected: Vec<&Written> = written.iter().collect();
    let records = log.read_all(None, d.position, 1000).await.unwrap();
    assert_records(&records, &expected, "concurrent appends");
    assert_eq!(written.last().unwrap().position, d.position + 64);
    assert_eq!(log.last_position().await.unwrap(), d.position + 64);
}

async fn reads_start_after_a_position<F: Fixture>(f: &mut F) {
    let log = f.log();
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    let trees = [TreeId::generate(), TreeId::generate(), TreeId::generate()];
    let mut model = Vec::new();
    for i in 0..12 {
        let who = if i % 3 == 1 { &beta } else { &acme };
        model.push(write(&log, who, trees[i % 3], &format!("r{i}")).await);
    }

    for (i, tree) in trees.iter().enumerate() {
        let who = if i == 1 { &beta } else { &acme };
        let mine: Vec<&Written> = model.iter().filter(|w| w.tree == *tree).collect();
        let mut starts = vec![0];
        starts.extend(mine.iter().map(|w| w.position));
        for after in starts {
            let expected: Vec<&Written> = mine
                .iter()
                .copied()
                .filter(|w| w.position > after)
                .collect();
            let records = log.read_tree(who, *tree, after).await.unwrap();
            assert_records(&records, &expected, &format!("tree {i} after {after}"));
        }
    }

    let all: Vec<&Written> = model.iter().collect();
    let acme_all: Vec<&Written> = model.iter().filter(|w| w.tenant == acme).collect();
    let beta_all: Vec<&Written> = model.iter().filter(|w| w.tenant == beta).collect();
    // (what, tenant, after, limit, expected)
    let pages = [
        ("all", None, 0, usize::MAX, &all[..]),
        (
            "all, page after the 4th",
            None,
            model[3].position,
            4,
            &all[4..8],
        ),
        ("tenant acme", Some(&acme), 0, usize::MAX, &acme_all[..]),
        (
            "tenant acme, page",
            Some(&acme),
            acme_all[2].position,
            2,
            &acme_all[3..5],
        ),
        ("tenant beta", Some(&beta), 0, usize::MAX, &beta_all[..]),
    ];
    for (what, tenant, after, limit, expected) in pages {
        let records = log.read_all(tenant, after, limit).await.unwrap();
        assert_records(&records, expected, what);
    }
    // "acm" is a prefix of "acme": the filter must not leak across tenants.
    assert!(log
        .read_all(Some(&tenant("acm")), 0, 100)
        .await
        .unwrap()
        .is_empty());
    let last = model.last().unwrap().position;
    assert!(log.read_all(None, last, 10).await.unwrap().is_empty());
    assert!(log.read_all(None, 0, 0).await.unwrap().is_empty());
}

async fn racing_appends_to_one_tree_are_serialized<F: Fixture>(f: &mut F) {
    const TASKS: usize = 16;
    const WINS: usize = 4;
    let log = f.log();
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (log, acme, barrier) = (log.clone(), acme.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut wins = Vec::new();
                let mut conflicts = 0usize;
                while wins.len() < WINS {
                    let head = log.tree_head(&acme, tree).await.unwrap();
                    // Give the others a chance to get in between.
                    tokio::task::yield_now().await;
                    let command_id = CommandId::generate();
                    let payload = Bytes::from(format!("[\"task {task} win {}\"]", wins.len()));
                    match log
                        .append(&acme, tree, head, command_id, payload.clone())
                        .await
                    {
                        Ok(Appended {
                            position,
                            duplicate,
                        }) => {
                            assert!(!duplicate, "task {task}: fresh command came back duplicate");
                            wins.push((position, head, command_id, payload));
                        }
                        Err(LogError::Conflict {
                            tenant: t,
                            tree: r,
                            expected,
                            actual,
                        }) => {
                            assert_eq!((t, r, expected), (acme.clone(), tree, head));
                            if let Some(actual) = actual {
                                assert_ne!(actual, head, "conflict reported the expected head");
                            }
                            conflicts += 1;
                        }
                        Err(e) => panic!("task {task}: unexpected error {e}"),
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();

    let mut acknowledged = HashMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (wins, lost) = task.await.unwrap();
        conflicts += lost;
        for (position, expected, command_id, payload) in wins {
            let previous = acknowledged.insert(position, (expected, command_id, payload));
            assert!(previous.is_none(), "position {position} acknowledged twice");
        }
    }
    assert!(
        conflicts > 0,
        "{TASKS} racers never conflicted: the race was not exercised"
    );

    let records = log.read_tree(&acme, tree, 0).await.unwrap();
    assert_eq!(records.len(), TASKS * WINS, "records on the tree");
    let mut previous = 0;
    for record in &records {
        let (expected, command_id, payload) = acknowledged
            .remove(&record.position)
            .unwrap_or_else(|| panic!("record {} was never acknowledged", record.position));
        // Each winner appended exactly on top of the record before it.
        assert_eq!(
            expected, previous,
            "record {} was appended on a stale head",
            record.position
        );
        assert_eq!((record.command_id, &record.payload), (command_id, &payload));
        previous = record.position;
    }
    assert!(
        acknowledged.is_empty(),
        "acknowledged but not stored: {acknowledged:?}"
    );
    assert_eq!(log.tree_head(&acme, tree).await.unwrap(), previous);
}

async fn a_retried_command_is_written_once<F: Fixture>(f: &mut F) {
    let log = f.log();
    let acme = tenant("acme");
    let (tree, other) = (TreeId::generate(), TreeId::generate());
    let (c1, c2) = (CommandId::generate(), CommandId::generate());
    let p = |s: &str| Bytes::from(s.to_string());

    let first = log.append(&acme, tree, 0, c1, p("[1]")).await.unwrap();
    assert!(!first.duplicate);
    // Same command, same (now stale) expected head: the original comes back.
    let again = log.append(&acme, tree, 0, c1, p("[1]")).await.unwrap();
    assert_eq!(again, duplicate_of(first.position));

    let second = log
        .append(&acme, tree, first.position, c2, p("[2]"))
        .await
        .unwrap();
    assert!(!second.duplicate && second.position > first.position);
    // Retries with heads that are stale by one and by two, and with the
    // current head: each is the original, nothing new is written.
    for (head, command, payload, original) in [
        (first.position, c2, "[2]", second.position),
        (0, c1, "[1]", first.position),
        (second.position, c1, "[1]", first.position),
    ] {
        let again = log
            .append(&acme, tree, head, command, p(payload))
            .await
            .unwrap();
        assert_eq!(
            again,
            duplicate_of(original),
            "a retry of {command} on head {head}"
        );
    }

    // Concurrent retries of one command: exactly one write between them.
    let c3 = CommandId::generate();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (log, acme) = (log.clone(), acme.clone());
            let head = second.position;
            tokio::spawn(async move { log.append(&acme, tree, head, c3, Bytes::from("[3]")).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(
            task.await
                .unwrap()
                .expect("a retry of one command never conflicts"),
        );
    }
    let third = outcomes[0].position;
    assert!(outcomes.iter().all(|a| a.position == third), "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|a| !a.duplicate).count(),
        1,
        "{outcomes:?}"
    );

    let records = log.read_tree(&acme, tree, 0).await.unwrap();
    let ids: Vec<CommandId> = records.iter().map(|r| r.command_id).collect();
    assert_eq!(ids, [c1, c2, c3]);
    assert_eq!(log.tree_head(&acme, tree).await.unwrap(), third);
    assert!(log.read_tree(&acme, other, 0).await.unwrap().is_empty());
    assert_eq!(log.last_position().await.unwrap(), third);
}

async fn follow_sees_the_backlog_then_live_appends<F: Fixture>(f: &mut F) {
    let log = f.log();
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    let (t1, t2) = (TreeId::generate(), TreeId::generate());
    let mut model = Vec::new();
    for i in 0..4 {
        let (who, tree) = if i % 2 == 0 { (&acme, t1) } else { (&beta, t2) };
        model.push(write(&log, who, tree, &format!("backlog {i}")).await);
    }

    let mut all = log.follow(None, 0).await.unwrap();
    let mut acme_later = log.follow(Some(&acme), model[0].position).await.unwrap();
    for written in &model {
        let record = next_record(&mut all).await;
        assert!(
            written.matches(&record),
            "backlog: {record:?} vs {written:?}"
        );
    }
    assert_quiet(&mut all).await;

    // Live appends race with the reading.
    let writer = {
        let (log, acme, beta) = (log.clone(), acme.clone(), beta.clone());
        tokio::spawn(async move {
            let mut live = Vec::new();
            for i in 0..6 {
                let (who, tree) = if i % 3 == 0 { (&beta, t2) } else { (&acme, t1) };
                live.push(write(&log, who, tree, &format!("live {i}")).await);
            }
            live
        })
    };
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next_record(&mut all).await);
    }
    let live = writer.await.unwrap();
    for (record, written) in seen.iter().zip(&live) {
        assert!(written.matches(record), "live: {record:?} vs {written:?}");
    }
    assert_quiet(&mut all).await;
    model.extend(live);

    // The tenant follow started after the first record: only acme's after it.
    let expected: Vec<&Written> = model
        .iter()
        .filter(|w| w.tenant == acme && w.position > model[0].position)
        .collect();
    for written in expected {
        let record = next_record(&mut acme_later).await;
        assert!(
            written.matches(&record),
            "acme follow: {record:?} vs {written:?}"
        );
    }
    assert_quiet(&mut acme_later).await;

    // A follow from the end sees only what comes next.
    let last = log.last_position().await.unwrap();
    let mut tail = log.follow(None, last).await.unwrap();
    let next = write(&log, &acme, t1, "after the end").await;
    assert!(next.matches(&next_record(&mut tail).await));
}

async fn acknowledged_appends_survive_a_restart<F: Fixture>(f: &mut F) {
    let acme = tenant("acme");
    let (t1, t2) = (TreeId::generate(), TreeId::generate());
    let mut model = Vec::new();
    {
        let log = f.log();
        for i in 0..6 {
            model.push(
                write(
                    &log,
                    &acme,
                    if i % 2 == 0 { t1 } else { t2 },
                    &format!("{i}"),
                )
                .await,
            );
        }
    }

    f.restart().await;

    let log = f.log();
    let all = eventually("read after restart", || log.read_all(None, 0, 100)).await;
    let expected: Vec<&Written> = model.iter().collect();
    assert_records(&all, &expected, "after restart");
    let last = model.last().unwrap();
    assert_eq!(log.last_position().await.unwrap(), last.position);
    assert_eq!(log.tree_head(&acme, t2).await.unwrap(), last.position);
    let t1_head = model[4].position;
    assert_eq!(log.tree_head(&acme, t1).await.unwrap(), t1_head);

    // A retry of a command written before the restart is still a duplicate.
    let first = &model[0];
    let retry = log
        .append(&acme, t1, 0, first.command_id, first.payload.clone())
        .await
        .unwrap();
    assert_eq!(retry, duplicate_of(first.position));

    // And the log keeps working: the next append lands right after.
    let command_id = CommandId::generate();
    let appended = eventually("append after restart", || {
        log.append(&acme, t1, t1_head, command_id, Bytes::from("[\"after\"]"))
    })
    .await;
    assert_eq!(appended.position, last.position + 1);
    assert_eq!(log.tree_head(&acme, t1).await.unwrap(), appended.position);
}

async fn corrupt_records_are_reported_not_skipped<F: Fixture>(f: &mut F) {
    let acme = tenant("acme");
    let (tree, other) = (TreeId::generate(), TreeId::generate());
    let good1 = write(&f.log(), &acme, tree, "good 1").await;
    let bad1 = f.corrupt_in_tree(&acme, tree).await;
    assert_eq!(f.log().tree_head(&acme, tree).await.unwrap(), bad1);
    let good2 = write(&f.log(), &acme, tree, "good 2").await;
    let bad2 = f.corrupt_outside_trees().await;
    let good3 = write(&f.log(), &acme, other, "good 3").await;
    assert!(good1.position < bad1 && bad1 < good2.position);
    assert!(good2.position < bad2 && bad2 < good3.position);
    let log = f.log();

    let corrupt_at =
        |result: Result<Vec<Record>, LogError>, position: u64, context: &str| match result {
            Err(e @ LogError::Corrupt { position: p, .. }) if p == position => {
                assert!(e.to_string().contains(&position.to_string()), "{e}");
            }
            other => panic!("{context}: expected corrupt record {position}, got {other:?}"),
        };

    // A tree with a corrupt record fails as a whole, naming it...
    corrupt_at(log.read_tree(&acme, tree, 0).await, bad1, "read_tree");
    // ...and reading past it returns the good records after it.
    assert_records(
        &log.read_tree(&acme, tree, bad1).await.unwrap(),
        &[&good2],
        "past bad1",
    );
    // Read item by item, the tree's records stand in order, the corrupt one
    // named in its place.
    let items = log.read_tree_items(&acme, tree, 0).await.unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(
        items[0].as_ref().is_ok_and(|r| good1.matches(r)),
        "{items:?}"
    );
    assert!(
        matches!(items[1], Err(LogError::Corrupt { position, .. }) if position == bad1),
        "{items:?}"
    );
    assert!(
        items[2].as_ref().is_ok_and(|r| good2.matches(r)),
        "{items:?}"
    );
    assert_records(
        &log.read_tree(&acme, other, 0).await.unwrap(),
        &[&good3],
        "other tree",
    );

    // read_all stops in front of each, then names it, then goes on: from
    // each start, the good record before the next bad one, then the bad one.
    for (after, good, bad, what) in [
        (0, &good1, Some(bad1), "bad1"),
        (bad1, &good2, Some(bad2), "bad2"),
        (bad2, &good3, None, "the end"),
    ] {
        assert_records(
            &log.read_all(None, after, 100).await.unwrap(),
            &[good],
            &format!("until {what}"),
        );
        if let Some(bad) = bad {
            corrupt_at(
                log.read_all(None, good.position, 100).await,
                bad,
                &format!("read_all at {what}"),
            );
        }
    }
    corrupt_at(
        log.read_all(Some(&acme), good1.position, 100).await,
        bad1,
        "tenant read",
    );

    // follow yields each as an error item in its place and goes on.
    let mut follow = log.follow(None, 0).await.unwrap();
    assert!(good1.matches(&next_item(&mut follow).await.unwrap()));
    assert!(
        matches!(next_item(&mut follow).await, Err(LogError::Corrupt { position, .. }) if position == bad1)
    );
    assert!(good2.matches(&next_item(&mut follow).await.unwrap()));
    assert!(
        matches!(next_item(&mut follow).await, Err(LogError::Corrupt { position, .. }) if position == bad2)
    );
    assert!(good3.matches(&next_item(&mut follow).await.unwrap()));
    assert_quiet(&mut follow).await;

    assert_eq!(log.tree_head(&acme, tree).await.unwrap(), good2.position);
    assert_eq!(log.last_position().await.unwrap(), good3.position);
}

async fn oversized_payloads_are_refused<F: Fixture>(f: &mut F) {
    let log = f.log();
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let max = DEFAULT_MAX_MESSAGE_SIZE;

    let err = log
        .append(
            &acme,
            tree,
            0,
            CommandId::generate(),
            Bytes::from(vec![b'x'; max + 1]),
        )
        .await
        .unwrap_err();
    assert_eq!(err, LogError::TooLarge { size: max + 1, max });
    assert!(err.to_string().contains(&(max + 1).to_string()), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(log.last_position().await.unwrap(), 0, "nothing written");

    let exactly = Bytes::from(vec![b'y'; max]);
    let appended = log
        .append(&acme, tree, 0, CommandId::generate(), exactly.clone())
        .await
        .expect("a payload of exactly the maximum fits");
    let records = log.read_tree(&acme, tree, 0).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].position, &records[0].payload),
        (appended.position, &exactly)
    );
}

async fn conflicts_name_tenant_tree_and_heads<F: Fixture>(f: &mut F) {
    let log = f.log();
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let first = write(&log, &acme, tree, "first").await;

    for expected in [0, first.position + 100] {
        let err = log
            .append(
                &acme,
                tree,
                expected,
                CommandId::generate(),
                Bytes::from("[]"),
            )
            .await
            .unwrap_err();
        let LogError::Conflict {
            tenant: t,
            tree: r,
            expected: e,
            actual,
        } = &err
        else {
            panic!("expected a conflict, got {err:?}");
        };
        assert_eq!((t, *r, *e), (&acme, tree, expected));
        // Both backends read the actual head (JetStream from the stream,
        // never from the refusal's text).
        assert_eq!(*actual, Some(first.position), "{err:?}");
        let message = err.to_string();
        for part in [
            "acme",
            &tree.to_string(),
            &format!("expected head {expected}"),
        ] {
            assert!(message.contains(part), "{message:?} does not name {part}");
        }
        assert!(err.is_retryable());
    }
    // The refused appends wrote nothing.
    assert_eq!(log.read_tree(&acme, tree, 0).await.unwrap().len(), 1);
    assert_eq!(log.last_position().await.unwrap(), first.position);
}

async fn any_log_delegates<F: Fixture>(f: &mut F) {
    let log: AnyLog = f.log().into();
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let a = write(&log, &acme, tree, "a").await;
    let b = write(&log, &acme, tree, "b").await;
    assert_records(
        &log.read_tree(&acme, tree, 0).await.unwrap(),
        &[&a, &b],
        "any tree",
    );
    assert_records(
        &log.read_all(Some(&acme), a.position, 10).await.unwrap(),
        &[&b],
        "any all",
    );
    assert_eq!(log.last_position().await.unwrap(), b.position);
    let mut follow = log.follow(None, a.position).await.unwrap();
    assert!(b.matches(&next_record(&mut follow).await));
}

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut fixture = <super::Embedded as super::Fixture>::start().await;
                    super::$scenario(&mut fixture).await;
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut fixture = <super::JetStream as super::Fixture>::start().await;
                    super::$scenario(&mut fixture).await;
                }
            )*
        }
    };
}

conformance!(
    positions_are_global_and_ordered,
    reads_start_after_a_position,
    racing_appends_to_one_tree_are_serialized,
    a_retried_command_is_written_once,
    follow_sees_the_backlog_then_live_appends,
    acknowledged_appends_survive_a_restart,
    corrupt_records_are_reported_not_skipped,
    oversized_payloads_are_refused,
    conflicts_name_tenant_tree_and_heads,
    any_log_delegates,
);

// ---------------------------------------------------------------- NATS only

/// Pins down the server behaviour the JetStream log is built on, and prints
/// what this server does where versions differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_semantics_the_log_relies_on() {
    use async_nats::jetstream::context::PublishErrorKind;
    use async_nats::jetstream::message::PublishMessage;

    let fixture = <JetStream as Fixture>::start().await;
    let js = async_nats::jetstream::new(fixture.client.clone());
    let subject = format!("mandate.evt.acme.{}", TreeId::generate());
    let publish = |expected: u64, id: &str| {
        let (js, subject) = (js.clone(), subject.clone());
        let message = PublishMessage::build()
            .payload(Bytes::from_static(b"[]"))
            .expected_last_subject_sequence(expected)
            .message_id(id);
        async move { js.send_publish(subject, message).await.unwrap().await }
    };

    let first = publish(0, "m1")
        .await
        .expect("expected 0 on an empty subject");
    assert!(!first.duplicate);
    // Expected 0 means "no message on this subject yet", not "no check".
    let second = publish(0, "m2")
        .await
        .expect_err("a second create must be refused");
    assert_eq!(second.kind(), PublishErrorKind::WrongLastSequence);
    assert!(
        second
            .to_string()
            .contains(&format!("wrong last sequence: {}", first.sequence)),
        "{second}"
    );

    let stale_retry = publish(0, "m1").await;
    let order = match &stale_retry {
        Ok(ack) if ack.duplicate && ack.sequence == first.sequence => {
            "deduplicates before checking the expected head"
        }
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            "checks the expected head before deduplicating"
        }
        other => panic!("unexpected answer to a stale retry: {other:?}"),
    };
    let version = fixture.client.server_info().version;
    eprintln!("nats-server {version}: {order}");
}

/// The dedupe window has passed, so only the log's own check catches a retry
/// whose expected head went stale (on every server version). The test shows
/// that path: it waits until the server has forgotten the command id, and
/// shows that the server itself refuses the retry on the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stale_retry_after_the_duplicate_window_is_a_duplicate() {
    use async_nats::jetstream::context::PublishErrorKind;
    use async_nats::jetstream::message::PublishMessage;

    let fixture = JetStream::with_config(JetStreamConfig {
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let log = fixture.log();
    let js = async_nats::jetstream::new(fixture.client.clone());
    let publish = |subject: String, expected: Option<u64>, id: String| {
        let js = js.clone();
        let mut message = PublishMessage::build()
            .payload(Bytes::from_static(b"[]"))
            .message_id(id);
        if let Some(expected) = expected {
            message = message.expected_last_subject_sequence(expected);
        }
        async move { js.send_publish(subject, message).await.unwrap().await }
    };
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let c1 = CommandId::generate();
    let first = log
        .append(&acme, tree, 0, c1, Bytes::from("[1]"))
        .await
        .unwrap();
    // A probe id recorded after c1: once the server has forgotten it, it
    // has forgotten c1 too.
    let probe_subject = format!("mandate.evt.acme.{}", TreeId::generate());
    let probe_id = CommandId::generate().to_string();
    publish(probe_subject.clone(), None, probe_id.clone())
        .await
        .unwrap();
    let second = write(&log, &acme, tree, "2").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ack = publish(probe_subject.clone(), None, probe_id.clone())
            .await
            .unwrap();
        if !ack.duplicate {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server still deduplicates after 30 s of a 1 s window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server no longer catches the stale retry: it refuses it on the
    // head (and stores nothing).
    let raw = publish(
        format!("mandate.evt.{acme}.{tree}"),
        Some(0),
        c1.to_string(),
    )
    .await;
    assert!(
        matches!(&raw, Err(e) if e.kind() == PublishErrorKind::WrongLastSequence),
        "the server should refuse the stale retry on its head, not answer {raw:?}"
    );
    eprintln!(
        "nats-server {}: past the window the server refuses the stale retry on the head; the log's scan of the tree finds the command id",
        fixture.client.server_info().version
    );

    let retry = log
        .append(&acme, tree, 0, c1, Bytes::from("[1]"))
        .await
        .unwrap();
    assert_eq!(retry, duplicate_of(first.position));
    // A different command with the stale head is still a conflict.
    let err = log
        .append(&acme, tree, 0, CommandId::generate(), Bytes::from("[3]"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::Conflict { actual: Some(a), .. } if a == second.position),
        "{err:?}"
    );
    assert_eq!(log.read_tree(&acme, tree, 0).await.unwrap().len(), 2);
}

/// A follow started before a server restart delivers what is appended after
/// it, with no gap and no repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_follow_continues_across_a_server_restart() {
    let mut fixture = <JetStream as Fixture>::start().await;
    let log = fixture.log();
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let mut model = Vec::new();
    for i in 0..3 {
        model.push(write(&log, &acme, tree, &format!("before {i}")).await);
    }
    let mut follow = log.follow(None, 0).await.unwrap();
    let mut idle = log.follow(Some(&acme), model[2].position).await.unwrap();
    for written in &model {
        assert!(written.matches(&next_record(&mut follow).await));
    }

    fixture.restart().await;

    let mut head = model[2].position;
    for i in 0..3 {
        let command_id = CommandId::generate();
        let payload = Bytes::from(format!("[\"after {i}\"]"));
        let appended = eventually("append after restart", || {
            log.append(&acme, tree, head, command_id, payload.clone())
        })
        .await;
        head = appended.position;
        model.push(Written {
            tenant: acme.clone(),
            tree,
            position: appended.position,
            command_id,
            payload,
        });
    }
    for written in &model[3..] {
        let record = next_record(&mut follow).await;
        assert!(written.matches(&record), "{record:?} vs {written:?}");
        // The follow that had nothing to deliver before the restart, too.
        let record = next_record(&mut idle).await;
        assert!(
            written.matches(&record),
            "idle follow: {record:?} vs {written:?}"
        );
    }
    assert_quiet(&mut follow).await;
    assert_quiet(&mut idle).await;
}

/// Opening checks what the server stored and shares an existing stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_open_checks_the_stored_stream() {
    use async_nats::jetstream::stream::{Config, StorageType};

    let fixture = <JetStream as Fixture>::start().await;
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let written = write(&fixture.log(), &acme, tree, "shared").await;
    // A second instance on the same stream sees the same log.
    let second = JetStreamLog::open(fixture.client.clone(), JetStreamConfig::default())
        .await
        .expect("open an existing stream");
    assert_records(
        &second.read_tree(&acme, tree, 0).await.unwrap(),
        &[&written],
        "second",
    );

    // A stream someone made in memory would lose acknowledged events.
    let js = async_nats::jetstream::new(fixture.client.clone());
    let volatile = Config {
        name: "VOLATILE".to_string(),
        subjects: vec!["mandate.evt.>".to_string()],
        storage: StorageType::Memory,
        ..Default::default()
    };
    js.create_stream(volatile.clone())
        .await
        .expect_err("subjects overlap with the log's stream");
    js.delete_stream(second.stream_name()).await.unwrap();
    js.create_stream(volatile).await.unwrap();
    let config = JetStreamConfig {
        stream_name: "VOLATILE".to_string(),
        ..Default::default()
    };
    let err = match JetStreamLog::open(fixture.client.clone(), config).await {
        Ok(_) => panic!("a memory stream was accepted"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("VOLATILE") && err.to_string().contains("Memory"),
        "{err}"
    );

    // Settings no server could hold are refused before anything is sent.
    let config = JetStreamConfig {
        max_message_size: 64 * 1024 * 1024,
        ..Default::default()
    };
    let err = match JetStreamLog::open(fixture.client.clone(), config).await {
        Ok(_) => panic!("a max_message_size above the server's max_payload was accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("max_payload"), "{err}");
}

/// An append whose ack never comes fails as retryable; retried with the same
/// command id once the server is back, it is stored exactly once, whether or
/// not the first attempt reached the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_an_unacknowledged_append_is_retried_with_the_same_id() {
    let mut fixture = JetStream::with_config(JetStreamConfig {
        ack_timeout: Duration::from_millis(300),
        publish_attempts: 2,
        ..Default::default()
    })
    .await;
    let log = fixture.log();
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let first = write(&log, &acme, tree, "first").await;

    tokio::task::block_in_place(|| fixture.server.stop());
    let command_id = CommandId::generate();
    let payload = Bytes::from("[\"while down\"]");
    let err = log
        .append(&acme, tree, first.position, command_id, payload.clone())
        .await
        .expect_err("no server, no ack");
    assert!(err.is_retryable(), "{err:?}");

    tokio::task::block_in_place(|| fixture.server.restart());
    let appended = eventually("retry after restart", || {
        log.append(&acme, tree, first.position, command_id, payload.clone())
    })
    .await;
    let records = log.read_tree(&acme, tree, 0).await.unwrap();
    let ids: Vec<CommandId> = records.iter().map(|r| r.command_id).collect();
    assert_eq!(ids, [first.command_id, command_id], "written exactly once");
    assert_eq!(records[1].position, appended.position);
}

/// A record the server counted as delivered to a follow's consumer, but
/// which its client never got (lost with its connection in delivery, as a
/// slow consumer's are), is handed out all the same: a follow quiet with a
/// record after its last one follows again from there. Before, it waited
/// for the next append, and an engine's projection stayed behind the log
/// for as long as nothing more was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_gets_a_record_its_connection_lost_in_delivery() {
    let server = NatsServer::start();
    let relay = common::relay::Relay::start(server.port()).await;
    let open = |url: String| async move {
        JetStreamLog::open(
            async_nats::connect(url).await.expect("connect"),
            JetStreamConfig::default(),
        )
        .await
        .expect("open the log")
    };
    let writer = open(server.url()).await;
    let reader = open(relay.url()).await;
    let acme = tenant("acme");
    let tree = TreeId::generate();
    let first = write(&writer, &acme, tree, "first").await;
    let mut follow = reader.follow(None, 0).await.expect("follow");
    assert_eq!(next_record(&mut follow).await.position, first.position);

    relay.lose_toward_client(b"lost in delivery");
    let second = write(&writer, &acme, tree, "lost in delivery").await;
    let record = next_record(&mut follow).await;
    assert_eq!(record.position, second.position, "{record:?}");
    assert_eq!(record.payload, second.payload);
    assert_quiet(&mut follow).await;
}
