//! The soloist worker runtime: cron and keyed jobs that run once across a
//! fleet, each dispatched under a [`soloist_core`] lock.
//!
//! Most users depend on the `soloist` facade crate, which re-exports
//! everything here together with the `#[exclusive_job]` attribute.

mod clock;
mod context;
mod cron;
mod error;
mod job;
mod keyed;
pub mod metrics;
mod outcome;
mod run;
mod schedule;
mod spec;
mod worker;

pub use context::{JobContext, JobContextBuilder};
pub use error::{BoxError, Result, WorkerError};
pub use job::{CronFn, CronJob, IntoJob, KeyedFn, KeyedJob, Registration, cron_job, keyed_job};
pub use outcome::RunOutcome;
pub use schedule::{CronSchedule, ScheduleError};
pub use spec::{
    DEFAULT_JOB_TTL, DEFAULT_MISFIRE, JobSpec, KeyTemplate, MissedTicks, OnLost, Trigger,
    parse_duration,
};
pub use worker::{Worker, WorkerBuilder, WorkerHandle};
