//! All-or-nothing locks over several keys.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::request::{DEFAULT_TTL, LockRequest};

/// The most keys one [`LockClient::lock_all`] takes.
pub const MAX_KEYS: usize = 1000;

/// A request for the locks of several keys at once, all or none; made by
/// [`LockClient::lock_all`].
///
/// # How it takes them, and why it cannot deadlock
/// The keys are sorted and tried in that order without waiting. If one is
/// held, every lock taken so far is given back at once, and the request
/// waits (woken by the holder's release, as [`LockRequest::wait`] does)
/// for that one key alone, holding nothing else; then it tries the rest
/// again. So it never waits while holding a key, and two requests over
/// overlapping keys cannot wait for each other. Each key is an ordinary
/// lock with its own lease, fence and renewal; the guard gives them all
/// back.
///
/// On a Redis Cluster every key must be in one hash slot (give them one
/// hash tag, as `{order:42}:items` and `{order:42}:payment`): a request
/// over several slots is refused with [`LockError::InvalidArgument`]
/// before anything is taken. Works on every backend, a Redlock included.
///
/// ```
/// use soloist::{LockClient, LockError};
/// # async fn demo() -> Result<(), LockError> {
/// let locks = LockClient::memory();
/// let both = locks.lock_all(["account:1", "account:2"]).acquire().await?;
/// assert_eq!(both.keys().collect::<Vec<_>>(), ["account:1", "account:2"]);
/// // Another request needing either key is turned away, holding nothing.
/// assert!(matches!(
///     locks.lock_all(["account:2", "account:3"]).acquire().await,
///     Err(LockError::Busy { .. })
/// ));
/// assert!(locks.lock("account:3").acquire().await.is_ok());
/// both.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock request does nothing until it is acquired"]
pub struct MultiLockRequest {
    client: LockClient,
    keys: Vec<String>,
    ttl: Duration,
    wait: Duration,
    watchdog: bool,
    max_hold: Option<Duration>,
}

impl MultiLockRequest {
    pub(crate) fn new(client: LockClient, keys: Vec<String>) -> Self {
        MultiLockRequest {
            client,
            keys,
            ttl: DEFAULT_TTL,
            wait: Duration::ZERO,
            watchdog: true,
            max_hold: None,
        }
    }

    /// Each lock's lease length, as [`LockRequest::ttl`].
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait, in all, while any key is held; default zero:
    /// fail at once with [`LockError::Busy`] naming a held key.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Whether the watchdog renews the leases, as [`LockRequest::watchdog`].
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// An upper bound on renewals, as [`LockRequest::max_hold`].
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    fn request(&self, key: &str) -> LockRequest {
        let mut request = self.client.lock(key).ttl(self.ttl).watchdog(self.watchdog);
        if let Some(max_hold) = self.max_hold {
            request = request.max_hold(max_hold);
        }
        request
    }

    /// The keys sorted, each once, after checking them.
    fn sorted(&self) -> Result<Vec<String>> {
        let keys: BTreeSet<&String> = self.keys.iter().collect();
        if keys.is_empty() {
            return Err(LockError::invalid("keys", "must name at least one key"));
        }
        if keys.len() != self.keys.len() {
            return Err(LockError::invalid("keys", "must not name a key twice"));
        }
        if keys.len() > MAX_KEYS {
            return Err(LockError::invalid(
                "keys",
                format!("must be at most {MAX_KEYS}, got {}", keys.len()),
            ));
        }
        if keys.iter().any(|key| key.is_empty()) {
            return Err(LockError::invalid("keys", "must not hold an empty key"));
        }
        let backend = &self.client.inner.backend;
        let mut groups = keys.iter().map(|key| backend.renewal_group(key));
        let first = groups.next();
        if groups.any(|group| Some(group) != first) {
            return Err(LockError::invalid(
                "keys",
                "on a Redis Cluster all keys must share one hash slot: give them one hash tag, e.g. `{order:42}:items` and `{order:42}:payment`",
            ));
        }
        Ok(keys.into_iter().cloned().collect())
    }

    /// Takes every key's lock, or none, waiting up to the configured
    /// [`wait`](Self::wait) in all. Fails as [`LockRequest::acquire`] does
    /// ([`LockError::Busy`] and [`LockError::Timeout`] name a key that was
    /// held), and with [`LockError::InvalidArgument`] for no keys, an empty
    /// or repeated key, more than [`MAX_KEYS`], or keys of several hash
    /// slots on a cluster. Whatever it fails with, it holds nothing.
    pub async fn acquire(self) -> Result<MultiLockGuard> {
        let keys = self.sorted()?;
        let started = Instant::now();
        let deadline = started.checked_add(self.wait);
        // A key waited for and taken: kept while the others are tried.
        let mut waited: Option<LockGuard> = None;
        loop {
            let mut guards = Vec::with_capacity(keys.len());
            let mut busy = None;
            for key in &keys {
                if let Some(guard) = waited.take_if(|guard| guard.key() == key) {
                    guards.push(guard);
                    continue;
                }
                match self.request(key).acquire().await {
                    Ok(guard) => guards.push(guard),
                    Err(LockError::Busy { key }) => {
                        busy = Some(key);
                        break;
                    }
                    Err(err) => {
                        give_back(guards).await;
                        give_back(waited.take().into_iter().collect()).await;
                        return Err(err);
                    }
                }
            }
            let Some(key) = busy else {
                return Ok(MultiLockGuard { guards });
            };
            // Nothing is held while waiting: that is what rules out a
            // deadlock with another request over the same keys.
            give_back(guards).await;
            give_back(waited.take().into_iter().collect()).await;
            let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return Err(if self.wait.is_zero() {
                    LockError::Busy { key }
                } else {
                    LockError::Timeout {
                        key,
                        waited: started.elapsed(),
                    }
                });
            }
            let wait = left.unwrap_or(Duration::MAX);
            waited = Some(self.request(&key).wait(wait).acquire().await?);
        }
    }
}

/// Gives back what a failed round took; errors are no matter: unreleased,
/// a lock expires within its ttl.
async fn give_back(guards: Vec<LockGuard>) {
    for guard in guards {
        let _ = guard.release().await;
    }
}

/// The locks of every key of a [`MultiLockRequest`], held together; each
/// is an ordinary [`LockGuard`] (lease, fence, renewal). Dropping it
/// releases them all.
///
/// ```
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let held = locks.lock_all(["b", "a"]).acquire().await?;
/// let fence_of_a = held.guard("a").unwrap().fence();
/// assert!(held.is_held());
/// # let _ = fence_of_a;
/// held.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard releases every lock at once"]
pub struct MultiLockGuard {
    /// Sorted by key.
    guards: Vec<LockGuard>,
}

impl MultiLockGuard {
    /// The keys held, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.guards.iter().map(LockGuard::key)
    }

    /// The guard of `key`, with its fence, if `key` is one of them.
    pub fn guard(&self, key: &str) -> Option<&LockGuard> {
        self.guards
            .binary_search_by(|guard| guard.key().cmp(key))
            .ok()
            .map(|at| &self.guards[at])
    }

    /// Whether every lease is still guaranteed.
    pub fn is_held(&self) -> bool {
        self.guards.iter().all(LockGuard::is_held)
    }

    /// Resolves once any of the leases can no longer be guaranteed.
    pub async fn lost(&self) {
        let lost: Vec<_> = self
            .guards
            .iter()
            .map(|guard| Box::pin(guard.lost()))
            .collect();
        futures::future::select_all(lost).await;
    }

    /// The guards, to release or keep one by one.
    pub fn into_guards(self) -> Vec<LockGuard> {
        self.guards
    }

    /// Gives every lock back; the first error, if any, after trying all.
    pub async fn release(self) -> Result<()> {
        let mut first = Ok(());
        for guard in self.guards {
            if let Err(err) = guard.release().await
                && first.is_ok()
            {
                first = Err(err);
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_arguments() {
        let locks = LockClient::memory();
        let none: [&str; 0] = [];
        let many: Vec<String> = (0..=MAX_KEYS).map(|n| n.to_string()).collect();
        for request in [
            locks.lock_all(none),
            locks.lock_all(["a", "a"]),
            locks.lock_all(["a", ""]),
            locks.lock_all(many),
        ] {
            match request.acquire().await {
                Err(LockError::InvalidArgument { name, .. }) => assert_eq!(name, "keys"),
                other => panic!("expected InvalidArgument(keys), got {other:?}"),
            }
        }
        // Nothing was taken by any of them.
        assert!(locks.lock("a").acquire().await.is_ok());
    }

    /// Two requests over the same keys in opposite orders, many times at
    /// once: both always finish (no deadlock), and never overlap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opposite_orders_never_deadlock() {
        let locks = LockClient::memory();
        let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|n| {
                let (locks, inside) = (locks.clone(), inside.clone());
                tokio::spawn(async move {
                    let keys = if n % 2 == 0 {
                        ["x", "y", "z"]
                    } else {
                        ["z", "y", "x"]
                    };
                    for _ in 0..20 {
                        let held = locks
                            .lock_all(keys)
                            .wait(Duration::from_secs(10))
                            .acquire()
                            .await
                            .unwrap();
                        let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(now, 0, "two holders at once");
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        held.release().await.unwrap();
                    }
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(Duration::from_secs(20), all).await;
        for task in done.expect("deadlocked") {
            task.unwrap();
        }
    }
}
