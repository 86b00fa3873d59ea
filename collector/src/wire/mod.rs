//! Wire formats: Segment's tracking API, PostHog's capture API and Leanloop's
//! feedback call, each decoded into [`Incoming`] events. Decoding only reads
//! what the client sent; enrichment (`enrich.rs`) derives everything else.

pub mod feedback;
mod fields;
pub mod posthog;
pub mod segment;
mod surrogates;

pub use fields::{
    known_properties, parse_time, person_id, Id, Lenient, LenientObject, Text, TimeValue, MAX_PERSON_ID_BYTES,
};
pub use surrogates::well_formed;

use crate::IngestError;
use leanloop_core::{EventKind, JsonFault};
use serde_json::value::RawValue;

/// One event as the client described it, before enrichment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incoming {
    /// The key the event carried itself (a batch item's own `writeKey`, or
    /// PostHog's `api_key` or `token` beside its properties), if any.
    pub key: Option<String>,
    pub kind: Option<EventKind>,
    pub name: String,
    pub message_id: Option<String>,
    /// Client time of the event, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Client time of sending, for clock-skew correction.
    pub sent_at_ms: Option<i64>,
    /// PostHog: how long before sending the event happened, in ms.
    pub offset_ms: Option<i64>,
    pub anonymous_id: Option<String>,
    pub user_id: Option<String>,
    /// Alias: the id the person had before `user_id`.
    pub previous_id: Option<String>,
    pub session_id: Option<String>,
    pub release: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    pub page_name: Option<String>,
    pub referrer: Option<String>,
    pub referrer_domain: Option<String>,
    pub utm: Utm,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// Browser facts the client already derived (posthog-js sends these).
    pub browser: Option<String>,
    pub browser_version: Option<String>,
    pub os: Option<String>,
    pub device_type: Option<String>,
    pub library: Option<String>,
    /// Properties as JSON object text.
    pub properties: String,
    /// Traits to merge into the person (identify traits, PostHog `$set`).
    pub traits: Option<String>,
    /// Traits to set only where the person has none yet (PostHog `$set_once`).
    pub traits_once: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utm {
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub term: Option<String>,
    pub content: Option<String>,
}

/// A decoded request: the key it carried and its events, each decoded or
/// refused on its own so one bad event does not sink the batch.
#[derive(Debug, Default)]
pub struct Decoded {
    pub key: Option<String>,
    pub items: Vec<Result<Incoming, IngestError>>,
}

/// How deep an object's values may nest. Stored JSON is read back with
/// parsers that stop at 128 levels; refusing deeper input here keeps it
/// from being acknowledged and then unreadable.
pub const MAX_NESTING: usize = 64;

/// Properties must be a JSON object; `null` or absent means empty.
pub(crate) fn object_text(raw: Option<&RawValue>, field: &str) -> Result<String, IngestError> {
    match raw.map(|r| r.get().trim_start()) {
        None => Ok("{}".to_owned()),
        Some(text) if text.starts_with('{') && too_deep(text) => {
            Err(IngestError::field(field, format!("`{field}` nests deeper than {MAX_NESTING} levels")))
        }
        Some(text) if text.starts_with('{') && out_of_range(text) => Err(IngestError::field(
            field,
            format!("`{field}` holds a number beyond the range of a 64-bit float (such as 1e400)"),
        )),
        Some(text) if text.starts_with('{') => Ok(text.to_owned()),
        Some("null") => Ok("{}".to_owned()),
        Some(_) => Err(IngestError::field(field, format!("`{field}` must be a JSON object"))),
    }
}

/// Whether objects and arrays in valid JSON `text` nest deeper than
/// [`MAX_NESTING`]. Counting opening brackets first settles almost every
/// event with one cheap pass: fewer of them cannot nest that deep.
fn too_deep(text: &str) -> bool {
    if text.bytes().filter(|&b| b == b'{' || b == b'[').count() <= MAX_NESTING {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' if depth == MAX_NESTING => return true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether valid JSON `text` holds a number no 64-bit float can hold, such
/// as `1e400` or `1` and 300 zeros `e10`. JSON allows it, but DuckDB's JSON
/// functions and the events API would refuse the whole stored text: every
/// property of the event would be lost to queries. Only an exponent of
/// three digits, one of two after a mantissa of over 200 characters, or a
/// run of over 308 digits can be that large; few texts have any, so only
/// those are parsed.
fn out_of_range(text: &str) -> bool {
    let bytes = text.as_bytes();
    let long_exponent = memchr::memchr2_iter(b'e', b'E', bytes).any(|at| {
        let digits = bytes[at + 1..].strip_prefix(b"+").or_else(|| bytes[at + 1..].strip_prefix(b"-"));
        let digits = digits.unwrap_or(&bytes[at + 1..]);
        let exponent = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        let mantissa = bytes[..at].iter().rev().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
        mantissa > 0 && (exponent >= 3 || (exponent > 0 && mantissa > 200))
    });
    let long_digits = || bytes.len() > 308 && bytes.split(|b| !b.is_ascii_digit()).any(|run| run.len() > 308);
    (long_exponent || long_digits()) && serde_json::from_str::<serde_json::Value>(text).is_err()
}

/// Decodes one event with a typed struct; a type error names the field path.
/// The path is tracked only on the second try, after the fast decode failed.
pub(crate) fn decode_item<'a, T: serde::Deserialize<'a>>(raw: &'a str) -> Result<T, IngestError> {
    if let Ok(value) = serde_json::from_str(raw) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match JsonFault::of(&path, &inner) {
            JsonFault::Unknown { name, .. } => IngestError::field(&name, format!("unknown field `{name}`")),
            JsonFault::Missing { name, .. } => IngestError::field(&name, format!("`{name}` is required")),
            JsonFault::Invalid { path } => IngestError::field(&path, format!("`{path}`: {inner}")),
            // Valid JSON of the wrong shape (a list where an object goes).
            JsonFault::Syntax if inner.is_data() => IngestError::field("body", format!("`body`: {inner}")),
            JsonFault::Syntax => IngestError::BadJson(inner.to_string()),
        }
    })?;
    // Whatever follows the value (a second event, garbage) is refused, not
    // silently dropped.
    de.end().map_err(|e| IngestError::BadJson(e.to_string()))?;
    Ok(value)
}

/// Object text with `key` set to the string `value` at its end, unless the
/// object has that key already: the client's own value wins.
pub(crate) fn with_property(object: String, key: &str, value: &str) -> String {
    let quoted_key = serde_json::Value::from(key).to_string();
    let has_key = object.contains(&quoted_key)
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&object)
            .is_ok_and(|m| m.contains_key(key));
    let body = object.trim_end().strip_suffix('}');
    match body {
        Some(body) if !has_key => {
            let pair = format!("{quoted_key}:{}", serde_json::Value::from(value));
            let empty = body.trim_start().strip_prefix('{').is_some_and(|inner| inner.trim().is_empty());
            if empty {
                format!("{{{pair}}}")
            } else {
                format!("{body},{pair}}}")
            }
        }
        _ => object,
    }
}

/// Splits a JSON array body into its items, each checked against the event
/// size limit. `shared` is what the batch adds to every item (a Segment
/// batch's context): an item is as large as its own text plus that, or a
/// small body could fan out into a thousand oversized events.
pub(crate) fn split_items(
    items: Vec<&RawValue>,
    shared: usize,
    max_event_bytes: usize,
) -> impl Iterator<Item = Result<&str, IngestError>> {
    items.into_iter().enumerate().map(move |(i, raw)| {
        if raw.get().len().saturating_add(shared) > max_event_bytes {
            Err(IngestError::EventTooLarge { limit: max_event_bytes })
        } else if !raw.get().trim_start().starts_with('{') {
            let field = format!("batch[{i}]");
            Err(IngestError::field(&field, format!("`{field}` must be an event object")))
        } else {
            Ok(raw.get())
        }
    })
}

/// Parses a whole body, which must be one JSON object, mapping syntax
/// errors to a 400 on the body. Serde would read a list into a struct by
/// position (`["track", "id", ...]`), which no client means.
pub(crate) fn parse_body<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, IngestError> {
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => IngestError::field("body", "the body must be a JSON object"),
            Err(e) => IngestError::BadJson(e.to_string()),
        });
    }
    decode_item(text)
}
