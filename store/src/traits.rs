//! How a person's stored traits change, the same on both stores and at the
//! top level, as Segment and PostHog apply them: what `$set_once` sets fills
//! traits the person lacks, what an identify or `$set` sets wins, a trait
//! set to `null` is removed, and an object value replaces the stored one
//! whole (its own `null`s kept), never merged key by key.

use leanloop_core::UserUpdate;
use serde_json::{Map, Value};

/// Most a person's traits may take as JSON text, as PostHog caps person
/// properties: an update that would take them past it is not applied (its
/// event is stored all the same), so that no one can grow a person without
/// end through the public write key.
pub const MAX_TRAITS_BYTES: usize = 512 * 1024;

/// Applies `updates` (in the order they were made) to `traits`; answers
/// how many were not, for taking them past [`MAX_TRAITS_BYTES`].
pub fn apply(traits: &mut Map<String, Value>, updates: &[&UserUpdate]) -> usize {
    // What the traits take as text, or more: an update grows them by less
    // than its own text.
    let mut size = text_len(traits);
    let mut refused = 0;
    for update in updates {
        let most = size + update.traits.len() + update.traits_once.len();
        if most <= MAX_TRAITS_BYTES {
            apply_one(traits, update);
            size = most;
            continue;
        }
        let before = traits.clone();
        apply_one(traits, update);
        let after = text_len(traits);
        if after > MAX_TRAITS_BYTES {
            *traits = before;
            refused += 1;
        } else {
            size = after;
        }
    }
    refused
}

/// Says, once a write, how many updates [`apply`] did not apply.
pub fn warn_refused(refused: usize) {
    if refused > 0 {
        tracing::warn!(
            refused,
            "updates that would take a person's traits past {MAX_TRAITS_BYTES} bytes were not applied"
        );
    }
}

/// One event's update: its set-once values fill what the person lacked
/// before it; its own sets then win over them.
fn apply_one(traits: &mut Map<String, Value>, update: &UserUpdate) {
    for (k, v) in object(&update.traits_once) {
        if !v.is_null() {
            traits.entry(k).or_insert(v);
        }
    }
    for (k, v) in object(&update.traits) {
        if v.is_null() {
            traits.remove(&k);
        } else {
            traits.insert(k, v);
        }
    }
}

fn text_len(traits: &Map<String, Value>) -> usize {
    serde_json::to_string(traits).map_or(0, |t| t.len())
}

/// The user each id was linked to before a batch (by project and id).
pub type Owners = std::collections::HashMap<(i64, String), String>;

/// The person an update changes: the user its id was linked to before
/// (an anonymous visitor's `$set` after identify, an alias's previous id),
/// as PostHog applies a linked id's updates to its person; else its own id.
pub fn person_of<'a>(update: &'a UserUpdate, owners: &'a Owners) -> (i64, &'a str) {
    owner_of(update.project_id, &update.user_id, owners)
}

/// The person `id` is (see [`person_of`]).
pub fn owner_of<'a>(project_id: i64, id: &'a str, owners: &'a Owners) -> (i64, &'a str) {
    let owner = owners.get(&(project_id, id.to_owned()));
    (project_id, owner.map_or(id, String::as_str))
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
    // Each was capped when it was stored; together they fill only gaps.
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

    #[test]
    fn set_once_after_a_removal_in_the_same_batch_fills_the_gap() {
        let mut traits = Map::new();
        let updates = [
            update(json!({"k": 1}), json!({})),
            update(json!({"k": null}), json!({})),
            update(json!({}), json!({"k": 2})),
            update(json!({"j": null}), json!({"j": 3})),
        ];
        apply(&mut traits, &updates.iter().collect::<Vec<_>>());
        assert_eq!(Value::Object(traits), json!({"k": 2}));
    }

    #[test]
    fn an_update_past_the_cap_is_not_applied_and_later_small_ones_are() {
        let big = "x".repeat(MAX_TRAITS_BYTES / 3);
        let mut traits = Map::new();
        let updates = [
            update(json!({"a": big}), json!({})),
            update(json!({"b": big}), json!({})),
            update(json!({"c": big}), json!({})),
            update(json!({"a": null, "small": 1}), json!({})),
            update(json!({"c": big}), json!({})),
        ];
        assert_eq!(apply(&mut traits, &updates.iter().collect::<Vec<_>>()), 1);
        let mut keys: Vec<&str> = traits.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["b", "c", "small"]);
        assert!(text_len(&traits) <= MAX_TRAITS_BYTES);
    }
}
