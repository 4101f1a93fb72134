//! The `#[exclusive_job]` attribute of [soloist](https://docs.rs/soloist):
//! it turns an `async fn` into a job that runs once across a fleet.
//!
//! Depend on `soloist` and use the attribute as `soloist::exclusive_job`;
//! the code it generates refers to `soloist` and does not work without it.
//! Every setting is checked at compile time with the parsers the runtime
//! uses, so a job that compiles is one the worker accepts.

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Makes an `async fn` a soloist job: a cron job that runs once per tick
/// across the fleet, or a keyed job that runs on request, at most once at a
/// time per key.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use soloist::{CronJob, JobContext, KeyedJob, exclusive_job};
///
/// /// Rolls up the last five minutes of events.
/// #[exclusive_job(cron = "0 */5 * * * *", tz = "Europe/Berlin", ttl = "30s")]
/// async fn rollup(ctx: JobContext) -> Result<(), std::io::Error> {
///     println!("rolling up, writing with fence {}", ctx.fence());
///     Ok(())
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Receipt {
///     cents: u64,
/// }
///
/// /// Charges an invoice once, however often the request arrives.
/// #[exclusive_job(key = "invoice:{invoice_id}", ttl = "1m", dedupe = "24h")]
/// async fn charge(ctx: JobContext, invoice_id: u64) -> Result<Receipt, std::io::Error> {
///     Ok(Receipt { cents: invoice_id * 100 })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The functions stay callable as written, e.g. in unit tests:
/// rollup(JobContext::builder("rollup").build()).await?;
/// let receipt = charge(JobContext::builder("charge").build(), 42).await?;
/// assert_eq!(receipt.cents, 4200);
///
/// // And they are jobs, for `WorkerBuilder::job(rollup)`:
/// assert_eq!(rollup.spec()?.name(), "rollup");
/// assert_eq!(charge.key(&42), "invoice:42");
/// # Ok(())
/// # }
/// ```
///
/// # The function
/// - It is an `async fn`, not generic, without `self`.
/// - Its first parameter is the run's `JobContext`.
/// - It returns `Result<T, E>` (or a one-parameter alias such as
///   `io::Result<T>`) whose `E` converts into `soloist::BoxError`, as every
///   `std::error::Error + Send + Sync + 'static` does. Its future must be
///   `Send`.
/// - A cron job takes nothing else and returns `Result<(), E>`.
/// - A keyed job takes at least one argument after the context: the data
///   of a run. Arguments and `T` travel between replicas, so each must be
///   `Serialize + DeserializeOwned`; several arguments are passed as a
///   tuple (`handle.run(job, (a, b))`).
///
/// # Settings
/// Durations are strings such as `"500ms"`, `"30s"`, `"1m"`, `"1h30m"`,
/// `"1h 30m"`, `"5 minutes"` or `"2d"` (see `soloist::parse_duration`).
///
/// | setting | for | value |
/// | --- | --- | --- |
/// | `cron` | cron jobs | a cron expression: five fields (crontab, `*/5 * * * *`), six or seven with seconds first, or `@hourly` / `@daily` / `@weekly` / `@monthly` / `@yearly` (see `soloist::CronSchedule`) |
/// | `tz` | cron jobs | an IANA time zone for the expression; default `"UTC"` |
/// | `key` | keyed jobs | a key template: `{name}` renders the argument `name` with `Display`; `{{` and `}}` are braces |
/// | `ttl` | all | the lease length, 10ms to 24h; default 30s |
/// | `misfire` | cron jobs | how late a tick may still start; default 1m |
/// | `retries` | all | how often a failed run is retried, a `u32`; default 0 |
/// | `backoff` | all | the delay before the first retry, doubling after; default 1s |
/// | `max_hold` | all | the longest a run may hold its lease |
/// | `dedupe` | keyed jobs | how long a key's successful result stands in for new runs |
/// | `wait` | keyed jobs | how long a request waits while the key runs elsewhere; default none |
/// | `on_lost` | all | `"cancel"` (default) or `"signal"`: what a lost lease does to the run |
/// | `missed` | cron jobs | `"skip"`, `"once"` (default) or `"catch_up(N)"`: ticks missed while the fleet was down |
/// | `name` | all | the job's name, unique within a worker; default the function's name |
/// | `rate` | keyed jobs | at most this many starts per period across the fleet, `"count/period"` such as `"100/1m"` (see `soloist::parse_rate`); GCRA on the Redis server's clock, see `JobSpec::rate` |
/// | `over_rate` | keyed jobs | `"wait"` (default: hold the key until the limit admits the run) or `"reschedule"` (return `RunOutcome::RateLimited`) |
/// | `concurrency` | all | at most this many runs at once across the fleet: of a cron job, or of each key of a keyed job; 1 to 100000 (`soloist::MAX_PERMITS`); see `JobSpec::concurrency` |
///
/// Exactly one of `cron` and `key` is given.
///
/// # What it generates
/// The function moves to a hidden name. Its own name becomes a constant of
/// a zero-sized type that implements `CronJob` or `KeyedJob`, `IntoJob`,
/// `Debug`, `Copy`, and `Deref` to a function pointer, so that `rollup(ctx)`
/// still calls the function (returning a boxed future). The function's doc
/// comments go on that constant.
#[proc_macro_attribute]
pub fn exclusive_job(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::exclusive_job(args.into(), item.into()).into()
}
