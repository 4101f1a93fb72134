//! Peer crates measured beside soloist, behind thin adapters so the
//! scenarios read the same for every library.
//!
//! - [`rslock`](https://crates.io/crates/rslock): async, Redlock over
//!   redis-rs multiplexed connections; waits by retry-polling.
//! - [`redlock`](https://crates.io/crates/redlock): blocking, opens a new
//!   connection per command; waits by retry-polling. Driven from OS threads.
//!
//! Neither has release notices, fencing tokens or batched renewal; only
//! rslock renews a held lock (`LockManager::using`).
//!
//! - [`apalis-redis`](https://crates.io/crates/apalis-redis): a Redis job
//!   queue (lists and sets, not streams) with apalis's worker runtime; a
//!   baseline of the `queue` scenario.

pub(crate) mod apalis;
pub(crate) mod redlock;
pub(crate) mod rslock;

use std::time::Duration;

/// How a peer retries a lock that someone else holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The crate's defaults: 3 tries per attempt, a random pause of up to 200 ms.
    Default,
    /// Its fastest useful setting: a random pause below [`FAST_RETRY`].
    Fast,
}

/// The retry delay of [`Retry::Fast`]. Both crates pause a random whole
/// number of milliseconds below it, so this means "retry at once".
pub(crate) const FAST_RETRY: Duration = Duration::from_millis(1);

impl Retry {
    /// Both modes, default first.
    pub(crate) const ALL: [Retry; 2] = [Retry::Default, Retry::Fast];

    /// The row label of crate `base` in this mode: `rslock`, `rslock-1ms`.
    pub(crate) fn label(self, base: &str) -> String {
        match self {
            Retry::Default => base.to_owned(),
            Retry::Fast => format!("{base}-{}ms", FAST_RETRY.as_millis()),
        }
    }
}
