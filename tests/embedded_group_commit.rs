//! The embedded log's group commit: many appends in flight share a flush,
//! and each is acknowledged only once a flush covers it.
//!
//! - concurrent appends are all acknowledged, at dense and unique positions,
//!   with fewer flushes than appends;
//! - the conflict check and the command-id dedupe stay exact when many
//!   appends race on one tree or one command id;
//! - a process killed while appending loses nothing it acknowledged (the
//!   test runs itself as the child process it kills).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mandate::domain::{CommandId, TenantId, TreeId};
use mandate::log::{EmbeddedLog, EventLog, LogError};
use tokio::sync::Barrier;

const TASKS: usize = 32;
const EACH: usize = 20;

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn payload(i: usize) -> bytes::Bytes {
    format!("[{{\"n\":{i}}}]").into_bytes().into()
}

/// `TASKS` tasks, each appending `EACH` commits to a tree of its own, all
/// started at once. Returns (tree, command id, position) of every append.
async fn append_concurrently(log: &EmbeddedLog) -> Vec<(TreeId, CommandId, u64)> {
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (log, start) = (log.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let tree = TreeId::generate();
            let mut head = 0;
            let mut acked = Vec::new();
            start.wait().await;
            for i in 0..EACH {
                let id = CommandId::generate();
                let appended = log
                    .append(&acme(), tree, head, id, payload(t * EACH + i))
                    .await
                    .expect("an append on a tree of its own is acknowledged");
                assert!(!appended.duplicate);
                head = appended.position;
                acked.push((tree, id, head));
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("the task does not panic"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_acknowledged_at_dense_positions_with_fewer_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).unwrap();
    let flushes_before = log.flushes();
    let acked = append_concurrently(&log).await;
    let flushes = log.flushes() - flushes_before;

    let mut positions: Vec<u64> = acked.iter().map(|(_, _, p)| *p).collect();
    positions.sort_unstable();
    let appends = (TASKS * EACH) as u64;
    assert_eq!(positions, (1..=appends).collect::<Vec<_>>());
    assert!(
        flushes < appends,
        "{appends} concurrent appends took {flushes} flushes: none was shared"
    );
    assert_eq!(log.last_position().await.unwrap(), appends);

    // Reopened, the log holds every acknowledged commit where it was
    // acknowledged.
    drop(log);
    let log = EmbeddedLog::open(dir.path()).unwrap();
    let records = log.read_all(None, 0, usize::MAX).await.unwrap();
    let held: BTreeMap<u64, (TreeId, CommandId)> = records
        .iter()
        .map(|r| (r.position, (r.tree, r.command_id)))
        .collect();
    for (tree, id, position) in &acked {
        assert_eq!(
            held.get(position),
            Some(&(*tree, *id)),
            "position {position}"
        );
    }
    assert_eq!(held.len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_on_one_head_let_exactly_one_win_and_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).unwrap();
    let tree = TreeId::generate();
    let first = log
        .append(&acme(), tree, 0, CommandId::generate(), payload(0))
        .await
        .unwrap()
        .position;
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (log, start) = (log.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            log.append(&acme(), tree, first, CommandId::generate(), payload(i))
                .await
        }));
    }
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(appended) => won.push(appended.position),
            Err(LogError::Conflict { actual, .. }) => lost.push(actual),
            Err(other) => panic!("an append failed otherwise than by conflict: {other}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one append on head {first} wins");
    assert!(
        lost.iter().all(|actual| *actual == Some(won[0])),
        "{lost:?}"
    );
    // A conflict is answered only once its winner can be read.
    let heads = log.read_tree(&acme(), tree, 0).await.unwrap();
    assert_eq!(heads.last().map(|r| r.position), Some(won[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_of_one_command_write_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).unwrap();
    let (tree, id) = (TreeId::generate(), CommandId::generate());
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (log, start) = (log.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            log.append(&acme(), tree, 0, id, payload(0)).await.unwrap()
        }));
    }
    let mut new = 0;
    let mut positions = HashSet::new();
    for task in tasks {
        let appended = task.await.unwrap();
        new += usize::from(!appended.duplicate);
        positions.insert(appended.position);
    }
    assert_eq!(
        new, 1,
        "one append writes the command, the rest are duplicates"
    );
    assert_eq!(positions.len(), 1, "every retry names the one position");
    assert_eq!(log.read_all(None, 0, 100).await.unwrap().len(), 1);
}

/// Set in the child process: the log's directory.
const CHILD_DIR: &str = "MANDATE_GROUP_COMMIT_CHILD_DIR";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_while_appending_loses_nothing_it_acknowledged() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        return append_until_killed(&dir).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_process_killed_while_appending_loses_nothing_it_acknowledged",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the appending child");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = lines
            .next()
            .expect("the child acknowledges appends until it is killed")
            .unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let (position, id) = rest.split_once(' ').unwrap();
            acked.push((position.parse::<u64>().unwrap(), id.to_string()));
        }
    }
    child.kill().expect("kill the child");
    child.wait().unwrap();
    // What it printed after the last line read was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("acked ") {
            let (position, id) = rest.split_once(' ').unwrap();
            acked.push((position.parse::<u64>().unwrap(), id.to_string()));
        }
    }

    let log = EmbeddedLog::open(dir.path()).expect("reopen the killed child's log");
    let records = log.read_all(None, 0, usize::MAX).await.unwrap();
    let held: BTreeMap<u64, String> = records
        .iter()
        .map(|r| (r.position, r.command_id.to_string()))
        .collect();
    for (position, id) in &acked {
        assert_eq!(
            held.get(position),
            Some(id),
            "acknowledged append at {position} is lost after the kill"
        );
    }
}

/// The child: appends from many tasks at once, printing each
/// acknowledgement, until it is killed.
async fn append_until_killed(dir: &str) {
    let log = EmbeddedLog::open(dir).unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let tree = TreeId::generate();
            let mut head = 0;
            for i in 0.. {
                let id = CommandId::generate();
                let appended = log
                    .append(&acme(), tree, head, id, payload(t + i))
                    .await
                    .unwrap();
                head = appended.position;
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {head} {id}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
}
