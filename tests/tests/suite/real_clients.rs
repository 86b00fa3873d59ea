//! Compatibility with the real Python SDKs from PyPI, sending to a running
//! server exactly as they would to Segment, RudderStack or PostHog.
//!
//! The interpreter comes from `LEANLOOP_TEST_PYTHON` (the test script sets it
//! to a virtualenv with `tests/clients/requirements.txt` installed). Missing
//! SDKs fail these tests: they are never skipped.

use leanloop_tests::{test_python, TestServer};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

/// Runs a client script against `s` off the async runtime.
async fn run_client(s: &TestServer, script: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients").join(script);
    let (host, key) = (s.base.clone(), s.project.write_key.clone());
    let output =
        tokio::task::spawn_blocking(move || Command::new(test_python()).arg(&path).arg(host).arg(key).output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); set LEANLOOP_TEST_PYTHON", test_python()));
    assert!(
        output.status.success(),
        "{script} failed:\n{}\n{}\n(install tests/clients/requirements.txt; the test script does)",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Segment-API client's run: per tag (plain, gz) the six call types
/// under `{prefix}-{tag}-…` ids, then 250 tracks.
struct SegmentRun {
    prefix: &'static str,
    track: &'static str,
    release: &'static str,
    /// The IP the client put in the context, anonymised.
    ip: &'static str,
}

/// Checks that everything a [`SegmentRun`] sent is stored as sent.
async fn check_segment_run(s: &TestServer, run: SegmentRun) {
    let SegmentRun { prefix, track: track_name, release, ip } = run;
    // 6 calls + 250 tracks, plain and gzip-compressed.
    assert_eq!(s.count(&[]).await, 512);
    for tag in ["plain", "gz"] {
        assert_eq!(s.count(&[("user", &format!("{prefix}-{tag}-bulk"))]).await, 250);
        let user = format!("{prefix}-{tag}-user");
        let events = s.events(&[("user", &user)]).await;
        let mut names: Vec<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
        names.sort_unstable();
        assert_eq!(names, ["$alias", "$group", "$identify", "$pageview", "$screen", track_name]);
        let track = events.iter().find(|e| e["name"] == track_name).unwrap();
        assert_eq!(track["release"], release);
        assert_eq!(track["library"], "analytics-python");
        assert_eq!(track["ip"], ip);
        assert_eq!(track["properties"]["tag"], tag);
        let message_id = format!("{prefix}-{tag}-track-1");
        assert_eq!(track["uuid"], leanloop_collector::event_uuid(Some(&message_id)).to_string());
        let page = events.iter().find(|e| e["name"] == "$pageview").unwrap();
        assert_eq!(page["page_name"], "Intro");
        assert_eq!(page["utm_source"], prefix);
        let group = events.iter().find(|e| e["name"] == "$group").unwrap();
        assert_eq!(group["properties"]["$group_id"], format!("{prefix}-{tag}-group"));
        assert_eq!(s.user_traits(&user).await.unwrap()["email"], format!("{tag}@{prefix}.example"));
        assert_eq!(s.identity(&format!("{prefix}-{tag}-anon")).await, Some(user.clone()));
        assert_eq!(s.identity(&format!("{prefix}-{tag}-old")).await, Some(user));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn segment_analytics_python() {
    let s = TestServer::start().await;
    run_client(&s, "segment_client.py").await;
    check_segment_run(&s, SegmentRun { prefix: "py", track: "Python Track", release: "5.0.0", ip: "192.0.2.0" }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn posthog_python() {
    let s = TestServer::start().await;
    run_client(&s, "posthog_client.py").await;
    // visit + capture + $set + alias + groupidentify + 250 captures, plain
    // and gzip.
    assert_eq!(s.count(&[]).await, 510);
    for (tag, uuid) in
        [("plain", "00000000-0000-4000-8000-000000000002"), ("gz", "00000000-0000-4000-8000-000000000001")]
    {
        assert_eq!(s.count(&[("user", &format!("ph-{tag}-bulk"))]).await, 250);
        let user = format!("ph-{tag}-user");
        let capture = s.events(&[("name", "Python Capture"), ("user", &user)]).await.remove(0);
        assert_eq!(capture["uuid"], uuid);
        assert_eq!(capture["release"], "7.0.0");
        assert_eq!(capture["library"], "posthog-python");
        assert_eq!(capture["properties"]["n"], 1);
        assert_eq!(s.user_traits(&user).await.unwrap()["email"], format!("{tag}@ph.example"));
        assert_eq!(s.identity(&format!("ph-{tag}-old")).await.as_deref(), Some(user.as_str()));
    }
    assert_eq!(s.count(&[("name", "$group")]).await, 2);
    // The visitor's event (sent with its distinct_id as the user id) is the
    // user's once the alias links them: one person per tag went from the
    // visit to the capture.
    let funnel = json!({"steps": [{"event": "Python Visit"}, {"event": "Python Capture"}],
                        "date_from": "2024-05-01T00:00:00Z", "date_to": "2024-05-02T00:00:00Z"});
    let (status, answer) = s.insight("funnel", &funnel).await;
    assert_eq!((status, &answer["steps"][1]["count"]), (200, &json!(2)), "{answer}");
    let people = json!({"series": [{"math": "unique_users"}], "date_from": "2024-05-01T00:00:00Z",
                        "date_to": "2024-05-02T00:00:00Z"});
    let (status, answer) = s.insight("trend", &people).await;
    assert_eq!((status, &answer["series"][0]["aggregate"]), (200, &json!(2)), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn posthog_python_v1_capture_and_ai_events() {
    let s = TestServer::start().await;
    run_client(&s, "posthog_v1_client.py").await;
    // Per compression: a capture, 120 more and an AI generation; the
    // oversized event is dropped; one personless event.
    assert_eq!(s.count(&[]).await, 3 * 122 + 1);
    assert_eq!(s.count(&[("name", "V1 Personless")]).await, 1);
    assert_eq!(s.count(&[("name", "V1 Too Big")]).await, 0);
    assert_eq!(s.count(&[("name", "$ai_generation")]).await, 3);
    for compression in ["none", "gzip", "deflate"] {
        let user = format!("v1-{compression}-user");
        assert_eq!(s.count(&[("user", &user), ("name", "V1 Bulk")]).await, 120);
        let capture = s.events(&[("name", "V1 Capture"), ("user", &user)]).await.remove(0);
        assert_eq!(capture["release"], "8.0.0");
        // v1 moves these out of the properties: the session beside them,
        // the library into a header.
        assert_eq!(capture["session_id"], format!("s-{compression}"));
        assert_eq!(capture["library"], "posthog-python");
        assert_eq!(capture["properties"]["n"], 1);
        // Sent at once from this machine: skew correction moves it little.
        let at = capture["timestamp"].as_str().unwrap();
        assert!(at.starts_with("2024-06-01T09:00:0"), "{at}");
        assert_eq!(s.user_traits(&user).await.unwrap()["plan"], compression);
        let ai = s.events(&[("name", "$ai_generation"), ("user", &user)]).await.remove(0);
        assert_eq!(ai["properties"]["$ai_model"], "small-1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rudder_sdk_python() {
    let s = TestServer::start().await;
    // RudderStack's SDK gzips by default, and sends an identify's traits in
    // `context.traits` only.
    run_client(&s, "rudder_client.py").await;
    check_segment_run(&s, SegmentRun { prefix: "rs", track: "Rudder Track", release: "3.2.1", ip: "198.51.100.0" })
        .await;
}
