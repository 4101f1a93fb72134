//! `ReplicaSet` and `RedisServer::write_and_wait` against real `redis-server`s: a write counts
//! as acknowledged only once the replica has it.

use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use soloist_testkit::{Proxy, RedisServer, ReplicaSet};

#[test]
fn write_and_wait_counts_only_replicas_that_have_the_write() {
    let set = ReplicaSet::start();
    let (primary, replica) = (set.primary(), set.replica());
    let second = Duration::from_secs(1);
    assert_eq!(primary.write_and_wait(&["SET", "k", "v"], 1, second), 1);
    // Acknowledged means the replica has it: no wait needed before reading.
    assert_eq!(replica.get("k").as_deref(), Some("v"));

    replica.pause();
    let started = Instant::now();
    let quick = Duration::from_millis(300);
    assert_eq!(primary.write_and_wait(&["SET", "k", "w"], 1, quick), 0);
    assert!(
        started.elapsed() >= quick,
        "WAIT waited for the frozen replica"
    );
    // Why the write and its WAIT share a connection: a WAIT on a connection of
    // its own waits for no write, and counts the frozen replica at once.
    assert_eq!(primary.cli(&["WAIT", "1", "300"]), "1");
    replica.resume();

    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.get("k").as_deref() != Some("w") {
        assert!(Instant::now() < deadline, "the replica never caught up");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(primary.write_and_wait(&["SET", "k", "x"], 1, second), 1);
    assert_eq!(replica.get("k").as_deref(), Some("x"));
}

#[test]
fn write_and_wait_fails_on_an_error_reply() {
    let set = ReplicaSet::start();
    let second = Duration::from_secs(1);
    let refused = panic::catch_unwind(AssertUnwindSafe(|| {
        set.replica().write_and_wait(&["SET", "k", "v"], 1, second)
    }))
    .expect_err("a write to a replica is refused");
    let message = refused
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("READONLY"), "{message}");
}

/// The check the failover tests once made, `SET` then `WAIT` through two `redis-cli` calls,
/// passes for a write the replica never receives; promoted, the replica has lost it.
#[test]
fn a_wait_on_a_connection_of_its_own_counts_a_replica_without_the_write() {
    let primary = RedisServer::builder()
        .arg("--repl-diskless-sync")
        .arg("yes")
        .arg("--repl-diskless-sync-delay")
        .arg("0")
        .start();
    // The replication link runs through a proxy that can hold its bytes back.
    let link = Proxy::start(primary.port());
    let replica = RedisServer::builder()
        .arg("--replicaof")
        .arg("127.0.0.1")
        .arg(link.port().to_string())
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = Duration::from_secs(1);
    while primary.write_and_wait(&["SET", "synced", "1"], 1, second) != 1 {
        assert!(Instant::now() < deadline, "the replica never synchronised");
    }

    link.stall();
    assert_eq!(primary.cli(&["SET", "lost", "1"]), "OK");
    assert_eq!(primary.cli(&["WAIT", "1", "300"]), "1", "counted anyway");
    let quick = Duration::from_millis(300);
    assert_eq!(primary.write_and_wait(&["SET", "lost", "2"], 1, quick), 0);

    drop(primary);
    drop(link);
    assert_eq!(replica.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    assert_eq!(replica.get("synced").as_deref(), Some("1"));
    assert_eq!(replica.get("lost"), None);
}
