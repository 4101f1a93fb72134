//! `soloist`: see and steer a fleet of soloist workers from a terminal.
//!
//! ```text
//! soloist --url redis://127.0.0.1:6379 status
//! soloist --url redis://10.0.0.1:7000 --url redis://10.0.0.2:7000 --cluster locks 'orders:*'
//! soloist --sentinel redis://10.0.0.5:26379 --master main --json jobs
//! soloist --url redis://127.0.0.1:6379 dashboard --listen 127.0.0.1:8080 --actions
//! ```
//!
//! Human tables by default, `--json` for scripts (the same values the
//! `soloist::inspect` API returns). Errors go to stderr on one line, and
//! the exit code is 1.

mod table;

use std::process::ExitCode;

use chrono::DateTime;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use soloist::inspect::{Inspector, RunFilter};
use soloist::{ClientBuilder, Deployment, LockClient};

use table::Table;

/// See and steer a fleet of soloist workers: replicas, jobs, runs, locks,
/// queues and dead letters.
#[derive(Debug, Parser)]
#[command(name = "soloist", version, about)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Print JSON (the `soloist::inspect` values) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where the workers' Redis is: the same choices as `soloist::Deployment`.
#[derive(Debug, Args)]
struct Connection {
    /// A Redis URL (`redis://[user:pass@]host:port[/db]`, `rediss://` for
    /// TLS); repeat for the nodes of a cluster.
    #[arg(long = "url", env = "SOLOIST_URL", value_delimiter = ',')]
    urls: Vec<String>,
    /// The URLs are nodes of a Redis Cluster (implied by several `--url`).
    #[arg(long)]
    cluster: bool,
    /// A Sentinel URL; repeat for each sentinel. Needs `--master`.
    #[arg(long = "sentinel", requires = "master")]
    sentinels: Vec<String>,
    /// The name of the primary the sentinels watch.
    #[arg(long)]
    master: Option<String>,
    /// The key prefix the workers use.
    #[arg(long, default_value = "soloist:")]
    prefix: String,
    /// PEM file of the CA certificates to trust for `rediss://`.
    #[cfg(feature = "tls-rustls")]
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM file of the client certificate chain, for mutual TLS.
    #[cfg(feature = "tls-rustls")]
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key.
    #[cfg(feature = "tls-rustls")]
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fleet at a glance: replicas, jobs and queues.
    Status,
    /// The jobs of the live replicas: schedule, next tick, last run, paused.
    Jobs,
    /// A job's recorded runs, newest first.
    Runs {
        /// The job's name.
        job: String,
        /// Only runs with this outcome (success, failure, lost, timed_out, cancelled).
        #[arg(long)]
        outcome: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Held locks whose key matches PATTERN (`*` any text, `?` one character).
    Locks {
        /// The keys to show.
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// The queues (Redis streams) the workers consume.
    Queues,
    /// A queue's dead letters.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Pause a job across the fleet: no tick claimed, keyed runs answered `paused`.
    Pause {
        /// The job's name.
        job: String,
    },
    /// Resume a paused job.
    Resume {
        /// The job's name.
        job: String,
    },
    /// Run a cron job now, once across the fleet.
    Trigger {
        /// The job's name.
        job: String,
    },
    /// Serve the web dashboard until interrupted (Ctrl-C). It has no login:
    /// anyone who reaches the address sees the fleet.
    Dashboard {
        /// The address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Offer the controls: pause, resume, trigger now, replay and purge.
        #[arg(long)]
        actions: bool,
        /// Seconds between the pages' reloads; 0 turns reloading off.
        #[arg(long, default_value_t = 5)]
        refresh: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// List the oldest dead letters of the queue on STREAM.
    List {
        /// The queue's stream.
        stream: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put dead letters back on their stream, each once.
    Replay {
        /// The queue's stream.
        stream: String,
        /// The dead letters' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete dead letters: the ones named, or all with `--all`.
    Purge {
        /// The queue's stream.
        stream: String,
        /// The dead letters' ids.
        ids: Vec<String>,
        /// Delete every dead letter of the queue.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// A failure, as one line on stderr.
type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err),
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(err.as_ref()),
    }
}

/// Prints `err` and its causes on one line.
fn fail(err: &dyn std::error::Error) -> ExitCode {
    let line = soloist::dashboard::error_text(err);
    eprintln!("soloist: error: {line}");
    ExitCode::FAILURE
}

fn deployment(connection: &Connection) -> Result<Deployment, Failure> {
    let deployment = if !connection.sentinels.is_empty() {
        let master = connection
            .master
            .as_deref()
            .ok_or("--sentinel needs --master NAME")?;
        Deployment::sentinel(connection.sentinels.clone(), master)
    } else if connection.urls.is_empty() {
        return Err(
            "say where Redis is: --url URL (or SOLOIST_URL), or --sentinel URL --master NAME"
                .into(),
        );
    } else if connection.cluster || connection.urls.len() > 1 {
        Deployment::cluster(connection.urls.clone())
    } else {
        Deployment::server(connection.urls[0].clone())
    };
    #[cfg(feature = "tls-rustls")]
    let deployment = {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
        };
        let mut deployment = deployment;
        if let Some(ca) = &connection.tls_ca {
            deployment = deployment.tls_root_certificate(read(ca)?);
        }
        if let (Some(cert), Some(key)) = (&connection.tls_cert, &connection.tls_key) {
            deployment = deployment.tls_client_identity(read(cert)?, read(key)?);
        }
        deployment
    };
    Ok(deployment)
}

async fn connect(connection: &Connection) -> Result<LockClient, Failure> {
    let deployment = deployment(connection)?;
    let place = if connection.sentinels.is_empty() {
        connection.urls.join(", ")
    } else {
        format!("sentinels {}", connection.sentinels.join(", "))
    };
    ClientBuilder::default()
        .prefix(connection.prefix.clone())
        .open(deployment)
        .await
        .map_err(|err| format!("cannot use Redis at {place}: {err}").into())
}

async fn run(cli: Cli) -> Result<String, Failure> {
    // Mistakes in the command first, before any connection is tried.
    if let Command::Dead {
        command: DeadCommand::Purge {
            ids, all: false, ..
        },
    } = &cli.command
        && ids.is_empty()
    {
        return Err("name the dead letters to purge, or purge them all with --all".into());
    }
    let locks = connect(&cli.connection).await?;
    let inspector = Inspector::new(&locks)?;
    if let Command::Dashboard {
        listen,
        actions,
        refresh,
    } = cli.command
    {
        return dashboard(inspector, listen, actions, refresh).await;
    }
    let json = cli.json;
    let out = |value: &dyn erased::Json, human: String| -> Result<String, Failure> {
        if json {
            Ok(format!("{}\n", value.to_json()?))
        } else {
            Ok(human)
        }
    };
    match cli.command {
        Command::Status => {
            let status = inspector.status().await?;
            let human = format!(
                "server time {}\n\nREPLICAS\n{}\nJOBS\n{}\nQUEUES\n{}",
                time(status.server_time_ms),
                replicas_table(&status.replicas),
                jobs_table(&status.jobs),
                queues_table(&status.queues)
            );
            out(&status, human)
        }
        Command::Jobs => {
            let jobs = inspector.jobs().await?;
            let human = jobs_table(&jobs);
            out(&jobs, human)
        }
        Command::Runs {
            job,
            outcome,
            limit,
        } => {
            let mut filter = RunFilter::job(&job).limit(limit);
            if let Some(outcome) = &outcome {
                filter = filter.outcome(outcome);
            }
            let runs = inspector.runs(&filter).await?;
            let mut table = Table::new(&[
                "STARTED", "TICK/KEY", "REPLICA", "FENCE", "OUTCOME", "DURATION", "ERROR",
            ]);
            for run in &runs {
                let what = match (&run.key, run.tick_ms) {
                    (Some(key), _) => key.clone(),
                    (None, Some(tick)) if run.triggered => format!("triggered {}", time(tick)),
                    (None, Some(tick)) => time(tick),
                    (None, None) => "-".to_owned(),
                };
                table.row(vec![
                    time(run.started_ms),
                    what,
                    run.replica.clone(),
                    run.fence.to_string(),
                    run.outcome.clone(),
                    format!("{} ms", run.duration_ms),
                    run.error.clone().unwrap_or_default(),
                ]);
            }
            let human = table.render(&format!("no recorded runs of `{job}`"));
            out(&runs, human)
        }
        Command::Locks { pattern } => {
            let locks = inspector.locks(&pattern).await?;
            let mut table = Table::new(&[
                "KEY", "REPLICA", "OWNER", "SINCE", "TTL", "WAITERS", "FENCE",
            ]);
            for lock in &locks {
                table.row(vec![
                    lock.key.clone(),
                    lock.replica.clone().unwrap_or_else(|| "-".to_owned()),
                    lock.owner.clone().unwrap_or_else(|| "-".to_owned()),
                    lock.since_ms.map_or_else(|| "-".to_owned(), time),
                    lock.ttl_ms
                        .map_or_else(|| "-".to_owned(), |ttl| format!("{ttl} ms")),
                    lock.waiters.to_string(),
                    lock.fence.map_or_else(|| "-".to_owned(), |f| f.to_string()),
                ]);
            }
            let human = table.render(&format!("no held lock matches `{pattern}`"));
            out(&locks, human)
        }
        Command::Queues => {
            let queues = inspector.queues().await?;
            let human = queues_table(&queues);
            out(&queues, human)
        }
        Command::Dead { command } => match command {
            DeadCommand::List { stream, limit } => {
                let dead = inspector.dead_letters(&stream, limit).await?;
                let mut table =
                    Table::new(&["ID", "ORIGINAL", "JOB", "KEY", "DELIVERIES", "REASON"]);
                for letter in &dead {
                    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
                    table.row(vec![
                        letter.id.clone(),
                        or_dash(&letter.original_id),
                        or_dash(&letter.job),
                        or_dash(&letter.key),
                        letter
                            .deliveries
                            .map_or_else(|| "-".to_owned(), |d| d.to_string()),
                        or_dash(&letter.reason),
                    ]);
                }
                let human = table.render(&format!("no dead letters on `{stream}`"));
                out(&dead, human)
            }
            DeadCommand::Replay { stream, ids } => {
                #[derive(Serialize)]
                struct Replayed {
                    id: String,
                    replayed_as: Option<String>,
                }
                let mut replayed = Vec::new();
                let mut human = String::new();
                for id in ids {
                    let new = inspector.replay_dead_letter(&stream, &id).await?;
                    human.push_str(&match &new {
                        Some(new) => format!("replayed {id} onto `{stream}` as {new}\n"),
                        None => format!("{id}: no such dead letter (replayed or purged already)\n"),
                    });
                    replayed.push(Replayed {
                        id,
                        replayed_as: new,
                    });
                }
                out(&replayed, human)
            }
            DeadCommand::Purge { stream, ids, all } => {
                if ids.is_empty() && !all {
                    return Err(
                        "name the dead letters to purge, or purge them all with --all".into(),
                    );
                }
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let purged = inspector.purge_dead_letters(&stream, &ids).await?;
                let human = format!("purged {purged} dead letters of `{stream}`\n");
                out(
                    &serde_json::json!({ "stream": stream, "purged": purged }),
                    human,
                )
            }
        },
        Command::Pause { job } => {
            inspector.pause(&job).await?;
            let human = format!("paused `{job}` across the fleet\n");
            out(&serde_json::json!({ "job": job, "paused": true }), human)
        }
        Command::Resume { job } => {
            let was = inspector.resume(&job).await?;
            let human = if was {
                format!("resumed `{job}`\n")
            } else {
                format!("`{job}` was not paused\n")
            };
            out(
                &serde_json::json!({ "job": job, "paused": false, "was_paused": was }),
                human,
            )
        }
        Command::Dashboard { .. } => Err("the dashboard is served above".into()),
        Command::Trigger { job } => {
            let at = inspector.trigger(&job).await?;
            let human = format!(
                "triggered `{job}` at {}: one replica runs it\n",
                time(at.timestamp_millis())
            );
            out(
                &serde_json::json!({ "job": job, "triggered_at_ms": at.timestamp_millis() }),
                human,
            )
        }
    }
}

/// Serves the dashboard until Ctrl-C; its address goes to stderr first.
async fn dashboard(
    inspector: Inspector,
    listen: std::net::SocketAddr,
    actions: bool,
    refresh: u64,
) -> Result<String, Failure> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let address = listener.local_addr()?;
    let refresh = (refresh > 0).then(|| std::time::Duration::from_secs(refresh));
    let options = soloist::dashboard::Options::default()
        .actions(actions)
        .refresh(refresh);
    eprintln!(
        "soloist: dashboard on http://{address}/ ({})",
        if actions {
            "actions enabled"
        } else {
            "read-only"
        }
    );
    if !address.ip().is_loopback() {
        eprintln!(
            "soloist: warning: the dashboard has no login; anyone who reaches {address} sees the fleet{}",
            if actions { " and can steer it" } else { "" }
        );
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    soloist::dashboard::serve(listener, inspector, options, shutdown).await?;
    Ok(String::new())
}

/// Values printed as JSON, without a generic parameter on `out`.
mod erased {
    pub(crate) trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string_pretty(self)
        }
    }
}

/// A Unix time in ms as UTC text.
fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
    )
}

fn replicas_table(replicas: &[soloist::inspect::ReplicaInfo]) -> String {
    let mut table = Table::new(&[
        "REPLICA", "HOST", "PID", "VERSION", "STARTED", "JOBS", "EXPIRES",
    ]);
    for replica in replicas {
        table.row(vec![
            replica.replica.clone(),
            replica.host.clone(),
            replica.pid.to_string(),
            replica.version.clone(),
            time(replica.started_at_ms),
            replica.jobs.len().to_string(),
            replica
                .expires_in_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("in {ms} ms")),
        ]);
    }
    table.render("no live replicas")
}

fn jobs_table(jobs: &[soloist::inspect::JobInfo]) -> String {
    let mut table = Table::new(&[
        "JOB", "KIND", "SCHEDULE", "TZ", "NEXT", "PAUSED", "REPLICAS", "LAST RUN",
    ]);
    for job in jobs {
        let kind = serde_json::to_value(job.decl.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        table.row(vec![
            job.decl.name.clone(),
            kind,
            job.decl
                .schedule
                .clone()
                .or_else(|| job.decl.key_template.clone())
                .unwrap_or_else(|| "-".to_owned()),
            job.decl.time_zone.clone().unwrap_or_else(|| "-".to_owned()),
            job.next_tick_ms.map_or_else(|| "-".to_owned(), time),
            if job.paused { "yes" } else { "no" }.to_owned(),
            job.replicas.join(","),
            job.last_run.as_ref().map_or_else(
                || "-".to_owned(),
                |run| {
                    format!(
                        "{} {} on {}",
                        run.outcome,
                        time(run.started_ms),
                        run.replica
                    )
                },
            ),
        ]);
    }
    table.render("no jobs: no live replica runs any")
}

fn queues_table(queues: &[soloist::inspect::QueueInfo]) -> String {
    let mut table = Table::new(&[
        "STREAM",
        "GROUP",
        "LENGTH",
        "PENDING",
        "LAG",
        "CONSUMERS",
        "DEAD",
        "JOBS",
    ]);
    for queue in queues {
        table.row(vec![
            queue.decl.stream.clone(),
            queue.decl.group.clone(),
            queue.length.to_string(),
            queue.pending.to_string(),
            queue
                .lag
                .map_or_else(|| "-".to_owned(), |lag| lag.to_string()),
            queue.consumers.to_string(),
            queue.dead.to_string(),
            queue.jobs.join(","),
        ]);
    }
    table.render("no queues")
}
