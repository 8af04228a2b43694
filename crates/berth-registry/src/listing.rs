//! Pages of names read straight off the layout, at a cost that follows the page and not the
//! bucket: the catalog (`repositories/<name>/_…`) and tag lists (`_manifests/tags/<tag>/…`).
//!
//! One [`list_page`](berth_storage::StorageDriver::list_page) from `last` returns up to 1,000
//! names at once: with the delimiter `/_`, S3 rolls each repository's whole subtree
//! (`_manifests`, `_layers`, `_uploads`, Berth's `_berth_*`) into one entry, `<name>/_`,
//! because a name component never starts with `_`; with `/`, each tag directory is one entry.
//! A catalog page of 100 is therefore one request at any bucket size, and a whole walk about
//! one request per 1,000 names. Nothing is kept beside the layout, so there is no index to
//! rebuild or to disagree with distribution writing the same bucket.
//!
//! The one subtlety is order. Pages are in the names' own (byte) order, as before and as the
//! conformance suite expects, but keys sort with what follows the name: `app-1/_` before `app/_`
//! (`-` and `.` sort before `/`) and `a/0x/_` before `a/_` (digits sort before `_`). So a name
//! can be listed *after* names that it precedes, and only then when it is a proper prefix of
//! them. A page is complete when the listing ran to the end; otherwise any missing name is a
//! prefix of the last key listed (every key between a name's extensions and the name itself
//! starts with the name), so those few prefixes are probed, one small listing each, and only
//! when their key lies beyond what was listed.

use berth_storage::{ListFrom, StorageDriver, LIST_PAGE_MAX};

use crate::tags::Page;
use crate::Result;

/// How names are stored below a directory: each name `x` has keys that start with
/// `x` + `delimiter`, which no other name's keys contain earlier.
pub(crate) struct NameLayout<'a> {
    pub dir: &'a str,
    /// `/_` for repositories, `/` for tags.
    pub delimiter: &'static str,
    /// Entries that are not valid names are left out.
    pub valid: fn(&str) -> bool,
}

/// Entries a page asks for beyond `n`: names at or before `last` (prefixes of it, listed
/// after it) and invalid entries do not count towards the page.
const SLACK: usize = 8;

impl NameLayout<'_> {
    /// The `n` first names after `last` in byte order; `more` when names remain (or may:
    /// a full page whose listing did not end links to the next, as distribution does).
    /// Also says whether anything at all was listed after `last`.
    pub(crate) async fn page(
        &self,
        driver: &dyn StorageDriver,
        n: usize,
        last: Option<&str>,
    ) -> Result<(Page, bool)> {
        let after = |name: &str| last.is_none_or(|l| name > l);
        let mut names: Vec<String> = Vec::new();
        let mut from = match last {
            Some(l) => ListFrom::After(l.to_owned()),
            None => ListFrom::Start,
        };
        let mut end: Option<String> = None;
        let complete = loop {
            let page = driver
                .list_page(
                    self.dir,
                    Some(self.delimiter),
                    from,
                    (n - names.len().min(n))
                        .saturating_add(SLACK)
                        .min(LIST_PAGE_MAX),
                )
                .await?;
            for e in page.entries {
                if let Some(name) = e.key.strip_suffix(self.delimiter).filter(|_| e.rolled) {
                    if (self.valid)(name) && after(name) {
                        names.push(name.to_owned());
                    }
                }
                end = Some(e.key);
            }
            match page.next {
                None => break true,
                Some(_) if names.len() >= n => break false,
                Some(token) => from = ListFrom::Token(token),
            }
        };
        names.sort_unstable();
        names.dedup();
        if let (false, Some(end)) = (complete, &end) {
            self.probe_prefixes(driver, end, &mut names, n, &after)
                .await?;
        }
        let more = !complete || names.len() > n;
        names.truncate(n);
        Ok((
            Page {
                entries: names,
                more,
            },
            end.is_some(),
        ))
    }

    /// Adds the names the listing has not reached yet that sort before the page's last name:
    /// proper prefixes of `end` whose own key sorts after `end`.
    async fn probe_prefixes(
        &self,
        driver: &dyn StorageDriver,
        end: &str,
        names: &mut Vec<String>,
        n: usize,
        after: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<()> {
        let threshold = names.get(n.saturating_sub(1)).cloned();
        let candidates: Vec<&str> = end
            .char_indices()
            .skip(1)
            .map(|(i, _)| &end[..i])
            .filter(|z| {
                format!("{z}{}", self.delimiter).as_str() > end
                    && threshold.as_deref().is_none_or(|t| *z < t)
                    && (self.valid)(z)
                    && after(z)
                    && names.binary_search_by(|x| x.as_str().cmp(z)).is_err()
            })
            .collect();
        // At most one per name component, and independent: sent together.
        let exist =
            futures_util::future::try_join_all(candidates.iter().map(|z| self.exists(driver, z)))
                .await?;
        let before = names.len();
        names.extend(
            candidates
                .into_iter()
                .zip(exist)
                .filter(|(_, e)| *e)
                .map(|(z, _)| z.to_owned()),
        );
        if names.len() > before {
            names.sort_unstable();
        }
        Ok(())
    }

    /// Whether `name` has a key: one listing of at most one entry below it.
    async fn exists(&self, driver: &dyn StorageDriver, name: &str) -> Result<bool> {
        // The delimiter is `/` and then what the name's keys continue with (`_` or nothing).
        let rest = &self.delimiter[1..];
        let from = match rest.as_bytes() {
            // The key just before `rest`: `^` comes right before `_`.
            [init @ .., last] => ListFrom::After(format!(
                "{}{}",
                String::from_utf8_lossy(init),
                char::from(last.saturating_sub(1))
            )),
            [] => ListFrom::Start,
        };
        let page = driver
            .list_page(&format!("{}/{name}", self.dir), None, from, 1)
            .await?;
        Ok(page
            .entries
            .first()
            .is_some_and(|e| e.key.starts_with(rest)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use berth_core::{RepoName, Tag};
    use berth_storage::instrumented::Op;
    use berth_storage::{FilesystemDriver, InMemoryDriver, Instrumented, StorageDriver};
    use bytes::Bytes;

    use super::*;

    /// The definition a page must meet: sort, skip through `last`, take `n`.
    fn expected(all: &[&str], n: usize, last: Option<&str>) -> (Vec<String>, bool) {
        let mut v: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        v.sort();
        v.retain(|x| last.is_none_or(|l| x.as_str() > l));
        let more = v.len() > n;
        v.truncate(n);
        (v, more)
    }

    /// Repositories whose key order differs from their name order (`svc` after
    /// `svc-01`…`svc-30`; `a` after `a-b`, `a.c`, `a/0`), nested ones, and a stray file and an
    /// invalid name that must be left out.
    const REPOS: &[&str] = &[
        "a", "a-b", "a.c", "a/0", "a/0/x", "a/b", "a/b-c", "ab", "b", "x/y/z", "x-y", "svc",
        "svc-01", "svc-02", "svc-03", "svc-04", "svc-05", "svc-06", "svc-07", "svc-08", "svc-09",
        "svc-10", "svc-11", "svc-12", "svc-13", "svc-14", "svc-15", "svc-16", "svc-17", "svc-18",
        "svc-19", "svc-20", "svc-21", "svc-22", "svc-23", "svc-24", "svc-25", "svc-26", "svc-27",
        "svc-28", "svc-29", "svc-30", "svc/9",
    ];

    async fn fill(d: &dyn StorageDriver) {
        for (i, r) in REPOS.iter().enumerate() {
            let internal = [
                "_manifests/tags/t/current/link",
                "_layers/l/link",
                "_uploads/u/data",
            ];
            let p = format!("/repos/{r}/{}", internal[i % 3]);
            d.put_content(&p, Bytes::from_static(b"x")).await.unwrap();
        }
        for stray in [
            "/repos/Upper/_layers/x",
            "/repos/file",
            "/repos/d/plain/file",
        ] {
            d.put_content(stray, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        for t in [
            "v1", "v1-rc", "v1.0", "v10", "latest", "_x", "V2", "v1-rc.1",
        ] {
            let p = format!("/tags/{t}/current/link");
            d.put_content(&p, Bytes::from_static(b"x")).await.unwrap();
        }
    }

    fn listings(d: &Instrumented) -> u64 {
        let stats = d.stats();
        let calls = &stats.op(Op::ListPage).calls;
        calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn check(d: Arc<Instrumented>) {
        fill(d.as_ref()).await;
        let repos = NameLayout {
            dir: "/repos",
            delimiter: "/_",
            valid: |s| s.parse::<RepoName>().is_ok(),
        };
        let tags = NameLayout {
            dir: "/tags",
            delimiter: "/",
            valid: Tag::is_valid,
        };
        let all_tags = [
            "v1", "v1-rc", "v1.0", "v10", "latest", "_x", "V2", "v1-rc.1",
        ];
        for (layout, all) in [(&repos, REPOS), (&tags, &all_tags[..])] {
            let mut lasts: Vec<Option<&str>> = vec![None, Some(""), Some("zzz"), Some("a-")];
            lasts.extend(all.iter().map(|s| Some(*s)));
            for n in [1, 2, 3, 5, 29, 100] {
                for last in &lasts {
                    let before = listings(&d);
                    let (page, _) = layout.page(d.as_ref(), n, *last).await.unwrap();
                    let (want, more) = expected(all, n, *last);
                    assert_eq!(page.entries, want, "n={n} last={last:?}");
                    if !more {
                        assert!(!page.more || page.entries.len() == n, "n={n} last={last:?}");
                    } else {
                        assert!(page.more, "n={n} last={last:?}");
                    }
                    // One listing (two where a page crosses names it must skip), plus a
                    // probe per name component at most.
                    let cost = listings(&d) - before;
                    assert!(cost <= 4, "n={n} last={last:?}: {cost} calls");
                }
                // A walk by `last` gives every name once, in order.
                let mut walked = Vec::new();
                let mut last: Option<String> = None;
                loop {
                    let (page, _) = layout.page(d.as_ref(), n, last.as_deref()).await.unwrap();
                    walked.extend(page.entries.iter().cloned());
                    if !page.more {
                        break;
                    }
                    last = page.entries.last().cloned();
                    assert!(last.is_some(), "a page with more and no names");
                }
                assert_eq!(walked, expected(all, usize::MAX, None).0, "n={n}");
            }
        }
    }

    #[tokio::test]
    async fn pages_in_name_order_on_memory() {
        check(Arc::new(Instrumented::new(Arc::new(InMemoryDriver::new())))).await;
    }

    #[tokio::test]
    async fn pages_in_name_order_on_a_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FilesystemDriver::new(dir.path());
        check(Arc::new(Instrumented::new(Arc::new(fs)))).await;
    }
}
