//! Real clients pulling through Berth as a mirror of a token-protected upstream Berth that
//! plays Docker Hub: skopeo with the `docker.io/` prefix, a Docker daemon configured with
//! `registry-mirrors` pulling `alpine`, and containerd's `ctr` with a hosts.toml mirror (which
//! sends `?ns=docker.io`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/clients.rs"]
mod clients_support;
mod support;

use std::path::Path;

use clients_support::{Containerd, Dockerd, Lab, Layout};
use support::Berth;

/// The upstream ("Docker Hub"): token auth, anonymous pulls of `library/*`, `admin` pushes.
fn hub(dir: &Path) -> Berth {
    let yaml = format!(
        "auth:\n  token:\n    service: hub.test\n    issuer: hub\n  issuer:\n    keydir: {}\n    users:\n      admin: \"{}\"\n    acl:\n      - {{ account: admin, name: \"*\", actions: [\"*\"] }}\n      - {{ name: \"library/*\", actions: [pull] }}\n",
        dir.join("hub-keys").display(),
        bcrypt::hash("admin-pw", 4).unwrap()
    );
    Berth::start_on(&dir.join("hub"), &yaml)
}

/// A lab whose Berth mirrors `hub` as `docker.io` (the default upstream, `library/*` only).
fn mirror_lab(hub_url: String) -> Lab {
    Lab::start_with(move |dir| {
        let yaml = format!(
            "proxy:\n  spooldir: {}\n  upstreams:\n    - name: docker.io\n      remoteurl: {hub_url}\n      default: true\n      allow: [\"library/*\"]\n",
            dir.join("spool").display()
        );
        Berth::start_on(&dir.join("mirror"), &yaml)
    })
}

/// Pushes a two-layer image to the hub's `library/alpine:latest`; returns its manifest digest.
fn seed(lab: &Lab, hub: &Berth) -> String {
    let layout = Layout::init(lab, &lab.path("seed"));
    let img = layout.add_image(
        lab,
        "latest",
        "amd64",
        &[
            ("/etc/os-release", "ID=alpine-ish\n"),
            ("/bin/sh", "#!fake\n"),
        ],
    );
    lab.run(&mut lab.skopeo_push(
        "admin:admin-pw",
        &layout.reference("latest"),
        &format!("docker://{}/library/alpine:latest", hub.host),
    ));
    img.manifest
}

fn hub_saw(hub: &Berth, needle: &str) -> bool {
    hub.log()
        .lines()
        .any(|l| l.contains("request method=") && l.contains(needle))
}

#[test]
fn skopeo_pulls_through_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let lab = mirror_lab(hub.url.clone());
    let digest = seed(&lab, &hub);
    let out = lab.path("out");
    lab.run(lab.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &lab.docker_ref("docker.io/library/alpine", "latest"),
        &format!("oci:{}:latest", out.display()),
    ]));
    let pulled = Layout::open(&out).image("latest");
    lab.check_eq(
        pulled.manifest.as_str(),
        digest.as_str(),
        "manifest digest through the mirror",
    );
    for b in pulled.blobs() {
        let content = Layout::open(&out).blob(&b);
        lab.check_eq(
            clients_support::sha256(&content),
            b.clone(),
            "a pulled blob hashes to its digest",
        );
    }
    lab.check(
        hub_saw(&hub, "/v2/library/alpine/manifests/latest"),
        "the hub served the manifest",
    );
}

#[test]
fn docker_with_registry_mirrors_pulls_through_berth() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let lab = mirror_lab(hub.url.clone());
    let digest = seed(&lab, &hub);
    let mirror_url = lab.berth.url.clone();
    let dockerd = Dockerd::start_with(
        &lab,
        &lab.path("docker"),
        "overlay2",
        &["--registry-mirror", &mirror_url],
    );
    // docker.io is unreachable here: the pull can only succeed through the mirror.
    let out = lab.run(dockerd.docker(&lab).args(["pull", "alpine:latest"]));
    lab.check(
        out.contains(&format!("Digest: {digest}")),
        &format!("docker pull alpine via the mirror: {out}"),
    );
    let log = lab.berth.log();
    lab.check(
        log.contains("path=/v2/library/alpine/manifests/latest"),
        "the daemon asked the mirror for library/alpine (no host prefix)",
    );
    lab.check(
        hub_saw(&hub, "/v2/library/alpine/manifests/latest"),
        "the mirror fetched it from the hub",
    );
}

#[test]
fn ctr_with_a_hosts_toml_mirror_sends_ns_and_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path());
    let lab = mirror_lab(hub.url.clone());
    let digest = seed(&lab, &hub);
    let containerd = Containerd::start(&lab, &lab.path("containerd"));
    let hosts = lab.path("certs.d/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            lab.berth.url
        ),
    )
    .unwrap();
    lab.run(containerd.ctr(&lab).args([
        "images",
        "pull",
        "--hosts-dir",
        &lab.path("certs.d").to_string_lossy(),
        "docker.io/library/alpine:latest",
    ]));
    let list = lab.run(containerd.ctr(&lab).args(["images", "ls"]));
    lab.check(
        list.contains(&digest),
        &format!("ctr has the image with digest {digest}: {list}"),
    );
    lab.check(
        lab.berth.log().contains("ns=docker.io"),
        "ctr asked the mirror with ?ns=docker.io",
    );
}
