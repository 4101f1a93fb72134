//! One Redis server: the scripts and the pooled connection every Redis
//! backend runs them on. `SET NX PX` takes a key; release and renewal act
//! only while the caller's owner token still matches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{FromRedisValue, RedisError, Script, ScriptInvocation};

use crate::along::{carrying, composed, push_args};
use crate::backend::{Attempt, LeaseKind, Record, Renewal, Waiting};
use crate::error::{LockError, Result};
use crate::fence::{FencedValue, FencedWrite};
use crate::metrics;
use crate::pool::{Connection, Pool};
use crate::slot::{push_tagged, slot_of_tagged};
use crate::table::CommandTable;
use crate::tls::Target;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static FENCED_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fenced_set.lua")));
static PASS_ON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/pass_on.lua")));
static PERMIT_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_acquire.lua")));
static PERMIT_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_release.lua")));
static PERMIT_EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_extend.lua")));
static PERMIT_PASS_ON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_pass_on.lua")));
static RW_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rw_acquire.lua")));
static RW_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rw_release.lua")));
static RATE_GCRA: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/rate_gcra.lua")));
/// [`RELEASE`] and [`PERMIT_RELEASE`], carrying commands along (see `along.rs`).
static RELEASE_ALONG: LazyLock<Script> =
    LazyLock::new(|| carrying(include_str!("scripts/release.lua")));
static PERMIT_RELEASE_ALONG: LazyLock<Script> =
    LazyLock::new(|| carrying(include_str!("scripts/semaphore_release.lua")));
/// Many claims and many settlements in one call each (see `batch.rs`),
/// built around the single-key scripts' own text.
static CLAIM_ALL: LazyLock<Script> = LazyLock::new(|| {
    composed(
        &[("acquire", include_str!("scripts/acquire.lua"))],
        &[
            include_str!("scripts/commands.lua"),
            include_str!("scripts/claim_all.lua"),
        ]
        .concat(),
    )
});
static SETTLE_ALL: LazyLock<Script> = LazyLock::new(|| {
    composed(
        &[
            ("commit", include_str!("scripts/fenced_set.lua")),
            ("release", include_str!("scripts/release.lua")),
        ],
        &[
            include_str!("scripts/commands.lua"),
            include_str!("scripts/settle_all.lua"),
        ]
        .concat(),
    )
});
static ABANDON_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    composed(
        &[("release", include_str!("scripts/release.lua"))],
        include_str!("scripts/abandon_claim.lua"),
    )
});
#[cfg(feature = "redlock")]
static COMMIT_FENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/commit_fence.lua")));

/// Connection settings of a Redis backend.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) prefix: String,
    pub(crate) op_timeout: Duration,
    /// Names this client in the queues of waiting clients and in its wake
    /// channel; fresh for every client.
    pub(crate) client_id: String,
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
/// are disjoint, so no user key can collide with another key's fence
/// counter; inside each, the user key is written [`tagged`](crate::slot::tagged), so every key
/// of one lock shares the hash slot of the user key.
#[derive(Debug)]
struct KeySpace {
    lock: String,
    fence: String,
    fenced: String,
    waiters: String,
    /// A semaphore's holders, its fence counter and its waiting clients.
    permits: String,
    permit_fence: String,
    permit_waiters: String,
    /// A rate limit's theoretical arrival time.
    rate: String,
    /// A read-write lock's readers, writer, waiting writer's intent, fence
    /// counter and waiting clients.
    rw_readers: String,
    rw_writer: String,
    rw_intent: String,
    rw_fence: String,
    rw_waiters: String,
}

impl KeySpace {
    fn new(prefix: &str) -> Self {
        KeySpace {
            lock: format!("{prefix}lock:"),
            fence: format!("{prefix}fence:"),
            fenced: format!("{prefix}fenced:"),
            waiters: format!("{prefix}waiters:"),
            permits: format!("{prefix}sem:"),
            permit_fence: format!("{prefix}sem-fence:"),
            permit_waiters: format!("{prefix}sem-waiters:"),
            rate: format!("{prefix}rate:"),
            rw_readers: format!("{prefix}rw-readers:"),
            rw_writer: format!("{prefix}rw-writer:"),
            rw_intent: format!("{prefix}rw-intent:"),
            rw_fence: format!("{prefix}rw-fence:"),
            rw_waiters: format!("{prefix}rw-waiters:"),
        }
    }

    fn waiters(&self, key: &str) -> String {
        named(&self.waiters, key)
    }

    fn lock(&self, key: &str) -> String {
        named(&self.lock, key)
    }

    fn fence(&self, key: &str) -> String {
        named(&self.fence, key)
    }

    fn fenced(&self, resource: &str) -> String {
        named(&self.fenced, resource)
    }

    /// [`lock`](Self::lock), written where it is sent.
    fn lock_name<'a>(&'a self, key: &'a str) -> Name<'a> {
        Name {
            prefix: &self.lock,
            key,
        }
    }

    /// [`waiters`](Self::waiters), written where it is sent.
    fn waiters_name<'a>(&'a self, key: &'a str) -> Name<'a> {
        Name {
            prefix: &self.waiters,
            key,
        }
    }
}

/// `prefix` followed by `key` [`tagged`](crate::slot::tagged), in one allocation: key names are
/// built on every acquisition, renewal and release.
fn named(prefix: &str, key: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + key.len() + 3);
    name.push_str(prefix);
    push_tagged(&mut name, key);
    name
}

/// A key name as [`named`] builds it, written straight into the command
/// that sends it: the names of a lock cycle's commands cost no `String`
/// each.
#[derive(Debug, Clone, Copy)]
struct Name<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl redis::ToRedisArgs for Name<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write;
        let (before, after) = crate::slot::tag_around(self.key);
        let mut arg = out.writer_for_next_arg();
        for part in [self.prefix, before, self.key, after] {
            // Writing into the command's buffer cannot fail.
            let _ = arg.write_all(part.as_bytes());
        }
    }
}

/// An `EVALSHA` of `script` built as the command that is sent: a
/// `ScriptInvocation` gathers every key and argument in a vector of its
/// own and copies them into the command after, and is then sent as a
/// pipeline of one.
struct Eval<'s> {
    script: &'s Script,
    cmd: redis::Cmd,
}

impl<'s> Eval<'s> {
    /// An `EVALSHA` of `script` with `keys` keys, to be given next.
    fn new(script: &'s Script, keys: usize, args: usize) -> Self {
        let mut cmd = redis::Cmd::with_capacity(3 + keys + args, 64 + 48 * (keys + args));
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        Eval { script, cmd }
    }

    fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }
}

/// What one node answered to the first Redlock phase.
#[cfg(feature = "redlock")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Taken; the node's fence counter (or its clock, if it lost the counter).
    Granted { counter: u64 },
    /// Held by another owner, whose lease here runs out in `expires_in` if known.
    Refused { expires_in: Option<Duration> },
}

#[derive(Debug)]
pub(crate) struct RedisNode {
    target: Target,
    pool: Pool,
    keys: KeySpace,
    /// Where wake-ups are published; a client id completes the channel name.
    wake_prefix: String,
    /// Where [`claim_all`](Self::claim_all) keeps the last fence it issued
    /// (see `scripts/claim_all.lua`).
    fence_clock: String,
    prefix: String,
    client_id: String,
    op_timeout: Duration,
    replicas: Option<Replicas>,
    /// Whether acquisitions that do not wait try the transaction fast path
    /// first (see [`take_fast`](Self::take_fast)); off for good once the
    /// server refuses it.
    fast_path: AtomicBool,
    /// Fence counters this client has seen seeded, by their Redis key: only
    /// those take the fast path, so that a key acquired for the first time
    /// (a lock per run, per message) costs one script call, not a
    /// transaction that finds the counter new and then the script.
    seeded: Mutex<HashSet<String>>,
}

/// The most counters [`RedisNode::seeded`] remembers; past it, it starts over.
const SEEDED_REMEMBERED: usize = 4096;

/// A fence counter below this was never seeded from the server clock: it is
/// new, or an `INCR` created it after the counter was lost. 10^15 µs after
/// the epoch is 2001-09-09; `scripts/acquire.lua` seeds such a counter.
const SEEDED: i64 = 1_000_000_000_000_000;

/// How [`RedisNode::take_fast`] takes a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fast<'a> {
    /// `SET NX PX GET` and `INCR` of the fence counter (its Redis key) in
    /// one `MULTI`/`EXEC`.
    Fenced { counter: &'a str },
    /// `SET NX PX GET` alone.
    Unfenced,
}

impl RedisNode {
    /// Sets up a lazily connecting pool to `target`; nothing is sent yet.
    pub(crate) fn new(target: Target, settings: &RedisSettings) -> Self {
        RedisNode {
            pool: Pool::new(target.clone(), settings.op_timeout),
            target,
            keys: KeySpace::new(&settings.prefix),
            wake_prefix: format!("{}wake:", settings.prefix),
            fence_clock: format!("{}fence-clock", settings.prefix),
            prefix: settings.prefix.clone(),
            client_id: settings.client_id.clone(),
            op_timeout: settings.op_timeout,
            replicas: settings.replicas,
            fast_path: AtomicBool::new(true),
            seeded: Mutex::default(),
        }
    }

    /// A client for a connection of our own (the wake-up subscription): the
    /// server, the primary the sentinels name, or a node of the cluster.
    pub(crate) async fn subscriber(&self) -> Result<redis::Client> {
        self.target.server(self.op_timeout, self.op_timeout).await
    }

    /// Whether this node is a Redis Cluster, where every script's keys must
    /// share a hash slot.
    fn is_cluster(&self) -> bool {
        #[cfg(feature = "cluster")]
        return matches!(self.target, Target::Cluster { .. });
        #[cfg(not(feature = "cluster"))]
        false
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

    /// Checks the server is reachable and safe to use: see
    /// [`check_eviction_policy`](Self::check_eviction_policy) and
    /// [`check_wake_permission`](Self::check_wake_permission).
    pub(crate) async fn check_server(&self) -> Result<()> {
        self.check_eviction_policy().await?;
        self.check_wake_permission().await?;
        self.check_transactions().await
    }

    /// Whether the user may run `MULTI` and `EXEC`, which the fast path of
    /// an acquisition needs (see [`take_fast`](Self::take_fast)); without
    /// them every acquisition goes through the acquire script. Asked with
    /// an empty transaction sent as two plain commands: a transaction whose
    /// `MULTI` is refused must not be sent as one, since redis-rs' reply
    /// accounting fails on an error in `MULTI`'s own reply.
    async fn check_transactions(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("MULTI").cmd("EXEC");
        let replies: Vec<redis::RedisResult<redis::Value>> = self
            .with_connection("multi", async |conn| pipe.query_async(&mut conn.conn).await)
            .await?;
        let allowed = |at: usize| matches!(replies.get(at), Some(Ok(_)));
        match (allowed(0), allowed(1)) {
            (true, true) => Ok(()),
            (true, false) => Err(LockError::invalid(
                "acl",
                "the user may run `MULTI` but not `EXEC`, which leaves its connections inside a transaction: grant both (`+multi +exec`) or neither",
            )),
            (false, _) => {
                tracing::debug!(
                    "the user may not run MULTI; acquisitions that do not wait go through the acquire script"
                );
                self.fast_path.store(false, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Releases wake waiters over pub/sub, so an ACL user needs the wake
    /// channels (`&<prefix>*`). Without them waiting would silently fall
    /// back to polling: refuse at connect instead, saying what is missing.
    async fn check_wake_permission(&self) -> Result<()> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.wake_channel()).arg("");
        let reply: Result<i64> = self
            .with_connection("publish", async |conn| {
                publish.query_async(&mut conn.conn).await
            })
            .await;
        match reply {
            Err(LockError::Protocol(err)) if err.code() == Some("NOPERM") => {
                Err(LockError::invalid(
                    "acl",
                    format!(
                        "the user may not publish on `{}*`, where releases wake waiting clients: grant it `&{}*`",
                        self.wake_prefix,
                        self.wake_prefix
                            .strip_suffix("wake:")
                            .unwrap_or(&self.wake_prefix)
                    ),
                ))
            }
            Err(err) => Err(err),
            Ok(_) => Ok(()),
        }
    }

    /// Eviction can delete a held lock key (or a fence counter) under memory
    /// pressure, which silently breaks mutual exclusion; only `noeviction`
    /// is safe. Servers that refuse `CONFIG` are let through unchecked; on a
    /// cluster, one node answers for all.
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
        // No timer of our own: every reply, and connecting to each server,
        // is bounded by `op_timeout` (a cluster request as a whole too,
        // redirections included). Opening a connection may take several
        // such steps: a Sentinel lookup passes over a frozen sentinel after
        // its timeout, and a cluster's first connection tries the listed
        // nodes in turn, each with the timeout.
        let mut conn = self.pool.get().await?;
        let result = work(&mut conn).await;
        conn.observe(&result);
        result.map_err(|err| {
            if err.is_timeout() {
                self.unresponsive(op)
            } else {
                self.pool.error(err)
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
        script: &Script,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let (reply, _) = self
            .with_connection(op, async |conn| {
                run_script(&mut conn.conn, script, invocation, None).await
            })
            .await?;
        Ok(reply)
    }

    /// Runs a script that writes, then `WAIT`s for the configured replicas
    /// in the same pipeline, so the check costs no extra round trip. Returns
    /// the reply and, with replicas configured, how many acknowledged.
    async fn script_replicated<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<(T, Option<u32>)> {
        let wait = self.replicas.map(|replicas| {
            let mut wait = redis::cmd("WAIT");
            wait.arg(replicas.count).arg(millis(replicas.timeout));
            wait
        });
        self.with_connection(op, async |conn| {
            run_script(&mut conn.conn, script, invocation, wait.as_ref()).await
        })
        .await
    }
}

impl RedisNode {
    /// Runs `eval` as [`script_replicated`](Self::script_replicated) runs an
    /// invocation: with replicas configured, in one pipeline with `WAIT`.
    async fn eval_replicated<T: FromRedisValue>(
        &self,
        op: &'static str,
        eval: &Eval<'_>,
    ) -> Result<(T, Option<u32>)> {
        let wait = self.replicas.map(|replicas| {
            let mut wait = redis::cmd("WAIT");
            wait.arg(replicas.count).arg(millis(replicas.timeout));
            wait
        });
        self.eval_then(op, eval, wait.as_ref()).await
    }

    /// Runs `eval` as [`script`](Self::script) runs an invocation: one
    /// command, not a pipeline, unless the server does not know the script.
    async fn eval<T: FromRedisValue>(&self, op: &'static str, eval: &Eval<'_>) -> Result<T> {
        Ok(self.eval_then(op, eval, None).await?.0)
    }

    /// Runs `eval` alone, or in one pipeline with `wait` if given; a server
    /// that does not know the script gets it again with `SCRIPT LOAD` in
    /// front (see [`run_script`]).
    async fn eval_then<T: FromRedisValue>(
        &self,
        op: &'static str,
        eval: &Eval<'_>,
        wait: Option<&redis::Cmd>,
    ) -> Result<(T, Option<u32>)> {
        let pipeline = |load: bool| {
            let mut pipe = redis::pipe();
            if load {
                pipe.load_script(eval.script).ignore();
            }
            pipe.add_command(eval.cmd.clone());
            if let Some(wait) = wait {
                pipe.add_command(wait.clone());
            }
            pipe
        };
        self.with_connection(op, async |conn| {
            let first = match wait {
                Some(_) => send(&mut conn.conn, &pipeline(false), true).await,
                None => eval
                    .cmd
                    .query_async(&mut conn.conn)
                    .await
                    .map(|reply| (reply, None)),
            };
            match first {
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    send(&mut conn.conn, &pipeline(true), wait.is_some()).await
                }
                outcome => outcome,
            }
        })
        .await
    }
}

/// Runs `invocation` of `script` on `conn`, loading the script on the node
/// that runs it when that node does not know it (see `run_script`); for
/// scripts of the worker's stream sources.
#[doc(hidden)]
pub async fn invoke_script<T: FromRedisValue>(
    conn: &mut crate::pool::Conn,
    script: &Script,
    invocation: &ScriptInvocation<'_>,
) -> Result<T, RedisError> {
    let (reply, _) = run_script(conn, script, invocation, None).await?;
    Ok(reply)
}

/// Runs `invocation` of `script`, then `wait` if given, in one pipeline,
/// returning the script's reply and what `WAIT` answered. A server that does
/// not know the script (new, restarted, `SCRIPT FLUSH`) answers `NOSCRIPT`:
/// then the pipeline is sent once more with `SCRIPT LOAD` in front, so on a
/// cluster the script is loaded on the node that runs it (redis-rs' own
/// fallback loads it on every node, and fails while one is down).
async fn run_script<T: FromRedisValue>(
    conn: &mut crate::pool::Conn,
    script: &Script,
    invocation: &ScriptInvocation<'_>,
    wait: Option<&redis::Cmd>,
) -> Result<(T, Option<u32>), RedisError> {
    let pipeline = |load: bool| {
        let mut pipe = redis::pipe();
        if load {
            pipe.load_script(script).ignore();
        }
        pipe.invoke_script(invocation);
        if let Some(wait) = wait {
            pipe.add_command(wait.clone());
        }
        pipe
    };
    match send(conn, &pipeline(false), wait.is_some()).await {
        Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            send(conn, &pipeline(true), wait.is_some()).await
        }
        outcome => outcome,
    }
}

/// Sends a pipeline of a script and, if `waits`, a `WAIT` after it.
async fn send<T: FromRedisValue>(
    conn: &mut crate::pool::Conn,
    pipe: &redis::Pipeline,
    waits: bool,
) -> Result<(T, Option<u32>), RedisError> {
    if waits {
        let (reply, acknowledged) = pipe.query_async(conn).await?;
        Ok((reply, Some(acknowledged)))
    } else {
        let (reply,) = pipe.query_async(conn).await?;
        Ok((reply, None))
    }
}

/// One claim of [`RedisNode::claim_all`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawClaim<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl: Duration,
    pub(crate) record: Option<&'a str>,
    pub(crate) if_recorded: &'a [redis::Cmd],
    pub(crate) if_acquired: &'a [redis::Cmd],
}

/// One item of [`RedisNode::settle_all`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawSettle<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    /// The record's resource, the holder's fence and what to write.
    pub(crate) record: Option<(&'a str, u64, Record<'a>)>,
    pub(crate) if_committed: &'a [redis::Cmd],
    pub(crate) otherwise: &'a [redis::Cmd],
    /// Commands gathered over the call, each with at least two arguments.
    pub(crate) together: &'a [Vec<Vec<u8>>],
}

/// Appends a list of commands as the batch scripts take it: its length,
/// then each command as its argument count and its arguments.
fn push_commands<C: AsRef<[Vec<u8>]>>(out: &mut redis::Cmd, commands: &[C]) {
    out.arg(commands.len());
    for command in commands {
        let command = command.as_ref();
        out.arg(command.len());
        for arg in command {
            out.arg(arg.as_slice());
        }
    }
}

/// Whether a refusal of the fast path lasts as long as the client: the
/// server cannot run one of its commands at all (`SET … NX … GET` before
/// Redis 7.0 is a syntax error; a command unknown, renamed away, or not in
/// the user's ACL). Anything else (out of memory under `noeviction`, a
/// server still loading, a key the ACL denies, a redirection) passes, and
/// only the attempt it met goes through the script.
fn lasting(code: &str, detail: &str) -> bool {
    match code {
        "ERR" => detail.contains("syntax") || detail.contains("unknown command"),
        // Redis 6 and 7.0 say "this user has no permissions to run the
        // 'multi' command", 7.2 on "User … has no permissions to run the
        // 'multi' command"; a denied key or channel says "access".
        "NOPERM" => detail.contains("to run"),
        _ => false,
    }
}

/// What the server made of the fast path's `MULTI`, `SET`, `INCR`, `EXEC`,
/// read from their four replies (see [`read_fast`]).
#[derive(Debug, PartialEq, Eq)]
struct FastReply {
    /// `SET`'s reply (the previous holder, `None` when it took the key) and
    /// `INCR`'s (`None` if it failed), when the `SET` ran: inside the
    /// transaction, or on its own after a refused `MULTI`.
    ran: Option<(Option<Vec<u8>>, Option<i64>)>,
    /// The refusal met, as the server worded it, if any.
    refusal: Option<String>,
    /// The refusal will last (see [`lasting`]): no more fast path.
    lasting: bool,
    /// The server may have left the connection inside the transaction (an
    /// `EXEC` refused, not discarded): it must not carry another command.
    stuck: bool,
}

/// Reads the four replies of the fast path's transaction sent as plain
/// commands. Sent as a redis-rs atomic pipeline, a refused `MULTI` breaks
/// redis-rs' reply accounting (1.8.1 panics on it), and the `SET` and `INCR`
/// that then run on their own (their replies real results, not `QUEUED`)
/// would be lost with a lock taken. An `EXECABORT` carries no cause; the
/// queued command's own reply does.
fn read_fast(replies: &[redis::Value]) -> FastReply {
    use redis::Value;
    let refusal_of = |value: &Value| match value {
        Value::ServerError(err) => Some((
            err.code().to_owned(),
            err.details().unwrap_or_default().to_owned(),
        )),
        _ => None,
    };
    let holder = |value: &Value| match value {
        Value::Nil => Some(None),
        Value::BulkString(holder) => Some(Some(holder.clone())),
        _ => None,
    };
    let fence = |value: &Value| match value {
        Value::Int(fence) => Some(*fence),
        _ => None,
    };
    let mut reply = FastReply {
        ran: None,
        refusal: None,
        lasting: false,
        stuck: false,
    };
    let refused = |reply: &mut FastReply, (code, detail): (String, String)| {
        reply.lasting |= lasting(&code, &detail);
        reply.refusal.get_or_insert(format!("{code} {detail}"));
    };
    let [multi, set, incr, exec] = replies else {
        reply.refusal = Some(format!("{} replies to 4 commands", replies.len()));
        reply.stuck = true;
        return reply;
    };
    if let Some(cause) = refusal_of(multi) {
        refused(&mut reply, cause);
        // No transaction: `SET` and `INCR` ran on their own, unless the
        // connection was already inside one (then they answer `QUEUED`).
        match holder(set) {
            Some(holder) => reply.ran = Some((holder, fence(incr))),
            None => match refusal_of(set) {
                Some(cause) => refused(&mut reply, cause),
                None => reply.stuck = true,
            },
        }
        return reply;
    }
    match exec {
        Value::Array(results) => match results.as_slice() {
            [set, incr] if holder(set).is_some() => {
                reply.ran = holder(set).map(|holder| (holder, fence(incr)));
                if let Some(cause) = refusal_of(incr) {
                    refused(&mut reply, cause);
                }
            }
            [set, ..] => match refusal_of(set) {
                Some(cause) => refused(&mut reply, cause),
                None => reply.refusal = Some(format!("unexpected reply to SET: {set:?}")),
            },
            [] => reply.refusal = Some("EXEC answered an empty array".to_owned()),
        },
        Value::ServerError(err) if err.code() == "EXECABORT" => {
            // Discarded, nothing ran: a queued command was refused (its own
            // reply says why), or `EXEC` itself, "… because of: NOPERM …".
            let exec_refused = err
                .details()
                .and_then(|detail| detail.split_once("because of: "))
                .and_then(|(_, cause)| cause.split_once(' '))
                .map(|(code, detail)| (code.to_owned(), detail.to_owned()));
            match refusal_of(set)
                .or_else(|| refusal_of(incr))
                .or(exec_refused)
            {
                Some(cause) => refused(&mut reply, cause),
                None => {
                    reply.refusal = Some(format!("EXECABORT {}", err.details().unwrap_or_default()))
                }
            }
        }
        other => {
            // Anything else from `EXEC` (a server that refuses it without
            // discarding the transaction): the connection may still be
            // inside it.
            if let Some(cause) = refusal_of(other) {
                refused(&mut reply, cause);
            }
            reply
                .refusal
                .get_or_insert(format!("unexpected reply to EXEC: {other:?}"));
            reply.stuck = true;
        }
    }
    reply
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
        self.check_counter_slot(key, counter)?;
        let counter_key = self.keys.fence(counter);
        if waiting.is_none()
            && self.remembers_seeded(&counter_key)
            && let Some(attempt) = self
                .take_fast(
                    key,
                    token,
                    ttl,
                    Fast::Fenced {
                        counter: &counter_key,
                    },
                )
                .await?
        {
            return Ok(attempt);
        }
        let (acquired, value, acknowledged) = self
            .take(key, counter, token, ttl, waiting, "fence")
            .await?;
        if acquired {
            self.remember_seeded(counter_key);
        }
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

    /// Takes `key` for `token` if free, issuing no fence: a bare `SET NX PX`
    /// when the caller does not wait, the acquire script when it does (its
    /// queue of waiting clients needs it); `Acquired(0)` when taken.
    pub(crate) async fn try_acquire_unfenced(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> Result<Attempt> {
        if waiting.is_none()
            && let Some(attempt) = self.take_fast(key, token, ttl, Fast::Unfenced).await?
        {
            return Ok(attempt);
        }
        let (acquired, value, acknowledged) =
            self.take(key, key, token, ttl, waiting, "none").await?;
        if acquired && let Some(err) = self.unconfirmed(key, acknowledged) {
            self.release(key, token).await?;
            return Err(err);
        }
        Ok(if acquired {
            Attempt::Acquired(0)
        } else {
            Attempt::Held {
                expires_in: value.map(Duration::from_millis),
            }
        })
    }

    /// The common case without a script: `SET key token NX PX ttl GET`
    /// (with `INCR` of the fence counter in the same `MULTI`/`EXEC` for
    /// `Fast::Fenced`), deciding at once when the key was free and the
    /// counter seeded (taken), or when another token holds it (held; the
    /// holder's ttl is not read). A caller that does not wait needs no more:
    /// the acquire script leaves the queue of waiting clients alone for it.
    ///
    /// `None` leaves the attempt to the script: when the counter was never
    /// seeded (the script seeds it), when the key already holds `token` (the
    /// same attempt sent again after its reply was lost: the script renews
    /// it and issues a higher fence), with replicas to wait for, for a user
    /// without `MULTI` in its ACL (found at connect or at a refused `MULTI`),
    /// and from a lasting refusal on (see [`lasting`]: a server before Redis
    /// 7.0, where `SET` takes `NX` or `GET`, not both; a user whose ACL lost
    /// `MULTI`, `EXEC`, `SET` or `INCR`). A passing refusal (out of memory,
    /// loading) leaves only the attempt it met to the script, which answers
    /// it as it answers any error.
    ///
    /// The four commands go out as a plain pipeline and their replies are
    /// read here ([`read_fast`]): a refused `MULTI` lets `SET` and `INCR` run
    /// on their own, and their replies then decide the attempt as a
    /// transaction's would (the fence is still issued after the key was
    /// taken, so it is above every earlier holder's). A refused `EXEC`
    /// leaves the connection inside the transaction on the server, so the
    /// connection is retired; commands other tasks sent on it meanwhile are
    /// answered `QUEUED` and never run.
    ///
    /// An `INCR` beside a `SET` that found the key held is harmless: fences
    /// only need to grow. One that creates the counter (lost meanwhile)
    /// leaves it unseeded, below [`SEEDED`], for the next acquisition to seed.
    async fn take_fast(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
        way: Fast<'_>,
    ) -> Result<Option<Attempt>> {
        if self.replicas.is_some() || !self.fast_path.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut set = redis::Cmd::with_capacity(7, 64 + key.len() + token.len());
        set.arg("SET")
            .arg(self.keys.lock_name(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .arg("GET");
        let (holder, fence) = match way {
            Fast::Fenced { counter } => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors()
                    .cmd("MULTI")
                    .add_command(set)
                    .cmd("INCR")
                    .arg(counter)
                    .cmd("EXEC");
                let reply = self
                    .with_connection("acquire", async |conn| {
                        let replies: Vec<redis::Value> = pipe.query_async(&mut conn.conn).await?;
                        let reply = read_fast(&replies);
                        if reply.stuck {
                            conn.retire();
                        }
                        Ok(reply)
                    })
                    .await?;
                if let Some(refusal) = &reply.refusal {
                    if reply.lasting {
                        tracing::debug!(%refusal, "the server refused the transaction fast path; acquiring with the script from now on");
                        self.fast_path.store(false, Ordering::Relaxed);
                    } else {
                        tracing::debug!(%refusal, "the server refused the transaction fast path; acquiring with the script this time");
                    }
                }
                match reply.ran {
                    Some((holder, Some(fence))) => (holder, fence),
                    Some((None, None)) => {
                        // Taken without a fence (the counter holds no
                        // integer): give the key back, the script reports it.
                        self.release(key, token).await?;
                        return Ok(None);
                    }
                    Some((Some(holder), None)) => (Some(holder), SEEDED),
                    None => return Ok(None),
                }
            }
            Fast::Unfenced => {
                let reply: Result<Option<Vec<u8>>> = self
                    .with_connection("acquire", async |conn| {
                        set.query_async(&mut conn.conn).await
                    })
                    .await;
                match reply {
                    Err(LockError::Protocol(err))
                        if lasting(
                            err.code().unwrap_or_default(),
                            err.detail().unwrap_or_default(),
                        ) =>
                    {
                        tracing::debug!(error = %err, "the server refused the fast path; acquiring with the script from now on");
                        self.fast_path.store(false, Ordering::Relaxed);
                        return Ok(None);
                    }
                    reply => (reply?, SEEDED),
                }
            }
        };
        Ok(match holder {
            None if fence >= SEEDED => Some(Attempt::Acquired(match way {
                Fast::Fenced { .. } => {
                    u64::try_from(fence).map_err(|_| unexpected("negative fence"))?
                }
                Fast::Unfenced => 0,
            })),
            None => None,
            Some(holder) if holder.strip_suffix(b"+").unwrap_or(&holder) == token.as_bytes() => {
                None
            }
            Some(_) => Some(Attempt::Held { expires_in: None }),
        })
    }

    /// Whether this client saw the fence counter `counter_key` seeded.
    fn remembers_seeded(&self, counter_key: &str) -> bool {
        let seeded = self.seeded.lock().unwrap_or_else(PoisonError::into_inner);
        seeded.contains(counter_key)
    }

    /// Records that an acquisition issued a fence from `counter_key`, which
    /// is seeded from then on (unless the server loses it: the fast path
    /// then finds it unseeded and leaves the attempt to the script).
    fn remember_seeded(&self, counter_key: String) {
        let mut seeded = self.seeded.lock().unwrap_or_else(PoisonError::into_inner);
        if seeded.len() >= SEEDED_REMEMBERED && !seeded.contains(&counter_key) {
            seeded.clear();
        }
        seeded.insert(counter_key);
    }

    /// On a cluster the fence counter must share the key's hash slot.
    fn check_counter_slot(&self, key: &str, counter: &str) -> Result<()> {
        if self.is_cluster() && slot_of_tagged(counter) != slot_of_tagged(key) {
            return Err(LockError::invalid(
                "fence_counter",
                format!(
                    "`{counter}` is in another hash slot than the key `{key}`; on a cluster give both the same hash tag, e.g. `{{report}}` and `{{report}}:monday`"
                ),
            ));
        }
        Ok(())
    }

    /// Redlock's first phase: takes `key` here and reads this node's `counter`.
    #[cfg(feature = "redlock")]
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
        self.check_counter_slot(key, counter)?;
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(self.keys.lock(key))
            .key(self.keys.fence(counter))
            .key(self.keys.waiters(key));
        if !self.is_cluster() {
            // Batch claims fence from it (they run on one server only).
            invocation.key(&self.fence_clock);
        }
        invocation
            .arg(token)
            .arg(millis(ttl))
            .arg(self.waiter_args(waiting))
            .arg(mode);
        let ((taken, value), acknowledged): ((i64, i64), _) = self
            .script_replicated("acquire", &ACQUIRE, &invocation)
            .await?;
        Ok((taken == 1, u64::try_from(value).ok(), acknowledged))
    }

    /// Redlock's second phase: raises this node's `counter` to `fence`
    /// while it still holds `key` for `token`.
    #[cfg(feature = "redlock")]
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
        let committed: i64 = self
            .script("commit_fence", &COMMIT_FENCE, &invocation)
            .await?;
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
    ///
    /// On a cluster the leases are renewed in one call per hash slot, the
    /// calls sent together (the cluster connection pipelines those bound
    /// for one node); the first failing call fails the whole renewal.
    pub(crate) async fn extend(&self, leases: &[Renewal<'_>]) -> Result<Vec<bool>> {
        if !self.is_cluster() {
            return self.extend_slot(leases).await;
        }
        let mut by_slot: std::collections::BTreeMap<u16, Vec<(usize, Renewal<'_>)>> =
            std::collections::BTreeMap::new();
        for (at, lease) in leases.iter().enumerate() {
            by_slot
                .entry(slot_of_tagged(lease.key))
                .or_default()
                .push((at, *lease));
        }
        let groups: Vec<Vec<(usize, Renewal<'_>)>> = by_slot.into_values().collect();
        let renewed = futures::future::try_join_all(groups.iter().map(|group| {
            let leases: Vec<Renewal<'_>> = group.iter().map(|(_, lease)| *lease).collect();
            async move { self.extend_slot(&leases).await }
        }))
        .await?;
        let mut flags = vec![false; leases.len()];
        for (group, renewed) in groups.iter().zip(renewed) {
            for ((at, _), flag) in group.iter().zip(renewed) {
                flags[*at] = flag;
            }
        }
        Ok(flags)
    }

    /// The slot of `key`'s names on a cluster, where one renewal call
    /// covers one slot; 0 for one server, where one call covers any keys.
    pub(crate) fn renewal_group(&self, key: &str) -> u16 {
        if self.is_cluster() {
            slot_of_tagged(key)
        } else {
            0
        }
    }

    /// [`extend`](Self::extend) in one script call per kind of lease (a
    /// lock's, a permit's): on a cluster, for leases of one hash slot.
    async fn extend_slot(&self, leases: &[Renewal<'_>]) -> Result<Vec<bool>> {
        if leases.iter().all(|lease| lease.kind == LeaseKind::Lock) {
            return self.extend_kind(leases, LeaseKind::Lock).await;
        }
        let mut flags = vec![false; leases.len()];
        for kind in [
            LeaseKind::Lock,
            LeaseKind::Permit,
            LeaseKind::Read,
            LeaseKind::Write,
        ] {
            let part: Vec<(usize, &Renewal<'_>)> = leases
                .iter()
                .enumerate()
                .filter(|(_, lease)| lease.kind == kind)
                .collect();
            if part.is_empty() {
                continue;
            }
            let batch: Vec<Renewal<'_>> = part.iter().map(|(_, lease)| **lease).collect();
            let renewed = self.extend_kind(&batch, kind).await?;
            for ((at, _), flag) in part.iter().zip(renewed) {
                flags[*at] = flag;
            }
        }
        Ok(flags)
    }

    /// Renews leases of one kind in one script call.
    async fn extend_kind(&self, leases: &[Renewal<'_>], kind: LeaseKind) -> Result<Vec<bool>> {
        // A writer is renewed as a lock is (its key holds its token), a
        // reader as a permit is (a member scored by its expiry).
        let (script, op) = match kind {
            LeaseKind::Lock | LeaseKind::Write => (&*EXTEND, "extend"),
            LeaseKind::Permit | LeaseKind::Read => (&*PERMIT_EXTEND, "extend_permit"),
        };
        let mut invocation = script.prepare_invoke();
        for lease in leases {
            let key = match kind {
                LeaseKind::Lock => self.keys.lock(lease.key),
                LeaseKind::Permit => named(&self.keys.permits, lease.key),
                LeaseKind::Read => named(&self.keys.rw_readers, lease.key),
                LeaseKind::Write => named(&self.keys.rw_writer, lease.key),
            };
            invocation.key(key).arg(lease.token).arg(millis(lease.ttl));
        }
        let (renewed, acknowledged): (Vec<i64>, _) =
            self.script_replicated(op, script, &invocation).await?;
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
        let mut eval = Eval::new(&RELEASE, 2, 3);
        eval.arg(self.keys.lock_name(key))
            .arg(self.keys.waiters_name(key))
            .arg(token)
            .arg(&self.wake_prefix)
            .arg(key);
        let released: i64 = self.eval("release", &eval).await?;
        Ok(released == 1)
    }

    /// Gives back `token`'s lease of `key` as [`release`](Self::release) or
    /// [`release_permit`](Self::release_permit) do, and runs the commands
    /// `along` in the same round trip: on one server in the same script,
    /// after the release and whatever it found; on a cluster, where they
    /// may be in another hash slot, each sent at the same time as the
    /// release (the cluster connection pipelines what goes to one node),
    /// not atomically with it. Returns whether the lease was ours and the
    /// first refusal of a command.
    pub(crate) async fn release_with(
        &self,
        kind: LeaseKind,
        key: &str,
        token: &str,
        along: &[Vec<Vec<u8>>],
    ) -> Result<(bool, Option<String>)> {
        if self.is_cluster() {
            return self.release_beside(kind, key, token, along).await;
        }
        let (script, keys, line) = match kind {
            LeaseKind::Lock => (
                &*RELEASE_ALONG,
                [self.keys.lock(key), self.keys.waiters(key)],
                key.to_owned(),
            ),
            LeaseKind::Permit => (
                &*PERMIT_RELEASE_ALONG,
                [
                    named(&self.keys.permits, key),
                    named(&self.keys.permit_waiters, key),
                ],
                crate::semaphore::line(key),
            ),
            LeaseKind::Read | LeaseKind::Write => {
                return Err(LockError::invalid(
                    "along",
                    "a read-write lock's release carries no commands",
                ));
            }
        };
        let mut invocation = script.prepare_invoke();
        for name in keys {
            invocation.key(name);
        }
        push_args(
            &mut invocation,
            &[
                token.as_bytes(),
                self.wake_prefix.as_bytes(),
                line.as_bytes(),
            ],
            along,
        );
        let (released, failed): (i64, String) = self.script("release", script, &invocation).await?;
        Ok((released == 1, (!failed.is_empty()).then_some(failed)))
    }

    /// [`release_with`](Self::release_with) on a cluster: the release and
    /// each command sent together.
    async fn release_beside(
        &self,
        kind: LeaseKind,
        key: &str,
        token: &str,
        along: &[Vec<Vec<u8>>],
    ) -> Result<(bool, Option<String>)> {
        let conn = self.connection().await?;
        let sends = along.iter().map(|command| {
            let mut cmd = redis::Cmd::new();
            for arg in command {
                cmd.arg(arg.as_slice());
            }
            let mut conn = conn.clone();
            async move { cmd.query_async::<redis::Value>(&mut conn).await }
        });
        let release = async {
            match kind {
                LeaseKind::Lock => self.release(key, token).await,
                LeaseKind::Permit => self.release_permit(key, token).await,
                LeaseKind::Read | LeaseKind::Write => Err(LockError::invalid(
                    "along",
                    "a read-write lock's release carries no commands",
                )),
            }
        };
        let (released, answers) = futures::join!(release, futures::future::join_all(sends));
        let failed = answers
            .into_iter()
            .find_map(|answer| answer.err())
            .map(|err| err.to_string());
        Ok((released?, failed))
    }

    /// Whether [`claim_all`](Self::claim_all) and
    /// [`settle_all`](Self::settle_all) can run here: one server, where a
    /// script may touch any key.
    pub(crate) fn batches(&self) -> bool {
        !self.is_cluster()
    }

    /// Claims every key of `claims` in one script call; see
    /// `scripts/claim_all.lua`.
    pub(crate) async fn claim_all(&self, claims: &[RawClaim<'_>]) -> Result<Vec<redis::Value>> {
        let mut eval = Eval::new(&CLAIM_ALL, 1 + 4 * claims.len(), 8 * claims.len());
        eval.arg(&self.fence_clock);
        for claim in claims {
            eval.arg(Name {
                prefix: &self.keys.fenced,
                key: claim.record.unwrap_or(claim.key),
            })
            .arg(self.keys.lock_name(claim.key))
            .arg(Name {
                prefix: &self.keys.fence,
                key: claim.key,
            })
            .arg(self.keys.waiters_name(claim.key));
        }
        let mut table = CommandTable::default();
        for claim in claims {
            eval.arg(claim.token)
                .arg(millis(claim.ttl))
                .arg(if claim.record.is_some() { "1" } else { "0" });
            table.write(&mut eval.cmd, claim.if_recorded);
            table.write(&mut eval.cmd, claim.if_acquired);
        }
        let (replies, acknowledged): (Vec<redis::Value>, _) =
            self.eval_replicated("claim_all", &eval).await?;
        if let Some(first) = claims.first()
            && let Some(err) = self.unconfirmed(first.key, acknowledged)
        {
            return Err(err);
        }
        if replies.len() != claims.len() {
            return Err(unexpected(
                "claim_all returned a reply count that does not match the claims",
            ));
        }
        Ok(replies)
    }

    /// Gives back `key` if `token` still holds it, and then only runs
    /// `undo`; see `scripts/abandon_claim.lua`.
    pub(crate) async fn abandon_claim(
        &self,
        key: &str,
        token: &str,
        undo: &[Vec<Vec<u8>>],
    ) -> Result<bool> {
        let mut eval = Eval::new(&ABANDON_CLAIM, 2, 4 + undo.len() * 4);
        eval.arg(self.keys.lock_name(key))
            .arg(self.keys.waiters_name(key))
            .arg(token)
            .arg(&self.wake_prefix)
            .arg(key);
        push_commands(&mut eval.cmd, undo);
        let released: i64 = self.eval("abandon_claim", &eval).await?;
        Ok(released == 1)
    }

    /// Settles every item of `items` in one script call; see
    /// `scripts/settle_all.lua`.
    pub(crate) async fn settle_all(
        &self,
        items: &[RawSettle<'_>],
    ) -> Result<Vec<(String, String, String, i64, String)>> {
        // The commands gathered over the call, by all their arguments but
        // the last: each is sent once, and each item names it by index.
        let mut shared: Vec<&[Vec<u8>]> = Vec::new();
        let mut index: HashMap<&[Vec<u8>], usize> = HashMap::new();
        let mut together: Vec<Vec<(usize, &[u8])>> = Vec::with_capacity(items.len());
        for item in items {
            let mut mine = Vec::with_capacity(item.together.len());
            for command in item.together {
                let Some((last, prefix)) = command.split_last() else {
                    continue;
                };
                let at = *index.entry(prefix).or_insert_with(|| {
                    shared.push(prefix);
                    shared.len()
                });
                mine.push((at, last.as_slice()));
            }
            together.push(mine);
        }
        let mut eval = Eval::new(&SETTLE_ALL, 3 * items.len(), 16 * items.len());
        for item in items {
            eval.arg(Name {
                prefix: &self.keys.fenced,
                key: item.record.map_or(item.key, |r| r.0),
            })
            .arg(self.keys.lock_name(item.key))
            .arg(self.keys.waiters_name(item.key));
        }
        eval.arg(&self.wake_prefix);
        push_commands(&mut eval.cmd, &shared);
        let mut table = CommandTable::default();
        for (item, together) in items.iter().zip(&together) {
            eval.arg(item.token).arg(item.key);
            match item.record {
                Some((_, fence, record)) => {
                    eval.arg("1")
                        .arg(fence)
                        .arg(record.value)
                        .arg(record.ttl.map_or(0, millis))
                        .arg(record.commit.unwrap_or(""));
                    push_commands(&mut eval.cmd, record.effects);
                }
                None => {
                    eval.arg("0");
                }
            }
            table.write(&mut eval.cmd, item.if_committed);
            table.write(&mut eval.cmd, item.otherwise);
            eval.arg(together.len());
            for (at, last) in together {
                eval.arg(*at).arg(*last);
            }
        }
        let replies: Vec<(String, String, String, i64, String)> =
            self.eval("settle_all", &eval).await?;
        if replies.len() != items.len() {
            return Err(unexpected(
                "settle_all returned a reply count that does not match the items",
            ));
        }
        Ok(replies)
    }

    /// Leaves `key`'s queue after a wake-up nobody here wants any more, and
    /// wakes the next client in line (or marks the holder to do so).
    pub(crate) async fn pass_on(&self, key: &str) -> Result<()> {
        if let Some(name) = crate::semaphore::name_of_line(key) {
            return self
                .pass_on_queue(named(&self.keys.permit_waiters, name), key)
                .await;
        }
        if let Some(name) = crate::rwlock::name_of_line(key) {
            return self
                .pass_on_queue(named(&self.keys.rw_waiters, name), key)
                .await;
        }
        let mut invocation = PASS_ON.prepare_invoke();
        invocation
            .key(self.keys.lock(key))
            .key(self.keys.waiters(key))
            .arg(&self.client_id)
            .arg(&self.wake_prefix)
            .arg(key);
        let _: i64 = self.script("pass_on", &PASS_ON, &invocation).await?;
        Ok(())
    }

    /// The waiting arguments of the acquire scripts: this client's id when
    /// the caller waits ('' when it does not), then '1' when more of its
    /// waiters queue behind this one.
    fn waiter_args(&self, waiting: Option<Waiting>) -> (&str, &str) {
        (
            waiting.map_or("", |_| self.client_id.as_str()),
            if waiting.is_some_and(|w| w.more) {
                "1"
            } else {
                "0"
            },
        )
    }

    /// Takes one of `permits` permits of `name` for `token`, if fewer are
    /// held; see `scripts/semaphore_acquire.lua`.
    pub(crate) async fn try_acquire_permit(
        &self,
        name: &str,
        token: &str,
        permits: u32,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> Result<Attempt> {
        let mut invocation = PERMIT_ACQUIRE.prepare_invoke();
        invocation
            .key(named(&self.keys.permits, name))
            .key(named(&self.keys.permit_fence, name))
            .key(named(&self.keys.permit_waiters, name))
            .arg(token)
            .arg(millis(ttl))
            .arg(permits)
            .arg(self.waiter_args(waiting));
        let ((taken, value), acknowledged): ((i64, i64), _) = self
            .script_replicated("acquire_permit", &PERMIT_ACQUIRE, &invocation)
            .await?;
        if taken != 1 {
            return Ok(Attempt::Held {
                expires_in: u64::try_from(value).ok().map(Duration::from_millis),
            });
        }
        if let Some(err) = self.unconfirmed(name, acknowledged) {
            // As for a lock: a permit a failover could forget is given back.
            self.release_permit(name, token).await?;
            return Err(err);
        }
        let fence = u64::try_from(value).map_err(|_| unexpected("negative fence"))?;
        Ok(Attempt::Acquired(fence))
    }

    /// Gives `token`'s permit of `name` back and wakes the first waiting
    /// client still listening; `false` when `token` held none.
    pub(crate) async fn release_permit(&self, name: &str, token: &str) -> Result<bool> {
        let mut invocation = PERMIT_RELEASE.prepare_invoke();
        invocation
            .key(named(&self.keys.permits, name))
            .key(named(&self.keys.permit_waiters, name))
            .arg(token)
            .arg(&self.wake_prefix)
            .arg(crate::semaphore::line(name));
        let released: i64 = self
            .script("release_permit", &PERMIT_RELEASE, &invocation)
            .await?;
        Ok(released == 1)
    }

    /// Admits one start under the rate limit `name` (GCRA on the server's
    /// clock): `None` when admitted, or how long until a start would be.
    pub(crate) async fn admit(&self, name: &str, interval: Duration) -> Result<Option<Duration>> {
        let mut invocation = RATE_GCRA.prepare_invoke();
        invocation.key(named(&self.keys.rate, name)).arg(
            u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let (admitted, wait): (i64, i64) = self.script("rate", &RATE_GCRA, &invocation).await?;
        Ok((admitted != 1).then(|| Duration::from_micros(u64::try_from(wait).unwrap_or(0))))
    }

    /// Takes the read-write lock `name`; see `scripts/rw_acquire.lua`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn try_acquire_rw(
        &self,
        name: &str,
        token: &str,
        request: &str,
        write: bool,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> Result<Attempt> {
        let mut invocation = RW_ACQUIRE.prepare_invoke();
        invocation
            .key(named(&self.keys.rw_readers, name))
            .key(named(&self.keys.rw_writer, name))
            .key(named(&self.keys.rw_intent, name))
            .key(named(&self.keys.rw_fence, name))
            .key(named(&self.keys.rw_waiters, name))
            .arg(token)
            .arg(millis(ttl))
            .arg(if write { "write" } else { "read" })
            .arg(request)
            .arg(waiting.map_or("", |_| self.client_id.as_str()));
        let ((taken, value), acknowledged): ((i64, i64), _) = self
            .script_replicated("acquire_rw", &RW_ACQUIRE, &invocation)
            .await?;
        if taken != 1 {
            return Ok(Attempt::Held {
                expires_in: u64::try_from(value).ok().map(Duration::from_millis),
            });
        }
        if let Some(err) = self.unconfirmed(name, acknowledged) {
            self.release_rw(name, token, write).await?;
            return Err(err);
        }
        let fence = u64::try_from(value).map_err(|_| unexpected("negative fence"))?;
        Ok(Attempt::Acquired(fence))
    }

    /// Gives back `token`'s hold of the read-write lock `name`, waking its
    /// waiting clients when that lets anyone in; `false` when not held.
    pub(crate) async fn release_rw(&self, name: &str, token: &str, write: bool) -> Result<bool> {
        let mut invocation = RW_RELEASE.prepare_invoke();
        invocation
            .key(named(&self.keys.rw_readers, name))
            .key(named(&self.keys.rw_writer, name))
            .key(named(&self.keys.rw_waiters, name))
            .arg(token)
            .arg(if write { "write" } else { "read" })
            .arg(&self.wake_prefix)
            .arg(crate::rwlock::line(name));
        let released: i64 = self.script("release_rw", &RW_RELEASE, &invocation).await?;
        Ok(released == 1)
    }

    /// [`pass_on`](Self::pass_on) for a semaphore's or a read-write lock's
    /// queue, `waiters`, whose wake-ups carry `line`.
    async fn pass_on_queue(&self, waiters: String, line: &str) -> Result<()> {
        let mut invocation = PERMIT_PASS_ON.prepare_invoke();
        invocation
            .key(waiters)
            .arg(&self.client_id)
            .arg(&self.wake_prefix)
            .arg(line);
        let _: i64 = self
            .script("pass_on_permit", &PERMIT_PASS_ON, &invocation)
            .await?;
        Ok(())
    }

    /// Stores `value` under `resource` unless a higher fence was seen there.
    pub(crate) async fn fenced_set(
        &self,
        resource: &str,
        fence: u64,
        record: Record<'_>,
    ) -> Result<FencedWrite> {
        let effect_keys = if self.is_cluster() {
            self.check_slots(resource, &record).await?
        } else {
            Vec::new()
        };
        let mut invocation = FENCED_SET.prepare_invoke();
        invocation.key(self.keys.fenced(resource));
        if let Some((key, _)) = record.owner {
            invocation.key(self.keys.lock(key));
        }
        // Declared, so that the cluster checks them too; the script reads
        // them from the effects' arguments.
        for key in &effect_keys {
            invocation.key(key.as_slice());
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
        let reply: Vec<String> = self.script("fenced_set", &FENCED_SET, &invocation).await?;
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

    /// On a cluster, a fenced write is one script, so the record, the lock
    /// that owns it and every key its effects touch must share a hash slot:
    /// refuses the write, before anything is written, when one does not.
    /// Asks the server which keys each effect touches (`COMMAND GETKEYS`,
    /// all in one pipeline) and returns them, to be declared to the script.
    async fn check_slots(&self, resource: &str, record: &Record<'_>) -> Result<Vec<Vec<u8>>> {
        let slot = slot_of_tagged(resource);
        if let Some((key, _)) = record.owner
            && slot_of_tagged(key) != slot
        {
            return Err(LockError::invalid(
                "resource",
                format!(
                    "`{resource}` is in another hash slot than its lock `{key}`; on a cluster name it with the lock's hash tag, or the lock key itself"
                ),
            ));
        }
        if record.effects.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for effect in record.effects {
            let mut getkeys = redis::cmd("COMMAND");
            getkeys.arg("GETKEYS");
            for arg in effect {
                getkeys.arg(arg.as_slice());
            }
            pipe.add_command(getkeys);
        }
        let replies: Vec<redis::RedisResult<Vec<Vec<u8>>>> = self
            .with_connection("effect_keys", async |conn| {
                pipe.query_async(&mut conn.conn).await
            })
            .await?;
        let mut keys = Vec::new();
        for (effect, reply) in record.effects.iter().zip(replies) {
            let name = String::from_utf8_lossy(&effect[0]).into_owned();
            let touched = match reply {
                Ok(keys) => keys,
                // "The command has no key arguments": nothing to check.
                Err(err)
                    if err.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                {
                    Vec::new()
                }
                Err(err) => return Err(LockError::invalid("effects", format!("`{name}`: {err}"))),
            };
            for key in touched {
                if crate::slot::slot_of_bytes(&key) != slot {
                    let text = String::from_utf8_lossy(&key);
                    return Err(LockError::invalid(
                        "effects",
                        format!(
                            "`{name}` touches `{text}`, in another hash slot than `{resource}`; on a cluster an effect may only touch keys of its record's slot: give them the hash tag of the lock key (`{}`)",
                            crate::slot::colocated(resource, "")
                                .unwrap_or_else(|| resource.to_owned())
                        ),
                    ));
                }
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// The key prefix this node's keys are written under.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection requests currently share.
    pub(crate) async fn connection(&self) -> Result<crate::pool::Conn> {
        Ok(self.pool.get().await?.conn.clone())
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

#[cfg(test)]
mod tests {
    use soloist_testkit::RedisServer;

    use super::*;
    use crate::deployment::Deployment;

    fn node(server: &RedisServer) -> RedisNode {
        let timeout = Duration::from_secs(2);
        let target = Target::open(&Deployment::server(server.url()), timeout, timeout).unwrap();
        let settings = RedisSettings {
            prefix: "soloist:".to_owned(),
            op_timeout: timeout,
            client_id: "client".to_owned(),
            replicas: None,
        };
        RedisNode::new(target, &settings)
    }

    fn fence_of(attempt: Attempt) -> u64 {
        match attempt {
            Attempt::Acquired(fence) => fence,
            other => panic!("expected the key taken, got {other:?}"),
        }
    }

    /// The fast path's transaction sent again after its reply was lost finds
    /// the key holding its own token (marked by a waiter or not): it leaves
    /// the attempt to the script, which renews the key and issues a fence
    /// above the one nobody received; another token is refused.
    #[tokio::test]
    async fn a_resent_fast_attempt_takes_the_key_it_already_holds() {
        let server = RedisServer::start();
        let node = node(&server);
        let ttl = Duration::from_secs(5);
        let first = fence_of(node.try_acquire("k", "k", "tok", ttl, None).await.unwrap());
        server.cli(&["PEXPIRE", "soloist:lock:{k}", "1000"]);
        let resent = fence_of(node.try_acquire("k", "k", "tok", ttl, None).await.unwrap());
        assert!(resent > first, "{resent} > {first}");
        let pttl: u64 = server.cli(&["PTTL", "soloist:lock:{k}"]).parse().unwrap();
        assert!(pttl > 1000, "renewed to the ttl asked: {pttl} ms");
        server.cli(&["SET", "soloist:lock:{k}", "tok+", "PX", "1000"]);
        let marked = fence_of(node.try_acquire("k", "k", "tok", ttl, None).await.unwrap());
        assert!(marked > resent);
        assert_eq!(
            server.cli(&["GET", "soloist:lock:{k}"]),
            "tok+",
            "mark kept"
        );
        assert_eq!(
            node.try_acquire("k", "k", "other", ttl, None)
                .await
                .unwrap(),
            Attempt::Held { expires_in: None }
        );
        // Unfenced, likewise: taken again, renewed, no fence.
        server.cli(&["SET", "soloist:lock:{u}", "tok", "PX", "1000"]);
        assert_eq!(
            node.try_acquire_unfenced("u", "tok", ttl, None)
                .await
                .unwrap(),
            Attempt::Acquired(0)
        );
        let pttl: u64 = server.cli(&["PTTL", "soloist:lock:{u}"]).parse().unwrap();
        assert!(pttl > 1000, "renewed to the ttl asked: {pttl} ms");
        assert_eq!(server.cli(&["EXISTS", "soloist:fence:{u}"]), "0");
    }

    /// The four replies of the fast path, each in RESP.
    fn fast_replies(replies: [&str; 4]) -> FastReply {
        let replies: Vec<redis::Value> = replies
            .iter()
            .map(|reply| redis::parse_redis_value(reply.as_bytes()).unwrap())
            .collect();
        read_fast(&replies)
    }

    const QUEUED: &str = "+QUEUED\r\n";

    #[test]
    fn a_transaction_that_ran_gives_the_set_and_incr_replies() {
        let reply = fast_replies([
            "+OK\r\n",
            QUEUED,
            QUEUED,
            "*2\r\n$-1\r\n:1000000000000000123\r\n",
        ]);
        assert_eq!(reply.ran, Some((None, Some(1_000_000_000_000_000_123))));
        assert_eq!(
            (reply.refusal, reply.lasting, reply.stuck),
            (None, false, false)
        );
        let reply = fast_replies(["+OK\r\n", QUEUED, QUEUED, "*2\r\n$5\r\nother\r\n:7\r\n"]);
        assert_eq!(reply.ran, Some((Some(b"other".to_vec()), Some(7))));
    }

    #[test]
    fn a_refused_multi_lets_set_and_incr_run_on_their_own() {
        let reply = fast_replies([
            "-NOPERM this user has no permissions to run the 'multi' command\r\n",
            "$-1\r\n",
            ":1000000000000000124\r\n",
            "-ERR EXEC without MULTI\r\n",
        ]);
        assert_eq!(reply.ran, Some((None, Some(1_000_000_000_000_000_124))));
        assert!(reply.lasting && !reply.stuck, "{reply:?}");
        // Redis 7.2's wording.
        let reply = fast_replies([
            "-NOPERM User soloist has no permissions to run the 'multi' command\r\n",
            "$5\r\nother\r\n",
            ":8\r\n",
            "-NOPERM User soloist has no permissions to run the 'exec' command\r\n",
        ]);
        assert_eq!(reply.ran, Some((Some(b"other".to_vec()), Some(8))));
        assert!(reply.lasting, "{reply:?}");
    }

    #[test]
    fn queued_replies_after_a_refused_multi_mean_a_connection_inside_a_transaction() {
        let reply = fast_replies([
            "-ERR MULTI calls can not be nested\r\n",
            QUEUED,
            QUEUED,
            "-NOPERM this user has no permissions to run the 'exec' command\r\n",
        ]);
        assert_eq!(reply.ran, None);
        assert!(reply.stuck, "{reply:?}");
    }

    #[test]
    fn an_exec_refused_for_good_turns_the_fast_path_off() {
        // Redis 7.0 discards the transaction when `EXEC` is refused.
        let reply = fast_replies([
            "+OK\r\n",
            QUEUED,
            QUEUED,
            "-EXECABORT Transaction discarded because of: NOPERM this user has no permissions to run the 'exec' command\r\n",
        ]);
        assert_eq!(reply.ran, None);
        assert!(reply.lasting && !reply.stuck, "{reply:?}");
        // One that is refused without discarding leaves the connection inside.
        let reply = fast_replies([
            "+OK\r\n",
            QUEUED,
            QUEUED,
            "-NOPERM this user has no permissions to run the 'exec' command\r\n",
        ]);
        assert_eq!(reply.ran, None);
        assert!(reply.lasting && reply.stuck, "{reply:?}");
    }

    #[test]
    fn execabort_lasts_or_passes_with_its_cause() {
        let aborted = "-EXECABORT Transaction discarded because of previous errors.\r\n";
        for (set, lasts) in [
            ("-ERR syntax error\r\n", true),
            (
                "-NOPERM this user has no permissions to run the 'set' command\r\n",
                true,
            ),
            (
                "-NOPERM this user has no permissions to access one of the keys used as arguments\r\n",
                false,
            ),
            (
                "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
                false,
            ),
            ("-LOADING Redis is loading the dataset in memory\r\n", false),
            ("-MOVED 3999 127.0.0.1:6381\r\n", false),
        ] {
            let reply = fast_replies(["+OK\r\n", set, QUEUED, aborted]);
            assert_eq!(reply.ran, None, "{set}");
            assert_eq!(reply.lasting, lasts, "{set}");
            assert!(!reply.stuck && reply.refusal.is_some(), "{set}");
        }
    }

    #[test]
    fn a_counter_that_holds_no_integer_leaves_the_set_reply() {
        let reply = fast_replies([
            "+OK\r\n",
            QUEUED,
            QUEUED,
            "*2\r\n$-1\r\n-ERR value is not an integer or out of range\r\n",
        ]);
        assert_eq!(reply.ran, Some((None, None)));
        assert!(!reply.lasting && reply.refusal.is_some(), "{reply:?}");
    }
}
