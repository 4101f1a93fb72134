//! The soloist worker runtime: cron and keyed jobs that run once across a
//! fleet, each dispatched under a [`soloist_core`] lock.
//!
//! Most users depend on the `soloist` facade crate, which re-exports
//! everything here together with the `#[exclusive_job]` attribute.
//!
//! What a worker promises — one attempt of a cron tick at a time, one
//! success per tick or per deduped key, each queued message's job completed
//! once, and where each of these stops — is set out in the
//! [soloist documentation](https://docs.rs/soloist/latest/soloist/#jobs).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "streams")]
mod batch;
mod clock;
mod consume;
mod context;
mod cron;
mod error;
mod fleet;
mod gather;
pub mod inspect;
mod job;
mod keyed;
mod limit;
pub mod metrics;
mod outcome;
mod run;
mod source;
mod spec;
#[cfg(feature = "streams")]
mod streams;
mod worker;

pub use context::{JobContext, JobContextBuilder};
pub use error::{BoxError, Result, WorkerError};
pub use job::{CronFn, CronJob, IntoJob, KeyedFn, KeyedJob, Registration, cron_job, keyed_job};
pub use outcome::RunOutcome;
pub use soloist_parse::{
    CronSchedule, DurationError, KeyPart, KeyTemplate, KeyTemplateError, Rate, RateError,
    ScheduleError, parse_duration, parse_rate,
};
pub use source::{Delivery, Source};
pub use spec::{DEFAULT_JOB_TTL, DEFAULT_MISFIRE, JobSpec, MissedTicks, OnLost, OverRate, Trigger};
#[cfg(feature = "streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "streams")))]
pub use streams::{StreamSource, StreamSourceBuilder};
pub use worker::{Worker, WorkerBuilder, WorkerHandle};
