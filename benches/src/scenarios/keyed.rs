//! `keyed`: keyed runs through a `WorkerHandle`, 1 task and 64 tasks, each
//! run on a key of its own (a job with dedupe whose body only returns), so
//! every run is claimed, run, recorded and released.
//!
//! - `soloist`: the job as a queue or an API would declare it (dedupe, no
//!   wait): a run is one claim call and one settle call, and runs started
//!   while another's call is on its way share the next one.
//! - `soloist-stepwise`: the same job with a wait of 1 ms, which no run
//!   here ever uses (every key is free) but which keeps runs on the path one
//!   step at a time: a record read, the acquisition, a second read under
//!   the lock, the commit and the release, five requests per run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use soloist_core::LockClient;
use soloist_worker::{JobContext, JobSpec, RunOutcome, Worker, keyed_job};

use super::{Bench, Scenario};
use crate::measure::{Samples, join_tasks};
use crate::rounds::Contestant;

/// Both rows, at one task and then at 64.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let mut contestants = Vec::new();
    for tasks in [1, 64] {
        for (library, wait) in [
            ("soloist", Duration::ZERO),
            ("soloist-stepwise", Duration::from_millis(1)),
        ] {
            if bench.wants(library) {
                contestants.push(runs(bench, tasks, library, wait).await);
            }
        }
    }
    contestants
}

async fn runs(bench: &Bench, tasks: usize, library: &'static str, wait: Duration) -> Contestant {
    let locks = LockClient::connect(&bench.url)
        .await
        .expect("soloist cannot connect to Redis");
    let handle = Worker::builder(locks)
        .replica_id(format!("lockbench-{library}-{tasks}"))
        .build()
        .expect("a worker with no job builds")
        .handle();
    // A job of its own per run of lockbench, so no record of an earlier
    // run makes a duplicate.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("lb-keyed-{library}-{tasks}-{nonce:x}");
    let spec = JobSpec::keyed(&name, "run:{id}")
        .expect("a valid job name")
        .dedupe(Duration::from_secs(600))
        .wait(wait);
    let job = Arc::new(keyed_job(
        spec,
        |id: &u64| format!("run:{id}"),
        |_: JobContext, _: u64| async { Ok::<_, std::io::Error>(()) },
    ));
    let next = Arc::new(AtomicU64::new(0));
    Contestant::new(Scenario::Keyed, tasks, library, false, move |window| {
        let handles = (0..tasks)
            .map(|_| {
                let (handle, job, next) = (handle.clone(), job.clone(), next.clone());
                tokio::spawn(async move {
                    let mut samples = Samples::default();
                    while window.is_open() {
                        let started = Instant::now();
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        match handle.run(job.as_ref(), id).await {
                            Ok(RunOutcome::Completed(())) => {}
                            other => panic!("a keyed run of a free key: {other:?}"),
                        }
                        samples.record(&window, started, false);
                    }
                    samples
                })
            })
            .collect();
        join_tasks(handles).boxed()
    })
}
