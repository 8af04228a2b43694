//! Access control through a real `berth serve`: Berth's issuer with per-account ACLs, every
//! way a token is refused (401, one WARN line, nothing written), htpasswd, a JWKS URL whose
//! keys rotate, `berth token verify`, and distribution 2.8 trusting Berth's tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use berth_auth::keys::Alg;
use berth_auth::signer::{generate, Signer};
use berth_conformance::client::{Body, Client, Resp};
use berth_conformance::fixtures::{expect_status, Image, OCI_MANIFEST};
use serde_json::{json, Value};
use support::{basic, get_token, now, Berth, Distribution, SERVICE};

const ISSUER: &str = "berth-issuer";

fn hash(pw: &str) -> String {
    bcrypt::hash(pw, 4).unwrap()
}

fn bearer(url: &str, token: &str) -> Client {
    Client::new(url, Some(format!("Bearer {token}")))
}

fn token_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.describe());
    r.json().unwrap()["token"].as_str().unwrap().to_owned()
}

fn repo_exists(root: &Path, repo: &str) -> bool {
    root.join("docker/registry/v2/repositories")
        .join(repo)
        .exists()
}

fn challenge(r: &Resp) -> String {
    r.header("www-authenticate").unwrap_or("").to_owned()
}

/// Berth with its issuer: alice and bob own their namespaces, admin owns everything and the
/// catalog, everyone pulls `public/*`. Metrics on a debug listener.
fn issuer_berth(dir: &Path) -> Berth {
    let keydir = dir.join("keys");
    let yaml = format!(
        r#"  debug:
    addr: 127.0.0.1:0
    prometheus:
      enabled: true
auth:
  token:
    service: {SERVICE}
    issuer: {ISSUER}
  issuer:
    keydir: {keydir}
    users:
      alice: "{alice}"
      bob: "{bob}"
      admin: "{admin}"
    acl:
      - account: admin
        name: "*"
        actions: ["*"]
      - account: admin
        type: registry
        name: catalog
        actions: ["*"]
      - account: "*"
        name: "${{account}}/*"
        actions: ["*"]
      - name: "public/*"
        actions: [pull]
"#,
        keydir = keydir.display(),
        alice = hash("alice-pw"),
        bob = hash("bob-pw"),
        admin = hash("admin-pw"),
    );
    Berth::start_on(&dir.join("data"), &yaml)
}

#[test]
fn issuer_grants_per_account_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let berth = issuer_berth(dir.path());
    let root = dir.path().join("data");
    let url = &berth.url;

    // No token: the challenge points at Berth's own endpoint.
    let r = Client::new(url, None).get("/v2/", &[]).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        challenge(&r),
        format!("Bearer realm=\"{url}/auth/token\",service=\"{SERVICE}\"")
    );
    let r = Client::new(url, None)
        .get("/v2/alice/app/tags/list", &[])
        .unwrap();
    assert!(
        challenge(&r).ends_with(",scope=\"repository:alice/app:pull\""),
        "{}",
        challenge(&r)
    );

    // alice pushes into her namespace.
    let t = token_of(&get_token(
        url,
        Some(("alice", "alice-pw")),
        &["repository:alice/app:pull,push"],
    ));
    let img = Image::oci("alice", 1, "");
    bearer(url, &t).push_image("alice/app", "v1", &img).unwrap();

    // ... but not into bob's: the token leaves that scope out, the push is refused and
    // nothing of bob's repository is created.
    let r = get_token(
        url,
        Some(("alice", "alice-pw")),
        &["repository:bob/app:pull,push"],
    );
    assert_eq!(r.json().unwrap()["scope"], "");
    let t2 = token_of(&r);
    let r = bearer(url, &t2)
        .send("POST", "/v2/bob/app/blobs/uploads/", &[], Body::Bytes(&[]))
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.describe());
    assert!(
        challenge(&r).contains("error=\"insufficient_scope\""),
        "{}",
        challenge(&r)
    );
    assert_eq!(r.error_codes(), ["UNAUTHORIZED"]);
    assert!(!repo_exists(&root, "bob/app"));
    berth.wait_log("the insufficient_scope WARN", |l| {
        l.contains("token refused (insufficient_scope)")
    });
    // A token for one repository does not open another of the same account.
    let r = bearer(url, &t)
        .send(
            "POST",
            "/v2/alice/other/blobs/uploads/",
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    assert_eq!(r.status, 401);

    // admin fills public/base; anonymous may pull it and nothing else.
    let ta = token_of(&get_token(
        url,
        Some(("admin", "admin-pw")),
        &["repository:public/base:pull,push"],
    ));
    bearer(url, &ta)
        .push_image("public/base", "latest", &img)
        .unwrap();
    let anon = token_of(&get_token(url, None, &["repository:public/base:pull,push"]));
    let r = bearer(url, &anon)
        .get("/v2/public/base/manifests/latest", &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, img.manifest);
    let r = bearer(url, &anon)
        .send(
            "POST",
            "/v2/public/base/blobs/uploads/",
            &[],
            Body::Bytes(&[]),
        )
        .unwrap();
    assert_eq!(r.status, 401);
    let anon2 = token_of(&get_token(url, None, &["repository:alice/app:pull"]));
    let r = bearer(url, &anon2)
        .get("/v2/alice/app/manifests/v1", &[])
        .unwrap();
    assert_eq!(r.status, 401);

    // The catalog needs registry:catalog:*, which only admin gets.
    let tc = token_of(&get_token(
        url,
        Some(("alice", "alice-pw")),
        &["registry:catalog:*"],
    ));
    let r = bearer(url, &tc).get("/v2/_catalog", &[]).unwrap();
    assert_eq!(r.status, 401);
    assert!(challenge(&r).contains("scope=\"registry:catalog:*\""));
    let tc = token_of(&get_token(
        url,
        Some(("admin", "admin-pw")),
        &["registry:catalog:*"],
    ));
    let r = bearer(url, &tc).get("/v2/_catalog", &[]).unwrap();
    assert_eq!(r.status, 200);
    let repos = r.json().unwrap()["repositories"].clone();
    assert_eq!(repos, json!(["alice/app", "public/base"]));

    // Wrong credentials: 401 from the token endpoint, and a WARN naming the user.
    let r = get_token(url, Some(("alice", "nope")), &["repository:alice/app:pull"]);
    assert_eq!(r.status, 401);
    let r = get_token(url, Some(("mallory", "alice-pw")), &[]);
    assert_eq!(r.status, 401);
    let log = berth.wait_log("the refused-credentials WARN", |l| {
        l.contains("token request refused: unknown user or wrong password")
            && l.contains("user=mallory")
    });
    assert!(!log.contains("alice-pw"), "a password reached the log");
}

/// `docker login` with an identity token: the OAuth2 password grant with `access_type=offline`,
/// then refresh-token grants.
#[test]
fn oauth2_password_and_refresh_grants() {
    let dir = tempfile::tempdir().unwrap();
    let berth = issuer_berth(dir.path());
    let c = Client::new(&berth.url, None);
    let form = |body: &str| {
        c.send(
            "POST",
            "/auth/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Body::Bytes(body.as_bytes()),
        )
        .unwrap()
    };
    let r = form(&format!(
        "grant_type=password&username=bob&password=bob-pw&service={SERVICE}&client_id=docker&access_type=offline&scope=repository%3Abob%2Fapp%3Apull%2Cpush"
    ));
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json().unwrap();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    assert!(v["access_token"].is_string());
    let r = form(&format!(
        "grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}&client_id=docker&scope=repository%3Abob%2Fapp%3Apull%2Cpush"
    ));
    assert_eq!(r.status, 200, "{}", r.describe());
    let t = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    bearer(&berth.url, &t)
        .push_image("bob/app", "v1", &Image::oci("bob", 1, ""))
        .unwrap();
    // The refresh token is not an access token.
    let r = bearer(&berth.url, &refresh)
        .get("/v2/bob/app/tags/list", &[])
        .unwrap();
    assert_eq!(r.status, 401);
    let r = form(&format!(
        "grant_type=refresh_token&refresh_token=garbage&service={SERVICE}"
    ));
    assert_eq!(r.status, 401);
    let r = form("grant_type=password&username=bob&password=wrong");
    assert_eq!(r.status, 401);
    let r = form("grant_type=client_credentials");
    assert_eq!(r.status, 400);
    // The JWKS names the key tokens are signed with.
    let jwks = c.get("/auth/jwks.json", &[]).unwrap().json().unwrap();
    let header: Value =
        serde_json::from_slice(&B64URL.decode(t.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(header["alg"], "ES256");
    assert!(header["x5c"].is_array());
    // Each grant is one line: account, how it was identified, asked and granted; no secret.
    let log = berth.log();
    let grants: Vec<&str> = log.lines().filter(|l| l.contains("token issued")).collect();
    assert_eq!(grants.len(), 2, "{log}");
    assert!(
        grants[0].contains("source=\"password\"") || grants[0].contains("source=password"),
        "{}",
        grants[0]
    );
    assert!(grants[1].contains("refresh_token"), "{}", grants[1]);
    for g in &grants {
        assert!(
            g.contains("bob") && g.contains("repository:bob/app:pull,push"),
            "{g}"
        );
        assert!(
            !g.contains(&refresh) && !g.contains(&t) && !g.contains("bob-pw"),
            "{g}"
        );
    }
}

/// A registry trusting an external issuer through `rootcertbundle`; tokens are made here the
/// way docker_auth makes them, and then broken every way the issue lists.
#[test]
fn refused_tokens_are_401_with_a_warning_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(Alg::RS256, "docker_auth", 30).unwrap();
    std::fs::write(dir.path().join("bundle.pem"), &g.cert_pem).unwrap();
    let signer = Signer::from_pem(&g.key_pem, Some(&g.cert_pem)).unwrap();
    let yaml = format!(
        "auth:\n  token:\n    realm: https://auth.example.com/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        dir.path().join("bundle.pem").display()
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    let root = dir.path().join("data");
    let t0 = now();
    let claims = |repo: &str, actions: &[&str]| {
        json!({
            "iss": ISSUER, "sub": "tenant", "aud": SERVICE, "exp": t0 + 300, "nbf": t0 - 5,
            "iat": t0, "jti": format!("{repo}-{actions:?}"),
            "access": [{"type": "repository", "name": repo, "actions": actions}],
        })
    };
    let header = |alg: &str, kid: &str| json!({"typ": "JWT", "alg": alg, "kid": kid});
    let kid = signer.kid.clone();

    // The good token works (so the refusals below are refusals of the token, not the setup).
    let good = signer
        .sign_with_header(
            &header("RS256", &kid),
            &claims("tenant/ok", &["pull", "push"]),
        )
        .unwrap();
    bearer(&berth.url, &good)
        .push_image("tenant/ok", "v1", &Image::oci("ok", 1, ""))
        .unwrap();

    let attacker =
        Signer::from_pem(&generate(Alg::RS256, "attacker", 30).unwrap().key_pem, None).unwrap();
    let rogue = generate(Alg::ES256, "rogue", 30).unwrap();
    let rogue_signer = Signer::from_pem(&rogue.key_pem, Some(&rogue.cert_pem)).unwrap();
    let with = |k: &str, v: Value| {
        let mut c = claims("tenant/app", &["pull", "push"]);
        c[k] = v;
        signer.sign_with_header(&header("RS256", &kid), &c).unwrap()
    };
    let unsigned = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none"}).to_string()),
        B64URL.encode(claims("tenant/app", &["push"]).to_string())
    );
    let hs256 = {
        let input = format!(
            "{}.{}",
            B64URL.encode(header("HS256", &kid).to_string()),
            B64URL.encode(claims("tenant/app", &["pull", "push"]).to_string())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, g.cert_pem.as_bytes());
        format!(
            "{input}.{}",
            B64URL.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        )
    };
    let tampered = {
        let t = signer
            .sign_with_header(&header("RS256", &kid), &claims("tenant/other", &["pull"]))
            .unwrap();
        let p: Vec<&str> = t.split('.').collect();
        format!(
            "{}.{}.{}",
            p[0],
            B64URL.encode(claims("tenant/app", &["pull", "push"]).to_string()),
            p[2]
        )
    };
    let self_signed_x5c = {
        let mut h = json!({"typ": "JWT", "alg": "ES256"});
        h["x5c"] = json!([B64.encode(&rogue_signer.chain[0])]);
        rogue_signer
            .sign_with_header(&h, &claims("tenant/app", &["pull", "push"]))
            .unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned, "unsigned"),
        (
            "HS256 keyed with the certificate",
            hs256,
            "symmetric_algorithm",
        ),
        (
            "untrusted key, trusted kid",
            attacker
                .sign_with_header(
                    &header("RS256", &kid),
                    &claims("tenant/app", &["pull", "push"]),
                )
                .unwrap(),
            "bad_signature",
        ),
        ("self-signed x5c", self_signed_x5c, "untrusted_chain"),
        ("wrong iss", with("iss", json!("someone")), "wrong_issuer"),
        (
            "wrong aud",
            with("aud", json!("other.registry")),
            "wrong_audience",
        ),
        ("expired", with("exp", json!(t0 - 3600)), "expired"),
        (
            "not yet valid",
            with("nbf", json!(t0 + 3600)),
            "not_yet_valid",
        ),
        ("tampered payload", tampered, "bad_signature"),
        ("garbage", "not.a.token".into(), "malformed"),
        (
            "other repository",
            signer
                .sign_with_header(
                    &header("RS256", &kid),
                    &claims("tenant/else", &["pull", "push"]),
                )
                .unwrap(),
            "insufficient_scope",
        ),
        (
            "missing action",
            signer
                .sign_with_header(&header("RS256", &kid), &claims("tenant/app", &["pull"]))
                .unwrap(),
            "insufficient_scope",
        ),
    ];
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("refused"))
            .count()
    };
    for (name, token, reason) in cases {
        let before = refusals(&berth.log());
        let r = bearer(&berth.url, &token)
            .send(
                "POST",
                "/v2/tenant/app/blobs/uploads/",
                &[],
                Body::Bytes(&[]),
            )
            .unwrap();
        assert_eq!(r.status, 401, "{name}: {}", r.describe());
        let expected_error = if reason == "insufficient_scope" {
            "insufficient_scope"
        } else {
            "invalid_token"
        };
        assert!(
            challenge(&r).contains(&format!("error=\"{expected_error}\"")),
            "{name}: {}",
            challenge(&r)
        );
        assert!(challenge(&r).starts_with("Bearer realm=\"https://auth.example.com/token\""));
        assert!(
            !repo_exists(&root, "tenant/app"),
            "{name}: something was written"
        );
        let log = berth.wait_log(&format!("{name}: one WARN line"), |l| refusals(l) > before);
        assert_eq!(
            refusals(&log),
            before + 1,
            "{name}: one WARN line per refusal"
        );
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("WARN") && l.contains("refused"))
            .unwrap();
        assert!(line.contains(&format!("({reason})")), "{name}: {line}");
        if token.len() > 20 {
            assert!(!log.contains(&token), "{name}: the token reached the log");
        }
    }
    // The explanation of a refused signature names the kid and the trusted key IDs.
    let log = berth.log();
    let line = log.lines().find(|l| l.contains("(bad_signature)")).unwrap();
    assert!(
        line.contains(&format!("kid={kid}"))
            && line.contains("trusted key IDs: [")
            && line.contains("hint:"),
        "{line}"
    );
}

#[test]
fn token_verify_command_gives_the_same_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(Alg::ES256, "issuer", 30).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &g.cert_pem).unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  inmemory: {{}}\nauth:\n  token:\n    realm: https://a/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            bundle.display()
        ),
    )
    .unwrap();
    let signer = Signer::from_pem(&g.key_pem, Some(&g.cert_pem)).unwrap();
    let t0 = now();
    let good = signer
        .sign(
            &json!({"iss": ISSUER, "aud": SERVICE, "sub": "ci", "exp": t0 + 60,
            "access": [{"type": "repository", "name": "ci/app", "actions": ["pull"]}]}),
        )
        .unwrap();
    let run = |token: &str, needs: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["token", "verify", "--config"]).arg(&cfg);
        for n in needs {
            cmd.args(["--needs", n]);
        }
        let out = support::output_with_stdin(cmd.arg("-"), token.as_bytes());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = run(&good, &["repository:ci/app:pull"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("token valid: sub=\"ci\"") && text.contains("ci/app:pull granted"),
        "{text}"
    );
    let (ok, text) = run(&good, &["repository:ci/app:push"]);
    assert!(!ok && text.contains("NOT granted"), "{text}");
    let expired = signer
        .sign(&json!({"iss": ISSUER, "aud": SERVICE, "exp": t0 - 3600}))
        .unwrap();
    let (ok, text) = run(&expired, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("token refused (expired)") && text.contains(&signer.kid),
        "{text}"
    );
}

#[test]
fn htpasswd_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("ci:{}\n", hash("ci-pw"))).unwrap();
    let yaml = format!(
        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
        file.display()
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    let r = Client::new(&berth.url, None).get("/v2/", &[]).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(challenge(&r), "Basic realm=\"basic-realm\"");
    let r = Client::new(&berth.url, Some(basic("ci", "Xq9-not-the-password")))
        .get("/v2/", &[])
        .unwrap();
    assert_eq!(r.status, 401);
    let log = berth.wait_log("the refused-credentials WARN", |l| {
        l.contains("basic credentials refused")
    });
    assert!(
        !log.contains("Xq9-not-the-password"),
        "a password reached the log"
    );
    let c = Client::new(&berth.url, Some(basic("ci", "ci-pw")));
    expect_status(&c.get("/v2/", &[]).unwrap(), &[200]).unwrap();
    c.push_image("ci/app", "v1", &Image::oci("ci", 1, ""))
        .unwrap();
    let r = c
        .get("/v2/ci/app/manifests/v1", &[("Accept", OCI_MANIFEST)])
        .unwrap();
    assert_eq!(r.status, 200);
}

/// distribution starts when the htpasswd file is missing (creating it with a user whose
/// password goes to its log); Berth starts with no account, says so, and lets in the file's
/// accounts once the file appears.
#[test]
fn htpasswd_file_missing_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth/htpasswd");
    let yaml = format!(
        "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
        file.display()
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    berth.wait_log("the missing-file WARN", |l| {
        l.contains("the htpasswd file does not exist")
    });
    assert!(!file.exists(), "Berth must not create the file");
    let c = Client::new(&berth.url, Some(basic("ci", "ci-pw")));
    assert_eq!(c.get("/v2/", &[]).unwrap().status, 401);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, format!("ci:{}\n", hash("ci-pw"))).unwrap();
    // The file is re-checked every few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if c.get("/v2/", &[]).unwrap().status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new file's account is still refused"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A tiny JWKS server: serves whatever `doc` holds and counts requests.
fn jwks_server(doc: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            hits.fetch_add(1, Ordering::SeqCst);
            let body = doc.lock().unwrap().clone();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/realms/r/protocol/openid-connect/certs")
}

/// Keycloak-style: keys come from a JWKS URL; a rotated key is fetched when a token names it,
/// at most once per interval.
#[test]
fn jwks_url_is_refetched_for_a_rotated_key() {
    let k1 = Signer::from_pem(&generate(Alg::ES256, "k1", 30).unwrap().key_pem, None).unwrap();
    let k2 = Signer::from_pem(&generate(Alg::ES256, "k2", 30).unwrap().key_pem, None).unwrap();
    let doc = Arc::new(Mutex::new(
        json!({"keys": [k1.public.to_jwk("key-1", &[])]}).to_string(),
    ));
    let hits = Arc::new(AtomicUsize::new(0));
    let jwks_url = jwks_server(doc.clone(), hits.clone());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "auth:\n  token:\n    realm: https://kc/realms/r/protocol/docker-v2/auth\n    service: {SERVICE}\n    issuer: {ISSUER}\n    jwksurl: {jwks_url}\n"
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once at start");
    let t0 = now();
    let token = |s: &Signer, kid: &str| {
        s.sign_with_header(
            &json!({"typ": "JWT", "alg": "ES256", "kid": kid}),
            &json!({"iss": ISSUER, "aud": SERVICE, "sub": "u", "exp": t0 + 300,
                "access": [{"type": "repository", "name": "u/app", "actions": ["pull"]}]}),
        )
        .unwrap()
    };
    let get = |t: &str| bearer(&berth.url, t).get("/v2/", &[]).unwrap().status;
    assert_eq!(get(&token(&k1, "key-1")), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The issuer rotates to key-2: the first token naming it triggers one fetch.
    *doc.lock().unwrap() = json!({"keys": [k2.public.to_jwk("key-2", &[])]}).to_string();
    assert_eq!(get(&token(&k2, "key-2")), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // An unknown kid right after does not fetch again (rate limit) and is refused.
    assert_eq!(get(&token(&k2, "key-3")), 401);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    berth.wait_log("the unknown_key WARN", |l| l.contains("(unknown_key)"));
}

/// Interop: distribution 2.8, configured with Berth's certificate as `rootcertbundle`,
/// accepts tokens from Berth's issuer (libtrust kid and x5c).
#[test]
fn distribution_accepts_berths_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let berth = issuer_berth(dir.path());
    let cert = dir.path().join("keys/token.crt");
    let extra = format!(
        "auth:\n  token:\n    realm: {}/auth/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        berth.url,
        cert.display()
    );
    let dist = Distribution::start_with_extra(&dir.path().join("dist"), &extra);
    let r = Client::new(&dist.url, None)
        .get("/v2/alice/app/tags/list", &[])
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains(&format!("realm=\"{}/auth/token\"", berth.url)),
        "{}",
        challenge(&r)
    );
    let t = token_of(&get_token(
        &berth.url,
        Some(("alice", "alice-pw")),
        &["repository:alice/app:pull,push"],
    ));
    let img = Image::oci("via-distribution", 1, "");
    bearer(&dist.url, &t)
        .push_image("alice/app", "v1", &img)
        .unwrap();
    let r = bearer(&dist.url, &t)
        .get("/v2/alice/app/manifests/v1", &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, img.manifest);
    // And it refuses what Berth refuses: bob's repository with alice's token.
    let r = bearer(&dist.url, &t)
        .send("POST", "/v2/bob/app/blobs/uploads/", &[], Body::Bytes(&[]))
        .unwrap();
    assert_eq!(r.status, 401);
}

/// A tenant added to the issuer's htpasswd file can sign in without a restart.
#[test]
fn issuer_rereads_its_htpasswd_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("alice:{}\n", hash("alice-pw"))).unwrap();
    let yaml = format!(
        "auth:\n  token:\n    service: {SERVICE}\n    issuer: {ISSUER}\n  issuer:\n    keydir: {}\n    htpasswd: {}\n    acl:\n      - {{ account: \"*\", name: \"${{account}}/*\", actions: [\"*\"] }}\n",
        dir.path().join("keys").display(),
        file.display()
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    assert_eq!(
        get_token(&berth.url, Some(("carol", "carol-pw")), &[]).status,
        401
    );
    std::fs::write(
        &file,
        format!("alice:{}\ncarol:{}\n", hash("alice-pw"), hash("carol-pw")),
    )
    .unwrap();
    // The file is checked for changes every few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = get_token(
            &berth.url,
            Some(("carol", "carol-pw")),
            &["repository:carol/app:push"],
        );
        if r.status == 200 {
            assert_eq!(r.json().unwrap()["scope"], "repository:carol/app:push");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "carol never became valid"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(
        get_token(&berth.url, Some(("alice", "alice-pw")), &[]).status,
        200
    );
    berth.wait_log("the reload", |l| l.contains("htpasswd file reloaded"));
}

/// Failed logins slow the guesser down: after five wrong passwords for an account, each
/// further failure locks it out (429 with `Retry-After`, no password checked, not even the
/// right one); the lock-out ends on its own, a success clears it, other accounts are not held
/// up, and each lock-out is one WARN line and a counted refusal.
#[test]
fn failed_logins_are_throttled_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let berth = issuer_berth(dir.path());
    for i in 0..5 {
        let r = get_token(&berth.url, Some(("alice", "guess")), &[]);
        assert_eq!(r.status, 401, "attempt {i}: {}", r.describe());
    }
    // The sixth wrong password is checked (401) and starts a one-second lock-out.
    let r = get_token(&berth.url, Some(("alice", "guess")), &[]);
    assert_eq!(r.status, 401, "{}", r.describe());
    let started = std::time::Instant::now();
    for pw in ["guess", "alice-pw"] {
        let r = get_token(&berth.url, Some(("alice", pw)), &[]);
        assert_eq!(r.status, 429, "{}", r.describe());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json().unwrap()["error"], "slow_down");
    }
    // The OAuth2 password grant (docker login) is throttled the same way.
    let c = Client::new(&berth.url, None);
    let r = c
        .send(
            "POST",
            "/auth/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Body::Bytes(
                format!("grant_type=password&username=alice&password=alice-pw&service={SERVICE}")
                    .as_bytes(),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.describe());
    // Others log in meanwhile.
    token_of(&get_token(&berth.url, Some(("bob", "bob-pw")), &[]));
    // Once the lock-out is over, the right password works and clears the count.
    std::thread::sleep(std::time::Duration::from_millis(1100).saturating_sub(started.elapsed()));
    token_of(&get_token(&berth.url, Some(("alice", "alice-pw")), &[]));
    let r = get_token(&berth.url, Some(("alice", "guess")), &[]);
    assert_eq!(r.status, 401, "counting starts over: {}", r.describe());

    let log = berth.log();
    assert_eq!(log.matches("is locked out for 1 s").count(), 1, "{log}");
    assert!(
        !log.contains("alice-pw") && !log.contains("guess\""),
        "{log}"
    );
    let (_, metrics) = support::get(&format!("{}/metrics", support::debug_url(&berth)));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_auth_refusals_total") && l.contains("throttled")),
        "{metrics}"
    );
}

/// `berth auth explain` names the rule of the issuer's ACL that decides each scope, as the
/// token endpoint decides it, and exits 1 when anything asked for is not granted.
#[test]
fn auth_explain_names_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let berth = issuer_berth(dir.path());
    let explain = |args: &[&str]| {
        let out = std::process::Command::new(support::bin())
            .args(["auth", "explain", "--config"])
            .arg(&berth.config_path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain(&[
        "--account",
        "alice",
        "--scope",
        "repository:alice/app:pull,push",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "repository:alice/app:pull,push: granted pull,push for account \"alice\" (password) by rule 3"
        ) && out.contains("${account}/*"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--account",
        "alice",
        "--scope",
        "repository:bob/app:pull",
        "--scope",
        "repository:alice/x:delete",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "repository:bob/app:pull: nothing granted for account \"alice\" (password): no rule applies"
        ),
        "{out}"
    );
    assert!(
        out.contains("repository:alice/x:delete: granted delete"),
        "{out}"
    );
    let (code, out) = explain(&["--scope", "repository:public/x:pull,push"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("granted pull for anonymous by rule 4"),
        "{out}"
    );
    // The token endpoint agrees.
    let r = get_token(&berth.url, None, &["repository:public/x:pull,push"]);
    assert_eq!(r.json().unwrap()["scope"], "repository:public/x:pull");
}

/// Robot tokens: created with `berth tokens create` (the secret printed once, only its hash
/// stored), presented as a password they log in as their account with what the ACL grants it
/// cut down to the token's scopes, never with a refresh token; `list` shows no secret; a
/// revocation is refused by every replica within seconds.
#[test]
fn robot_tokens_are_created_used_and_revoked_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let a = issuer_berth(dir.path());
    let config = std::fs::read_to_string(&a.config_path).unwrap();
    let b = Berth::start_with_config(&config, &dir.path().join("data"));
    let data = dir.path().join("data");
    robot_round_trip(
        &a,
        &b,
        &a.config_path,
        &[&data],
        std::time::Duration::from_secs(8),
    );
}

/// `auth.issuer.robottokens`: the records in a file both replicas read (each with storage of
/// its own, which holds none), rewritten by `berth tokens`, a revocation refused at once; a
/// file Berth cannot parse stops it from starting, naming the line.
#[test]
fn robot_tokens_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("robot-tokens");
    let a = issuer_berth(dir.path());
    let config = std::fs::read_to_string(&a.config_path).unwrap().replace(
        "  issuer:\n",
        &format!("  issuer:\n    robottokens: {}\n", file.display()),
    );
    drop(a);
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let shared = dir.path().join("data").display().to_string();
    let on = |data: &Path| config.replace(&shared, &data.display().to_string());
    assert_ne!(on(&data_a), config);
    let a = Berth::start_with_config(&on(&data_a), &data_a);
    let b = Berth::start_with_config(&on(&data_b), &data_b);
    assert!(
        a.log().contains("robottokens does not exist yet"),
        "{}",
        a.log()
    );
    robot_round_trip(
        &a,
        &b,
        &a.config_path,
        &[&data_a, &data_b, dir.path()],
        std::time::Duration::ZERO,
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# Berth robot tokens"), "{text}");
    for data in [&data_a, &data_b] {
        assert!(
            !data.join("docker/registry/v2/_berth/tokens").exists(),
            "a record went to the storage"
        );
    }
    drop((a, b));

    // A line that is not a record: Berth refuses to start and says where.
    std::fs::write(&file, format!("{text}{{\"id\": \"x\"\n")).unwrap();
    let path = dir.path().join("broken.yml");
    std::fs::write(&path, on(&data_a)).unwrap();
    let out = std::process::Command::new(support::bin())
        .args(["serve"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    let line = text.lines().count() + 1;
    assert!(
        said.contains("auth.issuer.robottokens") && said.contains(&format!("line {line}")),
        "{said}"
    );
}

/// Creates a robot token for `ci` through `config`, uses it on both replicas, lists and
/// revokes it; `stored_under` are the places that must not hold the secret, `within` how long
/// a replica may go on accepting it after the revocation.
fn robot_round_trip(
    a: &Berth,
    b: &Berth,
    config: &Path,
    stored_under: &[&Path],
    within: std::time::Duration,
) {
    let tokens = |args: &[&str]| {
        let out = std::process::Command::new(support::bin())
            .arg("tokens")
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, secret, err) = tokens(&[
        "create",
        "--account",
        "ci",
        "--scope",
        "repository:ci/*:pull,push",
        "--expires",
        "1d",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(secret.starts_with("berth_rt_"), "{secret}");
    for root in stored_under {
        assert!(
            walk_files(root)
                .iter()
                .all(|(_, body)| !body.contains(&secret)),
            "the secret is stored"
        );
    }

    // As a password (any user name): the ACL's grant for `ci`, cut down to pull and push.
    let asked = [
        "repository:ci/app:pull,push,delete",
        "repository:alice/app:pull",
    ];
    for replica in [&a, &b] {
        let r = get_token(&replica.url, Some(("deploy-bot", &secret)), &asked);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json().unwrap()["scope"], "repository:ci/app:pull,push");
    }
    let r = get_token(&a.url, Some(("deploy-bot", &secret)), &asked);
    bearer(&a.url, &token_of(&r))
        .push_image("ci/app", "v1", &Image::oci("robot", 1, ""))
        .unwrap();
    // docker login's password grant, offline: still no refresh token.
    let r = Client::new(&a.url, None)
        .send(
            "POST",
            "/auth/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Body::Bytes(
                format!(
                    "grant_type=password&username=x&password={secret}&access_type=offline&service={SERVICE}&scope=repository%3Aci%2Fapp%3Apull"
                )
                .as_bytes(),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.json().unwrap().get("refresh_token").is_none());
    // A wrong secret of the right form is refused.
    let forged = format!("{}x", &secret[..secret.len() - 1]);
    assert_eq!(get_token(&a.url, Some(("x", &forged)), &[]).status, 401);

    let (code, listed, _) = tokens(&["list"]);
    assert_eq!(code, Some(0));
    let id = &secret["berth_rt_".len().."berth_rt_".len() + 24];
    assert!(
        listed.contains(id) && listed.contains("ci") && !listed.contains(&secret),
        "{listed}"
    );

    let (code, _, err) = tokens(&["revoke", id]);
    assert_eq!(code, Some(0), "{err}");
    let revoked = std::time::Instant::now();
    for replica in [&a, &b] {
        loop {
            let r = get_token(&replica.url, Some(("deploy-bot", &secret)), &[]);
            if r.status == 401 {
                break;
            }
            assert_eq!(r.status, 200, "{}", r.describe());
            assert!(
                revoked.elapsed() < within,
                "a replica still accepts the revoked token"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
    let (code, _, err) = tokens(&["revoke", id]);
    assert_eq!(code, Some(1), "{err}");
    for log in [a.log(), b.log()] {
        assert!(!log.contains(&secret[20..]), "the secret is logged");
    }
    assert!(a.log().contains("robot_token"), "{}", a.log());
}

/// Every file below `root` with its content (lossy).
fn walk_files(root: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let body =
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
                out.push((p, body));
            }
        }
    }
    out
}

/// `auth.issuer.throttle` sets the free failures and the longest delay.
#[test]
fn throttle_limits_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "auth:\n  token:\n    service: {SERVICE}\n    issuer: {ISSUER}\n  issuer:\n    keydir: {}\n    users:\n      alice: \"{}\"\n    throttle:\n      accountfailures: 1\n      maxdelay: 1s\n",
        dir.path().join("keys").display(),
        hash("alice-pw")
    );
    let berth = Berth::start_on(&dir.path().join("data"), &yaml);
    let statuses: Vec<u16> = (0..4)
        .map(|_| get_token(&berth.url, Some(("alice", "guess")), &[]).status)
        .collect();
    // One free failure, the second starts a lock-out of 1 s, which is also the longest.
    assert_eq!(statuses, [401, 401, 429, 429]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        get_token(&berth.url, Some(("alice", "guess")), &[]).status,
        401
    );
    let r = get_token(&berth.url, Some(("alice", "guess")), &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"), "capped at maxdelay");
}
