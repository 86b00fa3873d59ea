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
use std::convert::Infallible;
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
            method: request.method().clone(),
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
    method: Method,
    started: Instant,
    answered: bool,
}

impl Pending {
    fn answered(&mut self, status: StatusCode) {
        self.answered = true;
        self.record(status.as_str());
    }

    fn record(&self, status: &str) {
        let Some(route) = &self.route else { return };
        let (route, method) = (route.as_str().to_owned(), self.method.as_str().to_owned());
        metrics::counter!("leanloop_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status.to_owned())
            .increment(1);
        metrics::histogram!("leanloop_http_request_duration_seconds", "route" => route, "method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.record("dropped");
        }
    }
}
