//! What happens when a response has been sent: the access log line, the request metrics, and
//! the end of the request's trace span.
//!
//! A response is done when its body has been sent to the last byte, or when the client went
//! away first (`aborted` in the log line). So the line's `bytes_out` and `duration_ms` are
//! those of the whole transfer, not of the handler, which for a blob download returns before
//! the first byte is sent. The response body is wrapped in [`Observed`], which counts the bytes
//! and reports on its end or its drop (hyper drops a body it stops sending).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http::HeaderMap;

use crate::metrics::{Metrics, Observation};

/// A request's id: the client's (or a proxy's) `X-Request-Id` when it is a short printable
/// token, else `<process prefix>-<counter>`: unique across replicas, and free (no syscall, no
/// randomness per request).
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return v.to_owned();
        }
    }
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let u = uuid::Uuid::new_v4();
        u.simple().to_string()[..12].to_owned()
    });
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The size of a request without its body, counted as Prometheus' Go HTTP instrumentation
/// counts it for distribution's `registry_http_request_size_bytes`: URL, method, protocol,
/// header names and values, host.
pub fn head_size<B>(req: &http::Request<B>) -> u64 {
    let proto = match req.version() {
        http::Version::HTTP_10 => "HTTP/1.0".len(),
        http::Version::HTTP_2 => "HTTP/2.0".len(),
        _ => "HTTP/1.1".len(),
    };
    let headers: usize = req
        .headers()
        .iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    // Go keeps Host out of the header map and distribution adds it once.
    let host = req.headers().get(http::header::HOST).map_or(0, |h| h.len());
    let url = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    (url + req.method().as_str().len() + proto + headers + host) as u64
}

/// Everything the access line and the metrics need, gathered while the request was served.
pub struct Finished {
    pub started: Instant,
    pub method: &'static str,
    pub method_name: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub route: &'static str,
    pub repository: Option<String>,
    pub account: Option<String>,
    pub request_id: String,
    pub user_agent: Option<String>,
    pub status: u16,
    pub code: Option<&'static str>,
    pub bytes_in: u64,
    /// The request line and headers, as [`head_size`] counts them.
    pub head_bytes: u64,
    pub access_log: bool,
    pub metrics: Arc<Metrics>,
    /// The request's trace span, kept open until the body is sent.
    pub span: tracing::Span,
}

impl Finished {
    fn report(self, bytes_out: u64, aborted: bool) {
        let duration = self.started.elapsed();
        self.metrics.observe(&Observation {
            route: self.route,
            method: self.method,
            status: self.status,
            bytes_in: self.bytes_in,
            head_bytes: self.head_bytes,
            bytes_out,
            duration,
        });
        if self.access_log {
            tracing::info!(
                method = %self.method_name,
                path = %self.path,
                query = self.query.as_deref(),
                route = self.route,
                repository = self.repository.as_deref(),
                account = self.account.as_deref(),
                status = self.status,
                code = self.code,
                bytes_in = self.bytes_in,
                bytes_out,
                duration_ms = duration.as_secs_f64() * 1000.0,
                request_id = %self.request_id,
                user_agent = self.user_agent.as_deref(),
                aborted = aborted.then_some(true),
                "request"
            );
        }
        drop(self.span);
    }
}

/// A response body that reports when it has been sent.
pub struct Observed {
    inner: Body,
    sent: u64,
    /// What the body should hold, when known (`Content-Length`).
    expected: Option<u64>,
    finished: Option<Finished>,
}

impl Observed {
    pub fn new(inner: Body, finished: Finished) -> Observed {
        let expected = inner.size_hint().exact();
        Observed {
            inner,
            sent: 0,
            expected,
            finished: Some(finished),
        }
    }

    fn done(&mut self, aborted: bool) {
        if let Some(f) = self.finished.take() {
            f.report(self.sent, aborted);
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.done(true),
            Poll::Ready(None) => self.done(false),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // hyper stops polling once `Content-Length` bytes are out (or never polls an empty
        // body): that is a complete response. Anything short of it is an aborted one.
        let complete = match self.expected {
            Some(n) => self.sent >= n,
            None => self.inner.is_end_stream(),
        };
        self.done(!complete);
    }
}
