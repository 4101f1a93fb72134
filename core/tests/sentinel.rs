//! Locks on a Sentinel-managed primary (a primary, a replica, three
//! sentinels, all real processes): the client follows the primary through
//! a crash failover and through a manual one that demotes a live primary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use soloist::{Deployment, LockClient, LockError};
use soloist_testkit::SentinelGroup;

const SECOND: Duration = Duration::from_secs(1);

async fn connect(group: &SentinelGroup) -> LockClient {
    LockClient::builder()
        .op_timeout(Duration::from_millis(500))
        .open(Deployment::sentinel(
            group.sentinel_urls(),
            group.master_name(),
        ))
        .await
        .expect("connect through the sentinels")
}

/// Takes `key` in a loop, recording when each acquisition succeeded and
/// its fence, until `stop` is set.
fn churn(
    locks: LockClient,
    key: &'static str,
    log: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match locks.lock(key).ttl(SECOND).acquire().await {
                Ok(guard) => {
                    log.lock().unwrap().push((Instant::now(), guard.fence()));
                    let _ = guard.release().await;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_follow_the_primary_through_a_crash() {
    let mut group = SentinelGroup::start("jobs");
    let locks = connect(&group).await;
    let log: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = churn(locks.clone(), "k", log.clone(), stop.clone());
    tokio::time::sleep(SECOND).await;
    assert!(
        !log.lock().unwrap().is_empty(),
        "acquisitions before the crash"
    );

    let took = tokio::task::block_in_place(|| group.kill_primary_and_wait_failover());
    let promoted = Instant::now();
    // Acquisitions resume within a few seconds of the promotion.
    let deadline = promoted + 5 * SECOND;
    loop {
        if log
            .lock()
            .unwrap()
            .last()
            .is_some_and(|(at, _)| *at > promoted)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no acquisition within 5 s of the promotion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = promoted.elapsed();
    tokio::time::sleep(SECOND).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    let fences: Vec<u64> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, fence)| *fence)
        .collect();
    eprintln!(
        "failover took {took:?}; acquisitions resumed {resumed:?} after it; {} in all",
        fences.len()
    );
    assert!(
        fences.windows(2).all(|pair| pair[0] < pair[1]),
        "fences keep rising across the failover"
    );

    // Waiting works on the new primary: a release wakes the waiter.
    let holder = locks.lock("w").acquire().await.unwrap();
    let waiter = {
        let other = connect(&group).await;
        tokio::spawn(async move { other.lock("w").wait(10 * SECOND).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let woken = waiter.await.unwrap().expect("the waiter took the lock");
    assert!(woken.is_held());
    assert!(
        released.elapsed() < 2 * SECOND,
        "woken, not polling: {:?}",
        released.elapsed()
    );
}

/// A manual failover (`SENTINEL FAILOVER`) demotes a live primary: the
/// connection the client holds now reaches a replica, which answers writes
/// with `READONLY`. The client moves to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_is_left_for_the_new_one() {
    let group = SentinelGroup::start("jobs");
    let locks = connect(&group).await;
    let first = locks.lock("d").acquire().await.unwrap();
    let fence = first.fence();
    first.release().await.unwrap();
    let old = group.current_primary_port();
    assert_eq!(
        group.sentinels()[0].cli(&["SENTINEL", "FAILOVER", "jobs"]),
        "OK"
    );
    let deadline = Instant::now() + 30 * SECOND;
    // Until the old primary is told to replicate, both nodes are primaries
    // (Redis' own split-brain window); the test starts after it.
    while group.current_primary_port() == old
        || group.replica().cli(&["ROLE"]).lines().next() != Some("master")
        || group.primary().cli(&["ROLE"]).lines().next() != Some("slave")
    {
        assert!(
            Instant::now() < deadline,
            "the manual failover did not happen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + 10 * SECOND;
    let guard = loop {
        match locks.lock("d").acquire().await {
            Ok(guard) => break guard,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "still failing 10 s after the failover: {err}"
                );
                assert!(
                    matches!(
                        err,
                        LockError::Connection { .. }
                            | LockError::Unresponsive { .. }
                            | LockError::Protocol(_)
                    ),
                    "{err:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(guard.fence() > fence, "fences rise on the new primary");
    assert_eq!(
        group.replica().cli(&["EXISTS", "soloist:lock:{d}"]),
        "1",
        "the key is on the promoted node"
    );
}

#[tokio::test]
async fn sentinel_settings_are_checked_by_name() {
    let cases = [
        (
            Deployment::sentinel(Vec::<String>::new(), "jobs"),
            "sentinels",
        ),
        (Deployment::sentinel(["redis://127.0.0.1:1"], ""), "master"),
        (Deployment::sentinel(["not a url"], "jobs"), "sentinels"),
    ];
    for (redis, expected) in cases {
        match LockClient::builder().open(redis.clone()).await {
            Err(LockError::InvalidArgument { name, .. }) => assert_eq!(name, expected, "{redis:?}"),
            other => panic!("expected InvalidArgument({expected}), got {other:?}"),
        }
    }
}

/// A stream source takes the same description and reaches the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_source_through_the_sentinels() {
    use soloist::Source;
    let group = SentinelGroup::start("jobs");
    let source = soloist::StreamSource::builder("orders")
        .block(Duration::from_millis(100))
        .open(Deployment::sentinel(
            group.sentinel_urls(),
            group.master_name(),
        ))
        .await
        .expect("a stream source through the sentinels");
    source
        .enqueue("charge", "k", b"1".to_vec())
        .await
        .expect("enqueue");
    let deliveries = source.receive(10).await.expect("receive");
    assert_eq!(deliveries.len(), 1);
    source.ack(&deliveries[0]).await.expect("ack");
    assert_eq!(group.primary().cli(&["XLEN", "orders"]), "1");
}
