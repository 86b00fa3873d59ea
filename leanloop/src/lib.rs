//! The `leanloop` program: configuration, the server assembled from the
//! crates, the read API, operations endpoints and the benchmarks.
//!
//! Only this crate uses `anyhow`; libraries return typed errors, and HTTP
//! answers come from `leanloop_core::ApiError` alone.

pub mod api;
pub mod app;
pub mod bench;
pub mod cohorts_api;
pub mod config;
pub mod connections;
pub mod last_log;
pub mod openapi;
mod openapi_ingest;
pub mod ops;
pub mod pipeline_api;
pub mod refusals;
mod route_metrics;
mod shape;
pub mod telemetry;

pub use app::{App, Role};
pub use config::{Config, Overrides};
