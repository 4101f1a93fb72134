//! What several worker test files share.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::future::BoxFuture;
use soloist::{BoxError, Delivery, LockClient, Source, StreamSource, Worker, WorkerHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The handle of a worker named `replica` that runs no job itself: it
/// submits keyed runs and takes them on its own client.
pub fn handle(locks: LockClient, replica: &str) -> WorkerHandle {
    Worker::builder(locks)
        .replica_id(replica)
        .build()
        .unwrap()
        .handle()
}

/// A worker running on a task of its own, and the way to stop it.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn start(worker: Worker) -> Running {
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

    /// Ends the worker as a crash would: no shutdown, nothing withdrawn.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Stops the worker, failing the test if it takes more than 20 s.
    pub async fn stop(mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("worker stopped in time")
            .expect("worker task");
    }
}

/// A stream source whose acknowledgements never complete, so that its
/// consumer can be killed between a run's success and its acknowledgement;
/// `on_ack` hears of each acknowledgement it holds up.
pub struct NeverAcks<F = fn(&Delivery)> {
    pub source: StreamSource,
    pub on_ack: F,
}

impl NeverAcks {
    /// Holds up every acknowledgement of `source`, silently.
    pub fn new(source: StreamSource) -> Self {
        NeverAcks {
            source,
            on_ack: |_| {},
        }
    }
}

impl<F: Fn(&Delivery) + Send + Sync + 'static> Source for NeverAcks<F> {
    fn name(&self) -> &str {
        self.source.name()
    }
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BoxError>> {
        self.source.receive(max)
    }
    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>> {
        (self.on_ack)(delivery);
        Box::pin(std::future::pending())
    }
    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.source.dead_letter(delivery, reason)
    }
    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<u32, BoxError>> {
        self.source.record_attempt(delivery)
    }
    fn enqueue<'a>(
        &'a self,
        job: &'a str,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, BoxError>> {
        self.source.enqueue(job, key, payload)
    }
    fn max_deliveries(&self) -> u32 {
        self.source.max_deliveries()
    }
    fn visibility_timeout(&self) -> Duration {
        self.source.visibility_timeout()
    }
}

/// The commands a redis-server runs, as `MONITOR` reports them (through
/// `redis-cli`): each line says whether a client sent the command (`[0
/// 127.0.0.1:port]`) or a script ran it (`[0 lua]`).
pub struct Monitor {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Monitor {
    /// Starts watching the server on `port`; returns once it reports.
    pub fn start(port: u16) -> Monitor {
        use std::io::BufRead;
        let mut child = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli runs (it comes with redis-server: apt-get install redis-server)");
        let stdout = child.stdout.take().expect("piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                seen.lock().unwrap().push(line);
            }
        });
        // `MONITOR` answers `OK` before the first command it shows.
        let started = std::time::Instant::now();
        while lines.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "MONITOR started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Monitor { child, lines }
    }

    /// The lines seen so far (the first, `OK`, left out).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().skip(1).cloned().collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
