//! A deterministic corpus of product traffic: people browsing in sessions,
//! signing up part-way (identify stitches their anonymous events), buying,
//! leaving feedback, over three releases and a daylight-saving change. The
//! insight tests check answers against it; the insight benchmark loads a
//! large one. Generated person by person, so a large corpus streams.

use leanloop_core::{Event, EventKind, UserUpdate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

pub const PROJECT: i64 = 1;
/// 2024-03-18T00:00:00Z, a Monday; Berlin moves its clocks on 2024-03-31.
pub const START_MS: i64 = 1_710_720_000_000;
pub const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

/// How much each person does: sessions and events per session are drawn
/// uniformly from 1 to these.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub max_sessions: u32,
    pub max_events: u32,
}

/// About 31 events per person: the test corpus.
pub const BUSY: Shape = Shape { max_sessions: 8, max_events: 13 };
/// About 10 events per person: the benchmark's 1M people, 10M events.
pub const LIGHT: Shape = Shape { max_sessions: 3, max_events: 9 };

pub struct Corpus {
    pub events: Vec<Event>,
    pub users: Vec<UserUpdate>,
    /// Anonymous id → the user id it was identified as.
    pub links: HashMap<String, String>,
}

impl Corpus {
    /// The person an event counts for: the user its id (its user id, else
    /// its anonymous id) became, else that id.
    pub fn person(&self, e: &Event) -> String {
        let id = e.user_id.as_ref().or(e.anonymous_id.as_ref()).cloned().unwrap_or_default();
        self.links.get(&id).cloned().unwrap_or(id)
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

const PATHS: &[&str] = &["/", "/pricing", "/docs", "/blog/launch", "/signup", "/it's \"quoted\""];
const BROWSERS: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
    (Some("Chrome"), Some("Windows"), Some("desktop")),
    (Some("Chrome"), Some("Android"), Some("mobile")),
    (Some("Firefox"), Some("Linux"), Some("desktop")),
    (Some("Safari"), Some("iOS"), Some("mobile")),
    (Some("Edge"), Some("Windows"), Some("desktop")),
    (None, None, None),
];
const COUNTRIES: &[Option<&str>] = &[Some("DE"), Some("US"), Some("FR"), None];
const REFERRERS: &[Option<&str>] = &[Some("google.com"), Some("news.ycombinator.com"), None, None];
const MESSAGES: &[Option<&str>] = &[Some("love it"), Some("too slow"), Some("l'export ne marche pas"), None];

/// Generates people one at a time.
pub struct Generator {
    rng: StdRng,
    shape: Shape,
    next: usize,
}

/// One person's events and, if they identified, their profile update.
pub struct PersonTraffic {
    pub events: Vec<Event>,
    pub user: Option<UserUpdate>,
}

impl Generator {
    pub fn new(seed: u64, shape: Shape) -> Generator {
        Generator { rng: StdRng::seed_from_u64(seed), shape, next: 0 }
    }

    pub fn person(&mut self) -> PersonTraffic {
        let i = self.next;
        self.next += 1;
        person(&mut self.rng, self.shape, i)
    }
}

/// `people` people's traffic, all in memory.
pub fn generate(seed: u64, people: usize, shape: Shape) -> Corpus {
    let mut generator = Generator::new(seed, shape);
    let mut corpus = Corpus { events: Vec::new(), users: Vec::new(), links: HashMap::new() };
    for _ in 0..people {
        let traffic = generator.person();
        if let Some(user) = traffic.user {
            if let Some(anon) = &user.anonymous_id {
                corpus.links.insert(anon.clone(), user.user_id.clone());
            }
            corpus.users.push(user);
        }
        corpus.events.extend(traffic.events);
    }
    corpus
}

fn person(rng: &mut StdRng, shape: Shape, i: usize) -> PersonTraffic {
    let mut events = Vec::new();
    let mut user_update = None;
    let anon = format!("anon-{i}");
    // Most people browse anonymously first; some sign up in one of their
    // sessions; a few are only ever known by a user id (server events).
    // Some of those who sign up are first tracked by a server library,
    // which sends the visitor's id as the user id (PostHog's `distinct_id`)
    // until identify links it; chosen without drawing, so the rest of the
    // corpus is as it was.
    let server_only = rng.random_bool(0.05);
    let identifies = !server_only && rng.random_bool(0.6);
    let visitor_as_user = identifies && i % 10 == 3;
    let user = format!("user-{i}");
    let (browser, os, device) = *pick(rng, BROWSERS);
    let country = *pick(rng, COUNTRIES);
    let plan = if rng.random_bool(0.3) { "pro" } else { "free" };
    let sessions = rng.random_range(1..=shape.max_sessions);
    let identify_in = rng.random_range(0..sessions);
    for s in 0..sessions {
        let session = format!("s-{i}-{s}");
        let mut ts = START_MS + rng.random_range(0..(DAYS * DAY_MS - 4 * 3_600_000));
        let n = rng.random_range(1..=shape.max_events);
        let known = identifies && s > identify_in;
        for k in 0..n {
            ts += rng.random_range(1_000..300_000);
            let day = (ts - START_MS) / DAY_MS;
            let release = match (day, rng.random_range(0..20)) {
                (_, 0) => None,
                (d, 1) if d >= 10 => Some("1.0.0"),
                (d, _) if d < 10 => Some("1.0.0"),
                (d, _) if d < 20 => Some("1.1.0"),
                _ => Some("1.2.0"),
            };
            let roll = rng.random_range(0..100);
            let name = match (k, roll) {
                (0, _) | (_, 0..=44) => "$pageview",
                (_, 45..=56) => "signup_started",
                (_, 57..=64) => "signup_completed",
                (_, 65..=74) => "purchase",
                (_, 75..=79) => "$feedback",
                (_, 80..=81) => "it's \"odd\"",
                _ => "button clicked",
            };
            let kind = match name {
                "$pageview" => EventKind::Page,
                "$feedback" => EventKind::Feedback,
                _ => EventKind::Track,
            };
            let mut e = Event::new(Uuid::from_u128(rng.random()), PROJECT, kind, name, ts);
            e.session_id = Some(session.clone());
            e.release = release.map(str::to_owned);
            e.browser = browser.map(str::to_owned);
            e.os = os.map(str::to_owned);
            e.device_type = device.map(str::to_owned);
            e.country = country.map(str::to_owned);
            if server_only {
                e.user_id = Some(user.clone());
            } else if visitor_as_user {
                e.user_id = Some(if known { user.clone() } else { anon.clone() });
            } else {
                e.anonymous_id = Some(anon.clone());
                if known {
                    e.user_id = Some(user.clone());
                }
            }
            let mut props = json!({"plan": plan});
            match name {
                "$pageview" => {
                    let path = *pick(rng, PATHS);
                    e.path = Some(path.to_owned());
                    e.url = Some(format!("https://shop.example{path}"));
                    if k == 0 {
                        e.referrer_domain = pick(rng, REFERRERS).map(str::to_owned);
                        if rng.random_bool(0.2) {
                            e.utm_source = Some("newsletter".into());
                        }
                    }
                }
                "purchase" => props["amount"] = json!(rng.random_range(1..500)),
                "$feedback" => {
                    if rng.random_bool(0.9) {
                        props["score"] = json!(rng.random_range(0..=10));
                    }
                    props["message"] = json!(pick(rng, MESSAGES));
                }
                _ => {}
            }
            e.properties = props.to_string();
            events.push(e);
            if identifies && s == identify_in && k == n / 2 {
                ts += 500;
                let mut id = Event::new(Uuid::from_u128(rng.random()), PROJECT, EventKind::Identify, "$identify", ts);
                id.anonymous_id = Some(anon.clone());
                id.user_id = Some(user.clone());
                id.session_id = Some(session.clone());
                id.release = release.map(str::to_owned);
                events.push(id);
                user_update = Some(UserUpdate {
                    project_id: PROJECT,
                    user_id: user.clone(),
                    anonymous_id: Some(anon.clone()),
                    traits: json!({"plan": plan}).to_string(),
                    traits_once: "{}".into(),
                    seen_at_ms: ts,
                });
            }
        }
    }
    PersonTraffic { events, user: user_update }
}
