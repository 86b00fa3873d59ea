//! Field types shared by the wire formats: ids that may be numbers, lenient
//! text, and timestamps in the shapes SDKs send them; and the reading of
//! the properties Leanloop puts in columns of its own.

use crate::IngestError;
use chrono::{DateTime, NaiveDateTime};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// An identifier sent as a string or a number; empty strings count as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub Option<String>);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        d.deserialize_any(Scalar { id: true }).map(Id)
    }
}

impl Id {
    pub fn take(this: Option<Id>) -> Option<String> {
        this.and_then(|id| id.0)
    }
}

/// The longest id of a person taken, in bytes. A person's id names them in
/// URLs (`/people/{id}`, erasure), so it must fit one %-escaped; and ids
/// are names, not payloads (PostHog takes 200 characters, Mixpanel 255).
pub const MAX_PERSON_ID_BYTES: usize = 1024;

/// A person's id as sent in `field`, refused when over
/// [`MAX_PERSON_ID_BYTES`]: cut short, two people's ids could become one.
pub fn person_id(id: Option<Id>, field: &str) -> Result<Option<String>, IngestError> {
    match Id::take(id) {
        Some(id) if id.len() > MAX_PERSON_ID_BYTES => Err(IngestError::field(
            field,
            format!("`{field}` is {} bytes long; a person's id may be at most {MAX_PERSON_ID_BYTES}", id.len()),
        )),
        id => Ok(id),
    }
}

/// A value read as `T` when it has that type, else none: a property read
/// for a column but sent with another type (`"$is_identified": "yes"`) is
/// left in the JSON, not the reason the event's other columns are lost.
#[derive(Clone)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lenient<T>, D::Error> {
        Ok(Lenient(T::deserialize(Value::deserialize(d)?).ok()))
    }
}

/// An object read as `T` when it is one, else none: a list is not read
/// into a struct by position, nor refused.
#[derive(Clone)]
pub struct LenientObject<T>(pub Option<T>);

impl<T> Default for LenientObject<T> {
    fn default() -> Self {
        LenientObject(None)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for LenientObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LenientObject<T>, D::Error> {
        Ok(LenientObject(match Value::deserialize(d)? {
            object @ Value::Object(_) => T::deserialize(object).ok(),
            _ => None,
        }))
    }
}

/// The properties a wire format reads for columns (`T`, all fields
/// optional), from properties text. A key written twice fails a struct's
/// read: the text is then read again keeping each key's first value, as
/// both stores read such JSON.
pub fn known_properties<T: DeserializeOwned + Default>(properties: &str) -> T {
    serde_json::from_str(properties).unwrap_or_else(|_| {
        serde_json::from_str::<FirstWins>(properties)
            .ok()
            .and_then(|first| serde_json::from_str(&Value::Object(first.0).to_string()).ok())
            .unwrap_or_default()
    })
}

/// A JSON object with each key's first value.
struct FirstWins(Map<String, Value>);

impl<'de> Deserialize<'de> for FirstWins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FirstWins, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FirstWins;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FirstWins, A::Error> {
                let mut first = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    first.entry(k).or_insert(v);
                }
                Ok(FirstWins(first))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A part read as `T` from a JSON object; `null` or an empty array (PHP
/// encodes an empty map as `[]`) is none. Any other array is refused, where
/// serde's derive would read its items as the fields in order.
pub fn object_or_empty_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
        match seq.next_element::<serde::de::IgnoredAny>()? {
            None => Ok(None),
            Some(_) => Err(serde::de::Error::invalid_type(serde::de::Unexpected::Seq, &self)),
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }
}

/// Text we only read opportunistically (page URLs, browser hints): anything
/// that is not a string or number is ignored rather than refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        d.deserialize_any(Scalar { id: false }).map(Text)
    }
}

/// Reads a scalar as text straight from the parser (no buffering of the
/// value to try one shape after another); blank text counts as absent.
/// For an [`Id`] only strings and whole numbers of 64 bits will do; for
/// [`Text`] floats are text too, and booleans and structures are skipped
/// (structures without being built): `"release": false` names no release.
struct Scalar {
    id: bool,
}

impl Scalar {
    fn not_an_id<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.id {
            true => Err(E::custom("expected a string or a number")),
            false => Ok(()),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Scalar {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(if self.id { "a string or a number" } else { "any JSON value" })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<String>, E> {
        Ok((!v.trim().is_empty()).then(|| v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Option<String>, E> {
        Ok(non_empty(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<String>, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<String>, E> {
        Ok(Some(v.to_string()))
    }

    /// Past 64 bits a number arrives rounded (1e40): two ids would merge,
    /// so only whole numbers are taken as ids.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Option<String>, E> {
        match self.id {
            true => Err(E::custom("expected a string or a whole number of at most 64 bits")),
            false => Ok(Some(v.to_string())),
        }
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Option<String>, E> {
        self.not_an_id()?;
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
        self.not_an_id()?;
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        self.not_an_id()?;
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Text {
    pub fn take(this: Option<Text>) -> Option<String> {
        this.and_then(|t| t.0)
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.trim().is_empty() {
        None
    } else {
        Some(s)
    }
}

/// A timestamp as an ISO 8601 string or a number of ms since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeValue {
    Text(String),
    Millis(f64),
}

impl<'de> Deserialize<'de> for TimeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TimeValue, D::Error> {
        d.deserialize_any(TimeVisitor)
    }
}

struct TimeVisitor;

impl serde::de::Visitor<'_> for TimeVisitor {
    type Value = TimeValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an ISO 8601 time or epoch milliseconds (or seconds)")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TimeValue, E> {
        Ok(TimeValue::Text(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<TimeValue, E> {
        Ok(TimeValue::Text(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TimeValue, E> {
        Ok(TimeValue::Millis(v as f64))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TimeValue, E> {
        Ok(TimeValue::Millis(v as f64))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TimeValue, E> {
        Ok(TimeValue::Millis(v))
    }
}

/// Parses an optional timestamp; `field` names it in the error.
pub fn parse_time(value: Option<&TimeValue>, field: &str) -> Result<Option<i64>, IngestError> {
    let bad =
        || IngestError::field(field, format!("`{field}` is not an ISO 8601 time or epoch milliseconds (or seconds)"));
    match value {
        None => Ok(None),
        // Under 10^11 a number cannot be milliseconds of a real event (that
        // is March 1973): it is seconds, as Unix and PHP send them (Mixpanel
        // reads numbers so too).
        Some(TimeValue::Millis(s)) if s.is_finite() && *s > 0.0 && *s < 1e11 => Ok(Some((s * 1000.0) as i64)),
        Some(TimeValue::Millis(ms)) if ms.is_finite() && ms.abs() < 1e15 => Ok(Some(*ms as i64)),
        Some(TimeValue::Millis(_)) => Err(bad()),
        Some(TimeValue::Text(s)) if s.trim().is_empty() => Ok(None),
        Some(TimeValue::Text(s)) => parse_iso(s.trim()).map(Some).ok_or_else(bad),
    }
}

/// RFC 3339 with any offset; without an offset the time is taken as UTC.
fn parse_iso(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    // An offset is read before the naive forms are tried: chrono's naive
    // parse of a `%z` format accepts the offset and drops it.
    // chrono's `%z` reads `+01:00` as well as `+0100`.
    const WITH_OFFSET: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"];
    const NAIVE: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"];
    WITH_OFFSET.iter().find_map(|fmt| DateTime::parse_from_str(s, fmt).ok().map(|t| t.timestamp_millis())).or_else(
        || {
            NAIVE
                .iter()
                .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok().map(|t| t.and_utc().timestamp_millis()))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Option<i64> {
        parse_time(Some(&TimeValue::Text(s.into())), "timestamp").unwrap()
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Columns {
        url: Option<Text>,
        user: Lenient<Id>,
        flag: Lenient<bool>,
    }

    #[test]
    fn known_properties_survive_odd_types_and_repeated_keys() {
        let read = |text: &str| {
            let c: Columns = known_properties(text);
            (Text::take(c.url), Id::take(c.user.0), c.flag.0)
        };
        assert_eq!(read(r#"{"url":"/a","user":7,"flag":true}"#), (Some("/a".into()), Some("7".into()), Some(true)));
        assert_eq!(read(r#"{"url":"/a","user":1.5,"flag":"yes"}"#), (Some("/a".into()), None, None));
        assert_eq!(read(r#"{"url":"/a","url":"/b","flag":false}"#), (Some("/a".into()), None, Some(false)));
        assert_eq!(read("not json"), (None, None, None));
    }

    #[test]
    fn parses_the_shapes_sdks_send() {
        assert_eq!(t("2024-01-02T03:04:05.678Z"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02T04:04:05.678+01:00"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02T03:04:05.678"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02 03:04:05.678"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02T03:04:05.678123+00:00"), Some(1_704_164_645_678));
        // ISO 8601's offsets without a colon, and with a space for the `T`.
        assert_eq!(t("2024-01-02T04:04:05.678+0100"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-01T22:04:05.678-0500"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02 04:04:05.678+0100"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02 04:04:05.678+01:00"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02T03:04:05+0000"), Some(1_704_164_645_000));
        assert_eq!(parse_time(Some(&TimeValue::Millis(1.5e12)), "t").unwrap(), Some(1_500_000_000_000));
        assert_eq!(parse_time(Some(&TimeValue::Millis(1_704_164_645.5)), "t").unwrap(), Some(1_704_164_645_500));
        assert!(parse_time(Some(&TimeValue::Text("yesterday".into())), "timestamp").is_err());
        assert!(parse_time(Some(&TimeValue::Millis(f64::INFINITY)), "timestamp").is_err());
    }

    #[test]
    fn text_keeps_strings_and_numbers_and_skips_the_rest() {
        let t = |json: &str| serde_json::from_str::<Text>(json).unwrap().0;
        assert_eq!(t("\"a\"").as_deref(), Some("a"));
        assert_eq!(t("\"  \""), None);
        assert_eq!(t("12").as_deref(), Some("12"));
        assert_eq!(t("1.5").as_deref(), Some("1.5"));
        assert_eq!(t("true"), None);
        assert_eq!(t("false"), None);
        assert_eq!(t("null"), None);
        assert_eq!(t("[1,{\"a\":[2]}]"), None);
        assert_eq!(t("{\"a\":{\"b\":1}}"), None);
    }

    #[test]
    fn ids_accept_numbers_and_ignore_empty() {
        let id: Id = serde_json::from_str("42").unwrap();
        assert_eq!(id.0.as_deref(), Some("42"));
        let id: Id = serde_json::from_str("\"\"").unwrap();
        assert_eq!(id.0, None);
        assert!(serde_json::from_str::<Id>("{}").is_err());
        assert_eq!(
            serde_json::from_str::<Id>("18446744073709551615").unwrap().0.as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            serde_json::from_str::<Id>("-9223372036854775808").unwrap().0.as_deref(),
            Some("-9223372036854775808")
        );
        // Beyond 64 bits the number is already rounded: refused, not merged.
        assert!(serde_json::from_str::<Id>("-9223372036854775809").is_err());
        assert!(serde_json::from_str::<Id>("1e40").is_err());
        assert!(serde_json::from_str::<Id>("1.5").is_err());
        for other in ["true", "[1]", "{\"a\":1}"] {
            let err = serde_json::from_str::<Id>(other).unwrap_err().to_string();
            assert!(err.contains("expected a string or a number"), "{other}: {err}");
        }
        assert_eq!(serde_json::from_str::<Option<Id>>("null").unwrap(), None);
    }

    #[test]
    fn times_read_as_text_or_milliseconds() {
        let time = |json: &str| serde_json::from_str::<TimeValue>(json);
        assert_eq!(time("\"2024-01-02T03:04:05Z\"").unwrap(), TimeValue::Text("2024-01-02T03:04:05Z".into()));
        assert_eq!(time("1704164645678").unwrap(), TimeValue::Millis(1_704_164_645_678.0));
        assert_eq!(time("-5").unwrap(), TimeValue::Millis(-5.0));
        assert_eq!(time("1.5e12").unwrap(), TimeValue::Millis(1.5e12));
        for other in ["true", "[1]", "{}"] {
            assert!(time(other).is_err(), "{other}");
        }
    }
}
