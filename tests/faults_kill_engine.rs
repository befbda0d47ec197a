//! kill -9 of a real `mandate serve --nats` process, against a real
//! nats-server (2.9 by default, any other with `NATS_SERVER_BIN`).
//!
//! - in the middle of a burst of 5,000+ commands, bulk revokes included,
//!   from clients that retry with the same command id: after the restart
//!   every accepted command is in the log exactly once, nothing is applied
//!   twice, every bulk revoke finished, and the projection equals a rebuild;
//! - a bulk revoke cut off part-way finishes when its retry arrives: the
//!   retry writes the block again (a duplicate: its id is derived from the
//!   bulk's), catches up with the log, and sweeps again: the revokes the
//!   dead engine wrote are found terminal and skipped, the others written
//!   under the same derived ids (one per mandate), so none is written twice.

mod common;

use common::faults::{assert_each_command_once, assert_outcome, records_per_command, KillRig};
use common::prelude::*;
use mandate::protocol::{Bulk, BulkEnvelope, CommandResult, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let mut rig = KillRig::start().await;
    let nc = rig.nc.clone();
    // 8 clients × 11 batches × 61 commands = 5,368 commands, 88 bulk revokes.
    // The fault: the engine's restart, which SIGKILLs it first.
    let ledger = rig
        .burst_through(8, 11, [1_500, 3_500], |rig| rig.engine.restart())
        .await;
    let answered = ledger.answered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(answered >= 5_000, "{answered} commands");

    assert_each_command_once(&nc, &ledger).await;
    assert_outcome(&nc, &ledger).await;

    // The projection the restarted engine built equals a rebuild.
    rig.assert_projection_equals_rebuild().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_revoke_cut_off_part_way_finishes_when_its_retry_arrives() {
    let mut rig = KillRig::start().await;
    let nc = rig.nc.clone();

    // 400 live mandates held by one agent, over 20 trees.
    let grant = "fin:read on ledger/*";
    let mut targets = Vec::new();
    for t in 0..20 {
        let holder = format!("lead{t}");
        let root = issue(&nc, root_issue("cfo", &holder, None, &[grant])).await;
        for _ in 0..20 {
            targets.push(delegate(&nc, &holder, root, "leaver", &[grant]).await);
        }
    }
    let js = async_nats::jetstream::new(nc.clone());
    let before = common::faults::last_position(&nc).await;

    let bulk = BulkEnvelope {
        command_id: CommandId::generate(),
        tenant: acme(),
        actor: admin("root"),
        correlation_id: None,
        schema_version: mandate::domain::SCHEMA_VERSION,
        bulk: Bulk::RevokeAgent {
            agent: agent_id("leaver"),
            reason: None,
        },
    };
    let body = serde_json::to_vec(&bulk).unwrap();
    let subject = mandate::protocol::command_subject(&acme(), "revoke_agent");
    // The first attempt: the engine dies once some of its revokes are in.
    let first = {
        let (nc, subject, body) = (nc.clone(), subject.clone(), body.clone());
        tokio::spawn(async move { nc.request(subject, body.into()).await })
    };
    let mut written = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while written < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bulk never started"
        );
        let mut stream = js.get_stream("MANDATE_EVENTS").await.unwrap();
        written = stream.info().await.unwrap().state.last_sequence - before;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rig.engine.kill9();
    let cut_at = common::faults::last_position(&nc).await - before;
    assert!(
        cut_at < 1 + targets.len() as u64,
        "cut off part-way: {cut_at} of {} records were written",
        1 + targets.len()
    );
    let _ = first.await;

    // The retry, same bytes, to the restarted engine.
    rig.engine.restart();
    serving(&nc, "acme").await;
    let reply = raw(&nc, subject, body).await;
    let reply: Reply<CommandResult> = serde_json::from_value(reply).unwrap();
    let result = reply.into_result().expect("the retry is accepted");
    assert!(!result.duplicate, "part of it was new");

    // Every target revoked, the block and each revoke written exactly once.
    let c = client(&nc, "acme", principal("auditor"));
    for m in &targets {
        assert_eq!(own(&c, *m).await, Status::Revoked, "{m}");
    }
    let after = common::faults::last_position(&nc).await - before;
    assert_eq!(
        after,
        1 + targets.len() as u64,
        "one block and one revoke each"
    );
    let per_command = records_per_command(&nc).await;
    let block = CommandId::derived(&bulk.command_id.to_string(), "registry-block");
    assert_eq!(per_command.get(&block), Some(&1));
    // One revoke per target: the bulk's (id derived from the bulk's and the
    // mandate), or, for a grant the restarted engine applied again after the
    // block it had already applied out of order, the one every instance
    // writes for a grant to a blocked agent (id derived from the mandate).
    // Both paths use the same derived ids on every instance, so never both.
    for m in &targets {
        let by_bulk = CommandId::derived(&bulk.command_id.to_string(), &m.to_string());
        let by_block = CommandId::derived("blocked-grant", &format!("acme/{m}"));
        let n = per_command.get(&by_bulk).unwrap_or(&0) + per_command.get(&by_block).unwrap_or(&0);
        assert_eq!(n, 1, "the revoke of {m}");
    }
    eprintln!(
        "bulk of {} revokes cut after {cut_at} records; the retry wrote the rest",
        targets.len()
    );
}

/// Every check answered before a kill -9 has its audit record after the
/// restart, once: the records the dead engine could not ship (its audit
/// stream was gone) waited in its outbox on disk, and the restarted engine
/// (which creates the stream again) ships them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_answered_before_a_kill_9_is_in_the_audit_after_the_restart() {
    let mut rig = KillRig::start().await;
    let nc = rig.nc.clone();
    let root = issue(
        &nc,
        root_issue("cfo", "lead", None, &["finance:read on reports/**"]),
    )
    .await;
    async_nats::jetstream::new(nc.clone())
        .delete_stream(mandate::engine::audit::AUDIT_STREAM)
        .await
        .unwrap();
    let cfo = client(&nc, "acme", principal("cfo"));
    for _ in 0..25 {
        let d = cfo
            .check(root, "finance:read", "reports/q3", None)
            .await
            .unwrap();
        assert!(d.is_allowed(), "{d:?}");
    }
    assert_eq!(cfo.health().await.unwrap().audit_pending, 25);
    rig.engine.restart();
    serving(&nc, "acme").await;
    eventually("the dead engine's records are shipped", || {
        let cfo = cfo.clone();
        async move {
            cfo.audit(root, 100)
                .await
                .is_ok_and(|a| a.records.len() >= 25)
        }
    })
    .await;
    let records = cfo.audit(root, 100).await.unwrap().records;
    assert_eq!(records.len(), 25, "each record once");
    assert_eq!(cfo.health().await.unwrap().audit_pending, 0);
}
