//! `/sdk.js` (the drop-in browser script) and `/sdk.mjs` (the ES module),
//! built from `sdk-js/` and embedded in the binary, so the SDK a page loads
//! always matches the collector it talks to.
//!
//! Both are gzipped once, on first request, and served with an ETag and a
//! day of caching (plus a week of stale-while-revalidate): pages pick up a
//! new SDK within a day without every visit re-downloading it.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use flate2::write::GzEncoder;
use std::io::Write;
use std::sync::OnceLock;

const SCRIPT: &str = include_str!("../../sdk-js/dist/leanloop.min.js");
const MODULE: &str = include_str!("../../sdk-js/src/leanloop.js");
const CACHE: &str = "public, max-age=86400, stale-while-revalidate=604800";

struct Asset {
    plain: &'static str,
    gzipped: Vec<u8>,
    etag: String,
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
    Router::new()
        .route("/sdk.js", get(|headers: HeaderMap| async move { serve(asset(&SCRIPT_CELL, SCRIPT), &headers) }))
        .route("/sdk.mjs", get(|headers: HeaderMap| async move { serve(asset(&MODULE_CELL, MODULE), &headers) }))
}

fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&asset.etag).expect("an ETag is ASCII");
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(CACHE)),
        (header::ETAG, etag),
        (header::VARY, HeaderValue::from_static("accept-encoding")),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let javascript = (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|name| name.trim() == "gzip")));
    if gzip_ok {
        let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (common, [javascript, encoding], asset.gzipped.clone()).into_response()
    } else {
        (common, [javascript], asset.plain).into_response()
    }
}
