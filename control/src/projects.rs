//! Organisations and projects: creation, listing and key look-up.

use crate::keys::{generate_key, KeyKind};
use crate::{migrations, ControlError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

/// A project as the rest of Leanloop sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: i64,
    pub organisation_id: i64,
    pub name: String,
    pub write_key: String,
    pub read_key: String,
    /// Secret: the pipeline API's key.
    pub deploy_key: String,
    /// Keep client IP addresses whole instead of anonymised.
    pub store_full_ip: bool,
}

/// The control-plane database. Cheap to share behind an `Arc`; calls are short
/// and serialised on one connection.
pub struct ControlPlane {
    conn: Mutex<Connection>,
}

const DEFAULT_ORGANISATION: &str = "default";
const PROJECT_COLUMNS: &str = "id, organisation_id, name, write_key, read_key, store_full_ip, deploy_key";

impl ControlPlane {
    /// Opens (creating if needed) `control.sqlite` at `path` and migrates it.
    pub fn open(path: &Path) -> Result<ControlPlane, ControlError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut conn)?;
        Ok(ControlPlane { conn: Mutex::new(conn) })
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a project in the default organisation with fresh keys.
    pub fn create_project(&self, name: &str) -> Result<Project, ControlError> {
        let name = name.trim();
        // Control characters would break the listing's one line per project;
        // invisible and direction-changing ones let a name pass for another.
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(|c| c.is_control() || deceptive(c)) {
            return Err(ControlError::InvalidName);
        }
        let now = chrono::Utc::now().to_rfc3339();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO organisations (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![DEFAULT_ORGANISATION, now],
        )?;
        let organisation_id: i64 =
            tx.query_row("SELECT id FROM organisations WHERE name = ?1", [DEFAULT_ORGANISATION], |row| row.get(0))?;
        let write_key = generate_key(KeyKind::Write);
        let read_key = generate_key(KeyKind::Read);
        let deploy_key = generate_key(KeyKind::Deploy);
        tx.execute(
            "INSERT INTO projects (organisation_id, name, write_key, read_key, deploy_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![organisation_id, name, write_key, read_key, deploy_key, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Project {
            id,
            organisation_id,
            name: name.to_owned(),
            write_key,
            read_key,
            deploy_key,
            store_full_ip: false,
        })
    }

    pub fn projects(&self) -> Result<Vec<Project>, ControlError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"))?;
        let rows = stmt.query_map([], project_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn project(&self, id: i64) -> Result<Option<Project>, ControlError> {
        self.find("id = ?1", rusqlite::types::Value::Integer(id))
    }

    /// The project a key belongs to, with the kind the key was issued as.
    pub fn project_by_key(&self, key: &str) -> Result<Option<(Project, KeyKind)>, ControlError> {
        let kind = match KeyKind::of(key) {
            Some(kind) => kind,
            None => return Ok(None),
        };
        let column = match kind {
            KeyKind::Write => "write_key = ?1",
            KeyKind::Read => "read_key = ?1",
            KeyKind::Deploy => "deploy_key = ?1",
        };
        Ok(self.find(column, rusqlite::types::Value::Text(key.to_owned()))?.map(|p| (p, kind)))
    }

    /// Replaces one of a project's keys with a new one, which it returns;
    /// the old key stops working at once here, and in running servers once
    /// their cached look-up of it expires.
    pub fn rotate_key(&self, id: i64, kind: KeyKind) -> Result<String, ControlError> {
        let column = match kind {
            KeyKind::Write => "write_key",
            KeyKind::Read => "read_key",
            KeyKind::Deploy => "deploy_key",
        };
        let key = generate_key(kind);
        let changed =
            self.conn().execute(&format!("UPDATE projects SET {column} = ?1 WHERE id = ?2"), params![key, id])?;
        if changed == 0 {
            return Err(ControlError::NoSuchProject(id));
        }
        Ok(key)
    }

    pub fn set_store_full_ip(&self, id: i64, on: bool) -> Result<(), ControlError> {
        let changed = self.conn().execute("UPDATE projects SET store_full_ip = ?1 WHERE id = ?2", params![on, id])?;
        if changed == 0 {
            return Err(ControlError::NoSuchProject(id));
        }
        Ok(())
    }

    fn find(&self, condition: &str, value: rusqlite::types::Value) -> Result<Option<Project>, ControlError> {
        let conn = self.conn();
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE {condition}");
        Ok(conn.query_row(&sql, [value], project_from_row).optional()?)
    }
}

fn project_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: row.get(0)?,
        organisation_id: row.get(1)?,
        name: row.get(2)?,
        write_key: row.get(3)?,
        read_key: row.get(4)?,
        store_full_ip: row.get(5)?,
        deploy_key: row.get(6)?,
    })
}

/// Characters that change how the text around them reads without showing
/// themselves: bidirectional overrides, embeddings and isolates (the
/// "Trojan Source" set), direction marks, zero-width characters, the
/// Unicode line and paragraph separators, and the other invisible ones a
/// name could be made of or hide in (fillers, blanks, soft hyphens, tags,
/// interlinear annotation). Variation selectors stay: emoji need them.
fn deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_made_before_deploy_keys_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite");
        {
            // A database as the first schema version left it, with two projects.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(migrations::STEPS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO organisations (id, name, created_at) VALUES (1, 'default', 'then')", []).unwrap();
            for (name, w, r) in [("Old", "llw_a", "llr_a"), ("Older", "llw_b", "llr_b")] {
                conn.execute(
                    "INSERT INTO projects (organisation_id, name, write_key, read_key, created_at) VALUES (1, ?1, ?2, ?3, 'then')",
                    params![name, w, r],
                )
                .unwrap();
            }
        }
        let cp = ControlPlane::open(&path).unwrap();
        let projects = cp.projects().unwrap();
        assert_eq!(projects.len(), 2);
        assert_ne!(projects[0].deploy_key, projects[1].deploy_key);
        for p in &projects {
            assert!(p.deploy_key.starts_with("lld_") && p.deploy_key.len() == 36, "{}", p.deploy_key);
            assert_eq!(cp.project_by_key(&p.deploy_key).unwrap(), Some((p.clone(), KeyKind::Deploy)));
        }
    }

    #[test]
    fn creates_finds_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite");
        let cp = ControlPlane::open(&path).unwrap();
        let a = cp.create_project("Shop").unwrap();
        let b = cp.create_project("Blog").unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(cp.project_by_key(&a.write_key).unwrap(), Some((a.clone(), KeyKind::Write)));
        assert_eq!(cp.project_by_key(&b.read_key).unwrap(), Some((b.clone(), KeyKind::Read)));
        assert_eq!(cp.project_by_key(&b.deploy_key).unwrap(), Some((b.clone(), KeyKind::Deploy)));
        assert_eq!(cp.project_by_key("llw_nope").unwrap(), None);
        assert!(matches!(cp.create_project("  "), Err(ControlError::InvalidName)));
        for disguised in [
            "\u{202E}gnp.exe",
            "Sh\u{200B}op",
            "a\u{2028}b",
            "\u{2066}x\u{2069}",
            "\u{FEFF}Blog",
            "\u{3164}",
            "\u{2800}",
            "so\u{00AD}ft",
            "tag\u{E0041}",
        ] {
            assert!(matches!(cp.create_project(disguised), Err(ControlError::InvalidName)), "{disguised:?}");
        }
        assert!(cp.create_project("Café – 日本 🚀").is_ok(), "letters, dashes and emoji of any script are names");
        drop(cp);
        let cp = ControlPlane::open(&path).unwrap();
        assert_eq!(cp.projects().unwrap()[..2], [a, b]);
    }

    #[test]
    fn a_rotated_key_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::open(&dir.path().join("control.sqlite")).unwrap();
        let p = cp.create_project("Shop").unwrap();
        for (kind, old) in
            [(KeyKind::Write, &p.write_key), (KeyKind::Read, &p.read_key), (KeyKind::Deploy, &p.deploy_key)]
        {
            let new = cp.rotate_key(p.id, kind).unwrap();
            assert_eq!(KeyKind::of(&new), Some(kind));
            assert_eq!(cp.project_by_key(old).unwrap(), None, "{old} still works");
            assert_eq!(cp.project_by_key(&new).unwrap().map(|(q, k)| (q.id, k)), Some((p.id, kind)));
        }
        assert!(matches!(cp.rotate_key(p.id + 1, KeyKind::Write), Err(ControlError::NoSuchProject(_))));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(ControlPlane::open(&path), Err(ControlError::SchemaTooNew { found: 99, .. })));
    }
}
