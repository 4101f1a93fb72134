//! What operators see and steer: live replicas, jobs with their next tick
//! and last run, run history, held locks, queues and dead letters, and the
//! controls (pause, resume, trigger, replay, purge) — as typed values, for
//! the `soloist` CLI, a dashboard, or a service's own admin endpoints.
//!
//! An [`Inspector`] reads the records the workers of one lock backend (one
//! Redis server, Sentinel set or Redis Cluster, and one key prefix) keep:
//! - **run history**: every run of a cron tick, keyed run or consumed
//!   message is recorded in its job's capped stream (see
//!   [`WorkerBuilder::history_limit`](crate::WorkerBuilder::history_limit)).
//!   A cron tick's entry is written by the same script as its done-marker,
//!   so it is there exactly when the tick counts as done; an outcome that
//!   writes no marker (lost, cancelled) and a keyed run's entry are written
//!   by one request of their own, after the run's result is known, which
//!   the caller does not wait for. A replica killed mid-run records
//!   nothing: the run shows as the peer's that took it over, or not at all;
//! - **registry**: each running worker announces itself (replica id, host,
//!   pid, version, owner id, jobs, queues, start time) in an entry that
//!   expires one [heartbeat](crate::WorkerBuilder::heartbeat) after its
//!   last beat, so a killed replica is gone within one period;
//! - **lock holders**: a lock's owner token carries the holder process's
//!   owner id and the time of its acquisition ([`soloist_core::parse_token`]),
//!   mapped to a replica through the registry. Nothing is added to
//!   acquiring, releasing or renewing a lock.
//!
//! Reading keys by pattern uses `SCAN` with `COUNT 1000` on every primary,
//! never `KEYS`: no call holds Redis for long, however many keys there are.
//!
//! # Controls, fleet-wide
//! - [`pause`](Inspector::pause): a paused cron job claims no tick. Each
//!   replica reads the pause when a tick is due, so a tick whose claim
//!   began before the pause may still run. Ticks due before the
//!   [`resume`](Inspector::resume) are passed over for good, whether
//!   replicas were up during the pause or not: a replica that finds a
//!   tick paused records it as the job's latest claimed tick, and resuming
//!   records the resume time the same way, so the job's
//!   [`MissedTicks`](crate::MissedTicks) policy (ticks the fleet missed
//!   while no replica was up) covers only ticks after the resume. The job
//!   runs again from its next tick after the resume. A paused keyed job answers
//!   [`RunOutcome::Paused`](crate::RunOutcome::Paused) without running;
//!   replicas learn of a pause or a resume within a second. A consumed
//!   job's messages stay in the stream, are not counted as attempts, and
//!   come back after the visibility timeout until the job is resumed.
//! - [`trigger`](Inspector::trigger): asks for one run of a cron job now.
//!   Each replica looks for the triggers of its cron jobs every second (one
//!   request for all of them) and claims one like a tick of its own (lock and done-marker
//!   `cron:{name}:now:<ms>`), so it runs once across the fleet with the
//!   guarantees of a tick: at most one attempt at a time, taken over by a
//!   peer when its runner dies, and claimed only within the job's misfire
//!   grace after the trigger. Two triggers within one millisecond are one
//!   run. A paused job cannot be triggered.
//! - [`replay_dead_letter`](Inspector::replay_dead_letter) puts a dead
//!   letter back on its stream and deletes it in one script: two operators
//!   replaying it at once add it once.
//!   [`purge_dead_letters`](Inspector::purge_dead_letters) deletes them.
//!
//! ```no_run
//! use soloist::LockClient;
//! use soloist::inspect::{Inspector, RunFilter};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
//! let inspector = Inspector::new(&locks)?;
//! for job in inspector.jobs().await? {
//!     println!("{} next {:?} paused {}", job.decl.name, job.next_tick_ms, job.paused);
//! }
//! for run in inspector.runs(&RunFilter::job("sweep").outcome("failure")).await? {
//!     println!("{} failed on {}: {:?}", run.job, run.replica, run.error);
//! }
//! inspector.pause("sweep").await?;
//! # Ok(()) }
//! ```

mod nodes;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use redis::streams::{StreamId, StreamInfoGroupsReply, StreamRangeReply};
use redis::{FromRedisValue, Script, Value};
use soloist_core::{Conn, LockClient, parse_token};

pub use types::{
    DeadLetter, JobDecl, JobInfo, JobKind, LockInfo, QueueDecl, QueueInfo, ReplicaInfo, RunFilter,
    RunRecord, Status,
};

use crate::error::{Result, WorkerError};
use crate::fleet::{Keys, TRIGGER_KEEP, glob_escaped};
use nodes::{Scan, pipeline_on};
use soloist_parse::CronSchedule;

static REPLAY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/replay_dead_letter.lua")));
static TRIGGER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/trigger.lua")));

/// Reads and steers the fleet of workers sharing a lock backend; see the
/// [module docs](self) for what each fact and control means.
///
/// ```no_run
/// use soloist::{ClientBuilder, Deployment};
/// use soloist::inspect::Inspector;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Deployment::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
/// let locks = ClientBuilder::default().prefix("billing:").open(cluster).await?;
/// let status = Inspector::new(&locks)?.status().await?;
/// println!("{} replicas, {} jobs", status.replicas.len(), status.jobs.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Inspector {
    locks: LockClient,
    keys: Keys,
}

fn lock_err(err: redis::RedisError) -> WorkerError {
    WorkerError::Lock(err.into())
}

impl Inspector {
    /// An inspector of the workers on `locks`' backend and prefix. Fails
    /// with [`WorkerError::NotInspectable`] for a Redlock or the memory
    /// backend, whose workers keep no records.
    ///
    /// ```
    /// use soloist::{LockClient, WorkerError, inspect::Inspector};
    /// let refused = Inspector::new(&LockClient::memory()).unwrap_err();
    /// assert!(matches!(refused, WorkerError::NotInspectable));
    /// ```
    pub fn new(locks: &LockClient) -> Result<Self> {
        let prefix = locks.key_prefix().ok_or(WorkerError::NotInspectable)?;
        Ok(Inspector {
            keys: Keys::new(prefix),
            locks: locks.clone(),
        })
    }

    async fn conn(&self) -> Result<Conn> {
        self.locks
            .connection()
            .await?
            .ok_or(WorkerError::NotInspectable)
    }

    /// The Redis server's clock (on a cluster, one node's), which next
    /// ticks are computed from.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// let now = inspector.server_time().await?;
    /// println!("Redis says it is {now}");
    /// # Ok(()) }
    /// ```
    pub async fn server_time(&self) -> Result<DateTime<Utc>> {
        let time = self
            .locks
            .server_time()
            .await?
            .unwrap_or_else(SystemTime::now);
        Ok(DateTime::<Utc>::from(time))
    }

    /// Everything at once: server time, replicas, jobs and queues.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// let status = inspector.status().await?;
    /// println!("{} replicas, {} jobs, {} queues", status.replicas.len(), status.jobs.len(), status.queues.len());
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<Status> {
        let replicas = self.replicas().await?;
        let now = self.server_time().await?;
        let jobs = self.jobs_of(&replicas, now).await?;
        let queues = self.queues_of(&replicas).await?;
        Ok(Status {
            server_time_ms: now.timestamp_millis(),
            replicas,
            jobs,
            queues,
        })
    }

    /// The live replicas (registry entries not yet expired), by id.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// for replica in inspector.replicas().await? {
    ///     println!("{} on {} expires in {:?} ms", replica.replica, replica.host, replica.expires_in_ms);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn replicas(&self) -> Result<Vec<ReplicaInfo>> {
        let mut conn = self.conn().await?;
        let mut replicas = Vec::new();
        let mut pages = Scan::new(&mut conn, &self.keys.replica_pattern()).await?;
        while let Some((node, keys)) = pages.next_page(&mut conn).await? {
            let (conn, node) = (&mut conn, &node);
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
            }
            let replies = pipeline_on(conn, node, pipe).await?;
            for pair in replies.chunks(2) {
                let (Some(json), Some(ttl)) = (pair.first(), pair.get(1)) else {
                    continue;
                };
                let Ok(Some(json)) = Option::<String>::from_redis_value(json.clone()) else {
                    continue; // expired between the scan and the read
                };
                let Ok(mut replica) = serde_json::from_str::<ReplicaInfo>(&json) else {
                    continue; // not a registry entry of this version
                };
                replica.expires_in_ms = i64::from_redis_value(ttl.clone())
                    .ok()
                    .and_then(|ttl| u64::try_from(ttl).ok());
                replicas.push(replica);
            }
        }
        replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(replicas)
    }

    /// The jobs the live replicas run, by name, each with its next tick
    /// (from the Redis server's clock), whether it is paused, and its last
    /// recorded run.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// for job in inspector.jobs().await? {
    ///     let last = job.last_run.as_ref().map(|run| run.outcome.as_str());
    ///     println!("{}: next {:?}, last {last:?}, paused {}", job.decl.name, job.next_tick_ms, job.paused);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn jobs(&self) -> Result<Vec<JobInfo>> {
        let replicas = self.replicas().await?;
        let now = self.server_time().await?;
        self.jobs_of(&replicas, now).await
    }

    async fn jobs_of(&self, replicas: &[ReplicaInfo], now: DateTime<Utc>) -> Result<Vec<JobInfo>> {
        let mut jobs: BTreeMap<String, JobInfo> = BTreeMap::new();
        for replica in replicas {
            for decl in &replica.jobs {
                jobs.entry(decl.name.clone())
                    .or_insert_with(|| JobInfo {
                        decl: decl.clone(),
                        next_tick_ms: None,
                        paused: false,
                        replicas: Vec::new(),
                        last_run: None,
                    })
                    .replicas
                    .push(replica.replica.clone());
            }
        }
        let paused = self.paused().await?;
        for job in jobs.values_mut() {
            job.paused = paused.contains_key(&job.decl.name);
            if let (Some(expression), Some(tz)) = (&job.decl.schedule, &job.decl.time_zone)
                && let Ok(schedule) = CronSchedule::new(expression, tz)
            {
                job.next_tick_ms = schedule
                    .ticks_after(now)
                    .next()
                    .map(|t| t.timestamp_millis());
            }
            job.last_run = self
                .runs(&RunFilter::job(&job.decl.name).limit(1))
                .await?
                .into_iter()
                .next();
        }
        Ok(jobs.into_values().collect())
    }

    /// The paused jobs, each with when it was paused (Unix ms).
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// for (job, since_ms) in inspector.paused().await? {
    ///     println!("{job} paused since {since_ms}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn paused(&self) -> Result<HashMap<String, i64>> {
        let mut conn = self.conn().await?;
        redis::cmd("HGETALL")
            .arg(self.keys.paused())
            .query_async(&mut conn)
            .await
            .map_err(lock_err)
    }

    /// A job's recorded runs, newest first, as `filter` selects them.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// use soloist::inspect::RunFilter;
    /// let failures = inspector.runs(&RunFilter::job("nightly").outcome("failure").limit(10)).await?;
    /// for run in failures {
    ///     println!("{:?} on {}: {:?}", run.tick_ms, run.replica, run.error);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut conn = self.conn().await?;
        let key = self.keys.runs(&filter.job);
        let mut runs = Vec::new();
        let mut end = "+".to_owned();
        let page = filter.limit.clamp(1, 1000);
        while runs.len() < filter.limit {
            let reply: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(page)
                .query_async(&mut conn)
                .await
                .map_err(lock_err)?;
            let Some(last) = reply.ids.last() else {
                break;
            };
            end = format!("({}", last.id);
            let full = reply.ids.len() == page;
            for entry in &reply.ids {
                let run = run_record(entry);
                if filter.outcome.as_ref().is_none_or(|o| *o == run.outcome) {
                    runs.push(run);
                    if runs.len() == filter.limit {
                        break;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(runs)
    }

    /// The held locks whose key matches `pattern` (`*` any text, `?` one
    /// character; `*` for all), sorted by key. Each primary is scanned
    /// with `SCAN ... COUNT 1000` and its keys' details read in one
    /// pipeline per page.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// for lock in inspector.locks("invoice:*").await? {
    ///     println!("{} held by {:?} since {:?}, {:?} ms left", lock.key, lock.replica, lock.since_ms, lock.ttl_ms);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn locks(&self, pattern: &str) -> Result<Vec<LockInfo>> {
        let owners: HashMap<String, String> = self
            .replicas()
            .await?
            .into_iter()
            .map(|r| (r.owner, r.replica))
            .collect();
        let prefix = format!("{}lock:", self.keys.prefix());
        let waiters_prefix = format!("{}waiters:", self.keys.prefix());
        let fence_prefix = format!("{}fence:", self.keys.prefix());
        // The key is inside its stored name: a superset to scan for.
        let scan = if pattern == "*" {
            self.keys.lock_pattern()
        } else {
            format!("{}*{}*", glob_escaped(&prefix), pattern_for_scan(pattern))
        };
        let mut conn = self.conn().await?;
        let mut locks = Vec::new();
        let mut pages = Scan::new(&mut conn, &scan).await?;
        while let Some((node, names)) = pages.next_page(&mut conn).await? {
            let (conn, node) = (&mut conn, &node);
            let found: Vec<(String, String)> = names
                .into_iter()
                .filter_map(|name| {
                    let stored = name.strip_prefix(&prefix)?.to_owned();
                    let key = key_of(&stored)?;
                    glob_matches(pattern, &key).then_some((stored, key))
                })
                .collect();
            let mut pipe = redis::pipe();
            for (stored, _) in &found {
                pipe.cmd("GET")
                    .arg(format!("{prefix}{stored}"))
                    .cmd("PTTL")
                    .arg(format!("{prefix}{stored}"))
                    .cmd("LLEN")
                    .arg(format!("{waiters_prefix}{stored}"))
                    .cmd("GET")
                    .arg(format!("{fence_prefix}{stored}"));
            }
            let replies = pipeline_on(conn, node, pipe).await?;
            for ((_, key), reply) in found.into_iter().zip(replies.chunks(4)) {
                let [value, ttl, waiters, fence] = reply else {
                    continue;
                };
                let Ok(Some(value)) = Option::<String>::from_redis_value(value.clone()) else {
                    continue; // released between the scan and the read
                };
                let token = parse_token(&value);
                let owner = token.as_ref().map(|t| t.owner.clone());
                locks.push(LockInfo {
                    key,
                    replica: owner.as_ref().and_then(|o| owners.get(o).cloned()),
                    owner,
                    since_ms: token.map(|t| unix_ms(t.acquired_at)),
                    ttl_ms: i64::from_redis_value(ttl.clone())
                        .ok()
                        .and_then(|ttl| u64::try_from(ttl).ok()),
                    waiters: u64::from_redis_value(waiters.clone()).unwrap_or(0),
                    fence: Option::<u64>::from_redis_value(fence.clone())
                        .ok()
                        .flatten(),
                });
            }
        }
        locks.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(locks)
    }

    /// The queues (Redis streams) the live replicas consume, with their
    /// backlog and dead letters.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// for queue in inspector.queues().await? {
    ///     println!("{}: {} pending, lag {:?}, {} dead", queue.decl.stream, queue.pending, queue.lag, queue.dead);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn queues(&self) -> Result<Vec<QueueInfo>> {
        let replicas = self.replicas().await?;
        self.queues_of(&replicas).await
    }

    async fn queues_of(&self, replicas: &[ReplicaInfo]) -> Result<Vec<QueueInfo>> {
        let mut decls: BTreeMap<String, (QueueDecl, Vec<String>)> = BTreeMap::new();
        for replica in replicas {
            for queue in &replica.queues {
                decls
                    .entry(queue.stream.clone())
                    .or_insert_with(|| (queue.clone(), Vec::new()));
            }
            for job in &replica.jobs {
                if let Some((_, jobs)) = job.queue.as_ref().and_then(|q| decls.get_mut(q))
                    && !jobs.contains(&job.name)
                {
                    jobs.push(job.name.clone());
                }
            }
        }
        let mut conn = self.conn().await?;
        let mut queues = Vec::new();
        for (_, (decl, jobs)) in decls {
            let length: u64 = redis::cmd("XLEN")
                .arg(&decl.stream)
                .query_async(&mut conn)
                .await
                .map_err(lock_err)?;
            let dead: u64 = redis::cmd("XLEN")
                .arg(&decl.dead_letters)
                .query_async(&mut conn)
                .await
                .map_err(lock_err)?;
            let groups: StreamInfoGroupsReply = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&decl.stream)
                .query_async(&mut conn)
                .await
            {
                Ok(groups) => groups,
                Err(err) if err.code() == Some("ERR") => StreamInfoGroupsReply::default(),
                Err(err) => return Err(lock_err(err)),
            };
            let group = groups.groups.into_iter().find(|g| g.name == decl.group);
            queues.push(QueueInfo {
                length,
                pending: group.as_ref().map_or(0, |g| g.pending as u64),
                lag: group.as_ref().and_then(|g| g.lag).map(|lag| lag as u64),
                consumers: group.as_ref().map_or(0, |g| g.consumers as u64),
                dead,
                jobs,
                decl,
            });
        }
        Ok(queues)
    }

    /// The queue named by its stream, as a live replica announces it.
    async fn queue(&self, stream: &str) -> Result<QueueDecl> {
        self.replicas()
            .await?
            .into_iter()
            .flat_map(|r| r.queues)
            .find(|q| q.stream == stream)
            .ok_or_else(|| WorkerError::UnknownQueue(stream.to_owned()))
    }

    /// The oldest `limit` dead letters of the queue on stream `stream`.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// for letter in inspector.dead_letters("orders", 20).await? {
    ///     println!("{} {:?}: {:?}", letter.id, letter.key, letter.reason);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let queue = self.queue(stream).await?;
        let mut conn = self.conn().await?;
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&queue.dead_letters)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(lock_err)?;
        Ok(reply.ids.iter().map(dead_letter).collect())
    }

    /// Puts dead letter `id` of the queue on `stream` back on the stream,
    /// once (see the [module docs](self)); the new entry's id, or `None`
    /// when there is no such dead letter (replayed or purged already).
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// match inspector.replay_dead_letter("orders", "1733580000000-0").await? {
    ///     Some(new_id) => println!("back on the stream as {new_id}"),
    ///     None => println!("no such dead letter: replayed or purged already"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn replay_dead_letter(&self, stream: &str, id: &str) -> Result<Option<String>> {
        let queue = self.queue(stream).await?;
        let mut conn = self.conn().await?;
        let mut replay = REPLAY.prepare_invoke();
        replay.key(&queue.dead_letters).key(&queue.stream).arg(id);
        soloist_core::invoke_script(&mut conn, &REPLAY, &replay)
            .await
            .map_err(lock_err)
    }

    /// Deletes the dead letters `ids` of the queue on `stream`, or all of
    /// them when `ids` is empty; how many were deleted.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// let purged = inspector.purge_dead_letters("orders", &[]).await?; // all of them
    /// println!("purged {purged}");
    /// # Ok(()) }
    /// ```
    pub async fn purge_dead_letters(&self, stream: &str, ids: &[&str]) -> Result<u64> {
        let queue = self.queue(stream).await?;
        let mut conn = self.conn().await?;
        if ids.is_empty() {
            let (count, _): (u64, Value) = redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&queue.dead_letters)
                .cmd("DEL")
                .arg(&queue.dead_letters)
                .query_async(&mut conn)
                .await
                .map_err(lock_err)?;
            return Ok(count);
        }
        redis::cmd("XDEL")
            .arg(&queue.dead_letters)
            .arg(ids)
            .query_async(&mut conn)
            .await
            .map_err(lock_err)
    }

    /// The job named `job`, as a live replica announces it.
    async fn job(&self, job: &str) -> Result<JobDecl> {
        self.replicas()
            .await?
            .into_iter()
            .flat_map(|r| r.jobs)
            .find(|j| j.name == job)
            .ok_or_else(|| WorkerError::UnknownJob(job.to_owned()))
    }

    /// Pauses `job` across the fleet (see the [module docs](self)). The
    /// job must be run by a live replica; pausing a paused job keeps its
    /// original time.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// inspector.pause("nightly").await?;
    /// // ... later
    /// inspector.resume("nightly").await?;
    /// # Ok(()) }
    /// ```
    pub async fn pause(&self, job: &str) -> Result<()> {
        self.job(job).await?;
        let now = self.server_time().await?.timestamp_millis();
        let mut conn = self.conn().await?;
        redis::cmd("HSETNX")
            .arg(self.keys.paused())
            .arg(job)
            .arg(now)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(lock_err)?;
        Ok(())
    }

    /// Resumes `job`; whether it was paused.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// if !inspector.resume("nightly").await? {
    ///     println!("it was not paused");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, job: &str) -> Result<bool> {
        // Ticks due before now are passed over for good: now becomes the
        // cron job's latest claimed tick, so a replica starting later does
        // not run them as missed. Only for a job that ran (a cron job
        // without the record starts from its next tick anyway).
        let last = format!("{}:last", crate::cron::job_key(job));
        if self.locks.fenced_get(&last).await?.is_some() {
            let now = u64::try_from(self.server_time().await?.timestamp_millis()).unwrap_or(0);
            self.locks.fenced_set(&last, now, now.to_string()).await?;
        }
        let mut conn = self.conn().await?;
        let removed: u64 = redis::cmd("HDEL")
            .arg(self.keys.paused())
            .arg(job)
            .query_async(&mut conn)
            .await
            .map_err(lock_err)?;
        Ok(removed > 0)
    }

    /// Asks for one run of cron job `job` now, across the fleet (see the
    /// [module docs](self)); the trigger's time by the Redis server's clock.
    ///
    /// ```no_run
    /// # async fn demo(inspector: soloist::inspect::Inspector) -> Result<(), soloist::WorkerError> {
    /// let at = inspector.trigger("nightly").await?;
    /// println!("asked for a run at {at}");
    /// # Ok(()) }
    /// ```
    pub async fn trigger(&self, job: &str) -> Result<DateTime<Utc>> {
        let decl = self.job(job).await?;
        if decl.kind != JobKind::Cron {
            return Err(WorkerError::NotCron(job.to_owned()));
        }
        if self.paused().await?.contains_key(job) {
            return Err(WorkerError::JobPaused(job.to_owned()));
        }
        let mut conn = self.conn().await?;
        let mut trigger = TRIGGER.prepare_invoke();
        trigger
            .key(self.keys.triggers())
            .arg(TRIGGER_KEEP.as_millis() as u64)
            .arg(job);
        let at: i64 = soloist_core::invoke_script(&mut conn, &TRIGGER, &trigger)
            .await
            .map_err(lock_err)?;
        DateTime::from_timestamp_millis(at).ok_or_else(|| {
            WorkerError::Lock(soloist_core::LockError::InvalidArgument {
                name: "reply",
                reason: "the server's time is out of range".to_owned(),
            })
        })
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(i64::MAX)
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    match entry.map.get(name)? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn run_record(entry: &StreamId) -> RunRecord {
    let number = |name| field(entry, name).and_then(|v| v.parse::<i64>().ok());
    RunRecord {
        id: entry.id.clone(),
        job: field(entry, "job").unwrap_or_default(),
        tick_ms: number("tick"),
        triggered: field(entry, "triggered").is_some(),
        key: field(entry, "key"),
        replica: field(entry, "replica").unwrap_or_default(),
        fence: number("fence")
            .and_then(|f| u64::try_from(f).ok())
            .unwrap_or(0),
        outcome: field(entry, "outcome").unwrap_or_default(),
        started_ms: number("started").unwrap_or(0),
        duration_ms: number("duration")
            .and_then(|d| u64::try_from(d).ok())
            .unwrap_or(0),
        error: field(entry, "error"),
    }
}

fn dead_letter(entry: &StreamId) -> DeadLetter {
    DeadLetter {
        id: entry.id.clone(),
        original_id: field(entry, "id"),
        job: field(entry, "job"),
        key: field(entry, "key"),
        args: field(entry, "args"),
        deliveries: field(entry, "deliveries").and_then(|d| d.parse().ok()),
        reason: field(entry, "reason"),
    }
}

/// The lock key a stored name (after `lock:`) was written from: `{K}`,
/// `=K` or `{=K}` (see soloist-core's key layout).
fn key_of(stored: &str) -> Option<String> {
    if let Some(inner) = stored.strip_prefix("{=").and_then(|s| s.strip_suffix('}')) {
        return Some(inner.to_owned());
    }
    if let Some(key) = stored.strip_prefix('=') {
        return Some(key.to_owned());
    }
    stored
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .map(str::to_owned)
}

/// `pattern` for `SCAN MATCH`: `*` and `?` kept, other special characters
/// escaped.
fn pattern_for_scan(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `text` matches `pattern`, where `*` is any text and `?` any one
/// character.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only while every call's future is `Send`: awaitable in a
    /// spawned task or a web handler (the dashboard's).
    #[test]
    fn every_call_can_be_awaited_on_any_task() {
        fn send<T: Send>(_: T) {}
        let inspector = Inspector::new(&LockClient::memory());
        if let Ok(i) = inspector {
            send(i.server_time());
            send(i.status());
            send(i.replicas());
            send(i.jobs());
            send(i.paused());
            send(i.runs(&RunFilter::job("job")));
            send(i.locks("*"));
            send(i.queues());
            send(i.dead_letters("orders", 10));
            send(i.replay_dead_letter("orders", "1-0"));
            send(i.purge_dead_letters("orders", &[]));
            send(i.pause("job"));
            send(i.resume("job"));
            send(i.trigger("job"));
        }
    }

    #[test]
    fn stored_names_give_back_their_keys() {
        assert_eq!(key_of("{orders:42}").as_deref(), Some("orders:42"));
        assert_eq!(
            key_of("={report}:monday").as_deref(),
            Some("{report}:monday")
        );
        assert_eq!(key_of("{=a}b}").as_deref(), Some("a}b"));
        assert_eq!(key_of("plain"), None);
    }

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("orders:*", "orders:42"));
        assert!(!glob_matches("orders:*", "order:42"));
        assert!(glob_matches("o?ders:*2", "orders:42"));
        assert!(glob_matches("*:42", "orders:42"));
        assert!(!glob_matches("a*b", "acbd"));
        assert!(glob_matches("", ""));
        assert_eq!(pattern_for_scan("a[b]*"), "a\\[b\\]*");
    }
}
