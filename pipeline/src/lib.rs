//! The delivery pipeline: pipeline files (`spec`), sources (`git`), steps in
//! containers on one or more Docker hosts (`hosts`, `engine`, `runner`),
//! image build and push (`images`), deploys and release records (`deploy`,
//! `records`), live logs (`logs`) with secrets masked (`masks`) and push
//! webhooks (`webhooks`).
//!
//! [`Pipeline`] is the one face the HTTP layer uses. Invariant: this is the
//! only crate that talks to Docker, and it never touches events.

pub mod deploy;
pub mod engine;
mod error;
pub mod git;
pub mod hosts;
pub mod images;
pub mod logs;
pub mod masks;
pub mod records;
pub mod runner;
pub mod spec;
pub mod webhooks;

pub use error::PipelineError;
pub use hosts::HostSpec;
pub use records::{LogLine, Release, Repo, RunRecord, Status};

use crate::git::{check_ref_name, check_sha, Mirror, Target};
use crate::logs::{LiveEvent, RunLog};
use crate::records::{NewRun, Records, ReleaseStatus};
use crate::runner::Plan;
use crate::spec::{Event, RunFacts};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a rollback call answers.
#[derive(Debug)]
pub enum Rollback {
    /// The release it started, live.
    Live(Release),
    /// The release it started, still starting when the call had to answer;
    /// its status tells how it ends.
    Deploying(Release),
    /// The live release already runs the release asked for (a retried
    /// call): nothing was started.
    Unchanged(Release),
}

/// The pipeline's part of the server configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Docker hosts runs are placed on (default: the local socket).
    pub hosts: Vec<HostSpec>,
    /// Registry images are pushed to, e.g. `127.0.0.1:5000`, unless a
    /// pipeline file names its own.
    pub registry: Option<String>,
    /// Address deployed replicas publish their port on.
    pub publish_ip: String,
    /// Runs at once over all repositories (more wait, pending).
    pub max_runs: usize,
    /// Runs at once per repository.
    pub max_runs_per_repo: usize,
    /// Extra labels put on every container, network and volume.
    pub labels: BTreeMap<String, String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            hosts: vec![HostSpec::local()],
            registry: None,
            publish_ip: "127.0.0.1".into(),
            max_runs: 4,
            max_runs_per_repo: 1,
            labels: BTreeMap::new(),
        }
    }
}

/// The most runs (in all, per repository, or on one host) at once.
pub const MAX_PLACES: usize = 10_000;

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Err("pipeline.hosts: at least one Docker host".into());
        }
        for host in &self.hosts {
            host.validate().map_err(|e| format!("pipeline.hosts: {e}"))?;
        }
        // Permits of a semaphore each: far above any use, far below its limit.
        let runs = 1..=MAX_PLACES;
        if !runs.contains(&self.max_runs) || !runs.contains(&self.max_runs_per_repo) {
            return Err(format!("pipeline.max_runs and pipeline.max_runs_per_repo must be 1 to {MAX_PLACES}"));
        }
        self.publish_ip
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("pipeline.publish_ip: `{}` is not an IP address", self.publish_ip))?;
        if let Some(registry) = &self.registry {
            spec::check_registry(registry).map_err(|e| format!("pipeline.registry: {e}"))?;
        }
        Ok(())
    }
}

/// A repository to register.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRepo {
    pub name: String,
    /// A local path or a git URL.
    pub source: String,
    /// Enables push webhooks signed with this secret.
    pub webhook_secret: Option<String>,
    /// Poll the source for new commits every this many seconds.
    pub poll_seconds: Option<u32>,
}

/// Changes to a registered repository: a field left out stays as it is,
/// `null` removes it.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoChange {
    /// A new webhook secret (deliveries signed with the old one are refused
    /// from then on), or `null` to refuse webhooks.
    #[serde(default, deserialize_with = "present")]
    pub webhook_secret: Option<Option<String>>,
    /// A new polling interval in seconds, or `null` to stop polling.
    #[serde(default, deserialize_with = "present")]
    pub poll_seconds: Option<Option<u32>>,
}

/// A field that is present, `null` or not, as opposed to left out.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A manual run: exactly one of branch, tag or commit (with an optional branch).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub commit: Option<String>,
}

fn check_webhook_secret(secret: Option<&str>) -> Result<(), PipelineError> {
    match secret {
        Some(secret) if !(8..=500).contains(&secret.chars().count()) => {
            Err(PipelineError::invalid("webhook_secret", "8 to 500 characters"))
        }
        _ => Ok(()),
    }
}

fn check_poll_seconds(seconds: Option<u32>) -> Result<(), PipelineError> {
    match seconds {
        Some(seconds) if seconds == 0 || seconds > 86_400 => {
            Err(PipelineError::invalid("poll_seconds", "between 1 and 86400"))
        }
        _ => Ok(()),
    }
}

/// Fetches a pushed commit is given, and the first pause between them,
/// doubling after: a source down for up to about two minutes still runs
/// the push.
const PUSH_FETCH_ATTEMPTS: u32 = 4;
const PUSH_FETCH_RETRY_FIRST: Duration = Duration::from_secs(15);

/// How often repositories with `poll_seconds` are checked for being due.
const POLL_TICK: Duration = Duration::from_secs(1);

/// How often live releases are checked for a running replica.
const RELEASE_WATCH: Duration = Duration::from_secs(5);
/// How often what finished runs left on the engines is looked for.
const LEFTOVER_WATCH: Duration = Duration::from_secs(30);
/// How long a removal waits for a deploy lock held by something brief (the
/// live-release watch retiring a release) before answering a conflict.
const LOCK_GRACE: Duration = Duration::from_secs(2);
/// A repository's secrets, in number and in bytes all told: each run
/// masks every one in all its forms (`masks`).
const MAX_SECRETS: usize = 100;
const MAX_SECRET_BYTES: usize = 1 << 20;
/// The error of a run the server stopped (or crashed) during.
const STOPPED_DURING_RUN: &str = "the server stopped during this run";

struct LiveRun {
    log: Arc<RunLog>,
    cancel: CancellationToken,
    /// Cancelled by a caller, not by the server stopping.
    asked: AtomicBool,
}

pub struct Pipeline {
    records: Arc<Records>,
    /// This installation's id on shared Docker engines.
    instance: String,
    hosts: Arc<hosts::Hosts>,
    config: PipelineConfig,
    mirrors: PathBuf,
    mirror_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    live: Mutex<HashMap<i64, Arc<LiveRun>>>,
    all_runs: Arc<Semaphore>,
    repo_slots: Mutex<HashMap<i64, Arc<Semaphore>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Pipeline {
    /// Opens the pipeline's records under `data_dir`. Runs a previous
    /// process left unfinished are recorded as errors and their containers
    /// removed in the background. Docker is not contacted until needed.
    pub fn open(data_dir: &Path, config: PipelineConfig) -> Result<Arc<Pipeline>, PipelineError> {
        std::fs::create_dir_all(data_dir)?;
        let records = Arc::new(Records::open(&data_dir.join("pipeline.sqlite3"))?);
        let pipeline = Arc::new(Pipeline {
            instance: records.instance()?,
            hosts: hosts::Hosts::new(config.hosts.clone()),
            all_runs: Arc::new(Semaphore::new(config.max_runs)),
            config,
            mirrors: data_dir.join("mirrors"),
            mirror_locks: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            repo_slots: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            records,
        });
        let interrupted = pipeline.records.interrupted_runs()?;
        for run in &interrupted {
            // Ends the steps it cut short too.
            pipeline.records.fail_run(*run, STOPPED_DURING_RUN)?;
        }
        let deploys = pipeline.records.interrupted_releases()?;
        for release in &deploys {
            pipeline.records.release_failed(release.id, "the server stopped during this deploy")?;
        }
        if !interrupted.is_empty() || !deploys.is_empty() {
            let me = pipeline.clone();
            pipeline.tasks.spawn(async move { me.clean_up_after_a_stop(interrupted, deploys).await });
        }
        let poller = pipeline.clone();
        pipeline.tasks.spawn(async move { poller.poll_loop().await });
        let watcher = pipeline.clone();
        pipeline.tasks.spawn(async move { watcher.watch_live_releases().await });
        Ok(pipeline)
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Removes the containers of runs and the replicas of deploys a previous
    /// process left unfinished, and gives each live release the replicas
    /// such a deploy had stopped ([`deploy::restore`]).
    async fn clean_up_after_a_stop(&self, runs: Vec<i64>, deploys: Vec<Release>) {
        let reachable = self.hosts.reachable().await;
        for (_, docker) in &reachable {
            for run in &runs {
                engine::remove_labelled(docker, engine::RUN, &engine::scoped(&self.instance, *run), true).await;
            }
            for release in &deploys {
                let scoped = engine::scoped(&self.instance, release.id);
                engine::remove_labelled(docker, deploy::RELEASE, &scoped, false).await;
            }
        }
        let Some((_, docker)) = reachable.into_iter().next() else { return };
        let labels: engine::Labels = self.config.labels.clone().into_iter().collect();
        let here = deploy::Installation {
            instance: &self.instance,
            publish_ip: &self.config.publish_ip,
            extra_labels: &labels,
        };
        for release in &deploys {
            // Held as a deploy is: the watch of live releases must not
            // retire this one while its replicas are being started again.
            let lock = self.records.deploy_lock(release.project_id, &release.service, &release.environment);
            let _restoring = lock.lock_owned().await;
            let live = self.records.live_release(release.project_id, &release.service, &release.environment);
            if let Ok(Some(live)) = live {
                let say = |line: &str| tracing::info!(service = %live.service, "{line}");
                deploy::restore(&docker, &self.hosts, &self.records, &here, &live, &say).await;
            }
        }
    }

    /// Every [`RELEASE_WATCH`], retires a live release none of whose
    /// replicas runs any more (removed or stopped outside Leanloop): it
    /// must not read as live, and a rollback from it would keep the image
    /// nobody serves. Skipped while a host is out of reach (it may hold
    /// them), and for a service being deployed.
    ///
    /// Every [`LEFTOVER_WATCH`] too, removes what finished runs left behind
    /// ([`Pipeline::remove_leftovers`]).
    async fn watch_live_releases(&self) {
        let mut leftovers_due = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELEASE_WATCH) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let reachable = self.hosts.reachable().await;
            // Leftovers on the hosts that answer are theirs to lose.
            if tokio::time::Instant::now() >= leftovers_due {
                self.remove_leftovers(&reachable).await;
                leftovers_due = tokio::time::Instant::now() + LEFTOVER_WATCH;
            }
            if reachable.len() < self.hosts.all().len() {
                continue;
            }
            for release in self.records.live_releases().unwrap_or_default() {
                // Looked at without the deploy lock, so a rollback or a
                // removal asked meanwhile is not refused for the watch; a
                // release seen without replicas is looked at again under
                // the lock (a deploy may have been replacing them).
                if self.replica_runs(&reachable, release.id).await {
                    continue;
                }
                let lock = self.records.deploy_lock(release.project_id, &release.service, &release.environment);
                let Ok(_deploying) = lock.try_lock_owned() else { continue };
                if !matches!(self.records.release(release.project_id, release.id), Ok(r) if r.status == ReleaseStatus::Live)
                {
                    continue;
                }
                if !self.replica_runs(&reachable, release.id).await {
                    tracing::warn!(release = release.id, service = %release.service, environment = %release.environment,
                        "no replica of the live release runs any more; it is retired");
                    let _ = self.records.release_retired(release.id);
                }
            }
        }
    }

    /// Removes the containers, networks and volumes of this installation's
    /// finished runs, and the replicas of its releases that no longer serve
    /// (superseded, rolled back, retired, failed). A run's or deploy's own
    /// cleanup can miss them: its engine out of reach as it ended, or a
    /// container's removal already under way from outside (the workspace
    /// volume is then still in use), and nothing else would look again.
    async fn remove_leftovers(&self, reachable: &[(Arc<hosts::Host>, bollard::Docker)]) {
        let ours = format!("{}-", self.instance);
        for (_, docker) in reachable {
            self.remove_replicas_of_past_releases(docker, &ours).await;
            for label in engine::run_labels(docker, &self.instance).await {
                let Some(run) = label.strip_prefix(&ours).and_then(|id| id.parse::<i64>().ok()) else { continue };
                if self.live.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&run) {
                    continue;
                }
                let finished = match self.records.run(run) {
                    Ok(record) => record.status.finished(),
                    // Its repository was removed with its runs.
                    Err(PipelineError::NotFound(_)) => true,
                    Err(_) => false,
                };
                if finished {
                    tracing::info!(run, "removing what the finished run left on its Docker host");
                    engine::remove_labelled(docker, engine::RUN, &label, true).await;
                }
            }
        }
    }

    /// [`Pipeline::remove_leftovers`] of releases: a release's replicas
    /// are looked at under its service's deploy lock, so a deploy retiring
    /// them in its strategy's order is never raced.
    async fn remove_replicas_of_past_releases(&self, docker: &bollard::Docker, ours: &str) {
        let Ok(containers) = engine::containers_with(docker, &[(engine::INSTANCE, self.instance.as_str())]).await
        else {
            return;
        };
        let mut by_release: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let release = labels.get(deploy::RELEASE).and_then(|l| l.strip_prefix(ours)).and_then(|id| id.parse().ok());
            let project = labels.get(deploy::PROJECT).and_then(|p| p.parse().ok());
            if let (Some(release), Some(project), Some(id)) = (release, project, c.id) {
                by_release.entry((project, release)).or_default().push(id);
            }
        }
        for ((project, release), containers) in by_release {
            let Ok(record) = self.records.release(project, release) else { continue };
            if matches!(record.status, ReleaseStatus::Live | ReleaseStatus::Deploying) {
                continue;
            }
            let lock = self.records.deploy_lock(project, &record.service, &record.environment);
            let Ok(_deploying) = lock.try_lock_owned() else { continue };
            // Looked at again under the lock: a rollback may have made it live.
            let still_past = matches!(self.records.release(project, release), Ok(r)
                if !matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
            if !still_past {
                continue;
            }
            tracing::info!(release, service = %record.service, environment = %record.environment,
                "removing the replicas of a release that no longer serves");
            for id in containers {
                engine::remove_container(docker, &id).await;
            }
        }
    }

    /// Whether a replica of release `release_id` runs (or may: an engine
    /// that does not answer is not taken to have none) on `reachable`.
    async fn replica_runs(&self, reachable: &[(Arc<hosts::Host>, bollard::Docker)], release_id: i64) -> bool {
        let scoped = engine::scoped(&self.instance, release_id);
        let wanted = [(engine::INSTANCE, self.instance.as_str()), (deploy::RELEASE, scoped.as_str())];
        for (_, docker) in reachable {
            let Ok(found) = engine::containers_with(docker, &wanted).await else { return true };
            if found
                .iter()
                .any(|c| matches!(c.state.as_ref().map(|s| s.to_string()).as_deref(), Some("running" | "restarting")))
            {
                return true;
            }
        }
        false
    }

    /// Cancels every run and waits (up to `limit`) for their cleanup.
    pub async fn stop(&self, limit: Duration) {
        self.shutdown.cancel();
        for run in self.live.lock().unwrap_or_else(|p| p.into_inner()).values() {
            run.cancel.cancel();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }

    /// Runs `work` as one of the pipeline's tasks: it outlives a request
    /// that stops waiting for it, and a stop ends it (an error) rather than
    /// waits on it.
    pub fn detach<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, PipelineError>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<T, PipelineError>> {
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                done = work => done,
                () = stop.cancelled() => Err(PipelineError::HostUnavailable("the server is stopping".into())),
            }
        })
    }

    fn mirror(&self, repo_id: i64) -> Arc<Mirror> {
        Arc::new(Mirror::new(self.mirrors.join(repo_id.to_string())))
    }

    fn mirror_lock(&self, repo_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.mirror_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(repo_id).or_default().clone()
    }

    /// The repository's mirror, fetched now, and its lock: held while the
    /// caller reads it, so no other fetch moves its refs meanwhile.
    async fn synced(&self, repo: &Repo) -> Result<(Arc<Mirror>, tokio::sync::OwnedMutexGuard<()>), PipelineError> {
        let fetching = self.mirror_lock(repo.id).lock_owned().await;
        // Removed while this waited: no mirror is made again for it.
        self.records.repo(repo.project_id, repo.id)?;
        let mirror = self.mirror(repo.id);
        mirror.sync(&repo.source).await?;
        Ok((mirror, fetching))
    }

    // --- repositories and secrets ---

    pub async fn add_repo(&self, project_id: i64, new: NewRepo) -> Result<Repo, PipelineError> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(PipelineError::invalid("name", "1-100 letters, digits, `-`, `_` or `.`"));
        }
        let source = new.source.trim();
        if source.is_empty() || source.starts_with('-') || source.len() > 2000 {
            return Err(PipelineError::invalid("source", "a local path or a git URL"));
        }
        // Another project's code is in this server's mirrors: not a source,
        // as a path or as a `file:` URL (git reads its path decoded).
        let local = match url::Url::parse(source) {
            Ok(u) if u.scheme() == "file" => u.to_file_path().unwrap_or_default(),
            _ => std::path::PathBuf::from(source),
        };
        if let (Ok(path), Ok(mirrors)) = (std::fs::canonicalize(local), std::fs::canonicalize(&self.mirrors)) {
            if path.starts_with(&mirrors) {
                return Err(PipelineError::invalid("source", "must not be inside this server's own mirrors"));
            }
        }
        check_webhook_secret(new.webhook_secret.as_deref())?;
        check_poll_seconds(new.poll_seconds)?;
        let repo =
            self.records.create_repo(project_id, name, source, new.webhook_secret.as_deref(), new.poll_seconds)?;
        let mirror = self.mirror(repo.id);
        let mut registering = Registering { records: &self.records, repo_id: repo.id, mirror: &mirror, done: false };
        if let Err(e) = mirror.sync(source).await {
            let shown = git::redacted(source);
            return Err(PipelineError::invalid("source", format!("cannot clone `{shown}`: {e}")));
        }
        // Polling starts from what is there now: only later commits trigger.
        self.poll_from_now(repo.id, &mirror).await?;
        registering.done = true;
        Ok(repo)
    }

    pub fn repos(&self, project_id: i64) -> Result<Vec<Repo>, PipelineError> {
        self.records.repos(Some(project_id))
    }

    pub fn repo(&self, project_id: i64, repo_id: i64) -> Result<Repo, PipelineError> {
        self.records.repo(project_id, repo_id)
    }

    /// Rotates or removes the webhook secret, or changes polling. Polling
    /// switched on starts from the heads the source has now, as at
    /// registration: only later commits trigger.
    pub async fn change_repo(&self, project_id: i64, repo_id: i64, change: RepoChange) -> Result<Repo, PipelineError> {
        if let Some(secret) = &change.webhook_secret {
            check_webhook_secret(secret.as_deref())?;
        }
        if let Some(seconds) = change.poll_seconds {
            check_poll_seconds(seconds)?;
        }
        let repo = self.records.repo(project_id, repo_id)?;
        if repo.poll_seconds.is_none() && matches!(change.poll_seconds, Some(Some(_))) {
            let (mirror, _fetched) = self.synced(&repo).await?;
            self.poll_from_now(repo.id, &mirror).await?;
        }
        self.records.change_repo(project_id, repo_id, &change)
    }

    /// Records the mirror's heads as polling's last look, so that only
    /// later commits trigger.
    async fn poll_from_now(&self, repo_id: i64, mirror: &Mirror) -> Result<(), PipelineError> {
        for (reference, sha) in mirror.heads().await? {
            self.records.set_poll_head(repo_id, &reference, &sha)?;
        }
        Ok(())
    }

    pub fn set_secret(&self, project_id: i64, repo_id: i64, name: &str, value: &str) -> Result<(), PipelineError> {
        self.records.repo(project_id, repo_id)?;
        spec::check_env_name(name).map_err(|m| PipelineError::invalid("name", m))?;
        // Logs can only mask what is long enough to be told from other text,
        // and Docker cannot pass a NUL in the environment.
        if value.len() < masks::MIN_MASKED || value.len() > 64 * 1024 {
            return Err(PipelineError::invalid("value", format!("{} bytes to 64 KiB", masks::MIN_MASKED)));
        }
        if value.contains('\0') {
            return Err(PipelineError::invalid("value", "must not contain NUL"));
        }
        // Every run masks all of them, in tens of forms each.
        let others: Vec<usize> =
            self.records.secrets(repo_id)?.into_iter().filter(|(n, _)| n != name).map(|(_, v)| v.len()).collect();
        if others.len() >= MAX_SECRETS {
            return Err(PipelineError::invalid("name", format!("a repository holds at most {MAX_SECRETS} secrets")));
        }
        if others.iter().sum::<usize>() + value.len() > MAX_SECRET_BYTES {
            return Err(PipelineError::invalid("value", "a repository's secrets hold at most 1 MiB in all"));
        }
        self.records.set_secret(repo_id, name, value)
    }

    pub fn delete_secret(&self, project_id: i64, repo_id: i64, name: &str) -> Result<(), PipelineError> {
        self.records.repo(project_id, repo_id)?;
        if self.records.delete_secret(repo_id, name)? {
            Ok(())
        } else {
            Err(PipelineError::NotFound(format!("secret {name}")))
        }
    }

    pub fn secret_names(&self, project_id: i64, repo_id: i64) -> Result<Vec<String>, PipelineError> {
        self.records.repo(project_id, repo_id)?;
        self.records.secret_names(repo_id)
    }

    /// Removes a repository's dependency cache volumes on every host.
    pub async fn clear_cache(&self, project_id: i64, repo_id: i64) -> Result<(), PipelineError> {
        self.records.repo(project_id, repo_id)?;
        self.remove_caches(repo_id).await;
        Ok(())
    }

    async fn remove_caches(&self, repo_id: i64) {
        for (_, docker) in self.hosts.reachable().await {
            engine::remove_labelled(&docker, runner::CACHE, &engine::scoped(&self.instance, repo_id), true).await;
        }
    }

    /// Removes a repository: its record, secrets, runs and logs, mirror and
    /// cache volumes. Its releases stay (and their services run on). Refused
    /// while one of its runs has not finished.
    pub async fn delete_repo(&self, project_id: i64, repo_id: i64) -> Result<(), PipelineError> {
        self.records.repo(project_id, repo_id)?;
        // Not while a trigger is fetching into the mirror.
        let lock = self.mirror_lock(repo_id);
        let _fetching = lock.lock().await;
        if !self.records.delete_repo(repo_id)? {
            return Err(PipelineError::conflict(
                "runs_unfinished",
                format!("repository {repo_id} has runs that have not finished: cancel them first"),
            ));
        }
        self.mirror(repo_id).remove();
        self.remove_caches(repo_id).await;
        Ok(())
    }

    // --- runs ---

    /// A manual run of a branch, tag or commit.
    pub async fn trigger(
        self: &Arc<Self>,
        project_id: i64,
        repo_id: i64,
        trigger: Trigger,
    ) -> Result<RunRecord, PipelineError> {
        let repo = self.records.repo(project_id, repo_id)?;
        // Named in a refusal: what was given alongside another, else `branch`.
        let at_fault = if trigger.tag.is_some() { "tag" } else { "branch" };
        let target = match (trigger.branch, trigger.tag, trigger.commit) {
            (Some(b), None, None) => {
                check_ref_name("branch", &b)?;
                Target::Branch(b)
            }
            (None, Some(t), None) => {
                check_ref_name("tag", &t)?;
                Target::Tag(t)
            }
            (branch, None, Some(c)) => {
                check_sha("commit", &c)?;
                if let Some(b) = &branch {
                    check_ref_name("branch", b)?;
                }
                Target::Commit { sha: c, branch, tag: None }
            }
            _ => {
                return Err(PipelineError::invalid(
                    at_fault,
                    "give one of branch, tag or commit (a commit may name its branch)",
                ))
            }
        };
        let event = if target.tag().is_some() { Event::Tag } else { Event::Manual };
        self.queue(repo, target, event, None).await
    }

    /// Re-runs `run_id`'s commit from `from`: earlier steps keep their results.
    pub async fn restart(
        self: &Arc<Self>,
        project_id: i64,
        run_id: i64,
        from: &str,
    ) -> Result<RunRecord, PipelineError> {
        let run = self.run(project_id, run_id)?;
        if !run.status.finished() {
            return Err(PipelineError::conflict(
                "run_unfinished",
                format!("run {run_id} is still {}", run.status.as_str()),
            ));
        }
        if !run.steps.iter().any(|s| s.name == from) {
            return Err(PipelineError::invalid("from", format!("run {run_id} has no step `{from}`")));
        }
        let repo = self.records.repo(project_id, run.repo_id)?;
        let target = Target::Commit { sha: run.commit.clone(), branch: run.branch.clone(), tag: run.tag.clone() };
        self.queue(repo, target, Event::Restart, Some((run_id, from.to_owned()))).await
    }

    pub async fn webhook(
        self: &Arc<Self>,
        repo_id: i64,
        provider: webhooks::Provider,
        event: Option<&str>,
        signature: Option<&str>,
        form: bool,
        body: &[u8],
    ) -> Result<Option<Pushed>, PipelineError> {
        // An unknown repository is answered as a bad signature is, so the
        // hook URL does not tell which repository ids exist.
        let (repo, secret) = match self.records.repo_any_project(repo_id) {
            Err(PipelineError::NotFound(_)) => return Err(PipelineError::BadSignature),
            found => found?,
        };
        // Without a secret nothing is accepted; the answer does not say why.
        let secret = secret.ok_or(PipelineError::BadSignature)?;
        webhooks::verify(provider, &secret, body, signature)?;
        match event {
            Some("push") => {}
            // GitHub's ping when the hook is created; anything else is not ours.
            _ => return Ok(None),
        }
        let Some(target) = webhooks::push_target(body, form)? else { return Ok(None) };
        let event = if target.tag().is_some() { Event::Tag } else { Event::Push };
        // A source that fails to answer is asked again: once the sender has
        // been answered it sends nothing more, so the push would be lost.
        let (mut attempt, mut pause) = (1, PUSH_FETCH_RETRY_FIRST);
        loop {
            match self.queue_pushed(repo.clone(), target.clone(), event).await {
                Err(e @ PipelineError::Git(_)) if attempt < PUSH_FETCH_ATTEMPTS => {
                    tracing::warn!(error = %e, repo = repo.id, attempt, "fetching a pushed commit failed; trying again");
                    tokio::time::sleep(pause).await;
                    (attempt, pause) = (attempt + 1, pause * 2);
                }
                Err(e @ PipelineError::Git(_)) => {
                    tracing::error!(error = %e, repo = repo.id, "a push runs nothing: its source could not be fetched");
                    return Err(e);
                }
                // The commit was named by the payload's `after`.
                Err(PipelineError::Invalid { field, message }) if field == "commit" => {
                    return Err(PipelineError::invalid("after", message))
                }
                done => return done.map(Some),
            }
        }
    }

    async fn queue(
        self: &Arc<Self>,
        repo: Repo,
        target: Target,
        event: Event,
        restart: Option<(i64, String)>,
    ) -> Result<RunRecord, PipelineError> {
        let synced = self.synced(&repo).await?;
        let sha = synced.0.resolve(&target).await?;
        let origin = match restart {
            Some((run, from)) => Origin::Restart(run, from),
            None => Origin::Asked,
        };
        // Only a push or a poll is left unrecorded when no step matches.
        self.prepare(repo, synced, target, sha, event, origin)
            .await?
            .ok_or_else(|| PipelineError::conflict("no_step_matches", "no step's `when` matches this run"))
    }

    /// Runs a pushed (or polled) commit, unless its branch or tag has moved
    /// on since (a late or replayed delivery must not put an older commit
    /// live again: the newer push runs instead), or a push or poll already
    /// ran it there (a delivery sent again, a hook and polling both).
    async fn queue_pushed(self: &Arc<Self>, repo: Repo, target: Target, event: Event) -> Result<Pushed, PipelineError> {
        let synced = self.synced(&repo).await?;
        let resolved = synced.0.resolve(&target).await;
        let (reference, now) = match (target.branch(), target.tag()) {
            (_, Some(tag)) => (format!("refs/tags/{tag}"), Target::Tag(tag.to_owned())),
            (Some(branch), None) => (format!("refs/heads/{branch}"), Target::Branch(branch.to_owned())),
            (None, None) => {
                let run = self.prepare(repo, synced, target, resolved?, event, Origin::Pushed).await?;
                return Ok(run.map_or(Pushed::Unmatched, Pushed::Queued));
            }
        };
        let head = synced.0.resolve(&now).await.ok();
        let sha = match resolved {
            Ok(sha) => sha,
            // Not in the repository: a force-push replaced it before any
            // fetch saw it, so the reference has moved on (or is gone).
            Err(PipelineError::Invalid { .. }) => return Ok(Pushed::Stale { reference, head }),
            Err(e) => return Err(e),
        };
        if head.as_deref() != Some(sha.as_str()) {
            return Ok(Pushed::Stale { reference, head });
        }
        // Checked and made under the mirror's lock, which `prepare` holds
        // until the run is recorded: deliveries at once make one run.
        if let Some(run) = self.records.pushed_run(repo.id, &sha, target.branch(), target.tag())? {
            return Ok(Pushed::Seen(run));
        }
        self.records.set_poll_head(repo.id, &reference, &sha)?;
        let run = self.prepare(repo, synced, target, sha, event, Origin::Pushed).await?;
        Ok(run.map_or(Pushed::Unmatched, Pushed::Queued))
    }

    /// Records and starts a run of `sha`; `synced` is the mirror and its
    /// lock, held until the run is recorded. A push or a poll none of whose
    /// steps' `when` matches records nothing (`None`), as Woodpecker does.
    async fn prepare(
        self: &Arc<Self>,
        repo: Repo,
        synced: (Arc<Mirror>, tokio::sync::OwnedMutexGuard<()>),
        target: Target,
        sha: String,
        event: Event,
        origin: Origin,
    ) -> Result<Option<RunRecord>, PipelineError> {
        let (mirror, fetched) = synced;
        let restart = match &origin {
            Origin::Restart(run, from) => Some((*run, from.as_str())),
            _ => None,
        };
        let text = mirror.file(&sha, spec::FILE_NAME, spec::MAX_FILE_BYTES).await;
        let message = mirror.subject(&sha).await.unwrap_or_default();
        let facts = RunFacts { branch: target.branch(), tag: target.tag(), event };
        let new = NewRun {
            repo_id: repo.id,
            event,
            commit: &sha,
            branch: target.branch(),
            tag: target.tag(),
            message: &message,
            restart_of: restart.map(|r| r.0),
            restart_from: restart.map(|r| r.1),
        };
        let text = match text {
            Ok(Some(text)) => text,
            Ok(None) => return self.refused(&new, &format!("{} not found at {sha}", spec::FILE_NAME)).map(Some),
            Err(e @ PipelineError::InvalidFile { .. }) => return self.refused(&new, &e.to_string()).map(Some),
            Err(e) => return Err(e),
        };
        let file = match spec::Pipeline::parse_apart(text).await {
            Ok(file) => file,
            Err(e) => return self.refused(&new, &e.to_string()).map(Some),
        };
        if matches!(origin, Origin::Pushed) && !file.steps.iter().any(|s| s.when.matches(&facts)) {
            return Ok(None);
        }
        let environment = file.environment(&facts);
        let steps: Vec<(String, &str)> = file
            .steps
            .iter()
            .map(|s| {
                let kind = match s.action {
                    spec::Action::Commands { .. } => "commands",
                    spec::Action::Build(_) => "build",
                    spec::Action::Deploy(_) => "deploy",
                };
                (s.name.clone(), kind)
            })
            .collect();
        let reuse = match restart {
            Some((earlier, from)) if file.steps.iter().any(|s| s.name == from) => {
                let reuse = runner::reused_steps(&file, from);
                // A step kept from the earlier run must have a result the
                // run could go on from: a restart past a failed test must
                // not ship its commit.
                let before = self.records.run(earlier)?;
                if let Some(step) = before.steps.iter().find(|s| reuse.contains(&s.name) && !runner::reusable(s)) {
                    return Err(PipelineError::conflict(
                        "step_not_passed",
                        format!(
                            "step `{}` did not pass in run {earlier} ({}): restart from it, or from a step before it",
                            step.name,
                            step.status.as_str()
                        ),
                    ));
                }
                Some(reuse)
            }
            _ => None,
        };
        let run_id = self.records.create_run(&new, environment.as_deref(), &steps)?;
        drop(fetched);
        let reuse = match (restart, reuse) {
            (_, Some(reuse)) => reuse,
            (Some((_, from)), None) => {
                self.records.fail_run(run_id, &format!("step `{from}` is not in the pipeline file at this commit"))?;
                return self.records.run(run_id).map(Some);
            }
            (None, None) => Default::default(),
        };
        let secrets: HashMap<String, String> = self.records.secrets(repo.id)?.into_iter().collect();
        let log = Arc::new(RunLog::new(run_id, self.records.clone(), secrets.values().cloned().collect())?);
        let cancel = self.shutdown.child_token();
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id, Arc::new(LiveRun { log: log.clone(), cancel: cancel.clone(), asked: Default::default() }));
        let plan = Plan {
            instance: self.instance.clone(),
            run_id,
            registry: file.registry.clone().or_else(|| self.config.registry.clone()),
            publish_ip: self.config.publish_ip.clone(),
            extra_labels: self.config.labels.clone().into_iter().collect(),
            repo,
            sha,
            target,
            event,
            environment,
            file,
            reuse,
            secrets,
        };
        let me = self.clone();
        self.tasks.spawn(async move { me.drive(plan, log, mirror, cancel).await });
        self.records.run(run_id).map(Some)
    }

    /// A run that cannot start (no or invalid pipeline file) is kept, as an
    /// error, so the repository's history shows why.
    fn refused(&self, new: &NewRun, error: &str) -> Result<RunRecord, PipelineError> {
        let run_id = self.records.create_run(new, None, &[])?;
        self.records.fail_run(run_id, error)?;
        self.records.run(run_id)
    }

    /// Waits for places (repository, overall, host), executes, records the end.
    async fn drive(self: Arc<Self>, plan: Plan, log: Arc<RunLog>, mirror: Arc<Mirror>, cancel: CancellationToken) {
        let run_id = plan.run_id;
        let reuse = plan.reuse.clone();
        let repo_slot = self
            .repo_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plan.repo.id)
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_runs_per_repo)))
            .clone();
        let places = async {
            let a = repo_slot.acquire_owned().await.ok()?;
            let b = self.all_runs.clone().acquire_owned().await.ok()?;
            Some((a, b))
        };
        let permits = tokio::select! {
            p = places => p,
            _ = cancel.cancelled() => None,
        };
        let (status, error) = match permits {
            None => (Status::Cancelled, None),
            Some(_permits) => match self.hosts.acquire(&cancel).await {
                Ok(None) => (Status::Cancelled, None),
                Err(e) => (Status::Error, Some(e.to_string())),
                Ok(Some(lease)) => {
                    let host = lease.host.spec.url.clone();
                    match self.records.start_run(run_id, &host) {
                        Ok(()) => {
                            log.prepare().await;
                            log.line("run", &format!("run {run_id} on {host}: {} at {}", plan.repo.name, plan.sha));
                            runner::execute(
                                plan,
                                lease,
                                self.hosts.clone(),
                                self.records.clone(),
                                log.clone(),
                                mirror,
                                cancel.clone(),
                            )
                            .await
                        }
                        Err(e) => (Status::Error, Some(e.to_string())),
                    }
                }
            },
        };
        // Cut short by the server stopping, not by a cancel: the same end
        // as a run found unfinished at start after a crash.
        let asked =
            self.live.lock().unwrap_or_else(|p| p.into_inner()).get(&run_id).map(|l| l.asked.load(Ordering::SeqCst));
        let (status, error) = match status {
            Status::Cancelled if self.shutdown.is_cancelled() && asked != Some(true) => {
                (Status::Error, Some(STOPPED_DURING_RUN.to_owned()))
            }
            _ => (status, error),
        };
        if let Ok(run) = self.records.run(run_id) {
            // Steps never reached end as cancelled (or skipped when the run
            // erred), but for those a restart keeps, whose results stand.
            let rest = if status == Status::Cancelled { Status::Cancelled } else { Status::Skipped };
            for step in run.steps.iter().filter(|s| !s.status.finished()) {
                let _ = match reuse.contains(&step.name) {
                    true => self.records.finish_step(
                        run_id,
                        &step.name,
                        Status::Reused,
                        None,
                        Some(runner::REUSED_NOTE),
                        None,
                    ),
                    false => self.records.finish_step(run_id, &step.name, rest, None, None, None),
                };
            }
        }
        log.prepare().await;
        let error = error.map(|e| log.mask(&e));
        if let Err(e) = self.records.finish_run(run_id, status, error.as_deref()) {
            tracing::error!(run = run_id, error = %e, "recording the end of a run failed");
        }
        log.line(
            "run",
            &format!("run {run_id}: {}{}", status.as_str(), error.map(|e| format!(" ({e})")).unwrap_or_default()),
        );
        log.end(status);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&run_id);
        metrics::counter!("leanloop_pipeline_runs_total", "status" => status.as_str()).increment(1);
    }

    pub fn cancel(&self, project_id: i64, run_id: i64) -> Result<RunRecord, PipelineError> {
        let run = self.run(project_id, run_id)?;
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).get(&run_id).cloned();
        match live {
            Some(live) => {
                live.asked.store(true, Ordering::SeqCst);
                live.cancel.cancel();
                Ok(run)
            }
            None => Err(PipelineError::conflict(
                "run_finished",
                format!("run {run_id} already finished ({})", run.status.as_str()),
            )),
        }
    }

    pub fn run(&self, project_id: i64, run_id: i64) -> Result<RunRecord, PipelineError> {
        let run = self.records.run(run_id)?;
        self.records.repo(project_id, run.repo_id).map_err(|_| PipelineError::NotFound(format!("run {run_id}")))?;
        Ok(run)
    }

    pub fn runs(
        &self,
        project_id: i64,
        repo_id: i64,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<RunRecord>, PipelineError> {
        self.records.repo(project_id, repo_id)?;
        self.records.runs(repo_id, page_limit(limit, 200)?, before)
    }

    /// Stored lines after `after`, for a run or one of its steps.
    pub fn logs(
        &self,
        project_id: i64,
        run_id: i64,
        step: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogLine>, PipelineError> {
        self.run(project_id, run_id)?;
        if let Some(live) = self.live.lock().unwrap_or_else(|p| p.into_inner()).get(&run_id) {
            live.log.flush();
        }
        self.records.logs(run_id, step, after, page_limit(limit, 100_000)?)
    }

    /// Live lines of a running run: `None` when it has finished (everything
    /// is then in the store).
    pub fn follow(
        &self,
        project_id: i64,
        run_id: i64,
    ) -> Result<Option<broadcast::Receiver<LiveEvent>>, PipelineError> {
        self.run(project_id, run_id)?;
        Ok(self.live.lock().unwrap_or_else(|p| p.into_inner()).get(&run_id).map(|l| l.log.follow()))
    }

    // --- releases ---

    pub fn releases(
        &self,
        project_id: i64,
        service: Option<&str>,
        environment: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Release>, PipelineError> {
        self.records.releases(project_id, service, environment, page_limit(limit, 500)?)
    }

    /// When a release version first went live (ms), for analytics.
    pub fn deployed_at(&self, project_id: i64, version: &str) -> Result<Option<i64>, PipelineError> {
        self.records.first_live(project_id, version)
    }

    pub fn release(&self, project_id: i64, id: i64) -> Result<Release, PipelineError> {
        self.records.release(project_id, id)
    }

    /// Deploys the previous healthy release of a service again, as a new
    /// release marked as a rollback of the current one. With no live release
    /// (the service torn down, or none of its replicas could run again), the
    /// newest release that ran healthy is deployed again. `to` names the
    /// release to return to instead (any of the service's in that
    /// environment that ran healthy), which makes a retried call safe: when
    /// the live release already runs it, nothing starts. Answers within
    /// `answer_within`: a rollback still starting then is answered as
    /// [`Rollback::Deploying`], and goes on.
    pub async fn rollback(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
        to: Option<i64>,
        answer_within: std::time::Duration,
    ) -> Result<Rollback, PipelineError> {
        let target = to.map(|id| self.rollback_target(project_id, service, environment, id)).transpose()?;
        let same = |r: &Release, t: &Release| (&r.image, &r.digest, &r.version) == (&t.image, &t.digest, &t.version);
        let deploying = match self.no_deploy_in_progress(project_id, service, environment, Duration::ZERO).await {
            Ok(deploying) => deploying,
            // A retry while the rollback it repeats still starts: that one.
            Err(busy) => match (&target, self.records.deploying(project_id, service, environment)?) {
                (Some(target), Some(under_way)) if same(&under_way, target) => {
                    return Ok(Rollback::Deploying(under_way))
                }
                _ => return Err(busy),
            },
        };
        let current = self.records.live_release(project_id, service, environment)?;
        let previous = match target {
            Some(target) => match &current {
                Some(live) if same(live, &target) && !live.endpoints.is_empty() => {
                    return Ok(Rollback::Unchanged(live.clone()))
                }
                _ => target,
            },
            None => self.previous_release(project_id, service, environment, current.as_ref())?,
        };
        let spec: spec::Deploy = serde_json::from_str(&previous.spec).map_err(|e| {
            PipelineError::conflict("release_unusable", format!("release {} cannot be redeployed: {e}", previous.id))
        })?;
        let (_, docker) = self.hosts.reachable().await.into_iter().next().ok_or(PipelineError::NoHost)?;
        let labels: engine::Labels = self.config.labels.clone().into_iter().collect();
        let (hosts, records, stop) = (self.hosts.clone(), self.records.clone(), self.shutdown.clone());
        let (instance, publish_ip) = (self.instance.clone(), self.config.publish_ip.clone());
        let named = (service, environment);
        let (service, environment) = (service.to_owned(), environment.to_owned());
        // A task of its own: a caller that goes away (a client timeout, the
        // request deadline) must not cut the deploy short and leave it
        // `deploying` with its replicas running.
        let deploying = self.tasks.spawn(async move {
            let _deploying = deploying;
            let rollout = deploy::Rollout {
                release: records::NewRelease {
                    project_id,
                    repo_id: previous.repo_id,
                    run_id: None,
                    environment: &environment,
                    version: &previous.version,
                    commit: &previous.commit,
                    branch: previous.branch.as_deref(),
                    image: &previous.image,
                    digest: previous.digest.as_deref(),
                    trigger: "rollback",
                    rollback_of: current.map(|c| c.id),
                },
                spec: &spec,
                instance: &instance,
                publish_ip: &publish_ip,
                extra_labels: &labels,
            };
            let say = |line: &str| tracing::info!(service, environment, "{line}");
            deploy::roll_out(&docker, &hosts, &records, rollout, &say, &stop).await
        });
        let mut deploying = std::pin::pin!(deploying);
        let done = match tokio::time::timeout(answer_within, &mut deploying).await {
            Ok(done) => done,
            Err(_) => match self.records.deploying(project_id, named.0, named.1)? {
                Some(release) => return Ok(Rollback::Deploying(release)),
                None => deploying.await,
            },
        };
        match done {
            Ok(done) => done.map(Rollback::Live).map_err(|why| PipelineError::conflict("rollback_failed", why)),
            Err(e) => Err(PipelineError::conflict("rollback_failed", format!("the rollback stopped: {e}"))),
        }
    }

    /// What a rollback without a target returns to: the release before
    /// `current`, else (none live) the newest that ran healthy.
    fn previous_release(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
        current: Option<&Release>,
    ) -> Result<Release, PipelineError> {
        let previous = match current {
            Some(current) => self.records.previous_healthy(project_id, service, environment, current)?,
            None => self.records.last_healthy(project_id, service, environment)?,
        };
        match previous {
            Some(previous) => Ok(previous),
            None if current.is_none()
                && self.records.releases(project_id, Some(service), Some(environment), 1)?.is_empty() =>
            {
                Err(PipelineError::NotFound(format!("a release of {service} in {environment}")))
            }
            None => Err(PipelineError::conflict(
                "no_healthy_release",
                format!("{service} in {environment} has no earlier healthy release to roll back to"),
            )),
        }
    }

    /// Release `id` as a rollback's target: one of this service's in this
    /// environment that ran healthy.
    fn rollback_target(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
        id: i64,
    ) -> Result<Release, PipelineError> {
        let target = match self.records.release(project_id, id) {
            Err(PipelineError::NotFound(_)) => {
                return Err(PipelineError::invalid("release", format!("there is no release {id} in this project")))
            }
            other => other?,
        };
        if (target.service.as_str(), target.environment.as_str()) != (service, environment) {
            return Err(PipelineError::invalid(
                "release",
                format!(
                    "release {id} is of {} in {}, not of {service} in {environment}",
                    target.service, target.environment
                ),
            ));
        }
        match target.status {
            ReleaseStatus::Deploying | ReleaseStatus::Failed => Err(PipelineError::conflict(
                "never_healthy",
                format!("release {id} never ran healthy; only a release that did can be rolled back to"),
            )),
            _ => Ok(target),
        }
    }

    /// The deploy lock of `service` in `environment`, or a conflict while
    /// a deploy of it runs: refused rather than queued, as a client
    /// retrying a call that outlived its request would otherwise act twice.
    /// It waits up to `grace` first (a removal waits out the live-release
    /// watch, which holds the lock for a moment while it retires a release
    /// whose replicas are gone; a rollback does not wait, or a retried one
    /// could follow the first).
    async fn no_deploy_in_progress(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
        grace: Duration,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, PipelineError> {
        let lock = self.records.deploy_lock(project_id, service, environment);
        tokio::time::timeout(grace, lock.lock_owned()).await.map_err(|_| {
            PipelineError::conflict(
                error::DEPLOY_IN_PROGRESS,
                format!("a deploy of {service} to {environment} is in progress; see its release, and try again once it ends"),
            )
        })
    }

    /// Stops and removes every replica of a service in an environment (a
    /// preview torn down) and retires its live release; returns how many
    /// containers were removed. A conflict while it is being deployed (the
    /// deploy would bring a replica back, or restore the release it
    /// replaces when it fails).
    pub async fn remove_service(
        &self,
        project_id: i64,
        service: &str,
        environment: &str,
    ) -> Result<usize, PipelineError> {
        let _deploying = self.no_deploy_in_progress(project_id, service, environment, LOCK_GRACE).await?;
        let project = project_id.to_string();
        // Replicas on a host out of reach would keep serving a release
        // recorded as retired, and nothing would look for them again.
        let reachable = self.hosts.reachable().await;
        if reachable.len() < self.hosts.all().len() {
            let message = "a Docker host does not answer: the service's replicas there cannot be removed now; nothing was changed";
            return Err(PipelineError::HostUnavailable(message.into()));
        }
        let (mut removed, mut failed) = (0, 0);
        for (_, docker) in reachable {
            let wanted = [
                (engine::INSTANCE, self.instance.as_str()),
                (deploy::PROJECT, project.as_str()),
                (deploy::SERVICE, service),
                (deploy::ENVIRONMENT, environment),
            ];
            for c in engine::containers_with(&docker, &wanted).await? {
                if let Some(id) = c.id {
                    match engine::remove_container(&docker, &id).await {
                        true => removed += 1,
                        false => failed += 1,
                    }
                }
            }
        }
        if failed > 0 {
            let message =
                format!("{failed} replica(s) could not be removed, {removed} were; the live release stays live: retry");
            return Err(PipelineError::HostUnavailable(message));
        }
        if let Some(live) = self.records.live_release(project_id, service, environment)? {
            self.records.release_retired(live.id)?;
        }
        Ok(removed)
    }

    // --- polling ---

    /// Polls each repository on its own task, one poll of a repository at
    /// a time: a remote that stalls delays only its own repository.
    async fn poll_loop(self: Arc<Self>) {
        // When each repository is next due, and at what interval: a changed
        // interval is due at once rather than after the old one.
        let mut due: HashMap<i64, (u32, tokio::time::Instant)> = HashMap::new();
        let polling: Arc<Mutex<HashSet<i64>>> = Arc::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_TICK) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let repos = match self.records.repos(None) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "listing repositories to poll failed");
                    continue;
                }
            };
            let now = tokio::time::Instant::now();
            for repo in repos {
                let Some(every) = repo.poll_seconds else { continue };
                if due.get(&repo.id).is_some_and(|(interval, at)| *interval == every && *at > now) {
                    continue;
                }
                if !polling.lock().unwrap_or_else(|p| p.into_inner()).insert(repo.id) {
                    continue;
                }
                due.insert(repo.id, (every, now + Duration::from_secs(every as u64)));
                let (pipeline, polling) = (self.clone(), polling.clone());
                // A stop does not wait for a fetch: git is killed with it.
                self.detach(async move {
                    let id = repo.id;
                    if let Err(e) = pipeline.poll(repo).await {
                        tracing::warn!(error = %e, repo = id, "polling a repository failed");
                    }
                    polling.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    Ok(())
                });
            }
        }
    }

    /// Starts a run for every branch or tag whose commit changed since the last look.
    async fn poll(self: &Arc<Self>, repo: Repo) -> Result<(), PipelineError> {
        let heads = {
            let (mirror, _fetched) = self.synced(&repo).await?;
            mirror.heads().await?
        };
        let known: HashMap<String, String> = self.records.poll_heads(repo.id)?.into_iter().collect();
        for (reference, sha) in heads {
            if known.get(&reference) == Some(&sha) {
                continue;
            }
            let target = if let Some(branch) = reference.strip_prefix("refs/heads/") {
                Target::Commit { sha: sha.clone(), branch: Some(branch.to_owned()), tag: None }
            } else if let Some(tag) = reference.strip_prefix("refs/tags/") {
                Target::Commit { sha: sha.clone(), branch: None, tag: Some(tag.to_owned()) }
            } else {
                continue;
            };
            // Recorded as seen by `queue_pushed`; a head moved meanwhile is
            // run at the next look.
            self.queue_pushed(repo.clone(), target, Event::Poll).await?;
        }
        Ok(())
    }
}

/// Why a run is made, where that changes what is recorded.
enum Origin {
    /// A manual run of a branch, a tag or a commit.
    Asked,
    /// A restart of a run (its id) from one of its steps.
    Restart(i64, String),
    /// A push or a poll.
    Pushed,
}

/// What a push (a webhook's delivery) or a poll came to.
#[derive(Debug)]
pub enum Pushed {
    Queued(RunRecord),
    /// No step's `when` matches the push: nothing is recorded.
    Unmatched,
    /// A push or a poll already ran this commit on this branch or tag.
    Seen(RunRecord),
    /// The branch or tag is at another commit now (`head`), or is gone.
    Stale {
        reference: String,
        head: Option<String>,
    },
}

/// A page's `limit`, refused (not clamped) outside 1..=`max`, as the
/// events API does.
fn page_limit(limit: u32, max: u32) -> Result<u32, PipelineError> {
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(PipelineError::invalid("limit", format!("`limit` must be from 1 to {max}")))
    }
}

/// A repository being registered: unless its first clone finishes, its
/// record and partial mirror go again, also when the request is dropped
/// mid-clone (the client left, or the request timed out), so a name refused
/// once can be registered again.
struct Registering<'a> {
    records: &'a Records,
    repo_id: i64,
    mirror: &'a Mirror,
    done: bool,
}

impl Drop for Registering<'_> {
    fn drop(&mut self) {
        if !self.done {
            // It has no runs yet, so nothing stands in the way.
            if let Err(e) = self.records.delete_repo(self.repo_id) {
                tracing::warn!(repo = self.repo_id, error = %e, "a repository that failed to clone is still recorded");
            }
            self.mirror.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{NewRelease, ReleaseStatus};

    #[test]
    fn a_registry_is_a_host_and_port() {
        let with = |registry: &str| PipelineConfig { registry: Some(registry.into()), ..PipelineConfig::default() };
        assert_eq!(with("127.0.0.1:5000").validate(), Ok(()));
        assert_eq!(with("registry.example.com").validate(), Ok(()));
        assert_eq!(with("ghcr.io/org/").validate(), Ok(()), "a path, and a trailing slash, as images name it");
        for bad in ["not a registry!!", "--evil", "host:port"] {
            let err = with(bad).validate().unwrap_err();
            assert!(err.starts_with("pipeline.registry"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn opening_ends_the_runs_steps_and_deploys_a_previous_process_left_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(&dir.path().join("pipeline.sqlite3")).unwrap();
        let repo = records.create_repo(1, "app", "/nowhere", None, None).unwrap();
        let new = NewRun {
            repo_id: repo.id,
            event: Event::Push,
            commit: "abc1234",
            branch: Some("main"),
            tag: None,
            message: "",
            restart_of: None,
            restart_from: None,
        };
        let steps = [("deploy".to_owned(), "deploy"), ("notify".to_owned(), "commands")];
        let run = records.create_run(&new, Some("production"), &steps).unwrap();
        records.start_run(run, "local").unwrap();
        records.start_step(run, "deploy").unwrap();
        let file =
            spec::Pipeline::parse("steps:\n  - name: deploy\n    deploy: { service: web, port: 8080 }\n").unwrap();
        let spec::Action::Deploy(deploy) = &file.steps[0].action else { panic!("a deploy step") };
        let release = NewRelease {
            project_id: 1,
            repo_id: Some(repo.id),
            run_id: Some(run),
            environment: "production",
            version: "abc1234",
            commit: "abc1234",
            branch: Some("main"),
            image: "local/project-1/web:abc1234",
            digest: None,
            trigger: "push",
            rollback_of: None,
        };
        let release = records.create_release(&release, deploy).unwrap();
        drop(records);

        // No engine answers here: the records are mended all the same.
        let hosts = vec![HostSpec { url: "tcp://127.0.0.1:1".into(), capacity: 1 }];
        let pipeline = Pipeline::open(dir.path(), PipelineConfig { hosts, ..PipelineConfig::default() }).unwrap();
        let ended = pipeline.records.run(run).unwrap();
        assert_eq!(ended.status, Status::Error);
        assert_eq!(ended.steps[0].status, Status::Error, "a step cut short ends with its run");
        assert_eq!(ended.steps[1].status, Status::Skipped, "a step never reached is skipped");
        let failed = pipeline.records.release(1, release).unwrap();
        assert_eq!(failed.status, ReleaseStatus::Failed, "a deploy cut short does not stay `deploying`");
        pipeline.stop(Duration::from_secs(5)).await;
    }
}
