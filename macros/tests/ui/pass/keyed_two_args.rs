use soloist::{JobContext, KeyedJob, exclusive_job};

#[exclusive_job(key = "{tenant}:order:{order_id}", ttl = "10s", dedupe = "1h", wait = "5s", retries = 3)]
async fn ship(ctx: JobContext, tenant: String, order_id: u32) -> Result<String, std::io::Error> {
    let _ = ctx;
    Ok(format!("shipped {order_id} for {tenant}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Callable as written, with the arguments one by one.
    let shipped = ship(JobContext::builder("ship").build(), "acme".to_owned(), 7).await;
    assert_eq!(shipped.unwrap(), "shipped 7 for acme");

    // As a job its arguments are a tuple.
    let args: (String, u32) = ("acme".to_owned(), 7);
    assert_eq!(ship.key(&args), "acme:order:7");
    assert_eq!(ship.spec().unwrap().name(), "ship");
    let output = ship.call(JobContext::builder("ship").build(), args).await.unwrap();
    assert_eq!(output, "shipped 7 for acme");
    let _registration = soloist::IntoJob::into_job(ship);
}
