//! Assembles an [`AppState`] from the chosen storage driver and options. The binary maps the
//! configuration onto these choices; tests call it directly.

use std::path::PathBuf;
use std::sync::Arc;

use berth_registry::{Options as RegistryOptions, Registry};
pub use berth_storage::S3Config;
use berth_storage::{FilesystemDriver, InMemoryDriver, StorageDriver};

use crate::{AppState, ServerOptions};

/// Which storage driver to run on.
#[derive(Debug, Clone)]
pub enum DriverChoice {
    Filesystem(FilesystemDriver),
    InMemory,
}

/// Builds the application state.
pub fn state(driver: DriverChoice, registry: RegistryOptions, server: ServerOptions) -> AppState {
    let driver: Arc<dyn StorageDriver> = match driver {
        DriverChoice::Filesystem(fs) => Arc::new(fs),
        DriverChoice::InMemory => Arc::new(InMemoryDriver::new()),
    };
    state_with_driver(driver, registry, server)
}

/// The application state on S3 (the driver's set-up is async).
pub async fn s3_state(
    s3: berth_storage::S3Config,
    registry: RegistryOptions,
    server: ServerOptions,
) -> Result<AppState, String> {
    let driver = berth_storage::S3Driver::new(s3).await?;
    driver.check_bucket().await?;
    Ok(state_with_driver(Arc::new(driver), registry, server))
}

/// `storage.s3` as the driver's options; `redirect` is `!storage.redirect.disable`.
pub fn s3_config(s3: &crate::config::schema::S3, redirect: bool) -> berth_storage::S3Config {
    let d = berth_storage::S3Config::default();
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    berth_storage::S3Config {
        region: s3.region.clone().unwrap_or(d.region),
        region_endpoint: nonempty(&s3.regionendpoint),
        bucket: s3.bucket.clone().unwrap_or_default(),
        root_directory: s3.rootdirectory.clone().unwrap_or_default(),
        access_key: nonempty(&s3.accesskey),
        secret_key: nonempty(&s3.secretkey),
        session_token: nonempty(&s3.sessiontoken),
        secure: s3.secure.unwrap_or(true),
        force_path_style: s3.forcepathstyle.unwrap_or(false),
        chunk_size: s3.chunksize.unwrap_or(d.chunk_size),
        multipart_copy_chunk_size: s3
            .multipartcopychunksize
            .unwrap_or(d.multipart_copy_chunk_size),
        multipart_copy_max_concurrency: s3
            .multipartcopymaxconcurrency
            .map(|c| c as usize)
            .unwrap_or(d.multipart_copy_max_concurrency),
        multipart_copy_threshold_size: s3
            .multipartcopythresholdsize
            .unwrap_or(d.multipart_copy_threshold_size),
        storage_class: nonempty(&s3.storageclass),
        encrypt: s3.encrypt.unwrap_or(false),
        key_id: nonempty(&s3.keyid),
        redirect,
    }
}

/// The application state on a driver built by the caller (S3 needs async set-up).
pub fn state_with_driver(
    driver: Arc<dyn StorageDriver>,
    registry: RegistryOptions,
    server: ServerOptions,
) -> AppState {
    // Every storage call is counted (metrics) and traced (when export is on).
    let instrumented = berth_storage::Instrumented::new(driver);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    metrics.set_storage(instrumented.stats());
    AppState {
        registry: Registry::new(Arc::new(instrumented), registry),
        options: Arc::new(server),
        auth: Arc::default(),
        proxy: None,
        lifecycle: Arc::default(),
        metrics,
        health: Arc::default(),
    }
}

/// Access control from `auth`: `token` (with Berth's `issuer` and `jwksurl`), `htpasswd`, or
/// nothing. Reads every file it names; an unreadable one is an error at start-up, not at the
/// first request.
pub async fn auth(cfg: &crate::config::Config) -> Result<crate::auth::Auth, String> {
    use crate::auth::{Auth, HtpasswdFile, Mode};
    let Some(a) = &cfg.auth else {
        return Ok(Auth::default());
    };
    let issuer = match &a.issuer {
        Some(i) => Some(Arc::new(issuer(i, a.token.as_ref())?)),
        None => None,
    };
    let mode = if let Some(t) = &a.token {
        let mut trust = berth_auth::trust::TrustSet::default();
        if let Some(path) = &t.rootcertbundle {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.token.rootcertbundle {path}: {e}"))?;
            trust.extend(berth_auth::trust::TrustSet::from_pem_bundle(&text, path)?);
        }
        if let Some(path) = &t.jwks {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.token.jwks {path}: {e}"))?;
            trust.extend(berth_auth::trust::TrustSet::from_jwks(&text, path)?);
        }
        if let Some(i) = &issuer {
            trust.extend(i.trust_set());
        }
        let algorithms = t.signingalgorithms.as_ref().map(|list| {
            list.iter()
                .filter_map(|a| berth_auth::keys::Alg::parse(a))
                .collect()
        });
        let config = berth_auth::token::VerifierConfig {
            issuer: t.issuer.clone().unwrap_or_default(),
            service: t.service.clone().unwrap_or_default(),
            algorithms,
        };
        let jwks = match &t.jwksurl {
            Some(url) => {
                let r = crate::jwks::Refresher::new(url, trust.clone())?;
                match r.fetch().await {
                    Ok(all) => trust = all,
                    Err(e) => tracing::warn!("{e}; starting with the other trusted keys and fetching again when a token needs it"),
                }
                Some(Arc::new(r))
            }
            None => None,
        };
        tracing::info!(
            keys = trust.keys.len(),
            ids = %trust.key_ids().join(", "),
            "token authentication: trusted signing keys"
        );
        Mode::Token {
            verifier: Arc::new(berth_auth::token::Verifier::new(config, trust)),
            realm: t.realm.clone().filter(|r| !r.is_empty()),
            service: t.service.clone().unwrap_or_default(),
            jwks,
        }
    } else if let Some(h) = &a.htpasswd {
        let path = h.path.clone().unwrap_or_default();
        Mode::Basic {
            realm: h.realm.clone().unwrap_or_else(|| "Registry Realm".into()),
            users: HtpasswdFile::load(&path, Vec::new())
                .map_err(|e| format!("auth.htpasswd: {e}"))?,
        }
    } else {
        Mode::Open
    };
    Ok(Auth {
        mode,
        issuer,
        refusals: Default::default(),
    })
}

fn read(path: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{what} {path}: {e}"))
}

/// Berth's issuer from `auth.issuer`, signing for `auth.token`'s service and issuer name.
fn issuer(
    i: &crate::config::schema::Issuer,
    token: Option<&crate::config::schema::TokenAuth>,
) -> Result<berth_auth::issuer::Issuer, String> {
    use berth_auth::signer::Signer;
    let token = token.ok_or("auth.issuer needs auth.token")?;
    let mut signers = Vec::new();
    for k in i.keys.iter().flatten() {
        let key = read(&k.key, "auth.issuer key")?;
        let cert = match &k.certificate {
            Some(c) => Some(read(c, "auth.issuer certificate")?),
            None => None,
        };
        signers.push(
            Signer::from_pem(&key, cert.as_deref())
                .map_err(|e| format!("auth.issuer key {}: {e}", k.key))?,
        );
    }
    if let Some(dir) = &i.keydir {
        signers.extend(keydir(dir)?);
    }
    let extra: Vec<(String, String)> = i
        .users
        .iter()
        .flatten()
        .map(|(n, h)| (n.clone(), h.clone()))
        .collect();
    // Accounts from a file are re-read when it changes (tenants are added without a restart).
    let users: Box<dyn berth_auth::issuer::UserSource> = match &i.htpasswd {
        Some(path) => Box::new(
            crate::auth::HtpasswdFile::load(path, extra)
                .map_err(|e| format!("auth.issuer.htpasswd: {e}"))?,
        ),
        None => {
            let mut users = berth_auth::htpasswd::Users::default();
            for (name, hash) in &extra {
                users
                    .add(name, hash)
                    .map_err(|e| format!("auth.issuer.users: {e}"))?;
            }
            Box::new(Arc::new(users))
        }
    };
    let duration = |v: &Option<String>, default: u64| -> Result<i64, String> {
        match v {
            Some(s) => crate::config::parse_duration(s).map(|d| d.as_secs() as i64),
            None => Ok(default as i64),
        }
    };
    let acl = i.acl.clone().unwrap_or_default();
    if acl.is_empty() {
        tracing::warn!("auth.issuer has no acl rules: its tokens grant no access; hint: see config.example.yml for per-account namespaces");
    }
    let settings = berth_auth::issuer::IssuerSettings {
        issuer: token.issuer.clone().unwrap_or_default(),
        service: token.service.clone().unwrap_or_default(),
        expiration_secs: duration(&i.expiration, 300)?,
        refresh_expiration_secs: duration(&i.refreshexpiration, 720 * 3600)?,
        acl,
    };
    let issuer = berth_auth::issuer::Issuer::new(signers, users, settings)?;
    tracing::info!(
        accounts = issuer.users().len(),
        signing_kid = %issuer.trust_set().keys.first().map(|k| k.libtrust_id.clone()).unwrap_or_default(),
        "token issuer at /auth/token, keys at /auth/jwks.json"
    );
    Ok(issuer)
}

/// The keys of `dir` (`*.key` with `*.crt` beside them), newest first; generates one (ES256,
/// self-signed certificate) when there is none.
fn keydir(dir: &str) -> Result<Vec<berth_auth::signer::Signer>, String> {
    let path = std::path::Path::new(dir);
    std::fs::create_dir_all(path).map_err(|e| format!("auth.issuer.keydir {dir}: {e}"))?;
    let list =
        |p: &std::path::Path| -> Result<Vec<(std::time::SystemTime, std::path::PathBuf)>, String> {
            let mut keys = Vec::new();
            for e in std::fs::read_dir(p).map_err(|e| format!("auth.issuer.keydir {dir}: {e}"))? {
                let e = e.map_err(|e| format!("auth.issuer.keydir {dir}: {e}"))?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "key") {
                    let t = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    keys.push((t, p));
                }
            }
            keys.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
            Ok(keys)
        };
    let mut keys = list(path)?;
    if keys.is_empty() {
        let g =
            berth_auth::signer::generate(berth_auth::keys::Alg::ES256, "berth token signer", 3650)?;
        let key_path = path.join("token.key");
        write_private(&key_path, &g.key_pem)
            .map_err(|e| format!("writing {}: {e}", key_path.display()))?;
        std::fs::write(path.join("token.crt"), &g.cert_pem)
            .map_err(|e| format!("writing the certificate in {dir}: {e}"))?;
        tracing::info!(
            dir,
            "generated a token signing key (ES256) and its certificate"
        );
        keys = list(path)?;
    }
    let mut out = Vec::new();
    for (_, key_path) in keys {
        let key = read(&key_path.to_string_lossy(), "auth.issuer key")?;
        let crt_path = key_path.with_extension("crt");
        let cert = std::fs::read_to_string(&crt_path).ok();
        out.push(
            berth_auth::signer::Signer::from_pem(&key, cert.as_deref())
                .map_err(|e| format!("{}: {e}", key_path.display()))?,
        );
    }
    Ok(out)
}

/// Writes a private key readable by its owner only.
pub fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(content.as_bytes())
}

/// The blob-descriptor cache of `storage.cache.blobdescriptor` (none, `inmemory`, `redis`).
pub fn cache(
    cfg: &crate::config::Config,
) -> Result<Arc<dyn berth_registry::cache::DescriptorCache>, String> {
    use berth_registry::cache::{MemoryCache, NoCache, RedisCache, RedisOptions};
    let kind = cfg
        .storage
        .cache
        .as_ref()
        .and_then(|c| c.blobdescriptor.as_deref())
        .unwrap_or("");
    match kind {
        "" => Ok(Arc::new(NoCache::default())),
        "inmemory" => Ok(Arc::new(MemoryCache::default())),
        "redis" => {
            let r = cfg
                .redis
                .as_ref()
                .ok_or("storage.cache.blobdescriptor is redis, but there is no redis section")?;
            let url = redis_url(r)?;
            let timeout = [&r.dialtimeout, &r.readtimeout, &r.writetimeout]
                .into_iter()
                .flatten()
                .filter_map(|d| crate::config::parse_duration(d).ok())
                .filter(|d| !d.is_zero())
                .max()
                .unwrap_or(std::time::Duration::from_millis(500));
            let cache = RedisCache::new(RedisOptions {
                url,
                timeout,
                backoff: std::time::Duration::from_secs(5),
            })?;
            tracing::info!(
                addr = %redis_addr(r).unwrap_or_default(),
                timeout_ms = timeout.as_millis() as u64,
                "blob-descriptor cache in redis"
            );
            Ok(Arc::new(cache))
        }
        other => Err(format!("unknown blob-descriptor cache {other:?}")),
    }
}

/// `addr` (distribution 2.x) or the first of `addrs` (3.x).
fn redis_addr(r: &crate::config::schema::Redis) -> Option<String> {
    r.addr
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| r.addrs.as_ref().and_then(|a| a.first().cloned()))
}

/// The redis section as a connection URL (`redis://` or `rediss://`).
pub fn redis_url(r: &crate::config::schema::Redis) -> Result<String, String> {
    let addr = redis_addr(r).ok_or("redis: addr (or addrs) is required")?;
    let tls = r
        .tls
        .as_ref()
        .is_some_and(|t| t.enabled || t.certificate.is_some());
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let auth = match (&r.username, &r.password) {
        (Some(u), Some(p)) if !p.is_empty() => format!("{}:{}@", enc(u), enc(p)),
        (None, Some(p)) if !p.is_empty() => format!(":{}@", enc(p)),
        _ => String::new(),
    };
    Ok(format!(
        "{}://{auth}{addr}/{}",
        if tls { "rediss" } else { "redis" },
        r.db.unwrap_or(0)
    ))
}

/// distribution's default `proxy.ttl`: a week.
pub const DEFAULT_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(168 * 3600);

/// A cache TTL as distribution reads `proxy.ttl`: a Go duration (or integer nanoseconds);
/// zero or negative means cached content never expires (`None`).
pub fn cache_ttl(s: &str) -> Result<Option<std::time::Duration>, String> {
    let t = s.trim();
    match t.strip_prefix('-') {
        Some(abs) => crate::config::parse_duration(abs).map(|_| None),
        None => crate::config::parse_duration(t).map(|d| Some(d).filter(|d| !d.is_zero())),
    }
}

/// The pull-through cache of the `proxy` section, over `registry`, with its expiry schedule
/// (read from storage) when some upstream's content expires.
pub async fn proxy(
    cfg: &crate::config::Config,
    registry: &berth_registry::Registry,
) -> Result<Option<Arc<berth_proxy::Proxy>>, String> {
    let Some(p) = &cfg.proxy else {
        return Ok(None);
    };
    let tag_ttl = |v: &Option<String>, default: u64| -> Result<std::time::Duration, String> {
        match v {
            Some(s) => crate::config::parse_duration(s),
            None => Ok(std::time::Duration::from_secs(default)),
        }
    };
    // distribution's key: content expiry, a week unless set.
    let proxy_ttl = match &p.ttl {
        Some(s) => cache_ttl(s).map_err(|e| format!("proxy.ttl: {e}"))?,
        None => Some(DEFAULT_CACHE_TTL),
    };
    let mut upstreams = Vec::new();
    let mirror = p.remoteurl.as_deref().is_some_and(|u| !u.is_empty());
    if let Some(url) = p.remoteurl.as_deref().filter(|u| !u.is_empty()) {
        // distribution's single upstream: a pure mirror in distribution's layout. distribution
        // asks upstream for a tag on every pull; `tagttl` (Berth) trusts it for a while.
        upstreams.push(berth_proxy::UpstreamConfig {
            name: String::new(),
            url: url.to_owned(),
            username: p.username.clone(),
            password: p.password.clone(),
            ttl: tag_ttl(&p.tagttl, 0)?,
            cache_ttl: proxy_ttl,
            allow: Vec::new(),
            deny: Vec::new(),
            default: true,
            library: url.contains("docker.io"),
        });
    }
    for u in p.upstreams.iter().flatten() {
        let cache = match &u.cachettl {
            Some(s) => {
                cache_ttl(s).map_err(|e| format!("proxy.upstreams {}: cachettl: {e}", u.name))?
            }
            None => proxy_ttl,
        };
        upstreams.push(berth_proxy::UpstreamConfig {
            name: u.name.clone(),
            url: u.remoteurl.clone(),
            username: u.username.clone(),
            password: u.password.clone(),
            ttl: tag_ttl(&u.ttl, 24 * 3600)?,
            cache_ttl: cache,
            allow: u.allow.clone().unwrap_or_default(),
            deny: u.deny.clone().unwrap_or_default(),
            default: u.default.unwrap_or(false),
            library: u
                .library
                .unwrap_or(u.name == "docker.io" || u.remoteurl.contains("docker.io")),
        });
    }
    let spool = p
        .spooldir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("berth-proxy-spool"));
    for u in &upstreams {
        tracing::info!(
            upstream = %u.url,
            prefix = %u.name,
            default = u.default,
            allow = %u.allow.join(","),
            deny = %u.deny.join(","),
            tag_ttl_s = u.ttl.as_secs(),
            cache_ttl_s = u.cache_ttl.map(|t| t.as_secs()).unwrap_or(0),
            "pull-through cache upstream"
        );
    }
    let expires = upstreams.iter().any(|u| u.cache_ttl.is_some());
    let mut proxy = berth_proxy::Proxy::new(upstreams, registry.clone(), spool)?;
    if expires {
        // With `remoteurl` every repository is a cache, so an expired blob's content goes
        // too, as in distribution; beside hosted repositories only the cache's link does, and
        // garbage collection removes content nothing links any more.
        // As in distribution, read-only mode (which refuses clients' writes) does not stop it.
        let e = berth_proxy::expiry::Expiry::start(registry.clone(), mirror).await?;
        proxy = proxy.with_expiry(e);
    }
    Ok(Some(Arc::new(proxy)))
}
