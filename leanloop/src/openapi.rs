//! The OpenAPI document, served at `/api/openapi.json`: the project API here,
//! the ingest endpoints in `openapi_ingest.rs`. Request
//! and answer schemas are generated from the query and result types
//! themselves (`schemars`), so the document cannot drift from what the
//! server parses and returns; [`INSIGHTS`] is the one list of insight routes
//! (the router in `api.rs` is checked against it by a test).

use leanloop_analytics::{feedback, funnels, live, paths, people, releases, retention, trends, web};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Insight kinds with their summaries, as routed under
/// `/api/v1/projects/{id}/insights/`.
pub const INSIGHTS: &[(&str, &str)] = &[
    ("trend", "A metric per time bucket, optionally broken down and compared with the previous period"),
    ("funnel", "People through 2-10 ordered steps within a conversion window"),
    ("retention", "Cohorts by first (or any) cohort event and how many came back each period"),
    ("paths", "The most common next or previous events or pages after a given one"),
    ("web", "Visitors, page views, sessions, bounce rate, session length and top lists"),
    ("feedback", "NPS, score distribution, messages and NPS per release"),
    ("releases", "Releases seen in events with first and last seen, events and people"),
    ("release-impact", "A metric before vs after a release, or on release A vs release B"),
    ("live", "People active in the last 5 minutes and events per minute"),
    ("people", "Identified people, most recently seen first, with search and trait filters"),
];

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    serde_json::to_value(g.subschema_for::<T>()).unwrap_or(Value::Null)
}

fn answer(description: &str, body: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": body}}})
}

fn error_answers() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    json!({
        "400": answer("The query is invalid; `error.field` names the field at fault", error.clone()),
        "401": answer("No key, an unknown one, or a key of the wrong kind", error.clone()),
        "403": answer("The key belongs to another project", error),
    })
}

/// [`error_answers`] of a question to the event store, which may also find
/// it unavailable or over its limits.
fn read_answers() -> Value {
    let mut responses = error_answers();
    responses["503"] = answer(
        "The event store is unavailable or over its limits now; retry after `Retry-After` seconds",
        json!({"$ref": "#/components/schemas/Error"}),
    );
    responses
}

fn project_id() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}})
}

/// `POST` with a JSON query `Q` answered by `R`.
fn post<Q: JsonSchema, R: JsonSchema>(g: &mut SchemaGenerator, summary: &str) -> Value {
    let mut responses = read_answers();
    responses["200"] = answer("The answer", schema::<R>(g));
    responses["413"] = answer("The body is over 2 MB", json!({"$ref": "#/components/schemas/Error"}));
    json!({"post": {
        "summary": summary,
        "parameters": [project_id()],
        "requestBody": {"required": true, "content": {"application/json": {"schema": schema::<Q>(g)}}},
        "responses": responses,
    }})
}

pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for &(kind, summary) in INSIGHTS {
        let item = match kind {
            "trend" => post::<trends::TrendQuery, trends::TrendResult>(&mut g, summary),
            "funnel" => post::<funnels::FunnelQuery, funnels::FunnelResult>(&mut g, summary),
            "retention" => post::<retention::RetentionQuery, retention::RetentionResult>(&mut g, summary),
            "paths" => post::<paths::PathsQuery, paths::PathsResult>(&mut g, summary),
            "web" => post::<web::WebQuery, web::WebResult>(&mut g, summary),
            "feedback" => post::<feedback::FeedbackQuery, feedback::FeedbackResult>(&mut g, summary),
            "releases" => post::<releases::ReleasesQuery, Vec<releases::ReleaseSummary>>(&mut g, summary),
            "release-impact" => post::<releases::ImpactQuery, releases::ImpactResult>(&mut g, summary),
            "people" => post::<people::PeopleQuery, people::PeopleResult>(&mut g, summary),
            "live" => {
                let mut responses = read_answers();
                responses["200"] = answer("The answer", schema::<live::LiveResult>(&mut g));
                json!({"get": {"summary": summary, "parameters": [project_id()], "responses": responses}})
            }
            _ => continue,
        };
        paths.insert(format!("/api/v1/projects/{{id}}/insights/{kind}"), item);
    }
    let text = |name: &str, description: &str| json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}});
    let time = |name: &str, description: &str| json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "format": "date-time"}});
    let filters = json!([
        project_id(),
        text("name", "Event name"),
        text("user", "User id or anonymous id"),
        time("from", "RFC 3339 time, inclusive"),
        time("to", "RFC 3339 time, exclusive")
    ]);
    let mut list_params = filters.clone();
    if let Some(list) = list_params.as_array_mut() {
        list.push(
            json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}),
        );
    }
    let mut responses = read_answers();
    responses["200"] = answer(
        "Newest events first",
        json!({"type": "object", "properties": {"events": {"type": "array", "items": schema::<leanloop_analytics::EventView>(&mut g)}}}),
    );
    paths.insert(
        "/api/v1/projects/{id}/events".into(),
        json!({"get": {"summary": "Stored events", "parameters": list_params, "responses": responses}}),
    );
    let mut responses = read_answers();
    responses["200"] = answer(
        "Stored events, each uuid once",
        json!({"type": "object", "properties": {"count": {"type": "integer"}}}),
    );
    paths.insert(
        "/api/v1/projects/{id}/events/count".into(),
        json!({"get": {"summary": "Count stored events", "parameters": filters, "responses": responses}}),
    );

    let mut responses = read_answers();
    responses["200"] = answer("The person, their anonymous ids and newest events", schema::<people::Profile>(&mut g));
    responses["404"] = answer("No such person", json!({"$ref": "#/components/schemas/Error"}));
    let user = json!({"name": "user_id", "in": "path", "required": true, "schema": {"type": "string"}});
    let limit = json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}});
    let mut erased = read_answers();
    let deleted = json!({"type": "integer", "minimum": 0});
    let done = json!({"type": "object", "required": ["deleted_events"], "properties": {"deleted_events": deleted}});
    let running = json!({"type": "object", "required": ["deleted_events", "finished", "message"], "properties": {
        "deleted_events": deleted,
        "finished": {"type": "boolean", "enum": [false]},
        "message": {"type": "string"},
    }});
    erased["200"] = answer("Erased: gone from every answer", done);
    erased["202"] =
        answer("The deletes are made and still running (ClickHouse): the person goes as they finish", running);
    paths.insert(
        "/api/v1/projects/{id}/people/{user_id}".into(),
        json!({
            "get": {"summary": "A person's profile and event timeline", "parameters": [project_id(), user.clone(), limit], "responses": responses},
            "delete": {"summary": "Erase a person and all their events (GDPR)", "parameters": [project_id(), user], "responses": erased},
        }),
    );

    cohorts(&mut g, &mut paths);
    pipeline(&mut g, &mut paths);
    operations(&mut paths);
    crate::openapi_ingest::paths(&mut paths);

    let mut schemas = Map::new();
    for (name, s) in g.take_definitions(true) {
        schemas.insert(name, s);
    }
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error", "code", "message"], "properties": {
            "code": {"type": "string", "description": "`error.code` again, where Segment's and RudderStack's clients read it"},
            "message": {"type": "string", "description": "`error.message` again, where Segment's and RudderStack's clients read it"},
            "error": {"type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
                "reason": {"type": "string", "description": "which conflict, on a 409",
                    "enum": ["deploy_in_progress", "no_healthy_release", "never_healthy", "rollback_failed",
                             "release_unusable", "run_finished", "run_unfinished", "runs_unfinished",
                             "step_not_passed", "shutting_down", "data_dir_in_use", "schema_newer"]}}}}}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Leanloop API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Ingest (Segment's and PostHog's wire formats and Leanloop's feedback call), authorised by a project's public write key; events and insights of a project, authorised by its secret read key as a Bearer token; and its delivery pipeline, authorised by its secret deploy key."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "writeKey": {"type": "http", "scheme": "basic", "description": "The project's public write key (llw_…) as the user name, no password: ingest only. Also accepted as a Bearer token, or in the body (`writeKey`, `api_key`, `token`)"},
            "readKey": {"type": "http", "scheme": "bearer", "description": "The project's secret read key (llr_…): events and insights"},
            "deployKey": {"type": "http", "scheme": "bearer", "description": "The project's secret deploy key (lld_…): the pipeline"},
        }},
        "security": [{"readKey": []}],
    })
}

/// One route's method: parameters, optional JSON body, the success status
/// with its answer, the error answers, and the key it takes.
struct Operation<'a> {
    summary: &'a str,
    parameters: Vec<Value>,
    body: Option<Value>,
    status: &'a str,
    answer_body: Option<Value>,
    /// What a 404 means here.
    missing: &'a str,
    /// `readKey` or `deployKey`.
    key: &'a str,
}

fn operation(o: Operation) -> Value {
    let mut responses = if o.key == "readKey" { read_answers() } else { error_answers() };
    if o.key == "deployKey" {
        responses["503"] = answer(
            "No Docker host is reachable, or the repository's source did not answer; retry after `Retry-After` seconds",
            json!({"$ref": "#/components/schemas/Error"}),
        );
    }
    responses["404"] = answer(o.missing, json!({"$ref": "#/components/schemas/Error"}));
    responses[o.status] = match o.answer_body {
        Some(b) => answer("Done", b),
        None => json!({"description": "Done"}),
    };
    let mut op =
        json!({"summary": o.summary, "parameters": o.parameters, "responses": responses, "security": [{o.key: []}]});
    if let Some(body) = o.body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body}}});
        op["responses"]["413"] = answer("The body is over 2 MB", json!({"$ref": "#/components/schemas/Error"}));
    }
    op
}

/// Saved cohorts (see `cohorts_api.rs`).
fn cohorts(g: &mut SchemaGenerator, paths: &mut Map<String, Value>) {
    use crate::cohorts_api::{Cohort, CohortList};
    use leanloop_analytics::cohorts::CohortDefinition;
    let cohort_id = json!({"name": "cohort_id", "in": "path", "required": true, "schema": {"type": "integer"}});
    let limit = json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}});
    let offset = json!({"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}});
    let after = json!({"name": "after", "in": "query", "schema": {"type": "string"},
        "description": "Walk every member once, in user id order: those after this user id (empty for the first page, then the answer's `next`); not with `offset`"});
    let operation = |summary: &str, parameters: Vec<Value>, body: Option<Value>, status: &str, answer_body| {
        let missing = "No such cohort in this project";
        operation(Operation { summary, parameters, body, status, answer_body, missing, key: "readKey" })
    };
    let definition = schema::<CohortDefinition>(g);
    let cohort = schema::<Cohort>(g);
    let one = vec![project_id(), cohort_id.clone()];
    paths.insert(
        "/api/v1/projects/{id}/cohorts".into(),
        json!({
            "post": operation("Save a cohort: trait filters on people, usable as `{\"field\": \"cohort\", \"op\": \"eq\", \"value\": <id>}` in any filter list", vec![project_id()], Some(definition.clone()), "201", Some(cohort.clone())),
            "get": operation("The project's cohorts with their current sizes", vec![project_id()], None, "200", Some(schema::<CohortList>(g))),
        }),
    );
    paths.insert(
        "/api/v1/projects/{id}/cohorts/{cohort_id}".into(),
        json!({
            "get": operation("A cohort with its current size", one.clone(), None, "200", Some(cohort.clone())),
            "put": operation("Replace a cohort's definition", one.clone(), Some(definition), "200", Some(cohort)),
            "delete": operation("Delete a cohort", one.clone(), None, "204", None),
        }),
    );
    paths.insert(
        "/api/v1/projects/{id}/cohorts/{cohort_id}/people".into(),
        json!({
            "get": operation("The cohort's members, most recently seen first", vec![project_id(), cohort_id, limit, offset, after], None, "200", Some(schema::<people::PeopleResult>(g))),
        }),
    );
}

/// What operators and tools read, without a key (see `ops.rs`).
fn operations(paths: &mut Map<String, Value>) {
    let get =
        |summary: &str, responses: Value| json!({"get": {"summary": summary, "security": [], "responses": responses}});
    let up = json!({"type": "object", "properties": {"status": {"type": "string"}}});
    paths.insert("/healthz".into(), get("The process answers", json!({"200": answer("Up", up)})));
    let readiness = json!({"type": "object", "required": ["ready", "backlog", "backlog_capacity", "backlog_unit"], "properties": {
        "ready": {"type": "boolean"},
        "backlog": {"type": "integer", "description": "Log bytes (or queued items, without the log) not yet stored"},
        "backlog_capacity": {"type": "integer"},
        "backlog_unit": {"type": "string", "enum": ["bytes", "items"]},
        "error": {"type": "string", "description": "Why appends are refused now (a full disk, say)"},
    }});
    paths.insert(
        "/readyz".into(),
        get(
            "Whether this instance takes events now",
            json!({"200": answer("Ready", readiness.clone()), "503": answer("Not ready: the backlog is at 90 % of its capacity or more, or appends fail", readiness)}),
        ),
    );
    let text =
        json!({"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}});
    paths.insert("/metrics".into(), get("Metrics in Prometheus' text format", json!({"200": text})));
    paths.insert(
        "/api/openapi.json".into(),
        get("This document", json!({"200": answer("OpenAPI 3.0", json!({"type": "object"}))})),
    );
}

/// The pipeline's routes (see `pipeline_api.rs`).
fn pipeline(g: &mut SchemaGenerator, paths: &mut Map<String, Value>) {
    use leanloop_pipeline::{LogLine, NewRepo, Release, Repo, RepoChange, RunRecord, Trigger};
    let number = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "integer"}});
    let text = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    let query = |name: &str, kind: &str| json!({"name": name, "in": "query", "schema": {"type": kind}});
    let limit =
        |max: u32| json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": max}});
    let object = |fields: &[(&str, &str)]| {
        let properties: Map<String, Value> =
            fields.iter().map(|(n, k)| ((*n).to_owned(), json!({"type": k}))).collect();
        json!({"type": "object", "properties": properties})
    };
    let list =
        |key: &str, item: Value| json!({"type": "object", "properties": {key: {"type": "array", "items": item}}});
    let operation = |summary: &str, parameters: Vec<Value>, body: Option<Value>, status: &str, answer_body| {
        let missing = "No such project resource, or the pipeline is off";
        operation(Operation { summary, parameters, body, status, answer_body, missing, key: "deployKey" })
    };
    // Refused in the run's or service's present state.
    let conflicting = |mut op: Value, when: &str| {
        op["responses"]["409"] = answer(when, json!({"$ref": "#/components/schemas/Error"}));
        op["responses"]["409"]["headers"] = json!({"Retry-After": {
            "description": "Seconds to wait, when a retry can get past the conflict (`deploy_in_progress`)",
            "schema": {"type": "integer"}}});
        op
    };
    let base = "/api/v1/projects/{id}";
    let repo = schema::<Repo>(g);
    let run = schema::<RunRecord>(g);
    let run_schema = run.clone();
    let release = schema::<Release>(g);
    let mut add = |path: String, item: Value| {
        paths.insert(path, item);
    };
    add(
        format!("{base}/repos"),
        json!({
            "post": operation("Register a repository (cloned at once)", vec![project_id()], Some(schema::<NewRepo>(g)), "201", Some(repo.clone())),
            "get": operation("Repositories", vec![project_id()], None, "200", Some(list("repos", repo.clone()))),
        }),
    );
    add(
        format!("{base}/repos/{{repo}}"),
        json!({
            "get": operation("A repository with its secret names and webhook URLs", vec![project_id(), number("repo")], None, "200", Some(repo.clone())),
            "patch": operation("Rotate or remove the webhook secret, or change polling (a field left out stays, `null` removes it)", vec![project_id(), number("repo")], Some(schema::<RepoChange>(g)), "200", Some(repo)),
            "delete": conflicting(operation("Remove a repository with its secrets, runs, logs, mirror and caches (its releases stay)", vec![project_id(), number("repo")], None, "204", None), "One of its runs has not finished"),
        }),
    );
    add(
        format!("{base}/repos/{{repo}}/secrets/{{name}}"),
        json!({
            "put": operation("Set a secret (masked in logs, never shown)", vec![project_id(), number("repo"), text("name")], Some(object(&[("value", "string")])), "204", None),
            "delete": operation("Remove a secret", vec![project_id(), number("repo"), text("name")], None, "204", None),
        }),
    );
    add(
        format!("{base}/repos/{{repo}}/cache"),
        json!({
            "delete": operation("Remove the repository's cache volumes", vec![project_id(), number("repo")], None, "204", None),
        }),
    );
    add(
        format!("{base}/repos/{{repo}}/runs"),
        json!({
            "post": operation("Run a branch, tag or commit", vec![project_id(), number("repo")], Some(schema::<Trigger>(g)), "201", Some(run.clone())),
            "get": operation("Runs, newest first", vec![project_id(), number("repo"), limit(200), query("before", "integer")], None, "200", Some(list("runs", run.clone()))),
        }),
    );
    add(
        format!("{base}/runs/{{run}}"),
        json!({
            "get": operation("A run with its steps", vec![project_id(), number("run")], None, "200", Some(run.clone())),
        }),
    );
    let log_params = vec![
        project_id(),
        number("run"),
        query("step", "string"),
        query("after", "integer"),
        limit(100_000),
        query("follow", "boolean"),
    ];
    add(
        format!("{base}/runs/{{run}}/logs"),
        json!({
            "get": operation("Stored log lines, or with follow=true Server-Sent Events (line events, then end)", log_params, None, "200", Some(list("lines", schema::<LogLine>(g)))),
        }),
    );
    add(
        format!("{base}/runs/{{run}}/cancel"),
        json!({
            "post": conflicting(operation("Cancel a pending or running run", vec![project_id(), number("run")], None, "202", Some(run.clone())), "The run has finished"),
        }),
    );
    add(
        format!("{base}/runs/{{run}}/restart"),
        json!({
            "post": conflicting(operation("Run the commit again from a step", vec![project_id(), number("run")], Some(object(&[("from", "string")])), "201", Some(run)), "The run has not finished, or a step the restart would reuse did not pass"),
        }),
    );
    let release_params = vec![project_id(), query("service", "string"), query("environment", "string"), limit(500)];
    add(
        format!("{base}/releases"),
        json!({
            "get": operation("Releases, newest first", release_params, None, "200", Some(list("releases", release.clone()))),
        }),
    );
    add(
        format!("{base}/releases/{{release}}"),
        json!({
            "get": operation("A release", vec![project_id(), number("release")], None, "200", Some(release.clone())),
        }),
    );
    let service = vec![project_id(), text("service"), text("env")];
    let rollback_body = schema::<crate::pipeline_api::RollbackBody>(g);
    let mut rollback_op = conflicting(
        operation(
            "Deploy the previous healthy release, or the one named, again",
            service.clone(),
            Some(rollback_body),
            "201",
            Some(release.clone()),
        ),
        "No earlier healthy release to roll back to, the one named never ran healthy, a deploy of the service in \
         progress, or the rollback's deploy failed (`error.reason` says which)",
    );
    rollback_op["requestBody"]["required"] = json!(false);
    rollback_op["responses"]["200"] =
        answer("The live release already runs the release named: nothing started; the live release", release.clone());
    rollback_op["responses"]["202"] =
        answer("Its replicas are still turning healthy: the release, `deploying`; poll it", release);
    rollback_op["responses"]["404"] =
        answer("No release of that service in that environment", json!({"$ref": "#/components/schemas/Error"}));
    add(
        format!("{base}/services/{{service}}/environments/{{env}}/rollback"),
        json!({
            "post": rollback_op,
        }),
    );
    add(
        format!("{base}/services/{{service}}/environments/{{env}}"),
        json!({
            "delete": conflicting(operation("Remove a service's replicas in an environment and retire its live release", service, None, "200", Some(object(&[("removed_containers", "integer")]))), "A deploy of the service to that environment is in progress"),
        }),
    );
    let error = json!({"$ref": "#/components/schemas/Error"});
    let mut step = object(&[("name", "string")]);
    step["properties"]["depends_on"] = json!({"type": "array", "items": {"type": "string"}});
    add(
        "/api/v1/pipeline/lint".into(),
        json!({"post": {
            "summary": "Check a pipeline file (`leanloop.yml`, at most 32 KB) sent as the body; no key",
            "security": [],
            "requestBody": {"required": true, "content": {"application/yaml": {"schema": {"type": "string"}}}},
            "responses": {
                "200": answer("The file is valid: its steps in run order", json!({"type": "object", "properties": {
                    "valid": {"type": "boolean"}, "steps": {"type": "array", "items": step}}})),
                "400": answer("The file is invalid (or over 32 KB, or not UTF-8); the message names the line and the key at fault", error.clone()),
            },
        }}),
    );
    let signature = |header: &str, example: &str| {
        json!({"name": header, "in": "header", "schema": {"type": "string"},
               "description": format!("HMAC-SHA256 of the body with the repository's `webhook_secret`, as `{example}`")})
    };
    add(
        "/hooks/{repo}/{provider}".into(),
        json!({"post": {
            "summary": "A push webhook from GitHub or Gitea: a push to a branch or tag starts a run (a ping, or a deleted branch, starts nothing)",
            "security": [],
            "parameters": [
                number("repo"),
                {"name": "provider", "in": "path", "required": true, "schema": {"type": "string", "enum": ["github", "gitea"]}},
                {"name": "X-GitHub-Event", "in": "header", "schema": {"type": "string"}},
                {"name": "X-Gitea-Event", "in": "header", "schema": {"type": "string"}},
                signature("X-Hub-Signature-256", "sha256=<hex>"),
                signature("X-Gitea-Signature", "<hex>"),
            ],
            "requestBody": {"required": true, "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"payload": {"type": "string", "description": "The push's JSON (GitHub's default content type)"}}}},
            }},
            "responses": {
                "201": answer("A run was started", run_schema.clone()),
                "200": answer(
                    "Nothing to run: a ping, a deleted branch, or `skipped` says why (a commit already run for this push, given as `run`; a branch moved on since; no step's `when` matches)",
                    json!({"type": "object", "properties": {"run": {"nullable": true}, "skipped": {"type": "string"}}}),
                ),
                "202": answer(
                    "The source is still being fetched after 8 s: the run starts when the fetch ends",
                    json!({"type": "object", "properties": {"run": {"nullable": true}, "queued": {"type": "string"}}}),
                ),
                "400": answer("The payload is not a push the pipeline can read", error.clone()),
                "401": answer("A missing or wrong signature, or no such repository", error.clone()),
                "404": answer("No such provider, or the pipeline is off", error),
            },
        }}),
    );
}
