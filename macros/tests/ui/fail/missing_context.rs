use soloist::exclusive_job;

#[exclusive_job(key = "invoice:{invoice_id}")]
async fn charge(invoice_id: u64) -> Result<(), std::io::Error> {
    let _ = invoice_id;
    Ok(())
}

fn main() {}
