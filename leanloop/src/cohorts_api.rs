//! Cohorts over HTTP (the read key, like every query): save, list, read,
//! edit and delete people filters, and list a cohort's members. Definitions
//! live in the control plane; [`ControlBook`] hands them to analytics, which
//! checks them and computes members.

use crate::api::{authorise, blocking, json_query, query};
use crate::app::Shared;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leanloop_analytics::cohorts::{CohortBook, CohortDefinition, StoredCohort, COHORT_FIELD};
use leanloop_analytics::fields::{Filter, Op};
use leanloop_analytics::people::{PeopleQuery, PeopleResult};
use leanloop_analytics::AnalyticsError;
use leanloop_control::{ControlPlane, SavedCohort};
use leanloop_core::{ApiError, ErrorClass};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/projects/{id}/cohorts", get(list).post(create))
        .route("/api/v1/projects/{id}/cohorts/{cohort_id}", get(read).put(update).delete(remove))
        .route("/api/v1/projects/{id}/cohorts/{cohort_id}/people", get(members))
        .with_state(shared)
}

/// Cohort definitions as the control plane keeps them.
pub struct ControlBook(pub Arc<ControlPlane>);

impl CohortBook for ControlBook {
    fn cohort(&self, project_id: i64, id: i64) -> Result<Option<StoredCohort>, AnalyticsError> {
        let Some(saved) = self.0.cohort(project_id, id).map_err(|e| AnalyticsError::Cohorts(e.to_string()))? else {
            return Ok(None);
        };
        let definition = definition(&saved)?;
        Ok(Some(StoredCohort { revision: saved.revision, definition }))
    }
}

fn definition(saved: &SavedCohort) -> Result<CohortDefinition, AnalyticsError> {
    serde_json::from_str(&saved.definition)
        .map_err(|e| AnalyticsError::Cohorts(format!("cohort {} is stored unreadably: {e}", saved.id)))
}

/// A cohort as the API shows it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "SavedCohort")]
pub struct Cohort {
    pub id: i64,
    #[serde(flatten)]
    pub definition: CohortDefinition,
    /// People in the cohort now. After a create or an edit it is `null`
    /// when the event store could not be asked (the change is saved;
    /// `count_error` says why): read the cohort again for it.
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CohortList {
    pub cohorts: Vec<Cohort>,
}

fn cohort_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request("cohort_id", "`cohort_id` must be a number"))
}

fn not_found(id: i64) -> ApiError {
    ApiError::from_class(ErrorClass::NotFound, format!("this project has no cohort {id}"))
}

/// `saved` with its member count, computed off the runtime.
async fn shown(shared: &Shared, saved: SavedCohort) -> Result<Cohort, ApiError> {
    let count = size(shared, &saved).await?;
    with_count(saved, Some(count), None)
}

/// `saved` just written, with its member count when the store can give it.
/// The change is saved whatever the store says, so an error here must not
/// be the answer: a client retrying a create would make a second cohort.
async fn saved_now(shared: &Shared, saved: SavedCohort) -> Result<Cohort, ApiError> {
    // Answered before the request's own deadline, which would be a 503.
    let within = shared.request_timeout * 2 / 3;
    let counted = tokio::time::timeout(within, size(shared, &saved)).await.unwrap_or_else(|_| {
        let message = format!("the event store did not answer within {} s", within.as_secs());
        Err(ApiError::from_class(ErrorClass::Unavailable { retry_after_secs: 5 }, message))
    });
    match counted {
        Ok(count) => with_count(saved, Some(count), None),
        Err(err) => {
            tracing::warn!(cohort = saved.id, error = %err.message, "cohort saved; its member count is not known yet");
            let why = if err.status == StatusCode::SERVICE_UNAVAILABLE {
                format!("the event store cannot count members now ({}); read the cohort again later", err.message)
            } else {
                err.message
            };
            with_count(saved, None, Some(why))
        }
    }
}

async fn size(shared: &Shared, saved: &SavedCohort) -> Result<u64, ApiError> {
    let analytics = shared.analytics.clone();
    let (project, id) = (saved.project_id, saved.id);
    blocking(shared.questions.clone(), move || analytics.cohort_size(project, id)).await
}

fn with_count(saved: SavedCohort, count: Option<u64>, count_error: Option<String>) -> Result<Cohort, ApiError> {
    Ok(Cohort {
        id: saved.id,
        definition: definition(&saved)?,
        count,
        count_error,
        created_at: saved.created_at,
        updated_at: saved.updated_at,
    })
}

/// A checked definition from the body, and its JSON as stored.
fn checked(body: &[u8]) -> Result<(CohortDefinition, String), ApiError> {
    let mut definition: CohortDefinition = json_query(body)?;
    definition.check()?;
    definition.name = definition.name.trim().to_owned();
    let text =
        serde_json::to_string(&definition).map_err(|e| ApiError::from_class(ErrorClass::Internal, e.to_string()))?;
    Ok((definition, text))
}

async fn list(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CohortList>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let mut cohorts = Vec::new();
    for saved in shared.control.cohorts(project)? {
        let id = saved.id;
        match shown(&shared, saved).await {
            Ok(cohort) => cohorts.push(cohort),
            // Deleted while the list was read: no longer in it.
            Err(_) if shared.control.cohort(project, id)?.is_none() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(CohortList { cohorts }))
}

async fn create(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let (definition, text) = checked(&body)?;
    let saved = shared.control.create_cohort(project, &definition.name, &text)?;
    Ok((StatusCode::CREATED, Json(saved_now(&shared, saved).await?)).into_response())
}

async fn read(
    State(shared): State<Shared>,
    Path((id, cohort)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Cohort>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let cohort = cohort_id(&cohort)?;
    let saved = shared.control.cohort(project, cohort)?.ok_or_else(|| not_found(cohort))?;
    Ok(Json(shown(&shared, saved).await?))
}

async fn update(
    State(shared): State<Shared>,
    Path((id, cohort)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Cohort>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let cohort = cohort_id(&cohort)?;
    let (definition, text) = checked(&body)?;
    let saved =
        shared.control.update_cohort(project, cohort, &definition.name, &text)?.ok_or_else(|| not_found(cohort))?;
    Ok(Json(saved_now(&shared, saved).await?))
}

async fn remove(
    State(shared): State<Shared>,
    Path((id, cohort)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let cohort = cohort_id(&cohort)?;
    if !shared.control.delete_cohort(project, cohort)? {
        return Err(not_found(cohort));
    }
    // Its stored members are only ever found through the saved cohort, and
    // ids are never reused, so members left behind by a store that cannot
    // delete them now are harmless: the delete stands either way.
    let analytics = shared.analytics.clone();
    let forgetting = blocking(shared.questions.clone(), move || analytics.forget_cohort(project, cohort));
    match tokio::time::timeout(shared.request_timeout * 2 / 3, forgetting).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(cohort, error = %err.message, "cohort deleted; its stored members were left"),
        Err(_) => {
            tracing::warn!(cohort, "cohort deleted; the event store did not answer, its stored members were left")
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
    after: Option<String>,
}

/// The cohort's members, most recently seen first.
async fn members(
    State(shared): State<Shared>,
    Path((id, cohort)): Path<(String, String)>,
    headers: HeaderMap,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<PeopleResult>, ApiError> {
    let project = authorise(&shared, &headers, &id)?;
    let cohort = cohort_id(&cohort)?;
    let page = query(page)?;
    shared.control.cohort(project, cohort)?.ok_or_else(|| not_found(cohort))?;
    let q = PeopleQuery {
        search: None,
        filters: vec![Filter { field: COHORT_FIELD.into(), op: Op::Eq, value: Some(json!(cohort)) }],
        limit: page.limit,
        offset: page.offset,
        after: page.after,
    };
    let analytics = shared.analytics.clone();
    Ok(Json(blocking(shared.questions.clone(), move || analytics.people(project, &q)).await?))
}
