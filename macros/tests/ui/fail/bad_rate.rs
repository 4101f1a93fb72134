use soloist::{JobContext, exclusive_job};

#[exclusive_job(key = "{order}", rate = "100 per minute")]
async fn call_partner(ctx: JobContext, order: String) -> Result<(), std::io::Error> {
    let _ = (ctx, order);
    Ok(())
}

fn main() {}
