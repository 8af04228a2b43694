//! The pull-through cache against upstreams on loopback: a Berth with token auth (and Berth's
//! issuer), and Debian's distribution 2.8. Upstream requests are counted in the upstream's own
//! access log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Read;
use std::path::Path;

use berth_conformance::client::{Body, Client};
use berth_conformance::fixtures::{bytes, digest, Image};
use support::{Berth, Distribution};

fn hash(pw: &str) -> String {
    bcrypt::hash(pw, 4).unwrap()
}

/// An upstream Berth with token auth: `admin` pushes anything, `mirror` pulls anything,
/// anonymous pulls `library/*`.
fn token_upstream(dir: &Path) -> Berth {
    let yaml = format!(
        r#"auth:
  token:
    service: upstream.test
    issuer: upstream
  issuer:
    keydir: {keys}
    users:
      admin: "{admin}"
      mirror: "{mirror}"
    acl:
      - {{ account: admin, name: "*", actions: ["*"] }}
      - {{ account: mirror, name: "*", actions: [pull] }}
      - {{ name: "library/*", actions: [pull] }}
"#,
        keys = dir.join("keys").display(),
        admin = hash("admin-pw"),
        mirror = hash("mirror-pw"),
    );
    Berth::start_on(&dir.join("up"), &yaml)
}

/// Pushes `img` to `repo:tag` on a token-protected Berth as admin.
fn push_as_admin(up: &Berth, repo: &str, tag: &str, img: &Image) {
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:admin-pw")
    );
    let r = Client::new(&up.url, Some(basic))
        .get(
            &format!("/auth/token?service=upstream.test&scope=repository:{repo}:pull,push"),
            &[],
        )
        .unwrap();
    let token = r.json().unwrap()["token"].as_str().unwrap().to_owned();
    Client::new(&up.url, Some(format!("Bearer {token}")))
        .push_image(repo, tag, img)
        .unwrap();
}

/// A mirror whose `docker.io` upstream is `up_url` (answering unprefixed names matching
/// `allow`), with the given credentials and TTL.
fn mirror(
    dir: &Path,
    up_url: &str,
    creds: Option<(&str, &str)>,
    ttl: &str,
    allow: &[&str],
) -> Berth {
    let creds = creds
        .map(|(u, p)| format!("      username: {u}\n      password: {p}\n"))
        .unwrap_or_default();
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    let yaml = format!(
        "proxy:\n  spooldir: {}\n  upstreams:\n    - name: docker.io\n      remoteurl: {up_url}\n      default: true\n      ttl: {ttl}\n      allow: [{}]\n{creds}",
        dir.join("spool").display(),
        allow.join(", ")
    );
    Berth::start_on(&dir.join("mirror"), &yaml)
}

/// Upstream access-log lines for requests on `path_part`.
fn upstream_requests(up: &Berth, method: &str, path_part: &str) -> usize {
    up.log()
        .lines()
        .filter(|l| l.contains("request method="))
        .filter(|l| l.contains(&format!("method={method} ")) && l.contains(path_part))
        .count()
}

/// Upstream requests on `path_part` that were served (not the 401 of an auth handshake).
fn upstream_served(up: &Berth, method: &str, path_part: &str) -> usize {
    up.log()
        .lines()
        .filter(|l| l.contains("request method="))
        .filter(|l| l.contains(&format!("method={method} ")) && l.contains(path_part))
        .filter(|l| l.contains("status=200"))
        .count()
}

fn all_upstream_requests(up: &Berth) -> usize {
    up.log()
        .lines()
        .filter(|l| l.contains("request method="))
        .count()
}

#[test]
fn pulls_through_a_token_protected_upstream_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let up = token_upstream(dir.path());
    let img = Image::with_layers("tool", vec![bytes("tool-layer", 2_000_000)], "");
    push_as_admin(&up, "acme/tool", "1.0", &img);
    let m = mirror(
        dir.path(),
        &up.url,
        Some(("mirror", "mirror-pw")),
        "1h",
        &["library/*", "acme/*"],
    );
    let c = Client::new(&m.url, None);
    for name in ["docker.io/acme/tool", "acme/tool"] {
        let r = c.get(&format!("/v2/{name}/manifests/1.0"), &[]).unwrap();
        assert_eq!(r.status, 200, "{}\n{}", r.describe(), m.log());
        assert_eq!(r.body, img.manifest);
        for b in img.blobs() {
            let r = c
                .get(&format!("/v2/{name}/blobs/{}", digest(b)), &[])
                .unwrap();
            assert_eq!(r.status, 200);
            assert!(&r.body == b, "{name}: blob differs");
        }
    }
    // The mirror authenticated as its account, and fetched each thing once.
    up.wait_log("a token for the mirror account", |l| {
        l.contains("token issued account=\"mirror\"")
    });
    assert_eq!(
        upstream_requests(&up, "GET", "/v2/acme/tool/manifests/1.0"),
        2,
        "one 401, one with the token:\n{}",
        up.log()
    );
    assert_eq!(
        upstream_served(&up, "GET", &format!("/blobs/{}", digest(&img.layers[0]))),
        1
    );
    // Cached content is ordinary content.
    let r = c.get("/v2/_catalog", &[]).unwrap();
    assert_eq!(
        r.json().unwrap()["repositories"],
        serde_json::json!(["docker.io/acme/tool"])
    );
    let r = c.get("/v2/docker.io/acme/tool/tags/list", &[]).unwrap();
    assert_eq!(r.json().unwrap()["tags"], serde_json::json!(["1.0"]));
}

#[test]
fn anonymous_upstream_pull_and_allowlist_refusal_without_upstream_requests() {
    let dir = tempfile::tempdir().unwrap();
    let up = token_upstream(dir.path());
    let img = Image::oci("alpine", 2, "");
    push_as_admin(&up, "library/alpine", "latest", &img);
    push_as_admin(&up, "evil/miner", "latest", &Image::oci("miner", 1, ""));
    let m = mirror(dir.path(), &up.url, None, "1h", &["library/*"]);
    let c = Client::new(&m.url, None);
    // Docker Hub's rule: `alpine` is `library/alpine`.
    let r = c.get("/v2/docker.io/alpine/manifests/latest", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, img.manifest);
    up.wait_log("an anonymous token", |l| {
        l.contains("token issued account=\"anonymous\"")
    });

    let before = all_upstream_requests(&up);
    for path in [
        "/v2/docker.io/evil/miner/manifests/latest",
        &format!("/v2/docker.io/evil/miner/blobs/{}", digest(b"x")),
        "/v2/docker.io/evil/miner/tags/list",
    ] {
        let r = c.get(path, &[]).unwrap();
        assert_eq!(r.status, 403, "{}", r.describe());
        assert_eq!(r.error_codes(), ["DENIED"]);
    }
    // Unprefixed and outside the default upstream's allowlist: a hosted name, not a proxy.
    let r = c.get("/v2/evil/miner/manifests/latest", &[]).unwrap();
    assert_eq!(r.status, 404);
    // Give a stray request the time to show in the upstream's log before counting.
    let r = Client::new(&up.url, None).get("/v2/", &[]).unwrap();
    assert_eq!(r.status, 401);
    up.wait_log("the marker request", |l| {
        l.lines().filter(|x| x.contains("request method=")).count() > before
    });
    assert_eq!(
        all_upstream_requests(&up),
        before + 1,
        "a refused pull reached the upstream:\n{}",
        up.log()
    );
}

#[test]
fn concurrent_pulls_of_one_uncached_blob_make_one_upstream_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let up = token_upstream(dir.path());
    let big = bytes("big layer", 24_000_000);
    let img = Image::with_layers("big", vec![big.clone()], "");
    push_as_admin(&up, "library/big", "v1", &img);
    let m = mirror(dir.path(), &up.url, None, "1h", &["library/*"]);
    let d = digest(&big);
    let url = format!("{}/v2/library/big/blobs/{d}", m.url);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let resp = ureq::get(&url).call().unwrap();
                let mut body = Vec::new();
                resp.into_reader().read_to_end(&mut body).unwrap();
                body
            })
        })
        .collect();
    for c in clients {
        let body = c.join().unwrap();
        assert!(
            body == big,
            "a client got different bytes ({} bytes)",
            body.len()
        );
    }
    assert_eq!(
        upstream_served(&up, "GET", &format!("/blobs/{d}")),
        1,
        "{}",
        up.log()
    );
    // At most the one 401 of the token handshake besides it.
    assert!(upstream_requests(&up, "GET", &format!("/blobs/{d}")) <= 2);
    // Cached now: another pull does not go upstream.
    let before = upstream_requests(&up, "GET", &format!("/blobs/{d}"));
    let r = Client::new(&m.url, None)
        .get(&format!("/v2/library/big/blobs/{d}"), &[])
        .unwrap();
    assert!(r.body == big);
    assert_eq!(
        upstream_requests(&up, "GET", &format!("/blobs/{d}")),
        before
    );
    // And the spool is gone.
    let left = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
    assert_eq!(left, 0, "spool files left behind");
}

#[test]
fn a_corrupted_upstream_blob_aborts_the_transfer_and_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let up = token_upstream(dir.path());
    let layer = bytes("corrupted layer", 3_000_000);
    let img = Image::with_layers("corrupt", vec![layer.clone()], "");
    push_as_admin(&up, "library/corrupt", "v1", &img);
    let d = digest(&layer);
    // Flip bytes in the upstream's stored blob; it serves them as they are.
    let hex = &d[7..];
    let path = dir.path().join(format!(
        "up/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut data = std::fs::read(&path).unwrap();
    data[1_500_000] ^= 0xff;
    std::fs::write(&path, &data).unwrap();

    let m = mirror(dir.path(), &up.url, None, "1h", &["library/*"]);
    let url = format!("{}/v2/library/corrupt/blobs/{d}", m.url);
    for attempt in 0..2 {
        // Never a clean transfer of the whole announced length: the connection is cut before
        // the last byte (before the headers are even flushed, when the bytes came fast).
        match ureq::get(&url).call() {
            Err(ureq::Error::Transport(_)) => {}
            Err(e) => panic!("attempt {attempt}: {e}"),
            Ok(resp) => {
                assert_eq!(resp.status(), 200);
                let mut body = Vec::new();
                let read = resp.into_reader().read_to_end(&mut body);
                assert!(
                    read.is_err() || body.len() < layer.len(),
                    "attempt {attempt}: the corrupt blob arrived as a clean 200"
                );
            }
        }
    }
    // Not cached, so the second attempt went upstream again.
    up.wait_log("two blob fetches", |l| {
        l.lines()
            .filter(|x| x.contains(&format!("/blobs/{d}")) && x.contains("status=200"))
            .count()
            >= 2
    });
    assert_eq!(upstream_served(&up, "GET", &format!("/blobs/{d}")), 2);
    let mirror_blob = dir.path().join(format!(
        "mirror/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    assert!(!mirror_blob.exists(), "the corrupt blob was cached");
    m.wait_log("a WARN about the digest", |l| {
        l.contains("not cached, the transfers it fed were aborted")
    });
}

#[test]
fn cached_images_pull_while_the_upstream_is_down_and_ttl_costs_one_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = token_upstream(dir.path());
    let img = Image::oci("ttl", 2, "");
    push_as_admin(&up, "library/ttl", "v1", &img);
    let m = mirror(dir.path(), &up.url, None, "1s", &["library/*"]);
    let c = Client::new(&m.url, None);
    let pull = |c: &Client| support::pull_checked(c, "library/ttl", "v1", &img);
    pull(&c);
    let manifest_path = "/v2/library/ttl/manifests/v1";
    // The upstream writes its access line when a response has been sent, which can be after
    // the mirror answered its client: count only once the first pull's GET is logged (its
    // HEAD, if any, came before it).
    up.wait_log("the first pull's manifest GET", |l| {
        l.lines()
            .any(|x| x.contains("request method=GET ") && x.contains(manifest_path))
    });
    let gets = upstream_requests(&up, "GET", manifest_path);
    let heads = upstream_requests(&up, "HEAD", manifest_path);
    // Within the TTL: nothing upstream.
    pull(&c);
    assert_eq!(upstream_requests(&up, "HEAD", manifest_path), heads);
    // After it: one HEAD (plus its 401 challenge round), no GET of the manifest.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    pull(&c);
    up.wait_log("the HEAD", |l| {
        l.lines()
            .filter(|x| x.contains("method=HEAD") && x.contains(manifest_path))
            .count()
            > heads
    });
    assert_eq!(
        upstream_requests(&up, "GET", manifest_path),
        gets,
        "the manifest was fetched again"
    );
    let new_heads = upstream_requests(&up, "HEAD", manifest_path) - heads;
    assert!(
        (1..=2).contains(&new_heads),
        "{new_heads} HEADs (one, plus a 401 if the token expired)"
    );
    assert_eq!(
        up.log()
            .lines()
            .filter(|x| x.contains("method=HEAD")
                && x.contains(manifest_path)
                && x.contains("status=200"))
            .count(),
        1,
        "one successful HEAD"
    );

    // Upstream gone: the cached image still pulls, with a WARN.
    up.kill();
    std::thread::sleep(std::time::Duration::from_millis(1300));
    pull(&c);
    m.wait_log("the stale-cache WARN", |l| {
        l.contains("serving the cached library/ttl:v1")
    });
    // Something never cached is a clean error, not a hang.
    let r = c.get("/v2/library/never/manifests/v1", &[]).unwrap();
    assert_eq!(r.status, 502, "{}", r.describe());
}

#[test]
fn distribution_as_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start(&dir.path().join("dist"));
    let img = Image::docker("from-distribution");
    Client::new(&dist.url, None)
        .push_image("library/app", "v2", &img)
        .unwrap();
    let m = mirror(dir.path(), &dist.url, None, "1h", &[]);
    let c = Client::new(&m.url, None);
    let r = c.get("/v2/library/app/manifests/v2", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, img.manifest);
    assert_eq!(r.header("content-type"), Some(img.media_type));
    for b in img.blobs() {
        let r = c
            .get(&format!("/v2/library/app/blobs/{}", digest(b)), &[])
            .unwrap();
        assert!(&r.body == b);
    }
}

#[test]
fn hosted_and_proxied_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let up = token_upstream(dir.path());
    push_as_admin(&up, "library/base", "v1", &Image::oci("base", 1, ""));
    let m = mirror(dir.path(), &up.url, None, "1h", &["library/*"]);
    let c = Client::new(&m.url, None);
    // Hosted: pushes work.
    c.push_image("team/app", "v1", &Image::oci("team", 1, ""))
        .unwrap();
    // Proxied: refused.
    for name in ["library/base", "docker.io/library/base"] {
        let r = c
            .send(
                "POST",
                &format!("/v2/{name}/blobs/uploads/"),
                &[],
                Body::Bytes(&[]),
            )
            .unwrap();
        assert_eq!(r.status, 405, "{}", r.describe());
        assert_eq!(r.error_codes(), ["UNSUPPORTED"]);
        let r = c
            .put_manifest(
                name,
                "v9",
                "application/vnd.oci.image.manifest.v1+json",
                b"{}",
            )
            .unwrap();
        assert_eq!(r.status, 405);
    }
    let r = c.get("/v2/library/base/manifests/v1", &[]).unwrap();
    assert_eq!(r.status, 200);
    let r = c.get("/v2/_catalog", &[]).unwrap();
    assert_eq!(
        r.json().unwrap()["repositories"],
        serde_json::json!(["docker.io/library/base", "team/app"])
    );
}
