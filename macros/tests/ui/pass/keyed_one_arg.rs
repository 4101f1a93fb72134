use serde::{Deserialize, Serialize};
use soloist::{IntoJob, JobContext, KeyedJob, Trigger, exclusive_job};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    cents: u64,
}

#[exclusive_job(key = "invoice:{invoice_id}", ttl = "1m", dedupe = "24h")]
async fn charge(ctx: JobContext, invoice_id: u64) -> Result<Receipt, std::io::Error> {
    let _ = ctx.fence();
    Ok(Receipt { cents: invoice_id * 100 })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Callable as written.
    let receipt = charge(JobContext::builder("charge").build(), 42).await.unwrap();
    assert_eq!(receipt, Receipt { cents: 4200 });

    // A keyed job whose arguments are the one `u64`.
    let args: u64 = 42;
    assert_eq!(KeyedJob::key(&charge, &args), "invoice:42");
    let spec = KeyedJob::spec(&charge).unwrap();
    assert_eq!(spec.name(), "charge");
    match spec.trigger() {
        Trigger::Keyed(template) => assert_eq!(template.as_str(), "invoice:{invoice_id}"),
        other => panic!("not a keyed trigger: {other:?}"),
    }
    let _registration = IntoJob::into_job(charge);
}
