//! Beacons (issue 13): every engine instance over NATS publishes one per
//! tenant it serves, at its configured interval, on
//! `mandate.sig.<tenant>.beacon`, into the signal stream, which keeps only
//! each tenant's latest; the embedded engine publishes none. Against a real
//! nats-server (and a real `mandate serve` process for the flag).

mod common;

use std::process::{Command as Process, Stdio};

use common::prelude::*;
use futures::StreamExt;
use mandate::engine::signals::SIGNAL_STREAM;
use mandate::engine::{Engine, EngineConfig};
use mandate::protocol::{beacon_subject, Beacon};

/// Beacons heard on `t`'s beacon subject over `window`, each decoded.
async fn beacons_over(nc: &async_nats::Client, t: &str, window: Duration) -> Vec<Beacon> {
    let mut sub = nc.subscribe(beacon_subject(&tenant(t))).await.unwrap();
    let deadline = tokio::time::Instant::now() + window;
    let mut heard = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        heard.push(serde_json::from_slice(&m.payload).expect("a beacon decodes as Beacon"));
    }
    heard
}

/// How many messages the signal stream holds on `t`'s beacon subject.
async fn stored_beacons(nc: &async_nats::Client, t: &str) -> u64 {
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream(SIGNAL_STREAM).await.unwrap();
    let subject = beacon_subject(&tenant(t));
    let mut subjects = stream.info_with_subjects(&subject).await.unwrap();
    let mut found = 0;
    while let Some(s) = subjects.next().await {
        let (name, count) = s.unwrap();
        if name == subject {
            found += count as u64;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_tenants_each_get_beacons_at_the_configured_interval_kept_once_in_the_stream() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("engine");
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let mut child = Some(
        Process::new(env!("CARGO_BIN_EXE_mandate"))
            .arg("--data")
            .arg(&data)
            .args(["--nats", &server.url(), "serve", "--allow-open-tenants"])
            .args(["--tenant", "acme,globex", "--beacon-interval", "200ms"])
            .env_remove("MANDATE_NATS")
            .env_remove("MANDATE_TENANT")
            .env_remove("MANDATE_TEST_ABORT_AT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mandate serve"),
    );
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    // 2 s at 200 ms: about 10 each; the bounds only catch a wrong interval
    // or a missing tenant, not a slow machine.
    let (acme_heard, globex_heard) = tokio::join!(
        beacons_over(&nc, "acme", Duration::from_secs(2)),
        beacons_over(&nc, "globex", Duration::from_secs(2)),
    );
    for (t, heard) in [("acme", &acme_heard), ("globex", &globex_heard)] {
        assert!(
            (4..=20).contains(&heard.len()),
            "{} beacons for {t} in 2 s at 200 ms",
            heard.len()
        );
        for b in heard.iter() {
            assert_eq!(b.tenant, tenant(t), "a tenant's beacon names it");
            assert_eq!(b.interval_ms, 200, "a beacon says its interval");
            assert_eq!(b.schema_version, mandate::domain::SCHEMA_VERSION);
        }
        assert!(
            heard.windows(2).all(|w| w[0].time <= w[1].time),
            "beacons come in order"
        );
    }
    // Stored in the signal stream, where a follower takes them in order.
    for t in ["acme", "globex"] {
        assert!(
            stored_beacons(&nc, t).await >= 4,
            "{t}'s beacons are stored"
        );
    }
    // A tenant not served gets none.
    assert!(beacons_over(&nc, "initech", Duration::from_millis(600))
        .await
        .is_empty());
    common::kill9(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serving_every_tenant_sends_beacons_for_the_tenants_it_knows() {
    let config = EngineConfig {
        allow_open_tenants: true,
        beacon_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let (_server, _dir, instance, nc) = serve_one_with("acme", config).await;
    // No tree anywhere yet: no tenant known.
    assert!(beacons_over(&nc, "acme", Duration::from_millis(500))
        .await
        .is_empty());
    issue(
        &nc,
        root_issue("cfo", "lead", None, &["fin:read on ledger/*"]),
    )
    .await;
    let c = client(&nc, "globex", principal("cfo"));
    issued(
        &c,
        root_issue("cfo", "lead", None, &["fin:read on ledger/*"]),
    )
    .await;
    for t in ["acme", "globex"] {
        let heard = beacons_over(&nc, t, Duration::from_secs(1)).await;
        assert!(!heard.is_empty(), "{t} has a tree: it gets beacons");
        assert!(heard
            .iter()
            .all(|b| b.instance == instance.engine.instance()));
    }
    let (sent, failed) = instance.engine.beacons_sent();
    assert!(sent > 0 && failed == 0, "{sent} sent, {failed} failed");
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_engine_sends_no_beacons() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        beacon_interval: Duration::from_millis(50),
        tenants: vec![acme()],
        ..EngineConfig::default()
    };
    let engine = Engine::embedded(dir.path(), config).await.unwrap();
    let background = engine.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        engine.beacons_sent(),
        (0, 0),
        "in process, no beacon at all"
    );
    background.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_beacon_interval_is_refused_naming_it() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let out = Process::new(env!("CARGO_BIN_EXE_mandate"))
        .arg("--data")
        .arg(tmp.path().join("engine"))
        .args(["--nats", &server.url(), "serve", "--allow-open-tenants"])
        .args(["--beacon-interval", "0ms"])
        .env_remove("MANDATE_NATS")
        .output()
        .expect("run mandate serve");
    assert_eq!(out.status.code(), Some(2), "invalid input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--beacon-interval"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stream_made_by_an_older_build_is_updated_for_its_duplicate_window() {
    let server = NatsServer::start();
    let nc = connect(&server).await;
    let js = async_nats::jetstream::new(nc.clone());
    // As an older build made it: the window of its choice.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: SIGNAL_STREAM.into(),
        subjects: vec!["mandate.sig.>".into()],
        duplicate_window: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        allow_open_tenants: true,
        tenants: vec![acme()],
        beacon_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    let instance = Instance::start_with(&server.url(), dir.path(), config).await;
    serving(&nc, "acme").await;
    let mut stream = js.get_stream(SIGNAL_STREAM).await.unwrap();
    let updated = stream.info().await.unwrap().config.clone();
    assert_eq!(
        updated.duplicate_window,
        mandate::engine::signals::DUPLICATE_WINDOW
    );
    assert!(!beacons_over(&nc, "acme", Duration::from_millis(500))
        .await
        .is_empty());
    assert!(stored_beacons(&nc, "acme").await >= 1);
    instance.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_tenants_than_acknowledgements_awaited_at_once_all_keep_getting_beacons() {
    use mandate::engine::auth::{AuthConfig, TenantKeys};
    // Past async-nats's 5,000 acknowledgements awaited at once.
    let tenants = 6_000;
    let keys = TenantKeys {
        keys: [("principal:cfo".to_string(), "s".repeat(32))].into(),
        ..TenantKeys::default()
    };
    let auth = AuthConfig {
        tenants: (0..tenants)
            .map(|i| (format!("t{i}"), keys.clone()))
            .collect(),
    };
    let config = EngineConfig {
        auth: Some(std::sync::Arc::new(auth)),
        beacon_interval: Duration::from_millis(500),
        ..EngineConfig::default()
    };
    let (_server, _dir, instance, nc) = serve_one_with("t0", config).await;
    let last = format!("t{}", tenants - 1);
    let mut sub = nc.subscribe(beacon_subject(&tenant(&last))).await.unwrap();
    for round in 0..3 {
        tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap_or_else(|_| panic!("beacon {round} for the last of {tenants} tenants"))
            .unwrap();
    }
    instance.stop().await;
}
