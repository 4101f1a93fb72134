//! The soloist worker runtime: cron and keyed jobs that run once across a
//! fleet, each dispatched under a [`soloist_core`] lock.
//!
//! Most users depend on the `soloist` facade crate, which re-exports
//! everything here together with the `#[exclusive_job]` attribute.
//!
//! # Cron jobs
//! Every replica computes the same ticks from the job's schedule and the
//! backend's clock (Redis `TIME`, measured and refreshed, so a replica with
//! a wrong wall clock still agrees), and tries to claim each tick through
//! a lock of its own. One replica wins and runs the tick under a
//! watchdog-renewed lease; the others wait on the lock for the tick's
//! misfire grace. When the run ends for good (success, failure after its
//! retries, or `max_hold`), a done-marker written with the run's fence tells
//! the waiters to stand down; when the runner dies or loses its lease, no
//! marker is written and a waiter takes the tick over.
//!
//! What that adds up to, honestly:
//! - **at most one attempt of a tick at a time**, across the fleet;
//! - **at most one success per tick** — except that a replica killed in the
//!   instant between its job returning and its done-marker being written
//!   leaves the tick to a peer, which runs it again: effects the body
//!   applies itself are at-least-once. Make them idempotent, fence them
//!   with [`JobContext::fence`], or — for Redis effects on one server or a
//!   Redis Cluster (keys named with [`JobContext::colocated`]) — hand them
//!   to [`JobContext::commit_on_success`], which applies them atomically
//!   with the success record, exactly once;
//! - **a tick is lost only if no replica is up during its whole grace**, or
//!   if its run outlives the grace and then dies (no waiter is left to take
//!   it over); ticks the whole fleet missed then follow the job's
//!   [`MissedTicks`] policy when a replica comes back;
//! - **past its grace, a tick that ran is never run again**: a tick runs
//!   only once it is recorded as the job's latest claimed tick (or a later
//!   one is), and a replica that starts after a fleet-wide outage recovers
//!   only ticks after that record, however long ago their done-markers
//!   expired.
//!
//! Each tick has its own lock, so runs of *different* ticks may overlap
//! when a run outlasts the schedule's interval; bound runs with
//! `max_hold` where that matters.
//!
//! # Keyed jobs
//! [`WorkerHandle::run`] renders the job's key from its arguments and runs
//! the body under that key's lock: one execution at a time per key across
//! the fleet. With `dedupe`, a success is recorded (serialized, with the
//! run's fence) for the window, and later requests get it back as
//! [`RunOutcome::Duplicate`] without running the body. The same caveat
//! holds: a success is recorded after the body returns, so a crash in
//! between runs the body again on the next request — but effects committed
//! through [`JobContext::commit_on_success`] apply with the record or not
//! at all.
//!
//! # Queues
//! [`WorkerBuilder::consume`] joins an at-least-once queue (a [`Source`],
//! such as [`StreamSource`] on Redis Streams) to a keyed job with dedupe.
//! A delivery is acknowledged only after its run's outcome is recorded, so
//! a message is never lost by a consumer dying mid-run, and a redelivered
//! message whose key already succeeded is acknowledged without running:
//! each message's job completes once, and its effects apply exactly once
//! when committed with [`JobContext::commit_on_success`] (otherwise with
//! the same caveat as above). Messages whose runs keep failing (or timing
//! out, or dying with their consumer) go to the dead letters after the
//! source's `max_deliveries` runs; deliveries that could not run (a busy
//! key, an unreachable lock backend) do not count. Messages that cannot be
//! decoded go at once. The job's dedupe window must be at least the
//! source's visibility timeout.
//!
//! # Losing a lease
//! When a run's lease is lost (Redis unreachable past the lease's
//! deadline, the key gone), the job's future is dropped by default and the
//! run is recorded as lost, never as a success; [`OnLost::Signal`] keeps it
//! running and only signals [`JobContext::lost`]. Never acquiring a lock
//! ([`RunOutcome::Busy`], [`RunOutcome::Duplicate`], a tick skipped because
//! a peer ran it) and losing one mid-run ([`RunOutcome::Lost`]) are
//! distinct outcomes.
//!
//! # Shutdown
//! [`Worker::run_until`] stops claiming when its shutdown future resolves,
//! lets running jobs finish within the grace period, then cancels them and
//! releases their leases; every run's outcome is recorded before it returns.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
mod consume;
mod context;
mod cron;
mod error;
mod job;
mod key;
mod keyed;
mod limit;
pub mod metrics;
mod outcome;
mod run;
mod schedule;
mod source;
mod spec;
mod streams;
mod worker;

pub use context::{JobContext, JobContextBuilder};
pub use error::{BoxError, Result, WorkerError};
pub use job::{CronFn, CronJob, IntoJob, KeyedFn, KeyedJob, Registration, cron_job, keyed_job};
pub use key::KeyPart;
pub use outcome::RunOutcome;
pub use schedule::{CronSchedule, ScheduleError};
pub use source::{Delivery, Source};
pub use spec::{
    DEFAULT_JOB_TTL, DEFAULT_MISFIRE, DurationError, JobSpec, KeyTemplate, KeyTemplateError,
    MissedTicks, OnLost, OverRate, Rate, RateError, Trigger, parse_duration, parse_rate,
};
pub use streams::{StreamSource, StreamSourceBuilder};
pub use worker::{Worker, WorkerBuilder, WorkerHandle};
