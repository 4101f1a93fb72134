use soloist::{JobContext, exclusive_job};

#[exclusive_job(ttl = "30s")]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

fn main() {}
