//! Test harness: a real Leanloop server in this process, on an ephemeral
//! port, over a fresh data directory, with helpers that poll with deadlines
//! instead of sleeping.

pub mod browser;
pub mod clickhouse;
pub mod load;
pub mod pipeline;
pub mod process;

use leanloop::{App, Config, Role};
use leanloop_control::Project;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestServer {
    pub base: String,
    pub project: Project,
    pub client: reqwest::Client,
    pub collector: Arc<leanloop_collector::Collector>,
    pub control: Arc<leanloop_control::ControlPlane>,
    pub store: Arc<dyn leanloop_store::EventStore>,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts with the test configuration changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp dir");
        TestServer::start_in(data_dir, adjust).await
    }

    /// Starts over an existing data directory (to test restarts).
    pub async fn start_in(data_dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::for_tests(data_dir.path());
        config.duckdb.memory_limit = "256MB".into();
        // Deliver promptly so tests read what they wrote without waiting a
        // full production interval.
        config.collector.delivery_interval_ms = 20;
        adjust(&mut config);
        let app = App::build(config, Role::Server).await.expect("server starts");
        let base = format!("http://{}", app.address());
        let project = app.default_project().expect("a server creates a default project").clone();
        let collector = app.collector().clone();
        let control = app.control().clone();
        let store = app.store().clone();
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestServer {
            base,
            project,
            client: reqwest::Client::new(),
            collector,
            control,
            store,
            shutdown,
            serving,
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON with the project's write key as the Basic user name.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .basic_auth(&self.project.write_key, Some(""))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Calls the project's API (`path` under `/api/v1/projects/{id}`) with
    /// `key` as the Bearer token: the status and the JSON answer (null when
    /// empty, the text as a string when not JSON).
    pub async fn api(&self, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = self.url(&format!("/api/v1/projects/{}{path}", self.project.id));
        let mut request = self.client.request(method, url).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let answer =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, answer)
    }

    /// POSTs `batch()` (of `per_batch` events) to `/v1/batch` until it is
    /// refused with a 503: the events acknowledged before, and that answer.
    /// Anything but 200 or 503 fails, as does no refusal within `bound` events.
    pub async fn post_until_refused(
        &self,
        per_batch: u64,
        bound: u64,
        batch: impl Fn() -> Value,
    ) -> (u64, reqwest::Response) {
        let mut accepted = 0;
        loop {
            let r = self.post("/v1/batch", &batch()).await;
            match r.status().as_u16() {
                503 => return (accepted, r),
                200 => accepted += per_batch,
                other => panic!("{other} while filling: {}", r.text().await.unwrap_or_default()),
            }
            assert!(accepted < bound, "nothing refused after {accepted} events");
        }
    }

    /// Waits until everything acknowledged has been stored.
    pub async fn settle(&self) {
        self.settle_within(DEADLINE).await;
    }

    /// Like [`TestServer::settle`], for backlogs that take longer (after an outage).
    pub async fn settle_within(&self, deadline: Duration) {
        let queue = self.collector.queue();
        eventually_within("the backlog to be delivered", deadline, || async {
            (queue.backlog().used == 0).then_some(())
        })
        .await;
    }

    /// Stored events matching `query` (after the queue has drained).
    pub async fn count(&self, query: &[(&str, &str)]) -> u64 {
        self.settle().await;
        let answer = self.read(&format!("/api/v1/projects/{}/events/count", self.project.id), query).await;
        answer["count"].as_u64().expect("count is a number")
    }

    /// Asks the insight `kind` (`trend`, `funnel`, `people`, ...) with the
    /// read key, once the queue has drained: the status and the JSON answer.
    pub async fn insight(&self, kind: &str, query: &Value) -> (u16, Value) {
        self.settle().await;
        let response = self
            .client
            .post(self.url(&format!("/api/v1/projects/{}/insights/{kind}", self.project.id)))
            .bearer_auth(&self.project.read_key)
            .json(query)
            .send()
            .await
            .expect("insight request sent");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON answer"))
    }

    /// Newest events matching `query`.
    pub async fn events(&self, query: &[(&str, &str)]) -> Vec<Value> {
        self.settle().await;
        let answer = self.read(&format!("/api/v1/projects/{}/events", self.project.id), query).await;
        answer["events"].as_array().expect("events is a list").clone()
    }

    /// The one stored event named `name`.
    pub async fn only_event(&self, name: &str) -> Value {
        let events = self.events(&[("name", name)]).await;
        assert_eq!(events.len(), 1, "expected one `{name}` event, got {events:#?}");
        events.into_iter().next().expect("one event")
    }

    /// A person's merged traits, once the queue has drained.
    pub async fn user_traits(&self, user_id: &str) -> Option<Value> {
        self.settle().await;
        let (store, project, user) = (self.store.clone(), self.project.id, user_id.to_owned());
        let record = tokio::task::spawn_blocking(move || store.user(project, &user)).await.expect("task");
        record.expect("store answers").map(|r| r.traits)
    }

    /// The user an anonymous (or previous) id was linked to.
    pub async fn identity(&self, anonymous_id: &str) -> Option<String> {
        self.settle().await;
        let (store, project, anon) = (self.store.clone(), self.project.id, anonymous_id.to_owned());
        tokio::task::spawn_blocking(move || store.identity(project, &anon)).await.expect("task").expect("store answers")
    }

    async fn read(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.project.read_key)
            .query(query)
            .send()
            .await
            .expect("read request sent");
        assert_eq!(response.status(), 200, "read API refused {path}");
        response.json().await.expect("JSON answer")
    }

    /// Stops gracefully: in-flight requests finish and the queue is stored.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.serving.await.expect("server task").expect("server stopped cleanly");
        self.data_dir
    }
}

/// Polls `probe` until it yields a value, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, probe).await
}

/// [`eventually`] with its own deadline, for waits that take longer by
/// nature (a backlog after an outage).
pub async fn eventually_within<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The Python interpreter of the virtualenv holding the real SDK clients and
/// schemathesis (`LEANLOOP_TEST_PYTHON`, which the test script sets).
pub fn test_python() -> String {
    std::env::var("LEANLOOP_TEST_PYTHON")
        .expect("LEANLOOP_TEST_PYTHON names the virtualenv's python with the SDK clients: run scripts/test.sh")
}

/// The value of one series (name and labels exactly) in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A CORS preflight's answer lets a page POST with `headers`.
pub fn assert_preflight_allows(preflight: &reqwest::Response, headers: &[&str]) {
    let header = |name: &str| {
        preflight.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase()
    };
    let methods = header("access-control-allow-methods");
    assert!(methods == "*" || methods.split(',').any(|m| m.trim() == "post"), "allowed methods: {methods:?}");
    let allowed = header("access-control-allow-headers");
    for wanted in headers {
        // A wildcard never covers Authorization (the Fetch standard).
        let wildcard = allowed == "*" && *wanted != "authorization";
        assert!(
            wildcard || allowed.split(',').any(|h| h.trim() == *wanted),
            "{wanted} among the allowed headers: {allowed:?}"
        );
    }
}

/// A fresh message id.
pub fn message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
