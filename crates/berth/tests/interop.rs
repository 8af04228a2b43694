//! Storage-layout compatibility with distribution, proven on one data directory: what
//! Debian's `docker-registry` (distribution 2.8) wrote, Berth serves with the same digests,
//! media types and tags, and the other way round; an upload begun on distribution is finished
//! by Berth, which resumes from distribution's saved SHA-256 state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use berth_conformance::client::{with_query, Body, Client};
use berth_conformance::fixtures::{
    bytes, digest, expect_status, index, location, Image, DOCKER_LIST, OCI_INDEX, OCTET,
};
use support::{Berth, Distribution};

/// What one registry was given, to check on the other.
struct Pushed {
    repo: String,
    /// (tag, manifest bytes, media type)
    manifests: Vec<(String, Vec<u8>, String)>,
    blobs: Vec<Vec<u8>>,
}

/// Pushes an OCI image, a Docker schema2 image, a Docker manifest list and an OCI index, each
/// under its own tag, through `c`.
fn push_set(c: &Client, repo: &str, seed: &str) -> Pushed {
    let oci = Image::oci(&format!("{seed}-oci"), 2, "");
    let docker = Image::docker(&format!("{seed}-docker"));
    let arm = Image::oci(&format!("{seed}-arm"), 1, "");
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    for (tag, img) in [("oci", &oci), ("docker", &docker), ("arm", &arm)] {
        c.push_image(repo, tag, img).unwrap();
        manifests.push((
            tag.to_owned(),
            img.manifest.clone(),
            img.media_type.to_owned(),
        ));
        blobs.extend(img.blobs().cloned());
    }
    let list = index(DOCKER_LIST, &[(&docker, "amd64")], "");
    let r = c.put_manifest(repo, "list", DOCKER_LIST, &list).unwrap();
    expect_status(&r, &[201]).unwrap();
    manifests.push(("list".into(), list, DOCKER_LIST.into()));
    let idx = index(OCI_INDEX, &[(&oci, "amd64"), (&arm, "arm64")], "");
    let r = c.put_manifest(repo, "multi", OCI_INDEX, &idx).unwrap();
    expect_status(&r, &[201]).unwrap();
    manifests.push(("multi".into(), idx, OCI_INDEX.into()));
    Pushed {
        repo: repo.to_owned(),
        manifests,
        blobs,
    }
}

/// Pulls everything in `p` through `c` and compares bytes, digests, media types and tags.
fn check_set(c: &Client, p: &Pushed) {
    for (tag, body, media_type) in &p.manifests {
        let d = digest(body);
        for reference in [tag.as_str(), d.as_str()] {
            let r = c
                .get(&format!("/v2/{}/manifests/{reference}", p.repo), &[])
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.describe());
            assert_eq!(&r.body, body, "{reference}: different bytes");
            assert_eq!(
                r.header("content-type"),
                Some(media_type.as_str()),
                "{reference}"
            );
            assert_eq!(
                r.header("docker-content-digest"),
                Some(d.as_str()),
                "{reference}"
            );
        }
    }
    for b in &p.blobs {
        let d = digest(b);
        let r = c.get(&format!("/v2/{}/blobs/{d}", p.repo), &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(&r.body, b, "blob {d}");
    }
    let r = c.get(&format!("/v2/{}/tags/list", p.repo), &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let mut tags: Vec<String> = r.json().unwrap()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    let mut want: Vec<String> = p.manifests.iter().map(|m| m.0.clone()).collect();
    want.sort();
    assert_eq!(tags, want);
    let r = c.get("/v2/_catalog", &[]).unwrap();
    let repos = r.json().unwrap()["repositories"].clone();
    assert!(
        repos
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == p.repo.as_str()),
        "catalog {repos}"
    );
}

#[test]
fn distribution_writes_berth_serves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let pushed = {
        let dist = Distribution::start(&root);
        push_set(&Client::new(&dist.url, None), "from/distribution", "d2b")
    };
    let berth = Berth::start_on(&root, "");
    check_set(&Client::new(&berth.url, None), &pushed);
}

#[test]
fn berth_writes_distribution_serves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let pushed = {
        let berth = Berth::start_on(&root, "");
        let c = Client::new(&berth.url, None);
        let mut pushed = push_set(&c, "from/berth", "b2d");
        // A chunked upload and a referrer too: Berth's referrers index lives in its own
        // directory, which distribution must simply ignore.
        let big = bytes("chunked-interop", 700_000);
        let loc = c.start_upload("from/berth").unwrap();
        let mut loc = loc;
        for (i, chunk) in big.chunks(300_000).enumerate() {
            let start = i * 300_000;
            let range = format!("{start}-{}", start + chunk.len() - 1);
            let r = c
                .send(
                    "PATCH",
                    &loc,
                    &[("Content-Type", OCTET), ("Content-Range", &range)],
                    Body::Bytes(chunk),
                )
                .unwrap();
            expect_status(&r, &[202]).unwrap();
            loc = location(&r).unwrap();
        }
        let r = c
            .send(
                "PUT",
                &with_query(&loc, "digest", &digest(&big)),
                &[],
                Body::Bytes(&[]),
            )
            .unwrap();
        expect_status(&r, &[201]).unwrap();
        pushed.blobs.push(big);
        let subject = &pushed.manifests[0];
        let sig = Image::artifact(
            "interop-sig",
            "application/vnd.example.sig",
            Some((&digest(&subject.1), subject.1.len())),
        );
        c.push_image("from/berth", "sig", &sig).unwrap();
        pushed
            .manifests
            .push(("sig".into(), sig.manifest.clone(), sig.media_type.into()));
        pushed.blobs.extend(sig.blobs().cloned());
        pushed
    };
    let dist = Distribution::start(&root);
    check_set(&Client::new(&dist.url, None), &pushed);
}

/// distribution saves its SHA-256 state (Go's `MarshalBinary` form) under
/// `_uploads/<id>/hashstates/sha256/<offset>`; Berth continues such an upload without
/// re-reading what was received and the digest checks out.
#[test]
fn upload_begun_on_distribution_is_finished_by_berth() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let data = bytes("resume-across-registries", 1_500_000);
    let repo = "resume/across";
    let (loc_path, first) = {
        let dist = Distribution::start(&root);
        let c = Client::new(&dist.url, None);
        let loc = c.start_upload(repo).unwrap();
        let first = 1_000_000;
        let r = c
            .send(
                "PATCH",
                &loc,
                &[
                    ("Content-Type", OCTET),
                    ("Content-Range", &format!("0-{}", first - 1)),
                ],
                Body::Bytes(&data[..first]),
            )
            .unwrap();
        expect_status(&r, &[202]).unwrap();
        let loc = location(&r).unwrap();
        // The path (and its `_state`, which Berth ignores) without distribution's host.
        let path = loc[loc.find("/v2/").unwrap()..].to_owned();
        (path, first)
    };
    let id = loc_path
        .split("/blobs/uploads/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let states = root.join(format!(
        "docker/registry/v2/repositories/{repo}/_uploads/{id}/hashstates/sha256"
    ));
    let saved: Vec<String> = std::fs::read_dir(&states)
        .unwrap_or_else(|e| {
            panic!(
                "distribution saved no hash state in {}: {e}",
                states.display()
            )
        })
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        saved.contains(&first.to_string()),
        "distribution's saved states: {saved:?}"
    );

    // Flip a received byte on disk. Resuming from the saved state never reads it again, so the
    // client's digest still matches; re-hashing the data would compute another digest.
    let data_path = states.parent().unwrap().parent().unwrap().join("data");
    let mut on_disk = std::fs::read(&data_path).unwrap();
    assert_eq!(on_disk.len(), first);
    on_disk[10] ^= 0xff;
    std::fs::write(&data_path, &on_disk).unwrap();

    let berth = Berth::start_on(&root, "");
    let c = Client::new(&berth.url, None);
    let st = c.get(&loc_path, &[]).unwrap();
    assert_eq!(st.status, 204, "{}", st.describe());
    assert_eq!(
        st.header("range"),
        Some(format!("0-{}", first - 1).as_str())
    );
    let range = format!("{first}-{}", data.len() - 1);
    let r = c
        .send(
            "PATCH",
            &loc_path,
            &[("Content-Type", OCTET), ("Content-Range", &range)],
            Body::Bytes(&data[first..]),
        )
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.describe());
    let loc = location(&r).unwrap();
    let r = c
        .send(
            "PUT",
            &with_query(&loc, "digest", &digest(&data)),
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    assert_eq!(
        r.status,
        201,
        "not resumed from distribution's hash state: {}\n{}",
        r.describe(),
        berth.log()
    );
    let r = c
        .get(&format!("/v2/{repo}/blobs/{}", digest(&data)), &[])
        .unwrap();
    assert_eq!(r.body.len(), data.len());
    assert_eq!(r.body[first..], data[first..]);
}
