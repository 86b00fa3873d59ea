//! An in-memory cache of key look-ups, so ingest does not query SQLite per
//! request. Entries expire after a TTL, which bounds how long a revoked key
//! keeps working; unknown keys are not cached, so the map only ever holds
//! real keys.

use crate::{ControlError, ControlPlane, KeyKind, Project};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A key's project, what kind of key it is, and when it was looked up.
type Entry = (Arc<Project>, KeyKind, Instant);

pub struct KeyCache {
    control: Arc<ControlPlane>,
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry>>,
}

impl KeyCache {
    pub fn new(control: Arc<ControlPlane>, ttl: Duration) -> KeyCache {
        KeyCache { control, ttl, entries: RwLock::new(HashMap::new()) }
    }

    /// The project `key` belongs to and the kind it was issued as.
    pub fn lookup(&self, key: &str) -> Result<Option<(Arc<Project>, KeyKind)>, ControlError> {
        if let Some((project, kind, at)) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            if at.elapsed() < self.ttl {
                return Ok(Some((project.clone(), *kind)));
            }
        }
        let Some((project, kind)) = self.control.project_by_key(key)? else {
            self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(key);
            return Ok(None);
        };
        let project = Arc::new(project);
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), (project.clone(), kind, Instant::now()));
        Ok(Some((project, kind)))
    }
}
