//! Run with: cargo run --example prometheus
//! then:     curl http://127.0.0.1:9464/metrics
//! Against Redis: REDIS_URL=redis://127.0.0.1:6379 cargo run --example prometheus
//!
//! soloist records its metrics through the `metrics` facade, so any recorder
//! collects them. This installs the Prometheus exporter as the recorder,
//! runs a cron job (every second) and a keyed job (three invoices, one of
//! them submitted twice), and serves `/metrics` on 127.0.0.1:9464 (or
//! `LISTEN=host:port`) until Ctrl-C.
//!
//! Without `REDIS_URL` the in-memory backend is used. With it, the keys live
//! under the prefix `soloist-demo:` and all expire: dedupe records after an
//! hour, tick markers after minutes, fence counters after a week.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use soloist::{JobContext, LockClient, Worker, exclusive_job};

type DemoResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// A heartbeat every second, once across the fleet.
#[exclusive_job(cron = "* * * * * *", ttl = "10s")]
async fn heartbeat(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx.fence();
    Ok(())
}

/// Charges an invoice once within an hour, however often it is submitted.
#[exclusive_job(key = "invoice:{invoice_id}", ttl = "10s", dedupe = "1h")]
async fn charge(ctx: JobContext, invoice_id: u64) -> Result<String, std::io::Error> {
    Ok(format!("receipt {invoice_id} (fence {})", ctx.fence()))
}

/// Installs the exporter on `listen`, runs both jobs on `locks`, and keeps
/// serving until `until` completes.
pub(crate) async fn serve(
    listen: SocketAddr,
    locks: LockClient,
    until: impl Future<Output = ()>,
) -> DemoResult {
    // Histograms rather than the exporter's default summaries: buckets add
    // up across the replicas of a fleet, quantiles do not.
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
        )?
        .install()?;
    let worker = Worker::builder(locks)
        .replica_id("prometheus-demo")
        .job(heartbeat)
        .job(charge)
        .build()?;
    let handle = worker.handle();
    worker
        .run_until(async {
            for invoice in [1, 2, 3, 2] {
                match handle.run(charge, invoice).await {
                    Ok(outcome) => println!("invoice {invoice}: {outcome:?}"),
                    Err(err) => eprintln!("invoice {invoice}: {err}"),
                }
            }
            until.await;
        })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> DemoResult {
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:9464".to_owned())
        .parse()?;
    let locks = match std::env::var("REDIS_URL") {
        Ok(url) => {
            LockClient::builder()
                .prefix("soloist-demo:")
                .connect(&url)
                .await?
        }
        Err(_) => LockClient::memory(),
    };
    println!("serving http://{listen}/metrics; Ctrl-C to stop");
    serve(listen, locks, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
