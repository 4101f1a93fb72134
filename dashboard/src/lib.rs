//! The soloist web dashboard: an [axum] [`Router`] that shows and steers a
//! fleet of soloist workers — live replicas, jobs with their next tick and
//! last run, run history, held locks, queues and dead letters — from the
//! same [`Inspector`] values the `soloist` CLI prints.
//!
//! Mount it in a service (it is also served standalone by `soloist
//! dashboard --listen 127.0.0.1:8080`):
//!
//! ```no_run
//! use soloist::LockClient;
//! use soloist::dashboard::{self, Options};
//! use soloist::inspect::Inspector;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
//! let ops = dashboard::router(Inspector::new(&locks)?, Options::default().actions(true));
//! let app = axum::Router::new().nest("/ops", ops);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Pages
//! `/` overview (replicas alive, counts), `/jobs` (schedule, time zone,
//! next tick by the Redis server's clock, last run and outcome, paused;
//! Pause, Resume and Trigger now), `/runs` (history, filtered by `job`,
//! `outcome`, `limit`), `/locks` (`pattern`; holder, remaining ttl,
//! waiters, fence) and `/queues` (length, pending, lag, consumers, dead
//! letters with Replay and Purge). Pages are rendered on the server and
//! reload themselves ([`Options::refresh`]); the stylesheet and the small
//! script are compiled into the binary, nothing is loaded from elsewhere.
//! `/api/status`, `/api/jobs`, `/api/runs?job=…`, `/api/locks?pattern=…`,
//! `/api/queues` and `/api/dead?stream=…` answer the JSON `soloist --json`
//! prints.
//!
//! # Security
//! - **Authentication is the mounting service's job**: the router lets
//!   anyone who reaches it see the fleet. Put it behind your service's
//!   authentication, as a layer on the router, or listen on loopback only.
//!   Here, behind a proxy that signs users in and names them in a header:
//!
//! ```no_run
//! use axum::extract::Request;
//! use axum::http::StatusCode;
//! use axum::middleware::{self, Next};
//! use axum::response::Response;
//! use soloist::dashboard::{self, Options};
//! # fn demo(inspector: soloist::inspect::Inspector) {
//! /// Lets through the operators the signing-in proxy names.
//! async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     let user = request.headers().get("x-forwarded-user").and_then(|v| v.to_str().ok());
//!     match user {
//!         Some("alice" | "bob") => Ok(next.run(request).await),
//!         Some(_) => Err(StatusCode::FORBIDDEN),
//!         None => Err(StatusCode::UNAUTHORIZED),
//!     }
//! }
//!
//! let ops = dashboard::router(inspector, Options::default().actions(true))
//!     .layer(middleware::from_fn(operators_only));
//! let app: axum::Router = axum::Router::new().nest("/ops", ops);
//! # let _ = app;
//! # }
//! ```
//! - **Read-only by default**: the controls are offered, and POSTs
//!   accepted, only with [`Options::actions`].
//! - **Cross-site requests are refused**: every form carries a token drawn
//!   once per router from the operating system's random source, and a
//!   POST without it, or whose `Origin` is neither the request's `Host`
//!   nor an [allowed origin](Options::allowed_origin), is refused with 403
//!   before anything is changed. Routers in several processes behind one
//!   address have different tokens: route a user's requests to one of them.
//! - Every value shown is HTML-escaped; pages are sent with a
//!   `Content-Security-Policy` allowing only the dashboard's own script and
//!   stylesheet, and forbidding framing.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod csrf;
mod options;
mod pages;

use std::sync::Arc;

use axum::extract::{FromRequestParts, OriginalUri, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use maud::Markup;
use serde::{Deserialize, Serialize};
use soloist_worker::WorkerError;
use soloist_worker::inspect::{DeadLetter, Inspector, QueueInfo, RunFilter, RunRecord};

pub use options::Options;

use pages::{Frame, RunsQuery};

/// The dashboard's routes, to [`nest`](Router::nest) in a service's router
/// or serve as they are; see the [crate docs](crate) for the pages and the
/// security each route has.
///
/// ```no_run
/// # async fn demo(inspector: soloist::inspect::Inspector) {
/// use soloist::dashboard::{router, Options};
/// let app: axum::Router = router(inspector, Options::default());
/// # let _ = app;
/// # }
/// ```
pub fn router(inspector: Inspector, options: Options) -> Router {
    let shared = Arc::new(Shared {
        inspector,
        token: csrf::new_token(),
        options,
    });
    Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/runs", get(runs))
        .route("/locks", get(locks))
        .route("/queues", get(queues))
        .route("/jobs/{action}", post(job_action))
        .route("/queues/{action}", post(queue_action))
        .route("/assets/dashboard.css", get(stylesheet))
        .route("/assets/dashboard.js", get(script))
        .route("/api/status", get(api_status))
        .route("/api/jobs", get(api_jobs))
        .route("/api/runs", get(api_runs))
        .route("/api/locks", get(api_locks))
        .route("/api/queues", get(api_queues))
        .route("/api/dead", get(api_dead))
        .with_state(shared)
}

/// Serves the dashboard at the root of `listener` until `shutdown`
/// completes, as `soloist dashboard` does; a service that has its own
/// server mounts [`router`] instead.
///
/// ```no_run
/// use soloist::LockClient;
/// use soloist::dashboard::{serve, Options};
/// use soloist::inspect::Inspector;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let shutdown = async { tokio::signal::ctrl_c().await.ok(); };
/// serve(listener, Inspector::new(&locks)?, Options::default(), shutdown).await?;
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: tokio::net::TcpListener,
    inspector: Inspector,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(inspector, options))
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Debug)]
struct Shared {
    inspector: Inspector,
    token: String,
    options: Options,
}

type AppState = State<Arc<Shared>>;

/// Where the router is mounted, from the request's original and nested
/// paths: `""` at the root, `/ops` under `nest("/ops", …)`.
#[derive(Debug)]
struct Base(String);

impl<S: Send + Sync> FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner, |uri| uri.0.path());
        Ok(Base(base_of(original, inner)))
    }
}

fn base_of(original: &str, inner: &str) -> String {
    if inner == "/" {
        return original.trim_end_matches('/').to_owned();
    }
    original.strip_suffix(inner).unwrap_or("").to_owned()
}

/// The dashboard's answer to a failed read or action.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    base: String,
}

impl Failure {
    fn new(base: &str, err: &WorkerError) -> Failure {
        let status = match err {
            WorkerError::UnknownJob(_) | WorkerError::UnknownQueue(_) => StatusCode::NOT_FOUND,
            WorkerError::NotCron(_) | WorkerError::JobPaused(_) => StatusCode::CONFLICT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = error_text(err);
        Failure {
            status,
            message,
            base: base.to_owned(),
        }
    }
}

/// An error and its causes on one line (a cause the message already
/// quotes is not repeated): what the dashboard shows and the CLI prints.
#[doc(hidden)]
pub fn error_text(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let frame = Frame {
            base: &self.base,
            token: None,
            refresh: None,
            notice: None,
        };
        let mut response = html(pages::error(&frame, &self.message));
        *response.status_mut() = self.status;
        response
    }
}

type Page = Result<Response, Failure>;

/// An HTML page with the headers every page has.
fn html(markup: Markup) -> Response {
    let headers = [
        (CONTENT_TYPE, "text/html; charset=utf-8"),
        (CACHE_CONTROL, "no-store"),
        (
            HeaderName::from_static("content-security-policy"),
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("referrer-policy"), "same-origin"),
    ];
    (headers, markup.into_string()).into_response()
}

#[derive(Debug, Deserialize)]
struct Notice {
    done: Option<String>,
}

impl Shared {
    fn frame<'a>(&'a self, base: &'a str, notice: &'a Option<String>) -> Frame<'a> {
        Frame {
            base,
            token: self.options.actions.then_some(self.token.as_str()),
            refresh: self.options.refresh_secs(),
            notice: notice.as_deref(),
        }
    }
}

async fn overview(State(shared): AppState, Base(base): Base, Query(n): Query<Notice>) -> Page {
    let status = shared
        .inspector
        .status()
        .await
        .map_err(|e| Failure::new(&base, &e))?;
    Ok(html(pages::overview(
        &shared.frame(&base, &n.done),
        &status,
    )))
}

async fn jobs(State(shared): AppState, Base(base): Base, Query(n): Query<Notice>) -> Page {
    // The status's jobs have their next tick from its server time: the
    // page shows the clock the ticks were computed from.
    let status = shared
        .inspector
        .status()
        .await
        .map_err(|e| Failure::new(&base, &e))?;
    let frame = shared.frame(&base, &n.done);
    Ok(html(pages::jobs(
        &frame,
        &status.jobs,
        status.server_time_ms,
    )))
}

#[derive(Debug, Deserialize)]
struct RunsParams {
    #[serde(default)]
    job: String,
    #[serde(default)]
    outcome: String,
    limit: Option<usize>,
}

impl RunsParams {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 1000)
    }
}

/// The runs `params` ask for: one job's, or the newest of every job's.
async fn select_runs(shared: &Shared, params: &RunsParams) -> Result<Vec<RunRecord>, WorkerError> {
    let filter = |job: &str| {
        let filter = RunFilter::job(job).limit(params.limit());
        if params.outcome.is_empty() {
            filter
        } else {
            filter.outcome(&params.outcome)
        }
    };
    if !params.job.is_empty() {
        return shared.inspector.runs(&filter(&params.job)).await;
    }
    let mut all = Vec::new();
    for job in shared.inspector.jobs().await? {
        all.extend(shared.inspector.runs(&filter(&job.decl.name)).await?);
    }
    all.sort_by_key(|run| std::cmp::Reverse(run.started_ms));
    all.truncate(params.limit());
    Ok(all)
}

async fn runs(State(shared): AppState, Base(base): Base, Query(params): Query<RunsParams>) -> Page {
    let fail = |e: WorkerError| Failure::new(&base, &e);
    let names: Vec<String> = shared
        .inspector
        .jobs()
        .await
        .map_err(fail)?
        .into_iter()
        .map(|job| job.decl.name)
        .collect();
    let records = select_runs(&shared, &params).await.map_err(fail)?;
    let asked = RunsQuery {
        job: &params.job,
        outcome: &params.outcome,
        limit: params.limit(),
    };
    Ok(html(pages::runs(
        &shared.frame(&base, &None),
        &names,
        &asked,
        &records,
    )))
}

#[derive(Debug, Deserialize)]
struct LocksParams {
    pattern: Option<String>,
}

impl LocksParams {
    fn pattern(&self) -> &str {
        match self.pattern.as_deref() {
            None | Some("") => "*",
            Some(pattern) => pattern,
        }
    }
}

async fn locks(
    State(shared): AppState,
    Base(base): Base,
    Query(params): Query<LocksParams>,
) -> Page {
    let locks = shared
        .inspector
        .locks(params.pattern())
        .await
        .map_err(|e| Failure::new(&base, &e))?;
    let frame = shared.frame(&base, &None);
    Ok(html(pages::locks(&frame, params.pattern(), &locks)))
}

/// How many dead letters of each queue the queues page lists.
const DEAD_SHOWN: usize = 50;

async fn queues_with_dead(
    shared: &Shared,
) -> Result<Vec<(QueueInfo, Vec<DeadLetter>)>, WorkerError> {
    let mut out = Vec::new();
    for queue in shared.inspector.queues().await? {
        let dead = if queue.dead > 0 {
            shared
                .inspector
                .dead_letters(&queue.decl.stream, DEAD_SHOWN)
                .await?
        } else {
            Vec::new()
        };
        out.push((queue, dead));
    }
    Ok(out)
}

async fn queues(State(shared): AppState, Base(base): Base, Query(n): Query<Notice>) -> Page {
    let queues = queues_with_dead(&shared)
        .await
        .map_err(|e| Failure::new(&base, &e))?;
    Ok(html(pages::queues(&shared.frame(&base, &n.done), &queues)))
}

/// The fields of the controls' forms.
#[derive(Debug, Deserialize)]
struct ActionForm {
    token: Option<String>,
    job: Option<String>,
    stream: Option<String>,
    id: Option<String>,
    all: Option<String>,
}

/// Refuses a POST unless actions are on and it passes the CSRF check.
fn admit(shared: &Shared, headers: &HeaderMap, form: &ActionForm) -> Result<(), Response> {
    let refuse = |message: &str| {
        let mut response = (StatusCode::FORBIDDEN, message.to_owned()).into_response();
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    if !shared.options.actions {
        return Err(refuse("refused: actions are disabled on this dashboard"));
    }
    csrf::check(
        headers,
        form.token.as_deref(),
        &shared.token,
        &shared.options.allowed_origins,
    )
    .map_err(|refused| refuse(refused.message()))
}

/// After an action, back to its page with what it did (post/redirect/get).
fn done(base: &str, page: &str, notice: &str) -> Response {
    let query = serde_urlencoded::to_string([("done", notice)]).unwrap_or_default();
    let location = format!("{base}{page}?{query}");
    match HeaderValue::from_str(&location) {
        Ok(location) => (StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response(),
        Err(_) => (StatusCode::OK, notice.to_owned()).into_response(),
    }
}

fn missing(base: &str, field: &str) -> Failure {
    Failure {
        status: StatusCode::BAD_REQUEST,
        message: format!("the form has no `{field}`"),
        base: base.to_owned(),
    }
}

async fn job_action(
    State(shared): AppState,
    Base(base): Base,
    axum::extract::Path(action): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, Response> {
    admit(&shared, &headers, &form)?;
    let fail = |e: WorkerError| Failure::new(&base, &e).into_response();
    let job = form
        .job
        .as_deref()
        .ok_or_else(|| missing(&base, "job").into_response())?;
    let notice = match action.as_str() {
        "pause" => {
            shared.inspector.pause(job).await.map_err(fail)?;
            format!("Paused {job} across the fleet.")
        }
        "resume" => {
            if shared.inspector.resume(job).await.map_err(fail)? {
                format!("Resumed {job}.")
            } else {
                format!("{job} was not paused.")
            }
        }
        "trigger" => {
            let at = shared.inspector.trigger(job).await.map_err(fail)?;
            format!(
                "Triggered {job} at {}: one replica runs it.",
                pages::time(at.timestamp_millis())
            )
        }
        _ => return Err(StatusCode::NOT_FOUND.into_response()),
    };
    Ok(done(&base, "/jobs", &notice))
}

async fn queue_action(
    State(shared): AppState,
    Base(base): Base,
    axum::extract::Path(action): axum::extract::Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, Response> {
    admit(&shared, &headers, &form)?;
    let fail = |e: WorkerError| Failure::new(&base, &e).into_response();
    let stream = form
        .stream
        .as_deref()
        .ok_or_else(|| missing(&base, "stream").into_response())?;
    let notice = match (action.as_str(), form.id.as_deref(), form.all.is_some()) {
        ("replay", Some(id), _) => match shared
            .inspector
            .replay_dead_letter(stream, id)
            .await
            .map_err(fail)?
        {
            Some(new) => format!("Replayed {id} onto {stream} as {new}."),
            None => format!("{id}: no such dead letter (replayed or purged already)."),
        },
        ("purge", Some(id), false) => {
            let purged = shared
                .inspector
                .purge_dead_letters(stream, &[id])
                .await
                .map_err(fail)?;
            format!("Purged {purged} dead letter of {stream}.")
        }
        ("purge", None, true) => {
            let purged = shared
                .inspector
                .purge_dead_letters(stream, &[])
                .await
                .map_err(fail)?;
            format!("Purged {purged} dead letters of {stream}.")
        }
        ("replay" | "purge", _, _) => {
            return Err(missing(&base, "id").into_response());
        }
        _ => return Err(StatusCode::NOT_FOUND.into_response()),
    };
    Ok(done(&base, "/queues", &notice))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard.css"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard.js"),
    )
}

/// A JSON answer, or the error as `{"error": …}`.
fn json<T: Serialize>(result: Result<T, WorkerError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(err) => {
            let failure = Failure::new("", &err);
            let body = Json(serde_json::json!({ "error": failure.message }));
            (failure.status, body).into_response()
        }
    }
}

async fn api_status(State(shared): AppState) -> Response {
    json(shared.inspector.status().await)
}

async fn api_jobs(State(shared): AppState) -> Response {
    json(shared.inspector.jobs().await)
}

async fn api_runs(State(shared): AppState, Query(params): Query<RunsParams>) -> Response {
    json(select_runs(&shared, &params).await)
}

async fn api_locks(State(shared): AppState, Query(params): Query<LocksParams>) -> Response {
    json(shared.inspector.locks(params.pattern()).await)
}

async fn api_queues(State(shared): AppState) -> Response {
    json(shared.inspector.queues().await)
}

#[derive(Debug, Deserialize)]
struct DeadParams {
    stream: String,
    limit: Option<usize>,
}

async fn api_dead(State(shared): AppState, Query(params): Query<DeadParams>) -> Response {
    let limit = params.limit.unwrap_or(50).clamp(1, 1000);
    json(shared.inspector.dead_letters(&params.stream, limit).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_is_what_the_nest_added() {
        assert_eq!(base_of("/", "/"), "");
        assert_eq!(base_of("/jobs", "/jobs"), "");
        assert_eq!(base_of("/ops", "/"), "/ops");
        assert_eq!(base_of("/ops/", "/"), "/ops");
        assert_eq!(base_of("/ops/jobs", "/jobs"), "/ops");
        assert_eq!(base_of("/a/b/runs", "/runs"), "/a/b");
    }
}
