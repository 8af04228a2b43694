//! The blob-descriptor cache (`storage.cache.blobdescriptor`): which blobs a repository has and
//! how large they are, so `HEAD`/`GET` of a blob, a manifest's reference checks and mounts
//! need no storage round trip (several on S3) when the answer is known.
//!
//! - [`MemoryCache`]: per process, bounded.
//! - [`RedisCache`]: shared by every replica, with distribution's keys and fields
//!   (`blobs::<digest>` hash `digest size mediatype`; `repository::<name>::blobs` set;
//!   `repository::<name>::blobs::<digest>` hash), so distribution and Berth can share one Redis.
//!
//! A cache is never the truth: an entry is written after storage said so, removed by the
//! delete that makes it stale, and any cache failure falls back to storage. A Redis that is
//! down or slow costs one WARN line; for a few seconds after a failure Redis is not asked at
//! all (no request waits on a timeout again and again), then it is tried again and its
//! recovery is logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_core::{Digest, RepoName};

/// Cache hits and misses, for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Operations that failed (the request was then served from storage).
    pub errors: AtomicU64,
}

/// What the registry asks of a cache. Failures are the cache's own business: a method that
/// cannot answer says "unknown" (`None`) and logs.
#[async_trait]
pub trait DescriptorCache: Send + Sync {
    /// The size of `digest` if it is known to be linked into `repo`.
    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Option<u64>;
    /// Records that `repo` links `digest`, of `size` bytes.
    async fn set_repo_blob(&self, repo: &RepoName, digest: &Digest, size: u64);
    /// Forgets that `repo` links `digest` (the link was deleted).
    async fn forget_repo_blob(&self, repo: &RepoName, digest: &Digest);
    /// Forgets `digest` everywhere (its content was deleted).
    async fn forget_blob(&self, digest: &Digest);
    fn stats(&self) -> &CacheStats;
    fn name(&self) -> &'static str;
    /// Whether the cache's backing service answers (health checks).
    async fn ping(&self) -> Result<(), String> {
        Ok(())
    }
}

/// No cache: every lookup goes to storage.
#[derive(Default)]
pub struct NoCache(CacheStats);

#[async_trait]
impl DescriptorCache for NoCache {
    async fn repo_blob(&self, _: &RepoName, _: &Digest) -> Option<u64> {
        None
    }
    async fn set_repo_blob(&self, _: &RepoName, _: &Digest, _: u64) {}
    async fn forget_repo_blob(&self, _: &RepoName, _: &Digest) {}
    async fn forget_blob(&self, _: &Digest) {}
    fn stats(&self) -> &CacheStats {
        &self.0
    }
    fn name(&self) -> &'static str {
        "none"
    }
}

/// Entries kept by [`MemoryCache`] before it starts over.
const MEMORY_CAPACITY: usize = 100_000;

/// A per-process cache (distribution's `inmemory`).
#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<(String, Digest), u64>>,
    stats: CacheStats,
}

#[async_trait]
impl DescriptorCache for MemoryCache {
    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        let found = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(repo.as_str().to_owned(), digest.clone()))
            .copied();
        count(&self.stats, found.is_some());
        found
    }

    async fn set_repo_blob(&self, repo: &RepoName, digest: &Digest, size: u64) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= MEMORY_CAPACITY {
            e.clear();
        }
        e.insert((repo.as_str().to_owned(), digest.clone()), size);
    }

    async fn forget_repo_blob(&self, repo: &RepoName, digest: &Digest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(repo.as_str().to_owned(), digest.clone()));
    }

    async fn forget_blob(&self, digest: &Digest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, d), _| d != digest);
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn name(&self) -> &'static str {
        "inmemory"
    }
}

fn count(stats: &CacheStats, hit: bool) {
    if hit {
        stats.hits.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.misses.fetch_add(1, Ordering::Relaxed);
    }
}

/// How Berth reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db` or `rediss://` (TLS).
    pub url: String,
    /// Connecting, reading and writing must each finish in this time.
    pub timeout: Duration,
    /// After a failure Redis is left alone for this long.
    pub backoff: Duration,
}

/// Redis, shared by replicas (distribution's `redis` cache and keys).
pub struct RedisCache {
    client: redis::Client,
    options: RedisOptions,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Until when Redis is not asked (after a failure).
    down_until: Mutex<Option<Instant>>,
    stats: CacheStats,
}

fn blob_key(d: &Digest) -> String {
    format!("blobs::{d}")
}

fn repo_set_key(repo: &RepoName) -> String {
    format!("repository::{repo}::blobs")
}

fn repo_blob_key(repo: &RepoName, d: &Digest) -> String {
    format!("repository::{repo}::blobs::{d}")
}

impl RedisCache {
    /// Prepares the client (no connection yet: Berth starts even when Redis is down).
    pub fn new(options: RedisOptions) -> Result<RedisCache, String> {
        let client =
            redis::Client::open(options.url.as_str()).map_err(|e| format!("redis: {e}"))?;
        Ok(RedisCache {
            client,
            options,
            conn: tokio::sync::Mutex::new(None),
            down_until: Mutex::new(None),
            stats: CacheStats::default(),
        })
    }

    /// A connection, unless Redis failed a moment ago.
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let until = *self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|u| Instant::now() < u) {
            return None;
        }
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Some(c.clone());
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.options.timeout)
            .set_response_timeout(self.options.timeout);
        match tokio::time::timeout(
            self.options.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        {
            Ok(Ok(c)) => {
                *guard = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                drop(guard);
                self.failed(&format!("connecting: {e}")).await;
                None
            }
            Err(_) => {
                drop(guard);
                self.failed("connecting timed out").await;
                None
            }
        }
    }

    /// Marks Redis down for the backoff; the first failure of a run logs a WARN.
    async fn failed(&self, what: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
            let first = down.is_none();
            *down = Some(Instant::now() + self.options.backoff);
            first
        };
        if first {
            tracing::warn!(
                "redis blob-descriptor cache unavailable ({what}); serving from storage and trying again every {}s; hint: check the redis section and that Redis is reachable",
                self.options.backoff.as_secs()
            );
        } else {
            tracing::debug!("redis still unavailable: {what}");
        }
        *self.conn.lock().await = None;
    }

    fn recovered(&self) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.take().is_some() {
            tracing::info!("redis blob-descriptor cache recovered");
        }
    }

    /// Runs one command (or pipeline) with the timeout; `None` when Redis is unavailable.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Option<T> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.options.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.recovered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string()).await;
                None
            }
            Err(_) => {
                self.failed("timed out").await;
                None
            }
        }
    }
}

#[async_trait]
impl DescriptorCache for RedisCache {
    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        let mut p = redis::pipe();
        p.cmd("SISMEMBER")
            .arg(repo_set_key(repo))
            .arg(digest.to_string())
            .cmd("HGET")
            .arg(blob_key(digest))
            .arg("size");
        let found = match self.run::<(bool, Option<u64>)>(&p).await {
            Some((true, Some(size))) => Some(size),
            _ => None,
        };
        count(&self.stats, found.is_some());
        found
    }

    async fn set_repo_blob(&self, repo: &RepoName, digest: &Digest, size: u64) {
        let d = digest.to_string();
        let mut p = redis::pipe();
        p.cmd("HSET")
            .arg(blob_key(digest))
            .arg("digest")
            .arg(&d)
            .arg("size")
            .arg(size)
            .arg("mediatype")
            .arg("application/octet-stream")
            .ignore()
            .cmd("HSET")
            .arg(repo_blob_key(repo, digest))
            .arg("digest")
            .arg(&d)
            .arg("mediatype")
            .arg("application/octet-stream")
            .ignore()
            .cmd("SADD")
            .arg(repo_set_key(repo))
            .arg(&d)
            .ignore();
        let _ = self.run::<()>(&p).await;
    }

    async fn forget_repo_blob(&self, repo: &RepoName, digest: &Digest) {
        let mut p = redis::pipe();
        p.cmd("SREM")
            .arg(repo_set_key(repo))
            .arg(digest.to_string())
            .ignore()
            .cmd("DEL")
            .arg(repo_blob_key(repo, digest))
            .ignore();
        if self.run::<()>(&p).await.is_none() {
            tracing::warn!(%repo, %digest, "could not remove a deleted blob from the redis cache; it may be reported present until its repository is checked again");
        }
    }

    async fn forget_blob(&self, digest: &Digest) {
        let mut p = redis::pipe();
        p.cmd("DEL").arg(blob_key(digest)).ignore();
        let _ = self.run::<()>(&p).await;
    }

    async fn ping(&self) -> Result<(), String> {
        let mut p = redis::pipe();
        p.cmd("PING");
        match self.run::<(String,)>(&p).await {
            Some(_) => Ok(()),
            None => Err("redis is unavailable (see the WARN line)".to_owned()),
        }
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
