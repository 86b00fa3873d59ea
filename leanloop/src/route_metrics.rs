//! Per-route request metrics: `leanloop_http_requests_total{route, method,
//! status}` and `leanloop_http_request_duration_seconds{route, method}` (from the
//! request's arrival at its route to its answer's head). The route is its
//! template (`/api/v1/projects/{id}/runs/{run}`), so ids make no new series;
//! requests no route matches are not counted here.
//!
//! A plain tower layer, as [`crate::refusals`] is, applied with
//! `Router::route_layer` so the matched route is known.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use futures::future::BoxFuture;
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

#[derive(Clone, Copy)]
pub struct RouteMetrics;

impl<S> Layer<S> for RouteMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
}

impl<S> Service<Request> for Measured<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let mut pending = Pending {
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: method_label(request.method()),
            started: Instant::now(),
            answered: false,
        };
        let handled = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = handled.await;
            pending.answered(response.status());
            Ok(response)
        })
    }
}

/// One request on its way. Dropped unanswered (the client left, or the
/// request deadline's 503 answered it instead), it counts with the status
/// `dropped`.
struct Pending {
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.record("dropped");
        }
    }
}

impl Pending {
    fn answered(&mut self, status: StatusCode) {
        self.answered = true;
        self.record(status.as_str());
    }

    fn record(&self, status: &str) {
        let Some(route) = &self.route else { return };
        let (count, seconds) = SERIES.handles(route.as_str(), self.method, status);
        count.increment(1);
        seconds.record(self.started.elapsed().as_secs_f64());
    }
}

/// A method as a label: any but the standard ones is `other`, so made-up
/// methods make no new series.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    KNOWN.iter().find(|(known, _)| known == method).map_or("other", |(_, label)| label)
}

/// The series' handles, kept per route: building a series' key (its label
/// strings, hashed) for every request cost more than the look-up here.
static SERIES: LazyLock<Series> = LazyLock::new(|| Series(RwLock::default()));

struct Series(RwLock<HashMap<String, Vec<Handles>>>);

/// One route's series for a method and status.
struct Handles {
    method: &'static str,
    status: String,
    count: Counter,
    seconds: Histogram,
}

impl Series {
    fn handles(&self, route: &str, method: &'static str, status: &str) -> (Counter, Histogram) {
        let found = |routes: &HashMap<String, Vec<Handles>>| {
            let h = routes.get(route)?.iter().find(|h| h.method == method && h.status == status)?;
            Some((h.count.clone(), h.seconds.clone()))
        };
        if let Some(handles) = found(&self.0.read().unwrap_or_else(|p| p.into_inner())) {
            return handles;
        }
        let mut routes = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(handles) = found(&routes) {
            return handles;
        }
        let handles = Handles {
            method,
            status: status.to_owned(),
            count: metrics::counter!("leanloop_http_requests_total", "route" => route.to_owned(), "method" => method, "status" => status.to_owned()),
            seconds: metrics::histogram!("leanloop_http_request_duration_seconds", "route" => route.to_owned(), "method" => method),
        };
        let pair = (handles.count.clone(), handles.seconds.clone());
        routes.entry(route.to_owned()).or_default().push(handles);
        pair
    }
}
