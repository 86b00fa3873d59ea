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
const MIGRATIONS: &[&str] = &[
    "
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
",
    "
    -- Repository and run ids are never reused: releases outlive a deleted
    -- repository and its runs and keep their ids, which must not come to
    -- name another repository's. Each sequence starts past every id in use
    -- or named by a release.
    CREATE TABLE repos_next (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        webhook_secret TEXT,
        poll_seconds INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );
    INSERT INTO repos_next SELECT id, project_id, name, source, webhook_secret, poll_seconds, created_at FROM repos;
    DROP TABLE repos;
    ALTER TABLE repos_next RENAME TO repos;
    CREATE TABLE runs_next (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    INSERT INTO runs_next SELECT id, repo_id, number, event, commit_sha, branch, tag, message, environment, status,
        error, host, restart_of, restart_from, created_at, started_at, finished_at FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_next RENAME TO runs;
    DELETE FROM sqlite_sequence WHERE name IN ('repos', 'runs');
    INSERT INTO sqlite_sequence (name, seq) VALUES
        ('repos', max(coalesce((SELECT max(id) FROM repos), 0), coalesce((SELECT max(repo_id) FROM releases), 0))),
        ('runs', max(coalesce((SELECT max(id) FROM runs), 0), coalesce((SELECT max(run_id) FROM releases), 0)));
",
];

/// An exclusive lock on `<path>.lock`, or an error naming the database when
/// another process holds it.
fn lock_beside(path: &Path) -> Result<std::fs::File, PipelineError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&name)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(PipelineError::conflict(
            "data_dir_in_use",
            format!(
                "{} is in use by another server: run one `leanloop serve` per data directory \
                 (collectors, which run no pipeline, may share it)",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct Records {
    conn: Mutex<Connection>,
    /// Held for the life of the records: one process drives the pipeline
    /// of a data directory, as one that starts treats every run and deploy
    /// it finds unfinished as its own, cut short.
    _owner: std::fs::File,
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
        let owner = lock_beside(path)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current as usize > MIGRATIONS.len() {
            return Err(PipelineError::conflict(
                "schema_newer",
                format!("pipeline database is at schema version {current}, newer than this build knows"),
            ));
        }
        // A step may rebuild a table others refer to, which SQLite allows
        // only with foreign keys off (they are on by default in this build).
        // A rebuild copies every row with its id, so no reference breaks.
        let keys: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
        conn.pragma_update(None, "foreign_keys", false)?;
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            tx.commit()?;
        }
        conn.pragma_update(None, "foreign_keys", keys)?;
        Ok(Records { conn: Mutex::new(conn), _owner: owner, deploys: Mutex::default() })
    }

    /// The lock of deploys of `service` to `environment`. Entries nobody
    /// holds are dropped on the way, so the map stays as small as the
    /// deploys in progress, whatever names requests make up.
    pub fn deploy_lock(&self, project_id: i64, service: &str, environment: &str) -> DeployLock {
        let mut locks = self.deploys.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Event;
    use rusqlite::params;

    fn run_of(repo_id: i64) -> NewRun<'static> {
        NewRun {
            repo_id,
            event: Event::Manual,
            commit: "abc",
            branch: None,
            tag: None,
            message: "",
            restart_of: None,
            restart_from: None,
        }
    }

    #[test]
    fn a_version_goes_live_at_its_production_deploy_when_it_had_one() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(&dir.path().join("pipeline.sqlite")).unwrap();
        let release = |version: &str, environment: &str, status: &str, at: i64| {
            records
                .with(|c| {
                    c.execute(
                        "INSERT INTO releases (project_id, service, environment, version, commit_sha, image, strategy,
                             weights, replicas, spec, status, trigger, started_at, finished_at)
                         VALUES (1, 'web', ?1, ?2, 'abc', 'img', 'rolling', '[]', 1, '{}', ?3, 'push', ?4, ?4)",
                        params![environment, version, status, at],
                    )
                })
                .unwrap();
        };
        release("v1", "preview", "retired", 100);
        release("v1", "production", "live", 200);
        release("v1", "production", "superseded", 300);
        release("v2", "staging", "live", 400);
        release("v2", "preview", "live", 500);
        release("v3", "production", "failed", 600);
        assert_eq!(records.first_live(1, "v1").unwrap(), Some(200));
        assert_eq!(records.first_live(1, "v2").unwrap(), Some(400), "never in production: the first anywhere");
        assert_eq!(records.first_live(1, "v3").unwrap(), None, "never live");
        assert_eq!(records.first_live(2, "v1").unwrap(), None, "another project's");
    }

    #[test]
    fn one_process_at_a_time_drives_a_data_directorys_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.sqlite");
        let first = Records::open(&path).unwrap();
        let Err(PipelineError::Conflict { message, .. }) = Records::open(&path) else { panic!("a second owner") };
        assert!(message.contains("in use by another server"), "{message}");
        drop(first);
        Records::open(&path).unwrap();
    }

    #[test]
    fn deploy_locks_are_kept_only_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(&dir.path().join("pipeline.sqlite")).unwrap();
        let held = records.deploy_lock(1, "web", "production").try_lock_owned().unwrap();
        for i in 0..1000 {
            drop(records.deploy_lock(1, &format!("made-up-{i}"), "production"));
        }
        assert!(records.deploy_lock(1, "web", "production").try_lock_owned().is_err(), "still held");
        assert_eq!(records.deploys.lock().unwrap().len(), 1);
        drop(held);
        drop(records.deploy_lock(1, "other", "production"));
        assert_eq!(records.deploys.lock().unwrap().len(), 1, "only the last one asked for");
    }

    #[test]
    fn ids_of_deleted_repositories_and_runs_are_never_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.sqlite");
        {
            // As the first schema version left it: repository 2 with run 3,
            // and a release naming repository 5 and run 9, both deleted since.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(
                "INSERT INTO repos VALUES (2, 1, 'kept', '/src', NULL, NULL, 0);
                 INSERT INTO runs (id, repo_id, number, event, commit_sha, status, created_at)
                 VALUES (3, 2, 1, 'manual', 'abc', 'passed', 0);
                 INSERT INTO releases (project_id, repo_id, run_id, service, environment, version, commit_sha,
                     image, strategy, weights, replicas, spec, status, trigger, started_at)
                 VALUES (1, 5, 9, 'web', 'production', 'v1', 'abc', 'img', 'rolling', '[]', 1, '{}', 'retired',
                     'run', 0);",
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let records = Records::open(&path).unwrap();
        assert_eq!(records.repo(1, 2).unwrap().name, "kept");
        assert_eq!(records.run(3).unwrap().repo_id, 2);
        let repo = records.create_repo(1, "new", "/src", None, None).unwrap();
        assert_eq!(repo.id, 6, "past the release's repository");
        assert_eq!(records.create_run(&run_of(repo.id), None, &[]).unwrap(), 10, "past the release's run");
        records.fail_run(10, "stopped").unwrap();
        assert!(records.delete_repo(repo.id).unwrap());
        let again = records.create_repo(1, "new", "/src", None, None).unwrap();
        assert_eq!(again.id, 7);
        assert_eq!(records.create_run(&run_of(again.id), None, &[]).unwrap(), 11);
    }
}
