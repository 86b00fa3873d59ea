//! The insight API over HTTP: answers through the real server, 400s that
//! name the field for bad queries, and hostile property names and values
//! that are bound, never spliced — on DuckDB and on ClickHouse.

use leanloop_store::clickhouse::ClickHouseOptions;
use leanloop_tests::clickhouse::{self as ch, fresh_database, store_url};
use leanloop_tests::{message_id, TestServer};
use serde_json::{json, Value};

fn hostile_traffic() -> Value {
    let at = "2024-05-01T10:00:00.000Z";
    let mut batch = Vec::new();
    for (i, plan) in ["pro", "it's", "x'); DROP TABLE events; --", "pro"].iter().enumerate() {
        let ratio = [1e20, 0.5, 1.5e300, 7.0][i];
        // Text only one store's own cast would read as a number, but "8".
        let loose = ["8", " 8", "1_000", "NaN"][i];
        batch.push(json!({"type": "track", "event": "checkout", "userId": format!("u{i}"), "messageId": message_id(),
            "timestamp": at, "properties": {"plan": plan, "amount": 10 * (i + 1), "we'ird key\\": "v", "a/b~c": "slashed",
                "ratio": ratio, "loose": loose, "note": format!("line {i}\nbreak")}}));
    }
    batch.push(json!({"type": "page", "name": "Home", "anonymousId": "a1", "messageId": message_id(), "timestamp": at,
        "context": {"page": {"url": "https://x.example/", "path": "/"}}}));
    json!({"batch": batch})
}

async fn hostile_values_are_bound(s: &TestServer) {
    assert_eq!(s.post("/v1/batch", &hostile_traffic()).await.status(), 200);
    s.settle().await;
    let range = |series: Value, filters: Value| json!({"date_from": "2024-05-01", "date_to": "2024-05-01", "series": series, "filters": filters});
    let total = |answer: &Value| answer["series"][0]["aggregate"].clone();
    for (filters, expected) in [
        (json!([{"field": "properties.plan", "op": "eq", "value": "x'); DROP TABLE events; --"}]), 1),
        (json!([{"field": "properties.plan", "op": "eq", "value": "it's"}]), 1),
        (json!([{"field": "properties.plan", "op": "neq", "value": ["pro", "it's"]}]), 1),
        (json!([{"field": "properties.we'ird key\\", "op": "is_set"}]), 4),
        (json!([{"field": "properties.a/b~c", "op": "eq", "value": "slashed"}]), 4),
        (json!([{"field": "properties.plan", "op": "regex", "value": "^x'\\)"}]), 1),
        (json!([{"field": "properties.amount", "op": "gte", "value": 30}]), 2),
        // Both stores read these alike (ClickHouse 18.16 needs them rewritten).
        (json!([{"field": "properties.plan", "op": "regex", "value": "(?i)^PRO$"}]), 2),
        (json!([{"field": "properties.amount", "op": "gt", "value": 5e-324}]), 4),
        (json!([{"field": "properties.amount", "op": "lt", "value": 1.5e300}]), 4),
        // Each store writes these numbers' text its own way; they match by value.
        (json!([{"field": "properties.ratio", "op": "eq", "value": [1e20, 1.5e300]}]), 2),
        (json!([{"field": "properties.ratio", "op": "neq", "value": 0.5}]), 3),
        // Text that is no number is not equal to a fraction either.
        (json!([{"field": "properties.loose", "op": "neq", "value": 2.5}]), 4),
        (json!([{"field": "properties.plan", "op": "neq", "value": 2.5}]), 4),
        (json!([{"field": "properties.nope') OR 1=1 --", "op": "is_set"}]), 0),
        // A dot matches a newline on both stores.
        (json!([{"field": "properties.note", "op": "regex", "value": "^line 1.break$"}]), 1),
        // A statement longer than ClickHouse's default 256 KiB.
        (
            json!([{"field": "properties.plan", "op": "eq",
                    "value": (0..999).map(|i| format!("{i:0300}")).chain(["pro".to_owned()]).collect::<Vec<_>>()}]),
            2,
        ),
        // A number's text is JSON's, on both stores.
        (json!([{"field": "properties.loose", "op": "gt", "value": 0}]), 1),
        (json!([{"field": "properties.loose", "op": "lte", "value": 1000}]), 1),
    ] {
        let (status, answer) = s.insight("trend", &range(json!([{"event": "checkout"}]), filters.clone())).await;
        assert_eq!(status, 200, "{filters}: {answer}");
        assert_eq!(total(&answer), json!(expected), "{filters}");
    }
    let (status, answer) = s
        .insight("trend", &range(json!([{"event": "checkout", "math": "sum", "property": "amount"}]), json!([])))
        .await;
    assert_eq!((status, total(&answer)), (200, json!(100.0)), "{answer}");
    let (status, answer) =
        s.insight("trend", &range(json!([{"event": "checkout", "math": "max", "property": "loose"}]), json!([]))).await;
    assert_eq!((status, total(&answer)), (200, json!(8.0)), "{answer}");
    // Still all there: nothing was dropped by a spliced value.
    assert_eq!(s.count(&[]).await, 5);
}

async fn bad_queries_name_the_field(s: &TestServer) {
    let steps = |n: usize| (0..n).map(|i| json!({"event": format!("e{i}")})).collect::<Vec<_>>();
    let chrome_list = json!({"field": "browser", "op": "eq", "value": vec!["Chrome"; 1000]});
    let cases = [
        ("trend", json!({"series": [{"event": "x"}], "colour": "red"}), "colour"),
        ("trend", json!({"series": [{"event": "x", "math": "median"}]}), "series[0].math"),
        ("trend", json!({"series": [{"event": "x", "math": "sum"}]}), "series[0].property"),
        ("trend", json!({"series": []}), "series"),
        ("trend", json!({"series": [{"event": "x"}], "date_from": "2024-02-01", "date_to": "2024-01-01"}), "date_from"),
        ("trend", json!({"series": [{"event": "x"}], "date_from": "last week"}), "date_from"),
        ("trend", json!({"series": [{"event": "x"}], "timezone": "Mars/Base"}), "timezone"),
        (
            "trend",
            json!({"series": [{"event": "x"}], "interval": "minute", "date_from": "2023-01-01", "date_to": "2024-01-01"}),
            "interval",
        ),
        ("trend", json!({"series": [{"event": "x"}], "interval": "fortnight"}), "interval"),
        (
            // Each limit alone is met; together they would build 40M values.
            "trend",
            json!({"series": vec![json!({"event": "x"}); 20], "breakdown": "browser", "breakdown_limit": 100,
                   "interval": "minute", "date_from": "2024-01-01", "date_to": "2024-01-07", "compare": true}),
            "interval",
        ),
        ("trend", json!({"series": [{"event": "x"}], "breakdown": "password"}), "breakdown"),
        (
            "trend",
            json!({"series": [{"event": "x"}], "filters": [{"field": "ip", "op": "eq", "value": "1.2.3.4"}]}),
            "filters[0].field",
        ),
        (
            "trend",
            json!({"series": [{"event": "x"}], "filters": [{"field": "browser", "op": "regex", "value": "(("}]}),
            "filters[0].value",
        ),
        // Patterns Rust's regex reads and the stores' RE2 refuses.
        (
            "trend",
            json!({"series": [{"event": "x"}], "filters": [{"field": "browser", "op": "regex", "value": "(?<n>s)"}]}),
            "filters[0].value",
        ),
        (
            "trend",
            json!({"series": [{"event": "x"}], "filters": [{"field": "browser", "op": "regex", "value": "a**"}]}),
            "filters[0].value",
        ),
        // ClickHouse would read the pattern's text only up to the NUL.
        (
            "trend",
            json!({"series": [{"event": "x"}], "filters": [{"field": "browser", "op": "not_regex", "value": "pro\0x"}]}),
            "filters[0].value",
        ),
        (
            "trend",
            json!({"series": [{"event": "x"}], "filters": [{"field": "browser", "op": "gt", "value": "big"}]}),
            "filters[0].value",
        ),
        // Lists of 1,000 values each, past the 50,000 one question may list.
        (
            "trend",
            json!({"series": [{"event": "x", "filters": vec![chrome_list.clone(); 50]}, {"event": "y"}],
                   "filters": [chrome_list]}),
            "series[0].filters[49].value",
        ),
        ("funnel", json!({"steps": steps(11)}), "steps"),
        ("funnel", json!({"steps": steps(1)}), "steps"),
        ("funnel", json!({"steps": steps(2), "window_seconds": 0}), "window_seconds"),
        ("funnel", json!({"steps": steps(2), "window_seconds": -5}), "window_seconds"),
        ("funnel", json!({"steps": steps(2), "order": "sideways"}), "order"),
        ("retention", json!({"cohort_event": {}, "return_event": {}, "period": "week", "periods": 0}), "periods"),
        ("retention", json!({"cohort_event": {}, "return_event": {}, "period": "year", "periods": 4}), "period"),
        ("paths", json!({"start": ""}), "start"),
        ("web", json!({"limit": 0}), "limit"),
        ("web", json!({"sections": []}), "sections"),
        ("web", json!({"sections": ["overview", "visits"]}), "sections[1]"),
        ("release-impact", json!({"release": "9.9.9", "series": {"event": "x"}}), "release"),
        // A setting of the other mode is refused, not ignored.
        ("release-impact", json!({"release": "9.9.9", "series": {"event": "x"}, "date_from": "x"}), "date_from"),
        (
            "release-impact",
            json!({"release": "9.9.9", "compare_to": "1.0", "series": {"event": "x"}, "window_seconds": 60}),
            "window_seconds",
        ),
        (
            "release-impact",
            json!({"release": "9.9.9", "compare_to": "1.0", "series": {"event": "x"}, "release_time": "2024-01-01T00:00:00Z"}),
            "release_time",
        ),
        ("release-impact", json!({"release": "9.9.9", "compare_to": "1.0", "series": {"event": "x"}}), "release"),
        ("release-impact", json!({"release": "9.9.9", "compare_to": "9.9.9", "series": {"event": "x"}}), "compare_to"),
        // A list is not read into a filter by position.
        (
            "trend",
            json!({"series": [{"event": "x", "filters": [["browser", "eq", "Chrome"]]}]}),
            "series[0].filters[0]",
        ),
        // ... nor refused in serde's words when its length is wrong.
        ("trend", json!({"series": [["App Crashed", "unique_users"]]}), "series[0]"),
        ("paths", json!(["x", "events", "next", 5]), "body"),
        // A zone where a release question has no dates is still checked.
        ("releases", json!({"timezone": "Mars/Base"}), "timezone"),
        ("release-impact", json!({"release": "9.9.9", "series": {"event": "x"}, "timezone": "UTC"}), "timezone"),
    ];
    for (kind, query, field) in cases {
        let (status, answer) = s.insight(kind, &query).await;
        assert_eq!(status, 400, "{kind} {query}: {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{kind} {query}: {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    let response = s
        .client
        .post(s.url(&format!("/api/v1/projects/{}/insights/trend", s.project.id)))
        .bearer_auth(&s.project.read_key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = s
        .client
        .post(s.url(&format!("/api/v1/projects/{}/insights/web", s.project.id)))
        .bearer_auth(&s.project.read_key)
        .body("{} trailing")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "text after the JSON value is refused");
    // The write key is not a read key.
    let response = s
        .client
        .post(s.url(&format!("/api/v1/projects/{}/insights/web", s.project.id)))
        .bearer_auth(&s.project.write_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// People: list, search, trait filters, profile, and erasure of a person
/// with every event they made, anonymous ones included.
/// A Segment call of `kind` at `at` with `extra` fields.
fn segment_call(kind: &str, at: &str, extra: Value) -> Value {
    let mut e = json!({"type": kind, "messageId": message_id(), "timestamp": at});
    e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    e
}

/// Walking the people list with `after`: each person once, in user id
/// order, while people change and join during the walk.
async fn people_walk(s: &TestServer) {
    let identify = |user: &str, n: u64| {
        segment_call("identify", "2024-07-01T10:00:00.000Z", json!({"userId": user, "traits": {"walk": n}}))
    };
    let walkers: Vec<String> = (0..25).map(|i| format!("walker-{i:02}")).collect();
    let batch = json!({"batch": walkers.iter().map(|u| identify(u, 0)).collect::<Vec<_>>()});
    assert_eq!(s.post("/v1/batch", &batch).await.status(), 200);
    s.settle().await;
    let (mut seen, mut after) = (Vec::new(), json!(""));
    for page in 0u64.. {
        assert!(page < 20, "the walk ends: {seen:?}");
        let (status, answer) = s.insight("people", &json!({"search": "walker-", "limit": 4, "after": after})).await;
        assert_eq!(status, 200, "{answer}");
        seen.extend(answer["people"].as_array().unwrap().iter().map(|p| p["user_id"].as_str().unwrap().to_owned()));
        // One already seen and one not yet are seen again now; someone joins.
        let changed = json!({"batch": [identify(&walkers[0], page + 1), identify(&walkers[24], page + 1),
            identify(&format!("walker-new-{page:02}"), 0)]});
        assert_eq!(s.post("/v1/batch", &changed).await.status(), 200);
        s.settle().await;
        match answer.get("next") {
            Some(next) => after = next.clone(),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "in user id order, each once");
    let originals: Vec<&String> = seen.iter().filter(|u| !u.starts_with("walker-new")).collect();
    assert_eq!(originals, walkers.iter().collect::<Vec<_>>());
    let (status, refused) = s.insight("people", &json!({"after": "", "offset": 1})).await;
    assert_eq!((status, refused["error"]["field"].clone()), (400, json!("offset")), "{refused}");
}

async fn people_and_erasure(s: &TestServer) {
    let at = "2024-06-01T10:00:00.000Z";
    let event = |kind: &str, extra: Value| segment_call(kind, at, extra);
    let batch = json!({"batch": [
        event("page", json!({"anonymousId": "anon-ada", "name": "Home"})),
        event("track", json!({"anonymousId": "anon-ada", "event": "viewed"})),
        event("identify", json!({"anonymousId": "anon-ada", "userId": "ada", "traits": {"plan": "pro", "name": "Ada Lovelace", "seats": 12}})),
        event("track", json!({"userId": "ada", "event": "paid"})),
        event("identify", json!({"userId": "bob", "traits": {"plan": "free", "name": "Bob"}})),
        event("track", json!({"userId": "bob", "event": "viewed"})),
    ]});
    assert_eq!(s.post("/v1/batch", &batch).await.status(), 200);
    s.settle().await;
    let list = |q: Value| async move { s.insight("people", &q).await };
    let ids = |answer: &Value| -> Vec<String> {
        answer["people"].as_array().unwrap().iter().map(|p| p["user_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = list(json!({})).await;
    assert_eq!((status, all["total"].clone()), (200, json!(2)), "{all}");
    // A visitor given traits before signing up is part of the user they
    // become: one person, whose traits fill in from the visitor's.
    let signup = json!({"batch": [
        event("identify", json!({"anonymousId": "anon-cy", "traits": {"newsletter": true, "plan": "trial"}})),
        event("identify", json!({"anonymousId": "anon-cy", "userId": "cy", "traits": {"plan": "team"}})),
    ]});
    assert_eq!(s.post("/v1/batch", &signup).await.status(), 200);
    s.settle().await;
    let (_, all) = list(json!({})).await;
    assert_eq!(ids(&all).len(), 3, "ada, bob and cy: {all}");
    let (_, cy) = list(json!({"filters": [{"field": "traits.newsletter", "op": "eq", "value": true}]})).await;
    assert_eq!(ids(&cy), ["cy"], "{cy}");
    assert_eq!(cy["people"][0]["traits"], json!({"newsletter": true, "plan": "team"}));
    let (_, pro) = list(json!({"filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]})).await;
    assert_eq!(ids(&pro), ["ada"]);
    let (_, many_seats) = list(json!({"filters": [{"field": "traits.seats", "op": "gt", "value": 10}]})).await;
    assert_eq!(ids(&many_seats), ["ada"]);
    let (_, found) = list(json!({"search": "LOVELACE"})).await;
    assert_eq!(ids(&found), ["ada"]);
    let (status, bad) = list(json!({"filters": [{"field": "plan", "op": "eq", "value": "pro"}]})).await;
    assert_eq!((status, bad["error"]["field"].clone()), (400, json!("filters[0].field")));

    let profile_url = |user: &str| s.url(&format!("/api/v1/projects/{}/people/{user}", s.project.id));
    let profile = |user: &str| {
        let request = s.client.get(profile_url(user)).bearer_auth(&s.project.read_key);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let ada = profile("ada").await;
    assert_eq!(ada["anonymous_ids"], json!(["anon-ada"]));
    assert_eq!(ada["traits"]["plan"], json!("pro"));
    assert_eq!(ada["events"].as_array().unwrap().len(), 4, "anonymous events are part of the timeline: {ada}");

    let before = s.count(&[]).await;
    let erased = s.client.delete(profile_url("ada")).bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(erased.status(), 200);
    assert_eq!(erased.json::<Value>().await.unwrap(), json!({"deleted_events": 4}));
    assert_eq!(s.count(&[]).await, before - 4, "Ada's events are gone, the rest are kept");
    assert_eq!(s.count(&[("user", "bob")]).await, 2);
    let gone = s.client.get(profile_url("ada")).bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let (_, all) = list(json!({})).await;
    assert_eq!(ids(&all).len(), 2, "{all}");
    let cy_url = profile_url("cy");
    let cy = profile("cy").await;
    assert_eq!(cy["traits"], json!({"newsletter": true, "plan": "team"}), "{cy}");
    let folded = profile("anon-cy").await;
    assert_eq!(folded["user_id"], "cy", "the visitor's profile is the person they became: {folded}");
    // Taken once, at the link: a trait cy removes stays removed, however
    // often the same identify comes again.
    let again = json!({"batch": [
        event("identify", json!({"userId": "cy", "traits": {"newsletter": null}})),
        event("identify", json!({"anonymousId": "anon-cy", "userId": "cy", "traits": {}})),
    ]});
    assert_eq!(s.post("/v1/batch", &again).await.status(), 200);
    s.settle().await;
    let cy = profile("cy").await;
    assert_eq!(cy["traits"], json!({"plan": "team"}), "{cy}");
    // The visitor still holds the trait cy removed: shown, not hidden.
    let (_, all) = list(json!({})).await;
    assert_eq!(ids(&all).len(), 3, "{all}");
    let (_, visitor) = list(json!({"search": "anon-cy"})).await;
    assert_eq!(visitor["people"][0]["traits"], json!({"newsletter": true, "plan": "trial"}), "{visitor}");
    assert_eq!(s.client.delete(&cy_url).bearer_auth(&s.project.read_key).send().await.unwrap().status(), 200);
    let (_, all) = list(json!({})).await;
    assert_eq!(ids(&all), ["bob"], "the visitor's traits went with cy");

    // A visitor never identified is erased by their anonymous id; an
    // anonymous id identified as someone is theirs, and stays.
    let visitor = json!({"batch": [
        event("page", json!({"anonymousId": "anon-only", "name": "Home"})),
        event("track", json!({"anonymousId": "anon-only", "event": "viewed"})),
        event("identify", json!({"anonymousId": "anon-bob", "userId": "bob"})),
        event("track", json!({"anonymousId": "anon-bob", "userId": "bob", "event": "paid"})),
    ]});
    assert_eq!(s.post("/v1/batch", &visitor).await.status(), 200);
    s.settle().await;
    assert_eq!(s.count(&[("user", "anon-only")]).await, 2);
    let erase = |id: &str| s.client.delete(profile_url(id)).bearer_auth(&s.project.read_key).send();
    assert_eq!(erase("anon-only").await.unwrap().json::<Value>().await.unwrap(), json!({"deleted_events": 2}));
    assert_eq!(s.count(&[("user", "anon-only")]).await, 0);
    assert_eq!(erase("anon-bob").await.unwrap().json::<Value>().await.unwrap(), json!({"deleted_events": 0}));
    assert_eq!(s.count(&[("user", "bob")]).await, 4, "Bob's events, those with his anonymous id too");
    let bob = profile("bob").await;
    assert_eq!(bob["anonymous_ids"], json!(["anon-bob"]), "{bob}");
    // An id with events but no traits of its own answers as its person.
    assert_eq!(profile("anon-bob").await, bob);

    // An alias's previous id is the user's, also as the user id its events
    // were sent with: erased with them.
    let alias = json!({"batch": [
        event("track", json!({"userId": "dee-old", "event": "viewed"})),
        event("alias", json!({"previousId": "dee-old", "userId": "dee"})),
        event("track", json!({"userId": "dee", "event": "paid"})),
    ]});
    assert_eq!(s.post("/v1/batch", &alias).await.status(), 200);
    s.settle().await;
    assert_eq!(erase("dee").await.unwrap().json::<Value>().await.unwrap(), json!({"deleted_events": 3}));
    assert_eq!(s.count(&[("user", "dee-old")]).await, 0);

    // A shared device: its id is eve's (linked first), but what fay sends
    // from it is fay's, in her profile and not erased with eve.
    let shared = json!({"batch": [
        event("identify", json!({"anonymousId": "dev-1", "userId": "eve", "traits": {"name": "Eve"}})),
        event("identify", json!({"anonymousId": "dev-1", "userId": "fay", "traits": {"name": "Fay"}})),
        event("track", json!({"anonymousId": "dev-1", "userId": "fay", "event": "paid"})),
    ]});
    assert_eq!(s.post("/v1/batch", &shared).await.status(), 200);
    s.settle().await;
    assert_eq!(profile("eve").await["events"].as_array().unwrap().len(), 1);
    assert_eq!(profile("fay").await["events"].as_array().unwrap().len(), 2);
    assert_eq!(erase("eve").await.unwrap().json::<Value>().await.unwrap(), json!({"deleted_events": 1}));
    assert_eq!(s.count(&[("user", "fay")]).await, 2);

    // The identify that links a visitor may remove what the visitor brings:
    // removed, it stays removed.
    let visit = json!({"batch": [
        event("identify", json!({"anonymousId": "anon-gil", "traits": {"email": "gil@example.com", "plan": "trial"}})),
    ]});
    assert_eq!(s.post("/v1/batch", &visit).await.status(), 200);
    s.settle().await;
    let signup = json!({"batch": [
        event("identify", json!({"anonymousId": "anon-gil", "userId": "gil", "traits": {"email": null}})),
    ]});
    assert_eq!(s.post("/v1/batch", &signup).await.status(), 200);
    s.settle().await;
    let gil = profile("gil").await;
    assert_eq!((&gil["traits"], &gil["anonymous_ids"]), (&json!({"plan": "trial"}), &json!(["anon-gil"])), "{gil}");
}

/// A cohort call: method, path under the project's cohorts, optional body.
async fn cohorts(s: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    s.api(&s.project.read_key, method, &format!("/cohorts{path}"), body).await
}

async fn cohorts_over_http(s: &TestServer) {
    use reqwest::Method;
    let at = "2024-07-01T10:00:00.000Z";
    let event = |kind: &str, extra: Value| segment_call(kind, at, extra);
    let batch = json!({"batch": [
        event("page", json!({"anonymousId": "anon-cy", "name": "Home"})),
        event("identify", json!({"anonymousId": "anon-cy", "userId": "cy", "traits": {"plan": "pro", "seats": 20}})),
        event("track", json!({"userId": "cy", "event": "paid"})),
        event("identify", json!({"userId": "dee", "traits": {"plan": "free"}})),
        event("track", json!({"userId": "dee", "event": "paid"})),
    ]});
    assert_eq!(s.post("/v1/batch", &batch).await.status(), 200);
    s.settle().await;

    let pro = json!({"name": " Pro ", "description": "Paying", "filters": [{"field": "traits.plan", "op": "eq", "value": "pro"}]});
    let (status, created) = cohorts(s, Method::POST, "", Some(pro)).await;
    assert_eq!(
        (status, &created["name"], &created["count"], &created["match"]),
        (201, &json!("Pro"), &json!(1), &json!("all")),
        "{created}"
    );
    let id = created["id"].as_i64().unwrap();
    for (body, field) in [
        (json!({"name": "x", "filters": [{"field": "plan", "op": "eq", "value": "pro"}]}), "filters[0].field"),
        (json!({"name": "x", "filters": [{"field": "traits.seats", "op": "gt", "value": "many"}]}), "filters[0].value"),
        (json!({"name": "", "filters": [{"field": "traits.plan", "op": "is_set"}]}), "name"),
        (json!({"name": "x", "filters": []}), "filters"),
        (json!({"name": "x"}), "filters"),
        (json!({"name": "x", "filters": [], "owner": "me"}), "owner"),
        (json!({"name": "x", "match": "most", "filters": []}), "match"),
        (json!({"name": "x", "filters": [["traits.plan", "eq", "pro"]]}), "filters[0]"),
    ] {
        let (status, answer) = cohorts(s, Method::POST, "", Some(body.clone())).await;
        assert_eq!((status, answer["error"]["field"].clone()), (400, json!(field)), "{body}: {answer}");
    }

    // Members' events, anonymous ones identified as them included.
    let day = |series: Value, cohort: Value| {
        json!({"date_from": "2024-07-01", "date_to": "2024-07-01", "series": series,
               "filters": [{"field": "cohort", "op": "eq", "value": cohort}]})
    };
    let total = |answer: &Value| answer["series"][0]["aggregate"].clone();
    let (status, paid) = s.insight("trend", &day(json!([{"event": "paid"}]), json!(id))).await;
    assert_eq!((status, total(&paid)), (200, json!(1)), "{paid}");
    let (_, views) = s.insight("trend", &day(json!([{"event": "$pageview"}]), json!(id))).await;
    assert_eq!(total(&views), json!(1), "{views}");
    let (_, listed) = cohorts(s, Method::GET, "", None).await;
    assert_eq!(listed["cohorts"].as_array().map(Vec::len), Some(1), "{listed}");
    let (_, members) = cohorts(s, Method::GET, &format!("/{id}/people"), None).await;
    assert_eq!(members["people"][0]["user_id"], json!("cy"), "{members}");
    assert_eq!(members["total"], json!(1));

    // Dee upgrades: the cohort follows at the next question.
    let upgrade = json!({"batch": [event("identify", json!({"userId": "dee", "traits": {"plan": "pro"}}))]});
    assert_eq!(s.post("/v1/batch", &upgrade).await.status(), 200);
    s.settle().await;
    let (_, read) = cohorts(s, Method::GET, &format!("/{id}"), None).await;
    assert_eq!((read["count"].clone(), read["description"].clone()), (json!(2), json!("Paying")), "{read}");
    let (_, paid) = s.insight("trend", &day(json!([{"event": "paid"}]), json!(id))).await;
    assert_eq!(total(&paid), json!(2), "{paid}");

    // An edit applies at once; a deleted cohort is gone everywhere.
    let seats = json!({"name": "Big", "filters": [{"field": "traits.seats", "op": "gte", "value": 10}]});
    let (status, edited) = cohorts(s, Method::PUT, &format!("/{id}"), Some(seats)).await;
    assert_eq!((status, edited["name"].clone(), edited["count"].clone()), (200, json!("Big"), json!(1)), "{edited}");
    assert_eq!(cohorts(s, Method::DELETE, &format!("/{id}"), None).await.0, 204);
    assert_eq!(cohorts(s, Method::GET, &format!("/{id}"), None).await.0, 404);
    assert_eq!(cohorts(s, Method::DELETE, &format!("/{id}"), None).await.0, 404);
    let again = json!({"name": "Big", "filters": [{"field": "traits.seats", "op": "gte", "value": 10}]});
    let (status, again) = cohorts(s, Method::POST, "", Some(again)).await;
    assert!(status == 201 && again["id"].as_i64() > Some(id), "a deleted cohort's id is not given again: {again}");
    assert!(cohorts(s, Method::DELETE, &format!("/{}", again["id"]), None).await.0 == 204);
    let (status, answer) = s.insight("trend", &day(json!([{"event": "paid"}]), json!(id))).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("filters[0].value")), "{answer}");
    let (status, answer) = cohorts(s, Method::GET, "/first", None).await;
    assert_eq!((status, answer["error"]["field"].clone()), (400, json!("cohort_id")));
    let (status, _) = s.api(&s.project.write_key, Method::GET, "/cohorts", None).await;
    assert_eq!(status, 401, "a write key reads no cohorts");
}

/// Samoa skipped 2011-12-30 crossing the date line: that day is no bucket
/// and no cohort. An event dated on the first day of 1970, which no query
/// reaches (a `0` sent for an unset time), is dated when it arrived.
async fn calendar_edges(s: &TestServer) {
    let track = |user: &str, at: Value| json!({"type": "track", "event": "apia", "userId": user, "messageId": message_id(), "timestamp": at});
    let batch = [
        track("a", json!("2011-12-29T12:00:00Z")),
        track("b", json!("2011-12-30T09:59:59Z")),
        track("a", json!("2011-12-30T12:00:00Z")),
        json!({"type": "track", "event": "epoch", "userId": "z", "messageId": message_id(), "timestamp": 0}),
    ];
    assert_eq!(s.post("/v1/batch", &json!({ "batch": batch })).await.status(), 200);
    s.settle().await;
    let zone = "Pacific/Apia";
    let (status, trend) = s
        .insight(
            "trend",
            &json!({"series": [{"event": "apia"}], "interval": "day", "timezone": zone,
            "date_from": "2011-12-29", "date_to": "2011-12-31", "compare": true}),
        )
        .await;
    assert_eq!(status, 200, "{trend}");
    assert_eq!(trend["buckets"], json!(["2011-12-29T00:00:00-10:00", "2011-12-31T00:00:00+14:00"]), "{trend}");
    assert_eq!(trend["series"][0]["data"], json!([2, 1]), "{trend}");
    let (_, day) = s
        .insight(
            "trend",
            &json!({"series": [{"event": "apia"}], "interval": "day", "timezone": zone,
            "date_from": "2011-12-31", "date_to": "2011-12-31", "compare": true}),
        )
        .await;
    assert_eq!(day["previous"]["buckets"], json!(["2011-12-29T00:00:00-10:00"]), "the day before: {day}");
    assert_eq!(day["previous"]["series"][0]["data"], json!([2]), "{day}");
    let (status, retention) = s
        .insight(
            "retention",
            &json!({"cohort_event": {"event": "apia"}, "return_event": {"event": "apia"},
            "period": "day", "periods": 3, "timezone": zone, "date_from": "2011-12-29"}),
        )
        .await;
    assert_eq!(status, 200, "{retention}");
    let starts: Vec<&Value> = retention["cohorts"].as_array().unwrap().iter().map(|c| &c["period_start"]).collect();
    assert_eq!(starts, [&json!("2011-12-29T00:00:00-10:00"), &json!("2011-12-31T00:00:00+14:00")], "{retention}");
    let epoch = s.events(&[("name", "epoch")]).await;
    assert_eq!(epoch.len(), 1);
    assert_eq!(epoch[0]["timestamp_clamped"], json!(true), "{epoch:?}");
    assert_eq!(epoch[0]["timestamp_ms"], epoch[0]["received_at_ms"], "{epoch:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn insights_over_http_on_duckdb() {
    let s = TestServer::start().await;
    hostile_values_are_bound(&s).await;
    bad_queries_name_the_field(&s).await;
    people_and_erasure(&s).await;
    people_walk(&s).await;
    cohorts_over_http(&s).await;
    calendar_edges(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn insights_over_http_on_clickhouse() {
    let url = store_url(&ch::shared(), &fresh_database());
    let s = TestServer::start_with(|c| c.clickhouse = Some(ClickHouseOptions::new(url))).await;
    hostile_values_are_bound(&s).await;
    bad_queries_name_the_field(&s).await;
    people_and_erasure(&s).await;
    people_walk(&s).await;
    cohorts_over_http(&s).await;
    calendar_edges(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_counts_people_active_now() {
    let s = TestServer::start().await;
    let now = chrono::Utc::now();
    let mut batch = Vec::new();
    for (user, minutes_ago) in [("a", 0), ("b", 2), ("c", 12), ("a", 1)] {
        let at = (now - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
        batch.push(
            json!({"type": "track", "event": "tick", "userId": user, "messageId": message_id(), "timestamp": at}),
        );
    }
    assert_eq!(s.post("/v1/batch", &json!({"batch": batch})).await.status(), 200);
    s.settle().await;
    let response = s
        .client
        .get(s.url(&format!("/api/v1/projects/{}/insights/live", s.project.id)))
        .bearer_auth(&s.project.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let live: Value = response.json().await.unwrap();
    assert_eq!(live["active_users"], json!(2), "{live}");
    let per_minute: Vec<u64> =
        live["events_per_minute"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(per_minute.len(), 30);
    assert_eq!(per_minute.iter().sum::<u64>(), 4, "{live}");

    // Ranges relative to now, as PostHog's API writes them.
    let (status, answer) = s.insight("trend", &json!({"series": [{"event": "tick"}], "date_from": "-1h"})).await;
    assert_eq!((status, &answer["series"][0]["aggregate"]), (200, &json!(4)), "{answer}");
    let (status, answer) =
        s.insight("trend", &json!({"series": [{"event": "tick"}], "date_from": "-3h", "date_to": "-2h"})).await;
    assert_eq!((status, &answer["series"][0]["aggregate"]), (200, &json!(0)), "{answer}");
    let query = json!({"cohort_event": {"event": "tick"}, "return_event": {"event": "tick"}, "period": "day",
                       "periods": 2, "cohort_type": "first_time", "date_from": "-1d"});
    let (status, answer) = s.insight("retention", &query).await;
    assert_eq!(status, 200, "{answer}");
    let people: u64 = answer["cohorts"].as_array().unwrap().iter().map(|c| c["size"].as_u64().unwrap()).sum();
    assert_eq!(people, 3, "{answer}");
}

fn sorted(mut kinds: Vec<&str>) -> Vec<&str> {
    kinds.sort_unstable();
    kinds
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_insight_route() {
    let s = TestServer::start().await;
    let doc: Value = s.client.get(s.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], json!("3.0.3"));
    let paths = doc["paths"].as_object().unwrap();
    // Written out here, apart from the list the document is built from,
    // which must hold these and no more; each is then asked below.
    let routes =
        ["trend", "funnel", "retention", "paths", "web", "feedback", "releases", "release-impact", "live", "people"];
    let listed: Vec<&str> = leanloop::openapi::INSIGHTS.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(sorted(listed), sorted(routes.to_vec()));
    let documented: Vec<&str> =
        paths.keys().filter_map(|p| p.strip_prefix("/api/v1/projects/{id}/insights/")).collect();
    assert_eq!(sorted(documented), sorted(routes.to_vec()), "the document's insight routes");
    for kind in routes {
        let path = format!("/api/v1/projects/{{id}}/insights/{kind}");
        let item = paths.get(&path).unwrap_or_else(|| panic!("{path} is documented"));
        // Every documented route exists: without a key it is a 401, not a 404/405.
        let url = s.url(&path.replace("{id}", &s.project.id.to_string()));
        let response = if item.get("get").is_some() { s.client.get(url) } else { s.client.post(url).json(&json!({})) };
        assert_eq!(response.send().await.unwrap().status(), 401, "{path}");
    }
    // Schemas come from the types: the trend query lists its fields and maths.
    let schemas = &doc["components"]["schemas"];
    let trend = &schemas["TrendQuery"]["properties"];
    for field in ["series", "interval", "breakdown", "compare", "timezone"] {
        assert!(trend.get(field).is_some(), "TrendQuery.{field}: {trend}");
    }
    assert!(schemas["Math"].to_string().contains("unique_users"), "{}", schemas["Math"]);
    // The routes that take no key answer as documented.
    let ready: Value = s.client.get(s.url("/readyz")).send().await.unwrap().json().await.unwrap();
    for field in paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["required"]
        .as_array()
        .unwrap()
    {
        assert!(ready.get(field.as_str().unwrap()).is_some(), "{field} in {ready}");
    }
    for path in ["/healthz", "/metrics", "/api/openapi.json"] {
        assert!(paths[path]["get"]["responses"]["200"].is_object(), "{path}");
        assert_eq!(s.client.get(s.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    // Every reference resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.get(name).is_some(), "dangling $ref {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cohorts_deleted_while_listed_leave_the_list_and_the_list_answers() {
    use reqwest::Method;
    let s = std::sync::Arc::new(TestServer::start().await);
    let churn = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let body = json!({"name": format!("c{i}"), "filters": [{"field": "traits.plan", "op": "is_set"}]});
                let (status, created) = cohorts(&s, Method::POST, "", Some(body)).await;
                assert_eq!(status, 201, "{created}");
                let (status, _) = cohorts(&s, Method::DELETE, &format!("/{}", created["id"]), None).await;
                assert_eq!(status, 204);
            }
        })
    };
    let mut lists = 0;
    while !churn.is_finished() {
        let (status, listed) = cohorts(&s, Method::GET, "", None).await;
        assert_eq!(status, 200, "a list read while cohorts are deleted: {listed}");
        lists += 1;
    }
    churn.await.expect("create and delete");
    assert!(lists > 0);
}
