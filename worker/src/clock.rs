//! One clock for the fleet: the backend's, read through `TIME`.
//!
//! Replicas decide when a tick is due from the backend's clock, not their
//! own, so a replica whose wall clock is minutes off still sees the same
//! ticks at the same moments as the rest. The offset is measured against
//! the midpoint of the round trip and refreshed periodically.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use soloist_core::LockClient;

use crate::metrics;

/// How often the offset to the backend's clock is measured again.
pub(crate) const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct FleetClock {
    locks: LockClient,
    /// Backend clock minus local clock, in microseconds.
    offset_us: AtomicI64,
    /// A deliberate error of the local clock, for tests of skewed replicas.
    local_error_us: i64,
}

impl FleetClock {
    pub(crate) fn new(locks: LockClient, local_error: TimeDelta) -> Self {
        FleetClock {
            locks,
            offset_us: AtomicI64::new(0),
            local_error_us: local_error.num_microseconds().unwrap_or(0),
        }
    }

    fn local_now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(SystemTime::now()) + TimeDelta::microseconds(self.local_error_us)
    }

    /// Measures the offset to the backend's clock; a backend without a
    /// clock of its own (memory) leaves it at zero.
    pub(crate) async fn refresh(&self) -> soloist_core::Result<()> {
        let before = self.local_now();
        let Some(served) = self.locks.server_time().await? else {
            return Ok(());
        };
        let after = self.local_now();
        let midpoint = before + (after - before) / 2;
        let offset = DateTime::<Utc>::from(served) - midpoint;
        let offset_us = offset.num_microseconds().unwrap_or(0);
        self.offset_us.store(offset_us, Ordering::Relaxed);
        metrics::clock_skew(offset_us as f64 / 1e6);
        Ok(())
    }

    /// The fleet's time now.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        // One addition rather than two: every run reads this as it starts.
        let offset_us = self
            .local_error_us
            .saturating_add(self.offset_us.load(Ordering::Relaxed));
        DateTime::<Utc>::from(SystemTime::now()) + TimeDelta::microseconds(offset_us)
    }

    /// Sleeps until the fleet's clock reads `at`.
    pub(crate) async fn sleep_until(&self, at: DateTime<Utc>) {
        loop {
            let left = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return;
            }
            // Wake at least every refresh period: the offset may have moved.
            tokio::time::sleep(left.min(REFRESH)).await;
        }
    }
}
