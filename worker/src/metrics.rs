//! Metric names of the worker runtime, recorded through the
//! [`metrics`](https://docs.rs/metrics) facade.

use std::time::Duration;

/// Counter: runs by `job` and `outcome` (`success`, `failure`, `lost`,
/// `duplicate`, `busy`, `rate_limited`, `skipped_by_peer`, `timed_out`,
/// `cancelled`, `paused`).
pub const RUNS: &str = "soloist_job_runs_total";
/// Histogram: seconds a run's body took, by `job`.
pub const RUN_SECONDS: &str = "soloist_job_run_seconds";
/// Histogram: seconds from a tick's due time (or a request) to holding its lock, by `job`.
pub const CLAIM_SECONDS: &str = "soloist_job_claim_seconds";
/// Counter: cron ticks that passed unclaimed and were not run, by `job`.
pub const MISSED_TICKS: &str = "soloist_job_missed_ticks_total";
/// Histogram: seconds a run waited for its job's rate limit to admit it,
/// by `job` (only runs that had to wait).
pub const RATE_WAIT_SECONDS: &str = "soloist_job_rate_wait_seconds";
/// Gauge: seconds the backend's clock is ahead of this replica's (negative: behind).
pub const CLOCK_SKEW_SECONDS: &str = "soloist_clock_skew_seconds";

pub(crate) fn run(job: &str, outcome: &'static str) {
    metrics::counter!(RUNS, "job" => job.to_owned(), "outcome" => outcome).increment(1);
}

pub(crate) fn run_time(job: &str, took: Duration) {
    metrics::histogram!(RUN_SECONDS, "job" => job.to_owned()).record(took.as_secs_f64());
}

pub(crate) fn claim_time(job: &str, took: Duration) {
    metrics::histogram!(CLAIM_SECONDS, "job" => job.to_owned()).record(took.as_secs_f64());
}

pub(crate) fn rate_wait(job: &str, waited: Duration) {
    metrics::histogram!(RATE_WAIT_SECONDS, "job" => job.to_owned()).record(waited.as_secs_f64());
}

pub(crate) fn missed(job: &str, ticks: u64) {
    metrics::counter!(MISSED_TICKS, "job" => job.to_owned()).increment(ticks);
}

pub(crate) fn clock_skew(seconds: f64) {
    metrics::gauge!(CLOCK_SKEW_SECONDS).set(seconds);
}

/// Counter: deliveries taken from a source, by `source`.
pub const CONSUMED: &str = "soloist_queue_consumed_total";
/// Counter: deliveries that had been delivered before, by `source`.
pub const REDELIVERED: &str = "soloist_queue_redelivered_total";
/// Counter: deliveries acknowledged after their outcome was recorded, by `source`.
pub const ACKED: &str = "soloist_queue_acked_total";
/// Counter: deliveries whose key had already succeeded, acknowledged without running, by `source`.
pub const DUPLICATE_SKIPPED: &str = "soloist_queue_duplicate_skipped_total";
/// Counter: deliveries moved to the dead letters, by `source`.
pub const DEAD_LETTERED: &str = "soloist_queue_dead_lettered_total";

/// Gauge: messages waiting to be delivered to the consumer group, by `source`.
pub const LAG: &str = "soloist_queue_lag";

pub(crate) fn lag(source: &str, lag: u64) {
    metrics::gauge!(LAG, "source" => source.to_owned()).set(lag as f64);
}

pub(crate) fn consumed(source: &str, redelivered: bool) {
    metrics::counter!(CONSUMED, "source" => source.to_owned()).increment(1);
    if redelivered {
        metrics::counter!(REDELIVERED, "source" => source.to_owned()).increment(1);
    }
}

pub(crate) fn acked(source: &str) {
    metrics::counter!(ACKED, "source" => source.to_owned()).increment(1);
}

pub(crate) fn duplicate_skipped(source: &str) {
    metrics::counter!(DUPLICATE_SKIPPED, "source" => source.to_owned()).increment(1);
}

pub(crate) fn dead_lettered(source: &str) {
    metrics::counter!(DEAD_LETTERED, "source" => source.to_owned()).increment(1);
}
