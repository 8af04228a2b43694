//! Notifications end to end: a real `berth serve` posting to a real HTTP listener
//! ([`Webhook`]) that the test starts, stops and makes fail. The event stream of a push, pull,
//! mount and delete made by real clients (skopeo, plain HTTP) equals distribution 2.8's for the
//! same configuration file; events survive a listener that is down across SIGTERM and SIGKILL
//! restarts and a replica that dies for good; the queue bound drops the oldest; the failing
//! endpoint shows in `/debug/health`, the logs and the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::Webhook;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use support::{Berth, Distribution};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
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
    /// holding `content`), written by hand; returns (manifest digest, config digest, layer
    /// digest).
    fn layout(&self, name: &str, tag: &str, content: &str) -> (String, String, String) {
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
        std::fs::write(
            dir.join("oci-layout"),
            "{\"imageLayoutVersion\":\"1.0.0\"}",
        )
        .unwrap();
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
        (manifest_d, config_d, layer_d)
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
    let (status, location) = http("POST", &format!("{base}/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(status, 202, "POST upload to {repo}");
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
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

/// Pushes a one-layer OCI image (config + layer + manifest, plain HTTP) as `repo:tag`;
/// returns the manifest digest. Three events: push, push, push.
fn push_image(base: &str, repo: &str, tag: &str, seed: &str) -> String {
    let layer = push_blob(base, repo, format!("layer {seed}").as_bytes());
    let config_bytes = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let config = push_blob(base, repo, config_bytes.as_bytes());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_bytes.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": format!("layer {seed}").len()}],
    }))
    .unwrap();
    let (status, _) = http(
        "PUT",
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    assert_eq!(status, 201, "PUT manifest {repo}:{tag}");
    sha256(&manifest)
}

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
/// left out), and what was pushed.
struct Stream {
    phases: Vec<(&'static str, Vec<Value>)>,
    manifest: String,
    layer: String,
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

    let blob = format!("{base}/v2/notify/app/blobs/{layer}");
    assert_eq!(http("HEAD", &blob, &[], b"").0, 200);
    end_phase(base, hook, &marker, &mut markers);
    assert_eq!(http("GET", &blob, &[], b"").0, 200);
    end_phase(base, hook, &marker, &mut markers);
    names.extend(["HEAD blob", "GET blob"]);

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
    end_phase(base, hook, &marker, &mut markers);
    names.push("tags list, catalog, missing manifest and blob");

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
    assert!(current.is_empty(), "events after the last marker: {current:#?}");
    Stream {
        phases,
        manifest,
        layer,
    }
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

#[test]
fn distribution_28_stream() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start_with_extra(
        &dir.path().join("data"),
        &notifications_yaml(&hook, "      headers:\n        X-Test: [parity]\n"),
    );
    let stream = scenario(&dist.url, &dist.host, &hook);
    let text = dump(&stream, "distribution 2.8");
    if let Ok(path) = std::env::var("NOTIFY_DUMP") {
        let mut full = text.clone();
        for r in hook.requests().iter().take(5) {
            full.push_str(&format!("\n{} {} {:?}\n{}\n", r.method, r.path, r.headers, String::from_utf8_lossy(&r.body)));
        }
        std::fs::write(path, full).unwrap();
    }
    println!("{text}");
    let _ = (&stream.manifest, &stream.layer);
}

/// Three endpoints with distribution's ignore rules, each to its own listener.
fn ignore_yaml(a: &Webhook, b: &Webhook, c: &Webhook) -> String {
    format!(
        "notifications:\n  endpoints:\n    - name: actions-only\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n      ignore:\n        actions: [pull]\n    - name: actions-and-types\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n      ignoredmediatypes: [application/octet-stream]\n      ignore:\n        actions: [pull]\n    - name: manifest-type\n      url: {}\n      timeout: 1s\n      backoff: 200ms\n      ignore:\n        mediatypes: [{OCI_MANIFEST}]\n",
        a.url(),
        b.url(),
        c.url()
    )
}

/// Push (3 blobs... 2 blobs and a manifest), pull the manifest and a blob, delete the
/// manifest; then a marker blob push in `notify/end` that every endpoint keeps (a push of
/// type application/octet-stream is kept by `actions-only` and `manifest-type`; for
/// `actions-and-types` the last manifest delete is the end).
fn ignore_ops(base: &str) -> String {
    let m = push_image(base, "notify/ign", "v1", "ignore");
    let accept = [("Accept", OCI_MANIFEST)];
    let url = format!("{base}/v2/notify/ign/manifests/v1");
    assert_eq!(http("GET", &url, &accept, b"").0, 200);
    let blob = format!(
        "{base}/v2/notify/ign/blobs/{}",
        sha256(b"layer ignore")
    );
    assert_eq!(http("GET", &blob, &[], b"").0, 200);
    let url = format!("{base}/v2/notify/ign/manifests/{m}");
    assert_eq!(http("DELETE", &url, &[], b"").0, 202);
    m
}

/// (action, mediaType or "", tag or "") of each event, in order.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["target"]["mediaType"].as_str().unwrap_or("").to_owned(),
                e["target"]["tag"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn distribution_28_ignore_rules() {
    let (a, b, c) = (Webhook::start(), Webhook::start(), Webhook::start());
    let dir = tempfile::tempdir().unwrap();
    let dist = Distribution::start_with_extra(&dir.path().join("data"), &ignore_yaml(&a, &b, &c));
    ignore_ops(&dist.url);
    std::thread::sleep(Duration::from_secs(2));
    println!("A {:#?}\nB {:#?}\nC {:#?}", summary(&a.events()), summary(&b.events()), summary(&c.events()));
}
