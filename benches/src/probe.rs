//! What a run cost: Redis commands and CPU time over its measured window,
//! on one server or summed over several (the `redlock3` nodes).

use std::collections::BTreeMap;
use std::time::Instant;

use redis::aio::MultiplexedConnection;

use crate::commandstats::{CommandCounts, calls_by_command, calls_since};
use crate::cpu::cpu_time;
use crate::measure::{Window, tokio_instant};

/// Reads the command counters of one or more servers and the CPU clocks, on
/// connections of its own so that it never queues behind the workload.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// One entry per server, in the order given.
    servers: Vec<Server>,
}

/// One server the probe reads.
#[derive(Debug, Clone)]
struct Server {
    conn: MultiplexedConnection,
    /// The server's process id when lockbench started it, to read its CPU time.
    pid: Option<u32>,
}

/// Counters read at one instant.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    commands: CommandCounts,
    /// Calls per command name, summed over the servers.
    by_command: BTreeMap<String, u64>,
    cpu_ms: Option<u128>,
    redis_cpu_ms: Option<u128>,
}

/// The counters read as a span of any length opens (see [`Probe::mark`]),
/// for runs that end when their work is done rather than at a set time.
#[derive(Debug, Clone)]
pub(crate) struct Mark(Snapshot);

/// What was spent over one window, or added up over several.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    /// Seconds measured.
    pub(crate) secs: f64,
    /// Commands the server(s) ran, Lua-internal ones included.
    pub(crate) commands: u64,
    /// Script calls (`EVALSHA`) the server(s) ran.
    pub(crate) scripts: u64,
    /// CPU seconds this process used; `None` when `/proc` is unreadable.
    pub(crate) cpu_secs: Option<f64>,
    /// CPU seconds the Redis server(s) used; `None` when a pid is unknown.
    pub(crate) redis_cpu_secs: Option<f64>,
}

impl Cost {
    /// This process's CPU time as a percentage of one core.
    pub(crate) fn cpu_pct(&self) -> Option<f64> {
        self.cpu_secs.map(|cpu| cpu / self.secs * 100.0)
    }

    /// The Redis server's CPU time as a percentage of one core.
    pub(crate) fn redis_cpu_pct(&self) -> Option<f64> {
        self.redis_cpu_secs.map(|cpu| cpu / self.secs * 100.0)
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        // The first window sets the CPU figures; an unreadable one later
        // makes them unknown rather than silently smaller.
        let first = self.secs == 0.0;
        let add = |ours: Option<f64>, theirs: Option<f64>| {
            if first { theirs } else { Some(ours? + theirs?) }
        };
        self.cpu_secs = add(self.cpu_secs, other.cpu_secs);
        self.redis_cpu_secs = add(self.redis_cpu_secs, other.redis_cpu_secs);
        self.secs += other.secs;
        self.commands += other.commands;
        self.scripts += other.scripts;
    }
}

impl Probe {
    /// Connects to the server at `url`; `redis_pid` is its process id when known.
    pub(crate) async fn connect(url: &str, redis_pid: Option<u32>) -> Probe {
        Probe::connect_all(&[(url.to_owned(), redis_pid)]).await
    }

    /// Connects to every server in `servers` (URL and process id when
    /// known); counters and Redis CPU time are then summed over all of them.
    pub(crate) async fn connect_all(servers: &[(String, Option<u32>)]) -> Probe {
        assert!(!servers.is_empty(), "a probe needs at least one server");
        let mut connected = Vec::with_capacity(servers.len());
        for (url, pid) in servers {
            let client = redis::Client::open(url.as_str()).expect("the Redis URL must parse");
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|err| panic!("cannot connect to Redis at {url}: {err}"));
            connected.push(Server { conn, pid: *pid });
        }
        Probe { servers: connected }
    }

    /// The first server's `redis_version`, for the report header.
    pub(crate) async fn redis_version(&self) -> String {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.servers[0].conn.clone())
            .await
            .expect("INFO server failed");
        info.lines()
            .find_map(|line| line.trim().strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .to_owned()
    }

    /// Reads every server's counters at once, then the CPU clocks. The Redis
    /// CPU time is unknown unless every server's process id is known.
    async fn snapshot(&self) -> Snapshot {
        let infos = futures::future::join_all(self.servers.iter().map(|server| async move {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut server.conn.clone())
                .await
                .expect("INFO commandstats failed");
            info
        }))
        .await;
        let commands = infos
            .iter()
            .map(|info| CommandCounts::parse(info))
            .fold(CommandCounts::default(), CommandCounts::plus);
        let mut by_command = BTreeMap::new();
        for info in &infos {
            for (name, calls) in calls_by_command(info) {
                *by_command.entry(name).or_insert(0) += calls;
            }
        }
        let redis_cpu_ms = self.servers.iter().try_fold(0_u128, |sum, server| {
            Some(sum + cpu_time(Some(server.pid?))?.as_millis())
        });
        Snapshot {
            at: Instant::now(),
            commands,
            by_command,
            cpu_ms: cpu_time(None).map(|cpu| cpu.as_millis()),
            redis_cpu_ms,
        }
    }

    /// Sleeps through `window`, reading the counters as it opens and closes.
    pub(crate) async fn observe(&self, window: &Window) -> Cost {
        tokio::time::sleep_until(tokio_instant(window.start)).await;
        let before = self.snapshot().await;
        tokio::time::sleep_until(tokio_instant(window.end)).await;
        let after = self.snapshot().await;
        spent_between(&before, &after)
    }

    /// Reads the counters now, to open a span that [`Probe::since`] closes.
    pub(crate) async fn mark(&self) -> Mark {
        Mark(self.snapshot().await)
    }

    /// What was spent from `mark` to now, and the calls of each command
    /// over that span (Lua-internal ones under their own names).
    pub(crate) async fn since(&self, mark: &Mark) -> (Cost, BTreeMap<String, u64>) {
        let after = self.snapshot().await;
        let calls = calls_since(&after.by_command, &mark.0.by_command);
        (spent_between(&mark.0, &after), calls)
    }
}

/// What was spent between two snapshots of the same servers.
fn spent_between(before: &Snapshot, after: &Snapshot) -> Cost {
    let secs = (after.at - before.at).as_secs_f64();
    let commands = after.commands.since(before.commands);
    let spent = |before: Option<u128>, after: Option<u128>| {
        Some(after?.checked_sub(before?)? as f64 / 1000.0)
    };
    Cost {
        secs,
        commands: commands.total,
        scripts: commands.scripts,
        cpu_secs: spent(before.cpu_ms, after.cpu_ms),
        redis_cpu_secs: spent(before.redis_cpu_ms, after.redis_cpu_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up_and_cpu_is_a_share_of_the_total_time() {
        let window = Cost {
            secs: 1.0,
            commands: 10,
            scripts: 2,
            cpu_secs: Some(0.25),
            redis_cpu_secs: None,
        };
        let mut total = Cost::default();
        total += window;
        total += window;
        assert_eq!((total.commands, total.scripts), (20, 4));
        assert_eq!(total.cpu_pct(), Some(25.0));
        assert_eq!(total.redis_cpu_pct(), None);
    }
}
