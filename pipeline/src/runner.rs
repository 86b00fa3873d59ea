//! Executes one run on one Docker host: a workspace volume filled with the
//! commit's tree, a private network with the services on it (only when the
//! file has services: creating and removing one costs the engine about a
//! quarter of a second, more than a short step takes), then the steps
//! as a DAG (each in its own container), and cleanup of everything the run
//! made, whatever happened.

use crate::deploy::{self, Rollout};
use crate::engine::{self, Job, Labels, INSTANCE, MANAGED, RUN, WORKSPACE};
use crate::git::Mirror;
use crate::hosts::Lease;
use crate::images::{self, BuildJob, Built};
use crate::logs::RunLog;
use crate::records::{NewRelease, Records, Repo, Status, StepRecord};
use crate::spec::{Action, Event, OnFailure, Pipeline as File, RunFacts, Step};
use crate::{git::Target, hosts::Hosts};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Everything decided before a run starts.
pub struct Plan {
    /// The installation's id (see `Records::instance`).
    pub instance: String,
    pub run_id: i64,
    pub repo: Repo,
    pub sha: String,
    pub target: Target,
    pub event: Event,
    pub environment: Option<String>,
    pub file: File,
    /// Steps whose result is taken from the run this one restarts.
    pub reuse: HashSet<String>,
    pub secrets: HashMap<String, String>,
    pub registry: Option<String>,
    pub publish_ip: String,
    pub extra_labels: Labels,
}

/// What the steps of one run share.
struct Context {
    plan: Plan,
    lease: Lease,
    hosts: Arc<Hosts>,
    records: Arc<Records>,
    log: Arc<RunLog>,
    mirror: Arc<Mirror>,
    labels: Labels,
    /// `ll-<instance>-<run>`: names of everything the run makes start with it.
    prefix: String,
    /// The run's private network, when it has services.
    network: Option<String>,
    workspace: String,
    /// An image present on the host that can hold the workspace, if any step has one.
    helper_image: std::sync::OnceLock<String>,
    built: Mutex<HashMap<String, Built>>,
    cancel: CancellationToken,
}

struct Outcome {
    status: Status,
    exit_code: Option<i64>,
    note: Option<String>,
    container_ms: Option<i64>,
}

impl Outcome {
    fn of(status: Status, note: impl Into<Option<String>>) -> Outcome {
        Outcome { status, exit_code: None, note: note.into(), container_ms: None }
    }
}

/// Runs the plan to its end. `cancel` is the run's: a user's cancel or the
/// run timeout.
pub async fn execute(
    plan: Plan,
    lease: Lease,
    hosts: Arc<Hosts>,
    records: Arc<Records>,
    log: Arc<RunLog>,
    mirror: Arc<Mirror>,
    cancel: CancellationToken,
) -> (Status, Option<String>) {
    let key = engine::scoped(&plan.instance, plan.run_id);
    let mut labels = plan.extra_labels.clone();
    labels.insert(MANAGED.into(), "true".into());
    labels.insert(INSTANCE.into(), plan.instance.clone());
    labels.insert(RUN.into(), key.clone());
    let ctx = Arc::new(Context {
        prefix: format!("ll-{key}"),
        network: (!plan.file.services.is_empty()).then(|| format!("ll-{key}")),
        workspace: format!("ll-{key}-workspace"),
        helper_image: std::sync::OnceLock::new(),
        plan,
        lease,
        hosts,
        records,
        log,
        mirror,
        labels,
        built: Mutex::new(HashMap::new()),
        cancel,
    });
    let timeout = ctx.plan.file.timeout;
    let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = {
        let (cancel, flag) = (ctx.cancel.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            cancel.cancel();
        })
    };
    let result = match prepare(&ctx).await {
        Ok(()) => run_steps(ctx.clone()).await,
        Err(e) => Err(e),
    };
    timer.abort();
    let docker = ctx.lease.docker.clone();
    engine::remove_labelled(&docker, RUN, &key, true).await;
    let (status, error) = match result {
        Err(message) => {
            ctx.log.line("run", &format!("error: {message}"));
            (Status::Error, Some(message))
        }
        Ok(_) if timed_out.load(std::sync::atomic::Ordering::SeqCst) => {
            (Status::Failure, Some(format!("the run timed out after {} s", timeout.as_secs())))
        }
        Ok(_) if ctx.cancel.is_cancelled() => (Status::Cancelled, None),
        Ok(true) => (Status::Failure, None),
        Ok(false) => (Status::Success, None),
    };
    (status, error)
}

/// Network, workspace and services.
async fn prepare(ctx: &Context) -> Result<(), String> {
    let docker = &ctx.lease.docker;
    if let Some(network) = &ctx.network {
        engine::create_network(docker, network, &ctx.labels).await.map_err(|e| e.to_string())?;
    }
    engine::create_volume(docker, &ctx.workspace, &ctx.labels).await.map_err(|e| e.to_string())?;
    let facts = facts(&ctx.plan);
    let images: Vec<&str> = ctx
        .plan
        .file
        .steps
        .iter()
        .filter(|s| !ctx.plan.reuse.contains(&s.name) && s.when.matches(&facts))
        .filter_map(|s| match &s.action {
            Action::Commands { image, .. } => Some(image.as_str()),
            _ => None,
        })
        .chain(ctx.plan.file.services.iter().map(|s| s.image.as_str()))
        .collect();
    let mut helper = None;
    for image in images {
        if engine::ensure_image(docker, image).await.is_ok() {
            helper = Some(image.to_owned());
            break;
        }
    }
    if let Some(image) = &helper {
        let tree = ctx.mirror.archive(&ctx.plan.sha).await.map_err(|e| e.to_string())?;
        engine::fill_volume(docker, image, &ctx.workspace, &ctx.labels, tree)
            .await
            .map_err(|e| format!("filling the workspace: {e}"))?;
        ctx.log.line("run", &format!("workspace: {} at {}", ctx.plan.repo.name, ctx.plan.sha));
    }
    for service in &ctx.plan.file.services {
        engine::ensure_image(docker, &service.image).await?;
        let job = Job {
            name: format!("{}-svc-{}", ctx.prefix, service.name),
            image: &service.image,
            cmd: if service.commands.is_empty() {
                vec![]
            } else {
                vec!["/bin/sh".into(), "-c".into(), engine::script(&service.commands)]
            },
            env: service.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels: ctx.labels.clone(),
            mounts: vec![engine::volume_mount(&ctx.workspace, WORKSPACE)],
            network: ctx.network.as_deref(),
            aliases: vec![service.name.clone()],
        };
        job.start(docker).await.map_err(|e| format!("service {}: {e}", service.name))?;
        ctx.log.line("run", &format!("service {} started", service.name));
    }
    if let Some(image) = helper {
        let _ = ctx.helper_image.set(image);
    }
    Ok(())
}

fn facts(plan: &Plan) -> RunFacts<'_> {
    RunFacts { branch: plan.target.branch(), tag: plan.target.tag(), event: plan.event }
}

/// Walks the DAG; returns whether any step failed.
async fn run_steps(ctx: Arc<Context>) -> Result<bool, String> {
    let steps = &ctx.plan.file.steps;
    let mut status: HashMap<String, Status> = steps.iter().map(|s| (s.name.clone(), Status::Pending)).collect();
    let mut running: JoinSet<(String, Outcome)> = JoinSet::new();
    // Steps skipped because something before them failed: their dependents
    // are skipped too (a step skipped by `when` counts as passed).
    let mut blocked: HashSet<String> = HashSet::new();
    // Failed steps whose failure is ignored (`failure: ignore`).
    let mut ignored: HashSet<String> = HashSet::new();
    // Some step failed: from now on only `when: { status: [failure] }` steps run.
    let mut failed = false;
    let facts = facts(&ctx.plan);
    loop {
        for step in steps {
            if status[&step.name] != Status::Pending {
                continue;
            }
            let deps: Vec<Status> = step.depends_on.iter().map(|d| status[d]).collect();
            if deps.iter().any(|s| !s.finished()) {
                continue;
            }
            let upstream_failed =
                step.depends_on.iter().any(|d| blocked.contains(d) || !(status[d].passed() || ignored.contains(d)));
            let decided = if ctx.plan.reuse.contains(&step.name) {
                Some(Outcome::of(Status::Reused, REUSED_NOTE.to_owned()))
            } else if ctx.cancel.is_cancelled() || deps.contains(&Status::Cancelled) {
                Some(Outcome::of(Status::Cancelled, None))
            } else if !step.when.matches(&facts) || !step.when.runs_when(failed || upstream_failed) {
                if upstream_failed || failed {
                    blocked.insert(step.name.clone());
                }
                let note = if !step.when.matches(&facts) {
                    NOT_THIS_RUN
                } else if upstream_failed {
                    "a step it depends on did not pass"
                } else if failed {
                    "an earlier step failed"
                } else {
                    ONLY_ON_FAILURE
                };
                Some(Outcome::of(Status::Skipped, note.to_owned()))
            } else {
                None
            };
            match decided {
                Some(outcome) => {
                    record(&ctx, &step.name, &outcome);
                    status.insert(step.name.clone(), outcome.status);
                }
                None => {
                    status.insert(step.name.clone(), Status::Running);
                    ctx.records.start_step(ctx.plan.run_id, &step.name).map_err(|e| e.to_string())?;
                    let (ctx, step) = (ctx.clone(), step.clone());
                    running.spawn(async move {
                        let outcome = run_step(&ctx, &step).await;
                        (step.name.clone(), outcome)
                    });
                }
            }
        }
        // Decisions above may have unblocked more steps; go round again
        // before waiting when nothing runs.
        if running.is_empty() {
            // The file is acyclic, so every pass decides at least one step.
            if status.values().any(|s| *s == Status::Pending) {
                continue;
            }
            break;
        }
        match running.join_next().await {
            Some(Ok((name, mut outcome))) => {
                if matches!(outcome.status, Status::Failure | Status::Error) {
                    let policy = steps.iter().find(|s| s.name == name).map(|s| s.on_failure);
                    if policy == Some(OnFailure::Ignore) {
                        outcome.note = Some(
                            outcome.note.map_or(FAILURE_IGNORED.to_owned(), |n| format!("{n}; {FAILURE_IGNORED}")),
                        );
                        ignored.insert(name.clone());
                    } else {
                        failed = true;
                    }
                }
                record(&ctx, &name, &outcome);
                status.insert(name, outcome.status);
            }
            Some(Err(e)) => return Err(format!("a step task failed: {e}")),
            None => {}
        }
    }
    Ok(failed)
}

fn record(ctx: &Context, name: &str, o: &Outcome) {
    // A note may quote the engine, and the engine a secret (a failed build
    // names the command it ran).
    let note = o.note.as_deref().map(|n| ctx.log.mask(n));
    let line = match (&o.status, o.exit_code, &note) {
        (s, Some(code), _) => format!("step {name}: {} (exit code {code})", s.as_str()),
        (s, None, Some(note)) => format!("step {name}: {} ({note})", s.as_str()),
        (s, None, None) => format!("step {name}: {}", s.as_str()),
    };
    ctx.log.line(name, &line);
    if let Err(e) =
        ctx.records.finish_step(ctx.plan.run_id, name, o.status, o.exit_code, note.as_deref(), o.container_ms)
    {
        tracing::error!(run = ctx.plan.run_id, step = name, error = %e, "recording a step failed");
    }
}

async fn run_step(ctx: &Context, step: &Step) -> Outcome {
    let stop = ctx.cancel.child_token();
    let timer = {
        let (stop, limit) = (stop.clone(), step.timeout);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            stop.cancel();
        })
    };
    let started = std::time::Instant::now();
    let mut outcome = match &step.action {
        Action::Commands { image, commands } => commands_step(ctx, step, image, commands, &stop).await,
        Action::Build(_) => build_step(ctx, step, &stop).await,
        Action::Deploy(_) => deploy_step(ctx, step, &stop).await,
    };
    timer.abort();
    if stop.is_cancelled() && outcome.status != Status::Success {
        outcome = if ctx.cancel.is_cancelled() {
            Outcome { status: Status::Cancelled, ..outcome }
        } else {
            Outcome {
                status: Status::Failure,
                note: Some(format!("timed out after {} s", step.timeout.as_secs())),
                ..outcome
            }
        };
    }
    if outcome.container_ms.is_none() && !matches!(step.action, Action::Commands { .. }) {
        // Build and deploy work happens in the engine: all of it counts.
        outcome.container_ms = Some(started.elapsed().as_millis() as i64);
    }
    outcome
}

fn step_env(ctx: &Context, step: &Step) -> Result<Vec<String>, String> {
    let plan = &ctx.plan;
    let mut env: Vec<String> = vec![
        "CI=true".into(),
        format!("LEANLOOP_RUN={}", plan.run_id),
        format!("LEANLOOP_REPO={}", plan.repo.name),
        format!("LEANLOOP_COMMIT={}", plan.sha),
        format!("LEANLOOP_EVENT={}", plan.event.as_str()),
    ];
    if let Some(b) = plan.target.branch() {
        env.push(format!("LEANLOOP_BRANCH={b}"));
    }
    if let Some(t) = plan.target.tag() {
        env.push(format!("LEANLOOP_TAG={t}"));
    }
    if let Some(e) = &plan.environment {
        env.push(format!("LEANLOOP_ENVIRONMENT={e}"));
    }
    env.extend(step.env.iter().map(|(k, v)| format!("{k}={v}")));
    for name in &step.secrets {
        let value = plan.secrets.get(name).ok_or_else(|| format!("secret {name} is not set for this repository"))?;
        env.push(format!("{name}={value}"));
    }
    Ok(env)
}

async fn commands_step(
    ctx: &Context,
    step: &Step,
    image: &str,
    commands: &[String],
    stop: &CancellationToken,
) -> Outcome {
    let docker = &ctx.lease.docker;
    let env = match step_env(ctx, step) {
        Ok(env) => env,
        Err(e) => return Outcome::of(Status::Error, e),
    };
    if let Err(e) = engine::ensure_image(docker, image).await {
        return Outcome::of(Status::Error, e);
    }
    let mut mounts = vec![engine::volume_mount(&ctx.workspace, WORKSPACE)];
    for (i, path) in step.cache.iter().enumerate() {
        match cache_volume(ctx, step, i).await {
            Ok(volume) => mounts.push(engine::volume_mount(&volume, path)),
            Err(e) => return Outcome::of(Status::Error, e),
        }
    }
    let job = Job {
        name: format!("{}-{}", ctx.prefix, step.name),
        image,
        cmd: vec!["/bin/sh".into(), "-c".into(), engine::script(commands)],
        env,
        labels: ctx.labels.clone(),
        mounts,
        network: ctx.network.as_deref(),
        aliases: vec![],
    };
    match job.run(docker, &ctx.log, &step.name, stop).await {
        Ok(exit) => {
            let status = match exit.code {
                Some(0) => Status::Success,
                Some(_) => Status::Failure,
                None => Status::Cancelled,
            };
            Outcome { status, exit_code: exit.code, note: None, container_ms: exit.container_ms }
        }
        Err(e) => Outcome::of(Status::Error, e.to_string()),
    }
}

/// Cache volumes carry `<instance>-<repository id>` here.
pub const CACHE: &str = "leanloop.cache";

/// The opt-in dependency cache: one volume per repository, branch (or tag)
/// and path, kept across runs. A volume name holds only some characters, so
/// the branch's name is also hashed in: `feature/a` and `feature-a` would
/// share one volume otherwise.
async fn cache_volume(ctx: &Context, step: &Step, index: usize) -> Result<String, String> {
    use sha2::Digest;
    let plan = &ctx.plan;
    let exact = plan.target.branch().or(plan.target.tag()).unwrap_or("detached");
    let hash: String = sha2::Sha256::digest(exact.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect();
    let reference = images::tag_for(exact);
    let owner = engine::scoped(&plan.instance, plan.repo.id);
    let name = format!("ll-cache-{owner}-{reference}-{hash}-{}-{index}", step.name);
    let docker = &ctx.lease.docker;
    if docker.inspect_volume(&name).await.is_err() {
        let mut labels = plan.extra_labels.clone();
        labels.insert(MANAGED.into(), "true".into());
        labels.insert(INSTANCE.into(), plan.instance.clone());
        labels.insert(CACHE.into(), owner);
        engine::create_volume(docker, &name, &labels).await.map_err(|e| e.to_string())?;
    }
    Ok(name)
}

async fn build_step(ctx: &Context, step: &Step, stop: &CancellationToken) -> Outcome {
    let Action::Build(build) = &step.action else { unreachable!("build_step is only called for build steps") };
    let docker = &ctx.lease.docker;
    // The workspace, after earlier steps ran in it; without one, the commit's tree.
    let context = match ctx.helper_image.get() {
        Some(image) => {
            engine::read_volume(docker, image, &ctx.workspace, &ctx.labels, &build.context, ctx.mirror.scratch())
                .await
                .map_err(|e| e.to_string())
        }
        None => {
            let tree =
                if build.context == "." { ctx.plan.sha.clone() } else { format!("{}:{}", ctx.plan.sha, build.context) };
            ctx.mirror.archive(&tree).await.map_err(|e| e.to_string())
        }
    };
    let context = match context {
        Ok(c) => c,
        Err(e) => return Outcome::of(Status::Error, format!("reading the build context: {e}")),
    };
    let say = |line: &str| ctx.log.line(&step.name, line);
    // Containers inherit their image's labels: the image must not carry the
    // run's, or the run's cleanup would remove the replicas deployed from it.
    let mut image_labels = ctx.plan.extra_labels.clone();
    image_labels.insert(images::COMMIT_LABEL.into(), ctx.plan.sha.clone());
    let job = BuildJob {
        build,
        project_id: ctx.plan.repo.project_id,
        registry: ctx.plan.registry.as_deref(),
        sha: &ctx.plan.sha,
        reference: ctx.plan.target.tag().or(ctx.plan.target.branch()),
        labels: &image_labels,
        context,
    };
    match images::build_and_push(docker, job, &say, stop).await {
        Ok(built) => {
            say(&format!("image {} {}", built.image, built.digest.as_deref().unwrap_or("(not pushed)")));
            ctx.built.lock().unwrap_or_else(|p| p.into_inner()).insert(build.service.clone(), built);
            Outcome::of(Status::Success, None)
        }
        Err(e) => Outcome::of(Status::Failure, e),
    }
}

async fn deploy_step(ctx: &Context, step: &Step, stop: &CancellationToken) -> Outcome {
    let Action::Deploy(spec) = &step.action else { unreachable!("deploy_step is only called for deploy steps") };
    let plan = &ctx.plan;
    let Some(environment) = plan.environment.as_deref() else {
        let what =
            plan.target.branch().map(|b| format!("branch {b}")).or(plan.target.tag().map(|t| format!("tag {t}")));
        return Outcome::of(
            Status::Skipped,
            format!("no deploy environment for {}", what.unwrap_or_else(|| "this commit".into())),
        );
    };
    let built = ctx.built.lock().unwrap_or_else(|p| p.into_inner()).get(&spec.service).cloned();
    // Built by this run, or by an earlier run of this commit (a restart
    // from the deploy step), pulled first when this engine lacks it (another
    // host built it, or it was removed), before the deploy lock is taken, as
    // a pull may take minutes.
    enum Source {
        ThisRun(images::Built),
        Earlier(String),
    }
    let source = match built {
        Some(built) => Source::ThisRun(built),
        None => {
            let image = format!(
                "{}:{}",
                images::repository(plan.registry.as_deref(), plan.repo.project_id, &spec.service),
                images::short_sha(&plan.sha)
            );
            if let Err(e) = engine::ensure_image(&ctx.lease.docker, &image).await {
                return Outcome::of(Status::Failure, e);
            }
            Source::Earlier(image)
        }
    };
    let version = plan.target.tag().map(str::to_owned).unwrap_or_else(|| images::short_sha(&plan.sha).to_owned());
    let say = |line: &str| ctx.log.line(&step.name, line);
    // One deploy of a service to an environment at a time: a run's waits
    // for the one in progress (another run's, or a rollback).
    let lock = ctx.records.deploy_lock(plan.repo.project_id, &spec.service, environment);
    let _deploying = match lock.clone().try_lock_owned() {
        Ok(held) => held,
        Err(_) => {
            say(&format!("waiting for the deploy of {} to {environment} in progress", spec.service));
            tokio::select! {
                held = lock.lock_owned() => held,
                _ = stop.cancelled() => return Outcome::of(Status::Failure, "stopped while waiting for another deploy".to_owned()),
            }
        }
    };
    let (image, digest) = match source {
        Source::ThisRun(built) => (built.image, built.digest),
        Source::Earlier(image) => {
            // The tag is only a name: a later push (a branch or tag named
            // like this short sha) may have moved it to another commit's
            // image. Looked at once the lock is held, just before it is used.
            let earlier = images::earlier_build(&ctx.lease.docker, &image).await;
            let (commit, digest) = earlier.map_or((None, None), |e| (e.commit, e.digest));
            if commit.as_deref() != Some(plan.sha.as_str()) {
                let other = commit.map_or_else(|| "no recorded commit".to_owned(), |c| format!("commit {c}"));
                return Outcome::of(
                    Status::Failure,
                    format!("{image} now holds an image of {other}, not of {}: run the commit again", plan.sha),
                );
            }
            (image, digest)
        }
    };
    let rollout = Rollout {
        release: NewRelease {
            project_id: plan.repo.project_id,
            repo_id: Some(plan.repo.id),
            run_id: Some(plan.run_id),
            environment,
            version: &version,
            commit: &plan.sha,
            branch: plan.target.branch(),
            image: &image,
            digest: digest.as_deref(),
            trigger: plan.event.as_str(),
            rollback_of: None,
        },
        spec,
        instance: &plan.instance,
        publish_ip: &plan.publish_ip,
        extra_labels: &plan.extra_labels,
    };
    match deploy::roll_out(&ctx.lease.docker, &ctx.hosts, &ctx.records, rollout, &say, stop).await {
        Ok(_) => Outcome::of(Status::Success, None),
        Err(e) => {
            say(&e);
            Outcome::of(Status::Failure, e)
        }
    }
}

// Notes of steps whose result let the run go on as if they passed: not
// for this run, or only for failed ones, or failed with `failure: ignore`.
const NOT_THIS_RUN: &str = "`when` does not match this run";
/// The note of a step a restart keeps from the run it restarts.
pub const REUSED_NOTE: &str = "result of the run this one restarts";
const ONLY_ON_FAILURE: &str = "runs only once a step has failed";
const FAILURE_IGNORED: &str = "failure ignored";

/// Whether a finished step's result may be reused by a restart: it passed,
/// was not meant to run, or its failure was ignored. A step skipped or
/// never reached because something failed has no result to reuse.
pub fn reusable(step: &StepRecord) -> bool {
    let note = step.note.as_deref().unwrap_or_default();
    match step.status {
        Status::Success | Status::Reused => true,
        Status::Skipped => note == NOT_THIS_RUN || note == ONLY_ON_FAILURE,
        Status::Failure | Status::Error => note.ends_with(FAILURE_IGNORED),
        _ => false,
    }
}

/// Steps a run restarted from `from` must run again; the rest are reused.
pub fn reused_steps(file: &File, from: &str) -> HashSet<String> {
    let again = file.downstream_of(from);
    file.steps.iter().map(|s| s.name.clone()).filter(|n| !again.contains(n)).collect()
}
