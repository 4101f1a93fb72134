//! The Prometheus example, run as it is: its `/metrics` page carries the
//! soloist series with their labels.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use soloist::LockClient;

#[path = "../examples/prometheus.rs"]
#[allow(dead_code)]
mod example;

/// The body of `GET /metrics`, or `None` while nothing listens.
fn scrape(at: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&at, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_serves_the_soloist_series() {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let example = tokio::spawn(example::serve(at, LockClient::memory(), async {
        let _ = stopped.await;
    }));
    let wanted = [
        r#"soloist_job_runs_total{job="charge",outcome="success"} 3"#,
        r#"soloist_job_runs_total{job="charge",outcome="duplicate"} 1"#,
        r#"soloist_job_runs_total{job="heartbeat",outcome="success"}"#,
        r#"soloist_lock_acquisitions_total{outcome="acquired"}"#,
        "soloist_job_run_seconds_bucket",
        "soloist_job_claim_seconds",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = tokio::task::spawn_blocking(move || scrape(at))
            .await
            .unwrap()
            .unwrap_or_default();
        if wanted.iter().all(|series| body.contains(series)) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "missing series after 20 s; the page:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        body.contains("# TYPE soloist_job_runs_total counter"),
        "{body}"
    );
    stop.send(()).unwrap();
    example.await.unwrap().expect("the example ran");
}
