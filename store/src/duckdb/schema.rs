//! The DuckDB schema and its versioned migrations.
//!
//! `events` has no primary key: uniqueness of `(project_id, uuid)` is kept by
//! the writer (`dedup.rs`), which is much cheaper than an index over random
//! UUIDs. Keys are per project, so a client cannot collide with another
//! project's events by reusing its message ids. Migrations are append-only
//! and recorded in `leanloop_schema`.

use crate::StoreError;
use ::duckdb::Connection;

/// Event columns in storage order. Text columns not listed specially are
/// nullable VARCHAR; `read.rs` and `write.rs` both follow this order.
pub const EVENT_COLUMNS: &[&str] = &[
    "project_id",
    "uuid",
    "kind",
    "name",
    "timestamp",
    "received_at",
    "timestamp_clamped",
    "anonymous_id",
    "user_id",
    "session_id",
    "release",
    "url",
    "path",
    "page_name",
    "referrer",
    "referrer_domain",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "browser",
    "browser_version",
    "os",
    "device_type",
    "country",
    "ip",
    "library",
    "properties",
];

/// Index of the first nullable text column (`anonymous_id`) in [`EVENT_COLUMNS`].
pub const FIRST_TEXT_COLUMN: usize = 7;

const STEPS: &[&str] = &[
    // 1: events, people and the anonymous-to-user links identify makes.
    "CREATE TABLE events (
        project_id BIGINT NOT NULL,
        uuid UUID NOT NULL,
        kind VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        timestamp TIMESTAMP NOT NULL,
        received_at TIMESTAMP NOT NULL,
        timestamp_clamped BOOLEAN NOT NULL,
        anonymous_id VARCHAR, user_id VARCHAR, session_id VARCHAR, release VARCHAR,
        url VARCHAR, path VARCHAR, page_name VARCHAR, referrer VARCHAR, referrer_domain VARCHAR,
        utm_source VARCHAR, utm_medium VARCHAR, utm_campaign VARCHAR, utm_term VARCHAR,
        utm_content VARCHAR, browser VARCHAR, browser_version VARCHAR, os VARCHAR,
        device_type VARCHAR, country VARCHAR, ip VARCHAR, library VARCHAR,
        properties VARCHAR NOT NULL
    );
    CREATE TABLE users (
        project_id BIGINT NOT NULL,
        user_id VARCHAR NOT NULL,
        traits VARCHAR NOT NULL,
        first_seen TIMESTAMP NOT NULL,
        last_seen TIMESTAMP NOT NULL,
        PRIMARY KEY (project_id, user_id)
    );
    CREATE TABLE identities (
        project_id BIGINT NOT NULL,
        anonymous_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        first_seen TIMESTAMP NOT NULL,
        PRIMARY KEY (project_id, anonymous_id)
    );",
    // 2: cohort members, one set of rows per computed version.
    "CREATE TABLE cohort_members (
        project_id BIGINT NOT NULL,
        cohort_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        user_id VARCHAR NOT NULL
    );",
    // 3: page views folded per session, UTC hour and identity (see
    // `sessions.rs`): stored views start as a part each, folded at open.
    SESSION_PARTS_STEP,
    // 4: links name a final id (`write.rs`): chains stored earlier are
    // followed through (each statement doubles the reach: chains of up to
    // 8 links), and compacted parts are
    // stitched again, their user id's link followed too (`sessions.rs`).
    "UPDATE identities SET user_id = t.user_id FROM identities t
        WHERE t.project_id = identities.project_id AND t.anonymous_id = identities.user_id
            AND t.user_id <> identities.anonymous_id;
    UPDATE identities SET user_id = t.user_id FROM identities t
        WHERE t.project_id = identities.project_id AND t.anonymous_id = identities.user_id
            AND t.user_id <> identities.anonymous_id;
    UPDATE identities SET user_id = t.user_id FROM identities t
        WHERE t.project_id = identities.project_id AND t.anonymous_id = identities.user_id
            AND t.user_id <> identities.anonymous_id;
    UPDATE recent_links SET user_id = i.user_id FROM identities i
        WHERE i.project_id = recent_links.project_id AND i.anonymous_id = recent_links.anonymous_id;
    UPDATE session_parts SET person_hash = CAST(hash(coalesce(user_id, anonymous_id)) >> 1 AS BIGINT), unlinked = true
        WHERE compacted;
    UPDATE session_parts SET person_hash = CAST(hash(i.user_id) >> 1 AS BIGINT), unlinked = false
        FROM identities i
        WHERE session_parts.compacted AND i.project_id = session_parts.project_id
            AND i.anonymous_id = coalesce(session_parts.user_id, session_parts.anonymous_id);",
];

const SESSION_PARTS_STEP: &str = "CREATE TABLE session_parts (
        project_id BIGINT NOT NULL,
        hour BIGINT NOT NULL,
        session_id VARCHAR, anonymous_id VARCHAR, user_id VARCHAR,
        pageviews BIGINT NOT NULL,
        first_ms BIGINT NOT NULL, first_path VARCHAR NOT NULL,
        last_ms BIGINT NOT NULL, last_path VARCHAR NOT NULL,
        compacted BOOLEAN NOT NULL,
        person_hash BIGINT, unlinked BOOLEAN, whole BOOLEAN
    );
    CREATE TABLE recent_links (project_id BIGINT NOT NULL, anonymous_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL);
    CREATE VIEW pageview_parts AS
    SELECT project_id, ms - (ms % 3600000 + 3600000) % 3600000 AS hour, session_id, anonymous_id, user_id,
        1 AS pageviews, ms AS first_ms, coalesce(path, '') AS first_path, ms AS last_ms, coalesce(path, '') AS last_path
    FROM (SELECT *, epoch_us(timestamp) // 1000 AS ms FROM events WHERE name = '$pageview');
    INSERT INTO session_parts SELECT *, false, NULL, NULL, NULL FROM pageview_parts";

pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS leanloop_schema (version BIGINT NOT NULL, applied_at TIMESTAMP NOT NULL)",
    )?;
    let current: i64 = conn.query_row("SELECT coalesce(max(version), 0) FROM leanloop_schema", [], |row| row.get(0))?;
    let known = STEPS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew { found: current, known });
    }
    for (index, sql) in STEPS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let sql = sql.trim().trim_end_matches(';');
        conn.execute_batch(&format!("BEGIN; {sql}; INSERT INTO leanloop_schema VALUES ({version}, now()); COMMIT;"))?;
        tracing::info!(version, "event store schema migrated");
    }
    Ok(())
}

/// Column names and types of a flat event row (times in ms, uuid as text),
/// as newline-delimited JSON exports carry them; in [`EVENT_COLUMNS`] order.
pub fn flat_row_columns() -> Vec<(&'static str, &'static str)> {
    EVENT_COLUMNS
        .iter()
        .map(|&c| {
            let ty = match c {
                "project_id" | "timestamp" | "received_at" => "BIGINT",
                "timestamp_clamped" => "BOOLEAN",
                _ => "VARCHAR",
            };
            (c, ty)
        })
        .collect()
}

/// `SELECT` list converting flat rows into `events` rows.
pub fn flat_row_projection() -> String {
    EVENT_COLUMNS
        .iter()
        .map(|&c| match c {
            "uuid" => "CAST(uuid AS UUID)".to_owned(),
            "timestamp" | "received_at" => format!("epoch_ms({c})"),
            _ => c.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_chains_of_links_are_followed_and_parts_stitched_again() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE leanloop_schema (version BIGINT NOT NULL, applied_at TIMESTAMP NOT NULL)")
            .unwrap();
        // As version 3 left a store: x identified as visitor, whose id was
        // later aliased to user; parts compacted when a user id was its own
        // person and links were followed from anonymous ids only.
        for (index, step) in STEPS[..3].iter().enumerate() {
            conn.execute_batch(step).unwrap();
            conn.execute("INSERT INTO leanloop_schema VALUES (?, now())", [index as i64 + 1]).unwrap();
        }
        let hash = |id: &str| -> i64 {
            conn.query_row("SELECT CAST(hash(?) >> 1 AS BIGINT)", [id], |row| row.get(0)).unwrap()
        };
        let parts = [
            (Some("visitor"), None, "visitor", false),
            (Some("other"), None, "other", false),
            (None, Some("x"), "visitor", false),
            (None, Some("anon"), "anon", true),
        ];
        for (user, anonymous, person, unlinked) in parts {
            conn.execute(
                "INSERT INTO session_parts VALUES (1, 0, 's', ?, ?, 1, 5, '/', 5, '/', true, ?, ?, true)",
                ::duckdb::params![anonymous, user, hash(person), unlinked],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO identities VALUES (1, 'x', 'visitor', now()), (1, 'visitor', 'user', now()),
                 (1, 'a', 'b', now()), (1, 'b', 'a', now());
             INSERT INTO recent_links VALUES (1, 'x', 'visitor')",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let rows = |sql: &str| -> Vec<(String, String)> {
            let mut query = conn.prepare(sql).unwrap();
            query.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect()
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        // A loop stays as it was: neither id is final.
        assert_eq!(
            rows("SELECT anonymous_id, user_id FROM identities ORDER BY 1"),
            [pair("a", "b"), pair("b", "a"), pair("visitor", "user"), pair("x", "user")]
        );
        assert_eq!(rows("SELECT anonymous_id, user_id FROM recent_links"), [pair("x", "user")]);
        let mut query = conn
            .prepare("SELECT coalesce(user_id, anonymous_id), person_hash, unlinked FROM session_parts ORDER BY 1")
            .unwrap();
        let got: Vec<(String, i64, bool)> = query
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got,
            [
                ("anon".to_owned(), hash("anon"), true),
                // A user id not linked yet may be: it waits for links as an anonymous id does.
                ("other".to_owned(), hash("other"), true),
                ("visitor".to_owned(), hash("user"), false),
                ("x".to_owned(), hash("user"), false),
            ]
        );
    }
}
