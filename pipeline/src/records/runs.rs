//! Runs, their steps and their log lines.

use super::{now_ms, Records};
use crate::spec::Event;
use crate::PipelineError;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

/// The text one read of a run's log returns at most (a step keeps 20,000
/// lines of up to 8 KiB): 16 MiB, whatever `limit` allows.
pub const LOG_PAGE_BYTES: usize = 16 << 20;

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

const RUN_COLUMNS: &str = "id, repo_id, number, event, commit_sha, branch, tag, message, environment, status, error, host, restart_of, restart_from, created_at, started_at, finished_at";

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

impl Records {
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
            // Not for a repository removed while the run was being prepared.
            let inserted = tx.execute(
                "INSERT INTO runs (repo_id, number, event, commit_sha, branch, tag, message, environment, status, restart_of, restart_from, created_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11 WHERE EXISTS (SELECT 1 FROM repos WHERE id = ?1)",
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
            if inserted == 0 {
                return Ok(None);
            }
            let id = tx.last_insert_rowid();
            for (position, (name, kind)) in steps.iter().enumerate() {
                tx.execute(
                    "INSERT INTO steps (run_id, position, name, kind, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                    params![id, position as i64, name, kind],
                )?;
            }
            tx.commit()?;
            Ok(Some(id))
        })?
        .ok_or_else(|| PipelineError::NotFound(format!("repository {}", run.repo_id)))
    }

    /// Records a run that could not start (bad file, unknown ref), or that
    /// a restart of the server cut short, as an error; a step it left
    /// running ends as an error too.
    pub fn fail_run(&self, run_id: i64, error: &str) -> Result<(), PipelineError> {
        self.with(|c| {
            let now = now_ms();
            c.execute(
                "UPDATE steps SET status = 'error', finished_at = ?2 WHERE run_id = ?1 AND status = 'running'",
                params![run_id, now],
            )?;
            // Steps it never reached are skipped, as after a step in error.
            c.execute("UPDATE steps SET status = 'skipped' WHERE run_id = ?1 AND status = 'pending'", params![run_id])?;
            c.execute(
                "UPDATE runs SET status = 'error', error = ?2, finished_at = ?3 WHERE id = ?1",
                params![run_id, error, now],
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

    /// The newest run a push or a poll made of `sha` on its branch or tag.
    pub fn pushed_run(
        &self,
        repo_id: i64,
        sha: &str,
        branch: Option<&str>,
        tag: Option<&str>,
    ) -> Result<Option<RunRecord>, PipelineError> {
        let id: Option<i64> = self.with(|c| {
            c.query_row(
                "SELECT id FROM runs WHERE repo_id = ?1 AND commit_sha = ?2 AND branch IS ?3 AND tag IS ?4
                 AND event IN ('push', 'tag', 'poll') ORDER BY id DESC LIMIT 1",
                params![repo_id, sha, branch, tag],
                |r| r.get(0),
            )
            .optional()
        })?;
        id.map(|id| self.run(id)).transpose()
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

    /// At most `limit` lines after `after`, and no more than
    /// [`LOG_PAGE_BYTES`] of text past the first line: a caller pages on
    /// from the last `seq` it got.
    pub fn logs(&self, run_id: i64, step: Option<&str>, after: i64, limit: u32) -> Result<Vec<LogLine>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, step, at, line FROM logs WHERE run_id = ?1 AND (?2 IS NULL OR step = ?2) AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let mut rows = stmt.query_map(params![run_id, step, after, limit], |r| {
                Ok(LogLine { seq: r.get(0)?, step: r.get(1)?, at: r.get(2)?, line: r.get(3)? })
            })?;
            let (mut lines, mut bytes) = (Vec::new(), 0);
            while bytes < LOG_PAGE_BYTES {
                let Some(line) = rows.next().transpose()? else { break };
                bytes += line.line.len() + line.step.len();
                lines.push(line);
            }
            Ok(lines)
        })
    }

    pub fn last_log_seq(&self, run_id: i64) -> Result<i64, PipelineError> {
        self.with(|c| {
            c.query_row("SELECT coalesce(max(seq), 0) FROM logs WHERE run_id = ?1", params![run_id], |r| r.get(0))
        })
    }
}
