//! What the client reports through the `metrics` facade. One test, because
//! the recorder is process-wide.

use std::time::Duration;

mod common;

use common::recorded::{counter, gauge, install, value};
use metrics_util::debugging::DebugValue;
use soloist::{LockClient, metrics as names};
use soloist_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_outcomes_and_eviction_risk() {
    let snapshot = install();

    // An eviction policy that can delete lock keys is flagged on connect.
    let lru = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("allkeys-lru")
        .start();
    LockClient::connect(&lru.url()).await.unwrap();
    assert_eq!(
        gauge(
            &snapshot(),
            names::UNSAFE_EVICTION_POLICY,
            &[("policy", "allkeys-lru")]
        ),
        Some(1.0)
    );
    let volatile = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("volatile-ttl")
        .start();
    LockClient::connect(&volatile.url()).await.unwrap();
    assert_eq!(
        gauge(
            &snapshot(),
            names::UNSAFE_EVICTION_POLICY,
            &[("policy", "volatile-ttl")]
        ),
        Some(1.0),
        "lock keys carry a ttl, so volatile policies evict them too"
    );
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    assert_eq!(
        gauge(
            &snapshot(),
            names::UNSAFE_EVICTION_POLICY,
            &[("policy", "noeviction")]
        ),
        Some(0.0)
    );

    let held = locks
        .lock("m")
        .ttl(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    assert!(locks.lock("m").acquire().await.is_err());
    assert!(
        locks
            .lock("m")
            .wait(Duration::from_millis(150))
            .acquire()
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(400)).await; // a renewal or two
    held.release().await.unwrap();
    let fixed = locks
        .lock("m")
        .ttl(Duration::from_millis(50))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    fixed.lost().await;
    // `lost` fires a drift margin early; let the server expire the key too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(fixed.release().await.is_err());

    let metrics = snapshot();
    for (outcome, expected) in [("acquired", 2), ("busy", 1), ("timeout", 1)] {
        assert_eq!(
            counter(&metrics, names::ACQUISITIONS, &[("outcome", outcome)]),
            expected,
            "acquisitions {outcome}"
        );
    }
    assert!(counter(&metrics, names::RENEWALS, &[("outcome", "renewed")]) >= 1);
    assert!(counter(&metrics, names::RENEWAL_CALLS, &[]) >= 1);
    assert_eq!(counter(&metrics, names::LOST, &[]), 1);
    assert_eq!(
        counter(&metrics, names::RELEASES, &[("outcome", "released")]),
        1
    );
    assert_eq!(
        counter(&metrics, names::RELEASES, &[("outcome", "lost")]),
        1
    );
    assert!(matches!(
        value(&metrics, names::WAIT_SECONDS, &[("outcome", "timeout")]),
        Some(DebugValue::Histogram(samples)) if samples.len() == 1
            && samples[0].into_inner() >= 0.15
    ));
}
