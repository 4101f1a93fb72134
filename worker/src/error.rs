use soloist_core::LockError;

/// A job's own error, as the runtime carries it: any error type works.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in the worker runtime itself (a job's own failure is
/// an outcome, [`RunOutcome::Failed`](crate::RunOutcome::Failed), not this).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A job definition was invalid; `name` says which setting.
    #[error("invalid job `{job}`: `{name}`: {reason}")]
    InvalidJob {
        /// The job's name.
        job: String,
        /// The offending setting, e.g. `cron` or `tz`.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Two jobs were registered under one name.
    #[error("two jobs are named `{0}`")]
    DuplicateJob(String),
    /// The lock backend failed; the message is the lock error's.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A keyed job's arguments or result could not be (de)serialized.
    #[error("cannot (de)serialize the data of job `{job}`")]
    Serde {
        /// The job's name.
        job: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A job was enqueued that no registered source consumes.
    #[error("no source consumes job `{0}`: register it with `WorkerBuilder::consume`")]
    NotConsumed(String),
    /// A queue source failed; the message includes the source's error.
    #[error("queue source failed: {0}")]
    Source(BoxError),
    /// The worker is shutting down and starts no new runs.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// Inspection needs a Redis backend (one server, Sentinel or a
    /// cluster): a Redlock or the memory backend keeps no fleet records.
    #[error(
        "nothing to inspect: the lock client is a Redlock or the memory backend, whose workers keep no fleet records"
    )]
    NotInspectable,
    /// No live replica announces a job of this name.
    #[error("no live replica runs job `{0}`")]
    UnknownJob(String),
    /// No live replica consumes a stream of this name.
    #[error("no live replica consumes stream `{0}`")]
    UnknownQueue(String),
    /// Only cron jobs can be triggered.
    #[error("job `{0}` is not a cron job; only cron jobs can be triggered")]
    NotCron(String),
    /// A paused job cannot be triggered.
    #[error("job `{0}` is paused; resume it before triggering it")]
    JobPaused(String),
    /// A run's body succeeded, but the record of its success (the dedupe
    /// record, with its committed effects) could not be confirmed written:
    /// the backend kept failing while the lease lasted, or refused the
    /// record. The key may not be marked done, so a later request, or a
    /// redelivery, may run it again; whether the committed effects were
    /// applied is known from the record alone.
    #[error("job `{job}` succeeded, but its success could not be recorded")]
    Unrecorded {
        /// The job's name.
        job: String,
        /// The last error writing the record.
        #[source]
        source: LockError,
    },
}

/// `Result` with [`WorkerError`] as the default error.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    pub(crate) fn invalid(job: &str, name: &'static str, reason: impl Into<String>) -> Self {
        WorkerError::InvalidJob {
            job: job.to_owned(),
            name,
            reason: reason.into(),
        }
    }
}
