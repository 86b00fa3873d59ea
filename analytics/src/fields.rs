//! What a query may filter or break down by: event columns by name, and any
//! top-level property as `properties.<key>` (the rest of the text is the key,
//! dots and quotes included). Filters compile to SQL with every value bound.

use crate::cohorts::{self, COHORT_FIELD};
use crate::sql::{self, Sql};
use crate::{AnalyticsError, Ask};
use leanloop_store::Dialect;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Event columns a query may name. `ip` is left out on purpose.
pub const COLUMNS: &[&str] = &[
    "name",
    "kind",
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
    "library",
];

const PROPERTY_PREFIX: &str = "properties.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Column(&'static str),
    Property(String),
}

impl Field {
    /// `at` names the request field for error messages.
    pub fn parse(text: &str, at: &str) -> Result<Field, AnalyticsError> {
        if let Some(key) = text.strip_prefix(PROPERTY_PREFIX) {
            if key.is_empty() {
                return Err(AnalyticsError::invalid(
                    at,
                    format!("`{at}`: `properties.` needs a property name after it"),
                ));
            }
            // The store reads the name on every row it looks at: one of
            // 100 KB kept a question busy for half a minute.
            if key.len() > MAX_PROPERTY_NAME_BYTES {
                return Err(AnalyticsError::invalid(
                    at,
                    format!("`{at}`: a property name takes at most {MAX_PROPERTY_NAME_BYTES} bytes"),
                ));
            }
            return Ok(Field::Property(key.to_owned()));
        }
        COLUMNS.iter().find(|&&c| c == text).map(|&c| Field::Column(c)).ok_or_else(|| {
            AnalyticsError::invalid(
                at,
                format!(
                    "`{at}`: unknown field `{text}`; use one of {} or `properties.<name>` (filters also take `cohort`)",
                    COLUMNS.join(", ")
                ),
            )
        })
    }

    /// The field's value as text (NULL when unset).
    pub fn text(&self, d: Dialect) -> Sql {
        match self {
            Field::Column(c) => Sql::new(*c),
            Field::Property(key) => sql::property(d, key),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Neq,
    Contains,
    NotContains,
    Regex,
    NotRegex,
    Gt,
    Gte,
    Lt,
    Lte,
    IsSet,
    IsNotSet,
}

impl Op {
    /// The name a query writes.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// One condition: `{"field": "browser", "op": "eq", "value": "Chrome"}`.
/// `eq`/`neq` take a string, number or boolean, or a list of them (any of);
/// `gt`..`lte` a number; `is_set`/`is_not_set` no value. Negations (`neq`,
/// `not_contains`, `not_regex`) also match events where the field is unset.
/// `{"field": "cohort", "op": "eq", "value": 3}` (or `neq`, or a list of
/// ids) keeps events of a saved cohort's members (see `cohorts`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub field: String,
    pub op: Op,
    #[serde(default)]
    pub value: Option<Value>,
}

/// The most filters one list may hold.
pub const MAX_FILTERS: usize = 50;
/// The longest property name a query may name.
pub const MAX_PROPERTY_NAME_BYTES: usize = 1024;

/// How the most values an `eq`/`neq` list may hold.
const MAX_LIST: usize = 1000;

impl Filter {
    /// Compiles to a condition; `at` is where the filter sits in the request
    /// (e.g. `filters[2]`).
    pub fn compile(&self, d: Dialect, at: &str) -> Result<Sql, AnalyticsError> {
        let field = Field::parse(&self.field, &format!("{at}.field"))?;
        let expr = field.text(d);
        let value_at = format!("{at}.value");
        let text = || -> Result<String, AnalyticsError> {
            match &self.value {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(AnalyticsError::invalid(
                    &value_at,
                    format!("`{value_at}` must be a string for `{}`", self.op.name()),
                )),
            }
        };
        let number = || -> Result<f64, AnalyticsError> {
            match &self.value {
                Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()).ok_or(()),
                _ => Err(()),
            }
            .map_err(|_| AnalyticsError::invalid(&value_at, format!("`{value_at}` must be a number")))
        };
        let negate = |cond: Sql| Sql::new("(").push(expr.clone()).raw(" IS NULL OR NOT ").push(cond.wrap()).raw(")");
        Ok(match self.op {
            Op::Eq | Op::Neq => {
                let values = self.values(&value_at)?;
                let mut any = sql::in_list(d, expr.clone(), values.iter().map(|v| Sql::default().text(v)));
                // A fraction or exponent is written differently by each store
                // (`1e+20`, `100000000000000000000.0`): such values also match
                // by value. Whole numbers keep to their text, exact past 2^53.
                let floats = self.floats();
                if !floats.is_empty() {
                    let floats = floats.iter().map(|&f| Sql::default().float(d, f));
                    let by_value = sql::in_list(d, sql::number(d, expr.clone()), floats);
                    // Text that is no number gives NULL there, and `false OR
                    // NULL` would keep the row out of `neq` too on DuckDB
                    // (ClickHouse's `NULL IN` is 0).
                    let by_value = match d {
                        Dialect::DuckDb => Sql::new("coalesce(").push(by_value).raw(", false)"),
                        Dialect::ClickHouse => by_value,
                    };
                    any = Sql::new("(").push(any).raw(" OR ").push(by_value).raw(")");
                }
                if self.op == Op::Eq {
                    any
                } else {
                    negate(any)
                }
            }
            Op::Contains => sql::contains(d, expr, &text()?),
            Op::NotContains => negate(sql::contains(d, expr.clone(), &text()?)),
            Op::Regex | Op::NotRegex => {
                let pattern = text()?;
                check_regex(&pattern, &value_at)?;
                let matches = sql::regex(d, expr.clone(), &pattern);
                if self.op == Op::Regex {
                    matches
                } else {
                    negate(matches)
                }
            }
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let op = match self.op {
                    Op::Gt => " > ",
                    Op::Gte => " >= ",
                    Op::Lt => " < ",
                    _ => " <= ",
                };
                sql::number(d, expr).raw(op).float(d, number()?)
            }
            // A value here would be ignored: refused, as for people's traits.
            Op::IsSet | Op::IsNotSet if self.value.is_some() => {
                return Err(AnalyticsError::invalid(
                    &value_at,
                    format!("`{value_at}` takes no value with this operator"),
                ))
            }
            Op::IsSet => expr.raw(" IS NOT NULL"),
            Op::IsNotSet => expr.raw(" IS NULL"),
        })
    }

    /// The value, or each value of a list.
    /// The values that are numbers with a fraction or exponent, which also
    /// match by value (see [`Op::Eq`]'s condition).
    pub(crate) fn floats(&self) -> Vec<f64> {
        self.listed().filter(|v| v.is_f64()).filter_map(Value::as_f64).collect()
    }

    fn listed(&self) -> impl Iterator<Item = &Value> {
        let items = match &self.value {
            Some(Value::Array(items)) => &items[..],
            Some(v) => std::slice::from_ref(v),
            None => &[],
        };
        items.iter()
    }

    /// The value(s) of `eq`/`neq` (or the one value of another operator) as
    /// the text stored for them.
    pub(crate) fn values(&self, at: &str) -> Result<Vec<String>, AnalyticsError> {
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
            _ => None,
        };
        let bad = || AnalyticsError::invalid(at, format!("`{at}` must be a string, number, boolean or a list of them"));
        match &self.value {
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_LIST => {
                items.iter().map(|v| scalar(v).ok_or_else(bad)).collect()
            }
            Some(Value::Array(_)) => {
                Err(AnalyticsError::invalid(at, format!("`{at}` must list from 1 to {MAX_LIST} values")))
            }
            Some(v) => scalar(v).map(|s| vec![s]).ok_or_else(bad),
            None => Err(bad()),
        }
    }
}

/// Patterns run on the stores' RE2 engines: refused here when RE2 would
/// refuse them there.
fn check_regex(pattern: &str, at: &str) -> Result<(), AnalyticsError> {
    crate::re2::compile(pattern, at).map(|_| ())
}

/// Compiles a list of filters found at `at` (e.g. `filters`), cohorts
/// included.
pub fn compile_all(ask: &Ask, filters: &[Filter], at: &str) -> Result<Vec<Sql>, AnalyticsError> {
    if filters.len() > MAX_FILTERS {
        return Err(AnalyticsError::invalid(at, format!("`{at}`: at most {MAX_FILTERS} filters")));
    }
    let compile = |(i, f): (usize, &Filter)| {
        let at = format!("{at}[{i}]");
        match f.field.as_str() {
            COHORT_FIELD => cohorts::condition(ask, f, &at),
            _ => f.compile(ask.dialect(), &at),
        }
    };
    filters.iter().enumerate().map(compile).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use leanloop_store::Param;

    #[test]
    fn floats_reach_clickhouse_as_exponents_and_set_tests_take_no_value() {
        let f = filter(r#"{"field":"properties.n","op":"gt","value":5e-324}"#);
        let s = f.compile(Dialect::ClickHouse, "filters[0]").unwrap();
        assert!(s.text.ends_with("> toFloat64(?)"), "{}", s.text);
        assert!(s.params.contains(&Param::Text("5e-324".into())), "{:?}", s.params);
        let s = f.compile(Dialect::DuckDb, "filters[0]").unwrap();
        assert!(s.params.contains(&Param::Float(5e-324)));
        let set = filter(r#"{"field":"browser","op":"is_set","value":"x"}"#);
        let err = set.compile(Dialect::DuckDb, "filters[1]").unwrap_err();
        assert!(
            matches!(err, AnalyticsError::InvalidQuery { ref field, .. } if field == "filters[1].value"),
            "{err:?}"
        );
    }

    fn filter(json: &str) -> Filter {
        serde_json::from_str(json).unwrap()
    }

    fn error_field(r: Result<Sql, AnalyticsError>) -> String {
        match r {
            Err(AnalyticsError::InvalidQuery { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_are_bound_never_spliced() {
        let f = filter(r#"{"field": "properties.it's", "op": "eq", "value": ["a'); DROP TABLE events; --", 3]}"#);
        for d in [Dialect::DuckDb, Dialect::ClickHouse] {
            let s = f.compile(d, "filters[0]").unwrap();
            assert!(!s.text.contains("DROP") && !s.text.contains("it's"), "{}", s.text);
            assert!(s.params.contains(&Param::Text("a'); DROP TABLE events; --".into())));
            assert!(s.params.contains(&Param::Text("3".into())));
        }
    }

    #[test]
    fn bad_filters_name_the_field() {
        let d = Dialect::DuckDb;
        assert_eq!(
            error_field(filter(r#"{"field": "colour", "op": "eq", "value": "x"}"#).compile(d, "filters[1]")),
            "filters[1].field"
        );
        assert_eq!(error_field(filter(r#"{"field": "ip", "op": "is_set"}"#).compile(d, "f[0]")), "f[0].field");
        assert_eq!(
            error_field(filter(r#"{"field": "browser", "op": "gt", "value": "x"}"#).compile(d, "f[0]")),
            "f[0].value"
        );
        assert_eq!(
            error_field(filter(r#"{"field": "browser", "op": "regex", "value": "(a"}"#).compile(d, "f[0]")),
            "f[0].value"
        );
        assert_eq!(
            error_field(filter(r#"{"field": "browser", "op": "eq", "value": []}"#).compile(d, "f[0]")),
            "f[0].value"
        );
        assert!(serde_json::from_str::<Filter>(r#"{"field": "browser", "op": "like", "value": "x"}"#).is_err());
    }
}
