//! Reading events and people back. Every user-supplied value is bound as a
//! parameter, never spliced into SQL.

use super::columnar;
use super::schema::{EVENT_COLUMNS, FIRST_TEXT_COLUMN};
use crate::select::{Cell, Column, ColumnKind, Param, Rows, Select};
use crate::{EventFilter, StoreError, UserRecord};
use ::duckdb::arrow::array::ArrayRef;
use ::duckdb::arrow::error::ArrowError;
use ::duckdb::arrow::record_batch::RecordBatch;
use ::duckdb::types::Value;
use ::duckdb::{params, params_from_iter, Connection, OptionalExt, Row};
use leanloop_core::{Event, EventKind};

/// `WHERE` clause and its bound values for `filter`.
fn condition(filter: &EventFilter) -> (String, Vec<Value>) {
    let mut sql = String::from("project_id = ?");
    let mut values = vec![Value::BigInt(filter.project_id)];
    if let Some(name) = &filter.name {
        sql.push_str(" AND name = ?");
        values.push(Value::Text(name.clone()));
    }
    if let Some(user) = &filter.user {
        sql.push_str(" AND (user_id = ? OR anonymous_id = ?)");
        values.push(Value::Text(user.clone()));
        values.push(Value::Text(user.clone()));
    }
    if let Some(from) = filter.from_ms {
        sql.push_str(" AND timestamp >= epoch_ms(?)");
        values.push(Value::BigInt(from));
    }
    if let Some(to) = filter.to_ms {
        sql.push_str(" AND timestamp < epoch_ms(?)");
        values.push(Value::BigInt(to));
    }
    (sql, values)
}

pub fn count(conn: &Connection, filter: &EventFilter) -> Result<u64, StoreError> {
    let (cond, values) = condition(filter);
    let sql = format!("SELECT count(*) FROM events WHERE {cond}");
    let n: i64 = conn.prepare_cached(&sql)?.query_row(params_from_iter(values), |row| row.get(0))?;
    Ok(n as u64)
}

pub fn recent(conn: &Connection, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
    let (cond, mut values) = condition(filter);
    let select: Vec<String> = EVENT_COLUMNS
        .iter()
        .map(|&c| match c {
            "uuid" => "CAST(uuid AS VARCHAR)".to_owned(),
            "timestamp" | "received_at" => format!("epoch_ms({c})"),
            _ => c.to_owned(),
        })
        .collect();
    let sql = format!("SELECT {} FROM events WHERE {cond} ORDER BY timestamp DESC, uuid LIMIT ?", select.join(", "));
    values.push(Value::BigInt(limit as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(event_from_row(row)?);
    }
    Ok(events)
}

fn event_from_row(row: &Row<'_>) -> Result<Event, StoreError> {
    let text = |i: usize| -> Result<Option<String>, StoreError> { Ok(row.get::<_, Option<String>>(i)?) };
    let uuid: String = row.get(1)?;
    let kind: String = row.get(2)?;
    let t = FIRST_TEXT_COLUMN;
    Ok(Event {
        project_id: row.get(0)?,
        uuid: uuid.parse().map_err(|_| StoreError::Corrupt(format!("uuid {uuid}")))?,
        kind: EventKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
        name: row.get(3)?,
        timestamp_ms: row.get(4)?,
        received_at_ms: row.get(5)?,
        timestamp_clamped: row.get(6)?,
        anonymous_id: text(t)?,
        user_id: text(t + 1)?,
        session_id: text(t + 2)?,
        release: text(t + 3)?,
        url: text(t + 4)?,
        path: text(t + 5)?,
        page_name: text(t + 6)?,
        referrer: text(t + 7)?,
        referrer_domain: text(t + 8)?,
        utm_source: text(t + 9)?,
        utm_medium: text(t + 10)?,
        utm_campaign: text(t + 11)?,
        utm_term: text(t + 12)?,
        utm_content: text(t + 13)?,
        browser: text(t + 14)?,
        browser_version: text(t + 15)?,
        os: text(t + 16)?,
        device_type: text(t + 17)?,
        country: text(t + 18)?,
        ip: text(t + 19)?,
        library: text(t + 20)?,
        properties: row.get(t + 21)?,
    })
}

pub fn user(conn: &Connection, project_id: i64, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT traits, epoch_ms(first_seen), epoch_ms(last_seen) FROM users
             WHERE project_id = ? AND user_id = ?",
        )?
        .query_row(params![project_id, user_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })
        .optional()?;
    row.map(|(traits, first_seen_ms, last_seen_ms)| {
        let traits = serde_json::from_str(&traits).map_err(|e| StoreError::Corrupt(format!("traits: {e}")))?;
        Ok(UserRecord { user_id: user_id.to_owned(), traits, first_seen_ms, last_seen_ms })
    })
    .transpose()
}

pub fn identity(conn: &Connection, project_id: i64, anonymous_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT user_id FROM identities WHERE project_id = ? AND anonymous_id = ?")?
        .query_row(params![project_id, anonymous_id], |row| row.get(0))
        .optional()?)
}

/// Runs a caller-compiled query (see [`crate::select`]).
pub fn select(conn: &Connection, query: &Select) -> Result<Rows, StoreError> {
    let mut out: Rows = Vec::new();
    each_batch(conn, query, |batch| {
        let first = out.len();
        out.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(query.columns.len())));
        let rows = &mut out[first..];
        for (i, &kind) in query.columns.iter().enumerate() {
            columnar::push_cells(column(batch, i, query)?, kind, |r, cell| rows[r].push(cell))?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// [`select`] a column at a time.
pub fn select_columns(conn: &Connection, query: &Select) -> Result<Vec<Column>, StoreError> {
    let mut out: Vec<Column> = query.columns.iter().map(|&k| Column::with_capacity(k, 0)).collect();
    each_batch(conn, query, |batch| push_batch(batch, query, &mut out))?;
    Ok(out)
}

/// [`select_columns`] handed to `each` one Arrow batch at a time.
pub fn select_batches(conn: &Connection, query: &Select, each: &mut dyn FnMut(Vec<Column>)) -> Result<(), StoreError> {
    each_batch(conn, query, |batch| {
        let mut columns: Vec<Column> = query.columns.iter().map(|&k| Column::with_capacity(k, 0)).collect();
        push_batch(batch, query, &mut columns)?;
        each(columns);
        Ok(())
    })
}

/// Appends `batch`'s rows to `out`, one column of the query each.
fn push_batch(batch: &RecordBatch, query: &Select, out: &mut [Column]) -> Result<(), ArrowError> {
    for (i, (&kind, cells)) in query.columns.iter().zip(out).enumerate() {
        cells.reserve(batch.num_rows());
        columnar::push_cells(column(batch, i, query)?, kind, |_, cell| cells.push(cell))?;
    }
    Ok(())
}

/// Runs `query` and hands its result to `f`, one Arrow batch at a time.
fn each_batch(
    conn: &Connection,
    query: &Select,
    mut f: impl FnMut(&RecordBatch) -> Result<(), ArrowError>,
) -> Result<(), StoreError> {
    let params = query.params.iter().map(|p| match p {
        Param::Int(i) => Value::BigInt(*i),
        Param::Float(f) => Value::Double(*f),
        Param::Text(s) => Value::Text(s.clone()),
    });
    // Not from the statement cache: a cached statement keeps its last
    // result, so a large one (a funnel's rows) would stay in memory, beyond
    // DuckDB's reach, until the same question came again.
    let mut stmt = conn.prepare(&query.sql)?;
    // Whole Arrow batches, a column at a time: reading cell by cell through
    // rows cost as much as running a large query (a funnel's 2.4M rows).
    // The result is materialised by `execute` (errors surface there or as
    // `step` errors, never as panics); fetching it chunk by chunk from a
    // streaming result was 10 % slower for a funnel.
    stmt.execute(params_from_iter(params))?;
    while let Some(chunk) = stmt.step()? {
        f(&RecordBatch::from(&chunk))?;
    }
    Ok(())
}

/// Result column `i` of `batch`, which must have every declared column.
fn column<'a>(batch: &'a RecordBatch, i: usize, query: &Select) -> Result<&'a ArrayRef, ArrowError> {
    batch.columns().get(i).ok_or_else(|| {
        ArrowError::SchemaError(format!("{} result columns, {} declared", batch.num_columns(), query.columns.len()))
    })
}

/// Converts a typed value into a cell of the declared kind.
pub(super) fn coerce(cell: Cell, kind: ColumnKind) -> Cell {
    match (kind, cell) {
        (ColumnKind::Int, Cell::Float(f)) => Cell::Int(f as i64),
        (ColumnKind::Float, Cell::Int(i)) => Cell::Float(i as f64),
        (ColumnKind::Text, c @ (Cell::Int(_) | Cell::Float(_))) => Cell::Text(c.text().unwrap_or_default()),
        (ColumnKind::Int | ColumnKind::Float, Cell::Text(s)) => Cell::parse(s, kind),
        (_, c) => c,
    }
}
