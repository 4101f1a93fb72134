//! # soloist: run a job once across a fleet
//!
//! Teams run the same service on many replicas; some work must happen on
//! only one of them at a time: a nightly report, a cron sweep, the charge
//! for invoice 42 that a queue delivered twice. soloist runs that work
//! under an auto-renewing Redis lock — watchdog extension, fencing token,
//! lost-lease signal — so that it happens once across the fleet.
//!
//! This crate is the facade: depend on it alone. It re-exports the job
//! runtime of `soloist-worker`, the `#[exclusive_job]` attribute of
//! `soloist-macros` and the lock primitives of `soloist-core`.
//!
//! # Jobs
//! ```no_run
//! use soloist::{JobContext, LockClient, RunOutcome, Worker, exclusive_job};
//!
//! #[exclusive_job(cron = "0 */5 * * * *", tz = "Europe/Berlin", ttl = "30s")]
//! async fn rollup(ctx: JobContext) -> Result<(), std::io::Error> {
//!     // ... pass ctx.fence() along with every write ...
//!     Ok(())
//! }
//!
//! #[exclusive_job(key = "invoice:{invoice_id}", ttl = "1m", dedupe = "24h")]
//! async fn charge(ctx: JobContext, invoice_id: u64) -> Result<u64, std::io::Error> {
//!     Ok(invoice_id * 100)
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
//! let worker = Worker::builder(locks).job(rollup).job(charge).build()?;
//! if let RunOutcome::Completed(cents) = worker.handle().run(charge, 42).await? {
//!     println!("charged {cents}");
//! }
//! worker.run_until(tokio::signal::ctrl_c()).await?;
//! # Ok(()) }
//! ```
//! What a worker promises — one attempt of a cron tick at a time, one
//! success per tick or per deduped key, and where that stops being
//! exactly-once — is set out in the [`soloist_worker`] documentation.
//!
//! # Locks
//! ```no_run
//! use std::time::Duration;
//! use soloist::{LockClient, LockError};
//!
//! # async fn demo() -> Result<(), LockError> {
//! let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
//! let guard = locks
//!     .lock("orders:42")
//!     .ttl(Duration::from_secs(30))
//!     .wait(Duration::from_secs(5))
//!     .acquire()
//!     .await?;
//! // ... the work only one replica may do, writing with guard.fence() ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//! What a lock promises, and what it cannot, is set out in the
//! [`soloist_core`] documentation; the short form: at most one holder at a
//! time while Redis (or a Redlock majority) keeps its data, a lost signal
//! that fires before the server can hand the key to someone else, and
//! fencing tokens that let the resource itself refuse a stale holder's
//! writes.
//!
//! # Where Redis is
//! [`LockClient::connect`] takes one server's URL; [`Deployment`] describes
//! any deployment — one server, a Sentinel-managed primary
//! ([`LockClient::sentinel`]) or a Redis Cluster ([`LockClient::cluster`]) —
//! with its TLS settings, for [`ClientBuilder::open`] and
//! [`StreamSourceBuilder::open`] alike. On a cluster every key one lock
//! needs shares the hash slot of the lock's key ([`hash_slot`]), and keys
//! used together are named with one hash tag ([`colocated`]).
//!
//! **Reconnection.** A connection that fails at the transport level, or
//! reaches a server that answers as a replica (`READONLY`, after a
//! failover), is replaced at the next request; with Sentinel the next
//! connection asks the sentinels for the primary again, and a cluster
//! connection follows `MOVED` / `ASK` and reconnects by itself. The request
//! that met the failure gets the error ([`LockError::is_transient`] says
//! whether trying again may help); the watchdog retries renewals while the
//! lease lasts, and the worker retries claims, commits and queue reads.
//!
//! # Schedules
//! `#[exclusive_job(cron = "...")]` and [`CronSchedule`] take the crontab's
//! five fields (`*/5 * * * *`, firing at second 0), six or seven fields
//! with seconds first, or `@hourly`, `@daily`, `@weekly`, `@monthly`,
//! `@yearly`, evaluated in the job's IANA time zone (`tz = "Europe/Berlin"`,
//! default UTC). The attribute checks the expression at compile time with
//! the worker's own parser.
//!
//! # Logs
//! soloist logs through [`tracing`](https://docs.rs/tracing) under the
//! targets `soloist_core` (connections, renewals, lost leases, an unsafe
//! eviction policy) and `soloist_worker` (claims, missed ticks, runs, queue
//! deliveries); each run has a `soloist.job` span with its job, key or
//! tick, and fence. With `tracing-subscriber`, for example:
//! `RUST_LOG=soloist_core=info,soloist_worker=debug`.
//!
//! # Operating a fleet
//! [`inspect::Inspector`] reads what the workers of a Redis backend keep
//! for operators — live replicas (an expiring registry), jobs with their
//! next tick and last run, each job's run history, lock holders and their
//! remaining ttl, queues and dead letters — and steers them: pause, resume,
//! trigger a cron job now (once across the fleet), replay or purge dead
//! letters. The [`inspect`] module docs say what each guarantees. The
//! `soloist` command line (package `soloist-cli`) prints the same values,
//! and with the `dashboard` feature `soloist::dashboard` serves them as web
//! pages (an axum `Router` to mount; `soloist dashboard` serves it alone).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `tls-rustls` | no | `rediss://` URLs, and `tls_root_certificate` / `tls_client_identity` on [`Deployment`] for private CAs and mutual TLS; rustls with the `ring` crypto provider, which builds with a C compiler alone (aws-lc-rs also needs cmake) |
//! | `dashboard` | no | `soloist::dashboard`: the web dashboard, an axum `Router` showing and steering the fleet (the same facts as [`inspect`]), to mount in a service |
//!
//! Without `tls-rustls` a `rediss://` URL is refused at connect with
//! [`LockError::InvalidArgument`] naming `url`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use soloist_core::{
    ClientBuilder, DEFAULT_TTL, Deployment, FencedValue, FencedWrite, Lease, LockClient, LockError,
    LockGuard, LockRequest, MAX_EFFECT_ARGS, MAX_RECORD_TTL, MAX_TTL, MIN_TTL, Result, TokenInfo,
    colocated, hash_slot, metrics, owner_id, parse_token, redis,
};
/// The web dashboard: an axum `Router` to mount in a service (feature `dashboard`).
#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub use soloist_dashboard as dashboard;
pub use soloist_macros::exclusive_job;
/// Metric names of the worker runtime (the lock metrics are in [`metrics`]).
pub use soloist_worker::inspect;
pub use soloist_worker::metrics as worker_metrics;
pub use soloist_worker::{
    BoxError, CronFn, CronJob, CronSchedule, DEFAULT_JOB_TTL, DEFAULT_MISFIRE, DurationError,
    IntoJob, JobContext, JobContextBuilder, JobSpec, KeyPart, KeyTemplate, KeyTemplateError,
    KeyedFn, KeyedJob, MissedTicks, OnLost, Registration, RunOutcome, ScheduleError, Trigger,
    Worker, WorkerBuilder, WorkerError, WorkerHandle, cron_job, keyed_job, parse_duration,
};
pub use soloist_worker::{Delivery, Source, StreamSource, StreamSourceBuilder};

/// What code generated by `#[exclusive_job]` refers to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use serde::Serialize;
    pub use serde::de::DeserializeOwned;
    pub use soloist_worker::{
        BoxError, CronJob, IntoJob, JobContext, JobSpec, KeyPart, KeyedJob, MissedTicks, OnLost,
        Registration, Result, WorkerError,
    };
    pub use std::time::Duration;
}
