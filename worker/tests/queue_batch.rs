//! A Redis stream consumed in batches (the stream on the lock client's
//! server): a read's keys claimed in one request, the runs that finish
//! together settled in one more, with every guarantee of the path one
//! delivery at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use soloist::{
    BoxError, JobContext, JobSpec, KeyedJob, LockClient, Source, StreamSource, Worker, keyed_job,
    redis,
};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};

mod common;
use common::{Monitor, Running};

const SECOND: Duration = Duration::from_secs(1);

/// A job that counts its runs per id in the hash `runs` and, on success,
/// its applied effects in `effects` (an `on_success` effect, committed with
/// the record); fails for `poison`; for `slow:*` sleeps `nap` first; for
/// `steal:*`, on its first run, lets another owner take its key over.
fn charge(url: &str, nap: Duration) -> impl KeyedJob<Args = String, Output = String> + use<> {
    let client = redis::Client::open(url).expect("url");
    keyed_job(
        JobSpec::keyed("charge", "order:{id}")
            .expect("spec")
            .dedupe(3600 * SECOND)
            .ttl(2 * SECOND),
        |id: &String| format!("order:{id}"),
        move |ctx: JobContext, id: String| {
            let client = client.clone();
            async move {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let run: u32 = redis::cmd("HINCRBY")
                    .arg("runs")
                    .arg(&id)
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                if id.starts_with("steal") && run == 1 {
                    // Another owner takes the key over just before the
                    // body returns: too late for the run to notice.
                    redis::cmd("SET")
                        .arg(format!("soloist:lock:{{job:charge:order:{id}}}"))
                        .arg("intruder")
                        .arg("PX")
                        .arg(800)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
                if id.starts_with("slow") {
                    tokio::select! {
                        () = sleep(nap) => {}
                        () = ctx.cancelled() => return Err(BoxError::from("cancelled")),
                    }
                }
                if id == "poison" {
                    return Err(BoxError::from(format!("cannot charge {id}")));
                }
                let mut effect = redis::cmd("HINCRBY");
                effect.arg("effects").arg(&id).arg(1);
                ctx.commit_on_success(effect);
                Ok(format!("receipt:{id}"))
            }
        },
    )
}

async fn source(url: &str, consumer: &str) -> StreamSource {
    StreamSource::builder("orders")
        .consumer(consumer)
        .visibility_timeout(Duration::from_millis(500))
        .max_deliveries(3)
        .block(Duration::from_millis(100))
        .connect(url)
        .await
        .expect("stream source")
}

async fn consumer(url: &str, name: &str, nap: Duration) -> Running {
    let worker = Worker::builder(LockClient::connect(url).await.unwrap())
        .replica_id(name)
        .consume(source(url, name).await, charge(url, nap))
        .build()
        .unwrap();
    Running::start(worker)
}

fn field(server: &RedisServer, hash: &str, id: &str) -> String {
    server.cli(&["HGET", hash, id])
}

fn pending(server: &RedisServer) -> u64 {
    server
        .cli(&["XPENDING", "orders", "soloist"])
        .lines()
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

async fn enqueue(url: &str, ids: &[&str]) {
    let source = source(url, "producer").await;
    for id in ids {
        source
            .enqueue(
                "charge",
                &format!("order:{id}"),
                serde_json::to_vec(id).unwrap(),
            )
            .await
            .unwrap();
    }
}

/// One read mixing a duplicate of a recorded success, a key another client
/// holds, new keys, a failing one, malformed entries and an unknown job:
/// the duplicate is acknowledged without running, the busy key runs once
/// its holder lets go, every new key runs once with its effect applied
/// once, the failure is dead-lettered after its attempts, the malformed
/// entries at once; nothing is left pending. And the batch costs one claim
/// and one settle request: `MONITOR` sees no client send an `HMGET`,
/// `HINCRBY`, `XACK` or `XADD` of its own for the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_duplicates_busy_keys_new_keys_and_malformed() {
    let server = RedisServer::start();
    let url = server.url();
    let locks = LockClient::connect(&url).await.unwrap();
    // `done` succeeded before: its record is there.
    enqueue(&url, &["done"]).await;
    let first = consumer(&url, "first", SECOND).await;
    until("done ran", 10 * SECOND, || {
        field(&server, "effects", "done") == "1"
    })
    .await;
    until("done acked", 10 * SECOND, || pending(&server) == 0).await;
    first.stop().await;

    let held = locks
        .lock("job:charge:order:busy")
        .ttl(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    let new: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let mut ids: Vec<&str> = vec!["done", "busy", "poison"];
    ids.extend(new.iter().map(String::as_str));
    enqueue(&url, &ids).await;
    server.cli(&["XADD", "orders", "*", "job", "charge"]);
    server.cli(&["XADD", "orders", "*", "job", "charge", "args", "{not json"]);
    server.cli(&["XADD", "orders", "*", "job", "refund", "args", "\"a\""]);
    let monitor = Monitor::start(server.port());
    let running = consumer(&url, "batch", SECOND).await;
    until("the new keys ran", 10 * SECOND, || {
        new.iter().all(|id| field(&server, "effects", id) == "1")
    })
    .await;
    let lines = monitor.lines();
    sleep(300 * Duration::from_millis(1)).await;
    held.release().await.unwrap();
    until("busy ran", 10 * SECOND, || {
        field(&server, "effects", "busy") == "1"
    })
    .await;
    until("poison dead-lettered", 10 * SECOND, || {
        server.cli(&["XLEN", "{orders}:dead"]) == "4"
    })
    .await;
    until("nothing pending", 10 * SECOND, || pending(&server) == 0).await;
    running.stop().await;

    assert_eq!(
        field(&server, "runs", "done"),
        "1",
        "the duplicate did not run"
    );
    assert_eq!(field(&server, "effects", "done"), "1");
    for id in &new {
        assert_eq!(field(&server, "runs", id), "1", "{id} ran once");
    }
    assert_eq!(field(&server, "runs", "poison"), "3");
    assert_eq!(field(&server, "effects", "poison"), "");
    let dead = server.cli(&["XRANGE", "{orders}:dead", "-", "+"]);
    assert!(dead.contains("cannot charge poison"), "{dead}");
    assert!(dead.contains("bad arguments"), "{dead}");
    assert!(dead.contains("no job named `refund`"), "{dead}");
    assert_eq!(server.cli(&["HLEN", "{orders}:soloist:attempts"]), "0");

    // The new keys' dedupe checks, attempt counts, acknowledgements and
    // history entries all ran inside scripts.
    let sent = |command: &str, key_part: &str| {
        lines
            .iter()
            .filter(|line| !line.contains(" lua] "))
            // The probe before batching runs them once on the entry 0-0.
            .filter(|line| !line.contains("\"0-0\""))
            .filter(|line| line.contains(&format!("] \"{command}\"")) && line.contains(key_part))
            .count()
    };
    for id in &new {
        assert_eq!(
            sent("HMGET", &format!("order:{id}}}")),
            0,
            "{id}: dedupe check sent alone"
        );
    }
    assert_eq!(sent("HINCRBY", "attempts"), 0, "an attempt counted alone");
    assert_eq!(sent("XACK", "orders"), 0, "an entry acknowledged alone");
    assert_eq!(sent("XADD", "runs:"), 0, "a history entry sent alone");
    let history = server.cli(&["XLEN", "soloist:runs:{charge}"]);
    assert!(history.parse::<u32>().unwrap() >= 13, "history: {history}");
}

/// Counts the requests a batch of 16 costs: every entry waits before the
/// consumer starts, so one read takes them all; then one claim and one
/// settle (two when the runs finish apart): at most 3 requests for the
/// batch, whatever its size, against 6.6 per message one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_costs_a_read_a_claim_and_a_settle() {
    let server = RedisServer::start();
    let url = server.url();
    let ids: Vec<String> = (0..16).map(|i| format!("m{i}")).collect();
    enqueue(&url, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let monitor = Monitor::start(server.port());
    let running = consumer(&url, "count", SECOND).await;
    until("every entry ran", 10 * SECOND, || {
        ids.iter().all(|id| field(&server, "effects", id) == "1")
    })
    .await;
    until("nothing pending", 10 * SECOND, || pending(&server) == 0).await;
    running.stop().await;
    let lines = monitor.lines();
    // The probe before batching (on the entry 0-0) aside.
    let from_clients: Vec<&String> = lines
        .iter()
        .filter(|line| !line.contains(" lua] ") && !line.contains("\"0-0\""))
        .collect();
    let count = |command: &str| {
        from_clients
            .iter()
            .filter(|line| line.contains(&format!("] \"{command}\"")))
            .count()
    };
    // Scripts the run's keys go through: the claim and the settle (the
    // first call of each loads it after `NOSCRIPT`, and a trim is one too).
    let script_calls: Vec<&&String> = from_clients
        .iter()
        .filter(|line| line.contains("] \"EVALSHA\"") && line.contains("order:m"))
        .collect();
    assert!(
        script_calls.len() <= 6,
        "{} script calls for 16 messages: {script_calls:#?}",
        script_calls.len()
    );
    assert_eq!(count("HMGET"), 0);
    assert_eq!(count("XACK"), 0);
    assert_eq!(
        from_clients
            .iter()
            .filter(|line| line.contains("] \"HINCRBY\"") && line.contains("attempts"))
            .count(),
        0
    );
    let reads = count("XREADGROUP");
    assert!(reads >= 1);
    eprintln!(
        "16 messages: {reads} reads, {} claim/settle calls (NOSCRIPT retries included), {} commands from clients",
        script_calls.len(),
        from_clients.len()
    );
}

/// A run in a batch whose lease is lost (its key taken over) is cancelled
/// and records nothing; one whose key is taken over as it succeeds is
/// refused its record at the settle call: neither message is acknowledged,
/// both run again after the visibility timeout and then succeed once; the
/// rest of the batch is acknowledged as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_in_a_batch_records_nothing() {
    let server = RedisServer::start();
    let url = server.url();
    enqueue(&url, &["a", "slow:x", "steal:y", "b"]).await;
    let running = consumer(&url, "lossy", 3 * SECOND).await;
    until("slow:x started", 10 * SECOND, || {
        field(&server, "runs", "slow:x") == "1"
    })
    .await;
    // Another owner takes the key over under the run's feet.
    server.cli(&[
        "SET",
        "soloist:lock:{job:charge:order:slow:x}",
        "intruder",
        "PX",
        "800",
    ]);
    until("a and b acknowledged", 10 * SECOND, || {
        field(&server, "effects", "a") == "1" && field(&server, "effects", "b") == "1"
    })
    .await;
    until("slow:x ran again", 15 * SECOND, || {
        field(&server, "runs", "slow:x") == "2"
    })
    .await;
    until("slow:x succeeded", 15 * SECOND, || {
        field(&server, "effects", "slow:x") == "1"
    })
    .await;
    until("nothing pending", 10 * SECOND, || pending(&server) == 0).await;
    running.stop().await;
    assert_eq!(
        field(&server, "effects", "slow:x"),
        "1",
        "its effect applied once"
    );
    assert_eq!(
        field(&server, "runs", "steal:y"),
        "2",
        "not acknowledged after its first run"
    );
    assert_eq!(
        field(&server, "effects", "steal:y"),
        "1",
        "its effect applied once"
    );
}

/// Redis frozen while a batch runs: the settle call cannot be answered in
/// time, so nothing of the batch is acknowledged (checked the moment Redis
/// thaws, before the visibility timeout brings anything back); then every
/// message runs again, ends acknowledged, its effect applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_that_fails_leaves_its_messages_unacknowledged() {
    let server = RedisServer::start();
    let url = server.url();
    let ids: Vec<String> = (0..8).map(|i| format!("slow:{i}")).collect();
    enqueue(&url, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let source = StreamSource::builder("orders")
        .consumer("frozen")
        .visibility_timeout(4 * SECOND)
        .block(Duration::from_millis(100))
        .connect(&url)
        .await
        .unwrap();
    let worker = Worker::builder(LockClient::connect(&url).await.unwrap())
        .consume(source, charge(&url, Duration::from_millis(700)))
        .build()
        .unwrap();
    let running = Running::start(worker);
    until("the batch started", 10 * SECOND, || {
        ids.iter().all(|id| field(&server, "runs", id) == "1")
    })
    .await;
    // Frozen past the op timeout (5 s) and the leases (2 s): the settle is
    // undecided until the leases end, then given up.
    server.pause();
    sleep(6 * SECOND).await;
    server.resume();
    // What Redis received while frozen runs now; the entries come back
    // only after the visibility timeout.
    sleep(Duration::from_millis(500)).await;
    assert_eq!(pending(&server), 8, "nothing acknowledged");
    for id in &ids {
        assert_eq!(field(&server, "effects", id), "", "{id}: nothing recorded");
    }
    until("every message acknowledged", 30 * SECOND, || {
        pending(&server) == 0
    })
    .await;
    running.stop().await;
    for id in &ids {
        assert_eq!(field(&server, "runs", id), "2", "{id}: ran again");
        assert_eq!(
            field(&server, "effects", id),
            "1",
            "{id}: effect applied once"
        );
    }
}

/// Redis killed mid-batch and started again (empty): the consumer carries
/// on with what is enqueued afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_batch_and_restarted() {
    let mut server = RedisServer::start();
    let url = server.url();
    let ids: Vec<String> = (0..8).map(|i| format!("slow:{i}")).collect();
    enqueue(&url, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let running = consumer(&url, "killed", Duration::from_millis(500)).await;
    until("the batch started", 10 * SECOND, || {
        ids.iter().all(|id| field(&server, "runs", id) == "1")
    })
    .await;
    server.restart();
    // The stream and its group are gone with the data set.
    server.cli(&["XGROUP", "CREATE", "orders", "soloist", "0", "MKSTREAM"]);
    enqueue(&url, &["after:1", "after:2"]).await;
    until("the new entries ran", 20 * SECOND, || {
        field(&server, "effects", "after:1") == "1" && field(&server, "effects", "after:2") == "1"
    })
    .await;
    until("nothing pending", 10 * SECOND, || pending(&server) == 0).await;
    running.stop().await;
}

/// A stream source wrapped by another keeps the batched path by handing
/// out its stream, and hears of the acknowledgements made in batch calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapping_source_hears_of_batched_acknowledgements() {
    struct Wrapped {
        inner: StreamSource,
        acked: Arc<AtomicU32>,
    }
    impl Source for Wrapped {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn receive(
            &self,
            max: usize,
        ) -> futures::future::BoxFuture<'_, Result<Vec<soloist::Delivery>, BoxError>> {
            self.inner.receive(max)
        }
        fn ack<'a>(
            &'a self,
            delivery: &'a soloist::Delivery,
        ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
            self.acked.fetch_add(1, Ordering::SeqCst);
            self.inner.ack(delivery)
        }
        fn dead_letter<'a>(
            &'a self,
            delivery: &'a soloist::Delivery,
            reason: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
            self.inner.dead_letter(delivery, reason)
        }
        fn enqueue<'a>(
            &'a self,
            job: &'a str,
            key: &'a str,
            payload: Vec<u8>,
        ) -> futures::future::BoxFuture<'a, Result<String, BoxError>> {
            self.inner.enqueue(job, key, payload)
        }
        fn as_stream(&self) -> Option<&StreamSource> {
            Some(&self.inner)
        }
        fn acknowledged(&self, deliveries: &[&soloist::Delivery]) {
            self.acked
                .fetch_add(deliveries.len() as u32, Ordering::SeqCst);
        }
    }
    let server = RedisServer::start();
    let url = server.url();
    enqueue(&url, &["w1", "w2", "w3"]).await;
    let acked = Arc::new(AtomicU32::new(0));
    let worker = Worker::builder(LockClient::connect(&url).await.unwrap())
        .consume(
            Wrapped {
                inner: source(&url, "wrapped").await,
                acked: acked.clone(),
            },
            charge(&url, SECOND),
        )
        .build()
        .unwrap();
    let running = Running::start(worker);
    until("all acknowledged", 10 * SECOND, || {
        acked.load(Ordering::SeqCst) == 3
    })
    .await;
    running.stop().await;
    assert_eq!(pending(&server), 0);
}

/// On a Redis Cluster (where a script touches one hash slot, so messages
/// are handled one at a time) keys over many slots each run once, and
/// every message is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_consumer_with_keys_over_many_slots() {
    let cluster = soloist_testkit::RedisCluster::start();
    let deployment = soloist::Deployment::cluster(cluster.urls());
    let source = || async {
        StreamSource::builder("{orders}")
            .visibility_timeout(Duration::from_millis(500))
            .block(Duration::from_millis(100))
            .open(deployment.clone())
            .await
            .unwrap()
    };
    let locks = LockClient::cluster(cluster.urls()).await.unwrap();
    let ran = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u32,
    >::new()));
    let seen = ran.clone();
    let job = keyed_job(
        JobSpec::keyed("charge", "order:{id}")
            .unwrap()
            .dedupe(3600 * SECOND),
        |id: &String| format!("order:{id}"),
        move |_ctx: JobContext, id: String| {
            *seen.lock().unwrap().entry(id.clone()).or_default() += 1;
            async move { Ok::<_, BoxError>(id) }
        },
    );
    let ids: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
    let slots: std::collections::HashSet<u16> = ids
        .iter()
        .map(|id| soloist::hash_slot(&format!("job:charge:order:{id}")))
        .collect();
    assert!(slots.len() > 30, "keys over many slots");
    let producer = source().await;
    for id in &ids {
        producer
            .enqueue(
                "charge",
                &format!("order:{id}"),
                serde_json::to_vec(id).unwrap(),
            )
            .await
            .unwrap();
    }
    let worker = Worker::builder(locks)
        .consume(source().await, job)
        .build()
        .unwrap();
    let running = Running::start(worker);
    let deadline = Instant::now() + 20 * SECOND;
    loop {
        let done = ran.lock().unwrap().len() == ids.len();
        let lag = producer.lag().await.unwrap();
        let pending = cluster.cli(&["XPENDING", "{orders}", "soloist"]);
        if done && lag == Some(0) && pending.lines().next() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "every message ran");
        sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert!(ran.lock().unwrap().values().all(|&runs| runs == 1));
}

/// The lock client's user loses `XACK` after the consumer chose batches:
/// the acknowledgements refused inside the claim (a duplicate) and the
/// settle (a success) are made on the stream's own connection instead, so
/// nothing stays pending and nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_acknowledgements_are_made_on_the_streams_connection() {
    let server = RedisServer::start();
    let url = server.url();
    let rules = ["ACL", "SETUSER", "locks", "on", ">secret", "allkeys"];
    assert_eq!(
        server.cli(&[&rules[..], &["allchannels", "+@all"]].concat()),
        "OK"
    );
    let locks_url = url.replace("redis://", "redis://locks:secret@");
    // Redelivered only after the test: each acknowledgement must be made
    // when it is refused, not by the claim of a redelivery.
    let source = StreamSource::builder("orders")
        .consumer("acl")
        .visibility_timeout(60 * SECOND)
        .block(Duration::from_millis(100))
        .connect(&url)
        .await
        .unwrap();
    let worker = Worker::builder(LockClient::connect(&locks_url).await.unwrap())
        .consume(source, charge(&url, Duration::ZERO))
        .build()
        .unwrap();
    let running = Running::start(worker);
    enqueue(&url, &["first"]).await;
    until("the first message acknowledged", 10 * SECOND, || {
        field(&server, "runs", "first") == "1" && pending(&server) == 0
    })
    .await;
    assert_eq!(server.cli(&["ACL", "SETUSER", "locks", "-xack"]), "OK");
    enqueue(&url, &["first", "second"]).await;
    until("both messages acknowledged", 10 * SECOND, || {
        field(&server, "runs", "second") == "1" && pending(&server) == 0
    })
    .await;
    running.stop().await;
    assert_eq!(
        field(&server, "runs", "first"),
        "1",
        "the duplicate did not run"
    );
    assert_eq!(field(&server, "effects", "second"), "1");
}

/// A lock client's user that may not acknowledge keeps the path one
/// delivery at a time: no claim script counts an attempt, and the stream's
/// own connection acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_acknowledge_does_not_batch() {
    let server = RedisServer::start();
    let url = server.url();
    let rules = ["ACL", "SETUSER", "locks", "on", ">secret", "allkeys"];
    assert_eq!(
        server.cli(&[&rules[..], &["allchannels", "+@all", "-xack"]].concat()),
        "OK"
    );
    let locks_url = url.replace("redis://", "redis://locks:secret@");
    let monitor = Monitor::start(server.port());
    let worker = Worker::builder(LockClient::connect(&locks_url).await.unwrap())
        .consume(source(&url, "acl").await, charge(&url, Duration::ZERO))
        .build()
        .unwrap();
    let running = Running::start(worker);
    enqueue(&url, &["one", "two"]).await;
    until("both messages acknowledged", 10 * SECOND, || {
        field(&server, "runs", "two") == "1" && pending(&server) == 0
    })
    .await;
    running.stop().await;
    let counted_in_scripts = monitor
        .lines()
        .iter()
        .filter(|line| line.contains(" lua] ") && line.contains("\"HINCRBY\" \"{orders}"))
        .count();
    assert_eq!(counted_in_scripts, 0, "no batch claim");
    assert_eq!(field(&server, "runs", "one"), "1");
}
