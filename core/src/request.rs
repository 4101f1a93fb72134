//! Building and carrying out one lock request.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{Attempt, LeaseKind, Waiting};
use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::guard::{LockGuard, UnfencedGuard};
use crate::lease::{Lease, LeaseCell, whole_millis};
use crate::metrics;
use crate::token::new_token;

/// The lease length when none is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
pub use soloist_parse::{MAX_TTL, MIN_TTL};
/// The longest `max_hold` and record ttl accepted: a century, as good as
/// forever, and far from where adding it to a clock reading could overflow.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Checks a lease ttl, and returns it in whole milliseconds, as it is sent.
pub(crate) fn check_ttl(ttl: Duration) -> Result<Duration> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(LockError::invalid(
            "ttl",
            format!("must be between {MIN_TTL:?} and {MAX_TTL:?}, got {ttl:?}"),
        ));
    }
    Ok(whole_millis(ttl))
}

/// How often a waiter with a confirmed release-notice subscription checks
/// anyway, for a notice lost in transit.
const LIVE_POLL: Duration = Duration::from_secs(1);
/// How often a waiter polls when notices are unavailable.
const DEAD_POLL: Duration = Duration::from_millis(150);

/// A request for one lock, configured with by-value setters and carried out
/// by [`acquire`](LockRequest::acquire).
///
/// ```
/// use std::time::Duration;
/// use soloist::{LockClient, LockError};
/// # async fn demo() -> Result<(), LockError> {
/// let locks = LockClient::memory();
/// let guard = locks
///     .lock("invoice:42")
///     .ttl(Duration::from_secs(10))       // lease length, renewed by the watchdog
///     .wait(Duration::from_millis(500))   // wait this long if someone else holds it
///     .max_hold(Duration::from_secs(60))  // stop renewing after a minute, whatever happens
///     .acquire()
///     .await?;
/// guard.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock request does nothing until it is acquired"]
pub struct LockRequest {
    client: LockClient,
    key: String,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    max_hold: Option<Duration>,
    fence_counter: Option<String>,
    /// Whether the acquisition issues a fence; see [`acquire_unfenced`](Self::acquire_unfenced).
    fenced: bool,
}

impl LockRequest {
    pub(crate) fn new(client: LockClient, key: String) -> Self {
        LockRequest {
            client,
            key,
            ttl: DEFAULT_TTL,
            wait: Duration::ZERO,
            watchdog: true,
            max_hold: None,
            fence_counter: None,
            fenced: true,
        }
    }

    /// The lease length, from [`MIN_TTL`] to [`MAX_TTL`]; default
    /// [`DEFAULT_TTL`]. If the holder dies, others wait at most this long.
    /// Redis counts it in whole milliseconds, and so does the lease: a
    /// fraction of a millisecond is cut off.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait while another owner holds the key; default zero:
    /// fail at once with [`LockError::Busy`]. A waiter is woken by the
    /// holder's release notice, not by polling. Any duration is accepted:
    /// one too long for the clock to count ([`Duration::MAX`], say) waits
    /// without a limit.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Whether the watchdog renews the lease every third of its ttl while the
    /// guard lives; default on. Off, the lease simply expires after its ttl
    /// unless [`LockGuard::extend`] is called.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// An upper bound on how long the watchdog renews this lease, counted
    /// from acquisition, from 1 ns to a century; default none. Past it the
    /// lease runs out within one ttl and [`LockGuard::lost`] fires. This is
    /// also the only defence against a guard that is leaked
    /// (`std::mem::forget`) rather than dropped: a leaked guard is
    /// indistinguishable from one held on purpose.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// Issues this lock's fences from the counter named `name` instead of
    /// the key's own (the counter of the lock whose key is `name`). Fences drawn from one counter increase across every
    /// key that shares it, not only per key; and one counter, not one per
    /// key, stays behind (a week, as every counter does). Meant for a family
    /// of short-lived keys, such as one lock per scheduled run of a job.
    ///
    /// On a single node (and the memory backend) every fence from a shared
    /// counter is distinct and later acquisitions get higher ones. On a
    /// Redlock, acquisitions of *different* keys that overlap in time may
    /// draw the same fence; each key's fences still strictly increase.
    ///
    /// ```
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let first = locks.lock("report:monday").fence_counter("report").acquire().await?;
    /// let second = locks.lock("report:tuesday").fence_counter("report").acquire().await?;
    /// assert!(second.fence() > first.fence());
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn fence_counter(mut self, name: impl Into<String>) -> Self {
        self.fence_counter = Some(name.into());
        self
    }

    /// Checks every setting, and puts the ttl in whole milliseconds.
    fn validate(&mut self) -> Result<()> {
        if self.key.is_empty() {
            return Err(LockError::invalid("key", "must not be empty"));
        }
        if self.fence_counter.as_ref().is_some_and(String::is_empty) {
            return Err(LockError::invalid("fence_counter", "must not be empty"));
        }
        if !self.fenced && self.fence_counter.is_some() {
            return Err(LockError::invalid(
                "fence_counter",
                "an unfenced acquisition issues no fence; drop `fence_counter` or use `acquire`",
            ));
        }
        self.ttl = check_ttl(self.ttl)?;
        match self.max_hold {
            Some(max_hold) if max_hold.is_zero() => {
                Err(LockError::invalid("max_hold", "must not be zero"))
            }
            Some(max_hold) if max_hold > LONGEST => Err(LockError::invalid(
                "max_hold",
                format!("must be at most a century ({LONGEST:?}), got {max_hold:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// Takes the lock, waiting up to the configured [`wait`](Self::wait).
    ///
    /// Fails with [`LockError::Busy`] if the key is held and the request does
    /// not wait, [`LockError::Timeout`] if it stayed held for the whole wait,
    /// [`LockError::InvalidArgument`] for an empty key or an out-of-range
    /// ttl or `max_hold`, and with a backend error if the backend fails
    /// meanwhile.
    pub async fn acquire(mut self) -> Result<LockGuard> {
        self.validate()?;
        let span =
            tracing::debug_span!("soloist.acquire", key = %self.key, fence = tracing::field::Empty);
        let started = Instant::now();
        let result = self.acquire_inner(started).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(guard) => {
                span.record("fence", guard.fence());
                "acquired"
            }
            Err(LockError::Busy { .. }) => "busy",
            Err(LockError::Timeout { .. }) => "timeout",
            Err(LockError::NoQuorum { .. }) => "no_quorum",
            Err(_) => "error",
        };
        metrics::acquisition(outcome, started.elapsed());
        result
    }

    /// Takes the lock as [`acquire`](Self::acquire) does, but issues no
    /// fencing token: on one Redis server, Sentinel or a Cluster an
    /// acquisition that does not wait is a bare `SET NX PX`, the same one
    /// command other Redis locks send, where [`acquire`](Self::acquire) also
    /// increments the key's fence counter in the same transaction. Waiting,
    /// renewal, release and the lost signal work as for any lock.
    ///
    /// What is given up is the fence, and with it the one defence against a
    /// holder that pauses past its lease (a stop-the-world pause, a
    /// partition) and then writes as if it still held the lock: the
    /// [`UnfencedGuard`] has no [`fence`](LockGuard::fence) to pass to a
    /// resource, and no [`commit`](LockGuard::commit), whose write refuses
    /// a holder whose lease ended. Mutual exclusion then holds only as long
    /// as every holder stops before its [`lost`](UnfencedGuard::lost) signal
    /// fires. Fences of the key's fenced acquisitions still grow.
    ///
    /// Fails as [`acquire`](Self::acquire) does, and with
    /// [`LockError::InvalidArgument`] naming `fence_counter` when one is set,
    /// or naming `unfenced` on a Redlock, where the fence comes with the
    /// phases that take the key and leaving it out saves nothing.
    ///
    /// ```
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let guard = locks.lock("cache:refresh").acquire_unfenced().await?;
    /// assert!(guard.is_held());
    /// guard.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn acquire_unfenced(mut self) -> Result<UnfencedGuard> {
        self.fenced = false;
        self.validate()?;
        let span = tracing::debug_span!("soloist.acquire", key = %self.key, fence = "none");
        let started = Instant::now();
        let result = self.acquire_inner(started).instrument(span).await;
        let outcome = match &result {
            Ok(_) => "acquired",
            Err(LockError::Busy { .. }) => "busy",
            Err(LockError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        metrics::acquisition(outcome, started.elapsed());
        result.map(UnfencedGuard::new)
    }

    async fn acquire_inner(&self, started: Instant) -> Result<LockGuard> {
        let contention = Contention {
            client: &self.client,
            key: &self.key,
            line: &self.key,
            wait: self.wait,
            wait_after_hand_on: true,
        };
        contend(&contention, started, self).await
    }

    /// One try at the backend, with a fresh owner token: a token is never
    /// reused, so nothing left over from a failed attempt (a late grant, a
    /// late release) can touch a later one.
    async fn attempt(&self, waiting: Option<Waiting>) -> Result<Attempt<LockGuard>> {
        let token = new_token();
        let sent_at = Instant::now();
        // Until the outcome is known, a request that may have taken the key
        // is given back: when it fails (the reply may have been lost), and
        // when the caller drops the acquisition mid-flight.
        let mut pending = Abandon {
            client: &self.client,
            key: &self.key,
            token: &token,
            kind: LeaseKind::Lock,
            armed: true,
        };
        let backend = &self.client.inner.backend;
        let attempt = if self.fenced {
            backend
                .try_acquire(
                    &self.key,
                    self.fence_counter.as_deref().unwrap_or(&self.key),
                    &token,
                    self.ttl,
                    waiting,
                )
                .await?
        } else {
            backend
                .try_acquire_unfenced(&self.key, &token, self.ttl, waiting)
                .await?
        };
        pending.armed = false;
        drop(pending);
        Ok(match attempt {
            Attempt::Acquired(fence) => Attempt::Acquired(self.guard(token, fence, sent_at)),
            Attempt::Held { expires_in } => Attempt::Held { expires_in },
            Attempt::NoQuorum(tally) => Attempt::NoQuorum(tally),
        })
    }

    fn guard(&self, token: String, fence: u64, sent_at: Instant) -> LockGuard {
        let renew_until = self
            .max_hold
            .and_then(|max_hold| sent_at.checked_add(max_hold));
        let cell = Arc::new(LeaseCell::new(
            self.key.clone(),
            token,
            fence,
            self.ttl,
            sent_at,
            renew_until,
            self.watchdog,
        ));
        if self.watchdog {
            self.client.inner.watchdog.watch(cell.clone());
        }
        LockGuard::new(self.client.clone(), Lease { cell })
    }
}

/// How one acquisition waits; shared by locks and semaphores.
pub(crate) struct Contention<'a> {
    pub(crate) client: &'a LockClient,
    /// The name errors report: the key, or the semaphore's name.
    pub(crate) key: &'a str,
    /// The name this process's line and the wake-ups go by.
    pub(crate) line: &'a str,
    pub(crate) wait: Duration,
    /// Whether a head handed a listener by the one before waits for the
    /// next wake-up before trying (a lock: the one before took the key), or
    /// tries at once (a semaphore: more permits may still be free).
    pub(crate) wait_after_hand_on: bool,
}

/// One try at taking something: a lock, a permit.
pub(crate) trait Attempts: Sync {
    /// What a successful attempt yields.
    type Guard: Send;

    fn attempt(
        &self,
        waiting: Option<Waiting>,
    ) -> impl Future<Output = Result<Attempt<Self::Guard>>> + Send;
}

impl Attempts for LockRequest {
    type Guard = LockGuard;

    fn attempt(
        &self,
        waiting: Option<Waiting>,
    ) -> impl Future<Output = Result<Attempt<LockGuard>>> + Send {
        LockRequest::attempt(self, waiting)
    }
}

/// Takes what `attempts` takes, waiting up to `contention.wait` for it: the
/// waiting loop of every acquisition, woken by release notices.
pub(crate) async fn contend<A: Attempts>(
    contention: &Contention<'_>,
    started: Instant,
    attempts: &A,
) -> Result<A::Guard> {
    let attempt = |waiting| attempts.attempt(waiting);
    let key = contention.key;
    if contention.wait.is_zero() {
        return match attempt(None).await? {
            Attempt::Acquired(guard) => Ok(guard),
            Attempt::Held { .. } => Err(LockError::Busy {
                key: key.to_owned(),
            }),
            Attempt::NoQuorum(tally) => Err(LockError::no_quorum(key, tally)),
        };
    }
    let deadline = started.checked_add(contention.wait);
    let timed_out = || LockError::Timeout {
        key: key.to_owned(),
        waited: started.elapsed(),
    };
    let inner = &contention.client.inner;
    // Only the head of this process's line talks to the backend: however
    // many tasks wait for a key, the process puts one contender on the wire.
    let mut head = within(deadline, inner.queues.head_of_line(contention.line))
        .await
        .ok_or_else(timed_out)?;
    // A listener handed on by the previous head comes with this process
    // already queued for the holder's release, and subscribed: wait for
    // it, no attempt.
    let handed_on = head.take_handed_on();
    let mut wait_first = handed_on.is_some() && contention.wait_after_hand_on;
    let mut subscribed = handed_on.is_some();
    // Otherwise listening starts before the first attempt, which queues
    // this process for the holder's release: the wake-up of a release
    // that comes before the attempt's reply is dealt with finds the
    // listener here, and is not passed over.
    let mut listener = match handed_on {
        Some(listener) => listener,
        None => inner.backend.listen(contention.line),
    };
    loop {
        let mut expires_in = None;
        // `no_quorum`: neither granted nor held. A wait that ends on it
        // reports the quorum failure, not a timeout.
        let mut no_quorum = None;
        if !wait_first {
            // Marked before each attempt, so a release that lands between
            // the attempt and the wait below still wakes us.
            listener.mark_seen();
            // Queued for the next release on behalf of the tasks behind,
            // if there is a subscribed listener to hand them.
            let waiting = Waiting {
                more: subscribed && head.others_waiting(),
            };
            let sent_at = Instant::now();
            match attempt(Some(waiting)).await? {
                Attempt::Acquired(guard) => {
                    if waiting.more {
                        head.hand_on(listener);
                    } else {
                        listener.finish();
                    }
                    return Ok(guard);
                }
                Attempt::Held { expires_in: left } => expires_in = left,
                Attempt::NoQuorum(tally) => no_quorum = Some(tally),
            }
            if !subscribed {
                // Held, and this process is now queued for its release:
                // make sure the wake-up can reach it. Try again at once
                // only if a release since the attempt could have gone
                // unheard.
                within(deadline, inner.backend.subscribe(&mut listener))
                    .await
                    .ok_or_else(timed_out)?;
                subscribed = true;
                if !listener.hears_since(sent_at) {
                    continue;
                }
            }
        }
        wait_first = false;
        // Fallback for a missed notice and for a holder that dies: no
        // notice comes when a key expires, so wake when it does. A
        // quorum failure is retried after a short random delay.
        let live = listener.is_live() && no_quorum.is_none();
        let cap = jitter(if live { LIVE_POLL } else { DEAD_POLL });
        let nap = expires_in.map_or(cap, |left| (left + Duration::from_millis(1)).min(cap));
        let wake = Instant::now() + nap;
        let wake = deadline.map_or(wake, |deadline| wake.min(deadline));
        tokio::select! {
            () = listener.notified() => {}
            () = tokio::time::sleep_until(wake) => {}
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(match no_quorum {
                Some(tally) => LockError::no_quorum(key, tally),
                None => timed_out(),
            });
        }
    }
}

/// Gives back, on drop while armed, a key an unfinished attempt may have taken.
pub(crate) struct Abandon<'a> {
    pub(crate) client: &'a LockClient,
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) kind: LeaseKind,
    pub(crate) armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.client.abandon(self.key, self.token, self.kind);
        }
    }
}

/// Runs `work` until `deadline` (none: no limit); `None` if the deadline came first.
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
        None => Some(work.await),
    }
}

/// `base` scaled by a random factor in [0.75, 1.25), so that waiters that
/// missed the same notice do not all retry in the same instant.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.75 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_arguments() {
        let locks = LockClient::memory();
        for (request, name) in [
            (locks.lock(""), "key"),
            (locks.lock("k").ttl(Duration::ZERO), "ttl"),
            (locks.lock("k").ttl(Duration::from_millis(9)), "ttl"),
            (
                locks.lock("k").ttl(MAX_TTL + Duration::from_millis(1)),
                "ttl",
            ),
            (locks.lock("k").ttl(Duration::MAX), "ttl"),
            (locks.lock("k").max_hold(Duration::ZERO), "max_hold"),
            (locks.lock("k").max_hold(Duration::MAX), "max_hold"),
        ] {
            match request.acquire().await {
                Err(LockError::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected InvalidArgument({name}), got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_absurd_wait_means_wait_forever_not_overflow() {
        let locks = LockClient::memory();
        let held = locks
            .lock("k")
            .ttl(Duration::from_millis(50))
            .watchdog(false)
            .acquire()
            .await
            .unwrap();
        let waiter = locks.lock("k").wait(Duration::MAX).acquire().await.unwrap();
        assert!(waiter.fence() > held.fence());
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..1000 {
            let nap = jitter(Duration::from_millis(1000));
            assert!(nap >= Duration::from_millis(750) && nap < Duration::from_millis(1250));
        }
    }
}
