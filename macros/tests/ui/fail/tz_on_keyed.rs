use soloist::{JobContext, exclusive_job};

#[exclusive_job(key = "invoice:{invoice_id}", tz = "Europe/Berlin")]
async fn charge(ctx: JobContext, invoice_id: u64) -> Result<(), std::io::Error> {
    let _ = (ctx, invoice_id);
    Ok(())
}

fn main() {}
