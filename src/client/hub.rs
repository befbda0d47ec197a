//! What the guards of one process share: one follower of each tenant's
//! signals per connection, the lease kept by the engines' beacons, one
//! queue of re-reads and one clock for expiries.
//!
//! - **One consumer per tenant and connection.** A [`Feed`] follows
//!   `mandate.sig.<tenant>.>` with one ordered JetStream push consumer (its
//!   own: a named ephemeral consumer, created with the named create form so
//!   that a tenant-filtered permission admits it on server 2.9). Each signal
//!   is handed to the guards whose chain holds its mandate, on the feed's
//!   task. A termination is one store in the mandate's cell, which every
//!   guard of the chain reads on each check, and then one cancellation per
//!   guard, there and then.
//! - **Fast, then sure.** The feed also holds one core subscription to the
//!   tenant's signal subjects, which brings each signal as the server relays
//!   its publish, before the stream has stored it and pushed it to the
//!   consumer. Each signal is handed out once (by event id), whichever path
//!   brings it first; only the consumer's count for the lease and for gaps.
//! - **Nothing is lost across a cut-off.** The feed remembers the stream
//!   sequence of the last message it took. When the consumer's sequence
//!   skips (messages pushed while the connection was down), or its idle
//!   heartbeats stop, it creates a new consumer starting right after that
//!   sequence, so what was published meanwhile is replayed in order, and only
//!   the guards those signals name re-read. When the stream no longer holds
//!   what was missed (retention ran out, or the stream was recreated), every
//!   guard of the feed denies and re-reads, a few at a time.
//! - **The lease is the engines' beacons.** Every engine publishes a beacon
//!   per tenant into the same stream at a fixed interval. A beacon taken
//!   means every signal stored before it was taken too, and it counts as
//!   hearing the engine as of when the stream stored it (not when it
//!   arrived): a beacon replayed late after a cut-off does not renew the
//!   lease, so a feed that is catching up stays stale until it has caught up.
//! - **No task or timer per guard.** Re-reads asked for by signals go
//!   through one queue per feed, a few in flight at a time, and the expiry
//!   of every guard's chain (its `not_after`) is one timer heap per feed.
//!
//! In process (an embedded engine), the engine's own bus takes the place of
//! the consumer, one channel per tenant, and there is no lease to keep: the
//! engine is in the process.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::{MandateId, Status, TenantId};
use crate::protocol::{tenant_signals_subject, Beacon, Consistency, Signal, SignalKind};

use super::guard::{Heard, Inner};
use super::{Client, ClientError};

/// The signal stream's name (the engine creates it).
const SIGNAL_STREAM: &str = "MANDATE_SIGNALS";

/// The consumer's idle heartbeat: with no message for three times this
/// long, the consumer is taken as lost and made again from the last
/// sequence taken.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a feed asks the stream whether anything after its last
/// message was deleted (a purge, a limit): a push consumer moves past such
/// a gap without a skip in its own sequence. One request per feed, not per
/// guard.
const STREAM_CHECK: Duration = Duration::from_secs(5);

/// Re-reads one feed runs at once: a full re-read after an unrecoverable
/// gap goes through the same queue, so it reaches the engine a few at a time.
const REREADS_IN_FLIGHT: usize = 8;

/// Nanoseconds since the process's first look at the clock: what guards and
/// feeds record "heard at" in, so that they compare.
pub(crate) fn mono_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Shares one follower of each tenant's signals (per connection) among the
/// guards of a process; see the module documentation.
///
/// Why one consumer per tenant rather than one subscription per mandate
/// subject? A tenant's signals are few (they follow changes of authority),
/// and one consumer can resume where it stopped after a cut-off, which a
/// core subscription cannot: signals published while a process was cut off
/// reach it when it reconnects. The price is that a process receives every
/// signal of its tenant, and its NATS user needs the right to create a
/// consumer filtered to the tenant (see `examples/nats-server.conf`).
#[derive(Clone, Default)]
pub struct GuardHub {
    feeds: Arc<Mutex<HashMap<FeedKey, Arc<Feed>>>>,
}

/// One tenant on one connection (or in-process engine).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct FeedKey {
    /// The address of what every handle of one connection shares (its
    /// statistics, or the in-process engine's signal bus); the feed holds a
    /// client of it, so the address is not reused while the feed exists.
    connection: usize,
    tenant: TenantId,
}

/// Whether a mandate's termination has been heard, and with what status:
/// shared by every guard of the feed whose chain holds the mandate, so one
/// store makes all of them deny (see [`Feed::deliver`]). Set once; terminal
/// is absorbing.
pub(crate) type Ended = Arc<OnceLock<Status>>;

/// The guards listening on one mandate's signals.
#[derive(Default)]
struct Listeners {
    /// Set when the mandate's termination is heard.
    ended: Ended,
    /// By guard number: the guard, and its cancellation (held here so a
    /// termination fires it without touching the guard).
    guards: HashMap<u64, (Weak<Inner>, CancellationToken)>,
}

/// What a hub's feed has done, for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Signals taken from the stream (beacons not counted).
    pub signals: u64,
    /// Beacons taken.
    pub beacons: u64,
    /// Chain re-reads made by the feed's queue (a guard's first read at
    /// start is not one).
    pub rereads: u64,
    /// Times the feed found a gap the stream could not replay, and so had
    /// every guard re-read.
    pub full_rereads: u64,
    /// Consumers made again after a cut-off or a lost consumer.
    pub resumes: u64,
}

/// One tenant's signals on one connection, and the guards that hear them.
pub(crate) struct Feed {
    key: FeedKey,
    /// The hub's map, to leave it when the connection is closed for good.
    hub: Weak<Mutex<HashMap<FeedKey, Arc<Feed>>>>,
    client: Client,
    /// In process: no consumer, no lease.
    local: bool,
    /// When the newest beacon taken was stored, in [`mono_nanos`]; 0: none.
    beacon: AtomicU64,
    /// Guards by the mandates of their chains.
    listeners: Mutex<HashMap<MandateId, Listeners>>,
    /// Guards waiting for a re-read, each at most once.
    queue: Mutex<VecDeque<Weak<Inner>>>,
    queued: Notify,
    /// Expiry deadlines: when, and which guard (by number).
    timers: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    timed: Mutex<HashMap<u64, Weak<Inner>>>,
    timer_moved: Notify,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Signals already handed out (by event id), the last few thousand: a
    /// signal comes both straight from its publish and from the stream.
    seen: Mutex<Seen>,
    /// The consumer the follower made last, to delete when the feed ends
    /// (the server would remove it anyway once nobody listens).
    consumer: Mutex<Option<String>>,
    ended: AtomicBool,
    signals: AtomicU64,
    beacons: AtomicU64,
    rereads: AtomicU64,
    full_rereads: AtomicU64,
    resumes: AtomicU64,
}

impl Drop for Feed {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

/// A guard's place in a feed; dropping it takes the guard out, and the last
/// guard out ends the feed.
pub(crate) struct Attachment {
    hub: Weak<Mutex<HashMap<FeedKey, Arc<Feed>>>>,
    feed: Arc<Feed>,
    guard: u64,
    mandates: Vec<MandateId>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let empty = {
            let mut listeners = self.feed.lock_listeners();
            for m in &self.mandates {
                if let Some(l) = listeners.get_mut(m) {
                    l.guards.remove(&self.guard);
                    if l.guards.is_empty() {
                        listeners.remove(m);
                    }
                }
            }
            listeners.is_empty()
        };
        self.feed
            .timed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.guard);
        if empty {
            if let Some(hub) = self.hub.upgrade() {
                let mut feeds = hub.lock().unwrap_or_else(|p| p.into_inner());
                let same = feeds
                    .get(&self.feed.key)
                    .is_some_and(|f| Arc::ptr_eq(f, &self.feed));
                // Another guard may have joined since; only an empty feed goes.
                if same && self.feed.lock_listeners().is_empty() {
                    feeds.remove(&self.feed.key);
                    self.feed.end();
                }
            }
        }
    }
}

impl Attachment {
    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }
}

impl GuardHub {
    /// A new, empty hub. Share it among the guards of a process.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many feeds (tenant followers, one per tenant and connection) the
    /// hub holds for its guards.
    pub fn subscriptions(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// What the feeds of the hub have done, summed.
    pub fn stats(&self) -> FeedStats {
        let feeds: Vec<_> = self
            .feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        feeds.iter().fold(FeedStats::default(), |mut s, f| {
            let l = f.stats();
            s.signals += l.signals;
            s.beacons += l.beacons;
            s.rereads += l.rereads;
            s.full_rereads += l.full_rereads;
            s.resumes += l.resumes;
            s
        })
    }

    /// Puts `guard` on the feed of its client's tenant for every mandate of
    /// its chain; the feed is following the stream when this returns, so a
    /// state read that comes after misses nothing. Returns the attachment
    /// and the chain's [`Ended`] cells, which the guard reads on every
    /// check. A mandate of the chain whose termination the feed has already
    /// heard fires the guard's cancellation at once.
    pub(crate) async fn attach(
        &self,
        client: &Client,
        guard: &Arc<Inner>,
        cancel: &CancellationToken,
        mandates: &[MandateId],
    ) -> Result<(Attachment, Vec<Ended>), ClientError> {
        let key = FeedKey {
            connection: connection_of(client)?,
            tenant: client.tenant().clone(),
        };
        let feed = self.feed(client, key).await?;
        let mut cells = Vec::with_capacity(mandates.len());
        {
            let mut listeners = feed.lock_listeners();
            for m in mandates {
                let l = listeners.entry(*m).or_default();
                l.guards
                    .insert(guard.number, (Arc::downgrade(guard), cancel.clone()));
                if l.ended.get().is_some() {
                    cancel.cancel();
                }
                cells.push(l.ended.clone());
            }
        }
        Ok((
            Attachment {
                hub: Arc::downgrade(&self.feeds),
                feed: feed.clone(),
                guard: guard.number,
                mandates: mandates.to_vec(),
            },
            cells,
        ))
    }

    /// The feed for `key`, started (and following) if it was not.
    async fn feed(&self, client: &Client, key: FeedKey) -> Result<Arc<Feed>, ClientError> {
        if let Some(f) = self
            .feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let local = client.nats_client().is_none();
        let feed = Arc::new(Feed::new(
            key.clone(),
            Arc::downgrade(&self.feeds),
            client.clone(),
            local,
        ));
        if local {
            feed.listen_locally()?;
        } else {
            feed.start_following().await?;
        }
        feed.start_workers();
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        // Another guard may have started one meanwhile: use it (ours ends).
        let kept = feeds.entry(key).or_insert_with(|| feed.clone()).clone();
        if !Arc::ptr_eq(&kept, &feed) {
            feed.end();
        }
        Ok(kept)
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

impl Feed {
    fn new(
        key: FeedKey,
        hub: Weak<Mutex<HashMap<FeedKey, Arc<Feed>>>>,
        client: Client,
        local: bool,
    ) -> Self {
        Self {
            key,
            hub,
            client,
            local,
            beacon: AtomicU64::new(0),
            listeners: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            timers: Mutex::new(BinaryHeap::new()),
            timed: Mutex::new(HashMap::new()),
            timer_moved: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            consumer: Mutex::new(None),
            seen: Mutex::new(Seen::default()),
            ended: AtomicBool::new(false),
            signals: AtomicU64::new(0),
            beacons: AtomicU64::new(0),
            rereads: AtomicU64::new(0),
            full_rereads: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
        }
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<MandateId, Listeners>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> FeedStats {
        FeedStats {
            signals: self.signals.load(Ordering::Relaxed),
            beacons: self.beacons.load(Ordering::Relaxed),
            rereads: self.rereads.load(Ordering::Relaxed),
            full_rereads: self.full_rereads.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
        }
    }

    /// True in process: the engine is here, there is no lease to keep.
    pub(crate) fn is_local(&self) -> bool {
        self.local
    }

    /// When the newest beacon taken was stored, in [`mono_nanos`] (0: none).
    pub(crate) fn beacon_heard(&self) -> u64 {
        self.beacon.load(Ordering::SeqCst)
    }

    /// Ends the feed: its tasks stop, and every guard still on it denies
    /// until it has re-read (it hears that it missed signals).
    fn end(&self) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
        let name = self
            .consumer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let (Some(name), Some(nats)) = (name, self.client.nats_client()) {
            // Best effort: a user without the right to delete leaves it to
            // the server, which removes it once nobody listens.
            let js = async_nats::jetstream::new(nats.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = js.delete_consumer_from_stream(&name, SIGNAL_STREAM).await;
                });
            }
        }
    }

    /// Takes the feed out of its hub's map (if it is still there) and ends it.
    fn leave_hub(self: &Arc<Self>) {
        if let Some(hub) = self.hub.upgrade() {
            let mut feeds = hub.lock().unwrap_or_else(|p| p.into_inner());
            if feeds.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, self)) {
                feeds.remove(&self.key);
            }
        }
        self.end();
    }

    fn spawn(self: &Arc<Self>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut).abort_handle();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    fn start_workers(self: &Arc<Self>) {
        self.spawn(reread_worker(self.clone()));
        self.spawn(timer_worker(self.clone()));
    }

    /// Every live guard of the feed, once each.
    fn guards(&self) -> Vec<Arc<Inner>> {
        let listeners = self.lock_listeners();
        let mut seen = std::collections::HashSet::new();
        listeners
            .values()
            .flat_map(|l| l.guards.iter())
            .filter(|(n, _)| seen.insert(**n))
            .filter_map(|(_, (g, _))| g.upgrade())
            .collect()
    }

    /// Hands a signal (or a loss) to the guards listening on `mandate`.
    ///
    /// A termination is one store: the mandate's [`Ended`] cell, which every
    /// guard whose chain holds it reads on each check, so all of them deny
    /// from that moment. Then each one's cancellation fires, and nothing
    /// else is done per guard (no re-read: terminal is absorbing). Any other
    /// signal is taken by each guard on the spot. Both under the feed's lock
    /// of its listeners: hearing never takes that lock (a re-read it asks
    /// for goes on the queue), and a cascade over many guards is one pass.
    fn deliver(&self, mandate: MandateId, heard: &Heard) {
        let listeners = self.lock_listeners();
        let Some(l) = listeners.get(&mandate) else {
            return;
        };
        if let Heard::Signal(signal) = heard {
            if signal.kind == SignalKind::Terminated {
                // The first termination heard stays (as a guard's own does).
                let _ = l.ended.set(signal.status);
                for (_, cancel) in l.guards.values() {
                    cancel.cancel();
                }
                return;
            }
        }
        for (g, _) in l.guards.values() {
            if let Some(g) = g.upgrade() {
                g.hear(heard);
            }
        }
    }

    /// Signals were lost and the stream cannot replay them: every guard
    /// denies and re-reads, through the queue, a few at a time.
    fn lost_everything(&self, why: &str) {
        self.full_rereads.fetch_add(1, Ordering::Relaxed);
        let guards = self.guards();
        tracing::warn!(tenant = %self.key.tenant, guards = guards.len(), %why, "signals were lost beyond what the stream keeps: every guard re-reads");
        for g in &guards {
            g.hear(&Heard::Missed);
        }
    }

    /// Queues a re-read of `guard` (once, however many times it is asked).
    pub(crate) fn queue_reread(&self, guard: &Arc<Inner>) {
        if guard.queued.swap(true, Ordering::SeqCst) {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Arc::downgrade(guard));
        self.queued.notify_one();
    }

    /// Wakes the guard at `when` to look at its chain's expiry.
    pub(crate) fn schedule(&self, guard: &Arc<Inner>, when: Instant) {
        self.timed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(guard.number, Arc::downgrade(guard));
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = timers.peek().map(|Reverse((t, _))| *t);
        timers.push(Reverse((when, guard.number)));
        drop(timers);
        if earliest.is_none_or(|t| when < t) {
            self.timer_moved.notify_one();
        }
    }

    /// In process: follows the tenant's channel of the engine's bus, one
    /// task for the feed.
    fn listen_locally(self: &Arc<Self>) -> Result<(), ClientError> {
        let source = self
            .client
            .in_process_signals(&self.key.tenant)
            .ok_or_else(|| ClientError::Nats("no transport".into()))?;
        self.spawn(forward_local(source, Arc::downgrade(self)));
        Ok(())
    }

    /// Creates the consumer and starts the task that follows it; returns
    /// once the consumer exists at the server.
    async fn start_following(self: &Arc<Self>) -> Result<(), ClientError> {
        let nats = self
            .client
            .nats_client()
            .ok_or_else(|| ClientError::Nats("no transport".into()))?
            .clone();
        // The fast path first: core deliveries of the tenant's signals as
        // they are published, before the stream has stored them. The
        // consumer below is what no signal can escape; this only makes most
        // of them arrive sooner.
        if let Ok(sub) = nats.subscribe(fast_subject(&self.key.tenant)).await {
            self.spawn(fast_path(sub, Arc::downgrade(self)));
        }
        let follower = Follower::new(nats, &self.key.tenant);
        let (ready_tx, mut ready_rx) = watch::channel(None::<Result<(), String>>);
        self.spawn(follow(follower, Arc::downgrade(self), ready_tx));
        let wait = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(r) = ready_rx.borrow_and_update().clone() {
                    return r;
                }
                if ready_rx.changed().await.is_err() {
                    return Err("the follower ended before it started".into());
                }
            }
        })
        .await;
        match wait {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.end();
                Err(ClientError::Nats(format!(
                    "cannot follow tenant {t}'s signals: {e} (a guard's NATS user needs to read the info of stream {SIGNAL_STREAM} and to create a consumer on it filtered to {f}: see examples/nats-server.conf)",
                    t = self.key.tenant,
                    f = tenant_signals_subject(&self.key.tenant),
                )))
            }
            Err(_) => {
                self.end();
                Err(ClientError::TimedOut(format!(
                    "following tenant {}'s signals",
                    self.key.tenant
                )))
            }
        }
    }
}

/// In process: the tenant's channel into the feed. Falling behind it (or
/// its end) is a loss the feed cannot replay: every guard re-reads.
async fn forward_local(mut source: BoxStream<'static, Heard>, feed: Weak<Feed>) {
    while let Some(heard) = source.next().await {
        let Some(feed) = feed.upgrade() else { return };
        match heard {
            Heard::Signal(signal) => feed.take_signal(Signal::clone(&signal)),
            Heard::Missed => feed.lost_everything("the guards fell behind the engine's signals"),
        }
    }
}

/// Re-reads the guards queued on a feed, a few at a time. Holds the feed
/// until [`Feed::end`] stops it.
async fn reread_worker(f: Arc<Feed>) {
    loop {
        let batch: Vec<Arc<Inner>> = f
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .filter_map(|g| g.upgrade())
            .collect();
        if batch.is_empty() {
            // A notify with no one waiting is kept: none is lost between
            // the look and the wait.
            f.queued.notified().await;
            continue;
        }
        let count = batch.len() as u64;
        futures::stream::iter(batch)
            .for_each_concurrent(REREADS_IN_FLIGHT, |g| async move {
                // Taken off the queue before the read: a signal that comes
                // during it queues the guard again.
                g.queued.store(false, Ordering::SeqCst);
                g.reread().await;
            })
            .await;
        f.rereads.fetch_add(count, Ordering::Relaxed);
    }
}

/// Wakes each guard when its timer is due: its chain's `not_after`, or a
/// re-read to try again. Holds the feed until [`Feed::end`] stops it.
async fn timer_worker(f: Arc<Feed>) {
    loop {
        let (due, next) = {
            let now = Instant::now();
            let mut due = Vec::new();
            let mut timers = f.timers.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(Reverse((t, n))) = timers.peek().copied() {
                if t > now {
                    break;
                }
                timers.pop();
                due.push(n);
            }
            let next = timers.peek().map(|Reverse((t, _))| *t);
            drop(timers);
            let timed = f.timed.lock().unwrap_or_else(|p| p.into_inner());
            let due: Vec<_> = due
                .into_iter()
                .filter_map(|n| timed.get(&n).and_then(Weak::upgrade))
                .collect();
            (due, next)
        };
        for g in due {
            g.on_timer();
        }
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = f.timer_moved.notified() => {}
                }
            }
            None => f.timer_moved.notified().await,
        }
    }
}

/// The consumer side of a feed: a subscription to a private inbox and a
/// push consumer delivering to it, made again after any loss.
struct Follower {
    nats: async_nats::Client,
    js: async_nats::jetstream::Context,
    filter: String,
    /// The stream sequence of the last message taken (0: none yet).
    last: u64,
    /// When the stream stored the last message taken (Unix nanoseconds;
    /// when the feed started, before the first).
    last_stored: i128,
    /// When the stream was created, as first seen: a different one means
    /// it was recreated, and what the old one held is gone.
    created: Option<i128>,
    made: u64,
}

impl Follower {
    fn new(nats: async_nats::Client, tenant: &TenantId) -> Self {
        let js = async_nats::jetstream::new(nats.clone());
        Self {
            nats,
            js,
            filter: tenant_signals_subject(tenant),
            last: 0,
            last_stored: unix_nanos(),
            created: None,
            made: 0,
        }
    }

    /// The signal stream's info (one request; the stream is not looked up
    /// first).
    async fn stream_info(&self) -> Result<async_nats::jetstream::stream::Info, String> {
        let stream = self
            .js
            .get_stream_no_info(SIGNAL_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        stream.get_info().await.map_err(|e| e.to_string())
    }

    /// Subscribes to a fresh inbox, then creates a consumer delivering
    /// there, starting right after the last message taken. The first time,
    /// that is the stream's last message as the stream's info gives it, read
    /// before the consumer is made: nothing stored after the feed started
    /// can be missed, even if it is lost before it takes a message.
    async fn make(&mut self) -> Result<(async_nats::Subscriber, String), String> {
        use async_nats::jetstream::consumer::{push, AckPolicy, DeliverPolicy, ReplayPolicy};
        if self.created.is_none() {
            let info = self.stream_info().await?;
            self.created = Some(info.created.unix_timestamp_nanos());
            self.last = info.state.last_sequence;
        }
        let inbox = self.nats.new_inbox();
        let sub = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.made += 1;
        let name = format!(
            "mandate_hub_{}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12],
            self.made
        );
        let deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: self.last + 1,
        };
        let config = push::Config {
            name: Some(name.clone()),
            deliver_subject: inbox,
            filter_subject: self.filter.clone(),
            deliver_policy,
            ack_policy: AckPolicy::None,
            replay_policy: ReplayPolicy::Instant,
            flow_control: true,
            idle_heartbeat: IDLE_HEARTBEAT,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        self.js
            .create_consumer_on_stream(config, SIGNAL_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        Ok((sub, name))
    }

    /// Whether the stream still holds everything after the last message
    /// taken (same stream, nothing deleted past it). A stream that cannot
    /// be asked counts as whole: the lease covers an unreachable server.
    async fn nothing_deleted(&self) -> bool {
        match self.stream_info().await {
            Ok(info) => {
                self.created == Some(info.created.unix_timestamp_nanos())
                    && info.state.first_sequence <= self.last + 1
            }
            Err(_) => true,
        }
    }

    /// After a loss: can the stream still replay everything after the last
    /// message taken? `Ok(false)` when it cannot (retention ran out, a purge,
    /// or the stream was recreated): what was missed is gone.
    async fn replayable(&mut self) -> Result<bool, String> {
        let info = self.stream_info().await?;
        let created = info.created.unix_timestamp_nanos();
        let same_stream = *self.created.get_or_insert(created) == created;
        let state = &info.state;
        if !same_stream || state.last_sequence < self.last {
            // A new stream: its sequences mean nothing against ours; start
            // again from its beginning.
            self.created = Some(created);
            self.last = 0;
            return Ok(false);
        }
        // Replayable only when nothing after ours was deleted. If the
        // stream's first message is past ours, the stream's age limit,
        // another limit or a purge removed what lay between; beacons are
        // never rolled up, so that cannot be harmless: it is lost.
        Ok(state.first_sequence <= self.last + 1)
    }
}

/// The system clock in Unix nanoseconds.
fn unix_nanos() -> i128 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .map(i128::from)
        .unwrap_or(i128::MAX)
}

/// What one delivered message is to the follower.
enum Taken {
    /// A stored message, in order.
    Message {
        stream_seq: u64,
        consumer_seq: u64,
        stored_nanos: i128,
        message: async_nats::Message,
    },
    /// An idle heartbeat naming the last consumer sequence the server sent.
    Heartbeat { last_consumer: Option<u64> },
    /// Nothing to act on (flow control is answered where it is seen).
    Nothing,
}

/// Follows the feed's tenant: takes each message in order, resumes after a
/// loss, and ends with the feed (or when the connection is closed for good).
async fn follow(
    mut f: Follower,
    feed: Weak<Feed>,
    ready: watch::Sender<Option<Result<(), String>>>,
) {
    let mut first = true;
    let mut backoff = Duration::from_millis(50);
    loop {
        if !first {
            // Made again after a loss: first, can the stream still replay
            // what was missed? Until it can be asked (the server may be
            // down), try again; the lease covers the wait.
            let Some(fd) = feed.upgrade() else { return };
            match f.replayable().await {
                Ok(true) => {}
                Ok(false) => {
                    fd.lost_everything("the signal stream no longer holds what was missed")
                }
                Err(e) => {
                    drop(fd);
                    tracing::debug!(error = %e, "the signal stream could not be asked; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let sub = match f.make().await {
            Ok((sub, name)) => {
                let Some(fd) = feed.upgrade() else { return };
                let old = fd
                    .consumer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(name);
                if let Some(old) = old {
                    // The consumer lost is deleted, best effort.
                    let js = f.js.clone();
                    tokio::spawn(async move {
                        let _ = js.delete_consumer_from_stream(&old, SIGNAL_STREAM).await;
                    });
                }
                if !first {
                    fd.resumes.fetch_add(1, Ordering::Relaxed);
                }
                sub
            }
            Err(e) => {
                if first {
                    let _ = ready.send(Some(Err(e)));
                    return;
                }
                tracing::debug!(error = %e, "the guards' signal consumer could not be made again; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if feed.upgrade().is_none() {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if first {
            first = false;
            let _ = ready.send(Some(Ok(())));
        }
        let closed = take_until_lost(&mut f, sub, &feed).await;
        if closed || feed.upgrade().is_none() {
            if let Some(fd) = feed.upgrade() {
                // No connection any more: nothing will be heard again here.
                // The feed leaves the hub (the next guard starts another)
                // and its guards deny until they have re-read.
                fd.leave_hub();
                for g in fd.guards() {
                    g.hear(&Heard::Missed);
                }
            }
            return;
        }
    }
}

/// Takes messages until the consumer is lost (a skipped sequence, or no
/// heartbeat for too long). Returns true when the subscription ended (the
/// connection closed).
async fn take_until_lost(
    f: &mut Follower,
    mut sub: async_nats::Subscriber,
    feed: &Weak<Feed>,
) -> bool {
    let mut consumer_seq = 0u64;
    let stats = f.nats.statistics();
    let mut connects = stats.connects.load(Ordering::Relaxed);
    let mut next_check = tokio::time::Instant::now() + STREAM_CHECK;
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(IDLE_HEARTBEAT * 3, sub.next()) => match m {
                Ok(Some(m)) => m,
                Ok(None) => return true,
                // Heartbeats stopped: the consumer (or the connection) is gone.
                Err(_) => return false,
            },
            _ = tokio::time::sleep_until(next_check) => {
                next_check = tokio::time::Instant::now() + STREAM_CHECK;
                if !f.nothing_deleted().await {
                    return false;
                }
                continue;
            }
        };
        // A consumer resumes after a reconnect without a gap in its own
        // sequence even when the stream lost messages meanwhile (a purge
        // moves it past them): ask the stream before taking anything more.
        let now = stats.connects.load(Ordering::Relaxed);
        if now != connects {
            connects = now;
            if !f.nothing_deleted().await {
                return false;
            }
        }
        match classify(&f.nats, msg) {
            Taken::Nothing => {}
            Taken::Heartbeat { last_consumer } => {
                if last_consumer.is_some_and(|c| c != consumer_seq) {
                    return false;
                }
            }
            Taken::Message {
                stream_seq,
                consumer_seq: c,
                stored_nanos,
                message,
            } => {
                if c != consumer_seq + 1 {
                    // Something was pushed while we could not take it.
                    return false;
                }
                consumer_seq = c;
                f.last = stream_seq;
                f.last_stored = stored_nanos;
                let Some(fd) = feed.upgrade() else {
                    return true;
                };
                take(&fd, &message, stored_nanos);
            }
        }
    }
}

/// Sorts a delivered message; answers flow control on the spot.
fn classify(nats: &async_nats::Client, message: async_nats::Message) -> Taken {
    if let Some(status) = message.status {
        if status == async_nats::StatusCode::IDLE_HEARTBEAT {
            if let Some(reply) = message.reply.clone() {
                // Flow control: answered, or the server stops pushing.
                let nats = nats.clone();
                tokio::spawn(async move {
                    let _ = nats.publish(reply, "".into()).await;
                });
                return Taken::Nothing;
            }
            let last_consumer = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Last-Consumer"))
                .and_then(|v| v.as_str().parse().ok());
            return Taken::Heartbeat { last_consumer };
        }
        return Taken::Nothing;
    }
    let Some(reply) = message.reply.as_ref() else {
        return Taken::Nothing;
    };
    let Some((stream_seq, consumer_seq, stored_nanos)) = ack_info(reply.as_str()) else {
        return Taken::Nothing;
    };
    Taken::Message {
        stream_seq,
        consumer_seq,
        stored_nanos,
        message,
    }
}

/// The stream sequence, consumer sequence and stored time of a JetStream
/// message, from its reply subject (`$JS.ACK.<stream>.<consumer>.
/// <delivered>.<stream seq>.<consumer seq>.<nanos>.<pending>`, or the longer
/// form with a domain and account hash before the stream).
fn ack_info(reply: &str) -> Option<(u64, u64, i128)> {
    let tokens: Vec<&str> = reply.strip_prefix("$JS.ACK.")?.split('.').collect();
    let at = match tokens.len() {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    let stream_seq = tokens.get(at + 3)?.parse().ok()?;
    let consumer_seq = tokens.get(at + 4)?.parse().ok()?;
    let nanos = tokens.get(at + 5)?.parse().ok()?;
    Some((stream_seq, consumer_seq, nanos))
}

/// Takes one stored message: a beacon renews the lease as of when it was
/// stored; a signal goes to the guards of its mandate.
fn take(feed: &Feed, message: &async_nats::Message, stored_nanos: i128) {
    let subject = message.subject.as_str();
    if subject.ends_with(".beacon") {
        if serde_json::from_slice::<Beacon>(&message.payload).is_err() {
            tracing::warn!(%subject, "passed over a beacon that does not decode");
            return;
        }
        feed.beacons.fetch_add(1, Ordering::Relaxed);
        // How long ago the stream stored it, by this process's clock (never
        // in the future): a beacon replayed late counts as heard that long ago.
        let age = u64::try_from((unix_nanos() - stored_nanos).max(0)).unwrap_or(u64::MAX);
        let heard = mono_nanos().saturating_sub(age);
        feed.beacon.fetch_max(heard, Ordering::SeqCst);
        return;
    }
    match serde_json::from_slice::<Signal>(&message.payload) {
        Ok(signal) => feed.take_signal(signal),
        Err(e) => {
            tracing::warn!(%subject, error = %e, "passed over a message on a signal subject that is not a signal");
        }
    }
}

/// The core subject a feed's fast path listens on: every mandate's signals
/// of the tenant (one token), and its beacons, which the fast path passes
/// over (only the stream's, in order, keep the lease).
fn fast_subject(tenant: &TenantId) -> String {
    format!("mandate.sig.{tenant}.*")
}

/// Hands each signal published on the tenant's subjects to the feed as soon
/// as the server relays it. Nothing here counts as hearing the engine, and
/// nothing is lost if this falls behind or ends: the consumer brings every
/// signal, in order, and each is handed out once.
async fn fast_path(mut sub: async_nats::Subscriber, feed: Weak<Feed>) {
    while let Some(message) = sub.next().await {
        if message.subject.as_str().ends_with(".beacon") {
            continue;
        }
        let Some(feed) = feed.upgrade() else { return };
        if let Ok(signal) = serde_json::from_slice::<Signal>(&message.payload) {
            feed.take_signal(signal);
        }
    }
}

/// The event ids of the signals a feed handed out last.
#[derive(Default)]
struct Seen {
    ids: std::collections::HashSet<crate::domain::EventId>,
    order: VecDeque<crate::domain::EventId>,
}

/// How many signals a feed remembers having handed out.
const SEEN_CAPACITY: usize = 4096;

impl Feed {
    /// Hands a signal to its mandate's guards, unless it was already.
    fn take_signal(&self, signal: Signal) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.ids.insert(signal.event_id) {
                return;
            }
            seen.order.push_back(signal.event_id);
            if seen.order.len() > SEEN_CAPACITY {
                if let Some(old) = seen.order.pop_front() {
                    seen.ids.remove(&old);
                }
            }
        }
        self.signals.fetch_add(1, Ordering::Relaxed);
        let mandate = signal.mandate;
        self.deliver(mandate, &Heard::Signal(Arc::new(signal)));
    }
}

/// What a guard needs to re-read: the level its pending signals call for.
pub(crate) fn reread_level(missed: bool, at: u64) -> Consistency {
    match at {
        _ if missed => Consistency::Fresh,
        0 => Consistency::Fresh,
        position => Consistency::AtLeast(position),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_forms_give_the_sequences_and_time() {
        assert_eq!(
            ack_info("$JS.ACK.MANDATE_SIGNALS.c1.1.42.7.1700000000000000000.0"),
            Some((42, 7, 1_700_000_000_000_000_000))
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.hash.MANDATE_SIGNALS.c1.1.42.7.1700000000000000000.0.tok"),
            Some((42, 7, 1_700_000_000_000_000_000))
        );
        assert_eq!(ack_info("_INBOX.x"), None);
        assert_eq!(ack_info("$JS.ACK.S.c.1.x.7.1.0"), None);
    }
}
