//! `cron`: how late a cron tick's body starts, on a fleet of replicas
//! sharing one Redis.
//!
//! Five soloist `Worker`s run in this process, each with its own
//! `LockClient` and replica id, all registering the same job that fires
//! every second (`* * * * * *`). The body records the tick's due time (the
//! `JobContext`'s `scheduled_at`), the wall-clock time it started, and the
//! replica that ran it. Latency is start minus due time, both read from
//! this process's real wall clock, which all five replicas share (Redis runs
//! on the same machine, so the fleet's clock, Redis's `TIME`, is that clock
//! too). The run lasts `--secs` seconds, at least [`MIN_TICKS`]; every tick
//! whose due time falls in it must have run exactly once.
//!
//! Then the same again with one replica's local clock made two minutes
//! fast (`WorkerBuilder::local_clock_error`), which the fleet clock's
//! offset must absorb: its ticks are due at the same moments as the
//! others'.
//!
//! Beside the replicas, a timer task sleeps to each second the same way the
//! scheduler does (a tokio `sleep` of the time left) and records how late
//! it wakes: the part of the latency that is the runtime's timer, not
//! soloist's claim.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeDelta, Utc};
use soloist_core::LockClient;
use soloist_worker::{JobContext, JobSpec, Worker, cron_job};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Bench;
use crate::report::{Row, TickLatency};

/// Replicas in the fleet.
const REPLICAS: usize = 5;
/// The fewest ticks a run measures, whatever `--secs` says.
pub(crate) const MIN_TICKS: u64 = 20;
/// How far off the skewed replica's clock is.
const SKEW: TimeDelta = TimeDelta::minutes(2);
/// Every second, in the 6-field syntax the worker accepts.
const EVERY_SECOND: &str = "* * * * * *";
/// Row label of the run with every clock right.
pub(crate) const IN_SYNC: &str = "soloist";
/// Row label of the run with one replica's clock two minutes fast.
pub(crate) const SKEWED: &str = "soloist-skew2m";

/// One run of a body: for which tick, when it started, on which replica.
#[derive(Debug, Clone)]
struct Started {
    due: DateTime<Utc>,
    at: DateTime<Utc>,
    replica: String,
}

/// Both runs, in-sync first, each over `--secs` (at least [`MIN_TICKS`]) ticks.
pub(crate) async fn run(bench: &Bench) -> Vec<Row> {
    let ticks = bench.secs.as_secs().max(MIN_TICKS);
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut rows = Vec::new();
    for (library, skewed) in [(IN_SYNC, false), (SKEWED, true)] {
        if !bench.wants(library) {
            continue;
        }
        eprintln!("  {library}: {REPLICAS} replicas, {ticks} ticks");
        let job = format!("lb-cron-{nonce:x}-{library}");
        let row = fleet(bench, library, &job, skewed, ticks).await;
        bench.done(row, &mut rows);
    }
    rows
}

/// Runs the fleet for `ticks` measured ticks and summarizes them.
async fn fleet(bench: &Bench, library: &str, job: &str, skewed: bool, ticks: u64) -> Row {
    let runs: Arc<Mutex<Vec<Started>>> = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for index in 0..REPLICAS {
        let locks = LockClient::connect(&bench.url)
            .await
            .expect("cron: soloist cannot connect to Redis");
        let replica = format!("cron-{index}");
        let record = runs.clone();
        let spec = JobSpec::cron(job, EVERY_SECOND, "UTC").expect("cron: the job's spec is valid");
        let body = cron_job(spec, move |ctx: JobContext| {
            let at = Utc::now();
            let record = record.clone();
            async move {
                let due = ctx
                    .scheduled_at()
                    .expect("cron: a tick's context carries its due time");
                record
                    .lock()
                    .expect("the runs' lock is never poisoned")
                    .push(Started {
                        due,
                        at,
                        replica: ctx.replica().to_owned(),
                    });
                Ok::<(), Infallible>(())
            }
        });
        let mut builder = Worker::builder(locks).replica_id(&replica).job(body);
        if skewed && index == 0 {
            builder = builder.local_clock_error(SKEW);
        }
        let worker = builder
            .build()
            .expect("cron: the worker's settings are valid");
        let mut stopped = stopped.clone();
        handles.push(tokio::spawn(async move {
            worker
                .run_until(async move {
                    let _ = stopped.changed().await;
                })
                .await
                .expect("cron: a soloist worker failed");
        }));
    }
    // The measured ticks start two whole seconds after the replicas, so
    // that every replica has read the fleet clock and is waiting for them.
    let first = whole_second(Utc::now()) + TimeDelta::seconds(2);
    let last = first + TimeDelta::seconds(ticks as i64 - 1);
    let timer = tokio::spawn(timer_lateness(first, ticks));
    let mark = bench.probe.mark().await;
    let measured = Instant::now();
    // The last tick's body has long started 900 ms after it is due.
    sleep_until(last + TimeDelta::milliseconds(900)).await;
    let (cost, _calls) = bench.probe.since(&mark).await;
    let secs = measured.elapsed().as_secs_f64();
    stop.send_replace(true);
    for handle in handles {
        if let Err(err) = handle.await {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
            panic!("cron: a replica was cancelled: {err}");
        }
    }
    let timer = timer.await.expect("cron: the timer task panicked");
    let runs = runs
        .lock()
        .expect("the runs' lock is never poisoned")
        .clone();
    let measured: Vec<Started> = runs
        .into_iter()
        .filter(|run| run.due >= first && run.due <= last)
        .collect();
    let (summary, problems) = summarize(&measured, first, ticks, timer);
    for problem in &problems {
        eprintln!("    cron: {library}: {problem}");
    }
    let mut winners: BTreeMap<&str, u64> = BTreeMap::new();
    for run in &measured {
        *winners.entry(run.replica.as_str()).or_insert(0) += 1;
    }
    let winners: Vec<String> = winners
        .iter()
        .map(|(replica, won)| format!("{replica} {won}"))
        .collect();
    eprintln!(
        "    ticks run by: {}{}",
        winners.join(", "),
        if skewed {
            " (cron-0's clock is 2 min fast)"
        } else {
            ""
        }
    );
    eprintln!(
        "    latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; timer alone p50 {:.2} ms, max {:.2} ms; \
         the rest (claim) p50 {:.2} ms, max {:.2} ms",
        summary.p50_us / 1000.0,
        summary.p99_us / 1000.0,
        summary.max_us / 1000.0,
        summary.timer_p50_us / 1000.0,
        summary.timer_max_us / 1000.0,
        summary.claim_p50_us / 1000.0,
        summary.claim_max_us / 1000.0,
    );
    Row::ticks(
        library,
        REPLICAS,
        summary,
        cost,
        secs,
        problems.len() as u64,
    )
}

/// The latencies of the measured runs and, in words, every tick that did
/// not run exactly once.
fn summarize(
    runs: &[Started],
    first: DateTime<Utc>,
    ticks: u64,
    timer: Vec<u64>,
) -> (TickLatency, Vec<String>) {
    let mut per_tick: BTreeMap<DateTime<Utc>, u32> = BTreeMap::new();
    for run in runs {
        *per_tick.entry(run.due).or_insert(0) += 1;
    }
    let mut problems = Vec::new();
    for index in 0..ticks {
        let due = first + TimeDelta::seconds(index as i64);
        match per_tick.get(&due).copied().unwrap_or(0) {
            1 => {}
            0 => problems.push(format!("tick {due} did not run")),
            times => problems.push(format!("tick {due} ran {times} times")),
        }
    }
    for due in per_tick.keys() {
        if (*due - first).num_milliseconds() % 1000 != 0 {
            problems.push(format!("a run for {due}, which is no tick"));
        }
    }
    let mut nanos: Vec<u64> = runs
        .iter()
        // A body that started before its tick was due is reported below
        // as a problem, and counts as 0 here.
        .map(|run| {
            u64::try_from((run.at - run.due).num_nanoseconds().unwrap_or(i64::MAX)).unwrap_or(0)
        })
        .collect();
    let early = runs.iter().filter(|run| run.at < run.due).count();
    if early > 0 {
        problems.push(format!("{early} runs started before their tick was due"));
    }
    nanos.sort_unstable();
    // Body lateness less the bare timer's lateness at the same tick: about
    // what the claim took (the reads, the lock, the record before the body).
    let mut claim: Vec<u64> = runs
        .iter()
        .filter_map(|run| {
            let index = usize::try_from((run.due - first).num_seconds()).ok()?;
            let woke = *timer.get(index)?;
            let late = u64::try_from((run.at - run.due).num_nanoseconds()?).ok()?;
            Some(late.saturating_sub(woke))
        })
        .collect();
    claim.sort_unstable();
    let mut timer = timer;
    timer.sort_unstable();
    let summary = TickLatency {
        ticks: runs.len() as u64,
        p50_us: percentile_us(&nanos, 0.50),
        p99_us: percentile_us(&nanos, 0.99),
        max_us: percentile_us(&nanos, 1.0),
        timer_p50_us: percentile_us(&timer, 0.50),
        timer_max_us: percentile_us(&timer, 1.0),
        claim_p50_us: percentile_us(&claim, 0.50),
        claim_max_us: percentile_us(&claim, 1.0),
    };
    (summary, problems)
}

/// The nearest-rank percentile of sorted nanoseconds, in microseconds; 0
/// when there are none.
fn percentile_us(sorted: &[u64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Sleeps to each of `ticks` whole seconds from `first` the way the
/// scheduler does, and returns how late each wake-up was, in nanoseconds.
async fn timer_lateness(first: DateTime<Utc>, ticks: u64) -> Vec<u64> {
    let mut late = Vec::with_capacity(ticks as usize);
    for index in 0..ticks {
        let due = first + TimeDelta::seconds(index as i64);
        sleep_until(due).await;
        let woke = Utc::now();
        late.push(u64::try_from((woke - due).num_nanoseconds().unwrap_or(0)).unwrap_or(0));
    }
    late
}

/// Sleeps until the wall clock reads `at`, as the worker's fleet clock does.
async fn sleep_until(at: DateTime<Utc>) {
    loop {
        let Ok(left) = (at - Utc::now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left).await;
    }
}

/// `at` with its fraction of a second dropped.
fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn started(due_ms: i64, late_ms: i64) -> Started {
        Started {
            due: at(due_ms),
            at: at(due_ms + late_ms),
            replica: "r".to_owned(),
        }
    }

    #[test]
    fn every_tick_once_gives_no_problem_and_the_latencies() {
        let runs: Vec<Started> = (0..4).map(|tick| started(tick * 1000, tick + 1)).collect();
        let timer = vec![100_000, 200_000, 300_000, 400_000];
        let (summary, problems) = summarize(&runs, at(0), 4, timer);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(summary.ticks, 4);
        assert_eq!((summary.p50_us, summary.max_us), (2000.0, 4000.0));
        assert_eq!(summary.timer_max_us, 400.0);
        // Tick n: (n + 1) ms late, its timer (n + 1) × 0.1 ms.
        assert_eq!(
            (summary.claim_p50_us, summary.claim_max_us),
            (1800.0, 3600.0)
        );
    }

    #[test]
    fn a_missed_a_doubled_and_an_early_tick_are_each_reported() {
        let runs = vec![
            started(0, 1),
            started(1000, 1),
            started(1000, 2),
            started(3000, -1),
        ];
        let (_, problems) = summarize(&runs, at(0), 4, Vec::new());
        let text = problems.join("; ");
        assert!(text.contains("ran 2 times"), "{text}");
        assert!(text.contains("did not run"), "{text}");
        assert!(text.contains("1 runs started before"), "{text}");
        assert_eq!(problems.len(), 3, "{text}");
    }
}
