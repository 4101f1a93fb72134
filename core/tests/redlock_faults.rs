//! Redlock over real redis-server processes: construction rules, nodes
//! killed, paused, restarted empty or answering with errors.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::eventually;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use soloist::{LockClient, LockError, metrics as names};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep, timeout};

const SECOND: Duration = Duration::from_secs(1);

fn servers(count: usize) -> Vec<RedisServer> {
    (0..count).map(|_| RedisServer::start()).collect()
}

fn urls(servers: &[RedisServer]) -> Vec<String> {
    servers.iter().map(RedisServer::url).collect()
}

/// A Redlock client whose per-node timeout leaves room for a loaded test
/// machine; tests about latency set their own.
async fn redlock(servers: &[RedisServer]) -> LockClient {
    LockClient::builder()
        .op_timeout(SECOND)
        .redlock(urls(servers))
        .await
        .expect("redlock")
}

#[tokio::test]
async fn construction_checks_its_nodes() {
    let mut nodes = servers(3);
    let no_nodes: [&str; 0] = [];
    for (urls, name) in [
        (vec![], "urls"),
        (vec![nodes[0].url(), nodes[0].url()], "urls"),
        // Another database on the same server is not an independent node.
        (
            vec![nodes[0].url(), format!("{}/3", nodes[0].url())],
            "urls",
        ),
        (vec![nodes[0].url(), "not a url".to_owned()], "url"),
    ] {
        match LockClient::redlock(urls.clone()).await {
            Err(LockError::InvalidArgument { name: got, .. }) => assert_eq!(got, name, "{urls:?}"),
            other => panic!("{urls:?}: expected InvalidArgument({name}), got {other:?}"),
        }
    }
    assert!(LockClient::redlock(no_nodes).await.is_err());

    // A minority down: constructed, and the node joins when it comes back.
    nodes[2].kill();
    let locks = redlock(&nodes).await;
    locks
        .lock("k")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    nodes[2].start_again();
    nodes[1].kill();
    let joined = eventually("the returned node counts toward the majority", || {
        locks.lock("k").acquire()
    })
    .await;
    drop(joined);

    // A majority down: no client.
    nodes[2].kill();
    assert!(LockClient::redlock(urls(&nodes)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_down_works_two_down_fails_clearly() {
    let mut nodes = servers(3);
    let locks = redlock(&nodes).await;
    nodes[0].kill();
    let ttl = Duration::from_millis(600);
    let held = locks.lock("job").ttl(ttl).acquire().await.unwrap();
    sleep(ttl * 2).await;
    assert!(held.is_held(), "renewals reach the two live nodes");
    held.release().await.expect("release with one node down");

    let held = locks.lock("job").ttl(ttl).acquire().await.unwrap();
    nodes[1].kill();
    let killed_at = Instant::now();
    let wait = Duration::from_millis(500);
    match locks.lock("other").wait(wait).acquire().await {
        // Decided as soon as two nodes failed: no majority was possible.
        Err(LockError::NoQuorum {
            granted,
            unreachable,
            ..
        }) => {
            assert!(
                granted <= 1 && unreachable == 2,
                "{granted} granted, {unreachable} unreachable"
            );
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    assert!(
        killed_at.elapsed() >= wait,
        "gave up before the wait ran out"
    );
    timeout(2 * ttl, held.lost()).await.expect("lost fired");
    assert!(
        killed_at.elapsed() < ttl,
        "lost fired after the ttl: {:?}",
        killed_at.elapsed()
    );
}

/// A decided acquisition or release does not wait for frozen nodes at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_minority_adds_no_latency() {
    for (count, paused) in [(3, 1), (5, 2)] {
        let nodes = servers(count);
        let node_timeout = Duration::from_millis(300);
        let locks = LockClient::builder()
            .op_timeout(node_timeout)
            .redlock(urls(&nodes))
            .await
            .unwrap();
        for node in &nodes[..paused] {
            node.pause();
        }
        for _ in 0..10 {
            let started = Instant::now();
            let guard = locks.lock("fast").acquire().await.unwrap();
            let acquired = started.elapsed();
            assert!(
                acquired < node_timeout / 2,
                "{count} nodes: acquire took {acquired:?}"
            );
            guard.release().await.unwrap();
            let cycle = started.elapsed();
            assert!(
                cycle < node_timeout / 2,
                "{count} nodes: cycle took {cycle:?}"
            );
        }
        for node in &nodes[..paused] {
            node.resume();
        }
    }
}

/// 2 clients × 16 tasks contend while a random node is killed, kept down
/// for one max ttl, and restarted empty, again and again: never two
/// holders, and fences always increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_while_nodes_restart() {
    let mut nodes = servers(3);
    let ttl = Duration::from_millis(500);
    let clients = [redlock(&nodes).await, redlock(&nodes).await];
    let stop = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let last_fence = Arc::new(AtomicU64::new(0));
    let regressions = Arc::new(AtomicUsize::new(0));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..32 {
        let locks = clients[task % 2].clone();
        let (stop, inside, overlaps, last_fence, regressions, acquisitions) = (
            stop.clone(),
            inside.clone(),
            overlaps.clone(),
            last_fence.clone(),
            regressions.clone(),
            acquisitions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(guard) = locks.lock("shared").ttl(ttl).wait(SECOND).acquire().await else {
                    continue;
                };
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                if last_fence.swap(guard.fence(), Ordering::SeqCst) >= guard.fence() {
                    regressions.fetch_add(1, Ordering::SeqCst);
                }
                acquisitions.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                let _ = guard.release().await;
            }
        }));
    }
    for round in 0..5 {
        sleep(Duration::from_millis(700)).await;
        let victim = (round * 7 + 1) % nodes.len();
        nodes[victim].kill();
        sleep(ttl + Duration::from_millis(100)).await; // the Redlock restart delay
        nodes[victim].start_again();
    }
    sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        timeout(10 * SECOND, task)
            .await
            .expect("contender stuck")
            .unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert_eq!(
        regressions.load(Ordering::SeqCst),
        0,
        "a fence went backwards"
    );
    let acquisitions = acquisitions.load(Ordering::SeqCst);
    assert!(acquisitions >= 100, "only {acquisitions} acquisitions");
}

/// Fences keep increasing when nodes forget their counters: a majority that
/// includes a node restarted empty still sees the last fence on another,
/// and when every node of the majority forgot, their clocks stand in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_survive_nodes_that_restart_empty() {
    let mut nodes = servers(3);
    let locks = redlock(&nodes).await;
    let ttl = Duration::from_millis(300);
    let mut last = 0;
    let mut cycle = async |locks: &LockClient| {
        let guard = eventually("acquire", || locks.lock("f").ttl(ttl).acquire()).await;
        assert!(guard.fence() > last, "fence {} after {last}", guard.fence());
        last = guard.fence();
        guard.release().await.unwrap();
    };
    for _ in 0..20 {
        cycle(&locks).await;
    }
    // Node 0 forgets; node 1 goes down: the majority is {0 (empty), 2}.
    nodes[0].kill();
    sleep(ttl).await;
    nodes[0].start_again();
    nodes[1].kill();
    cycle(&locks).await;
    // Node 2 forgets too: every node of the majority {0, 2} restarted empty.
    nodes[0].kill();
    nodes[2].kill();
    sleep(ttl).await;
    nodes[0].start_again();
    nodes[2].start_again();
    cycle(&locks).await;
    cycle(&locks).await;
}

/// Nodes that answer with errors — a wrong password, a read-only replica —
/// count as not granting; they never crash an acquisition.
#[tokio::test]
async fn nodes_answering_errors_count_as_no() {
    let healthy = servers(3);
    let locked = RedisServer::builder()
        .arg("--requirepass")
        .arg("secret")
        .start();
    let replica = RedisServer::builder()
        .arg("--replicaof")
        .arg("127.0.0.1")
        .arg(healthy[0].port().to_string())
        .start();
    let mut all = urls(&healthy);
    all.push(locked.url());
    all.push(replica.url());
    let locks = LockClient::builder()
        .op_timeout(SECOND)
        .redlock(&all)
        .await
        .expect("a majority is usable");
    let guard = locks.lock("k").acquire().await.expect("3 of 5 grant");
    guard.release().await.unwrap();

    let two_healthy: Vec<String> = all[1..].to_vec();
    let locks = LockClient::redlock(&two_healthy)
        .await
        .expect("2 of 4 answer CONFIG");
    // Decided once the errors make a majority impossible, whichever
    // answers came first.
    match locks.lock("k").acquire().await {
        Err(LockError::NoQuorum {
            granted,
            unreachable,
            ..
        }) => {
            assert!(
                granted <= 2 && unreachable >= 1,
                "{granted} granted, {unreachable} failed"
            );
        }
        other => panic!("expected NoQuorum with 2 of 4, got {other:?}"),
    }
}

/// The fence chosen from one majority is written to it before the lock
/// counts: a counter far ahead on one node carries over to a majority that
/// no longer includes that node.
#[tokio::test]
async fn the_fence_is_committed_to_a_majority() {
    let mut nodes = servers(3);
    let locks = redlock(&nodes).await;
    // As if node 0 alone had seen a great many acquisitions.
    let ahead: u64 = 5_000_000_000_000_000;
    nodes[0].cli(&["SET", "soloist:fence:{c}", &ahead.to_string()]);
    nodes[2].kill(); // the majority is {0, 1}
    let first = locks.lock("c").acquire().await.unwrap();
    let first_fence = first.fence();
    assert!(first_fence > ahead);
    first.release().await.unwrap();
    nodes[2].start_again();
    nodes[0].kill(); // the majority is {1, 2}: only node 1 can know
    let second = eventually("acquire on {1, 2}", || locks.lock("c").acquire()).await;
    assert!(
        second.fence() > first_fence,
        "{} <= {first_fence}",
        second.fence()
    );
}

/// Releases counted since the last look (a snapshot resets the counts), as
/// `(released, lost)`.
fn releases(snapshotter: &Snapshotter) -> (u64, u64) {
    let snapshot = snapshotter.snapshot().into_vec();
    let count = |outcome: &str| {
        snapshot
            .iter()
            .find_map(|(key, _, _, value)| {
                let key = key.key();
                let labelled = key
                    .labels()
                    .any(|label| label.key() == "outcome" && label.value() == outcome);
                match value {
                    DebugValue::Counter(count) if key.name() == names::RELEASES && labelled => {
                        Some(*count)
                    }
                    _ => None,
                }
            })
            .unwrap_or(0)
    };
    (count("released"), count("lost"))
}

/// A release is a release only where it found the lease still ours: unless
/// a majority of the nodes released it, the lease was already lost, and
/// both the caller and the release metric hear so.
#[tokio::test]
async fn release_reports_lost_unless_a_majority_released() {
    // The test runs on one thread, so a recorder local to it sees every release.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let nodes = servers(3);
    let locks = redlock(&nodes).await;
    let key = "soloist:lock:{k}";
    // The nodes where the key is held: a majority at least, and perhaps the
    // third, whose grant the acquisition did not wait for. Asked after a
    // pause, so that such a grant has landed (or never will: one cut short
    // while it loaded the script).
    let settle = || tokio::time::sleep(Duration::from_millis(100));
    let holders = || -> Vec<usize> {
        (0..nodes.len())
            .filter(|&node| nodes[node].cli(&["EXISTS", key]) == "1")
            .collect()
    };
    let delete = |node: usize| nodes[node].cli(&["DEL", key]);

    // Gone from one node: a majority still held it, and released it.
    let guard = locks.lock("k").acquire().await.unwrap();
    settle().await;
    let held = holders();
    assert!(held.len() >= 2, "held on {held:?}");
    if held.len() == 3 {
        delete(held[2]);
    }
    guard.release().await.expect("a majority released");
    assert_eq!(releases(&snapshotter), (1, 0));

    // Gone from all but one: the node that still had it is no majority.
    let guard = locks.lock("k").acquire().await.unwrap();
    settle().await;
    let held = holders();
    let kept = held[0];
    for &node in &held[1..] {
        delete(node);
    }
    match guard.release().await {
        Err(LockError::Lost { key }) => assert_eq!(key, "k"),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert_eq!(releases(&snapshotter), (0, 1));
    assert!(holders().is_empty(), "the stale key on node {kept} stayed");

    // Lapsed on all but one node, and another owner took the other two: the
    // old holder's release deletes its stale key on the one, leaves the new
    // owner's keys alone, and reports the loss.
    let old = locks.lock("k").watchdog(false).acquire().await.unwrap();
    settle().await;
    let held = holders();
    let kept = held[0];
    for &node in &held[1..] {
        delete(node);
    }
    let others = redlock(&nodes).await;
    let new = others
        .lock("k")
        .acquire()
        .await
        .expect("a majority is free");
    settle().await;
    assert!(matches!(old.release().await, Err(LockError::Lost { .. })));
    assert_eq!(releases(&snapshotter), (0, 1));
    let taken: Vec<usize> = (0..nodes.len()).filter(|&node| node != kept).collect();
    assert_eq!(holders(), taken, "the new owner's keys, and only those");
    assert!(new.is_held());
    new.release().await.expect("the new owner releases");
    assert_eq!(releases(&snapshotter), (1, 0));
}
