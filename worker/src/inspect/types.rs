//! The typed facts inspection returns; each serializes to the JSON the CLI
//! prints with `--json`. Times are Unix milliseconds, durations milliseconds.

use serde::{Deserialize, Serialize};

/// What kind of job a replica runs.
///
/// ```
/// use soloist::inspect::JobKind;
/// assert_eq!(serde_json::to_string(&JobKind::Cron).unwrap(), "\"cron\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobKind {
    /// A cron job: each tick once across the fleet.
    Cron,
    /// A keyed job run on request.
    Keyed,
    /// A keyed job whose runs are consumed from a queue.
    Consumed,
}

/// A job as a replica announces it in the fleet registry.
///
/// ```
/// use soloist::inspect::{JobDecl, JobKind};
/// let decl: JobDecl = serde_json::from_str(r#"{"name":"sweep","kind":"cron","schedule":"0 * * * * *","time_zone":"UTC"}"#).unwrap();
/// assert_eq!(decl.kind, JobKind::Cron);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobDecl {
    /// The job's name.
    pub name: String,
    /// Cron, keyed or consumed.
    pub kind: JobKind,
    /// The cron expression (cron jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The schedule's IANA time zone (cron jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The missed-tick policy, as `Skip`, `RunOnce` or `CatchUp(n)` (cron jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<String>,
    /// The misfire grace in ms (cron jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_ms: Option<u64>,
    /// The key template (keyed and consumed jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_template: Option<String>,
    /// The stream the job is consumed from (consumed jobs on a stream source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// The Redis keys of a stream source, as a replica announces them.
///
/// ```
/// use soloist::inspect::QueueDecl;
/// let queue = QueueDecl::new("orders", "soloist", "{orders}:dead");
/// assert_eq!(queue.stream, "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueDecl {
    /// The stream's key.
    pub stream: String,
    /// The consumer group the workers read with.
    pub group: String,
    /// The dead-letter stream's key.
    pub dead_letters: String,
}

impl QueueDecl {
    /// A stream, its consumer group and its dead-letter stream.
    pub fn new(stream: &str, group: &str, dead_letters: &str) -> Self {
        QueueDecl {
            stream: stream.to_owned(),
            group: group.to_owned(),
            dead_letters: dead_letters.to_owned(),
        }
    }
}

/// A live worker replica, from its registry entry.
///
/// ```
/// # fn show(replica: &soloist::inspect::ReplicaInfo) {
/// println!("{} on {} (pid {}), soloist {}", replica.replica, replica.host, replica.pid, replica.version);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaInfo {
    /// The replica's id ([`Worker::replica`](crate::Worker::replica)).
    pub replica: String,
    /// The owner id its lock tokens carry ([`owner_id`](soloist_core::owner_id)).
    pub owner: String,
    /// The host name it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The soloist version it runs.
    pub version: String,
    /// When it started, by the fleet's (Redis') clock.
    pub started_at_ms: i64,
    /// Its heartbeat period: its entry expires this long after the last beat.
    pub heartbeat_ms: u64,
    /// The jobs it runs.
    pub jobs: Vec<JobDecl>,
    /// The stream sources it consumes.
    #[serde(default)]
    pub queues: Vec<QueueDecl>,
    /// How long its entry lives unless it beats again (filled in on reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// One run of a job, from the job's run history.
///
/// ```
/// # fn show(run: &soloist::inspect::RunRecord) {
/// println!("{} on {}: {} in {} ms", run.job, run.replica, run.outcome, run.duration_ms);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// The history entry's id (a Redis stream id, in order of recording).
    pub id: String,
    /// The job's name.
    pub job: String,
    /// The tick it ran for (cron jobs), in Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<i64>,
    /// Whether it ran because an operator triggered it.
    #[serde(default)]
    pub triggered: bool,
    /// The rendered key (keyed and consumed jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The replica that ran it.
    pub replica: String,
    /// The run's fence.
    pub fence: u64,
    /// How it ended: `success`, `failure`, `lost`, `timed_out`, `cancelled`
    /// or `unrecorded`.
    pub outcome: String,
    /// When the body started, by the fleet's clock.
    pub started_ms: i64,
    /// How long it ran, retries included.
    pub duration_ms: u64,
    /// The last error, for a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A job of the fleet: what the live replicas announce, with its state.
///
/// ```
/// # fn show(job: &soloist::inspect::JobInfo) {
/// println!("{} ({:?}) next {:?} on {:?}", job.decl.name, job.decl.kind, job.next_tick_ms, job.replicas);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job as announced (by the first live replica that runs it).
    #[serde(flatten)]
    pub decl: JobDecl,
    /// Its next tick after the Redis server's clock (cron jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_tick_ms: Option<i64>,
    /// Whether an operator paused it.
    pub paused: bool,
    /// The live replicas that run it.
    pub replicas: Vec<String>,
    /// Its latest recorded run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunRecord>,
}

/// A held lock.
///
/// ```
/// # fn show(lock: &soloist::inspect::LockInfo) {
/// println!("{} held by {:?} for {:?} ms more, {} waiting", lock.key, lock.replica, lock.ttl_ms, lock.waiters);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's key, as it was requested (`LockClient::lock(key)`).
    pub key: String,
    /// The owner id of the holding process, when its token carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The live replica with that owner id, if the registry has one (one
    /// owner id per process: of several replicas in one process, one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// When the holder sent its acquisition, by its own clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// How long the lease lasts unless renewed (`PTTL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// How many clients queue for it.
    pub waiters: u64,
    /// The last fence issued from the key's own counter (the holder's,
    /// unless the lock draws fences from a shared counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// A queue (a Redis stream a worker consumes) and its backlog.
///
/// ```
/// # fn show(queue: &soloist::inspect::QueueInfo) {
/// println!("{}: {} pending, {} dead", queue.decl.stream, queue.pending, queue.dead);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The stream, its group and its dead-letter stream.
    #[serde(flatten)]
    pub decl: QueueDecl,
    /// Entries in the stream (`XLEN`), acknowledged ones kept included.
    pub length: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group, when Redis knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Consumers in the group.
    pub consumers: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
    /// The jobs consumed from it.
    pub jobs: Vec<String>,
}

/// A dead-lettered message.
///
/// ```
/// # fn show(letter: &soloist::inspect::DeadLetter) {
/// println!("{} for {:?}: {:?}", letter.id, letter.job, letter.reason);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's id in the dead-letter stream.
    pub id: String,
    /// The original entry's id in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    /// The job it was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Its rendered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its arguments (JSON, as enqueued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<String>,
    /// How many deliveries it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u32>,
    /// Why it was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The fleet at a glance.
///
/// ```
/// # fn show(status: &soloist::inspect::Status) {
/// println!("{} replicas at {}", status.replicas.len(), status.server_time_ms);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The Redis server's clock.
    pub server_time_ms: i64,
    /// The live replicas.
    pub replicas: Vec<ReplicaInfo>,
    /// The jobs they run.
    pub jobs: Vec<JobInfo>,
    /// The queues they consume.
    pub queues: Vec<QueueInfo>,
}

/// Which runs [`Inspector::runs`](super::Inspector::runs) returns.
///
/// ```
/// use soloist::inspect::RunFilter;
/// let filter = RunFilter::job("sweep").outcome("failure").limit(20);
/// # let _ = filter;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RunFilter {
    pub(crate) job: String,
    pub(crate) outcome: Option<String>,
    pub(crate) limit: usize,
}

impl RunFilter {
    /// The runs of `job`, newest first; at most 100 unless [`limit`](Self::limit) says otherwise.
    pub fn job(job: &str) -> Self {
        RunFilter {
            job: job.to_owned(),
            outcome: None,
            limit: 100,
        }
    }

    /// Only runs that ended with this outcome (`success`, `failure`, ...).
    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = Some(outcome.to_owned());
        self
    }

    /// At most this many runs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}
