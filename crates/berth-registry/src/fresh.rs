//! Keeping content that clients were just told about out of reach of an online garbage
//! collection ([`crate::gc`]).
//!
//! A collection sweeps an unreferenced blob only if it was last written or touched before the
//! collection started minus its grace period. So whenever the registry confirms content to a
//! client (a blob `HEAD`/`GET`, a mount, a finished upload, the references of a manifest it
//! accepts, an index's child manifests), it makes sure that time is recent: it reads it and
//! touches the object when it is older than the touch interval. To keep a hot blob from
//! costing a storage call per request, the process remembers for one interval that it found
//! the object fresh. The argument, with `i` the interval and `g >= 3i` the grace period:
//! an object remembered at `o` was touched at `t >= o - i`; the memory is used until `o + i`,
//! and the manifest that depends on it lands within `i` of that, so any collection that does
//! not see that manifest started after `o` and its cutoff is at most `o + 2i - g <= o - i <= t`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::{Registry, Result};

/// Entries remembered before the memory starts over (a bound, not a target).
const CAPACITY: usize = 100_000;

/// Objects this process found fresh, and when.
#[derive(Default)]
pub(crate) struct Fresh(Mutex<HashMap<String, Instant>>);

impl Fresh {
    fn recent(&self, path: &str, interval: std::time::Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).is_some_and(|t| t.elapsed() < interval)
    }

    fn remember(&self, path: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(path.to_owned(), Instant::now());
    }

    fn forget(&self, path: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
}

impl Registry {
    /// Whether the object at `path` exists; if it does, it is also made fresh (see the module
    /// documentation). `modified` is its touched time when the caller just read it.
    pub(crate) async fn refresh(&self, path: &str, modified: Option<SystemTime>) -> Result<bool> {
        let Some(interval) = self.options.touch_interval else {
            return match modified {
                Some(_) => Ok(true),
                None => self.exists(path).await,
            };
        };
        if self.fresh.recent(path, interval) {
            return Ok(true);
        }
        // The object's own time (one HEAD on S3, not two): when it is old, a touch follows
        // even if a recent touch marker exists, at most once per interval.
        let modified = match modified {
            Some(m) => m,
            None => match self.driver.stat_object(path).await {
                Ok(info) => info.modified,
                Err(e) if e.is_not_found() => {
                    self.fresh.forget(path);
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            },
        };
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age >= interval {
            match self.driver.touch(path).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    self.fresh.forget(path);
                    return Ok(false);
                }
                // A failed touch only weakens a concurrent collection's guarantee; the
                // request itself is fine.
                Err(e) => {
                    tracing::warn!("could not refresh {path} for garbage collection: {e}");
                    return Ok(true);
                }
            }
        }
        self.fresh.remember(path);
        Ok(true)
    }

    /// Records that the object at `path` was just written or moved into place (its time is
    /// now), so the next confirmation costs no storage call.
    pub(crate) fn landed(&self, path: &str) {
        if self.options.touch_interval.is_some() {
            self.fresh.remember(path);
        }
    }

    /// Forgets that `path` was fresh (it was deleted).
    pub(crate) fn forget_fresh(&self, path: &str) {
        self.fresh.forget(path);
    }
}
