//! Crash consistency: Berth is killed with SIGKILL at random moments while several clients push
//! (chunked and monolithic blobs, manifests, tags that move between manifests). After each
//! kill the data directory must hold no blob whose bytes do not match its digest, no tag or
//! revision pointing at a manifest that is not stored, no manifest whose blobs are missing;
//! and every upload that was under way either resumes from the offset Berth reports and
//! completes with the right digest, or is cleanly unknown (404).
//!
//! Nothing of Berth's own is left inside distribution's tree by a crash: temporaries live in
//! `.berth/tmp` under the root, a restart removes the dead process's ones, and Debian's
//! distribution 2.8 `garbage-collect` runs cleanly over a data directory Berth crashed in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_conformance::client::{with_query, Body, Client};
use berth_conformance::fixtures::{
    bytes, descriptor, digest, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, OCTET,
};
use sha2::Digest as _;
use support::{distribution_gc, Berth};

const CLIENTS: usize = 4;
const KILLS: usize = 6;

/// An upload a client had under way: where, and all the bytes it meant to send.
#[derive(Clone)]
struct Pending {
    repo: String,
    location: String,
    data: Vec<u8>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One client: pushes images into its repository until a request fails (the server died).
fn pusher(
    url: String,
    id: usize,
    seed: u64,
    pending: Arc<Mutex<Vec<Option<Pending>>>>,
    stop: Arc<AtomicBool>,
) {
    let c = Client::new(&url, None);
    let mut rng = Rng(seed | 1);
    let repo = format!("crash/client{id}");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let layer = bytes(
            &format!("{seed}-{id}-{n}"),
            50_000 + rng.below(900_000) as usize,
        );
        let config = format!(r#"{{"client":{id},"n":{n}}}"#).into_bytes();
        let ok = (|| -> Result<(), String> {
            for blob in [&layer, &config] {
                let loc = c.start_upload(&repo)?;
                let p = Pending {
                    repo: repo.clone(),
                    location: loc.clone(),
                    data: blob.to_vec(),
                };
                pending.lock().unwrap()[id] = Some(p);
                let mut loc = loc;
                let chunks = 1 + rng.below(3) as usize;
                let size = blob.len().div_ceil(chunks);
                for (i, chunk) in blob.chunks(size).enumerate() {
                    let start = i * size;
                    let range = format!("{start}-{}", start + chunk.len() - 1);
                    let r = c.send(
                        "PATCH",
                        &loc,
                        &[("Content-Type", OCTET), ("Content-Range", &range)],
                        Body::Bytes(chunk),
                    )?;
                    if r.status != 202 {
                        return Err(r.describe());
                    }
                    loc = r.header("location").ok_or("no location")?.to_owned();
                    if let Some(p) = pending.lock().unwrap()[id].as_mut() {
                        p.location = loc.clone();
                    }
                }
                let r = c.send(
                    "PUT",
                    &with_query(&loc, "digest", &digest(blob)),
                    &[],
                    Body::Bytes(&[]),
                )?;
                if r.status != 201 {
                    return Err(r.describe());
                }
                pending.lock().unwrap()[id] = None;
            }
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
                descriptor(OCI_CONFIG, &config),
                descriptor(OCI_LAYER, &layer)
            );
            // A few tags per client, so tags keep moving between manifests.
            let tag = format!("t{}", rng.below(3));
            let r = c.put_manifest(&repo, &tag, OCI_MANIFEST, manifest.as_bytes())?;
            if r.status != 201 {
                return Err(r.describe());
            }
            Ok(())
        })();
        if ok.is_err() {
            return;
        }
    }
}

fn sha256_file(p: &Path) -> String {
    let data = std::fs::read(p).unwrap();
    format!("sha256:{}", hex(&sha2::Sha256::digest(&data)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_link(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Checks every invariant of the layout under `root`.
fn verify(root: &Path) -> usize {
    let v2 = root.join("docker/registry/v2");
    let blob_path = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap();
        v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
    };
    // 1. Every blob at its final path has the bytes of its digest.
    let mut blobs = 0;
    if let Ok(prefixes) = std::fs::read_dir(v2.join("blobs/sha256")) {
        for p in prefixes {
            for b in std::fs::read_dir(p.unwrap().path()).unwrap() {
                let dir = b.unwrap().path();
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                let data = dir.join("data");
                if data.exists() {
                    assert_eq!(
                        sha256_file(&data),
                        format!("sha256:{name}"),
                        "torn blob {}",
                        data.display()
                    );
                    blobs += 1;
                }
            }
        }
    }
    // 2. Tags, revisions and layer links of every repository.
    for id in 0..CLIENTS {
        let repo = v2.join(format!("repositories/crash/client{id}"));
        if !repo.exists() {
            continue;
        }
        let tags = repo.join("_manifests/tags");
        for t in visible_entries(&tags) {
            let current = t.join("current/link");
            // Tag directories appear with their link and vanish in one step.
            assert!(current.exists(), "tag {} has no link", t.display());
            let d = read_link(&current);
            let hex = d.strip_prefix("sha256:").unwrap();
            assert!(
                repo.join(format!("_manifests/revisions/sha256/{hex}/link"))
                    .exists(),
                "tag {} points at {d}, which is not a revision",
                t.display()
            );
        }
        let revisions = repo.join("_manifests/revisions/sha256");
        for r in visible_entries(&revisions) {
            let link = r.join("link");
            assert!(link.exists(), "revision {} has no link", r.display());
            let d = read_link(&link);
            let manifest = blob_path(&d);
            assert!(manifest.exists(), "revision {d} has no stored manifest");
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
            let mut refs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
            for l in m["layers"].as_array().unwrap() {
                refs.push(l["digest"].as_str().unwrap().to_owned());
            }
            for b in refs {
                let hex = b.strip_prefix("sha256:").unwrap();
                assert!(
                    repo.join(format!("_layers/sha256/{hex}/link")).exists(),
                    "manifest {d} names {b}, not linked into the repository"
                );
                assert!(
                    blob_path(&b).exists(),
                    "manifest {d} names {b}, which is not stored"
                );
            }
        }
        for l in visible_entries(&repo.join("_layers/sha256")) {
            let link = l.join("link");
            assert!(
                link.exists(),
                "layer link directory {} is empty",
                l.display()
            );
            let d = read_link(&link);
            assert!(blob_path(&d).exists(), "layer link to {d} without its blob");
        }
    }
    blobs
}

/// A directory's entries (none when it does not exist).
fn visible_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Every path under `dir` whose name is one of Berth's (`.berth*`): a temporary where
/// distribution's tools would read it.
fn berth_entries_in(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with(".berth") {
                found.push(e.path());
            } else if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

/// Tags and untags manifests in a repository of its own until a request fails: each tag
/// appears as a new directory tree and each deletion takes one out of the layout, the other
/// kinds of temporary a crash may interrupt. (Its own repository: a tag deleted while a pusher
/// moves it is a race between clients, not what this test is about.)
fn deleter(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let c = Client::new(&url, None);
    let repo = "crash/deleter";
    let img = berth_conformance::fixtures::Image::oci(&format!("deleter-{seed}"), 1, "");
    if c.push_image(repo, "base", &img).is_err() {
        return;
    }
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let tag = format!("d{}", n % 4);
        let put = c.put_manifest(repo, &tag, img.media_type, &img.manifest);
        let del = c.delete(&format!("/v2/{repo}/manifests/{tag}"));
        if put.is_err() || del.is_err() {
            return;
        }
    }
}

/// Every upload under way when the server died resumes from the reported offset and completes,
/// or is cleanly unknown.
fn resume(url: &str, pending: &[Pending]) -> (usize, usize) {
    let c = Client::new(url, None);
    let (mut resumed, mut unknown) = (0, 0);
    for p in pending {
        // The restarted server listens on another port: keep the path of the upload URL.
        let path = &p.location[p.location.find("/v2/").unwrap()..];
        let st = c.get(path, &[]).unwrap();
        match st.status {
            404 => {
                unknown += 1;
                continue;
            }
            204 => {}
            _ => panic!("upload status after a crash: {}", st.describe()),
        }
        let range = st.header("range").unwrap();
        let end: usize = range.rsplit('-').next().unwrap().parse().unwrap();
        // `0-0` means no byte or one byte (distribution's convention too): try both.
        let candidates = if end == 0 { vec![0, 1] } else { vec![end + 1] };
        let mut loc = st.header("location").unwrap().to_owned();
        let mut done = false;
        for offset in candidates {
            assert!(
                offset <= p.data.len(),
                "offset {offset} beyond the data ({range})"
            );
            if offset == p.data.len() {
                done = true;
                break;
            }
            let range = format!("{offset}-{}", p.data.len() - 1);
            let r = c
                .send(
                    "PATCH",
                    &loc,
                    &[("Content-Type", OCTET), ("Content-Range", &range)],
                    Body::Bytes(&p.data[offset..]),
                )
                .unwrap();
            if r.status == 416 {
                continue;
            }
            assert_eq!(r.status, 202, "{}", r.describe());
            loc = r.header("location").unwrap().to_owned();
            done = true;
            break;
        }
        assert!(done, "no offset accepted after {range}");
        let r = c
            .send(
                "PUT",
                &with_query(&loc, "digest", &digest(&p.data)),
                &[],
                Body::Bytes(&[]),
            )
            .unwrap();
        assert_eq!(r.status, 201, "resumed upload: {}", r.describe());
        let r = c
            .head(&format!("/v2/{}/blobs/{}", p.repo, digest(&p.data)))
            .unwrap();
        assert_eq!(r.status, 200);
        resumed += 1;
    }
    (resumed, unknown)
}

#[test]
fn sigkill_during_pushes_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let seed = announced_seed("crash test");
    let mut rng = Rng(seed | 1);
    let mut totals = (0, 0);
    for round in 0..KILLS {
        let mut berth = Berth::start_on(&root, "");
        let pending = Arc::new(Mutex::new(vec![None; CLIENTS]));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (url, pending, stop) = (berth.url.clone(), pending.clone(), stop.clone());
                let s = seed.wrapping_add((round * CLIENTS + id) as u64 * 7919);
                std::thread::spawn(move || pusher(url, id, s, pending, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        berth.kill();
        stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        for c in clients {
            c.join().unwrap();
        }
        assert!(Instant::now() < deadline);
        verify(&root);
        let berth = Berth::start_on(&root, "");
        let pending: Vec<Pending> = pending.lock().unwrap().iter().flatten().cloned().collect();
        let (r, u) = resume(&berth.url, &pending);
        totals.0 += r;
        totals.1 += u;
        // Everything tagged is served with the digest its tag names.
        tagged_served(&Client::new(&berth.url, None), &root);
        drop(berth);
        verify(&root);
    }
    let blobs = verify(&root);
    eprintln!(
        "{blobs} blobs verified; interrupted uploads: {} resumed, {} cleanly unknown",
        totals.0, totals.1
    );
    assert!(
        blobs > CLIENTS,
        "the clients pushed almost nothing; the test proves nothing"
    );
}

/// Every tag the clients' repositories under `root` hold is served with the digest its tag
/// link names: (repository, manifest) of each.
fn tagged_served(c: &Client, root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut served = Vec::new();
    for id in 0..CLIENTS {
        let repo = format!("crash/client{id}");
        let tags = root.join(format!(
            "docker/registry/v2/repositories/{repo}/_manifests/tags"
        ));
        for t in visible_entries(&tags) {
            let want = read_link(&t.join("current/link"));
            let name = t.file_name().unwrap().to_string_lossy().into_owned();
            let r = c.get(&format!("/v2/{repo}/manifests/{name}"), &[]).unwrap();
            assert_eq!(r.status, 200, "{}", r.describe());
            assert_eq!(digest(&r.body), want);
            served.push((repo.clone(), r.body));
        }
    }
    served
}

/// A seed from the clock, printed so that a failure names the seed it ran with.
fn announced_seed(what: &str) -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("{what} seed {seed}");
    seed
}

fn dist_gc_runs_cleanly(root: &Path, args: &[&str]) {
    let (ok, out) = distribution_gc(root, args);
    assert!(ok, "distribution's garbage-collect {args:?} failed:\n{out}");
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("failed") && !lower.contains("panic"),
        "distribution's garbage-collect {args:?}:\n{out}"
    );
}

#[test]
fn sigkill_leaves_nothing_in_distributions_tree_and_its_gc_runs_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let v2 = root.join("docker/registry/v2");
    let scratch = root.join(".berth/tmp");
    let seed = announced_seed("crash interop");
    let mut rng = Rng(seed | 1);
    let locks = || -> Vec<PathBuf> {
        visible_entries(&scratch)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "lock"))
            .collect()
    };
    let mut leftovers_seen = 0;
    let mut dead: Vec<PathBuf> = Vec::new();
    for round in 0..3 {
        let mut berth = Berth::start_on(&root, "");
        // The previous round's killed process left its scratch directory and lock: the start
        // removed them.
        for d in &dead {
            assert!(
                !d.exists(),
                "a dead process's scratch survived the start: {d:?}"
            );
            assert!(!d.with_extension("").exists(), "{d:?}");
        }
        let pending = Arc::new(Mutex::new(vec![None; CLIENTS]));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (url, pending, stop) = (berth.url.clone(), pending.clone(), stop.clone());
                let s = seed.wrapping_add((round * CLIENTS + id) as u64 * 7919);
                std::thread::spawn(move || pusher(url, id, s, pending, stop))
            })
            .collect();
        let (url, stop2) = (berth.url.clone(), stop.clone());
        let s = seed.wrapping_add(round as u64);
        threads.push(std::thread::spawn(move || deleter(url, s, stop2)));
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        berth.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        // The killed process wrote, so it had a scratch directory, left behind by SIGKILL.
        dead = locks();
        assert_eq!(dead.len(), 1, "{dead:?}");
        // Nothing of Berth's inside distribution's tree, whatever the kill interrupted.
        let stray = berth_entries_in(&v2);
        assert!(
            stray.is_empty(),
            "Berth's temporaries in the layout: {stray:?}"
        );
        leftovers_seen += std::fs::read_dir(&scratch)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some()))
            .count();
        verify(&root);
        // distribution's collector reads every blob and repository: it must find nothing it
        // does not understand.
        dist_gc_runs_cleanly(&root, &["--dry-run", "--delete-untagged"]);
    }
    // And for real, over what the last kill left (it deletes the blobs of interrupted pushes).
    dist_gc_runs_cleanly(&root, &[]);
    eprintln!("scratch directories with a dead process's work, seen after kills: {leftovers_seen}");
    // A last start cleans the last kill's scratch and serves everything tagged.
    let berth = Berth::start_on(&root, "");
    for d in &dead {
        assert!(
            !d.exists(),
            "a dead process's scratch survived the start: {d:?}"
        );
    }
    let c = Client::new(&berth.url, None);
    let served = tagged_served(&c, &root);
    for (repo, manifest) in &served {
        let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        for l in m["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            let r = c.head(&format!("/v2/{repo}/blobs/{d}")).unwrap();
            assert_eq!(r.status, 200, "layer {d} of a tagged manifest");
        }
    }
    assert!(
        !served.is_empty(),
        "nothing tagged survived: the test proves nothing"
    );
}

/// Data written by an older Berth, which left `.berth-tmp-*` temporaries beside their targets
/// (here a manifest blob's directory under construction, as a crash left it): distribution's
/// collector fails on it ("invalid checksum digest format"); a Berth start removes them (once
/// they are old enough not to belong to an older replica still running), after which the
/// collector runs cleanly, and listings never showed them meanwhile.
#[test]
fn an_older_berths_temporaries_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // The data of an older Berth: written here by distribution (this Berth would mark the
    // root as swept).
    let registry = support::Distribution::start(&root);
    let c = Client::new(&registry.url, None);
    let img = berth_conformance::fixtures::Image::oci("legacy", 1, "");
    c.push_image("legacy/app", "v1", &img).unwrap();
    drop(registry);
    let v2 = root.join("docker/registry/v2");
    let legacy = [
        v2.join("blobs/sha256/ab/.berth-tmp-0123456789abcdef"),
        v2.join("repositories/legacy/app/_manifests/tags/.berth-tmp-fedcba9876543210"),
    ];
    for l in &legacy {
        std::fs::create_dir_all(l).unwrap();
        std::fs::write(l.join("data"), b"{}").unwrap();
        std::fs::File::open(l)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }
    let (ok, out) = distribution_gc(&root, &["--dry-run"]);
    assert!(!ok, "the precondition: distribution fails on them\n{out}");

    let berth = Berth::start_on(&root, "");
    berth.wait_log("the sweep of old temporaries", |l| {
        l.contains("temporaries of an older Berth")
    });
    for l in &legacy {
        assert!(!l.exists(), "{} survived the start", l.display());
    }
    let r = c_get(&berth.url, "/v2/legacy/app/tags/list");
    assert_eq!(r, r#"{"name":"legacy/app","tags":["v1"]}"#);
    drop(berth);
    dist_gc_runs_cleanly(&root, &["--dry-run", "--delete-untagged"]);
}

fn c_get(url: &str, path: &str) -> String {
    let r = Client::new(url, None).get(path, &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    String::from_utf8(r.body).unwrap()
}
