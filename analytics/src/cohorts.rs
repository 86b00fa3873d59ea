//! Cohorts: saved people filters (conditions on traits) usable as a filter
//! in every insight and in the people list: `{"field": "cohort", "op": "eq",
//! "value": 3}` keeps the events whose person is one of the cohort's members
//! (as insights stitch them); `neq` keeps everyone else's.
//!
//! Definitions are kept by the caller (the control plane) behind
//! [`CohortBook`]. Members are computed here from the stored people with the
//! people list's own trait checks, written to the store as a numbered
//! version, and read by queries through a subquery naming that version.
//! A version is reused until the definition is edited or the project's
//! people change (and for five minutes at most), so answers are as fresh as
//! the stored people; versions are deleted once no process can be using them.

use crate::fields::{Filter, Op};
use crate::people::{self, TraitCheck};
use crate::sql::Sql;
use crate::{AnalyticsError, Ask};
use leanloop_store::{Dialect, CLICKHOUSE_FIRST_LINK};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The field a filter names to test cohort membership.
pub const COHORT_FIELD: &str = "cohort";

/// How many cohorts one filter may name.
const MAX_PER_FILTER: usize = 20;

/// How long a computed member set is used at most, even when nothing has
/// changed: the bound that lets [`KEEP_FOR_MICROS`] delete old sets safely.
const REUSE_FOR_MICROS: i64 = 5 * 60 * 1_000_000;

/// Member sets older than this are deleted. Every process sharing a store
/// stops using a set after [`REUSE_FOR_MICROS`], and no question runs
/// for the difference, so no set in use is ever deleted.
const KEEP_FOR_MICROS: i64 = 15 * 60 * 1_000_000;

/// How often old member sets are looked for (ClickHouse deletes by
/// mutation, which is worth batching).
const DROP_EVERY: Duration = Duration::from_secs(60);

/// Whether every filter must match, or one is enough.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    #[default]
    All,
    Any,
}

/// A cohort as a caller defines it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CohortDefinition {
    /// 1 to 200 characters.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"\S"))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 2000))]
    pub description: Option<String>,
    /// `all` (default): a person must match every filter; `any`: one.
    #[serde(default, rename = "match")]
    pub matching: Match,
    /// 1 to 50 conditions on traits, as in the people list:
    /// `{"field": "traits.plan", "op": "eq", "value": "pro"}`.
    #[schemars(length(min = 1, max = 50))]
    pub filters: Vec<Filter>,
}

impl CohortDefinition {
    /// Checks the definition; a mistake is a 400 naming the field.
    pub fn check(&self) -> Result<(), AnalyticsError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(AnalyticsError::invalid("name", "`name` must be 1 to 200 characters"));
        }
        if self.description.as_ref().is_some_and(|d| d.chars().count() > 2000) {
            return Err(AnalyticsError::invalid("description", "`description`: at most 2000 characters"));
        }
        self.rule("filters").map(|_| ())
    }

    /// The membership test; `at` names the definition's filters in errors.
    fn rule(&self, at: &str) -> Result<Rule, AnalyticsError> {
        if self.filters.is_empty() || self.filters.len() > 50 {
            return Err(AnalyticsError::invalid(at, format!("`{at}` must hold 1 to 50 filters on traits")));
        }
        let checks = self
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| TraitCheck::new(f, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule { matching: self.matching, checks })
    }
}

/// Whether a person's traits put them in a cohort.
pub(crate) struct Rule {
    matching: Match,
    checks: Vec<TraitCheck>,
}

impl Rule {
    pub(crate) fn matches(&self, traits: &Value) -> bool {
        match self.matching {
            Match::All => self.checks.iter().all(|c| c.matches(traits)),
            Match::Any => self.checks.iter().any(|c| c.matches(traits)),
        }
    }
}

/// A cohort as kept by its owner.
#[derive(Debug, Clone)]
pub struct StoredCohort {
    /// Grows with every edit.
    pub revision: i64,
    pub definition: CohortDefinition,
}

/// Where cohort definitions are kept.
pub trait CohortBook: Send + Sync {
    /// Cohort `id` of the project; `None` when it has no such cohort.
    fn cohort(&self, project_id: i64, id: i64) -> Result<Option<StoredCohort>, AnalyticsError>;
}

/// Definitions kept in memory, for analytics used without a control plane
/// (benchmarks, tests of the query engine).
#[derive(Default)]
pub struct MemoryBook {
    cohorts: Mutex<HashMap<(i64, i64), StoredCohort>>,
}

impl MemoryBook {
    /// Saves (or replaces, as a new revision) cohort `id` of a project.
    pub fn save(&self, project_id: i64, id: i64, definition: CohortDefinition) -> Result<(), AnalyticsError> {
        definition.check()?;
        let mut cohorts = self.cohorts.lock().unwrap_or_else(|p| p.into_inner());
        let revision = cohorts.get(&(project_id, id)).map_or(1, |c| c.revision + 1);
        cohorts.insert((project_id, id), StoredCohort { revision, definition });
        Ok(())
    }
}

impl CohortBook for MemoryBook {
    fn cohort(&self, project_id: i64, id: i64) -> Result<Option<StoredCohort>, AnalyticsError> {
        Ok(self.cohorts.lock().unwrap_or_else(|p| p.into_inner()).get(&(project_id, id)).cloned())
    }
}

/// A computed member set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Version {
    revision: i64,
    people: u64,
    number: i64,
    pub(crate) size: u64,
    dropped_at: Instant,
}

/// Member sets computed by this process, and the definitions' owner.
pub(crate) struct Cohorts {
    book: Arc<dyn CohortBook>,
    /// Held while a set is computed, so one cohort is computed once at a time.
    versions: Mutex<HashMap<(i64, i64), Version>>,
}

impl Cohorts {
    pub(crate) fn new(book: Arc<dyn CohortBook>) -> Cohorts {
        Cohorts { book, versions: Mutex::new(HashMap::new()) }
    }

    /// The cohort's definition, or a 400 at `at` naming the missing id.
    fn stored(&self, project_id: i64, id: i64, at: &str) -> Result<StoredCohort, AnalyticsError> {
        self.book
            .cohort(project_id, id)?
            .ok_or_else(|| AnalyticsError::invalid(at, format!("`{at}`: this project has no cohort {id}")))
    }

    /// Cohort `id`'s membership test, for checking people one by one.
    pub(crate) fn rule(&self, project_id: i64, id: i64, at: &str) -> Result<Rule, AnalyticsError> {
        self.stored(project_id, id, at)?.definition.rule(at)
    }

    /// The member set queries should read now, computing it when the
    /// definition or the people changed since the last one.
    pub(crate) fn current(&self, ask: &Ask, id: i64, at: &str) -> Result<Version, AnalyticsError> {
        let key = (ask.project_id, id);
        let stored = self.stored(ask.project_id, id, at)?;
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the people themselves: a change landing in between
        // makes the next question compute again rather than be missed.
        let people = ask.store.people_revision(ask.project_id)?;
        let now = chrono::Utc::now().timestamp_micros();
        let previous = versions.get(&key).copied();
        let fresh =
            |v: &Version| v.revision == stored.revision && v.people == people && now - v.number < REUSE_FOR_MICROS;
        if let Some(v) = previous.filter(fresh) {
            return Ok(v);
        }
        let rule = stored.definition.rule(at)?;
        // Serves every question for a while: computed to the end, though the
        // one asking now may go away.
        let members: Vec<String> = leanloop_store::asker::unwatched(|| people::stored_people(ask, None))?
            .into_iter()
            .filter(|(_, traits, _, _)| serde_json::from_str(traits).is_ok_and(|t: Value| rule.matches(&t)))
            .map(|(user_id, ..)| user_id)
            .collect();
        // A time in microseconds, above every earlier number of this cohort.
        let number = previous.map_or(0, |v| v.number + 1).max(now);
        ask.store.write_cohort(ask.project_id, id, number, &members)?;
        let dropped_at = match previous {
            Some(v) if v.dropped_at.elapsed() < DROP_EVERY => v.dropped_at,
            _ => {
                ask.store.drop_cohort_versions(ask.project_id, id, number - KEEP_FOR_MICROS)?;
                Instant::now()
            }
        };
        let version = Version { revision: stored.revision, people, number, size: members.len() as u64, dropped_at };
        versions.insert(key, version);
        Ok(version)
    }

    /// Deletes every stored member set of a cohort that no longer exists.
    pub(crate) fn forget(&self, ask: &Ask, id: i64) -> Result<(), AnalyticsError> {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions.remove(&(ask.project_id, id));
        Ok(ask.store.drop_cohort_versions(ask.project_id, id, i64::MAX)?)
    }
}

/// The cohort ids a `cohort` filter names, and whether it is negated.
pub(crate) fn named(f: &Filter, at: &str) -> Result<(Vec<i64>, bool), AnalyticsError> {
    let negate = match f.op {
        Op::Eq => false,
        Op::Neq => true,
        _ => return Err(AnalyticsError::invalid(format!("{at}.op"), format!("`{at}.op`: a cohort is `eq` or `neq`"))),
    };
    let value_at = format!("{at}.value");
    let bad = || {
        AnalyticsError::invalid(
            &value_at,
            format!("`{value_at}` must be a cohort id or a list of 1 to {MAX_PER_FILTER} of them"),
        )
    };
    let ids: Vec<i64> = match &f.value {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_PER_FILTER => {
            items.iter().map(|v| v.as_i64().ok_or_else(bad)).collect::<Result<_, _>>()?
        }
        Some(v) => vec![v.as_i64().ok_or_else(bad)?],
        None => return Err(bad()),
    };
    Ok((ids, negate))
}

/// The condition a `cohort` filter puts on event rows.
pub(crate) fn condition(ask: &Ask, f: &Filter, at: &str) -> Result<Sql, AnalyticsError> {
    let (ids, negate) = named(f, at)?;
    let value_at = format!("{at}.value");
    let mut any = Vec::with_capacity(ids.len());
    for id in ids {
        let version = ask.cohorts.current(ask, id, &value_at)?;
        any.push(of_members(ask.dialect(), ask.project_id, id, version.number));
    }
    let any = Sql::join(any, " OR ");
    // NULL ids make IN answer NULL; a missing id is "not a member".
    let is_member = match ask.dialect() {
        Dialect::DuckDb => Sql::new("coalesce(").push(any).raw(", false)"),
        Dialect::ClickHouse => Sql::new("ifNull(").push(any).raw(", 0)"),
    };
    Ok(if negate { Sql::new("NOT ").push(is_member) } else { is_member })
}

/// Events whose person is a member, stitched as [`crate::sql::Source`]
/// stitches: the event's id (its user id, else its anonymous id) linked to a
/// member, by the link that counts (ClickHouse keeps every link; the first
/// one made wins), or a member's own id when it is linked to no one.
fn of_members(d: Dialect, project_id: i64, cohort_id: i64, version: i64) -> Sql {
    let members = || {
        Sql::new("(SELECT user_id FROM cohort_members WHERE project_id = ")
            .int(project_id)
            .raw(" AND cohort_id = ")
            .int(cohort_id)
            .raw(" AND version = ")
            .int(version)
            .raw(")")
    };
    let linked = match d {
        Dialect::DuckDb => Sql::new("(SELECT anonymous_id FROM identities WHERE project_id = ")
            .int(project_id)
            .raw(" AND user_id IN ")
            .push(members())
            .raw(")"),
        Dialect::ClickHouse => Sql::new("(SELECT anonymous_id FROM identities WHERE project_id = ")
            .int(project_id)
            .raw(&format!(" GROUP BY anonymous_id HAVING {CLICKHOUSE_FIRST_LINK} IN "))
            .push(members())
            .raw(")"),
    };
    let id = "coalesce(user_id, anonymous_id)";
    Sql::new(format!("({id} IN "))
        .push(linked)
        .raw(&format!(" OR ({id} IN "))
        .push(members())
        .raw(&format!(" AND {id} NOT IN (SELECT anonymous_id FROM identities WHERE project_id = "))
        .int(project_id)
        .raw(")))")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: &str) -> Filter {
        serde_json::from_str(json).unwrap()
    }

    fn error_field(r: Result<(Vec<i64>, bool), AnalyticsError>) -> String {
        match r {
            Err(AnalyticsError::InvalidQuery { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cohort_filters_name_ids_with_eq_or_neq() {
        assert_eq!(named(&filter(r#"{"field":"cohort","op":"eq","value":3}"#), "f[0]").unwrap(), (vec![3], false));
        assert_eq!(
            named(&filter(r#"{"field":"cohort","op":"neq","value":[1,2]}"#), "f[0]").unwrap(),
            (vec![1, 2], true)
        );
        assert_eq!(error_field(named(&filter(r#"{"field":"cohort","op":"contains","value":3}"#), "f[0]")), "f[0].op");
        for bad in [r#""3""#, "[]", "1.5", r#"[1,"x"]"#, "null"] {
            let f = filter(&format!(r#"{{"field":"cohort","op":"eq","value":{bad}}}"#));
            assert_eq!(error_field(named(&f, "f[1]")), "f[1].value", "{bad}");
        }
    }

    #[test]
    fn definitions_need_a_name_and_trait_filters() {
        let def = |json: &str| serde_json::from_str::<CohortDefinition>(json).unwrap();
        let field = |d: CohortDefinition| match d.check() {
            Err(AnalyticsError::InvalidQuery { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert!(def(r#"{"name":"Pro","filters":[{"field":"traits.plan","op":"eq","value":"pro"}]}"#).check().is_ok());
        assert_eq!(field(def(r#"{"name":" ","filters":[{"field":"traits.a","op":"is_set"}]}"#)), "name");
        assert_eq!(field(def(r#"{"name":"x","filters":[]}"#)), "filters");
        assert_eq!(field(def(r#"{"name":"x","filters":[{"field":"browser","op":"is_set"}]}"#)), "filters[0].field");
        assert!(serde_json::from_str::<CohortDefinition>(r#"{"name":"x","filters":[],"colour":1}"#).is_err());
        // A value that would be ignored is refused.
        for (op, value) in [
            ("eq", r#"["pro",{"a":1},[1]]"#),
            ("eq", "[]"),
            ("eq", r#"{"a":1}"#),
            ("contains", r#"["a","b"]"#),
            ("is_set", r#""x""#),
            ("eq", "null"),
        ] {
            let d = def(&format!(r#"{{"name":"x","filters":[{{"field":"traits.a","op":"{op}","value":{value}}}]}}"#));
            assert_eq!(field(d), "filters[0].value", "{op} {value}");
        }
    }

    #[test]
    fn any_needs_one_match_and_all_needs_every_one() {
        let def: CohortDefinition = serde_json::from_str(
            r#"{"name":"x","match":"any","filters":[{"field":"traits.plan","op":"eq","value":"pro"},
                {"field":"traits.seats","op":"gt","value":10}]}"#,
        )
        .unwrap();
        let any = def.rule("filters").unwrap();
        let all = CohortDefinition { matching: Match::All, ..def }.rule("filters").unwrap();
        let person = serde_json::json!({"plan": "pro", "seats": 3});
        assert!(any.matches(&person) && !all.matches(&person));
        assert!(all.matches(&serde_json::json!({"plan": "pro", "seats": 30})));
    }
}
