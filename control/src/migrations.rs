//! Versioned schema migrations, tracked in SQLite's `user_version`.
//!
//! Migrations are append-only: a released step is never edited, a change is a
//! new step. Opening a database newer than this build refuses to start rather
//! than guess.

use crate::ControlError;
use rusqlite::Connection;

/// Step `i` takes the schema from version `i` to `i + 1`.
pub(crate) const STEPS: &[&str] = &[
    // 1: organisations and projects with their keys.
    "CREATE TABLE organisations (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        organisation_id INTEGER NOT NULL REFERENCES organisations(id),
        name TEXT NOT NULL,
        write_key TEXT NOT NULL UNIQUE,
        read_key TEXT NOT NULL UNIQUE,
        store_full_ip INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );",
    // 2: a deploy key per project for the pipeline API; existing projects get
    // one here (hex body, as SQLite can make it), new ones from `generate_key`.
    "ALTER TABLE projects ADD COLUMN deploy_key TEXT;
    UPDATE projects SET deploy_key = 'lld_' || lower(hex(randomblob(16)));
    CREATE UNIQUE INDEX projects_deploy_key ON projects (deploy_key);",
    // 3: cohorts, saved people filters; `definition` is analytics' JSON and
    // `revision` grows with each edit.
    "CREATE TABLE cohorts (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        definition TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX cohorts_project ON cohorts (project_id, id);",
    // 4: cohort ids are never reused: a deleted cohort's id named in a saved
    // question or link must not come to mean another cohort. The sequence
    // starts past every id in use.
    "CREATE TABLE cohorts_next (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        definition TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    INSERT INTO cohorts_next SELECT id, project_id, name, definition, revision, created_at, updated_at FROM cohorts;
    DROP TABLE cohorts;
    ALTER TABLE cohorts_next RENAME TO cohorts;
    CREATE INDEX cohorts_project ON cohorts (project_id, id);",
];

pub fn latest_version() -> i64 {
    STEPS.len() as i64
}

/// Brings the schema up to date inside one transaction per step. Each
/// takes the write lock before it reads the version, so processes starting
/// together on one new data directory (collectors) apply each step once:
/// the others wait on the lock (the connection's busy timeout) and then
/// find it done.
pub fn apply(conn: &mut Connection) -> Result<i64, ControlError> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if current > latest_version() {
            return Err(ControlError::SchemaTooNew { found: current, known: latest_version() });
        }
        let Some(sql) = STEPS.get(current as usize) else {
            return Ok(latest_version());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
        tracing::info!(version = current + 1, "control-plane schema migrated");
    }
}
