//! `leanloop`: serve, manage projects, and run benchmarks.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use leanloop::{telemetry, App, Config, Overrides, Role};
use std::io::Write;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// `println!` that answers an error where standard output is closed or
/// full (`| head`, `> /dev/full`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).context("writing to standard output")
    };
}

/// Rust allocations go to mimalloc; DuckDB's C++ still allocates through
/// glibc, whose arenas [`limit_malloc_arenas`] caps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Where a serving process listens, logs and stores.
#[derive(clap::Args, Clone)]
struct Serving {
    /// Address to listen on [env: LEANLOOP_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<String>,
    /// Store events in ClickHouse, e.g. http://127.0.0.1:8123/?database=leanloop
    /// [env: LEANLOOP_CLICKHOUSE_URL] [default: embedded DuckDB]
    #[arg(long = "clickhouse")]
    clickhouse_url: Option<String>,
    /// Write-ahead log directory [env: LEANLOOP_LOG_DIR] [default: DATA_DIR/log]
    #[arg(long)]
    log_dir: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

impl Serving {
    fn overrides(self) -> Overrides {
        Overrides {
            config_file: self.common.config,
            listen: self.listen,
            data_dir: self.common.data_dir,
            log_dir: self.log_dir,
            clickhouse_url: self.clickhouse_url,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest, query API, dashboard.
    Serve(Serving),
    /// Run the ingestion edge alone (no query API, no dashboard): many
    /// collectors, each with its own log directory, can write to one
    /// ClickHouse. Keys come from the control plane in the data directory.
    Collector(Serving),
    /// Print (and with --apply, run) the ClickHouse DDL for a cluster:
    /// ReplicatedMergeTree tables and Distributed tables over them.
    Migrate {
        /// Cluster name from the servers' remote_servers configuration.
        #[arg(long)]
        cluster: String,
        /// A server of the cluster, e.g. http://ch1:8123/?database=leanloop
        /// [env: LEANLOOP_CLICKHOUSE_URL]; without it, DDL for current servers is printed.
        #[arg(long = "clickhouse", env = "LEANLOOP_CLICKHOUSE_URL")]
        clickhouse_url: Option<String>,
        /// Database name when no URL is given.
        #[arg(long, default_value = "leanloop")]
        database: String,
        /// Run the statements on the server instead of only printing them.
        #[arg(long, requires = "clickhouse_url")]
        apply: bool,
    },
    /// Manage projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Check a pipeline file (`leanloop.yml`): prints its steps in run
    /// order, or the error with its line, and exits 1 on an invalid file.
    Lint {
        #[arg(default_value = "leanloop.yml")]
        file: std::path::PathBuf,
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
        /// Print `{"id", "name", "write_key", "read_key", "deploy_key"}` as JSON.
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
    /// Replace one of a project's keys (a leaked one, say) and print the
    /// new one. Running servers stop taking the old key within 30 s.
    RotateKey {
        /// The project's id (`project list`).
        id: i64,
        /// Which key: write, read or deploy.
        #[arg(long, value_enum)]
        kind: KeyArg,
        /// Print `{"id", "kind", "key"}` as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Change a project's settings. Running servers apply them within 30 s.
    Set {
        /// The project's id (`project list`).
        id: i64,
        /// Store clients' whole IP addresses (`true`) rather than
        /// anonymised ones (`false`, the default).
        #[arg(long, action = clap::ArgAction::Set)]
        store_full_ip: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyArg {
    Write,
    Read,
    Deploy,
}

impl From<KeyArg> for leanloop_control::KeyKind {
    fn from(kind: KeyArg) -> Self {
        match kind {
            KeyArg::Write => leanloop_control::KeyKind::Write,
            KeyArg::Read => leanloop_control::KeyKind::Read,
            KeyArg::Deploy => leanloop_control::KeyKind::Deploy,
        }
    }
}

fn main() -> Result<()> {
    limit_malloc_arenas();
    let cli = Cli::parse();
    telemetry::init_logging();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = runtime.block_on(run(cli));
    // What had to be stored is stored by now. A question still waiting on
    // a store that stopped answering (ClickHouse stuck) must not keep the
    // process alive: dropping the runtime would wait for it for ever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

/// glibc gives each thread that allocates concurrently its own arena, up to
/// eight per core, and memory freed in one is not reused by another: with
/// the async workers, the log threads and DuckDB's threads, the ingest
/// benchmark peaked at 337–343 MB, and at 295 MB with two arenas at the same
/// rate. Two it is, unless `MALLOC_ARENA_MAX` says otherwise (glibc reads it
/// itself). Called before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator settings; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(serving) => serve(serving.overrides(), Role::Server).await,
        Command::Collector(serving) => serve(serving.overrides(), Role::Collector).await,
        Command::Migrate { cluster, clickhouse_url, database, apply } => {
            // An empty variable is no URL, as for `serve`.
            let url = clickhouse_url.as_deref().filter(|u| !u.trim().is_empty());
            migrate_cluster(&cluster, url, &database, apply).await
        }
        Command::Project { command } => project(command),
        Command::Lint { file } => lint(&file),
        Command::Bench { command } => leanloop::bench::run(command).await,
        Command::BareServer { listen } => leanloop::bench::bare_server(&listen).await,
    }
}

fn lint(file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let pipeline = leanloop_pipeline::spec::Pipeline::parse(&text).map_err(|e| {
        // The parser names the file as a repository holds it; this is the one given.
        let message = e.to_string();
        let named = message.strip_prefix("leanloop.yml").map(|rest| format!("{}{rest}", file.display()));
        anyhow::anyhow!(named.unwrap_or(message))
    })?;
    for step in pipeline.topological() {
        let after =
            if step.depends_on.is_empty() { String::new() } else { format!(" (after {})", step.depends_on.join(", ")) };
        out!("{}{after}", step.name)?;
    }
    out!("{}: valid, {} steps", file.display(), pipeline.steps.len())?;
    Ok(())
}

async fn serve(overrides: Overrides, role: Role) -> Result<()> {
    let config = Config::load(&overrides)?;
    let store = match &config.clickhouse {
        Some(options) => format!("ClickHouse ({})", leanloop_store::clickhouse::redacted(&options.url)),
        None => format!("DuckDB ({})", config.data_dir.join("events.duckdb").display()),
    };
    let log = if config.collector.log { config.log_dir.display().to_string() } else { "off (in-memory queue)".into() };
    let app = App::build(config, role).await?;
    let base = format!("http://{}", app.address());
    // One write: a reader that stops after the line it wants (and closes the
    // pipe) must not make a later line fail.
    let mut banner = String::new();
    let mut line = |text: &str| {
        banner.push_str(text);
        banner.push('\n');
    };
    match role {
        Role::Server => line(&format!("Leanloop is listening on {base}")),
        Role::Collector => line(&format!("Leanloop collector is listening on {base}")),
    }
    if role == Role::Server {
        line(&format!("  dashboard        {base}/"));
    }
    line(&format!("  Segment ingest   {base}/v1/batch  (also /v1/track, /v1/page, /v1/identify, ...)"));
    line(&format!("  PostHog ingest   {base}/batch/  (also /capture/, /e/)"));
    line(&format!("  feedback         {base}/v1/feedback"));
    line(&format!("  JS SDK           {base}/sdk.js"));
    if let (Role::Server, Some(p)) = (role, app.default_project()) {
        line(&format!("  events API       {base}/api/v1/projects/{}/events", p.id));
    }
    line(&format!("  metrics          {base}/metrics"));
    line(&format!("  event store      {store}"));
    line(&format!("  write-ahead log  {log}"));
    if let (Role::Server, Some(p)) = (role, app.default_project()) {
        line(&format!("Project \"{}\" (id {})", p.name, p.id));
        line(&format!("  write key  {}", p.write_key));
        line(&format!("  read key   {}", p.read_key));
        line(&format!("  deploy key {}", p.deploy_key));
    }
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
    }
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!(
                "shutting down: finishing requests and storing queued events (a second signal stops at once)"
            );
            shutdown.cancel();
            // An operator who will not wait: what was acknowledged is in the
            // write-ahead log, and is stored at the next start (with the log
            // off, `collector.log = false`, what the queue held is lost).
            wait_for_signal().await;
            tracing::warn!("a second signal: stopping at once, leaving what is not stored yet to the write-ahead log");
            std::process::exit(130);
        }
    });
    app.run_until_stopped(shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        // A closed terminal or session sends SIGHUP, whose default would end
        // the process at once, dropping the queue and skipping the drain.
        // Under `nohup` it is ignored, and stays so.
        let mut hangup =
            (!hangup_ignored()).then(|| signal(SignalKind::hangup()).expect("installing the SIGHUP handler"));
        let hung_up = async {
            match &mut hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = hung_up => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Whether the process was started with SIGHUP ignored (`nohup`).
#[cfg(unix)]
fn hangup_ignored() -> bool {
    // SAFETY: reads the current disposition only (a null new action).
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == libc::SIG_IGN
    }
}

fn project(command: ProjectCommand) -> Result<()> {
    let common = match &command {
        ProjectCommand::Create { common, .. }
        | ProjectCommand::List { common, .. }
        | ProjectCommand::RotateKey { common, .. }
        | ProjectCommand::Set { common, .. } => common.clone(),
    };
    let config =
        Config::load(&Overrides { config_file: common.config, data_dir: common.data_dir, ..Overrides::default() })?;
    let dir = &config.data_dir;
    let database = dir.join("control.sqlite");
    // A key of a directory that holds no data (a typo) is no project's.
    if let (ProjectCommand::RotateKey { id, .. } | ProjectCommand::Set { id, .. }, false) =
        (&command, database.exists())
    {
        anyhow::bail!("project {id} does not exist: no control plane in {}", dir.display());
    }
    // Listing a directory that holds no data (a typo) creates nothing.
    if matches!(command, ProjectCommand::List { .. }) && !database.exists() {
        anyhow::ensure!(!dir.exists() || dir.is_dir(), "data directory {}: not a directory", dir.display());
        if matches!(command, ProjectCommand::List { json: true, .. }) {
            out!("[]")?;
        }
        return Ok(());
    }
    leanloop::app::create_data_dir(dir).with_context(|| format!("data directory {}", dir.display()))?;
    let control = leanloop::app::open_control(&database)?;
    match command {
        ProjectCommand::Create { name, json, .. } => {
            let p = control.create_project(&name)?;
            let printed = match json {
                true => out!(
                    "{}",
                    serde_json::json!({ "id": p.id, "name": p.name, "write_key": p.write_key, "read_key": p.read_key, "deploy_key": p.deploy_key })
                ),
                false => out!(
                    "Project \"{}\" (id {})\n  write key  {}\n  read key   {}\n  deploy key {}",
                    p.name,
                    p.id,
                    p.write_key,
                    p.read_key,
                    p.deploy_key
                ),
            };
            printed.with_context(|| {
                format!(
                    "project {} was created but its keys were not printed: `leanloop project rotate-key {} --kind KIND` \
                     gives new ones",
                    p.id, p.id
                )
            })?;
        }
        ProjectCommand::RotateKey { id, kind, json, .. } => {
            let kind = leanloop_control::KeyKind::from(kind);
            let key = control.rotate_key(id, kind)?;
            match json {
                true => out!("{}", serde_json::json!({ "id": id, "kind": kind.name(), "key": key })),
                false => out!("{} key of project {id}: {key}", kind.name()),
            }?;
        }
        ProjectCommand::Set { id, store_full_ip, .. } => {
            control.set_store_full_ip(id, store_full_ip)?;
            let stored = if store_full_ip { "whole" } else { "anonymised" };
            out!("project {id}: client IP addresses are stored {stored}")?;
        }
        ProjectCommand::List { json, .. } => {
            let projects = control.projects()?;
            if json {
                let rows: Vec<_> = projects
                    .iter()
                    .map(|p| {
                        serde_json::json!({ "id": p.id, "name": p.name, "write_key": p.write_key, "store_full_ip": p.store_full_ip })
                    })
                    .collect();
                out!("{}", serde_json::Value::Array(rows))?;
            } else {
                for p in projects {
                    out!("{}\t{}\t{}", p.id, p.name, p.write_key)?;
                }
            }
        }
    }
    Ok(())
}

async fn migrate_cluster(cluster: &str, url: Option<&str>, database: &str, apply: bool) -> Result<()> {
    use leanloop_store::clickhouse::{self as ch, is_identifier};
    anyhow::ensure!(is_identifier(cluster), "--cluster: `{cluster}` must be {}", ch::IDENTIFIER_RULE);
    let (version, database) = match url {
        Some(url) => {
            let url = url.to_owned();
            tokio::task::spawn_blocking(move || ch::server_info(&url)).await??
        }
        None => {
            anyhow::ensure!(is_identifier(database), "--database: `{database}` must be {}", ch::IDENTIFIER_RULE);
            (ch::CURRENT_SERVER, database.to_owned())
        }
    };
    // An empty `--clickhouse` (or variable) is none, which clap let by.
    anyhow::ensure!(!apply || url.is_some(), "--apply: no ClickHouse URL to apply to (`--clickhouse` is empty)");
    let statements = ch::cluster_ddl(cluster, &database, version, None);
    out!("-- Leanloop event store on ClickHouse cluster `{cluster}` (server {version}).")?;
    out!("-- Each server needs the {{shard}} and {{replica}} macros and ZooKeeper or Keeper.")?;
    for sql in &statements {
        out!("{sql};\n")?;
    }
    if let Some(url) = url.filter(|_| apply) {
        let url = url.to_owned();
        let count = statements.len();
        tokio::task::spawn_blocking(move || ch::execute_all(&url, &statements)).await??;
        eprintln!("applied {count} statements");
    }
    Ok(())
}
