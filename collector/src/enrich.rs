//! Enrichment: from what the client sent to the canonical [`Event`].
//!
//! Derives browser, OS and device from the user agent (parses cached), the
//! referrer's domain, UTM tags from the page URL, an anonymised client
//! address, the country from a trusted proxy header, a clock-skew-corrected
//! timestamp and — when the client sends none — a server-side session id.

use crate::sessions::Sessions;
use crate::wire::{Incoming, Utm};
use crate::IngestError;
use leanloop_core::{Event, EventKind, UserUpdate, EARLIEST_MS};
use lru::LruCache;
use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Timestamps further ahead of the receive time than this are clamped.
pub const MAX_FUTURE_MS: i64 = 23 * 3600 * 1000;

/// Namespace for turning non-UUID message ids into stable event uuids.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c65616e_6c6f_6f70_8000_6d7367696431);

/// Facts about the request that carried the events.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    pub project_id: i64,
    pub store_full_ip: bool,
    pub received_at_ms: i64,
    /// The client address (socket peer, or X-Forwarded-For when trusted).
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub country: Option<String>,
    /// The send time the request gave beside its body, in epoch ms:
    /// posthog-js's `_` query parameter, PostHog v1's request timestamp.
    pub request_sent_at: Option<i64>,
    /// The SDK the request's headers name, for events that name none
    /// (PostHog v1 sends it as `PostHog-Sdk-Info`, not as `$lib`).
    pub library: Option<String>,
    /// The SDK's version beside its name (`PostHog-Sdk-Info`).
    pub library_version: Option<String>,
}

/// Ids apps send by mistake for a person (an unset variable printed, a
/// form's field name), as PostHog lists them: linked to nobody.
fn is_placeholder_id(id: &str) -> bool {
    const PLACEHOLDERS: [&str; 16] = [
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
        "null",
        "none",
        "nan",
        "nil",
        "0",
        "[object object]",
    ];
    let id = id.trim();
    id.is_empty() || PLACEHOLDERS.iter().any(|p| p.eq_ignore_ascii_case(id))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Agent {
    browser: Option<String>,
    browser_version: Option<String>,
    os: Option<String>,
    device_type: Option<String>,
}

pub struct Enricher {
    agents: Mutex<LruCache<String, Arc<Agent>>>,
    sessions: Sessions,
}

impl Enricher {
    pub fn new(user_agent_cache: usize, sessions: Sessions) -> Enricher {
        let capacity = NonZeroUsize::new(user_agent_cache).unwrap_or(NonZeroUsize::MIN);
        Enricher { agents: Mutex::new(LruCache::new(capacity)), sessions }
    }

    /// Completes one event, but for a missing session id (`assign_sessions`,
    /// once per batch); returns it with the person update it implies.
    pub fn finish(&self, i: Incoming, req: &RequestFacts) -> Result<(Event, Option<UserUpdate>), IngestError> {
        let kind = i.kind.unwrap_or(EventKind::Track);
        let (timestamp_ms, timestamp_clamped) = corrected_time(&i, req.received_at_ms);
        let uuid = event_uuid(i.message_id.as_deref());

        let user_agent = i.user_agent.as_deref().or(req.user_agent.as_deref());
        let agent = user_agent.map(|ua| self.agent(ua)).unwrap_or_default();
        let page = i.url.as_deref().map(|u| LAST_PAGE.with_borrow_mut(|last| last.get(u, |u| Arc::new(page_of(u)))));
        let page = page.as_deref();
        let path = i.path.or_else(|| page.and_then(|p| p.path.clone()));
        let tagged = page.map(|p| p.utm.clone()).unwrap_or_default();
        // A domain the client sent is written as the server would derive it
        // (posthog-js sends the host as it is, `www.` and port included).
        let referrer_domain = i.referrer_domain.as_deref().and_then(host_domain).or_else(|| {
            let referrer = i.referrer.as_deref()?;
            LAST_REFERRER.with_borrow_mut(|last| last.get(referrer, domain_of))
        });

        let ip = i.ip.as_deref().and_then(|s| s.trim().parse::<IpAddr>().ok()).or(req.client_ip);
        let ip = ip.map(|ip| if req.store_full_ip { ip.to_string() } else { anonymise(ip).to_string() });

        // Identify links the anonymous id to the user, alias the previous id;
        // never to or from a placeholder, which would make one person of
        // every visitor an app's bug identified as it.
        let link = match kind {
            EventKind::Identify => i.anonymous_id.clone(),
            EventKind::Alias => i.previous_id.clone(),
            _ => None,
        };
        let link = link.filter(|id| !is_placeholder_id(id) && !i.user_id.as_deref().is_some_and(is_placeholder_id));
        let once = i.traits_once;
        let traits = i.traits.or_else(|| (link.is_some() || once.is_some()).then(|| "{}".to_owned()));
        let update = traits.map(|traits| UserUpdate {
            project_id: req.project_id,
            // Traits need a person: `$set` on an anonymous event updates the anonymous person.
            user_id: i.user_id.clone().or(i.anonymous_id.clone()).unwrap_or_default(),
            anonymous_id: link,
            traits,
            traits_once: once.unwrap_or_else(|| "{}".to_owned()),
            seen_at_ms: timestamp_ms,
        });

        let event = Event {
            uuid,
            project_id: req.project_id,
            kind,
            name: i.name,
            timestamp_ms,
            received_at_ms: req.received_at_ms,
            timestamp_clamped,
            anonymous_id: i.anonymous_id,
            user_id: i.user_id,
            // Filled for the whole batch by `assign_sessions` when missing.
            session_id: i.session_id,
            release: i.release,
            url: i.url,
            path,
            page_name: i.page_name,
            referrer: i.referrer,
            referrer_domain,
            utm_source: i.utm.source.or(tagged.source),
            utm_medium: i.utm.medium.or(tagged.medium),
            utm_campaign: i.utm.campaign.or(tagged.campaign),
            utm_term: i.utm.term.or(tagged.term),
            utm_content: i.utm.content.or(tagged.content),
            browser: i.browser.or_else(|| agent.browser.clone()),
            browser_version: i.browser_version.or_else(|| agent.browser_version.clone()),
            // Apps name their OS as their platform does (`iPadOS`, `macOS`).
            os: i.os.map(os_name).or_else(|| agent.os.clone()),
            // posthog-js capitalises its types (`Mobile`); the parser's and
            // Segment's are lower case: one bucket per form.
            device_type: i.device_type.map(|d| d.to_ascii_lowercase()).or_else(|| agent.device_type.clone()),
            country: req.country.clone(),
            ip,
            library: i.library.or_else(|| req.library.clone()),
            properties: i.properties,
        };
        Ok((event, update.filter(|u| !u.user_id.is_empty())))
    }

    /// Server-side sessions for the finished events that came without one.
    pub fn assign_sessions(&self, events: &mut [Event]) {
        self.sessions.assign(events);
    }

    fn agent(&self, ua: &str) -> Arc<Agent> {
        // Real agents are a few hundred bytes; what follows the first
        // kilobyte names no browser, and cutting it bounds both the cache
        // (entries × 1 KB) and the parse of a hostile 30 KB agent.
        let mut cut = ua.len().min(MAX_AGENT_BYTES);
        while !ua.is_char_boundary(cut) {
            cut -= 1;
        }
        let ua = &ua[..cut];
        // The per-thread memo spares the shared cache's lock.
        LAST_AGENT.with_borrow_mut(|last| {
            last.get(ua, |ua| {
                let cached = lock(&self.agents).get(ua).cloned();
                cached.unwrap_or_else(|| {
                    // Parse outside the lock: parsing is the slow part and is pure.
                    let parsed = Arc::new(parse_agent(ua));
                    lock(&self.agents).put(ua.to_owned(), parsed.clone());
                    parsed
                })
            })
        })
    }
}

/// The longest prefix of a user agent that is parsed and cached.
const MAX_AGENT_BYTES: usize = 1024;

thread_local! {
    static LAST_AGENT: RefCell<Last<Arc<Agent>>> = const { RefCell::new(Last(None)) };
    static LAST_PAGE: RefCell<Last<Arc<Page>>> = const { RefCell::new(Last(None)) };
    static LAST_REFERRER: RefCell<Last<Option<String>>> = const { RefCell::new(Last(None)) };
}

/// A thread's last input and what was derived from it. The events of one
/// request, and of one browser's requests, mostly share their user agent,
/// page and referrer: most lookups are this one comparison.
struct Last<V>(Option<(String, V)>);

impl<V: Clone> Last<V> {
    fn get(&mut self, key: &str, derive: impl FnOnce(&str) -> V) -> V {
        match &self.0 {
            Some((last, value)) if last == key => value.clone(),
            _ => {
                let value = derive(key);
                self.0 = Some((key.to_owned(), value.clone()));
                value
            }
        }
    }
}

/// What a page URL says: its path and UTM tags.
#[derive(Debug, Default)]
struct Page {
    path: Option<String>,
    utm: Utm,
}

fn page_of(url: &str) -> Page {
    match url::Url::parse(url) {
        Ok(url) => Page { path: Some(url.path().to_owned()), utm: utm_of(&url) },
        Err(_) => Page::default(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_agent(ua: &str) -> Agent {
    let Some(r) = woothee::parser::Parser::new().parse(ua) else {
        return Agent::default();
    };
    let known = |s: &str| (!s.is_empty() && s != "UNKNOWN").then(|| s.to_owned());
    let device_type = match r.category {
        "pc" => Some("desktop"),
        // A browser on an Android tablet leaves out "Mobile"; an app's
        // `Dalvik/…` agent leaves it out on every device.
        "smartphone"
            if ua.contains("iPad")
                || (ua.contains("Android") && !ua.contains("Mobile") && !ua.starts_with("Dalvik/")) =>
        {
            Some("tablet")
        }
        "smartphone" | "mobilephone" => Some("mobile"),
        "crawler" => Some("bot"),
        "appliance" => Some("console"),
        _ => None,
    };
    // curl, Java, Python's urllib...: a server's HTTP client, not a browser.
    let browser = (r.name != "HTTP Library").then_some((r.name, r.version));
    let (browser, browser_version) = match own_token(ua) {
        Some((name, version)) => (Some(name.to_owned()), version),
        None => (
            browser.and_then(|(name, _)| known(name)).map(|name| browser_name(name, r.os)),
            browser.and_then(|(_, version)| known(version)),
        ),
    };
    Agent { browser, browser_version, os: known(r.os).map(os_name), device_type: device_type.map(str::to_owned) }
}

/// Browsers the parser names for the engine they are built on (Samsung
/// Internet as Chrome, Facebook's in-app browser as Safari), known by their
/// own token instead: the token, and the name posthog-js gives them.
const OWN_TOKENS: [(&str, &str); 6] = [
    ("SamsungBrowser/", "Samsung Internet"),
    ("EdgiOS/", "Microsoft Edge"),
    ("EdgA/", "Microsoft Edge"),
    ("UCBrowser/", "UC Browser"),
    ("Opera Mini/", "Opera Mini"),
    ("FBAV/", "Facebook Mobile"),
];

/// The browser an agent names by its own token, with the version after it.
fn own_token(ua: &str) -> Option<(&'static str, Option<String>)> {
    OWN_TOKENS.iter().find_map(|(token, name)| {
        let after = &ua[ua.find(token)? + token.len()..];
        let end = after.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(after.len());
        Some((*name, Some(&after[..end]).filter(|v| !v.is_empty()).map(str::to_owned)))
    })
}

/// A browser named as posthog-js names it (`$browser`), for the same
/// reason as [`os_name`]; `os` is the parser's own name for the OS.
fn browser_name(parsed: String, os: &str) -> String {
    let ios = matches!(os, "iPhone" | "iPad" | "iPod");
    let named = match parsed.as_str() {
        "Safari" if ios => "Mobile Safari",
        // Android's own browser before Chrome.
        "Safari" if os == "Android" => "Android Mobile",
        "Chrome" if ios => "Chrome iOS",
        "Firefox" if ios => "Firefox iOS",
        "Edge" => "Microsoft Edge",
        _ => return parsed,
    };
    named.to_owned()
}

/// An OS named as posthog-js names it (`$os`), so events from its SDK and
/// those whose agent the server parsed fall into one bucket.
fn os_name(parsed: String) -> String {
    let named = match parsed.as_str() {
        "iPhone" | "iPad" | "iPod" | "iPadOS" => "iOS",
        "Mac OSX" | "macOS" => "Mac OS X",
        "ChromeOS" => "Chrome OS",
        "Windows Phone OS" | "Windows Phone" => "Windows Phone",
        windows if windows.starts_with("Windows") => "Windows",
        _ => return parsed,
    };
    named.to_owned()
}

/// UTM tags from a page URL's query, in one pass over it.
fn utm_of(url: &url::Url) -> Utm {
    let mut utm = Utm::default();
    if url.query().is_none_or(|q| !q.contains("utm_")) {
        return utm;
    }
    for (key, value) in url.query_pairs() {
        let slot = match key.as_ref() {
            "utm_source" => &mut utm.source,
            "utm_medium" => &mut utm.medium,
            "utm_campaign" => &mut utm.campaign,
            "utm_term" => &mut utm.term,
            "utm_content" => &mut utm.content,
            _ => continue,
        };
        if slot.is_none() && !value.is_empty() {
            *slot = Some(value.into_owned());
        }
    }
    utm
}

/// `timestamp + (received_at − sentAt)`, or `received_at − offset`; clamped
/// to the receive time (and flagged) when more than 23 h in the future or
/// before 1970-01-02 ([`EARLIEST_MS`]).
fn corrected_time(i: &Incoming, received_at_ms: i64) -> (i64, bool) {
    let t = match (i.timestamp_ms, i.sent_at_ms, i.offset_ms) {
        (Some(ts), Some(sent), _) => ts.saturating_add(received_at_ms.saturating_sub(sent)),
        (Some(ts), None, _) => ts,
        (None, _, Some(offset)) => received_at_ms - offset,
        (None, _, None) => received_at_ms,
    };
    // No query can reach it (a `0` meant as unset, or an absurd `sentAt`
    // skewing a sound timestamp there): clamped and flagged like the far
    // future.
    if t > received_at_ms + MAX_FUTURE_MS || t < EARLIEST_MS {
        (received_at_ms, true)
    } else {
        (t, false)
    }
}

/// The message id itself when it is a UUID; otherwise a UUID derived from it,
/// so retries of the same message map to the same event. No id: a fresh one.
pub fn event_uuid(message_id: Option<&str>) -> Uuid {
    match message_id {
        Some(id) => Uuid::parse_str(id.trim()).unwrap_or_else(|_| Uuid::new_v5(&MESSAGE_ID_NAMESPACE, id.as_bytes())),
        None => Uuid::now_v7(),
    }
}

/// The host of a URL without a leading `www.`.
fn domain_of(url: &str) -> Option<String> {
    let host = url::Url::parse(url).ok()?.host_str()?.to_ascii_lowercase();
    Some(host.strip_prefix("www.").map(str::to_owned).unwrap_or(host))
}

/// A host as a client names it (`www.Example.com:8443`), or a URL, as
/// [`domain_of`] writes it.
fn host_domain(host: &str) -> Option<String> {
    let host = host.trim();
    let domain = match host.contains("://") {
        true => domain_of(host),
        false => domain_of(&format!("http://{host}")),
    };
    domain.filter(|d| !d.is_empty() && d != "$direct")
}

/// IPv4: the last octet zeroed; IPv6: everything past the /48 zeroed.
pub fn anonymise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => anonymise(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                // A 6to4 address's /48 is `2002:` and the client's IPv4
                // address: its last octet goes too.
                let third = if s[0] == 0x2002 { s[2] & 0xff00 } else { s[2] };
                IpAddr::from([s[0], s[1], third, 0, 0, 0, 0, 0])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RequestFacts {
        RequestFacts {
            project_id: 1,
            store_full_ip: false,
            received_at_ms: 1_000_000_000_000,
            client_ip: Some("203.0.113.77".parse().unwrap()),
            user_agent: None,
            country: Some("NZ".into()),
            request_sent_at: None,
            library: None,
            library_version: None,
        }
    }

    fn enricher() -> Enricher {
        Enricher::new(100, Sessions::new(100, 30))
    }

    fn incoming() -> Incoming {
        Incoming {
            kind: Some(EventKind::Page),
            name: "$pageview".into(),
            anonymous_id: Some("a".into()),
            properties: "{}".into(),
            ..Incoming::default()
        }
    }

    #[test]
    fn derives_page_fields() {
        let i = Incoming {
            url: Some("https://shop.io/pricing?utm_source=news&utm_medium=email&utm_campaign=spring".into()),
            referrer: Some("https://www.Google.com/search?q=x".into()),
            user_agent: Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36".into()),
            ..incoming()
        };
        let enricher = enricher();
        let (e, _) = enricher.finish(i, &facts()).unwrap();
        assert_eq!(e.path.as_deref(), Some("/pricing"));
        assert_eq!(e.utm_source.as_deref(), Some("news"));
        assert_eq!(e.utm_medium.as_deref(), Some("email"));
        assert_eq!(e.utm_campaign.as_deref(), Some("spring"));
        assert_eq!(e.referrer_domain.as_deref(), Some("google.com"));
        assert_eq!(e.browser.as_deref(), Some("Chrome"));
        assert_eq!(e.os.as_deref(), Some("Windows"));
        assert_eq!(e.device_type.as_deref(), Some("desktop"));
        assert_eq!(e.ip.as_deref(), Some("203.0.113.0"));
        assert_eq!(e.country.as_deref(), Some("NZ"));
        let mut events = [e];
        enricher.assign_sessions(&mut events);
        assert!(events[0].session_id.is_some());
    }

    #[test]
    fn identify_links_ids_but_never_placeholders() {
        let enricher = enricher();
        let identify = |user: &str, anonymous: &str| {
            let i = Incoming {
                kind: Some(EventKind::Identify),
                name: "$identify".into(),
                user_id: Some(user.into()),
                anonymous_id: Some(anonymous.into()),
                traits: Some("{}".into()),
                ..incoming()
            };
            let (_, update) = enricher.finish(i, &facts()).unwrap();
            update.expect("an identify updates its person").anonymous_id
        };
        assert_eq!(identify("u1", "a1").as_deref(), Some("a1"));
        assert_eq!(identify("null", "a1"), None);
        assert_eq!(identify(" Undefined ", "a1"), None);
        assert_eq!(identify("[object Object]", "a1"), None);
        assert_eq!(identify("u1", "anonymous"), None);
        assert_eq!(identify("u1", "0"), None);
        assert_eq!(identify("user-0", "a-null").as_deref(), Some("a-null"));
    }

    #[test]
    fn consecutive_events_on_one_thread_each_get_their_own_page() {
        let enricher = enricher();
        let on = |url: &str, referrer: Option<&str>| Incoming {
            url: Some(url.into()),
            referrer: referrer.map(str::to_owned),
            ..incoming()
        };
        let pages = [
            ("https://a.io/one?utm_source=x", Some("https://www.b.io/"), "/one", Some("x"), Some("b.io")),
            ("https://a.io/one?utm_source=x", Some("https://www.b.io/"), "/one", Some("x"), Some("b.io")),
            ("https://a.io/two", Some("https://c.io/"), "/two", None, Some("c.io")),
            ("https://a.io/one?utm_source=x", None, "/one", Some("x"), None),
            ("not a url", Some("not a url"), "", None, None),
        ];
        for (url, referrer, path, source, domain) in pages {
            let (e, _) = enricher.finish(on(url, referrer), &facts()).unwrap();
            assert_eq!(e.path.as_deref().unwrap_or(""), path, "{url}");
            assert_eq!(e.utm_source.as_deref(), source, "{url}");
            assert_eq!(e.referrer_domain.as_deref(), domain, "{url} from {referrer:?}");
        }
    }

    #[test]
    fn a_referring_domain_sent_is_written_as_one_derived() {
        let enricher = enricher();
        let sent = [
            ("www.Google.com", Some("google.com")),
            ("news.example.org:8443", Some("news.example.org")),
            ("https://www.b.io/x", Some("b.io")),
            ("not a host", None),
            ("www.", None),
            ("$DIRECT", None),
        ];
        for (domain, stored) in sent {
            let i = Incoming { referrer_domain: Some(domain.into()), ..incoming() };
            let (e, _) = enricher.finish(i, &facts()).unwrap();
            assert_eq!(e.referrer_domain.as_deref(), stored, "{domain}");
        }
    }

    #[test]
    fn long_agents_are_parsed_and_cached_by_their_first_kilobyte() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let enricher = enricher();
        for tail in ["é".repeat(20_000), "x".repeat(30_000)] {
            let i = Incoming { user_agent: Some(format!("{chrome} {tail}")), ..incoming() };
            let (e, _) = enricher.finish(i, &facts()).unwrap();
            assert_eq!(e.browser.as_deref(), Some("Chrome"));
        }
        let cached: usize = lock(&enricher.agents).iter().map(|(ua, _)| ua.len()).sum();
        assert!(cached <= 2 * MAX_AGENT_BYTES, "{cached} bytes cached");
    }

    #[test]
    fn browsers_are_named_as_posthog_js_names_them() {
        let named = |ua: &str| parse_agent(ua).browser;
        let ios = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)";
        assert_eq!(
            named(&format!("{ios} CriOS/123.0.6312.52 Mobile/15E148 Safari/604.1")).as_deref(),
            Some("Chrome iOS")
        );
        assert_eq!(named(&format!("{ios} FxiOS/124.0 Mobile/15E148 Safari/605.1.15")).as_deref(), Some("Firefox iOS"));
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.65";
        assert_eq!(named(edge).as_deref(), Some("Microsoft Edge"));
        let mac = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
        assert_eq!(named(mac).as_deref(), Some("Safari"));
        let stock = "Mozilla/5.0 (Linux; U; Android 4.0.3; ko-kr; LG-L160L Build/IML74K) AppleWebkit/534.30 (KHTML, like Gecko) Version/4.0 Mobile Safari/534.30";
        assert_eq!(named(stock).as_deref(), Some("Android Mobile"));
        let android = "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko)";
        let samsung = parse_agent(&format!("{android} SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"));
        assert_eq!(
            (samsung.browser.as_deref(), samsung.browser_version.as_deref()),
            (Some("Samsung Internet"), Some("24.0"))
        );
        assert_eq!((samsung.os.as_deref(), samsung.device_type.as_deref()), (Some("Android"), Some("mobile")));
        let facebook = named(&format!("{ios} Mobile/15E148 [FBAN/FBIOS;FBAV/452.0.0.39.110;FBBV/1]"));
        assert_eq!(facebook.as_deref(), Some("Facebook Mobile"));
        assert_eq!(
            named(&format!("{ios} EdgiOS/123.0 Mobile/15E148 Safari/605.1.15")).as_deref(),
            Some("Microsoft Edge")
        );
    }

    #[test]
    fn mobile_and_tablet_agents() {
        let iphone = parse_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1");
        assert_eq!(iphone.device_type.as_deref(), Some("mobile"));
        assert_eq!(iphone.browser.as_deref(), Some("Mobile Safari"), "as posthog-js names it");
        assert_eq!(iphone.os.as_deref(), Some("iOS"));
        let ipad = parse_agent("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 Mobile/15E148 Safari/604.1");
        assert_eq!(ipad.device_type.as_deref(), Some("tablet"));
        assert_eq!(parse_agent("analytics-python/2.3"), Agent::default());
        let app = parse_agent("Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UQ1A.240205.004)");
        assert_eq!((app.os.as_deref(), app.device_type.as_deref()), (Some("Android"), Some("mobile")));
        let tablet = parse_agent("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36");
        assert_eq!(tablet.device_type.as_deref(), Some("tablet"));
        assert_eq!(parse_agent("curl/8.5.0"), Agent::default());
    }

    #[test]
    fn clock_skew_is_corrected_and_future_clamped() {
        let r = facts().received_at_ms;
        let skewed =
            Incoming { timestamp_ms: Some(r + 3_600_000 - 500), sent_at_ms: Some(r + 3_600_000), ..incoming() };
        assert_eq!(corrected_time(&skewed, r), (r - 500, false));
        let future = Incoming { timestamp_ms: Some(r + MAX_FUTURE_MS + 1), ..incoming() };
        assert_eq!(corrected_time(&future, r), (r, true));
        let near = Incoming { timestamp_ms: Some(r + MAX_FUTURE_MS - 1), ..incoming() };
        assert_eq!(corrected_time(&near, r), (r + MAX_FUTURE_MS - 1, false));
        let offset = Incoming { offset_ms: Some(1500), ..incoming() };
        assert_eq!(corrected_time(&offset, r), (r - 1500, false));
        let far_sent = Incoming { timestamp_ms: Some(r), sent_at_ms: Some(253_402_300_799_000), ..incoming() };
        assert_eq!(corrected_time(&far_sent, r), (r, true), "skewed before 1970");
        let ancient = Incoming { timestamp_ms: Some(-1), ..incoming() };
        assert_eq!(corrected_time(&ancient, r), (r, true));
        // `0` is as far from any query as `-1`: the first day of 1970 is.
        let epoch = Incoming { timestamp_ms: Some(0), ..incoming() };
        assert_eq!(corrected_time(&epoch, r), (r, true));
        let last_unreachable = Incoming { timestamp_ms: Some(EARLIEST_MS - 1), ..incoming() };
        assert_eq!(corrected_time(&last_unreachable, r), (r, true));
        let earliest = Incoming { timestamp_ms: Some(EARLIEST_MS), ..incoming() };
        assert_eq!(corrected_time(&earliest, r), (EARLIEST_MS, false));
    }

    #[test]
    fn ips_are_anonymised_unless_opted_in() {
        assert_eq!(anonymise("10.1.2.3".parse().unwrap()).to_string(), "10.1.2.0");
        assert_eq!(anonymise("2001:db8:abcd:12:1:2:3:4".parse().unwrap()).to_string(), "2001:db8:abcd::");
        assert_eq!(anonymise("::ffff:1.2.3.4".parse().unwrap()).to_string(), "1.2.3.0");
        // 6to4 carries the client's IPv4 address (198.51.100.77) in its /48.
        assert_eq!(anonymise("2002:c633:644d:1::1".parse().unwrap()).to_string(), "2002:c633:6400::");
        let full = RequestFacts { store_full_ip: true, ..facts() };
        let (e, _) = enricher().finish(incoming(), &full).unwrap();
        assert_eq!(e.ip.as_deref(), Some("203.0.113.77"));
    }

    #[test]
    fn message_ids_map_to_stable_uuids() {
        let u = "0b5c8f4e-3a52-4e1b-9c7c-2b9d1c6a7e10";
        assert_eq!(event_uuid(Some(u)).to_string(), u);
        assert_eq!(event_uuid(Some("msg-1")), event_uuid(Some("msg-1")));
        assert_ne!(event_uuid(Some("msg-1")), event_uuid(Some("msg-2")));
        assert_ne!(event_uuid(None), event_uuid(None));
    }
}
