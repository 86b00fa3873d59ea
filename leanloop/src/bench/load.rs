//! The load generator: keep-alive connections posting as fast as answers
//! come back, each recording its latencies.

use super::server::Child;
use anyhow::Result;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
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
            let mut events = Events::new(connection, shape);
            while Instant::now() < deadline {
                let body = events.next_body();
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .basic_auth(&key, Some(""))
                    .header("content-type", "application/json")
                    .body(body)
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

/// The request bodies one connection sends: one body laid out once, whose
/// events differ only in fixed-width places (message id, user, step),
/// rewritten in place for each request. Formatting every event anew took
/// an eighth of the load generator's CPU, which shares the server's two
/// cores.
struct Events {
    body: Vec<u8>,
    slots: Vec<Slot>,
    sent: u64,
    /// Random ids as SDKs send them, drawn without a system call each.
    ids: SmallRng,
}

/// Where one event's varying parts sit in the body.
struct Slot {
    user: usize,
    id: usize,
    step: usize,
    version: usize,
}

const USERS: u64 = 5000;
const ID_LEN: usize = 36;

impl Events {
    /// A Segment batch of `n` events, or one bare event; the phase and
    /// connection ride in the properties.
    fn new(connection: usize, shape: Shape) -> Events {
        let (size, phase, batch) = match shape {
            Shape::Batch(n) => (n, "b", true),
            Shape::Single => (1, "s", false),
        };
        let mut body = Vec::new();
        if batch {
            body.extend_from_slice(br#"{"batch":["#);
        }
        let slots = (0..size)
            .map(|i| {
                if i > 0 {
                    body.push(b',');
                }
                event(&mut body, phase, connection)
            })
            .collect();
        if batch {
            body.extend_from_slice(b"]}");
        }
        Events { body, slots, sent: 0, ids: SmallRng::from_os_rng() }
    }

    /// The next body: every event with a new message id, the next user
    /// (of 5,000) and the next step (of 4).
    fn next_body(&mut self) -> Vec<u8> {
        for slot in &self.slots {
            self.sent += 1;
            let n = self.sent;
            let id = uuid::Builder::from_random_bytes(self.ids.random()).into_uuid();
            id.hyphenated().encode_lower(&mut self.body[slot.id..slot.id + ID_LEN]);
            let mut user = n % USERS;
            for digit in self.body[slot.user..slot.user + 4].iter_mut().rev() {
                *digit = b'0' + (user % 10) as u8;
                user /= 10;
            }
            let step = b'0' + (n % 4) as u8;
            self.body[slot.step] = step;
            self.body[slot.version] = step;
        }
        self.body.clone()
    }
}

/// Appends one realistic track event with placeholders in its varying
/// places, and answers where they are.
fn event(body: &mut Vec<u8>, phase: &str, connection: usize) -> Slot {
    body.extend_from_slice(br#"{"type":"track","event":"checkout_step","userId":"user-"#);
    let user = body.len();
    body.extend_from_slice(b"0000");
    body.extend_from_slice(br#"","messageId":""#);
    let id = body.len();
    body.extend_from_slice(&[b'0'; ID_LEN]);
    body.extend_from_slice(br#"","timestamp":"2026-01-15T10:00:00.000Z","properties":{"step":"#);
    let step = body.len();
    body.push(b'0');
    let _ = write!(
        body,
        r#","plan":"pro","amount":12.5,"currency":"EUR","phase":"{phase}","connection":{connection}}},"context":{{"userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36","app":{{"version":"1.4."#
    );
    let version = body.len();
    body.push(b'0');
    body.extend_from_slice(
        br#""},"page":{"url":"https://shop.example/checkout?utm_source=newsletter&utm_campaign=spring","referrer":"https://www.google.com/"},"library":{"name":"bench"}}}"#,
    );
    Slot { user, id, step, version }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json_with_fresh_ids_and_varying_users() {
        let mut events = Events::new(3, Shape::Batch(100));
        let first: serde_json::Value = serde_json::from_slice(&events.next_body()).unwrap();
        let second: serde_json::Value = serde_json::from_slice(&events.next_body()).unwrap();
        let (a, b) = (first["batch"].as_array().unwrap(), second["batch"].as_array().unwrap());
        assert_eq!((a.len(), b.len()), (100, 100));
        let ids: std::collections::HashSet<&str> =
            a.iter().chain(b).map(|e| e["messageId"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 200);
        assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()));
        assert_eq!(a[0]["userId"], "user-0001");
        assert_eq!(b[99]["userId"], "user-0200");
        assert_eq!(
            (a[2]["properties"]["step"].as_u64(), a[2]["context"]["app"]["version"].as_str()),
            (Some(3), Some("1.4.3"))
        );
        assert_eq!(a[0]["properties"]["connection"], 3);

        let single: serde_json::Value = serde_json::from_slice(&Events::new(0, Shape::Single).next_body()).unwrap();
        let one: serde_json::Value = serde_json::from_slice(&Events::new(0, Shape::Batch(1)).next_body()).unwrap();
        assert_eq!(one["batch"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            (single["event"].as_str(), single["properties"]["phase"].as_str()),
            (Some("checkout_step"), Some("s"))
        );
    }
}
