use soloist::{JobContext, exclusive_job};

#[exclusive_job(cron = "0 * * * * *")]
async fn sweep(ctx: JobContext, batch: usize) -> Result<(), std::io::Error> {
    let _ = (ctx, batch);
    Ok(())
}

fn main() {}
