//! The delivery pipeline on the real Docker Engine and a real registry, with
//! nothing pulled: the fixture application is tested, built, pushed and
//! deployed; releases follow commits and roll back; failures, cancels,
//! secrets, webhooks, restarts and polling behave; nothing is left behind.

use futures::StreamExt;
use leanloop_tests::pipeline::{
    self, add_repo, call, docker_objects, fetch, finished, log_text, repo_with_file, step, trigger, Repo,
};
use leanloop_tests::{eventually, eventually_within};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;

fn case_label(case: &str) -> String {
    format!("leanloop.test.case={case}")
}

async fn live_release(s: &leanloop_tests::TestServer) -> Value {
    let (status, list) = call(s, Method::GET, "/releases?service=fixture-web&environment=production", None).await;
    assert_eq!(status, 200, "{list}");
    list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "live")
        .cloned()
        .unwrap_or_else(|| panic!("no live release in {list}"))
}

/// Every one of the release's `replicas` answers with `version`.
async fn serves(release: &Value, replicas: usize, version: &str) {
    let endpoints = release["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), replicas, "{replicas} replicas: {release}");
    for endpoint in endpoints {
        let body = fetch(endpoint.as_str().unwrap(), "/index.html").await;
        assert_eq!(body.trim(), format!("version: {version}"), "{endpoint}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_is_tested_built_pushed_deployed_and_rolled_back() {
    let case = "deploy";
    let s = pipeline::server(case).await;
    let repo = Repo::fixture();
    let repo_id = add_repo(&s, "fixture", &repo, json!({})).await;

    // First commit: test → build → push → deploy.
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    assert_eq!(run["commit"], repo.head());
    let run1 = finished(&s, run["id"].as_i64().unwrap()).await;
    let logs = log_text(&s, run1["id"].as_i64().unwrap()).await;
    assert_eq!(run1["status"], "success", "{run1}\n{logs}");
    assert_eq!(run1["environment"], "production");
    for name in ["test", "image", "deploy"] {
        let st = step(&run1, name);
        assert_eq!(st["status"], "success", "{st}");
        assert!(st["duration_ms"].as_i64().unwrap() > 0, "{st}");
    }
    assert_eq!(step(&run1, "test")["exit_code"], 0);
    assert!(logs.contains("[test] + ./test.sh"), "{logs}");
    assert!(logs.contains("[test] all tests passed"), "{logs}");
    let first = live_release(&s).await;
    let sha = repo.head();
    assert_eq!(first["commit"], sha);
    assert_eq!(first["version"], &sha[..7]);
    assert_eq!(first["strategy"], "rolling");
    assert!(first["digest"].as_str().unwrap().starts_with("sha256:"), "{first}");
    serves(&first, 2, "1").await;

    // Analytics links events of this version to the deploy time.
    let version = first["version"].as_str().unwrap().to_owned();
    let event = json!({ "userId": "u1", "event": "Viewed", "context": { "release": version } });
    assert_eq!(s.post("/v1/track", &event).await.status(), 200);
    s.settle().await;
    let url = s.url(&format!("/api/v1/projects/{}/insights/releases", s.project.id));
    let releases: Value = s
        .client
        .post(&url)
        .bearer_auth(&s.project.read_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["release"] == version.as_str())
        .cloned()
        .expect("the version is seen in events");
    let deployed = chrono::DateTime::parse_from_rfc3339(seen["deployed_at"].as_str().expect("deployed_at"))
        .unwrap()
        .timestamp_millis();
    assert_eq!(deployed, first["finished_at"].as_i64().unwrap());
    let url = s.url(&format!("/api/v1/projects/{}/insights/release-impact", s.project.id));
    let impact: Value = s
        .client
        .post(&url)
        .bearer_auth(&s.project.read_key)
        .json(&json!({ "release": version, "series": { "event": "Viewed" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(impact["release_time_source"], "deploy", "{impact}");
    assert_eq!(impact["candidate"]["value"], 1, "{impact}");

    // The image is in the registry under the commit and the branch.
    let tags: Value =
        reqwest::get(format!("http://{}/v2/project-{}/fixture-web/tags/list", pipeline::registry(), s.project.id))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let tags: Vec<&str> = tags["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tags.contains(&&sha[..7]) && tags.contains(&"main"), "{tags:?}");

    // Second commit: a second release replaces the first.
    repo.write("site/index.html", "version: 2\n");
    let sha2 = repo.commit("second version");
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run2 = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run2["status"], "success", "{run2}");
    assert_eq!(run2["number"], 2);
    let second = live_release(&s).await;
    assert_eq!(second["commit"], sha2);
    assert_ne!(second["id"], first["id"]);
    serves(&second, 2, "2").await;
    let (_, old) = call(&s, Method::GET, &format!("/releases/{}", first["id"]), None).await;
    assert_eq!(old["status"], "superseded");

    // A rollback's body names at most the release to return to: one of
    // this service's; a service never deployed there has nothing to roll
    // back.
    let to = |body: Value| call(&s, Method::POST, "/services/fixture-web/environments/production/rollback", Some(body));
    let (status, err) = to(json!({ "to": first["id"] })).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("to")), "{err}");
    let (status, err) = to(json!({ "release": 99_999 })).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("release")), "{err}");
    let (status, err) = call(&s, Method::POST, "/services/fixture-web/environments/nosuch/rollback", None).await;
    assert_eq!(status, 404, "{err}");

    // Rollback returns to the first release's image. Two at once start one
    // deploy: the other is refused, not run after it.
    let rollback = || call(&s, Method::POST, "/services/fixture-web/environments/production/rollback", None);
    let (one, other) = tokio::join!(rollback(), rollback());
    let (mut answers, refused): (Vec<_>, Vec<_>) = [one, other].into_iter().partition(|(status, _)| *status == 201);
    assert_eq!((answers.len(), refused.len()), (1, 1), "{answers:?} {refused:?}");
    assert_eq!(refused[0].0, 409, "{refused:?}");
    assert_eq!(refused[0].1["error"]["reason"], "deploy_in_progress", "{refused:?}");
    let (_, back) = answers.remove(0);
    assert_eq!(back["trigger"], "rollback");
    assert_eq!(back["commit"], sha);
    assert_eq!(back["rollback_of"], second["id"]);
    serves(&live_release(&s).await, 2, "1").await;
    let (_, rolled) = call(&s, Method::GET, &format!("/releases/{}", second["id"]), None).await;
    assert_eq!(rolled["status"], "rolled_back");
    // Rolling back again never returns to the release just rolled back:
    // nothing earlier ran healthy.
    let (status, again) = rollback().await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["reason"], "no_healthy_release", "{again}");
    assert!(again["error"]["message"].as_str().unwrap().contains("no earlier healthy release"), "{again}");

    // Restart the second run from its deploy step: earlier steps are reused.
    let (status, again) =
        call(&s, Method::POST, &format!("/runs/{}/restart", run2["id"]), Some(json!({ "from": "deploy" }))).await;
    assert_eq!(status, 201, "{again}");
    let again = finished(&s, again["id"].as_i64().unwrap()).await;
    assert_eq!(again["status"], "success", "{again}");
    assert_eq!(again["event"], "restart");
    assert_eq!(step(&again, "test")["status"], "reused");
    assert_eq!(step(&again, "image")["status"], "reused");
    assert_eq!(step(&again, "deploy")["status"], "success");
    let redeployed = live_release(&s).await;
    serves(&redeployed, 2, "2").await;
    assert_eq!(redeployed["digest"], second["digest"], "the reused image's pushed digest pins it: {redeployed}");

    // Run list; bad inputs are 4xx naming the field.
    let (_, runs) = call(&s, Method::GET, &format!("/repos/{repo_id}/runs?limit=2"), None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    assert_eq!(runs["runs"][0]["number"], 3, "newest first");
    let (status, err) =
        call(&s, Method::POST, &format!("/repos/{repo_id}/runs"), Some(json!({ "branch": "--upload-pack=x" }))).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("branch")), "{err}");
    let (status, err) =
        call(&s, Method::POST, &format!("/repos/{repo_id}/runs"), Some(json!({ "branch": "nope" }))).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("branch")), "{err}");
    let (status, err) =
        call(&s, Method::POST, &format!("/runs/{}/restart", run2["id"]), Some(json!({ "from": "nope" }))).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("from")), "{err}");
    let (status, err) = call(&s, Method::POST, &format!("/runs/{}/cancel", run2["id"]), None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (409, Some("conflict")), "a finished run cannot be cancelled");

    // A branch named like the second commit's short sha moves that image
    // tag to another commit's image: a restart from the deploy step refuses
    // to deploy it rather than deploy the wrong commit.
    repo.git(&["checkout", "-q", "-b", &sha2[..7]]);
    repo.write("site/index.html", "version: moved\n");
    repo.commit("named like a commit");
    let run = trigger(&s, repo_id, json!({ "branch": &sha2[..7] })).await;
    let moved = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(step(&moved, "image")["status"], "success", "{moved}");
    let (status, again) =
        call(&s, Method::POST, &format!("/runs/{}/restart", run2["id"]), Some(json!({ "from": "deploy" }))).await;
    assert_eq!(status, 201, "{again}");
    let again = finished(&s, again["id"].as_i64().unwrap()).await;
    let note = step(&again, "deploy")["note"].as_str().unwrap_or_default().to_owned();
    assert_eq!(again["status"], "failure", "{again}");
    assert!(note.contains(&format!("not of {sha2}")), "{note}");
    assert_eq!(live_release(&s).await["id"], redeployed["id"], "the live release stays");
    repo.git(&["checkout", "-q", "main"]);

    // A rollback to a named release; retried, it starts nothing and answers
    // the live release. A release rolled back from may be named too.
    let (status, named) = to(json!({ "release": first["id"] })).await;
    assert_eq!(status, 201, "{named}");
    assert_eq!((&named["commit"], &named["rollback_of"]), (&json!(sha), &redeployed["id"]), "{named}");
    serves(&named, 2, "1").await;
    let (status, retried) = to(json!({ "release": first["id"] })).await;
    assert_eq!((status, &retried["id"]), (200, &named["id"]), "{retried}");
    let (status, forward) = to(json!({ "release": second["id"] })).await;
    assert_eq!((status, &forward["commit"]), (201, &json!(sha2)), "{forward}");
    serves(&forward, 2, "2").await;
    // After a new release, a rollback without a name returns to the image
    // named last, though it was once rolled back from.
    repo.write("site/index.html", "version: 3\n");
    repo.commit("third version");
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    assert_eq!(finished(&s, run["id"].as_i64().unwrap()).await["status"], "success");
    let (status, back) = to(json!({})).await;
    assert_eq!((status, &back["commit"]), (201, &json!(sha2)), "{back}");
    serves(&back, 2, "2").await;

    // Runs leave nothing behind; removing the service removes the rest.
    assert_eq!(
        docker_objects(&[&case_label(case), "leanloop.run"]),
        Vec::<String>::new(),
        "runs clean up after themselves"
    );
    let (status, removed) = call(&s, Method::DELETE, "/services/fixture-web/environments/production", None).await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["removed_containers"], 2);
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_test_step_stops_the_run_and_keeps_its_logs() {
    let case = "failing";
    // The first Docker host takes connections and never answers (the
    // kernel queues them; nothing accepts): runs go to the one that does,
    // here the local engine reached over TCP.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable =
        leanloop_pipeline::HostSpec { url: format!("tcp://{}", silent.local_addr().unwrap()), capacity: 8 };
    let (s, tcp, proxy) = pipeline::server_with_tcp_host(case, unreachable, 2).await;
    let repo = Repo::fixture();
    repo.write("FAIL_TESTS", "on purpose\n");
    repo.commit("break the tests");
    let repo_id = add_repo(&s, "failing", &repo, json!({})).await;
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "failure", "{run}");
    assert_eq!(run["host"], tcp.as_str());
    assert_eq!(step(&run, "test")["status"], "failure");
    assert_eq!(step(&run, "test")["exit_code"], 1);
    assert_eq!(step(&run, "image")["status"], "skipped");
    assert_eq!(step(&run, "deploy")["status"], "skipped");
    let logs = log_text(&s, run["id"].as_i64().unwrap()).await;
    assert!(logs.contains("[test] FAIL: FAIL_TESTS is present"), "{logs}");
    assert!(logs.contains("[test] tests failed: 1"), "a last line without a newline is kept: {logs}");
    let (status, only) = call(&s, Method::GET, &format!("/runs/{}/logs?step=test", run["id"]), None).await;
    assert_eq!(status, 200);
    let lines = only["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["line"] == "FAIL: FAIL_TESTS is present in the repository root"), "{only}");
    assert!(lines.iter().all(|l| l["step"] == "test"), "{only}");
    // A restart past the failed tests would ship their commit: refused,
    // naming the step; from the tests themselves it runs them again.
    let path = format!("/runs/{}/restart", run["id"]);
    let restart = |from: &str| call(&s, Method::POST, &path, Some(json!({ "from": from })));
    let (status, err) = restart("image").await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("step `test` did not pass"), "{err}");
    let (status, again) = restart("test").await;
    assert_eq!(status, 201, "{again}");
    let again = finished(&s, again["id"].as_i64().unwrap()).await;
    assert_eq!(step(&again, "test")["status"], "failure", "{again}");
    let (_, releases) = call(&s, Method::GET, "/releases", None).await;
    assert_eq!(releases["releases"], json!([]));
    pipeline::stop_leaving_nothing(s, case).await;
    proxy.abort();
}

const SLOW: &str = "\
steps:
  - name: slow
    image: leanloop/busybox:latest
    secrets: [DEPLOY_TOKEN]
    commands:
      - echo token=$DEPLOY_TOKEN
      - echo started-marker
      - sleep 300
";

#[tokio::test(flavor = "multi_thread")]
async fn a_run_the_server_stops_during_ends_in_error_not_cancelled() {
    let case = "stopped";
    let s = pipeline::server(case).await;
    let (_repo, repo_id) = repo_with_file(&s, "slow", SLOW, json!({})).await;
    let secret = format!("/repos/{repo_id}/secrets/DEPLOY_TOKEN");
    assert_eq!(call(&s, Method::PUT, &secret, Some(json!({ "value": "tok-1" }))).await.0, 204);
    let id = trigger(&s, repo_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    eventually_within("the step to run", pipeline::RUN_DEADLINE, || async {
        log_text(&s, id).await.contains("started-marker").then_some(())
    })
    .await;
    // A client following the log does not hold the stop up for its whole
    // timeout (30 s): its stream ends as the server starts to stop.
    let url = s.url(&format!("/api/v1/projects/{}/runs/{id}/logs?follow=true", s.project.id));
    let follower = s.client.get(url).bearer_auth(&s.project.deploy_key).send().await.unwrap();
    let mut follower = follower.bytes_stream();
    assert!(follower.next().await.is_some(), "the follower is served");
    let stopping = std::time::Instant::now();
    let dir = s.stop().await;
    assert!(stopping.elapsed() < std::time::Duration::from_secs(20), "stopped in {:?}", stopping.elapsed());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = follower.next().await {}
    });
    assert!(ended.await.is_ok(), "the follower's stream ended");
    let s = pipeline::server_in(dir, case, |_| {}).await;
    let (_, run) = call(&s, Method::GET, &format!("/runs/{id}"), None).await;
    assert_eq!(
        (&run["status"], &run["error"]),
        (&json!("error"), &json!("the server stopped during this run")),
        "{run}"
    );
    pipeline::stop_leaving_nothing(s, case).await;
}

const FAST_THEN_SLOW: &str = "\
steps:
  - name: a
    image: leanloop/busybox:latest
    commands: [echo a-done]
  - name: b
    image: leanloop/busybox:latest
    depends_on: [a]
    commands: [echo b-started, sleep 300]
";

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_cancelled_before_it_starts_keeps_its_reused_steps() {
    let case = "restartcancel";
    let s = pipeline::server(case).await;
    let (_repo, repo_id) = repo_with_file(&s, "twostep", FAST_THEN_SLOW, json!({})).await;
    let first = trigger(&s, repo_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    eventually_within("step b to run", pipeline::RUN_DEADLINE, || async {
        log_text(&s, first).await.contains("b-started").then_some(())
    })
    .await;
    assert_eq!(call(&s, Method::POST, &format!("/runs/{first}/cancel"), None).await.0, 202);
    finished(&s, first).await;
    // A run of the repository holds its one place: the restart waits.
    let holder = trigger(&s, repo_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    let (status, restart) =
        call(&s, Method::POST, &format!("/runs/{first}/restart"), Some(json!({ "from": "b" }))).await;
    assert_eq!(status, 201, "{restart}");
    let restart = restart["id"].as_i64().unwrap();
    assert_eq!(call(&s, Method::POST, &format!("/runs/{restart}/cancel"), None).await.0, 202);
    let run = finished(&s, restart).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!((&step(&run, "a")["status"], &step(&run, "b")["status"]), (&json!("reused"), &json!("cancelled")));
    assert_eq!(call(&s, Method::POST, &format!("/runs/{holder}/cancel"), None).await.0, 202);
    finished(&s, holder).await;
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_containers_and_live_logs_follow() {
    let case = "cancel";
    let s = pipeline::server(case).await;
    let (_repo, repo_id) = repo_with_file(&s, "slow", SLOW, json!({})).await;
    let (status, _) = call(
        &s,
        Method::PUT,
        &format!("/repos/{repo_id}/secrets/DEPLOY_TOKEN"),
        Some(json!({ "value": "tok-9f8e7d" })),
    )
    .await;
    assert_eq!(status, 204);
    // Values logs could not mask, or Docker could not pass, are refused.
    for value in ["zq", "tok\u{0}9f8e7d"] {
        let path = format!("/repos/{repo_id}/secrets/OTHER");
        let (status, body) = call(&s, Method::PUT, &path, Some(json!({ "value": value }))).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some("value")), "{value:?}: {body}");
    }
    let (_, detail) = call(&s, Method::GET, &format!("/repos/{repo_id}"), None).await;
    assert_eq!(detail["secrets"], json!(["DEPLOY_TOKEN"]));
    assert!(!detail.to_string().contains("tok-9f8e7d"), "secret values are never shown");

    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let id = run["id"].as_i64().unwrap();
    // Follow the live log until the step is visibly running.
    let url = s.url(&format!("/api/v1/projects/{}/runs/{id}/logs?follow=true", s.project.id));
    let response = s.client.get(url).bearer_auth(&s.project.deploy_key).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + pipeline::RUN_DEADLINE;
    while !seen.contains("started-marker") {
        let chunk =
            tokio::time::timeout_at(deadline, body.next()).await.expect("the live log shows the marker in time");
        let chunk = chunk.expect("the stream stays open while the run runs").expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("token=********"), "secrets are masked: {seen}");
    assert!(!seen.contains("tok-9f8e7d"));
    let running = docker_objects(&[&case_label(case), "leanloop.run"]);
    assert!(running.iter().any(|o| o.starts_with("ps ")), "the step's container runs: {running:?}");
    let (status, err) = call(&s, Method::DELETE, &format!("/repos/{repo_id}"), None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (409, Some("conflict")), "not while it runs: {err}");

    let (status, _) = call(&s, Method::POST, &format!("/runs/{id}/cancel"), None).await;
    assert_eq!(status, 202);
    let run = finished(&s, id).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(step(&run, "slow")["status"], "cancelled");
    // The stream ends with the run's end.
    let rest = tokio::time::timeout(pipeline::RUN_DEADLINE, async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(rest.is_ok(), "the live log closes when the run ends");
    assert!(seen.contains("event: end") && seen.contains("cancelled"), "{seen}");
    assert_eq!(docker_objects(&[&case_label(case)]), Vec::<String>::new());
    let stored = log_text(&s, id).await;
    assert!(stored.contains("token=********") && !stored.contains("tok-9f8e7d"), "{stored}");
    // A reconnecting EventSource sends the last id it saw: the lines after it follow.
    let (_, lines) = call(&s, Method::GET, &format!("/runs/{id}/logs"), None).await;
    let lines = lines["lines"].as_array().unwrap();
    let seen_last = lines.iter().find(|l| l["line"] == "token=********").expect("the masked line")["seq"].clone();
    let url = s.url(&format!("/api/v1/projects/{}/runs/{id}/logs?follow=true", s.project.id));
    let again = s.client.get(url).bearer_auth(&s.project.deploy_key).header("last-event-id", seen_last.to_string());
    let again = again.send().await.unwrap().text().await.unwrap();
    assert!(
        !again.contains("token=********") && again.contains("started-marker") && again.contains("event: end"),
        "{again}"
    );
    // Once it has finished, the repository goes with its runs and logs.
    let (status, _) = call(&s, Method::DELETE, &format!("/repos/{repo_id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&s, Method::GET, &format!("/runs/{id}/logs"), None).await;
    assert_eq!(status, 404);
    s.stop().await;
}

const CACHED: &str = "\
steps:
  - name: test
    image: leanloop/busybox:latest
    cache: [/cache]
    commands:
      - ./test.sh
      - cat /cache/stamp 2>/dev/null || true
      - echo \"cached by run $LEANLOOP_RUN\" > /cache/stamp
";

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_need_a_valid_signature() {
    let case = "webhook";
    let s = pipeline::server(case).await;
    let secret = "hook-secret-123";
    let (repo, repo_id) = repo_with_file(&s, "hooked", CACHED, json!({ "webhook_secret": secret })).await;
    let sha = repo.head();
    let body = json!({ "ref": "refs/heads/main", "after": sha, "repository": { "full_name": "acme/app" } }).to_string();
    let signature = leanloop_pipeline::webhooks::sign(secret, body.as_bytes());
    let post = |provider: &'static str, headers: Vec<(&'static str, String)>, body: String| {
        let mut request = s.client.post(s.url(&format!("/hooks/{repo_id}/{provider}"))).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    // Bad, missing and other-secret signatures are refused; no run starts.
    let bad =
        post("gitea", vec![("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", "00".repeat(32))], body.clone())
            .await
            .unwrap();
    assert_eq!(bad.status(), 401);
    let missing = post("github", vec![("X-GitHub-Event", "push".into())], body.clone()).await.unwrap();
    assert_eq!(missing.status(), 401);
    let other = leanloop_pipeline::webhooks::sign("another-secret", body.as_bytes());
    let forged = post(
        "github",
        vec![("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", format!("sha256={other}"))],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    let signed = leanloop_pipeline::webhooks::sign("whatever", body.as_bytes());
    let unknown = s
        .client
        .post(s.url(&format!("/hooks/{}/gitea", repo_id + 1000)))
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Signature", signed)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401, "an unknown repository is not told apart from a bad signature");
    let (_, runs) = call(&s, Method::GET, &format!("/repos/{repo_id}/runs"), None).await;
    assert_eq!(runs["runs"], json!([]));

    // A ping is answered without a run; a signed push starts one at its commit.
    let ping = post(
        "github",
        vec![("X-GitHub-Event", "ping".into()), ("X-Hub-Signature-256", format!("sha256={signature}"))],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(ping.status(), 200);
    let (_, runs) = call(&s, Method::GET, &format!("/repos/{repo_id}/runs"), None).await;
    assert_eq!(runs["runs"], json!([]), "a ping starts no run");
    let ok =
        post("gitea", vec![("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", signature.clone())], body.clone())
            .await
            .unwrap();
    assert_eq!(ok.status(), 201);
    let run: Value = ok.json().await.unwrap();
    assert_eq!(
        (run["commit"].as_str(), run["branch"].as_str(), run["event"].as_str()),
        (Some(sha.as_str()), Some("main"), Some("push"))
    );
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let github_push = |body: String| {
        let signature = leanloop_pipeline::webhooks::sign(secret, body.as_bytes());
        post(
            "github",
            vec![("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", format!("sha256={signature}"))],
            body,
        )
    };
    // The same push again (a delivery sent twice, or GitHub's and Gitea's
    // hooks both) runs nothing new: it names the run it made.
    let again = github_push(body.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["run"]["id"], run["id"], "{again}");
    // A newer push, sent as GitHub sends by default: a form with the JSON
    // in `payload`, signed as sent.
    repo.write("NEWS", "second\n");
    let newer = repo.commit("second");
    let newer_body = json!({ "ref": "refs/heads/main", "after": newer }).to_string();
    let form: String =
        url::form_urlencoded::Serializer::new(String::new()).append_pair("payload", &newer_body).finish();
    let form_signature = leanloop_pipeline::webhooks::sign(secret, form.as_bytes());
    let github = s
        .client
        .post(s.url(&format!("/hooks/{repo_id}/github")))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", format!("sha256={form_signature}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(github.status(), 201);
    let second = finished(&s, github.json::<Value>().await.unwrap()["id"].as_i64().unwrap()).await;
    assert_eq!((&second["status"], second["commit"].as_str()), (&json!("success"), Some(newer.as_str())), "{second}");
    // The older push delivered late, or replayed: the branch has moved
    // on, and the older commit is not run (nor put live) again.
    let late = github_push(body.clone()).await.unwrap();
    assert_eq!(late.status(), 200);
    let late: Value = late.json().await.unwrap();
    assert!(late["run"].is_null() && late["skipped"].as_str().unwrap().contains(&newer), "{late}");
    // A push whose commit a force-push replaced before any fetch saw it:
    // the branch has moved on just the same.
    let unseen = github_push(json!({ "ref": "refs/heads/main", "after": "7".repeat(40) }).to_string()).await.unwrap();
    assert_eq!(unseen.status(), 200);
    let unseen: Value = unseen.json().await.unwrap();
    assert!(unseen["run"].is_null() && unseen["skipped"].as_str().unwrap().contains(&newer), "{unseen}");
    // A push none of whose steps' `when` matches records no run.
    repo.git(&["checkout", "-q", "-b", "feature/x"]);
    repo.write("leanloop.yml", &CACHED.replace("cache: [/cache]", "when: { branch: [main] }"));
    let unmatched = repo.commit("only main runs");
    let answer = github_push(json!({ "ref": "refs/heads/feature/x", "after": unmatched }).to_string()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert!(answer["run"].is_null() && answer["skipped"].as_str().unwrap().contains("when"), "{answer}");
    let (_, runs) = call(&s, Method::GET, &format!("/repos/{repo_id}/runs"), None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "one run per push: {runs}");

    // The secret rotated: a delivery signed with the old one is refused,
    // one signed with the new one taken; with none, webhooks are refused.
    let repo_path = format!("/repos/{repo_id}");
    let change = |body: Value| call(&s, Method::PATCH, &repo_path, Some(body));
    let rotated = "rotated-secret-456";
    let (status, changed) = change(json!({ "webhook_secret": rotated })).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!((&changed["webhooks"], &changed["poll_seconds"]), (&json!(true), &Value::Null), "{changed}");
    assert_eq!(github_push(body.clone()).await.unwrap().status(), 401, "the old secret is refused");
    let signed_anew = |secret: &str| {
        let signature = leanloop_pipeline::webhooks::sign(secret, body.as_bytes());
        post(
            "github",
            vec![("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", format!("sha256={signature}"))],
            body.clone(),
        )
    };
    assert_eq!(signed_anew(rotated).await.unwrap().status(), 200, "the new secret is taken (a stale push)");
    let (status, changed) = change(json!({ "webhook_secret": null })).await;
    assert_eq!((status, &changed["webhooks"]), (200, &json!(false)), "{changed}");
    assert_eq!(signed_anew(rotated).await.unwrap().status(), 401, "no secret, no webhooks");
    for (bad, field) in [
        (json!({ "webhook_secret": "short" }), "webhook_secret"),
        (json!({ "poll_seconds": 0 }), "poll_seconds"),
        (json!({ "poll_seconds": "soon" }), "poll_seconds"),
        (json!({ "source": "/elsewhere" }), "source"),
    ] {
        let (status, answer) = change(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field), "{bad}: {answer}");
    }
    let (status, _) = call(&s, Method::PATCH, &format!("/repos/{}", repo_id + 1000), Some(json!({}))).await;
    assert_eq!(status, 404);
    let (status, _) = s
        .api(&s.project.read_key, Method::PATCH, &format!("/repos/{repo_id}"), Some(json!({ "poll_seconds": 1 })))
        .await;
    assert_eq!(status, 401, "the read key changes no repository");
    // Polling switched on starts from the heads there now: the branches
    // pushed above run nothing, a later commit does.
    let (status, changed) = change(json!({ "poll_seconds": 1 })).await;
    assert_eq!((status, &changed["poll_seconds"]), (200, &json!(1)), "{changed}");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("NEWS", "third\n");
    let polled = repo.commit("third");
    let third = run_of(&s, repo_id, &polled, "the polled run").await;
    assert_eq!(third["event"], "poll", "{third}");
    finished(&s, third["id"].as_i64().unwrap()).await;
    let (_, changed) = change(json!({ "poll_seconds": null })).await;
    assert_eq!(changed["poll_seconds"], Value::Null);
    let (_, runs) = call(&s, Method::GET, &format!("/repos/{repo_id}/runs"), None).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 3, "only the later commit was polled: {runs}");

    // The cache volume kept what the first run wrote.
    let logs = log_text(&s, second["id"].as_i64().unwrap()).await;
    assert!(logs.contains(&format!("[test] cached by run {}", run["id"])), "{logs}");
    let (status, _) = call(&s, Method::DELETE, &format!("/repos/{repo_id}/cache"), None).await;
    assert_eq!(status, 204);
    pipeline::stop_leaving_nothing(s, case).await;
}

/// The run of commit `sha` among the repository's runs, once there is one.
async fn run_of(s: &leanloop_tests::TestServer, repo_id: i64, sha: &str, what: &str) -> Value {
    eventually(&format!("{what} of {sha}"), || async {
        let (_, runs) = call(s, Method::GET, &format!("/repos/{repo_id}/runs"), None).await;
        runs["runs"].as_array().unwrap().iter().find(|r| r["commit"] == sha).cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_files_are_reported_with_line_numbers_and_polling_finds_commits() {
    let case = "files";
    let s = pipeline::server(case).await;
    let lint = |text: &'static str| s.client.post(s.url("/api/v1/pipeline/lint")).body(text).send();
    let bad =
        lint("steps:\n  - name: a\n    image: x\n    commands: [true]\n    depends_on: [missing]\n").await.unwrap();
    assert_eq!(bad.status(), 400);
    let err: Value = bad.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 2") && message.contains("missing"), "{message}");
    // The same check from the command line, on the fixture's file and a bad one.
    let cli = |file: &std::path::Path| {
        std::process::Command::new(leanloop_tests::process::leanloop_bin())
            .arg("lint")
            .arg(file)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let good = cli(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/app/leanloop.yml"));
    assert!(good.status.success(), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout).contains("deploy (after image)"), "{good:?}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("leanloop.yml"),
        "steps:\n  - name: a\n    image: x\n    commands: [true]\n    depends_on: [zz]\n",
    )
    .unwrap();
    let bad = cli(&dir.path().join("leanloop.yml"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2"), "{bad:?}");
    let typo = lint("steps:\n  - name: a\n    image: x\n    comands: [true]\n").await.unwrap();
    let err: Value = typo.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("line 4"), "{err}");
    assert_eq!(lint("steps: []\n").await.unwrap().status(), 400);
    // Nesting costs the parser time in the square of the depth: a file of
    // brackets beyond the size cap is refused before it is parsed.
    let brackets = format!("variables: {}{}\nsteps: []\n", "[".repeat(40_000), "]".repeat(40_000));
    let deep = s.client.post(s.url("/api/v1/pipeline/lint")).body(brackets).send().await.unwrap();
    assert_eq!(deep.status(), 400);
    let err: Value = deep.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("at most 32768"), "{err}");

    // A commit with an invalid file becomes a run in error, with the line.
    let repo = Repo::fixture();
    repo.write(
        "leanloop.yml",
        "steps:\n  - name: test\n    image: leanloop/busybox:latest\n    commands: [./test.sh]\n    timeout: forever\n",
    );
    repo.commit("a broken pipeline file");
    let repo_id = add_repo(&s, "polled", &repo, json!({ "poll_seconds": 1 })).await;
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    assert_eq!(run["status"], "error");
    assert!(run["error"].as_str().unwrap().contains("line 2"), "{run}");
    // A directory of that name is no file.
    let folder = Repo::fixture();
    folder.git(&["rm", "-q", "leanloop.yml"]);
    folder.write("leanloop.yml/steps", "x\n");
    let sha = folder.commit("a directory named like the file");
    let folder_id = add_repo(&s, "folder", &folder, json!({})).await;
    let run = trigger(&s, folder_id, json!({ "branch": "main" })).await;
    assert_eq!((&run["status"], &run["error"]), (&json!("error"), &json!(format!("leanloop.yml not found at {sha}"))));

    // Polling: a new branch with a valid file starts a run by itself.
    repo.git(&["checkout", "-q", "-b", "feature/polled"]);
    repo.write(
        "leanloop.yml",
        "steps:\n  - name: test\n    image: leanloop/busybox:latest\n    commands: [./test.sh]\n",
    );
    let sha = repo.commit("fix the pipeline file");
    let polled = run_of(&s, repo_id, &sha, "a polled run").await;
    assert_eq!(polled["event"], "poll");
    assert_eq!(polled["branch"], "feature/polled");
    assert_eq!(polled["environment"], "preview");
    let run = finished(&s, polled["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");

    // Other projects' keys see nothing; a bad repository source is a 400.
    // Git's command and descriptor transports are refused at once.
    for source in ["/does/not/exist", "fd::17", "ext::sh -c true"] {
        let (status, err) =
            call(&s, Method::POST, "/repos", Some(json!({ "name": "nowhere", "source": source }))).await;
        assert_eq!((status, err["error"]["field"].as_str()), (400, Some("source")), "{source}: {err}");
    }
    let other = s.control.create_project("Other").unwrap();
    let response = s
        .client
        .get(s.url(&format!("/api/v1/projects/{}/runs/{}", other.id, run["id"])))
        .bearer_auth(&other.deploy_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registration_cut_off_mid_clone_leaves_no_repository() {
    let case = "cutoff";
    let s = pipeline::server_with(case, |c| c.request_timeout = std::time::Duration::from_secs(1)).await;
    // A git server that takes the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let source = format!("http://{}/app.git", silent.local_addr().unwrap());
    let (status, err) = call(&s, Method::POST, "/repos", Some(json!({ "name": "app", "source": source }))).await;
    assert_eq!(status, 503, "the request timed out mid-clone: {err}");
    eventually("the half-registered repository to be gone", || async {
        let (_, repos) = call(&s, Method::GET, "/repos", None).await;
        repos["repos"].as_array().is_some_and(|r| r.is_empty()).then_some(())
    })
    .await;
    let mirrors = s.data_dir.path().join("pipeline").join("mirrors");
    let left: Vec<_> = std::fs::read_dir(&mirrors).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "no partial mirror is left: {left:?}");
    // The name is free again.
    let repo_id = add_repo(&s, "app", &Repo::fixture(), json!({})).await;
    assert!(mirrors.join(repo_id.to_string()).exists());
    // A mirror is no source, as a path or as a `file:` URL.
    let mirror = mirrors.join(repo_id.to_string()).display().to_string();
    for source in [mirror.clone(), format!("file://{mirror}")] {
        let (status, body) = call(&s, Method::POST, "/repos", Some(json!({"name": "stolen", "source": source}))).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some("source")), "{source}: {body}");
    }
    // A repository removed takes its mirror along; its id is then unknown.
    let (status, _) = call(&s, Method::DELETE, &format!("/repos/{repo_id}"), None).await;
    assert_eq!(status, 204);
    assert!(!mirrors.join(repo_id.to_string()).exists());
    for (method, path) in [(Method::GET, format!("/repos/{repo_id}")), (Method::DELETE, format!("/repos/{repo_id}"))] {
        let (status, _) = call(&s, method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    pipeline::stop_leaving_nothing(s, case).await;
}

/// What the password-protected git server saw.
#[tokio::test(flavor = "multi_thread")]
async fn a_git_server_that_stalls_delays_only_its_own_repository() {
    let case = "stall";
    let s = pipeline::server(case).await;
    let file = "steps:\n  - name: hello\n    image: leanloop/busybox:latest\n    commands: [echo hello]\n";
    // One repository over "dumb" HTTP from a server that stops answering
    // (takes requests and sends nothing) once it is registered.
    let stalled = Repo::fixture();
    stalled.write("leanloop.yml", file);
    stalled.commit("one step");
    let served = tempfile::tempdir().unwrap();
    let bare = served.path().join("app.git");
    stalled.git(&["clone", "-q", "--bare", &stalled.path(), &bare.to_string_lossy()]);
    stalled.git(&["--git-dir", &bare.to_string_lossy(), "update-server-info"]);
    let bare_path = bare.to_string_lossy().into_owned();
    let (stall, fail) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicBool::new(false)));
    let handler = {
        let (stall, fail) = (stall.clone(), fail.clone());
        move |axum::extract::Path(path): axum::extract::Path<String>| async move {
            if stall.load(SeqCst) {
                std::future::pending::<()>().await;
            }
            if fail.load(SeqCst) {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, Vec::new());
            }
            match std::fs::read(bare.join(&path)).ok().filter(|_| !path.contains("..")) {
                Some(bytes) => (axum::http::StatusCode::OK, bytes),
                None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
            }
        }
    };
    let app = axum::Router::new().route("/app.git/{*path}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = format!("http://{}/app.git", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let body = json!({ "name": "stalled", "source": source, "poll_seconds": 1, "webhook_secret": "hook-secret" });
    let (status, registered) = call(&s, Method::POST, "/repos", Some(body)).await;
    assert_eq!(status, 201, "{registered}");
    let deliver = |push: String| {
        let signature = leanloop_pipeline::webhooks::sign("hook-secret", push.as_bytes());
        s.client
            .post(s.url(&format!("/hooks/{}/github", registered["id"])))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", format!("sha256={signature}"))
            .body(push)
            .send()
    };
    // A push while the server fails: its fetch is tried again later, and
    // the push runs once the server is back (the sender has its 202 and
    // sends nothing more).
    let repo_path = format!("/repos/{}", registered["id"]);
    let (status, _) = call(&s, Method::PATCH, &repo_path, Some(json!({ "poll_seconds": null }))).await;
    assert_eq!(status, 200, "polling off, so only the push can run the commit");
    fail.store(true, SeqCst);
    stalled.write("NEWS", "pushed while the server failed\n");
    let pushed = stalled.commit("pushed while the server failed");
    stalled.git(&["push", "-q", &bare_path, "HEAD:refs/heads/main"]);
    stalled.git(&["--git-dir", &bare_path, "update-server-info"]);
    let answer = deliver(json!({ "ref": "refs/heads/main", "after": pushed }).to_string()).await.unwrap();
    assert_eq!(answer.status(), 202, "{:?}", answer.text().await);
    fail.store(false, SeqCst);
    let run = run_of(&s, registered["id"].as_i64().unwrap(), &pushed, "the push's run once its source answers").await;
    assert_eq!(run["event"], "push", "{run}");
    finished(&s, run["id"].as_i64().unwrap()).await;
    let (status, _) = call(&s, Method::PATCH, &repo_path, Some(json!({ "poll_seconds": 1 }))).await;
    assert_eq!(status, 200);
    stall.store(true, SeqCst);
    // A push to it is answered before its sender gives up (GitHub waits
    // 10 s): 202, the run to start once the fetch ends.
    let sent = std::time::Instant::now();
    let answer = deliver(json!({ "ref": "refs/heads/main", "after": stalled.head() }).to_string()).await.unwrap();
    assert_eq!(answer.status(), 202);
    assert!(sent.elapsed() < std::time::Duration::from_secs(10), "answered in {:?}", sent.elapsed());
    // Another polled repository: its new commit still runs.
    let polled = Repo::fixture();
    polled.write("leanloop.yml", file);
    polled.commit("one step");
    let polled_id = add_repo(&s, "polled", &polled, json!({ "poll_seconds": 1 })).await;
    polled.write("NEWS", "more\n");
    let sha = polled.commit("a commit to find");
    let run = run_of(&s, polled_id, &sha, "a polled run while the other server stalls").await;
    assert_eq!(run["event"], "poll");
    finished(&s, run["id"].as_i64().unwrap()).await;
    // Stopping does not wait for the stalled fetch either.
    let stopping = std::time::Instant::now();
    let dir = s.stop().await;
    assert!(stopping.elapsed() < std::time::Duration::from_secs(20), "stopped in {:?}", stopping.elapsed());
    server.abort();
    pipeline::stop_leaving_nothing(pipeline::server_in(dir, case, |_| {}).await, case).await;
}

#[derive(Default)]
struct GitServerSaw {
    authorised: usize,
    /// Command lines on this machine that held the password while it answered.
    password_on_command_line: Vec<String>,
}

/// A git server over "dumb" HTTP, serving the bare repository `bare` as
/// `/app.git` to requests with `user:password` by Basic auth.
async fn password_git_server(
    bare: std::path::PathBuf,
    user: &str,
    password: &'static str,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<GitServerSaw>>, tokio::task::JoinHandle<()>) {
    use base64::Engine;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let saw = std::sync::Arc::new(std::sync::Mutex::new(GitServerSaw::default()));
    let handler = {
        let saw = saw.clone();
        move |axum::extract::Path(path): axum::extract::Path<String>, headers: axum::http::HeaderMap| async move {
            let lines: Vec<String> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .filter(|line| line.contains(password) || line.contains("p%40ss"))
                .collect();
            let mut saw = saw.lock().unwrap();
            saw.password_on_command_line.extend(lines);
            let authorised = headers.get("authorization").is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !authorised {
                return (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Basic realm=\"git\"")],
                    Vec::new(),
                );
            }
            saw.authorised += 1;
            match std::fs::read(bare.join(&path)).ok().filter(|_| !path.contains("..")) {
                Some(bytes) => (axum::http::StatusCode::OK, [("content-type", "application/octet-stream")], bytes),
                None => (axum::http::StatusCode::NOT_FOUND, [("content-type", "text/plain")], Vec::new()),
            }
        }
    };
    let app = axum::Router::new().route("/app.git/{*path}", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, saw, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_with_credentials_keeps_them_off_command_lines_and_out_of_the_mirror() {
    let case = "gitauth";
    let s = pipeline::server(case).await;
    let repo = Repo::fixture();
    repo.write(
        "leanloop.yml",
        "steps:\n  - name: hello\n    image: leanloop/busybox:latest\n    commands: [echo hello]\n",
    );
    repo.commit("a pipeline of one step");
    let served = tempfile::tempdir().unwrap();
    let bare = served.path().join("app.git");
    let bare_path = bare.to_string_lossy().into_owned();
    let publish = || repo.git(&["--git-dir", &bare_path, "update-server-info"]);
    repo.git(&["clone", "-q", "--bare", &repo.path(), &bare_path]);
    publish();
    let (addr, saw, server) = password_git_server(bare.clone(), "deployer", "p@ss w0rd").await;

    // The wrong password: refused, and the error shows no credentials.
    let wrong = format!("http://deployer:wr0ng-guess@{addr}/app.git");
    let (status, err) = call(&s, Method::POST, "/repos", Some(json!({"name": "app", "source": wrong}))).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("source")), "{err}");
    assert!(!err.to_string().contains("wr0ng-guess"), "{err}");

    let source = format!("http://deployer:p%40ss%20w0rd@{addr}/app.git");
    let (status, registered) = call(&s, Method::POST, "/repos", Some(json!({"name": "app", "source": source}))).await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["source"], format!("http://deployer:********@{addr}/app.git"));
    let repo_id = registered["id"].as_i64().unwrap();
    let config = s.data_dir.path().join("pipeline").join("mirrors").join(repo_id.to_string()).join("config");
    let clean = format!("url = http://{addr}/app.git");
    let mirror_config = std::fs::read_to_string(&config).unwrap();
    assert!(mirror_config.contains(&clean) && !mirror_config.contains("deployer"), "{mirror_config}");

    // A mirror cloned with the credentials in its config (as before) loses
    // them at its next fetch, which still authenticates: the run builds the
    // commit pushed since.
    repo.git(&["--git-dir", &config.parent().unwrap().to_string_lossy(), "config", "remote.origin.url", &source]);
    repo.write("CHANGES", "a second commit\n");
    let head = repo.commit("a second commit");
    repo.git(&["push", "-q", &bare_path, "main"]);
    publish();
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    assert_eq!(run["commit"], head.as_str(), "{run}");
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let mirror_config = std::fs::read_to_string(&config).unwrap();
    assert!(mirror_config.contains(&clean) && !mirror_config.contains("p%40ss"), "{mirror_config}");

    let (authorised, on_command_line) = {
        let saw = saw.lock().unwrap();
        (saw.authorised, saw.password_on_command_line.clone())
    };
    assert!(authorised > 0, "git sent the credentials");
    assert!(on_command_line.is_empty(), "{on_command_line:?}");
    server.abort();
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_over_its_timeout_fails() {
    let case = "timeout";
    let s = pipeline::server(case).await;
    let (_repo, repo_id) = repo_with_file(&s, "overrun", "steps:\n  - name: slow\n    image: leanloop/busybox:latest\n    timeout: 1s\n    commands: [sleep 60]\n  - name: after\n    image: leanloop/busybox:latest\n    commands: [true]\n", json!({})).await;
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "failure", "{run}");
    let slow = step(&run, "slow");
    assert_eq!(slow["status"], "failure");
    assert!(slow["note"].as_str().unwrap().contains("timed out after 1 s"), "{slow}");
    assert!(slow["duration_ms"].as_i64().unwrap() < 30_000, "{slow}");
    assert_eq!(step(&run, "after")["status"], "skipped");
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_pipeline_route() {
    let s = pipeline::server("openapi").await;
    let doc: Value = s.client.get(s.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let ours: Vec<&String> = paths
        .keys()
        .filter(|p| {
            !p.contains("/insights/") && ["/repos", "/runs", "/releases", "/services"].iter().any(|k| p.contains(k))
        })
        .collect();
    assert!(ours.len() >= 12, "{ours:?}");
    // The two routes that take no key are documented with what they answer.
    let lint = &paths["/api/v1/pipeline/lint"]["post"];
    assert!(lint["responses"]["200"].is_object() && lint["responses"]["400"].is_object(), "{lint}");
    let hook = &paths["/hooks/{repo}/{provider}"]["post"];
    assert!(hook["responses"]["201"].is_object() && hook["responses"]["401"].is_object(), "{hook}");
    let unsigned = s.client.post(s.url("/hooks/999/github")).json(&json!({"ref": "refs/heads/main"})).send().await;
    assert_eq!(unsigned.unwrap().status(), 401, "documented: no such repository");
    for path in ours {
        let concrete = path
            .replace("{id}", &s.project.id.to_string())
            .replace("{service}", "web")
            .replace("{env}", "production")
            .replace("{name}", "TOKEN");
        let concrete = concrete.replace("{repo}", "1").replace("{run}", "1").replace("{release}", "1");
        for method in paths[path].as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // Every documented route exists: without a key it is a 401, not a 404/405.
            let status = s.client.request(method.clone(), s.url(&concrete)).send().await.unwrap().status();
            assert_eq!(status, 401, "{method} {concrete}");
            // The read key (often embedded in dashboards) cannot deploy.
            let response = s
                .client
                .request(method.clone(), s.url(&concrete))
                .bearer_auth(&s.project.read_key)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {concrete} with the read key");
            let body: Value = response.json().await.unwrap();
            assert!(body["error"]["message"].as_str().unwrap().contains("deploy key"), "{body}");
        }
    }
    s.stop().await;
}

const WITH_SERVICE: &str = "\
services:
  - name: web
    image: leanloop/busybox:latest
    commands: [httpd -f -p 8080 -h /workspace/site]
steps:
  - name: reach
    image: leanloop/busybox:latest
    commands:
      - for i in $(seq 1 50); do wget -qO- http://web:8080/health && exit 0; sleep 0.2; done; exit 1
";

#[tokio::test(flavor = "multi_thread")]
async fn services_are_reachable_by_name() {
    let case = "services";
    let s = pipeline::server(case).await;
    let (_repo, repo_id) = repo_with_file(&s, "serviced", WITH_SERVICE, json!({})).await;
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    let logs = log_text(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}\n{logs}");
    assert!(logs.contains("[reach] ok"), "the service answered from the workspace: {logs}");
    assert!(logs.contains("service web started"), "{logs}");
    pipeline::stop_leaving_nothing(s, case).await;
}

/// A build-and-deploy pipeline for `strategy` (with its extra keys).
fn deploying(strategy: &str) -> String {
    format!(
        "steps:\n  - name: image\n    build: {{ service: strat-web }}\n  - name: deploy\n    deploy: {{ service: strat-web, port: 8080, health: /health, replicas: 2, {strategy} }}\n"
    )
}

/// A label of the Docker object `name`.
fn docker_label(name: &str, label: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"{label}\"}}}}");
    let out = std::process::Command::new("docker").args(["inspect", "--format", &format, name]).output().unwrap();
    assert!(out.status.success(), "docker inspect {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_out_of_reach_keeps_a_service_and_leftovers_are_removed_later() {
    let case = "leftovers";
    // The first host takes connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable =
        leanloop_pipeline::HostSpec { url: format!("tcp://{}", silent.local_addr().unwrap()), capacity: 8 };
    let s = pipeline::server_with(case, |c| c.pipeline.hosts = vec![unreachable, leanloop_pipeline::HostSpec::local()])
        .await;
    let (repo, repo_id) = repo_with_file(&s, "leftovers", &deploying("strategy: rolling"), json!({})).await;
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let (_, list) = call(&s, Method::GET, "/releases?service=strat-web", None).await;
    let release = list["releases"][0].clone();
    assert_eq!(release["status"], "live", "{list}");

    // A teardown while a host is out of reach (it may hold replicas) is
    // refused, and changes nothing.
    let (status, err) = call(&s, Method::DELETE, "/services/strat-web/environments/production", None).await;
    assert_eq!(status, 503, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("does not answer"), "{err}");
    let (_, still) = call(&s, Method::GET, &format!("/releases/{}", release["id"]), None).await;
    assert_eq!(still["status"], "live", "{still}");
    serves(&still, 2, "1").await;

    // What a finished run left behind (its own cleanup missed it) and the
    // replicas of a release no longer live are removed within a minute.
    let replica = docker_objects(&[&case_label(case), "leanloop.service=strat-web"])
        .into_iter()
        .find_map(|o| o.strip_prefix("ps ").map(str::to_owned))
        .expect("a replica");
    let instance = docker_label(&replica, "leanloop.instance");
    let run_label = format!("leanloop.run={instance}-{}", run["id"]);
    let base = [
        "--label".to_owned(),
        "leanloop.managed=true".to_owned(),
        "--label".to_owned(),
        format!("leanloop.instance={instance}"),
        "--label".to_owned(),
        case_label(case),
    ];
    let with = |head: &[&str], more: &[String], tail: &[&str]| {
        let mut args: Vec<String> = head.iter().map(|a| (*a).to_owned()).collect();
        args.extend(base.iter().cloned());
        args.extend(more.iter().cloned());
        args.extend(tail.iter().map(|a| (*a).to_owned()));
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    with(&["volume", "create"], &["--label".into(), run_label.clone()], &[&format!("ll-{case}-left-workspace")]);
    let image = std::env::var("LEANLOOP_TEST_BASE_IMAGE").unwrap();
    // A release the records do not know stays (it is not this server's to judge).
    let unknown_release = format!("leanloop.release={instance}-{}", release["id"].as_i64().unwrap() + 1000);
    let unknown = [
        "--label".to_owned(),
        unknown_release.clone(),
        "--label".to_owned(),
        format!("leanloop.project={}", s.project.id),
    ];
    with(&["run", "-d", "--name", &format!("ll-{case}-unknown")], &unknown, &[&image, "sleep", "300"]);
    with(
        &["run", "-d", "--name", &format!("ll-{case}-left")],
        &["--label".into(), run_label.clone()],
        &[&image, "sleep", "300"],
    );
    eventually_within("what the finished run left to be removed", std::time::Duration::from_secs(90), || async {
        docker_objects(&[&run_label]).is_empty().then_some(())
    })
    .await;
    assert_eq!(docker_objects(&[&unknown_release]).len(), 1);
    docker(&["rm", "-f", &format!("ll-{case}-unknown")]);

    // A release superseded while one of its replicas could not be removed:
    // the replica goes too, the live release's stay.
    repo.write("site/index.html", "version: 2\n");
    repo.commit("a second version");
    let second = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let second = finished(&s, second["id"].as_i64().unwrap()).await;
    assert_eq!(second["status"], "success", "{second}");
    let (_, first) = call(&s, Method::GET, &format!("/releases/{}", release["id"]), None).await;
    assert_eq!(first["status"], "superseded", "{first}");
    let stale = [
        "--label".to_owned(),
        format!("leanloop.release={instance}-{}", release["id"]),
        "--label".to_owned(),
        format!("leanloop.project={}", s.project.id),
        "--label".to_owned(),
        "leanloop.service=strat-web".to_owned(),
    ];
    with(&["run", "-d", "--name", &format!("ll-{case}-stale")], &stale, &[&image, "sleep", "300"]);
    eventually_within("the superseded release's replica to be removed", std::time::Duration::from_secs(90), || async {
        docker_objects(&[&format!("leanloop.release={instance}-{}", release["id"])]).is_empty().then_some(())
    })
    .await;
    let (_, list) = call(&s, Method::GET, "/releases?service=strat-web&limit=1", None).await;
    serves(&list["releases"][0], 2, "2").await;
    // The replicas stay after the server stops; removed here.
    docker(&["rm", "-f", &format!("ll-{case}-stale")]);
    for replica in docker_objects(&[&case_label(case), "leanloop.service=strat-web"]) {
        docker(&["rm", "-f", replica.strip_prefix("ps ").unwrap()]);
    }
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_strategy_replaces_the_live_release() {
    let case = "strategies";
    let s = pipeline::server(case).await;
    let (repo, repo_id) =
        repo_with_file(&s, "strategies", &deploying("strategy: canary, weights: [25, 50, 100]"), json!({})).await;
    let mut previous: Option<Value> = None;
    for (i, strategy) in ["canary", "blue-green", "recreate", "rolling"].into_iter().enumerate() {
        if i > 0 {
            repo.write("site/index.html", &format!("version: {strategy}\n"));
            repo.write("leanloop.yml", &deploying(&format!("strategy: {strategy}")));
            repo.commit(&format!("deploy with {strategy}"));
        }
        let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
        let run = finished(&s, run["id"].as_i64().unwrap()).await;
        assert_eq!(run["status"], "success", "{strategy}: {run}");
        let (_, list) = call(&s, Method::GET, "/releases?service=strat-web", None).await;
        let live: Vec<&Value> = list["releases"].as_array().unwrap().iter().filter(|r| r["status"] == "live").collect();
        assert_eq!(live.len(), 1, "one live release after {strategy}: {list}");
        let release = live[0];
        assert_eq!(release["strategy"], strategy);
        assert_eq!(release["weights"], if strategy == "canary" { json!([25, 50, 100]) } else { json!([]) });
        serves(release, 2, if i == 0 { "1" } else { strategy }).await;
        if let Some(old) = previous {
            let (_, old) = call(&s, Method::GET, &format!("/releases/{}", old["id"]), None).await;
            assert_eq!(old["status"], "superseded", "{old}");
        }
        // Exactly this release's replicas run: the old ones are gone.
        let (_, all) = call(&s, Method::GET, "/releases?service=strat-web", None).await;
        assert_eq!(all["releases"].as_array().unwrap().len(), i + 1);
        previous = Some(release.clone());
    }
    let running = docker_objects(&[&case_label(case), "leanloop.service=strat-web"]);
    assert_eq!(running.len(), 2, "two replicas of the last release: {running:?}");
    // A `recreate` whose new replicas never get healthy has stopped the
    // live release first: that one gets its replicas back and stays live.
    repo.write(
        "leanloop.yml",
        "steps:\n  - name: image\n    build: { service: strat-web }\n  - name: deploy\n    deploy: { service: strat-web, port: 8080, health: /missing, health_timeout: 2, replicas: 2, strategy: recreate }\n",
    );
    repo.commit("deploy one that never gets healthy");
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "failure", "{run}");
    let (_, last) = call(&s, Method::GET, &format!("/releases/{}", previous.unwrap()["id"]), None).await;
    assert_eq!(last["status"], "live", "{last}");
    serves(&last, 2, "rolling").await;
    assert_eq!(docker_objects(&[&case_label(case), "leanloop.service=strat-web"]).len(), 2);
    // With none live (the service torn down), a rollback starts the newest
    // release that ran healthy again.
    let (status, _) = call(&s, Method::DELETE, "/services/strat-web/environments/production", None).await;
    assert_eq!(status, 200);
    let (_, list) = call(&s, Method::GET, "/releases?service=strat-web", None).await;
    assert!(list["releases"].as_array().unwrap().iter().all(|r| r["status"] != "live"), "{list}");
    let (status, back) = call(&s, Method::POST, "/services/strat-web/environments/production/rollback", None).await;
    assert_eq!(status, 201, "{back}");
    assert_eq!(
        (&back["trigger"], &back["commit"], &back["status"]),
        (&json!("rollback"), &last["commit"], &json!("live"))
    );
    serves(&back, 2, "rolling").await;

    // A cancel during a deploy stops it at once, not when its health
    // timeout (ten minutes here) runs out.
    repo.write(
        "leanloop.yml",
        "steps:\n  - name: image\n    build: { service: strat-web }\n  - name: deploy\n    deploy: { service: strat-web, port: 8080, health: /missing, health_timeout: 600, replicas: 2, strategy: rolling }\n",
    );
    repo.commit("deploy one that waits long for health");
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    let replicas = || docker_objects(&[&case_label(case), "leanloop.service=strat-web"]);
    eventually_within("the deploy to wait for its first replica's health", pipeline::RUN_DEADLINE, || async {
        let (_, r) = call(&s, Method::GET, &format!("/runs/{run}"), None).await;
        (step(&r, "deploy")["status"] == "running" && replicas().len() > 2).then_some(())
    })
    .await;
    let (status, _) = call(&s, Method::POST, &format!("/runs/{run}/cancel"), None).await;
    assert_eq!(status, 202);
    let ended = eventually_within("the cancelled deploy to end", std::time::Duration::from_secs(60), || async {
        let (_, r) = call(&s, Method::GET, &format!("/runs/{run}"), None).await;
        (!matches!(r["status"].as_str(), Some("pending" | "running"))).then_some(r)
    })
    .await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(step(&ended, "deploy")["status"], "cancelled", "{ended}");
    let (_, list) = call(&s, Method::GET, "/releases?service=strat-web", None).await;
    let newest = list["releases"].as_array().unwrap().iter().max_by_key(|r| r["id"].as_i64()).unwrap().clone();
    assert_eq!(newest["status"], "failed", "{newest}");
    assert_eq!(replicas().len(), 2, "the new replica is removed; the live release's two run on");
    let (status, err) = call(
        &s,
        Method::POST,
        "/services/strat-web/environments/production/rollback",
        Some(json!({ "release": newest["id"] })),
    )
    .await;
    assert_eq!(status, 409, "a release that never ran healthy is no rollback target: {err}");
    assert_eq!(err["error"]["reason"], "never_healthy", "{err}");
    let (status, err) = call(
        &s,
        Method::POST,
        "/services/strat-web/environments/staging/rollback",
        Some(json!({ "release": back["id"] })),
    )
    .await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("release")), "another environment's: {err}");
    let (_, live) = call(&s, Method::GET, &format!("/releases/{}", back["id"]), None).await;
    assert_eq!(live["status"], "live", "{live}");
    // Replicas removed outside Leanloop: the release no longer reads as live.
    let ids = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label={}", case_label(case)),
            "--filter",
            "label=leanloop.service=strat-web",
        ])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_owned).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let removed = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).status().unwrap();
    assert!(removed.success());
    eventually_within("the release without replicas to be retired", std::time::Duration::from_secs(60), || async {
        let (_, r) = call(&s, Method::GET, &format!("/releases/{}", back["id"]), None).await;
        (r["status"] == "retired").then_some(())
    })
    .await;
    let (status, _) = call(&s, Method::DELETE, "/services/strat-web/environments/production", None).await;
    assert_eq!(status, 200);
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_of_one_repository_wait_their_turn() {
    let case = "queue";
    let s = pipeline::server(case).await;
    let slow = "steps:\n  - name: slow\n    image: leanloop/busybox:latest\n    commands: [sleep 300]\n";
    let (_repo, repo_id) = repo_with_file(&s, "queued", slow, json!({})).await;
    let first = trigger(&s, repo_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    eventually("the first run to start", || async {
        let (_, run) = call(&s, Method::GET, &format!("/runs/{first}"), None).await;
        (run["status"] == "running").then_some(())
    })
    .await;
    let second = trigger(&s, repo_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    // One run per repository at a time (the default): the second waits,
    // while another repository's run, queued after it, starts. Its start
    // shows the scheduler has passed over the second.
    let (_other, other_id) = repo_with_file(&s, "queued-other", slow, json!({})).await;
    let other = trigger(&s, other_id, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    eventually("another repository's run to start", || async {
        let (_, run) = call(&s, Method::GET, &format!("/runs/{other}"), None).await;
        (run["status"] == "running").then_some(())
    })
    .await;
    let (_, waiting) = call(&s, Method::GET, &format!("/runs/{second}"), None).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    let (status, _) = call(&s, Method::POST, &format!("/runs/{other}/cancel"), None).await;
    assert_eq!(status, 202);
    assert_eq!(finished(&s, other).await["status"], "cancelled");
    let (status, _) = call(&s, Method::POST, &format!("/runs/{first}/cancel"), None).await;
    assert_eq!(status, 202);
    eventually("the second run to start once the first ends", || async {
        let (_, run) = call(&s, Method::GET, &format!("/runs/{second}"), None).await;
        (run["status"] == "running").then_some(())
    })
    .await;
    assert_eq!(finished(&s, first).await["status"], "cancelled");
    // A pending or running run cancels alike.
    let (status, _) = call(&s, Method::POST, &format!("/runs/{second}/cancel"), None).await;
    assert_eq!(status, 202);
    assert_eq!(finished(&s, second).await["status"], "cancelled");
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_spread_over_hosts_by_free_capacity() {
    let case = "spread";
    let local = leanloop_pipeline::HostSpec { capacity: 1, ..leanloop_pipeline::HostSpec::local() };
    let (s, tcp, proxy) = pipeline::server_with_tcp_host(case, local, 1).await;
    let slow = "steps:\n  - name: slow\n    image: leanloop/busybox:latest\n    commands: [sleep 300]\n";
    let (_a, repo_a) = repo_with_file(&s, "spread-a", slow, json!({})).await;
    let (_b, repo_b) = repo_with_file(&s, "spread-b", slow, json!({})).await;
    let a = trigger(&s, repo_a, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    let b = trigger(&s, repo_b, json!({ "branch": "main" })).await["id"].as_i64().unwrap();
    let mut hosts = Vec::new();
    for run in [a, b] {
        let s = &s;
        let host = eventually("both runs to start", || async move {
            let (_, r) = call(s, Method::GET, &format!("/runs/{run}"), None).await;
            (r["status"] == "running").then(|| r["host"].as_str().unwrap().to_owned())
        })
        .await;
        hosts.push(host);
    }
    hosts.sort();
    let mut expected = vec![tcp.clone(), "unix:///var/run/docker.sock".to_owned()];
    expected.sort();
    assert_eq!(hosts, expected, "one run on each host with a free place");
    for run in [a, b] {
        let (status, _) = call(&s, Method::POST, &format!("/runs/{run}/cancel"), None).await;
        assert_eq!(status, 202);
        assert_eq!(finished(&s, run).await["status"], "cancelled");
    }
    pipeline::stop_leaving_nothing(s, case).await;
    proxy.abort();
}

const ON_FAILURE: &str = "\
steps:
  - name: lint
    image: leanloop/busybox:latest
    failure: ignore
    commands: [echo lint found problems, exit 3]
  - name: test
    image: leanloop/busybox:latest
    commands: [./test.sh]
  - name: notify
    image: leanloop/busybox:latest
    when: { status: [failure] }
    commands: [echo the run failed]
  - name: publish
    image: leanloop/busybox:latest
    commands: [echo published]
";

#[tokio::test(flavor = "multi_thread")]
async fn ignored_failures_go_on_and_failure_steps_run_only_on_failure() {
    let case = "onfailure";
    let s = pipeline::server(case).await;
    let (repo, repo_id) = repo_with_file(&s, "onfailure", ON_FAILURE, json!({})).await;

    // Lint fails but is ignored; the rest passes; the failure step is skipped.
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(
        (step(&run, "lint")["status"].as_str(), step(&run, "lint")["exit_code"].as_i64()),
        (Some("failure"), Some(3))
    );
    assert!(step(&run, "lint")["note"].as_str().unwrap().contains("ignored"));
    assert_eq!(step(&run, "test")["status"], "success");
    assert_eq!(step(&run, "notify")["status"], "skipped");
    assert_eq!(step(&run, "publish")["status"], "success");
    // A restart keeps an ignored failure and a step not meant to run.
    let server = &s;
    let restart = |run: &Value| {
        let path = format!("/runs/{}/restart", run["id"]);
        async move { call(server, Method::POST, &path, Some(json!({ "from": "publish" }))).await }
    };
    let (status, again) = restart(&run).await;
    assert_eq!(status, 201, "{again}");
    let again = finished(&s, again["id"].as_i64().unwrap()).await;
    assert_eq!((&again["status"], &step(&again, "lint")["status"]), (&json!("success"), &json!("reused")));

    // Tests fail: the failure step runs, what follows it does not.
    repo.write("FAIL_TESTS", "yes\n");
    repo.commit("break the tests");
    let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
    let run = finished(&s, run["id"].as_i64().unwrap()).await;
    assert_eq!(run["status"], "failure", "{run}");
    assert_eq!(step(&run, "test")["status"], "failure");
    assert_eq!(step(&run, "notify")["status"], "success");
    assert_eq!(step(&run, "publish")["status"], "skipped");
    let logs = log_text(&s, run["id"].as_i64().unwrap()).await;
    assert!(logs.contains("[notify] the run failed"), "{logs}");
    // A step skipped because the tests failed has no result to reuse.
    let (status, err) = restart(&run).await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("step `test` did not pass"), "{err}");
    pipeline::stop_leaving_nothing(s, case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_slower_than_the_request_deadline_is_answered_while_it_goes_on() {
    let case = "slow-rollback";
    // Answers come within two thirds of the deadline: 2 s here.
    let s = pipeline::server_with(case, |c| c.request_timeout = std::time::Duration::from_secs(3)).await;
    let file = "steps:\n  - name: image\n    build: { service: slow-web }\n  - name: deploy\n    deploy: { service: slow-web, port: 8080, health: /health, health_timeout: 60 }\n";
    let (repo, repo_id) = repo_with_file(&s, "slow", file, json!({})).await;
    // Replicas that take 4 s to start answering.
    repo.write(
        "Dockerfile",
        "ARG BASE=leanloop/busybox:latest\nFROM ${BASE}\nCOPY site/ /www/\nEXPOSE 8080\nCMD [\"sh\", \"-c\", \"sleep 4; exec httpd -f -p 8080 -h /www\"]\n",
    );
    repo.commit("slow to start, serving version 1");
    for version in ["1", "2"] {
        if version == "2" {
            repo.write("site/index.html", "version: 2\n");
            repo.commit("version 2");
        }
        let run = trigger(&s, repo_id, json!({ "branch": "main" })).await;
        let run = finished(&s, run["id"].as_i64().unwrap()).await;
        assert_eq!(run["status"], "success", "{run}");
    }
    let (status, back) = call(&s, Method::POST, "/services/slow-web/environments/production/rollback", None).await;
    assert_eq!(status, 202, "{back}");
    assert_eq!((&back["status"], &back["trigger"]), (&json!("deploying"), &json!("rollback")), "{back}");
    // Asked again meanwhile: refused, not a second rollback; nor can the
    // service be removed under the deploy, which would bring it back.
    // The refusal says a retry will get past it, and when to try.
    let again = s
        .client
        .post(s.url(&format!("/api/v1/projects/{}/services/slow-web/environments/production/rollback", s.project.id)))
        .bearer_auth(&s.project.deploy_key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.headers()["retry-after"], "5");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["error"]["reason"], "deploy_in_progress", "{again}");
    let (status, removed) = call(&s, Method::DELETE, "/services/slow-web/environments/production", None).await;
    assert_eq!(status, 409, "{removed}");
    assert_eq!(removed["error"]["reason"], "deploy_in_progress", "{removed}");
    let live = eventually_within("the rollback to go live", pipeline::RUN_DEADLINE, || async {
        let (_, r) = call(&s, Method::GET, &format!("/releases/{}", back["id"]), None).await;
        (r["status"] == "live").then_some(r)
    })
    .await;
    serves(&live, 1, "1").await;
    let (status, _) = call(&s, Method::DELETE, "/services/slow-web/environments/production", None).await;
    assert_eq!(status, 200);
    pipeline::stop_leaving_nothing(s, case).await;
}
