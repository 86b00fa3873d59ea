//! The integration suite, one binary: every test starts its own real server
//! (in process or as a child process, port 0, fresh data directory) and
//! talks to it over HTTP; ClickHouse tests use a fresh database on the
//! server the test command started, or a private server they can stop.
//! One binary because each links DuckDB, which is large.

mod api_fuzz;
mod browser;
mod clickhouse_store;
mod faults;
mod feedback;
mod full_disk;
mod insights;
mod insights_api;
mod limits;
mod operations;
mod pipeline;
mod posthog;
mod real_clients;
mod sdk;
mod segment;
