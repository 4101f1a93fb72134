//! What a running job knows about its run.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use soloist_core::Lease;
use tokio_util::sync::CancellationToken;

/// Handed to every run of a job: its fencing token, the signals that tell
/// it to stop, and where the run stands (tick, attempt, replica).
///
/// Jobs take it as their first argument; unit tests of a job build one
/// with [`JobContext::builder`].
///
/// ```
/// use soloist::JobContext;
/// let ctx = JobContext::builder("rollup").fence(42).attempt(2).replica("test").build();
/// assert_eq!((ctx.fence(), ctx.attempt(), ctx.replica()), (42, 2, "test"));
/// assert!(ctx.is_held() && !ctx.is_cancelled());
/// ```
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    job: String,
    key: Option<String>,
    fence: u64,
    attempt: u32,
    /// Borrowed for the default: a run's builder sets its own.
    replica: Cow<'static, str>,
    scheduled_at: Option<DateTime<Utc>>,
    lease: Option<Lease>,
    /// `None` for a context built without one, which is never cancelled.
    cancel: Option<CancellationToken>,
    /// Commands to apply with the record of the run's success.
    on_success: Mutex<Vec<redis::Cmd>>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job", &self.inner.job)
            .field("key", &self.inner.key)
            .field("fence", &self.inner.fence)
            .field("attempt", &self.inner.attempt)
            .field("replica", &self.inner.replica)
            .field("scheduled_at", &self.inner.scheduled_at)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// Starts a context for job `job`, for tests and for running a job by
    /// hand; the runtime builds its own.
    pub fn builder(job: &str) -> JobContextBuilder {
        JobContextBuilder {
            inner: Inner {
                job: job.to_owned(),
                key: None,
                fence: 0,
                attempt: 1,
                replica: Cow::Borrowed("local"),
                scheduled_at: None,
                lease: None,
                cancel: None,
                on_success: Mutex::new(Vec::new()),
            },
        }
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.inner.job
    }

    /// The rendered key of a keyed job's run; `None` for cron jobs.
    pub fn key(&self) -> Option<&str> {
        self.inner.key.as_deref()
    }

    /// The fencing token of this run's lease: pass it along with every
    /// write the job makes, so that the resource can refuse the writes of a
    /// run whose lease ended without its noticing.
    pub fn fence(&self) -> u64 {
        self.inner.fence
    }

    /// Which attempt this is, from 1; retries of a failed run count up.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The id of the replica running the job.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The tick this run is for: its scheduled fire time (cron jobs only).
    pub fn scheduled_at(&self) -> Option<DateTime<Utc>> {
        self.inner.scheduled_at
    }

    /// Whether the run's lease is still guaranteed (always true for a
    /// context built without one).
    pub fn is_held(&self) -> bool {
        self.inner.lease.as_ref().is_none_or(Lease::is_held)
    }

    /// How much of the lease is still guaranteed; `None` without a lease.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner.lease.as_ref().map(Lease::remaining)
    }

    /// Resolves when the run's lease is lost (never without a lease).
    pub async fn lost(&self) {
        match &self.inner.lease {
            Some(lease) => lease.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Resolves when the run should stop: shutdown past its grace period,
    /// `max_hold` reached, or the lease lost (unless the job asked to keep
    /// running). The runtime also drops the job's future then; this is for
    /// work the job spawned or handed elsewhere.
    pub async fn cancelled(&self) {
        match &self.inner.cancel {
            Some(cancel) => cancel.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Whether [`cancelled`](Self::cancelled) has resolved.
    pub fn is_cancelled(&self) -> bool {
        self.inner
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Applies a Redis `command` when this run's success is recorded:
    /// atomically with the record, and only if the run's lease is still
    /// held ([`LockGuard::commit`](soloist_core::LockGuard::commit)).
    /// An effect made this way happens once, even when the replica dies
    /// between the body's return and the record — the window in which an
    /// effect the body applies itself can happen twice. Nothing is applied
    /// if the run fails, is lost or is cancelled.
    ///
    /// Needs a Redis backend, one server or a cluster; a Redlock or the
    /// memory backend refuses effects. On a Redis Cluster the record and
    /// its effects are one script, so an effect may only touch keys in the
    /// hash slot of the run's record: name them with
    /// [`colocated`](Self::colocated). Refused effects are refused before
    /// anything is written: a keyed run then returns
    /// [`WorkerError::Lock`](crate::WorkerError::Lock) with
    /// `LockError::InvalidArgument { name: "effects", .. }` and records
    /// nothing; a cron tick is recorded as failed, so that no peer runs it
    /// again.
    ///
    /// ```
    /// use soloist::{JobContext, redis};
    /// let ctx = JobContext::builder("charge").build();
    /// let mut charge = redis::cmd("HINCRBY");
    /// charge.arg("balances").arg("customer:7").arg(-990);
    /// ctx.commit_on_success(charge);
    /// ```
    pub fn commit_on_success(&self, command: redis::Cmd) {
        self.inner
            .on_success
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(command);
    }

    /// A Redis key name ending in `suffix` that shares the hash slot of
    /// this run's records, for the effects of
    /// [`commit_on_success`](Self::commit_on_success) on a Redis Cluster.
    /// The name is the same for every run of a keyed job with the same
    /// rendered key (`{job:<name>:<key>}<suffix>`), and for every tick of a
    /// cron job (`cron:{<name>}<suffix>`), the job's name and its key
    /// written as in the runs' own keys; not under the lock client's
    /// prefix. `None` when the rendered key holds a `}` outside a hash
    /// tag, which no other key can share a slot with.
    ///
    /// ```
    /// use soloist::{JobContext, hash_slot, redis};
    /// let ctx = JobContext::builder("charge").key("invoice:7").build();
    /// let balance = ctx.colocated(":balance").unwrap();
    /// assert_eq!(balance, "{job:charge:invoice:7}:balance");
    /// assert_eq!(hash_slot(&balance), hash_slot("job:charge:invoice:7"));
    /// let mut charge = redis::cmd("INCRBY");
    /// charge.arg(&balance).arg(-990);
    /// ctx.commit_on_success(charge);
    ///
    /// let tick = JobContext::builder("nightly rollup").build(); // no key: a cron job
    /// assert_eq!(tick.colocated(":total").unwrap(), "cron:{nightly%20rollup}:total");
    /// ```
    pub fn colocated(&self, suffix: &str) -> Option<String> {
        let base = match &self.inner.key {
            Some(key) => crate::keyed::record_of(&self.inner.job, key),
            None => crate::cron::job_key(&self.inner.job),
        };
        soloist_core::colocated(&base, suffix)
    }

    /// The commands to commit with the run's success record.
    pub(crate) fn take_on_success(&self) -> Vec<redis::Cmd> {
        std::mem::take(
            &mut *self
                .inner
                .on_success
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// Builds a [`JobContext`]; see [`JobContext::builder`].
#[must_use]
pub struct JobContextBuilder {
    inner: Inner,
}

impl fmt::Debug for JobContextBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContextBuilder")
            .field("job", &self.inner.job)
            .finish_non_exhaustive()
    }
}

impl JobContextBuilder {
    /// The rendered key; default none.
    pub fn key(mut self, key: &str) -> Self {
        self.inner.key = Some(key.to_owned());
        self
    }

    /// The fencing token; default 0.
    pub fn fence(mut self, fence: u64) -> Self {
        self.inner.fence = fence;
        self
    }

    /// The attempt number; default 1.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.inner.attempt = attempt;
        self
    }

    /// The replica id; default `local`.
    pub fn replica(mut self, replica: &str) -> Self {
        self.inner.replica = Cow::Owned(replica.to_owned());
        self
    }

    /// The scheduled fire time; default none.
    pub fn scheduled_at(mut self, at: DateTime<Utc>) -> Self {
        self.inner.scheduled_at = Some(at);
        self
    }

    /// The lease the run holds; its fence becomes the context's.
    pub fn lease(mut self, lease: Lease) -> Self {
        self.inner.fence = lease.fence();
        self.inner.lease = Some(lease);
        self
    }

    /// The token whose cancellation [`JobContext::cancelled`] reports.
    pub fn cancellation(mut self, cancel: CancellationToken) -> Self {
        self.inner.cancel = Some(cancel);
        self
    }

    /// The context.
    pub fn build(self) -> JobContext {
        JobContext {
            inner: Arc::new(self.inner),
        }
    }
}
