//! What the code `#[exclusive_job]` generates does when it runs: the spec
//! it builds, the keys it renders, and the calls it makes.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use soloist::{
    CronJob, IntoJob, JobContext, JobSpec, KeyedJob, LockClient, MissedTicks, OnLost, RunOutcome,
    Trigger, Worker, exclusive_job,
};

#[derive(Debug)]
struct JobError(&'static str);

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for JobError {}

fn ctx(job: &str) -> JobContext {
    JobContext::builder(job).build()
}

/// `JobSpec` shows its settings only through `Debug`: two specs with the
/// same `Debug` have the same settings.
fn same_spec(generated: &JobSpec, expected: &JobSpec) {
    assert_eq!(format!("{generated:?}"), format!("{expected:?}"));
}

static SWEEPS: AtomicU32 = AtomicU32::new(0);

/// Sweeps; fails on a second attempt.
#[exclusive_job(
    cron = "0 */5 * * * *",
    tz = "Europe/Berlin",
    ttl = "45s",
    misfire = "2m",
    retries = 2,
    backoff = "500ms",
    max_hold = "1h30m",
    on_lost = "signal",
    missed = "catch_up(3)",
    name = "sweeper"
)]
async fn sweep(ctx: JobContext) -> Result<(), JobError> {
    SWEEPS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() > 1 {
        return Err(JobError("sweep failed"));
    }
    Ok(())
}

#[exclusive_job(cron = "0 0 * * * *")]
async fn hourly(_ctx: JobContext) -> Result<(), std::io::Error> {
    Ok(())
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    invoice_id: u64,
    fence: u64,
}

#[exclusive_job(key = "invoice:{invoice_id}", ttl = "1m", dedupe = "24h", wait = "5s")]
async fn charge(ctx: JobContext, invoice_id: u64) -> Result<Receipt, JobError> {
    if invoice_id == 0 {
        return Err(JobError("no invoice 0"));
    }
    Ok(Receipt {
        invoice_id,
        fence: ctx.fence(),
    })
}

#[exclusive_job(key = "{tenant}/{{literal}}/{order}:{tenant}")]
async fn ship(
    _ctx: JobContext,
    tenant: String,
    order: u32,
    note: Option<String>,
) -> Result<String, std::io::Error> {
    Ok(format!("{tenant}/{order}/{}", note.unwrap_or_default()))
}

#[exclusive_job(key = "{a}:{b}", dedupe = "1h")]
async fn pair(_ctx: JobContext, a: String, b: String) -> Result<String, std::io::Error> {
    Ok(format!("{a}|{b}"))
}

mod jobs {
    use soloist::{JobContext, exclusive_job};

    /// A job declared elsewhere, used through its path.
    #[exclusive_job(key = "user:{type}", on_lost = "cancel", retries = 0)]
    pub(crate) async fn notify(_ctx: JobContext, r#type: u8) -> Result<u8, std::io::Error> {
        Ok(r#type)
    }
}

#[test]
fn cron_spec_has_every_setting() {
    let expected = JobSpec::cron("sweeper", "0 */5 * * * *", "Europe/Berlin")
        .unwrap()
        .ttl(Duration::from_secs(45))
        .misfire(Duration::from_secs(120))
        .retries(2)
        .backoff(Duration::from_millis(500))
        .max_hold(Duration::from_secs(5400))
        .on_lost(OnLost::Signal)
        .missed(MissedTicks::CatchUp(3));
    let spec = CronJob::spec(&sweep).unwrap();
    same_spec(&spec, &expected);
    assert_eq!(spec.name(), "sweeper");
    let Trigger::Cron(schedule) = spec.trigger() else {
        panic!("not a cron trigger: {:?}", spec.trigger());
    };
    assert_eq!(schedule.expression(), "0 */5 * * * *");
    assert_eq!(schedule.time_zone(), "Europe/Berlin");
}

#[test]
fn unset_settings_keep_the_runtime_defaults() {
    let spec = CronJob::spec(&hourly).unwrap();
    same_spec(
        &spec,
        &JobSpec::cron("hourly", "0 0 * * * *", "UTC").unwrap(),
    );
    let spec = KeyedJob::spec(&ship).unwrap();
    same_spec(
        &spec,
        &JobSpec::keyed("ship", "{tenant}/{{literal}}/{order}:{tenant}").unwrap(),
    );
}

#[test]
fn keyed_spec_has_every_setting() {
    let expected = JobSpec::keyed("charge", "invoice:{invoice_id}")
        .unwrap()
        .ttl(Duration::from_secs(60))
        .dedupe(Duration::from_secs(24 * 3600))
        .wait(Duration::from_secs(5));
    same_spec(&KeyedJob::spec(&charge).unwrap(), &expected);

    let expected = JobSpec::keyed("notify", "user:{type}")
        .unwrap()
        .on_lost(OnLost::Cancel)
        .retries(0);
    same_spec(&KeyedJob::spec(&jobs::notify).unwrap(), &expected);
}

#[test]
fn keys_render_from_the_arguments() {
    assert_eq!(charge.key(&42), "invoice:42");
    let args = ("acme".to_owned(), 7, Some("fragile".to_owned()));
    assert_eq!(ship.key(&args), "acme/{literal}/7:acme");
    assert_eq!(jobs::notify.key(&3), "user:3");
    // Arguments are escaped: a separator inside one cannot move it.
    let first = ("x:y".to_owned(), "z".to_owned());
    let second = ("x".to_owned(), "y:z".to_owned());
    assert_eq!(pair.key(&first), "x%3Ay:z");
    assert_eq!(pair.key(&second), "x:y%3Az");
}

#[tokio::test]
async fn arguments_that_differ_never_share_a_dedupe_record() {
    let handle = Worker::builder(LockClient::memory())
        .job(pair)
        .build()
        .unwrap()
        .handle();
    let first = handle.run(pair, ("x:y".into(), "z".into())).await.unwrap();
    assert!(
        matches!(&first, RunOutcome::Completed(text) if text == "x:y|z"),
        "{first:?}"
    );
    let second = handle.run(pair, ("x".into(), "y:z".into())).await.unwrap();
    assert!(
        matches!(&second, RunOutcome::Completed(text) if text == "x|y:z"),
        "{second:?}"
    );
}

#[tokio::test]
async fn jobs_stay_callable_as_written() {
    let before = SWEEPS.load(Ordering::SeqCst);
    sweep(ctx("sweeper")).await.unwrap();
    assert!(SWEEPS.load(Ordering::SeqCst) > before);

    let ctx42 = JobContext::builder("charge").fence(9).build();
    assert_eq!(
        charge(ctx42, 42).await.unwrap(),
        Receipt {
            invoice_id: 42,
            fence: 9
        }
    );
    let shipped = ship(ctx("ship"), "acme".to_owned(), 7, None).await;
    assert_eq!(shipped.unwrap(), "acme/7/");
    assert_eq!(jobs::notify(ctx("notify"), 5).await.unwrap(), 5);
    // The user's error type comes back unchanged.
    let error: JobError = charge(ctx("charge"), 0).await.unwrap_err();
    assert_eq!(error.0, "no invoice 0");
}

#[tokio::test]
async fn cron_call_runs_the_body_and_boxes_its_error() {
    let before = SWEEPS.load(Ordering::SeqCst);
    CronJob::call(&sweep, ctx("sweeper")).await.unwrap();
    assert!(SWEEPS.load(Ordering::SeqCst) > before);

    let retry = JobContext::builder("sweeper").attempt(2).build();
    let error = CronJob::call(&sweep, retry).await.unwrap_err();
    assert_eq!(error.to_string(), "sweep failed");
    assert!(error.downcast_ref::<JobError>().is_some());
}

#[tokio::test]
async fn keyed_call_passes_the_arguments_and_boxes_the_error() {
    let ctx7 = JobContext::builder("charge").fence(7).build();
    let receipt = KeyedJob::call(&charge, ctx7, 42).await.unwrap();
    assert_eq!(
        receipt,
        Receipt {
            invoice_id: 42,
            fence: 7
        }
    );
    let error = KeyedJob::call(&charge, ctx("charge"), 0).await.unwrap_err();
    assert!(error.downcast_ref::<JobError>().is_some());

    let args = ("acme".to_owned(), 7, Some("fragile".to_owned()));
    let shipped = KeyedJob::call(&ship, ctx("ship"), args).await.unwrap();
    assert_eq!(shipped, "acme/7/fragile");
}

#[test]
fn jobs_are_plain_values() {
    assert_eq!(format!("{sweep:?} {charge:?}"), "sweep charge");
    let copy = charge;
    assert_eq!(copy.key(&1), charge.key(&1));
    let registration = format!("{:?} {:?}", sweep.into_job(), charge.into_job());
    assert!(registration.contains("sweeper"), "{registration}");
    assert!(registration.contains("charge"), "{registration}");
}

#[tokio::test]
async fn a_worker_registers_and_runs_generated_jobs() {
    let handle = Worker::builder(LockClient::memory())
        .job(sweep)
        .job(charge)
        .job(ship)
        .build()
        .unwrap()
        .handle();
    let first = handle.run(charge, 42).await.unwrap();
    assert!(
        matches!(&first, RunOutcome::Completed(receipt) if receipt.invoice_id == 42),
        "{first:?}"
    );
    // `dedupe = "24h"`: the same key again gets the recorded result.
    let second = handle.run(charge, 42).await.unwrap();
    assert!(
        matches!(&second, RunOutcome::Duplicate(receipt) if receipt.invoice_id == 42),
        "{second:?}"
    );
    let failed = handle.run(charge, 0).await.unwrap();
    let RunOutcome::Failed(error) = failed else {
        panic!("expected Failed, got {failed:?}");
    };
    assert!(error.downcast_ref::<JobError>().is_some());
    let shipped = handle
        .run(ship, ("acme".to_owned(), 7, None))
        .await
        .unwrap();
    assert!(matches!(&shipped, RunOutcome::Completed(text) if text == "acme/7/"));
}
