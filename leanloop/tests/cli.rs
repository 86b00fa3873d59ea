//! The `leanloop` binary as other tools drive it: stable output of
//! `project create --json`, and `serve` printing its URLs and keys, taking
//! events and stopping cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_leanloop");

#[test]
fn project_create_prints_keys_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["project", "create", "Web Shop", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let project: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(project["id"].as_i64().unwrap() >= 1);
    assert!(project["write_key"].as_str().unwrap().starts_with("llw_"));
    assert!(project["read_key"].as_str().unwrap().starts_with("llr_"));

    let env_dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["project", "create", "Via Env", "--json"])
        .env("LEANLOOP_DATA_DIR", env_dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(env_dir.path().join("control.sqlite").exists(), "LEANLOOP_DATA_DIR is honoured");

    let output = Command::new(BIN).args(["project", "create", " ", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("name"));
}

/// A `leanloop serve` child on a free port and the banner it printed, up to
/// and including the deploy key.
fn serve(dir: &std::path::Path) -> (std::process::Child, String) {
    serve_logging_to(dir, Stdio::null())
}

fn serve_logging_to(dir: &std::path::Path, stderr: Stdio) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // A piped stderr is closed at once: its reader went away.
    drop(child.stderr.take());
    let mut banner = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("deploy key");
        banner.push(line);
        if done {
            break;
        }
    }
    (child, banner.join("\n"))
}

/// SIGTERM, then the exit status, which must come within 30 s.
fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait()));
    exited.recv_timeout(Duration::from_secs(30)).expect("serve stops after SIGTERM").unwrap()
}

/// The value printed after `label` on its banner line.
fn banner_value(banner: &str, label: &str) -> String {
    banner.split(label).nth(1).unwrap().lines().next().unwrap().trim().to_owned()
}

#[test]
fn serve_prints_where_to_send_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (child, text) = serve(dir.path());
    let base = banner_value(&text, "listening on ");
    let write_key = banner_value(&text, "write key");
    let read_key = banner_value(&text, "read key");
    assert!(banner_value(&text, "deploy key").starts_with("lld_"), "{text}");
    assert!(text.contains("/v1/batch") && text.contains("/metrics"), "{text}");

    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{base}/v1/track"))
        .basic_auth(&write_key, Some(""))
        .json(&serde_json::json!({"userId": "u", "event": "From CLI"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // SIGTERM: finish, store the queue, exit 0.
    let status = terminate(child);
    assert!(status.success());

    // Restarted over the same directory: same project, the event is there.
    let (mut child, again) = serve(dir.path());
    assert_eq!(banner_value(&again, "read key"), read_key, "the default project is kept");
    let base = banner_value(&again, "listening on ");
    let count: serde_json::Value = client
        .get(format!("{base}/api/v1/projects/1/events/count"))
        .bearer_auth(&read_key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(count["count"], 1);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn migrate_prints_the_cluster_ddl_that_deploy_ships() {
    // An empty variable counts as unset, as it does for `serve`.
    let output = Command::new(BIN)
        .args(["migrate", "--cluster", "leanloop"])
        .env("LEANLOOP_CLICKHOUSE_URL", "")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("ENGINE = Distributed(leanloop, leanloop, events_local"), "{printed}");
    let shipped = include_str!("../../deploy/clickhouse/cluster.sql");
    assert_eq!(
        printed, shipped,
        "deploy/clickhouse/cluster.sql is out of date: regenerate it with `leanloop migrate --cluster leanloop`"
    );

    let output = Command::new(BIN).args(["migrate", "--cluster", "prod; DROP"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--cluster"));
}

#[test]
fn a_closed_stderr_stops_neither_ingest_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (child, text) = serve_logging_to(dir.path(), Stdio::piped());
    let (base, write_key) = (banner_value(&text, "listening on "), banner_value(&text, "write key"));
    let client = reqwest::blocking::Client::new();
    for n in 0..20 {
        // Refused requests are logged: each is a write to the closed stderr.
        let bad = client.post(format!("{base}/v1/track")).basic_auth("nokey", Some("")).body("{}").send().unwrap();
        assert_eq!(bad.status(), 401);
        let r = client
            .post(format!("{base}/v1/track"))
            .basic_auth(&write_key, Some(""))
            .json(&serde_json::json!({"userId": "u", "event": format!("e{n}")}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let status = terminate(child);
    assert!(status.success(), "{status}");
}
