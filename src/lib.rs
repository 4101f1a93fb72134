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
//!
//! ## Cron jobs
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
//! ## Keyed jobs
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
//! ## Queues
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
//! A [`StreamSource`] on the lock client's own Redis server is consumed in
//! batches, with the same guarantees: one request claims every message of a
//! read ([`LockClient::claim_all`]: dedupe check, lock and fence, attempt
//! count, duplicates acknowledged) and one more settles every run that
//! finished together ([`LockClient::settle_all`]: records and effects,
//! releases, history entries, and acknowledgements only where the record
//! was written), so a batch costs three requests (read, claim, settle)
//! whatever its size. On a cluster, with a Redlock or the memory backend,
//! and for what a batch does not take (busy keys, paused jobs, malformed
//! entries, a message's last attempt, jobs with a `rate` or a
//! `concurrency` above one), deliveries are handled one at a time.
//!
//! Keyed runs started through a [`WorkerHandle`] use the same two calls
//! where they fit (a job with dedupe, no wait, no `rate`, a `concurrency`
//! of one, one Redis server or Sentinel's primary): a run alone costs two
//! requests (claim, settle) instead of five, and runs started while
//! another's call is on its way go together in the next one, with the same
//! outcomes as the path one step at a time.
//!
//! ## Losing a lease
//! When a run's lease is lost (Redis unreachable past the lease's
//! deadline, the key gone), the job's future is dropped by default and the
//! run is recorded as lost, never as a success; [`OnLost::Signal`] keeps it
//! running and only signals [`JobContext::lost`]. Never acquiring a lock
//! ([`RunOutcome::Busy`], [`RunOutcome::Duplicate`], a tick skipped because
//! a peer ran it) and losing one mid-run ([`RunOutcome::Lost`]) are
//! distinct outcomes.
//!
//! ## Shutdown
//! [`Worker::run_until`] stops claiming when its shutdown future resolves,
//! lets running jobs finish within the grace period, then cancels them and
//! releases their leases; every run's outcome is recorded before it returns.
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
//!
//! ## Backends
//! - [`LockClient::connect`]: one Redis server. `SET NX PX` takes the key;
//!   release and renewal are Lua scripts that act only while the caller's
//!   owner token still matches, so no client can delete or extend a lock it
//!   does not hold. A token is the holder process's [`owner_id`], the time
//!   of the acquisition and a 128-bit random secret in 43 bytes (short
//!   enough for Redis to keep the value in one allocation): readable as
//!   "who holds it since when" ([`parse_token`], which also reads the longer
//!   hex tokens of earlier versions), unguessable thanks to the secret.
//! - [`LockClient::sentinel`]: the primary that Redis Sentinel names, asked
//!   again whenever a connection breaks or reaches a demoted server, so the
//!   client follows failovers.
//! - [`LockClient::cluster`]: a Redis Cluster; every key of a lock lives in
//!   its key's hash slot (see the [key layout](#key-layout)) and each
//!   request goes to that slot's primary, following `MOVED` and `ASK`.
//!   [`Deployment`] describes any of these (and TLS) in one value, for
//!   [`ClientBuilder::open`] and the worker's stream sources alike.
//! - [`LockClient::redlock`]: one lock over N independent Redis masters: a
//!   majority must grant an acquisition and confirm every renewal, and
//!   fences are chosen and committed so that they still increase though no
//!   node sees every acquisition (the design and its proof are in the
//!   module's source, `redlock.rs`). A node that restarts without its data
//!   must stay out for one maximum ttl before it rejoins.
//! - [`LockClient::memory`]: the same semantics inside one process, for
//!   single-process deployments and for testing code that takes locks.
//!
//! ## Guarantees, and their limits
//! - **Mutual exclusion** holds as long as the Redis server (for Redlock, a
//!   majority of the nodes) keeps its data:
//!   a lock key is never handed to a second owner while the first owner's
//!   lease is valid. One Redis node cannot promise more than it keeps: with
//!   asynchronous replication, a failover to a replica that had not yet
//!   received the lock key can hand it to a second owner
//!   ([`ClientBuilder::min_replicas`] narrows that window, and says what it
//!   cannot close), and an eviction
//!   policy other than `noeviction` can delete a held key under memory
//!   pressure (the client warns about the latter on connect).
//! - **The lost signal** ([`LockGuard::lost`]) fires before the server can
//!   give the key away: its deadline counts from the *send* time of the last
//!   confirmed renewal, with the ttl in whole milliseconds as Redis takes
//!   it, and keeps a drift margin (1 % of the ttl + 3 ms). When an
//!   [`extend`](LockGuard::extend) overlaps a renewal, only the newest
//!   request sent moves the deadline. It cannot stop a process that is
//!   paused (GC, swap, SIGSTOP) from acting after the deadline without
//!   looking.
//! - **Fencing tokens** ([`LockGuard::fence`]) are issued in the same atomic
//!   step as the acquisition and strictly increase per key across all
//!   holders, releases and expiries. They close the gap the lost signal
//!   cannot: a resource that remembers the highest fence it accepted refuses
//!   a paused holder's late write ([`LockClient::fenced_set`] does this for a
//!   Redis value; the same check works as `WHERE fence <= $1` in SQL). A
//!   fence counter the server loses (restart without persistence, failover)
//!   restarts from the server's clock in microseconds, so fences keep
//!   increasing as long as that clock does not step back. Counters expire a
//!   week after they were started, and start again from the clock the same
//!   way, so a lock on every order id does not leave a key per id forever.
//!   [`LockRequest::acquire_unfenced`] leaves the fence out, for callers
//!   with nothing to fence: its [`UnfencedGuard`] has no fence to give.
//! - **Liveness**: a holder that crashes, panics or is aborted stops renewing
//!   and its key expires within one ttl; a dropped guard releases at once.
//!   A *leaked* guard (`std::mem::forget`) looks exactly like a guard held on
//!   purpose and keeps renewing; bound that with [`LockRequest::max_hold`].
//! - **Waiting** is woken by the holder's release, not by polling: waiting
//!   clients queue per key in Redis, and a release wakes the first of them
//!   still listening (Redis pub/sub, one channel per client), so the lock
//!   passes between clients first come, first served and one release sets
//!   off one retry. Jittered polling is only the fallback for a lost wake-up
//!   or an expired key; tasks of one process queue locally, so a process
//!   puts one contender on the wire per key.
//!
//! ## Key layout
//! Under the client's prefix (default `soloist:`), a lock on key `K` keeps
//! `lock:T` (the owner token), `fence:T` (the fence counter, when `K` names
//! its own), `waiters:T` (the queue of waiting clients) and the fenced
//! records written under `K` as `fenced:T`, where `T` is `K` written so that
//! every one of these keys lands in the Redis Cluster hash slot of `K`
//! itself ([`hash_slot`]`(K)`):
//! - `{K}` for a key without a hash tag: `orders:42` → `soloist:lock:{orders:42}`;
//! - `=K` for a key with one, whose tag then decides: `{report}:monday` →
//!   `soloist:lock:={report}:monday`, in the slot of `report`;
//! - `{=K}` for a key with a `}` outside a hash tag, which gets a slot of
//!   its own.
//!
//! So everything one lock needs is one slot, and keys meant to be used
//! together are put in one slot by giving them one hash tag: a fence
//! counter shared by several keys
//! ([`LockRequest::fence_counter`]`("{report}")` for `{report}:monday`), a
//! fenced record or an effect beside its lock
//! ([`colocated`]`("orders:42", ":receipt")` names `{orders:42}:receipt`).
//! On a Redis Cluster a request that would need two slots in one script is
//! refused with [`LockError::InvalidArgument`] before anything is written;
//! on a single server every name works. Wake-ups go over the channel
//! `wake:<client id>` under the same prefix.
//!
//! Keys taken in a batch ([`LockClient::claim_all`], one server only) get
//! their fences from the server's clock and one key, `fence-clock` (the
//! last fence a batch issued), not from a counter of their own: a queue's
//! key per message leaves no counter behind. A key that has a counter
//! still gets a fence above it, and the counter follows.
//!
//! A semaphore named `S` ([`LockClient::semaphore`]) keeps `sem:T` (its
//! holders: a sorted set of owner tokens scored by when each lease runs
//! out on the server's clock), `sem-fence:T` (its fence counter) and
//! `sem-waiters:T` (its queue of waiting clients), `T` being `S` written as
//! above: one slot per semaphore. Its wake-ups carry the name after a NUL
//! byte and `semaphore:`, which keeps them apart from a lock's.
//!
//! ## Semaphores
//! [`LockClient::semaphore`]`(name, n)` lets at most `n` holders in at once.
//! Each [`PermitGuard`] is a lease as a [`LockGuard`] is (renewed by the
//! watchdog, a lost signal, a fence, release on drop), and a dead holder's
//! permit comes back within one ttl: each holder is a member of its own,
//! dropped by the next acquisition once its lease runs out, never a shared
//! counter that a crash leaks or a double release inflates. Releases wake
//! waiting clients as a lock's do. Semaphores work on one server,
//! Sentinel, a Cluster and the memory backend; a Redlock refuses them with
//! [`LockError::InvalidArgument`] (a count kept on independent masters has
//! no majority that could agree on it).
//!
//! A read-write lock named `R` ([`LockClient::rw_lock`]) keeps
//! `rw-readers:T`, `rw-writer:T`, `rw-intent:T` (a waiting writer's),
//! `rw-fence:T` and `rw-waiters:T`, one slot per lock.
//!
//! ## Which primitives work where
//! | primitive | one server, Sentinel | Cluster | memory | Redlock |
//! | --- | --- | --- | --- | --- |
//! | [`LockClient::lock`] | yes | yes | yes | yes |
//! | [`LockClient::lock_all`] | yes | keys of one slot | yes | yes |
//! | [`LockClient::semaphore`] | yes | yes | yes | refused |
//! | [`LockClient::rw_lock`] | yes | yes | yes | refused |
//! | [`LockClient::rate_limit`] | yes | yes | yes | refused |
//!
//! What this is not: exactly-once execution. A lock gives "at most one
//! holder at a time"; whether protected work runs once depends on what the
//! work does when its lease is lost, which is what fencing is for.
//!
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
//! | `worker` | yes | jobs: [`Worker`], cron schedules with time zones ([`CronSchedule`], chrono-tz), keyed runs with dedupe, the [`Source`] trait for queues |
//! | `macros` | yes | `#[exclusive_job]` (implies `worker`) |
//! | `streams` | yes | [`StreamSource`]: jobs consumed from Redis Streams with dead letters (implies `worker`) |
//! | `redlock` | no | [`LockClient::redlock`]: one lock over a majority of independent servers |
//! | `cluster` | no | [`Deployment::cluster`], [`LockClient::cluster`]: Redis Cluster (redis-rs' cluster client) |
//! | `sentinel` | no | [`Deployment::sentinel`], [`LockClient::sentinel`]: a primary managed by Redis Sentinel |
//! | `tls-rustls` | no | `rediss://` URLs, and `tls_root_certificate` / `tls_client_identity` on [`Deployment`] for private CAs and mutual TLS; rustls with the `ring` crypto provider, which builds with a C compiler alone (aws-lc-rs also needs cmake) |
//! | `dashboard` | no | `soloist::dashboard`: the web dashboard, an axum `Router` showing and steering the fleet (the same facts as [`inspect`]), to mount in a service (implies `worker`) |
//! | `full` | no | all of the above |
//!
//! With `default-features = false` only the lock layer is left
//! ([`LockClient`], [`LockGuard`], fencing, the memory backend, one Redis
//! server): no cron, no time-zone database, no proc macro.
//!
//! Without `tls-rustls` a `rediss://` URL is refused at connect with
//! [`LockError::InvalidArgument`] naming `url`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use soloist_core::{
    Admission, Claim, Claimed, ClientBuilder, DEFAULT_TTL, Deployment, FencedValue, FencedWrite,
    Lease, LockClient, LockError, LockGuard, LockRequest, MAX_EFFECT_ARGS, MAX_KEYS, MAX_PERMITS,
    MAX_RATE_COUNT, MAX_RATE_PERIOD, MAX_RECORD_TTL, MAX_TTL, MIN_TTL, MultiLockGuard,
    MultiLockRequest, PermitGuard, RateLimit, Result, RwLock, RwLockGuard, RwLockRequest,
    SemaphoreRequest, Settle, Settled, TokenInfo, UnfencedGuard, colocated, hash_slot, metrics,
    owner_id, parse_token, redis,
};
/// The web dashboard: an axum `Router` to mount in a service (feature `dashboard`).
#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub use soloist_dashboard as dashboard;
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use soloist_macros::exclusive_job;
#[cfg(feature = "worker")]
#[cfg_attr(docsrs, doc(cfg(feature = "worker")))]
pub use soloist_worker::inspect;
/// Metric names of the worker runtime (the lock metrics are in [`metrics`]).
#[cfg(feature = "worker")]
#[cfg_attr(docsrs, doc(cfg(feature = "worker")))]
pub use soloist_worker::metrics as worker_metrics;
#[cfg(feature = "worker")]
#[cfg_attr(docsrs, doc(cfg(feature = "worker")))]
pub use soloist_worker::{
    BoxError, CronFn, CronJob, CronSchedule, DEFAULT_JOB_TTL, DEFAULT_MISFIRE, Delivery,
    DurationError, IntoJob, JobContext, JobContextBuilder, JobSpec, KeyPart, KeyTemplate,
    KeyTemplateError, KeyedFn, KeyedJob, MissedTicks, OnLost, OverRate, Rate, RateError,
    Registration, RunOutcome, ScheduleError, Source, Trigger, Worker, WorkerBuilder, WorkerError,
    WorkerHandle, cron_job, keyed_job, parse_duration, parse_rate,
};
#[cfg(feature = "streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "streams")))]
pub use soloist_worker::{StreamSource, StreamSourceBuilder};

/// What code generated by `#[exclusive_job]` refers to; not a public API.
#[cfg(feature = "macros")]
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
