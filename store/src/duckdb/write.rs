//! Writing a batch: drop already-stored uuids, insert the rest into
//! `events` through DuckDB's parallel scan of them (`staged.rs`), merge
//! people, and commit — all in one transaction, which a streamed write
//! fills a chunk at a time.

use super::dedup::DuckKeys;
use super::staged::Staged;
use super::{schema, sessions};
use crate::seen::{SeenKeys, MIN_CAPACITY};
use crate::{Chunk, StoreError, WriteOutcome};
use ::duckdb::{params, Connection};
use leanloop_core::{Event, UserUpdate};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Writer {
    conn: Connection,
    pub(super) seen: SeenKeys,
    staged: Staged,
    /// When session parts were last compacted (`sessions.rs`), and whether
    /// writes came since.
    compacted_at: Instant,
    dirty: bool,
}

impl Writer {
    pub fn new(conn: Connection) -> Result<Writer, StoreError> {
        // On this connection alone, inserts keep their order, which makes
        // DuckDB append each chunk straight into the transaction's storage
        // on one thread. Its parallel insert gives each thread a collection
        // of its own, copied again into that storage at the end of every
        // statement, and spins while the other thread finishes: the serial
        // insert stored 13 % more events per second at 14 % less CPU per
        // event (`leanloop bench ingest`, README).
        conn.execute_batch(&order_preserved(true))?;
        let seen = SeenKeys::load(&DuckKeys(&conn), MIN_CAPACITY)?;
        let staged = Staged::register(&conn)?;
        let mut writer = Writer { conn, seen, staged, compacted_at: Instant::now(), dirty: true };
        // What earlier runs (or the migration) left uncompacted; should it
        // fail, the thread tries again when due.
        writer.compact_sessions_logged();
        Ok(writer)
    }

    pub fn write(&mut self, events: &[Event], users: &[UserUpdate]) -> Result<WriteOutcome, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let outcome = append(&tx, &mut self.seen, &self.staged, Cow::Borrowed(events), users, false)?;
        tx.commit()?;
        self.dirty = true;
        Ok(outcome)
    }

    /// Compacts session parts when writes came since the last compaction
    /// and it was [`sessions::COMPACT_EVERY`] ago.
    pub fn compact_sessions_when_due(&mut self) {
        if self.dirty && self.compacted_at.elapsed() >= sessions::COMPACT_EVERY {
            self.compact_sessions_logged();
        }
    }

    /// A failure leaves the parts as written (answers stay exact) for the
    /// next attempt, so it is logged, not returned.
    fn compact_sessions_logged(&mut self) {
        if let Err(err) = self.compact_sessions() {
            tracing::warn!(error = %err, "session parts not compacted; retried later");
        }
    }

    /// Compacts session parts now, in transactions of its own.
    pub fn compact_sessions(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        self.compacted_at = started;
        let parts = sessions::compact(&self.conn, sessions::STEP_PARTS)?;
        self.dirty = false;
        tracing::debug!(parts, ms = started.elapsed().as_millis() as u64, "session parts compacted");
        Ok(())
    }

    /// Appends every chunk in one transaction, a chunk at a time. Once the
    /// transaction holds a full row group, DuckDB writes it straight to the
    /// database file, compressed, and logs only where it is: a large write
    /// is stored once instead of logged row by row and then checkpointed.
    pub fn write_stream(&mut self, chunks: &mut dyn Iterator<Item = Chunk>) -> Result<WriteOutcome, StoreError> {
        let started = Instant::now();
        let tx = self.conn.unchecked_transaction()?;
        let mut outcome = WriteOutcome::default();
        for chunk in chunks {
            let part =
                append(&tx, &mut self.seen, &self.staged, Cow::Owned(chunk.events), &chunk.users, chunk.replayed)?;
            outcome.inserted += part.inserted;
            outcome.duplicates += part.duplicates;
        }
        tx.commit()?;
        self.dirty = true;
        tracing::debug!(
            inserted = outcome.inserted,
            duplicates = outcome.duplicates,
            total_ms = started.elapsed().as_millis() as u64,
            "batch written"
        );
        Ok(outcome)
    }

    pub fn delete_person(&mut self, project_id: i64, user_id: &str) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        // Their events are those whose person they are, as insights stitch
        // them: an event's id (user id, else anonymous id) linked to them,
        // or theirs unless it is linked to someone else. Another user's
        // events on a device they shared stay. Their session parts go by
        // the same condition, before the links it reads are deleted; their
        // recent links with their identity links (those of others stay).
        let of_person = "WHERE project_id = ? AND (coalesce(user_id, anonymous_id) IN
                 (SELECT anonymous_id FROM identities WHERE project_id = ? AND user_id = ?)
             OR (coalesce(user_id, anonymous_id) = ? AND NOT EXISTS (SELECT 1 FROM identities
                 WHERE project_id = ? AND anonymous_id = ?)))";
        let of_person_params = params![project_id, project_id, user_id, user_id, project_id, user_id];
        let deleted = tx.execute(&format!("DELETE FROM events {of_person}"), of_person_params)?;
        tx.execute(&format!("DELETE FROM session_parts {of_person}"), of_person_params)?;
        // The people linked to them (an anonymous visitor given traits) are
        // theirs too, and so are such people's cohort memberships.
        for table in ["users", "cohort_members"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE project_id = ? AND (user_id = ? OR user_id IN
                         (SELECT anonymous_id FROM identities WHERE project_id = ? AND user_id = ?))"
                ),
                params![project_id, user_id, project_id, user_id],
            )?;
        }
        for table in ["identities", "recent_links"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE project_id = ? AND user_id = ?"),
                params![project_id, user_id],
            )?;
        }
        tx.commit()?;
        Ok(deleted as u64)
    }

    pub fn write_cohort(
        &mut self,
        project_id: i64,
        cohort_id: i64,
        version: i64,
        user_ids: &[String],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut appender = tx.appender("cohort_members")?;
            for user_id in user_ids {
                appender.append_row(params![project_id, cohort_id, version, user_id])?;
            }
            appender.flush()?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn drop_cohort_versions(&mut self, project_id: i64, cohort_id: i64, below: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM cohort_members WHERE project_id = ? AND cohort_id = ? AND version < ?",
            params![project_id, cohort_id, below],
        )?;
        Ok(())
    }

    /// Loads newline-delimited JSON rows with DuckDB's own `read_json`. No
    /// deduplication against the file's own rows: for trusted exports and
    /// for measuring DuckDB's ceiling. Afterwards (not in the load's own
    /// transaction, so the load is timed as DuckDB alone does it) the session
    /// parts are folded again and stored keys registered, so later writes
    /// still deduplicate against them. Returns the rows and the time
    /// `read_json` took to store them.
    pub fn load_ndjson_unchecked(&mut self, path: &std::path::Path) -> Result<(usize, Duration), StoreError> {
        let columns = schema::flat_row_columns()
            .iter()
            .map(|(name, ty)| format!("'{name}': '{ty}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // Table function arguments cannot be bound, so the path is quoted.
        let path = path.to_string_lossy().replace('\'', "''");
        let sql = format!(
            "INSERT INTO events SELECT {} FROM read_json('{path}', format = 'newline_delimited', columns = {{{columns}}})",
            schema::flat_row_projection()
        );
        // DuckDB's own load runs as it would anywhere: in parallel.
        self.conn.execute_batch(&order_preserved(false))?;
        let started = Instant::now();
        let loaded = self.conn.execute(&sql, []);
        let took = started.elapsed();
        self.conn.execute_batch(&order_preserved(true))?;
        let loaded = loaded?;
        sessions::rebuild(&self.conn)?;
        self.seen = SeenKeys::load(&DuckKeys(&self.conn), MIN_CAPACITY)?;
        Ok((loaded, took))
    }
}

/// The statement that sets, for this connection only, whether inserts keep
/// their order (see [`Writer::new`]).
fn order_preserved(on: bool) -> String {
    format!("SET SESSION preserve_insertion_order = {on}")
}

/// Appends the events not stored yet and merges people, within the open
/// transaction on `conn`. Keys are recorded as they are appended, so later
/// chunks of the same transaction look up their retries; should it roll
/// back, they are only false positives (looked up, not found).
fn append(
    conn: &Connection,
    seen: &mut SeenKeys,
    staged: &Staged,
    events: Cow<'_, [Event]>,
    users: &[UserUpdate],
    check_all: bool,
) -> Result<WriteOutcome, StoreError> {
    let fresh = seen.new_events(&DuckKeys(conn), &events, check_all)?;
    let received = events.len();
    let rows = take_fresh(events, &fresh);
    if !rows.is_empty() {
        let rows = Arc::new(rows);
        staged.insert(conn, rows.clone())?;
        sessions::append(conn, &rows.iter().collect::<Vec<_>>())?;
        // DuckDB's filter grows rather than being rebuilt: nothing to keep.
        seen.record(&DuckKeys(conn), rows.iter(), &Default::default())?;
    }
    write_users(conn, users)?;
    Ok(WriteOutcome { inserted: fresh.len(), duplicates: received - fresh.len() })
}

/// The events at `fresh` (ascending indices): moved out when owned, else cloned.
fn take_fresh(events: Cow<'_, [Event]>, fresh: &[usize]) -> Vec<Event> {
    match events {
        Cow::Borrowed(events) => fresh.iter().map(|&i| events[i].clone()).collect(),
        Cow::Owned(events) if fresh.len() == events.len() => events,
        Cow::Owned(events) => {
            let mut keep = fresh.iter().copied().peekable();
            events.into_iter().enumerate().filter(|&(i, _)| keep.next_if_eq(&i).is_some()).map(|(_, e)| e).collect()
        }
    }
}

/// The user each updated id was linked to before this batch, where that
/// user is linked to no one (links name a final id; a loop an earlier
/// version stored is left alone).
fn owners(conn: &Connection, users: &[UserUpdate]) -> Result<crate::traits::Owners, StoreError> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS staged_ids (project_id BIGINT, id VARCHAR); DELETE FROM staged_ids;",
    )?;
    let mut stage = conn.appender_to_catalog_and_db("staged_ids", "temp", "main")?;
    let ids: HashSet<(i64, &str)> = users.iter().map(|u| (u.project_id, u.user_id.as_str())).collect();
    for (project, id) in &ids {
        stage.append_row(params![project, id])?;
    }
    stage.flush()?;
    drop(stage);
    let mut query = conn.prepare(
        "SELECT s.project_id, s.id, i.user_id FROM staged_ids s
         JOIN identities i ON i.project_id = s.project_id AND i.anonymous_id = s.id
         WHERE i.user_id <> s.id
             AND NOT EXISTS (SELECT 1 FROM identities j WHERE j.project_id = i.project_id AND j.anonymous_id = i.user_id)",
    )?;
    let mut rows = query.query([])?;
    let mut owners = crate::traits::Owners::new();
    while let Some(row) = rows.next()? {
        owners.insert((row.get(0)?, row.get(1)?), row.get(2)?);
    }
    Ok(owners)
}

/// Upserts traits (see [`crate::traits`]) and first links of anonymous ids.
fn write_users(conn: &Connection, users: &[UserUpdate]) -> Result<(), StoreError> {
    if users.is_empty() {
        return Ok(());
    }
    let owners = owners(conn, users)?;
    // One row per person per statement: their updates in this batch together.
    let mut people: HashMap<(i64, &str), (Vec<&UserUpdate>, i64, i64)> = HashMap::new();
    let mut order = Vec::new();
    for update in users {
        let key = crate::traits::person_of(update, &owners);
        let person = people.entry(key).or_insert_with(|| {
            order.push(key);
            (Vec::new(), update.seen_at_ms, update.seen_at_ms)
        });
        person.0.push(update);
        person.1 = person.1.min(update.seen_at_ms);
        person.2 = person.2.max(update.seen_at_ms);
    }
    // Staged in temporary tables, then merged with one statement each: a
    // statement per person costs milliseconds on the primary key index.
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS staged_users (project_id BIGINT, user_id VARCHAR, traits VARCHAR,
             first_seen BIGINT, last_seen BIGINT);
         CREATE TEMP TABLE IF NOT EXISTS staged_links (project_id BIGINT, anonymous_id VARCHAR, user_id VARCHAR,
             first_seen BIGINT);
         DELETE FROM staged_users; DELETE FROM staged_links;",
    )?;
    // Ids linked in this batch bring their traits to their user, on their
    // first link only (see `traits::merge_linked`).
    let links = crate::traits::first_links(users);
    // The people's stored traits, and whether a linked id was linked
    // before, found through their staged keys.
    let mut stage = conn.appender_to_catalog_and_db("staged_users", "temp", "main")?;
    // Both ends of each link: its user may be a person other than the one
    // its update changes (one it was linked to before), and a link from
    // that person back would make a loop.
    let linked_keys: HashSet<(i64, &str)> = links
        .iter()
        .flat_map(|&(project, from, to, _)| [(project, from), (project, to)])
        .filter(|k| !people.contains_key(k))
        .collect();
    for key in order.iter().copied().chain(linked_keys) {
        stage.append_row(params![key.0, key.1, None::<String>, None::<i64>, None::<i64>])?;
    }
    stage.flush()?;
    drop(stage);
    let mut stored: HashMap<(i64, String), String> = HashMap::new();
    // Stored links of the staged ids, per project: whether a linked id was
    // linked before, and where a new link's user goes on (`links.rs`).
    let mut stored_links: HashMap<i64, HashMap<String, String>> = HashMap::new();
    {
        let mut query = conn.prepare(
            "SELECT s.project_id, s.user_id, u.traits, i.user_id FROM staged_users s
             LEFT JOIN users u ON u.project_id = s.project_id AND u.user_id = s.user_id
             LEFT JOIN identities i ON i.project_id = s.project_id AND i.anonymous_id = s.user_id",
        )?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            let (project, id): (i64, String) = (row.get(0)?, row.get(1)?);
            if let Some(linked_to) = row.get::<_, Option<String>>(3)? {
                stored_links.entry(project).or_default().insert(id.clone(), linked_to);
            }
            if let Some(traits) = row.get::<_, Option<String>>(2)? {
                stored.insert((project, id), traits);
            }
        }
    }
    let no_links = HashMap::new();
    let stored_links_of = |project: i64| stored_links.get(&project).unwrap_or(&no_links);
    // The first link made wins: only ids not linked before link now.
    let new_links: Vec<(i64, &str, &str, i64)> =
        links.iter().copied().filter(|&(project, from, ..)| !stored_links_of(project).contains_key(from)).collect();
    let mut joining: HashMap<(i64, &str), Vec<&str>> = HashMap::new();
    for &(project, from, to, _) in &new_links {
        joining.entry(crate::traits::owner_of(project, to, &owners)).or_default().push(from);
    }
    conn.execute_batch("DELETE FROM staged_users")?;
    let mut stage = conn.appender_to_catalog_and_db("staged_users", "temp", "main")?;
    let mut refused = 0;
    for key in &order {
        let (updates, first, last) = &people[key];
        let mut traits =
            stored.get(&(key.0, key.1.to_owned())).map_or_else(Default::default, |t| crate::traits::object(t));
        for from in joining.get(key).into_iter().flatten() {
            let own = people.get(&(key.0, *from)).map_or(&[][..], |p| &p.0[..]);
            crate::traits::merge_linked(&mut traits, stored.get(&(key.0, (*from).to_owned())).map(String::as_str), own);
        }
        refused += crate::traits::apply(&mut traits, updates);
        stage.append_row(params![key.0, key.1, serde_json::Value::Object(traits).to_string(), first, last])?;
    }
    stage.flush()?;
    drop(stage);
    crate::traits::warn_refused(refused);
    conn.execute_batch(
        "UPDATE users SET
             traits = s.traits,
             first_seen = least(users.first_seen, epoch_ms(s.first_seen)),
             last_seen = greatest(users.last_seen, epoch_ms(s.last_seen))
         FROM staged_users s WHERE users.project_id = s.project_id AND users.user_id = s.user_id;
         INSERT INTO users SELECT s.project_id, s.user_id, s.traits, epoch_ms(s.first_seen), epoch_ms(s.last_seen)
         FROM staged_users s ANTI JOIN users u ON u.project_id = s.project_id AND u.user_id = s.user_id;",
    )?;
    if new_links.is_empty() {
        return Ok(());
    }
    // Links name a final id (see `links.rs`): where each new one goes.
    let mut link = conn.appender_to_catalog_and_db("staged_links", "temp", "main")?;
    let projects: HashSet<i64> = new_links.iter().map(|l| l.0).collect();
    for project in projects {
        let of_project = || new_links.iter().filter(move |l| l.0 == project);
        let new: Vec<(&str, &str)> = of_project().map(|&(_, from, to, _)| (from, to)).collect();
        let made = crate::links::resolve(&new, stored_links_of(project));
        for &(_, from, _, seen) in of_project() {
            if let Some(end) = made.get(from) {
                link.append_row(params![project, from, end, seen])?;
            }
        }
    }
    link.flush()?;
    drop(link);
    // Links to an id linked now move along, those waiting for the session
    // parts (`sessions.rs`) too.
    conn.execute_batch(
        "INSERT INTO identities SELECT project_id, anonymous_id, user_id, epoch_ms(first_seen) FROM staged_links;
         INSERT INTO recent_links SELECT project_id, anonymous_id, user_id FROM staged_links;
         UPDATE identities SET user_id = s.user_id FROM staged_links s
             WHERE identities.project_id = s.project_id AND identities.user_id = s.anonymous_id
                 AND identities.anonymous_id <> s.user_id;
         UPDATE recent_links SET user_id = s.user_id FROM staged_links s
             WHERE recent_links.project_id = s.project_id AND recent_links.user_id = s.anonymous_id
                 AND recent_links.anonymous_id <> s.user_id;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use leanloop_core::EventKind;
    use uuid::Uuid;

    fn event(n: u128) -> Event {
        let mut event = Event::new(Uuid::from_u128(n), 1, EventKind::Track, "e", 1_700_000_000_000 + n as i64);
        event.anonymous_id = Some(format!("anon-{}", n % 1000));
        event.properties = format!(r#"{{"n":{n},"text":"{}"}}"#, "x".repeat(200));
        event
    }

    fn chunk(range: std::ops::Range<u128>) -> Chunk {
        Chunk { events: range.map(event).collect(), users: Vec::new(), replayed: false }
    }

    fn wal_bytes(dir: &std::path::Path) -> u64 {
        std::fs::metadata(dir.join("events.duckdb.wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn a_streamed_write_dedups_across_its_chunks_and_files_full_row_groups_directly() {
        let dir = tempfile::tempdir().unwrap();
        drop(super::super::DuckDbStore::open(&dir.path().join("events.duckdb"), &Default::default()).unwrap());
        let conn = Connection::open(dir.path().join("events.duckdb")).unwrap();
        // No automatic checkpoint may empty the WAL behind the test's back.
        conn.execute_batch("SET checkpoint_threshold = '10GB'").unwrap();
        let mut writer = Writer::new(conn.try_clone().unwrap()).unwrap();

        // 150,000 events (more than a row group) in chunks, then a retry of
        // ten of them inside the same transaction.
        let rows = super::super::ROW_GROUP_ROWS as u128 + 27_120;
        let mut chunks = (0..rows).step_by(10_000).map(|s| chunk(s..(s + 10_000).min(rows))).chain([chunk(0..10)]);
        let outcome = writer.write_stream(&mut chunks).unwrap();
        assert_eq!((outcome.inserted, outcome.duplicates), (rows as usize, 10));
        let stored: i64 = conn.query_row("SELECT count(DISTINCT uuid) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, rows as i64);
        // Written to the file, not row by row to the WAL: the rows' text
        // alone is over 20 MB.
        let after_stream = wal_bytes(dir.path());
        assert!(after_stream < 2 << 20, "WAL holds {after_stream} bytes after a streamed write of {rows} rows");

        // The same number of rows in writes below a row group do go through
        // the WAL, which is what the streamed write avoids.
        for s in (rows..2 * rows).step_by(50_000) {
            let c = chunk(s..(s + 50_000).min(2 * rows));
            writer.write(&c.events, &[]).unwrap();
        }
        let after_small = wal_bytes(dir.path()) - after_stream;
        assert!(after_small > 20 << 20, "small writes logged only {after_small} bytes");
    }
}
