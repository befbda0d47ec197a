//! What the fault tests share: faults inflicted on a real nats-server
//! (losing the event stream, purging one tree's history), a real `mandate
//! serve --nats` process to kill, and a burst of retrying clients with the
//! checks run after it. Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{Config, StorageType};
use mandate::domain::command::Change;
use mandate::domain::{
    Actor, AgentId, Command as Cmd, CommandEnvelope, CommandId, ErrorCode, MandateId,
    SCHEMA_VERSION,
};
use mandate::log::{EventLog, JetStreamConfig, JetStreamLog};
use mandate::protocol::{command_subject, Bulk, BulkEnvelope, CommandResult, ErrorBody, Reply};

use super::fixtures::{acme, admin, agent, agent_id, delegation, principal, root_issue};

/// A command of acme with a fresh id.
fn envelope(actor: Actor, command: Cmd) -> CommandEnvelope {
    super::fixtures::envelope("acme", actor, command)
}

/// The event stream's name (the engine's default).
pub const EVENTS: &str = "MANDATE_EVENTS";

/// Deletes the event stream and creates an empty one in its place, as an
/// operator's mistake or a server that lost its store would leave it: every
/// acknowledged record is gone, and positions start again at 1.
pub async fn replace_event_stream(nc: &async_nats::Client) {
    let js = async_nats::jetstream::new(nc.clone());
    let before = js
        .get_stream(EVENTS)
        .await
        .expect("the event stream exists")
        .info()
        .await
        .expect("stream info")
        .config
        .clone();
    assert!(
        js.delete_stream(EVENTS).await.expect("delete").success,
        "the event stream is deleted"
    );
    js.create_stream(Config {
        name: EVENTS.to_string(),
        subjects: before.subjects.clone(),
        storage: StorageType::File,
        duplicate_window: before.duplicate_window,
        max_message_size: before.max_message_size,
        ..Default::default()
    })
    .await
    .expect("create the event stream again");
}

/// Purges every record of one subject (a tree's history) from the event
/// stream; the stream's last position does not move.
pub async fn purge_subject(nc: &async_nats::Client, subject: &str) -> u64 {
    let js = async_nats::jetstream::new(nc.clone());
    let stream = js.get_stream(EVENTS).await.expect("the event stream");
    stream
        .purge()
        .filter(subject)
        .await
        .expect("purge the subject")
        .purged
}

/// The event stream's last position.
pub async fn last_position(nc: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(nc.clone());
    js.get_stream(EVENTS)
        .await
        .expect("the event stream")
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence
}

/// The setup of the tests that kill a process in the middle of a burst: a
/// nats-server, a `mandate serve --nats` process on its own data directory,
/// and a connection on which the engine already serves tenant `acme`.
pub struct KillRig {
    pub nc: async_nats::Client,
    pub engine: ServedEngine,
    /// The engine's data directory.
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
    /// Dropped last: the engine and the connection go before the server.
    pub server: super::NatsServer,
}

impl KillRig {
    pub async fn start() -> Self {
        let server = super::NatsServer::start();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("engine");
        let engine = ServedEngine::start(&server.url(), &data);
        let nc = super::wire::connect(&server).await;
        super::wire::serving(&nc, "acme").await;
        Self {
            nc,
            engine,
            data,
            _tmp: tmp,
            server,
        }
    }

    /// Starts a [`burst`] of `tasks` clients × `batches` batches in a task,
    /// and returns its ledger and the task.
    pub fn burst(
        &self,
        tasks: usize,
        batches: usize,
    ) -> (Arc<Ledger>, tokio::task::JoinHandle<()>) {
        let ledger = Arc::new(Ledger::default());
        let driver = tokio::spawn(burst(self.server.url(), tasks, batches, ledger.clone()));
        (ledger, driver)
    }

    /// Runs a [`burst`] of `tasks` clients × `batches` batches and inflicts
    /// `fault` on the rig each time the clients have `at` answers, for each
    /// `at` of `faults_at`; returns the ledger once the burst completes.
    pub async fn burst_through(
        &mut self,
        tasks: usize,
        batches: usize,
        faults_at: [usize; 2],
        mut fault: impl FnMut(&mut Self),
    ) -> Arc<Ledger> {
        let (ledger, driver) = self.burst(tasks, batches);
        for at in faults_at {
            answered_at_least(&ledger, at).await;
            fault(self);
        }
        driver.await.expect("the burst completes");
        eprintln!("{}", ledger.summary());
        ledger
    }

    /// Stops the engine process and checks, on its data directory opened
    /// again, that the projection it built equals a rebuild from the log.
    pub async fn assert_projection_equals_rebuild(&mut self) {
        self.engine.stop();
        let opened = super::wire::open_engine(self.nc.clone(), &self.data).await;
        let report = opened.rebuild_check().await.expect("rebuild");
        assert!(report.equal, "the projection equals a rebuild");
    }
}

/// A real `mandate serve --nats <url>` process on a data directory, killed
/// (SIGKILL) when dropped. Its log goes to `<data>.log`.
pub struct ServedEngine {
    child: Option<Child>,
    data: PathBuf,
    url: String,
    /// More arguments of `serve`.
    args: Vec<String>,
}

impl ServedEngine {
    /// Starts the binary; it serves once it answers (see `wire::serving`).
    pub fn start(url: &str, data: &Path) -> Self {
        Self::start_with(url, data, &[])
    }

    /// As [`ServedEngine::start`], with more arguments of `serve` (kept for
    /// its restarts).
    pub fn start_with(url: &str, data: &Path, args: &[&str]) -> Self {
        let mut engine = ServedEngine {
            child: None,
            data: data.to_path_buf(),
            url: url.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        engine.spawn();
        engine
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .expect("open the engine's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mandate"))
            .arg("--data")
            .arg(&self.data)
            .args(["--nats", &self.url, "serve", "--allow-open-tenants"])
            .args(&self.args)
            .env_remove("MANDATE_NATS")
            .env_remove("MANDATE_TENANT")
            .env_remove("MANDATE_ACTOR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mandate serve");
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) {
        super::kill9(&mut self.child);
    }

    /// Starts the binary again on the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, and waits (at most 30 s) for a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "mandate serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "mandate serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServedEngine {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One command of a burst: its id, whether it was a bulk command, and the
/// engine's final answer.
pub type Answer = (CommandId, bool, Result<CommandResult, ErrorBody>);

/// What a burst of commands left: every answer the engine gave, by command.
#[derive(Default)]
pub struct Ledger {
    /// Commands answered (accepted or refused).
    pub answered: AtomicUsize,
    /// Every command sent with the engine's final answer.
    pub answers: Mutex<Vec<Answer>>,
    /// Each bulk revoke: its id and the agent it deprovisioned.
    pub bulks: Mutex<Vec<(CommandId, AgentId)>>,
    /// Every root issued (all stay live).
    pub roots: Mutex<Vec<MandateId>>,
    /// Every worker revoked (after a pause and a resume).
    pub revoked: Mutex<Vec<MandateId>>,
}

/// Sends one command body until an engine gives an answer other than
/// `unavailable`: through timeouts, no responders and restarts, always the
/// same bytes (the same command id), as a client that retries does.
pub async fn send_until_answered(
    nc: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
) -> Result<CommandResult, ErrorBody> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "no answer on {subject} within 90 s"
        );
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            nc.request(subject.to_string(), body.clone().into()),
        )
        .await;
        if let Ok(Ok(msg)) = r {
            let reply: Reply<CommandResult> =
                serde_json::from_slice(&msg.payload).expect("a reply decodes");
            match reply.into_result() {
                Err(e) if e.code == ErrorCode::Unavailable => {}
                other => return other,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`send_until_answered`] for a whole command: its subject and bytes.
pub async fn send_envelope_until_answered(
    nc: &async_nats::Client,
    cmd: &CommandEnvelope,
) -> Result<CommandResult, ErrorBody> {
    let subject = command_subject(&cmd.tenant, cmd.command.verb());
    send_until_answered(nc, &subject, serde_json::to_vec(cmd).unwrap()).await
}

/// A command retried until answered, its answer recorded in `ledger`'s
/// answers (not in its count of burst answers).
pub async fn recorded(
    nc: &async_nats::Client,
    ledger: &Ledger,
    cmd: CommandEnvelope,
) -> Result<CommandResult, ErrorBody> {
    let answer = send_envelope_until_answered(nc, &cmd).await;
    ledger
        .answers
        .lock()
        .unwrap()
        .push((cmd.command_id, false, answer.clone()));
    answer
}

/// One command of the burst, retried until answered; recorded in `ledger`
/// and counted.
async fn run(
    nc: &async_nats::Client,
    ledger: &Ledger,
    cmd: CommandEnvelope,
) -> Result<CommandResult, ErrorBody> {
    let answer = recorded(nc, ledger, cmd).await;
    ledger.answered.fetch_add(1, Ordering::SeqCst);
    answer
}

fn mandate_of(what: &str, r: Result<CommandResult, ErrorBody>) -> MandateId {
    r.unwrap_or_else(|e| panic!("{what} refused: {e:?}"))
        .mandate
        .unwrap_or_else(|| panic!("{what} names no mandate"))
}

/// A burst of commands from `tasks` clients, each running `batches`
/// batches of ten rounds and one bulk revoke: per round, issue a root,
/// delegate it to the batch's shared agent and to a worker, pause, resume
/// and revoke the worker; per batch, deprovision the shared agent
/// (`revoke_agent`). Every command is retried with its own id until an
/// engine answers. `tasks × batches × 61` commands in all.
pub async fn burst(url: String, tasks: usize, batches: usize, ledger: Arc<Ledger>) {
    burst_on(vec![url], tasks, batches, ledger).await
}

/// As [`burst`], client `k` connected to `urls[k % urls.len()]` (a URL may
/// list several servers, comma-separated).
pub async fn burst_on(urls: Vec<String>, tasks: usize, batches: usize, ledger: Arc<Ledger>) {
    let mut handles = Vec::new();
    for k in 0..tasks {
        let (url, ledger) = (urls[k % urls.len()].clone(), ledger.clone());
        handles.push(tokio::spawn(async move {
            let nc = async_nats::connect(&url).await.expect("connect a client");
            let grant = "fin:read on ledger/*";
            for b in 0..batches {
                let shared = format!("s-{k}-{b}");
                for r in 0..10 {
                    let holder = format!("a-{k}-{b}-{r}");
                    let issue = envelope(
                        principal(&format!("p{k}")),
                        Cmd::Issue(root_issue(&format!("p{k}"), &holder, None, &[grant])),
                    );
                    let root = mandate_of("issue", run(&nc, &ledger, issue).await);
                    ledger.roots.lock().unwrap().push(root);
                    let to_shared = envelope(
                        agent(&holder),
                        Cmd::Delegate(delegation(root, &shared, &[grant])),
                    );
                    mandate_of("delegate", run(&nc, &ledger, to_shared).await);
                    let worker = envelope(
                        agent(&holder),
                        Cmd::Delegate(delegation(root, &format!("w-{k}-{b}-{r}"), &[grant])),
                    );
                    let worker = mandate_of("delegate", run(&nc, &ledger, worker).await);
                    for change in [Cmd::Pause, Cmd::Resume, Cmd::Revoke] {
                        let cmd = envelope(
                            agent(&holder),
                            change(Change {
                                mandate: worker,
                                reason: None,
                            }),
                        );
                        let answer = run(&nc, &ledger, cmd).await;
                        assert!(answer.is_ok(), "a change refused: {answer:?}");
                    }
                    ledger.revoked.lock().unwrap().push(worker);
                }
                let bulk = BulkEnvelope {
                    command_id: CommandId::generate(),
                    tenant: acme(),
                    actor: admin("root"),
                    correlation_id: None,
                    schema_version: SCHEMA_VERSION,
                    bulk: Bulk::RevokeAgent {
                        agent: agent_id(&shared),
                        reason: None,
                    },
                };
                let answer = send_until_answered(
                    &nc,
                    &command_subject(&acme(), "revoke_agent"),
                    serde_json::to_vec(&bulk).unwrap(),
                )
                .await;
                assert!(answer.is_ok(), "revoke_agent refused: {answer:?}");
                ledger
                    .bulks
                    .lock()
                    .unwrap()
                    .push((bulk.command_id, agent_id(&shared)));
                ledger
                    .answers
                    .lock()
                    .unwrap()
                    .push((bulk.command_id, true, answer));
                ledger.answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for h in handles {
        h.await.expect("a client task does not panic");
    }
}

impl Ledger {
    /// Answers, and of them the duplicates: commands whose first attempt
    /// was applied but whose reply was lost, answered again from the log.
    pub fn summary(&self) -> String {
        let answers = self.answers.lock().unwrap();
        let duplicates = answers
            .iter()
            .filter(|(_, _, a)| a.as_ref().is_ok_and(|r| r.duplicate))
            .count();
        format!(
            "{} commands answered ({} bulk revokes), {duplicates} of them as duplicates of a first attempt",
            answers.len(),
            self.bulks.lock().unwrap().len()
        )
    }
}

/// Waits until `ledger` holds at least `n` answers.
pub async fn answered_at_least(ledger: &Ledger, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ledger.answered.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the burst stalled before {n} answers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many records of the event stream carry each command id. The log is
/// opened with the replicas the stream has (opening it with others would
/// change them).
pub async fn records_per_command(nc: &async_nats::Client) -> HashMap<CommandId, usize> {
    let config = JetStreamConfig {
        replicas: event_stream_replicas(nc).await,
        ..JetStreamConfig::default()
    };
    let log = JetStreamLog::open(nc.clone(), config)
        .await
        .expect("open the log");
    let mut per_command: HashMap<CommandId, usize> = HashMap::new();
    let mut after = 0;
    loop {
        let records = log.read_all(None, after, 4096).await.expect("read the log");
        let Some(last) = records.last() else { break };
        after = last.position;
        for r in &records {
            *per_command.entry(r.command_id).or_default() += 1;
        }
    }
    per_command
}

/// The replicas the event stream has now.
pub async fn event_stream_replicas(nc: &async_nats::Client) -> usize {
    async_nats::jetstream::new(nc.clone())
        .get_stream("MANDATE_EVENTS")
        .await
        .expect("the event stream")
        .info()
        .await
        .expect("the event stream's info")
        .config
        .num_replicas
}

/// Checks the log after a burst: every record's command id is unique (no
/// command applied twice), every accepted command's id is in it exactly
/// once, every refused one is not, and every record belongs to a command
/// that was sent (or to a step a sent bulk derives). Returns how many
/// command ids the log holds.
pub async fn assert_each_command_once(nc: &async_nats::Client, ledger: &Ledger) -> usize {
    let per_command = records_per_command(nc).await;
    let twice: Vec<_> = per_command.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "commands applied more than once: {twice:?}"
    );
    let answers = ledger.answers.lock().unwrap();
    let mut known: HashSet<CommandId> = HashSet::new();
    for (id, bulk, answer) in answers.iter() {
        known.insert(*id);
        match (bulk, answer) {
            (false, Ok(_)) => assert_eq!(
                per_command.get(id),
                Some(&1),
                "accepted command {id} is in the log exactly once"
            ),
            (false, Err(e)) => {
                assert_eq!(
                    per_command.get(id),
                    None,
                    "refused command {id} ({e:?}) left a record"
                )
            }
            (true, _) => {}
        }
    }
    for (id, _) in ledger.bulks.lock().unwrap().iter() {
        assert_eq!(
            per_command.get(&CommandId::derived(&id.to_string(), "registry-block")),
            Some(&1),
            "the block of bulk {id} is in the log once"
        );
    }
    let bulk_ids: Vec<String> = ledger
        .bulks
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    for id in per_command.keys() {
        if known.contains(id) {
            continue;
        }
        // A step of a bulk: derived from the bulk's id (registry block, or
        // one revoke per mandate it found).
        let derived = bulk_ids
            .iter()
            .any(|b| *id == CommandId::derived(b, "registry-block"))
            || id.is_reserved();
        assert!(derived, "record of command {id} that nobody sent");
    }
    per_command.len()
}

/// Every root live, every worker revoked, every deprovisioned agent's
/// mandates revoked.
pub async fn assert_outcome(nc: &async_nats::Client, ledger: &Ledger) {
    let c = super::wire::client(nc, "acme", principal("auditor"));
    let roots = ledger.roots.lock().unwrap().clone();
    let revoked = ledger.revoked.lock().unwrap().clone();
    // A root is read as every check reads it (its effective status), a
    // worker by its own record.
    let expected = [
        ("root", roots, mandate::domain::Status::Active),
        ("worker", revoked, mandate::domain::Status::Revoked),
    ];
    for (what, ids, want) in expected {
        for m in ids {
            let status = c.status(m, None).await.expect("status");
            let got = match what {
                "root" => status.effective.status,
                _ => status.mandate.status(),
            };
            assert_eq!(got, want, "{what} {m}");
        }
    }
    let bulks = ledger.bulks.lock().unwrap().clone();
    for (_, shared) in bulks {
        let held = c
            .list(mandate::protocol::ListQuery {
                agent: Some(shared.clone()),
                principal: None,
                mission_ref: None,
                consistency: Default::default(),
            })
            .await
            .expect("list");
        assert_eq!(held.mandates.len(), 10, "{shared} held one per round");
        for m in held.mandates {
            assert_eq!(
                m.status,
                mandate::domain::Status::Revoked,
                "{shared}: {m:?}"
            );
        }
    }
}
