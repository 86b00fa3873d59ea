//! Back-pressure, graceful shutdown, health, metrics and the read API's
//! authorisation.

use leanloop_control::ControlPlane;
use leanloop_tests::process::Process;
use leanloop_tests::{eventually, message_id, metric, TestServer};
use serde_json::{json, Value};

fn batch(n: usize, name: &str) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "track", "event": name, "userId": format!("u{i}"), "messageId": message_id()}))
        .collect();
    json!({ "batch": events })
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_log_a_full_queue_answers_503_with_retry_after_and_recovers() {
    let s = TestServer::start_with(|c| {
        c.collector.log = false;
        c.collector.queue_capacity = 1000;
    })
    .await;
    let queue = s.collector.queue();
    queue.pause();
    assert_eq!(s.post("/v1/batch", &batch(600, "first")).await.status(), 200);
    let r = s.post("/v1/batch", &batch(600, "refused")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let answer: Value = r.json().await.unwrap();
    assert!(answer["error"]["message"].as_str().unwrap().contains("queue is full"));
    assert_eq!(s.post("/v1/batch", &batch(350, "second")).await.status(), 200);
    assert_eq!(queue.backlog().used, 950);
    let r = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "over 90% full is not ready");
    let why: Value = r.json().await.unwrap();
    assert!(why["error"].as_str().is_some_and(|e| e.contains("950 of 1000 items not yet stored")), "{why}");

    queue.resume();
    assert_eq!(s.count(&[]).await, 950, "every acknowledged event is stored");
    assert_eq!(s.count(&[("name", "refused")]).await, 0);
    assert_eq!(s.client.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(s.post("/v1/batch", &batch(600, "after")).await.status(), 200);
    assert_eq!(s.count(&[("name", "after")]).await, 600);
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_stores_what_was_acknowledged() {
    let s = TestServer::start().await;
    let project = s.project.clone();
    s.collector.queue().pause();
    for _ in 0..5 {
        assert_eq!(s.post("/v1/batch", &batch(200, "queued")).await.status(), 200);
    }
    assert!(s.collector.queue().backlog().used > 0, "held in the log");
    let dir = s.stop().await;

    let s = leanloop_tests::TestServer::start_in(dir, |_| {}).await;
    assert_eq!(s.project, project, "keys survive a restart");
    assert_eq!(s.count(&[("name", "queued")]).await, 1000);
}

/// Load balancers take an instance out once `/readyz` fails: for
/// `shutdown_delay_secs` after the stop signal it does, while requests,
/// on new connections too, are still taken and stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_server_is_not_ready_but_takes_requests_for_its_delay() {
    let s = TestServer::start_with(|c| c.shutdown_delay = std::time::Duration::from_secs(5)).await;
    let (client, ready, track, key) =
        (s.client.clone(), s.url("/readyz"), s.url("/v1/track"), s.project.write_key.clone());
    assert_eq!(client.get(&ready).send().await.unwrap().status(), 200);
    let stopped = tokio::spawn(s.stop());
    let answer: Value = eventually("/readyz to answer 503", || async {
        let r = client.get(&ready).send().await.ok()?;
        if r.status() != 503 {
            return None;
        }
        r.json().await.ok()
    })
    .await;
    assert_eq!(answer["ready"], false);
    assert_eq!(answer["error"], "the server is stopping");
    let event = json!({"event": "during the delay", "userId": "u1", "messageId": message_id()});
    let r = reqwest::Client::new().post(&track).basic_auth(&key, Some("")).json(&event).send().await.unwrap();
    assert_eq!(r.status(), 200, "a new connection is still served");

    let dir = tokio::time::timeout(leanloop_tests::DEADLINE, stopped).await.expect("stops after its delay").unwrap();
    let s = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(s.count(&[("name", "during the delay")]).await, 1);
}

/// A server process of its own: the metrics it shows count this test's
/// requests alone, not those of the tests running beside it.
#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics() {
    let data = tempfile::tempdir().unwrap();
    let project = ControlPlane::open(&data.path().join("control.sqlite")).unwrap().create_project("metrics").unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", &data.path().to_string_lossy()].map(str::to_owned);
    let server = Process::start(&args);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let post = |key: Option<&str>, path: &str, body: Value| {
        let request = client.post(url(path)).json(&body);
        let request = match key {
            Some(key) => request.basic_auth(key, Some("")),
            None => request,
        };
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(client.get(url("/healthz")).send().await.unwrap().status(), 200);
    let ready: Value = client.get(url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true);

    let write = Some(project.write_key.as_str());
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let posted = unix_now();
    assert_eq!(post(write, "/v1/batch", batch(3, "m")).await, 200);
    // A made-up method is counted as `other`, not as a series of its own.
    let made_up = reqwest::Method::from_bytes(b"BREW").unwrap();
    assert_eq!(client.request(made_up, url("/v1/track")).send().await.unwrap().status(), 405);
    assert_eq!(post(write, "/v1/track", json!({"userId": "u"})).await, 400, "no event name");
    assert_eq!(post(None, "/v1/track", json!({})).await, 401, "no key");
    let none_good = json!({"batch": [{"type": "track", "userId": "u"}]});
    assert_eq!(post(write, "/v1/batch", none_good).await, 400);
    // A deploy key used for ingest.
    let event = json!({"userId": "u", "event": "x"});
    assert_eq!(post(Some(&project.deploy_key), "/v1/track", event).await, 401);

    let scrape = || async { client.get(url("/metrics")).send().await.unwrap().text().await.unwrap() };
    // Written, and then acknowledged in the log: the backlog is read at
    // the scrape, and a write is counted just before its acknowledgement.
    let text = eventually("metrics to show the write", || async {
        let text = scrape().await;
        let written = metric(&text, "leanloop_store_events_written_total") == Some(3.0);
        (written && metric(&text, "leanloop_log_backlog_bytes") == Some(0.0)).then_some(text)
    })
    .await;
    for (series, expected) in [
        ("leanloop_ingest_events_accepted_total{source=\"segment\"}", 3.0),
        ("leanloop_ingest_requests_rejected_total{reason=\"bad_field\"}", 1.0),
        ("leanloop_ingest_requests_rejected_total{reason=\"missing_key\"}", 1.0),
        ("leanloop_ingest_requests_rejected_total{reason=\"every_event_refused\"}", 1.0),
        ("leanloop_ingest_requests_rejected_total{reason=\"secret_key\"}", 1.0),
        // The single event without a name, and the batch's one.
        ("leanloop_ingest_events_rejected_total{reason=\"bad_field\"}", 2.0),
        ("leanloop_log_backlog_bytes", 0.0),
        // Rare trouble, and sources not used, are counted from 0.
        ("leanloop_log_write_errors_total", 0.0),
        ("leanloop_store_write_errors_total", 0.0),
        ("leanloop_log_damaged_bytes_total", 0.0),
        ("leanloop_log_read_retries_total", 0.0),
        ("leanloop_ingest_events_accepted_total{source=\"posthog\"}", 0.0),
        // Per route, by its template, method and status.
        ("leanloop_http_requests_total{route=\"/v1/batch\",method=\"POST\",status=\"200\"}", 1.0),
        ("leanloop_http_requests_total{route=\"/v1/batch\",method=\"POST\",status=\"400\"}", 1.0),
        ("leanloop_http_requests_total{route=\"/v1/track\",method=\"POST\",status=\"400\"}", 1.0),
        ("leanloop_http_requests_total{route=\"/v1/track\",method=\"POST\",status=\"401\"}", 2.0),
        ("leanloop_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"200\"}", 1.0),
        ("leanloop_http_request_duration_seconds_count{route=\"/v1/batch\",method=\"POST\"}", 2.0),
        ("leanloop_http_requests_total{route=\"/v1/track\",method=\"other\",status=\"405\"}", 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(expected), "{series} in:\n{text}");
    }
    for histogram in ["leanloop_log_fsync_seconds_count", "leanloop_store_write_seconds_count"] {
        assert!(metric(&text, histogram).is_some_and(|n| n >= 1.0), "{histogram} in:\n{text}");
    }
    // The write just delivered, not only the start, is the last delivery.
    let delivered = metric(&text, "leanloop_log_last_delivery_timestamp_seconds");
    assert!(delivered.is_some_and(|at| at >= posted && at <= unix_now()), "{delivered:?} after {posted}");
    // The store's own time per write, without the second (the default
    // `delivery_interval_ms`) a write from the log waits for more events.
    let writes = metric(&text, "leanloop_store_write_seconds_count").unwrap_or_default();
    let took = metric(&text, "leanloop_store_write_seconds_sum").unwrap_or_default();
    assert!(took / writes < 0.5, "{took} s over {writes} writes");
    // The scrape's own connection at least; the client keeps a few open.
    let open = metric(&text, "leanloop_http_connections_open");
    assert!(open.is_some_and(|n| (1.0..=8.0).contains(&n)), "{open:?} in:\n{text}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_api_needs_the_right_read_key() {
    let s = TestServer::start().await;
    let other = s.control.create_project("other").unwrap();
    let path = |id: i64| s.url(&format!("/api/v1/projects/{id}/events/count"));
    let status = |r: reqwest::Response| r.status().as_u16();

    assert_eq!(status(s.client.get(path(s.project.id)).send().await.unwrap()), 401);
    assert_eq!(status(s.client.get(path(s.project.id)).bearer_auth(&s.project.write_key).send().await.unwrap()), 401);
    assert_eq!(status(s.client.get(path(s.project.id)).bearer_auth("llr_unknown").send().await.unwrap()), 401);
    assert_eq!(status(s.client.get(path(s.project.id)).bearer_auth(&other.read_key).send().await.unwrap()), 403);
    assert_eq!(status(s.client.get(path(other.id)).bearer_auth(&other.read_key).send().await.unwrap()), 200);

    let bad = |query: &'static [(&'static str, &'static str)], field: &'static str| {
        let request = s.client.get(path(s.project.id)).bearer_auth(&s.project.read_key).query(query);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 400, "{query:?}");
            let answer: Value = r.json().await.unwrap();
            assert_eq!(answer["error"]["field"], field, "{query:?}: {answer}");
        }
    };
    bad(&[("from", "yesterday")], "from").await;
    bad(&[("from", "2024-02-01T00:00:00Z"), ("to", "2024-01-01T00:00:00Z")], "from").await;
    bad(&[("colour", "red")], "colour").await;
    let r =
        s.client.get(s.url("/api/v1/projects/abc/events/count")).bearer_auth(&s.project.read_key).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Injection attempts are just values.
    let r = s
        .client
        .get(path(s.project.id))
        .bearer_auth(&s.project.read_key)
        .query(&[("name", "x' OR 1=1 --"), ("user", "\"; DROP TABLE events; --")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["count"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_write_key_replaces_the_old_one_in_a_running_server() {
    let s = TestServer::start().await;
    let send = |key: String| {
        let event = json!({"userId": "u", "event": "e", "messageId": message_id()});
        s.client.post(s.url("/v1/track")).basic_auth(key, Some("")).json(&event).send()
    };
    let old = s.project.write_key.clone();
    assert_eq!(send(old.clone()).await.unwrap().status(), 200);
    let out = std::process::Command::new(leanloop_tests::process::leanloop_bin())
        .args(["project", "rotate-key", &s.project.id.to_string(), "--kind", "write", "--json", "--data-dir"])
        .arg(s.data_dir.path())
        .output()
        .expect("leanloop runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&rotated["id"], &rotated["kind"]), (&json!(s.project.id), &json!("write")));
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert!(new.starts_with("llw_") && new != old, "{new}");
    assert_eq!(send(new).await.unwrap().status(), 200, "the new key works at once");
    // The old one is refused once the server's cached look-up expires (30 s);
    // what it sent until then is stored.
    let deadline = std::time::Duration::from_secs(45);
    let accepted = std::sync::atomic::AtomicU64::new(2);
    leanloop_tests::eventually_within("the old key refused", deadline, || async {
        match send(old.clone()).await.ok()?.status().as_u16() {
            200 => accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            401 => return Some(()),
            _ => 0,
        };
        None
    })
    .await;
    assert_eq!(s.count(&[]).await, accepted.into_inner());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_lists_projects_without_secrets() {
    let s = TestServer::start().await;
    let other = s.control.create_project("Second shop").unwrap();
    let html = s.client.get(s.url("/")).send().await.unwrap().text().await.unwrap();
    for project in [&s.project, &other] {
        // The write key is public: it ships in every page that sends events.
        assert!(html.contains(&project.write_key), "{html}");
        assert!(!html.contains(&project.read_key), "a read key on the page");
        assert!(!html.contains(&project.deploy_key), "a deploy key on the page");
    }
    assert!(html.contains("Second shop"), "{html}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_answers_503_and_takes_events_again_once_delivered() {
    let s = TestServer::start_with(|c| {
        c.collector.max_body_bytes = 64 * 1024;
        c.collector.log_max_bytes = 256 * 1024;
    })
    .await;
    s.collector.queue().pause();
    let (accepted, refused) = s.post_until_refused(100, 100_000, || batch(100, "fill")).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let answer: Value = refused.json().await.unwrap();
    assert!(answer["error"]["message"].as_str().unwrap().contains("full"), "{answer}");
    let ready: Value = s.client.get(s.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!((ready["ready"].clone(), ready["backlog_unit"].clone()), (json!(false), json!("bytes")));

    s.collector.queue().resume();
    assert_eq!(s.count(&[("name", "fill")]).await, accepted, "every acknowledged event is stored");
    assert_eq!(s.post("/v1/batch", &batch(100, "after")).await.status(), 200);
    assert_eq!(s.count(&[("name", "after")]).await, 100);
}
