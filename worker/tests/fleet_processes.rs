//! The fleet test: five worker processes on one redis-server, replicas
//! SIGKILLed and restarted at random for a minute while a one-second cron
//! job and a keyed job hammered with duplicates run.
//!
//! Every tick in the window must end in exactly one completed run, runs of
//! one tick must never overlap, and a tick taken over after a kill must
//! carry a higher fence; every key of the keyed job must be charged once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::seq::SliceRandom;
use redis::AsyncCommands;
use soloist::{JobContext, JobSpec, LockClient, RunOutcome, Worker, cron_job, keyed_job};
use soloist_testkit::{ChildProcess, RedisServer, child_role, send_to_parent};

const TEST: &str = "replicas_killed_at_random_still_run_each_tick_and_key_once";
const REPLICAS: usize = 5;
const KEYS: u64 = 40;

/// One run of a tick, from the job's log.
#[derive(Debug, Clone)]
struct Run {
    replica: String,
    fence: u64,
    /// When it started, in Unix milliseconds.
    started: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// One replica: a worker running the cron job, and a loop charging every
/// key until each is charged (here or anywhere).
async fn replica(url: String, id: String) {
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let log = client
        .get_multiplexed_async_connection()
        .await
        .expect("log connection");
    let cron_log = log.clone();
    let ticks = cron_job(
        JobSpec::cron("tick", "* * * * * *", "UTC")
            .expect("spec")
            .ttl(Duration::from_millis(900))
            .misfire(Duration::from_secs(5)),
        move |ctx: JobContext| {
            let mut log = cron_log.clone();
            async move {
                let tick = ctx.scheduled_at().map_or(0, |at| at.timestamp());
                let entry = |event: &str| {
                    format!(
                        "{event} {tick} {} {} {}",
                        ctx.replica(),
                        ctx.fence(),
                        now_ms()
                    )
                };
                log.rpush::<_, _, ()>("cron", entry("start")).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                log.rpush::<_, _, ()>("cron", entry("end")).await?;
                Ok::<_, redis::RedisError>(())
            }
        },
    );
    let keyed_log = log.clone();
    let charge = keyed_job(
        JobSpec::keyed("charge", "key:{n}")
            .expect("spec")
            .ttl(Duration::from_millis(900))
            .dedupe(Duration::from_secs(3600)),
        |n: &u64| format!("key:{n}"),
        move |ctx: JobContext, n: u64| {
            let mut log = keyed_log.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                log.rpush::<_, _, ()>("charged", format!("{n} {} {}", ctx.replica(), ctx.fence()))
                    .await?;
                Ok::<_, redis::RedisError>(n)
            }
        },
    );
    let locks = LockClient::connect(&url).await.expect("connect");
    let worker = Worker::builder(locks)
        .replica_id(id)
        .job(ticks)
        .build()
        .expect("worker");
    let handle = worker.handle();
    tokio::spawn(async move {
        let mut keys: Vec<u64> = (0..KEYS).collect();
        loop {
            keys.shuffle(&mut rand::rng());
            for &n in &keys {
                loop {
                    match handle.run(&charge, n).await {
                        Ok(RunOutcome::Completed(_) | RunOutcome::Duplicate(_)) => break,
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        }
    });
    send_to_parent("ready");
    worker
        .run_until(std::future::pending::<()>())
        .await
        .expect("worker");
}

#[test]
fn replicas_killed_at_random_still_run_each_tick_and_key_once() {
    if child_role().as_deref() == Some("replica") {
        let url = std::env::var("REDIS_URL").expect("REDIS_URL");
        let id = std::env::var("REPLICA_ID").expect("REPLICA_ID");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(replica(url, id));
        return;
    }
    let server = RedisServer::start();
    let url = server.url();
    let spawn = |i: usize| {
        let id = format!("r{i}");
        let mut child =
            ChildProcess::spawn(TEST, "replica", &[("REDIS_URL", &url), ("REPLICA_ID", &id)]);
        assert_eq!(child.read_line(), "ready");
        child
    };
    let mut replicas: Vec<Option<ChildProcess>> = (0..REPLICAS).map(|i| Some(spawn(i))).collect();
    let started = now_ms();
    let mut kills: Vec<(String, u64)> = Vec::new();
    let next = || rand::random::<u32>() as usize;
    while now_ms() - started < 60_000 {
        std::thread::sleep(Duration::from_millis(1000 + (next() % 2000) as u64));
        let victim = next() % REPLICAS;
        let alive = replicas.iter().filter(|r| r.is_some()).count();
        match replicas[victim].take() {
            Some(mut child) if alive > 1 => {
                child.kill();
                kills.push((format!("r{victim}"), now_ms()));
            }
            Some(child) => replicas[victim] = Some(child),
            None => replicas[victim] = Some(spawn(victim)),
        }
    }
    // Let the last ticks finish, then stop everything.
    std::thread::sleep(Duration::from_secs(3));
    let ended = now_ms();
    drop(replicas);
    assert!(kills.len() >= 10, "only {} kills", kills.len());

    let killed_after = |replica: &str, at: u64| {
        kills
            .iter()
            .filter(|(who, when)| who == replica && *when >= at)
            .map(|(_, when)| *when)
            .min()
    };
    // Cron: per tick, the runs in start order.
    let mut ticks: BTreeMap<u64, Vec<Run>> = BTreeMap::new();
    let log = server.cli(&["LRANGE", "cron", "0", "-1"]);
    let mut ends: HashMap<(u64, String, u64), u64> = HashMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (tick, replica, fence, at) = (
            f[1].parse().unwrap(),
            f[2].to_owned(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        match f[0] {
            "start" => ticks.entry(tick).or_default().push(Run {
                replica,
                fence,
                started: at,
            }),
            _ => {
                ends.insert((tick, replica, fence), at);
            }
        }
    }
    let window = (started / 1000 + 3)..(ended / 1000 - 8);
    for tick in window.clone() {
        let runs = ticks.get(&tick).cloned().unwrap_or_default();
        let completed: Vec<_> = runs
            .iter()
            .filter(|run| ends.contains_key(&(tick, run.replica.clone(), run.fence)))
            .collect();
        assert_eq!(
            completed.len(),
            1,
            "tick {tick}: completed runs {completed:?} of {runs:?}"
        );
        for pair in runs.windows(2) {
            let (first, second) = (&pair[0], &pair[1]);
            let first_end = ends
                .get(&(tick, first.replica.clone(), first.fence))
                .copied()
                .or_else(|| killed_after(&first.replica, first.started))
                .unwrap_or(u64::MAX);
            assert!(
                second.started >= first_end,
                "tick {tick}: runs overlap: {runs:?}"
            );
            assert!(
                second.fence > first.fence,
                "tick {tick}: fences do not increase: {runs:?}"
            );
        }
    }
    // Keyed: every key charged exactly once.
    let charged = server.cli(&["LRANGE", "charged", "0", "-1"]);
    let mut per_key: BTreeMap<u64, usize> = BTreeMap::new();
    for line in charged.lines() {
        let n: u64 = line.split(' ').next().unwrap().parse().unwrap();
        *per_key.entry(n).or_default() += 1;
    }
    assert_eq!(
        per_key.len() as u64,
        KEYS,
        "not every key was charged: {per_key:?}"
    );
    let twice: Vec<_> = per_key.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "keys charged twice: {twice:?}");
    eprintln!(
        "{} kills, {} ticks checked, {} cron runs, {} keys charged once",
        kills.len(),
        window.count(),
        ticks.values().map(Vec::len).sum::<usize>(),
        per_key.len()
    );
}
