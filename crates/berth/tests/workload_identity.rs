//! Workload identity through a real `berth serve`: tokens other issuers gave a workload,
//! presented as the password at Berth's token endpoint, by real clients.
//!
//! - A Kubernetes projected service-account token (the kube-apiserver's claims, audience and
//!   `kid`, the cluster's JWKS served by the test): skopeo and `docker login` push into the
//!   pod's own namespace with the three-line rule, and are refused elsewhere, after expiry, with
//!   another audience, from an unknown issuer, with a forged signature; a rotated cluster key is
//!   picked up.
//! - GitHub Actions- and GitLab CI-shaped ID tokens with claim-based rules and required claims
//!   (GitLab's keys found by OpenID discovery): skopeo pushes to the job's own repository only,
//!   the password grant, `berth auth explain --token`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/clients.rs"]
mod clients_support;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use berth_auth::keys::Alg;
use berth_auth::signer::{generate, Signer};
use berth_conformance::client::{Client, Resp};
use clients_support::{Dockerd, Lab, Layout};
use serde_json::{json, Value};
use sha2::Digest as _;
use support::{get_token, now, Berth, SERVICE};

const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
const GITHUB: &str = "https://token.actions.githubusercontent.com";

/// An OIDC provider's HTTP side: serves `docs` by path (the discovery document, the JWKS) and
/// counts the requests for each.
struct Provider {
    url: String,
    docs: Arc<Mutex<Vec<(String, String)>>>,
    hits: Arc<AtomicUsize>,
}

impl Provider {
    fn start() -> Provider {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let docs: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (docs.clone(), hits.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = d
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, b)| b.clone());
                let _ = match body {
                    Some(body) => write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
            }
        });
        Provider { url, docs, hits }
    }

    fn serve(&self, path: &str, body: String) {
        let mut docs = self.docs.lock().unwrap();
        docs.retain(|(p, _)| p != path);
        docs.push((path.to_owned(), body));
    }
}

/// A signing key of an external issuer, with the `kid` its JWKS gives it.
struct IssuerKey {
    signer: Signer,
    kid: String,
}

impl IssuerKey {
    /// An RS256 key; its kid as the kube-apiserver makes it (base64url SHA-256 of the SPKI).
    fn new(name: &str) -> IssuerKey {
        let signer =
            Signer::from_pem(&generate(Alg::RS256, name, 30).unwrap().key_pem, None).unwrap();
        let kid = B64URL.encode(sha2::Sha256::digest(signer.public.spki_der()));
        IssuerKey { signer, kid }
    }

    fn jwk(&self) -> Value {
        let mut k = self.signer.public.to_jwk(&self.kid, &[]);
        k["use"] = json!("sig");
        k["alg"] = json!("RS256");
        k
    }

    fn sign(&self, claims: &Value) -> String {
        self.signer
            .sign_with_header(&json!({"alg": "RS256", "kid": self.kid}), claims)
            .unwrap()
    }
}

fn jwks(keys: &[&IssuerKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// The claims of a projected service-account token (`serviceAccountToken` volume with
/// `audience`), as the kube-apiserver issues them.
fn pod_claims(namespace: &str, sa: &str, aud: &str, iat: i64, exp: i64) -> Value {
    json!({
        "aud": [aud],
        "exp": exp,
        "iat": iat,
        "iss": CLUSTER,
        "jti": format!("{:x}", sha2::Sha256::digest(format!("{namespace}{sa}{iat}{exp}"))),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "0c5a7f6e-2d7b-4b1e-9e53-1f0d2c3b4a59"},
            "pod": {"name": format!("{sa}-7f9c8d6b5-x2lq9"), "uid": "6f1e0d2c-3b4a-4958-8e7f-6a5b4c3d2e1f"},
            "serviceaccount": {"name": sa, "uid": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"},
            "warnafter": iat + 3607
        },
        "nbf": iat,
        "sub": format!("system:serviceaccount:{namespace}:{sa}")
    })
}

/// The scopes a token response grants (`""` when refused).
fn granted(r: &Resp) -> String {
    if r.status != 200 {
        return String::new();
    }
    r.json().unwrap()["scope"].as_str().unwrap_or("").to_owned()
}

/// Berth with its issuer (keys in `dir/keys`) and `issuer_rest` (the `federated:` and `acl:`
/// sections, indented under `auth.issuer`).
fn issuer_berth(dir: &Path, issuer_rest: &str) -> Berth {
    let yaml = format!(
        "auth:\n  token:\n    service: {SERVICE}\n    issuer: berth-issuer\n  issuer:\n    keydir: {}\n{issuer_rest}",
        dir.join("keys").display()
    );
    Berth::start_on(&dir.join("data"), &yaml)
}

fn cluster_berth(dir: &Path, jwks_url: &str) -> Berth {
    let rest = format!(
        r#"    federated:
      - name: cluster
        kind: kubernetes
        issuer: {CLUSTER}
        audience: {SERVICE}
        jwksurl: {jwks_url}
    acl:
      - source: cluster
        name: "${{namespace}}/*"
        actions: [push, pull]
"#
    );
    issuer_berth(dir, &rest)
}

#[test]
fn kubernetes_service_account_tokens_push_to_their_namespace() {
    let provider = Provider::start();
    let key = IssuerKey::new("cluster-sa-signer");
    provider.serve("/openid/v1/jwks", jwks(&[&key]));
    let jwks_url = format!("{}/openid/v1/jwks", provider.url);
    let lab = Lab::start_with(|dir| cluster_berth(dir, &jwks_url));
    let url = lab.berth.url.clone();
    let t0 = now();
    let build_token = key.sign(&pod_claims("build", "builder", SERVICE, t0, t0 + 600));

    // The token endpoint grants the pod its namespace, nothing else.
    let r = get_token(
        &url,
        Some(("builder", &build_token)),
        &[
            "repository:build/app:push,pull",
            "repository:prod/app:push,pull",
        ],
    );
    assert_eq!(
        granted(&r),
        "repository:build/app:pull,push",
        "{}",
        r.describe()
    );
    let body = r.json().unwrap();
    assert!(body["refresh_token"].is_null(), "no refresh token: {body}");
    assert!(body["expires_in"].as_i64().unwrap() <= 600);

    // skopeo pushes with the token as the password...
    let layout = Layout::init(&lab, &lab.path("in"));
    layout.add_image(&lab, "v1", "amd64", &[("/etc/motd", "built in a pod\n")]);
    let creds = format!("serviceaccount:{build_token}");
    lab.run(&mut lab.skopeo_push(
        &creds,
        &layout.reference("v1"),
        &lab.docker_ref("build/app", "v1"),
    ));
    // ... but not into another namespace.
    let out = lab.run_failing(&mut lab.skopeo_push(
        &creds,
        &layout.reference("v1"),
        &lab.docker_ref("prod/app", "v1"),
    ));
    lab.check(
        !out.ok(),
        &format!("push into prod/app must fail: {}", out.stderr),
    );
    let repos = lab.berth.root.join("docker/registry/v2/repositories");
    lab.check(repos.join("build/app").exists(), "build/app was pushed");
    lab.check(!repos.join("prod/app").exists(), "prod/app must not exist");

    // docker login sends the token in the OAuth2 password grant; docker push works with it.
    let dockerd = Dockerd::start(&lab, &lab.path("docker"), "overlay2");
    let docker = || dockerd.docker(&lab);
    dockerd.load(&lab, &layout, "v1", "local/img:v1");
    let mut login = docker();
    login.args([
        "login",
        &lab.berth.host,
        "-u",
        "serviceaccount",
        "--password-stdin",
    ]);
    let out = support::output_with_stdin(&mut login, build_token.as_bytes());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    lab.check(
        out.status.success() && said.contains("Login Succeeded"),
        &format!("docker login with the pod's token: {said}"),
    );
    let mine = lab.image_ref("build/tools", "v1");
    lab.run(docker().args(["tag", "local/img:v1", &mine]));
    lab.run(docker().args(["push", &mine]));
    lab.check(
        repos.join("build/tools/_manifests").exists(),
        "docker pushed build/tools",
    );
    let theirs = lab.image_ref("prod/tools", "v1");
    lab.run(docker().args(["tag", "local/img:v1", &theirs]));
    let out = lab.run_failing(docker().args(["push", &theirs]));
    lab.check(
        format!("{}{}", out.stdout, out.stderr).contains("denied")
            || out.stderr.contains("unauthorized"),
        &format!("docker push into prod/tools: {}{}", out.stdout, out.stderr),
    );
    lab.check(
        !repos.join("prod/tools").exists(),
        "prod/tools must not exist",
    );

    // Refusals: each a 401 with one WARN line naming the reason, never the token.
    let refused = |token: &str, reason: &str| {
        let r = get_token(
            &url,
            Some(("serviceaccount", token)),
            &["repository:build/app:pull"],
        );
        assert_eq!(r.status, 401, "{reason}: {}", r.describe());
        lab.berth
            .wait_log(reason, |l| l.contains("WARN") && l.contains(reason));
    };
    let expired = key.sign(&pod_claims(
        "build",
        "builder",
        SERVICE,
        t0 - 4000,
        t0 - 400,
    ));
    refused(&expired, "(expired)");
    // The pod's default token is for the API server, not the registry.
    let api_token = key.sign(&pod_claims("build", "builder", CLUSTER, t0, t0 + 600));
    refused(&api_token, "(wrong_audience)");
    // Another cluster's key claiming this cluster's kid.
    let forger = IssuerKey::new("forger");
    let forged = forger.signer.sign_with_header(
        &json!({"alg": "RS256", "kid": key.kid}),
        &pod_claims("prod", "deployer", SERVICE, t0, t0 + 600),
    );
    refused(&forged.unwrap(), "(bad_signature)");
    // A token of an issuer nobody configured.
    let mut stranger = pod_claims("build", "builder", SERVICE, t0, t0 + 600);
    stranger["iss"] =
        json!("https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE");
    refused(&key.sign(&stranger), "(unknown_issuer)");
    // A token without the kubernetes.io claims is no pod.
    let mut user = pod_claims("build", "builder", SERVICE, t0, t0 + 600);
    user.as_object_mut().unwrap().remove("kubernetes.io");
    refused(&key.sign(&user), "(not_a_service_account_token)");
    // None of that locked the pods out (tokens are not guessed; pods share user names).
    let r = get_token(
        &url,
        Some(("serviceaccount", &build_token)),
        &["repository:build/app:pull"],
    );
    assert_eq!(granted(&r), "repository:build/app:pull", "{}", r.describe());

    // The cluster rotates its signing key: the first token naming the new kid makes Berth
    // read the JWKS again.
    let rotated = IssuerKey::new("cluster-sa-signer-2");
    provider.serve("/openid/v1/jwks", jwks(&[&key, &rotated]));
    let before = provider.hits.load(Ordering::SeqCst);
    let new_token = rotated.sign(&pod_claims("build", "builder", SERVICE, t0, t0 + 600));
    let r = get_token(
        &url,
        Some(("x", &new_token)),
        &["repository:build/app:pull"],
    );
    assert_eq!(granted(&r), "repository:build/app:pull", "{}", r.describe());
    assert_eq!(provider.hits.load(Ordering::SeqCst), before + 1);

    // The grant lines name the identity source and account; no token is ever logged.
    let log = lab.berth.log();
    assert!(
        log.lines().any(|l| l.contains("token issued")
            && l.contains("source=\"cluster\"")
            && l.contains("system:serviceaccount:build:builder")),
        "no grant line for the pod"
    );
    for t in [&build_token, &expired, &api_token, &new_token] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token reached the log");
    }
}

/// GitHub Actions and GitLab CI ID tokens: claim-based rules, required claims narrowing a
/// shared issuer to one organisation, GitLab's keys by OpenID discovery.
#[test]
fn ci_id_tokens_log_in_with_claim_based_rules() {
    let github_keys = Provider::start();
    let gh_key = IssuerKey::new("github");
    github_keys.serve("/.well-known/jwks", jwks(&[&gh_key]));
    // A self-managed GitLab: its issuer URL serves the discovery document and the keys.
    let gitlab = Provider::start();
    let gl_key = IssuerKey::new("gitlab");
    gitlab.serve(
        "/.well-known/openid-configuration",
        json!({
            "issuer": gitlab.url,
            "jwks_uri": format!("{}/oauth/discovery/keys", gitlab.url),
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string(),
    );
    gitlab.serve("/oauth/discovery/keys", jwks(&[&gl_key]));
    let config = |dir: &Path| {
        let rest = format!(
            r#"    federated:
      - name: github
        issuer: {GITHUB}
        jwksurl: {gh}/.well-known/jwks
        audience: https://{SERVICE}
        account: "github:${{claims.repository}}"
        claims:
          repository_owner: octo-org
      - name: gitlab
        issuer: {gl}
        audience: {SERVICE}
        algorithms: [RS256]
        account: "gitlab:${{claims.project_path}}"
    acl:
      - source: github
        name: "gh/${{claims.repository}}"
        actions: [push, pull]
      - source: gitlab
        name: "${{claims.project_path}}/*"
        actions: [push, pull]
      - source: gitlab
        name: "shared/*"
        actions: [pull]
"#,
            gh = github_keys.url,
            gl = gitlab.url,
        );
        issuer_berth(dir, &rest)
    };
    let lab = Lab::start_with(config);
    let berth = &lab.berth;
    let t0 = now();
    let github = |repo: &str, owner: &str| {
        gh_key.sign(&json!({
            "jti": "example-id",
            "sub": format!("repo:{repo}:ref:refs/heads/main"),
            "aud": format!("https://{SERVICE}"),
            "ref": "refs/heads/main",
            "sha": "e5f5e3b0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6",
            "repository": repo,
            "repository_owner": owner,
            "repository_owner_id": "65",
            "repository_visibility": "private",
            "repository_id": "74",
            "run_id": "5372",
            "run_number": "12",
            "run_attempt": "1",
            "actor": "octocat",
            "workflow": "build",
            "event_name": "push",
            "ref_type": "branch",
            "job_workflow_ref": format!("{repo}/.github/workflows/build.yml@refs/heads/main"),
            "iss": GITHUB,
            "nbf": t0 - 5,
            "exp": t0 + 300,
            "iat": t0 - 5,
        }))
    };
    let mine = github("octo-org/app", "octo-org");
    let r = get_token(
        &berth.url,
        Some(("github", &mine)),
        &[
            "repository:gh/octo-org/app:push,pull",
            "repository:gh/octo-org/other:pull",
        ],
    );
    assert_eq!(
        granted(&r),
        "repository:gh/octo-org/app:pull,push",
        "{}",
        r.describe()
    );
    // The job pushes with skopeo, the token as its password; its repository only.
    let layout = Layout::init(&lab, &lab.path("in"));
    layout.add_image(&lab, "v1", "amd64", &[("/etc/motd", "built in CI\n")]);
    let push = |token: &str, repo: &str| {
        lab.try_run(&mut lab.skopeo_push(
            &format!("ci:{token}"),
            &layout.reference("v1"),
            &lab.docker_ref(repo, "v1"),
        ))
    };
    let repos = berth.root.join("docker/registry/v2/repositories");
    let out = push(&mine, "gh/octo-org/app");
    lab.check(
        out.ok(),
        &format!("GitHub job pushes its repository: {}", out.stderr),
    );
    let out = push(&mine, "gh/octo-org/other");
    lab.check(!out.ok(), "GitHub job pushes another repository");
    lab.check(
        repos.join("gh/octo-org/app/_manifests").exists(),
        "gh/octo-org/app pushed",
    );
    lab.check(
        !repos.join("gh/octo-org/other").exists(),
        "gh/octo-org/other must not exist",
    );
    // The same issuer signs for every repository on github.com: another owner is refused.
    let theirs = github("mallory/app", "mallory");
    let r = get_token(
        &berth.url,
        Some(("github", &theirs)),
        &["repository:gh/mallory/app:push"],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    berth.wait_log("the claim_mismatch WARN", |l| {
        l.contains("(claim_mismatch)") && l.contains("repository_owner")
    });

    // `berth auth explain` verifies the job's token as the endpoint does and names the rule.
    let explain = |token: &str, scopes: &[&str]| {
        let file = lab.path("id-token");
        std::fs::write(&file, token).unwrap();
        let mut cmd = std::process::Command::new(support::bin());
        cmd.args(["auth", "explain", "--config"])
            .arg(&berth.config_path)
            .arg("--token")
            .arg(&file);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = explain(
        &mine,
        &[
            "repository:gh/octo-org/app:push",
            "repository:gh/octo-org/other:pull",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("identity: account \"github:octo-org/app\", source github")
            && out.contains("claims.repository=octo-org/app")
            && out.contains(
                "repository:gh/octo-org/app:push: granted push for account \"github:octo-org/app\" (github) by rule 1"
            )
            && out.contains("repository:gh/octo-org/other:pull: nothing granted"),
        "{out}"
    );
    let (code, out) = explain(&theirs, &["repository:gh/mallory/app:push"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("(claim_mismatch)"), "{out}");

    let gitlab_token = |project: &str, aud: &str| {
        gl_key.sign(&json!({
            "namespace_id": "72",
            "namespace_path": project.split('/').next().unwrap(),
            "project_id": "20",
            "project_path": project,
            "user_id": "5",
            "user_login": "alice",
            "user_email": "alice@example.com",
            "pipeline_id": "1212",
            "pipeline_source": "push",
            "job_id": "1212",
            "ref": "main",
            "ref_type": "branch",
            "ref_path": "refs/heads/main",
            "ref_protected": "true",
            "runner_id": 1,
            "runner_environment": "self-hosted",
            "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b",
            "iss": gitlab.url,
            "iat": t0,
            "nbf": t0 - 5,
            "exp": t0 + 300,
            "sub": format!("project_path:{project}:ref_type:branch:ref:main"),
            "aud": aud,
        }))
    };
    let platform = gitlab_token("platform/api", SERVICE);
    let r = get_token(
        &berth.url,
        Some(("gitlab-ci-token", &platform)),
        &[
            "repository:platform/api/app:push,pull",
            "repository:shared/base:pull,push",
            "repository:web/site:pull",
        ],
    );
    assert_eq!(
        granted(&r),
        "repository:platform/api/app:pull,push repository:shared/base:pull",
        "{}",
        r.describe()
    );
    let out = push(&platform, "platform/api/app");
    lab.check(
        out.ok(),
        &format!("GitLab job pushes its project: {}", out.stderr),
    );
    let out = push(&platform, "web/site");
    lab.check(!out.ok(), "GitLab job pushes another project");
    lab.check(!repos.join("web/site").exists(), "web/site must not exist");
    // The password grant (docker login) works the same.
    let form = format!(
        "grant_type=password&username=gitlab-ci-token&password={platform}&service={SERVICE}&scope=repository%3Aplatform%2Fapi%2Fapp%3Apush&client_id=docker&access_type=offline"
    );
    let r = Client::new(&berth.url, None)
        .send(
            "POST",
            "/auth/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            berth_conformance::client::Body::Bytes(form.as_bytes()),
        )
        .unwrap();
    assert_eq!(
        granted(&r),
        "repository:platform/api/app:push",
        "{}",
        r.describe()
    );
    assert!(r.json().unwrap()["refresh_token"].is_null());
    // A GitLab token for another audience is refused.
    let r = get_token(
        &berth.url,
        Some((
            "gitlab-ci-token",
            &gitlab_token("platform/api", "https://vault.example.com"),
        )),
        &["repository:platform/api/app:pull"],
    );
    assert_eq!(r.status, 401, "{}", r.describe());
    berth.wait_log("the wrong_audience WARN", |l| {
        l.contains("gitlab token") && l.contains("(wrong_audience)")
    });
    let log = berth.log();
    assert!(
        log.lines().any(|l| l.contains("token issued")
            && l.contains("source=\"github\"")
            && l.contains("github:octo-org/app")),
        "no grant line for the GitHub job: {}",
        log.lines()
            .filter(|l| l.contains("token issued"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.lines().any(|l| l.contains("token issued")
            && l.contains("source=\"gitlab\"")
            && l.contains("gitlab:platform/api")),
        "no grant line for the GitLab job"
    );
    for t in [&mine, &theirs, &platform] {
        assert!(
            !log.contains(t.rsplit('.').next().unwrap()),
            "a token reached the log"
        );
    }
}
