//! Sustained ingest the way a real client behaves: batches with fresh
//! message ids, and a batch not acknowledged (connection refused, 503,
//! timeout) is sent again with the same ids until it is.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// Longest a test waits for the load to make a given amount of progress.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(90);

pub struct Sustained {
    stop: Arc<AtomicBool>,
    /// Events acknowledged so far, for tests that wait on progress.
    acknowledged: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Outcome>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Every event the server acknowledged (2xx).
    pub acknowledged: HashSet<Uuid>,
    /// Every event sent at least once.
    pub sent: HashSet<Uuid>,
    /// Answers that were not 2xx, and requests that got no answer.
    pub refusals: u64,
    pub failures: u64,
}

/// Where to send: shared so a test can point the load at a restarted server.
pub type Target = Arc<RwLock<String>>;

pub fn target(base: &str) -> Target {
    Arc::new(RwLock::new(base.to_owned()))
}

/// Starts posting `batch`-event requests to `target`'s `/v1/batch`, one
/// every `pace` at most (bounded load on a shared machine).
pub fn sustain(target: Target, write_key: String, batch: usize, pace: Duration) -> Sustained {
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let (flag, progress) = (stop.clone(), acknowledged.clone());
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let mut out = Outcome::default();
        // A rate, not a wait: at most one request per `pace`.
        let mut ticks = tokio::time::interval(pace);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !flag.load(Ordering::Relaxed) {
            ticks.tick().await;
            let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::new_v4()).collect();
            let events: Vec<serde_json::Value> = ids
                .iter()
                .map(|id| {
                    serde_json::json!({"type": "track", "event": "load", "userId": format!("u{}", id.as_u128() % 97),
                                       "messageId": id.to_string(), "properties": {"n": 1}})
                })
                .collect();
            let body = serde_json::json!({ "batch": events });
            out.sent.extend(ids.iter().copied());
            let mut pause = Duration::from_millis(20);
            loop {
                let base = target.read().expect("target lock").clone();
                let answer =
                    client.post(format!("{base}/v1/batch")).basic_auth(&write_key, Some("")).json(&body).send().await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        out.acknowledged.extend(ids.iter().copied());
                        progress.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Ok(_) => out.refusals += 1,
                    Err(_) => out.failures += 1,
                }
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
        out
    });
    Sustained { stop, acknowledged, task }
}

impl Sustained {
    /// Events acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits until `more` events beyond those acknowledged now are
    /// acknowledged: progress, not time, paces the fault tests.
    pub async fn until_more_acknowledged(&self, more: u64) {
        let goal = self.acknowledged() + more;
        let what = format!("{goal} events acknowledged");
        crate::eventually_within(&what, PROGRESS_DEADLINE, || async { (self.acknowledged() >= goal).then_some(()) })
            .await;
    }

    pub async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}
