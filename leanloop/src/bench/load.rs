//! The load generator: keep-alive connections posting as fast as answers
//! come back, each recording its latencies.

use super::server::Child;
use anyhow::Result;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `/v1/batch` with this many events a request.
    Batch(usize),
    /// One event per `/v1/track` request.
    Single,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
    pub unavailable: u64,
    pub elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    pub fn p50_ms(&self) -> f64 {
        self.percentile_ms(0.50)
    }

    pub fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }

    /// Adds another run's counts, time and latencies to these.
    pub fn absorb(&mut self, other: Outcome) {
        self.add(other);
        self.latencies_us.sort_unstable();
    }

    /// [`Outcome::absorb`], leaving the latencies unsorted.
    fn add(&mut self, other: Outcome) {
        self.requests += other.requests;
        self.events += other.events;
        self.errors += other.errors;
        self.unavailable += other.unavailable;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
    }
}

pub async fn run(server: &Child, shape: Shape, connections: usize, duration: Duration) -> Result<Outcome> {
    let (path, per_request) = match shape {
        Shape::Batch(n) => ("/v1/batch", n),
        Shape::Single => ("/v1/track", 1),
    };
    let url = format!("{}{path}", server.base);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (url, key) = (url.clone(), server.write_key.clone());
        tasks.push(tokio::spawn(async move {
            // One client per task, so each task holds its own keep-alive connection.
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
            let mut out = Outcome::default();
            let mut body = String::new();
            let mut events = Events::new(connection);
            while Instant::now() < deadline {
                body.clear();
                match shape {
                    Shape::Batch(size) => events.batch(&mut body, size),
                    Shape::Single => events.one(&mut body, "s"),
                }
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .basic_auth(&key, Some(""))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                out.latencies_us.push(sent.elapsed().as_micros() as u64);
                out.requests += 1;
                match response {
                    Ok(r) if r.status().is_success() => {
                        out.events += per_request as u64;
                        let _ = r.bytes().await;
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => out.unavailable += 1,
                    _ => out.errors += 1,
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        total.add(task.await??);
    }
    // The tasks ran at once: the run took the wall time, not their sum.
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// Writes the events one connection sends, each with a unique message id.
struct Events {
    connection: usize,
    sent: u64,
    /// Random ids as SDKs send them, drawn without a system call each: the
    /// load generator shares the server's two cores.
    ids: SmallRng,
}

impl Events {
    fn new(connection: usize) -> Events {
        Events { connection, sent: 0, ids: SmallRng::from_os_rng() }
    }

    fn batch(&mut self, body: &mut String, size: usize) {
        body.push_str(r#"{"batch":["#);
        for i in 0..size {
            if i > 0 {
                body.push(',');
            }
            self.one(body, "b");
        }
        body.push_str("]}");
    }

    /// One realistic track event; the phase and connection ride in the
    /// properties.
    fn one(&mut self, body: &mut String, phase: &str) {
        self.sent += 1;
        let n = self.sent;
        let _ = write!(
            body,
            r#"{{"type":"track","event":"checkout_step","userId":"user-{user}","messageId":"{id}","timestamp":"2026-01-15T10:00:00.000Z","properties":{{"step":{step},"plan":"pro","amount":12.5,"currency":"EUR","phase":"{phase}","connection":{connection}}},"context":{{"userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36","app":{{"version":"1.4.{step}"}},"page":{{"url":"https://shop.example/checkout?utm_source=newsletter&utm_campaign=spring","referrer":"https://www.google.com/"}},"library":{{"name":"bench"}}}}}}"#,
            id = uuid::Builder::from_random_bytes(self.ids.random()).into_uuid(),
            user = n % 5000,
            step = n % 4,
            connection = self.connection,
        );
    }
}
