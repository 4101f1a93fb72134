//! A primary with one replica: two real servers, the second replicating the first.

use std::thread;
use std::time::{Duration, Instant};

use crate::server::RedisServer;

/// How long the replica may take to finish its first synchronisation.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// A primary and one replica (`--replicaof`), both [`RedisServer`]s on free loopback ports,
/// killed on `Drop`. [`start`](Self::start) returns once the replica's link to the primary is
/// up and the primary counts it as online, so `WAIT` on the primary counts it from then on.
///
/// The fault verbs are those of [`RedisServer`]: pause the replica
/// ([`RedisServer::pause`], `SIGSTOP`) and the primary's writes stay unacknowledged until it
/// resumes; kill it and they are never acknowledged. Check acknowledgements with
/// [`RedisServer::write_and_wait`]: a `WAIT` sent through [`RedisServer::cli`] is on a
/// connection of its own and waits for nothing.
///
/// ```no_run
/// use std::time::Duration;
/// use soloist_testkit::ReplicaSet;
///
/// let set = ReplicaSet::start();
/// let second = Duration::from_secs(1);
/// assert_eq!(set.primary().write_and_wait(&["SET", "k", "v"], 1, second), 1);
/// assert_eq!(set.replica().get("k").as_deref(), Some("v"));
/// set.replica().pause(); // writes go unacknowledged
/// let quick = Duration::from_millis(100);
/// assert_eq!(set.primary().write_and_wait(&["SET", "k", "w"], 1, quick), 0);
/// set.replica().resume();
/// ```
#[derive(Debug)]
pub struct ReplicaSet {
    primary: RedisServer,
    replica: RedisServer,
}

impl ReplicaSet {
    /// Starts the primary, then the replica, and waits until the replica reports
    /// `master_link_status:up` and the primary lists it with `state=online`.
    ///
    /// # Panics
    ///
    /// When a server does not start, or the replica does not synchronise within 10 s.
    pub fn start() -> ReplicaSet {
        // Diskless synchronisation without the default 5 s delay: the
        // replica is in sync in milliseconds.
        let primary = RedisServer::builder()
            .arg("--repl-diskless-sync")
            .arg("yes")
            .arg("--repl-diskless-sync-delay")
            .arg("0")
            .start();
        let replica = RedisServer::builder()
            .arg("--replicaof")
            .arg("127.0.0.1")
            .arg(primary.port().to_string())
            .start();
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let info = replica.cli(&["INFO", "replication"]);
            // The primary counts a replica in `WAIT` only once it is
            // `online`, which after a diskless sync waits for the replica's
            // first acknowledgement, up to a second after its link is up.
            let primary_info = primary.cli(&["INFO", "replication"]);
            let linked = info
                .lines()
                .any(|line| line.trim() == "master_link_status:up");
            let online = primary_info
                .lines()
                .any(|line| line.starts_with("slave0:") && line.contains("state=online"));
            if linked && online {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} did not sync with the primary on port {} within \
                 {SYNC_TIMEOUT:?}: replica: {info} primary: {primary_info}",
                replica.port(),
                primary.port(),
            );
            thread::sleep(Duration::from_millis(20));
        }
        ReplicaSet { primary, replica }
    }

    /// The primary, which clients write to.
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The replica, to pause, resume or read from.
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The replica, to kill or restart.
    pub fn replica_mut(&mut self) -> &mut RedisServer {
        &mut self.replica
    }
}
