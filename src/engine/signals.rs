//! The signal bus: one publish on a mandate's subject reaches every guard
//! below it, because each guard listens on the subjects of its whole chain.
//! The engine never loops over a subtree to notify.
//!
//! Over NATS the publish goes through JetStream (stream `MANDATE_SIGNALS` on
//! `mandate.sig.>`) with the event id as `Nats-Msg-Id`: core subscribers get
//! it at once, and a guard that was cut off catches up from the stream.
//! In-process, a map of broadcast channels keyed by subject does the same.
//!
//! A commit's signals cannot be lost to a writer that dies between its
//! append and its publish (see `ARCHITECTURE.md`): every instance that
//! applies a commit with signals notes it in its outbox, atomically with
//! the apply, and the commit leaves the outbox only once its signals are
//! stored. The writer publishes at once; every other instance that applied
//! it publishes it after [`crate::engine::EngineConfig::republish_delay`]
//! unless the stream already holds it (`Delivery`, the republisher in
//! `background.rs`); a restarted instance publishes what its outbox holds.
//! The event id as message id makes a second publish within
//! [`DUPLICATE_WINDOW`] a no-op.
//!
//! Over NATS each instance also publishes a [`Beacon`] per tenant it
//! serves, on [`beacon_subject`], into the same stream, where they age out
//! with the signals. Not as rollups: on server 2.9 a subject rollup moves
//! every consumer's next sequence past the purged range, so a process
//! resuming after a cut-off would skip the signals stored meanwhile (the
//! cut-off test of `tests/guard_nats.rs` shows it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;

use crate::client::guard::{heard_stream, receiver_stream, Heard};

use crate::domain::command::Resolution;
use crate::domain::{
    Actor, Event, EventBody, EventId, MandateId, Quarantine, TenantId, Tree, SCHEMA_VERSION,
};
use crate::protocol::{
    beacon_subject, signal_subject, tenant_signals_subject, Beacon, Signal, SignalKind,
};
use crate::store::OutboxEntry;

use super::EngineError;

/// The signal for an event, if the event changes what holders may do.
pub fn signal_for(event: &Event, tree_after: &Tree) -> Option<Signal> {
    let (kind, reason) = match &event.body {
        EventBody::MandateIssued(_) => return None,
        EventBody::MandatePaused(c) => (SignalKind::Suspended, c.reason.clone()),
        EventBody::MandateResumed(c) => (SignalKind::Resumed, c.reason.clone()),
        EventBody::MandateRevoked(c)
        | EventBody::MandateExpired(c)
        | EventBody::MandateCompleted(c) => (SignalKind::Terminated, c.reason.clone()),
        EventBody::MissionCompleted(m) => (
            SignalKind::Terminated,
            Some(format!("mission {} completed", m.mission_ref)),
        ),
        EventBody::ScopeNarrowed(_) | EventBody::MandateRenewed(_) => (SignalKind::Narrowed, None),
        // Registry events are about no mandate: a block ends nothing by itself
        // (the bulk command's revokes do, each with its own signal).
        EventBody::AgentBlocked(_)
        | EventBody::AgentUnblocked(_)
        | EventBody::PrincipalBlocked(_)
        | EventBody::PrincipalUnblocked(_)
        | EventBody::KeyRegistered(_)
        | EventBody::KeyRevoked(_) => return None,
        // Approvals change no mandate's status or scope: a guard's decisions
        // stay what they were (a step-up action stays `needs_approval`).
        EventBody::ApprovalRequested(_)
        | EventBody::ApprovalGranted(_)
        | EventBody::ApprovalDenied(_)
        | EventBody::ApprovalUsed(_) => return None,
        EventBody::QuarantineResolved(q) => (
            match q.action {
                Resolution::Restore => SignalKind::Restored,
                Resolution::End => SignalKind::Terminated,
            },
            Some(format!(
                "quarantine at log position {} resolved: {}",
                q.position,
                match q.action {
                    Resolution::Restore => "restored",
                    Resolution::End => "ended",
                }
            )),
        ),
    };
    let mandate = event.body.mandate();
    let status = tree_after.mandates.get(&mandate)?.status;
    Some(Signal {
        schema_version: SCHEMA_VERSION,
        kind,
        tenant: event.tenant.clone(),
        tree: event.tree,
        mandate,
        status,
        event_id: event.event_id,
        event_type: event.body.type_name().to_string(),
        seq: event.seq,
        time: event.time,
        actor: event.actor.clone(),
        reason,
        position: match &event.body {
            EventBody::QuarantineResolved(q) => Some(q.position),
            _ => None,
        },
        head_position: None,
    })
}

/// Whether [`signal_for`] may give a signal for `event` (it does unless
/// the mandate is missing from the tree): what goes into the outbox.
pub(crate) fn may_signal(event: &Event) -> bool {
    !matches!(
        event.body,
        EventBody::MandateIssued(_)
            | EventBody::AgentBlocked(_)
            | EventBody::AgentUnblocked(_)
            | EventBody::PrincipalBlocked(_)
            | EventBody::PrincipalUnblocked(_)
            | EventBody::KeyRegistered(_)
            | EventBody::KeyRevoked(_)
            | EventBody::ApprovalRequested(_)
            | EventBody::ApprovalGranted(_)
            | EventBody::ApprovalDenied(_)
            | EventBody::ApprovalUsed(_)
    )
}

/// The signal that a tree is quarantined, on its root's subject (every guard
/// of the tree listens there): `tree` is its last good state. `None` for a
/// tree without a root, which no guard can hold. `time` is when it was found.
pub fn quarantine_signal(
    tree: &Tree,
    quarantine: &Quarantine,
    time: chrono::DateTime<chrono::Utc>,
) -> Option<Signal> {
    let root = tree.mandates.get(&tree.root?)?;
    Some(Signal {
        schema_version: SCHEMA_VERSION,
        kind: SignalKind::Quarantined,
        tenant: tree.tenant.clone(),
        tree: tree.id,
        mandate: root.id,
        status: root.status,
        event_id: EventId::for_quarantine(tree.id, quarantine.position),
        event_type: "quarantined".into(),
        seq: tree.version,
        time,
        actor: Actor::projector(),
        reason: Some(quarantine.reason.clone()),
        position: Some(quarantine.position),
        head_position: None,
    })
}

/// Name of the JetStream stream that keeps signals for catch-up.
pub const SIGNAL_STREAM: &str = "MANDATE_SIGNALS";

/// How long the signal stream remembers a message id (the server's default,
/// set explicitly): a signal published by its writer and again by an
/// instance that republishes it within this window is stored once.
/// [`crate::engine::EngineConfig::republish_delay`] stays under half of it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Publishes sent before their acknowledgements are awaited: under the
/// JetStream context's bound on acknowledgements awaited at once (5,000 in
/// async-nats), past which a publish waits for one.
const ACKS_AT_ONCE: usize = 1024;

/// Commits waiting in the queue before the republisher falls back to
/// reading the outbox.
const QUEUE: usize = 65_536;

/// One commit to publish once `at` has come, unless its signals are in the
/// stream by then.
pub(crate) struct Due {
    pub(crate) at: tokio::time::Instant,
    pub(crate) entry: OutboxEntry,
}

/// What this instance owes the signal stream: the commits of other
/// instances it applied, queued until their republish delay has passed
/// (the outbox in the store is their durable record; the queue only spares
/// reading it), and the beacons it published.
pub(crate) struct Delivery {
    pub(crate) queue: tokio::sync::mpsc::Sender<Due>,
    receiver: Mutex<Option<tokio::sync::mpsc::Receiver<Due>>>,
    /// Set when a commit could not be queued, or its publish failed: the
    /// republisher reads the outbox again on its next round.
    pub(crate) retry: AtomicBool,
    /// Beacons the stream acknowledged.
    pub(crate) beacons_sent: AtomicU64,
    /// Beacons not published or not acknowledged.
    pub(crate) beacons_failed: AtomicU64,
}

impl Default for Delivery {
    fn default() -> Self {
        let (queue, receiver) = tokio::sync::mpsc::channel(QUEUE);
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
            retry: AtomicBool::new(false),
            beacons_sent: AtomicU64::new(0),
            beacons_failed: AtomicU64::new(0),
        }
    }
}

impl Delivery {
    /// The queue's receiving end, for the one republisher (`None` once taken).
    pub(crate) fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Due>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Where signals go.
#[derive(Clone)]
pub enum SignalBus {
    /// Over NATS (JetStream publish, delivered to core subscribers too).
    Nats {
        client: async_nats::Client,
        js: Box<async_nats::jetstream::Context>,
    },
    /// In-process hub for the embedded engine.
    Local(Arc<LocalHub>),
}

/// In-process fan-out by subject: one channel per subject someone listens
/// on, each signal shared (`Arc`) by every receiver.
#[derive(Default)]
pub struct LocalHub {
    subjects: Mutex<Subjects>,
}

#[derive(Default)]
struct Subjects {
    channels: HashMap<String, broadcast::Sender<Arc<Signal>>>,
    /// The size at which channels nobody listens to any more are dropped.
    sweep_at: usize,
}

/// Signals a subject's channel holds for a receiver that does not keep up.
const LOCAL_CAPACITY: usize = 1024;

impl LocalHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subjects> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map itself is still valid.
        self.subjects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn receiver(&self, subject: &str) -> broadcast::Receiver<Arc<Signal>> {
        let mut subjects = self.lock();
        if subjects.channels.len() >= subjects.sweep_at {
            // Guards come and go on subjects that are never published on
            // again (a leaf ended through its root): keep the map at most
            // twice the subjects listened to.
            subjects.channels.retain(|_, tx| tx.receiver_count() > 0);
            subjects.sweep_at = (subjects.channels.len() * 2).max(LOCAL_CAPACITY);
        }
        subjects
            .channels
            .entry(subject.to_string())
            .or_insert_with(|| broadcast::channel(LOCAL_CAPACITY).0)
            .subscribe()
    }

    fn send(&self, subject: &str, signal: Arc<Signal>) {
        let mut subjects = self.lock();
        // The mandate's own subject, and the tenant's (what a process's
        // guards follow as one).
        let tenant = tenant_signals_subject(&signal.tenant);
        for subject in [subject, tenant.as_str()] {
            if let Some(tx) = subjects.channels.get(subject) {
                // No receiver left: nobody listens on this subject any more.
                if tx.send(signal.clone()).is_err() {
                    subjects.channels.remove(subject);
                }
            }
        }
    }
}

impl SignalBus {
    /// A fresh in-process bus.
    pub fn local() -> Self {
        SignalBus::Local(Arc::new(LocalHub::default()))
    }

    /// Whether signals go over NATS (the embedded engine's do not).
    pub(crate) fn is_nats(&self) -> bool {
        matches!(self, SignalBus::Nats { .. })
    }

    /// Ensures the signal stream exists (NATS only), with the duplicate
    /// window republishing relies on: a stream made by an older build is
    /// updated to it.
    /// Its replicas are made `replicas` (see [`crate::log::ensure_replicas`]).
    pub async fn setup(
        &self,
        max_age: std::time::Duration,
        replicas: usize,
    ) -> Result<(), EngineError> {
        if let SignalBus::Nats { js, .. } = self {
            let window = DUPLICATE_WINDOW.min(max_age);
            let mut stream = crate::log::get_or_create_stream(
                js,
                async_nats::jetstream::stream::Config {
                    name: SIGNAL_STREAM.into(),
                    subjects: vec!["mandate.sig.>".into()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    max_age,
                    duplicate_window: window,
                    num_replicas: replicas,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                EngineError::unavailable(format!("cannot create stream {SIGNAL_STREAM}: {e}"))
            })?;
            let have = stream
                .info()
                .await
                .map_err(|e| {
                    EngineError::unavailable(format!("cannot read stream {SIGNAL_STREAM}: {e}"))
                })?
                .config
                .clone();
            if have.duplicate_window < window {
                let config = async_nats::jetstream::stream::Config {
                    duplicate_window: have.duplicate_window.max(window),
                    ..have
                };
                js.update_stream(config).await.map_err(|e| {
                    EngineError::unavailable(format!(
                        "cannot update stream {SIGNAL_STREAM} (a duplicate window of {window:?}): {e}"
                    ))
                })?;
            }
            crate::log::ensure_replicas(js, SIGNAL_STREAM, replicas).await?;
        }
        Ok(())
    }

    /// Whether the signal stream already holds `signal`, or a later signal
    /// of its tree on its subject (which tells its guards as much). One
    /// direct read of the subject's last message. Always `false` in process.
    pub(crate) async fn stored_already(&self, signal: &Signal) -> Result<bool, EngineError> {
        let SignalBus::Nats { js, .. } = self else {
            return Ok(false);
        };
        let stream = js
            .get_stream_no_info(SIGNAL_STREAM)
            .await
            .map_err(|e| EngineError::unavailable(format!("signal stream: {e}")))?;
        let subject = signal_subject(&signal.tenant, signal.mandate);
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(serde_json::from_slice::<Signal>(&m.payload).is_ok_and(|s| {
                s.event_id == signal.event_id || (s.tree == signal.tree && s.seq >= signal.seq)
            })),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(false)
            }
            Err(e) => Err(EngineError::unavailable(format!(
                "cannot read the last signal on {subject}: {e}"
            ))),
        }
    }

    /// Publishes one beacon per tenant into the signal stream, the
    /// acknowledgements awaited together. Returns those that failed. Does
    /// nothing in process.
    pub(crate) async fn publish_beacons<'a>(
        &self,
        beacons: &'a [Beacon],
    ) -> Vec<(&'a Beacon, EngineError)> {
        let SignalBus::Nats { js, .. } = self else {
            return Vec::new();
        };
        publish_in_parts(js, beacons, "beacon", |beacon| {
            let payload = serde_json::to_vec(beacon).expect("beacons serialize");
            (beacon_subject(&beacon.tenant), None, payload)
        })
        .await
    }

    /// Publishes one signal on its mandate's subject.
    pub async fn publish(&self, signal: &Signal) -> Result<(), EngineError> {
        match self.publish_all(std::slice::from_ref(signal)).await.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Publishes a commit's signals, in order, each on its mandate's
    /// subject, and returns those that failed. Over NATS every publish is
    /// sent before any acknowledgement is awaited, and the acknowledgements
    /// are then awaited together: one round trip for the commit, not one
    /// per signal. Guards hear each signal as the server takes it; the
    /// acknowledgement only says the stream kept it for catch-up.
    pub async fn publish_all<'a>(&self, signals: &'a [Signal]) -> Vec<(&'a Signal, EngineError)> {
        match self {
            SignalBus::Nats { js, .. } => {
                publish_in_parts(js, signals, "signal", |signal| {
                    let payload = serde_json::to_vec(signal).expect("signals serialize");
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", signal.event_id.to_string().as_str());
                    (
                        signal_subject(&signal.tenant, signal.mandate),
                        Some(headers),
                        payload,
                    )
                })
                .await
            }
            SignalBus::Local(hub) => {
                for signal in signals {
                    let subject = signal_subject(&signal.tenant, signal.mandate);
                    hub.send(&subject, Arc::new(signal.clone()));
                }
                Vec::new()
            }
        }
    }

    /// Live signals of one mandate. Subscribe *before* reading state.
    pub async fn subscribe(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<BoxStream<'static, Signal>, EngineError> {
        let subject = signal_subject(tenant, mandate);
        match self {
            SignalBus::Nats { client, .. } => {
                let sub = client
                    .subscribe(subject)
                    .await
                    .map_err(|e| EngineError::unavailable(format!("subscribe failed: {e}")))?;
                Ok(sub
                    .filter_map(
                        |m| async move { serde_json::from_slice::<Signal>(&m.payload).ok() },
                    )
                    .boxed())
            }
            SignalBus::Local(hub) => Ok(receiver_stream(hub.receiver(&subject))),
        }
    }

    /// What the in-process guards of a tenant hear, as one: every signal of
    /// the tenant, and whether they fell behind (so they re-read).
    /// Subscribe *before* reading state. `None` over NATS, where a process
    /// follows the signal stream instead.
    pub(crate) fn guard_signals(&self, tenant: &TenantId) -> Option<BoxStream<'static, Heard>> {
        match self {
            SignalBus::Local(hub) => {
                Some(heard_stream(hub.receiver(&tenant_signals_subject(tenant))))
            }
            SignalBus::Nats { .. } => None,
        }
    }
}

/// Publishes each of `items` into the stream (`what` names them in errors),
/// in parts: every publish of a part is sent before any acknowledgement is
/// awaited, so a part costs about one round trip, and a part stays under the
/// JetStream context's bound on acknowledgements awaited at once, past
/// which a publish would wait for one of its own part's. Returns the items
/// that were not sent or not stored.
async fn publish_in_parts<'a, T>(
    js: &async_nats::jetstream::Context,
    items: &'a [T],
    what: &str,
    message: impl Fn(&T) -> (String, Option<async_nats::HeaderMap>, Vec<u8>),
) -> Vec<(&'a T, EngineError)> {
    let mut failed = Vec::new();
    for part in items.chunks(ACKS_AT_ONCE) {
        let mut acks = Vec::with_capacity(part.len());
        for item in part {
            let (subject, headers, payload) = message(item);
            let sent = match headers {
                Some(headers) => {
                    js.publish_with_headers(subject, headers, payload.into())
                        .await
                }
                None => js.publish(subject, payload.into()).await,
            };
            match sent {
                Ok(ack) => acks.push((item, ack)),
                Err(e) => failed.push((
                    item,
                    EngineError::unavailable(format!("{what} publish failed: {e}")),
                )),
            }
        }
        for (item, ack) in acks {
            if let Err(e) = ack.await {
                failed.push((
                    item,
                    EngineError::unavailable(format!("{what} not stored: {e}")),
                ));
            }
        }
    }
    failed
}
