//! What the daemon's two loopback HTTP servers share, the control API
//! (`control.rs`) and the owner's console (`console/`): the `Host` check
//! against DNS rebinding, the body cap and its deadline, the header
//! deadline, connection permits, JSON answers, a streamed body, and the
//! rate limit of refusal records.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// The largest request body (bytes).
pub const MAX_BODY: u64 = 64 * 1024;
/// How long a client has to send its request headers, from the start of
/// its connection (a whole request is one short line and a few headers).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A response body: whole, or streamed.
pub(super) type Body = BoxBody<Bytes, Infallible>;

/// A JSON answer (one line).
pub(super) fn respond(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let mut text = serde_json::to_string(body).unwrap_or_default();
    text.push('\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text)).boxed())
        .expect("static parts build")
}

/// A JSON error answer ([`crate::control_api::ApiError`]).
pub(super) fn error(status: StatusCode, message: &str) -> Response<Body> {
    respond(status, &crate::control_api::ApiError { error: message.into() })
}

/// 405 for a path that takes only `method`, with `Allow` (RFC 9110 §15.5.6).
pub(super) fn method_not_allowed(method: &hyper::Method) -> Response<Body> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, &format!("this path takes {method} only"));
    resp.headers_mut().insert(hyper::header::ALLOW, method.as_str().parse().expect("a method is a header value"));
    resp
}

/// Reads a request body of at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
///
/// # Errors
/// The answer to send: 413 when it is (or says it is) longer, 408 when it is late.
pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("bodies are at most {MAX_BODY} bytes"));
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_BODY as usize);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(body)) => Ok(body.to_bytes()),
    }
}

/// Accepts TCP connections until `stop` turns true, at most `slots`
/// served at once (more wait in the kernel's backlog); `serve` gets each
/// with the permit it must hold until it ends.
pub(super) async fn accept_loop(
    listener: TcpListener,
    slots: usize,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    serve: impl Fn(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit),
) {
    let permits = Arc::new(Semaphore::new(slots));
    loop {
        let permit = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    continue;
                }
            },
        };
        serve(stream, peer, permit);
    }
}

/// Serves one HTTP/1.1 connection (no keep-alive, headers within
/// [`HEADER_TIMEOUT`]) in its own task, holding `permit` until it ends;
/// on `stop` it shuts down gracefully, waiting a second at most.
pub(super) fn spawn_connection<S, H, F>(
    stream: S,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    span: tracing::Span,
    handle: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _permit = permit;
            let handle = Arc::new(handle);
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(error = %e, "connection ended") },
                _ = crate::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        },
        span,
    ));
}

/// A body fed chunk by chunk through a channel; it ends when the sender drops.
pub(super) struct StreamBody {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamBody {
    /// A body and the sender that feeds it (`buffer` chunks in flight).
    pub(super) fn channel(buffer: usize) -> (mpsc::Sender<Bytes>, StreamBody) {
        let (tx, rx) = mpsc::channel(buffer);
        (tx, StreamBody { rx })
    }

    /// A 200 answer of `content_type` whose body this is.
    pub(super) fn respond(self, content_type: &'static str) -> Response<Body> {
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, content_type)
            .body(self.boxed())
            .expect("static parts build")
    }
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// At most one record per window: the first refusal of a window is
/// recorded, the others are counted and the count goes on the next record.
#[derive(Default)]
pub(super) struct RateLimit {
    window_start: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(refusals left out since the last record)` when this one is
    /// to be recorded; `None` (and counted) when a record of this window
    /// stands already.
    pub(super) fn admit(&mut self, window: Duration) -> Option<u64> {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < window => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.window_start = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_per_window_then_the_count() {
        let mut rl = RateLimit::default();
        assert_eq!(rl.admit(Duration::from_secs(60)), Some(0));
        assert_eq!(rl.admit(Duration::from_secs(60)), None);
        assert_eq!(rl.admit(Duration::from_secs(60)), None);
        assert_eq!(rl.admit(Duration::ZERO), Some(2));
        assert_eq!(rl.admit(Duration::ZERO), Some(0));
    }
}
