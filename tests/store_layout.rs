//! The projection's layout: a tree is kept in parts, so a command writes
//! what it changes and a read of a chain reads that chain, whatever the
//! size of the tree; and a projection written in another layout is never
//! read, but rebuilt from the log.
//!
//! These are counts of keys and bytes, not timings: the timings are the
//! benchmark program's (`mandate-bench growth`).

mod common;

use common::fixtures::{agent, change, delegation, envelope, ext, principal, root_issue, tenant};
use mandate::domain::{Command, MandateId, TreeId};
use mandate::engine::{Engine, EngineConfig};

/// An embedded engine with defaults, in a fresh directory (kept while the
/// directory lives).
async fn embedded() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    (dir, engine)
}

/// cfo's root for lead, with room for four levels below it.
async fn root(engine: &Engine) -> (TreeId, MandateId) {
    let issue = Command::Issue(root_issue(
        "cfo",
        "lead",
        None,
        &["finance:* on reports/**"],
    ));
    let r = engine
        .execute(ext(envelope("acme", principal("cfo"), issue)))
        .await
        .unwrap();
    (r.commits[0].tree, r.mandate.unwrap())
}

/// `by` delegates to `to` under `parent`.
async fn delegate(engine: &Engine, parent: MandateId, by: &str, to: &str) -> MandateId {
    let cmd = Command::Delegate(delegation(parent, to, &["finance:read on reports/**"]));
    engine
        .execute(ext(envelope("acme", agent(by), cmd)))
        .await
        .unwrap()
        .mandate
        .unwrap()
}

/// The cfo revokes `m`.
async fn revoke(engine: &Engine, m: MandateId) {
    engine
        .execute(ext(envelope(
            "acme",
            principal("cfo"),
            Command::Revoke(change(m)),
        )))
        .await
        .unwrap();
}

/// Keys and bytes of the whole projection.
fn size(engine: &Engine) -> (usize, usize) {
    let dump = engine.store().dump().unwrap();
    (
        dump.len(),
        dump.iter().map(|(k, v)| k.len() + v.len()).sum(),
    )
}

/// What one delegation under the root adds to the projection.
async fn growth_of_one_delegation(engine: &Engine, root: MandateId) -> (usize, usize) {
    let (keys, bytes) = size(engine);
    delegate(engine, root, "lead", "worker").await;
    let (keys_after, bytes_after) = size(engine);
    (keys_after - keys, bytes_after - bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegation_writes_as_much_under_a_root_of_ten_children_as_under_one_of_four_hundred() {
    let (_dir, engine) = embedded().await;
    let (_, root) = root(&engine).await;
    for _ in 0..10 {
        delegate(&engine, root, "lead", "worker").await;
    }
    let small = growth_of_one_delegation(&engine, root).await;
    for _ in 0..390 {
        delegate(&engine, root, "lead", "worker").await;
    }
    let large = growth_of_one_delegation(&engine, root).await;
    assert_eq!(
        small.0, large.0,
        "keys added by one delegation: {small:?} at 11 children, {large:?} at 401"
    );
    // Positions and sequence numbers take a digit more at 401 than at 11;
    // a layout that rewrote the tree would add kilobytes.
    assert!(
        large.1.abs_diff(small.1) <= 16,
        "bytes added by one delegation: {} at 11 children, {} at 401",
        small.1,
        large.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_holds_the_chain_and_the_head_holds_the_root_alone() {
    let (_dir, engine) = embedded().await;
    let (tree, root) = root(&engine).await;
    for _ in 0..50 {
        delegate(&engine, root, "lead", "worker").await;
    }
    let a = delegate(&engine, root, "lead", "a").await;
    let b = delegate(&engine, a, "a", "b").await;
    let c = delegate(&engine, b, "b", "c").await;
    let acme = tenant("acme");
    let store = engine.store();

    let head = store.head(&acme, tree).unwrap().unwrap();
    let in_head: Vec<MandateId> = head.tree.mandates().keys().copied().collect();
    assert_eq!(
        in_head,
        vec![root],
        "the head holds its root and no other mandate"
    );
    assert!(head.tree.get(root).unwrap().children().is_empty());
    assert!(head.tree.commands().is_empty());
    assert_eq!(head.tree.root(), Some(root));

    let view = store.view(&acme, tree, &[c], None).unwrap().unwrap();
    let held: Vec<MandateId> = view.tree.mandates().keys().copied().collect();
    let mut chain = vec![root, a, b, c];
    chain.sort();
    assert_eq!(held, chain, "a view of c holds its chain and nothing else");
    assert_eq!(view.position, head.position);

    let whole = store.tree(&acme, tree).unwrap().unwrap();
    assert_eq!(whole.tree.mandates().len(), 54);
    assert_eq!(whole.tree.get(root).unwrap().children().len(), 51);
    assert_eq!(whole.tree.get(b).unwrap().children(), &[c]);
}

/// A root is found in its tree through the decoded heads, and every
/// mandate through the index: from a cold start as from a warm one, and
/// never from another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_is_found_in_its_tree_and_only_in_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, root, child, grandchild) = {
        let engine = Engine::embedded(dir.path(), EngineConfig::default())
            .await
            .unwrap();
        let (tree, root) = root(&engine).await;
        let child = delegate(&engine, root, "lead", "a").await;
        let grandchild = delegate(&engine, child, "a", "b").await;
        (tree, root, child, grandchild)
    };
    let (acme, other) = (tenant("acme"), tenant("globex"));
    // Reopened: the heads are decoded again only as they are read. sled
    // lets go of its lock a moment after the last handle is dropped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let engine = loop {
        match Engine::embedded(dir.path(), EngineConfig::default()).await {
            Ok(engine) => break engine,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => panic!("reopen the engine: {e}"),
        }
    };
    let store = engine.store();
    for warm in [false, true] {
        for m in [root, child, grandchild] {
            assert_eq!(
                store.tree_of(&acme, m).unwrap(),
                Some(tree),
                "{m} (warm: {warm})"
            );
            assert_eq!(
                store.tree_of(&other, m).unwrap(),
                None,
                "{m} from another tenant"
            );
        }
        // A mandate id no tree has.
        assert_eq!(store.tree_of(&acme, MandateId::generate()).unwrap(), None);
        // Warm: the tree's head decoded and cached.
        assert_eq!(
            store.head(&acme, tree).unwrap().unwrap().tree.root(),
            Some(root)
        );
    }
    // The root's revoke finds its tree through the cached head.
    revoke(&engine, root).await;
    assert_eq!(store.tree_of(&acme, root).unwrap(), Some(tree));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_in_another_layout_is_rebuilt_from_the_log_when_the_engine_starts() {
    let dir = tempfile::tempdir().unwrap();
    let acme = tenant("acme");
    let (tree, child) = {
        let engine = Engine::embedded(dir.path(), EngineConfig::default())
            .await
            .unwrap();
        let (tree, root) = root(&engine).await;
        let child = delegate(&engine, root, "lead", "worker").await;
        revoke(&engine, child).await;
        engine.store().flush().await.unwrap();
        (tree, child)
    };
    // What a build of the earlier layout left: its tree snapshot under the
    // head's key, and no layout mark.
    {
        // sled lets go of its lock a moment after the engine's last handle
        // is dropped (a background task may still hold one briefly).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::open(dir.path().join("projection")) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("open the projection directly: {e}"),
            }
        };
        let projection = db.open_tree("projection").unwrap();
        assert!(
            projection.remove(b"V").unwrap().is_some(),
            "the layout is marked"
        );
        let head_key = projection.scan_prefix(b"t\0").next().unwrap().unwrap().0;
        projection
            .insert(
                head_key,
                br#"{"position":1,"tree":{"written":"by an older build"}}"#.to_vec(),
            )
            .unwrap();
        db.flush().unwrap();
    }
    let engine = Engine::embedded(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    // Not read as it was: cleared, and rebuilt from the log.
    engine.catch_up().await.unwrap();
    let status = engine.status(&acme, child, None).await.unwrap();
    assert!(
        status.effective.status.is_terminal(),
        "the revoke is back from the log: {status:?}"
    );
    assert_eq!(
        engine
            .store()
            .tree(&acme, tree)
            .unwrap()
            .unwrap()
            .tree
            .mandates()
            .len(),
        2
    );
    assert!(engine.rebuild_check().await.unwrap().equal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_delegating_under_one_root_on_one_instance_meets_no_conflict() {
    let (_dir, engine) = embedded().await;
    let (tree, root) = root(&engine).await;
    let swarm: Vec<_> = (0..32)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for _ in 0..4 {
                    delegate(&engine, root, "lead", &format!("worker-{i}")).await;
                }
            })
        })
        .collect();
    for task in swarm {
        task.await.unwrap();
    }
    let acme = tenant("acme");
    let whole = engine.store().tree(&acme, tree).unwrap().unwrap();
    assert_eq!(whole.tree.get(root).unwrap().children().len(), 128);
    // Commands on one tree take turns in an instance: none of them had its
    // append refused and decided again.
    assert_eq!(engine.append_conflicts(), 0);
}

/// A commit that issues a root in acme: decided, encoded, in no log.
fn issue_commit() -> (TreeId, Vec<u8>) {
    use mandate::domain::{decide, root_tree_id, Event, Facts, Tree};
    let issue = Command::Issue(root_issue(
        "cfo",
        "lead",
        None,
        &["finance:* on reports/**"],
    ));
    let cmd = envelope("acme", principal("cfo"), issue);
    let tree = root_tree_id(&cmd.tenant, cmd.command_id);
    let events = decide(
        &Tree::empty(cmd.tenant.clone(), tree),
        &cmd,
        &Facts::default(),
        chrono::Utc::now(),
    )
    .unwrap();
    (tree, Event::encode_commit(&events))
}

#[test]
fn a_corrupt_commit_inside_a_batch_quarantines_its_tree_only_and_the_checkpoint_moves_on() {
    use mandate::store::{Applied, Commit, Store};
    let acme = tenant("acme");
    // Enough commits that the batch is decoded on several threads.
    let mut trees: Vec<(TreeId, Vec<u8>)> = (0..100).map(|_| issue_commit()).collect();
    trees[50].1 = b"[{\"not\": \"an event\"}]".to_vec();
    let commits: Vec<Commit<'_>> = trees
        .iter()
        .enumerate()
        .map(|(i, (tree, payload))| Commit {
            tenant: &acme,
            tree: *tree,
            position: i as u64 + 1,
            payload: Ok(payload),
        })
        .collect();
    let store = Store::temporary().unwrap();
    let applied = store.apply_commits(&commits, true).unwrap();
    for (i, a) in applied.iter().enumerate() {
        match (i, a) {
            (50, Applied::Quarantined(q)) => assert_eq!(q.position, 51),
            (50, other) => panic!("the corrupt commit was {other:?}"),
            (_, Applied::Applied(_)) => {}
            (i, other) => panic!("commit {i} was {other:?}"),
        }
    }
    assert_eq!(store.checkpoint().unwrap(), 100);
    let bad = trees[50].0;
    assert!(store.quarantined(&acme, bad).unwrap().is_some());
    for (i, (tree, _)) in trees.iter().enumerate().filter(|(i, _)| *i != 50) {
        let head = store.head(&acme, *tree).unwrap().unwrap();
        assert!(head.tree.root().is_some(), "tree {i} is in the projection");
        assert!(store.quarantined(&acme, *tree).unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_of_a_cascade_reads_no_more_than_its_limit_whatever_the_trees_size() {
    use mandate::store::CASCADE_COUNT_LIMIT;
    let (_dir, engine) = embedded().await;
    let (tree, root) = root(&engine).await;
    let acme = tenant("acme");
    let count = |engine: &Engine, m: MandateId| {
        engine
            .store()
            .descendants_ended_by(&acme, tree, m, chrono::Utc::now())
            .unwrap()
    };
    // root → 60 workers, the first with one below it; one worker revoked.
    let mut workers = Vec::new();
    for _ in 0..60 {
        workers.push(delegate(&engine, root, "lead", "worker").await);
    }
    delegate(&engine, workers[0], "worker", "helper").await;
    revoke(&engine, workers[1]).await;
    assert_eq!(count(&engine, root), 60, "59 live workers and the helper");
    assert_eq!(count(&engine, workers[0]), 1);
    // Past the limit, the count stops there and says "more".
    for _ in 0..60 {
        delegate(&engine, root, "lead", "worker").await;
    }
    assert_eq!(count(&engine, root), CASCADE_COUNT_LIMIT + 1);
}

/// The kinds (first byte) of the keys a step added, removed or changed.
fn kinds_changed(
    before: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    after: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> std::collections::BTreeMap<char, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    let keys: std::collections::BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    for k in keys {
        if before.get(k) != after.get(k) {
            *kinds.entry(k[0] as char).or_insert(0) += 1;
        }
    }
    kinds
}

/// Ending a root writes its head, its event and its command id, and no
/// mandate's key nor the expiry queue: under a root of 300 children as
/// under one of 3. (The root's key and its expiry entry sit on pages a
/// large tree's growth pushes out of sled's cache, which a revoke would
/// read back before writing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_root_writes_its_head_event_and_command_id_whatever_hangs_below_it() {
    let (_dir, engine) = embedded().await;
    let mut changed = Vec::new();
    for children in [3, 300] {
        let (_, root) = root(&engine).await;
        for _ in 0..children {
            delegate(&engine, root, "lead", "worker").await;
        }
        let before = engine.store().dump().unwrap();
        revoke(&engine, root).await;
        let after = engine.store().dump().unwrap();
        changed.push(kinds_changed(&before, &after));
    }
    let expected: std::collections::BTreeMap<char, usize> =
        [('d', 1), ('e', 1), ('t', 1)].into_iter().collect();
    assert_eq!(
        changed[0], expected,
        "keys a root's revoke wrote, 3 children"
    );
    assert_eq!(
        changed[1], expected,
        "keys a root's revoke wrote, 300 children"
    );
}

/// The expiry entries a revoke leaves (the revoked root's and its
/// children's) are dropped when they come due, and no `expired` event is
/// written for an ended mandate; a live mandate due at the same time is
/// expired as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_revoke_leaves_in_the_expiry_queue_are_dropped_when_due_without_an_event() {
    use mandate::domain::EventBody;
    use mandate::engine::Clock;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(chrono::Utc::now());
    let engine = Engine::embedded(
        dir.path(),
        EngineConfig {
            clock: clock.clone(),
            expiry_tick: std::time::Duration::from_secs(3600),
            ..EngineConfig::default()
        },
    )
    .await
    .unwrap();
    let acme = tenant("acme");
    let (ended_tree, ended) = root(&engine).await;
    let child = delegate(&engine, ended, "lead", "worker").await;
    let (live_tree, live) = root(&engine).await;
    revoke(&engine, ended).await;
    let due = engine
        .store()
        .due_expiries(clock.now() + chrono::Duration::hours(2), None, 10)
        .unwrap();
    let queued: Vec<MandateId> = due.iter().map(|d| d.mandate).collect();
    for m in [ended, child, live] {
        assert!(queued.contains(&m), "{m} is queued: {queued:?}");
    }

    let background = engine.start();
    clock.advance(chrono::Duration::hours(2));
    common::fixtures::eventually("the queue is empty", || {
        let empty = engine.store().next_expiry().unwrap().is_none();
        async move { empty }
    })
    .await;
    let expired = |tree: TreeId| {
        engine
            .store()
            .history(&acme, tree)
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.body, EventBody::MandateExpired(_)))
            .map(|e| e.body.mandate())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        expired(ended_tree),
        Vec::<MandateId>::new(),
        "nothing expires in the revoked tree"
    );
    assert_eq!(expired(live_tree), vec![live], "the live root expires");
    background.stop().await.unwrap();
}
