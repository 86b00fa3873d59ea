//! `session_parts`: page views folded per project, UTC hour, session id,
//! anonymous id and user id: a count, the first and the last (time, path).
//!
//! The web overview reads these instead of every page view (a few rows per
//! session instead of one per view). Folding is exact for any window cut at
//! whole hours: merging a session's parts gives the same count, length,
//! entry and exit page as its events, and the identity columns stitch people
//! as the events' do. Windows cut mid-hour read their edge hours from
//! `events`.
//!
//! A write folds the page views it stores into parts, in its transaction.
//! A session's views arrive over many writes, so parts are then compacted:
//! the hours that gained parts are folded again into one part per key, at
//! most every [`COMPACT_EVERY`], when the store opens (which also folds what
//! the migration backfilled, a part per stored view) and when asked
//! (`EventStore::settle`). Compacting also records, per part:
//! - `person_hash`: a 63-bit hash of its person as stitched then (as the
//!   analytics' `Source` stitches: the link of its user id, else of its
//!   anonymous id, else that id itself), and `unlinked` when that id had no
//!   link. A person changes only when their id is linked on (links always
//!   name a final id: a new link moves the links to its id along), so a
//!   part's person follows the new links of its person's id:
//!   links made since the last compaction wait in `recent_links`, and each
//!   compaction applies and clears them. The overview counts visitors from
//!   these hashes (with the recent links), not by joining every part to the
//!   links.
//! - `whole`: the part is its session's only one, so its figures are the
//!   session's and need no grouping (unless parts came since: the overview
//!   checks for those).
//!
//! Writes wait while a compaction runs (it holds the writer). On the bench
//! store, compacting the 5.3M parts a migration backfills for 10M events
//! took 5.4 s at a 256 MB memory limit and 18 s at the default 128 MB of
//! ingest (in steps that fit it); every 5 minutes it only folds the hours
//! written since.
//!
//! Deleting a person deletes their parts by the same condition as their
//! events, and their recent links with their identity links.
//!
//! `unlinked` (whether a part's id had no link when compacted) is kept up
//! to date but no longer read: links made since move parts by their
//! person's hash, linked or not.

use crate::StoreError;
use ::duckdb::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use ::duckdb::arrow::record_batch::RecordBatch;
use ::duckdb::Connection;
use leanloop_core::Event;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

/// How often, at most, written parts are compacted: the parts of a few
/// minutes of traffic stay as written meanwhile (still exact, only more rows).
pub const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// A part's key: project, hour, session, anonymous id, user id.
type Key<'a> = (i64, i64, Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// A part's page views: count, first and last (time, path); an unset path is
/// empty, as `pageview_parts` holds it.
struct Part<'a> {
    pageviews: i64,
    first: (i64, &'a str),
    last: (i64, &'a str),
}

/// Appends the parts of the page views among `stored` (events just written).
pub fn append(conn: &Connection, stored: &[&Event]) -> Result<(), StoreError> {
    let mut parts: HashMap<Key, Part> = HashMap::new();
    for e in stored.iter().filter(|e| e.name == "$pageview") {
        let hour = e.timestamp_ms - e.timestamp_ms.rem_euclid(HOUR_MS);
        let key = (e.project_id, hour, e.session_id.as_deref(), e.anonymous_id.as_deref(), e.user_id.as_deref());
        let at = (e.timestamp_ms, e.path.as_deref().unwrap_or(""));
        parts
            .entry(key)
            .and_modify(|p| {
                p.pageviews += 1;
                p.first = p.first.min(at);
                p.last = p.last.max(at);
            })
            .or_insert(Part { pageviews: 1, first: at, last: at });
    }
    if parts.is_empty() {
        return Ok(());
    }
    let (keys, parts): (Vec<Key>, Vec<Part>) = parts.into_iter().unzip();
    let ints = |values: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(values)) };
    let texts = |values: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
    let batch = RecordBatch::try_from_iter([
        ("project_id", ints(keys.iter().map(|k| k.0).collect())),
        ("hour", ints(keys.iter().map(|k| k.1).collect())),
        ("session_id", texts(keys.iter().map(|k| k.2).collect())),
        ("anonymous_id", texts(keys.iter().map(|k| k.3).collect())),
        ("user_id", texts(keys.iter().map(|k| k.4).collect())),
        ("pageviews", ints(parts.iter().map(|p| p.pageviews).collect())),
        ("first_ms", ints(parts.iter().map(|p| p.first.0).collect())),
        ("first_path", texts(parts.iter().map(|p| Some(p.first.1)).collect())),
        ("last_ms", ints(parts.iter().map(|p| p.last.0).collect())),
        ("last_path", texts(parts.iter().map(|p| Some(p.last.1)).collect())),
        ("compacted", Arc::new(BooleanArray::from(vec![false; keys.len()])) as ArrayRef),
        ("person_hash", Arc::new(Int64Array::new_null(keys.len())) as ArrayRef),
        ("unlinked", Arc::new(BooleanArray::new_null(keys.len())) as ArrayRef),
        ("whole", Arc::new(BooleanArray::new_null(keys.len())) as ArrayRef),
    ])?;
    let mut appender = conn.appender("session_parts")?;
    appender.append_record_batch(batch)?;
    appender.flush()?;
    Ok(())
}

/// Most parts folded in one step of a compaction (a transaction of its
/// own), so compacting fits the store's ingest memory limit however much
/// waits: at 128 MB, folding 5.3M parts at once ran out of memory.
pub const STEP_PARTS: i64 = 250_000;

/// Folds the parts of every hour that gained parts since it was last
/// compacted into one part per key, stitched and marked whole as the module
/// says, hours in steps of about `step_parts` parts, then applies the recent
/// links. Each step is a transaction of its own, so every commit leaves the
/// parts exact. Returns the parts written.
pub fn compact(conn: &Connection, step_parts: i64) -> Result<usize, StoreError> {
    let hours: Vec<(i64, i64, i64)> = conn
        .prepare(
            "SELECT project_id, hour, count(*) FROM session_parts WHERE NOT compacted
             GROUP BY project_id, hour ORDER BY project_id, hour",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut written = 0;
    let mut step: Vec<(i64, i64)> = Vec::new();
    let mut in_step = 0;
    for (i, &(project_id, hour, parts)) in hours.iter().enumerate() {
        step.push((project_id, hour));
        in_step += parts;
        let next = hours.get(i + 1).map_or(0, |h| h.2);
        if in_step + next > step_parts || i + 1 == hours.len() {
            let tx = conn.unchecked_transaction()?;
            written += fold(&tx, &step)?;
            tx.commit()?;
            (step, in_step) = (Vec::new(), 0);
        }
    }
    // Links made since the last compaction reach the parts compacted before.
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "UPDATE session_parts SET person_hash = {}, unlinked = false FROM recent_links l
             WHERE session_parts.compacted AND session_parts.project_id = l.project_id
                 AND session_parts.person_hash = {};
         DELETE FROM recent_links;",
        person_hash("l.user_id"),
        person_hash("l.anonymous_id")
    ))?;
    tx.commit()?;
    Ok(written)
}

/// A 63-bit hash of `x`, as the analytics' `group_hash`; NULL for no person.
fn person_hash(x: &str) -> String {
    format!("CASE WHEN {x} IS NOT NULL THEN CAST(hash({x}) >> 1 AS BIGINT) END")
}

/// One compaction step: folds the parts of `hours` (project, hour).
fn fold(conn: &Connection, hours: &[(i64, i64)]) -> Result<usize, StoreError> {
    conn.execute_batch("CREATE OR REPLACE TEMP TABLE compacting (project_id BIGINT, hour BIGINT)")?;
    {
        let mut compacting = conn.appender_to_catalog_and_db("compacting", "temp", "main")?;
        for &(project_id, hour) in hours {
            compacting.append_row(::duckdb::params![project_id, hour])?;
        }
        compacting.flush()?;
    }
    let key = |ms: &str, path: &str| format!("CAST({ms} + 100000000000000 AS VARCHAR) || {path}");
    let (first, last) = (key("first_ms", "first_path"), key("last_ms", "last_path"));
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE compacted_parts AS
             SELECT f.*, {person} AS person_hash, i.user_id IS NULL AS unlinked, false AS whole
             FROM (SELECT p.project_id, p.hour, session_id, anonymous_id, user_id, sum(pageviews) AS pageviews,
                       min(first_ms) AS first_ms, substr(min({first}), 16) AS first_path,
                       max(last_ms) AS last_ms, substr(max({last}), 16) AS last_path, true AS compacted
                   FROM session_parts p SEMI JOIN compacting c ON p.project_id = c.project_id AND p.hour = c.hour
                   GROUP BY p.project_id, p.hour, session_id, anonymous_id, user_id) f
             LEFT JOIN identities i ON i.project_id = f.project_id
                 AND i.anonymous_id = coalesce(f.user_id, f.anonymous_id);
         DELETE FROM session_parts USING compacting c
             WHERE session_parts.project_id = c.project_id AND session_parts.hour = c.hour;",
        person = person_hash("coalesce(i.user_id, f.user_id, f.anonymous_id)"),
    ))?;
    let written = conn.execute("INSERT INTO session_parts SELECT * FROM compacted_parts", [])?;
    conn.execute_batch(
        "CREATE OR REPLACE TEMP TABLE touched AS
             SELECT DISTINCT project_id, session_id FROM compacted_parts WHERE session_id IS NOT NULL;
         UPDATE session_parts SET whole = (n.parts = 1)
             FROM (SELECT p.project_id, p.session_id, count(*) AS parts
                   FROM session_parts p SEMI JOIN touched t ON p.project_id = t.project_id AND p.session_id = t.session_id
                   GROUP BY p.project_id, p.session_id) n
             WHERE session_parts.project_id = n.project_id AND session_parts.session_id = n.session_id;
         DROP TABLE compacting; DROP TABLE compacted_parts; DROP TABLE touched;",
    )?;
    Ok(written)
}

/// Folds the whole of `events` again (after rows arrived another way).
pub fn rebuild(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "BEGIN; DELETE FROM session_parts;
         INSERT INTO session_parts SELECT *, false, NULL, NULL, NULL FROM pageview_parts; COMMIT;",
    )?;
    compact(conn, STEP_PARTS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::write::Writer;
    use super::*;
    use leanloop_core::EventKind;

    const T0: i64 = 1_710_720_000_000 + 40 * 60_000;

    fn view(n: u128, minute: i64, session: &str, user: Option<&str>, path: Option<&str>) -> Event {
        let mut e = Event::new(uuid::Uuid::from_u128(n), 1, EventKind::Page, "$pageview", T0 + minute * 60_000);
        e.session_id = Some(session.into());
        e.anonymous_id = Some(format!("anon-{session}"));
        e.user_id = user.map(str::to_owned);
        e.path = path.map(str::to_owned);
        e
    }

    /// Every key's fold, of the stored parts or of the events themselves.
    fn folds(conn: &Connection, parts: &str) -> Vec<String> {
        let sql = format!(
            "SELECT concat_ws('|', project_id, hour, session_id, anonymous_id, user_id, sum(pageviews), min(first_ms),
                 substr(min(CAST(first_ms + 100000000000000 AS VARCHAR) || first_path), 16), max(last_ms),
                 substr(max(CAST(last_ms + 100000000000000 AS VARCHAR) || last_path), 16))
             FROM {parts} GROUP BY project_id, hour, session_id, anonymous_id, user_id ORDER BY 1"
        );
        let mut statement = conn.prepare(&sql).unwrap();
        statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM session_parts", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn parts_written_apart_fold_into_one_per_key_as_the_events_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.duckdb");
        drop(super::super::DuckDbStore::open(&file, &Default::default()).unwrap());
        let conn = Connection::open(&file).unwrap();
        let mut writer = Writer::new(conn.try_clone().unwrap()).unwrap();
        let mut signup = Event::new(uuid::Uuid::from_u128(99), 1, EventKind::Track, "signup", T0);
        signup.session_id = Some("a".into());
        // Session a: two views, then one across the hour, then one after
        // identifying, in separate writes; b: one view without a path.
        let writes = [
            vec![view(1, 0, "a", None, Some("/")), view(2, 10, "a", None, Some("/pricing")), signup],
            vec![view(3, 10, "a", None, Some("/docs")), view(4, 25, "a", None, Some("/pricing"))],
            vec![
                view(5, 15, "a", Some("ann"), Some("/signup")),
                view(6, 5, "b", None, None),
                view(1, 0, "a", None, None),
            ],
        ];
        for events in &writes {
            writer.write(events, &[]).unwrap();
        }
        let expected = folds(&conn, "pageview_parts");
        assert_eq!(expected.len(), 4, "{expected:?}");
        // As written: a part per write and key (the retried view is not one).
        assert_eq!(count(&conn), 5);
        assert_eq!(folds(&conn, "session_parts"), expected);
        // In steps of one hour each, as a large compaction goes.
        compact(&conn, 1).unwrap();
        assert_eq!(count(&conn), 4);
        assert_eq!(folds(&conn, "session_parts"), expected);
        // Session a's first hour: three views, the last two at the same ms
        // (the largest path is the last).
        let first_hour = "1|1710720000000|a|anon-a|3|1710722400000|/|1710723000000|/pricing".to_owned();
        assert!(expected.contains(&first_hour), "{expected:?}");
        // Compacting again changes nothing; new parts join the compacted.
        writer.compact_sessions().unwrap();
        assert_eq!(folds(&conn, "session_parts"), expected);
        writer.write(&[view(7, 12, "a", None, Some("/about"))], &[]).unwrap();
        writer.compact_sessions().unwrap();
        assert_eq!(count(&conn), 4);
        assert_eq!(folds(&conn, "session_parts"), folds(&conn, "pageview_parts"));
    }
}
