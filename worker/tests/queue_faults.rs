//! Queue consumers through the faults production sees: a Redis restart, a
//! failover that demotes the primary, a lock backend that is down for a
//! while, runs that time out or hold their key while peers re-claim it, and
//! settings out of range.

use std::time::{Duration, Instant};

use soloist::{
    BoxError, JobContext, JobSpec, KeyedJob, LockClient, Source, StreamSource, Worker, WorkerError,
    keyed_job,
};
use soloist_testkit::{Proxy, RedisServer};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

mod common;
use common::NeverAcks;

const SECOND: Duration = Duration::from_secs(1);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `done` every 50 ms for up to `limit`; whether it came true.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// The job's effect, `effects[id] += 1`, committed with its success record:
/// applied once however often the run is repeated. A short ttl, so that a
/// lock whose holder lost its server frees the key soon after.
fn apply() -> impl KeyedJob<Args = String, Output = u64> + use<> {
    keyed_job(
        JobSpec::keyed("apply", "order:{id}")
            .expect("spec")
            .ttl(SECOND)
            .dedupe(3600 * SECOND),
        |id: &String| format!("order:{id}"),
        move |ctx: JobContext, id: String| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut effect = redis::cmd("HINCRBY");
            effect.arg("effects").arg(&id).arg(1);
            ctx.commit_on_success(effect);
            Ok::<_, BoxError>(ctx.fence())
        },
    )
}

fn builder() -> soloist::StreamSourceBuilder {
    StreamSource::builder("orders")
        .visibility_timeout(Duration::from_millis(300))
        .block(Duration::from_millis(100))
}

/// Starts a worker consuming `source` with `job`, locking on `locks_url`;
/// it stops when the sender is dropped or fires.
fn start<J: KeyedJob + 'static>(
    runtime: &Runtime,
    locks_url: &str,
    source: impl Source,
    job: J,
) -> oneshot::Sender<()> {
    let worker = runtime
        .block_on(async {
            let locks = LockClient::connect(locks_url).await?;
            Worker::builder(locks).consume(source, job).build()
        })
        .expect("worker");
    let (stop, stopped) = oneshot::channel::<()>();
    runtime.spawn(async move {
        worker
            .run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("worker ran");
    });
    stop
}

fn enqueue(server: &RedisServer, job: &str, id: &str) {
    server.cli(&[
        "XADD",
        "orders",
        "*",
        "job",
        job,
        "key",
        &format!("order:{id}"),
        "args",
        &format!("\"{id}\""),
    ]);
}

fn pending(server: &RedisServer) -> String {
    server
        .cli(&["XPENDING", "orders", "soloist"])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn consumption_resumes_after_redis_is_killed_and_restarted() {
    const MESSAGES: usize = 400;
    let mut server = RedisServer::builder()
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("always")
        .start();
    let url = server.url();
    let runtime = runtime();
    let source = runtime.block_on(builder().consumer("survivor").connect(&url));
    let mut add = redis::pipe();
    for id in 0..MESSAGES {
        add.cmd("XADD")
            .arg("orders")
            .arg("*")
            .arg("job")
            .arg("apply")
            .arg("key")
            .arg(format!("order:{id}"))
            .arg("args")
            .arg(format!("\"{id}\""))
            .ignore();
    }
    runtime.block_on(async {
        let mut conn = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        add.query_async::<()>(&mut conn).await.expect("enqueue");
    });
    let _stop = start(&runtime, &url, source.expect("source"), apply());
    let applied = |server: &RedisServer| server.cli(&["HLEN", "effects"]).parse().unwrap_or(0);
    assert!(
        eventually(10 * SECOND, || applied(&server) >= 20),
        "consumption started"
    );
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    server.start_again();
    let before = applied(&server);
    assert!(
        before < MESSAGES,
        "killed mid-consumption ({before} applied)"
    );
    assert!(
        eventually(15 * SECOND, || applied(&server) == MESSAGES
            && pending(&server) == "0"),
        "consumption resumed and drained: {} of {MESSAGES} applied, {} pending",
        applied(&server),
        pending(&server)
    );
    let effects = server.cli(&["HVALS", "effects"]);
    assert!(
        effects.lines().all(|count| count == "1"),
        "every key's effect applied exactly once: {effects}"
    );
    assert_eq!(server.cli(&["XLEN", "{orders}:dead"]), "0");
}

#[test]
fn a_connection_to_a_demoted_primary_is_replaced() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    new.cli(&["REPLICAOF", "127.0.0.1", &old.port().to_string()]);
    // Clients reach the primary through one address, as through a virtual
    // IP or a DNS name that a failover moves.
    let proxy = Proxy::start(old.port());
    let runtime = runtime();
    let source = runtime
        .block_on(builder().consumer("one").connect(&proxy.url()))
        .expect("source");
    let _stop = start(&runtime, &proxy.url(), source, apply());
    enqueue(&old, "apply", "before");
    assert!(
        eventually(10 * SECOND, || new.cli(&["HGET", "effects", "before"])
            == "1"),
        "consumed before the failover, and replicated"
    );
    // The failover: the replica takes over, the old primary follows it.
    new.cli(&["REPLICAOF", "NO", "ONE"]);
    old.cli(&["REPLICAOF", "127.0.0.1", &new.port().to_string()]);
    proxy.retarget(new.port());
    enqueue(&new, "apply", "after");
    assert!(
        eventually(15 * SECOND, || new.cli(&["HGET", "effects", "after"])
            == "1"),
        "consumed on the new primary: the connections answered READONLY were replaced"
    );
    assert_eq!(new.cli(&["HGET", "effects", "before"]), "1");
}

#[test]
fn a_job_that_always_times_out_is_dead_lettered() {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = runtime();
    let slow = keyed_job(
        JobSpec::keyed("slow", "slow:{id}")
            .expect("spec")
            .dedupe(3600 * SECOND)
            .max_hold(Duration::from_millis(200)),
        |id: &String| format!("slow:{id}"),
        |_ctx: JobContext, _id: String| async move {
            tokio::time::sleep(60 * SECOND).await;
            Ok::<_, BoxError>(())
        },
    );
    let source = runtime
        .block_on(builder().consumer("one").max_deliveries(3).connect(&url))
        .expect("source");
    let _stop = start(&runtime, &url, source, slow);
    enqueue(&server, "slow", "a");
    assert!(
        eventually(15 * SECOND, || server.cli(&["XLEN", "{orders}:dead"])
            == "1"),
        "dead-lettered after three timed-out runs"
    );
    let dead = server.cli(&["XRANGE", "{orders}:dead", "-", "+"]);
    assert!(
        dead.contains("failed 3 times: run ended timed_out"),
        "{dead}"
    );
    assert_eq!(pending(&server), "0");
}

#[test]
fn a_lock_backend_down_for_a_while_dead_letters_nothing() {
    let stream = RedisServer::start();
    let mut locks = RedisServer::start();
    let runtime = runtime();
    let source = runtime
        .block_on(
            builder()
                .consumer("one")
                .max_deliveries(2)
                .connect(&stream.url()),
        )
        .expect("source");
    let _stop = start(&runtime, &locks.url(), source, apply());
    // The worker is up before the lock backend goes.
    std::thread::sleep(Duration::from_millis(500));
    locks.kill();
    for id in ["a", "b", "c"] {
        enqueue(&stream, "apply", id);
    }
    // Each entry is delivered many times over (visibility 300 ms) and
    // cannot run once.
    std::thread::sleep(3 * SECOND);
    let dead_meanwhile = stream.cli(&["XLEN", "{orders}:dead"]);
    locks.start_again();
    assert_eq!(
        dead_meanwhile, "0",
        "nothing dead-lettered while locks were down"
    );
    assert!(
        eventually(15 * SECOND, || locks.cli(&["HLEN", "effects"]) == "3"
            && pending(&stream) == "0"),
        "every entry ran once the lock backend came back"
    );
    assert_eq!(stream.cli(&["XLEN", "{orders}:dead"]), "0");
}

#[test]
fn a_peer_re_claiming_a_busy_key_does_not_dead_letter_it() {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = runtime();
    let client = redis::Client::open(url.as_str()).expect("url");
    // The first run holds the key for 3 s and fails, the second fails, the
    // third succeeds: three runs, within max_deliveries = 3.
    let flaky = || {
        let client = client.clone();
        keyed_job(
            JobSpec::keyed("flaky", "flaky:{id}")
                .expect("spec")
                .dedupe(3600 * SECOND),
            |id: &String| format!("flaky:{id}"),
            move |_ctx: JobContext, id: String| {
                let client = client.clone();
                async move {
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    let run: u64 = redis::cmd("HINCRBY")
                        .arg("runs")
                        .arg(&id)
                        .arg(1)
                        .query_async(&mut conn)
                        .await?;
                    if run == 1 {
                        tokio::time::sleep(3 * SECOND).await;
                    }
                    if run < 3 {
                        return Err(BoxError::from(format!("run {run} fails")));
                    }
                    Ok(())
                }
            },
        )
    };
    let mut stops = Vec::new();
    for consumer in ["one", "two"] {
        let source = runtime
            .block_on(builder().consumer(consumer).max_deliveries(3).connect(&url))
            .expect("source");
        stops.push(start(&runtime, &url, source, flaky()));
    }
    enqueue(&server, "flaky", "a");
    assert!(
        eventually(15 * SECOND, || pending(&server) == "0"
            && server.cli(&["XLEN", "orders"]) == "1"
            && server.cli(&["HGET", "runs", "a"]) == "3"),
        "ran three times and was acknowledged: runs {}, pending {}",
        server.cli(&["HGET", "runs", "a"]),
        pending(&server)
    );
    let deliveries = server.cli(&["XLEN", "{orders}:dead"]);
    assert_eq!(deliveries, "0", "re-claims of the busy key did not count");
}

#[test]
fn a_message_whose_consumer_dies_during_every_run_is_dead_lettered() {
    let server = RedisServer::start();
    let url = server.url();
    let client = redis::Client::open(url.as_str()).expect("url");
    // Counts its runs, then never returns: its consumer dies meanwhile.
    let fatal = || {
        let client = client.clone();
        keyed_job(
            JobSpec::keyed("fatal", "fatal:{id}")
                .expect("spec")
                .ttl(SECOND)
                .dedupe(3600 * SECOND),
            |id: &String| format!("fatal:{id}"),
            move |_ctx: JobContext, id: String| {
                let client = client.clone();
                async move {
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("HINCRBY")
                        .arg("runs")
                        .arg(&id)
                        .arg(1)
                        .query_async::<()>(&mut conn)
                        .await?;
                    std::future::pending::<()>().await;
                    Ok::<_, BoxError>(())
                }
            },
        )
    };
    enqueue(&server, "fatal", "a");
    for life in 1..=3 {
        let runtime = runtime();
        let source = runtime
            .block_on(
                builder()
                    .consumer(&format!("doomed-{life}"))
                    .max_deliveries(3)
                    .connect(&url),
            )
            .expect("source");
        let _stop = start(&runtime, &url, source, fatal());
        assert!(
            eventually(10 * SECOND, || server.cli(&["HGET", "runs", "a"])
                == life.to_string()),
            "run {life} started"
        );
        // The consumer dies mid-run: no outcome, no acknowledgement.
        runtime.shutdown_background();
    }
    let runtime = runtime();
    let source = runtime
        .block_on(
            builder()
                .consumer("survivor")
                .max_deliveries(3)
                .connect(&url),
        )
        .expect("source");
    let _stop = start(&runtime, &url, source, fatal());
    assert!(
        eventually(10 * SECOND, || server.cli(&["XLEN", "{orders}:dead"])
            == "1"),
        "dead-lettered after three runs that never finished"
    );
    assert_eq!(
        server.cli(&["HGET", "runs", "a"]),
        "3",
        "not run a fourth time"
    );
    let dead = server.cli(&["XRANGE", "{orders}:dead", "-", "+"]);
    assert!(dead.contains("started and never finished"), "{dead}");
    assert_eq!(pending(&server), "0");
}

#[test]
fn a_last_run_that_succeeded_but_was_never_acknowledged_is_not_dead_lettered() {
    let server = RedisServer::start();
    let url = server.url();
    enqueue(&server, "apply", "a");
    let doomed = runtime();
    let source = doomed
        .block_on(builder().consumer("doomed").max_deliveries(1).connect(&url))
        .expect("source");
    let _stop = start(&doomed, &url, NeverAcks::new(source), apply());
    assert!(
        eventually(10 * SECOND, || server.cli(&["HGET", "effects", "a"]) == "1"),
        "the one allowed run succeeded"
    );
    // The consumer dies before the acknowledgement.
    doomed.shutdown_background();
    assert_eq!(pending(&server), "1");
    let runtime = runtime();
    let source = runtime
        .block_on(
            builder()
                .consumer("survivor")
                .max_deliveries(1)
                .connect(&url),
        )
        .expect("source");
    let _stop = start(&runtime, &url, source, apply());
    assert!(
        eventually(10 * SECOND, || pending(&server) == "0"),
        "the survivor settled the entry"
    );
    assert_eq!(
        server.cli(&["XLEN", "{orders}:dead"]),
        "0",
        "acknowledged as the success it was, not dead-lettered"
    );
    assert_eq!(server.cli(&["HGET", "effects", "a"]), "1");
}

/// The setting an invalid builder is refused for.
fn refused(result: Result<StreamSource, WorkerError>) -> &'static str {
    match result {
        Err(WorkerError::InvalidJob { name, .. }) => name,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn extreme_stream_settings_are_invalid_arguments() {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = runtime();
    let cases: Vec<(soloist::StreamSourceBuilder, &str)> = vec![
        (builder().block(Duration::MAX), "block"),
        (builder().block(Duration::ZERO), "block"),
        (builder().block(3600 * SECOND), "block"),
        (
            builder().visibility_timeout(Duration::MAX),
            "visibility_timeout",
        ),
        (
            builder().visibility_timeout(Duration::ZERO),
            "visibility_timeout",
        ),
        (builder().max_deliveries(u32::MAX), "max_deliveries"),
        (builder().max_deliveries(0), "max_deliveries"),
        (
            builder().retain_acknowledged(u64::MAX),
            "retain_acknowledged",
        ),
        (builder().dead_letter_limit(0), "dead_letter_limit"),
        (builder().dead_letter_limit(u64::MAX), "dead_letter_limit"),
        (builder().group(""), "group"),
        (builder().consumer(""), "consumer"),
        (StreamSource::builder(""), "stream"),
    ];
    for (settings, name) in cases {
        let result = runtime.block_on(settings.clone().connect(&url));
        assert_eq!(refused(result), name, "{settings:?}");
    }
    // The largest accepted values work.
    runtime
        .block_on(
            builder()
                .block(60 * SECOND)
                .visibility_timeout(7 * 24 * 3600 * SECOND)
                .max_deliveries(1000)
                .retain_acknowledged(100_000_000)
                .dead_letter_limit(100_000_000)
                .connect(&url),
        )
        .expect("the bounds themselves are accepted");

    // A dedupe window shorter than the visibility timeout could let a
    // redelivery run the job again.
    let short = keyed_job(
        JobSpec::keyed("short", "short:{id}")
            .expect("spec")
            .dedupe(SECOND),
        |id: &String| id.clone(),
        |_ctx: JobContext, _id: String| async move { Ok::<_, BoxError>(()) },
    );
    let built = runtime.block_on(async {
        let source = StreamSource::builder("orders")
            .visibility_timeout(30 * SECOND)
            .connect(&url)
            .await
            .expect("source");
        Worker::builder(LockClient::memory())
            .consume(source, short)
            .build()
            .map(|_| ())
    });
    match built {
        Err(WorkerError::InvalidJob {
            name: "dedupe",
            reason,
            ..
        }) => {
            assert!(reason.contains("visibility timeout"), "{reason}")
        }
        other => panic!("expected the dedupe window to be refused, got {other:?}"),
    }
}

/// Receives and acknowledges every entry; how many.
async fn drain(source: &StreamSource) -> usize {
    let mut read = 0;
    loop {
        let batch = source.receive(2000).await.expect("receive");
        if batch.is_empty() {
            return read;
        }
        let acks = batch.iter().map(|delivery| source.ack(delivery));
        for acked in futures::future::join_all(acks).await {
            acked.expect("ack");
        }
        read += batch.len();
    }
}

/// Appends `count` entries for the job `apply`, in the server (a client
/// would spend most of a test's time encoding them).
fn produce(server: &RedisServer, count: usize) {
    let script = "for id = 0, tonumber(ARGV[1]) - 1 do \
                  redis.call('XADD', KEYS[1], '*', 'job', 'apply', 'key', 'order:' .. id, \
                  'args', '\"' .. id .. '\"') end";
    server.cli(&["EVAL", script, "1", "orders", &count.to_string()]);
}

#[test]
fn a_consumed_stream_stays_small() {
    const MESSAGES: usize = 100_000;
    let server = RedisServer::start();
    let url = server.url();
    runtime().block_on(async {
        let source = builder()
            .visibility_timeout(60 * SECOND)
            .block(Duration::from_millis(10))
            .connect(&url)
            .await
            .expect("source");
        produce(&server, MESSAGES);
        let full: u64 = server
            .cli(&["MEMORY", "USAGE", "orders"])
            .parse()
            .expect("memory usage");
        assert_eq!(drain(&source).await, MESSAGES);
        assert_eq!(
            source.lag().await.expect("lag"),
            Some(0),
            "the group's lag still reads after trimming"
        );
        let length: u64 = server.cli(&["XLEN", "orders"]).parse().expect("xlen");
        let memory: u64 = server
            .cli(&["MEMORY", "USAGE", "orders"])
            .parse()
            .expect("memory usage");
        // The 1000 retained, plus what was acknowledged since the last trim.
        assert!(length <= 1000 + 600, "{length} entries left");
        assert!(
            memory < 256 * 1024 && memory * 20 < full,
            "{memory} bytes left (of {full})"
        );
    });
}

#[test]
fn pending_and_undelivered_entries_are_never_trimmed() {
    // Small stream nodes, so that the dead-letter stream's approximate cap
    // shows at a hundred entries.
    let server = RedisServer::builder()
        .arg("--stream-node-max-entries")
        .arg("10")
        .start();
    let url = server.url();
    runtime().block_on(async {
        let source = builder()
            .visibility_timeout(60 * SECOND)
            .block(Duration::from_millis(10))
            .retain_acknowledged(0)
            .dead_letter_limit(20)
            .connect(&url)
            .await
            .expect("source");
        produce(&server, 1000);
        let newest = server.cli(&["XREVRANGE", "orders", "+", "-", "COUNT", "1"]);
        let newest = newest.lines().next().expect("newest id").to_owned();
        // Entry 400 stays pending; 900 and later are not delivered yet.
        let mut delivered = source.receive(500).await.expect("receive");
        delivered.extend(source.receive(400).await.expect("receive"));
        assert_eq!(delivered.len(), 900);
        for (i, delivery) in delivered.iter().enumerate() {
            if i != 400 {
                source.ack(delivery).await.expect("ack");
            }
        }
        let kept = |id: &str| !server.cli(&["XRANGE", "orders", id, id]).is_empty();
        assert!(kept(&delivered[400].id), "the pending entry is kept");
        assert!(kept(&newest), "an undelivered entry is kept");
        // Everything before the pending entry went; it and the rest stayed.
        assert_eq!(
            server.cli(&["XLEN", "orders"]),
            "600",
            "trimmed up to the oldest pending entry"
        );

        // The dead-letter stream is capped too, to about its limit.
        let rest = source.receive(100).await.expect("receive");
        assert_eq!(rest.len(), 100);
        for delivery in &rest {
            source
                .dead_letter(delivery, "poison")
                .await
                .expect("dead letter");
        }
        let dead: usize = server
            .cli(&["XLEN", "{orders}:dead"])
            .parse()
            .expect("xlen");
        assert!(dead <= 20 + 10, "{dead} dead letters kept of 100, limit 20");
    });
}

/// A consumer waiting for a key another holder keeps stops waiting when
/// shutdown begins: `run_until` returns within its grace, the job never
/// runs, and the message is left pending for redelivery, not dead-lettered.
#[test]
fn shutdown_ends_a_consumer_waiting_for_a_busy_key() {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = runtime();
    runtime.block_on(async {
        let locks = LockClient::connect(&url).await.expect("locks");
        // Another replica runs order x for a long while.
        let _held = locks
            .lock("job:apply:order:x")
            .ttl(60 * SECOND)
            .acquire()
            .await
            .expect("held");
        let source = builder()
            .visibility_timeout(60 * SECOND)
            .connect(&url)
            .await
            .expect("source");
        let worker = Worker::builder(locks)
            .shutdown_grace(SECOND)
            .consume(source, apply())
            .build()
            .expect("worker");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        enqueue(&server, "apply", "x");
        let deadline = Instant::now() + 5 * SECOND;
        while !pending(&server).starts_with('1') {
            assert!(Instant::now() < deadline, "the message was never delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(()).expect("worker running");
        tokio::time::timeout(5 * SECOND, running)
            .await
            .expect("run_until waited past its grace for a busy key")
            .expect("worker task")
            .expect("worker ran");
    });
    assert!(pending(&server).starts_with('1'), "left for redelivery");
    assert_eq!(server.cli(&["EXISTS", "effects"]), "0", "the job never ran");
    assert_eq!(server.cli(&["XLEN", "{orders}:dead"]), "0");
}
