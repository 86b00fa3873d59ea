//! ClickHouse for the tests: the shared server the test command starts
//! (`LEANLOOP_TEST_CLICKHOUSE_URL`), a fresh database per test on it, and
//! private servers a test may stop and restart (through
//! `scripts/services/clickhouse.sh`, the same script the test command uses).

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/clickhouse.sh")
}

/// The shared server's HTTP address. Missing means the test command did not
/// start ClickHouse: a failure, never a skip.
pub fn shared() -> String {
    std::env::var("LEANLOOP_TEST_CLICKHOUSE_URL").expect(
        "LEANLOOP_TEST_CLICKHOUSE_URL is not set: run the suite through scripts/test.sh, which starts ClickHouse",
    )
}

/// A database name no other test uses.
pub fn fresh_database() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// The store URL for `database` on the server at `http`.
pub fn store_url(http: &str, database: &str) -> String {
    format!("{}/?database={database}", http.trim_end_matches('/'))
}

/// Runs `sql` over HTTP and returns the answer's text (TSV).
pub async fn query(http: &str, sql: &str) -> String {
    let response = reqwest::Client::new().post(http).body(sql.to_owned()).send().await.expect("ClickHouse answers");
    let status = response.status();
    let text = response.text().await.expect("ClickHouse answer text");
    assert!(status.is_success(), "ClickHouse refused `{sql}`: {text}");
    text
}

/// `(count(), uniqExact(uuid))` of a database's events.
pub async fn totals(http: &str, database: &str) -> (u64, u64) {
    // As text: 18.16's `uniqExact(uuid)` is slow on ids alike in their high bits.
    let text =
        query(http, &format!("SELECT count(), uniqExact(toString(uuid)) FROM {database}.events FORMAT TSV")).await;
    let mut parts = text.split_whitespace().map(|n| n.parse::<u64>().expect("a number"));
    (parts.next().expect("count"), parts.next().expect("uniqExact"))
}

/// Every stored uuid of a database.
pub async fn stored_uuids(http: &str, database: &str) -> std::collections::HashSet<uuid::Uuid> {
    let text = query(http, &format!("SELECT toString(uuid) FROM {database}.events FORMAT TSV")).await;
    text.lines().map(|l| l.parse().expect("a uuid")).collect()
}

/// A ClickHouse server of the test's own, in a temporary directory, which it
/// can stop and start again on the same ports and data.
pub struct Private {
    dir: tempfile::TempDir,
    pub http: String,
    ports: (String, String),
}

impl Private {
    pub fn start() -> Private {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = run(&["start", &dir.path().to_string_lossy()]);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("port file").trim().to_owned();
        let ports = (read("http_port"), read("tcp_port"));
        Private { dir, http, ports }
    }

    pub fn stop(&self) {
        run(&["stop", &self.dir.path().to_string_lossy()]);
    }

    /// Stops the server's process (SIGSTOP) or lets it go on (SIGCONT): it
    /// keeps taking connections, as a stuck server does, and answers none.
    pub fn freeze(&self, frozen: bool) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).expect("the server's pid");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, pid.trim()]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts again on the same ports over the same data.
    pub fn restart(&self) {
        run(&["start", &self.dir.path().to_string_lossy(), &self.ports.0, &self.ports.1]);
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // A frozen server would not hear the stop.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pid")) {
            let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
        }
        let _ = Command::new(script()).args(["stop", &self.dir.path().to_string_lossy()]).output();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(script()).args(args).output().expect("running scripts/services/clickhouse.sh");
    assert!(
        out.status.success(),
        "clickhouse.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
