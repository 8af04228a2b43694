//! distribution features that only a few deployments use, each through `berth serve` and,
//! where distribution 2.8 has the feature, against Debian's `docker-registry` with the same
//! configuration: `auth.silly` (the development access controller), `policy.repository.classes`
//! (manifest classes) and `proxy.exec` (upstream credentials from a credential helper).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_auth::keys::Alg;
use berth_auth::signer::{generate, Signer};
use berth_conformance::client::{Body, Client, Resp};
use berth_conformance::fixtures::{
    bytes, descriptor, digest, index, Image, DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX,
};
use serde_json::json;
use support::{Berth, Distribution};

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{password}")
        )
    )
}

/// Status, error codes and challenge of one response, for comparing two registries.
fn outcome(r: &Resp) -> (u16, Vec<String>, Option<String>) {
    (
        r.status,
        r.error_codes(),
        r.header("www-authenticate").map(str::to_owned),
    )
}

const SILLY: &str =
    "auth:\n  silly:\n    realm: https://auth.example.com/token\n    service: silly-service\n";

#[test]
fn silly_auth_challenges_and_admits_as_distribution_does() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_on(&dir.path().join("berth"), SILLY);
    assert!(
        berth
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("auth.silly")),
        "no start-up warning about auth.silly:\n{}",
        berth.log()
    );
    let dist = Distribution::start_with_extra(&dir.path().join("dist"), SILLY);
    let d = digest(b"x");
    let requests: Vec<(&str, String)> = vec![
        ("GET", "/v2/".into()),
        ("GET", "/v2/_catalog".into()),
        ("GET", "/v2/team/app/tags/list".into()),
        ("GET", "/v2/team/app/manifests/latest".into()),
        ("HEAD", format!("/v2/team/app/blobs/{d}")),
        ("PUT", "/v2/team/app/manifests/latest".into()),
        ("DELETE", format!("/v2/team/app/manifests/{d}")),
        ("POST", "/v2/team/app/blobs/uploads/".into()),
    ];
    // Without an Authorization header: the same 401 and the same challenge.
    let (b, o) = (Client::new(&berth.url, None), Client::new(&dist.url, None));
    for (method, path) in &requests {
        let body = || {
            if *method == "PUT" || *method == "POST" {
                Body::Bytes(b"")
            } else {
                Body::None
            }
        };
        let rb = b.send(method, path, &[], body()).unwrap();
        let ro = o.send(method, path, &[], body()).unwrap();
        assert_eq!(rb.status, 401, "{}", rb.describe());
        assert_eq!(outcome(&rb), outcome(&ro), "{method} {path}");
    }
    // Any Authorization header is admitted, by both: a whole push and pull.
    let img = Image::docker("silly");
    for (name, url) in [("berth", &berth.url), ("distribution", &dist.url)] {
        let c = Client::new(url, Some("Bearer not-even-a-token".into()));
        assert_eq!(c.get("/v2/", &[]).unwrap().status, 200, "{name}");
        c.push_image("team/app", "1", &img).unwrap();
        let r = c.get("/v2/team/app/manifests/1", &[]).unwrap();
        assert_eq!((r.status, &r.body), (200, &img.manifest), "{name}");
        let r = Client::new(url, Some("Basic Og==".into()))
            .get("/v2/team/app/tags/list", &[])
            .unwrap();
        assert_eq!(r.status, 200, "{name}: {}", r.describe());
    }
}

/// A Docker manifest whose config is a Docker plugin's.
fn plugin() -> Image {
    let config = br#"{"description":"a plugin","interface":{"types":["docker.volumedriver/1.0"]}}"#;
    let layer = bytes("plugin-rootfs", 700);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor("application/vnd.docker.plugin.v1+json", config),
        descriptor(DOCKER_LAYER, &layer)
    );
    Image {
        config: config.to_vec(),
        layers: vec![layer],
        manifest: manifest.into_bytes(),
        media_type: DOCKER_MANIFEST,
    }
}

/// Pushes the blobs, then the manifest, returning the manifest PUT's answer.
fn push(c: &Client, repo: &str, tag: &str, img: &Image) -> Resp {
    for b in img.blobs() {
        c.push_blob(repo, b).unwrap();
    }
    c.put_manifest(repo, tag, img.media_type, &img.manifest)
        .unwrap()
}

fn message(r: &Resp) -> String {
    r.json().unwrap()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn repository_classes_admit_what_distribution_admits() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "policy:\n  repository:\n    classes:\n      - image\n";
    let berth = Berth::start_on(&dir.path().join("berth"), policy);
    let dist = Distribution::start_with_extra(&dir.path().join("dist"), policy);
    let docker = Image::docker("classes");
    let oci = Image::oci("classes", 1, "");
    let artifact = Image::artifact("classes", "application/vnd.example.sbom", None);
    let cases: Vec<(&str, Image, u16, &str)> = vec![
        ("docker-image", docker.clone(), 201, ""),
        ("oci-image", oci.clone(), 201, ""),
        (
            "plugin",
            plugin(),
            403,
            "registry does not allow plugin manifest",
        ),
        (
            "artifact",
            artifact,
            403,
            "unknown manifest class for application/vnd.oci.empty.v1+json",
        ),
    ];
    for (name, url) in [("berth", &berth.url), ("distribution", &dist.url)] {
        let c = Client::new(url, None);
        for (tag, img, status, msg) in &cases {
            let r = push(&c, "team/app", tag, img);
            assert_eq!(r.status, *status, "{name} {tag}: {}", r.describe());
            if *status == 403 {
                assert_eq!(r.error_codes(), vec!["DENIED".to_owned()], "{name} {tag}");
                assert_eq!(message(&r), *msg, "{name} {tag}");
                let r = c
                    .get(&format!("/v2/team/app/manifests/{tag}"), &[])
                    .unwrap();
                assert_eq!(r.status, 404, "{name} {tag}: stored anyway");
            }
        }
        // An index has no class: admitted.
        let list = index(OCI_INDEX, &[(&oci, "amd64")], "");
        let r = c
            .put_manifest("team/app", "index", OCI_INDEX, &list)
            .unwrap();
        assert_eq!(r.status, 201, "{name} index: {}", r.describe());
    }

    // Without classes, a plugin is an ordinary push.
    let open = Berth::start_on(&dir.path().join("open"), "");
    let r = push(
        &Client::new(&open.url, None),
        "team/app",
        "plugin",
        &plugin(),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
}

const SERVICE: &str = "classes.test";
const ISSUER: &str = "classes-issuer";

#[test]
fn a_token_names_the_class_a_repository_is_pushed_in() {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(Alg::ES256, "issuer", 30).unwrap();
    std::fs::write(dir.path().join("bundle.pem"), &g.cert_pem).unwrap();
    let signer = Signer::from_pem(&g.key_pem, Some(&g.cert_pem)).unwrap();
    let yaml = format!(
        "auth:\n  token:\n    realm: https://auth.example.com/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\npolicy:\n  repository:\n    classes: [image, plugin]\n",
        dir.path().join("bundle.pem").display()
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = |class: Option<&str>| {
        let mut access =
            json!({"type": "repository", "name": "team/app", "actions": ["pull", "push"]});
        if let Some(c) = class {
            access["class"] = json!(c);
        }
        signer
            .sign(&json!({
                "iss": ISSUER, "sub": "pusher", "aud": SERVICE, "exp": now + 300,
                "nbf": now - 5, "iat": now, "jti": format!("{class:?}"),
                "access": [access],
            }))
            .unwrap()
    };
    let client = |class| Client::new(&berth.url, Some(format!("Bearer {}", token(class))));
    let plugin = plugin();
    let image = Image::docker("token-classes");
    // No class in the token is `image`: a plugin is refused, an image admitted.
    let r = push(&client(None), "team/app", "p", &plugin);
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(message(&r), "repository not authorized for plugin manifest");
    assert_eq!(push(&client(None), "team/app", "i", &image).status, 201);
    // `repository(plugin):team/app:push`: a plugin, not an image.
    let r = push(&client(Some("plugin")), "team/app", "p", &plugin);
    assert_eq!(r.status, 201, "{}", r.describe());
    let r = push(&client(Some("plugin")), "team/app", "i2", &image);
    assert_eq!(message(&r), "repository not authorized for image manifest");
}

/// An upstream Berth with htpasswd: `admin` (pushes) and `puller`.
fn htpasswd_upstream(dir: &Path) -> Berth {
    let file = dir.join("htpasswd");
    std::fs::write(
        &file,
        format!(
            "admin:{}\npuller:{}\n",
            bcrypt::hash("admin-pw", 4).unwrap(),
            bcrypt::hash("pull-pw", 4).unwrap()
        ),
    )
    .unwrap();
    let yaml = format!(
        "auth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
        file.display()
    );
    Berth::start_on(&dir.join("up"), &yaml)
}

/// A credential helper (Docker's protocol) that records each run's stdin in `runs` and
/// answers `puller` with the secret read from `secret` at that moment.
fn helper(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(format!("{name}.sh"));
    let runs = dir.join(format!("{name}.runs"));
    let secret = dir.join(format!("{name}.secret"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nhost=$(cat)\necho \"$host\" >> {runs}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"puller\",\"Secret\":\"%s\"}}\\n' \"$host\" \"$(cat {secret})\"\n",
            runs = runs.display(),
            secret = secret.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&secret, "pull-pw").unwrap();
    (script, secret)
}

fn runs(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.runs")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A distribution-style mirror of `up` whose credentials come from `script`.
fn exec_mirror(dir: &Path, name: &str, up: &Berth, script: &Path, extra: &str) -> Berth {
    let yaml = format!(
        "proxy:\n  remoteurl: {}\n  spooldir: {}\n  exec:\n    command: {}\n{extra}",
        up.url,
        dir.join(format!("{name}-spool")).display(),
        script.display()
    );
    Berth::start_on(&dir.join(name), &yaml)
}

/// Pulls `repo:tag` (manifest and every blob) through `m`; the first failing status, or 200.
fn pull(m: &Berth, repo: &str, tag: &str, img: &Image) -> u16 {
    let c = Client::new(&m.url, None);
    let r = c.get(&format!("/v2/{repo}/manifests/{tag}"), &[]).unwrap();
    if r.status != 200 {
        return r.status;
    }
    assert_eq!(r.body, img.manifest);
    for b in img.blobs() {
        let r = c
            .get(&format!("/v2/{repo}/blobs/{}", digest(b)), &[])
            .unwrap();
        if r.status != 200 {
            return r.status;
        }
        assert!(&r.body == b);
    }
    200
}

#[test]
fn proxy_exec_credentials_come_from_the_helper_per_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let up = htpasswd_upstream(d);
    let admin = Client::new(&up.url, Some(basic("admin", "admin-pw")));
    let images: Vec<Image> = (0..4)
        .map(|i| Image::oci(&format!("exec-{i}"), 1, ""))
        .collect();
    for (i, img) in images.iter().enumerate() {
        admin.push_image("team/app", &format!("v{i}"), img).unwrap();
    }

    // No lifetime: the helper runs once, with the upstream's host on stdin.
    let (once, _) = helper(d, "once");
    let m = exec_mirror(d, "m-once", &up, &once, "");
    assert_eq!(pull(&m, "team/app", "v0", &images[0]), 200, "{}", m.log());
    assert_eq!(pull(&m, "team/app", "v1", &images[1]), 200);
    assert_eq!(runs(d, "once"), vec![up.host.clone()]);

    // lifetime 0: a run for every use of the credentials.
    let (every, _) = helper(d, "every");
    let m0 = exec_mirror(d, "m-every", &up, &every, "    lifetime: 0\n");
    assert_eq!(pull(&m0, "team/app", "v0", &images[0]), 200, "{}", m0.log());
    let first = runs(d, "every").len();
    assert!(first >= 2, "one pull used the credentials {first} times");
    assert_eq!(pull(&m0, "team/app", "v1", &images[1]), 200);
    assert!(runs(d, "every").len() >= first + 2);

    // lifetime 3s: reused within it, asked again after it.
    let (timed, _) = helper(d, "timed");
    let mt = exec_mirror(d, "m-timed", &up, &timed, "    lifetime: 3s\n");
    let started = Instant::now();
    assert_eq!(pull(&mt, "team/app", "v0", &images[0]), 200, "{}", mt.log());
    assert_eq!(pull(&mt, "team/app", "v1", &images[1]), 200);
    if started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(runs(d, "timed").len(), 1, "ran again within its lifetime");
    }
    // The lifetime is time passing: wait it out.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    assert_eq!(pull(&mt, "team/app", "v2", &images[2]), 200);
    assert_eq!(runs(d, "timed").len(), 2);
}

#[test]
fn proxy_exec_replaces_the_configured_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let up = htpasswd_upstream(d);
    let img = Image::oci("exec-replace", 1, "");
    Client::new(&up.url, Some(basic("admin", "admin-pw")))
        .push_image("team/app", "1", &img)
        .unwrap();
    // The right password in the file, a wrong one from the helper: the helper's is used.
    let (script, secret) = helper(d, "wrong");
    std::fs::write(&secret, "not-the-password").unwrap();
    let m = exec_mirror(
        d,
        "m-wrong",
        &up,
        &script,
        "  username: puller\n  password: pull-pw\n",
    );
    assert!(m.log().contains("proxy: username/password are not used"));
    assert_ne!(pull(&m, "team/app", "1", &img), 200);
    assert!(!runs(d, "wrong").is_empty());
    // Credentials, once given, are kept (no lifetime); with lifetime 0 the corrected
    // answer is asked for and used.
    std::fs::write(&secret, "pull-pw").unwrap();
    let m0 = exec_mirror(d, "m-fixed", &up, &script, "    lifetime: 0\n");
    assert_eq!(pull(&m0, "team/app", "1", &img), 200, "{}", m0.log());

    // A helper that fails: logged, and the upstream is asked anonymously (and refuses).
    let failing = d.join("failing.sh");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mf = exec_mirror(d, "m-failing", &up, &failing, "");
    assert_ne!(pull(&mf, "team/app", "1", &img), 200);
    mf.wait_log("the helper's failure", |l| {
        l.contains("credential helper gave no credentials") && l.contains("native keychain")
    });
}

#[test]
fn proxy_exec_works_for_each_of_berths_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let up = htpasswd_upstream(d);
    let img = Image::oci("exec-upstreams", 1, "");
    Client::new(&up.url, Some(basic("admin", "admin-pw")))
        .push_image("team/app", "1", &img)
        .unwrap();
    let (script, _) = helper(d, "named");
    let yaml = format!(
        "proxy:\n  spooldir: {}\n  upstreams:\n    - name: up.test\n      remoteurl: {}\n      exec:\n        command: {}\n",
        d.join("spool").display(),
        up.url,
        script.display()
    );
    let m = Berth::start_on(&d.join("mirror"), &yaml);
    assert_eq!(pull(&m, "up.test/team/app", "1", &img), 200, "{}", m.log());
    assert_eq!(runs(d, "named"), vec![up.host.clone()]);
    // A hosted name is not the upstream's: nothing is asked of the helper for it.
    let r = Client::new(&m.url, None)
        .get("/v2/team/app/manifests/1", &[])
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(runs(d, "named").len(), 1);
}
