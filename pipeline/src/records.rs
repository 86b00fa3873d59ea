//! What the pipeline remembers, in its own SQLite file beside the control
//! plane's: repositories and their secrets, runs with their steps and logs,
//! and releases. Every row is small and every call short, so one connection
//! behind a mutex serves the whole process.

use crate::spec::{Deploy, Event, Strategy};
use crate::PipelineError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

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

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Repo {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    /// A local path or a git URL.
    pub source: String,
    /// Whether webhooks are accepted (a secret is set); the secret is never shown.
    pub webhooks: bool,
    pub poll_seconds: Option<u32>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Success,
    Failure,
    Cancelled,
    Skipped,
    /// The step's result is taken from the run this one restarts.
    Reused,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
            Status::Reused => "reused",
            Status::Error => "error",
        }
    }

    fn parse(text: &str) -> Status {
        match text {
            "running" => Status::Running,
            "success" => Status::Success,
            "failure" => Status::Failure,
            "cancelled" => Status::Cancelled,
            "skipped" => Status::Skipped,
            "reused" => Status::Reused,
            "error" => Status::Error,
            _ => Status::Pending,
        }
    }

    pub fn finished(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    /// Counts as passed for the steps that depend on it.
    pub fn passed(self) -> bool {
        matches!(self, Status::Success | Status::Skipped | Status::Reused)
    }
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StepRecord {
    pub name: String,
    /// `commands`, `build` or `deploy`.
    pub kind: String,
    pub status: Status,
    pub exit_code: Option<i64>,
    /// Why a step was skipped or failed without an exit code.
    pub note: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Time spent inside the step's container (or the engine's build/deploy work).
    pub container_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunRecord {
    pub id: i64,
    pub repo_id: i64,
    /// Per repository, from 1.
    pub number: i64,
    pub event: Event,
    pub commit: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub message: String,
    pub environment: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    pub host: Option<String>,
    pub restart_of: Option<i64>,
    pub restart_from: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LogLine {
    pub seq: i64,
    pub step: String,
    pub at: i64,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    Deploying,
    /// Healthy and serving.
    Live,
    /// Was live, replaced by a newer release.
    Superseded,
    /// Was live, replaced by a rollback.
    RolledBack,
    /// Was live, its replicas removed on request.
    Retired,
    Failed,
}

impl ReleaseStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Deploying => "deploying",
            ReleaseStatus::Live => "live",
            ReleaseStatus::Superseded => "superseded",
            ReleaseStatus::RolledBack => "rolled_back",
            ReleaseStatus::Retired => "retired",
            ReleaseStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> ReleaseStatus {
        match text {
            "live" => ReleaseStatus::Live,
            "superseded" => ReleaseStatus::Superseded,
            "rolled_back" => ReleaseStatus::RolledBack,
            "retired" => ReleaseStatus::Retired,
            "failed" => ReleaseStatus::Failed,
            _ => ReleaseStatus::Deploying,
        }
    }
}

/// One deploy of a service to an environment.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Release {
    pub id: i64,
    pub project_id: i64,
    pub repo_id: Option<i64>,
    pub run_id: Option<i64>,
    pub service: String,
    pub environment: String,
    /// The tag, else the short commit: what events carry as `release`.
    pub version: String,
    pub commit: String,
    pub branch: Option<String>,
    pub image: String,
    pub digest: Option<String>,
    pub strategy: Strategy,
    /// Canary weights in percent (empty for other strategies).
    pub weights: Vec<u8>,
    pub replicas: u32,
    /// Host addresses the replicas answer on, e.g. `127.0.0.1:32768`.
    pub endpoints: Vec<String>,
    pub status: ReleaseStatus,
    /// `push`, `tag`, `manual`, `poll`, `restart` or `rollback`.
    pub trigger: String,
    pub rollback_of: Option<i64>,
    pub error: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// The deploy spec, kept so a rollback can start the same containers.
    #[serde(skip)]
    #[schemars(skip)]
    pub spec: String,
}

/// A release about to start: what it is and why; the deploy spec gives the rest.
pub struct NewRelease<'a> {
    pub project_id: i64,
    pub repo_id: Option<i64>,
    pub run_id: Option<i64>,
    pub environment: &'a str,
    pub version: &'a str,
    pub commit: &'a str,
    pub branch: Option<&'a str>,
    pub image: &'a str,
    pub digest: Option<&'a str>,
    /// `push`, `tag`, `manual`, `poll`, `restart` or `rollback`.
    pub trigger: &'a str,
    pub rollback_of: Option<i64>,
}

/// A run about to be queued.
pub struct NewRun<'a> {
    pub repo_id: i64,
    pub event: Event,
    pub commit: &'a str,
    pub branch: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub message: &'a str,
    pub restart_of: Option<i64>,
    pub restart_from: Option<&'a str>,
}

pub struct Records {
    conn: Mutex<Connection>,
}

const RUN_COLUMNS: &str = "id, repo_id, number, event, commit_sha, branch, tag, message, environment, status, error, host, restart_of, restart_from, created_at, started_at, finished_at";
const RELEASE_COLUMNS: &str = "id, project_id, repo_id, run_id, service, environment, version, commit_sha, branch, image, digest, strategy, weights, replicas, endpoints, status, trigger, rollback_of, error, started_at, finished_at, spec";

fn strategy_of(text: &str) -> Strategy {
    match text {
        "rolling" => Strategy::Rolling,
        "blue-green" => Strategy::BlueGreen,
        "canary" => Strategy::Canary,
        _ => Strategy::Recreate,
    }
}

fn run_of(row: &Row) -> rusqlite::Result<RunRecord> {
    let started: Option<i64> = row.get(15)?;
    let finished: Option<i64> = row.get(16)?;
    Ok(RunRecord {
        id: row.get(0)?,
        repo_id: row.get(1)?,
        number: row.get(2)?,
        event: Event::parse(&row.get::<_, String>(3)?).unwrap_or(Event::Manual),
        commit: row.get(4)?,
        branch: row.get(5)?,
        tag: row.get(6)?,
        message: row.get(7)?,
        environment: row.get(8)?,
        status: Status::parse(&row.get::<_, String>(9)?),
        error: row.get(10)?,
        host: row.get(11)?,
        restart_of: row.get(12)?,
        restart_from: row.get(13)?,
        created_at: row.get(14)?,
        started_at: started,
        finished_at: finished,
        duration_ms: started.zip(finished).map(|(s, f)| f - s),
        steps: Vec::new(),
    })
}

fn release_of(row: &Row) -> rusqlite::Result<Release> {
    Ok(Release {
        id: row.get(0)?,
        project_id: row.get(1)?,
        repo_id: row.get(2)?,
        run_id: row.get(3)?,
        service: row.get(4)?,
        environment: row.get(5)?,
        version: row.get(6)?,
        commit: row.get(7)?,
        branch: row.get(8)?,
        image: row.get(9)?,
        digest: row.get(10)?,
        strategy: strategy_of(&row.get::<_, String>(11)?),
        weights: serde_json::from_str(&row.get::<_, String>(12)?).unwrap_or_default(),
        replicas: row.get(13)?,
        endpoints: serde_json::from_str(&row.get::<_, String>(14)?).unwrap_or_default(),
        status: ReleaseStatus::parse(&row.get::<_, String>(15)?),
        trigger: row.get(16)?,
        rollback_of: row.get(17)?,
        error: row.get(18)?,
        started_at: row.get(19)?,
        finished_at: row.get(20)?,
        spec: row.get(21)?,
    })
}

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
        Ok(Records { conn: Mutex::new(conn) })
    }

    /// A short id of this installation, part of every Docker name and label it uses.
    pub fn instance(&self) -> Result<String, PipelineError> {
        self.with(|c| c.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, PipelineError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut conn)?)
    }

    // --- repositories and secrets ---

    pub fn create_repo(
        &self,
        project_id: i64,
        name: &str,
        source: &str,
        webhook_secret: Option<&str>,
        poll_seconds: Option<u32>,
    ) -> Result<Repo, PipelineError> {
        let id = self.with(|c| {
            c.execute(
                "INSERT INTO repos (project_id, name, source, webhook_secret, poll_seconds, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![project_id, name, source, webhook_secret, poll_seconds, now_ms()],
            )
            .map(|_| c.last_insert_rowid())
        });
        match id {
            Ok(id) => self.repo(project_id, id),
            Err(PipelineError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(PipelineError::invalid("name", format!("a repository named `{name}` already exists")))
            }
            Err(e) => Err(e),
        }
    }

    fn repo_of(row: &Row) -> rusqlite::Result<Repo> {
        Ok(Repo {
            id: row.get(0)?,
            project_id: row.get(1)?,
            name: row.get(2)?,
            source: row.get(3)?,
            webhooks: row.get::<_, Option<String>>(4)?.is_some(),
            poll_seconds: row.get(5)?,
            created_at: row.get(6)?,
        })
    }

    /// A repository of `project_id`; another project's repository is not found.
    pub fn repo(&self, project_id: i64, id: i64) -> Result<Repo, PipelineError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, project_id, name, source, webhook_secret, poll_seconds, created_at FROM repos WHERE id = ?1 AND project_id = ?2",
                params![id, project_id],
                Self::repo_of,
            )
            .optional()
        })?
        .ok_or_else(|| PipelineError::NotFound(format!("repository {id}")))
    }

    pub fn repo_any_project(&self, id: i64) -> Result<(Repo, Option<String>), PipelineError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, project_id, name, source, webhook_secret, poll_seconds, created_at FROM repos WHERE id = ?1",
                params![id],
                |row| Ok((Self::repo_of(row)?, row.get::<_, Option<String>>(4)?)),
            )
            .optional()
        })?
        .ok_or_else(|| PipelineError::NotFound(format!("repository {id}")))
    }

    /// Removes a repository that was never usable (its first clone failed).
    pub fn delete_repo(&self, id: i64) -> Result<(), PipelineError> {
        self.with(|c| c.execute("DELETE FROM repos WHERE id = ?1", params![id]))?;
        Ok(())
    }

    pub fn repos(&self, project_id: Option<i64>) -> Result<Vec<Repo>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, project_id, name, source, webhook_secret, poll_seconds, created_at FROM repos
                 WHERE ?1 IS NULL OR project_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![project_id], Self::repo_of)?;
            rows.collect()
        })
    }

    pub fn set_secret(&self, repo_id: i64, name: &str, value: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO secrets (repo_id, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repo_id, name) DO UPDATE SET value = excluded.value",
                params![repo_id, name, value],
            )
        })?;
        Ok(())
    }

    pub fn delete_secret(&self, repo_id: i64, name: &str) -> Result<bool, PipelineError> {
        Ok(self.with(|c| c.execute("DELETE FROM secrets WHERE repo_id = ?1 AND name = ?2", params![repo_id, name]))?
            > 0)
    }

    /// Secret names only: values never leave the server except into steps.
    pub fn secret_names(&self, repo_id: i64) -> Result<Vec<String>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name FROM secrets WHERE repo_id = ?1 ORDER BY name")?;
            let rows = stmt.query_map(params![repo_id], |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn secrets(&self, repo_id: i64) -> Result<Vec<(String, String)>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, value FROM secrets WHERE repo_id = ?1")?;
            let rows = stmt.query_map(params![repo_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    pub fn poll_heads(&self, repo_id: i64) -> Result<Vec<(String, String)>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT ref, sha FROM poll_heads WHERE repo_id = ?1")?;
            let rows = stmt.query_map(params![repo_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    pub fn set_poll_head(&self, repo_id: i64, reference: &str, sha: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO poll_heads (repo_id, ref, sha) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repo_id, ref) DO UPDATE SET sha = excluded.sha",
                params![repo_id, reference, sha],
            )
        })?;
        Ok(())
    }

    // --- runs and steps ---

    /// Queues a run with its steps, numbered after the repository's last.
    pub fn create_run(
        &self,
        run: &NewRun,
        environment: Option<&str>,
        steps: &[(String, &str)],
    ) -> Result<i64, PipelineError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let number: i64 =
                tx.query_row("SELECT coalesce(max(number), 0) + 1 FROM runs WHERE repo_id = ?1", params![run.repo_id], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO runs (repo_id, number, event, commit_sha, branch, tag, message, environment, status, restart_of, restart_from, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11)",
                params![
                    run.repo_id,
                    number,
                    run.event.as_str(),
                    run.commit,
                    run.branch,
                    run.tag,
                    run.message,
                    environment,
                    run.restart_of,
                    run.restart_from,
                    now_ms()
                ],
            )?;
            let id = tx.last_insert_rowid();
            for (position, (name, kind)) in steps.iter().enumerate() {
                tx.execute(
                    "INSERT INTO steps (run_id, position, name, kind, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                    params![id, position as i64, name, kind],
                )?;
            }
            tx.commit()?;
            Ok(id)
        })
    }

    /// Records a run that could not start (bad file, unknown ref) as an error.
    pub fn fail_run(&self, run_id: i64, error: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = 'error', error = ?2, finished_at = ?3 WHERE id = ?1",
                params![run_id, error, now_ms()],
            )
        })?;
        Ok(())
    }

    pub fn start_run(&self, run_id: i64, host: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = 'running', host = ?2, started_at = ?3 WHERE id = ?1",
                params![run_id, host, now_ms()],
            )
        })?;
        Ok(())
    }

    pub fn finish_run(&self, run_id: i64, status: Status, error: Option<&str>) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
                params![run_id, status.as_str(), error, now_ms()],
            )
        })?;
        Ok(())
    }

    pub fn start_step(&self, run_id: i64, name: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "UPDATE steps SET status = 'running', started_at = ?3 WHERE run_id = ?1 AND name = ?2",
                params![run_id, name, now_ms()],
            )
        })?;
        Ok(())
    }

    pub fn finish_step(
        &self,
        run_id: i64,
        name: &str,
        status: Status,
        exit_code: Option<i64>,
        note: Option<&str>,
        container_ms: Option<i64>,
    ) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "UPDATE steps SET status = ?3, exit_code = ?4, note = ?5, container_ms = ?6,
                   finished_at = CASE WHEN started_at IS NULL THEN NULL ELSE ?7 END
                 WHERE run_id = ?1 AND name = ?2",
                params![run_id, name, status.as_str(), exit_code, note, container_ms, now_ms()],
            )
        })?;
        Ok(())
    }

    pub fn run(&self, run_id: i64) -> Result<RunRecord, PipelineError> {
        self.with(|c| {
            let mut run = c
                .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), params![run_id], run_of)
                .optional()?;
            if let Some(run) = run.as_mut() {
                run.steps = steps_of(c, run.id)?;
            }
            Ok(run)
        })?
        .ok_or_else(|| PipelineError::NotFound(format!("run {run_id}")))
    }

    /// Newest first, with steps.
    pub fn runs(&self, repo_id: i64, limit: u32, before: Option<i64>) -> Result<Vec<RunRecord>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE repo_id = ?1 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"
            ))?;
            let mut runs: Vec<RunRecord> = stmt.query_map(params![repo_id, before, limit], run_of)?.collect::<Result<_, _>>()?;
            for run in &mut runs {
                run.steps = steps_of(c, run.id)?;
            }
            Ok(runs)
        })
    }

    /// Runs left running or pending by a process that stopped.
    pub fn interrupted_runs(&self) -> Result<Vec<i64>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id FROM runs WHERE status IN ('pending', 'running')")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    // --- logs ---

    pub fn append_logs(&self, run_id: i64, lines: &[LogLine]) -> Result<(), PipelineError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO logs (run_id, seq, step, at, line) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for l in lines {
                    stmt.execute(params![run_id, l.seq, l.step, l.at, l.line])?;
                }
            }
            tx.commit()
        })?;
        Ok(())
    }

    pub fn logs(&self, run_id: i64, step: Option<&str>, after: i64, limit: u32) -> Result<Vec<LogLine>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, step, at, line FROM logs WHERE run_id = ?1 AND (?2 IS NULL OR step = ?2) AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![run_id, step, after, limit], |r| {
                Ok(LogLine { seq: r.get(0)?, step: r.get(1)?, at: r.get(2)?, line: r.get(3)? })
            })?;
            rows.collect()
        })
    }

    pub fn last_log_seq(&self, run_id: i64) -> Result<i64, PipelineError> {
        self.with(|c| {
            c.query_row("SELECT coalesce(max(seq), 0) FROM logs WHERE run_id = ?1", params![run_id], |r| r.get(0))
        })
    }

    // --- releases ---

    pub fn create_release(&self, r: &NewRelease, spec: &Deploy) -> Result<i64, PipelineError> {
        let spec_json = serde_json::to_string(spec).map_err(|e| PipelineError::Conflict(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO releases (project_id, repo_id, run_id, service, environment, version, commit_sha, branch, image, digest,
                   strategy, weights, replicas, spec, status, trigger, rollback_of, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'deploying', ?15, ?16, ?17)",
                params![
                    r.project_id,
                    r.repo_id,
                    r.run_id,
                    spec.service,
                    r.environment,
                    r.version,
                    r.commit,
                    r.branch,
                    r.image,
                    r.digest,
                    spec.strategy.as_str(),
                    serde_json::to_string(&spec.weights).unwrap_or_else(|_| "[]".into()),
                    spec.replicas,
                    spec_json,
                    r.trigger,
                    r.rollback_of,
                    now_ms()
                ],
            )
            .map(|_| c.last_insert_rowid())
        })
    }

    /// Marks a release live and the one it replaces superseded (or rolled
    /// back), in one transaction.
    pub fn release_live(
        &self,
        id: i64,
        endpoints: &[String],
        replaced: Option<(i64, ReleaseStatus)>,
    ) -> Result<(), PipelineError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE releases SET status = 'live', endpoints = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, serde_json::to_string(endpoints).unwrap_or_else(|_| "[]".into()), now_ms()],
            )?;
            if let Some((old, status)) = replaced {
                tx.execute("UPDATE releases SET status = ?2 WHERE id = ?1", params![old, status.as_str()])?;
            }
            tx.commit()
        })?;
        Ok(())
    }

    pub fn release_retired(&self, id: i64) -> Result<(), PipelineError> {
        self.with(|c| c.execute("UPDATE releases SET status = 'retired' WHERE id = ?1", params![id]))?;
        Ok(())
    }

    pub fn release_failed(&self, id: i64, error: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            c.execute(
                "UPDATE releases SET status = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, error, now_ms()],
            )
        })?;
        Ok(())
    }

    pub fn release(&self, project_id: i64, id: i64) -> Result<Release, PipelineError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?1 AND project_id = ?2"),
                params![id, project_id],
                release_of,
            )
            .optional()
        })?
        .ok_or_else(|| PipelineError::NotFound(format!("release {id}")))
    }

    /// Newest first, optionally for one service and environment.
    pub fn releases(
        &self,
        project_id: i64,
        service: Option<&str>,
        environment: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Release>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases WHERE project_id = ?1 AND (?2 IS NULL OR service = ?2)
                   AND (?3 IS NULL OR environment = ?3) ORDER BY id DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![project_id, service, environment, limit], release_of)?;
            rows.collect()
        })
    }

    /// When a release version first went live in the project, if it did.
    pub fn first_live(&self, project_id: i64, version: &str) -> Result<Option<i64>, PipelineError> {
        self.with(|c| {
            c.query_row(
                "SELECT min(finished_at) FROM releases WHERE project_id = ?1 AND version = ?2
                   AND status IN ('live', 'superseded', 'rolled_back', 'retired')",
                params![project_id, version],
                |r| r.get(0),
            )
        })
    }

    /// The release serving a service in an environment now.
    pub fn live_release(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
    ) -> Result<Option<Release>, PipelineError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases WHERE project_id = ?1 AND service = ?2 AND environment = ?3
                       AND status = 'live' ORDER BY id DESC LIMIT 1"
                ),
                params![project_id, service, environment],
                release_of,
            )
            .optional()
        })
    }

    /// The newest release before `before` that was healthy (live, then replaced)
    /// and runs a different image from it.
    pub fn previous_healthy(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
        before: &Release,
    ) -> Result<Option<Release>, PipelineError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases WHERE project_id = ?1 AND service = ?2 AND environment = ?3
                       AND id < ?4 AND status IN ('superseded', 'rolled_back') AND image <> ?5 ORDER BY id DESC LIMIT 1"
                ),
                params![project_id, service, environment, before.id, before.image],
                release_of,
            )
            .optional()
        })
    }
}

fn steps_of(c: &Connection, run_id: i64) -> rusqlite::Result<Vec<StepRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, kind, status, exit_code, note, started_at, finished_at, container_ms FROM steps WHERE run_id = ?1 ORDER BY position",
    )?;
    let rows = stmt.query_map(params![run_id], |r| {
        let started: Option<i64> = r.get(5)?;
        let finished: Option<i64> = r.get(6)?;
        Ok(StepRecord {
            name: r.get(0)?,
            kind: r.get(1)?,
            status: Status::parse(&r.get::<_, String>(2)?),
            exit_code: r.get(3)?,
            note: r.get(4)?,
            started_at: started,
            finished_at: finished,
            duration_ms: started.zip(finished).map(|(s, f)| f - s),
            container_ms: r.get(7)?,
        })
    })?;
    rows.collect()
}
