//! Compatibility with the real Python SDKs from PyPI, sending to a running
//! server exactly as they would to Segment, RudderStack or PostHog.
//!
//! The interpreter comes from `LEANLOOP_TEST_PYTHON` (the test script sets it
//! to a virtualenv with `tests/clients/requirements.txt` installed). Missing
//! SDKs fail these tests: they are never skipped.

use leanloop_tests::{test_python, TestServer};
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

#[tokio::test(flavor = "multi_thread")]
async fn segment_analytics_python() {
    let s = TestServer::start().await;
    run_client(&s, "segment_client.py").await;
    // 6 calls + 250 tracks, plain and gzip-compressed.
    assert_eq!(s.count(&[]).await, 512);
    for tag in ["plain", "gz"] {
        assert_eq!(s.count(&[("user", &format!("py-{tag}-bulk"))]).await, 250);
        let user = format!("py-{tag}-user");
        let events = s.events(&[("user", &user)]).await;
        let mut names: Vec<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
        names.sort_unstable();
        assert_eq!(names, ["$alias", "$group", "$identify", "$pageview", "$screen", "Python Track"]);
        let track = events.iter().find(|e| e["name"] == "Python Track").unwrap();
        assert_eq!(track["release"], "5.0.0");
        assert_eq!(track["library"], "analytics-python");
        assert_eq!(track["ip"], "192.0.2.0");
        assert_eq!(track["properties"]["tag"], tag);
        assert_eq!(track["uuid"], leanloop_collector::event_uuid(Some(&format!("py-{tag}-track-1"))).to_string());
        let page = events.iter().find(|e| e["name"] == "$pageview").unwrap();
        assert_eq!(page["page_name"], "Intro");
        assert_eq!(page["utm_source"], "py");
        assert_eq!(s.user_traits(&user).await.unwrap()["email"], format!("{tag}@py.example"));
        assert_eq!(s.identity(&format!("py-{tag}-anon")).await, Some(user.clone()));
        assert_eq!(s.identity(&format!("py-{tag}-old")).await, Some(user));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn posthog_python() {
    let s = TestServer::start().await;
    run_client(&s, "posthog_client.py").await;
    // capture + $set + alias + groupidentify + 250 captures, plain and gzip.
    assert_eq!(s.count(&[]).await, 508);
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
}

#[tokio::test(flavor = "multi_thread")]
async fn rudder_sdk_python() {
    let s = TestServer::start().await;
    run_client(&s, "rudder_client.py").await;
    // 6 calls + 250 tracks, gzip-compressed (the SDK's default) and plain.
    assert_eq!(s.count(&[]).await, 512);
    for tag in ["gz", "plain"] {
        assert_eq!(s.count(&[("user", &format!("rs-{tag}-bulk"))]).await, 250);
        let user = format!("rs-{tag}-user");
        let events = s.events(&[("user", &user)]).await;
        let mut names: Vec<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
        names.sort_unstable();
        assert_eq!(names, ["$alias", "$group", "$identify", "$pageview", "$screen", "Rudder Track"]);
        let track = events.iter().find(|e| e["name"] == "Rudder Track").unwrap();
        assert_eq!(track["release"], "3.2.1");
        assert_eq!(track["ip"], "198.51.100.0");
        assert_eq!(track["properties"]["tag"], tag);
        assert_eq!(track["uuid"], leanloop_collector::event_uuid(Some(&format!("rs-{tag}-track-1"))).to_string());
        let page = events.iter().find(|e| e["name"] == "$pageview").unwrap();
        assert_eq!(page["page_name"], "Intro");
        assert_eq!(page["utm_source"], "rs");
        let group = events.iter().find(|e| e["name"] == "$group").unwrap();
        assert_eq!(group["properties"]["$group_id"], format!("rs-{tag}-group"));
        // The identify's traits travel in `context.traits` only.
        assert_eq!(s.user_traits(&user).await.unwrap()["email"], format!("{tag}@rs.example"));
        assert_eq!(s.identity(&format!("rs-{tag}-anon")).await, Some(user.clone()));
        assert_eq!(s.identity(&format!("rs-{tag}-old")).await, Some(user));
    }
}
