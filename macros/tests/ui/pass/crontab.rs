use soloist::{CronJob, JobContext, Trigger, exclusive_job};

/// Every five minutes, at second 0: the crontab form.
#[exclusive_job(cron = "*/5 * * * *")]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

/// Once a day at midnight, in the job's zone.
#[exclusive_job(cron = "@daily", tz = "America/New_York")]
async fn nightly(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

fn main() {
    for (spec, expression) in [
        (CronJob::spec(&sweep).unwrap(), "*/5 * * * *"),
        (CronJob::spec(&nightly).unwrap(), "@daily"),
    ] {
        match spec.trigger() {
            Trigger::Cron(schedule) => assert_eq!(schedule.expression(), expression),
            other => panic!("not a cron trigger: {other:?}"),
        }
    }
}
