//! `berth serve`: configuration → logging → storage → TLS → listener →
//! `berth_server::listen::serve`, until SIGTERM/SIGINT and the drain.

use std::process::ExitCode;

use anyhow::Context;
use berth_server::config::{self, Config, StorageDriver};
use berth_server::setup::{self, DriverChoice};
use berth_server::ServerOptions;

pub fn serve(path: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let loaded = match config::load(path, std::env::vars()) {
        Ok(l) => l,
        Err(e) => {
            crate::print_problems(&e);
            return Ok(ExitCode::FAILURE);
        }
    };
    let exporter = match crate::logging::init(&loaded.config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("berth: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    tracing::info!(source = %loaded.source, "configuration loaded");
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    for u in &loaded.unknown {
        tracing::warn!("{u}");
    }
    for u in &loaded.unsupported {
        tracing::warn!("not supported yet, ignored: {u}");
    }

    let cfg = &loaded.config;
    let driver = match cfg.storage.driver() {
        StorageDriver::Filesystem(fs) => {
            let root = std::path::absolute(&fs.rootdirectory)
                .unwrap_or_else(|_| fs.rootdirectory.clone().into());
            tracing::info!(driver = "filesystem", root = %root.display(), "storing data in {}", root.display());
            let driver =
                berth_storage::FilesystemDriver::new(root).inline_io(fs.inlineio.unwrap_or(true));
            // A read-only registry writes nothing, not even a clean-up.
            if !cfg.storage.maintenance.readonly.enabled {
                clean_temporaries(&driver);
            }
            Chosen::Local(DriverChoice::Filesystem(driver))
        }
        StorageDriver::InMemory => {
            tracing::info!(
                driver = "inmemory",
                "storing data in memory: it is lost when the process exits"
            );
            Chosen::Local(DriverChoice::InMemory)
        }
        StorageDriver::S3(s3) => {
            tracing::info!(
                driver = "s3",
                bucket = s3.bucket.as_deref().unwrap_or(""),
                endpoint = s3.regionendpoint.as_deref().unwrap_or("AWS"),
                root = s3.rootdirectory.as_deref().unwrap_or("/"),
                "storing data in S3"
            );
            Chosen::S3(Box::new(setup::s3_config(
                &s3,
                !cfg.storage.redirect.disable,
            )))
        }
    };
    let tls = match cfg
        .http
        .tls
        .as_ref()
        .filter(|t| berth_server::tls::enabled(t))
    {
        Some(t) => {
            let http2 = !cfg.http.http2.as_ref().is_some_and(|h| h.disabled);
            Some(berth_server::tls::Tls::load(t, http2).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let drain_timeout = match cfg.http.draintimeout.as_deref() {
        // Checked with the rest of the configuration.
        Some(d) => config::parse_duration(d).map_err(anyhow::Error::msg)?,
        None => berth_server::listen::DEFAULT_DRAIN_TIMEOUT,
    };
    let server = ServerOptions {
        relative_urls: cfg.http.relativeurls,
        external_url: cfg.http.host.clone().filter(|h| !h.is_empty()),
        catalog_max_entries: cfg.catalog.max_entries(),
        tags_max_entries: cfg.tags.max_tags(),
        prefix: cfg.http.prefix_path(),
        read_only: cfg.storage.maintenance.readonly.enabled,
        access_log: !cfg.log.accesslog.disabled,
        extra_headers: extra_headers(cfg)?,
        https: tls.is_some(),
        limits: berth_server::Limits::from_config(cfg),
        manifest_classes: cfg
            .manifest_classes()
            .map_err(|e| anyhow::anyhow!("policy.repository.classes: {e}"))?,
    };
    let registry = berth_registry::Options {
        delete_enabled: cfg.storage.delete.enabled,
        touch_interval: berth_server::maintenance::touch_interval(cfg)
            .map_err(anyhow::Error::msg)?,
    };
    let purging = berth_server::maintenance::upload_purging(cfg).map_err(anyhow::Error::msg)?;
    let addr = listen_addr(&cfg.http.addr);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Taken before any task runs: reading the socket clears systemd's variables.
    let activated = {
        let _runtime = rt.enter();
        berth_server::listen::Listener::from_systemd()
            .context("taking the socket systemd passed")?
    };
    let result = rt.block_on(async move {
        let mut state = match driver {
            Chosen::S3(s3) => setup::s3_state(*s3, registry, server)
                .await
                .map_err(anyhow::Error::msg)?,
            Chosen::Local(local) => setup::state(local, registry, server),
        };
        let cache = setup::cache(cfg).map_err(anyhow::Error::msg)?;
        state.registry = state
            .registry
            .clone()
            .with_cache(cache)
            .with_manifest_rules(
                config::validation::startup_rules(&cfg.validation).map_err(anyhow::Error::msg)?,
            );
        if let Some(chain) =
            berth_server::storage_middleware::chain(cfg).map_err(anyhow::Error::msg)?
        {
            state.registry = state.registry.clone().with_redirect(chain);
        }
        state.proxy = setup::proxy(cfg, &state.registry)
            .await
            .map_err(anyhow::Error::msg)?;
        let purger = purging
            .map(|p| berth_server::maintenance::start_upload_purger(state.registry.clone(), p));
        let auth = setup::auth(cfg).await.map_err(|e| anyhow::anyhow!(e))?;
        state.auth = std::sync::Arc::new(auth);
        let health = berth_server::health::Health::from_config(
            cfg,
            state.registry.driver().clone(),
            state.registry.cache().clone(),
        )
        .map_err(anyhow::Error::msg)?;
        health.start();
        state.health = std::sync::Arc::new(health);
        if let Some(n) = setup::notify_config(cfg).map_err(anyhow::Error::msg)? {
            state.notifier = berth_server::notify::Notifier::start(n, state.registry.driver().clone())
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let notifier = state.notifier.clone();
        let debug = start_debug_listener(cfg, &state).await?;
        let listener: berth_server::listen::Listener = if let Some(l) = activated {
            tracing::info!("using systemd socket activation instead of http.addr");
            l
        } else if cfg.http.unix() {
            berth_server::listen::Listener::bind_unix(std::path::Path::new(&cfg.http.addr))
                .with_context(|| format!("binding the Unix socket {}", cfg.http.addr))?
        } else {
            tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding the listener on {addr}"))?
                .into()
        };
        if let (Some(n), Some(port)) = (&notifier, listener.port()) {
            // Events name the port actually bound (`http.addr: :0` names none).
            n.set_source_addr(berth_server::notify::source_addr(&format!(":{port}")));
        }
        let listen = berth_server::listen::ListenOptions {
            tls: tls.map(berth_server::tls::Tls::watch),
            h2c: cfg.http.h2c.as_ref().is_some_and(|h| h.enabled),
            drain_timeout,
        };
        let scheme = if listen.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("listening on {}", listener.describe(scheme));
        if let Some(p) = cfg.http.prefix.as_deref().filter(|p| !p.is_empty() && !p.starts_with('/')) {
            tracing::warn!("http.prefix {p:?} does not start with /: serving the API below {}/v2/ (distribution would answer 404 to every request)", cfg.http.prefix_path());
        }
        // The debug listener stays up through the drain, so its /readyz shows it.
        berth_server::listen::serve(listener, state, listen, shutdown_signal())
            .await
            .context("serving")?;
        if let Some(n) = notifier {
            // Every answered write's events are journaled already; this flushes the pulls and
            // hands the queue over to the next process.
            n.shutdown(std::time::Duration::from_secs(10)).await;
        }
        if let Some(d) = debug {
            d.abort();
        }
        if let Some(p) = purger {
            p.abort();
        }
        tracing::info!("shut down");
        if let Some(e) = exporter {
            // Flushing may wait for the collector: off the async threads.
            let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
        }
        Ok(ExitCode::SUCCESS)
    });
    // Connections the drain gave up on were aborted; do not wait on stray blocking work.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// `http.headers`: extra headers for every response.
fn extra_headers(cfg: &Config) -> anyhow::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (name, values) in cfg.http.headers.iter().flatten() {
        let n = http::HeaderName::try_from(name.as_str())
            .with_context(|| format!("http.headers: {name:?} is not a header name"))?;
        for v in values {
            let v = http::HeaderValue::try_from(v.as_str())
                .with_context(|| format!("http.headers.{name}: invalid value"))?;
            map.append(n.clone(), v);
        }
    }
    Ok(map)
}

/// The debug listener (`http.debug.addr`): health, liveness, readiness and, when enabled,
/// the Prometheus metrics. Plain HTTP: bind it to an address only the cluster reaches.
async fn start_debug_listener(
    cfg: &Config,
    state: &berth_server::AppState,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(debug) = &cfg.http.debug else {
        return Ok(None);
    };
    let Some(addr) = debug.addr.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let addr = listen_addr(addr);
    let metrics_path = debug
        .prometheus
        .as_ref()
        .filter(|p| p.enabled)
        .map(|p| p.path.clone().unwrap_or_else(|| "/metrics".to_owned()));
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding the debug listener on {addr}"))?;
    let local = listener.local_addr().context("reading the debug address")?;
    tracing::info!(
        metrics = metrics_path.as_deref(),
        "debug listener on http://{local} (/debug/health, /livez, /readyz)"
    );
    let app = berth_server::debug_app(state.clone(), metrics_path);
    let limits = state.options.limits.clone();
    Ok(Some(tokio::spawn(berth_server::listen::serve_plain(
        listener, app, limits,
    ))))
}

/// The storage driver the configuration chose.
enum Chosen {
    Local(DriverChoice),
    S3(Box<berth_server::setup::S3Config>),
}

/// distribution accepts `:5000` for "all interfaces"; Rust's parser wants a host.
fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// Removes what crashed processes left in the filesystem driver's scratch directory (now) and
/// the `.berth-tmp-*` leftovers of older Berth inside the layout (in the background, once per
/// root: it walks the whole tree). Failures are warnings: leftovers are hidden from listings.
fn clean_temporaries(driver: &berth_storage::FilesystemDriver) {
    match driver.clean_scratch() {
        Ok(c) if c.removed > 0 => tracing::info!(
            removed = c.removed,
            "removed the temporaries of processes that stopped without cleaning up"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not clean the storage's scratch directory"),
    }
    let driver = driver.clone();
    let spawned = std::thread::Builder::new()
        .name("legacy-tmp-sweep".into())
        .spawn(move || {
            // Younger ones may belong to an older replica still writing on this root.
            match driver.sweep_legacy_temporaries(std::time::Duration::from_secs(15 * 60)) {
                Ok(c) if c.removed + c.kept > 0 => tracing::info!(
                    removed = c.removed,
                    kept_for_now = c.kept,
                    "temporaries of an older Berth inside the layout"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweeping an older Berth's temporaries"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the sweep of an older Berth's temporaries");
    }
}
