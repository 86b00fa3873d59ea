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
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
    assert!(
        env_dir.path().join("control.sqlite").exists(),
        "LEANLOOP_DATA_DIR is honoured"
    );

    let output = Command::new(BIN)
        .args(["project", "create", " ", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("name"));
}

#[test]
fn serve_prints_where_to_send_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("read key");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    let base = text
        .split("listening on ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let write_key = text
        .split("write key")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let read_key = text
        .split("read key")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        text.contains("/v1/batch") && text.contains("/metrics"),
        "{text}"
    );

    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{base}/v1/track"))
        .basic_auth(&write_key, Some(""))
        .json(&serde_json::json!({"userId": "u", "event": "From CLI"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // SIGTERM: finish, store the queue, exit 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait()));
    let status = exited
        .recv_timeout(Duration::from_secs(30))
        .expect("serve stops after SIGTERM")
        .unwrap();
    assert!(status.success());

    // Restarted over the same directory: same project, the event is there.
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let again: Vec<String> = lines.by_ref().take(9).map(Result::unwrap).collect();
    assert!(
        again.iter().any(|l| l.contains(&read_key)),
        "the default project is kept: {again:?}"
    );
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
