//! Redis Sentinel: a primary, one replica and three sentinels watching them.

use std::fs;
use std::mem;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::server::{
    self, Probe, RedisServer, free_port, log_tail, probe, redis_cli_bin, redis_server_bin,
};
use crate::signal;

/// How many sentinels watch the primary.
const SENTINELS: usize = 3;
/// How many sentinels must agree the primary is down before a failover.
const QUORUM: usize = 2;
/// `sentinel down-after-milliseconds`: how long the primary may stay silent before a
/// sentinel considers it down.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// `sentinel failover-timeout`.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the group may take to settle after start: the replica to sync, and every sentinel
/// to discover the replica and the other sentinels. Generous for a loaded machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failover may take, from the kill until the replica is promoted.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sentinels may take to turn a restarted old primary into a replica: they
/// wait a few of their periods before overriding the role a node reports, longer on a
/// Redis without `SENTINEL DEBUG`.
const DEMOTE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long [`SentinelGroup::current_primary_port`] waits for a majority to agree.
const AGREE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a freshly spawned sentinel may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports a sentinel tries before giving up.
const START_ATTEMPTS: usize = 5;
/// Pause between polls of the sentinels and servers.
const POLL: Duration = Duration::from_millis(50);

/// A primary, one replica and three Redis Sentinels monitoring them, all on free loopback
/// ports and killed on `Drop`.
///
/// The primary and the replica are [`RedisServer`]s; the sentinels are [`Sentinel`]s
/// (`redis-server <config> --sentinel`, each with a writable config file in its own temp dir),
/// monitoring the primary under the master name given to [`start`](Self::start) with a quorum
/// of 2, `down-after-milliseconds 1000`, `failover-timeout 5000` and `parallel-syncs 1`.
/// Where the server supports `SENTINEL DEBUG` (Redis 7), the sentinels also exchange
/// `INFO` every second, hellos every half second and pings every quarter second (rather than
/// every 10, 2 and 1 s), so that they discover each other and react to a restarted node in
/// seconds; on older servers `down-after-milliseconds` is 2000 instead.
///
/// [`start`](Self::start) returns once the replica is in sync and every sentinel knows the
/// primary, the replica and the two other sentinels. Point the code under test at
/// [`sentinel_urls`](Self::sentinel_urls) and [`master_name`](Self::master_name).
///
/// The faults: [`kill_primary_and_wait_failover`](Self::kill_primary_and_wait_failover)
/// crashes the primary and returns once the replica is promoted;
/// [`restart_old_primary`](Self::restart_old_primary) brings the killed node back, empty, and
/// returns once the sentinels have made it a replica of the new primary (it answers writes
/// with `READONLY`). A sentinel can be paused ([`Sentinel::pause`], `SIGSTOP`: it accepts
/// connections and answers nothing) or killed through [`sentinels`](Self::sentinels).
///
/// ```no_run
/// use soloist_testkit::SentinelGroup;
///
/// let mut group = SentinelGroup::start("mymaster");
/// let urls = group.sentinel_urls(); // hand these and "mymaster" to the client under test
/// assert_eq!(group.current_primary_port(), group.primary().port());
///
/// let took = group.kill_primary_and_wait_failover();
/// // `primary()` is now the promoted node, `replica()` the killed one.
/// assert_eq!(group.current_primary_port(), group.primary().port());
/// group.restart_old_primary();
/// assert!(group.replica().cli(&["SET", "k", "v"]).starts_with("READONLY"));
/// # let _ = (urls, took);
/// ```
#[derive(Debug)]
pub struct SentinelGroup {
    master_name: String,
    /// Dropped first, so no sentinel sees the servers die and starts a failover.
    sentinels: Vec<Sentinel>,
    /// The primary as of start or the last `kill_primary_and_wait_failover`.
    primary: RedisServer,
    replica: RedisServer,
    /// `redis-cli`, for queries that may fail without failing the test.
    cli: PathBuf,
}

impl SentinelGroup {
    /// Starts the primary, the replica and three sentinels monitoring the primary as
    /// `master_name`, and waits until the replica is in sync and every sentinel reports the
    /// primary as master, the replica as its healthy replica and the two other sentinels.
    ///
    /// # Panics
    ///
    /// When `master_name` is empty or contains whitespace (it goes into the sentinels'
    /// config files), when a process does not start, or when the group does not settle
    /// within 30 s; the message says what each sentinel was missing.
    pub fn start(master_name: &str) -> SentinelGroup {
        assert!(
            !master_name.is_empty() && !master_name.contains(char::is_whitespace),
            "SentinelGroup::start: master name {master_name:?} must be non-empty and without \
             whitespace",
        );
        // Diskless synchronisation without the default 5 s delay on both nodes, since either
        // may be the primary a restarted node syncs from.
        let node = || {
            RedisServer::builder()
                .arg("--repl-diskless-sync")
                .arg("yes")
                .arg("--repl-diskless-sync-delay")
                .arg("0")
        };
        let primary = node().start();
        let replica = node()
            .arg("--replicaof")
            .arg("127.0.0.1")
            .arg(primary.port().to_string())
            .start();
        let mut group = SentinelGroup {
            master_name: master_name.to_owned(),
            sentinels: Vec::new(),
            primary,
            replica,
            cli: redis_cli_bin(&redis_server_bin()),
        };
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        group.wait_until(deadline, "the replica to sync with the primary", |group| {
            group.replica_synced(&group.replica, group.primary.port())
        });
        group.sentinels = (0..SENTINELS)
            .map(|_| Sentinel::start(master_name, group.primary.port()))
            .collect();
        group.wait_until(
            deadline,
            "every sentinel to know the primary, the replica and the other sentinels",
            |group| {
                let problems: Vec<String> = group
                    .sentinels
                    .iter()
                    .filter_map(|sentinel| {
                        group
                            .topology_problem(sentinel)
                            .err()
                            .map(|problem| format!("sentinel on port {}: {problem}", sentinel.port))
                    })
                    .collect();
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join("; "))
                }
            },
        );
        group
    }

    /// The name the sentinels monitor the primary under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `redis://127.0.0.1:PORT` for each of the three sentinels, in order.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::url).collect()
    }

    /// The three sentinels, to pause, resume or kill one.
    pub fn sentinels(&self) -> &[Sentinel] {
        &self.sentinels
    }

    /// The three sentinels, to kill one.
    pub fn sentinels_mut(&mut self) -> &mut [Sentinel] {
        &mut self.sentinels
    }

    /// The primary: the node started as primary, or the one promoted by the last
    /// [`kill_primary_and_wait_failover`](Self::kill_primary_and_wait_failover). A failover
    /// the test provokes otherwise (pausing the primary for longer than a second) is not
    /// tracked here; [`current_primary_port`](Self::current_primary_port) asks the sentinels.
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The primary, to kill or restart by hand.
    pub fn primary_mut(&mut self) -> &mut RedisServer {
        &mut self.primary
    }

    /// The replica: the node started as replica, or, after
    /// [`kill_primary_and_wait_failover`](Self::kill_primary_and_wait_failover), the old
    /// primary (killed until [`restart_old_primary`](Self::restart_old_primary)).
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The replica, to kill or restart by hand.
    pub fn replica_mut(&mut self) -> &mut RedisServer {
        &mut self.replica
    }

    /// The port of the primary as a majority (two of three) of the sentinels report it
    /// (`SENTINEL get-master-addr-by-name`), asking only the sentinels that are running and
    /// not paused, and waiting up to 10 s for a majority to agree.
    ///
    /// # Panics
    ///
    /// When no majority agrees within 10 s; the message quotes every answer.
    pub fn current_primary_port(&self) -> u16 {
        let mut port = 0;
        self.wait_until(
            Instant::now() + AGREE_TIMEOUT,
            "a majority of the sentinels to agree on the primary",
            |group| {
                let answers = group.reported_primaries();
                for (_, answer) in &answers {
                    let agreeing = answers.iter().filter(|(_, other)| other == answer).count();
                    if let Ok(answer) = answer
                        && agreeing >= QUORUM
                    {
                        port = *answer;
                        return Ok(());
                    }
                }
                Err(format!("sentinel port -> primary port: {answers:?}"))
            },
        );
        port
    }

    /// Crashes the primary (`SIGKILL`) and waits until every running, unpaused sentinel
    /// reports the replica as the master and the replica answers `ROLE` as `master`. Returns
    /// the time from the kill until both held. Before returning, it also waits until those
    /// sentinels have finished the failover and seen the new primary answer a ping, so that
    /// the group is as settled as after [`start`](Self::start).
    ///
    /// Afterwards [`primary`](Self::primary) is the promoted node and
    /// [`replica`](Self::replica) the killed one; bring it back with
    /// [`restart_old_primary`](Self::restart_old_primary).
    ///
    /// # Panics
    ///
    /// When the replica is not running, or is not promoted within 30 s.
    pub fn kill_primary_and_wait_failover(&mut self) -> Duration {
        assert!(
            self.replica.is_running(),
            "kill_primary_and_wait_failover: the replica on port {} is not running, so there \
             is nothing to fail over to",
            self.replica.port(),
        );
        let started = Instant::now();
        self.primary.kill();
        let promoted = self.replica.port();
        self.wait_until(
            started + PROMOTE_TIMEOUT,
            &format!(
                "the sentinels to promote the replica on port {promoted} after the primary on \
                 port {} was killed",
                self.primary.port(),
            ),
            |group| {
                let answers = group.reported_primaries();
                // The sentinels close every client connection of the node they promote, so
                // this query can fail once.
                let role = group
                    .query(&group.replica, &["ROLE"])
                    .map(|reply| first_line(&reply));
                let promoted_everywhere = answers.iter().all(|(_, port)| *port == Ok(promoted));
                if role.as_deref() == Ok("master") && promoted_everywhere {
                    Ok(())
                } else {
                    Err(format!(
                        "replica ROLE: {role:?}; sentinel port -> primary port: {answers:?}"
                    ))
                }
            },
        );
        let took = started.elapsed();
        self.wait_until(
            started + PROMOTE_TIMEOUT,
            &format!("every sentinel to settle on the primary on port {promoted}"),
            |group| {
                for sentinel in group.live_sentinels() {
                    group
                        .master_problem(sentinel, promoted)
                        .map_err(|problem| {
                            format!("sentinel on port {}: {problem}", sentinel.port)
                        })?;
                }
                Ok(())
            },
        );
        mem::swap(&mut self.primary, &mut self.replica);
        took
    }

    /// Starts the node killed by
    /// [`kill_primary_and_wait_failover`](Self::kill_primary_and_wait_failover) again on its
    /// port, empty. It comes back believing it is a primary (a window in which it accepts
    /// writes), until the sentinels notice and make it a replica of the current primary.
    /// Returns once it is one, in sync, and every running, unpaused sentinel lists it as a
    /// healthy replica: from then on it answers writes with `READONLY`.
    ///
    /// # Panics
    ///
    /// When the replica is running (nothing was killed), or it is not reconfigured within
    /// 45 s.
    pub fn restart_old_primary(&mut self) {
        assert!(
            !self.replica.is_running(),
            "restart_old_primary: the node on port {} is running; call \
             kill_primary_and_wait_failover first",
            self.replica.port(),
        );
        self.replica.start_again();
        let primary = self.primary.port();
        self.wait_until(
            Instant::now() + DEMOTE_TIMEOUT,
            &format!(
                "the sentinels to make the restarted node on port {} a replica of the primary \
                 on port {primary}",
                self.replica.port(),
            ),
            |group| {
                // The sentinels close every client connection of the node they reconfigure,
                // so a query can fail once.
                group.replica_synced(&group.replica, primary)?;
                for sentinel in group.live_sentinels() {
                    let replicas = sentinel.query(&["SENTINEL", "REPLICAS", &group.master_name]);
                    healthy_replica(&records(&replicas?), group.replica.port(), primary).map_err(
                        |problem| format!("sentinel on port {}: {problem}", sentinel.port),
                    )?;
                }
                Ok(())
            },
        );
    }

    /// The sentinels that can answer: running and not paused.
    fn live_sentinels(&self) -> impl Iterator<Item = &Sentinel> {
        self.sentinels
            .iter()
            .filter(|sentinel| sentinel.is_running() && !sentinel.is_paused())
    }

    /// The primary's port according to each live sentinel, with the sentinel's port; an
    /// `Err` says why a sentinel did not name one.
    fn reported_primaries(&self) -> Vec<(u16, Result<u16, String>)> {
        self.live_sentinels()
            .map(|sentinel| {
                let reply =
                    sentinel.query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name]);
                let port = reply.and_then(|reply| {
                    reply
                        .lines()
                        .nth(1)
                        .and_then(|port| port.trim().parse().ok())
                        .ok_or_else(|| format!("named no primary: {reply:?}"))
                });
                (sentinel.port, port)
            })
            .collect()
    }

    /// What `sentinel` does not know yet about the group as started.
    fn topology_problem(&self, sentinel: &Sentinel) -> Result<(), String> {
        let name = self.master_name.as_str();
        let (primary, replica) = (self.primary.port(), self.replica.port());
        let master = self.master_problem(sentinel, primary)?;
        let master_field = |key: &str| field_of(&master, key).unwrap_or("?");
        let replicas = records(&sentinel.query(&["SENTINEL", "REPLICAS", name])?);
        healthy_replica(&replicas, replica, primary)?;
        let peers = records(&sentinel.query(&["SENTINEL", "SENTINELS", name])?);
        let healthy = peers
            .iter()
            .filter(|peer| field_of(peer, "flags") == Some("sentinel"))
            .count();
        if healthy != SENTINELS - 1
            || master_field("num-other-sentinels") != (SENTINELS - 1).to_string()
        {
            return Err(format!(
                "knows {healthy} healthy other sentinels of {}: {peers:?}",
                SENTINELS - 1
            ));
        }
        Ok(())
    }

    /// Whether `sentinel` watches the node on port `primary` as the master, with nothing
    /// wrong (flags exactly `master`: not down, no failover under way) and a ping answered
    /// since it started watching it. Returns its `SENTINEL MASTER` fields.
    fn master_problem(
        &self,
        sentinel: &Sentinel,
        primary: u16,
    ) -> Result<Vec<(String, String)>, String> {
        let name = self.master_name.as_str();
        let reply = sentinel.query(&["SENTINEL", "MASTER", name])?;
        let master = pairs(&reply);
        let healthy = field_of(&master, "port") == Some(primary.to_string().as_str())
            && field_of(&master, "flags") == Some("master")
            // Nonzero while a ping is unanswered, and from the start of watching a node until
            // it first answers.
            && field_of(&master, "last-ping-sent") == Some("0");
        if healthy {
            Ok(master)
        } else {
            Err(format!(
                "does not see the primary on port {primary} as a healthy master {name}: {reply:?}"
            ))
        }
    }

    /// Runs `redis-cli` against `server`; an `Err` when it fails (the connection was closed,
    /// the server is down) rather than a panic.
    fn query(&self, server: &RedisServer, args: &[&str]) -> Result<String, String> {
        run_cli(&self.cli, server.port(), args)
    }

    /// Whether `replica` replicates the primary on port `primary` with its link up.
    fn replica_synced(&self, replica: &RedisServer, primary: u16) -> Result<(), String> {
        let info = self.query(replica, &["INFO", "replication"])?;
        let has = |line: &str| info.lines().any(|l| l.trim() == line);
        if has("role:slave")
            && has(&format!("master_port:{primary}"))
            && has("master_link_status:up")
        {
            Ok(())
        } else {
            Err(format!(
                "node on port {} is not a synced replica of port {primary}: {info}",
                replica.port()
            ))
        }
    }

    /// Polls `check` until it returns `Ok`; at `deadline`, panics with `what`, the last `Err`
    /// and the end of every sentinel's log.
    fn wait_until(
        &self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut(&Self) -> Result<(), String>,
    ) {
        loop {
            let problem = match check(self) {
                Ok(()) => return,
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .sentinels
                    .iter()
                    .map(|sentinel| {
                        format!(
                            "sentinel on port {}: {}",
                            sentinel.port,
                            log_tail(sentinel.dir.path())
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; last seen: {problem}\n{}",
                    logs.join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }
}

/// One `redis-server --sentinel` process on a free loopback port, with its config file and
/// log in its own temp dir, killed on `Drop`. Part of a [`SentinelGroup`].
#[derive(Debug)]
pub struct Sentinel {
    port: u16,
    cli: PathBuf,
    /// `None` once killed. A `Mutex` so `&self` methods can reap a process that died.
    child: Mutex<Option<Child>>,
    /// Set by [`pause`](Self::pause), cleared by [`resume`](Self::resume).
    paused: AtomicBool,
    dir: TempDir,
}

impl Sentinel {
    /// Writes a config file monitoring `127.0.0.1:primary` as `master_name`, starts a
    /// sentinel with it and waits until it answers; tries other ports if one is taken.
    fn start(master_name: &str, primary: u16) -> Sentinel {
        let bin = redis_server_bin();
        let cli = redis_cli_bin(&bin);
        let dir = tempfile::Builder::new()
            .prefix("soloist-sentinel-")
            .tempdir()
            .expect("create a temp dir for a sentinel");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match launch(&bin, port, dir.path(), master_name, primary) {
                Ok(child) => {
                    let sentinel = Sentinel {
                        port,
                        cli,
                        child: Mutex::new(Some(child)),
                        paused: AtomicBool::new(false),
                        dir,
                    };
                    sentinel.tune(master_name);
                    return sentinel;
                }
                Err(failure) => failures.push(format!("port {port}: {failure}")),
            }
        }
        panic!(
            "redis sentinel did not start after {START_ATTEMPTS} attempts ({}); {}",
            failures.join("; "),
            log_tail(dir.path()),
        );
    }

    /// Shortens the periods the sentinel exchanges `INFO`, hellos and pings with (defaults
    /// 10 s, 2 s and 1 s), and how long it stays in TILT mode after a pause (default 30 s).
    ///
    /// The ping period matters most: a sentinel first pings a node it starts watching (as
    /// after a failover) one ping period after it starts, and holds it down if no answer came
    /// within `down-after-milliseconds` of that start. With both at one second, it holds every
    /// new primary down for an instant, which can set off a second failover. Before Redis 7
    /// there is no `SENTINEL DEBUG`; `down-after-milliseconds` is doubled instead.
    fn tune(&self, master_name: &str) {
        let reply = self.cli(&[
            "SENTINEL",
            "DEBUG",
            "info-period",
            "1000",
            "publish-period",
            "500",
            "ping-period",
            "250",
            "tilt-period",
            "5000",
        ]);
        if reply != "OK" {
            let down_after = (DOWN_AFTER * 2).as_millis().to_string();
            let reply = self.cli(&[
                "SENTINEL",
                "SET",
                master_name,
                "down-after-milliseconds",
                &down_after,
            ]);
            assert_eq!(reply, "OK", "sentinel on port {}: SENTINEL SET", self.port);
        }
    }

    /// The connection URL, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the sentinel listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, or `None` when the sentinel is not running. A paused sentinel is
    /// running.
    pub fn pid(&self) -> Option<u32> {
        server::running(&mut self.lock_child()).map(|child| child.id())
    }

    /// Whether the sentinel process is alive (a paused one is).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Whether the sentinel is paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Kills the sentinel with `SIGKILL` and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::Relaxed);
    }

    /// Freezes the sentinel with `SIGSTOP`: it accepts connections (the kernel completes the
    /// handshake) but answers nothing until [`resume`](Self::resume). A sentinel frozen for
    /// more than 2 s enters TILT mode when it resumes and takes no action for a while.
    ///
    /// # Panics
    ///
    /// If the sentinel is not running.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP, "pause");
        self.paused.store(true, Ordering::Relaxed);
    }

    /// Continues a sentinel frozen by [`pause`](Self::pause) with `SIGCONT`.
    ///
    /// # Panics
    ///
    /// If the sentinel is not running.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT, "resume");
        self.paused.store(false, Ordering::Relaxed);
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT args...` against the sentinel and returns its
    /// trimmed stdout; error replies come back as text. Blocks while the sentinel is paused.
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be run or exits unsuccessfully.
    pub fn cli(&self, args: &[&str]) -> String {
        self.query(args).unwrap_or_else(|failure| {
            panic!(
                "sentinel on port {}: {failure}; {}",
                self.port,
                log_tail(self.dir.path())
            )
        })
    }

    /// [`cli`](Self::cli) with an `Err` rather than a panic when `redis-cli` fails.
    fn query(&self, args: &[&str]) -> Result<String, String> {
        run_cli(&self.cli, self.port, args)
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self, sig: Signal, action: &str) {
        // Hold the lock so the process cannot be reaped (and its pid reused) in between.
        let mut child = self.lock_child();
        let Some(pid) = server::running(&mut child).map(|child| child.id()) else {
            panic!(
                "{action}: sentinel on port {} is not running (killed or exited)",
                self.port
            );
        };
        signal::send(pid, sig, &format!("sentinel on port {}", self.port));
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes the config file and spawns a sentinel on `port`, waiting until it answers, or kills
/// it and says why not. The log goes to `redis.log`, where [`log_tail`] finds it.
fn launch(
    bin: &Path,
    port: u16,
    dir: &Path,
    master_name: &str,
    primary: u16,
) -> Result<Child, String> {
    let config = dir.join("sentinel.conf");
    let down_after = DOWN_AFTER.as_millis();
    let failover_timeout = FAILOVER_TIMEOUT.as_millis();
    // Sentinel rewrites this file as it learns the topology, so it is written afresh for every
    // attempt.
    let text = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         daemonize no\n\
         dir \"{dir}\"\n\
         logfile \"{log}\"\n\
         sentinel monitor {master_name} 127.0.0.1 {primary} {QUORUM}\n\
         sentinel down-after-milliseconds {master_name} {down_after}\n\
         sentinel failover-timeout {master_name} {failover_timeout}\n\
         sentinel parallel-syncs {master_name} 1\n",
        dir = dir.display(),
        log = dir.join("redis.log").display(),
    );
    fs::write(&config, text).unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
    // The config file must be the first argument.
    let mut child = Command::new(bin)
        .arg(&config)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("sentinel exited with {status}")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for the sentinel: {e}")),
        }
        if let Some(Probe::Pid(pid)) = probe(port)
            && pid == child.id()
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("sentinel did not answer within {READY_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT args...` and returns its trimmed stdout, or says why
/// it failed. Error replies are stdout, since `redis-cli` exits successfully for them.
///
/// # Panics
///
/// If `redis-cli` cannot be run at all.
fn run_cli(cli: &Path, port: u16, args: &[&str]) -> Result<String, String> {
    let output = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        Ok(stdout.trim().to_owned())
    } else {
        Err(format!(
            "redis-cli -p {port} {args:?} failed ({}): stderr: {} stdout: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim(),
        ))
    }
}

/// Whether `replicas` (a sentinel's `SENTINEL REPLICAS`) lists the node on port `port` as a
/// replica of `primary` with nothing wrong (flags exactly `slave`, link ok).
fn healthy_replica(
    replicas: &[Vec<(String, String)>],
    port: u16,
    primary: u16,
) -> Result<(), String> {
    let port_text = port.to_string();
    let Some(replica) = replicas
        .iter()
        .find(|replica| field_of(replica, "port") == Some(port_text.as_str()))
    else {
        return Err(format!(
            "does not list the replica on port {port}: {replicas:?}"
        ));
    };
    let healthy = field_of(replica, "flags") == Some("slave")
        && field_of(replica, "master-link-status") == Some("ok")
        && field_of(replica, "master-port") == Some(primary.to_string().as_str());
    if healthy {
        Ok(())
    } else {
        Err(format!(
            "does not see the replica on port {port} as a healthy replica of port {primary}: \
             {replica:?}"
        ))
    }
}

/// The first line of a `redis-cli` reply.
fn first_line(reply: &str) -> String {
    reply.lines().next().unwrap_or("").trim().to_owned()
}

/// A flat `redis-cli` reply of alternating field names and values, as pairs.
fn pairs(reply: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines
        .chunks_exact(2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}

/// A `redis-cli` reply that is an array of field-value maps (`SENTINEL REPLICAS`,
/// `SENTINEL SENTINELS`); `redis-cli` prints them one after another, each starting with the
/// field `name`.
fn records(reply: &str) -> Vec<Vec<(String, String)>> {
    let mut records: Vec<Vec<(String, String)>> = Vec::new();
    for (key, value) in pairs(reply) {
        if key == "name" || records.is_empty() {
            records.push(Vec::new());
        }
        if let Some(record) = records.last_mut() {
            record.push((key, value));
        }
    }
    records
}

fn field_of<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::{field_of, first_line, records};

    #[test]
    fn records_split_at_each_name() {
        let reply = "name\n127.0.0.1:1\nport\n1\nflags\nslave\nname\n127.0.0.1:2\nport\n2\n\
                     flags\nslave,s_down";
        let parsed = records(reply);
        assert_eq!(parsed.len(), 2);
        assert_eq!(field_of(&parsed[0], "flags"), Some("slave"));
        assert_eq!(field_of(&parsed[1], "port"), Some("2"));
        assert_eq!(field_of(&parsed[1], "flags"), Some("slave,s_down"));
        assert!(records("").is_empty());
    }

    #[test]
    fn first_line_of_role() {
        assert_eq!(first_line("master\n0"), "master");
        assert_eq!(first_line(""), "");
    }
}
