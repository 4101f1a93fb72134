//! `soloist dashboard`, the built binary, against a real redis-server with
//! a worker running: it prints where it listens, serves the jobs page and
//! the JSON `soloist --json jobs` prints, and is read-only without
//! `--actions`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use soloist::{JobContext, JobSpec, LockClient, Worker, cron_job};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};

/// The dashboard process, killed on drop.
struct Dashboard(Child);

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 exchange (no chunked body): the status code and the body.
fn http(address: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("the dashboard accepts");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soloist_dashboard_serves_the_fleet_read_only() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let worker = Worker::builder(locks)
        .replica_id("a")
        .job(cron_job(
            JobSpec::cron("sweep", "0 0 * * * *", "Europe/Berlin").unwrap(),
            |_ctx: JobContext| async { Ok::<_, std::io::Error>(()) },
        ))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));

    let url = server.url();
    let child = Command::new(env!("CARGO_BIN_EXE_soloist"))
        .args([
            "--url",
            &url,
            "dashboard",
            "--listen",
            "127.0.0.1:0",
            "--refresh",
            "0",
        ])
        .env_remove("SOLOIST_URL")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the soloist binary runs");
    let mut dashboard = Dashboard(child);
    let mut line = String::new();
    BufReader::new(dashboard.0.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("the address on stderr: {line}"))
        .to_owned();
    assert!(line.contains("read-only"), "{line}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (status, page) = http(&address, "GET /jobs HTTP/1.0\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200, "{page}");
        if page.contains(r#"data-job="sweep""#) {
            break page;
        }
        assert!(Instant::now() < deadline, "the job on the page within 10 s");
        sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("Europe/Berlin"), "{page}");
    assert!(page.contains("read-only") && !page.contains(r#"method="post""#));

    let (status, json) = http(&address, "GET /api/jobs HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let jobs: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(jobs[0]["name"], "sweep");
    assert_eq!(jobs[0]["time_zone"], "Europe/Berlin");
    assert_eq!(jobs[0]["replicas"], serde_json::json!(["a"]));

    let form = "job=sweep";
    let post = format!(
        "POST /jobs/pause HTTP/1.0\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    let (status, body) = http(&address, &post);
    assert_eq!(status, 403, "{body}");
    let (_, json) = http(&address, "GET /api/jobs HTTP/1.0\r\nHost: x\r\n\r\n");
    let jobs: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        jobs[0]["paused"], false,
        "a read-only dashboard paused nothing"
    );

    drop(dashboard);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
