//! What the pipeline remembers, in its own SQLite file beside the control
//! plane's: repositories and their secrets (`repos.rs`), runs with their
//! steps and logs (`runs.rs`), and releases (`releases.rs`). Every row is
//! small and every call short, so one connection behind a mutex serves the
//! whole process.

mod releases;
mod repos;
mod runs;

pub use releases::{NewRelease, Release, ReleaseStatus};
pub use repos::Repo;
pub use runs::{LogLine, NewRun, RunRecord, Status, StepRecord};

use crate::PipelineError;
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Step `i` takes the schema from version `i` to `i + 1` (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &["
    -- `instance` tells this installation's Docker objects from another's on a shared engine.
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(4))));
    CREATE TABLE repos (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        webhook_secret TEXT,
        poll_seconds INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE secrets (
        repo_id INTEGER NOT NULL REFERENCES repos(id),
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (repo_id, name)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        repo_id INTEGER NOT NULL REFERENCES repos(id),
        number INTEGER NOT NULL,
        event TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        branch TEXT,
        tag TEXT,
        message TEXT NOT NULL DEFAULT '',
        environment TEXT,
        status TEXT NOT NULL,
        error TEXT,
        host TEXT,
        restart_of INTEGER,
        restart_from TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        UNIQUE (repo_id, number)
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        note TEXT,
        started_at INTEGER,
        finished_at INTEGER,
        container_ms INTEGER,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE logs (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        step TEXT NOT NULL,
        at INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL,
        repo_id INTEGER,
        run_id INTEGER,
        service TEXT NOT NULL,
        environment TEXT NOT NULL,
        version TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        branch TEXT,
        image TEXT NOT NULL,
        digest TEXT,
        strategy TEXT NOT NULL,
        weights TEXT NOT NULL,
        replicas INTEGER NOT NULL,
        spec TEXT NOT NULL,
        endpoints TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        rollback_of INTEGER,
        error TEXT,
        started_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX releases_by_service ON releases (project_id, service, environment, id);
    CREATE TABLE poll_heads (
        repo_id INTEGER NOT NULL,
        ref TEXT NOT NULL,
        sha TEXT NOT NULL,
        PRIMARY KEY (repo_id, ref)
    );
"];

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct Records {
    conn: Mutex<Connection>,
    /// One lock per service and environment a deploy holds (see
    /// [`Records::deploy_lock`]).
    deploys: Mutex<HashMap<(i64, String, String), DeployLock>>,
}

/// Held by the deploy of a service to an environment from reading its live
/// release until its own is recorded live or failed: two deploys at once
/// would each retire only the replicas they saw, and leave several
/// releases live.
pub type DeployLock = Arc<tokio::sync::Mutex<()>>;

impl Records {
    pub fn open(path: &Path) -> Result<Records, PipelineError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current as usize > MIGRATIONS.len() {
            return Err(PipelineError::Conflict(format!(
                "pipeline database is at schema version {current}, newer than this build knows"
            )));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Records { conn: Mutex::new(conn), deploys: Mutex::default() })
    }

    /// The lock of deploys of `service` to `environment` (one entry per
    /// pair ever deployed in this process: a handful).
    pub fn deploy_lock(&self, project_id: i64, service: &str, environment: &str) -> DeployLock {
        let mut locks = self.deploys.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry((project_id, service.to_owned(), environment.to_owned())).or_default().clone()
    }

    /// A short id of this installation, part of every Docker name and label it uses.
    pub fn instance(&self) -> Result<String, PipelineError> {
        self.with(|c| c.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0)))
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, PipelineError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut conn)?)
    }
}
