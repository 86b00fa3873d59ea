//! Segment's HTTP Tracking API: `/v1/track`, `/page`, `/screen`, `/identify`,
//! `/group`, `/alias` and `/batch`.

use super::fields::object_or_empty_list;
use super::{
    decode_item, object_text, parse_body, parse_time, person_id, split_items, with_property, Decoded, Id, Incoming,
    LenientObject, Text, TimeValue, Utm,
};
use crate::IngestError;
use leanloop_core::EventKind;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    message_id: Option<Id>,
    user_id: Option<Id>,
    anonymous_id: Option<Id>,
    event: Option<Id>,
    name: Option<Text>,
    /// A page's or screen's category (`page(category, name)`).
    category: Option<Text>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "object_or_empty_list")]
    context: Option<Context>,
    timestamp: Option<TimeValue>,
    original_timestamp: Option<TimeValue>,
    sent_at: Option<TimeValue>,
    group_id: Option<Id>,
    previous_id: Option<Id>,
    write_key: Option<Text>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", default)]
struct Context {
    ip: Option<Text>,
    user_agent: Option<Text>,
    #[serde(deserialize_with = "object_or_empty_list")]
    page: Option<PageContext>,
    #[serde(deserialize_with = "object_or_empty_list")]
    campaign: Option<Campaign>,
    #[serde(deserialize_with = "object_or_empty_list")]
    app: Option<App>,
    #[serde(deserialize_with = "object_or_empty_list")]
    library: Option<Library>,
    /// Read when they are objects, else ignored as they were before they
    /// were read: not worth refusing an event, or a batch's shared context.
    os: LenientObject<Os>,
    device: LenientObject<Device>,
    release: Option<Text>,
    #[serde(alias = "session_id")]
    session_id: Option<Text>,
    /// The user's traits as the client knows them; RudderStack's SDKs send
    /// an identify's traits only here.
    traits: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct PageContext {
    url: Option<Text>,
    path: Option<Text>,
    referrer: Option<Text>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Campaign {
    name: Option<Text>,
    source: Option<Text>,
    medium: Option<Text>,
    term: Option<Text>,
    content: Option<Text>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct App {
    version: Option<Text>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Library {
    name: Option<Text>,
}

/// What a mobile SDK says of its OS (`context.os`): apps send no browser
/// agent, and Android's `Dalvik/…` says nothing of the OS version or form.
#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Os {
    name: Option<Text>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Device {
    /// The platform (`ios`, `android`) in Segment's and RudderStack's SDKs.
    #[serde(rename = "type")]
    kind: Option<Text>,
    model: Option<Text>,
}

impl Device {
    /// The device type column's value: SDKs name a platform, not a form;
    /// an iPad says so in its model.
    fn device_type(self) -> Option<String> {
        let kind = Text::take(self.kind)?.to_ascii_lowercase();
        let ipad = Text::take(self.model).is_some_and(|m| m.starts_with("iPad"));
        let form = match kind.as_str() {
            "ios" | "android" if ipad => "tablet",
            "ios" | "android" | "mobile" => "mobile",
            "tablet" | "desktop" => return Some(kind),
            _ => return None,
        };
        Some(form.to_owned())
    }
}

/// Fills what `a` lacks from `b`, field by field, at every level.
macro_rules! fill {
    ($a:expr, $b:expr; $($field:ident),+) => {{
        $( if $a.$field.is_none() { $a.$field = $b.$field.clone(); } )+
    }};
}

impl Context {
    /// How many bytes of text this context can copy into each message of
    /// its batch.
    fn shared_bytes(&self) -> usize {
        fn len(text: &Option<Text>) -> usize {
            text.as_ref().and_then(|t| t.0.as_ref()).map_or(0, String::len)
        }
        let page = self.page.as_ref().map_or(0, |p| len(&p.url) + len(&p.path) + len(&p.referrer));
        let campaign = self
            .campaign
            .as_ref()
            .map_or(0, |c| len(&c.name) + len(&c.source) + len(&c.medium) + len(&c.term) + len(&c.content));
        len(&self.ip)
            + len(&self.user_agent)
            + len(&self.release)
            + len(&self.session_id)
            + self.traits.as_ref().map_or(0, |t| t.get().len())
            + page
            + campaign
            + self.app.as_ref().map_or(0, |a| len(&a.version))
            + self.library.as_ref().map_or(0, |l| len(&l.name))
            + self.os.0.as_ref().map_or(0, |o| len(&o.name))
            + self.device.0.as_ref().map_or(0, |d| len(&d.kind) + len(&d.model))
    }

    /// This message's context, with what it lacks taken from the batch's
    /// (Segment lets a batch carry one context for all its messages).
    fn or_batch(mut self, batch: &Context) -> Context {
        fill!(self, batch; ip, user_agent, release, session_id, traits);
        fill_part(&mut self.page, &batch.page, |m, t| fill!(m, t; url, path, referrer));
        fill_part(&mut self.campaign, &batch.campaign, |m, t| fill!(m, t; name, source, medium, term, content));
        fill_part(&mut self.app, &batch.app, |m, t| fill!(m, t; version));
        fill_part(&mut self.library, &batch.library, |m, t| fill!(m, t; name));
        fill_part(&mut self.os.0, &batch.os.0, |m, t| fill!(m, t; name));
        fill_part(&mut self.device.0, &batch.device.0, |m, t| fill!(m, t; kind, model));
        self
    }
}

/// Takes the batch's part whole when the message has none, else fills it.
fn fill_part<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>, fill: impl FnOnce(&mut T, &T)) {
    match (mine.as_mut(), theirs) {
        (Some(m), Some(t)) => fill(m, t),
        (None, Some(t)) => *mine = Some(t.clone()),
        _ => {}
    }
}

/// The properties Leanloop reads for its own columns; all else stays in the JSON.
#[derive(Deserialize, Default)]
#[serde(default)]
struct KnownProperties {
    url: Option<Text>,
    path: Option<Text>,
    referrer: Option<Text>,
    release: Option<Text>,
    session_id: Option<Text>,
}

impl KnownProperties {
    /// Names whose quoted form must appear in the text for a known property
    /// to be there, unless the names are written with escapes.
    const QUOTED: [&'static str; 5] = ["\"url\"", "\"path\"", "\"referrer\"", "\"release\"", "\"session_id\""];

    /// Reads them from properties text. Most events carry none, and a look
    /// for their names costs a fraction of a parse.
    fn of(properties: &str) -> KnownProperties {
        let may_hold = properties.contains('\\') || Self::QUOTED.iter().any(|name| properties.contains(name));
        if !may_hold {
            return KnownProperties::default();
        }
        super::known_properties(properties)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    sent_at: Option<TimeValue>,
    write_key: Option<Text>,
    #[serde(default, deserialize_with = "object_or_empty_list")]
    context: Option<Context>,
}

/// Which endpoint was called: a batch, or one call of a fixed type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Batch,
    Single(EventKind),
}

/// Decodes a Segment body. `reserve` is told, before a batch's events are
/// decoded, how many bytes its shared `context` adds by being copied into
/// each of them, and may refuse: a small body could otherwise fan out into
/// tens of megabytes.
pub fn decode(
    text: &str,
    call: Call,
    max_event_bytes: usize,
    max_batch: usize,
    reserve: &mut dyn FnMut(usize) -> Result<(), IngestError>,
) -> Result<Decoded, IngestError> {
    match call {
        Call::Single(kind) => {
            if text.len() > max_event_bytes {
                return Err(IngestError::EventTooLarge { limit: max_event_bytes });
            }
            let message: Message = parse_body(text)?;
            let key = Text::take(message.write_key.clone());
            Ok(Decoded { key, items: vec![incoming(message, Some(kind), None)] })
        }
        Call::Batch => {
            let body: BatchBody = parse_body(text)?;
            if body.batch.len() > max_batch {
                return Err(IngestError::BatchTooLarge { count: body.batch.len(), limit: max_batch });
            }
            let sent_at = parse_time(body.sent_at.as_ref(), "sentAt")?;
            let mut key = Text::take(body.write_key);
            let shared = body.context;
            let shared_bytes = shared.as_ref().map_or(0, Context::shared_bytes);
            reserve(shared_bytes.saturating_mul(body.batch.len()))?;
            let items = split_items(body.batch, shared_bytes, max_event_bytes)
                .map(|raw| {
                    let mut message: Message = decode_item(raw?)?;
                    if key.is_none() {
                        key = Text::take(message.write_key.clone());
                    }
                    if let Some(shared) = &shared {
                        message.context = Some(message.context.take().unwrap_or_default().or_batch(shared));
                    }
                    incoming(message, None, sent_at)
                })
                .collect();
            Ok(Decoded { key, items })
        }
    }
}

fn incoming(
    m: Message<'_>,
    endpoint_kind: Option<EventKind>,
    batch_sent_at: Option<i64>,
) -> Result<Incoming, IngestError> {
    let kind = match (endpoint_kind, m.kind.as_deref()) {
        (Some(kind), _) => kind,
        (None, Some(t)) => EventKind::parse(&t.to_ascii_lowercase())
            .filter(|k| *k != EventKind::Feedback)
            .ok_or_else(|| IngestError::field("type", format!("unknown message type `{t}`")))?,
        (None, None) => return Err(IngestError::field("type", "`type` is required in a batch message")),
    };
    let context = m.context.unwrap_or_default();
    let page = context.page.unwrap_or_default();
    let campaign = context.campaign.unwrap_or_default();
    let properties = object_text(m.properties, "properties")?;
    let known = KnownProperties::of(&properties);
    // Kept as the property analytics.js writes it to, unless one is there.
    let properties = match Text::take(m.category) {
        Some(category) if matches!(kind, EventKind::Page | EventKind::Screen) => {
            with_property(properties, "category", &category)
        }
        _ => properties,
    };

    let name = match kind {
        EventKind::Track => Id::take(m.event).ok_or_else(|| IngestError::field("event", "`event` is required"))?,
        _ => kind.fixed_name().unwrap_or_default().to_owned(),
    };
    let user_id = person_id(m.user_id, "userId")?;
    let anonymous_id = person_id(m.anonymous_id, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(IngestError::field("userId", "either `userId` or `anonymousId` is required"));
    }
    if kind == EventKind::Alias && user_id.is_none() {
        return Err(IngestError::field("userId", "an alias needs the `userId` that `previousId` becomes"));
    }
    let traits = match kind {
        EventKind::Identify => Some(identify_traits(m.traits, context.traits.as_deref())?),
        _ => None,
    };
    // Read only by an alias, as the id it links.
    let previous_id = match kind {
        EventKind::Alias => person_id(m.previous_id, "previousId")?,
        _ => None,
    };
    let properties = match kind {
        EventKind::Group => with_extra(&properties, "$group_id", Id::take(m.group_id), m.traits)?,
        EventKind::Alias => with_extra(&properties, "$previous_id", previous_id.clone(), None)?,
        _ => properties,
    };
    let timestamp = parse_time(m.timestamp.as_ref(), "timestamp")?;
    let original = parse_time(m.original_timestamp.as_ref(), "originalTimestamp")?;
    let (url, path, referrer) = page_columns(kind, known.url, known.path, known.referrer, page);
    Ok(Incoming {
        key: Text::take(m.write_key.clone()),
        kind: Some(kind),
        name,
        message_id: Id::take(m.message_id),
        timestamp_ms: timestamp.or(original),
        sent_at_ms: parse_time(m.sent_at.as_ref(), "sentAt")?.or(batch_sent_at),
        offset_ms: None,
        anonymous_id,
        user_id,
        previous_id,
        session_id: Text::take(context.session_id).or(Text::take(known.session_id)),
        release: Text::take(context.release)
            .or(Text::take(context.app.unwrap_or_default().version))
            .or(Text::take(known.release)),
        url,
        path,
        page_name: match kind {
            EventKind::Page | EventKind::Screen => Text::take(m.name),
            _ => None,
        },
        referrer,
        referrer_domain: None,
        utm: Utm {
            source: Text::take(campaign.source),
            medium: Text::take(campaign.medium),
            campaign: Text::take(campaign.name),
            term: Text::take(campaign.term),
            content: Text::take(campaign.content),
        },
        user_agent: Text::take(context.user_agent),
        ip: Text::take(context.ip),
        library: Text::take(context.library.unwrap_or_default().name),
        os: Text::take(context.os.0.unwrap_or_default().name),
        device_type: context.device.0.unwrap_or_default().device_type(),
        properties,
        traits,
        ..Incoming::default()
    })
}

/// The url, path and referrer columns. A page's or screen's properties
/// describe it, over its context's page, field by field. Any other event's
/// page is its context's, whole when that names a url (a track's `url` is
/// the thing it is about: a product's, in Segment's e-commerce events);
/// without one, properties fill in (server-side calls have no context).
fn page_columns(
    kind: EventKind,
    url: Option<Text>,
    path: Option<Text>,
    referrer: Option<Text>,
    page: PageContext,
) -> (Option<String>, Option<String>, Option<String>) {
    let page_first = !matches!(kind, EventKind::Page | EventKind::Screen);
    let page_url = Text::take(page.url);
    if page_first && page_url.is_some() {
        return (page_url, Text::take(page.path), Text::take(page.referrer));
    }
    (
        Text::take(url).or(page_url),
        Text::take(path).or(Text::take(page.path)),
        Text::take(referrer).or(Text::take(page.referrer)),
    )
}

/// An identify's traits: those of the message, over those of its context.
fn identify_traits(own: Option<&RawValue>, context: Option<&RawValue>) -> Result<String, IngestError> {
    let own = object_text(own, "traits")?;
    let context = object_text(context, "context.traits")?;
    if context == "{}" {
        return Ok(own);
    }
    if own == "{}" {
        return Ok(context);
    }
    let parse = |text: &str, field: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .map_err(|e| IngestError::field(field, e.to_string()))
    };
    let mut merged = parse(&context, "context.traits")?;
    merged.extend(parse(&own, "traits")?);
    Ok(serde_json::Value::Object(merged).to_string())
}

/// Adds a group id or previous id (and group traits) to the properties.
fn with_extra(
    properties: &str,
    key: &str,
    value: Option<String>,
    traits: Option<&RawValue>,
) -> Result<String, IngestError> {
    let field = if key == "$group_id" { "groupId" } else { "previousId" };
    let value = value.ok_or_else(|| IngestError::field(field, format!("`{field}` is required")))?;
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(properties).map_err(|e| IngestError::field("properties", e.to_string()))?;
    map.insert(key.to_owned(), serde_json::Value::String(value));
    if let Some(traits) = traits {
        let traits: serde_json::Value = serde_json::from_str(&object_text(Some(traits), "traits")?)
            .map_err(|e| IngestError::field("traits", e.to_string()))?;
        map.insert("$group_traits".to_owned(), traits);
    }
    Ok(serde_json::Value::Object(map).to_string())
}

#[cfg(test)]
mod tests {
    use super::super::MAX_NESTING;
    use super::super::MAX_PERSON_ID_BYTES;
    use super::*;

    fn one(text: &str, call: Call) -> Result<Incoming, IngestError> {
        decode(text, call, 32 * 1024, 1000, &mut free).and_then(|mut d| d.items.remove(0))
    }

    #[test]
    fn an_alias_needs_its_user_id_and_previous_id_a_group_its_group_id() {
        let field = |text: &str, call: Call| match one(text, call) {
            Err(IngestError::BadField { field, .. }) => field,
            other => panic!("{text}: {other:?}"),
        };
        let alias = Call::Single(EventKind::Alias);
        assert!(one(r#"{"userId":"u","previousId":"p"}"#, alias).is_ok());
        assert_eq!(field(r#"{"anonymousId":"a","previousId":"p"}"#, alias), "userId");
        assert_eq!(field(r#"{"userId":"u"}"#, alias), "previousId");
        assert_eq!(field(r#"{"userId":"u"}"#, Call::Single(EventKind::Group)), "groupId");
    }

    #[test]
    fn a_person_id_longer_than_its_limit_is_refused_by_name() {
        let long = "é".repeat(MAX_PERSON_ID_BYTES / 2 + 1);
        let at_limit = "x".repeat(MAX_PERSON_ID_BYTES);
        let track = Call::Single(EventKind::Track);
        let ok = one(&format!(r#"{{"event":"e","userId":"{at_limit}"}}"#), track).unwrap();
        assert_eq!(ok.user_id.as_deref(), Some(at_limit.as_str()));
        for (text, call, field) in [
            (format!(r#"{{"event":"e","userId":"{long}"}}"#), track, "userId"),
            (format!(r#"{{"event":"e","anonymousId":"{long}"}}"#), track, "anonymousId"),
            (format!(r#"{{"userId":"u","previousId":"{long}"}}"#), Call::Single(EventKind::Alias), "previousId"),
        ] {
            match one(&text, call) {
                Err(IngestError::BadField { field: named, message }) => {
                    assert_eq!(named, field);
                    assert!(message.contains("at most 1024"), "{message}");
                }
                other => panic!("{field}: expected a refusal, got {other:?}"),
            }
        }
        // A track reads no `previousId`.
        assert!(one(&format!(r#"{{"event":"e","userId":"u","previousId":"{long}"}}"#), track).is_ok());
    }

    #[test]
    fn an_empty_list_is_no_context_and_other_lists_are_refused() {
        let track = |context: &str| format!(r#"{{"event":"e","userId":"u","context":{context}}}"#);
        for empty in ["[]", "null", r#"{"page":[],"app":null}"#] {
            let i = one(&track(empty), Call::Single(EventKind::Track)).unwrap();
            assert_eq!((i.url, i.release), (None, None), "{empty}");
        }
        // Read as a struct from a list, these would set the ip and the agent.
        for (list, field) in [(r#"["1.2.3.4","agent"]"#, "context"), (r#"{"page":["https://x/"]}"#, "context.page")] {
            match one(&track(list), Call::Single(EventKind::Track)) {
                Err(IngestError::BadField { field: named, .. }) => assert_eq!(named, field, "{list}"),
                other => panic!("{list}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_batch_context_fills_what_messages_lack() {
        let text = r#"{"context":{"app":{"version":"9.9"},"userAgent":"batch-UA","page":{"url":"https://b.example/x","referrer":"https://r.example/"}},
                      "batch":[{"type":"track","event":"a","userId":"u"},
                               {"type":"track","event":"b","userId":"u","context":{"release":"1.0","page":{"url":"https://m.example/y"}}}]}"#;
        let items: Vec<Incoming> = decode(text, Call::Batch, 32 * 1024, 1000, &mut free)
            .unwrap()
            .items
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(items[0].release.as_deref(), Some("9.9"));
        assert_eq!(items[0].user_agent.as_deref(), Some("batch-UA"));
        assert_eq!(items[0].url.as_deref(), Some("https://b.example/x"));
        assert_eq!(items[1].release.as_deref(), Some("1.0"), "the message's own context wins");
        assert_eq!(items[1].url.as_deref(), Some("https://m.example/y"));
        assert_eq!(items[1].referrer.as_deref(), Some("https://r.example/"), "filled field by field");
    }

    #[test]
    fn identify_traits_come_from_the_message_over_its_context() {
        let identify = |text: &str| one(text, Call::Single(EventKind::Identify));
        let traits = |text: &str| -> serde_json::Value {
            serde_json::from_str(&identify(text).unwrap().traits.unwrap()).unwrap()
        };
        // RudderStack's SDKs send them in the context only.
        let only_context = traits(r#"{"userId":"u","context":{"traits":{"email":"a@x.io"}}}"#);
        assert_eq!(only_context, serde_json::json!({"email": "a@x.io"}));
        let both =
            traits(r#"{"userId":"u","traits":{"plan":"pro"},"context":{"traits":{"plan":"free","email":"a@x.io"}}}"#);
        assert_eq!(both, serde_json::json!({"plan": "pro", "email": "a@x.io"}));
        let batch = r#"{"context":{"traits":{"team":"core"}},"batch":[{"type":"identify","userId":"u"}]}"#;
        let item = decode(batch, Call::Batch, 32 * 1024, 1000, &mut free).unwrap().items.remove(0).unwrap();
        assert_eq!(item.traits.as_deref(), Some(r#"{"team":"core"}"#));
        match identify(r#"{"userId":"u","context":{"traits":[1]}}"#) {
            Err(IngestError::BadField { field, .. }) => assert_eq!(field, "context.traits"),
            other => panic!("expected a refusal naming context.traits, got {other:?}"),
        }
        let track = one(
            r#"{"userId":"u","event":"e","context":{"traits":{"email":"a@x.io"}}}"#,
            Call::Single(EventKind::Track),
        );
        assert_eq!(track.unwrap().traits, None, "only an identify changes the person");
    }

    #[test]
    fn numbers_beyond_a_float_are_refused_naming_the_field() {
        let track = |properties: &str| {
            one(&format!(r#"{{"userId":"u","event":"e","properties":{properties}}}"#), Call::Single(EventKind::Track))
        };
        let huge = format!("1{}", "0".repeat(309));
        let long_mantissa = format!(r#"{{"a":1{}e10,"plan":"pro"}}"#, "0".repeat(300));
        let long_fraction = format!(r#"{{"a":1{}.5e9}}"#, "0".repeat(300));
        for bad in
            [r#"{"a":1e400}"#, r#"{"a":[-2.5E+308]}"#, &format!(r#"{{"a":{huge}}}"#), &long_mantissa, &long_fraction]
        {
            match track(bad) {
                Err(IngestError::BadField { field, .. }) => assert_eq!(field, "properties", "{bad}"),
                other => panic!("{bad}: expected a refusal, got {other:?}"),
            }
        }
        // Within range, tiny, or only looking like a number inside a string.
        let near = format!("9{}", "0".repeat(307));
        let small_long = format!(r#"{{"a":0.{}1e99}}"#, "0".repeat(250));
        for good in [
            r#"{"a":1e308,"b":1e-400}"#,
            r#"{"id":"3e400","hash":"ab12e999"}"#,
            &format!(r#"{{"a":{near}}}"#),
            &small_long,
        ] {
            assert_eq!(track(good).unwrap().properties, good);
        }
        match one(r#"{"userId":"u","traits":{"score":1e999}}"#, Call::Single(EventKind::Identify)) {
            Err(IngestError::BadField { field, .. }) => assert_eq!(field, "traits"),
            other => panic!("expected a refusal naming traits, got {other:?}"),
        }
    }

    #[test]
    fn a_tracks_url_property_leaves_the_page_to_the_context_and_apps_name_os_and_device() {
        let text = r#"{"anonymousId":"s","event":"Product Viewed","properties":{"url":"https://shop.example/p/1"},
            "context":{"page":{"url":"https://shop.example/c?utm_source=n","path":"/c"},
                       "os":{"name":"Android"},"device":{"type":"android","model":"Pixel 8"}}}"#;
        let i = one(text, Call::Single(EventKind::Track)).unwrap();
        assert_eq!(i.url.as_deref(), Some("https://shop.example/c?utm_source=n"));
        assert_eq!(i.path.as_deref(), Some("/c"));
        assert_eq!(i.properties, r#"{"url":"https://shop.example/p/1"}"#);
        assert_eq!((i.os.as_deref(), i.device_type.as_deref()), (Some("Android"), Some("mobile")));
        let ipad = r#"{"userId":"u","name":"Home","context":{"device":{"type":"ios","model":"iPad13,1"}}}"#;
        assert_eq!(one(ipad, Call::Single(EventKind::Screen)).unwrap().device_type.as_deref(), Some("tablet"));
        let odd = r#"{"userId":"u","event":"e","context":{"os":"iOS","device":["ios","iPad13,1"],"page":{"url":"https://x.io/p"}},
            "properties":{"path":"/checkout"}}"#;
        let i = one(odd, Call::Single(EventKind::Track)).unwrap();
        assert_eq!((i.os, i.device_type), (None, None), "parts that are no objects are ignored");
        assert_eq!(i.path, None, "the context's page is taken whole");
        let server = r#"{"userId":"u","event":"Link Clicked","properties":{"url":"https://x.io/a"}}"#;
        assert_eq!(one(server, Call::Single(EventKind::Track)).unwrap().url.as_deref(), Some("https://x.io/a"));
    }

    #[test]
    fn track_takes_context_and_release() {
        let i = one(
            r#"{"userId":"u1","event":"Signed Up","messageId":"m1","properties":{"plan":"pro"},
               "context":{"app":{"version":"2.1.0"},"userAgent":"UA","ip":"1.2.3.4",
               "campaign":{"name":"spring","source":"news"},"library":{"name":"analytics-python"}},
               "timestamp":"2024-01-02T03:04:05Z"}"#,
            Call::Single(EventKind::Track),
        )
        .unwrap();
        assert_eq!(i.name, "Signed Up");
        assert_eq!(i.release.as_deref(), Some("2.1.0"));
        assert_eq!(i.utm.campaign.as_deref(), Some("spring"));
        assert_eq!(i.library.as_deref(), Some("analytics-python"));
        assert_eq!(i.properties, r#"{"plan":"pro"}"#);
        assert_eq!(i.timestamp_ms, Some(1_704_164_645_000));
    }

    #[test]
    fn release_prefers_context_release_then_app_then_properties() {
        let r = |ctx: &str, props: &str| {
            one(
                &format!(r#"{{"userId":"u","event":"e","context":{ctx},"properties":{props}}}"#),
                Call::Single(EventKind::Track),
            )
            .unwrap()
            .release
        };
        assert_eq!(r(r#"{"release":"r1","app":{"version":"a"}}"#, r#"{"release":"p"}"#).as_deref(), Some("r1"));
        assert_eq!(r(r#"{"app":{"version":"a"}}"#, r#"{"release":"p"}"#).as_deref(), Some("a"));
        assert_eq!(r("{}", r#"{"release":"p"}"#).as_deref(), Some("p"));
    }

    #[test]
    fn page_is_a_pageview_with_its_name_kept() {
        let i = one(
            r#"{"anonymousId":"a","name":"Pricing","properties":{"url":"https://x.io/p?utm_source=g"}}"#,
            Call::Single(EventKind::Page),
        )
        .unwrap();
        assert_eq!(i.name, "$pageview");
        assert_eq!(i.page_name.as_deref(), Some("Pricing"));
        assert_eq!(i.url.as_deref(), Some("https://x.io/p?utm_source=g"));

        let categorised = |properties: &str| {
            let text = format!(r#"{{"anonymousId":"a","name":"Pricing","category":"Docs","properties":{properties}}}"#);
            one(&text, Call::Single(EventKind::Page)).unwrap().properties
        };
        assert_eq!(categorised("{}"), r#"{"category":"Docs"}"#);
        assert_eq!(categorised(r#"{ "a": 1 } "#), r#"{ "a": 1 ,"category":"Docs"}"#);
        assert_eq!(categorised(r#"{"category":"Own"}"#), r#"{"category":"Own"}"#, "the app's own wins");
    }

    #[test]
    fn known_properties_are_read_however_their_names_are_written() {
        let props = |properties: &str| {
            let text = format!(r#"{{"userId":"u","event":"e","properties":{properties}}}"#);
            one(&text, Call::Single(EventKind::Track)).unwrap()
        };
        let escaped = props(r#"{"\u0075rl":"https://x.io/a","pa\u0074h":"/a","session_id":"s1"}"#);
        assert_eq!(escaped.url.as_deref(), Some("https://x.io/a"));
        assert_eq!(escaped.path.as_deref(), Some("/a"));
        assert_eq!(escaped.session_id.as_deref(), Some("s1"));
        let plain = props(r#"{"plan":"pro","release":"2.0","referrer":"https://r.io/"}"#);
        assert_eq!(plain.release.as_deref(), Some("2.0"));
        assert_eq!(plain.referrer.as_deref(), Some("https://r.io/"));
        let none = props(r#"{"plan":"pro","urls":["https://x.io/"],"note":"url"}"#);
        assert_eq!((none.url, none.path, none.release), (None, None, None));
        assert_eq!(none.properties, r#"{"plan":"pro","urls":["https://x.io/"],"note":"url"}"#);
    }

    #[test]
    fn refusals_name_the_field() {
        let field = |text: &str| match one(text, Call::Single(EventKind::Track)) {
            Err(IngestError::BadField { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        assert_eq!(field(r#"{"userId":"u"}"#), "event");
        assert_eq!(field(r#"{"event":"e"}"#), "userId");
        assert_eq!(field(r#"{"userId":"u","event":"e","properties":[1]}"#), "properties");
        assert_eq!(field(r#"{"userId":{"a":1},"event":"e"}"#), "userId");
        assert_eq!(field(r#"{"userId":"u","event":"e","timestamp":"soon"}"#), "timestamp");
        // A list is not read into an event by position, whatever its length.
        let positional = serde_json::to_string(&["track", "m1", "u1", "a1", "Signed Up"]).unwrap();
        let mut padded: Vec<serde_json::Value> = serde_json::from_str(&positional).unwrap();
        padded.resize(15, serde_json::Value::Null);
        for text in [positional, serde_json::to_string(&padded).unwrap(), "[]".into(), "7".into()] {
            assert_eq!(field(&text), "body", "{text}");
            let batch = decode(&text, Call::Batch, 32 * 1024, 1000, &mut free).map(|_| ()).unwrap_err();
            assert!(matches!(batch, IngestError::BadField { ref field, .. } if field == "body"), "{batch:?}");
        }
    }

    #[test]
    fn text_after_the_event_is_refused_not_dropped() {
        let two = "{\"userId\":\"u\",\"event\":\"a\"}\n{\"userId\":\"u\",\"event\":\"b\"}";
        assert!(matches!(one(two, Call::Single(EventKind::Track)), Err(IngestError::BadJson(_))));
        let batch = r#"{"batch":[{"type":"track","userId":"u","event":"a"}]} garbage"#;
        assert!(matches!(decode(batch, Call::Batch, 32 * 1024, 1000, &mut free), Err(IngestError::BadJson(_))));
    }

    #[test]
    fn batch_entries_that_are_not_objects_are_named() {
        let d = decode(
            r#"{"batch":[1,null,{"type":"track","userId":"u","event":"e"}]}"#,
            Call::Batch,
            32 * 1024,
            1000,
            &mut free,
        )
        .unwrap();
        let fields: Vec<Option<String>> = d
            .items
            .iter()
            .map(|i| match i {
                Err(IngestError::BadField { field, .. }) => Some(field.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(fields, [Some("batch[0]".to_owned()), Some("batch[1]".to_owned()), None]);
    }

    #[test]
    fn nesting_past_the_limit_is_refused_naming_the_field() {
        let nested = |depth: usize, field: &str| {
            let value = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            format!(r#"{{"userId":"u","event":"e","{field}":{{"plan":"pro","a":{value}}}}}"#)
        };
        // The object itself is one level: `depth` arrays inside make depth + 1.
        assert!(one(&nested(MAX_NESTING - 1, "properties"), Call::Single(EventKind::Track)).is_ok());
        for (field, call) in [("properties", EventKind::Track), ("traits", EventKind::Identify)] {
            match one(&nested(MAX_NESTING, field), Call::Single(call)) {
                Err(IngestError::BadField { field: named, .. }) => assert_eq!(named, field),
                other => panic!("expected a refusal naming {field}, got {other:?}"),
            }
        }
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"{{"userId":"u","event":"e","properties":{{"a":"{}\"[["}}}}"#, "[".repeat(200));
        assert!(one(&text, Call::Single(EventKind::Track)).is_ok());
    }

    #[test]
    fn a_batch_keeps_good_events_beside_bad_ones() {
        let d = decode(
            r#"{"writeKey":"k","sentAt":"2024-01-01T00:00:10Z","batch":[
                {"type":"track","userId":"u","event":"ok"},
                {"type":"track","userId":"u"},
                {"type":"nonsense","userId":"u"},
                {"type":"identify","userId":"u","traits":{"plan":"pro"}}]}"#,
            Call::Batch,
            32 * 1024,
            1000,
            &mut free,
        )
        .unwrap();
        assert_eq!(d.key.as_deref(), Some("k"));
        let ok: Vec<bool> = d.items.iter().map(|i| i.is_ok()).collect();
        assert_eq!(ok, [true, false, false, true]);
        let identify = d.items[3].as_ref().unwrap();
        assert_eq!(identify.traits.as_deref(), Some(r#"{"plan":"pro"}"#));
        assert_eq!(identify.sent_at_ms, Some(1_704_067_210_000));
    }

    #[test]
    fn batch_limits() {
        let big = format!(r#"{{"batch":[{}]}}"#, vec![r#"{"type":"track","userId":"u","event":"e"}"#; 1001].join(","));
        assert!(matches!(
            decode(&big, Call::Batch, 32 * 1024, 1000, &mut free),
            Err(IngestError::BatchTooLarge { count: 1001, .. })
        ));
        let fat = format!(
            r#"{{"batch":[{{"type":"track","userId":"u","event":"e","properties":{{"x":"{}"}}}}]}}"#,
            "a".repeat(40_000)
        );
        let d = decode(&fat, Call::Batch, 32 * 1024, 1000, &mut free).unwrap();
        assert!(matches!(d.items[0], Err(IngestError::EventTooLarge { .. })));
    }

    fn free(_: usize) -> Result<(), IngestError> {
        Ok(())
    }

    #[test]
    fn a_batch_context_counts_towards_each_event_it_is_copied_into() {
        let batch = |url_len: usize| {
            format!(
                r#"{{"context":{{"page":{{"url":"https://a.example/{}"}}}},"batch":[{}]}}"#,
                "x".repeat(url_len),
                [r#"{"type":"track","userId":"u","event":"e"}"#; 3].join(",")
            )
        };
        let d = decode(&batch(20_000), Call::Batch, 32 * 1024, 1000, &mut free).unwrap();
        assert!(d.items.iter().all(|i| i.is_ok()));
        let d = decode(&batch(40_000), Call::Batch, 32 * 1024, 1000, &mut free).unwrap();
        assert!(d.items.iter().all(|i| matches!(i, Err(IngestError::EventTooLarge { .. }))));
        // What the copies add is asked for before the events are decoded,
        // and a refusal refuses the request.
        let mut asked = Vec::new();
        let mut refuse = |bytes: usize| {
            asked.push(bytes);
            Err(IngestError::BodiesBusy)
        };
        let url = "https://a.example/".len() + 20_000;
        assert!(matches!(
            decode(&batch(20_000), Call::Batch, 32 * 1024, 1000, &mut refuse),
            Err(IngestError::BodiesBusy)
        ));
        assert_eq!(asked, [3 * url]);
    }
}
