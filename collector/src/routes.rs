//! The ingest HTTP surface: Segment, PostHog and feedback endpoints (and
//! PostHog's flag calls, `flags.rs`) with CORS.

use crate::body::{read_limited, unpack, without_bom, Held, Packing};
use crate::enrich::RequestFacts;
use crate::wire::{self, feedback, posthog, segment, Decoded, Incoming};
use crate::{Collector, IngestError};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use leanloop_control::KeyKind;
use leanloop_core::{ApiError, Event, EventKind, UserUpdate};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// Bodies above this are decoded on the blocking pool, not on a runtime worker.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

/// Bodies decoded on the blocking pool at once; more wait, holding only
/// what they were sent. Each may grow to several times its share of the
/// body budget while decoded (inflated text, copies, parsed values): 200
/// gzip bodies of 5 KB, each inflating to 5 MB, took the server past 1 GB
/// when all were decoded at once.
pub(crate) const MAX_OFFLOADED_DECODES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Segment(segment::Call),
    PostHog,
    /// PostHog's v1 capture, answered event by event.
    PostHogV1,
    Feedback,
}

impl Endpoint {
    fn source(self) -> &'static str {
        match self {
            Endpoint::Segment(_) => "segment",
            Endpoint::PostHog | Endpoint::PostHogV1 => "posthog",
            Endpoint::Feedback => "feedback",
        }
    }

    /// Whether the endpoint takes many events, so partial success is possible.
    fn is_batch(self) -> bool {
        matches!(self, Endpoint::Segment(segment::Call::Batch) | Endpoint::PostHog | Endpoint::PostHogV1)
    }
}

/// Segment's calls, each taken at the paths [`segment_call_paths`] gives.
const SEGMENT_CALLS: [(&str, EventKind); 6] = [
    ("track", EventKind::Track),
    ("page", EventKind::Page),
    ("screen", EventKind::Screen),
    ("identify", EventKind::Identify),
    ("group", EventKind::Group),
    ("alias", EventKind::Alias),
];

/// Where Segment's call `name` (`track`, `page`, ...) is taken: `/v1/{name}`,
/// and the short path Segment's browser SDKs (analytics.js, Analytics Next)
/// post to, the name's first letter (`/v1/t` for a track).
pub fn segment_call_paths(name: &str) -> [String; 2] {
    [format!("/v1/{name}"), format!("/v1/{}", &name[..1])]
}

/// Where Segment batches are taken; `/v1/b` is the browser SDKs' short path.
pub const SEGMENT_BATCH_PATHS: [&str; 3] = ["/v1/batch", "/v1/import", "/v1/b"];

pub fn router(collector: Arc<Collector>) -> Router {
    let mut routes = Router::new();
    for (name, kind) in SEGMENT_CALLS {
        for path in segment_call_paths(name) {
            routes = routes.route(&path, route(Endpoint::Segment(segment::Call::Single(kind))));
        }
    }
    for path in SEGMENT_BATCH_PATHS {
        routes = routes.route(path, route(Endpoint::Segment(segment::Call::Batch)));
    }
    routes
        .route("/v1/feedback", route(Endpoint::Feedback))
        .route("/capture", route(Endpoint::PostHog))
        .route("/capture/", route(Endpoint::PostHog))
        .route("/e", route(Endpoint::PostHog))
        .route("/e/", route(Endpoint::PostHog))
        .route("/batch", route(Endpoint::PostHog))
        .route("/batch/", route(Endpoint::PostHog))
        .route("/i/v0/e", route(Endpoint::PostHog))
        .route("/i/v0/e/", route(Endpoint::PostHog))
        // posthog-python's `capture_ai` (LLM analytics): the batch format.
        .route("/i/v0/ai/batch", route(Endpoint::PostHog))
        .route("/i/v0/ai/batch/", route(Endpoint::PostHog))
        .route("/i/v1/analytics/events", route(Endpoint::PostHogV1))
        .route("/i/v1/analytics/events/", route(Endpoint::PostHogV1))
        .route("/flags", post(crate::flags::answer))
        .route("/flags/", post(crate::flags::answer))
        .route("/decide", post(crate::flags::answer))
        .route("/decide/", post(crate::flags::answer))
        .route("/flags/definitions", get(crate::flags::definitions))
        .route("/api/feature_flag/local_evaluation", get(crate::flags::definitions))
        .route("/api/feature_flag/local_evaluation/", get(crate::flags::definitions))
        .layer(cors())
        .merge(crate::sdk::router())
        .merge(crate::remote_config::router())
        .with_state(collector)
}

fn route(endpoint: Endpoint) -> axum::routing::MethodRouter<Arc<Collector>> {
    post(
        // The request whole, not its headers and query as extractors: those
        // copy them.
        move |State(c): State<Arc<Collector>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request| async move {
            let (parts, body) = request.into_parts();
            match ingest(c, endpoint, peer, parts.uri.query(), parts.headers, body).await {
                Ok(response) => response,
                Err(err) => {
                    metrics::counter!("leanloop_ingest_requests_rejected_total", "reason" => err.reason()).increment(1);
                    // Refused for want of room, maybe before its body was
                    // read: the connection closes after this answer.
                    let unread = matches!(err, IngestError::BodiesBusy);
                    let mut response = ApiError::from(err).into_response();
                    if unread {
                        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                    }
                    response
                }
            }
        },
    )
}

/// Browsers post from any origin, with credentials in the body or a header.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(std::time::Duration::from_secs(86_400))
        // Browsers hide response headers from scripts unless listed: the SDK
        // honours Retry-After when backing off.
        .expose_headers([header::RETRY_AFTER])
}

#[derive(Serialize)]
struct Rejected {
    index: usize,
    field: Option<String>,
    reason: String,
}

async fn ingest(
    c: Arc<Collector>,
    endpoint: Endpoint,
    peer: SocketAddr,
    query: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    let header_key = header_key(&headers);
    // A key in the header is checked before the body is read.
    if let Some(key) = &header_key {
        c.project_for(key)?;
    }
    let packing = Packing::detect(&headers, compression(query).as_deref())?;
    let limit = c.config.max_body_bytes;
    // Held until the events are logged: the body and what it decodes to.
    let held = read_limited(&headers, body, limit, &c.bodies).await?;
    let raw = held.bytes.clone();
    let packing = packing.sniffed(&raw);
    let sent_at = match endpoint {
        Endpoint::PostHogV1 => header_time(&headers, "posthog-request-timestamp"),
        _ => query_sent_at(query),
    };
    let facts = request_facts(&c, &headers, peer, sent_at);

    let offload_len = raw.len();
    let work = {
        let c = c.clone();
        move || process(&c, endpoint, packing, raw, header_key, facts)
    };
    // Large or compressed bodies take milliseconds to decode: keep them off the runtime.
    let offload = offload_len > INLINE_DECODE_BYTES || packing != Packing::Plain;
    let Accepted { events, users, rejected, total, grown, sent_ids } = if offload {
        // Owned by the task: a request dropped meanwhile (its deadline
        // passed, its stream reset) leaves the decode holding its place.
        let decoder = c.decoders.clone().acquire_owned().await.map_err(|_| IngestError::ShuttingDown)?;
        let work = move || {
            let _decoder = decoder;
            work()
        };
        tokio::task::spawn_blocking(work).await.map_err(|_| IngestError::ShuttingDown)??
    } else {
        work()?
    };
    let accepted = events.len();
    c.queue.push(events, users).await?;
    drop((held, grown));
    metrics::counter!("leanloop_ingest_events_accepted_total", "source" => endpoint.source())
        .increment(accepted as u64);
    Ok(answer(endpoint, accepted, rejected, total, &sent_ids))
}

/// One request's events, ready to store, and what was refused.
struct Accepted {
    events: Vec<Event>,
    users: Vec<UserUpdate>,
    rejected: Vec<(usize, IngestError)>,
    /// Events the request carried.
    total: usize,
    /// The budget taken for what the body grew into while decoded.
    grown: Held,
    /// PostHog v1: the `uuid` of each event sent, by position, when some
    /// were refused (the answer names them so).
    sent_ids: Vec<Option<String>>,
}

/// Decodes, authorises and enriches one request's events.
fn process(
    c: &Collector,
    endpoint: Endpoint,
    packing: Packing,
    raw: bytes::Bytes,
    header_key: Option<String>,
    mut facts: RequestFacts,
) -> Result<Accepted, IngestError> {
    let limits = &c.config;
    let mut grown = Held::default();
    let json = unpack(raw, packing, limits.max_body_bytes, &c.bodies, &mut grown)?;
    let text = std::str::from_utf8(without_bom(&json)).map_err(|_| IngestError::BadJson("body is not UTF-8".into()))?;
    let text = wire::well_formed(text);
    // A batch's shared context copied into each event counts as body: it
    // is held in memory as one until the events are logged.
    let mut copies = |bytes: usize| {
        let size = text.len().saturating_add(bytes);
        if size > limits.max_body_bytes {
            return Err(IngestError::BatchExpandsTooLarge { size, limit: limits.max_body_bytes });
        }
        c.bodies.take(&mut grown, bytes)
    };
    let decoded: Decoded = match endpoint {
        Endpoint::Segment(call) => {
            segment::decode(&text, call, limits.max_event_bytes, limits.max_batch_events, &mut copies)?
        }
        Endpoint::PostHog | Endpoint::PostHogV1 => {
            let keyed = header_key.is_some();
            let sdk = posthog::Sdk { name: facts.library.as_deref(), version: facts.library_version.as_deref() };
            let (sent_at, max_event, max_batch) =
                (facts.request_sent_at, limits.max_event_bytes, limits.max_batch_events);
            posthog::decode_sent_by(&text, keyed, sent_at, sdk, max_event, max_batch)?
        }
        Endpoint::Feedback => feedback::decode(&text, limits.max_event_bytes)?,
    };
    let key = header_key.or(decoded.key).ok_or(IngestError::MissingKey)?;
    let project = c.project_for(&key)?;
    facts.project_id = project.id;
    facts.store_full_ip = project.store_full_ip;

    let total = decoded.items.len();
    let mut events = Vec::with_capacity(total);
    let mut users = Vec::new();
    let mut rejected: Vec<(usize, IngestError)> = Vec::new();
    for (index, item) in decoded.items.into_iter().enumerate() {
        match item
            .and_then(|incoming| c.same_project(incoming, &key, project.id, endpoint))
            .and_then(|i| c.enricher.finish(i, &facts))
        {
            Ok((event, update)) => {
                events.push(event);
                users.extend(update);
            }
            // The key store failing is the server's fault, not the event's:
            // the whole request fails, and clients retry it.
            Err(err @ IngestError::Control(_)) => return Err(err),
            Err(err) => {
                metrics::counter!("leanloop_ingest_events_rejected_total", "reason" => err.reason()).increment(1);
                rejected.push((index, err));
            }
        }
    }
    c.enricher.assign_sessions(&mut events);
    if !endpoint.is_batch() {
        if let Some((_, err)) = rejected.pop() {
            return Err(err);
        }
    }
    let sent_ids = match endpoint {
        Endpoint::PostHogV1 if !rejected.is_empty() => posthog::batch_uuids(&text),
        _ => Vec::new(),
    };
    Ok(Accepted { events, users, rejected, total, grown, sent_ids })
}

/// What a stored request is answered: Segment's `success` or PostHog's
/// `status`, the events accepted and those refused, and an error when every
/// one was refused.
#[derive(Serialize)]
struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u8>,
    accepted: usize,
    rejected: Vec<Rejected>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<AllRefused>,
    /// The error's code and message repeated at the top, as every refusal
    /// has them: Segment's clients (rudder-sdk-python) read them there, and
    /// without them take the 400 for one to retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// PostHog v1: each refused event's verdict by its `uuid`; an event
    /// not listed was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<BTreeMap<String, Verdict>>,
}

#[derive(Serialize)]
struct Verdict {
    result: &'static str,
    details: String,
}

#[derive(Serialize)]
struct AllRefused {
    code: &'static str,
    message: String,
    field: Option<String>,
}

/// The answer for a stored request: 200 with what was accepted and refused,
/// or 400 when every event was refused (PostHog v1 answers 200 and drops
/// each, as its protocol has it). `sent_ids` name PostHog v1's events.
fn answer(
    endpoint: Endpoint,
    accepted: usize,
    rejected: Vec<(usize, IngestError)>,
    total: usize,
    sent_ids: &[Option<String>],
) -> Response {
    let rejected: Vec<Rejected> = rejected
        .into_iter()
        .map(|(index, err)| Rejected {
            index,
            field: match leanloop_core::Classify::class(&err) {
                leanloop_core::ErrorClass::BadRequest { field } | leanloop_core::ErrorClass::TooLarge { field } => {
                    field
                }
                _ => None,
            },
            reason: err.to_string(),
        })
        .collect();
    let all_refused = accepted == 0 && !rejected.is_empty();
    let error = rejected.first().filter(|_| all_refused).map(|first| AllRefused {
        code: "bad_request",
        message: match total {
            1 => first.reason.clone(),
            _ => format!("all {total} events were rejected; see `rejected` (the first: {})", first.reason),
        },
        field: first.field.clone(),
    });
    let results = (endpoint == Endpoint::PostHogV1).then(|| {
        let id = |index: usize| sent_ids.get(index).cloned().flatten();
        let drop = |r: &Rejected| Verdict { result: "drop", details: r.reason.clone() };
        rejected.iter().filter_map(|r| Some((id(r.index)?, drop(r)))).collect()
    });
    let (success, status) = match endpoint {
        Endpoint::PostHog => (None, Some(u8::from(!all_refused))),
        Endpoint::PostHogV1 => (None, None),
        _ => (Some(!all_refused), None),
    };
    let (code, message) = error.as_ref().map(|e| (e.code, e.message.clone())).unzip();
    let body = Json(Answer { success, status, accepted, rejected, error, code, message, results });
    if all_refused && endpoint != Endpoint::PostHogV1 {
        // Refused whole, like a request refused before its events were read.
        metrics::counter!("leanloop_ingest_requests_rejected_total", "reason" => "every_event_refused").increment(1);
        return (StatusCode::BAD_REQUEST, body).into_response();
    }
    body.into_response()
}

/// PostHog's `compression` query parameter.
pub(crate) fn compression(query: Option<&str>) -> Option<String> {
    query_param(query, "compression")
}

/// When posthog-js sent the request, in epoch ms: its `_` query parameter,
/// which PostHog reads as `sent_at` when the body has none. Anything but an
/// integer is a cache-buster and ignored.
fn query_sent_at(query: Option<&str>) -> Option<i64> {
    query_param(query, "_")?.trim().parse().ok()
}

pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A write key sent as the HTTP Basic user name (Segment) or a Bearer token.
/// A Bearer token not shaped like a Leanloop key (`ll?_…`) is someone
/// else's credential and no key: analytics-python with OAuth sends its
/// access token so, the write key in the body beside it, and PostHog's
/// SDKs their personal API key.
pub(crate) fn header_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let key = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':').map(|(user, _)| user.to_owned()).unwrap_or(text)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let token = rest.trim();
        let ours = token.len() > 4 && token.starts_with("ll") && token.as_bytes()[3] == b'_';
        if !ours {
            return None;
        }
        token.to_owned()
    } else {
        return None;
    };
    (!key.is_empty()).then_some(key)
}

fn request_facts(c: &Collector, headers: &HeaderMap, peer: SocketAddr, request_sent_at: Option<i64>) -> RequestFacts {
    let forwarded = c
        .config
        .trust_forwarded_for
        .then(|| headers.get("x-forwarded-for")?.to_str().ok()?.split(',').next()?.trim().parse::<IpAddr>().ok())
        .flatten();
    let country = c.config.country_header.as_deref().and_then(|name| {
        let code = headers.get(name)?.to_str().ok()?.trim().to_ascii_uppercase();
        (code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())).then_some(code)
    });
    // `posthog-python/7.1.0`: the name, as `$lib` gives it, and the version.
    let sdk = headers.get("posthog-sdk-info").and_then(|v| v.to_str().ok()).map_or((None, None), |info| {
        let (name, version) = info.split_once('/').unwrap_or((info, ""));
        let part = |p: &str| Some(p.trim().to_owned()).filter(|p| !p.is_empty());
        (part(name), part(version))
    });
    RequestFacts {
        project_id: 0,
        store_full_ip: false,
        received_at_ms: chrono::Utc::now().timestamp_millis(),
        client_ip: Some(forwarded.unwrap_or(peer.ip())),
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
        country,
        request_sent_at,
        library: sdk.0,
        library_version: sdk.1,
    }
}

/// An RFC 3339 time in a request header, in epoch ms.
fn header_time(headers: &HeaderMap, name: &str) -> Option<i64> {
    let text = headers.get(name)?.to_str().ok()?;
    Some(chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?.timestamp_millis())
}

impl Collector {
    /// `incoming`, unless it carries a key of its own that is another
    /// project's write key, or a read or deploy key: a request is one
    /// project's, and such an event is refused rather than stored under the
    /// request's key, as PostHog refuses a batch of mixed tokens. A key
    /// that is no key at all is ignored: the request's key decides.
    fn same_project(
        &self,
        incoming: Incoming,
        key: &str,
        project_id: i64,
        endpoint: Endpoint,
    ) -> Result<Incoming, IngestError> {
        let Some(own) = incoming.key.as_deref().filter(|own| *own != key) else {
            return Ok(incoming);
        };
        let refuse = |why: &str| {
            let field = if endpoint.source() == "posthog" { "api_key" } else { "writeKey" };
            Err(IngestError::field(field, format!("the event carries {why}; send each project's events on their own")))
        };
        match self.keys.lookup(own)? {
            Some((_, KeyKind::Read | KeyKind::Deploy)) => refuse("a secret key, not a write key"),
            Some((project, KeyKind::Write)) if project.id != project_id => {
                refuse("another project's write key than its request")
            }
            _ => Ok(incoming),
        }
    }

    /// The project of a write key; secret keys and unknown keys are refused.
    pub(crate) fn project_for(&self, key: &str) -> Result<Arc<leanloop_control::Project>, IngestError> {
        match self.keys.lookup(key)? {
            Some((project, KeyKind::Write)) => Ok(project),
            Some((_, kind @ (KeyKind::Read | KeyKind::Deploy))) => Err(IngestError::SecretKeyUsed(kind.name())),
            None => Err(IngestError::UnknownKey),
        }
    }
}
