use soloist::{JobContext, exclusive_job};

#[exclusive_job(cron = "0 * * * * *", rate = "10/1m")]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

fn main() {}
