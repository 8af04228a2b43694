//! Garbage collection: distribution's `registry garbage-collect`, on any driver, plus what it
//! leaves out.
//!
//! 1. **Mark** every repository: read each manifest its `_manifests/revisions` name, and mark
//!    the manifest, its config and layers, and (for an index) every child, recursively. A
//!    child may be a plain blob of the repository (BuildKit's index-form cache). With
//!    `delete_untagged`, only manifests reachable from a tag are kept: a tagged manifest, the
//!    children of a kept index, and the referrers of a kept manifest (manifests whose
//!    `subject` is kept). The rest are planned for deletion. A storage error or a manifest
//!    that cannot be read aborts the whole run before anything is deleted.
//! 2. **Delete untagged manifests** (parents before children, subjects before referrers):
//!    the revision link, its `tags/*/index` entries and its referrer link.
//! 3. **Sweep** `blobs/`: every blob that is not marked is deleted (its whole digest
//!    directory) and dropped from the blob-descriptor cache.
//! 4. **Unlink**: `_layers` links to swept blobs are removed, so no repository claims a blob
//!    that is gone (distribution leaves them, and answers 404 only at download time).
//!
//! **Online safety.** With a grace period, the registry may keep serving pushes. Nothing that
//! was written or touched after `start - grace` is deleted: not a blob, not an untagged
//! manifest, not a layer link. The registry touches content whenever it confirms it to a client
//! (see `crate::fresh`), and each deletion re-reads that time immediately before deleting. A
//! blob a client just saw therefore survives, and a manifest referencing a blob that was swept
//! earlier is refused (`MANIFEST_BLOB_UNKNOWN`: the client uploads it again) rather than stored
//! broken. What remains is the moment between that last read and the delete call (one storage
//! round trip): a client that confirms exactly an unreferenced, old blob in that moment and
//! then pushes a manifest can still lose it. Without a grace period (offline), the registry must
//! be stopped or read-only, as distribution requires.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use berth_core::{Digest, RepoName};
use futures_util::{StreamExt, TryStreamExt};

use berth_storage::{ListFrom, LIST_PAGE_MAX};

use crate::scan::RepoKeys;
use crate::{paths, Registry, RegistryError};

/// How often the registry touches content it confirms (`storage.maintenance.gc.touchinterval`).
pub const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The default grace period of an online collection.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The shortest grace period accepted (three default touch intervals; see `crate::fresh`).
pub const MIN_GRACE: Duration = Duration::from_secs(15 * 60);

/// Storage requests in flight at once while reading manifests and sweeping.
const CONCURRENCY: usize = 16;

/// What a collection does.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Report what would be deleted; delete nothing.
    pub dry_run: bool,
    /// Also delete manifests that no tag reaches.
    pub delete_untagged: bool,
    /// Online: keep whatever was written or touched less than this before the start. `None`:
    /// offline, the registry is stopped or read-only.
    pub grace: Option<Duration>,
}

/// Something the collection deleted (or, in a dry run, would delete), as it happens.
#[derive(Debug, Clone)]
pub enum Event {
    Manifest {
        repo: String,
        digest: Digest,
    },
    Blob {
        digest: Digest,
        size: u64,
    },
    LayerLink {
        repo: String,
        digest: Digest,
    },
    /// Something odd that did not stop the run (a revision whose manifest is gone).
    Warning(String),
}

/// Why a collection stopped before deleting anything.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("marking repository {repo} failed, nothing was deleted: {source}")]
    Mark {
        repo: String,
        #[source]
        source: RegistryError,
    },
    #[error("manifest {digest} of repository {repo} cannot be read ({reason}); nothing was deleted. hint: delete it through the API or fix the file, then run again")]
    Unreadable {
        repo: String,
        digest: Digest,
        reason: String,
    },
    #[error("listing the repositories failed, nothing was deleted: {0}")]
    Walk(#[source] RegistryError),
}

/// The phases, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Marking,
    DeletingManifests,
    Sweeping,
    Unlinking,
    Done,
}

/// Live counters of a run; another task may read them while it goes.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    pub repositories_total: AtomicU64,
    pub repositories_marked: AtomicU64,
    pub manifests_marked: AtomicU64,
    pub blobs_marked: AtomicU64,
    pub manifests_deleted: AtomicU64,
    pub blobs_checked: AtomicU64,
    pub blobs_deleted: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub links_removed: AtomicU64,
}

impl Progress {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Marking,
            1 => Phase::DeletingManifests,
            2 => Phase::Sweeping,
            3 => Phase::Unlinking,
            _ => Phase::Done,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    /// One line on where the run stands.
    pub fn describe(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        match self.phase() {
            Phase::Marking => format!(
                "marking: {}/{} repositories, {} manifests, {} blobs marked",
                g(&self.repositories_marked),
                g(&self.repositories_total),
                g(&self.manifests_marked),
                g(&self.blobs_marked)
            ),
            Phase::DeletingManifests => format!(
                "deleting untagged manifests: {} deleted",
                g(&self.manifests_deleted)
            ),
            Phase::Sweeping => format!(
                "sweeping: {} blobs checked, {} deleted ({})",
                g(&self.blobs_checked),
                g(&self.blobs_deleted),
                human_bytes(g(&self.bytes_freed))
            ),
            Phase::Unlinking => format!(
                "removing layer links to swept blobs: {} removed",
                g(&self.links_removed)
            ),
            Phase::Done => "done".to_owned(),
        }
    }
}

/// What a run did (in a dry run: would do).
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub dry_run: bool,
    pub repositories: u64,
    /// Manifests kept and marked.
    pub manifests_marked: u64,
    /// Distinct blobs marked (manifests, configs, layers, children).
    pub blobs_marked: u64,
    pub manifests_deleted: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub layer_links_removed: u64,
    /// Unreferenced blobs left because they are younger than the grace period.
    pub blobs_kept_recent: u64,
    /// Untagged manifests left because they are younger than the grace period.
    pub manifests_kept_recent: u64,
    /// Revisions whose manifest content is missing (already broken; skipped).
    pub broken_manifests: u64,
    /// Deletions that failed (the run went on; nothing was deleted that should not be).
    pub errors: Vec<String>,
    pub duration: Duration,
}

impl GcReport {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut s = format!(
            "{} {} manifests and {} blobs, freeing {} ({} bytes); {} layer links {}; {} repositories, {} manifests and {} blobs in use; {:.1}s",
            verb,
            self.manifests_deleted,
            self.blobs_deleted,
            human_bytes(self.bytes_freed),
            self.bytes_freed,
            self.layer_links_removed,
            if self.dry_run { "to remove" } else { "removed" },
            self.repositories,
            self.manifests_marked,
            self.blobs_marked,
            self.duration.as_secs_f64()
        );
        if self.blobs_kept_recent > 0 || self.manifests_kept_recent > 0 {
            s.push_str(&format!(
                "; kept as younger than the grace period: {} blobs, {} manifests",
                self.blobs_kept_recent, self.manifests_kept_recent
            ));
        }
        if self.broken_manifests > 0 {
            s.push_str(&format!(
                "; {} revisions without content skipped",
                self.broken_manifests
            ));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("; {} errors", self.errors.len()));
        }
        s
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What a manifest points at, read leniently: any manifest a registry may hold (OCI, Docker
/// schema2, schema1 from old registries, OCI artifact manifests), never re-validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Refs {
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    subject: Option<Digest>,
}

fn digests_of(v: &serde_json::Value, list: &str, field: &str) -> Vec<Digest> {
    v.get(list)
        .and_then(|l| l.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get(field)?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The references of a stored manifest. A digest that does not parse names nothing stored,
/// so it is skipped; a body that is not a JSON object is an error.
pub(crate) fn references(body: &[u8]) -> Result<Refs, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".to_owned());
    }
    let digest_at =
        |key: &str| -> Option<Digest> { v.get(key)?.get("digest")?.as_str()?.parse().ok() };
    let mut blobs: Vec<Digest> = digest_at("config").into_iter().collect();
    blobs.extend(digests_of(&v, "layers", "digest"));
    // OCI artifact manifest (draft) and Docker schema1.
    blobs.extend(digests_of(&v, "blobs", "digest"));
    blobs.extend(digests_of(&v, "fsLayers", "blobSum"));
    Ok(Refs {
        blobs,
        children: digests_of(&v, "manifests", "digest"),
        subject: digest_at("subject"),
    })
}

/// One repository's manifests after marking.
struct RepoPlan {
    /// Path of the repository directory (names are used raw: a directory whose name the API
    /// would refuse still has its content marked).
    dir: String,
    name: String,
    revs: HashMap<Digest, Refs>,
    tags: Vec<String>,
    /// The tag history entries (`tags/<tag>/index/<digest>`) the listing saw.
    tag_index: HashSet<(String, Digest)>,
    /// Planned deletions, in a safe order (parents and subjects first).
    doomed: Vec<Digest>,
}

impl RepoPlan {
    /// `d` and everything a kept `d` keeps: children that are manifests of the repository,
    /// and referrers.
    fn closure(&self, start: impl IntoIterator<Item = Digest>) -> HashSet<Digest> {
        let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for (d, r) in &self.revs {
            if let Some(s) = &r.subject {
                referrers.entry(s).or_default().push(d);
            }
        }
        let mut keep = HashSet::new();
        let mut stack: Vec<Digest> = start.into_iter().collect();
        while let Some(d) = stack.pop() {
            if !keep.insert(d.clone()) {
                continue;
            }
            if let Some(r) = self.revs.get(&d) {
                stack.extend(
                    r.children
                        .iter()
                        .filter(|c| self.revs.contains_key(c))
                        .cloned(),
                );
            }
            if let Some(rs) = referrers.get(&d) {
                stack.extend(rs.iter().map(|r| (*r).clone()));
            }
        }
        keep
    }

    /// `doomed` ordered so that an index comes before its children and a subject before its
    /// referrers: if a later check finds one still in use, what it keeps is not gone yet.
    fn order(&mut self, doomed: HashSet<Digest>) {
        let mut preds: BTreeMap<Digest, usize> = doomed.iter().map(|d| (d.clone(), 0)).collect();
        let mut succ: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for d in &doomed {
            let Some(r) = self.revs.get(d) else { continue };
            let mut edge = |from: &Digest, to: &Digest| {
                if from != to && doomed.contains(from) && doomed.contains(to) {
                    succ.entry(from.clone()).or_default().push(to.clone());
                    if let Some(n) = preds.get_mut(to) {
                        *n += 1;
                    }
                }
            };
            for c in &r.children {
                edge(d, c);
            }
            if let Some(s) = &r.subject {
                edge(s, d);
            }
        }
        let mut ready: Vec<Digest> = preds
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(d, _)| d.clone())
            .collect();
        let mut out = Vec::with_capacity(doomed.len());
        while let Some(d) = ready.pop() {
            for s in succ.get(&d).into_iter().flatten() {
                if let Some(n) = preds.get_mut(s) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push(s.clone());
                    }
                }
            }
            out.push(d);
        }
        // Content addressing rules out cycles; anything left is appended all the same.
        let placed: HashSet<Digest> = out.iter().cloned().collect();
        out.extend(doomed.into_iter().filter(|d| !placed.contains(d)));
        self.doomed = out;
    }
}

/// A collection in progress.
struct Run<'a> {
    reg: &'a Registry,
    opts: &'a GcOptions,
    progress: &'a Progress,
    events: &'a (dyn Fn(&Event) + Send + Sync),
    /// Content touched at or after this is left alone (online runs).
    cutoff: Option<SystemTime>,
    started: SystemTime,
    marked: HashSet<Digest>,
    report: GcReport,
}

impl Registry {
    /// Collects garbage; see the module documentation. `events` hears of each deletion as it
    /// happens; `progress` can be read by another task meanwhile.
    pub async fn garbage_collect(
        &self,
        opts: &GcOptions,
        progress: &Progress,
        events: &(dyn Fn(&Event) + Send + Sync),
    ) -> Result<GcReport, GcError> {
        let clock = Instant::now();
        let started = SystemTime::now();
        let mut run = Run {
            reg: self,
            opts,
            progress,
            events,
            cutoff: opts.grace.map(|g| started - g),
            started,
            marked: HashSet::new(),
            report: GcReport {
                dry_run: opts.dry_run,
                ..GcReport::default()
            },
        };
        progress.set_phase(Phase::Marking);
        let repos = self.scan_repositories().await.map_err(GcError::Walk)?;
        progress
            .repositories_total
            .store(repos.len() as u64, Ordering::Relaxed);
        let root = paths::repositories();
        let mut plans = Vec::new();
        for (name, keys) in &repos {
            let plan = run.mark_repo(name, &format!("{root}/{name}"), keys).await?;
            progress.repositories_marked.fetch_add(1, Ordering::Relaxed);
            if !plan.doomed.is_empty() {
                plans.push(plan);
            }
        }
        run.report.repositories = repos.len() as u64;

        progress.set_phase(Phase::DeletingManifests);
        for plan in &plans {
            run.delete_manifests(plan).await;
        }
        run.report.blobs_marked = run.marked.len() as u64;

        progress.set_phase(Phase::Sweeping);
        let swept = run.sweep().await;

        progress.set_phase(Phase::Unlinking);
        if !swept.is_empty() {
            for (name, keys) in &repos {
                run.unlink(name, &format!("{root}/{name}"), keys, &swept)
                    .await;
            }
        }
        progress.set_phase(Phase::Done);
        run.report.duration = clock.elapsed();
        Ok(run.report)
    }
}

fn revision_dir(repo_dir: &str, d: &Digest) -> String {
    format!(
        "{repo_dir}/_manifests/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

impl Run<'_> {
    fn mark(&mut self, d: &Digest) {
        if self.marked.insert(d.clone()) {
            self.progress.blobs_marked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mark_manifest(&mut self, d: &Digest, refs: &Refs) {
        self.mark(d);
        for b in refs.blobs.iter().chain(&refs.children) {
            self.mark(b);
        }
        self.report.manifests_marked += 1;
        self.progress
            .manifests_marked
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the object at `path` was written or touched too recently to delete (online).
    /// A missing object is not recent; errors are errors.
    async fn recent(&self, path: &str) -> crate::Result<Option<bool>> {
        let Some(cutoff) = self.cutoff else {
            return Ok(Some(false));
        };
        match self.reg.driver.stat_touched(path).await {
            Ok(info) => Ok(Some(info.modified >= cutoff)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn mark_repo(
        &mut self,
        name: &str,
        dir: &str,
        keys: &RepoKeys,
    ) -> Result<RepoPlan, GcError> {
        let fail = |source: RegistryError| GcError::Mark {
            repo: name.to_owned(),
            source,
        };
        let reg = self.reg;
        // The listing saw each revision's `link`: only the manifests themselves are read.
        let bodies: Vec<(Digest, Option<bytes::Bytes>)> =
            futures_util::stream::iter(keys.revisions.iter().map(|d| async move {
                match reg.driver.get_content(&paths::blob_data(d)).await {
                    Ok(b) => Ok((d.clone(), Some(b))),
                    Err(e) if e.is_not_found() => Ok((d.clone(), None)),
                    Err(e) => Err(RegistryError::from(e)),
                }
            }))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
            .map_err(fail)?;
        let mut revs = HashMap::new();
        for (d, body) in bodies {
            let Some(body) = body else {
                self.report.broken_manifests += 1;
                (self.events)(&Event::Warning(format!(
                    "{name}: revision {d} has no manifest content; skipped"
                )));
                continue;
            };
            let refs = references(&body).map_err(|reason| GcError::Unreadable {
                repo: name.to_owned(),
                digest: d.clone(),
                reason,
            })?;
            revs.insert(d, refs);
        }

        let tags_dir = format!("{dir}/_manifests/tags");
        let tags = keys.tags.clone();
        let mut plan = RepoPlan {
            dir: dir.to_owned(),
            name: name.to_owned(),
            revs,
            tags,
            tag_index: keys.tag_index.clone(),
            doomed: Vec::new(),
        };

        let keep: HashSet<Digest> = if self.opts.delete_untagged {
            let mut roots = Vec::new();
            for t in &plan.tags {
                let link = format!("{tags_dir}/{t}/current/link");
                if let Some(d) = reg.read_link(&link).await.map_err(fail)? {
                    roots.push(d);
                }
            }
            let tagged = plan.closure(roots);
            // Online: an untagged manifest written or touched within the grace period may be
            // on its way to being tagged or listed in an index.
            let mut recent = Vec::new();
            if self.cutoff.is_some() {
                for d in plan.revs.keys().filter(|d| !tagged.contains(*d)) {
                    let link = format!("{}/link", revision_dir(dir, d));
                    if self.recent(&link).await.map_err(fail)? != Some(false) {
                        recent.push(d.clone());
                    }
                }
            }
            let mut keep = tagged;
            let before = keep.len();
            keep.extend(plan.closure(recent));
            self.report.manifests_kept_recent += (keep.len() - before) as u64;
            keep
        } else {
            plan.revs.keys().cloned().collect()
        };
        let doomed: HashSet<Digest> = plan
            .revs
            .keys()
            .filter(|d| !keep.contains(*d))
            .cloned()
            .collect();
        for d in &keep {
            if let Some(refs) = plan.revs.get(d).cloned() {
                self.mark_manifest(d, &refs);
            }
        }
        plan.order(doomed);
        Ok(plan)
    }

    /// Deletes a repository's untagged manifests, each after a last look at its revision
    /// link; one found in use is kept with all it keeps, and so is one whose deletion failed.
    async fn delete_manifests(&mut self, plan: &RepoPlan) {
        let doomed: HashSet<&Digest> = plan.doomed.iter().collect();
        let mut spared: HashSet<Digest> = HashSet::new();
        for d in &plan.doomed {
            if spared.contains(d) {
                continue;
            }
            let rev_dir = revision_dir(&plan.dir, d);
            let keep = match self.recent(&format!("{rev_dir}/link")).await {
                Ok(Some(true)) => {
                    self.report.manifests_kept_recent += 1;
                    true
                }
                Ok(Some(false)) if self.opts.dry_run => false,
                Ok(Some(false)) => match self.delete_manifest(plan, d).await {
                    Ok(()) => false,
                    Err(e) => {
                        self.report
                            .errors
                            .push(format!("{}: deleting manifest {d}: {e}", plan.name));
                        true
                    }
                },
                // Deleted meanwhile (through the API): nothing to do.
                Ok(None) => continue,
                Err(e) => {
                    self.report
                        .errors
                        .push(format!("{}: checking manifest {d}: {e}", plan.name));
                    true
                }
            };
            if keep {
                for k in plan.closure([d.clone()]) {
                    // Others in the closure were kept (and marked) from the start.
                    if doomed.contains(&k) && spared.insert(k.clone()) {
                        if let Some(refs) = plan.revs.get(&k) {
                            self.mark_manifest(&k, refs);
                        }
                    }
                }
                continue;
            }
            self.report.manifests_deleted += 1;
            self.progress
                .manifests_deleted
                .fetch_add(1, Ordering::Relaxed);
            (self.events)(&Event::Manifest {
                repo: plan.name.clone(),
                digest: d.clone(),
            });
        }
    }

    /// Referrer link and tag history first, the revision link last: a failure part-way leaves
    /// the manifest in place.
    async fn delete_manifest(&self, plan: &RepoPlan, d: &Digest) -> crate::Result<()> {
        let (alg, hex) = (d.algorithm().as_str(), d.hex());
        if let Some(subject) = plan.revs.get(d).and_then(|r| r.subject.as_ref()) {
            self.reg
                .delete_if_exists(&format!(
                    "{}/_berth_referrers/{}/{}/{alg}/{hex}",
                    plan.dir,
                    subject.algorithm().as_str(),
                    subject.hex()
                ))
                .await?;
        }
        // A tag that names this manifest since the listing made it recent: it is kept.
        for (t, _) in plan.tag_index.iter().filter(|(_, x)| x == d) {
            self.reg
                .delete_if_exists(&format!(
                    "{}/_manifests/tags/{t}/index/{alg}/{hex}",
                    plan.dir
                ))
                .await?;
        }
        self.reg
            .delete_if_exists(&revision_dir(&plan.dir, d))
            .await?;
        self.reg
            .forget_fresh(&format!("{}/link", revision_dir(&plan.dir, d)));
        Ok(())
    }

    /// Deletes every blob that is not marked (and, online, not recent). Returns the digests
    /// deleted (in a dry run: that would be).
    async fn sweep(&mut self) -> BTreeSet<Digest> {
        let reg = self.reg;
        let mut swept = BTreeSet::new();
        let root = format!("{}/blobs", paths::ROOT);
        let mut from = ListFrom::Start;
        loop {
            let page = match reg.driver.list_page(&root, None, from, LIST_PAGE_MAX).await {
                Ok(p) => p,
                Err(e) => {
                    self.report.errors.push(format!("listing {root}: {e}"));
                    break;
                }
            };
            // `<alg>/<xx>/<hex>/data`: one page of blobs at a time.
            let mut candidates = Vec::new();
            for e in &page.entries {
                let [alg, _, hex, "data"] = e.key.split('/').collect::<Vec<_>>()[..] else {
                    continue;
                };
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                self.progress.blobs_checked.fetch_add(1, Ordering::Relaxed);
                if !self.marked.contains(&d) {
                    let dir = format!("{root}/{}", &e.key[..e.key.len() - "/data".len()]);
                    candidates.push((d, dir, e.size));
                }
            }
            self.sweep_candidates(candidates, &mut swept).await;
            match page.next {
                Some(t) => from = ListFrom::Token(t),
                None => break,
            }
        }
        swept
    }

    async fn sweep_candidates(
        &mut self,
        candidates: Vec<(Digest, String, u64)>,
        swept: &mut BTreeSet<Digest>,
    ) {
        let reg = self.reg;
        let (cutoff, dry_run, progress) = (self.cutoff, self.opts.dry_run, self.progress);
        let results: Vec<(Digest, SweepOutcome)> =
            futures_util::stream::iter(candidates.into_iter().map(|(d, dir, size)| async move {
                let outcome = sweep_one(reg, &dir, size, cutoff, dry_run).await;
                if let SweepOutcome::Deleted(size) = &outcome {
                    progress.blobs_deleted.fetch_add(1, Ordering::Relaxed);
                    progress.bytes_freed.fetch_add(*size, Ordering::Relaxed);
                }
                (d, outcome)
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (d, outcome) in results {
            match outcome {
                SweepOutcome::Deleted(size) => {
                    if !dry_run {
                        reg.cache.forget_blob(&d).await;
                        reg.forget_fresh(&paths::blob_data(&d));
                    }
                    self.report.blobs_deleted += 1;
                    self.report.bytes_freed += size;
                    (self.events)(&Event::Blob {
                        digest: d.clone(),
                        size,
                    });
                    swept.insert(d);
                }
                SweepOutcome::Recent => self.report.blobs_kept_recent += 1,
                SweepOutcome::NoData => {}
                SweepOutcome::Failed(e) => self.report.errors.push(format!("blob {d}: {e}")),
            }
        }
    }

    /// Removes `name`'s layer links to swept blobs. Online, a link written since the run
    /// started, or to a blob that is back (uploaded again meanwhile), stays.
    async fn unlink(&mut self, name: &str, dir: &str, keys: &RepoKeys, swept: &BTreeSet<Digest>) {
        for d in &keys.layers {
            if !swept.contains(d) {
                continue;
            }
            let link_dir = format!("{dir}/_layers/{}/{}", d.algorithm().as_str(), d.hex());
            if self.cutoff.is_some() && !self.opts.dry_run {
                let link = self
                    .reg
                    .driver
                    .stat_touched(&format!("{link_dir}/link"))
                    .await;
                let relinked = matches!(&link, Ok(i) if i.modified >= self.started);
                let back = self.reg.exists(&paths::blob_data(d)).await;
                if relinked || !matches!(back, Ok(false)) {
                    continue;
                }
            }
            if !self.opts.dry_run {
                if let Err(e) = self.reg.delete_if_exists(&link_dir).await {
                    self.report
                        .errors
                        .push(format!("{name}: removing layer link {d}: {e}"));
                    continue;
                }
                if let Ok(repo) = name.parse::<RepoName>() {
                    self.reg.cache.forget_repo_blob(&repo, d).await;
                }
            }
            self.report.layer_links_removed += 1;
            self.progress.links_removed.fetch_add(1, Ordering::Relaxed);
            (self.events)(&Event::LayerLink {
                repo: name.to_owned(),
                digest: d.clone(),
            });
        }
    }
}

enum SweepOutcome {
    Deleted(u64),
    Recent,
    NoData,
    Failed(String),
}

/// One unmarked blob: its size and time read right before it is deleted. An offline dry run
/// trusts the listing (`listed` bytes) and reads nothing more.
async fn sweep_one(
    reg: &Registry,
    dir: &str,
    listed: u64,
    cutoff: Option<SystemTime>,
    dry_run: bool,
) -> SweepOutcome {
    if dry_run && cutoff.is_none() {
        return SweepOutcome::Deleted(listed);
    }
    let info = match reg.driver.stat_touched(&format!("{dir}/data")).await {
        Ok(i) => i,
        // Gone since the listing (deleted through the API): nothing to free.
        Err(e) if e.is_not_found() => return SweepOutcome::NoData,
        Err(e) => return SweepOutcome::Failed(e.to_string()),
    };
    if cutoff.is_some_and(|c| info.modified >= c) {
        return SweepOutcome::Recent;
    }
    if dry_run {
        return SweepOutcome::Deleted(info.size);
    }
    match reg.driver.delete(dir).await {
        Ok(()) => SweepOutcome::Deleted(info.size),
        Err(e) if e.is_not_found() => SweepOutcome::NoData,
        Err(e) => SweepOutcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::{Arc, Mutex};

    use berth_core::{Reference, Tag};
    use berth_storage::InMemoryDriver;
    use bytes::Bytes;

    use super::*;
    use crate::Options;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn registry(touch: Option<Duration>) -> Registry {
        Registry::new(
            Arc::new(InMemoryDriver::new()),
            Options {
                delete_enabled: true,
                touch_interval: touch,
            },
        )
    }

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    async fn blob(reg: &Registry, name: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let up = reg.start_upload(&repo(name)).await.unwrap();
        let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            Bytes::copy_from_slice(data),
        )]);
        reg.complete_upload(&repo(name), &up.id, &d, None, Some(body))
            .await
            .unwrap();
        d
    }

    fn desc(media_type: &str, d: &Digest) -> String {
        format!(r#"{{"mediaType":"{media_type}","digest":"{d}","size":1}}"#)
    }

    /// Pushes an image of `layers` (plus a config made from `seed`); returns its digest.
    async fn image(
        reg: &Registry,
        name: &str,
        reference: Option<&str>,
        seed: &str,
        layers: &[&[u8]],
        subject: Option<&Digest>,
    ) -> Digest {
        let config = blob(reg, name, format!("config {seed}").as_bytes()).await;
        let mut ls = Vec::new();
        for l in layers {
            ls.push(desc(
                "application/vnd.oci.image.layer.v1.tar",
                &blob(reg, name, l).await,
            ));
        }
        let subject = subject
            .map(|s| format!(r#","subject":{}"#, desc(OCI_MANIFEST, s)))
            .unwrap_or_default();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]{subject}}}"#,
            desc("application/vnd.oci.image.config.v1+json", &config),
            ls.join(",")
        );
        put(reg, name, reference, body).await
    }

    async fn put(reg: &Registry, name: &str, reference: Option<&str>, body: String) -> Digest {
        let d = Digest::sha256_of(body.as_bytes());
        let r = match reference {
            Some(t) => Reference::Tag(t.parse::<Tag>().unwrap()),
            None => Reference::Digest(d.clone()),
        };
        let ct = berth_core::manifest::stored_media_type(body.as_bytes());
        reg.put_manifest(&repo(name), &r, &[], Bytes::from(body), Some(&ct))
            .await
            .unwrap()
            .digest
    }

    async fn index(reg: &Registry, name: &str, tag: &str, children: &[&Digest]) -> Digest {
        let ms: Vec<String> = children.iter().map(|c| desc(OCI_MANIFEST, c)).collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            ms.join(",")
        );
        put(reg, name, Some(tag), body).await
    }

    async fn stored(reg: &Registry, d: &Digest) -> bool {
        reg.driver().stat(&paths::blob_data(d)).await.is_ok()
    }

    async fn collect(reg: &Registry, opts: GcOptions) -> (GcReport, Vec<String>) {
        let seen = Mutex::new(Vec::new());
        let events = |e: &Event| seen.lock().unwrap().push(format!("{e:?}"));
        let r = reg
            .garbage_collect(&opts, &Progress::default(), &events)
            .await
            .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        (r, seen.into_inner().unwrap())
    }

    fn offline() -> GcOptions {
        GcOptions::default()
    }

    #[tokio::test]
    async fn sweeps_unreferenced_blobs_and_keeps_shared_ones() {
        let reg = registry(None);
        let shared: &[u8] = b"shared layer";
        let a = image(&reg, "a", Some("v1"), "a", &[shared, b"only a"], None).await;
        let b = image(&reg, "b", Some("v1"), "b", &[shared, b"only b"], None).await;
        let orphan = blob(&reg, "a", b"never referenced").await;
        reg.delete_manifest(&repo("a"), &Reference::Digest(a.clone()))
            .await
            .unwrap();

        // A dry run reports the same and deletes nothing.
        let (dry, _) = collect(
            &reg,
            GcOptions {
                dry_run: true,
                ..offline()
            },
        )
        .await;
        assert_eq!(dry.blobs_deleted, 4, "{dry:?}");
        assert!(stored(&reg, &a).await && stored(&reg, &orphan).await);

        let (r, events) = collect(&reg, offline()).await;
        assert_eq!(
            r.blobs_deleted, 4,
            "manifest a, its config, its own layer, the orphan"
        );
        assert_eq!(r.bytes_freed, dry.bytes_freed);
        assert_eq!(
            r.layer_links_removed, 3,
            "a's config, own layer and orphan links"
        );
        assert_eq!(events.len(), 7, "{events:?}");
        for d in [&a, &orphan, &Digest::sha256_of(b"only a")] {
            assert!(!stored(&reg, d).await, "{d} kept");
        }
        for d in [
            &b,
            &Digest::sha256_of(shared),
            &Digest::sha256_of(b"only b"),
        ] {
            assert!(stored(&reg, d).await, "{d} swept");
        }
        // The shared layer stays linked where an image uses it; a's link to it stays too
        // (the blob is there).
        assert!(reg
            .stat_blob(&repo("a"), &Digest::sha256_of(shared))
            .await
            .is_ok());
        assert!(reg.stat_blob(&repo("a"), &orphan).await.is_err());
        // Nothing left to do.
        let (again, _) = collect(&reg, offline()).await;
        assert_eq!((again.blobs_deleted, again.manifests_deleted), (0, 0));
    }

    #[tokio::test]
    async fn delete_untagged_keeps_children_of_tagged_indexes_and_referrers() {
        let reg = registry(None);
        let amd = image(&reg, "r", None, "amd", &[b"amd layer"], None).await;
        let arm = image(&reg, "r", None, "arm", &[b"arm layer"], None).await;
        let idx = index(&reg, "r", "latest", &[&amd, &arm]).await;
        // A signature of a child (untagged itself), and one of the untagged image.
        let sig = image(&reg, "r", None, "sig", &[b"signature"], Some(&amd)).await;
        let old = image(&reg, "r", Some("old"), "old", &[b"old layer"], None).await;
        let old_sig = image(&reg, "r", None, "oldsig", &[b"old signature"], Some(&old)).await;
        // Retag: `old` is now untagged, its tag index entry remains.
        let _new = image(&reg, "r", Some("old"), "new", &[b"new layer"], None).await;

        let (r, _) = collect(
            &reg,
            GcOptions {
                delete_untagged: true,
                ..offline()
            },
        )
        .await;
        assert_eq!(r.manifests_deleted, 2, "{r:?}");
        for d in [&idx, &amd, &arm, &sig] {
            assert!(
                reg.resolve(&repo("r"), &Reference::Digest(d.clone()))
                    .await
                    .is_ok(),
                "{d} deleted"
            );
            assert!(stored(&reg, d).await);
        }
        assert!(stored(&reg, &Digest::sha256_of(b"signature")).await);
        assert!(stored(&reg, &Digest::sha256_of(b"arm layer")).await);
        for d in [&old, &old_sig] {
            assert!(reg
                .resolve(&repo("r"), &Reference::Digest(d.clone()))
                .await
                .is_err());
            assert!(!stored(&reg, d).await, "{d} kept");
        }
        assert!(!stored(&reg, &Digest::sha256_of(b"old layer")).await);
        let tag_index = format!(
            "{}/_manifests/tags/old/index/sha256/{}/link",
            paths::repo(&repo("r")),
            old.hex()
        );
        assert!(reg.driver().stat(&tag_index).await.is_err());
        assert!(reg
            .referrers(&repo("r"), &old, None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            reg.referrers(&repo("r"), &amd, None).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn index_children_may_be_plain_blobs() {
        let reg = registry(None);
        let layer = blob(&reg, "cache", b"buildkit cache layer").await;
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            desc("application/vnd.buildkit.cacheconfig.v0", &layer)
        );
        put(&reg, "cache", Some("buildcache"), body).await;
        let (r, _) = collect(&reg, offline()).await;
        assert_eq!(r.blobs_deleted, 0);
        assert!(stored(&reg, &layer).await);
    }

    #[tokio::test]
    async fn online_grace_and_touches_protect_what_clients_saw() {
        let grace = Duration::from_millis(600);
        let reg = registry(Some(Duration::from_millis(150)));
        let seen = blob(&reg, "r", b"seen by a client").await;
        let unseen = blob(&reg, "r", b"nobody asked").await;
        let online = GcOptions {
            grace: Some(grace),
            ..offline()
        };
        // Everything is young: nothing goes.
        let (r, _) = collect(&reg, online.clone()).await;
        assert_eq!((r.blobs_deleted, r.blobs_kept_recent), (0, 2));
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A client asks about one (HEAD): it is touched.
        reg.stat_blob(&repo("r"), &seen).await.unwrap();
        let (r, _) = collect(&reg, online).await;
        assert_eq!((r.blobs_deleted, r.blobs_kept_recent), (1, 1), "{r:?}");
        assert!(stored(&reg, &seen).await);
        assert!(!stored(&reg, &unseen).await);
        // The repository no longer claims the swept blob.
        assert!(reg.stat_blob(&repo("r"), &unseen).await.is_err());
    }

    #[tokio::test]
    async fn a_manifest_naming_a_swept_blob_is_refused() {
        let reg = registry(Some(Duration::from_millis(50)));
        let layer = blob(&reg, "r", b"layer").await;
        let config = blob(&reg, "r", b"config").await;
        // A collection only deletes what was not confirmed for a grace period (>= three
        // touch intervals), so the registry no longer remembers it as fresh.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The blob goes, but the repository's link is left (as distribution leaves it).
        reg.driver()
            .delete(paths::blob_data(&layer).trim_end_matches("/data"))
            .await
            .unwrap();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
            desc("application/vnd.oci.image.config.v1+json", &config),
            desc("application/vnd.oci.image.layer.v1.tar", &layer)
        );
        let err = reg
            .put_manifest(
                &repo("r"),
                &Reference::Tag("t".parse().unwrap()),
                &[],
                Bytes::from(body),
                Some(OCI_MANIFEST),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RegistryError::Oci(e) if e.code == berth_core::ErrorCode::ManifestBlobUnknown),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_unreadable_manifest_stops_the_run_before_any_deletion() {
        let reg = registry(None);
        let orphan = blob(&reg, "r", b"orphan").await;
        let junk = Digest::sha256_of(b"not json");
        reg.driver()
            .put_content(&paths::blob_data(&junk), Bytes::from_static(b"not json"))
            .await
            .unwrap();
        reg.driver()
            .put_content(
                &paths::revision_link(&repo("r"), &junk),
                Bytes::from(junk.to_string()),
            )
            .await
            .unwrap();
        let err = reg
            .garbage_collect(&offline(), &Progress::default(), &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, GcError::Unreadable { .. }), "{err}");
        assert!(stored(&reg, &orphan).await);
    }

    #[test]
    fn references_of_every_manifest_kind() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let schema1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{}"}},{{"blobSum":"{}"}}]}}"#,
            d('1'),
            d('2')
        );
        let r = references(schema1.as_bytes()).unwrap();
        assert_eq!(r.blobs.len(), 2);
        let idx = format!(
            r#"{{"manifests":[{{"digest":"{}"}},{{"digest":"bogus"}}],"subject":{{"digest":"{}"}}}}"#,
            d('3'),
            d('4')
        );
        let r = references(idx.as_bytes()).unwrap();
        assert_eq!(r.children.len(), 1);
        assert_eq!(r.subject.map(|s| s.to_string()), Some(d('4')));
        let artifact = format!(r#"{{"blobs":[{{"digest":"{}"}}]}}"#, d('5'));
        assert_eq!(references(artifact.as_bytes()).unwrap().blobs.len(), 1);
        assert!(references(b"[1]").is_err());
        assert!(references(b"\x00").is_err());
    }

    #[test]
    fn repository_paths_match_the_layout() {
        let n = repo("library/alpine");
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            format!("{}/link", revision_dir(&paths::repo(&n), &d)),
            paths::revision_link(&n, &d)
        );
    }

    #[tokio::test]
    async fn purges_stale_upload_sessions_only() {
        let reg = registry(None);
        let stale = reg.start_upload(&repo("r")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh = reg.start_upload(&repo("fresh/only-uploads")).await.unwrap();
        let r = reg
            .purge_uploads(Duration::from_millis(200), false)
            .await
            .unwrap();
        assert_eq!((r.sessions, r.purged), (2, 1), "{r:?}");
        assert!(reg.upload_status(&repo("r"), &stale.id).await.is_err());
        assert!(reg
            .upload_status(&repo("fresh/only-uploads"), &fresh.id)
            .await
            .is_ok());
    }
}
