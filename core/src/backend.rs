//! The one internal interface every lock backend implements, so that guards,
//! the watchdog and waiting are written once for all of them.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::Result;
use crate::fence::{FencedValue, FencedWrite};
use crate::notice::Listener;

/// What one acquisition attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The lock is ours, with this fencing token.
    Acquired { fence: u64 },
    /// Another owner holds it; its lease runs out in `expires_in` if known.
    Held { expires_in: Option<Duration> },
}

/// One lease to renew in a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renewal<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl: Duration,
}

pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Takes `key` for `token` if free, issuing a fence atomically with it.
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt>>;

    /// Renews every lease still owned by its token; one flag per lease, in order.
    fn extend<'a>(&'a self, leases: &'a [Renewal<'a>]) -> BoxFuture<'a, Result<Vec<bool>>>;

    /// Deletes `key` if `token` still owns it and wakes its waiters; `false` if not ours.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Starts listening for release notices on `key`.
    fn listen<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Listener>;

    /// Stores `value` under `resource` unless a higher fence was seen there.
    fn fenced_set<'a>(
        &'a self,
        resource: &'a str,
        fence: u64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<FencedWrite>>;

    /// Reads what [`Backend::fenced_set`] stored: the fence and the value.
    fn fenced_get<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<FencedValue>>>;
}
