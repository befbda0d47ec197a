//! The audit stream (over NATS): its creation, appends and reads. Every
//! check the engine answers is recorded on `mandate.audit.<tenant>.<mandate>`
//! in the `MANDATE_AUDIT` stream, kept for `EngineConfig::audit_retention`. That stream is the record of
//! decisions over NATS; the in-process engine keeps them in the store
//! instead (`store/audit.rs`). Decisions are not events: neither the log
//! nor a rebuild holds them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
/// `retention`.
pub(crate) async fn setup_stream(
    client: &async_nats::Client,
    retention: Duration,
) -> Result<(), EngineError> {
    jetstream::new(client.clone())
        .get_or_create_stream(jetstream::stream::Config {
            name: AUDIT_STREAM.into(),
            subjects: vec!["mandate.audit.>".into()],
            storage: jetstream::stream::StorageType::File,
            max_age: retention,
            ..Default::default()
        })
        .await
        .map_err(|e| EngineError::unavailable(format!("cannot create the audit stream: {e}")))?;
    Ok(())
}

/// Where this instance records the checks it answers, and how many
/// records it lost.
#[derive(Default)]
pub(crate) struct AuditSink {
    /// Over NATS, one JetStream context for every append: its acker task
    /// and its bound on acknowledgements in flight are shared by all checks.
    js: Option<jetstream::Context>,
    /// Records not stored since the instance started (for `health`).
    failures: Arc<AtomicU64>,
}

impl AuditSink {
    /// The sink of an instance over NATS (`client`) or in process (`None`,
    /// where the store keeps the records and the sink only counts losses).
    pub(crate) fn new(client: Option<&async_nats::Client>) -> Self {
        Self {
            js: client.map(|c| jetstream::new(c.clone())),
            failures: Arc::default(),
        }
    }

    /// Sends a check decision to the audit stream, on its mandate's
    /// subject. It is sent before the check's reply, on the same
    /// connection, so the server has the record before the caller has the
    /// answer; the stream's acknowledgement is awaited in the background,
    /// off the reply path, and a record it did not store is counted.
    pub(crate) async fn send(
        &self,
        tenant: &TenantId,
        record: &AuditRecord,
    ) -> Result<(), EngineError> {
        let Some(js) = &self.js else {
            return Err(EngineError::unavailable("no audit stream in process"));
        };
        // An `AuditRecord` is plain data: encoding it cannot fail.
        let payload = serde_json::to_vec(record).expect("audit records serialize");
        let ack = js
            .publish(
                audit_subject(tenant, record.decision.mandate),
                payload.into(),
            )
            .await
            .map_err(|e| not_stored(&e))?;
        let (mandate, failures) = (record.decision.mandate, self.failures.clone());
        tokio::spawn(async move {
            if let Err(e) = ack.await {
                lost(&failures, mandate, &not_stored(&e));
            }
        });
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
