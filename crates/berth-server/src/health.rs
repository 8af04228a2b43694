//! Health: distribution's periodic checks (`health` section: `storagedriver`, `file`, `http`,
//! `tcp`), a Redis check when Redis is the blob-descriptor cache, and what is built on them:
//!
//! - **The API gate** (as distribution's `health.Handler`): while a storage, file, HTTP or TCP
//!   check fails (`threshold` failures in a row), every request on the registry listener —
//!   `/v2/…`, `GET /`, the token endpoint — answers `503` with distribution's body (`UNAVAILABLE`,
//!   "health check failed: please see /debug/health"); the first passing run opens it again.
//!   Operators use a `file` check as a maintenance switch and rely on exactly this.
//! - `/debug/health` (debug listener, as distribution): `200 {}` when every check passes, else
//!   `503` with `{"<check>": "<error>"}`.
//! - `/livez` (both listeners): the process answers. No dependency is checked, so a storage
//!   outage never makes Kubernetes restart every replica at once.
//! - `/readyz` (both listeners): `503` while draining after SIGTERM, or while a gating check
//!   fails. `/livez` and `/readyz` are Berth's and answer before the gate.
//!
//! Redis is reported but gates nothing: without it Berth still serves everything from
//! storage, and failing every replica at once would turn a degraded cache into an outage.
//! Checks run once at start and then every `interval` (distribution waits one interval
//! before the first run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};

use crate::config::schema::Health as HealthConfig;
use crate::config::{parse_duration, Config};

/// distribution's default check interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a check probes.
enum Probe {
    Storage(Arc<dyn berth_storage::StorageDriver>),
    File(String),
    Http {
        client: reqwest::Client,
        uri: String,
        headers: Vec<(String, String)>,
        status: u16,
    },
    Tcp {
        addr: String,
        timeout: Duration,
    },
    Redis(Arc<dyn berth_registry::cache::DescriptorCache>),
}

struct Check {
    name: String,
    probe: Probe,
    interval: Duration,
    /// Consecutive failures before the check counts as failing (at least 1).
    threshold: u32,
    /// Whether a failure closes the API and fails `/readyz`.
    gates: bool,
    /// `(consecutive failures, last error)`.
    state: Mutex<(u32, Option<String>)>,
    /// Failing now (`threshold` reached); read by every request, hence an atomic.
    down: AtomicBool,
}

impl Check {
    async fn run(&self) -> Result<(), String> {
        match &self.probe {
            Probe::Storage(d) => match d.stat(berth_registry::paths::ROOT).await {
                Ok(_) => Ok(()),
                // A fresh registry has no root yet; that is healthy (as distribution).
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            // distribution's wording: the check's name is the path already.
            Probe::File(path) => match tokio::fs::metadata(path).await {
                Ok(_) => Err("file exists".to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("{path}: {e}")),
            },
            Probe::Http {
                client,
                uri,
                headers,
                status,
            } => {
                // A HEAD, as distribution's check sends.
                let mut req = client.head(uri);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                match req.send().await {
                    Ok(r) if r.status().as_u16() == *status => Ok(()),
                    Ok(r) => Err(format!(
                        "{uri}: downstream service returned unexpected status: {} (want {status})",
                        r.status().as_u16()
                    )),
                    Err(e) => Err(format!("{uri}: error while checking: {e}")),
                }
            }
            Probe::Tcp { addr, timeout } => {
                match tokio::time::timeout(*timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("{addr}: connection failed: {e}")),
                    Err(_) => Err(format!(
                        "{addr}: connection failed: no connection within {timeout:?}"
                    )),
                }
            }
            Probe::Redis(cache) => cache.ping().await,
        }
    }

    fn record(&self, result: Result<(), String>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if st.0 >= self.threshold {
                    tracing::info!(check = %self.name, "health check passes again");
                }
                *st = (0, None);
                self.down.store(false, Ordering::SeqCst);
            }
            Err(e) => {
                st.0 = st.0.saturating_add(1);
                if st.0 == self.threshold {
                    if self.gates {
                        tracing::warn!(check = %self.name, "health check failing: {e}; the API answers 503 until it passes");
                    } else {
                        tracing::warn!(check = %self.name, "health check failing: {e}");
                    }
                }
                if st.0 >= self.threshold {
                    self.down.store(true, Ordering::SeqCst);
                }
                st.1 = Some(e);
            }
        }
    }

    /// The error, when the check is failing.
    fn failing(&self) -> Option<String> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.0 >= self.threshold).then(|| st.1.clone().unwrap_or_default())
    }
}

/// The configured checks and their last results.
#[derive(Default)]
pub struct Health {
    checks: Vec<Arc<Check>>,
}

impl Health {
    /// The checks `cfg` asks for, over the registry's driver and cache. Nothing runs until
    /// [`Health::start`].
    pub fn from_config(
        cfg: &Config,
        driver: Arc<dyn berth_storage::StorageDriver>,
        cache: Arc<dyn berth_registry::cache::DescriptorCache>,
    ) -> Result<Health, String> {
        let mut checks = Vec::new();
        let dur = |v: &Option<String>, default: Duration| -> Result<Duration, String> {
            match v {
                Some(s) => parse_duration(s).map(|d| if d.is_zero() { default } else { d }),
                None => Ok(default),
            }
        };
        let mut add = |name: String, probe: Probe, interval, threshold: Option<u32>, gates| {
            checks.push(Arc::new(Check {
                name,
                probe,
                interval,
                threshold: threshold.unwrap_or(1).max(1),
                gates,
                state: Mutex::new((0, None)),
                down: AtomicBool::new(false),
            }))
        };
        let h: HealthConfig = cfg.health.clone().unwrap_or_default();
        if let Some(sd) = h.storagedriver.as_ref().filter(|s| s.enabled) {
            add(
                format!("storagedriver_{}", driver.name()),
                Probe::Storage(driver.clone()),
                dur(&sd.interval, DEFAULT_INTERVAL)?,
                sd.threshold,
                true,
            );
        }
        for f in h.file.iter().flatten() {
            add(
                f.file.clone(),
                Probe::File(f.file.clone()),
                dur(&f.interval, DEFAULT_INTERVAL)?,
                None,
                true,
            );
        }
        for c in h.http.iter().flatten() {
            let timeout = dur(&c.timeout, DEFAULT_TIMEOUT)?;
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| format!("health.http {}: {e}", c.uri))?;
            let headers = c
                .headers
                .iter()
                .flatten()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
                .collect();
            add(
                c.uri.clone(),
                Probe::Http {
                    client,
                    uri: c.uri.clone(),
                    headers,
                    status: c.statuscode.unwrap_or(200),
                },
                dur(&c.interval, DEFAULT_INTERVAL)?,
                c.threshold,
                true,
            );
        }
        for t in h.tcp.iter().flatten() {
            add(
                t.addr.clone(),
                Probe::Tcp {
                    addr: t.addr.clone(),
                    timeout: dur(&t.timeout, DEFAULT_TIMEOUT)?,
                },
                dur(&t.interval, DEFAULT_INTERVAL)?,
                t.threshold,
                true,
            );
        }
        if cfg.redis.is_some()
            && cfg
                .storage
                .cache
                .as_ref()
                .and_then(|c| c.blobdescriptor.as_deref())
                == Some("redis")
        {
            add(
                "redis".to_owned(),
                Probe::Redis(cache),
                DEFAULT_INTERVAL,
                None,
                false,
            );
        }
        Ok(Health { checks })
    }

    /// Runs each check now and then every interval, in background tasks that end with the
    /// runtime.
    pub fn start(&self) {
        for check in &self.checks {
            let check = check.clone();
            tokio::spawn(async move {
                loop {
                    let result = check.run().await;
                    check.record(result);
                    tokio::time::sleep(check.interval).await;
                }
            });
        }
    }

    /// Whether a gating check fails: the API answers 503 (see [`unavailable`]).
    pub fn gate_closed(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.gates && c.down.load(Ordering::SeqCst))
    }

    /// `(check, error)` of every failing check.
    pub fn failing(&self, gating_only: bool) -> Vec<(String, String)> {
        self.checks
            .iter()
            .filter(|c| c.gates || !gating_only)
            .filter_map(|c| c.failing().map(|e| (c.name.clone(), e)))
            .collect()
    }
}

fn text(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// distribution's answer while a health check fails (its `health.Handler`).
pub fn unavailable() -> Response {
    // Byte for byte distribution's body (its field order; Go's encoder ends with a newline).
    const BODY: &str = "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"service unavailable\",\"detail\":\"health check failed: please see /debug/health\"}]}\n";
    let mut r = Response::new(Body::from(BODY));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut()
        .insert(crate::error::LoggedCode("UNAVAILABLE"));
    r
}

/// `/livez`.
pub fn livez() -> Response {
    text(StatusCode::OK, "ok\n".to_owned())
}

/// Storage that stopped answering (a call timed out or could not connect, and none has been
/// answered since): not ready, so a load balancer routes around this replica. While it lasts,
/// each probe also sends one cheap call (at most one at a time), so readiness comes back on
/// its own when storage does, even with no traffic routed here.
fn storage_stalled(state: &crate::AppState) -> Option<(String, String)> {
    use std::sync::atomic::AtomicBool;
    static PROBING: AtomicBool = AtomicBool::new(false);
    let stats = state.metrics.storage()?;
    let (since, why) = stats.unavailable()?;
    if !PROBING.swap(true, Ordering::SeqCst) {
        let driver = state.registry.driver().clone();
        tokio::spawn(async move {
            let _ = driver.stat("/docker/registry/v2").await;
            PROBING.store(false, Ordering::SeqCst);
        });
    }
    Some((
        "storage".to_owned(),
        format!("not answering for {}s: {why}", since.as_secs()),
    ))
}

/// `/readyz`.
pub fn readyz(state: &crate::AppState) -> Response {
    if state.lifecycle.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_owned(),
        );
    }
    let mut failing = state.health.failing(true);
    failing.extend(storage_stalled(state));
    if failing.is_empty() {
        return text(StatusCode::OK, "ok\n".to_owned());
    }
    let mut body = String::from("not ready:\n");
    for (name, e) in failing {
        body.push_str(&format!("{name}: {e}\n"));
    }
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// `/debug/health`, distribution's format.
pub fn debug_health(state: &crate::AppState) -> Response {
    let mut failing = state.health.failing(false);
    failing.extend(storage_stalled(state));
    // A failing webhook endpoint shows here once it has failed for its `unhealthyafter`; it
    // never closes the API gate or `/readyz` (the registry itself is fine).
    if let Some(n) = &state.notifier {
        failing.extend(n.unhealthy());
    }
    let body: serde_json::Map<String, serde_json::Value> = failing
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let status = if body.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = Response::new(Body::from(serde_json::Value::Object(body).to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}
