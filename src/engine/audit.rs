//! The audit stream (over NATS): its creation, appends and reads. Every
//! check the engine answers is recorded on `mandate.audit.<tenant>.<mandate>`
//! in the `MANDATE_AUDIT` stream, kept for `EngineConfig::audit_retention`. That stream is the record of
//! decisions over NATS; the in-process engine keeps them in the store
//! instead (`store/audit.rs`). Decisions are not events: neither the log
//! nor a rebuild holds them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;

use crate::domain::{MandateId, TenantId};
use crate::protocol::{audit_subject, AuditRecord};

use super::EngineError;

mod outbox;

pub use outbox::FILE as OUTBOX_FILE;

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

/// Where this instance records the checks it answers, how many records
/// wait for the audit stream, and how many attempts to store them failed.
#[derive(Default)]
pub(crate) struct AuditSink {
    /// Over NATS: the outbox records wait in until the stream stores them.
    out: Option<outbox::Outbox>,
    /// Over NATS: attempts at a batch the audit stream did not take. In
    /// process: records the store did not take.
    failures: Arc<AtomicU64>,
}

impl AuditSink {
    /// The sink of an instance over NATS (`client`, with the outbox in
    /// `dir`) or in process (`None`, where the store keeps the records and
    /// the sink only counts losses).
    pub(crate) fn new(nats: Option<(&async_nats::Client, &Path)>) -> Result<Self, EngineError> {
        let failures = Arc::<AtomicU64>::default();
        let out = match nats {
            Some((client, dir)) => Some(outbox::Outbox::open(dir, client, failures.clone())?),
            None => None,
        };
        Ok(Self { out, failures })
    }

    /// Puts a check decision in the outbox, on its mandate's subject: it is
    /// on disk before the check's reply is sent, and the audit stream gets
    /// it within milliseconds (or, while the stream cannot take it, as soon
    /// as it can, even after a restart).
    pub(crate) fn send<R: serde::Serialize>(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
        record: &R,
    ) -> Result<(), EngineError> {
        let Some(out) = &self.out else {
            return Err(EngineError::unavailable("no audit stream in process"));
        };
        out.append(&audit_subject(tenant, mandate), record)
    }

    /// Counts a record that was not stored, and says so loudly.
    pub(crate) fn lost(&self, mandate: MandateId, error: &EngineError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%mandate, %error, "AUDIT RECORD LOST: a check was answered but its record is not stored");
    }

    /// Over NATS, attempts to store records that failed (they are sent
    /// again); in process, records lost; since the instance started.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records answered and not yet stored by the audit stream.
    pub(crate) fn pending(&self) -> u64 {
        self.out.as_ref().map_or(0, outbox::Outbox::pending)
    }
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
            // One record or several, one a line (see `outbox`).
            for line in m.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(r) = serde_json::from_slice::<AuditRecord>(line) {
                    out.push(r);
                }
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
