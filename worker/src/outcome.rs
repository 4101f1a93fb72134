//! How a run ended.

use crate::error::BoxError;

/// The outcome of asking for one run of a keyed job
/// ([`WorkerHandle::run`](crate::WorkerHandle::run)).
///
/// [`Duplicate`](RunOutcome::Duplicate), [`Busy`](RunOutcome::Busy) and
/// [`Paused`](RunOutcome::Paused) mean the job body did not run here: they
/// never took the lock. The rest mean it ran, and say how that ended; only
/// [`Completed`](RunOutcome::Completed) is a success, and only a success is
/// recorded for deduplication.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunOutcome<T> {
    /// The body ran to success under a lease that held throughout.
    Completed(T),
    /// A run with the same key succeeded within the dedupe window: this is
    /// its recorded result, and the body did not run again.
    Duplicate(T),
    /// Another execution holds the key (after the job's wait, if any).
    Busy,
    /// Over the job's rate limit with [`OverRate::Reschedule`](crate::OverRate::Reschedule):
    /// nothing ran; ask again after `retry_after`.
    RateLimited {
        /// How long until the limit would admit a start.
        retry_after: std::time::Duration,
    },
    /// The body failed on every attempt; the last error.
    Failed(BoxError),
    /// The lease was lost while the body ran: the run counts as lost,
    /// whatever the body returned, and nothing was recorded.
    Lost,
    /// The run reached its `max_hold` and was cancelled.
    TimedOut,
    /// The worker shut down and cancelled the run after its grace period.
    Cancelled,
    /// An operator paused the job
    /// ([`Inspector::pause`](crate::inspect::Inspector::pause)): the body did
    /// not run, and nothing was recorded.
    Paused,
}

impl<T> RunOutcome<T> {
    /// The label metrics and logs use for this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::Completed(_) => "success",
            RunOutcome::Duplicate(_) => "duplicate",
            RunOutcome::Busy => "busy",
            RunOutcome::RateLimited { .. } => "rate_limited",
            RunOutcome::Failed(_) => "failure",
            RunOutcome::Lost => "lost",
            RunOutcome::TimedOut => "timed_out",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Paused => "paused",
        }
    }

    /// The successful result, whether from this run or a recorded one.
    pub fn value(self) -> Option<T> {
        match self {
            RunOutcome::Completed(value) | RunOutcome::Duplicate(value) => Some(value),
            _ => None,
        }
    }
}
