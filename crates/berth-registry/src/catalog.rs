//! The repository catalog: every directory under `repositories/` that holds one of the
//! `_`-prefixed directories of a repository (`_manifests`, `_layers`, `_uploads`, Berth's
//! `_berth_*`); `_`-prefixed directories are never descended into (that is how distribution
//! tells repository internals from nested repository names). A repository appears with its
//! first stored object, as it exists for `tags/list` from then on.
//!
//! Pages are read off the layout at a cost that follows the page, not the bucket
//! ([`crate::listing`]).

use berth_core::RepoName;

use crate::listing::NameLayout;
use crate::tags::Page;
use crate::{paths, Registry, Result};

impl Registry {
    /// A page of repository names in lexical order; `n` defaults to every name.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let root = paths::repositories();
        let layout = NameLayout {
            dir: &root,
            delimiter: "/_",
            valid: |s| s.parse::<RepoName>().is_ok(),
        };
        let (page, _) = layout
            .page(self.driver.as_ref(), n.unwrap_or(usize::MAX), last)
            .await?;
        Ok(page)
    }
}
