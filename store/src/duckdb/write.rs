//! Writing a batch: append to staging, then one deduplicating insert.

use super::schema;
use crate::{StoreError, WriteOutcome};
use ::duckdb::{params, Connection};
use leanloop_core::{Event, UserUpdate};
use std::collections::{HashMap, HashSet};

pub struct Writer {
    conn: Connection,
    insert_sql: String,
}

impl Writer {
    pub fn new(conn: Connection) -> Result<Writer, StoreError> {
        schema::create_staging(&conn)?;
        let insert_sql = format!(
            "INSERT OR IGNORE INTO events SELECT {} FROM staging",
            schema::staging_projection()
        );
        Ok(Writer { conn, insert_sql })
    }

    pub fn write(
        &mut self,
        events: &[Event],
        users: &[UserUpdate],
    ) -> Result<WriteOutcome, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute_batch("DELETE FROM staging")?;
        // DuckDB refuses one statement that inserts the same key twice, so
        // repeats inside the batch are dropped here, first occurrence wins.
        let mut seen = HashSet::with_capacity(events.len());
        let mut staged = 0usize;
        {
            let mut appender = tx.appender("staging")?;
            for event in events {
                if !seen.insert((event.project_id, event.uuid)) {
                    continue;
                }
                append(&mut appender, event)?;
                staged += 1;
            }
            appender.flush()?;
        }
        let inserted = if staged > 0 {
            tx.execute(&self.insert_sql, [])?
        } else {
            0
        };
        write_users(&tx, users)?;
        tx.commit()?;
        Ok(WriteOutcome {
            inserted,
            duplicates: events.len() - inserted,
        })
    }
}

fn append(appender: &mut ::duckdb::Appender<'_>, e: &Event) -> Result<(), StoreError> {
    let uuid = e.uuid.hyphenated().to_string();
    appender.append_row(params![
        e.project_id,
        uuid,
        e.kind.as_str(),
        e.name,
        e.timestamp_ms,
        e.received_at_ms,
        e.timestamp_clamped,
        e.anonymous_id,
        e.user_id,
        e.session_id,
        e.release,
        e.url,
        e.path,
        e.page_name,
        e.referrer,
        e.referrer_domain,
        e.utm_source,
        e.utm_medium,
        e.utm_campaign,
        e.utm_term,
        e.utm_content,
        e.browser,
        e.browser_version,
        e.os,
        e.device_type,
        e.country,
        e.ip,
        e.library,
        e.properties,
    ])?;
    Ok(())
}

/// Upserts traits (merged, later wins) and first links of anonymous ids.
fn write_users(conn: &Connection, users: &[UserUpdate]) -> Result<(), StoreError> {
    if users.is_empty() {
        return Ok(());
    }
    // One row per person per statement: fold repeated updates in this batch.
    let mut merged: HashMap<(i64, &str), (serde_json::Map<String, serde_json::Value>, i64, i64)> =
        HashMap::new();
    let mut order = Vec::new();
    for update in users {
        let key = (update.project_id, update.user_id.as_str());
        let entry = merged.entry(key).or_insert_with(|| {
            order.push(key);
            (serde_json::Map::new(), update.seen_at_ms, update.seen_at_ms)
        });
        if let Ok(serde_json::Value::Object(traits)) = serde_json::from_str(&update.traits) {
            entry.0.extend(traits);
        }
        entry.1 = entry.1.min(update.seen_at_ms);
        entry.2 = entry.2.max(update.seen_at_ms);
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO users VALUES (?, ?, ?, epoch_ms(?), epoch_ms(?))
         ON CONFLICT (project_id, user_id) DO UPDATE SET
            traits = CAST(json_merge_patch(users.traits, excluded.traits) AS VARCHAR),
            first_seen = least(users.first_seen, excluded.first_seen),
            last_seen = greatest(users.last_seen, excluded.last_seen)",
    )?;
    for key in &order {
        let (traits, first, last) = &merged[key];
        let traits = serde_json::Value::Object(traits.clone()).to_string();
        upsert.execute(params![key.0, key.1, traits, first, last])?;
    }
    let mut link =
        conn.prepare_cached("INSERT OR IGNORE INTO identities VALUES (?, ?, ?, epoch_ms(?))")?;
    let mut linked = HashSet::new();
    for update in users {
        if let Some(anonymous_id) = update.anonymous_id.as_deref() {
            if anonymous_id != update.user_id && linked.insert((update.project_id, anonymous_id)) {
                link.execute(params![
                    update.project_id,
                    anonymous_id,
                    update.user_id,
                    update.seen_at_ms
                ])?;
            }
        }
    }
    Ok(())
}

impl Writer {
    pub fn import_ndjson(&self, path: &std::path::Path) -> Result<usize, StoreError> {
        let columns = schema::staging_columns()
            .iter()
            .map(|(name, ty)| format!("'{name}': '{ty}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // Table function arguments cannot be bound, so the path is quoted.
        let path = path.to_string_lossy().replace('\'', "''");
        let sql = format!(
            "INSERT OR IGNORE INTO events SELECT {} FROM read_json('{path}', format = 'newline_delimited', columns = {{{columns}}})",
            schema::staging_projection()
        );
        Ok(self.conn.execute(&sql, [])?)
    }
}
