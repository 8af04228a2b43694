//! Whole-registry passes (garbage collection, upload purging) read the layout as flat key
//! listings: [`list_page`](berth_storage::StorageDriver::list_page) without a delimiter, 1,000
//! keys a request on S3, each key seen once. Walking it directory by directory instead costs a
//! listing per repository, per revision algorithm, per blob prefix: about six times as many
//! requests at 1,000 repositories, and a round trip each.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use berth_core::Digest;
use berth_storage::{ListEntry, ListFrom, LIST_PAGE_MAX};

use crate::{paths, Registry, Result};

/// What one repository's keys say.
#[derive(Debug, Default)]
pub(crate) struct RepoKeys {
    /// Revisions with a `link` (distribution deletes a manifest by deleting only its link).
    pub revisions: Vec<Digest>,
    /// Tags with a `current/link`.
    pub tags: Vec<String>,
    /// `tags/<tag>/index/<digest>` entries.
    pub tag_index: HashSet<(String, Digest)>,
    /// `_layers` links.
    pub layers: Vec<Digest>,
    /// Upload sessions by id: the newest write below the session and the bytes it holds.
    pub uploads: BTreeMap<String, (SystemTime, u64)>,
    /// Whether one of a repository's own directories (`_manifests`, `_layers`, `_uploads`)
    /// was seen, rather than only Berth's `_berth_*` ones.
    is_repo: bool,
}

impl RepoKeys {
    /// Records the key `rest` of a repository (what follows `<name>/`).
    fn add(&mut self, rest: &str, entry: &ListEntry) {
        let parts: Vec<&str> = rest.split('/').collect();
        let digest = |alg: &str, hex: &str| format!("{alg}:{hex}").parse::<Digest>().ok();
        match parts.as_slice() {
            ["_manifests", "revisions", alg, hex, "link"] => {
                self.revisions.extend(digest(alg, hex));
            }
            ["_manifests", "tags", tag, "current", "link"] => self.tags.push((*tag).to_owned()),
            ["_manifests", "tags", tag, "index", alg, hex, "link"] => {
                if let Some(d) = digest(alg, hex) {
                    self.tag_index.insert(((*tag).to_owned(), d));
                }
            }
            ["_layers", alg, hex, "link"] => self.layers.extend(digest(alg, hex)),
            ["_uploads", id, _, ..] => {
                // A listing without times (none of the drivers) must never make a session look old.
                let modified = entry.modified.unwrap_or_else(SystemTime::now);
                let slot = self
                    .uploads
                    .entry((*id).to_owned())
                    .or_insert((modified, 0));
                slot.0 = slot.0.max(modified);
                slot.1 += entry.size;
            }
            _ => {}
        }
        self.is_repo |= ["_manifests/", "_layers/", "_uploads/"]
            .iter()
            .any(|p| rest.starts_with(p));
    }
}

impl Registry {
    /// Calls `f` with every key below `dir` (relative to it), in key order, one listing page
    /// at a time.
    pub(crate) async fn for_each_key(&self, dir: &str, mut f: impl FnMut(ListEntry)) -> Result<()> {
        let mut from = ListFrom::Start;
        loop {
            let page = self
                .driver
                .list_page(dir, None, from, LIST_PAGE_MAX)
                .await?;
            page.entries.into_iter().for_each(&mut f);
            match page.next {
                Some(t) => from = ListFrom::Token(t),
                None => return Ok(()),
            }
        }
    }

    /// Every repository and what its keys say, by name. A repository is a directory with
    /// `_manifests`, `_layers` or `_uploads`; names are taken as stored (a directory whose
    /// name the API would refuse still has its content seen).
    pub(crate) async fn scan_repositories(&self) -> Result<BTreeMap<String, RepoKeys>> {
        let mut repos: BTreeMap<String, RepoKeys> = BTreeMap::new();
        self.for_each_key(&paths::repositories(), |e| {
            // A name component never starts with `_`: the first `/_` ends the name.
            let Some(i) = e.key.find("/_") else { return };
            let (name, rest) = (&e.key[..i], &e.key[i + 1..]);
            match repos.get_mut(name) {
                Some(keys) => keys.add(rest, &e),
                None => {
                    let mut keys = RepoKeys::default();
                    keys.add(rest, &e);
                    repos.insert(name.to_owned(), keys);
                }
            }
        })
        .await?;
        repos.retain(|_, k| k.is_repo);
        Ok(repos)
    }
}
