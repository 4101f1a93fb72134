//! The inspection calls the handlers make, run on a thread of their own.
//!
//! axum needs every handler's future to be `Send`. The compiler cannot
//! prove that of `Inspector`'s futures, which hold async closures called
//! with borrowed arguments (its scans; rust-lang/rust#110338), so they
//! cannot be awaited in a handler. They run instead on one thread with a
//! current-thread runtime and a `LocalSet`, where nothing needs to be
//! `Send`; each call's result comes back over a channel. The calls run
//! concurrently there (one local task each), and the thread ends when the
//! router is dropped.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use soloist_worker::WorkerError;
use soloist_worker::inspect::{
    DeadLetter, Inspector, JobInfo, LockInfo, QueueInfo, RunFilter, RunRecord, Status,
};
use tokio::sync::{mpsc, oneshot};

/// Why a call gave no answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The inspector's own error.
    Inspect(WorkerError),
    /// The inspection thread could not start or has ended.
    Stopped(String),
}

type Task = Box<dyn FnOnce(Inspector) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

type Answer<T> = Result<T, CallError>;

/// An [`Inspector`] whose calls can be awaited from any task.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    tasks: mpsc::UnboundedSender<Task>,
}

impl Fleet {
    pub(crate) fn new(inspector: Inspector) -> Fleet {
        let (tasks, mut queue) = mpsc::unbounded_channel::<Task>();
        let started = std::thread::Builder::new()
            .name("soloist-dashboard".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    // The queue is dropped: every call answers `Stopped`.
                    Err(_) => return,
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(task) = queue.recv().await {
                        tokio::task::spawn_local(task(inspector.clone()));
                    }
                });
            });
        // Without the thread the receiver is already dropped, and each call
        // says so.
        drop(started);
        Fleet { tasks }
    }

    async fn call<T, F, Fut>(&self, work: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(Inspector) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, WorkerError>> + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let task: Task = Box::new(move |inspector| {
            Box::pin(async move {
                let _ = answer.send(work(inspector).await);
            })
        });
        let stopped =
            || CallError::Stopped("the dashboard's inspection thread is not running".to_owned());
        self.tasks.send(task).map_err(|_| stopped())?;
        answered
            .await
            .map_err(|_| stopped())?
            .map_err(CallError::Inspect)
    }

    pub(crate) async fn status(&self) -> Answer<Status> {
        self.call(async |i| i.status().await).await
    }

    pub(crate) async fn jobs(&self) -> Answer<Vec<JobInfo>> {
        self.call(async |i| i.jobs().await).await
    }

    pub(crate) async fn runs(&self, filter: &RunFilter) -> Answer<Vec<RunRecord>> {
        let filter = filter.clone();
        self.call(async move |i| i.runs(&filter).await).await
    }

    pub(crate) async fn locks(&self, pattern: &str) -> Answer<Vec<LockInfo>> {
        let pattern = pattern.to_owned();
        self.call(async move |i| i.locks(&pattern).await).await
    }

    pub(crate) async fn queues(&self) -> Answer<Vec<QueueInfo>> {
        self.call(async |i| i.queues().await).await
    }

    pub(crate) async fn dead_letters(&self, stream: &str, limit: usize) -> Answer<Vec<DeadLetter>> {
        let stream = stream.to_owned();
        self.call(async move |i| i.dead_letters(&stream, limit).await)
            .await
    }

    pub(crate) async fn pause(&self, job: &str) -> Answer<()> {
        let job = job.to_owned();
        self.call(async move |i| i.pause(&job).await).await
    }

    pub(crate) async fn resume(&self, job: &str) -> Answer<bool> {
        let job = job.to_owned();
        self.call(async move |i| i.resume(&job).await).await
    }

    pub(crate) async fn trigger(&self, job: &str) -> Answer<DateTime<Utc>> {
        let job = job.to_owned();
        self.call(async move |i| i.trigger(&job).await).await
    }

    pub(crate) async fn replay_dead_letter(
        &self,
        stream: &str,
        id: &str,
    ) -> Answer<Option<String>> {
        let (stream, id) = (stream.to_owned(), id.to_owned());
        self.call(async move |i| i.replay_dead_letter(&stream, &id).await)
            .await
    }

    pub(crate) async fn purge_dead_letters(&self, stream: &str, ids: &[&str]) -> Answer<u64> {
        let stream = stream.to_owned();
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        self.call(async move |i| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            i.purge_dead_letters(&stream, &ids).await
        })
        .await
    }
}
