//! Repositories, their secrets, and the branch heads polling compares with.

use super::{now_ms, Records};
use crate::PipelineError;
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Repo {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    /// A local path or a git URL; shown with a URL's credentials masked.
    #[serde(serialize_with = "crate::git::serialize_redacted")]
    pub source: String,
    /// Whether webhooks are accepted (a secret is set); the secret is never shown.
    pub webhooks: bool,
    pub poll_seconds: Option<u32>,
    pub created_at: i64,
}

impl Records {
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

    /// Applies `change` to a repository of `project_id`.
    pub fn change_repo(&self, project_id: i64, id: i64, change: &crate::RepoChange) -> Result<Repo, PipelineError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE repos SET webhook_secret = CASE WHEN ?3 THEN ?4 ELSE webhook_secret END,
                                  poll_seconds = CASE WHEN ?5 THEN ?6 ELSE poll_seconds END
                 WHERE id = ?1 AND project_id = ?2",
                params![
                    id,
                    project_id,
                    change.webhook_secret.is_some(),
                    change.webhook_secret.clone().flatten(),
                    change.poll_seconds.is_some(),
                    change.poll_seconds.flatten(),
                ],
            )
        })?;
        match changed {
            0 => Err(PipelineError::NotFound(format!("repository {id}"))),
            _ => self.repo(project_id, id),
        }
    }

    /// Removes a repository and what only it uses: secrets, poll heads, and
    /// runs with their steps and logs. Releases stay, as the history of what
    /// was deployed. `false` (and nothing removed) while one of its runs has
    /// not finished.
    pub fn delete_repo(&self, id: i64) -> Result<bool, PipelineError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let unfinished: i64 = tx.query_row(
                "SELECT count(*) FROM runs WHERE repo_id = ?1 AND status IN ('pending', 'running')",
                params![id],
                |r| r.get(0),
            )?;
            if unfinished > 0 {
                return Ok(false);
            }
            let of_runs = "run_id IN (SELECT id FROM runs WHERE repo_id = ?1)";
            tx.execute(&format!("DELETE FROM logs WHERE {of_runs}"), params![id])?;
            tx.execute(&format!("DELETE FROM steps WHERE {of_runs}"), params![id])?;
            for table in ["runs", "secrets", "poll_heads"] {
                tx.execute(&format!("DELETE FROM {table} WHERE repo_id = ?1"), params![id])?;
            }
            tx.execute("DELETE FROM repos WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(true)
        })
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
}
