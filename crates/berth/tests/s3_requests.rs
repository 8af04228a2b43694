//! What each client operation costs in S3 requests, counted by the S3 server itself (a real
//! Garage, whose metrics count every request it answers): a blob push the way Docker,
//! containerd, oras and skopeo send it, a blob the repository or the registry already has
//! (`HEAD`, mount), a manifest push and a pull — with the in-memory blob-descriptor cache
//! (distribution's default configuration), with Redis, and without a cache; and real clients
//! (skopeo, Docker, containerd's `ctr`) pushing an image. The counts are printed
//! (`cargo nextest run -p berth --test s3_requests --no-capture`) and bounded, so a change
//! that adds requests to these paths fails here. The cheaper session paths are also checked
//! for what they must keep: sessions moving between replicas, a session an older Berth
//! started, and the conformance runner, all on Garage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "support/clients.rs"]
mod clients_support;

use std::collections::BTreeMap;

use berth_conformance::client::{with_query, Body, Client, Resp};
use berth_conformance::fixtures::{bytes, descriptor, digest, location, OCTET};
use support::{Berth, Garage, Redis};

/// One measured client operation.
struct Cost {
    what: &'static str,
    /// Requests by S3 API endpoint.
    by_op: BTreeMap<String, u64>,
}

impl Cost {
    fn total(&self) -> u64 {
        self.by_op.values().sum()
    }

    /// Requests other than `UploadPart` (the bytes themselves, one per `chunksize`).
    fn overhead(&self) -> u64 {
        self.total() - self.by_op.get("UploadPart").copied().unwrap_or(0)
    }
}

/// Counts the S3 requests `op` causes.
fn measure(garage: &Garage, what: &'static str, op: impl FnOnce()) -> Cost {
    let before = garage.s3_requests();
    op();
    let after = garage.s3_requests();
    let by_op = after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect();
    Cost { what, by_op }
}

fn ok(r: Resp, status: u16) -> Resp {
    assert_eq!(r.status, status, "{}", r.describe());
    r
}

/// The `PUT ?digest=` without a body that closes an upload session.
fn finish(c: &Client, loc: &str, d: &str) {
    let put = with_query(loc, "digest", d);
    ok(c.send("PUT", &put, &[], Body::Bytes(&[])).unwrap(), 201);
}

/// Docker's push of a blob the repository does not have: `HEAD` (404), `POST`, one `PATCH`
/// with the whole body (no `Content-Range`), `PUT ?digest=` without a body.
fn docker_push(c: &Client, repo: &str, data: &[u8]) {
    let d = digest(data);
    ok(c.head(&format!("/v2/{repo}/blobs/{d}")).unwrap(), 404);
    let loc = location(&ok(
        c.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Body::Bytes(&[]),
        )
        .unwrap(),
        202,
    ))
    .unwrap();
    let loc = location(&ok(
        c.send("PATCH", &loc, &[("Content-Type", OCTET)], Body::Bytes(data))
            .unwrap(),
        202,
    ))
    .unwrap();
    finish(c, &loc, &d);
}

/// containerd's (and oras's) push: `HEAD` (404), `POST`, `PUT ?digest=` with the whole body.
fn containerd_push(c: &Client, repo: &str, data: &[u8]) {
    let d = digest(data);
    ok(c.head(&format!("/v2/{repo}/blobs/{d}")).unwrap(), 404);
    let loc = c.start_upload(repo).unwrap();
    ok(
        c.send(
            "PUT",
            &with_query(&loc, "digest", &d),
            &[("Content-Type", OCTET)],
            Body::Bytes(data),
        )
        .unwrap(),
        201,
    );
}

/// A monolithic upload in one request: `POST ?digest=` with the body.
fn monolithic_push(c: &Client, repo: &str, data: &[u8]) {
    let d = digest(data);
    ok(
        c.send(
            "POST",
            &with_query(&format!("/v2/{repo}/blobs/uploads/"), "digest", &d),
            &[("Content-Type", OCTET)],
            Body::Bytes(data),
        )
        .unwrap(),
        201,
    );
}

/// A chunked push (skopeo and containerd for large blobs, or with a chunk size set):
/// `HEAD` (404), `POST`, a `PATCH` per chunk with `Content-Range`, `PUT ?digest=`.
fn chunked_push(c: &Client, repo: &str, data: &[u8], chunk: usize) {
    let d = digest(data);
    ok(c.head(&format!("/v2/{repo}/blobs/{d}")).unwrap(), 404);
    let mut loc = c.start_upload(repo).unwrap();
    let mut start = 0;
    for part in data.chunks(chunk) {
        let range = format!("{start}-{}", start + part.len() - 1);
        loc = location(&ok(
            c.send(
                "PATCH",
                &loc,
                &[("Content-Type", OCTET), ("Content-Range", &range)],
                Body::Bytes(part),
            )
            .unwrap(),
            202,
        ))
        .unwrap();
        start += part.len();
    }
    finish(c, &loc, &d);
}

/// `berth serve` on `bucket` with `storage_extra` (the cache) and `extra` (other sections).
fn start(garage: &Garage, bucket: &str, storage_extra: &str, extra: &str) -> Berth {
    let storage = garage.storage_yaml(
        bucket,
        "",
        &format!("{storage_extra}  maintenance:\n    uploadpurging:\n      enabled: false\n"),
    );
    let cfg =
        format!("version: 0.1\nlog:\n  level: info\n{storage}http:\n  addr: 127.0.0.1:0\n{extra}");
    let dir = tempfile::tempdir().unwrap();
    Berth::start_with_config(&cfg, dir.path())
}

/// Every operation once, on a fresh Berth over a fresh bucket.
fn costs(garage: &Garage, bucket: &str, storage_extra: &str, extra: &str) -> Vec<Cost> {
    garage.create_bucket(bucket);
    let berth = start(garage, bucket, storage_extra, extra);
    let c = Client::new(&berth.url, None);
    let repo = "cost/app";
    // Warm-up: the bucket check and the first connection are not what a push costs.
    c.push_blob(repo, b"warm-up").unwrap();

    let layer = bytes("docker layer", 1_000_000);
    let large = bytes("large layer", 12_000_000);
    let chunked = bytes("chunked layer", 12_000_000);
    let config = bytes("config", 2_000);
    let small = bytes("containerd layer", 300_000);
    let mut out = vec![
        measure(
            garage,
            "docker push, 1 MB (HEAD 404, POST, PATCH, PUT)",
            || docker_push(&c, repo, &layer),
        ),
        measure(garage, "docker push, 12 MB", || {
            docker_push(&c, repo, &large)
        }),
        measure(
            garage,
            "containerd push, 300 kB (HEAD 404, POST, PUT)",
            || containerd_push(&c, repo, &small),
        ),
        measure(garage, "monolithic POST ?digest=, 2 kB", || {
            monolithic_push(&c, repo, &config)
        }),
        measure(garage, "chunked push, 12 MB in 3 PATCHes", || {
            chunked_push(&c, repo, &chunked, 4_000_000)
        }),
        measure(garage, "HEAD of a blob the repository has", || {
            ok(
                c.head(&format!("/v2/{repo}/blobs/{}", digest(&layer)))
                    .unwrap(),
                200,
            );
        }),
        measure(garage, "mount from another repository", || {
            let url = format!(
                "/v2/cost/other/blobs/uploads/?mount={}&from={repo}",
                digest(&layer)
            );
            ok(c.send("POST", &url, &[], Body::Bytes(&[])).unwrap(), 201);
        }),
    ];
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{},{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", &config),
        descriptor("application/vnd.oci.image.layer.v1.tar", &layer),
        descriptor("application/vnd.oci.image.layer.v1.tar", &small),
    );
    let manifest_digest = digest(manifest.as_bytes());
    out.push(measure(garage, "manifest PUT by tag (2 layers)", || {
        ok(
            c.put_manifest(
                repo,
                "v1",
                "application/vnd.oci.image.manifest.v1+json",
                manifest.as_bytes(),
            )
            .unwrap(),
            201,
        );
    }));
    out.push(measure(garage, "pull: HEAD manifest by tag", || {
        let r = ok(c.head(&format!("/v2/{repo}/manifests/v1")).unwrap(), 200);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(manifest_digest.as_str())
        );
    }));
    out.push(measure(garage, "pull: GET manifest by digest", || {
        let r = ok(
            c.get(&format!("/v2/{repo}/manifests/{manifest_digest}"), &[])
                .unwrap(),
            200,
        );
        assert_eq!(r.body, manifest.as_bytes());
    }));
    out.push(measure(
        garage,
        "pull: GET blob (and the client's presigned GET)",
        || {
            let r = ok(
                c.get(&format!("/v2/{repo}/blobs/{}", digest(&layer)), &[])
                    .unwrap(),
                200,
            );
            assert!(r.body == layer);
        },
    ));
    assert!(!berth.log().contains(" ERROR "), "{}", berth.log());
    out
}

fn render(title: &str, costs: &[Cost]) -> String {
    let mut s = format!("\nS3 requests per operation, {title}:\n");
    for c in costs {
        let ops: Vec<String> = c.by_op.iter().map(|(k, n)| format!("{k} {n}")).collect();
        s.push_str(&format!(
            "  {:<52} {:>3}  ({})\n",
            c.what,
            c.total(),
            ops.join(", ")
        ));
    }
    s
}

fn cost<'a>(costs: &'a [Cost], prefix: &str) -> &'a Cost {
    costs
        .iter()
        .find(|c| c.what.starts_with(prefix))
        .unwrap_or_else(|| panic!("no measurement {prefix:?}"))
}

#[test]
fn what_a_push_and_a_pull_cost_in_s3_requests() {
    let garage = Garage::start();
    let cached = costs(
        &garage,
        "cost-inmemory",
        "  cache:\n    blobdescriptor: inmemory\n",
        "",
    );
    let uncached = costs(&garage, "cost-none", "", "");
    let redis = Redis::start();
    let shared = costs(
        &garage,
        "cost-redis",
        "  cache:\n    blobdescriptor: redis\n",
        &redis.yaml(),
    );
    let table = format!(
        "{}{}{}",
        render("blobdescriptor: inmemory", &cached),
        render("no blob-descriptor cache", &uncached),
        render("blobdescriptor: redis", &shared)
    );
    println!("{table}");
    // Bounds: (operation, with the in-memory cache, without a cache), on requests other than
    // UploadPart (the bytes themselves: one per 5 MiB `chunksize` here). Why each request is
    // there: docs/ARCHITECTURE.md, "What a push costs".
    let bounds: [(&str, u64, u64); 11] = [
        ("docker push, 1 MB", 8, 8),
        ("docker push, 12 MB", 11, 11),
        ("containerd push", 6, 6),
        ("monolithic POST", 2, 2),
        ("chunked push", 15, 15),
        ("HEAD of a blob", 2, 2),
        // Without a cache: the link in `from` (what the client may read), the content (a
        // link may outlive it), the new link.
        ("mount", 2, 3),
        // Without a cache, one HEAD per referenced blob's link (3 here).
        ("manifest PUT", 4, 7),
        ("pull: HEAD manifest", 3, 3),
        ("pull: GET manifest", 2, 2),
        ("pull: GET blob", 1, 3),
    ];
    for (what, with_cache, without) in bounds {
        for (costs, bound, config) in [
            (&cached, with_cache, "inmemory"),
            (&shared, with_cache, "redis"),
            (&uncached, without, "none"),
        ] {
            let c = cost(costs, what);
            assert!(
                c.overhead() <= bound,
                "{} with cache {config}: {} S3 requests besides UploadPart, at most {bound} expected\n{table}",
                c.what,
                c.overhead()
            );
        }
    }
}

/// The path of an upload URL, to send it to another replica.
fn path_of(location: &str) -> String {
    location[location.find("/v2/").unwrap()..].to_owned()
}

/// The cheaper session lookups hold across replicas: Docker's push with each request on the
/// next of three replicas (the one `PATCH` finds the session by listing it, the `PUT` by its
/// record), and a streamed upload of two `PATCH`es without `Content-Range` (the second finds
/// the first's record, tail bytes inside, on another replica), each then pulled whole from
/// every replica; no session is left behind.
#[test]
fn sessions_move_between_replicas() {
    let garage = Garage::start();
    garage.create_bucket("replicas");
    let replicas: Vec<Berth> = (0..3).map(|_| start(&garage, "replicas", "", "")).collect();
    let c: Vec<Client> = replicas.iter().map(|b| Client::new(&b.url, None)).collect();
    let repo = "team/app";
    let blob = bytes("docker across replicas", 7_000_000);
    let streamed = bytes("streamed across replicas", 9_000_000);
    let patch = |i: usize, loc: &str, data: &[u8]| {
        path_of(
            &location(&ok(
                c[i % 3]
                    .send("PATCH", loc, &[("Content-Type", OCTET)], Body::Bytes(data))
                    .unwrap(),
                202,
            ))
            .unwrap(),
        )
    };
    for (first, data, pieces) in [(0, &blob, 1), (1, &streamed, 2)] {
        let d = digest(data);
        let mut loc = path_of(&c[first].start_upload(repo).unwrap());
        let mut at = first;
        for piece in data.chunks(data.len().div_ceil(pieces)) {
            at += 1;
            loc = patch(at, &loc, piece);
            // Every replica reports the same progress.
            for (j, cj) in c.iter().enumerate() {
                let st = ok(cj.get(&loc, &[]).unwrap(), 204);
                assert!(st.header("range").is_some(), "replica {j}");
            }
        }
        finish(&c[(at + 1) % 3], &loc, &d);
        for (j, cj) in c.iter().enumerate() {
            let r = ok(cj.get(&format!("/v2/{repo}/blobs/{d}"), &[]).unwrap(), 200);
            assert!(r.body == *data, "replica {j} serves other bytes");
        }
    }
    // A wrong digest across replicas: refused, nothing stored, the session gone.
    let loc = path_of(&c[0].start_upload(repo).unwrap());
    let loc = patch(1, &loc, b"some bytes");
    let wrong = digest(b"other bytes");
    let r = c[2]
        .send(
            "PUT",
            &with_query(&loc, "digest", &wrong),
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.error_codes(), ["DIGEST_INVALID"]);
    ok(
        c[0].head(&format!("/v2/{repo}/blobs/{wrong}")).unwrap(),
        404,
    );
    ok(c[1].get(&loc, &[]).unwrap(), 404);
    // Nothing of the sessions is left in the bucket.
    assert_eq!(
        listing(
            &garage,
            "replicas",
            &format!("/docker/registry/v2/repositories/{repo}/_uploads")
        ),
        Vec::<String>::new()
    );
    for (i, b) in replicas.iter().enumerate() {
        assert!(!b.log().contains(" ERROR "), "replica {i}:\n{}", b.log());
    }
}

/// The S3 driver on a bucket of `garage`.
async fn driver(garage: &Garage, bucket: &str) -> berth_storage::S3Driver {
    berth_storage::S3Driver::new(berth_storage::S3Config {
        region: "garage".into(),
        region_endpoint: Some(garage.url.clone()),
        bucket: bucket.into(),
        access_key: Some(garage.key_id.clone()),
        secret_key: Some(garage.secret.clone()),
        force_path_style: true,
        ..berth_storage::S3Config::default()
    })
    .await
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What the bucket holds under a driver path (the directory's entries; none when absent).
fn listing(garage: &Garage, bucket: &str, path: &str) -> Vec<String> {
    use berth_storage::StorageDriver;
    runtime().block_on(async {
        let d = driver(garage, bucket).await;
        match d.list(path).await {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => panic!("listing {path}: {e}"),
        }
    })
}

/// Real clients push a five-blob image (a config and four layers, each image its own, so no
/// blob is in the registry yet) onto Garage: skopeo, Docker (a private dockerd) and
/// containerd's `ctr`, each counted as a whole (its probes, mounts and manifest included).
#[test]
fn real_clients_push_a_five_blob_image() {
    use clients_support::{Containerd, Dockerd, Lab, Layout};
    let garage = Garage::start();
    garage.create_bucket("clients");
    let lab = Lab::start_with(|_| {
        start(
            &garage,
            "clients",
            "  cache:\n    blobdescriptor: inmemory\n",
            "",
        )
    });
    let layout = Layout::init(&lab, &lab.path("in"));
    let files = |who: &str| -> Vec<(String, String)> {
        (0..4)
            .map(|i| (format!("/layer{i}"), format!("{who}: layer {i}\n")))
            .collect()
    };
    let image = |who: &str| {
        let f = files(who);
        let f: Vec<(&str, &str)> = f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let img = layout.add_image(&lab, who, "amd64", &f);
        assert_eq!(img.layers.len(), 4);
    };
    for who in ["skopeo", "docker", "ctr"] {
        image(who);
    }
    let mut out = Vec::new();
    out.push(measure(&garage, "skopeo copy", || {
        lab.run(lab.skopeo().args([
            "copy",
            "--dest-tls-verify=false",
            &layout.reference("skopeo"),
            &lab.docker_ref("team/skopeo", "v1"),
        ]));
    }));

    let dockerd = Dockerd::start(&lab, &lab.path("docker"), "vfs");
    let archive = lab.path("docker.tar");
    lab.run(lab.skopeo().args([
        "copy",
        &layout.reference("docker"),
        &format!("docker-archive:{}:berth-test/local:v1", archive.display()),
    ]));
    lab.run(
        dockerd
            .docker(&lab)
            .arg("load")
            .arg("--input")
            .arg(&archive),
    );
    let name = lab.image_ref("team/docker", "v1");
    lab.run(
        dockerd
            .docker(&lab)
            .args(["tag", "berth-test/local:v1", &name]),
    );
    out.push(measure(&garage, "docker push", || {
        lab.run(dockerd.docker(&lab).args(["push", &name]));
    }));
    drop(dockerd);

    let containerd = Containerd::start(&lab, &lab.path("containerd"));
    let archive = lab.path("ctr.tar");
    lab.run(lab.skopeo().args([
        "copy",
        &layout.reference("ctr"),
        &format!("oci-archive:{}:v1", archive.display()),
    ]));
    lab.run(
        containerd
            .ctr(&lab)
            .args(["images", "import", "--base-name"])
            .arg(format!("{}/team/ctr", lab.berth.host))
            .arg(&archive),
    );
    let name = lab.image_ref("team/ctr", "v1");
    out.push(measure(&garage, "ctr images push", || {
        lab.run(
            containerd
                .ctr(&lab)
                .args(["images", "push", "--plain-http", &name]),
        );
    }));
    let table = render(
        "real clients, 5 new blobs and a manifest (inmemory cache)",
        &out,
    );
    println!("{table}");
    // At most eight per blob and the manifest's four writes; skopeo asks `HEAD` twice for
    // each layer (once to reuse it, once before uploading it), one request each.
    for (c, client_extra) in out.iter().zip([4, 0, 0]) {
        let bound = 5 * 8 + 4 + client_extra;
        assert!(
            c.total() <= bound,
            "{}: {} S3 requests, at most {bound} expected\n{table}",
            c.what,
            c.total()
        );
    }
}

/// `Registry::push_blob`, a whole blob in one request without an upload session (what a
/// `POST ?digest=` with a body can cost): the blob and its link, two writes.
#[test]
fn a_blob_pushed_whole_costs_two_writes() {
    let garage = Garage::start();
    garage.create_bucket("whole");
    runtime().block_on(async {
        let d = driver(&garage, "whole").await;
        let reg = berth_registry::Registry::new(
            std::sync::Arc::new(d.clone()),
            berth_registry::Options::default(),
        );
        let name = "cost/whole".parse().unwrap();
        let data = bytes("pushed whole", 300_000);
        let digest = digest(&data).parse().unwrap();
        let before = d.request_counts().snapshot();
        // A request body, as the handler passes it.
        let body = axum::body::Body::from(data.clone()).into_data_stream();
        let info = reg.push_blob(&name, &digest, body).await.unwrap();
        assert_eq!(info.size, data.len() as u64);
        let after = d.request_counts().snapshot();
        let made: BTreeMap<&str, u64> = after
            .iter()
            .map(|(k, n)| (*k, n - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(made, BTreeMap::from([("PutObject", 2)]));
        assert_eq!(reg.stat_blob(&name, &digest).await.unwrap().size, 300_000);
    });
}

/// A session an older Berth started on S3 (its record in the older form, one JSON object,
/// naming a tail *object*) is continued and finished by this one: the tail is read, the blob
/// is whole, and the session, tail object included, is gone afterwards.
#[test]
fn a_session_an_older_berth_started_is_finished() {
    use berth_storage::StorageDriver;
    let garage = Garage::start();
    garage.create_bucket("older");
    let berth = start(&garage, "older", "", "");
    let c = Client::new(&berth.url, None);
    let repo = "old/app";
    let loc = path_of(&c.start_upload(repo).unwrap());
    let id = loc.rsplit('/').next().unwrap().split('?').next().unwrap();
    let dir = format!("/docker/registry/v2/repositories/{repo}/_uploads/{id}");
    let first = bytes("from an older berth", 1000);
    let second = bytes("from this berth", 3000);
    // What an older Berth's first PATCH left: a tail object and a record naming it.
    runtime().block_on(async {
        let d = driver(&garage, "older").await;
        let tail_key = format!("{}/data.tail-1000", &dir[1..]);
        d.put_content(&format!("{dir}/data.tail-1000"), first.clone().into())
            .await
            .unwrap();
        let staging = serde_json::json!({
            "upload_id": null, "parts": [], "tail": [tail_key, 1000], "size": 1000,
        });
        let mut hasher = berth_core::ResumableSha256::new();
        hasher.update(&first);
        let record = serde_json::json!({
            "offset": 1000,
            "sha256": berth_core::digest::hex(&hasher.save()),
            "driver": berth_core::digest::hex(staging.to_string().as_bytes()),
        });
        d.put_content(&format!("{dir}/berthstate"), record.to_string().into())
            .await
            .unwrap();
    });
    let st = ok(c.get(&loc, &[]).unwrap(), 204);
    assert_eq!(st.header("range"), Some("0-999"));
    let loc = path_of(
        &location(&ok(
            c.send(
                "PATCH",
                &loc,
                &[("Content-Type", OCTET), ("Content-Range", "1000-3999")],
                Body::Bytes(&second),
            )
            .unwrap(),
            202,
        ))
        .unwrap(),
    );
    let whole = [first, second].concat();
    let d = digest(&whole);
    finish(&c, &loc, &d);
    let r = ok(c.get(&format!("/v2/{repo}/blobs/{d}"), &[]).unwrap(), 200);
    assert!(
        r.body == whole,
        "the blob is the older tail and the new chunk"
    );
    assert_eq!(
        listing(
            &garage,
            "older",
            &format!("/docker/registry/v2/repositories/{repo}/_uploads")
        ),
        Vec::<String>::new()
    );
}

/// The conformance runner on Garage without a blob-descriptor cache: every upload form the
/// spec has (monolithic, streamed, chunked, out of order, cancelled, mounted) through the
/// cheaper session paths, on a real S3 server.
#[test]
fn conformance_on_garage_without_a_cache() {
    use berth_conformance::{run, Gaps, Options};
    let garage = Garage::start();
    garage.create_bucket("conformance");
    let berth = start(&garage, "conformance", "", "");
    let report = run(&Options::new(&berth.url));
    let verdict = report.judge(&Gaps::default());
    assert!(
        verdict.ok(),
        "{}\n{verdict}\n{}",
        report.render(&Gaps::default()),
        berth.log()
    );
}
