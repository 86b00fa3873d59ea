//! The read API, authorised by a project's secret read key as a Bearer token:
//! raw events (GET with query parameters) and insights (POST with a JSON
//! query, see `leanloop_analytics`).

use crate::app::Shared;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use leanloop_analytics::releases::{ImpactQuery, ImpactResult, ReleaseSummary, ReleasesQuery};
use leanloop_analytics::{Analytics, AnalyticsError, EventQuery};
use leanloop_control::KeyKind;
use leanloop_core::{ApiError, ErrorClass, JsonFault};
use leanloop_store::asker;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/projects/{id}/events", get(list_events))
        .route("/api/v1/projects/{id}/events/count", get(count_events))
        .route("/api/v1/projects/{id}/insights/trend", post(insight(Analytics::trend)))
        .route("/api/v1/projects/{id}/insights/funnel", post(insight(Analytics::funnel)))
        .route("/api/v1/projects/{id}/insights/retention", post(insight(Analytics::retention)))
        .route("/api/v1/projects/{id}/insights/paths", post(insight(Analytics::paths)))
        .route("/api/v1/projects/{id}/insights/web", post(insight(Analytics::web)))
        .route("/api/v1/projects/{id}/insights/feedback", post(insight(Analytics::feedback)))
        .route("/api/v1/projects/{id}/insights/releases", post(releases))
        .route("/api/v1/projects/{id}/insights/release-impact", post(release_impact))
        .route("/api/v1/projects/{id}/insights/live", get(live))
        .route("/api/v1/projects/{id}/insights/people", post(insight(Analytics::people)))
        .route("/api/v1/projects/{id}/people/{user_id}", get(profile).delete(erase))
        .route("/api/openapi.json", get(openapi))
        .with_state(shared)
}

/// Checks the Bearer read key belongs to project `id`.
pub(crate) fn authorise(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<i64, ApiError> {
    authorise_as(shared, headers, id, KeyKind::Read, "the query API")
}

/// Checks the Bearer key is project `id`'s key of kind `wanted` (`api` names
/// what is being called, for messages).
pub(crate) fn authorise_as(
    shared: &Shared,
    headers: &HeaderMap,
    id: &str,
    wanted: KeyKind,
    api: &str,
) -> Result<i64, ApiError> {
    let unauthorized = |message: String| ApiError::from_class(ErrorClass::Unauthorized, message);
    let want = wanted.name();
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name in any case (RFC 9110).
        .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
        .map(|(_, key)| key.trim())
        .ok_or_else(|| unauthorized(format!("send the project's {want} key as `Authorization: Bearer <key>`")))?;
    let id: i64 = id.parse().map_err(|_| ApiError::bad_request("id", "project id must be a number"))?;
    match shared.keys.lookup(key)? {
        Some((project, kind)) if kind == wanted && project.id == id => Ok(id),
        Some((_, kind)) if kind == wanted => {
            Err(ApiError::from_class(ErrorClass::Forbidden, format!("this {want} key is not for project {id}")))
        }
        Some((_, kind)) => Err(unauthorized(format!("this is a {} key; {api} needs the {want} key", kind.name()))),
        None => Err(unauthorized(format!("unknown {want} key"))),
    }
}

/// Rejections of the query string name the parameter at fault.
pub(crate) fn query<Q>(q: Result<Query<Q>, QueryRejection>) -> Result<Q, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        let text = e.body_text();
        // "unknown field `x`", or "...query string: limit: invalid digit".
        let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
        let path = detail.split_once(": ").map(|(path, _)| path).filter(|p| !p.is_empty() && !p.contains(' '));
        // The path first: a message may quote values too (`true` or `false`).
        // An empty name (`?=`) is no field: the query as a whole is at fault.
        let quoted = text.split('`').nth(1).filter(|f| !f.is_empty());
        let field = path.or(quoted).unwrap_or("query").to_owned();
        ApiError::from_class(ErrorClass::BadRequest { field: Some(field) }, text)
    })
}

/// Questions answered at once. Each may keep DuckDB's threads busy for
/// seconds: more at once only share the cores. A request dropped while it
/// waits never starts one.
pub const MAX_QUESTIONS: usize = 4;

/// Erasures run at once. They have room of their own: one waiting for
/// ClickHouse's deletes (up to two thirds of the request deadline, longer
/// behind a stuck mutation) holds back no question.
pub const MAX_ERASURES: usize = 2;

/// The read API's room for questions: `most` at once, each holding one
/// place, or one alone holding them all.
#[derive(Clone)]
pub struct Questions {
    room: std::sync::Arc<tokio::sync::Semaphore>,
    most: u32,
    /// Questions let in so far: whether others came while one ran.
    entered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Questions {
    pub fn new(most: usize) -> Questions {
        let most = most.clamp(1, 1 << 16) as u32;
        let room = std::sync::Arc::new(tokio::sync::Semaphore::new(most as usize));
        Questions { room, most, entered: Default::default() }
    }

    async fn enter(&self, places: u32) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.room
            .clone()
            .acquire_many_owned(places)
            .await
            .map_err(|_| ApiError::from_class(ErrorClass::Internal, "questions are no longer answered".into()))
    }
}

/// Runs `f` off the runtime once `questions` has room; the room is held
/// until `f` returns. A request that ends before its answer (its deadline
/// passed, an HTTP/2 stream reset) stops the store's read (see the store's
/// `asker.rs`) rather than keep the cores busy for no one.
///
/// The questions answered at once share the store's memory (DuckDB's limit
/// is one pool, ClickHouse's user and server limits): one refused for want
/// of shared memory while others ran is asked again alone, so a
/// dashboard's panels asked together are answered as each would be on its
/// own. Refused alone, or by a limit of its own, it is a 503.
pub(crate) async fn blocking<T: Send + 'static>(
    questions: Questions,
    f: impl Fn() -> Result<T, AnalyticsError> + Send + 'static,
) -> Result<T, ApiError> {
    use std::sync::atomic::Ordering::SeqCst;
    let room = questions.enter(1).await?;
    let others_running = questions.room.available_permits() + 1 < questions.most as usize;
    let entered = questions.entered.fetch_add(1, SeqCst) + 1;
    let (answer, f) = off_runtime(room, f).await?;
    let others_came = questions.entered.load(SeqCst) != entered;
    let answer = match answer {
        Err(AnalyticsError::Store(leanloop_store::StoreError::QueryMemory { shared: true, .. }))
            if others_running || others_came =>
        {
            let alone = questions.enter(questions.most).await?;
            off_runtime(alone, f).await?.0
        }
        answer => answer,
    };
    answer.map_err(ApiError::from)
}

/// One answer of `f` on a blocking thread, holding `room` until it returns;
/// `f` comes back with it to be asked again.
async fn off_runtime<T: Send + 'static, F: Fn() -> Result<T, AnalyticsError> + Send + 'static>(
    room: tokio::sync::OwnedSemaphorePermit,
    f: F,
) -> Result<(Result<T, AnalyticsError>, F), ApiError> {
    /// Tells the asker it has gone unless disarmed by the answer.
    struct LeaveUnanswered(Option<asker::Asker>);
    impl Drop for LeaveUnanswered {
        fn drop(&mut self) {
            if let Some(asker) = self.0.take() {
                asker.leave();
            }
        }
    }
    let asker = asker::Asker::default();
    let mut unanswered = LeaveUnanswered(Some(asker.clone()));
    let task = move || {
        let _room = room;
        (asker.answer(&f), f)
    };
    let answer = tokio::task::spawn_blocking(task).await;
    unanswered.0 = None;
    answer.map_err(|e| ApiError::from_class(ErrorClass::Internal, format!("query task failed: {e}")))
}

/// Authorises, validates the query, and answers it off the runtime.
async fn answer<T: serde::Serialize + Send + 'static>(
    shared: Shared,
    id: String,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, QueryRejection>,
    ask: impl Fn(&Analytics, i64, &EventQuery) -> Result<T, AnalyticsError> + Send + 'static,
) -> Result<T, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let q = query(q)?;
    blocking(shared.questions.clone(), move || ask(&shared.analytics, project, &q)).await
}

async fn count_events(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let count = answer(shared, id, headers, q, |a, project, q| a.count(project, q)).await?;
    Ok(Json(json!({ "count": count })))
}

async fn list_events(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let events = answer(shared, id, headers, q, |a, project, q| a.recent(project, q)).await?;
    Ok(Json(json!({ "events": events })))
}

type Asker<Q, R> = fn(&Analytics, i64, &Q) -> Result<R, AnalyticsError>;
type Answer<R> = futures::future::BoxFuture<'static, Result<Json<R>, ApiError>>;

/// A POST handler answering the JSON query `Q` with `ask`.
fn insight<Q, R>(
    ask: Asker<Q, R>,
) -> impl Fn(State<Shared>, Path<String>, HeaderMap, Bytes) -> Answer<R> + Clone + Send + Sync + 'static
where
    Q: DeserializeOwned + schemars::JsonSchema + Send + 'static,
    R: Serialize + Send + 'static,
{
    move |State(shared), Path(id), headers, body| {
        Box::pin(async move {
            let project = authorise(&shared, &headers, &id)?;
            let q: Q = question(&body)?;
            Ok(Json(blocking(shared.questions.clone(), move || ask(&shared.analytics, project, &q)).await?))
        })
    }
}

/// Parses a JSON query; a mistake is a 400 naming the field at fault, and
/// so is a list where the query's type (and the OpenAPI document) has an
/// object, which serde alone would read by position.
pub(crate) fn json_query<Q: DeserializeOwned + schemars::JsonSchema + 'static>(body: &[u8]) -> Result<Q, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let read = serde_path_to_error::deserialize(&mut *de);
    // A list where an object goes is named as such, whether serde read it
    // by position or stumbled on it (a list of the wrong length).
    let misplaced = || -> Result<(), ApiError> {
        // Only a body with a list in it can hold one in the wrong place.
        if !body.contains(&b'[') {
            return Ok(());
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return Ok(()) };
        match crate::shape::misplaced_list::<Q>(&value) {
            Some(path) => {
                Err(ApiError::bad_request(&path, format!("`{path}` must be an object with named fields, not a list")))
            }
            None => Ok(()),
        }
    };
    let query = read.map_err(|err| {
        if let Err(list) = misplaced() {
            return list;
        }
        let path = err.path().to_string();
        let inner = err.into_inner();
        let (field, message) = match JsonFault::of(&path, &inner) {
            // The path already ends at the unknown key.
            JsonFault::Unknown { name, path } => {
                let field = if path == "." { name } else { path };
                (field.clone(), format!("`{field}`: {inner}"))
            }
            JsonFault::Missing { name, path } if path == "." => (name.clone(), format!("`{name}`: {inner}")),
            JsonFault::Missing { name, path } => {
                let field = format!("{path}.{name}");
                (field.clone(), format!("`{field}`: {inner}"))
            }
            JsonFault::Invalid { path } => (path.clone(), format!("`{path}`: {inner}")),
            JsonFault::Syntax if inner.is_syntax() || inner.is_eof() => {
                ("body".to_owned(), format!("the body is not valid JSON: {inner}"))
            }
            JsonFault::Syntax => ("body".to_owned(), format!("`body`: {inner}")),
        };
        ApiError::bad_request(&field, message)
    })?;
    de.end().map_err(|e| ApiError::bad_request("body", format!("the body is not valid JSON: {e}")))?;
    misplaced()?;
    Ok(query)
}

/// Parses a question's JSON query (see [`json_query`]) whose filters list
/// no more values in all than its answer can afford (see
/// [`crate::shape::MAX_LISTED_VALUES`]).
fn question<Q: DeserializeOwned + schemars::JsonSchema + 'static>(body: &[u8]) -> Result<Q, ApiError> {
    let query = json_query(body)?;
    let most = crate::shape::MAX_LISTED_VALUES;
    // Only a body with lists in it can list too many values.
    if body.contains(&b'[') {
        let value: Value = serde_json::from_slice(body).unwrap_or_default();
        if let Some(path) = crate::shape::too_many_listed(&value, most) {
            let message = format!(
                "`{path}`: the query's filters list more than {most} values in all; ask several questions, or use a cohort"
            );
            return Err(ApiError::bad_request(&path, message));
        }
    }
    Ok(query)
}

async fn live(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let result = blocking(shared.questions.clone(), move || shared.analytics.live(project)).await?;
    Ok(Json(json!(result)))
}

/// The document is built once: it only depends on the code.
async fn openapi() -> Json<Value> {
    static DOCUMENT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(crate::openapi::document);
    Json(DOCUMENT.clone())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileQuery {
    limit: Option<usize>,
}

async fn profile(
    State(shared): State<Shared>,
    Path((id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let limit = query(q)?.limit.unwrap_or(100);
    let found = blocking(shared.questions.clone(), move || shared.analytics.profile(project, &user_id, limit)).await?;
    match found {
        Some(p) => Ok(Json(json!(p))),
        None => Err(ApiError::from_class(ErrorClass::NotFound, "no such person".into())),
    }
}

/// Erases a person and all their events (GDPR). Events still on their way
/// through the collector's log when this runs are stored afterwards. 200
/// once the person is gone from every answer; 202 when the store's deletes
/// are made but still running (ClickHouse mutations on a large table) at
/// two thirds of the request's deadline, before that answers a 503.
async fn erase(
    State(shared): State<Shared>,
    Path((id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let wait_until = std::time::Instant::now() + shared.request_timeout * 2 / 3;
    let project = authorise(&shared, &headers, &id)?;
    let store = shared.store.clone();
    let erased = blocking(shared.erasures.clone(), move || match store.delete_person(project, &user_id, wait_until) {
        Ok(events) => Ok((StatusCode::OK, json!({ "deleted_events": events }))),
        Err(e @ leanloop_store::StoreError::StillDeleting { events }) => Ok((
            StatusCode::ACCEPTED,
            json!({ "deleted_events": events, "finished": false, "message": format!("{e}: the person may show in answers until they finish") }),
        )),
        Err(e) => Err(e.into()),
    })
    .await?;
    Ok((erased.0, Json(erased.1)))
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Releases seen in events, each with the time the pipeline put it live.
async fn releases(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<ReleaseSummary>>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let q: ReleasesQuery = json_query(&body)?;
    let analytics = shared.analytics.clone();
    let mut list = blocking(shared.questions.clone(), move || analytics.releases(project, &q)).await?;
    if let Some(pipeline) = &shared.pipeline {
        for release in &mut list {
            release.deployed_at = pipeline.deployed_at(project, &release.release)?.and_then(rfc3339);
        }
    }
    Ok(Json(list))
}

/// Release impact split at the deploy time the pipeline recorded, when it
/// has one and the query gives none.
async fn release_impact(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ImpactResult>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let mut q: ImpactQuery = question(&body)?;
    let mut deployed = false;
    if let (None, None, Some(pipeline)) = (&q.release_time, &q.compare_to, &shared.pipeline) {
        if let Some(at) = pipeline.deployed_at(project, &q.release)? {
            q.release_time = rfc3339(at);
            deployed = true;
        }
    }
    let analytics = shared.analytics.clone();
    let mut result = blocking(shared.questions.clone(), move || analytics.impact(project, &q)).await?;
    if deployed {
        result.release_time_source = Some("deploy".into());
    }
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Follow {
        follow: Option<bool>,
        limit: Option<u32>,
    }

    #[derive(Debug, Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Secret {
        value: String,
    }

    fn query_field(uri: &str) -> Option<String> {
        let uri: axum::http::Uri = uri.parse().unwrap();
        query(Query::<Follow>::try_from_uri(&uri)).unwrap_err().field
    }

    #[test]
    fn refusals_name_the_parameter_not_a_quoted_value() {
        assert_eq!(query_field("/x?follow=yes").as_deref(), Some("follow"));
        assert_eq!(query_field("/x?limit=-1").as_deref(), Some("limit"));
        assert_eq!(query_field("/x?color=red").as_deref(), Some("color"));
        assert_eq!(query_field("/x?=").as_deref(), Some("query"), "no name, no field");
        let repeated = json_query::<Secret>(br#"{"value":"a","value":"b"}"#).unwrap_err();
        assert_eq!(repeated.field.as_deref(), Some("value"), "{}", repeated.message);
    }

    /// Another question, running (holding its place) until told to end.
    async fn another_running(
        questions: &Questions,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<Result<(), ApiError>>) {
        let (end, ending) = std::sync::mpsc::channel::<()>();
        let ending = std::sync::Mutex::new(ending);
        let other = tokio::spawn(blocking(questions.clone(), move || {
            let _ = ending.lock().unwrap().recv();
            Ok(())
        }));
        while questions.room.available_permits() == MAX_QUESTIONS {
            tokio::task::yield_now().await;
        }
        (end, other)
    }

    /// A question the store refuses for want of memory while another runs
    /// is asked again once it is alone; one refused alone, or by a limit of
    /// its own (ClickHouse's per-query one), is answered 503.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_question_refused_for_memory_among_others_is_asked_again_alone() {
        use leanloop_store::StoreError;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let questions = Questions::new(MAX_QUESTIONS);
        let limit = |shared| StoreError::QueryMemory { limit: "a memory limit".into(), shared };
        let memory = move || AnalyticsError::Store(limit(true));
        let (end, other) = another_running(&questions).await;
        let asked = Arc::new(AtomicUsize::new(0));
        let alone = Arc::new(AtomicUsize::new(0));
        let question = tokio::spawn(blocking(questions.clone(), {
            let (asked, alone, questions) = (asked.clone(), alone.clone(), questions.clone());
            move || {
                if asked.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(memory());
                }
                alone.store(questions.room.available_permits(), Ordering::SeqCst);
                Ok(42)
            }
        }));
        // Asked again only once the other question has ended.
        while asked.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        end.send(()).unwrap();
        other.await.unwrap().unwrap();
        assert_eq!(question.await.unwrap().unwrap(), 42);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert_eq!(alone.load(Ordering::SeqCst), 0, "the second time it held every place");
        // Alone from the start: refused once, a 503.
        let refused = blocking(questions.clone(), move || Err::<(), _>(memory())).await.unwrap_err();
        assert_eq!(refused.status.as_u16(), 503, "{}", refused.message);
        // Its own limit refuses it alone too: not asked again, not waiting
        // for the others.
        let (end, other) = another_running(&questions).await;
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        let refused = blocking(questions.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(AnalyticsError::Store(limit(false)))
        });
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), refused)
            .await
            .expect("answered without waiting for the other question to end")
            .unwrap_err();
        assert_eq!((refused.status.as_u16(), asked.load(Ordering::SeqCst)), (503, 1), "{}", refused.message);
        end.send(()).unwrap();
        other.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_question_whose_request_ends_unanswered_is_stopped_and_frees_its_room() {
        use leanloop_store::duckdb::{DuckDbOptions, DuckDbStore};
        use leanloop_store::{ColumnKind, EventStore, Select, StoreError};
        let dir = tempfile::tempdir().unwrap();
        let store = DuckDbStore::open(&dir.path().join("events.duckdb"), &DuckDbOptions::default()).unwrap();
        let questions = Questions::new(1);
        let (started, mut starting) = tokio::sync::mpsc::unbounded_channel();
        let (answered, answer) = std::sync::mpsc::channel();
        let question = blocking(questions.clone(), move || {
            let _ = started.send(());
            // Hours of work on two threads.
            let endless = Select {
                sql: "SELECT count(*) FROM range(1000000000000) t(i) WHERE hash(i) % 7 = 0".into(),
                params: vec![],
                columns: vec![ColumnKind::Int],
            };
            let _ = answered.send(store.select(&endless));
            Ok(())
        });
        // The request ends (its client left) once the question has started.
        let mut question = Box::pin(question);
        tokio::select! {
            _ = &mut question => panic!("an endless question was answered"),
            _ = starting.recv() => {}
        }
        drop(question);
        let stopped = tokio::task::spawn_blocking(move || answer.recv_timeout(std::time::Duration::from_secs(60)));
        let stopped = stopped.await.unwrap().expect("the question stops");
        assert!(matches!(stopped, Err(StoreError::Abandoned)), "{stopped:?}");
        let room = tokio::time::timeout(std::time::Duration::from_secs(60), questions.enter(1)).await;
        assert!(room.is_ok(), "the question's room is free again");
    }
}
