//! What browser SDKs fetch on load to learn what a project has switched on.
//!
//! PostHog's remote config, `GET /array/{token}/config` (JSON) and
//! `/array/{token}/config.js` (a script that files the same JSON under the
//! token in `window._POSTHOG_REMOTE_CONFIG`), fetched by posthog-js.
//! Leanloop answers with events sent to `/i/v0/e/` and everything else off:
//! no flags, so the SDK skips its flags call, and no recordings, surveys or
//! heatmaps, which Leanloop does not collect.
//!
//! Segment's CDN settings, `GET /v1/projects/{writeKey}/settings`, fetched
//! by Analytics Next (and analytics.js) from their `cdnURL`. Leanloop
//! answers that events go to this host's `/v1` (the scheme a TLS proxy
//! names in `X-Forwarded-Proto`, else plain HTTP, as the request came),
//! with no device-mode destinations, no middleware and no remote metrics.
//! A `Host` that is not a plain host and port is refused: the answer is
//! cached (and varies by it), so it must not carry what a request made up.
//!
//! The token or key must be a write key, as for ingest.

use crate::Collector;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leanloop_core::ApiError;
use serde_json::{json, Value};
use std::sync::Arc;

/// Browsers may reuse an answer for five minutes: it changes only when
/// the key is revoked.
const CACHE: &str = "public, max-age=300";

pub fn router() -> Router<Arc<Collector>> {
    Router::new()
        .route("/array/{token}/config", get(json_config))
        .route("/array/{token}/config.js", get(script_config))
        .route("/v1/projects/{key}/settings", get(segment_settings))
}

async fn json_config(State(c): State<Arc<Collector>>, Path(token): Path<String>) -> Response {
    answer(&c, &token, |token| Json(config(token)).into_response())
}

async fn script_config(State(c): State<Arc<Collector>>, Path(token): Path<String>) -> Response {
    answer(&c, &token, |token| {
        // JSON is a JavaScript expression; the token, a known write key,
        // goes in as a JSON string too.
        let script = format!(
            "(function() {{\n  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {{}};\n  \
             window._POSTHOG_REMOTE_CONFIG[{}] = {{ config: {}, siteApps: [] }};\n}})();\n",
            Value::String(token.to_owned()),
            config(token)
        );
        let javascript = (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
        ([javascript], script).into_response()
    })
}

async fn segment_settings(
    State(c): State<Arc<Collector>>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    // HTTP/2 names the host in the URI, HTTP/1.1 in the header.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(uri.authority().map(|a| a.as_str()));
    let Some(host) = host.map(str::to_owned) else {
        return ApiError::bad_request("Host", "the settings name this host: send a `Host` header").into_response();
    };
    // The answer is cached and tells browsers where to send events: only
    // a plain host and port may go into it.
    if !is_host_and_port(&host) {
        return ApiError::bad_request("Host", "must be a host name or address, with an optional port").into_response();
    }
    // The first proxy's, when several are chained (`https, http`).
    let forwarded = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()?.split(',').next());
    let protocol = match forwarded {
        Some(proto) if proto.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let mut response = answer(&c, &key, |key| Json(segment(key, &host, protocol)).into_response());
    // A shared cache must not give one host's answer to another's browsers.
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("Host, X-Forwarded-Proto"));
    response
}

/// `host` or `host:port`, the host a name, an IPv4 address or a bracketed
/// IPv6 address.
fn is_host_and_port(authority: &str) -> bool {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                // `_` too: container and compose service names carry it.
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    port_ok && host_ok
}

/// `packaged`'s answer for a write key, else the key's refusal; readable
/// from any page's origin, without credentials, and cached briefly.
fn answer(c: &Collector, key: &str, packaged: impl FnOnce(&str) -> Response) -> Response {
    let mut response = match c.project_for(key) {
        Ok(_) => {
            let mut response = packaged(key);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE));
            response
        }
        Err(err) => ApiError::from(err).into_response(),
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Segment's settings for `key`: events to `host`'s `/v1`, nothing else on.
fn segment(key: &str, host: &str, protocol: &str) -> Value {
    let all = json!({ "__default": { "enabled": true, "integrations": {} } });
    json!({
        "integrations": {
            "Segment.io": {
                "apiKey": key,
                "apiHost": format!("{host}/v1"),
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": false,
            }
        },
        "plan": { "track": all, "identify": all, "group": all },
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": { "sampleRate": 0 },
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": [],
    })
}

/// PostHog's remote config for `token`: events to `/i/v0/e/`, nothing else on.
fn config(token: &str) -> Value {
    json!({
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": false,
        "captureDeadClicks": false,
        "capturePerformance": false,
        "autocapture_opt_out": false,
        "autocaptureExceptions": false,
        "analytics": { "endpoint": "/i/v0/e/" },
        "elementsChainAsString": true,
        "sessionRecording": false,
        "heatmaps": false,
        "surveys": false,
        "siteApps": [],
    })
}

#[cfg(test)]
mod tests {
    use super::is_host_and_port;

    #[test]
    fn only_a_host_and_port_goes_into_the_settings() {
        for good in ["example.com", "example.com:8080", "127.0.0.1:80", "[::1]", "[::1]:8080", "web_1:8080"] {
            assert!(is_host_and_port(good), "{good}");
        }
        for bad in ["", "a\"b</script>", "evil.example/x", "h:99999", "[::1", "[zz]:80", "a b", "h:", "user@h"] {
            assert!(!is_host_and_port(bad), "{bad}");
        }
    }
}
