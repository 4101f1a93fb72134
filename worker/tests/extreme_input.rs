//! Extreme settings are errors that name the setting, never a panic on any
//! thread: every duration and count a job or a worker takes, driven with
//! zero, the largest value its type holds, and values just past the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::TimeDelta;
use soloist::{
    JobContext, JobSpec, KeyTemplate, LockClient, MissedTicks, Worker, WorkerError, cron_job,
    keyed_job, parse_duration,
};
use soloist_testkit::RedisServer;

/// Counts panics on every thread from here on; the default hook still prints.
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
    panics
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, WorkerError>, setting: &str) {
    match result {
        Err(WorkerError::InvalidJob { name, .. }) if name == setting => {}
        other => panic!("`{setting}`: expected InvalidJob naming it, got {other:?}"),
    }
}

type Tweak = fn(JobSpec) -> JobSpec;

/// Every setting with an extreme value, and the setting it must be named as.
fn extremes() -> Vec<(&'static str, Tweak)> {
    vec![
        ("ttl", |spec| spec.ttl(Duration::MAX)),
        ("ttl", |spec| spec.ttl(Duration::ZERO)),
        ("ttl", |spec| spec.ttl(Duration::from_nanos(1))),
        ("max_hold", |spec| spec.max_hold(Duration::MAX)),
        ("max_hold", |spec| spec.max_hold(Duration::ZERO)),
        ("backoff", |spec| spec.backoff(Duration::MAX)),
        ("wait", |spec| spec.wait(Duration::MAX)),
        ("retries", |spec| spec.retries(u32::MAX)),
        ("misfire", |spec| spec.misfire(Duration::MAX)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_settings_are_named_errors_and_never_panic() {
    let panics = count_panics();
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();

    for (setting, tweak) in extremes() {
        let cron = tweak(JobSpec::cron("sweep", "* * * * * *", "UTC").unwrap());
        let job = cron_job(cron, |_ctx: JobContext| async {
            Ok::<_, std::io::Error>(())
        });
        assert_invalid(Worker::builder(locks.clone()).job(job).build(), setting);

        let keyed = tweak(JobSpec::keyed("charge", "invoice:{id}").unwrap());
        let job = keyed_job(
            keyed.missed(MissedTicks::CatchUp(u32::MAX)),
            |id: &u64| id.to_string(),
            |_ctx: JobContext, id: u64| async move { Ok::<_, std::io::Error>(id) },
        );
        let handle = Worker::builder(locks.clone()).build().unwrap().handle();
        if setting != "misfire" {
            // A keyed job is checked when it runs, too.
            assert_invalid(handle.run(&job, 1).await, setting);
        }
    }
    let keyed = |tweak: Tweak| {
        keyed_job(
            tweak(JobSpec::keyed("charge", "invoice:{id}").unwrap()),
            |id: &u64| id.to_string(),
            |_ctx: JobContext, id: u64| async move { Ok::<_, std::io::Error>(id) },
        )
    };
    assert_invalid(
        Worker::builder(locks.clone())
            .job(keyed(|spec| spec.dedupe(Duration::MAX)))
            .build(),
        "dedupe",
    );
    assert_invalid(
        Worker::builder(locks.clone())
            .job(keyed(|spec| spec.dedupe(Duration::ZERO)))
            .build(),
        "dedupe",
    );
    assert_invalid(
        Worker::builder(locks.clone())
            .max_in_flight(usize::MAX)
            .build(),
        "max_in_flight",
    );
    assert_invalid(
        Worker::builder(locks.clone()).max_in_flight(0).build(),
        "max_in_flight",
    );
    assert_invalid(
        Worker::builder(locks.clone())
            .shutdown_grace(Duration::MAX)
            .build(),
        "shutdown_grace",
    );
    assert_invalid(
        Worker::builder(locks.clone())
            .local_clock_error(TimeDelta::MAX)
            .build(),
        "local_clock_error",
    );

    // Parsers answer odd input with errors.
    for text in ["18446744073709551615d", "4294967296d", "9999999999999h", ""] {
        assert!(parse_duration(text).is_err(), "{text:?} parsed");
    }
    for template in ["", "{", "}", "{}", "{a}{b}", "{{{"] {
        assert!(KeyTemplate::parse(template).is_err(), "{template:?} parsed");
    }
    assert!(JobSpec::cron("sweep", "", "UTC").is_err());
    assert!(JobSpec::cron("sweep", "* * * * * * * *", "UTC").is_err());
    assert!(JobSpec::keyed("", "{id}").is_err());

    // A context built with the largest values still answers.
    let ctx = JobContext::builder("j")
        .fence(u64::MAX)
        .attempt(u32::MAX)
        .build();
    assert_eq!((ctx.fence(), ctx.attempt()), (u64::MAX, u32::MAX));

    // The largest accepted settings run.
    let largest = keyed(|spec| {
        spec.retries(1000)
            .backoff(Duration::from_secs(365 * 86_400))
            .wait(Duration::from_secs(365 * 86_400))
            .max_hold(Duration::from_secs(365 * 86_400))
            .dedupe(Duration::from_secs(365 * 86_400))
    });
    let handle = Worker::builder(locks.clone())
        .max_in_flight(10_000)
        .shutdown_grace(Duration::from_secs(365 * 86_400))
        .build()
        .unwrap()
        .handle();
    let outcome = handle.run(&largest, 7).await.unwrap();
    assert!(
        matches!(outcome, soloist::RunOutcome::Completed(7)),
        "{outcome:?}"
    );

    assert_eq!(panics.load(Ordering::SeqCst), 0, "a thread panicked");
}
