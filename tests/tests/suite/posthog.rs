//! PostHog's capture API: every endpoint and body packing posthog-js and the
//! server libraries use.

use base64::Engine;
use flate2::write::GzEncoder;
use leanloop_tests::TestServer;
use serde_json::{json, Value};
use std::io::Write;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn capture(s: &TestServer, event: &str, distinct_id: &str, properties: Value) -> Value {
    json!({"api_key": s.project.write_key, "event": event, "distinct_id": distinct_id,
           "properties": properties, "uuid": leanloop_tests::message_id()})
}

/// The `(index, field)` of each event a 200 answer lists as rejected.
fn refused(answer: &Value) -> Vec<(u64, &str)> {
    let rejected = answer["rejected"].as_array().expect("a rejected list");
    rejected.iter().map(|r| (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_accepts_events() {
    let s = TestServer::start().await;
    for (i, path) in ["/capture/", "/e/", "/i/v0/e/", "/capture", "/e"].iter().enumerate() {
        let body = capture(&s, &format!("ev{i}"), "d1", json!({}));
        let r = s.client.post(s.url(path)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], 1);
    }
    let batch = json!({"api_key": s.project.write_key, "batch": [
        {"event": "b1", "distinct_id": "d1", "properties": {}},
        {"event": "b2", "properties": {"distinct_id": "d2", "token": "ignored-when-api_key-given"}}
    ]});
    assert_eq!(s.client.post(s.url("/batch/")).json(&batch).send().await.unwrap().status(), 200);
    // An array body with the token per event, as older SDKs send.
    let array = json!([{"token": s.project.write_key, "event": "arr", "distinct_id": "d3"}]);
    assert_eq!(s.client.post(s.url("/e/")).json(&array).send().await.unwrap().status(), 200);
    assert_eq!(s.count(&[]).await, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_and_base64_bodies() {
    let s = TestServer::start().await;
    let body = capture(&s, "gz-header", "d", json!({})).to_string();
    let r = s
        .client
        .post(s.url("/batch/"))
        .header("content-encoding", "gzip")
        .header("content-type", "application/json")
        .body(gzip(body.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let body = capture(&s, "gz-js", "d", json!({})).to_string();
    let r = s
        .client
        .post(s.url("/e/?compression=gzip-js&ver=1.100.0"))
        .header("content-type", "text/plain")
        .body(gzip(body.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let body = capture(&s, "form", "d", json!({})).to_string();
    let data = base64::engine::general_purpose::STANDARD.encode(body);
    let r = s.client.post(s.url("/e/")).form(&[("data", data.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), 200);

    for name in ["gz-header", "gz-js", "form"] {
        assert_eq!(s.count(&[("name", name)]).await, 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_of_a_bare_list_is_keyed_by_its_token_and_placeholders_link_nobody() {
    let s = TestServer::start().await;
    let other = s.control.create_project("other").unwrap();
    let token = |key: &str, name: &str| json!({"event": name, "properties": {"distinct_id": "U", "token": key}});
    let body = json!([
        token(&s.project.write_key, "mine"),
        token(&other.write_key, "theirs"),
        token(&s.project.read_key, "read-key")
    ]);
    let r = s.client.post(s.url("/e/")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(refused(&answer), [(1, "api_key"), (2, "api_key")], "{answer}");

    // An app's bug identifies every visitor as "null": no one is linked.
    let batch = json!({"api_key": s.project.write_key, "batch": [
        {"event": "$identify", "distinct_id": "null", "properties": {"$anon_distinct_id": "visitor-1"}},
        {"event": "$identify", "distinct_id": "real-user", "properties": {"$anon_distinct_id": "visitor-2"},
         "timestamp": "2024-05-01T12:00:00+0200"}]});
    assert_eq!(s.client.post(s.url("/batch/")).json(&batch).send().await.unwrap().status(), 200);
    s.settle().await;
    assert_eq!(s.count(&[("name", "$identify")]).await, 2, "both identifies are kept as events");
    assert_eq!(s.identity("visitor-1").await, None);
    assert_eq!(s.identity("visitor-2").await.as_deref(), Some("real-user"));
    let real = s.events(&[("user", "real-user")]).await;
    assert_eq!(real[0]["timestamp"], "2024-05-01T10:00:00.000Z", "an offset without a colon is read");
}

#[tokio::test(flavor = "multi_thread")]
async fn pageviews_identify_and_set_map_onto_the_model() {
    let s = TestServer::start().await;
    let batch = json!({"api_key": s.project.write_key, "batch": [
        {"event": "$pageview", "distinct_id": "anon-9", "timestamp": "2024-05-01T10:00:00Z", "properties": {
            "$current_url": "https://app.example/docs?utm_source=hn", "$pathname": "/docs",
            "$referrer": "https://news.ycombinator.com/item?id=1", "$referring_domain": "news.ycombinator.com",
            "$is_identified": false, "$session_id": "s-9", "$app_version": "0.9.1",
            "$browser": "Firefox", "$os": "Linux", "$device_type": "Desktop", "$lib": "web", "title": "Docs"}},
        {"event": "$identify", "distinct_id": "user-9", "properties": {
            "$anon_distinct_id": "anon-9", "$set": {"email": "nine@app.example", "plan": "free"}}},
        {"event": "$set", "distinct_id": "user-9", "$set": {"plan": "team"}},
        {"event": "upgraded", "distinct_id": "user-9", "properties": {"$release": "1.0.0", "$app_version": "0.9.1"}},
        {"event": "$create_alias", "distinct_id": "user-9", "properties": {"distinct_id": "user-9", "alias": "user-9-new"}}
    ]});
    let r = s.client.post(s.url("/batch/")).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let pv = s.only_event("$pageview").await;
    assert_eq!(pv["type"], "page");
    assert_eq!(pv["anonymous_id"], "anon-9");
    assert!(pv.get("user_id").is_none());
    assert_eq!(pv["url"], "https://app.example/docs?utm_source=hn");
    assert_eq!(pv["path"], "/docs");
    assert_eq!(pv["page_name"], "Docs");
    assert_eq!(pv["referrer_domain"], "news.ycombinator.com");
    assert_eq!(pv["utm_source"], "hn");
    assert_eq!(pv["session_id"], "s-9");
    assert_eq!(pv["device_type"], "desktop", "posthog-js's `Desktop`, as parsed agents name it");
    assert_eq!(pv["release"], "0.9.1");
    assert_eq!(pv["browser"], "Firefox");
    assert_eq!(pv["library"], "web");
    assert_eq!(pv["timestamp"], "2024-05-01T10:00:00.000Z");

    let identify = s.only_event("$identify").await;
    assert_eq!(identify["user_id"], "user-9");
    assert_eq!(identify["anonymous_id"], "anon-9");
    assert_eq!(s.only_event("upgraded").await["release"], "1.0.0", "$release wins over $app_version");
    let alias = s.only_event("$alias").await;
    assert_eq!(alias["user_id"], "user-9-new");
    assert_eq!(alias["properties"]["$previous_id"], "user-9");

    let traits = s.user_traits("user-9").await.expect("person stored");
    assert_eq!(traits["email"], "nine@app.example");
    assert_eq!(traits["plan"], "team", "a later $set wins");
    // The alias links user-9 to user-9-new, who took user-9's traits: one
    // person, whose profile holds the events sent as either, and as the
    // visitor user-9 was (links name the end of their chain).
    let url = s.url(&format!("/api/v1/projects/{}/people/user-9", s.project.id));
    let profile: Value = s.client.get(url).bearer_auth(&s.project.read_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(profile["user_id"], "user-9-new", "{profile}");
    assert_eq!(profile["traits"]["email"], "nine@app.example", "{profile}");
    let mut names: Vec<&str> =
        profile["events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(s.identity("anon-9").await.as_deref(), Some("user-9-new"));
    assert_eq!(names, ["$alias", "$identify", "$pageview", "$set", "upgraded"], "{profile}");
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_dangerously_makes_the_named_person_part_of_the_sender() {
    let s = TestServer::start().await;
    let batch = json!({"api_key": s.project.write_key, "batch": [
        {"event": "$set", "distinct_id": "other", "$set": {"from_other": 1}},
        {"event": "$set", "distinct_id": "main", "$set": {"from_main": 2}},
        {"event": "$merge_dangerously", "distinct_id": "main", "properties": {"alias": "other"}}
    ]});
    let r = s.client.post(s.url("/batch/")).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.settle().await;
    assert_eq!(s.identity("other").await.as_deref(), Some("main"));
    let traits = s.user_traits("main").await.expect("person stored");
    assert_eq!((&traits["from_main"], &traits["from_other"]), (&json!(2), &json!(1)), "{traits}");
    let refused = json!({"api_key": s.project.write_key, "event": "$merge_dangerously", "distinct_id": "main"});
    let r = s.client.post(s.url("/capture/")).json(&refused).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "properties.alias", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn flag_calls_get_no_flags_for_a_good_key_and_a_refusal_for_a_bad_one() {
    let s = TestServer::start().await;
    let key = s.project.write_key.clone();
    let ask = |path: &str, body: Vec<u8>, content_type: &str| {
        s.client.post(s.url(path)).header("content-type", content_type).body(body).send()
    };
    // posthog-js and the server SDKs: JSON with `token` or `api_key`.
    let no_flags = |path: &'static str, body: Vec<u8>, content_type: &'static str| async move {
        let r = ask(path, body, content_type).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!((&answer["flags"], &answer["featureFlags"]), (&json!({}), &json!({})), "{path}: {answer}");
        assert_eq!(answer["errorsWhileComputingFlags"], false, "{path}: {answer}");
    };
    for path in ["/flags/?v=2&config=true", "/flags", "/decide/?v=3", "/decide"] {
        let body = json!({"token": key, "distinct_id": "d", "groups": {}}).to_string().into_bytes();
        no_flags(path, body, "application/json").await;
    }
    // Older posthog-js: a base64 form body, and gzip-js.
    let data = base64::engine::general_purpose::STANDARD.encode(json!({"token": key, "distinct_id": "d"}).to_string());
    let form = format!("data={}", url_escape(&data)).into_bytes();
    no_flags("/decide/?v=3", form, "application/x-www-form-urlencoded").await;
    let gz = gzip(json!({"api_key": key, "distinct_id": "d"}).to_string().as_bytes());
    no_flags("/flags/?compression=gzip-js", gz.clone(), "text/plain").await;
    // gzip known by its first bytes, as on the capture paths.
    no_flags("/flags/?v=2", gz, "application/json").await;

    let refused = |body: Vec<u8>, status: u16, code: &'static str| async move {
        let r = ask("/flags/", body, "application/json").await.unwrap();
        assert_eq!(r.status(), status);
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty(), "{error}");
    };
    let unknown = json!({"token": "no-such-key", "distinct_id": "d"}).to_string().into_bytes();
    refused(unknown, 401, "unauthorized").await;
    let secret = json!({"token": s.project.read_key, "distinct_id": "d"}).to_string().into_bytes();
    refused(secret, 401, "unauthorized").await;
    refused(b"{\"distinct_id\":\"d\"}".to_vec(), 401, "unauthorized").await;
    refused(b"{not json".to_vec(), 400, "bad_request").await;
    // Browsers ask first; the answer lets the page's origin read it.
    let preflight = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/flags/"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example");
    leanloop_tests::assert_preflight_allows(&preflight, &["content-type"]);

    // Server SDKs with a personal API key load definitions to evaluate
    // locally: the project's key is the `token` parameter.
    for path in ["/flags/definitions", "/api/feature_flag/local_evaluation/"] {
        let definitions = |token: &str| {
            s.client.get(s.url(&format!("{path}?token={token}&send_cohorts"))).bearer_auth("phx_personal").send()
        };
        let r = definitions(&key).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["flags"], json!([]), "{path}: {answer}");
        assert_eq!(definitions("no-such-key").await.unwrap().status(), 401, "{path}");
        assert_eq!(definitions(&s.project.read_key).await.unwrap().status(), 401, "{path}");
        let r = s.client.get(s.url(path)).bearer_auth("phx_personal").send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let answer: Value = r.json().await.unwrap();
        assert!(answer["error"]["message"].as_str().unwrap().contains("`token`"), "{path}: {answer}");
    }
    assert_eq!(s.count(&[]).await, 0, "a flags call stores no event");
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_config_turns_everything_off_in_json_and_as_a_script() {
    let s = TestServer::start().await;
    let key = s.project.write_key.clone();
    let get = |path: String| s.client.get(s.url(&path)).send();
    let r = get(format!("/array/{key}/config")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*", "posthog-js fetches it from the page");
    let config: Value = r.json().await.unwrap();
    assert_eq!(config["token"], key.as_str());
    assert_eq!(config["analytics"]["endpoint"], "/i/v0/e/");
    for off in ["hasFeatureFlags", "sessionRecording", "heatmaps", "surveys", "autocaptureExceptions"] {
        assert_eq!(config[off], false, "{off}: {config}");
    }

    // The script form, run as a browser would run it: it files the same
    // config under the token.
    let r = get(format!("/array/{key}/config.js")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let script = r.text().await.unwrap();
    let run = format!(
        "globalThis.window = {{}};\n{script}\nprocess.stdout.write(JSON.stringify(window._POSTHOG_REMOTE_CONFIG));"
    );
    let out = std::process::Command::new("node").args(["-e", &run]).output().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let filed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(filed[key.as_str()]["config"], config);
    assert_eq!(filed[key.as_str()]["siteApps"], json!([]));

    // Only a write key gets one.
    for bad in ["no-such-key".to_owned(), s.project.read_key.clone()] {
        for path in [format!("/array/{bad}/config"), format!("/array/{bad}/config.js")] {
            let r = get(path.clone()).await.unwrap();
            assert_eq!(r.status(), 401, "{path}");
            let error: Value = r.json().await.unwrap();
            assert_eq!(error["error"]["code"], "unauthorized", "{path}: {error}");
        }
    }
    assert_eq!(s.count(&[]).await, 0, "asking for the config stores no event");
}

fn url_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_types_and_repeated_keys_in_properties_cost_no_column() {
    let s = TestServer::start().await;
    let body = |uuid: &str, properties: &str| {
        format!(
            r#"{{"api_key":"{}","event":"$pageview","distinct_id":"odd-1","uuid":"{uuid}","properties":{properties}}}"#,
            s.project.write_key
        )
    };
    let cases = [
        // A custom `alias`, `$is_identified` as text, a `$device_id` that is no id.
        r#"{"$current_url":"https://x.example/a?utm_source=news","$pathname":"/a","$session_id":"s-1","alias":true,
            "$is_identified":"yes","$device_id":1.5,"$set":{"plan":"pro"}}"#,
        // A key written twice: its first value counts, as in the stored JSON.
        r#"{"$current_url":"https://x.example/a?utm_source=news","$pathname":"/a","$pathname":"/b","$session_id":"s-1",
            "$set":{"plan":"pro"}}"#,
    ];
    for (i, properties) in cases.iter().enumerate() {
        let uuid = leanloop_tests::message_id();
        let r = s.client.post(s.url("/capture/")).body(body(&uuid, properties)).send().await.unwrap();
        assert_eq!(r.status(), 200, "case {i}: {}", r.text().await.unwrap());
        s.settle().await;
        let events = s.events(&[("user", "odd-1")]).await;
        let e = events.iter().find(|e| e["uuid"] == uuid.as_str()).unwrap_or_else(|| panic!("case {i} stored"));
        assert_eq!(
            (&e["url"], &e["path"], &e["session_id"]),
            (&json!("https://x.example/a?utm_source=news"), &json!("/a"), &json!("s-1")),
            "case {i}: {e}"
        );
        assert_eq!(e["utm_source"], "news", "case {i}");
    }
    assert_eq!(s.user_traits("odd-1").await, Some(json!({"plan": "pro"})));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_carrying_another_projects_key_than_its_batch_is_refused() {
    let s = TestServer::start().await;
    let other = s.control.create_project("other").unwrap();
    let batch = json!({"api_key": s.project.write_key, "batch": [
        {"event": "mine", "distinct_id": "k1"},
        {"event": "theirs", "distinct_id": "k1", "api_key": other.write_key},
        {"event": "read key", "distinct_id": "k1", "token": s.project.read_key},
        {"event": "same", "distinct_id": "k1", "api_key": s.project.write_key},
        // No key at all: the request's decides.
        {"event": "not a key", "distinct_id": "k1", "token": 0}
    ]});
    let r = s.client.post(s.url("/batch/")).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(refused(&answer), [(1, "api_key"), (2, "api_key")], "{answer}");
    s.settle().await;
    assert_eq!(s.count(&[]).await, 3);
    let segment = json!({"writeKey": s.project.write_key, "batch": [
        {"type": "track", "event": "mine", "userId": "k2"},
        {"type": "track", "event": "theirs", "userId": "k2", "writeKey": other.write_key}
    ]});
    let answer: Value = s.client.post(s.url("/v1/batch")).json(&segment).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "writeKey", "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_v1_protocol_answers_per_event_and_corrects_skew_by_its_request_time() {
    let s = TestServer::start().await;
    let big = "x".repeat(40_000);
    let batch = json!({"created_at": "2024-06-01T10:00:00Z", "batch": [
        {"event": "kept", "uuid": "00000000-0000-4000-8000-0000000000a1", "distinct_id": "d",
         "timestamp": "2024-06-01T10:00:00Z", "options": {}, "properties": {}, "session_id": "s1"},
        {"event": "as-sent", "uuid": "00000000-0000-4000-8000-0000000000a2", "distinct_id": "d",
         "timestamp": "2024-06-01T10:00:00Z", "options": {"disable_skew_correction": true}, "properties": {}},
        {"event": "big", "uuid": "00000000-0000-4000-8000-0000000000a3", "distinct_id": "d",
         "properties": {"blob": big}},
        {"uuid": "00000000-0000-4000-8000-0000000000a4", "distinct_id": "d", "properties": {}},
    ]});
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(batch.to_string().as_bytes()).unwrap();
    // The client's clock is an hour behind this one: its events move an
    // hour on, unless they ask to be taken as sent.
    let behind = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let r = s
        .client
        .post(s.url("/i/v1/analytics/events"))
        .bearer_auth(&s.project.write_key)
        .header("content-encoding", "deflate")
        .header("posthog-request-timestamp", behind)
        .header("posthog-sdk-info", "posthog-go/1.2.3")
        .body(zlib.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 2, "{answer}");
    let results = answer["results"].as_object().unwrap();
    let dropped: Vec<&str> = results.keys().map(String::as_str).collect();
    assert_eq!(dropped, ["00000000-0000-4000-8000-0000000000a3", "00000000-0000-4000-8000-0000000000a4"]);
    assert!(results.values().all(|v| v["result"] == "drop"), "{answer}");
    assert!(results["00000000-0000-4000-8000-0000000000a4"]["details"].as_str().unwrap().contains("event"));
    let kept = s.events(&[("name", "kept")]).await.remove(0);
    assert!(kept["timestamp"].as_str().unwrap().starts_with("2024-06-01T11:00"), "{kept}");
    assert_eq!((&kept["session_id"], &kept["library"]), (&json!("s1"), &json!("posthog-go")));
    let as_sent = s.events(&[("name", "as-sent")]).await.remove(0);
    assert!(as_sent["timestamp"].as_str().unwrap().starts_with("2024-06-01T10:00:00"), "{as_sent}");

    // Every event refused is still a 200: each is dropped by its uuid.
    let refused = json!({"batch": [{"uuid": "u-1", "distinct_id": "d", "properties": {}}]});
    let r = s.client.post(s.url("/i/v1/analytics/events")).bearer_auth(&s.project.write_key).json(&refused);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["results"]["u-1"]["result"], "drop");
    // The key is required, as on every ingest path.
    let r = s.client.post(s.url("/i/v1/analytics/events")).json(&refused).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
