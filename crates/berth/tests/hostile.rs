//! Hostile input against a real `berth serve`: a table of bad requests — malformed digests,
//! ranges and names, path traversal and percent-encoded separators, malformed and oversized
//! manifests, wrong media types, smuggling and malformed framing, huge headers, stalled and
//! truncated bodies, chunk replay, mismatched sizes, garbage `Authorization` headers — each
//! with the exact status and OCI error code it must get (the distribution-spec v1.1 error
//! table; `None` where hyper refuses the request before Berth sees it, or where there is no
//! error). After each table: no new blob, manifest, tag or stray file in the data directory
//! (upload sessions are allowed), and no panic, no 5xx and no ERROR in the server's log.
//!
//! The slow-client limits (`http.limits`: header read timeout, body and write idle timeouts,
//! header size) have their own tests below.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use berth_conformance::client::{Body, Client};
use berth_conformance::fixtures::{digest, expect_status, Image, OCI_INDEX, OCI_MANIFEST};
use support::raw::{self, RawResp};
use support::Berth;

/// How long a single case may take (stalled bodies wait for the body idle timeout).
const CASE_WAIT: Duration = Duration::from_secs(20);

/// What a case sends.
enum Send {
    /// A well-formed request (`Content-Length` and `Connection: close` added).
    Req {
        method: &'static str,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Bytes exactly as given; the connection stays open (a stalled client).
    Raw(Vec<u8>),
    /// Bytes exactly as given, then the client closes its side (a client that went away).
    RawThenClose(Vec<u8>),
}

struct Case {
    what: &'static str,
    send: Send,
    /// `0`: the server closes the connection without an answer.
    status: u16,
    /// The OCI error code of the body (`None`: the body is not an OCI error).
    code: Option<&'static str>,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        what,
        send: Send::Req {
            method,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        },
        status,
        code,
    }
}

fn get(
    what: &'static str,
    path: impl Into<String>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    case(what, "GET", path, &[], Vec::new(), status, code)
}

fn raw_case(
    what: &'static str,
    bytes: impl Into<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        what,
        send: Send::Raw(bytes.into()),
        status,
        code,
    }
}

/// Replaces every `{name}` of `vars` in `bytes`.
fn substitute(bytes: &[u8], vars: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (k, v) in vars {
        let pat = format!("{{{k}}}").into_bytes();
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(&pat) {
                next.extend_from_slice(v.as_bytes());
                i += pat.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

fn has_placeholder(bytes: &[u8], name: &str) -> bool {
    let pat = format!("{{{name}}}").into_bytes();
    bytes.windows(pat.len()).any(|w| w == pat.as_slice())
}

/// The request bytes of a case.
fn bytes_of(send: &Send) -> Vec<u8> {
    match send {
        Send::Req {
            method,
            path,
            headers,
            body,
        } => {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            raw::request(method, path, &h, body)
        }
        Send::Raw(b) | Send::RawThenClose(b) => b.clone(),
    }
}

/// The path of an upload session's `Location`.
fn path_of(url: &str, location: &str) -> String {
    location.trim_start_matches(url).to_owned()
}

/// Runs the table; returns the failures (one line each).
fn run_table(b: &Berth, cases: &[Case], fixed: &BTreeMap<String, String>) -> Vec<String> {
    let client = Client::new(&b.url, None);
    let mut failures = Vec::new();
    for c in cases {
        let template = bytes_of(&c.send);
        let mut vars = fixed.clone();
        // Fresh upload sessions, when the case names one.
        if has_placeholder(&template, "upload") || has_placeholder(&template, "upload_id") {
            let loc = client.start_upload("hostile").unwrap();
            let path = path_of(&b.url, &loc);
            let id = path.rsplit('/').next().unwrap().to_owned();
            vars.insert("upload".into(), path);
            vars.insert("upload_id".into(), id);
        }
        if has_placeholder(&template, "upload5") {
            let loc = client.start_upload("hostile").unwrap();
            let r = client
                .send(
                    "PATCH",
                    &loc,
                    &[("Content-Range", "0-4")],
                    Body::Bytes(b"hello"),
                )
                .unwrap();
            expect_status(&r, &[202]).unwrap();
            vars.insert(
                "upload5".into(),
                path_of(&b.url, r.header("location").unwrap()),
            );
        }
        let bytes = substitute(&template, &vars);
        let resp = match &c.send {
            Send::RawThenClose(_) => {
                let mut s = TcpStream::connect(&b.host).unwrap();
                let started = Instant::now();
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
                raw::read_until_closed(&mut s, started, CASE_WAIT)
            }
            _ => raw::exchange(&b.host, &bytes, CASE_WAIT),
        };
        let got = (resp.status, resp.code());
        let want = (c.status, c.code.map(str::to_owned));
        if got != want {
            failures.push(format!(
                "{}: want {want:?}, got {got:?} ({})",
                c.what,
                resp.describe()
            ));
        } else if !resp.closed {
            failures.push(format!(
                "{}: the connection was still open after {:?}",
                c.what, CASE_WAIT
            ));
        }
    }
    failures
}

/// Every file and directory under `root` with its content's digest (directories: empty).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, String::new());
                stack.push(p);
            } else {
                out.insert(rel, digest(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// What changed between two snapshots, other than upload sessions (`_uploads/...`) and the
/// directories that hold them.
fn unexpected_changes(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    let in_uploads = |p: &Path| p.components().any(|c| c.as_os_str() == "_uploads");
    let holds_uploads = |p: &Path| {
        after
            .keys()
            .chain(before.keys())
            .any(|q| in_uploads(q) && q.starts_with(p))
    };
    let mut out = Vec::new();
    for (p, d) in after {
        if before.get(p) != Some(d) && !in_uploads(p) && !holds_uploads(p) {
            out.push(format!("new or changed: {}", p.display()));
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) && !in_uploads(p) {
            out.push(format!("removed: {}", p.display()));
        }
    }
    out
}

/// No panic, no 5xx, no ERROR line in the server's log.
fn log_problems(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains(" ERROR ") || l.contains("status=5"))
        .map(|l| l.chars().take(400).collect())
        .collect()
}

fn config(root: &Path, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  limits:\n    readheadertimeout: 3s\n    bodyidletimeout: 2s\n    writeidletimeout: 3s\n{extra}",
        root.display()
    )
}

/// A manifest over the given descriptors (JSON text).
fn manifest(config: &str, layers: &[String]) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":[{}]}}"#,
        layers.join(",")
    )
}

#[test]
fn hostile_requests_get_their_spec_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let b = Berth::start_with_config(&config(&root, ""), &root);
    let client = Client::new(&b.url, None);
    // Something to aim at: an image in base/app, tagged v1.
    let img = Image::oci("hostile-base", 2, "");
    client.push_image("base/app", "v1", &img).unwrap();
    let layer = &img.layers[0];
    let layer_digest = digest(layer);
    let absent = digest(b"nobody pushed this");
    let hello = digest(b"hello");
    let ok_config = format!(
        r#"{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}}"#,
        digest(&img.config),
        img.config.len()
    );
    let absent_layer = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{absent}","size":5}}"#
    );
    let valid_unknown_blobs = manifest(&ok_config, std::slice::from_ref(&absent_layer));
    let mut fixed = BTreeMap::new();
    fixed.insert("layer".to_owned(), layer_digest.clone());
    fixed.insert("absent".to_owned(), absent.clone());
    fixed.insert("hello".to_owned(), hello.clone());

    let long_name = vec!["abcdefghij"; 30].join("/");
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big_manifest = {
        let pad = "x".repeat(5 << 20);
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{ok_config},"layers":[],"annotations":{{"pad":"{pad}"}}}}"#
        )
    };
    let many_tags: String = (0..101).map(|i| format!("tag=t{i}&")).collect();
    let oci = &[("Content-Type", OCI_MANIFEST)][..];
    let max = u64::MAX;

    let cases = vec![
        // ------------------------------------------------------------ names and paths
        get("uppercase name", "/v2/Bad/tags/list", 400, Some("NAME_INVALID")),
        get("dot-dot segment", "/v2/a/../b/manifests/latest", 400, Some("NAME_INVALID")),
        get("leading dot-dot", "/v2/../../etc/tags/list", 400, Some("NAME_INVALID")),
        get("percent-encoded slash", "/v2/a%2Fb/tags/list", 400, Some("NAME_INVALID")),
        get("percent-encoded dot-dot", "/v2/a/%2e%2e/b/tags/list", 400, Some("NAME_INVALID")),
        get("percent-encoded backslash", "/v2/a%5Cb/tags/list", 400, Some("NAME_INVALID")),
        get("encoded NUL in name", "/v2/a%00b/tags/list", 400, Some("NAME_INVALID")),
        get("empty component", "/v2/a//b/tags/list", 400, Some("NAME_INVALID")),
        get("name too long", format!("/v2/{long_name}/tags/list"), 400, Some("NAME_INVALID")),
        get("upload id with encoded traversal", "/v2/a/blobs/uploads/..%2F..%2Fetc", 404, Some("BLOB_UPLOAD_UNKNOWN")),
        get("upload id traversal", "/v2/a/blobs/uploads/../../../etc", 404, Some("NAME_UNKNOWN")),
        get("tag with encoded traversal", "/v2/base/app/manifests/..%2F..%2Fv1", 404, Some("MANIFEST_UNKNOWN")),
        case("PUT under a traversal tag", "PUT", "/v2/hostile/manifests/..%2Fx", oci, valid_unknown_blobs.clone(), 400, Some("MANIFEST_INVALID")),
        get("unknown repository", "/v2/nobody/here/tags/list", 404, Some("NAME_UNKNOWN")),
        get("manifest of an unknown repository", "/v2/nobody/here/manifests/latest", 404, Some("NAME_UNKNOWN")),
        get("unknown tag", "/v2/base/app/manifests/v2", 404, Some("MANIFEST_UNKNOWN")),
        get("not an API path", "/etc/passwd", 404, Some("NAME_UNKNOWN")),
        raw_case("absolute-form target", "GET http://evil.example/v2/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", 200, None),
        raw_case("target without a slash", "GET v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, None),
        raw_case("asterisk target", "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, Some("NAME_UNKNOWN")),
        raw_case("space in the target", "GET /v2/a b/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, None),
        raw_case("non-ASCII byte in the target", b"GET /v2/\xff/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 400, None),
        // ------------------------------------------------------------ digests
        get("short digest", "/v2/base/app/blobs/sha256:1234", 400, Some("DIGEST_INVALID")),
        get("uppercase hex", format!("/v2/base/app/blobs/{}", layer_digest.to_uppercase().replace("SHA256", "sha256")), 400, Some("DIGEST_INVALID")),
        get("sha512 of sha256 length", format!("/v2/base/app/blobs/sha512:{}", &layer_digest[7..]), 400, Some("DIGEST_INVALID")),
        get("unsupported algorithm", "/v2/base/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, Some("DIGEST_INVALID")),
        get("digest without algorithm", format!("/v2/base/app/blobs/{}", &layer_digest[7..]), 400, Some("DIGEST_INVALID")),
        get("percent-encoded colon", format!("/v2/base/app/blobs/sha256%3A{}", &layer_digest[7..]), 400, Some("DIGEST_INVALID")),
        get("unknown blob", format!("/v2/base/app/blobs/{absent}"), 404, Some("BLOB_UNKNOWN")),
        get("manifest by a bad digest", "/v2/base/app/manifests/sha256:zz", 400, Some("DIGEST_INVALID")),
        get("referrers of a bad digest", "/v2/base/app/referrers/notadigest", 400, Some("DIGEST_INVALID")),
        case("DELETE an unknown blob", "DELETE", format!("/v2/base/app/blobs/{absent}"), &[], "", 404, Some("BLOB_UNKNOWN")),
        case("DELETE an unknown manifest", "DELETE", format!("/v2/base/app/manifests/{absent}"), &[], "", 404, Some("MANIFEST_UNKNOWN")),
        // ------------------------------------------------------------ ranges
        case("range past the end", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "bytes=999999-")], "", 416, Some("SIZE_INVALID")),
        case("reversed range", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "bytes=5-2")], "", 416, Some("SIZE_INVALID")),
        case("non-numeric range", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "bytes=abc-")], "", 416, Some("SIZE_INVALID")),
        case("empty suffix range", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "bytes=-0")], "", 416, Some("SIZE_INVALID")),
        case("overflowing range start", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "bytes=99999999999999999999999-")], "", 416, Some("SIZE_INVALID")),
        case("range to u64::MAX", "GET", "/v2/base/app/blobs/{layer}", &[("Range", &format!("bytes=1-{max}"))], "", 206, None),
        case("several ranges (served whole)", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "bytes=0-1,5-9")], "", 200, None),
        case("other range unit (ignored)", "GET", "/v2/base/app/blobs/{layer}", &[("Range", "items=0-1")], "", 200, None),
        // ------------------------------------------------------------ uploads
        case("monolithic POST with a malformed digest", "POST", "/v2/hostile/blobs/uploads/?digest=sha256:nope", &[], "hello", 400, Some("DIGEST_INVALID")),
        case("monolithic POST with the wrong digest", "POST", "/v2/hostile/blobs/uploads/?digest={absent}", &[], "hello", 400, Some("DIGEST_INVALID")),
        case("monolithic POST with a broken escape", "POST", "/v2/hostile/blobs/uploads/?digest=%zz", &[], "hello", 400, Some("DIGEST_INVALID")),
        case("monolithic POST with a sha512 mismatch", "POST", format!("/v2/hostile/blobs/uploads/?digest=sha512:{}", "0".repeat(128)), &[], "hello", 400, Some("DIGEST_INVALID")),
        case("mount of a malformed digest", "POST", "/v2/hostile/blobs/uploads/?mount=bogus&from=base/app", &[], "", 400, Some("DIGEST_INVALID")),
        case("mount from a traversal name (falls back to an upload)", "POST", "/v2/hostile/blobs/uploads/?mount={layer}&from=../../etc", &[], "", 202, None),
        case("chunk out of order", "PATCH", "{upload}", &[("Content-Range", "5-9")], "hello", 416, Some("BLOB_UPLOAD_INVALID")),
        case("malformed Content-Range", "PATCH", "{upload}", &[("Content-Range", "five-nine")], "hello", 416, Some("BLOB_UPLOAD_INVALID")),
        case("Content-Range with a non-ASCII byte", "PATCH", "{upload}", &[("Content-Range", "0-4\u{80}")], "hello", 416, Some("BLOB_UPLOAD_INVALID")),
        case("Content-Range longer than the body", "PATCH", "{upload}", &[("Content-Range", "0-9")], "hello", 400, Some("SIZE_INVALID")),
        case("Content-Range to u64::MAX", "PATCH", "{upload}", &[("Content-Range", &format!("0-{max}"))], "hello", 400, Some("SIZE_INVALID")),
        case("Content-Range at u64::MAX", "PATCH", "{upload}", &[("Content-Range", &format!("{max}-{max}"))], "h", 416, Some("BLOB_UPLOAD_INVALID")),
        case("chunk replayed", "PATCH", "{upload5}", &[("Content-Range", "0-4")], "hello", 416, Some("BLOB_UPLOAD_INVALID")),
        case("overlapping chunk", "PATCH", "{upload5}", &[("Content-Range", "3-7")], "hello", 416, Some("BLOB_UPLOAD_INVALID")),
        case("final chunk replayed", "PUT", "{upload5}?digest={hello}", &[("Content-Range", "0-4")], "hello", 416, Some("BLOB_UPLOAD_INVALID")),
        case("closing PUT with the wrong digest", "PUT", "{upload5}?digest={absent}", &[], "", 400, Some("DIGEST_INVALID")),
        case("closing PUT without a digest", "PUT", "{upload}", &[], "hello", 400, Some("DIGEST_INVALID")),
        case("closing PUT with a malformed digest", "PUT", "{upload}?digest=sha256:bad", &[], "hello", 400, Some("DIGEST_INVALID")),
        case("session of another repository", "PATCH", "/v2/elsewhere/blobs/uploads/{upload_id}", &[], "hello", 404, Some("BLOB_UPLOAD_UNKNOWN")),
        case("unknown session", "PATCH", "/v2/hostile/blobs/uploads/00000000-0000-4000-8000-000000000000", &[], "hello", 404, Some("BLOB_UPLOAD_UNKNOWN")),
        case("cancel an unknown session", "DELETE", "/v2/hostile/blobs/uploads/00000000-0000-4000-8000-000000000000", &[], "", 404, Some("BLOB_UPLOAD_UNKNOWN")),
        get("status of a malformed session id", "/v2/hostile/blobs/uploads/not-a-uuid", 404, Some("BLOB_UPLOAD_UNKNOWN")),
        raw_case("chunk body stalls half-way", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello", 400, Some("BLOB_UPLOAD_INVALID")),
        raw_case("monolithic body stalls half-way", "POST /v2/hostile/blobs/uploads/?digest={hello} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel", 400, Some("BLOB_UPLOAD_INVALID")),
        raw_case("chunked body stalls half-way", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 400, Some("BLOB_UPLOAD_INVALID")),
        raw_case("manifest body stalls half-way", format!("PUT /v2/hostile/manifests/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 1000\r\n\r\n{{\"schemaVersion\":2"), 400, Some("MANIFEST_INVALID")),
        raw_case("malformed chunk size", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400, Some("BLOB_UPLOAD_INVALID")),
        // RFC 9112, 6.3: read by Transfer-Encoding, and the connection closed after the
        // response (checked below, without `Connection: close`).
        raw_case("Content-Length and Transfer-Encoding together", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 202, None),
        raw_case("two different Content-Lengths", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello", 400, None),
        raw_case("negative Content-Length", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: -1\r\n\r\nhello", 400, None),
        raw_case("overflowing Content-Length", "PATCH {upload} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 99999999999999999999999\r\n\r\nhello", 400, None),
        Case {
            what: "body truncated, then the client goes away",
            send: Send::RawThenClose(b"PATCH {upload} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello".to_vec()),
            status: 400,
            code: Some("BLOB_UPLOAD_INVALID"),
        },
        // ------------------------------------------------------------ manifests
        case("manifest that is not JSON", "PUT", "/v2/hostile/manifests/t", oci, "not json", 400, Some("MANIFEST_INVALID")),
        case("manifest that is not UTF-8", "PUT", "/v2/hostile/manifests/t", oci, b"{\"schemaVersion\":2,\"x\":\"\xff\xfe\"}".to_vec(), 400, Some("MANIFEST_INVALID")),
        case("empty manifest", "PUT", "/v2/hostile/manifests/t", oci, "", 400, Some("MANIFEST_INVALID")),
        case("JSON null manifest", "PUT", "/v2/hostile/manifests/t", oci, "null", 400, Some("MANIFEST_INVALID")),
        case("deeply nested JSON", "PUT", "/v2/hostile/manifests/t", oci, deep_json, 400, Some("MANIFEST_INVALID")),
        case("schemaVersion 1", "PUT", "/v2/hostile/manifests/t", oci, r#"{"schemaVersion":1,"name":"x","tag":"t","fsLayers":[]}"#, 400, Some("MANIFEST_INVALID")),
        case("schema1 media type", "PUT", "/v2/hostile/manifests/t", &[("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")], valid_unknown_blobs.clone(), 400, Some("MANIFEST_INVALID")),
        case("unknown media type in the body", "PUT", "/v2/hostile/manifests/t", &[("Content-Type", "application/json")], r#"{"schemaVersion":2,"mediaType":"text/html","config":{},"layers":[]}"#, 400, Some("MANIFEST_INVALID")),
        case("media type and Content-Type disagree", "PUT", "/v2/hostile/manifests/t", &[("Content-Type", OCI_INDEX)], valid_unknown_blobs.clone(), 400, Some("MANIFEST_INVALID")),
        case("malformed descriptor digest", "PUT", "/v2/hostile/manifests/t", oci, manifest(r#"{"mediaType":"a/b","digest":"sha256:../../x","size":1}"#, &[]), 400, Some("MANIFEST_INVALID")),
        case("negative descriptor size", "PUT", "/v2/hostile/manifests/t", oci, manifest(&format!(r#"{{"mediaType":"a/b","digest":"{absent}","size":-1}}"#), &[]), 400, Some("MANIFEST_INVALID")),
        case("layer URL that is not http", "PUT", "/v2/hostile/manifests/t", oci, manifest(&ok_config, &[format!(r#"{{"mediaType":"a/b","digest":"{absent}","size":1,"urls":["file:///etc/passwd"]}}"#)]), 400, Some("MANIFEST_INVALID")),
        case("manifest naming unknown blobs", "PUT", "/v2/hostile/manifests/t", oci, valid_unknown_blobs.clone(), 400, Some("MANIFEST_BLOB_UNKNOWN")),
        case("index naming unknown manifests", "PUT", "/v2/hostile/manifests/t", &[("Content-Type", OCI_INDEX)], format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{absent}","size":10}}]}}"#), 400, Some("MANIFEST_BLOB_UNKNOWN")),
        case("manifest over the size limit", "PUT", "/v2/hostile/manifests/t", oci, big_manifest, 413, Some("MANIFEST_INVALID")),
        case("PUT by a digest that is not the body's", "PUT", "/v2/base/app/manifests/{absent}", oci, img.manifest.clone(), 400, Some("DIGEST_INVALID")),
        case("too many tag parameters", "PUT", format!("/v2/base/app/manifests/{}?{many_tags}", img.digest()), oci, img.manifest.clone(), 414, Some("UNSUPPORTED")),
        case("invalid tag parameter", "PUT", format!("/v2/base/app/manifests/{}?tag=..%2Fx", img.digest()), oci, img.manifest.clone(), 400, Some("MANIFEST_INVALID")),
        // ------------------------------------------------------------ other
        case("unknown method", "FOO", "/v2/", &[], "", 405, Some("UNSUPPORTED")),
        case("POST to the base endpoint", "POST", "/v2/", &[], "", 405, Some("UNSUPPORTED")),
        case("PUT to a blob", "PUT", "/v2/base/app/blobs/{layer}", &[], "hello", 405, Some("UNSUPPORTED")),
        get("negative page size", "/v2/base/app/tags/list?n=-1", 400, Some("UNSUPPORTED")),
        get("overflowing page size", "/v2/base/app/tags/list?n=99999999999999999999999", 400, Some("UNSUPPORTED")),
        get("non-numeric catalog page size", "/v2/_catalog?n=abc", 400, Some("UNSUPPORTED")),
        get("last with invalid UTF-8", "/v2/base/app/tags/list?last=%ff%fe", 200, None),
        raw_case("garbage request line", "GARBAGE\r\n\r\n", 400, None),
        raw_case("HTTP/2 preface on the plain port", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0, None),
        raw_case("unknown HTTP version", "GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n", 400, None),
        raw_case("HTTP/1.0 request", "GET /v2/ HTTP/1.0\r\n\r\n", 200, None),
        raw_case("header name with a space", "GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, None),
        raw_case("header too large", format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "a".repeat(100_000)), 431, None),
        raw_case("request line too large", format!("GET /v2/{}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)), 431, None),
        raw_case("too many headers", format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..101).map(|i| format!("X-H{i}: 1\r\n")).collect::<String>()), 431, None),
    ];

    let before = snapshot(&root);
    let mut failures = run_table(&b, &cases, &fixed);
    // A request with both Content-Length and Transfer-Encoding (a smuggling attempt) is read
    // by Transfer-Encoding and its connection closed at once, never reused for what a proxy
    // may have read as the next request.
    let loc = client.start_upload("hostile").unwrap();
    let smuggle = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
        path_of(&b.url, &loc)
    );
    let r = raw::exchange(&b.host, smuggle.as_bytes(), CASE_WAIT);
    let responses = r.raw.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    if r.status != 202 || responses != 1 || !r.closed || r.elapsed > Duration::from_secs(2) {
        failures.push(format!(
            "CL+TE: want 202 and an immediate close, got {} (closed {} after {:?})",
            r.describe(),
            r.closed,
            r.elapsed
        ));
    }
    // The image is intact.
    let r = client
        .get(&format!("/v2/base/app/blobs/{layer_digest}"), &[])
        .unwrap();
    if r.body != *layer {
        failures.push("the base image's layer changed".into());
    }
    let r = client.get("/v2/base/app/manifests/v1", &[]).unwrap();
    if r.body != img.manifest {
        failures.push("the base image's manifest changed".into());
    }
    failures.extend(unexpected_changes(&before, &snapshot(&root)));
    failures.extend(log_problems(&b.log()));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- token auth

const SERVICE: &str = "berth.test";

fn jwt(header: &serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string()),
        B64URL.encode(sig)
    )
}

#[test]
fn garbage_authorization_is_401_with_a_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let keydir = dir.path().join("keys");
    let extra = format!(
        "auth:\n  token:\n    service: {SERVICE}\n    issuer: berth-issuer\n  issuer:\n    keydir: {}\n    users:\n      alice: \"{}\"\n    acl:\n      - account: alice\n        name: \"*\"\n        actions: [\"*\"]\n",
        keydir.display(),
        bcrypt::hash("alice-pw", 4).unwrap()
    );
    let b = Berth::start_with_config(&config(&root, &extra), &root);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "berth-issuer", "aud": SERVICE, "sub": "alice",
        "iat": now, "nbf": now, "exp": now + 300,
        "access": [{"type": "repository", "name": "hostile", "actions": ["pull", "push"]}],
    });
    let none = jwt(
        &serde_json::json!({"alg": "none", "typ": "JWT"}),
        &claims,
        b"",
    );
    let hs256 = {
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"guessable");
        let sig = ring::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", B64URL.encode(sig.as_ref()))
    };
    let huge = format!("Bearer {}", "A".repeat(48 * 1024));
    let no_colon = format!("Basic {}", B64.encode("alice"));
    let bad_utf8 = format!("Basic {}", B64.encode([0xff, 0xfe, b':', b'x']));
    let none_bearer = format!("Bearer {none}");
    let hs_bearer = format!("Bearer {hs256}");
    let authorizations: Vec<(&str, Vec<u8>)> = vec![
        ("no Authorization", Vec::new()),
        (
            "Basic that is not base64",
            b"Basic !!!not*base64!!!".to_vec(),
        ),
        ("Basic without a colon", no_colon.into_bytes()),
        ("Basic that is not UTF-8", bad_utf8.into_bytes()),
        ("Bearer alone", b"Bearer".to_vec()),
        ("Bearer with spaces", b"Bearer a b c".to_vec()),
        ("Bearer of three garbage parts", b"Bearer a.b.c".to_vec()),
        ("Bearer that is not base64", b"Bearer %%%.%%%.%%%".to_vec()),
        ("huge Bearer", huge.into_bytes()),
        ("alg none", none_bearer.into_bytes()),
        ("HS256", hs_bearer.into_bytes()),
        ("non-ASCII bytes", b"Bearer \xff\xfe\xfd".to_vec()),
        ("unknown scheme", b"Digest username=\"alice\"".to_vec()),
    ];
    let before = snapshot(&root);
    let mut failures = Vec::new();
    for (what, value) in &authorizations {
        for (method, path, body) in [
            ("GET", "/v2/", &b""[..]),
            ("POST", "/v2/hostile/blobs/uploads/", &b""[..]),
            ("PUT", "/v2/hostile/manifests/t", &b"{}"[..]),
        ] {
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: berth.test\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            )
            .into_bytes();
            if !value.is_empty() {
                req.extend_from_slice(b"Authorization: ");
                req.extend_from_slice(value);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(body);
            let r: RawResp = raw::exchange(&b.host, &req, CASE_WAIT);
            let challenge = r.header("www-authenticate").unwrap_or("");
            if (r.status, r.code().as_deref()) != (401, Some("UNAUTHORIZED"))
                || !challenge.starts_with(
                    "Bearer realm=\"http://berth.test/auth/token\",service=\"berth.test\"",
                )
            {
                failures.push(format!(
                    "{what} on {method} {path}: {} (challenge {challenge:?})",
                    r.describe()
                ));
            }
        }
    }
    // The token endpoint refuses wrong credentials and malformed requests without a 5xx.
    for (what, req, status) in [
        (
            "token: wrong password",
            raw::request(
                "GET",
                "/auth/token?service=berth.test",
                &[(
                    "Authorization",
                    &format!("Basic {}", B64.encode("alice:wrong")),
                )],
                b"",
            ),
            401,
        ),
        (
            "token: malformed scope",
            raw::request(
                "GET",
                "/auth/token?service=berth.test&scope=repository:../x",
                &[],
                b"",
            ),
            400,
        ),
        (
            "token: form without grant_type",
            raw::request(
                "POST",
                "/auth/token",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"%zz=%zz&&=",
            ),
            400,
        ),
        (
            "token: huge form",
            raw::request(
                "POST",
                "/auth/token",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                &vec![b'a'; 100_000],
            ),
            400,
        ),
    ] {
        let r = raw::exchange(&b.host, &req, CASE_WAIT);
        if r.status != status {
            failures.push(format!("{what}: want {status}, got {}", r.describe()));
        }
    }
    failures.extend(unexpected_changes(&before, &snapshot(&root)));
    failures.extend(log_problems(&b.log()));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------- slow clients

/// Slowloris: a client that sends its request head one byte a second is disconnected once the
/// header read timeout (3 s here) has passed, on the registry's listener and on the debug
/// listener alike; an idle keep-alive connection likewise.
#[test]
fn slow_headers_and_idle_connections_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let b = Berth::start_with_config(&config(&root, "  debug:\n    addr: 127.0.0.1:0\n"), &root);
    let debug_line = b.wait_log("the debug listener", |l| {
        l.contains("debug listener on http://")
    });
    let debug_host: String = debug_line
        .split("debug listener on http://")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    for host in [&b.host, &debug_host] {
        let t = slowloris(host);
        assert!(
            t >= Duration::from_secs(2) && t < Duration::from_secs(8),
            "{host}: cut off after {t:?}"
        );
    }

    // An idle keep-alive connection (one request served, then nothing) is closed too.
    let mut s = TcpStream::connect(&b.host).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = raw::read_until_closed(&mut s, started, Duration::from_secs(15));
    assert_eq!(r.status, 200);
    assert!(r.closed, "an idle connection stayed open");
    assert!(
        r.elapsed >= Duration::from_secs(2) && r.elapsed < Duration::from_secs(8),
        "idle connection closed after {:?}",
        r.elapsed
    );
    assert!(log_problems(&b.log()).is_empty(), "{}", b.log());
}

/// Sends a request head one byte a second; how long until the server closed the connection.
fn slowloris(host: &str) -> Duration {
    let mut s = TcpStream::connect(host).unwrap();
    let started = Instant::now();
    let head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for byte in head {
        if s.write_all(&[*byte]).is_err() {
            return started.elapsed();
        }
        // One byte a second; a closed connection shows as EOF (or a reset) on the read.
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(n) => panic!(
                "{host} answered a request it never fully received: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return started.elapsed(),
        }
    }
    panic!("{host} served the slow client")
}

/// A chunk whose body stops half-way fails after the body idle timeout (2 s here) with
/// `BLOB_UPLOAD_INVALID`; what arrived is kept, and the upload resumes from there.
#[test]
fn stalled_body_is_aborted_and_the_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let b = Berth::start_with_config(&config(&root, ""), &root);
    let client = Client::new(&b.url, None);
    let loc = client.start_upload("slow/body").unwrap();
    let path = path_of(&b.url, &loc);
    let data = berth_conformance::fixtures::bytes("stall", 300_000);

    let mut s = TcpStream::connect(&b.host).unwrap();
    let started = Instant::now();
    s.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&data[..100_000]).unwrap();
    let r = raw::read_until_closed(&mut s, started, Duration::from_secs(20));
    assert_eq!(
        (r.status, r.code().as_deref()),
        (400, Some("BLOB_UPLOAD_INVALID")),
        "{}",
        r.describe()
    );
    assert!(r.closed, "the connection of a stalled body stayed open");
    assert!(
        r.elapsed >= Duration::from_secs(2) && r.elapsed < Duration::from_secs(8),
        "aborted after {:?}",
        r.elapsed
    );

    // The session kept what arrived; the client resumes from the reported offset.
    let st = client.get(&loc, &[]).unwrap();
    assert_eq!(st.status, 204, "{}", st.describe());
    assert_eq!(st.header("range"), Some("0-99999"));
    let r = client
        .send(
            "PATCH",
            st.header("location").unwrap(),
            &[("Content-Range", &format!("100000-{}", data.len() - 1))],
            Body::Bytes(&data[100_000..]),
        )
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.describe());
    let d = digest(&data);
    let r = client
        .send(
            "PUT",
            &berth_conformance::client::with_query(r.header("location").unwrap(), "digest", &d),
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(
        client
            .get(&format!("/v2/slow/body/blobs/{d}"), &[])
            .unwrap()
            .body,
        data
    );
    assert!(log_problems(&b.log()).is_empty(), "{}", b.log());
}

/// A client that stops reading a large blob is disconnected after the write idle timeout
/// (3 s here); one that reads slowly but steadily is not.
#[test]
fn client_that_stops_reading_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let b = Berth::start_with_config(&config(&root, ""), &root);
    let client = Client::new(&b.url, None);
    let data = berth_conformance::fixtures::bytes("big", 32 << 20);
    let d = client.push_blob("slow/read", &data).unwrap();

    // Never reads: the socket buffers fill, the server's writes stall, the connection closes.
    let mut s = TcpStream::connect(&b.host).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("GET /v2/slow/read/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    // The connection is closed for that reason, then the access log line says the download
    // was aborted (two lines, in that order; the test waits for both).
    let log = b.wait_log("the aborted download", |l| {
        l.contains("read nothing for 3s") && l.lines().any(|l| l.contains("aborted=true"))
    });
    let access = log.lines().find(|l| l.contains("aborted=true")).unwrap();
    assert!(
        access.contains(&format!("/v2/slow/read/blobs/{d}")),
        "the aborted download is not the blob's:\n{log}"
    );
    // The rest of what the server had buffered can be read, then the connection ends early.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(
        got < data.len(),
        "the whole blob arrived after the connection was cut"
    );

    // A reader that pauses for less than the limit, a few times, gets everything.
    let mut s = TcpStream::connect(&b.host).unwrap();
    s.write_all(
        format!("GET /v2/slow/read/blobs/{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut pauses = 0;
    loop {
        if pauses < 3 && all.len() > pauses * (4 << 20) {
            std::thread::sleep(Duration::from_secs(2));
            pauses += 1;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "the pausing reader was cut off after {} bytes: {e}",
                all.len()
            ),
        }
    }
    assert_eq!(pauses, 3);
    let r = raw::parse(&all);
    assert_eq!(r.status, 200);
    assert_eq!(
        digest(&r.body),
        d,
        "the slow reader got {} bytes",
        r.body.len()
    );
    assert!(log_problems(&b.log()).is_empty(), "{}", b.log());
}
