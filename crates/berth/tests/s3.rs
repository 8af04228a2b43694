//! Berth on S3 (a real Garage server) with the Redis blob-descriptor cache (a real
//! `redis-server`): the conformance runner passes; three replicas share one bucket and one
//! Redis and serve a chunked push and a pull round-robin; Redis dies mid-test and requests
//! still succeed; distribution 2.8 and Berth serve each other's bucket; replicas on the three
//! nodes of a Garage cluster; and a stalled S3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use berth_conformance::client::{with_query, Body, Client};
use berth_conformance::fixtures::{bytes, digest, expect_status, location, Image, OCTET};
use berth_conformance::{run, Gaps, Options};
use support::{Berth, Distribution, Garage, Redis};

const REDIS_CACHE: &str = "  cache:\n    blobdescriptor: redis\n";

fn redis_keys(redis: &Redis, pattern: &str) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            pattern,
        ])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn conformance_on_s3_with_redis_cache() {
    let garage = Garage::start();
    garage.create_bucket("conf");
    let redis = Redis::start();
    let berth = Berth::start_garage(&garage, "conf", REDIS_CACHE, &redis.yaml());
    let report = run(&Options::new(&berth.url));
    let verdict = report.judge(&Gaps::default());
    assert!(
        verdict.ok(),
        "{}\n{verdict}\n{}",
        report.render(&Gaps::default()),
        berth.log()
    );
    // The cache was used, with distribution's keys.
    assert!(!redis_keys(&redis, "repository::*::blobs").is_empty());
    assert!(!redis_keys(&redis, "blobs::sha256:*").is_empty());
    // Blob downloads go to presigned S3 URLs, which S3 serves.
    let c = Client::new(&berth.url, None);
    let blob = bytes("presigned", 3000);
    let d = c.push_blob("presigned/app", &blob).unwrap();
    let (status, location) =
        without_redirects(&format!("{}/v2/presigned/app/blobs/{d}", berth.url));
    assert_eq!(status, 307);
    assert!(
        location.starts_with(&garage.url) && location.contains("X-Amz-Signature"),
        "{location}"
    );
    let fetched = ureq::get(&location).call().unwrap();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut fetched.into_reader(), &mut body).unwrap();
    assert!(body == blob, "the presigned URL served other bytes");
}

/// A GET that does not follow redirects: the status and `Location`.
fn without_redirects(url: &str) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    (r.status(), r.header("location").unwrap_or("").to_owned())
}

/// The path of an upload URL, to send it to another replica.
fn path_of(location: &str) -> String {
    location[location.find("/v2/").unwrap()..].to_owned()
}

/// Pushes `layer` in chunks of `size`, each chunk through the next replica (parts and tails of
/// the S3 multipart upload are continued by whichever replica gets the chunk); after each
/// chunk every replica reports the same progress. The digest goes in through the last.
fn push_across(c: &[Client], repo: &str, layer: &[u8], size: usize) {
    let mut loc = path_of(&c[0].start_upload(repo).unwrap());
    let mut start = 0;
    for (i, chunk) in layer.chunks(size).enumerate() {
        let range = format!("{start}-{}", start + chunk.len() - 1);
        let on = (i + 1) % c.len();
        let r = c[on]
            .send(
                "PATCH",
                &loc,
                &[("Content-Type", OCTET), ("Content-Range", &range)],
                Body::Bytes(chunk),
            )
            .unwrap();
        assert_eq!(r.status, 202, "chunk {i} on replica {on}: {}", r.describe());
        start += chunk.len();
        loc = path_of(&location(&r).unwrap());
        for (j, cj) in c.iter().enumerate() {
            let st = cj.get(&loc, &[]).unwrap();
            assert_eq!(st.status, 204, "status on replica {j}");
            assert_eq!(
                st.header("range"),
                Some(format!("0-{}", start - 1).as_str()),
                "replica {j}"
            );
        }
    }
    let r = c[c.len() - 1]
        .send(
            "PUT",
            &with_query(&loc, "digest", &digest(layer)),
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
}

#[test]
fn three_replicas_serve_one_push_and_pull_round_robin() {
    let garage = Garage::start();
    garage.create_bucket("shared");
    let redis = Redis::start();
    let replicas: Vec<Berth> = (0..3)
        .map(|_| Berth::start_garage(&garage, "shared", REDIS_CACHE, &redis.yaml()))
        .collect();
    let c: Vec<Client> = replicas.iter().map(|b| Client::new(&b.url, None)).collect();
    let repo = "team/app";

    // A 13 MB layer pushed in four chunks, each to the next replica.
    let layer = bytes("replicated layer", 13_000_000);
    push_across(&c, repo, &layer, 3_500_000);

    // The config and the manifest through other replicas.
    let img = Image::with_layers("replicated", vec![layer.clone()], "");
    c[1].push_blob(repo, &img.config).unwrap();
    let r = c[0]
        .put_manifest(repo, "v1", img.media_type, &img.manifest)
        .unwrap();
    expect_status(&r, &[201]).unwrap();

    // Pull round-robin: every replica serves everything, and they agree on tags and catalog.
    for (i, ci) in c.iter().enumerate() {
        let r = ci.get(&format!("/v2/{repo}/manifests/v1"), &[]).unwrap();
        assert_eq!(r.status, 200, "replica {i}");
        assert_eq!(r.body, img.manifest);
        let r = ci
            .get(&format!("/v2/{repo}/blobs/{}", digest(&layer)), &[])
            .unwrap();
        assert_eq!(r.status, 200, "replica {i}: {}", r.describe());
        assert!(r.body == layer, "replica {i}: layer differs");
        let r = ci.get(&format!("/v2/{repo}/tags/list"), &[]).unwrap();
        assert_eq!(r.json().unwrap()["tags"], serde_json::json!(["v1"]));
        let r = ci.get("/v2/_catalog", &[]).unwrap();
        assert_eq!(r.json().unwrap()["repositories"], serde_json::json!([repo]));
    }
    // A delete on one replica is seen by the others (storage and the shared cache).
    let r = c[1]
        .delete(&format!("/v2/{repo}/blobs/{}", digest(&img.config)))
        .unwrap();
    assert_eq!(r.status, 202);
    for (i, ci) in c.iter().enumerate() {
        let r = ci
            .head(&format!("/v2/{repo}/blobs/{}", digest(&img.config)))
            .unwrap();
        assert_eq!(r.status, 404, "replica {i} still has the deleted blob");
    }
    let r = c[2].delete(&format!("/v2/{repo}/manifests/v1")).unwrap();
    assert_eq!(r.status, 202);
    let r = c[0].get(&format!("/v2/{repo}/tags/list"), &[]).unwrap();
    assert_eq!(r.json().unwrap()["tags"], serde_json::json!([]));
    // The layer went up as a multipart upload continued across replicas.
    let reqs = garage.s3_requests();
    assert!(
        reqs.get("CreateMultipartUpload").copied().unwrap_or(0) >= 1,
        "no CreateMultipartUpload: {reqs:?}"
    );
    assert!(
        reqs.get("UploadPart").copied().unwrap_or(0) >= 2,
        "no UploadPart: {reqs:?}"
    );
    for (i, b) in replicas.iter().enumerate() {
        assert!(
            !b.log().contains(" ERROR "),
            "replica {i} logged an error:\n{}",
            b.log()
        );
    }
}

#[test]
fn requests_succeed_while_redis_is_down() {
    let garage = Garage::start();
    garage.create_bucket("flaky");
    let mut redis = Redis::start();
    let berth = Berth::start_garage(&garage, "flaky", REDIS_CACHE, &redis.yaml());
    let c = Client::new(&berth.url, None);
    let before = Image::oci("before the outage", 2, "");
    c.push_image("app", "before", &before).unwrap();

    redis.stop();
    // Pulls and pushes go on, from storage.
    for round in 0..3 {
        for b in before.blobs() {
            let r = c.head(&format!("/v2/app/blobs/{}", digest(b))).unwrap();
            assert_eq!(r.status, 200, "round {round}");
        }
        let img = Image::oci(&format!("during the outage {round}"), 1, "");
        c.push_image("app", &format!("during-{round}"), &img)
            .unwrap();
        let r = c.get("/v2/app/manifests/before", &[]).unwrap();
        assert_eq!(r.status, 200);
    }
    let log = berth.wait_log("a WARN about redis", |l| {
        l.contains("redis blob-descriptor cache unavailable")
    });
    assert_eq!(
        log.matches("redis blob-descriptor cache unavailable")
            .count(),
        1,
        "one WARN for the outage, not one per request"
    );
    assert!(!log.contains("status=500"), "{log}");

    // Redis comes back: the cache recovers by itself.
    redis.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !berth
        .log()
        .contains("redis blob-descriptor cache recovered")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache never recovered:\n{}",
            berth.log()
        );
        let r = c
            .head(&format!("/v2/app/blobs/{}", digest(&before.config)))
            .unwrap();
        assert_eq!(r.status, 200);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let r = c
        .head(&format!("/v2/app/blobs/{}", digest(&before.layers[0])))
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        !redis_keys(&redis, "repository::app::blobs").is_empty(),
        "the cache is filled again"
    );
}

/// One bucket, both registries: what distribution 2.8 pushed, Berth serves, and the other
/// way round.
#[test]
fn distribution_and_berth_serve_one_bucket() {
    let garage = Garage::start();
    garage.create_bucket("both");
    let dist = Distribution::start_storage(&garage.storage_yaml("both", "", ""));
    let berth = Berth::start_garage(&garage, "both", "", "");
    let (cd, cb) = (Client::new(&dist.url, None), Client::new(&berth.url, None));
    for (from, to, repo) in [(&cd, &cb, "from/distribution"), (&cb, &cd, "from/berth")] {
        let img = Image::with_layers(repo, vec![bytes(repo, 2000), bytes(repo, 7_000_000)], "");
        from.push_image(repo, "v1", &img).unwrap();
        support::pull_checked(to, repo, "v1", &img);
        let r = to.get(&format!("/v2/{repo}/tags/list"), &[]).unwrap();
        assert_eq!(r.json().unwrap()["tags"], serde_json::json!(["v1"]));
    }
}

/// Without keys in the configuration, credentials come from the usual AWS chain (here the
/// environment; without them no request can be signed and the push fails).
#[test]
fn credentials_from_the_aws_environment() {
    let garage = Garage::start();
    garage.create_bucket("envcreds");
    let yaml = garage.storage_yaml("envcreds", "", "").replace(
        &format!(
            "    accesskey: {}\n    secretkey: {}\n",
            garage.key_id, garage.secret
        ),
        "",
    );
    assert!(!yaml.contains("accesskey"));
    let cfg = format!("version: 0.1\n{yaml}http:\n  addr: 127.0.0.1:0\n");
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_testkit::Berth::start_with_env(
        support::bin(),
        &cfg,
        dir.path(),
        &[
            ("AWS_ACCESS_KEY_ID", garage.key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", garage.secret.as_str()),
        ],
    );
    let c = Client::new(&berth.url, None);
    c.push_image("env/app", "v1", &Image::oci("env", 1, ""))
        .unwrap();
    let r = c.get("/v2/env/app/manifests/v1", &[]).unwrap();
    assert_eq!(r.status, 200);
}

/// With `storage.redirect.disable`, blobs stream from S3 through Berth, ranges included.
#[test]
fn downloads_stream_through_berth_when_redirects_are_off() {
    let garage = Garage::start();
    garage.create_bucket("noredirect");
    let berth = Berth::start_garage(
        &garage,
        "noredirect",
        "  redirect:\n    disable: true\n",
        "",
    );
    let mut opts = Options::new(&berth.url);
    opts.workflows = [berth_conformance::Workflow::Pull].into_iter().collect();
    let report = run(&opts);
    let verdict = report.judge(&Gaps::default());
    assert!(
        verdict.ok(),
        "{}\n{verdict}",
        report.render(&Gaps::default())
    );
    let c = Client::new(&berth.url, None);
    let img = Image::with_layers("ranged", vec![bytes("ranged", 9_000_000)], "");
    c.push_image("ranged", "v1", &img).unwrap();
    let d = digest(&img.layers[0]);
    // Served by Berth itself, not redirected to S3.
    let (status, location) = without_redirects(&format!("{}/v2/ranged/blobs/{d}", berth.url));
    assert_eq!((status, location.as_str()), (200, ""));
    let r = c
        .get(
            &format!("/v2/ranged/blobs/{d}"),
            &[("Range", "bytes=8000000-8000099")],
        )
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, img.layers[0][8_000_000..8_000_100]);
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// S3 (Garage) that accepts connections and never answers (the server stopped with SIGSTOP:
/// what a partition or an overloaded gateway looks like): requests end with distribution's
/// 503 `UNAVAILABLE` within the configured deadlines instead of hanging, `/readyz` says so,
/// and both recover on their own once S3 answers again. Then S3 killed (connections
/// refused): also a 503, not a 500.
#[test]
fn a_stalled_s3_is_a_503_within_the_deadlines_and_readiness_follows_it() {
    let garage = Garage::start();
    garage.create_bucket("stall");
    let storage = garage.storage_yaml(
        "stall",
        "    connecttimeout: 1s\n    responsetimeout: 1s\n    maxattempts: 2\n",
        "",
    );
    let cfg = format!("version: 0.1\nlog:\n  level: info\n{storage}http:\n  addr: 127.0.0.1:0\n");
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with_config(&cfg, dir.path());
    let c = Client::new(&berth.url, None);
    c.push_image("app", "v1", &Image::oci("stall", 1, ""))
        .unwrap();
    let ready = |want: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let r = c.get("/readyz", &[]).unwrap();
            if r.status == want || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    assert_eq!(ready(200).status, 200);

    signal(garage.pid(), "-STOP");
    let started = std::time::Instant::now();
    let r = c.get("/v2/app/tags/list", &[]).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.error_codes(), ["UNAVAILABLE"], "{}", r.describe());
    // Two attempts of 1 s and the SDK's backoff between them: seconds, not minutes.
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    let r = ready(503);
    assert_eq!(r.status, 503);
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("storage"), "{text}");

    signal(garage.pid(), "-CONT");
    // No request needed: readiness probes storage while it is down.
    assert_eq!(ready(200).status, 200, "{}", berth.log());
    let r = c.get("/v2/app/tags/list", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());

    // A chunk whose S3 part upload stalls while it is sent: the first megabyte arrives while
    // S3 answers (the session is read), then S3 stops and the rest fills a part. 503 within
    // the deadlines too, and the client's next push works once S3 is back.
    let loc = path_of(&c.start_upload("app").unwrap());
    let chunk = bytes("stalled chunk", 6_000_000);
    let head = support::raw::request(
        "PATCH",
        &loc,
        &[("Content-Type", OCTET), ("Content-Range", "0-5999999")],
        &chunk,
    );
    let split = head.len() - chunk.len() + 1_000_000;
    let addr = berth.url.trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, &head[..split]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    signal(garage.pid(), "-STOP");
    let started = std::time::Instant::now();
    let _ = std::io::Write::write_all(&mut s, &head[split..]);
    let r = support::raw::read_until_closed(&mut s, started, std::time::Duration::from_secs(30));
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.code().as_deref(), Some("UNAVAILABLE"), "{}", r.describe());
    assert!(
        r.elapsed < std::time::Duration::from_secs(15),
        "took {:?}",
        r.elapsed
    );
    signal(garage.pid(), "-CONT");
    assert_eq!(ready(200).status, 200, "{}", berth.log());
    c.push_image("app", "v2", &Image::oci("after the stall", 1, ""))
        .unwrap();

    // Killed: 503; restarted on the same data: everything is there again.
    let mut garage = garage;
    garage.kill();
    let r = c.get("/v2/app/tags/list", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.error_codes(), ["UNAVAILABLE"], "{}", r.describe());
    assert_eq!(ready(503).status, 503);
    garage.restart();
    assert_eq!(ready(200).status, 200, "{}", berth.log());
    let r = c.get("/v2/app/tags/list", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json().unwrap()["tags"], serde_json::json!(["v1", "v2"]));
}

/// Three replicas, each talking to a different node of a three-node Garage cluster that keeps
/// every object on all three: a push whose chunks go to different replicas (so to different
/// S3 nodes), then pulls, listings and deletes through the others, with no shared cache.
#[test]
fn replicas_on_a_three_node_garage_cluster() {
    let nodes = Garage::cluster(3);
    nodes[0].create_bucket("cluster");
    let replicas: Vec<Berth> = nodes
        .iter()
        .map(|n| Berth::start_garage(n, "cluster", "", ""))
        .collect();
    let c: Vec<Client> = replicas.iter().map(|b| Client::new(&b.url, None)).collect();
    let repo = "cluster/app";
    let layer = bytes("clustered layer", 11_000_000);
    push_across(&c, repo, &layer, 4_000_000);
    let img = Image::with_layers("clustered", vec![layer.clone()], "");
    c[1].push_blob(repo, &img.config).unwrap();
    let r = c[2]
        .put_manifest(repo, "v1", img.media_type, &img.manifest)
        .unwrap();
    expect_status(&r, &[201]).unwrap();
    for (i, ci) in c.iter().enumerate() {
        support::pull_checked(ci, repo, "v1", &img);
        let r = ci.get("/v2/_catalog", &[]).unwrap();
        assert_eq!(
            r.json().unwrap()["repositories"],
            serde_json::json!([repo]),
            "replica {i}"
        );
    }
    // A tag deleted through one node is gone through the others.
    let r = c[0].delete(&format!("/v2/{repo}/manifests/v1")).unwrap();
    assert_eq!(r.status, 202);
    for (i, ci) in c.iter().enumerate() {
        let r = ci.get(&format!("/v2/{repo}/manifests/v1"), &[]).unwrap();
        assert_eq!(r.status, 404, "replica {i}");
    }
    // Every node holds the data.
    for (i, n) in nodes.iter().enumerate() {
        let keys = n.keys("cluster", "docker/registry/v2/blobs/");
        assert!(
            keys.iter()
                .any(|k| k.contains(&digest(&layer)["sha256:".len()..])),
            "node {i}: {keys:?}"
        );
    }
}
