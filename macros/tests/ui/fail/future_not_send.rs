use std::rc::Rc;

use soloist::{JobContext, exclusive_job};

#[exclusive_job(cron = "0 * * * * *")]
async fn sweep(ctx: JobContext) -> Result<(), std::io::Error> {
    let shared = Rc::new(ctx);
    std::future::ready(()).await;
    let _ = shared;
    Ok(())
}

fn main() {}
