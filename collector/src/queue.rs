//! The bounded queue between HTTP handlers and the event store, and the one
//! writer thread that drains it.
//!
//! Capacity is counted in items (events plus person updates). A push that
//! does not fit is refused whole and answered 503 with Retry-After; nothing
//! already queued is ever dropped. The writer stores up to
//! `write_batch_events` per transaction and retries failed writes with
//! backoff until they succeed or the process stops.
//!
//! Guarantee (until the write-ahead log lands): a 2xx means the events are in
//! this queue; they survive a graceful shutdown (the queue is drained) but not
//! a crash.

use crate::IngestError;
use leanloop_core::{Event, UserUpdate};
use leanloop_store::{EventStore, StoreError, WriteOutcome};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

struct Batch {
    events: Vec<Event>,
    users: Vec<UserUpdate>,
    /// Released when the batch is stored, making room for new pushes.
    _room: OwnedSemaphorePermit,
}

pub struct IngestQueue {
    sender: RwLock<Option<mpsc::Sender<Batch>>>,
    room: Arc<Semaphore>,
    capacity: usize,
    paused: Arc<Pause>,
    /// Receives once when the writer thread has stored everything and stopped.
    finished: Mutex<std::sync::mpsc::Receiver<()>>,
}

/// Holds the writer between batches while paused (maintenance, tests of
/// back-pressure); pushes keep filling the queue meanwhile.
#[derive(Default)]
struct Pause {
    on: Mutex<bool>,
    changed: Condvar,
}

impl Pause {
    fn wait_while_paused(&self) {
        let mut on = self.on.lock().unwrap_or_else(|p| p.into_inner());
        while *on {
            on = self.changed.wait(on).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn set(&self, value: bool) {
        *self.on.lock().unwrap_or_else(|p| p.into_inner()) = value;
        self.changed.notify_all();
    }
}

impl IngestQueue {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn EventStore>, capacity: usize, write_batch: usize) -> IngestQueue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let room = Arc::new(Semaphore::new(capacity));
        let paused = Arc::new(Pause::default());
        let (done, finished) = std::sync::mpsc::channel();
        {
            let (room, paused) = (room.clone(), paused.clone());
            std::thread::Builder::new()
                .name("event-writer".into())
                .spawn(move || {
                    write_loop(rx, store, write_batch.max(1), room, capacity, paused);
                    let _ = done.send(());
                })
                .expect("spawning the event writer thread");
        }
        metrics::gauge!("leanloop_ingest_queue_capacity").set(capacity as f64);
        IngestQueue { sender: RwLock::new(Some(tx)), room, capacity, paused, finished: Mutex::new(finished) }
    }

    /// Queues events and person updates, or refuses them all when they do not fit.
    pub fn push(&self, events: Vec<Event>, users: Vec<UserUpdate>) -> Result<(), IngestError> {
        let items = events.len() + users.len();
        if items == 0 {
            return Ok(());
        }
        let full = || IngestError::QueueFull { retry_after_secs: 1 };
        let permits = u32::try_from(items).map_err(|_| full())?;
        let guard = self.sender.read().unwrap_or_else(|p| p.into_inner());
        let sender = guard.as_ref().ok_or(IngestError::ShuttingDown)?;
        let room = self.room.clone().try_acquire_many_owned(permits).map_err(|_| full())?;
        sender.try_send(Batch { events, users, _room: room }).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => full(),
            mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
        })?;
        metrics::gauge!("leanloop_ingest_queue_depth").set(self.depth() as f64);
        Ok(())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items queued or being written.
    pub fn depth(&self) -> usize {
        self.capacity - self.room.available_permits()
    }

    pub fn pause(&self) {
        self.paused.set(true);
    }

    pub fn resume(&self) {
        self.paused.set(false);
    }

    /// Refuses new pushes, lets the writer store everything queued, and waits
    /// for it up to `timeout`. Returns the number of items not stored.
    pub fn drain(&self, timeout: Duration) -> usize {
        self.resume();
        self.sender.write().unwrap_or_else(|p| p.into_inner()).take();
        let _ = self.finished.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(timeout);
        self.depth()
    }
}

fn write_loop(
    mut rx: mpsc::Receiver<Batch>,
    store: Arc<dyn EventStore>,
    write_batch: usize,
    room: Arc<Semaphore>,
    capacity: usize,
    paused: Arc<Pause>,
) {
    while let Some(first) = rx.blocking_recv() {
        paused.wait_while_paused();
        let mut batches = vec![first];
        let mut queued = batches[0].events.len();
        while queued < write_batch {
            match rx.try_recv() {
                Ok(batch) => {
                    queued += batch.events.len();
                    batches.push(batch);
                }
                Err(_) => break,
            }
        }
        let events: Vec<Event> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.events)).collect();
        let users: Vec<UserUpdate> = batches.iter_mut().flat_map(|b| std::mem::take(&mut b.users)).collect();
        write_with_retry(&mut || store.write(&events, &users).map(|o| (o, Duration::ZERO)), &|| false);
        drop(batches);
        metrics::gauge!("leanloop_ingest_queue_depth").set((capacity - room.available_permits()) as f64);
    }
    tracing::info!("event writer stopped: queue drained");
}

/// Runs `write` until the store accepts: acknowledged events are never
/// dropped. Returns false only if `abandon` says to stop retrying (the
/// caller still holds the events, e.g. in the log). `write` answers how
/// long of it went on waiting for events to arrive (a write streamed from
/// the log waits for them), which the store's write time leaves out.
pub(crate) fn write_with_retry(
    write: &mut dyn FnMut() -> Result<(WriteOutcome, Duration), StoreError>,
    abandon: &dyn Fn() -> bool,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        match write() {
            Ok((outcome, waited)) => {
                let took = started.elapsed().saturating_sub(waited);
                metrics::histogram!("leanloop_store_write_seconds").record(took.as_secs_f64());
                metrics::counter!("leanloop_store_events_written_total").increment(outcome.inserted as u64);
                metrics::counter!("leanloop_store_duplicates_total").increment(outcome.duplicates as u64);
                return true;
            }
            Err(err) => {
                metrics::counter!("leanloop_store_write_errors_total").increment(1);
                tracing::error!(error = %err, retry_in_ms = backoff.as_millis() as u64, "event store write failed");
                if !err.is_retriable() {
                    tracing::error!("event store cannot accept writes; events stay queued until restart");
                }
                if abandon() {
                    return false;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
