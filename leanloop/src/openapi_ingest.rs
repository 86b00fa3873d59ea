//! The ingest endpoints in the OpenAPI document: Segment's tracking API,
//! PostHog's capture and flag calls, and Leanloop's feedback call. These are
//! other vendors' wire formats, decoded by hand-written types in
//! `leanloop-collector`, so their schemas are written here: they list what
//! Leanloop reads (any other field is accepted and ignored) and which fields
//! each call requires.

use serde_json::{json, Map, Value};

fn text() -> Value {
    json!({"type": "string"})
}

fn object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

/// What every call can carry in `context`.
fn context() -> Value {
    object(json!({
        "ip": text(),
        "userAgent": text(),
        "release": {"type": "string", "description": "The release the event happened on; else `app.version`"},
        "session_id": text(),
        "traits": {"type": "object", "description": "The user's traits; an identify's own `traits` win over these"},
        "page": object(json!({"url": text(), "path": text(), "referrer": text()})),
        "campaign": object(json!({"name": text(), "source": text(), "medium": text(), "term": text(), "content": text()})),
        "app": object(json!({"version": text()})),
        "library": object(json!({"name": text()})),
    }))
}

/// One Segment message with its `required` fields (besides a user or an
/// anonymous id, one of which every message needs).
fn segment_message(kind: Option<&str>, required: &[&str]) -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    let kinds = ["track", "page", "screen", "identify", "group", "alias"];
    let mut message = object(json!({
        "type": {"type": "string", "enum": kind.map_or(kinds.to_vec(), |k| vec![k])},
        "userId": {"type": "string", "description": "A string or a number; this or `anonymousId` is required"},
        "anonymousId": text(),
        "messageId": {"type": "string", "description": "The event's uuid (a UUID, or any text mapped to a stable one); a retry with the same id is stored once"},
        "event": {"type": "string", "description": "A track's name (required for tracks)"},
        "name": {"type": "string", "description": "A page's or screen's own name"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": context(),
        "timestamp": time.clone(),
        "originalTimestamp": time.clone(),
        "sentAt": {"type": "string", "format": "date-time", "description": "When the client sent it, for clock-skew correction"},
        "groupId": text(),
        "previousId": text(),
        "writeKey": {"type": "string", "description": "The write key, when not sent as the Basic user name"},
    }));
    message["required"] = json!(required);
    message["anyOf"] = a_user_or_anonymous_id();
    message
}

fn a_user_or_anonymous_id() -> Value {
    json!([{"required": ["userId"]}, {"required": ["anonymousId"]}])
}

fn posthog_event() -> Value {
    object(json!({
        "event": text(),
        "distinct_id": {"type": "string", "description": "Or `properties.distinct_id`"},
        "api_key": {"type": "string", "description": "The write key (or `token`)"},
        "token": text(),
        "uuid": text(),
        "timestamp": {"type": "string", "format": "date-time"},
        "offset": {"type": "integer", "description": "How many ms before sending the event happened"},
        "properties": {"type": "object", "description": "`$current_url`, `$referrer`, `$set`, `$set_once`, `$anon_distinct_id`, `$is_identified`, `$session_id`, `$release`/`$app_version` and the rest"},
        "$set": {"type": "object"},
        "$set_once": {"type": "object"},
    }))
}

/// A stored request's answer, then the refusals.
const STORED: &str = "Stored durably (in the write-ahead log); `rejected` lists refused events of a batch by index, with the field and reason";

fn answers(done: &str, answer: Value) -> Value {
    let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let with = |description: &str| {
        let mut answer = error.clone();
        answer["description"] = json!(description);
        answer
    };
    json!({
        "200": {"description": done, "content": {"application/json": {"schema": answer}}},
        "400": with("Bad JSON, or every event refused; `error.field` names the field"),
        "401": with("No write key, an unknown one, or a secret key"),
        "413": with("An event over the event limit, a body over the body limit (also after gunzip), or too many events in a batch"),
        "503": with("The log is full or unavailable: retry after `Retry-After` seconds"),
    })
}

fn rejected() -> Value {
    json!({"type": "array", "items": object(json!({"index": {"type": "integer"}, "field": text(), "reason": text()}))})
}

fn operation(summary: &str, body: Value, done: &str, answer: Value) -> Value {
    json!({"post": {
        "summary": summary,
        "tags": ["ingest"],
        "security": [{"writeKey": []}],
        "requestBody": {"required": true, "content": {
            "application/json": {"schema": body},
            "text/plain": {"schema": body},
        }},
        "responses": answers(done, answer),
    }})
}

/// Adds the ingest paths.
pub fn paths(paths: &mut Map<String, Value>) {
    let segment_answer =
        object(json!({"success": {"type": "boolean"}, "accepted": {"type": "integer"}, "rejected": rejected()}));
    let segment = [
        ("track", "Segment: an event", vec!["event"]),
        ("page", "Segment: a page view (stored as `$pageview`)", vec![]),
        ("screen", "Segment: a screen view (stored as `$screen`)", vec![]),
        ("identify", "Segment: who the user is, with traits", vec![]),
        ("group", "Segment: the user's group, with its traits", vec!["groupId"]),
        ("alias", "Segment: link an earlier id to the user", vec!["previousId", "userId"]),
    ];
    for (kind, summary, required) in segment {
        let body = segment_message(Some(kind), &required);
        paths.insert(format!("/v1/{kind}"), operation(summary, body, STORED, segment_answer.clone()));
    }
    let batch = json!({"type": "object", "required": ["batch"], "properties": {
        "batch": {"type": "array", "maxItems": 1000, "items": segment_message(None, &["type"])},
        "context": context(),
        "sentAt": {"type": "string", "format": "date-time"},
        "writeKey": text(),
    }});
    for path in ["/v1/batch", "/v1/import"] {
        paths.insert(
            path.into(),
            operation("Segment: up to 1,000 messages of any type", batch.clone(), STORED, segment_answer.clone()),
        );
    }

    let feedback = json!({"type": "object", "properties": {
        "userId": text(), "anonymousId": text(),
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "message": text(), "category": text(), "page": text(), "release": text(), "messageId": text(),
        "timestamp": {"type": "string", "format": "date-time"},
    }, "anyOf": a_user_or_anonymous_id()});
    paths.insert(
        "/v1/feedback".into(),
        operation("Feedback: a 0–10 score and/or a message (stored as `$feedback`)", feedback, STORED, segment_answer),
    );

    let posthog_answer =
        object(json!({"status": {"type": "integer"}, "accepted": {"type": "integer"}, "rejected": rejected()}));
    let posthog_batch = json!({"type": "object", "required": ["batch"], "properties": {
        "api_key": text(), "token": text(),
        "batch": {"type": "array", "maxItems": 1000, "items": posthog_event()},
        "sent_at": {"type": "string", "format": "date-time"},
    }});
    let any_shape =
        json!({"oneOf": [posthog_event(), posthog_batch.clone(), {"type": "array", "items": posthog_event()}]});
    paths.insert("/capture/".into(), operation("PostHog: one event", posthog_event(), STORED, posthog_answer.clone()));
    paths.insert(
        "/batch/".into(),
        operation("PostHog: a batch of events", posthog_batch, STORED, posthog_answer.clone()),
    );
    for path in ["/e/", "/i/v0/e/"] {
        paths.insert(
            path.into(),
            operation(
                "PostHog: an event, a batch or an array of events (also gzip, `?compression=gzip-js`, or a base64 `data=` form)",
                any_shape.clone(),
                STORED,
                posthog_answer.clone(),
            ),
        );
    }
    let flags_request = object(json!({"token": text(), "api_key": text(), "distinct_id": text()}));
    let no_flags = object(json!({
        "flags": {"type": "object"}, "featureFlags": {"type": "object"}, "featureFlagPayloads": {"type": "object"},
        "errorsWhileComputingFlags": {"type": "boolean"},
    }));
    for path in ["/flags/", "/decide/"] {
        paths.insert(
            path.into(),
            operation(
                "PostHog: feature flags (Leanloop has none, and says so)",
                flags_request.clone(),
                "No flags; nothing is stored",
                no_flags.clone(),
            ),
        );
    }
}
