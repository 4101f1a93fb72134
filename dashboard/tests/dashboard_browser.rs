//! The dashboard in a real browser: headless Chromium, driven through
//! chromedriver over WebDriver, against a real redis-server with two
//! replicas running a cron job every 2 s. It sees the job with its next
//! tick, pauses it (no replica claims a tick after the pause), resumes and
//! triggers it (exactly one triggered run), sees the pages reload
//! themselves and load nothing from elsewhere, and saves the screenshot of
//! the jobs page (the README's `docs/dashboard-jobs.png` when run with
//! `SOLOIST_SCREENSHOT=docs/dashboard-jobs.png`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`bash .ci/test`
//! installs them); `CHROMEDRIVER` and `CHROMIUM` name other binaries.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use soloist::dashboard::{Options, router};
use soloist::inspect::{Inspector, RunFilter, RunRecord};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};

mod common;

const SECOND: Duration = Duration::from_secs(1);

/// A chromedriver process on a free port, killed on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn chromedriver() -> Chromedriver {
    let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot start `{bin}` ({err}): this test drives headless Chromium through \
                 chromedriver; install them with `apt-get install -y chromium chromium-driver` \
                 (`bash .ci/test` does), or set CHROMEDRIVER to its path"
            )
        });
    let driver = Chromedriver { child, port };
    let deadline = std::time::Instant::now() + 20 * SECOND;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver listened within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Chromedriver) -> Client {
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,640",
    ];
    args.push("--hide-scrollbars");
    let mut options = serde_json::json!({ "args": args });
    let chromium = std::env::var("CHROMIUM").ok().or_else(|| {
        std::path::Path::new("/usr/bin/chromium")
            .exists()
            .then(|| "/usr/bin/chromium".to_owned())
    });
    if let Some(chromium) = chromium {
        options["binary"] = chromium.into();
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".to_owned(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a headless Chromium session")
}

/// Opens `url` until `css` is on it, and returns that element's `attr`.
async fn wait_for(client: &Client, url: &str, css: &str, attr: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        client.goto(url).await.expect("page loads");
        if let Ok(found) = client.find(Locator::Css(css)).await
            && let Ok(Some(value)) = found.attr(attr).await
        {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` on {url} within {within:?}"
        );
        sleep(Duration::from_millis(300)).await;
    }
}

/// Clicks the button `css` on `url`; a page that reloads itself between
/// finding and clicking is retried.
async fn click(client: &Client, url: &str, css: &str) {
    client.goto(url).await.expect("page loads");
    let mut last = None;
    for _ in 0..5 {
        match client.find(Locator::Css(css)).await {
            Ok(button) => match button.click().await {
                Ok(()) => return,
                Err(err) => last = Some(err),
            },
            Err(err) => last = Some(err),
        }
        sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot click `{css}` on {url}: {last:?}");
}

async fn sweeps(inspector: &Inspector) -> Vec<RunRecord> {
    inspector
        .runs(&RunFilter::job("sweep").limit(1000))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_pauses_resumes_and_triggers_a_job_in_a_browser() {
    let driver = chromedriver();
    let server = RedisServer::start();
    let a = common::replica(&server, "a", "sweep", "*/2 * * * * *").await;
    let b = common::replica(&server, "b", "sweep", "*/2 * * * * *").await;
    let inspector = Inspector::new(&common::client(&server).await).unwrap();

    // Mounted the way a service mounts it: nested under a path of its own.
    let options = Options::default().actions(true).refresh(2 * SECOND);
    let app = axum::Router::new().nest("/ops", router(inspector.clone(), options));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}/ops");
    let jobs = format!("{base}/jobs");
    let client = browser(&driver).await;

    // The job, with its next tick by the fleet clock and a last run.
    let row = r#"#jobs tr[data-job="sweep"]"#;
    wait_for(
        &client,
        &jobs,
        &format!("{row} td.last"),
        "data-outcome",
        15 * SECOND,
    )
    .await;
    let next: i64 = wait_for(&client, &jobs, &format!("{row} td.next"), "data-ms", SECOND)
        .await
        .parse()
        .unwrap();
    let now: i64 = client
        .find(Locator::Css("#server-time"))
        .await
        .unwrap()
        .attr("data-ms")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next > now && next - now <= 2000,
        "next tick {next} within 2 s of {now}"
    );
    assert_eq!(next % 2000, 0, "the next tick is on the schedule");
    let text = client
        .find(Locator::Css(&format!("{row} td.next")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("in "),
        "the next tick reads as a time to come: {text}"
    );

    // Nothing is loaded from anywhere but the dashboard.
    let loaded = client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
    assert!(
        !loaded.is_empty(),
        "the page loads its stylesheet and script"
    );
    for url in &loaded {
        assert!(url.starts_with(&base), "{url} comes from the dashboard");
    }

    // Pause: neither replica claims a tick after the pause.
    click(
        &client,
        &jobs,
        &format!(r#"{row} form[action="/ops/jobs/pause"] button"#),
    )
    .await;
    wait_for(
        &client,
        &jobs,
        &format!("{row} td.paused span.paused"),
        "class",
        5 * SECOND,
    )
    .await;
    let paused_at = *inspector
        .paused()
        .await
        .unwrap()
        .get("sweep")
        .expect("the click paused the job");
    // The page reloads itself: its clock moves without being navigated.
    let shown = |client: Client| async move {
        let clock = client.find(Locator::Css("#server-time")).await.ok()?;
        clock.attr("data-ms").await.ok()??.parse::<i64>().ok()
    };
    let before = shown(client.clone())
        .await
        .expect("the jobs page shows the fleet clock");
    sleep(5 * SECOND).await;
    let mut after = None;
    for _ in 0..10 {
        after = shown(client.clone()).await;
        if after.is_some() {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let after = after.expect("the reloaded page shows the fleet clock");
    assert!(
        after > before,
        "the page reloaded itself ({before} -> {after})"
    );
    let now = inspector.server_time().await.unwrap().timestamp_millis();
    assert!(now - paused_at >= 4000, "two ticks fell during the pause");
    let claimed: Vec<_> = sweeps(&inspector)
        .await
        .into_iter()
        .filter(|run| run.tick_ms.is_some_and(|tick| tick > paused_at))
        .collect();
    assert!(
        claimed.is_empty(),
        "ticks claimed after the pause at {paused_at}: {claimed:?}"
    );

    // Resume, then Trigger now: exactly one run for the trigger.
    click(
        &client,
        &jobs,
        &format!(r#"{row} form[action="/ops/jobs/resume"] button"#),
    )
    .await;
    wait_for(
        &client,
        &jobs,
        &format!(r#"{row} form[action="/ops/jobs/trigger"]"#),
        "action",
        5 * SECOND,
    )
    .await;
    assert!(
        inspector.paused().await.unwrap().is_empty(),
        "the click resumed the job"
    );
    click(
        &client,
        &jobs,
        &format!(r#"{row} form[action="/ops/jobs/trigger"] button"#),
    )
    .await;
    let runs = format!("{base}/runs?job=sweep");
    wait_for(
        &client,
        &runs,
        "#runs tr[data-triggered]",
        "data-job",
        15 * SECOND,
    )
    .await;
    sleep(3 * SECOND).await;
    let triggered: Vec<_> = sweeps(&inspector)
        .await
        .into_iter()
        .filter(|r| r.triggered)
        .collect();
    assert_eq!(
        triggered.len(),
        1,
        "one run across the fleet for one trigger: {triggered:?}"
    );
    client.goto(&runs).await.unwrap();
    let rows = client
        .find_all(Locator::Css("#runs tr[data-triggered]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the runs page shows the one triggered run");

    // The other pages, as mounted: the overview counts both replicas.
    client.goto(&base).await.unwrap();
    let alive = client
        .find(Locator::Css("#replicas-alive b"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(alive, "2", "two replicas alive on the overview");
    for (page, title) in [("locks", "Locks"), ("queues", "Queues")] {
        client.goto(&format!("{base}/{page}")).await.unwrap();
        let h1 = client
            .find(Locator::Css("main h1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(h1, title);
    }

    // The screenshot the README shows.
    wait_for(
        &client,
        &jobs,
        &format!("{row} td.last"),
        "data-outcome",
        5 * SECOND,
    )
    .await;
    // Into target/ on every run; into the README's image only when asked
    // (`SOLOIST_SCREENSHOT=docs/dashboard-jobs.png`), so a test run leaves
    // the checkout as it was.
    let png = client.screenshot().await.expect("a screenshot");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var_os("SOLOIST_SCREENSHOT").map_or_else(
        || root.join("target/dashboard-jobs.png"),
        |path| root.join(path),
    );
    std::fs::write(&path, png).expect("the screenshot written");

    client.close().await.unwrap();
    a.stop().await;
    b.stop().await;
}
