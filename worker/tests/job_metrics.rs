//! What the worker reports through the `metrics` facade. One test, because
//! the recorder is process-wide.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use soloist::{JobContext, JobSpec, LockClient, RunOutcome, Worker, keyed_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_counted_by_outcome_and_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install the recorder");

    let job = keyed_job(
        JobSpec::keyed("charge", "k:{n}")
            .unwrap()
            .dedupe(Duration::from_secs(60)),
        |n: &u32| format!("k:{n}"),
        |_ctx: JobContext, n: u32| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if n == 0 {
                return Err(std::io::Error::other("zero"));
            }
            Ok(n)
        },
    );
    let handle = Worker::builder(LockClient::memory())
        .build()
        .unwrap()
        .handle();
    assert!(matches!(
        handle.run(&job, 1).await.unwrap(),
        RunOutcome::Completed(1)
    ));
    assert!(matches!(
        handle.run(&job, 1).await.unwrap(),
        RunOutcome::Duplicate(1)
    ));
    let (first, second) = tokio::join!(handle.run(&job, 2), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        handle.run(&job, 2).await
    });
    assert!(matches!(first.unwrap(), RunOutcome::Completed(2)));
    assert!(matches!(second.unwrap(), RunOutcome::Busy));
    assert!(matches!(
        handle.run(&job, 0).await.unwrap(),
        RunOutcome::Failed(_)
    ));

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |outcome: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                let key = key.key();
                key.name() == soloist::worker_metrics::RUNS
                    && key
                        .labels()
                        .any(|l| l.key() == "job" && l.value() == "charge")
                    && key
                        .labels()
                        .any(|l| l.key() == "outcome" && l.value() == outcome)
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(count) => *count,
                other => panic!("not a counter: {other:?}"),
            })
            .unwrap_or(0)
    };
    for (outcome, expected) in [
        ("success", 2),
        ("duplicate", 1),
        ("busy", 1),
        ("failure", 1),
    ] {
        assert_eq!(counter(outcome), expected, "runs with outcome {outcome}");
    }
    let durations = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == soloist::worker_metrics::RUN_SECONDS)
        .map(|(.., value)| match value {
            DebugValue::Histogram(samples) => samples.len(),
            other => panic!("not a histogram: {other:?}"),
        });
    assert_eq!(durations, Some(3), "one duration per run that ran the body");
}
