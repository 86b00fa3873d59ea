//! Accepting and serving HTTP connections.
//!
//! `axum::serve` gives no way to bound how long a client may take to send a
//! request's headers, so a client that opens connections and never finishes
//! a request would hold them forever. This loop serves the same router
//! (HTTP/1.1 and HTTP/2, the peer address as `ConnectInfo`) with hyper's
//! header read timeout, closes a connection that stays idle (no request in
//! flight) for as long: hyper's timeout starts only with a request's first
//! byte, and HTTP/2 has none, so a connection that sends nothing, or just
//! the HTTP/2 preface, would stay open and hold a file descriptor. It stops
//! gracefully: on shutdown it stops accepting, lets requests in flight
//! finish and closes idle connections.

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown`, then waits for the
/// connections still open to finish what they are doing. A client that takes
/// longer than `header_timeout` to send a request's headers (on a new
/// connection, or once it started the next request on a kept-alive one) is
/// disconnected, and so is a connection with no request in flight for that
/// long (from its accept, or from its last response's end).
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken, header_timeout: Duration) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let activity = Activity::new();
        let watched = activity.clone();
        let router = router.clone();
        let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            let in_flight = watched.begin();
            request.extensions_mut().insert(ConnectInfo(peer));
            let call = router.clone().oneshot(request.map(axum::body::Body::new));
            async move { Ok::<_, Infallible>(held_until_sent(call.await?, in_flight)) }
        });
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            tokio::select! {
                served = connection => if let Err(e) = served {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                },
                () = activity.idle_for(header_timeout) => {
                    tracing::debug!(peer = %peer, "idle connection closed");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// `response`, with its request in flight until its body has been sent (or
/// dropped).
fn held_until_sent(response: Response, in_flight: InFlight) -> Response {
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _ = &in_flight;
            frame
        }))
    })
}

/// Whether a connection has requests in flight, and since when it has had
/// none.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds from `origin` to when the last request left.
    idle_since_ms: AtomicU64,
    origin: Instant,
}

/// One request in flight; it ends when this is dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity { in_flight: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0), origin: Instant::now() })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let since = self.idle_since_ms.load(Ordering::SeqCst);
            let idle_until = Duration::from_millis(since) + limit;
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                if self.origin.elapsed() >= idle_until && self.idle_since_ms.load(Ordering::SeqCst) == since {
                    return;
                }
                tokio::time::sleep_until((self.origin + idle_until).into()).await;
            } else {
                // Busy: a request's own time is bounded elsewhere.
                tokio::time::sleep(limit).await;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The time first: a check between the two stores sees a request in
        // flight, not an old idle time.
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_only_once_its_last_response_is_sent() {
        let activity = Activity::new();
        let limit = Duration::from_millis(20);
        let response = held_until_sent(Response::new(axum::body::Body::from("x")), activity.begin());
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 1);
        let busy = tokio::time::timeout(Duration::from_millis(200), activity.idle_for(limit)).await;
        assert!(busy.is_err(), "idle while a response was unsent");
        let sent = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"x");
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 0);
        let idle = tokio::time::timeout(Duration::from_secs(10), activity.idle_for(limit)).await;
        assert!(idle.is_ok(), "never idle after the response was sent");
    }
}
