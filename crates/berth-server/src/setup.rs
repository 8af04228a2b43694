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
        region: nonempty(&s3.region).unwrap_or(d.region),
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
        // distribution uppercases it (`standard_ia` is `STANDARD_IA`).
        storage_class: nonempty(&s3.storageclass).map(|c| c.to_ascii_uppercase()),
        encrypt: s3.encrypt.unwrap_or(false),
        key_id: nonempty(&s3.keyid),
        redirect,
        // Checked with the rest of the configuration.
        connect_timeout: deadline(&s3.connecttimeout, d.connect_timeout),
        response_timeout: deadline(&s3.responsetimeout, d.response_timeout),
        idle_timeout: deadline(&s3.idletimeout, d.idle_timeout),
        max_attempts: s3.maxattempts.filter(|a| *a > 0).unwrap_or(d.max_attempts),
    }
}

/// A configured deadline, or the default when absent (or invalid: `config check` says so).
fn deadline(v: &Option<String>, default: std::time::Duration) -> std::time::Duration {
    v.as_deref()
        .and_then(|v| crate::config::parse_duration(v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
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
        notifier: None,
    }
}

/// Access control from `auth`: `token` (with Berth's `issuer` and `jwksurl`), `htpasswd`,
/// `silly`, or nothing. Reads every file it names; an unreadable one is an error at start-up, not at the
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
    let federation = match a.issuer.as_ref().and_then(|i| i.federated.as_deref()) {
        Some(list) => Arc::new(crate::federation::Federation::new(list).await?),
        None => Arc::default(),
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
            autoredirect: crate::auth::autoredirect_path(t),
            service: t.service.clone().unwrap_or_default(),
            jwks,
        }
    } else if let Some(h) = &a.htpasswd {
        let path = h.path.clone().unwrap_or_default();
        Mode::Basic {
            realm: h.realm.clone().unwrap_or_else(|| "Registry Realm".into()),
            users: HtpasswdFile::load_or_refuse_all(&path),
        }
    } else if let Some(s) = &a.silly {
        tracing::warn!(
            "auth.silly: every request with an Authorization header is admitted, whatever the header holds (distribution's development stub: never use it in production)"
        );
        Mode::Silly {
            realm: s.realm.clone().unwrap_or_default(),
            service: s.service.clone().unwrap_or_default(),
        }
    } else {
        Mode::Open
    };
    Ok(Auth {
        mode,
        issuer,
        refusals: Default::default(),
        throttle: throttle(a.issuer.as_ref().and_then(|i| i.throttle.as_ref()))?,
        robots: crate::robots::RobotCache::new(
            a.issuer.as_ref().and_then(|i| i.robottokens.as_deref()),
        )?,
        federation,
        ldap: match a.issuer.as_ref().and_then(|i| i.ldap.as_ref()) {
            Some(l) => Some(Arc::new(crate::ldap::Directory::new(l)?)),
            None => None,
        },
    })
}

/// The token endpoint's failed-login throttle, as `auth.issuer.throttle` sets it.
fn throttle(
    c: Option<&crate::config::schema::Throttle>,
) -> Result<crate::throttle::Throttle, String> {
    use crate::throttle::{Throttle, ACCOUNT_FREE, ADDRESS_FREE, MAX_DELAY};
    let Some(c) = c else {
        return Ok(Throttle::default());
    };
    let max = match &c.maxdelay {
        Some(d) => crate::config::parse_duration(d)
            .map_err(|e| format!("auth.issuer.throttle.maxdelay: {e}"))?,
        None => MAX_DELAY,
    };
    if max.is_zero() {
        tracing::warn!("auth.issuer.throttle.maxdelay is 0: failed logins are never slowed down, so passwords can be guessed at full speed");
    }
    Ok(Throttle::new(
        c.accountfailures.unwrap_or(ACCOUNT_FREE),
        c.addressfailures.unwrap_or(ADDRESS_FREE),
        max,
    ))
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
    use berth_registry::cache::{MemoryCache, NoCache, RedisCache, RedisTopology};
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
            let options = redis_options(r)?;
            let mode = match &options.topology {
                RedisTopology::Single(_) => "standalone",
                RedisTopology::Sentinel { .. } => "sentinel",
                RedisTopology::Cluster(_) => "cluster",
            };
            tracing::info!(
                mode,
                addr = %redis_addrs(r).join(","),
                master = %r.mastername.as_deref().unwrap_or(""),
                tls = options.tls.is_some(),
                timeout_ms = options.timeout.as_millis() as u64,
                "blob-descriptor cache in redis"
            );
            Ok(Arc::new(RedisCache::new(options)?))
        }
        other => Err(format!("unknown blob-descriptor cache {other:?}")),
    }
}

/// `addrs` (distribution 3.x), or else `addr` (2.x). A file with both (a 2.x file given a 3.x
/// variable, say) uses `addrs`, as distribution 3 does.
fn redis_addrs(r: &crate::config::schema::Redis) -> Vec<String> {
    let clean = |list: &mut dyn Iterator<Item = &String>| -> Vec<String> {
        list.map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect()
    };
    let addrs = clean(&mut r.addrs.iter().flatten());
    let addr = clean(&mut r.addr.iter());
    if addrs.is_empty() {
        return addr;
    }
    if !addr.is_empty() && addr.iter().any(|a| !addrs.contains(a)) {
        tracing::warn!(
            addr = %addr.join(","),
            addrs = %addrs.join(","),
            "redis has both addr (distribution 2.x) and addrs (3.x); using addrs"
        );
    }
    addrs
}

/// A duration key of the redis section as go-redis reads it: unset or zero is the default
/// (`Ok(None)`), a negative value is "off" (`Ok(Some(None))`).
fn redis_duration(v: &Option<String>) -> Result<Option<Option<std::time::Duration>>, String> {
    match v.as_deref().map(str::trim) {
        None => Ok(None),
        Some(s) if s.starts_with('-') => Ok(Some(None)),
        Some(s) => crate::config::parse_duration(s).map(|d| (!d.is_zero()).then_some(Some(d))),
    }
}

/// The redis section as the cache's options, with go-redis's meaning: `mastername` means
/// Sentinel (the addresses are sentinels), several addresses mean Cluster.
pub fn redis_options(
    r: &crate::config::schema::Redis,
) -> Result<berth_registry::cache::RedisOptions, String> {
    use berth_registry::cache::{RedisOptions, RedisTls, RedisTopology};
    use std::time::Duration;
    let addrs = redis_addrs(r);
    if addrs.is_empty() {
        return Err("redis: addr (or addrs) is required".to_owned());
    }
    let master = r.mastername.clone().filter(|m| !m.is_empty());
    let topology = match master {
        Some(master) => RedisTopology::Sentinel {
            master,
            sentinels: addrs,
        },
        None if addrs.len() > 1 => RedisTopology::Cluster(addrs),
        None => RedisTopology::Single(addrs[0].clone()),
    };
    let tls = match &r.tls {
        Some(t) => {
            let read = |path: &str, what: &str| -> Result<Vec<u8>, String> {
                std::fs::read(path).map_err(|e| format!("redis.tls.{what} {path}: {e}"))
            };
            let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
            let client = match (nonempty(&t.certificate), nonempty(&t.key)) {
                (Some(c), Some(k)) => Some((read(&c, "certificate")?, read(&k, "key")?)),
                (None, None) => None,
                // distribution goes on without a client certificate.
                _ => {
                    tracing::warn!("redis.tls: certificate and key go together; connecting without a client certificate");
                    None
                }
            };
            let mut cas = Vec::new();
            for path in t.rootcas.iter().chain(t.clientcas.iter()).flatten() {
                let mut pem = read(path, "rootcas")?;
                pem.push(b'\n');
                cas.extend(pem);
            }
            let root_cas = (!cas.is_empty()).then_some(cas);
            (t.enabled || client.is_some() || root_cas.is_some())
                .then_some(RedisTls { client, root_cas })
        }
        None => None,
    };
    // Berth's defaults are shorter than go-redis's (5s, 3s): the cache is an optimisation, and
    // a request should not wait long on it.
    let default_timeout = Duration::from_millis(500);
    // "Off" (negative) is no timeout: a day stands for it.
    let timeout = |v: &Option<String>, default: Duration| -> Result<Duration, String> {
        Ok(redis_duration(v)?.map_or(default, |d| d.unwrap_or(Duration::from_secs(86_400))))
    };
    let dial_timeout = timeout(&r.dialtimeout, default_timeout)?;
    let read = timeout(&r.readtimeout, default_timeout)?;
    let write = timeout(&r.writetimeout, read)?;
    // go-redis: 0 means 3, -1 none; backoffs 0 mean 8ms and 512ms.
    let count = |v: Option<i64>| match v.unwrap_or(0) {
        0 => 3,
        n if n < 0 => 0,
        n => n.min(100) as u32,
    };
    // The cluster client counts redirections (MOVED, ASK) among its retries.
    let retries = match topology {
        RedisTopology::Cluster(_) => count(r.maxretries).max(count(r.maxredirects)),
        _ => count(r.maxretries),
    };
    let backoff = |v: &Option<String>, default: u64| -> Result<Duration, String> {
        Ok(redis_duration(v)?.map_or(Duration::from_millis(default), |d| d.unwrap_or_default()))
    };
    // Idle time and lifetime: unset, zero and negative all mean no limit.
    let limit = |v: &Option<String>| -> Result<Option<Duration>, String> {
        Ok(redis_duration(v)?.flatten())
    };
    let pool = r.pool.clone().unwrap_or_default();
    let identity = (!r.disableidentity.unwrap_or(false)).then(|| {
        match r.identitysuffix.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => format!("berth({s})"),
            None => "berth".to_owned(),
        }
    });
    Ok(RedisOptions {
        topology,
        tls,
        username: r.username.clone().filter(|u| !u.is_empty()),
        password: r.password.clone().filter(|p| !p.is_empty()),
        sentinel_username: r.sentinelusername.clone().filter(|u| !u.is_empty()),
        sentinel_password: r.sentinelpassword.clone().filter(|p| !p.is_empty()),
        db: r.db.unwrap_or(0),
        resp3: r.protocol == Some(3),
        client_name: r.clientname.clone().filter(|n| !n.is_empty()),
        identity,
        dial_timeout,
        timeout: read + write,
        retries,
        min_retry_backoff: backoff(&r.minretrybackoff, 8)?,
        max_retry_backoff: backoff(&r.maxretrybackoff, 512)?,
        read_from_replicas: r.readonly.unwrap_or(false)
            || r.routebylatency.unwrap_or(false)
            || r.routerandomly.unwrap_or(false),
        conn_max_idle: limit(&r.connmaxidletime)?.or(limit(&pool.idletimeout)?),
        conn_max_lifetime: limit(&r.connmaxlifetime)?.or(limit(&pool.maxlifetime)?),
        backoff: Duration::from_secs(5),
    })
}

/// `exec` of `proxy` (for `remoteurl`) or of one of its `upstreams` (`at` says which). As in
/// distribution, it replaces `username`/`password`.
fn proxy_exec(
    exec: &Option<crate::config::schema::ProxyExec>,
    username: &Option<String>,
    at: &str,
) -> Result<Option<berth_proxy::credentials::ExecHelper>, String> {
    let Some(e) = exec else {
        return Ok(None);
    };
    let lifetime = match e.lifetime.as_deref().map(str::trim) {
        None => None,
        // Go's negative duration: like zero, the helper runs for every use.
        Some(l) if l.starts_with('-') => Some(std::time::Duration::ZERO),
        Some(l) => Some(
            crate::config::parse_duration(l).map_err(|e| format!("{at}: exec.lifetime: {e}"))?,
        ),
    };
    if username.as_deref().is_some_and(|u| !u.is_empty()) {
        tracing::warn!(
            "{at}: username/password are not used: exec gives the upstream's credentials"
        );
    }
    Ok(Some(berth_proxy::credentials::ExecHelper {
        command: e.command.clone().unwrap_or_default(),
        lifetime,
    }))
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
            exec: proxy_exec(&p.exec, &p.username, "proxy")?,
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
            exec: proxy_exec(&u.exec, &u.username, &format!("proxy.upstreams {}", u.name))?,
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

/// `notifications` as the notifier's settings: distribution's keys with distribution's
/// defaults (a timeout, threshold or backoff of zero or less is the default), and Berth's
/// bounds. `None` when no endpoint is enabled.
pub fn notify_config(
    cfg: &crate::config::Config,
) -> Result<Option<crate::notify::NotifyConfig>, String> {
    use crate::config::parse_duration;
    use crate::notify::{self, EndpointConfig, Ignore};
    let Some(n) = &cfg.notifications else {
        return Ok(None);
    };
    let duration = |where_: &str, v: Option<&String>, default| -> Result<_, String> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = parse_duration(s).map_err(|e| format!("{where_}: {e}"))?;
                Ok(if d.is_zero() { default } else { d })
            }
        }
    };
    let mut endpoints = Vec::new();
    for (i, e) in n.endpoints.iter().flatten().enumerate() {
        let name = e.name.clone().unwrap_or_default();
        if e.disabled {
            tracing::info!("notifications: endpoint {name:?} is disabled");
            continue;
        }
        let at = |key: &str| format!("notifications.endpoints[{i}].{key}");
        let url = e.url.clone().unwrap_or_default();
        if reqwest::Url::parse(&url)
            .map(|u| !matches!(u.scheme(), "http" | "https"))
            .unwrap_or(true)
        {
            // distribution starts and fails every delivery; so does Berth, saying why now.
            tracing::warn!(
                "{}: {url:?} is not an http(s) URL: every delivery to endpoint {name:?} will fail",
                at("url")
            );
        }
        let mut headers = Vec::new();
        for (k, values) in e.headers.iter().flatten() {
            for v in values {
                match (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(v)) => headers.push((k, v)),
                    _ => tracing::warn!(
                        "{}: header {k:?} is not a valid HTTP header: not sent",
                        at("headers")
                    ),
                }
            }
        }
        let mut ignore = Ignore {
            media_types: e.ignoredmediatypes.clone().unwrap_or_default(),
            actions: Vec::new(),
        };
        if let Some(v) = &e.ignore {
            let list = |key: &str| -> Vec<String> {
                v.get(key)
                    .and_then(|l| l.as_sequence())
                    .map(|l| {
                        l.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            ignore.media_types.extend(list("mediatypes"));
            ignore.actions = list("actions");
        }
        let max_age = match &e.maxage {
            None => Some(notify::DEFAULT_MAX_AGE),
            Some(s) => {
                let d = parse_duration(s).map_err(|e| format!("{}: {e}", at("maxage")))?;
                (!d.is_zero()).then_some(d)
            }
        };
        endpoints.push(EndpointConfig {
            name,
            url,
            headers,
            timeout: duration(&at("timeout"), e.timeout.as_ref(), notify::DEFAULT_TIMEOUT)?,
            threshold: e
                .threshold
                .filter(|t| *t > 0)
                .map_or(notify::DEFAULT_THRESHOLD, |t| {
                    u32::try_from(t).unwrap_or(u32::MAX)
                }),
            backoff: duration(&at("backoff"), e.backoff.as_ref(), notify::DEFAULT_BACKOFF)?,
            ignore,
            max_pending: e
                .maxpending
                .filter(|m| *m > 0)
                .unwrap_or(notify::DEFAULT_MAX_PENDING),
            max_age,
            unhealthy_after: duration(
                &at("unhealthyafter"),
                e.unhealthyafter.as_ref(),
                notify::DEFAULT_UNHEALTHY_AFTER,
            )?,
            max_batch: e
                .maxbatch
                .filter(|b| *b > 0)
                .map_or(notify::DEFAULT_MAX_BATCH, |b| {
                    usize::try_from(b).unwrap_or(usize::MAX)
                }),
        });
    }
    if endpoints.is_empty() {
        return Ok(None);
    }
    let orphan_after = duration(
        "notifications.queue.orphanafter",
        n.queue.as_ref().and_then(|q| q.orphanafter.as_ref()),
        notify::DEFAULT_ORPHAN_AFTER,
    )?;
    Ok(Some(notify::NotifyConfig {
        endpoints,
        include_references: n.events.as_ref().is_some_and(|e| e.includereferences),
        source_addr: notify::source_addr(&cfg.http.addr),
        orphan_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::redis_options;
    use crate::config::schema::Redis;
    use berth_registry::cache::RedisTopology;
    use std::time::Duration;

    fn redis(yaml: &str) -> Redis {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn topology_is_chosen_as_go_redis_does() {
        let o = redis_options(&redis("addr: r:6379")).unwrap();
        assert!(matches!(o.topology, RedisTopology::Single(a) if a == "r:6379"));
        let o = redis_options(&redis("addrs: [a:1, b:2, c:3]")).unwrap();
        assert!(matches!(o.topology, RedisTopology::Cluster(n) if n.len() == 3));
        let o = redis_options(&redis("addrs: [s1:26379, s2:26379]\nmastername: mm")).unwrap();
        assert!(
            matches!(o.topology, RedisTopology::Sentinel { master, sentinels } if master == "mm" && sentinels.len() == 2)
        );
        // One sentinel is still Sentinel.
        let o = redis_options(&redis("addrs: [s1:26379]\nmastername: mm")).unwrap();
        assert!(matches!(o.topology, RedisTopology::Sentinel { .. }));
        // 2.x's addr beside 3.x's addrs: addrs, never both (that would be a cluster).
        let o = redis_options(&redis("addr: old:6379\naddrs: [new:6379]")).unwrap();
        assert!(matches!(o.topology, RedisTopology::Single(a) if a == "new:6379"));
        assert!(redis_options(&redis("db: 1")).is_err());
    }

    #[test]
    fn durations_retries_and_pools_read_as_go_redis_does() {
        let o = redis_options(&redis("addr: r:6379")).unwrap();
        assert_eq!(o.dial_timeout, Duration::from_millis(500));
        assert_eq!(o.timeout, Duration::from_secs(1));
        assert_eq!(o.retries, 3);
        assert_eq!(o.min_retry_backoff, Duration::from_millis(8));
        assert_eq!(o.max_retry_backoff, Duration::from_millis(512));
        assert_eq!(o.conn_max_idle, None);
        assert_eq!(o.identity.as_deref(), Some("berth"));

        let o = redis_options(&redis(
            "addr: r:6379\ndialtimeout: 2s\nreadtimeout: 100ms\nwritetimeout: 50ms\nmaxretries: -1\nminretrybackoff: '-1'\npool: {idletimeout: 300s}\nconnmaxlifetime: 1h\nidentitysuffix: x\nprotocol: 3\nclientname: reg",
        ))
        .unwrap();
        assert_eq!(o.dial_timeout, Duration::from_secs(2));
        assert_eq!(o.timeout, Duration::from_millis(150));
        assert_eq!(o.retries, 0);
        assert_eq!(o.min_retry_backoff, Duration::ZERO);
        assert_eq!(o.conn_max_idle, Some(Duration::from_secs(300)));
        assert_eq!(o.conn_max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(o.identity.as_deref(), Some("berth(x)"));
        assert!(o.resp3);
        assert_eq!(o.client_name.as_deref(), Some("reg"));

        // The 3.x key wins over 2.x's pool; a negative lifetime is no limit.
        let o = redis_options(&redis(
            "addr: r:6379\nconnmaxidletime: 1m\nconnmaxlifetime: '-1'\npool: {idletimeout: 300s}\ndisableidentity: true",
        ))
        .unwrap();
        assert_eq!(o.conn_max_idle, Some(Duration::from_secs(60)));
        assert_eq!(o.conn_max_lifetime, None);
        assert_eq!(o.identity, None);

        // A cluster counts redirections among its retries.
        let o = redis_options(&redis("addrs: [a:1, b:2]\nmaxretries: 1\nmaxredirects: 8")).unwrap();
        assert_eq!(o.retries, 8);
    }

    #[test]
    fn tls_files_are_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let o = redis_options(&redis(&format!(
            "addr: r:6379\ntls: {{rootcas: [{}]}}",
            ca.display()
        )))
        .unwrap();
        let tls = o.tls.unwrap();
        assert!(tls.client.is_none() && tls.root_cas.is_some());
        // 3.0's enabled: TLS with the system's CAs.
        let o = redis_options(&redis("addr: r:6379\ntls: {enabled: true}")).unwrap();
        assert!(o.tls.is_some_and(|t| t.root_cas.is_none()));
        assert!(redis_options(&redis("addr: r:6379\ntls: {enabled: false}"))
            .unwrap()
            .tls
            .is_none());
        let e = redis_options(&redis(
            "addr: r:6379\ntls: {rootcas: [/nonexistent/ca.pem]}",
        ))
        .err()
        .unwrap();
        assert!(e.contains("redis.tls.rootcas /nonexistent/ca.pem"), "{e}");
    }

    /// Every redis key of distribution 2.8 and 3.x is known; the few that cannot be honoured
    /// are one WARN each.
    #[test]
    fn every_key_is_known_and_only_cluster_limits_warn() {
        let all = "version: 0.1
storage:
  filesystem: {rootdirectory: /tmp/x}
  cache: {blobdescriptor: redis}
redis:
  addr: r:6379
  addrs: [a:1, b:2, c:3]
  clientname: reg
  username: u
  password: p
  sentinelusername: su
  sentinelpassword: sp
  db: 2
  protocol: 3
  maxretries: 3
  minretrybackoff: 8ms
  maxretrybackoff: 512ms
  dialtimeout: 5s
  readtimeout: 3s
  writetimeout: 3s
  contexttimeoutenabled: true
  poolfifo: true
  poolsize: 10
  pooltimeout: 4s
  minidleconns: 1
  maxidleconns: 5
  maxactiveconns: 20
  connmaxidletime: 30m
  connmaxlifetime: 1h
  maxredirects: 3
  readonly: true
  routebylatency: true
  routerandomly: false
  mastername: ''
  disableidentity: false
  identitysuffix: s
  unstableresp3: false
  tls:
    enabled: true
    certificate: /c.pem
    key: /k.pem
    rootcas: [/ca.pem]
    clientcas: [/ca2.pem]
  pool:
    maxidle: 16
    maxactive: 64
    idletimeout: 300s
";
        let l = crate::config::parse(all, "config.yml", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let redis: Vec<_> = l
            .unsupported
            .iter()
            .filter(|u| u.starts_with("redis"))
            .collect();
        assert_eq!(redis.len(), 2, "{redis:?}");
        assert!(redis[0].starts_with("redis.db") && redis[1].starts_with("redis.routebylatency"));
        let y = l.config.redacted_yaml();
        assert!(!y.contains("sp\n") && !y.contains(": p\n"), "{y}");
        // With a master name the addresses are sentinels: db applies, nothing to warn.
        let sentinel = all.replace("mastername: ''", "mastername: mm");
        let l =
            crate::config::parse(&sentinel, "config.yml", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !l.unsupported.iter().any(|u| u.starts_with("redis")),
            "{:?}",
            l.unsupported
        );
    }
}
