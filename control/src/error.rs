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
            ControlError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => ErrorClass::of_sqlite(e.extended_code),
            ControlError::Sqlite(_) | ControlError::SchemaTooNew { .. } => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ControlError;
    use leanloop_core::{Classify, ErrorClass};
    use rusqlite::{Connection, OpenFlags};

    #[test]
    fn a_database_that_cannot_be_written_for_now_is_a_503_and_a_bug_is_a_500() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite");
        drop(crate::ControlPlane::open(&path).unwrap());
        let read_only = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let refused = ControlError::from(read_only.execute("CREATE TABLE x (a)", []).unwrap_err());
        assert_eq!(refused.class(), ErrorClass::Unavailable { retry_after_secs: 5 }, "{refused}");
        let writable = Connection::open(&path).unwrap();
        let bad = ControlError::from(writable.execute("INSERT INTO no_such_table VALUES (1)", []).unwrap_err());
        assert_eq!(bad.class(), ErrorClass::Internal, "{bad}");
    }
}
