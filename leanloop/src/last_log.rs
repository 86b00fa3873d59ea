//! The log directory a server last used, recorded in its data directory
//! (`log-dir`), so that a start on another one, or with the log off, cannot
//! hide the events acknowledged into the last one and not yet stored.

use anyhow::{Context, Result};

/// The record of the log directory a server last used: a start that would
/// leave undelivered events behind in it is refused until they are stored.
pub struct LastLog(std::path::PathBuf);

impl LastLog {
    const FILE: &'static str = "log-dir";

    pub fn check(config: &crate::Config) -> Result<LastLog> {
        let marker = config.data_dir.join(Self::FILE);
        // Before the marker existed, the log was where the default puts it.
        let last = match std::fs::read_to_string(&marker) {
            Ok(text) => std::path::PathBuf::from(text.trim_end_matches('\n')),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => config.data_dir.join("log"),
            Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
        };
        let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if !config.collector.log || !same(&last, &config.log_dir) {
            let held = leanloop_collector::undelivered(&last).with_context(|| {
                format!("reading the write-ahead log this data directory last used, {}", last.display())
            })?;
            if held > 0 {
                let now = if config.collector.log {
                    format!("the log directory is now {}", config.log_dir.display())
                } else {
                    "the log is now off (`collector.log = false`)".to_owned()
                };
                anyhow::bail!(
                    "the write-ahead log this data directory last used, {}, still holds {held} bytes of \
                     acknowledged events not yet stored, and {now}: start once with `--log-dir {}` (and the log \
                     on) so they are stored, then change it",
                    last.display(),
                    last.display()
                );
            }
        }
        Ok(LastLog(marker))
    }

    /// Records the log directory in use, once it is.
    pub fn record(self, config: &crate::Config) -> Result<()> {
        let dir = if config.collector.log { config.log_dir.clone() } else { std::path::PathBuf::new() };
        let dir = dir.canonicalize().unwrap_or(dir);
        let tmp = self.0.with_extension("tmp");
        // Synced before and after the rename: a record lost or left empty
        // by a power cut would let the next start on another directory
        // pass with the old log still holding events.
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, format!("{}\n", dir.display()).as_bytes())?;
            file.sync_data()?;
            std::fs::rename(&tmp, &self.0)?;
            std::fs::File::open(&config.data_dir)?.sync_all()
        };
        write().with_context(|| format!("recording the log directory in {}", self.0.display()))
    }
}
