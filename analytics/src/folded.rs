//! The web report's page views read from DuckDB's `session_parts`: page
//! views folded per session, UTC hour and identity as they are written,
//! then compacted by the store (see its `duckdb/sessions.rs`).
//!
//! Used for unfiltered questions whose window holds a whole hour: the parts
//! of the window's whole hours, plus the page views of its cut edge hours
//! read one by one from `events`, are exactly the window's page views
//! folded. The headline figures go further on compacted parts:
//! - a part marked `whole` is its session, so its count and length are the
//!   session's, without grouping, unless parts of that session came since
//!   it was compacted;
//! - visitors are counted from each compacted part's `person_hash` (its
//!   person as stitched at compaction, moved by the links made since, in
//!   `recent_links`), not by joining every part to the links. Two people
//!   count as one only if their 63-bit hashes collide: about n²/2^64 for n
//!   people, 5 in 10^8 for a million.

use crate::sql::{self, Source, Sql};
use crate::time::Window;
use crate::{AnalyticsError, Ask};
use leanloop_store::{Cell, ColumnKind, Dialect};

const HOUR_MS: i64 = 3_600_000;

/// A window's whole hours `[lo, hi)` and its cut edges `[from, lo)` and
/// `[hi, to)`.
pub struct Folded {
    project_id: i64,
    from: i64,
    lo: i64,
    hi: i64,
    to: i64,
}

/// The overview's counts: sessions, bounces, summed length (ms), visitors
/// and page views.
pub struct Counts {
    pub sessions: i64,
    pub bounces: i64,
    pub length_ms: i64,
    pub visitors: i64,
    pub pageviews: i64,
}

/// `rows` with the columns `web` reads of a visit row: `x_s` (session), and
/// from `[page views, first time, first path, last time, last path]`:
/// `x_n`, `x_first`, `x_fp`, `x_last`, `x_lp`.
pub fn visit_columns(rows: Source, [n, first, fp, last, lp]: [Sql; 5]) -> Source {
    rows.column("x_s", Sql::new("session_id"))
        .column("x_n", n)
        .column("x_first", first)
        .column("x_fp", fp)
        .column("x_last", last)
        .column("x_lp", lp)
}

/// The columns a visit row has, in order, whichever rows it comes from.
const VISIT: &str =
    "project_id, session_id, anonymous_id, user_id, pageviews, first_ms, first_path, last_ms, last_path";

impl Folded {
    /// The folded reading of `window`, when it applies.
    pub fn new(ask: &Ask, window: &Window, unfiltered: bool) -> Option<Folded> {
        let (from, to) = (window.from_ms, window.to_ms);
        let (lo, hi) = (from + (-from).rem_euclid(HOUR_MS), to - to.rem_euclid(HOUR_MS));
        (ask.dialect() == Dialect::DuckDb && unfiltered && lo < hi).then_some(Folded {
            project_id: ask.project_id,
            from,
            lo,
            hi,
            to,
        })
    }

    /// `columns` of the parts of the whole hours meeting `condition`.
    fn parts(&self, columns: &str, condition: Sql) -> Sql {
        Sql::new(format!("SELECT {columns} FROM session_parts WHERE project_id = "))
            .int(self.project_id)
            .raw(" AND hour >= ")
            .int(self.lo)
            .raw(" AND hour < ")
            .int(self.hi)
            .raw(" AND ")
            .push(condition.wrap())
    }

    /// The edge hours' page views, one visit row each.
    fn edges(&self) -> Sql {
        let ts = sql::timestamp_ms(Dialect::DuckDb).text;
        let edge = |a: i64, b: i64| {
            Sql::new(format!(
                "SELECT project_id, session_id, anonymous_id, user_id, 1, {ts}, path, {ts}, path FROM events \
                 WHERE project_id = "
            ))
            .int(self.project_id)
            .raw(" AND name = '$pageview' AND ")
            .push(Sql::join(sql::time_range(Dialect::DuckDb, Some(a), Some(b)), " AND "))
        };
        Sql::join([edge(self.from, self.lo), edge(self.hi, self.to)], " UNION ALL ")
    }

    /// Folded visit rows as a [`Source`].
    fn source(&self, rows: Sql) -> Source {
        let columns = ["pageviews", "first_ms", "first_path", "last_ms", "last_path"].map(Sql::new);
        visit_columns(Source::new(Dialect::DuckDb, self.project_id).from(rows.wrap()), columns)
    }

    /// Every page view of the window, folded.
    pub fn visits(&self) -> Source {
        self.source(Sql::join([self.parts(VISIT, Sql::new("true")), self.edges()], " UNION ALL "))
    }

    /// A compacted part that is its whole session, with no parts since.
    fn whole(&self) -> Sql {
        Sql::new(
            "coalesce(whole, false) AND session_id NOT IN (SELECT session_id FROM session_parts \
             WHERE NOT compacted AND session_id IS NOT NULL AND project_id = ",
        )
        .int(self.project_id)
        .raw(")")
    }

    pub fn counts(&self, ask: &Ask) -> Result<Counts, AnalyticsError> {
        let d = Dialect::DuckDb;
        // Whole sessions as they are; the others grouped from their parts.
        let grouped = Sql::new("SELECT sum(x_n), max(x_last) - min(x_first) FROM ")
            .push(
                self.source(Sql::join(
                    [self.parts(VISIT, Sql::new("NOT ").push(self.whole().wrap())), self.edges()],
                    " UNION ALL ",
                ))
                .render(),
            )
            .raw(" WHERE x_s IS NOT NULL GROUP BY x_s");
        let whole = self.parts("pageviews, last_ms - first_ms", self.whole());
        let stats = ask.rows(
            Sql::new("SELECT count(*), sum(CASE WHEN x_n = 1 THEN 1 ELSE 0 END), sum(x_d) FROM (")
                .push(whole)
                .raw(" UNION ALL ")
                .push(grouped)
                .raw(") s (x_n, x_d)")
                .select(&[ColumnKind::Int, ColumnKind::Int, ColumnKind::Int]),
        )?;

        // People: compacted parts by their hash, moved by the links made
        // since (keyed by the id they link: a person's id, as links name
        // final ids); the rest stitched here.
        let hash = |x: &str| format!("CASE WHEN {x} IS NOT NULL THEN {} END", sql::group_hash(d, x));
        let compacted = Sql::new(format!("SELECT coalesce({}, p.person_hash), p.pageviews FROM ", hash("l.user_id")))
            .push(self.parts("person_hash, pageviews", Sql::new("compacted")).wrap())
            .raw(
                format!(
                    " p LEFT JOIN (SELECT {} AS x_from, user_id FROM recent_links WHERE project_id = ",
                    hash("anonymous_id")
                )
                .as_str(),
            )
            .int(self.project_id)
            .raw(") l ON l.x_from = p.person_hash");
        let stitched = Sql::new(format!("SELECT {}, x_n FROM ", hash("person"))).push(
            self.source(Sql::join([self.parts(VISIT, Sql::new("NOT compacted")), self.edges()], " UNION ALL "))
                .with_person()
                .render(),
        );
        let people = ask.rows(
            Sql::new("SELECT count(DISTINCT x_ph), sum(x_n) FROM (")
                .push(compacted)
                .raw(" UNION ALL ")
                .push(stitched)
                .raw(") v (x_ph, x_n)")
                .select(&[ColumnKind::Int, ColumnKind::Int]),
        )?;
        let (s, p) = (stats.first(), people.first());
        let int = |row: Option<&Vec<Cell>>, k: usize| row.map_or(0, |r| r[k].int());
        Ok(Counts {
            sessions: int(s, 0),
            bounces: int(s, 1),
            length_ms: int(s, 2),
            visitors: int(p, 0),
            pageviews: int(p, 1),
        })
    }
}
