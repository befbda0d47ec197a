//! The agent guard: what makes revocation real for an agent.
//!
//! - It subscribes to the signal subjects of every mandate on its chain
//!   *before* reading the state, so nothing falls between the two.
//! - `check(action, resource)` is answered locally with the domain's own
//!   `authorize` on the tree it holds; expiry is enforced by the local clock.
//!   The tree is held as a [`PreparedChain`], worked out once per state, and
//!   the guard's own reasons to deny are mirrored in one atomic word, so a
//!   check costs a lock read, two clock reads and pattern matching;
//!   `allows` answers the same yes or no without building a decision.
//! - Its [`CancellationToken`] fires on termination (a signal, a re-read that
//!   finds the chain ended, or the chain's `not_after` passing).
//! - It fails closed: when it has not heard the engine for longer than its
//!   lease it denies, until a re-read succeeds. It re-reads the tree on every
//!   heartbeat, so a signal lost while cut off (or dropped by a slow
//!   consumer) is made up within one heartbeat.
//! - Its state never goes back: each `chain` reply carries the tree's
//!   version, and a reply older than the state held is dropped, so a slow
//!   answer cannot undo a pause or a narrowing it was overtaken by.
//! - It reads time by the engine's clock: each reply carries the engine's
//!   time, and when the agent's clock lags by more than a tolerance the
//!   guard adds the lag (and warns), so it never outlives `not_after`.
//! - It holds only a chain the engine could have written, ending at its own
//!   mandate ([`Tree::from_chain`]): any other reply is refused, and counts
//!   as not hearing the engine.
//! - Guards of one process share one subscription per mandate subject (and
//!   connection), fan out locally, and unsubscribe with the last guard
//!   ([`GuardHub`]). A guard that falls behind the local fan-out, or whose
//!   subscription ends, denies until it has re-read its chain: a lost
//!   signal never goes unnoticed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
#[cfg(feature = "engine")]
use tokio::sync::broadcast;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::authorize::PreparedChain;
use crate::domain::{Decision, DenyReason, ErrorCode, MandateId, Outcome, Status, TenantId, Tree};
use crate::protocol::{signal_subject, ChainReply, Consistency, MandateQuery, Signal, SignalKind};

use super::{Client, ClientError};

/// Guard settings.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// After this long without hearing the engine, every check is denied
    /// until the state has been re-read.
    pub lease: Duration,
    /// How often the guard re-reads its tree (and so hears the engine).
    pub heartbeat: Duration,
    /// The agent's wall clock (`Utc::now`; tests set a skewed one).
    pub clock: fn() -> DateTime<Utc>,
    /// How far the agent's clock may lag the engine's before the guard
    /// corrects for it (and warns).
    pub clock_tolerance: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(3),
            clock: Utc::now,
            clock_tolerance: Duration::from_secs(1),
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

/// Shares one subscription per signal subject among the guards of a
/// process, and hands each signal to every guard that watches the subject.
///
/// A guard watches every link of its chain, so the guards below one root all
/// watch that root's subject: ending the root is one message from the server
/// to this process, whatever the number of guards. The hub's task for the
/// subject then settles each guard on the spot (a termination cancels it
/// there and then), with no task per guard to wake and no queue per guard
/// to fall behind on; a signal that calls for a re-read only pokes the
/// guard's own task, and pokes coalesce. If the subscription itself falls
/// behind or ends, every guard on it denies until it has re-read.
///
/// Subscriptions are keyed by connection (or in-process engine) and subject,
/// so guards on different connections keep their own, and counted: the last
/// guard to let go of a subject unsubscribes.
///
/// Why not one wildcard subscription per tenant (`mandate.sig.<tenant>.*`)?
/// It would bring every signal of the tenant to every process holding one
/// guard, so a process's traffic would grow with the tenant's activity
/// instead of with what it guards, and it needs the right to read the whole
/// tenant's signals, which an agent's NATS permissions need not grant. One
/// subscription per distinct link is bounded by the guards held.
#[derive(Clone, Default)]
pub struct GuardHub {
    shared: Arc<Mutex<HashMap<SubjectKey, Shared>>>,
    /// NATS connections whose reconnects a task of the hub watches (one
    /// task per connection, not per guard: see [`watch_reconnects`]).
    watched: Arc<Mutex<std::collections::HashSet<usize>>>,
}

/// One subject on one connection.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SubjectKey {
    /// The address of what every handle of one connection shares (its
    /// statistics, or the in-process engine's signal bus); the entry holds a
    /// client of it, so the address is not reused while the entry exists.
    connection: usize,
    subject: String,
}

/// The guards listening on one subscription, by guard number.
type Listeners = HashMap<u64, Weak<Inner>>;

/// A live subscription and the guards that hold it.
struct Shared {
    /// Tells this subscription apart from a later one on the same key.
    id: u64,
    listeners: Arc<Mutex<Listeners>>,
    /// Ends the task that owns the subscription; dropping a NATS subscriber
    /// unsubscribes.
    task: tokio::task::AbortHandle,
    _client: Client,
}

/// A guard's hold on one shared subscription; dropping it lets go, and the
/// last to let go ends the subscription.
struct Lease {
    shared: Arc<Mutex<HashMap<SubjectKey, Shared>>>,
    key: SubjectKey,
    id: u64,
    guard: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut map = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let last = match map.get(&self.key) {
            Some(entry) if entry.id == self.id => {
                let mut listeners = entry.listeners.lock().unwrap_or_else(|p| p.into_inner());
                listeners.remove(&self.guard);
                listeners.is_empty()
            }
            _ => false,
        };
        if last {
            if let Some(entry) = map.remove(&self.key) {
                entry.task.abort();
            }
        }
    }
}

/// Numbers subscriptions and guards, so a lease never touches a later
/// subscription or another guard.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

impl GuardHub {
    /// A new, empty hub. Share it among the guards of a process.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many subscriptions the hub holds for its guards.
    pub fn subscriptions(&self) -> usize {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Makes `guard` hear `mandate`'s subject, subscribing unless another
    /// guard on the same connection already does.
    async fn listen(
        &self,
        client: &Client,
        mandate: MandateId,
        guard: &Arc<Inner>,
    ) -> Result<Lease, ClientError> {
        let key = SubjectKey {
            connection: connection_of(client)?,
            subject: signal_subject(client.tenant(), mandate),
        };
        self.watch(client, key.connection);
        if let Some(lease) = self.join(&key, guard) {
            return Ok(lease);
        }
        let source = match client.in_process_signals(client.tenant(), mandate).await {
            Some(local) => local?,
            None => {
                let nats = client
                    .nats_client()
                    .ok_or_else(|| ClientError::Nats("no transport".into()))?;
                let sub = nats
                    .subscribe(key.subject.clone())
                    .await
                    .map_err(|e| ClientError::Nats(e.to_string()))?;
                // No flush here: the guard's state read that follows is a
                // request on this same connection, and the server handles a
                // connection's messages in order, so the subscription is in
                // place before the read is answered. A guard that joins it
                // later reads later, on the same connection, too.
                nats_signals(sub)
            }
        };
        let mut map = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&key) {
            // Another guard subscribed meanwhile: use its subscription (ours
            // is dropped, which unsubscribes it).
            drop(map);
            return self
                .join(&key, guard)
                .ok_or_else(|| ClientError::Nats(format!("subscription to {} lost", key.subject)));
        }
        let id = next_id();
        let listeners = Arc::new(Mutex::new(HashMap::from([(
            guard.number,
            Arc::downgrade(guard),
        )])));
        let task = tokio::spawn(forward(
            source,
            listeners.clone(),
            self.shared.clone(),
            key.clone(),
            id,
        ));
        map.insert(
            key.clone(),
            Shared {
                id,
                listeners,
                task: task.abort_handle(),
                _client: client.clone(),
            },
        );
        Ok(Lease {
            shared: self.shared.clone(),
            key,
            id,
            guard: guard.number,
        })
    }

    /// Starts the reconnect watcher of a NATS connection, once.
    fn watch(&self, client: &Client, connection: usize) {
        let Some(nats) = client.nats_client() else {
            return;
        };
        let fresh = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(connection);
        if fresh {
            tokio::spawn(watch_reconnects(
                nats.statistics(),
                Arc::downgrade(&self.shared),
                self.watched.clone(),
                connection,
            ));
        }
    }

    /// Adds `guard` to the subscription already held for `key`, if any.
    fn join(&self, key: &SubjectKey, guard: &Arc<Inner>) -> Option<Lease> {
        let map = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(key)?;
        entry
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(guard.number, Arc::downgrade(guard));
        Some(Lease {
            shared: self.shared.clone(),
            key: key.clone(),
            id: entry.id,
            guard: guard.number,
        })
    }
}

/// What the guards of one connection share: the address of its statistics
/// over NATS, of the engine's signal bus in process.
fn connection_of(client: &Client) -> Result<usize, ClientError> {
    if let Some(nats) = client.nats_client() {
        return Ok(Arc::as_ptr(&nats.statistics()) as usize);
    }
    #[cfg(feature = "engine")]
    if let Some(engine) = client.engine() {
        return Ok(engine.bus() as *const _ as usize);
    }
    Err(ClientError::Nats("no transport".into()))
}

/// A NATS subscription's messages as signals; one that does not decode is
/// passed over (and said), as it tells no guard anything.
fn nats_signals(sub: async_nats::Subscriber) -> BoxStream<'static, Heard> {
    sub.filter_map(|msg| async move {
        match serde_json::from_slice::<Signal>(&msg.payload) {
            Ok(signal) => Some(Heard::Signal(Arc::new(signal))),
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "passed over a message on a signal subject that is not a signal");
                None
            }
        }
    })
    .boxed()
}

/// Hands what one subscription hears to the guards that hold it. When the
/// subscription ends (the connection closed), the entry is let go, so the
/// next guard subscribes again, and the guards that held it deny until they
/// have re-read.
async fn forward(
    mut source: BoxStream<'static, Heard>,
    listeners: Arc<Mutex<Listeners>>,
    shared: Arc<Mutex<HashMap<SubjectKey, Shared>>>,
    key: SubjectKey,
    id: u64,
) {
    while let Some(heard) = source.next().await {
        let guards = listeners.lock().unwrap_or_else(|p| p.into_inner());
        for guard in guards.values().filter_map(Weak::upgrade) {
            guard.hear(&heard);
        }
    }
    {
        let mut map = shared.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|entry| entry.id == id) {
            map.remove(&key);
        }
    }
    let guards = listeners.lock().unwrap_or_else(|p| p.into_inner());
    for guard in guards.values().filter_map(Weak::upgrade) {
        guard.hear(&Heard::Missed);
    }
}

/// Watches one NATS connection for reconnects, for every guard of the hub
/// on it: signals published while it was down are lost, so each of those
/// guards hears that it missed some (it denies until a fresh re-read, which
/// it starts at once). One task per connection, polling the client's count
/// of connects (so a drop and reconnect between two looks is not missed);
/// it ends with the hub, or once the connection itself is gone.
async fn watch_reconnects(
    stats: Arc<async_nats::Statistics>,
    shared: Weak<Mutex<HashMap<SubjectKey, Shared>>>,
    watched: Arc<Mutex<std::collections::HashSet<usize>>>,
    connection: usize,
) {
    let connects = |s: &async_nats::Statistics| s.connects.load(Ordering::Relaxed);
    let mut seen = connects(&stats);
    loop {
        tokio::time::sleep(RECONNECT_POLL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Only this task holds the statistics: no client of the connection
        // is left. The address is not reused before this drop.
        if Arc::strong_count(&stats) == 1 {
            watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&connection);
            return;
        }
        let now = connects(&stats);
        if now == seen {
            continue;
        }
        seen = now;
        let listeners: Vec<_> = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| k.connection == connection)
            .map(|(_, s)| s.listeners.clone())
            .collect();
        for listeners in listeners {
            let guards = listeners.lock().unwrap_or_else(|p| p.into_inner());
            for guard in guards.values().filter_map(Weak::upgrade) {
                guard.hear(&Heard::Missed);
            }
        }
    }
}

/// What a guard hears on one subject of its chain.
#[derive(Clone, Debug)]
pub(crate) enum Heard {
    /// A signal, shared by every guard that hears it.
    Signal(Arc<Signal>),
    /// Signals may have been lost on the way (the subscription fell behind,
    /// or ended): the guard denies until it has re-read its chain.
    Missed,
}

/// What a guard hears from a fan-out channel: each signal, a [`Heard::Missed`]
/// for a stretch it fell behind on, and a last one when the channel closes.
#[cfg(feature = "engine")]
pub(crate) fn heard_stream(rx: broadcast::Receiver<Arc<Signal>>) -> BoxStream<'static, Heard> {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(s) => Some((Heard::Signal(s), Some(rx))),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "a guard fell behind its signals: it re-reads");
                Some((Heard::Missed, Some(rx)))
            }
            Err(broadcast::error::RecvError::Closed) => Some((Heard::Missed, None)),
        }
    })
    .boxed()
}

/// The signals of a fan-out channel as a stream, for a watcher that only
/// shows them (`mandate watch`): a stretch it fell behind on is skipped.
#[cfg(feature = "engine")]
pub(crate) fn receiver_stream(rx: broadcast::Receiver<Arc<Signal>>) -> BoxStream<'static, Signal> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(s) => return Some((Signal::clone(&s), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

struct Inner {
    /// Tells guards apart on a shared subscription.
    number: u64,
    client: Client,
    mandate: MandateId,
    config: GuardConfig,
    held: RwLock<Held>,
    /// When the guard started: `heard` counts from it.
    born: Instant,
    /// When the engine was last heard, in nanoseconds since `born`.
    heard: AtomicU64,
    /// Which of `terminated`, `suspended`, `quarantined` and `missed` are
    /// set ([`Block`]), so that a check reads one word instead of four
    /// locks. Each bit changes only under its own lock, together with what
    /// it mirrors.
    blocked: AtomicU8,
    /// Set by a terminating signal before the re-read lands: sticky.
    terminated: Mutex<Option<Status>>,
    /// Set by a suspending signal (to its event's sequence) until a re-read
    /// that includes that event.
    suspended: Mutex<Option<u64>>,
    /// Set by a `quarantined` signal, or by a re-read the engine refused
    /// because the tree is quarantined; cleared by a re-read that succeeds.
    quarantined: Mutex<Option<DenyReason>>,
    /// Set when signals may have been missed (see [`Heard::Missed`]), to the
    /// count of misses so far; cleared by a re-read sent after it.
    missed: Mutex<Option<u64>>,
    /// How many times signals may have been missed.
    misses: AtomicU64,
    cancel: CancellationToken,
    changed: watch::Sender<u64>,
    /// Poked by a signal that calls for a re-read; pokes coalesce, so the
    /// guard re-reads once for any number of them.
    reread: Notify,
    /// The newest log position a signal that asked for a re-read named.
    reread_at: AtomicU64,
}

/// The chain the guard holds, made ready for checks when it changes, and
/// the clock correction to read it by: a check takes one lock, once.
struct Held {
    chain: PreparedChain,
    /// How far the agent's clock is behind the engine's, when by more than
    /// the tolerance; added to the agent's clock.
    behind: Option<chrono::Duration>,
}

impl Held {
    /// The guard's notion of now: `local` (the agent's clock) moved forward
    /// by as much as it was last seen to lag the engine's.
    fn now(&self, local: DateTime<Utc>) -> DateTime<Utc> {
        match self.behind {
            Some(behind) => local.checked_add_signed(behind).unwrap_or(local),
            None => local,
        }
    }
}

/// The bits of [`Inner::blocked`]: a state that denies whatever the chain
/// says.
#[derive(Clone, Copy)]
enum Block {
    Terminated = 1,
    Suspended = 2,
    Quarantined = 4,
    Missed = 8,
}

/// The agent's guard for one mandate. Dropping it stops its tasks and lets
/// go of its subscriptions.
pub struct Guard {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _leases: Vec<Lease>,
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
        let chain = client.chain(mandate, None).await?;
        let inner = Arc::new(Inner {
            number: next_id(),
            held: RwLock::new(Held {
                chain: PreparedChain::new(Tree::empty(tenant, chain.tree), mandate),
                behind: None,
            }),
            client: client.clone(),
            mandate,
            config,
            born: Instant::now(),
            heard: AtomicU64::new(0),
            blocked: AtomicU8::new(0),
            terminated: Mutex::new(None),
            suspended: Mutex::new(None),
            quarantined: Mutex::new(None),
            missed: Mutex::new(None),
            misses: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            changed: watch::channel(0).0,
            reread: Notify::new(),
            reread_at: AtomicU64::new(0),
        });
        let mut leases = Vec::new();
        for m in &chain.mandates {
            leases.push(hub.listen(&client, m.id(), &inner).await?);
        }
        inner.refresh(Consistency::Fresh).await?;
        let signals = tokio::spawn(reread_loop(inner.clone()));
        let heartbeat = tokio::spawn(heartbeat_loop(inner.clone()));
        let clock = tokio::spawn(clock_loop(inner.clone()));
        Ok(Self {
            inner,
            tasks: vec![signals, heartbeat, clock],
            _leases: leases,
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

    /// Answers locally, without a network round trip: `authorize` on the
    /// chain held, denied whenever the guard's own state says so.
    pub fn check(&self, action: &str, resource: &str) -> Decision {
        self.inner.check(action, resource)
    }

    /// Exactly `self.check(action, resource).is_allowed()`, without
    /// building the decision: the agent's hot path, which allocates nothing.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        self.inner.allows(action, resource)
    }

    /// The guard's current belief.
    pub fn state(&self) -> GuardState {
        let now = self.inner.now();
        if let Some(s) = self.inner.terminated_status() {
            return GuardState::Terminated(s);
        }
        if self.inner.quarantine().is_some() {
            return GuardState::Quarantined;
        }
        if self.inner.stale() || self.inner.missed() {
            return GuardState::Stale;
        }
        let held = self.inner.held.read().unwrap_or_else(|p| p.into_inner());
        match held
            .chain
            .tree()
            .effective(self.inner.mandate, now)
            .map(|e| e.status)
        {
            Ok(Status::Active)
                if self
                    .inner
                    .suspended
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none() =>
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

    /// Re-reads the state now (`fresh`).
    pub async fn refresh(&self) -> Result<(), ClientError> {
        self.inner.refresh(Consistency::Fresh).await
    }

    /// How far the agent's clock is behind the engine's, when by more than
    /// [`GuardConfig::clock_tolerance`]: the guard then reads time as the
    /// agent's clock plus this, so it expires when the engine says.
    pub fn clock_behind(&self) -> Option<Duration> {
        self.inner
            .held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .behind
            .and_then(|d| d.to_std().ok())
    }

    /// Takes `reply` as if a re-read had just returned it. A seam for tests
    /// that make an old answer arrive after a newer one, or a broken one.
    #[doc(hidden)]
    pub fn apply_reply(&self, reply: ChainReply) -> Result<(), ClientError> {
        self.inner.install(reply, self.inner.local_now())
    }
}

/// Holds a chain reply as a tree of just that chain ([`Tree::from_chain`],
/// which refuses a chain the engine could not have written): effective
/// status and `authorize` only ever look at the chain, so a guard never
/// reads (or keeps) its siblings. The chain must end at the guard's own
/// `mandate`: a reply about another one is refused rather than read as the
/// guard's mandate having gone.
fn chain_tree(
    tenant: &TenantId,
    mandate: MandateId,
    reply: ChainReply,
) -> Result<Tree, ClientError> {
    let last = reply.mandates.last().map(|m| m.id());
    if last != Some(mandate) {
        return Err(ClientError::Decode(format!(
            "the chain reply ends at {last:?}, not at the guard's mandate {mandate}"
        )));
    }
    Tree::from_chain(tenant.clone(), reply.tree, reply.version, reply.mandates)
        .map_err(|e| ClientError::Decode(e.to_string()))
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
        {
            let mut q = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
            self.mark(Block::Quarantined, reason.is_some());
            *q = reason;
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sets or clears `block`'s bit; called under the lock of what it
    /// mirrors.
    fn mark(&self, block: Block, set: bool) {
        if set {
            self.blocked.fetch_or(block as u8, Ordering::SeqCst);
        } else {
            self.blocked.fetch_and(!(block as u8), Ordering::SeqCst);
        }
    }

    fn missed(&self) -> bool {
        self.missed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Signals may have been lost: deny until a re-read sent from now on.
    fn note_missed(&self) {
        let miss = self.misses.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
            *missed = Some(miss);
            self.mark(Block::Missed, true);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// A re-read sent after `misses` misses succeeded: what was missed
    /// before it is made up.
    fn made_up(&self, misses: u64) {
        let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
        if missed.is_some_and(|miss| miss <= misses) {
            *missed = None;
            self.mark(Block::Missed, false);
        }
    }

    fn stale(&self) -> bool {
        let heard = Duration::from_nanos(self.heard.load(Ordering::SeqCst));
        self.born.elapsed().saturating_sub(heard) > self.config.lease
    }

    /// The engine was heard now.
    fn note_heard(&self) {
        let since_born = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.heard.fetch_max(since_born, Ordering::SeqCst);
    }

    /// The guard's notion of now: the agent's clock, moved forward by as
    /// much as it was last seen to lag the engine's.
    fn now(&self) -> DateTime<Utc> {
        let local = (self.config.clock)();
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .now(local)
    }

    /// The agent's clock as it is, without correction.
    fn local_now(&self) -> DateTime<Utc> {
        (self.config.clock)()
    }

    /// `authorize` on the chain held, at the guard's notion of now.
    fn authorize(&self, action: &str, resource: &str) -> Decision {
        let local = (self.config.clock)();
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.chain.authorize(action, resource, held.now(local))
    }

    /// True when nothing but the chain stands between a request and an
    /// allow: no termination, suspension, quarantine or missed signal is
    /// noted, and the engine was heard within the lease.
    fn clear(&self) -> bool {
        self.blocked.load(Ordering::SeqCst) == 0 && !self.stale()
    }

    fn allows(&self, action: &str, resource: &str) -> bool {
        if !self.clear() {
            return false;
        }
        let local = (self.config.clock)();
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.chain.allows(action, resource, held.now(local))
    }

    fn check(&self, action: &str, resource: &str) -> Decision {
        let mut d = self.authorize(action, resource);
        if d.outcome == Outcome::Deny || self.clear() {
            return d;
        }
        let override_reason = if let Some(status) = self.terminated_status() {
            Some(DenyReason::NotActive {
                status,
                cause: None,
            })
        } else if let Some(reason) = self.quarantine() {
            Some(reason)
        } else if self
            .suspended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            Some(DenyReason::NotActive {
                status: Status::Paused,
                cause: None,
            })
        } else if self.missed() {
            Some(DenyReason::Unverified {
                reason:
                    "the guard may have missed a signal: it denies until it has re-read its chain"
                        .into(),
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
        let now = self.now();
        let status = {
            let held = self.held.read().unwrap_or_else(|p| p.into_inner());
            held.chain
                .tree()
                .effective(self.mandate, now)
                .map(|e| e.status)
                .unwrap_or(Status::Revoked)
        };
        if status.is_terminal() {
            let mut t = self.terminated.lock().unwrap_or_else(|p| p.into_inner());
            t.get_or_insert(status);
            self.mark(Block::Terminated, true);
            self.cancel.cancel();
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Re-reads the chain at `level`: `at_least` the position a signal
    /// named, or `fresh` when nothing names one (the heartbeat, which makes
    /// up for signals lost, must see everything acknowledged anywhere).
    async fn refresh(&self, level: Consistency) -> Result<(), ClientError> {
        let misses = self.misses.load(Ordering::SeqCst);
        let sent = self.local_now();
        let q = MandateQuery {
            mandate: self.mandate,
            at: None,
            consistency: level,
        };
        let reply = match self.client.chain_with(q).await {
            Ok(reply) => reply,
            Err(ClientError::Engine(body))
                if body.code == ErrorCode::Quarantined
                    || body.reason.as_deref() == Some("log_went_backwards") =>
            {
                // The engine heard us and refuses (the tree is quarantined,
                // or the log went backwards on it): deny until a re-read
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
        self.install(reply, sent)?;
        self.made_up(misses);
        Ok(())
    }

    /// Takes a chain reply asked for at `sent` (the agent's uncorrected
    /// clock). State never goes back: a reply older than the
    /// tree held (a slow answer overtaken by a newer one) is dropped, and
    /// counts neither as hearing the engine nor as a clock reading. So does
    /// a reply whose chain the engine could not have written (refused).
    fn install(&self, reply: ChainReply, sent: DateTime<Utc>) -> Result<(), ClientError> {
        let version = reply.version;
        let reply_position = reply.position;
        let engine_time = reply.engine_time;
        {
            let held_version = self
                .held
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .chain
                .tree()
                .version();
            if version < held_version {
                tracing::debug!(
                    mandate = %self.mandate,
                    held = held_version,
                    reply = version,
                    "guard dropped a reply older than the state it holds"
                );
                return Ok(());
            }
            // Made ready for checks before taking the lock, so checks wait
            // only for the swap.
            let chain = PreparedChain::new(
                chain_tree(self.client.tenant(), self.mandate, reply)?,
                self.mandate,
            );
            let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
            if version < held.chain.tree().version() {
                return Ok(());
            }
            held.chain = chain;
        }
        {
            // The engine answered for the tree, so it is not quarantined any
            // more, unless the reply was read before the quarantine named by
            // a signal: only a state past the bad record (a restore is
            // appended after it) lifts that.
            let mut q = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
            let signalled_after = matches!(
                &*q,
                Some(DenyReason::Quarantined { position, .. }) if reply_position <= *position
            );
            if !signalled_after {
                *q = None;
                self.mark(Block::Quarantined, false);
            }
        }
        {
            // A suspension signalled for an event this reply does not yet
            // include stays in force.
            let mut suspended = self.suspended.lock().unwrap_or_else(|p| p.into_inner());
            if suspended.is_some_and(|seq| seq <= version) {
                *suspended = None;
                self.mark(Block::Suspended, false);
            }
        }
        self.note_clock(engine_time, sent);
        self.note_heard();
        self.settle();
        Ok(())
    }

    /// Compares the engine's clock in a reply with the agent's; a lag
    /// beyond the tolerance is corrected for, and said. The engine read its
    /// clock after the request was sent, so the lag is at most
    /// `engine_time - sent`: the guard takes that bound, which can only make
    /// it expire early (by up to a round trip), never late.
    fn note_clock(&self, engine_time: DateTime<Utc>, sent: DateTime<Utc>) {
        let lag = engine_time - sent;
        let tolerance = chrono::Duration::from_std(self.config.clock_tolerance)
            .unwrap_or(chrono::Duration::MAX);
        let behind = (lag > tolerance).then_some(lag);
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if behind.is_some() && held.behind.is_none() {
            tracing::warn!(
                mandate = %self.mandate,
                behind_ms = lag.num_milliseconds(),
                "the agent's clock is behind the engine's (or the engine answers slowly): the guard adds the lag to the agent's clock, and so expires mandates that much earlier than the agent's clock says"
            );
        }
        held.behind = behind;
    }
}

impl Inner {
    /// Takes what the guard's subscription heard, on the subscription's own
    /// task: the state changes at once, and a re-read, when one is called
    /// for, is left to the guard's task.
    fn hear(&self, heard: &Heard) {
        let signal = match heard {
            Heard::Signal(signal) => signal,
            Heard::Missed => {
                // Fail closed: deny now, and re-read to learn what was missed.
                self.note_missed();
                self.reread.notify_one();
                return;
            }
        };
        match signal.kind {
            SignalKind::Terminated => {
                {
                    let mut t = self.terminated.lock().unwrap_or_else(|p| p.into_inner());
                    t.get_or_insert(signal.status);
                    self.mark(Block::Terminated, true);
                }
                self.cancel.cancel();
                self.changed.send_modify(|v| *v += 1);
                // Terminal is absorbing: after a termination there is
                // nothing left to learn, and skipping the re-read keeps a
                // cascade over thousands of guards from turning into
                // thousands of reads.
                return;
            }
            SignalKind::Suspended => {
                {
                    let mut s = self.suspended.lock().unwrap_or_else(|p| p.into_inner());
                    *s = Some(s.map_or(signal.seq, |held| held.max(signal.seq)));
                    self.mark(Block::Suspended, true);
                }
                self.changed.send_modify(|v| *v += 1);
            }
            SignalKind::Quarantined => {
                self.set_quarantine(Some(DenyReason::Quarantined {
                    tree: signal.tree,
                    position: signal.position.unwrap_or_default(),
                }));
                // The engine refuses to read a quarantined tree: a re-read
                // would only confirm it.
                return;
            }
            SignalKind::Resumed | SignalKind::Narrowed | SignalKind::Restored => {}
        }
        // Otherwise the signal is a hint; the state is the truth, re-read
        // at least as new as the commit it came from.
        if let Some(position) = signal.head_position {
            self.reread_at.fetch_max(position, Ordering::SeqCst);
        }
        self.reread.notify_one();
    }
}

/// Re-reads the state whenever a signal asks for it (see [`Inner::hear`]).
async fn reread_loop(inner: Arc<Inner>) {
    loop {
        inner.reread.notified().await;
        if inner.terminated_status().is_some() {
            continue;
        }
        // Otherwise the signal is a hint; the state is the truth, read at
        // least as new as the newest event signalled. After signals were
        // missed, no position covers what was lost: fresh.
        let level = match inner.reread_at.load(Ordering::SeqCst) {
            _ if inner.missed() => Consistency::Fresh,
            0 => Consistency::Fresh,
            position => Consistency::AtLeast(position),
        };
        if let Err(e) = inner.refresh(level).await {
            tracing::warn!(mandate = %inner.mandate, error = %e, "guard could not re-read state after a signal");
        }
    }
}

/// How often a hub looks at each NATS connection its guards use.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

async fn heartbeat_loop(inner: Arc<Inner>) {
    loop {
        // A reconnect does not wait for the heartbeat: the hub's watcher of
        // the connection tells the guard it missed signals, and it re-reads
        // at once. So an idle guard wakes once a heartbeat, not ten times a
        // second.
        tokio::time::sleep(inner.config.heartbeat).await;
        if inner.terminated_status().is_some() {
            // Ended for good: no lease to keep.
            return;
        }
        if let Err(e) = inner.refresh(Consistency::Fresh).await {
            tracing::debug!(mandate = %inner.mandate, error = %e, "guard heartbeat failed");
            inner.changed.send_modify(|v| *v += 1);
        }
    }
}

/// Fires cancellation when the chain's `not_after` passes, without any signal.
async fn clock_loop(inner: Arc<Inner>) {
    loop {
        let deadline = {
            let held = inner.held.read().unwrap_or_else(|p| p.into_inner());
            held.chain
                .tree()
                .chain(inner.mandate)
                .iter()
                .map(|m| m.not_after())
                .min()
        };
        let Some(deadline) = deadline else { return };
        let wait = (deadline - inner.now()).to_std().unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            inner.settle();
            return;
        }
        // Re-evaluate at least every heartbeat, since a renew may move the deadline.
        tokio::time::sleep(wait.min(inner.config.heartbeat)).await;
    }
}

#[cfg(all(test, feature = "engine"))]
mod tests {
    use super::*;
    use crate::domain::{Actor, EventId, TreeId, SCHEMA_VERSION};

    fn signal() -> Arc<Signal> {
        let tree = TreeId::generate();
        Arc::new(Signal {
            schema_version: SCHEMA_VERSION,
            kind: SignalKind::Terminated,
            tenant: TenantId::new("acme").unwrap(),
            tree,
            mandate: MandateId::generate(),
            status: Status::Revoked,
            event_id: EventId::for_quarantine(tree, 1),
            event_type: "mandate_revoked".into(),
            seq: 1,
            time: Utc::now(),
            actor: Actor::projector(),
            reason: None,
            position: None,
            head_position: None,
        })
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_or_is_cut_off_hears_that_it_missed_signals() {
        let (tx, rx) = broadcast::channel(1);
        let mut heard = heard_stream(rx);
        for _ in 0..3 {
            tx.send(signal()).unwrap();
        }
        assert!(matches!(heard.next().await, Some(Heard::Missed)));
        assert!(matches!(heard.next().await, Some(Heard::Signal(_))));
        drop(tx);
        assert!(matches!(heard.next().await, Some(Heard::Missed)));
        assert!(heard.next().await.is_none());
    }
}
