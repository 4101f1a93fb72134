//! Cron jobs across several in-process replicas sharing one real
//! redis-server: each tick once, skewed clocks, retries, max_hold, lost
//! leases, missed ticks and shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use soloist::{IntoJob, JobContext, JobSpec, LockClient, MissedTicks, Worker, cron_job};
use soloist_testkit::RedisServer;

mod common;

use common::Running;

const SECOND: Duration = Duration::from_secs(1);

/// Every run of a job: (tick, replica, attempt, fence).
type Runs = Arc<Mutex<Vec<(DateTime<Utc>, String, u32, u64)>>>;

fn record(runs: &Runs, ctx: &JobContext) {
    let tick = ctx.scheduled_at().expect("cron runs have a tick");
    runs.lock()
        .unwrap()
        .push((tick, ctx.replica().to_owned(), ctx.attempt(), ctx.fence()));
}

/// A replica called `name` running `job` on `server`.
async fn named(server: &RedisServer, name: &str, job: impl IntoJob) -> Running {
    let locks = client(server).await;
    Running::start(
        Worker::builder(locks)
            .replica_id(name)
            .job(job)
            .build()
            .unwrap(),
    )
}

/// A cron job that records each run and succeeds.
fn recording(spec: JobSpec, runs: &Runs) -> impl IntoJob + use<> {
    let recorder = runs.clone();
    cron_job(spec, move |ctx: JobContext| {
        let recorder = recorder.clone();
        async move {
            record(&recorder, &ctx);
            Ok::<_, std::io::Error>(())
        }
    })
}

async fn client(server: &RedisServer) -> LockClient {
    LockClient::connect(&server.url()).await.expect("connect")
}

/// The ticks of the runs, checked to be consecutive seconds, each once.
fn assert_each_tick_once(runs: &Runs) -> Vec<DateTime<Utc>> {
    let runs = runs.lock().unwrap();
    let mut per_tick: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for (tick, ..) in runs.iter() {
        *per_tick.entry(*tick).or_default() += 1;
    }
    let doubles: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "ticks run twice: {doubles:?}");
    let ticks: Vec<_> = per_tick.into_keys().collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            TimeDelta::seconds(1),
            "a tick was skipped: {ticks:?}"
        );
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_runs_once_even_on_replicas_with_skewed_clocks() {
    let server = RedisServer::start();
    let runs: Runs = Arc::default();
    let mut replicas = Vec::new();
    // One replica's clock is three minutes fast, another's two minutes slow.
    for (name, error) in [("on-time", 0), ("fast", 180), ("slow", -120)] {
        let recorder = runs.clone();
        let job = cron_job(
            JobSpec::cron("every-second", "* * * * * *", "UTC")
                .unwrap()
                .ttl(SECOND),
            move |ctx: JobContext| {
                let recorder = recorder.clone();
                async move {
                    record(&recorder, &ctx);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        let worker = Worker::builder(client(&server).await)
            .replica_id(name)
            .local_clock_error(TimeDelta::seconds(error))
            .job(job)
            .build()
            .unwrap();
        replicas.push(Running::start(worker));
    }
    tokio::time::sleep(5 * SECOND).await;
    for replica in replicas {
        replica.stop().await;
    }
    let ticks = assert_each_tick_once(&runs);
    assert!(ticks.len() >= 4, "only {} ticks ran", ticks.len());
    let now = Utc::now();
    for tick in &ticks {
        let off = (now - *tick).abs();
        assert!(
            off < TimeDelta::seconds(10),
            "tick {tick} is not the fleet's time"
        );
    }
    let fences: Vec<u64> = {
        let mut runs = runs.lock().unwrap().clone();
        runs.sort();
        runs.iter().map(|run| run.3).collect()
    };
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences do not increase: {fences:?}"
    );
}

/// A failing run is retried under the same lease; once its retries are
/// spent, the failure is recorded and no other replica runs the tick again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_a_recorded_failure() {
    let server = RedisServer::start();
    let runs: Runs = Arc::default();
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let recorder = runs.clone();
        let job = cron_job(
            JobSpec::cron("flaky", "*/2 * * * * *", "UTC")
                .unwrap()
                .retries(2)
                .backoff(Duration::from_millis(50)),
            move |ctx: JobContext| {
                let recorder = recorder.clone();
                async move {
                    record(&recorder, &ctx);
                    Err::<(), _>(std::io::Error::other("always fails"))
                }
            },
        );
        replicas.push(named(&server, name, job).await);
    }
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for replica in replicas {
        replica.stop().await;
    }
    let runs = runs.lock().unwrap();
    let mut per_tick: BTreeMap<DateTime<Utc>, Vec<(String, u32)>> = BTreeMap::new();
    for (tick, replica, attempt, _) in runs.iter() {
        per_tick
            .entry(*tick)
            .or_default()
            .push((replica.clone(), *attempt));
    }
    assert!(!per_tick.is_empty());
    for (tick, attempts) in per_tick {
        let numbers: Vec<u32> = attempts.iter().map(|(_, attempt)| *attempt).collect();
        assert_eq!(numbers, [1, 2, 3], "tick {tick}: attempts {attempts:?}");
        assert!(
            attempts
                .iter()
                .all(|(replica, _)| *replica == attempts[0].0),
            "tick {tick} moved"
        );
    }
}

/// A run past its max_hold is cancelled and recorded; nobody reruns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hold_cancels_a_run_for_good() {
    let server = RedisServer::start();
    let runs: Runs = Arc::default();
    let cancelled = Arc::new(Mutex::new(0));
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let (recorder, cancelled) = (runs.clone(), cancelled.clone());
        let job = cron_job(
            JobSpec::cron("stuck", "*/3 * * * * *", "UTC")
                .unwrap()
                .max_hold(Duration::from_millis(400)),
            move |ctx: JobContext| {
                let (recorder, cancelled) = (recorder.clone(), cancelled.clone());
                async move {
                    record(&recorder, &ctx);
                    ctx.cancelled().await;
                    *cancelled.lock().unwrap() += 1;
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        replicas.push(named(&server, name, job).await);
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for replica in replicas {
        replica.stop().await;
    }
    let ticks = runs
        .lock()
        .unwrap()
        .iter()
        .map(|run| run.0)
        .collect::<Vec<_>>();
    assert!(!ticks.is_empty());
    let mut unique = ticks.clone();
    unique.dedup();
    assert_eq!(unique, ticks, "a timed-out tick was run again");
    // The future is dropped at max_hold: the body never got past its wait.
    assert_eq!(*cancelled.lock().unwrap(), 0);
}

/// A run whose lease is lost is cancelled, is not recorded as done, and
/// another replica takes the tick over within its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_cancels_the_run_and_a_peer_takes_over() {
    let server = RedisServer::start();
    let runs: Runs = Arc::default();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let (recorder, finished) = (runs.clone(), finished.clone());
        let job = cron_job(
            JobSpec::cron("fragile", "*/5 * * * * *", "UTC")
                .unwrap()
                .ttl(Duration::from_millis(600))
                .misfire(10 * SECOND),
            move |ctx: JobContext| {
                let (recorder, finished) = (recorder.clone(), finished.clone());
                async move {
                    record(&recorder, &ctx);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    finished.lock().unwrap().push(ctx.replica().to_owned());
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        replicas.push(named(&server, name, job).await);
    }
    // Wait for the first run to start, then take its lock away.
    let first = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(run) = runs.lock().unwrap().first().cloned() {
            break run;
        }
    };
    let lock_key = format!(
        "soloist:lock:=cron:{{fragile}}:{}",
        first.0.timestamp_millis()
    );
    server.cli(&["DEL", &lock_key]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for replica in replicas {
        replica.stop().await;
    }
    let runs = runs.lock().unwrap();
    let of_first: Vec<_> = runs.iter().filter(|run| run.0 == first.0).collect();
    assert_eq!(
        of_first.len(),
        2,
        "the tick was taken over once: {of_first:?}"
    );
    assert_ne!(of_first[0].1, of_first[1].1, "by the other replica");
    assert!(of_first[1].3 > of_first[0].3, "with a higher fence");
    let finished = finished.lock().unwrap();
    assert_eq!(
        finished.iter().filter(|r| **r == first.1).count(),
        0,
        "the lost run went on: runs {runs:?}, finished {finished:?}"
    );
}

/// Ticks the whole fleet missed follow the job's policy; under `RunOnce` a
/// tick due at start stands for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_follow_the_policy() {
    // Ticks every even second, a grace of 500 ms: a replica starting 1.3 s
    // past a tick finds none in its grace, one starting 0.1 s past finds one.
    let between = 1300..1500;
    let just_after = 100..300;
    for (policy, start_at, expected) in [
        (MissedTicks::Skip, between.clone(), 0),
        (MissedTicks::RunOnce, between.clone(), 1),
        (MissedTicks::RunOnce, just_after, 0),
        (MissedTicks::CatchUp(3), between, 3),
    ] {
        let server = RedisServer::start();
        let locks = client(&server).await;
        // The fleet last claimed a tick 20 s ago.
        let last = Utc::now() - TimeDelta::seconds(20);
        let last_ms = u64::try_from(last.timestamp_millis()).unwrap();
        locks
            .fenced_set("cron:{hourly-ish}:last", last_ms, last_ms.to_string())
            .await
            .unwrap();
        let runs: Runs = Arc::default();
        let job = recording(
            JobSpec::cron("hourly-ish", "*/2 * * * * *", "UTC")
                .unwrap()
                .misfire(Duration::from_millis(500))
                .missed(policy),
            &runs,
        );
        while !start_at.contains(&Utc::now().timestamp_millis().rem_euclid(2000)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Utc::now();
        let worker = Worker::builder(locks).job(job).build().unwrap();
        let replica = Running::start(worker);
        tokio::time::sleep(SECOND).await;
        replica.stop().await;
        let runs = runs.lock().unwrap();
        let missed: Vec<_> = runs
            .iter()
            .filter(|run| run.0 < started - TimeDelta::seconds(1))
            .map(|run| run.0)
            .collect();
        assert_eq!(missed.len(), expected, "{policy:?}: ran {missed:?}");
        assert!(missed.iter().all(|tick| *tick > last));
        assert!(missed.windows(2).all(|w| w[0] < w[1]), "oldest first");
        if expected == 0 && policy == MissedTicks::RunOnce {
            assert!(
                runs.iter()
                    .any(|run| run.0 > started - TimeDelta::seconds(1)),
                "the tick due at start ran: {runs:?}"
            );
        }
    }
}

/// Shutdown lets a running job finish within the grace period, and
/// cancels it (releasing its lease) after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_runs_then_cancels_them() {
    for (grace, completes) in [(5 * SECOND, true), (Duration::from_millis(200), false)] {
        let server = RedisServer::start();
        let runs: Runs = Arc::default();
        let completed = Arc::new(Mutex::new(false));
        let (recorder, done) = (runs.clone(), completed.clone());
        let job = cron_job(
            JobSpec::cron("long", "* * * * * *", "UTC").unwrap(),
            move |ctx: JobContext| {
                let (recorder, done) = (recorder.clone(), done.clone());
                async move {
                    if !recorder.lock().unwrap().is_empty() {
                        return Ok(()); // only the first tick does the long work
                    }
                    record(&recorder, &ctx);
                    tokio::time::sleep(SECOND).await;
                    *done.lock().unwrap() = true;
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        let worker = Worker::builder(client(&server).await)
            .shutdown_grace(grace)
            .job(job)
            .build()
            .unwrap();
        let replica = Running::start(worker);
        while runs.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replica.stop().await;
        assert_eq!(*completed.lock().unwrap(), completes, "grace {grace:?}");
        let tick = runs.lock().unwrap()[0].0.timestamp_millis();
        let lock_key = format!("soloist:lock:=cron:{{long}}:{tick}");
        assert_eq!(
            server.cli(&["EXISTS", &lock_key]),
            "0",
            "the lease outlived the shutdown"
        );
    }
}

/// How long from now until `at`, or zero.
fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or_default()
}

/// A tick runs only once its claim is recorded (so that a fleet restart
/// after its done-marker expired cannot run it again): here the claim
/// record cannot be written at first (its key holds a string), so the tick
/// does not run; the fleet stops, the markers go, the record is readable
/// again with an older tick, and the fleet restarts just after the tick's
/// grace: recovery runs the tick, for the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_runs_only_once_its_claim_is_recorded() {
    let server = RedisServer::start();
    let last_key = "soloist:fenced:=cron:{every-3s}:last";
    server.cli(&["SET", last_key, "not a record"]);
    let runs: Runs = Arc::default();
    let worker = |locks: LockClient| {
        let job = recording(
            JobSpec::cron("every-3s", "*/3 * * * * *", "UTC")
                .unwrap()
                .misfire(SECOND)
                .missed(MissedTicks::RunOnce),
            &runs,
        );
        Worker::builder(locks).job(job).build().unwrap()
    };
    let first = Running::start(worker(client(&server).await));
    // The next tick at least 300 ms away: the replica is up to claim it.
    let soon = Utc::now() + TimeDelta::milliseconds(300);
    let tick_ms = (soon.timestamp_millis() / 3000 + 1) * 3000;
    let tick = DateTime::from_timestamp_millis(tick_ms).unwrap();
    tokio::time::sleep(until(tick + TimeDelta::milliseconds(500))).await;
    first.stop().await;

    // The markers expire; the claim record is readable again and older.
    for marker in server
        .cli(&["KEYS", "soloist:fenced:=cron:{every-3s}:*"])
        .lines()
    {
        server.cli(&["DEL", marker.trim()]);
    }
    let locks = client(&server).await;
    let old_ms = u64::try_from(tick_ms - 60_000).unwrap();
    locks
        .fenced_set("cron:{every-3s}:last", old_ms, old_ms.to_string())
        .await
        .unwrap();
    // Past the tick's grace, before the next tick's: recovery's latest
    // missed tick is the tick.
    tokio::time::sleep(until(tick + TimeDelta::milliseconds(1500))).await;
    let second = Running::start(worker(locks));
    tokio::time::sleep(until(tick + TimeDelta::milliseconds(2500))).await;
    second.stop().await;

    let runs = runs.lock().unwrap();
    let of_tick = runs.iter().filter(|run| run.0 == tick).count();
    assert_eq!(of_tick, 1, "the tick ran {of_tick} times: {runs:?}");
}

/// Every tick's fence comes from one counter per job: fences increase from
/// tick to tick, and no key is left behind per tick once its run is over
/// but the done-marker, which lasts no longer than the tick's grace, a
/// lease and a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_draw_fences_from_one_counter_per_job() {
    let server = RedisServer::start();
    let runs: Runs = Arc::default();
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let job = recording(
            JobSpec::cron("every-second", "* * * * * *", "UTC")
                .unwrap()
                .ttl(SECOND)
                .misfire(SECOND),
            &runs,
        );
        replicas.push(named(&server, name, job).await);
    }
    tokio::time::sleep(3 * SECOND).await;
    for replica in replicas {
        replica.stop().await;
    }
    let ticks = assert_each_tick_once(&runs);
    assert!(ticks.len() >= 2, "ran {ticks:?}");
    let mut by_tick: Vec<_> = runs.lock().unwrap().iter().map(|r| (r.0, r.3)).collect();
    by_tick.sort();
    assert!(
        by_tick.windows(2).all(|w| w[1].1 > w[0].1),
        "fences increase from tick to tick: {by_tick:?}"
    );
    let counters = server.cli(&["KEYS", "soloist:fence:*"]);
    assert_eq!(counters.trim(), "soloist:fence:=cron:{every-second}");
    let left: Vec<String> = server
        .cli(&["KEYS", "soloist:*"])
        .lines()
        .map(str::trim)
        .filter(|key| !key.is_empty() && key.ends_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    // One key per tick remains: its done-marker, which expires.
    for key in &left {
        assert!(
            key.starts_with("soloist:fenced:=cron:{every-second}:"),
            "{key} left behind"
        );
        let ttl: u64 = server.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(
            ttl <= (SECOND + SECOND + 300 * SECOND).as_millis() as u64,
            "{key}: {ttl} ms"
        );
    }
}

/// A replica that starts while a peer runs a tick still stands by for it:
/// when the peer stops mid-run inside the grace, the new replica takes the
/// tick over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_during_a_ticks_grace_takes_it_over() {
    let server = RedisServer::start();
    let runs: Runs = Arc::default();
    let job = || {
        let recorder = runs.clone();
        cron_job(
            JobSpec::cron("every-4s", "*/4 * * * * *", "UTC")
                .unwrap()
                .ttl(SECOND)
                .misfire(3 * SECOND),
            move |ctx: JobContext| {
                let recorder = recorder.clone();
                async move {
                    let first = recorder.lock().unwrap().is_empty();
                    record(&recorder, &ctx);
                    if first {
                        tokio::time::sleep(60 * SECOND).await;
                    }
                    Ok::<_, std::io::Error>(())
                }
            },
        )
    };
    let first = Running::start(
        Worker::builder(client(&server).await)
            .replica_id("first")
            .shutdown_grace(Duration::from_millis(100))
            .job(job())
            .build()
            .unwrap(),
    );
    while runs.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tick = runs.lock().unwrap()[0].0;
    let second = named(&server, "second", job()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.stop().await;
    let deadline = std::time::Instant::now() + 3 * SECOND;
    while !runs.lock().unwrap().iter().any(|run| run.1 == "second") {
        assert!(
            std::time::Instant::now() < deadline,
            "the tick was not taken over: {:?}",
            runs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.stop().await;
    let runs = runs.lock().unwrap();
    let taken_over = runs.iter().find(|run| run.1 == "second").unwrap();
    assert_eq!(taken_over.0, tick, "{runs:?}");
}
