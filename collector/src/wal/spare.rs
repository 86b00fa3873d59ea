//! The next segment file, filled with zeros ahead of time.
//!
//! An fdatasync after a write that grew the file must also commit the file's
//! new size and blocks, a filesystem journal write; after a write into blocks
//! that already hold data it flushes the data alone, which takes about half
//! as long (ext4 on this project's virtual disk: 0.30 ms instead of 0.51 ms
//! for a 4 KiB write; a preallocated but unwritten extent saves little, its
//! conversion is journalled too). Every single-event request waits for one,
//! so a thread fills the next segment with zeros, and syncs it, while the
//! current one is in use; the writer rolls onto it when no delivered
//! segment is kept for reuse (`segments.rs`), which needs no zeros written.
//! Zeros after the last record are not a record (a zero length reads as
//! damage), so recovery cuts them off like a torn tail. The spare costs one
//! segment of disk beside the log, and is only made while the disk has room
//! for two beside the reserve ([`segments::Reserve`]): it must never take
//! the space the log's own appends, or the event store, need. A
//! spare that could not be finished is removed, not left holding what it
//! had written.

use super::segments;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

/// The spare's name: not a segment's, so listing the log never sees it.
pub const SPARE_FILE: &str = "spare.tmp";

/// The writer's side of the thread that prepares spares.
pub struct Spare {
    path: PathBuf,
    bytes: u64,
    requests: Sender<()>,
    prepared: Receiver<io::Result<()>>,
    state: State,
}

#[derive(PartialEq)]
enum State {
    Preparing,
    Ready,
    /// The last attempt failed (a full disk, say): segments grow as they
    /// are written until the next roll asks again.
    Failed,
}

impl Spare {
    /// Removes a spare left by an earlier process (it may be half written)
    /// and starts preparing one of `bytes`.
    pub fn start(dir: &Path, bytes: u64, reserve: segments::Reserve) -> io::Result<Spare> {
        let path = dir.join(SPARE_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let (requests, wanted) = mpsc::channel();
        let (done, prepared) = mpsc::channel();
        let target = path.clone();
        std::thread::Builder::new().name("log-spare".into()).spawn(move || {
            // Ends when the writer, and with it `requests`, goes away.
            for () in wanted {
                if done.send(zero_filled(&target, bytes, reserve)).is_err() {
                    break;
                }
            }
        })?;
        requests.send(()).expect("the thread was just started");
        Ok(Spare { path, bytes, requests, prepared, state: State::Preparing })
    }

    /// Whether a prepared spare is waiting to be taken.
    pub fn ready(&mut self) -> bool {
        if self.state == State::Preparing {
            match self.prepared.try_recv() {
                Ok(Ok(())) => self.state = State::Ready,
                Ok(Err(e)) => {
                    // Asked again at every roll: on a small disk, an
                    // expected answer, not one to log at each.
                    if e.kind() == io::ErrorKind::StorageFull {
                        tracing::debug!(error = %e, "no spare log segment; segments grow as written");
                    } else {
                        tracing::warn!(error = %e, "could not prepare the next log segment; segments grow as written");
                    }
                    self.state = State::Failed;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.state = State::Failed,
            }
        }
        self.state == State::Ready
    }

    /// Makes the ready spare the segment file at `segment` (replacing an
    /// empty one of that name) and starts preparing the next. Returns the
    /// file and its length; the caller syncs the directory.
    pub fn take(&mut self, segment: &Path) -> io::Result<(File, u64)> {
        debug_assert!(self.state == State::Ready);
        fs::rename(&self.path, segment)?;
        self.state = State::Preparing;
        let _ = self.requests.send(());
        let file = OpenOptions::new().read(true).write(true).open(segment)?;
        Ok((file, self.bytes))
    }

    /// After a roll without a spare: asks again if the last attempt failed.
    pub fn retry(&mut self) {
        if self.state == State::Failed && self.requests.send(()).is_ok() {
            self.state = State::Preparing;
        }
    }
}

/// Writes `bytes` zeros to a new file at `path` and syncs it, when the
/// disk has room for it and one segment more beside the reserve; on failure
/// no file is left.
fn zero_filled(path: &Path, bytes: u64, reserve: segments::Reserve) -> io::Result<()> {
    let (_, usable) = reserve.usable(path.parent().unwrap_or(Path::new(".")))?;
    if usable < bytes.saturating_mul(2) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{usable} bytes usable, under two segments of {bytes}: left to the log's appends"),
        ));
    }
    let written = write_zeros(path, bytes);
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn write_zeros(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    let block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}
