//! `min_replicas`: a lock write counts only once a replica acknowledged it.

use std::time::Duration;

use soloist::{LockClient, LockError};
use soloist_testkit::{RedisServer, ReplicaSet};
use tokio::time::{Instant, sleep, timeout};

/// Generous: on a loaded machine a live replica can take a while to answer.
const WAIT: Duration = Duration::from_millis(1500);

async fn connect(set: &ReplicaSet) -> LockClient {
    LockClient::builder()
        .op_timeout(Duration::from_secs(5))
        .min_replicas(1, WAIT)
        .connect(&set.primary().url())
        .await
        .expect("connect")
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.cli(&["EXISTS", &format!("soloist:lock:{{{key}}}")]) == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquired_key_is_on_the_replica() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    for round in 0..20 {
        let key = format!("orders:{round}");
        let guard = locks.lock(&key).acquire().await.expect("acquire");
        assert!(exists(set.replica(), &key), "{key} not on the replica");
        guard.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_waits_for_a_slow_replica() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    let lag = Duration::from_millis(200);
    set.replica().pause_for(lag);
    let started = Instant::now();
    let acquired = locks.lock("slow").acquire().await;
    let took = started.elapsed();
    let guard = acquired.expect("acquire once the replica resumed");
    assert!(
        took >= lag,
        "acquired after {took:?}, before the replica resumed"
    );
    assert!(exists(set.replica(), "slow"));
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_acquisition_fails_and_gives_the_key_back() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    set.replica().pause();
    let started = Instant::now();
    let outcome = locks
        .lock("payouts")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await;
    let took = started.elapsed();
    match outcome {
        Err(LockError::ReplicasUnconfirmed {
            key,
            wanted,
            acknowledged,
        }) => {
            assert_eq!((key.as_str(), wanted, acknowledged), ("payouts", 1, 0));
        }
        other => panic!("expected ReplicasUnconfirmed, got {other:?}"),
    }
    assert!(took >= WAIT && took < WAIT * 4, "failed after {took:?}");
    assert!(
        !exists(set.primary(), "payouts"),
        "key left held on the primary"
    );
    set.replica().resume();
    // With the replica back (and caught up, which a loaded machine may
    // take a moment for) the same client takes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let guard = loop {
        match locks.lock("payouts").acquire().await {
            Ok(guard) => break guard,
            Err(LockError::ReplicasUnconfirmed { .. }) if Instant::now() < deadline => {}
            Err(err) => panic!("acquire after the replica resumed: {err:?}"),
        }
    };
    assert!(exists(set.replica(), "payouts"));
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_renewals_do_not_move_the_deadline() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    let ttl = Duration::from_millis(4000);
    let acquired_at = Instant::now();
    let guard = locks
        .lock("report")
        .ttl(ttl)
        .acquire()
        .await
        .expect("acquire");
    set.replica().pause();
    // The primary accepts every renewal, but none is acknowledged: the
    // lease must end by the deadline the acquisition set.
    timeout(ttl * 3, guard.lost())
        .await
        .expect("lost fired while renewals went unacknowledged");
    let lost_after = acquired_at.elapsed();
    assert!(
        lost_after <= ttl,
        "lost fired {lost_after:?} after acquiring"
    );
    assert!(!guard.is_held());
    set.replica().resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_extension_fails_and_does_not_move_the_deadline() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    let ttl = Duration::from_millis(4000);
    let acquired_at = Instant::now();
    let guard = locks
        .lock("extended")
        .ttl(ttl)
        .acquire()
        .await
        .expect("acquire");
    set.replica().pause();
    // Watched beside the extension: a `WAIT` holds its connection, so the
    // extension may answer only after the deadline.
    let lease = guard.lease();
    let lost = tokio::spawn(async move {
        lease.lost().await;
        acquired_at.elapsed()
    });
    match guard.extend(Duration::from_secs(60)).await {
        Err(LockError::ReplicasUnconfirmed {
            key,
            wanted,
            acknowledged,
        }) => {
            assert_eq!((key.as_str(), wanted, acknowledged), ("extended", 1, 0));
        }
        other => panic!("expected ReplicasUnconfirmed, got {other:?}"),
    }
    let lost_after = timeout(ttl * 3, lost)
        .await
        .expect("lost fired after an unacknowledged extension")
        .expect("lost task");
    assert!(
        lost_after <= ttl,
        "lost fired {lost_after:?} after acquiring"
    );
    set.replica().resume();
}

/// The script and `WAIT` share a pipeline, where Redis does not load a
/// missing script by itself: one flushed (a restart, `SCRIPT FLUSH`) is
/// loaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_is_loaded_again() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    let guard = locks
        .lock("flushed")
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(set.primary().cli(&["SCRIPT", "FLUSH"]), "OK");
    // The watchdog's next renewal (EXTEND) finds its script gone.
    sleep(Duration::from_millis(1500)).await;
    assert!(guard.is_held(), "renewal failed after SCRIPT FLUSH");
    guard.release().await.expect("release");
    assert_eq!(set.primary().cli(&["SCRIPT", "FLUSH"]), "OK");
    let guard = locks
        .lock("flushed")
        .acquire()
        .await
        .expect("acquire after SCRIPT FLUSH");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn extreme_values_are_refused_by_name() {
    let url = "redis://127.0.0.1:1";
    let cases = [
        (65, WAIT, "min_replicas"),
        (u32::MAX, WAIT, "min_replicas"),
        (1, Duration::ZERO, "min_replicas timeout"),
        (1, Duration::from_micros(999), "min_replicas timeout"),
        (1, Duration::from_secs(2), "min_replicas timeout"),
        (1, Duration::MAX, "min_replicas timeout"),
    ];
    for (n, wait, name) in cases {
        match LockClient::builder()
            .min_replicas(n, wait)
            .connect(url)
            .await
        {
            Err(LockError::InvalidArgument { name: got, .. }) => {
                assert_eq!(got, name, "min_replicas({n}, {wait:?})");
            }
            other => panic!("min_replicas({n}, {wait:?}): expected InvalidArgument, got {other:?}"),
        }
    }
    // Longer than 1 min is refused even under a longer op_timeout.
    let long = LockClient::builder()
        .op_timeout(Duration::from_secs(3600))
        .min_replicas(1, Duration::from_secs(61))
        .connect(url)
        .await;
    assert!(matches!(
        long,
        Err(LockError::InvalidArgument {
            name: "min_replicas timeout",
            ..
        })
    ));
    let redlock = LockClient::builder()
        .min_replicas(1, WAIT)
        .redlock([url, "redis://127.0.0.1:2", "redis://127.0.0.1:3"])
        .await;
    assert!(matches!(
        redlock,
        Err(LockError::InvalidArgument {
            name: "min_replicas",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_replicas_is_no_check() {
    // A server without replicas: with the check on nothing could be taken.
    let server = RedisServer::start();
    let locks = LockClient::builder()
        .min_replicas(0, Duration::ZERO)
        .connect(&server.url())
        .await
        .expect("connect");
    let guard = locks.lock("alone").acquire().await.expect("acquire");
    guard.release().await.expect("release");
}

/// A batch claim waits for the replica as a single acquisition does, in
/// the same pipeline, loading its script again after `SCRIPT FLUSH`; one
/// the replica did not acknowledge fails and gives its keys back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claim_waits_for_the_replica() {
    let set = ReplicaSet::start();
    let locks = connect(&set).await;
    assert_eq!(set.primary().cli(&["SCRIPT", "FLUSH"]), "OK");
    let claims = [soloist::Claim::new("b1"), soloist::Claim::new("b2")];
    for claimed in locks.claim_all(&claims).await.expect("claim") {
        let soloist::Claimed::Acquired { guard, .. } = claimed else {
            panic!("{claimed:?}")
        };
        assert!(exists(set.replica(), guard.key()));
        guard.release().await.expect("release");
    }
    set.replica().pause();
    match locks.claim_all(&claims).await {
        Err(LockError::ReplicasUnconfirmed { wanted: 1, .. }) => {}
        other => panic!("expected ReplicasUnconfirmed, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while exists(set.primary(), "b1") || exists(set.primary(), "b2") {
        assert!(Instant::now() < deadline, "keys left held on the primary");
        sleep(Duration::from_millis(20)).await;
    }
    set.replica().resume();
}
