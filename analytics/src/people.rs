//! People: the list of identified users with search and trait filters, and
//! one person's profile with their event timeline (anonymous events before
//! they identified included).
//!
//! Trait filters are evaluated here, on the stored traits, with the same
//! operators as event filters (`traits.<key>`); the stores only list people.
//! A `cohort` filter applies a saved cohort's trait filters the same way.

use crate::cohorts::{self, Rule, COHORT_FIELD};
use crate::fields::{Filter, Op};
use crate::sql::{self, Source, Sql};
use crate::time::rfc3339;
use crate::{bounded, cells, AnalyticsError, Ask};
use leanloop_store::{Cell, ColumnKind, Dialect, CLICKHOUSE_FIRST_LINK};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const TRAIT_PREFIX: &str = "traits.";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeopleQuery {
    /// Part of the user id or of any trait value (case-insensitive).
    pub search: Option<String>,
    /// Conditions on traits: `{"field": "traits.plan", "op": "eq", "value": "pro"}`,
    /// or membership of saved cohorts: `{"field": "cohort", "op": "eq", "value": 3}`.
    #[serde(default)]
    #[schemars(length(max = crate::fields::MAX_FILTERS))]
    pub filters: Vec<Filter>,
    /// Default 100, at most 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<usize>,
    #[serde(default)]
    #[schemars(range(max = i64::MAX))]
    pub offset: usize,
    /// Walks every person matching once, in user id order, however people
    /// change during the walk: the people whose user id sorts after this
    /// one (`""` for the first page, then the answer's `next`). Not with
    /// `offset`.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Person {
    pub user_id: String,
    pub traits: Value,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct PeopleResult {
    /// People matching, before `limit` and `offset`.
    pub total: u64,
    /// Most recently seen first; in user id order with `after`.
    pub people: Vec<Person>,
    /// With `after`, while more people follow: the `after` of the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A trait condition, checked in Rust against the stored JSON.
pub(crate) struct TraitCheck {
    key: String,
    op: Op,
    values: Vec<String>,
    /// Values that also match by value, as they do on events.
    floats: Vec<f64>,
    number: Option<f64>,
    pattern: Option<regex::Regex>,
}

impl TraitCheck {
    pub(crate) fn new(f: &Filter, at: &str) -> Result<TraitCheck, AnalyticsError> {
        let key = f.field.strip_prefix(TRAIT_PREFIX).filter(|k| !k.is_empty()).ok_or_else(|| {
            AnalyticsError::invalid(format!("{at}.field"), format!("`{at}.field` must be `traits.<name>`"))
        })?;
        let value_at = format!("{at}.value");
        let invalid = |what: &str| AnalyticsError::invalid(&value_at, format!("`{value_at}` {what}"));
        // What is not used is refused rather than dropped: a value where none
        // is taken, a list where one is; the rest reads as filters on events do.
        let values: Vec<String> = match (&f.value, f.op) {
            (None, Op::IsSet | Op::IsNotSet) => Vec::new(),
            (Some(_), Op::IsSet | Op::IsNotSet) => return Err(invalid("takes no value with this operator")),
            (Some(Value::Array(_)), op) if !matches!(op, Op::Eq | Op::Neq) => {
                return Err(invalid("takes one value with this operator"))
            }
            _ => f.values(&value_at)?,
        };
        let number = match f.op {
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => Some(
                f.value
                    .as_ref()
                    .and_then(Value::as_f64)
                    .ok_or_else(|| AnalyticsError::invalid(&value_at, format!("`{value_at}` must be a number")))?,
            ),
            _ => None,
        };
        let pattern = match f.op {
            Op::Regex | Op::NotRegex => Some(crate::re2::compile(&values[0], &value_at)?),
            _ => None,
        };
        Ok(TraitCheck { key: key.to_owned(), op: f.op, values, floats: f.floats(), number, pattern })
    }

    pub(crate) fn matches(&self, traits: &Value) -> bool {
        let found = traits.get(&self.key).filter(|v| !v.is_null());
        let text = found.map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        // Read as filters on events read a property.
        let num = found.and_then(sql::number_of);
        let has = |t: &str| self.values.iter().any(|v| v == t) || num.is_some_and(|n| self.floats.contains(&n));
        let compare = |f: fn(f64, f64) -> bool| num.zip(self.number).is_some_and(|(a, b)| f(a, b));
        let matched = |t: &str| self.pattern.as_ref().is_some_and(|p| p.is_match(t));
        match (self.op, text.as_deref()) {
            (Op::IsSet, t) => t.is_some(),
            (Op::IsNotSet, t) => t.is_none(),
            (Op::Eq, Some(t)) => has(t),
            (Op::Neq, t) => t.is_none_or(|t| !has(t)),
            (Op::Contains, Some(t)) => t.contains(&self.values[0]),
            (Op::NotContains, t) => t.is_none_or(|t| !t.contains(&self.values[0])),
            (Op::Regex, Some(t)) => matched(t),
            (Op::NotRegex, t) => t.is_none_or(|t| !matched(t)),
            (Op::Gt, _) => compare(|a, b| a > b),
            (Op::Gte, _) => compare(|a, b| a >= b),
            (Op::Lt, _) => compare(|a, b| a < b),
            (Op::Lte, _) => compare(|a, b| a <= b),
            (_, None) => false,
        }
    }
}

/// A people-list filter: on traits, or membership of cohorts.
enum PersonCheck {
    Trait(TraitCheck),
    Cohorts { rules: Vec<Rule>, negate: bool },
}

impl PersonCheck {
    fn new(ask: &Ask, f: &Filter, at: &str) -> Result<PersonCheck, AnalyticsError> {
        if f.field != COHORT_FIELD {
            return TraitCheck::new(f, at).map(PersonCheck::Trait);
        }
        let (ids, negate) = cohorts::named(f, at)?;
        let value_at = format!("{at}.value");
        let rules =
            ids.into_iter().map(|id| ask.cohorts.rule(ask.project_id, id, &value_at)).collect::<Result<_, _>>()?;
        Ok(PersonCheck::Cohorts { rules, negate })
    }

    fn matches(&self, traits: &Value) -> bool {
        match self {
            PersonCheck::Trait(check) => check.matches(traits),
            PersonCheck::Cohorts { rules, negate } => rules.iter().any(|r| r.matches(traits)) != *negate,
        }
    }
}

/// A stored person: id, traits text, first and last seen (ms).
type StoredPerson = (String, String, i64, i64);

/// Every stored person of the project, or the one `user_id` names. An id
/// linked to a user who is a stored person (an anonymous visitor given
/// traits, an alias's previous id) is part of that user, who took its
/// traits when it was linked: it is not a person of its own in the list,
/// unless it holds a trait the user lacks. Links name a final id, so one
/// lookup is the whole chain, as events are stitched; links in a loop
/// stored by an earlier version (A to B and B to A) leave both people of
/// their own.
pub(crate) fn stored_people(ask: &Ask, user_id: Option<&str>) -> Result<Vec<StoredPerson>, AnalyticsError> {
    let rows = people_rows(ask, user_id)?;
    if user_id.is_some() {
        return Ok(rows);
    }
    let links = links_between_people(ask)?;
    if links.is_empty() {
        return Ok(rows);
    }
    let traits: std::collections::HashMap<&str, &str> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    // Hidden only when nothing is lost: each trait it has, its user has
    // (links stored before traits were merged at the link, or traits it
    // was given after, keep it a person of its own).
    let part = |(id, own): (&str, &str)| {
        let Some(to) = links.get(id).filter(|to| !links.contains_key(to.as_str())) else { return false };
        traits.get(to.as_str()).is_some_and(|theirs| nothing_more(own, theirs))
    };
    let parts: std::collections::HashSet<String> =
        rows.iter().filter(|r| part((&r.0, &r.1))).map(|r| r.0.clone()).collect();
    Ok(rows.into_iter().filter(|r| !parts.contains(&r.0)).collect())
}

/// Whether traits `own` name no trait that traits `theirs` lack (both as
/// stored text): folded into `theirs`, nothing of `own` is hidden.
fn nothing_more(own: &str, theirs: &str) -> bool {
    let theirs = leanloop_store::traits::object(theirs);
    leanloop_store::traits::object(own).keys().all(|k| theirs.contains_key(k))
}

/// The stored person `user_id` (itself a stored person, with `traits`) is
/// part of, by the rule of [`stored_people`], if any.
fn folded_into(ask: &Ask, user_id: &str, traits: &str) -> Result<Option<String>, AnalyticsError> {
    let Some(owner) = ask.store.identity(ask.project_id, user_id)?.filter(|o| o != user_id) else { return Ok(None) };
    if ask.store.identity(ask.project_id, &owner)?.is_some() {
        return Ok(None);
    }
    let Some(theirs) = people_rows(ask, Some(&owner))?.pop() else { return Ok(None) };
    Ok(nothing_more(traits, &theirs.1).then_some(owner))
}

/// Each stored person's id linked to another id, and the user it was
/// linked to first.
fn links_between_people(ask: &Ask) -> Result<std::collections::HashMap<String, String>, AnalyticsError> {
    let people = Sql::new("(SELECT user_id FROM users WHERE project_id = ").int(ask.project_id).raw(")");
    let sql = match ask.dialect() {
        Dialect::DuckDb => Sql::new("SELECT anonymous_id, user_id FROM identities WHERE project_id = ")
            .int(ask.project_id)
            .raw(" AND anonymous_id IN ")
            .push(people),
        // ClickHouse keeps every link made; the first one counts.
        Dialect::ClickHouse => {
            Sql::new(format!("SELECT anonymous_id, {CLICKHOUSE_FIRST_LINK} FROM identities WHERE project_id = "))
                .int(ask.project_id)
                .raw(" AND anonymous_id IN ")
                .push(people)
                .raw(" GROUP BY anonymous_id")
        }
    };
    Ok(ask
        .rows(sql.select(&[ColumnKind::Text, ColumnKind::Text]))?
        .into_iter()
        .filter_map(|r| {
            let mut next = cells(r);
            Some((next().text()?, next().text()?))
        })
        .filter(|(from, to)| from != to)
        .collect())
}

/// The people table's rows: the project's, or the one `user_id` names.
fn people_rows(ask: &Ask, user_id: Option<&str>) -> Result<Vec<StoredPerson>, AnalyticsError> {
    let sql = match ask.dialect() {
        Dialect::DuckDb => {
            let mut s = Sql::new(
                "SELECT user_id, traits, epoch_ms(first_seen), epoch_ms(last_seen) FROM users WHERE project_id = ",
            )
            .int(ask.project_id);
            if let Some(id) = user_id {
                s = s.raw(" AND user_id = ").text(id);
            }
            s
        }
        // One row per update: the newest traits win.
        Dialect::ClickHouse => {
            let mut s = Sql::new(
                "SELECT user_id, argMax(traits, version), min(first_seen_ms), max(last_seen_ms) FROM users WHERE project_id = ",
            )
            .int(ask.project_id);
            if let Some(id) = user_id {
                s = s.raw(" AND user_id = ").text(id);
            }
            s.raw(" GROUP BY user_id")
        }
    };
    let rows = ask.rows(sql.select(&[ColumnKind::Text, ColumnKind::Text, ColumnKind::Int, ColumnKind::Int]))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut next = cells(r);
            (next().text().unwrap_or_default(), next().text().unwrap_or_default(), next().int(), next().int())
        })
        .collect())
}

fn person((user_id, traits, first, last): (String, String, i64, i64)) -> Person {
    Person {
        user_id,
        traits: serde_json::from_str(&traits).unwrap_or(Value::Null),
        first_seen: rfc3339(first),
        last_seen: rfc3339(last),
    }
}

pub fn people(ask: &Ask, q: &PeopleQuery) -> Result<PeopleResult, AnalyticsError> {
    let limit = bounded(q.limit, 100, 1000, "limit")?;
    // As the schema says: a 64-bit signed integer, as most clients' are.
    if q.offset > i64::MAX as usize {
        return Err(AnalyticsError::invalid("offset", format!("`offset`: at most {}", i64::MAX)));
    }
    if q.filters.len() > crate::fields::MAX_FILTERS {
        let most = crate::fields::MAX_FILTERS;
        return Err(AnalyticsError::invalid("filters", format!("`filters`: at most {most} filters")));
    }
    let checks = q
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| PersonCheck::new(ask, f, &format!("filters[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let search = q.search.as_deref().filter(|s| !s.is_empty()).map(str::to_lowercase);
    let mut rows = stored_people(ask, None)?;
    // Each person's traits are parsed to be checked, then dropped: only the
    // page's are kept as values (parsed, they take several times their
    // text, and a project may have millions of people).
    let mut matching: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            let (user_id, traits, ..) = &rows[i];
            let traits: Value = serde_json::from_str(traits).unwrap_or(Value::Null);
            let found = search.as_deref().is_none_or(|s| {
                user_id.to_lowercase().contains(s) || trait_texts(&traits).any(|t| t.to_lowercase().contains(s))
            });
            found && checks.iter().all(|c| c.matches(&traits))
        })
        .collect();
    let total = matching.len() as u64;
    match &q.after {
        Some(_) if q.offset > 0 => {
            return Err(AnalyticsError::invalid("offset", "`offset` is not taken with `after`"));
        }
        Some(after) => {
            matching.retain(|&i| rows[i].0 > *after);
            matching.sort_by(|&a, &b| rows[a].0.cmp(&rows[b].0));
        }
        // Newest seen first.
        None => matching.sort_by(|&a, &b| rows[b].3.cmp(&rows[a].3).then_with(|| rows[a].0.cmp(&rows[b].0))),
    }
    let more = matching.len() > q.offset.saturating_add(limit);
    let people: Vec<Person> =
        matching.into_iter().skip(q.offset).take(limit).map(|i| person(std::mem::take(&mut rows[i]))).collect();
    let next = q.after.as_ref().filter(|_| more).and(people.last()).map(|p| p.user_id.clone());
    Ok(PeopleResult { total, people, next })
}

/// Trait values as text, top level.
fn trait_texts(traits: &Value) -> impl Iterator<Item = String> + '_ {
    traits.as_object().into_iter().flat_map(|m| m.values()).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct TimelineEvent {
    pub uuid: String,
    pub name: String,
    pub timestamp: String,
    pub session_id: Option<String>,
    pub path: Option<String>,
    pub release: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Profile {
    #[serde(flatten)]
    pub person: Person,
    /// Anonymous ids identified as this person.
    pub anonymous_ids: Vec<String>,
    /// Newest first, at most `limit`.
    pub events: Vec<TimelineEvent>,
}

/// A person's profile, or `None` when no such person is stored.
pub fn profile(ask: &Ask, user_id: &str, limit: usize) -> Result<Option<Profile>, AnalyticsError> {
    let d = ask.dialect();
    bounded(Some(limit), 100, 1000, "limit")?;
    let Some(stored) = stored_people(ask, Some(user_id))?.into_iter().next() else {
        // An id never given traits of its own (a visitor who only sent
        // events) but linked to a stored person is that person, as PostHog
        // finds a person by any of their ids.
        return match ask.store.identity(ask.project_id, user_id)?.filter(|owner| owner != user_id) {
            Some(owner) if !people_rows(ask, Some(&owner))?.is_empty() => profile(ask, &owner, limit),
            _ => Ok(None),
        };
    };
    // A person the list folds into another (see `stored_people`) answers
    // with that one's profile, as the list shows them.
    if let Some(owner) = folded_into(ask, user_id, &stored.1)? {
        return profile(ask, &owner, limit);
    }
    // Not their own id, which ClickHouse may link to itself (a loop undone).
    let linked = Sql::new("SELECT anonymous_id FROM identities WHERE project_id = ")
        .int(ask.project_id)
        .raw(" AND user_id = ")
        .text(user_id)
        .raw(" AND anonymous_id != ")
        .text(user_id);
    // ClickHouse keeps every link made; an id is this person's when its
    // first one is (DuckDB keeps only that one).
    let linked = match d {
        Dialect::DuckDb => linked,
        Dialect::ClickHouse => Sql::new("SELECT anonymous_id FROM identities WHERE project_id = ")
            .int(ask.project_id)
            .raw(" AND anonymous_id IN (")
            .push(linked)
            .raw(&format!(") GROUP BY anonymous_id HAVING {CLICKHOUSE_FIRST_LINK} = "))
            .text(user_id),
    };
    let anonymous_ids: Vec<String> = ask
        .rows(linked.raw(" ORDER BY anonymous_id").select(&[ColumnKind::Text]))?
        .into_iter()
        .filter_map(|mut r| r.pop().and_then(Cell::text))
        .collect();
    let src = Source::new(d, ask.project_id)
        .column("x_ts", sql::timestamp_ms(d))
        .column("x_u", sql::uuid_text(d))
        .column("x_n", Sql::new("name"))
        .column("x_s", Sql::new("session_id"))
        .column("x_p", Sql::new("path"))
        .column("x_r", Sql::new("release"))
        .filter(of_person(user_id, &anonymous_ids));
    let rows = ask.rows(
        Sql::new("SELECT x_u, x_n, x_ts, x_s, x_p, x_r FROM ")
            .push(src.render())
            .raw(&format!(" ORDER BY x_ts DESC, x_u LIMIT {limit}"))
            .select(&[
                ColumnKind::Text,
                ColumnKind::Text,
                ColumnKind::Int,
                ColumnKind::Text,
                ColumnKind::Text,
                ColumnKind::Text,
            ]),
    )?;
    let events = rows
        .into_iter()
        .map(|r| {
            let mut next = cells(r);
            TimelineEvent {
                uuid: next().text().unwrap_or_default(),
                name: next().text().unwrap_or_default(),
                timestamp: rfc3339(next().int()),
                session_id: next().text(),
                path: next().text(),
                release: next().text(),
            }
        })
        .collect();
    Ok(Some(Profile { person: person(stored), anonymous_ids, events }))
}

/// Events of a person, as insights stitch them: those whose id (user id,
/// else anonymous id) is theirs or one of the ids linked to them. An event
/// with another user's id stays that user's, whichever device sent it.
fn of_person(user_id: &str, anonymous_ids: &[String]) -> Sql {
    let ids = std::iter::once(user_id).chain(anonymous_ids.iter().map(String::as_str));
    Sql::new("coalesce(user_id, anonymous_id) IN (")
        .push(Sql::join(ids.map(|id| Sql::default().text(id)), ", "))
        .raw(")")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(filter: Value) -> TraitCheck {
        TraitCheck::new(&serde_json::from_value(filter).unwrap(), "filters[0]").unwrap()
    }

    #[test]
    fn traits_read_as_numbers_as_event_properties_do() {
        let traits =
            json!({"s8": " 8", "plus4": "+4", "inf": "inf", "nan": "NaN", "ten": 10, "text": "8", "exp": "-1.5e3"});
        let matches = |field: &str, op: &str, value: Value| {
            check(json!({"field": format!("traits.{field}"), "op": op, "value": value})).matches(&traits)
        };
        for (field, value) in [("s8", 5), ("plus4", 3), ("inf", 1), ("nan", -1)] {
            assert!(!matches(field, "gt", json!(value)), "{field}");
        }
        assert!(matches("text", "gt", json!(5)));
        assert!(matches("exp", "lt", json!(-1000)));
        assert!(matches("ten", "eq", json!(10.0)), "a fraction matches by value");
        assert!(matches("ten", "eq", json!(10)));
        assert!(!matches("ten", "neq", json!(1e1)));
        assert!(matches("text", "eq", json!(8)), "a whole number matches by its text");
    }
}
