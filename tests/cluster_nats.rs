//! Mandate on a three-node JetStream cluster: real `nats-server` processes
//! routed on loopback (2.9 by default, any other with `NATS_SERVER_BIN`),
//! real `mandate serve --replicas 3` processes, each connected to its own
//! node (and failing over to the others the cluster advertises).
//!
//! - (a) a burst of commands over many trees from clients on every node,
//!   with revokes racing delegations, while the event stream's leader node
//!   is killed and later restarted: every acknowledged command is in the
//!   stream exactly once, no mandate is live under an ended one, and every
//!   engine's projection equals a rebuild;
//! - (c) an engine killed (SIGKILL) while it holds in-flight commands: the
//!   others keep serving, and clients retrying with the same command id get
//!   one answer each, each command in the log once; and streams an older
//!   instance made with one replica are raised to three;
//! - (b) a guard on the node that dies reconnects, catches up, and never
//!   allows under a mandate revoked meanwhile beyond its lease;
//! - the roles of `examples/nats-cluster-node.conf` (the least-privilege
//!   users of `examples/nats-server.conf`, routes that authenticate) on the
//!   cluster, each role on another node: an agent follows its tenant's
//!   signals, another tenant's agent is refused them, and signals an agent
//!   redirects to the engine's revoke subject change nothing;
//! - appends racing on one tree head from every node: one stored per head;
//! - through route relays the test controls (every route goes through
//!   them): (d) a node isolated (its routes carry nothing, nothing is
//!   closed) lags; fresh checks through its engine never allow under a
//!   mandate revoked meanwhile, while a direct get of an `allow_direct`
//!   control stream through it answers the old value; (e) the event
//!   stream leader's node isolated mid-burst: the majority elects a leader
//!   and keeps acknowledging, nothing acknowledged is lost or stored twice,
//!   nothing is live under an ended mandate, projections equal rebuilds;
//!   (f) two nodes killed after the survivor lagged: checks and commands
//!   are refused `unavailable` (never answered from its stale copy), and
//!   service resumes when the nodes return, nothing acknowledged lost;
//! - a single server refuses three replicas, naming the stream and both
//!   numbers (on 2.9, the version first); `--replicas` outside 1..5 exits 2.
//!
//! On servers older than 2.10 (2.9.10 here) each cluster scenario instead
//! checks that `serve --replicas 3` refuses to start, naming the version;
//! the secured one is skipped, saying so (its configuration sets
//! `sync_interval`, which 2.9 refuses to start with).
//!
//! Elections on two busy cores are slow: outcomes are asserted with
//! generous deadlines, never timings. `MANDATE_CLUSTER_TREES` raises the
//! size of (a) (200 trees by default; 1,000 is reachable).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::cluster::{Cluster, NODES};
use common::faults::{
    answered_at_least, assert_each_command_once, assert_outcome, burst_on, recorded,
    send_envelope_until_answered, send_until_answered, Ledger, ServedEngine,
};
use common::prelude::*;
use futures::StreamExt;
use mandate::domain::command::Change;
use mandate::engine::{Engine, EngineConfig};
use mandate::log::JetStreamConfig;
use mandate::protocol::command_subject;

/// Clients of a burst, spread over the nodes.
const TASKS: usize = 6;
/// Trees of (a) unless `MANDATE_CLUSTER_TREES` says otherwise.
const DEFAULT_TREES: usize = 200;
/// Trees of (a) where a root's revoke races a delegation under it.
const RACES: usize = 20;
/// How long engines may take to serve on a cluster that is still settling.
const SETTLE: Duration = Duration::from_secs(90);

/// Whether the cluster's servers are trusted with replicated streams (2.10
/// and later). Older ones (2.9) can store two appends made on one tree head
/// (`racing_appends_on_a_replicated_stream_store_one_per_head` shows it when
/// the check is lifted): there, every cluster test instead shows that `serve
/// --replicas 3` refuses to start, naming the version, and changes nothing.
async fn trusted_with_replicas(cluster: &Cluster) -> bool {
    let nc = cluster.connect().await;
    let version = nc.server_info().version.clone();
    if mandate::log::check_server_for_replicas(&version, 3).is_ok() {
        return true;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandate"))
        .arg("--data")
        .arg(tmp.path().join("engine"))
        .args(["--nats", &cluster.url(0), "serve", "--allow-open-tenants"])
        .args(["--replicas", "3"])
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_TENANT")
        .output()
        .expect("run mandate serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "serve --replicas 3 on {version} must refuse"
    );
    for needle in ["3 replicas", "2.10", &version] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    let js = async_nats::jetstream::new(nc);
    assert!(
        js.get_stream("MANDATE_EVENTS").await.is_err(),
        "no stream was made"
    );
    eprintln!("server {version} is not trusted with replicated streams: refused as expected");
    false
}

fn trees() -> usize {
    std::env::var("MANDATE_CLUSTER_TREES")
        .ok()
        .map(|v| v.parse().expect("MANDATE_CLUSTER_TREES is a number"))
        .unwrap_or(DEFAULT_TREES)
}

/// `mandate serve --replicas 3` on node `i`'s URL.
fn engine_on_node(cluster: &Cluster, dir: &std::path::Path, i: usize) -> ServedEngine {
    ServedEngine::start_with(
        &cluster.url(i),
        &dir.join(format!("engine{i}")),
        &["--replicas", "3"],
    )
}

/// One `mandate serve --replicas 3` per node, each on its own node's URL.
fn engines_on_every_node(cluster: &Cluster, dir: &std::path::Path) -> Vec<ServedEngine> {
    (0..NODES)
        .map(|i| engine_on_node(cluster, dir, i))
        .collect()
}

/// Waits (up to [`SETTLE`]) until `n` distinct engine instances have
/// answered health requests of acme (the queue group spreads them); on
/// timeout, shows the engines' logs under `dir`.
async fn serving_soon(nc: &async_nats::Client, n: usize, dir: &std::path::Path) {
    let c = client(nc, "acme", principal("probe")).with_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        if tokio::time::Instant::now() >= deadline {
            for i in 0..NODES {
                let log = std::fs::read_to_string(dir.join(format!("engine{i}.log")));
                eprintln!("engine {i}'s log: {}", log.unwrap_or_default());
            }
            panic!("{} of {n} engines served within {SETTLE:?}", seen.len());
        }
        match c.health().await {
            Ok(h) => {
                seen.insert(h.instance);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Each of `n` engine instances' `health` (asked until the queue group
/// has spread the requests over all of them), by instance.
async fn health_of_every_instance(
    nc: &async_nats::Client,
    n: usize,
) -> HashMap<String, mandate::protocol::Health> {
    let c = client(nc, "acme", principal("probe")).with_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut seen = HashMap::new();
    while seen.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} instances answered health within {SETTLE:?}",
            seen.len()
        );
        if let Ok(h) = c.health().await {
            seen.insert(h.instance.clone(), h);
        }
    }
    seen
}

/// Every stream of the account with its replicas.
async fn replicas_of_every_stream(nc: &async_nats::Client) -> HashMap<String, usize> {
    let js = async_nats::jetstream::new(nc.clone());
    let names: Vec<String> = js
        .stream_names()
        .map(|n| n.expect("list the streams"))
        .collect()
        .await;
    let mut found = HashMap::new();
    for name in names {
        let mut stream = js.get_stream(&name).await.expect("a listed stream");
        let replicas = stream.info().await.expect("its info").config.num_replicas;
        found.insert(name, replicas);
    }
    assert!(!found.is_empty(), "the account has streams");
    found
}

/// An engine over the cluster with streams of `replicas`, opened (not
/// serving) on `dir`.
async fn open_with_replicas(
    nc: async_nats::Client,
    dir: &std::path::Path,
    replicas: usize,
) -> Engine {
    Engine::nats(
        nc,
        dir,
        JetStreamConfig {
            replicas,
            ..JetStreamConfig::default()
        },
        EngineConfig {
            replicas,
            ..EngineConfig::default()
        },
    )
    .await
    .expect("open the engine")
}

/// Stops every engine process and checks, on each one's data directory
/// opened again, that its projection equals a rebuild from the log.
async fn assert_projections_equal_rebuilds(
    nc: &async_nats::Client,
    engines: &mut [ServedEngine],
    dir: &std::path::Path,
) {
    for (i, engine) in engines.iter_mut().enumerate() {
        engine.stop();
        let opened = open_with_replicas(nc.clone(), &dir.join(format!("engine{i}")), 3).await;
        let report = opened.rebuild_check().await.expect("rebuild");
        assert!(report.equal, "engine {i}'s projection equals a rebuild");
    }
}

/// No mandate of the trees holding `mandates` is effectively active while
/// it, or any mandate above it, is ended (revoked, expired, completed).
async fn assert_nothing_live_under_an_ended_mandate(
    nc: &async_nats::Client,
    mandates: &[MandateId],
) {
    let c = client(nc, "acme", principal("auditor"));
    for m in mandates {
        let reply = c.tree(of_mandate(*m)).await.expect("read the tree");
        let by_id: HashMap<MandateId, _> = reply.effective.iter().map(|s| (s.mandate, s)).collect();
        for summary in &reply.effective {
            let mut ended = None;
            let mut at = Some(summary.mandate);
            while let Some(id) = at {
                let node = by_id[&id];
                if node.status.is_terminal() {
                    ended = Some(id);
                    break;
                }
                at = node.parent;
            }
            if let Some(ended) = ended {
                assert_ne!(
                    summary.effective.status,
                    Status::Active,
                    "{} is live while {ended} above it (or itself) is ended",
                    summary.mandate
                );
            }
        }
    }
}

/// `races` trees on their own connection to `url`: a root and a lead under
/// it, then the root's revoke sent at once with a delegation by the lead
/// (each retried with its own id until answered). Every answer goes into
/// `ledger`'s answers (not its count of burst answers). Returns the roots.
async fn racing_revokes(url: String, races: usize, ledger: Arc<Ledger>) -> Vec<MandateId> {
    let nc = async_nats::connect(&url).await.expect("connect a client");
    let grant = "fin:read on ledger/*";
    let mut roots = Vec::new();
    for r in 0..races {
        let holder = format!("race-{r}");
        let send = |actor: Actor, command: Command| {
            let (nc, ledger) = (nc.clone(), ledger.clone());
            async move { sent(&nc, &ledger, actor, command).await }
        };
        let root = send(
            principal("cfo"),
            Command::Issue(root_issue("cfo", &holder, None, &[grant])),
        )
        .await
        .expect("issue")
        .mandate
        .expect("a root");
        let lead = send(
            agent(&holder),
            Command::Delegate(delegation(root, &format!("lead-{r}"), &[grant])),
        )
        .await
        .expect("delegate")
        .mandate
        .expect("a lead");
        let revoke = send(
            principal("cfo"),
            Command::Revoke(Change {
                mandate: root,
                reason: None,
            }),
        );
        let under = send(
            agent(&format!("lead-{r}")),
            Command::Delegate(delegation(lead, &format!("leaf-{r}"), &[grant])),
        );
        let (revoked, _delegated) = tokio::join!(revoke, under);
        assert!(revoked.is_ok(), "the revoke is accepted: {revoked:?}");
        roots.push(root);
    }
    roots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_burst_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut engines = engines_on_every_node(&cluster, tmp.path());
    let nc = cluster.connect().await;
    serving_soon(&nc, NODES, tmp.path()).await;

    let batches = trees().div_ceil(TASKS * 10);
    let total = TASKS * batches * 61;
    let ledger = Arc::new(Ledger::default());
    let urls = (0..NODES).map(|i| cluster.url(i)).collect();
    let driver = tokio::spawn(burst_on(urls, TASKS, batches, ledger.clone()));
    let racer = tokio::spawn(racing_revokes(cluster.url(2), RACES, ledger.clone()));

    answered_at_least(&ledger, total / 3).await;
    let before = health_of_every_instance(&nc, NODES).await;
    for (instance, h) in &before {
        eprintln!("{instance} before the kill: {:?}", h.elections);
    }
    // The node that leads the event stream: its loss forces an election.
    let victim = cluster
        .stream_leader(0, "MANDATE_EVENTS")
        .await
        .expect("the event stream has a leader");
    eprintln!("killing node {victim}, the event stream's leader");
    cluster.kill(victim);
    answered_at_least(&ledger, 2 * total / 3).await;
    cluster.restart(victim);

    driver.await.expect("the burst completes");
    let raced = racer.await.expect("the races complete");
    eprintln!("{}", ledger.summary());

    // The election shows in health: appends that waited out the lost
    // leader were sent again, or given up unavailable, on some instance.
    let after = health_of_every_instance(&nc, NODES).await;
    let count =
        |h: &mandate::protocol::Health| h.elections.append_retries + h.elections.unavailable;
    for (instance, h) in &after {
        eprintln!("{instance} after the kill: {:?}", h.elections);
        let was = before.get(instance).map_or(0, count);
        assert!(count(h) >= was, "{instance}'s counts never go down");
    }
    let rose: Vec<_> = after
        .iter()
        .filter(|(i, h)| count(h) > before.get(*i).map_or(0, count))
        .collect();
    assert!(
        !rose.is_empty(),
        "no instance counted the event stream leader's loss in health"
    );
    for (instance, h) in rose {
        let last = h.elections.last_at.expect("a count comes with its time");
        assert!(last <= h.time, "{instance}: {last} after its reply's time");
    }
    assert_eq!(
        ledger.answered.load(std::sync::atomic::Ordering::SeqCst),
        total
    );
    assert_eq!(ledger.answers.lock().unwrap().len(), total + 4 * RACES);

    assert_each_command_once(&nc, &ledger).await;
    assert_outcome(&nc, &ledger).await;
    let mut roots = ledger.roots.lock().unwrap().clone();
    assert_eq!(roots.len(), trees().div_ceil(TASKS * 10) * TASKS * 10);
    roots.extend(&raced);
    assert_nothing_live_under_an_ended_mandate(&nc, &roots).await;
    let c = client(&nc, "acme", principal("auditor"));
    for root in &raced {
        assert_eq!(own(&c, *root).await, Status::Revoked, "raced root {root}");
    }
    assert_projections_equal_rebuilds(&nc, &mut engines, tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_with_commands_in_flight_leaves_the_others_serving() {
    let cluster = Cluster::start().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nc = cluster.connect().await;

    // An older instance made every stream with one replica.
    let older = open_with_replicas(nc.clone(), &tmp.path().join("older"), 1).await;
    drop(older);
    let before = replicas_of_every_stream(&nc).await;
    assert!(before.values().all(|r| *r == 1), "{before:?}");

    // The first new instance raises them (while a stream moves, the
    // cluster's API times out, and an instance starting then exits
    // unavailable: a rolling start avoids that), then the others start.
    let mut engines = vec![engine_on_node(&cluster, tmp.path(), 0)];
    serving_soon(&nc, 1, tmp.path()).await;
    engines.extend((1..NODES).map(|i| engine_on_node(&cluster, tmp.path(), i)));
    serving_soon(&nc, NODES, tmp.path()).await;
    let after = replicas_of_every_stream(&nc).await;
    assert!(
        after.len() >= 5,
        "events, signals, missions, dead letters, audit: {after:?}"
    );
    assert!(
        after.values().all(|r| *r == 3),
        "every stream is raised to three replicas: {after:?}"
    );

    // 6 clients × 2 batches × 61 commands; engine 0 dies once a third are
    // answered (clients send to the queue group, so it holds some of them).
    let (tasks, batches) = (TASKS, 2);
    let total = tasks * batches * 61;
    let ledger = Arc::new(Ledger::default());
    let urls = (0..NODES).map(|i| cluster.url(i)).collect();
    let driver = tokio::spawn(burst_on(urls, tasks, batches, ledger.clone()));
    answered_at_least(&ledger, total / 3).await;
    engines[0].kill9();
    driver.await.expect("the burst completes without engine 0");
    eprintln!("{}", ledger.summary());

    // One answer per command: no command id answered twice.
    let answers = ledger.answers.lock().unwrap().clone();
    assert_eq!(answers.len(), total);
    let mut ids: Vec<CommandId> = answers.iter().map(|(id, _, _)| *id).collect();
    ids.sort_by_key(|id| id.to_string());
    ids.dedup();
    assert_eq!(ids.len(), total, "each command answered once");
    assert_each_command_once(&nc, &ledger).await;
    assert_outcome(&nc, &ledger).await;

    // The survivors' projections (and the dead one's, caught up) equal a
    // rebuild.
    assert_projections_equal_rebuilds(&nc, &mut engines, tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_refuses_three_replicas_naming_the_stream_and_both_numbers() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;
    // Streams made with one replica, then an engine asking for three.
    drop(open_with_replicas(nc.clone(), &tmp.path().join("one"), 1).await);
    let refused = Engine::nats(
        nc.clone(),
        &tmp.path().join("three"),
        JetStreamConfig {
            replicas: 3,
            ..JetStreamConfig::default()
        },
        EngineConfig {
            replicas: 3,
            ..EngineConfig::default()
        },
    )
    .await
    .err()
    .expect("three replicas on a single server are refused");
    let text = refused.to_string();
    // 2.10+: the stream cannot get them; 2.9: the version is refused first.
    let version = nc.server_info().version.clone();
    let needles = if mandate::log::check_server_for_replicas(&version, 3).is_ok() {
        ["MANDATE_EVENTS", "1 replica", "3 configured"]
    } else {
        ["3 replicas", "2.10", version.as_str()]
    };
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} in {text:?}");
    }
    // Nothing changed.
    let now = replicas_of_every_stream(&nc).await;
    assert!(now.values().all(|r| *r == 1), "{now:?}");

    // The log's and the engine's replicas must agree.
    let mismatch = Engine::nats(
        nc.clone(),
        &tmp.path().join("mixed"),
        JetStreamConfig::default(),
        EngineConfig {
            replicas: 3,
            ..EngineConfig::default()
        },
    )
    .await
    .err()
    .expect("different replicas for the log and the engine are refused");
    assert!(mismatch.to_string().contains("replica"), "{mismatch}");
}

/// The optimistic concurrency every tree relies on, on an R3 stream:
/// appends racing from clients on every node with the same expected head
/// (the shape of two instances deciding on one tree at once). At most one
/// may be stored per head; a second would fork the tree's hash chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_on_a_replicated_stream_store_one_per_head() {
    use mandate::log::{EventLog, JetStreamLog, LogError};
    let cluster = Cluster::start().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let mut logs = Vec::new();
    for i in 0..NODES {
        let nc = async_nats::connect(cluster.url(i)).await.unwrap();
        let config = JetStreamConfig {
            replicas: 3,
            ..JetStreamConfig::default()
        };
        logs.push(JetStreamLog::open(nc, config).await.expect("open the log"));
    }
    let tenant = acme();
    let (mut stored, mut refused) = (0, 0);
    let mut forked = Vec::new();
    for _ in 0..30 {
        let tree = TreeId::generate();
        let first = logs[0]
            .append(&tenant, tree, 0, CommandId::generate(), "first".into())
            .await
            .expect("the first record");
        let racers = (0..6).map(|k| {
            let (log, tenant) = (logs[k % NODES].clone(), tenant.clone());
            tokio::spawn(async move {
                log.append(
                    &tenant,
                    tree,
                    first.position,
                    CommandId::generate(),
                    "next".into(),
                )
                .await
            })
        });
        let mut won = 0;
        for racer in futures::future::join_all(racers).await {
            match racer.unwrap() {
                Ok(a) if !a.duplicate => won += 1,
                Ok(a) => panic!("a duplicate of a fresh command id: {a:?}"),
                Err(LogError::Conflict { .. }) => refused += 1,
                Err(e) => panic!("neither stored nor a conflict: {e}"),
            }
        }
        stored += won;
        if won != 1 {
            forked.push((tree, won));
        }
    }
    eprintln!("{stored} stored, {refused} refused as conflicts");
    assert!(
        forked.is_empty(),
        "trees where racing appends on one expected head were not stored exactly once: {forked:?}"
    );
}

#[test]
fn replicas_outside_one_to_five_are_refused_naming_the_flag() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["0", "6"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mandate"))
            .arg("--data")
            .arg(tmp.path().join("engine"))
            .args(["--nats", &server.url(), "serve", "--allow-open-tenants"])
            .args(["--replicas", bad])
            .env_remove("MANDATE_NATS")
            .env_remove("MANDATE_TENANT")
            .output()
            .expect("run mandate serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--replicas {bad}: {stderr}");
        assert!(
            stderr.contains(&format!("--replicas: must be 1 to 5, not {bad}")),
            "{stderr}"
        );
    }
}

/// (b) A guard connected to the node that dies: it reconnects to another
/// node (the cluster advertises them), catches up from the signal stream,
/// and never allows a check under a mandate revoked while it was
/// reconnecting, beyond its lease (the bound a guard cut off from every
/// engine has by design); then it denies as revoked for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_on_the_node_that_dies_never_allows_under_a_revoke_it_missed() {
    use mandate::client::GuardState;
    let mut cluster = Cluster::start().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _engines: Vec<ServedEngine> = (1..NODES)
        .map(|i| engine_on_node(&cluster, tmp.path(), i))
        .collect();
    let nc = cluster.connect().await;
    serving_soon(&nc, NODES - 1, tmp.path()).await;

    let grant = "fin:read on ledger/*";
    let root = issue(&nc, root_issue("cfo", "lead", None, &[grant])).await;
    let leaf = delegate(&nc, "lead", root, "worker", &[grant]).await;
    let on_node0 = async_nats::connect(cluster.url(0)).await.unwrap();
    let lease = Duration::from_secs(2);
    let guard = start_guard(client(&on_node0, "acme", agent("worker")), leaf, lease).await;
    assert!(guard.check("fin:read", "ledger/q3").is_allowed());

    cluster.kill(0);
    // Sent until answered, always with the same command id: while the
    // stream elects a leader the engine answers `unavailable`.
    cfo_revokes_until_answered(&nc, root, "while the guard's node was down")
        .await
        .expect("the revoke is accepted");
    let revoked_at = std::time::Instant::now();
    let deadline = revoked_at + SETTLE;
    loop {
        let d = guard.check("fin:read", "ledger/q3");
        if d.is_allowed() {
            assert!(
                revoked_at.elapsed() < lease,
                "allowed {:?} after the root's revoke, beyond its lease of {lease:?}",
                revoked_at.elapsed()
            );
        }
        if guard.state() == GuardState::Terminated(Status::Revoked) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guard never learned the revoke: {:?}",
            guard.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_denied_as(&guard.check("fin:read", "ledger/q3"), Status::Revoked);
    // Its node back, it stays denied.
    cluster.restart(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_denied_as(&guard.check("fin:read", "ledger/q3"), Status::Revoked);
}

/// The roles of `examples/nats-server.conf` hold on a cluster configured
/// by `examples/nats-cluster-node.conf`, with every role on another node:
/// the engine (streams of three replicas) on node 0, acme's orchestrator
/// and globex's agent on node 1, acme's agent on node 2. Permissions are
/// checked where a client connects, so each node must enforce them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_on_a_cluster_of_secured_nodes() {
    use common::secured::{
        connect_recording, ordered_signal_consumer, redirect_signals, server_minor, settings_for,
        AGENT_ACME, AGENT_GLOBEX, ENGINE, ORCH_ACME, SIGNAL_STREAM,
    };
    use mandate::client::GuardState;
    use mandate::protocol::{tenant_signals_subject, Signal, SignalKind};

    let minor = server_minor();
    if minor < 10 {
        eprintln!(
            "skipped: nats-server 2.{minor} cannot run examples/nats-cluster-node.conf \
             (it refuses `sync_interval`, and Mandate refuses replicated streams below 2.10)"
        );
        return;
    }
    let cluster = Cluster::start_secured(|url| settings_for(url, &ENGINE)).await;
    let tmp = tempfile::tempdir().unwrap();

    // The engine, as the engine user, on node 0, every stream on three
    // replicas.
    let (engine_nc, engine_errors) =
        connect_recording(&settings_for(&cluster.url(0), &ENGINE)).await;
    let engine = Engine::nats(
        engine_nc.clone(),
        tmp.path(),
        JetStreamConfig {
            replicas: 3,
            ..JetStreamConfig::default()
        },
        EngineConfig {
            replicas: 3,
            allow_open_tenants: true,
            ..EngineConfig::default()
        },
    )
    .await
    .expect("the engine opens its streams with its own user");
    let (stop, served) = common::served::serve_in_task(&engine);

    // Acme's orchestrator on node 1 makes a tree: the cfo's root to a1,
    // a1's delegation to a2.
    let (orch_nc, orch_errors) =
        connect_recording(&settings_for(&cluster.url(1), &ORCH_ACME)).await;
    let patient = Duration::from_secs(30);
    let cfo = Client::nats(orch_nc.clone(), acme(), principal("cfo")).with_timeout(patient);
    eventually("the engine answers on the cluster", || {
        let cfo = cfo.clone();
        async move { cfo.health().await.is_ok() }
    })
    .await;
    let grants = ["finance:read on reports/**"];
    let issue_root = |holder: &'static str| {
        let cfo = cfo.clone();
        async move {
            cfo.issue(root_issue("cfo", holder, None, &grants))
                .await
                .expect("the orchestrator issues")
                .mandate
                .unwrap()
        }
    };
    let root = issue_root("a1").await;
    let as_a1 = Client::nats(orch_nc.clone(), acme(), agent("a1")).with_timeout(patient);
    let child = as_a1
        .delegate(delegation(root, "a2", &grants))
        .await
        .expect("the orchestrator delegates for a1")
        .mandate
        .unwrap();

    // Acme's agent on node 2: its hub's consumer on acme's signals, and a
    // guard on a2's mandate.
    let (agent_nc, agent_errors) =
        connect_recording(&settings_for(&cluster.url(2), &AGENT_ACME)).await;
    let acme_signals = tenant_signals_subject(&acme());
    let (_, made) = ordered_signal_consumer(&agent_nc, &acme_signals).await;
    let mut signals = made
        .expect("acme's agent may follow acme's signals on the cluster")
        .messages()
        .await
        .expect("the consumer delivers to the agent's own inbox");
    let a2 = Client::nats(agent_nc.clone(), acme(), agent("a2")).with_timeout(patient);
    let guard = start_guard(a2, child, Duration::from_secs(30)).await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());

    // Globex's agent on node 1 may not follow acme's signals.
    let (globex_nc, globex_errors) =
        connect_recording(&settings_for(&cluster.url(1), &AGENT_GLOBEX)).await;
    let (name, made) = ordered_signal_consumer(&globex_nc, &acme_signals).await;
    assert!(
        made.is_err(),
        "globex's agent made a consumer on {acme_signals}"
    );
    globex_errors
        .publish_refused(&format!(
            "$JS.API.CONSUMER.CREATE.{SIGNAL_STREAM}.{name}.{acme_signals}"
        ))
        .await;

    // Acme's agent redirects acme's signals to the engine's revoke subject
    // (the deliver subject is in the request's body, which permissions do
    // not read). A copy of what arrives there, on node 0 (a connection of
    // its own as the engine user):
    let (spy_nc, _) = connect_recording(&settings_for(&cluster.url(0), &ENGINE)).await;
    let mut revokes = spy_nc.subscribe("mandate.cmd.acme.revoke").await.unwrap();
    spy_nc.flush().await.unwrap();
    let (redirected, reply) =
        redirect_signals(&agent_nc, &acme_signals, "mandate.cmd.acme.revoke", "new").await;
    if !redirected {
        eprintln!("this server checks the deliver subject: nothing to redirect ({reply})");
    }
    // A pause of the root: its signal reaches the engine as a "revoke"
    // (where the redirect was taken), and nothing is revoked.
    cfo.pause(root, None)
        .await
        .expect("the orchestrator pauses");
    if redirected {
        tokio::time::timeout(SETTLE, async {
            while let Some(m) = revokes.next().await {
                match serde_json::from_slice::<Signal>(&m.payload) {
                    Ok(s) if s.mandate == root && s.kind == SignalKind::Suspended => return,
                    _ => continue,
                }
            }
        })
        .await
        .expect("the pause's signal is delivered on the revoke subject");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in [root, child] {
        let status = cfo.status(m, None).await.unwrap();
        assert_eq!(status.effective.status, Status::Paused, "{m}");
    }

    // The revoke: its signal reaches acme's agent's consumer, on another
    // node than the engine's, and the guard ends.
    if let Err(e) = cfo.revoke(root, Some("closed".into())).await {
        let ended = if served.is_finished() {
            format!("{:?}", served.await)
        } else {
            "still serving".into()
        };
        panic!(
            "the orchestrator's revoke failed: {e}; the engine: {ended}; it was refused {:?}",
            engine_errors.all()
        );
    }
    let terminated = tokio::time::timeout(SETTLE, async {
        while let Some(m) = signals.next().await {
            let m = m.expect("the ordered consumer delivers without a gap");
            // The tenant's stream carries more than signals (the engine's
            // policy announcement, for one).
            let Ok(signal) = serde_json::from_slice::<Signal>(&m.payload) else {
                continue;
            };
            if signal.mandate == root && signal.kind == SignalKind::Terminated {
                return signal;
            }
        }
        panic!("the consumer ended");
    })
    .await
    .expect("the revoke's signal reaches the agent's consumer");
    assert_eq!(terminated.tenant, acme());
    tokio::time::timeout(SETTLE, guard.cancellation().cancelled())
        .await
        .expect("the guard learns the revoke");
    assert_eq!(guard.state(), GuardState::Terminated(Status::Revoked));

    for (who, errors) in [
        ("the engine", &engine_errors),
        ("acme's orchestrator", &orch_errors),
        ("acme's agent", &agent_errors),
    ] {
        assert_eq!(errors.violations(), Vec::<String>::new(), "{who}");
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("the engine stops")
        .expect("the engine task does not panic")
        .expect("the engine stops cleanly");
}

/// How long a partitioned or killed cluster may take to show what a test
/// waits for (routes dropped, a leader elected, a node caught up).
const PATIENT: Duration = Duration::from_secs(90);

/// How long a test's client waits for a check's answer through a node cut
/// off from the others: the engine there answers within its JetStream
/// timeout (5 s); a request NATS passed to another engine's member of the
/// queue group, across the cut, is never answered.
const CHECK_TIMEOUT: Duration = Duration::from_secs(12);

/// Polls `f` until it holds, for at most [`PATIENT`].
async fn patiently<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PATIENT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to [`PATIENT`]) until node `i` routes to `peers[i]` distinct
/// peers, for every node.
async fn routed_peers_become(cluster: &Cluster, peers: [usize; NODES]) {
    let deadline = tokio::time::Instant::now() + PATIENT;
    loop {
        let now: Vec<usize> = (0..NODES).map(|i| cluster.routed_peers(i)).collect();
        if now == peers {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routed peers by node: {now:?}, not {peers:?} within {PATIENT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The cluster harness's route relays carry every route: each node
/// advertises a closed route port, so no node dials another around them.
/// With node 0's relays severed it has no route and the others route only
/// to each other; restored, every node routes to both others again. (Any
/// server version: no replicated stream is needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_a_relayed_cluster_goes_through_its_relays() {
    let cluster = Cluster::start_with_route_relays_and_monitoring().await;
    routed_peers_become(&cluster, [2, 2, 2]).await;
    cluster.sever(0);
    routed_peers_become(&cluster, [0, 1, 1]).await;
    cluster.heal(0);
    routed_peers_become(&cluster, [2, 2, 2]).await;
}

/// A request on `subject` with `body` through `nc`, waited for at most
/// `within`: the reply, or why there is none.
async fn request_within(
    nc: &async_nats::Client,
    subject: String,
    body: Vec<u8>,
    within: Duration,
) -> Result<async_nats::Message, String> {
    match tokio::time::timeout(within, nc.request(subject, body.into())).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no reply within {within:?}")),
    }
}

/// Moves the leadership of every stream of the account off node `off`
/// (asking its leader to step down until another node leads it), through
/// node `via`.
async fn lead_every_stream_elsewhere(cluster: &Cluster, via: usize, off: usize) {
    let nc = async_nats::connect(cluster.url(via)).await.unwrap();
    let js = async_nats::jetstream::new(nc.clone());
    let names: Vec<String> = js
        .stream_names()
        .map(|n| n.expect("list the streams"))
        .collect()
        .await;
    for name in names {
        let deadline = tokio::time::Instant::now() + PATIENT;
        loop {
            match cluster.stream_leader(via, &name).await {
                Some(leader) if leader != off => break,
                Some(_) => {
                    let _ = request_within(
                        &nc,
                        format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"),
                        Vec::new(),
                        Duration::from_secs(5),
                    )
                    .await;
                }
                None => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is still led by node {off} after {PATIENT:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The last message on `subject` of `stream` by the direct-get API (any
/// replica may answer), as text, or why there is none (within a second).
async fn direct_get_last(
    nc: &async_nats::Client,
    stream: &str,
    subject: &str,
) -> Result<String, String> {
    let body = serde_json::json!({ "last_by_subj": subject }).to_string();
    let m = request_within(
        nc,
        format!("$JS.API.DIRECT.GET.{stream}"),
        body.into_bytes(),
        Duration::from_secs(1),
    )
    .await?;
    if let Some(status) = m.status {
        if status != async_nats::StatusCode::OK {
            return Err(format!("status {status}: {:?}", m.description));
        }
    }
    Ok(String::from_utf8_lossy(&m.payload).into_owned())
}

/// A root the cfo issues to `lead` and its delegation to `worker`, both
/// with `grant`, sent through `nc` until answered and recorded in
/// `ledger`: the root and the leaf.
async fn recorded_tree(
    nc: &async_nats::Client,
    ledger: &Ledger,
    lead: &str,
    worker: &str,
    grant: &str,
) -> (MandateId, MandateId) {
    let mandate_of = |r: Result<mandate::protocol::CommandResult, _>| {
        r.expect("accepted").mandate.expect("a mandate")
    };
    let issue = Command::Issue(root_issue("cfo", lead, None, &[grant]));
    let root = mandate_of(sent(nc, ledger, principal("cfo"), issue).await);
    let delegate = Command::Delegate(delegation(root, worker, &[grant]));
    let leaf = mandate_of(sent(nc, ledger, agent(lead), delegate).await);
    (root, leaf)
}

/// The cfo's revoke of `mandate`, sent through `nc` until an engine
/// answers (always with the same command id: while a stream elects a
/// leader an engine answers `unavailable`).
async fn cfo_revokes_until_answered(
    nc: &async_nats::Client,
    mandate: MandateId,
    reason: &str,
) -> Result<mandate::protocol::CommandResult, mandate::protocol::ErrorBody> {
    let revoke = Command::Revoke(Change {
        mandate,
        reason: Some(reason.into()),
    });
    send_envelope_until_answered(nc, &envelope("acme", principal("cfo"), revoke)).await
}

/// `command` as `actor`, sent through `nc` until an engine answers (always
/// with the same command id), its answer recorded in `ledger`.
async fn sent(
    nc: &async_nats::Client,
    ledger: &Ledger,
    actor: Actor,
    command: Command,
) -> Result<mandate::protocol::CommandResult, mandate::protocol::ErrorBody> {
    recorded(nc, ledger, envelope("acme", actor, command)).await
}

/// A fresh check of `leaf` through `c`, which must never allow: denied as
/// `status`, refused `unavailable`, or not answered (within `c`'s timeout:
/// NATS spreads a queue group's requests over every member, so some go to
/// an engine across a cut route and are lost; or no responders, while a
/// healed node's routes and subscriptions are set up again). Returns which (`"denied"`,
/// `"unavailable"` or `"no answer"`).
async fn check_never_allows(c: &Client, leaf: MandateId, status: Status) -> &'static str {
    match c.check(leaf, "fin:read", "ledger/q3", None).await {
        Ok(d) => {
            assert!(!d.is_allowed(), "allowed under a revoked mandate: {d:?}");
            assert_denied_as(&d, status);
            "denied"
        }
        Err(ClientError::TimedOut(_) | ClientError::NoEngine(_)) => "no answer",
        Err(e) => {
            assert_eq!(code_of(&e), ErrorCode::Unavailable, "{e:?}");
            "unavailable"
        }
    }
}

/// (d) A fresh check through an engine whose node lags. Node `lagging`
/// (none of whose streams it leads) is isolated: its routes carry nothing,
/// it and its engine stay up and connected. A revoke goes through another
/// engine and is stored by the other two nodes. Checks through the lagging
/// node (only its own engine can answer them while it is cut off) never
/// allow: each reads the tree's head from the event stream's leader
/// (`STREAM.MSG.GET`), which the lagging node cannot reach, so each is
/// refused `unavailable` (or, passed by NATS to an engine across the cut,
/// not answered); a deny as revoked would do too. Once healed, they deny
/// as revoked. The control shows the replica really lagged and a direct
/// read would have answered stale: an R3 stream with `allow_direct`,
/// written while the node lags, answers a direct get through that node
/// with the value from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_check_through_a_lagging_replica_never_allows_a_revoked_mandate() {
    let cluster = Cluster::start_with_route_relays().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _engines = engines_on_every_node(&cluster, tmp.path());
    let nc = cluster.connect().await;
    serving_soon(&nc, NODES, tmp.path()).await;

    let grant = "fin:read on ledger/*";
    let root = issue(&nc, root_issue("cfo", "lead", None, &[grant])).await;
    let leaf = delegate(&nc, "lead", root, "worker", &[grant]).await;

    // The control: a replicated stream that allows direct gets.
    let js = async_nats::jetstream::new(nc.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "LAG_PROBE".into(),
        subjects: vec!["lag.probe".into()],
        num_replicas: NODES,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("create the control stream");
    js.publish("lag.probe", "before".into())
        .await
        .unwrap()
        .await
        .expect("the control's first value is stored");

    let leader = cluster
        .stream_leader(0, "MANDATE_EVENTS")
        .await
        .expect("the event stream has a leader");
    let lagging = (leader + 1) % NODES;
    lead_every_stream_elsewhere(&cluster, leader, lagging).await;
    let on_lagging = async_nats::connect(cluster.url(lagging)).await.unwrap();
    let on_leader = async_nats::connect(cluster.url(leader)).await.unwrap();
    let worker = client(&on_lagging, "acme", agent("worker")).with_timeout(CHECK_TIMEOUT);
    assert!(worker
        .check(leaf, "fin:read", "ledger/q3", None)
        .await
        .expect("a check before the partition")
        .is_allowed());
    patiently(
        "the lagging node's replica holds the control's value",
        || {
            let on_lagging = on_lagging.clone();
            async move {
                direct_get_last(&on_lagging, "LAG_PROBE", "lag.probe").await == Ok("before".into())
            }
        },
    )
    .await;

    eprintln!("isolating node {lagging}; the event stream's leader is node {leader}");
    cluster.isolate(lagging);
    cfo_revokes_until_answered(&on_leader, root, "while a replica lags")
        .await
        .expect("the revoke is accepted by the majority");
    let js_leader = async_nats::jetstream::new(on_leader.clone());
    js_leader
        .publish("lag.probe", "after".into())
        .await
        .unwrap()
        .await
        .expect("the control's second value is stored by the majority");

    // NATS passes each direct get to one member of the replicas' queue
    // group, at random: the lagging node's own answers at once, one across
    // the cut route is lost. Asked until the lagging replica answers (40
    // times at most: all lost by chance is (2/3)^40).
    let mut control: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let got = direct_get_last(&on_lagging, "LAG_PROBE", "lag.probe")
            .await
            .unwrap_or_else(|_| "no reply".into());
        assert_ne!(
            got, "after",
            "the isolated replica cannot hold the new value"
        );
        *control.entry(got).or_insert(0) += 1;
        if control.contains_key("before") {
            break;
        }
    }
    eprintln!("direct gets through the lagging node: {control:?}");
    assert!(
        control.contains_key("before"),
        "the lagging replica answers a direct get with the value from before: {control:?}"
    );

    let mut outcomes = HashMap::new();
    for _ in 0..3 {
        *outcomes
            .entry(check_never_allows(&worker, leaf, Status::Revoked).await)
            .or_insert(0) += 1;
    }
    eprintln!("fresh checks through the lagging node's engine: {outcomes:?}");

    cluster.heal(lagging);
    let deadline = tokio::time::Instant::now() + PATIENT;
    while check_never_allows(&worker, leaf, Status::Revoked).await != "denied" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lagging node's engine never denied as revoked after the heal"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    patiently("the healed node's replica catches up", || {
        let on_lagging = on_lagging.clone();
        async move { direct_get_last(&on_lagging, "LAG_PROBE", "lag.probe").await == Ok("after".into()) }
    })
    .await;
}

/// (e) The event stream leader's node partitioned away (isolated, not
/// killed) in the middle of a burst from clients on every node: the other
/// two elect a leader and their engines keep acknowledging; the cut-off
/// node's engine acknowledges nothing that is lost (every acknowledged
/// command is in the stream exactly once after the heal); fresh checks
/// through it never allow under a mandate the majority revoked meanwhile;
/// nothing is live under an ended mandate; every projection equals a
/// rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_node_acknowledges_nothing_that_is_lost() {
    let cluster = Cluster::start_with_route_relays().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut engines = engines_on_every_node(&cluster, tmp.path());
    let nc = cluster.connect().await;
    serving_soon(&nc, NODES, tmp.path()).await;

    let grant = "fin:read on ledger/*";
    let ledger = Arc::new(Ledger::default());
    let (root, leaf) = recorded_tree(&nc, &ledger, "lead", "worker", grant).await;
    let cut = cluster
        .stream_leader(0, "MANDATE_EVENTS")
        .await
        .expect("the event stream has a leader");
    let majority = (cut + 1) % NODES;
    let on_cut = async_nats::connect(cluster.url(cut)).await.unwrap();
    let on_majority = async_nats::connect(cluster.url(majority)).await.unwrap();
    let worker = client(&on_cut, "acme", agent("worker")).with_timeout(CHECK_TIMEOUT);
    assert!(worker
        .check(leaf, "fin:read", "ledger/q3", None)
        .await
        .expect("a check before the partition")
        .is_allowed());

    // One client per node, one batch each.
    let (tasks, batches) = (NODES, 1);
    let total = tasks * batches * 61;
    let urls = (0..NODES).map(|i| cluster.url(i)).collect();
    let driver = tokio::spawn(burst_on(urls, tasks, batches, ledger.clone()));
    answered_at_least(&ledger, total / 4).await;

    eprintln!("isolating node {cut}, the event stream's leader");
    cluster.isolate(cut);
    let at_cut = ledger.answered.load(std::sync::atomic::Ordering::SeqCst);
    let revoked = sent(
        &on_majority,
        &ledger,
        principal("cfo"),
        Command::Revoke(Change {
            mandate: root,
            reason: Some("while the old leader is cut off".into()),
        }),
    )
    .await;
    assert!(
        revoked.is_ok(),
        "the majority accepts the revoke: {revoked:?}"
    );
    let mut outcomes = HashMap::new();
    for _ in 0..3 {
        *outcomes
            .entry(check_never_allows(&worker, leaf, Status::Revoked).await)
            .or_insert(0) += 1;
    }
    eprintln!("fresh checks through the cut-off node's engine: {outcomes:?}");

    patiently("the majority elects a leader of its own", || {
        let cluster = &cluster;
        async move {
            cluster
                .stream_leader(majority, "MANDATE_EVENTS")
                .await
                .is_some_and(|l| l != cut)
        }
    })
    .await;
    // Clients of the majority's nodes keep being answered.
    answered_at_least(&ledger, at_cut + 30).await;
    cluster.heal(cut);
    driver.await.expect("the burst completes");
    eprintln!("{}", ledger.summary());

    assert_each_command_once(&nc, &ledger).await;
    assert_outcome(&nc, &ledger).await;
    let mut roots = ledger.roots.lock().unwrap().clone();
    roots.push(root);
    assert_nothing_live_under_an_ended_mandate(&nc, &roots).await;
    let deadline = tokio::time::Instant::now() + PATIENT;
    while check_never_allows(&worker, leaf, Status::Revoked).await != "denied" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the healed node's engine never denied as revoked"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_projections_equal_rebuilds(&nc, &mut engines, tmp.path()).await;
}

/// (f) Two of three nodes lost (killed). The survivor lagged first: it
/// was isolated while the other two stored a revoke, so its copy of the
/// stream is stale. With the other two dead no leader can be elected:
/// fresh checks through the survivor never allow (neither under the
/// revoked mandate nor under a live one: they are refused `unavailable`,
/// or reach no engine), and a command is refused `unavailable`. When the
/// nodes come back, service resumes: the command, sent again with its
/// id, is accepted; the revoke holds on the survivor; nothing acknowledged
/// was lost and nothing was stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_nodes_lost_nothing_is_answered_from_a_stale_copy() {
    let mut cluster = Cluster::start_with_route_relays().await;
    if !trusted_with_replicas(&cluster).await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _engines = engines_on_every_node(&cluster, tmp.path());
    let nc = cluster.connect().await;
    serving_soon(&nc, NODES, tmp.path()).await;

    let grant = "fin:read on ledger/*";
    let ledger = Arc::new(Ledger::default());
    let (_, live) = recorded_tree(&nc, &ledger, "lead", "worker", grant).await;
    let (doomed, under_doomed) = recorded_tree(&nc, &ledger, "lead2", "worker", grant).await;

    let leader = cluster
        .stream_leader(0, "MANDATE_EVENTS")
        .await
        .expect("the event stream has a leader");
    let survivor = (leader + 1) % NODES;
    lead_every_stream_elsewhere(&cluster, leader, survivor).await;
    let on_survivor = async_nats::connect(cluster.url(survivor)).await.unwrap();
    let on_leader = async_nats::connect(cluster.url(leader)).await.unwrap();
    let worker = client(&on_survivor, "acme", agent("worker")).with_timeout(CHECK_TIMEOUT);
    for m in [live, under_doomed] {
        patiently("the survivor's engine allows before the loss", || {
            let worker = worker.clone();
            async move {
                worker
                    .check(m, "fin:read", "ledger/q3", None)
                    .await
                    .is_ok_and(|d| d.is_allowed())
            }
        })
        .await;
    }

    cluster.isolate(survivor);
    let revoked = sent(
        &on_leader,
        &ledger,
        principal("cfo"),
        Command::Revoke(Change {
            mandate: doomed,
            reason: Some("stored by two nodes".into()),
        }),
    )
    .await;
    assert!(
        revoked.is_ok(),
        "the two connected nodes store the revoke: {revoked:?}"
    );
    let lost: Vec<usize> = (0..NODES).filter(|&i| i != survivor).collect();
    eprintln!("killing nodes {lost:?}; node {survivor} survives with a stale copy");
    for &i in &lost {
        cluster.kill(i);
    }
    cluster.heal(survivor);

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for m in [live, under_doomed, live, under_doomed] {
        let outcome = match worker.check(m, "fin:read", "ledger/q3", None).await {
            Ok(d) => panic!("a fresh check answered with two of three nodes lost: {d:?}"),
            Err(ClientError::TimedOut(_) | ClientError::NoEngine(_)) => "no answer".to_string(),
            Err(e) => {
                assert_eq!(code_of(&e), ErrorCode::Unavailable, "{e:?}");
                "unavailable".to_string()
            }
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    let late = envelope(
        "acme",
        principal("cfo"),
        Command::Issue(root_issue("cfo", "late", None, &[grant])),
    );
    let subject = command_subject(&late.tenant, late.command.verb());
    let body = serde_json::to_vec(&late).unwrap();
    match request_within(
        &on_survivor,
        subject.clone(),
        body.clone(),
        Duration::from_secs(30),
    )
    .await
    {
        Ok(m) => {
            let reply: mandate::protocol::Reply<mandate::protocol::CommandResult> =
                serde_json::from_slice(&m.payload).expect("a reply decodes");
            let e = reply
                .into_result()
                .expect_err("a command accepted with two of three nodes lost");
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            *outcomes.entry("command unavailable".into()).or_insert(0) += 1;
        }
        Err(why) => {
            *outcomes.entry(format!("command: {why}")).or_insert(0) += 1;
        }
    }
    eprintln!("with two nodes lost: {outcomes:?}");

    for &i in &lost {
        cluster.restart(i);
    }
    let answer = send_until_answered(&on_survivor, &subject, body).await;
    assert!(
        answer.is_ok(),
        "the command is accepted once the nodes are back: {answer:?}"
    );
    ledger
        .answers
        .lock()
        .unwrap()
        .push((late.command_id, false, answer));
    let deadline = tokio::time::Instant::now() + PATIENT;
    while check_never_allows(&worker, under_doomed, Status::Revoked).await != "denied" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the survivor's engine never denied as revoked"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    patiently("a check under the live mandate allows again", || {
        let worker = worker.clone();
        async move {
            worker
                .check(live, "fin:read", "ledger/q3", None)
                .await
                .is_ok_and(|d| d.is_allowed())
        }
    })
    .await;
    let nc = cluster.connect().await;
    assert_each_command_once(&nc, &ledger).await;
}
