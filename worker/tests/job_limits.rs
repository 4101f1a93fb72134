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

/// Five workers submitting as fast as they can for 10 s against a job of
/// `rate = "50/1s"`: the starts in any 1-s window, as the bodies record
/// them, are at most 50, and close to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_workers_stay_under_a_rate_and_close_to_it() {
    let server = RedisServer::start();
    let mut workers = Vec::new();
    for replica in ["a", "b", "c", "d", "e"] {
        let locks = LockClient::connect(&server.url()).await.unwrap();
        workers.push(handle(locks, replica));
    }
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spec = JobSpec::keyed("partner", "call:{n}")
        .unwrap()
        .rate(50, SECOND);
    let job = keyed_job(spec, |n: &u64| format!("call:{n}"), {
        let starts = starts.clone();
        move |_: JobContext, _n: u64| {
            starts.lock().unwrap().push(tokio::time::Instant::now());
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let next = AtomicU32::new(0);
    let until = tokio::time::Instant::now() + 10 * SECOND;
    let submitters = workers.iter().flat_map(|worker| {
        (0..4).map(|_| async {
            while tokio::time::Instant::now() < until {
                let n = u64::from(next.fetch_add(1, Ordering::SeqCst));
                let outcome = worker.run(&job, n).await.unwrap();
                assert!(matches!(outcome, RunOutcome::Completed(())), "{outcome:?}");
            }
        })
    });
    futures::future::join_all(submitters).await;
    let mut starts = starts.lock().unwrap().clone();
    starts.sort_unstable();
    let (mut most, mut first) = (0, 0);
    for (last, at) in starts.iter().enumerate() {
        while *at - starts[first] >= SECOND {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    println!(
        "{} starts in 10 s; at most {most} in any 1-s window",
        starts.len()
    );
    assert!(most <= 50, "{most} starts in one second");
    assert!(most >= 40, "only {most} starts in the busiest second");
    assert!(starts.len() >= 400, "only {} starts in 10 s", starts.len());
}

/// With `OverRate::Reschedule` a run over the limit starts nothing and says
/// when to ask again; the key is free meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_a_run_is_handed_back() {
    let server = RedisServer::start();
    let worker = handle(LockClient::connect(&server.url()).await.unwrap(), "a");
    let ran = Arc::new(AtomicU32::new(0));
    let spec = JobSpec::keyed("partner", "call:{n}")
        .unwrap()
        .rate(1, 10 * SECOND)
        .over_rate(soloist::OverRate::Reschedule);
    let job = keyed_job(spec, |n: &u64| format!("call:{n}"), {
        let ran = ran.clone();
        move |_: JobContext, _n: u64| {
            ran.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    assert!(matches!(
        worker.run(&job, 1).await.unwrap(),
        RunOutcome::Completed(())
    ));
    match worker.run(&job, 2).await.unwrap() {
        RunOutcome::RateLimited { retry_after } => {
            assert!(
                retry_after > 9 * SECOND && retry_after <= 10 * SECOND,
                "{retry_after:?}"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        server.cli(&["EXISTS", "soloist:lock:{job:partner:call:2}"]),
        "0"
    );
    // The limit's one key expires with its interval.
    let ttl: i64 = server
        .cli(&["PTTL", "soloist:rate:{job:partner}"])
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 10_001, "{ttl}");
}

/// A cron job ticking every second whose runs take 2.5 s would overlap
/// three deep; with `concurrency(2)` on three replicas, never more than two
/// run at once, and two do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_cron_runs_stay_within_the_concurrency() {
    let server = RedisServer::start();
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let runs = Arc::new(AtomicU32::new(0));
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        let (inside, most, runs) = (inside.clone(), most.clone(), runs.clone());
        let job = soloist::cron_job(
            JobSpec::cron("slow-tick", "* * * * * *", "UTC")
                .unwrap()
                .ttl(SECOND)
                .misfire(SECOND)
                .concurrency(2),
            move |_: JobContext| {
                let (inside, most, runs) = (inside.clone(), most.clone(), runs.clone());
                async move {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        let locks = LockClient::connect(&server.url()).await.unwrap();
        let worker = soloist::Worker::builder(locks)
            .replica_id(name)
            .job(job)
            .build()
            .unwrap();
        replicas.push(common::Running::start(worker));
    }
    tokio::time::sleep(7 * SECOND).await;
    for replica in replicas {
        replica.stop().await;
    }
    assert_eq!(most.load(Ordering::SeqCst), 2, "runs at once");
    assert!(runs.load(Ordering::SeqCst) >= 3, "too few runs");
}
