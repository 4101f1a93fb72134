//! The connection pool for the Redis backend.
//!
//! bb8 with a connection manager of our own rather than `bb8-redis`'s: that
//! one never reports a connection as broken, so a connection that died with
//! its server would stay in the pool unless every check-out paid a PING round
//! trip. Ours marks a connection broken when a command on it fails at the
//! transport level, and the pool discards it; check-outs cost nothing.
//!
//! A connection that answers `READONLY` or `MASTERDOWN` is retired too: it
//! reaches a server that was demoted (a failover moved the primary), and
//! a fresh connection to the same address (a virtual IP, a DNS name, a
//! proxy) reaches the new primary, where the old one never would.
//!
//! A redis-rs multiplexed connection pipelines any number of concurrent
//! requests, so every request shares one connection, cached here, and the
//! pool only replaces it when it breaks: a check-out per request would cost
//! a lock and a hand-off each, and holding a pooled connection for a
//! request's length would cap concurrency for nothing. So the pool holds
//! one connection, and a client has no pool-size setting (one that only
//! sized a pool nobody drew a second connection from would be a setting
//! that does nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
#[cfg(feature = "cluster")]
use redis::cluster::ClusterClient;
#[cfg(feature = "cluster")]
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};
#[cfg(feature = "cluster")]
use tokio::sync::OnceCell;

use crate::deployment::Deployment;
use crate::error::LockError;
use crate::tls::Target;

#[derive(Debug)]
pub(crate) struct Pool {
    kind: PoolKind,
    /// What the pool connects to, for error messages ([`Target::name`]).
    name: String,
    op_timeout: Duration,
    /// Shared with every connection, which counts its own retirement here.
    demotions: Arc<AtomicU64>,
}

enum PoolKind {
    /// One server, or the primary the sentinels name.
    Server {
        pool: bb8::Pool<ConnectionManager>,
        /// The connection requests share while it works.
        current: Mutex<Option<Connection>>,
    },
    /// A Redis Cluster: redis-rs' cluster connection keeps a multiplexed
    /// connection per node, routes each command by its key's slot, follows
    /// redirections and reconnects by itself, so one is shared by all.
    #[cfg(feature = "cluster")]
    Cluster {
        client: Box<ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

impl std::fmt::Debug for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolKind::Server { pool, .. } => f.debug_struct("Server").field("pool", pool).finish(),
            #[cfg(feature = "cluster")]
            PoolKind::Cluster { conn, .. } => f
                .debug_struct("Cluster")
                .field("connected", &conn.initialized())
                .finish(),
        }
    }
}

/// A connection to run commands on, and the flag that retires it.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) conn: Conn,
    broken: Arc<AtomicBool>,
    /// The pool's count of connections retired for reaching a demoted server.
    demotions: Arc<AtomicU64>,
}

/// A connection to one server or to a whole cluster; commands and
/// pipelines run on either the same way.
#[doc(hidden)]
#[derive(Clone)]
pub enum Conn {
    Server(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Server(_) => "Conn::Server",
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Connection {
    /// Records the outcome of a command; a transport failure, or a reply
    /// from a server that is no longer a writable primary, retires the
    /// connection.
    pub(crate) fn observe<T>(&self, result: &Result<T, RedisError>) {
        if let Err(err) = result {
            let demoted = is_demoted(err);
            if demoted || is_transport_error(err) {
                let retired_now = !self.broken.swap(true, Ordering::Relaxed);
                if demoted && retired_now {
                    self.demotions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Retires the connection for a state the server keeps on it (a
    /// transaction it was left inside): the next command opens a fresh one,
    /// and this one closes once its last user is done with it.
    pub(crate) fn retire(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

pub(crate) fn is_transport_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

/// Whether the server answered as a replica or a primary cut off from its
/// replicas: this connection will keep getting that answer.
pub(crate) fn is_demoted(err: &RedisError) -> bool {
    matches!(err.code(), Some("READONLY" | "MASTERDOWN"))
}

impl Pool {
    /// The connection to `target`; connecting and every reply get
    /// `op_timeout`.
    pub(crate) fn new(target: Target, op_timeout: Duration) -> Self {
        Self::with_timeouts(target, op_timeout, op_timeout)
    }

    /// A pool whose replies may take `response_timeout` (blocking reads).
    pub(crate) fn with_timeouts(
        target: Target,
        op_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let demotions = Arc::new(AtomicU64::new(0));
        let name = target.name();
        let kind = match target {
            #[cfg(feature = "cluster")]
            Target::Cluster { client, .. } => PoolKind::Cluster {
                client: Box::new(client),
                conn: OnceCell::new(),
            },
            target => PoolKind::Server {
                pool: bb8::Pool::builder()
                    // One multiplexed connection carries every request; a
                    // second would only be opened to replace it.
                    .max_size(1)
                    .test_on_check_out(false)
                    .retry_connection(false)
                    .connection_timeout(op_timeout)
                    .build_unchecked(ConnectionManager {
                        target,
                        connect_timeout: op_timeout,
                        response_timeout,
                        demotions: demotions.clone(),
                    }),
                current: Mutex::new(None),
            },
        };
        Pool {
            kind,
            name,
            op_timeout,
            demotions,
        }
    }

    /// How many connections were retired for reaching a server that was
    /// demoted: other connections to the same address (the wake-up
    /// subscription) reconnect when this changes.
    pub(crate) fn demotions(&self) -> u64 {
        self.demotions.load(Ordering::Relaxed)
    }

    /// A working connection: the shared one, or a fresh one from the pool
    /// when it broke.
    pub(crate) async fn get(&self) -> Result<Connection, LockError> {
        let (pool, current) = match &self.kind {
            PoolKind::Server { pool, current } => (pool, current),
            #[cfg(feature = "cluster")]
            PoolKind::Cluster { client, conn } => {
                let conn = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await
                    .map_err(|err| self.error(err))?;
                return Ok(Connection {
                    conn: Conn::Cluster(conn.clone()),
                    // Never set: the cluster connection mends itself.
                    broken: Arc::default(),
                    demotions: self.demotions.clone(),
                });
            }
        };
        let shared = current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(conn) = shared.filter(|conn| !conn.is_broken()) {
            return Ok(conn);
        }
        let conn = self.check_out(pool).await?;
        *current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// `err`, met on one of this pool's connections, as a [`LockError`]
    /// that names where it was going.
    pub(crate) fn error(&self, err: RedisError) -> LockError {
        LockError::from_redis(&self.name, err)
    }

    /// A live connection from the pool, opening one if the pool has none.
    /// Opening it here rather than leaving it to bb8 makes a refused
    /// connection an error now: bb8 reports connect failures only by
    /// letting `get` time out.
    async fn check_out(
        &self,
        pool: &bb8::Pool<ConnectionManager>,
    ) -> Result<Connection, LockError> {
        loop {
            if pool.state().connections == 0 {
                let fresh = pool.dedicated_connection().await?;
                // At capacity the pool refuses it; use it for this request only.
                match pool.add(fresh) {
                    Ok(()) => {}
                    Err(bb8::AddError::NoCapacity(fresh) | bb8::AddError::Broken(fresh)) => {
                        return Ok(fresh);
                    }
                }
            }
            let pooled = pool.get().await.map_err(|err| match err {
                bb8::RunError::User(err) => err,
                bb8::RunError::TimedOut => LockError::Unresponsive {
                    op: "connect",
                    after: self.op_timeout,
                },
            })?;
            // A broken connection is discarded when `pooled` goes back.
            if !pooled.is_broken() {
                return Ok(pooled.clone());
            }
        }
    }
}

#[derive(Debug)]
struct ConnectionManager {
    target: Target,
    connect_timeout: Duration,
    response_timeout: Duration,
    demotions: Arc<AtomicU64>,
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = LockError;

    async fn connect(&self) -> Result<Connection, LockError> {
        let client = self
            .target
            .server(self.connect_timeout, self.response_timeout)
            .await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| {
                // The server itself: after a Sentinel lookup, the primary named.
                let server = client.get_connection_info().addr().to_string();
                LockError::from_redis(&server, err)
            })?;
        Ok(Connection {
            conn: Conn::Server(conn),
            broken: Arc::new(AtomicBool::new(false)),
            demotions: self.demotions.clone(),
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), LockError> {
        redis::cmd("PING")
            .query_async(&mut conn.conn)
            .await
            .map_err(|err| LockError::from_redis(&self.target.name(), err))
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.is_broken()
    }
}

/// A connection to one Redis server that replaces itself: a command that
/// fails at the transport level (server restarted, connection dropped or
/// timed out) or is answered `READONLY` / `MASTERDOWN` retires it, and the
/// next command opens a fresh one. The error of the failed command is
/// returned to its caller, who decides whether and when to retry.
///
/// The lock client runs on the same mechanism; this handle lets the
/// worker's queue sources share it.
#[doc(hidden)]
#[derive(Debug)]
pub struct SharedConnection {
    pool: Pool,
}

impl SharedConnection {
    /// Connects lazily to `deployment`: nothing is sent before the first
    /// command. Connecting gets `connect_timeout`, each reply
    /// `response_timeout`.
    pub fn open(
        deployment: &Deployment,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, LockError> {
        let target = Target::open(deployment, connect_timeout, response_timeout)?;
        Ok(SharedConnection {
            pool: Pool::with_timeouts(target, connect_timeout, response_timeout),
        })
    }

    /// Runs `work` on the current connection, retiring it if the outcome
    /// says it is no longer usable.
    pub async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, LockError> {
        let mut conn = self.pool.get().await?;
        let result = work(&mut conn.conn).await;
        conn.observe(&result);
        result.map_err(|err| self.pool.error(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_error(reply: &str) -> RedisError {
        match redis::parse_redis_value(reply.as_bytes()).and_then(redis::Value::extract_error) {
            Err(err) => err,
            Ok(value) => panic!("{reply:?} parsed as {value:?}, not an error"),
        }
    }

    #[test]
    fn readonly_and_masterdown_mean_a_demoted_server() {
        for reply in [
            "-READONLY You can't write against a read only replica.\r\n",
            "-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
        ] {
            assert!(is_demoted(&reply_error(reply)), "{reply}");
        }
        for reply in [
            "-ERR unknown command\r\n",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-BUSYGROUP Consumer Group name already exists\r\n",
        ] {
            assert!(!is_demoted(&reply_error(reply)), "{reply}");
        }
    }
}
