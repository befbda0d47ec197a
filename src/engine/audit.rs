//! The audit stream (over NATS): its creation, appends and reads. Every
//! check the engine answers is recorded on `mandate.audit.<tenant>.<mandate>`
//! in the `MANDATE_AUDIT` stream, kept for `EngineConfig::audit_retention`. That stream is the record of
//! decisions over NATS; the in-process engine keeps them in the store
//! instead (`store/audit.rs`). Decisions are not events: neither the log
//! nor a rebuild holds them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
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

/// Sends a check decision to the audit stream, on its mandate's subject,
/// and returns the stream's acknowledgement to await. It is sent before the
/// check's reply, on the same connection, so the server has the record
/// before the caller has the answer; confirming that the stream stored it
/// is left off the reply path ([`confirm`]).
pub(crate) async fn send(
    client: &async_nats::Client,
    tenant: &TenantId,
    record: &AuditRecord,
) -> Result<PublishAckFuture, EngineError> {
    // An `AuditRecord` is plain data: encoding it cannot fail.
    let payload = serde_json::to_vec(record).expect("audit records serialize");
    jetstream::new(client.clone())
        .publish(
            audit_subject(tenant, record.decision.mandate),
            payload.into(),
        )
        .await
        .map_err(|e| not_stored(&e))
}

/// Awaits, in the background, the audit stream's acknowledgement of a
/// record [`send`] sent: a record the stream did not store is logged as an
/// error and counted in `failures` (which `health` reports).
pub(crate) fn confirm(ack: PublishAckFuture, mandate: MandateId, failures: Arc<AtomicU64>) {
    tokio::spawn(async move {
        if let Err(e) = ack.await {
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%mandate, error = %not_stored(&e), "AUDIT RECORD LOST: a check was answered but its record is not in the audit stream");
        }
    });
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
