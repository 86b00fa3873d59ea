//! The ingest endpoints in the OpenAPI document: Segment's tracking API,
//! PostHog's capture and flag calls, and Leanloop's feedback call. These are
//! other vendors' wire formats, decoded by hand-written types in
//! `leanloop-collector`, so their schemas are written here: they list what
//! Leanloop reads (any other field is accepted and ignored), the shapes each
//! field may take and which fields each call requires. Every request they
//! allow is accepted (the API fuzz test checks this). The server takes a
//! little more than they say, as SDKs send it: times in forms RFC 3339
//! does not name, such as `2024-05-01 10:00:00`.

use serde_json::{json, Map, Value};

/// What the server trims from ids and names (Unicode's `White_Space`),
/// spelled out so that every regex dialect reads the class alike: text of
/// only these counts as absent.
const WHITESPACE: &str = "\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// Any JSON value: read when it is a string or a number, ignored otherwise.
fn text() -> Value {
    json!({"description": "Read when a string or a number; any other value is ignored"})
}

fn described(mut schema: Value, description: &str) -> Value {
    schema["description"] = json!(description);
    schema
}

fn object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

/// `schema`, or `null` for none.
fn or_null(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

/// A JSON object (or `null`, meaning none) kept whole: properties, traits.
fn free_object() -> Value {
    json!({"type": "object", "nullable": true})
}

/// Whole numbers an id may be: 64 bits, signed or not (larger ones arrive
/// rounded, and two ids could merge).
fn whole_id() -> Value {
    json!({"type": "integer", "minimum": i64::MIN, "maximum": u64::MAX})
}

/// An id that may be absent: a string or a whole number.
fn id() -> Value {
    json!({"anyOf": [{"type": "string"}, whole_id()], "nullable": true})
}

/// A person's id that may be absent. The server takes up to 1,024 bytes of
/// UTF-8; the schema says 256 characters, which always fit in them.
fn person_id() -> Value {
    let most = leanloop_collector::wire::MAX_PERSON_ID_BYTES;
    let text = json!({"type": "string", "maxLength": most / 4});
    described(
        json!({"anyOf": [text, whole_id()], "nullable": true}),
        &format!("A person: a string (at most {most} bytes of UTF-8) or a whole number"),
    )
}

/// An id that must be there: text that is not blank, or a whole number.
fn required_id() -> Value {
    json!({"anyOf": [not_blank(), whole_id()]})
}

fn not_blank() -> Value {
    json!({"type": "string", "pattern": format!("[^{WHITESPACE}]")})
}

/// A time: RFC 3339 (or blank, meaning none), or epoch milliseconds.
fn time() -> Value {
    json!({"anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "string", "pattern": format!("^[{WHITESPACE}]*$")},
        // The server takes under 1e15 ms either way; a bound a float's last
        // bit cannot blur keeps the documented range inside it.
        {"type": "number", "minimum": -999_999_999_999_999i64, "maximum": 999_999_999_999_999i64},
    ], "nullable": true, "description": "RFC 3339, or epoch milliseconds"})
}

/// An object, or `null` or an empty array (PHP's empty map) for none.
fn part_of_context(properties: Value) -> Value {
    json!({"anyOf": [object(properties), {"type": "array", "maxItems": 0}], "nullable": true})
}

/// What every call can carry in `context`.
fn context() -> Value {
    let part =
        |fields: &[&str]| part_of_context(Value::Object(fields.iter().map(|f| (f.to_string(), text())).collect()));
    let mut context = part_of_context(json!({
        "ip": text(),
        "userAgent": text(),
        "release": described(text(), "The release the event happened on; else `app.version`"),
        "session_id": text(),
        "sessionId": described(text(), "The same as `session_id`: send one of the two"),
        "traits": described(free_object(), "The user's traits; an identify's own `traits` win over these"),
        "page": part(&["url", "path", "referrer"]),
        "campaign": part(&["name", "source", "medium", "term", "content"]),
        "app": part(&["version"]),
        "library": part(&["name"]),
    }));
    context["anyOf"][0]["not"] = json!({"required": ["session_id", "sessionId"]});
    context
}

/// A user id or an anonymous id that is not blank.
fn a_user_or_anonymous_id() -> Value {
    json!([
        {"required": ["userId"], "properties": {"userId": required_id()}},
        {"required": ["anonymousId"], "properties": {"anonymousId": required_id()}},
    ])
}

/// The Segment calls: type, summary, and the fields each requires (not
/// blank) besides a user or an anonymous id.
const SEGMENT_CALLS: [(&str, &str, &[&str]); 6] = [
    ("track", "Segment: an event", &["event"]),
    ("page", "Segment: a page view (stored as `$pageview`)", &[]),
    ("screen", "Segment: a screen view (stored as `$screen`)", &[]),
    ("identify", "Segment: who the user is, with traits", &[]),
    ("group", "Segment: the user's group, with its traits", &["groupId"]),
    ("alias", "Segment: link an earlier id (`previousId`) to the user (`userId`)", &["previousId", "userId"]),
];

/// One Segment message of type `kind`: sent to its own endpoint, where
/// `type` is ignored, or in a batch, where `type` says what it is.
fn segment_message(kind: &str, required: &[&str], in_batch: bool) -> Value {
    let own_type = match in_batch {
        false => json!({"type": "string", "nullable": true, "description": "Ignored: the endpoint says the type"}),
        true => json!({"type": "string", "enum": [kind], "description": "Case is ignored"}),
    };
    // Identify and group read their traits, which must then be an object.
    let traits = match kind {
        "identify" | "group" => free_object(),
        _ => described(json!({}), "Not read on this call"),
    };
    let mut message = object(json!({
        "type": own_type,
        "userId": described(person_id(), "A string (at most 1,024 bytes of UTF-8) or a whole number; this or `anonymousId` is required"),
        "anonymousId": person_id(),
        "messageId": described(id(), "The event's uuid (a UUID, or any text mapped to a stable one); a retry with the same id is stored once"),
        "event": described(id(), "A track's name (required for tracks)"),
        "name": described(text(), "A page's or screen's own name"),
        "properties": free_object(),
        "traits": traits,
        "context": context(),
        "timestamp": time(),
        "originalTimestamp": time(),
        "sentAt": described(time(), "When the client sent it, for clock-skew correction"),
        "groupId": id(),
        "previousId": person_id(),
        "writeKey": described(text(), "The write key, when not sent as the Basic user name"),
    }));
    let mut all_of = vec![json!({"anyOf": a_user_or_anonymous_id()})];
    all_of.extend(required.iter().map(|field| json!({"properties": {*field: required_id()}})));
    let mut names: Vec<&str> = required.to_vec();
    if in_batch {
        names.push("type");
    }
    // OpenAPI 3.0 takes `required` only with at least one name.
    if !names.is_empty() {
        message["required"] = json!(names);
    }
    message["allOf"] = json!(all_of);
    message
}

fn posthog_event() -> Value {
    let mut event = object(json!({
        "event": required_id(),
        "distinct_id": described(person_id(), "The person (at most 1,024 bytes of UTF-8); else `properties.distinct_id`"),
        "api_key": described(text(), "The write key (or `token`)"),
        "token": text(),
        "uuid": id(),
        "timestamp": time(),
        "offset": {"type": "number", "nullable": true, "description": "How many ms before sending the event happened"},
        "properties": described(
            or_null(object(json!({
                "distinct_id": person_id(), "$anon_distinct_id": person_id(), "$device_id": person_id(),
                "alias": described(person_id(), "The id `$create_alias` links (and `$merge_dangerously` merges)"),
                "$set": free_object(), "$set_once": free_object(),
            }))),
            "`$current_url`, `$referrer`, `$set`, `$set_once`, `$anon_distinct_id`, `$is_identified`, `$session_id`, `$release`/`$app_version`, `$ignore_sent_at`, `$process_person_profile` and the rest",
        ),
        "$set": free_object(),
        "$set_once": free_object(),
        "sent_at": described(time(), "When the client sent it, for clock-skew correction (read on a body of one event); `sentAt` is the same: send one of the two"),
        "sentAt": time(),
    }));
    event["required"] = json!(["event"]);
    // A body with `batch` is read as a batch, whatever else it holds.
    event["not"] = json!({"anyOf": [{"required": ["batch"]}, {"required": ["sent_at", "sentAt"]}]});
    // A person: `distinct_id`, else `properties.distinct_id`. (The alias
    // event, `$create_alias`, also needs `properties.alias`.)
    event["anyOf"] = json!([
        {"required": ["distinct_id"], "properties": {"distinct_id": required_id()}},
        {"required": ["properties"], "properties": {"properties": {"type": "object", "required": ["distinct_id"],
            "properties": {"distinct_id": required_id()}}}},
    ]);
    event
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
        "413": with("An event over the event limit, a body over the body limit (also after gunzip), too many events in a batch, or a batch whose shared `context`, copied into each event, takes it past the body limit"),
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
    for (kind, summary, required) in SEGMENT_CALLS {
        let body = segment_message(kind, required, false);
        for path in leanloop_collector::segment_call_paths(kind) {
            paths.insert(path, operation(summary, body.clone(), STORED, segment_answer.clone()));
        }
    }
    let any_message: Vec<Value> =
        SEGMENT_CALLS.iter().map(|(kind, _, required)| segment_message(kind, required, true)).collect();
    let batch = json!({"type": "object", "required": ["batch"], "properties": {
        "batch": {"type": "array", "maxItems": 1000, "items": {"anyOf": any_message}},
        "context": context(),
        "sentAt": time(),
        "writeKey": text(),
    }});
    for path in leanloop_collector::SEGMENT_BATCH_PATHS {
        paths.insert(
            path.into(),
            operation("Segment: up to 1,000 messages of any type", batch.clone(), STORED, segment_answer.clone()),
        );
    }

    let mut feedback = object(json!({
        "userId": person_id(), "anonymousId": person_id(),
        "score": {"type": "integer", "minimum": 0, "maximum": 10, "nullable": true},
        "message": {"type": "string", "maxLength": leanloop_collector::wire::feedback::MAX_MESSAGE_CHARS, "nullable": true,
            "description": "At most this many characters, within the event's limit of 32 KB as sent (a character escaped as `\\uXXXX` takes 6 bytes of it, an emoji 12)"},
        "category": text(), "page": text(), "release": text(), "sessionId": text(), "messageId": id(),
        "timestamp": time(), "sentAt": time(), "writeKey": text(), "context": described(json!({}), "Not read"),
    }));
    // Unknown fields are refused here, unlike on the other vendors' calls.
    feedback["additionalProperties"] = json!(false);
    feedback["allOf"] = json!([
        {"anyOf": a_user_or_anonymous_id()},
        {"anyOf": [
            {"required": ["score"], "properties": {"score": {"type": "integer"}}},
            {"required": ["message"], "properties": {"message": not_blank()}},
        ]},
    ]);
    paths.insert(
        "/v1/feedback".into(),
        operation("Feedback: a 0–10 score and/or a message (stored as `$feedback`)", feedback, STORED, segment_answer),
    );

    let posthog_answer =
        object(json!({"status": {"type": "integer"}, "accepted": {"type": "integer"}, "rejected": rejected()}));
    let posthog_batch = json!({"type": "object", "required": ["batch"], "properties": {
        "api_key": text(), "token": text(),
        "batch": {"type": "array", "maxItems": 1000, "items": posthog_event()},
        "sent_at": described(time(), "When the client sent the batch; `sentAt` is the same: send one of the two"),
        "sentAt": time(),
    }, "not": {"required": ["sent_at", "sentAt"]}});
    let any_shape =
        json!({"oneOf": [posthog_event(), posthog_batch.clone(), {"type": "array", "items": posthog_event()}]});
    paths.insert("/capture/".into(), operation("PostHog: one event", posthog_event(), STORED, posthog_answer.clone()));
    paths.insert(
        "/batch/".into(),
        operation("PostHog: a batch of events", posthog_batch.clone(), STORED, posthog_answer.clone()),
    );
    paths.insert(
        "/i/v0/ai/batch/".into(),
        operation(
            "PostHog: LLM analytics events (`capture_ai`), as a batch, held to the same limits",
            posthog_batch.clone(),
            STORED,
            posthog_answer.clone(),
        ),
    );
    paths.insert("/i/v1/analytics/events".into(), posthog_v1());
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
    settings(paths);
}

/// PostHog's v1 capture: a batch whose refused events come back by uuid
/// in a 200, not as a 400 for the whole.
fn posthog_v1() -> Value {
    let mut event = posthog_event();
    event["properties"]["session_id"] = described(text(), "The session (v0 sends `properties.$session_id`)");
    event["properties"]["options"] = described(
        object(json!({"disable_skew_correction": {"type": "boolean"}, "process_person_profile": {"type": "boolean"}})),
        "As the properties `$ignore_sent_at` and `$process_person_profile`; other options are not read",
    );
    let batch = json!({"type": "object", "required": ["batch"], "properties": {
        "batch": {"type": "array", "maxItems": 1000, "items": event},
        "created_at": described(time(), "When the batch was made; the send time when the request has no `PostHog-Request-Timestamp` header"),
        "historical_migration": {"type": "boolean"},
        "api_key": text(),
    }});
    let verdicts = json!({"type": "object", "additionalProperties": object(json!({
        "result": {"type": "string", "enum": ["drop"]}, "details": {"type": "string"},
    }))});
    let answer = object(json!({
        "accepted": {"type": "integer"}, "rejected": rejected(),
        "results": described(verdicts, "Each refused event by its `uuid`; an event not listed was stored"),
    }));
    operation(
        "PostHog v1 capture (`capture_mode=\"v1\"`): the key as a Bearer token; gzip or deflate",
        batch,
        STORED,
        answer,
    )
}

/// What SDKs fetch on load: Segment's CDN settings, PostHog's remote config
/// and flag definitions. Each answers for a write key, else 401.
fn settings(paths: &mut Map<String, Value>) {
    let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let refused = |description: &str| {
        let mut answer = error.clone();
        answer["description"] = json!(description);
        answer
    };
    let key_in_path = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    let get = |summary: &str, parameters: Value, content_type: &str, answer: Value| {
        json!({"get": {
            "summary": summary,
            "tags": ["ingest"],
            "security": [],
            "parameters": parameters,
            "responses": {
                "200": {"description": "The settings", "content": {content_type: {"schema": answer}}},
                "401": refused("No write key, an unknown one, or a secret key"),
            },
        }})
    };
    let mut segment = get(
        "Segment: Analytics Next's CDN settings, sending events to this host's `/v1`",
        json!([key_in_path("writeKey")]),
        "application/json",
        object(json!({"integrations": {"type": "object"}})),
    );
    segment["get"]["responses"]["400"] = refused("The `Host` header is not a plain host and port");
    paths.insert("/v1/projects/{writeKey}/settings".into(), segment);
    paths.insert(
        "/array/{token}/config".into(),
        get(
            "PostHog: posthog-js's remote config",
            json!([key_in_path("token")]),
            "application/json",
            object(json!({})),
        ),
    );
    paths.insert(
        "/array/{token}/config.js".into(),
        get(
            "PostHog: posthog-js's remote config as a script",
            json!([key_in_path("token")]),
            "text/javascript",
            json!({"type": "string"}),
        ),
    );
    let token = json!([{"name": "token", "in": "query", "required": true, "schema": {"type": "string"}}]);
    let definitions = object(json!({
        "flags": {"type": "array", "maxItems": 0}, "group_type_mapping": {"type": "object"}, "cohorts": {"type": "object"},
    }));
    for path in ["/flags/definitions", "/api/feature_flag/local_evaluation"] {
        paths.insert(
            path.into(),
            get(
                "PostHog: flag definitions for local evaluation (none)",
                token.clone(),
                "application/json",
                definitions.clone(),
            ),
        );
    }
}
