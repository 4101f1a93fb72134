//! Keyed runs through a `WorkerHandle` that fit a batch (dedupe, no wait,
//! no rate, one at a time per key, one Redis server) are claimed in one
//! call and settled in one more, and runs started together share those
//! calls; against a real redis-server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use soloist::{JobContext, JobSpec, KeyedJob, LockClient, RunOutcome, WorkerError, keyed_job};
use soloist_testkit::RedisServer;

mod common;

use common::{Monitor, handle};

const SECOND: Duration = Duration::from_secs(1);

/// A job that adds one to `counted:<id>` on success (an effect) after
/// `takes`, and counts its runs.
fn counting_job(
    spec: JobSpec,
    runs: Arc<AtomicU32>,
    takes: Duration,
) -> impl KeyedJob<Args = u64, Output = u64> {
    keyed_job(
        spec,
        |id: &u64| format!("item:{id}"),
        move |ctx: JobContext, id: u64| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(takes).await;
                let mut effect = soloist::redis::cmd("HINCRBY");
                effect.arg("counted").arg(id).arg(1);
                ctx.commit_on_success(effect);
                Ok::<_, std::io::Error>(id * 10)
            }
        },
    )
}

fn spec() -> JobSpec {
    JobSpec::keyed("count", "item:{id}")
        .unwrap()
        .dedupe(600 * SECOND)
}

fn evalsha_calls(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// A run alone sends two requests: its claim and its settlement (the path
/// one step at a time sends five: a record read, the acquisition, a second
/// read under the lock, the commit and the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_alone_is_two_requests() {
    let server = RedisServer::start();
    let worker = handle(LockClient::connect(&server.url()).await.unwrap(), "a");
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(spec(), runs.clone(), Duration::ZERO);
    // Loads the scripts and reads whether the job is paused (cached).
    assert!(matches!(
        worker.run(&job, 1).await.unwrap(),
        RunOutcome::Completed(10)
    ));
    let monitor = Monitor::start(server.port());
    assert!(matches!(
        worker.run(&job, 2).await.unwrap(),
        RunOutcome::Completed(20)
    ));
    // The next request, a duplicate, is its claim alone.
    assert!(matches!(
        worker.run(&job, 2).await.unwrap(),
        RunOutcome::Duplicate(20)
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent: Vec<String> = monitor
        .lines()
        .iter()
        .filter(|line| !line.contains(" lua]") && !line.contains("\"HKEYS\""))
        .map(|line| {
            line.split('"')
                .nth(1)
                .unwrap_or_default()
                .to_ascii_uppercase()
        })
        .collect();
    assert_eq!(sent, ["EVALSHA", "EVALSHA", "EVALSHA"], "{sent:?}");
    assert_eq!(server.cli(&["HGET", "counted", "2"]), "1");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Runs started together share their claim and settle calls; each is run
/// once, recorded once, its effect applied once, its history written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_started_together_share_their_calls() {
    let server = RedisServer::start();
    let worker = handle(LockClient::connect(&server.url()).await.unwrap(), "a");
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(spec(), runs.clone(), Duration::from_millis(50));
    assert!(matches!(
        worker.run(&job, 0).await.unwrap(),
        RunOutcome::Completed(0)
    ));
    server.cli(&["CONFIG", "RESETSTAT"]);
    let outcomes = futures::future::join_all((1..=64).map(|id| worker.run(&job, id))).await;
    for (id, outcome) in (1..=64).zip(outcomes) {
        assert!(
            matches!(outcome, Ok(RunOutcome::Completed(value)) if value == id * 10),
            "{id}"
        );
        assert_eq!(server.cli(&["HGET", "counted", &id.to_string()]), "1");
    }
    let calls = evalsha_calls(&server);
    assert!(calls <= 16, "64 runs took {calls} script calls");
    assert_eq!(runs.load(Ordering::SeqCst), 65);
    assert_eq!(server.cli(&["XLEN", "soloist:runs:{count}"]), "65");
    // Again: all duplicates, nothing run or applied again.
    let again = futures::future::join_all((1..=64).map(|id| worker.run(&job, id))).await;
    assert!(
        again
            .iter()
            .all(|outcome| matches!(outcome, Ok(RunOutcome::Duplicate(_))))
    );
    assert_eq!(runs.load(Ordering::SeqCst), 65);
    assert_eq!(server.cli(&["HGET", "counted", "7"]), "1");
}

/// The gathered path comes to the path one step at a time's outcomes: a key
/// held elsewhere is busy, a lease lost before the record is lost (nothing
/// recorded or applied), an effect Redis refuses leaves the run recorded
/// and the caller told, and a claim Redis refuses (a record of the wrong
/// type) is reported as the path one step at a time reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_match_the_path_one_step_at_a_time() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let worker = handle(locks.clone(), "a");
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(spec(), runs.clone(), Duration::ZERO);

    let held = locks.lock("job:count:item:1").acquire().await.unwrap();
    assert!(matches!(
        worker.run(&job, 1).await.unwrap(),
        RunOutcome::Busy
    ));
    held.release().await.unwrap();

    // Lost: the key is taken away while the body runs; the watchdog is
    // not quick enough to see it before the body ends.
    let slow = counting_job(
        spec().ttl(30 * SECOND),
        runs.clone(),
        Duration::from_millis(300),
    );
    let (outcome, ()) = tokio::join!(worker.run(&slow, 2), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.cli(&["DEL", "soloist:lock:{job:count:item:2}"]);
    });
    assert!(matches!(outcome.unwrap(), RunOutcome::Lost));
    assert_eq!(
        server.cli(&["EXISTS", "soloist:fenced:{job:count:item:2}"]),
        "0"
    );
    assert_eq!(server.cli(&["HEXISTS", "counted", "2"]), "0");

    // An effect Redis refuses: recorded, the caller told.
    server.cli(&["SET", "counted", "not a hash"]);
    assert!(matches!(
        worker.run(&job, 3).await,
        Err(WorkerError::Lock(soloist::LockError::EffectRefused { .. }))
    ));
    assert_eq!(
        server.cli(&["EXISTS", "soloist:fenced:{job:count:item:3}"]),
        "1"
    );
    server.cli(&["DEL", "counted"]);

    // A record of the wrong type: refused in the claim, then reported by
    // the path one step at a time; no lock is left behind.
    server.cli(&["SET", "soloist:fenced:{job:count:item:4}", "a string"]);
    let refused = worker.run(&job, 4).await;
    assert!(
        matches!(&refused, Err(err) if err.to_string().contains("WRONGTYPE")),
        "{refused:?}"
    );
    assert_eq!(
        server.cli(&["EXISTS", "soloist:lock:{job:count:item:4}"]),
        "0"
    );
}

/// Callers who give up while their call is on its way (a timeout, a
/// dropped future) neither stop the calls others share nor leave a lock
/// behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_who_give_up_leave_nothing_behind() {
    let server = RedisServer::start();
    let worker = handle(LockClient::connect(&server.url()).await.unwrap(), "a");
    let runs = Arc::new(AtomicU32::new(0));
    let job = counting_job(spec(), runs.clone(), Duration::from_millis(20));
    assert!(worker.run(&job, 0).await.is_ok());
    for round in 0..5u64 {
        let impatient = (1..=20).map(|id| {
            tokio::time::timeout(
                Duration::from_micros(100 * (id % 7)),
                worker.run(&job, round * 100 + id),
            )
        });
        futures::future::join_all(impatient).await;
    }
    let last = tokio::time::timeout(10 * SECOND, worker.run(&job, 999))
        .await
        .expect("the calls go on");
    assert!(matches!(last.unwrap(), RunOutcome::Completed(9990)));
    // Every key a gave-up run took is given back (in the background).
    let deadline = std::time::Instant::now() + 5 * SECOND;
    loop {
        let held = server.cli(&["KEYS", "soloist:lock:*"]);
        if held.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left held: {held}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
