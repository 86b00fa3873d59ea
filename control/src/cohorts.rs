//! Cohorts as saved: a name and a definition per project. The definition is
//! opaque JSON here; analytics owns its meaning and checks it before saving.

use crate::{ControlError, ControlPlane};
use rusqlite::{params, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCohort {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    /// JSON text.
    pub definition: String,
    /// 1 when created, one more after each edit.
    pub revision: i64,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "id, project_id, name, definition, revision, created_at, updated_at";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SavedCohort> {
    Ok(SavedCohort {
        id: row.get(0)?,
        project_id: row.get(1)?,
        name: row.get(2)?,
        definition: row.get(3)?,
        revision: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl ControlPlane {
    pub fn create_cohort(&self, project_id: i64, name: &str, definition: &str) -> Result<SavedCohort, ControlError> {
        let now = now();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO cohorts (project_id, name, definition, revision, created_at, updated_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?4)",
            params![project_id, name, definition, now],
        )?;
        let id = conn.last_insert_rowid();
        Ok(SavedCohort {
            id,
            project_id,
            name: name.to_owned(),
            definition: definition.to_owned(),
            revision: 1,
            created_at: now.clone(),
            updated_at: now,
        })
    }

    /// The project's cohorts, oldest first.
    pub fn cohorts(&self, project_id: i64) -> Result<Vec<SavedCohort>, ControlError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM cohorts WHERE project_id = ?1 ORDER BY id"))?;
        let rows = stmt.query_map([project_id], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn cohort(&self, project_id: i64, id: i64) -> Result<Option<SavedCohort>, ControlError> {
        let conn = self.conn();
        let sql = format!("SELECT {COLUMNS} FROM cohorts WHERE project_id = ?1 AND id = ?2");
        Ok(conn.query_row(&sql, params![project_id, id], from_row).optional()?)
    }

    /// Replaces a cohort's name and definition; `None` when there is no such
    /// cohort in the project.
    pub fn update_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        definition: &str,
    ) -> Result<Option<SavedCohort>, ControlError> {
        let changed = self.conn().execute(
            "UPDATE cohorts SET name = ?3, definition = ?4, revision = revision + 1, updated_at = ?5
             WHERE project_id = ?1 AND id = ?2",
            params![project_id, id, name, definition, now()],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        self.cohort(project_id, id)
    }

    /// Whether there was such a cohort to delete.
    pub fn delete_cohort(&self, project_id: i64, id: i64) -> Result<bool, ControlError> {
        let changed =
            self.conn().execute("DELETE FROM cohorts WHERE project_id = ?1 AND id = ?2", params![project_id, id])?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohorts_belong_to_their_project_and_count_edits() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("control.sqlite")).unwrap();
        let (a, b) = (cp.create_project("A").unwrap(), cp.create_project("B").unwrap());
        let pro = cp.create_cohort(a.id, "Pro", r#"{"filters":[]}"#).unwrap();
        cp.create_cohort(b.id, "Other", "{}").unwrap();
        assert_eq!(cp.cohorts(a.id).unwrap(), vec![pro.clone()]);
        assert_eq!(cp.cohort(b.id, pro.id).unwrap(), None, "another project's cohort is not visible");
        assert_eq!(cp.update_cohort(b.id, pro.id, "x", "{}").unwrap(), None);
        let edited = cp.update_cohort(a.id, pro.id, "Pro users", r#"{"match":"any"}"#).unwrap().unwrap();
        assert_eq!(
            (edited.revision, edited.name.as_str(), edited.created_at.as_str()),
            (2, "Pro users", pro.created_at.as_str())
        );
        assert!(!cp.delete_cohort(b.id, pro.id).unwrap());
        assert!(cp.delete_cohort(a.id, pro.id).unwrap());
        assert_eq!(cp.cohort(a.id, pro.id).unwrap(), None);
    }

    #[test]
    fn a_deleted_cohorts_id_is_never_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("control.sqlite")).unwrap();
        let a = cp.create_project("A").unwrap();
        let first = cp.create_cohort(a.id, "One", "{}").unwrap();
        let newest = cp.create_cohort(a.id, "Two", "{}").unwrap();
        assert!(cp.delete_cohort(a.id, newest.id).unwrap());
        let next = cp.create_cohort(a.id, "Three", "{}").unwrap();
        assert!(next.id > newest.id, "{} after {} and {}", next.id, first.id, newest.id);
    }

    #[test]
    fn cohorts_saved_before_ids_were_kept_stay_and_new_ids_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite");
        {
            // A database as schema version 3 left it: a project with two cohorts.
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for step in &crate::migrations::STEPS[..3] {
                tx.execute_batch(step).unwrap();
            }
            tx.execute_batch(
                "INSERT INTO organisations VALUES (1, 'default', 'then');
                 INSERT INTO projects (id, organisation_id, name, write_key, read_key, created_at, deploy_key)
                 VALUES (1, 1, 'A', 'llw_a', 'llr_a', 'then', 'lld_a');
                 INSERT INTO cohorts VALUES (4, 1, 'Four', '{}', 2, 'then', 'later');
                 INSERT INTO cohorts VALUES (7, 1, 'Seven', '{}', 2, 'then', 'later');",
            )
            .unwrap();
            tx.pragma_update(None, "user_version", 3).unwrap();
            tx.commit().unwrap();
        }
        let cp = ControlPlane::open(&path).unwrap();
        let kept: Vec<(i64, String, i64)> =
            cp.cohorts(1).unwrap().into_iter().map(|c| (c.id, c.name, c.revision)).collect();
        assert_eq!(kept, [(4, "Four".to_owned(), 2), (7, "Seven".to_owned(), 2)]);
        assert!(cp.delete_cohort(1, 7).unwrap());
        assert_eq!(cp.create_cohort(1, "Next", "{}").unwrap().id, 8);
    }
}
