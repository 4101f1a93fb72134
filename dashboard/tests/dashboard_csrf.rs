//! The controls refuse cross-site requests: against a real redis-server
//! with a live replica, a POST without the form token, with a foreign
//! `Origin`, or to a read-only dashboard is refused and changes nothing;
//! the same POST with the token from the page's own origin pauses the job.

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use soloist::dashboard::{Options, router};
use soloist::inspect::Inspector;
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};
use tower::ServiceExt;

mod common;

const HOST: &str = "127.0.0.1:8080";

async fn send(app: &axum::Router, request: Request<Body>) -> Response {
    app.clone()
        .oneshot(request)
        .await
        .expect("the router answers")
}

async fn body(response: Response) -> String {
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn pause(form: &str, origin: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/jobs/pause")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request.body(Body::from(form.to_owned())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_the_token_or_from_another_site_change_nothing() {
    let server = RedisServer::start();
    let _worker = common::replica(&server, "a", "sweep", "0 0 * * * *").await;
    let inspector = Inspector::new(&common::client(&server).await).unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while inspector.jobs().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the replica announced its job");
        sleep(std::time::Duration::from_millis(50)).await;
    }
    let app = router(inspector.clone(), Options::default().actions(true));

    let page = send(
        &app,
        Request::get("/jobs")
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = body(page).await;
    let token = html
        .split(r#"name="token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry the token")
        .to_owned();
    assert_eq!(token.len(), 64);

    let refused = [
        (
            "no token",
            pause("job=sweep", Some("http://127.0.0.1:8080")),
        ),
        (
            "wrong token",
            pause(&format!("job=sweep&token={}", "0".repeat(64)), None),
        ),
        (
            "foreign origin",
            pause(
                &format!("job=sweep&token={token}"),
                Some("http://evil.example"),
            ),
        ),
        (
            "null origin",
            pause(&format!("job=sweep&token={token}"), Some("null")),
        ),
    ];
    for (what, request) in refused {
        let response = send(&app, request).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(body(response).await.starts_with("refused"), "{what}");
        assert!(
            inspector.paused().await.unwrap().is_empty(),
            "{what} changed nothing"
        );
    }

    let read_only = router(inspector.clone(), Options::default());
    let response = send(&read_only, pause(&format!("job=sweep&token={token}"), None)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        inspector.paused().await.unwrap().is_empty(),
        "a read-only dashboard changed nothing"
    );
    let html = body(
        send(
            &read_only,
            Request::get("/jobs").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert!(
        !html.contains(r#"method="post""#),
        "a read-only page offers no controls"
    );

    let response = send(
        &app,
        pause(
            &format!("job=sweep&token={token}"),
            Some("http://127.0.0.1:8080"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        inspector.paused().await.unwrap().contains_key("sweep"),
        "the genuine form paused the job"
    );
}
