//! The `berth` binary as an operator meets it: defaults with no config, config file
//! discovery, environment overrides (including Kubernetes' stray `REGISTRY_*` variables),
//! `config check`, refusal of configured-but-unsupported security features, graceful stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};

fn berth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    // The machine may have /etc/docker/registry/config.yml (Debian's docker-registry has one).
    c.env_remove("BERTH_CONFIG")
        .env_remove("RUST_LOG")
        .env("BERTH_CONFIG_SEARCH_PATH", "/nonexistent/berth-test.yml");
    c
}

#[test]
fn no_config_uses_local_directory_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Port 5000 may be taken on a developer machine; the default is checked by `config check`,
    // serving is checked with an override of the address only.
    let mut child = berth()
        .arg("serve")
        .current_dir(dir.path())
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = String::new();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(a) = line.split("listening on http://").nth(1) {
            addr = Some(a.trim().to_owned());
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no listening line:\n{seen}"));
    let data = dir.path().join("berth-data");
    assert!(
        seen.contains(&data.display().to_string()),
        "the log must say where the data is:\n{seen}"
    );
    assert!(
        seen.contains("embedded default") || seen.contains("no configuration file"),
        "{seen}"
    );
    // It serves.
    let r = ureq::get(&format!("http://{addr}/v2/")).call().unwrap();
    assert_eq!(r.status(), 200);
    let _ = child.kill();
    let _ = child.wait();

    let out = berth()
        .args(["config", "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("127.0.0.1:5000"), "{text}");
    assert!(text.contains("berth-data"), "{text}");
}

#[test]
fn kubernetes_service_variables_are_ignored_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let cfg = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        root.path().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, cfg).unwrap();
    let out = berth()
        .args(["config", "check"])
        .arg(&path)
        .env("REGISTRY_AUTH_PORT", "tcp://10.0.0.1:443")
        .env("REGISTRY_AUTH_PORT_443_TCP_ADDR", "10.0.0.1")
        .env("REGISTRY_PORT", "tcp://10.0.0.5:5000")
        .env("REGISTRY_SERVICE_HOST", "10.0.0.5")
        .env("REGISTRY_AUTH_FILE", "/run/containers/auth.json")
        .env("REGISTRY_STORAGE_DELETE_ENABLED", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for var in [
        "REGISTRY_AUTH_PORT",
        "REGISTRY_PORT",
        "REGISTRY_SERVICE_HOST",
        "REGISTRY_AUTH_FILE",
    ] {
        assert!(text.contains(var), "no warning naming {var}:\n{text}");
    }
    assert!(
        !text.contains("10.0.0.1"),
        "values of ignored variables must not be echoed:\n{text}"
    );
    // A variable that names a real key applies.
    assert!(text.contains("enabled: true"), "{text}");
}

#[test]
fn unknown_key_fails_the_check_and_is_a_warning_for_serve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n    bogus: 1\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    );
    std::fs::write(&path, &yaml).unwrap();
    let out = berth()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains(":5:5:"), "{err}");
    // serve starts, as distribution does with a key it does not know, and warns with the line.
    let b = support::Berth::start_with_config(&yaml, &root);
    b.wait_log("the unknown-key warning", |l| {
        l.contains("WARN") && l.contains("storage.filesystem.bogus") && l.contains(":5:5:")
    });
}

/// A reader that stops early (`berth config check | head -1`) ends the command quietly: no
/// panic on the broken pipe.
#[test]
fn closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /tmp/x\nhttp:\n  addr: 127.0.0.1:0\n")
        .unwrap();
    let mut child = berth()
        .args(["config", "check"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command writes.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?} {err}", out.status);
}

#[test]
fn unreadable_htpasswd_file_refuses_to_start() {
    // A missing file starts with no account (as distribution starts; see
    // auth::htpasswd_file_missing_at_start); one that exists but cannot be read refuses.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::create_dir(&htpasswd).unwrap();
    std::fs::write(
        &path,
        format!(
            "version: 0.1\nstorage:\n  inmemory: {{}}\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  htpasswd:\n    realm: r\n    path: {}\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    let out = berth().arg("serve").arg(&path).output().unwrap();
    assert!(
        !out.status.success(),
        "must not serve without the auth the config asks for"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&htpasswd.display().to_string()));
}

#[test]
fn configured_tls_with_missing_files_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(
        &path,
        "version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n",
    )
    .unwrap();
    let out = berth().arg("serve").arg(&path).output().unwrap();
    assert!(
        !out.status.success(),
        "must not serve plain HTTP when TLS is asked for"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.tls.certificate: reading /c.pem"),
        "{err}"
    );
    // TLS is supported: `config check` (which reads no certificate) does not list it.
    let out = berth()
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not supported yet: http.tls"));
}

#[test]
fn config_file_search_order_uses_berth_config() {
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-env.yml");
    std::fs::write(
        &path,
        format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n", root.path().display()),
    )
    .unwrap();
    let out = berth()
        .args(["config", "check"])
        .env("BERTH_CONFIG", &path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("from-env.yml"), "{text}");
    assert!(text.contains(&root.path().display().to_string()), "{text}");
}

#[test]
fn sigterm_stops_gracefully() {
    let mut b = support::Berth::start();
    let r = ureq::get(&format!("{}/v2/", b.url)).call().unwrap();
    assert_eq!(r.status(), 200);
    let pid = b.pid();
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let code = b.wait();
    assert_eq!(code, Some(0), "exit code after SIGTERM; log:\n{}", b.log());
}

/// The documented examples stay valid: `config check` finds no problem in them.
#[test]
fn example_configs_check_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for f in ["config.example.yml", "deploy/config.yml"] {
        let out = berth()
            .args(["config", "check"])
            .arg(root.join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `berth keys generate` writes a private key (owner-only), its certificate and a JWKS whose
/// kid is the key's libtrust ID; `berth keys jwks` gives the same JWKS entry for the
/// certificate, and the certificate works as a rootcertbundle.
#[test]
fn keys_generate_and_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth()
        .args(["keys", "generate", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let libtrust = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("libtrust key ID:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no libtrust ID in: {text}"));
    assert_eq!(libtrust.split(':').count(), 12, "{libtrust}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("token.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key must be owner-only");
    }
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap())
            .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], libtrust.as_str());
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0]["x5c"].is_array());
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part in the JWKS"
    );
    // Generating again into the same place does not overwrite the key.
    let again = berth()
        .args(["keys", "generate", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());

    let out = berth()
        .args(["keys", "jwks"])
        .arg(dir.path().join("token.crt"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["keys"][0]["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(printed["keys"][0]["x"], jwks["keys"][0]["x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 7638 thumbprint"));
    // The JWKS and the certificate both load as trust for auth.token.
    let cfg = dir.path().join("config.yml");
    for trust in [
        format!("jwks: {}", dir.path().join("jwks.json").display()),
        format!("rootcertbundle: {}", dir.path().join("token.crt").display()),
    ] {
        std::fs::write(
            &cfg,
            format!("version: 0.1\nstorage:\n  inmemory: {{}}\nauth:\n  token:\n    realm: https://r\n    service: s\n    issuer: i\n    {trust}\n"),
        )
        .unwrap();
        let out = berth()
            .args(["token", "verify", "--config"])
            .arg(&cfg)
            .arg("not.a.token")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("token refused (malformed)") && text.contains(&libtrust),
            "{text}"
        );
    }
}

/// `storage.maintenance.readonly.enabled`: what was pushed before still pulls; every push,
/// mount and delete is `405 UNSUPPORTED` with a message naming the setting; nothing on disk
/// changes.
#[test]
fn read_only_mode_serves_pulls_and_refuses_writes() {
    use berth_conformance::client::{Body, Client};
    use berth_conformance::fixtures::{digest, Image};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let img = Image::oci("read-only", 2, "");
    let layer = digest(&img.layers[0]);
    {
        let b = support::Berth::start_on(&root, "");
        Client::new(&b.url, None)
            .push_image("ro/app", "v1", &img)
            .unwrap();
    }
    let before = listing(&root);
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    readonly:\n      enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    );
    let b = support::Berth::start_with_config(&yaml, &root);
    let c = Client::new(&b.url, None);

    let r = c.get("/v2/ro/app/manifests/v1", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, img.manifest);
    let r = c.get(&format!("/v2/ro/app/blobs/{layer}"), &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, img.layers[0]);
    assert_eq!(c.get("/v2/ro/app/tags/list", &[]).unwrap().status, 200);

    let refused: Vec<(&str, String, &[u8])> = vec![
        ("POST", "/v2/ro/app/blobs/uploads/".into(), b""),
        (
            "POST",
            format!("/v2/ro/other/blobs/uploads/?mount={layer}&from=ro/app"),
            b"",
        ),
        (
            "POST",
            format!("/v2/ro/app/blobs/uploads/?digest={}", digest(b"x")),
            b"x",
        ),
        ("PUT", "/v2/ro/app/manifests/v2".into(), &img.manifest),
        ("DELETE", "/v2/ro/app/manifests/v1".into(), b""),
        (
            "DELETE",
            format!("/v2/ro/app/manifests/{}", img.digest()),
            b"",
        ),
        ("DELETE", format!("/v2/ro/app/blobs/{layer}"), b""),
        (
            "PATCH",
            "/v2/ro/app/blobs/uploads/a3bb189e-8bf9-4888-9912-ace4e6543002".into(),
            b"abc",
        ),
    ];
    for (method, path, body) in refused {
        let r = c
            .send(
                method,
                &path,
                &[("Content-Type", img.media_type)],
                Body::Bytes(body),
            )
            .unwrap();
        assert_eq!(r.status, 405, "{method} {path}: {}", r.describe());
        assert_eq!(r.error_codes(), ["UNSUPPORTED"], "{method} {path}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.contains("read-only") && text.contains("storage.maintenance.readonly"),
            "{method} {path}: the message should say why: {text}"
        );
    }
    assert_eq!(listing(&root), before, "nothing may change on disk");
}

/// Every path under `root` with its size, sorted.
fn listing(root: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path().display().to_string(), m.len()));
        }
    }
    out.sort();
    out
}
