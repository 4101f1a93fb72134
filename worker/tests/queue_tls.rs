//! A stream consumer over TLS with mutual TLS, and as an ACL user, against
//! real redis-server processes.

use std::time::Duration;

use soloist::{
    BoxError, Deployment, JobContext, JobSpec, KeyedJob, LockClient, Source, StreamSource,
    StreamSourceBuilder, Worker, WorkerError, keyed_job,
};
use soloist_testkit::RedisServer;
use tokio::sync::mpsc;

const SECOND: Duration = Duration::from_secs(1);

/// A job that reports each run's key and fence.
fn charge(
    runs: mpsc::UnboundedSender<(String, u64)>,
) -> impl KeyedJob<Args = String, Output = String> + use<> {
    keyed_job(
        JobSpec::keyed("charge", "order:{id}")
            .expect("spec")
            .dedupe(3600 * SECOND),
        |id: &String| format!("order:{id}"),
        move |ctx: JobContext, id: String| {
            let runs = runs.clone();
            async move {
                runs.send((id.clone(), ctx.fence()))
                    .map_err(|_| BoxError::from("test gone"))?;
                Ok::<_, BoxError>(format!("receipt:{id}"))
            }
        },
    )
}

/// A server whose default user is off and whose only user is `soloist`;
/// `redis-cli` without credentials cannot talk to it afterwards.
fn acl_server(builder: soloist_testkit::RedisServerBuilder) -> RedisServer {
    let server = builder.start();
    server.only_user("soloist", "secret");
    server
}

fn with_user(url: &str) -> String {
    url.replacen("://", "://soloist:secret@", 1)
}

/// Enqueues three orders through `source`, runs a worker until each ran
/// once, and checks nothing is left to deliver.
async fn consume_three(
    locks: LockClient,
    source: impl Fn() -> StreamSourceBuilder,
    redis: Deployment,
) {
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = Worker::builder(locks)
        .consume(
            source()
                .consumer("one")
                .open(redis.clone())
                .await
                .expect("source"),
            charge(runs.clone()),
        )
        .build()
        .expect("worker");
    let handle = worker.handle();
    for id in ["a", "b", "c"] {
        handle
            .enqueue(charge(runs.clone()), id.to_owned())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    worker
        .run_until(async {
            while seen.len() < 3 {
                match tokio::time::timeout(10 * SECOND, ran.recv()).await {
                    Ok(Some((id, fence))) => seen.push((id, fence)),
                    _ => break,
                }
            }
        })
        .await
        .expect("worker ran");
    let mut ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b", "c"], "each order ran once");
    assert!(seen.iter().all(|&(_, fence)| fence > 0));
    let probe = source().consumer("probe").open(redis).await.expect("probe");
    assert_eq!(probe.lag().await.unwrap(), Some(0), "all delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_over_mutual_tls_as_an_acl_user() {
    let server = acl_server(RedisServer::builder().tls_auth_clients(true));
    let url = with_user(&server.tls_url());
    let certs = server.certificates().clone();
    let redis = Deployment::server(&url)
        .tls_root_certificate(certs.ca_pem())
        .tls_client_identity(certs.client_cert_pem(), certs.client_key_pem());
    let locks = LockClient::builder()
        .open(redis.clone())
        .await
        .expect("locks over mutual TLS");
    let source = || StreamSource::builder("orders").block(Duration::from_millis(100));
    consume_three(locks, source, redis).await;

    // Without the client identity the server refuses the handshake.
    let refused = StreamSource::builder("orders")
        .open(Deployment::server(&url).tls_root_certificate(certs.ca_pem()));
    match tokio::time::timeout(10 * SECOND, refused).await {
        Ok(Err(WorkerError::Lock(soloist::LockError::Connection { .. }))) => {}
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_as_an_acl_user_over_plain_tcp() {
    let server = acl_server(RedisServer::builder());
    let url = with_user(&server.url());
    let locks = LockClient::connect(&url)
        .await
        .expect("locks as the ACL user");
    let source = || StreamSource::builder("orders").block(Duration::from_millis(100));
    consume_three(locks, source, Deployment::server(&url)).await;

    // Attempt counts and dead letters live beside the stream, where the
    // recipe's `~{orders}:*` lets the user write.
    let failing = source()
        .consumer("two")
        .connect(&url)
        .await
        .expect("source");
    failing
        .enqueue("charge", "d", b"\"d\"".to_vec())
        .await
        .expect("enqueue");
    let deliveries = failing.receive(10).await.expect("receive");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        failing.record_attempt(&deliveries[0]).await.expect("count"),
        1
    );
    failing
        .dead_letter(&deliveries[0], "given up")
        .await
        .expect("dead-letter as the ACL user");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let dead: u64 = redis::cmd("XLEN")
        .arg("{orders}:dead")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 1);
}

#[tokio::test]
async fn bad_tls_settings_name_the_setting() {
    let err = StreamSource::builder("orders")
        .open(Deployment::server("rediss://127.0.0.1:1").tls_root_certificate("not pem"))
        .await
        .expect_err("not a certificate");
    assert!(
        matches!(
            err,
            WorkerError::InvalidJob {
                name: "tls_root_certificate",
                ..
            }
        ),
        "{err:?}"
    );
}
