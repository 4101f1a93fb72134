//! The state one held lease shares between its guard, the watchdog and
//! anyone watching for its loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How much of a lease is given up to clock drift between this process and
/// the backend: 1 % of the ttl plus 2 ms, as the Redlock analysis prescribes.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Held,
    Lost,
    Released,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Until when the lease is guaranteed: the send time of the last
    /// confirmed acquire or renewal, plus its ttl, minus drift.
    deadline: Instant,
}

#[derive(Debug)]
pub(crate) struct LeaseCell {
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) fence: u64,
    /// Identifies the lease in the watchdog's schedule.
    pub(crate) id: u64,
    ttl_ms: AtomicU64,
    /// The watchdog renews only until then (`max_hold`); `None`: while held.
    pub(crate) renew_until: Option<Instant>,
    /// Whether the watchdog renews this lease at all.
    pub(crate) watched: bool,
    state: Mutex<State>,
    ended: CancellationToken,
}

impl LeaseCell {
    pub(crate) fn new(
        key: String,
        token: String,
        fence: u64,
        ttl: Duration,
        sent_at: Instant,
        renew_until: Option<Instant>,
        watched: bool,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        LeaseCell {
            key,
            token,
            fence,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            renew_until,
            watched,
            state: Mutex::new(State {
                phase: Phase::Held,
                deadline: sent_at + ttl.saturating_sub(drift(ttl)),
            }),
            ended: CancellationToken::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease length renewals ask for.
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.state().deadline
    }

    /// Still ours as far as this process can tell: not released, not lost,
    /// and inside its guaranteed validity.
    pub(crate) fn is_held(&self) -> bool {
        let now = Instant::now();
        let state = self.state();
        state.phase == Phase::Held && now < state.deadline
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state().phase != Phase::Held
    }

    pub(crate) fn remaining(&self) -> Duration {
        let state = self.state();
        if state.phase == Phase::Held {
            state.deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        }
    }

    /// The backend confirmed a renewal to `ttl` that was sent at `sent_at`.
    pub(crate) fn confirm(&self, sent_at: Instant, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
        let mut state = self.state();
        if state.phase == Phase::Held {
            state.deadline = sent_at + ttl.saturating_sub(drift(ttl));
        }
    }

    /// Marks the lease lost; `true` if it was held until now.
    pub(crate) fn mark_lost(&self) -> bool {
        let mut state = self.state();
        if state.phase != Phase::Held {
            return false;
        }
        state.phase = Phase::Lost;
        drop(state);
        metrics::lost();
        tracing::warn!(key = %self.key, fence = self.fence, "lease lost");
        self.ended.cancel();
        true
    }

    /// Marks the lease released by its owner; renewals stop from here on.
    pub(crate) fn mark_released(&self) {
        let mut state = self.state();
        if state.phase == Phase::Held {
            state.phase = Phase::Released;
        }
        drop(state);
        self.ended.cancel();
    }

    /// Resolves once the lease ends: released, found lost, or past its
    /// deadline with no renewal confirmed in time (then it is marked lost).
    pub(crate) async fn ended(&self) {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                () = self.ended.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.deadline() {
                        self.mark_lost();
                        return;
                    }
                }
            }
        }
    }
}

/// A cloneable view of a held lease: its key, fence, and whether it is still
/// guaranteed. Hand it to the tasks that do the protected work so they can
/// stop when the lease is lost.
///
/// ```
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let guard = locks.lock("sweep").ttl(Duration::from_secs(10)).acquire().await?;
/// let lease = guard.lease();
/// let worker = tokio::spawn(async move {
///     tokio::select! {
///         () = lease.lost() => "stopped: lease lost",
///         () = tokio::time::sleep(Duration::from_millis(10)) => "finished",
///     }
/// });
/// assert_eq!(worker.await.unwrap(), "finished");
/// guard.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Lease {
    pub(crate) cell: Arc<LeaseCell>,
}

impl Lease {
    /// The key as the caller gave it.
    pub fn key(&self) -> &str {
        &self.cell.key
    }

    /// The fencing token issued with this acquisition: strictly greater than
    /// every fence issued for the same key before it.
    pub fn fence(&self) -> u64 {
        self.cell.fence
    }

    /// Whether the lease is still guaranteed: not released, not lost, and
    /// inside the validity of its last confirmed renewal.
    pub fn is_held(&self) -> bool {
        self.cell.is_held()
    }

    /// How much of the lease is still guaranteed locally; zero once it has
    /// ended. Work that would outlast this may run unprotected.
    pub fn remaining(&self) -> Duration {
        self.cell.remaining()
    }

    /// Resolves once the lease can no longer be guaranteed: at once when a
    /// renewal finds the key gone or owned by someone else, at the local
    /// deadline when renewals keep failing, and when the guard is released or
    /// dropped. The deadline is the send time of the last confirmed renewal
    /// plus its ttl minus a drift margin, so this fires before the backend
    /// can hand the key to another owner.
    pub async fn lost(&self) {
        self.cell.ended().await;
    }
}
