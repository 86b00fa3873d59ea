//! Secret masking: the forms a secret may be printed in, and finding every
//! one of them in a line of text.
//!
//! A run's secrets make thousands of forms (a 64 KiB secret's wrapped
//! base64 alone is over two thousand lines). They are found in one pass
//! over the text: an automaton looks for the first [`ANCHOR_BYTES`] of
//! every form at once, and a form is compared whole only where its anchor
//! turns up. A line costs about its length, however many secrets a run
//! has, and the automaton stays small however long they are.

use aho_corasick::AhoCorasick;
use std::collections::HashMap;

pub const MASK: &str = "********";
/// Shorter text than this is not masked (it would hide words at random),
/// so no secret may be shorter.
pub const MIN_MASKED: usize = 3;

/// Encoded forms shorter than this are not masked: a few base64
/// characters turn up in other text by chance.
const MIN_ENCODED: usize = 8;

/// Encoded forms longer than this (a 64 KiB secret percent-encoded, say)
/// may not fit whole in what a log line holds before its cut: each is
/// masked as pieces of [`PIECE_BYTES`] (the last one its final bytes), so
/// whatever part of it a line shows is masked but for less than a piece
/// at the line's start.
const MAX_WHOLE: usize = 64 * 1024;
const PIECE_BYTES: usize = 4 * 1024;

/// How much of each form's start the automaton looks for.
const ANCHOR_BYTES: usize = 32;

/// The columns base64 is wrapped at: `base64` (coreutils, busybox), and
/// `openssl base64`.
const BASE64_COLUMNS: [usize; 2] = [76, 64];

/// Every form of a run's secrets, and how to find them.
pub struct Masks {
    forms: Vec<String>,
    /// For each anchor the automaton knows (by its pattern index), the
    /// forms (indices into `forms`) that begin with it.
    by_anchor: Vec<Vec<usize>>,
    anchors: Anchors,
}

enum Anchors {
    /// No secrets.
    None,
    Found(AhoCorasick),
    /// The automaton could not be built: nothing can be shown.
    Failed,
}

impl Masks {
    /// The masks of `secrets`: each secret, each line of one that spans
    /// lines (logs are masked a line at a time), and their encoded forms.
    pub fn new(secrets: &[String]) -> Masks {
        let mut plain: Vec<String> =
            secrets.iter().flat_map(|s| s.lines()).map(|l| l.trim_end_matches('\r').to_owned()).collect();
        plain.extend(secrets.iter().cloned());
        plain.retain(|m| m.len() >= MIN_MASKED);
        let encoded: Vec<String> = plain.iter().flat_map(|m| encoded_forms(m)).collect();
        let mut forms = plain;
        forms.extend(encoded);
        forms.sort_unstable();
        forms.dedup();
        let mut anchor_index: HashMap<&[u8], usize> = HashMap::new();
        let mut by_anchor: Vec<Vec<usize>> = Vec::new();
        for (i, form) in forms.iter().enumerate() {
            let anchor = &form.as_bytes()[..form.len().min(ANCHOR_BYTES)];
            let next = by_anchor.len();
            let at = *anchor_index.entry(anchor).or_insert(next);
            if at == next {
                by_anchor.push(Vec::new());
            }
            by_anchor[at].push(i);
        }
        let mut patterns: Vec<&[u8]> = vec![&[]; by_anchor.len()];
        for (anchor, at) in anchor_index {
            patterns[at] = anchor;
        }
        // Built from at most a few MB of anchors (a repository's secrets
        // are bounded); should it fail, every line is masked whole.
        let anchors = match patterns.is_empty() {
            true => Anchors::None,
            false => AhoCorasick::new(&patterns).map_or(Anchors::Failed, Anchors::Found),
        };
        Masks { forms, by_anchor, anchors }
    }

    /// `text` with every byte of every occurrence of a secret covered:
    /// occurrences are found in the original text, overlapping ones (two
    /// secrets sharing characters, or one repeating itself) merged, so that
    /// masking one never leaves part of another in view.
    pub fn apply(&self, text: &str) -> String {
        self.apply_within(text, text.len())
    }

    /// [`Masks::apply`] for the first `keep` bytes of `text` (cut back to a
    /// character's boundary): secrets are found in the whole of it, so one
    /// that runs past the cut is masked, and nothing past the cut shows,
    /// however much masking shortened what comes before.
    pub fn apply_within(&self, text: &str, keep: usize) -> String {
        let mut keep = keep.min(text.len());
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        let mut out = String::with_capacity(keep);
        let mut shown = 0;
        for (start, end) in self.spans(text) {
            if start >= keep {
                break;
            }
            out.push_str(&text[shown..start]);
            out.push_str(MASK);
            shown = end;
        }
        out.push_str(&text[shown.min(keep)..keep]);
        out
    }

    /// Where secrets are in `text`, overlapping ones merged, in order.
    fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        let anchors = match &self.anchors {
            Anchors::None => return Vec::new(),
            Anchors::Failed => return vec![(0, text.len())],
            Anchors::Found(anchors) => anchors,
        };
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for found in anchors.find_overlapping_iter(text) {
            let rest = &text.as_bytes()[found.start()..];
            for &form in &self.by_anchor[found.pattern().as_usize()] {
                let form = self.forms[form].as_bytes();
                if rest.starts_with(form) {
                    spans.push((found.start(), found.start() + form.len()));
                }
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// What else a secret may be printed as: base64 (`echo $TOKEN | base64`, a
/// Basic auth header), standard and URL-safe, and percent-encoded (in a
/// URL). A value's base64 depends on where it falls among the groups of
/// three bytes base64 encodes together, so for each of the three places
/// the form is the run of characters that depends on the secret alone;
/// the secret's own base64 is one too, whole or, as `base64` wraps it at 76
/// columns, each of its lines, with or without the newline `echo` adds.
/// Percent-encoded: every character but letters and digits, or RFC 3986's
/// unreserved ones kept (and `/` kept too, as Python's `quote` does), in
/// upper- or lower-case hex, and as form encoders write it (`+` for a
/// space; `*` kept as browsers do or not as Python, Go and PHP do; `~` kept
/// or not). JSON-escaped, with `/` as `\/` too (PHP's `json_encode`), as
/// GitHub Actions masks it.
fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // RFC 3986's unreserved characters are left as they are.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    const PATH: &AsciiSet = &COMPONENT.remove(b'/');
    // JavaScript's `encodeURIComponent` keeps these too.
    const URI_COMPONENT: &AsciiSet = &COMPONENT.remove(b'!').remove(b'*').remove(b'\'').remove(b'(').remove(b')');
    // Form encoders: browsers' (and `~` encoded, as the URL standard
    // does), PHP's `urlencode` (`~` encoded), Python's and Go's (`COMPONENT`).
    const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'*').remove(b'-').remove(b'.').remove(b'_');
    const FORM_TILDE: &AsciiSet = &FORM.remove(b'~');
    const PHP_FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');
    let bytes = secret.as_bytes();
    let mut forms = Vec::new();
    for skip in 0..3.min(bytes.len()) {
        let rest = &bytes[skip..];
        let grouped = &rest[..rest.len() / 3 * 3];
        forms.extend([STANDARD_NO_PAD.encode(grouped), URL_SAFE_NO_PAD.encode(grouped)]);
    }
    // Whole, where it fits on one line: its last group (the secret's last
    // bytes, padded) is then masked too.
    for printed in [bytes.to_vec(), [bytes, b"\n"].concat()] {
        let wrapped = STANDARD.encode(printed);
        for columns in BASE64_COLUMNS {
            forms.extend(wrapped.as_bytes().chunks(columns).map(|line| String::from_utf8_lossy(line).into_owned()));
        }
    }
    for set in [NON_ALPHANUMERIC, COMPONENT, PATH, URI_COMPONENT] {
        let upper = utf8_percent_encode(secret, set).to_string();
        forms.push(lower_hex_escapes(&upper));
        forms.push(upper);
    }
    for set in [FORM, FORM_TILDE, COMPONENT, PHP_FORM] {
        forms.push(utf8_percent_encode(secret, set).to_string().replace("%20", "+"));
    }
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json[1..json.len() - 1].to_owned();
    let ascii = ascii_json(&json);
    forms.push(json.replace('/', "\\/"));
    forms.push(json.replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e"));
    forms.push(ascii.replace('/', "\\/"));
    forms.push(ascii);
    forms.push(json);
    forms.retain(|f| f.len() >= MIN_ENCODED && f != secret);
    forms.into_iter().flat_map(pieces).collect()
}

/// `form` as it is masked: whole, or, past [`MAX_WHOLE`], in pieces.
fn pieces(form: String) -> Vec<String> {
    if form.len() <= MAX_WHOLE {
        return vec![form];
    }
    // Encoded forms are ASCII but for JSON's, whose pieces end on a
    // character's boundary.
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < form.len() {
        let mut end = (start + PIECE_BYTES).min(form.len());
        while !form.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(form[start..end].to_owned());
        start = end;
    }
    let mut last = form.len().saturating_sub(PIECE_BYTES);
    while !form.is_char_boundary(last) {
        last += 1;
    }
    pieces.push(form[last..].to_owned());
    pieces
}

/// JSON-escaped text with every character past ASCII as `\uXXXX` (UTF-16,
/// lower-case hex), as Python's `json.dumps` writes it.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// `encoded` with the hex digits of its `%XX` escapes in lower case.
fn lower_hex_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            hex_left = if c == '%' { 2 } else { 0 };
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(secrets: &[&str]) -> Masks {
        Masks::new(&secrets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_secret_is_masked_in_base64_and_percent_encoded_too() {
        use base64::Engine;
        let secret = "Zq9-SecretVal-7731";
        let masks = masks(&[secret]);
        // Wherever it falls among base64's groups of three bytes.
        for before in ["", "u", "us", "user:"] {
            for after in ["", "\n", "xy"] {
                let text = format!("{before}{secret}{after}");
                for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE] {
                    let encoded = engine.encode(&text);
                    let masked = masks.apply(&format!("Authorization: Basic {encoded}"));
                    assert!(masked.contains(MASK), "{text:?} as {encoded}: {masked}");
                    // What is left in view is at most the two groups at its edges.
                    let shown = masked.trim_start_matches("Authorization: Basic ").replace(MASK, "");
                    assert!(shown.len() <= encoded.len() - 16, "{text:?} as {encoded}: {masked}");
                }
            }
        }
        assert_eq!(masks.apply("?t=Zq9%2DSecretVal%2D7731&x"), "?t=********&x");
        // `echo "$S" | base64` and `printf %s "$S" | base64` of a short
        // secret: one line, its last bytes in the padded last group.
        for secret in ["hunter2-secret", "hunter2-secre", "hunter2-secr"] {
            let short = Masks::new(&[secret.to_owned()]);
            for printed in [format!("{secret}\n"), secret.to_owned()] {
                let line = base64::engine::general_purpose::STANDARD.encode(&printed);
                assert_eq!(short.apply(&line), MASK, "{printed:?} as {line}");
            }
        }
        assert_eq!(masks.apply("a plain line with base64 words"), "a plain line with base64 words");
    }

    #[test]
    fn a_secret_is_masked_json_escaped_form_encoded_and_in_wrapped_base64() {
        use base64::Engine;
        let (quoted, spaced, long) = ("pa\"ss\\wo/rd123", "my secret&val ue", "L0ng-".repeat(16));
        let masks = masks(&[quoted, spaced, &long, "pass word*42"]);
        for (text, shown) in [
            (r#"{"token": "pa\"ss\\wo/rd123"}"#, r#"{"token": "********"}"#),
            (r#"{"token":"pa\"ss\\wo\/rd123"}"#, r#"{"token":"********"}"#),
            ("?q=my+secret%26val+ue&x", "?q=********&x"),
            ("?q=my%20secret%26val%20ue", "?q=********"),
            ("?q=pa%22ss%5cwo/rd123", "?q=********"),
            ("?q=pa%22ss%5cwo%2frd123", "?q=********"),
            (r#"{"t":"pa\"ss\\wo/rd123"}"#, r#"{"t":"********"}"#),
            // Python's `urlencode`, Go's `QueryEscape`, PHP's `urlencode`.
            ("t=pass+word%2A42", "t=********"),
            ("t=pass+word*42", "t=********"),
        ] {
            assert_eq!(masks.apply(text), shown, "{text}");
        }
        let other = self::masks(&["Tök&<en>~(x)!/"]);
        for text in [
            r#"{"t":"T\u00f6k&<en>~(x)!/"}"#,
            r#"{"t":"T\u00f6k&<en>~(x)!\/"}"#,
            r#"{"t":"Tök\u0026\u003cen\u003e~(x)!/"}"#,
            "?t=T%C3%B6k%26%3Cen%3E~(x)!%2F",
            "?t=T%C3%B6k%26%3Cen%3E~%28x%29%21%2F",
            "?t=T%C3%B6k%26%3Cen%3E%7E%28x%29%21%2F",
        ] {
            assert!(!other.apply(text).contains("en"), "{text}: {}", other.apply(text));
        }
        // `printf %s "$LONG" | base64`: 80 bytes wrap onto two lines; `openssl
        // base64` wraps at 64; `echo "$LONG" | base64` adds a newline.
        let wrapped = base64::engine::general_purpose::STANDARD.encode(&long);
        let echoed = base64::engine::general_purpose::STANDARD.encode(format!("{long}\n"));
        for line in [&wrapped[..76], &wrapped[76..], &wrapped[..64], &wrapped[64..], &echoed[76..]] {
            assert_eq!(masks.apply(line), MASK, "{line}");
        }
    }

    #[test]
    fn secrets_sharing_characters_are_masked_whole() {
        let masks = masks(&["hunter2", "2xyzzy12345", "abab"]);
        assert_eq!(masks.apply("x hunter2xyzzy12345 y"), "x ******** y");
        assert_eq!(masks.apply("ababab and hunter22xyzzy12345"), "******** and ********");
        assert_eq!(masks.apply("é hunter2 é"), "é ******** é");
        assert_eq!(masks.apply("nothing here"), "nothing here");
        assert_eq!(self::masks(&[]).apply("nothing here"), "nothing here");
    }

    #[test]
    fn long_secrets_sharing_an_anchor_are_each_found() {
        // Both begin with the same 32 bytes and more; each is found whole.
        let head = "k".repeat(40);
        let (one, two) = (format!("{head}-one-end"), format!("{head}-two"));
        let masks = masks(&[&one, &two]);
        assert_eq!(masks.apply(&format!("a {two} b {one} c {head} d")), format!("a {MASK} b {MASK} c {head} d"));
    }

    #[test]
    fn a_long_encoded_form_is_masked_in_whatever_part_a_line_shows() {
        // 50,000 characters percent-encoded: about 80,000, past what a
        // line holds; the line shows its first part, which is masked.
        let secret: String = (0..50_000u32).map(|i| char::from(b'!' + (i * 7919 % 94) as u8)).collect();
        let masks = masks(&[&secret]);
        let encoded = percent_encoding::utf8_percent_encode(&secret, percent_encoding::NON_ALPHANUMERIC).to_string();
        assert!(encoded.len() > crate::logs::HELD_LINE_BYTES);
        let held = &encoded[..crate::logs::HELD_LINE_BYTES];
        assert_eq!(masks.apply_within(&format!("x={held}"), 8 * 1024), format!("x={MASK}"));
        assert_eq!(masks.apply(&format!("x={encoded}y")), format!("x={MASK}y"));
        // Nothing past the cut shows, however short masking made the rest.
        assert_eq!(masks.apply_within(&format!("{secret} tail"), 10), MASK);
        assert_eq!(masks.apply_within("no secret here", 2), "no");
    }

    #[test]
    fn large_secrets_keep_the_automaton_small() {
        // A repository's most: 16 secrets of 64 KiB, of random characters
        // (their encoded forms do not repeat). The automaton holds anchors,
        // not forms: tens of MB of forms would make hundreds of automaton.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = |n: usize| -> String {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'!' + (x % 94) as u8)
                })
                .collect()
        };
        let secrets: Vec<String> = (0..16).map(|_| random(64 * 1024)).collect();
        let masks = Masks::new(&secrets);
        let Anchors::Found(anchors) = &masks.anchors else { panic!("an automaton") };
        let automaton = anchors.memory_usage();
        assert!(automaton < 32 << 20, "{automaton} bytes");
        let part = &secrets[7][..100];
        assert_eq!(masks.apply(part), part);
        assert_eq!(masks.apply(&format!("x{}y", secrets[7])), format!("x{MASK}y"));
    }
}
