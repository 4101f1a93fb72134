//! One Redis server: the scripts and the pooled connection every Redis
//! backend runs them on. `SET NX PX` takes a key; release and renewal act
//! only while the caller's owner token still matches.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{FromRedisValue, RedisError, Script, ScriptInvocation};

use crate::backend::{Attempt, Record, Renewal, Waiting};
use crate::error::{LockError, Result};
use crate::fence::{FencedValue, FencedWrite};
use crate::metrics;
use crate::pool::{Connection, Pool};
use crate::tls::{TlsOptions, open_client};

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static FENCED_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fenced_set.lua")));
static PASS_ON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/pass_on.lua")));
static COMMIT_FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/commit_fence.lua")));

/// Connection settings of a Redis backend.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) prefix: String,
    pub(crate) op_timeout: Duration,
    pub(crate) pool_size: u32,
    /// Names this client in the queues of waiting clients and in its wake
    /// channel; fresh for every client.
    pub(crate) client_id: String,
    /// The private CA and client identity, if any, for `rediss://` URLs.
    pub(crate) tls: TlsOptions,
    /// Replicas that must acknowledge a lock write before it counts.
    pub(crate) replicas: Option<Replicas>,
}

/// `WAIT count timeout` after every acquisition and renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replicas {
    pub(crate) count: u32,
    pub(crate) timeout: Duration,
}

/// Where each kind of key lives under the configured prefix. The namespaces
/// are disjoint, so no user key can collide with another key's fence counter.
#[derive(Debug)]
struct KeySpace {
    lock: String,
    fence: String,
    fenced: String,
    waiters: String,
}

impl KeySpace {
    fn new(prefix: &str) -> Self {
        KeySpace {
            lock: format!("{prefix}lock:"),
            fence: format!("{prefix}fence:"),
            fenced: format!("{prefix}fenced:"),
            waiters: format!("{prefix}waiters:"),
        }
    }

    fn waiters(&self, key: &str) -> String {
        format!("{}{key}", self.waiters)
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

/// What one node answered to the first Redlock phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Taken; the node's fence counter (or its clock, if it lost the counter).
    Granted { counter: u64 },
    /// Held by another owner, whose lease here runs out in `expires_in` if known.
    Refused { expires_in: Option<Duration> },
}

#[derive(Debug)]
pub(crate) struct RedisNode {
    client: redis::Client,
    pool: Pool,
    keys: KeySpace,
    /// Where wake-ups are published; a client id completes the channel name.
    wake_prefix: String,
    client_id: String,
    op_timeout: Duration,
    replicas: Option<Replicas>,
}

impl RedisNode {
    /// Parses `url` and sets up a lazily connecting pool; nothing is sent yet.
    pub(crate) fn new(url: &str, settings: &RedisSettings) -> Result<Self> {
        let client = open_client(url, &settings.tls)?;
        Ok(RedisNode {
            pool: Pool::new(client.clone(), settings.pool_size, settings.op_timeout),
            client,
            keys: KeySpace::new(&settings.prefix),
            wake_prefix: format!("{}wake:", settings.prefix),
            client_id: settings.client_id.clone(),
            op_timeout: settings.op_timeout,
            replicas: settings.replicas,
        })
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// How many of this node's connections were retired for reaching a
    /// demoted server; see `Pool::demotions`.
    pub(crate) fn demotions(&self) -> u64 {
        self.pool.demotions()
    }

    /// The channel this client's wake-ups arrive on.
    pub(crate) fn wake_channel(&self) -> String {
        format!("{}{}", self.wake_prefix, self.client_id)
    }

    /// The server this node talks to, whatever the database or credentials.
    pub(crate) fn server(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }

    /// Eviction can delete a held lock key (or a fence counter) under memory
    /// pressure, which silently breaks mutual exclusion; only `noeviction`
    /// is safe. Servers that refuse `CONFIG` are let through unchecked.
    pub(crate) async fn check_eviction_policy(&self) -> Result<()> {
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
        // No timer of our own: the pool's check-out and the connection's
        // connect and response timeouts are all set to `op_timeout`.
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

    /// Runs a script that writes, then `WAIT`s for the configured replicas
    /// in the same pipeline, so the check costs no extra round trip. Returns
    /// the reply and, with replicas configured, how many acknowledged.
    async fn script_replicated<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<(T, Option<u32>)> {
        let Some(replicas) = self.replicas else {
            return Ok((self.script(op, invocation).await?, None));
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas.count).arg(millis(replicas.timeout));
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation).add_command(wait.clone());
        self.with_connection(op, async |conn| {
            match pipe.query_async(&mut conn.conn).await {
                // A pipelined EVALSHA does not load its script on NOSCRIPT
                // (a new server, a restart, SCRIPT FLUSH): this once, run
                // it the usual way, which loads it, then `WAIT`.
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    let reply = invocation.invoke_async(&mut conn.conn).await?;
                    let acknowledged = wait.query_async(&mut conn.conn).await?;
                    Ok((reply, Some(acknowledged)))
                }
                Err(err) => Err(err),
                Ok((reply, acknowledged)) => Ok((reply, Some(acknowledged))),
            }
        })
        .await
    }
}

/// A ttl as Redis takes it: whole milliseconds, at least one.
pub(crate) fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unexpected(what: &'static str) -> LockError {
    LockError::Protocol(RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        what,
    )))
}

impl RedisNode {
    /// Takes `key` for `token` if free, issuing a fence from `counter`
    /// atomically with it.
    pub(crate) async fn try_acquire(
        &self,
        key: &str,
        counter: &str,
        token: &str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> Result<Attempt> {
        let (acquired, value, acknowledged) = self
            .take(key, counter, token, ttl, waiting, "fence")
            .await?;
        if acquired && let Some(err) = self.unconfirmed(key, acknowledged) {
            // Not replicated enough to count: give the key back rather than
            // hold a lock a failover could hand to someone else.
            self.release(key, token).await?;
            return Err(err);
        }
        Ok(if acquired {
            Attempt::Acquired(value.ok_or_else(|| unexpected("negative fence"))?)
        } else {
            Attempt::Held {
                expires_in: value.map(Duration::from_millis),
            }
        })
    }

    /// Redlock's first phase: takes `key` here and reads this node's `counter`.
    pub(crate) async fn grant(
        &self,
        key: &str,
        counter: &str,
        token: &str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> Result<Grant> {
        let (granted, value, _) = self
            .take(key, counter, token, ttl, waiting, "counter")
            .await?;
        Ok(if granted {
            Grant::Granted {
                counter: value.ok_or_else(|| unexpected("negative fence counter"))?,
            }
        } else {
            Grant::Refused {
                expires_in: value.map(Duration::from_millis),
            }
        })
    }

    /// Runs the acquire script: `true` and the fence (or the counter) when
    /// taken, `false` and the holder's remaining ttl when held; a negative
    /// number comes back as `None`; then how many replicas acknowledged.
    async fn take(
        &self,
        key: &str,
        counter: &str,
        token: &str,
        ttl: Duration,
        waiting: Option<Waiting>,
        mode: &str,
    ) -> Result<(bool, Option<u64>, Option<u32>)> {
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(self.keys.lock(key))
            .key(self.keys.fence(counter))
            .key(self.keys.waiters(key))
            .arg(token)
            .arg(millis(ttl))
            .arg(waiting.map_or("", |_| self.client_id.as_str()))
            .arg(if waiting.is_some_and(|w| w.more) {
                "1"
            } else {
                "0"
            })
            .arg(mode);
        let ((taken, value), acknowledged): ((i64, i64), _) =
            self.script_replicated("acquire", &invocation).await?;
        Ok((taken == 1, u64::try_from(value).ok(), acknowledged))
    }

    /// Redlock's second phase: raises this node's `counter` to `fence`
    /// while it still holds `key` for `token`.
    pub(crate) async fn commit_fence(
        &self,
        key: &str,
        counter: &str,
        token: &str,
        fence: u64,
    ) -> Result<bool> {
        let mut invocation = COMMIT_FENCE.prepare_invoke();
        invocation
            .key(self.keys.lock(key))
            .key(self.keys.fence(counter))
            .arg(token)
            .arg(fence.to_string());
        let committed: i64 = self.script("commit_fence", &invocation).await?;
        Ok(committed == 1)
    }

    /// The error for a write that fewer replicas than configured
    /// acknowledged; `None` when it counts.
    fn unconfirmed(&self, key: &str, acknowledged: Option<u32>) -> Option<LockError> {
        let wanted = self.replicas?.count;
        let acknowledged = acknowledged.unwrap_or(0);
        (acknowledged < wanted).then(|| LockError::ReplicasUnconfirmed {
            key: key.to_owned(),
            wanted,
            acknowledged,
        })
    }

    /// Renews every lease still owned by its token; one flag per lease.
    /// Fails with [`LockError::ReplicasUnconfirmed`] (naming the first
    /// lease) when too few replicas acknowledged: none of the renewals
    /// counts, although the primary applied them.
    pub(crate) async fn extend(&self, leases: &[Renewal<'_>]) -> Result<Vec<bool>> {
        let mut invocation = EXTEND.prepare_invoke();
        for lease in leases {
            invocation
                .key(self.keys.lock(lease.key))
                .arg(lease.token)
                .arg(millis(lease.ttl));
        }
        let (renewed, acknowledged): (Vec<i64>, _) =
            self.script_replicated("extend", &invocation).await?;
        if let Some(first) = leases.first()
            && let Some(err) = self.unconfirmed(first.key, acknowledged)
        {
            return Err(err);
        }
        if renewed.len() != leases.len() {
            return Err(unexpected(
                "extend returned a flag count that does not match the lease count",
            ));
        }
        Ok(renewed.into_iter().map(|flag| flag == 1).collect())
    }

    /// Deletes `key` if `token` owns it and, if clients queued for it,
    /// wakes the first that still listens.
    pub(crate) async fn release(&self, key: &str, token: &str) -> Result<bool> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(self.keys.lock(key))
            .key(self.keys.waiters(key))
            .arg(token)
            .arg(&self.wake_prefix)
            .arg(key);
        let released: i64 = self.script("release", &invocation).await?;
        Ok(released == 1)
    }

    /// Leaves `key`'s queue after a wake-up nobody here wants any more, and
    /// wakes the next client in line (or marks the holder to do so).
    pub(crate) async fn pass_on(&self, key: &str) -> Result<()> {
        let mut invocation = PASS_ON.prepare_invoke();
        invocation
            .key(self.keys.lock(key))
            .key(self.keys.waiters(key))
            .arg(&self.client_id)
            .arg(&self.wake_prefix)
            .arg(key);
        let _: i64 = self.script("pass_on", &invocation).await?;
        Ok(())
    }

    /// Stores `value` under `resource` unless a higher fence was seen there.
    pub(crate) async fn fenced_set(
        &self,
        resource: &str,
        fence: u64,
        record: Record<'_>,
    ) -> Result<FencedWrite> {
        let mut invocation = FENCED_SET.prepare_invoke();
        invocation.key(self.keys.fenced(resource));
        if let Some((key, _)) = record.owner {
            invocation.key(self.keys.lock(key));
        }
        invocation
            .arg(fence.to_string())
            .arg(record.value)
            .arg(record.ttl.map_or(0, millis))
            .arg(record.owner.map_or("", |(_, token)| token))
            .arg(record.commit.unwrap_or(""))
            .arg(record.effects.len());
        for effect in record.effects {
            invocation.arg(effect.len());
            for arg in effect {
                invocation.arg(arg.as_slice());
            }
        }
        let reply: Vec<String> = self.script("fenced_set", &invocation).await?;
        match (
            reply.first().map(String::as_str),
            reply.get(1),
            reply.get(2),
        ) {
            (Some("1"), _, Some(failed)) if !failed.is_empty() => Err(LockError::EffectRefused {
                resource: resource.to_owned(),
                error: failed.clone(),
            }),
            (Some("1"), _, _) => Ok(FencedWrite::Accepted),
            (Some("2"), _, _) => Ok(FencedWrite::NotHeld),
            (_, Some(highest), _) => Ok(FencedWrite::Rejected {
                highest: highest.parse().map_err(|_| {
                    unexpected("fenced resource holds a fence that is not a number")
                })?,
            }),
            _ => Err(unexpected("fenced write returned nothing")),
        }
    }

    /// The server's clock, from `TIME`.
    pub(crate) async fn server_time(&self) -> Result<SystemTime> {
        let (secs, micros): (u64, u64) = self
            .with_connection("time", async |conn| {
                redis::cmd("TIME").query_async(&mut conn.conn).await
            })
            .await?;
        Ok(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    pub(crate) async fn fenced_get(&self, resource: &str) -> Result<Option<FencedValue>> {
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
}
