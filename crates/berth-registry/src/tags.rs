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
pub fn paginate(sorted: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    let start = match last {
        Some(l) => sorted.partition_point(|e| e.as_str() <= l),
        None => 0,
    };
    let mut entries: Vec<String> = sorted.into_iter().skip(start).collect();
    let more = n.is_some_and(|n| entries.len() > n);
    if let Some(n) = n {
        entries.truncate(n);
    }
    Page { entries, more }
}

impl Registry {
    /// Every tag of a repository, sorted; `NAME_UNKNOWN` if the repository does not exist.
    pub(crate) async fn all_tags(&self, name: &RepoName) -> Result<Vec<Tag>> {
        match self.driver.list(&paths::tags_dir(name)).await {
            Ok(children) => {
                let mut tags: Vec<Tag> = children
                    .iter()
                    .filter_map(|p| p.rsplit('/').next().and_then(|t| t.parse().ok()))
                    .collect();
                tags.sort_unstable();
                Ok(tags)
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
        let tags = self
            .all_tags(name)
            .await?
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        Ok(paginate(tags, n, last))
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
