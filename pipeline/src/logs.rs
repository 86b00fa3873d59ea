//! Run logs: numbered lines, masked, bounded, stored in batches and
//! broadcast live to followers.
//!
//! A follower first takes a snapshot (everything stored) and a subscription
//! in one locked moment, so no line falls between the two. A follower that
//! lags behind the broadcast re-reads from the store.

use crate::records::{now_ms, LogLine, Records, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Lines kept per step; past it one notice is stored and the rest dropped.
pub const MAX_LINES_PER_STEP: usize = 20_000;
/// Longer lines are cut here (bytes, on a character boundary).
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Lines buffered before a write to the store.
const FLUSH_EVERY: usize = 200;
const LIVE_CAPACITY: usize = 4096;
const MASK: &str = "********";
/// Shorter text than this is not masked (it would hide words at random),
/// so no secret may be shorter.
pub const MIN_MASKED: usize = 3;

/// Encoded forms shorter than this are not masked: a few base64
/// characters turn up in other text by chance.
const MIN_ENCODED: usize = 8;

/// What else a secret may be printed as: base64 (`echo $TOKEN | base64`, a
/// Basic auth header), standard and URL-safe, and percent-encoded (in a
/// URL). A value's base64 depends on where it falls among the groups of
/// three bytes base64 encodes together, so for each of the three places
/// the form is the run of characters that depends on the secret alone;
/// `base64` wraps its output at 76 columns, so each line of the secret's
/// own wrapped form is one too. Percent-encoded: every character but
/// letters and digits, or RFC 3986's unreserved ones kept (and `/` kept
/// too, as Python's `quote` does), in upper- or lower-case hex, and as a
/// form encodes it (`+` for a space). JSON-escaped, with `/` as `\/` too
/// (PHP's `json_encode`), as GitHub Actions masks it.
fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // RFC 3986's unreserved characters are left as they are.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    const PATH: &AsciiSet = &COMPONENT.remove(b'/');
    // JavaScript's `encodeURIComponent` keeps these too.
    const URI_COMPONENT: &AsciiSet = &COMPONENT.remove(b'!').remove(b'*').remove(b'\'').remove(b'(').remove(b')');
    let bytes = secret.as_bytes();
    let mut forms = Vec::new();
    for skip in 0..3.min(bytes.len()) {
        let rest = &bytes[skip..];
        let grouped = &rest[..rest.len() / 3 * 3];
        forms.extend([STANDARD_NO_PAD.encode(grouped), URL_SAFE_NO_PAD.encode(grouped)]);
    }
    let wrapped = STANDARD.encode(bytes);
    for columns in BASE64_COLUMNS {
        if wrapped.len() > columns {
            forms.extend(wrapped.as_bytes().chunks(columns).map(|line| String::from_utf8_lossy(line).into_owned()));
        }
    }
    for set in [NON_ALPHANUMERIC, COMPONENT, PATH, URI_COMPONENT] {
        let upper = utf8_percent_encode(secret, set).to_string();
        forms.push(lower_hex_escapes(&upper));
        forms.push(upper);
    }
    let form: String = url::form_urlencoded::byte_serialize(bytes).collect();
    forms.push(form.replace("%7E", "~"));
    forms.push(form);
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json[1..json.len() - 1].to_owned();
    forms.push(json.replace('/', "\\/"));
    forms.push(json.replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e"));
    forms.push(ascii_json(&json));
    forms.push(json);
    forms.retain(|f| f.len() >= MIN_ENCODED && f != secret);
    forms
}

/// The columns base64 is wrapped at: `base64` (coreutils, busybox), and
/// `openssl base64`.
const BASE64_COLUMNS: [usize; 2] = [76, 64];

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

#[derive(Debug, Clone)]
pub enum LiveEvent {
    Line(LogLine),
    /// The run finished with this status; no more lines follow.
    End(Status),
}

pub struct RunLog {
    run_id: i64,
    records: Arc<Records>,
    masks: Vec<String>,
    state: Mutex<State>,
    live: broadcast::Sender<LiveEvent>,
}

struct State {
    seq: i64,
    pending: Vec<LogLine>,
    per_step: HashMap<String, usize>,
}

impl RunLog {
    /// `secrets` are values that never reach the store or a follower.
    pub fn new(run_id: i64, records: Arc<Records>, secrets: Vec<String>) -> Result<RunLog, crate::PipelineError> {
        // Logs are masked a line at a time, so each line of a secret is a
        // mask of its own.
        let mut masks: Vec<String> =
            secrets.iter().flat_map(|s| s.lines()).map(|l| l.trim_end_matches('\r').to_owned()).collect();
        masks.extend(secrets);
        masks.retain(|m| m.len() >= MIN_MASKED);
        let encoded: Vec<String> = masks.iter().flat_map(|m| encoded_forms(m)).collect();
        masks.extend(encoded);
        masks.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        masks.dedup();
        let seq = records.last_log_seq(run_id)?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Ok(RunLog {
            run_id,
            records,
            masks,
            state: Mutex::new(State { seq, pending: Vec::new(), per_step: HashMap::new() }),
            live,
        })
    }

    /// `text` with every byte of every occurrence of a secret covered:
    /// occurrences are found in the original text, overlapping ones (two
    /// secrets sharing characters, or one repeating itself) merged, so that
    /// masking one never leaves part of another in view.
    fn mask(&self, text: &str) -> String {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for secret in &self.masks {
            let mut from = 0;
            while let Some(at) = text[from..].find(secret.as_str()) {
                let start = from + at;
                spans.push((start, start + secret.len()));
                // The next occurrence may start inside this one.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if spans.is_empty() {
            return text.to_owned();
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut shown = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            while let Some(&(next, next_end)) = spans.peek() {
                if next > end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            out.push_str(&text[shown..start]);
            out.push_str(MASK);
            shown = end;
        }
        out.push_str(&text[shown..]);
        out
    }

    pub fn line(&self, step: &str, text: &str) {
        let mut text = self.mask(text.trim_end_matches(['\r', '\n']));
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [line cut]");
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let count = state.per_step.entry(step.to_owned()).or_insert(0);
        *count += 1;
        if *count > MAX_LINES_PER_STEP + 1 {
            return;
        }
        if *count == MAX_LINES_PER_STEP + 1 {
            text = format!("[log truncated after {MAX_LINES_PER_STEP} lines]");
        }
        state.seq += 1;
        let line = LogLine { seq: state.seq, step: step.to_owned(), at: now_ms(), line: text };
        let _ = self.live.send(LiveEvent::Line(line.clone()));
        state.pending.push(line);
        if state.pending.len() >= FLUSH_EVERY {
            self.flush_locked(&mut state);
        }
    }

    fn flush_locked(&self, state: &mut State) {
        if state.pending.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut state.pending);
        if let Err(e) = self.records.append_logs(self.run_id, &lines) {
            tracing::error!(run = self.run_id, error = %e, "storing run logs failed");
        }
    }

    pub fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut state);
    }

    /// Everything so far is in the store, and the receiver gets all later lines.
    pub fn follow(&self) -> broadcast::Receiver<LiveEvent> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut state);
        self.live.subscribe()
    }

    pub fn end(&self, status: Status) {
        self.flush();
        let _ = self.live.send(LiveEvent::End(status));
    }
}

/// What is held of a line without its newline yet: its kept part, and room
/// past it for a secret that starts there to be masked whole before the
/// line is cut (a secret split across two pieces would be masked in
/// neither).
const HELD_LINE_BYTES: usize = MAX_LINE_BYTES + 64 * 1024;

/// Splits a byte stream into lines, holding a partial last line until the
/// next chunk (or the end) completes it. A line longer than
/// [`HELD_LINE_BYTES`] is emitted once, at that length (to be masked and
/// cut), and the rest of it is dropped up to its newline.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// Dropping the rest of a line already emitted cut.
    cutting: bool,
}

impl Lines {
    pub fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&str)) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let (part, rest) = match newline {
                Some(end) => chunk.split_at(end + 1),
                None => (chunk, &[][..]),
            };
            chunk = rest;
            if self.cutting {
                self.cutting = newline.is_none();
                continue;
            }
            let room = HELD_LINE_BYTES - self.partial.len();
            self.partial.extend_from_slice(&part[..part.len().min(room)]);
            if newline.is_some() || part.len() >= room {
                // Held to its length with no newline yet: the rest goes.
                self.cutting = newline.is_none();
                let line = std::mem::take(&mut self.partial);
                emit(&String::from_utf8_lossy(&line));
            }
        }
    }

    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        self.cutting = false;
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            emit(&String::from_utf8_lossy(&line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_chunks_and_keep_the_tail() {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        lines.push(b"one\ntw", |l| out.push(l.to_owned()));
        lines.push(b"o\nthree", |l| out.push(l.to_owned()));
        lines.finish(|l| out.push(l.to_owned()));
        assert_eq!(out, vec!["one\n", "two\n", "three"]);
    }

    #[test]
    fn a_long_line_is_one_line_masked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let records = Arc::new(Records::open(&dir.path().join("p.sqlite3")).unwrap());
        let secret = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
        let log = RunLog::new(1, records.clone(), vec![secret.into()]).unwrap();
        let mut lines = Lines::default();
        // The secret straddles where a stream of 8 KiB writes splits it,
        // across the kept part's end, and a line runs past what is held.
        let long = format!("{}{secret}{}\n", "a".repeat(MAX_LINE_BYTES - 10), "z".repeat(20_000));
        let endless = "y".repeat(HELD_LINE_BYTES * 2);
        for text in [long.as_str(), endless.as_str(), "\nafter\n"] {
            for piece in text.as_bytes().chunks(MAX_LINE_BYTES) {
                lines.push(piece, |l| log.line("s", l));
            }
        }
        lines.finish(|l| log.line("s", l));
        log.flush();
        let stored = records.logs(1, Some("s"), 0, 10).unwrap();
        let texts: Vec<&str> = stored.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(
            texts.len(),
            3,
            "one line each, not pieces: {:?}",
            texts.iter().map(|t| t.len()).collect::<Vec<_>>()
        );
        assert!(texts[0].starts_with(&"a".repeat(MAX_LINE_BYTES - 10)) && texts[0].ends_with(" [line cut]"));
        assert!(!texts[0].contains("ghp_") && !texts[0].contains("0123"), "{}", &texts[0][MAX_LINE_BYTES - 20..]);
        assert!(texts[1].starts_with('y') && texts[1].ends_with(" [line cut]"));
        assert_eq!(texts[2], "after");
    }

    /// A run's log masking `secrets`, with the directory its records are in.
    fn masking(secrets: Vec<String>) -> (tempfile::TempDir, RunLog) {
        let dir = tempfile::tempdir().unwrap();
        let records = Arc::new(Records::open(&dir.path().join("p.sqlite3")).unwrap());
        let log = RunLog::new(1, records, secrets).unwrap();
        (dir, log)
    }

    #[test]
    fn a_secret_is_masked_in_base64_and_percent_encoded_too() {
        use base64::Engine;
        let secret = "Zq9-SecretVal-7731";
        let (_dir, log) = masking(vec![secret.into()]);
        // Wherever it falls among base64's groups of three bytes.
        for before in ["", "u", "us", "user:"] {
            for after in ["", "\n", "xy"] {
                let text = format!("{before}{secret}{after}");
                for engine in [base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE] {
                    let encoded = engine.encode(&text);
                    let masked = log.mask(&format!("Authorization: Basic {encoded}"));
                    assert!(masked.contains("********"), "{text:?} as {encoded}: {masked}");
                    // What is left in view is at most the two groups at its edges.
                    let shown = masked.trim_start_matches("Authorization: Basic ").replace("********", "");
                    assert!(shown.len() <= encoded.len() - 16, "{text:?} as {encoded}: {masked}");
                }
            }
        }
        assert_eq!(log.mask("?t=Zq9%2DSecretVal%2D7731&x"), "?t=********&x");
        assert_eq!(log.mask("a plain line with base64 words"), "a plain line with base64 words");
    }

    #[test]
    fn a_secret_is_masked_json_escaped_form_encoded_and_in_wrapped_base64() {
        use base64::Engine;
        let (quoted, spaced, long) = ("pa\"ss\\wo/rd123", "my secret&val ue", "L0ng-".repeat(16));
        let (_dir, log) = masking(vec![quoted.into(), spaced.into(), long.clone()]);
        for (text, shown) in [
            (r#"{"token": "pa\"ss\\wo/rd123"}"#, r#"{"token": "********"}"#),
            (r#"{"token":"pa\"ss\\wo\/rd123"}"#, r#"{"token":"********"}"#),
            ("?q=my+secret%26val+ue&x", "?q=********&x"),
            ("?q=my%20secret%26val%20ue", "?q=********"),
            ("?q=pa%22ss%5cwo/rd123", "?q=********"),
            ("?q=pa%22ss%5cwo%2frd123", "?q=********"),
            (r#"{"t":"pa\"ss\\wo/rd123"}"#, r#"{"t":"********"}"#),
        ] {
            assert_eq!(log.mask(text), shown, "{text}");
        }
        let (_other_dir, other) = masking(vec!["Tök&<en>~(x)!".into()]);
        for text in [
            r#"{"t":"T\u00f6k&<en>~(x)!"}"#,
            r#"{"t":"Tök\u0026\u003cen\u003e~(x)!"}"#,
            "?t=T%C3%B6k%26%3Cen%3E~(x)!",
            "?t=T%C3%B6k%26%3Cen%3E~%28x%29%21",
            "?t=T%C3%B6k%26%3Cen%3E%7E%28x%29%21",
        ] {
            assert!(!other.mask(text).contains("en"), "{text}: {}", other.mask(text));
        }
        // `printf %s "$LONG" | base64`: 80 bytes wrap onto two lines; `openssl
        // base64` wraps at 64.
        let wrapped = base64::engine::general_purpose::STANDARD.encode(&long);
        for line in [&wrapped[..76], &wrapped[76..], &wrapped[..64], &wrapped[64..]] {
            assert_eq!(log.mask(line), "********", "{line}");
        }
    }

    #[test]
    fn secrets_sharing_characters_are_masked_whole() {
        let (_dir, log) = masking(vec!["hunter2".into(), "2xyzzy12345".into(), "abab".into()]);
        assert_eq!(log.mask("x hunter2xyzzy12345 y"), "x ******** y");
        assert_eq!(log.mask("ababab and hunter22xyzzy12345"), "******** and ********");
        assert_eq!(log.mask("é hunter2 é"), "é ******** é");
        assert_eq!(log.mask("nothing here"), "nothing here");
    }

    #[test]
    fn secrets_are_masked_and_steps_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let records = Arc::new(Records::open(&dir.path().join("p.sqlite3")).unwrap());
        let secrets = vec!["hunter2".into(), "hunter2-long".into(), "first-half\r\nsecond-half\n".into()];
        let log = RunLog::new(1, records.clone(), secrets).unwrap();
        log.line("test", "token=hunter2-long and hunter2\n");
        // A secret of several lines reaches the log a line at a time.
        log.line("test", "hello first-half\r\n");
        log.line("test", "second-half\n");
        for i in 0..MAX_LINES_PER_STEP + 10 {
            log.line("big", &format!("line {i}"));
        }
        log.flush();
        let stored = records.logs(1, Some("test"), 0, 10).unwrap();
        let texts: Vec<&str> = stored.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(texts, ["token=******** and ********", "hello ********", "********"]);
        let big = records.logs(1, Some("big"), 0, u32::MAX).unwrap();
        assert_eq!(big.len(), MAX_LINES_PER_STEP + 1);
        assert!(big.last().unwrap().line.contains("truncated"));
    }
}
