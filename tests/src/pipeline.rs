//! Pipeline test helpers: a git repository made from the fixture app, a
//! server whose pipeline pushes to the test registry and labels everything
//! it creates with the test's own mark, and the Docker look-ups that prove
//! nothing was left behind.

use crate::{eventually_within, TestServer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs build images and start containers: give them longer than a request.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// The registry the test command started (`host:port`); its absence fails.
pub fn registry() -> String {
    std::env::var("LEANLOOP_TEST_REGISTRY")
        .expect("LEANLOOP_TEST_REGISTRY is not set: run the suite with scripts/test.sh, which starts a registry")
}

/// A git repository holding the fixture application, committed on `main`.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Leanloop Tests",
            "-c",
            "user.email=tests@leanloop.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Repo {
    pub fn fixture() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/app");
        copy_dir(&source, dir.path());
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["add", "-A"]);
        git(dir.path(), &["commit", "-q", "-m", "first version"]);
        Repo { dir }
    }

    pub fn path(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    pub fn write(&self, file: &str, text: &str) {
        let path = self.dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Commits every change; returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        git(self.dir.path(), &["add", "-A"]);
        git(self.dir.path(), &["commit", "-q", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(self.dir.path(), args)
    }
}

/// A server with the pipeline on, marking its Docker objects with `case`.
pub async fn server(case: &str) -> TestServer {
    server_with(case, |_| {}).await
}

/// [`server`] with the configuration changed by `adjust`.
pub async fn server_with(case: &str, adjust: impl FnOnce(&mut leanloop::Config)) -> TestServer {
    server_in(tempfile::tempdir().expect("temp dir"), case, adjust).await
}

/// [`server_with`] over an existing data directory (to test restarts).
pub async fn server_in(
    data_dir: tempfile::TempDir,
    case: &str,
    adjust: impl FnOnce(&mut leanloop::Config),
) -> TestServer {
    let registry = registry();
    let case = case.to_owned();
    TestServer::start_in(data_dir, move |config| {
        config.pipeline.registry = Some(registry);
        config.pipeline.labels.insert("leanloop.test".into(), "1".into());
        config.pipeline.labels.insert("leanloop.test.case".into(), case);
        adjust(config);
    })
    .await
}

/// Calls the project's pipeline API with its deploy key; returns status and JSON body.
pub async fn call(s: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    s.api(&s.project.deploy_key, method, path, body).await
}

pub async fn add_repo(s: &TestServer, name: &str, repo: &Repo, extra: Value) -> i64 {
    let mut body = serde_json::json!({ "name": name, "source": repo.path() });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, repo) = call(s, reqwest::Method::POST, "/repos", Some(body)).await;
    assert_eq!(status, 201, "{repo}");
    repo["id"].as_i64().unwrap()
}

/// The fixture with `file` as its pipeline, committed and registered as `name`.
pub async fn repo_with_file(s: &TestServer, name: &str, file: &str, extra: Value) -> (Repo, i64) {
    let repo = Repo::fixture();
    repo.write("leanloop.yml", file);
    repo.commit(&format!("the {name} pipeline"));
    let id = add_repo(s, name, &repo, extra).await;
    (repo, id)
}

pub async fn trigger(s: &TestServer, repo: i64, body: Value) -> Value {
    let (status, run) = call(s, reqwest::Method::POST, &format!("/repos/{repo}/runs"), Some(body)).await;
    assert_eq!(status, 201, "{run}");
    run
}

/// Waits for a run to finish and returns it.
pub async fn finished(s: &TestServer, run: i64) -> Value {
    eventually_within(&format!("run {run} to finish"), RUN_DEADLINE, || async move {
        let (_, run) = call(s, reqwest::Method::GET, &format!("/runs/{run}"), None).await;
        let status = run["status"].as_str().unwrap_or("");
        (!matches!(status, "pending" | "running")).then_some(run)
    })
    .await
}

pub fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

pub async fn log_text(s: &TestServer, run: i64) -> String {
    let (status, logs) = call(s, reqwest::Method::GET, &format!("/runs/{run}/logs"), None).await;
    assert_eq!(status, 200, "{logs}");
    logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("[{}] {}\n", l["step"].as_str().unwrap(), l["line"].as_str().unwrap()))
        .collect()
}

/// Docker objects (containers, networks, volumes) carrying every one of
/// `labels` (`key=value`, or `key` for any value).
pub fn docker_objects(labels: &[&str]) -> Vec<String> {
    let list = |args: &[&str]| -> Vec<String> {
        let out = Command::new("docker").args(args).output().expect("the docker CLI runs");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| format!("{} {l}", args[0]))
            .collect()
    };
    let filters: Vec<String> = labels.iter().flat_map(|l| ["--filter".to_owned(), format!("label={l}")]).collect();
    let with = |head: &[&str], format: &str| {
        let mut args: Vec<&str> = head.to_vec();
        args.extend(filters.iter().map(String::as_str));
        args.extend(["--format", format]);
        list(&args)
    };
    let mut all = with(&["ps", "-a"], "{{.Names}}");
    all.extend(with(&["network", "ls"], "{{.Name}}"));
    all.extend(with(&["volume", "ls"], "{{.Name}}"));
    all
}

/// Checks no Docker object of the test (`leanloop.test.case=<case>`) is
/// left, then stops the server.
pub async fn stop_leaving_nothing(s: TestServer, case: &str) {
    assert_eq!(docker_objects(&[&format!("leanloop.test.case={case}")]), Vec::<String>::new(), "left behind");
    s.stop().await;
}

/// GETs `http://endpoint/path` and returns the body.
pub async fn fetch(endpoint: &str, path: &str) -> String {
    let response = reqwest::get(format!("http://{endpoint}{path}")).await.expect("the deployed service answers");
    assert!(response.status().is_success(), "{endpoint}{path}: {}", response.status());
    response.text().await.unwrap()
}

/// A [`server`] with two Docker hosts: `first`, then the local engine over
/// TCP ([`engine_over_tcp`]) with room for `capacity` runs. Returns the
/// server, the TCP host's URL and the proxy task.
pub async fn server_with_tcp_host(
    case: &str,
    first: leanloop_pipeline::HostSpec,
    capacity: usize,
) -> (TestServer, String, tokio::task::JoinHandle<()>) {
    let (tcp, proxy) = engine_over_tcp().await;
    let url = tcp.clone();
    let s = server_with(case, move |config| {
        config.pipeline.hosts = vec![first, leanloop_pipeline::HostSpec { url, capacity }];
    })
    .await;
    (s, tcp, proxy)
}

/// The local Docker Engine on a loopback TCP port — a byte-for-byte proxy to
/// its socket — so a test has a second, `tcp://` host. Abort the task to stop it.
pub async fn engine_over_tcp() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("bound");
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    (format!("tcp://{address}"), task)
}
