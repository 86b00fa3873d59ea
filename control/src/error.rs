//! Errors of the control plane.

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control-plane database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("control-plane database is at schema version {found}, newer than this build knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("project name must be 1 to 200 characters, none of them control characters (tabs, line breaks) or invisible or direction-changing ones (zero-width, bidirectional overrides)")]
    InvalidName,
    #[error("project {0} does not exist")]
    NoSuchProject(i64),
}

impl leanloop_core::Classify for ControlError {
    fn class(&self) -> leanloop_core::ErrorClass {
        use leanloop_core::ErrorClass;
        match self {
            ControlError::InvalidName => ErrorClass::BadRequest { field: Some("name".into()) },
            ControlError::NoSuchProject(_) => ErrorClass::NotFound,
            ControlError::Sqlite(_) | ControlError::SchemaTooNew { .. } => ErrorClass::Internal,
        }
    }
}
