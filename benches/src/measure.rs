//! The measuring window and the latency samples taken inside it.
//!
//! Every run has a warm-up followed by a measured window of fixed length.
//! Workers loop until the window closes; an operation counts when it
//! *completes* inside the window, which is also the span over which the
//! server's command counters are read, so "commands per operation" divides
//! two numbers taken over the same interval.

use std::thread;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// The measured interval of one run, preceded by its warm-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// When measuring starts: the end of the warm-up.
    pub(crate) start: Instant,
    /// When measuring ends and workers stop starting new operations.
    pub(crate) end: Instant,
}

impl Window {
    /// A window of `length` that opens after `warmup` from now.
    pub(crate) fn after(warmup: Duration, length: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + length,
        }
    }

    /// Whether workers should start another operation.
    pub(crate) fn is_open(&self) -> bool {
        Instant::now() < self.end
    }

    /// Whether an operation that completed at `at` is counted.
    fn counts(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// The latencies one or more workers recorded inside a [`Window`].
#[derive(Debug, Default)]
pub(crate) struct Samples {
    /// Every counted operation, in nanoseconds.
    all: Vec<u64>,
    /// The counted operations that were hand-offs (contended runs only).
    handoffs: Vec<u64>,
    /// Operations that failed (a lock wait that timed out, a lost lease).
    errors: u64,
}

impl Samples {
    /// Records an operation that ran from `started` to now.
    pub(crate) fn record(&mut self, window: &Window, started: Instant, handoff: bool) {
        self.record_span(window, started, Instant::now(), handoff);
    }

    /// Records an operation that ran from `started` to `done`.
    pub(crate) fn record_span(
        &mut self,
        window: &Window,
        started: Instant,
        done: Instant,
        handoff: bool,
    ) {
        if !window.counts(done) {
            return;
        }
        let nanos = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
        self.all.push(nanos);
        if handoff {
            self.handoffs.push(nanos);
        }
    }

    /// Counts a failed operation that completed now.
    pub(crate) fn error(&mut self, window: &Window) {
        if window.counts(Instant::now()) {
            self.errors += 1;
        }
    }

    /// Adds another worker's samples to these.
    pub(crate) fn merge(&mut self, other: Samples) {
        self.all.extend(other.all);
        self.handoffs.extend(other.handoffs);
        self.errors += other.errors;
    }

    /// Sorts the samples and reduces them to counts and percentiles.
    pub(crate) fn summarize(mut self) -> Summary {
        self.all.sort_unstable();
        self.handoffs.sort_unstable();
        Summary {
            ops: self.all.len() as u64,
            handoffs: self.handoffs.len() as u64,
            p50_us: percentile_us(&self.all, 0.50),
            p99_us: percentile_us(&self.all, 0.99),
            handoff_p50_us: percentile_us(&self.handoffs, 0.50),
            handoff_p99_us: percentile_us(&self.handoffs, 0.99),
            errors: self.errors,
        }
    }
}

/// Counts and latency percentiles of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    /// Operations counted.
    pub(crate) ops: u64,
    /// Of those, hand-offs.
    pub(crate) handoffs: u64,
    /// Median latency of all operations, in microseconds.
    pub(crate) p50_us: Option<f64>,
    /// 99th percentile latency of all operations, in microseconds.
    pub(crate) p99_us: Option<f64>,
    /// Median latency of the hand-offs, in microseconds.
    pub(crate) handoff_p50_us: Option<f64>,
    /// 99th percentile latency of the hand-offs, in microseconds.
    pub(crate) handoff_p99_us: Option<f64>,
    /// Failed operations.
    pub(crate) errors: u64,
}

/// The nearest-rank percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted: &[u64], quantile: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    let nanos = sorted[rank.clamp(1, sorted.len()) - 1];
    Some(nanos as f64 / 1000.0)
}

/// Waits for async workers and merges their samples; a worker's panic (a
/// mutual-exclusion violation, a failed request) is re-raised here.
pub(crate) async fn join_tasks(handles: Vec<JoinHandle<Samples>>) -> Samples {
    let mut samples = Samples::default();
    for handle in handles {
        match handle.await {
            Ok(worker) => samples.merge(worker),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => panic!("a benchmark task was cancelled: {err}"),
        }
    }
    samples
}

/// Waits for worker threads without blocking the runtime and merges their
/// samples; a worker's panic is re-raised here.
pub(crate) async fn join_threads(handles: Vec<thread::JoinHandle<Samples>>) -> Samples {
    let joined = tokio::task::spawn_blocking(move || {
        let mut samples = Samples::default();
        for handle in handles {
            match handle.join() {
                Ok(worker) => samples.merge(worker),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        samples
    })
    .await;
    match joined {
        Ok(samples) => samples,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => panic!("joining the benchmark threads was cancelled: {err}"),
    }
}

/// Converts a window edge to a tokio instant for `sleep_until`.
pub(crate) fn tokio_instant(at: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).map(|us| us * 1000).collect();
        assert_eq!(percentile_us(&sorted, 0.50), Some(50.0));
        assert_eq!(percentile_us(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile_us(&[7000], 0.99), Some(7.0));
        assert_eq!(percentile_us(&[], 0.5), None);
    }

    #[test]
    fn only_operations_completing_inside_the_window_count() {
        let window = Window::after(Duration::from_secs(3600), Duration::from_secs(1));
        let mut samples = Samples::default();
        samples.record(&window, Instant::now(), true);
        samples.error(&window);
        let summary = samples.summarize();
        assert_eq!((summary.ops, summary.errors), (0, 0));

        let window = Window::after(Duration::ZERO, Duration::from_secs(3600));
        let mut samples = Samples::default();
        samples.record(&window, Instant::now(), true);
        samples.record(&window, Instant::now(), false);
        let summary = samples.summarize();
        assert_eq!((summary.ops, summary.handoffs), (2, 1));
    }
}
