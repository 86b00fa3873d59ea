//! Control-plane metadata in SQLite: organisations, projects and their keys,
//! and the cohorts saved for a project.
//!
//! The control plane is small, transactional and rarely written, so it lives in
//! SQLite beside the event store rather than in it. Every access goes through
//! [`ControlPlane`]; the schema is versioned by [`migrations`].

mod cache;
mod cohorts;
mod error;
mod keys;
pub mod migrations;
mod projects;

pub use cache::KeyCache;
pub use cohorts::SavedCohort;
pub use error::ControlError;
pub use keys::{generate_key, KeyKind};
pub use projects::{ControlPlane, Project};
