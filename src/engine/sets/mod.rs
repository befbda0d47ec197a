//! Security Event Tokens (RFC 8417): the engine tells identity providers
//! and gateways, in the event types of OpenID Shared Signals and CAEP, what
//! it tells its own guards (wire types in [`crate::protocol::set`]).
//!
//! Over NATS, with a token signing key, every instance pulls from one
//! durable consumer of the signal stream, [`SET_CONSUMER`], shared by all
//! of them (the server hands each signal to one instance), and for each
//! signal that changes a mandate's authority (beacons are acknowledged and
//! passed over) signs a SET and publishes it on `mandate.set.<tenant>` into
//! the stream [`SET_STREAM`], its message id the event id. The signal is
//! acknowledged only once the SET stream has acknowledged the SET: an
//! instance killed in between leaves the signal to be redelivered (after
//! [`ACK_WAIT`]) to any instance, and the SET stream stores the second
//! publish of the same event once. So every signal the signal stream holds
//! gives one SET, whichever instances come and go; none while no instance
//! with a key runs, and those it missed once one starts (the consumer
//! remembers how far it got, and starts from the oldest signal the stream
//! still holds when first made).
//!
//! Without a signing key no SET is made (an unsigned one would be worth
//! nothing to a receiver), and the embedded engine, which has no NATS,
//! makes none. Pushes to receivers (RFC 8935) are in `push.rs`
//! ([`SetReceiver`]).

mod push;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use futures::StreamExt;

use crate::domain::{Actor, Event, EventBody};
use crate::protocol::set::{
    set_subject, CaepEvent, MandateClaim, OpaqueId, SetClaims, SubjectId, SESSION_REVOKED, SET_TYP,
    TOKEN_CLAIMS_CHANGE,
};
use crate::protocol::{Signal, SignalKind};

use super::missions::{or_pause, pull_durable};
use super::signals::SIGNAL_STREAM;
use super::tokens::TokenKeys;
use super::{Engine, EngineError};

pub use push::{SetReceiver, DEFAULT_MAX_DELIVERIES};

/// The JetStream stream of SETs (`mandate.set.>`).
pub const SET_STREAM: &str = "MANDATE_SETS";
/// The durable consumer of the signal stream every instance shares.
pub const SET_CONSUMER: &str = "mandate-sets";
/// How long the SET stream keeps a SET: a receiver's push consumer cut off
/// for longer loses what aged out (and a push receiver down for longer
/// than its retries is given up on earlier anyway).
pub const SET_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the SET stream remembers a message id: a SET published again
/// by another instance (a redelivered signal) within it is stored once.
pub const SET_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// How long an instance has to publish a signal's SET before the signal
/// goes to another instance.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of a signal after which its SET goes out even without its
/// event (about half a minute at [`REBIND`] apart).
const EVENT_TRIES: i64 = 30;
/// The pause before binding a consumer again after a failure.
const REBIND: Duration = Duration::from_secs(1);

/// What the SET tasks count (read by `Engine::metrics`).
#[derive(Default)]
pub(crate) struct SetCounters {
    /// SETs the SET stream acknowledged.
    pub(crate) published: AtomicU64,
    /// SETs a receiver accepted (2xx).
    pub(crate) pushed: AtomicU64,
    /// Pushes that failed and were scheduled again.
    pub(crate) retried: AtomicU64,
    /// SETs a receiver refused (400) or that were given up on.
    pub(crate) dropped: AtomicU64,
}

impl SetCounters {
    pub(crate) fn read(&self) -> [(&'static str, &'static str, u64); 4] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "sets_published",
                "Security event tokens this instance published and the SET stream stored",
                get(&self.published),
            ),
            (
                "sets_pushed",
                "Security event tokens a push receiver accepted",
                get(&self.pushed),
            ),
            (
                "set_push_retries",
                "Pushes of security event tokens that failed and were scheduled again",
                get(&self.retried),
            ),
            (
                "sets_dropped",
                "Security event tokens a push receiver refused (400) or that were given up on after the last attempt",
                get(&self.dropped),
            ),
        ]
    }
}

/// The claims of the SET for `signal`; `event` is the event behind it when
/// the projection holds it (it gives `txn`, and a narrowing's new scope or a
/// renewal's new end), `None` for a quarantine (which no event caused).
pub fn set_claims(
    signal: &Signal,
    event: Option<&Event>,
    issuer: &str,
    iat: i64,
    aud: Option<String>,
) -> SetClaims {
    let (event_type, mut claims) = match signal.kind {
        SignalKind::Terminated => (SESSION_REVOKED, None),
        SignalKind::Suspended
        | SignalKind::Resumed
        | SignalKind::Narrowed
        | SignalKind::Quarantined
        | SignalKind::Restored => (TOKEN_CLAIMS_CHANGE, Some(BTreeMap::new())),
    };
    if let Some(claims) = claims.as_mut() {
        let status = match signal.kind {
            // The tree is held: nothing of it is allowed until an
            // administrator resolves it, whatever each mandate's status.
            SignalKind::Quarantined => serde_json::json!("quarantined"),
            _ => serde_json::json!(signal.status),
        };
        claims.insert("status".to_string(), status);
        match event.map(|e| &e.body) {
            Some(EventBody::ScopeNarrowed(n)) => {
                let grants: Vec<String> = n.scope.grants().iter().map(|g| g.to_string()).collect();
                claims.insert("scope".to_string(), serde_json::json!(grants));
            }
            Some(EventBody::MandateRenewed(r)) => {
                claims.insert("not_after".to_string(), serde_json::json!(r.not_after));
            }
            _ => {}
        }
    }
    let initiating_entity = match &signal.actor {
        Actor::Admin(_) => "admin",
        Actor::Principal(_) | Actor::Agent(_) => "user",
        Actor::System(_) if signal.event_type == "mandate_expired" => "policy",
        Actor::System(_) => "system",
    };
    let caep = CaepEvent {
        event_timestamp: signal.time.timestamp(),
        initiating_entity: initiating_entity.to_string(),
        reason_admin: signal
            .reason
            .as_ref()
            .map(|r| BTreeMap::from([("en".to_string(), r.clone())])),
        claims,
    };
    SetClaims {
        iss: format!("{issuer}/{}", signal.tenant),
        iat,
        jti: signal.event_id.to_string(),
        aud,
        txn: event.map(|e| e.command_id.to_string()),
        sub_id: SubjectId {
            format: "complex".into(),
            session: OpaqueId::new(signal.mandate.to_string()),
            tenant: OpaqueId::new(signal.tenant.as_str()),
        },
        events: BTreeMap::from([(event_type.to_string(), caep)]),
        mandate: MandateClaim {
            id: signal.mandate,
            tree: signal.tree,
            tenant: signal.tenant.clone(),
            status: signal.status,
            signal: signal.kind,
            event_type: signal.event_type.clone(),
            seq: signal.seq,
            // Every kind of signal is about a mandate's chain: an end, a
            // pause, a narrowing, a quarantine holds for every delegation
            // below it, and a resume or a restore lets them be read again.
            includes_descendants: true,
        },
    }
}

/// Signs `claims` as a SET with the first token key.
pub(crate) fn sign_set(keys: &TokenKeys, claims: &SetClaims) -> Result<String, EngineError> {
    keys.sign_typed(SET_TYP, claims).map(|(jws, _)| jws)
}

/// Creates the SET stream if it is missing: file storage, [`SET_RETENTION`]
/// and [`SET_DUPLICATE_WINDOW`], explicitly, on `replicas` replicas (see
/// [`crate::log::ensure_replicas`]).
pub(crate) async fn setup_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<(), EngineError> {
    crate::log::get_or_create_stream(
        js,
        jetstream::stream::Config {
            name: SET_STREAM.into(),
            subjects: vec!["mandate.set.>".into()],
            storage: jetstream::stream::StorageType::File,
            max_age: SET_RETENTION,
            duplicate_window: SET_DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| EngineError::unavailable(format!("cannot create stream {SET_STREAM}: {e}")))?;
    crate::log::ensure_replicas(js, SET_STREAM, replicas).await?;
    Ok(())
}

/// What became of one signal.
enum Outcome {
    /// Its SET is stored (or it needs none): acknowledge it.
    Done,
    /// Try again shortly (the projection lacks its event, NATS refused).
    Later(EngineError),
    /// It can never give a SET (not a signal): acknowledge it for good.
    Refused(String),
}

impl Engine {
    /// The SET tasks of this instance: the generator, and one pusher per
    /// receiver. Over NATS with a token key only; otherwise it logs once
    /// why there are none and waits forever.
    pub(super) async fn security_events(&self) -> Result<(), EngineError> {
        let Some(client) = self.inner.nats.clone() else {
            return std::future::pending().await;
        };
        let Some(keys) = self.inner.config.tokens.clone() else {
            tracing::info!(
                "no token signing key (--token-key): no security event tokens are published"
            );
            return std::future::pending().await;
        };
        let js = jetstream::new(client);
        let replicas = self.inner.config.replicas;
        while or_pause(setup_stream(&js, replicas).await, "SET stream", REBIND)
            .await
            .is_none()
        {}
        let pushers = self
            .inner
            .config
            .set_push
            .iter()
            .map(|r| push::pusher(self.clone(), js.clone(), keys.clone(), r.clone()));
        let pushers = async {
            // No receiver: nothing to wait for, and nothing may end the
            // background tasks.
            futures::future::try_join_all(pushers).await?;
            std::future::pending::<Result<(), EngineError>>().await
        };
        tokio::select! {
            r = self.generate_sets(&js, &keys) => r,
            r = pushers => r,
        }
    }

    /// Pulls signals from [`SET_CONSUMER`] and publishes their SETs.
    async fn generate_sets(
        &self,
        js: &jetstream::Context,
        keys: &TokenKeys,
    ) -> Result<(), EngineError> {
        loop {
            let config = pull::Config {
                durable_name: Some(SET_CONSUMER.into()),
                filter_subject: "mandate.sig.>".into(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            };
            let what = "security events: signals";
            let Some(mut messages) = pull_durable(js, SIGNAL_STREAM, config, what, REBIND).await
            else {
                continue;
            };
            while let Some(msg) = messages.next().await {
                // Beacons share the stream; they change no authority.
                if msg.subject.as_str().ends_with(".beacon") {
                    let _ = msg.ack().await;
                    continue;
                }
                // A signal whose event this instance still cannot find
                // after many tries goes out without what only the event
                // says (`txn`, a narrowing's scope): late, but not never.
                let patient = msg.info().map_or(true, |i| i.delivered < EVENT_TRIES);
                match self.publish_set(js, keys, &msg.payload, patient).await {
                    Outcome::Done => {
                        if let Err(e) = msg.ack().await {
                            // Redelivered; the SET stream stores it once.
                            tracing::warn!(error = %e, "security events: signal ack failed");
                        }
                    }
                    Outcome::Later(e) => {
                        tracing::warn!(subject = %msg.subject, error = %e, "security event not published; will retry");
                        let _ = msg.ack_with(AckKind::Nak(Some(REBIND))).await;
                    }
                    Outcome::Refused(reason) => {
                        tracing::error!(subject = %msg.subject, %reason, "not a signal: no security event for it");
                        let _ = msg.ack_with(AckKind::Term).await;
                    }
                }
            }
            tokio::time::sleep(REBIND).await;
        }
    }

    /// Signs and publishes the SET of one signal, awaiting the stream's
    /// acknowledgement.
    async fn publish_set(
        &self,
        js: &jetstream::Context,
        keys: &TokenKeys,
        payload: &[u8],
        patient: bool,
    ) -> Outcome {
        let signal: Signal = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        let event = match self.event_of(&signal).await {
            Ok(event) => event,
            Err(e) if patient => return Outcome::Later(e),
            Err(e) => {
                tracing::warn!(event = %signal.event_id, error = %e, "security event published without its event's details");
                None
            }
        };
        let claims = set_claims(
            &signal,
            event.as_ref(),
            &self.inner.config.token_issuer,
            self.now().timestamp(),
            None,
        );
        let jws = match sign_set(keys, &claims) {
            Ok(jws) => jws,
            Err(e) => return Outcome::Later(e),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", claims.jti.as_str());
        headers.insert("Content-Type", crate::protocol::set::SET_CONTENT_TYPE);
        let sent = js
            .publish_with_headers(
                set_subject(&signal.tenant),
                headers,
                jws.into_bytes().into(),
            )
            .await;
        let stored = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                self.inner.sets.published.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tenant = %signal.tenant, mandate = %signal.mandate, jti = %claims.jti, "security event published");
                Outcome::Done
            }
            Err(e) => Outcome::Later(EngineError::unavailable(format!("SET publish failed: {e}"))),
        }
    }

    /// The event behind a signal, from the projection, catching its tree
    /// up first when this instance has not applied it yet. `None` for a
    /// quarantine. An error when the event cannot be found: the SET waits
    /// rather than going out without what the event says.
    async fn event_of(&self, signal: &Signal) -> Result<Option<Event>, EngineError> {
        if signal.kind == SignalKind::Quarantined {
            return Ok(None);
        }
        let store = &self.inner.store;
        let find = || -> Result<Option<Event>, EngineError> {
            Ok(store
                .event_at(&signal.tenant, signal.tree, signal.seq)?
                .filter(|e| e.event_id == signal.event_id))
        };
        if let Some(event) = find()? {
            return Ok(Some(event));
        }
        self.catch_up_tree_to_head(&signal.tenant, signal.tree)
            .await?;
        find()?.map(Some).ok_or_else(|| {
            EngineError::unavailable(format!(
                "event {} (seq {} of tree {}) is not in this instance's projection yet",
                signal.event_id, signal.seq, signal.tree
            ))
        })
    }
}
