//! Metric names of the worker runtime, recorded through the
//! [`metrics`](https://docs.rs/metrics) facade.

use std::cell::RefCell;
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata};

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

/// What the `metrics` macros would pass along with every metric here.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Most keys a thread keeps; past it, the keys are built afresh.
const MAX_CACHED: usize = 64;

/// A cached key: the metric's name, its fixed label, and the value of its
/// label by name.
type Cached = (
    &'static str,
    Option<(&'static str, &'static str)>,
    Box<str>,
    Key,
);

thread_local! {
    /// Keys built for a job's or a source's name: a queue records several
    /// metrics per message, and a key built per call costs its label's
    /// string, the label list and the key's hash each time. A cached key
    /// shares all three. A worker has few jobs and sources, so a list
    /// searched in order (comparing the static names by address first)
    /// beats hashing the name on every call.
    static KEYS: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// The key of metric `name` with the label `label` => `value` (and then
/// the `fixed` one), the same as the `metrics` macros build.
fn key(
    name: &'static str,
    label: &'static str,
    value: &str,
    fixed: Option<(&'static str, &'static str)>,
) -> Key {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        let found = keys.iter().find(|(cached, cached_fixed, cached_value, _)| {
            (std::ptr::eq(*cached, name) || *cached == name)
                && *cached_fixed == fixed
                && **cached_value == *value
        });
        if let Some((.., key)) = found {
            return key.clone();
        }
        if keys.len() >= MAX_CACHED {
            keys.clear();
        }
        let mut labels = vec![Label::new(label, value.to_owned())];
        labels.extend(fixed.map(|(label, value)| Label::from_static_parts(label, value)));
        // Retained: its clones share the name, the labels and the hash.
        let key = Key::from_parts(name, labels).to_retained();
        keys.push((name, fixed, value.into(), key.clone()));
        key
    })
}

fn counter(key: &Key) -> Counter {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA))
}

fn histogram(key: &Key) -> Histogram {
    metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA))
}

pub(crate) fn run(job: &str, outcome: &'static str) {
    counter(&key(RUNS, "job", job, Some(("outcome", outcome)))).increment(1);
}

pub(crate) fn run_time(job: &str, took: Duration) {
    histogram(&key(RUN_SECONDS, "job", job, None)).record(took.as_secs_f64());
}

pub(crate) fn claim_time(job: &str, took: Duration) {
    histogram(&key(CLAIM_SECONDS, "job", job, None)).record(took.as_secs_f64());
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
    counter(&key(CONSUMED, "source", source, None)).increment(1);
    if redelivered {
        counter(&key(REDELIVERED, "source", source, None)).increment(1);
    }
}

pub(crate) fn acked(source: &str) {
    counter(&key(ACKED, "source", source, None)).increment(1);
}

pub(crate) fn duplicate_skipped(source: &str) {
    counter(&key(DUPLICATE_SKIPPED, "source", source, None)).increment(1);
}

pub(crate) fn dead_lettered(source: &str) {
    metrics::counter!(DEAD_LETTERED, "source" => source.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_keys_are_the_keys_the_macros_build() {
        for _ in 0..2 {
            assert_eq!(
                key(RUNS, "job", "charge", Some(("outcome", "success"))),
                Key::from_parts(
                    RUNS,
                    vec![
                        Label::new("job", "charge".to_owned()),
                        Label::new("outcome", "success")
                    ]
                )
            );
            assert_eq!(
                key(ACKED, "source", "orders", None),
                Key::from_parts(ACKED, vec![Label::new("source", "orders".to_owned())])
            );
        }
        assert_ne!(
            key(RUNS, "job", "charge", Some(("outcome", "failure"))),
            key(RUNS, "job", "charge", Some(("outcome", "success")))
        );
    }
}
