//! Rate limits: at most N starts per period across every client.

use std::time::Duration;

use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::metrics;

pub use soloist_parse::{MAX_RATE_COUNT, MAX_RATE_PERIOD};

/// What [`RateLimit::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// The start is admitted and counted.
    Admitted,
    /// Over the limit: nothing was counted; a start is admitted again
    /// after `retry_after`.
    Limited {
        /// How long until a start would be admitted, if nobody else takes it.
        retry_after: Duration,
    },
}

/// At most `count` starts per `period` under one name, across every client
/// of the same Redis (or memory backend). Made by [`LockClient::rate_limit`].
///
/// # The algorithm
/// GCRA (the generic cell rate algorithm) with no burst tolerance, on the
/// server's clock (`TIME` inside the Lua script that decides): with the
/// emission interval `T = period / count`, a start is admitted when the
/// stored theoretical arrival time (TAT) is not in the future, and the TAT
/// moves to `now + T`. Check and move are one atomic step, so racing
/// clients cannot both pass, and admitted starts are at least `T` apart:
/// any window of one `period` holds at most `count` of them. Without a
/// burst tolerance, `100/1m` means one start every 600 ms, never 100 at
/// once (a tolerance of `k·T` would let `k+1` through together and break the
/// per-window bound). One key per limit, expiring one interval after its
/// TAT, is all the state.
///
/// Works on one Redis server, Sentinel, a Cluster and the memory backend;
/// a Redlock refuses it with [`LockError::InvalidArgument`].
///
/// ```
/// use std::time::Duration;
/// use soloist::{Admission, LockClient};
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let partner_api = locks.rate_limit("partner-api", 100, Duration::from_secs(60));
/// assert_eq!(partner_api.check().await?, Admission::Admitted);
/// // The next start is 600 ms away.
/// assert!(matches!(partner_api.check().await?, Admission::Limited { .. }));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit {
    client: LockClient,
    name: String,
    count: u32,
    period: Duration,
}

impl RateLimit {
    pub(crate) fn new(client: LockClient, name: String, count: u32, period: Duration) -> Self {
        RateLimit {
            client,
            name,
            count,
            period,
        }
    }

    /// The emission interval `period / count`, after checking both.
    fn interval(&self) -> Result<Duration> {
        if self.name.is_empty() {
            return Err(LockError::invalid("name", "must not be empty"));
        }
        if !(1..=MAX_RATE_COUNT).contains(&self.count) {
            return Err(LockError::invalid(
                "count",
                format!("must be between 1 and {MAX_RATE_COUNT}, got {}", self.count),
            ));
        }
        if self.period.is_zero() || self.period > MAX_RATE_PERIOD {
            return Err(LockError::invalid(
                "period",
                format!(
                    "must be more than zero and at most {MAX_RATE_PERIOD:?}, got {:?}",
                    self.period
                ),
            ));
        }
        if self.period.as_nanos() < 1000 * u128::from(self.count) {
            return Err(LockError::invalid(
                "count",
                "more than one start per microsecond cannot be counted",
            ));
        }
        // Rounded up to the whole microseconds the server's clock counts:
        // rounded down, one start too many could fit in a period (3 per
        // second 333,333 µs apart puts a fourth start at 999,999 µs).
        let micros = self
            .period
            .as_nanos()
            .div_ceil(u128::from(self.count))
            .div_ceil(1000);
        Ok(Duration::from_micros(
            u64::try_from(micros).unwrap_or(u64::MAX),
        ))
    }

    /// Asks for one start now: admitted (and counted), or how long until
    /// one would be. Fails with [`LockError::InvalidArgument`] for an empty
    /// name, a count of 0 or above [`MAX_RATE_COUNT`], a zero period or one
    /// above [`MAX_RATE_PERIOD`], and with a backend error if it fails.
    pub async fn check(&self) -> Result<Admission> {
        let interval = self.interval()?;
        let wait = self
            .client
            .inner
            .backend
            .admit(&self.name, interval)
            .await?;
        Ok(match wait {
            None => {
                metrics::rate_check("admitted");
                Admission::Admitted
            }
            Some(retry_after) => {
                metrics::rate_check("limited");
                Admission::Limited { retry_after }
            }
        })
    }

    /// Waits for a start and takes it: checks, and sleeps for as long as
    /// the limit says between checks, up to `max_wait` (then
    /// [`LockError::Timeout`]).
    pub async fn wait(&self, max_wait: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.check().await? {
                Admission::Admitted => {
                    metrics::rate_wait(started.elapsed());
                    return Ok(());
                }
                Admission::Limited { retry_after } => {
                    if started.elapsed() + retry_after > max_wait {
                        return Err(LockError::Timeout {
                            key: self.name.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(retry_after).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_arguments() {
        let locks = LockClient::memory();
        let second = Duration::from_secs(1);
        for (limit, name) in [
            (locks.rate_limit("", 1, second), "name"),
            (locks.rate_limit("r", 0, second), "count"),
            (locks.rate_limit("r", MAX_RATE_COUNT + 1, second), "count"),
            (locks.rate_limit("r", 1, Duration::ZERO), "period"),
            (locks.rate_limit("r", 1, Duration::MAX), "period"),
            (
                locks.rate_limit("r", 1000, Duration::from_micros(10)),
                "count",
            ),
        ] {
            match limit.check().await {
                Err(LockError::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected InvalidArgument({name}), got {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_one_interval_apart() {
        let locks = LockClient::memory();
        let limit = locks.rate_limit("r", 10, Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        for _ in 0..21 {
            limit.wait(Duration::from_secs(10)).await.unwrap();
        }
        // 21 starts: the first at once, then one per 100 ms.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(matches!(
            limit.wait(Duration::from_millis(50)).await,
            Err(LockError::Timeout { .. })
        ));
    }

    /// A period the count does not divide: the interval is rounded up, so
    /// no period ever holds one start more than the count.
    #[tokio::test(start_paused = true)]
    async fn an_uneven_interval_never_fits_an_extra_start() {
        let locks = LockClient::memory();
        let limit = locks.rate_limit("r", 3, Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        for _ in 0..4 {
            limit.wait(Duration::from_secs(10)).await.unwrap();
        }
        assert!(
            started.elapsed() > Duration::from_secs(1),
            "4 starts of 3 per second within {:?}",
            started.elapsed()
        );
    }
}
