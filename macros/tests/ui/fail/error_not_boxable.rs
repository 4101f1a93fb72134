use soloist::{JobContext, exclusive_job};

#[derive(Debug)]
struct SweepFailed;

#[exclusive_job(cron = "0 * * * * *")]
async fn sweep(ctx: JobContext) -> Result<(), SweepFailed> {
    let _ = ctx;
    Err(SweepFailed)
}

fn main() {}
