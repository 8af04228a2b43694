//! Notifications end to end: a real `berth serve` posting to a real HTTP listener
//! ([`Webhook`]) that the test starts, stops, slows down and makes fail.
//!
//! - Parity with Debian's distribution 2.8 given the same configuration file: the event
//!   stream of a skopeo push, pull and cross-repository copy (mount), HEAD/GET of manifests
//!   and blobs, index and Docker manifest pushes, chunked uploads, refused requests, manifest
//!   and blob deletes; the pull-through cache; htpasswd actors; ignore rules; endpoint URLs
//!   with credentials. Where distribution 3 changed 2.8 (Content-Type v2, `ignore.actions`
//!   alone, platforms in index references, tag deletes), Berth is held to 3.x and the
//!   difference is asserted on each side.
//! - Durability: a listener down across SIGTERM and SIGKILL restarts, a replica killed for
//!   good or stopped, live replicas that must not adopt each other, a listener that fails,
//!   hangs or flaps under concurrent pushes: every event arrives, in order per repository,
//!   and (outside a cut connection) once.
//! - Bounds (`maxpending`, `maxage`), `/debug/health`, the WARN/INFO lines and the metrics.
//!
//! `NOTIFY_DUMP=<file>` writes both normalized streams of a parity test, phase by phase.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::Webhook;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use support::{debug_url, get, Berth, Distribution};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// distribution 3.x's and Berth's envelope type.
const EVENTS_V2: &str = "application/vnd.docker.distribution.events.v2+json";
/// distribution 2.8's.
const EVENTS_V1: &str = "application/vnd.docker.distribution.events.v1+json";

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A private directory for client processes: skopeo gets a cleared environment that points
/// only into it (no host registries.conf, auth file, proxy or CA variables).
struct Clients {
    dir: tempfile::TempDir,
}

impl Clients {
    fn new() -> Clients {
        let dir = tempfile::tempdir().unwrap();
        for d in ["home", "tmp", "registries.d"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "registries.conf",
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        );
        write("auth.json", "{\"auths\":{}}\n");
        write(
            "policy.json",
            "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}\n",
        );
        Clients { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `skopeo ARGS` (over plain HTTP), which must succeed.
    fn skopeo(&self, args: &[&str]) {
        let out = Command::new("skopeo")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.path("home"))
            .env("TMPDIR", self.path("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .arg("--policy")
            .arg(self.path("policy.json"))
            .arg("--registries.d")
            .arg(self.path("registries.d"))
            .args(args)
            .output()
            .expect("skopeo (scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An OCI layout `NAME` holding one image tagged `tag` (config + one uncompressed tar layer
    /// holding `content`), written by hand.
    fn layout(&self, name: &str, tag: &str, content: &str) {
        let dir = self.path(name);
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let d = sha256(bytes);
            std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
            d
        };
        let layer = tar_one_file("hello.txt", content.as_bytes());
        let layer_d = put(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_d]},
        }))
        .unwrap();
        let config_d = put(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_d, "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_d, "size": layer.len()}],
        }))
        .unwrap();
        let manifest_d = put(&manifest);
        std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "manifests": [{
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_d,
                    "size": manifest.len(),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }],
            }))
            .unwrap(),
        )
        .unwrap();
    }
}

/// A ustar archive of one regular file.
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// `METHOD url` with `headers`: the status and the response headers the test looks at.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut req = ureq::request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let location = resp.header("Location").unwrap_or("").to_owned();
    (status, location)
}

/// Pushes `bytes` as a blob of `repo` (POST, then PUT with the digest); returns its digest.
fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let (status, location) = http(
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202, "POST upload to {repo}");
    // The path only, on `base`: `base` may carry credentials (`http://user:pw@host`).
    let path = location
        .find("/v2/")
        .map(|i| &location[i..])
        .unwrap_or_else(|| panic!("Location {location}"));
    let location = format!("{base}{path}");
    let sep = if location.contains('?') { '&' } else { '?' };
    let (status, _) = http(
        "PUT",
        &format!("{location}{sep}digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(status, 201, "PUT upload to {repo}");
    d
}

/// What [`push_image`] pushed.
struct Pushed {
    repo: String,
    tag: String,
    layer: String,
    config: String,
    manifest: String,
}

impl Pushed {
    /// The events the push gives, in order: (action, repository, digest, tag).
    fn events(&self) -> Vec<Key> {
        vec![
            key("push", &self.repo, &self.layer, ""),
            key("push", &self.repo, &self.config, ""),
            key("push", &self.repo, &self.manifest, &self.tag),
        ]
    }
}

/// What identifies an event in these tests: (action, repository, digest, tag).
type Key = (String, String, String, String);

fn key(action: &str, repo: &str, digest: &str, tag: &str) -> Key {
    (action.into(), repo.into(), digest.into(), tag.into())
}

/// The [`Key`] of an event.
fn key_of(e: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (
        s(&e["action"]),
        s(&e["target"]["repository"]),
        s(&e["target"]["digest"]),
        s(&e["target"]["tag"]),
    )
}

/// Pushes a one-layer OCI image (layer, config, manifest, plain HTTP) as `repo:tag`: three
/// push events.
fn push_image(base: &str, repo: &str, tag: &str, seed: &str) -> Pushed {
    let layer_bytes = format!("layer {seed}");
    let layer = push_blob(base, repo, layer_bytes.as_bytes());
    let config_bytes =
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let config = push_blob(base, repo, config_bytes.as_bytes());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_bytes.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": layer_bytes.len()}],
    }))
    .unwrap();
    let (status, _) = http(
        "PUT",
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(status, 201, "PUT manifest {repo}:{tag}");
    Pushed {
        repo: repo.into(),
        tag: tag.into(),
        layer,
        config,
        manifest: sha256(&manifest),
    }
}

/// The scenario's phase of requests that give no event.
const NO_EVENTS: &str = "tags list, catalog, missing manifest and blob, refused writes and deletes";

/// The scenario's phase with Basic credentials and X-Forwarded-For.
const PROXIED_AS_BOB: &str = "GET manifest by digest as bob through a proxy";

/// The repository whose events separate the phases of a scenario.
const MARKER_REPO: &str = "notify/marker";

/// Ends a phase: a HEAD of the marker blob (a pull event of [`MARKER_REPO`]) and a wait until
/// the listener has it. Both registries deliver in order, so every event of the phase is in
/// before the marker.
fn end_phase(base: &str, hook: &Webhook, marker: &str, markers_so_far: &mut usize) {
    let (status, _) = http(
        "HEAD",
        &format!("{base}/v2/{MARKER_REPO}/blobs/{marker}"),
        &[],
        b"",
    );
    assert_eq!(status, 200, "HEAD marker");
    *markers_so_far += 1;
    let want = *markers_so_far;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = hook
            .events()
            .iter()
            .filter(|e| e["target"]["repository"] == MARKER_REPO && e["action"] == "pull")
            .count();
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "marker {want} never arrived; events so far: {:#?}",
            hook.events()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The events of one registry for the scenario below, split into phases (the marker events
/// left out).
struct Stream {
    phases: Vec<(&'static str, Vec<Value>)>,
}

/// The same client actions against the registry at `base` (`host` = `127.0.0.1:PORT`), whose
/// notifications go to `hook`: a skopeo push by tag, a skopeo pull, a skopeo copy to another
/// repository (a mount), HEAD/GET of the manifest by tag and by digest, HEAD/GET of a blob,
/// requests that give no event (tags, catalog, a missing manifest), a manifest DELETE by
/// digest and a blob DELETE.
fn scenario(base: &str, host: &str, hook: &Webhook) -> Stream {
    let clients = Clients::new();
    clients.layout("layout", "v1", "notifications parity\n");
    let mut markers = 0;
    let marker = push_blob(base, MARKER_REPO, b"phase marker");
    end_phase(base, hook, &marker, &mut markers);
    let mut names = vec!["marker push"];
    let app = format!("docker://{host}/notify/app:v1");
    let layout = format!("oci:{}:v1", clients.path("layout").display());

    clients.skopeo(&["copy", "--dest-tls-verify=false", &layout, &app]);
    end_phase(base, hook, &marker, &mut markers);
    names.push("skopeo push by tag");

    let pulled = format!("dir:{}", clients.path("pulled").display());
    clients.skopeo(&["copy", "--src-tls-verify=false", &app, &pulled]);
    end_phase(base, hook, &marker, &mut markers);
    names.push("skopeo pull");

    let copy = format!("docker://{host}/notify/copy:v1");
    clients.skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &app,
        &copy,
    ]);
    end_phase(base, hook, &marker, &mut markers);
    names.push("skopeo copy to another repository");

    let accept = [("Accept", OCI_MANIFEST)];
    let by_tag = format!("{base}/v2/notify/app/manifests/v1");
    assert_eq!(http("HEAD", &by_tag, &accept, b"").0, 200, "HEAD {by_tag}");
    end_phase(base, hook, &marker, &mut markers);
    // skopeo compresses the layer on the way in: the digests are the registry's.
    let served = ureq::get(&by_tag)
        .set("Accept", OCI_MANIFEST)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    end_phase(base, hook, &marker, &mut markers);
    let manifest = sha256(served.as_bytes());
    let layer = serde_json::from_str::<Value>(&served).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_digest = format!("{base}/v2/notify/app/manifests/{manifest}");
    for method in ["HEAD", "GET"] {
        assert_eq!(
            http(method, &by_digest, &accept, b"").0,
            200,
            "{method} {by_digest}"
        );
        end_phase(base, hook, &marker, &mut markers);
    }
    names.extend([
        "HEAD manifest by tag",
        "GET manifest by tag",
        "HEAD manifest by digest",
        "GET manifest by digest",
    ]);
    // Basic credentials where no auth is configured (distribution takes the user name for
    // the actor), through a proxy (the first X-Forwarded-For address is the request's addr).
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bob:bob-pw")
    );
    let headers = [
        ("Accept", OCI_MANIFEST),
        ("Authorization", basic.as_str()),
        ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
    ];
    assert_eq!(http("GET", &by_digest, &headers, b"").0, 200);
    end_phase(base, hook, &marker, &mut markers);
    names.push(PROXIED_AS_BOB);

    let blob = format!("{base}/v2/notify/app/blobs/{layer}");
    assert_eq!(http("HEAD", &blob, &[], b"").0, 200);
    end_phase(base, hook, &marker, &mut markers);
    assert_eq!(http("GET", &blob, &[], b"").0, 200);
    end_phase(base, hook, &marker, &mut markers);
    assert_eq!(http("GET", &blob, &[("Range", "bytes=0-9")], b"").0, 206);
    end_phase(base, hook, &marker, &mut markers);
    // The same manifest again, under another tag.
    let url = format!("{base}/v2/notify/app/manifests/v2");
    assert_eq!(
        http(
            "PUT",
            &url,
            &[("Content-Type", OCI_MANIFEST)],
            served.as_bytes()
        )
        .0,
        201,
        "PUT {url}"
    );
    end_phase(base, hook, &marker, &mut markers);
    names.extend([
        "HEAD blob",
        "GET blob",
        "GET blob with a Range",
        "PUT the same manifest under another tag",
    ]);

    // An OCI index over the image, by tag.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest,
            "size": served.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let url = format!("{base}/v2/notify/app/manifests/multi");
    assert_eq!(
        http("PUT", &url, &[("Content-Type", OCI_INDEX)], &index).0,
        201,
        "PUT {url}"
    );
    end_phase(base, hook, &marker, &mut markers);
    // A Docker schema 2 manifest over the same blobs, by digest.
    let served_json: Value = serde_json::from_str(&served).unwrap();
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": served_json["config"]["digest"],
            "size": served_json["config"]["size"],
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": layer,
            "size": served_json["layers"][0]["size"],
        }],
    }))
    .unwrap();
    let url = format!("{base}/v2/notify/app/manifests/{}", sha256(&docker));
    assert_eq!(
        http("PUT", &url, &[("Content-Type", DOCKER_MANIFEST)], &docker).0,
        201,
        "PUT {url}"
    );
    end_phase(base, hook, &marker, &mut markers);
    // A chunked upload: POST, two PATCHes, PUT.
    let chunked = b"a blob in two chunks".to_vec();
    let (status, location) = http(
        "POST",
        &format!("{base}/v2/notify/app/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    let mut location = location[location.find("/v2/").unwrap()..].to_owned();
    for (range, part) in [("0-9", &chunked[..10]), ("10-19", &chunked[10..])] {
        let (status, next) = http(
            "PATCH",
            &format!("{base}{location}"),
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", range),
            ],
            part,
        );
        assert_eq!(status, 202, "PATCH {range}");
        location = next[next.find("/v2/").unwrap()..].to_owned();
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{base}{location}{sep}digest={}", sha256(&chunked));
    assert_eq!(http("PUT", &url, &[], b"").0, 201, "PUT {url}");
    end_phase(base, hook, &marker, &mut markers);
    // A mount of a blob the source repository lacks: an upload starts instead (no event),
    // finished by a PUT (push).
    let lacking = b"not in notify/app".to_vec();
    let url = format!(
        "{base}/v2/notify/other/blobs/uploads/?mount={}&from=notify/app",
        sha256(&lacking)
    );
    let (status, location) = http("POST", &url, &[], b"");
    assert_eq!(status, 202, "POST {url}");
    let location = &location[location.find("/v2/").unwrap()..];
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{base}{location}{sep}digest={}", sha256(&lacking));
    assert_eq!(
        http(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            &lacking
        )
        .0,
        201,
        "PUT {url}"
    );
    end_phase(base, hook, &marker, &mut markers);
    names.extend([
        "PUT OCI index by tag",
        "PUT Docker manifest by digest",
        "chunked blob upload",
        "mount from a repository without the blob, then upload",
    ]);

    // No event for any of these.
    assert_eq!(
        http("GET", &format!("{base}/v2/notify/app/tags/list"), &[], b"").0,
        200
    );
    assert_eq!(http("GET", &format!("{base}/v2/_catalog"), &[], b"").0, 200);
    let missing = format!("{base}/v2/notify/app/manifests/nope");
    assert_eq!(http("GET", &missing, &accept, b"").0, 404);
    assert_eq!(http("HEAD", &missing, &accept, b"").0, 404);
    let missing_blob = format!("{base}/v2/notify/app/blobs/{}", sha256(b"never pushed"));
    assert_eq!(http("GET", &missing_blob, &[], b"").0, 404);
    assert_eq!(http("HEAD", &missing_blob, &[], b"").0, 404);
    // Refused writes: a manifest over a blob the repository lacks, an upload whose digest
    // does not match, deletes of what is not there.
    let orphan = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"never pushed"), "size": 12},
        "layers": [],
    }))
    .unwrap();
    let url = format!("{base}/v2/notify/app/manifests/orphan");
    assert_eq!(
        http("PUT", &url, &[("Content-Type", OCI_MANIFEST)], &orphan).0,
        400
    );
    let (status, location) = http(
        "POST",
        &format!("{base}/v2/notify/app/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(status, 202);
    let location = &location[location.find("/v2/").unwrap()..];
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{base}{location}{sep}digest={}", sha256(b"other bytes"));
    assert_eq!(
        http(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            b"some bytes"
        )
        .0,
        400
    );
    let url = format!(
        "{base}/v2/notify/app/manifests/{}",
        sha256(b"no such manifest")
    );
    assert_eq!(http("DELETE", &url, &[], b"").0, 404);
    assert_eq!(http("DELETE", &missing_blob, &[], b"").0, 404);
    end_phase(base, hook, &marker, &mut markers);
    names.push(NO_EVENTS);

    let url = format!("{base}/v2/notify/app/manifests/{manifest}");
    assert_eq!(http("DELETE", &url, &[], b"").0, 202, "DELETE {url}");
    end_phase(base, hook, &marker, &mut markers);
    names.push("DELETE manifest by digest");

    assert_eq!(http("DELETE", &blob, &[], b"").0, 202, "DELETE {blob}");
    end_phase(base, hook, &marker, &mut markers);
    names.push("DELETE blob");

    // Split the stream at the marker pulls.
    let mut phases = Vec::new();
    let mut current = Vec::new();
    let mut names = names.into_iter();
    for e in hook.events() {
        if e["target"]["repository"] == MARKER_REPO && e["action"] == "pull" {
            phases.push((names.next().unwrap(), std::mem::take(&mut current)));
        } else {
            current.push(e);
        }
    }
    assert!(
        current.is_empty(),
        "events after the last marker: {current:#?}"
    );
    Stream { phases }
}

/// An event without what differs between two registries or two runs: `id`, `timestamp`,
/// `source.instanceID`, `source.addr`, `request.id`, `request.addr`, `request.host`, and the
/// `host:port` of `target.url`.
fn normalize(e: &Value) -> Value {
    let mut e = e.clone();
    let o = e.as_object_mut().unwrap();
    o.remove("id");
    o.remove("timestamp");
    for (section, keys) in [
        ("source", &["instanceID", "addr"][..]),
        ("request", &["id", "addr", "host"][..]),
    ] {
        if let Some(s) = o.get_mut(section).and_then(Value::as_object_mut) {
            for k in keys {
                s.remove(*k);
            }
        }
    }
    if let Some(url) = o
        .get_mut("target")
        .and_then(|t| t.get_mut("url"))
        .filter(|u| u.is_string())
    {
        let s = url.as_str().unwrap();
        let path = s
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
            .unwrap_or_else(|| s.to_owned());
        *url = Value::String(format!("http://HOST{path}"));
    }
    e
}

/// The events of the phase `name`.
fn phase_events<'a>(s: &'a Stream, name: &str) -> &'a [Value] {
    &s.phases
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no phase {name}"))
        .1
}

/// `e` without `platform` in its references.
fn without_platforms(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(refs) = e["target"]
        .get_mut("references")
        .and_then(Value::as_array_mut)
    {
        for r in refs {
            if let Some(o) = r.as_object_mut() {
                o.remove("platform");
            }
        }
    }
    e
}

/// One phase as a sorted multiset of normalized events (a client may do the requests of one
/// step in parallel).
fn multiset(events: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&normalize(e)).unwrap())
        .collect();
    v.sort();
    v
}

/// The normalized stream in arrival order, one phase after another, for humans.
fn dump(stream: &Stream, who: &str) -> String {
    let mut s = format!("# {who}\n");
    for (name, events) in &stream.phases {
        s.push_str(&format!("## {name}: {} events\n", events.len()));
        for e in events {
            s.push_str(&serde_json::to_string(&normalize(e)).unwrap());
            s.push('\n');
        }
    }
    s
}

/// The notifications section for `hook` with `extra` endpoint keys (indented 6 spaces).
fn notifications_yaml(hook: &Webhook, extra: &str) -> String {
    format!(
        "notifications:\n  events:\n    includereferences: true\n  endpoints:\n    - name: listener\n      url: {}\n      timeout: 1s\n      threshold: 3\n      backoff: 200ms\n{extra}",
        hook.url()
    )
}

/// A whole Berth configuration: `storage` (a `storage:` section), the debug listener with
/// Prometheus metrics, and `extra` top-level sections.
fn config(storage: &str, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\n{storage}http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n{extra}"
    )
}

/// A filesystem `storage:` section with deletes enabled.
fn fs_storage(root: &Path) -> String {
    format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n",
        root.display()
    )
}

/// Berth on `root` with the debug listener and `extra` sections.
fn berth_on(root: &Path, extra: &str) -> Berth {
    Berth::start_with_config(&config(&fs_storage(root), extra), root)
}

/// One Prometheus sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of `{debug}/metrics`.
fn scrape(debug: &str) -> Vec<Sample> {
    let (status, text) = get(&format!("{debug}/metrics"));
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match k.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (k, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (lk, lv) = p.split_once('=').unwrap();
                    (lk.trim().to_owned(), lv.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, v.parse::<f64>().unwrap())
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; `None` when there is none.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

/// As [`sample`], failing with the samples of that name when there is none.
fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels).unwrap_or_else(|| {
        let near: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.0.starts_with("berth_notifications") || s.0.starts_with(name))
            .collect();
        panic!("no {name}{labels:?}; have {near:#?}")
    })
}

/// Polls the metrics until `pred` holds for the value of `name{labels}` (30 s).
fn wait_metric(debug: &str, name: &str, labels: &[(&str, &str)], pred: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = scrape(debug);
        if sample(&samples, name, labels).is_some_and(&pred) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never satisfied the condition; now {:?}",
            sample(&samples, name, labels)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until Berth has nothing pending for endpoint `listener`.
fn wait_drained(debug: &str) {
    wait_metric(
        debug,
        "berth_notifications_pending_events",
        &[("endpoint", "listener")],
        |v| v == 0.0,
    );
}

/// SIGTERM, and the exit.
fn sigterm(b: &mut Berth) {
    let st = Command::new("/bin/kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    b.wait();
}

/// Fails unless every event id is distinct.
fn assert_unique_ids(events: &[Value]) {
    let mut seen = BTreeMap::new();
    for e in events {
        let id = e["id"].as_str().unwrap_or_else(|| panic!("no id: {e}"));
        assert!(!id.is_empty(), "empty id: {e}");
        if let Some(first) = seen.insert(id.to_owned(), e.clone()) {
            panic!("event id {id} delivered twice:\n{first}\n{e}");
        }
    }
}

/// The keys of `events` of repository `repo`, in order.
fn keys_of_repo(events: &[Value], repo: &str) -> Vec<Key> {
    events.iter().map(key_of).filter(|k| k.1 == repo).collect()
}

#[test]
fn same_event_stream_as_distribution_28() {
    let headers = "      headers:\n        X-Test: [parity]\n        X-Multi: [one, two]\n";
    let dist_hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start_with_extra(
        &dir.path().join("dist"),
        &notifications_yaml(&dist_hook, headers),
    );
    let dist_stream = scenario(&dist.url, &dist.host, &dist_hook);
    drop(dist);

    let berth_hook = Webhook::start();
    let berth = berth_on(
        &dir.path().join("berth"),
        &notifications_yaml(&berth_hook, headers),
    );
    let berth_stream = scenario(&berth.url, &berth.host, &berth_hook);
    if let Ok(path) = std::env::var("NOTIFY_DUMP") {
        let text = format!(
            "{}\n{}",
            dump(&dist_stream, "distribution 2.8"),
            dump(&berth_stream, "berth")
        );
        std::fs::write(path, text).unwrap();
    }

    // The scenario does what it says on distribution: a mount, HEADs as pulls, a manifest
    // delete that also reports the tag.
    let phase = |s: &Stream, name: &str| -> Vec<Key> {
        s.phases
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
            .iter()
            .map(key_of)
            .collect()
    };
    let copy = &dist_stream
        .phases
        .iter()
        .find(|(n, _)| *n == "skopeo copy to another repository")
        .unwrap()
        .1;
    assert!(
        copy.iter().any(|e| e["action"] == "mount"
            && e["target"]["fromRepository"] == "notify/app"
            && e["target"]["repository"] == "notify/copy"),
        "distribution gave no mount: {copy:#?}"
    );
    for name in [
        "HEAD manifest by tag",
        "HEAD manifest by digest",
        "HEAD blob",
    ] {
        let p = phase(&dist_stream, name);
        assert!(p.len() == 1 && p[0].0 == "pull", "{name}: {p:?}");
    }
    assert_eq!(phase(&dist_stream, NO_EVENTS), vec![]);
    // The manifest, and the two tags that pointed at it.
    assert_eq!(phase(&dist_stream, "DELETE manifest by digest").len(), 3);

    // Berth: the same phases, each with the same events in the same order; for skopeo's
    // steps as multisets (skopeo may do the requests of one step in parallel), and the tags
    // of a deleted manifest in any order (distribution lists them from storage unsorted).
    let names = |s: &Stream| s.phases.iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(names(&berth_stream), names(&dist_stream));
    // An index's references carry each manifest's platform in distribution 3 (OCI
    // descriptors) and in Berth; 2.8 drops it. Berth's events, as 2.8 would send them:
    let index_push = &phase_events(&berth_stream, "PUT OCI index by tag")[0];
    assert_eq!(
        index_push["target"]["references"][0]["platform"],
        json!({"architecture": "amd64", "os": "linux"}),
        "{index_push}"
    );
    let berth_stream = Stream {
        phases: berth_stream
            .phases
            .iter()
            .map(|(name, events)| (*name, events.iter().map(without_platforms).collect()))
            .collect(),
    };
    // The request's addr (left out of the comparison below) behind a proxy.
    for s in [&dist_stream, &berth_stream] {
        let e = &phase_events(s, PROXIED_AS_BOB)[0];
        assert_eq!(e["request"]["addr"], "203.0.113.7", "{e}");
        assert_eq!(e["actor"], json!({"name": "bob"}), "{e}");
    }
    let mut differences = String::new();
    for ((name, d), (_, b)) in dist_stream.phases.iter().zip(&berth_stream.phases) {
        let each = |v: &[Value]| -> Vec<String> {
            v.iter()
                .map(|e| serde_json::to_string(&normalize(e)).unwrap())
                .collect()
        };
        let (d, b) = if name.starts_with("skopeo") {
            (multiset(d), multiset(b))
        } else if *name == "DELETE manifest by digest" && !d.is_empty() && !b.is_empty() {
            // The manifest first, then its tags in the order the storage lists them.
            let first_then_rest = |v: &[Value]| {
                let mut out = each(&v[..1]);
                out.extend(multiset(&v[1..]));
                out
            };
            (first_then_rest(d), first_then_rest(b))
        } else {
            (each(d), each(b))
        };
        if d != b {
            differences.push_str(&format!(
                "\n## {name}\n-- distribution 2.8:\n{}\n-- berth:\n{}\n",
                d.join("\n"),
                b.join("\n")
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the event streams differ:{differences}"
    );

    // The envelope: one event per POST, distribution 2.8 as v1+json, Berth as v2+json (as
    // distribution 3), the configured headers on every request.
    for (who, hook, media_type) in [
        ("distribution 2.8", &dist_hook, EVENTS_V1),
        ("berth", &berth_hook, EVENTS_V2),
    ] {
        let reqs = hook.requests();
        assert!(!reqs.is_empty());
        for r in &reqs {
            let what = format!("{who}: {} {}", r.method, r.path);
            assert_eq!(r.method, "POST", "{what}");
            assert_eq!(r.path, "/events", "{what}");
            assert_eq!(r.header("content-type"), Some(media_type), "{what}");
            assert_eq!(r.header("x-test"), Some("parity"), "{what}");
            assert_eq!(r.header_all("x-multi").join(", "), "one, two", "{what}");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let obj = body.as_object().unwrap();
            assert_eq!(obj.keys().collect::<Vec<_>>(), ["events"], "{what}");
            assert_eq!(obj["events"].as_array().unwrap().len(), 1, "{what}");
        }
    }
}

/// Three endpoints with distribution's ignore rules, each to its own listener, and a disabled
/// one.
fn ignore_yaml(a: &Webhook, b: &Webhook, c: &Webhook, d: &Webhook) -> String {
    format!(
        "notifications:\n  endpoints:\n    - name: disabled\n      url: {}\n      disabled: true\n    - name: actions-only\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n      ignore:\n        actions: [pull]\n    - name: actions-and-types\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n      ignoredmediatypes: [application/octet-stream]\n      ignore:\n        actions: [pull]\n    - name: manifest-type\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n      ignore:\n        mediatypes: [{OCI_MANIFEST}]\n",
        d.url(),
        a.url(),
        b.url(),
        c.url()
    )
}

/// Push an image, pull its manifest and its layer, delete the manifest; then the end
/// marker, which every endpoint keeps: a blob pushed to `notify/end` and deleted (a delete
/// has no media type and is not a pull).
fn ignore_ops(base: &str, hooks: &[&Webhook]) {
    let p = push_image(base, "notify/ign", "v1", "ignore");
    let accept = [("Accept", OCI_MANIFEST)];
    let url = format!("{base}/v2/notify/ign/manifests/v1");
    assert_eq!(http("GET", &url, &accept, b"").0, 200);
    let blob = format!("{base}/v2/notify/ign/blobs/{}", p.layer);
    assert_eq!(http("GET", &blob, &[], b"").0, 200);
    let url = format!("{base}/v2/notify/ign/manifests/{}", p.manifest);
    assert_eq!(http("DELETE", &url, &[], b"").0, 202);
    let end = push_blob(base, "notify/end", b"end");
    let url = format!("{base}/v2/notify/end/blobs/{end}");
    assert_eq!(http("DELETE", &url, &[], b"").0, 202);
    for h in hooks {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !h
            .events()
            .iter()
            .any(|e| e["action"] == "delete" && e["target"]["repository"] == "notify/end")
        {
            assert!(
                Instant::now() < deadline,
                "no end marker at {}: {:#?}",
                h.url(),
                h.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// (action, mediaType, tag) of each event of `notify/ign`, in order.
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["target"]["repository"] == "notify/ign")
        .map(|e| {
            format!(
                "{} {} {}",
                e["action"].as_str().unwrap_or(""),
                e["target"]["mediaType"].as_str().unwrap_or("-"),
                e["target"]["tag"].as_str().unwrap_or("-"),
            )
        })
        .collect()
}

/// Starts a registry with a `notifications` section: its URL, and what keeps it running.
type Starter<'a> = dyn Fn(&str) -> (String, Box<dyn std::any::Any>) + 'a;

/// `ignore.actions`, `ignore.mediatypes` and `ignoredmediatypes` filter as distribution's
/// do, and a `disabled` endpoint gets nothing; with only `ignore.actions`, distribution 2.8 still sends the pulls (its filter is
/// skipped when no media type is ignored, fixed in 3.0): Berth does as 3.x.
#[test]
fn ignore_rules_as_distribution() {
    let run = |start: &Starter| {
        let (a, b, c) = (Webhook::start(), Webhook::start(), Webhook::start());
        let disabled = Webhook::start();
        let (url, _registry) = start(&ignore_yaml(&a, &b, &c, &disabled));
        ignore_ops(&url, &[&a, &b, &c]);
        assert_eq!(
            disabled.requests().len(),
            0,
            "a disabled endpoint got events"
        );
        // `includereferences` is not set here.
        for e in a.events() {
            assert!(e["target"].get("references").is_none(), "{e}");
        }
        (
            summary(&a.events()),
            summary(&b.events()),
            summary(&c.events()),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let dist = run(&|yaml| {
        let d = Distribution::start_with_extra(&dir.path().join("dist"), yaml);
        (d.url.clone(), Box::new(d))
    });
    let berth = run(&|yaml| {
        let b = berth_on(&dir.path().join("berth"), yaml);
        (b.url.clone(), Box::new(b))
    });
    let octet = "application/octet-stream";
    let all = vec![
        format!("push {octet} -"),
        format!("push {octet} -"),
        format!("push {OCI_MANIFEST} v1"),
        format!("pull {OCI_MANIFEST} v1"),
        format!("pull {octet} -"),
        "delete - -".to_owned(),
        "delete - v1".to_owned(),
    ];
    assert_eq!(dist.0, all, "distribution 2.8 ignores ignore.actions alone");
    let no_pulls: Vec<String> = all
        .iter()
        .filter(|s| !s.starts_with("pull"))
        .cloned()
        .collect();
    assert_eq!(berth.0, no_pulls, "berth: ignore.actions [pull] alone");
    assert_eq!(
        dist.1,
        vec![
            format!("push {OCI_MANIFEST} v1"),
            "delete - -".to_owned(),
            "delete - v1".to_owned()
        ]
    );
    assert_eq!(berth.1, dist.1, "ignoredmediatypes + ignore.actions");
    assert_eq!(
        dist.2,
        vec![
            format!("push {octet} -"),
            format!("push {octet} -"),
            format!("pull {octet} -"),
            "delete - -".to_owned(),
            "delete - v1".to_owned()
        ]
    );
    assert_eq!(berth.2, dist.2, "ignore.mediatypes");
}

/// Every field of Berth's events: ids unique, RFC 3339 UTC timestamps, the request id of
/// the access log (the client's X-Request-Id), the request's addresses, the instance, URLs
/// on the registry's address; the configured Authorization header sent and never logged.
#[test]
fn event_fields_and_headers() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(
        &dir.path().join("data"),
        &notifications_yaml(
            &hook,
            "      headers:\n        Authorization: [Bearer notify-secret-token]\n",
        ),
    );
    let p = push_image(&berth.url, "notify/fields", "v1", "fields");
    let url = format!("{}/v2/notify/fields/manifests/v1", berth.url);
    let (status, _) = http(
        "GET",
        &url,
        &[("Accept", OCI_MANIFEST), ("X-Request-Id", "notify-req-42")],
        b"",
    );
    assert_eq!(status, 200);
    let events = hook.wait_events(4, Duration::from_secs(30));
    assert_eq!(events.len(), 4, "{events:#?}");
    let mut want = p.events();
    want.push(key("pull", "notify/fields", &p.manifest, "v1"));
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), want);
    assert_unique_ids(&events);

    let port = berth.host.rsplit(':').next().unwrap().to_owned();
    let instance = events[0]["source"]["instanceID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!instance.is_empty());
    for e in &events {
        // Go's RFC3339Nano in UTC: `2006-01-02T15:04:05.999999999Z`, trailing zeros dropped.
        let ts = e["timestamp"].as_str().unwrap();
        let (secs, frac) = time_order(ts);
        assert!(
            secs.len() == 19 && secs.as_bytes()[10] == b'T' && frac.len() == 9,
            "timestamp {ts}"
        );
        assert!(!ts.contains('.') || !ts.ends_with("0Z"), "timestamp {ts}");
        assert_eq!(e["source"]["instanceID"], instance.as_str(), "{e}");
        assert_eq!(e["request"]["host"], berth.host.as_str(), "{e}");
        assert!(
            e["request"]["addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{e}"
        );
        assert_eq!(e["request"]["useragent"], "ureq/2.12.1", "{e}");
        assert_eq!(e["actor"], json!({}), "{e}");
        let target_url = e["target"]["url"].as_str().unwrap();
        assert!(target_url.starts_with(&berth.url), "{target_url}");
        assert!(!e["request"]["id"].as_str().unwrap().is_empty(), "{e}");
    }
    let pull = &events[3];
    assert_eq!(pull["request"]["id"], "notify-req-42");
    assert_eq!(pull["request"]["method"], "GET");
    assert_eq!(
        pull["target"]["url"],
        format!("{}/v2/notify/fields/manifests/{}", berth.url, p.manifest)
    );
    assert_eq!(pull["target"]["references"].as_array().unwrap().len(), 2);
    let log = berth.wait_log("the request id", |l| l.contains("notify-req-42"));
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("notif"))
        .collect();
    assert!(warned.is_empty(), "{warned:#?}");
    for r in hook.requests() {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer notify-secret-token")
        );
    }
    assert!(
        !log.contains("notify-secret-token"),
        "the endpoint's Authorization header is in the log:\n{log}"
    );
    // hostname:port, the port the registry listens on (`http.addr` says 0 here): the address
    // a consumer can reach the registry at.
    for e in &events {
        let addr = e["source"]["addr"].as_str().unwrap();
        assert!(addr.ends_with(&format!(":{port}")), "source.addr {addr}");
    }
    // distribution sends Go's; some listeners (and the proxies before them) refuse requests
    // without one.
    for r in hook.requests() {
        assert!(r.header("user-agent").is_some(), "no User-Agent: {r:?}");
    }
}

/// The listener is down while two images are pushed; Berth stops (SIGKILL when `kill`, else
/// SIGTERM) and starts again on the same root and takes another push; the listener comes
/// up: all nine events arrive, each once, in order per repository (the old queue first: a
/// crashed predecessor on the same host is adopted at start, not after orphanafter).
fn survives_restart(kill: bool) {
    let mut hook = Webhook::start_stopped();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // After SIGTERM the queue is released at once: the default orphanafter (60s) is longer
    // than the test waits. After SIGKILL a short orphanafter bounds the wait in any case;
    // the order below shows the old queue was adopted at start, before anything new went.
    let queue = if kill {
        "  queue:\n    orphanafter: 2s\n"
    } else {
        ""
    };
    let yaml = format!("{}{queue}", notifications_yaml(&hook, ""));
    let mut berth = berth_on(&root, &yaml);
    let a = push_image(&berth.url, "notify/one", "v1", "one");
    let b = push_image(&berth.url, "notify/two", "v1", "two");
    if kill {
        // At once: an event is journaled before the request that caused it is answered.
        berth.kill();
    } else {
        // Attempts fail while the listener is down (connection refused).
        wait_metric(
            &debug_url(&berth),
            "berth_notifications_pending_events",
            &[("endpoint", "listener")],
            |v| v == 6.0,
        );
        sigterm(&mut berth);
    }
    let berth = berth_on(&root, &yaml);
    // Pushed after the restart, before the listener is back: after the older events.
    let a2 = push_image(&berth.url, "notify/one", "v2", "one-again");
    hook.restart();
    let events = hook.wait_events(9, Duration::from_secs(30));
    wait_drained(&debug_url(&berth));
    let events_now = hook.events();
    assert_eq!(events_now.len(), 9, "{events_now:#?}");
    assert_unique_ids(&events_now);
    let mut one = a.events();
    one.extend(a2.events());
    assert_eq!(keys_of_repo(&events, "notify/one"), one);
    assert_eq!(keys_of_repo(&events, "notify/two"), b.events());
}

#[test]
fn listener_down_across_sigterm_restart() {
    survives_restart(false);
}

#[test]
fn listener_down_across_sigkill_restart() {
    survives_restart(true);
}

/// The listener answers 503 for a while, then 200: every event arrives once, in order per
/// repository.
#[test]
fn failing_listener_gets_everything_once_in_order() {
    let hook = Webhook::start();
    hook.set_status(503);
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(&dir.path().join("data"), &notifications_yaml(&hook, ""));
    let a1 = push_image(&berth.url, "notify/a", "v1", "a1");
    let b1 = push_image(&berth.url, "notify/b", "v1", "b1");
    let a2 = push_image(&berth.url, "notify/a", "v2", "a2");
    assert!(
        hook.wait_requests(5, Duration::from_secs(30)),
        "Berth did not retry: {:?}",
        hook.requests().len()
    );
    hook.set_status(200);
    hook.wait_events(9, Duration::from_secs(30));
    wait_drained(&debug_url(&berth));
    let events = hook.events();
    assert_eq!(events.len(), 9, "{events:#?}");
    assert_unique_ids(&events);
    let mut want_a = a1.events();
    want_a.extend(a2.events());
    assert_eq!(keys_of_repo(&events, "notify/a"), want_a);
    assert_eq!(keys_of_repo(&events, "notify/b"), b1.events());
    // A retry resends the same event (same id): what lets consumers drop duplicates.
    let refused: Vec<Value> = hook
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .flat_map(|r| r.events())
        .collect();
    assert!(!refused.is_empty());
    for e in &refused {
        let delivered = events
            .iter()
            .find(|d| d["id"] == e["id"])
            .unwrap_or_else(|| panic!("refused event {} was resent under another id", e["id"]));
        assert_eq!(delivered, e, "a retry changed the event");
    }
}

/// `maxpending: 5` with the listener down: the oldest events are dropped with one WARN and
/// the counter; pushes are not held up; once the listener is up only the newest arrive.
#[test]
fn bound_drops_oldest_with_one_warn() {
    let mut hook = Webhook::start_stopped();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(
        &dir.path().join("data"),
        &notifications_yaml(&hook, "      maxpending: 5\n"),
    );
    let debug = debug_url(&berth);
    let started = Instant::now();
    let pushed: Vec<Pushed> = (0..3)
        .map(|i| {
            push_image(
                &berth.url,
                "notify/bound",
                &format!("v{i}"),
                &format!("b{i}"),
            )
        })
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "pushes were held up: {:?}",
        started.elapsed()
    );
    let all: Vec<Key> = pushed.iter().flat_map(Pushed::events).collect();
    wait_metric(
        &debug,
        "berth_notifications_dropped_total",
        &[("endpoint", "listener"), ("reason", "maxpending")],
        |v| v >= 4.0,
    );
    let samples = scrape(&debug);
    let ep = [("endpoint", "listener")];
    assert_eq!(
        metric(&samples, "berth_notifications_pending_events", &ep),
        5.0
    );
    assert_eq!(
        metric(
            &samples,
            "berth_notifications_dropped_total",
            &[("endpoint", "listener"), ("reason", "maxpending")]
        ),
        4.0
    );
    let dropping = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("dropped"))
            .count()
    };
    let log = berth.wait_log("a WARN about dropping", |l| dropping(l) >= 1);
    assert_eq!(dropping(&log), 1, "one WARN for the drops:\n{log}");

    hook.restart();
    hook.wait_events(1, Duration::from_secs(30));
    wait_drained(&debug);
    let got: Vec<Key> = hook.events().iter().map(key_of).collect();
    assert_eq!(
        got,
        all[all.len() - 5..].to_vec(),
        "not the newest 5 events"
    );
    assert_eq!(dropping(&berth.log()), 1, "{}", berth.log());
}

/// `maxage: 1s` with the listener down: events older than that are dropped (counter with
/// reason `maxage`, one WARN); newer ones are still delivered.
#[test]
fn maxage_drops_old_events() {
    let mut hook = Webhook::start_stopped();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(
        &dir.path().join("data"),
        &notifications_yaml(&hook, "      maxage: 1s\n"),
    );
    let debug = debug_url(&berth);
    push_image(&berth.url, "notify/old", "v1", "old");
    wait_metric(
        &debug,
        "berth_notifications_dropped_total",
        &[("endpoint", "listener"), ("reason", "maxage")],
        |v| v == 3.0,
    );
    wait_drained(&debug);
    let log = berth.wait_log("a WARN about dropping", |l| {
        l.lines()
            .any(|l| l.contains("WARN") && l.contains("dropped"))
    });
    hook.restart();
    let new = push_image(&berth.url, "notify/new", "v1", "new");
    let events = hook.wait_events(3, Duration::from_secs(30));
    wait_drained(&debug);
    assert_eq!(
        hook.events().iter().map(key_of).collect::<Vec<_>>(),
        new.events(),
        "{events:#?}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("dropped"))
            .count(),
        1,
        "{log}"
    );
}

/// Two replicas on one bucket and one Redis; the listener is down; A takes a push and dies
/// for good (SIGKILL): B delivers A's events once the listener is up.
#[test]
fn replica_killed_for_good_survivor_delivers() {
    let garage = support::Garage::start();
    garage.create_bucket("notify");
    let redis = support::Redis::start();
    let mut hook = Webhook::start_stopped();
    let extra = format!(
        "{}{}  queue:\n    orphanafter: 2s\n",
        redis.yaml(),
        notifications_yaml(&hook, "")
    );
    let cfg = config(&garage.storage_yaml("notify", "", ""), &extra);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Berth::start_with_config(&cfg, &dir.path().join("a"));
    let b = Berth::start_with_config(&cfg, &dir.path().join("b"));
    let pushed = push_image(&a.url, "notify/replicated", "v1", "replicated");
    wait_metric(
        &debug_url(&a),
        "berth_notifications_pending_events",
        &[("endpoint", "listener")],
        |v| v == 3.0,
    );
    a.kill();
    hook.restart();
    let events = hook.wait_events(3, Duration::from_secs(40));
    wait_drained(&debug_url(&b));
    let events_now = hook.events();
    assert_unique_ids(&events_now);
    assert_eq!(events_now.len(), 3, "{events_now:#?}");
    assert_eq!(keys_of_repo(&events, "notify/replicated"), pushed.events());
}

/// A failing endpoint: listed in `/debug/health` after `unhealthyafter` (readyz and the API
/// unaffected), one WARN when it starts failing and one INFO when it recovers across many
/// failed attempts, and the metrics of distribution and of Berth.
#[test]
fn failing_endpoint_in_health_logs_and_metrics() {
    let hook = Webhook::start();
    hook.set_status(503);
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(
        &dir.path().join("data"),
        &notifications_yaml(&hook, "      unhealthyafter: 1s\n"),
    );
    let debug = debug_url(&berth);
    assert_eq!(get(&format!("{debug}/debug/health")).0, 200);
    let p = push_image(&berth.url, "notify/health", "v1", "health");

    // Listed once it has failed for a second; the registry stays ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let (status, body) = get(&format!("{debug}/debug/health"));
        if body.contains("listener") {
            break (status, body);
        }
        assert!(Instant::now() < deadline, "/debug/health: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health.0, 503, "{}", health.1);
    assert_eq!(get(&format!("{debug}/readyz")).0, 200);
    assert_eq!(get(&format!("{}/v2/", berth.url)).0, 200);

    // Many failed attempts. The listener sees a request before Berth sees the answer; one
    // worker sends one request at a time: once the 9th arrived, 8 answers were counted.
    assert!(
        hook.wait_requests(9, Duration::from_secs(30)),
        "attempts: {}",
        hook.requests().len()
    );
    let samples = scrape(&debug);
    let ep = [("endpoint", "listener")];
    assert_eq!(
        metric(&samples, "berth_notifications_pending_events", &ep),
        3.0
    );
    assert!(metric(&samples, "berth_notifications_failed_attempts_total", &ep) >= 8.0);
    assert_eq!(
        metric(&samples, "berth_notifications_delivered_total", &ep),
        0.0
    );
    assert!(
        metric(
            &samples,
            "berth_notifications_oldest_pending_age_seconds",
            &ep
        ) >= 1.0
    );
    assert_eq!(metric(&samples, "registry_notifications_pending", &ep), 3.0);
    assert!(
        metric(
            &samples,
            "registry_notifications_events_total",
            &[("endpoint", "listener"), ("type", "Failures")]
        ) >= 8.0
    );
    assert!(
        metric(
            &samples,
            "registry_notifications_status_total",
            &[
                ("endpoint", "listener"),
                ("code", "503 Service Unavailable")
            ]
        ) >= 8.0
    );

    hook.set_status(200);
    let events = hook.wait_events(3, Duration::from_secs(30));
    assert_eq!(keys_of_repo(&events, "notify/health"), p.events());
    wait_drained(&debug);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(&format!("{debug}/debug/health"));
        if status == 200 && !body.contains("listener") {
            break;
        }
        assert!(Instant::now() < deadline, "/debug/health: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let samples = scrape(&debug);
    assert_eq!(
        metric(&samples, "berth_notifications_delivered_total", &ep),
        3.0
    );
    assert_eq!(
        metric(
            &samples,
            "berth_notifications_oldest_pending_age_seconds",
            &ep
        ),
        0.0
    );
    assert_eq!(
        metric(
            &samples,
            "registry_notifications_events_total",
            &[("endpoint", "listener"), ("type", "Successes")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &samples,
            "registry_notifications_events_total",
            &[("endpoint", "listener"), ("type", "Events")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &samples,
            "registry_notifications_status_total",
            &[("endpoint", "listener"), ("code", "200 OK")]
        ),
        3.0
    );
    assert_eq!(metric(&samples, "registry_notifications_pending", &ep), 0.0);
    for reason in ["maxpending", "maxage"] {
        assert_eq!(
            metric(
                &samples,
                "berth_notifications_dropped_total",
                &[("endpoint", "listener"), ("reason", reason)]
            ),
            0.0
        );
    }

    let recovered = |log: &str| {
        log.lines()
            .filter(|l| l.contains("INFO") && l.contains("listener") && l.contains("recovered"))
            .count()
    };
    let log = berth.wait_log("the recovery", |l| recovered(l) >= 1);
    let failing = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("is failing") && l.contains("listener"))
        .count();
    assert_eq!(failing, 1, "one WARN for the failure:\n{log}");
    assert_eq!(recovered(&log), 1, "one INFO for the recovery:\n{log}");
}

/// One request of a scenario: (phase name, method, URL, headers).
type Step<'a> = (&'static str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Pulls through a pull-through cache at `base` (upstream content: `notify/px:v1` = `p`, and
/// the marker blob in [`MARKER_REPO`]), phase by phase.
fn proxy_scenario(base: &str, hook: &Webhook, p: &Pushed, marker: &str) -> Stream {
    let mut markers = 0;
    end_phase(base, hook, marker, &mut markers);
    let accept = [("Accept", OCI_MANIFEST)];
    let by_tag = format!("{base}/v2/notify/px/manifests/v1");
    let by_digest = format!("{base}/v2/notify/px/manifests/{}", p.manifest);
    let layer = format!("{base}/v2/notify/px/blobs/{}", p.layer);
    let config = format!("{base}/v2/notify/px/blobs/{}", p.config);
    let steps: [Step; 8] = [
        (
            "GET manifest by tag (from upstream)",
            "GET",
            &by_tag,
            &accept,
        ),
        ("GET config (from upstream)", "GET", &config, &[]),
        ("GET layer (from upstream)", "GET", &layer, &[]),
        ("GET manifest by tag (cached)", "GET", &by_tag, &accept),
        ("HEAD manifest by digest", "HEAD", &by_digest, &accept),
        ("GET manifest by digest", "GET", &by_digest, &accept),
        ("GET layer (cached)", "GET", &layer, &[]),
        ("HEAD layer", "HEAD", &layer, &[]),
    ];
    let mut names = vec!["start"];
    for (name, method, url, headers) in steps {
        assert_eq!(http(method, url, headers, b"").0, 200, "{method} {url}");
        end_phase(base, hook, marker, &mut markers);
        names.push(name);
    }
    let mut phases = Vec::new();
    let mut current = Vec::new();
    let mut names = names.into_iter();
    for e in hook.events() {
        if e["target"]["repository"] == MARKER_REPO && e["action"] == "pull" {
            phases.push((names.next().unwrap(), std::mem::take(&mut current)));
        } else {
            current.push(e);
        }
    }
    Stream { phases }
}

/// Pulls through the pull-through cache (distribution's `proxy.remoteurl`) give the same
/// events on distribution 2.8 and on Berth.
#[test]
fn pull_through_cache_events_as_distribution_28() {
    let upstream = Berth::start();
    let p = push_image(&upstream.url, "notify/px", "v1", "proxied");
    let marker = push_blob(&upstream.url, MARKER_REPO, b"phase marker");
    let dir = tempfile::tempdir().unwrap();
    let proxy = format!("proxy:\n  remoteurl: {}\n", upstream.url);

    let dist_hook = Webhook::start();
    let dist = Distribution::start_with_extra(
        &dir.path().join("dist"),
        &format!("{proxy}{}", notifications_yaml(&dist_hook, "")),
    );
    let dist_stream = proxy_scenario(&dist.url, &dist_hook, &p, &marker);
    drop(dist);
    let berth_hook = Webhook::start();
    let berth = berth_on(
        &dir.path().join("berth"),
        &format!("{proxy}{}", notifications_yaml(&berth_hook, "")),
    );
    let berth_stream = proxy_scenario(&berth.url, &berth_hook, &p, &marker);
    if let Ok(path) = std::env::var("NOTIFY_DUMP") {
        let text = format!(
            "{}\n{}",
            dump(&dist_stream, "distribution 2.8"),
            dump(&berth_stream, "berth")
        );
        std::fs::write(path, text).unwrap();
    }
    let mut differences = String::new();
    for ((name, d), (_, b)) in dist_stream.phases.iter().zip(&berth_stream.phases) {
        let each = |v: &[Value]| -> Vec<String> {
            v.iter()
                .map(|e| serde_json::to_string(&normalize(e)).unwrap())
                .collect()
        };
        if each(d) != each(b) {
            differences.push_str(&format!(
                "\n## {name}\n-- distribution 2.8:\n{}\n-- berth:\n{}\n",
                each(d).join("\n"),
                each(b).join("\n")
            ));
        }
    }
    assert_eq!(berth_stream.phases.len(), dist_stream.phases.len());
    for (name, events) in &dist_stream.phases[1..] {
        assert!(
            events.len() == 1 && events[0]["action"] == "pull",
            "distribution 2.8, {name}: {events:#?}"
        );
    }
    assert!(
        differences.is_empty(),
        "the event streams differ:{differences}"
    );
}

/// With htpasswd auth, `actor.name` is the account, on distribution 2.8 and on Berth alike.
#[test]
fn actor_is_the_account_as_distribution_28() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\n", bcrypt::hash("alice-pw", 4).unwrap()),
    )
    .unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: notify\n    path: {}\n",
        htpasswd.display()
    );
    let run = |hook: &Webhook, host: &str| {
        let base = format!("http://alice:alice-pw@{host}");
        let p = push_image(&base, "notify/auth", "v1", "auth");
        let url = format!("{base}/v2/notify/auth/manifests/v1");
        assert_eq!(http("GET", &url, &[("Accept", OCI_MANIFEST)], b"").0, 200);
        // Refused: no event.
        let anonymous = format!("http://{host}/v2/notify/auth/manifests/v1");
        assert_eq!(http("GET", &anonymous, &[], b"").0, 401);
        let events = hook.wait_events(4, Duration::from_secs(30));
        let mut want = p.events();
        want.push(key("pull", "notify/auth", &p.manifest, "v1"));
        assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), want);
        events.iter().map(normalize).collect::<Vec<_>>()
    };
    let dist_hook = Webhook::start();
    let dist = Distribution::start_with_extra(
        &dir.path().join("dist"),
        &format!("{auth}{}", notifications_yaml(&dist_hook, "")),
    );
    let dist_events = run(&dist_hook, &dist.host);
    for e in &dist_events {
        assert_eq!(
            e["actor"],
            json!({"name": "alice"}),
            "distribution 2.8: {e}"
        );
    }
    let berth_hook = Webhook::start();
    let berth = berth_on(
        &dir.path().join("berth"),
        &format!("{auth}{}", notifications_yaml(&berth_hook, "")),
    );
    assert_eq!(run(&berth_hook, &berth.host), dist_events);
}

/// `DELETE /v2/<name>/manifests/<tag>` (distribution 3; 2.8 cannot): one delete event with
/// the repository and the tag, as distribution 3 sends; the manifest stays.
#[test]
fn tag_delete_as_distribution_3() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(&dir.path().join("data"), &notifications_yaml(&hook, ""));
    let p = push_image(&berth.url, "notify/tagdel", "v1", "tagdel");
    let url = format!("{}/v2/notify/tagdel/manifests/v1", berth.url);
    assert_eq!(http("DELETE", &url, &[], b"").0, 202);
    // Deleting it again: 404, no event; then a marker.
    assert_eq!(http("DELETE", &url, &[], b"").0, 404);
    let end = push_blob(&berth.url, "notify/tagdel", b"end");
    let events = hook.wait_events(5, Duration::from_secs(30));
    let mut want = p.events();
    want.push(key("delete", "notify/tagdel", "", "v1"));
    want.push(key("push", "notify/tagdel", &end, ""));
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), want);
    let target = events[3]["target"].as_object().unwrap();
    assert_eq!(
        target.keys().collect::<Vec<_>>(),
        ["repository", "tag"],
        "{target:?}"
    );
    let by_digest = format!("{}/v2/notify/tagdel/manifests/{}", berth.url, p.manifest);
    assert_eq!(
        http("HEAD", &by_digest, &[("Accept", OCI_MANIFEST)], b"").0,
        200
    );
}

/// A listener that does not answer: each attempt ends at the endpoint's `timeout` and is
/// retried (counted as an error, as distribution counts it); once it answers, everything
/// arrives once, in order.
#[test]
fn hung_listener_times_out_and_retries() {
    let hook = Webhook::start();
    hook.set_status(503);
    hook.set_delay(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "notifications:\n  endpoints:\n    - name: listener\n      url: {}\n      timeout: 300ms\n      threshold: 3\n      backoff: 200ms\n",
        hook.url()
    );
    let berth = berth_on(&dir.path().join("data"), &yaml);
    let debug = debug_url(&berth);
    let p = push_image(&berth.url, "notify/hung", "v1", "hung");
    // Without the timeout, one attempt would wait the whole 10 s.
    assert!(
        hook.wait_requests(3, Duration::from_secs(8)),
        "{} attempts: the timeout is not applied",
        hook.requests().len()
    );
    assert!(
        metric(
            &scrape(&debug),
            "registry_notifications_events_total",
            &[("endpoint", "listener"), ("type", "Errors")]
        ) >= 1.0
    );
    hook.set_delay(Duration::ZERO);
    hook.set_status(200);
    hook.wait_events(3, Duration::from_secs(30));
    wait_drained(&debug);
    let events = hook.events();
    assert_unique_ids(&events);
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), p.events());
}

/// Two live replicas on one storage root, the listener down for longer than `orphanafter`:
/// neither adopts the other's queue while its heartbeat goes on, so every event arrives once.
#[test]
fn live_replicas_do_not_adopt_each_other() {
    let mut hook = Webhook::start_stopped();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "{}  queue:\n    orphanafter: 2s\n",
        notifications_yaml(&hook, "")
    );
    let a = berth_on(&root, &yaml);
    let b = berth_on(&root, &yaml);
    let pa = push_image(&a.url, "notify/by-a", "v1", "by-a");
    let pb = push_image(&b.url, "notify/by-b", "v1", "by-b");
    // Over two orphanafter periods with both alive: nothing to observe but that nothing
    // moves.
    std::thread::sleep(Duration::from_secs(5));
    hook.restart();
    hook.wait_events(6, Duration::from_secs(30));
    wait_drained(&debug_url(&a));
    wait_drained(&debug_url(&b));
    let events = hook.events();
    assert_unique_ids(&events);
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_eq!(keys_of_repo(&events, "notify/by-a"), pa.events());
    assert_eq!(keys_of_repo(&events, "notify/by-b"), pb.events());
    let instance = |repo: &str| -> String {
        events
            .iter()
            .find(|e| e["target"]["repository"] == repo)
            .map(|e| e["source"]["instanceID"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_ne!(instance("notify/by-a"), instance("notify/by-b"));
}

/// Pushes from three clients at once into three repositories while the listener goes down
/// and up again and again: every event arrives (at least once: a connection cut after the
/// listener took a request gives a legitimate resend), each repository's in order.
#[test]
fn flapping_listener_under_concurrent_pushes() {
    let mut hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(&dir.path().join("data"), &notifications_yaml(&hook, ""));
    let debug = debug_url(&berth);
    let base = berth.url.clone();
    let pushers: Vec<_> = (0..3)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                (0..3)
                    .flat_map(|i| {
                        push_image(
                            &base,
                            &format!("notify/flap{t}"),
                            &format!("v{i}"),
                            &format!("flap{t}-{i}"),
                        )
                        .events()
                    })
                    .collect::<Vec<Key>>()
            })
        })
        .collect();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        hook.stop();
        std::thread::sleep(Duration::from_millis(150));
        hook.restart();
    }
    let wanted: Vec<Vec<Key>> = pushers.into_iter().map(|h| h.join().unwrap()).collect();
    wait_drained(&debug);
    // First arrival of each id, in arrival order.
    let mut seen = std::collections::BTreeSet::new();
    let events: Vec<Value> = hook
        .events()
        .into_iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(events.len(), 27, "{events:#?}");
    for (t, want) in wanted.iter().enumerate() {
        assert_eq!(&keys_of_repo(&events, &format!("notify/flap{t}")), want);
    }
}

/// An endpoint URL with credentials, a path and a query (`http://user:secret@host/p?q`):
/// the POST goes to that path and query with the credentials as Basic auth, as
/// distribution's Go client sends them; Berth never logs the secret.
#[test]
fn endpoint_url_credentials_path_and_query() {
    let run = |start: &Starter, hook: &Webhook| {
        let url = hook
            .url()
            .replace("http://", "http://hookuser:hook-secret@")
            .replace("/events", "/hooks/registry?via=notify");
        let yaml = format!(
            "notifications:\n  endpoints:\n    - name: listener\n      url: {url}\n      timeout: 1s\n      backoff: 200ms\n"
        );
        let (base, registry) = start(&yaml);
        push_blob(&base, "notify/creds", b"credentials");
        hook.wait_events(1, Duration::from_secs(30));
        let r = &hook.requests()[0];
        assert_eq!(r.path, "/hooks/registry?via=notify");
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "hookuser:hook-secret"
            )
        );
        assert_eq!(r.header("authorization"), Some(basic.as_str()));
        registry
    };
    let dir = tempfile::tempdir().unwrap();
    run(
        &|yaml| {
            let d = Distribution::start_with_extra(&dir.path().join("dist"), yaml);
            (d.url.clone(), Box::new(d))
        },
        &Webhook::start(),
    );
    let registry = run(
        &|yaml| {
            let b = berth_on(&dir.path().join("berth"), yaml);
            (b.url.clone(), Box::new(b))
        },
        &Webhook::start(),
    );
    let berth = registry.downcast_ref::<Berth>().unwrap();
    let log = berth.log();
    assert!(
        !log.contains("hook-secret"),
        "the endpoint URL's password is in the log:\n{log}"
    );
}

/// Two replicas on one storage root (orphanafter 30s); the listener is down; A takes a push
/// and is stopped with SIGTERM: B delivers A's events at its next scan of the queues
/// (every orphanafter / 3), without waiting for orphanafter.
#[test]
fn sigterm_replica_queue_taken_over_without_orphanafter() {
    let mut hook = Webhook::start_stopped();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "{}  queue:\n    orphanafter: 30s\n",
        notifications_yaml(&hook, "")
    );
    let mut a = berth_on(&root, &yaml);
    let b = berth_on(&root, &yaml);
    let p = push_image(&a.url, "notify/handover", "v1", "handover");
    sigterm(&mut a);
    hook.restart();
    let events = hook.wait_events(3, Duration::from_secs(20));
    wait_drained(&debug_url(&b));
    assert_unique_ids(&hook.events());
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), p.events());
}

/// A monolithic upload (one POST with the digest and the body, OCI distribution spec;
/// distribution cannot) is a blob push like a finished upload.
#[test]
fn monolithic_post_upload_is_a_push() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(&dir.path().join("data"), &notifications_yaml(&hook, ""));
    let body = b"one request";
    let d = sha256(body);
    let url = format!("{}/v2/notify/mono/blobs/uploads/?digest={d}", berth.url);
    let (status, _) = http(
        "POST",
        &url,
        &[("Content-Type", "application/octet-stream")],
        body,
    );
    assert_eq!(status, 201);
    let events = hook.wait_events(1, Duration::from_secs(30));
    let e = &events[0];
    assert_eq!(key_of(e), key("push", "notify/mono", &d, ""));
    assert_eq!(e["request"]["method"], "POST");
    assert_eq!(e["target"]["mediaType"], "application/octet-stream");
    assert_eq!(e["target"]["size"], body.len());
    assert_eq!(e["target"]["length"], body.len());
    assert_eq!(
        e["target"]["url"],
        format!("{}/v2/notify/mono/blobs/{d}", berth.url)
    );
}

/// SIGTERM while an event is on its way to a slow listener (a rolling update): after the
/// restart every event arrives, and none twice (the POST in flight is finished, or its event
/// is not resent once the listener took it).
#[test]
fn sigterm_during_delivery_sends_nothing_twice() {
    let hook = Webhook::start();
    hook.set_delay(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = notifications_yaml(&hook, "");
    let mut berth = berth_on(&root, &yaml);
    let p = push_image(&berth.url, "notify/rolling", "v1", "rolling");
    // The first POST is in the listener's hands.
    assert!(hook.wait_requests(1, Duration::from_secs(10)));
    sigterm(&mut berth);
    hook.set_delay(Duration::ZERO);
    let berth = berth_on(&root, &yaml);
    hook.wait_events(3, Duration::from_secs(30));
    wait_drained(&debug_url(&berth));
    let events = hook.events();
    assert_unique_ids(&events);
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), p.events());
}

/// A UTC RFC 3339 timestamp as Go writes it (`…T22:13:20.5Z`, trailing zeros of the
/// fraction dropped) as something that sorts as the time: (seconds part, 9-digit fraction).
fn time_order(ts: &str) -> (String, String) {
    let ts = ts
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("not UTC: {ts}"));
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    (secs.to_owned(), format!("{frac:0<9}"))
}

/// A burst: eight clients push 25 blobs each (monolithic POSTs) and pull each back, all at
/// once; the listener gets all 400 events, each once, every client's in its order, with
/// timestamps that do not go back.
#[test]
fn burst_of_concurrent_pushes() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let berth = berth_on(&dir.path().join("data"), &notifications_yaml(&hook, ""));
    let debug = debug_url(&berth);
    let pushers: Vec<_> = (0..8)
        .map(|t| {
            let base = berth.url.clone();
            std::thread::spawn(move || {
                (0..25)
                    .flat_map(|i| {
                        let body = format!("burst {t} {i}");
                        let d = sha256(body.as_bytes());
                        let url = format!("{base}/v2/notify/burst{t}/blobs/uploads/?digest={d}");
                        let (status, _) = http(
                            "POST",
                            &url,
                            &[("Content-Type", "application/octet-stream")],
                            body.as_bytes(),
                        );
                        assert_eq!(status, 201);
                        // And a pull of it (pull events take the path that does not wait).
                        let url = format!("{base}/v2/notify/burst{t}/blobs/{d}");
                        assert_eq!(http("GET", &url, &[], b"").0, 200);
                        let repo = format!("notify/burst{t}");
                        [key("push", &repo, &d, ""), key("pull", &repo, &d, "")]
                    })
                    .collect::<Vec<Key>>()
            })
        })
        .collect();
    let wanted: Vec<Vec<Key>> = pushers.into_iter().map(|h| h.join().unwrap()).collect();
    hook.wait_events(400, Duration::from_secs(45));
    wait_drained(&debug);
    let events = hook.events();
    assert_eq!(events.len(), 400);
    assert_unique_ids(&events);
    for (t, want) in wanted.iter().enumerate() {
        let repo = format!("notify/burst{t}");
        assert_eq!(&keys_of_repo(&events, &repo), want, "{repo}");
        let times: Vec<(String, String)> = events
            .iter()
            .filter(|e| e["target"]["repository"] == repo.as_str())
            .map(|e| time_order(e["timestamp"].as_str().unwrap()))
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{repo}: {times:?}");
    }
    assert_eq!(
        metric(
            &scrape(&debug),
            "berth_notifications_delivered_total",
            &[("endpoint", "listener")]
        ),
        400.0
    );
}

/// Two endpoints, one down: the other gets every event meanwhile (no endpoint waits for
/// another), each has its own pending count, and the one that comes back gets its own.
#[test]
fn endpoints_are_independent() {
    let mut down = Webhook::start_stopped();
    let up = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "notifications:\n  endpoints:\n    - name: down\n      url: {}\n      timeout: 1s\n      threshold: 3\n      backoff: 200ms\n    - name: up\n      url: {}\n      timeout: 1s\n      threshold: 3\n      backoff: 200ms\n",
        down.url(),
        up.url()
    );
    let berth = berth_on(&dir.path().join("data"), &yaml);
    let debug = debug_url(&berth);
    let p = push_image(&berth.url, "notify/indep", "v1", "indep");
    let events = up.wait_events(3, Duration::from_secs(10));
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), p.events());
    wait_metric(
        &debug,
        "berth_notifications_pending_events",
        &[("endpoint", "up")],
        |v| v == 0.0,
    );
    // (Polled: events reach the endpoint's worker between its attempts.)
    wait_metric(
        &debug,
        "berth_notifications_pending_events",
        &[("endpoint", "down")],
        |v| v == 3.0,
    );
    down.restart();
    let events = down.wait_events(3, Duration::from_secs(30));
    assert_eq!(events.iter().map(key_of).collect::<Vec<_>>(), p.events());
    // The same events: the same ids at both endpoints.
    let ids = |h: &Webhook| -> Vec<String> {
        h.events()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&down), ids(&up));
}

/// An endpoint removed from the configuration while events wait for it: after the restart a
/// new endpoint gets only the events that happen from then on, not the old one's.
#[test]
fn removed_endpoint_events_go_nowhere_else() {
    let old = Webhook::start_stopped();
    let new = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let endpoint = |name: &str, hook: &Webhook| {
        format!(
            "notifications:\n  endpoints:\n    - name: {name}\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n",
            hook.url()
        )
    };
    let mut berth = berth_on(&root, &endpoint("old", &old));
    push_image(&berth.url, "notify/before", "v1", "before");
    sigterm(&mut berth);
    let berth = berth_on(&root, &endpoint("new", &new));
    let after = push_blob(&berth.url, "notify/after", b"after");
    let events = new.wait_events(1, Duration::from_secs(30));
    wait_metric(
        &debug_url(&berth),
        "berth_notifications_pending_events",
        &[("endpoint", "new")],
        |v| v == 0.0,
    );
    assert_eq!(
        new.events().iter().map(key_of).collect::<Vec<_>>(),
        vec![key("push", "notify/after", &after, "")],
        "{events:#?}"
    );
}

/// Berth's `proxy.upstreams` form: a pull through the `docker.io` upstream is a pull event
/// of the repository as the client named it (`docker.io/notify/px`).
#[test]
fn pull_through_upstreams_form_names_the_client_repository() {
    let upstream = Berth::start();
    let p = push_image(&upstream.url, "notify/px", "v1", "upstreams");
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "proxy:\n  spooldir: {}\n  upstreams:\n    - name: docker.io\n      remoteurl: {}\n{}",
        dir.path().join("spool").display(),
        upstream.url,
        notifications_yaml(&hook, "")
    );
    let berth = berth_on(&dir.path().join("data"), &yaml);
    let url = format!("{}/v2/docker.io/notify/px/manifests/v1", berth.url);
    assert_eq!(http("GET", &url, &[("Accept", OCI_MANIFEST)], b"").0, 200);
    let url = format!("{}/v2/docker.io/notify/px/blobs/{}", berth.url, p.layer);
    assert_eq!(http("GET", &url, &[], b"").0, 200);
    let events = hook.wait_events(2, Duration::from_secs(30));
    assert_eq!(
        events.iter().map(key_of).collect::<Vec<_>>(),
        vec![
            key("pull", "docker.io/notify/px", &p.manifest, "v1"),
            key("pull", "docker.io/notify/px", &p.layer, ""),
        ]
    );
    assert_eq!(
        events[1]["target"]["url"],
        format!("{}/v2/docker.io/notify/px/blobs/{}", berth.url, p.layer)
    );
}
