//! The pipeline's HTTP surface: repositories and secrets, runs (trigger,
//! list, detail, logs stored and live over SSE, cancel, restart from a
//! step), releases (list, detail, rollback, removal) and push webhooks.
//! Everything but webhooks and linting is authorised by the project's
//! secret deploy key (not the read key: a read key embedded in a dashboard
//! must not be able to deploy).

use crate::api::{authorise_as, json_query, query};
use crate::app::Shared;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use leanloop_control::KeyKind;
use leanloop_core::{ApiError, ErrorClass};
use leanloop_pipeline::logs::LiveEvent;
use leanloop_pipeline::webhooks::Provider;
use leanloop_pipeline::{LogLine, NewRepo, Pipeline, Pushed, RepoChange, Rollback, Trigger};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/projects/{id}/repos", post(add_repo).get(list_repos))
        .route("/api/v1/projects/{id}/repos/{repo}", get(repo_detail).patch(change_repo).delete(remove_repo))
        .route("/api/v1/projects/{id}/repos/{repo}/secrets/{name}", put(set_secret).delete(delete_secret))
        .route("/api/v1/projects/{id}/repos/{repo}/cache", delete(clear_cache))
        .route("/api/v1/projects/{id}/repos/{repo}/runs", post(trigger).get(list_runs))
        .route("/api/v1/projects/{id}/runs/{run}", get(run_detail))
        .route("/api/v1/projects/{id}/runs/{run}/logs", get(run_logs))
        .route("/api/v1/projects/{id}/runs/{run}/cancel", post(cancel))
        .route("/api/v1/projects/{id}/runs/{run}/restart", post(restart))
        .route("/api/v1/projects/{id}/releases", get(list_releases))
        .route("/api/v1/projects/{id}/releases/{release}", get(release_detail))
        .route("/api/v1/projects/{id}/services/{service}/environments/{env}/rollback", post(rollback))
        .route("/api/v1/projects/{id}/services/{service}/environments/{env}", delete(remove_service))
        .route("/api/v1/pipeline/lint", post(lint))
        .route("/hooks/{repo}/{provider}", post(webhook))
        .with_state(shared)
}

fn pipeline(shared: &Shared) -> Result<Arc<Pipeline>, ApiError> {
    shared
        .pipeline
        .clone()
        .ok_or_else(|| ApiError::from_class(ErrorClass::NotFound, "the pipeline is not enabled on this server".into()))
}

fn number(field: &str, text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(field, format!("{field} must be a number")))
}

/// Authorises the project and hands back the pipeline with its id.
fn open(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<(Arc<Pipeline>, i64), ApiError> {
    let project = authorise_as(shared, headers, id, KeyKind::Deploy, "the pipeline API")?;
    Ok((pipeline(shared)?, project))
}

async fn add_repo(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let new: NewRepo = json_query(&body)?;
    let repo = pipeline.add_repo(project, new).await?;
    Ok((StatusCode::CREATED, Json(repo)).into_response())
}

async fn list_repos(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    Ok(Json(json!({ "repos": pipeline.repos(project)? })))
}

async fn repo_detail(
    State(shared): State<Shared>,
    Path((id, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let repo = number("repo", &repo)?;
    let mut value = json!(pipeline.repo(project, repo)?);
    value["secrets"] = json!(pipeline.secret_names(project, repo)?);
    value["webhook_urls"] = json!([format!("/hooks/{repo}/github"), format!("/hooks/{repo}/gitea")]);
    Ok(Json(value))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: String,
}

async fn set_secret(
    State(shared): State<Shared>,
    Path((id, repo, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let secret: SecretBody = json_query(&body)?;
    pipeline.set_secret(project, number("repo", &repo)?, &name, &secret.value)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_repo(
    State(shared): State<Shared>,
    Path((id, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<leanloop_pipeline::Repo>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let repo = number("repo", &repo)?;
    let change: RepoChange = json_query(&body)?;
    Ok(Json(pipeline.change_repo(project, repo, change).await?))
}

async fn remove_repo(
    State(shared): State<Shared>,
    Path((id, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    pipeline.delete_repo(project, number("repo", &repo)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(
    State(shared): State<Shared>,
    Path((id, repo, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    pipeline.delete_secret(project, number("repo", &repo)?, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_cache(
    State(shared): State<Shared>,
    Path((id, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    pipeline.clear_cache(project, number("repo", &repo)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trigger(
    State(shared): State<Shared>,
    Path((id, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let trigger: Trigger = json_query(&body)?;
    let run = pipeline.trigger(project, number("repo", &repo)?, trigger).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<u32>,
    before: Option<i64>,
}

async fn list_runs(
    State(shared): State<Shared>,
    Path((id, repo)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let page = query(q)?;
    let runs = pipeline.runs(project, number("repo", &repo)?, page.limit.unwrap_or(50), page.before)?;
    Ok(Json(json!({ "runs": runs })))
}

async fn run_detail(
    State(shared): State<Shared>,
    Path((id, run)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    Ok(Json(json!(pipeline.run(project, number("run", &run)?)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    step: Option<String>,
    /// Only lines numbered after this.
    after: Option<i64>,
    limit: Option<u32>,
    /// Stream live lines (Server-Sent Events) until the run ends.
    follow: Option<bool>,
}

/// Stored lines as JSON, or, with `follow=true` or `Accept: text/event-stream`,
/// stored then live lines as Server-Sent Events (`line` events, then one `end`).
async fn run_logs(
    State(shared): State<Shared>,
    Path((id, run)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let run = number("run", &run)?;
    let q = query(q)?;
    let after = q.after.unwrap_or(0);
    let wants_stream = q.follow.unwrap_or(false)
        || headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        let lines = pipeline.logs(project, run, q.step.as_deref(), after, q.limit.unwrap_or(10_000))?;
        return Ok(Json(json!({ "lines": lines })).into_response());
    }
    // A browser's EventSource reconnects with the last `id:` it saw: the
    // stream goes on after it rather than from the `after` of its URL.
    let after = match headers.get("last-event-id") {
        Some(v) => number("Last-Event-ID", v.to_str().unwrap_or_default().trim())?,
        None => after,
    };
    // Subscribe first: the store then holds everything before the subscription.
    let live = pipeline.follow(project, run)?;
    let stored = pipeline.logs(project, run, q.step.as_deref(), after, FOLLOW_PAGE)?;
    let caught_up = stored.is_empty();
    let follow = Follow {
        pipeline,
        project,
        run,
        step: q.step,
        queue: stored.into(),
        caught_up,
        live,
        last: after,
        done: false,
        stopping: shared.stopping.clone(),
    };
    Ok(Sse::new(follow_stream(follow)).keep_alive(KeepAlive::default()).into_response())
}

/// Stored lines a follower holds at once: it reads the store a page at a
/// time as the client takes them, so one that reads slowly, or not at all,
/// holds a page, not the whole log.
const FOLLOW_PAGE: u32 = 1000;

struct Follow {
    pipeline: Arc<Pipeline>,
    project: i64,
    run: i64,
    step: Option<String>,
    queue: VecDeque<LogLine>,
    /// Whether the store has nothing after `last` the queue lacks.
    caught_up: bool,
    live: Option<tokio::sync::broadcast::Receiver<LiveEvent>>,
    last: i64,
    done: bool,
    /// The server is stopping: the stream ends, unlike a run's end with no
    /// `end` event, so a browser's EventSource reconnects (with the last id
    /// it saw) rather than hold the stop up.
    stopping: CancellationToken,
}

fn line_event(line: &LogLine) -> SseEvent {
    SseEvent::default().event("line").id(line.seq.to_string()).data(json!(line).to_string())
}

fn follow_stream(state: Follow) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(line) = s.queue.pop_front() {
                if line.seq <= s.last {
                    continue;
                }
                s.last = line.seq;
                return Some((Ok(line_event(&line)), s));
            }
            if !s.caught_up {
                match s.pipeline.logs(s.project, s.run, s.step.as_deref(), s.last, FOLLOW_PAGE) {
                    Ok(lines) if !lines.is_empty() => s.queue.extend(lines),
                    _ => s.caught_up = true,
                }
                continue;
            }
            if s.done {
                return None;
            }
            let Some(live) = s.live.as_mut() else {
                // Finished before or while we looked: say how it ended.
                s.done = true;
                let status = s.pipeline.run(s.project, s.run).map(|r| r.status.as_str()).unwrap_or("unknown");
                return Some((Ok(SseEvent::default().event("end").data(json!({ "status": status }).to_string())), s));
            };
            let next = tokio::select! {
                next = live.recv() => next,
                () = s.stopping.cancelled() => return None,
            };
            match next {
                Ok(LiveEvent::Line(line)) => {
                    if s.step.as_deref().is_none_or(|want| want == line.step) {
                        s.queue.push_back(line);
                    }
                }
                Ok(LiveEvent::End(status)) => {
                    s.done = true;
                    return Some((
                        Ok(SseEvent::default().event("end").data(json!({ "status": status.as_str() }).to_string())),
                        s,
                    ));
                }
                // Fell behind the broadcast: catch up from the store.
                Err(RecvError::Lagged(_)) => s.caught_up = false,
                Err(RecvError::Closed) => s.live = None,
            }
        }
    })
    .boxed()
}

async fn cancel(
    State(shared): State<Shared>,
    Path((id, run)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let run = pipeline.cancel(project, number("run", &run)?)?;
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    /// The step to start from; it and everything after it run again.
    from: String,
}

async fn restart(
    State(shared): State<Shared>,
    Path((id, run)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let restart: RestartBody = json_query(&body)?;
    let run = pipeline.restart(project, number("run", &run)?, &restart.from).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseQuery {
    service: Option<String>,
    environment: Option<String>,
    limit: Option<u32>,
}

async fn list_releases(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ReleaseQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let q = query(q)?;
    let releases =
        pipeline.releases(project, q.service.as_deref(), q.environment.as_deref(), q.limit.unwrap_or(100))?;
    Ok(Json(json!({ "releases": releases })))
}

async fn release_detail(
    State(shared): State<Shared>,
    Path((id, release)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    Ok(Json(json!(pipeline.release(project, number("release", &release)?)?)))
}

/// A rollback's optional body. Unknown fields are refused, not ignored: a
/// client that thinks it chose something must learn it did not.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    /// The release to return to (one of the service's in that environment
    /// that ran healthy); without it, the one before the live release. With
    /// it a retried call is safe: when the live release already runs that
    /// release's image, nothing starts and the answer is 200.
    release: Option<i64>,
}

async fn rollback(
    State(shared): State<Shared>,
    Path((id, service, env)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let body: RollbackBody = if body.trim_ascii().is_empty() { RollbackBody::default() } else { json_query(&body)? };
    // Answered well before the request's deadline: a rollback whose
    // replicas are slow to turn healthy is answered 202 and goes on.
    let answer_within = shared.request_timeout * 2 / 3;
    Ok(match pipeline.rollback(project, &service, &env, body.release, answer_within).await? {
        Rollback::Live(release) => (StatusCode::CREATED, Json(release)).into_response(),
        Rollback::Deploying(release) => (StatusCode::ACCEPTED, Json(release)).into_response(),
        Rollback::Unchanged(release) => (StatusCode::OK, Json(release)).into_response(),
    })
}

async fn remove_service(
    State(shared): State<Shared>,
    Path((id, service, env)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (pipeline, project) = open(&shared, &headers, &id)?;
    let removed = pipeline.remove_service(project, &service, &env).await?;
    Ok(Json(json!({ "removed_containers": removed })))
}

/// Validates a pipeline file sent as the body; errors carry line numbers.
async fn lint(body: Bytes) -> Result<Json<Value>, ApiError> {
    let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("body", "the file is not UTF-8"))?;
    let file = leanloop_pipeline::spec::Pipeline::parse_apart(text).await?;
    let steps: Vec<Value> = file.steps.iter().map(|s| json!({ "name": s.name, "depends_on": s.depends_on })).collect();
    Ok(Json(json!({ "valid": true, "steps": steps })))
}

/// How long a webhook's sender is kept waiting for its run to be made.
const WEBHOOK_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(8);

/// `POST /hooks/{repo}/{github|gitea}`: a signed push starts a run.
async fn webhook(
    State(shared): State<Shared>,
    Path((repo, provider)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pipeline = pipeline(&shared)?;
    let provider = Provider::parse(&provider)
        .ok_or_else(|| ApiError::from_class(ErrorClass::NotFound, format!("no webhook provider `{provider}`")))?;
    let repo = number("repo", &repo)?;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // GitHub sends a form unless the hook is set to `application/json`.
    let form = text("content-type").is_some_and(|t| t.trim_start().starts_with("application/x-www-form-urlencoded"));
    let event = text(provider.event_header()).map(str::to_owned);
    let signature = text(provider.signature_header()).map(str::to_owned);
    // On a task of the pipeline's: a fetch slower than the sender waits (GitHub
    // gives up after 10 s, and drops the connection) still ends in a run.
    // Answered 202 when it takes longer than that.
    let hook = pipeline.clone().detach(async move {
        pipeline.webhook(repo, provider, event.as_deref(), signature.as_deref(), form, &body).await
    });
    let run = match tokio::time::timeout(WEBHOOK_ANSWER_WITHIN.min(shared.request_timeout / 2), hook).await {
        Ok(done) => {
            done.map_err(|e| ApiError::from_class(ErrorClass::Internal, format!("webhook task failed: {e}")))??
        }
        Err(_) => {
            let queued = "the source is still being fetched; the run starts when the fetch ends";
            return Ok((StatusCode::ACCEPTED, Json(json!({ "run": null, "queued": queued }))).into_response());
        }
    };
    Ok(match run {
        Some(Pushed::Queued(run)) => (StatusCode::CREATED, Json(json!(run))).into_response(),
        Some(Pushed::Seen(run)) => {
            let skipped = format!("run {} already ran this commit here", run.id);
            Json(json!({ "run": run, "skipped": skipped })).into_response()
        }
        Some(Pushed::Stale { reference, head }) => {
            let skipped = match head {
                Some(head) => format!("{reference} is at {head} now, not the pushed commit: a newer push runs instead"),
                None => format!("{reference} is gone"),
            };
            Json(json!({ "run": null, "skipped": skipped })).into_response()
        }
        Some(Pushed::Unmatched) => {
            Json(json!({ "run": null, "skipped": "no step's `when` matches this push" })).into_response()
        }
        None => Json(json!({ "run": null })).into_response(),
    })
}
