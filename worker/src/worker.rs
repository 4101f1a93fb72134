//! The worker: a registry of jobs, the schedulers of its cron jobs, and
//! graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use soloist_core::LockClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{FleetClock, REFRESH};
use crate::consume::{Consumed, Erased, check as check_consumable, consume};
use crate::cron::{CronEntry, schedule, triggers};
use crate::error::{Result, WorkerError};
use crate::fleet::{Announcement, Fleet, host_name};
use crate::inspect::{JobDecl, JobKind, QueueDecl, ReplicaInfo};
use crate::job::{IntoJob, KeyedJob, Kind, Registration};
use crate::keyed;
use crate::outcome::RunOutcome;
use crate::source::Source;
use crate::spec::{JobSpec, Trigger};
use soloist_parse::MAX_SETTING;

/// The most deliveries per source a replica may run at once.
const MAX_IN_FLIGHT: usize = 10_000;
/// How many runs each job's history keeps by default.
const DEFAULT_HISTORY_LIMIT: u64 = 5_000;
/// The most runs a job's history may be set to keep.
const MAX_HISTORY_LIMIT: u64 = 10_000_000;
/// How long a replica's registry entry lives without a beat, by default.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// What every part of a running worker shares.
pub(crate) struct Shared {
    pub(crate) locks: LockClient,
    pub(crate) replica: String,
    pub(crate) clock: FleetClock,
    /// Cancelled when shutdown starts: no new claims or runs.
    pub(crate) stop_claiming: CancellationToken,
    /// Cancelled when the shutdown grace period is over: running jobs stop.
    pub(crate) cancel_runs: CancellationToken,
    /// Every run in progress, so shutdown can wait for them.
    pub(crate) runs: TaskTracker,
    /// The source each consumed job is enqueued on, by job name.
    pub(crate) queues: HashMap<String, Arc<dyn Source>>,
    /// The run history, registry and controls, on a Redis backend.
    pub(crate) fleet: Option<Arc<Fleet>>,
    /// The claim and settle calls keyed runs share (see `gather.rs`),
    /// started with the first.
    pub(crate) gather: std::sync::OnceLock<crate::gather::Gather>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("replica", &self.replica)
            .field("queues", &self.queues.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One `consume` registration: a source and a job read from it.
struct Consumption {
    source: Arc<dyn Source>,
    spec: Result<JobSpec>,
    job: Arc<dyn Consumed>,
}

/// A source and the jobs consumed from it, by name.
struct Consumer {
    source: Arc<dyn Source>,
    jobs: HashMap<String, Arc<dyn Consumed>>,
}

/// Runs registered jobs: every cron tick once across the fleet of workers
/// sharing a lock backend, and keyed jobs on request through a
/// [`WorkerHandle`].
///
/// ```no_run
/// use soloist::{JobContext, JobSpec, LockClient, Worker, cron_job};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
/// let sweep = cron_job(JobSpec::cron("sweep", "0 * * * * *", "UTC")?, |ctx: JobContext| async move {
///     println!("tick {:?} with fence {}", ctx.scheduled_at(), ctx.fence());
///     Ok::<_, std::io::Error>(())
/// });
/// let worker = Worker::builder(locks).job(sweep).build()?;
/// worker.run_until(tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    shared: Arc<Shared>,
    cron: Vec<CronEntry>,
    consumers: Vec<Consumer>,
    in_flight: usize,
    shutdown_grace: Duration,
    announcement: Announcement,
    heartbeat: Duration,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("replica", &self.shared.replica)
            .field("cron", &self.cron)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Worker`]; see [`Worker::builder`].
#[must_use]
pub struct WorkerBuilder {
    locks: LockClient,
    jobs: Vec<Registration>,
    consumed: Vec<Consumption>,
    in_flight: usize,
    replica: Option<String>,
    shutdown_grace: Duration,
    local_clock_error: TimeDelta,
    history_limit: u64,
    heartbeat: Duration,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("jobs", &self.jobs)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts configuring a worker on `locks`: a Redis, Redlock or memory
    /// [`LockClient`]. Workers that should run each job once between them
    /// need the same backend and key prefix.
    pub fn builder(locks: LockClient) -> WorkerBuilder {
        WorkerBuilder {
            locks,
            jobs: Vec::new(),
            consumed: Vec::new(),
            in_flight: 16,
            replica: None,
            shutdown_grace: Duration::from_secs(30),
            local_clock_error: TimeDelta::zero(),
            history_limit: DEFAULT_HISTORY_LIMIT,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }

    /// A cloneable handle for running keyed jobs, usable while the worker
    /// runs (and before it does).
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The id this replica runs jobs under.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// Runs the cron schedulers until `shutdown` resolves, then shuts down
    /// gracefully: no new claims or runs, running jobs get the grace period
    /// to finish, after which they are cancelled and their leases released.
    /// Returns once every run has ended and its outcome is recorded.
    pub async fn run_until<F: Future>(self, shutdown: F) -> Result<()> {
        let shared = self.shared;
        if let Err(err) = shared.clock.refresh().await {
            tracing::warn!(error = %err, "cannot read the backend's clock yet; using the local clock");
        }
        let mut schedulers = tokio::task::JoinSet::new();
        let mut cron_jobs = HashMap::new();
        for entry in self.cron {
            let entry = Arc::new(entry);
            cron_jobs.insert(entry.spec.name.clone(), entry.clone());
            schedulers.spawn(schedule(shared.clone(), entry));
        }
        schedulers.spawn(triggers(shared.clone(), cron_jobs));
        for consumer in self.consumers {
            let jobs = Arc::new(consumer.jobs);
            schedulers.spawn(consume(
                shared.clone(),
                consumer.source,
                jobs,
                self.in_flight,
            ));
        }
        if let Some(fleet) = shared.fleet.clone() {
            let entry = ReplicaInfo {
                replica: shared.replica.clone(),
                owner: soloist_core::owner_id().to_owned(),
                host: host_name(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at_ms: shared.clock.now().timestamp_millis(),
                heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
                jobs: self.announcement.jobs,
                queues: self.announcement.queues,
                expires_in_ms: None,
            };
            let (shared, heartbeat) = (shared.clone(), self.heartbeat);
            schedulers.spawn(async move {
                // Three beats per period: one lost or late beat does not
                // make a live replica look gone.
                loop {
                    if let Err(err) = fleet.announce(&entry, heartbeat).await {
                        tracing::warn!(error = %err, "cannot announce this replica in the registry");
                    }
                    tokio::select! {
                        () = shared.stop_claiming.cancelled() => return,
                        () = tokio::time::sleep(heartbeat / 3) => {}
                    }
                }
            });
        }
        let refresher = shared.clone();
        schedulers.spawn(async move {
            loop {
                tokio::select! {
                    () = refresher.stop_claiming.cancelled() => return,
                    () = tokio::time::sleep(REFRESH) => {}
                }
                if let Err(err) = refresher.clock.refresh().await {
                    tracing::debug!(error = %err, "clock refresh failed");
                }
            }
        });
        shutdown.await;
        tracing::info!(replica = %shared.replica, "shutting down: no new runs");
        shared.stop_claiming.cancel();
        while schedulers.join_next().await.is_some() {}
        shared.runs.close();
        if tokio::time::timeout(self.shutdown_grace, shared.runs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?self.shutdown_grace,
                "runs still going after the shutdown grace period; cancelling them"
            );
            shared.cancel_runs.cancel();
            shared.runs.wait().await;
        }
        if let Some(fleet) = &shared.fleet
            && let Err(err) = fleet.withdraw(&shared.replica).await
        {
            tracing::debug!(error = %err, "cannot withdraw this replica from the registry; it expires");
        }
        Ok(())
    }
}

impl WorkerBuilder {
    /// Registers a job: a fn annotated with `#[exclusive_job]`, or one
    /// built with [`cron_job`](crate::cron_job) / [`keyed_job`](crate::keyed_job).
    pub fn job(mut self, job: impl IntoJob) -> Self {
        self.jobs.push(job.into_job());
        self
    }

    /// Consumes `job`'s queued runs from `source`: each delivery runs the
    /// job and is acknowledged once its outcome is recorded; see
    /// [`Source`]. The job needs `dedupe`, which turns redeliveries into
    /// duplicates. Several jobs may share one source (by its
    /// [`name`](Source::name)); [`WorkerHandle::enqueue`] queues runs on it.
    pub fn consume<J: KeyedJob + 'static>(mut self, source: impl Source, job: J) -> Self {
        self.consumed.push(Consumption {
            source: Arc::new(source),
            spec: job.spec(),
            job: Arc::new(Erased::new(job)),
        });
        self
    }

    /// How many deliveries per source may run at once on this replica;
    /// default 16, at most 10,000. A source is read only when a slot is free.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = max;
        self
    }

    /// The id this replica runs jobs under, as jobs see it in
    /// [`JobContext::replica`](crate::JobContext::replica); default: the
    /// process id and a random suffix.
    pub fn replica_id(mut self, id: impl Into<String>) -> Self {
        self.replica = Some(id.into());
        self
    }

    /// How long running jobs may take to finish after shutdown starts,
    /// before they are cancelled; default 30 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// About how many runs each job's history keeps, the oldest dropped
    /// first (`XADD MAXLEN ~`, so a few more at times); default 5,000,
    /// between 1 and 10,000,000. The fleet's replicas should agree: each
    /// trims to its own setting as it records.
    ///
    /// ```
    /// # let locks = soloist::LockClient::memory();
    /// let worker = soloist::Worker::builder(locks).history_limit(20_000).build().unwrap();
    /// # let _ = worker;
    /// ```
    pub fn history_limit(mut self, runs: u64) -> Self {
        self.history_limit = runs;
        self
    }

    /// How long this replica's registry entry lives without a beat; it
    /// beats three times per period, so a replica killed shows as gone
    /// within one period. Default 15 s, between 1 s and 1 h.
    ///
    /// ```
    /// # let locks = soloist::LockClient::memory();
    /// let worker = soloist::Worker::builder(locks)
    ///     .heartbeat(std::time::Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// # let _ = worker;
    /// ```
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// Makes this replica's local clock wrong by `error`, to show that the
    /// fleet's clock, not the local one, decides when ticks are due.
    #[doc(hidden)]
    pub fn local_clock_error(mut self, error: TimeDelta) -> Self {
        self.local_clock_error = error;
        self
    }

    /// Checks every job and builds the worker.
    pub fn build(self) -> Result<Worker> {
        let mut names = HashSet::new();
        let mut cron = Vec::new();
        let mut announcement = Announcement {
            jobs: Vec::new(),
            queues: Vec::new(),
        };
        for registration in self.jobs {
            let (spec, cron_job) = match registration.kind {
                Kind::Cron(job) => (job.spec()?, Some(job)),
                Kind::Keyed(spec) => ((*spec)?, None),
            };
            spec.validate()?;
            if !names.insert(spec.name.clone()) {
                return Err(WorkerError::DuplicateJob(spec.name));
            }
            announcement.jobs.push(declare(&spec, None));
            if let (Some(job), Trigger::Cron(schedule)) = (cron_job, &spec.trigger) {
                cron.push(CronEntry {
                    job,
                    schedule: schedule.clone(),
                    spec,
                });
            }
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.in_flight) {
            return Err(WorkerError::invalid(
                "-",
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        if self.local_clock_error.abs() > TimeDelta::days(365) {
            return Err(WorkerError::invalid(
                "-",
                "local_clock_error",
                "must be at most a year",
            ));
        }
        if self.shutdown_grace > MAX_SETTING {
            return Err(WorkerError::invalid(
                "-",
                "shutdown_grace",
                "must be at most a year",
            ));
        }
        let mut consumers: Vec<Consumer> = Vec::new();
        let mut queues = HashMap::new();
        for Consumption { source, spec, job } in self.consumed {
            let spec = spec?;
            spec.validate()?;
            check_consumable(&spec, source.as_ref())?;
            if queues.insert(spec.name.clone(), source.clone()).is_some() {
                return Err(WorkerError::DuplicateJob(spec.name));
            }
            let stream = source.stream_names();
            announcement.jobs.retain(|job| job.name != spec.name);
            announcement
                .jobs
                .push(declare(&spec, Some(stream.as_ref())));
            if let Some(stream) = stream
                && !announcement.queues.contains(&stream)
            {
                announcement.queues.push(stream);
            }
            match consumers
                .iter_mut()
                .find(|c| c.source.name() == source.name())
            {
                Some(consumer) => {
                    consumer.jobs.insert(spec.name, job);
                }
                None => consumers.push(Consumer {
                    source,
                    jobs: HashMap::from([(spec.name, job)]),
                }),
            }
        }
        if !(1..=MAX_HISTORY_LIMIT).contains(&self.history_limit) {
            return Err(WorkerError::invalid(
                "-",
                "history_limit",
                format!("must be between 1 and {MAX_HISTORY_LIMIT}"),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.heartbeat) {
            return Err(WorkerError::invalid(
                "-",
                "heartbeat",
                "must be between 1 s and 1 h",
            ));
        }
        let replica = self
            .replica
            .unwrap_or_else(|| format!("{}-{:04x}", std::process::id(), rand::random::<u16>()));
        let locks_for_fleet = self.locks.clone();
        Ok(Worker {
            shared: Arc::new(Shared {
                clock: FleetClock::new(self.locks.clone(), self.local_clock_error),
                locks: self.locks,
                replica,
                stop_claiming: CancellationToken::new(),
                cancel_runs: CancellationToken::new(),
                runs: TaskTracker::new(),
                queues,
                fleet: Fleet::new(&locks_for_fleet, self.history_limit).map(Arc::new),
                gather: std::sync::OnceLock::new(),
            }),
            cron,
            consumers,
            in_flight: self.in_flight,
            shutdown_grace: self.shutdown_grace,
            announcement,
            heartbeat: self.heartbeat,
        })
    }
}

/// How `spec` is announced in the registry; `queue` is `Some` for a
/// consumed job (with its stream, when the source is one).
fn declare(spec: &JobSpec, queue: Option<Option<&QueueDecl>>) -> JobDecl {
    let mut decl = JobDecl {
        name: spec.name.clone(),
        kind: if queue.is_some() {
            JobKind::Consumed
        } else {
            JobKind::Keyed
        },
        schedule: None,
        time_zone: None,
        missed: None,
        misfire_ms: None,
        key_template: None,
        queue: queue.flatten().map(|queue| queue.stream.clone()),
    };
    match &spec.trigger {
        Trigger::Cron(schedule) => {
            decl.kind = JobKind::Cron;
            decl.schedule = Some(schedule.expression().to_owned());
            decl.time_zone = Some(schedule.time_zone().to_owned());
            decl.missed = Some(format!("{:?}", spec.missed));
            decl.misfire_ms = Some(u64::try_from(spec.misfire.as_millis()).unwrap_or(u64::MAX));
        }
        Trigger::Keyed(template) => decl.key_template = Some(template.as_str().to_owned()),
    }
    decl
}

/// Runs keyed jobs on a worker's lock backend; cheap to clone.
///
/// ```no_run
/// use soloist::{JobContext, JobSpec, LockClient, RunOutcome, Worker, keyed_job};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let charge = keyed_job(
///     JobSpec::keyed("charge", "invoice:{id}")?.dedupe(std::time::Duration::from_secs(86_400)),
///     |id: &u64| format!("invoice:{id}"),
///     |ctx: JobContext, id: u64| async move { Ok::<_, std::io::Error>(format!("receipt-{id}")) },
/// );
/// let worker = Worker::builder(LockClient::memory()).build()?;
/// match worker.handle().run(&charge, 42).await? {
///     RunOutcome::Completed(receipt) => println!("charged: {receipt}"),
///     RunOutcome::Duplicate(receipt) => println!("already charged: {receipt}"),
///     RunOutcome::Busy => println!("being charged elsewhere right now"),
///     other => println!("not charged: {}", other.label()),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// Runs `job` with `args` once, unless its key is running elsewhere
    /// ([`RunOutcome::Busy`]) or, with dedupe, already succeeded within
    /// the window ([`RunOutcome::Duplicate`]). Fails only when the lock
    /// backend does, for invalid job settings, or during shutdown.
    ///
    /// A job with dedupe, no wait, no `rate` and a `concurrency` of one, on
    /// a backend that batches ([`LockClient::batches`](soloist_core::LockClient::batches)),
    /// costs two requests: one claims the key (dedupe record, lock, fence)
    /// and one settles the run (record and effects while the lock holds,
    /// release, history entry); runs started while another's call is on
    /// its way share the next call. Other jobs read the record, take the
    /// lock, read the record again, commit and release one request at a
    /// time. Both come to the same outcomes.
    pub async fn run<J: KeyedJob>(&self, job: J, args: J::Args) -> Result<RunOutcome<J::Output>> {
        if self.shared.stop_claiming.is_cancelled() {
            return Err(WorkerError::ShuttingDown);
        }
        let run = keyed::run(self.shared.clone(), job, args);
        self.shared.runs.track_future(run).await
    }

    /// Queues a run of `job` with `args` on the source the job is consumed
    /// from ([`WorkerBuilder::consume`]); some replica consuming it runs it.
    /// Returns the message's id.
    pub async fn enqueue<J: KeyedJob>(&self, job: J, args: J::Args) -> Result<String> {
        let spec = job.spec()?;
        let source = self
            .shared
            .queues
            .get(&spec.name)
            .ok_or_else(|| WorkerError::NotConsumed(spec.name.clone()))?;
        let payload = serde_json::to_vec(&args).map_err(|source| WorkerError::Serde {
            job: spec.name.clone(),
            source,
        })?;
        source
            .enqueue(&spec.name, &job.key(&args), payload)
            .await
            .map_err(WorkerError::Source)
    }
}
