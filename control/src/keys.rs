//! Project keys: a public write key (ingest only), a secret read key (query
//! API only) and a secret deploy key (pipeline API only: runs, releases,
//! rollbacks — a read key embedded in a dashboard cannot deploy). The prefix
//! tells them apart, so a key pasted in the wrong place
//! is refused with a precise message instead of a generic "unknown key".

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Write,
    Read,
    Deploy,
}

impl KeyKind {
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Write => "llw_",
            KeyKind::Read => "llr_",
            KeyKind::Deploy => "lld_",
        }
    }

    /// How the kind is named in messages.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Write => "write",
            KeyKind::Read => "read",
            KeyKind::Deploy => "deploy",
        }
    }

    /// Which kind a key claims to be, from its prefix.
    pub fn of(key: &str) -> Option<KeyKind> {
        [KeyKind::Write, KeyKind::Read, KeyKind::Deploy].into_iter().find(|k| key.starts_with(k.prefix()))
    }
}

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new random key: the kind's prefix and 32 base-62 characters (190 bits).
pub fn generate_key(kind: KeyKind) -> String {
    let mut rng = rand::rng();
    let body: String = (0..32).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{}{}", kind.prefix(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_kind() {
        let w = generate_key(KeyKind::Write);
        let r = generate_key(KeyKind::Read);
        assert_eq!(KeyKind::of(&w), Some(KeyKind::Write));
        assert_eq!(KeyKind::of(&r), Some(KeyKind::Read));
        assert_eq!(KeyKind::of(&generate_key(KeyKind::Deploy)), Some(KeyKind::Deploy));
        assert_eq!(w.len(), 36);
        assert_ne!(w, generate_key(KeyKind::Write));
        assert_eq!(KeyKind::of("abc"), None);
    }
}
