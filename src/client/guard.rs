//! The agent guard: what makes revocation real for an agent.
//!
//! - It subscribes to the signal subjects of every mandate on its chain
//!   *before* reading the state, so nothing falls between the two.
//! - `check(action, resource)` is answered locally with the domain's own
//!   `authorize` on the tree it holds; expiry is enforced by the local clock.
//!   The tree is held as a [`PreparedChain`], worked out once per state, and
//!   the guard's own reasons to deny are mirrored in one atomic word (and a
//!   termination its hub heard for a mandate of the chain in that
//!   mandate's shared cell), so a check costs a lock read, a few atomic
//!   loads, two clock reads and pattern matching;
//!   `allows` answers the same yes or no without building a decision.
//! - Its [`CancellationToken`] fires on termination (a signal, a re-read that
//!   finds the chain ended, or the chain's `not_after` passing).
//! - It fails closed: when its process has not heard the engine for longer
//!   than its lease (the engines' beacons, taken in order with the signals
//!   by the process's [`GuardHub`]), it denies until the hub has caught up.
//!   An idle guard costs the engine nothing: it reads its chain when it
//!   starts, and again only when a signal, a gap the stream cannot replay,
//!   or the end of its connection calls for it.
//! - Its state never goes back: each `chain` reply carries the tree's
//!   version, and a reply older than the state held is dropped, so a slow
//!   answer cannot undo a pause or a narrowing it was overtaken by.
//! - It reads time by the engine's clock: each reply carries the engine's
//!   time, and when the agent's clock lags by more than a tolerance the
//!   guard adds the lag (and warns), so it never outlives `not_after`.
//! - It holds only a chain the engine could have written, ending at its own
//!   mandate ([`Tree::from_chain`]): any other reply is refused, and counts
//!   as not hearing the engine.
//! - Once told its chain changed (a `narrowed` signal: a scope narrowed or a
//!   `not_after` moved, here or above), it denies until it holds a chain
//!   that includes the change: the chain it held may grant what was just
//!   withdrawn. A re-read refused for any reason (the engine unreachable,
//!   a reply it cannot take) leaves it denying while it tries again.
//! - Guards of one process share one follower of their tenant's signals per
//!   connection ([`GuardHub`]), which resumes after a cut-off where it
//!   stopped. A guard whose signals may be lost beyond what the stream can
//!   replay denies until it has re-read its chain: a lost signal never goes
//!   unnoticed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
#[cfg(feature = "engine")]
use futures::stream::{BoxStream, StreamExt};
#[cfg(feature = "engine")]
use tokio::sync::broadcast;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::authorize::PreparedChain;
use crate::domain::{Decision, DenyReason, ErrorCode, MandateId, Outcome, Status, TenantId, Tree};
use crate::protocol::{ChainReply, Consistency, MandateQuery, Signal, SignalKind};

use super::{Client, ClientError};

/// Guard settings.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// After this long without hearing the engine (its beacons, or a read
    /// of the guard's own), every check is denied until the process has
    /// caught up. Several times the engines' beacon interval (1 s by
    /// default).
    pub lease: Duration,
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
    /// The engine has not been heard within the lease, or the guard knows
    /// its chain changed and has not read the change yet: denying.
    Stale,
    /// The tree is quarantined (a corrupt record in its stream): denying
    /// until a re-read succeeds, e.g. after an administrator restores it.
    Quarantined,
}

use super::hub::{mono_nanos, reread_level, Attachment, Ended, Feed};
pub use super::hub::{FeedStats, GuardHub};

/// Numbers guards, so a feed tells them apart.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
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

pub(crate) struct Inner {
    /// Tells guards apart on a shared feed.
    pub(crate) number: u64,
    client: Client,
    mandate: MandateId,
    config: GuardConfig,
    held: RwLock<Held>,
    /// The process's follower of the tenant's signals, once attached.
    feed: OnceLock<Arc<Feed>>,
    /// The feed's cells of the chain's mandates, once attached: a
    /// termination heard for any of them is one store there, read here on
    /// every check.
    ended: OnceLock<Box<[Ended]>>,
    /// When a read of its own last heard the engine ([`mono_nanos`]).
    heard: AtomicU64,
    /// Which of `terminated`, `suspended`, `quarantined`, `missed` and
    /// `outdated` are set ([`Block`]), so that a check reads one word
    /// instead of five locks. Each bit changes only under its own lock, together with what
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
    /// Set by a `narrowed` signal (to its event's sequence) the chain held
    /// does not include yet; cleared by a re-read that includes that event.
    outdated: Mutex<Option<u64>>,
    /// How many times signals may have been missed.
    misses: AtomicU64,
    cancel: CancellationToken,
    changed: watch::Sender<u64>,
    /// On the feed's re-read queue: re-read requests coalesce.
    pub(crate) queued: AtomicBool,
    /// A re-read failed: the feed's timer tries again.
    retry: AtomicBool,
    /// When the feed's timer is set to look at the chain's expiry
    /// ([`mono_nanos`]; 0: not set), so it is set once per deadline.
    expiry_at: AtomicU64,
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
    Outdated = 16,
}

/// The agent's guard for one mandate. It has no task of its own; dropping
/// it takes it off its process's feed.
pub struct Guard {
    inner: Arc<Inner>,
    _attachment: Attachment,
}

impl Guard {
    /// Starts a guard for `mandate`: subscribes to its chain, then reads the state.
    pub async fn start(
        client: Client,
        hub: &GuardHub,
        mandate: MandateId,
        config: GuardConfig,
    ) -> Result<Self, ClientError> {
        if config.lease.is_zero() {
            return Err(ClientError::Invalid(
                "guard lease must be longer than zero, or the guard is stale from the start".into(),
            ));
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
            feed: OnceLock::new(),
            ended: OnceLock::new(),
            heard: AtomicU64::new(0),
            blocked: AtomicU8::new(0),
            terminated: Mutex::new(None),
            suspended: Mutex::new(None),
            quarantined: Mutex::new(None),
            missed: Mutex::new(None),
            outdated: Mutex::new(None),
            misses: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            changed: watch::channel(0).0,
            queued: AtomicBool::new(false),
            retry: AtomicBool::new(false),
            expiry_at: AtomicU64::new(0),
            reread_at: AtomicU64::new(0),
        });
        // On the process's feed before the state read: a signal stored
        // after the read was asked for reaches the guard.
        let links: Vec<MandateId> = chain.mandates.iter().map(|m| m.id()).collect();
        let (attachment, ended) = hub.attach(&client, &inner, &inner.cancel, &links).await?;
        let _ = inner.feed.set(attachment.feed().clone());
        let _ = inner.ended.set(ended.into_boxed_slice());
        inner.refresh(Consistency::Fresh).await?;
        Ok(Self {
            inner,
            _attachment: attachment,
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
        if self.inner.stale() || self.inner.missed() || self.inner.outdated().is_some() {
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
            // Staleness comes and goes with time, not with a change: look
            // again now and then. A termination heard by the feed fires the
            // cancellation (it tells no watch).
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(Status::Revoked) },
                _ = self.inner.cancel.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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
    /// The version of the tree the held chain was read at.
    fn held_version(&self) -> u64 {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .chain
            .tree()
            .version()
    }

    /// Ended here (a re-read, the chain's expiry) or, as the feed heard, at
    /// a mandate of the chain.
    fn terminated_status(&self) -> Option<Status> {
        let own = *self.terminated.lock().unwrap_or_else(|p| p.into_inner());
        own.or_else(|| self.chain_ended())
    }

    /// The status of the first mandate of the chain whose termination the
    /// feed has heard.
    fn chain_ended(&self) -> Option<Status> {
        self.ended
            .get()?
            .iter()
            .find_map(|cell| cell.get().copied())
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
        self.tell_changed();
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
        self.tell_changed();
    }

    /// The sequence of the newest change signalled that the chain held
    /// does not include yet.
    fn outdated(&self) -> Option<u64> {
        *self.outdated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chain changed with the event at `seq`: unless the chain held
    /// already includes it, deny until a re-read that does.
    fn note_outdated(&self, seq: u64) {
        {
            // Under the lock `install` clears it with, after reading the
            // version held: a reply taken meanwhile either is seen here or
            // clears what is set here.
            let mut outdated = self.outdated.lock().unwrap_or_else(|p| p.into_inner());
            let held = self.held_version();
            if seq <= held {
                return;
            }
            *outdated = Some(outdated.map_or(seq, |at| at.max(seq)));
            self.mark(Block::Outdated, true);
        }
        self.tell_changed();
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

    /// True when neither a read of its own nor its process's feed (the
    /// engines' beacons) has heard the engine within the lease. In process
    /// there is no lease: the engine is here.
    fn stale(&self) -> bool {
        let mut heard = self.heard.load(Ordering::SeqCst);
        if let Some(feed) = self.feed.get() {
            if feed.is_local() {
                return false;
            }
            heard = heard.max(feed.beacon_heard());
        }
        let lease = u64::try_from(self.config.lease.as_nanos()).unwrap_or(u64::MAX);
        mono_nanos().saturating_sub(heard) > lease
    }

    /// The engine was heard now.
    fn note_heard(&self) {
        self.heard.fetch_max(mono_nanos(), Ordering::SeqCst);
    }

    /// Tells whoever waits on the guard's state that it changed; nothing
    /// when no one waits (a cascade over many guards skips the work).
    fn tell_changed(&self) {
        if self.changed.receiver_count() > 0 {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
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
    /// allow: no termination (the guard's own, or one the feed heard for a
    /// mandate of the chain), suspension, quarantine, missed signal or
    /// change not yet read is noted, and the engine was heard within the
    /// lease.
    fn clear(&self) -> bool {
        self.blocked.load(Ordering::SeqCst) == 0 && self.chain_ended().is_none() && !self.stale()
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
        } else if self.outdated().is_some() {
            Some(DenyReason::Unverified {
                reason: "the guard's chain changed (a scope narrowed or a not_after moved) and it has not read the change yet: it denies until it has".into(),
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

    /// Applies what the held tree says: fires cancellation on termination,
    /// and otherwise sets the feed's timer for the chain's `not_after`.
    fn settle(self: &Arc<Self>) {
        let now = self.now();
        let (status, deadline) = {
            let held = self.held.read().unwrap_or_else(|p| p.into_inner());
            let tree = held.chain.tree();
            let status = tree
                .effective(self.mandate, now)
                .map(|e| e.status)
                .unwrap_or(Status::Revoked);
            let deadline = tree.chain(self.mandate).iter().map(|m| m.not_after()).min();
            (status, deadline)
        };
        if status.is_terminal() {
            let mut t = self.terminated.lock().unwrap_or_else(|p| p.into_inner());
            t.get_or_insert(status);
            self.mark(Block::Terminated, true);
            self.cancel.cancel();
        } else if let (Some(deadline), Some(feed)) = (deadline, self.feed.get()) {
            // Not ended yet by the guard's clock: wake when it says the
            // chain's earliest `not_after` has passed (at least a moment
            // from now, so a clock that disagrees never spins).
            let wait = (deadline - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(5));
            let at =
                mono_nanos().saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
            // Set once per deadline: an earlier one (a narrowing) moves it,
            // a later one (a renew) waits for the set one to fire first.
            let set = self.expiry_at.load(Ordering::SeqCst);
            if set == 0 || at < set {
                self.expiry_at.store(at, Ordering::SeqCst);
                feed.schedule(self, Instant::now() + wait);
            }
        }
        self.tell_changed();
    }

    /// The feed's timer for this guard is due: the chain's `not_after`, or
    /// a re-read to try again.
    pub(crate) fn on_timer(self: &Arc<Self>) {
        if self.terminated_status().is_some() {
            return;
        }
        if self.retry.swap(false, Ordering::SeqCst) {
            if let Some(feed) = self.feed.get() {
                feed.queue_reread(self);
            }
        }
        let set = self.expiry_at.load(Ordering::SeqCst);
        if set != 0 && mono_nanos() >= set {
            self.expiry_at.store(0, Ordering::SeqCst);
            self.settle();
        }
    }

    /// Re-reads the chain for the signals that asked for it: at least as
    /// new as the newest position they named, or fresh after a loss. A
    /// failed re-read is tried again a second later, on the feed's timer.
    pub(crate) async fn reread(self: &Arc<Self>) {
        if self.terminated_status().is_some() {
            return;
        }
        let level = reread_level(self.missed(), self.reread_at.load(Ordering::SeqCst));
        if let Err(e) = self.refresh(level).await {
            tracing::warn!(mandate = %self.mandate, error = %e, "guard could not re-read its chain; it tries again");
            if let Some(feed) = self.feed.get() {
                self.retry.store(true, Ordering::SeqCst);
                feed.schedule(self, Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Re-reads the chain at `level`: `at_least` the position a signal
    /// named, or `fresh` when nothing names one (a start, or a re-read after
    /// signals were lost, must see everything acknowledged anywhere).
    async fn refresh(self: &Arc<Self>, level: Consistency) -> Result<(), ClientError> {
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
    fn install(
        self: &Arc<Self>,
        reply: ChainReply,
        sent: DateTime<Utc>,
    ) -> Result<(), ClientError> {
        let version = reply.version;
        let reply_position = reply.position;
        let engine_time = reply.engine_time;
        {
            let held_version = self.held_version();
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
        {
            // So does a change of the chain signalled for such an event.
            let mut outdated = self.outdated.lock().unwrap_or_else(|p| p.into_inner());
            if outdated.is_some_and(|seq| seq <= version) {
                *outdated = None;
                self.mark(Block::Outdated, false);
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
    /// Takes what the feed heard for this guard, on the feed's own task:
    /// the state changes at once, and a re-read, when one is called for,
    /// goes on the feed's queue.
    pub(crate) fn hear(self: &Arc<Self>, heard: &Heard) {
        let signal = match heard {
            Heard::Signal(signal) => signal,
            Heard::Missed => {
                // Fail closed: deny now, and re-read to learn what was missed.
                self.note_missed();
                self.ask_reread();
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
                self.tell_changed();
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
                self.tell_changed();
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
            // The chain held may grant what the change withdrew: deny
            // until the re-read below (or a later one) brings the change.
            SignalKind::Narrowed => self.note_outdated(signal.seq),
            SignalKind::Resumed | SignalKind::Restored => {}
        }
        // Otherwise the signal is a hint; the state is the truth, re-read
        // at least as new as the commit it came from.
        if let Some(position) = signal.head_position {
            self.reread_at.fetch_max(position, Ordering::SeqCst);
        }
        self.ask_reread();
    }

    fn ask_reread(self: &Arc<Self>) {
        if let Some(feed) = self.feed.get() {
            feed.queue_reread(self);
        }
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
