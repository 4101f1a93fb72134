//! The queue fleet test: five consumer processes on one Redis Stream,
//! SIGKILLed and restarted at random while 10,000 messages (a fifth of them
//! repeating an earlier key) are produced and consumed.
//!
//! The job commits its effect with its success record
//! (`JobContext::commit_on_success`). Every key's effect must be applied
//! exactly once, nothing may be left pending or dead-lettered, and a key
//! whose run was started more than once must owe every run but its last to
//! a consumer that was killed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use soloist::{JobContext, JobSpec, KeyedJob, LockClient, Source, StreamSource, Worker, keyed_job};
use soloist_testkit::{ChildProcess, RedisServer, child_role, send_to_parent};

const TEST: &str = "five_consumers_killed_at_random_apply_each_key_exactly_once";
const CONSUMERS: usize = 5;
const MESSAGES: usize = 10_000;
/// The share of messages that repeat a key produced before.
const REPEATS: f64 = 0.2;
/// How long the fleet may take to drain the stream before the test fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const SECOND: Duration = Duration::from_secs(1);

/// The wall clock in Unix milliseconds, comparable with Redis' `TIME` on
/// this host.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Appends `key replica fence <Redis time in ms>` to the list `KEYS[1]`,
/// after `HINCRBY KEYS[2] key 1` when a second key is given, in one step,
/// stamped with the server's clock.
static LOG: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local time = redis.call('TIME')
        local ms = string.format('%.0f', time[1] * 1000 + math.floor(time[2] / 1000))
        if KEYS[2] then
            redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
        end
        redis.call('RPUSH', KEYS[1], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ms)
        ",
    )
});

/// The job every consumer runs: logs the run's start to `runs`, and commits
/// its effect (`effects[key] += 1`) and a log entry in `applied` with its
/// success record, so the logs tell exactly which run applied it.
fn apply(log: MultiplexedConnection) -> impl KeyedJob<Args = String, Output = u64> + use<> {
    keyed_job(
        JobSpec::keyed("apply", "order:{key}")
            .expect("spec")
            .ttl(2 * SECOND)
            .dedupe(3600 * SECOND),
        |key: &String| format!("order:{key}"),
        move |ctx: JobContext, key: String| {
            let mut log = log.clone();
            async move {
                let run = format!("{} {}", ctx.replica(), ctx.fence());
                LOG.key("runs")
                    .arg(&key)
                    .arg(&run)
                    .invoke_async::<()>(&mut log)
                    .await?;
                // The effect and its log entry commit with the run's
                // success record, atomically: once, however consumers die.
                let mut effect = redis::cmd("HINCRBY");
                effect.arg("effects").arg(&key).arg(1);
                ctx.commit_on_success(effect);
                let mut logged = redis::cmd("RPUSH");
                logged
                    .arg("applied")
                    .arg(format!("{key} {run} {}", now_ms()));
                ctx.commit_on_success(logged);
                Ok::<_, redis::RedisError>(ctx.fence())
            }
        },
    )
}

async fn source(url: &str, consumer: &str) -> StreamSource {
    StreamSource::builder("orders")
        .group("soloist")
        .consumer(consumer)
        .visibility_timeout(SECOND)
        .block(Duration::from_millis(200))
        .max_deliveries(1000)
        .connect(url)
        .await
        .expect("stream source")
}

async fn log_connection(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("log connection")
}

/// One consumer process: a worker consuming the stream until it is killed.
async fn consumer(url: String, name: String) {
    let locks = LockClient::connect(&url).await.expect("connect");
    let worker = Worker::builder(locks)
        .replica_id(&name)
        .consume(source(&url, &name).await, apply(log_connection(&url).await))
        .build()
        .expect("worker");
    send_to_parent("ready");
    worker
        .run_until(std::future::pending::<()>())
        .await
        .expect("worker");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The messages' keys in production order: a new key, or with probability
/// [`REPEATS`] one produced before.
fn plan() -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut messages = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        if !keys.is_empty() && rand::random_bool(REPEATS) {
            messages.push(keys[rand::random_range(0..keys.len())].clone());
        } else {
            let key = format!("k{}", keys.len());
            keys.push(key.clone());
            messages.push(key);
        }
    }
    messages
}

/// The value after `field` in redis-cli's line-per-item reply to a
/// field/value list such as `XINFO GROUPS`.
fn field<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = reply.lines();
    lines.find(|line| *line == name)?;
    lines.next()
}

/// The group's lag (entries not yet delivered) and pending count
/// (delivered, not acknowledged).
fn backlog(server: &RedisServer) -> (String, String) {
    let groups = server.cli(&["XINFO", "GROUPS", "orders"]);
    let lag = field(&groups, "lag").unwrap_or("?").to_owned();
    let pending = server
        .cli(&["XPENDING", "orders", "soloist"])
        .lines()
        .next()
        .unwrap_or("?")
        .to_owned();
    (lag, pending)
}

/// A consumer slot: a live process under its incarnation's name, or the
/// time its last incarnation was killed.
enum Slot {
    Alive(ChildProcess, String),
    Dead(Instant),
}

/// One entry of the job's logs.
#[derive(Debug, Clone)]
struct Run {
    replica: String,
    fence: u64,
    /// When, in Unix milliseconds.
    at: u64,
}

/// A log of the job (`runs` or `applied`), by key, in Redis' order.
fn log_entries(server: &RedisServer, list: &str) -> HashMap<String, Vec<Run>> {
    let mut per_key: HashMap<String, Vec<Run>> = HashMap::new();
    for line in server.cli(&["LRANGE", list, "0", "-1"]).lines() {
        let f: Vec<&str> = line.split(' ').collect();
        per_key.entry(f[0].to_owned()).or_default().push(Run {
            replica: f[1].to_owned(),
            fence: f[2].parse().expect("fence"),
            at: f[3].parse().expect("time"),
        });
    }
    per_key
}

#[test]
fn five_consumers_killed_at_random_apply_each_key_exactly_once() {
    if child_role().as_deref() == Some("consumer") {
        let url = std::env::var("REDIS_URL").expect("REDIS_URL");
        let name = std::env::var("CONSUMER").expect("CONSUMER");
        runtime().block_on(consumer(url, name));
        return;
    }
    let began = Instant::now();
    let server = RedisServer::start();
    let url = server.url();
    let runtime = runtime();
    // Registered with `consume` (so it can enqueue) but never run.
    let producer = runtime.block_on(async {
        Worker::builder(LockClient::connect(&url).await.expect("connect"))
            .consume(
                source(&url, "producer").await,
                apply(log_connection(&url).await),
            )
            .build()
            .expect("producer")
    });

    let mut incarnations = 0;
    let mut spawn = |slot: usize| {
        incarnations += 1;
        let name = format!("c{slot}.{incarnations}");
        let mut child = ChildProcess::spawn(
            TEST,
            "consumer",
            &[("REDIS_URL", &url), ("CONSUMER", &name)],
        );
        assert_eq!(child.read_line(), "ready", "consumer {name}");
        Slot::Alive(child, name)
    };
    let mut slots: Vec<Slot> = (0..CONSUMERS).map(&mut spawn).collect();

    let messages = plan();
    let distinct: BTreeSet<String> = messages.iter().cloned().collect();
    let handle = producer.handle();
    let log = runtime.block_on(log_connection(&url));
    let producing = runtime.spawn({
        let messages = messages.clone();
        async move {
            let job = apply(log);
            for key in messages {
                handle.enqueue(&job, key).await.expect("enqueue");
            }
        }
    });

    // Kill a random live consumer every 1-2 s (never the last one alive)
    // and restart each a second after its death, until the stream drains.
    let started = Instant::now();
    let started_ms = now_ms();
    let mut killed: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_kill = started + SECOND;
    let mut next_check = started;
    let produced_in = loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        for (n, slot) in slots.iter_mut().enumerate() {
            if matches!(slot, Slot::Dead(at) if now >= *at + SECOND) {
                *slot = spawn(n);
            }
        }
        let alive: Vec<usize> = (0..CONSUMERS)
            .filter(|&slot| matches!(slots[slot], Slot::Alive(..)))
            .collect();
        if now >= next_kill && alive.len() > 1 {
            let victim = alive[rand::random_range(0..alive.len())];
            if let Slot::Alive(mut child, name) =
                std::mem::replace(&mut slots[victim], Slot::Dead(now))
            {
                killed.insert(name, now_ms());
                child.kill();
            }
            next_kill = now + Duration::from_millis(rand::random_range(1000..2000));
        }
        if now >= next_check && producing.is_finished() {
            next_check = now + Duration::from_millis(250);
            if backlog(&server) == ("0".to_owned(), "0".to_owned()) {
                break now - started;
            }
        }
        assert!(
            now - started < DRAIN_TIMEOUT,
            "not drained within {DRAIN_TIMEOUT:?}: (lag, pending) = {:?}, produced: {}",
            backlog(&server),
            producing.is_finished(),
        );
    };
    runtime.block_on(producing).expect("producer");
    // Every message is acknowledged, so every run's outcome is recorded;
    // a moment for stragglers (runs of claimed-away duplicates), then stop.
    std::thread::sleep(Duration::from_millis(500));
    drop(slots);

    let effects: HashMap<String, u64> = server
        .cli(&["HGETALL", "effects"])
        .lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| (pair[0].to_owned(), pair[1].parse().expect("count")))
        .collect();
    let runs = log_entries(&server, "runs");
    let applied = log_entries(&server, "applied");
    let secs = |at: u64| format!("{:.3}s", at.saturating_sub(started_ms) as f64 / 1000.0);

    // Keys applied more than once, each with the timeline of its runs and
    // whether it is the documented at-least-once window: every application
    // but the recorded one was by a consumer killed after applying it,
    // before it wrote the dedupe record.
    let twice: Vec<(String, bool)> = effects
        .iter()
        .filter(|(_, count)| **count != 1)
        .map(|(key, count)| {
            let record = server.cli(&[
                "HGET",
                &format!("soloist:fenced:{{job:apply:order:{key}}}"),
                "fence",
            ]);
            let applications = applied.get(key).map_or(&[][..], Vec::as_slice);
            let in_window = applications
                .split_last()
                .is_some_and(|(recorded, earlier)| {
                    recorded.fence.to_string() == record
                        && earlier.iter().all(|run| {
                            run.fence.to_string() != record && killed.contains_key(&run.replica)
                        })
                });
            let timeline = runs
                .get(key)
                .into_iter()
                .flatten()
                .map(|run| {
                    let applied_at = applied
                        .get(key)
                        .into_iter()
                        .flatten()
                        .find(|a| a.replica == run.replica && a.fence == run.fence)
                        .map_or_else(
                            || "not applied".to_owned(),
                            |a| format!("applied {}", secs(a.at)),
                        );
                    let fate = killed.get(&run.replica).map_or_else(
                        || "never killed".to_owned(),
                        |at| format!("{} killed {}", run.replica, secs(*at)),
                    );
                    format!(
                        "{} fence {} started {}, {applied_at}, {fate}",
                        run.replica,
                        run.fence,
                        secs(run.at)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let description = format!(
                "{key} applied {count} times: {timeline}; dedupe record has fence {record}"
            );
            (description, in_window)
        })
        .collect();
    let restarted: Vec<(&String, &Vec<Run>)> =
        runs.iter().filter(|(_, starts)| starts.len() > 1).collect();
    eprintln!(
        "{} messages, {} distinct keys, produced and drained in {produced_in:?} ({:?} in all); \
         {} kills, {incarnations} consumer incarnations; {} runs started, {} keys started more \
         than once, {} keys applied more than once",
        messages.len(),
        distinct.len(),
        began.elapsed(),
        killed.len(),
        runs.values().map(Vec::len).sum::<usize>(),
        restarted.len(),
        twice.len(),
    );
    for (line, _) in &twice {
        eprintln!("  {line}");
    }

    assert!(killed.len() >= 3, "only {} kills", killed.len());
    assert_eq!(
        backlog(&server),
        ("0".to_owned(), "0".to_owned()),
        "lag and pending"
    );
    // Consumers trim on their first acknowledgement and every 100th, so
    // entries acknowledged late (claimed from killed consumers) can stay
    // until the next trim: a fresh consumer's first acknowledgement trims
    // to the 1000 finished entries retention keeps, and the newest entry,
    // from which the trim counts.
    server.cli(&[
        "XADD", "orders", "*", "job", "none", "key", "k", "payload", "0",
    ]);
    runtime.block_on(async {
        let last = source(&url, "last").await;
        let deliveries = last.receive(10).await.expect("receive");
        assert_eq!(deliveries.len(), 1, "the one new entry");
        last.ack(&deliveries[0]).await.expect("ack");
    });
    let length: usize = server.cli(&["XLEN", "orders"]).parse().expect("xlen");
    assert_eq!(length, 1001, "{length} of {MESSAGES} entries left");
    assert_eq!(server.cli(&["XLEN", "{orders}:dead"]), "0", "dead letters");
    let missing: Vec<&String> = distinct
        .iter()
        .filter(|key| !effects.contains_key(*key))
        .collect();
    assert!(missing.is_empty(), "keys never applied: {missing:?}");
    assert_eq!(
        effects.len(),
        distinct.len(),
        "applied keys that were never produced"
    );
    for (key, starts) in &restarted {
        let (last, earlier) = starts.split_last().expect("more than one start");
        for run in earlier {
            assert!(
                killed.contains_key(&run.replica),
                "{key}: started again by {} (fence {}) though {} (fence {}) was never killed",
                last.replica,
                last.fence,
                run.replica,
                run.fence,
            );
        }
    }
    let unexplained: Vec<&String> = twice
        .iter()
        .filter(|(_, in_window)| !in_window)
        .map(|(line, _)| line)
        .collect();
    assert!(
        unexplained.is_empty(),
        "keys applied more than once outside the window between a body's return and its \
         dedupe record:\n{unexplained:?}"
    );
    // Effects committed with the success record cannot apply twice, even
    // for a consumer killed between its body's return and the record.
    assert!(
        twice.is_empty(),
        "{} keys applied twice:\n{}",
        twice.len(),
        twice
            .iter()
            .map(|(line, _)| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
