//! The audit stream (over NATS): its creation, appends and reads. Every
//! check the engine answers is recorded on `mandate.audit.<tenant>.<mandate>`
//! in the `MANDATE_AUDIT` stream, kept for `EngineConfig::audit_retention`. That stream is the record of
//! decisions over NATS; the in-process engine keeps them in the store
//! instead (`store/audit.rs`). Decisions are not events: neither the log
//! nor a rebuild holds them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;

use crate::domain::{MandateId, TenantId};
use crate::protocol::{audit_subject, AuditRecord};

use super::EngineError;

/// Stream of recorded check decisions.
pub const AUDIT_STREAM: &str = "MANDATE_AUDIT";

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::unavailable(format!("cannot read the audit stream: {e}"))
}

/// Creates the audit stream if it is not there, keeping records for
/// `retention`, on `replicas` replicas.
pub(crate) async fn setup_stream(
    client: &async_nats::Client,
    retention: Duration,
    replicas: usize,
) -> Result<(), EngineError> {
    let js = jetstream::new(client.clone());
    crate::log::get_or_create_stream(
        &js,
        jetstream::stream::Config {
            name: AUDIT_STREAM.into(),
            subjects: vec!["mandate.audit.>".into()],
            storage: jetstream::stream::StorageType::File,
            max_age: retention,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| EngineError::unavailable(format!("cannot create the audit stream: {e}")))?;
    crate::log::ensure_replicas(&js, AUDIT_STREAM, replicas).await?;
    Ok(())
}

/// How long a record's acknowledgement by the stream is awaited before
/// the record is counted as lost.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Where this instance records the checks it answers, and how many
/// records it lost.
#[derive(Default)]
pub(crate) struct AuditSink {
    /// Over NATS: where records are published and their acknowledgements
    /// come back.
    out: Option<Outbox>,
    /// Records not stored since the instance started (for `health`).
    failures: Arc<AtomicU64>,
}

/// Records go out as plain publishes to the audit stream's subjects, each
/// with its own reply subject under one prefix this instance subscribes to;
/// one task reads every acknowledgement, so a check costs one publish and
/// one map entry, no task, timer or channel of its own.
struct Outbox {
    client: async_nats::Client,
    /// `<inbox>.`: a record's acknowledgement comes on `<inbox>.<n>`.
    prefix: String,
    next: AtomicU64,
    /// Records sent and not yet acknowledged: their mandate and when sent.
    pending: Arc<Mutex<HashMap<u64, (MandateId, Instant)>>>,
    /// Ends the acknowledgement task when the sink is dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl AuditSink {
    /// The sink of an instance over NATS (`client`) or in process (`None`,
    /// where the store keeps the records and the sink only counts losses).
    /// Over NATS, subscribes to the records' acknowledgements first.
    pub(crate) async fn new(client: Option<&async_nats::Client>) -> Result<Self, EngineError> {
        let failures = Arc::<AtomicU64>::default();
        let Some(client) = client else {
            return Ok(Self {
                out: None,
                failures,
            });
        };
        let inbox = client.new_inbox();
        let acks = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| EngineError::unavailable(format!("cannot subscribe: {e}")))?;
        let pending = Arc::<Mutex<HashMap<u64, (MandateId, Instant)>>>::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(read_acks(
            acks,
            format!("{inbox}."),
            pending.clone(),
            failures.clone(),
            stopped,
        ));
        Ok(Self {
            out: Some(Outbox {
                client: client.clone(),
                prefix: format!("{inbox}."),
                next: AtomicU64::new(0),
                pending,
                _stop: stop,
            }),
            failures,
        })
    }

    /// Sends a check decision to the audit stream, on its mandate's
    /// subject. It is sent before the check's reply, on the same
    /// connection, so the server has the record before the caller has the
    /// answer; the stream's acknowledgement is read in the background,
    /// off the reply path, and a record it did not store (an error, no
    /// stream, or no acknowledgement within [`ACK_WAIT`]) is counted.
    pub(crate) async fn send(
        &self,
        tenant: &TenantId,
        record: &AuditRecord,
    ) -> Result<(), EngineError> {
        let Some(out) = &self.out else {
            return Err(EngineError::unavailable("no audit stream in process"));
        };
        // An `AuditRecord` is plain data: encoding it cannot fail.
        let payload = serde_json::to_vec(record).expect("audit records serialize");
        let n = out.next.fetch_add(1, Ordering::Relaxed);
        let mandate = record.decision.mandate;
        // Registered before the publish, so its acknowledgement finds it.
        lock(&out.pending).insert(n, (mandate, Instant::now()));
        let sent = out
            .client
            .publish_with_reply(
                audit_subject(tenant, mandate),
                format!("{}{n}", out.prefix),
                payload.into(),
            )
            .await;
        if let Err(e) = sent {
            lock(&out.pending).remove(&n);
            return Err(not_stored(&e));
        }
        Ok(())
    }

    /// Counts a record that was not stored, and says so loudly.
    pub(crate) fn lost(&self, mandate: MandateId, error: &EngineError) {
        lost(&self.failures, mandate, error);
    }

    /// Records not stored since the instance started.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the stream's acknowledgements of records until the sink is
/// dropped (or the connection closes): an error or a "no responders"
/// (no audit stream) counts the record as lost, and so does a record not
/// acknowledged within [`ACK_WAIT`].
async fn read_acks(
    mut acks: async_nats::Subscriber,
    prefix: String,
    pending: Arc<Mutex<HashMap<u64, (MandateId, Instant)>>>,
    failures: Arc<AtomicU64>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut sweep = tokio::time::interval(ACK_WAIT / 5);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = acks.next() => {
                let Some(m) = m else { break };
                let Some(n) = m
                    .subject
                    .strip_prefix(prefix.as_str())
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let Some((mandate, _)) = lock(&pending).remove(&n) else {
                    // Already counted as lost when it was late.
                    continue;
                };
                if let Some(e) = ack_error(&m) {
                    lost(&failures, mandate, &not_stored(&e));
                }
            }
            _ = sweep.tick() => {
                let late: Vec<MandateId> = {
                    let mut pending = lock(&pending);
                    let mut late = Vec::new();
                    pending.retain(|_, (mandate, sent)| {
                        let keep = sent.elapsed() < ACK_WAIT;
                        if !keep {
                            late.push(*mandate);
                        }
                        keep
                    });
                    late
                };
                for mandate in late {
                    lost(&failures, mandate, &not_stored(&"no acknowledgement from the audit stream in time"));
                }
            }
            _ = &mut stopped => break,
        }
    }
    // What is still awaited will not be confirmed any more.
    let left: Vec<MandateId> = lock(&pending).drain().map(|(_, (m, _))| m).collect();
    for mandate in left {
        lost(
            &failures,
            mandate,
            &not_stored(&"the instance stopped before the audit stream acknowledged it"),
        );
    }
}

/// Why an acknowledgement says the record was not stored, if it does.
fn ack_error(m: &async_nats::Message) -> Option<String> {
    if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Some("no audit stream answers (no responders)".into());
    }
    #[derive(serde::Deserialize)]
    struct Ack {
        #[serde(default)]
        stream: Option<String>,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Ack>(&m.payload) {
        Ok(Ack {
            error: Some(error), ..
        }) => Some(format!("the audit stream refused it: {error}")),
        Ok(Ack {
            stream: Some(_), ..
        }) => None,
        Ok(_) => Some("an acknowledgement that names no stream".into()),
        Err(e) => Some(format!("an unreadable acknowledgement: {e}")),
    }
}

fn lost(failures: &AtomicU64, mandate: MandateId, error: &EngineError) {
    failures.fetch_add(1, Ordering::Relaxed);
    tracing::error!(%mandate, %error, "AUDIT RECORD LOST: a check was answered but its record is not stored");
}

fn not_stored(e: &dyn std::fmt::Display) -> EngineError {
    EngineError::unavailable(format!("cannot record the check in the audit stream: {e}"))
}

/// Reads a mandate's audit records from the audit stream, oldest first.
pub(crate) async fn read_audit(
    client: &async_nats::Client,
    tenant: &TenantId,
    mandate: MandateId,
) -> Result<Vec<AuditRecord>, EngineError> {
    let js = jetstream::new(client.clone());
    let consumer = js
        .create_consumer_on_stream(
            pull::Config {
                deliver_policy: DeliverPolicy::All,
                filter_subject: audit_subject(tenant, mandate),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            },
            AUDIT_STREAM,
        )
        .await
        .map_err(unavailable)?;
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(pending.min(512) as usize)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(unavailable)?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(unavailable)?;
            got += 1;
            if let Ok(r) = serde_json::from_slice::<AuditRecord>(&m.payload) {
                out.push(r);
            }
            if m.info().map(|i| i.pending == 0).unwrap_or(false) {
                pending = 0;
                break;
            }
        }
        if got == 0 {
            break;
        }
        pending = pending.saturating_sub(got);
    }
    Ok(out)
}
