//! The blob-descriptor cache (`storage.cache.blobdescriptor`): which blobs a repository has and
//! how large they are, so `HEAD`/`GET` of a blob, a manifest's reference checks and mounts
//! need no storage round trip (several on S3) when the answer is known.
//!
//! - [`MemoryCache`]: per process, bounded.
//! - [`RedisCache`]: shared by every replica, with distribution's keys and fields
//!   (`blobs::<digest>` hash `digest size mediatype`; `repository::<name>::blobs` set;
//!   `repository::<name>::blobs::<digest>` hash), so distribution and Berth can share one Redis.
//!
//! Redis is one server, a Sentinel-managed master (found again through the sentinels on every
//! reconnection, so a failover is followed) or a Cluster, with TLS, as distribution 3's
//! go-redis `UniversalClient` reaches it ([`RedisTopology`]).
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

/// Which Redis deployment the cache talks to, as go-redis's `UniversalClient` (distribution
/// 3.x) picks it: a master name means Sentinel, several addresses without one mean Cluster,
/// else one server.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    /// One server (`host:port`).
    Single(String),
    /// Sentinels (`host:port` each) that name the master called `master`; the master is
    /// looked up again on every reconnection, so a failover is followed.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
    },
    /// Seed nodes of a Redis Cluster; the client learns the slots and follows moves.
    Cluster(Vec<String>),
}

/// TLS to Redis (and to the sentinels): PEM bytes read at start.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// Client certificate chain and its key (mutual TLS).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// The CAs that sign the server's certificate; `None`: the system's.
    pub root_cas: Option<Vec<u8>>,
}

/// How Berth reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub topology: RedisTopology,
    pub tls: Option<RedisTls>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Credentials for the sentinels themselves.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub db: i64,
    /// RESP3 instead of RESP2.
    pub resp3: bool,
    /// `CLIENT SETNAME` on each connection.
    pub client_name: Option<String>,
    /// `CLIENT SETINFO LIB-NAME berth(<suffix>)`; `None`: no `CLIENT SETINFO`.
    pub identity: Option<String>,
    /// Connecting (and, for Sentinel, asking where the master is) must finish in this time.
    pub dial_timeout: Duration,
    /// Each command (written and answered) must finish in this time.
    pub timeout: Duration,
    /// Commands that fail with a retryable error are sent again this many times, on a new
    /// connection, after an exponential pause between the two bounds.
    pub retries: u32,
    pub min_retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// Cluster: reads may go to replicas.
    pub read_from_replicas: bool,
    /// A connection idle for longer is replaced before use.
    pub conn_max_idle: Option<Duration>,
    /// A connection older than this is replaced before use.
    pub conn_max_lifetime: Option<Duration>,
    /// After a failure Redis is left alone for this long.
    pub backoff: Duration,
}

/// How commands reach Redis.
enum Target {
    Single(redis::Client),
    Sentinel {
        master: String,
        /// One client per sentinel, asked in turn, from the one that answered last.
        sentinels: Vec<redis::Client>,
        answered: std::sync::atomic::AtomicUsize,
        /// How to reach the master once named: TLS and credentials of the data nodes.
        node: redis::RedisConnectionInfo,
    },
    Cluster(redis::cluster::ClusterClient),
}

/// An open connection: multiplexed, so clones share it.
#[derive(Clone)]
enum Conn {
    Node(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn query(mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match &mut self {
            Conn::Node(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

struct Live {
    conn: Conn,
    opened: Instant,
    used: Instant,
}

/// Redis, shared by replicas (distribution's `redis` cache and keys).
pub struct RedisCache {
    target: Target,
    options: RedisOptions,
    conn: tokio::sync::Mutex<Option<Live>>,
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

/// `host:port` (or `[v6]:port`; the port defaults to 6379) as a connection address.
fn address(addr: &str, tls: bool) -> Result<redis::ConnectionAddr, String> {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("redis address {addr:?}: the port is not a number"))?,
        ),
        _ => (addr, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("redis address {addr:?} has no host"));
    }
    Ok(if tls {
        redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(host.to_owned(), port)
    })
}

fn certificates(tls: &RedisTls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.root_cas.clone(),
    }
}

/// Errors after which the command is worth sending again on a new connection (go-redis's
/// list: the connection broke, the server is loading or was demoted, the cluster moves).
fn retryable(e: &redis::RedisError) -> bool {
    use redis::ErrorKind as K;
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            K::ReadOnly | K::BusyLoadingError | K::TryAgain | K::ClusterDown | K::MasterDown
        )
}

impl RedisCache {
    /// Prepares the client (no connection yet: Berth starts even when Redis is down).
    pub fn new(options: RedisOptions) -> Result<RedisCache, String> {
        let err = |e: redis::RedisError| format!("redis: {e}");
        let tls = options.tls.is_some();
        let info = redis::RedisConnectionInfo {
            db: options.db,
            username: options.username.clone(),
            password: options.password.clone(),
            protocol: if options.resp3 {
                redis::ProtocolVersion::RESP3
            } else {
                redis::ProtocolVersion::RESP2
            },
        };
        let target = match &options.topology {
            RedisTopology::Single(addr) => {
                Target::Single(Self::client(address(addr, tls)?, info, &options.tls)?)
            }
            RedisTopology::Sentinel { master, sentinels } => {
                let sentinel_info = redis::RedisConnectionInfo {
                    username: options.sentinel_username.clone(),
                    password: options.sentinel_password.clone(),
                    ..Default::default()
                };
                let sentinels = sentinels
                    .iter()
                    .map(|a| Self::client(address(a, tls)?, sentinel_info.clone(), &options.tls))
                    .collect::<Result<Vec<_>, _>>()?;
                Target::Sentinel {
                    master: master.clone(),
                    sentinels,
                    answered: Default::default(),
                    node: info,
                }
            }
            RedisTopology::Cluster(nodes) => {
                let nodes = nodes
                    .iter()
                    .map(|a| {
                        Ok(redis::ConnectionInfo {
                            addr: address(a, tls)?,
                            redis: info.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(options.dial_timeout)
                    .response_timeout(options.timeout)
                    .use_protocol(info.protocol)
                    .retries(options.retries)
                    .min_retry_wait(options.min_retry_backoff.as_millis() as u64)
                    .max_retry_wait(options.max_retry_backoff.as_millis() as u64);
                if let Some(u) = &info.username {
                    b = b.username(u.clone());
                }
                if let Some(p) = &info.password {
                    b = b.password(p.clone());
                }
                if options.read_from_replicas {
                    b = b.read_from_replicas();
                }
                if let Some(t) = &options.tls {
                    b = b.tls(redis::TlsMode::Secure);
                    if t.client.is_some() || t.root_cas.is_some() {
                        b = b.certs(certificates(t));
                    }
                }
                Target::Cluster(b.build().map_err(err)?)
            }
        };
        Ok(RedisCache {
            target,
            options,
            conn: tokio::sync::Mutex::new(None),
            down_until: Mutex::new(None),
            stats: CacheStats::default(),
        })
    }

    /// A client for one server, with the TLS files when there are any.
    fn client(
        addr: redis::ConnectionAddr,
        redis: redis::RedisConnectionInfo,
        tls: &Option<RedisTls>,
    ) -> Result<redis::Client, String> {
        let ci = redis::ConnectionInfo { addr, redis };
        match tls {
            Some(t) if t.client.is_some() || t.root_cas.is_some() => {
                redis::Client::build_with_tls(ci, certificates(t))
            }
            _ => redis::Client::open(ci),
        }
        .map_err(|e| format!("redis: {e}"))
    }

    /// The master the sentinels name now, checked to be one (a sentinel may lag behind a
    /// failover). Each sentinel is asked within the dial and command timeouts, so one that
    /// does not answer costs only its turn.
    async fn sentinel_master(
        &self,
        master: &str,
        sentinels: &[redis::Client],
        answered: &std::sync::atomic::AtomicUsize,
        node: &redis::RedisConnectionInfo,
        cfg: &redis::AsyncConnectionConfig,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let mut last = None;
        let first = answered.load(Ordering::Relaxed);
        for i in (0..sentinels.len()).map(|i| (first + i) % sentinels.len()) {
            let s = &sentinels[i];
            let mut ask = redis::cmd("SENTINEL");
            ask.arg("GET-MASTER-ADDR-BY-NAME").arg(master);
            let named = async {
                let mut c = s.get_multiplexed_async_connection_with_config(cfg).await?;
                ask.query_async::<Option<(String, u16)>>(&mut c).await
            };
            let (host, port) = match tokio::time::timeout(self.limit(), named).await {
                Ok(Ok(Some(addr))) => {
                    answered.store(i, Ordering::Relaxed);
                    addr
                }
                Ok(Ok(None)) => {
                    last = Some(format!(
                        "{}: no master named {master:?}",
                        s.get_connection_info().addr
                    ));
                    continue;
                }
                Ok(Err(e)) => {
                    last = Some(format!("{}: {e}", s.get_connection_info().addr));
                    continue;
                }
                Err(_) => {
                    last = Some(format!("{}: timed out", s.get_connection_info().addr));
                    continue;
                }
            };
            let addr =
                address(&format!("{host}:{port}"), self.options.tls.is_some()).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "master address",
                        e,
                    ))
                })?;
            let client = Self::client(addr, node.clone(), &self.options.tls).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "master", e))
            })?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(cfg)
                .await?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            if role
                .first()
                .and_then(|r| redis::from_redis_value::<String>(r).ok())
                .as_deref()
                != Some("master")
            {
                last = Some(format!(
                    "{host}:{port}, named master of {master:?}, is not a master (yet)"
                ));
                continue;
            }
            return Ok(conn);
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::MasterDown,
            "no sentinel named a master",
            last.unwrap_or_default(),
        )))
    }

    /// How long opening a connection may take (dial, then the handshake's commands).
    fn limit(&self) -> Duration {
        self.options.dial_timeout + self.options.timeout
    }

    /// Opens a connection to the server (for Sentinel: to the master the sentinels name now).
    async fn open(&self) -> redis::RedisResult<Conn> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.options.dial_timeout)
            .set_response_timeout(self.options.timeout);
        let conn = match &self.target {
            Target::Single(c) => {
                Conn::Node(c.get_multiplexed_async_connection_with_config(&cfg).await?)
            }
            Target::Sentinel {
                master,
                sentinels,
                answered,
                node,
            } => Conn::Node(
                self.sentinel_master(master, sentinels, answered, node, &cfg)
                    .await?,
            ),
            Target::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
        };
        // Per-connection settings; in a cluster they go to every node's connection.
        if let Some(name) = &self.options.client_name {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("SETNAME").arg(name);
            conn.clone().query(&cmd).await?;
        }
        if let Some(lib) = &self.options.identity {
            // Redis before 7.2 does not know CLIENT SETINFO: its refusal is ignored, as
            // go-redis does.
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("SETINFO").arg("LIB-NAME").arg(lib);
            let _ = conn.clone().query(&cmd).await;
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("SETINFO")
                .arg("LIB-VER")
                .arg(env!("CARGO_PKG_VERSION"));
            let _ = conn.clone().query(&cmd).await;
        }
        Ok(conn)
    }

    /// A connection, unless Redis failed a moment ago; one past its idle time or lifetime is
    /// replaced.
    async fn connection(&self) -> Option<Conn> {
        let until = *self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|u| Instant::now() < u) {
            return None;
        }
        let mut guard = self.conn.lock().await;
        let now = Instant::now();
        if let Some(live) = guard.as_mut() {
            let expired = self
                .options
                .conn_max_lifetime
                .is_some_and(|l| now.duration_since(live.opened) >= l)
                || self
                    .options
                    .conn_max_idle
                    .is_some_and(|l| now.duration_since(live.used) >= l);
            if !expired {
                live.used = now;
                return Some(live.conn.clone());
            }
            *guard = None;
        }
        // Connecting includes, for Sentinel, asking the sentinels and checking the master.
        let limit = match &self.target {
            Target::Sentinel { sentinels, .. } => self.limit() * (sentinels.len() as u32 + 1),
            _ => self.limit(),
        };
        match tokio::time::timeout(limit, self.open()).await {
            Ok(Ok(c)) => {
                *guard = Some(Live {
                    conn: c.clone(),
                    opened: now,
                    used: now,
                });
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

    /// The pause before retry `n` (0-based): doubling from the minimum, capped.
    fn retry_pause(&self, n: u32) -> Duration {
        self.options
            .min_retry_backoff
            .saturating_mul(1u32 << n.min(16))
            .min(self.options.max_retry_backoff)
    }

    /// Runs the commands, each on its own (a cluster keeps distribution's keys in different
    /// slots, so they cannot share a pipeline) but at once on the multiplexed connection;
    /// `None` when Redis is unavailable.
    async fn run(&self, cmds: &[redis::Cmd]) -> Option<Vec<redis::Value>> {
        // The cluster client retries by itself.
        let retries = match self.target {
            Target::Cluster(_) => 0,
            _ => self.options.retries,
        };
        let mut attempt = 0;
        loop {
            let conn = self.connection().await?;
            let all = futures_util::future::join_all(cmds.iter().map(|c| conn.clone().query(c)));
            let error = match tokio::time::timeout(self.options.timeout, all).await {
                Ok(results) => match results.into_iter().collect::<Result<Vec<_>, _>>() {
                    Ok(values) => {
                        self.recovered();
                        return Some(values);
                    }
                    Err(e) => e,
                },
                Err(_) => {
                    self.failed("timed out").await;
                    return None;
                }
            };
            if attempt >= retries || !retryable(&error) {
                self.failed(&error.to_string()).await;
                return None;
            }
            tracing::debug!(attempt, "redis command failed, trying again: {error}");
            *self.conn.lock().await = None;
            tokio::time::sleep(self.retry_pause(attempt)).await;
            attempt += 1;
        }
    }
}

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

fn bool_of(v: &redis::Value) -> bool {
    redis::from_redis_value::<bool>(v).unwrap_or(false)
}

#[async_trait]
impl DescriptorCache for RedisCache {
    async fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        let d = digest.to_string();
        let mut member = cmd("SISMEMBER");
        member.arg(repo_set_key(repo)).arg(&d);
        let mut size = cmd("HGET");
        size.arg(blob_key(digest)).arg("size");
        let found = match self.run(&[member, size]).await.as_deref() {
            Some([m, s]) if bool_of(m) => redis::from_redis_value::<Option<u64>>(s).ok().flatten(),
            _ => None,
        };
        count(&self.stats, found.is_some());
        found
    }

    async fn set_repo_blob(&self, repo: &RepoName, digest: &Digest, size: u64) {
        let d = digest.to_string();
        let mut blob = cmd("HSET");
        blob.arg(blob_key(digest))
            .arg("digest")
            .arg(&d)
            .arg("size")
            .arg(size)
            .arg("mediatype")
            .arg("application/octet-stream");
        let mut scoped = cmd("HSET");
        scoped
            .arg(repo_blob_key(repo, digest))
            .arg("digest")
            .arg(&d)
            .arg("mediatype")
            .arg("application/octet-stream");
        let mut member = cmd("SADD");
        member.arg(repo_set_key(repo)).arg(&d);
        let _ = self.run(&[blob, scoped, member]).await;
    }

    async fn forget_repo_blob(&self, repo: &RepoName, digest: &Digest) {
        let mut member = cmd("SREM");
        member.arg(repo_set_key(repo)).arg(digest.to_string());
        let mut scoped = cmd("DEL");
        scoped.arg(repo_blob_key(repo, digest));
        if self.run(&[member, scoped]).await.is_none() {
            tracing::warn!(%repo, %digest, "could not remove a deleted blob from the redis cache; it may be reported present until its repository is checked again");
        }
    }

    async fn forget_blob(&self, digest: &Digest) {
        let mut del = cmd("DEL");
        del.arg(blob_key(digest));
        let _ = self.run(&[del]).await;
    }

    async fn ping(&self) -> Result<(), String> {
        match self.run(&[cmd("PING")]).await {
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
