use soloist::{JobContext, exclusive_job};

#[exclusive_job(cron = "0 * * * * *")]
async fn sweep(ctx: JobContext) -> Result<usize, std::io::Error> {
    let _ = ctx;
    Ok(0)
}

fn main() {}
