//! Segment's tracking API against a running server: every endpoint, read back
//! through the events API with exact counts and fields.

use leanloop_tests::{assert_preflight_allows, message_id, TestServer};
use serde_json::json;

const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.0.0 Safari/537.36";

#[tokio::test(flavor = "multi_thread")]
async fn every_call_type_is_stored_with_the_naming_convention() {
    let s = TestServer::start().await;
    let calls = [
        ("/v1/track", json!({"userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}})),
        ("/v1/page", json!({"userId": "u1", "name": "Pricing", "properties": {"url": "https://shop.example/pricing"}})),
        ("/v1/screen", json!({"userId": "u1", "name": "Home"})),
        ("/v1/identify", json!({"userId": "u1", "anonymousId": "anon-1", "traits": {"email": "a@shop.example"}})),
        ("/v1/group", json!({"userId": "u1", "groupId": "acme", "traits": {"seats": 5}})),
        ("/v1/alias", json!({"userId": "u1", "previousId": "old-1"})),
    ];
    for (path, body) in &calls {
        let r = s.post(path, body).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    assert_eq!(s.count(&[]).await, 6);
    let names = ["Signed Up", "$pageview", "$screen", "$identify", "$group", "$alias"];
    let kinds = ["track", "page", "screen", "identify", "group", "alias"];
    for (name, kind) in names.iter().zip(kinds) {
        let e = s.only_event(name).await;
        assert_eq!(e["type"], kind);
        assert_eq!(e["user_id"], "u1");
    }
    assert_eq!(s.only_event("$pageview").await["page_name"], "Pricing");
    assert_eq!(s.only_event("$screen").await["page_name"], "Home");
    assert_eq!(s.only_event("$group").await["properties"]["$group_id"], "acme");
    assert_eq!(s.only_event("$group").await["properties"]["$group_traits"]["seats"], 5);
    assert_eq!(s.only_event("$alias").await["properties"]["$previous_id"], "old-1");

    assert_eq!(s.user_traits("u1").await.expect("identify stores the person")["email"], "a@shop.example");
    assert_eq!(s.identity("anon-1").await.as_deref(), Some("u1"), "identify links the anonymous id");
    assert_eq!(s.identity("old-1").await.as_deref(), Some("u1"), "alias links the previous id");
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_with_write_key_in_body_and_fields_read_back() {
    let s = TestServer::start_with(|c| c.collector.country_header = Some("cf-ipcountry".into())).await;
    let id = message_id();
    let body = json!({
        "writeKey": s.project.write_key,
        "batch": [{
            "type": "track", "event": "Order Completed", "userId": "u7", "anonymousId": "a7",
            "messageId": id, "timestamp": "2024-03-01T12:00:00.000Z",
            "properties": {"total": 42.5, "items": [1, 2]},
            "context": {
                "userAgent": CHROME_MAC, "ip": "198.51.100.23",
                "app": {"version": "3.1.0"}, "library": {"name": "analytics.js"},
                "page": {"url": "https://shop.example/cart?utm_source=news&utm_medium=email&utm_campaign=spring&utm_term=shoes&utm_content=hero",
                         "referrer": "https://www.bing.com/search?q=shoes"}
            }
        }]
    });
    let r = s.client.post(s.url("/v1/batch")).header("cf-ipcountry", "de").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ack: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ack["accepted"], 1);
    let e = s.only_event("Order Completed").await;
    assert_eq!(e["uuid"], id);
    assert_eq!(e["timestamp"], "2024-03-01T12:00:00.000Z");
    assert_eq!(e["release"], "3.1.0");
    assert_eq!(e["anonymous_id"], "a7");
    assert_eq!(e["path"], "/cart");
    assert_eq!(e["utm_source"], "news");
    assert_eq!(e["utm_medium"], "email");
    assert_eq!(e["utm_campaign"], "spring");
    assert_eq!(e["utm_term"], "shoes");
    assert_eq!(e["utm_content"], "hero");
    assert_eq!(e["referrer_domain"], "bing.com");
    assert_eq!(e["browser"], "Chrome");
    assert_eq!(e["os"], "Mac OS X");
    assert_eq!(e["device_type"], "desktop");
    assert_eq!(e["country"], "DE");
    assert_eq!(e["ip"], "198.51.100.0", "the last octet is zeroed");
    assert_eq!(e["library"], "analytics.js");
    assert_eq!(e["properties"], json!({"total": 42.5, "items": [1, 2]}));
    assert!(e["session_id"].as_str().is_some_and(|s| !s.is_empty()), "a server-side session id is assigned");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_sent_three_times_is_stored_once() {
    let s = TestServer::start().await;
    let batch: Vec<_> = (0..50)
        .map(|i| json!({"type": "track", "event": "Clicked", "userId": format!("u{i}"), "messageId": message_id()}))
        .collect();
    let body = json!({ "batch": batch });
    for _ in 0..3 {
        assert_eq!(s.post("/v1/batch", &body).await.status(), 200);
        s.settle().await;
    }
    // And once more with the same ids repeated inside one request.
    let doubled: Vec<_> = batch.iter().chain(batch.iter()).cloned().collect();
    assert_eq!(s.post("/v1/batch", &json!({ "batch": doubled })).await.status(), 200);
    assert_eq!(s.count(&[("name", "Clicked")]).await, 50);
    // Non-UUID message ids deduplicate too.
    for _ in 0..2 {
        let r = s.post("/v1/track", &json!({"userId": "u", "event": "Custom Id", "messageId": "msg-000123"})).await;
        assert_eq!(r.status(), 200, "a retry is acknowledged, so the client stops sending it");
    }
    assert_eq!(s.count(&[("name", "Custom Id")]).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn clock_skew_is_corrected_and_the_far_future_clamped() {
    let s = TestServer::start().await;
    let now = chrono::Utc::now();
    // The client's clock runs two hours ahead: its timestamp and sentAt both carry the skew.
    let skewed_sent = now + chrono::Duration::hours(2);
    let skewed_ts = skewed_sent - chrono::Duration::seconds(30);
    s.post("/v1/track", &json!({"userId": "u", "event": "Skewed", "timestamp": skewed_ts.to_rfc3339(), "sentAt": skewed_sent.to_rfc3339()})).await;
    s.post(
        "/v1/track",
        &json!({"userId": "u", "event": "Future", "timestamp": (now + chrono::Duration::hours(30)).to_rfc3339()}),
    )
    .await;

    let skewed = s.only_event("Skewed").await;
    let t = chrono::DateTime::parse_from_rfc3339(skewed["timestamp"].as_str().unwrap()).unwrap();
    let expected = now - chrono::Duration::seconds(30);
    assert!((t.timestamp_millis() - expected.timestamp_millis()).abs() < 5_000, "corrected to about 30 s ago: {t}");
    assert_eq!(skewed["timestamp_clamped"], false);

    let future = s.only_event("Future").await;
    assert_eq!(future["timestamp_clamped"], true);
    assert_eq!(future["timestamp"], future["received_at"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_assigned_per_person_and_client_ids_kept() {
    let s = TestServer::start().await;
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    let at = |minutes: i64| (t0 + chrono::Duration::minutes(minutes)).to_rfc3339();
    let batch = json!({"batch": [
        {"type": "track", "event": "s", "anonymousId": "p1", "timestamp": at(0), "messageId": message_id()},
        {"type": "track", "event": "s", "anonymousId": "p1", "timestamp": at(20), "messageId": message_id()},
        {"type": "track", "event": "s", "anonymousId": "p1", "timestamp": at(80), "messageId": message_id()},
        {"type": "track", "event": "s", "anonymousId": "p2", "timestamp": at(1), "messageId": message_id()},
        {"type": "track", "event": "own", "anonymousId": "p3", "context": {"sessionId": "client-session-9"}}
    ]});
    assert_eq!(s.post("/v1/batch", &batch).await.status(), 200);
    let mut events = s.events(&[("name", "s")]).await;
    events.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
    let sid = |i: usize| events[i]["session_id"].as_str().unwrap().to_owned();
    // Order by time: p1@0, p2@1, p1@20, p1@80.
    assert_eq!(sid(0), sid(2), "20 minutes apart: same session");
    assert_ne!(sid(2), sid(3), "60 idle minutes end the session");
    assert_ne!(sid(0), sid(1), "people do not share sessions");
    assert_eq!(s.only_event("own").await["session_id"], "client-session-9");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_ips_are_kept_only_when_the_project_opts_in() {
    let s = TestServer::start().await;
    // A project not yet looked up, so no cached key holds the old setting.
    let p = s.control.create_project("full ip").unwrap();
    let out = std::process::Command::new(leanloop_tests::process::leanloop_bin())
        .args(["project", "set", &p.id.to_string(), "--store-full-ip", "true", "--data-dir"])
        .arg(s.data_dir.path())
        .output()
        .expect("leanloop runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored whole"));
    let r = s
        .client
        .post(s.url("/v1/track"))
        .basic_auth(&p.write_key, Some(""))
        .json(&json!({"userId": "u", "event": "e", "context": {"ip": "203.0.113.99"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.settle().await;
    let r = s
        .client
        .get(s.url(&format!("/api/v1/projects/{}/events", p.id)))
        .bearer_auth(&p.read_key)
        .send()
        .await
        .unwrap();
    let events: serde_json::Value = r.json().await.unwrap();
    assert_eq!(events["events"][0]["ip"], "203.0.113.99");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_plain_bodies_and_cors_preflight_work_for_browsers() {
    let s = TestServer::start().await;
    let body = json!({"writeKey": s.project.write_key, "userId": "u", "event": "Beacon"}).to_string();
    let r = s
        .client
        .post(s.url("/v1/track"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "https://shop.example")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let preflight = s
        .client
        .request(reqwest::Method::OPTIONS, s.url("/v1/batch"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://shop.example");
    assert_preflight_allows(&preflight, &["content-type", "authorization"]);
    assert_eq!(s.count(&[("name", "Beacon")]).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn read_api_filters_by_name_user_and_time() {
    let s = TestServer::start().await;
    let batch = json!({"batch": [
        {"type": "track", "event": "a", "userId": "x", "timestamp": "2024-01-01T00:00:00Z"},
        {"type": "track", "event": "a", "userId": "y", "timestamp": "2024-01-02T00:00:00Z"},
        {"type": "track", "event": "b", "anonymousId": "x", "timestamp": "2024-01-03T00:00:00Z"}
    ]});
    s.post("/v1/batch", &batch).await;
    assert_eq!(s.count(&[]).await, 3);
    assert_eq!(s.count(&[("name", "a")]).await, 2);
    assert_eq!(s.count(&[("user", "x")]).await, 2);
    assert_eq!(s.count(&[("from", "2024-01-02T00:00:00Z")]).await, 2);
    assert_eq!(s.count(&[("from", "2024-01-01T12:00:00Z"), ("to", "2024-01-02T12:00:00Z")]).await, 1);
    let newest = s.events(&[("limit", "1")]).await;
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["name"], "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn lone_surrogates_from_javascript_are_kept_as_replacement_characters() {
    let s = TestServer::start().await;
    // What a browser's `JSON.stringify` writes for strings cut in the middle
    // of an emoji: half a surrogate pair, escaped. A pair stays whole.
    let body = r#"{"batch":[
        {"type":"track","event":"Cut \ud83d","userId":"u1","properties":{"title":"Hi \ude00!","whole":"\ud83d\ude00"}},
        {"type":"track","event":"Fine","userId":"u1","properties":{"path":"C:\\ud83d"}}
    ]}"#;
    let r = s
        .client
        .post(s.url("/v1/batch"))
        .basic_auth(&s.project.write_key, None::<&str>)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let e = s.only_event("Cut \u{fffd}").await;
    assert_eq!(e["properties"], json!({"title": "Hi \u{fffd}!", "whole": "\u{1f600}"}));
    let e = s.only_event("Fine").await;
    assert_eq!(e["properties"]["path"], "C:\\ud83d", "an escaped backslash is not an escape");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_browser_sdks_short_paths_take_their_calls() {
    let s = TestServer::start().await;
    // As Analytics Next sends them with `apiHost` pointed here: the key in
    // the body, `text/plain` (no CORS preflight), a path per call type.
    let key = &s.project.write_key;
    let calls = [
        ("/v1/t", json!({"type": "track", "event": "Short Track", "userId": "u1", "writeKey": key})),
        ("/v1/p", json!({"type": "page", "name": "Home", "anonymousId": "a1", "writeKey": key})),
        ("/v1/s", json!({"type": "screen", "name": "Main", "userId": "u1", "writeKey": key})),
        ("/v1/i", json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "writeKey": key})),
        ("/v1/g", json!({"type": "group", "userId": "u1", "groupId": "acme", "writeKey": key})),
        ("/v1/a", json!({"type": "alias", "userId": "u1", "previousId": "a1", "writeKey": key})),
        (
            "/v1/b",
            json!({"writeKey": key, "sentAt": "2024-03-01T12:00:00.000Z", "batch": [
                {"type": "track", "event": "Short Batch", "userId": "u1"},
                {"type": "track", "event": "Short Batch", "userId": "u2"},
            ]}),
        ),
    ];
    for (path, body) in &calls {
        let r = s
            .client
            .post(s.url(path))
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    assert_eq!(s.count(&[]).await, 8);
    assert_eq!(s.count(&[("name", "Short Batch")]).await, 2);
    for (name, kind) in [("Short Track", "track"), ("$pageview", "page"), ("$screen", "screen"), ("$group", "group")] {
        assert_eq!(s.only_event(name).await["type"], kind);
    }
    assert_eq!(s.user_traits("u1").await.expect("identify stores the person")["plan"], "pro");
    assert_eq!(s.identity("a1").await.as_deref(), Some("u1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cdn_settings_send_the_browser_sdk_here_with_everything_else_off() {
    let s = TestServer::start().await;
    let key = s.project.write_key.clone();
    let settings = |key: String, proto: Option<&'static str>| {
        let mut request = s.client.get(s.url(&format!("/v1/projects/{key}/settings")));
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        request.send()
    };
    let r = settings(key.clone(), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*", "Analytics Next fetches them from the page");
    assert_eq!(r.headers()["vary"], "Host, X-Forwarded-Proto", "cached apart per host");
    let body: serde_json::Value = r.json().await.unwrap();
    let segment = &body["integrations"]["Segment.io"];
    let host = s.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    assert_eq!(segment["apiKey"], key.as_str());
    assert_eq!(segment["apiHost"], format!("{host}/v1"));
    assert_eq!(segment["protocol"], "http", "the request came in plain HTTP");
    assert_eq!(body["metrics"]["sampleRate"], 0, "no metrics sent to Segment");
    assert_eq!(body["remotePlugins"], json!([]));
    assert_eq!(body["integrations"].as_object().unwrap().len(), 1, "no device-mode destinations: {body}");

    // Behind a proxy that terminates TLS, the browser must post over HTTPS.
    for proto in ["https", "https, http"] {
        let body: serde_json::Value = settings(key.clone(), Some(proto)).await.unwrap().json().await.unwrap();
        assert_eq!(body["integrations"]["Segment.io"]["protocol"], "https", "{proto}");
    }

    // What the settings say works: a track at the short path they lead to.
    let track = json!({"type": "track", "event": "Via Settings", "userId": "u1", "writeKey": key});
    let url = format!("{}://{}/t", segment["protocol"].as_str().unwrap(), segment["apiHost"].as_str().unwrap());
    assert_eq!(s.client.post(url).body(track.to_string()).send().await.unwrap().status(), 200);
    assert_eq!(s.count(&[("name", "Via Settings")]).await, 1);

    for bad in ["no-such-key".to_owned(), s.project.read_key.clone()] {
        let r = settings(bad.clone(), None).await.unwrap();
        assert_eq!(r.status(), 401, "{bad}");
    }

    // A made-up Host never reaches the cached answer.
    for host in ["a\"b</script>", "evil.example/x", "h:99999", "[::1"] {
        let url = s.url(&format!("/v1/projects/{key}/settings"));
        let r = s.client.get(url).header("host", host).send().await.unwrap();
        assert_eq!(r.status(), 400, "{host}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], "Host", "{host}: {body}");
    }
    let url = s.url(&format!("/v1/projects/{key}/settings"));
    let r = s.client.get(url).header("host", "[::1]:8080").send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["integrations"]["Segment.io"]["apiHost"], "[::1]:8080/v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oauth_bearer_token_leaves_the_write_key_in_the_body_to_decide() {
    let s = TestServer::start().await;
    let send = |bearer: String, body: serde_json::Value| {
        s.client.post(s.url("/v1/batch")).bearer_auth(bearer).json(&body).send()
    };
    let batch = |user: &str, key: Option<&str>| {
        let mut body = json!({"batch": [{"type": "track", "userId": user, "event": "OAuth"}]});
        if let Some(key) = key {
            body["writeKey"] = json!(key);
        }
        body
    };
    // analytics-python's OAuth mode: its access token, the write key in the body.
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".to_owned();
    let r = send(token.clone(), batch("oauth-user", Some(&s.project.write_key))).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The token alone is no key; a Leanloop key as the token still decides.
    let r = send(token, batch("no-key", None)).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = send(s.project.read_key.clone(), batch("read-key", Some(&s.project.write_key))).await.unwrap();
    assert_eq!(r.status(), 401, "a read key is refused for ingest however it is sent");
    let r = send(s.project.write_key.clone(), batch("bearer-key", None)).await.unwrap();
    assert_eq!(r.status(), 200);
    s.settle().await;
    assert_eq!(s.count(&[("user", "oauth-user")]).await, 1);
    assert_eq!(s.count(&[("user", "bearer-key")]).await, 1);
    assert_eq!(s.count(&[("name", "OAuth")]).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_boolean_names_no_release_page_or_category() {
    let s = TestServer::start().await;
    let context = json!({"app": {"version": false}, "page": {"url": true}, "release": true});
    let r = s.post("/v1/track", &json!({"userId": "flags", "event": "Flagged", "context": context})).await;
    assert_eq!(r.status(), 200);
    let feedback = json!({"userId": "flags", "score": 9, "release": true, "category": false, "page": true});
    assert_eq!(s.post("/v1/feedback", &feedback).await.status(), 200);
    let events = s.events(&[("user", "flags")]).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        assert!(event["release"].is_null() && event["url"].is_null(), "{event}");
    }
    let feedback = events.iter().find(|e| e["name"] == "$feedback").unwrap();
    assert!(feedback["properties"].get("category").is_none_or(|c| c.is_null()), "{feedback}");
}
