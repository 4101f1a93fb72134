//! The fleet's shared records: run history, the replica registry, paused
//! jobs and triggered runs, and the key each lives under.
//!
//! Under the lock client's prefix `P`, with `name` the job's escaped name
//! (see `key.rs`):
//! - `P runs:{name}`: the job's run history, a stream capped at about the
//!   worker's `history_limit` entries (`XADD MAXLEN ~`). Its hash tag is
//!   the job's, like every key of a cron job's ticks, so on a Redis
//!   Cluster a tick's history entry is written by the same script as its
//!   done-marker. A keyed run's (and so a consumed message's) entry rides
//!   on the release of the run's key (`LockGuard::release_with`): on one
//!   server the release's script writes it, atomically with the release;
//!   on a cluster, where the history is in the job's slot and the key in
//!   its own, it is sent in the same round trip as the release, but not
//!   atomically with it (a failure can cost the entry, never the run);
//! - `P replica:<id>`: a replica's registry entry (JSON), expiring one
//!   heartbeat period after it was last written;
//! - `P paused`: a hash of paused job names, each with when it was paused;
//! - `P triggers`: a sorted set of the runs of cron jobs operators asked
//!   for, each `<ms>:<job name>` with its time (Redis' clock) as its score:
//!   one key, so that a replica looks for the triggers of all its jobs in
//!   one request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Value;
use soloist_core::{Conn, LockClient};
use tokio::time::Instant;

use crate::inspect::{JobDecl, QueueDecl, ReplicaInfo, RunRecord};
use soloist_parse::escaped;

/// How long a paused-jobs answer is trusted by keyed runs.
pub(crate) const PAUSE_REFRESH: Duration = Duration::from_secs(1);
/// How often a cron scheduler looks for triggered runs.
pub(crate) const TRIGGER_POLL: Duration = Duration::from_secs(1);
/// How long a trigger is kept.
pub(crate) const TRIGGER_KEEP: Duration = Duration::from_secs(86_400);
/// The longest error text a run record keeps.
const MAX_ERROR_TEXT: usize = 2000;

/// The names of the fleet's records under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn runs(&self, job: &str) -> String {
        format!("{}runs:{{{}}}", self.prefix, escaped(job))
    }

    pub(crate) fn replica(&self, replica: &str) -> String {
        format!("{}replica:{}", self.prefix, escaped(replica))
    }

    pub(crate) fn replica_pattern(&self) -> String {
        format!("{}replica:*", glob_escaped(&self.prefix))
    }

    pub(crate) fn lock_pattern(&self) -> String {
        format!("{}lock:*", glob_escaped(&self.prefix))
    }

    pub(crate) fn paused(&self) -> String {
        format!("{}paused", self.prefix)
    }

    pub(crate) fn triggers(&self) -> String {
        format!("{}triggers", self.prefix)
    }
}

/// `text` with the characters `SCAN MATCH` treats specially escaped.
pub(crate) fn glob_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a worker on a Redis backend writes for operators; absent on a
/// Redlock or the memory backend.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) keys: Keys,
    pub(crate) history_limit: u64,
    locks: LockClient,
    paused: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
}

impl Fleet {
    pub(crate) fn new(locks: &LockClient, history_limit: u64) -> Option<Self> {
        Some(Fleet {
            keys: Keys::new(locks.key_prefix()?),
            history_limit,
            locks: locks.clone(),
            paused: Mutex::new(None),
        })
    }

    pub(crate) async fn conn(&self) -> soloist_core::Result<Conn> {
        self.locks
            .connection()
            .await?
            .ok_or_else(|| soloist_core::LockError::InvalidArgument {
                name: "backend",
                reason: "has no Redis connection".to_owned(),
            })
    }

    /// The `XADD` that records `run` in its job's history.
    pub(crate) fn history_entry(&self, run: &RunRecord) -> redis::Cmd {
        self.history_entry_as(run, &run.outcome)
    }

    /// [`history_entry`](Self::history_entry) with another outcome than the
    /// record's.
    pub(crate) fn history_entry_as(&self, run: &RunRecord, outcome: &str) -> redis::Cmd {
        let mut add = redis::cmd("XADD");
        add.arg(self.keys.runs(&run.job))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.history_limit)
            .arg("*")
            .arg("job")
            .arg(&run.job)
            .arg("replica")
            .arg(&run.replica)
            .arg("fence")
            .arg(run.fence)
            .arg("started")
            .arg(run.started_ms)
            .arg("duration")
            .arg(run.duration_ms);
        if let Some(tick) = run.tick_ms {
            add.arg("tick").arg(tick);
        }
        if run.triggered {
            add.arg("triggered").arg(1);
        }
        if let Some(key) = &run.key {
            add.arg("key").arg(key);
        }
        if let Some(error) = &run.error {
            add.arg("error").arg(truncated(error, MAX_ERROR_TEXT));
        }
        // Last: entries of one run with different outcomes (a batch sends
        // the one for success and the one for a lost lease) differ in
        // their last argument alone.
        add.arg("outcome").arg(outcome);
        add
    }

    /// Records `run` on its own, for outcomes that write no record of their
    /// own to carry it; a failure is logged, never the run's.
    pub(crate) async fn record(&self, run: &RunRecord) {
        let add = self.history_entry(run);
        let written = async {
            let mut conn = self.conn().await?;
            add.query_async::<Value>(&mut conn).await?;
            Ok::<_, soloist_core::LockError>(())
        };
        if let Err(err) = written.await {
            tracing::warn!(job = %run.job, error = %err, "cannot record the run in the history");
        }
    }

    /// Whether `job` is paused, as read at most [`PAUSE_REFRESH`] ago.
    pub(crate) async fn is_paused_cached(&self, job: &str) -> soloist_core::Result<bool> {
        let cached = self
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let set = match cached {
            Some((read, set)) if read.elapsed() < PAUSE_REFRESH => set,
            stale => {
                let read = async {
                    let mut conn = self.conn().await?;
                    let names: Vec<String> = redis::cmd("HKEYS")
                        .arg(self.keys.paused())
                        .query_async(&mut conn)
                        .await?;
                    Ok::<_, soloist_core::LockError>(names)
                };
                let (set, outcome) = match read.await {
                    Ok(names) => (Arc::new(names.into_iter().collect::<HashSet<_>>()), Ok(())),
                    // Keep the last answer for a while: a backend that is
                    // down is not asked again on every run.
                    Err(err) => (stale.map(|(_, set)| set).unwrap_or_default(), Err(err)),
                };
                *self.paused.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), set.clone()));
                outcome?;
                set
            }
        };
        Ok(set.contains(job))
    }

    /// Whether `job` is paused, read now.
    pub(crate) async fn is_paused(&self, job: &str) -> soloist_core::Result<bool> {
        let mut conn = self.conn().await?;
        Ok(redis::cmd("HEXISTS")
            .arg(self.keys.paused())
            .arg(job)
            .query_async(&mut conn)
            .await?)
    }

    /// The triggered runs at or after `since_ms`, oldest first: their
    /// times and jobs.
    pub(crate) async fn triggers_since(
        &self,
        since_ms: i64,
    ) -> soloist_core::Result<Vec<(i64, String)>> {
        let mut conn = self.conn().await?;
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.triggers())
            .arg(since_ms)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        Ok(members
            .iter()
            .filter_map(|member| {
                let (at, job) = member.split_once(':')?;
                Some((at.parse().ok()?, job.to_owned()))
            })
            .collect())
    }

    /// Writes this replica's registry entry, to expire after `heartbeat`.
    pub(crate) async fn announce(
        &self,
        entry: &ReplicaInfo,
        heartbeat: Duration,
    ) -> soloist_core::Result<()> {
        let json = serde_json::to_string(entry).map_err(|err| {
            soloist_core::LockError::InvalidArgument {
                name: "registry entry",
                reason: err.to_string(),
            }
        })?;
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.keys.replica(&entry.replica))
            .arg(json)
            .arg("PX")
            .arg(heartbeat.as_millis().max(1) as u64)
            .query_async::<Value>(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes this replica's registry entry, on a clean shutdown.
    pub(crate) async fn withdraw(&self, replica: &str) -> soloist_core::Result<()> {
        let mut conn = self.conn().await?;
        redis::cmd("DEL")
            .arg(self.keys.replica(replica))
            .query_async::<Value>(&mut conn)
            .await?;
        Ok(())
    }
}

/// The registry entry of a replica, before it is written.
pub(crate) struct Announcement {
    pub(crate) jobs: Vec<JobDecl>,
    pub(crate) queues: Vec<QueueDecl>,
}

/// The host name, as the kernel or the environment knows it.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_jobs_slot() {
        let keys = Keys::new("soloist:");
        let runs = keys.runs("nightly rollup");
        assert_eq!(runs, "soloist:runs:{nightly%20rollup}");
        assert_eq!(
            soloist_core::hash_slot(&runs),
            soloist_core::hash_slot(&format!(
                "soloist:fenced:={}:123",
                crate::cron::job_key("nightly rollup")
            ))
        );
        assert_eq!(keys.replica("a b"), "soloist:replica:a%20b");
    }

    #[test]
    fn patterns_escape_the_prefix() {
        assert_eq!(glob_escaped("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(Keys::new("x*:").lock_pattern(), "x\\*:lock:*");
    }

    #[test]
    fn errors_are_cut_on_char_boundaries() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
