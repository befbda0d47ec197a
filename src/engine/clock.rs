//! The engine's clock: where every "now" of the engine comes from (event
//! times, expiry, `check` without `at`, health).
//!
//! The system clock by default. A manual clock stands still until it is
//! moved, and moving it wakes the expiry scheduler at once, so a test of
//! expiry makes time pass without sleeping, over the embedded log or a real
//! nats-server alike.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// Where the engine reads the time. Cheap to clone; clones share the time.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: the system clock; `Some`: a manual clock at that time.
    manual: Option<Mutex<DateTime<Utc>>>,
    /// Woken whenever a manual clock moves.
    moved: Notify,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::with(None)
    }

    /// A clock that reads `start` until it is moved with
    /// [`Clock::advance`] or [`Clock::set`].
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self::with(Some(Mutex::new(start)))
    }

    fn with(manual: Option<Mutex<DateTime<Utc>>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                manual,
                moved: Notify::new(),
            }),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.inner.manual {
            Some(time) => *lock(time),
            None => Utc::now(),
        }
    }

    /// Whether this is a manual clock (only those move by hand).
    pub fn is_manual(&self) -> bool {
        self.inner.manual.is_some()
    }

    /// Moves a manual clock forward by `by` and wakes whoever waits on it;
    /// returns the new time. The system clock is not moved: it returns now.
    pub fn advance(&self, by: chrono::Duration) -> DateTime<Utc> {
        let Some(time) = &self.inner.manual else {
            return Utc::now();
        };
        let now = {
            let mut t = lock(time);
            *t += by;
            *t
        };
        self.inner.moved.notify_waiters();
        now
    }

    /// Sets a manual clock to `to` (forward or back) and wakes whoever waits
    /// on it. The system clock is not moved.
    pub fn set(&self, to: DateTime<Utc>) {
        if let Some(time) = &self.inner.manual {
            *lock(time) = to;
            self.inner.moved.notify_waiters();
        }
    }

    /// Resolves when a manual clock is moved after this call (never for
    /// the system clock, which is waited on with timers).
    pub(crate) fn moved(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.moved.notified()
    }
}

/// The time behind a manual clock. A panic while it was held cannot leave
/// it half-written (it is one `Copy` value), so a poisoned lock is used as is.
fn lock(time: &Mutex<DateTime<Utc>>) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
    time.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.manual {
            Some(time) => write!(f, "Clock::manual({})", *lock(time)),
            None => f.write_str("Clock::system()"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_by_hand_and_wakes_its_waiters() {
        let start = Utc::now() - chrono::Duration::days(1);
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        let shared = clock.clone();
        let moved = clock.moved();
        let later = shared.advance(chrono::Duration::seconds(5));
        assert_eq!(later, start + chrono::Duration::seconds(5));
        assert_eq!(clock.now(), later);
        tokio::time::timeout(std::time::Duration::from_secs(5), moved)
            .await
            .expect("moving the clock wakes a waiter registered before");
        clock.set(start);
        assert_eq!(shared.now(), start);
    }

    #[test]
    fn the_system_clock_is_not_moved_by_hand() {
        let clock = Clock::system();
        let before = Utc::now();
        clock.set(before - chrono::Duration::days(1));
        assert!(clock.now() >= before);
        assert!(!clock.is_manual());
    }
}
