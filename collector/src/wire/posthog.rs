//! PostHog's capture API: `/capture/`, `/e/`, `/batch/`, `/i/v0/e/`,
//! `/i/v0/ai/batch/`, and the v1 protocol's `/i/v1/analytics/events` (the
//! same events in a `batch`, with `session_id` beside the properties and a
//! few settings in `options`).
//!
//! People: `distinct_id` is taken as the user id unless the event says the
//! person is not identified (`$is_identified: false`, as posthog-js sends for
//! anonymous visitors), in which case it is the anonymous id. `$identify`
//! links `$anon_distinct_id` to the user; `$set` anywhere updates traits,
//! `$set_once` anywhere fills traits the person lacks.

use super::{
    decode_item, known_properties, object_text, parse_time, person_id, split_items, Decoded, Id, Incoming, Lenient,
    LenientObject, Text, TimeValue, Utm,
};
use crate::IngestError;
use leanloop_core::EventKind;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Envelope<'a> {
    api_key: Option<Text>,
    token: Option<Text>,
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(alias = "sentAt")]
    sent_at: Option<TimeValue>,
    /// v1: when the batch was made, kept the same across its retries.
    created_at: Option<TimeValue>,
}

#[derive(Deserialize)]
struct Capture<'a> {
    event: Option<Id>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    distinct_id: Option<Id>,
    timestamp: Option<TimeValue>,
    offset: Option<f64>,
    uuid: Option<Id>,
    api_key: Option<Text>,
    token: Option<Text>,
    #[serde(rename = "$set", borrow)]
    set: Option<&'a RawValue>,
    #[serde(rename = "$set_once", borrow)]
    set_once: Option<&'a RawValue>,
    /// v1 keeps the session and window beside the properties, not in them.
    session_id: Option<Text>,
    window_id: Option<Text>,
    #[serde(default)]
    options: LenientObject<Options>,
}

/// v1's typed settings of an event (each is a `$` property in v0).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Options {
    disable_skew_correction: Lenient<bool>,
    process_person_profile: Lenient<bool>,
}

/// The `$` properties PostHog SDKs send that map onto Leanloop columns. One
/// of another type than these is left in the JSON (see [`Lenient`]).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Known {
    distinct_id: Lenient<Id>,
    token: Option<Text>,
    #[serde(rename = "$current_url")]
    current_url: Option<Text>,
    #[serde(rename = "$pathname")]
    pathname: Option<Text>,
    #[serde(rename = "$referrer")]
    referrer: Option<Text>,
    #[serde(rename = "$referring_domain")]
    referring_domain: Option<Text>,
    #[serde(rename = "$screen_name")]
    screen_name: Option<Text>,
    #[serde(rename = "title")]
    title: Option<Text>,
    #[serde(rename = "$session_id")]
    session_id: Option<Text>,
    /// The event's time is the client's as sent: no clock-skew correction.
    #[serde(rename = "$ignore_sent_at")]
    ignore_sent_at: Lenient<bool>,
    #[serde(rename = "$process_person_profile")]
    process_person_profile: Lenient<bool>,
    #[serde(rename = "$release")]
    release: Option<Text>,
    #[serde(rename = "$app_version")]
    app_version: Option<Text>,
    #[serde(rename = "$lib")]
    lib: Option<Text>,
    #[serde(rename = "$browser")]
    browser: Option<Text>,
    #[serde(rename = "$browser_version")]
    browser_version: Option<Text>,
    #[serde(rename = "$os")]
    os: Option<Text>,
    #[serde(rename = "$device_type")]
    device_type: Option<Text>,
    #[serde(rename = "$ip")]
    ip: Option<Text>,
    #[serde(rename = "$raw_user_agent")]
    user_agent: Option<Text>,
    #[serde(rename = "$anon_distinct_id")]
    anon_distinct_id: Lenient<Id>,
    #[serde(rename = "$device_id")]
    device_id: Lenient<Id>,
    #[serde(rename = "$is_identified")]
    is_identified: Lenient<bool>,
    #[serde(rename = "$set")]
    set: Option<Box<RawValue>>,
    #[serde(rename = "$set_once")]
    set_once: Option<Box<RawValue>>,
    /// Person properties to remove: a list of names, or an object whose
    /// keys name them (see [`unset_names`]).
    #[serde(rename = "$unset")]
    unset: Option<Box<RawValue>>,
    #[serde(rename = "$group_type")]
    group_type: Option<Text>,
    #[serde(rename = "$group_key")]
    group_key: Option<Text>,
    alias: Lenient<Id>,
    utm_source: Option<Text>,
    utm_medium: Option<Text>,
    utm_campaign: Option<Text>,
    utm_term: Option<Text>,
    utm_content: Option<Text>,
}

/// Decodes a capture body. `keyed` says the request's headers carry its
/// key; `request_sent_at` is the send time the request gave beside its body
/// (posthog-js's `_` query parameter, v1's `PostHog-Request-Timestamp`),
/// used when the body gives none.
pub fn decode(
    text: &str,
    keyed: bool,
    request_sent_at: Option<i64>,
    max_event_bytes: usize,
    max_batch: usize,
) -> Result<Decoded, IngestError> {
    decode_sent_by(text, keyed, request_sent_at, Sdk::default(), max_event_bytes, max_batch)
}

/// The SDK a request's headers name (v1's `PostHog-Sdk-Info`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sdk<'a> {
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
}

/// [`decode`], for a request whose headers name its SDK: v1 moves `$lib`,
/// `$lib_version`, `$session_id` and `$window_id` out of the properties
/// (into the header, and beside the properties), and they are put back, as
/// PostHog's v1 capture does, so a breakdown by them sees both protocols.
pub fn decode_sent_by(
    text: &str,
    keyed: bool,
    request_sent_at: Option<i64>,
    sdk: Sdk<'_>,
    max_event_bytes: usize,
    max_batch: usize,
) -> Result<Decoded, IngestError> {
    let trimmed = text.trim_start();
    let (envelope, items): (Option<Envelope>, Vec<&RawValue>) = if trimmed.starts_with('[') {
        (None, decode_item(text)?)
    } else {
        let envelope: Envelope = decode_item(text)?;
        match envelope.batch.clone() {
            Some(batch) => (Some(envelope), batch),
            None => {
                if text.len() > max_event_bytes {
                    return Err(IngestError::EventTooLarge { limit: max_event_bytes });
                }
                let whole: &RawValue = serde_json::from_str(text).map_err(|e| IngestError::BadJson(e.to_string()))?;
                (Some(envelope), vec![whole])
            }
        }
    };
    if items.len() > max_batch {
        return Err(IngestError::BatchTooLarge { count: items.len(), limit: max_batch });
    }
    let (mut key, sent_at, created_at) = match envelope {
        Some(e) => (
            Text::take(e.api_key).or(Text::take(e.token)),
            parse_time(e.sent_at.as_ref(), "sent_at")?,
            parse_time(e.created_at.as_ref(), "created_at")?,
        ),
        None => (None, None, None),
    };
    // A v1 batch's `created_at` is when it was first sent: the attempt's
    // own time, from the request, is nearer.
    let sent_at = sent_at.or(request_sent_at).or(created_at);
    // Without a key for the whole request (posthog-js sends a bare list),
    // each event's own key, `properties.token` included, names its project:
    // one naming another project is refused like a top-level key would be.
    let keyed_per_event = key.is_none() && !keyed;
    let decoded = split_items(items, 0, max_event_bytes)
        .map(|raw| {
            let capture: Capture = decode_item(raw?)?;
            let (mut incoming, event_key) = incoming(capture, sent_at, sdk)?;
            if key.is_none() {
                key = event_key.clone();
            }
            if keyed_per_event {
                incoming.key = event_key;
            }
            Ok(incoming)
        })
        .collect();
    Ok(Decoded { key, items: decoded })
}

/// The `uuid` of each event in a batch body, by position; empty when the
/// body is no batch. Read again, apart from decoding, only to name refused
/// events in a v1 answer.
pub fn batch_uuids(text: &str) -> Vec<Option<String>> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Named {
        uuid: Option<Id>,
    }
    let Ok(body) = serde_json::from_str::<Batch>(text) else {
        return Vec::new();
    };
    body.batch.iter().map(|raw| serde_json::from_str::<Named>(raw.get()).ok().and_then(|n| Id::take(n.uuid))).collect()
}

fn incoming(c: Capture<'_>, sent_at: Option<i64>, sdk: Sdk<'_>) -> Result<(Incoming, Option<String>), IngestError> {
    let name = Id::take(c.event).ok_or_else(|| IngestError::field("event", "`event` is required"))?;
    let properties = object_text(c.properties, "properties")?;
    let beside = [
        ("$session_id", c.session_id.as_ref().and_then(|t| t.0.clone())),
        ("$window_id", c.window_id.as_ref().and_then(|t| t.0.clone())),
        ("$lib", sdk.name.map(str::to_owned)),
        ("$lib_version", sdk.version.map(str::to_owned)),
    ];
    let properties = with_missing_properties(properties, beside)?;
    let known: Known = known_properties(&properties);
    // `properties.token` (posthog-js) is only a fallback: a property of
    // that name may be the app's own.
    let own_key = Text::take(c.api_key).or(Text::take(c.token));
    let key = own_key.clone().or(Text::take(known.token.clone()));
    let distinct_id = match person_id(c.distinct_id, "distinct_id")? {
        Some(id) => id,
        None => person_id(known.distinct_id.0, "properties.distinct_id")?
            .ok_or_else(|| IngestError::field("distinct_id", "`distinct_id` is required"))?,
    };

    let kind = match name.as_str() {
        "$pageview" => EventKind::Page,
        "$screen" => EventKind::Screen,
        "$identify" => EventKind::Identify,
        "$groupidentify" => EventKind::Group,
        "$create_alias" | "$merge_dangerously" => EventKind::Alias,
        _ => EventKind::Track,
    };
    let anonymous = known.is_identified.0 == Some(false) && kind != EventKind::Identify;
    let mut previous_id = None;
    let (user_id, anonymous_id) = if kind == EventKind::Alias {
        let other = person_id(known.alias.0, "properties.alias")?
            .ok_or_else(|| IngestError::field("properties.alias", format!("`{name}` needs `properties.alias`")))?;
        if name == "$merge_dangerously" {
            // Sent by the person that stays, naming the one merged into it.
            previous_id = Some(other);
            (Some(distinct_id), None)
        } else {
            // `$create_alias` is sent by the old id, naming the new one.
            previous_id = Some(distinct_id);
            (Some(other), None)
        }
    } else if anonymous {
        (None, Some(distinct_id))
    } else {
        // The device id stands in only when no anonymous id is given.
        let linked = match person_id(known.anon_distinct_id.0, "properties.$anon_distinct_id")? {
            Some(anon) => Some(anon),
            None => person_id(known.device_id.0, "properties.$device_id")?,
        };
        let linked = linked.filter(|a| *a != distinct_id);
        (Some(distinct_id), linked)
    };
    // `$set` may come inside properties (posthog-js, posthog-python), beside
    // them, or both: merged as PostHog merges them, the one beside winning.
    let traits = merged_traits(known.set.as_deref(), c.set, "properties.$set", "$set")?;
    let traits = match traits {
        None if kind == EventKind::Identify => Some("{}".to_owned()),
        other => other,
    };
    // A trait set to null is removed: `$unset` is that, for each name.
    let traits = match unset_names(known.unset.as_deref()).filter(|names| !names.is_empty()) {
        Some(names) => {
            let set = traits.as_deref().unwrap_or("{}");
            let mut map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(set).map_err(|e| IngestError::field("$set", e.to_string()))?;
            map.extend(names.into_iter().map(|name| (name, serde_json::Value::Null)));
            Some(serde_json::Value::Object(map).to_string())
        }
        None => traits,
    };
    let traits_once = merged_traits(known.set_once.as_deref(), c.set_once, "properties.$set_once", "$set_once")?;
    // A personless event (`$process_person_profile: false`, v1's option)
    // changes no person. An event whose whole point is to change people is
    // refused so, as PostHog drops it (`invalid_event_when_process_person_profile_is_false`).
    let personless_by = if known.process_person_profile.0 == Some(false) {
        Some("properties.$process_person_profile")
    } else if c.options.0.as_ref().is_some_and(|o| o.process_person_profile.0 == Some(false)) {
        Some("options.process_person_profile")
    } else {
        None
    };
    if let Some(field) = personless_by {
        if matches!(name.as_str(), "$identify" | "$create_alias" | "$merge_dangerously" | "$groupidentify") {
            return Err(IngestError::field(field, format!("`{name}` changes people, so it cannot be personless")));
        }
    }
    let (traits, traits_once) = if personless_by.is_some() { (None, None) } else { (traits, traits_once) };
    let properties = match kind {
        EventKind::Group => add_property(
            &properties,
            "$group_id",
            Text::take(known.group_key.clone()).map(|k| match Text::take(known.group_type.clone()) {
                Some(t) => format!("{t}:{k}"),
                None => k,
            }),
        )?,
        EventKind::Alias => add_property(&properties, "$previous_id", previous_id.clone())?,
        _ => properties,
    };
    // The address is kept in the ip column, anonymised unless the project
    // opts in; a copy left in the properties would be kept whole.
    let properties = match known.ip.is_some() {
        true => without_property(&properties, "$ip")?,
        false => properties,
    };
    let referring_domain = Text::take(known.referring_domain).filter(|d| d != "$direct");
    // The event's time is taken as sent, without clock-skew correction.
    let as_sent = known.ignore_sent_at.0 == Some(true)
        || c.options.0.as_ref().is_some_and(|o| o.disable_skew_correction.0 == Some(true));
    let incoming = Incoming {
        key: own_key,
        kind: Some(kind),
        name: kind.fixed_name().map(str::to_owned).unwrap_or(name),
        message_id: Id::take(c.uuid),
        timestamp_ms: parse_time(c.timestamp.as_ref(), "timestamp")?,
        sent_at_ms: sent_at.filter(|_| !as_sent),
        offset_ms: c.offset.filter(|o| o.is_finite() && *o >= 0.0 && *o < 1e12).map(|o| o as i64),
        anonymous_id,
        user_id,
        previous_id,
        session_id: Text::take(known.session_id).or(Text::take(c.session_id)),
        release: Text::take(known.release).or(Text::take(known.app_version)),
        url: Text::take(known.current_url),
        path: Text::take(known.pathname),
        page_name: match kind {
            EventKind::Screen => Text::take(known.screen_name),
            EventKind::Page => Text::take(known.title),
            _ => None,
        },
        referrer: Text::take(known.referrer).filter(|r| r != "$direct"),
        referrer_domain: referring_domain,
        utm: Utm {
            source: Text::take(known.utm_source),
            medium: Text::take(known.utm_medium),
            campaign: Text::take(known.utm_campaign),
            term: Text::take(known.utm_term),
            content: Text::take(known.utm_content),
        },
        user_agent: Text::take(known.user_agent),
        ip: Text::take(known.ip),
        browser: Text::take(known.browser),
        browser_version: Text::take(known.browser_version),
        os: Text::take(known.os),
        device_type: Text::take(known.device_type),
        library: Text::take(known.lib),
        properties,
        traits,
        traits_once,
    };
    Ok((incoming, key))
}

/// `$set` (or `$set_once`) from the properties (`inside_field` names it)
/// and from beside them (`field`), as one object's text; a key given in
/// both takes the value from beside.
fn merged_traits(
    inside: Option<&RawValue>,
    beside: Option<&RawValue>,
    inside_field: &str,
    field: &str,
) -> Result<Option<String>, IngestError> {
    match (inside, beside) {
        (None, None) => Ok(None),
        (Some(raw), None) => object_text(Some(raw), inside_field).map(Some),
        (None, Some(raw)) => object_text(Some(raw), field).map(Some),
        (Some(inside), Some(beside)) => {
            let object = |raw: &RawValue, field: &str| {
                let text = object_text(Some(raw), field)?;
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                    .map_err(|e| IngestError::field(field, e.to_string()))
            };
            let mut merged = object(inside, inside_field)?;
            merged.extend(object(beside, field)?);
            Ok(Some(serde_json::Value::Object(merged).to_string()))
        }
    }
}

/// The trait names `$unset` removes: a list of names or an object's keys,
/// as PostHog takes them; anything else removes nothing (PostHog keeps
/// the event all the same).
fn unset_names(raw: Option<&RawValue>) -> Option<Vec<String>> {
    match serde_json::from_str::<serde_json::Value>(raw?.get()).ok()? {
        serde_json::Value::Object(map) => Some(map.into_iter().map(|(k, _)| k).collect()),
        serde_json::Value::Array(items) => {
            Some(items.into_iter().filter_map(|item| item.as_str().map(str::to_owned)).collect())
        }
        _ => None,
    }
}

/// The properties text without `key`, other keys kept in their order.
fn without_property(properties: &str, key: &str) -> Result<String, IngestError> {
    struct Pairs<'a>(Vec<(String, &'a RawValue)>);
    impl<'de> serde::Deserialize<'de> for Pairs<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Pairs<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Pairs<'de>, A::Error> {
                    let mut pairs = Vec::new();
                    while let Some(pair) = map.next_entry()? {
                        pairs.push(pair);
                    }
                    Ok(Pairs(pairs))
                }
            }
            d.deserialize_map(Visitor)
        }
    }
    let Pairs(pairs) = serde_json::from_str(properties).map_err(|e| IngestError::field("properties", e.to_string()))?;
    let mut text = String::with_capacity(properties.len());
    text.push('{');
    for (k, v) in pairs.iter().filter(|(k, _)| k != key) {
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&serde_json::Value::String(k.clone()).to_string());
        text.push(':');
        text.push_str(v.get());
    }
    text.push('}');
    Ok(text)
}

/// `properties` with each of `values` that is given and not there already.
fn with_missing_properties<const N: usize>(
    properties: String,
    values: [(&str, Option<String>); N],
) -> Result<String, IngestError> {
    if values.iter().all(|(_, v)| v.is_none()) {
        return Ok(properties);
    }
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&properties).map_err(|e| IngestError::field("properties", e.to_string()))?;
    for (key, value) in values {
        if let (Some(value), false) = (value, map.contains_key(key)) {
            map.insert(key.to_owned(), serde_json::Value::String(value));
        }
    }
    Ok(serde_json::Value::Object(map).to_string())
}

fn add_property(properties: &str, key: &str, value: Option<String>) -> Result<String, IngestError> {
    let Some(value) = value else {
        return Ok(properties.to_owned());
    };
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(properties).map_err(|e| IngestError::field("properties", e.to_string()))?;
    map.insert(key.to_owned(), serde_json::Value::String(value));
    Ok(serde_json::Value::Object(map).to_string())
}

#[cfg(test)]
mod tests {
    use super::super::MAX_PERSON_ID_BYTES;
    use super::*;

    #[test]
    fn batch_with_identify_and_pageview() {
        let d = decode(
            r#"{"api_key":"k","batch":[
              {"event":"$pageview","distinct_id":"anon1","properties":{"$current_url":"https://a.io/x","$is_identified":false,"$session_id":"s1","$app_version":"1.0"}},
              {"event":"$identify","distinct_id":"user1","properties":{"$anon_distinct_id":"anon1","$set":{"email":"a@b.c"}}},
              {"event":"bought","properties":{"distinct_id":"user1","$release":"r2","price":3}}]}"#,
            false,
            None,
            32 * 1024,
            1000,
        )
        .unwrap();
        assert_eq!(d.key.as_deref(), Some("k"));
        let items: Vec<Incoming> = d.items.into_iter().map(Result::unwrap).collect();
        assert_eq!(items[0].kind, Some(EventKind::Page));
        assert_eq!(items[0].anonymous_id.as_deref(), Some("anon1"));
        assert_eq!(items[0].user_id, None);
        assert_eq!(items[0].release.as_deref(), Some("1.0"));
        assert_eq!(items[0].session_id.as_deref(), Some("s1"));
        assert_eq!(items[1].name, "$identify");
        assert_eq!(items[1].user_id.as_deref(), Some("user1"));
        assert_eq!(items[1].anonymous_id.as_deref(), Some("anon1"));
        assert_eq!(items[1].traits.as_deref(), Some(r#"{"email":"a@b.c"}"#));
        assert_eq!(items[2].user_id.as_deref(), Some("user1"));
        assert_eq!(items[2].release.as_deref(), Some("r2"));
    }

    #[test]
    fn the_ip_property_moves_to_the_ip_column() {
        let d = decode(
            r#"{"api_key":"k","event":"e","distinct_id":"d","properties":{"a":1,"$ip":"198.51.100.77","b":{"c":[2]}}}"#,
            false,
            None,
            32 * 1024,
            10,
        )
        .unwrap();
        let item = d.items.into_iter().next().unwrap().unwrap();
        assert_eq!(item.ip.as_deref(), Some("198.51.100.77"), "anonymised with the column, when enriched");
        assert_eq!(item.properties, r#"{"a":1,"b":{"c":[2]}}"#);
    }

    #[test]
    fn unset_removes_person_properties_as_null_does() {
        let body =
            r#"{"api_key":"k","event":"$set","distinct_id":"d","properties":{"$set":{"a":1},"$unset":["b","c"]}}"#;
        let d = decode(body, false, None, 32 * 1024, 10).unwrap();
        let traits: serde_json::Value =
            serde_json::from_str(d.items[0].as_ref().unwrap().traits.as_deref().unwrap()).unwrap();
        assert_eq!(traits, serde_json::json!({"a": 1, "b": null, "c": null}));
    }

    #[test]
    fn set_inside_and_beside_properties_are_merged_and_unset_takes_an_object() {
        let body = r#"{"api_key":"k","event":"x","distinct_id":"U","$set":{"a":1,"b":0},"$set_once":{"d":4},
            "properties":{"$set":{"b":2,"e":5},"$set_once":{"c":3},"$unset":{"f":""}}}"#;
        let d = decode(body, false, None, 32 * 1024, 10).unwrap();
        let item = d.items[0].as_ref().unwrap();
        let json = |t: &Option<String>| serde_json::from_str::<serde_json::Value>(t.as_deref().unwrap()).unwrap();
        assert_eq!(json(&item.traits), serde_json::json!({"a": 1, "b": 0, "e": 5, "f": null}));
        assert_eq!(json(&item.traits_once), serde_json::json!({"c": 3, "d": 4}));
        for unset in [r#""f""#, "[1]", "3"] {
            let body = format!(r#"{{"api_key":"k","event":"x","distinct_id":"U","properties":{{"$unset":{unset}}}}}"#);
            let d = decode(&body, false, None, 32 * 1024, 10).unwrap();
            assert_eq!(d.items[0].as_ref().unwrap().traits, None, "{unset}: kept, removing nothing");
        }
    }

    #[test]
    fn without_a_request_key_each_event_is_keyed_by_its_own_token() {
        let body = r#"[{"event":"a","properties":{"distinct_id":"U","token":"k1"}},
                       {"event":"b","properties":{"distinct_id":"U","token":"k2"}}]"#;
        let d = decode(body, false, None, 32 * 1024, 10).unwrap();
        assert_eq!(d.key.as_deref(), Some("k1"));
        let keys: Vec<Option<&str>> = d.items.iter().map(|i| i.as_ref().unwrap().key.as_deref()).collect();
        assert_eq!(keys, [Some("k1"), Some("k2")]);
        // With a request key, a `token` property is the app's own.
        let body = r#"{"api_key":"k1","batch":[{"event":"a","distinct_id":"U","properties":{"token":"mine"}}]}"#;
        let d = decode(body, false, None, 32 * 1024, 10).unwrap();
        assert_eq!(d.items[0].as_ref().unwrap().key, None);
        // ... and so it is with the key in the request's headers.
        let body = r#"[{"event":"a","properties":{"distinct_id":"U","token":"mine"}}]"#;
        let d = decode(body, true, None, 32 * 1024, 10).unwrap();
        assert_eq!(d.items[0].as_ref().unwrap().key, None);
    }

    #[test]
    fn the_query_send_time_is_used_when_the_body_has_none() {
        let d = decode(r#"{"api_key":"k","event":"e","distinct_id":"d"}"#, false, Some(5), 32 * 1024, 10).unwrap();
        assert_eq!(d.items[0].as_ref().unwrap().sent_at_ms, Some(5));
        let body = r#"{"api_key":"k","sent_at":"2024-01-01T00:00:00Z","batch":[{"event":"e","distinct_id":"d"}]}"#;
        let d = decode(body, false, Some(5), 32 * 1024, 10).unwrap();
        assert_eq!(d.items[0].as_ref().unwrap().sent_at_ms, Some(1_704_067_200_000));
    }

    #[test]
    fn a_v1_batch_keeps_its_session_beside_the_properties_and_may_skip_skew_correction() {
        let body = r#"{"created_at":"2024-01-01T00:00:00Z","batch":[
            {"event":"a","uuid":"u1","distinct_id":"d","options":{},"properties":{},"session_id":"s1"},
            {"event":"b","uuid":"u2","distinct_id":"d","options":{"disable_skew_correction":true},"properties":{}},
            {"event":"c","uuid":"u3","distinct_id":"d","options":7,"properties":{"$ignore_sent_at":true}}]}"#;
        let d = decode(body, true, None, 32 * 1024, 10).unwrap();
        let items: Vec<&Incoming> = d.items.iter().map(|i| i.as_ref().unwrap()).collect();
        assert_eq!(items[0].session_id.as_deref(), Some("s1"));
        // Without the attempt's own time, the batch's making is the send time.
        assert_eq!(items[0].sent_at_ms, Some(1_704_067_200_000));
        assert_eq!((items[1].sent_at_ms, items[2].sent_at_ms), (None, None));
        let d = decode(body, true, Some(5), 32 * 1024, 10).unwrap();
        assert_eq!(d.items[0].as_ref().unwrap().sent_at_ms, Some(5));
    }

    #[test]
    fn a_personless_event_changes_no_person_and_a_personless_identify_is_refused() {
        let body = r#"{"api_key":"k","batch":[
            {"event":"a","distinct_id":"d","properties":{"$process_person_profile":false,"$set":{"x":1}}},
            {"event":"b","distinct_id":"d","options":{"process_person_profile":false},"$set_once":{"x":1}},
            {"event":"c","distinct_id":"d","properties":{"$process_person_profile":true,"$set":{"x":1}}},
            {"event":"$identify","distinct_id":"d","properties":{"$process_person_profile":true,"$set":{"x":1}}}]}"#;
        let d = decode(body, false, None, 32 * 1024, 10).unwrap();
        let changes: Vec<bool> = d
            .items
            .iter()
            .map(|i| i.as_ref().map(|i| i.traits.is_some() || i.traits_once.is_some()).unwrap())
            .collect();
        assert_eq!(changes, [false, false, true, true]);
        for (event, props, options, field) in [
            (
                "$identify",
                r#""$anon_distinct_id":"a","$process_person_profile":false"#,
                "{}",
                "properties.$process_person_profile",
            ),
            (
                "$create_alias",
                r#""alias":"n","$process_person_profile":false"#,
                "{}",
                "properties.$process_person_profile",
            ),
            (
                "$merge_dangerously",
                r#""alias":"n""#,
                r#"{"process_person_profile":false}"#,
                "options.process_person_profile",
            ),
            (
                "$groupidentify",
                r#""$group_type":"org","$group_key":"o1","$process_person_profile":false"#,
                "{}",
                "properties.$process_person_profile",
            ),
        ] {
            let body = format!(
                r#"{{"api_key":"k","event":"{event}","distinct_id":"d","properties":{{{props}}},"options":{options}}}"#
            );
            let d = decode(&body, false, None, 32 * 1024, 10).unwrap();
            assert!(
                matches!(&d.items[0], Err(IngestError::BadField { field: f, .. }) if f == field),
                "{event}: {:?}",
                d.items[0]
            );
        }
    }

    #[test]
    fn v1_fields_beside_the_properties_and_in_its_header_are_put_back_in_them() {
        let body = r#"{"batch":[
            {"event":"a","uuid":"u1","distinct_id":"d","session_id":"s1","window_id":"w1","properties":{"x":1}},
            {"event":"b","uuid":"u2","distinct_id":"d","session_id":"s1","properties":{"$lib":"own","$window_id":"w0"}}]}"#;
        let sdk = Sdk { name: Some("posthog-python"), version: Some("7.91.1") };
        let d = decode_sent_by(body, true, None, sdk, 32 * 1024, 10).unwrap();
        let properties: Vec<serde_json::Value> =
            d.items.iter().map(|i| serde_json::from_str(&i.as_ref().unwrap().properties).unwrap()).collect();
        assert_eq!(
            properties,
            [
                serde_json::json!({"x": 1, "$session_id": "s1", "$window_id": "w1", "$lib": "posthog-python", "$lib_version": "7.91.1"}),
                serde_json::json!({"$lib": "own", "$window_id": "w0", "$session_id": "s1", "$lib_version": "7.91.1"}),
            ]
        );
        // v0, from the same SDK without the header: the properties as sent.
        let d =
            decode(r#"{"api_key":"k","event":"a","distinct_id":"d","properties":{"x":1}}"#, false, None, 32 * 1024, 10)
                .unwrap();
        assert_eq!(d.items[0].as_ref().unwrap().properties, r#"{"x":1}"#);
    }

    #[test]
    fn a_person_id_longer_than_its_limit_is_refused_by_name() {
        let long = "x".repeat(MAX_PERSON_ID_BYTES + 1);
        let refused = |event: &str, properties: &str| {
            let body = format!(r#"{{"api_key":"k","batch":[{{"event":"{event}","properties":{properties}}}]}}"#);
            match decode(&body, false, None, 32 * 1024, 10).unwrap().items.remove(0) {
                Err(IngestError::BadField { field, .. }) => field,
                other => panic!("{properties}: expected a refusal, got {other:?}"),
            }
        };
        assert_eq!(refused("e", &format!(r#"{{"distinct_id":"{long}"}}"#)), "properties.distinct_id");
        let with = |key: &str| format!(r#"{{"distinct_id":"d","{key}":"{long}"}}"#);
        assert_eq!(refused("$identify", &with("$anon_distinct_id")), "properties.$anon_distinct_id");
        assert_eq!(refused("$identify", &with("$device_id")), "properties.$device_id");
        assert_eq!(refused("$create_alias", &with("alias")), "properties.alias");
        let body = format!(r#"{{"api_key":"k","event":"e","distinct_id":"{long}"}}"#);
        let item = decode(&body, false, None, 32 * 1024, 10).unwrap().items.remove(0);
        assert!(matches!(item, Err(IngestError::BadField { field, .. }) if field == "distinct_id"));
        // Where they name no one, they are only properties.
        for (event, properties) in [
            ("track", with("alias")),
            ("$identify", format!(r#"{{"distinct_id":"d","$anon_distinct_id":"a","$device_id":"{long}"}}"#)),
        ] {
            let body = format!(r#"{{"api_key":"k","batch":[{{"event":"{event}","properties":{properties}}}]}}"#);
            assert!(decode(&body, false, None, 32 * 1024, 10).unwrap().items.remove(0).is_ok(), "{event}");
        }
    }

    #[test]
    fn single_event_and_array_bodies() {
        let d = decode(r#"{"token":"t","event":"e","distinct_id":"d"}"#, false, None, 32 * 1024, 10).unwrap();
        assert_eq!(d.key.as_deref(), Some("t"));
        assert_eq!(d.items.len(), 1);
        let d = decode(r#"[{"api_key":"t2","event":"e","distinct_id":"d"},{"event":"e"}]"#, false, None, 32 * 1024, 10)
            .unwrap();
        assert_eq!(d.key.as_deref(), Some("t2"));
        assert!(matches!(&d.items[1], Err(IngestError::BadField { field, .. }) if field == "distinct_id"));
    }
}
