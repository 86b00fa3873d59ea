//! The integration suite, one binary: every test starts its own real server
//! (in process, port 0, fresh data directory) and talks to it over HTTP.
//! One binary because each links DuckDB, which is large.

mod feedback;
mod limits;
mod operations;
mod posthog;
mod real_clients;
mod segment;
