//! SQL text with its bound values, the dialect-specific expressions every
//! insight is built from, and [`Source`]: the filtered event rows (with the
//! stitched person when asked) that insights aggregate.
//!
//! The two dialects differ only in the pieces here; every insight module
//! writes one query shape for both. User-supplied values only ever become
//! [`Param`]s; numbers spliced into the text are computed here (time zone
//! offsets, bucket widths).

use leanloop_store::{ColumnKind, Dialect, Param, Select, CLICKHOUSE_FIRST_LINK};

/// SQL text and the values for its `?` placeholders, in order.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Param>,
    /// Each DuckDB [`in_list`] that DuckDB would plan as a hash join:
    /// [`Sql::select`] bounds how many of them one statement joins.
    lists: Vec<ListAt>,
}

/// Where an `expr IN (items)` sits: offsets in the text, and the index of
/// the first param of its expression and of its items.
#[derive(Debug, Clone, Copy)]
struct ListAt {
    expr: usize,
    expr_param: usize,
    open: usize,
    items_param: usize,
    close: usize,
    /// One past the last item's param.
    end_param: usize,
}

impl ListAt {
    fn shifted(self, text: usize, params: usize) -> ListAt {
        ListAt {
            expr: self.expr + text,
            expr_param: self.expr_param + params,
            open: self.open + text,
            items_param: self.items_param + params,
            close: self.close + text,
            end_param: self.end_param + params,
        }
    }
}

/// Constant `IN` lists one DuckDB statement may test through hash joins.
/// DuckDB plans a list of five or more constants (`IN (...)`, and also a
/// list literal tested by `list_contains` or `IN [...]`) as a join against
/// them, which holds megabytes however short the list: a statement of 40
/// such filters ran out of the 256 MB query limit on a few thousand events.
/// Later lists are tested with `list_position`, which DuckDB evaluates row
/// by row against one constant list: on 2M rows, 1.7× the join's time for
/// 1,000 values.
const MAX_JOINED_LISTS: usize = 8;

/// DuckDB's smallest constant list planned as a join.
const JOINED_LIST_LEN: usize = 5;

impl Sql {
    pub fn new(text: impl Into<String>) -> Sql {
        Sql { text: text.into(), params: Vec::new(), lists: Vec::new() }
    }

    pub fn raw(mut self, text: &str) -> Sql {
        self.text.push_str(text);
        self
    }

    pub fn bind(mut self, param: Param) -> Sql {
        self.text.push('?');
        self.params.push(param);
        self
    }

    pub fn text(self, value: &str) -> Sql {
        self.bind(Param::Text(value.to_owned()))
    }

    pub fn int(self, value: i64) -> Sql {
        self.bind(Param::Int(value))
    }

    /// A bound `f64`. ClickHouse's parser refuses the long decimals a tiny
    /// or huge float is written as in SQL (`5e-324` is 324 digits), so
    /// there it goes in as text through `toFloat64`: the text stored
    /// properties' floats are kept as, so both are read alike.
    pub fn float(self, d: Dialect, value: f64) -> Sql {
        match d {
            Dialect::DuckDb => self.bind(Param::Float(value)),
            Dialect::ClickHouse => self.raw("toFloat64(").text(&leanloop_store::clickhouse::float_text(value)).raw(")"),
        }
    }

    pub fn push(mut self, other: Sql) -> Sql {
        let (text, params) = (self.text.len(), self.params.len());
        self.lists.extend(other.lists.iter().map(|list| list.shifted(text, params)));
        self.text.push_str(&other.text);
        self.params.extend(other.params);
        self
    }

    /// `parts` separated by `sep`.
    pub fn join(parts: impl IntoIterator<Item = Sql>, sep: &str) -> Sql {
        let mut out = Sql::default();
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                out.text.push_str(sep);
            }
            out = out.push(part);
        }
        out
    }

    /// `(self)`.
    pub fn wrap(self) -> Sql {
        Sql::new("(").push(self).raw(")")
    }

    /// The statement, its lists past [`MAX_JOINED_LISTS`] tested with
    /// `list_position([items], expr) IS NOT NULL` (items first, so their
    /// params move ahead of the expression's).
    pub fn select(mut self, columns: &[ColumnKind]) -> Select {
        if self.lists.len() > MAX_JOINED_LISTS {
            // From the last, so the offsets of those before stay valid.
            for list in self.lists.split_off(MAX_JOINED_LISTS).into_iter().rev() {
                let expr = &self.text[list.expr..list.open - " IN ".len()];
                let items = &self.text[list.open + 1..list.close];
                let tested = format!("list_position([{items}], {expr}) IS NOT NULL");
                self.text.replace_range(list.expr..=list.close, &tested);
                self.params[list.expr_param..list.end_param].rotate_left(list.items_param - list.expr_param);
            }
        }
        Select { sql: self.text, params: self.params, columns: columns.to_vec() }
    }
}

/// `expr IN (items)`: `items` are bound values, at least one.
pub fn in_list(d: Dialect, expr: Sql, items: impl IntoIterator<Item = Sql>) -> Sql {
    let items: Vec<Sql> = items.into_iter().collect();
    let joined = d == Dialect::DuckDb && items.len() >= JOINED_LIST_LEN;
    let mut out = expr.raw(" IN (");
    let (open, items_param) = (out.text.len() - 1, out.params.len());
    out = out.push(Sql::join(items, ", ")).raw(")");
    if joined {
        // The expression starts the text and the params.
        let (close, end_param) = (out.text.len() - 1, out.params.len());
        out.lists.push(ListAt { expr: 0, expr_param: 0, open, items_param, close, end_param });
    }
    out
}

/// Event time in ms since the epoch, from the raw columns.
pub fn timestamp_ms(d: Dialect) -> Sql {
    Sql::new(match d {
        // Stored times are whole ms, so the division is exact; DuckDB's
        // `epoch_ms` of a timestamp costs a third of a trend query more.
        Dialect::DuckDb => "(epoch_us(timestamp) // 1000)",
        Dialect::ClickHouse => "timestamp_ms",
    })
}

/// `from <= time < to`, both optional. ClickHouse also bounds the
/// second-precision `timestamp` so partitions and granules are skipped.
pub fn time_range(d: Dialect, from_ms: Option<i64>, to_ms: Option<i64>) -> Vec<Sql> {
    let seconds = |ms: i64| ms.div_euclid(1000).clamp(0, u32::MAX as i64);
    let mut out = Vec::new();
    if let Some(from) = from_ms {
        out.push(match d {
            Dialect::DuckDb => Sql::new("timestamp >= epoch_ms(").int(from).raw(")"),
            Dialect::ClickHouse => {
                Sql::new("timestamp >= toDateTime(").int(seconds(from)).raw(") AND timestamp_ms >= ").int(from)
            }
        });
    }
    if let Some(to) = to_ms {
        out.push(match d {
            Dialect::DuckDb => Sql::new("timestamp < epoch_ms(").int(to).raw(")"),
            Dialect::ClickHouse => {
                Sql::new("timestamp <= toDateTime(").int(seconds(to)).raw(") AND timestamp_ms < ").int(to)
            }
        });
    }
    out
}

/// A top-level property as text (strings as themselves, other values as
/// JSON text), NULL when absent or `null`.
pub fn property(d: Dialect, key: &str) -> Sql {
    match d {
        // A JSON pointer: every key is addressable, escaping `~` and `/`.
        Dialect::DuckDb => {
            let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
            Sql::new("json_extract_string(properties, ").text(&pointer).raw(")")
        }
        Dialect::ClickHouse => Sql::new("if(has(prop_keys, ")
            .text(key)
            .raw("), prop_values[indexOf(prop_keys, ")
            .text(key)
            .raw(")], NULL)"),
    }
}

/// The event uuid as text (both stores write it the same way).
pub fn uuid_text(d: Dialect) -> Sql {
    Sql::new(match d {
        Dialect::DuckDb => "CAST(uuid AS VARCHAR)",
        Dialect::ClickHouse => "toString(uuid)",
    })
}

/// A sort key for the event uuid that orders as its text does. DuckDB's
/// UUID type already sorts that way (and compares far faster than text);
/// ClickHouse's sorts by its two halves, so it is compared as text there.
pub fn uuid_order(d: Dialect) -> Sql {
    Sql::new(match d {
        Dialect::DuckDb => "uuid",
        Dialect::ClickHouse => "toString(uuid)",
    })
}

/// What a number's text may be: JSON's number grammar (leading zeros
/// allowed). Each store's own cast reads more, and differently: DuckDB
/// also `" 8"`, `"+4"`, `"1_000"` and `"NaN"`, ClickHouse none of them, so
/// both read only text of this form, and agree.
const NUMBER_TEXT: &str = r"^-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$";

/// A JSON value read as a number as [`number`] reads it: a JSON number,
/// or text of [`NUMBER_TEXT`]'s form.
pub fn number_of(value: &serde_json::Value) -> Option<f64> {
    static FORM: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(NUMBER_TEXT).expect("a valid pattern"));
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) if FORM.is_match(s) => s.parse().ok(),
        _ => None,
    }
}

/// `expr` read as a number, NULL when it is not one. On ClickHouse the text
/// goes through a regex extract (empty when it is not a number, which the
/// cast reads as NULL), so `expr` is computed once; DuckDB computes a
/// repeated expression once, and a match there costs half an extract.
pub fn number(d: Dialect, expr: Sql) -> Sql {
    match d {
        Dialect::DuckDb => Sql::new("CASE WHEN regexp_matches(")
            .push(expr.clone())
            .raw(", ")
            .text(NUMBER_TEXT)
            .raw(") THEN TRY_CAST(")
            .push(expr)
            .raw(" AS DOUBLE) END"),
        Dialect::ClickHouse => Sql::new("toFloat64OrNull(extract(").push(expr).raw(", ").text(NUMBER_TEXT).raw("))"),
    }
}

/// Whether `expr` contains `needle` (case-sensitive).
pub fn contains(d: Dialect, expr: Sql, needle: &str) -> Sql {
    let f = match d {
        Dialect::DuckDb => "strpos(",
        Dialect::ClickHouse => "position(",
    };
    Sql::new(f).push(expr).raw(", ").text(needle).raw(") > 0")
}

/// Whether `expr` matches the RE2 `pattern` anywhere. A dot matches a
/// newline on both stores, as ClickHouse's `match` has it; DuckDB's
/// `regexp_matches` needs the `s` flag for that.
pub fn regex(d: Dialect, expr: Sql, pattern: &str) -> Sql {
    match d {
        Dialect::DuckDb => Sql::new("regexp_matches(").push(expr).raw(", ").text(&format!("(?s){pattern}")).raw(")"),
        Dialect::ClickHouse => Sql::new("match(").push(expr).raw(", ").text(&scoped_flags(pattern)).raw(")"),
    }
}

/// `(?i)rest` as `(?i:rest)`, the same pattern: ClickHouse 18.16 looks up
/// a literal it finds in the pattern before running it, and misses that a
/// leading flag group makes it case-insensitive (`(?i)pro` never matched
/// `Pro`); the scoped form it reads right.
fn scoped_flags(pattern: &str) -> String {
    let flags = pattern
        .strip_prefix("(?")
        .and_then(|rest| rest.split_once(')'))
        .filter(|(flags, _)| !flags.is_empty() && flags.chars().all(|c| "imsU-".contains(c)));
    match flags {
        Some((flags, rest)) => format!("(?{flags}:{rest})"),
        None => pattern.to_owned(),
    }
}

/// Integer division of non-negative `a` by a positive constant.
pub fn int_div(d: Dialect, a: &str, b: i64) -> String {
    match d {
        Dialect::DuckDb => format!("(({a}) // {b})"),
        Dialect::ClickHouse => format!("intDiv({a}, {b})"),
    }
}

/// `year * 12 + month - 1` of a UTC ms time.
pub fn month_index(d: Dialect, ms: &str) -> String {
    match d {
        Dialect::DuckDb => format!("(year(epoch_ms({ms})) * 12 + month(epoch_ms({ms})) - 1)"),
        Dialect::ClickHouse => {
            let t = format!("toDateTime(intDiv({ms}, 1000), 'UTC')");
            format!("(toYear({t}) * 12 + toMonth({t}) - 1)")
        }
    }
}

/// Exact number of distinct non-NULL values.
pub fn count_distinct(d: Dialect, expr: &str) -> String {
    match d {
        Dialect::DuckDb => format!("count(DISTINCT {expr})"),
        Dialect::ClickHouse => format!("uniqExact({expr})"),
    }
}

/// A 63-bit hash of `expr`, to stand for it where rows are only grouped by
/// it: an integer sorts, compares and crosses from the store far cheaper
/// than the text. n distinct values share a hash with probability about
/// n²/2^64 (5 in 10^8 for a million).
pub fn group_hash(d: Dialect, expr: &str) -> String {
    match d {
        Dialect::DuckDb => format!("CAST(hash({expr}) >> 1 AS BIGINT)"),
        Dialect::ClickHouse => format!("intDiv(cityHash64({expr}), 2)"),
    }
}

/// The nearest-rank percentile of the non-NULL values of `expr`: the value at
/// position ceil(q × n) of the sorted values (NULL when there are none).
/// Written out rather than left to each engine's quantile function so both
/// stores agree exactly.
pub fn percentile(d: Dialect, expr: &str, q: f64) -> String {
    let rank = format!("greatest(1, CAST(ceil({q} * count({expr})) AS BIGINT))");
    match d {
        Dialect::DuckDb => format!(
            "CASE WHEN count({expr}) = 0 THEN NULL ELSE list_sort(list({expr}) FILTER (WHERE {expr} IS NOT NULL))[{rank}] END"
        ),
        Dialect::ClickHouse => {
            format!("if(count({expr}) = 0, NULL, arrayElement(arraySort(groupArray({expr})), {rank}))")
        }
    }
}

/// A string key that sorts rows by time then by `tie` (a text expression):
/// `min`/`max` of it pick the first/last row deterministically, and
/// [`after_time_key`] recovers `tie`. Times are shifted to 15 digits.
pub fn time_key(d: Dialect, ts: &str, tie: &str) -> String {
    match d {
        Dialect::DuckDb => format!("(CAST({ts} + 100000000000000 AS VARCHAR) || coalesce({tie}, ''))"),
        Dialect::ClickHouse => format!("concat(toString({ts} + 100000000000000), ifNull({tie}, ''))"),
    }
}

/// `arg` on the row with the smallest `key` (`arg` never NULL: DuckDB's
/// `arg_min` passes over rows whose `arg` is).
pub fn arg_min(d: Dialect, arg: &str, key: &str) -> String {
    match d {
        Dialect::DuckDb => format!("arg_min({arg}, {key})"),
        Dialect::ClickHouse => format!("argMin({arg}, {key})"),
    }
}

/// A text column, `''` where unset.
pub fn empty_if_unset(d: Dialect, column: &str) -> String {
    match d {
        Dialect::DuckDb => format!("coalesce({column}, '')"),
        Dialect::ClickHouse => format!("ifNull({column}, '')"),
    }
}

/// The event's referrer domain, `''` where unset or the page's own domain
/// (its URL's host, lower case, without `www.`, as the collector stores
/// referrer domains): a visit from inside the site has no referrer.
pub fn referrer_off_site(d: Dialect) -> String {
    // The host as RE2's first group in both; no `?` in the text, which the
    // ClickHouse client takes for a parameter: `\x3F` (its backslash
    // doubled in ClickHouse's literals, where a backslash escapes).
    const HOST_DUCKDB: &str = r"^[A-Za-z][A-Za-z0-9+.-]*://([^/\x3F#:]+)";
    const HOST_CLICKHOUSE: &str = r"^[A-Za-z][A-Za-z0-9+.-]*://([^/\\x3F#:]+)";
    let referrer = empty_if_unset(d, "referrer_domain");
    let url = empty_if_unset(d, "url");
    match d {
        Dialect::DuckDb => format!(
            "CASE WHEN {referrer} = regexp_replace(lower(regexp_extract({url}, '{HOST_DUCKDB}', 1)), '^www[.]', '') \
             THEN '' ELSE {referrer} END"
        ),
        Dialect::ClickHouse => format!(
            "if({referrer} = replaceRegexpOne(lower(extract({url}, '{HOST_CLICKHOUSE}')), '^www[.]', ''), '', {referrer})"
        ),
    }
}

/// The `tie` part of a [`time_key`].
pub fn after_time_key(d: Dialect, key: &str) -> String {
    match d {
        Dialect::DuckDb => format!("substr({key}, 16)"),
        Dialect::ClickHouse => format!("substring({key}, 16)"),
    }
}

/// The filtered events an insight reads: `columns` computed per row from the
/// raw event, plus `person` when asked for. An event's identity is its user
/// id, else its anonymous id; its person is the user that identity was
/// linked to (by identify or alias), else the identity itself. A user id is
/// looked up too: PostHog's server libraries send a visitor's distinct id
/// as the user id before identify links it, and an alias's previous id is
/// one person with its new id, as PostHog and Mixpanel merge them. Rows come from
/// `events` unless [`Source::from`] names other rows with the project and
/// identity columns.
///
/// Aliases start with `x_` so they never shadow a column (ClickHouse lets an
/// alias replace a column name anywhere in a query).
#[derive(Debug, Clone)]
pub struct Source {
    pub dialect: Dialect,
    pub project_id: i64,
    pub conditions: Vec<Sql>,
    pub columns: Vec<(&'static str, Sql)>,
    pub person: bool,
    pub table: Option<Sql>,
}

impl Source {
    pub fn new(dialect: Dialect, project_id: i64) -> Source {
        Source { dialect, project_id, conditions: Vec::new(), columns: Vec::new(), person: false, table: None }
    }

    /// Reads `rows` (a relation, e.g. a wrapped `SELECT`) instead of `events`.
    pub fn from(mut self, rows: Sql) -> Source {
        self.table = Some(rows);
        self
    }

    pub fn column(mut self, alias: &'static str, expr: Sql) -> Source {
        self.columns.push((alias, expr));
        self
    }

    pub fn filter(mut self, condition: Sql) -> Source {
        self.conditions.push(condition);
        self
    }

    /// Only events with `from <= time < to` (either bound optional).
    pub fn between(self, from_ms: Option<i64>, to_ms: Option<i64>) -> Source {
        let d = self.dialect;
        self.filters(time_range(d, from_ms, to_ms))
    }

    pub fn filters(mut self, conditions: impl IntoIterator<Item = Sql>) -> Source {
        self.conditions.extend(conditions);
        self
    }

    pub fn with_person(mut self) -> Source {
        self.person = true;
        self
    }

    /// `(SELECT ...)`, usable after `FROM`.
    pub fn render(&self) -> Sql {
        let d = self.dialect;
        let mut select: Vec<Sql> =
            self.columns.iter().map(|(alias, expr)| expr.clone().raw(&format!(" AS {alias}"))).collect();
        if self.person {
            select.push(Sql::new("anonymous_id"));
            select.push(Sql::new("user_id"));
            if d == Dialect::ClickHouse {
                select.push(Sql::new("ifNull(coalesce(user_id, anonymous_id), '') AS anon_key"));
            }
        }
        if select.is_empty() {
            select.push(Sql::new("1 AS x_one"));
        }
        let mut conditions = vec![Sql::new("project_id = ").int(self.project_id)];
        conditions.extend(self.conditions.iter().map(|c| c.clone().wrap()));
        let rows = Sql::new("SELECT ")
            .push(Sql::join(select, ", "))
            .raw(" FROM ")
            .push(self.table.clone().map_or(Sql::new("events"), |rows| rows.raw(" t")))
            .raw(" WHERE ")
            .push(Sql::join(conditions, " AND "));
        if !self.person {
            return rows.wrap();
        }
        let aliases: Vec<&str> = self.columns.iter().map(|(a, _)| *a).collect();
        match d {
            Dialect::DuckDb => {
                let list: String = aliases.iter().map(|a| format!("r.{a}, ")).collect();
                Sql::new(format!("(SELECT {list}coalesce(i.linked_user, r.user_id, r.anonymous_id) AS person FROM "))
                    .push(rows.wrap())
                    .raw(" r LEFT JOIN (SELECT anonymous_id AS anon_key, user_id AS linked_user FROM identities WHERE project_id = ")
                    .int(self.project_id)
                    .raw(") i ON i.anon_key = coalesce(r.user_id, r.anonymous_id))")
            }
            Dialect::ClickHouse => {
                let list: String = aliases.iter().map(|a| format!("{a}, ")).collect();
                Sql::new(format!(
                    "(SELECT {list}coalesce(nullIf(linked_user, ''), user_id, anonymous_id) AS person FROM "
                ))
                .push(rows.wrap())
                .raw(&format!(
                    " ANY LEFT JOIN (SELECT anonymous_id AS anon_key, {CLICKHOUSE_FIRST_LINK} AS linked_user \
                         FROM identities WHERE project_id = "
                ))
                .int(self.project_id)
                .raw(" GROUP BY anonymous_id) USING (anon_key))")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_flags_are_scoped_for_clickhouse() {
        assert_eq!(scoped_flags("(?i)pro"), "(?i:pro)");
        assert_eq!(scoped_flags("(?i)^a|b$"), "(?i:^a|b$)");
        assert_eq!(scoped_flags("(?is-U)x"), "(?is-U:x)");
        for kept in ["pro", "(?i:pro)", "(?P<n>x)", "(?)x", "a(?i)b", "(?i"] {
            assert_eq!(scoped_flags(kept), kept);
        }
    }

    #[test]
    fn params_follow_the_text_order() {
        let s = Sql::new("a = ").text("x").raw(" AND ").push(Sql::new("b = ").int(2)).wrap();
        assert_eq!(s.text, "(a = ? AND b = ?)");
        assert_eq!(s.params, vec![Param::Text("x".into()), Param::Int(2)]);
    }

    #[test]
    fn duckdb_joins_a_bounded_number_of_lists_per_statement() {
        let list = |n: i64| {
            let expr = Sql::new("f(").text("key").raw(")");
            in_list(Dialect::DuckDb, expr, (0..n).map(|i| Sql::default().int(i)))
        };
        let conds = Sql::join((0..MAX_JOINED_LISTS + 2).map(|_| list(5)).chain([list(4)]), " AND ");
        let statement = Sql::new("SELECT ").int(-1).raw(" WHERE ").push(conds.wrap()).select(&[]);
        let sql = &statement.sql;
        assert_eq!(sql.matches("f(?) IN (?, ?, ?, ?, ?)").count(), MAX_JOINED_LISTS, "{sql}");
        assert_eq!(sql.matches("list_position([?, ?, ?, ?, ?], f(?)) IS NOT NULL").count(), 2, "{sql}");
        assert!(sql.ends_with(" AND f(?) IN (?, ?, ?, ?))"), "a short list is never joined: {sql}");
        assert_eq!(sql.matches('?').count(), statement.params.len());
        // The params follow the rewritten text: the items of a tested list
        // come before its expression's key.
        let joined: Vec<Param> = std::iter::once(Param::Text("key".into())).chain((0..5).map(Param::Int)).collect();
        let tested: Vec<Param> = (0..5).map(Param::Int).chain([Param::Text("key".into())]).collect();
        let mut expected = vec![Param::Int(-1)];
        for i in 0..MAX_JOINED_LISTS + 2 {
            expected.extend(if i < MAX_JOINED_LISTS { joined.clone() } else { tested.clone() });
        }
        expected.extend(std::iter::once(Param::Text("key".into())).chain((0..4).map(Param::Int)));
        assert_eq!(statement.params, expected);
        let few = Sql::join((0..MAX_JOINED_LISTS as i64).map(|_| list(9)), " OR ").select(&[]).sql;
        assert!(!few.contains("list_position"), "{few}");
        let clickhouse = in_list(Dialect::ClickHouse, Sql::new("x"), (0..9).map(|i| Sql::default().int(i)));
        assert!(clickhouse.lists.is_empty());
    }

    #[test]
    fn property_keys_are_bound_and_pointer_escaped() {
        let s = property(Dialect::DuckDb, "a/b~c'");
        assert_eq!(s.params, vec![Param::Text("/a~1b~0c'".into())]);
        assert!(!s.text.contains('\''));
        let s = property(Dialect::ClickHouse, "x'); DROP TABLE events; --");
        assert_eq!(s.params.len(), 2);
        assert!(!s.text.contains("DROP"));
    }
}
