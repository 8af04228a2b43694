//! Tag listing with the spec's `n`/`last` pagination (lexical order).

use berth_core::{ErrorCode, RepoName, Tag};

use crate::{paths, Registry, RegistryError, Result};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<String>,
    /// Whether entries remain after this page (a `Link` header is due).
    pub more: bool,
}

/// Applies `last` (exclusive start) and `n` (page size) to a sorted list.
pub fn paginate(mut entries: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    if let Some(l) = last {
        let start = entries.partition_point(|e| e.as_str() <= l);
        entries.drain(..start);
    }
    let more = n.is_some_and(|n| entries.len() > n);
    if let Some(n) = n {
        entries.truncate(n);
    }
    Page { entries, more }
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

    /// A page of the repository's tags.
    pub async fn list_tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page> {
        Ok(paginate(self.tag_names(name).await?, n, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let all = v(&["a", "b", "c", "d"]);
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            Page {
                entries: v(&["a", "b"]),
                more: true
            }
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            Page {
                entries: v(&["c", "d"]),
                more: false
            }
        );
        assert_eq!(
            paginate(all.clone(), None, Some("bb")),
            Page {
                entries: v(&["c", "d"]),
                more: false
            }
        );
        assert_eq!(
            paginate(all.clone(), Some(0), None),
            Page {
                entries: vec![],
                more: true
            }
        );
        assert_eq!(
            paginate(all, Some(10), Some("z")),
            Page {
                entries: vec![],
                more: false
            }
        );
    }
}
