//! The repository catalog: every directory under `repositories/` that has `_manifests` or
//! `_layers` is a repository; `_`-prefixed directories are never descended into (that is how
//! distribution tells repository internals from nested repository names).
//!
//! The walk lists up to [`CONCURRENT_LISTS`] directories at once: a listing is a blocking
//! `read_dir` on a filesystem and a round trip on S3, and a catalog of 10,000 repositories is
//! at least 10,000 listings.

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::tags::{paginate, Page};
use crate::{paths, Registry, Result};

/// Directory listings in flight during a catalog walk.
const CONCURRENT_LISTS: usize = 32;

impl Registry {
    /// A page of repository names in lexical order.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let root = paths::repositories();
        let prefix = format!("{root}/");
        let mut names = Vec::new();
        let mut pending = vec![root.clone()];
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < CONCURRENT_LISTS {
                let Some(dir) = pending.pop() else { break };
                let driver = self.driver.clone();
                running.push(async move {
                    let listed = driver.list(&dir).await;
                    (dir, listed)
                });
            }
            let Some((dir, listed)) = running.next().await else {
                break;
            };
            let children = match listed {
                Ok(c) => c,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let mut is_repo = false;
            for child in children {
                let base = child.rsplit('/').next().unwrap_or("");
                if base == "_manifests" || base == "_layers" {
                    is_repo = true;
                } else if !base.starts_with('_') {
                    pending.push(child);
                }
            }
            if is_repo {
                if let Some(name) = dir.strip_prefix(&prefix) {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort_unstable();
        Ok(paginate(names, n, last))
    }
}
