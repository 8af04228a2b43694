//! The `/v2/` API end to end over real HTTP: the server runs in-process on `127.0.0.1:0`
//! (filesystem or in-memory storage), requests are made with a plain HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;

use berth_server::setup::{state, DriverChoice};
use berth_server::ServerOptions;
use sha2::Digest as _;

struct Server {
    url: String,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    _rt: tokio::runtime::Runtime,
}

fn start_with(opts: ServerOptions, delete: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let st = state(
        DriverChoice::Filesystem(berth_storage::FilesystemDriver::new(root.clone())),
        berth_registry::Options {
            delete_enabled: delete,
            ..Default::default()
        },
        opts,
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(berth_server::run(listener, st, std::future::pending()));
    Server {
        url: format!("http://{addr}"),
        addr,
        _dir: dir,
        root,
        _rt: rt,
    }
}

fn start() -> Server {
    start_with(ServerOptions::default(), true)
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn req(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut r = agent.request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let res = if body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE") {
        r.call()
    } else {
        r.send_bytes(body)
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| (n.clone(), resp.header(&n).unwrap_or("").to_owned()))
        .collect();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn digest_of(data: &[u8]) -> String {
    let h = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn abs(s: &Server, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{}{location}", s.url)
    }
}

fn push_blob(s: &Server, repo: &str, data: &[u8]) -> String {
    let d = digest_of(data);
    let r = req(
        "POST",
        &format!("{}/v2/{repo}/blobs/uploads/?digest={d}", s.url),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    d
}

fn image_manifest(
    config: &str,
    config_len: usize,
    layers: &[(&str, usize)],
    extra: &str,
) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{}]{extra}}}"#,
        layers.join(",")
    )
    .into_bytes()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn push_image(s: &Server, repo: &str, tag: &str, seed: &str) -> (String, Vec<u8>) {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let layer = format!("layer {seed}");
    let cd = push_blob(s, repo, config.as_bytes());
    let ld = push_blob(s, repo, layer.as_bytes());
    let m = image_manifest(&cd, config.len(), &[(&ld, layer.len())], "");
    let r = req(
        "PUT",
        &format!("{}/v2/{repo}/manifests/{tag}", s.url),
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    (digest_of(&m), m)
}

#[test]
fn base_endpoint() {
    let s = start();
    let r = req("GET", &format!("{}/v2/", s.url), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
}

#[test]
fn monolithic_push_pull_and_layout() {
    let s = start();
    let data = b"hello berth".to_vec();
    let d = push_blob(&s, "a/b", &data);
    let r = req("GET", &format!("{}/v2/a/b/blobs/{d}", s.url), &[], b"");
    assert_eq!((r.status, r.body.clone()), (200, data.clone()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let r = req("HEAD", &format!("{}/v2/a/b/blobs/{d}", s.url), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert!(r.body.is_empty());
    // distribution's layout, byte for byte.
    let hex = &d[7..];
    let v2 = s.root.join("docker/registry/v2");
    assert_eq!(
        std::fs::read(v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))).unwrap(),
        data
    );
    assert_eq!(
        std::fs::read_to_string(v2.join(format!("repositories/a/b/_layers/sha256/{hex}/link")))
            .unwrap(),
        d
    );
    // Another repository does not see it.
    assert_eq!(
        req("HEAD", &format!("{}/v2/other/blobs/{d}", s.url), &[], b"").status,
        404
    );
    let r = req("GET", &format!("{}/v2/other/blobs/{d}", s.url), &[], b"");
    assert_eq!((r.status, r.code()), (404, "BLOB_UNKNOWN".into()));
}

#[test]
fn ranged_blob_reads() {
    let s = start();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 256) as u8).collect();
    let d = push_blob(&s, "r", &data);
    let url = format!("{}/v2/r/blobs/{d}", s.url);
    let r = req("GET", &url, &[("Range", "bytes=10-19")], b"");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/5000"));
    let r = req("GET", &url, &[("Range", "bytes=-10")], b"");
    assert_eq!((r.status, r.body.as_slice()), (206, &data[4990..]));
    let r = req("GET", &url, &[("Range", "bytes=5000-")], b"");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */5000"));
}

#[test]
fn chunked_upload_with_status_and_out_of_order_chunk() {
    let s = start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = req("POST", &format!("{}/v2/c/blobs/uploads/", s.url), &[], b"");
    assert_eq!(r.status, 202);
    let id = r.header("docker-upload-uuid").unwrap().to_owned();
    let mut loc = abs(&s, r.header("location").unwrap());
    assert!(
        loc.starts_with("http://"),
        "Location is absolute by default: {loc}"
    );
    assert_eq!(r.header("range"), Some("0-0"));
    let mut off = 0;
    for chunk in data.chunks(100_000) {
        let cr = format!("{}-{}", off, off + chunk.len() - 1);
        let r = req(
            "PATCH",
            &loc,
            &[
                ("Content-Range", &cr),
                ("Content-Type", "application/octet-stream"),
            ],
            chunk,
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        off += chunk.len();
        assert_eq!(r.header("range"), Some(format!("0-{}", off - 1).as_str()));
        loc = abs(&s, r.header("location").unwrap());
    }
    // Status.
    let r = req("GET", &loc, &[], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some("0-299999"));
    assert_eq!(r.header("docker-upload-uuid"), Some(id.as_str()));
    // A repeated (out-of-order) chunk is refused and changes nothing.
    let r = req("PATCH", &loc, &[("Content-Range", "0-9")], &data[..10]);
    assert_eq!(r.status, 416);
    // ... and says where the upload stands, so the client can resume.
    assert_eq!(r.code(), "BLOB_UPLOAD_INVALID");
    assert_eq!(r.header("range"), Some("0-299999"));
    assert!(r.header("location").is_some());
    // The saved hash state is Go's format at the current offset.
    let hs = s.root.join(format!(
        "docker/registry/v2/repositories/c/_uploads/{id}/hashstates/sha256/300000"
    ));
    assert_eq!(std::fs::read(hs).unwrap().len(), 108);
    // Finish with a wrong digest: refused, nothing visible, the session is gone.
    let wrong = digest_of(b"something else");
    let r = req("PUT", &format!("{loc}?digest={wrong}"), &[], b"");
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    assert_eq!(
        req("HEAD", &format!("{}/v2/c/blobs/{wrong}", s.url), &[], b"").status,
        404
    );
    assert_eq!(req("GET", &loc, &[], b"").status, 404);
    assert!(!s
        .root
        .join("docker/registry/v2/blobs/sha256")
        .join(&wrong[7..9])
        .exists());
}

#[test]
fn streamed_upload_then_put_with_final_chunk() {
    let s = start();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let d = digest_of(&data);
    let r = req("POST", &format!("{}/v2/st/blobs/uploads/", s.url), &[], b"");
    let loc = abs(&s, r.header("location").unwrap());
    let r = req("PATCH", &loc, &[], &data[..50_000]); // no Content-Range: streamed
    assert_eq!(r.status, 202);
    let loc = abs(&s, r.header("location").unwrap());
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = req(
        "PUT",
        &format!("{loc}{sep}digest={d}"),
        &[("Content-Range", "50000-69999")],
        &data[50_000..],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        req("GET", &format!("{}/v2/st/blobs/{d}", s.url), &[], b"").body,
        data
    );
}

#[test]
fn upload_survives_restart_and_cancel() {
    let s = start();
    let r = req("POST", &format!("{}/v2/rs/blobs/uploads/", s.url), &[], b"");
    let loc = abs(&s, r.header("location").unwrap());
    let r = req("PATCH", &loc, &[("Content-Range", "0-4")], b"hello");
    assert_eq!(r.status, 202);
    // A second server on the same root continues the session.
    let s2 = start_with(ServerOptions::default(), true);
    std::fs::create_dir_all(&s2.root).unwrap();
    let dst = s2.root.clone();
    std::fs::remove_dir_all(&dst).unwrap();
    copy_dir(&s.root, &dst);
    let loc2 = loc.replace(&s.url, &s2.url);
    let r = req("PATCH", &loc2, &[("Content-Range", "5-10")], b" world");
    assert_eq!(r.status, 202);
    let d = digest_of(b"hello world");
    let r = req("PUT", &format!("{loc2}?digest={d}"), &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(
        req("GET", &format!("{}/v2/rs/blobs/{d}", s2.url), &[], b"").body,
        b"hello world"
    );
    // Cancel.
    let r = req("POST", &format!("{}/v2/rs/blobs/uploads/", s.url), &[], b"");
    let loc = abs(&s, r.header("location").unwrap());
    assert_eq!(req("DELETE", &loc, &[], b"").status, 204);
    let r = req("GET", &loc, &[], b"");
    assert_eq!((r.status, r.code()), (404, "BLOB_UPLOAD_UNKNOWN".into()));
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

#[test]
fn cross_repo_mount() {
    let s = start();
    let d = push_blob(&s, "src", b"shared layer");
    let r = req(
        "POST",
        &format!("{}/v2/dst/blobs/uploads/?mount={d}&from=src", s.url),
        &[],
        b"",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        req("HEAD", &format!("{}/v2/dst/blobs/{d}", s.url), &[], b"").status,
        200
    );
    // Not mountable: a new session instead.
    let missing = digest_of(b"nope");
    let r = req(
        "POST",
        &format!("{}/v2/dst/blobs/uploads/?mount={missing}&from=src", s.url),
        &[],
        b"",
    );
    assert_eq!(r.status, 202);
    assert!(r.header("location").is_some());
}

#[test]
fn manifests_tags_and_deletes() {
    let s = start();
    let (d, m) = push_image(&s, "app", "v1", "one");
    let r = req("GET", &format!("{}/v2/app/manifests/v1", s.url), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, m, "stored byte for byte");
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let r = req("HEAD", &format!("{}/v2/app/manifests/{d}", s.url), &[], b"");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some(m.len().to_string().as_str()))
    );
    let v2 = s
        .root
        .join("docker/registry/v2/repositories/app/_manifests");
    assert_eq!(
        std::fs::read_to_string(v2.join("tags/v1/current/link")).unwrap(),
        d
    );
    assert_eq!(
        std::fs::read_to_string(v2.join(format!("tags/v1/index/sha256/{}/link", &d[7..]))).unwrap(),
        d
    );
    assert_eq!(
        std::fs::read_to_string(v2.join(format!("revisions/sha256/{}/link", &d[7..]))).unwrap(),
        d
    );

    for t in ["b", "a", "c", "d"] {
        let r = req(
            "PUT",
            &format!("{}/v2/app/manifests/{t}", s.url),
            &[("Content-Type", OCI_MANIFEST)],
            &m,
        );
        assert_eq!(r.status, 201);
    }
    let r = req("GET", &format!("{}/v2/app/tags/list?n=2", s.url), &[], b"");
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/app/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let r = req(
        "GET",
        &format!("{}/v2/app/tags/list?n=2&last=b", s.url),
        &[],
        b"",
    );
    assert_eq!(r.json()["tags"], serde_json::json!(["c", "d"]));
    let r = req("GET", &format!("{}/v2/app/tags/list", s.url), &[], b"");
    assert_eq!(
        r.json()["tags"],
        serde_json::json!(["a", "b", "c", "d", "v1"])
    );
    assert!(r.header("link").is_none());
    let r = req("GET", &format!("{}/v2/nope/tags/list", s.url), &[], b"");
    assert_eq!((r.status, r.code()), (404, "NAME_UNKNOWN".into()));

    // Tag delete removes only the tag.
    assert_eq!(
        req("DELETE", &format!("{}/v2/app/manifests/a", s.url), &[], b"").status,
        202
    );
    assert_eq!(
        req("GET", &format!("{}/v2/app/manifests/a", s.url), &[], b"").status,
        404
    );
    assert_eq!(
        req("GET", &format!("{}/v2/app/manifests/{d}", s.url), &[], b"").status,
        200
    );
    // Manifest delete removes the manifest and its tags.
    assert_eq!(
        req(
            "DELETE",
            &format!("{}/v2/app/manifests/{d}", s.url),
            &[],
            b""
        )
        .status,
        202
    );
    let r = req("GET", &format!("{}/v2/app/manifests/{d}", s.url), &[], b"");
    assert_eq!((r.status, r.code()), (404, "MANIFEST_UNKNOWN".into()));
    assert_eq!(
        req("GET", &format!("{}/v2/app/manifests/b", s.url), &[], b"").status,
        404
    );
    assert_eq!(
        req(
            "DELETE",
            &format!("{}/v2/app/manifests/{d}", s.url),
            &[],
            b""
        )
        .status,
        404
    );
}

#[test]
fn manifest_refusals() {
    let s = start();
    let cd = push_blob(&s, "m", b"{}");
    let missing = digest_of(b"missing layer");
    let m = image_manifest(&cd, 2, &[(&missing, 13)], "");
    let r = req(
        "PUT",
        &format!("{}/v2/m/manifests/x", s.url),
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    let r = req(
        "PUT",
        &format!("{}/v2/m/manifests/x", s.url),
        &[("Content-Type", OCI_MANIFEST)],
        b"{not json",
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()));
    let schema1 = br#"{"schemaVersion":1,"name":"m","tag":"x","fsLayers":[],"history":[]}"#;
    let r = req(
        "PUT",
        &format!("{}/v2/m/manifests/x", s.url),
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        )],
        schema1,
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()));
    // Digest reference that does not match the body.
    let good = image_manifest(&cd, 2, &[], "");
    let r = req(
        "PUT",
        &format!("{}/v2/m/manifests/{}", s.url, digest_of(b"x")),
        &[("Content-Type", OCI_MANIFEST)],
        &good,
    );
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    // Index whose child is unknown.
    let idx = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{missing}","size":5}}]}}"#
    );
    let r = req(
        "PUT",
        &format!("{}/v2/m/manifests/i", s.url),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        idx.as_bytes(),
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    // Too large.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = req(
        "PUT",
        &format!("{}/v2/m/manifests/big", s.url),
        &[("Content-Type", OCI_MANIFEST)],
        &big,
    );
    // The spec's status for a manifest over the limit, with a spec code in the body.
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "MANIFEST_INVALID");
    // Nothing of the refused manifests became visible.
    let r = req("GET", &format!("{}/v2/m/tags/list", s.url), &[], b"");
    assert_eq!(r.json()["tags"], serde_json::json!([]));
}

#[test]
fn invalid_names_and_digests_are_4xx_not_500() {
    let s = start();
    for (path, status, code) in [
        ("/v2/Bad/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a%2Fb/tags/list", 400, "NAME_INVALID"),
        ("/v2/a/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        (
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/a/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        ("/v2/a/referrers/notadigest", 400, "DIGEST_INVALID"),
        ("/v2/a/blobs/uploads/../../../etc", 404, "NAME_UNKNOWN"),
        ("/v2/a/blobs/uploads/0000", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("/v2/a/tags/list?n=abc", 400, "UNSUPPORTED"),
    ] {
        let r = req("GET", &format!("{}{path}", s.url), &[], b"");
        assert_eq!((r.status, r.code().as_str()), (status, code), "{path}");
    }
    let long = vec!["abcdefghij"; 24].join("/");
    let r = req("GET", &format!("{}/v2/{long}/tags/list", s.url), &[], b"");
    assert_eq!((r.status, r.code()), (400, "NAME_INVALID".into()));
    let r = req(
        "PUT",
        &format!(
            "{}/v2/a/blobs/uploads/00000000-0000-4000-8000-000000000000?digest=sha256:x",
            s.url
        ),
        &[],
        b"",
    );
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    assert!(!s.root.join("docker/registry/v2/repositories/Bad").exists());
}

#[test]
fn catalog_with_pagination() {
    let s = start_with(
        ServerOptions {
            catalog_max_entries: 3,
            ..ServerOptions::default()
        },
        true,
    );
    for repo in ["z", "a/b", "a-c", "a", "m/n/o"] {
        push_blob(&s, repo, repo.as_bytes());
    }
    let r = req("GET", &format!("{}/v2/_catalog", s.url), &[], b"");
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["a", "a-c", "a/b"])
    );
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?n=3&last=a/b>; rel=\"next\"")
    );
    let r = req(
        "GET",
        &format!("{}/v2/_catalog?n=2&last=a/b", s.url),
        &[],
        b"",
    );
    assert_eq!(r.json()["repositories"], serde_json::json!(["m/n/o", "z"]));
    assert!(r.header("link").is_none());
}

#[test]
fn referrers_with_filter_and_subject_header() {
    let s = start();
    let (subject, m) = push_image(&s, "ref", "base", "s");
    let empty = push_blob(&s, "ref", b"{}");
    for (i, at) in ["application/x-sbom", "application/x-sig"]
        .iter()
        .enumerate()
    {
        let extra = format!(
            r#","artifactType":"{at}","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}},"annotations":{{"n":"{i}"}}"#,
            m.len()
        );
        let body = image_manifest(&empty, 2, &[], &extra);
        let d = digest_of(&body);
        let r = req(
            "PUT",
            &format!("{}/v2/ref/manifests/{d}", s.url),
            &[("Content-Type", OCI_MANIFEST)],
            &body,
        );
        assert_eq!(r.status, 201);
        assert_eq!(r.header("oci-subject"), Some(subject.as_str()));
    }
    let r = req(
        "GET",
        &format!("{}/v2/ref/referrers/{subject}", s.url),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let idx = r.json();
    assert_eq!(idx["manifests"].as_array().map(Vec::len), Some(2));
    let r = req(
        "GET",
        &format!(
            "{}/v2/ref/referrers/{subject}?artifactType=application/x-sig",
            s.url
        ),
        &[],
        b"",
    );
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let idx = r.json();
    assert_eq!(idx["manifests"].as_array().map(Vec::len), Some(1));
    assert_eq!(idx["manifests"][0]["artifactType"], "application/x-sig");
    assert_eq!(idx["manifests"][0]["annotations"]["n"], "1");
    let r = req(
        "GET",
        &format!("{}/v2/ref/referrers/{}", s.url, digest_of(b"unknown")),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.json()["manifests"].clone()),
        (200, serde_json::json!([]))
    );
}

#[test]
fn deletes_disabled_and_read_only() {
    let s = start_with(ServerOptions::default(), false);
    let d = push_blob(&s, "x", b"data");
    let r = req("DELETE", &format!("{}/v2/x/blobs/{d}", s.url), &[], b"");
    assert_eq!((r.status, r.code()), (405, "UNSUPPORTED".into()));
    let ro = start_with(
        ServerOptions {
            read_only: true,
            ..ServerOptions::default()
        },
        true,
    );
    let r = req("POST", &format!("{}/v2/x/blobs/uploads/", ro.url), &[], b"");
    assert_eq!((r.status, r.code()), (405, "UNSUPPORTED".into()));
    assert_eq!(req("GET", &format!("{}/v2/", ro.url), &[], b"").status, 200);
}

#[test]
fn relative_urls() {
    let s = start_with(
        ServerOptions {
            relative_urls: true,
            ..ServerOptions::default()
        },
        true,
    );
    let r = req(
        "POST",
        &format!("{}/v2/rel/blobs/uploads/", s.url),
        &[],
        b"",
    );
    assert!(r
        .header("location")
        .unwrap()
        .starts_with("/v2/rel/blobs/uploads/"));
}

/// Clients try TLS first on 127.0.0.1; a ClientHello on the plain port must be answered or
/// closed, and the server must keep serving.
#[test]
fn tls_client_hello_on_plain_port() {
    let s = start();
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // A TLS 1.2 ClientHello record header plus some handshake bytes.
    c.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ])
    .unwrap();
    c.write_all(&[0u8; 40]).unwrap();
    let mut buf = Vec::new();
    let res = c.read_to_end(&mut buf);
    assert!(
        res.is_ok(),
        "connection must be answered or closed, not left hanging: {res:?}"
    );
    assert_eq!(req("GET", &format!("{}/v2/", s.url), &[], b"").status, 200);
}

#[test]
fn concurrent_pushes_of_one_blob() {
    let s = start();
    let data = vec![7u8; 1_000_000];
    let d = digest_of(&data);
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                let r = req(
                    "POST",
                    &format!("{}/v2/cc/blobs/uploads/?digest={d}", s.url),
                    &[],
                    &data,
                );
                assert_eq!(r.status, 201);
            });
        }
    });
    assert_eq!(
        req("GET", &format!("{}/v2/cc/blobs/{d}", s.url), &[], b"").body,
        data
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body from a raw socket.
fn read_raw_response(c: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut byte).unwrap(),
            1,
            "connection closed mid-response"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    (status, head)
}

/// Regression: an upload chunk refused before its body was read (416) used to leave the
/// connection to be closed silently, so the client's next request on it failed ("broken pipe"
/// while writing, or EOF). The unread body is now drained and the connection stays usable;
/// a body too large to drain gets `Connection: close` so the client does not reuse it.
#[test]
fn refused_body_keeps_the_connection_usable() {
    let s = start();
    let r = req("POST", &format!("{}/v2/k/blobs/uploads/", s.url), &[], b"");
    let loc = r.header("location").unwrap().to_owned();
    let path = loc.trim_start_matches(&s.url).to_owned();
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Range: 500-{}\r\nContent-Length: {}\r\n\r\n",
        500 + chunk.len() - 1,
        chunk.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&chunk).unwrap();
    let (status, head) = read_raw_response(&mut c);
    assert_eq!(status, 416, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The same connection serves the next request.
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let (status, head) = read_raw_response(&mut c);
    assert_eq!(status, 204, "{head}");
    assert!(head.contains("0-0"), "{head}");

    // A refused body far beyond the drain limit: the answer says the connection closes.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let big = 64 << 20;
    c.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Range: 500-{}\r\nContent-Length: {big}\r\n\r\n",
            500 + big - 1
        )
        .as_bytes(),
    )
    .unwrap();
    let writer = {
        let mut c = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let block = vec![0u8; 1 << 20];
            for _ in 0..64 {
                if c.write_all(&block).is_err() {
                    break;
                }
            }
        })
    };
    let (status, head) = read_raw_response(&mut c);
    assert_eq!(status, 416, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let _ = writer.join();
}

/// BuildKit's index-form registry cache (`--export-cache type=registry,image-manifest=false`)
/// pushes an image index whose entries are blobs (layers and its cache config), which
/// distribution accepts. A blob that is not in the repository is still refused.
#[test]
fn index_may_list_blobs_of_the_repository() {
    let s = start();
    let layer = b"buildkit cache layer";
    let d = push_blob(&s, "cache", layer);
    let idx = |digest: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{digest}","size":{}}}]}}"#,
            layer.len()
        )
    };
    let r = req(
        "PUT",
        &format!("{}/v2/cache/manifests/index", s.url),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        idx(&d).as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let missing = digest_of(b"not pushed");
    let r = req(
        "PUT",
        &format!("{}/v2/cache/manifests/broken", s.url),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        idx(&missing).as_bytes(),
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_BLOB_UNKNOWN".into()));
}
