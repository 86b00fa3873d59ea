//! The query and ingest APIs under generated input: schemathesis (PyPI)
//! reads the server's own OpenAPI document and sends thousands of requests
//! built from it, valid and invalid (wrong types, out-of-range numbers, odd
//! strings, missing fields), to every events, insights, cohorts and people
//! operation, and to every Segment, PostHog and feedback endpoint. Whatever
//! it sends, the answer must not be a 5xx; and on the ingest endpoints a
//! request the document allows must be accepted.
//!
//! It runs from the same virtualenv as the SDK clients
//! (`LEANLOOP_TEST_PYTHON`); a missing schemathesis fails the test. The
//! pipeline operations are left out: their runs start containers.

use leanloop_tests::{message_id, test_python, TestServer};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

/// The `schemathesis` command beside the test interpreter.
fn schemathesis() -> PathBuf {
    PathBuf::from(test_python()).with_file_name("schemathesis")
}

/// Test cases schemathesis reports as generated and as passed, from its
/// summary line (`N generated, N passed`).
fn summary(output: &str) -> Option<(u64, u64)> {
    let line = output.lines().rev().find(|l| l.contains(" generated, "))?;
    let number_before = |word: &str| -> Option<u64> {
        let at = line.find(word)?;
        line[..at].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((number_before(" generated")?, number_before(" passed")?))
}

/// Runs schemathesis against `s` on the operations whose paths match
/// `paths`, authorised by `auth`, and checks that it sent at least
/// `at_least` requests and that every one passed `checks`.
async fn fuzz(s: &TestServer, auth: [&str; 2], paths: &str, checks: &str, at_least: u64) {
    // Every path's project id is this server's project.
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("schemathesis.toml"), format!("[parameters]\n\"path.id\" = {}\n", s.project.id))
        .unwrap();
    let command = schemathesis();
    let mut run = Command::new(&command);
    run.current_dir(config.path())
        .arg("run")
        .arg(s.url("/api/openapi.json"))
        .args(["--url", &s.base])
        .args(auth)
        .args(["--checks", checks, "--max-examples", "25", "--generation-deterministic"])
        .args(["--include-path-regex", paths])
        .env("NO_COLOR", "1");
    let output = tokio::task::spawn_blocking(move || run.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); install tests/clients/requirements.txt", command.display()));
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found failures ({checks}) or could not run:\n{text}");
    let (generated, passed) = summary(&text).unwrap_or_else(|| panic!("no summary in schemathesis' output:\n{text}"));
    // A run that selected nothing also succeeds: it must have sent requests.
    assert!(generated >= at_least, "only {generated} requests generated:\n{text}");
    assert_eq!(passed, generated, "{text}");
    // The server still takes and stores events afterwards.
    let after = json!({"userId": "after", "event": "after_fuzz", "messageId": message_id()});
    assert_eq!(s.post("/v1/track", &after).await.status(), 200);
    assert_eq!(s.count(&[("name", "after_fuzz")]).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_never_get_a_server_error() {
    let s = TestServer::start().await;
    // Some traffic, so the queries have rows, people and releases to read.
    let at = "2024-05-01T10:00:00.000Z";
    let mut batch = Vec::new();
    for i in 0..40 {
        batch.push(
            json!({"type": "track", "event": (["signup", "checkout", "pay"][i % 3]), "userId": format!("u{}", i % 7),
            "messageId": message_id(), "timestamp": at, "context": {"app": {"version": format!("1.{}", i % 2)}},
            "properties": {"plan": (["pro", "free"][i % 2]), "amount": i}}),
        );
    }
    assert_eq!(s.post("/v1/batch", &json!({"batch": batch})).await.status(), 200);
    s.settle().await;
    let bearer = format!("Authorization: Bearer {}", s.project.read_key);
    fuzz(&s, ["-H", &bearer], "/(events|insights|cohorts|people)", "not_a_server_error", 500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_ingest_requests_never_get_a_server_error() {
    let s = TestServer::start().await;
    // Every documented ingest route exists: without a key it is refused,
    // as unauthorised or, for a body it cannot read as its format, as bad.
    let doc: serde_json::Value = s.client.get(s.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let ingest: Vec<&String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, item)| item["post"]["tags"][0] == "ingest")
        .map(|(path, _)| path)
        .collect();
    assert!(ingest.len() >= 15, "{ingest:?}");
    for path in ingest {
        let status =
            s.client.post(s.url(path)).json(&json!({"event": "e", "userId": "u"})).send().await.unwrap().status();
        assert!(status == 401 || status == 400, "{path}: {status}");
    }
    let basic = format!("{}:", s.project.write_key);
    // The calls that send (not the settings SDKs fetch with a key in the path).
    let paths = "^/(v1/(?!projects/)|capture/|batch/|e/|i/v0/(e|ai/batch)/|i/v1/analytics/|flags/$|decide/)";
    fuzz(&s, ["--auth", &basic], paths, "not_a_server_error,positive_data_acceptance", 300).await;
    // What was acknowledged is readable: the events API answers and counts.
    let stored = s.count(&[]).await;
    assert_eq!(s.events(&[("limit", "1000")]).await.len() as u64, stored.min(1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_valid_openapi_3_0() {
    let s = TestServer::start().await;
    let document = s.client.get(s.url("/api/openapi.json")).send().await.unwrap().text().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document).unwrap();
    let mut validate = Command::new(test_python());
    validate.args(["-m", "openapi_spec_validator"]).arg(&path);
    let output = tokio::task::spawn_blocking(move || validate.output()).await.unwrap().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("OK"), "openapi-spec-validator refuses the document:\n{text}");
}

#[test]
fn reads_the_summary_line() {
    assert_eq!(summary("x\n  2300 generated, 2300 passed\n"), Some((2300, 2300)));
    assert_eq!(summary("  12 generated, 11 passed, 1 failed"), Some((12, 11)));
    assert_eq!(summary("no summary"), None);
}
