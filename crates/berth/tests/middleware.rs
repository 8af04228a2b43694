//! distribution's storage middleware through `berth serve`: `redirect` (exact `Location` on
//! the filesystem), `cloudfront` (a signed URL over S3 on Garage, its signature checked against
//! the public key), `rewrite` of S3 presigned redirects, and the refusals distribution makes
//! (unknown names, registry and repository middleware).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use berth_conformance::client::Client;
use berth_conformance::fixtures::{digest, Image};
use support::{run_ok, Berth, Garage};

/// A GET that does not follow redirects: (status, Location, body).
fn get_raw(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let location = r.header("location").map(str::to_owned);
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
    (status, location, body)
}

fn blob_path(d: &str) -> String {
    let hex = d.trim_start_matches("sha256:");
    format!("/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

/// Pushes a one-layer image to `repo` and returns its layer.
fn push(b: &Berth, repo: &str) -> Vec<u8> {
    let img = Image::oci(repo, 1, "");
    Client::new(&b.url, None)
        .push_image(repo, "v1", &img)
        .unwrap();
    img.layers[0].clone()
}

#[test]
fn redirect_sends_blob_downloads_to_the_baseurl_and_storage_path() {
    let dir = tempfile::tempdir().unwrap();
    let b = Berth::start_on(
        dir.path(),
        "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: https://cdn.example:8443/mirror/\n",
    );
    let layer = push(&b, "redir/app");
    let d = digest(&layer);
    let (status, location, _) = get_raw(&format!("{}/v2/redir/app/blobs/{d}", b.url));
    assert_eq!(status, 307);
    assert_eq!(
        location.as_deref(),
        Some(format!("https://cdn.example:8443/mirror{}", blob_path(&d)).as_str())
    );
    // HEAD is answered here; manifests are never redirected.
    let c = Client::new(&b.url, None);
    assert_eq!(
        c.head(&format!("/v2/redir/app/blobs/{d}")).unwrap().status,
        200
    );
    assert_eq!(
        get_raw(&format!("{}/v2/redir/app/manifests/v1", b.url)).0,
        200
    );
    // An unknown blob is still 404, not a redirect.
    let missing = digest(b"missing");
    assert_eq!(
        get_raw(&format!("{}/v2/redir/app/blobs/{missing}", b.url)).0,
        404
    );
}

#[test]
fn redirect_disable_turns_the_middleware_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let b = Berth::start_with_config(
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  redirect:\n    disable: true\nhttp:\n  addr: 127.0.0.1:0\nmiddleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: https://cdn.example/\n",
            root.display()
        ),
        &root,
    );
    let layer = push(&b, "plain/app");
    let (status, location, body) =
        get_raw(&format!("{}/v2/plain/app/blobs/{}", b.url, digest(&layer)));
    assert_eq!((status, location), (200, None));
    assert_eq!(body, layer);
}

/// A PKCS#1 RSA key pair made by openssl, as AWS hands them out: (private PEM path, public
/// key as PKCS#1 DER).
fn cloudfront_key(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join("cloudfront.pem");
    run_ok(
        Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&key)
            .arg("2048"),
    );
    let out = run_ok(
        Command::new("openssl")
            .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
            .arg(&key),
    );
    (key, out.stdout)
}

fn s3_config(garage: &Garage, bucket: &str, root: &str, middleware: &str) -> String {
    format!(
        "version: 0.1\nstorage:\n  s3:\n    region: garage\n    regionendpoint: {}\n    bucket: {bucket}\n    rootdirectory: {root}\n    accesskey: {}\n    secretkey: {}\n    secure: false\n    forcepathstyle: true\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\nmiddleware:\n  storage:\n{middleware}",
        garage.url, garage.key_id, garage.secret
    )
}

#[test]
fn cloudfront_signs_downloads_of_s3_blobs_with_the_key_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_der) = cloudfront_key(dir.path());
    let garage = Garage::start();
    garage.create_bucket("cfbucket");
    let mw = format!(
        "    - name: cloudfront\n      options:\n        baseurl: d111111abcdef8.cloudfront.net\n        privatekey: {}\n        keypairid: K2JCJMDEHXQW5F\n        duration: 3000s\n        ipfilteredby: none\n",
        key.display()
    );
    let b = Berth::start_with_config(
        &s3_config(&garage, "cfbucket", "/registry/", &mw),
        dir.path(),
    );
    let layer = push(&b, "cf/app");
    let d = digest(&layer);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (status, location, _) = get_raw(&format!("{}/v2/cf/app/blobs/{d}", b.url));
    assert_eq!(status, 307);
    let location = location.unwrap();
    let resource = format!(
        "https://d111111abcdef8.cloudfront.net/registry{}",
        blob_path(&d)
    );
    let (base, query) = location.split_once('?').unwrap();
    assert_eq!(base, resource, "{location}");
    let params: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap())
        .collect();
    assert_eq!(
        params.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["Expires", "Signature", "Key-Pair-Id"]
    );
    assert_eq!(params[2].1, "K2JCJMDEHXQW5F");
    let expires: u64 = params[0].1.parse().unwrap();
    assert!(
        (before + 2990..=before + 3010).contains(&expires),
        "Expires {expires}, now {before}"
    );
    // CloudFront's check: the canned policy it rebuilds, RSA-SHA1 with the public key.
    let policy = format!(
        r#"{{"Statement":[{{"Resource":"{resource}","Condition":{{"DateLessThan":{{"AWS:EpochTime":{expires}}}}}}}]}}"#
    );
    let sig: String = params[1]
        .1
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '=',
            '~' => '/',
            c => c,
        })
        .collect();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .unwrap();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        &public_der,
    );
    public
        .verify(policy.as_bytes(), &sig)
        .expect("the signature verifies with the key pair's public key");
    assert!(
        public
            .verify(policy.replace("registry", "other").as_bytes(), &sig)
            .is_err(),
        "the check can fail"
    );
    // The signed key is the one the blob was stored under.
    let key = format!("registry{}", blob_path(&d));
    let keys = garage.keys("cfbucket", "registry/");
    assert!(keys.contains(&key), "{key} is not in the bucket: {keys:?}");
}

#[test]
fn cloudfront_over_the_filesystem_passes_downloads_through_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = cloudfront_key(dir.path());
    let b = Berth::start_on(
        &dir.path().join("data"),
        &format!(
            "middleware:\n  storage:\n    - name: cloudfront\n      options:\n        baseurl: https://cdn.example/\n        privatekey: {}\n        keypairid: K1\n        ipfilteredby: aws\n",
            key.display()
        ),
    );
    let layer = push(&b, "fs/app");
    let (status, location, body) =
        get_raw(&format!("{}/v2/fs/app/blobs/{}", b.url, digest(&layer)));
    assert_eq!((status, location), (200, None));
    assert_eq!(body, layer);
    let log = b.log();
    assert!(
        log.contains("works only as the first storage middleware over S3"),
        "{log}"
    );
    assert!(log.contains("ipfilteredby: aws is not applied"), "{log}");
}

#[test]
fn rewrite_changes_s3_presigned_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::start();
    garage.create_bucket("rwbucket");
    let mw = "    - name: rewrite\n      options:\n        scheme: https\n        host: blobs.example:9443\n        trimpathprefix: /rwbucket\n";
    let b = Berth::start_with_config(&s3_config(&garage, "rwbucket", "/", mw), dir.path());
    let layer = push(&b, "rw/app");
    let d = digest(&layer);
    let (status, location, _) = get_raw(&format!("{}/v2/rw/app/blobs/{d}", b.url));
    assert_eq!(status, 307);
    let location = location.unwrap();
    let (base, query) = location.split_once('?').unwrap();
    assert_eq!(base, format!("https://blobs.example:9443{}", blob_path(&d)));
    assert!(query.contains("X-Amz-Signature="), "{location}");
    // Undone, it is the presigned URL S3 answers.
    let original = format!("{}/rwbucket{}?{query}", garage.url, blob_path(&d));
    let (status, _, body) = get_raw(&original);
    assert_eq!(status, 200, "{original}");
    assert_eq!(body, layer);
}

/// `berth config check` and `berth serve` on a configuration: (exit code, stderr + stdout).
fn refused(config: &str) -> (Option<i32>, String, Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(
        &path,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n{config}",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(support::bin())
            .args(args)
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        )
    };
    let (check_code, check_out) = run(&["config", "check"]);
    let (serve_code, serve_out) = run(&["serve"]);
    (check_code, check_out, serve_code, serve_out)
}

#[test]
fn unknown_middleware_refuses_to_start_as_in_distribution() {
    for (config, message) in [
        (
            "middleware:\n  storage:\n    - name: cloudfrnt\n      options:\n        baseurl: x\n",
            "no storage middleware registered with name: cloudfrnt",
        ),
        (
            "middleware:\n  registry:\n    - name: ARegistryMiddleware\n      options:\n        foo: bar\n",
            "no registry middleware registered with name: ARegistryMiddleware",
        ),
        (
            "middleware:\n  repository:\n    - name: ARepositoryMiddleware\n",
            "no repository middleware registered with name: ARepositoryMiddleware",
        ),
        (
            "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: example.com\n",
            "no scheme specified for redirect baseurl",
        ),
        (
            "middleware:\n  storage:\n    - name: cloudfront\n      options:\n        baseurl: x\n        privatekey: /nonexistent/key.pem\n        keypairid: K\n",
            "failed to read privatekey file /nonexistent/key.pem",
        ),
    ] {
        let (check_code, check_out, serve_code, serve_out) = refused(config);
        assert_ne!(serve_code, Some(0), "{config}\n{serve_out}");
        assert!(serve_out.contains(message), "{config}\nserve said:\n{serve_out}");
        assert!(!serve_out.contains("listening on"), "{serve_out}");
        if !message.starts_with("failed to read") {
            // The file is only read when serving.
            assert_ne!(check_code, Some(0), "{config}\n{check_out}");
            assert!(check_out.contains(message), "{config}\ncheck said:\n{check_out}");
        }
    }
}
