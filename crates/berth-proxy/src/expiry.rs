//! Expiry of cached content (`proxy.ttl`), as distribution's scheduler
//! (`registry/proxy/scheduler`) does it: every blob or manifest the cache stores from upstream
//! is scheduled for removal `ttl` after it was stored; storing it again moves the date.
//!
//! The schedule lives in storage at distribution's path and in its format,
//! `/scheduler-state.json` beside `docker/` (`{"<name>@<digest>": {"Key": …, "ExpiryData":
//! <RFC 3339>, "EntryType": 0 blob | 1 manifest}}`), so a data directory or bucket moves
//! between distribution and Berth with its schedule, and a restart keeps it. distribution
//! writes its whole map every 5 s, so replicas sharing storage overwrite each other's entries;
//! Berth merges instead: each save reads the file, adopts entries it does not know (the later
//! date wins) and writes the union, and each process re-reads the file every minute. Every
//! replica then expires every entry; removing what is gone is no error. An entry this process
//! expired is remembered for an hour so that a stale copy in the file is not adopted again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_core::{Digest, RepoName};
use berth_registry::{Registry, RegistryError};
use bytes::Bytes;
use tokio::sync::Notify;

/// distribution's path (its driver-relative `/scheduler-state.json`).
pub const STATE_PATH: &str = "/scheduler-state.json";
/// A change is written within this long.
const SAVE_AFTER: Duration = Duration::from_secs(1);
/// Entries other replicas wrote are adopted within this long.
const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// An entry whose removal failed on storage is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long an expired entry is remembered (see the module comment).
const REMEMBER_DONE: Duration = Duration::from_secs(3600);

/// What an entry removes (distribution's `EntryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    fn code(self) -> i64 {
        match self {
            Kind::Blob => 0,
            Kind::Manifest => 1,
        }
    }

    fn from_code(c: i64) -> Option<Kind> {
        match c {
            0 => Some(Kind::Blob),
            1 => Some(Kind::Manifest),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    /// Scheduled: key (`name@digest`) → when, what.
    live: HashMap<String, (SystemTime, Kind)>,
    /// Expired here: key → the date it had.
    done: HashMap<String, SystemTime>,
    /// `live` changed since the last save.
    dirty: bool,
}

/// The expiry schedule of the pull-through cache.
pub struct Expiry {
    registry: Registry,
    /// Whether an expired blob's content goes too (distribution's proxy mode, where every
    /// repository is a cache); otherwise only the repository's link, and garbage collection
    /// removes content that nothing links any more.
    remove_blob_data: bool,
    state: Mutex<State>,
    wake: Notify,
}

impl Expiry {
    /// Reads the saved schedule and starts expiring. An unreadable state file is an error,
    /// as in distribution (which does not start): its entries would otherwise never expire.
    pub async fn start(registry: Registry, remove_blob_data: bool) -> Result<Arc<Expiry>, String> {
        let expiry = Arc::new(Expiry {
            registry,
            remove_blob_data,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        let saved = expiry.read_file().await.map_err(|e| {
            format!("proxy: the cache's expiry schedule {STATE_PATH} in storage: {e}; hint: fix or delete it (its entries then never expire)")
        })?;
        let n = saved.len();
        expiry.lock().live = saved;
        tracing::info!(
            entries = n,
            remove_blob_data,
            "proxy cache expiry scheduler started"
        );
        tokio::spawn(expiry.clone().run());
        Ok(expiry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schedules the removal of what `name` caches under `digest`, `ttl` from now.
    pub fn schedule(&self, name: &RepoName, digest: &Digest, kind: Kind, ttl: Duration) {
        let key = format!("{name}@{digest}");
        let when = SystemTime::now() + ttl;
        tracing::debug!(%key, ttl_s = ttl.as_secs(), "cache entry scheduled for expiry");
        let mut st = self.lock();
        st.live.insert(key, (when, kind));
        // Only the first change since the last save wakes the loop: while the state is dirty
        // it wakes within `SAVE_AFTER` anyway and then sees every new date (no scan of the
        // whole schedule per cached item on a busy mirror).
        let was_dirty = std::mem::replace(&mut st.dirty, true);
        drop(st);
        if !was_dirty {
            self.wake.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut last_sync = tokio::time::Instant::now();
        loop {
            let (next, dirty) = {
                let st = self.lock();
                (st.live.values().map(|(t, _)| *t).min(), st.dirty)
            };
            let sync_at = last_sync + if dirty { SAVE_AFTER } else { RELOAD_EVERY };
            let due_in = next
                .map(|t| {
                    t.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(RELOAD_EVERY);
            let wake_at = sync_at.min(tokio::time::Instant::now() + due_in);
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.wake.notified() => continue,
            }
            if next.is_some_and(|t| t <= SystemTime::now()) {
                self.expire_due().await;
            }
            let dirty = self.lock().dirty;
            if tokio::time::Instant::now()
                >= last_sync + if dirty { SAVE_AFTER } else { RELOAD_EVERY }
            {
                if let Err(e) = self.sync().await {
                    tracing::warn!("proxy cache expiry: saving {STATE_PATH}: {e}; trying again");
                }
                last_sync = tokio::time::Instant::now();
            }
        }
    }

    /// Removes everything whose time has come.
    async fn expire_due(&self) {
        let now = SystemTime::now();
        let due: Vec<(String, SystemTime, Kind)> = self
            .lock()
            .live
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(k, (t, kind))| (k.clone(), *t, *kind))
            .collect();
        for (key, when, kind) in due {
            let outcome = self.remove(&key, kind).await;
            let mut st = self.lock();
            // Scheduled again meanwhile (cached anew): keep the new date.
            if st.live.get(&key).is_some_and(|(t, _)| *t != when) {
                continue;
            }
            match outcome {
                Err(RegistryError::Storage(e)) => {
                    tracing::warn!(%key, "proxy cache expiry failed: {e}; trying again later");
                    st.live.insert(key, (now + RETRY_AFTER, kind));
                }
                other => {
                    if let Err(e) = other {
                        tracing::warn!(%key, "proxy cache expiry: {e}");
                    } else {
                        tracing::info!(%key, kind = ?kind, "cached content expired (proxy.ttl)");
                    }
                    st.live.remove(&key);
                    st.done.insert(key, when);
                }
            }
            st.dirty = true;
        }
    }

    async fn remove(&self, key: &str, kind: Kind) -> Result<(), RegistryError> {
        let Some((name, digest)) = parse_key(key) else {
            return Err(RegistryError::msg(
                berth_core::ErrorCode::NameInvalid,
                format!("{key:?} is not <name>@<digest>; dropped"),
            ));
        };
        match kind {
            Kind::Manifest => self.registry.expire_manifest(&name, &digest).await,
            Kind::Blob => {
                self.registry
                    .expire_blob(&name, &digest, self.remove_blob_data)
                    .await
            }
        }
    }

    /// Merges the file with this process's entries and writes the union when it differs.
    async fn sync(&self) -> Result<(), String> {
        let saved = match self.read_file().await {
            Ok(s) => s,
            // Another writer's garbage is replaced by what this process knows.
            Err(e) => {
                tracing::warn!(
                    "proxy cache expiry: {STATE_PATH} is unreadable ({e}); rewriting it"
                );
                HashMap::new()
            }
        };
        let body = {
            let mut st = self.lock();
            let now = SystemTime::now();
            st.done
                .retain(|_, t| now.duration_since(*t).unwrap_or_default() < REMEMBER_DONE);
            for (key, (when, kind)) in &saved {
                let known = st.live.get(key).map(|(t, _)| *t).into_iter();
                let expired = st.done.get(key).copied().into_iter();
                if known.chain(expired).all(|t| t < *when) {
                    st.live.insert(key.clone(), (*when, *kind));
                }
            }
            let same = saved.len() == st.live.len()
                && st
                    .live
                    .iter()
                    .all(|(k, v)| saved.get(k).is_some_and(|s| s == v));
            st.dirty = false;
            (!same).then(|| encode(&st.live))
        };
        if let Some(body) = body {
            let written = self
                .registry
                .driver()
                .put_content(STATE_PATH, Bytes::from(body))
                .await;
            if let Err(e) = written {
                self.lock().dirty = true;
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    async fn read_file(&self) -> Result<HashMap<String, (SystemTime, Kind)>, String> {
        match self.registry.driver().get_content(STATE_PATH).await {
            Ok(b) => decode(&b),
            Err(e) if e.is_not_found() => Ok(HashMap::new()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `name@sha256:…` → name and digest.
fn parse_key(key: &str) -> Option<(RepoName, Digest)> {
    let (name, digest) = key.rsplit_once('@')?;
    Some((name.parse().ok()?, digest.parse().ok()?))
}

/// distribution's JSON: `json.Marshal(map[string]*schedulerEntry)`.
fn encode(live: &HashMap<String, (SystemTime, Kind)>) -> Vec<u8> {
    let mut keys: Vec<&String> = live.keys().collect();
    keys.sort();
    let map: serde_json::Map<String, serde_json::Value> = keys
        .into_iter()
        .map(|k| {
            let (when, kind) = live[k];
            let entry = serde_json::json!({
                "Key": k,
                "ExpiryData": berth_core::time::rfc3339_nanos(when),
                "EntryType": kind.code(),
            });
            (k.clone(), entry)
        })
        .collect();
    serde_json::to_vec(&map).unwrap_or_default()
}

fn decode(body: &[u8]) -> Result<HashMap<String, (SystemTime, Kind)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let map = match v {
        serde_json::Value::Object(m) => m,
        // distribution writes `null` for a scheduler that never had an entry.
        serde_json::Value::Null => return Ok(HashMap::new()),
        _ => return Err("not a JSON object".to_owned()),
    };
    let mut out = HashMap::new();
    for (key, e) in map {
        let when = e["ExpiryData"]
            .as_str()
            .and_then(berth_core::time::parse_rfc3339)
            .ok_or_else(|| format!("entry {key:?}: ExpiryData is not an RFC 3339 time"))?;
        let Some(kind) = e["EntryType"].as_i64().and_then(Kind::from_code) else {
            tracing::warn!(%key, "proxy cache expiry: unknown EntryType {}; entry ignored", e["EntryType"]);
            continue;
        };
        let k = e["Key"].as_str().unwrap_or(&key).to_owned();
        out.insert(k, (when, kind));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_distribution_writes_and_writes_it_back() {
        // As distribution 2.8/3.x writes it (Go's RFC3339Nano, local offset).
        let go = br#"{"library/alpine@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":{"Key":"library/alpine@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","ExpiryData":"2030-01-08T13:00:00.123456789+01:00","EntryType":1}}"#;
        let m = decode(go).unwrap();
        let (when, kind) = m.values().next().copied().unwrap();
        assert_eq!(kind, Kind::Manifest);
        assert_eq!(
            berth_core::time::rfc3339_nanos(when),
            "2030-01-08T12:00:00.123456789Z"
        );
        let again = decode(&encode(&m)).unwrap();
        assert_eq!(again, m);
        let (name, digest) = parse_key(m.keys().next().unwrap()).unwrap();
        assert_eq!(name.as_str(), "library/alpine");
        assert!(digest.to_string().starts_with("sha256:aaaa"));
        assert!(decode(b"null").unwrap().is_empty());
        assert!(decode(b"[1]").is_err());
        assert!(decode(br#"{"a":{"Key":"a","ExpiryData":"soon","EntryType":0}}"#).is_err());
    }
}
