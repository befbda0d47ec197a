//! The signal bus: one publish on a mandate's subject reaches every guard
//! below it, because each guard listens on the subjects of its whole chain.
//! The engine never loops over a subtree to notify.
//!
//! Over NATS the publish goes through JetStream (stream `MANDATE_SIGNALS` on
//! `mandate.sig.>`) with the event id as `Nats-Msg-Id`: core subscribers get
//! it at once, and a guard that was cut off catches up from the stream.
//! In-process, a map of broadcast channels keyed by subject does the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;

use crate::client::guard::{heard_stream, receiver_stream, Heard};

use crate::domain::command::Resolution;
use crate::domain::{
    Actor, Event, EventBody, EventId, MandateId, Quarantine, TenantId, Tree, SCHEMA_VERSION,
};
use crate::protocol::{signal_subject, Signal, SignalKind};

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
        | EventBody::PrincipalUnblocked(_) => return None,
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
        if let Some(tx) = subjects.channels.get(subject) {
            // No receiver left: nobody listens on this subject any more.
            if tx.send(signal).is_err() {
                subjects.channels.remove(subject);
            }
        }
    }
}

impl SignalBus {
    /// A fresh in-process bus.
    pub fn local() -> Self {
        SignalBus::Local(Arc::new(LocalHub::default()))
    }

    /// Ensures the signal stream exists (NATS only).
    pub async fn setup(&self, max_age: std::time::Duration) -> Result<(), EngineError> {
        if let SignalBus::Nats { js, .. } = self {
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: SIGNAL_STREAM.into(),
                subjects: vec!["mandate.sig.>".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                max_age,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                EngineError::unavailable(format!("cannot create stream {SIGNAL_STREAM}: {e}"))
            })?;
        }
        Ok(())
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
        let mut failed = Vec::new();
        match self {
            SignalBus::Nats { js, .. } => {
                let mut acks = Vec::with_capacity(signals.len());
                for signal in signals {
                    let subject = signal_subject(&signal.tenant, signal.mandate);
                    let payload = serde_json::to_vec(signal).expect("signals serialize");
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", signal.event_id.to_string().as_str());
                    match js
                        .publish_with_headers(subject, headers, payload.into())
                        .await
                    {
                        Ok(ack) => acks.push((signal, ack)),
                        Err(e) => failed.push((
                            signal,
                            EngineError::unavailable(format!("signal publish failed: {e}")),
                        )),
                    }
                }
                // All are on the wire: the acknowledgements come back in
                // about one round trip, whatever their number.
                for (signal, ack) in acks {
                    if let Err(e) = ack.await {
                        failed.push((
                            signal,
                            EngineError::unavailable(format!("signal not stored: {e}")),
                        ));
                    }
                }
            }
            SignalBus::Local(hub) => {
                for signal in signals {
                    let subject = signal_subject(&signal.tenant, signal.mandate);
                    hub.send(&subject, Arc::new(signal.clone()));
                }
            }
        }
        failed
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

    /// What an in-process guard hears of one mandate: its signals, and
    /// whether it fell behind them (so it re-reads). Subscribe *before*
    /// reading state.
    pub(crate) async fn guard_signals(
        &self,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<BoxStream<'static, Heard>, EngineError> {
        match self {
            SignalBus::Local(hub) => {
                Ok(heard_stream(hub.receiver(&signal_subject(tenant, mandate))))
            }
            SignalBus::Nats { .. } => {
                let signals = self.subscribe(tenant, mandate).await?;
                // The subscription ending means the guard hears no more.
                Ok(signals
                    .map(|s| Heard::Signal(Arc::new(s)))
                    .chain(futures::stream::once(async { Heard::Missed }))
                    .boxed())
            }
        }
    }
}
