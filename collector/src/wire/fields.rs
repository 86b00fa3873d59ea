//! Field types shared by the wire formats: ids that may be numbers, lenient
//! text, and timestamps in the shapes SDKs send them.

use crate::IngestError;
use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Deserializer};

/// An identifier sent as a string or a number; empty strings count as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(pub Option<String>);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(serde_json::Number),
            Null(()),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a string or a number"))?
        {
            Raw::S(s) => Ok(Id(non_empty(s))),
            Raw::N(n) => Ok(Id(Some(n.to_string()))),
            Raw::Null(()) => Ok(Id(None)),
        }
    }
}

impl Id {
    pub fn take(this: Option<Id>) -> Option<String> {
        this.and_then(|id| id.0)
    }
}

/// Text we only read opportunistically (page URLs, browser hints): anything
/// that is not a string or number is ignored rather than refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        Ok(Text(match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => non_empty(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }))
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TimeValue {
    Text(String),
    Millis(f64),
}

/// Parses an optional timestamp; `field` names it in the error.
pub fn parse_time(value: Option<&TimeValue>, field: &str) -> Result<Option<i64>, IngestError> {
    let bad = || {
        IngestError::field(
            field,
            format!("`{field}` is not an ISO 8601 time or epoch milliseconds"),
        )
    };
    match value {
        None => Ok(None),
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
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
    ]
    .iter()
    .find_map(|fmt| {
        NaiveDateTime::parse_from_str(s, fmt)
            .map(|t| t.and_utc().timestamp_millis())
            .ok()
            .or_else(|| {
                DateTime::parse_from_str(s, fmt)
                    .ok()
                    .map(|t| t.timestamp_millis())
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Option<i64> {
        parse_time(Some(&TimeValue::Text(s.into())), "timestamp").unwrap()
    }

    #[test]
    fn parses_the_shapes_sdks_send() {
        assert_eq!(t("2024-01-02T03:04:05.678Z"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02T04:04:05.678+01:00"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02T03:04:05.678"), Some(1_704_164_645_678));
        assert_eq!(t("2024-01-02 03:04:05.678"), Some(1_704_164_645_678));
        assert_eq!(
            t("2024-01-02T03:04:05.678123+00:00"),
            Some(1_704_164_645_678)
        );
        assert_eq!(
            parse_time(Some(&TimeValue::Millis(1.5e12)), "t").unwrap(),
            Some(1_500_000_000_000)
        );
        assert!(parse_time(Some(&TimeValue::Text("yesterday".into())), "timestamp").is_err());
        assert!(parse_time(Some(&TimeValue::Millis(f64::INFINITY)), "timestamp").is_err());
    }

    #[test]
    fn ids_accept_numbers_and_ignore_empty() {
        let id: Id = serde_json::from_str("42").unwrap();
        assert_eq!(id.0.as_deref(), Some("42"));
        let id: Id = serde_json::from_str("\"\"").unwrap();
        assert_eq!(id.0, None);
        assert!(serde_json::from_str::<Id>("{}").is_err());
    }
}
