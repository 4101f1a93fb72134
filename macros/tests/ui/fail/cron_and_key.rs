use soloist::{JobContext, exclusive_job};

#[exclusive_job(cron = "0 * * * * *", key = "order:{id}")]
async fn sweep(ctx: JobContext, id: u64) -> Result<(), std::io::Error> {
    let _ = (ctx, id);
    Ok(())
}

fn main() {}
