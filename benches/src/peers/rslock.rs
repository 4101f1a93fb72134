//! The [`rslock`](https://crates.io/crates/rslock) crate on one Redis server,
//! or in its multi-node (Redlock) mode over several independent ones, where
//! it asks every node at once and waits for all of their answers.

use std::time::Duration;

use ::rslock::{Lock, LockError, LockManager};

use super::{FAST_RETRY, Retry};

/// How many tries one `lock` call makes before the crate gives up; its default.
const TRIES: u32 = 3;

/// One rslock `LockManager` (one multiplexed connection per server) in a retry mode.
#[derive(Debug, Clone)]
pub(crate) struct RslockPeer {
    manager: LockManager,
}

impl RslockPeer {
    /// A manager for the server at `url`, connecting on first use.
    pub(crate) fn new(url: &str, retry: Retry) -> RslockPeer {
        RslockPeer::over(&[url], retry)
    }

    /// A manager over the independent servers at `urls` (a lock needs a
    /// majority of them), connecting on first use.
    pub(crate) fn over(urls: &[&str], retry: Retry) -> RslockPeer {
        let mut manager = LockManager::new(urls.to_vec());
        if retry == Retry::Fast {
            manager.set_retry(TRIES, FAST_RETRY);
        }
        RslockPeer { manager }
    }

    /// Takes a lock nobody else uses (`SET NX PX`); panics if it is taken.
    pub(crate) async fn lock(&self, key: &[u8], ttl: Duration) -> Lock {
        self.manager
            .lock(key, ttl)
            .await
            .unwrap_or_else(|err| panic!("rslock could not take an unshared lock: {err}"))
    }

    /// Takes a lock others contend for: the crate's `acquire`, which repeats
    /// its retry rounds until it succeeds.
    pub(crate) async fn acquire(&self, key: &[u8], ttl: Duration) -> Lock {
        self.manager
            .acquire_no_guard(key, ttl)
            .await
            .unwrap_or_else(|err| panic!("rslock acquire failed: {err}"))
    }

    /// Releases a lock (the crate's compare-and-delete script).
    pub(crate) async fn release(&self, lock: Lock) {
        self.manager.unlock(&lock).await;
    }

    /// Holds `key` with the crate's own renewal (`using`) until `stop` turns
    /// true, counting the lock in `held` once taken. Fails when a renewal fails.
    pub(crate) async fn hold(
        &self,
        key: Vec<u8>,
        ttl: Duration,
        held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), LockError> {
        self.manager
            .using(&key, ttl, async move || {
                held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // An error means the sender is gone, which also means stop.
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    }
}
