//! What the client reports through the `metrics` facade. One test, because
//! the recorder is process-wide.

use std::time::Duration;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use soloist::{LockClient, metrics as names};
use soloist_testkit::RedisServer;

/// Metric values at one instant; taking a snapshot resets the recorder's values.
type Snapshot = Vec<(CompositeKey, DebugValue)>;

fn value<'s>(
    snapshot: &'s Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'s DebugValue> {
    snapshot
        .iter()
        .find(|(key, _)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(label, wanted)| {
                    key.labels()
                        .any(|l| l.key() == *label && l.value() == *wanted)
                })
        })
        .map(|(_, value)| value)
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(count)) => *count,
        None => 0,
        Some(other) => panic!("{name} is not a counter: {other:?}"),
    }
}

fn gauge(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match value(snapshot, name, labels) {
        Some(DebugValue::Gauge(gauge)) => Some(gauge.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_outcomes_and_eviction_risk() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install the recorder");
    let snapshot = || -> Snapshot {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key, value))
            .collect()
    };

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
