//! nats-server (file store) killed and restarted in the middle of a burst of
//! commands, under a real `mandate serve --nats` process: 2.9 by default,
//! any other with `NATS_SERVER_BIN`. The same checks as after a kill of the
//! engine: every accepted command is in the log exactly once, nothing is
//! applied twice, every bulk revoke finished, the projection equals a
//! rebuild, and no tree was found behind in the log (the server kept every
//! acknowledged write across a process kill).

mod common;

use std::sync::Arc;

use common::faults::{
    answered_at_least, assert_each_command_once, assert_outcome, burst, Ledger, ServedEngine,
};
use common::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_server_mid_burst_loses_nothing_acknowledged() {
    let mut server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("engine");
    let mut engine = ServedEngine::start(&server.url(), &data);
    let nc = connect(&server).await;
    serving(&nc, "acme").await;

    let ledger = Arc::new(Ledger::default());
    // 8 clients × 4 batches × 61 commands = 1,952 commands, 32 bulk revokes.
    let driver = tokio::spawn(burst(server.url(), 8, 4, ledger.clone()));
    for at in [500, 1_300] {
        answered_at_least(&ledger, at).await;
        server.restart();
    }
    driver.await.expect("the burst completes");
    eprintln!("{}", ledger.summary());

    assert_each_command_once(&nc, &ledger).await;
    let c = client(&nc, "acme", principal("auditor"));
    let health = c.health().await.expect("health");
    assert!(
        health.log_went_backwards.is_empty(),
        "no tree is behind in the log: {:?}",
        health.log_went_backwards
    );
    assert_outcome(&nc, &ledger).await;

    engine.stop();
    let opened = open_engine(nc.clone(), &data).await;
    assert!(opened.rebuild_check().await.expect("rebuild").equal);
}
