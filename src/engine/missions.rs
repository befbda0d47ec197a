//! NATS-side streams the engine owns besides the event log: mission-complete
//! intake (a durable consumer, so no completion is lost while the engine is
//! down) and the audit stream.

use std::time::Duration;

use async_nats::jetstream::{
    self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, AckKind,
};
use futures::StreamExt;

use crate::domain::{Actor, MandateId, MissionRef, TenantId};
use crate::protocol::AuditRecord;

use super::{Engine, EngineConfig, EngineError};

/// Stream of mission-complete messages from ticketing systems.
pub const MISSION_STREAM: &str = "MANDATE_MISSIONS";
/// Durable consumer shared by all engine instances (work-queue style: each
/// completion is handled by one instance, and redelivered if it dies).
pub const MISSION_CONSUMER: &str = "mandate-engine";
/// Stream of recorded check decisions.
pub const AUDIT_STREAM: &str = "MANDATE_AUDIT";

fn unavailable(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("{what}: {e}"))
}

pub(crate) async fn setup_streams(
    client: &async_nats::Client,
    config: &EngineConfig,
) -> Result<(), EngineError> {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: MISSION_STREAM.into(),
        subjects: vec!["mission.*.*.completed".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable("cannot create the mission stream", e))?;
    js.get_or_create_stream(jetstream::stream::Config {
        name: AUDIT_STREAM.into(),
        subjects: vec!["mandate.audit.>".into()],
        storage: jetstream::stream::StorageType::File,
        max_age: config.audit_retention,
        ..Default::default()
    })
    .await
    .map_err(|e| unavailable("cannot create the audit stream", e))?;
    Ok(())
}

/// Parses `mission.<tenant>.<ref>.completed`.
pub(crate) fn parse_mission_subject(subject: &str) -> Result<(TenantId, MissionRef), String> {
    let parts: Vec<&str> = subject.split('.').collect();
    match parts.as_slice() {
        ["mission", tenant, mission, "completed"] => Ok((
            TenantId::new(*tenant).map_err(|e| e.to_string())?,
            MissionRef::new(*mission).map_err(|e| e.to_string())?,
        )),
        _ => Err(format!(
            "subject {subject:?} is not mission.<tenant>.<ref>.completed"
        )),
    }
}

/// The intake loop: completes every tree of the mission, then acknowledges.
/// A failure leaves the message unacknowledged (redelivered later).
/// An instance serving some tenants only has one durable consumer per tenant
/// (`mandate-engine-<tenant>`, filtered on `mission.<tenant>.*.completed`).
pub(crate) async fn intake(engine: Engine) -> Result<(), EngineError> {
    let tenants = engine.inner.config.tenants.clone();
    if tenants.is_empty() {
        return intake_one(engine, None).await;
    }
    let all = tenants
        .into_iter()
        .map(|t| intake_one(engine.clone(), Some(t)));
    futures::future::try_join_all(all).await.map(|_| ())
}

async fn intake_one(engine: Engine, tenant: Option<TenantId>) -> Result<(), EngineError> {
    let Some(client) = engine.inner.nats.clone() else {
        return std::future::pending().await;
    };
    let js = jetstream::new(client);
    let (durable, filter) = match &tenant {
        None => (MISSION_CONSUMER.to_string(), String::new()),
        Some(t) => (
            format!("{MISSION_CONSUMER}-{t}"),
            format!("mission.{t}.*.completed"),
        ),
    };
    loop {
        let consumer = match js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: filter.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
                MISSION_STREAM,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "mission intake: cannot bind consumer; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "mission intake: cannot pull; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(msg) = messages.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "mission intake interrupted");
                    break;
                }
            };
            match parse_mission_subject(msg.subject.as_str()) {
                Err(reason) => {
                    tracing::error!(subject = %msg.subject, %reason, "mission message refused");
                    let _ = msg.ack_with(AckKind::Term).await;
                }
                Ok((tenant, mission)) => {
                    match engine
                        .complete_mission(&tenant, &mission, Actor::mission_intake(), None)
                        .await
                    {
                        Ok(res) => {
                            tracing::info!(%tenant, %mission, trees = res.commits.len(), "mission completed");
                            if let Err(e) = msg.ack().await {
                                tracing::warn!(error = %e, "mission ack failed; it will be redelivered and deduplicated");
                            }
                        }
                        Err(e) => {
                            tracing::error!(%tenant, %mission, error = %e, "mission completion failed; will retry");
                            let _ = msg
                                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                                .await;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps this instance's record of completed missions complete: every
/// instance reads the whole mission stream (an ordered consumer of its own),
/// while only one of them — through the shared durable consumer — completes
/// the trees. Without this, a mission completed before any tree served it
/// would be known only to the instance that took the message, and another
/// instance would still issue mandates for it.
pub(crate) async fn follow_marks(engine: Engine) -> Result<(), EngineError> {
    let Some(client) = engine.inner.nats.clone() else {
        return std::future::pending().await;
    };
    let js = jetstream::new(client);
    loop {
        let consumer = match js.get_stream(MISSION_STREAM).await {
            Ok(stream) => {
                stream
                    .create_consumer(pull::OrderedConfig {
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "mission marks: no mission stream yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "mission marks: cannot read; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "mission marks: cannot create a consumer; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(msg) = messages.next().await {
            let Ok(msg) = msg else { break };
            // Malformed subjects are refused (and logged) by the intake.
            if let Ok((tenant, mission)) = parse_mission_subject(msg.subject.as_str()) {
                if engine.serves(&tenant) {
                    engine
                        .inner
                        .store
                        .mark_mission_completed(&tenant, &mission)?;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a mandate's audit records from the audit stream.
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
                filter_subject: crate::protocol::audit_subject(tenant, mandate),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            },
            AUDIT_STREAM,
        )
        .await
        .map_err(|e| unavailable("cannot read the audit stream", e))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(pending.min(512) as usize)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| unavailable("cannot read the audit stream", e))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| unavailable("cannot read the audit stream", e))?;
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
