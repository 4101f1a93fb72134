use soloist::{JobContext, exclusive_job};

struct Invoice {
    id: u64,
}

#[exclusive_job(key = "invoice:{id}")]
async fn charge(ctx: JobContext, id: u64, invoice: Invoice) -> Result<(), std::io::Error> {
    let _ = (ctx, id, invoice.id);
    Ok(())
}

fn main() {}
