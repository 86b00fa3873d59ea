//! How a person's stored traits change, the same on both stores and at the
//! top level, as Segment and PostHog apply them: what `$set_once` sets fills
//! traits the person lacks, what an identify or `$set` sets wins, a trait
//! set to `null` is removed, and an object value replaces the stored one
//! whole (its own `null`s kept), never merged key by key.

use leanloop_core::UserUpdate;
use serde_json::{Map, Value};

/// Applies `updates` (in the order they were made) to `traits`.
pub fn apply(traits: &mut Map<String, Value>, updates: &[&UserUpdate]) {
    // Set-once values fill gaps in what was stored before this batch; the
    // batch's own sets then win over them, as they would have one by one.
    for update in updates {
        for (k, v) in object(&update.traits_once) {
            if !v.is_null() {
                traits.entry(k).or_insert(v);
            }
        }
    }
    for update in updates {
        for (k, v) in object(&update.traits) {
            if v.is_null() {
                traits.remove(&k);
            } else {
                traits.insert(k, v);
            }
        }
    }
}

/// First links made by `updates` (in order; an id linking itself, or
/// linked earlier in the batch, is left out): (project, linked id, user,
/// when).
pub fn first_links(updates: &[UserUpdate]) -> Vec<(i64, &str, &str, i64)> {
    let mut seen = std::collections::HashSet::new();
    updates
        .iter()
        .filter_map(|u| Some((u.project_id, u.anonymous_id.as_deref()?, u.user_id.as_str(), u.seen_at_ms)))
        .filter(|(project, from, to, _)| from != to && seen.insert((*project, *from)))
        .collect()
}

/// What an id linked to a user for the first time brings them, as PostHog
/// merges an anonymous person into the identified one: the id's stored
/// traits (`stored`), with its own updates of the same batch applied, set
/// where the user has none. Merged once, at the link, so a trait the user
/// later removes stays removed.
pub fn merge_linked(traits: &mut Map<String, Value>, stored: Option<&str>, updates: &[&UserUpdate]) {
    let mut linked = stored.map(object).unwrap_or_default();
    apply(&mut linked, updates);
    for (k, v) in linked {
        traits.entry(k).or_insert(v);
    }
}

/// The JSON object `text` holds; empty when it holds something else.
pub fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(traits: Value, once: Value) -> UserUpdate {
        UserUpdate {
            project_id: 1,
            user_id: "u".into(),
            anonymous_id: None,
            traits: traits.to_string(),
            traits_once: once.to_string(),
            seen_at_ms: 0,
        }
    }

    #[test]
    fn values_replace_whole_set_once_fills_gaps_and_null_removes() {
        let mut traits = object(r#"{"address":{"city":"Oslo","zip":"0150"},"plan":"free","first":"a"}"#);
        let updates = [
            update(json!({"address": {"city": "Bergen", "floor": null}}), json!({"first": "b", "source": "ad"})),
            update(json!({"plan": null, "seats": 3}), json!({"source": "seo", "seats": 1})),
        ];
        apply(&mut traits, &updates.iter().collect::<Vec<_>>());
        assert_eq!(
            Value::Object(traits),
            json!({"address": {"city": "Bergen", "floor": null}, "first": "a", "source": "ad", "seats": 3})
        );
    }
}
