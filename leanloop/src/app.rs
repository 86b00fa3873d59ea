//! The server as one value you can start from `main` or from a test:
//! `App::build(config, role)` opens the stores and binds the listener,
//! `App::address()` tells where, `App::run_until_stopped(shutdown)` serves
//! until the token is cancelled and then drains the write-ahead log.
//!
//! Two roles share this code: the whole server, and the stateless ingestion
//! edge (`leanloop collector`) that only takes events: no query API, no
//! dashboard, no project creation; keys come from the shared control plane.

use crate::cohorts_api::{self, ControlBook};
use crate::{api, connections, ops, pipeline_api, refusals, route_metrics, telemetry};
use anyhow::{Context, Result};
use axum::Router;
use leanloop_analytics::Analytics;
use leanloop_collector::Collector;
use leanloop_control::{ControlPlane, KeyCache, Project};
use leanloop_pipeline::Pipeline;
use leanloop_store::clickhouse;
use leanloop_store::duckdb::DuckDbStore;
use leanloop_store::EventStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a key look-up is trusted before the control plane is asked again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

pub struct App {
    listener: TcpListener,
    router: Router,
    collector: Arc<Collector>,
    control: Arc<ControlPlane>,
    store: Arc<dyn EventStore>,
    config: crate::Config,
    default_project: Option<Project>,
    pipeline: Option<Arc<Pipeline>>,
    /// [`Shared::leaving`].
    leaving: CancellationToken,
    /// [`Shared::stopping`].
    stopping: CancellationToken,
}

/// What an instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ingest, query API, dashboard, operations.
    Server,
    /// Ingest and operations only.
    Collector,
}

/// What the running parts share with request handlers.
#[derive(Clone)]
pub struct Shared {
    pub keys: Arc<KeyCache>,
    /// For saved cohorts.
    pub control: Arc<ControlPlane>,
    pub analytics: Analytics,
    /// For the one write the read API makes: erasing a person.
    pub store: Arc<dyn EventStore>,
    pub collector: Arc<Collector>,
    /// The delivery pipeline; `None` on a collector.
    pub pipeline: Option<Arc<Pipeline>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// How long a request may take (`request_timeout_secs`).
    pub request_timeout: std::time::Duration,
    /// Read-API questions answered at once (see `api::blocking`).
    pub questions: crate::api::Questions,
    /// Erasures run at once, apart from the questions (see `api::erase`).
    pub erasures: crate::api::Questions,
    /// Cancelled at the stop signal: `/readyz` answers 503 from then on, so
    /// load balancers send new traffic elsewhere while requests are still
    /// taken for `shutdown_delay_secs`.
    pub leaving: CancellationToken,
    /// Cancelled as the server stops accepting: answers that stream for as
    /// long as the client stays (log followers) end, so they do not hold
    /// the stop up for its whole timeout.
    pub stopping: CancellationToken,
}

impl App {
    pub async fn build(config: crate::Config, role: Role) -> Result<App> {
        let metrics = telemetry::metrics_handle();
        // Bound first: an address in use leaves no data directory behind.
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        // ClickHouse before the data directory too: a database that refuses
        // start (a foreign table, a newer schema) leaves none behind.
        let clickhouse = if config.clickhouse.is_some() { Some(open_store(&config).await?) } else { None };
        create_data_dir(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let control = Arc::new(open_control(&config.data_dir.join("control.sqlite"))?);
        let default_project = match (role, control.projects()?.into_iter().next()) {
            (_, Some(project)) => Some(project),
            (Role::Server, None) => Some(control.create_project("Default")?),
            (Role::Collector, None) => {
                tracing::warn!("the control plane has no projects yet: every write key is refused until one exists");
                None
            }
        };
        let store = match clickhouse {
            Some(store) => store,
            None => open_store(&config).await?,
        };
        let keys = Arc::new(KeyCache::new(control.clone(), KEY_CACHE_TTL));
        let log_dir = config.log_dir.clone();
        // The pipeline first: a second server on this data directory is
        // refused before its collector starts delivering anything.
        let pipeline = match role {
            Role::Server => Some(Pipeline::open(&config.data_dir.join("pipeline"), config.pipeline.clone())?),
            Role::Collector => None,
        };
        let started = async {
            // A server owns its data directory (a second one was refused
            // above); collectors may share one, each with a log of its own.
            let last_log = if role == Role::Server { Some(crate::last_log::LastLog::check(&config)?) } else { None };
            // A log directory of its own (`--log-dir`) holds every event as
            // it arrived: it is kept as private as the data directory.
            if config.collector.log {
                let open = "the log directory is open to other users, and holds the events as they arrived";
                create_private_dir(&log_dir, open)
                    .with_context(|| format!("creating log directory {}", log_dir.display()))?;
            }
            let collector = Collector::start(config.collector.clone(), keys.clone(), store.clone(), &log_dir)?;
            anyhow::Ok((last_log, collector))
        };
        let (last_log, collector) = match started.await {
            Ok(started) => started,
            Err(e) => {
                // Its tasks hold the pipeline's lock until they stop.
                if let Some(pipeline) = &pipeline {
                    pipeline.stop(std::time::Duration::from_secs(5)).await;
                }
                return Err(e);
            }
        };
        if let Some(Err(e)) = last_log.map(|last| last.record(&config)) {
            tracing::warn!("{e:#}");
        }
        let shared = Shared {
            keys,
            control: control.clone(),
            analytics: Analytics::new(store.clone(), Arc::new(ControlBook(control.clone()))),
            store: store.clone(),
            collector: collector.clone(),
            pipeline: pipeline.clone(),
            metrics,
            request_timeout: config.request_timeout,
            questions: crate::api::Questions::new(crate::api::MAX_QUESTIONS),
            erasures: crate::api::Questions::new(crate::api::MAX_ERASURES),
            leaving: CancellationToken::new(),
            stopping: CancellationToken::new(),
        };
        let (leaving, stopping) = (shared.leaving.clone(), shared.stopping.clone());
        let mut router = Router::new().merge(collector.router()).merge(ops::router(shared.clone()));
        if role == Role::Server {
            router = router
                .merge(api::router(shared.clone()))
                .merge(cohorts_api::router(shared.clone()))
                .merge(pipeline_api::router(shared.clone()))
                .merge(leanloop_dashboard::router(control.clone()));
        }
        let router = router
            .route_layer(route_metrics::RouteMetrics)
            .fallback(refusals::not_found)
            .layer(refusals::Refusals { timeout: config.request_timeout });
        Ok(App { listener, router, collector, control, store, config, default_project, pipeline, leaving, stopping })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The first project; `None` only for a collector over an empty control plane.
    pub fn default_project(&self) -> Option<&Project> {
        self.default_project.as_ref()
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn pipeline(&self) -> Option<&Arc<Pipeline>> {
        self.pipeline.as_ref()
    }

    pub fn collector(&self) -> &Arc<Collector> {
        &self.collector
    }

    /// Serves until `shutdown` is cancelled: reports not ready, goes on
    /// accepting for the shutdown delay, stops accepting, lets requests in
    /// flight finish, then delivers the backlog (up to the shutdown timeout;
    /// what the log still holds is delivered on the next start).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<()> {
        let App { listener, router, collector, config, pipeline, leaving, stopping, .. } = self;
        let delay = config.shutdown_delay;
        tokio::spawn({
            let stopping = stopping.clone();
            async move {
                shutdown.cancelled().await;
                leaving.cancel();
                if !delay.is_zero() {
                    tracing::info!(secs = delay.as_secs(), "not ready: still taking requests for shutdown_delay_secs");
                    tokio::time::sleep(delay).await;
                }
                stopping.cancel();
            }
        });
        // Headers get the whole request's time; the body is bounded by the
        // request deadline (`refusals::Refusals`).
        connections::serve(listener, router, stopping, config.request_timeout, config.shutdown_timeout).await;
        let timeout = config.shutdown_timeout;
        if let Some(pipeline) = pipeline {
            // Runs in flight are cancelled; their containers are removed.
            pipeline.stop(timeout).await;
        }
        let unit = collector.queue().backlog().unit;
        let left = tokio::task::spawn_blocking(move || collector.queue().drain(timeout)).await?;
        match (left, unit) {
            (0, _) => tracing::info!("backlog delivered; stopped"),
            (_, "bytes") => {
                tracing::warn!(bytes = left, "shutdown timed out; the log keeps the rest for the next start")
            }
            _ => tracing::error!(items = left, "shutdown timed out before the in-memory queue was stored"),
        }
        Ok(())
    }
}

/// Creates the data directory, readable by its owner only: it holds the
/// projects' keys, pipeline secrets and the events. One that exists keeps
/// its mode, with a warning when others may read it.
pub fn create_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    create_private_dir(dir, "the data directory is open to other users, and holds keys and secrets")
}

/// Creates a directory as [`create_data_dir`] does; `open` is the warning
/// for one that exists open to others.
fn create_private_dir(dir: &std::path::Path, open: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.is_dir() && meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), "{open}: `chmod 700` it");
            }
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// The control plane at `path`. SQLite's own words for a full or read-only
/// disk ("disk I/O error", "unable to open database file") name neither the
/// file nor the cause: the error says both.
pub fn open_control(path: &std::path::Path) -> Result<ControlPlane> {
    ControlPlane::open(path)
        .with_context(|| format!("opening {} (is its file system full or read-only?)", path.display()))
}

/// ClickHouse when configured, else the embedded DuckDB file.
async fn open_store(config: &crate::Config) -> Result<Arc<dyn EventStore>> {
    let store: Arc<dyn EventStore> = match config.clickhouse.clone() {
        // Starts while ClickHouse is down: the log takes events meanwhile.
        Some(options) => {
            let opened = tokio::task::spawn_blocking(move || clickhouse::Deferred::open(&options)).await?;
            Arc::new(opened.context("opening the ClickHouse event store")?)
        }
        None => {
            let path = config.data_dir.join("events.duckdb");
            let duckdb = config.duckdb.clone();
            Arc::new(tokio::task::spawn_blocking(move || DuckDbStore::open(&path, &duckdb)).await??)
        }
    };
    Ok(store)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_data_directory_is_its_owners_alone_and_an_existing_one_keeps_its_mode() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/leanloop-data");
        super::create_data_dir(&dir).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(dir.parent().unwrap())), (0o700, 0o700));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::create_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o755);
    }
}
