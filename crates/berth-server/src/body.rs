//! Request bodies and connection reuse.
//!
//! A handler may answer before it reads the body (a chunk out of order, a bad digest, a
//! refused name). The client is then still writing: if the server closed the connection at
//! once, the client's write fails (broken pipe) before it reads the answer; if the server kept
//! it open without reading, the unread bytes would be taken for the next request. So, as Go's
//! `net/http` does, whatever a handler leaves unread is drained up to a small limit and the
//! connection stays usable; past the limit (or when a handler stopped reading half-way), the
//! response says `Connection: close` so the client never reuses a connection the server is
//! about to drop.
//!
//! A body that stops arriving while the handler waits for it fails after the body idle timeout
//! (`http.limits.bodyidletimeout`, see `crate::limits`); the connection is then closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::limits::IdleTimer;

/// Unread body bytes drained after a response (beyond this, the connection is closed).
const DRAIN_LIMIT: u64 = 1 << 20;
/// How long draining may take before the connection is closed instead.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The request body, lent to the handler that reads it; what the handler leaves (dropping its
/// handle early) is drained by [`BodySlot::finish`].
pub struct BodySlot {
    shared: Arc<Mutex<Body>>,
    finished: Arc<AtomicBool>,
    /// The client stopped sending mid-body (nothing left worth draining).
    stalled: Arc<AtomicBool>,
    /// Body bytes read so far (by the handler, then by the drain).
    read: Arc<AtomicU64>,
    idle_timeout: Option<Duration>,
}

/// The handler's handle on the body. It records when the last byte has been read, and fails
/// the body when no byte arrives for the idle timeout.
struct Lent {
    shared: Arc<Mutex<Body>>,
    finished: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    idle: IdleTimer,
}

impl HttpBody for Lent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        // Uncontended: the slot only touches the body after the handler has returned.
        let this = self.get_mut();
        let poll = {
            let mut inner = this.shared.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *inner).poll_frame(cx)
        };
        match &poll {
            Poll::Ready(None) => this.finished.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => {}
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.stalled.store(true, Ordering::Release);
                    let secs = this.idle.limit().unwrap_or_default().as_secs();
                    return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no request body data arrived for {secs}s"),
                    )))));
                }
                return Poll::Pending;
            }
        }
        this.idle.reset();
        poll
    }
}

impl BodySlot {
    pub fn new(body: Body, has_body: bool, idle_timeout: Option<Duration>) -> BodySlot {
        BodySlot {
            shared: Arc::new(Mutex::new(body)),
            finished: Arc::new(AtomicBool::new(!has_body)),
            stalled: Arc::new(AtomicBool::new(false)),
            read: Arc::new(AtomicU64::new(0)),
            idle_timeout,
        }
    }

    /// The body, for the handler that reads it.
    pub fn take(&mut self) -> Body {
        Body::new(Lent {
            shared: self.shared.clone(),
            finished: self.finished.clone(),
            stalled: self.stalled.clone(),
            read: self.read.clone(),
            idle: IdleTimer::new(self.idle_timeout),
        })
    }

    /// Drains what the handler left unread, and tells whether the connection can carry
    /// another request (every byte of the body was read), and how many body bytes arrived.
    pub async fn finish(self) -> (bool, u64) {
        if self.finished.load(Ordering::Acquire) {
            return (true, self.read.load(Ordering::Relaxed));
        }
        if self.stalled.load(Ordering::Acquire) {
            return (false, self.read.load(Ordering::Relaxed));
        }
        let rest = {
            let mut inner = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *inner, Body::empty())
        };
        let (ended, drained) = tokio::time::timeout(DRAIN_TIMEOUT, drain(rest, DRAIN_LIMIT))
            .await
            .unwrap_or_default();
        (ended, self.read.load(Ordering::Relaxed) + drained)
    }
}

/// Reads and discards up to `limit` bytes; whether the body ended within it, and the bytes
/// read.
async fn drain(mut body: Body, limit: u64) -> (bool, u64) {
    let mut seen = 0u64;
    loop {
        match body.frame().await {
            None => return (true, seen),
            Some(Err(_)) => return (false, seen),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > limit {
                        return (false, seen);
                    }
                }
            }
        }
    }
}

/// Why [`read_to_limit`] gave up.
#[derive(Debug)]
pub enum ReadError {
    /// More than the limit arrived (the rest was drained, up to as much again).
    TooLarge,
    /// The body broke off.
    Body(axum::Error),
}

/// Reads a small body (a manifest) whole, up to `limit` bytes. A larger body is drained up to
/// `limit` more bytes before giving up, so the client can read the refusal.
pub async fn read_to_limit(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                drain(body, limit as u64).await;
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}
