//! `leanloop`: serve, manage projects, and run benchmarks.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use leanloop::{telemetry, App, Config, Overrides};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "leanloop", version, about = "Ship a release, watch what users do with it, decide from data.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Configuration file (TOML); also LEANLOOP_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [env: LEANLOOP_DATA_DIR] [default: ./leanloop-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest, query API, dashboard.
    Serve {
        /// Address to listen on [env: LEANLOOP_LISTEN] [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Manage projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Measure performance and print figures.
    Bench {
        #[command(subcommand)]
        command: leanloop::bench::BenchCommand,
    },
    /// An HTTP endpoint that only answers 200: the ceiling the ingest benchmark compares against.
    #[command(hide = true)]
    BareServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project and print its keys.
    Create {
        name: String,
        /// Print `{"id", "write_key", "read_key"}` as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// List projects.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { listen, common } => {
            serve(Overrides { config_file: common.config, listen, data_dir: common.data_dir }).await
        }
        Command::Project { command } => project(command),
        Command::Bench { command } => leanloop::bench::run(command).await,
        Command::BareServer { listen } => leanloop::bench::bare_server(&listen).await,
    }
}

async fn serve(overrides: Overrides) -> Result<()> {
    let config = Config::load(&overrides)?;
    let app = App::build(config).await?;
    let base = format!("http://{}", app.address());
    let p = app.default_project();
    println!("Leanloop is listening on {base}");
    println!("  dashboard        {base}/");
    println!("  Segment ingest   {base}/v1/batch  (also /v1/track, /v1/page, /v1/identify, ...)");
    println!("  PostHog ingest   {base}/batch/  (also /capture/, /e/)");
    println!("  feedback         {base}/v1/feedback");
    println!("  events API       {base}/api/v1/projects/{}/events", p.id);
    println!("  metrics          {base}/metrics");
    println!("Project \"{}\" (id {})", p.name, p.id);
    println!("  write key  {}", p.write_key);
    println!("  read key   {}", p.read_key);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing requests and storing queued events");
            shutdown.cancel();
        }
    });
    app.run_until_stopped(shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn project(command: ProjectCommand) -> Result<()> {
    let common = match &command {
        ProjectCommand::Create { common, .. } | ProjectCommand::List { common, .. } => common.clone(),
    };
    let config = Config::load(&Overrides { config_file: common.config, listen: None, data_dir: common.data_dir })?;
    std::fs::create_dir_all(&config.data_dir)?;
    let control = leanloop_control::ControlPlane::open(&config.data_dir.join("control.sqlite"))?;
    match command {
        ProjectCommand::Create { name, json: true, .. } => {
            let p = control.create_project(&name)?;
            println!(
                "{}",
                serde_json::json!({ "id": p.id, "name": p.name, "write_key": p.write_key, "read_key": p.read_key })
            );
        }
        ProjectCommand::Create { name, json: false, .. } => {
            let p = control.create_project(&name)?;
            println!("Project \"{}\" (id {})\n  write key  {}\n  read key   {}", p.name, p.id, p.write_key, p.read_key);
        }
        ProjectCommand::List { json, .. } => {
            let projects = control.projects()?;
            if json {
                let rows: Vec<_> = projects
                    .iter()
                    .map(|p| serde_json::json!({ "id": p.id, "name": p.name, "write_key": p.write_key }))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for p in projects {
                    println!("{}\t{}\t{}", p.id, p.name, p.write_key);
                }
            }
        }
    }
    Ok(())
}
