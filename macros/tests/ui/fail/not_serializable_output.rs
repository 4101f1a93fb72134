use soloist::{JobContext, exclusive_job};

struct Receipt {
    cents: u64,
}

#[exclusive_job(key = "invoice:{id}")]
async fn charge(ctx: JobContext, id: u64) -> Result<Receipt, std::io::Error> {
    let _ = ctx;
    Ok(Receipt { cents: id * 100 })
}

fn main() {}
