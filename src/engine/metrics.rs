//! What one instance counts about itself, for [`Engine::metrics`] (the
//! Prometheus text exposition that `mandate serve --metrics` serves).
//!
//! Two kinds of figures:
//! - **Counted as they happen**, on the request path: commands, checks and
//!   other queries (by type and outcome, with their latency), the cascade
//!   fan-out of each terminating event this instance wrote, signals
//!   published. Each is a prometheus-client counter or histogram: an atomic
//!   add, or a short lock of one histogram, per request. Labels come from
//!   fixed lists (a verb no build knows is `unknown`), never from what a
//!   caller wrote, so a hostile caller cannot grow the series.
//! - **Read when scraped**: projection lag, expiry backlog, outbox depth,
//!   mission intake backlog, and the counters the engine keeps anyway
//!   (append conflicts, beacons, audit failures, stream leader elections). A figure that cannot be
//!   read (NATS down) is left out of that scrape and logged, never
//!   reported as zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use async_nats::jetstream::{self, consumer::pull};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::command::COMMAND_TYPES;
use crate::domain::{ErrorCode, Event, EventBody, MandateId, Outcome, TenantId, TreeId};
use crate::log::EventLog;
use crate::protocol::{Consistency, Signal, BULK_VERBS, QUERY_VERBS};

use super::missions::{MISSION_CONSUMER, MISSION_STREAM};
use super::{Engine, EngineError, EngineErrorKind, Inner};

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of the cascade fan-out: descendants one terminating event ended.
/// The last is the count's limit ([`crate::store::CASCADE_COUNT_LIMIT`]):
/// an end with more than that below it falls in `+Inf`.
const FANOUT_BUCKETS: [f64; 8] = [0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0];

/// The most queue or outbox entries a scrape counts: past it, the figure
/// stops there (a backlog that large is an alert already).
const COUNT_LIMIT: usize = 1_000_000;

/// How long a scrape waits for each figure read over NATS.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The label value of a verb or outcome no list knows.
const UNKNOWN: &str = "unknown";

type Labels<const N: usize> = [(&'static str, &'static str); N];
type Timings<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The figures counted as they happen. One per instance.
pub(crate) struct Metrics {
    commands: Family<Labels<3>, Counter>,
    command_seconds: Timings<1>,
    checks: Family<Labels<3>, Counter>,
    check_seconds: Timings<1>,
    queries: Family<Labels<3>, Counter>,
    query_seconds: Timings<1>,
    cascade: Histogram,
    /// The cascade counts' thread and queue.
    counts: Counts,
    signals: Family<Labels<1>, Counter>,
    signal_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            commands: Family::default(),
            command_seconds: Family::new_with_constructor(latency),
            checks: Family::default(),
            check_seconds: Family::new_with_constructor(latency),
            queries: Family::default(),
            query_seconds: Family::new_with_constructor(latency),
            cascade: Histogram::new(FANOUT_BUCKETS),
            counts: Counts::default(),
            signals: Family::default(),
            signal_failures: Counter::default(),
        }
    }
}

/// `verb` as the `'static` entry of `known` it equals, or `unknown`.
fn known(verb: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == verb)
        .copied()
        .unwrap_or(UNKNOWN)
}

/// The label of a command's type: its subject's verb, if a command or bulk
/// verb of this build.
pub(crate) fn command_type(verb: &str) -> &'static str {
    match known(verb, COMMAND_TYPES) {
        UNKNOWN => known(verb, BULK_VERBS),
        found => found,
    }
}

/// The label of a query's kind: its subject's verb, if a query verb.
pub(crate) fn query_kind(verb: &str) -> &'static str {
    known(verb, QUERY_VERBS)
}

/// The wire code of an error, as a label value.
fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidInput => "invalid_input",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Conflict => "conflict",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::Terminal => "terminal",
        ErrorCode::InvalidState => "invalid_state",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
        ErrorCode::Widens => "widens",
        ErrorCode::Quarantined => "quarantined",
    }
}

/// `(outcome, code)` of a request that failed.
fn refused(e: &EngineError) -> (&'static str, &'static str) {
    ("refused", code_label(e.code()))
}

fn consistency_label(c: Option<Consistency>) -> &'static str {
    match c {
        Some(Consistency::Fresh) => "fresh",
        Some(Consistency::Local) => "local",
        Some(Consistency::AtLeast(_)) => "at_least",
        // The query did not decode.
        None => UNKNOWN,
    }
}

impl Metrics {
    /// One command answered (`kind` from [`command_type`]): whether it was
    /// a duplicate, or why it was refused.
    pub(crate) fn command(
        &self,
        kind: &'static str,
        result: Result<bool, &EngineError>,
        took: Duration,
    ) {
        let (outcome, code) = match result {
            Ok(true) => ("duplicate", ""),
            Ok(false) => ("applied", ""),
            Err(e) => refused(e),
        };
        self.commands
            .get_or_create(&[("type", kind), ("outcome", outcome), ("code", code)])
            .inc();
        self.command_seconds
            .get_or_create(&[("type", kind)])
            .observe(took.as_secs_f64());
    }

    /// One check answered, at the consistency level it asked for (`None`
    /// when the query did not decode).
    pub(crate) fn check(
        &self,
        consistency: Option<Consistency>,
        result: Result<Outcome, &EngineError>,
        took: Duration,
    ) {
        let (outcome, code) = match result {
            Ok(o) => (
                match o {
                    Outcome::Allow => "allow",
                    Outcome::Deny => "deny",
                    Outcome::NeedsApproval => "needs_approval",
                },
                "",
            ),
            Err(e) => refused(e),
        };
        let level = consistency_label(consistency);
        self.checks
            .get_or_create(&[("outcome", outcome), ("consistency", level), ("code", code)])
            .inc();
        self.check_seconds
            .get_or_create(&[("consistency", level)])
            .observe(took.as_secs_f64());
    }

    /// One query other than a check answered (`kind` from [`query_kind`]).
    pub(crate) fn query(&self, kind: &'static str, error: Option<&EngineError>, took: Duration) {
        let (outcome, code) = error.map_or(("ok", ""), refused);
        self.queries
            .get_or_create(&[("kind", kind), ("outcome", outcome), ("code", code)])
            .inc();
        self.query_seconds
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
    }

    /// A write is about to begin: the cascade counts keep off sled for a
    /// while ([`Counts`]).
    pub(crate) fn writing(&self) {
        self.counts.writing();
    }

    /// One terminating event and the descendants it ended.
    pub(crate) fn cascade(&self, descendants: u64) {
        self.cascade.observe(descendants as f64);
    }

    /// Signals sent to the bus, `failed` of them (by event id) not stored.
    pub(crate) fn signals(&self, sent: &[Signal], failed: &[crate::domain::EventId]) {
        for s in sent.iter().filter(|s| !failed.contains(&s.event_id)) {
            self.signals
                .get_or_create(&[("kind", signal_kind(s))])
                .inc();
        }
        self.signal_failures.inc_by(failed.len() as u64);
    }

    /// Registers the figures counted as they happen (handles share their
    /// values: a registry per scrape costs no copy of them).
    fn register(&self, r: &mut Registry) {
        r.register(
            "commands",
            "Commands answered, by type, outcome (applied, duplicate, refused) and refusal code",
            self.commands.clone(),
        );
        r.register_with_unit(
            "command_duration",
            "Time from a command's request to its answer, by type",
            Unit::Seconds,
            self.command_seconds.clone(),
        );
        r.register(
            "checks",
            "Checks answered, by outcome (allow, deny, needs_approval, refused), consistency level and refusal code",
            self.checks.clone(),
        );
        r.register_with_unit(
            "check_duration",
            "Time from a check's request to its answer, by consistency level",
            Unit::Seconds,
            self.check_seconds.clone(),
        );
        r.register(
            "queries",
            "Queries other than checks answered, by kind, outcome (ok, refused) and refusal code",
            self.queries.clone(),
        );
        r.register_with_unit(
            "query_duration",
            "Time from a query's request to its answer, by kind (checks apart)",
            Unit::Seconds,
            self.query_seconds.clone(),
        );
        r.register(
            "cascade_descendants_ended",
            "Per terminating event this instance wrote (revoke, expiry, completion, mission, quarantine end): the mandates below it that it ended",
            self.cascade.clone(),
        );
        r.register(
            "cascade_counts_skipped",
            "Terminating events whose cascade went uncounted: the counting thread, at the lowest priority, was that far behind",
            self.counts.skipped.clone(),
        );
        r.register(
            "signals_published",
            "Signals this instance published and the bus stored, by kind",
            self.signals.clone(),
        );
        r.register(
            "signal_publish_failures",
            "Signals this instance published that the bus did not store (the outbox retries them)",
            self.signal_failures.clone(),
        );
    }
}

fn signal_kind(s: &Signal) -> &'static str {
    use crate::protocol::SignalKind::*;
    match s.kind {
        Suspended => "suspended",
        Resumed => "resumed",
        Terminated => "terminated",
        Narrowed => "narrowed",
        Quarantined => "quarantined",
        Restored => "restored",
    }
}

/// Whether `body` ends its mandate (and so everything below it).
fn terminates(body: &EventBody) -> bool {
    match body {
        EventBody::MandateRevoked(_)
        | EventBody::MandateExpired(_)
        | EventBody::MandateCompleted(_)
        | EventBody::MissionCompleted(_) => true,
        EventBody::QuarantineResolved(q) => {
            matches!(q.action, crate::domain::command::Resolution::End)
        }
        _ => false,
    }
}

/// A figure read at scrape time, or why it could not be.
type Read<T> = Result<T, String>;

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Read<T> {
    match tokio::time::timeout(READ_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {READ_TIMEOUT:?}")),
    }
}

impl Engine {
    /// This instance's metrics in the Prometheus (OpenMetrics) text
    /// exposition format, every name prefixed `mandate_`: commands, checks
    /// and queries with their latency, cascade fan-out, signals, projection
    /// lag, expiry backlog, outbox depth, audit records pending, mission intake backlog, append
    /// conflicts, beacons, audit failures, stream leader elections met
    /// (appends sent again, appends and reads unavailable), and the
    /// engine's version and
    /// instance. Commands, checks and queries are those that came as
    /// requests ([`Engine::handle`], [`Engine::handle_remote`]), not direct
    /// calls of [`Engine::execute`] or [`Engine::check`]. A figure read from
    /// the log or NATS that cannot be read now is left out, and logged.
    pub async fn metrics(&self) -> Result<String, EngineError> {
        let mut r = Registry::with_prefix("mandate");
        let inner = &self.inner;
        r.register(
            "engine",
            "This instance: its build's version and its id",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("instance_id", inner.config.instance.clone()),
            ]),
        );
        inner.metrics.register(&mut r);
        let (beacons_sent, beacons_failed) = self.beacons_sent();
        let elections = self.elections();
        let counters = [
            (
                "append_conflicts",
                "Appends refused because another instance wrote the tree first (each retried)",
                inner.conflicts.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "beacons_published",
                "Beacons this instance published and the signal stream stored",
                beacons_sent,
            ),
            (
                "beacon_failures",
                "Beacons not published or not acknowledged",
                beacons_failed,
            ),
            (
                "audit_failures",
                "Attempts to store check records that the audit stream did not take (the records wait in the outbox and are sent again)",
                inner.audit.failures(),
            ),
            (
                "election_append_retries",
                "Appends sent again (same message id) after their acknowledgement timed out: a stream without a leader",
                elections.append_retries,
            ),
            (
                "election_unavailable",
                "Appends given up and leader reads not answered (no stream leader): each failed unavailable",
                elections.unavailable,
            ),
        ];
        for (name, help, value) in counters.into_iter().chain(inner.sets.read()) {
            r.register(name, help, ConstCounter::new(value));
        }
        for (name, help, value) in self.scraped_gauges().await {
            match value {
                Ok(v) => r.register(name, help, ConstGauge::new(v)),
                Err(e) => {
                    tracing::warn!(metric = name, error = %e, "metric left out of this scrape")
                }
            }
        }
        let mut text = String::new();
        encode(&mut text, &r).map_err(|e| {
            EngineError::message(
                EngineErrorKind::Internal,
                format!("cannot encode the metrics: {e}"),
            )
        })?;
        Ok(text)
    }

    /// The gauges read at scrape time: `(name, help, value)`.
    async fn scraped_gauges(&self) -> Vec<(&'static str, &'static str, Read<i64>)> {
        let log_position = within("log position", self.inner.log.last_position()).await;
        let me = self.clone();
        let local = tokio::task::spawn_blocking(move || {
            let store = &me.inner.store;
            let now = me.now();
            let checkpoint = store.checkpoint().map_err(|e| e.to_string());
            let due = store
                .due_expiry_count(now, |t| me.serves(t), COUNT_LIMIT)
                .map_err(|e| e.to_string());
            let outbox = store.outbox_len(COUNT_LIMIT).map_err(|e| e.to_string());
            (checkpoint, due, outbox)
        })
        .await;
        let (checkpoint, due, outbox) = match local {
            Ok(read) => read,
            Err(e) => {
                let e = format!("store read ended: {e}");
                (Err(e.clone()), Err(e.clone()), Err(e))
            }
        };
        let lag = match (&log_position, &checkpoint) {
            (Ok(log), Ok(applied)) => Ok(log.saturating_sub(*applied)),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        let mut gauges = vec![
            (
                "projection_lag",
                "Log records not yet applied in order by this instance's projection (the log's last position minus the checkpoint)",
                lag,
            ),
            (
                "projection_position",
                "The last log position this instance's projection applied in order",
                checkpoint,
            ),
            (
                "expiry_backlog",
                "Expiries due and not yet processed, in the tenants this instance serves",
                due,
            ),
            (
                "outbox_depth",
                "Commits whose signals are not yet known to be stored",
                outbox,
            ),
        ];
        if self.inner.nats.is_some() {
            gauges.push((
                "audit_pending",
                "Check records in this instance's audit outbox that the audit stream has not stored yet",
                Ok(self.inner.audit.pending()),
            ));
            gauges.push((
                "mission_intake_pending",
                "Mission completions in the mission stream that this instance's intake consumers have not yet acknowledged (not delivered, or delivered and in progress)",
                self.intake_pending().await,
            ));
            gauges.push((
                "mission_marks_lag",
                "Mission-stream records this instance's marks follower has not yet judged",
                self.marks_lag().await,
            ));
        }
        gauges
            .into_iter()
            .map(|(name, help, v)| (name, help, v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))))
            .collect()
    }

    /// The mission completions the intake's durable consumers (one, or one
    /// per served tenant) have not acknowledged yet.
    async fn intake_pending(&self) -> Read<u64> {
        let Some(client) = self.inner.nats.clone() else {
            return Ok(0);
        };
        let js = jetstream::new(client);
        let durables: Vec<String> = match self.inner.config.tenants.as_slice() {
            [] => vec![MISSION_CONSUMER.to_string()],
            some => some
                .iter()
                .map(|t| format!("{MISSION_CONSUMER}-{t}"))
                .collect(),
        };
        let mut pending = 0;
        for durable in durables {
            let consumer = within(
                "mission intake consumer",
                js.get_consumer_from_stream::<pull::Config, _, _>(&durable, MISSION_STREAM),
            )
            .await?;
            let info = consumer.cached_info();
            pending += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(pending)
    }

    /// Records of the mission stream past the last one the marks follower
    /// judged.
    async fn marks_lag(&self) -> Read<u64> {
        let Some(stream) = &self.inner.missions.stream else {
            return Ok(0);
        };
        let mut stream = stream.clone();
        let info = within("mission stream", stream.info()).await?;
        let seen = self
            .inner
            .missions
            .marks_seen
            .load(std::sync::atomic::Ordering::Acquire);
        Ok(info.state.last_sequence.saturating_sub(seen))
    }

    /// Publishes one signal on the bus, and counts it
    /// ([`Metrics::signals`]).
    pub(super) async fn publish_counted(&self, signal: &Signal) -> Result<(), EngineError> {
        let published = self.inner.bus.publish(signal).await;
        let failed: &[_] = match &published {
            Ok(()) => &[],
            Err(_) => &[signal.event_id],
        };
        self.inner
            .metrics
            .signals(std::slice::from_ref(signal), failed);
        published
    }

    /// Counts, off the reply's path, the descendants each terminating event
    /// of a commit this instance wrote ended ([`Metrics::cascade`]).
    pub(super) fn count_cascade(&self, tenant: &TenantId, tree: TreeId, events: &[Event]) {
        let ended: Vec<MandateId> = events
            .iter()
            .filter(|e| terminates(&e.body))
            .map(|e| e.body.mandate())
            .collect();
        if ended.is_empty() {
            return;
        }
        // A weak handle: an engine dropped meanwhile (its store closed for
        // another to open) is not kept open by a count.
        let job = CountJob {
            inner: Arc::downgrade(&self.inner),
            tenant: tenant.clone(),
            tree,
            ended,
            now: self.now(),
        };
        self.inner.metrics.counts.send(job);
    }
}

/// One commit's terminating events, to count.
struct CountJob {
    inner: Weak<Inner>,
    tenant: TenantId,
    tree: TreeId,
    ended: Vec<MandateId>,
    now: DateTime<Utc>,
}

/// The cascade counts' own thread, at the lowest priority, and its queue.
///
/// A count reads up to [`crate::store::CASCADE_COUNT_LIMIT`] mandates,
/// which on a large projection are mostly not in sled's cache: a few
/// milliseconds of the CPU each. On a tokio blocking thread it ran beside
/// the reply it follows and the next request, and on a 2-core machine the
/// revoke of the root of a tree of 100,000 took up to four times as long
/// with it as without it (BENCHMARKS.md). At nice 19 it runs on what the
/// request path leaves. Under a load that leaves nothing (or writes that
/// never pause for [`QUIET`], below), the queue fills and further counts are
/// skipped, and counted as skipped: the histogram then says less, and the
/// request path pays nothing for it.
///
/// Low priority is not enough on its own: sled's reads and its batches
/// share one process-wide lock, so a count preempted inside a read holds
/// the next command's apply up until the scheduler gives it a core again,
/// which at nice 19 on a busy machine can take milliseconds. So a count
/// reads only when no write has started for [`QUIET`], and looks again
/// before each read: a command's apply never waits for more than the one
/// read in flight when it began.
#[derive(Default)]
pub(super) struct Counts {
    queue: OnceLock<SyncSender<CountJob>>,
    skipped: Counter,
    /// When the last write began, in microseconds since [`epoch`] (0: none
    /// yet).
    last_write: AtomicU64,
}

/// Counts waiting for the counting thread at most.
const COUNT_QUEUE: usize = 1024;

/// How long after a write began the counts keep off sled. A command's
/// apply follows its append's acknowledgement, a fraction of a millisecond
/// after the write began; back-to-back commands come closer than this.
const QUIET: Duration = Duration::from_millis(5);

/// The instant [`Counts::last_write`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// How much longer to keep off sled, `since` after the last write began.
fn still_quiet_for(since: Duration) -> Option<Duration> {
    QUIET.checked_sub(since).filter(|d| !d.is_zero())
}

impl Counts {
    /// A write is about to begin.
    fn writing(&self) {
        let micros = epoch().elapsed().as_micros().max(1);
        self.last_write
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Returns once no write has begun for [`QUIET`].
    fn wait_quiet(&self) {
        loop {
            let last = self.last_write.load(Ordering::Relaxed);
            if last == 0 {
                return;
            }
            let since = epoch()
                .elapsed()
                .saturating_sub(Duration::from_micros(last));
            match still_quiet_for(since) {
                Some(wait) => std::thread::sleep(wait),
                None => return,
            }
        }
    }

    fn send(&self, job: CountJob) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel(COUNT_QUEUE);
            // The thread ends when the engine (and with it this sender)
            // is dropped.
            let spawned = std::thread::Builder::new()
                .name("cascade-count".into())
                .spawn(move || count_each(rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for the cascade counts; they are skipped");
            }
            tx
        });
        if queue.try_send(job).is_err() {
            self.skipped.inc();
        }
    }
}

/// The counting thread: each job in turn, at the lowest priority.
fn count_each(jobs: Receiver<CountJob>) {
    lowest_priority();
    while let Ok(job) = jobs.recv() {
        let Some(inner) = job.inner.upgrade() else {
            continue;
        };
        let counts = &inner.metrics.counts;
        for mandate in job.ended {
            match inner.store.descendants_ended_by_pausing(
                &job.tenant,
                job.tree,
                mandate,
                job.now,
                || counts.wait_quiet(),
            ) {
                Ok(n) => inner.metrics.cascade(n),
                Err(e) => {
                    tracing::warn!(tenant = %job.tenant, tree = %job.tree, %mandate, error = %e, "cascade not counted")
                }
            }
        }
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19). On Linux a
/// nice value is a thread's own, and 0 names the calling thread; a thread
/// may always lower its own priority.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority(2) on the calling thread with a constant
        // value; it reads and writes no memory of ours.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cascade counts at normal priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keep_off_sled_until_no_write_has_begun_for_a_while() {
        assert_eq!(still_quiet_for(Duration::ZERO), Some(QUIET));
        assert_eq!(
            still_quiet_for(Duration::from_millis(1)),
            Some(QUIET - Duration::from_millis(1))
        );
        assert_eq!(still_quiet_for(QUIET), None);
        assert_eq!(still_quiet_for(QUIET * 2), None);

        let counts = Counts::default();
        counts.writing();
        let t = Instant::now();
        counts.wait_quiet();
        assert!(
            t.elapsed() >= QUIET - Duration::from_micros(1),
            "waited {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn the_last_fan_out_bucket_is_the_counts_limit() {
        assert_eq!(
            FANOUT_BUCKETS.last().copied(),
            Some(crate::store::CASCADE_COUNT_LIMIT as f64)
        );
    }

    #[test]
    fn labels_come_from_fixed_lists() {
        assert_eq!(command_type("revoke"), "revoke");
        assert_eq!(command_type("revoke_agent"), "revoke_agent");
        assert_eq!(command_type("x\"}evil"), UNKNOWN);
        assert_eq!(query_kind("verify"), "verify");
        assert_eq!(query_kind("drop_tables"), UNKNOWN);
    }
}
