//! The agent guard: what makes revocation real for an agent.
//!
//! - It subscribes to the signal subjects of every mandate on its chain
//!   *before* reading the state, so nothing falls between the two.
//! - `check(action, resource)` is answered locally with the domain's own
//!   `authorize` on the tree it holds; expiry is enforced by the local clock.
//! - Its [`CancellationToken`] fires on termination (a signal, a re-read that
//!   finds the chain ended, or the chain's `not_after` passing).
//! - It fails closed: when it has not heard the engine for longer than its
//!   lease it denies, until a re-read succeeds. It re-reads the tree on every
//!   heartbeat, so a signal lost while cut off (or dropped by a slow
//!   consumer) is made up within one heartbeat.
//! - Guards of one process share one subscription per mandate subject and
//!   fan out locally ([`GuardHub`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::{
    authorize, Decision, DenyReason, ErrorCode, MandateId, Outcome, Status, TenantId, Tree,
};
use crate::protocol::{signal_subject, Signal, SignalKind};

use super::{Client, ClientError};

/// Guard settings.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// After this long without hearing the engine, every check is denied
    /// until the state has been re-read.
    pub lease: Duration,
    /// How often the guard re-reads its tree (and so hears the engine).
    pub heartbeat: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(3),
        }
    }
}

/// What the guard currently believes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardState {
    Active,
    Paused,
    /// Revoked, expired or completed, here or above: for good.
    Terminated(Status),
    /// The engine has not been heard within the lease: denying.
    Stale,
    /// The tree is quarantined (a corrupt record in its stream): denying
    /// until a re-read succeeds, e.g. after an administrator restores it.
    Quarantined,
}

/// Shares one subscription per mandate subject among the guards of a process.
#[derive(Clone, Default)]
pub struct GuardHub {
    subjects: Arc<Mutex<HashMap<String, broadcast::Sender<Signal>>>>,
}

impl GuardHub {
    /// A new, empty hub. Share it among the guards of a process.
    pub fn new() -> Self {
        Self::default()
    }

    async fn subscribe(
        &self,
        client: &Client,
        tenant: &TenantId,
        mandate: MandateId,
    ) -> Result<BoxStream<'static, Signal>, ClientError> {
        if let Some(engine) = client.engine() {
            return engine
                .bus()
                .subscribe(tenant, mandate)
                .await
                .map_err(|e| ClientError::Engine(e.to_body()));
        }
        let nats = client
            .nats_client()
            .ok_or_else(|| ClientError::Nats("no transport".into()))?;
        let subject = signal_subject(tenant, mandate);
        let existing = {
            let map = self.subjects.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&subject).map(|tx| tx.subscribe())
        };
        let rx = match existing {
            Some(rx) => rx,
            None => {
                let mut sub = nats
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| ClientError::Nats(e.to_string()))?;
                let (tx, rx) = broadcast::channel(256);
                {
                    let mut map = self.subjects.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(other) = map.get(&subject) {
                        // Another guard raced us: use its subscription.
                        return Ok(receiver_stream(other.subscribe()));
                    }
                    map.insert(subject, tx.clone());
                }
                tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        if let Ok(signal) = serde_json::from_slice::<Signal>(&msg.payload) {
                            let _ = tx.send(signal);
                        }
                    }
                });
                // No flush here: the guard's state read that follows is a
                // request on this same connection, and the server handles a
                // connection's messages in order, so the subscription is in
                // place before the read is answered.
                rx
            }
        };
        Ok(receiver_stream(rx))
    }
}

fn receiver_stream(rx: broadcast::Receiver<Signal>) -> BoxStream<'static, Signal> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(s) => return Some((s, rx)),
                // Missed signals are made up by the heartbeat's re-read.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

struct Inner {
    client: Client,
    mandate: MandateId,
    config: GuardConfig,
    tree: RwLock<Tree>,
    last_heard: Mutex<Instant>,
    /// Set by a terminating signal before the re-read lands: sticky.
    terminated: Mutex<Option<Status>>,
    /// Set by a suspending signal until the next re-read.
    suspended: Mutex<bool>,
    /// Set by a `quarantined` signal, or by a re-read the engine refused
    /// because the tree is quarantined; cleared by a re-read that succeeds.
    quarantined: Mutex<Option<DenyReason>>,
    cancel: CancellationToken,
    changed: watch::Sender<u64>,
}

/// The agent's guard for one mandate. Dropping it stops its tasks.
pub struct Guard {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Guard {
    /// Starts a guard for `mandate`: subscribes to its chain, then reads the state.
    pub async fn start(
        client: Client,
        hub: &GuardHub,
        mandate: MandateId,
        config: GuardConfig,
    ) -> Result<Self, ClientError> {
        if config.lease <= config.heartbeat {
            return Err(ClientError::Invalid(format!(
                "guard lease {:?} must be longer than its heartbeat {:?}, or it goes stale between heartbeats",
                config.lease, config.heartbeat
            )));
        }
        let tenant = client.tenant().clone();
        // The chain never changes (parents are fixed at issue), so reading it
        // first only tells us what to subscribe to; the state read comes after.
        let chain = read_tree(&client, mandate).await?;
        let mut streams = Vec::new();
        for id in chain.mandates.keys() {
            streams.push(hub.subscribe(&client, &tenant, *id).await?);
        }
        let tree = read_tree(&client, mandate).await?;
        let inner = Arc::new(Inner {
            client,
            mandate,
            config,
            tree: RwLock::new(tree),
            last_heard: Mutex::new(Instant::now()),
            terminated: Mutex::new(None),
            suspended: Mutex::new(false),
            quarantined: Mutex::new(None),
            cancel: CancellationToken::new(),
            changed: watch::channel(0).0,
        });
        inner.settle();
        let signals = tokio::spawn(signal_loop(
            inner.clone(),
            futures::stream::select_all(streams),
        ));
        let heartbeat = tokio::spawn(heartbeat_loop(inner.clone()));
        let clock = tokio::spawn(clock_loop(inner.clone()));
        Ok(Self {
            inner,
            tasks: vec![signals, heartbeat, clock],
        })
    }

    /// The mandate this guard holds.
    pub fn mandate(&self) -> MandateId {
        self.inner.mandate
    }

    /// Fires when the mandate ends (here or above); in-flight work should stop.
    pub fn cancellation(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// Answers locally, without a network round trip.
    pub fn check(&self, action: &str, resource: &str) -> Decision {
        self.inner.check(action, resource)
    }

    /// The guard's current belief.
    pub fn state(&self) -> GuardState {
        let now = Utc::now();
        if let Some(s) = self.inner.terminated_status() {
            return GuardState::Terminated(s);
        }
        if self.inner.quarantine().is_some() {
            return GuardState::Quarantined;
        }
        if self.inner.stale() {
            return GuardState::Stale;
        }
        let tree = self.inner.tree.read().unwrap_or_else(|p| p.into_inner());
        match tree.effective(self.inner.mandate, now).map(|e| e.status) {
            Ok(Status::Active)
                if !*self
                    .inner
                    .suspended
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =>
            {
                GuardState::Active
            }
            Ok(Status::Active | Status::Paused) => GuardState::Paused,
            Ok(s) => GuardState::Terminated(s),
            Err(_) => GuardState::Terminated(Status::Revoked),
        }
    }

    /// Waits until the mandate is active (returns `Ok`) or has ended (`Err`
    /// with its status): the way to sit out a pause.
    pub async fn wait_active(&self) -> Result<(), Status> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            match self.state() {
                GuardState::Active => return Ok(()),
                GuardState::Terminated(s) => return Err(s),
                GuardState::Paused | GuardState::Stale | GuardState::Quarantined => {}
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(Status::Revoked) },
                _ = tokio::time::sleep(self.inner.config.heartbeat) => {}
            }
        }
    }

    /// Re-reads the state now.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        self.inner.refresh().await
    }
}

/// Reads the mandate's chain and holds it as a tree of just that chain:
/// effective status and `authorize` only ever look at the chain, so a guard
/// never reads (or keeps) its siblings.
async fn read_tree(client: &Client, mandate: MandateId) -> Result<Tree, ClientError> {
    let reply = client.chain(mandate, None).await?;
    let mut tree = Tree::empty(client.tenant().clone(), reply.tree);
    if let Some(root) = reply.mandates.first() {
        tree.root = Some(root.id);
        tree.principal = Some(root.principal.clone());
    }
    for mut m in reply.mandates {
        m.children.clear();
        tree.mandates.insert(m.id, m);
    }
    Ok(tree)
}

impl Inner {
    fn terminated_status(&self) -> Option<Status> {
        *self.terminated.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn quarantine(&self) -> Option<DenyReason> {
        self.quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_quarantine(&self, reason: Option<DenyReason>) {
        *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.changed.send_modify(|v| *v += 1);
    }

    fn stale(&self) -> bool {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > self.config.lease
    }

    fn check(&self, action: &str, resource: &str) -> Decision {
        let now = Utc::now();
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        let mut d = authorize(&tree, self.mandate, action, resource, now);
        if d.outcome == Outcome::Deny {
            return d;
        }
        let override_reason = if let Some(status) = self.terminated_status() {
            Some(DenyReason::NotActive {
                status,
                cause: None,
            })
        } else if let Some(reason) = self.quarantine() {
            Some(reason)
        } else if *self.suspended.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(DenyReason::NotActive {
                status: Status::Paused,
                cause: None,
            })
        } else if self.stale() {
            Some(DenyReason::Unverified {
                reason: format!(
                    "the guard has not heard the engine for longer than its lease of {:?}",
                    self.config.lease
                ),
            })
        } else {
            None
        };
        if let Some(reason) = override_reason {
            d.outcome = Outcome::Deny;
            d.reason = Some(reason);
            d.approval.clear();
        }
        d
    }

    /// Applies what the held tree says: fires cancellation on termination.
    fn settle(&self) {
        let now = Utc::now();
        let status = {
            let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
            tree.effective(self.mandate, now)
                .map(|e| e.status)
                .unwrap_or(Status::Revoked)
        };
        if status.is_terminal() {
            let mut t = self.terminated.lock().unwrap_or_else(|p| p.into_inner());
            t.get_or_insert(status);
            self.cancel.cancel();
        }
        self.changed.send_modify(|v| *v += 1);
    }

    async fn refresh(&self) -> Result<(), ClientError> {
        let tree = match read_tree(&self.client, self.mandate).await {
            Ok(tree) => tree,
            Err(ClientError::Engine(body)) if body.code == ErrorCode::Quarantined => {
                // The engine heard us and refuses: deny until a re-read
                // succeeds. A reason from the signal (it names the position)
                // is kept.
                if self.quarantine().is_none() {
                    self.set_quarantine(Some(DenyReason::Unverified {
                        reason: body.message.clone(),
                    }));
                }
                return Err(ClientError::Engine(body));
            }
            Err(e) => return Err(e),
        };
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = tree;
        *self.suspended.lock().unwrap_or_else(|p| p.into_inner()) = false;
        *self.quarantined.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.settle();
        Ok(())
    }
}

async fn signal_loop(
    inner: Arc<Inner>,
    mut signals: futures::stream::SelectAll<BoxStream<'static, Signal>>,
) {
    while let Some(signal) = signals.next().await {
        match signal.kind {
            SignalKind::Terminated => {
                {
                    let mut t = inner.terminated.lock().unwrap_or_else(|p| p.into_inner());
                    t.get_or_insert(signal.status);
                }
                inner.cancel.cancel();
                inner.changed.send_modify(|v| *v += 1);
            }
            SignalKind::Suspended => {
                *inner.suspended.lock().unwrap_or_else(|p| p.into_inner()) = true;
                inner.changed.send_modify(|v| *v += 1);
            }
            SignalKind::Quarantined => {
                inner.set_quarantine(Some(DenyReason::Quarantined {
                    tree: signal.tree,
                    position: signal.position.unwrap_or_default(),
                }));
                // The engine refuses to read a quarantined tree: a re-read
                // would only confirm it.
                continue;
            }
            SignalKind::Resumed | SignalKind::Narrowed | SignalKind::Restored => {}
        }
        // Terminal is absorbing: after a termination there is nothing left to
        // learn, and skipping the re-read keeps a cascade over thousands of
        // guards from turning into thousands of reads.
        if inner.terminated_status().is_some() {
            continue;
        }
        // Otherwise the signal is a hint; the state is the truth.
        if let Err(e) = inner.refresh().await {
            tracing::warn!(mandate = %inner.mandate, error = %e, "guard could not re-read state after a signal");
        }
    }
}

/// How often the guard looks at its NATS connection between heartbeats.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

async fn heartbeat_loop(inner: Arc<Inner>) {
    let nats = inner.client.nats_client().cloned();
    let mut was_connected = true;
    loop {
        // Sleep until the next heartbeat, but wake early when the connection
        // comes back: signals sent while it was down are lost, so re-read now
        // rather than a heartbeat later.
        let next = tokio::time::Instant::now() + inner.config.heartbeat;
        while tokio::time::Instant::now() < next {
            tokio::time::sleep(RECONNECT_POLL.min(inner.config.heartbeat)).await;
            let Some(nats) = &nats else { continue };
            let connected = nats.connection_state() == async_nats::connection::State::Connected;
            let reconnected = connected && !was_connected;
            was_connected = connected;
            if reconnected {
                break;
            }
        }
        if inner.terminated_status().is_some() {
            // Ended for good: no lease to keep.
            return;
        }
        if let Err(e) = inner.refresh().await {
            tracing::debug!(mandate = %inner.mandate, error = %e, "guard heartbeat failed");
            inner.changed.send_modify(|v| *v += 1);
        }
    }
}

/// Fires cancellation when the chain's `not_after` passes, without any signal.
async fn clock_loop(inner: Arc<Inner>) {
    loop {
        let deadline = {
            let tree = inner.tree.read().unwrap_or_else(|p| p.into_inner());
            tree.chain(inner.mandate).iter().map(|m| m.not_after).min()
        };
        let Some(deadline) = deadline else { return };
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            inner.settle();
            return;
        }
        // Re-evaluate at least every heartbeat, since a renew may move the deadline.
        tokio::time::sleep(wait.min(inner.config.heartbeat)).await;
    }
}
