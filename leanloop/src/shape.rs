//! Where a JSON query holds a list in place of an object.
//!
//! serde reads a struct from a JSON array by position as readily as from an
//! object, so `["browser", "eq", "Chrome"]` would pass for a filter that the
//! API documents as an object with named fields. The query type's own JSON
//! schema (the one the OpenAPI document shows) says where objects go; a list
//! found there is refused, naming its place. A question's filters may also
//! list more values in all than its answer can afford to compile: where
//! they pass that bound is named too.

use schemars::JsonSchema;
use serde_json::{Map, Value};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The path (`series[0].filters[1]`) of the first list in `value` where
/// `Q`'s schema has an object, if any.
pub fn misplaced_list<Q: JsonSchema + 'static>(value: &Value) -> Option<String> {
    let schema = schema_of::<Q>();
    let defs = schema.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut path = String::new();
    walk(value, &schema, &defs, &mut path, 0)
}

/// The most values a question's filters may list in all: as many as one
/// list of filters holds (50 lists of at most 1,000 values, `fields.rs`).
/// Every listed value is written into the store's SQL, which the store
/// parses and plans once per series and per compared period (DuckDB: about
/// 18 µs a value): 20 series of 24 lists of 1,000 values took 18–30 s.
pub const MAX_LISTED_VALUES: usize = 50_000;

/// The path (`series[3].filters[0].value`) of the `value` list at which the
/// lists in `value` add up to more than `most` values, if they do.
pub fn too_many_listed(value: &Value, most: usize) -> Option<String> {
    fn walk(value: &Value, path: &mut String, total: &mut usize, most: usize) -> Option<String> {
        let step = |path: &mut String, step: &str, child: &Value, total: &mut usize, listed: bool| {
            let len = path.len();
            path.push_str(step);
            let found = match child {
                Value::Array(items) if listed => {
                    *total += items.len();
                    (*total > most).then(|| path.clone())
                }
                _ => walk(child, path, total, most),
            };
            path.truncate(len);
            found
        };
        match value {
            Value::Array(items) => {
                items.iter().enumerate().find_map(|(i, item)| step(path, &format!("[{i}]"), item, total, false))
            }
            Value::Object(fields) => fields.iter().find_map(|(name, field)| {
                let dot = if path.is_empty() { "" } else { "." };
                step(path, &format!("{dot}{name}"), field, total, name == "value")
            }),
            _ => None,
        }
    }
    walk(value, &mut String::new(), &mut 0, most)
}

/// Each type's schema, made once: a schema is built by walking the type.
fn schema_of<Q: JsonSchema + 'static>() -> Arc<Value> {
    static SCHEMAS: OnceLock<Mutex<HashMap<TypeId, Arc<Value>>>> = OnceLock::new();
    let mut schemas = SCHEMAS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    schemas.entry(TypeId::of::<Q>()).or_insert_with(|| Arc::new(schemars::schema_for!(Q).to_value())).clone()
}

/// References nest no deeper than the query types do; this only stops a
/// recursive type from looping.
const MAX_DEPTH: usize = 64;

fn walk(value: &Value, schema: &Value, defs: &Map<String, Value>, path: &mut String, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    let schema = resolve(schema, defs);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        if let Some(found) = all.iter().find_map(|s| walk(value, s, defs, path, depth + 1)) {
            return Some(found);
        }
    }
    match value {
        Value::Array(items) => {
            if wants_object(schema, defs) {
                return Some(if path.is_empty() { "body".to_owned() } else { path.clone() });
            }
            let each = schema.get("items").filter(|i| i.is_object())?;
            items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, each, defs, path, depth + 1);
                path.truncate(len);
                found
            })
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object)?;
            fields.iter().find_map(|(name, field)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
                let found = properties.get(name).and_then(|s| walk(field, s, defs, path, depth + 1));
                path.truncate(len);
                found
            })
        }
        _ => None,
    }
}

fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    let mut schema = schema;
    for _ in 0..MAX_DEPTH {
        let Some(name) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) else {
            break;
        };
        match defs.get(name) {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// Whether `schema` takes an object and never a list: its `type` names
/// `object` and not `array`, or every alternative of `anyOf`/`oneOf` that
/// is not `null` is such a schema.
fn wants_object(schema: &Value, defs: &Map<String, Value>) -> bool {
    let names = |t: &Value| -> Vec<String> {
        match t {
            Value::String(s) => vec![s.clone()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    };
    if let Some(t) = schema.get("type") {
        let types = names(t);
        return types.iter().any(|t| t == "object") && !types.iter().any(|t| t == "array");
    }
    let alternatives = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array);
    alternatives.is_some_and(|list| {
        let real: Vec<&Value> =
            list.iter().map(|s| resolve(s, defs)).filter(|s| s.get("type") != Some(&Value::from("null"))).collect();
        !real.is_empty() && real.iter().all(|s| wants_object(s, defs))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    struct Filter {
        field: String,
        op: String,
        value: Option<Value>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    struct Query {
        series: Vec<Series>,
        filters: Option<Vec<Filter>>,
        tags: Vec<String>,
        anything: Option<Value>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, JsonSchema)]
    struct Series {
        event: String,
        filters: Vec<Filter>,
    }

    #[test]
    fn listed_values_are_counted_across_the_query_and_the_list_past_the_bound_named() {
        let list = |n: usize| json!({"field": "browser", "op": "eq", "value": vec!["Chrome"; n]});
        let query = json!({
            "series": [{"event": "a", "filters": [list(4), {"field": "os", "op": "eq", "value": "iOS"}]},
                       {"event": "b", "filters": [list(3)]}],
            "filters": [list(2)],
            "values": ["not", "a", "filter", "list"],
        });
        assert_eq!(too_many_listed(&query, 9), None);
        assert_eq!(too_many_listed(&query, 8).as_deref(), Some("series[1].filters[0].value"));
        assert_eq!(too_many_listed(&query, 3).as_deref(), Some("series[0].filters[0].value"));
        assert_eq!(too_many_listed(&json!([[{"value": [1, 2]}]]), 1).as_deref(), Some("[0][0].value"));
    }

    #[test]
    fn a_list_where_an_object_goes_is_named() {
        let find = |v: Value| misplaced_list::<Query>(&v);
        let filter = json!({"field": "browser", "op": "eq", "value": ["Chrome", "Safari"]});
        let good = json!({"series": [{"event": "a", "filters": [filter]}], "filters": [filter], "tags": ["x"],
                          "anything": [[1, 2], {"a": [3]}]});
        assert_eq!(find(good), None, "lists where lists go, and any value where any value goes");
        let positional = json!({"series": [{"event": "a", "filters": [["browser", "eq", "Chrome"]]}], "tags": []});
        assert_eq!(find(positional).as_deref(), Some("series[0].filters[0]"));
        assert_eq!(find(json!({"series": [["a", []]], "tags": []})).as_deref(), Some("series[0]"));
        assert_eq!(find(json!({"series": [], "filters": [["a", "eq", 1]], "tags": []})).as_deref(), Some("filters[0]"));
        assert_eq!(find(json!(["a", []])).as_deref(), Some("body"));
    }
}
