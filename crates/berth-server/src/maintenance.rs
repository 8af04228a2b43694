//! Background maintenance of `berth serve` and the settings the garbage collector shares with
//! it: upload purging (`storage.maintenance.uploadpurging`, distribution's defaults: enabled,
//! age 168h, interval 24h) and the touch interval (`storage.maintenance.gc.touchinterval`).

use std::time::Duration;

use berth_registry::Registry;

use crate::config::{parse_duration, Config};

/// What upload purging does, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeSettings {
    /// Sessions whose last write is older than this are purged.
    pub age: Duration,
    /// Time between passes.
    pub interval: Duration,
    pub dry_run: bool,
}

/// `storage.maintenance.uploadpurging`: `None` when disabled (or the registry is read-only,
/// where nothing may be deleted).
pub fn upload_purging(cfg: &Config) -> Result<Option<PurgeSettings>, String> {
    let u = cfg
        .storage
        .maintenance
        .uploadpurging
        .clone()
        .unwrap_or_default();
    if !u.enabled || cfg.storage.maintenance.readonly.enabled {
        return Ok(None);
    }
    let get = |v: &Option<String>, default: u64| match v {
        Some(s) => parse_duration(s),
        None => Ok(Duration::from_secs(default)),
    };
    let settings = PurgeSettings {
        age: get(&u.age, 168 * 3600)?,
        interval: get(&u.interval, 24 * 3600)?,
        dry_run: u.dryrun,
    };
    if settings.interval.is_zero() {
        return Err("storage.maintenance.uploadpurging.interval must be greater than 0".into());
    }
    Ok(Some(settings))
}

/// `storage.maintenance.gc.touchinterval` (default 5m; `0` turns touching off). `None` when
/// content is never touched: touching is off, or the registry is read-only (no pushes, so
/// nothing to protect, and storage may well be mounted read-only).
pub fn touch_interval(cfg: &Config) -> Result<Option<Duration>, String> {
    if cfg.storage.maintenance.readonly.enabled {
        return Ok(None);
    }
    configured_touch_interval(cfg)
}

/// The touch interval the configuration asks for, read-only or not.
pub fn configured_touch_interval(cfg: &Config) -> Result<Option<Duration>, String> {
    let ti = match cfg
        .storage
        .maintenance
        .gc
        .as_ref()
        .and_then(|g| g.touchinterval.as_deref())
    {
        Some(s) => parse_duration(s)?,
        None => berth_registry::gc::DEFAULT_TOUCH_INTERVAL,
    };
    Ok((!ti.is_zero()).then_some(ti))
}

/// Starts the upload purger: a first pass after a random delay below `min(interval, 1h)` (so
/// replicas started together do not all purge at once), then one pass per interval. Each pass
/// logs one INFO line; a failed pass logs an ERROR and the next one tries again.
pub fn start_upload_purger(registry: Registry, s: PurgeSettings) -> tokio::task::JoinHandle<()> {
    let cap = s.interval.min(Duration::from_secs(3600));
    let jitter = cap.mul_f64(f64::from(uuid::Uuid::new_v4().as_u128() as u16) / 65536.0);
    tracing::info!(
        age = %humantime(s.age),
        interval = %humantime(s.interval),
        dryrun = s.dry_run,
        "upload purging: first pass in {}",
        humantime(jitter)
    );
    tokio::spawn(async move {
        tokio::time::sleep(jitter).await;
        loop {
            let started = std::time::Instant::now();
            match registry.purge_uploads(s.age, s.dry_run).await {
                Ok(r) => tracing::info!(
                    sessions = r.sessions,
                    purged = r.purged,
                    bytes = r.bytes,
                    errors = r.errors,
                    dryrun = s.dry_run,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "upload purging: {} {} of {} upload sessions idle for more than {} ({} bytes)",
                    if s.dry_run { "would purge" } else { "purged" },
                    r.purged,
                    r.sessions,
                    humantime(s.age),
                    r.bytes
                ),
                Err(e) => tracing::error!("upload purging failed: {e}"),
            }
            tokio::time::sleep(s.interval).await;
        }
    })
}

/// `1h30m0s`-ish, for log lines.
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}
