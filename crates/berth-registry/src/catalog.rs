//! The repository catalog: every directory under `repositories/` that has `_manifests` or
//! `_layers` is a repository; `_`-prefixed directories are never descended into (that is how
//! distribution tells repository internals from nested repository names).
//!
//! The walk is the driver's [`find_dirs`](berth_storage::StorageDriver::find_dirs): one
//! blocking tree walk on a filesystem, many listings in flight on S3 (a catalog of 10,000
//! repositories is at least 10,000 listings).

use crate::tags::{paginate, Page};
use crate::{paths, Registry, Result};

impl Registry {
    /// A page of repository names in lexical order.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let mut names = self
            .driver
            .find_dirs(
                &paths::repositories(),
                |n| n == "_manifests" || n == "_layers",
                |n| n.starts_with('_'),
            )
            .await?;
        names.sort_unstable();
        Ok(paginate(names, n, last))
    }
}
