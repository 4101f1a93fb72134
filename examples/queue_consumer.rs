//! Run with: REDIS_URL=redis://127.0.0.1:6379 cargo run --example queue_consumer
//!
//! Both sides of a queue on a Redis Stream, in one process, for a few
//! seconds. A producer enqueues invoices to charge, some of them twice (a
//! client retrying its request), and one whose card is always declined.
//! Two consumers read the stream through one consumer group: each invoice
//! is charged once, the repeated messages are acknowledged as duplicates
//! without charging again, and the declined one is delivered three times,
//! then set aside on the dead-letter stream.
//!
//! Each run uses fresh keys (`soloist-queue-demo:<run>:…`) and removes
//! them at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use soloist::{
    BoxError, Delivery, JobContext, LockClient, Source, StreamSource, Worker, exclusive_job,
};

#[path = "common/cleanup.rs"]
mod cleanup;

/// Who charged each invoice, for the check at the end.
static CHARGES: Mutex<BTreeMap<u64, Vec<String>>> = Mutex::new(BTreeMap::new());

/// What charging an invoice returns; kept for duplicates by the dedupe record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    invoice: u64,
    cents: u64,
    charged_by: String,
    fence: u64,
}

/// Charges an invoice; an amount of zero stands for a declined card.
#[exclusive_job(key = "invoice:{invoice_id}", ttl = "10s", dedupe = "10m")]
async fn charge(ctx: JobContext, invoice_id: u64, cents: u64) -> Result<Receipt, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    if cents == 0 {
        println!("  {}: invoice {invoice_id} declined", ctx.replica());
        return Err(std::io::Error::other("card declined"));
    }
    println!(
        "  {}: charged invoice {invoice_id}, {}.{:02} EUR (fence {})",
        ctx.replica(),
        cents / 100,
        cents % 100,
        ctx.fence()
    );
    CHARGES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(invoice_id)
        .or_default()
        .push(ctx.replica().to_owned());
    Ok(Receipt {
        invoice: invoice_id,
        cents,
        charged_by: ctx.replica().to_owned(),
        fence: ctx.fence(),
    })
}

/// What the consumers did with the messages, as their sources saw it.
#[derive(Debug, Default)]
struct Tally {
    /// Ids of the messages acknowledged: charged, or duplicates of a charge.
    acked: Mutex<HashSet<String>>,
    /// Acknowledgements per invoice and consumer.
    acks: Mutex<HashMap<(u64, &'static str), usize>>,
    /// The dead letters: the message's arguments and the reason.
    dead: Mutex<Vec<(String, String)>>,
}

/// The invoice a message of `charge` is for: its payload is the job's
/// arguments, `[invoice_id, cents]`.
fn invoice_of(payload: &[u8]) -> u64 {
    String::from_utf8_lossy(payload)
        .trim_start_matches('[')
        .split(',')
        .next()
        .and_then(|invoice| invoice.trim().parse().ok())
        .unwrap_or_default()
}

/// A [`StreamSource`] that tells what happens to its messages: the worker
/// sees only the [`Source`] trait, so a wrapper can watch every call.
struct Observed {
    consumer: &'static str,
    stream: StreamSource,
    tally: Arc<Tally>,
}

impl Source for Observed {
    fn name(&self) -> &str {
        self.stream.name()
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BoxError>> {
        Box::pin(async move {
            let batch = self.stream.receive(max).await?;
            for delivery in batch.iter().filter(|delivery| delivery.deliveries > 1) {
                println!(
                    "  {}: message {} {} redelivered (delivery {})",
                    self.consumer,
                    delivery.id,
                    String::from_utf8_lossy(&delivery.payload),
                    delivery.deliveries
                );
            }
            Ok(batch)
        })
    }

    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            self.stream.ack(delivery).await?;
            self.tally
                .acked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(delivery.id.clone());
            // A charge is recorded before its message is acknowledged, so a
            // consumer's acknowledgements of an invoice beyond the charges
            // it made of it are duplicates, skipped without running.
            let invoice = invoice_of(&delivery.payload);
            let charges = CHARGES.lock().unwrap_or_else(|p| p.into_inner());
            let chargers = charges.get(&invoice).cloned().unwrap_or_default();
            drop(charges);
            let mine = chargers.iter().filter(|who| *who == self.consumer).count();
            let mut acks = self.tally.acks.lock().unwrap_or_else(|p| p.into_inner());
            let acked = acks.entry((invoice, self.consumer)).or_default();
            *acked += 1;
            if *acked > mine {
                println!(
                    "  {}: message {} {} is a duplicate: invoice {invoice} already charged by {}; \
                     acknowledged without charging",
                    self.consumer,
                    delivery.id,
                    String::from_utf8_lossy(&delivery.payload),
                    chargers.join(", "),
                );
            }
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            self.stream.dead_letter(delivery, reason).await?;
            println!(
                "  {}: message {} {} dead-lettered: {reason}",
                self.consumer,
                delivery.id,
                String::from_utf8_lossy(&delivery.payload),
            );
            self.tally
                .dead
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((
                    String::from_utf8_lossy(&delivery.payload).into_owned(),
                    reason.to_owned(),
                ));
            Ok(())
        })
    }

    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<u32, BoxError>> {
        self.stream.record_attempt(delivery)
    }

    fn enqueue<'a>(
        &'a self,
        job: &'a str,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, BoxError>> {
        self.stream.enqueue(job, key, payload)
    }

    fn lag(&self) -> BoxFuture<'_, Result<Option<u64>, BoxError>> {
        self.stream.lag()
    }

    fn max_deliveries(&self) -> u32 {
        self.stream.max_deliveries()
    }

    fn visibility_timeout(&self) -> Duration {
        self.stream.visibility_timeout()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!(
            "queue_consumer needs Redis: set REDIS_URL, e.g.\n  \
             REDIS_URL=redis://127.0.0.1:6379 cargo run --example queue_consumer"
        );
        std::process::exit(2);
    };
    // Fresh keys per run, so that an earlier run's stream, consumer group
    // and dedupe records do not answer for this one.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("soloist-queue-demo:{run}:");
    let stream = format!("{prefix}invoices");
    println!("queue: stream {stream} on {url}, dead letters on {{{stream}}}:dead");

    let tally = Arc::new(Tally::default());
    // Every replica, producer or consumer, registers the job on the same
    // stream; a short visibility timeout makes the declined invoice come
    // back quickly.
    let connect = |consumer: &'static str| {
        let (url, stream, prefix, tally) = (&url, &stream, &prefix, &tally);
        async move {
            let source = StreamSource::builder(stream)
                .consumer(consumer)
                .visibility_timeout(Duration::from_secs(1))
                .max_deliveries(3)
                .block(Duration::from_millis(200))
                .connect(url)
                .await?;
            let locks = LockClient::builder()
                .prefix(prefix.clone())
                .connect(url)
                .await?;
            let observed = Observed {
                consumer,
                stream: source,
                tally: tally.clone(),
            };
            Ok::<_, Box<dyn Error>>(
                Worker::builder(locks)
                    .replica_id(consumer)
                    .consume(observed, charge)
                    .build()?,
            )
        }
    };

    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut consumers = Vec::new();
    for name in ["consumer-a", "consumer-b"] {
        let worker = connect(name).await?;
        let mut stopped = stop.subscribe();
        consumers.push(tokio::spawn(worker.run_until(async move {
            let _ = stopped.recv().await;
        })));
    }
    println!("consumers: consumer-a and consumer-b, one consumer group");

    // A replica that only produces builds a worker to enqueue with, and
    // never runs it.
    let producer = connect("producer").await?;
    let invoices: [(u64, u64); 10] = [
        (1, 1250),
        (2, 990),
        (3, 4200),
        (2, 990),
        (4, 1500),
        (13, 0),
        (1, 1250),
        (5, 300),
        (4, 1500),
        (6, 7800),
    ];
    println!("producer: enqueues {} messages", invoices.len());
    for (invoice, cents) in invoices {
        let id = producer.handle().enqueue(charge, (invoice, cents)).await?;
        println!("  enqueued invoice {invoice} ({cents} cents) as message {id}");
    }

    let deadline = Instant::now() + Duration::from_secs(8);
    let handled = || {
        tally.acked.lock().map_or(0, |acked| acked.len())
            + tally.dead.lock().map_or(0, |dead| dead.len())
    };
    while handled() < invoices.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    for consumer in consumers {
        consumer.await??;
    }

    let charges = CHARGES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acked = tally.acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    let dead = tally.dead.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let charged: usize = charges.values().map(Vec::len).sum();
    let distinct = invoices
        .iter()
        .filter(|(_, cents)| *cents > 0)
        .map(|(invoice, _)| invoice)
        .collect::<HashSet<_>>()
        .len();
    println!(
        "summary: {} messages; {} invoices charged (each exactly once: {}); {} duplicates \
         acknowledged without charging; {} dead-lettered",
        invoices.len(),
        charges.len(),
        charges.values().all(|who| who.len() == 1),
        acked.saturating_sub(charged),
        dead.len(),
    );
    for (invoice, who) in &charges {
        println!("  invoice {invoice}: charged by {}", who.join(", "));
    }
    for (args, reason) in &dead {
        println!("  dead letter {args}: {reason}");
    }
    let removed = cleanup::forget(&url, &prefix).await?;
    println!("cleanup: removed this run's {removed} keys under `{prefix}`");
    if charges.len() != distinct || charged != distinct || dead.len() != 1 {
        return Err(format!(
            "expected {distinct} invoices charged once each and 1 dead letter: {charges:?}, {dead:?}"
        )
        .into());
    }
    Ok(())
}
