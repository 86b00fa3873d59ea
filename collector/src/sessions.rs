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

struct Open {
    id: Uuid,
    first_ms: i64,
    last_ms: i64,
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
    pub fn assign(&self, events: &mut [Event]) {
        let mut open = self.lock();
        for event in events.iter_mut().filter(|e| e.session_id.is_none()) {
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
    /// of the open session joins it.
    fn joined(&self, open: &mut OpenSessions, project_id: i64, who: &str, at_ms: i64) -> String {
        let key = person(project_id, who);
        if let Some(s) = open.get_mut(&key) {
            if at_ms >= s.first_ms - self.timeout_ms && at_ms <= s.last_ms + self.timeout_ms {
                s.first_ms = s.first_ms.min(at_ms);
                s.last_ms = s.last_ms.max(at_ms);
                return text(s.id);
            }
        }
        let id = Uuid::now_v7();
        open.put(key, Open { id, first_ms: at_ms, last_ms: at_ms });
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
    fn capacity_is_bounded() {
        let s = Sessions::new(2, 30);
        let a = s.session_for(1, "a", 0);
        s.session_for(1, "b", 0);
        s.session_for(1, "c", 0);
        assert_ne!(s.session_for(1, "a", 1), a, "the oldest person was forgotten");
        assert_eq!(s.lock().len(), 2);
    }
}
