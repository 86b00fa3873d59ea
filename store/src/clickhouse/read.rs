//! Reading events and people back. Every user-supplied value is bound
//! (escaped by the client), never spliced into SQL.

use super::write::{clamp_seconds, UserRow};
use crate::select::{Cell, Param, Rows, Select, CLICKHOUSE_FIRST_LINK};
use crate::{EventFilter, StoreError, UserRecord};
use clickhouse::Row;
use leanloop_core::{Event, EventKind};
use serde::Deserialize;
use uuid::Uuid;

const EVENT_COLUMNS: &str = "uuid, project_id, kind, name, timestamp_ms, received_at_ms, timestamp_clamped,
    anonymous_id, user_id, session_id, release, url, path, page_name, referrer, referrer_domain,
    utm_source, utm_medium, utm_campaign, utm_term, utm_content, browser, browser_version, os,
    device_type, country, ip, library, properties";

#[derive(Row, Deserialize)]
struct EventRead {
    #[serde(with = "clickhouse::serde::uuid")]
    uuid: Uuid,
    project_id: i64,
    kind: String,
    name: String,
    timestamp_ms: i64,
    received_at_ms: i64,
    timestamp_clamped: u8,
    anonymous_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    release: Option<String>,
    url: Option<String>,
    path: Option<String>,
    page_name: Option<String>,
    referrer: Option<String>,
    referrer_domain: Option<String>,
    utm_source: Option<String>,
    utm_medium: Option<String>,
    utm_campaign: Option<String>,
    utm_term: Option<String>,
    utm_content: Option<String>,
    browser: Option<String>,
    browser_version: Option<String>,
    os: Option<String>,
    device_type: Option<String>,
    country: Option<String>,
    ip: Option<String>,
    library: Option<String>,
    properties: String,
}

impl EventRead {
    fn into_event(self) -> Result<Event, StoreError> {
        let kind = EventKind::parse(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event kind `{}`", self.kind)))?;
        Ok(Event {
            uuid: self.uuid,
            project_id: self.project_id,
            kind,
            name: self.name,
            timestamp_ms: self.timestamp_ms,
            received_at_ms: self.received_at_ms,
            timestamp_clamped: self.timestamp_clamped != 0,
            anonymous_id: self.anonymous_id,
            user_id: self.user_id,
            session_id: self.session_id,
            release: self.release,
            url: self.url,
            path: self.path,
            page_name: self.page_name,
            referrer: self.referrer,
            referrer_domain: self.referrer_domain,
            utm_source: self.utm_source,
            utm_medium: self.utm_medium,
            utm_campaign: self.utm_campaign,
            utm_term: self.utm_term,
            utm_content: self.utm_content,
            browser: self.browser,
            browser_version: self.browser_version,
            os: self.os,
            device_type: self.device_type,
            country: self.country,
            ip: self.ip,
            library: self.library,
            properties: self.properties,
        })
    }
}

/// A query with `filter`'s conditions appended and bound. The `timestamp`
/// bounds repeat the millisecond ones so partitions and granules are skipped.
fn filtered(client: &clickhouse::Client, head: &str, filter: &EventFilter, tail: &str) -> clickhouse::query::Query {
    let mut sql = format!("{head} WHERE project_id = ?");
    if filter.name.is_some() {
        sql.push_str(" AND name = ?");
    }
    if filter.user.is_some() {
        sql.push_str(" AND (user_id = ? OR anonymous_id = ?)");
    }
    if filter.from_ms.is_some() {
        sql.push_str(" AND timestamp >= toDateTime(?) AND timestamp_ms >= ?");
    }
    if filter.to_ms.is_some() {
        sql.push_str(" AND timestamp <= toDateTime(?) AND timestamp_ms < ?");
    }
    sql.push_str(tail);
    let mut query = client.query(&sql).bind(filter.project_id);
    if let Some(name) = &filter.name {
        query = query.bind(name.as_str());
    }
    if let Some(user) = &filter.user {
        query = query.bind(user.as_str()).bind(user.as_str());
    }
    for ms in [filter.from_ms, filter.to_ms].into_iter().flatten() {
        query = query.bind(clamp_seconds(ms.div_euclid(1000))).bind(ms);
    }
    query
}

/// Stored events, each uuid once: two collectors may each store a retry
/// the other already had (see the README's delivery guarantee). Grouped,
/// not `uniqExact(uuid)`: ClickHouse 18.16 hashes a UUID for `uniqExact` so
/// poorly that ids alike in their high bits (sequential ones) took minutes
/// for a million rows; grouping took under a second.
pub async fn count(client: &clickhouse::Client, filter: &EventFilter) -> Result<u64, StoreError> {
    let query = filtered(client, "SELECT count() FROM (SELECT uuid FROM events", filter, " GROUP BY uuid)");
    Ok(query.fetch_one::<u64>().await?)
}

pub async fn recent(client: &clickhouse::Client, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
    let head = format!("SELECT {EVENT_COLUMNS} FROM events");
    // Twice the rows asked for, each uuid then kept once, here: `LIMIT 1 BY
    // uuid` would sort every row of the filter rather than find the newest.
    // Ties in uuid text order, as DuckDB's UUIDs sort (18.16 compares a
    // UUID's low half first).
    let tail = format!(" ORDER BY timestamp_ms DESC, toString(uuid) LIMIT {}", limit as u64 * 2);
    let rows: Vec<EventRead> = filtered(client, &head, filter, &tail).fetch_all().await?;
    let mut seen = std::collections::HashSet::new();
    let events = rows.into_iter().map(EventRead::into_event).collect::<Result<Vec<_>, _>>()?;
    Ok(events.into_iter().filter(|e| seen.insert(e.uuid)).take(limit).collect())
}

/// The newest stored state of each of `user_ids` that has one.
pub async fn user_rows(
    client: &clickhouse::Client,
    project_id: i64,
    user_ids: &[&str],
) -> Result<Vec<UserRow>, StoreError> {
    let rows = client
        .query(&format!(
            "SELECT project_id, user_id, argMax(traits, version), min(first_seen_ms), max(last_seen_ms), max(version)
             FROM users WHERE project_id = ? AND {} GROUP BY project_id, user_id",
            super::mutations::in_bound_set("user_id")
        ))
        .bind(project_id)
        .bind(user_ids)
        .fetch_all()
        .await?;
    Ok(rows)
}

pub async fn user(
    client: &clickhouse::Client,
    project_id: i64,
    user_id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let row = user_rows(client, project_id, &[user_id]).await?.pop();
    row.map(|r| {
        let traits = serde_json::from_str(&r.traits).map_err(|e| StoreError::Corrupt(format!("traits: {e}")))?;
        Ok(UserRecord { user_id: r.user_id, traits, first_seen_ms: r.first_seen_ms, last_seen_ms: r.last_seen_ms })
    })
    .transpose()
}

pub async fn identity(
    client: &clickhouse::Client,
    project_id: i64,
    anonymous_id: &str,
) -> Result<Option<String>, StoreError> {
    let linked: Vec<String> = client
        .query(&format!(
            "SELECT {CLICKHOUSE_FIRST_LINK} FROM identities WHERE project_id = ? AND anonymous_id = ? GROUP BY anonymous_id"
        ))
        .bind(project_id)
        .bind(anonymous_id)
        .fetch_all()
        .await?;
    // An id linked to itself (a loop undone, see `identities::repair`) is
    // linked to no one.
    Ok(linked.into_iter().next().filter(|user| user != anonymous_id))
}

/// Every change to people inserts a row with a higher `version` (or, for
/// an erasure, removes rows), so the row count and the version sum move
/// with each change. Background merges also move them, which only costs a
/// needless recomputation.
pub async fn people_revision(client: &clickhouse::Client, project_id: i64) -> Result<u64, StoreError> {
    let (rows, versions): (u64, u64) = client
        .query("SELECT count(), sum(version) FROM users WHERE project_id = ?")
        .bind(project_id)
        .fetch_one()
        .await?;
    Ok(rows.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ versions)
}

/// Runs a caller-compiled query (see [`crate::select`]), reading the answer
/// as TabSeparated text (every server version has it).
pub async fn select(client: &clickhouse::Client, query: &Select) -> Result<Rows, StoreError> {
    let mut q = client.query(&query.sql);
    for param in &query.params {
        q = match param {
            Param::Int(i) => q.bind(*i),
            Param::Float(f) => q.bind(*f),
            Param::Text(s) => q.bind(s.as_str()),
        };
    }
    let body = q.fetch_bytes("TabSeparated")?.collect().await?;
    let text = std::str::from_utf8(&body).map_err(|e| StoreError::Corrupt(format!("query answer: {e}")))?;
    let mut rows = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != query.columns.len() {
            return Err(StoreError::Corrupt(format!(
                "query answered {} columns, {} expected",
                fields.len(),
                query.columns.len()
            )));
        }
        let cells = fields.into_iter().zip(&query.columns).map(|(f, &kind)| match f {
            "\\N" => Cell::Null,
            f => Cell::parse(unescape(f), kind),
        });
        rows.push(cells.collect());
    }
    Ok(rows)
}

/// Undoes TabSeparated escaping.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tab_separated_escapes_are_undone() {
        assert_eq!(super::unescape(r"a\tb\\c\nd\'e"), "a\tb\\c\nd'e");
        assert_eq!(super::unescape("plain"), "plain");
    }
}
