//! Errors of the pipeline, classified once for the HTTP layer.

use leanloop_core::{Classify, ErrorClass};

/// The conflict a retry may get past: another deploy of the same service
/// to the same environment is under way.
pub const DEPLOY_IN_PROGRESS: &str = "deploy_in_progress";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline file is invalid; `line` is 1-based when known.
    #[error("leanloop.yml{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    InvalidFile { line: Option<usize>, message: String },
    /// A request names something wrong; `field` says which input.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("webhook signature does not match")]
    BadSignature,
    /// The state does not allow the request; `reason` names which case
    /// (`deploy_in_progress`, `no_healthy_release`, ...).
    #[error("{message}")]
    Conflict { reason: &'static str, message: String },
    #[error("git: {0}")]
    Git(String),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("no Docker host is reachable")]
    NoHost,
    /// A Docker host did not answer, or did not do what was asked: nothing
    /// is recorded as done until it is.
    #[error("{0}")]
    HostUnavailable(String),
    #[error("pipeline database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl PipelineError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> PipelineError {
        PipelineError::Invalid { field: field.into(), message: message.into() }
    }

    pub fn conflict(reason: &'static str, message: impl Into<String>) -> PipelineError {
        PipelineError::Conflict { reason, message: message.into() }
    }
}

impl Classify for PipelineError {
    fn class(&self) -> ErrorClass {
        match self {
            PipelineError::InvalidFile { .. } => ErrorClass::BadRequest { field: Some("leanloop.yml".into()) },
            PipelineError::Invalid { field, .. } => ErrorClass::BadRequest { field: Some(field.clone()) },
            PipelineError::NotFound(_) => ErrorClass::NotFound,
            PipelineError::BadSignature => ErrorClass::Unauthorized,
            // Another deploy of the service holds it for a while; the others
            // last until someone acts.
            PipelineError::Conflict { reason: DEPLOY_IN_PROGRESS, .. } => {
                ErrorClass::Conflict { reason: DEPLOY_IN_PROGRESS, retry_after_secs: Some(5) }
            }
            PipelineError::Conflict { reason, .. } => ErrorClass::Conflict { reason, retry_after_secs: None },
            PipelineError::NoHost | PipelineError::HostUnavailable(_) => {
                ErrorClass::Unavailable { retry_after_secs: 10 }
            }
            // The repository's source did not answer (moved, offline): worth a retry, and
            // the caller is told git's own words rather than an opaque internal error.
            PipelineError::Git(_) => ErrorClass::Unavailable { retry_after_secs: 30 },
            PipelineError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => ErrorClass::of_sqlite(e.extended_code),
            PipelineError::Docker(_) | PipelineError::Sqlite(_) | PipelineError::Io(_) => ErrorClass::Internal,
        }
    }
}
