//! Lone UTF-16 surrogates written as JSON escapes.
//!
//! JavaScript strings are UTF-16, and `JSON.stringify` writes half of a
//! surrogate pair left alone (an emoji cut by truncating a string) as an
//! escape such as `\ud83d`. JSON's grammar allows it, but a Rust string
//! cannot hold it: serde_json refuses the event, and properties kept as text
//! would be stored in a form that no reader parses. Like Go's
//! `encoding/json`, such escapes become U+FFFD, the replacement character,
//! and the event is kept. Paired escapes are left as they are.

use memchr::memmem;
use std::borrow::Cow;

/// The escape that takes a lone surrogate's place: the same length, so
/// byte offsets and size limits are unchanged.
const REPLACEMENT: &[u8; 6] = b"\\ufffd";

/// `text` with each lone surrogate escape replaced by `\ufffd`; borrowed
/// when there is none, which a single search for `\u` settles for almost
/// every body.
pub fn well_formed(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if !memmem::find_iter(bytes, b"\\u").any(|at| is_surrogate_start(bytes, at)) {
        return Cow::Borrowed(text);
    }
    // Escapes are walked from the start, one at a time, so that an escaped
    // backslash followed by `u` is never read as an escape.
    let mut lone = Vec::new();
    let mut at = 0;
    while let Some(found) = bytes.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let escape = at + found;
        at = escape + 2;
        match unit_at(bytes, escape) {
            Some(0xD800..=0xDBFF) if matches!(unit_at(bytes, escape + 6), Some(0xDC00..=0xDFFF)) => at = escape + 12,
            Some(0xD800..=0xDFFF) => {
                lone.push(escape);
                at = escape + 6;
            }
            _ => {}
        }
    }
    if lone.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = bytes.to_vec();
    for escape in lone {
        out[escape..escape + 6].copy_from_slice(REPLACEMENT);
    }
    // Each replaced escape was six ASCII bytes (`unit_at` read them as
    // hex), so the text stays UTF-8; were it not, the body is left as sent.
    String::from_utf8(out).map_or(Cow::Borrowed(text), Cow::Owned)
}

/// Whether a `\u` at `at` may begin a surrogate escape (`\uD8..` to `\uDF..`).
fn is_surrogate_start(bytes: &[u8], at: usize) -> bool {
    matches!(bytes.get(at + 2), Some(b'd' | b'D'))
        && matches!(bytes.get(at + 3), Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'))
}

/// The UTF-16 unit of a `\uXXXX` escape starting at `at`, if there is one.
fn unit_at(bytes: &[u8], at: usize) -> Option<u16> {
    let escape = bytes.get(at..at + 6)?;
    if &escape[..2] != b"\\u" {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(&escape[2..]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn replaces_lone_surrogates_only() {
        let cases = [
            (r#"{"a":"x\ud83d"}"#, r#"{"a":"x\ufffd"}"#),
            (r#"{"a":"\udE00y"}"#, r#"{"a":"\ufffdy"}"#),
            (r#"{"a":"\uD83D\u0041"}"#, r#"{"a":"\ufffd\u0041"}"#),
            (r#"{"a":"\ud83d\ud83d\ude00"}"#, r#"{"a":"\ufffd\ud83d\ude00"}"#),
            (r#"{"a":"\ud83d\ude00\ude00"}"#, r#"{"a":"\ud83d\ude00\ufffd"}"#),
            (r#"{"a":"\\\\\ud800"}"#, r#"{"a":"\\\\\ufffd"}"#),
        ];
        for (input, expected) in cases {
            assert_eq!(well_formed(input), expected, "{input}");
            let parsed: serde_json::Value = serde_json::from_str(&well_formed(input)).unwrap();
            assert!(parsed["a"].is_string());
        }
    }

    #[test]
    fn leaves_pairs_and_lookalikes_borrowed() {
        for input in [
            r#"{"a":"\ud83d\ude00 \u00e9"}"#,
            // An escaped backslash followed by text that looks like an escape.
            r#"{"a":"\\ud800"}"#,
            r#"{"a":"C:\\dev\\ud"}"#,
            "plain",
        ] {
            assert!(matches!(well_formed(input), std::borrow::Cow::Borrowed(_)), "{input}");
        }
        // The look-alike after an escaped backslash stays when a real lone
        // escape elsewhere forces the rewrite.
        assert_eq!(well_formed(r#"["\\ud800","\ud800"]"#), r#"["\\ud800","\ufffd"]"#);
        // A truncated escape, or a backslash at the very end, is left for
        // the parser to refuse.
        assert_eq!(well_formed(r#""\ud83d\ud"#), r#""\ufffd\ud"#);
        assert_eq!(well_formed(r#""\ud83d\"#), r#""\ufffd\"#);
    }
}
