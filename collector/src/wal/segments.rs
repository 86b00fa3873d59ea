//! The log directory: segment files, the acknowledged position, the lock.
//!
//! Positions are byte offsets into the whole log (log sequence numbers), so
//! the backlog is `end - acked` whatever segments it spans. A segment file is
//! named by the position of its first byte; the `acked` file holds the
//! position up to which the store has confirmed everything. A `LOCK` file
//! held with an exclusive lock keeps two processes off one directory.
//!
//! A delivered segment is kept for reuse (`recycled.tmp`, one at a time)
//! rather than deleted: the writer takes it as its next segment, whose
//! blocks then already hold data, as a zero-filled spare's do (`spare.rs`),
//! without the spare's cost of writing the zeros. What it held before is
//! sealed to other positions (`record.rs`), so it never reads as records.

use super::record::{self, Next};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SEGMENT_SUFFIX: &str = ".log";
const ACKED_FILE: &str = "acked";
/// A delivered segment waiting to be reused: not a segment's name, so
/// listing the log never sees it.
pub const RECYCLED_FILE: &str = "recycled.tmp";

pub fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{SEGMENT_SUFFIX}"))
}

/// Takes the directory's lock for the life of the returned file.
pub fn lock(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("log directory {} is in use by another process", dir.display()),
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Segment start positions found in `dir`.
pub fn list(dir: &Path) -> io::Result<BTreeMap<u64, PathBuf>> {
    let mut segments = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let start = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(start) = start {
            segments.insert(start, path);
        }
    }
    Ok(segments)
}

pub fn read_acked(dir: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(dir.join(ACKED_FILE)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a log position", dir.join(ACKED_FILE).display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the acknowledged position atomically (write, sync, rename).
pub fn write_acked(dir: &Path, position: u64) -> io::Result<()> {
    let tmp = dir.join("acked.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(position.to_string().as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join(ACKED_FILE))
}

/// Makes a new segment's directory entry durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Free space the log leaves alone on its disk, which it shares with the
/// event store by default: DuckDB needs room to store the backlog, and a
/// log that took every byte freed on a full disk would leave it none, so
/// that nothing is ever delivered again. `min_free` bytes, but at most a
/// quarter of the filesystem, so a small disk is not all reserve; and
/// beside it as much as the backlog, which the store needs to hold it.
#[derive(Debug, Clone, Copy)]
pub struct Reserve {
    pub min_free: u64,
}

impl Reserve {
    /// Free bytes on the filesystem holding `dir` (as an unprivileged
    /// writer may use them), and the part the log may use.
    pub fn usable(&self, dir: &Path) -> io::Result<(u64, u64)> {
        let stat = rustix::fs::statvfs(dir)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let kept = self.min_free.min(stat.f_blocks.saturating_mul(stat.f_frsize) / 4);
        Ok((free, free.saturating_sub(kept)))
    }

    /// A refusal of `growth` more bytes of log holding `backlog` bytes
    /// undelivered: the disk is short of both beside the reserve.
    pub fn refusal(&self, dir: &Path, growth: u64, backlog: u64) -> Option<io::Error> {
        let (free, usable) = self.usable(dir).ok()?;
        (usable < growth.saturating_add(backlog)).then(|| {
            io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the log's disk is nearly full: {free} bytes free, kept for the event store to store the \
                     log's {backlog} bytes undelivered (and collector.log_min_free_bytes)"
                ),
            )
        })
    }
}

/// The least a segment that grows as written holds before it rolls on a
/// nearly full disk (segments configured smaller roll at their size).
const MIN_GROWN_SEGMENT_BYTES: u64 = 1 << 20;

/// Where the active segment rolls: at `segment_bytes`, unless the file
/// grows as written (`allocated` short of that) on a disk with less than
/// four segments free beside the reserve. Then at a quarter of that space,
/// so that delivered segments are retired and their space used again
/// before the disk fills with records already stored.
pub fn roll_at(dir: &Path, segment_bytes: u64, allocated: u64, reserve: Reserve) -> u64 {
    if allocated >= segment_bytes {
        return segment_bytes;
    }
    match reserve.usable(dir) {
        Ok((_, usable)) => (usable / 4).clamp(MIN_GROWN_SEGMENT_BYTES.min(segment_bytes), segment_bytes),
        Err(_) => segment_bytes,
    }
}

/// Retires a delivered segment: kept for reuse when `reusable` and no
/// other is waiting, else deleted.
pub fn retire(dir: &Path, start: u64, reusable: bool) -> io::Result<()> {
    let path = segment_path(dir, start);
    let kept = dir.join(RECYCLED_FILE);
    // Only this thread creates the kept file, so it cannot appear between
    // the look and the rename; the writer taking it meanwhile is harmless.
    if reusable && !kept.exists() {
        fs::rename(&path, &kept)
    } else {
        fs::remove_file(&path)
    }
}

/// Whether a retired segment of at least `min_bytes` is waiting to be reused.
pub fn recycled_ready(dir: &Path, min_bytes: u64) -> bool {
    fs::metadata(dir.join(RECYCLED_FILE)).is_ok_and(|m| m.len() >= min_bytes)
}

/// Makes the retired segment, if one waits and holds at least `min_bytes`,
/// the segment file at `segment`. Returns the file and its length; the
/// caller syncs the directory.
pub fn take_recycled(dir: &Path, segment: &Path, min_bytes: u64) -> io::Result<Option<(File, u64)>> {
    let kept = dir.join(RECYCLED_FILE);
    let len = match fs::metadata(&kept) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len < min_bytes {
        // Rolled early, before it filled: reusing it would roll early again.
        fs::remove_file(&kept)?;
        return Ok(None);
    }
    fs::rename(&kept, segment)?;
    let file = OpenOptions::new().read(true).write(true).open(segment)?;
    Ok(Some((file, len)))
}

/// Length of the whole records of the segment at `start` in `file` from
/// `offset` on: where a crash may have left a torn record, the log is cut.
pub fn valid_len(file: &File, start: u64, offset: u64) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(offset))?;
    let mut len = offset;
    while let Next::Record(_, size) = record::read_next(&mut reader, start + len)? {
        len += size;
    }
    Ok(len)
}

/// The offset of the first whole record in `file` (the segment at `start`)
/// within `from..to`: where records resume after damage. Every offset is
/// tried; only a record sealed to its own position counts, so neither the
/// damaged bytes nor what a reused file held before read as one.
pub fn next_whole_record(file: &File, start: u64, from: u64, to: u64) -> io::Result<Option<u64>> {
    let mut bytes = vec![0u8; to.saturating_sub(from) as usize];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read_at(&mut bytes[filled..], from + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    bytes.truncate(filled);
    Ok((0..bytes.len())
        .find(|&i| record::whole_at(&bytes[i..], start + from + i as u64).is_some())
        .map(|i| from + i as u64))
}

/// Keeps the bytes of `file` in `from..to` beside the log, for whoever
/// investigates damage, before delivery goes past them.
pub fn save_damaged(dir: &Path, file: &File, start: u64, from: u64, to: u64) -> io::Result<PathBuf> {
    let path = dir.join(format!("damaged-{start:020}-{from}.bin"));
    let copy = || -> io::Result<()> {
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(from))?;
        let mut saved = File::create(&path)?;
        io::copy(&mut io::Read::take(reader, to - from), &mut saved)?;
        saved.sync_all()?;
        sync_dir(dir)
    };
    // A copy cut short (a full disk) would only mislead whoever reads it.
    copy().inspect_err(|_| drop(fs::remove_file(&path)))?;
    Ok(path)
}

/// Where the first byte that is not zero lies in `from..to`, read a MiB at
/// a time.
pub fn next_nonzero(file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    let mut block = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let want = block.len().min((to - at) as usize);
        let n = file.read_at(&mut block[..want], at)?;
        if n == 0 {
            break;
        }
        if let Some(i) = block[..n].iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}

/// Whether the block at `offset` is all zeros: a segment filled ahead past
/// its last record, where a torn record would start with its header. One
/// block, not the whole tail, so a restart does not read a segment's worth.
pub fn zeros_at(file: &File, offset: u64) -> io::Result<bool> {
    let mut block = [0u8; 4096];
    let n = file.read_at(&mut block, offset)?;
    Ok(block[..n].iter().all(|&b| b == 0))
}
