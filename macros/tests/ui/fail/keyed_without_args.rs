use soloist::{JobContext, exclusive_job};

#[exclusive_job(key = "nightly-report")]
async fn report(ctx: JobContext) -> Result<(), std::io::Error> {
    let _ = ctx;
    Ok(())
}

fn main() {}
