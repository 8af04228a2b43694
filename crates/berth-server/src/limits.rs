//! Connection limits, so that one slow or hostile client cannot hold a connection (and the
//! task, buffers and upload session behind it) forever:
//!
//! - **header read timeout**: the request line and headers must arrive within this time of the
//!   connection becoming ready for a request (slowloris). It also closes idle keep-alive
//!   connections. hyper's own default (30 s) applies only with a timer, which `axum::serve`
//!   does not give it, so Berth serves connections itself (`listen.rs`).
//! - **body idle timeout**: a request body that stops arriving (no byte for this long while the
//!   handler is waiting for one) fails the request (`BodySlot`); what arrived of an upload is
//!   kept, so the client can resume.
//! - **write idle timeout**: a response that the client stops reading (no byte accepted by the
//!   socket for this long) closes the connection ([`WriteIdle`]).
//! - **header size and count**: requests whose head exceeds `max_header_bytes`, or that carry
//!   more than 100 header fields (hyper's fixed default), get `431` and the connection closes.
//!
//! The values come from Berth's `http.limits` configuration section (see [`Limits::from_config`]
//! and docs/ARCHITECTURE.md, "Hardening").

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Connection limits; `None` timeouts are off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `http.limits.readheadertimeout` (default 30 s).
    pub header_read_timeout: Option<Duration>,
    /// `http.limits.bodyidletimeout` (default 60 s).
    pub body_idle_timeout: Option<Duration>,
    /// `http.limits.writeidletimeout` (default 60 s).
    pub write_idle_timeout: Option<Duration>,
    /// `http.limits.maxheaderbytes`: request line plus headers (default 64 KiB).
    pub max_header_bytes: usize,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WRITE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The bounds `http.limits.maxheaderbytes` is checked against.
pub const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(1 << 20);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            body_idle_timeout: Some(DEFAULT_BODY_IDLE_TIMEOUT),
            write_idle_timeout: Some(DEFAULT_WRITE_IDLE_TIMEOUT),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl Limits {
    /// The limits of a validated configuration (`0s` turns a timeout off).
    pub fn from_config(c: &crate::config::Config) -> Limits {
        let mut l = Limits::default();
        let Some(cfg) = &c.http.limits else {
            return l;
        };
        let dur = |v: &Option<String>, default: Option<Duration>| match v {
            None => default,
            Some(s) => crate::config::parse_duration(s)
                .ok()
                .filter(|d| !d.is_zero()),
        };
        l.header_read_timeout = dur(&cfg.readheadertimeout, l.header_read_timeout);
        l.body_idle_timeout = dur(&cfg.bodyidletimeout, l.body_idle_timeout);
        l.write_idle_timeout = dur(&cfg.writeidletimeout, l.write_idle_timeout);
        if let Some(n) = cfg.maxheaderbytes {
            l.max_header_bytes = n;
        }
        l
    }
}

/// A timer that runs only while something is waiting: armed when an operation first returns
/// `Pending`, disarmed when it makes progress.
#[derive(Debug)]
pub(crate) struct IdleTimer {
    limit: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Option<Duration>) -> IdleTimer {
        IdleTimer { limit, sleep: None }
    }

    /// Progress was made.
    pub(crate) fn reset(&mut self) {
        self.sleep = None;
    }

    /// The operation is pending: whether it has now been pending for longer than the limit
    /// (registering the task to be woken when it will have).
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        sleep.as_mut().poll(cx).is_ready()
    }

    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }
}

/// An IO whose writes fail when the peer has accepted nothing for the write idle timeout.
pub struct WriteIdle<I> {
    inner: I,
    timer: IdleTimer,
}

impl<I> WriteIdle<I> {
    pub fn new(inner: I, limit: Option<Duration>) -> WriteIdle<I> {
        WriteIdle {
            inner,
            timer: IdleTimer::new(limit),
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => {
                if self.timer.expired(cx) {
                    let secs = self.timer.limit().unwrap_or_default().as_secs();
                    tracing::info!("closing a connection whose client read nothing for {secs}s");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {secs}s"),
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.timer.reset();
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteIdle<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteIdle<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, poll)
    }
}
