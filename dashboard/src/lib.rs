//! Server-rendered pages for people. Only this crate renders HTML.
//!
//! For now the home page: the projects on this instance, their public write
//! keys, and where to send events. Read keys are secrets and never rendered.
//! The projects are listed to clients on this machine only (a loopback
//! peer naming a loopback host, the request not forwarded by a proxy): a write key is public once a site embeds it, but the list would
//! name every project to anyone who can reach the server, and hand out the
//! write keys of those no page embeds.

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use handlebars::Handlebars;
use leanloop_control::ControlPlane;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;

const HOME: &str = include_str!("../templates/home.hbs");

#[derive(Clone)]
struct Pages {
    control: Arc<ControlPlane>,
    templates: Arc<Handlebars<'static>>,
}

#[derive(Serialize)]
struct ProjectRow {
    id: i64,
    name: String,
    write_key: String,
}

pub fn router(control: Arc<ControlPlane>) -> Router {
    let mut templates = Handlebars::new();
    templates.set_strict_mode(true);
    templates.register_template_string("home", HOME).expect("home template is valid");
    let pages = Pages { control, templates: Arc::new(templates) };
    Router::new().route("/", get(home)).with_state(pages)
}

/// What every page may do: nothing but show itself and its inline styles.
/// No scripts, frames (clickjacking), sniffed types, referrers or caching.
const PAGE_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Headers by which proxies and CDNs name the client they forward for.
const FORWARDED_FOR: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
    "fastly-client-ip",
    "x-client-ip",
];

/// Whether the request names this machine by a loopback name or address,
/// or names none. A browser on this machine sent to the server by a name
/// that resolves to loopback only for the moment (DNS rebinding) names
/// that name: the page it reads must not list the projects.
fn loopback_host(request: &Request) -> bool {
    // Two names (HTTP forbids it) are no name this machine can trust.
    if request.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return false;
    }
    let host = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().unwrap_or_default(),
        None => match request.uri().host() {
            Some(host) => host,
            None => return true,
        },
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn home(State(pages): State<Pages>, request: Request) -> Response {
    // A request without its peer (not served by the connection loop) is not
    // local, nor one a proxy forwarded: behind a proxy on this machine every
    // client's peer is the loopback address.
    let forwarded = FORWARDED_FOR.iter().any(|h| request.headers().contains_key(*h));
    let local = !forwarded
        && loopback_host(&request)
        && request.extensions().get::<ConnectInfo<SocketAddr>>().is_some_and(|peer| peer.0.ip().is_loopback());
    let rows: Vec<ProjectRow> = match local.then(|| pages.control.projects()).transpose() {
        Ok(projects) => projects
            .unwrap_or_default()
            .into_iter()
            .map(|p| ProjectRow { id: p.id, name: p.name, write_key: p.write_key })
            .collect(),
        Err(err) => {
            return leanloop_core::ApiError::from_class(leanloop_core::ErrorClass::Internal, err.to_string())
                .into_response()
        }
    };
    let mut page = match pages.templates.render("home", &serde_json::json!({ "local": local, "projects": rows })) {
        Ok(html) => Html(html).into_response(),
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering failed: {err}")).into_response(),
    };
    for (name, value) in PAGE_HEADERS {
        page.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page for a request from `peer`, with `headers`.
    async fn page_for(peer: Option<&str>, headers: &[(&str, &str)]) -> (axum::http::HeaderMap, String) {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let control = Arc::new(ControlPlane::open(&dir.path().join("control.sqlite")).unwrap());
        let project = control.create_project("Shop").unwrap();
        let mut request = Request::builder().uri("/").body(axum::body::Body::empty()).unwrap();
        for (name, value) in headers {
            request
                .headers_mut()
                .append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        if let Some(peer) = peer {
            request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        }
        let response = router(control).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(html.contains(&project.write_key), html.contains("Shop"));
        (headers, html)
    }

    #[tokio::test]
    async fn projects_are_listed_to_this_machine_only_on_a_page_that_runs_nothing() {
        let hosts = [[].as_slice(), &[("host", "localhost:8080")], &[("host", "127.0.0.1")], &[("host", "[::1]:8080")]];
        for (peer, host) in ["127.0.0.1:50000", "[::1]:50000"].into_iter().flat_map(|p| hosts.map(|h| (p, h))) {
            let (headers, html) = page_for(Some(peer), host).await;
            assert!(html.contains("Shop") && html.contains("llw_"), "{peer} {host:?}: {html}");
            assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors 'none'"));
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        // Behind a proxy on this machine, the peer is local but the client
        // is not.
        let proxied = [("x-forwarded-for", "203.0.113.9")];
        let forwarded = [("forwarded", "for=203.0.113.9")];
        let cdn = [("cf-connecting-ip", "203.0.113.9")];
        // A page on another site that made its name resolve to this
        // machine's loopback address for the moment (DNS rebinding).
        let rebound = [("host", "evil.example:8080")];
        for (peer, headers) in [
            (Some("192.0.2.7:50000"), &[][..]),
            (Some("[2001:db8::1]:50000"), &[]),
            (None, &[]),
            (Some("127.0.0.1:50000"), &proxied),
            (Some("127.0.0.1:50000"), &forwarded),
            (Some("127.0.0.1:50000"), &cdn),
            (Some("127.0.0.1:50000"), &rebound),
            (Some("127.0.0.1:50000"), &[("host", "localhost.evil.example")]),
            (Some("127.0.0.1:50000"), &[("host", "localhost"), ("host", "evil.example")]),
        ] {
            let (headers, html) = page_for(peer, headers).await;
            assert!(!html.contains("Shop") && !html.contains("llw_"), "{peer:?}: {html}");
            assert!(html.contains("leanloop project list"), "{peer:?}: {html}");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        }
    }

    #[test]
    fn home_renders_projects_and_escapes_names() {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_template_string("home", HOME).unwrap();
        let html = hb
            .render(
                "home",
                &serde_json::json!({ "local": true, "projects": [{ "id": 1, "name": "<b>Shop</b>", "write_key": "llw_x" }] }),
            )
            .unwrap();
        assert!(html.contains("&lt;b&gt;Shop&lt;/b&gt;"));
        assert!(html.contains("llw_x"));
        assert!(!html.contains("llr_"));
    }
}
