//! Crash consistency: Berth is killed with SIGKILL at random moments while several clients push
//! (chunked and monolithic blobs, manifests, tags that move between manifests). After each
//! kill the data directory must hold no blob whose bytes do not match its digest, no tag or
//! revision pointing at a manifest that is not stored, no manifest whose blobs are missing;
//! and every upload that was under way either resumes from the offset Berth reports and
//! completes with the right digest, or is cleanly unknown (404).
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
use support::Berth;

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
                if name.starts_with(".berth-tmp-") {
                    continue;
                }
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

/// A directory's entries (none when it does not exist), without the temporary ones a crash
/// may leave (`.berth-tmp-*`, hidden from every listing).
fn visible_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".berth-tmp-"))
        })
        .collect()
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
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
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
        let c = Client::new(&berth.url, None);
        for id in 0..CLIENTS {
            let tags = root.join(format!(
                "docker/registry/v2/repositories/crash/client{id}/_manifests/tags"
            ));
            for t in visible_entries(&tags) {
                let want = read_link(&t.join("current/link"));
                let name = t.file_name().unwrap().to_string_lossy().into_owned();
                let r = c
                    .get(&format!("/v2/crash/client{id}/manifests/{name}"), &[])
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.describe());
                assert_eq!(digest(&r.body), want);
            }
        }
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
