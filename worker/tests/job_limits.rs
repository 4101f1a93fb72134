//! Fleet-wide limits on jobs against real Redis: `concurrency = N` lets a
//! key run N times at once across several workers, never more, with
//! dedupe still per key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use soloist::{JobContext, JobSpec, KeyedJob, LockClient, RunOutcome, WorkerHandle, keyed_job};
use soloist_testkit::RedisServer;

mod common;

use common::handle;

const SECOND: Duration = Duration::from_secs(1);

/// A job that counts how many of its runs are inside at once.
fn counted_job(
    spec: JobSpec,
    inside: Arc<AtomicU32>,
    most: Arc<AtomicU32>,
    takes: Duration,
) -> impl KeyedJob<Args = String, Output = u64> {
    keyed_job(
        spec,
        |merchant: &String| format!("merchant:{merchant}"),
        move |ctx: JobContext, _merchant: String| {
            let (inside, most) = (inside.clone(), most.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(takes).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(ctx.fence())
            }
        },
    )
}

async fn three_workers(server: &RedisServer) -> Vec<WorkerHandle> {
    let mut handles = Vec::new();
    for replica in ["a", "b", "c"] {
        let locks = LockClient::connect(&server.url()).await.unwrap();
        handles.push(handle(locks, replica));
    }
    handles
}

/// Nine requests for one key on three workers, three permits: every run
/// completes, never more than three at once, and three do run together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_at_most_n_times_at_once_across_workers() {
    let server = RedisServer::start();
    let workers = three_workers(&server).await;
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let spec = JobSpec::keyed("charge", "merchant:{merchant}")
        .unwrap()
        .concurrency(3)
        .wait(20 * SECOND);
    let job = counted_job(spec, inside, most.clone(), Duration::from_millis(300));
    let runs = (0..9).map(|n| {
        let (worker, job) = (&workers[n % 3], &job);
        async move { worker.run(job, "m7".to_owned()).await.unwrap() }
    });
    let outcomes = futures::future::join_all(runs).await;
    let mut fences: Vec<u64> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            RunOutcome::Completed(fence) => fence,
            other => panic!("expected Completed, got {other:?}"),
        })
        .collect();
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "at most and at least 3 at once"
    );
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), 9, "each run has a fence of its own");
    assert_eq!(
        server.cli(&["KEYS", "soloist:sem:*"]),
        "",
        "a permit left held"
    );
}

/// Without waiting, a fourth request while three run is `Busy`; another
/// key has permits of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_busy_and_keys_are_apart() {
    let server = RedisServer::start();
    let workers = three_workers(&server).await;
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let spec = JobSpec::keyed("charge", "merchant:{merchant}")
        .unwrap()
        .concurrency(3);
    let job = counted_job(spec, inside.clone(), most, Duration::from_millis(500));
    let running = futures::future::join_all(
        workers
            .iter()
            .map(|worker| async { worker.run(&job, "m1".to_owned()).await.unwrap() }),
    );
    let others = async {
        common_until(|| inside.load(Ordering::SeqCst) == 3).await;
        assert!(matches!(
            workers[0].run(&job, "m1".to_owned()).await.unwrap(),
            RunOutcome::Busy
        ));
        assert!(matches!(
            workers[1].run(&job, "m2".to_owned()).await.unwrap(),
            RunOutcome::Completed(_)
        ));
    };
    let (outcomes, ()) = tokio::join!(running, others);
    for outcome in outcomes {
        assert!(matches!(outcome, RunOutcome::Completed(_)));
    }
}

/// With dedupe, a success recorded for the key makes later requests
/// duplicates, on every worker, though the key may run three at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_still_holds_per_key() {
    let server = RedisServer::start();
    let workers = three_workers(&server).await;
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let spec = JobSpec::keyed("charge", "merchant:{merchant}")
        .unwrap()
        .concurrency(3)
        .dedupe(60 * SECOND);
    let job = counted_job(spec, inside, most, Duration::from_millis(10));
    let RunOutcome::Completed(fence) = workers[0].run(&job, "m9".to_owned()).await.unwrap() else {
        panic!("the first run completes");
    };
    for worker in &workers {
        match worker.run(&job, "m9".to_owned()).await.unwrap() {
            RunOutcome::Duplicate(recorded) => assert_eq!(recorded, fence),
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
}

/// A concurrency of 0 or past the most permits is refused when the job is
/// run, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_concurrency_is_refused() {
    let worker = handle(LockClient::memory(), "a");
    for permits in [0, soloist::MAX_PERMITS + 1] {
        let spec = JobSpec::keyed("charge", "merchant:{merchant}")
            .unwrap()
            .concurrency(permits);
        let job = counted_job(spec, Arc::default(), Arc::default(), Duration::ZERO);
        let err = worker.run(job, "m".to_owned()).await.unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
    }
}

async fn common_until(check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
