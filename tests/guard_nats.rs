//! The agent guard against a real nats-server and a real engine.
//!
//! - cancellation fires on a revoke three levels up;
//! - local expiry denies at `not_after` with no signal at all;
//! - a guard cut off from NATS denies after its lease, and once it can reach
//!   NATS again it reflects a revoke made while it was cut off;
//! - with the server itself stopped, the guard fails closed, and recovers;
//! - told its chain changed, the guard denies until it holds the change,
//!   however long its re-reads are refused.
//!
//! To cut off one guard without stopping the engine, the guard's connection
//! goes through a small TCP relay the test can sever.

mod common;

use std::future::ready;
use std::time::Duration;

use chrono::Utc;
use common::fixtures::{
    agent, assert_denied_as, delegation, eventually, guard_config, principal, root_issue, scope,
};
use common::relay::Relay;
use common::served::Instance;
use common::wire::{client_at as client, serving, start_guard};
use common::NatsServer;
use mandate::client::guard::GuardHub;
use mandate::client::{Guard, GuardConfig, GuardState};
use mandate::domain::command::Issue;
use mandate::domain::{
    CommandId, DenyReason, EventId, MandateId, Outcome, Status, TenantId, SCHEMA_VERSION,
};
use mandate::engine::EngineConfig;
use mandate::protocol::{signal_subject, Signal, SignalKind};

/// An engine serving on `url`, with its own data directory, once it answers.
struct Served {
    _dir: tempfile::TempDir,
    instance: Instance,
}

impl Served {
    async fn start(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let instance = Instance::start(url, dir.path()).await;
        let nc = async_nats::connect(url).await.expect("connect");
        serving(&nc, "acme").await;
        Self {
            _dir: dir,
            instance,
        }
    }

    async fn stop(self) {
        self.instance.stop().await;
    }
}

/// Issues root (a0) → a1 → a2 → a3; returns the four mandate ids.
async fn chain_of_four(url: &str, ttl: chrono::Duration) -> Vec<MandateId> {
    let cfo = client(url, principal("cfo")).await;
    let grants = ["finance:read on reports/**"];
    let root = cfo
        .issue(Issue {
            not_after: Utc::now() + ttl,
            depth: 5,
            ..root_issue("cfo", "a0", None, &grants)
        })
        .await
        .unwrap()
        .mandate
        .unwrap();
    let mut ids = vec![root];
    for i in 1..4 {
        let from = client(url, agent(&format!("a{}", i - 1))).await;
        let m = from
            .delegate(delegation(*ids.last().unwrap(), &format!("a{i}"), &grants))
            .await
            .unwrap()
            .mandate
            .unwrap();
        ids.push(m);
    }
    ids
}

/// A private nats-server, an engine serving on it, and a chain of four
/// whose root ends `ttl` from now.
async fn chain_of_four_served(ttl: chrono::Duration) -> (NatsServer, Served, Vec<MandateId>) {
    let server = NatsServer::start();
    let served = Served::start(&server.url()).await;
    let ids = chain_of_four(&server.url(), ttl).await;
    (server, served, ids)
}

/// A lease far beyond a test's patience: the guard does not go stale while
/// the test runs, so only a signal (or a reconnect, or its clock) can change
/// what it holds.
const QUIET: Duration = Duration::from_secs(120);

/// Starts the guard of agent `a3` for `mandate`, connected through `url`,
/// with `lease`.
async fn guard_a3(url: &str, mandate: MandateId, lease: Duration) -> Guard {
    start_guard(client(url, agent("a3")).await, mandate, lease).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_fires_on_a_revoke_three_levels_up() {
    let (server, engine, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let leaf = ids[3];
    // Quiet: only the signal can stop it quickly.
    let guard = guard_a3(&server.url(), leaf, QUIET).await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    // In-flight work that must be cancelled.
    let cancel = guard.cancellation();
    let work = tokio::spawn(async move {
        let the_whole_job = tokio::time::sleep(Duration::from_secs(20));
        tokio::select! {
            _ = cancel.cancelled() => "cancelled",
            _ = the_whole_job => "ran to the end",
        }
    });
    let cfo = client(&server.url(), principal("cfo")).await;
    cfo.revoke(ids[0], Some("deal closed".into()))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap()
        .unwrap();
    // Well before any lease runs out: the signal did it.
    assert_eq!(outcome, "cancelled");
    let d = guard.check("finance:read", "reports/q3");
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(guard.state(), GuardState::Terminated(Status::Revoked));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_expiry_denies_at_not_after_without_any_signal() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::milliseconds(1500)).await;
    let guard = guard_a3(&server.url(), ids[3], QUIET).await;
    // Stop the engine: no expiry event and no signal can come now.
    served.stop().await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    let cancel = guard.cancellation();
    tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
        .await
        .expect("cancellation fires when the chain's not_after passes");
    let d = guard.check("finance:read", "reports/q3");
    assert_denied_as(&d, Status::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_guard_fails_closed_and_then_reflects_a_revoke_it_missed() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let relay = Relay::start(server.port()).await;
    let lease = Duration::from_millis(1200);
    let guard = guard_a3(&relay.url(), ids[3], lease).await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());

    // Connected, it hears the engine's beacons: not stale.
    assert_eq!(guard.state(), GuardState::Active);
    relay.sever();
    // While cut off, the mandate two levels up is revoked: the guard cannot hear it.
    let cfo = client(&server.url(), principal("cfo")).await;
    cfo.revoke(ids[1], Some("while cut off".into()))
        .await
        .unwrap();

    // Fails closed once the lease has run out.
    eventually("guard goes stale", || {
        ready(guard.state() == GuardState::Stale)
    })
    .await;
    let d = guard.check("finance:read", "reports/q3");
    assert_eq!(d.outcome, Outcome::Deny);
    // Stale because its lease ran out, and it says which lease.
    assert!(
        matches!(&d.reason, Some(DenyReason::Unverified { reason }) if reason.contains(&format!("{lease:?}"))),
        "{:?}",
        d.reason
    );

    relay.restore();
    // After it reconnects, the re-read shows the revoke it missed.
    eventually("guard reflects the missed revoke", || {
        ready(guard.state() == GuardState::Terminated(Status::Revoked))
    })
    .await;
    assert!(guard.cancellation().is_cancelled());
    assert_denied_as(&guard.check("finance:read", "reports/q3"), Status::Revoked);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_stopped_the_guard_denies_and_recovers_when_it_returns() {
    let (mut server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let guard = guard_a3(&server.url(), ids[3], Duration::from_millis(1000)).await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    server.stop();
    eventually("guard goes stale with the server down", || {
        ready(guard.state() == GuardState::Stale)
    })
    .await;
    assert!(!guard.check("finance:read", "reports/q3").is_allowed());
    server.restart();
    eventually("guard recovers after the server returns", || {
        ready(guard.state() == GuardState::Active)
    })
    .await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_published_while_cut_off_arrive_on_reconnect_and_only_their_chains_re_read() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let relay = Relay::start(server.port()).await;
    let guard_client = client(&relay.url(), agent("a3")).await;
    // A lease of zero is refused: the guard would be stale from the start.
    let bad = Guard::start(
        guard_client.clone(),
        &GuardHub::new(),
        ids[3],
        guard_config(Duration::ZERO),
    )
    .await;
    assert!(matches!(bad, Err(mandate::client::ClientError::Invalid(_))));
    // A lease far beyond the test's patience, and no read of the guard's
    // own after its start: only the signals replayed on reconnect can
    // change what it holds.
    let hub = GuardHub::new();
    let guard = Guard::start(guard_client.clone(), &hub, ids[3], guard_config(QUIET))
        .await
        .unwrap();
    // A second guard on the same hub, on a chain no signal will touch.
    let cfo = client(&server.url(), principal("cfo")).await;
    let other_root = cfo
        .issue(root_issue(
            "cfo",
            "a3",
            None,
            &["finance:read on reports/**"],
        ))
        .await
        .expect("issue another root")
        .mandate
        .unwrap();
    let other = Guard::start(guard_client, &hub, other_root, guard_config(QUIET))
        .await
        .unwrap();
    assert_eq!(
        hub.subscriptions(),
        1,
        "one feed for the tenant on one connection"
    );
    let before = hub.stats();
    relay.sever();
    // A guard on a connection that is not cut off, to see the signals land.
    let witness = guard_a3(&server.url(), ids[3], QUIET).await;
    cfo.pause(ids[1], Some("while cut off".into()))
        .await
        .unwrap();
    cfo.revoke(ids[2], Some("while cut off".into()))
        .await
        .unwrap();
    eventually("the connected guard hears the revoke", || {
        ready(witness.state() == GuardState::Terminated(Status::Revoked))
    })
    .await;
    // The signals cannot reach the cut-off guard: it still allows.
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    relay.restore();
    eventually("the reconnected guard reflects the revoke", || {
        ready(guard.state() == GuardState::Terminated(Status::Revoked))
    })
    .await;
    assert!(!guard.check("finance:read", "reports/q3").is_allowed());
    // Both signals reached it after the cut-off (the consumer went on where
    // it stopped, or was made again after the last message taken).
    let after = hub.stats();
    assert!(
        after.signals >= before.signals + 2,
        "both signals replayed: {after:?}"
    );
    assert_eq!(
        after.full_rereads, 0,
        "the stream replayed everything: {after:?}"
    );
    // The pause asked the guard to re-read (at least as new as the pause);
    // nothing asked the other guard, whose chain no signal touched. The
    // revoke that followed needs no read at all.
    assert!(after.rereads <= before.rereads + 1, "{after:?}");
    assert_eq!(other.state(), GuardState::Active);
    assert!(other.check("finance:read", "reports/q3").is_allowed());
    served.stop().await;
}

/// A guard on the leaf of a chain of four, following through a relay, cut
/// off by it, and the chain revoked (at `ids[2]`) while it was: what the
/// signal stream still holds decides how the guard learns of it.
struct CutOffRevoke {
    server: NatsServer,
    instance: Instance,
    relay: Relay,
    hub: GuardHub,
    guard: Guard,
    revoked: MandateId,
    _dir: tempfile::TempDir,
}

impl CutOffRevoke {
    async fn start(signal_retention: Duration) -> Self {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            allow_open_tenants: true,
            signal_retention,
            beacon_interval: Duration::from_millis(200),
            ..EngineConfig::default()
        };
        let instance = Instance::start_with(&server.url(), dir.path(), config).await;
        serving(&async_nats::connect(server.url()).await.unwrap(), "acme").await;
        let ids = chain_of_four(&server.url(), chrono::Duration::hours(1)).await;
        let relay = Relay::start(server.port()).await;
        let hub = GuardHub::new();
        let guard = Guard::start(
            client(&relay.url(), agent("a3")).await,
            &hub,
            ids[3],
            guard_config(QUIET),
        )
        .await
        .unwrap();
        assert!(guard.check("finance:read", "reports/q3").is_allowed());
        relay.sever();
        let cfo = client(&server.url(), principal("cfo")).await;
        cfo.revoke(ids[2], Some("while cut off".into()))
            .await
            .unwrap();
        CutOffRevoke {
            server,
            instance,
            relay,
            hub,
            guard,
            revoked: ids[2],
            _dir: dir,
        }
    }

    /// Restores the relay; the guard must notice that signals were lost,
    /// deny, and re-read: the revoke it never heard is in the chain it
    /// reads.
    async fn restore_and_expect_the_revoke_re_read(self) {
        self.relay.restore();
        eventually("the guard reflects the revoke it never heard", || {
            ready(self.guard.state() == GuardState::Terminated(Status::Revoked))
        })
        .await;
        let stats = self.hub.stats();
        assert!(stats.full_rereads >= 1, "{stats:?}");
        assert!(stats.rereads >= 1, "{stats:?}");
        assert!(!self.guard.check("finance:read", "reports/q3").is_allowed());
        self.instance.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_lost_beyond_what_the_stream_keeps_make_every_guard_re_read() {
    // The signal stream keeps two seconds of signals: a process cut off for
    // longer cannot have them replayed.
    let cut = CutOffRevoke::start(Duration::from_secs(2)).await;
    // Cut off until the revoke's signal has aged out of the stream.
    tokio::time::sleep(Duration::from_secs(5)).await;
    cut.restore_and_expect_the_revoke_re_read().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_purged_from_the_stream_while_cut_off_make_every_guard_re_read() {
    // The stream keeps an hour of signals, so age cannot explain a gap: an
    // operator's purge (or any other deletion) while the process was cut
    // off must still count as a loss. Beacons stored after the purge must
    // not let the guard carry on as if nothing was missed.
    let cut = CutOffRevoke::start(Duration::from_secs(3600)).await;
    let nc = async_nats::connect(cut.server.url()).await.unwrap();
    let stream = async_nats::jetstream::new(nc)
        .get_stream("MANDATE_SIGNALS")
        .await
        .unwrap();
    // The revoke's signal is stored before it is purged.
    let subject = format!("mandate.sig.acme.{}", cut.revoked);
    let mut stored = false;
    for _ in 0..100 {
        if stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_ok()
        {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored, "the revoke's signal never reached the stream");
    let purged = stream.purge().await.unwrap().purged;
    assert!(purged >= 1, "the revoke's signal was in the stream");
    // Beacons go on being stored after the purge.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cut.restore_and_expect_the_revoke_re_read().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_engine_stopped_the_guard_denies_after_its_lease() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let lease = Duration::from_millis(1500);
    let guard = guard_a3(&server.url(), ids[3], lease).await;
    // The engine's beacons keep it: well past its lease, still active.
    tokio::time::sleep(lease * 2).await;
    assert_eq!(guard.state(), GuardState::Active);
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    // NATS stays up; the engine goes. A completion or revoke could now wait
    // in a stream with no one to act on it: the guard must not go on.
    served.stop().await;
    eventually("guard goes stale with no engine to hear", || {
        ready(guard.state() == GuardState::Stale)
    })
    .await;
    let d = guard.check("finance:read", "reports/q3");
    assert!(
        matches!(&d.reason, Some(DenyReason::Unverified { reason }) if reason.contains(&format!("{lease:?}"))),
        "{:?}",
        d.reason
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_reply_arriving_after_a_newer_one_does_not_undo_a_pause() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    // Quiet: no re-read of the guard's own comes between.
    let guard = guard_a3(&server.url(), ids[3], QUIET).await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    // Given an answer read before the pause...
    let a3 = client(&server.url(), agent("a3")).await;
    let before_pause = a3.chain(ids[3], None).await.unwrap();
    let cfo = client(&server.url(), principal("cfo")).await;
    cfo.pause(ids[1], Some("hold".into())).await.unwrap();
    eventually("the guard hears the pause", || {
        ready(guard.state() == GuardState::Paused)
    })
    .await;
    // ...when it arrives after the answer that carries the pause...
    guard
        .apply_reply(before_pause)
        .expect("an older reply is dropped, not refused");
    // ...then the guard stays paused.
    assert_eq!(
        guard.state(),
        GuardState::Paused,
        "an older answer undid the pause"
    );
    assert_denied_as(&guard.check("finance:read", "reports/q3"), Status::Paused);
    served.stop().await;
}

/// A narrowing three levels up changes the root alone (the guarded
/// mandate's own grants stay as they were delegated), and the guard's
/// re-read chain then holds a link whose own grants exceed the root's: the
/// guard takes it and denies what the root no longer grants, as the engine's
/// check does, and keeps allowing what it still grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_three_levels_up_narrows_what_the_guard_allows() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let guard = guard_a3(&server.url(), ids[3], QUIET).await;
    assert!(guard.check("finance:read", "reports/q4/x").is_allowed());
    let cfo = client(&server.url(), principal("cfo")).await;
    cfo.narrow(ids[0], scope(&["finance:read on reports/q3/*"]))
        .await
        .unwrap();
    // From the signal on it denies; once it holds the re-read chain, it
    // denies because the root no longer grants it.
    eventually("the guard denies what the root no longer grants", || {
        ready(
            guard.check("finance:read", "reports/q4/x").reason
                == Some(DenyReason::OutOfScope { mandate: ids[0] }),
        )
    })
    .await;
    let d = guard.check("finance:read", "reports/q4/x");
    assert_eq!(
        d.reason,
        Some(DenyReason::OutOfScope { mandate: ids[0] }),
        "{d:?}"
    );
    assert_eq!(guard.state(), GuardState::Active);
    assert!(guard.check("finance:read", "reports/q3/x").is_allowed());
    let engine = cfo
        .check(ids[3], "finance:read", "reports/q4/x", None)
        .await
        .unwrap();
    assert_eq!(engine.outcome, Outcome::Deny, "{engine:?}");
    served.stop().await;
}

/// An agent clock a minute behind the engine's.
fn a_minute_behind() -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_whose_clock_is_behind_expires_by_the_engines_clock_and_says_so() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::seconds(3)).await;
    let guard = Guard::start(
        client(&server.url(), agent("a3")).await,
        &GuardHub::new(),
        ids[3],
        GuardConfig {
            lease: Duration::from_secs(120),
            clock: a_minute_behind,
            ..GuardConfig::default()
        },
    )
    .await
    .expect("start the guard");
    // Stop the engine: no expiry event and no signal can come now; only the
    // guard's own clock can end the mandate.
    served.stop().await;
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    // By its own clock the mandate has a minute left; by the engine's, three
    // seconds.
    tokio::time::timeout(Duration::from_secs(20), guard.cancellation().cancelled())
        .await
        .expect("a guard whose clock is behind expires at the engine's not_after");
    assert_eq!(guard.state(), GuardState::Terminated(Status::Expired));
    // And it says by how much it corrected.
    let behind = guard
        .clock_behind()
        .expect("the guard reports its clock lag");
    assert!(
        behind >= Duration::from_secs(55) && behind <= Duration::from_secs(65),
        "reported lag {behind:?} for a clock a minute behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_chain_the_engine_could_not_have_written_is_refused_and_changes_nothing() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let guard = guard_a3(&server.url(), ids[3], QUIET).await;
    let a3 = client(&server.url(), agent("a3")).await;
    // A newer version, so it is not dropped as old, and a link left out: a2
    // is not delegated from a0.
    let mut reply = a3.chain(ids[3], None).await.unwrap();
    reply.version += 1;
    reply.mandates.remove(1);
    let refused = guard.apply_reply(reply);
    assert!(
        matches!(&refused, Err(mandate::client::ClientError::Decode(m)) if m.contains("does not follow")),
        "{refused:?}"
    );
    // A whole chain, but to a2, not to the guard's a3: refused too, not
    // read as a3 having gone.
    let mut reply = a3.chain(ids[2], None).await.unwrap();
    reply.version += 1;
    let refused = guard.apply_reply(reply);
    assert!(
        matches!(&refused, Err(mandate::client::ClientError::Decode(m)) if m.contains("not at the guard's mandate")),
        "{refused:?}"
    );
    assert_eq!(guard.state(), GuardState::Active);
    assert!(guard.check("finance:read", "reports/q3").is_allowed());
    // A reply that keeps the chain is taken.
    let mut reply = a3.chain(ids[3], None).await.unwrap();
    reply.version += 1;
    guard.apply_reply(reply).expect("a whole chain is taken");
    served.stop().await;
}

/// A guard told its chain changed denies until it holds the change. Here
/// every re-read is refused: the `narrowed` signal names the log position
/// the change will be at, before it is written, so each re-read asked to
/// include it is answered `unavailable`. The engine's beacons keep the
/// guard's lease the whole time, so only the signal can make it deny; once
/// the change is written, a re-read goes through and the guard answers by
/// the new chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_told_its_chain_changed_denies_while_every_re_read_is_refused() {
    let (server, served, ids) = chain_of_four_served(chrono::Duration::hours(1)).await;
    let guard = guard_a3(&server.url(), ids[3], QUIET).await;
    assert!(guard.check("finance:read", "reports/q4/x").is_allowed());
    let a3 = client(&server.url(), agent("a3")).await;
    let held = a3.chain(ids[3], None).await.unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let signal = Signal {
        schema_version: SCHEMA_VERSION,
        kind: SignalKind::Narrowed,
        tenant: tenant.clone(),
        tree: held.tree,
        mandate: ids[0],
        status: Status::Active,
        event_id: EventId::for_command(&tenant, CommandId::generate(), 0),
        event_type: "scope_narrowed".into(),
        seq: held.version + 1,
        time: Utc::now(),
        actor: principal("cfo"),
        reason: None,
        position: None,
        head_position: Some(held.position + 1),
    };
    let nc = async_nats::connect(server.url()).await.unwrap();
    nc.publish(
        signal_subject(&tenant, ids[0]),
        serde_json::to_vec(&signal).unwrap().into(),
    )
    .await
    .unwrap();
    nc.flush().await.unwrap();
    eventually("the guard denies once told its chain changed", || {
        ready(!guard.check("finance:read", "reports/q4/x").is_allowed())
    })
    .await;
    // Several refused re-reads later (one a second), it still denies
    // everything, and says why.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = guard.check("finance:read", "reports/q3/x");
    assert!(
        matches!(&d.reason, Some(DenyReason::Unverified { reason }) if reason.contains("has not read the change")),
        "{d:?}"
    );
    assert_eq!(guard.state(), GuardState::Stale);
    // The change is written: the re-read includes it.
    let cfo = client(&server.url(), principal("cfo")).await;
    cfo.narrow(ids[0], scope(&["finance:read on reports/q3/*"]))
        .await
        .unwrap();
    eventually("the guard holds the change", || {
        ready(guard.check("finance:read", "reports/q3/x").is_allowed())
    })
    .await;
    assert_eq!(
        guard.check("finance:read", "reports/q4/x").reason,
        Some(DenyReason::OutOfScope { mandate: ids[0] })
    );
    assert_eq!(guard.state(), GuardState::Active);
    served.stop().await;
}
