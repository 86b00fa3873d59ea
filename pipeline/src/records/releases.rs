//! Releases: one row per deploy of a service to an environment.

use super::{now_ms, Records};
use crate::spec::{Deploy, Strategy};
use crate::PipelineError;
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

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

const RELEASE_COLUMNS: &str = "id, project_id, repo_id, run_id, service, environment, version, commit_sha, branch, image, digest, strategy, weights, replicas, endpoints, status, trigger, rollback_of, error, started_at, finished_at, spec";

fn strategy_of(text: &str) -> Strategy {
    match text {
        "rolling" => Strategy::Rolling,
        "blue-green" => Strategy::BlueGreen,
        "canary" => Strategy::Canary,
        _ => Strategy::Recreate,
    }
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
    // --- releases ---

    pub fn create_release(&self, r: &NewRelease, spec: &Deploy) -> Result<i64, PipelineError> {
        let spec_json = serde_json::to_string(spec).map_err(|e| PipelineError::Io(std::io::Error::other(e)))?;
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

    /// Where a live release's replicas answer now, after some were restarted.
    pub fn release_endpoints(&self, id: i64, endpoints: &[String]) -> Result<(), PipelineError> {
        let endpoints = serde_json::to_string(endpoints).unwrap_or_else(|_| "[]".into());
        self.with(|c| c.execute("UPDATE releases SET endpoints = ?2 WHERE id = ?1", params![id, endpoints]))?;
        Ok(())
    }

    /// Releases a previous process left `deploying`.
    pub fn interrupted_releases(&self) -> Result<Vec<Release>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE status = 'deploying'"))?;
            let rows = stmt.query_map([], release_of)?;
            rows.collect()
        })
    }

    /// Every release now live.
    pub fn live_releases(&self) -> Result<Vec<Release>, PipelineError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE status = 'live'"))?;
            let rows = stmt.query_map([], release_of)?;
            rows.collect()
        })
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

    /// When a release version first went live in the project's
    /// `production` environment, or, never there, in any: a version
    /// previewed or staged first reaches its users at its production deploy.
    pub fn first_live(&self, project_id: i64, version: &str) -> Result<Option<i64>, PipelineError> {
        self.with(|c| {
            c.query_row(
                "SELECT finished_at FROM releases WHERE project_id = ?1 AND version = ?2
                   AND status IN ('live', 'superseded', 'rolled_back', 'retired') AND finished_at IS NOT NULL
                 ORDER BY environment = 'production' DESC, finished_at LIMIT 1",
                params![project_id, version],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// The release serving a service in an environment now.
    pub fn live_release(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
    ) -> Result<Option<Release>, PipelineError> {
        self.newest(project_id, service, environment, "'live'")
    }

    /// The release of a service in an environment still starting, if any.
    pub fn deploying(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
    ) -> Result<Option<Release>, PipelineError> {
        self.newest(project_id, service, environment, "'deploying'")
    }

    /// The newest release that was healthy and no longer runs (replaced, or
    /// retired, but not rolled back), for a rollback when none is live.
    pub fn last_healthy(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
    ) -> Result<Option<Release>, PipelineError> {
        self.newest(project_id, service, environment, "'superseded', 'retired'")
    }

    /// The newest release of a service in an environment with one of
    /// `statuses` (a list of SQL literals, never user input).
    fn newest(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
        statuses: &str,
    ) -> Result<Option<Release>, PipelineError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases WHERE project_id = ?1 AND service = ?2 AND environment = ?3
                       AND status IN ({statuses}) ORDER BY id DESC LIMIT 1"
                ),
                params![project_id, service, environment],
                release_of,
            )
            .optional()
        })
    }

    /// The newest release before `before` that was healthy (live, then
    /// replaced by a new release, not rolled back) and runs a different
    /// image from it, nor an image whose last run ended in a rollback:
    /// rolling back twice goes further back rather than to the release just
    /// left, while an image rolled back from and later run again (a
    /// rollback naming it) may be returned to.
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
                       AND id < ?4 AND status = 'superseded' AND image <> ?5
                       AND image NOT IN (SELECT image FROM releases WHERE project_id = ?1 AND service = ?2
                                           AND environment = ?3
                                           AND status IN ('live', 'superseded', 'rolled_back', 'retired')
                                         GROUP BY image
                                         HAVING max(id) = max(CASE WHEN status = 'rolled_back' THEN id END))
                     ORDER BY id DESC LIMIT 1"
                ),
                params![project_id, service, environment, before.id, before.image],
                release_of,
            )
            .optional()
        })
    }
}
