//! The pull-through cache: some repository names belong to upstream registries
//! ([`policy::route`]); pulls of them are answered from the local cache, and what is missing
//! is fetched from the upstream, stored as ordinary content (listed in the catalog, linked in
//! the repository, collectable by GC), and served while it arrives.
//!
//! - Manifests by digest are cached for good. A tag is trusted for the upstream's `ttl`; after
//!   that one `HEAD` asks the upstream whether it moved (a HEAD does not count against Docker
//!   Hub's pull limit). When the upstream is down, rate-limited or failing, the cached copy is
//!   served and a WARN says so.
//! - Blobs are fetched once however many clients ask at the same time ([`fetch`]); a blob
//!   whose bytes do not match its digest is never cached and aborts the transfers it fed.
//! - A pull outside an upstream's allowlist is refused before any upstream request.
//! - What the cache stores from an upstream with a cache TTL (distribution's `proxy.ttl`) is
//!   scheduled for removal ([`expiry`]) when it is stored, and removed when the time is up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use berth_core::{Digest, ErrorCode, OciError, Reference, RepoName};
use berth_registry::blobs::BlobInfo;
use berth_registry::manifests::StoredManifest;
use berth_registry::{Registry, RegistryError};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

pub mod credentials;
pub mod expiry;
pub mod fetch;
pub mod policy;
pub mod upstream;

pub use fetch::Fetch;
pub use policy::{Route, UpstreamConfig};
pub use upstream::{Upstream, UpstreamError};

/// Why a proxied request failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A client-facing error (unknown manifest, refused by policy, rate limit, ...).
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What serves a proxied blob.
pub enum BlobSource {
    /// It is in the cache.
    Local(BlobInfo),
    /// It is arriving from upstream.
    Fetching(Arc<Fetch>),
}

type FetchCell = Arc<OnceCell<Result<Arc<Fetch>, UpstreamError>>>;

/// The most bytes gathered from upstream into one spool write.
const BATCH: usize = 1 << 20;

pub struct Proxy {
    upstreams: Vec<Upstream>,
    registry: Registry,
    spool_dir: PathBuf,
    /// Blob downloads under way, by digest (a fetch task removes its entry when it ends).
    inflight: Arc<Mutex<HashMap<String, FetchCell>>>,
    /// The expiry schedule, when some upstream's content expires.
    expiry: Option<Arc<expiry::Expiry>>,
}

fn unavailable(u: &Upstream, e: &UpstreamError) -> OciError {
    match e {
        UpstreamError::NotFound => OciError::new(ErrorCode::ManifestUnknown),
        UpstreamError::RateLimited => OciError::with_message(
            ErrorCode::TooManyRequests,
            format!(
                "upstream {} is rate-limiting this registry",
                u.config.label()
            ),
        ),
        other => OciError::with_message(
            ErrorCode::UpstreamUnavailable,
            format!("upstream {}: {other}", u.config.label()),
        ),
    }
}

impl Proxy {
    pub fn new(
        upstreams: Vec<UpstreamConfig>,
        registry: Registry,
        spool_dir: PathBuf,
    ) -> Result<Proxy, String> {
        std::fs::create_dir_all(&spool_dir)
            .map_err(|e| format!("proxy spool directory {}: {e}", spool_dir.display()))?;
        Ok(Proxy {
            upstreams: upstreams
                .into_iter()
                .map(Upstream::new)
                .collect::<Result<_, _>>()?,
            registry,
            spool_dir,
            inflight: Arc::default(),
            expiry: None,
        })
    }

    /// The same cache, scheduling what it stores for expiry.
    pub fn with_expiry(mut self, expiry: Arc<expiry::Expiry>) -> Proxy {
        self.expiry = Some(expiry);
        self
    }

    /// Schedules the expiry of something just stored for `upstream`, if its content expires.
    fn schedule(&self, upstream: usize, local: &RepoName, digest: &Digest, kind: expiry::Kind) {
        if let (Some(e), Some(ttl)) = (&self.expiry, self.upstreams[upstream].config.cache_ttl) {
            e.schedule(local, digest, kind, ttl);
        }
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// Where `name` (asked with containerd's `ns`) goes.
    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Route {
        let configs: Vec<UpstreamConfig> =
            self.upstreams.iter().map(|u| u.config.clone()).collect();
        policy::route(&configs, name, ns)
    }

    /// A manifest of a proxied repository, from the cache or the upstream.
    pub async fn manifest(
        &self,
        upstream: usize,
        remote: &str,
        local: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, ProxyError> {
        let u = &self.upstreams[upstream];
        match reference {
            Reference::Digest(d) => match self.registry.get_manifest(local, reference).await {
                Ok(m) => Ok(m),
                Err(RegistryError::Oci(_)) => {
                    let m = u
                        .get_manifest(remote, &d.to_string())
                        .await
                        .map_err(|e| unavailable(u, &e))?;
                    self.store(upstream, local, reference, m).await
                }
                Err(e) => Err(e.into()),
            },
            Reference::Tag(tag) => {
                let cached = match self.registry.get_manifest(local, reference).await {
                    Ok(m) => Some(m),
                    Err(RegistryError::Oci(_)) => None,
                    Err(e) => return Err(e.into()),
                };
                if let Some(m) = &cached {
                    let checked = self.registry.proxy_checked_at(local, tag).await?;
                    let fresh = checked
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age < u.config.ttl);
                    if fresh {
                        return Ok(m.clone());
                    }
                    // Stale: has the tag moved upstream?
                    match u.head_manifest(remote, tag.as_str()).await {
                        Ok(d) if d == m.digest.to_string() => {
                            self.registry.mark_proxy_checked(local, tag).await?;
                            return Ok(m.clone());
                        }
                        Ok(_) => {}
                        Err(UpstreamError::NotFound) => {
                            return Err(OciError::with_message(
                                ErrorCode::ManifestUnknown,
                                format!("{remote}:{tag} no longer exists upstream"),
                            )
                            .into());
                        }
                        Err(e) => {
                            tracing::warn!(
                                upstream = %u.config.label(),
                                "serving the cached {remote}:{tag}: {e}"
                            );
                            return Ok(m.clone());
                        }
                    }
                }
                match (u.get_manifest(remote, tag.as_str()).await, cached) {
                    (Ok(fetched), _) => {
                        let m = self.store(upstream, local, reference, fetched).await?;
                        self.registry.mark_proxy_checked(local, tag).await?;
                        Ok(m)
                    }
                    (Err(e), Some(m)) if e != UpstreamError::NotFound => {
                        tracing::warn!(upstream = %u.config.label(), "serving the cached {remote}:{tag}: {e}");
                        Ok(m)
                    }
                    (Err(e), _) => Err(unavailable(u, &e).into()),
                }
            }
        }
    }

    /// Caches a manifest fetched from upstream (its digest checked when upstream gave one).
    async fn store(
        &self,
        upstream: usize,
        local: &RepoName,
        reference: &Reference,
        m: upstream::RemoteManifest,
    ) -> Result<StoredManifest, ProxyError> {
        let digest = Digest::sha256_of(&m.body);
        let wanted = match reference {
            Reference::Digest(d) => Some(d.to_string()),
            Reference::Tag(_) => m.digest.clone().filter(|d| d.starts_with("sha256:")),
        };
        if let Some(w) = wanted {
            let got = match reference {
                Reference::Digest(d) => Digest::compute(d.algorithm(), &m.body).to_string(),
                Reference::Tag(_) => digest.to_string(),
            };
            if got != w {
                tracing::warn!(
                    "upstream manifest does not match its digest ({got} != {w}); not cached"
                );
                return Err(OciError::with_message(
                    ErrorCode::UpstreamUnavailable,
                    "upstream sent a manifest that does not match its digest",
                )
                .into());
            }
        }
        let ct = (!m.media_type.is_empty()).then_some(m.media_type.as_str());
        let put = self
            .registry
            .cache_manifest(local, reference, m.body.clone(), ct)
            .await?;
        self.schedule(upstream, local, &put.digest, expiry::Kind::Manifest);
        Ok(StoredManifest {
            digest: put.digest,
            media_type: berth_core::manifest::parse(&m.body, ct)
                .map(|i| i.media_type.as_str().to_owned())
                .unwrap_or_else(|_| m.media_type.clone()),
            body: m.body,
        })
    }

    /// A blob of a proxied repository: cached, already stored for another repository, or
    /// fetched now (shared with every other request for it).
    pub async fn blob(
        &self,
        upstream: usize,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
    ) -> Result<BlobSource, ProxyError> {
        match self.registry.stat_blob(local, digest).await {
            Ok(info) => return Ok(BlobSource::Local(info)),
            Err(RegistryError::Oci(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(info) = self.registry.adopt_blob(local, digest).await? {
            self.schedule(upstream, local, digest, expiry::Kind::Blob);
            return Ok(BlobSource::Local(info));
        }
        let key = digest.to_string();
        // A fetch that already failed is not joined: the next request starts a new one.
        for _ in 0..2 {
            let cell = {
                let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                inflight.entry(key.clone()).or_default().clone()
            };
            let started = cell
                .get_or_init(|| self.start_fetch(upstream, remote, local, digest))
                .await
                .clone();
            let forget = |inflight: &Mutex<HashMap<String, FetchCell>>| {
                let mut map = inflight.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    map.remove(&key);
                }
            };
            match started {
                Ok(f) if matches!(f.progress(), fetch::Progress::Failed(_)) => {
                    forget(&self.inflight)
                }
                Ok(f) => return Ok(BlobSource::Fetching(f)),
                Err(e) => {
                    // A failed start is not remembered either.
                    forget(&self.inflight);
                    let u = &self.upstreams[upstream];
                    return Err(match e {
                        UpstreamError::NotFound => OciError::new(ErrorCode::BlobUnknown),
                        other => unavailable(u, &other),
                    }
                    .into());
                }
            }
        }
        Err(OciError::with_message(
            ErrorCode::UpstreamUnavailable,
            "the upstream fetch failed twice",
        )
        .into())
    }

    /// The size of a blob of a proxied repository, without fetching it.
    pub async fn blob_size(
        &self,
        upstream: usize,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
    ) -> Result<u64, ProxyError> {
        match self.registry.stat_blob(local, digest).await {
            Ok(info) => return Ok(info.size),
            Err(RegistryError::Oci(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(info) = self.registry.adopt_blob(local, digest).await? {
            self.schedule(upstream, local, digest, expiry::Kind::Blob);
            return Ok(info.size);
        }
        let u = &self.upstreams[upstream];
        u.head_blob(remote, &digest.to_string())
            .await
            .map_err(|e| match e {
                UpstreamError::NotFound => OciError::new(ErrorCode::BlobUnknown).into(),
                other => unavailable(u, &other).into(),
            })
    }

    /// Starts the one download of a blob: a detached task that outlives the request that
    /// started it.
    async fn start_fetch(
        &self,
        upstream: usize,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
    ) -> Result<Arc<Fetch>, UpstreamError> {
        let u = &self.upstreams[upstream];
        let (size, mut body) = u.get_blob(remote, &digest.to_string()).await?;
        let (fetch, mut writer) = Fetch::create(&self.spool_dir, &digest.to_string(), size)
            .map_err(|e| UpstreamError::Unavailable(format!("spool: {e}")))?;
        let registry = self.registry.clone();
        let (local, digest) = (local.clone(), digest.clone());
        let label = u.config.label().to_owned();
        let inflight = self.inflight.clone();
        let inflight_key = digest.to_string();
        let digest_c = digest.clone();
        let expire = self.expiry.clone().zip(u.config.cache_ttl);
        // The download: upstream bytes into the spool, hashed; its readers get the last byte
        // only once the digest matched.
        tokio::spawn(async move {
            let outcome: Result<(), String> = async {
                // What has already arrived is written together (up to 1 MiB): one write per
                // batch instead of one per network read, with no wait for more.
                let mut ended = false;
                while !ended {
                    let first = match body.next().await {
                        Some(Ok(b)) => b,
                        Some(Err(e)) => return Err(format!("upstream broke off: {e}")),
                        None => break,
                    };
                    let mut batch = bytes::BytesMut::from(&first[..]);
                    while batch.len() < BATCH {
                        match futures_util::FutureExt::now_or_never(body.next()) {
                            Some(Some(Ok(b))) => batch.extend_from_slice(&b),
                            Some(Some(Err(e))) => return Err(format!("upstream broke off: {e}")),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    writer
                        .write(&batch.freeze())
                        .await
                        .map_err(|e| format!("spool: {e}"))?;
                }
                Ok(())
            }
            .await;
            let verdict = match outcome {
                Ok(()) => writer.finish(&digest.to_string()),
                Err(why) => {
                    writer.fail(&why);
                    Err(why)
                }
            };
            if let Err(why) = verdict {
                tracing::warn!(upstream = %label, blob = %digest, "{why}; not cached, the transfers it fed were aborted");
            }
        });
        // The cache's copy: one more reader of the spool, so clients never wait for storage;
        // committed only when the whole blob arrived with its digest. Until then newcomers
        // join this fetch.
        let reader = fetch.reader(0, None);
        tokio::spawn(async move {
            let mut reader = std::pin::pin!(reader);
            match registry.blob_writer(&local).await {
                Err(e) => {
                    tracing::warn!(blob = %digest_c, "cannot cache a blob from upstream: {e}")
                }
                Ok(mut cached) => {
                    let mut failed = None;
                    while let Some(chunk) = reader.next().await {
                        match chunk {
                            Ok(b) => {
                                if let Err(e) = cached.write(b).await {
                                    failed = Some(e.to_string());
                                    break;
                                }
                            }
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    match failed {
                        None => match cached.commit(&digest_c).await {
                            Ok(info) => {
                                tracing::debug!(blob = %info.digest, size = info.size, "cached from upstream");
                                if let Some((e, ttl)) = &expire {
                                    e.schedule(&local, &digest_c, expiry::Kind::Blob, *ttl);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(blob = %digest_c, "not caching a blob from upstream: {e}")
                            }
                        },
                        Some(why) => {
                            tracing::debug!(blob = %digest_c, "not cached: {why}");
                            cached.abort().await;
                        }
                    }
                }
            }
            inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&inflight_key);
        });
        Ok(fetch)
    }

    /// Tags of a proxied repository: upstream's list (falling back to the cached tags when
    /// the upstream fails).
    pub async fn tags(
        &self,
        upstream: usize,
        remote: &str,
        local: &RepoName,
        query: &str,
    ) -> Result<Vec<String>, ProxyError> {
        let u = &self.upstreams[upstream];
        match u.tags(remote, query).await {
            Ok(v) => Ok(v["tags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()),
            Err(UpstreamError::NotFound) => Err(OciError::new(ErrorCode::NameUnknown).into()),
            Err(e) => {
                tracing::warn!(upstream = %u.config.label(), "listing the cached tags of {remote}: {e}");
                Ok(self.registry.list_tags(local, None, None).await?.entries)
            }
        }
    }
}
