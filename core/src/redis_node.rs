//! The single-node Redis backend: `SET NX PX` plus token-checked Lua scripts.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation};

use crate::backend::{Attempt, Backend, Renewal};
use crate::error::{LockError, Result};
use crate::fence::{FencedValue, FencedWrite};
use crate::metrics;
use crate::notice::Listener;
use crate::pool::{Connection, Pool};
use crate::pubsub::PubSubHub;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static FENCED_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fenced_set.lua")));

/// Connection settings for [`RedisBackend::connect`].
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) prefix: String,
    pub(crate) op_timeout: Duration,
    pub(crate) pool_size: u32,
}

/// Where each kind of key lives under the configured prefix. The namespaces
/// are disjoint, so no user key can collide with another key's fence counter.
#[derive(Debug)]
struct KeySpace {
    lock: String,
    fence: String,
    fenced: String,
}

impl KeySpace {
    fn new(prefix: &str) -> Self {
        KeySpace {
            lock: format!("{prefix}lock:"),
            fence: format!("{prefix}fence:"),
            fenced: format!("{prefix}fenced:"),
        }
    }

    fn lock(&self, key: &str) -> String {
        format!("{}{key}", self.lock)
    }

    fn fence(&self, key: &str) -> String {
        format!("{}{key}", self.fence)
    }

    fn fenced(&self, resource: &str) -> String {
        format!("{}{resource}", self.fenced)
    }
}

#[derive(Debug)]
pub(crate) struct RedisBackend {
    pool: Pool,
    keys: KeySpace,
    channel_prefix: String,
    op_timeout: Duration,
    hub: PubSubHub,
}

impl RedisBackend {
    /// Opens the pool and checks the server is reachable and safe to use.
    pub(crate) async fn connect(url: &str, settings: &RedisSettings) -> Result<Arc<Self>> {
        let client = redis::Client::open(url)
            .map_err(|err| LockError::invalid("url", format!("`{url}`: {err}")))?;
        let pool = Pool::new(client.clone(), settings.pool_size, settings.op_timeout);
        let channel_prefix = format!("{}released:", settings.prefix);
        let backend = RedisBackend {
            pool,
            keys: KeySpace::new(&settings.prefix),
            hub: PubSubHub::new(client, channel_prefix.clone(), settings.op_timeout),
            channel_prefix,
            op_timeout: settings.op_timeout,
        };
        backend.check_eviction_policy().await?;
        Ok(Arc::new(backend))
    }

    /// Eviction can delete a held lock key (or a fence counter) under memory
    /// pressure, which silently breaks mutual exclusion; only `noeviction`
    /// is safe. Servers that refuse `CONFIG` are let through unchecked.
    async fn check_eviction_policy(&self) -> Result<()> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let reply: Result<Vec<String>> = self
            .with_connection("config", async |conn| cmd.query_async(&mut conn.conn).await)
            .await;
        let policy = match reply {
            Ok(pair) => pair.into_iter().nth(1),
            Err(LockError::Protocol(err)) => {
                tracing::debug!(error = %err, "cannot read maxmemory-policy; eviction safety unchecked");
                None
            }
            Err(err) => return Err(err),
        };
        if let Some(policy) = policy {
            let unsafe_policy = policy != "noeviction";
            metrics::eviction_policy(&policy, unsafe_policy);
            if unsafe_policy {
                tracing::warn!(
                    policy = %policy,
                    "redis maxmemory-policy `{policy}` can evict lock keys and break mutual exclusion; set it to `noeviction`"
                );
            }
        }
        Ok(())
    }

    async fn with_connection<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T> {
        let attempt = async {
            let mut conn = self.pool.get().await?;
            let result = work(&mut conn).await;
            conn.observe(&result);
            result.map_err(|err| {
                if err.is_timeout() {
                    self.unresponsive(op)
                } else {
                    LockError::from(err)
                }
            })
        };
        tokio::time::timeout(self.op_timeout, attempt)
            .await
            .map_err(|_| self.unresponsive(op))?
    }

    fn unresponsive(&self, op: &'static str) -> LockError {
        LockError::Unresponsive {
            op,
            after: self.op_timeout,
        }
    }

    async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        self.with_connection(op, async |conn| {
            invocation.invoke_async(&mut conn.conn).await
        })
        .await
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Backend for RedisBackend {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt>> {
        async move {
            let mut invocation = ACQUIRE.prepare_invoke();
            invocation
                .key(self.keys.lock(key))
                .key(self.keys.fence(key))
                .arg(token)
                .arg(millis(ttl));
            let (acquired, value): (i64, i64) = self.script("acquire", &invocation).await?;
            Ok(if acquired == 1 {
                Attempt::Acquired {
                    fence: u64::try_from(value).unwrap_or(0),
                }
            } else {
                Attempt::Held {
                    expires_in: u64::try_from(value).ok().map(Duration::from_millis),
                }
            })
        }
        .boxed()
    }

    fn extend<'a>(&'a self, leases: &'a [Renewal<'a>]) -> BoxFuture<'a, Result<Vec<bool>>> {
        async move {
            let mut invocation = EXTEND.prepare_invoke();
            for lease in leases {
                invocation
                    .key(self.keys.lock(lease.key))
                    .arg(lease.token)
                    .arg(millis(lease.ttl));
            }
            let renewed: Vec<i64> = self.script("extend", &invocation).await?;
            if renewed.len() != leases.len() {
                return Err(LockError::Protocol(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "extend returned a flag count that does not match the lease count",
                ))));
            }
            Ok(renewed.into_iter().map(|flag| flag == 1).collect())
        }
        .boxed()
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        async move {
            let mut invocation = RELEASE.prepare_invoke();
            invocation
                .key(self.keys.lock(key))
                .arg(token)
                .arg(format!("{}{key}", self.channel_prefix));
            let released: i64 = self.script("release", &invocation).await?;
            if released == 1 {
                self.hub.notify_local(key);
            }
            Ok(released == 1)
        }
        .boxed()
    }

    fn listen<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Listener> {
        self.hub.listen(key).boxed()
    }

    fn fenced_set<'a>(
        &'a self,
        resource: &'a str,
        fence: u64,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<FencedWrite>> {
        async move {
            let mut invocation = FENCED_SET.prepare_invoke();
            invocation
                .key(self.keys.fenced(resource))
                .arg(fence.to_string())
                .arg(value);
            let (accepted, highest): (i64, String) = self.script("fenced_set", &invocation).await?;
            if accepted == 1 {
                return Ok(FencedWrite::Accepted);
            }
            let highest = highest.parse().map_err(|_| {
                LockError::Protocol(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "fenced resource holds a fence that is not a number",
                )))
            })?;
            Ok(FencedWrite::Rejected { highest })
        }
        .boxed()
    }

    fn fenced_get<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<FencedValue>>> {
        async move {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.fenced(resource))
                .arg("fence")
                .arg("value");
            let (fence, value): (Option<u64>, Option<Vec<u8>>) = self
                .with_connection("fenced_get", async |conn| {
                    cmd.query_async(&mut conn.conn).await
                })
                .await?;
            Ok(fence
                .zip(value)
                .map(|(fence, value)| FencedValue { fence, value }))
        }
        .boxed()
    }
}
