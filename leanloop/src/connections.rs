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
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown`, then waits up to
/// `drain_within` for the connections still open to finish what they are
/// doing (a client following a run's log would otherwise hold the process
/// up for as long as it stays); the rest end with the process, and what
/// they ask meanwhile is refused as the server stops. A client that takes
/// longer than `header_timeout` to send a request's headers (on a new
/// connection, or once it started the next request on a kept-alive one) is
/// disconnected, and so is a connection with no request in flight for that
/// long (from its accept, or from its last response's end).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_timeout: Duration,
    drain_within: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // A request's head (line and headers) may take 64 KiB, not hyper's
    // 400 KB: thousands of unfinished heads would otherwise hold gigabytes.
    // A client may shut its side once its request is sent (`curl` and
    // scripts piping a request do): it is still answered.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .half_close(true);
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
        let open = Open::new();
        let activity = Activity::new();
        let watched = activity.clone();
        let router = router.clone();
        let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            let in_flight = watched.begin();
            request.extensions_mut().insert(ConnectInfo(peer));
            let call = router.clone().oneshot(request.map(axum::body::Body::new));
            async move { Ok::<_, Infallible>(held_until_sent(call.await?, in_flight)) }
        });
        let stream = Watched { inner: Some(stream), activity: activity.clone() };
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                served = connection => if let Err(e) = served {
                    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                },
                () = activity.idle_for(header_timeout) => {
                    metrics::counter!("leanloop_http_connections_closed_idle_total").increment(1);
                    tracing::debug!(peer = %peer, "idle connection closed");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain_within, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still open after shutdown_timeout_secs are left to end with the process");
    }
}

/// One open connection, counted in `leanloop_http_connections_open` until
/// dropped (however its task ends).
struct Open;

impl Open {
    fn new() -> Open {
        metrics::gauge!("leanloop_http_connections_open").increment(1.0);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("leanloop_http_connections_open").decrement(1.0);
    }
}

/// `response`, with its request in flight until hyper has taken its whole
/// body (or dropped it). The body is handed over in pieces of at most
/// [`PIECE`], and hyper takes the next only once it has room to write it,
/// so a slow reader of a large answer keeps the request in flight until
/// nearly all of it is sent (the socket's buffers wake a writer only once
/// megabytes have drained, too seldom to count as activity).
fn held_until_sent(response: Response, in_flight: InFlight) -> Response {
    response.map(|body| axum::body::Body::new(Pieces { body, rest: Bytes::new(), in_flight, ended: false }))
}

/// The most of a response body handed to hyper at once.
const PIECE: usize = 64 * 1024;

/// A body handed over in pieces of at most [`PIECE`].
struct Pieces {
    body: axum::body::Body,
    rest: Bytes,
    /// Counts the pieces handed over as unsent (see [`Activity::wrote`]).
    in_flight: InFlight,
    /// Whether hyper read the body to its end.
    ended: bool,
}

impl Drop for Pieces {
    /// A body dropped before its end (an HTTP/2 stream the client reset, a
    /// connection gone) leaves pieces handed over that will never be
    /// written: were they still counted as unsent, every PING acknowledged
    /// afterwards would count as activity, and the connection never idle.
    fn drop(&mut self) {
        if !self.ended {
            self.in_flight.0.unsent.store(0, Ordering::SeqCst);
        }
    }
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.rest.is_empty() {
            match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => {
                    self.ended = true;
                    return Poll::Ready(other);
                }
            }
        }
        let n = self.rest.len().min(PIECE);
        self.in_flight.0.unsent.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// Whether a connection has requests in flight, and since when it has been
/// idle: none in flight and no byte of an answer written.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds from `origin` to when the last request left or the
    /// last byte of an answer was written.
    idle_since_ms: AtomicU64,
    /// Bytes of answers' bodies handed to hyper and not yet written. Only
    /// a write while some are counts as activity: HTTP/2's own frames
    /// (the acknowledgement of a client's PING every few seconds) must not
    /// keep a connection that asks nothing open for good.
    unsent: AtomicU64,
    origin: Instant,
}

/// One request in flight; it ends when this is dropped.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// `n` bytes were written: activity if an answer had bytes unsent.
    /// Headers and framing are written too, so the count runs out a little
    /// before the body's last bytes are sent; the request's own end (see
    /// [`InFlight`]) covers that.
    fn wrote(&self, n: usize) {
        let taken = self.unsent.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |unsent| {
            (unsent > 0).then(|| unsent.saturating_sub(n as u64))
        });
        if taken.is_ok() {
            self.idle_since_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// Resolves once no request has been in flight, nor a byte written, for
    /// `limit`.
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

/// A connection's stream, whose writes of answers count as activity.
/// Dropped, it lingers ([`linger`]).
struct Watched {
    /// Taken only by `drop`.
    inner: Option<TcpStream>,
    activity: Arc<Activity>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let (Some(stream), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(linger(stream));
        }
    }
}

/// How long a closed connection's input is still read, and how much of it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// Closes a connection the way a client can read its last answer: the
/// answer is followed by the end of the stream, and whatever the client is
/// still sending (the rest of a body refused from its head) is read and
/// dropped for a while. Closed with unread input, the socket would send a
/// reset instead, which can reach the client before it reads the answer,
/// so it sees a failed send rather than the 401 or 404.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut dropped = vec![0; 16 * 1024];
    let drain = async {
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut dropped).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

impl Watched {
    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(self.get_mut().inner.as_mut().expect("a stream until dropped"))
    }

    fn wrote(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.activity.wrote(*n);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = self.as_mut().stream().poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = self.as_mut().stream().poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
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
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_connection_is_idle_only_once_its_last_response_is_sent() {
        let activity = Activity::new();
        let limit = Duration::from_millis(20);
        let answer = vec![7u8; 3 * PIECE + 5];
        let response = held_until_sent(Response::new(axum::body::Body::from(answer.clone())), activity.begin());
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 1);
        let busy = tokio::time::timeout(Duration::from_millis(200), activity.idle_for(limit)).await;
        assert!(busy.is_err(), "idle while a response was unsent");
        // Handed over a piece at a time, in flight until the last is taken.
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), PIECE);
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 1);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!([&first[..], &rest[..]].concat(), answer);
        assert_eq!(activity.in_flight.load(Ordering::SeqCst), 0);
        let idle = tokio::time::timeout(Duration::from_secs(10), activity.idle_for(limit)).await;
        assert!(idle.is_ok(), "never idle after the response was sent");
    }

    #[tokio::test]
    async fn writes_count_as_activity_only_while_an_answer_is_unsent() {
        let activity = Activity::new();
        // Nothing unsent: a write (a PING's acknowledgement) changes nothing.
        activity.wrote(17);
        assert_eq!(activity.idle_since_ms.load(Ordering::SeqCst), 0);
        let response = held_until_sent(Response::new(axum::body::Body::from(vec![1u8; 100])), activity.begin());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!((body.len(), activity.unsent.load(Ordering::SeqCst)), (100, 100));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let ended = activity.idle_since_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        activity.wrote(60);
        let sending = activity.idle_since_ms.load(Ordering::SeqCst);
        assert!(sending > ended, "the answer's bytes being written are activity");
        activity.wrote(60);
        assert_eq!(activity.unsent.load(Ordering::SeqCst), 0);
        let sent = activity.idle_since_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        activity.wrote(17);
        assert_eq!(activity.idle_since_ms.load(Ordering::SeqCst), sent, "a write after the answer is not");
        // An answer dropped half-sent (its HTTP/2 stream reset): what was
        // handed over is never written, so writes are no activity after it.
        let response = held_until_sent(Response::new(axum::body::Body::from(vec![1u8; 3 * PIECE])), activity.begin());
        let mut body = response.into_body();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap().len(), PIECE);
        assert_eq!(activity.unsent.load(Ordering::SeqCst), PIECE as u64);
        drop(body);
        assert_eq!(activity.unsent.load(Ordering::SeqCst), 0);
        let reset = activity.idle_since_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        activity.wrote(17);
        assert_eq!(
            activity.idle_since_ms.load(Ordering::SeqCst),
            reset,
            "a PING's acknowledgement after a reset is not"
        );
    }
}
