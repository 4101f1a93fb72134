//! The lock client: where every lock request starts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::{Backend, LeaseKind, Record};
use crate::deployment::Deployment;
use crate::error::{LockError, Result};
use crate::fence::check_record;
use crate::fence::{FencedValue, FencedWrite};
use crate::memory::MemoryBackend;
use crate::multi::MultiLockRequest;
use crate::node::{RedisSettings, Replicas};
use crate::pool::Conn;
use crate::queue::LocalQueues;
use crate::rate::RateLimit;
#[cfg(feature = "redlock")]
use crate::redlock::RedlockBackend;
use crate::request::LockRequest;
use crate::rwlock::RwLock;
use crate::semaphore::SemaphoreRequest;
use crate::single::RedisBackend;
use crate::watchdog::Watchdog;

/// A handle to a lock backend; cheap to clone, and every clone shares one
/// connection pool, one watchdog and one wake-up subscription.
///
/// ```no_run
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
/// let guard = locks
///     .lock("orders:42")
///     .ttl(Duration::from_secs(30))
///     .wait(Duration::from_secs(5))
///     .acquire()
///     .await?;
/// println!("holding {} with fence {}", guard.key(), guard.fence());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LockClient {
    pub(crate) inner: Arc<ClientInner>,
}

#[derive(Debug)]
pub(crate) struct ClientInner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) watchdog: Watchdog,
    pub(crate) queues: LocalQueues,
}

impl LockClient {
    /// Connects to one Redis server with default settings (see
    /// [`ClientBuilder`]). Fails with [`LockError::InvalidArgument`] when the
    /// URL does not parse and with a connection error when the server cannot
    /// be reached. Logs a warning, and sets the
    /// [`UNSAFE_EVICTION_POLICY`](crate::metrics::UNSAFE_EVICTION_POLICY)
    /// gauge, when the server's `maxmemory-policy` could evict lock keys.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().connect(url).await
    }

    /// One lock over several independent Redis masters, with the Redlock
    /// algorithm and default settings (see [`ClientBuilder::redlock`]). The
    /// client behaves exactly like a single-node one: same requests, guards,
    /// watchdog, lost signal, fencing and waiting.
    ///
    /// Fails with [`LockError::InvalidArgument`] for an empty list, a URL
    /// that does not parse, or two URLs naming the same server; succeeds
    /// while a minority of the nodes is down, and those join when they
    /// come back.
    ///
    /// ```no_run
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::redlock([
    ///     "redis://redis-a:6379",
    ///     "redis://redis-b:6379",
    ///     "redis://redis-c:6379",
    /// ])
    /// .await?;
    /// let guard = locks.lock("payouts").acquire().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redlock")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redlock")))]
    pub async fn redlock<I>(urls: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: Into<Deployment>,
    {
        Self::builder().redlock(urls).await
    }

    /// Connects to the primary that the sentinels at `sentinel_urls` report
    /// for the master named `master`, with default settings; the client
    /// follows the primary through failovers (see [`Deployment::sentinel`]).
    ///
    /// ```no_run
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::sentinel(
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///     "jobs",
    /// )
    /// .await?;
    /// let guard = locks.lock("nightly-report").acquire().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub async fn sentinel<I>(sentinel_urls: I, master: &str) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::builder()
            .open(Deployment::sentinel(sentinel_urls, master))
            .await
    }

    /// Connects to the Redis Cluster reachable through any of `node_urls`,
    /// with default settings (see [`Deployment::cluster`]). Every lock
    /// keeps its keys in the hash slot of its key; see the
    /// [key layout](https://docs.rs/soloist/latest/soloist/#key-layout).
    ///
    /// ```no_run
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::cluster(["redis://10.0.1.1:6379", "redis://10.0.1.2:6379"]).await?;
    /// let guard = locks.lock("orders:42").acquire().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub async fn cluster<I>(node_urls: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::builder().open(Deployment::cluster(node_urls)).await
    }

    /// An in-process backend with the same semantics as Redis (ttl, tokens,
    /// fencing, watchdog, lost signal, waiting) for single-process
    /// deployments and for unit tests. Each call makes an independent lock
    /// space; clone the client to share one.
    ///
    /// ```
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let guard = locks.lock("nightly-report").acquire().await?;
    /// assert!(guard.is_held());
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn memory() -> Self {
        Self::from_backend(Arc::new(MemoryBackend::default()))
    }

    /// Settings for a Redis client: key prefix, operation timeout, replica
    /// acknowledgement.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn from_backend(backend: Arc<dyn Backend>) -> Self {
        LockClient {
            inner: Arc::new(ClientInner {
                watchdog: Watchdog::new(backend.clone()),
                backend,
                queues: LocalQueues::default(),
            }),
        }
    }

    /// Starts a request for the lock on `key`; configure it, then
    /// [`acquire`](LockRequest::acquire) it.
    pub fn lock(&self, key: impl Into<String>) -> LockRequest {
        LockRequest::new(self.clone(), key.into())
    }

    /// Starts a request for the locks of every key in `keys`, all or none,
    /// without a deadlock; on a Redis Cluster the keys must share a hash
    /// slot. See [`MultiLockRequest`].
    ///
    /// ```
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let held = locks.lock_all(["{order:42}:items", "{order:42}:payment"]).acquire().await?;
    /// held.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// [`MultiLockRequest`]: crate::MultiLockRequest
    pub fn lock_all<I>(&self, keys: I) -> MultiLockRequest
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        MultiLockRequest::new(self.clone(), keys.into_iter().map(Into::into).collect())
    }

    /// A read-write lock named `name`: readers together or one writer
    /// alone, writers not starved. See [`RwLock`]. Works on every backend
    /// but a Redlock.
    ///
    /// ```
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let reading = locks.rw_lock("cache").read().acquire().await?;
    /// reading.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// [`RwLock`]: crate::RwLock
    pub fn rw_lock(&self, name: impl Into<String>) -> RwLock {
        RwLock::new(self.clone(), name.into())
    }

    /// A rate limit of at most `count` starts per `period` under `name`,
    /// across every client: see [`RateLimit`] for the algorithm (GCRA on
    /// the server's clock). Works on every backend but a Redlock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let limit = locks.rate_limit("partner-api", 50, Duration::from_secs(1));
    /// limit.wait(Duration::from_secs(5)).await?; // one start, now or within 20 ms
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// [`RateLimit`]: crate::RateLimit
    pub fn rate_limit(&self, name: impl Into<String>, count: u32, period: Duration) -> RateLimit {
        RateLimit::new(self.clone(), name.into(), count, period)
    }

    /// Starts a request for one of `permits` permits of the semaphore
    /// `name`: at most `permits` holders at once across every client. See
    /// [`SemaphoreRequest`] for the settings and [`PermitGuard`] for what a
    /// permit guarantees. Works on every backend but a Redlock.
    ///
    /// ```
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let permit = locks.semaphore("report-builds", 4).acquire().await?;
    /// permit.release().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// [`PermitGuard`]: crate::PermitGuard
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> SemaphoreRequest {
        SemaphoreRequest::new(self.clone(), name.into(), permits)
    }

    /// Stores `value` for `resource` only if `fence` is at least the highest
    /// fence already accepted there: a holder whose lease ended without its
    /// knowing (a long pause, a partition) cannot overwrite the work of the
    /// holder that came after it. Pass [`LockGuard::fence`](crate::LockGuard::fence).
    ///
    /// On a Redlock the record is kept on every node and accepted once a
    /// majority accepts it; a write reported as rejected or without a quorum
    /// may still have reached a minority, and [`fenced_get`](Self::fenced_get),
    /// which returns the highest fence a majority shows, can then return
    /// it. Keep records whose every write must be all-or-nothing on a single
    /// node.
    ///
    /// ```
    /// use soloist::{FencedWrite, LockClient};
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let old = locks.lock("report").acquire().await?;
    /// let old_fence = old.fence();
    /// old.release().await?;
    /// let new = locks.lock("report").acquire().await?;
    /// assert!(locks.fenced_set("report", new.fence(), b"fresh").await?.is_accepted());
    /// // The earlier holder writes late: refused.
    /// let late = locks.fenced_set("report", old_fence, b"stale").await?;
    /// assert_eq!(late, FencedWrite::Rejected { highest: new.fence() });
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn fenced_set(
        &self,
        resource: &str,
        fence: u64,
        value: impl AsRef<[u8]>,
    ) -> Result<FencedWrite> {
        let record = record(value.as_ref(), None);
        check_record(resource, &record)?;
        self.inner.backend.fenced_set(resource, fence, record).await
    }

    /// [`fenced_set`](Self::fenced_set) for a record that expires `ttl` after
    /// the write; with it expires the memory of the highest fence, so use
    /// it for records that matter only for a window (a dedupe record, a
    /// done-marker). `ttl` is from 1 ns (kept for at least 1 ms) to
    /// [`MAX_RECORD_TTL`](crate::MAX_RECORD_TTL).
    ///
    /// ```
    /// use std::time::Duration;
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::memory();
    /// let ttl = Duration::from_secs(3600);
    /// assert!(locks.fenced_set_expiring("done:report", 9, b"ok", ttl).await?.is_accepted());
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn fenced_set_expiring(
        &self,
        resource: &str,
        fence: u64,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<FencedWrite> {
        let record = record(value.as_ref(), Some(ttl));
        check_record(resource, &record)?;
        self.inner.backend.fenced_set(resource, fence, record).await
    }

    /// The backend's clock, which all its clients share: Redis' `TIME` (the
    /// median of a Redlock majority), or `None` for the memory backend,
    /// whose clock is this process's.
    pub async fn server_time(&self) -> Result<Option<SystemTime>> {
        self.inner.backend.server_time().await
    }

    /// Reads the value and fence last accepted by [`LockClient::fenced_set`].
    pub async fn fenced_get(&self, resource: &str) -> Result<Option<FencedValue>> {
        if resource.is_empty() {
            return Err(LockError::invalid("resource", "must not be empty"));
        }
        self.inner.backend.fenced_get(resource).await
    }

    /// The connection this client's requests go over, for the worker's
    /// run history, fleet registry and inspection; `None` for a Redlock or
    /// the memory backend.
    #[doc(hidden)]
    pub async fn connection(&self) -> Result<Option<Conn>> {
        self.inner.backend.connection().await
    }

    /// The prefix of every key this client writes (default `soloist:`);
    /// `None` for a Redlock or the memory backend, which keep no records
    /// other parts can read.
    ///
    /// ```
    /// assert_eq!(soloist::LockClient::memory().key_prefix(), None);
    /// ```
    pub fn key_prefix(&self) -> Option<&str> {
        self.inner.backend.key_prefix()
    }

    /// Gives back a lock whose acquisition failed or was abandoned mid-flight:
    /// the request may have reached the server and taken the key even though
    /// its reply was lost. Best effort; the key expires within its ttl regardless.
    pub(crate) fn abandon(&self, key: &str, token: &str, kind: LeaseKind) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.inner.backend.clone();
        let (key, token) = (key.to_owned(), token.to_owned());
        runtime.spawn(async move {
            let _ = match kind {
                LeaseKind::Lock => backend.release(&key, &token).await,
                LeaseKind::Permit => backend.release_permit(&key, &token).await,
                LeaseKind::Read => backend.release_rw(&key, &token, false).await,
                LeaseKind::Write => backend.release_rw(&key, &token, true).await,
            };
        });
    }
}

/// A fenced write of `value`, without effects or an owner check.
fn record(value: &[u8], ttl: Option<Duration>) -> Record<'_> {
    Record {
        value,
        ttl,
        effects: &[],
        owner: None,
        commit: None,
    }
}

/// Settings for connecting a [`LockClient`] to Redis.
///
/// ```no_run
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::builder()
///     .prefix("billing:")
///     .op_timeout(Duration::from_millis(500))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    prefix: String,
    op_timeout: Option<Duration>,
    min_replicas: (u32, Duration),
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            prefix: "soloist:".to_owned(),
            op_timeout: None,
            min_replicas: (0, Duration::ZERO),
        }
    }
}

/// How long one request to one server may take, unless set.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for each node of a Redlock: short, so that a dead node costs
/// little; a decided acquisition never waits for it at all.
#[cfg(feature = "redlock")]
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(200);

impl ClientBuilder {
    /// The prefix of every Redis key and channel the client uses; default
    /// `soloist:`. Clients that must exclude each other need the same prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one request to one Redis server may take before it fails
    /// with [`LockError::Unresponsive`], from 1 ms to 1 h; default 2 s for a
    /// single node and 200 ms per node for a Redlock.
    pub fn op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = Some(op_timeout);
        self
    }

    /// Counts an acquisition, a watchdog renewal or a
    /// [`LockGuard::extend`](crate::LockGuard::extend) only once `n`
    /// replicas of the server acknowledged it, as Redis' `WAIT n timeout`
    /// reports; `n` from 1 to 64, or 0 (the default) for no check;
    /// `timeout` from 1 ms to 1 min and shorter than the
    /// [`op_timeout`](Self::op_timeout). `WAIT` goes in one pipeline with
    /// the script, so the check adds no round trip, but it holds the
    /// connection it runs on for up to `timeout`: requests pipelined on the
    /// same connection (other tasks' acquisitions and renewals) wait behind
    /// it.
    ///
    /// Too few acknowledgements fail the call with
    /// [`LockError::ReplicasUnconfirmed`]: an acquisition gives the key
    /// back first; a renewal or an extension does not move the lease's
    /// deadline, and the watchdog retries it until the deadline passes,
    /// when the lease counts as lost.
    ///
    /// This narrows one window: a failover to a replica that never received
    /// the lock key, after which a second owner could take it. It does not
    /// make Redis strongly consistent. Replication stays asynchronous; a
    /// replica that acknowledged can still lose the write if another
    /// replica is promoted, or in a later failover. Redis counts only
    /// replicas that have the write: for up to about a second after a
    /// replica's full resynchronisation its primary may send it nothing
    /// although it shows as online, so a `timeout` shorter than that fails
    /// acquisitions with `ReplicasUnconfirmed` in that window (rightly: a
    /// lock taken then is not on the replica). Redisson's lock does
    /// the same check (`WAIT` after the lock script). Only a single node
    /// takes it: [`redlock`](Self::redlock) fails with
    /// [`LockError::InvalidArgument`], as its nodes are meant to be
    /// independent masters.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use soloist::LockClient;
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::builder()
    ///     .min_replicas(1, Duration::from_millis(500))
    ///     .connect("redis://127.0.0.1:6379")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn min_replicas(mut self, n: u32, timeout: Duration) -> Self {
        self.min_replicas = (n, timeout);
        self
    }

    /// Connects to the Redis server at `url` (`redis://[user:pass@]host:port[/db]`,
    /// or `rediss://` for TLS with the `tls-rustls` feature); the same as
    /// [`open`](Self::open) with [`Deployment::server`].
    pub async fn connect(self, url: &str) -> Result<LockClient> {
        self.open(Deployment::server(url)).await
    }

    /// Connects to `deployment`: one server, a Sentinel-managed primary or a
    /// Redis Cluster, with its TLS settings.
    ///
    /// Fails with [`LockError::InvalidArgument`] naming `url` for a
    /// malformed URL or a `rediss://` one without the `tls-rustls` feature,
    /// naming `tls_root_certificate` / `tls_client_identity` for PEM that
    /// does not parse, and naming `prefix` for a prefix with `{` or `}` on a
    /// cluster (it would decide every key's hash slot); with a connection
    /// error when no server (no sentinel, no cluster node) can be reached.
    ///
    /// ```no_run
    /// use soloist::{Deployment, LockClient};
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::builder()
    ///     .prefix("billing:")
    ///     .open(Deployment::cluster(["redis://10.0.1.1:6379", "redis://10.0.1.2:6379"]))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(self, deployment: impl Into<Deployment>) -> Result<LockClient> {
        let deployment = deployment.into();
        if deployment.is_cluster() && self.prefix.contains(['{', '}']) {
            return Err(LockError::invalid(
                "prefix",
                format!(
                    "`{}` holds a brace; on a cluster it would put every key in one hash slot",
                    self.prefix
                ),
            ));
        }
        let settings = self.settings(DEFAULT_OP_TIMEOUT)?;
        let backend = RedisBackend::connect(&deployment, &settings).await?;
        Ok(LockClient::from_backend(backend))
    }

    /// Sets up a Redlock over the independent Redis masters at `urls` (3 or
    /// 5 is usual); see [`LockClient::redlock`].
    ///
    /// A node that restarts without persistence must stay out for one
    /// maximum ttl before it rejoins, or a lock it forgot could be granted
    /// twice: run Redis with `appendonly yes` and `appendfsync always`, or
    /// delay its start.
    #[cfg(feature = "redlock")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redlock")))]
    pub async fn redlock<I>(self, urls: I) -> Result<LockClient>
    where
        I: IntoIterator,
        I::Item: Into<Deployment>,
    {
        if self.min_replicas.0 > 0 {
            return Err(LockError::invalid(
                "min_replicas",
                "a Redlock's nodes are independent masters; replica acknowledgement needs a single node",
            ));
        }
        let settings = self.settings(DEFAULT_NODE_TIMEOUT)?;
        let nodes: Vec<Deployment> = urls.into_iter().map(Into::into).collect();
        let backend = RedlockBackend::connect(&nodes, &settings).await?;
        Ok(LockClient::from_backend(backend))
    }

    fn settings(self, default_op_timeout: Duration) -> Result<RedisSettings> {
        let op_timeout = self.op_timeout.unwrap_or(default_op_timeout);
        // Under a millisecond no request can be answered in time: every
        // operation would fail.
        if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&op_timeout) {
            return Err(LockError::invalid(
                "op_timeout",
                format!("must be between 1 ms and 1 h, got {op_timeout:?}"),
            ));
        }
        let replicas = match self.min_replicas {
            (0, _) => None,
            (count, timeout) => {
                if count > 64 {
                    return Err(LockError::invalid(
                        "min_replicas",
                        format!("must be between 0 and 64, got {count}"),
                    ));
                }
                // `WAIT` with 0 ms blocks forever; one at least as long as
                // the operation timeout would time the request out first.
                if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&timeout)
                    || timeout >= op_timeout
                {
                    return Err(LockError::invalid(
                        "min_replicas timeout",
                        format!(
                            "must be between 1 ms and 1 min and shorter than op_timeout ({op_timeout:?}), got {timeout:?}"
                        ),
                    ));
                }
                Some(Replicas { count, timeout })
            }
        };
        Ok(RedisSettings {
            prefix: self.prefix,
            op_timeout,
            client_id: crate::token::new_token(),
            replicas,
        })
    }
}
