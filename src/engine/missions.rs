//! The mission stream (over NATS): mission-complete intake (a durable
//! consumer, so no completion is lost while the engine is down), the
//! follower of completed-mission marks, the dead-letter stream of refused
//! completions, and the fresh read of a mission's completion. The audit
//! stream has its own file (`audit.rs`).
//!
//! The mission stream is the source of the store's mission marks over NATS:
//! every instance's marks follower reads it whole at every start, so marks
//! are re-derived on a fresh or rebuilt data directory.
//!
//! One gate for every reader of the mission stream
//! (`Engine::accept_completion`): the intake, the marks follower and the
//! fresh read of an `issue` accept a completion only if it passes the same
//! check (see [`super::auth`]). The intake, which sees each message once,
//! moves refused ones to the dead-letter stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::domain::{Actor, CommandId, MissionRef, TenantId};
use crate::protocol::{mission_subject, MissionCompletedNotice};

use super::auth::{actor_key, sign_as, AUTH_HEADER};
use super::{Engine, EngineError};
use crate::log::EventLog;

/// Stream of mission-complete messages from ticketing systems.
pub const MISSION_STREAM: &str = "MANDATE_MISSIONS";
/// Durable consumer shared by all engine instances (work-queue style: each
/// completion is handled by one instance, and redelivered if it dies).
pub const MISSION_CONSUMER: &str = "mandate-engine";
/// Stream of refused mission completions, for operators.
pub const DEAD_LETTER_STREAM: &str = "MANDATE_DEAD_LETTERS";
/// The subject a refused mission completion is moved to: its original body,
/// with the headers below.
pub const DEAD_LETTER_SUBJECT: &str = "mandate.dead.mission";
/// Header of a dead letter: the subject the completion was published on.
pub const REJECTED_SUBJECT_HEADER: &str = "Mandate-Rejected-Subject";
/// Header of a dead letter: why it was refused.
pub const REJECTED_REASON_HEADER: &str = "Mandate-Rejected-Reason";
/// Header of a dead letter: its sequence in the mission stream.
pub const REJECTED_SEQUENCE_HEADER: &str = "Mandate-Rejected-Sequence";
/// Longest wait for this instance's marks follower to judge a completion
/// that an `issue` found on the mission stream; past it the issue fails
/// (unavailable) rather than decide without knowing.
const MARKS_WAIT: Duration = Duration::from_secs(5);
/// Longest wait of the intake for this instance's projection to reach the
/// log before it completes a mission's trees; past it the message is
/// redelivered.
const INTAKE_CATCH_UP: Duration = Duration::from_secs(5);
/// Pause of the intake and the marks follower before they subscribe again
/// after a failure.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// Pause of the marks follower, at the end of the mission stream, before it
/// asks for the next record again.
const MARKS_POLL: Duration = Duration::from_millis(200);
/// The subjects of the mission stream.
const MISSION_FILTER: &str = "mission.*.*.completed";

/// What an instance holds of the mission stream.
#[derive(Default)]
pub(crate) struct MissionState {
    /// The mission stream (over NATS).
    pub(crate) stream: Option<jetstream::stream::Stream>,
    /// The dead-letter stream (over NATS).
    pub(crate) dead: Option<jetstream::stream::Stream>,
    /// The last mission-stream sequence the marks follower has judged.
    pub(crate) marks_seen: AtomicU64,
    /// Woken whenever `marks_seen` moves.
    pub(crate) marks_moved: Notify,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::unavailable(format!("{what}: {e}"))
}

/// Creates the mission and dead-letter streams if they are not there, on
/// `replicas` replicas.
pub(crate) async fn setup_streams(
    client: &async_nats::Client,
    replicas: usize,
) -> Result<MissionState, EngineError> {
    let js = jetstream::new(client.clone());
    let stream = crate::log::get_or_create_stream(
        &js,
        jetstream::stream::Config {
            name: MISSION_STREAM.into(),
            subjects: vec![MISSION_FILTER.into()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| unavailable("cannot create the mission stream", e))?;
    let dead = crate::log::get_or_create_stream(
        &js,
        jetstream::stream::Config {
            name: DEAD_LETTER_STREAM.into(),
            subjects: vec![DEAD_LETTER_SUBJECT.into()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| unavailable("cannot create the dead-letter stream", e))?;
    crate::log::ensure_replicas(&js, MISSION_STREAM, replicas).await?;
    crate::log::ensure_replicas(&js, DEAD_LETTER_STREAM, replicas).await?;
    Ok(MissionState {
        stream: Some(stream),
        dead: Some(dead),
        ..MissionState::default()
    })
}

impl Engine {
    /// The gate of every reader of the mission stream: whether a completion
    /// published on `subject` with `headers` and `body` may be applied.
    pub(crate) fn accept_completion(
        &self,
        tenant: &TenantId,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: &[u8],
    ) -> Result<(), EngineError> {
        let Some(config) = &self.inner.config.auth else {
            return Ok(());
        };
        let header = headers.and_then(|h| h.get(AUTH_HEADER)).map(|v| v.as_str());
        config.verify_completion(tenant, subject, body, header)
    }

    /// Whether `mission` is completed, read fresh: this instance's marks,
    /// else (over NATS) the last completion on the mission's subject. One
    /// that passes the gate is taken at once; one that does not may hide an
    /// earlier valid one, so then the marks follower (which judges every
    /// message in order) is awaited up to that message.
    pub(crate) async fn mission_completed(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
    ) -> Result<bool, EngineError> {
        if self.inner.store.mission_completed(tenant, mission)? {
            return Ok(true);
        }
        let Some(stream) = &self.inner.missions.stream else {
            return Ok(false);
        };
        let subject = mission_subject(tenant, mission);
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) => {
                use async_nats::jetstream::stream::LastRawMessageErrorKind;
                return match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => Ok(false),
                    _ => Err(unavailable("cannot read the mission stream", e)),
                };
            }
        };
        if self
            .accept_completion(tenant, &subject, Some(&last.headers), &last.payload)
            .is_ok()
        {
            self.inner.store.mark_mission_completed(tenant, mission)?;
            return Ok(true);
        }
        let state = &self.inner.missions;
        let deadline = tokio::time::Instant::now() + MARKS_WAIT;
        loop {
            // Registered before the check, so no wake-up falls in between.
            let moved = state.marks_moved.notified();
            if state.marks_seen.load(Ordering::Acquire) >= last.sequence {
                return Ok(self.inner.store.mission_completed(tenant, mission)?);
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return Err(EngineError::unavailable(format!(
                    "the completions of mission {mission} are not read yet; retry"
                )));
            }
        }
    }

    /// Records an administrator's completion of `mission` on the mission
    /// stream, where every instance reads it, signed with that
    /// administrator's key where the tenant requires authentication, so the
    /// gate accepts it. Retries of one command are stored once (message id
    /// from the command id). Embedded: nothing to do (one process).
    pub(crate) async fn record_completion(
        &self,
        tenant: &TenantId,
        mission: &MissionRef,
        actor: &Actor,
        command: CommandId,
    ) -> Result<(), EngineError> {
        let Some(client) = self.inner.nats.clone() else {
            return Ok(());
        };
        let subject = mission_subject(tenant, mission);
        let notice = MissionCompletedNotice {
            source: Some(actor.to_string()),
            reason: None,
        };
        let body = serde_json::to_vec(&notice)
            .map_err(|e| EngineError::invalid(format!("cannot encode the completion: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("mission-completed-{command}").as_str(),
        );
        if let Some(config) = &self.inner.config.auth {
            if let Some(keys) = config.tenants.get(tenant.as_str()) {
                let no_key = || {
                    EngineError::from(crate::domain::DomainError::NotAuthenticated {
                        reason: format!(
                            "{actor} has no key in tenant {tenant} to sign the completion of mission {mission} with"
                        ),
                    })
                };
                let key = actor_key(actor).ok_or_else(no_key)?;
                let secret = keys.keys.get(&key).ok_or_else(no_key)?;
                headers.insert(
                    AUTH_HEADER,
                    sign_as(secret.as_bytes(), &key, &subject, &body).as_str(),
                );
            }
        }
        jetstream::new(client)
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| unavailable("cannot record the mission completion", e))?
            .await
            .map_err(|e| unavailable("cannot record the mission completion", e))?;
        Ok(())
    }

    /// Moves a refused completion to the dead-letter stream (once per
    /// mission-stream message: the message id is its sequence).
    async fn dead_letter(&self, msg: &jetstream::Message, reason: &str) -> Result<(), EngineError> {
        let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        self.dead_letter_record(msg.subject.as_str(), &msg.payload, sequence, reason)
            .await
    }

    /// Writes the dead letter of the mission-stream record `sequence`
    /// (published on `subject` with `payload`); its message id is the
    /// sequence, so every instance and reader writes it once.
    async fn dead_letter_record(
        &self,
        subject: &str,
        payload: &bytes::Bytes,
        sequence: u64,
        reason: &str,
    ) -> Result<(), EngineError> {
        let Some(client) = self.inner.nats.clone() else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.insert(REJECTED_SUBJECT_HEADER, subject);
        // Header values are one line.
        headers.insert(
            REJECTED_REASON_HEADER,
            reason.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(REJECTED_SEQUENCE_HEADER, sequence.to_string().as_str());
        headers.insert(
            "Nats-Msg-Id",
            format!("mission-rejected-{sequence}").as_str(),
        );
        jetstream::new(client)
            .publish_with_headers(DEAD_LETTER_SUBJECT, headers, payload.clone())
            .await
            .map_err(|e| unavailable("cannot write the dead letter", e))?
            .await
            .map_err(|e| unavailable("cannot write the dead letter", e))?;
        Ok(())
    }

    /// Passes over a mission-stream record whose subject the NATS client
    /// cannot deliver (not UTF-8: the server's JSON answer shows its bad
    /// bytes as U+FFFD): dead-letters it with its sequence, then deletes it
    /// from the mission stream, so no consumer (the intake's durable one
    /// included) is handed it again. Such a subject is refused anyway
    /// (a mission ref token is ASCII).
    async fn pass_over_undeliverable(
        &self,
        stream: &jetstream::stream::Stream,
        record: &jetstream::message::StreamMessage,
    ) -> Result<(), EngineError> {
        let shown: String = record.subject.as_str().escape_default().collect();
        let reason = format!(
            "subject {shown} is not UTF-8: the NATS client cannot deliver it, so it is passed over"
        );
        tracing::error!(subject = %shown, sequence = record.sequence, "mission record passed over");
        self.dead_letter_record(&shown, &record.payload, record.sequence, &reason)
            .await?;
        match stream.delete_message(record.sequence).await {
            Ok(_) => Ok(()),
            // Another instance deleted it first.
            Err(e) if e.to_string().contains("no message found") => Ok(()),
            Err(e) => Err(unavailable(
                "cannot delete an undeliverable mission record",
                e,
            )),
        }
    }

    /// How many mission completions were refused (the dead-letter stream's
    /// size); 0 without NATS.
    pub(crate) async fn rejected_completions(&self) -> Result<u64, EngineError> {
        let Some(dead) = &self.inner.missions.dead else {
            return Ok(0);
        };
        let mut dead = dead.clone();
        let info = dead
            .info()
            .await
            .map_err(|e| unavailable("cannot read the dead-letter stream", e))?;
        Ok(info.state.messages)
    }

    /// Waits until the projection has applied the whole log as it is now,
    /// for at most `wait`; whether it got there.
    async fn reached_log(&self, wait: Duration) -> Result<bool, EngineError> {
        let target = self.inner.log.last_position().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.inner.changed.notified();
            if self.inner.store.checkpoint()? >= target {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(false);
            }
        }
    }
}

/// Parses `mission.<tenant>.<ref>.completed`, `<ref>` being a subject token
/// ([`MissionRef::from_subject_token`]).
pub(crate) fn parse_mission_subject(subject: &str) -> Result<(TenantId, MissionRef), String> {
    let parts: Vec<&str> = subject.split('.').collect();
    match parts.as_slice() {
        ["mission", tenant, mission, "completed"] => Ok((
            TenantId::new(*tenant).map_err(|e| e.to_string())?,
            MissionRef::from_subject_token(mission).map_err(|e| e.to_string())?,
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
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: filter.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let what = "mission intake";
        let Some(mut messages) = pull_durable(&js, MISSION_STREAM, config, what, RESUBSCRIBE).await
        else {
            continue;
        };
        while let Some(msg) = messages.next().await {
            let (tenant, mission) = match parse_mission_subject(msg.subject.as_str()) {
                Ok(parsed) => parsed,
                Err(reason) => {
                    tracing::error!(subject = %msg.subject, %reason, "mission message refused");
                    settle_refused(&engine, &msg, &reason).await;
                    continue;
                }
            };
            if let Err(refused) = engine.accept_completion(
                &tenant,
                msg.subject.as_str(),
                msg.headers.as_ref(),
                &msg.payload,
            ) {
                let reason = refused.to_string();
                tracing::error!(subject = %msg.subject, %reason, "mission completion refused");
                settle_refused(&engine, &msg, &reason).await;
                continue;
            }
            // A tree appended before this completion was stored may not be in
            // this instance's projection yet: catch up first, or it would be
            // missed for good.
            match engine.reached_log(INTAKE_CATCH_UP).await {
                Ok(true) => {}
                other => {
                    tracing::warn!(%tenant, %mission, result = ?other, "mission intake: projection behind the log; will retry");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    continue;
                }
            }
            match engine
                .complete_mission(&tenant, &mission, Actor::mission_intake(), None, None)
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dead-letters a refused mission message and acknowledges it for good; if
/// the dead letter cannot be written, the message is redelivered later.
async fn settle_refused(engine: &Engine, msg: &jetstream::Message, reason: &str) {
    match engine.dead_letter(msg, reason).await {
        Ok(()) => {
            let _ = msg.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "dead letter not written; will retry");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// Keeps this instance's record of completed missions complete: every
/// instance reads the whole mission stream, while only one of them — through
/// the shared durable consumer — completes the trees. Without this, a
/// mission completed before any tree served it would be known only to the
/// instance that took the message, and another instance would still issue
/// mandates for it.
///
/// It reads the stream record by record through the JetStream message-get
/// API (the subject comes inside a JSON answer), not through a consumer: a
/// record whose subject is not UTF-8 would make the NATS client drop the
/// connection at each delivery, and a consumer would never get past it.
/// Such a record is passed over here ([`Engine::pass_over_undeliverable`]),
/// which also takes it out of the intake's way.
pub(crate) async fn follow_marks(engine: Engine) -> Result<(), EngineError> {
    let Some(client) = engine.inner.nats.clone() else {
        return std::future::pending().await;
    };
    let js = jetstream::new(client);
    let mut next: u64 = 1;
    loop {
        let what = "mission marks: no mission stream yet";
        let Some(stream) = or_pause(js.get_stream(MISSION_STREAM).await, what, RESUBSCRIBE).await
        else {
            continue;
        };
        // A stream made anew (its sequences start over): read it whole.
        if stream.cached_info().state.last_sequence < next.saturating_sub(1) {
            next = 1;
        }
        loop {
            let record = match stream
                .get_first_raw_message_by_subject(MISSION_FILTER, next)
                .await
            {
                Ok(record) => record,
                Err(e) => {
                    use async_nats::jetstream::stream::RawMessageErrorKind;
                    if e.kind() != RawMessageErrorKind::NoMessageFound {
                        tracing::warn!(error = %e, "mission marks: cannot read; retrying");
                        tokio::time::sleep(RESUBSCRIBE).await;
                        break;
                    }
                    tokio::time::sleep(MARKS_POLL).await;
                    continue;
                }
            };
            let subject = record.subject.as_str();
            if !deliverable(subject) {
                if let Err(e) = engine.pass_over_undeliverable(&stream, &record).await {
                    tracing::warn!(error = %e, "mission marks: cannot pass over a record; retrying");
                    tokio::time::sleep(RESUBSCRIBE).await;
                    continue;
                }
            } else if let Ok((tenant, mission)) = parse_mission_subject(subject) {
                // Malformed subjects and refused completions are
                // dead-lettered (and logged) by the intake; here they are
                // only skipped.
                let accepted = engine
                    .accept_completion(&tenant, subject, Some(&record.headers), &record.payload)
                    .is_ok();
                if accepted && engine.serves(&tenant) {
                    engine
                        .inner
                        .store
                        .mark_mission_completed(&tenant, &mission)?;
                    for tree in engine.inner.store.trees_for_mission(&tenant, &mission)? {
                        engine.end_if_orphaned(&tenant, tree)?;
                    }
                }
            }
            next = record.sequence + 1;
            let state = &engine.inner.missions;
            state
                .marks_seen
                .fetch_max(record.sequence, Ordering::AcqRel);
            state.marks_moved.notify_waiters();
        }
    }
}

/// Whether the NATS client can deliver a message published on `subject`, as
/// the server's JSON answer shows it: a subject that is not UTF-8 comes back
/// with U+FFFD in place of its bad bytes.
pub(crate) fn deliverable(subject: &str) -> bool {
    !subject.contains(char::REPLACEMENT_CHARACTER)
}

/// Binds (creating it if need be) the durable pull consumer `config` on
/// `stream` and pulls from it: its messages until the first pull error,
/// logged with `what`. `None`, after a pause, when the consumer cannot be
/// bound or pulled; the caller then tries again.
pub(crate) async fn pull_durable(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
    what: &'static str,
    pause: Duration,
) -> Option<futures::stream::BoxStream<'static, jetstream::Message>> {
    let consumer = js.create_consumer_on_stream(config, stream).await;
    let consumer = or_pause(consumer, &format!("{what}: cannot bind consumer"), pause).await?;
    let messages = consumer.messages().await;
    let messages = or_pause(messages, &format!("{what}: cannot pull"), pause).await?;
    let until_error = messages.scan((), move |_, m| {
        futures::future::ready(match m {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "{what}: pull interrupted");
                None
            }
        })
    });
    Some(until_error.boxed())
}

/// `attempt`'s value; or, when it failed, `None` once the failure is logged
/// (`what`) and `pause` has passed, for the caller's loop to start over. The
/// loops that subscribe to a stream again after a failure (the projector,
/// the mission intake, the marks follower) take their subscriptions through
/// it.
pub(crate) async fn or_pause<T, E: std::fmt::Display>(
    attempt: Result<T, E>,
    what: &str,
    pause: Duration,
) -> Option<T> {
    match attempt {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(error = %e, "{what}; retrying");
            tokio::time::sleep(pause).await;
            None
        }
    }
}
