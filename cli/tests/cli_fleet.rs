//! The built `soloist` binary against a real redis-server with a worker
//! running: what it prints with `--json`, what its controls do, and how it
//! fails.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use soloist::{
    BoxError, JobContext, JobSpec, LockClient, StreamSource, Worker, cron_job, keyed_job,
};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

fn soloist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soloist"))
        .args(args)
        .env_remove("SOLOIST_URL")
        .output()
        .expect("the soloist binary runs")
}

/// Runs `soloist --url <server> --json ARGS`, which must succeed, and
/// parses what it printed.
fn json(server: &RedisServer, args: &[&str]) -> Value {
    let url = server.url();
    let mut all = vec!["--url", url.as_str(), "--json"];
    all.extend_from_slice(args);
    let output = soloist(&all);
    assert!(
        output.status.success(),
        "soloist {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_shows_and_steers_a_running_worker() {
    let server = RedisServer::start();
    let ticks = Arc::new(AtomicU32::new(0));
    let counter = ticks.clone();
    let sweep = cron_job(
        JobSpec::cron("sweep", "* * * * * *", "Europe/Berlin").unwrap(),
        move |_ctx: JobContext| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        },
    );
    let yearly_runs = Arc::new(AtomicU32::new(0));
    let yearly_counter = yearly_runs.clone();
    let yearly = cron_job(
        JobSpec::cron("yearly", "0 0 0 1 1 *", "UTC").unwrap(),
        move |_ctx: JobContext| {
            yearly_counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        },
    );
    let charge = || {
        keyed_job(
            JobSpec::keyed("charge", "order:{id}")
                .unwrap()
                .dedupe(3600 * SECOND),
            |id: &String| format!("order:{id}"),
            |_ctx: JobContext, id: String| async move {
                Err::<String, _>(BoxError::from(format!("declined {id}")))
            },
        )
    };
    let source = StreamSource::builder("orders")
        .max_deliveries(1)
        .block(Duration::from_millis(100))
        .connect(&server.url())
        .await
        .unwrap();
    let worker = Worker::builder(LockClient::connect(&server.url()).await.unwrap())
        .replica_id("w1")
        .job(sweep)
        .job(yearly)
        .consume(source, charge())
        .build()
        .unwrap();
    let handle = worker.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    handle.enqueue(charge(), "x".to_owned()).await.unwrap();

    until("the replica and a run", 10 * SECOND, || {
        ticks.load(Ordering::SeqCst) > 0
            && json(&server, &["status"])["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
    })
    .await;
    let status = json(&server, &["status"]);
    assert_eq!(status["replicas"][0]["replica"], "w1");
    assert_eq!(status["replicas"][0]["pid"], std::process::id());

    let jobs = json(&server, &["jobs"]);
    let sweep = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "sweep")
        .expect("sweep listed");
    assert_eq!(sweep["kind"], "cron");
    assert_eq!(sweep["time_zone"], "Europe/Berlin");
    assert_eq!(sweep["paused"], false);
    let now = status["server_time_ms"].as_i64().unwrap();
    assert!(sweep["next_tick_ms"].as_i64().unwrap() > now);

    until("a recorded run of sweep", 5 * SECOND, || {
        !json(&server, &["runs", "sweep"])
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let runs = json(&server, &["runs", "sweep", "--limit", "1"]);
    assert_eq!(runs[0]["replica"], "w1");
    assert_eq!(runs[0]["outcome"], "success");

    until("the message dead-lettered", 10 * SECOND, || {
        json(&server, &["queues"])[0]["dead"] == 1
    })
    .await;
    let queues = json(&server, &["queues"]);
    assert_eq!(queues[0]["stream"], "orders");
    assert_eq!(queues[0]["jobs"][0], "charge");
    let dead = json(&server, &["dead", "list", "orders"]);
    assert_eq!(dead[0]["key"], "order:x");
    let failed = json(&server, &["runs", "charge", "--outcome", "failure"]);
    assert_eq!(failed[0]["error"], "declined x");

    // A held lock, by pattern.
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let guard = locks.lock("orders:7").acquire().await.unwrap();
    let held = json(&server, &["locks", "orders:*"]);
    assert_eq!(held.as_array().unwrap().len(), 1);
    assert_eq!(held[0]["key"], "orders:7");
    assert_eq!(held[0]["owner"], soloist::owner_id());
    guard.release().await.unwrap();

    // Pause: no tick claimed; resume; trigger runs once.
    assert_eq!(json(&server, &["pause", "sweep"])["paused"], true);
    sleep(1500 * Duration::from_millis(1)).await;
    let paused_at = ticks.load(Ordering::SeqCst);
    sleep(2 * SECOND).await;
    assert_eq!(ticks.load(Ordering::SeqCst), paused_at);
    assert_eq!(json(&server, &["resume", "sweep"])["was_paused"], true);
    assert!(json(&server, &["trigger", "yearly"])["triggered_at_ms"].is_i64());
    until("the triggered run", 5 * SECOND, || {
        yearly_runs.load(Ordering::SeqCst) == 1
    })
    .await;
    until("ticks again", 5 * SECOND, || {
        ticks.load(Ordering::SeqCst) > paused_at
    })
    .await;

    // Dead letters: replayed once, then purged.
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    let replayed = json(&server, &["dead", "replay", "orders", &id]);
    assert!(replayed[0]["replayed_as"].is_string());
    let again = json(&server, &["dead", "replay", "orders", &id]);
    assert!(again[0]["replayed_as"].is_null());
    until(
        "the replayed message dead-lettered again",
        10 * SECOND,
        || json(&server, &["queues"])[0]["dead"] == 1,
    )
    .await;
    assert_eq!(
        json(&server, &["dead", "purge", "orders", "--all"])["purged"],
        1
    );

    // The human table names the job.
    let url = server.url();
    let table = soloist(&["--url", &url, "jobs"]);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.starts_with("JOB") && text.contains("sweep") && text.contains("Europe/Berlin"),
        "{text}"
    );

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[test]
fn failures_say_why_on_one_line_and_exit_non_zero() {
    // Nothing listens there (port 1 is privileged and unused).
    let refused = soloist(&["--url", "redis://127.0.0.1:1", "status"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(stderr.starts_with("soloist: error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(refused.stdout.is_empty());

    let malformed = soloist(&["--url", "not a url", "jobs"]);
    assert!(!malformed.status.success());
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(stderr.contains("url"), "{stderr}");

    let nowhere = soloist(&["jobs"]);
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("--url"));

    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("redis://127.0.0.1:1"), "{stderr}");

    let purge = soloist(&["--url", "redis://127.0.0.1:1", "dead", "purge", "orders"]);
    assert!(!purge.status.success());
    assert!(String::from_utf8_lossy(&purge.stderr).contains("--all"));
}

/// Over mutual TLS: the CA and the client identity from files.
#[cfg(feature = "tls-rustls")]
#[test]
fn tls_servers_take_the_ca_and_client_identity_files() {
    let server = RedisServer::builder().tls().tls_auth_clients(true).start();
    let certs = server.certificates();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_string_lossy().into_owned()
    };
    let ca = write("ca.pem", certs.ca_pem());
    let cert = write("client.pem", certs.client_cert_pem());
    let key = write("client.key", certs.client_key_pem());
    let url = server.tls_url();
    let ok = soloist(&[
        "--url",
        &url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--json",
        "status",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let status: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(status["replicas"].as_array().unwrap().is_empty());

    // Without the CA the server's certificate is refused, saying so.
    let refused = soloist(&["--url", &url, "status"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.starts_with("soloist: error: cannot use Redis at rediss://"),
        "{stderr}"
    );

    let missing = soloist(&["--url", &url, "--tls-ca", "/nonexistent/ca.pem", "status"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/ca.pem"));
}

/// Through Sentinel, and on a Redis Cluster: the same facts as on one
/// server, here a held lock and its holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_and_cluster_deployments_show_the_same_facts() {
    let group = soloist_testkit::SentinelGroup::start("main");
    let locks = LockClient::sentinel(group.sentinel_urls(), "main")
        .await
        .unwrap();
    let guard = locks.lock("orders:1").acquire().await.unwrap();
    let sentinels = group.sentinel_urls();
    let mut args = Vec::new();
    for url in &sentinels {
        args.extend(["--sentinel", url.as_str()]);
    }
    args.extend(["--master", "main", "--json", "locks"]);
    let output = soloist(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let held: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(held[0]["key"], "orders:1");
    assert_eq!(held[0]["owner"], soloist::owner_id());
    guard.release().await.unwrap();

    let cluster = soloist_testkit::RedisCluster::start();
    let locks = LockClient::cluster(cluster.urls()).await.unwrap();
    let mut guards = Vec::new();
    for i in 0..50 {
        guards.push(locks.lock(format!("k:{i}")).acquire().await.unwrap());
    }
    let urls = cluster.urls();
    let mut args = Vec::new();
    for url in &urls {
        args.extend(["--url", url.as_str()]);
    }
    args.extend(["--json", "locks", "k:*"]);
    let output = soloist(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let held: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(held.as_array().unwrap().len(), 50);
    drop(guards);
}
