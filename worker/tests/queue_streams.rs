//! Keyed jobs consumed from a Redis Stream: duplicates skipped, poison and
//! malformed entries dead-lettered, and a consumer killed between a run's
//! success and its acknowledgement.

use std::time::Duration;

use soloist::{
    BoxError, Delivery, JobContext, JobSpec, KeyedJob, LockClient, Source, StreamSource, Worker,
    keyed_job,
};
use soloist_testkit::{ChildProcess, RedisServer, child_role, send_to_parent};
use tokio::sync::oneshot;

mod common;
use common::NeverAcks;

const SECOND: Duration = Duration::from_secs(1);

/// A job that counts its runs in Redis (so the count survives processes)
/// and fails for the key `poison`.
fn charge(url: &str) -> impl KeyedJob<Args = String, Output = String> + use<> {
    let client = redis::Client::open(url).expect("url");
    keyed_job(
        JobSpec::keyed("charge", "order:{id}")
            .expect("spec")
            .dedupe(3600 * SECOND),
        |id: &String| format!("order:{id}"),
        move |ctx: JobContext, id: String| {
            let client = client.clone();
            async move {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("HINCRBY")
                    .arg("effects")
                    .arg(&id)
                    .arg(1)
                    .query_async::<()>(&mut conn)
                    .await?;
                if id == "poison" {
                    return Err(BoxError::from(format!("cannot charge {id}")));
                }
                Ok(format!("receipt:{id}:{}", ctx.fence()))
            }
        },
    )
}

async fn source(url: &str, consumer: &str) -> StreamSource {
    StreamSource::builder("orders")
        .consumer(consumer)
        .visibility_timeout(Duration::from_millis(300))
        .max_deliveries(3)
        .block(Duration::from_millis(100))
        .connect(url)
        .await
        .expect("stream source")
}

/// Runs a consuming worker until `stop` fires.
async fn run_consumer(url: String, consumer: &str, stop: oneshot::Receiver<()>) {
    let locks = LockClient::connect(&url).await.expect("connect");
    let worker = Worker::builder(locks)
        .consume(source(&url, consumer).await, charge(&url))
        .build()
        .expect("worker");
    worker
        .run_until(async {
            let _ = stop.await;
        })
        .await
        .expect("worker ran");
}

fn effects(server: &RedisServer, id: &str) -> String {
    server.cli(&["HGET", "effects", id])
}

fn pending(server: &RedisServer) -> String {
    server
        .cli(&["XPENDING", "orders", "soloist"])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_poison_and_malformed_entries() {
    let server = RedisServer::start();
    let url = server.url();
    let producer = Worker::builder(LockClient::connect(&url).await.unwrap())
        .consume(source(&url, "producer").await, charge(&url))
        .build()
        .unwrap();
    let handle = producer.handle();
    for id in ["a", "b", "a", "c", "a", "poison", "b"] {
        handle.enqueue(charge(&url), id.to_owned()).await.unwrap();
    }
    server.cli(&["XADD", "orders", "*", "job", "charge"]); // no args
    server.cli(&["XADD", "orders", "*", "job", "charge", "args", "{not json"]);
    server.cli(&["XADD", "orders", "*", "job", "refund", "args", "\"a\""]);
    let probe = source(&url, "probe").await;
    assert_eq!(probe.lag().await.unwrap(), Some(10), "all ten entries wait");
    let (stop_a, stopped_a) = oneshot::channel();
    let (stop_b, stopped_b) = oneshot::channel();
    let consumers = tokio::join!(
        run_consumer(url.clone(), "one", stopped_a),
        run_consumer(url.clone(), "two", stopped_b),
        async {
            tokio::time::sleep(3 * SECOND).await;
            let _ = stop_a.send(());
            let _ = stop_b.send(());
        }
    );
    let _ = consumers;
    for id in ["a", "b", "c"] {
        assert_eq!(effects(&server, id), "1", "order {id} charged once");
    }
    assert_eq!(
        effects(&server, "poison"),
        "3",
        "tried max_deliveries times"
    );
    let dead = server.cli(&["XRANGE", "{orders}:dead", "-", "+"]);
    assert!(
        dead.contains("failed 3 times: cannot charge poison"),
        "{dead}"
    );
    assert!(dead.contains("malformed entry"), "{dead}");
    assert!(dead.contains("bad arguments"), "{dead}");
    assert!(dead.contains("no job named `refund`"), "{dead}");
    assert_eq!(server.cli(&["XLEN", "{orders}:dead"]), "4");
    assert_eq!(pending(&server), "0", "everything was acknowledged");
    assert_eq!(probe.lag().await.unwrap(), Some(0));
}

#[test]
fn a_consumer_killed_before_acking_does_not_run_the_job_twice() {
    const TEST: &str = "a_consumer_killed_before_acking_does_not_run_the_job_twice";
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    };
    if child_role().as_deref() == Some("consumer") {
        let url = std::env::var("REDIS_URL").expect("REDIS_URL");
        runtime().block_on(async {
            let locks = LockClient::connect(&url).await.expect("connect");
            let worker = Worker::builder(locks)
                .consume(
                    NeverAcks {
                        source: source(&url, "doomed").await,
                        on_ack: |delivery: &Delivery| {
                            send_to_parent(&format!("acking {}", delivery.id));
                        },
                    },
                    charge(&url),
                )
                .build()
                .expect("worker");
            worker
                .run_until(std::future::pending::<()>())
                .await
                .expect("worker");
        });
        return;
    }
    let server = RedisServer::start();
    let url = server.url();
    runtime().block_on(async {
        let producer = Worker::builder(LockClient::connect(&url).await.unwrap())
            .consume(source(&url, "producer").await, charge(&url))
            .build()
            .unwrap();
        producer
            .handle()
            .enqueue(charge(&url), "x".to_owned())
            .await
            .unwrap();
    });
    let mut doomed = ChildProcess::spawn(TEST, "consumer", &[("REDIS_URL", &url)]);
    let acking = doomed.read_line();
    assert!(acking.starts_with("acking "), "{acking}");
    doomed.kill();
    assert_eq!(effects(&server, "x"), "1");
    assert_eq!(pending(&server), "1", "the entry is left pending");
    runtime().block_on(async {
        let (stop, stopped) = oneshot::channel();
        let consumer = tokio::spawn(run_consumer(url.clone(), "survivor", stopped));
        tokio::time::sleep(2 * SECOND).await;
        let _ = stop.send(());
        consumer.await.expect("consumer");
    });
    assert_eq!(
        effects(&server, "x"),
        "1",
        "the redelivered entry did not run the job again"
    );
    assert_eq!(pending(&server), "0", "and it was acknowledged");
    assert_eq!(server.cli(&["XLEN", "{orders}:dead"]), "0");
}
