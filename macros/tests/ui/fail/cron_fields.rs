use soloist::{JobContext, exclusive_job};

#[exclusive_job(cron = "*/5 * * *")]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

fn main() {}
