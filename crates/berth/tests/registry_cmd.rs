//! The binary under distribution's command name: a `registry` symlink to it (as the container
//! image and the release archive provide) takes distribution's command line. `registry serve
//! CONFIG` serves; `registry garbage-collect [-d] [-m] [-q] CONFIG` collects, online (nothing
//! young is deleted) while the storage is writable and offline, deleting exactly what Debian's
//! distribution 2.8 `garbage-collect` finds, when the configuration makes it read-only;
//! `registry --version`, `-v` and `help` answer as distribution's do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_conformance::client::Client;
use berth_conformance::fixtures::{bytes, digest, Image};

/// A directory holding `registry`, a symlink to the binary under test.
fn registry_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("registry");
    std::os::unix::fs::symlink(support::bin(), &link).unwrap();
    (dir, link)
}

/// Runs `registry ARGS` found on PATH (as `docker exec <c> registry ...` and cron do).
fn registry(dir: &Path, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("registry");
    cmd.args(args).env("PATH", path).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") || k.starts_with("BERTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn config(root: &Path, read_only: bool) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    readonly:\n      enabled: {read_only}\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    )
}

fn blob_path(root: &Path, d: &str) -> PathBuf {
    let hex = d.strip_prefix("sha256:").unwrap();
    root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
}

/// Every blob distribution 2.8's collector finds eligible, from its dry run.
fn distribution_eligible(cfg: &Path) -> BTreeSet<String> {
    let out = support::distribution_gc_config(cfg, &["--dry-run", "--delete-untagged"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("blob eligible for deletion: "))
        .map(|d| d.trim().to_owned())
        .collect()
}

#[test]
fn version_and_help_answer_as_distributions() {
    let (dir, _link) = registry_dir();
    for flag in ["--version", "-v"] {
        let out = registry(dir.path(), &[flag]);
        assert!(out.status.success());
        let line = text(&out.stdout);
        assert!(line.starts_with("registry "), "{line}");
        assert!(line.contains(env!("CARGO_PKG_VERSION")), "{line}");
    }
    let help = registry(dir.path(), &["help"]);
    assert!(help.status.success());
    let help = text(&help.stdout);
    assert!(
        help.contains("serve") && help.contains("garbage-collect"),
        "{help}"
    );
    // No command: the usage, and success.
    let bare = registry(dir.path(), &[]);
    assert!(bare.status.success() && text(&bare.stdout).contains("garbage-collect"));
    // Berth's own subcommands and flags are not part of this command line.
    assert!(!registry(dir.path(), &["config", "check"]).status.success());
    assert!(
        !registry(dir.path(), &["garbage-collect", "--offline", "/c.yml"])
            .status
            .success()
    );
}

#[test]
fn serve_and_garbage_collect_as_distribution_cron_jobs_run_them() {
    let (dir, link) = registry_dir();
    let data = tempfile::tempdir().unwrap();
    let root = data.path().join("registry");
    let cfg_dir = tempfile::tempdir().unwrap();
    let writable = cfg_dir.path().join("config.yml");
    let read_only = cfg_dir.path().join("config-readonly.yml");
    std::fs::write(&writable, config(&root, false)).unwrap();
    std::fs::write(&read_only, config(&root, true)).unwrap();

    // `registry serve CONFIG`, and real data: a tag that moved (its first manifest is now
    // untagged) and a blob no manifest names.
    let server = berth_testkit::Berth::start_with_config(&link, &config(&root, false), &root);
    let c = Client::new(&server.url, None);
    let old = Image::oci("registry-cmd-old", 2, "");
    let new = Image::oci("registry-cmd-new", 1, "");
    let kept = Image::oci("registry-cmd-kept", 1, "");
    c.push_image("team/app", "latest", &old).unwrap();
    c.push_image("team/app", "latest", &new).unwrap();
    c.push_image("team/other", "v1", &kept).unwrap();
    let stray = bytes("registry-cmd-stray", 4321);
    c.push_blob("team/app", &stray).unwrap();

    // While it serves, the cron job's command is safe: online, everything young is kept.
    let out = registry(
        dir.path(),
        &["garbage-collect", "-m", writable.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("online"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    assert!(blob_path(&root, &old.digest()).exists());
    assert!(blob_path(&root, &digest(&stray)).exists());
    drop(server);

    // Storage read-only (distribution's documented set-up for its collector): offline.
    // Quiet dry run: no output at all, nothing deleted.
    let ro = read_only.to_str().unwrap();
    let out = registry(dir.path(), &["garbage-collect", "-d", "-m", "-q", ro]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        (String::new(), String::new())
    );
    assert!(blob_path(&root, &digest(&stray)).exists());

    // The dry run lists what distribution 2.8's own collector finds eligible, blob for blob.
    let expected = distribution_eligible(&read_only);
    let mut want: BTreeSet<String> = old.blobs().map(|b| digest(b)).collect();
    want.insert(old.digest());
    want.insert(digest(&stray));
    for shared in new.blobs().chain(kept.blobs()) {
        want.remove(&digest(shared));
    }
    assert_eq!(expected, want, "distribution's view of the data");
    let out = registry(dir.path(), &["garbage-collect", "--dry-run", "-m", ro]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: BTreeSet<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("would delete blob "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(listed, expected, "{}", text(&out.stdout));

    // The real run deletes them, quietly; `-dmq`-style spelling as cobra takes it.
    let out = registry(dir.path(), &["garbage-collect", ro, "-mq"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty());
    for d in &expected {
        assert!(!blob_path(&root, d).exists(), "{d} still stored");
    }
    assert!(distribution_eligible(&read_only).is_empty());

    // `registry serve` again: what is tagged is served whole.
    let server = berth_testkit::Berth::start_with_config(&link, &config(&root, false), &root);
    let c = Client::new(&server.url, None);
    for (repo, tag, img) in [("team/app", "latest", &new), ("team/other", "v1", &kept)] {
        support::pull_checked(&c, repo, tag, img);
    }
    let r = c
        .head(&format!("/v2/team/app/manifests/{}", old.digest()))
        .unwrap();
    assert_eq!(r.status, 404);
}

/// The image's entrypoint is `registry` with the config path as its command, as
/// distribution's image: a YAML path alone serves it.
#[test]
fn a_config_path_alone_serves_it_as_distributions_image_does() {
    use std::io::{BufRead, BufReader};
    let (dir, link) = registry_dir();
    let data = tempfile::tempdir().unwrap();
    let cfg = data.path().join("config.yml");
    std::fs::write(&cfg, config(&data.path().join("registry"), false)).unwrap();
    let mut child = Command::new(&link)
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let url = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|u| u.split_whitespace().next().unwrap_or("").to_owned())
        });
    let status = url.as_ref().map(|u| {
        Client::new(u, None)
            .get("/v2/", &[])
            .map(|r| r.status)
            .unwrap_or(0)
    });
    let _ = child.kill();
    let _ = child.wait();
    drop(dir);
    assert_eq!(status, Some(200), "registry CONFIG did not serve");
}

/// `berth garbage-collect -q`: Berth's own command takes distribution's quiet flag too.
#[test]
fn berth_garbage_collect_quiet() {
    let data = tempfile::tempdir().unwrap();
    let root = data.path().join("registry");
    let cfg = data.path().join("config.yml");
    std::fs::write(&cfg, config(&root, false)).unwrap();
    let server = support::Berth::start_on(&root, "");
    let c = Client::new(&server.url, None);
    c.push_blob("solo/app", &bytes("quiet-stray", 999)).unwrap();
    drop(server);
    let run = |args: &[&str]| {
        let out = Command::new(support::bin())
            .arg("garbage-collect")
            .args(args)
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    let (stdout, stderr) = run(&["--offline", "-d"]);
    assert!(stdout.contains("would delete blob"), "{stdout}");
    assert!(!stderr.is_empty());
    assert_eq!(run(&["--offline", "-q"]), (String::new(), String::new()));
    assert!(run(&["--offline", "-d"]).0.is_empty(), "deleted already");
}
