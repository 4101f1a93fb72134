//! The pages, rendered from the inspection values. Every value is spliced
//! with maud's `(…)`, which HTML-escapes it: job names, keys and errors
//! come from users.

use chrono::DateTime;
use maud::{DOCTYPE, Markup, html};
use soloist_worker::inspect::{
    DeadLetter, JobInfo, JobKind, LockInfo, QueueInfo, ReplicaInfo, RunRecord, Status,
};

/// What every page needs besides its facts.
#[derive(Debug, Clone)]
pub(crate) struct Frame<'a> {
    /// Where the dashboard is mounted (`""` at the root, `/ops` nested).
    pub(crate) base: &'a str,
    /// The form token, `None` when actions are off.
    pub(crate) token: Option<&'a str>,
    /// Reload period in seconds.
    pub(crate) refresh: Option<u64>,
    /// What the last action did, shown once.
    pub(crate) notice: Option<&'a str>,
}

/// The outcomes a run can record, for the runs filter.
const OUTCOMES: [&str; 6] = [
    "success",
    "failure",
    "lost",
    "timed_out",
    "cancelled",
    "unrecorded",
];

/// A Unix time in ms as UTC text, as the CLI prints it.
pub(crate) fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
    )
}

/// `ms` after `now`, as people say it.
fn relative(ms: i64, now: i64) -> String {
    let delta = ms - now;
    let secs = delta.abs() as f64 / 1000.0;
    let span = if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    };
    if delta >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn kind(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Cron => "cron",
        JobKind::Keyed => "keyed",
        JobKind::Consumed => "consumed",
        _ => "other",
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The address of the page at `path` (`""` for the overview).
pub(crate) fn link(base: &str, path: &str) -> String {
    match (base, path) {
        ("", "") => "/".to_owned(),
        _ => format!("{base}{path}"),
    }
}

fn layout(frame: &Frame<'_>, title: &str, active: &str, body: Markup) -> Markup {
    let base = frame.base;
    let tabs = [
        ("", "Overview"),
        ("/jobs", "Jobs"),
        ("/runs", "Runs"),
        ("/locks", "Locks"),
        ("/queues", "Queues"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "soloist · " (title) }
                link rel="stylesheet" href={ (base) "/assets/dashboard.css" };
                script src={ (base) "/assets/dashboard.js" } defer {}
            }
            body data-refresh=[frame.refresh] {
                header {
                    span.brand { "soloist" }
                    nav {
                        @for (path, name) in tabs {
                            a href=(link(base, path)) class=[(path == active).then_some("active")] { (name) }
                        }
                    }
                    span.mode { @if frame.token.is_some() { "actions enabled" } @else { "read-only" } }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = frame.notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A POST form with one button, carrying the form token.
fn action(
    frame: &Frame<'_>,
    path: &str,
    fields: &[(&str, &str)],
    label: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        @if let Some(token) = frame.token {
            form.inline method="post" action={ (frame.base) (path) } data-confirm=[confirm] {
                input type="hidden" name="token" value=(token);
                @for (name, value) in fields {
                    input type="hidden" name=(name) value=(value);
                }
                button type="submit" name="do" value=(label) { (label) }
            }
        }
    }
}

pub(crate) fn overview(frame: &Frame<'_>, status: &Status) -> Markup {
    let paused = status.jobs.iter().filter(|j| j.paused).count();
    let pending: u64 = status.queues.iter().map(|q| q.pending).sum();
    let dead: u64 = status.queues.iter().map(|q| q.dead).sum();
    let failed = status
        .jobs
        .iter()
        .filter(|j| j.last_run.as_ref().is_some_and(|r| r.outcome != "success"))
        .count();
    let body = html! {
        p.clock { "Fleet clock " span #server-time data-ms=(status.server_time_ms) { (time(status.server_time_ms)) } }
        section.counts {
            div.count #replicas-alive { b { (status.replicas.len()) } " replicas alive" }
            div.count { b { (status.jobs.len()) } " jobs" }
            div.count { b { (paused) } " paused" }
            div.count { b { (failed) } " last run not a success" }
            div.count { b { (status.queues.len()) } " queues" }
            div.count { b { (pending) } " pending" }
            div.count { b { (dead) } " dead letters" }
        }
        h2 { "Replicas" }
        (replicas_table(&status.replicas, status.server_time_ms))
    };
    layout(frame, "Overview", "", body)
}

fn replicas_table(replicas: &[ReplicaInfo], now: i64) -> Markup {
    html! {
        @if replicas.is_empty() {
            p.empty { "No live replicas." }
        } @else {
            table {
                thead { tr { th { "Replica" } th { "Host" } th { "PID" } th { "Version" } th { "Started" } th { "Jobs" } th { "Heartbeat expires" } } }
                tbody {
                    @for replica in replicas {
                        tr data-replica=(replica.replica) {
                            td { (replica.replica) }
                            td { (replica.host) }
                            td { (replica.pid) }
                            td { (replica.version) }
                            td title=(time(replica.started_at_ms)) { (relative(replica.started_at_ms, now)) }
                            td { (replica.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { @match replica.expires_in_ms { Some(ms) => { "in " (ms) " ms" }, None => "-" } }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn jobs(frame: &Frame<'_>, jobs: &[JobInfo], now: i64) -> Markup {
    let body = html! {
        p.clock { "Fleet clock " span #server-time data-ms=(now) { (time(now)) } }
        @if jobs.is_empty() {
            p.empty { "No jobs: no live replica runs any." }
        } @else {
            table #jobs {
                thead { tr { th { "Job" } th { "Kind" } th { "Schedule" } th { "Time zone" } th { "Next tick" } th { "Last run" } th { "Paused" } th { "Replicas" } @if frame.token.is_some() { th { "Actions" } } } }
                tbody {
                    @for job in jobs {
                        tr data-job=(job.decl.name) {
                            td.name { a href={ (frame.base) "/runs?" (query(&[("job", &job.decl.name)])) } { (job.decl.name) } }
                            td { (kind(job.decl.kind)) }
                            td.schedule { code { (job.decl.schedule.as_deref().or(job.decl.key_template.as_deref()).unwrap_or("-")) } }
                            td.tz { (job.decl.time_zone.as_deref().unwrap_or("-")) }
                            @match job.next_tick_ms {
                                Some(next) => td.next data-ms=(next) title=(time(next)) { (time(next)) br; small { (relative(next, now)) } },
                                None => td.next { "-" },
                            }
                            @match &job.last_run {
                                Some(run) => td.last data-outcome=(run.outcome) {
                                    span class={ "outcome " (run.outcome) } { (run.outcome) }
                                    " " small { (relative(run.started_ms, now)) " on " (run.replica) }
                                    @if let Some(error) = &run.error { br; small.error { (error) } }
                                },
                                None => td.last { "-" },
                            }
                            td.paused { @if job.paused { span.badge.paused { "paused" } } @else { "no" } }
                            td { (job.replicas.join(", ")) }
                            @if frame.token.is_some() {
                                td.actions {
                                    @if job.paused {
                                        (action(frame, "/jobs/resume", &[("job", &job.decl.name)], "Resume", None))
                                    } @else {
                                        (action(frame, "/jobs/pause", &[("job", &job.decl.name)], "Pause", None))
                                    }
                                    @if job.decl.kind == JobKind::Cron && !job.paused {
                                        (action(frame, "/jobs/trigger", &[("job", &job.decl.name)], "Trigger now", None))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(frame, "Jobs", "/jobs", body)
}

/// What the runs page was asked for.
#[derive(Debug, Default)]
pub(crate) struct RunsQuery<'a> {
    pub(crate) job: &'a str,
    pub(crate) outcome: &'a str,
    pub(crate) limit: usize,
}

pub(crate) fn runs(
    frame: &Frame<'_>,
    names: &[String],
    asked: &RunsQuery<'_>,
    runs: &[RunRecord],
) -> Markup {
    let body = html! {
        form.filter method="get" action={ (frame.base) "/runs" } {
            label { "Job " select name="job" {
                option value="" selected[asked.job.is_empty()] { "all jobs" }
                @for name in names { option value=(name) selected[name == asked.job] { (name) } }
            } }
            label { "Outcome " select name="outcome" {
                option value="" selected[asked.outcome.is_empty()] { "any" }
                @for outcome in OUTCOMES { option value=(outcome) selected[outcome == asked.outcome] { (outcome) } }
            } }
            label { "Limit " input type="number" name="limit" min="1" max="1000" value=(asked.limit); }
            button type="submit" { "Show" }
        }
        @if runs.is_empty() {
            p.empty { "No recorded runs." }
        } @else {
            table #runs {
                thead { tr { th { "Started" } th { "Job" } th { "Tick / key" } th { "Replica" } th { "Fence" } th { "Outcome" } th { "Duration" } th { "Error" } } }
                tbody {
                    @for run in runs {
                        tr data-job=(run.job) data-outcome=(run.outcome) data-triggered[run.triggered] data-tick=[run.tick_ms] {
                            td { (time(run.started_ms)) }
                            td { (run.job) }
                            td { @match (&run.key, run.tick_ms) {
                                (Some(key), _) => code { (key) },
                                (None, Some(tick)) => { @if run.triggered { span.badge { "triggered" } " " } (time(tick)) },
                                (None, None) => "-",
                            } }
                            td { (run.replica) }
                            td { (run.fence) }
                            td { span class={ "outcome " (run.outcome) } { (run.outcome) } }
                            td { (run.duration_ms) " ms" }
                            td.error { (run.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    layout(frame, "Runs", "/runs", body)
}

/// At most this many locks are listed; the count says how many matched.
pub(crate) const LOCKS_SHOWN: usize = 500;

pub(crate) fn locks(frame: &Frame<'_>, pattern: &str, locks: &[LockInfo]) -> Markup {
    let body = html! {
        form.filter method="get" action={ (frame.base) "/locks" } {
            label { "Keys matching " input type="text" name="pattern" value=(pattern); }
            button type="submit" { "Show" }
            small { " " code { "*" } " any text, " code { "?" } " one character" }
        }
        p { (locks.len()) " held locks match" @if locks.len() > LOCKS_SHOWN { "; the first " (LOCKS_SHOWN) " are shown, narrow the pattern to see others" } "." }
        @if !locks.is_empty() {
            table #locks {
                thead { tr { th { "Key" } th { "Holder" } th { "Owner" } th { "Since" } th { "Remaining ttl" } th { "Waiters" } th { "Fence" } } }
                tbody {
                    @for lock in locks.iter().take(LOCKS_SHOWN) {
                        tr data-key=(lock.key) {
                            td { code { (lock.key) } }
                            td { (lock.replica.as_deref().unwrap_or("-")) }
                            td { small { (lock.owner.as_deref().unwrap_or("-")) } }
                            td { @match lock.since_ms { Some(ms) => (time(ms)), None => "-" } }
                            td { @match lock.ttl_ms { Some(ms) => { (ms) " ms" }, None => "-" } }
                            td { (lock.waiters) }
                            td { @match lock.fence { Some(f) => (f), None => "-" } }
                        }
                    }
                }
            }
        }
    };
    layout(frame, "Locks", "/locks", body)
}

pub(crate) fn queues(frame: &Frame<'_>, queues: &[(QueueInfo, Vec<DeadLetter>)]) -> Markup {
    let body = html! {
        @if queues.is_empty() {
            p.empty { "No queues: no live replica consumes a stream." }
        } @else {
            table #queues {
                thead { tr { th { "Stream" } th { "Group" } th { "Length" } th { "Pending" } th { "Lag" } th { "Consumers" } th { "Dead letters" } th { "Jobs" } } }
                tbody {
                    @for (queue, _) in queues {
                        tr data-stream=(queue.decl.stream) {
                            td { code { (queue.decl.stream) } }
                            td { (queue.decl.group) }
                            td { (queue.length) }
                            td { (queue.pending) }
                            td { @match queue.lag { Some(lag) => (lag), None => "-" } }
                            td { (queue.consumers) }
                            td { (queue.dead) }
                            td { (queue.jobs.join(", ")) }
                        }
                    }
                }
            }
            @for (queue, dead) in queues {
                @if !dead.is_empty() {
                    h2 { "Dead letters of " code { (queue.decl.stream) } }
                    @if queue.dead > dead.len() as u64 { p { "The oldest " (dead.len()) " of " (queue.dead) "." } }
                    (action(frame, "/queues/purge", &[("stream", &queue.decl.stream), ("all", "1")], "Purge all", Some("Delete every dead letter of this queue?")))
                    table.dead {
                        thead { tr { th { "Id" } th { "Original" } th { "Job" } th { "Key" } th { "Deliveries" } th { "Reason" } th { "Args" } @if frame.token.is_some() { th { "Actions" } } } }
                        tbody {
                            @for letter in dead {
                                tr data-id=(letter.id) {
                                    td { (letter.id) }
                                    td { (letter.original_id.as_deref().unwrap_or("-")) }
                                    td { (letter.job.as_deref().unwrap_or("-")) }
                                    td { code { (letter.key.as_deref().unwrap_or("-")) } }
                                    td { @match letter.deliveries { Some(d) => (d), None => "-" } }
                                    td.error { (letter.reason.as_deref().unwrap_or("-")) }
                                    td { code { (letter.args.as_deref().unwrap_or("")) } }
                                    @if frame.token.is_some() {
                                        td.actions {
                                            (action(frame, "/queues/replay", &[("stream", &queue.decl.stream), ("id", &letter.id)], "Replay", None))
                                            (action(frame, "/queues/purge", &[("stream", &queue.decl.stream), ("id", &letter.id)], "Purge", Some("Delete this dead letter?")))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(frame, "Queues", "/queues", body)
}

/// A failure, as a page.
pub(crate) fn error(frame: &Frame<'_>, message: &str) -> Markup {
    layout(
        frame,
        "Error",
        "-",
        html! { p.error role="alert" { (message) } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = r#"<script>alert("x")</script>&'"#;

    fn frame() -> Frame<'static> {
        Frame {
            base: "/ops",
            token: Some("tok"),
            refresh: Some(5),
            notice: Some("<b>done</b>"),
        }
    }

    /// No user text reaches the page as markup: neither in text nor in an
    /// attribute.
    fn assert_escaped(page: &str) {
        assert!(!page.contains("<script>alert"), "raw markup in {page}");
        assert!(!page.contains("\"x\")"), "raw quote in {page}");
        assert!(!page.contains("<b>done"), "raw notice in {page}");
        assert!(
            page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;'"),
            "{page}"
        );
    }

    fn job() -> JobInfo {
        serde_json::from_value(serde_json::json!({
            "name": EVIL, "kind": "cron", "schedule": EVIL, "time_zone": EVIL,
            "next_tick_ms": 1_000, "paused": false, "replicas": [EVIL],
            "last_run": run(),
        }))
        .unwrap()
    }

    fn run() -> serde_json::Value {
        serde_json::json!({
            "id": "1-0", "job": EVIL, "tick_ms": 0, "key": EVIL, "replica": EVIL, "fence": 3,
            "outcome": EVIL, "started_ms": 0, "duration_ms": 5, "error": EVIL,
        })
    }

    #[test]
    fn user_text_is_escaped_on_every_page() {
        let frame = frame();
        let job = job();
        assert_escaped(&jobs(&frame, std::slice::from_ref(&job), 0).into_string());
        let record: RunRecord = serde_json::from_value(run()).unwrap();
        let asked = RunsQuery {
            job: EVIL,
            outcome: EVIL,
            limit: 5,
        };
        assert_escaped(&runs(&frame, &[EVIL.to_owned()], &asked, &[record]).into_string());
        let lock: LockInfo = serde_json::from_value(serde_json::json!({
            "key": EVIL, "owner": EVIL, "replica": EVIL, "waiters": 0,
        }))
        .unwrap();
        assert_escaped(&locks(&frame, EVIL, &[lock]).into_string());
        let queue: QueueInfo = serde_json::from_value(serde_json::json!({
            "stream": EVIL, "group": EVIL, "dead_letters": EVIL, "length": 1, "pending": 0,
            "consumers": 1, "dead": 1, "jobs": [EVIL],
        }))
        .unwrap();
        let letter: DeadLetter = serde_json::from_value(serde_json::json!({
            "id": EVIL, "job": EVIL, "key": EVIL, "args": EVIL, "reason": EVIL,
        }))
        .unwrap();
        assert_escaped(&queues(&frame, &[(queue, vec![letter])]).into_string());
        let replica: ReplicaInfo = serde_json::from_value(serde_json::json!({
            "replica": EVIL, "owner": EVIL, "host": EVIL, "pid": 1, "version": EVIL,
            "started_at_ms": 0, "heartbeat_ms": 1000, "jobs": [],
        }))
        .unwrap();
        let status: Status = serde_json::from_value(serde_json::json!({
            "server_time_ms": 0, "replicas": [replica], "jobs": [], "queues": [],
        }))
        .unwrap();
        assert_escaped(&overview(&frame, &status).into_string());
        assert_escaped(&error(&frame, EVIL).into_string());
    }

    #[test]
    fn forms_carry_the_token_and_only_with_actions_on() {
        let job = job();
        let page = jobs(&frame(), std::slice::from_ref(&job), 0).into_string();
        assert!(page.contains(r#"<input type="hidden" name="token" value="tok">"#));
        assert!(page.contains(r#"action="/ops/jobs/pause""#));
        let read_only = Frame {
            token: None,
            ..frame()
        };
        let page = jobs(&read_only, &[job], 0).into_string();
        assert!(!page.contains("<form"), "{page}");
        assert!(page.contains("read-only"));
    }

    #[test]
    fn times_read_like_the_cli() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(relative(1_500, 0), "in 1.5 s");
        assert_eq!(relative(0, 180_000), "3 min ago");
    }
}
