//! What semaphores and rate limits report through the `metrics` facade:
//! permits held, waiters, denials and waits. One test, because the
//! recorder is process-wide.

use std::time::Duration;

mod common;

use common::recorded::{counter, gauge, install, value};
use metrics_util::debugging::DebugValue;
use soloist::{LockClient, metrics as names};
use soloist_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_report_holders_waiters_denials_and_waits() {
    let snapshot = install();
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let name = [("name", "pool")];

    let held = locks.semaphore("pool", 1).acquire().await.unwrap();
    assert!(locks.semaphore("pool", 1).acquire().await.is_err());
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move {
            locks
                .semaphore("pool", 1)
                .wait(Duration::from_secs(5))
                .acquire()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = snapshot();
    assert_eq!(gauge(&during, names::PERMITS_HELD, &name), Some(1.0));
    assert_eq!(gauge(&during, names::PERMIT_WAITERS, &name), Some(1.0));
    assert_eq!(
        counter(&during, names::PERMIT_ACQUISITIONS, &[("outcome", "busy")]),
        1,
        "the denial"
    );
    held.release().await.unwrap();
    let next = waiter.await.unwrap().unwrap();
    next.release().await.unwrap();
    // Each snapshot resets what it read: the gauges' changes since the
    // first one bring them back to zero.
    let after = snapshot();
    for gauge_name in [names::PERMITS_HELD, names::PERMIT_WAITERS] {
        let total = gauge(&during, gauge_name, &name).unwrap_or(0.0)
            + gauge(&after, gauge_name, &name).unwrap_or(0.0);
        assert_eq!(total, 0.0, "{gauge_name} after every permit came back");
    }
    let acquired = [("outcome", "acquired")];
    assert_eq!(counter(&during, names::PERMIT_ACQUISITIONS, &acquired), 1);
    assert_eq!(counter(&after, names::PERMIT_ACQUISITIONS, &acquired), 1);

    let limit = locks.rate_limit("api", 10, Duration::from_secs(1));
    limit.wait(Duration::from_secs(1)).await.unwrap();
    limit.wait(Duration::from_secs(1)).await.unwrap();
    let rated = snapshot();
    assert_eq!(
        counter(&rated, names::RATE_CHECKS, &[("outcome", "admitted")]),
        2
    );
    assert!(counter(&rated, names::RATE_CHECKS, &[("outcome", "limited")]) >= 1);
    assert!(matches!(
        value(&rated, names::RATE_WAIT_SECONDS, &[]),
        Some(DebugValue::Histogram(waits)) if waits.len() == 2
    ));
}
