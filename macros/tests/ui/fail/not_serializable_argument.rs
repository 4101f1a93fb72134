use soloist::{JobContext, exclusive_job};

struct Invoice {
    id: u64,
}

#[exclusive_job(key = "invoice")]
async fn charge(ctx: JobContext, invoice: Invoice) -> Result<(), std::io::Error> {
    let _ = (ctx, invoice.id);
    Ok(())
}

fn main() {}
