//! Tag listing with the spec's `n`/`last` pagination (lexical order).

use berth_core::{ErrorCode, RepoName, Tag};

use crate::listing::NameLayout;
use crate::{paths, Registry, RegistryError, Result};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<String>,
    /// Whether entries remain after this page (a `Link` header is due).
    pub more: bool,
}

impl Registry {
    /// Every tag of a repository, sorted; `NAME_UNKNOWN` if the repository does not exist.
    pub(crate) async fn all_tags(&self, name: &RepoName) -> Result<Vec<Tag>> {
        Ok(self
            .tag_names(name)
            .await?
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect())
    }

    /// Every tag of a repository as text, sorted (entries that are not valid tags are left
    /// out); `NAME_UNKNOWN` if the repository does not exist.
    async fn tag_names(&self, name: &RepoName) -> Result<Vec<String>> {
        match self.driver.list_names(&paths::tags_dir(name)).await {
            Ok(mut names) => {
                names.retain(|t| Tag::is_valid(t));
                names.sort_unstable();
                Ok(names)
            }
            Err(e) if e.is_not_found() => {
                if self.repository_exists(name).await? {
                    Ok(Vec::new())
                } else {
                    Err(RegistryError::code(ErrorCode::NameUnknown))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A page of the repository's tags: the tag directories from `last` on, one listing
    /// for up to 1,000 tags whatever the repository holds ([`crate::listing`]).
    pub async fn list_tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page> {
        let dir = paths::tags_dir(name);
        let layout = NameLayout {
            dir: &dir,
            delimiter: "/",
            valid: Tag::is_valid,
        };
        let (page, listed) = layout
            .page(self.driver.as_ref(), n.unwrap_or(usize::MAX), last)
            .await?;
        if !listed && !self.repository_exists(name).await? {
            return Err(RegistryError::code(ErrorCode::NameUnknown));
        }
        Ok(page)
    }
}
