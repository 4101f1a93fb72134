//! `concurrency = N` on cron and keyed jobs.
#![deny(warnings)]

use soloist::{CronJob, JobContext, KeyedJob, exclusive_job};

/// At most two overlapping runs across the fleet.
#[exclusive_job(cron = "0 * * * * *", concurrency = 2)]
async fn rollup(_: JobContext) -> std::io::Result<()> {
    Ok(())
}

/// At most three runs per merchant at once.
#[exclusive_job(key = "{merchant}", concurrency = 3, dedupe = "1m")]
async fn charge(_: JobContext, merchant: String) -> std::io::Result<String> {
    Ok(merchant)
}

fn main() {
    assert!(rollup.spec().is_ok());
    assert!(charge.spec().is_ok());
}
