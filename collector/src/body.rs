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
    /// `Content-Encoding: deflate`: zlib (RFC 9110), or raw deflate as some
    /// clients send it.
    Deflate,
    /// `application/x-www-form-urlencoded` with a base64 `data` field (PostHog).
    Form,
}

impl Packing {
    /// A plain body that is gzip by its first bytes is read as gzip, as
    /// PostHog's capture reads it: JSON never starts with them.
    pub fn sniffed(self, body: &[u8]) -> Packing {
        match self {
            Packing::Plain if body.starts_with(&[0x1f, 0x8b]) => Packing::Gzip,
            other => other,
        }
    }

    pub fn detect(headers: &HeaderMap, compression: Option<&str>) -> Result<Packing, IngestError> {
        let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
        match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => {}
            Some("gzip") | Some("x-gzip") => return Ok(Packing::Gzip),
            Some("deflate") => return Ok(Packing::Deflate),
            Some(other) => {
                return Err(IngestError::field(
                    "Content-Encoding",
                    format!("unsupported content encoding `{other}`; use gzip, deflate or none"),
                ))
            }
        }
        match compression {
            Some("gzip-js") | Some("gzip") => return Ok(Packing::Gzip),
            Some("lz64") => return Err(lz64_refused()),
            // posthog-js's packing where gzip is missing: a form's base64 `data`.
            Some("base64") => return Ok(Packing::Form),
            _ => {}
        }
        // Media types are case-insensitive (RFC 9110, 8.3.1).
        let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            ct.trim_start().get(..33).is_some_and(|t| t.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        });
        Ok(if form { Packing::Form } else { Packing::Plain })
    }
}

/// What a body's buffer starts with, whatever length it declares.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Reads at most `limit` bytes of `body`, within `budget`, taken as the
/// bytes arrive. A declared length is checked against `limit` but holds
/// nothing: a few connections declaring megabytes and sending nothing
/// (with the public write key, or none yet) must not fill the budget.
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
    let mut held = Held::default();
    // Room for a small body at once; a large one grows as it comes.
    let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0).min(INITIAL_CAPACITY as u64) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| IngestError::BodyCut(err.to_string()))?;
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

/// Unpacks `raw` into JSON bytes, inflating at most `limit` bytes. What it
/// grows into is taken from `budget` for `held` before it is allocated, so
/// a few kilobytes of gzip cannot hold megabytes outside the budget.
pub fn unpack(
    raw: Bytes,
    packing: Packing,
    limit: usize,
    budget: &BodyBudget,
    held: &mut Held,
) -> Result<Bytes, IngestError> {
    match packing {
        Packing::Plain => Ok(raw),
        Packing::Gzip => inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, budget, held),
        // A zlib stream's first two bytes, read as a big-endian number, are a
        // multiple of 31 with deflate's method in the low nibble (RFC 1950).
        Packing::Deflate
            if raw.len() >= 2 && raw[0] & 0x0f == 8 && u16::from_be_bytes([raw[0], raw[1]]).is_multiple_of(31) =>
        {
            inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit, budget, held)
        }
        Packing::Deflate => inflate(flate2::read::DeflateDecoder::new(&raw[..]), limit, budget, held),
        // JSON under a form content type (`curl -d` sends one by default):
        // a form's first field name cannot start with a bracket (or a byte
        // order mark, which the JSON reader drops).
        Packing::Form if matches!(without_bom(&raw).trim_ascii_start().first(), Some(b'{' | b'[')) => Ok(raw),
        Packing::Form => {
            let data =
                form_field(&raw, "data").ok_or_else(|| IngestError::field("data", "form body has no `data` field"))?;
            let compression = form_field(&raw, "compression");
            if compression.as_deref() == Some("lz64") {
                return Err(lz64_refused());
            }
            budget.take(held, data.len())?;
            let decoded = form_data(&data)?;
            if compression.as_deref() == Some("gzip-js") {
                return inflate(flate2::read::MultiGzDecoder::new(&decoded[..]), limit, budget, held);
            }
            Ok(decoded)
        }
    }
}

/// `body` without a UTF-8 byte order mark before it (.NET's writers put one).
pub fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// posthog-js's older packing, in the query or the form: not read.
fn lz64_refused() -> IngestError {
    IngestError::field("compression", "lz64 compression is not supported; use gzip-js")
}

/// A PostHog form's `data`, read as PostHog reads it: JSON as it is, else
/// base64 in either alphabet, with or without padding or line breaks, a
/// `+` that arrived as a space (not url-encoded) read as `+`.
fn form_data(data: &str) -> Result<Bytes, IngestError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let data = data.trim();
    if data.is_empty() {
        return Err(IngestError::field("data", "`data` is empty"));
    }
    if matches!(data.as_bytes().first(), Some(b'{' | b'[')) {
        return Ok(Bytes::copy_from_slice(data.as_bytes()));
    }
    let text: String =
        data.chars().filter(|c| !matches!(c, '\n' | '\r' | '\t')).map(|c| if c == ' ' { '+' } else { c }).collect();
    let lenient = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [
        GeneralPurpose::new(&base64::alphabet::STANDARD, lenient),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient),
    ]
    .iter()
    .find_map(|engine| engine.decode(&text).ok())
    .map(Bytes::from)
    .ok_or_else(|| IngestError::field("data", "`data` is neither JSON nor valid base64"))
}

/// Bytes inflated at a time, and the least output room taken.
const INFLATE_STEP: usize = 64 * 1024;

fn inflate(decoder: impl Read, limit: usize, budget: &BodyBudget, held: &mut Held) -> Result<Bytes, IngestError> {
    let mut decoder = decoder.take(limit as u64 + 1);
    let mut step = vec![0; INFLATE_STEP];
    let mut out: Vec<u8> = Vec::new();
    let mut taken = 0;
    loop {
        let n = decoder.read(&mut step).map_err(|_| IngestError::field("body", "body is not valid gzip or deflate"))?;
        if n == 0 {
            break;
        }
        if out.len() + n > limit {
            return Err(IngestError::InflatedTooLarge { limit });
        }
        if out.len() + n > out.capacity() {
            // Grown as a `Vec` would grow, once the budget has the room.
            let capacity = (out.capacity() * 2).max(out.len() + n).max(INFLATE_STEP).min(limit);
            budget.take(held, capacity - taken)?;
            taken = capacity;
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&step[..n]);
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

    fn unpack_within(raw: impl Into<Bytes>, packing: Packing, limit: usize) -> Result<Bytes, IngestError> {
        unpack(raw.into(), packing, limit, &BodyBudget::new(64 << 20), &mut Held::default())
    }

    #[test]
    fn inflates_within_the_limit() {
        let body = gzip(br#"{"a":1}"#);
        assert_eq!(&unpack_within(body, Packing::Gzip, 100).unwrap()[..], br#"{"a":1}"#);
        let big: Vec<u8> = (0..3_000_000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(unpack_within(gzip(&big), Packing::Gzip, 12_000_000).unwrap(), big);
    }

    #[test]
    fn refuses_a_bomb_without_inflating_it() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        let err = unpack_within(bomb, Packing::Gzip, 1 << 20).unwrap_err();
        assert!(matches!(err, IngestError::InflatedTooLarge { limit } if limit == 1 << 20));
    }

    #[test]
    fn deflate_is_zlib_or_raw_and_bounded_alike() {
        use flate2::write::{DeflateEncoder, ZlibEncoder};
        let json = br#"{"batch":[]}"#;
        let mut zlib = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(json).unwrap();
        let mut raw = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(json).unwrap();
        for body in [zlib.finish().unwrap(), raw.finish().unwrap()] {
            assert_eq!(&unpack_within(body, Packing::Deflate, 100).unwrap()[..], json);
        }
        let mut bomb = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![0u8; 64 << 20]).unwrap();
        let err = unpack_within(bomb.finish().unwrap(), Packing::Deflate, 1 << 20).unwrap_err();
        assert!(matches!(err, IngestError::InflatedTooLarge { .. }), "{err:?}");
        let err = unpack_within(&b"\x07\x00\x00"[..], Packing::Deflate, 100).unwrap_err();
        assert!(matches!(err, IngestError::BadField { ref field, .. } if field == "body"), "{err:?}");
    }

    #[test]
    fn inflating_takes_its_output_from_the_budget_first() {
        let budget = BodyBudget::new(3 << 20);
        let mut held = Held::default();
        let json = vec![b' '; 2 << 20];
        assert_eq!(unpack(gzip(&json).into(), Packing::Gzip, 5 << 20, &budget, &mut held).unwrap(), json);
        assert!(held.bytes() >= 2 << 20, "the output is held: {}", held.bytes());
        // With that held, a second body of 2 MiB finds no room, and is
        // refused before it grows past what was left.
        let mut second = Held::default();
        let err = unpack(gzip(&json).into(), Packing::Gzip, 5 << 20, &budget, &mut second).unwrap_err();
        assert!(matches!(err, IngestError::BodiesBusy), "{err:?}");
        drop(held);
        assert!(unpack(gzip(&json).into(), Packing::Gzip, 5 << 20, &budget, &mut Held::default()).is_ok());
    }

    #[test]
    fn decodes_posthog_forms_as_posthog_does() {
        let json = br#"{"event":">>"}"#;
        let data = base64::engine::general_purpose::STANDARD.encode(json);
        assert!(data.contains('+') && data.ends_with('='), "{data}");
        let form =
            |data: &str| format!("data={}", url::form_urlencoded::byte_serialize(data.as_bytes()).collect::<String>());
        assert_eq!(&unpack_within(form(&data), Packing::Form, 100).unwrap()[..], json);
        // A `+` sent bare arrives as a space; padding dropped; line breaks.
        assert_eq!(&unpack_within(format!("data={data}"), Packing::Form, 100).unwrap()[..], json);
        assert_eq!(&unpack_within(form(data.trim_end_matches('=')), Packing::Form, 100).unwrap()[..], json);
        let wrapped = format!("{}\n{}\n", &data[..8], &data[8..]);
        assert_eq!(&unpack_within(form(&wrapped), Packing::Form, 100).unwrap()[..], json);
        // JSON in `data`, url-encoded.
        assert_eq!(&unpack_within(form(r#"{"event":"y"}"#), Packing::Form, 100).unwrap()[..], br#"{"event":"y"}"#);
        let gz = base64::engine::general_purpose::STANDARD.encode(gzip(json));
        let gz_form = format!("{}&compression=gzip-js", form(&gz));
        assert_eq!(&unpack_within(gz_form, Packing::Form, 100).unwrap()[..], json);
        let err = unpack_within(format!("{}&compression=lz64", form(&data)), Packing::Form, 100).unwrap_err();
        assert!(matches!(&err, IngestError::BadField { field, .. } if field == "compression"), "{err:?}");
        assert!(unpack_within(&b"data=%%%"[..], Packing::Form, 100).is_err());
        let err = unpack_within(&b"data=&compression=gzip-js"[..], Packing::Form, 100).unwrap_err();
        assert!(matches!(&err, IngestError::BadField { field, .. } if field == "data"), "{err:?}");
        assert!(unpack_within(&b"other=1"[..], Packing::Form, 100).is_err());
        let json = br#" {"event":"sent as a form by curl -d"}"#;
        assert_eq!(&unpack_within(&json[..], Packing::Form, 100).unwrap()[..], json);
        assert_eq!(&unpack_within(&b"[1]"[..], Packing::Form, 100).unwrap()[..], b"[1]");
    }

    #[test]
    fn a_plain_body_that_is_gzip_by_its_first_bytes_is_inflated() {
        let body = gzip(br#"{"a":1}"#);
        let packing = Packing::Plain.sniffed(&body);
        assert_eq!(packing, Packing::Gzip);
        assert_eq!(&unpack_within(body, packing, 100).unwrap()[..], br#"{"a":1}"#);
        assert_eq!(Packing::Plain.sniffed(br#"{"a":1}"#), Packing::Plain);
        assert_eq!(Packing::Form.sniffed(&[0x1f, 0x8b]), Packing::Form);
    }

    #[test]
    fn packing_reads_media_types_in_any_case_and_posthog_compression() {
        let with_type = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            headers
        };
        let form = with_type("Application/X-WWW-Form-Urlencoded; charset=UTF-8");
        assert_eq!(Packing::detect(&form, None).unwrap(), Packing::Form);
        assert_eq!(Packing::detect(&with_type("text/plain"), None).unwrap(), Packing::Plain);
        assert_eq!(Packing::detect(&with_type("text/plain"), Some("base64")).unwrap(), Packing::Form);
        assert_eq!(Packing::detect(&with_type("application/x-www-form"), None).unwrap(), Packing::Plain);
        assert!(Packing::detect(&HeaderMap::new(), Some("lz64")).is_err());
    }

    #[test]
    fn garbage_gzip_is_a_client_error() {
        let err = unpack_within(&b"not gzip"[..], Packing::Gzip, 100).unwrap_err();
        assert!(matches!(err, IngestError::BadField { .. }));
    }
}
