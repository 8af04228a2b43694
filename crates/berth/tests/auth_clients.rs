//! Real clients against Berth's token issuer with per-account ACLs: `docker login` (the OAuth2
//! password grant and its identity token) + push + pull, `podman login` + push + pull, skopeo
//! with credentials. Each account pushes only into its own namespace; anonymous clients pull
//! `public/*` and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/clients.rs"]
mod clients_support;
mod support;

use std::path::Path;

use clients_support::{Dockerd, Lab, Layout};
use support::Berth;

/// Berth with its issuer: alice and bob own their namespaces, admin everything; everyone pulls
/// `public/*`. Returns the Berth started in the lab directory.
fn berth_with_issuer(dir: &Path) -> Berth {
    let hash = |pw: &str| bcrypt::hash(pw, 4).unwrap();
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!(
            "alice:{}\nbob:{}\nadmin:{}\n",
            hash("alice-pw"),
            hash("bob-pw"),
            hash("admin-pw")
        ),
    )
    .unwrap();
    let yaml = format!(
        r#"auth:
  token:
    service: berth.test
    issuer: berth
  issuer:
    keydir: {keys}
    htpasswd: {htpasswd}
    acl:
      - {{ account: admin, name: "*", actions: ["*"] }}
      - {{ account: "*", name: "${{account}}/*", actions: ["*"] }}
      - {{ name: "public/*", actions: [pull] }}
"#,
        keys = dir.join("keys").display(),
        htpasswd = htpasswd.display()
    );
    Berth::start_on(&dir.join("data"), &yaml)
}

fn repo_exists(lab: &Lab, repo: &str) -> bool {
    lab.berth
        .root
        .join("docker/registry/v2/repositories")
        .join(repo)
        .exists()
}

#[test]
fn docker_login_push_pull_with_per_account_namespaces() {
    let lab = Lab::start_with(berth_with_issuer);
    let host = lab.berth.host.clone();
    let dockerd = Dockerd::start(&lab, &lab.path("docker"), "overlay2");
    let docker = || dockerd.docker(&lab);

    // An image to push (docker load of an archive made from a local layout).
    let layout = Layout::init(&lab, &lab.path("in"));
    layout.add_image(&lab, "v1", "amd64", &[("/etc/motd", "alice's image\n")]);
    dockerd.load(&lab, &layout, "v1", "local/img:v1");

    // Wrong password: refused.
    let out = lab.run_failing(docker().args(["login", &host, "-u", "alice", "-p", "not-it"]));
    lab.check(
        out.stderr.contains("unauthorized") || out.stderr.contains("401"),
        &format!("docker login with a wrong password: {}", out.stderr),
    );
    // Right password: docker asks for an identity token (OAuth2 password grant, offline) and
    // keeps it instead of the password.
    let out = lab.run(docker().args(["login", &host, "-u", "alice", "-p", "alice-pw"]));
    lab.check(
        out.contains("Login Succeeded"),
        &format!("docker login: {out}"),
    );
    let config = std::fs::read_to_string(lab.path("docker-config/config.json")).unwrap();
    lab.check(
        config.contains("identitytoken") && !config.contains("alice-pw"),
        &format!("docker should keep an identity token, not the password: {config}"),
    );

    // alice pushes into alice/*.
    let mine = lab.image_ref("alice/app", "v1");
    lab.run(docker().args(["tag", "local/img:v1", &mine]));
    let pushed = lab.run(docker().args(["push", &mine]));
    let digest = pushed
        .split("digest: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| lab.fail(&format!("no digest in docker push output:\n{pushed}")))
        .to_owned();
    // ... and not into bob/*: refused, and nothing of bob's repository exists.
    let theirs = lab.image_ref("bob/app", "v1");
    lab.run(docker().args(["tag", "local/img:v1", &theirs]));
    let out = lab.run_failing(docker().args(["push", &theirs]));
    lab.check(
        out.stderr.contains("denied")
            || out.stderr.contains("unauthorized")
            || out.stdout.contains("denied"),
        &format!("push into bob/app: {}{}", out.stdout, out.stderr),
    );
    lab.check(!repo_exists(&lab, "bob/app"), "bob/app must not exist");
    // admin may push anywhere: a public image for everyone.
    lab.run(docker().args(["logout", &host]));
    lab.run(docker().args(["login", &host, "-u", "admin", "-p", "admin-pw"]));
    let public = lab.image_ref("public/base", "latest");
    lab.run(docker().args(["tag", "local/img:v1", &public]));
    lab.run(docker().args(["push", &public]));
    lab.run(docker().args(["logout", &host]));

    // Anonymous: pulls public/*, but not alice's image.
    lab.run(docker().args(["rmi", &mine, &theirs, &public, "local/img:v1"]));
    let pulled = lab.run(docker().args(["pull", &public]));
    lab.check(
        pulled.contains(&format!("Digest: {digest}")),
        &format!("anonymous pull of public/base: {pulled}"),
    );
    let out = lab.run_failing(docker().args(["pull", &mine]));
    lab.check(
        out.stderr.contains("denied") || out.stderr.contains("unauthorized"),
        &format!("anonymous pull of alice/app: {}", out.stderr),
    );
    // Logged in again as alice (the refresh-token grant this time), the pull works.
    lab.run(docker().args(["login", &host, "-u", "alice", "-p", "alice-pw"]));
    let pulled = lab.run(docker().args(["pull", &mine]));
    lab.check(
        pulled.contains(&format!("Digest: {digest}")),
        &format!("alice pulls her image: {pulled}"),
    );
    let log = lab.berth.log();
    lab.check(
        log.contains("grant") || log.contains("token issued"),
        "the issuer logged the tokens it issued",
    );
    lab.check(
        !log.contains("alice-pw") && !log.contains("admin-pw"),
        "a password reached Berth's log",
    );
}

#[test]
fn podman_and_skopeo_login_push_pull() {
    let lab = Lab::start_with(berth_with_issuer);
    let host = lab.berth.host.clone();
    let layout = Layout::init(&lab, &lab.path("in"));
    let img = layout.add_image(&lab, "v1", "amd64", &[("/hello", "bob's image\n")]);

    // skopeo with credentials: bob pushes to bob/app; into alice/app he is refused.
    lab.run(&mut lab.skopeo_push(
        "bob:bob-pw",
        &layout.reference("v1"),
        &lab.docker_ref("bob/app", "v1"),
    ));
    let served = lab.run(
        lab.skopeo_inspect("bob:bob-pw", &lab.docker_ref("bob/app", "v1"))
            .args(["--format", "{{.Digest}}"]),
    );
    lab.check_eq(
        served.trim(),
        img.manifest.as_str(),
        "digest Berth serves for bob/app:v1",
    );
    let out = lab.run_failing(&mut lab.skopeo_push(
        "bob:bob-pw",
        &layout.reference("v1"),
        &lab.docker_ref("alice/app", "v1"),
    ));
    lab.check(
        out.stderr.contains("denied") || out.stderr.contains("unauthorized"),
        &format!("skopeo push into alice/app: {}", out.stderr),
    );
    lab.check(!repo_exists(&lab, "alice/app"), "alice/app must not exist");

    // podman login, then pull bob's image back.
    let out = lab.run_failing(lab.cmd("podman").args([
        "login",
        "--tls-verify=false",
        "-u",
        "bob",
        "-p",
        "wrong",
        &host,
    ]));
    lab.check(
        out.code.is_some(),
        "podman login with a wrong password fails",
    );
    let out = lab.run(lab.cmd("podman").args([
        "login",
        "--tls-verify=false",
        "-u",
        "bob",
        "-p",
        "bob-pw",
        &host,
    ]));
    lab.check(
        out.contains("Login Succeeded"),
        &format!("podman login: {out}"),
    );
    let pulled = lab.run(lab.cmd("podman").args([
        "pull",
        "--tls-verify=false",
        &lab.image_ref("bob/app", "v1"),
    ]));
    lab.check(
        !pulled.trim().is_empty(),
        "podman pull printed the image id",
    );
    let digest = lab.run(lab.cmd("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &lab.image_ref("bob/app", "v1"),
    ]));
    lab.check_eq(
        digest.trim(),
        img.manifest.as_str(),
        "podman's digest of the pulled image",
    );
    // podman push into another namespace: refused.
    let other = lab.image_ref("alice/stolen", "v1");
    lab.run(
        lab.cmd("podman")
            .args(["tag", &lab.image_ref("bob/app", "v1"), &other]),
    );
    let out = lab.run_failing(
        lab.cmd("podman")
            .args(["push", "--tls-verify=false", &other]),
    );
    lab.check(out.code.is_some(), "podman push into alice/stolen fails");
    lab.check(
        !repo_exists(&lab, "alice/stolen"),
        "alice/stolen must not exist",
    );
    lab.run(lab.cmd("podman").args(["logout", &host]));

    // Anonymous skopeo: public is readable, bob's is not.
    lab.run(&mut lab.skopeo_push(
        "admin:admin-pw",
        &layout.reference("v1"),
        &lab.docker_ref("public/tools", "v1"),
    ));
    let info = lab.run(lab.skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &lab.docker_ref("public/tools", "v1"),
    ]));
    lab.check(
        info.contains("schemaVersion"),
        "anonymous inspect of public/tools",
    );
    let out = lab.run_failing(lab.skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &lab.docker_ref("bob/app", "v1"),
    ]));
    lab.check(
        out.stderr.contains("unauthorized") || out.stderr.contains("denied"),
        &format!("anonymous inspect of bob/app: {}", out.stderr),
    );
}
