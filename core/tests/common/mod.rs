//! What the behaviour tests share: a backend to run against and ways to
//! look inside it.

#![allow(dead_code, unreachable_pub)]

pub mod recorded;

use std::future::Future;
use std::time::Duration;

use soloist::{LockClient, LockGuard};
use soloist_testkit::{RedisCluster, RedisServer};

/// One lock space to test against: a real redis-server, a Redlock over
/// three of them, a Redis Cluster of three primaries with a replica each,
/// or the memory backend.
pub enum Backend {
    Redis(RedisServer),
    Redlock(Vec<RedisServer>),
    Cluster(RedisCluster),
    Memory(LockClient),
}

impl Backend {
    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    pub fn redlock() -> Self {
        Backend::Redlock((0..3).map(|_| RedisServer::start()).collect())
    }

    pub fn cluster() -> Self {
        Backend::Cluster(RedisCluster::start())
    }

    pub fn memory() -> Self {
        Backend::Memory(LockClient::memory())
    }

    /// An independent client of this lock space: its own pool, watchdog and
    /// subscriber for Redis; a clone for memory, whose space is the process.
    pub async fn client(&self) -> LockClient {
        match self {
            Backend::Redis(server) => LockClient::connect(&server.url())
                .await
                .expect("connect to the test server"),
            // A per-node timeout with room for a loaded test machine.
            Backend::Redlock(servers) => LockClient::builder()
                .op_timeout(std::time::Duration::from_secs(1))
                .redlock(servers.iter().map(RedisServer::url))
                .await
                .expect("connect to the test servers"),
            Backend::Cluster(cluster) => LockClient::cluster(cluster.urls())
                .await
                .expect("connect to the test cluster"),
            Backend::Memory(client) => client.clone(),
        }
    }
}

/// Runs each listed async test fn against every backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::common::Backend::redis()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redlock() {
                super::$name($crate::common::Backend::redlock()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name($crate::common::Backend::cluster()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name($crate::common::Backend::memory()).await;
            }
        }
    )*};
}

/// Total calls of `command` so far, from `INFO commandstats` (scripts'
/// inner calls included).
pub fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("calls is a number"))
}

/// How many clients queue for `key` on `server`.
pub fn queued(server: &RedisServer, key: &str) -> usize {
    server
        .cli(&["LLEN", &format!("soloist:waiters:{{{key}}}")])
        .parse()
        .expect("LLEN is a number")
}

/// How many of the clients queued for `key` on `server` have their wake
/// channel subscribed: a release can wake only those (a client queues with
/// its first attempt and subscribes after it).
pub fn listening(server: &RedisServer, key: &str) -> usize {
    let queue = server.cli(&["LRANGE", &format!("soloist:waiters:{{{key}}}"), "0", "-1"]);
    queue
        .lines()
        .filter(|client| !client.is_empty())
        .filter(|client| {
            let reply = server.cli(&["PUBSUB", "NUMSUB", &format!("soloist:wake:{client}")]);
            reply.lines().nth(1) == Some("1")
        })
        .count()
}

/// Polls `check` every 10 ms until it holds, for at most 5 s.
pub async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Retries `attempt` every 50 ms until it yields a guard, for at most 5 s:
/// for tests where the backend is recovering from a fault.
pub async fn eventually<F, Fut>(what: &str, mut attempt: F) -> LockGuard
where
    F: FnMut() -> Fut,
    Fut: Future<Output = soloist::Result<LockGuard>>,
{
    let retry = async {
        loop {
            match attempt().await {
                Ok(guard) => return guard,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), retry)
        .await
        .unwrap_or_else(|_| panic!("{what}: no lock within 5 s"))
}
