//! `verify` re-reads a tree's records from the log, recomputes the hash chain
//! and compares it with the projection's head, naming the first position that
//! does not match: on the embedded log (records edited and deleted through
//! sled) and on JetStream (messages deleted with the stream's API, forged
//! ones published beside the engine).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::*;
use common::wire::open_engine;
use common::NatsServer;

use mandate::domain::{Actor, ChainFault, Command, CommandId, MandateId, TreeId};
use mandate::engine::{Engine, EngineConfig};

use mandate::protocol::VerifyReply;

/// A command of `actor` in acme, as it arrives from outside the engine.
fn external(actor: Actor, command: Command) -> mandate::domain::ExternalCommand {
    ext(envelope("acme", actor, command))
}

/// A tree of four commits: issue, delegate, pause and resume the child.
/// Returns the tree and the position of each commit, in order.
async fn four_commits(engine: &Engine) -> (TreeId, Vec<u64>) {
    let issued = engine
        .execute(external(
            principal("cfo"),
            Command::Issue(with_depth(
                2,
                root_issue("cfo", "lead", None, &["reports:read on reports/**"]),
            )),
        ))
        .await
        .expect("issue");
    let root = issued.mandate.unwrap();
    let delegated = engine
        .execute(external(
            agent("lead"),
            Command::Delegate(delegation(
                root,
                "helper",
                &["reports:read on reports/q3/**"],
            )),
        ))
        .await
        .expect("delegate");
    let child: MandateId = delegated.mandate.unwrap();
    let paused = engine
        .execute(external(agent("lead"), Command::Pause(change(child))))
        .await
        .expect("pause");
    let resumed = engine
        .execute(external(agent("lead"), Command::Resume(change(child))))
        .await
        .expect("resume");
    let positions = [&issued, &delegated, &paused, &resumed]
        .iter()
        .map(|r| r.commits[0].position)
        .collect();
    (issued.commits[0].tree, positions)
}

async fn verify(engine: &Engine, tree: TreeId) -> VerifyReply {
    engine
        .verify(&acme(), &of_tree(tree))
        .await
        .expect("verify answers")
}

// ---------------------------------------------------------------- embedded

/// Opens the embedded log's sled database directly (the engine is closed),
/// waiting for the lock a dropped engine lets go of a moment later.
fn open_log_db(dir: &Path) -> sled::Db {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match sled::open(dir.join("log")) {
            Ok(db) => return db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("open the embedded log directly: {e}"),
        }
    }
}

fn record_key(position: u64) -> Vec<u8> {
    let mut key = vec![b'r'];
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// Rewrites the payload of the record at `position` with `edit`.
fn edit_record(dir: &Path, position: u64, edit: impl FnOnce(&mut serde_json::Value)) {
    let db = open_log_db(dir);
    let log = db.open_tree("mandate-log").unwrap();
    let value = log
        .get(record_key(position))
        .unwrap()
        .expect("the record exists");
    // Version, tenant length, tenant, tree (16), command id (16), payload.
    let start = 2 + usize::from(value[1]) + 32;
    let mut payload: serde_json::Value = serde_json::from_slice(&value[start..]).unwrap();
    edit(&mut payload);
    let mut edited = value[..start].to_vec();
    edited.extend_from_slice(&serde_json::to_vec(&payload).unwrap());
    log.insert(record_key(position), edited).unwrap();
    db.flush().unwrap();
}

/// Deletes the record at `position` of `tree` with its index entries.
fn delete_record(dir: &Path, tree: TreeId, position: u64) {
    let db = open_log_db(dir);
    let log = db.open_tree("mandate-log").unwrap();
    let tenant = acme();
    let name = tenant.as_str().as_bytes();
    let mut tree_key = vec![b'h', name.len() as u8];
    tree_key.extend_from_slice(name);
    tree_key.extend_from_slice(tree.0.as_bytes());
    tree_key.extend_from_slice(&position.to_be_bytes());
    let mut tenant_key = vec![b'n', name.len() as u8];
    tenant_key.extend_from_slice(name);
    tenant_key.extend_from_slice(&position.to_be_bytes());
    for key in [record_key(position), tree_key, tenant_key] {
        assert!(
            log.remove(key).unwrap().is_some(),
            "a key of position {position} exists"
        );
    }
    db.flush().unwrap();
}

/// An embedded engine with a four-commit tree, closed so its log can be
/// edited; reopen it with [`reopen`].
async fn embedded_tree(dir: &Path) -> (TreeId, Vec<u64>) {
    let engine = Engine::embedded(dir, EngineConfig::default())
        .await
        .unwrap();
    let made = four_commits(&engine).await;
    assert!(
        verify(&engine, made.0).await.intact,
        "a fresh tree verifies"
    );
    made
}

async fn reopen(dir: &Path) -> Engine {
    Engine::embedded(dir, EngineConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn verify_names_a_record_edited_in_the_embedded_log() {
    // Given a tree whose second record (the delegation) was edited in the
    // log to grant the child to someone else,
    let dir = tempfile::tempdir().unwrap();
    let (tree, positions) = embedded_tree(dir.path()).await;
    edit_record(dir.path(), positions[1], |commit| {
        commit[0]["grantee"] = "mallory".into();
    });

    // when the tree is verified,
    let v = verify(&reopen(dir.path()).await, tree).await;

    // then it is not intact, and the edited record is named.
    assert!(!v.intact, "an edited record verified: {v:?}");
    assert_eq!(v.broken_at, Some(2), "{v:?}");
    assert_eq!(v.broken_position, Some(positions[1]), "{v:?}");
    assert_eq!(v.fault, Some(ChainFault::Tampered), "{v:?}");
    assert_eq!(
        (v.log_head, v.projection_head),
        (positions[3], positions[3])
    );
}

#[tokio::test]
async fn verify_names_a_record_missing_from_the_embedded_log() {
    // Given a tree whose second record was deleted from the log,
    let dir = tempfile::tempdir().unwrap();
    let (tree, positions) = embedded_tree(dir.path()).await;
    delete_record(dir.path(), tree, positions[1]);

    // when the tree is verified,
    let v = verify(&reopen(dir.path()).await, tree).await;

    // then it is not intact, and the gap is named.
    assert!(!v.intact, "a tree with a missing record verified: {v:?}");
    assert_eq!(v.broken_at, Some(2), "{v:?}");
    // The record after the gap is the first that does not match.
    assert_eq!(v.broken_position, Some(positions[2]), "{v:?}");
    assert_eq!(v.fault, Some(ChainFault::Missing), "{v:?}");
}

#[tokio::test]
async fn verify_fails_when_the_log_lost_every_record_of_a_recorded_tree() {
    // Given a tree whose every record was deleted from the log, while the
    // projection still records its head,
    let dir = tempfile::tempdir().unwrap();
    let (tree, positions) = embedded_tree(dir.path()).await;
    for p in &positions {
        delete_record(dir.path(), tree, *p);
    }

    // when the tree is verified,
    let v = verify(&reopen(dir.path()).await, tree).await;

    // then it is not intact.
    assert!(
        !v.intact,
        "an empty log verified against a recorded head: {v:?}"
    );
    assert_eq!(v.fault, Some(ChainFault::Missing), "{v:?}");
    assert_eq!(v.broken_at, Some(1), "{v:?}");
    assert_eq!(v.broken_position, Some(positions[3]), "{v:?}");
    assert_eq!((v.log_head, v.events), (0, 0), "{v:?}");
}

// ---------------------------------------------------------------- JetStream

/// An engine over its own server, not serving, with a four-commit tree,
/// and a JetStream context on its connection.
struct OnNats {
    _server: NatsServer,
    _dir: tempfile::TempDir,
    engine: Engine,
    js: async_nats::jetstream::Context,
    tree: TreeId,
    positions: Vec<u64>,
}

async fn nats_tree() -> OnNats {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nc = async_nats::connect(server.url()).await.unwrap();
    let engine = open_engine(nc.clone(), dir.path()).await;
    let (tree, positions) = four_commits(&engine).await;
    OnNats {
        _server: server,
        _dir: dir,
        engine,
        js: async_nats::jetstream::new(nc),
        tree,
        positions,
    }
}

impl OnNats {
    /// Publishes `payload` on the tree's event subject beside the engine,
    /// with `headers`; returns its stream position.
    async fn publish_beside(&self, headers: async_nats::HeaderMap, payload: Vec<u8>) -> u64 {
        self.js
            .publish_with_headers(
                format!("mandate.evt.acme.{}", self.tree),
                headers,
                payload.into(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_message_deleted_from_the_stream() {
    // Given a tree whose second record was deleted from the stream,
    let t = nats_tree().await;
    let stream = t.js.get_stream("MANDATE_EVENTS").await.unwrap();
    assert!(stream.delete_message(t.positions[1]).await.unwrap());

    // when the tree is verified,
    let v = verify(&t.engine, t.tree).await;

    // then it is not intact, and the gap is named.
    assert!(!v.intact, "a tree with a deleted message verified: {v:?}");
    assert_eq!(v.broken_at, Some(2), "{v:?}");
    assert_eq!(v.broken_position, Some(t.positions[2]), "{v:?}");
    assert_eq!(v.fault, Some(ChainFault::Missing), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_forged_message_and_answers_for_a_quarantined_tree() {
    // Given a tree on which someone published, beside the engine, a copy of
    // its root's issue with a wider scope as the next event,
    let t = nats_tree().await;
    let history = t.engine.history(&acme(), &of_tree(t.tree)).await.unwrap();
    let mut forged = serde_json::to_value(&history.events[0]).unwrap();
    forged["seq"] = 5.into();
    forged["scope"] = serde_json::json!([{"action": "*", "resource": "**"}]);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("acme:{}", CommandId::generate()).as_str(),
    );
    let forged_at = t
        .publish_beside(headers, serde_json::to_vec(&[forged]).unwrap())
        .await;

    // when the tree is verified,
    let v = verify(&t.engine, t.tree).await;

    // then it is not intact, and the forged record is named.
    assert!(!v.intact, "a forged record verified: {v:?}");
    assert_eq!(v.broken_at, Some(5), "{v:?}");
    assert_eq!(v.broken_position, Some(forged_at), "{v:?}");
    assert_eq!(v.fault, Some(ChainFault::Tampered), "{v:?}");
    assert_eq!(v.log_head, forged_at, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_an_undecodable_message_after_an_intact_chain() {
    // Given a tree with a message on its subject that the log cannot decode
    // (no message id), after its four genuine records,
    let t = nats_tree().await;
    let bad = t
        .publish_beside(async_nats::HeaderMap::new(), b"[]".to_vec())
        .await;

    // when the tree is verified,
    let v = verify(&t.engine, t.tree).await;

    // then the corrupt record is named, and the events before it counted.
    assert!(!v.intact, "{v:?}");
    assert_eq!(v.fault, Some(ChainFault::Corrupt), "{v:?}");
    assert_eq!(v.broken_position, Some(bad), "{v:?}");
    assert_eq!(v.broken_at, Some(5), "{v:?}");
    assert_eq!(v.events, 4, "{v:?}");
    // The projection's head stands on the bad record: the tree is
    // quarantined there, its state the last good one.
    assert!(t.positions[3] < bad);
    assert_eq!(v.projection_head, bad, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_tree_verifies_against_the_log() {
    let t = nats_tree().await;

    let v = verify(&t.engine, t.tree).await;

    assert!(v.intact, "{v:?}");
    assert_eq!(
        (v.events, v.log_head, v.projection_head),
        (4, t.positions[3], t.positions[3])
    );
    assert_eq!(
        (v.fault, v.broken_position, v.broken_at),
        (None, None, None)
    );
}
