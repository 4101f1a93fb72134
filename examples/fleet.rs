//! Run with: cargo run --example fleet
//! (or, against Redis: REDIS_URL=redis://127.0.0.1:6379 cargo run --example fleet)
//!
//! Three replicas of one service in one process, sharing one lock backend,
//! for about fifteen seconds. A cron job fires every three seconds: each
//! tick runs on exactly one replica. A keyed job charges invoices 1 to 4,
//! and every replica submits every invoice, twice: each invoice is charged
//! once, and the other submissions get the first charge's receipt back.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use soloist::{JobContext, LockClient, RunOutcome, Worker, exclusive_job};

#[path = "common/cleanup.rs"]
mod cleanup;

/// Who ran each tick, for the check at the end.
static TICKS: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());

#[exclusive_job(cron = "*/3 * * * * *", ttl = "10s")]
async fn rollup(ctx: JobContext) -> Result<(), std::io::Error> {
    let tick = ctx
        .scheduled_at()
        .map_or_else(String::new, |at| at.format("%H:%M:%S").to_string());
    println!(
        "  tick {tick}: {} runs the rollup (fence {})",
        ctx.replica(),
        ctx.fence()
    );
    TICKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(tick)
        .or_default()
        .push(ctx.replica().to_owned());
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// What charging an invoice returns; kept for duplicates by the dedupe record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    invoice: u64,
    charged_by: String,
    fence: u64,
}

#[exclusive_job(key = "invoice:{invoice_id}", ttl = "10s", dedupe = "10m")]
async fn charge(ctx: JobContext, invoice_id: u64) -> Result<Receipt, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Receipt {
        invoice: invoice_id,
        charged_by: ctx.replica().to_owned(),
        fence: ctx.fence(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // A fresh key prefix per run, so that an earlier run's dedupe records
    // do not answer for this one.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("soloist-fleet-demo:{run}:");
    let url = std::env::var("REDIS_URL").ok();
    let memory = LockClient::memory();
    match &url {
        Some(url) => println!("backend: Redis at {url} (REDIS_URL), one client per replica"),
        None => println!("backend: in-memory (set REDIS_URL=redis://host:port to use Redis)"),
    }

    let mut replicas = Vec::new();
    for n in 1..=3 {
        let locks = match &url {
            Some(url) => {
                LockClient::builder()
                    .prefix(prefix.clone())
                    .connect(url)
                    .await?
            }
            None => memory.clone(),
        };
        let worker = Worker::builder(locks)
            .replica_id(format!("replica-{n}"))
            .job(rollup)
            .job(charge)
            .build()?;
        replicas.push(worker);
    }
    let handles: Vec<_> = replicas.iter().map(Worker::handle).collect();
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let running: Vec<_> = replicas
        .into_iter()
        .map(|worker| {
            let mut stopped = stop.subscribe();
            tokio::spawn(worker.run_until(async move {
                let _ = stopped.recv().await;
            }))
        })
        .collect();

    println!("cron: `rollup` every 3 s on all three replicas");
    tokio::time::sleep(Duration::from_secs(4)).await;
    println!("keyed: every replica charges invoices 1-4, twice");
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut submitters = Vec::new();
    for (n, handle) in handles.into_iter().enumerate() {
        let outcomes = outcomes.clone();
        submitters.push(tokio::spawn(async move {
            for round in 0..2 {
                for invoice in 1..=4 {
                    tokio::time::sleep(Duration::from_millis(40 * (n as u64 + 1))).await;
                    let outcome = handle.run(charge, invoice).await;
                    let line = match &outcome {
                        Ok(RunOutcome::Completed(receipt)) => {
                            format!("charged (fence {})", receipt.fence)
                        }
                        Ok(RunOutcome::Duplicate(receipt)) => format!(
                            "refused as a duplicate: {} charged it (fence {})",
                            receipt.charged_by, receipt.fence
                        ),
                        Ok(RunOutcome::Busy) => {
                            "refused: being charged elsewhere right now".to_owned()
                        }
                        Ok(other) => format!("not charged: {}", other.label()),
                        Err(err) => format!("error: {err}"),
                    };
                    println!(
                        "  replica-{} invoice {invoice} (round {}): {line}",
                        n + 1,
                        round + 1
                    );
                    outcomes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((invoice, outcome.ok()));
                }
            }
        }));
    }
    for submitter in submitters {
        submitter.await?;
    }
    tokio::time::sleep(Duration::from_secs(9)).await;
    let _ = stop.send(());
    for replica in running {
        replica.await??;
    }

    let ticks = TICKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(url) = &url {
        let removed = cleanup::forget(url, &prefix).await?;
        println!("cleanup: removed this run's {removed} keys under `{prefix}`");
    }
    let outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    let count = |wanted: fn(&RunOutcome<Receipt>) -> bool| {
        outcomes
            .iter()
            .filter(|(_, outcome)| outcome.as_ref().is_some_and(wanted))
            .count()
    };
    let charged = count(|outcome| matches!(outcome, RunOutcome::Completed(_)));
    let refused = count(|outcome| matches!(outcome, RunOutcome::Duplicate(_) | RunOutcome::Busy));
    println!(
        "summary: {} ticks, each run by exactly one replica: {}; {} submissions of 4 invoices: {charged} charges, {refused} refused",
        ticks.len(),
        ticks.values().all(|who| who.len() == 1),
        outcomes.len(),
    );
    if ticks.values().any(|who| who.len() != 1) || charged != 4 {
        return Err(format!("a tick or an invoice ran twice: {ticks:?}, {charged} charges").into());
    }
    Ok(())
}
