//! The server under test, run as a child process of the benchmark so its
//! memory is measured on its own.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Child {
    process: std::process::Child,
    pub base: String,
    pub project_id: i64,
    pub write_key: String,
    pub read_key: String,
    client: reqwest::Client,
}

impl Child {
    /// Starts `leanloop serve` on a free loopback port over `data_dir`.
    pub async fn start(data_dir: &Path) -> Result<Child> {
        Child::spawn(
            Command::new(std::env::current_exe()?)
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(data_dir)
                .env("RUST_LOG", std::env::var("LEANLOOP_BENCH_LOG").unwrap_or_else(|_| "warn".into())),
        )
    }

    /// Runs `command`, which must print `listening on http://ADDR` and may
    /// print the default project's keys, as `leanloop serve` does.
    pub fn spawn(command: &mut Command) -> Result<Child> {
        let mut process = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdout = process.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut base, mut project_id, mut write_key, mut read_key) = (None, 0, String::new(), String::new());
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.split("listening on ").nth(1) {
                base = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.trim().strip_prefix("write key") {
                write_key = rest.trim().to_owned();
            } else if let Some(rest) = line.trim().strip_prefix("read key") {
                read_key = rest.trim().to_owned();
                break;
            } else if let Some(id) = line.split("(id ").nth(1) {
                project_id = id.trim_end_matches(')').parse().unwrap_or(0);
            } else if line.contains("bare server") {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let base = base.ok_or_else(|| anyhow!("the server did not print its address"))?;
        Ok(Child { process, base, project_id, write_key, read_key, client: reqwest::Client::new() })
    }

    /// Waits until `expected` events are stored; returns how long that took.
    pub async fn wait_stored(&self, expected: u64, deadline: Duration) -> Result<Duration> {
        let started = Instant::now();
        let url = format!("{}/api/v1/projects/{}/events/count", self.base, self.project_id);
        loop {
            let count: serde_json::Value =
                self.client.get(&url).bearer_auth(&self.read_key).send().await?.json().await?;
            let count = count["count"].as_u64().context("count in answer")?;
            if count >= expected {
                return Ok(started.elapsed());
            }
            if started.elapsed() > deadline {
                bail!("only {count} of {expected} events stored after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the child stops working: under 5 % of a core over a
    /// quarter second. Stored events are visible before the store has
    /// finished with them (DuckDB checkpoints on the committing thread), and
    /// a ceiling measured meanwhile would share the machine with that work.
    /// Returns how long the child stayed busy, or `None` (and says so) when
    /// it still was at the deadline, `after` naming what it was busy after.
    pub async fn wait_idle(&self, after: &str, deadline: Duration) -> Result<Option<Duration>> {
        const WINDOW: Duration = Duration::from_millis(250);
        let started = Instant::now();
        let mut before = self.cpu_seconds()?;
        while started.elapsed() < deadline {
            tokio::time::sleep(WINDOW).await;
            let now = self.cpu_seconds()?;
            if now - before < WINDOW.as_secs_f64() * 0.05 {
                return Ok(Some(started.elapsed().saturating_sub(WINDOW)));
            }
            before = now;
        }
        eprintln!("the server was still busy {deadline:?} after {after}");
        Ok(None)
    }

    /// CPU time the child has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.process.id())
    }

    /// The child's peak resident memory (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmHWM in /proc status"))?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// User + system CPU time of process `pid`, in seconds, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .ok_or_else(|| anyhow!("no CPU times in /proc stat"))?;
    Ok(ticks / 100.0)
}
