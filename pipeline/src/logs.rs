//! Run logs: numbered lines, masked, bounded, stored in batches and
//! broadcast live to followers.
//!
//! A follower first takes a snapshot (everything stored) and a subscription
//! in one locked moment, so no line falls between the two. A follower that
//! lags behind the broadcast re-reads from the store.

use crate::masks::Masks;
use crate::records::{now_ms, LogLine, Records, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::broadcast;

/// Lines kept per step; past it one notice is stored and the rest dropped.
pub const MAX_LINES_PER_STEP: usize = 20_000;
/// Longer lines are cut here (bytes, on a character boundary).
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Lines buffered before a write to the store.
const FLUSH_EVERY: usize = 200;
const LIVE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub enum LiveEvent {
    Line(LogLine),
    /// The run finished with this status; no more lines follow.
    End(Status),
}

pub struct RunLog {
    run_id: i64,
    records: Arc<Records>,
    secrets: Vec<String>,
    /// Built when first needed: a queued run holds only its secrets.
    masks: OnceLock<Masks>,
    state: Mutex<State>,
    live: broadcast::Sender<LiveEvent>,
}

struct State {
    seq: i64,
    pending: Vec<LogLine>,
    per_step: HashMap<String, usize>,
}

impl RunLog {
    /// `secrets` are values that never reach the store or a follower.
    pub fn new(run_id: i64, records: Arc<Records>, secrets: Vec<String>) -> Result<RunLog, crate::PipelineError> {
        let seq = records.last_log_seq(run_id)?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Ok(RunLog {
            run_id,
            records,
            secrets,
            masks: OnceLock::new(),
            state: Mutex::new(State { seq, pending: Vec::new(), per_step: HashMap::new() }),
            live,
        })
    }

    /// `text` with the run's secrets masked, for what is recorded beside
    /// the log (a step's note, the run's error).
    pub fn mask(&self, text: &str) -> String {
        self.masks().apply(text)
    }

    /// The run's masks, built on first use (a fraction of a second of a
    /// core for the largest secrets: [`RunLog::prepare`] first where that
    /// matters).
    fn masks(&self) -> &Masks {
        self.masks.get_or_init(|| Masks::new(&self.secrets))
    }

    /// Builds the masks off the async threads, before a run's first line.
    pub async fn prepare(self: &Arc<Self>) {
        let log = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            log.masks();
        })
        .await;
    }

    pub fn line(&self, step: &str, text: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let count = state.per_step.entry(step.to_owned()).or_insert(0);
        *count += 1;
        let text = match (*count).cmp(&(MAX_LINES_PER_STEP + 1)) {
            std::cmp::Ordering::Greater => return,
            std::cmp::Ordering::Equal => format!("[log truncated after {MAX_LINES_PER_STEP} lines]"),
            std::cmp::Ordering::Less => {
                let text = text.trim_end_matches(['\r', '\n']);
                let mut kept = self.masks().apply_within(text, MAX_LINE_BYTES);
                if text.len() > MAX_LINE_BYTES {
                    kept.push_str(" [line cut]");
                }
                kept
            }
        };
        state.seq += 1;
        let line = LogLine { seq: state.seq, step: step.to_owned(), at: now_ms(), line: text };
        let _ = self.live.send(LiveEvent::Line(line.clone()));
        state.pending.push(line);
        if state.pending.len() >= FLUSH_EVERY {
            self.flush_locked(&mut state);
        }
    }

    fn flush_locked(&self, state: &mut State) {
        if state.pending.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut state.pending);
        if let Err(e) = self.records.append_logs(self.run_id, &lines) {
            tracing::error!(run = self.run_id, error = %e, "storing run logs failed");
        }
    }

    pub fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut state);
    }

    /// Everything so far is in the store, and the receiver gets all later lines.
    pub fn follow(&self) -> broadcast::Receiver<LiveEvent> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut state);
        self.live.subscribe()
    }

    pub fn end(&self, status: Status) {
        self.flush();
        let _ = self.live.send(LiveEvent::End(status));
    }
}

/// What is held of a line without its newline yet: its kept part, and room
/// past it for a secret that starts there to be masked whole before the
/// line is cut (a secret split across two pieces would be masked in
/// neither).
pub(crate) const HELD_LINE_BYTES: usize = MAX_LINE_BYTES + 64 * 1024;

/// Splits a byte stream into lines, holding a partial last line until the
/// next chunk (or the end) completes it. A line longer than
/// [`HELD_LINE_BYTES`] is emitted once, at that length (to be masked and
/// cut), and the rest of it is dropped up to its newline.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// Dropping the rest of a line already emitted cut.
    cutting: bool,
}

impl Lines {
    pub fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&str)) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let (part, rest) = match newline {
                Some(end) => chunk.split_at(end + 1),
                None => (chunk, &[][..]),
            };
            chunk = rest;
            if self.cutting {
                self.cutting = newline.is_none();
                continue;
            }
            let room = HELD_LINE_BYTES - self.partial.len();
            self.partial.extend_from_slice(&part[..part.len().min(room)]);
            if newline.is_some() || part.len() >= room {
                // Held to its length with no newline yet: the rest goes.
                self.cutting = newline.is_none();
                let line = std::mem::take(&mut self.partial);
                emit(&String::from_utf8_lossy(&line));
            }
        }
    }

    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        self.cutting = false;
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(&String::from_utf8_lossy(&line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_chunks_and_keep_the_tail() {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        lines.push(b"one\ntw", |l| out.push(l.to_owned()));
        lines.push(b"o\nthree", |l| out.push(l.to_owned()));
        lines.finish(|l| out.push(l.to_owned()));
        assert_eq!(out, vec!["one\n", "two\n", "three"]);
    }

    #[test]
    fn a_long_line_is_one_line_masked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let records = Arc::new(Records::open(&dir.path().join("p.sqlite3")).unwrap());
        let secret = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let log = RunLog::new(1, records.clone(), vec![secret.into()]).unwrap();
        let mut lines = Lines::default();
        // The secret straddles where a stream of 8 KiB writes splits it,
        // across the kept part's end, and a line runs past what is held.
        let long = format!("{}{secret}{}\n", "a".repeat(MAX_LINE_BYTES - 10), "z".repeat(20_000));
        let endless = "y".repeat(HELD_LINE_BYTES * 2);
        for text in [long.as_str(), endless.as_str(), "\nafter\n"] {
            for piece in text.as_bytes().chunks(MAX_LINE_BYTES) {
                lines.push(piece, |l| log.line("s", l));
            }
        }
        lines.finish(|l| log.line("s", l));
        log.flush();
        let stored = records.logs(1, Some("s"), 0, 10).unwrap();
        let texts: Vec<&str> = stored.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(
            texts.len(),
            3,
            "one line each, not pieces: {:?}",
            texts.iter().map(|t| t.len()).collect::<Vec<_>>()
        );
        assert!(texts[0].starts_with(&"a".repeat(MAX_LINE_BYTES - 10)) && texts[0].ends_with(" [line cut]"));
        assert!(!texts[0].contains("ghp_") && !texts[0].contains("0123"), "{}", &texts[0][MAX_LINE_BYTES - 20..]);
        assert!(texts[1].starts_with('y') && texts[1].ends_with(" [line cut]"));
        assert_eq!(texts[2], "after");
    }

    #[test]
    fn secrets_are_masked_and_steps_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let records = Arc::new(Records::open(&dir.path().join("p.sqlite3")).unwrap());
        let secrets = vec!["hunter2".into(), "hunter2-long".into(), "first-half\r\nsecond-half\n".into()];
        let log = RunLog::new(1, records.clone(), secrets).unwrap();
        log.line("test", "token=hunter2-long and hunter2\n");
        // A secret of several lines reaches the log a line at a time.
        log.line("test", "hello first-half\r\n");
        log.line("test", "second-half\n");
        for i in 0..MAX_LINES_PER_STEP + 10 {
            log.line("big", &format!("line {i}"));
        }
        log.flush();
        let stored = records.logs(1, Some("test"), 0, 10).unwrap();
        let texts: Vec<&str> = stored.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(texts, ["token=******** and ********", "hello ********", "********"]);
        let big = records.logs(1, Some("big"), 0, u32::MAX).unwrap();
        assert_eq!(big.len(), MAX_LINES_PER_STEP + 1);
        assert!(big.last().unwrap().line.contains("truncated"));
    }
}
