//! The worker runtime on a real Redis Cluster (three primaries, a replica
//! each): cron ticks once across a fleet, through the failover of the
//! primary that holds the job's keys, and once when its effect is refused;
//! keyed jobs deduplicated across slots, with effects committed beside
//! their record (`JobContext::colocated`) and cross-slot effects refused;
//! a stream consumed, dead-lettered and trimmed; and a migration of the
//! stream's slot while it is drained.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use soloist::{
    BoxError, Deployment, JobContext, JobSpec, KeyedJob, LockClient, LockError, RunOutcome,
    StreamSource, Worker, WorkerError, WorkerHandle, colocated, cron_job, hash_slot, keyed_job,
    redis,
};
use soloist_testkit::RedisCluster;

mod common;

use common::{Running, handle};

const SECOND: Duration = Duration::from_secs(1);

async fn locks(cluster: &RedisCluster) -> LockClient {
    LockClient::cluster(cluster.urls())
        .await
        .expect("connect to the cluster")
}

/// Polls `done` every 50 ms for up to `limit`; whether it came true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// Every run of the cron job: (tick, fence).
type Ticks = Arc<Mutex<Vec<(DateTime<Utc>, u64)>>>;

fn ticks_after(runs: &Ticks, after: DateTime<Utc>) -> usize {
    runs.lock()
        .unwrap()
        .iter()
        .filter(|(tick, _)| *tick > after)
        .count()
}

/// Three workers, each with its own cluster client, run an every-second job:
/// each tick runs once, with rising fences. Then the primary holding the
/// job's keys is killed: the ticks of the failover may be skipped or run
/// late, but none runs twice, fences keep rising, and ticks resume after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_run_once_through_a_failover() {
    let mut cluster = RedisCluster::start();
    let runs: Ticks = Arc::default();
    let mut workers = Vec::new();
    for name in ["a", "b", "c"] {
        let log = runs.clone();
        let job = cron_job(
            JobSpec::cron("heartbeat", "* * * * * *", "UTC")
                .unwrap()
                .ttl(5 * SECOND),
            move |ctx: JobContext| {
                let log = log.clone();
                async move {
                    let tick = ctx.scheduled_at().expect("cron runs have a tick");
                    log.lock().unwrap().push((tick, ctx.fence()));
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        let worker = Worker::builder(locks(&cluster).await)
            .replica_id(name)
            .job(job)
            .build()
            .unwrap();
        workers.push(Running::start(worker));
    }
    // The tick locks, the fence counter and the records all hash to the tag
    // `{heartbeat}`.
    let slot = hash_slot("heartbeat");
    let started = Utc::now();
    assert!(
        eventually(15 * SECOND, || ticks_after(&runs, started) >= 4).await,
        "four ticks did not run: {:?}",
        runs.lock().unwrap()
    );
    let before: Vec<(DateTime<Utc>, u64)> = {
        let mut before = runs.lock().unwrap().clone();
        before.sort();
        before
    };
    for pair in before.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            TimeDelta::seconds(1),
            "ticks skipped or run twice before the failover: {before:?}"
        );
        assert!(
            pair[0].1 < pair[1].1,
            "fences do not rise with the ticks: {before:?}"
        );
    }

    let failover = tokio::task::block_in_place(|| cluster.kill_primary_of(slot));
    let recovered = Utc::now();
    assert!(
        eventually(15 * SECOND, || ticks_after(&runs, recovered) >= 3).await,
        "ticks did not resume after the failover ({:?}): {:?}",
        failover.elapsed,
        runs.lock().unwrap()
    );
    for worker in workers {
        worker.stop().await;
    }

    let mut runs = runs.lock().unwrap().clone();
    runs.sort();
    let mut per_tick: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for (tick, _) in &runs {
        *per_tick.entry(*tick).or_default() += 1;
    }
    let doubles: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "ticks run twice: {doubles:?}");
    // The ticks of the failover are claimed late, each on its own retry
    // timer, so they may run in any order among themselves: fences follow
    // the order of the runs. Before and after, they follow the ticks.
    let fences: HashSet<u64> = runs.iter().map(|(_, fence)| *fence).collect();
    assert_eq!(
        fences.len(),
        runs.len(),
        "a fence was issued twice: {runs:?}"
    );
    let highest_before = before.last().expect("ticks ran before the failover").1;
    let after: Vec<_> = runs.iter().filter(|(tick, _)| *tick > recovered).collect();
    assert!(
        runs.iter()
            .filter(|run| !before.contains(run))
            .all(|(_, fence)| *fence > highest_before),
        "a run after the kill has a lower fence than one before it: {runs:?}"
    );
    assert!(
        after.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "fences do not rise with the ticks after the failover: {runs:?}"
    );
    eprintln!(
        "{} ticks ran; failover of slot {slot} took {:?}",
        runs.len(),
        failover.elapsed
    );
}

/// A cron job whose committed effect touches a key in another slot than
/// its records: the effect is refused, nothing is applied, and the tick is
/// still done: no peer runs it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_tick_whose_effect_is_refused_runs_once() {
    let cluster = RedisCluster::start();
    let runs: Ticks = Arc::default();
    let mut workers = Vec::new();
    for name in ["a", "b"] {
        let log = runs.clone();
        let job = cron_job(
            JobSpec::cron("misrouted", "* * * * * *", "UTC").unwrap(),
            move |ctx: JobContext| {
                let log = log.clone();
                async move {
                    let tick = ctx.scheduled_at().expect("cron runs have a tick");
                    log.lock().unwrap().push((tick, ctx.fence()));
                    let mut elsewhere = redis::cmd("INCR");
                    elsewhere.arg("ticks");
                    ctx.commit_on_success(elsewhere);
                    Ok::<_, std::io::Error>(())
                }
            },
        );
        let worker = Worker::builder(locks(&cluster).await)
            .replica_id(name)
            .job(job)
            .build()
            .unwrap();
        workers.push(Running::start(worker));
    }
    assert_ne!(hash_slot("ticks"), hash_slot("misrouted"));
    let started = Utc::now();
    assert!(
        eventually(15 * SECOND, || ticks_after(&runs, started) >= 3).await,
        "three ticks did not run"
    );
    // Time for a peer to take a tick over, were it left undone.
    tokio::time::sleep(SECOND).await;
    for worker in workers {
        worker.stop().await;
    }
    let runs = runs.lock().unwrap().clone();
    let ticks: HashSet<_> = runs.iter().map(|(tick, _)| *tick).collect();
    assert_eq!(ticks.len(), runs.len(), "ticks run twice: {runs:?}");
    assert_eq!(cluster.cli(&["GET", "ticks"]), "", "no effect applied");
    let (tick, _) = runs[0];
    let marker = format!(
        "soloist:fenced:=cron:{{misrouted}}:{}",
        tick.timestamp_millis()
    );
    assert_eq!(
        cluster.cli(&["HGET", &marker, "value"]),
        "failure",
        "the tick is recorded as failed"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    invoice: u64,
    charged_by: String,
    fence: u64,
}

/// The name of a keyed run's dedupe record, under which its lock lives
/// too: `JobContext::colocated` names keys in its hash slot.
fn record(job: &str, key: &str) -> String {
    format!("job:{job}:{key}")
}

/// The same invoices, submitted from two workers at once, each run once:
/// both get the recorded receipt, and the charge committed beside the
/// record is applied once. An effect on a key in another slot is refused
/// before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_jobs_dedupe_across_slots_and_commit_beside_their_record() {
    let cluster = RedisCluster::start();
    let (a, b) = (
        handle(locks(&cluster).await, "a"),
        handle(locks(&cluster).await, "b"),
    );
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let counter = runs.clone();
    let charge = keyed_job(
        JobSpec::keyed("charge", "invoice:{invoice}")
            .unwrap()
            .dedupe(60 * SECOND)
            .wait(20 * SECOND),
        |invoice: &u64| format!("invoice:{invoice}"),
        move |ctx: JobContext, invoice: u64| {
            let counter = counter.clone();
            async move {
                *counter.lock().unwrap().entry(invoice).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut paid = redis::cmd("INCRBY");
                paid.arg(ctx.colocated(":paid").expect("a plain key"))
                    .arg(10);
                ctx.commit_on_success(paid);
                Ok::<_, std::io::Error>(Receipt {
                    invoice,
                    charged_by: ctx.replica().to_owned(),
                    fence: ctx.fence(),
                })
            }
        },
    );
    let invoices: Vec<u64> = (1..=24).collect();
    let slots: HashSet<u16> = invoices
        .iter()
        .map(|n| hash_slot(&record("charge", &format!("invoice:{n}"))))
        .collect();
    let owners: HashSet<u16> = slots
        .iter()
        .map(|slot| cluster.primary_for_slot(*slot).port())
        .collect();
    assert!(slots.len() >= 20, "the invoices share slots: {slots:?}");
    assert_eq!(owners.len(), 3, "every primary holds some invoices");

    let outcomes = futures::future::join_all(invoices.iter().map(|&invoice| {
        let (a, b, charge) = (&a, &b, &charge);
        async move {
            (
                invoice,
                tokio::join!(a.run(charge, invoice), b.run(charge, invoice)),
            )
        }
    }))
    .await;
    for (invoice, (first, second)) in outcomes {
        let (first, second) = (first.unwrap(), second.unwrap());
        let (original, duplicate) = match (first, second) {
            (RunOutcome::Completed(original), RunOutcome::Duplicate(duplicate))
            | (RunOutcome::Duplicate(duplicate), RunOutcome::Completed(original)) => {
                (original, duplicate)
            }
            other => panic!("invoice {invoice}: expected one run and one duplicate, got {other:?}"),
        };
        assert_eq!(original, duplicate, "invoice {invoice}");
        assert_eq!(original.invoice, invoice);
        let paid = colocated(&record("charge", &format!("invoice:{invoice}")), ":paid").unwrap();
        assert_eq!(cluster.cli(&["GET", &paid]), "10", "invoice {invoice}");
    }
    assert!(
        runs.lock().unwrap().values().all(|&n| n == 1),
        "a body ran twice: {:?}",
        runs.lock().unwrap()
    );
    // Later submissions get the record, from either worker.
    match b.run(&charge, 3).await.unwrap() {
        RunOutcome::Duplicate(receipt) => assert_eq!(receipt.invoice, 3),
        other => panic!("expected Duplicate, got {other:?}"),
    }

    // `balances` is in another slot than the run's record.
    assert_ne!(
        hash_slot("balances"),
        hash_slot(&record("misrouted", "invoice:1"))
    );
    let misrouted = keyed_job(
        JobSpec::keyed("misrouted", "invoice:{invoice}")
            .unwrap()
            .dedupe(60 * SECOND),
        |invoice: &u64| format!("invoice:{invoice}"),
        |ctx: JobContext, invoice: u64| async move {
            let mut elsewhere = redis::cmd("INCRBY");
            elsewhere.arg("balances").arg(10);
            ctx.commit_on_success(elsewhere);
            Ok::<_, std::io::Error>(invoice)
        },
    );
    match a.run(&misrouted, 1).await {
        Err(WorkerError::Lock(LockError::InvalidArgument {
            name: "effects",
            reason,
        })) => {
            assert!(reason.contains("`balances`"), "{reason}");
            assert!(reason.contains("hash slot"), "{reason}");
        }
        other => panic!("expected the effect to be refused, got {other:?}"),
    }
    assert_eq!(cluster.cli(&["GET", "balances"]), "", "no effect applied");
    assert_eq!(
        cluster.cli(&["EXISTS", "soloist:fenced:{job:misrouted:invoice:1}"]),
        "0",
        "no record written"
    );
    assert_eq!(
        cluster.cli(&["EXISTS", "soloist:lock:{job:misrouted:invoice:1}"]),
        "0",
        "the key was released"
    );
}

/// Per order id, how many times the body ran.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// The job's effect, `INCR` of a key beside the run's record, committed
/// with its success: applied once however often the message is delivered.
/// Ids starting with `poison` always fail.
fn apply(runs: &Runs, takes: Duration) -> impl KeyedJob<Args = String, Output = u64> + use<> {
    let runs = runs.clone();
    keyed_job(
        JobSpec::keyed("apply", "order:{id}")
            .expect("spec")
            .ttl(5 * SECOND)
            .dedupe(3600 * SECOND),
        |id: &String| format!("order:{id}"),
        move |ctx: JobContext, id: String| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(id.clone()).or_default() += 1;
                tokio::time::sleep(takes).await;
                if id.starts_with("poison") {
                    return Err(BoxError::from(format!("cannot apply {id}")));
                }
                let mut effect = redis::cmd("INCR");
                effect.arg(ctx.colocated(":applied").expect("a plain key"));
                ctx.commit_on_success(effect);
                Ok(ctx.fence())
            }
        },
    )
}

/// The key `apply` increments for order `id`, as `JobContext::colocated`
/// names it.
fn applied(id: &str) -> String {
    colocated(&record("apply", &format!("order:{id}")), ":applied").unwrap()
}

async fn orders(cluster: &RedisCluster, consumer: &str) -> StreamSource {
    StreamSource::builder("orders")
        .consumer(consumer)
        .visibility_timeout(Duration::from_millis(500))
        .max_deliveries(3)
        .block(Duration::from_millis(100))
        .retain_acknowledged(5)
        .open(Deployment::cluster(cluster.urls()))
        .await
        .expect("stream source")
}

async fn consumer(cluster: &RedisCluster, name: &str, runs: &Runs, takes: Duration) -> Running {
    let worker = Worker::builder(locks(cluster).await)
        .replica_id(name)
        .consume(orders(cluster, name).await, apply(runs, takes))
        .build()
        .expect("worker");
    Running::start(worker)
}

/// A worker that only enqueues.
async fn producer(cluster: &RedisCluster, runs: &Runs) -> WorkerHandle {
    Worker::builder(locks(cluster).await)
        .consume(
            orders(cluster, "producer").await,
            apply(runs, Duration::ZERO),
        )
        .build()
        .expect("producer")
        .handle()
}

/// How many entries the group has delivered and not acknowledged.
fn pending(cluster: &RedisCluster) -> String {
    cluster
        .cli(&["XPENDING", "orders", "soloist"])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn ran(runs: &Runs, ids: &[String]) -> bool {
    let runs = runs.lock().unwrap();
    ids.iter().all(|id| runs.contains_key(id))
}

fn assert_applied_once(cluster: &RedisCluster, runs: &Runs, ids: &[String]) {
    let runs = runs.lock().unwrap();
    for id in ids {
        assert_eq!(runs.get(id), Some(&1), "order {id}: runs {runs:?}");
        assert_eq!(cluster.cli(&["GET", &applied(id)]), "1", "order {id}");
    }
}

/// Two consumers drain a stream on the cluster: each order runs once, the
/// poison message is dead-lettered to `{orders}:dead` with its fields after
/// three runs, and a consumer that starts trims what the group finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_drained_dead_lettered_and_trimmed() {
    let cluster = RedisCluster::start();
    let runs: Runs = Arc::default();
    let handle = producer(&cluster, &runs).await;
    let ids: Vec<String> = (0..24).map(|n| format!("o{n}")).collect();
    for id in ids.iter().chain([&"poison".to_owned()]) {
        handle
            .enqueue(apply(&runs, Duration::ZERO), id.clone())
            .await
            .unwrap();
    }
    assert_eq!(cluster.cli(&["XLEN", "orders"]), "25");
    let consumers = [
        consumer(&cluster, "one", &runs, Duration::from_millis(5)).await,
        consumer(&cluster, "two", &runs, Duration::from_millis(5)).await,
    ];
    let drained = eventually(30 * SECOND, || {
        ran(&runs, &ids)
            && cluster.cli(&["XLEN", "{orders}:dead"]) == "1"
            && pending(&cluster) == "0"
    })
    .await;
    assert!(
        drained,
        "not drained: runs {:?}, pending {}, dead letters {}",
        runs.lock().unwrap(),
        pending(&cluster),
        cluster.cli(&["XLEN", "{orders}:dead"])
    );
    for consumer in consumers {
        consumer.stop().await;
    }
    assert_applied_once(&cluster, &runs, &ids);
    assert_eq!(
        runs.lock().unwrap().get("poison"),
        Some(&3),
        "the poison message ran max_deliveries times"
    );
    let dead = cluster.cli(&["XRANGE", "{orders}:dead", "-", "+"]);
    let fields: Vec<&str> = dead.lines().collect();
    let field = |name: &str| {
        fields
            .iter()
            .position(|line| *line == name)
            .and_then(|at| fields.get(at + 1))
            .copied()
            .unwrap_or_else(|| panic!("no field `{name}` in the dead letter: {dead}"))
    };
    assert_eq!(field("job"), "apply");
    assert_eq!(field("key"), "order:poison");
    assert_eq!(field("args"), "\"poison\"");
    assert_eq!(field("deliveries"), "3");
    assert!(
        field("reason").contains("failed 3 times: cannot apply poison"),
        "{dead}"
    );
    assert_eq!(
        cluster.cli(&["EXISTS", "{orders}:soloist:attempts"]),
        "0",
        "attempts are forgotten once entries are done with"
    );
    assert_eq!(
        hash_slot("{orders}:dead"),
        hash_slot("orders"),
        "the dead letters live beside the stream"
    );

    // A consumer that starts trims on its first acknowledgement: the
    // newest five finished entries stay, and the one just finished.
    handle
        .enqueue(apply(&runs, Duration::ZERO), "late".to_owned())
        .await
        .unwrap();
    let third = consumer(&cluster, "three", &runs, Duration::ZERO).await;
    let late = ["late".to_owned()];
    assert!(
        eventually(20 * SECOND, || ran(&runs, &late)
            && pending(&cluster) == "0")
        .await,
        "the late order did not run"
    );
    third.stop().await;
    assert_applied_once(&cluster, &runs, &late);
    let length: u64 = cluster.cli(&["XLEN", "orders"]).parse().unwrap();
    assert!(length <= 6, "the stream kept {length} entries");
}

/// The stream's slot moves to another primary while two consumers drain
/// it and a producer keeps adding: first the slot is opened, then one key
/// moves (the stream and its dead letters apart, while a poison message
/// runs, is counted and is dead-lettered), then the rest, then the slot is
/// handed over. Nothing is lost, nothing runs or applies twice, and the
/// poison messages reach the dead letters after three runs each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_slot_migrates_while_it_is_drained() {
    let cluster = RedisCluster::start();
    let runs: Runs = Arc::default();
    let handle = producer(&cluster, &runs).await;
    let mut ids: Vec<String> = (0..40).map(|n| format!("o{n}")).collect();
    for id in &ids {
        handle
            .enqueue(apply(&runs, Duration::ZERO), id.clone())
            .await
            .unwrap();
    }
    let mut consumers = Vec::new();
    for name in ["one", "two"] {
        let worker = Worker::builder(locks(&cluster).await)
            .replica_id(name)
            .max_in_flight(2)
            .consume(
                orders(&cluster, name).await,
                apply(&runs, Duration::from_millis(20)),
            )
            .build()
            .expect("worker");
        consumers.push(Running::start(worker));
    }
    // A first poison message leaves the dead-letter stream in the slot, so
    // that the slot holds two keys to move apart.
    handle
        .enqueue(apply(&runs, Duration::ZERO), "poison".to_owned())
        .await
        .unwrap();
    assert!(
        eventually(20 * SECOND, || cluster.cli(&["XLEN", "{orders}:dead"])
            == "1")
        .await,
        "the first poison message was not dead-lettered"
    );
    let slot = hash_slot("orders");
    let to = cluster.other_primary(slot);
    let (stop_producing, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let producing = {
        let handle = handle.clone();
        let runs = runs.clone();
        tokio::spawn(async move {
            handle
                .enqueue(apply(&runs, Duration::ZERO), "poison2".to_owned())
                .await
                .unwrap();
            let mut ids = Vec::new();
            for n in 40.. {
                let id = format!("o{n}");
                handle
                    .enqueue(apply(&runs, Duration::ZERO), id.clone())
                    .await
                    .unwrap();
                ids.push(id);
                tokio::select! {
                    _ = &mut stopped => return ids,
                    () = tokio::time::sleep(Duration::from_millis(15)) => {}
                }
            }
            ids
        })
    };
    let moved = tokio::task::block_in_place(|| {
        let migration = cluster.begin_migration(slot, to);
        std::thread::sleep(Duration::from_millis(200));
        let mut moved = migration.move_keys(1);
        // Long enough for the second poison message's three runs.
        std::thread::sleep(Duration::from_millis(1500));
        moved += migration.move_all_keys();
        std::thread::sleep(Duration::from_millis(400));
        migration.finish();
        moved
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_producing.send(());
    ids.extend(producing.await.expect("producer"));
    let drained = eventually(30 * SECOND, || {
        ran(&runs, &ids)
            && pending(&cluster) == "0"
            && cluster.cli(&["XLEN", "{orders}:dead"]) == "2"
    })
    .await;
    assert!(
        drained,
        "not drained: {} of {} ran, pending {}, dead letters {}",
        runs.lock().unwrap().len(),
        ids.len() + 2,
        pending(&cluster),
        cluster.cli(&["XLEN", "{orders}:dead"])
    );
    for consumer in consumers {
        consumer.stop().await;
    }
    assert_eq!(
        to.cli(&["EXISTS", "orders"]),
        "1",
        "the stream lives on its new primary"
    );
    assert_applied_once(&cluster, &runs, &ids);
    assert_eq!(
        cluster.cli(&["HLEN", "{orders}:soloist:attempts"]),
        "0",
        "attempts are forgotten once entries are done with"
    );
    for poison in ["poison", "poison2"] {
        assert_eq!(runs.lock().unwrap().get(poison), Some(&3), "{poison}");
    }
    let dead = cluster.cli(&["XRANGE", "{orders}:dead", "-", "+"]);
    assert!(dead.contains("order:poison2"), "{dead}");
    eprintln!(
        "{} orders; {moved} keys moved with slot {slot}; dead letters: {}",
        ids.len(),
        dead.replace('\n', " ")
    );
}
