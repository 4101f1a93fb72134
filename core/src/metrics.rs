//! Metric names and the one place each is recorded.
//!
//! Every metric goes through the [`metrics`](https://docs.rs/metrics) facade;
//! install any recorder (Prometheus, StatsD, …) to collect them.

use std::time::Duration;

/// Counter: acquisition requests by `outcome` (`acquired`, `busy`, `timeout`,
/// `no_quorum`, `error`).
pub const ACQUISITIONS: &str = "soloist_lock_acquisitions_total";
/// Histogram: seconds from the start of an acquisition to its outcome, by `outcome`.
pub const WAIT_SECONDS: &str = "soloist_lock_wait_seconds";
/// Counter: lease renewals by `outcome` (`renewed`, `lost`, `error`).
pub const RENEWALS: &str = "soloist_lock_renewals_total";
/// Counter: renewal calls sent to the backend (each renews a batch of leases).
pub const RENEWAL_CALLS: &str = "soloist_lock_renewal_calls_total";
/// Counter: leases that ended by being lost rather than released.
pub const LOST: &str = "soloist_lock_lost_total";
/// Counter: releases by `outcome` (`released`, `lost`, `error`).
pub const RELEASES: &str = "soloist_lock_releases_total";
/// Gauge: 1 when the Redis server's `maxmemory-policy` (label `policy`) can evict lock keys.
pub const UNSAFE_EVICTION_POLICY: &str = "soloist_redis_unsafe_eviction_policy";

/// Counter: semaphore permit acquisitions by `outcome` (`acquired`, `busy`
/// — a denial —, `timeout`, `error`).
pub const PERMIT_ACQUISITIONS: &str = "soloist_semaphore_acquisitions_total";
/// Histogram: seconds from the start of a permit acquisition to its outcome
/// (the time spent waiting for a permit), by `outcome`.
pub const PERMIT_WAIT_SECONDS: &str = "soloist_semaphore_wait_seconds";
/// Gauge: tasks of this process waiting for a permit, by semaphore `name`.
pub const PERMIT_WAITERS: &str = "soloist_semaphore_waiters";
/// Gauge: permits this process holds, by semaphore `name`.
pub const PERMITS_HELD: &str = "soloist_semaphore_permits_held";

/// Counter: rate-limit checks by `outcome` (`admitted`, `limited` — a denial).
pub const RATE_CHECKS: &str = "soloist_rate_checks_total";
/// Histogram: seconds a start waited for its rate limit to admit it.
pub const RATE_WAIT_SECONDS: &str = "soloist_rate_wait_seconds";

pub(crate) fn rate_check(outcome: &'static str) {
    metrics::counter!(RATE_CHECKS, "outcome" => outcome).increment(1);
}

pub(crate) fn rate_wait(waited: Duration) {
    metrics::histogram!(RATE_WAIT_SECONDS).record(waited.as_secs_f64());
}

pub(crate) fn permit_acquisition(outcome: &'static str, waited: Duration) {
    metrics::counter!(PERMIT_ACQUISITIONS, "outcome" => outcome).increment(1);
    metrics::histogram!(PERMIT_WAIT_SECONDS, "outcome" => outcome).record(waited.as_secs_f64());
}

pub(crate) fn permit_waiters(name: &str, change: f64) {
    metrics::gauge!(PERMIT_WAITERS, "name" => name.to_owned()).increment(change);
}

pub(crate) fn permit_held(name: &str, change: f64) {
    metrics::gauge!(PERMITS_HELD, "name" => name.to_owned()).increment(change);
}

/// `metrics::$metric!($name, "outcome" => $outcome)`, with the label written
/// as a literal for each outcome in `[...]`: the macro then builds the label
/// set once, statically, where a label value it does not know at compile
/// time costs a vector and a key on every call (every lock cycle records
/// three of these).
macro_rules! by_outcome {
    ($metric:ident, $name:expr, $outcome:expr, [$($known:literal),+]) => {
        match $outcome {
            $($known => metrics::$metric!($name, "outcome" => $known),)+
            other => metrics::$metric!($name, "outcome" => other),
        }
    };
}

pub(crate) fn acquisition(outcome: &'static str, waited: Duration) {
    by_outcome!(
        counter,
        ACQUISITIONS,
        outcome,
        ["acquired", "busy", "timeout", "no_quorum", "error"]
    )
    .increment(1);
    by_outcome!(
        histogram,
        WAIT_SECONDS,
        outcome,
        ["acquired", "busy", "timeout", "no_quorum", "error"]
    )
    .record(waited.as_secs_f64());
}

pub(crate) fn renewal_call() {
    metrics::counter!(RENEWAL_CALLS).increment(1);
}

pub(crate) fn renewal(outcome: &'static str) {
    by_outcome!(counter, RENEWALS, outcome, ["renewed", "lost", "error"]).increment(1);
}

pub(crate) fn lost() {
    metrics::counter!(LOST).increment(1);
}

pub(crate) fn release(outcome: &'static str) {
    by_outcome!(counter, RELEASES, outcome, ["released", "lost", "error"]).increment(1);
}

pub(crate) fn eviction_policy(policy: &str, unsafe_policy: bool) {
    metrics::gauge!(UNSAFE_EVICTION_POLICY, "policy" => policy.to_owned()).set(if unsafe_policy {
        1.0
    } else {
        0.0
    });
}
