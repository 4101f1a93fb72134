//! Read-write locks: many readers at once, or one writer alone, with
//! writers not starved by a stream of readers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Attempt, LeaseKind, Waiting};
use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::guard::{drop_lease, extend_lease, release_lease};
use crate::lease::{Lease, LeaseCell};
use crate::request::{Abandon, Attempts, Contention, DEFAULT_TTL, LONGEST, check_ttl, contend};
use crate::token::new_token;

/// What marks a read-write lock's name among the lines and wake-ups that
/// lock keys also use (see the semaphore's).
const LINE_MARK: &str = "\u{0}rwlock:";

/// The name a read-write lock's waiting line and wake-ups go by.
pub(crate) fn line(name: &str) -> String {
    format!("{LINE_MARK}{name}")
}

/// The read-write lock a wake-up names, if it names one.
pub(crate) fn name_of_line(line: &str) -> Option<&str> {
    line.strip_prefix(LINE_MARK)
}

/// A read-write lock: readers hold it together, a writer alone. Made by
/// [`LockClient::rw_lock`].
///
/// # Guarantees, and their limits
/// - While a writer holds it nobody else does; while readers hold it no
///   writer does. Each hold is a lease with the surface of a
///   [`LockGuard`](crate::LockGuard): renewed by the watchdog, a lost
///   signal, a fence (one counter for readers and writers, so a write's
///   fence is above every read and write before it), release on drop, back
///   within one ttl when its holder dies.
/// - A writer is not starved: a writer that finds readers inside leaves an
///   intent that keeps new readers out until it has written, or until 3 s
///   after its last try if it gave up or died. Readers inside finish first.
/// - Waiting is woken by releases (the last reader out, a writer), as a
///   lock's is, with polling only as the fallback.
///
/// Works on one Redis server, Sentinel, a Cluster (every key of one lock
/// shares the hash slot of its name) and the memory backend; a Redlock
/// refuses it with [`LockError::InvalidArgument`].
///
/// ```
/// use soloist::{LockClient, LockError};
/// # async fn demo() -> Result<(), LockError> {
/// let locks = LockClient::memory();
/// let cache = locks.rw_lock("price-cache");
/// let first = cache.read().acquire().await?;
/// let second = cache.read().acquire().await?; // readers overlap
/// assert!(matches!(cache.write().acquire().await, Err(LockError::Busy { .. })));
/// first.release().await?;
/// second.release().await?;
/// let writer = cache.write().acquire().await?;
/// assert!(writer.is_write());
/// writer.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct RwLock {
    client: LockClient,
    name: String,
}

impl RwLock {
    pub(crate) fn new(client: LockClient, name: String) -> Self {
        RwLock { client, name }
    }

    /// The lock's name as the caller gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A request to hold it for reading, beside other readers.
    pub fn read(&self) -> RwLockRequest {
        RwLockRequest::new(self, false)
    }

    /// A request to hold it for writing, alone.
    pub fn write(&self) -> RwLockRequest {
        RwLockRequest::new(self, true)
    }
}

/// A request to hold a [`RwLock`] for reading or writing, configured with
/// by-value setters as a [`LockRequest`](crate::LockRequest) is.
///
/// ```
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let guard = locks
///     .rw_lock("price-cache")
///     .write()
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(1))
///     .acquire()
///     .await?;
/// guard.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock request does nothing until it is acquired"]
pub struct RwLockRequest {
    client: LockClient,
    name: String,
    line: String,
    write: bool,
    /// Names this acquisition over all its attempts (a writer's intent).
    request: String,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    max_hold: Option<Duration>,
}

impl Attempts for RwLockRequest {
    type Guard = RwLockGuard;

    fn attempt(
        &self,
        waiting: Option<Waiting>,
    ) -> impl Future<Output = Result<Attempt<RwLockGuard>>> + Send {
        self.try_once(waiting)
    }
}

impl RwLockRequest {
    fn new(lock: &RwLock, write: bool) -> Self {
        RwLockRequest {
            client: lock.client.clone(),
            name: lock.name.clone(),
            line: line(&lock.name),
            write,
            request: String::new(),
            ttl: DEFAULT_TTL,
            wait: Duration::ZERO,
            watchdog: true,
            max_hold: None,
        }
    }

    /// The lease length, as [`LockRequest::ttl`](crate::LockRequest::ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait, as [`LockRequest::wait`](crate::LockRequest::wait).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Whether the watchdog renews the lease, as
    /// [`LockRequest::watchdog`](crate::LockRequest::watchdog).
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// An upper bound on renewals, as
    /// [`LockRequest::max_hold`](crate::LockRequest::max_hold).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    fn kind(&self) -> LeaseKind {
        if self.write {
            LeaseKind::Write
        } else {
            LeaseKind::Read
        }
    }

    /// Takes the lock, waiting up to the configured [`wait`](Self::wait).
    /// Fails as [`LockRequest::acquire`](crate::LockRequest::acquire)
    /// does, and with [`LockError::InvalidArgument`] for an empty name or
    /// on a Redlock.
    pub async fn acquire(mut self) -> Result<RwLockGuard> {
        if self.name.is_empty() {
            return Err(LockError::invalid("name", "must not be empty"));
        }
        self.ttl = check_ttl(self.ttl)?;
        match self.max_hold {
            Some(max_hold) if max_hold.is_zero() || max_hold > LONGEST => {
                return Err(LockError::invalid(
                    "max_hold",
                    format!("must be from 1 ns to a century, got {max_hold:?}"),
                ));
            }
            _ => {}
        }
        self.request = new_token();
        let contention = Contention {
            client: &self.client,
            key: &self.name,
            line: &self.line,
            wait: self.wait,
            wait_after_hand_on: false,
        };
        contend(&contention, Instant::now(), &self).await
    }

    async fn try_once(&self, waiting: Option<Waiting>) -> Result<Attempt<RwLockGuard>> {
        let token = new_token();
        let sent_at = Instant::now();
        let mut pending = Abandon {
            client: &self.client,
            key: &self.name,
            token: &token,
            kind: self.kind(),
            armed: true,
        };
        let attempt = self
            .client
            .inner
            .backend
            .try_acquire_rw(
                &self.name,
                &token,
                &self.request,
                self.write,
                self.ttl,
                waiting,
            )
            .await?;
        pending.armed = false;
        drop(pending);
        Ok(match attempt {
            Attempt::Acquired(fence) => Attempt::Acquired(self.guard(token, fence, sent_at)),
            Attempt::Held { expires_in } => Attempt::Held { expires_in },
            Attempt::NoQuorum(tally) => Attempt::NoQuorum(tally),
        })
    }

    fn guard(&self, token: String, fence: u64, sent_at: Instant) -> RwLockGuard {
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
            .of_kind(self.kind()),
        );
        if self.watchdog {
            self.client.inner.watchdog.watch(cell.clone());
        }
        RwLockGuard {
            client: self.client.clone(),
            lease: Lease { cell },
            write: self.write,
            released: false,
        }
    }
}

/// Proof of holding a [`RwLock`] for reading or writing, with the surface
/// of a [`LockGuard`](crate::LockGuard).
///
/// ```
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let reader = locks.rw_lock("price-cache").read().acquire().await?;
/// assert!(!reader.is_write());
/// assert_eq!(reader.name(), "price-cache");
/// reader.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct RwLockGuard {
    client: LockClient,
    lease: Lease,
    write: bool,
    released: bool,
}

impl RwLockGuard {
    /// The lock's name as the caller gave it.
    pub fn name(&self) -> &str {
        self.lease.key()
    }

    /// Whether this guard writes (alone), rather than reads.
    pub fn is_write(&self) -> bool {
        self.write
    }

    /// The fencing token: strictly greater than every fence issued for
    /// this lock before, to readers and writers alike.
    pub fn fence(&self) -> u64 {
        self.lease.fence()
    }

    /// Whether the lease is still guaranteed; see [`Lease::is_held`].
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How much of the lease is still guaranteed locally.
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// Resolves once the lease can no longer be guaranteed; see [`Lease::lost`].
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// A cloneable view of this lease, for other tasks.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Sets the lease to `ttl` from now if still held, as
    /// [`LockGuard::extend`](crate::LockGuard::extend) does.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        extend_lease(&self.client, &self.lease, ttl).await
    }

    /// Gives the lock back now and wakes its waiters; [`LockError::Lost`],
    /// changing nothing, if it was no longer held.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        release_lease(&self.client, &self.lease).await
    }
}

impl Drop for RwLockGuard {
    fn drop(&mut self) {
        if !self.released {
            drop_lease(&self.client, &self.lease);
        }
    }
}
