//! Turning a request body into JSON text within the limits.
//!
//! The size limit is enforced twice: while the body streams in (so a huge
//! upload is cut off early) and while it is inflated (so a gzip bomb is
//! refused after `limit` bytes of output, never inflated whole). Bodies held
//! at once, across connections, draw on one budget ([`BodyBudget`]): each
//! is limited, but many slow uploads could otherwise add up to gigabytes.

use crate::IngestError;
use axum::body::Body;
use axum::http::{header, HeaderMap};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes of request bodies that may be held at once.
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(Semaphore::new(bytes)))
    }

    /// Takes `bytes` more for `held`, or refuses at once: a client waits
    /// for room by retrying, not in a queue that would hold its connection.
    pub fn take(&self, held: &mut Held, bytes: usize) -> Result<(), IngestError> {
        if bytes == 0 {
            return Ok(());
        }
        let count = u32::try_from(bytes).map_err(|_| IngestError::BodiesBusy)?;
        let more = self.0.clone().try_acquire_many_owned(count).map_err(|_| IngestError::BodiesBusy)?;
        match &mut held.0 {
            Some(permit) => permit.merge(more),
            None => held.0 = Some(more),
        }
        Ok(())
    }
}

/// A request's share of the budget, given back on drop: its body, and what
/// the body grows into (inflated, or a batch's shared context copied into
/// each event).
#[derive(Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

/// A body read whole, and its share of the budget.
pub struct HeldBody {
    pub bytes: Bytes,
    _held: Held,
}

/// How the body is packed, from headers and PostHog's `compression` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Plain,
    Gzip,
    /// `application/x-www-form-urlencoded` with a base64 `data` field (PostHog).
    Form,
}

impl Packing {
    pub fn detect(headers: &HeaderMap, compression: Option<&str>) -> Result<Packing, IngestError> {
        let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
        match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => {}
            Some("gzip") | Some("x-gzip") => return Ok(Packing::Gzip),
            Some(other) => {
                return Err(IngestError::field(
                    "Content-Encoding",
                    format!("unsupported content encoding `{other}`; use gzip or none"),
                ))
            }
        }
        match compression {
            Some("gzip-js") | Some("gzip") => return Ok(Packing::Gzip),
            Some("lz64") => {
                return Err(IngestError::field("compression", "lz64 compression is not supported; use gzip-js"))
            }
            _ => {}
        }
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        Ok(if form { Packing::Form } else { Packing::Plain })
    }
}

/// Reads at most `limit` bytes of `body`, within `budget`: a declared
/// length is taken from it up front, a streamed body as it arrives.
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> Result<HeldBody, IngestError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    let declared = declared.unwrap_or(0) as usize;
    let mut held = Held::default();
    budget.take(&mut held, declared)?;
    let mut bytes = BytesMut::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| IngestError::field("body", format!("could not read request body: {err}")))?;
        let Ok(data) = frame.into_data() else { continue };
        let len = bytes.len() + data.len();
        if len > limit {
            return Err(IngestError::BodyTooLarge { limit });
        }
        let taken = held.bytes();
        budget.take(&mut held, len.saturating_sub(taken))?;
        bytes.extend_from_slice(&data);
    }
    Ok(HeldBody { bytes: bytes.freeze(), _held: held })
}

/// Unpacks `raw` into JSON bytes, inflating at most `limit` bytes.
pub fn unpack(raw: Bytes, packing: Packing, limit: usize) -> Result<Bytes, IngestError> {
    match packing {
        Packing::Plain => Ok(raw),
        Packing::Gzip => gunzip(&raw, limit),
        // JSON under a form content type (`curl -d` sends one by default):
        // a form's first field name cannot start with a bracket.
        Packing::Form if matches!(raw.trim_ascii_start().first(), Some(b'{' | b'[')) => Ok(raw),
        Packing::Form => {
            let data =
                form_field(&raw, "data").ok_or_else(|| IngestError::field("data", "form body has no `data` field"))?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(data.trim()))
                .map_err(|_| IngestError::field("data", "`data` is not valid base64"))?;
            if form_field(&raw, "compression").as_deref() == Some("gzip-js") {
                return gunzip(&decoded, limit);
            }
            Ok(Bytes::from(decoded))
        }
    }
}

fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| IngestError::field("body", "body is not valid gzip"))?;
    if out.len() > limit {
        return Err(IngestError::InflatedTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// The url-decoded value of `name` in a form body.
fn form_field(raw: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(raw).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn inflates_within_the_limit() {
        let body = gzip(br#"{"a":1}"#);
        assert_eq!(&unpack(Bytes::from(body), Packing::Gzip, 100).unwrap()[..], br#"{"a":1}"#);
    }

    #[test]
    fn refuses_a_bomb_without_inflating_it() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let err = unpack(Bytes::from(bomb), Packing::Gzip, 1 << 20).unwrap_err();
        assert!(matches!(err, IngestError::InflatedTooLarge { limit } if limit == 1 << 20));
    }

    #[test]
    fn decodes_posthog_forms() {
        let json = br#"{"event":"x"}"#;
        let data = base64::engine::general_purpose::STANDARD.encode(json);
        let form = format!("data={}", url::form_urlencoded::byte_serialize(data.as_bytes()).collect::<String>());
        assert_eq!(&unpack(Bytes::from(form), Packing::Form, 100).unwrap()[..], json);
        assert!(unpack(Bytes::from_static(b"data=%%%"), Packing::Form, 100).is_err());
        assert!(unpack(Bytes::from_static(b"other=1"), Packing::Form, 100).is_err());
        let json = br#" {"event":"sent as a form by curl -d"}"#;
        assert_eq!(&unpack(Bytes::from_static(json), Packing::Form, 100).unwrap()[..], json);
        assert_eq!(&unpack(Bytes::from_static(b"[1]"), Packing::Form, 100).unwrap()[..], b"[1]");
    }

    #[test]
    fn garbage_gzip_is_a_client_error() {
        let err = unpack(Bytes::from_static(b"not gzip"), Packing::Gzip, 100).unwrap_err();
        assert!(matches!(err, IngestError::BadField { .. }));
    }
}
