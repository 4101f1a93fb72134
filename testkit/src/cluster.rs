//! A Redis Cluster of three primaries with one replica each: six real servers, joined with
//! `redis-cli --cluster create`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::TestCertificates;
use crate::resp::{self, Reply};
use crate::server::{RedisServer, RedisServerBuilder};

/// How many primaries [`RedisCluster::start`] creates; each gets one replica.
const PRIMARIES: usize = 3;
/// How many servers a cluster runs.
const NODES: usize = PRIMARIES * 2;
/// `--cluster-node-timeout`: a primary is failed over this long after it stops answering,
/// plus the election (about a second).
const NODE_TIMEOUT_MS: u32 = 2000;
/// How long the cluster may take to agree on its configuration after a change.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls of the cluster's state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long one node may take to answer a poll.
const POLL_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `redis-cli --cluster create|reshard` may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// `MIGRATE`'s own timeout (idle time talking to the target), in milliseconds.
const MIGRATE_TIMEOUT_MS: u32 = 10_000;
/// How long the testkit waits for a `MIGRATE` reply: its timeout and some room.
const MIGRATE_REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many keys one `MIGRATE ... KEYS` moves in [`SlotMigration::move_all_keys`].
const MIGRATE_BATCH: usize = 100;

/// A Redis Cluster on real servers: three primaries, each with one replica, on free loopback
/// ports, every process killed on `Drop`.
///
/// [`start`](Self::start) starts six [`RedisServer`]s with `--cluster-enabled yes`, joins them
/// with `redis-cli --cluster create ... --cluster-replicas 1`, and returns once every node
/// reports `cluster_state:ok`, all of them agree on who owns each of the 16384 slots and on
/// who replicates whom, and every replica's link to its primary is up.
///
/// Nodes are numbered `0..6` ([`node`](Self::node)); which of them are primaries is decided
/// by `redis-cli` and changes with failovers, so ask [`primaries`](Self::primaries),
/// [`replicas`](Self::replicas) or [`primary_for_slot`](Self::primary_for_slot).
///
/// Faults:
/// - [`kill_primary_of`](Self::kill_primary_of) crashes the primary owning a slot and waits
///   for its replica to take over;
/// - [`migrate_slot`](Self::migrate_slot) (or, step by step, [`begin_migration`](
///   Self::begin_migration)) moves one slot and its keys to another primary the way
///   `redis-cli --cluster reshard` does, while clients keep writing;
/// - [`reshard`](Self::reshard) runs `redis-cli --cluster reshard`;
/// - the [`RedisServer`] verbs on a [`node`](Self::node): pausing a primary longer than the
///   node timeout (2 s) gets it failed over, as a crash does.
///
/// The nodes run with `--cluster-node-timeout 2000` and `--cluster-replica-validity-factor 0`
/// (a replica may take over however long its link has been down), so a failover takes about
/// three seconds; with the default `cluster-require-full-coverage yes`, every node answers
/// `CLUSTERDOWN` meanwhile.
///
/// ```no_run
/// use soloist_testkit::RedisCluster;
///
/// let mut cluster = RedisCluster::start();
/// let seeds = cluster.urls(); // hand these to the cluster client under test
/// assert_eq!(cluster.cli(&["SET", "{user1}:a", "1"]), "OK"); // redis-cli -c
/// let slot = RedisCluster::slot_of("{user1}:a");
/// assert_eq!(cluster.primary_for_slot(slot).cli(&["GET", "{user1}:a"]), "1");
///
/// let failover = cluster.kill_primary_of(slot);
/// println!("replica promoted after {:?}", failover.elapsed);
/// # let _ = seeds;
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The cluster node id of each of `nodes`; a node keeps its id across
    /// [`RedisServer::start_again`] (it is in the node's `nodes.conf`).
    ids: Vec<String>,
    /// The certificates every node shares, when built with [`RedisClusterBuilder::tls`].
    certs: Option<TestCertificates>,
    /// Holds `ca.pem` for `redis-cli --tls`.
    dir: TempDir,
}

/// Configures a [`RedisCluster`] before starting it; get one from [`RedisCluster::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisClusterBuilder {
    args: Vec<String>,
    tls: bool,
}

impl RedisClusterBuilder {
    /// Appends one extra `redis-server` argument for every node, after the ones the testkit
    /// sets (so it can override them). Pass option and value as separate calls.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Every node also listens for TLS ([`RedisServerBuilder::tls`]), all with one set of
    /// [`certificates`](RedisCluster::certificates), and the nodes talk to each other over
    /// TLS only: `--tls-cluster yes --tls-replication yes`. Clients need not present a
    /// certificate.
    ///
    /// Redis answers each connection in its own kind: `CLUSTER SLOTS`, `CLUSTER NODES` and
    /// `MOVED` / `ASK` carry the TLS ports on a TLS connection and the plain ports on a plain
    /// one. [`RedisCluster::tls_urls`] are the seeds for a `rediss://` client;
    /// [`RedisCluster::cli`] and the testkit's own commands use TLS where it matters.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the six nodes, creates the cluster and waits until it is ready (see
    /// [`RedisCluster`]).
    ///
    /// # Panics
    ///
    /// When a server does not start, `redis-cli --cluster create` fails, or the cluster does
    /// not settle within 60 s; the message says what was still missing.
    pub fn start(self) -> RedisCluster {
        let certs = self.tls.then(TestCertificates::generate);
        let nodes: Vec<RedisServer> = thread::scope(|scope| {
            let starts: Vec<_> = (0..NODES)
                .map(|_| scope.spawn(|| self.node_builder(certs.clone()).start()))
                .collect();
            starts
                .into_iter()
                .map(|start| {
                    start
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let dir = tempfile::Builder::new()
            .prefix("soloist-cluster-")
            .tempdir()
            .expect("create a temp dir for the cluster");
        if let Some(certs) = &certs {
            fs::write(dir.path().join("ca.pem"), certs.ca_pem()).expect("write the cluster's CA");
        }
        let ids = nodes
            .iter()
            .map(
                |node| match resp::command(node.port(), &["CLUSTER", "MYID"], CLI_TIMEOUT) {
                    Ok(Reply::Bulk(Some(id))) => String::from_utf8_lossy(&id).into_owned(),
                    other => panic!(
                        "CLUSTER MYID on the node on port {}: {other:?}",
                        node.port()
                    ),
                },
            )
            .collect();
        let cluster = RedisCluster {
            nodes,
            ids,
            certs,
            dir,
        };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend((0..NODES).map(|i| cluster.address(i)));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        cluster.run_cli(&create);
        cluster.wait_for("start the cluster", |_| Ok(()));
        cluster
    }

    fn node_builder(&self, certs: Option<TestCertificates>) -> RedisServerBuilder {
        let mut builder = RedisServer::builder()
            .cluster_node()
            .arg("--cluster-node-timeout")
            .arg(NODE_TIMEOUT_MS.to_string())
            // A replica takes over however stale its data: tests kill primaries right after
            // writing to them.
            .arg("--cluster-replica-validity-factor")
            .arg("0")
            // Replicas are in sync within milliseconds instead of after the default 5 s delay.
            .arg("--repl-diskless-sync")
            .arg("yes")
            .arg("--repl-diskless-sync-delay")
            .arg("0");
        if let Some(certs) = certs {
            builder = builder
                .tls_certificates(certs)
                .arg("--tls-cluster")
                .arg("yes")
                .arg("--tls-replication")
                .arg("yes");
        }
        for arg in &self.args {
            builder = builder.arg(arg.clone());
        }
        builder
    }
}

/// What [`RedisCluster::kill_primary_of`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// The index ([`RedisCluster::node`]) of the killed primary.
    pub killed: usize,
    /// The index of the replica that took over its slots.
    pub promoted: usize,
    /// From the kill until the whole cluster agreed on the new primary and reported
    /// `cluster_state:ok` again.
    pub elapsed: Duration,
}

impl RedisCluster {
    /// The number of hash slots, 16384.
    pub const SLOTS: u16 = 16384;

    /// Starts a plain-text cluster; same as `RedisCluster::builder().start()`.
    ///
    /// # Panics
    ///
    /// See [`RedisClusterBuilder::start`].
    pub fn start() -> RedisCluster {
        Self::builder().start()
    }

    /// A builder for extra `redis-server` arguments or TLS.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// The seed URLs, `redis://127.0.0.1:PORT`, of every running node (killed ones left out),
    /// primaries and replicas alike.
    pub fn urls(&self) -> Vec<String> {
        self.running().map(|i| self.nodes[i].url()).collect()
    }

    /// The TLS seed URLs, `rediss://127.0.0.1:TLS_PORT`, of every running node.
    ///
    /// # Panics
    ///
    /// If the cluster was not built with [`RedisClusterBuilder::tls`].
    pub fn tls_urls(&self) -> Vec<String> {
        self.running().map(|i| self.nodes[i].tls_url()).collect()
    }

    /// The CA, server and client certificates every node of a TLS cluster shares.
    ///
    /// # Panics
    ///
    /// If the cluster was not built with [`RedisClusterBuilder::tls`].
    pub fn certificates(&self) -> &TestCertificates {
        self.certs
            .as_ref()
            .expect("this cluster has no TLS: build it with RedisCluster::builder().tls()")
    }

    /// All six nodes, running or not, in a fixed order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `index` (`0..6`).
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// Node `index`, to kill, pause or start again. A node started again keeps its cluster id
    /// and rejoins; a former primary comes back as a replica of whoever took its slots
    /// ([`wait_until_settled`](Self::wait_until_settled) waits for that).
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The index of `node` in [`nodes`](Self::nodes).
    ///
    /// # Panics
    ///
    /// If `node` is not a node of this cluster.
    pub fn index_of(&self, node: &RedisServer) -> usize {
        self.nodes
            .iter()
            .position(|ours| ours.port() == node.port())
            .unwrap_or_else(|| {
                panic!(
                    "the server on port {} is not a node of this cluster",
                    node.port()
                )
            })
    }

    /// The cluster node id of `node` (`CLUSTER MYID`), as `redis-cli --cluster` wants it.
    ///
    /// # Panics
    ///
    /// If `node` is not a node of this cluster.
    pub fn node_id(&self, node: &RedisServer) -> &str {
        &self.ids[self.index_of(node)]
    }

    /// The running nodes that are primaries by their own account (`CLUSTER NODES`, `myself`),
    /// in index order.
    ///
    /// # Panics
    ///
    /// If a running node does not answer within 2 s (a paused node).
    pub fn primaries(&self) -> Vec<&RedisServer> {
        self.running()
            .filter(|&i| self.own_line(i).is_primary())
            .map(|i| &self.nodes[i])
            .collect()
    }

    /// The running nodes that are replicas by their own account, in index order.
    ///
    /// # Panics
    ///
    /// If a running node does not answer within 2 s (a paused node).
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.running()
            .filter(|&i| !self.own_line(i).is_primary())
            .map(|i| &self.nodes[i])
            .collect()
    }

    /// The running primary that owns `slot` by its own account (if two claim it, which only
    /// happens for a moment after a change, the one with the newer configuration epoch, which
    /// is the one the cluster settles on).
    ///
    /// # Panics
    ///
    /// If `slot` is not below 16384, or no running primary owns it (its primary is dead and
    /// not failed over yet).
    pub fn primary_for_slot(&self, slot: u16) -> &RedisServer {
        &self.nodes[self.owner_of(slot)]
    }

    /// A running primary other than the owner of `slot`: where to move it, or
    /// a node that answers `MOVED` for it.
    ///
    /// # Panics
    ///
    /// If no other primary is running, or as [`primary_for_slot`](Self::primary_for_slot).
    pub fn other_primary(&self, slot: u16) -> &RedisServer {
        let owner = self.primary_for_slot(slot).port();
        self.primaries()
            .into_iter()
            .find(|primary| primary.port() != owner)
            .unwrap_or_else(|| panic!("no running primary other than slot {slot}'s owner"))
    }

    /// The slots `node` owns by its own account, ascending; none for a replica.
    ///
    /// # Panics
    ///
    /// If `node` is not a running node of this cluster.
    pub fn slots_of(&self, node: &RedisServer) -> Vec<u16> {
        let line = self.own_line(self.index_of(node));
        line.slots
            .iter()
            .flat_map(|&(first, last)| first..=last)
            .collect()
    }

    /// The hash slot of `key`: CRC16 (XMODEM) of the key modulo 16384, where a key with a hash
    /// tag (the part between the first `{` and the first `}` after it, when not empty) hashes
    /// the tag only, so `{user1}:a` and `{user1}:b` share a slot. The same as
    /// `CLUSTER KEYSLOT`.
    ///
    /// ```
    /// use soloist_testkit::RedisCluster;
    ///
    /// assert_eq!(RedisCluster::slot_of("foo"), 12182);
    /// assert_eq!(RedisCluster::slot_of("{foo}:bar"), 12182);
    /// // An empty tag is no tag: the whole key is hashed.
    /// assert_ne!(RedisCluster::slot_of("{}foo"), RedisCluster::slot_of("foo"));
    /// ```
    pub fn slot_of(key: &str) -> u16 {
        slot_of_bytes(key.as_bytes())
    }

    /// A short key (`k<n>`) that hashes to `slot`: wrap it in braces to put more keys in that
    /// slot, `{k123}:a`, `{k123}:b`.
    ///
    /// # Panics
    ///
    /// If `slot` is not below 16384.
    pub fn key_in_slot(slot: u16) -> String {
        check_slot(slot);
        (0_u64..)
            .map(|n| format!("k{n}"))
            .find(|key| Self::slot_of(key) == slot)
            .expect("every slot has a key k<n>")
    }

    /// Runs `redis-cli -c` (cluster mode: it follows `MOVED` and `ASK`) against a running node
    /// and returns its trimmed stdout, like [`RedisServer::cli`]. Over TLS for a TLS cluster.
    ///
    /// # Panics
    ///
    /// If no node is running, or `redis-cli` cannot be run or exits unsuccessfully.
    pub fn cli(&self, args: &[&str]) -> String {
        let entry = self
            .running()
            .next()
            .expect("no node of the cluster is running");
        let mut command = self.cli_command();
        command.args(["-c", "-h", "127.0.0.1", "-p"]);
        command.arg(self.client_port(entry).to_string()).args(args);
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "redis-cli -c {args:?} failed ({}): stderr: {} stdout: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim(),
        );
        stdout.trim().to_owned()
    }

    /// Kills (`SIGKILL`) the primary owning `slot`, then waits until one of its replicas has
    /// been promoted and owns its slots, every running node reports `cluster_state:ok`, and
    /// all of them agree on the new configuration.
    ///
    /// The killed node stays in the cluster's tables, flagged `fail`; it can be brought back
    /// with [`RedisServer::start_again`] on [`node_mut`](Self::node_mut), as a replica.
    ///
    /// # Panics
    ///
    /// If the primary has no running replica, or the failover does not complete within 60 s.
    pub fn kill_primary_of(&mut self, slot: u16) -> Failover {
        let killed = self.owner_of(slot);
        let killed_id = self.ids[killed].clone();
        let replicas: Vec<String> = self
            .running()
            .filter(|&i| self.own_line(i).master.as_deref() == Some(killed_id.as_str()))
            .map(|i| self.ids[i].clone())
            .collect();
        assert!(
            !replicas.is_empty(),
            "kill_primary_of({slot}): {} has no running replica to take over",
            self.name(killed),
        );
        self.nodes[killed].kill();
        let killed_at = Instant::now();
        let what = format!("fail over slot {slot} after killing {}", self.name(killed));
        let topology = self.wait_for(&what, |topology| {
            let owner = topology.owner(slot);
            if replicas.iter().any(|replica| owner == Some(replica)) {
                Ok(())
            } else {
                Err(format!(
                    "slot {slot} is owned by {owner:?}, not by a replica of {killed_id}"
                ))
            }
        });
        let elapsed = killed_at.elapsed();
        let promoted = self.index_by_id(topology.owner(slot).expect("checked above"));
        Failover {
            killed,
            promoted,
            elapsed,
        }
    }

    /// Moves `slot` and every key in it from its owner to the primary `to`, as
    /// `redis-cli --cluster reshard` moves each slot, and waits until the cluster agrees:
    /// a [`begin_migration`](Self::begin_migration), [`SlotMigration::move_all_keys`], and
    /// [`SlotMigration::finish`]. Returns how many keys were moved.
    ///
    /// Clients may keep reading and writing keys of the slot meanwhile; see
    /// [`SlotMigration`] for what they are told when.
    ///
    /// # Panics
    ///
    /// If `to` already owns `slot` or is not a primary of this cluster, a command fails, or
    /// the cluster does not settle within 60 s.
    pub fn migrate_slot(&self, slot: u16, to: &RedisServer) -> usize {
        let migration = self.begin_migration(slot, to);
        let moved = migration.move_all_keys();
        migration.finish();
        moved
    }

    /// Starts moving `slot` to the primary `to`, the first step of
    /// [`migrate_slot`](Self::migrate_slot): `CLUSTER SETSLOT slot IMPORTING source` on `to`,
    /// then `CLUSTER SETSLOT slot MIGRATING to` on the current owner. The keys stay where
    /// they are until [`SlotMigration::move_keys`]; a test can look at what clients see in
    /// between.
    ///
    /// # Panics
    ///
    /// If `slot` is not below 16384, `to` already owns it or is not a running primary of this
    /// cluster, or a node refuses.
    pub fn begin_migration(&self, slot: u16, to: &RedisServer) -> SlotMigration<'_> {
        let target = self.index_of(to);
        let source = self.owner_of(slot);
        assert_ne!(
            source,
            target,
            "migrate slot {slot}: {} already owns it",
            self.name(target)
        );
        assert!(
            to.is_running() && self.own_line(target).is_primary(),
            "migrate slot {slot}: {} is not a running primary",
            self.name(target),
        );
        let slot_arg = slot.to_string();
        self.expect_ok(
            target,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "IMPORTING",
                &self.ids[source],
            ],
        );
        self.expect_ok(
            source,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "MIGRATING",
                &self.ids[target],
            ],
        );
        SlotMigration {
            cluster: self,
            slot,
            source,
            target,
        }
    }

    /// Moves `count` slots from the primary `from` to the primary `to` with
    /// `redis-cli --cluster reshard <to> --cluster-from <from id> --cluster-to <to id>
    /// --cluster-slots <count> --cluster-yes`, blocking until it is done and the cluster
    /// agrees, and returns the slots that moved, ascending. `redis-cli` moves each slot as
    /// [`migrate_slot`](Self::migrate_slot) does, keys in batches of 10.
    ///
    /// A primary that gives away its last slot becomes a replica of the node that took it
    /// (Redis 7's `cluster-allow-replica-migration yes`).
    ///
    /// # Panics
    ///
    /// If `from` owns fewer than `count` slots, `redis-cli` fails, or the cluster does not
    /// settle within 60 s.
    pub fn reshard(&self, from: &RedisServer, to: &RedisServer, count: u16) -> Vec<u16> {
        let (source, target) = (self.index_of(from), self.index_of(to));
        // redis-cli refuses to reshard while nodes disagree or a slot is open.
        self.wait_until_settled();
        let before = self.slots_of(from);
        assert!(
            before.len() >= usize::from(count),
            "reshard: {} owns only {} slots, cannot move {count}",
            self.name(source),
            before.len(),
        );
        let args = [
            "--cluster".to_owned(),
            "reshard".to_owned(),
            self.address(target),
            "--cluster-from".to_owned(),
            self.ids[source].clone(),
            "--cluster-to".to_owned(),
            self.ids[target].clone(),
            "--cluster-slots".to_owned(),
            count.to_string(),
            "--cluster-yes".to_owned(),
        ];
        let output = self.run_cli(&args);
        let (source_id, target_id) = (&self.ids[source], &self.ids[target]);
        let remaining = before.len() - usize::from(count);
        let topology = self.wait_for("reshard", |topology| {
            let kept = topology.slots_of(source_id).count();
            if kept == remaining {
                Ok(())
            } else {
                Err(format!(
                    "the source owns {kept} slots, not {remaining}; redis-cli said: {output}"
                ))
            }
        });
        let moved: Vec<u16> = before
            .into_iter()
            .filter(|&slot| topology.owner(slot) != Some(source_id))
            .collect();
        for &slot in &moved {
            assert_eq!(
                topology.owner(slot),
                Some(target_id.as_str()),
                "reshard moved slot {slot} elsewhere"
            );
        }
        moved
    }

    /// Waits until every running node reports `cluster_state:ok`, knows every other running
    /// node as connected and not failing, has no slot importing or migrating, and all agree on
    /// who owns each of the 16384 slots (each a running node) and who replicates whom, and
    /// every running replica's link to its primary is up. Returns how long it waited.
    ///
    /// Every change the testkit makes waits for this itself; call it after faults of your own
    /// (a node started again, a paused primary resumed). A paused node counts as running and
    /// never answers: resume it first.
    ///
    /// # Panics
    ///
    /// If the cluster does not settle within 60 s; the message says what was still missing.
    pub fn wait_until_settled(&self) -> Duration {
        let start = Instant::now();
        self.wait_for("settle", |_| Ok(()));
        start.elapsed()
    }

    /// Polls until the cluster is settled and `extra` accepts its configuration.
    fn wait_for(&self, what: &str, extra: impl Fn(&Topology) -> Result<(), String>) -> Topology {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let outcome = self
                .settled()
                .and_then(|topology| extra(&topology).map(|()| topology));
            match outcome {
                Ok(topology) => return topology,
                Err(why) if Instant::now() >= deadline => panic!(
                    "{what}: the cluster did not settle within {SETTLE_TIMEOUT:?}: {why}; nodes: {}",
                    self.describe()
                ),
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// The configuration every running node agrees on, or what is not settled yet.
    fn settled(&self) -> Result<Topology, String> {
        let running: Vec<usize> = self.running().collect();
        let running_ids: Vec<&str> = running.iter().map(|&i| self.ids[i].as_str()).collect();
        let mut agreed: Option<(usize, Topology)> = None;
        for &i in &running {
            let info = self.text(i, &["CLUSTER", "INFO"])?;
            if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
                let state = info.lines().next().unwrap_or_default().trim();
                return Err(format!("{} reports {state}", self.name(i)));
            }
            let view = self.view(i)?;
            let me = myself(&view, &self.name(i))?;
            if !me.open_slots.is_empty() {
                return Err(format!(
                    "{} has open slots {:?}",
                    self.name(i),
                    me.open_slots
                ));
            }
            for &j in &running {
                let line = view
                    .iter()
                    .find(|line| line.id == self.ids[j])
                    .ok_or_else(|| {
                        format!("{} does not know {} yet", self.name(i), self.name(j))
                    })?;
                if let Some(flag) = line
                    .flags
                    .iter()
                    .find(|flag| matches!(flag.as_str(), "fail" | "fail?" | "handshake" | "noaddr"))
                {
                    return Err(format!("{} flags {} {flag}", self.name(i), self.name(j)));
                }
                if !line.connected {
                    return Err(format!(
                        "{} is not connected to {}",
                        self.name(i),
                        self.name(j)
                    ));
                }
            }
            let topology = Topology::of(&view, &running_ids)?;
            if let Some(owner) = topology
                .owners
                .iter()
                .find_map(|(_, _, owner)| (!running_ids.contains(&owner.as_str())).then_some(owner))
            {
                return Err(format!(
                    "{} sees slots owned by {owner}, which is not running",
                    self.name(i)
                ));
            }
            if !me.is_primary() {
                let replication = self.text(i, &["INFO", "replication"])?;
                if !replication
                    .lines()
                    .any(|line| line.trim() == "master_link_status:up")
                {
                    return Err(format!(
                        "{} is a replica whose link to its primary is not up",
                        self.name(i)
                    ));
                }
            }
            match &agreed {
                None => agreed = Some((i, topology)),
                Some((first, seen)) if *seen != topology => {
                    return Err(format!(
                        "{} and {} disagree: {seen} / {topology}",
                        self.name(*first),
                        self.name(i)
                    ));
                }
                Some(_) => {}
            }
        }
        agreed
            .map(|(_, topology)| topology)
            .ok_or_else(|| "no node is running".to_owned())
    }

    /// `CLUSTER NODES` of every running node, for panic messages.
    fn describe(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let state = if node.is_running() {
                    self.text(i, &["CLUSTER", "NODES"])
                        .unwrap_or_else(|e| format!("no answer: {e}"))
                } else {
                    "not running".to_owned()
                };
                format!("\n{} id {}:\n{}", self.name(i), self.ids[i], state.trim())
            })
            .collect()
    }

    /// The running primary owning `slot` by its own account.
    fn owner_of(&self, slot: u16) -> usize {
        check_slot(slot);
        self.running()
            .map(|i| (i, self.own_line(i)))
            .filter(|(_, line)| line.is_primary() && line.owns(slot))
            .max_by_key(|(_, line)| line.epoch)
            .map(|(i, _)| i)
            .unwrap_or_else(|| {
                panic!(
                    "no running primary owns slot {slot}; nodes: {}",
                    self.describe()
                )
            })
    }

    fn index_by_id(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|ours| ours == id)
            .unwrap_or_else(|| panic!("{id} is not a node of this cluster"))
    }

    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running())
    }

    fn name(&self, i: usize) -> String {
        format!("node {i} (port {})", self.nodes[i].port())
    }

    /// The port clients and other nodes use: the TLS port in a TLS cluster.
    fn client_port(&self, i: usize) -> u16 {
        if self.certs.is_some() {
            self.nodes[i].tls_port()
        } else {
            self.nodes[i].port()
        }
    }

    fn address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client_port(i))
    }

    /// `redis-cli`, with `--tls --cacert` in a TLS cluster.
    fn cli_command(&self) -> Command {
        let mut command = self.nodes[0].cli_command();
        if self.certs.is_some() {
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(self.dir.path().join("ca.pem"));
        }
        command
    }

    /// Runs `redis-cli args` to completion (at most 60 s) and returns its stdout.
    fn run_cli(&self, args: &[String]) -> String {
        let capture = || tempfile::tempfile().expect("create a temp file for redis-cli output");
        let (mut stdout, mut stderr) = (capture(), capture());
        let mut command = self.cli_command();
        command.args(args);
        let clone = |file: &fs::File| Stdio::from(file.try_clone().expect("clone a file handle"));
        let mut child = command
            .stdout(clone(&stdout))
            .stderr(clone(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Err(e) => panic!("cannot wait for {command:?}: {e}"),
            }
        };
        let read = |file: &mut fs::File| {
            let mut text = String::new();
            let _ = file.rewind();
            let _ = file.read_to_string(&mut text);
            text
        };
        let (out, err) = (read(&mut stdout), read(&mut stderr));
        match status {
            Some(status) if status.success() && !out.contains("[ERR]") => out,
            Some(status) => panic!(
                "redis-cli {} failed ({status}): stderr: {} stdout: {}; nodes: {}",
                args.join(" "),
                err.trim(),
                out.trim(),
                self.describe()
            ),
            None => panic!(
                "redis-cli {} did not finish within {CLI_TIMEOUT:?}: stderr: {} stdout: {}; \
                 nodes: {}",
                args.join(" "),
                err.trim(),
                out.trim(),
                self.describe()
            ),
        }
    }

    fn call<A: AsRef<[u8]>>(
        &self,
        i: usize,
        args: &[A],
        timeout: Duration,
    ) -> Result<Reply, String> {
        resp::command(self.nodes[i].port(), args, timeout).map_err(|e| {
            let command: Vec<_> = args
                .iter()
                .take(3)
                .map(|arg| String::from_utf8_lossy(arg.as_ref()).into_owned())
                .collect();
            format!("{}: {} ...: {e}", self.name(i), command.join(" "))
        })
    }

    /// The text of a status or bulk reply; an error for anything else.
    fn text(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let reply = self.call(i, args, POLL_REPLY_TIMEOUT)?;
        reply
            .text()
            .ok_or_else(|| format!("{}: {args:?} answered {reply:?}", self.name(i)))
    }

    fn expect_ok(&self, i: usize, args: &[&str]) {
        match self.call(i, args, POLL_REPLY_TIMEOUT) {
            Ok(Reply::Status(status)) if status == "OK" => {}
            other => panic!("{}: {args:?} answered {other:?}", self.name(i)),
        }
    }

    /// Node `i`'s `CLUSTER NODES`.
    fn view(&self, i: usize) -> Result<Vec<NodeLine>, String> {
        let text = self.text(i, &["CLUSTER", "NODES"])?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(NodeLine::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", self.name(i)))
    }

    /// Node `i`'s line about itself.
    fn own_line(&self, i: usize) -> NodeLine {
        let name = self.name(i);
        self.view(i)
            .and_then(|view| myself(&view, &name).cloned())
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A slot on its way from one primary to another, from
/// [`RedisCluster::begin_migration`] (which marks it `IMPORTING` on the target and
/// `MIGRATING` on the source) to [`finish`](Self::finish). Dropping it unfinished leaves the
/// slot open.
///
/// What a client sees meanwhile (checked against Redis 7.0.15 by the testkit's tests):
/// - the **source** serves commands whose keys it still has all of; for a key it does not
///   have (moved already, or new), it answers `-ASK <slot> <target>`: the client sends
///   `ASKING` and the command to the target, once, without changing its slot map. A
///   multi-key command (or script) with *some* of its keys still there and some not gets
///   `-TRYAGAIN Multiple keys request during rehashing of slot`; with none of them there,
///   `ASK`;
/// - the **target** answers `-MOVED <slot> <source>` to anything without `ASKING`; after
///   `ASKING`, it serves single-key commands (creating keys as asked) and answers `TRYAGAIN`
///   to a multi-key command some of whose keys it does not have (still on the source, or
///   nowhere). `TRYAGAIN` means: retry after a moment, the keys are on their way;
/// - each `MIGRATE` batch blocks the source while it transfers (it is synchronous), a few
///   milliseconds for small keys;
/// - after [`finish`](Self::finish) every primary answers `-MOVED <slot> <target>`, and the
///   client updates its slot map. Replicas learn of it by gossip, within a moment.
#[derive(Debug)]
#[must_use = "the slot stays open until finish()"]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    source: usize,
    target: usize,
}

impl SlotMigration<'_> {
    /// The slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The primary the slot is moving from.
    pub fn source(&self) -> &RedisServer {
        &self.cluster.nodes[self.source]
    }

    /// The primary the slot is moving to.
    pub fn target(&self) -> &RedisServer {
        &self.cluster.nodes[self.target]
    }

    /// Moves at most `max` of the keys still on the source with one
    /// `MIGRATE 127.0.0.1 <target> "" 0 10000 KEYS ...` (keys from
    /// `CLUSTER GETKEYSINSLOT`); returns how many it asked to move, 0 once the source has none
    /// left.
    ///
    /// # Panics
    ///
    /// If a command fails (`BUSYKEY`: the target already has one of the keys).
    pub fn move_keys(&self, max: usize) -> usize {
        let cluster = self.cluster;
        let (slot, max_arg) = (self.slot.to_string(), max.max(1).to_string());
        let keys = match cluster.call(
            self.source,
            &["CLUSTER", "GETKEYSINSLOT", &slot, &max_arg],
            POLL_REPLY_TIMEOUT,
        ) {
            Ok(Reply::Array(Some(keys))) => keys
                .into_iter()
                .map(|key| match key {
                    Reply::Bulk(Some(key)) => key,
                    other => panic!("CLUSTER GETKEYSINSLOT {slot}: a key {other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!(
                "{}: CLUSTER GETKEYSINSLOT {slot}: {other:?}",
                cluster.name(self.source)
            ),
        };
        if keys.is_empty() {
            return 0;
        }
        let port = cluster.client_port(self.target).to_string();
        let timeout = MIGRATE_TIMEOUT_MS.to_string();
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            port.as_bytes(),
            b"",
            b"0",
            timeout.as_bytes(),
            b"KEYS",
        ];
        args.extend(keys.iter().map(Vec::as_slice));
        match cluster.call(self.source, &args, MIGRATE_REPLY_TIMEOUT) {
            // NOKEY: every key expired or was deleted since GETKEYSINSLOT.
            Ok(Reply::Status(status)) if status == "OK" || status == "NOKEY" => keys.len(),
            other => panic!(
                "{}: MIGRATE of {} keys of slot {slot} to {}: {other:?}",
                cluster.name(self.source),
                keys.len(),
                cluster.name(self.target)
            ),
        }
    }

    /// Moves every key of the slot in batches of 100 until the source has none left (keys
    /// that clients write meanwhile are created on the target, through `ASK`); returns how
    /// many it moved.
    ///
    /// # Panics
    ///
    /// See [`move_keys`](Self::move_keys).
    pub fn move_all_keys(&self) -> usize {
        let mut moved = 0;
        loop {
            match self.move_keys(MIGRATE_BATCH) {
                0 => return moved,
                batch => moved += batch,
            }
        }
    }

    /// Gives the slot to the target, as `redis-cli` does: `CLUSTER SETSLOT slot NODE target`
    /// on the target first, then on the source, then on every other running primary; then
    /// waits until the whole cluster agrees ([`RedisCluster::wait_until_settled`]).
    ///
    /// Call it once the source has no keys left ([`move_all_keys`](Self::move_all_keys)):
    /// keys still there become unreachable.
    ///
    /// # Panics
    ///
    /// If a primary refuses, or the cluster does not settle within 60 s.
    pub fn finish(self) {
        let cluster = self.cluster;
        let slot = self.slot.to_string();
        let target_id = cluster.ids[self.target].as_str();
        let setslot = ["CLUSTER", "SETSLOT", &slot, "NODE", target_id];
        cluster.expect_ok(self.target, &setslot);
        // A source that just lost its last slot may already have turned into a replica of the
        // target, which refuses SETSLOT: redis-cli ignores that too.
        match cluster.call(self.source, &setslot, POLL_REPLY_TIMEOUT) {
            Ok(Reply::Status(status)) if status == "OK" => {}
            Ok(Reply::Error(error)) if error.contains("only with masters") => {}
            other => panic!(
                "{}: {setslot:?} answered {other:?}",
                cluster.name(self.source)
            ),
        }
        for other in cluster.running() {
            if other != self.source && other != self.target && cluster.own_line(other).is_primary()
            {
                cluster.expect_ok(other, &setslot);
            }
        }
        cluster.wait_for(
            &format!("give slot {slot} to {target_id}"),
            |topology| match topology.owner(self.slot) {
                Some(owner) if owner == target_id => Ok(()),
                owner => Err(format!("slot {slot} is still owned by {owner:?}")),
            },
        );
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    flags: Vec<String>,
    /// The primary's id, for a replica.
    master: Option<String>,
    epoch: u64,
    connected: bool,
    /// Inclusive ranges.
    slots: Vec<(u16, u16)>,
    /// `[slot->-id]` (migrating) and `[slot-<-id]` (importing), listed by a node about itself.
    open_slots: Vec<String>,
}

impl NodeLine {
    /// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv>
    /// <config-epoch> <link-state> <slot> ...`
    fn parse(line: &str) -> Result<NodeLine, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line {line:?}"));
        }
        let bad = |what: &str| format!("bad {what} in CLUSTER NODES line {line:?}");
        let mut slots = Vec::new();
        let mut open_slots = Vec::new();
        for field in &fields[8..] {
            if field.starts_with('[') {
                open_slots.push((*field).to_owned());
                continue;
            }
            let (first, last) = field.split_once('-').unwrap_or((field, field));
            let range = (
                first.parse().map_err(|_| bad("slot"))?,
                last.parse().map_err(|_| bad("slot"))?,
            );
            slots.push(range);
        }
        Ok(NodeLine {
            id: fields[0].to_owned(),
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master: (fields[3] != "-").then(|| fields[3].to_owned()),
            epoch: fields[6].parse().map_err(|_| bad("config epoch"))?,
            connected: fields[7] == "connected",
            slots,
            open_slots,
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|ours| ours == flag)
    }

    fn is_primary(&self) -> bool {
        self.has("master")
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

fn myself<'v>(view: &'v [NodeLine], name: &str) -> Result<&'v NodeLine, String> {
    view.iter()
        .find(|line| line.has("myself"))
        .ok_or_else(|| format!("{name}: CLUSTER NODES has no myself line"))
}

/// The configuration of the cluster as one node sees it, compared across nodes.
#[derive(Debug, PartialEq, Eq)]
struct Topology {
    /// Inclusive slot ranges and the id of the primary owning each, ascending, covering all
    /// slots, adjacent ranges of one owner merged.
    owners: Vec<(u16, u16, String)>,
    /// Each running node's primary (`None` for a primary).
    roles: BTreeMap<String, Option<String>>,
}

impl Topology {
    /// The configuration `view` describes; an error unless it covers every slot once.
    fn of(view: &[NodeLine], running: &[&str]) -> Result<Topology, String> {
        let mut ranges: Vec<(u16, u16, String)> = view
            .iter()
            .filter(|line| line.is_primary())
            .flat_map(|line| {
                line.slots
                    .iter()
                    .map(|&(first, last)| (first, last, line.id.clone()))
            })
            .collect();
        ranges.sort();
        let mut owners: Vec<(u16, u16, String)> = Vec::new();
        let mut next = 0_u32;
        for (first, last, owner) in ranges {
            if u32::from(first) != next {
                return Err(format!(
                    "slots {next}..{first} are not covered, or covered twice"
                ));
            }
            next = u32::from(last) + 1;
            match owners.last_mut() {
                Some((_, previous_last, previous)) if *previous == owner => *previous_last = last,
                _ => owners.push((first, last, owner)),
            }
        }
        if next != u32::from(RedisCluster::SLOTS) {
            return Err(format!("slots {next}..16383 are not covered"));
        }
        let roles = view
            .iter()
            .filter(|line| running.contains(&line.id.as_str()))
            .map(|line| {
                let master = if line.is_primary() {
                    None
                } else {
                    line.master.clone()
                };
                (line.id.clone(), master)
            })
            .collect();
        Ok(Topology { owners, roles })
    }

    fn owner(&self, slot: u16) -> Option<&str> {
        self.owners
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, owner)| owner.as_str())
    }

    fn slots_of<'t>(&'t self, id: &'t str) -> impl Iterator<Item = u16> + 't {
        self.owners
            .iter()
            .filter(move |(_, _, owner)| owner == id)
            .flat_map(|&(first, last, _)| first..=last)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |id: &str| id.chars().take(8).collect::<String>();
        write!(f, "slots")?;
        for (first, last, owner) in &self.owners {
            write!(f, " {first}-{last}:{}", short(owner))?;
        }
        write!(f, ", replicas")?;
        for (id, master) in &self.roles {
            if let Some(master) = master {
                write!(f, " {}->{}", short(id), short(master))?;
            }
        }
        Ok(())
    }
}

fn check_slot(slot: u16) {
    assert!(
        slot < RedisCluster::SLOTS,
        "slot {slot} is out of range: slots are 0..16384"
    );
}

/// The hash slot of `key`, with Redis' hash-tag rule; see [`RedisCluster::slot_of`].
fn slot_of_bytes(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&byte| byte == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % RedisCluster::SLOTS
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster uses.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0_u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{NodeLine, Topology, crc16_xmodem, slot_of_bytes};

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b""), 0);
    }

    #[test]
    fn slots_follow_the_hash_tag_rule() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot_of_bytes(b"foo"), 12182);
        assert_eq!(slot_of_bytes(b"{foo}bar"), 12182);
        assert_eq!(slot_of_bytes(b"bar{foo}"), 12182);
        assert_eq!(slot_of_bytes(b"{foo}{bar}"), 12182);
        assert_eq!(slot_of_bytes(b"{foo"), slot_of_bytes(b"{foo")); // no closing brace
        assert_ne!(slot_of_bytes(b"{}foo"), slot_of_bytes(b"foo")); // empty tag: whole key
        assert_eq!(slot_of_bytes(b"}foo{"), crc16_xmodem(b"}foo{") % 16384);
        assert_eq!(slot_of_bytes(b"{{foo}}"), slot_of_bytes(b"{foo"));
    }

    #[test]
    fn parses_cluster_nodes_lines() {
        let line = NodeLine::parse(
            "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host slave \
             e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected",
        )
        .unwrap();
        assert!(!line.is_primary());
        assert_eq!(
            line.master.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        let line = NodeLine::parse(
            "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 \
             0 1 connected 0-5460 5462 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]",
        )
        .unwrap();
        assert!(line.is_primary() && line.has("myself") && line.connected);
        assert_eq!(line.slots, [(0, 5460), (5462, 5462)]);
        assert_eq!(line.open_slots.len(), 1);
        assert!(line.owns(5462) && !line.owns(5461));
    }

    #[test]
    fn topology_requires_full_coverage_and_merges_ranges() {
        let view = |b_slots: &str| {
            [
                format!("a 127.0.0.1:1@2 myself,master - 0 0 1 connected 0-99 {b_slots}"),
                "b 127.0.0.1:3@4 master - 0 0 2 connected 100-16383".to_owned(),
                "c 127.0.0.1:5@6 slave a 0 0 1 connected".to_owned(),
            ]
            .iter()
            .map(|line| NodeLine::parse(line).unwrap())
            .collect::<Vec<_>>()
        };
        let topology = Topology::of(&view(""), &["a", "b", "c"]).unwrap();
        assert_eq!(topology.owner(99), Some("a"));
        assert_eq!(topology.owner(100), Some("b"));
        assert_eq!(topology.slots_of("a").count(), 100);
        assert_eq!(topology.roles["c"].as_deref(), Some("a"));
        assert!(
            Topology::of(&view("100"), &["a"]).is_err(),
            "slot 100 twice"
        );
        let partial: Vec<_> = view("").into_iter().take(1).collect();
        assert!(
            Topology::of(&partial, &["a"]).is_err(),
            "slots 100.. missing"
        );
    }
}
