//! Many guards in one process, against a real nats-server and a real engine.
//!
//! - guards on one connection share one consumer of their tenant's signals,
//!   as the server itself counts them, and the last guard to go ends it;
//! - revoking a root stops every guard below it, through the root's subject
//!   alone;
//! - guards whose subscription ends (the connection drained) deny at once.

mod common;

use std::time::Duration;

use common::fixtures::{
    agent, delegation, eventually, guard_config, principal, root_issue, PATIENCE,
};
use common::served::Instance;
use common::wire::{client, serving};
use common::NatsServer;
use futures::TryStreamExt;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardState};
use mandate::domain::command::Issue;
use mandate::domain::{DenyReason, MandateId, Status};

/// A lease far beyond a test's patience: only a signal can stop a guard
/// while the test runs.
const QUIET: Duration = Duration::from_secs(600);

const GRANTS: [&str; 1] = ["finance:read on reports/**"];

/// A root for agent `a0`, with `mids` delegations below it and `leaves`
/// below each of those (depth 3). Returns the root, and each leaf with the
/// agent holding it.
async fn tree(
    nc: &async_nats::Client,
    mids: usize,
    leaves: usize,
) -> (MandateId, Vec<(String, MandateId)>) {
    let cfo = client(nc, "acme", principal("cfo"));
    let root = cfo
        .issue(Issue {
            depth: 5,
            ..root_issue("cfo", "a0", None, &GRANTS)
        })
        .await
        .expect("issue the root")
        .mandate
        .unwrap();
    let mut held = Vec::new();
    for i in 0..mids {
        let mid = client(nc, "acme", agent("a0"))
            .delegate(delegation(root, &format!("m{i}"), &GRANTS))
            .await
            .expect("delegate a middle mandate")
            .mandate
            .unwrap();
        let holder = client(nc, "acme", agent(&format!("m{i}")));
        for j in 0..leaves {
            let name = format!("l{i}-{j}");
            let leaf = holder
                .delegate(delegation(mid, &name, &GRANTS))
                .await
                .expect("delegate a leaf")
                .mandate
                .unwrap();
            held.push((name, leaf));
        }
    }
    (root, held)
}

async fn start(client: &Client, hub: &GuardHub, holder: &str, m: MandateId) -> Guard {
    Guard::start(client.as_actor(agent(holder)), hub, m, guard_config(QUIET))
        .await
        .expect("start a guard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_guards_on_one_client_all_stop_when_their_root_is_revoked() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _engine = Instance::start(&server.url(), dir.path()).await;
    let nc = async_nats::connect(server.url()).await.expect("connect");
    serving(&nc, "acme").await;
    let (root, leaves) = tree(&nc, 5, 100).await;

    let agents = client(&nc, "acme", agent("a0"));
    let hub = GuardHub::new();
    let mut guards = Vec::new();
    for (holder, leaf) in &leaves {
        guards.push(start(&agents, &hub, holder, *leaf).await);
    }
    // Five hundred guards, one tenant, one connection: one feed.
    assert_eq!(hub.subscriptions(), 1);
    assert!(guards
        .iter()
        .all(|g| g.check("finance:read", "reports/q3").is_allowed()));

    client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .expect("revoke the root");
    all_stop(&guards, PATIENCE, || "after their root was revoked".into()).await;
    assert!(guards
        .iter()
        .all(|g| !g.check("finance:read", "reports/q3").is_allowed()));
}

/// A termination heard for a mandate makes every guard below it deny at
/// once, before any of their cancellations fires: a thread watching the
/// tokens sees the first one fire, and from then on no guard of the tree
/// whose own cancellation has not fired yet may allow. Afterwards each one
/// stays terminated, through a re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_any_guard_below_a_revoked_root_stops_none_below_it_allows() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let g = guarded(&server, dir.path(), (4, 250)).await;
    let tokens: Vec<_> = g.guards.iter().map(Guard::cancellation).collect();

    let cfo = client(&g.nc, "acme", principal("cfo"));
    let (not_yet_stopped, allowing) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            // Spins until some guard's cancellation has fired (the hub's
            // pass over them has begun), then asks each guard whose own
            // cancellation has not fired yet.
            let deadline = std::time::Instant::now() + PATIENCE;
            while !tokens.iter().any(|t| t.is_cancelled()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no guard stopped after their root was revoked"
                );
                std::hint::spin_loop();
            }
            let (mut pending, mut allowing) = (0, 0);
            for (guard, token) in g.guards.iter().zip(&tokens) {
                if !token.is_cancelled() {
                    pending += 1;
                    if guard.allows("finance:read", "reports/q3") {
                        allowing += 1;
                    }
                }
            }
            (pending, allowing)
        });
        let revoked = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(cfo.revoke(g.root, None))
        });
        revoked.expect("revoke the root");
        watcher.join().expect("the watching thread")
    });
    assert_eq!(
        allowing, 0,
        "{allowing} of the {not_yet_stopped} guards not stopped yet when the first of {} stopped still allowed",
        g.guards.len()
    );
    all_stop(&g.guards, PATIENCE, || {
        "after their root was revoked".into()
    })
    .await;
    for guard in &g.guards {
        assert_eq!(guard.state(), GuardState::Terminated(Status::Revoked));
        let d = guard.check("finance:read", "reports/q3");
        assert!(
            matches!(
                d.reason,
                Some(DenyReason::NotActive {
                    status: Status::Revoked,
                    ..
                })
            ),
            "a guard below the revoked root decided {d:?}"
        );
    }
    // A re-read of one of them does not bring it back.
    g.guards[0].refresh().await.expect("re-read");
    assert_eq!(g.guards[0].state(), GuardState::Terminated(Status::Revoked));
    assert!(!g.guards[0].allows("finance:read", "reports/q3"));
}

/// Waits until every guard's cancellation has fired, for at most `within`;
/// otherwise fails saying how many still run, and why they should not
/// (`why`, asked only then).
async fn all_stop(guards: &[Guard], within: Duration, why: impl Fn() -> String) {
    let stopped = futures::future::join_all(guards.iter().map(|g| {
        let cancel = g.cancellation();
        async move { cancel.cancelled().await }
    }));
    if tokio::time::timeout(within, stopped).await.is_err() {
        let running = guards
            .iter()
            .filter(|g| !g.cancellation().is_cancelled())
            .count();
        panic!("{running} of {} guards still run {}", guards.len(), why());
    }
}

/// An engine on `server`, a tree of `mids` × `leaves`, and a guard of each
/// leaf on a connection of their own sharing one hub, all allowing.
struct Guarded {
    _engine: Instance,
    nc: async_nats::Client,
    guards_nc: async_nats::Client,
    root: MandateId,
    hub: GuardHub,
    guards: Vec<Guard>,
}

async fn guarded(
    server: &NatsServer,
    dir: &std::path::Path,
    (mids, leaves): (usize, usize),
) -> Guarded {
    let engine = Instance::start(&server.url(), dir).await;
    let nc = async_nats::connect(server.url()).await.expect("connect");
    serving(&nc, "acme").await;
    let (root, leaves) = tree(&nc, mids, leaves).await;
    let guards_nc = async_nats::connect(server.url()).await.expect("connect");
    let agents = client(&guards_nc, "acme", agent("a0"));
    let hub = GuardHub::new();
    let mut guards = Vec::new();
    for (holder, leaf) in &leaves {
        guards.push(start(&agents, &hub, holder, *leaf).await);
    }
    assert!(guards
        .iter()
        .all(|g| g.check("finance:read", "reports/q3").is_allowed()));
    Guarded {
        _engine: engine,
        nc,
        guards_nc,
        root,
        hub,
        guards,
    }
}

/// The consumers the guards' hubs hold on the signal stream.
async fn hub_consumers(nc: &async_nats::Client) -> Vec<String> {
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js
        .get_stream_no_info("MANDATE_SIGNALS")
        .await
        .expect("the signal stream");
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .expect("consumer names");
    names
        .into_iter()
        .filter(|n| n.starts_with("mandate_hub_"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_on_one_connection_share_one_consumer_until_the_last_lets_go() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _engine = Instance::start(&server.url(), dir.path()).await;
    let nc = async_nats::connect(server.url()).await.expect("connect");
    serving(&nc, "acme").await;
    let (root, leaves) = tree(&nc, 1, 3).await;

    let guards_nc = async_nats::connect(server.url())
        .await
        .expect("connect the guards");
    let agents = client(&guards_nc, "acme", agent("a0"));
    let hub = GuardHub::new();
    // Ten guards on each of three leaves: thirty guards, one tenant, one
    // connection.
    let mut guards = Vec::new();
    for (holder, leaf) in &leaves {
        for _ in 0..10 {
            guards.push(start(&agents, &hub, holder, *leaf).await);
        }
    }
    assert_eq!(
        hub_consumers(&nc).await.len(),
        1,
        "one consumer for thirty guards"
    );
    assert_eq!(hub.subscriptions(), 1);

    // All but one guard go: the feed stays for the last one.
    let last = guards.remove(0);
    drop(guards);
    assert_eq!(hub.subscriptions(), 1);
    assert_eq!(hub_consumers(&nc).await.len(), 1);

    // The one left still hears its root.
    client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .expect("revoke the root");
    tokio::time::timeout(PATIENCE, last.cancellation().cancelled())
        .await
        .expect("the last guard stops when its root is revoked");
    // The signal came twice (straight from its publish, and from the
    // stream) and was handed out once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.stats().signals, 1, "{:?}", hub.stats());

    drop(last);
    assert_eq!(hub.subscriptions(), 0);
    eventually(
        "the last guard's consumer is gone from the server",
        || async { hub_consumers(&nc).await.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_whose_subscription_ends_deny_at_once_not_a_lease_later() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let s = guarded(&server, dir.path(), (1, 2)).await;
    let (guards_nc, hub, guards) = (s.guards_nc, s.hub, s.guards);

    // The connection drains: its subscriptions end, and no signal can reach
    // these guards any more. Their lease (ten minutes) has not run out, so
    // only noticing the end can make them deny.
    guards_nc
        .drain()
        .await
        .expect("drain the guards' connection");
    eventually(
        "every guard denies once its subscriptions have ended",
        || async {
            guards.iter().all(|g| {
                g.state() == GuardState::Stale
                    && !g.check("finance:read", "reports/q3").is_allowed()
            })
        },
    )
    .await;
    assert_eq!(hub.subscriptions(), 0, "ended subscriptions are let go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_made_while_the_server_restarts_reaches_every_guard() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let s = guarded(&server, dir.path(), (2, 10)).await;
    let (nc, root, hub, guards) = (s.nc, s.root, s.hub, s.guards);

    // The server goes down and comes back (its stores kept); the revoke is
    // made as soon as the engine answers again, while the guards' process
    // may still be reconnecting, and its consumer is gone with the server.
    server.stop();
    server.restart();
    let cfo = client(&nc, "acme", principal("cfo"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match cfo.revoke(root, Some("during the restart".into())).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the engine never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // No guard reads on its own (leases of ten minutes): only the signal,
    // replayed to a consumer made again after the restart, can stop them.
    all_stop(&guards, Duration::from_secs(30), || {
        format!("after a revoke made during the restart ({:?})", hub.stats())
    })
    .await;
    assert!(guards
        .iter()
        .all(|g| !g.check("finance:read", "reports/q3").is_allowed()));
}
