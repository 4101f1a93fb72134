//! A replica process SIGKILLed mid-run: it leaves the registry within its
//! heartbeat, and its tick's history shows the peer that took it over, not
//! a run of the dead replica.

use std::time::Duration;

use soloist::inspect::{Inspector, RunFilter};
use soloist::{JobContext, JobSpec, LockClient, Worker, cron_job};
use soloist_testkit::{ChildProcess, RedisServer, child_role, send_to_parent};
use tokio::time::{Instant, sleep};

const TEST: &str = "a_replica_killed_mid_run_is_gone_and_its_run_taken_over";

/// The job both replicas run: every 5 s; the child's runs hang (and say so),
/// the peer's end at once.
fn job() -> impl soloist::IntoJob {
    cron_job(
        JobSpec::cron("slow", "*/5 * * * * *", "UTC")
            .unwrap()
            .ttl(Duration::from_secs(1))
            .misfire(Duration::from_secs(20)),
        |ctx: JobContext| async move {
            if ctx.replica() == "child" {
                send_to_parent(&format!(
                    "running {}",
                    ctx.scheduled_at().map_or(0, |t| t.timestamp_millis())
                ));
                sleep(Duration::from_secs(600)).await;
            }
            Ok::<_, std::io::Error>(())
        },
    )
}

async fn worker(url: &str, replica: &str) -> Worker {
    Worker::builder(LockClient::connect(url).await.unwrap())
        .replica_id(replica)
        .heartbeat(Duration::from_secs(2))
        .job(job())
        .build()
        .unwrap()
}

#[test]
fn a_replica_killed_mid_run_is_gone_and_its_run_taken_over() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if child_role().as_deref() == Some("replica") {
        let url = std::env::var("REDIS_URL").unwrap();
        runtime.block_on(async {
            worker(&url, "child")
                .await
                .run_until(std::future::pending::<()>())
                .await
                .unwrap();
        });
        return;
    }
    let server = RedisServer::start();
    let url = server.url();
    let mut child = ChildProcess::spawn(TEST, "replica", &[("REDIS_URL", &url)]);
    let line = child
        .try_read_line(Duration::from_secs(15))
        .expect("the child runs a tick");
    let tick: i64 = line.strip_prefix("running ").unwrap().parse().unwrap();
    runtime.block_on(async {
        let inspector = Inspector::new(&LockClient::connect(&url).await.unwrap()).unwrap();
        let replicas = inspector.replicas().await.unwrap();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].pid, child.pid());
        // The tick's lock shows its holder: the child.
        let held = inspector.locks("cron:*").await.unwrap();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].replica.as_deref(), Some("child"));

        // A peer joins, waiting on the tick the child runs.
        let peer = worker(&url, "peer").await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(peer.run_until(async {
            let _ = stopped.await;
        }));
        sleep(Duration::from_millis(500)).await;
        child.kill();
        let killed = Instant::now();
        loop {
            let live: Vec<String> = inspector
                .replicas()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.replica)
                .collect();
            if !live.contains(&"child".to_owned()) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_millis(2500),
                "still listed: {live:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
        // The killed replica's tick: run again by the peer, once.
        let deadline = Instant::now() + Duration::from_secs(10);
        let runs = loop {
            let runs: Vec<_> = inspector
                .runs(&RunFilter::job("slow"))
                .await
                .unwrap()
                .into_iter()
                .filter(|run| run.tick_ms == Some(tick))
                .collect();
            if !runs.is_empty() || Instant::now() > deadline {
                break runs;
            }
            sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(
            (runs[0].replica.as_str(), runs[0].outcome.as_str()),
            ("peer", "success")
        );
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    });
}
