//! Leanloop's own `POST /v1/feedback`: a score from 0 to 10 and/or a message.

use super::{parse_body, parse_time, person_id, Decoded, Id, Incoming, Text, TimeValue};
use crate::IngestError;
use leanloop_core::EventKind;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest feedback message kept, in characters.
pub const MAX_MESSAGE_CHARS: usize = 5000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Feedback {
    user_id: Option<Id>,
    anonymous_id: Option<Id>,
    score: Option<Value>,
    message: Option<Value>,
    category: Option<Text>,
    page: Option<Text>,
    release: Option<Text>,
    message_id: Option<Id>,
    timestamp: Option<TimeValue>,
    sent_at: Option<TimeValue>,
    write_key: Option<Text>,
    session_id: Option<Text>,
    /// Accepted for SDK symmetry with the tracking calls; not stored.
    #[allow(dead_code)]
    context: Option<Value>,
}

pub fn decode(text: &str, max_event_bytes: usize) -> Result<Decoded, IngestError> {
    if text.len() > max_event_bytes {
        return Err(IngestError::EventTooLarge { limit: max_event_bytes });
    }
    let f: Feedback = parse_body(text)?;
    let key = Text::take(f.write_key.clone());
    Ok(Decoded { key, items: vec![incoming(f)] })
}

fn incoming(f: Feedback) -> Result<Incoming, IngestError> {
    let user_id = person_id(f.user_id, "userId")?;
    let anonymous_id = person_id(f.anonymous_id, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(IngestError::field("userId", "either `userId` or `anonymousId` is required"));
    }
    let score = match f.score {
        None | Some(Value::Null) => None,
        // `10.0` and `1e1` are the whole number 10: what a client's floats
        // (Python's, Swift's Double) write it as.
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if (0.0..=10.0).contains(&s) && s.fract() == 0.0 => Some(s as u64),
            _ => return Err(IngestError::field("score", "`score` must be a whole number from 0 to 10")),
        },
        Some(_) => return Err(IngestError::field("score", "`score` must be a whole number from 0 to 10")),
    };
    let message = match f.message {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) if s.chars().count() > MAX_MESSAGE_CHARS => {
            return Err(IngestError::field("message", format!("`message` is over {MAX_MESSAGE_CHARS} characters")))
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(IngestError::field("message", "`message` must be a string")),
    };
    if score.is_none() && message.is_none() {
        return Err(IngestError::field("score", "feedback needs a `score` (0 to 10), a `message`, or both"));
    }
    let category = Text::take(f.category);
    let page = Text::take(f.page);
    let (url, path) = match page {
        Some(p) if p.contains("://") => (Some(p), None),
        Some(p) => (None, Some(p)),
        None => (None, None),
    };
    let properties = json!({ "score": score, "message": message, "category": category });
    Ok(Incoming {
        key: Text::take(f.write_key.clone()),
        kind: Some(EventKind::Feedback),
        name: "$feedback".to_owned(),
        message_id: Id::take(f.message_id),
        timestamp_ms: parse_time(f.timestamp.as_ref(), "timestamp")?,
        sent_at_ms: parse_time(f.sent_at.as_ref(), "sentAt")?,
        anonymous_id,
        user_id,
        session_id: Text::take(f.session_id),
        release: Text::take(f.release),
        url,
        path,
        properties: properties.to_string(),
        ..Incoming::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> String {
        match decode(text, 32 * 1024).and_then(|mut d| d.items.remove(0)) {
            Err(IngestError::BadField { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_score_message_or_both() {
        for body in [
            r#"{"userId":"u","score":9}"#,
            r#"{"anonymousId":"a","message":"great"}"#,
            r#"{"userId":"u","score":0,"message":"meh","category":"bug","page":"/settings","release":"1.2"}"#,
        ] {
            let i = decode(body, 32 * 1024).unwrap().items.remove(0).unwrap();
            assert_eq!(i.name, "$feedback");
        }
    }

    #[test]
    fn a_whole_score_written_as_a_float_is_that_score() {
        for (body, score) in [
            (r#"{"userId":"u","score":10.0}"#, 10),
            (r#"{"userId":"u","score":1e1}"#, 10),
            (r#"{"userId":"u","score":0.0}"#, 0),
        ] {
            let i = decode(body, 32 * 1024).unwrap().items.remove(0).unwrap();
            let properties: Value = serde_json::from_str(&i.properties).unwrap();
            assert_eq!(properties["score"], score, "{body}");
        }
    }

    #[test]
    fn refuses_bad_feedback_naming_the_field() {
        assert_eq!(field_of(r#"{"userId":"u","score":11}"#), "score");
        assert_eq!(field_of(r#"{"userId":"u","score":-1}"#), "score");
        assert_eq!(field_of(r#"{"userId":"u","score":7.5}"#), "score");
        assert_eq!(field_of(r#"{"userId":"u","score":"9"}"#), "score");
        assert_eq!(field_of(r#"{"userId":"u"}"#), "score");
        assert_eq!(field_of(r#"{"score":5}"#), "userId");
        assert_eq!(field_of(r#"{"userId":"u","message":5}"#), "message");
        assert_eq!(field_of(r#"{"userId":"u","score":5,"colour":"red"}"#), "colour");
    }
}
