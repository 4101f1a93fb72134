//! The soloist worker runtime: cron and keyed jobs that run once across a
//! fleet, each dispatched under a [`soloist_core`] lock.
//!
//! Most users depend on the `soloist` facade crate, which re-exports
//! everything here together with the `#[exclusive_job]` attribute.

mod context;
mod error;
mod job;
mod schedule;
mod spec;

pub use context::{JobContext, JobContextBuilder};
pub use error::{BoxError, Result, WorkerError};
pub use job::{CronFn, CronJob, IntoJob, KeyedFn, KeyedJob, Registration, cron_job, keyed_job};
pub use schedule::{CronSchedule, ScheduleError};
pub use spec::{
    DEFAULT_JOB_TTL, DEFAULT_MISFIRE, JobSpec, KeyTemplate, MissedTicks, OnLost, Trigger,
    parse_duration,
};
