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
    rated::check();
}

mod rated {
    use soloist::{JobContext, exclusive_job};

    /// At most 100 calls a minute to the partner, handed back when over.
    #[exclusive_job(key = "{order}", rate = "100/1m", over_rate = "reschedule", concurrency = 4)]
    pub async fn call_partner(_: JobContext, order: String) -> std::io::Result<String> {
        Ok(order)
    }

    pub fn check() {
        use soloist::KeyedJob;
        assert!(call_partner.spec().is_ok());
    }
}
