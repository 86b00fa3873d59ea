//! `/sdk.js` (the drop-in browser script), `/sdk.mjs` (the ES module) and
//! `/sdk-prompt.mjs` (the NPS prompt, which either fetches when it first
//! shows), built from `sdk-js/` and embedded in the binary, so the SDK a
//! page loads always matches the collector it talks to.
//!
//! Both are gzipped once, on first request, and served with an ETag and a
//! day of caching (plus a week of stale-while-revalidate): pages pick up a
//! new SDK within a day without every visit re-downloading it. The gzipped
//! and plain bodies are two representations, each with its own tag; a
//! revalidation matches weakly (RFC 9110 §13.1.2), as proxies that
//! re-encode send `W/` tags.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use flate2::write::GzEncoder;
use std::io::Write;
use std::sync::OnceLock;

const SCRIPT: &str = include_str!("../../sdk-js/dist/leanloop.min.js");
const MODULE: &str = include_str!("../../sdk-js/src/leanloop.js");
const PROMPT: &str = include_str!("../../sdk-js/dist/prompt.min.mjs");
const CACHE: &str = "public, max-age=86400, stale-while-revalidate=604800";

struct Asset {
    plain: &'static str,
    gzipped: Vec<u8>,
    /// The plain body's tag; the gzipped body's is [`Asset::gzip_etag`].
    etag: String,
}

impl Asset {
    fn gzip_etag(&self) -> String {
        format!("{}-gz\"", self.etag.trim_end_matches('"'))
    }
}

fn asset(cell: &'static OnceLock<Asset>, plain: &'static str) -> &'static Asset {
    cell.get_or_init(|| {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(plain.as_bytes()).expect("writing to memory");
        let gzipped = gz.finish().expect("writing to memory");
        let etag = format!("\"{:08x}-{}\"", crc32fast::hash(plain.as_bytes()), plain.len());
        Asset { plain, gzipped, etag }
    })
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    static SCRIPT_CELL: OnceLock<Asset> = OnceLock::new();
    static MODULE_CELL: OnceLock<Asset> = OnceLock::new();
    static PROMPT_CELL: OnceLock<Asset> = OnceLock::new();
    Router::new()
        .route("/sdk.js", get(|headers: HeaderMap| async move { serve(asset(&SCRIPT_CELL, SCRIPT), &headers) }))
        .route("/sdk.mjs", get(|headers: HeaderMap| async move { serve(asset(&MODULE_CELL, MODULE), &headers) }))
        .route("/sdk-prompt.mjs", get(|headers: HeaderMap| async move { serve(asset(&PROMPT_CELL, PROMPT), &headers) }))
}

/// Whether an `Accept-Encoding` value takes gzip: named (any case) or by
/// `*`, with a quality above zero.
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        (name.eq_ignore_ascii_case("gzip") || name == "*") && quality > 0.0
    })
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let gzip_ok = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(accepts_gzip);
    let etag = if gzip_ok { asset.gzip_etag() } else { asset.etag.clone() };
    let fresh =
        headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|tags| matches(tags, &etag));
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(CACHE)),
        (header::ETAG, HeaderValue::from_str(&etag).expect("an ETag is ASCII")),
        (header::VARY, HeaderValue::from_static("accept-encoding")),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let javascript = (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    if gzip_ok {
        let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (common, [javascript, encoding], asset.gzipped.clone()).into_response()
    } else {
        (common, [javascript], asset.plain).into_response()
    }
}

/// Whether an `If-None-Match` list names `etag`, compared weakly: `W/` is
/// ignored on either side.
fn matches(tags: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    tags.split(',').any(|t| t.trim() == "*" || opaque(t) == opaque(etag))
}

#[cfg(test)]
mod tests {
    use super::{accepts_gzip, matches};

    #[test]
    fn gzip_is_taken_by_name_in_any_case_or_by_star_unless_its_quality_is_zero() {
        for yes in ["gzip", "br, GZIP", "deflate, gzip;q=0.5", "*", "gzip; q=1"] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in ["", "br", "gzip;q=0", "gzip; q=0.0, br", "identity", "gzipx"] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }

    #[test]
    fn revalidation_matches_weakly_within_lists() {
        let etag = "\"b68a84c1-9690\"";
        for tags in ["\"b68a84c1-9690\"", "W/\"b68a84c1-9690\"", "\"x\", W/\"b68a84c1-9690\"", "*"] {
            assert!(matches(tags, etag), "{tags}");
        }
        for tags in ["\"b68a84c1-9691\"", "\"b68a84c1-9690-gz\"", "", "W/"] {
            assert!(!matches(tags, etag), "{tags}");
        }
    }
}
