//! What operators see and steer, against a real redis-server with two
//! in-process replicas: run history, the registry, lock holders, pause,
//! resume, trigger, dead letters, and inspecting 100,000 locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use soloist::inspect::{Inspector, JobKind, RunFilter};
use soloist::{
    BoxError, IntoJob, JobContext, JobSpec, KeyedJob, LockClient, RunOutcome, StreamSource, Worker,
    cron_job, keyed_job,
};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};

mod common;
use common::Running;

const SECOND: Duration = Duration::from_secs(1);

async fn client(server: &RedisServer) -> LockClient {
    LockClient::connect(&server.url()).await.expect("connect")
}

/// A cron job every second counting its runs in `count`.
fn every_second(name: &str, count: &Arc<AtomicU32>) -> impl IntoJob + use<> {
    let count = count.clone();
    cron_job(
        JobSpec::cron(name, "* * * * * *", "UTC").unwrap(),
        move |_ctx: JobContext| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        },
    )
}

/// A keyed job that fails for the argument `bad`.
fn charge() -> impl KeyedJob<Args = String, Output = String> + IntoJob + use<> {
    keyed_job(
        JobSpec::keyed("charge", "order:{id}")
            .unwrap()
            .dedupe(3600 * SECOND),
        |id: &String| format!("order:{id}"),
        |_ctx: JobContext, id: String| async move {
            if id == "bad" {
                return Err(BoxError::from(format!("card declined for {id}")));
            }
            Ok(format!("receipt:{id}"))
        },
    )
}

async fn replica(
    server: &RedisServer,
    name: &str,
    build: impl FnOnce(soloist::WorkerBuilder) -> soloist::WorkerBuilder,
) -> Running {
    let worker = build(
        Worker::builder(client(server).await)
            .replica_id(name)
            .heartbeat(2 * SECOND),
    )
    .build()
    .unwrap();
    Running::start(worker)
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Every kind of run leaves a record — cron tick, keyed run (with its
/// error), consumed message — with its job, tick or key, replica, fence,
/// outcome and timing; and the history is capped as it grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_run_leaves_a_record_and_the_history_is_capped() {
    let server = RedisServer::start();
    let ticks = Arc::new(AtomicU32::new(0));
    let source = StreamSource::builder("orders")
        .block(Duration::from_millis(100))
        .connect(&server.url())
        .await
        .unwrap();
    let a = replica(&server, "a", |b| {
        b.job(every_second("sweep", &ticks)).history_limit(100)
    })
    .await;
    let b = Worker::builder(client(&server).await)
        .replica_id("b")
        .job(every_second("sweep", &ticks))
        .consume(source, charge())
        .history_limit(100)
        .build()
        .unwrap();
    let handle = b.handle();
    let b = Running::start(b);
    let inspector = Inspector::new(&client(&server).await).unwrap();

    assert!(matches!(
        handle.run(charge(), "bad".to_owned()).await.unwrap(),
        RunOutcome::Failed(_)
    ));
    handle.enqueue(charge(), "q1".to_owned()).await.unwrap();
    until("two ticks recorded", 10 * SECOND, async || {
        inspector
            .runs(&RunFilter::job("sweep"))
            .await
            .unwrap()
            .len()
            >= 2
    })
    .await;
    let sweeps = inspector.runs(&RunFilter::job("sweep")).await.unwrap();
    for run in &sweeps {
        assert_eq!(run.outcome, "success");
        assert!(run.tick_ms.is_some() && run.key.is_none() && !run.triggered);
        assert!(["a", "b"].contains(&run.replica.as_str()), "{run:?}");
        assert!(run.fence > 0 && run.started_ms >= run.tick_ms.unwrap());
    }
    // Newest first, one record per tick.
    assert!(
        sweeps.windows(2).all(|w| w[0].tick_ms > w[1].tick_ms),
        "{sweeps:?}"
    );

    until("the consumed message recorded", 10 * SECOND, async || {
        inspector
            .runs(&RunFilter::job("charge").outcome("success"))
            .await
            .unwrap()
            .iter()
            .any(|run| run.key.as_deref() == Some("order:q1"))
    })
    .await;
    let failed = inspector
        .runs(&RunFilter::job("charge").outcome("failure"))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].key.as_deref(), Some("order:bad"));
    assert_eq!(failed[0].replica, "b");
    assert_eq!(failed[0].error.as_deref(), Some("card declined for bad"));

    // Capped: 400 more runs leave about 100 (whole stream nodes are trimmed).
    for i in 0..400 {
        handle.run(charge(), format!("n{i}")).await.unwrap();
    }
    sleep(Duration::from_millis(300)).await;
    let kept: u64 = server
        .cli(&["XLEN", "soloist:runs:{charge}"])
        .parse()
        .unwrap();
    assert!(
        (100..300).contains(&kept),
        "history kept {kept} of 402 runs"
    );
    a.stop().await;
    b.stop().await;
}

/// Each replica announces itself with its jobs and queues; one that dies
/// (no clean shutdown) is gone within its heartbeat, one that stops is
/// gone at once; a held lock shows its holder and since when.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_shows_live_replicas_and_lock_holders() {
    let server = RedisServer::start();
    let ticks = Arc::new(AtomicU32::new(0));
    let a = replica(&server, "a", |b| b.job(every_second("sweep", &ticks))).await;
    let b = replica(&server, "b", |b| {
        b.job(every_second("sweep", &ticks)).job(charge())
    })
    .await;
    let inspector = Inspector::new(&client(&server).await).unwrap();
    until("both replicas announced", 5 * SECOND, async || {
        inspector.replicas().await.unwrap().len() == 2
    })
    .await;
    let replicas = inspector.replicas().await.unwrap();
    let b_entry = &replicas[1];
    assert_eq!(b_entry.replica, "b");
    assert_eq!(b_entry.owner, soloist::owner_id());
    assert_eq!(b_entry.pid, std::process::id());
    assert_eq!(b_entry.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(b_entry.heartbeat_ms, 2000);
    let names: Vec<_> = b_entry
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.kind))
        .collect();
    assert_eq!(
        names,
        [("sweep", JobKind::Cron), ("charge", JobKind::Keyed)]
    );

    let jobs = inspector.jobs().await.unwrap();
    let sweep = jobs.iter().find(|j| j.decl.name == "sweep").unwrap();
    assert_eq!(sweep.replicas, ["a", "b"]);
    assert_eq!(sweep.decl.schedule.as_deref(), Some("* * * * * *"));
    assert_eq!(sweep.decl.time_zone.as_deref(), Some("UTC"));
    let server_now = inspector.server_time().await.unwrap().timestamp_millis();
    let next = sweep.next_tick_ms.unwrap();
    assert!(
        next > server_now && next <= server_now + 1000,
        "next {next} now {server_now}"
    );

    // A lock held by this process: its holder and since when.
    let locks = client(&server).await;
    let before = std::time::SystemTime::now();
    let guard = locks
        .lock("orders:42")
        .ttl(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    let held = inspector.locks("orders:*").await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].key, "orders:42");
    assert_eq!(held[0].owner.as_deref(), Some(soloist::owner_id()));
    assert!(["a", "b"].contains(&held[0].replica.as_deref().unwrap()));
    let since = held[0].since_ms.unwrap();
    let before_ms = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (before_ms - 5..=before_ms + 1000).contains(&since),
        "{since} vs {before_ms}"
    );
    assert!(held[0].ttl_ms.unwrap() > 8000);
    assert!(held[0].fence.unwrap() >= 1);
    guard.release().await.unwrap();
    assert!(inspector.locks("orders:*").await.unwrap().is_empty());

    // A holder from an earlier soloist, whose tokens were hex (a rolling
    // deploy has both kinds): the same owner, replica and time show.
    let old = format!(
        "{}.{:012x}.0123456789abcdef0123456789abcdef+",
        soloist::owner_id(),
        before_ms
    );
    server.cli(&["SET", "soloist:lock:{orders:43}", &old, "PX", "10000"]);
    let held = inspector.locks("orders:*").await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].owner.as_deref(), Some(soloist::owner_id()));
    assert!(["a", "b"].contains(&held[0].replica.as_deref().unwrap()));
    assert_eq!(held[0].since_ms, Some(before_ms));
    server.cli(&["DEL", "soloist:lock:{orders:43}"]);

    // Killed: no withdrawal, gone once its heartbeat runs out.
    a.kill();
    let killed = Instant::now();
    until("the killed replica gone", 3 * SECOND, async || {
        inspector.replicas().await.unwrap().len() == 1
    })
    .await;
    assert!(killed.elapsed() <= 2 * SECOND + Duration::from_millis(500));
    // Stopped cleanly: gone at once.
    b.stop().await;
    assert!(inspector.replicas().await.unwrap().is_empty());
}

/// Pause: neither replica claims a tick, and paused ticks do not run on
/// resume; a paused keyed job answers `Paused`. Trigger: one run across
/// the fleet, recorded as triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_trigger_hold_across_the_fleet() {
    let server = RedisServer::start();
    let ticks = Arc::new(AtomicU32::new(0));
    let yearly = Arc::new(AtomicU32::new(0));
    let yearly_job = |count: &Arc<AtomicU32>| {
        let count = count.clone();
        cron_job(
            JobSpec::cron("yearly", "0 0 0 1 1 *", "Europe/Berlin")
                .unwrap()
                .misfire(30 * SECOND),
            move |_ctx: JobContext| {
                count.fetch_add(1, Ordering::SeqCst);
                async {
                    sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(())
                }
            },
        )
    };
    let (ta, tb) = (ticks.clone(), ticks.clone());
    let (ya, yb) = (yearly.clone(), yearly.clone());
    let a = replica(&server, "a", move |b| {
        b.job(every_second("sweep", &ta))
            .job(yearly_job(&ya))
            .job(charge())
    })
    .await;
    let worker_b = Worker::builder(client(&server).await)
        .replica_id("b")
        .job(every_second("sweep", &tb))
        .job(yearly_job(&yb))
        .job(charge())
        .build()
        .unwrap();
    let handle = worker_b.handle();
    let b = Running::start(worker_b);
    let inspector = Inspector::new(&client(&server).await).unwrap();
    until("both announced", 5 * SECOND, async || {
        inspector.replicas().await.unwrap().len() == 2
    })
    .await;
    until("a tick ran", 5 * SECOND, async || {
        ticks.load(Ordering::SeqCst) > 0
    })
    .await;

    inspector.pause("sweep").await.unwrap();
    inspector.pause("charge").await.unwrap();
    // A tick whose claim began before the pause may still end.
    sleep(Duration::from_millis(1500)).await;
    let paused_at = ticks.load(Ordering::SeqCst);
    let history_at = inspector
        .runs(&RunFilter::job("sweep").limit(1000))
        .await
        .unwrap()
        .len();
    sleep(3 * SECOND).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        paused_at,
        "a paused job ran a tick"
    );
    assert!(
        inspector
            .jobs()
            .await
            .unwrap()
            .iter()
            .any(|j| j.decl.name == "sweep" && j.paused)
    );
    assert!(matches!(
        handle.run(charge(), "p1".to_owned()).await.unwrap(),
        RunOutcome::Paused
    ));
    assert_eq!(
        inspector.trigger("sweep").await.unwrap_err().to_string(),
        "job `sweep` is paused; resume it before triggering it"
    );

    assert!(inspector.resume("sweep").await.unwrap());
    assert!(inspector.resume("charge").await.unwrap());
    until("ticks run again", 5 * SECOND, async || {
        ticks.load(Ordering::SeqCst) > paused_at
    })
    .await;
    sleep(SECOND).await;
    // Paused ticks were passed over, not run late: each later run is a
    // tick after the resume.
    let runs = inspector
        .runs(&RunFilter::job("sweep").limit(1000))
        .await
        .unwrap();
    let new = &runs[..runs.len() - history_at];
    let resumed_ms = inspector.server_time().await.unwrap().timestamp_millis() - 2500;
    assert!(
        new.iter().all(|r| r.tick_ms.unwrap() >= resumed_ms - 1000),
        "{new:?}"
    );
    sleep(1100 * Duration::from_millis(1)).await;
    assert!(matches!(
        handle.run(charge(), "p1".to_owned()).await.unwrap(),
        RunOutcome::Completed(_)
    ));

    // Trigger: once across both replicas.
    let at = inspector.trigger("yearly").await.unwrap();
    until("the triggered run", 5 * SECOND, async || {
        yearly.load(Ordering::SeqCst) > 0
    })
    .await;
    sleep(3 * SECOND).await;
    assert_eq!(
        yearly.load(Ordering::SeqCst),
        1,
        "a trigger ran more than once"
    );
    let runs = inspector.runs(&RunFilter::job("yearly")).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].triggered && runs[0].tick_ms == Some(at.timestamp_millis()));
    assert_eq!(
        inspector.trigger("charge").await.unwrap_err().to_string(),
        "job `charge` is not a cron job; only cron jobs can be triggered"
    );
    assert_eq!(
        inspector.pause("nope").await.unwrap_err().to_string(),
        "no live replica runs job `nope`"
    );
    a.stop().await;
    b.stop().await;
}

/// Dead letters: listed with their reason, replayed onto the stream once
/// even when two operators replay at once, and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_replayed_once_and_purged() {
    let server = RedisServer::start();
    let source = StreamSource::builder("orders")
        .max_deliveries(1)
        .block(Duration::from_millis(100))
        .connect(&server.url())
        .await
        .unwrap();
    let worker = Worker::builder(client(&server).await)
        .replica_id("a")
        .consume(source, charge())
        .build()
        .unwrap();
    let handle = worker.handle();
    let a = Running::start(worker);
    let inspector = Inspector::new(&client(&server).await).unwrap();
    handle.enqueue(charge(), "bad".to_owned()).await.unwrap();
    handle.enqueue(charge(), "bad".to_owned()).await.unwrap();
    until(
        "both dead-lettered",
        10 * SECOND,
        async || matches!(inspector.dead_letters("orders", 10).await, Ok(dead) if dead.len() == 2),
    )
    .await;
    let queues = inspector.queues().await.unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(
        (queues[0].dead, queues[0].jobs.as_slice()),
        (2, &["charge".to_owned()][..])
    );
    let dead = inspector.dead_letters("orders", 10).await.unwrap();
    assert_eq!(dead[0].job.as_deref(), Some("charge"));
    assert_eq!(dead[0].key.as_deref(), Some("order:bad"));
    assert_eq!(
        dead[0].reason.as_deref(),
        Some("failed 1 times: card declined for bad")
    );
    // Paused, the consumer leaves the replayed entry in the stream.
    inspector.pause("charge").await.unwrap();
    sleep(1100 * Duration::from_millis(1)).await;

    let length = |s: &RedisServer| s.cli(&["XLEN", "orders"]).parse::<u64>().unwrap();
    let before = length(&server);
    let (one, two) = tokio::join!(
        inspector.replay_dead_letter("orders", &dead[0].id),
        inspector.replay_dead_letter("orders", &dead[0].id)
    );
    let replayed: Vec<_> = [one.unwrap(), two.unwrap()].into_iter().flatten().collect();
    assert_eq!(replayed.len(), 1, "replayed {replayed:?}");
    assert_eq!(length(&server), before + 1);
    let entry = server.cli(&["XRANGE", "orders", &replayed[0], &replayed[0]]);
    assert!(
        entry.contains("order:bad") && !entry.contains("declined"),
        "{entry}"
    );
    // An id given without its sequence number names the first entry of its
    // millisecond: that entry is the one replayed and deleted, once. A copy
    // of the last dead letter, alone in the next millisecond as `-1`.
    let last = server.cli(&["XREVRANGE", "{orders}:dead", "+", "-", "COUNT", "1"]);
    let mut lines = last.lines();
    let ms: u64 = lines
        .next()
        .and_then(|id| id.split('-').next()?.parse().ok())
        .expect("a dead letter left");
    let (short, copy) = ((ms + 1).to_string(), format!("{}-1", ms + 1));
    let mut add = vec!["XADD", "{orders}:dead", copy.as_str()];
    add.extend(lines);
    assert_eq!(server.cli(&add), copy);
    let first = inspector.replay_dead_letter("orders", &short).await;
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    let again = inspector.replay_dead_letter("orders", &short).await;
    assert!(matches!(again, Ok(None)), "replayed twice: {again:?}");
    assert_eq!(server.cli(&["XRANGE", "{orders}:dead", &copy, &copy]), "");
    assert_eq!(
        inspector.purge_dead_letters("orders", &[]).await.unwrap(),
        1
    );
    assert!(
        inspector
            .dead_letters("orders", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        inspector
            .dead_letters("nope", 10)
            .await
            .unwrap_err()
            .to_string(),
        "no live replica consumes stream `nope`"
    );
    a.stop().await;
}

/// 100,000 held locks under the prefix: inspecting them all takes a few
/// seconds, scans with `SCAN` (never `KEYS`), and the server keeps
/// answering others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspecting_100k_locks_neither_blocks_nor_crawls() {
    const LOCKS: usize = 100_000;
    let server = RedisServer::start();
    let redis = redis::Client::open(server.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let token = format!(
        "{}.{:012x}.{:032x}",
        soloist::owner_id(),
        1_700_000_000_000u64,
        7u128
    );
    for chunk in (0..LOCKS).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("soloist:lock:{{bulk:{i}}}"))
                .arg(&token)
                .arg("PX")
                .arg(600_000)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    server.cli(&["CONFIG", "RESETSTAT"]);
    let inspector = Inspector::new(&client(&server).await).unwrap();

    // Another client's pings, answered throughout.
    let pinging = tokio::spawn({
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        async move {
            let mut slowest = Duration::ZERO;
            let end = Instant::now() + 4 * SECOND;
            while Instant::now() < end {
                let sent = Instant::now();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .unwrap();
                slowest = slowest.max(sent.elapsed());
                sleep(Duration::from_millis(5)).await;
            }
            slowest
        }
    });
    let started = Instant::now();
    let locks = inspector.locks("bulk:*").await.unwrap();
    let took = started.elapsed();
    let slowest_ping = pinging.await.unwrap();
    eprintln!(
        "inspected {} locks in {took:?}; slowest concurrent PING {slowest_ping:?}",
        locks.len()
    );
    assert_eq!(locks.len(), LOCKS);
    assert!(
        locks
            .iter()
            .all(|l| l.owner.as_deref() == Some(soloist::owner_id()))
    );
    assert!(took < 10 * SECOND, "took {took:?}");
    assert!(
        slowest_ping < Duration::from_millis(250),
        "a PING waited {slowest_ping:?}"
    );
    let stats = server.cli(&["INFO", "commandstats"]);
    assert!(!stats.contains("cmdstat_keys:"), "{stats}");
    let scans: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .expect("SCAN was used");
    assert!(scans >= (LOCKS / 1000) as u64, "{scans} SCAN calls");
}

/// On a Redis Cluster: the history, the registry, locks on every primary,
/// and a trigger, as on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspection_covers_every_primary_of_a_cluster() {
    let cluster = soloist_testkit::RedisCluster::start();
    let connect = async || {
        LockClient::cluster(cluster.urls())
            .await
            .expect("cluster client")
    };
    let ticks = Arc::new(AtomicU32::new(0));
    let yearly = Arc::new(AtomicU32::new(0));
    let counter = yearly.clone();
    let worker = Worker::builder(connect().await)
        .replica_id("c1")
        .heartbeat(2 * SECOND)
        .job(every_second("sweep", &ticks))
        .job(cron_job(
            JobSpec::cron("yearly", "0 0 0 1 1 *", "UTC").unwrap(),
            move |_ctx: JobContext| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(()) }
            },
        ))
        .job(charge())
        .build()
        .unwrap();
    let handle = worker.handle();
    let running = Running::start(worker);
    let inspector = Inspector::new(&connect().await).unwrap();
    until("the replica announced", 5 * SECOND, async || {
        inspector.replicas().await.unwrap().len() == 1
    })
    .await;
    for i in 0..20 {
        handle.run(charge(), format!("c{i}")).await.unwrap();
    }
    until("a tick recorded", 5 * SECOND, async || {
        !inspector
            .runs(&RunFilter::job("sweep"))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    until("keyed runs recorded", 5 * SECOND, async || {
        inspector
            .runs(&RunFilter::job("charge"))
            .await
            .unwrap()
            .len()
            == 20
    })
    .await;

    let locks = connect().await;
    let mut guards = Vec::new();
    for i in 0..300 {
        guards.push(
            locks
                .lock(format!("spread:{i}"))
                .ttl(10 * SECOND)
                .acquire()
                .await
                .unwrap(),
        );
    }
    let primaries_used: std::collections::HashSet<_> = (0..300)
        .map(|i| {
            cluster
                .primary_for_slot(soloist::hash_slot(&format!("spread:{i}")))
                .port()
        })
        .collect();
    assert!(
        primaries_used.len() > 1,
        "locks spread over one primary only"
    );
    let held = inspector.locks("spread:*").await.unwrap();
    assert_eq!(held.len(), 300);
    assert!(held.iter().all(|l| l.replica.as_deref() == Some("c1")));

    inspector.trigger("yearly").await.unwrap();
    until("the triggered run", 5 * SECOND, async || {
        yearly.load(Ordering::SeqCst) == 1
    })
    .await;
    until("its record", 5 * SECOND, async || {
        inspector
            .runs(&RunFilter::job("yearly"))
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    drop(guards);
    running.stop().await;
}

/// Ticks due before a resume are passed over for good, whether a replica
/// was up to see them paused or not: a replica started after the resume,
/// with a catch-up policy, runs none of them; ticks missed after the
/// resume are caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_ticks_are_not_caught_up_after_resume() {
    let server = RedisServer::start();
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let job = |runs: &Arc<std::sync::Mutex<Vec<i64>>>| {
        let runs = runs.clone();
        cron_job(
            JobSpec::cron("catchup", "* * * * * *", "UTC")
                .unwrap()
                .misfire(Duration::from_millis(500))
                .missed(soloist::MissedTicks::CatchUp(100)),
            move |ctx: JobContext| {
                runs.lock()
                    .unwrap()
                    .push(ctx.scheduled_at().unwrap().timestamp_millis());
                async { Ok::<_, std::io::Error>(()) }
            },
        )
    };
    let inspector = Inspector::new(&client(&server).await).unwrap();
    let first = replica(&server, "a", |b| b.job(job(&runs))).await;
    until("a tick ran", 5 * SECOND, async || {
        !runs.lock().unwrap().is_empty()
    })
    .await;
    inspector.pause("catchup").await.unwrap();
    let paused_at = inspector.server_time().await.unwrap().timestamp_millis();
    // Paused with a replica up, then with none.
    sleep(2 * SECOND).await;
    first.stop().await;
    sleep(2 * SECOND).await;
    assert!(inspector.resume("catchup").await.unwrap());
    let resumed_at = inspector.server_time().await.unwrap().timestamp_millis();
    // Down after the resume: these ticks are missed, and caught up.
    sleep(2 * SECOND).await;
    let second = replica(&server, "b", |b| b.job(job(&runs))).await;
    sleep(3 * SECOND).await;
    second.stop().await;
    let runs = runs.lock().unwrap().clone();
    let paused: Vec<_> = runs
        .iter()
        .filter(|&&tick| tick > paused_at + 1000 && tick <= resumed_at)
        .collect();
    assert!(
        paused.is_empty(),
        "ran ticks of the pause {paused:?} of {runs:?}"
    );
    let missed_after = runs
        .iter()
        .filter(|&&tick| tick > resumed_at && tick < resumed_at + 1500)
        .count();
    assert!(
        missed_after >= 1,
        "ticks missed after the resume not caught up: {runs:?}"
    );
}

/// A keyed run's and a consumed message's history entry cost no request of
/// their own: on one server the release's script writes them (`MONITOR`
/// shows every history `XADD` run by a script, none sent by a client).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_rides_on_the_release_on_one_server() {
    let server = RedisServer::start();
    let source = StreamSource::builder("orders")
        .block(Duration::from_millis(100))
        .connect(&server.url())
        .await
        .unwrap();
    let worker = Worker::builder(client(&server).await)
        .replica_id("m")
        .consume(source, charge())
        .build()
        .unwrap();
    let handle = worker.handle();
    let running = Running::start(worker);
    let monitor = common::Monitor::start(server.port());
    for i in 0..10 {
        handle.run(charge(), format!("m{i}")).await.unwrap();
    }
    handle.run(charge(), "bad".to_owned()).await.unwrap();
    handle.enqueue(charge(), "q1".to_owned()).await.unwrap();
    let inspector = Inspector::new(&client(&server).await).unwrap();
    until("every run recorded", 10 * SECOND, async || {
        inspector
            .runs(&RunFilter::job("charge"))
            .await
            .unwrap()
            .len()
            == 12
    })
    .await;
    running.stop().await;
    let lines = monitor.lines();
    let entries: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("] \"XADD\" \"soloist:runs:{charge}\""))
        .collect();
    assert_eq!(entries.len(), 12, "{entries:#?}");
    assert!(
        entries.iter().all(|line| line.contains(" lua] ")),
        "a history entry was sent on its own: {entries:#?}"
    );
}

/// On a cluster, where the history is in another slot than a run's key,
/// every run's entry is written all the same (sent beside the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_rides_on_the_release_on_a_cluster() {
    let cluster = soloist_testkit::RedisCluster::start();
    let locks = LockClient::cluster(cluster.urls()).await.unwrap();
    let worker = Worker::builder(locks.clone())
        .replica_id("c")
        .job(charge())
        .build()
        .unwrap();
    let handle = worker.handle();
    let running = Running::start(worker);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let slots: std::collections::HashSet<u16> = keys
        .iter()
        .map(|k| soloist::hash_slot(&format!("job:charge:order:{k}")))
        .collect();
    assert!(slots.len() > 10, "keys spread over slots");
    for key in &keys {
        handle.run(charge(), key.clone()).await.unwrap();
    }
    handle.run(charge(), "bad".to_owned()).await.unwrap();
    let inspector = Inspector::new(&locks).unwrap();
    until("every run recorded", 10 * SECOND, async || {
        inspector
            .runs(&RunFilter::job("charge"))
            .await
            .unwrap()
            .len()
            == 41
    })
    .await;
    let failed = inspector
        .runs(&RunFilter::job("charge").outcome("failure"))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    running.stop().await;
}
