//! The server as one value you can start from `main` or from a test:
//! `App::build(config)` opens the stores and binds the listener,
//! `App::port()` tells where, `App::run_until_stopped(shutdown)` serves until
//! the token is cancelled and then drains the ingest queue.

use crate::{api, ops, telemetry};
use anyhow::{Context, Result};
use axum::Router;
use leanloop_analytics::Analytics;
use leanloop_collector::Collector;
use leanloop_control::{ControlPlane, KeyCache, Project};
use leanloop_store::duckdb::DuckDbStore;
use leanloop_store::EventStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

/// How long a key look-up is trusted before the control plane is asked again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

pub struct App {
    listener: TcpListener,
    router: Router,
    collector: Arc<Collector>,
    control: Arc<ControlPlane>,
    store: Arc<dyn EventStore>,
    config: crate::Config,
    default_project: Project,
}

/// What the running parts share with request handlers.
#[derive(Clone)]
pub struct Shared {
    pub keys: Arc<KeyCache>,
    pub analytics: Analytics,
    pub collector: Arc<Collector>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl App {
    pub async fn build(config: crate::Config) -> Result<App> {
        let metrics = telemetry::metrics_handle();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let control = Arc::new(ControlPlane::open(&config.data_dir.join("control.sqlite"))?);
        let default_project = match control.projects()?.into_iter().next() {
            Some(project) => project,
            None => control.create_project("Default")?,
        };
        let store_path = config.data_dir.join("events.duckdb");
        let duckdb = config.duckdb.clone();
        let store: Arc<dyn EventStore> =
            Arc::new(tokio::task::spawn_blocking(move || DuckDbStore::open(&store_path, &duckdb)).await??);
        let keys = Arc::new(KeyCache::new(control.clone(), KEY_CACHE_TTL));
        let collector = Collector::start(config.collector.clone(), keys.clone(), store.clone());
        let shared = Shared { keys, analytics: Analytics::new(store.clone()), collector: collector.clone(), metrics };
        let router = Router::new()
            .merge(collector.router())
            .merge(api::router(shared.clone()))
            .merge(ops::router(shared.clone()))
            .merge(leanloop_dashboard::router(control.clone()))
            .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, config.request_timeout));
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        Ok(App { listener, router, collector, control, store, config, default_project })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn default_project(&self) -> &Project {
        &self.default_project
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn collector(&self) -> &Arc<Collector> {
        &self.collector
    }

    /// Serves until `shutdown` is cancelled: stops accepting, lets requests in
    /// flight finish, then stores everything queued (up to the shutdown timeout).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<()> {
        let App { listener, router, collector, config, .. } = self;
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving HTTP")?;
        let timeout = config.shutdown_timeout;
        let left = tokio::task::spawn_blocking(move || collector.queue().drain(timeout)).await?;
        if left > 0 {
            tracing::error!(items = left, "shutdown timed out before the queue was stored");
        } else {
            tracing::info!("queue drained; stopped");
        }
        Ok(())
    }
}
