use soloist::{CronJob, IntoJob, JobContext, Trigger, exclusive_job};

#[derive(Debug)]
struct RollupError;

impl std::fmt::Display for RollupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rollup failed")
    }
}

impl std::error::Error for RollupError {}

/// Rolls up the last five minutes.
#[exclusive_job(cron = "0 */5 * * * *", tz = "Europe/Berlin", ttl = "30s", misfire = "2m")]
async fn rollup(ctx: JobContext) -> Result<(), RollupError> {
    if ctx.attempt() > 1 { Err(RollupError) } else { Ok(()) }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Callable as written.
    rollup(JobContext::builder("rollup").build()).await.unwrap();
    let failed: Result<(), RollupError> =
        rollup(JobContext::builder("rollup").attempt(2).build()).await;
    assert!(failed.is_err());

    // A cron job.
    let spec = CronJob::spec(&rollup).unwrap();
    assert_eq!(spec.name(), "rollup");
    match spec.trigger() {
        Trigger::Cron(schedule) => {
            assert_eq!(schedule.expression(), "0 */5 * * * *");
            assert_eq!(schedule.time_zone(), "Europe/Berlin");
        }
        other => panic!("not a cron trigger: {other:?}"),
    }
    let _registration = IntoJob::into_job(rollup);
}
