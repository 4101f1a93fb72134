use soloist::{JobContext, exclusive_job};

#[exclusive_job(key = "invoice:{invoice}")]
async fn charge(ctx: JobContext, invoice_id: u64, cents: u64) -> Result<(), std::io::Error> {
    let _ = (ctx, invoice_id, cents);
    Ok(())
}

fn main() {}
