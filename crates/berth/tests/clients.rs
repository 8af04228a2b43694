//! Real clients against a real `berth serve`: skopeo, buildah and podman, Docker (a private
//! dockerd) and containerd's `ctr` push images built locally (umoci, buildah) and pull them
//! back, and every digest that went in must come out unchanged; the files Berth wrote for a
//! push must be exactly the ones distribution 2.8 writes for the same push. Every test has its
//! own Berth, working directory, daemon sockets and storage, so they run in parallel; nothing
//! is fetched from the internet. The harness is `support/clients.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "support/clients.rs"]
mod clients_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use clients_support::{
    hex, sha256, Containerd, Dockerd, Image, Lab, Layout, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use serde_json::Value;
use support::Distribution;

fn json(lab: &Lab, text: &str, what: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| lab.fail(&format!("{what}: not JSON ({e}):\n{text}")))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// JSON blobs as text, for readable failure messages.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last non-empty line of a command's output.
fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Asserts the layout at `dir` holds `img` under `tag` with the same manifest, config and
/// layer digests, and every one of those blobs intact.
fn check_copied_out(lab: &Lab, source: &Layout, dir: &Path, tag: &str, img: &Image) {
    let out = Layout::open(dir);
    let got = out.image(tag);
    lab.check_eq(
        &got.manifest,
        &img.manifest,
        "manifest digest after the round trip",
    );
    lab.check_eq(
        &got.config,
        &img.config,
        "config digest after the round trip",
    );
    lab.check_eq(
        &got.layers,
        &img.layers,
        "layer digests after the round trip",
    );
    check_blobs(lab, source, &out, img.blobs().iter().chain([&img.manifest]));
}

/// Every blob in `digests` is in `out`, hashes to its digest and equals the one in `source`.
fn check_blobs<'a>(
    lab: &Lab,
    source: &Layout,
    out: &Layout,
    digests: impl IntoIterator<Item = &'a String>,
) {
    for d in digests {
        let got = out.try_blob(d).unwrap_or_else(|e| lab.fail(&e));
        lab.check_eq(text(&got), text(&source.blob(d)), &format!("blob {d}"));
    }
}

/// skopeo: OCI layout in, inspect (parsed, `--raw`, `--config`), a registry-to-registry copy to
/// a second tag, list-tags, copy out to a new layout with identical digests, delete.
#[test]
fn skopeo_copies_in_inspects_lists_copies_out_and_deletes() {
    let lab = Lab::start();
    let layout = Layout::init(&lab, &lab.path("in"));
    let img = layout.add_image(
        &lab,
        "v1",
        "amd64",
        &[
            ("/etc/motd", "pushed by skopeo\n"),
            ("/data/two.txt", "a second layer\n"),
        ],
    );
    lab.check_eq(img.layers.len(), 2, "umoci made one layer per file");
    let repo = "team/skopeo";
    let v1 = lab.docker_ref(repo, "v1");
    let v2 = lab.docker_ref(repo, "v2");

    lab.run(lab.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &layout.reference("v1"),
        &v1,
    ]));
    lab.check_served(repo, "v1", &img.manifest, OCI_MANIFEST);

    let out = lab.run(lab.skopeo().args(["inspect", "--tls-verify=false", &v1]));
    let info = json(&lab, &out, "skopeo inspect");
    lab.check_eq(
        info["Digest"].as_str(),
        Some(img.manifest.as_str()),
        "inspect Digest",
    );
    lab.check_eq(
        strings(&info["Layers"]),
        img.layers.clone(),
        "inspect Layers",
    );
    lab.check_eq(
        strings(&info["RepoTags"]),
        vec!["v1".to_owned()],
        "inspect RepoTags",
    );
    lab.check_eq(
        info["Architecture"].as_str(),
        Some("amd64"),
        "inspect Architecture",
    );

    let raw = lab.run(
        lab.skopeo()
            .args(["inspect", "--raw", "--tls-verify=false", &v1]),
    );
    lab.check_eq(
        raw,
        text(&layout.blob(&img.manifest)),
        "inspect --raw must print the pushed manifest byte for byte",
    );
    let config =
        lab.run(
            lab.skopeo()
                .args(["inspect", "--raw", "--config", "--tls-verify=false", &v1]),
        );
    lab.check_eq(
        config,
        text(&layout.blob(&img.config)),
        "inspect --raw --config must print the pushed config blob",
    );

    // Registry to registry: skopeo reads from Berth and writes to it (blobs already present).
    lab.run(lab.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &v1,
        &v2,
    ]));
    lab.check_served(repo, "v2", &img.manifest, OCI_MANIFEST);
    let repo_ref = format!("docker://{}/{repo}", lab.berth.host);
    let tags = lab.run(
        lab.skopeo()
            .args(["list-tags", "--tls-verify=false", &repo_ref]),
    );
    let tags = json(&lab, &tags, "skopeo list-tags");
    let mut names = strings(&tags["Tags"]);
    names.sort();
    lab.check_eq(names, vec!["v1".to_owned(), "v2".to_owned()], "list-tags");

    let out_dir = lab.path("out");
    lab.run(lab.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &v1,
        &format!("oci:{}:v1", out_dir.display()),
    ]));
    check_copied_out(&lab, &layout, &out_dir, "v1", &img);

    // skopeo deletes by digest, which removes every tag of that manifest.
    lab.run(lab.skopeo().args(["delete", "--tls-verify=false", &v1]));
    for tag in ["v1", "v2"] {
        let gone = lab.run_failing(lab.skopeo().args([
            "inspect",
            "--tls-verify=false",
            &lab.docker_ref(repo, tag),
        ]));
        lab.check(
            gone.stderr.contains("manifest unknown"),
            &format!(
                "inspect of deleted {tag}: expected MANIFEST_UNKNOWN:\n{}",
                gone.stderr
            ),
        );
    }
    let (status, ..) = lab.get_manifest(repo, &img.manifest);
    lab.check_eq(status, 404, "GET of the deleted manifest by digest");
    let tags = lab.try_run(
        lab.skopeo()
            .args(["list-tags", "--tls-verify=false", &repo_ref]),
    );
    if tags.ok() {
        let tags = json(&lab, &tags.stdout, "skopeo list-tags after delete");
        lab.check_eq(
            strings(&tags["Tags"]),
            Vec::<String>::new(),
            "tags after delete",
        );
    } else {
        lab.check(
            tags.stderr.contains("name unknown"),
            &format!("list-tags after delete: {}", tags.stderr),
        );
    }
}

/// skopeo `--all`: an OCI layout whose tag is an image index over linux/amd64 and linux/arm64
/// goes in and comes out with the same index digest, each platform resolvable.
#[test]
fn skopeo_copies_a_multi_arch_index_with_all() {
    let lab = Lab::start();
    let layout = Layout::init(&lab, &lab.path("in"));
    let amd = layout.add_image(&lab, "amd64", "amd64", &[("/arch", "amd64\n")]);
    let arm = layout.add_image(&lab, "arm64", "arm64", &[("/arch", "arm64\n")]);
    let index = layout.add_index("multi", &[(&amd, "amd64"), (&arm, "arm64")]);
    let repo = "team/multi";
    let dest = lab.docker_ref(repo, "v1");

    lab.run(lab.skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &layout.reference("multi"),
        &dest,
    ]));
    lab.check_served(repo, "v1", &index, OCI_INDEX);
    lab.check_served(repo, &amd.manifest, &amd.manifest, OCI_MANIFEST);
    lab.check_served(repo, &arm.manifest, &arm.manifest, OCI_MANIFEST);

    let raw = lab.run(
        lab.skopeo()
            .args(["inspect", "--raw", "--tls-verify=false", &dest]),
    );
    lab.check_eq(
        raw,
        text(&layout.blob(&index)),
        "inspect --raw of the index",
    );
    for (arch, img) in [("amd64", &amd), ("arm64", &arm)] {
        let out = lab.run(lab.skopeo().args([
            "--override-arch",
            arch,
            "--override-os",
            "linux",
            "inspect",
            "--tls-verify=false",
            &dest,
        ]));
        let info = json(&lab, &out, "skopeo inspect");
        // skopeo reports the digest of what the tag names (the index) and the layers and
        // architecture of the instance it resolved for the platform.
        lab.check_eq(
            info["Digest"].as_str(),
            Some(index.as_str()),
            "inspect Digest of the index",
        );
        lab.check_eq(
            strings(&info["Layers"]),
            img.layers.clone(),
            &format!("layers of the {arch} instance"),
        );
        lab.check_eq(info["Architecture"].as_str(), Some(arch), "Architecture");
    }

    let out_dir = lab.path("out");
    lab.run(lab.skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:v1", out_dir.display()),
    ]));
    let out = Layout::open(&out_dir);
    let d = out.descriptor("v1");
    lab.check_eq(
        d["digest"].as_str(),
        Some(index.as_str()),
        "index digest copied out",
    );
    lab.check_eq(
        d["mediaType"].as_str(),
        Some(OCI_INDEX),
        "index media type copied out",
    );
    check_blobs(&lab, &layout, &out, [&index]);
    for img in [&amd, &arm] {
        let got = out.image_at(&img.manifest);
        lab.check_eq(&got.config, &img.config, "child config digest");
        lab.check_eq(&got.layers, &img.layers, "child layer digests");
        check_blobs(
            &lab,
            &layout,
            &out,
            img.blobs().iter().chain([&img.manifest]),
        );
    }
}

/// `buildah` and `podman` with an isolated vfs storage (no overlay mounts, no host storage).
fn containers_tool(lab: &Lab, program: &str) -> std::process::Command {
    let mut c = lab.cmd(program);
    c.arg("--root")
        .arg(lab.path("containers/root"))
        .arg("--runroot")
        .arg(lab.path("containers/run"))
        .args(["--storage-driver", "vfs"]);
    if program == "buildah" {
        // podman has no such flag; both take CONTAINERS_REGISTRIES_CONF from the lab.
        c.arg("--registries-conf-dir")
            .arg(lab.path("registries.conf.d"));
    }
    if program == "podman" {
        c.arg("--tmpdir")
            .arg(lab.path("containers/libpod-tmp"))
            .args(["--events-backend", "none"]);
    }
    c
}

/// buildah builds an image from scratch and pushes it (OCI); podman pushes it again as Docker
/// schema2; each is pulled back by podman into emptied storage: the manifest digest the push
/// reported, the committed image id, the file that was copied in.
#[test]
fn buildah_pushes_podman_pulls() {
    let lab = Lab::start();
    let buildah = || containers_tool(&lab, "buildah");
    let podman = || containers_tool(&lab, "podman");
    let policy = lab.path("policy.json");
    let content = "built by buildah, served by berth\n";
    let file = lab.path("hello.txt");
    fs::write(&file, content).unwrap();

    let container = last_line(&lab.run(buildah().args(["from", "scratch"])));
    lab.run(
        buildah()
            .arg("copy")
            .arg(&container)
            .arg(&file)
            .arg("/hello.txt"),
    );
    lab.run(buildah().args(["config", "--label", "org.example.test=berth", &container]));
    let id = last_line(&lab.run(buildah().args(["commit", &container, "localhost/berth-test:v1"])));
    lab.check(
        id.len() == 64,
        &format!("buildah commit printed no image id: {id:?}"),
    );

    let repo = "team/podman";
    let oci_digest = lab.path("oci.digest");
    let docker_digest = lab.path("docker.digest");
    lab.run(
        buildah()
            .arg("push")
            .arg("--signature-policy")
            .arg(&policy)
            .arg("--tls-verify=false")
            .arg("--digestfile")
            .arg(&oci_digest)
            .arg("localhost/berth-test:v1")
            .arg(lab.docker_ref(repo, "oci")),
    );
    lab.run(
        podman()
            .arg("push")
            .arg("--signature-policy")
            .arg(&policy)
            .arg("--tls-verify=false")
            .args(["--format", "v2s2"])
            .arg("--digestfile")
            .arg(&docker_digest)
            .arg("localhost/berth-test:v1")
            .arg(lab.docker_ref(repo, "docker")),
    );
    let oci_digest = fs::read_to_string(&oci_digest).unwrap().trim().to_owned();
    let docker_digest = fs::read_to_string(&docker_digest)
        .unwrap()
        .trim()
        .to_owned();
    lab.check_served(repo, "oci", &oci_digest, OCI_MANIFEST);
    lab.check_served(repo, "docker", &docker_digest, DOCKER_MANIFEST);

    lab.run(buildah().args(["rm", "--all"]));
    for (tag, digest) in [("oci", &oci_digest), ("docker", &docker_digest)] {
        // Both manifests share the config, so each pull starts from empty storage: the
        // image's Digest is then the one just pulled and every blob comes from Berth.
        lab.run(podman().args(["rmi", "--all", "--force"]));
        let left = lab.run(podman().args(["images", "--all", "--quiet"]));
        lab.check(
            left.trim().is_empty(),
            &format!("images left after rmi: {left}"),
        );
        let name = lab.image_ref(repo, tag);
        let pulled = last_line(
            &lab.run(
                podman()
                    .arg("pull")
                    .arg("--signature-policy")
                    .arg(&policy)
                    .arg("--tls-verify=false")
                    .arg(&name),
            ),
        );
        let info = lab.run(podman().args(["image", "inspect", &name]));
        let info = json(&lab, &info, "podman image inspect");
        lab.check_eq(
            info[0]["Digest"].as_str(),
            Some(digest.as_str()),
            &format!("pulled {tag}: Digest"),
        );
        lab.check(
            strings(&info[0]["RepoDigests"]).contains(&lab.image_ref(repo, digest)),
            &format!("pulled {tag}: RepoDigests {}", info[0]["RepoDigests"]),
        );
        // Converting to schema2 rewrites the manifest only: both carry the committed config,
        // whose digest is the image id.
        lab.check_eq(&pulled, &id, &format!("image id of the pulled {tag} image"));
        let root = last_line(&lab.run(podman().args(["image", "mount", &name])));
        let got = fs::read_to_string(Path::new(&root).join("hello.txt")).unwrap_or_default();
        lab.run(podman().args(["image", "unmount", &name]));
        lab.check_eq(
            got.as_str(),
            content,
            &format!("/hello.txt in the pulled {tag} image"),
        );
    }
}

/// A private dockerd: `docker load` of an archive made from an umoci layout, push (and a second
/// push to another repository, which Docker does by cross-repository mount), rmi, pull; the
/// digest Docker reports, Berth serves and `RepoDigests` shows are the same, and the image id
/// is the loaded config's digest.
#[test]
fn docker_loads_pushes_and_pulls() {
    let lab = Lab::start();
    let dockerd = Dockerd::start(&lab, &lab.path("docker"), "overlay2");
    let docker = || dockerd.docker(&lab);

    let layout = Layout::init(&lab, &lab.path("in"));
    let img = layout.add_image(
        &lab,
        "v1",
        "amd64",
        &[("/etc/motd", "pushed by docker\n"), ("/two", "layer two\n")],
    );
    let archive = lab.path("image.tar");
    lab.run(lab.skopeo().args([
        "copy",
        &layout.reference("v1"),
        &format!("docker-archive:{}:berth-test/local:v1", archive.display()),
    ]));
    let loaded = lab.run(docker().arg("load").arg("--input").arg(&archive));
    lab.check(
        loaded.contains("Loaded image: berth-test/local:v1"),
        &format!("docker load: {loaded}"),
    );
    let id = lab.run(docker().args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "berth-test/local:v1",
    ]));
    lab.check_eq(id.trim(), img.config.as_str(), "loaded image id");

    let repo = "team/docker";
    let name = lab.image_ref(repo, "v1");
    lab.run(docker().args(["tag", "berth-test/local:v1", &name]));
    let pushed = lab.run(docker().args(["push", &name]));
    let digest = pushed
        .split("digest: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| lab.fail(&format!("no digest in docker push output:\n{pushed}")))
        .to_owned();
    lab.check_served(repo, "v1", &digest, DOCKER_MANIFEST);
    let (_, _, _, body) = lab.get_manifest(repo, &digest);
    let manifest = json(&lab, &String::from_utf8_lossy(&body), "pushed manifest");
    lab.check_eq(
        manifest["config"]["digest"].as_str(),
        Some(img.config.as_str()),
        "config digest in Docker's manifest",
    );
    lab.check_eq(
        manifest["layers"].as_array().map(Vec::len),
        Some(img.layers.len()),
        "layers in Docker's manifest",
    );

    let other_repo = "other/docker";
    let other = lab.image_ref(other_repo, "v1");
    lab.run(docker().args(["tag", "berth-test/local:v1", &other]));
    let pushed = lab.run(docker().args(["push", &other]));
    lab.check(
        pushed.contains(&format!("Mounted from {repo}")),
        &format!("the second push should mount the layers from {repo}:\n{pushed}"),
    );
    lab.check_served(other_repo, "v1", &digest, DOCKER_MANIFEST);

    lab.run(docker().args(["rmi", &name, &other, "berth-test/local:v1"]));
    let left = lab.run(docker().args(["images", "--all", "--quiet"]));
    lab.check(
        left.trim().is_empty(),
        &format!("images left after rmi: {left}"),
    );

    let pulled = lab.run(docker().args(["pull", &name]));
    lab.check(
        pulled.contains(&format!("Digest: {digest}")),
        &format!("docker pull should report {digest}:\n{pulled}"),
    );
    let info = lab.run(docker().args(["image", "inspect", &name]));
    let info = json(&lab, &info, "docker image inspect");
    lab.check_eq(
        strings(&info[0]["RepoDigests"]),
        vec![lab.image_ref(repo, &digest)],
        "RepoDigests after pull",
    );
    lab.check_eq(
        info[0]["Id"].as_str(),
        Some(img.config.as_str()),
        "image id after pull",
    );
}

/// containerd's `ctr`: import an OCI archive, push with plain HTTP, remove it (with synchronous
/// garbage collection, so the content is really gone), pull it back: same manifest digest.
#[test]
fn ctr_imports_pushes_and_pulls() {
    let lab = Lab::start();
    let containerd = Containerd::start(&lab, &lab.path("containerd"));
    let ctr = || containerd.ctr(&lab);

    let layout = Layout::init(&lab, &lab.path("in"));
    let img = layout.add_image(
        &lab,
        "v1",
        "amd64",
        &[("/etc/motd", "pushed by ctr\n"), ("/two", "layer two\n")],
    );
    let archive = lab.path("image-oci.tar");
    lab.run(lab.skopeo().args([
        "copy",
        &layout.reference("v1"),
        &format!("oci-archive:{}:v1", archive.display()),
    ]));
    let repo = "team/ctr";
    let name = lab.image_ref(repo, "v1");
    lab.run(
        ctr()
            .args(["images", "import", "--base-name"])
            .arg(format!("{}/{repo}", lab.berth.host))
            .arg(&archive),
    );
    let image_digest = |lab: &Lab| -> Option<String> {
        // REF TYPE DIGEST SIZE PLATFORMS LABELS
        let ls = lab.run(ctr().args(["images", "ls"]));
        ls.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&name.as_str()))
            .and_then(|cols| cols.get(2).map(|d| (*d).to_owned()))
    };
    lab.check_eq(
        image_digest(&lab),
        Some(img.manifest.clone()),
        "imported image",
    );

    lab.run(ctr().args(["images", "push", "--plain-http", &name]));
    lab.check_served(repo, "v1", &img.manifest, OCI_MANIFEST);

    lab.run(ctr().args(["images", "rm", "--sync", &name]));
    lab.check_eq(image_digest(&lab), None, "image after rm");
    let content = lab.run(ctr().args(["content", "ls", "--quiet"]));
    for d in img.blobs().iter().chain([&img.manifest]) {
        lab.check(
            !content.contains(d.as_str()),
            &format!("{d} still in the content store after rm --sync:\n{content}"),
        );
    }

    lab.run(ctr().args(["images", "pull", "--plain-http", &name]));
    lab.check_eq(
        image_digest(&lab),
        Some(img.manifest.clone()),
        "pulled image",
    );
    let content = lab.run(ctr().args(["content", "ls", "--quiet"]));
    for d in img.blobs().iter().chain([&img.manifest]) {
        lab.check(
            content.contains(d.as_str()),
            &format!("{d} missing from the content store after pull:\n{content}"),
        );
    }
    let check = lab.run(ctr().args(["images", "check"]));
    let line = check
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_default();
    lab.check(
        line.contains("complete"),
        &format!("ctr images check after pull:\n{check}"),
    );
}

/// How a file is compared: blob data by its digest, anything else (links) by its text.
fn summary(rel: &str, content: &[u8]) -> String {
    if rel.ends_with("/data") {
        format!("data with digest {}", sha256(content))
    } else {
        String::from_utf8_lossy(content).into_owned()
    }
}

/// Every regular file under `root`, by path relative to it, with its [`summary`]; Berth's own
/// directory beside the layout (`.berth/`: its scratch space, which distribution never reads)
/// is left out.
fn files_under(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path == root.join(".berth") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let content = fs::read(&path).unwrap();
                out.insert(rel.clone(), summary(&rel, &content));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Each way `found` differs from `expected`, one line each.
fn differences(
    found: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, want) in expected {
        match found.get(path) {
            None => out.push(format!("missing: {path}")),
            Some(got) if got != want => {
                out.push(format!("wrong content: {path}: {got:?}, expected {want:?}"))
            }
            Some(_) => {}
        }
    }
    for path in found.keys().filter(|p| !expected.contains_key(*p)) {
        out.push(format!("unexpected file: {path}"));
    }
    out
}

/// After skopeo pushes two images to one tag (the tag moves), Berth's data directory holds
/// exactly distribution's layout: blob data under `blobs/sha256/<xx>/<hex>/data`, `_layers` and
/// `_manifests/revisions` links, the tag's `current` link and an `index` entry for every
/// manifest the tag has pointed at, every link `sha256:<hex>` with no newline — and nothing
/// else (no upload leftovers, no temporary files). Distribution 2.8 given the same pushes
/// writes the same files with the same bytes, which shows the expectation is its layout.
#[test]
fn pushed_files_are_exactly_distributions_layout() {
    let lab = Lab::start();
    let dist_dir = tempfile::tempdir().unwrap();
    let dist_root = dist_dir.path().join("data");
    let dist = Distribution::start(&dist_root);

    let layout = Layout::init(&lab, &lab.path("in"));
    let first = layout.add_image(
        &lab,
        "first",
        "amd64",
        &[
            ("/one", "first image, layer one\n"),
            ("/two", "first image, layer two\n"),
        ],
    );
    let second = layout.add_image(&lab, "second", "amd64", &[("/one", "second image\n")]);
    let repo = "lay/out";
    for host in [&lab.berth.host, &dist.host] {
        for tag in ["first", "second"] {
            lab.run(lab.skopeo().args([
                "copy",
                "--dest-tls-verify=false",
                &layout.reference(tag),
                &format!("docker://{host}/{repo}:v1"),
            ]));
        }
    }
    lab.check_served(repo, "v1", &second.manifest, OCI_MANIFEST);

    let link = |d: &str| d.to_owned();
    let v2 = "docker/registry/v2";
    let repo_dir = format!("{v2}/repositories/{repo}");
    let mut expected = BTreeMap::new();
    for img in [&first, &second] {
        for d in img.blobs().iter().chain([&img.manifest]) {
            let h = hex(d);
            let path = format!("{v2}/blobs/sha256/{}/{h}/data", &h[..2]);
            let content = summary(&path, &layout.blob(d));
            expected.insert(path, content);
        }
        for d in img.blobs() {
            expected.insert(
                format!("{repo_dir}/_layers/sha256/{}/link", hex(&d)),
                link(&d),
            );
        }
        let h = hex(&img.manifest);
        expected.insert(
            format!("{repo_dir}/_manifests/revisions/sha256/{h}/link"),
            link(&img.manifest),
        );
        expected.insert(
            format!("{repo_dir}/_manifests/tags/v1/index/sha256/{h}/link"),
            link(&img.manifest),
        );
    }
    expected.insert(
        format!("{repo_dir}/_manifests/tags/v1/current/link"),
        link(&second.manifest),
    );

    let berth_files = files_under(&lab.berth.root);
    let dist_files = files_under(&dist_root);
    let problems = differences(&berth_files, &expected);
    lab.check(
        problems.is_empty(),
        &format!(
            "Berth's data directory is not distribution's layout:\n{}",
            problems.join("\n")
        ),
    );
    // The expectation above is distribution's own layout, not a guess: 2.8 writes the same.
    let problems = differences(&dist_files, &expected);
    lab.check(
        problems.is_empty(),
        &format!(
            "distribution 2.8 wrote something else than expected:\n{}",
            problems.join("\n")
        ),
    );

    // Deleting the tagged manifest removes its revision link and the whole tag (history
    // included); blobs and layer links stay for garbage collection.
    for host in [&lab.berth.host, &dist.host] {
        lab.run(lab.skopeo().args([
            "delete",
            "--tls-verify=false",
            &format!("docker://{host}/{repo}@{}", second.manifest),
        ]));
    }
    expected.retain(|path, _| {
        !path.starts_with(&format!("{repo_dir}/_manifests/tags/v1/"))
            && !path.contains(&format!("/revisions/sha256/{}/", hex(&second.manifest)))
    });
    for (who, root) in [("Berth", &lab.berth.root), ("distribution 2.8", &dist_root)] {
        let problems = differences(&files_under(root), &expected);
        lab.check(
            problems.is_empty(),
            &format!(
                "after deleting {}, {who}'s files differ from the expected layout:\n{}",
                second.manifest,
                problems.join("\n")
            ),
        );
    }
}
