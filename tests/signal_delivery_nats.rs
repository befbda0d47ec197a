//! A commit's signals are not lost to a writer that dies between its append
//! and its publish (issue 13), against a real nats-server and real `mandate
//! serve --nats` processes, the writer killed at exactly that point by the
//! test-only switch `MANDATE_TEST_ABORT_AT` (honoured by debug builds only):
//!
//! - with another instance running, that instance publishes the revoke's
//!   `terminated` signal into the signal stream within 2 s, once;
//! - alone, the writer restarted on its data directory publishes it, whether
//!   it died before its own apply (the restart's catch-up applies the commit
//!   and publishes) or after it (the commit is in its outbox).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};

use common::prelude::*;
use mandate::domain::{EventBody, EventId};
use mandate::engine::signals::SIGNAL_STREAM;
use mandate::log::{EventLog, JetStreamConfig, JetStreamLog};
use mandate::protocol::{command_subject, signal_subject, Signal, SignalKind};

/// The issue's bound: every guard under an ended mandate stops within it.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// A `mandate serve --nats` process, killed when dropped; its log goes to
/// `<data>.log`.
struct Served {
    child: Option<Child>,
    data: PathBuf,
}

impl Served {
    /// Serves `tenants` (all with `None`), aborting at `abort_at` when given.
    fn start(url: &str, data: &Path, tenants: Option<&str>, abort_at: Option<&str>) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .expect("open the engine's log file");
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_mandate"));
        cmd.arg("--data")
            .arg(data)
            .args(["--nats", url, "serve", "--allow-open-tenants"])
            .env_remove("MANDATE_NATS")
            .env_remove("MANDATE_TENANT")
            .env_remove("MANDATE_ACTOR")
            .env_remove("MANDATE_TEST_ABORT_AT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(t) = tenants {
            cmd.args(["--tenant", t]);
        }
        if let Some(stage) = abort_at {
            cmd.env("MANDATE_TEST_ABORT_AT", stage);
        }
        Served {
            child: Some(cmd.spawn().expect("start mandate serve")),
            data: data.to_path_buf(),
        }
    }

    /// Waits (at most 10 s) for the process to die of its own abort.
    fn aborted(&mut self) {
        let child = self.child.as_mut().expect("a running process");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGABRT),
                    "the engine aborted at the fault point (it exited with {status}); its log: {}",
                    std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
                );
                self.child = None;
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the engine did not abort after the append"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        common::kill9(&mut self.child);
    }
}

/// A root mandate of `acme`, issued (issuing signals nothing).
async fn a_root(nc: &async_nats::Client) -> MandateId {
    issue(
        nc,
        root_issue("cfo", "lead", None, &["fin:read on ledger/*"]),
    )
    .await
}

/// Sends a revoke of `root` without waiting for the answer (the engine that
/// takes it dies before answering).
async fn send_revoke(nc: &async_nats::Client, root: MandateId) {
    let cmd = envelope("acme", principal("cfo"), Command::Revoke(change(root)));
    let body = serde_json::to_vec(&cmd).unwrap();
    let nc = nc.clone();
    // Never answered: the engine dies first.
    tokio::spawn(async move {
        let _ = nc
            .request(command_subject(&acme(), cmd.command.verb()), body.into())
            .await;
    });
}

/// The id of the event in the log that revoked `root`, if the log holds one.
async fn revoke_in_log(nc: &async_nats::Client, root: MandateId) -> Option<EventId> {
    let log = JetStreamLog::open(nc.clone(), JetStreamConfig::default())
        .await
        .unwrap();
    let records = log.read_all(Some(&acme()), 0, 1000).await.unwrap();
    records.iter().find_map(|r| {
        mandate::domain::Event::decode_commit(&r.payload)
            .unwrap()
            .into_iter()
            .find(|e| matches!(&e.body, EventBody::MandateRevoked(c) if c.mandate == root))
            .map(|e| e.event_id)
    })
}

/// Every signal the signal stream holds on `root`'s subject.
async fn stored_signals(nc: &async_nats::Client, root: MandateId) -> Vec<Signal> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    use futures::StreamExt;
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream(SIGNAL_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: signal_subject(&acme(), root),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        out.push(serde_json::from_slice(&m.payload).expect("a signal"));
    }
    out
}

/// Waits until the signal stream holds the `terminated` signal of event
/// `revoke` on `root`'s subject, for at most `within`.
async fn terminated_stored(
    nc: &async_nats::Client,
    root: MandateId,
    revoke: EventId,
    within: Duration,
) {
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream(SIGNAL_STREAM).await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(m) = stream
            .get_last_raw_message_by_subject(&signal_subject(&acme(), root))
            .await
        {
            let s: Signal = serde_json::from_slice(&m.payload).expect("a signal");
            if s.event_id == revoke {
                assert_eq!(s.kind, SignalKind::Terminated);
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoke's terminated signal is in the signal stream within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The revoke of the dead writer: in the log, its event id.
async fn the_revoke(nc: &async_nats::Client, root: MandateId) -> EventId {
    revoke_in_log(nc, root)
        .await
        .expect("the revoke was appended before the writer died")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_publishes_the_signals_of_a_writer_killed_after_its_append() {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let nc = connect(&server).await;
    // A serves acme and dies right after appending a command with signals;
    // B serves only globex (so acme's commands all go to A) but follows the
    // whole log, as every instance does.
    let mut a = Served::start(&server.url(), &tmp.path().join("a"), None, Some("append"));
    serving(&nc, "acme").await;
    let mut beacons = nc
        .subscribe(mandate::protocol::beacon_subject(&tenant("globex")))
        .await
        .unwrap();
    let _b = Served::start(&server.url(), &tmp.path().join("b"), Some("globex"), None);
    serving(&nc, "globex").await;
    let root = a_root(&nc).await;
    // B's background tasks run (its beacons with them) once it has caught
    // up: the revoke reaches it live, not in its start's catch-up.
    tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut beacons),
    )
    .await
    .expect("B sends beacons");

    send_revoke(&nc, root).await;
    let sent = tokio::time::Instant::now();
    a.aborted();
    let revoke = the_revoke(&nc, root).await;
    let left = STOP_WITHIN.saturating_sub(sent.elapsed());
    terminated_stored(&nc, root, revoke, left).await;

    // A restarted (without the fault) applies the revoke in its catch-up and
    // finds its signal stored: still one in the stream.
    let _a = Served::start(&server.url(), &tmp.path().join("a"), None, None);
    serving(&nc, "acme").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = stored_signals(&nc, root).await;
    assert_eq!(
        stored.iter().filter(|s| s.event_id == revoke).count(),
        1,
        "the revoke's signal is stored exactly once: {stored:?}"
    );
}

/// A single instance killed at `stage` after the revoke's append, restarted:
/// the revoke's signal is published after the restart, once.
async fn restart_publishes_what_the_writer_had_not(stage: &str) {
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("engine");
    let nc = connect(&server).await;
    let mut a = Served::start(&server.url(), &data, None, Some(stage));
    serving(&nc, "acme").await;
    let root = a_root(&nc).await;

    send_revoke(&nc, root).await;
    a.aborted();
    let revoke = the_revoke(&nc, root).await;
    assert!(
        stored_signals(&nc, root).await.is_empty(),
        "the writer died before publishing"
    );

    let _a = Served::start(&server.url(), &data, None, None);
    serving(&nc, "acme").await;
    terminated_stored(&nc, root, revoke, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stored_signals(&nc, root).await.len(),
        1,
        "the revoke's signal is stored once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_before_its_apply_publishes_after_its_restart() {
    restart_publishes_what_the_writer_had_not("append").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_after_its_apply_publishes_its_outbox_after_its_restart() {
    restart_publishes_what_the_writer_had_not("apply").await;
}
