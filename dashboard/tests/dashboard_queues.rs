//! The queues page against a real redis-server: a queue's backlog and its
//! dead letters (their reasons escaped), Replay putting one back once, and
//! Purge all emptying the dead-letter stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use soloist::dashboard::{Options, router};
use soloist::inspect::{Inspector, RunFilter};
use soloist::{BoxError, JobContext, JobSpec, StreamSource, Worker, keyed_job};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};
use tower::ServiceExt;

mod common;

const SECOND: Duration = Duration::from_secs(1);

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 22).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn page(app: &axum::Router, path: &str) -> String {
    let (status, body) = send(app, Request::get(path).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn post(path: &str, form: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + 15 * SECOND;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 15 s");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_shown_replayed_once_and_purged() {
    let server = RedisServer::start();
    let failing = Arc::new(AtomicBool::new(true));
    let fails = failing.clone();
    let charge = move || {
        let fails = fails.clone();
        keyed_job(
            JobSpec::keyed("charge", "order:{id}")
                .unwrap()
                .dedupe(3600 * SECOND),
            |id: &String| format!("order:{id}"),
            move |_ctx: JobContext, id: String| {
                let fails = fails.load(Ordering::SeqCst);
                async move {
                    if fails {
                        return Err(BoxError::from(format!("<b>declined</b> {id}")));
                    }
                    Ok(())
                }
            },
        )
    };
    let source = StreamSource::builder("orders")
        .max_deliveries(1)
        .block(Duration::from_millis(100))
        .connect(&server.url())
        .await
        .unwrap();
    let worker = Worker::builder(common::client(&server).await)
        .replica_id("a")
        .consume(source, charge())
        .build()
        .unwrap();
    let handle = worker.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let inspector = Inspector::new(&common::client(&server).await).unwrap();
    handle.enqueue(charge(), "7".to_owned()).await.unwrap();
    handle.enqueue(charge(), "8".to_owned()).await.unwrap();
    until(
        "both dead-lettered",
        async || matches!(inspector.dead_letters("orders", 10).await, Ok(dead) if dead.len() == 2),
    )
    .await;
    failing.store(false, Ordering::SeqCst);

    let app = router(inspector.clone(), Options::default().actions(true));
    let queues = page(&app, "/queues").await;
    assert!(queues.contains(r#"<tr data-stream="orders">"#), "{queues}");
    assert!(
        !queues.contains("<b>declined"),
        "a reason is text, not markup"
    );
    assert!(queues.contains("&lt;b&gt;declined&lt;/b&gt;"), "{queues}");
    assert_eq!(queues.matches(r#"action="/queues/replay""#).count(), 2);
    let token = queues
        .split(r#"name="token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let dead = inspector.dead_letters("orders", 10).await.unwrap();

    let replay = format!("stream=orders&id={}&token={token}", dead[0].id);
    let (status, _) = send(&app, post("/queues/replay", &replay)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = send(&app, post("/queues/replay", &replay)).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a second replay is answered, not an error"
    );
    until("the replayed message charged", async || {
        !inspector
            .runs(&RunFilter::job("charge").outcome("success"))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    sleep(SECOND).await;
    let charged = inspector
        .runs(&RunFilter::job("charge").outcome("success"))
        .await
        .unwrap();
    assert_eq!(charged.len(), 1, "replayed once: {charged:?}");
    assert_eq!(inspector.dead_letters("orders", 10).await.unwrap().len(), 1);

    let (status, _) = send(
        &app,
        post(
            "/queues/purge",
            &format!("stream=orders&all=1&token={token}"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        inspector
            .dead_letters("orders", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let queues = page(&app, "/queues").await;
    assert!(!queues.contains("Dead letters of"), "{queues}");

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
