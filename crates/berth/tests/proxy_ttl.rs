//! `proxy.ttl`: what the pull-through cache stored expires as distribution's scheduler
//! expires it, the schedule is kept in distribution's `/scheduler-state.json` across restarts
//! (and read by distribution 2.8 itself), and Berth's multi-upstream form expires only the
//! cache's links beside hosted repositories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_conformance::client::Client;
use berth_conformance::fixtures::{digest, Image};
use support::{pull_checked, Berth, Distribution};

fn v2(root: &Path) -> std::path::PathBuf {
    root.join("docker/registry/v2")
}

fn blob_dir(root: &Path, d: &str) -> std::path::PathBuf {
    let hex = d.trim_start_matches("sha256:");
    v2(root).join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
}

fn layer_link(root: &Path, repo: &str, d: &str) -> std::path::PathBuf {
    let hex = d.trim_start_matches("sha256:");
    v2(root).join(format!("repositories/{repo}/_layers/sha256/{hex}/link"))
}

fn revision_link(root: &Path, repo: &str, d: &str) -> std::path::PathBuf {
    let hex = d.trim_start_matches("sha256:");
    v2(root).join(format!(
        "repositories/{repo}/_manifests/revisions/sha256/{hex}/link"
    ))
}

/// Polls `cond` for up to `secs` seconds.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The saved schedule: key → (ExpiryData, EntryType).
fn schedule(root: &Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(root.join("scheduler-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// A Berth serving `img` as `repo:v1`, the upstream of a mirror.
fn upstream_serving(repo: &str, img: &Image) -> Berth {
    let up = Berth::start();
    Client::new(&up.url, None)
        .push_image(repo, "v1", img)
        .unwrap();
    up
}

fn mirror_yaml(dir: &Path, upstream: &str, ttl: &str) -> String {
    format!(
        "proxy:\n  remoteurl: {upstream}\n  ttl: {ttl}\n  spooldir: {}\n",
        dir.join("spool").display()
    )
}

#[test]
fn distribution_form_expires_what_it_cached_and_the_schedule_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let img = Image::oci("ttl-mirror", 2, "");
    let up = upstream_serving("library/app", &img);
    let root = dir.path().join("mirror");
    let yaml = mirror_yaml(dir.path(), &up.url, "4s");
    let mut m = Berth::start_on(&root, &yaml);
    let c = Client::new(&m.url, None);
    let pulled = Instant::now();
    pull_checked(&c, "library/app", "v1", &img);

    let manifest = img.digest();
    let blobs: Vec<String> = img.blobs().map(|b| digest(b)).collect();
    // The cache's copy is committed just after the client got the last byte.
    wait_until("the blobs cached", 10, || {
        blobs.iter().all(|b| {
            blob_dir(&root, b).join("data").exists() && layer_link(&root, "library/app", b).exists()
        })
    });
    assert!(revision_link(&root, "library/app", &manifest).exists());

    // The schedule reaches storage in distribution's format within a moment.
    let key = |d: &str| format!("library/app@{d}");
    wait_until("the schedule in scheduler-state.json", 10, || {
        let s = schedule(&root);
        s.contains_key(&key(&manifest)) && blobs.iter().all(|b| s.contains_key(&key(b)))
    });
    let s = schedule(&root);
    assert_eq!(s[&key(&manifest)]["EntryType"], 1, "{s:?}");
    assert_eq!(s[&key(&manifest)]["Key"], key(&manifest).as_str());
    for b in &blobs {
        assert_eq!(s[&key(b)]["EntryType"], 0, "{s:?}");
        let when = s[&key(b)]["ExpiryData"].as_str().unwrap();
        assert!(
            when.len() >= 20 && when.as_bytes()[10] == b'T' && when.ends_with('Z'),
            "ExpiryData {when:?} is not RFC 3339 UTC"
        );
    }

    // Killed before the time is up: the next process expires the content.
    m.kill();
    assert!(
        pulled.elapsed() < Duration::from_secs(4),
        "too slow to test the restart"
    );
    assert!(!m.log().contains("cached content expired"), "{}", m.log());
    let m = Berth::start_on(&root, &yaml);
    let entries = blobs.len() + 1;
    m.wait_log("the schedule read back", |l| {
        l.contains(&format!(
            "proxy cache expiry scheduler started entries={entries}"
        ))
    });
    wait_until("the cached content to go", 15, || {
        blobs.iter().all(|b| !blob_dir(&root, b).exists())
    });
    wait_until("the links to go", 5, || {
        blobs
            .iter()
            .all(|b| !layer_link(&root, "library/app", b).exists())
            && !revision_link(&root, "library/app", &manifest).exists()
    });
    assert!(
        !v2(&root)
            .join("repositories/library/app/_manifests/tags/v1")
            .exists(),
        "the tag of the expired manifest remained"
    );
    assert!(
        pulled.elapsed() >= Duration::from_secs(4),
        "expired before its time"
    );
    m.wait_log("an INFO line per expiry", |l| {
        l.matches("cached content expired").count() == entries
    });
    wait_until("the schedule emptied", 10, || schedule(&root).is_empty());

    // The cache fills again from upstream.
    let c = Client::new(&m.url, None);
    pull_checked(&c, "library/app", "v1", &img);
    wait_until("the blobs cached again", 10, || {
        blobs
            .iter()
            .all(|b| blob_dir(&root, b).join("data").exists())
    });
}

#[test]
fn zero_ttl_never_expires_and_writes_no_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let img = Image::oci("ttl-zero", 1, "");
    let up = upstream_serving("library/zero", &img);
    let root = dir.path().join("mirror");
    let m = Berth::start_on(&root, &mirror_yaml(dir.path(), &up.url, "0s"));
    pull_checked(&Client::new(&m.url, None), "library/zero", "v1", &img);
    assert!(
        m.log().contains("cache_ttl_s=0"),
        "the TTL is not reported as off:\n{}",
        m.log()
    );
    assert!(!m.log().contains("expiry scheduler started"));
    assert!(!root.join("scheduler-state.json").exists());
    wait_until("the blobs cached", 10, || {
        img.blobs()
            .all(|b| blob_dir(&root, &digest(b)).join("data").exists())
    });
    assert!(!root.join("scheduler-state.json").exists());
}

/// The schedule Berth writes is the one distribution 2.8 reads: a Berth mirror with a short
/// TTL is stopped, and distribution 2.8 as the pull-through cache on the same directory
/// expires the content.
#[test]
fn distribution_2_8_executes_the_schedule_berth_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let img = Image::oci("ttl-interop", 1, "");
    let up = upstream_serving("library/inter", &img);
    let root = dir.path().join("mirror");
    let mut m = Berth::start_on(&root, &mirror_yaml(dir.path(), &up.url, "2s"));
    pull_checked(&Client::new(&m.url, None), "library/inter", "v1", &img);
    let blob = digest(img.blobs().next().unwrap());
    wait_until("the schedule saved", 10, || {
        schedule(&root).contains_key(&format!("library/inter@{blob}"))
    });
    m.kill();
    let _d = Distribution::start_with_extra(&root, &format!("proxy:\n  remoteurl: {}\n", up.url));
    wait_until("distribution to expire the blob Berth cached", 20, || {
        !blob_dir(&root, &blob).join("data").exists()
    });
    assert!(!layer_link(&root, "library/inter", &blob).exists());
    assert!(!revision_link(&root, "library/inter", &img.digest()).exists());
}

/// Beside hosted repositories (Berth's `upstreams` form), an expired blob leaves the cache's
/// repository only: a hosted repository with the same layer keeps it.
#[test]
fn upstreams_form_expires_the_cache_links_and_keeps_shared_content() {
    let dir = tempfile::tempdir().unwrap();
    let img = Image::oci("ttl-upstreams", 2, "");
    let up = upstream_serving("library/up", &img);
    let root = dir.path().join("mirror");
    let yaml = format!(
        "proxy:\n  spooldir: {}\n  upstreams:\n    - name: docker.io\n      remoteurl: {}\n      cachettl: 2s\n    - name: quay.io\n      remoteurl: {}\n      cachettl: 0s\n",
        dir.path().join("spool").display(),
        up.url,
        up.url
    );
    let m = Berth::start_on(&root, &yaml);
    let c = Client::new(&m.url, None);
    // The same image hosted here, and pulled through both upstreams.
    c.push_image("team/app", "v1", &img).unwrap();
    pull_checked(&c, "docker.io/library/up", "v1", &img);
    pull_checked(&c, "quay.io/library/up", "v1", &img);
    let blobs: Vec<String> = img.blobs().map(|b| digest(b)).collect();
    wait_until("the docker.io links to expire", 15, || {
        blobs
            .iter()
            .all(|b| !layer_link(&root, "docker.io/library/up", b).exists())
            && !revision_link(&root, "docker.io/library/up", &img.digest()).exists()
    });
    for b in &blobs {
        assert!(
            blob_dir(&root, b).join("data").exists(),
            "shared content removed"
        );
        assert!(
            layer_link(&root, "quay.io/library/up", b).exists(),
            "an upstream with cachettl 0 expired"
        );
    }
    assert!(!schedule(&root).keys().any(|k| k.starts_with("quay.io/")));
    pull_checked(&c, "team/app", "v1", &img);
    pull_checked(&c, "quay.io/library/up", "v1", &img);
    pull_checked(&c, "docker.io/library/up", "v1", &img);
}

/// Two replicas on one storage root: each saves the schedule by merging with the file, so
/// neither drops what the other scheduled (distribution's last writer would win), and every
/// entry expires.
#[test]
fn replicas_sharing_storage_merge_their_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let up = Berth::start();
    let (one, two) = (
        Image::oci("replica-one", 1, ""),
        Image::oci("replica-two", 1, ""),
    );
    let upc = Client::new(&up.url, None);
    upc.push_image("library/one", "v1", &one).unwrap();
    upc.push_image("library/two", "v1", &two).unwrap();
    let root = dir.path().join("mirror");
    let yaml = mirror_yaml(dir.path(), &up.url, "6s");
    let a = Berth::start_on(&root, &yaml);
    let b = Berth::start_on(&root, &yaml);
    let keys = |repo: &str, img: &Image| -> Vec<String> {
        std::iter::once(img.digest())
            .chain(img.blobs().map(|b| digest(b)))
            .map(|d| format!("{repo}@{d}"))
            .collect()
    };
    let (k1, k2) = (keys("library/one", &one), keys("library/two", &two));
    pull_checked(&Client::new(&a.url, None), "library/one", "v1", &one);
    wait_until("replica A's entries saved", 10, || {
        let s = schedule(&root);
        k1.iter().all(|k| s.contains_key(k))
    });
    pull_checked(&Client::new(&b.url, None), "library/two", "v1", &two);
    wait_until("replica B's entries saved beside A's", 10, || {
        let s = schedule(&root);
        k1.iter().chain(&k2).all(|k| s.contains_key(k))
    });
    let blobs: Vec<String> = one.blobs().chain(two.blobs()).map(|b| digest(b)).collect();
    wait_until("everything both replicas cached to expire", 20, || {
        blobs.iter().all(|d| !blob_dir(&root, d).exists())
    });
    wait_until("the schedule emptied", 10, || schedule(&root).is_empty());
}

/// The other way round: the schedule distribution 2.8 wrote as a pull-through cache is read
/// by Berth on the same directory.
#[test]
fn berth_reads_the_schedule_distribution_2_8_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let img = Image::oci("ttl-from-distribution", 1, "");
    let up = upstream_serving("library/from", &img);
    let root = dir.path().join("mirror");
    let d = Distribution::start_with_extra(&root, &format!("proxy:\n  remoteurl: {}\n", up.url));
    pull_checked(&Client::new(&d.url, None), "library/from", "v1", &img);
    let blob = format!("library/from@{}", digest(img.blobs().next().unwrap()));
    // distribution saves its schedule every 5 s.
    wait_until("distribution's schedule", 20, || {
        schedule(&root).contains_key(&blob)
    });
    drop(d);
    let written = schedule(&root);
    let m = Berth::start_on(&root, &mirror_yaml(dir.path(), &up.url, "168h"));
    m.wait_log("the schedule read", |l| {
        l.contains(&format!(
            "proxy cache expiry scheduler started entries={}",
            written.len()
        ))
    });
    // Its dates are a week ahead: nothing expires, and the cache serves what distribution stored.
    pull_checked(&Client::new(&m.url, None), "library/from", "v1", &img);
    assert!(!m.log().contains("cached content expired"));
}
