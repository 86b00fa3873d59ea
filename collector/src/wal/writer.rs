//! The one thread that appends to the log: group commit.
//!
//! Appends wait in a channel while a write and its fsync are in progress; the
//! next round takes all of them, writes them with one `write` and one
//! `fdatasync`, and then answers every caller. Under load many requests share
//! one fsync, which is what keeps throughput close to the log-less path.
//! Records are written in place into a delivered segment kept for reuse
//! (`segments.rs`) or, when none is kept, a segment zero-filled ahead of
//! time ([`Spare`]), so that fsync has no file size to commit. Each record
//! is sealed with its position as it is laid out (`record.rs`).

use super::spare::Spare;
use super::Shared;
use super::{record, segments};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Most bytes written in one round, so one huge burst cannot delay the
/// answers of everything behind it for long.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

pub struct Append {
    pub record: Vec<u8>,
    pub done: oneshot::Sender<Result<(), String>>,
}

pub struct Writer {
    pub shared: Arc<Shared>,
    pub file: File,
    /// Position of the active segment's first byte.
    pub start: u64,
    /// Bytes of records in the active segment.
    pub len: u64,
    /// Bytes in the active segment's file: zeros after `len` when it was
    /// prepared ahead.
    pub allocated: u64,
    pub segment_bytes: u64,
    /// Where the active segment rolls ([`segments::roll_at`]).
    pub roll_at: u64,
    pub spare: Spare,
    pub reserve: segments::Reserve,
}

impl Writer {
    pub fn run(mut self, appends: Receiver<Append>) {
        let mut buffer = Vec::with_capacity(1 << 20);
        let mut group = Vec::new();
        while let Ok(first) = appends.recv() {
            group.push(first);
            let mut bytes = group[0].record.len();
            while bytes < MAX_GROUP_BYTES {
                match appends.try_recv() {
                    Ok(next) => {
                        bytes += next.record.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let size = bytes as u64;
            let result = self.write_group(&group, size, &mut buffer);
            let mut state = self.shared.lock();
            state.reserved -= size;
            state.write_error = result.as_ref().err().map(|e| (e.to_string(), Instant::now()));
            match &result {
                Ok(()) => state.end += size,
                Err(e) => {
                    tracing::error!(error = %e, "write-ahead log append failed; requests answered 503");
                    metrics::counter!("leanloop_log_write_errors_total").increment(1);
                }
            }
            drop(state);
            self.shared.changed.notify_all();
            metrics::histogram!("leanloop_log_group_appends").record(group.len() as f64);
            for append in group.drain(..) {
                let _ = append.done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
        tracing::debug!("log writer stopped");
    }

    /// Lays out `group`'s records (`size` bytes) in `buffer`, sealed for where they go,
    /// then writes and syncs them at the end of the log, rolling to a new
    /// segment first when the active one is full, or when the write would
    /// grow its file and a prepared one is ready. On failure the segment is
    /// cut back to its last synced length, so a later success does not
    /// follow garbage; if even that fails the log stops taking appends.
    fn write_group(&mut self, group: &[Append], size: u64, buffer: &mut Vec<u8>) -> io::Result<()> {
        let grows = self.len + size > self.allocated;
        if self.len >= self.roll_at
            || (grows && (self.spare.ready() || segments::recycled_ready(&self.shared.dir, self.segment_bytes)))
        {
            self.roll()?;
        }
        // Growing the file takes disk the event store needs to store what
        // the log holds (see `segments::Reserve`).
        let growth = (self.len + size).saturating_sub(self.allocated);
        if growth > 0 {
            let backlog = self.shared.lock().backlog();
            if let Some(refused) = self.reserve.refusal(&self.shared.dir, growth, backlog) {
                return Err(refused);
            }
        }
        buffer.clear();
        for append in group {
            let at = buffer.len();
            buffer.extend_from_slice(&append.record);
            record::seal(&mut buffer[at..], self.start + self.len + at as u64);
        }
        let bytes = &buffer[..];
        let started = Instant::now();
        let written = self.file.write_all_at(bytes, self.len).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.allocated = self.allocated.max(self.len);
                metrics::histogram!("leanloop_log_fsync_seconds").record(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                self.allocated = self.len;
                if let Err(cut) = self.file.set_len(self.len) {
                    self.shared.lock().failed =
                        Some(format!("log segment could not be repaired after a failed write: {cut}"));
                }
                Err(e)
            }
        }
    }

    /// Starts the next segment where the active one's records end: a
    /// delivered segment kept for reuse, else the spare when one is ready
    /// (either replaces the active file if that holds no records yet), else
    /// a new empty file.
    fn roll(&mut self) -> io::Result<()> {
        let start = self.start + self.len;
        let dir = self.shared.dir.clone();
        let path = segments::segment_path(&dir, start);
        let (file, allocated) = if let Some(reused) = segments::take_recycled(&dir, &path, self.segment_bytes)? {
            self.shared.lock().reused += 1;
            metrics::counter!("leanloop_log_segments_reused_total").increment(1);
            reused
        } else if self.spare.ready() {
            self.spare.take(&path)?
        } else {
            self.spare.retry();
            (OpenOptions::new().create_new(true).read(true).write(true).open(&path)?, 0)
        };
        segments::sync_dir(&dir)?;
        self.file = file;
        self.start = start;
        self.len = 0;
        self.allocated = allocated;
        self.roll_at = segments::roll_at(&dir, self.segment_bytes, allocated, self.reserve);
        self.shared.lock().segments.insert(start);
        Ok(())
    }
}
