//! The canonical event: what every wire format is decoded into and what every
//! event store writes. Field names here are the column names of the stores.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What kind of call produced an event. Names follow one convention so that
/// Segment and PostHog traffic land in the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Track,
    Page,
    Screen,
    Identify,
    Group,
    Alias,
    Feedback,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Track,
        EventKind::Page,
        EventKind::Screen,
        EventKind::Identify,
        EventKind::Group,
        EventKind::Alias,
        EventKind::Feedback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Track => "track",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Identify => "identify",
            EventKind::Group => "group",
            EventKind::Alias => "alias",
            EventKind::Feedback => "feedback",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The stored event name for kinds whose name is fixed; `None` for tracks,
    /// which keep the name the client gave.
    pub fn fixed_name(self) -> Option<&'static str> {
        match self {
            EventKind::Track => None,
            EventKind::Page => Some("$pageview"),
            EventKind::Screen => Some("$screen"),
            EventKind::Identify => Some("$identify"),
            EventKind::Group => Some("$group"),
            EventKind::Alias => Some("$alias"),
            EventKind::Feedback => Some("$feedback"),
        }
    }
}

/// The earliest event time a query can reach, in ms: 1970-01-02T00:00Z, as
/// a local day that starts on 1970-01-01 in a zone east of UTC begins before
/// the epoch, where ClickHouse's `DateTime` has no values. Earlier times are
/// the receive time instead (flagged), and queries start no earlier.
pub const EARLIEST_MS: i64 = 86_400_000;

/// One event as stored. Optional text fields are `None` when the client sent
/// nothing usable; stores keep them as NULL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub uuid: Uuid,
    pub project_id: i64,
    pub kind: EventKind,
    pub name: String,
    /// When the event happened, in ms since the epoch, after clock-skew correction.
    pub timestamp_ms: i64,
    pub received_at_ms: i64,
    /// True when the client's timestamp was too far in the future, or
    /// before [`EARLIEST_MS`], and was replaced by the receive time.
    pub timestamp_clamped: bool,
    pub anonymous_id: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub release: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    /// The page's or screen's own name (`analytics.page("Pricing")`).
    pub page_name: Option<String>,
    pub referrer: Option<String>,
    pub referrer_domain: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub browser: Option<String>,
    pub browser_version: Option<String>,
    pub os: Option<String>,
    pub device_type: Option<String>,
    pub country: Option<String>,
    /// The client address, anonymised unless the project opted in to full IPs.
    pub ip: Option<String>,
    /// The SDK that sent the event (`analytics-python`, `posthog-python`, ...).
    pub library: Option<String>,
    /// Event properties as a JSON object (serialized text).
    pub properties: String,
}

impl Event {
    /// An event with only its identity and times set: every optional field
    /// empty, no properties. Decoders and tests fill in the rest.
    pub fn new(uuid: Uuid, project_id: i64, kind: EventKind, name: impl Into<String>, timestamp_ms: i64) -> Event {
        Event {
            uuid,
            project_id,
            kind,
            name: name.into(),
            timestamp_ms,
            received_at_ms: timestamp_ms,
            timestamp_clamped: false,
            anonymous_id: None,
            user_id: None,
            session_id: None,
            release: None,
            url: None,
            path: None,
            page_name: None,
            referrer: None,
            referrer_domain: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            browser: None,
            browser_version: None,
            os: None,
            device_type: None,
            country: None,
            ip: None,
            library: None,
            properties: "{}".into(),
        }
    }
}

/// Traits learnt about a person from an identify call (or a PostHog `$set`),
/// and the anonymous id that identify linked to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUpdate {
    pub project_id: i64,
    pub user_id: String,
    pub anonymous_id: Option<String>,
    /// JSON object text; merged into what is stored, later keys win.
    pub traits: String,
    /// JSON object text of traits set only where the person has none yet
    /// (PostHog `$set_once`: first referrer, signup date); `"{}"` when none.
    pub traits_once: String,
    pub seen_at_ms: i64,
}
