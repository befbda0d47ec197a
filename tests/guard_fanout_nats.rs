//! Many guards in one process, against a real nats-server and a real engine.
//!
//! - guards on one connection share one subscription per signal subject, as
//!   the server itself counts them, and the last guard of a subject
//!   unsubscribes;
//! - revoking a root stops every guard below it, through the root's subject
//!   alone;
//! - guards whose subscription ends (the connection drained) deny at once.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fixtures::{
    agent, delegation, eventually, guard_config, principal, root_issue, PATIENCE,
};
use common::served::Instance;
use common::wire::{client, serving};
use common::NatsServer;
use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardState};
use mandate::domain::command::Issue;
use mandate::domain::MandateId;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A lease and heartbeat far beyond a test's patience: only a signal can
/// stop a guard while the test runs.
const QUIET: (Duration, Duration) = (Duration::from_secs(600), Duration::from_secs(300));

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
    Guard::start(
        client.as_actor(agent(holder)),
        hub,
        m,
        guard_config(QUIET.0, QUIET.1),
    )
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
    // The root, five middles and five hundred leaves: one subscription each.
    assert_eq!(hub.subscriptions(), 1 + 5 + 500);
    assert!(guards
        .iter()
        .all(|g| g.check("finance:read", "reports/q3").is_allowed()));

    client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .expect("revoke the root");
    let stopped = futures::future::join_all(guards.iter().map(|g| {
        let cancel = g.cancellation();
        async move { cancel.cancelled().await }
    }));
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .unwrap_or_else(|_| {
            let running = guards
                .iter()
                .filter(|g| !g.cancellation().is_cancelled())
                .count();
            panic!("{running} of 500 guards still run after their root was revoked")
        });
    assert!(guards
        .iter()
        .all(|g| !g.check("finance:read", "reports/q3").is_allowed()));
}

/// A server configuration that also serves monitoring on `http_port`.
fn monitored(store: &Path, http_port: u16) -> PathBuf {
    let path = store.join("monitored.conf");
    let text = format!(
        "http: \"127.0.0.1:{http_port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
        store.join("js").display()
    );
    std::fs::write(&path, text).expect("write the server configuration");
    path
}

/// The signal subjects the server holds subscriptions on for the
/// connection named `name`, one entry per subscription (`/connz?subs=1`).
async fn signal_subscriptions(http_port: u16, name: &str) -> Vec<String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .expect("connect to the monitoring port");
    tcp.write_all(b"GET /connz?subs=1&limit=1024 HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).expect("a text response");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .expect("an HTTP response with a body");
    let connz: Value = serde_json::from_str(body).expect("connz is JSON");
    let conns = connz["connections"].as_array().expect("a connection list");
    let conn = conns
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no connection named {name} in {connz}"));
    conn["subscriptions_list"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .filter_map(|s| s.as_str())
                .filter(|s| s.starts_with("mandate.sig."))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_on_one_connection_share_a_subscription_per_subject_until_the_last_lets_go() {
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = NatsServer::start_with_config(|store| monitored(store, http_port));
    let dir = tempfile::tempdir().unwrap();
    let _engine = Instance::start(&server.url(), dir.path()).await;
    let nc = async_nats::connect(server.url()).await.expect("connect");
    serving(&nc, "acme").await;
    let (root, leaves) = tree(&nc, 1, 3).await;

    let guards_nc = async_nats::ConnectOptions::new()
        .name("guards")
        .connect(server.url())
        .await
        .expect("connect the guards");
    let agents = client(&guards_nc, "acme", agent("a0"));
    let hub = GuardHub::new();
    // Ten guards on each of three leaves: thirty guards, each watching
    // three subjects, over five distinct subjects.
    let mut guards = Vec::new();
    for (holder, leaf) in &leaves {
        for _ in 0..10 {
            guards.push(start(&agents, &hub, holder, *leaf).await);
        }
    }
    let mut subs = signal_subscriptions(http_port, "guards").await;
    subs.sort();
    let mut distinct = subs.clone();
    distinct.dedup();
    assert_eq!(
        subs.len(),
        5,
        "one subscription per subject, over {} subjects",
        distinct.len()
    );
    assert_eq!(distinct.len(), 5, "{subs:?}");
    assert_eq!(hub.subscriptions(), 5);

    // All but one guard of the first leaf go: its chain's three subjects
    // stay, the other two leaves' are let go.
    let last = guards.remove(0);
    drop(guards);
    eventually(
        "the server holds the last guard's three subscriptions",
        || async { signal_subscriptions(http_port, "guards").await.len() == 3 },
    )
    .await;
    assert_eq!(hub.subscriptions(), 3);

    // The one left still hears its root.
    client(&nc, "acme", principal("cfo"))
        .revoke(root, None)
        .await
        .expect("revoke the root");
    tokio::time::timeout(PATIENCE, last.cancellation().cancelled())
        .await
        .expect("the last guard stops when its root is revoked");

    drop(last);
    eventually(
        "the last guard's subscriptions are gone from the server",
        || async { signal_subscriptions(http_port, "guards").await.is_empty() },
    )
    .await;
    assert_eq!(hub.subscriptions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_whose_subscription_ends_deny_at_once_not_a_lease_later() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _engine = Instance::start(&server.url(), dir.path()).await;
    let nc = async_nats::connect(server.url()).await.expect("connect");
    serving(&nc, "acme").await;
    let (_root, leaves) = tree(&nc, 1, 2).await;

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
