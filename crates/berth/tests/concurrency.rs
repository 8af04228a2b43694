//! Races through a real `berth serve` on filesystem storage: 16 clients pushing the same blob
//! at once (monolithic, POST-then-PUT, chunked and streamed), 16 clients moving one tag among
//! 16 manifests while others read it, and pulls racing deletes. Every response must be a
//! success or one of the spec's errors, and what is stored afterwards must be whole and
//! consistent: one blob with the right bytes, a tag that resolves to a manifest whose digest is
//! the one served, a tag history with every digest the tag had, and never a truncated `200`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use berth_conformance::client::{with_query, Body, Client};
use berth_conformance::fixtures::{bytes, digest, expect_status, Image, OCI_MANIFEST};
use support::Berth;

const CLIENTS: usize = 16;

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn log_problems(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains(" ERROR ") || l.contains("status=5"))
        .collect()
}

/// One push of `data` in the `way`-th of four styles; returns the final status.
fn push_one(c: &Client, repo: &str, data: &[u8], way: usize) -> Result<u16, String> {
    let d = digest(data);
    let put = |loc: &str, body: Body<'_>| {
        c.send("PUT", &with_query(loc, "digest", &d), &[], body)
            .map(|r| r.status)
    };
    match way % 4 {
        // A single POST with the digest.
        0 => c
            .send(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[],
                Body::Bytes(data),
            )
            .map(|r| r.status),
        // POST, then PUT with the whole body.
        1 => put(&c.start_upload(repo)?, Body::Bytes(data)),
        // 1 MiB chunks with Content-Range, then an empty PUT.
        2 => {
            let mut loc = c.start_upload(repo)?;
            for (i, chunk) in data.chunks(1 << 20).enumerate() {
                let start = i << 20;
                let range = format!("{start}-{}", start + chunk.len() - 1);
                let r = c.send(
                    "PATCH",
                    &loc,
                    &[("Content-Range", &range)],
                    Body::Bytes(chunk),
                )?;
                if r.status != 202 {
                    return Ok(r.status);
                }
                loc = r.header("location").unwrap().to_owned();
            }
            put(&loc, Body::Bytes(&[]))
        }
        // One streamed PATCH (chunked transfer encoding), then an empty PUT.
        _ => {
            let loc = c.start_upload(repo)?;
            let r = c.send("PATCH", &loc, &[], Body::Chunked(data))?;
            if r.status != 202 {
                return Ok(r.status);
            }
            put(r.header("location").unwrap(), Body::Bytes(&[]))
        }
    }
}

#[test]
fn sixteen_clients_push_the_same_blob() {
    let b = Berth::start();
    let data = bytes("same-blob", 8 << 20);
    let d = digest(&data);
    let barrier = Barrier::new(CLIENTS);
    let statuses: Vec<Result<u16, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (b, data, barrier) = (&b, &data, &barrier);
                s.spawn(move || {
                    let c = Client::new(&b.url, None);
                    barrier.wait();
                    push_one(&c, "race/blob", data, i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, st) in statuses.iter().enumerate() {
        assert_eq!(st, &Ok(201), "client {i} (style {})", i % 4);
    }
    let c = Client::new(&b.url, None);
    let r = c.get(&format!("/v2/race/blob/blobs/{d}"), &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body == data,
        "the stored blob differs from what was pushed"
    );
    // One blob, no stray temporary files beside it, no upload session left behind.
    let v2 = b.root.join("docker/registry/v2");
    let blobs = files(&v2.join("blobs"));
    assert_eq!(
        blobs,
        vec![format!("sha256/{}/{}/data", &d[7..9], &d[7..])],
        "blob store: {blobs:?}"
    );
    let uploads = files(&v2.join("repositories/race/blob/_uploads"));
    assert!(uploads.is_empty(), "left-over upload files: {uploads:?}");
    assert!(log_problems(&b.log()).is_empty(), "{}", b.log());
}

#[test]
fn sixteen_clients_move_one_tag() {
    let b = Berth::start();
    let c = Client::new(&b.url, None);
    // 16 images sharing one config and layer (pushed once), each its own manifest.
    let base = Image::oci("tag-race", 1, "");
    for blob in base.blobs() {
        c.push_blob("race/tag", blob).unwrap();
    }
    let images: Vec<Image> = (0..CLIENTS)
        .map(|i| {
            let extra = format!(r#","annotations":{{"n":"{i}"}}"#);
            Image::with_layers("tag-race", base.layers.clone(), &extra)
        })
        .collect();
    let digests: BTreeSet<String> = images.iter().map(|i| i.digest()).collect();
    assert_eq!(digests.len(), CLIENTS);
    for img in &images {
        let r = c
            .put_manifest("race/tag", &img.digest(), OCI_MANIFEST, &img.manifest)
            .unwrap();
        expect_status(&r, &[201]).unwrap();
    }

    let rounds = 5;
    let writing = AtomicBool::new(true);
    let reads = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::<String>::new());
    let barrier = Barrier::new(CLIENTS + 4);
    std::thread::scope(|s| {
        // Readers: every GET of the tag is one of the manifests, whole, under its digest.
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (b, digests, writing, reads, problems, barrier) =
                    (&b, &digests, &writing, &reads, &problems, &barrier);
                s.spawn(move || {
                    let c = Client::new(&b.url, None);
                    barrier.wait();
                    while writing.load(Ordering::Acquire) {
                        let r = c.get("/v2/race/tag/manifests/moving", &[]).unwrap();
                        reads.fetch_add(1, Ordering::Relaxed);
                        match r.status {
                            // Before the first PUT lands.
                            404 if r.error_codes() == ["MANIFEST_UNKNOWN"] => {}
                            200 => {
                                let served = r.header("docker-content-digest").unwrap_or("");
                                if digest(&r.body) != served || !digests.contains(served) {
                                    problems.lock().unwrap().push(format!(
                                        "GET served {} bytes as {served}",
                                        r.body.len()
                                    ));
                                }
                            }
                            _ => problems.lock().unwrap().push(r.describe()),
                        }
                    }
                })
            })
            .collect();
        let writers: Vec<_> = images
            .iter()
            .map(|img| {
                let (b, problems, barrier) = (&b, &problems, &barrier);
                s.spawn(move || {
                    let c = Client::new(&b.url, None);
                    barrier.wait();
                    for _ in 0..rounds {
                        let r = c
                            .put_manifest("race/tag", "moving", OCI_MANIFEST, &img.manifest)
                            .unwrap();
                        if r.status != 201
                            || r.header("docker-content-digest") != Some(&img.digest())
                        {
                            problems.lock().unwrap().push(r.describe());
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        writing.store(false, Ordering::Release);
        for r in readers {
            r.join().unwrap();
        }
    });
    let problems = problems.into_inner().unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(reads.load(Ordering::Relaxed) > 0);

    // The tag resolves to one of the manifests, served under its own digest, and the link
    // says the same.
    let r = c.get("/v2/race/tag/manifests/moving", &[]).unwrap();
    assert_eq!(r.status, 200);
    let served = r.header("docker-content-digest").unwrap().to_owned();
    assert_eq!(digest(&r.body), served);
    assert!(digests.contains(&served));
    let tag_dir = b
        .root
        .join("docker/registry/v2/repositories/race/tag/_manifests/tags/moving");
    let current = std::fs::read_to_string(tag_dir.join("current/link")).unwrap();
    assert_eq!(current, served);
    // The tag's history lists every digest it had, each link naming its own directory.
    let index: BTreeSet<String> = files(&tag_dir.join("index"))
        .into_iter()
        .map(|f| {
            let link = std::fs::read_to_string(tag_dir.join("index").join(&f)).unwrap();
            let (alg, rest) = f.split_once('/').unwrap();
            let hex = rest.strip_suffix("/link").unwrap();
            assert_eq!(link, format!("{alg}:{hex}"), "index entry {f}");
            link
        })
        .collect();
    assert_eq!(index, digests, "tag index");
    // HEAD agrees with GET.
    let h = c.head("/v2/race/tag/manifests/moving").unwrap();
    assert_eq!(h.header("docker-content-digest"), Some(served.as_str()));
    assert!(log_problems(&b.log()).is_empty(), "{}", b.log());
}

#[test]
fn pulls_racing_deletes_are_whole_or_404() {
    let b = Berth::start();
    let c = Client::new(&b.url, None);
    let layer = bytes("pull-delete", 4 << 20);
    let img = Image::with_layers("pull-delete", vec![layer.clone()], "");
    c.push_image("race/del", "v1", &img).unwrap();
    let layer_d = digest(&layer);
    let manifest_d = img.digest();

    let stop = AtomicBool::new(false);
    let problems = Mutex::new(Vec::<String>::new());
    let (whole, gone) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let barrier = Barrier::new(5);
    std::thread::scope(|s| {
        for i in 0..4 {
            let (b, stop, problems, whole, gone, barrier, layer_d, manifest_d) = (
                &b,
                &stop,
                &problems,
                &whole,
                &gone,
                &barrier,
                &layer_d,
                &manifest_d,
            );
            s.spawn(move || {
                let c = Client::new(&b.url, None);
                barrier.wait();
                while !stop.load(Ordering::Acquire) {
                    let (path, want, unknown) = if i % 2 == 0 {
                        (
                            format!("/v2/race/del/blobs/{layer_d}"),
                            layer_d,
                            "BLOB_UNKNOWN",
                        )
                    } else {
                        (
                            format!("/v2/race/del/manifests/{manifest_d}"),
                            manifest_d,
                            "MANIFEST_UNKNOWN",
                        )
                    };
                    match c.get(&path, &[]) {
                        Ok(r) if r.status == 200 => {
                            let expected_len = r
                                .header("content-length")
                                .and_then(|l| l.parse::<usize>().ok());
                            if digest(&r.body) != *want || expected_len != Some(r.body.len()) {
                                problems.lock().unwrap().push(format!(
                                    "{path}: a 200 with {} bytes that are not the content",
                                    r.body.len()
                                ));
                            }
                            whole.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) if r.status == 404 && r.error_codes() == [unknown] => {
                            gone.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => problems.lock().unwrap().push(r.describe()),
                        // A body cut short shows as a read error: a truncated 200.
                        Err(e) => problems.lock().unwrap().push(e),
                    }
                }
            });
        }
        let (b, stop, barrier, layer_d, manifest_d) = (&b, &stop, &barrier, &layer_d, &manifest_d);
        s.spawn(move || {
            let c = Client::new(&b.url, None);
            barrier.wait();
            std::thread::sleep(Duration::from_millis(500));
            let r = c
                .delete(&format!("/v2/race/del/manifests/{manifest_d}"))
                .unwrap();
            assert_eq!(r.status, 202, "{}", r.describe());
            let r = c.delete(&format!("/v2/race/del/blobs/{layer_d}")).unwrap();
            assert_eq!(r.status, 202, "{}", r.describe());
            // Readers keep going a while after the deletes.
            let until = Instant::now() + Duration::from_millis(700);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Release);
        });
    });
    let problems = problems.into_inner().unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        whole.load(Ordering::Relaxed) > 0,
        "no pull got through before the delete"
    );
    assert!(gone.load(Ordering::Relaxed) > 0, "no pull saw the delete");
    // Afterwards both are gone for good.
    let r = c
        .get(&format!("/v2/race/del/blobs/{layer_d}"), &[])
        .unwrap();
    assert_eq!(
        (r.status, r.error_codes()),
        (404, vec!["BLOB_UNKNOWN".to_owned()])
    );
    let r = c
        .get(&format!("/v2/race/del/manifests/{manifest_d}"), &[])
        .unwrap();
    assert_eq!(
        (r.status, r.error_codes()),
        (404, vec!["MANIFEST_UNKNOWN".to_owned()])
    );
    assert!(log_problems(&b.log()).is_empty(), "{}", b.log());
}
