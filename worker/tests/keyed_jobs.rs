//! Keyed jobs against real Redis (and the memory backend where noted):
//! one execution per key at a time, dedupe, waiting, lost leases, retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use soloist::{
    JobContext, JobSpec, KeyedJob, LockClient, RunOutcome, Worker, WorkerHandle, keyed_job,
};
use soloist_testkit::RedisServer;

mod common;

use common::handle;

const SECOND: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    invoice: u64,
    charged_by: String,
    fence: u64,
}

/// A charge job that counts its runs and takes `takes` to finish.
fn charge_job(
    spec: JobSpec,
    runs: Arc<AtomicU32>,
    takes: Duration,
) -> impl KeyedJob<Args = u64, Output = Receipt> {
    keyed_job(
        spec,
        |invoice: &u64| format!("invoice:{invoice}"),
        move |ctx: JobContext, invoice: u64| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(takes).await;
                Ok::<_, std::io::Error>(Receipt {
                    invoice,
                    charged_by: ctx.replica().to_owned(),
                    fence: ctx.fence(),
                })
            }
        },
    )
}

async fn redis_handles(server: &RedisServer) -> (WorkerHandle, WorkerHandle) {
    let a = LockClient::connect(&server.url()).await.unwrap();
    let b = LockClient::connect(&server.url()).await.unwrap();
    (handle(a, "a"), handle(b, "b"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_execution_per_key_at_a_time() {
    let server = RedisServer::start();
    let (a, b) = redis_handles(&server).await;
    let runs = Arc::new(AtomicU32::new(0));
    let spec = JobSpec::keyed("charge", "invoice:{invoice}").unwrap();
    let job = charge_job(spec, runs.clone(), Duration::from_millis(300));
    let (first, second) = tokio::join!(a.run(&job, 42), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.run(&job, 42).await
    });
    assert!(matches!(first.unwrap(), RunOutcome::Completed(_)));
    assert!(matches!(second.unwrap(), RunOutcome::Busy));
    // Another key is independent; without dedupe the same key runs again.
    assert!(matches!(
        b.run(&job, 43).await.unwrap(),
        RunOutcome::Completed(_)
    ));
    assert!(matches!(
        b.run(&job, 42).await.unwrap(),
        RunOutcome::Completed(_)
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

async fn dedupe_returns_the_original_result(a: WorkerHandle, b: WorkerHandle) {
    let runs = Arc::new(AtomicU32::new(0));
    let spec = JobSpec::keyed("charge", "invoice:{invoice}")
        .unwrap()
        .dedupe(60 * SECOND);
    let job = charge_job(spec, runs.clone(), Duration::from_millis(10));
    let RunOutcome::Completed(original) = a.run(&job, 7).await.unwrap() else {
        panic!("first run completes");
    };
    for handle in [&a, &b, &a] {
        match handle.run(&job, 7).await.unwrap() {
            RunOutcome::Duplicate(receipt) => assert_eq!(receipt, original),
            other => panic!("expected Duplicate, got {other:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_on_redis() {
    let server = RedisServer::start();
    let (a, b) = redis_handles(&server).await;
    dedupe_returns_the_original_result(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_on_memory() {
    let locks = LockClient::memory();
    let (a, b) = (handle(locks.clone(), "a"), handle(locks, "b"));
    dedupe_returns_the_original_result(a, b).await;
}

/// A request that may wait gets the result of the run it waited behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_gets_the_duplicate() {
    let server = RedisServer::start();
    let (a, b) = redis_handles(&server).await;
    let runs = Arc::new(AtomicU32::new(0));
    let spec = JobSpec::keyed("charge", "invoice:{invoice}")
        .unwrap()
        .dedupe(60 * SECOND)
        .wait(5 * SECOND);
    let job = charge_job(spec, runs.clone(), Duration::from_millis(300));
    let (first, second) = tokio::join!(a.run(&job, 9), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.run(&job, 9).await
    });
    let RunOutcome::Completed(original) = first.unwrap() else {
        panic!("first completes")
    };
    match second.unwrap() {
        RunOutcome::Duplicate(receipt) => assert_eq!(receipt, original),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A run whose lease is lost is cancelled and recorded as lost: no dedupe
/// record, so the next request runs the key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_is_not_a_success() {
    let server = RedisServer::start();
    let (a, b) = redis_handles(&server).await;
    let runs = Arc::new(AtomicU32::new(0));
    let spec = JobSpec::keyed("charge", "invoice:{invoice}")
        .unwrap()
        .ttl(Duration::from_millis(600))
        .dedupe(60 * SECOND);
    let job = charge_job(spec, runs.clone(), 2 * SECOND);
    let (outcome, ()) = tokio::join!(a.run(&job, 5), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.cli(&["DEL", "soloist:lock:{job:charge:invoice:5}"]);
    });
    assert!(matches!(outcome.unwrap(), RunOutcome::Lost));
    assert_eq!(
        server.cli(&["EXISTS", "soloist:fenced:{job:charge:invoice:5}"]),
        "0"
    );
    let fast = charge_job(
        JobSpec::keyed("charge", "invoice:{invoice}")
            .unwrap()
            .dedupe(60 * SECOND),
        runs.clone(),
        Duration::ZERO,
    );
    assert!(matches!(
        b.run(&fast, 5).await.unwrap(),
        RunOutcome::Completed(_)
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Failures retry (with the arguments again) up to the limit; a failed
/// key is not recorded, so it can be run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_fail_without_a_record() {
    let server = RedisServer::start();
    let (a, _) = redis_handles(&server).await;
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let job = keyed_job(
        JobSpec::keyed("flaky", "order:{id}")
            .unwrap()
            .retries(2)
            .backoff(Duration::from_millis(20))
            .dedupe(60 * SECOND),
        |id: &String| format!("order:{id}"),
        move |ctx: JobContext, id: String| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert_eq!(id, "A-1", "attempt {} got its arguments", ctx.attempt());
                if ctx.attempt() < 3 {
                    return Err(std::io::Error::other("not yet"));
                }
                Ok(ctx.attempt())
            }
        },
    );
    match a.run(&job, "A-1".to_owned()).await.unwrap() {
        RunOutcome::Completed(attempt) => assert_eq!(attempt, 3),
        other => panic!("expected success on the third attempt, got {other:?}"),
    }
    let always = keyed_job(
        JobSpec::keyed("broken", "order:{id}")
            .unwrap()
            .retries(1)
            .backoff(Duration::from_millis(10)),
        |id: &u32| format!("order:{id}"),
        |_ctx: JobContext, _id: u32| async move { Err::<(), _>(std::io::Error::other("no")) },
    );
    for _ in 0..2 {
        match a.run(&always, 1).await.unwrap() {
            RunOutcome::Failed(error) => assert_eq!(error.to_string(), "no"),
            other => panic!("expected Failed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_specs_and_duplicate_names_are_errors() {
    let locks = LockClient::memory();
    let job = |name: &str| {
        keyed_job(
            JobSpec::keyed(name, "k:{id}").unwrap(),
            |id: &u32| format!("k:{id}"),
            |_ctx: JobContext, id: u32| async move { Ok::<_, std::io::Error>(id) },
        )
    };
    let duplicate = Worker::builder(locks.clone())
        .job(job("same"))
        .job(job("same"))
        .build();
    assert!(matches!(duplicate, Err(soloist::WorkerError::DuplicateJob(name)) if name == "same"));
    let zero_ttl = keyed_job(
        JobSpec::keyed("z", "k:{id}").unwrap().ttl(Duration::ZERO),
        |id: &u32| format!("k:{id}"),
        |_ctx: JobContext, id: u32| async move { Ok::<_, std::io::Error>(id) },
    );
    let handle = Worker::builder(locks).build().unwrap().handle();
    assert!(matches!(
        handle.run(&zero_ttl, 1).await,
        Err(soloist::WorkerError::InvalidJob { name: "ttl", .. })
    ));
}

/// With `OnLost::Signal` the body keeps running and sees the loss; the
/// run still counts as lost, not as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_on_lost_lets_the_body_finish_but_records_lost() {
    let server = RedisServer::start();
    let (a, _) = redis_handles(&server).await;
    let saw_loss = Arc::new(AtomicU32::new(0));
    let seen = saw_loss.clone();
    let job = keyed_job(
        JobSpec::keyed("careful", "k:{n}")
            .unwrap()
            .ttl(Duration::from_millis(600))
            .on_lost(soloist::OnLost::Signal),
        |n: &u32| format!("k:{n}"),
        move |ctx: JobContext, n: u32| {
            let seen = seen.clone();
            async move {
                tokio::time::timeout(5 * SECOND, ctx.lost())
                    .await
                    .expect("told of the loss");
                assert!(!ctx.is_held());
                seen.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(n)
            }
        },
    );
    let (outcome, ()) = tokio::join!(a.run(&job, 1), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.cli(&["DEL", "soloist:lock:{job:careful:k:1}"]);
    });
    assert!(matches!(outcome.unwrap(), RunOutcome::Lost));
    assert_eq!(
        saw_loss.load(Ordering::SeqCst),
        1,
        "the body ran to its end"
    );
}

/// Effects committed on success apply once, with the success record, and
/// not at all when the run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_commit_with_the_success_record() {
    let server = RedisServer::start();
    let (a, b) = redis_handles(&server).await;
    let job = keyed_job(
        JobSpec::keyed("pay", "order:{id}")
            .unwrap()
            .dedupe(60 * SECOND),
        |id: &i64| format!("order:{id}"),
        |ctx: JobContext, id: i64| async move {
            let mut effect = soloist::redis::cmd("HINCRBY");
            effect.arg("paid").arg(id).arg(1);
            ctx.commit_on_success(effect);
            if id < 0 {
                return Err(std::io::Error::other("refused"));
            }
            Ok(id)
        },
    );
    assert!(matches!(
        a.run(&job, 1).await.unwrap(),
        RunOutcome::Completed(1)
    ));
    assert!(matches!(
        b.run(&job, 1).await.unwrap(),
        RunOutcome::Duplicate(1)
    ));
    assert!(matches!(
        a.run(&job, -1).await.unwrap(),
        RunOutcome::Failed(_)
    ));
    assert_eq!(server.cli(&["HGET", "paid", "1"]), "1");
    assert_eq!(
        server.cli(&["HEXISTS", "paid", "-1"]),
        "0",
        "a failed run applies nothing"
    );
    // The memory backend has no Redis to apply them to: recording fails.
    let memory = Worker::builder(LockClient::memory())
        .build()
        .unwrap()
        .handle();
    assert!(matches!(
        memory.run(&job, 2).await,
        Err(soloist::WorkerError::Lock(
            soloist::LockError::InvalidArgument {
                name: "effects",
                ..
            }
        ))
    ));
}

/// Job names are escaped in the keys they run under: a `:` in one name
/// cannot make its keys those of another job.
#[tokio::test]
async fn jobs_whose_names_and_keys_join_alike_keep_apart() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let worker = handle(locks, "a");
    let job = |name: &str, template: &str, prefix: &'static str| {
        keyed_job(
            JobSpec::keyed(name, template).unwrap().dedupe(60 * SECOND),
            move |part: &String| format!("{prefix}{}", soloist::KeyPart(part)),
            |ctx: JobContext, _part: String| async move {
                Ok::<_, std::io::Error>(ctx.job().to_owned())
            },
        )
    };
    // Unescaped, both would run under the record `job:a:b:c`.
    let first = worker
        .run(job("a:b", "{part}", ""), "c".into())
        .await
        .unwrap();
    assert!(
        matches!(&first, RunOutcome::Completed(job) if job == "a:b"),
        "{first:?}"
    );
    let second = worker
        .run(job("a", "b:{part}", "b:"), "c".into())
        .await
        .unwrap();
    assert!(
        matches!(&second, RunOutcome::Completed(job) if job == "a"),
        "{second:?}"
    );
}

/// Redis stops answering just as a run succeeds: the dedupe record is
/// written once Redis is back (the lease still holds), the run counts as a
/// success, and the next request for the key gets its recorded result.
#[tokio::test]
async fn a_success_record_delayed_by_a_stalled_redis_is_still_written() {
    let server = Arc::new(RedisServer::start());
    let locks = LockClient::builder()
        .op_timeout(Duration::from_millis(200))
        .connect(&server.url())
        .await
        .unwrap();
    let worker = handle(locks, "a");
    let runs = Arc::new(AtomicU32::new(0));
    let job = keyed_job(
        JobSpec::keyed("charge", "invoice:{invoice}")
            .unwrap()
            .ttl(10 * SECOND)
            .dedupe(60 * SECOND),
        |invoice: &u64| format!("invoice:{invoice}"),
        {
            let (server, runs) = (server.clone(), runs.clone());
            move |_ctx: JobContext, invoice: u64| {
                runs.fetch_add(1, Ordering::SeqCst);
                // Redis freezes as the body returns, for longer than the
                // operation timeout.
                server.pause_for(SECOND);
                async move { Ok::<_, std::io::Error>(invoice) }
            }
        },
    );
    let first = worker.run(&job, 7).await.unwrap();
    assert!(matches!(first, RunOutcome::Completed(7)), "{first:?}");
    let second = worker.run(&job, 7).await.unwrap();
    assert!(matches!(second, RunOutcome::Duplicate(7)), "{second:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A request waiting for a key held elsewhere ends when shutdown begins:
/// `run_until` returns within its grace, and the body never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_keyed_wait_and_starts_no_run() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let spec = JobSpec::keyed("charge", "invoice:{invoice}")
        .unwrap()
        .wait(60 * SECOND);
    let job = charge_job(spec, runs.clone(), Duration::ZERO);
    // Another replica runs invoice 1 for a long while.
    let _held = locks
        .lock("job:charge:invoice:1")
        .ttl(60 * SECOND)
        .acquire()
        .await
        .unwrap();
    let worker = Worker::builder(locks)
        .shutdown_grace(SECOND)
        .build()
        .unwrap();
    let handle = worker.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let waiting = tokio::spawn(async move { handle.run(&job, 1).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = std::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(5 * SECOND, running)
        .await
        .expect("run_until waited past its grace for a keyed wait")
        .unwrap()
        .unwrap();
    assert!(began.elapsed() < 5 * SECOND);
    let outcome = tokio::time::timeout(SECOND, waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, Err(soloist::WorkerError::ShuttingDown)),
        "{outcome:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
