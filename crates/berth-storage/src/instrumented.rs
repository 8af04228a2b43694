//! A driver wrapper that counts what the registry asks of storage: operations, errors and the
//! time they took, per operation ([`StorageStats`], exported as metrics by the server), and
//! opens a trace span around each call (target `berth::otel`, seen only when trace export is
//! configured; otherwise the span costs one relaxed load).
//!
//! "Not found" is the routine answer to a probe (does this blob exist?) and is not counted as
//! an error; every other failure is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::Instrument;

use crate::{AppendWriter, ByteStream, FileInfo, ListFrom, ListPage, Result, StorageDriver};

/// The operations counted, in the order of [`StorageStats::ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    GetContent,
    PutContent,
    Reader,
    Append,
    AppendWrite,
    AppendCommit,
    FinishAppend,
    AbortAppend,
    RedirectUrl,
    Stat,
    StatObject,
    List,
    Move,
    Delete,
    Touch,
    StatTouched,
    ListPage,
}

impl Op {
    pub const ALL: [Op; 17] = [
        Op::GetContent,
        Op::PutContent,
        Op::Reader,
        Op::Append,
        Op::AppendWrite,
        Op::AppendCommit,
        Op::FinishAppend,
        Op::AbortAppend,
        Op::RedirectUrl,
        Op::Stat,
        Op::StatObject,
        Op::List,
        Op::Move,
        Op::Delete,
        Op::Touch,
        Op::StatTouched,
        Op::ListPage,
    ];

    /// The metric label (and span name suffix).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::GetContent => "get_content",
            Op::PutContent => "put_content",
            Op::Reader => "reader",
            Op::Append => "append",
            Op::AppendWrite => "append_write",
            Op::AppendCommit => "append_commit",
            Op::FinishAppend => "finish_append",
            Op::AbortAppend => "abort_append",
            Op::RedirectUrl => "redirect_url",
            Op::Stat => "stat",
            Op::StatObject => "stat_object",
            Op::List => "list",
            Op::Move => "move",
            Op::Delete => "delete",
            Op::Touch => "touch",
            Op::StatTouched => "stat_touched",
            Op::ListPage => "list_page",
        }
    }
}

/// Upper bounds (seconds) of the per-operation latency buckets: Prometheus' default buckets,
/// which distribution's `registry_storage_action_seconds` uses.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of one operation.
#[derive(Debug, Default)]
pub struct OpStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    /// Total time spent, in nanoseconds.
    pub nanos: AtomicU64,
    /// Calls per latency bucket ([`LATENCY_BUCKETS`], then `+Inf`), not cumulative.
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

/// What storage was asked to do since the start.
#[derive(Debug)]
pub struct StorageStats {
    pub driver: &'static str,
    ops: [OpStats; Op::ALL.len()],
    /// Bytes written through `put_content` and appends.
    pub bytes_written: AtomicU64,
    /// Bytes read through `get_content` and readers.
    pub bytes_read: AtomicU64,
    /// Since when storage has not answered (ms since the epoch; 0: it answers): set by a call
    /// that ended unavailable, cleared by the next call that got an answer.
    unavailable_since_ms: AtomicU64,
    last_unavailable: std::sync::Mutex<String>,
}

impl StorageStats {
    fn new(driver: &'static str) -> StorageStats {
        StorageStats {
            driver,
            ops: Default::default(),
            bytes_written: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            unavailable_since_ms: AtomicU64::new(0),
            last_unavailable: std::sync::Mutex::new(String::new()),
        }
    }

    /// How long storage has not been answering, and the last such error.
    pub fn unavailable(&self) -> Option<(std::time::Duration, String)> {
        let since = self.unavailable_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let now = now_ms();
        let why = self
            .last_unavailable
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        Some((
            std::time::Duration::from_millis(now.saturating_sub(since)),
            why,
        ))
    }

    pub fn op(&self, op: Op) -> &OpStats {
        // `Op::ALL` lists the variants in declaration order.
        &self.ops[op as usize]
    }

    fn record<T>(&self, op: Op, started: Instant, result: &Result<T>) {
        let s = self.op(op);
        s.calls.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        s.nanos.fetch_add(nanos, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        s.latency[bucket].fetch_add(1, Ordering::Relaxed);
        match result {
            Err(e) if e.is_unavailable() => {
                if let Ok(mut last) = self.last_unavailable.lock() {
                    *last = e.to_string();
                }
                let _ = self.unavailable_since_ms.compare_exchange(
                    0,
                    now_ms().max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            // Any answer, a "not found" or another error included, means storage answers.
            _ => self.unavailable_since_ms.store(0, Ordering::Relaxed),
        }
        if let Err(e) = result {
            if !e.is_not_found() {
                s.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wraps a driver; see the module documentation.
pub struct Instrumented {
    inner: Arc<dyn StorageDriver>,
    stats: Arc<StorageStats>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn StorageDriver>) -> Instrumented {
        let stats = Arc::new(StorageStats::new(inner.name()));
        Instrumented { inner, stats }
    }

    pub fn stats(&self) -> Arc<StorageStats> {
        self.stats.clone()
    }

    async fn timed<T, F>(&self, op: Op, path: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let span = tracing::info_span!(
            target: "berth::otel",
            "storage",
            otel.name = op.as_str(),
            storage.driver = self.stats.driver,
            storage.path = path,
            otel.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = fut.instrument(span.clone()).await;
        self.stats.record(op, started, &result);
        if let Err(e) = &result {
            if !e.is_not_found() {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }
}

#[async_trait]
impl StorageDriver for Instrumented {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let r = self
            .timed(Op::GetContent, path, self.inner.get_content(path))
            .await;
        if let Ok(b) = &r {
            self.stats
                .bytes_read
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        r
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let n = content.len() as u64;
        let r = self
            .timed(Op::PutContent, path, self.inner.put_content(path, content))
            .await;
        if r.is_ok() {
            self.stats.bytes_written.fetch_add(n, Ordering::Relaxed);
        }
        r
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> Result<ByteStream> {
        use futures_util::StreamExt;
        let stream = self
            .timed(Op::Reader, path, self.inner.reader(path, offset, len))
            .await?;
        let stats = self.stats.clone();
        Ok(Box::pin(stream.inspect(move |chunk| {
            if let Ok(b) = chunk {
                stats
                    .bytes_read
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })))
    }

    async fn append(&self, path: &str, state: Option<Bytes>) -> Result<Box<dyn AppendWriter>> {
        let inner = self
            .timed(Op::Append, path, self.inner.append(path, state))
            .await?;
        Ok(Box::new(CountedWriter {
            inner,
            stats: self.stats.clone(),
        }))
    }

    async fn finish_append(&self, path: &str, state: Option<Bytes>, dest: &str) -> Result<()> {
        self.timed(
            Op::FinishAppend,
            path,
            self.inner.finish_append(path, state, dest),
        )
        .await
    }

    async fn release_append(&self, old: &Bytes, new: &Bytes) {
        self.inner.release_append(old, new).await
    }

    async fn abort_append(&self, path: &str, state: Option<Bytes>) -> Result<()> {
        self.timed(Op::AbortAppend, path, self.inner.abort_append(path, state))
            .await
    }

    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        self.timed(Op::RedirectUrl, path, self.inner.redirect_url(path))
            .await
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.timed(Op::Stat, path, self.inner.stat(path)).await
    }

    async fn stat_object(&self, path: &str) -> Result<FileInfo> {
        self.timed(Op::StatObject, path, self.inner.stat_object(path))
            .await
    }

    async fn touch(&self, path: &str) -> Result<()> {
        self.timed(Op::Touch, path, self.inner.touch(path)).await
    }

    async fn stat_touched(&self, path: &str) -> Result<FileInfo> {
        self.timed(Op::StatTouched, path, self.inner.stat_touched(path))
            .await
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        self.timed(Op::List, path, self.inner.list(path)).await
    }

    async fn list_names(&self, path: &str) -> Result<Vec<String>> {
        self.timed(Op::List, path, self.inner.list_names(path))
            .await
    }

    async fn list_page(
        &self,
        dir: &str,
        delimiter: Option<&str>,
        from: ListFrom,
        max: usize,
    ) -> Result<ListPage> {
        self.timed(
            Op::ListPage,
            dir,
            self.inner.list_page(dir, delimiter, from, max),
        )
        .await
    }

    async fn move_object(&self, from: &str, to: &str) -> Result<()> {
        self.timed(Op::Move, from, self.inner.move_object(from, to))
            .await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.timed(Op::Delete, path, self.inner.delete(path)).await
    }

    async fn delete_dir_known(&self, dir: &str, names: &[&str]) -> Result<()> {
        self.timed(Op::Delete, dir, self.inner.delete_dir_known(dir, names))
            .await
    }
}

/// An append writer whose writes and commits are counted.
struct CountedWriter {
    inner: Box<dyn AppendWriter>,
    stats: Arc<StorageStats>,
}

#[async_trait]
impl AppendWriter for CountedWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let n = data.len() as u64;
        let started = Instant::now();
        let r = self.inner.write(data).await;
        self.stats.record(Op::AppendWrite, started, &r);
        if r.is_ok() {
            self.stats.bytes_written.fetch_add(n, Ordering::Relaxed);
        }
        r
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn commit(self: Box<Self>) -> Result<Option<Bytes>> {
        let started = Instant::now();
        let stats = self.stats.clone();
        let r = self.inner.commit().await;
        stats.record(Op::AppendCommit, started, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_calls_errors_and_bytes() {
        let d = Instrumented::new(Arc::new(crate::InMemoryDriver::new()));
        let stats = d.stats();
        d.put_content("/a/b", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(d.get_content("/a/b").await.unwrap(), "hello");
        // Not found is routine, not an error.
        assert!(d.get_content("/nope").await.unwrap_err().is_not_found());
        // An invalid path is an error.
        assert!(d.get_content("relative").await.is_err());
        assert_eq!(stats.op(Op::GetContent).calls.load(Ordering::Relaxed), 3);
        assert_eq!(stats.op(Op::GetContent).errors.load(Ordering::Relaxed), 1);
        assert_eq!(stats.op(Op::PutContent).calls.load(Ordering::Relaxed), 1);
        assert_eq!(stats.bytes_written.load(Ordering::Relaxed), 5);
        assert_eq!(stats.bytes_read.load(Ordering::Relaxed), 5);
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "Op::ALL is in declaration order");
        }
    }
}
