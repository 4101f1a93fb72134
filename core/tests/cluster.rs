//! Locks on a real Redis Cluster (three primaries, a replica each): the key
//! layout keeps each lock in its key's slot, requests that would need two
//! slots in one script are refused before anything is written, renewals
//! cost one call per slot, and exclusion and fencing hold through a
//! failover and a slot migration. The lock semantics suite runs on a
//! cluster too (`lock_semantics.rs`, the `cluster` backend).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use soloist::{Deployment, LockClient, LockError, colocated, hash_slot, redis};
use soloist_testkit::RedisCluster;

use common::command_calls;

const SECOND: Duration = Duration::from_secs(1);

async fn connect(cluster: &RedisCluster) -> LockClient {
    LockClient::cluster(cluster.urls())
        .await
        .expect("connect to the cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lock_lives_in_its_keys_slot() {
    let cluster = RedisCluster::start();
    let locks = connect(&cluster).await;
    for key in ["orders:42", "{report}:monday", "payouts"] {
        let guard = locks.lock(key).acquire().await.expect("acquire");
        let owner = cluster.primary_for_slot(hash_slot(key));
        let name = if key.contains('{') {
            format!("soloist:lock:={key}")
        } else {
            format!("soloist:lock:{{{key}}}")
        };
        assert_eq!(
            owner.cli(&["EXISTS", &name]),
            "1",
            "{name} on its slot's owner"
        );
        assert!(
            locks
                .fenced_set(key, guard.fence(), b"v")
                .await
                .unwrap()
                .is_accepted()
        );
        guard.release().await.expect("release");
        assert_eq!(owner.cli(&["EXISTS", &name]), "0");
    }
    // A counter shared by keys with one hash tag.
    let monday = locks
        .lock("{report}:monday")
        .fence_counter("{report}")
        .acquire()
        .await
        .unwrap();
    let first = monday.fence();
    monday.release().await.unwrap();
    let tuesday = locks
        .lock("{report}:tuesday")
        .fence_counter("{report}")
        .acquire()
        .await
        .unwrap();
    assert!(tuesday.fence() > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_slot_requests_are_refused_before_anything_is_written() {
    let cluster = RedisCluster::start();
    let locks = connect(&cluster).await;
    assert_ne!(hash_slot("report:monday"), hash_slot("report"));
    match locks
        .lock("report:monday")
        .fence_counter("report")
        .acquire()
        .await
    {
        Err(LockError::InvalidArgument {
            name: "fence_counter",
            reason,
        }) => assert!(reason.contains("hash tag"), "{reason}"),
        other => panic!("expected InvalidArgument(fence_counter), got {other:?}"),
    }
    assert_eq!(
        cluster.cli(&["EXISTS", "soloist:lock:{report:monday}"]),
        "0",
        "the refused request took nothing"
    );

    let guard = locks.lock("invoice:7").acquire().await.unwrap();
    // A record in another slot than its lock.
    let err = guard
        .commit("receipt:7", "paid", None, &[])
        .await
        .expect_err("a record outside the lock's slot");
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                name: "resource",
                ..
            }
        ),
        "{err:?}"
    );
    // An effect on a key in another slot: nothing is written, not even the record.
    let mut elsewhere = redis::cmd("INCRBY");
    elsewhere.arg("balances").arg(10);
    let err = guard
        .commit("invoice:7", "paid", None, &[elsewhere])
        .await
        .expect_err("an effect outside the lock's slot");
    match err {
        LockError::InvalidArgument {
            name: "effects",
            reason,
        } => assert!(reason.contains("`balances`"), "{reason}"),
        other => panic!("expected InvalidArgument(effects), got {other:?}"),
    }
    assert_eq!(locks.fenced_get("invoice:7").await.unwrap(), None);
    assert_eq!(cluster.cli(&["GET", "balances"]), "");

    // Effects on keys that share the lock's slot apply with the record.
    let beside = colocated("invoice:7", ":balance").unwrap();
    let mut charge = redis::cmd("INCRBY");
    charge.arg(&beside).arg(10);
    let mut log = redis::cmd("RPUSH");
    log.arg(colocated("invoice:7", ":log").unwrap())
        .arg("charged");
    assert!(
        guard
            .commit("invoice:7", "paid", None, &[charge, log])
            .await
            .expect("commit")
            .is_accepted()
    );
    assert_eq!(cluster.cli(&["GET", &beside]), "10");
    guard.release().await.unwrap();
}

/// 40 leases whose keys share one hash tag are renewed by one call per
/// period on their slot's owner, not one call per lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_cost_one_call_per_slot() {
    let cluster = RedisCluster::start();
    let locks = connect(&cluster).await;
    let ttl = Duration::from_millis(600);
    let mut guards = Vec::new();
    for n in 0..40 {
        guards.push(
            locks
                .lock(format!("{{batch}}:{n}"))
                .ttl(ttl)
                .acquire()
                .await
                .unwrap(),
        );
    }
    let owner = cluster.primary_for_slot(hash_slot("batch"));
    let before = command_calls(owner, "evalsha");
    let held = 3 * SECOND;
    tokio::time::sleep(held).await;
    let calls = command_calls(owner, "evalsha") - before;
    // One renewal every third of the ttl: 15 periods, with room for a
    // loaded machine's late timer; one call per lease would be 600.
    assert!(
        (5..=30).contains(&calls),
        "{calls} renewal calls in {held:?}"
    );
    for guard in guards {
        assert!(guard.is_held());
        guard.release().await.unwrap();
    }
}

/// Clients on three tasks each take keys in turn while a primary is
/// killed (its replica promoted) and a slot is migrated: no key is ever
/// held by two at once, and each key's fences keep rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_and_fences_through_failover_and_migration() {
    let mut cluster = RedisCluster::start();
    let clients = [
        connect(&cluster).await,
        connect(&cluster).await,
        connect(&cluster).await,
    ];
    let keys: Vec<String> = (0..6).map(|n| format!("account:{n}")).collect();
    let inside: Arc<HashMap<String, AtomicUsize>> = Arc::new(
        keys.iter()
            .map(|key| (key.clone(), AtomicUsize::new(0)))
            .collect(),
    );
    let fences: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (n, locks) in clients.iter().cycle().take(9).enumerate() {
        let (locks, keys, inside, fences, overlaps, stop) = (
            locks.clone(),
            keys.clone(),
            inside.clone(),
            fences.clone(),
            overlaps.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut taken = 0;
            let mut round = n;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let key = &keys[round % keys.len()];
                // A short lease: a holder cut off by the failover gives
                // up (its lost signal) before the promoted replica, which
                // may not have its key, can hand the key to another.
                let Ok(guard) = locks.lock(key).ttl(SECOND).acquire().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if inside[key].fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                fences
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(guard.fence());
                tokio::select! {
                    () = guard.lost() => {}
                    () = tokio::time::sleep(Duration::from_millis(30)) => {}
                }
                inside[key].fetch_sub(1, Ordering::SeqCst);
                let _ = guard.release().await;
                taken += 1;
            }
            taken
        }));
    }
    tokio::time::sleep(SECOND).await;
    let failover = tokio::task::block_in_place(|| cluster.kill_primary_of(hash_slot("account:0")));
    tokio::time::sleep(SECOND).await;
    let slot = hash_slot("account:1");
    let to = cluster.other_primary(slot);
    let moved = tokio::task::block_in_place(|| cluster.migrate_slot(slot, to));
    tokio::time::sleep(SECOND).await;
    stop.store(true, Ordering::Relaxed);
    let mut taken = 0;
    for task in tasks {
        taken += task.await.unwrap();
    }
    eprintln!(
        "{taken} acquisitions; failover took {:?}; {moved} keys moved with slot {slot}",
        failover.elapsed
    );
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    for (key, seen) in fences.lock().unwrap().iter() {
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "{key}: fences {seen:?} do not rise"
        );
        assert!(seen.len() > 5, "{key} taken only {} times", seen.len());
    }
    // After the faults every key can be taken again.
    for key in &keys {
        clients[0]
            .lock(key)
            .wait(10 * SECOND)
            .acquire()
            .await
            .expect("acquire after the faults")
            .release()
            .await
            .unwrap();
    }
}

/// Over TLS with a private CA, with replica acknowledgement: each
/// acquisition's `WAIT` runs on its key's primary, and a shard whose
/// replica is frozen refuses acquisitions with the distinct error, leaving
/// no key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_replica_acknowledgement() {
    let cluster = RedisCluster::builder().tls().start();
    let redis = Deployment::cluster(cluster.tls_urls())
        .tls_root_certificate(cluster.certificates().ca_pem());
    let locks = LockClient::builder()
        .min_replicas(1, Duration::from_millis(300))
        .open(redis)
        .await
        .expect("connect over TLS");
    for n in 0..8 {
        locks
            .lock(format!("orders:{n}"))
            .acquire()
            .await
            .expect("acknowledged by the key's replica")
            .release()
            .await
            .unwrap();
    }
    let key = "orders:frozen";
    let primary = cluster.primary_for_slot(hash_slot(key));
    // Replicas of a TLS cluster replicate over the TLS port.
    let tls_url = primary.tls_url();
    let port = tls_url.rsplit(':').next().expect("a port");
    let replica = cluster
        .replicas()
        .into_iter()
        .find(|replica| replica.cli(&["ROLE"]).lines().nth(2) == Some(port))
        .expect("the primary's replica");
    replica.pause();
    let refused = locks.lock(key).acquire().await;
    replica.resume();
    match refused {
        Err(LockError::ReplicasUnconfirmed { wanted: 1, .. }) => {}
        other => panic!("expected ReplicasUnconfirmed, got {other:?}"),
    }
    assert_eq!(
        primary.cli(&["EXISTS", "soloist:lock:{orders:frozen}"]),
        "0"
    );
}
