//! `leanloop bench pipeline`: the pipeline's own cost on the local Docker
//! Engine. Overhead is a 3-step run's wall time minus the time its step
//! containers ran (the engine's clock), beside a baseline measured in the
//! same run: three bare container lifecycles (create, start, wait, remove)
//! through the same engine API. Deploy-to-serving is a deploy step's time
//! from a ready image to a healthy replica answering.

use crate::{App, Config, Role};
use anyhow::{bail, Context, Result};
use leanloop_pipeline::{Pipeline, RunRecord, Trigger};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OVERHEAD_TARGET_MS: f64 = 1500.0;
const DEPLOY_TARGET_MS: f64 = 5000.0;

pub struct Options {
    pub base_image: String,
    pub registry: Option<String>,
    pub runs: usize,
}

fn git(dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@leanloop.invalid", "-c", "commit.gpgsign=false"])
        .args(args)
        .status()?;
    if !status.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

/// A repository with the three-step pipeline on `main` and a build+deploy
/// pipeline on `deploy`.
fn repository(base: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let p = dir.path();
    std::fs::create_dir_all(p.join("site"))?;
    std::fs::write(p.join("site/index.html"), "bench\n")?;
    std::fs::write(p.join("site/health"), "ok\n")?;
    std::fs::write(
        p.join("Dockerfile"),
        format!("FROM {base}\nCOPY site/ /www/\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"),
    )?;
    let step = |name: &str| format!("  - name: {name}\n    image: {base}\n    commands: [\"true\"]\n");
    std::fs::write(p.join("leanloop.yml"), format!("steps:\n{}{}{}", step("one"), step("two"), step("three")))?;
    git(p, &["init", "-q", "-b", "main"])?;
    git(p, &["add", "-A"])?;
    git(p, &["commit", "-q", "-m", "three steps"])?;
    git(p, &["checkout", "-q", "-b", "main-deploy"])?;
    std::fs::write(
        p.join("leanloop.yml"),
        "environments:\n  - { branch: main-deploy, name: bench }\nsteps:\n  - name: image\n    build: { service: bench-web, push: false }\n  - name: deploy\n    deploy: { service: bench-web, port: 8080, health: /health, strategy: recreate }\n",
    )?;
    git(p, &["commit", "-q", "-am", "build and deploy"])?;
    Ok(dir)
}

async fn wait(pipeline: &Pipeline, project: i64, run: i64) -> Result<RunRecord> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let record = pipeline.run(project, run)?;
        if record.status.finished() {
            return Ok(record);
        }
        if Instant::now() > deadline {
            bail!("run {run} did not finish within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Three bare container lifecycles through the engine API, in ms.
fn bare_lifecycles(base: &str) -> Result<f64> {
    let started = Instant::now();
    for _ in 0..3 {
        let status = Command::new("docker").args(["run", "--rm", "--network", "none", base, "true"]).status()?;
        if !status.success() {
            bail!("docker run {base} failed");
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

pub async fn run(options: Options) -> Result<()> {
    let runs = options.runs.max(1);
    println!("leanloop bench pipeline: {runs} runs, base image {}", options.base_image);
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(dir.path());
    config.pipeline.registry = options.registry.clone();
    config.pipeline.labels.insert("leanloop.bench".into(), "1".into());
    let app = App::build(config, Role::Server).await?;
    let pipeline: Arc<Pipeline> = app.pipeline().context("the server has no pipeline")?.clone();
    let project = app.default_project().context("no project")?.id;
    let repo = repository(&options.base_image)?;
    let source = repo.path().to_string_lossy().into_owned();
    let registered = pipeline
        .add_repo(
            project,
            leanloop_pipeline::NewRepo { name: "bench".into(), source, webhook_secret: None, poll_seconds: None },
        )
        .await?;

    // Warm-up run: images inspected, mirror cloned.
    let main = || Trigger { branch: Some("main".into()), ..Trigger::default() };
    let first = pipeline.trigger(project, registered.id, main()).await?;
    let first = wait(&pipeline, project, first.id).await?;
    if first.status != leanloop_pipeline::Status::Success {
        bail!("the warm-up run ended {:?}: {:?}", first.status, first.error);
    }
    let mut overheads = Vec::new();
    let mut walls = Vec::new();
    let mut baselines = Vec::new();
    for _ in 0..runs {
        let asked = Instant::now();
        let run = pipeline.trigger(project, registered.id, main()).await?;
        let run = wait(&pipeline, project, run.id).await?;
        let wall = asked.elapsed().as_secs_f64() * 1000.0;
        let inside: i64 = run.steps.iter().filter_map(|s| s.container_ms).sum();
        overheads.push(run.duration_ms.unwrap_or(0) as f64 - inside as f64);
        walls.push(wall - inside as f64);
        baselines.push(bare_lifecycles(&options.base_image)?);
    }
    let overhead = median(overheads);
    let from_request = median(walls);
    let baseline = median(baselines);
    println!("3-step run overhead (run wall time minus time in step containers), p50 of {runs}:");
    println!(
        "  recorded run:         {overhead:>8.0} ms   target <= {OVERHEAD_TARGET_MS:.0} ms   {}",
        verdict(overhead <= OVERHEAD_TARGET_MS)
    );
    println!("  from the API request: {from_request:>8.0} ms   (adds the git fetch and queueing)");
    println!(
        "  baseline, 3 bare `docker run --rm` lifecycles: {baseline:.0} ms; overhead = {:.2}x baseline",
        overhead / baseline.max(1.0)
    );

    // Deploy: build once, then redeploy the ready image and time to healthy.
    let deploy = Trigger { branch: Some("main-deploy".into()), ..Trigger::default() };
    let built = pipeline.trigger(project, registered.id, deploy).await?;
    let built = wait(&pipeline, project, built.id).await?;
    if built.status != leanloop_pipeline::Status::Success {
        bail!("the build-and-deploy run ended {:?}: {:?}", built.status, built.error);
    }
    let mut deploys = Vec::new();
    let mut serving = Vec::new();
    let client = reqwest::Client::new();
    for _ in 0..runs {
        let again = pipeline.restart(project, built.id, "deploy").await?;
        let again = wait(&pipeline, project, again.id).await?;
        let step = again.steps.iter().find(|s| s.name == "deploy").context("no deploy step")?;
        if step.status != leanloop_pipeline::Status::Success {
            bail!("a redeploy ended {:?}: {:?}", step.status, step.note);
        }
        let release = pipeline
            .releases(project, Some("bench-web"), Some("bench"), 1)?
            .into_iter()
            .next()
            .context("no release")?;
        let answered = Instant::now();
        let body = client.get(format!("http://{}/index.html", release.endpoints[0])).send().await?.text().await?;
        if body.trim() != "bench" {
            bail!("the deployed service answered {body:?}");
        }
        deploys.push(step.duration_ms.unwrap_or(0) as f64);
        serving.push(step.duration_ms.unwrap_or(0) as f64 + answered.elapsed().as_secs_f64() * 1000.0);
    }
    let deploy_ms = median(deploys);
    let serving_ms = median(serving);
    println!("deploy to serving (image ready -> healthy replica answering), p50 of {runs}:");
    println!("  deploy step (start, health check, retire old): {deploy_ms:>6.0} ms");
    println!("  + first request answered:                      {serving_ms:>6.0} ms   target <= {DEPLOY_TARGET_MS:.0} ms   {}", verdict(serving_ms <= DEPLOY_TARGET_MS));

    pipeline.remove_service(project, "bench-web", "bench").await?;
    pipeline.stop(Duration::from_secs(30)).await;
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}
