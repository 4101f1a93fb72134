//! The [`redlock`](https://crates.io/crates/redlock) crate on one Redis
//! server, or over several independent ones (its Redlock mode, which asks
//! the nodes one after another).
//!
//! The crate is blocking and opens a new TCP connection for every command,
//! so it is driven from OS threads, one per worker.

use ::redlock::{Lock, RedLock, RedLockGuard};

use super::{FAST_RETRY, Retry};

/// How many tries one `lock` call makes before the crate gives up; its default.
const TRIES: u32 = 3;

/// One `RedLock` manager in a retry mode.
#[derive(Debug, Clone)]
pub(crate) struct RedlockPeer {
    manager: RedLock,
}

impl RedlockPeer {
    /// A manager for the server at `url`.
    pub(crate) fn new(url: &str, retry: Retry) -> RedlockPeer {
        RedlockPeer::over(&[url], retry)
    }

    /// A manager over the independent servers at `urls` (a lock needs a
    /// majority of them).
    pub(crate) fn over(urls: &[&str], retry: Retry) -> RedlockPeer {
        let mut manager = RedLock::new(urls.to_vec());
        if retry == Retry::Fast {
            let delay_ms = u32::try_from(FAST_RETRY.as_millis()).unwrap_or(u32::MAX);
            manager.set_retry(TRIES, delay_ms);
        }
        RedlockPeer { manager }
    }

    /// Takes a lock nobody else uses; panics if it is taken or Redis fails.
    pub(crate) fn lock(&self, key: &[u8], ttl_ms: usize) -> Lock<'_> {
        match self.manager.lock(key, ttl_ms) {
            Ok(Some(lock)) => lock,
            Ok(None) => panic!("redlock could not take an unshared lock"),
            Err(err) => panic!("redlock lock failed: {err}"),
        }
    }

    /// Releases a lock (the crate's compare-and-delete script).
    pub(crate) fn release(&self, lock: &Lock<'_>) {
        self.manager.unlock(lock);
    }

    /// Takes a lock others contend for: the crate's `acquire`, which repeats
    /// its retry rounds until it succeeds. Dropping the guard releases it.
    pub(crate) fn acquire(&self, key: &[u8], ttl_ms: usize) -> RedLockGuard<'_> {
        self.manager
            .acquire(key, ttl_ms)
            .unwrap_or_else(|err| panic!("redlock acquire failed: {err}"))
    }
}
