//! [`apalis-redis`](https://crates.io/crates/apalis-redis) with the
//! [`apalis-core`](https://crates.io/crates/apalis-core) worker runtime: the
//! closest Rust Redis job queue to soloist's stream consumer.
//!
//! Its model is not a consumer group. Jobs live in a Redis list of ids
//! (`<queue>:active`) with their payloads in a hash (`<queue>:data`) and a
//! metadata hash per job (`<queue>:meta:<id>`). A worker registers itself
//! in `<queue>:workers`, then fetches a batch in one script (`fetch_next`:
//! `LRANGE` + `LTRIM` of the list, `SADD` to the worker's in-flight set,
//! `HMGET` of the payloads, `HGETALL` of each job's metadata), takes a lease
//! on the batch in a second script (`acquire_leases`: a `HSET` of each job's
//! metadata and a `PUBLISH` per job), runs the jobs concurrently, and
//! records the results in a third (`handle_results`: `SREM` from the
//! in-flight set, `SADD` to `<queue>:done`, a `HSET` of the metadata and a
//! `PUBLISH` per job). It has no dedupe of deliveries and no lock per job
//! key: a job's id is its identity, and an orphaned worker's in-flight jobs
//! go back to the list when its heartbeats stop.
//!
//! lockbench runs it with its defaults except the batch size, set to the
//! 16 entries the other queue contestants read at once.

use apalis_core::backend::TaskSink;
use apalis_core::error::{BoxDynError, WorkerError};
use apalis_core::worker::builder::WorkerBuilder;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Jobs pushed per call while filling a queue.
const FILL_BATCH: u64 = 1_000;

/// The job every apalis worker runs: nothing.
async fn noop(_job: u64) -> Result<(), BoxDynError> {
    Ok(())
}

/// Connections to one server, to fill, watch, check and empty apalis queues.
pub(crate) struct ApalisPeer {
    client: redis::Client,
    setup: MultiplexedConnection,
}

impl std::fmt::Debug for ApalisPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApalisPeer").finish_non_exhaustive()
    }
}

/// Workers connected to a queue, not yet started.
pub(crate) struct Connected {
    queue: String,
    storages: Vec<RedisStorage<u64>>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("queue", &self.queue)
            .field("workers", &self.storages.len())
            .finish()
    }
}

impl ApalisPeer {
    /// Connects to the server at `url`.
    pub(crate) async fn connect(url: &str) -> ApalisPeer {
        let client = redis::Client::open(url).expect("the Redis URL must parse");
        let setup = client
            .get_multiplexed_async_connection()
            .await
            .expect("apalis: cannot connect to Redis");
        ApalisPeer { client, setup }
    }

    /// The storage settings of `queue`: apalis's defaults, batches of `batch`.
    fn config(queue: &str, batch: usize) -> Config {
        Config::default().queue(queue).batch_size(batch)
    }

    /// Pushes `jobs` jobs to `queue` through apalis's own `push_bulk`, one
    /// script call per [`FILL_BATCH`].
    pub(crate) async fn fill(&self, queue: &str, jobs: u64) {
        let conn = self.manager().await;
        let mut storage = RedisStorage::<u64>::new(conn).with_config(Self::config(queue, 1));
        let mut next = 0;
        while next < jobs {
            let end = (next + FILL_BATCH).min(jobs);
            storage
                .push_bulk((next..end).collect())
                .await
                .unwrap_or_else(|err| panic!("apalis: pushing jobs failed: {err}"));
            next = end;
        }
    }

    /// A connection manager of its own (apalis's connection type).
    async fn manager(&self) -> ConnectionManager {
        self.client
            .get_connection_manager()
            .await
            .expect("apalis: cannot connect to Redis")
    }

    /// Opens one storage per worker, each on a connection of its own.
    pub(crate) async fn workers(&self, queue: &str, workers: usize, batch: usize) -> Connected {
        let mut storages = Vec::with_capacity(workers);
        for _ in 0..workers {
            let conn = self.manager().await;
            storages.push(RedisStorage::<u64>::new(conn).with_config(Self::config(queue, batch)));
        }
        Connected {
            queue: queue.to_owned(),
            storages,
        }
    }

    /// Subscribes to the notices apalis publishes as it records a job done
    /// (the `PUBLISH` inside its `handle_results` script), and calls
    /// `settled` with the count of each. Returns once subscribed.
    pub(crate) async fn watch_done(
        &self,
        queue: &str,
        settled: impl Fn(u64) + Send + 'static,
        mut stopped: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .expect("apalis: cannot open a pub/sub connection");
        let channel = format!("tasks:{}", Self::config(queue, 1).done_jobs_set());
        pubsub
            .subscribe(&channel)
            .await
            .expect("apalis: cannot subscribe to the done notices");
        tokio::spawn(async move {
            let mut notices = pubsub.on_message();
            loop {
                tokio::select! {
                    notice = notices.next() => match notice {
                        Some(_) => settled(1),
                        None => return,
                    },
                    _ = stopped.changed() => return,
                }
            }
        })
    }

    /// Checks that every one of `jobs` jobs is done, that none is left
    /// queued or in flight, then deletes the queue's keys.
    pub(crate) async fn check_and_delete(&mut self, queue: &str, workers: usize, jobs: u64) {
        let config = Self::config(queue, 1);
        let mut pipe = redis::pipe();
        pipe.cmd("SCARD").arg(config.done_jobs_set());
        pipe.cmd("LLEN").arg(config.active_jobs_list());
        for index in 0..workers {
            pipe.cmd("SCARD").arg(format!(
                "{}:{}",
                config.inflight_jobs_set(),
                worker_name(index)
            ));
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut self.setup)
            .await
            .expect("apalis: cannot read the queue's state");
        assert_eq!(counts[0], jobs, "apalis: not every job is recorded done");
        assert!(
            counts[1..].iter().all(|&left| left == 0),
            "apalis: jobs left queued or in flight in {queue}: {counts:?}"
        );
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{queue}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.setup)
                .await
                .expect("apalis: SCAN failed");
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut self.setup)
                    .await
                    .expect("apalis: UNLINK failed");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// The name of worker `index`, which also names its in-flight set.
fn worker_name(index: usize) -> String {
    format!("apalis-{index}")
}

impl Connected {
    /// Starts every worker on the no-op job until `stopped` changes; each
    /// then shuts down as apalis does (its in-flight jobs finish, it leaves
    /// the workers set).
    pub(crate) fn start(self, stopped: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.storages
            .into_iter()
            .enumerate()
            .map(|(index, storage)| {
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let worker = WorkerBuilder::new(worker_name(index))
                        .backend(storage)
                        .build(noop);
                    worker
                        .run_until(async move {
                            let _ = stopped.changed().await;
                            Ok::<(), WorkerError>(())
                        })
                        .await
                        .unwrap_or_else(|err| panic!("apalis: a worker failed: {err}"));
                })
            })
            .collect()
    }
}
