//! Server-side sessions for clients that send no session id: a person's
//! session ends after a stretch of inactivity (30 minutes by default).
//!
//! Bounded: the least recently active people are forgotten first; a forgotten
//! person who comes back simply starts a new session.

use leanloop_core::Event;
use lru::LruCache;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// A person, hashed: lookups allocate nothing, and a 64-bit collision
/// between two people (about one in 10^10 at capacity) only merges sessions.
type Person = u64;

fn person(project_id: i64, who: &str) -> Person {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    project_id.hash(&mut hasher);
    who.hash(&mut hasher);
    hasher.finish()
}

/// Hashes a [`Person`] as itself: it is a hash already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is called for a `u64` key; this keeps any other
        // caller correct, not fast.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type OpenSessions = LruCache<Person, Open, BuildHasherDefault<Prehashed>>;

/// A person's two latest sessions: a backfilled event may belong to the
/// one before the latest.
struct Open {
    latest: Span,
    before: Option<Span>,
}

struct Span {
    id: Uuid,
    first_ms: i64,
    last_ms: i64,
}

impl Span {
    fn new(at_ms: i64) -> Span {
        Span { id: Uuid::now_v7(), first_ms: at_ms, last_ms: at_ms }
    }

    /// How far `at_ms` lies outside the span (0 inside it).
    fn distance(&self, at_ms: i64) -> i64 {
        self.first_ms.saturating_sub(at_ms).max(at_ms.saturating_sub(self.last_ms)).max(0)
    }

    /// Takes `at_ms` in when it is within `timeout_ms` of either end.
    fn join(&mut self, at_ms: i64, timeout_ms: i64) -> Option<Uuid> {
        if at_ms >= self.first_ms.saturating_sub(timeout_ms) && at_ms <= self.last_ms.saturating_add(timeout_ms) {
            self.first_ms = self.first_ms.min(at_ms);
            self.last_ms = self.last_ms.max(at_ms);
            return Some(self.id);
        }
        None
    }
}

pub struct Sessions {
    /// Grown as people arrive, not sized for `capacity` up front: a table
    /// that large scatters a few thousand people over megabytes, and every
    /// event's look-up misses the cache.
    open: Mutex<OpenSessions>,
    capacity: usize,
    timeout_ms: i64,
}

/// The id as every event carries it; straight to hex, not through
/// `Display`'s formatter, since every event without its own session pays it.
fn text(id: Uuid) -> String {
    id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).to_owned()
}

impl Sessions {
    pub fn new(capacity: usize, timeout_minutes: u32) -> Sessions {
        Sessions {
            open: Mutex::new(LruCache::unbounded_with_hasher(BuildHasherDefault::default())),
            capacity: capacity.max(1),
            timeout_ms: i64::from(timeout_minutes) * 60_000,
        }
    }

    /// Gives each event the client sent no session id for (and that has a
    /// person) its server-side session, under one lock for the whole batch:
    /// the request's workers would otherwise contend for it event by event.
    /// Events are taken in time order, not as listed: a batch sent out of
    /// order (a backfill, a retried queue) gets the sessions it would in order.
    pub fn assign(&self, events: &mut [Event]) {
        let mut pending: Vec<usize> = (0..events.len()).filter(|&i| events[i].session_id.is_none()).collect();
        pending.sort_by_key(|&i| events[i].timestamp_ms);
        let mut open = self.lock();
        for i in pending {
            let event = &mut events[i];
            if let Some(who) = event.anonymous_id.as_deref().or(event.user_id.as_deref()) {
                event.session_id = Some(self.joined(&mut open, event.project_id, who, event.timestamp_ms));
            }
        }
    }

    /// The session an event at `at_ms` by `who` belongs to.
    #[cfg(test)]
    fn session_for(&self, project_id: i64, who: &str, at_ms: i64) -> String {
        self.joined(&mut self.lock(), project_id, who, at_ms)
    }

    fn lock(&self) -> MutexGuard<'_, OpenSessions> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events may arrive out of order: one within the timeout of either end
    /// of one of the person's two latest sessions joins the nearer (the one
    /// it falls inside, if any); otherwise it starts a session, which
    /// displaces the one of the two that ended first.
    fn joined(&self, open: &mut OpenSessions, project_id: i64, who: &str, at_ms: i64) -> String {
        let key = person(project_id, who);
        if let Some(o) = open.get_mut(&key) {
            let nearest = match o.before.as_mut() {
                Some(before) if before.distance(at_ms) < o.latest.distance(at_ms) => before,
                _ => &mut o.latest,
            };
            if let Some(id) = nearest.join(at_ms, self.timeout_ms) {
                return text(id);
            }
        }
        let new = Span::new(at_ms);
        let id = new.id;
        let now = match open.pop(&key) {
            Some(Open { latest, before }) => {
                let kept = match before {
                    Some(b) if b.last_ms > latest.last_ms => b,
                    _ => latest,
                };
                if new.last_ms > kept.last_ms {
                    Open { latest: new, before: Some(kept) }
                } else {
                    Open { latest: kept, before: Some(new) }
                }
            }
            None => Open { latest: new, before: None },
        };
        open.put(key, now);
        if open.len() > self.capacity {
            open.pop_lru();
        }
        text(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn inactivity_ends_a_session() {
        let s = Sessions::new(10, 30);
        let a = s.session_for(1, "p", 0);
        assert_eq!(s.session_for(1, "p", 29 * MIN), a);
        assert_eq!(s.session_for(1, "p", 58 * MIN), a, "activity extends the session");
        let b = s.session_for(1, "p", 89 * MIN);
        assert_ne!(a, b);
        assert_ne!(s.session_for(2, "p", 89 * MIN), b, "projects do not share sessions");
    }

    #[test]
    fn late_events_join_their_session() {
        let s = Sessions::new(10, 30);
        let a = s.session_for(1, "p", 100 * MIN);
        assert_eq!(s.session_for(1, "p", 80 * MIN), a);
    }

    #[test]
    fn a_backfill_finds_the_session_before_the_latest() {
        let s = Sessions::new(10, 30);
        let morning = s.session_for(1, "p", 600 * MIN);
        let evening = s.session_for(1, "p", 1200 * MIN);
        assert_ne!(morning, evening);
        assert_eq!(s.session_for(1, "p", 605 * MIN), morning, "sent after the evening, it joins the morning");
        assert_eq!(s.session_for(1, "p", 1210 * MIN), evening);
        // A session between the two displaces the one that ended first.
        let noon = s.session_for(1, "p", 900 * MIN);
        assert_ne!(noon, morning);
        assert_eq!(s.session_for(1, "p", 1190 * MIN), evening);
        assert_eq!(s.session_for(1, "p", 910 * MIN), noon);
    }

    #[test]
    fn a_late_event_joins_the_nearer_session() {
        let s = Sessions::new(10, 30);
        let first = s.session_for(1, "p", 0);
        assert_eq!(s.session_for(1, "p", 10 * MIN), first);
        let second = s.session_for(1, "p", 50 * MIN);
        assert_ne!(second, first);
        // Within the timeout of both: ten minutes after the first, thirty
        // before the second.
        assert_eq!(s.session_for(1, "p", 20 * MIN), first);
        assert_eq!(s.session_for(1, "p", 2 * MIN), first, "inside the first session");
        assert_eq!(s.session_for(1, "p", 45 * MIN), second);
    }

    #[test]
    fn a_batch_is_sessioned_in_time_order() {
        let s = Sessions::new(10, 30);
        let at = |minutes: i64| {
            let mut e = Event::new(Uuid::new_v4(), 1, leanloop_core::EventKind::Page, "$pageview", minutes * MIN);
            e.user_id = Some("w9".into());
            e
        };
        // Ten hours apart, then five minutes after the first, and three more
        // spread over a morning, listed backwards.
        let mut events = vec![at(600), at(1200), at(605), at(700), at(680), at(660)];
        s.assign(&mut events);
        let id = |i: usize| events[i].session_id.clone().unwrap();
        assert_eq!(id(0), id(2));
        assert_ne!(id(0), id(1));
        assert_ne!(id(0), id(5), "55 minutes after 10:05 is a new session");
        assert_eq!(id(5), id(4));
        assert_eq!(id(4), id(3));
    }

    #[test]
    fn capacity_is_bounded() {
        let s = Sessions::new(2, 30);
        let a = s.session_for(1, "a", 0);
        s.session_for(1, "b", 0);
        s.session_for(1, "c", 0);
        assert_ne!(s.session_for(1, "a", 1), a, "the oldest person was forgotten");
        assert_eq!(s.lock().len(), 2);
    }
}
