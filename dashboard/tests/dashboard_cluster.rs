//! The dashboard on a Redis Cluster: the pages show what the inspector
//! reads from every primary — the replica, the job, its runs, a held lock
//! with its holder (its user-given key escaped) — and Trigger now runs the
//! job once.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use soloist::dashboard::{Options, router};
use soloist::inspect::{Inspector, RunFilter};
use soloist::{JobContext, JobSpec, LockClient, Worker, cron_job};
use soloist_testkit::RedisCluster;
use tokio::time::{Instant, sleep};
use tower::ServiceExt;

const SECOND: Duration = Duration::from_secs(1);

async fn get(app: &axum::Router, path: &str) -> String {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    let bytes = to_bytes(response.into_body(), 1 << 22).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + 15 * SECOND;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 15 s");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pages_show_a_cluster_fleet_and_trigger_runs_once() {
    let cluster = RedisCluster::start();
    let connect = async || {
        LockClient::cluster(cluster.urls())
            .await
            .expect("cluster client")
    };
    let worker = Worker::builder(connect().await)
        .replica_id("c1")
        .heartbeat(2 * SECOND)
        .job(cron_job(
            JobSpec::cron("sweep", "* * * * * *", "UTC").unwrap(),
            |_ctx: JobContext| async { Ok::<_, std::io::Error>(()) },
        ))
        .job(cron_job(
            JobSpec::cron("yearly", "0 0 0 1 1 *", "UTC").unwrap(),
            |_ctx: JobContext| async { Ok::<_, std::io::Error>(()) },
        ))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let locks = connect().await;
    let inspector = Inspector::new(&locks).unwrap();
    let app = router(inspector.clone(), Options::default().actions(true));

    until("a recorded sweep on the jobs page", async || {
        get(&app, "/jobs")
            .await
            .contains(r#"data-outcome="success""#)
    })
    .await;
    let overview = get(&app, "/").await;
    assert!(overview.contains(r#"data-replica="c1""#), "{overview}");
    let runs = get(&app, "/runs?job=sweep").await;
    assert!(
        runs.contains(r#"<tr data-job="sweep" data-outcome="success""#),
        "{runs}"
    );

    let guard = locks
        .lock("orders:<42>")
        .ttl(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    let page = get(&app, "/locks?pattern=orders:*").await;
    assert!(page.contains(r#"data-key="orders:&lt;42&gt;""#), "{page}");
    assert!(
        page.contains("<td>c1</td>"),
        "the holder is the replica: {page}"
    );
    guard.release().await.unwrap();

    let jobs = get(&app, "/jobs").await;
    let token = jobs
        .split(r#"name="token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let trigger = Request::post("/jobs/trigger")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("job=yearly&token={token}")))
        .unwrap();
    let response = app.clone().oneshot(trigger).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    until("the triggered run recorded", async || {
        !inspector
            .runs(&RunFilter::job("yearly"))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    sleep(2 * SECOND).await;
    let yearly = inspector.runs(&RunFilter::job("yearly")).await.unwrap();
    assert_eq!(yearly.len(), 1, "{yearly:?}");
    assert!(yearly[0].triggered);
    let page = get(&app, "/runs?job=yearly").await;
    assert_eq!(page.matches("data-triggered").count(), 1, "{page}");

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
