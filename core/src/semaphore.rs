//! Leased semaphores: at most N holders of one name at a time, each holding
//! a permit that is a lease of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{Attempt, LeaseKind, Waiting};
use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::guard::{drop_lease, extend_lease, release_lease, release_lease_with};
use crate::lease::{Lease, LeaseCell};
use crate::metrics;
use crate::request::{Abandon, Attempts, Contention, DEFAULT_TTL, LONGEST, check_ttl, contend};
use crate::token::new_token;

pub use soloist_parse::MAX_PERMITS;

/// What marks a semaphore's name where lock keys also go: the process's
/// waiting lines, the release notices and their wake-ups. A NUL byte starts
/// it, which a lock key in practice never does.
const LINE_MARK: &str = "\u{0}semaphore:";

/// The name a semaphore's waiting line and wake-ups go by.
pub(crate) fn line(name: &str) -> String {
    format!("{LINE_MARK}{name}")
}

/// The semaphore a wake-up names, if it names one.
pub(crate) fn name_of_line(line: &str) -> Option<&str> {
    line.strip_prefix(LINE_MARK)
}

/// A request for one permit of a semaphore, configured with by-value
/// setters and carried out by [`acquire`](SemaphoreRequest::acquire).
/// Made by [`LockClient::semaphore`].
///
/// A semaphore of N permits lets at most N holders in at once, across
/// every client of the same Redis (or the same memory backend). Each permit
/// is a lease like a lock's: renewed by the watchdog while its guard lives,
/// given back on release or drop, and back for others within one ttl when
/// its holder dies. Every client must ask for the same number of permits;
/// an acquisition counts against the number it asks for.
///
/// Works on one Redis server, Sentinel, a Redis Cluster (all of one
/// semaphore's keys share the hash slot of its name) and the memory
/// backend. A Redlock refuses it with [`LockError::InvalidArgument`].
///
/// ```
/// use std::time::Duration;
/// use soloist::{LockClient, LockError};
/// # async fn demo() -> Result<(), LockError> {
/// let locks = LockClient::memory();
/// let first = locks.semaphore("warehouse", 2).acquire().await?;
/// let second = locks.semaphore("warehouse", 2).acquire().await?;
/// // Both permits are held: a third caller is turned away, or waits.
/// assert!(matches!(
///     locks.semaphore("warehouse", 2).acquire().await,
///     Err(LockError::Busy { .. })
/// ));
/// first.release().await?;
/// let third = locks
///     .semaphore("warehouse", 2)
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(1))
///     .acquire()
///     .await?;
/// assert!(third.fence() > second.fence());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use = "a semaphore request does nothing until it is acquired"]
pub struct SemaphoreRequest {
    client: LockClient,
    name: String,
    line: String,
    permits: u32,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    max_hold: Option<Duration>,
}

impl Attempts for SemaphoreRequest {
    type Guard = PermitGuard;

    fn attempt(
        &self,
        waiting: Option<Waiting>,
    ) -> impl Future<Output = Result<Attempt<PermitGuard>>> + Send {
        self.try_once(waiting)
    }
}

impl SemaphoreRequest {
    pub(crate) fn new(client: LockClient, name: String, permits: u32) -> Self {
        SemaphoreRequest {
            client,
            line: line(&name),
            name,
            permits,
            ttl: DEFAULT_TTL,
            wait: Duration::ZERO,
            watchdog: true,
            max_hold: None,
        }
    }

    /// The permit's lease length, as [`LockRequest::ttl`](crate::LockRequest::ttl):
    /// from [`MIN_TTL`](crate::MIN_TTL) to [`MAX_TTL`](crate::MAX_TTL),
    /// default [`DEFAULT_TTL`]. A holder that dies gives its permit back
    /// within this long.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait while every permit is held; default zero: fail at
    /// once with [`LockError::Busy`]. A waiter is woken by a release (Redis
    /// pub/sub, as for locks), and polls only as a fallback for a holder
    /// that died or a lost wake-up.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Whether the watchdog renews the permit's lease while its guard
    /// lives; default on. See [`LockRequest::watchdog`](crate::LockRequest::watchdog).
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// An upper bound on how long the watchdog renews the permit, as
    /// [`LockRequest::max_hold`](crate::LockRequest::max_hold).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    fn validate(&mut self) -> Result<()> {
        if self.name.is_empty() {
            return Err(LockError::invalid("name", "must not be empty"));
        }
        if !(1..=MAX_PERMITS).contains(&self.permits) {
            return Err(LockError::invalid(
                "permits",
                format!("must be between 1 and {MAX_PERMITS}, got {}", self.permits),
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

    /// Takes a permit, waiting up to the configured [`wait`](Self::wait).
    ///
    /// Fails with [`LockError::Busy`] if every permit is held and the
    /// request does not wait, [`LockError::Timeout`] if they stayed held
    /// for the whole wait, [`LockError::InvalidArgument`] for an empty
    /// name, a permit count of 0 or above [`MAX_PERMITS`], an out-of-range
    /// ttl or `max_hold`, or a Redlock client, and with a backend error if
    /// the backend fails meanwhile.
    pub async fn acquire(mut self) -> Result<PermitGuard> {
        self.validate()?;
        let span = tracing::debug_span!(
            "soloist.acquire_permit",
            name = %self.name,
            permits = self.permits,
            fence = tracing::field::Empty
        );
        let started = Instant::now();
        let contention = Contention {
            client: &self.client,
            key: &self.name,
            line: &self.line,
            wait: self.wait,
            wait_after_hand_on: false,
        };
        let waits = !self.wait.is_zero();
        if waits {
            metrics::permit_waiters(&self.name, 1.0);
        }
        let result = contend(&contention, started, &self)
            .instrument(span.clone())
            .await;
        if waits {
            metrics::permit_waiters(&self.name, -1.0);
        }
        let outcome = match &result {
            Ok(guard) => {
                span.record("fence", guard.fence());
                "acquired"
            }
            Err(LockError::Busy { .. }) => "busy",
            Err(LockError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        metrics::permit_acquisition(outcome, started.elapsed());
        result
    }

    async fn try_once(&self, waiting: Option<Waiting>) -> Result<Attempt<PermitGuard>> {
        let token = new_token();
        let sent_at = Instant::now();
        let mut pending = Abandon {
            client: &self.client,
            key: &self.name,
            token: &token,
            kind: LeaseKind::Permit,
            armed: true,
        };
        let attempt = self
            .client
            .inner
            .backend
            .try_acquire_permit(&self.name, &token, self.permits, self.ttl, waiting)
            .await?;
        pending.armed = false;
        drop(pending);
        Ok(match attempt {
            Attempt::Acquired(fence) => Attempt::Acquired(self.guard(token, fence, sent_at)),
            Attempt::Held { expires_in } => Attempt::Held { expires_in },
            Attempt::NoQuorum(tally) => Attempt::NoQuorum(tally),
        })
    }

    fn guard(&self, token: String, fence: u64, sent_at: Instant) -> PermitGuard {
        let renew_until = self
            .max_hold
            .and_then(|max_hold| sent_at.checked_add(max_hold));
        let cell = Arc::new(
            LeaseCell::new(
                self.name.clone(),
                token,
                fence,
                self.ttl,
                sent_at,
                renew_until,
                self.watchdog,
            )
            .permit(),
        );
        if self.watchdog {
            self.client.inner.watchdog.watch(cell.clone());
        }
        metrics::permit_held(&self.name, 1.0);
        PermitGuard {
            client: self.client.clone(),
            lease: Lease { cell },
            permits: self.permits,
            released: false,
        }
    }
}

/// Proof of holding one permit of a semaphore: the surface of a
/// [`LockGuard`](crate::LockGuard) (lease, lost signal, fence, release,
/// release on drop) for one of N places instead of the only one.
///
/// # Guarantees, and their limits
/// - At most N permits of a name are held at once, as long as the Redis
///   server keeps its data (see the crate docs for failover and eviction).
/// - A permit is a lease: renewed by the watchdog while this guard lives,
///   given back at once on [`release`](Self::release) or drop, and back for
///   others within one ttl when the holder dies. A holder that is paused
///   (GC, swap, SIGSTOP) past its ttl can outlive its permit without
///   knowing: [`lost`](Self::lost) fires on time, but cannot stop a process
///   that does not look.
/// - [`fence`](Self::fence) strictly increases over the acquisitions of
///   one semaphore, so it orders them; a resource that remembers the
///   highest fence it accepted refuses a paused holder's late write (with
///   N holders at once, use it on what a single holder writes, such as one
///   record per holder slot or per job).
/// - Giving back a permit that is not held any more (it expired, or was
///   given back) is [`LockError::Lost`] and changes nothing: there is no
///   counter that a double release could push past N.
///
/// ```
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let permit = locks.semaphore("charges:merchant-7", 3).acquire().await?;
/// assert_eq!(permit.name(), "charges:merchant-7");
/// assert_eq!(permit.permits(), 3);
/// assert!(permit.is_held());
/// tokio::select! {
///     () = permit.lost() => eprintln!("permit lost; stop"),
///     () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {} // the work
/// }
/// permit.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard gives the permit back at once"]
pub struct PermitGuard {
    client: LockClient,
    lease: Lease,
    permits: u32,
    /// Set once `release` took over; `Drop` then has nothing to do.
    released: bool,
}

impl PermitGuard {
    /// The semaphore's name as the caller gave it.
    pub fn name(&self) -> &str {
        self.lease.key()
    }

    /// How many permits the semaphore was asked with.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The fencing token: issued atomically with this permit, strictly
    /// greater than every fence issued for this semaphore before.
    pub fn fence(&self) -> u64 {
        self.lease.fence()
    }

    /// Whether the permit is still guaranteed; see [`Lease::is_held`].
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How much of the permit's lease is still guaranteed locally.
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// Resolves once the permit can no longer be guaranteed; see [`Lease::lost`].
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// A cloneable view of this permit's lease, for other tasks.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Sets the lease to `ttl` from now, if the permit is still ours, as
    /// [`LockGuard::extend`](crate::LockGuard::extend) does; fails with
    /// [`LockError::Lost`] if it is not.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        extend_lease(&self.client, &self.lease, ttl).await
    }

    /// Gives the permit back now and wakes a waiting client. Fails with
    /// [`LockError::Lost`], changing nothing, if the permit was no longer
    /// ours (its lease ran out), or with a backend error, in which case the
    /// permit comes back within its ttl.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        metrics::permit_held(self.name(), -1.0);
        release_lease(&self.client, &self.lease).await
    }

    /// Gives the permit back and sends the Redis commands `along` in the
    /// same round trip, with the guarantees and errors of
    /// [`LockGuard::release_with`](crate::LockGuard::release_with).
    ///
    /// ```no_run
    /// use soloist::{LockClient, redis};
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
    /// let permit = locks.semaphore("exports", 4).acquire().await?;
    /// let mut done = redis::cmd("INCR");
    /// done.arg("exports:done");
    /// permit.release_with(&[done]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn release_with(mut self, along: &[redis::Cmd]) -> Result<()> {
        self.released = true;
        metrics::permit_held(self.name(), -1.0);
        release_lease_with(&self.client, &self.lease, along).await
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if !self.released {
            metrics::permit_held(self.name(), -1.0);
            drop_lease(&self.client, &self.lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_arguments() {
        let locks = LockClient::memory();
        for (request, name) in [
            (locks.semaphore("", 1), "name"),
            (locks.semaphore("s", 0), "permits"),
            (locks.semaphore("s", MAX_PERMITS + 1), "permits"),
            (locks.semaphore("s", u32::MAX), "permits"),
            (locks.semaphore("s", 1).ttl(Duration::ZERO), "ttl"),
            (locks.semaphore("s", 1).ttl(Duration::MAX), "ttl"),
            (locks.semaphore("s", 1).max_hold(Duration::ZERO), "max_hold"),
        ] {
            match request.acquire().await {
                Err(LockError::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected InvalidArgument({name}), got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_lock_and_a_semaphore_of_one_name_are_apart() {
        let locks = LockClient::memory();
        let lock = locks.lock("x").acquire().await.unwrap();
        let permit = locks.semaphore("x", 1).acquire().await.unwrap();
        assert!(locks.semaphore("x", 1).acquire().await.is_err());
        permit.release().await.unwrap();
        lock.release().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_holders_permit_comes_back_within_its_ttl() {
        let locks = LockClient::memory();
        let ttl = Duration::from_millis(100);
        let held = locks
            .semaphore("s", 1)
            .ttl(ttl)
            .watchdog(false)
            .acquire()
            .await
            .unwrap();
        let started = Instant::now();
        let next = locks
            .semaphore("s", 1)
            .wait(Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        // Back at the ttl; the waiter wakes a millisecond after it.
        assert!(started.elapsed() <= ttl + Duration::from_millis(2));
        assert!(next.fence() > held.fence());
        // Given back after it ran out: an error, and nothing changes.
        assert!(matches!(held.release().await, Err(LockError::Lost { .. })));
        assert!(locks.semaphore("s", 1).acquire().await.is_err());
        next.release().await.unwrap();
    }

    #[test]
    fn lines_of_semaphores_are_told_from_lock_keys() {
        assert_eq!(name_of_line(&line("jobs")), Some("jobs"));
        assert_eq!(name_of_line("jobs"), None);
    }
}
