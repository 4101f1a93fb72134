use soloist::{JobContext, exclusive_job};

// Bounds the worker checks at registration are checked at compile time too.
#[exclusive_job(cron = "0 * * * * *", misfire = "400d", retries = 5000)]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

#[exclusive_job(key = "order:{id}", dedupe = "366 days", wait = "1d")]
async fn charge(ctx: JobContext, id: u64) -> Result<(), std::io::Error> {
    let _ = (ctx, id);
    Ok(())
}

fn main() {}
