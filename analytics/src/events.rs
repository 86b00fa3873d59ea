//! Listing and counting raw events: what arrived, filtered by name, person
//! and time range.

use crate::time::rfc3339;
use crate::AnalyticsError;
use leanloop_core::Event;
use leanloop_store::EventFilter;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Filters as a caller gives them; times are RFC 3339.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub name: Option<String>,
    /// A user id or anonymous id.
    pub user: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<usize>,
}

impl EventQuery {
    pub fn filter(&self, project_id: i64) -> Result<EventFilter, AnalyticsError> {
        let from_ms = parse_time(self.from.as_deref(), "from")?;
        let to_ms = parse_time(self.to.as_deref(), "to")?;
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            if from >= to {
                return Err(AnalyticsError::invalid("from", "`from` must be before `to`"));
            }
        }
        Ok(EventFilter {
            project_id,
            name: self.name.clone().filter(|n| !n.is_empty()),
            user: self.user.clone().filter(|u| !u.is_empty()),
            from_ms,
            to_ms,
        })
    }

    pub fn limit(&self) -> Result<usize, AnalyticsError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(AnalyticsError::invalid("limit", format!("`limit` must be from 1 to {MAX_LIMIT}"))),
        }
    }
}

fn parse_time(value: Option<&str>, field: &'static str) -> Result<Option<i64>, AnalyticsError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            crate::time::parse_rfc3339_ms(v).ok_or_else(|| {
                AnalyticsError::invalid(field, format!("`{field}` must be an RFC 3339 time, e.g. 2024-05-01T00:00:00Z"))
            })
        })
        .transpose()
}

/// An event as the API shows it: times in RFC 3339, properties as JSON.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EventView {
    pub uuid: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub timestamp: String,
    pub received_at: String,
    pub timestamp_clamped: bool,
    #[serde(flatten)]
    pub fields: Fields,
    pub properties: serde_json::Value,
}

/// The optional columns, shown only when set.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Fields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        EventView {
            uuid: e.uuid.to_string(),
            kind: e.kind.as_str(),
            name: e.name,
            timestamp: rfc3339(e.timestamp_ms),
            received_at: rfc3339(e.received_at_ms),
            timestamp_clamped: e.timestamp_clamped,
            properties: serde_json::from_str(&e.properties).unwrap_or(serde_json::Value::Null),
            fields: Fields {
                anonymous_id: e.anonymous_id,
                user_id: e.user_id,
                session_id: e.session_id,
                release: e.release,
                url: e.url,
                path: e.path,
                page_name: e.page_name,
                referrer: e.referrer,
                referrer_domain: e.referrer_domain,
                utm_source: e.utm_source,
                utm_medium: e.utm_medium,
                utm_campaign: e.utm_campaign,
                utm_term: e.utm_term,
                utm_content: e.utm_content,
                browser: e.browser,
                browser_version: e.browser_version,
                os: e.os,
                device_type: e.device_type,
                country: e.country,
                ip: e.ip,
                library: e.library,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ranges_and_limits() {
        let q = EventQuery {
            from: Some("2024-01-02T00:00:00Z".into()),
            to: Some("2024-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(matches!(q.filter(1), Err(AnalyticsError::InvalidQuery { field, .. }) if field == "from"));
        let q = EventQuery { to: Some("tomorrow".into()), ..Default::default() };
        assert!(matches!(q.filter(1), Err(AnalyticsError::InvalidQuery { field, .. }) if field == "to"));
        let q = EventQuery { limit: Some(5000), ..Default::default() };
        assert!(matches!(q.limit(), Err(AnalyticsError::InvalidQuery { field, .. }) if field == "limit"));
        let q = EventQuery { from: Some("2024-01-01T00:00:00+02:00".into()), ..Default::default() };
        assert_eq!(q.filter(7).unwrap().from_ms, Some(1_704_060_000_000));
    }
}
