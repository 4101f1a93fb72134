use soloist::{JobContext, exclusive_job};

#[exclusive_job(key = "item:{id}")]
async fn process<T: std::fmt::Display>(ctx: JobContext, id: T) -> Result<(), std::io::Error> {
    let _ = (ctx, id.to_string());
    Ok(())
}

fn main() {}
