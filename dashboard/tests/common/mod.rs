//! What the dashboard's test files share: a fleet of in-process replicas
//! running a cron job against a real redis-server.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use soloist::{JobContext, JobSpec, LockClient, Worker, cron_job};
use soloist_testkit::RedisServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A worker running on a task of its own, stopped on drop.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the worker, failing the test if it takes more than 20 s.
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let task = &mut self.task;
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("worker stopped in time")
            .expect("worker task");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn client(server: &RedisServer) -> LockClient {
    LockClient::connect(&server.url()).await.expect("connect")
}

/// Replica `replica` running cron job `job` on `schedule` (UTC).
pub async fn replica(server: &RedisServer, replica: &str, job: &str, schedule: &str) -> Running {
    let worker = Worker::builder(client(server).await)
        .replica_id(replica)
        .heartbeat(Duration::from_secs(2))
        .job(cron_job(
            JobSpec::cron(job, schedule, "UTC").unwrap(),
            |_ctx: JobContext| async { Ok::<_, std::io::Error>(()) },
        ))
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("worker ran");
    });
    Running {
        stop: Some(stop),
        task,
    }
}
