//! nats-server (file store) killed and restarted in the middle of a burst of
//! commands, under a real `mandate serve --nats` process: 2.9 by default,
//! any other with `NATS_SERVER_BIN`. The same checks as after a kill of the
//! engine: every accepted command is in the log exactly once, nothing is
//! applied twice, every bulk revoke finished, the projection equals a
//! rebuild, and no tree was found behind in the log (the server kept every
//! acknowledged write across a process kill).

mod common;

use common::faults::{assert_each_command_once, assert_outcome, KillRig};
use common::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_server_mid_burst_loses_nothing_acknowledged() {
    let mut rig = KillRig::start().await;
    // 8 clients × 4 batches × 61 commands = 1,952 commands, 32 bulk revokes.
    let ledger = rig
        .burst_through(8, 4, [500, 1_300], |rig| rig.server.restart())
        .await;

    assert_each_command_once(&rig.nc, &ledger).await;
    let c = client(&rig.nc, "acme", principal("auditor"));
    let health = c.health().await.expect("health");
    assert!(
        health.log_went_backwards.is_empty(),
        "no tree is behind in the log: {:?}",
        health.log_went_backwards
    );
    assert_outcome(&rig.nc, &ledger).await;

    rig.assert_projection_equals_rebuild().await;
}
