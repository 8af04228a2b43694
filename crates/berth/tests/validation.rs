//! Manifest validation through a real `berth serve`, side by side with Debian's
//! `docker-registry` (distribution 2.8) given the same configuration where 2.8 knows it:
//!
//! - `validation.manifests.urls`: with no rules, a layer that names foreign `urls` is refused;
//!   `allow`/`deny` admit exactly what distribution admits; `validation.disabled` admits any
//!   http(s) URL.
//! - `validation.manifests.indexes` (distribution 3.x; 2.8 has no such key): which children of
//!   an index must already be in the repository.
//! - The `Content-Type` of a manifest PUT: the same status and error code as distribution for
//!   missing, unknown, unparsable and mismatched types.
//! - Refusals to start: an invalid expression or `platforms` value.
//! - A real client: skopeo copying a Windows-style image whose base layer is fetched from
//!   `mcr.microsoft.com` (skopeo skips such layers and pushes the manifest with their URLs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "support/clients.rs"]
mod clients_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_conformance::client::{Body, Client, Resp, MANIFEST_ACCEPT};
use berth_conformance::fixtures::{
    bytes, descriptor, digest, Image, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST,
    OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
use support::{Berth, Distribution, DISTRIBUTION_BIN};

const NONDISTRIBUTABLE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// A manifest with one pushed layer and one layer to be fetched from `urls` (never pushed):
/// an OCI non-distributable layer, or a Docker foreign layer. Returns the blobs to push, the
/// manifest and its media type.
fn with_foreign_layer(
    seed: &str,
    docker: bool,
    urls: &[&str],
) -> (Vec<Vec<u8>>, Vec<u8>, &'static str) {
    let config =
        format!(r#"{{"architecture":"amd64","os":"windows","seed":"{seed}"}}"#).into_bytes();
    let layer = bytes(&format!("{seed}-layer"), 700);
    let foreign = bytes(&format!("{seed}-foreign"), 900);
    let (mt, config_mt, layer_mt, foreign_mt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_FOREIGN)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, NONDISTRIBUTABLE)
    };
    let foreign_desc = format!(
        r#"{{"mediaType":"{foreign_mt}","digest":"{}","size":{},"urls":{}}}"#,
        digest(&foreign),
        foreign.len(),
        serde_json::json!(urls)
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{},"layers":[{},{foreign_desc}]}}"#,
        descriptor(config_mt, &config),
        descriptor(layer_mt, &layer),
    )
    .into_bytes();
    (vec![config, layer], manifest, mt)
}

fn put(c: &Client, repo: &str, reference: &str, ct: Option<&str>, body: &[u8]) -> Resp {
    let headers: Vec<(&str, &str)> = ct.map(|t| ("Content-Type", t)).into_iter().collect();
    c.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &headers,
        Body::Bytes(body),
    )
    .unwrap()
}

fn first_code(r: &Resp) -> String {
    r.error_codes().into_iter().next().unwrap_or_default()
}

/// Pushes the foreign-layer manifest for each URL list to both registries and checks that
/// each admits exactly `expected` of them. Berth answers a refusal with 400 MANIFEST_INVALID
/// and stores nothing; an accepted manifest is served byte for byte.
fn check_urls(validation: &str, cases: &[(&[&str], bool)]) {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_on(&dir.path().join("berth"), validation);
    let dist = Distribution::start_with_extra(&dir.path().join("dist"), validation);
    for (name, url) in [("berth", &berth.url), ("distribution", &dist.url)] {
        let c = Client::new(url, None);
        for (i, (urls, expected)) in cases.iter().enumerate() {
            for docker in [false, true] {
                let (blobs, manifest, mt) = with_foreign_layer(&format!("c{i}"), docker, urls);
                for b in &blobs {
                    c.push_blob("win/app", b).unwrap();
                }
                let tag = format!("c{i}-{}", if docker { "docker" } else { "oci" });
                let r = put(&c, "win/app", &tag, Some(mt), &manifest);
                assert_eq!(
                    (200..300).contains(&r.status),
                    *expected,
                    "{name} with {validation:?}: {urls:?} ({mt}): {}",
                    r.describe()
                );
                if name != "berth" {
                    continue;
                }
                let got = c
                    .get(&format!("/v2/win/app/manifests/{tag}"), &[("Accept", mt)])
                    .unwrap();
                if *expected {
                    assert_eq!(r.status, 201, "{}", r.describe());
                    assert_eq!(got.status, 200, "{}", got.describe());
                    assert_eq!(got.body, manifest, "served bytes are the pushed bytes");
                    assert_eq!(got.header("content-type"), Some(mt));
                } else {
                    assert_eq!(
                        (r.status, first_code(&r).as_str()),
                        (400, "MANIFEST_INVALID"),
                        "{}",
                        r.describe()
                    );
                    assert_eq!(
                        got.status,
                        404,
                        "a refused manifest is not tagged: {}",
                        got.describe()
                    );
                }
            }
        }
    }
}

const MCR: &str = "https://mcr.microsoft.com/v2/windows/blobs/sha256:abc";
const OTHER: &str = "https://downloads.example.org/layer.tar.gz";
const PRIVATE: &str = "https://mcr.microsoft.com/private/layer";

#[test]
fn foreign_layer_urls_are_refused_by_default() {
    check_urls("", &[(&[MCR], false), (&[OTHER], false)]);
}

#[test]
fn allow_and_deny_rules_admit_what_distribution_admits() {
    let allow_deny = "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https://mcr\\.microsoft\\.com/\n        - ^https://mirror\\.internal/\n      deny:\n        - /private/\n";
    check_urls(
        allow_deny,
        &[
            (&[MCR], true),
            (&[MCR, "https://mirror.internal/l"], true),
            (&[OTHER], false),
            // Every URL must be admitted.
            (&[MCR, OTHER], false),
            // deny wins over allow.
            (&[PRIVATE], false),
            // Never admitted, whatever the rules: not http(s), or with a fragment.
            (&["ftp://mcr.microsoft.com/x"], false),
            (&["https://mcr.microsoft.com/x#frag"], false),
        ],
    );
    // deny alone: everything else is admitted.
    let deny_only = "validation:\n  manifests:\n    urls:\n      deny:\n        - ^https://downloads\\.example\\.org/\n";
    check_urls(deny_only, &[(&[MCR], true), (&[OTHER], false)]);
}

#[test]
fn disabled_validation_admits_any_http_url() {
    check_urls(
        "validation:\n  disabled: true\n",
        &[
            (&[MCR], true),
            (&[OTHER], true),
            (&["file:///etc/passwd"], false),
        ],
    );
}

/// An index over two images for linux/amd64 and linux/arm64, of which only the ones in
/// `pushed` are in the repository.
fn index_over(c: &Client, repo: &str, seed: &str, pushed: &[&str]) -> Vec<u8> {
    let amd = Image::oci(&format!("{seed}-amd64"), 1, "");
    let arm = Image::oci(&format!("{seed}-arm64"), 1, "");
    for (arch, img) in [("amd64", &amd), ("arm64", &arm)] {
        if pushed.contains(&arch) {
            let r = c.push_image(repo, &img.digest(), img).unwrap();
            assert_eq!(r.status, 201, "{}", r.describe());
        }
    }
    berth_conformance::fixtures::index(OCI_INDEX, &[(&amd, "amd64"), (&arm, "arm64")], "")
}

#[test]
fn index_children_follow_the_platform_rules() {
    // (validation section, children pushed, accepted)
    let cases: &[(&str, &[&str], bool)] = &[
        ("", &["amd64"], false),
        ("", &["amd64", "arm64"], true),
        ("validation:\n  manifests:\n    indexes:\n      platforms: all\n", &["arm64"], false),
        ("validation:\n  manifests:\n    indexes:\n      platforms: None\n", &[], true),
        ("validation:\n  disabled: true\n", &[], true),
        (
            "validation:\n  manifests:\n    indexes:\n      platforms: list\n      platformlist:\n        - os: linux\n          architecture: amd64\n",
            &["amd64"],
            true,
        ),
        (
            "validation:\n  manifests:\n    indexes:\n      platforms: list\n      platformlist:\n        - os: linux\n          architecture: amd64\n",
            &["arm64"],
            false,
        ),
        // An empty list checks every platform, as in distribution.
        ("validation:\n  manifests:\n    indexes:\n      platforms: list\n", &["amd64"], false),
    ];
    for (i, (validation, pushed, accepted)) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let b = Berth::start_on(&dir.path().join("data"), validation);
        let c = Client::new(&b.url, None);
        let idx = index_over(&c, "multi/app", &format!("i{i}"), pushed);
        let r = put(&c, "multi/app", "latest", Some(OCI_INDEX), &idx);
        if *accepted {
            assert_eq!(r.status, 201, "{validation:?} {pushed:?}: {}", r.describe());
            let got = c
                .get("/v2/multi/app/manifests/latest", &[("Accept", OCI_INDEX)])
                .unwrap();
            assert_eq!(got.body, idx);
        } else {
            assert_eq!(
                (r.status, first_code(&r).as_str()),
                (400, "MANIFEST_BLOB_UNKNOWN"),
                "{validation:?} {pushed:?}: {}",
                r.describe()
            );
        }
        // distribution warns when completeness is not checked for every platform.
        let warned = b
            .log()
            .contains("accepted without all of their platform images");
        let partial = validation.contains("None")
            || validation.contains("disabled")
            || validation.contains("platformlist");
        assert_eq!(warned, partial, "{validation:?}: {}", b.log());
    }
}

/// The `Content-Type` of a manifest PUT: Berth answers as distribution does.
#[test]
fn content_type_is_checked_as_distribution_does() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_on(&dir.path().join("berth"), "");
    let dist = Distribution::start(&dir.path().join("dist"));
    let oci = Image::oci("ct-oci", 1, "");
    let docker = Image::docker("ct-docker");
    let list = berth_conformance::fixtures::index(DOCKER_LIST, &[(&docker, "amd64")], "");
    let oci_index = berth_conformance::fixtures::index(OCI_INDEX, &[(&oci, "amd64")], "");
    let cases: &[(&str, Option<&str>, &[u8], u16)] = &[
        ("OCI manifest", Some(OCI_MANIFEST), &oci.manifest, 201),
        (
            "with parameters",
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            &oci.manifest,
            201,
        ),
        (
            "in capitals",
            Some("APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON"),
            &oci.manifest,
            201,
        ),
        (
            "Docker manifest",
            Some(DOCKER_MANIFEST),
            &docker.manifest,
            201,
        ),
        ("Docker list", Some(DOCKER_LIST), &list, 201),
        ("OCI index", Some(OCI_INDEX), &oci_index, 201),
        ("no Content-Type", None, &oci.manifest, 400),
        (
            "foreign type",
            Some("application/x-evil"),
            &oci.manifest,
            400,
        ),
        ("plain JSON", Some("application/json"), &oci.manifest, 400),
        ("unparsable", Some("a b/c d"), &oci.manifest, 400),
        (
            "bad parameter",
            Some("application/vnd.oci.image.manifest.v1+json; charset"),
            &oci.manifest,
            400,
        ),
        (
            "OCI type, Docker body",
            Some(OCI_MANIFEST),
            &docker.manifest,
            400,
        ),
        (
            "Docker type, OCI body",
            Some(DOCKER_MANIFEST),
            &oci.manifest,
            400,
        ),
        (
            "index type, manifest body",
            Some(OCI_INDEX),
            &oci.manifest,
            400,
        ),
        (
            "manifest type, index body",
            Some(OCI_MANIFEST),
            &oci_index,
            400,
        ),
        (
            "Docker list type, OCI index body",
            Some(DOCKER_LIST),
            &oci_index,
            400,
        ),
        (
            "schema1 type",
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            &oci.manifest,
            400,
        ),
    ];
    for (name, url) in [("berth", &berth.url), ("distribution", &dist.url)] {
        let c = Client::new(url, None);
        for img in [&oci, &docker] {
            for b in img.blobs() {
                c.push_blob("ct/app", b).unwrap();
            }
        }
        for (i, (case, ct, body, status)) in cases.iter().enumerate() {
            // Children first, by digest, so that the index cases are complete.
            if *ct == Some(OCI_INDEX) || *ct == Some(DOCKER_LIST) {
                for img in [&oci, &docker] {
                    let r = put(
                        &c,
                        "ct/app",
                        &img.digest(),
                        Some(img.media_type),
                        &img.manifest,
                    );
                    assert_eq!(r.status, 201, "{}", r.describe());
                }
            }
            let tag = format!("t{i}");
            let r = put(&c, "ct/app", &tag, *ct, body);
            let got = (
                r.status,
                if r.status == 201 {
                    String::new()
                } else {
                    first_code(&r)
                },
            );
            let want = (
                *status,
                if *status == 201 {
                    String::new()
                } else {
                    "MANIFEST_INVALID".to_owned()
                },
            );
            assert_eq!(got, want, "{name}: {case}: {}", r.describe());
            if *status == 201 {
                let g = c
                    .get(
                        &format!("/v2/ct/app/manifests/{tag}"),
                        &[("Accept", MANIFEST_ACCEPT)],
                    )
                    .unwrap();
                assert_eq!(g.body, body.to_vec(), "{name}: {case}: stored bytes");
            }
        }
    }
}

/// Waits up to 20 s for a process that must exit by itself; its exit status and stderr.
fn exits(mut cmd: Command) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

fn write_config(dir: &Path, validation: &str) -> std::path::PathBuf {
    let port = support::free_port();
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{validation}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// A configuration distribution refuses, Berth refuses too, naming the key.
#[test]
fn invalid_rules_refuse_to_start() {
    let bad_regex = "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https://ok/\n        - (unclosed\n";
    let bad_platforms = "validation:\n  manifests:\n    indexes:\n      platforms: some\n";
    for (validation, key, distribution_knows) in [
        (bad_regex, "validation.manifests.urls.allow[1]", true),
        (
            bad_platforms,
            "validation.manifests.indexes.platforms",
            false,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), validation);
        let mut serve = Command::new(support::bin());
        serve.arg("serve").arg(&cfg);
        let (status, log) = exits(serve);
        assert!(
            matches!(status, Some(c) if c != 0),
            "berth serve: {status:?} {log}"
        );
        assert!(log.contains(key), "the refusal names {key}: {log}");
        let mut check = Command::new(support::bin());
        check.args(["config", "check"]).arg(&cfg);
        let (status, log) = exits(check);
        assert!(
            matches!(status, Some(c) if c != 0),
            "config check: {status:?} {log}"
        );
        if distribution_knows {
            // distribution 2.8 panics on the same file (2.8 has no `indexes` key).
            let mut d = Command::new(DISTRIBUTION_BIN);
            d.arg("serve").arg(&cfg);
            let (status, log) = exits(d);
            assert!(
                matches!(status, Some(c) if c != 0),
                "distribution: {status:?} {log}"
            );
        }
    }
}

/// An OCI layout (made by umoci) whose image gains a non-distributable layer that names a URL
/// and is not in the layout, as Windows base layers are published. Returns the layout.
fn layout_with_foreign_layer(lab: &clients_support::Lab) -> clients_support::Layout {
    use serde_json::Value;
    let layout = clients_support::Layout::init(lab, &lab.path("in"));
    let img = layout.add_image(lab, "v1", "amd64", &[("/etc/motd", "hello\n")]);
    let mut m: Value = serde_json::from_slice(&layout.blob(&img.manifest)).unwrap();
    let base = bytes("windows-base", 4096);
    m["layers"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({
            "mediaType": NONDISTRIBUTABLE,
            "digest": digest(&base),
            "size": base.len(),
            "urls": [MCR],
        }),
    );
    let body = serde_json::to_vec(&m).unwrap();
    let d = digest(&body);
    std::fs::write(
        layout
            .dir
            .join("blobs/sha256")
            .join(clients_support::hex(&d)),
        &body,
    )
    .unwrap();
    let index_path = layout.dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for e in index["manifests"].as_array_mut().unwrap() {
        e["digest"] = d.clone().into();
        e["size"] = body.len().into();
    }
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    layout
}

#[test]
fn skopeo_pushes_foreign_layers_only_where_a_rule_admits_them() {
    // distribution's default: refused, and skopeo reports the registry's reason.
    let lab = clients_support::Lab::start();
    let layout = layout_with_foreign_layer(&lab);
    let out = lab.run_failing(lab.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &layout.reference("v1"),
        &lab.docker_ref("win/app", "v1"),
    ]));
    assert!(
        out.stderr.contains("manifest invalid") || out.stderr.contains("MANIFEST_INVALID"),
        "{}",
        out.stderr
    );
    assert_eq!(lab.get_manifest("win/app", "v1").0, 404);

    // Admitted by an allow rule: stored as skopeo sent it, the foreign layer not pushed.
    let lab = clients_support::Lab::start_with(|dir| {
        Berth::start_on(
            &dir.join("data"),
            "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https://mcr\\.microsoft\\.com/\n",
        )
    });
    let layout = layout_with_foreign_layer(&lab);
    lab.run(lab.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &layout.reference("v1"),
        &lab.docker_ref("win/app", "v1"),
    ]));
    let (status, _, ctype, body) = lab.get_manifest("win/app", "v1");
    assert_eq!((status, ctype.as_str()), (200, OCI_MANIFEST));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["layers"][0]["urls"][0], MCR, "{m}");
    let foreign = m["layers"][0]["digest"].as_str().unwrap();
    let c = Client::new(&lab.berth.url, None);
    let r = c.head(&format!("/v2/win/app/blobs/{foreign}")).unwrap();
    assert_eq!(r.status, 404, "the foreign layer was not pushed");
}
