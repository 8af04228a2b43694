//! The repository catalog: every directory under `repositories/` that has `_manifests` or
//! `_layers` is a repository; `_`-prefixed directories are never descended into (that is how
//! distribution tells repository internals from nested repository names).

use crate::tags::{paginate, Page};
use crate::{paths, Registry, Result};

impl Registry {
    /// A page of repository names in lexical order.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        let root = paths::repositories();
        let mut names = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let children = match self.driver.list(&dir).await {
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
                    stack.push(child);
                }
            }
            if is_repo {
                if let Some(name) = dir.strip_prefix(&format!("{root}/")) {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort_unstable();
        Ok(paginate(names, n, last))
    }
}
