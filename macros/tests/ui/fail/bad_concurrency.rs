use soloist::{JobContext, exclusive_job};

#[exclusive_job(key = "{merchant}", concurrency = 0)]
async fn charge(ctx: JobContext, merchant: String) -> Result<(), std::io::Error> {
    let _ = (ctx, merchant);
    Ok(())
}

#[exclusive_job(cron = "0 * * * * *", concurrency = 4000000000)]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

fn main() {}
